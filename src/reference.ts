/**
 * `referenceAttention`: naive attention in f64, the oracle the kernels are tested against.
 *
 * ```ts
 * import { referenceAttention } from "@flash/attention/reference";
 * ```
 *
 * @module
 */
import { referenceForward, withF32Inputs } from "./_reference.ts";
import { checkOptionKeys, SEMANTIC_OPTION_KEYS, SEQUENCE_OPTION_KEYS } from "./_options.ts";
import { validateCall } from "./_validate.ts";
import type { FlashAttentionOptions } from "./flash_attention.ts";
import type { InputTensor } from "./tensor.ts";

/** Options of {@linkcode referenceAttention}: the semantic options of `flashAttention`. */
export type ReferenceOptions = Omit<FlashAttentionOptions, "out" | "outDtype" | "sramBytes" | "stats">;

/** A tensor of f64 values. */
export interface Tensor64 {
  /** The elements, row-major. */
  data: Float64Array;
  /** The size of each dimension. */
  shape: readonly number[];
}

/** The result of {@linkcode referenceAttention}, in f64. */
export interface ReferenceOutput extends Tensor64 {
  /** Log-sum-exp per query, shape [B, H, Nq]; −∞ for a query that sees no key. */
  lse?: Tensor64;
}

const OPTION_KEYS = [...SEMANTIC_OPTION_KEYS, ...SEQUENCE_OPTION_KEYS, "returnLse"] as const;

/**
 * {@linkcode referenceAttention} with `returnLse: true`: the result always carries `lse`.
 *
 * @param q Queries.
 * @param k Keys.
 * @param v Values.
 * @param options Options with `returnLse: true`.
 * @returns The output with its `lse`.
 */
export function referenceAttention(
  q: InputTensor,
  k: InputTensor,
  v: InputTensor,
  options: ReferenceOptions & { returnLse: true },
): ReferenceOutput & { lse: Tensor64 };
/**
 * Standard attention, computed the textbook way in f64: for each query, every score
 * `scale·q·k`, their maximum, the exponentials, their sum, and the weighted sum of values.
 * Memory is O(Nk) per query and time O(B·H·Nq·Nk·(d + dv)); use it as a gold reference, not
 * for speed. Same inputs, options and semantics as `flashAttention`; a query that sees no key
 * gets O = 0 and lse = −∞. 16-bit inputs (f16, bf16) are read at their exact values.
 *
 * @param q Queries, [B, Nq, H, d] (or [B, H, Nq, d] with layout "bhsd").
 * @param k Keys, [B, Nk, Hkv, d] (Hkv divides H; [totalK, Hkv, d] with varlen).
 * @param v Values, [B, Nk, Hkv, dv].
 * @param options See {@linkcode ReferenceOptions}.
 * @returns The output in f64, in the input's layout, with `lse` when `returnLse` is set.
 * @throws {ShapeError} For the same shape errors as `flashAttention`.
 * @throws {TypeError} For data that is not a Float32Array or a 16-bit tensor of a known dtype, or an
 *   unknown or mistyped option.
 * @throws {RangeError} For a scale or softcap that is negative, non-finite or beyond f32, and for
 *   windowSize, seqLensK or cuSeqlens values out of range (as `flashAttention`).
 *
 * @example Usage
 * ```ts
 * import { referenceAttention } from "@flash/attention/reference";
 *
 * const q = { data: new Float32Array([1, 0]), shape: [1, 1, 1, 2] };
 * const k = { data: new Float32Array([1, 0, 0, 1]), shape: [1, 2, 1, 2] };
 * const v = { data: new Float32Array([10, 20]), shape: [1, 2, 1, 1] };
 * const o = referenceAttention(q, k, v, { scale: 1 });
 * const w = Math.E / (Math.E + 1); // softmax([1, 0])[0]
 * if (Math.abs(o.data[0] - (10 * w + 20 * (1 - w))) > 1e-12) throw new Error("unexpected");
 * ```
 */
export function referenceAttention(
  q: InputTensor,
  k: InputTensor,
  v: InputTensor,
  options?: ReferenceOptions,
): ReferenceOutput;
export function referenceAttention(
  q: InputTensor,
  k: InputTensor,
  v: InputTensor,
  options?: ReferenceOptions,
): ReferenceOutput {
  const opts = checkOptionKeys(options, OPTION_KEYS);
  const p = validateCall(q, k, v, opts);
  const { o, lse } = referenceForward(withF32Inputs(p), (x) => x);
  const result: ReferenceOutput = { data: o, shape: p.oShape };
  if (p.returnLse) result.lse = { data: lse, shape: p.lseShape };
  return result;
}
