// Random attention problems shared by the CPU tests (tests/*_test.ts) and the WebGPU tests
// (tests/gpu/): one definition of a case, of each option's arbitrary and of how a case becomes
// tensors, so both backends are held to the same problems. Each suite picks its own sizes, head
// dims and seeds.

import fc from "fast-check";
import type { FlashAttentionOptions, HalfTensor, Tensor } from "../mod.ts";
import { makeMask, type MaskSpec, randomTensor, rng } from "./_util.ts";

export type Causal = boolean | "bottom-right" | "top-left";
export type Layout = "bshd" | "bhsd";

/** A dense problem of H heads (no GQA): sizes, options, the amplitude of q and k, and a seed. */
export interface Case {
  B: number;
  H: number;
  Nq: number;
  Nk: number;
  d: number;
  dv: number;
  options: FlashAttentionOptions;
  amplitude: number;
  seed: number;
}

/** q, k, v of a case, in its layout; q and k scaled by its amplitude. */
export function inputs(c: Case): [Tensor, Tensor, Tensor] {
  const random = rng(c.seed);
  const bshd = (c.options.layout ?? "bshd") === "bshd";
  const shape = (N: number, D: number) => bshd ? [c.B, N, c.H, D] : [c.B, c.H, N, D];
  return [
    randomTensor(random, shape(c.Nq, c.d), c.amplitude),
    randomTensor(random, shape(c.Nk, c.d), c.amplitude),
    randomTensor(random, shape(c.Nk, c.dv)),
  ];
}

/**
 * A [B, N, H, D] tensor transposed to [B, H, N, D] (layout "bshd" to "bhsd"): f32, or 16-bit with its
 * element type and dtype kept.
 */
export function toBhsd<T extends Tensor | HalfTensor>(t: T): T {
  const [b, n, h, x] = t.shape;
  const src = t.data as Float32Array;
  const data = new (src.constructor as Float32ArrayConstructor)(src.length);
  for (let i = 0; i < b; i++) {
    for (let j = 0; j < n; j++) {
      for (let l = 0; l < h; l++) {
        for (let c = 0; c < x; c++) data[((i * h + l) * n + j) * x + c] = src[((i * n + j) * h + l) * x + c];
      }
    }
  }
  return { ...t, data, shape: [b, h, n, x] };
}

export type StoredDtype = "f32" | "bf16" | "f16";

/** A tensor's elements as `dtype`: f32 as is; bf16 as the top half of each f32 (truncated: any finite bits do). */
export function stored(t: Tensor, dtype: StoredDtype, random: () => number): Tensor | HalfTensor {
  if (dtype === "f32") return t;
  if (dtype === "bf16") {
    const bits = new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length);
    return { data: Uint16Array.from(bits, (x) => x >>> 16), shape: t.shape, dtype };
  }
  // f16: sign, an exponent giving 2^-4 … 2^1 and a random mantissa (normal numbers, none rounded)
  const data = Uint16Array.from(
    t.data,
    () => (random() < 0.5 ? 0x8000 : 0) | ((11 + Math.floor(random() * 6)) << 10) | Math.floor(random() * 1024),
  );
  return { data, shape: t.shape, dtype };
}

/** A problem with every variant option as data: GQA groups, windows, ALiBi, softcap, masks, key lengths. */
export interface Spec {
  B: number;
  Hkv: number;
  group: number;
  Nq: number;
  Nk: number;
  /** Nk = Nq when true; otherwise Nk ≠ Nq is enforced. */
  sameLength: boolean;
  d: number;
  dv: number;
  layout: Layout;
  causal: Causal;
  window: [number, number] | null;
  scale: number | null;
  alibi: "none" | "H" | "BH";
  softcap: number;
  mask: MaskSpec | null;
  seqLens: boolean;
  amplitude: number;
  seed: number;
}

/** An arbitrary for every field of S. */
export type Model<S> = { [K in keyof S]: fc.Arbitrary<S[K]> };

