/**
 * FlashAttention on WebGPU: the forward pass of `flashAttention` in a WGSL kernel, with the same
 * options, the same validation and typed errors, the same result type and the same counted HBM
 * traffic as the CPU build, and its backward pass. Inputs may be host arrays or GPU buffers, and
 * the output may stay on the device, so a WebGPU model never round-trips through the CPU.
 *
 * ```ts ignore
 * import { createGpuAttention } from "@flash/attention/gpu";
 *
 * const gpu = await createGpuAttention(); // requests an adapter and a device from navigator.gpu
 * const o = await gpu.flashAttention(q, k, v, { causal: true, returnLse: true });
 * gpu.destroy();
 * ```
 *
 * @module
 */
import type { AttentionGradients, FlashAttentionBackwardOptions } from "./backward.ts";
import type { FlashAttentionOptions } from "./flash_attention.ts";
import { describe, message } from "./_messages.ts";
import { validateBackwardCall, validateForwardCall } from "./_validate.ts";
import { runGpuBackward } from "./gpu/_backward.ts";
import type { AttentionOutput, AttentionStats, HalfAttentionOutput } from "./result.ts";
import type { Dtype, HalfDtype, InputTensor, Tensor } from "./tensor.ts";
import { type GpuTensor, gpuTensorReader } from "./gpu/_inputs.ts";
import { blocksFor, type GpuContext, hostOutput, prepareGpuCall, runGpuCall } from "./gpu/_runner.ts";
import { type GpuTilingTargets, readTargets } from "./gpu/_tiling.ts";
import { HEAD_DIM_MAX } from "./_limits.ts";
import { readSramBytes } from "./_options.ts";
import {
  type GpuAdapterInfoLike,
  type GpuAdapterLike,
  type GpuBufferLike,
  type GpuDevice,
  type GpuDeviceLike,
  type GpuLimits,
  navigatorGpu,
  REQUESTED_LIMITS,
} from "./gpu/_webgpu.ts";

export type { GpuBufferLike, GpuDeviceLike, GpuLimits, GpuTensor, GpuTilingTargets };

/**
 * Thrown (as a rejection) where WebGPU cannot run attention: the runtime has no `navigator.gpu`
 * (Node 20, Bun, workerd, a browser without WebGPU), no adapter is available, the device could not
 * be created or was lost, or the GPU attention was destroyed.
 */
export class GpuUnavailableError extends Error {
  /**
   * Makes the error.
   *
   * @param text What is missing.
   */
  constructor(text: string) {
    super(text);
    this.name = "GpuUnavailableError";
  }
}

/** Options of {@linkcode createGpuAttention}. */
export interface GpuAttentionOptions<Device extends GpuDeviceLike = GpuDeviceLike> {
  /**
   * The device to run on (it stays the caller's: `destroy()` leaves it alive). Default: a device
   * requested from `navigator.gpu` with the adapter's own limits for workgroup storage,
   * invocations per workgroup and buffer sizes (the defaults of a new device are lower).
   */
  device?: Device;
  /** Passed to `requestAdapter` when no device is given. */
  powerPreference?: "low-power" | "high-performance";
  /** Reshapes the kernel's workgroup (a tuning knob; the defaults suit data-centre GPUs). */
  tiling?: GpuTilingTargets;
}

/** Options of {@linkcode GpuAttention.flashAttention}: those of `flashAttention`, and where the output goes. */
export interface GpuFlashAttentionOptions extends FlashAttentionOptions {
  /**
   * `"cpu"` (default): O (and lse) are read back into host arrays, as `flashAttention` returns them.
   * `"gpu"`: they stay on the device as new GPUBuffers ({@linkcode GpuAttentionOutput}), which the
   * caller owns and destroys; `out` is then not allowed.
   */
  outputLocation?: "cpu" | "gpu";
  /**
   * Workgroup memory per workgroup, in bytes (the GPU's "SRAM"): Br and Bc are derived from it,
   * d and dv. Default: the device's `maxComputeWorkgroupStorageSize`; at most that.
   */
  sramBytes?: number;
}

