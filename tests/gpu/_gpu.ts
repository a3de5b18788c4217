// Helpers of the WebGPU suite (Deno only: `deno test --allow-env tests/gpu/`, `npm test`'s gpu
// suite). Every test runs on one device, shared by GPU attentions of a few tilings: lavapipe
// compiles each kernel shape in LLVM (0.5–15 s), so the suite keeps to a small set of shapes.
//
// Without a WebGPU adapter the tests are skipped, except with CI=true, where the missing adapter
// is itself a failing test: CI installs Mesa's Vulkan drivers (lavapipe) for this suite.

import { createGpuAttention, type GpuAttention, type GpuTilingTargets } from "../../src/gpu.ts";
import { BUFFER_USAGE, MAP_READ } from "../../src/gpu/_webgpu.ts";
import type { AttentionOutput, FlashAttentionOptions, InputTensor, Tensor } from "../../mod.ts";
import { referenceAttention } from "../../src/reference.ts";
import { referenceForward, withF32Inputs } from "../../src/_reference.ts";
import { validateCall } from "../../src/_validate.ts";
import { assertFlashTolerance } from "../_util.ts";

const ci = Deno.env.get("CI") === "true";

async function requestDevice(): Promise<GPUDevice | undefined> {
  try {
    const adapter = await navigator.gpu?.requestAdapter();
    if (!adapter) return undefined;
    const limits: Record<string, number> = {};
    for (
      const name of [
        "maxComputeWorkgroupStorageSize",
        "maxComputeInvocationsPerWorkgroup",
        "maxComputeWorkgroupSizeX",
        "maxStorageBufferBindingSize",
        "maxBufferSize",
      ] as const
    ) limits[name] = adapter.limits[name];
    return await adapter.requestDevice({ requiredLimits: limits });
  } catch {
    return undefined;
  }
}

/** The suite's device (with the adapter's limits), or undefined where there is no WebGPU adapter. */
export const device: GPUDevice | undefined = await requestDevice();

if (device === undefined) {
  Deno.test({
    name: "a WebGPU adapter is available (CI=true requires one: install mesa-vulkan-drivers)",
    ignore: !ci,
    fn() {
      throw new Error("no WebGPU adapter: navigator.gpu.requestAdapter() returned none");
    },
  });
}

/**
 * Whether the device's WGSL fma() rounds once (WGSL lets it round once or twice): the kernel's dot
 * products are fma() chains, so the tests' f32 baseline fuses exactly where the GPU does. Probed
 * on (1 + 2⁻¹²)² − (1 + 2⁻¹¹), whose exact value 2⁻²⁴ survives only a fused multiply-add (the
 * rounded product is 1 + 2⁻¹¹); the operands come from a buffer, so nothing folds them.
 */
async function probeFusedFma(device: GPUDevice): Promise<boolean> {
  const code = `@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(1) fn main() { x[3] = fma(x[0], x[1], x[2]); }`;
  const module = device.createShaderModule({ code });
  const pipeline = await device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main" } });
  const a = 1 + 2 ** -12;
  const buffer = upload(new Float32Array([a, a, -(1 + 2 ** -11), 0]));
  const bindGroup = device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: { buffer } }],
  });
  const encoder = device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bindGroup);
  pass.dispatchWorkgroups(1);
  pass.end();
  device.queue.submit([encoder.finish()]);
  const result = new Float32Array(await download(buffer))[3];
  buffer.destroy();
  if (result !== 0 && result !== 2 ** -24) throw new Error(`fma probe gave ${result}`);
  return result !== 0;
}

/** Whether the device's fma() is fused (false without a device). */
export const gpuFusesFma: boolean = device ? await probeFusedFma(device) : false;

/**
 * Standard attention in f32 arithmetic with the GPU's multiply-adds (fused where its fma() is):
 * the "same arithmetic, other order" baseline of the tolerance rule (as tests/_util.ts's
 * naiveAttentionF32 is for the CPU kernels), on the f32 values of 16-bit inputs.
 */
export function naiveGpuF32(
  q: InputTensor,
  k: InputTensor,
  v: InputTensor,
  options: FlashAttentionOptions = {},
): { data: Float32Array; lse: Float32Array } {
  const p = withF32Inputs(validateCall(q, k, v, { ...options }));
  const { o, lse } = referenceForward(p, Math.fround, gpuFusesFma);
  return { data: Float32Array.from(o), lse: Float32Array.from(lse) };
}

/**
 * Registers a GPU test. WebGPU objects are Deno resources that outlive a test until collected, so
 * the resource and op sanitizers are off; each test destroys what it creates.
 */
