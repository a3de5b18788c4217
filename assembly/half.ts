// Half-precision storage: the element kinds a tensor may have in HBM, and the conversions between
// them and the f32 the arena computes in.
//
// Tensors in HBM are f32, IEEE binary16 ("f16": 1 sign, 5 exponent, 10 mantissa bits) or bfloat16
// ("bf16": the upper half of an f32, 1 + 8 + 7 bits). All arithmetic stays f32: the tile copies of
// hbm.ts widen 16-bit elements on their way into the arena (widenRow, widenOne) and narrow f32
// results on their way out (narrowRow); a thin query block's products widen the K and V rows it
// reads in registers (widen4, widenBf16Low and widenBf16High; stream.ts). These are the only
// conversions the kernels make, and all give a value the same bits. widenRow converts f16 eight at
// a time through f16Finite when none of the eight is Infinity or NaN, through f16Lanes otherwise.
//
// Widening is exact: every f16 and bf16 value is an f32. Signed zeros, subnormals and infinities
// map to the same values; a NaN stays a NaN with its sign, and its payload shifted into the top of
// the f32 mantissa (so a quiet NaN stays quiet and a signalling one keeps its bit pattern).
// Narrowing rounds to nearest, ties to even (IEEE 754's default): values from halfway above the
// largest finite number (f16: 65520, bf16: 0x7f7f8000 ≈ 3.3961e38) become ±Infinity, results
// below the smallest normal are correctly rounded subnormals (or ±0), and a NaN becomes a quiet
// NaN (sign and the top payload bits kept, the quiet bit set, so it can never turn into Infinity).

/** Element kinds of a tensor in HBM (the host passes one per tensor a kernel reads or writes). */
export const ELEMENT_F32: i32 = 0;
export const ELEMENT_F16: i32 = 1;
export const ELEMENT_BF16: i32 = 2;

/** log2 of the bytes of one element of `kind`: byte offset = element offset << elementShift. */
// @ts-ignore: decorator
@inline export function elementShift(kind: i32): usize {
  return kind == ELEMENT_F32 ? 2 : 1;
}

/** Bytes of one element of `kind`. */
// @ts-ignore: decorator
@inline export function elementBytes(kind: i32): i32 {
  return kind == ELEMENT_F32 ? 4 : 2;
}

/** 2^112 = 2^(127 − 15): an f16's exponent bias subtracted from an f32's. */
const TWO_POW_112: f32 = reinterpret<f32>(<u32>0x77800000);

/**
 * f16 → f32, exact. (h & 0x7fff) << 13 puts the f16's exponent and mantissa in an f32's bits, which
 * read as the f16's value times 2^-112 — exactly, subnormal f16 included (they become subnormal
 * f32) — so one multiplication by 2^112 gives the value. Exponent 31 (Infinity, NaN) becomes 255
 * with the mantissa as it is.
 */
// @ts-ignore: decorator
@inline function f16Bits(h: u32): f32 {
  const em = h & 0x7fff;
  const shifted = em << 13;
  const magnitude = em >= 0x7c00 ? shifted | 0x7f800000 : reinterpret<u32>(reinterpret<f32>(shifted) * TWO_POW_112);
  return reinterpret<f32>(magnitude | ((h & 0x8000) << 16));
}

/**
 * The same conversion on four zero-extended f16 in the i32 lanes of `h`. For exponent 31 the
 * product has exponent 31 + 112 and the mantissa unchanged (a power of two scales exactly), so
 * OR-ing in all exponent bits gives Infinity or the NaN with its payload.
 */
// @ts-ignore: decorator
@inline function f16Lanes(h: v128): v128 {
  const em = v128.and(h, i32x4.splat(0x7fff));
  const scaled = f32x4.mul(i32x4.shl(em, 13), f32x4.splat(TWO_POW_112));
  const special = i32x4.gt_s(em, i32x4.splat(0x7bff)); // exponent 31: Infinity or NaN
  const magnitude = v128.or(scaled, v128.and(special, i32x4.splat(0x7f800000)));
  return v128.or(magnitude, v128.and(i32x4.shl(h, 16), i32x4.splat(i32.MIN_VALUE)));
}

/** Whether any of the eight f16 in `x` has the all-ones exponent of Infinity and NaN. */
// @ts-ignore: decorator
@inline function anyF16Special(x: v128): bool {
  const exponent = i16x8.splat(0x7c00);
  return v128.any_true(i16x8.eq(v128.and(x, exponent), exponent));
}

