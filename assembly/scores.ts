// What the forward and the backward kernels share about scores: which keys a query position sees,
// and the softcap's tanh. Both kernels recompute the same transformed scores from the same rules,
// so these live in one place.
//
// Visibility (causal and sliding windows): position i sees key j iff
//   keyBegin ≤ j < keyEnd  and  i + visOffset − windowLeft ≤ j ≤ i + visOffset + windowRight,
// a window bound of −1 meaning unbounded. Causal is (−1, 0); visOffset = Nk − Nq aligns it
// bottom-right, 0 top-left. [keyBegin, keyEnd) is the key range a kernel call covers: the valid
// keys of a sequence, or one split's (or one backward job's) whole key blocks.

import { expNonPositive } from "./exp";

// @ts-ignore: decorator
@inline export function imin(a: i32, b: i32): i32 { return a < b ? a : b; }
// @ts-ignore: decorator
@inline export function imax(a: i32, b: i32): i32 { return a > b ? a : b; }

/** Byte address of float `floats` of the array at `base`. */
// @ts-ignore: decorator
@inline export function addr(base: usize, floats: i32): usize {
  return base + (<usize>floats << 2);
}

/** The i32 at index `index` of the array at `base`. */
// @ts-ignore: decorator
@inline export function i32At(base: usize, index: i32): i32 {
  return load<i32>(base + (<usize>index << 2));
}

/** First key position i sees (the visible range is [firstKey(i), endKey(i)), non-decreasing in i). */
// @ts-ignore: decorator
@inline export function firstKey(i: i32, offset: i32, left: i32, keyBegin: i32, keyEnd: i32): i32 {
  return left < 0 ? keyBegin : imin(keyEnd, imax(keyBegin, i + offset - left));
}

/** One past the last key position i sees. */
// @ts-ignore: decorator
@inline export function endKey(i: i32, offset: i32, right: i32, keyBegin: i32, keyEnd: i32): i32 {
  return right < 0 ? keyEnd : imin(keyEnd, imax(keyBegin, i + offset + right + 1));
}

/** Below this |x| tanh uses its Taylor series: 1 − e^(−2|x|) would cancel. */
const TANH_SERIES_MAX: f32 = 0.25;

/**
 * tanh lane-wise. For |x| ≥ 0.25: sign(x)·(1 − t)/(1 + t) with t = e^(−2|x|) ≤ 0.61, so the
 * subtraction loses under one bit. Below: x·(1 − x²/3 + 2x⁴/15 − 17x⁶/315 + 62x⁸/2835), whose
 * truncation error is under 1e-8 relative there. Either way the relative error is a few ulp,
 * so softcap·tanh(S/softcap) stays as accurate as S itself for any softcap.
 */
// @ts-ignore: decorator
@inline export function tanh(x: v128): v128 {
  const ax = f32x4.abs(x);
  const t = expNonPositive(f32x4.mul(ax, f32x4.splat(-2)));
  const one = f32x4.splat(1);
  const viaExp = f32x4.div(f32x4.sub(one, t), f32x4.add(one, t));
  const x2 = f32x4.mul(ax, ax);
  let p = f32x4.add(f32x4.mul(x2, f32x4.splat(62.0 / 2835.0)), f32x4.splat(-17.0 / 315.0));
  p = f32x4.add(f32x4.mul(p, x2), f32x4.splat(2.0 / 15.0));
  p = f32x4.add(f32x4.mul(p, x2), f32x4.splat(-1.0 / 3.0));
  p = f32x4.add(f32x4.mul(p, x2), one);
  const viaSeries = f32x4.mul(ax, p);
  const magnitude = v128.bitselect(viaSeries, viaExp, f32x4.lt(ax, f32x4.splat(TANH_SERIES_MAX)));
  return v128.bitselect(x, magnitude, i32x4.splat(0x80000000)); // sign from x, the rest from |tanh|
}

/**
 * The biases of four scores (lanes): − slope·|pos − key| when `alibi`, then + the mask entry at
 * `maskAt` when it is not 0, a blocked entry (−∞, as a boolean false loads) giving −∞ whatever the
 * score, NaN included, exactly as if its tile had been skipped. Positions and keys are per lane,
 * so the caller may run its lanes along queries or along keys.
 */
// @ts-ignore: decorator
@inline export function addBiases(x: v128, alibi: bool, slope: v128, pos: v128, key: v128, maskAt: usize): v128 {
  if (alibi) {
    const distance = f32x4.convert_i32x4_s(i32x4.abs(i32x4.sub(pos, key)));
    x = f32x4.sub(x, f32x4.mul(slope, distance));
  }
  if (maskAt != 0) {
    const bias = v128.load(maskAt);
    const negInf = f32x4.splat(-Infinity);
    x = v128.bitselect(negInf, f32x4.add(x, bias), f32x4.eq(bias, negInf));
  }
  return x;
}

/**
 * For virtual rows i0 .. i0 + rowsHere of a block (row r is position ⌊r/g⌋), each row's visible keys
 * [first, end) and its ALiBi position i + alibiOffset, as i32 arrays at firstPtr, endPtr and posPtr;
 * padding rows up to a multiple of 4 repeat the last row, so 4-lane loads see valid ranges.
 */
export function rowRanges(
  firstPtr: usize, endPtr: usize, posPtr: usize,
  i0: i32, rowsHere: i32, g: i32, visOffset: i32, windowLeft: i32, windowRight: i32, alibiOffset: i32,
  keyBegin: i32, keyEnd: i32,
): void {
  const padded = (rowsHere + 3) & ~3;
  for (let r = 0; r < padded; r++) {
    const i = (i0 + imin(r, rowsHere - 1)) / g;
    store<i32>(addr(firstPtr, r), firstKey(i, visOffset, windowLeft, keyBegin, keyEnd));
    store<i32>(addr(endPtr, r), endKey(i, visOffset, windowRight, keyBegin, keyEnd));
    store<i32>(addr(posPtr, r), i + alibiOffset);
  }
}
