// The WebGPU runner: from a validated call (src/_validate.ts) to its result, on one device. Its own
// checks first (the tiling that fits the workgroup-memory budget, buffer sizes within the device's
// limits), then the pipeline (compiled once per kernel shape and cached), then, synchronously
// inside error scopes so that overlapping calls cannot take each other's scopes: the buffers, one
// dispatch, the copies back, one submit. The caller's host arrays are uploaded as they are (a
// 16-bit tensor as its raw words); GPU tensors are bound where they are.

import { bytesOf } from "../_half.ts";
import { message } from "../_messages.ts";
import { allocateResults, type Results } from "../_plan.ts";
import type { AttentionCall, AttentionProblem } from "../_problem.ts";
import { type Counters, statsOf } from "../_stats.ts";
import { type AttentionStats, zeroBackwardBytes } from "../result.ts";
import type { AttentionOutput } from "../result.ts";
import type { Dtype } from "../tensor.ts";
import {
  COUNTER_SKIPPED,
  COUNTER_SLOTS,
  COUNTER_TILES,
  COUNTER_UNITS,
  flopsPerUnit,
  forwardKernel,
  kernelKey,
} from "./shaders/forward.ts";
import type { ForwardKernelConfig } from "./shaders/forward.ts";
import { type GpuPlan, planGpuForward } from "./_plan.ts";
import { chooseBlocks, footprintBytes, type GpuBlocks, type GpuTilingTargets } from "./_tiling.ts";
import { BUFFER_USAGE, type GpuBufferLike, type GpuDevice, type GpuPipelineLike, MAP_READ } from "./_webgpu.ts";

/** A device and what the runner keeps on it between calls. */
export interface GpuContext {
  device: GpuDevice;
  targets: Required<GpuTilingTargets>;
  /** Compiled pipelines by kernel key. */
  pipelines: Map<string, Promise<GpuPipelineLike>>;
}

/**
 * The tiling for an arena of `sramBytes` and head dims d, dv on this device, or the RangeError that
 * says why none fits; `shapes` ends the messages (a call's "q.shape is ..., ...").
 */
export function blocksFor(
  ctx: GpuContext,
  sramBytes: number,
  d: number,
  dv: number,
  masked: boolean,
  shapes?: string,
): GpuBlocks {
  const { maxComputeWorkgroupStorageSize: limit, maxComputeInvocationsPerWorkgroup, maxComputeWorkgroupSizeX } =
    ctx.device.limits;
  const context = shapes ? ` (${shapes})` : "";
  if (sramBytes > limit) {
    throw new RangeError(
      message(
        `sramBytes is ${sramBytes}, more than the device's workgroup storage (maxComputeWorkgroupStorageSize ${limit})${context}`,
      ),
    );
  }
  const invocations = Math.min(maxComputeInvocationsPerWorkgroup, maxComputeWorkgroupSizeX);
  const blocks = chooseBlocks(sramBytes, d, dv, masked, invocations, ctx.targets);
  if (blocks === undefined) {
    const T = ctx.targets.threadsPerRow;
    throw new RangeError(
      message(
        `sramBytes is ${sramBytes}, too small for head dims d = ${d}, dv = ${dv}${
          masked ? " with a mask" : ""
        } on the GPU: the smallest tile (8 rows, ${T} keys) needs ${
          footprintBytes(8, T, T, d, dv, masked)
        } bytes of workgroup storage${context}`,
      ),
    );
  }
  return blocks;
}

/** The compiled pipeline of a kernel shape (cached per context). */
export function pipelineFor(ctx: GpuContext, config: ForwardKernelConfig): Promise<GpuPipelineLike> {
  const key = kernelKey(config);
  let pipeline = ctx.pipelines.get(key);
  if (pipeline === undefined) {
    const module = ctx.device.createShaderModule({ code: forwardKernel(config), label: `flash-attention ${key}` });
    pipeline = ctx.device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main" } });
    ctx.pipelines.set(key, pipeline);
    pipeline.catch(() => ctx.pipelines.delete(key));
  }
  return pipeline;
}

const roundUp4 = (bytes: number) => Math.max(4, Math.ceil(bytes / 4) * 4);

