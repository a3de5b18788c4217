/**
 * `flashAttentionWithKvCache`: attention over a key/value cache, for autoregressive decoding.
 *
 * @module
 */
import { heapOf } from "./_heap.ts";
import { HEAD_DIM_MAX } from "./_limits.ts";
import { type KvCache, type KvCacheConfig, readCacheConfig, ResidentKvCache } from "./_resident_cache.ts";
import { attend, prepare } from "./_run.ts";
import { validateKvCacheCall, validateResidentCacheCall } from "./_validate.ts";
import type { FlashAttentionOptions } from "./flash_attention.ts";
import type { AttentionOutput, HalfAttentionOutput } from "./result.ts";
import type { HalfDtype, InputTensor } from "./tensor.ts";
import { loadKernels } from "./wasm/loader.ts";

export { chooseSplits } from "./_splits.ts";
export type { KvCache, KvCacheConfig };

/**
 * Options of {@linkcode flashAttentionWithKvCache}: those of `flashAttention` that apply to a cache
 * (causal aligned to each entry's length after appending; a mask broadcasts to [B, H, Nq, maxLen]),
 * and the cache's own.
 */
export interface KvCacheOptions
  extends Omit<FlashAttentionOptions, "seqLensK" | "cuSeqlensQ" | "cuSeqlensK" | "layout"> {
  /**
   * Current length of each batch entry's cache (length B). Default: every cache is full (maxLen).
   * The function does not advance it: after appending `kNew`, add its length yourself.
   */
  cacheSeqLens?: Int32Array;
  /**
   * New keys [B, Nnew, Hkv, d], written into kCache at cacheSeqLens before attending, converted to
   * the cache's dtype (f32 rows into a 16-bit cache are rounded to nearest even).
   */
  kNew?: InputTensor;
  /** New values [B, Nnew, Hkv, dv], written into vCache at cacheSeqLens before attending, as `kNew`. */
  vNew?: InputTensor;
  /**
   * Split the keys into this many chunks and merge their partial results (Flash-Decoding).
   * 0 (default) lets the library choose; 1 never splits. With `stats`, the partial results
   * are counted under `partial`, as `flashAttentionIo` models them with the same `numSplits`.
   */
  numSplits?: number;
}

/**
 * Options of {@linkcode flashAttentionWithKvCache} with a cache object: the cache keeps each
 * entry's length and takes new keys and values through its `append`, so only the attention
 * options and `numSplits` remain.
 */
export type ResidentKvCacheOptions = Omit<KvCacheOptions, "cacheSeqLens" | "kNew" | "vNew">;

/**
 * A KV cache that lives in the kernels' memory (the HBM), so that each decode step reads its keys
 * and values where they are instead of copying the caller's cache into WebAssembly memory. For
 * {@linkcode flashAttentionWithKvCache}; a pool makes its own with `pool.createKvCache`.
 *
 * With `dtype: "f16"` or `"bf16"` the cache stores its keys and values in 16 bits: half the memory,
 * and half the bytes each decode step reads (the kernels widen every tile to f32 as they copy it,
 * so the arithmetic is the same). f32 rows appended to it are rounded to nearest even.
 *
 * @param config Batch entries, positions per entry, key/value heads, head dims and dtype.
 * @returns An empty cache (every length 0).
 * @throws {TypeError} For a config that is not an object, has unknown keys, non-number sizes or an
 *   unknown dtype.
 * @throws {RangeError} For sizes that are not positive integers, head dims above 256, or a cache
 *   that does not fit in WebAssembly memory.
 *
 * @example Usage
 * ```ts
 * import { createKvCache, flashAttentionWithKvCache } from "@flash/attention";
 *
 * const [B, H, Hkv, d] = [1, 4, 2, 8];
 * const cache = createKvCache({ batch: B, maxLen: 64, kvHeads: Hkv, headDim: d });
 * const q = { data: new Float32Array(B * H * d), shape: [B, 1, H, d] }; // zero: equal scores
 * for (let step = 0; step < 3; step++) {
 *   const row = () => ({ data: new Float32Array(B * Hkv * d).fill(step + 1), shape: [B, 1, Hkv, d] });
 *   cache.append(row(), row());
 *   const o = flashAttentionWithKvCache(q, cache, { causal: true });
 *   // equal scores: the mean of the values appended so far, 1 … step + 1
 *   if (Math.abs(o.data[0] - (step + 2) / 2) > 1e-6) throw new Error("unexpected output");
 * }
 * if (cache.length(0) !== 3) throw new Error("unexpected length");
 * cache.free();
 * ```
 */
export function createKvCache(config: KvCacheConfig): KvCache {
  const kernels = loadKernels();
  return new ResidentKvCache(
    kernels.memory,
    heapOf(kernels.memory, kernels.hbmPtr()),
    readCacheConfig(config, HEAD_DIM_MAX),
  );
}

/**
 * {@linkcode flashAttentionWithKvCache} on a cache object with a 16-bit output (`outDtype`).
 *
 * @param q Queries, [B, Nq, H, d].
 * @param cache The cache.
 * @param options Options with `outDtype: "f16"` or `"bf16"`.
 * @returns The output [B, Nq, H, dv], rounded to 16 bits.
 */
