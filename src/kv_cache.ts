/**
 * `flashAttentionWithKvCache`: attention over a key/value cache, for autoregressive decoding.
 *
 * @module
 */
import { attend, prepare } from "./_run.ts";
import { checkSplits } from "./_splits.ts";
import {
  checkInt32Array,
  checkOptionKeys,
  checkStats,
  checkTensor,
  formatShape,
  message,
  SEMANTIC_OPTION_KEYS,
  validateAttention,
} from "./_validate.ts";
import { ShapeError } from "./errors.ts";
import type { AttentionOutput, FlashAttentionOptions } from "./flash_attention.ts";
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

const OPTION_KEYS = [
  "cacheSeqLens",
  "kNew",
  "vNew",
  "numSplits",
  ...SEMANTIC_OPTION_KEYS,
  "returnLse",
  "out",
  "sramBytes",
  "stats",
] as const;

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
  const opts = checkOptionKeys(options, OPTION_KEYS);
  // Shapes first, with the caches' own length; then the lengths the call will attend to.
  validateAttention(q, kCache, vCache, opts);
  const [B, maxLen, Hkv, d] = kCache.shape;
  const dv = vCache.shape[3];
  const cacheSeqLens = opts.cacheSeqLens === undefined
    ? new Int32Array(B).fill(maxLen)
    : checkInt32Array("cacheSeqLens", opts.cacheSeqLens, B, "B");
  for (let b = 0; b < B; b++) {
    if (!(cacheSeqLens[b] >= 0 && cacheSeqLens[b] <= maxLen)) {
      throw new RangeError(
        message(`cacheSeqLens must hold lengths in [0, maxLen = ${maxLen}]: cacheSeqLens[${b}] is ${cacheSeqLens[b]}`),
      );
    }
  }
  const appended = checkNew(opts.kNew, opts.vNew, [B, Hkv, d, dv], cacheSeqLens, maxLen);
  const seqLensK = cacheSeqLens.map((n) => n + appended.Nnew);
  const problem = validateAttention(q, kCache, vCache, opts, { seqLensK });
  const numSplits = checkSplits(opts.numSplits, Math.max(...seqLensK));
  const stats = checkStats(opts.stats);
  const call = prepare(problem, opts, numSplits);

  // Every check passed: now write the new keys and values into the caches.
  if (appended.Nnew > 0) {
    const rowK = Hkv * d;
    const rowV = Hkv * dv;
    for (let b = 0; b < B; b++) {
      const at = b * maxLen + cacheSeqLens[b];
      const from = b * appended.Nnew;
      kCache.data.set(appended.k!.subarray(from * rowK, (from + appended.Nnew) * rowK), at * rowK);
      vCache.data.set(appended.v!.subarray(from * rowV, (from + appended.Nnew) * rowV), at * rowV);
    }
  }
  return attend(call, stats);
}

function checkNew(
  kNew: unknown,
  vNew: unknown,
  [B, Hkv, d, dv]: number[],
  cacheSeqLens: Int32Array,
  maxLen: number,
): { Nnew: number; k?: Float32Array; v?: Float32Array } {
  if (kNew === undefined && vNew === undefined) return { Nnew: 0 };
  if (kNew === undefined || vNew === undefined) {
    throw new TypeError(message("kNew and vNew go together: pass both or neither"));
  }
  const dims = "[B, Nnew, Hkv, d]";
  const k = checkTensor("kNew", kNew, dims, 4);
  const v = checkTensor("vNew", vNew, dims, 4);
  const Nnew = k.shape[1];
  const expect = (name: string, shape: number[], wanted: number[]) => {
    if (shape.join() !== wanted.join()) {
      throw new ShapeError(
        message(
          `${name} must have shape ${formatShape(wanted)} (B, Nnew, Hkv and the cache's head dim): ${name}.shape is ${
            formatShape(shape)
          }`,
        ),
        formatShape(wanted),
        formatShape(shape),
      );
    }
  };
  expect("kNew", k.shape, [B, Nnew, Hkv, d]);
  expect("vNew", v.shape, [B, Nnew, Hkv, dv]);
  for (let b = 0; b < B; b++) {
    if (cacheSeqLens[b] + Nnew > maxLen) {
      throw new RangeError(
        message(
          `appending ${Nnew} new keys at cacheSeqLens[${b}] = ${
            cacheSeqLens[b]
          } overflows the cache of maxLen ${maxLen}`,
        ),
      );
    }
  }
  return { Nnew, k: k.data, v: v.data };
}