/** A call with every check passed, its buffers made and written, ready to encode. */
export interface PreparedGpuCall {
  problem: AttentionProblem;
  blocks: GpuBlocks;
  plan: GpuPlan;
  sramBytes: number;
  /** O and lse (when asked for) on the device; lse's is a 4-byte stand-in otherwise. */
  o: GpuBufferLike;
  lse: GpuBufferLike;
  counters: GpuBufferLike;
  /** Adds the call's dispatch to a compute pass. */
  dispatch(
    pass: {
      setPipeline(p: unknown): unknown;
      setBindGroup(i: number, g: unknown): unknown;
      dispatchWorkgroups(x: number, y?: number): unknown;
    },
  ): void;
  /** Destroys the buffers the call made for its inputs (not O, lse or the counters). */
  releaseInputs(): void;
}

/** Throws the RangeError for a buffer of `bytes` bytes (`what`) that the device cannot bind. */
export function checkBinding(ctx: GpuContext, what: string, bytes: number, shapes: string): void {
  const { maxStorageBufferBindingSize, maxBufferSize } = ctx.device.limits;
  const limit = Math.min(maxStorageBufferBindingSize, maxBufferSize);
  if (bytes > limit) {
    throw new RangeError(
      message(
        `${what} needs a GPU buffer of ${bytes} bytes, more than the device binds (maxStorageBufferBindingSize ${maxStorageBufferBindingSize}, maxBufferSize ${maxBufferSize}): ${shapes}`,
      ),
    );
  }
}

/** Writes a typed array into a buffer from byte 0 (a tail that is not a whole 4-byte word is padded). */
function writeArray(device: GpuDevice, buffer: GpuBufferLike, data: ArrayBufferView): void {
  const whole = data.byteLength & ~3;
  if (whole > 0) device.queue.writeBuffer(buffer, 0, new Uint8Array(data.buffer, data.byteOffset, whole));
  if (whole < data.byteLength) {
    const tail = new Uint8Array(4);
    tail.set(new Uint8Array(data.buffer, data.byteOffset + whole, data.byteLength - whole));
    device.queue.writeBuffer(buffer, whole, tail);
  }
}

/**
 * Checks what the GPU needs of a validated call and makes its buffers. `gpuInputs` holds the GPU
 * buffers of q, k, v given as GPU tensors; the others are uploaded. O's buffer also gets COPY_SRC
 * and COPY_DST (for reading back, or for the caller once handed over). `countersFrom` (tests only)
 * gives the counters' initial words instead of zeros.
 */
