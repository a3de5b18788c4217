// WGSL that the forward and the backward kernels share: element widening and loaders, the
// visibility rule and the softcap's tanh. Each returns WGSL text for a kernel to include once.

/** Element kinds of q, k, v, O, dO (as assembly/half.ts numbers them). */
export const KIND_F32 = 0;
export const KIND_F16 = 1;
export const KIND_BF16 = 2;

/** Repeats `line(i)` for i in [0, n), one per line. */
export function each(n: number, line: (i: number) => string): string {
  return Array.from({ length: n }, (_, i) => line(i)).join("\n");
}

export const roundUp4 = (x: number): number => Math.ceil(x / 4) * 4;
export const bytesOfKind = (kind: number): number => kind === KIND_F32 ? 4 : 2;

/**
 * The widening functions the given element kinds need: 16-bit elements widen exactly
 * (src/_half.ts's rules): subnormals, signed zeros, infinities and NaN payloads kept.
 */
export function widening(kinds: number[]): string {
  const f16 = kinds.includes(KIND_F16);
  const bf16 = kinds.includes(KIND_BF16);
  if (!f16 && !bf16) return "";
  return `
// 16-bit elements widen exactly (src/_half.ts's rules): subnormals, signed zeros, infinities and NaN payloads kept.
${
    f16
      ? `fn widenF16(h: u32) -> f32 {
  let sign = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 31u;
  let m = h & 0x3ffu;
  if (e == 31u) { return bitcast<f32>(sign | 0x7f800000u | (m << 13u)); }
  if (e != 0u) { return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u)); }
  return bitcast<f32>(sign | bitcast<u32>(f32(m) * 5.9604644775390625e-8)); // m·2⁻²⁴: exact
}`
      : ""
  }
${bf16 ? "fn widenBF16(h: u32) -> f32 { return bitcast<f32>(h << 16u); }" : ""}`;
}

/** A loader `fn(e) -> f32` of elements of `kind` from the read-only binding `name`. */
export function loader(fn: string, name: string, kind: number): string {
  if (kind === KIND_F32) return `fn ${fn}(e: u32) -> f32 { return ${name}[e]; }`;
  const widen = kind === KIND_F16 ? "widenF16" : "widenBF16";
  return `fn ${fn}(e: u32) -> f32 { return ${widen}((${name}[e >> 1u] >> ((e & 1u) * 16u)) & 0xffffu); }`;
}

/** The visibility rule, reading the window from the uniform parameters P.windowLeft and P.windowRight. */
export const VISIBILITY = `
// Visibility (causal, windows, valid keys), as assembly/scores.ts: position i sees key j iff
// firstKey(i) ≤ j < endKey(i).
fn firstKey(i: i32, offset: i32, nk: i32) -> i32 {
  if (P.windowLeft < 0) { return 0; }
  return clamp(i + offset - P.windowLeft, 0, nk);
}
fn endKey(i: i32, offset: i32, nk: i32) -> i32 {
  if (P.windowRight < 0) { return nk; }
  return clamp(i + offset + P.windowRight + 1, 0, nk);
}`;

/** tanh for softcap, as assembly/scores.ts computes it. */
export const TANH = `
// tanh as assembly/scores.ts computes it: a series below 0.25, (1 − e^(−2|x|))/(1 + e^(−2|x|)) above
// (WGSL's tanh may be sinh/cosh, which overflows).
fn tanhf(x: f32) -> f32 {
  let ax = abs(x);
  if (ax < 0.25) {
    let x2 = ax * ax;
    var p = fma(x2, 62.0 / 2835.0, -17.0 / 315.0);
    p = fma(p, x2, 2.0 / 15.0);
    p = fma(p, x2, -1.0 / 3.0);
    p = fma(p, x2, 1.0);
    return x * p;
  }
  let e = exp(-2.0 * ax);
  return sign(x) * ((1.0 - e) / (1.0 + e));
}`;
