// Test helpers shared by every suite: a runtime-neutral `test`, a seeded PRNG, random tensors,
// a naive f32 attention and the tolerance rule.

import { spawnSync } from "node:child_process";
import process from "node:process";
import { fileURLToPath } from "node:url";
import type { AttentionOutput, Mask, Tensor } from "../mod.ts";
import type { ReferenceOptions } from "../src/reference.ts";
import { referenceForward } from "../src/_reference.ts";
import { validateCall } from "../src/_validate.ts";
import { loadKernels } from "../src/wasm/loader.ts";

type TestFn = () => void | Promise<void>;
type Register = (name: string, fn: TestFn) => void;

// deno-lint-ignore no-explicit-any
const runtime = globalThis as any;

async function pickRegister(): Promise<Register> {
  if (runtime.Deno?.test) return (name, fn) => runtime.Deno.test(name, fn);
  // The specifiers are computed so that no runtime's module graph tries to resolve the others'.
  const specifier = runtime.Bun ? "bun:test" : "node:test";
  const mod = await import(specifier);
  return (name, fn) => mod.test(name, fn);
}

/** Registers a test with the runtime's own runner (Deno.test, bun:test or node:test). */
export const test: Register = await pickRegister();

// The seeded PRNG and random tensors are the CLI's (src/_cli/random.ts), so `flash-attention check
// --seed S` and the tests draw the same inputs from the same seed.
export { randomTensor, rng } from "../src/_cli/random.ts";

/** How to draw a random mask (see makeMask). */
export interface MaskSpec {
  kind: "f32" | "u8";
  /** Number of trailing dims of [B, H, Nq, Nk] the mask has. */
  rank: 1 | 2 | 3 | 4;
  /** Per axis of [B, H, Nq, Nk]: the full size (true) or a broadcast 1 (false). */
  keep: [boolean, boolean, boolean, boolean];
  /** Probability that an element blocks its key (−∞ or 0). */
  blocked: number;
}

/** Mask data for `full` = [B, H, Nq, Nk]: Float32 biases in (−2, 2) or −∞; Uint8 1..255 or 0. */
export function makeMask(random: () => number, m: MaskSpec, full: number[]): Mask {
  const shape = full.slice(4 - m.rank).map((n, i) => (m.keep[4 - m.rank + i] ? n : 1));
  const size = shape.reduce((a, b) => a * b, 1);
  if (m.kind === "f32") {
    return {
      data: Float32Array.from({ length: size }, () => random() < m.blocked ? -Infinity : 4 * random() - 2),
      shape,
    };
  }
  return {
    data: Uint8Array.from({ length: size }, () => random() < m.blocked ? 0 : 1 + Math.floor(random() * 255)),
    shape,
  };
}

/**
 * Standard attention in f32 arithmetic: the f64 reference's loop with every operation rounded by
 * Math.fround (exp and tanh are Math's, rounded), its multiply-adds fused where the running kernels
 * fuse theirs. This is the "same arithmetic, other order" baseline of the tolerance rule,
 * not an oracle; it shares the reference's semantics on purpose.
 */
export function naiveAttentionF32(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options: ReferenceOptions = {},
): { data: Float32Array; lse: Float32Array } {
  const p = validateCall(q, k, v, { ...options });
  // Where the kernels fuse their multiply-adds (the relaxed build on an engine that fuses), so
  // does this baseline: the same arithmetic.
  const { o, lse } = referenceForward(p, Math.fround, loadKernels().fusedMultiplyAdd);
  return { data: Float32Array.from(o), lse: Float32Array.from(lse) };
}

