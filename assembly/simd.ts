// The two matrix products of attention as f32x4 register-blocked loops over arena tiles.
//
// Both use a 4 × 8 register block (8 accumulators, two loaded vectors and one broadcast value:
// 11 live v128, under the ~12 where V8 starts spilling). Each step is `madd`: a separate mul and
// add in the baseline build (identical bits in every runtime), f32x4.relaxed_madd in the relaxed
// build (a fused multiply-add where the CPU has one: fewer instructions, one rounding instead of
// two, so bits that differ from the baseline's but are the same on every call). Operands are arena
// addresses; dimensions are validated by the host and the loop bounds stay inside the tiles laid
// out in arena.ts.

import { ELEMENT_BF16, ELEMENT_F32, elementShift, widenBf16High, widenBf16Low } from "./half";

/**
 * a·b + c, lane-wise: relaxed_madd in the relaxed-SIMD build, mul then add otherwise. The choice
 * is made at compile time (ASC_FEATURE_RELAXED_SIMD is a constant), so each build has one path.
 */
// @ts-ignore: decorator
@inline export function madd(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  return f32x4.add(f32x4.mul(a, b), c);
}

/**
 * Sᵀ = scale · Kj · Qᵀ for one strip of 8 queries, whose operand starts at `Qs` and whose scores
 * go to `S` (the address of key 0's first 4 queries):
 *   S[c·sStep + t]         = scale · Σ_k Kj[c·d + k] · Qs[k·qStep + t]       for t < 4,
 *   S[c·sStep + sHalf + t] = scale · Σ_k Kj[c·d + k] · Qs[k·qStep + 4 + t]   for t < 4,
 * for c ∈ [cBegin, cEnd). The forward passes a packed panel of Qiᵀ (qStep = 8: the strip's 8
 * queries of each k are 32 contiguous bytes, like the SGEMM probe's packed B) and writes Sᵀ in
 * panels of 4 queries (sStep = 4, sHalf = the panel's size), so that the softmax and the value
 * product read each group of 4 queries contiguously; the backward passes a column strip of a
 * transposed tile (qStep = its row stride) and a row-major output (sStep = its row stride,
 * sHalf = 4). cBegin and cEnd are multiples of 4; Kj rows up to cEnd exist (zero past the valid
 * keys).
 */
export function scoresStrip(
  S: usize, sStep: i32, sHalf: i32, Qs: usize, qStep: i32, Kj: usize, d: i32,
  cBegin: i32, cEnd: i32, scale: f32,
): void {
  scoresStripOf(S, sStep, sHalf, Qs, qStep, Kj, d, cBegin, cEnd, scale, 0, false);
}

/**
 * scoresStrip that also leaves each query's running max of its scores at `maxPtr` (8 floats:
 * max over c ∈ [cBegin, cEnd) of the stored S, taken as pmax(max, S_c) for ascending c from −∞,
 * the online softmax's own order, so the bits, NaN handling included, are those of a separate
 * pass over the stored scores). Saves that pass, one load and one pmax per 4 scores. The maxima
 * stay in memory, updated once per 4 keys: held in two more registers through the k loop they
 * made the baseline build 1–3% slower (13 live v128 with mul+add's temporary; paired runs).
 */
export function scoresStripMax(
  S: usize, sStep: i32, sHalf: i32, Qs: usize, qStep: i32, Kj: usize, d: i32,
  cBegin: i32, cEnd: i32, scale: f32, maxPtr: usize,
): void {
  scoresStripOf(S, sStep, sHalf, Qs, qStep, Kj, d, cBegin, cEnd, scale, maxPtr, true);
}

/** pmax(pmax(pmax(pmax(m, a), b), c), e): the running max over 4 consecutive keys, in key order. */
// @ts-ignore: decorator
@inline function max4(m: v128, a: v128, b: v128, c: v128, e: v128): v128 {
  return f32x4.pmax(f32x4.pmax(f32x4.pmax(f32x4.pmax(m, a), b), c), e);
}

