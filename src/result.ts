/**
 * What an attention call returns: the output tensor, its lse, and the measured IO and tiling
 * (`stats`). A leaf module of types and their two helpers, shared by every runner and the IO model.
 *
 * @module
 */
import type { Float16ArrayLike, HalfDtype, Tensor } from "./tensor.ts";

/** The result of `flashAttention`: O in the input's layout, and lse when asked for. */
export interface AttentionOutput extends Tensor {
  /** HBM traffic, tiling and flops measured by the kernels, with `stats: true`. */
  stats?: AttentionStats;
  /**
   * Natural-log log-sum-exp of each query's final scores (after softcap, ALiBi and mask), shape
   * [B, H, Nq] ([H, totalQ] with varlen packing); −∞ for a query that sees no key.
   */
  lse?: Tensor;
}

/**
 * The result of an attention function called with `outDtype: "f16"` or `"bf16"`: O stored in 16
 * bits (rounded to nearest even from the kernels' f32), as the raw bits in a new `Uint16Array`, or
 * in the caller's `out` (a `Uint16Array`, or a `Float16Array` for `"f16"`); lse stays f32.
 */
export interface HalfAttentionOutput {
  /** O's elements: their bits in a `Uint16Array`, or the caller's `out`. */
  data: Uint16Array | Float16ArrayLike;
  /** O's shape, as for an f32 output. */
  shape: readonly number[];
  /** How O is stored. */
  dtype: HalfDtype;
  /** HBM traffic, tiling and flops measured by the kernels, with `stats: true`. */
  stats?: AttentionStats;
  /** As {@linkcode AttentionOutput}'s lse: f32. */
  lse?: Tensor;
}

/** HBM bytes moved per tensor. */
export interface TensorBytes {
  /** Queries. */
  q: number;
  /** Keys. */
  k: number;
  /** Values. */
  v: number;
  /** Output. */
  o: number;
  /** Log-sum-exp. */
  lse: number;
  /** Mask or bias. */
  mask: number;
  /** Split-KV partial results (written by the splits, read by the merge). */
  partial: number;
  /** ALiBi slopes. */
  slopes: number;
}

/** The IO of one attention call. */
export interface IoCounts {
  /** HBM bytes read, per tensor. */
  read: TensorBytes;
  /** HBM bytes written, per tensor. */
  written: TensorBytes;
  /** Sum of `read` and `written`. */
  totalBytes: number;
}

/** Kernel-level statistics: the IO and the tiling that produced it. */
export interface FlashIoCounts extends IoCounts {
  /** Arena size M in bytes. */
  sramBytes: number;
  /** Bytes of the arena the kernel's layout uses: never more than M. */
  sramPeakBytes: number;
  /** Query block rows (virtual rows: positions × query heads of a GQA group). */
  Br: number;
  /** Key block size. */
  Bc: number;
  /** Query blocks per (sequence, K/V head). */
  Tr: number;
  /** Key blocks per (sequence, K/V head). */
  Tc: number;
  /** Key/value tiles loaded and computed, over all heads. */
  tilesComputed: number;
  /** Tiles skipped because no query of the block can see them, or the mask blocks them entirely. */
  tilesSkipped: number;
}

/** What `stats: true` returns: the measured IO and tiling of a call, and its executed flops. */
export interface AttentionStats extends FlashIoCounts {
  /** Floating-point operations of the two matrix products as the kernel executed them. */
  flops: number;
  /**
   * On a pool whose Workers ran the call: each Worker's arena peak (`sramPeakBytes` is the
   * largest). The other fields are the sums over the Workers.
   */
  sramPeakBytesPerWorker?: number[];
}

/** HBM bytes moved per tensor by the backward: the forward's tensors and the gradients'. */
export interface BackwardTensorBytes extends TensorBytes {
  /** The output's gradient dO (read). */
  dOut: number;
  /** D = rowsum(dO ∘ O), one f32 per query row and head (written once, then read). */
  D: number;
  /** The gradient of q (written once; its per-segment partial sums are counted under `partial`). */
  dq: number;
  /** The gradient of k (written). */
  dk: number;
  /** The gradient of v (written). */
  dv: number;
}

/**
 * The IO of a backward call, measured (`stats: true`) or in closed form: the forward's fields, with
 * the backward's tensors. Its blocks are square (Br = Bc); `tilesComputed` counts each tile once
 * (S, P, dP, dS and the three gradient products), `tilesSkipped` is Tr·Tc per head group less those.
 */
export interface BackwardIoCounts extends FlashIoCounts {
  /** HBM bytes read, per tensor. */
  read: BackwardTensorBytes;
  /** HBM bytes written, per tensor. */
  written: BackwardTensorBytes;
}

/** What the backward's `stats: true` returns. */
export interface BackwardStats extends BackwardIoCounts {
  /** Floating-point operations of the tile products as the kernels executed them. */
  flops: number;
  /** On a pool: each Worker's arena peak (`sramPeakBytes` is the largest). */
  sramPeakBytesPerWorker?: number[];
}

/** A TensorBytes of zeros. */
export const zeroBytes = (): TensorBytes => ({ q: 0, k: 0, v: 0, o: 0, lse: 0, mask: 0, partial: 0, slopes: 0 });

/** A BackwardTensorBytes of zeros. */
export const zeroBackwardBytes = (): BackwardTensorBytes => ({ ...zeroBytes(), dOut: 0, D: 0, dq: 0, dk: 0, dv: 0 });

/** Sum of the bytes of every tensor. */
export function sumBytes(t: TensorBytes): number {
  let total = 0;
  for (const bytes of Object.values(t)) total += bytes;
  return total;
}