/**
 * A result left on the device (`outputLocation: "gpu"`): O in a new GPUBuffer, in the input's
 * layout, and lse in another when asked for. It is a {@linkcode GpuTensor}, so it can be passed
 * to the next call as it is. The caller owns both buffers and destroys them (`buffer.destroy()`);
 * {@linkcode GpuAttention.destroy} does not, though destroying a device destroys its buffers.
 */
export interface GpuAttentionOutput<Buffer extends GpuBufferLike = GpuBufferLike> extends GpuTensor<Buffer> {
  /** How O is stored: `"f32"`, or `outDtype`'s 16 bits (two elements per 4-byte word, the first in the low half). */
  dtype: Dtype;
  /** lse, f32, shape [B, H, Nq] ([H, totalQ] varlen), with `returnLse`. */
  lse?: GpuTensor<Buffer> & { dtype: "f32" };
  /** The measured traffic and tiling, with `stats: true`. */
  stats?: AttentionStats;
}

/**
 * The tiling the kernel uses for some head dims: what `flashAttentionIo`'s `blocks` option takes.
 * Each workgroup runs Br·T threads, T = `tiling.threadsPerRow` of {@linkcode createGpuAttention} (default 2).
 */
export interface GpuTiling {
  /** Workgroup memory budget in bytes (the call's `sramBytes`). */
  sramBytes: number;
  /** Workgroup memory the kernel declares for this tiling: never more than `sramBytes`. */
  sramPeakBytes: number;
  /** Query rows per workgroup (virtual rows of a GQA group). */
  Br: number;
  /** Keys per tile. */
  Bc: number;
}

/** What the GPU attention runs on. */
export interface GpuAdapterSummary {
  /** The adapter's description (e.g. "NVIDIA H200", "llvmpipe (LLVM 15.0.6, 256 bits)"), or "" when unknown. */
  description: string;
  /** Its vendor, as the adapter reports it ("" when unknown). */
  vendor: string;
  /** Its architecture, as the adapter reports it ("" when unknown). */
  architecture: string;
  /** Whether it is a fallback (software) adapter, when known. */
  fallback: boolean | undefined;
  /** The device's workgroup storage in bytes: the largest and default `sramBytes`. */
  maxWorkgroupStorageBytes: number;
  /** The device's invocations per workgroup. */
  maxInvocationsPerWorkgroup: number;
}

