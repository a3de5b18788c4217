/**
 * The tensor types of the API: contiguous, row-major arrays with their shape, stored as f32
 * (`Float32Array`) or in 16 bits (f16 or bf16).
 *
 * @module
 */

/**
 * How a tensor's elements are stored: `"f32"` (a `Float32Array`), or in 16 bits, `"f16"` (IEEE
 * binary16) or `"bf16"` (bfloat16, the upper half of an f32). The kernels compute in f32 whatever
 * the storage: 16-bit elements are widened exactly as their tiles are copied into the arena.
 */
export type Dtype = "f32" | "f16" | "bf16";

/** The 16-bit dtypes. */
export type HalfDtype = "f16" | "bf16";

/**
 * A dense row-major tensor: `data[i0·s0 + i1·s1 + ...]` with strides given by `shape`.
 * `data.length` must equal the product of `shape`.
 */
export interface Tensor {
  /**
   * The elements, row-major: a `Float32Array` itself (not a `Proxy` of one), at any byte offset of an
   * `ArrayBuffer` or a `SharedArrayBuffer`, not detached. It is read only during the call.
   */
  data: Float32Array;
  /** The size of each dimension. */
  shape: readonly number[];
  /** `"f32"`, the default: may be left out. */
  dtype?: "f32";
}

/**
 * A `Float16Array` (ES2025; Deno and Bun have it, Node 20 does not), described by its members so
 * that the package's types need no lib that declares it: any `Float16Array` fits.
 */
export interface Float16ArrayLike extends ArrayBufferView {
  /** The number of elements. */
  readonly length: number;
  /** What tells it from the other typed arrays. */
  readonly [Symbol.toStringTag]: "Float16Array";
  /** The elements, as numbers. */
  [index: number]: number;
}

/**
 * A tensor stored in 16 bits: the raw bits in a `Uint16Array` with their `dtype`, `"f16"` or
 * `"bf16"` (required: a `Uint16Array` alone is ambiguous), or a `Float16Array` (`dtype` `"f16"` or
 * left out), where the runtime has one.
 */
export interface HalfTensor {
  /** The elements' bits, row-major, or a `Float16Array`; any backing buffer, as {@linkcode Tensor}'s data. */
  data: Uint16Array | Float16ArrayLike;
  /** The size of each dimension. */
  shape: readonly number[];
  /** `"f16"` or `"bf16"`; required with a `Uint16Array`. */
  dtype?: HalfDtype;
}

/** What q, k, v (and a KV cache's new rows, and the backward's out and dOut) may be: f32 or 16-bit. */
export type InputTensor = Tensor | HalfTensor;

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