/**
 * Stores scale·a, scale·b, scale·c, scale·e, the scores of 4 consecutive keys, at s, s + step,
 * s + 2·step and s + 3·step, and returns the running max m folded over them in key order (max4):
 * scoresStrip4's epilogue, for its 8-key blocks (twice) and its 4-key remainder.
 */
// @ts-ignore: decorator
@inline function storeScores4(s: usize, step: usize, a: v128, b: v128, c: v128, e: v128, scaleV: v128, m: v128): v128 {
  a = f32x4.mul(a, scaleV);
  b = f32x4.mul(b, scaleV);
  c = f32x4.mul(c, scaleV);
  e = f32x4.mul(e, scaleV);
  v128.store(s, a);
  v128.store(s + step, b);
  v128.store(s + 2 * step, c);
  v128.store(s + 3 * step, e);
  return max4(m, a, b, c, e);
}

// @ts-ignore: decorator
@inline function scoresStripOf(
  S: usize, sStep: i32, sHalf: i32, Qs: usize, qStep: i32, Kj: usize, d: i32,
  cBegin: i32, cEnd: i32, scale: f32, maxPtr: usize, withMax: bool,
): void {
  if (withMax) {
    v128.store(maxPtr, f32x4.splat(-Infinity));
    v128.store(maxPtr, f32x4.splat(-Infinity), 16);
  }
  const scaleV = f32x4.splat(scale);
  const sStepBytes = <usize>sStep << 2;
  const sHalfBytes = <usize>sHalf << 2;
  const qStepBytes = <usize>qStep << 2;
  const kRowBytes = <usize>d << 2;
  for (let c = cBegin; c < cEnd; c += 4) {
    let a00 = f32x4.splat(0), a01 = f32x4.splat(0);
    let a10 = f32x4.splat(0), a11 = f32x4.splat(0);
    let a20 = f32x4.splat(0), a21 = f32x4.splat(0);
    let a30 = f32x4.splat(0), a31 = f32x4.splat(0);
    let q = Qs;
    let k = Kj + <usize>c * kRowBytes;
    const kEnd = k + kRowBytes;
    for (; k < kEnd; k += 4) {
      const q0 = v128.load(q);
      const q1 = v128.load(q, 16);
      let x = v128.load32_splat(k);
      a00 = madd(x, q0, a00);
      a01 = madd(x, q1, a01);
      x = v128.load32_splat(k + kRowBytes);
      a10 = madd(x, q0, a10);
      a11 = madd(x, q1, a11);
      x = v128.load32_splat(k + 2 * kRowBytes);
      a20 = madd(x, q0, a20);
      a21 = madd(x, q1, a21);
      x = v128.load32_splat(k + 3 * kRowBytes);
      a30 = madd(x, q0, a30);
      a31 = madd(x, q1, a31);
      q += qStepBytes;
    }
    const s0 = S + <usize>c * sStepBytes; // queries 0..3 of key c
    const s1 = s0 + sHalfBytes; // queries 4..7
    a00 = f32x4.mul(a00, scaleV);
    a01 = f32x4.mul(a01, scaleV);
    a10 = f32x4.mul(a10, scaleV);
    a11 = f32x4.mul(a11, scaleV);
    a20 = f32x4.mul(a20, scaleV);
    a21 = f32x4.mul(a21, scaleV);
    a30 = f32x4.mul(a30, scaleV);
    a31 = f32x4.mul(a31, scaleV);
    v128.store(s0, a00);
    v128.store(s1, a01);
    v128.store(s0 + sStepBytes, a10);
    v128.store(s1 + sStepBytes, a11);
    v128.store(s0 + 2 * sStepBytes, a20);
    v128.store(s1 + 2 * sStepBytes, a21);
    v128.store(s0 + 3 * sStepBytes, a30);
    v128.store(s1 + 3 * sStepBytes, a31);
    if (withMax) {
      v128.store(maxPtr, max4(v128.load(maxPtr), a00, a10, a20, a30));
      v128.store(maxPtr, max4(v128.load(maxPtr, 16), a01, a11, a21, a31), 16);
    }
  }
}

