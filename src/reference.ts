/**
 * `referenceAttention`: naive attention in f64, the oracle the kernels are tested against.
 *
 * ```ts
 * import { referenceAttention } from "@flash/attention/reference";
 * ```
 *
 * @module
 */
import { checkOptionKeys, validateAttention } from "./_validate.ts";
import type { Layout, Tensor } from "./tensor.ts";

/** Options of {@linkcode referenceAttention}: the semantic options of `flashAttention`. */
export interface ReferenceOptions {
  /** Multiplies Q·Kᵀ before the softmax. Default `1 / sqrt(d)`. */
  scale?: number;
  /** Bottom-right aligned causal mask: query i sees key j iff `j ≤ i + Nk − Nq`. */
  causal?: boolean;
  /** Dimension order of q, k, v and the output. Default `"bshd"`. */
  layout?: Layout;
  /** Also return the log-sum-exp of each query's scores, shape [B, H, Nq]. */
  returnLse?: boolean;
}

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

const OPTION_KEYS = ["scale", "causal", "layout", "returnLse"] as const;

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
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options: ReferenceOptions & { returnLse: true },
): ReferenceOutput & { lse: Tensor64 };
/**
 * Standard attention, computed the textbook way in f64: for each query, every score
 * `scale·q·k`, their maximum, the exponentials, their sum, and the weighted sum of values.
 * Memory is O(Nk) per query and time O(B·H·Nq·Nk·(d + dv)); use it as a gold reference, not
 * for speed. Same inputs, options and semantics as `flashAttention`; a query that sees no key
 * gets O = 0 and lse = −∞.
 *
 * @param q Queries, [B, Nq, H, d] (or [B, H, Nq, d] with layout "bhsd").
 * @param k Keys, [B, Nk, H, d].
 * @param v Values, [B, Nk, H, dv].
 * @param options See {@linkcode ReferenceOptions}.
 * @returns The output in f64, in the input's layout, with `lse` when `returnLse` is set.
 * @throws {ShapeError} For the same shape errors as `flashAttention`.
 * @throws {TypeError} For data that is not a Float32Array or an unknown or mistyped option.
 * @throws {RangeError} For a negative or non-finite scale.
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
export function referenceAttention(q: Tensor, k: Tensor, v: Tensor, options?: ReferenceOptions): ReferenceOutput;
export function referenceAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options?: ReferenceOptions,
): ReferenceOutput {
  const p = validateAttention(q, k, v, checkOptionKeys(options, OPTION_KEYS));
  const { B, H, Nq, Nk, d, dv, qStrides: qs, kStrides: ks, vStrides: vs, oStrides: os } = p;
  const o = new Float64Array(B * Nq * H * dv);
  const lse = new Float64Array(B * H * Nq);
  const scores = new Float64Array(Nk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < Nq; i++) {
        const qi = b * qs.batch + h * qs.head + i * qs.row;
        // Keys this query sees: all of them, or j ≤ i + Nk − Nq when causal.
        const visible = p.causal ? Math.max(0, Math.min(Nk, i + Nk - Nq + 1)) : Nk;
        let max = -Infinity;
        for (let j = 0; j < visible; j++) {
          const kj = b * ks.batch + h * ks.head + j * ks.row;
          let dot = 0;
          for (let c = 0; c < d; c++) dot += p.q[qi + c] * p.k[kj + c];
          scores[j] = p.scale * dot;
          if (scores[j] > max) max = scores[j];
        }
        const oi = b * os.batch + h * os.head + i * os.row;
        if (visible === 0) {
          lse[(b * H + h) * Nq + i] = -Infinity;
          continue; // O stays 0
        }
        let sum = 0;
        for (let j = 0; j < visible; j++) {
          const weight = Math.exp(scores[j] - max);
          sum += weight;
          const vj = b * vs.batch + h * vs.head + j * vs.row;
          for (let c = 0; c < dv; c++) o[oi + c] += weight * p.v[vj + c];
        }
        for (let c = 0; c < dv; c++) o[oi + c] /= sum;
        lse[(b * H + h) * Nq + i] = max + Math.log(sum);
      }
    }
  }
  const result: ReferenceOutput = { data: o, shape: p.oShape };
  if (p.returnLse) result.lse = { data: lse, shape: [B, H, Nq] };
  return result;
}