export function flashAttentionWithKvCache(
  q: InputTensor,
  cache: KvCache,
  options: ResidentKvCacheOptions & { outDtype: HalfDtype },
): HalfAttentionOutput;
/**
 * Attention of q against a KV cache from {@linkcode createKvCache}, read where it lives: entry b
 * attends to its first `cache.length(b)` positions (causal aligned to that length). Append the
 * step's keys and values with `cache.append` first.
 *
 * @param q Queries, [B, Nq, H, d] (H a multiple of the cache's kvHeads).
 * @param cache The cache.
 * @param options See {@linkcode ResidentKvCacheOptions}.
 * @returns The output [B, Nq, H, dv], with `lse` when asked for.
 * @throws {ShapeError} If q does not match the cache (batch, head dim, heads).
 * @throws {TypeError} For mistyped or unknown options, a freed cache, or a pool's cache.
 * @throws {RangeError} As `flashAttention`.
 */
export function flashAttentionWithKvCache(
  q: InputTensor,
  cache: KvCache,
  options?: ResidentKvCacheOptions,
): AttentionOutput;
/**
 * {@linkcode flashAttentionWithKvCache} on caller-owned caches with a 16-bit output (`outDtype`).
 *
 * @param q Queries, [B, Nq, H, d].
 * @param kCache Key cache, [B, maxLen, Hkv, d].
 * @param vCache Value cache, [B, maxLen, Hkv, dv].
 * @param options Options with `outDtype: "f16"` or `"bf16"`.
 * @returns The output [B, Nq, H, dv], rounded to 16 bits.
 */
export function flashAttentionWithKvCache(
  q: InputTensor,
  kCache: InputTensor,
  vCache: InputTensor,
  options: KvCacheOptions & { outDtype: HalfDtype },
): HalfAttentionOutput;
/**
 * Attention of q against a key/value cache, as `flash_attn_with_kvcache`: optionally writes `kNew`
 * and `vNew` into the caches in place at each entry's `cacheSeqLens`, then attends to the first
 * `cacheSeqLens[b] + Nnew` keys of entry b. Every option of {@linkcode flashAttention} that makes
 * sense here applies (causal aligned to each entry's own length, windows, GQA, ALiBi, softcap,
 * masks). For few queries the keys may be split into chunks whose partial softmax states are
 * merged exactly (Flash-Decoding).
 *
 * Layout is "bshd" (the only one accepted): q [B, Nq, H, d], kCache [B, maxLen, Hkv, d],
 * vCache [B, maxLen, Hkv, dv]. Each may be stored in 16 bits (f16 or bf16), as for `flashAttention`.
 *
 * @param q Queries, [B, Nq, H, d].
 * @param kCache Key cache, [B, maxLen, Hkv, d]; written to when `kNew` is given.
 * @param vCache Value cache, [B, maxLen, Hkv, dv]; written to when `vNew` is given.
 * @param options See {@linkcode KvCacheOptions}.
 * @returns The output [B, Nq, H, dv], with `lse` when asked for.
 * @throws {ShapeError} For shapes that disagree (q, caches, kNew, vNew, cacheSeqLens, out).
 * @throws {RangeError} For cache lengths outside [0, maxLen], an append that would overflow a cache,
 *   and the range errors of `flashAttention`. Nothing is written to the caches when a check fails.
 * @throws {TypeError} For mistyped or unknown options.
 *
 * @example Usage
 * ```ts
 * import { flashAttentionWithKvCache } from "@flash/attention";
 *
 * const [B, maxLen, H, d] = [1, 16, 2, 4];
 * const kCache = { data: new Float32Array(B * maxLen * H * d), shape: [B, maxLen, H, d] };
 * const vCache = { data: new Float32Array(B * maxLen * H * d), shape: [B, maxLen, H, d] };
 * const cacheSeqLens = new Int32Array([0]);
 * for (let step = 0; step < 3; step++) {
 *   const token = () => ({ data: new Float32Array(H * d).fill(step + 1), shape: [B, 1, H, d] });
 *   const o = flashAttentionWithKvCache(token(), kCache, vCache, {
 *     cacheSeqLens,
 *     kNew: token(),
 *     vNew: token(),
 *     causal: true,
 *   });
 *   cacheSeqLens[0] += 1; // the caller advances the cache
 *   if (!(o.data[0] > 0)) throw new Error("unexpected output");
 * }
 * ```
 */
export function flashAttentionWithKvCache(
  q: InputTensor,
  kCache: InputTensor,
  vCache: InputTensor,
  options?: KvCacheOptions,
): AttentionOutput;
export function flashAttentionWithKvCache(
  q: InputTensor,
  cache: InputTensor | KvCache,
  vCache?: InputTensor | ResidentKvCacheOptions,
  options?: KvCacheOptions,
): AttentionOutput | HalfAttentionOutput {
  if (cache instanceof ResidentKvCache) return attend(prepare(validateResidentCacheCall(q, cache, vCache)));
  return attend(prepare(validateKvCacheCall(q, cache, vCache, options)));
}
