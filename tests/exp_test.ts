// The kernels' vectorised exponentials (assembly/exp.ts) against Math.exp and 2 ** x, checking the
// documented bounds: expNonPositive (the backward's and tanh's) and exp2NonPositive (the forward's).

import { loadKernels } from "../src/wasm/loader.ts";
import { rng, test } from "./_util.ts";

const kernels = loadKernels();

/** Runs the kernel's exp (or exp2) on xs (a multiple of 4 long) through HBM scratch. */
function wasmExp(xs: Float32Array, base2 = false): Float32Array {
  const src = kernels.hbmPtr();
  const dst = src + xs.length * 4;
  const needed = dst + xs.length * 4 - kernels.memory.buffer.byteLength;
  if (needed > 0) kernels.memory.grow(Math.ceil(needed / 65536));
  new Float32Array(kernels.memory.buffer, src, xs.length).set(xs);
  if (base2) kernels.exp2Into(dst, src, xs.length);
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

test("the forward's exp2 has relative error ≤ 2.5e-7 on [−126, 0]", () => {
  // The fractions the polynomial sees: every 1024th f32 of [−1, 0] and every f32 of [−1, −0.498]
  // (where |f| reaches 1/2 and n changes), then a 2^-10 grid over [−126, −1] and random points.
  const random = rng(3);
  const xs: number[] = [];
  const bits = new Uint32Array(1);
  const asFloat = new Float32Array(bits.buffer);
  const push = (b: number) => {
    bits[0] = b;
    xs.push(asFloat[0]);
  };
  for (let b = 0x80000000; b <= 0xbf800000; b += 0x400) push(b);
  for (let b = 0xbefe0000; b <= 0xbf800000; b++) push(b);
  for (let i = 1024; i < 126 * 1024; i++) xs.push(-i / 1024);
  for (let i = 0; i < 1 << 18; i++) xs.push(-126 * random());
  while (xs.length % 4 !== 0) xs.push(0);
  const x32 = Float32Array.from(xs);
  const ys = wasmExp(x32, true);
  let worst = 0;
  let at = 0;
  for (let i = 0; i < x32.length; i++) {
    const exact = 2 ** x32[i];
    const rel = Math.abs(ys[i] - exact) / exact;
    if (rel > worst) [worst, at] = [rel, x32[i]];
  }
  if (!(worst <= BOUND)) throw new Error(`relative error ${worst} at x = ${at}`);
});

test("the forward's exp2 is exact at 0, −1, −∞, gives 0 from −127 down and keeps NaN", () => {
  const xs = [0, -0, -1, -Infinity, -127, -1000, NaN, -126.6, -126];
  const ys = wasmExp(Float32Array.from([...xs, 0, 0, 0]), true);
  const expected = [1, 1, 0.5, 0, 0, 0, NaN];
  for (let i = 0; i < expected.length; i++) {
    if (!Object.is(ys[i], expected[i])) throw new Error(`exp2(${xs[i]}) = ${ys[i]}, expected ${expected[i]}`);
  }
  if (!(ys[7] >= 0 && ys[7] < 1.2e-38)) throw new Error(`exp2(-126.6) = ${ys[7]}`);
  if (!(Math.abs(ys[8] / 2 ** -126 - 1) <= BOUND)) throw new Error(`exp2(-126) = ${ys[8]}`);
});
