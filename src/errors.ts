/**
 * Errors thrown for invalid input. Every check runs before any WebAssembly work, so a failed call
 * leaves the module ready for the next one.
 *
 * @module
 */

/**
 * A tensor's shape (or a buffer's length) does not fit the call: wrong rank, a non-positive or
 * non-integer dimension, dimensions that disagree between q, k and v, or data of the wrong length.
 *
 * @example Usage
 * ```ts
 * import { flashAttention, ShapeError } from "@flash/attention";
 *
 * const q = { data: new Float32Array(8), shape: [1, 2, 1, 4] };
 * const k = { data: new Float32Array(6), shape: [1, 2, 1, 3] }; // head dim 3, q's is 4
 * let caught: unknown;
 * try {
 *   flashAttention(q, k, k);
 * } catch (error) {
 *   caught = error;
 * }
 * if (!(caught instanceof ShapeError)) throw new Error(`expected a ShapeError, got ${caught}`);
 * if (caught.expected !== "head dim 4" || caught.actual !== "head dim 3") throw new Error(caught.message);
 * ```
 */
export class ShapeError extends TypeError {
  /** What the call needed, e.g. `"[1, 128, 8, 64]"`. */
  readonly expected: string;
  /** What it received. */
  readonly actual: string;

  /**
   * Creates a ShapeError.
   *
   * @param message The full message, naming the shapes involved.
   * @param expected What the call needed.
   * @param actual What it received.
   */
  constructor(message: string, expected: string, actual: string) {
    super(message);
    this.name = "ShapeError";
    this.expected = expected;
    this.actual = actual;
  }
}
