/**
 * `flashAttention`: exact scaled dot-product attention, computed tile by tile in WebAssembly.
 *
 * @module
 */
import { DEFAULT_SRAM_BYTES } from "./_limits.ts";
import { attend, prepare } from "./_run.ts";
import { validateForwardCall } from "./_validate.ts";
import type { AttentionOutput, HalfAttentionOutput } from "./result.ts";
import type { Dtype, Float16ArrayLike, HalfDtype, InputTensor, Layout, Mask, Tensor } from "./tensor.ts";

export { DEFAULT_SRAM_BYTES };
export type { AttentionOutput, HalfAttentionOutput };

/** Options of {@linkcode flashAttention}. */
export interface FlashAttentionOptions {
  /**
   * Multiplies Q·Kᵀ before the softmax. Default `1 / sqrt(d)`; must be finite, ≥ 0 and within f32
   * (0, or at least 1.4e-45: a positive scale that f32 rounds to 0 is a RangeError).
   */
  scale?: number;
  /**
   * Causal masking. `true` or `"bottom-right"`: FlashAttention ≥ 2.1's alignment, query i sees key j
   * iff `j ≤ i + Nk − Nq` (per sequence, with that sequence's own Nk). `"top-left"`: PyTorch's
   * `is_causal`, `j ≤ i`. Queries that see no key get O = 0 and lse = −∞. Default `false`.
   */
  causal?: boolean | "bottom-right" | "top-left";
  /**
   * Sliding window `[left, right]` (−1: unbounded), aligned like `causal`: query i sees keys
   * `i + Nk − Nq − left ≤ j ≤ i + Nk − Nq + right`. With `causal`, right is 0.
   */
  windowSize?: readonly [number, number];
  /** Caps the scaled scores: S ← softcap·tanh(S/softcap), before masks and biases. 0 (default) is off. */
  softcap?: number;
  /** ALiBi slopes, length H or B·H: adds −slope·|i + Nk − Nq − j| to the scores. */
  alibiSlopes?: Float32Array;
  /**
   * Additive float bias or boolean mask (nonzero attends), broadcast right-aligned to [B, H, Nq, Nk];
   * composes with causal, window and ALiBi. Its last dimension spans the full Nk, also with seqLensK.
   */
  mask?: Mask;
  /** Valid key length of each batch entry (length B; right padding): keys past it do not exist. */
  seqLensK?: Int32Array;
  /**
   * Varlen packing, as `flash_attn_varlen_func`: cumulative sequence starts (length B + 1, from 0 to
   * the total) for q of shape [totalQ, H, d] and k, v of shape [totalK, Hkv, d]. Both or neither.
   */
  cuSeqlensQ?: Int32Array;
  /** Cumulative key sequence starts, see `cuSeqlensQ`. */
  cuSeqlensK?: Int32Array;
  /** Dimension order of q, k, v and the output. Default `"bshd"`. */
  layout?: Layout;
  /** Also return the log-sum-exp of each query's scores (natural log), shape [B, H, Nq] ([H, totalQ] varlen). */
  returnLse?: boolean;
  /**
   * Write the output here instead of a new array: it must have the output's length, share no memory
   * with q, k, v, and suit `outDtype` (a `Float32Array` for `"f32"`; a `Uint16Array`, or for `"f16"`
   * a `Float16Array`, for 16 bits).
   */
  out?: Float32Array | Uint16Array | Float16ArrayLike;
  /**
   * How the output is stored: `"f32"` (default), or `"f16"` / `"bf16"`: O is rounded to nearest even
   * from the kernels' f32 as each tile is written (overflowing to ±Infinity), and the result is a
   * {@linkcode HalfAttentionOutput} holding the raw bits in a `Uint16Array` (or `out`); lse stays f32.
   * Given as a literal, it selects the result's type.
   */
  outDtype?: Dtype;
  /**
   * Size in bytes of the scratch arena that plays SRAM; Br and Bc are derived from it, d and dv.
   * Default {@linkcode DEFAULT_SRAM_BYTES}; at most 8 MiB; at least what 8 × 4 blocks need.
   */
  sramBytes?: number;
  /**
   * Also return `stats`: HBM bytes read and written per tensor (counted by the kernel's tile
   * copies), the arena size and its peak use, Br, Bc, Tr, Tc, tiles computed and skipped, flops.
   */
  stats?: boolean;
}

/**
 * {@linkcode flashAttention} with a 16-bit output and `returnLse: true`: O in 16 bits, lse in f32.
 *
 * @param q Queries (f32 or 16-bit).
 * @param k Keys.
 * @param v Values.
 * @param options Options with `outDtype: "f16"` or `"bf16"` and `returnLse: true`.
 * @returns The 16-bit output with its `lse`.
 */
export function flashAttention(
  q: InputTensor,
  k: InputTensor,
  v: InputTensor,
  options: FlashAttentionOptions & { outDtype: HalfDtype; returnLse: true },
): HalfAttentionOutput & { lse: Tensor };
/**
 * {@linkcode flashAttention} with a 16-bit output (`outDtype: "f16"` or `"bf16"`).
 *
 * @param q Queries (f32 or 16-bit).
 * @param k Keys.
 * @param v Values.
 * @param options Options with `outDtype: "f16"` or `"bf16"`.
 * @returns The output, rounded to 16 bits.
 */
