/**
 * `flashAttentionWithKvCache`: attention over a key/value cache, for autoregressive decoding.
 *
 * @module
 */
import { attend, prepare } from "./_run.ts";
import { validateKvCacheCall } from "./_validate.ts";
import type { FlashAttentionOptions } from "./flash_attention.ts";
import type { AttentionOutput } from "./result.ts";
import type { Tensor } from "./tensor.ts";

export { chooseSplits } from "./_splits.ts";

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
  /** New keys [B, Nnew, Hkv, d], written into kCache at cacheSeqLens before attending. */
  kNew?: Tensor;
  /** New values [B, Nnew, Hkv, dv], written into vCache at cacheSeqLens before attending. */
  vNew?: Tensor;
  /**
   * Split the keys into this many chunks and merge their partial results (Flash-Decoding).
   * 0 (default) lets the library choose; 1 never splits. With `stats`, the partial results
   * are counted under `partial`, as `flashAttentionIo` models them with the same `numSplits`.
   */
  numSplits?: number;
}

/**
 * Attention of q against a key/value cache, as `flash_attn_with_kvcache`: optionally writes `kNew`
 * and `vNew` into the caches in place at each entry's `cacheSeqLens`, then attends to the first
 * `cacheSeqLens[b] + Nnew` keys of entry b. Every option of {@linkcode flashAttention} that makes
 * sense here applies (causal aligned to each entry's own length, windows, GQA, ALiBi, softcap,
 * masks). For few queries the keys may be split into chunks whose partial softmax states are
 * merged exactly (Flash-Decoding).
 *
 * Layout is "bshd" (the only one accepted): q [B, Nq, H, d], kCache [B, maxLen, Hkv, d],
 * vCache [B, maxLen, Hkv, dv].
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
  q: Tensor,
  kCache: Tensor,
  vCache: Tensor,
  options: KvCacheOptions = {},
): AttentionOutput {
  return attend(prepare(validateKvCacheCall(q, kCache, vCache, options)));
}