export async function prepareGpuCall(
  ctx: GpuContext,
  call: AttentionCall,
  gpuInputs: Map<string, GpuBufferLike>,
  sramBytes: number,
  countersFrom?: Uint32Array,
): Promise<PreparedGpuCall> {
  const p = call.problem;
  const masked = p.mask !== undefined;
  const blocks = blocksFor(ctx, sramBytes, p.d, p.dv, masked, p.shapes);
  const oBytes = roundUp4(p.oLength * bytesOf(p.dtypes.o));
  const lseBytes = roundUp4(p.returnLse ? 4 * p.lseLength : 0);
  const inputs = [["q", p.q], ["k", p.k], ["v", p.v]] as const;
  for (const [name, data] of inputs) if (!gpuInputs.has(name)) checkBinding(ctx, name, data.byteLength, p.shapes);
  if (p.mask) checkBinding(ctx, "the mask", p.mask.data.byteLength, p.shapes);
  checkBinding(ctx, "the output", oBytes, p.shapes);
  checkBinding(ctx, "lse", lseBytes, p.shapes);
  const plan = planGpuForward(p, blocks, ctx.device.limits.maxComputeWorkgroupsPerDimension, ctx.targets.prefetch);
  checkBinding(ctx, "the work list", plan.meta.byteLength, p.shapes);
  const pipeline = await pipelineFor(ctx, plan.kernel);

  const { device } = ctx;
  const made: GpuBufferLike[] = [];
  const buffer = (size: number, usage: number, label: string) => {
    const b = device.createBuffer({ size: roundUp4(size), usage, label });
    made.push(b);
    return b;
  };
  const STORAGE_IN = BUFFER_USAGE.STORAGE | BUFFER_USAGE.COPY_DST;
  const STORAGE_OUT = BUFFER_USAGE.STORAGE | BUFFER_USAGE.COPY_SRC | BUFFER_USAGE.COPY_DST;
  device.pushErrorScope("out-of-memory");
  device.pushErrorScope("validation");
  // One upload per distinct host array: flashAttention(x, x, v) sends x once.
  const uploads = new Map<ArrayBufferView, GpuBufferLike>();
  const bound = inputs.map(([name, data]) => {
    const given = gpuInputs.get(name);
    if (given) return given;
    let b = uploads.get(data);
    if (b === undefined) {
      b = buffer(data.byteLength, STORAGE_IN, name);
      writeArray(device, b, data);
      uploads.set(data, b);
    }
    return b;
  });
  const params = buffer(plan.params.byteLength, BUFFER_USAGE.UNIFORM | BUFFER_USAGE.COPY_DST, "params");
  device.queue.writeBuffer(params, 0, new Uint8Array(plan.params));
  const meta = buffer(plan.meta.byteLength, STORAGE_IN, "work list");
  writeArray(device, meta, plan.meta);
  let mask: GpuBufferLike | undefined;
  if (p.mask) {
    mask = buffer(p.mask.data.byteLength, STORAGE_IN, "mask");
    writeArray(device, mask, p.mask.data);
  }
  const o = buffer(oBytes, STORAGE_OUT, "O");
  const lse = buffer(lseBytes, STORAGE_OUT, "lse");
  const counters = buffer(8 * COUNTER_SLOTS, STORAGE_IN | BUFFER_USAGE.COPY_SRC, "counters");
  // Counters start at 0 (a new buffer is zeroed); a test may start them elsewhere to reach the carry.
  if (countersFrom) device.queue.writeBuffer(counters, 0, countersFrom);
  const entries = [
    { binding: 0, resource: { buffer: params } },
    { binding: 1, resource: { buffer: bound[0] } },
    { binding: 2, resource: { buffer: bound[1] } },
    { binding: 3, resource: { buffer: bound[2] } },
    { binding: 4, resource: { buffer: o } },
    { binding: 5, resource: { buffer: lse } },
    { binding: 7, resource: { buffer: meta } },
    { binding: 8, resource: { buffer: counters } },
  ];
  if (mask) entries.push({ binding: 6, resource: { buffer: mask } });
  const bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
  const validation = device.popErrorScope();
  const memory = device.popErrorScope();
  const [invalid, oom] = await Promise.all([validation, memory]);
  if (invalid || oom) {
    for (const b of made) b.destroy();
    throw gpuFailure(invalid, oom, p.shapes);
  }
  const temporaries = made.filter((b) => b !== o && b !== lse && b !== counters);
  return {
    problem: p,
    blocks,
    plan,
    sramBytes,
    o,
    lse,
    counters,
    dispatch(pass) {
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bindGroup);
      pass.dispatchWorkgroups(plan.grid[0], plan.grid[1]);
    },
    releaseInputs() {
      for (const b of temporaries) b.destroy();
    },
  };
}

/** The error for a failed error scope: out of memory is a RangeError, anything else a TypeError. */
function gpuFailure(
  invalid: { message: string } | null,
  oom: { message: string } | null,
  shapes: string,
): Error {
  if (oom) return new RangeError(message(`the GPU ran out of memory for this call: ${oom.message} (${shapes})`));
  return new TypeError(
    message(
      `the GPU rejected the call (is every GPU buffer from this device, and not destroyed?): ${
        invalid!.message
      } (${shapes})`,
    ),
  );
}

/** Where a call's O and lse end up. */
export type OutputLocation = "cpu" | "gpu";

/** O (and lse) left on the device, as the caller gets them. */
export interface DeviceResult {
  o: GpuBufferLike;
  lse: GpuBufferLike | undefined;
  stats: AttentionStats | undefined;
}

/**
 * Runs a prepared call: one dispatch, then (for the host) copies of O, lse and the counters into
 * mappable buffers, read once the queue is done. With location "gpu", O and lse stay on the device
 * and belong to the caller; every other buffer the call made is destroyed before this returns.
 */
