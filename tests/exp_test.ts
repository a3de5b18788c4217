// The kernels' vectorised exponentials (assembly/exp.ts) against Math.exp, checking the
// documented bounds: expNonPositive (the backward's and tanh's) and expBase2 (the forward's).

import { loadKernels } from "../src/wasm/loader.ts";
import { rng, test } from "./_util.ts";

const kernels = loadKernels();

/** Runs the kernel's exp (or the forward's, expBase2) on xs (a multiple of 4 long) through HBM scratch. */
function wasmExp(xs: Float32Array, base2 = false): Float32Array {
  const src = kernels.hbmPtr();
  const dst = src + xs.length * 4;
  const needed = dst + xs.length * 4 - kernels.memory.buffer.byteLength;
  if (needed > 0) kernels.memory.grow(Math.ceil(needed / 65536));
  new Float32Array(kernels.memory.buffer, src, xs.length).set(xs);
  if (base2) kernels.expBase2Into(dst, src, xs.length);
  else kernels.expInto(dst, src, xs.length);
  return new Float32Array(kernels.memory.buffer, dst, xs.length).slice();
}

const X_MIN = -87.33654; // ln(2^-126), from assembly/exp.ts
const BOUND = 2.5e-7;

test("the kernel's exp has relative error ≤ 2.5e-7 on [−87.33, 0]", () => {
  const random = rng(2);
  const xs = new Float32Array(1 << 20);
  const grid = Math.floor(-X_MIN * 1024); // step 2^-10 over the whole range
  for (let i = 0; i < xs.length; i++) xs[i] = i < grid ? -i / 1024 : X_MIN * random();
  xs[0] = -0;
  const ys = wasmExp(xs);
  let worst = 0;
  let at = 0;
  for (let i = 0; i < xs.length; i++) {
    if (xs[i] < X_MIN) continue;
    const exact = Math.exp(xs[i]);
    const rel = Math.abs(ys[i] - exact) / exact;
    if (rel > worst) [worst, at] = [rel, xs[i]];
  }
  if (!(worst <= BOUND)) throw new Error(`relative error ${worst} at x = ${at}`);
});

test("the kernel's exp is exact at 0 and −∞, flushes below ln(2^-126) to 0 and keeps NaN", () => {
  const ys = wasmExp(new Float32Array([0, -Infinity, -87.5, -1000, NaN, -0, X_MIN, -1e-8]));
  const expected = [1, 0, 0, 0, NaN, 1];
  for (let i = 0; i < expected.length; i++) {
    if (!Object.is(ys[i], expected[i])) throw new Error(`exp(${[0, -Infinity, -87.5, -1000, NaN, -0][i]}) = ${ys[i]}`);
  }
  if (!(ys[6] > 0 && ys[6] < 1.2e-38)) throw new Error(`exp(X_MIN) = ${ys[6]}`);
  if (!(Math.abs(ys[7] - 1) <= 1.2e-7)) throw new Error(`exp(-1e-8) = ${ys[7]}`);
});

test("the forward's exp (through 2^x) has relative error ≤ 2.5e-7 + |x|·7.5e-8 on [−87.33, 0]", () => {
  // The fractions the polynomial sees: every 1024th f32 of [−ln 2, 0] and every f32 around
  // x = −ln 2 / 2 (where |f| reaches 1/2 and n changes), then a 2^-10 grid over [−87.33, −ln 2] and
  // random points. The second term of the bound is log2 e's: its f32 value's own error (1.3e-8
  // relative, |x|·1.4e-8 in e^x) and, in the baseline build, the rounding of x·log2 e (|x|·2^-24).
  const random = rng(3);
  const xs: number[] = [];
  const bits = new Uint32Array(1);
  const asFloat = new Float32Array(bits.buffer);
  const push = (b: number) => {
    bits[0] = b;
    xs.push(asFloat[0]);
  };
  const halfLn2 = new Float32Array([-Math.LN2 / 2]);
  const middle = new Uint32Array(halfLn2.buffer)[0];
  for (let b = 0x80000000; b <= 0xbf317218; b += 0x400) push(b); // [−ln 2, 0]
  for (let b = middle - 0x10000; b <= middle + 0x10000; b++) push(b);
  for (let i = 710; i < 87 * 1024; i++) xs.push(-i / 1024);
  for (let i = 0; i < 1 << 18; i++) xs.push(X_MIN * random());
  while (xs.length % 4 !== 0) xs.push(0);
  const x32 = Float32Array.from(xs);
  const ys = wasmExp(x32, true);
  let worst = 0;
  let at = 0;
  for (let i = 0; i < x32.length; i++) {
    if (x32[i] < X_MIN) continue;
    const exact = Math.exp(x32[i]);
    const rel = Math.abs(ys[i] - exact) / exact / (BOUND + Math.abs(x32[i]) * 7.5e-8);
    if (rel > worst) [worst, at] = [rel, x32[i]];
  }
  if (!(worst <= 1)) throw new Error(`error ${worst} × the bound at x = ${at}`);
});

test("the forward's exp is exact at 0, gives 0 from n = −127 down (−∞ too) and keeps NaN", () => {
  // −88.02·log2 e = −126.99 rounds to n = −127: the exponent field is 0, so the result is 0 while
  // e^x is below 2^-126 (a flush of less than 1.2e-38, as documented).
  const xs = [0, -0, -Infinity, -88.03, -88.02, -1000, NaN, -87.33, -1e-8];
  const ys = wasmExp(Float32Array.from([...xs, 0, 0, 0]), true);
  const expected = [1, 1, 0, 0, 0, 0, NaN];
  for (let i = 0; i < expected.length; i++) {
    if (!Object.is(ys[i], expected[i])) throw new Error(`exp(${xs[i]}) = ${ys[i]}, expected ${expected[i]}`);
  }
  const rel = (i: number) => Math.abs(ys[i] / Math.exp(xs[i]) - 1);
  if (!(rel(7) <= BOUND + 87.33 * 7.5e-8)) throw new Error(`exp(-87.33) = ${ys[7]}`);
  if (!(rel(8) <= BOUND)) throw new Error(`exp(-1e-8) = ${ys[8]}`);
});