/**
 * Sᵀ for a strip of only 4 queries (the last strip of a block with rowsHere mod 8 in 1..4, and a
 * decode step's whole block): the same sums as scoresStrip for its queries 0..3, in the same order
 * (so the same bits), at half the work of an 8-row strip, to S[c·sStep + t] for t < 4, with the 4
 * running maxima at `maxPtr` as scoresStripMax leaves them. Register block: 8 keys × 4 queries
 * (8 accumulators), then 4 keys for a remainder.
 */
export function scoresStrip4(
  S: usize, sStep: i32, Qs: usize, qStep: i32, Kj: usize, d: i32,
  cBegin: i32, cEnd: i32, scale: f32, maxPtr: usize,
): void {
  const scaleV = f32x4.splat(scale);
  const sStepBytes = <usize>sStep << 2;
  const qStepBytes = <usize>qStep << 2;
  const kRowBytes = <usize>d << 2;
  let max = f32x4.splat(-Infinity);
  let c = cBegin;
  for (; c + 8 <= cEnd; c += 8) {
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let a4 = f32x4.splat(0), a5 = f32x4.splat(0), a6 = f32x4.splat(0), a7 = f32x4.splat(0);
    let q = Qs;
    let k = Kj + <usize>c * kRowBytes;
    const kEnd = k + kRowBytes;
    for (; k < kEnd; k += 4) {
      const q0 = v128.load(q);
      a0 = madd(v128.load32_splat(k), q0, a0);
      a1 = madd(v128.load32_splat(k + kRowBytes), q0, a1);
      a2 = madd(v128.load32_splat(k + 2 * kRowBytes), q0, a2);
      a3 = madd(v128.load32_splat(k + 3 * kRowBytes), q0, a3);
      a4 = madd(v128.load32_splat(k + 4 * kRowBytes), q0, a4);
      a5 = madd(v128.load32_splat(k + 5 * kRowBytes), q0, a5);
      a6 = madd(v128.load32_splat(k + 6 * kRowBytes), q0, a6);
      a7 = madd(v128.load32_splat(k + 7 * kRowBytes), q0, a7);
      q += qStepBytes;
    }
    const s = S + <usize>c * sStepBytes;
    max = storeScores4(s, sStepBytes, a0, a1, a2, a3, scaleV, max);
    max = storeScores4(s + 4 * sStepBytes, sStepBytes, a4, a5, a6, a7, scaleV, max);
  }
  for (; c < cEnd; c += 4) {
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let q = Qs;
    let k = Kj + <usize>c * kRowBytes;
    const kEnd = k + kRowBytes;
    for (; k < kEnd; k += 4) {
      const q0 = v128.load(q);
      a0 = madd(v128.load32_splat(k), q0, a0);
      a1 = madd(v128.load32_splat(k + kRowBytes), q0, a1);
      a2 = madd(v128.load32_splat(k + 2 * kRowBytes), q0, a2);
      a3 = madd(v128.load32_splat(k + 3 * kRowBytes), q0, a3);
      q += qStepBytes;
    }
    max = storeScores4(S + <usize>c * sStepBytes, sStepBytes, a0, a1, a2, a3, scaleV, max);
  }
  v128.store(maxPtr, max);
}

