// Entry point of the WebAssembly module: the functions the host calls.
// Pointers are byte addresses in linear memory; sizes and strides count elements (f32, or the
// 16-bit kinds of half.ts where a kernel takes a tensor's kind).

export { arenaBytes, arenaMaxBytes, arenaPtr, blockSizes, headDimMax, hbmPtr, smBytes, smPtr } from "./arena";
export { backwardArenaBytes, backwardBlockSize, backwardDkDv, backwardDqMerge, backwardPrep } from "./backward";
export { expBase2Into, expInto } from "./exp";
export { forward } from "./forward";
export { narrowInto, widenInto } from "./half";
export { resetCounters } from "./hbm";
export { mergeSplits } from "./merge";
export { streamedRows } from "./stream";

import { madd } from "./simd";

/** 1 in the relaxed-SIMD build (fused multiply-adds, see simd.ts's madd), 0 in the baseline build. */
export function relaxedSimd(): i32 {
  return ASC_FEATURE_RELAXED_SIMD ? 1 : 0;
}

/**
 * simd.ts's `madd` on one lane: a·b + c. The host calls it with a = b = 1 + 2⁻¹², c = −(1 + 2⁻¹¹)
 * to learn whether this engine fuses relaxed_madd (the result is 2⁻²⁴) or multiplies and adds
 * (the product rounds to 1 + 2⁻¹¹ and the result is 0): relaxed SIMD allows either.
 */
export function maddProbe(a: f32, b: f32, c: f32): f32 {
  return f32x4.extract_lane(madd(f32x4.splat(a), f32x4.splat(b), f32x4.splat(c)), 0);
}