/** Attention on one WebGPU device, made by {@linkcode createGpuAttention}. */
export interface GpuAttention<Buffer extends GpuBufferLike = GpuBufferLike> {
  /**
   * {@linkcode GpuAttention.flashAttention} keeping its output on the device.
   *
   * @param q Queries: a host tensor or a {@linkcode GpuTensor}.
   * @param k Keys.
   * @param v Values.
   * @param options Options with `outputLocation: "gpu"`.
   * @returns O (and lse) in new GPUBuffers that the caller owns.
   */
  flashAttention(
    q: InputTensor | GpuTensor<Buffer>,
    k: InputTensor | GpuTensor<Buffer>,
    v: InputTensor | GpuTensor<Buffer>,
    options: GpuFlashAttentionOptions & { outputLocation: "gpu" },
  ): Promise<GpuAttentionOutput<Buffer>>;
  /**
   * {@linkcode GpuAttention.flashAttention} with a 16-bit output and `returnLse: true`.
   *
   * @param q Queries.
   * @param k Keys.
   * @param v Values.
   * @param options Options with `outDtype: "f16"` or `"bf16"` and `returnLse: true`.
   * @returns O in 16 bits with its f32 lse.
   */
  flashAttention(
    q: InputTensor | GpuTensor<Buffer>,
    k: InputTensor | GpuTensor<Buffer>,
    v: InputTensor | GpuTensor<Buffer>,
    options: GpuFlashAttentionOptions & { outDtype: HalfDtype; returnLse: true; outputLocation?: "cpu" },
  ): Promise<HalfAttentionOutput & { lse: Tensor }>;
  /**
   * {@linkcode GpuAttention.flashAttention} with a 16-bit output.
   *
   * @param q Queries.
   * @param k Keys.
   * @param v Values.
   * @param options Options with `outDtype: "f16"` or `"bf16"`.
   * @returns O in 16 bits.
   */
  flashAttention(
    q: InputTensor | GpuTensor<Buffer>,
    k: InputTensor | GpuTensor<Buffer>,
    v: InputTensor | GpuTensor<Buffer>,
    options: GpuFlashAttentionOptions & { outDtype: HalfDtype; outputLocation?: "cpu" },
  ): Promise<HalfAttentionOutput>;
  /**
   * {@linkcode GpuAttention.flashAttention} with `returnLse: true`.
   *
   * @param q Queries.
   * @param k Keys.
   * @param v Values.
   * @param options Options with `returnLse: true`.
   * @returns O with its lse.
   */
  flashAttention(
    q: InputTensor | GpuTensor<Buffer>,
    k: InputTensor | GpuTensor<Buffer>,
    v: InputTensor | GpuTensor<Buffer>,
    options: GpuFlashAttentionOptions & { returnLse: true; outputLocation?: "cpu" },
  ): Promise<AttentionOutput & { lse: Tensor }>;
  /**
   * Exact attention `softmax(scale·Q·Kᵀ)·V` on the GPU: FlashAttention-2's forward in WGSL, f32
   * arithmetic, with every option of `flashAttention` (causal, windows, GQA/MQA, softcap, ALiBi,
   * masks, seqLensK, varlen, layouts, 16-bit inputs and outputs, `out`, `stats`). The call is
   * validated by the CPU build's own checks before any GPU work, so a bad call rejects with the
   * same typed error. The result equals the f64 reference within the same tolerance as the CPU
   * build's; its bits differ from the CPU build's, but every run on one device gives the same bits.
   *
   * @param q Queries, [B, Nq, H, d] (layouts as `flashAttention`): a host tensor or a {@linkcode GpuTensor}.
   * @param k Keys, [B, Nk, Hkv, d].
   * @param v Values, [B, Nk, Hkv, dv].
   * @param options See {@linkcode GpuFlashAttentionOptions}.
   * @returns The output as `flashAttention` returns it (a fresh array or `out`).
   * @throws {ShapeError} As `flashAttention`, and for a GPU buffer smaller than its shape.
   * @throws {TypeError} As `flashAttention`; for a GPU buffer without STORAGE usage, or mapped; an
   *   `outputLocation` other than "cpu" or "gpu", or `out` with "gpu".
   * @throws {RangeError} As `flashAttention`; for `sramBytes` beyond the device's workgroup storage
   *   or too small for the head dims, tensors larger than the device binds, or when the GPU runs
   *   out of memory.
   * @throws {GpuUnavailableError} After `destroy()`, or once the device is lost.
   */
  flashAttention(
    q: InputTensor | GpuTensor<Buffer>,
    k: InputTensor | GpuTensor<Buffer>,
    v: InputTensor | GpuTensor<Buffer>,
    options?: GpuFlashAttentionOptions,
  ): Promise<AttentionOutput>;
  /**
   * The backward pass of {@linkcode GpuAttention.flashAttention} on the GPU: ∂L/∂q, ∂L/∂k and
   * ∂L/∂v by recomputation (FlashAttention-2's backward: no Nq × Nk matrix is stored), with the
   * options of `flashAttentionBackward`, validated by its own code before any GPU work. Like the
   * CPU backward it is deterministic (the same bits on every run; it differs from the CPU's in the
   * last bits), but dQ and dK/dV come from separate kernels instead of atomic adds, and it counts
   * no traffic: `stats: true` is a TypeError. q, k and v may be GPU tensors; `out` (the forward's
   * result with lse) and `dOut` are host tensors.
   *
   * @param q Queries, as passed to the forward.
   * @param k Keys.
   * @param v Values.
   * @param out The forward's result, run with `returnLse: true` and the same options.
   * @param dOut ∂L/∂O, shaped like the output.
   * @param options The forward's options, `out` buffers for the gradients, and `sramBytes`.
   * @returns The gradients, f32, shaped like q, k and v.
   * @throws {ShapeError} As `flashAttentionBackward`.
   * @throws {TypeError} As `flashAttentionBackward`, and for `stats: true`.
   * @throws {RangeError} As `flashAttentionBackward`, and for `sramBytes` the GPU cannot use.
   * @throws {GpuUnavailableError} After `destroy()`, or once the device is lost.
   */
  flashAttentionBackward(
    q: InputTensor | GpuTensor<Buffer>,
    k: InputTensor | GpuTensor<Buffer>,
    v: InputTensor | GpuTensor<Buffer>,
    out: AttentionOutput | HalfAttentionOutput,
    dOut: InputTensor,
    options?: FlashAttentionBackwardOptions,
  ): Promise<AttentionGradients>;
  /**
   * The tiling a call with these head dims runs with.
   *
   * @param d Head dim of q and k.
   * @param dv Head dim of v (default d).
   * @param options The call's `sramBytes` (default: the device's workgroup storage) and whether it has a mask.
   * @returns The blocks and the workgroup memory they take.
   * @throws {RangeError} For head dims outside [1, 256], and as a call with those head dims and
   *   sramBytes would (sramBytes out of range, beyond the device's workgroup storage, or too small).
   */
  tiling(d: number, dv?: number, options?: { sramBytes?: number; masked?: boolean }): GpuTiling;
  /** The device the kernels run on. */
  readonly device: GpuDeviceLike;
  /** What the device is. */
  readonly adapter: GpuAdapterSummary;
  /**
   * Releases the cached pipelines and, when the device was requested by `createGpuAttention`,
   * destroys it (with every buffer made on it). A device passed in stays alive. Calls made
   * afterwards reject with a {@linkcode GpuUnavailableError}.
   */
  destroy(): void;
}