export async function runGpuCall(
  ctx: GpuContext,
  call: AttentionCall,
  prepared: PreparedGpuCall,
  location: OutputLocation,
): Promise<{ host?: Results; device?: DeviceResult; stats?: AttentionStats }> {
  const { device } = ctx;
  const p = prepared.problem;
  const readO = location === "cpu";
  const readLse = location === "cpu" && p.returnLse;
  const staging: GpuBufferLike[] = [];
  const stage = (source: GpuBufferLike) => {
    const b = device.createBuffer({ size: source.size, usage: BUFFER_USAGE.MAP_READ | BUFFER_USAGE.COPY_DST });
    staging.push(b);
    return b;
  };
  try {
    device.pushErrorScope("out-of-memory");
    device.pushErrorScope("validation");
    const oStage = readO ? stage(prepared.o) : undefined;
    const lseStage = readLse ? stage(prepared.lse) : undefined;
    const countersStage = call.stats ? stage(prepared.counters) : undefined;
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    prepared.dispatch(pass);
    pass.end();
    if (oStage) encoder.copyBufferToBuffer(prepared.o, 0, oStage, 0, prepared.o.size);
    if (lseStage) encoder.copyBufferToBuffer(prepared.lse, 0, lseStage, 0, prepared.lse.size);
    if (countersStage) encoder.copyBufferToBuffer(prepared.counters, 0, countersStage, 0, prepared.counters.size);
    device.queue.submit([encoder.finish()]);
    const [invalid, oom] = await Promise.all([device.popErrorScope(), device.popErrorScope()]);
    if (invalid || oom) throw gpuFailure(invalid, oom, p.shapes);
    await Promise.all(staging.map((b) => b.mapAsync(MAP_READ)));
    let stats: AttentionStats | undefined;
    if (countersStage) stats = statsFrom(new Uint32Array(countersStage.getMappedRange()), prepared);
    if (location === "gpu") {
      return { device: { o: prepared.o, lse: p.returnLse ? prepared.lse : undefined, stats }, stats };
    }
    const results = allocateResults(p, call.out);
    const oWords = oStage!.getMappedRange();
    if (p.dtypes.o === "f32") (results.o as Float32Array).set(new Float32Array(oWords, 0, p.oLength));
    else (results.o as Uint16Array).set(new Uint16Array(oWords, 0, p.oLength));
    if (results.lse) results.lse.set(new Float32Array(lseStage!.getMappedRange(), 0, p.lseLength));
    return { host: results, stats };
  } catch (error) {
    if (location === "gpu") {
      prepared.o.destroy();
      prepared.lse.destroy();
    }
    throw error;
  } finally {
    for (const b of staging) b.destroy();
    prepared.releaseInputs();
    prepared.counters.destroy();
    if (location === "cpu") {
      prepared.o.destroy();
      prepared.lse.destroy();
    } else if (!p.returnLse) {
      prepared.lse.destroy();
    }
  }
}

/** The counters block (u64 slots as two u32 words) as AttentionStats. */
function statsFrom(words: Uint32Array, prepared: PreparedGpuCall): AttentionStats {
  const slot = (i: number) => words[2 * i] + 2 ** 32 * words[2 * i + 1];
  const read = zeroBackwardBytes();
  const written = zeroBackwardBytes();
  (["q", "k", "v", "o", "lse", "mask", "partial", "slopes"] as const).forEach((name, i) => {
    read[name] = slot(i);
    written[name] = slot(8 + i);
  });
  const counters: Counters = {
    read,
    written,
    tilesComputed: slot(COUNTER_TILES),
    tilesSkippedByMask: slot(COUNTER_SKIPPED),
    flops: slot(COUNTER_UNITS) * flopsPerUnit(prepared.plan.kernel),
    arenaPeakBytes: prepared.blocks.footprintBytes,
  };
  const { Br, Bc } = prepared.blocks;
  return statsOf(counters, prepared.problem, { sramBytes: prepared.sramBytes, Br, Bc });
}

/** A host result as the caller gets it (as src/_run.ts's outputOf, without loading the kernels). */
export function hostOutput(p: AttentionProblem, results: Results): AttentionOutput {
  const output = { data: results.data, shape: p.oShape } as AttentionOutput;
  if (p.dtypes.o !== "f32") (output as unknown as { dtype: Dtype }).dtype = p.dtypes.o;
  if (results.lse) output.lse = { data: results.lse, shape: p.lseShape };
  return output;
}
