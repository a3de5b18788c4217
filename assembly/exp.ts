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

// 2^x for x ≤ 0: the forward's exponential, e^y = 2^(y·log2 e) with the multiply by log2 e done by
// the caller (the online softmax's P = exp(S − m) and alpha = exp(m − mNew)). Its range reduction
// is only x = n + f, n = round(x), f ∈ [−1/2, 1/2], exact, with no ln 2 constants; 2^f is a
// degree-5 polynomial fitted for relative error on [−1/2, 1/2] (Lawson-reweighted least squares,
// max 1.1e-7 before f32 rounding), and 2^n is built in the exponent bits. Clamping x at −127 makes
// the exponent field 0 there, so 2^−127 and below (−∞ included) come out exactly 0 with no extra
// flush; exp2(0) = 1 exactly; NaN stays NaN (pmax keeps it and every step propagates it).
// Error bound (tests/exp_test.ts): relative error ≤ 2.5e-7 for x ≥ −126; below that the true
// value is < 1.2e-38 and the absolute error is under that. With the caller's rounding of y·log2 e,
// e^y's relative error grows by |y|·2^-24 (at most 5.2e-6 at y = −87, where e^y < 1.7e-38, so it
// moves no softmax output; 6e-8 at y = −1, where P is largest after 1).
// With that multiply, 18 vector operations in the baseline build against expNonPositive's 25.

const EXP2_MIN: f32 = -127.0;
const Q1: f32 = 0.69314706;
const Q2: f32 = 0.24022217;
const Q3: f32 = 0.055506151;
const Q4: f32 = 0.0096729323;
const Q5: f32 = 0.0013302210;

/** 2^x lane-wise for x ≤ 0 (see above for the contract and the error bound). */
// @ts-ignore: decorator
@inline export function exp2NonPositive(x: v128): v128 {
  const xc = f32x4.pmax(x, f32x4.splat(EXP2_MIN)); // x unless x < −127; NaN stays
  const t = f32x4.add(xc, f32x4.splat(ROUND_MAGIC)); // n = round(x) in the low mantissa bits of t
  const f = f32x4.sub(xc, f32x4.sub(t, f32x4.splat(ROUND_MAGIC))); // x − n, exact, in [−1/2, 1/2]
  let p = madd(f, f32x4.splat(Q5), f32x4.splat(Q4));
  p = madd(p, f, f32x4.splat(Q3));
  p = madd(p, f, f32x4.splat(Q2));
  p = madd(p, f, f32x4.splat(Q1));
  p = madd(p, f, f32x4.splat(1.0));
  // 2^n: n + 127 into the exponent field (0, so the product is 0, for n = −127)
  return f32x4.mul(p, i32x4.shl(i32x4.add(t, i32x4.splat(127)), 23));
}

/** dst[i] = 2^src[i] for i < n (n a multiple of 4): exposes the forward's exp2 to the tests. */
export function exp2Into(dstPtr: usize, srcPtr: usize, n: i32): void {
  for (let i = 0; i < n; i += 4) {
    const offset = <usize>i << 2;
    v128.store(dstPtr + offset, exp2NonPositive(v128.load(srcPtr + offset)));
  }
}

/** dst[i] = e^src[i] for i < n (n a multiple of 4): exposes the kernel's exp to the tests. */
export function expInto(dstPtr: usize, srcPtr: usize, n: i32): void {
  for (let i = 0; i < n; i += 4) {
    const offset = <usize>i << 2;
    v128.store(dstPtr + offset, expNonPositive(v128.load(srcPtr + offset)));
  }
}