export const causalArb = fc.constantFrom<Causal>(false, true, "bottom-right", "top-left");
/** Windows [left, right], each side −1 (unbounded), small, or up to maxSide. */
export const windowArb = (maxSide: number) => {
  const side = fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: maxSide }));
  return fc.tuple(side, side);
};
export const maskArb: fc.Arbitrary<MaskSpec> = fc.record({
  kind: fc.constantFrom("f32" as const, "u8" as const),
  rank: fc.constantFrom(1 as const, 2 as const, 3 as const, 4 as const),
  keep: fc.tuple(fc.boolean(), fc.boolean(), fc.boolean(), fc.oneof(fc.constant(true), fc.boolean())),
  blocked: fc.constantFrom(0, 0.3, 0.7, 0.97),
});
/** Softcaps in the range models use (Gemma 2: 50, Grok: 30). */
export const softcapArb = fc.double({ min: 0.1, max: 50, noNaN: true });

/** Specs from a suite's base model with some fields overridden; Nk ≠ Nq unless sameLength. */
export function specArbitrary<S extends Spec>(base: Model<S>, overrides: Partial<Model<S>>): fc.Arbitrary<S> {
  return fc.record({ ...base, ...overrides } as Model<S>).map((s) => {
    if (s.sameLength) return { ...s, Nk: s.Nq };
    return s.Nq === s.Nk ? { ...s, Nk: s.Nk + 1 } : s;
  });
}

/** Valid key lengths in [0, Nk], with 0 and Nk often. */
export function makeLengths(random: () => number, B: number, Nk: number): Int32Array {
  return Int32Array.from({ length: B }, () => {
    const r = random();
    return r < 0.15 ? 0 : r < 0.35 ? Nk : Math.floor(random() * (Nk + 1));
  });
}

/** n ALiBi slopes in [0, 1). */
export function slopes(random: () => number, n: number): Float32Array {
  return Float32Array.from({ length: n }, () => random());
}

/** The tensors and options of a spec (the suite adds its own memory options). */
export function buildSpec(s: Spec): { q: Tensor; k: Tensor; v: Tensor; options: FlashAttentionOptions } {
  const random = rng(s.seed);
  const H = s.Hkv * s.group;
  const shape = (N: number, heads: number, D: number) => s.layout === "bshd" ? [s.B, N, heads, D] : [s.B, heads, N, D];
  const q = randomTensor(random, shape(s.Nq, H, s.d), s.amplitude);
  const k = randomTensor(random, shape(s.Nk, s.Hkv, s.d), s.amplitude);
  const v = randomTensor(random, shape(s.Nk, s.Hkv, s.dv));
  const options: FlashAttentionOptions = { layout: s.layout, causal: s.causal };
  if (s.window) options.windowSize = s.window;
  if (s.scale !== null) options.scale = s.scale;
  if (s.alibi !== "none") options.alibiSlopes = slopes(random, s.alibi === "H" ? H : s.B * H);
  if (s.softcap !== 0) options.softcap = s.softcap;
  if (s.mask) options.mask = makeMask(random, s.mask, [s.B, H, s.Nq, s.Nk]);
  if (s.seqLens) options.seqLensK = makeLengths(random, s.B, s.Nk);
  return { q, k, v, options };
}

/** Cumulative starts [0, n0, n0 + n1, …] of packed sequences. */
export const cumulative = (ns: number[]) => Int32Array.from([0, ...ns], ((sum) => (x) => (sum += x))(0));

/**
 * Varlen inputs for packed sequences of (Nq, Nk) pairs (either may be 0; the last gets a query and a
 * key when no other has one, since a packed tensor needs rows): q [totalQ, H, d], k and v
 * [totalK, Hkv, d or dv], and the cumulative starts.
 */
export function varlenInputs(
  random: () => number,
  pairs: [number, number][],
  Hkv: number,
  H: number,
  d: number,
  dv: number,
) {
  const lengthsQ = pairs.map(([nq]) => nq);
  const lengthsK = pairs.map(([, nk]) => nk);
  if (!lengthsQ.some((n) => n > 0)) lengthsQ[lengthsQ.length - 1] = 1;
  if (!lengthsK.some((n) => n > 0)) lengthsK[lengthsK.length - 1] = 1;
  const cuSeqlensQ = cumulative(lengthsQ);
  const cuSeqlensK = cumulative(lengthsK);
  return {
    q: randomTensor(random, [cuSeqlensQ[pairs.length], H, d]),
    k: randomTensor(random, [cuSeqlensK[pairs.length], Hkv, d]),
    v: randomTensor(random, [cuSeqlensK[pairs.length], Hkv, dv]),
    cuSeqlensQ,
    cuSeqlensK,
  };
}
