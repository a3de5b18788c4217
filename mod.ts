/**
 * FlashAttention for JavaScript runtimes: exact attention `softmax(scale·Q·Kᵀ)·V` computed tile
 * by tile in WebAssembly SIMD, so the Nq × Nk score matrix never exists and memory grows linearly
 * with the sequence length. Works in Deno, Bun, Node, browsers and edge runtimes.
 *
 * ```ts
 * import { flashAttention, init } from "@flash/attention";
 *
 * await init(); // optional on Deno, Bun and Node; needed in browsers
 * const [B, N, H, d] = [1, 1024, 8, 64];
 * const q = { data: new Float32Array(B * N * H * d).map(Math.random), shape: [B, N, H, d] };
 * const k = { data: new Float32Array(B * N * H * d).map(Math.random), shape: [B, N, H, d] };
 * const v = { data: new Float32Array(B * N * H * d).map(Math.random), shape: [B, N, H, d] };
 * const o = flashAttention(q, k, v, { causal: true, returnLse: true });
 * console.log(o.shape, o.lse.shape); // [1, 1024, 8, 64] [1, 8, 1024]
 * ```
 *
 * Every core: `createAttentionPool()` runs the same calls on a pool of Workers that share one
 * WebAssembly memory, with bitwise identical results. Decoding: `createKvCache()` keeps a KV cache
 * in WebAssembly memory, so a step reads it where it lives. Half precision: q, k, v, KV caches and
 * the output may be stored as f16 or bf16 (`dtype`, `outDtype`), widened to f32 in the kernels' tile
 * copies, so they take half the memory and half the bytes. The f64 reference implementation lives
 * in `@flash/attention/reference`, the IO model in `@flash/attention/io`, and the same forward on
 * WebGPU (Deno, Chromium) in `@flash/attention/gpu` (`createGpuAttention`).
 *
 * @module
 */
export { DEFAULT_SRAM_BYTES, flashAttention, type FlashAttentionOptions } from "./src/flash_attention.ts";
export { type AttentionGradients, flashAttentionBackward, type FlashAttentionBackwardOptions } from "./src/backward.ts";
export { ShapeError } from "./src/errors.ts";
export type { Dtype, Float16ArrayLike, HalfDtype, HalfTensor, InputTensor, Layout, Tensor } from "./src/tensor.ts";
export { init, type InitOptions, type KernelInfo, type SimdBuild, type WasmSource } from "./src/wasm/loader.ts";
export {
  chooseSplits,
  createKvCache,
  flashAttentionWithKvCache,
  type KvCache,
  type KvCacheConfig,
  type KvCacheOptions,
  type ResidentKvCacheOptions,
} from "./src/kv_cache.ts";
export {
  type AttentionPool,
  type AttentionPoolOptions,
  createAttentionPool,
  POOL_MAX_THREADS,
  PoolWorkerError,
} from "./src/pool.ts";
export type { Mask } from "./src/tensor.ts";
export type {
  AttentionOutput,
  AttentionStats,
  BackwardIoCounts,
  BackwardStats,
  BackwardTensorBytes,
  FlashIoCounts,
  HalfAttentionOutput,
  IoCounts,
  TensorBytes,
} from "./src/result.ts";