export function flashAttention(
  q: InputTensor,
  k: InputTensor,
  v: InputTensor,
  options: FlashAttentionOptions & { outDtype: HalfDtype },
): HalfAttentionOutput;
/**
 * {@linkcode flashAttention} with `returnLse: true`: the result always carries `lse`.
 *
 * @param q Queries.
 * @param k Keys.
 * @param v Values.
 * @param options Options with `returnLse: true`.
 * @returns The output with its `lse`.
 */
export function flashAttention(
  q: InputTensor,
  k: InputTensor,
  v: InputTensor,
  options: FlashAttentionOptions & { returnLse: true },
): AttentionOutput & { lse: Tensor };
/**
 * Exact attention `softmax(scale·Q·Kᵀ)·V` without materialising the Nq × Nk score matrix:
 * FlashAttention-2's tiled loop with an online softmax, in WebAssembly SIMD, f32 throughout.
 * Memory grows linearly with the sequence length; the result equals naive attention up to f32
 * rounding.
 *
 * Shapes (layout `"bshd"`): q [B, Nq, H, d], k [B, Nk, Hkv, d], v [B, Nk, Hkv, dv] → output
 * [B, Nq, H, dv]. Hkv < H is GQA/MQA (H a multiple of Hkv; query head h reads K/V head
 * ⌊h / (H/Hkv)⌋). With `layout: "bhsd"` the sequence and head axes swap everywhere; with
 * `cuSeqlensQ`/`cuSeqlensK` (varlen) q is [totalQ, H, d] and k, v are [totalK, Hkv, d].
 * Causal masks, windows, ALiBi, softcap, masks and key lengths all apply inside the tiled loop.
 *
 * q, k and v may each be stored in 16 bits (f16 or bf16: a `HalfTensor`), mixed freely
 * with f32 ones: each tile is widened to f32, exactly, as it is copied into the arena, so the
 * arithmetic is f32 whatever the storage and the HBM traffic counts 2 bytes per 16-bit element.
 * `outDtype` stores O in 16 bits too.
 *
 * A NaN or ±Infinity inside q, k or v propagates as IEEE arithmetic does: every query whose
 * softmax involves it gets NaN (a score of +∞ gives NaN, as in naive attention); queries in the
 * same tile may be affected too, since masked keys are multiplied by a zero probability. It never
 * throws or crashes.
 *
 * @param q Queries, [B, Nq, H, d] (or [B, H, Nq, d] with layout "bhsd", [totalQ, H, d] varlen).
 * @param k Keys, [B, Nk, Hkv, d].
 * @param v Values, [B, Nk, Hkv, dv].
 * @param options See {@linkcode FlashAttentionOptions}.
 * @returns The output tensor (a fresh array, or `options.out`), with `lse` when `returnLse` is set
 *   (the overloads with `outDtype` give a {@linkcode HalfAttentionOutput}).
 * @throws {ShapeError} If a shape has the wrong rank or non-positive dims, a data length does not
 *   match its shape, q, k and v disagree on B, d or Nk, H is not a multiple of Hkv, `out`,
 *   `alibiSlopes`, `seqLensK` or the cuSeqlens have the wrong length, or the mask does not broadcast.
 * @throws {TypeError} For data of the wrong type (or a dtype that disagrees with it, an unknown
 *   dtype, a Uint16Array without one, an `out` that does not suit `outDtype`), an unknown or
 *   mistyped option, or options that do not combine (a mask or seqLensK with varlen packing).
 * @throws {RangeError} For a negative or non-finite scale or softcap, a malformed window, key lengths
 *   outside [0, Nk], cuSeqlens that do not run from 0 to the total without decreasing, d or dv
 *   above 256, an arena size out of range, or sizes that cannot fit in WebAssembly memory.
 *
 * @example Usage
 * ```ts
 * import { flashAttention } from "@flash/attention";
 *
 * const [B, N, H, d] = [1, 4, 1, 2];
 * const q = { data: new Float32Array(B * N * H * d).fill(1), shape: [B, N, H, d] };
 * const v = { data: Float32Array.from({ length: B * N * H * d }, (_, i) => i), shape: [B, N, H, d] };
 * const o = flashAttention(q, q, v, { causal: true, returnLse: true });
 * // equal scores: query i averages the values of keys 0..i
 * if (Math.abs(o.data[2 * d] - 2) > 1e-6) throw new Error("unexpected output");
 * if (Math.abs(o.lse.data[3] - (Math.SQRT2 + Math.log(4))) > 1e-5) throw new Error("unexpected lse");
 * ```
 */
export function flashAttention(
  q: InputTensor,
  k: InputTensor,
  v: InputTensor,
  options?: FlashAttentionOptions,
): AttentionOutput;
export function flashAttention(
  q: InputTensor,
  k: InputTensor,
  v: InputTensor,
  options?: FlashAttentionOptions,
): AttentionOutput | HalfAttentionOutput {
  return attend(prepare(validateForwardCall(q, k, v, options)));
}
