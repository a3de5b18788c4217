// The kernel's vectorised exp (assembly/exp.ts) against Math.exp, checking the documented bound.

import { loadKernels } from "../src/wasm/loader.ts";
import { rng, test } from "./_util.ts";

const kernels = loadKernels();

/** Runs the kernel's exp on xs (a multiple of 4 long) through HBM scratch. */
function wasmExp(xs: Float32Array): Float32Array {
  const src = kernels.hbmPtr();
  const dst = src + xs.length * 4;
  const needed = dst + xs.length * 4 - kernels.memory.buffer.byteLength;
  if (needed > 0) kernels.memory.grow(Math.ceil(needed / 65536));
  new Float32Array(kernels.memory.buffer, src, xs.length).set(xs);
  kernels.expInto(dst, src, xs.length);
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