/**
 * f16 → f32 for four finite f16 h given as h << 16 in the lanes of `x` (sign at bit 31, exponent at
 * 26..30, mantissa at 16..25), exact. An arithmetic shift by 3 moves exponent and mantissa to an
 * f32's places (and copies the sign into bits 28..30, which the mask clears): the bits of the f32
 * h·2^-112, subnormal h included; one multiplication by 2^112 gives h, sign and zeros kept. Four
 * operations where f16Lanes needs nine, for the (by far) common case.
 */
// @ts-ignore: decorator
@inline function f16Finite(x: v128): v128 {
  return f32x4.mul(v128.and(i32x4.shr_s(x, 3), i32x4.splat(<i32>0x8fffe000)), f32x4.splat(TWO_POW_112));
}

/** One 16-bit element (its bits in the low half of `bits`) of `kind` as an f32. */
// @ts-ignore: decorator
@inline export function widenOne(bits: u32, kind: i32): f32 {
  return kind == ELEMENT_BF16 ? reinterpret<f32>(bits << 16) : f16Bits(bits);
}

/** f32 → f16, rounded to nearest even (header). */
// @ts-ignore: decorator
@inline function toF16(x: f32): u32 {
  const bits = reinterpret<u32>(x);
  const sign = (bits >> 16) & 0x8000;
  const a = bits & 0x7fffffff;
  let h: u32;
  if (a > 0x7f800000) {
    h = 0x7e00 | ((a >> 13) & 0x3ff); // NaN: quiet, top payload bits kept
  } else if (a >= 0x47800000) {
    h = 0x7c00; // ≥ 2^16 (Infinity included): beyond 65520, so Infinity
  } else if (a < 0x38800000) {
    // Below 2^-14, the smallest normal f16: a subnormal (or 0) in steps of 2^-24. Adding 0.5, whose
    // f32 ulp is 2^-24, rounds |x| to that step, ties to even (wasm's f32 add); the low bits are
    // then the f16's bits (2^-14 itself comes out as 0x400, the smallest normal).
    h = reinterpret<u32>(reinterpret<f32>(a) + <f32>0.5) - 0x3f000000;
  } else {
    // Normal: rebias the exponent by −112 (0xc8000000 = −112 << 23 mod 2^32), add 0xfff plus the
    // kept mantissa's lowest bit (ties to even), and drop 13 mantissa bits; a carry out of the
    // mantissa raises the exponent, up to 0x7c00 (Infinity) from 65520 on.
    h = (a + 0xc8000fff + ((a >> 13) & 1)) >> 13;
  }
  return h | sign;
}

/** f32 → bf16, rounded to nearest even (header). */
// @ts-ignore: decorator
@inline function toBf16(x: f32): u32 {
  const bits = reinterpret<u32>(x);
  if ((bits & 0x7fffffff) > 0x7f800000) return (bits >> 16) | 0x40; // NaN: quiet
  // Add just under half of the dropped ulp, plus the kept lowest bit (ties to even); a carry raises
  // the exponent, up to 0x7f80 (Infinity).
  return (bits + 0x7fff + ((bits >> 16) & 1)) >> 16;
}

/**
 * Four elements of `kind` at `src` (16 bytes of f32, 8 of f16 or bf16) as an f32x4, in order. The
 * vector widening of four loaded elements: widenRow uses it for the tile copies, and stream.ts for
 * the K rows it reads into registers; widenBf16Low and widenBf16High do the same shift on eight
 * bf16 loaded at once. A value gives the same f32 whichever way it travels.
 */
// @ts-ignore: decorator
@inline export function widen4(src: usize, kind: i32): v128 {
  if (kind == ELEMENT_F32) return v128.load(src);
  if (kind == ELEMENT_BF16) return i32x4.shl(v128.load16x4_u(src), 16); // bf16 → f32 is a 16-bit shift
  return f16Lanes(v128.load16x4_u(src));
}

/**
 * Elements 0..3 of the eight bf16 in `x` as f32, the bits widen4 gives them: zero-extended, then
 * shifted into the high half. Used where eight are loaded at once (a thin block's value product,
 * simd.ts); unlike an interleave with a zero vector it keeps no extra vector live, which there made
 * V8 spill an accumulator.
 */
