/**
 * `flashAttentionBackward`: the gradients of exact attention, by recomputation in O(N) memory
 * (FlashAttention's backward), deterministic on one thread or a pool.
 *
 * @module
 */
import { runBackwardSync } from "./_backward_run.ts";
import { validateBackwardCall } from "./_validate.ts";
import type { AttentionOutput, BackwardStats, HalfAttentionOutput } from "./result.ts";
import type { FlashAttentionOptions } from "./flash_attention.ts";
import type { InputTensor, Tensor } from "./tensor.ts";

export type { BackwardStats, BackwardTensorBytes } from "./result.ts";

/**
 * Options of {@linkcode flashAttentionBackward}: the forward call's options (scale, causal, windowSize,
 * softcap, alibiSlopes, mask, seqLensK, cuSeqlensQ/K, layout — pass what the forward was given; the
 * mask and the slopes get no gradient, softcap's goes through its tanh), and where the gradients go.
 */
export interface FlashAttentionBackwardOptions
  extends Omit<FlashAttentionOptions, "returnLse" | "out" | "outDtype" | "sramBytes" | "stats"> {
  /**
   * Buffers to write the gradients into instead of new arrays (any of the three): each must have
   * the length of q, k or v and share no memory with any input or with each other.
   */
  out?: { dq?: Float32Array; dk?: Float32Array; dv?: Float32Array };
  /**
   * Size in bytes of the scratch arena that plays SRAM. The backward's blocks are square,
   * Br = Bc = the largest multiple of 8 up to 128 whose exact footprint fits (48 at d = 64 in the
   * default). Default `DEFAULT_SRAM_BYTES`; at most 8 MiB.
   */
  sramBytes?: number;
  /** Also return `stats`: HBM bytes per tensor counted by the tile copies, the tiling, tiles and flops. */
  stats?: boolean;
}

/** The result of {@linkcode flashAttentionBackward}: gradients shaped like q, k and v. */
export interface AttentionGradients {
  /** ∂L/∂q. */
  dq: Tensor;
  /** ∂L/∂k (with GQA: summed over the query heads that share each K/V head). */
  dk: Tensor;
  /** ∂L/∂v (likewise summed). */
  dv: Tensor;
  /** The measured IO, with `stats: true`. */
  stats?: BackwardStats;
}

/**
 * The backward pass of {@linkcode flashAttention}: given the forward's inputs, its output (with
 * `lse`) and the gradient dO of a loss L with respect to that output, returns ∂L/∂q, ∂L/∂k and
 * ∂L/∂v. Like FlashAttention it never stores the Nq × Nk attention matrix: each tile of scores is
 * recomputed from Q, K and the saved lse, so the extra memory is O(N·d) (with at most 8 partial
 * sums of dQ, one per key segment). f32 throughout.
 *
 * q, k, v, out and dOut may each be stored in 16 bits (f16 or bf16), as the forward takes them and
 * as `outDtype` returns O: the tile copies widen them to f32 exactly, and count 2 bytes per element.
 * The gradients are f32 (their sums would lose too much in 16 bits), lse and D too.
 *
 * The gradients are deterministic: the same bits on every call, and on a pool of any size
 * (`pool.flashAttentionBackward`). Keys that no query sees, and queries that see no key, get zero
 * gradients (never NaN).
 *
 * @param q Queries, as passed to the forward.
 * @param k Keys, as passed to the forward.
 * @param v Values, as passed to the forward.
 * @param out The forward's result, run with `returnLse: true` and the same options (its `lse` is used).
 * @param dOut ∂L/∂O, shaped like the output.
 * @param options The forward's options, and `out` buffers, `sramBytes`, `stats`.
 * @returns The gradients (with `stats` when asked for).
 * @throws {ShapeError} For anything the forward rejects, and when out, out.lse or dOut do not have
 *   the shapes the forward gives for these q, k, v (naming both), or a gradient buffer has the wrong length.
 * @throws {TypeError} As the forward, and when out has no lse, or a gradient buffer is not a
 *   Float32Array or shares memory with an input.
 * @throws {RangeError} As the forward, and when sramBytes cannot hold the backward's 8 × 8 blocks.
 *
 * @example Usage
 * ```ts
 * import { flashAttention, flashAttentionBackward } from "@flash/attention";
 *
 * const [B, N, H, d] = [1, 16, 2, 8];
 * const tensor = () => ({ data: new Float32Array(B * N * H * d).map(() => Math.random() - 0.5), shape: [B, N, H, d] });
 * const q = tensor(), k = tensor(), v = tensor();
 * const out = flashAttention(q, k, v, { causal: true, returnLse: true });
 * // L = sum(O): dO is all ones
 * const dOut = { data: new Float32Array(out.data.length).fill(1), shape: out.shape };
 * const { dq, dk, dv } = flashAttentionBackward(q, k, v, out, dOut, { causal: true });
 * // each query's softmax weights sum to 1, so L = Σ_i Σ_j P_ij · Σ_c v_jc moves with v one for one
 * const total = dv.data.reduce((a, x) => a + x, 0);
 * if (Math.abs(total - B * N * H * d) > 1e-3) throw new Error(`unexpected dv sum ${total}`);
 * if (dq.shape.join() !== q.shape.join() || dk.data.length !== k.data.length) throw new Error("unexpected shapes");
 * ```
 */
export function flashAttentionBackward(
  q: InputTensor,
  k: InputTensor,
  v: InputTensor,
  out: AttentionOutput | HalfAttentionOutput,
  dOut: InputTensor,
  options?: FlashAttentionBackwardOptions,
): AttentionGradients {
  return runBackwardSync(validateBackwardCall(q, k, v, out, dOut, options));
}