const CREATE_KEYS = ["device", "powerPreference", "tiling"] as const;
const TILING_KEYS = ["rowsPerWorkgroup", "threadsPerRow", "keysPerTile", "prefetch"] as const;

/** "Cannot create a GPU attention as ..." */
const cannot = (text: string) => `Cannot create a GPU attention as ${text}`;

function checkCreateOptions(options: unknown): GpuAttentionOptions {
  if (options === undefined) return {};
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new TypeError(cannot(`options must be an object: options is ${describe(options)}`));
  }
  for (const key of Object.keys(options)) {
    if (!(CREATE_KEYS as readonly string[]).includes(key)) {
      throw new TypeError(cannot(`options has an unknown key "${key}": the known keys are ${CREATE_KEYS.join(", ")}`));
    }
  }
  const o = options as GpuAttentionOptions;
  if (
    o.powerPreference !== undefined && o.powerPreference !== "low-power" && o.powerPreference !== "high-performance"
  ) {
    throw new TypeError(
      cannot(`powerPreference must be "low-power" or "high-performance": it is ${describe(o.powerPreference)}`),
    );
  }
  if (o.device !== undefined && (typeof o.device !== "object" || o.device === null || !("queue" in o.device))) {
    throw new TypeError(cannot(`device must be a GPUDevice: device is ${describe(o.device)}`));
  }
  if (o.tiling !== undefined) {
    if (typeof o.tiling !== "object" || o.tiling === null) {
      throw new TypeError(cannot(`tiling must be an object: tiling is ${describe(o.tiling)}`));
    }
    for (const key of Object.keys(o.tiling)) {
      if (!(TILING_KEYS as readonly string[]).includes(key)) {
        throw new TypeError(cannot(`tiling has an unknown key "${key}": the known keys are ${TILING_KEYS.join(", ")}`));
      }
    }
    const t = readTargets(o.tiling);
    if (typeof t.prefetch !== "boolean") {
      throw new TypeError(cannot(`tiling.prefetch must be a boolean: it is ${describe(t.prefetch)}`));
    }
    const power = (x: number) => Number.isInteger(x) && x >= 1 && (x & (x - 1)) === 0;
    if (!power(t.threadsPerRow) || t.threadsPerRow > 16) {
      throw new RangeError(cannot(`tiling.threadsPerRow must be 1, 2, 4, 8 or 16: it is ${describe(t.threadsPerRow)}`));
    }
    if (!Number.isInteger(t.rowsPerWorkgroup) || t.rowsPerWorkgroup < 8 || t.rowsPerWorkgroup > 1024) {
      throw new RangeError(
        cannot(`tiling.rowsPerWorkgroup must be an integer in [8, 1024]: it is ${describe(t.rowsPerWorkgroup)}`),
      );
    }
    if (!Number.isInteger(t.keysPerTile) || t.keysPerTile < t.threadsPerRow || t.keysPerTile > 256) {
      throw new RangeError(
        cannot(
          `tiling.keysPerTile must be an integer in [threadsPerRow, 256]: it is ${describe(t.keysPerTile)}`,
        ),
      );
    }
  }
  return o;
}