export function gpuTest(name: string, fn: () => Promise<void> | void): void {
  Deno.test({ name, ignore: device === undefined, sanitizeResources: false, sanitizeOps: false, fn });
}

/** Small tilings: their kernels compile in about a second on lavapipe. */
export const TILINGS = {
  /** The smallest: 8 rows, 2 threads per row, 4 keys per tile. */
  tiny: { rowsPerWorkgroup: 8, threadsPerRow: 2, keysPerTile: 4 },
  /** 16 rows, 4 threads per row, 16 keys per tile. */
  small: { rowsPerWorkgroup: 16, threadsPerRow: 4, keysPerTile: 16 },
  /** 64 rows with 8 threads per row and 32 keys per tile. */
  wide: { rowsPerWorkgroup: 64, threadsPerRow: 8, keysPerTile: 32 },
} as const satisfies Record<string, GpuTilingTargets>;

const attentions = new Map<string, Promise<GpuAttention<GPUBuffer>>>();

/** A GPU attention on the suite's device with these tiling targets (default: the library's). */
export function gpuAttention(tiling?: GpuTilingTargets): Promise<GpuAttention<GPUBuffer>> {
  const key = JSON.stringify(tiling ?? {});
  let gpu = attentions.get(key);
  if (gpu === undefined) {
    gpu = createGpuAttention({ device: device!, tiling });
    attentions.set(key, gpu);
  }
  return gpu;
}

/** A storage buffer holding `data` (padded to a 4-byte word). */
export function upload(data: Float32Array | Uint16Array | Uint8Array, extraBytes = 0): GPUBuffer {
  const size = Math.max(4, Math.ceil((data.byteLength + extraBytes) / 4) * 4);
  const buffer = device!.createBuffer({
    size,
    usage: BUFFER_USAGE.STORAGE | BUFFER_USAGE.COPY_SRC | BUFFER_USAGE.COPY_DST,
    mappedAtCreation: true,
  });
  new Uint8Array(buffer.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  buffer.unmap();
  return buffer;
}

/** The bytes of a buffer, read back through a mappable copy. */
export async function download(buffer: GPUBuffer): Promise<ArrayBuffer> {
  const staging = device!.createBuffer({ size: buffer.size, usage: BUFFER_USAGE.MAP_READ | BUFFER_USAGE.COPY_DST });
  const encoder = device!.createCommandEncoder();
  encoder.copyBufferToBuffer(buffer, 0, staging, 0, buffer.size);
  device!.queue.submit([encoder.finish()]);
  await staging.mapAsync(MAP_READ);
  const bytes = staging.getMappedRange().slice(0);
  staging.destroy();
  return bytes;
}

/**
 * Every input of these tests is finite, so a NaN anywhere means a key that does not exist was read.
 * Checked on its own because the tolerance rule passes NaN where the reference has NaN too.
 */
export function assertNoNaN(what: string, ...arrays: ArrayLike<number>[]): void {
  for (const [n, a] of arrays.entries()) {
    for (let i = 0; i < a.length; i++) {
      if (Number.isNaN(a[i])) throw new Error(`NaN in array ${n}, element ${i}: ${what}`);
    }
  }
}

/**
 * Runs the GPU attention with returnLse and checks O and lse against the f64 reference by the
 * flash-attention rule of tests/_util.ts: error(GPU vs f64) ≤ 2 × error(naive f32 vs f64) + 1e-6,
 * the naive f32 baseline fusing its multiply-adds where the GPU's fma() does (naiveGpuF32). The
 * factor 2 covers the kernel's other summation order and the online rescaling, as on the CPU.
 */
export async function checkAgainstReference(
  gpu: GpuAttention<GPUBuffer>,
  what: string,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options: FlashAttentionOptions,
): Promise<AttentionOutput & { lse: Tensor }> {
  const o = await gpu.flashAttention(q, k, v, { ...options, returnLse: true });
  const { sramBytes: _sramBytes, out: _out, stats: _stats, outDtype: _outDtype, ...semantic } = options;
  const ref = referenceAttention(q, k, v, { ...semantic, returnLse: true });
  const naive = naiveGpuF32(q, k, v, semantic);
  assertNoNaN(what, o.data, o.lse.data, ref.data, ref.lse.data, naive.data, naive.lse);
  assertFlashTolerance(`O of ${what}`, o.data, ref.data, naive.data);
  assertFlashTolerance(`lse of ${what}`, o.lse.data, ref.lse.data, naive.lse);
  return o;
}