// @ts-ignore: decorator
@inline export function widenBf16Low(x: v128): v128 {
  return i32x4.shl(i32x4.extend_low_i16x8_u(x), 16);
}

/** widenBf16Low for elements 4..7 of `x`. */
// @ts-ignore: decorator
@inline export function widenBf16High(x: v128): v128 {
  return i32x4.shl(i32x4.extend_high_i16x8_u(x), 16);
}

/**
 * HBM → arena: n elements of `kind` at `src` as n f32 at `dst`. The one widening routine: every
 * tile copy of hbm.ts that reads a row goes through it (and widenInto exposes it to the tests).
 */
// @ts-ignore: decorator
@inline export function widenRow(dst: usize, src: usize, n: i32, kind: i32): void {
  let i = 0;
  if (kind == ELEMENT_F32) {
    for (; i + 4 <= n; i += 4) v128.store(dst + (<usize>i << 2), widen4(src + (<usize>i << 2), ELEMENT_F32));
    for (; i < n; i++) store<f32>(dst + (<usize>i << 2), load<f32>(src + (<usize>i << 2)));
  } else if (kind == ELEMENT_BF16) {
    for (; i + 4 <= n; i += 4) v128.store(dst + (<usize>i << 2), widen4(src + (<usize>i << 1), ELEMENT_BF16));
    for (; i < n; i++) store<u32>(dst + (<usize>i << 2), <u32>load<u16>(src + (<usize>i << 1)) << 16);
  } else {
    for (; i + 8 <= n; i += 8) {
      const s = src + (<usize>i << 1);
      const d = dst + (<usize>i << 2);
      const x = v128.load(s);
      if (anyF16Special(x)) {
        v128.store(d, widen4(s, ELEMENT_F16));
        v128.store(d, widen4(s + 8, ELEMENT_F16), 16);
      } else {
        v128.store(d, f16Finite(v128.shuffle<u16>(f32x4.splat(0), x, 0, 8, 1, 9, 2, 10, 3, 11)));
        v128.store(d, f16Finite(v128.shuffle<u16>(f32x4.splat(0), x, 4, 12, 5, 13, 6, 14, 7, 15)), 16);
      }
    }
    for (; i + 4 <= n; i += 4) v128.store(dst + (<usize>i << 2), widen4(src + (<usize>i << 1), ELEMENT_F16));
    for (; i < n; i++) store<f32>(dst + (<usize>i << 2), f16Bits(<u32>load<u16>(src + (<usize>i << 1))));
  }
}

/**
 * Arena → HBM: n f32 at `src` as n elements of `kind` at `dst`, rounded to nearest even. The one
 * narrowing routine: every tile copy of hbm.ts that writes a row goes through it (and narrowInto
 * exposes it to the tests). Scalar: only outputs are narrowed, a row per query.
 */
// @ts-ignore: decorator
@inline export function narrowRow(dst: usize, src: usize, n: i32, kind: i32): void {
  let i = 0;
  if (kind == ELEMENT_F32) {
    for (; i + 4 <= n; i += 4) v128.store(dst + (<usize>i << 2), v128.load(src + (<usize>i << 2)));
    for (; i < n; i++) store<f32>(dst + (<usize>i << 2), load<f32>(src + (<usize>i << 2)));
  } else if (kind == ELEMENT_BF16) {
    for (; i < n; i++) store<u16>(dst + (<usize>i << 1), <u16>toBf16(load<f32>(src + (<usize>i << 2))));
  } else {
    for (; i < n; i++) store<u16>(dst + (<usize>i << 1), <u16>toF16(load<f32>(src + (<usize>i << 2))));
  }
}

/**
 * widenRow for the host: n elements of `kind` at srcPtr as f32 at dstPtr (byte addresses). Exposed
 * so that tests can check the tile copies' conversion on every bit pattern.
 */
export function widenInto(dstPtr: usize, srcPtr: usize, n: i32, kind: i32): void {
  widenRow(dstPtr, srcPtr, n, kind);
}

/** narrowRow for the host: n f32 at srcPtr as elements of `kind` at dstPtr, rounded to nearest even. */
export function narrowInto(dstPtr: usize, srcPtr: usize, n: i32, kind: i32): void {
  narrowRow(dstPtr, srcPtr, n, kind);
}
