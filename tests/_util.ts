// Test helpers shared by every suite: a runtime-neutral `test`, a seeded PRNG, random tensors,
// a naive f32 attention and the tolerance rule.

import type { Tensor } from "../mod.ts";

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

/** mulberry32: a small seeded PRNG with a full 2^32 period; returns floats in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A tensor of the given shape with entries uniform in (−amplitude, amplitude). */
export function randomTensor(random: () => number, shape: number[], amplitude = 1): Tensor {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = (2 * random() - 1) * amplitude;
  return { data, shape };
}

/** Options the naive f32 implementation understands (the semantic subset of flashAttention's). */
export interface NaiveOptions {
  scale?: number;
  causal?: boolean;
  layout?: "bshd" | "bhsd";
}

/**
 * Standard attention in f32 arithmetic (every operation rounded with Math.fround), materialising
 * each score row: the "same precision, other order" baseline of the tolerance rule. Dot products
 * accumulate in the same order as the kernel (k = 0..d−1, then × scale); exp is Math.exp rounded.
 */
export function naiveAttentionF32(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options: NaiveOptions = {},
): { data: Float32Array; lse: Float32Array } {
  const f = Math.fround;
  const bshd = (options.layout ?? "bshd") === "bshd";
  const [B, Nq, H, d] = bshd ? q.shape : [q.shape[0], q.shape[2], q.shape[1], q.shape[3]];
  const Nk = bshd ? k.shape[1] : k.shape[2];
  const dv = v.shape[3];
  const scale = f(options.scale ?? 1 / Math.sqrt(d));
  const at = (N: number, D: number, b: number, h: number, i: number) =>
    bshd ? ((b * N + i) * H + h) * D : ((b * H + h) * N + i) * D;
  const o = new Float32Array(B * Nq * H * dv);
  const lse = new Float32Array(B * H * Nq);
  const s = new Float32Array(Nk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < Nq; i++) {
        const visible = options.causal ? Math.max(0, Math.min(Nk, i + Nk - Nq + 1)) : Nk;
        const qi = at(Nq, d, b, h, i);
        let max = -Infinity;
        for (let j = 0; j < visible; j++) {
          const kj = at(Nk, d, b, h, j);
          let dot = 0;
          for (let c = 0; c < d; c++) dot = f(dot + f(q.data[qi + c] * k.data[kj + c]));
          s[j] = f(scale * dot);
          if (s[j] > max) max = s[j];
        }
        const oi = at(Nq, dv, b, h, i);
        if (visible === 0) {
          lse[(b * H + h) * Nq + i] = -Infinity;
          continue;
        }
        let sum = 0;
        for (let j = 0; j < visible; j++) {
          s[j] = f(Math.exp(f(s[j] - max)));
          sum = f(sum + s[j]);
        }
        for (let c = 0; c < dv; c++) {
          let acc = 0;
          for (let j = 0; j < visible; j++) acc = f(acc + f(s[j] * v.data[at(Nk, dv, b, h, j) + c]));
          o[oi + c] = f(acc / sum);
        }
        lse[(b * H + h) * Nq + i] = f(max + f(Math.log(sum)));
      }
    }
  }
  return { data: o, lse };
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
 * error happens to be near zero.
 */
export function assertFlashTolerance(
  what: string,
  actual: ArrayLike<number>,
  reference: ArrayLike<number>,
  naive: ArrayLike<number>,
): void {
  const error = maxAbsError(actual, reference);
  const baseline = maxAbsError(naive, reference);
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

/** Throws unless the two arrays hold the same bits (NaN equal to NaN). */
export function assertBitwiseEqual(what: string, a: Float32Array, b: Float32Array): void {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  if (x.length !== y.length) throw new Error(`${what}: length ${x.length} ≠ ${y.length}`);
  for (let i = 0; i < x.length; i++) {
    if (x[i] !== y[i]) throw new Error(`${what}: element ${i} differs: ${a[i]} vs ${b[i]}`);
  }
}
