/**
 * The tensor type of the API: a contiguous, row-major `Float32Array` with its shape.
 *
 * @module
 */

/**
 * A dense row-major tensor: `data[i0·s0 + i1·s1 + ...]` with strides given by `shape`.
 * `data.length` must equal the product of `shape`.
 */
export interface Tensor {
  /** The elements, row-major. */
  data: Float32Array;
  /** The size of each dimension. */
  shape: readonly number[];
}

/**
 * Order of the four dimensions of q, k, v and the output:
 * - `"bshd"`: [batch, seqLen, heads, headDim], FlashAttention's layout (the default);
 * - `"bhsd"`: [batch, heads, seqLen, headDim], PyTorch's `scaled_dot_product_attention` layout.
 */
export type Layout = "bshd" | "bhsd";

/**
 * An attention mask, broadcast right-aligned to [B, H, Nq, Nk] (numpy rules: shapes such as
 * [Nq, Nk], [B, 1, 1, Nk] or [1, H, Nq, Nk]). A `Float32Array` is an additive bias (−Infinity
 * blocks a key); a `Uint8Array` is boolean: nonzero attends, zero blocks.
 */
export interface Mask {
  /** Bias values, or booleans as bytes. */
  data: Float32Array | Uint8Array;
  /** 1 to 4 dims, broadcasting to [B, H, Nq, Nk]. */
  shape: readonly number[];
}
