// Vectorised exp for the online softmax.
//
// The softmax only ever exponentiates x = S − m ≤ 0 (and alpha = exp(m − mNew) ≤ 0), so this is
// an exp for x ∈ [−∞, 0] that is exact where the softmax needs it to be:
//   exp(0) = 1 exactly, exp(−∞) = 0 exactly (masked scores carry no probability mass),
//   exp(NaN) = NaN (a NaN score is never silently dropped).
// Method: x = n·ln2 + r with n = round(x·log2 e) (magic-number rounding, no conversion
// instructions), r ∈ [−ln2/2, ln2/2] by a two-constant Cody–Waite reduction, e^r by a degree-6
// polynomial fitted for relative error (Lawson-reweighted least squares, max 1.7e-8 before f32
// rounding), 2^n built in the exponent bits.
// Error bound (measured over every f32 in [−87.3, 0] step 2^-10 and 1e6 random points, see
// tests/exp_test.ts): relative error ≤ 2.5e-7 (about 2 ulp) for x ≥ −87.33; below that the true
// value is < 1.2e-38 and the result is 0 (an absolute error under 1.2e-38).
// Inputs x > 0 are outside the contract (the kernel never produces them).

import { madd } from "./simd";

/** log2 e: e^x = 2^(x·log2 e). */
export const LOG2E: f32 = 1.44269504;

// 1.5·2^23: adding it rounds an f32 of magnitude < 2^22 to the nearest integer.
const ROUND_MAGIC: f32 = 12582912.0;
// ln 2 split so that n·LN2_HI is exact for |n| ≤ 2^9.
const LN2_HI: f32 = 0.693359375;
const LN2_LO: f32 = -2.12194440e-4;
// ln(2^-126): below this, 2^n would leave the normal range.
const X_MIN: f32 = -87.33654;

const C2: f32 = 0.49999994;
const C3: f32 = 0.16666432;
const C4: f32 = 0.041668;
const C5: f32 = 0.008374153;
const C6: f32 = 0.001384362;

/** e^x lane-wise for x ≤ 0, see the header for the contract and the error bound. */
// @ts-ignore: decorator
@inline export function expNonPositive(x: v128): v128 {
  // Clamp so that 2^n stays a normal number; pmax keeps a NaN in x (it returns x unless x < X_MIN).
  const xc = f32x4.pmax(x, f32x4.splat(X_MIN));
  // n = round(x·log2 e)
  const t = f32x4.add(f32x4.mul(xc, f32x4.splat(LOG2E)), f32x4.splat(ROUND_MAGIC));
  const n = f32x4.sub(t, f32x4.splat(ROUND_MAGIC));
  // r = x − n·ln2
  let r = f32x4.sub(xc, f32x4.mul(n, f32x4.splat(LN2_HI)));
  r = f32x4.sub(r, f32x4.mul(n, f32x4.splat(LN2_LO)));
  // e^r = 1 + r·(1 + r·(C2 + r·(C3 + r·(C4 + r·(C5 + r·C6)))))
  // (Horner with madd: fused in the relaxed build.)
  let p = madd(r, f32x4.splat(C6), f32x4.splat(C5));
  p = madd(p, r, f32x4.splat(C4));
  p = madd(p, r, f32x4.splat(C3));
  p = madd(p, r, f32x4.splat(C2));
  p = madd(p, r, f32x4.splat(1.0));
  p = madd(p, r, f32x4.splat(1.0));
  // 2^n: the low mantissa bits of t hold n (two's complement); shifting by 23 discards the rest.
  const twoN = i32x4.shl(i32x4.add(t, i32x4.splat(127)), 23);
  const e = f32x4.mul(p, twoN);
  // Flush to exactly 0 below X_MIN (covers −∞); the comparison is false for NaN, which stays NaN.
  return v128.andnot(e, f32x4.lt(x, f32x4.splat(X_MIN)));
}

