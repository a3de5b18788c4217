/**
 * `flashAttention`: exact scaled dot-product attention, computed tile by tile in WebAssembly.
 *
 * @module
 */
import { runForward } from "./_forward.ts";
import { checkOptionKeys, checkOut, message, validateAttention } from "./_validate.ts";
import type { Layout, Tensor } from "./tensor.ts";
import { loadKernels } from "./wasm/loader.ts";

/** Default SRAM arena: fits the L2 cache of current CPUs with room to spare. */
export const DEFAULT_SRAM_BYTES = 128 * 1024;

/** Options of {@linkcode flashAttention}. */
export interface FlashAttentionOptions {
  /** Multiplies Q·Kᵀ before the softmax. Default `1 / sqrt(d)`; must be finite and ≥ 0. */
  scale?: number;
  /**
   * Causal masking, bottom-right aligned as in FlashAttention ≥ 2.1: query i sees key j iff
   * `j ≤ i + Nk − Nq`. Queries that see no key (when Nq > Nk) get O = 0 and lse = −∞.
   * For PyTorch's top-left `is_causal` (j ≤ i) with Nq ≠ Nk, see the README. Default `false`.
   */
  causal?: boolean;
  /** Dimension order of q, k, v and the output. Default `"bshd"`. */
  layout?: Layout;
  /** Also return the log-sum-exp of each query's scores (natural log), shape [B, H, Nq]. */
  returnLse?: boolean;
  /** Write the output here instead of a new array: B·Nq·H·dv floats, sharing no memory with q, k, v. */
  out?: Float32Array;
  /**
   * Size in bytes of the scratch arena that plays SRAM; Br and Bc are derived from it, d and dv.
   * Default {@linkcode DEFAULT_SRAM_BYTES}; at most 8 MiB; at least what 8 × 4 blocks need.
   */
  sramBytes?: number;
}

/** The result of {@linkcode flashAttention}: O in the input's layout, and lse when asked for. */
export interface AttentionOutput extends Tensor {
  /** log Σ_j exp(scale·q_i·k_j) per query, shape [B, H, Nq]; −∞ for a query that sees no key. */
  lse?: Tensor;
}

const OPTION_KEYS = ["scale", "causal", "layout", "returnLse", "out", "sramBytes"] as const;

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
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options: FlashAttentionOptions & { returnLse: true },
): AttentionOutput & { lse: Tensor };
/**
 * Exact attention `softmax(scale·Q·Kᵀ)·V` without materialising the Nq × Nk score matrix:
 * FlashAttention-2's tiled loop with an online softmax, in WebAssembly SIMD, f32 throughout.
 * Memory grows linearly with the sequence length; the result equals naive attention up to f32
 * rounding.
 *
 * Shapes (layout `"bshd"`): q [B, Nq, H, d], k [B, Nk, H, d], v [B, Nk, H, dv] → output
 * [B, Nq, H, dv]. With `layout: "bhsd"` the sequence and head axes swap everywhere.
 *
 * A NaN or ±Infinity inside q, k or v propagates as IEEE arithmetic does: every query whose
 * softmax involves it gets NaN (a score of +∞ gives NaN, as in naive attention); queries in the
 * same tile may be affected too, since masked keys are multiplied by a zero probability. It never
 * throws or crashes.
 *
 * @param q Queries, [B, Nq, H, d] (or [B, H, Nq, d] with layout "bhsd").
 * @param k Keys, [B, Nk, H, d].
 * @param v Values, [B, Nk, H, dv].
 * @param options See {@linkcode FlashAttentionOptions}.
 * @returns The output tensor (a fresh array, or `options.out`), with `lse` when `returnLse` is set.
 * @throws {ShapeError} If a shape is not rank 4 with positive integer dims, a data length does not
 *   match its shape, q, k and v disagree on B, H, d or Nk, or `out` has the wrong length.
 * @throws {TypeError} For data that is not a Float32Array, an unknown option or a mistyped one.
 * @throws {RangeError} For a negative or non-finite scale, d or dv above 256, an arena size out of
 *   range, or sizes that cannot fit in WebAssembly memory.
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
export function flashAttention(q: Tensor, k: Tensor, v: Tensor, options?: FlashAttentionOptions): AttentionOutput;
export function flashAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options?: FlashAttentionOptions,
): AttentionOutput {
  const opts = checkOptionKeys(options, OPTION_KEYS);
  const problem = validateAttention(q, k, v, opts);
  const out = checkOut(opts.out, problem);
  const kernels = loadKernels();
  const maxHeadDim = kernels.headDimMax();
  if (problem.d > maxHeadDim || problem.dv > maxHeadDim) {
    throw new RangeError(
      message(
        `the head dims must be at most ${maxHeadDim}: d is ${problem.d}, dv is ${problem.dv} (q.shape is [${
          q.shape.join(", ")
        }], v.shape is [${v.shape.join(", ")}])`,
      ),
    );
  }
  const sramBytes = checkSramBytes(opts.sramBytes, problem.d, problem.dv, kernels);
  const Br = kernels.blockSizes(sramBytes, problem.d, problem.dv) >>> 16;
  const { o, lse } = runForward(kernels, problem, { sramBytes, Br, out });
  const result: AttentionOutput = { data: o, shape: problem.oShape };
  if (lse) result.lse = { data: lse, shape: [problem.B, problem.H, problem.Nq] };
  return result;
}

function checkSramBytes(
  value: unknown,
  d: number,
  dv: number,
  kernels: ReturnType<typeof loadKernels>,
): number {
  const sramBytes = value ?? DEFAULT_SRAM_BYTES;
  const max = kernels.arenaMaxBytes();
  if (typeof sramBytes !== "number" || !Number.isInteger(sramBytes) || sramBytes <= 0 || sramBytes > max) {
    throw new RangeError(
      message(`sramBytes must be an integer in (0, ${max}]: sramBytes is ${String(sramBytes)}`),
    );
  }
  if (kernels.blockSizes(sramBytes, d, dv) === 0) {
    throw new RangeError(
      message(
        `sramBytes is ${sramBytes}, too small for head dims d = ${d}, dv = ${dv}: the smallest blocks (Br = 8, Bc = 4) need ${
          kernels.arenaBytes(8, 4, d, dv)
        } bytes`,
      ),
    );
  }
  return sramBytes;
}
