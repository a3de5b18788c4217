// The host's side of half-precision storage (assembly/half.ts has the kernels'): element kinds and
// sizes, views of linear memory by dtype, the runtime's Float16Array, and the conversions the host
// itself makes — decoding 16-bit inputs for the f64 reference, and rounding rows appended to a
// 16-bit KV cache. Both follow assembly/half.ts's rules: widening is exact (NaN payloads kept),
// narrowing rounds to nearest even, overflows to ±Infinity, and turns a NaN into a quiet NaN with
// its sign and top payload bits. A leaf: imports only types.

import type { Dtype, HalfDtype } from "./tensor.ts";

/** Elements as the kernels see them: f32 values, or the bits of 16-bit elements. */
export type ElementData = Float32Array | Uint16Array;

/** The kernels' element kinds (assembly/half.ts's ELEMENT_*), by dtype. */
export const ELEMENT_KIND: Readonly<Record<Dtype, number>> = { f32: 0, f16: 1, bf16: 2 };

/** Bytes of one element. */
export const bytesOf = (dtype: Dtype): 2 | 4 => dtype === "f32" ? 4 : 2;

/** The runtime's `Float16Array` constructor, if it has one (Deno and Bun do, Node 20 does not). */
// deno-lint-ignore no-explicit-any
const Float16ArrayConstructor: (new (buffer: ArrayBufferLike, byteOffset: number, length: number) => any) | undefined =
  // deno-lint-ignore no-explicit-any
  (globalThis as any).Float16Array;

/** Whether `value` is a `Float16Array` of this runtime. */
export function isFloat16Array(value: unknown): boolean {
  // ArrayBuffer.isView: a Proxy of one passes instanceof but is no typed array
  return Float16ArrayConstructor !== undefined && value instanceof Float16ArrayConstructor && ArrayBuffer.isView(value);
}

/** The bits of a `Float16Array` (or of any 2-byte typed array), without copying. */
export function bitsOf(view: ArrayBufferView & { length: number }): Uint16Array {
  return new Uint16Array(view.buffer, view.byteOffset, view.length);
}

/** A view of `memory` for elements of `dtype` (index = byte address / bytesOf(dtype)). */
export function viewOf(memory: ArrayBufferLike, dtype: Dtype): ElementData {
  return dtype === "f32" ? new Float32Array(memory) : new Uint16Array(memory);
}

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

/** The f32 bits of one 16-bit element of `dtype` (exact). */
function widenBits(h: number, dtype: HalfDtype): number {
  if (dtype === "bf16") return (h << 16) >>> 0;
  const sign = (h & 0x8000) << 16;
  const exponent = (h >> 10) & 31;
  const mantissa = h & 0x3ff;
  if (exponent === 31) return (sign | 0x7f800000 | (mantissa << 13)) >>> 0; // Infinity, NaN (payload kept)
  if (exponent !== 0) return (sign | ((exponent + 112) << 23) | (mantissa << 13)) >>> 0;
  scratch[0] = mantissa * 2 ** -24; // subnormal (or 0): exact in f32
  return (sign | scratchBits[0]) >>> 0;
}

/** The 16-bit element of `dtype` nearest to the f32 with bits `x` (ties to even). */
function narrowBits(x: number, dtype: HalfDtype): number {
  const a = x & 0x7fffffff;
  if (dtype === "bf16") {
    if (a > 0x7f800000) return (x >>> 16) | 0x40; // NaN: quiet
    return ((x >>> 0) + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  const sign = (x >>> 16) & 0x8000;
  if (a > 0x7f800000) return sign | 0x7e00 | ((a >>> 13) & 0x3ff); // NaN: quiet, top payload bits
  if (a >= 0x47800000) return sign | 0x7c00; // ≥ 2^16: Infinity
  if (a < 0x38800000) {
    // A subnormal f16 (or 0): |x|·2^24 is exact in f64; round it to an integer, ties to even.
    scratchBits[0] = a;
    const t = scratch[0] * 2 ** 24;
    let n = Math.floor(t);
    const rest = t - n;
    if (rest > 0.5 || (rest === 0.5 && (n & 1) === 1)) n++;
    return sign | n;
  }
  // Normal: rebias the exponent by −112, round the 13 dropped bits to nearest even.
  return sign | ((a - 0x38000000 + 0xfff + ((a >>> 13) & 1)) >>> 13);
}

/**
 * Copies n elements from `src` (of srcDtype, from srcAt) to `dst` (of dstDtype, from dstAt),
 * converting: a plain copy for equal dtypes, exact when widening, rounded to nearest even when
 * narrowing (f32 → 16 bits, or between f16 and bf16 through the exact f32).
 */
export function convertInto(
  dst: ElementData,
  dstDtype: Dtype,
  dstAt: number,
  src: ElementData,
  srcDtype: Dtype,
  srcAt: number,
  n: number,
): void {
  if (dstDtype === srcDtype) {
    (dst as Float32Array).set((src as Float32Array).subarray(srcAt, srcAt + n), dstAt);
    return;
  }
  const srcBits = srcDtype === "f32" ? new Uint32Array(src.buffer, src.byteOffset, src.length) : src;
  const dstBits = dstDtype === "f32" ? new Uint32Array(dst.buffer, dst.byteOffset, dst.length) : dst;
  for (let i = 0; i < n; i++) {
    const bits = srcDtype === "f32" ? srcBits[srcAt + i] : widenBits(srcBits[srcAt + i], srcDtype);
    dstBits[dstAt + i] = dstDtype === "f32" ? bits : narrowBits(bits, dstDtype);
  }
}

/** The values of 16-bit elements of `dtype` as f32 (exact), or `data` itself when it is f32. */
export function widened(data: ElementData, dtype: Dtype): Float32Array {
  if (dtype === "f32") return data as Float32Array;
  const values = new Float32Array(data.length);
  convertInto(values, "f32", 0, data, dtype, 0, data.length);
  return values;
}