/**
 * O = alpha·O + P·Vj for the 4 queries r0..r0+3 over keys [kBegin, kEnd), where `P` is the
 * address of key 0's probabilities of these 4 queries and `pStep` the floats between keys:
 *   O[(r0+t)·dvP + c] = alpha[t]·O[(r0+t)·dvP + c] + Σ_k P[k·pStep + t] · Vj[k·dvP + c]
 * for every c < dvP (a multiple of 8). The forward passes a panel of its transposed probability
 * tile (P overwrote Sᵀ; pStep = 4, so the 4 probabilities of each key are 16 contiguous bytes);
 * the backward a column of a row-major tile (pStep = its row stride). alpha holds the 4 rescale
 * factors at the arena address alphaPtr.
 */
export function accumulateValues(
  O: usize, dvP: i32, P: usize, pStep: i32, Vj: usize,
  r0: i32, kBegin: i32, kEnd: i32, alphaPtr: usize,
): void {
  accumulateRows(O, dvP, P, pStep, Vj, 4, r0, kBegin, kEnd, alphaPtr, ELEMENT_F32);
}

// One function per (rows, element kind of Vj: f32 or bf16), each with both constants inside its
// loops.

function accumulateF32x1(O: usize, dvP: i32, P: usize, pStep: i32, Vj: usize, kBegin: i32, kEnd: i32, alphaPtr: usize): void {
  accumulateRows(O, dvP, P, pStep, Vj, 1, 0, kBegin, kEnd, alphaPtr, ELEMENT_F32);
}

function accumulateF32x2(O: usize, dvP: i32, P: usize, pStep: i32, Vj: usize, kBegin: i32, kEnd: i32, alphaPtr: usize): void {
  accumulateRows(O, dvP, P, pStep, Vj, 2, 0, kBegin, kEnd, alphaPtr, ELEMENT_F32);
}

function accumulateBf16x1(O: usize, dvP: i32, P: usize, pStep: i32, Vj: usize, kBegin: i32, kEnd: i32, alphaPtr: usize): void {
  accumulateRows(O, dvP, P, pStep, Vj, 1, 0, kBegin, kEnd, alphaPtr, ELEMENT_BF16);
}

function accumulateBf16x2(O: usize, dvP: i32, P: usize, pStep: i32, Vj: usize, kBegin: i32, kEnd: i32, alphaPtr: usize): void {
  accumulateRows(O, dvP, P, pStep, Vj, 2, 0, kBegin, kEnd, alphaPtr, ELEMENT_BF16);
}

function accumulateBf16x4(O: usize, dvP: i32, P: usize, pStep: i32, Vj: usize, kBegin: i32, kEnd: i32, alphaPtr: usize): void {
  accumulateRows(O, dvP, P, pStep, Vj, 4, 0, kBegin, kEnd, alphaPtr, ELEMENT_BF16);
}

/**
 * accumulateValues for the first `rows` ∈ {1, 2, 4} of rows 0..3 (a thin block's, stream.ts's
 * thinRowsOf), the others untouched, with Vj's rows holding dvP elements of `kind` (f32, or bf16
 * as stored in HBM and widened in registers: stream.ts).
 */
export function accumulateFewValues(
  O: usize, dvP: i32, P: usize, pStep: i32, Vj: usize, rows: i32, kBegin: i32, kEnd: i32, alphaPtr: usize, kind: i32,
): void {
  if (kind == ELEMENT_F32) {
    if (rows == 1) accumulateF32x1(O, dvP, P, pStep, Vj, kBegin, kEnd, alphaPtr);
    else if (rows == 2) accumulateF32x2(O, dvP, P, pStep, Vj, kBegin, kEnd, alphaPtr);
    else accumulateValues(O, dvP, P, pStep, Vj, 0, kBegin, kEnd, alphaPtr);
  } else {
    if (rows == 1) accumulateBf16x1(O, dvP, P, pStep, Vj, kBegin, kEnd, alphaPtr);
    else if (rows == 2) accumulateBf16x2(O, dvP, P, pStep, Vj, kBegin, kEnd, alphaPtr);
    else accumulateBf16x4(O, dvP, P, pStep, Vj, kBegin, kEnd, alphaPtr);
  }
}