// e^x for x ≤ 0 as 2^(x·log2 e): the forward's exponential (the online softmax's P = exp(S − m) and
// alpha = exp(m − mNew)). Range reduction: x·log2 e = n + f with n = round(x·log2 e) and
// f ∈ [−1/2, 1/2]; 2^f is a degree-5 polynomial fitted for relative error on [−1/2, 1/2]
// (Lawson-reweighted least squares, max 1.1e-7 before f32 rounding) and 2^n is built in the exponent
// bits. The multiply by log2 e rides in the reduction's two multiply-adds: t = x·log2 e + M with
// M = 1.5·2^23 + 127 leaves n + 127 in t's low mantissa bits, so t shifted left by 23 is 2^n itself,
// and f = x·log2 e + (M − t). In the relaxed build both are fused (x·log2 e is never rounded on its
// own: 11 vector operations); in the baseline the product is rounded once and shared (17
// operations), with exactly the bits of rounding y = x·log2 e first and then taking 2^y.
// Clamping x at X2_MIN (where x·log2 e = −127.0004) makes n + 127 = 0, the exponent field 0, so
// every x ≤ X2_MIN (−∞ included) and any x with n = −127 come out exactly 0 with no extra flush;
// e^0 = 1 exactly; NaN stays NaN (pmax keeps it and every step propagates it).
// Error bound (tests/exp_test.ts): relative error ≤ 2.5e-7 + |x|·7.5e-8 for x ≥ −87.3. The second
// term is log2 e's: the f32 constant's own error (1.3e-8 relative, |x|·1.4e-8 in e^x) and, in the
// baseline, the rounding of x·log2 e (|x|·2^-24); it reaches 6.5e-6 only at x = −87, where
// e^x < 1.7e-38 and moves no softmax output, and is 7.5e-8 at x = −1, where P is largest after 1.
// Below −87.3 the true value is < 1.2e-38 and the absolute error under that.

const X2_MIN: f32 = -88.03; // (−88.03)·log2 e = −127.0004: rounds to n = −127
const ROUND_MAGIC_BIASED: f32 = 12583039.0; // 1.5·2^23 + 127
const Q1: f32 = 0.69314706;
const Q2: f32 = 0.24022217;
const Q3: f32 = 0.055506151;
const Q4: f32 = 0.0096729323;
const Q5: f32 = 0.0013302210;

/** e^x lane-wise for x ≤ 0 through 2^(x·log2 e) (see above for the contract and the error bound). */
// @ts-ignore: decorator
@inline export function expBase2(x: v128): v128 {
  const xc = f32x4.pmax(x, f32x4.splat(X2_MIN)); // x unless x < X2_MIN; NaN stays
  const log2e = f32x4.splat(LOG2E);
  const t = madd(xc, log2e, f32x4.splat(ROUND_MAGIC_BIASED)); // n + 127 in the low mantissa bits of t
  const f = madd(xc, log2e, f32x4.sub(f32x4.splat(ROUND_MAGIC_BIASED), t)); // x·log2 e − n, in [−1/2, 1/2]
  let p = madd(f, f32x4.splat(Q5), f32x4.splat(Q4));
  p = madd(p, f, f32x4.splat(Q3));
  p = madd(p, f, f32x4.splat(Q2));
  p = madd(p, f, f32x4.splat(Q1));
  p = madd(p, f, f32x4.splat(1.0));
  // 2^n: n + 127 shifted into the exponent field (0, so the product is 0, for n = −127)
  return f32x4.mul(p, i32x4.shl(t, 23));
}

/** dst[i] = e^src[i] for i < n (n a multiple of 4) by expBase2: exposes the forward's exp to the tests. */
export function expBase2Into(dstPtr: usize, srcPtr: usize, n: i32): void {
  for (let i = 0; i < n; i += 4) {
    const offset = <usize>i << 2;
    v128.store(dstPtr + offset, expBase2(v128.load(srcPtr + offset)));
  }
}

/** dst[i] = e^src[i] for i < n (n a multiple of 4): exposes the kernel's exp to the tests. */
export function expInto(dstPtr: usize, srcPtr: usize, n: i32): void {
  for (let i = 0; i < n; i += 4) {
    const offset = <usize>i << 2;
    v128.store(dstPtr + offset, expNonPositive(v128.load(srcPtr + offset)));
  }
}