/** Requests an adapter and a device with the adapter's limits, or rejects with GpuUnavailableError. */
async function requestDevice(powerPreference: GpuAttentionOptions["powerPreference"]) {
  const gpu = navigatorGpu();
  if (gpu === undefined) {
    throw new GpuUnavailableError(
      "WebGPU is not available: this runtime has no navigator.gpu (Deno and Chromium-based browsers have it; Node 20, Bun and workerd do not)",
    );
  }
  let adapter: GpuAdapterLike | null;
  try {
    adapter = await gpu.requestAdapter(powerPreference ? { powerPreference } : undefined);
  } catch (cause) {
    throw new GpuUnavailableError(`WebGPU is not available: requestAdapter failed: ${String(cause)}`);
  }
  if (!adapter) {
    throw new GpuUnavailableError(
      "WebGPU is not available: navigator.gpu.requestAdapter() found no adapter (on Linux without a GPU, install Mesa's Vulkan drivers for lavapipe)",
    );
  }
  const requiredLimits: Record<string, number> = {};
  for (const name of REQUESTED_LIMITS) requiredLimits[name] = adapter.limits[name];
  try {
    return { adapter, device: await adapter.requestDevice({ requiredLimits, label: "@flash/attention" }) };
  } catch (cause) {
    throw new GpuUnavailableError(`WebGPU is not available: requestDevice failed: ${String(cause)}`);
  }
}

/** Infers a device's buffer type, so outputs are typed as the caller's own GPUBuffer. */
export type BufferOf<Device> = Device extends { createBuffer(descriptor: never): infer B extends GpuBufferLike } ? B
  : GpuBufferLike;

/**
 * Creates attention on a WebGPU device: `device` when given, otherwise one requested from
 * `navigator.gpu` with the adapter's limits for workgroup storage, invocations and buffer sizes.
 * Pipelines are compiled on first use per shape class and cached.
 *
 * @param options The device (or how to request one) and the tiling targets.
 * @returns The GPU attention.
 * @throws {GpuUnavailableError} Where the runtime has no WebGPU, no adapter, or no device could be made.
 * @throws {TypeError} For an unknown or mistyped option.
 * @throws {RangeError} For tiling targets out of range.
 *
 * @example Usage
 * ```ts ignore
 * import { createGpuAttention } from "@flash/attention/gpu";
 *
 * const gpu = await createGpuAttention();
 * const [B, N, H, d] = [1, 4096, 8, 64];
 * const tensor = () => ({ data: new Float32Array(B * N * H * d).map(() => Math.random() - 0.5), shape: [B, N, H, d] });
 * const o = await gpu.flashAttention(tensor(), tensor(), tensor(), { causal: true });
 * gpu.destroy();
 * ```
 */