/**
 * The value product of accumulateValues for the first R ∈ {1, 2, 4} of its 4 rows, with Vj's
 * elements of `kind` (f32 or bf16, dvP per row). The same operations in the same order for every R
 * and kind, so a row's bits depend on neither (a bf16 value widens to the f32 of the same value).
 */
// @ts-ignore: decorator
@inline function accumulateRows(
  O: usize, dvP: i32, P: usize, pStep: i32, Vj: usize, R: i32,
  r0: i32, kBegin: i32, kEnd: i32, alphaPtr: usize, kind: i32,
): void {
  const a0 = v128.load32_splat(alphaPtr);
  const a1 = v128.load32_splat(alphaPtr, 4);
  const a2 = v128.load32_splat(alphaPtr, 8);
  const a3 = v128.load32_splat(alphaPtr, 12);
  const oRowBytes = <usize>dvP << 2;
  const vRowBytes = <usize>dvP << elementShift(kind);
  const pRowBytes = <usize>pStep << 2;
  const pStart = P + <usize>kBegin * pRowBytes;
  const pEnd = pStart + <usize>(kEnd - kBegin) * pRowBytes;
  const o0 = O + <usize>r0 * oRowBytes;
  const zero = f32x4.splat(0);
  for (let c: usize = 0; c < oRowBytes; c += 32) {
    const o = o0 + c;
    let a00 = f32x4.mul(v128.load(o), a0);
    let a01 = f32x4.mul(v128.load(o, 16), a0);
    let a10 = zero, a11 = zero, a20 = zero, a21 = zero, a30 = zero, a31 = zero;
    if (R >= 2) {
      a10 = f32x4.mul(v128.load(o + oRowBytes), a1);
      a11 = f32x4.mul(v128.load(o + oRowBytes, 16), a1);
    }
    if (R == 4) {
      a20 = f32x4.mul(v128.load(o + 2 * oRowBytes), a2);
      a21 = f32x4.mul(v128.load(o + 2 * oRowBytes, 16), a2);
      a30 = f32x4.mul(v128.load(o + 3 * oRowBytes), a3);
      a31 = f32x4.mul(v128.load(o + 3 * oRowBytes, 16), a3);
    }
    let v = Vj + <usize>kBegin * vRowBytes + ((c >> 2) << elementShift(kind));
    for (let p = pStart; p < pEnd; p += pRowBytes) {
      let v0: v128, v1: v128;
      if (kind == ELEMENT_BF16) {
        const x = v128.load(v); // eight bf16: this chunk's 8 columns of key row k
        v0 = widenBf16Low(x);
        v1 = widenBf16High(x);
      } else {
        v0 = v128.load(v);
        v1 = v128.load(v, 16);
      }
      let x = v128.load32_splat(p);
      a00 = madd(x, v0, a00);
      a01 = madd(x, v1, a01);
      if (R >= 2) {
        x = v128.load32_splat(p, 4);
        a10 = madd(x, v0, a10);
        a11 = madd(x, v1, a11);
      }
      if (R == 4) {
        x = v128.load32_splat(p, 8);
        a20 = madd(x, v0, a20);
        a21 = madd(x, v1, a21);
        x = v128.load32_splat(p, 12);
        a30 = madd(x, v0, a30);
        a31 = madd(x, v1, a31);
      }
      v += vRowBytes;
    }
    v128.store(o, a00);
    v128.store(o, a01, 16);
    if (R >= 2) {
      v128.store(o + oRowBytes, a10);
      v128.store(o + oRowBytes, a11, 16);
    }
    if (R == 4) {
      v128.store(o + 2 * oRowBytes, a20);
      v128.store(o + 2 * oRowBytes, a21, 16);
      v128.store(o + 3 * oRowBytes, a30);
      v128.store(o + 3 * oRowBytes, a31, 16);
    }
  }
}