/** max |a − b| over all elements; equal infinities count as 0, any NaN as Infinity. */
export function maxAbsError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} ≠ ${b.length}`);
  let max = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i]) continue;
    const e = Math.abs(a[i] - b[i]);
    if (!(e <= max)) max = Number.isNaN(e) ? Infinity : e;
  }
  return max;
}

/**
 * The flash-attention repository's rule, with the 1e-6 floor of the issue:
 * error(kernel vs f64 reference) ≤ 2 × error(naive f32 vs f64 reference) + 1e-6.
 * The factor 2 leaves room for the kernel's different summation order, its polynomial exp
 * (≤ 2.5e-7 relative) and the online-softmax rescaling; the floor covers cases where the naive
 * error happens to be near zero. NaN must appear exactly where the reference has NaN; the errors
 * are taken over the other elements (so two NaN results never pass by making the bound infinite).
 */
export function assertFlashTolerance(
  what: string,
  actual: ArrayLike<number>,
  reference: ArrayLike<number>,
  naive: ArrayLike<number>,
): void {
  const finite = (xs: ArrayLike<number>) => Array.from(xs).filter((_, i) => !Number.isNaN(reference[i]));
  for (let i = 0; i < reference.length; i++) {
    if (Number.isNaN(actual[i]) !== Number.isNaN(reference[i])) {
      throw new Error(`${what}: element ${i} is ${actual[i]}, the reference has ${reference[i]}`);
    }
  }
  const ref = finite(reference);
  const error = maxAbsError(finite(actual), ref);
  const baseline = maxAbsError(finite(naive), ref);
  // A naive result that is NaN or infinite where the reference is not would make the bound
  // infinite, and the check vacuous: such a case needs another baseline, so say so.
  if (!Number.isFinite(baseline)) {
    throw new Error(`${what}: the naive f32 baseline is not finite where the reference is; the tolerance is undefined`);
  }
  const bound = 2 * baseline + 1e-6;
  if (!(error <= bound)) {
    throw new Error(`${what}: error ${error} exceeds 2 × naive f32 error ${baseline} + 1e-6 = ${bound}`);
  }
}

/** Throws unless `fn` throws an instance of `type` whose message contains `fragment`. */
export function assertThrows(
  fn: () => unknown,
  // deno-lint-ignore no-explicit-any
  type: abstract new (...args: any[]) => Error,
  fragment: string,
): Error {
  try {
    fn();
  } catch (error) {
    if (!(error instanceof type)) {
      throw new Error(`expected ${type.name}, got ${String(error)}`);
    }
    if (!error.message.includes(fragment)) {
      throw new Error(`expected a message containing "${fragment}", got "${error.message}"`);
    }
    return error;
  }
  throw new Error(`expected ${type.name} containing "${fragment}", but nothing was thrown`);
}

/** Throws unless the two arrays hold the same bits (NaN equal to NaN); Uint16Arrays hold 16-bit elements. */
export function assertBitwiseEqual(what: string, a: Float32Array | Uint16Array, b: Float32Array | Uint16Array): void {
  const bits = (t: Float32Array | Uint16Array) =>
    t instanceof Uint16Array ? t : new Uint32Array(t.buffer, t.byteOffset, t.length);
  const x = bits(a);
  const y = bits(b);
  if (x.constructor !== y.constructor) throw new Error(`${what}: ${a.constructor.name} vs ${b.constructor.name}`);
  if (x.length !== y.length) throw new Error(`${what}: length ${x.length} ≠ ${y.length}`);
  for (let i = 0; i < x.length; i++) {
    if (x[i] !== y[i]) throw new Error(`${what}: element ${i} differs: ${a[i]} vs ${b[i]}`);
  }
}

/**
 * Throws unless two attention outputs hold the same shape and bits (O, and lse on both or neither)
 * and, when both have stats, the same stats. `actual` may come from a pool: its per-Worker arena
 * peaks must then have `expected`'s peak as their largest and stay within M.
 */
export function assertSameOutput(what: string, actual: AttentionOutput, expected: AttentionOutput): void {
  if (actual.shape.join() !== expected.shape.join()) {
    throw new Error(`${what}: shape ${actual.shape} vs ${expected.shape}`);
  }
  assertBitwiseEqual(`${what}: O`, actual.data, expected.data);
  if ((actual.lse === undefined) !== (expected.lse === undefined)) throw new Error(`${what}: lse present on one side`);
  if (actual.lse) assertBitwiseEqual(`${what}: lse`, actual.lse.data, expected.lse!.data);
  if (actual.stats && expected.stats) {
    const { sramPeakBytesPerWorker, ...sums } = actual.stats;
    const a = JSON.stringify(sums);
    const b = JSON.stringify(expected.stats);
    if (a !== b) throw new Error(`${what}: stats differ\n actual ${a}\n expected ${b}`);
    if (sramPeakBytesPerWorker !== undefined) {
      if (Math.max(...sramPeakBytesPerWorker) !== sums.sramPeakBytes) {
        throw new Error(`${what}: per-Worker peaks ${sramPeakBytesPerWorker} vs ${sums.sramPeakBytes}`);
      }
      if (sramPeakBytesPerWorker.some((x) => x > sums.sramBytes)) throw new Error(`${what}: a peak exceeds M`);
    }
  }
}

/**
 * Runs the script at `url` in a child process of this runtime (Deno with read permission, Bun, or
 * Node through tsx) and throws unless it exits with status 0, within a minute, having printed
 * "closed": a script that closes its pool and must then end on its own.
 */
export function assertChildExitsCleanly(url: URL): void {
  const script = fileURLToPath(url);
  // deno-lint-ignore no-explicit-any
  const runtime = globalThis as any;
  const [cmd, args] = runtime.Deno
    ? [runtime.Deno.execPath(), ["run", "--allow-read", script]]
    : runtime.Bun
    ? [process.execPath, [script]]
    : [process.execPath, ["--import", "tsx", script]];
  const child = spawnSync(cmd, args, { encoding: "utf8", timeout: 60_000 });
  if (child.error) throw child.error;
  if (child.status !== 0 || !child.stdout.includes("closed")) {
    throw new Error(
      `the child did not exit cleanly (status ${child.status}, signal ${child.signal}):\n${child.stdout}\n${child.stderr}`,
    );
  }
}