export async function createGpuAttention<Device extends GpuDeviceLike = GpuDeviceLike>(
  options?: GpuAttentionOptions<Device>,
): Promise<GpuAttention<BufferOf<Device>>> {
  const o = checkCreateOptions(options);
  const targets = readTargets(o.tiling);
  let device: GpuDevice;
  let info: GpuAdapterInfoLike | undefined;
  let fallback: boolean | undefined;
  const owned = o.device === undefined;
  if (o.device) {
    device = o.device as unknown as GpuDevice; // a real GPUDevice: it has every member GpuDevice names
    info = (o.device as { adapterInfo?: GpuAdapterInfoLike }).adapterInfo;
    fallback = info?.isFallbackAdapter;
  } else {
    const made = await requestDevice(o.powerPreference);
    device = made.device;
    info = made.adapter.info ?? (made.device as { adapterInfo?: GpuAdapterInfoLike }).adapterInfo;
    fallback = made.adapter.info?.isFallbackAdapter ?? made.adapter.isFallbackAdapter;
  }
  let gone: string | undefined;
  device.lost.then((lost) => {
    gone ??= `the device was lost: ${lost.message || String(lost.reason)}`;
  });
  const ctx: GpuContext = { device, targets, pipelines: new Map() };
  const limits = device.limits;

  const tiling = (d: number, dv = d, options: { sramBytes?: number; masked?: boolean } = {}): GpuTiling => {
    for (const [name, x] of [["d", d], ["dv", dv]] as const) {
      if (!Number.isInteger(x) || x < 1 || x > HEAD_DIM_MAX) {
        throw new RangeError(message(`${name} must be an integer in [1, ${HEAD_DIM_MAX}]: ${name} is ${describe(x)}`));
      }
    }
    const sramBytes = options.sramBytes === undefined
      ? limits.maxComputeWorkgroupStorageSize
      : readSramBytes(options.sramBytes);
    const b = blocksFor(ctx, sramBytes, d, dv, options.masked ?? false);
    return { sramBytes, sramPeakBytes: b.footprintBytes, Br: b.Br, Bc: b.Bc };
  };

  const run = async (q: unknown, k: unknown, v: unknown, options?: GpuFlashAttentionOptions) => {
    if (gone) throw new GpuUnavailableError(message(gone));
    // outputLocation is the GPU's own option; everything else is validated as flashAttention's.
    let rest: unknown = options;
    let outputLocation: unknown;
    if (typeof options === "object" && options !== null && !Array.isArray(options)) {
      ({ outputLocation, ...rest } = options);
    }
    const gpuInputs = new Map<string, GpuBufferLike>();
    const call = validateForwardCall(q, k, v, rest, gpuTensorReader(gpuInputs));
    const location = outputLocation ?? "cpu";
    if (location !== "cpu" && location !== "gpu") {
      throw new TypeError(message(`outputLocation must be "cpu" or "gpu": outputLocation is ${describe(location)}`));
    }
    if (location === "gpu" && call.out !== undefined) {
      throw new TypeError(
        message('out cannot be combined with outputLocation "gpu": the output is a new GPUBuffer'),
      );
    }
    const given = (rest as { sramBytes?: unknown } | undefined)?.sramBytes;
    const sramBytes = given === undefined ? limits.maxComputeWorkgroupStorageSize : call.sramBytes;
    const problem = call.problem;
    try {
      const prepared = await prepareGpuCall(ctx, call, gpuInputs, sramBytes);
      const result = await runGpuCall(ctx, call, prepared, location);
      if (result.device) {
        const output: GpuAttentionOutput = { buffer: result.device.o, shape: problem.oShape, dtype: problem.dtypes.o };
        if (result.device.lse) output.lse = { buffer: result.device.lse, shape: problem.lseShape, dtype: "f32" };
        if (result.stats) output.stats = result.stats;
        return output;
      }
      const output = hostOutput(problem, result.host!);
      if (result.stats) output.stats = result.stats;
      return output;
    } catch (error) {
      if (gone) throw new GpuUnavailableError(message(gone));
      throw error;
    }
  };

  const backward = async (
    q: unknown,
    k: unknown,
    v: unknown,
    out: unknown,
    dOut: unknown,
    options?: FlashAttentionBackwardOptions,
  ): Promise<AttentionGradients> => {
    if (gone) throw new GpuUnavailableError(message(gone));
    const gpuInputs = new Map<string, GpuBufferLike>();
    const call = validateBackwardCall(q, k, v, out, dOut, options, gpuTensorReader(gpuInputs));
    const given = (options as { sramBytes?: unknown } | undefined)?.sramBytes;
    const sramBytes = given === undefined ? limits.maxComputeWorkgroupStorageSize : call.sramBytes;
    try {
      return await runGpuBackward(ctx, call, gpuInputs, sramBytes);
    } catch (error) {
      if (gone) throw new GpuUnavailableError(message(gone));
      throw error;
    }
  };

  return {
    flashAttention: run as GpuAttention<BufferOf<Device>>["flashAttention"],
    flashAttentionBackward: backward,
    tiling,
    device,
    adapter: {
      description: info?.description ?? "",
      vendor: info?.vendor ?? "",
      architecture: info?.architecture ?? "",
      fallback,
      maxWorkgroupStorageBytes: limits.maxComputeWorkgroupStorageSize,
      maxInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
    },
    destroy() {
      gone ??= "the GPU attention was destroyed";
      ctx.pipelines.clear();
      if (owned) device.destroy();
    },
  };
}
