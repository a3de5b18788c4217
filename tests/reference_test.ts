// The oracle itself, checked against closed forms worked out by hand and against tests/_naive.ts,
// an f64 attention written from ALGORITHMS.md §5 and the README alone that shares no code with
// src/, so that agreement with the reference means something.

import fc from "fast-check";
import type { Tensor } from "../mod.ts";
import { referenceAttention, type ReferenceOptions } from "../src/reference.ts";
import { naiveAttention } from "./_naive.ts";
import { makeMask, type MaskSpec, maxAbsError, naiveAttentionF32, randomTensor, rng, test } from "./_util.ts";

const t = (data: number[], shape: number[]) => ({ data: new Float32Array(data), shape });

test("referenceAttention() matches softmax weights computed by hand", () => {
  // One query [1, 2], keys [1, 0], [0, 1], [1, 1], scale 1: scores 1, 2, 3.
  const q = t([1, 2], [1, 1, 1, 2]);
  const k = t([1, 0, 0, 1, 1, 1], [1, 3, 1, 2]);
  const v = t([1, 0, 0, 1, 5, 5], [1, 3, 1, 2]);
  const o = referenceAttention(q, k, v, { scale: 1, returnLse: true });
  const z = Math.E + Math.E ** 2 + Math.E ** 3;
  const expected = [(Math.E + 5 * Math.E ** 3) / z, (Math.E ** 2 + 5 * Math.E ** 3) / z];
  if (maxAbsError(o.data, expected) > 1e-15) throw new Error(`O ${o.data} ≠ ${expected}`);
  if (Math.abs(o.lse.data[0] - Math.log(z)) > 1e-15) throw new Error(`lse ${o.lse.data[0]}`);
});

test("referenceAttention() with identical keys averages the visible values (causal, bottom-right)", () => {
  // Nq = 2, Nk = 4: query 0 sees keys 0..2, query 1 sees 0..3 (j ≤ i + Nk − Nq).
  const q = t([0.3, -1, 2, 0.5], [1, 2, 1, 2]);
  const k = t([1, 1, 1, 1, 1, 1, 1, 1], [1, 4, 1, 2]);
  const v = t([1, 2, 3, 4], [1, 4, 1, 1]);
  const o = referenceAttention(q, k, v, { causal: true, returnLse: true });
  if (Math.abs(o.data[0] - 2) > 1e-15 || Math.abs(o.data[1] - 2.5) > 1e-15) throw new Error(`O ${o.data}`);
  // lse = s + ln(visible) with s = (q0 + q1)/sqrt(2)
  const lse0 = (0.3 - 1) / Math.SQRT2 + Math.log(3);
  if (Math.abs(o.lse.data[0] - lse0) > 1e-7) throw new Error(`lse ${o.lse.data[0]} ≠ ${lse0}`);
});

test("referenceAttention() gives O = 0 and lse = −∞ to a query that sees no key", () => {
  const o = referenceAttention(t([1, 1, 1], [1, 3, 1, 1]), t([1], [1, 1, 1, 1]), t([7], [1, 1, 1, 1]), {
    causal: true,
    returnLse: true,
  });
  // Nq = 3, Nk = 1: only query 2 sees key 0.
  if (o.data[0] !== 0 || o.data[1] !== 0 || o.data[2] !== 7) throw new Error(`O ${o.data}`);
  if (o.lse.data[0] !== -Infinity || o.lse.data[1] !== -Infinity || o.lse.data[2] !== 1) {
    throw new Error(`lse ${o.lse.data}`);
  }
});

test("referenceAttention() stays within f32 rounding of its own loop run in f32 (the tolerance baseline)", () => {
  // naiveAttentionF32 is the reference's loop with every operation rounded to f32: not an
  // independent check of the semantics (the property test below is), but it must stay within f32
  // rounding of the f64 result, or the tolerance rule built on it would be meaningless.
  const random = rng(1);
  for (const layout of ["bshd", "bhsd"] as const) {
    for (const causal of [false, true]) {
      const shape = (N: number, D: number) => layout === "bshd" ? [2, N, 3, D] : [2, 3, N, D];
      const q = randomTensor(random, shape(17, 9));
      const k = randomTensor(random, shape(23, 9));
      const v = randomTensor(random, shape(23, 4));
      const ref = referenceAttention(q, k, v, { causal, layout, scale: 0.7, returnLse: true });
      const naive = naiveAttentionF32(q, k, v, { causal, layout, scale: 0.7 });
      // f32 rounding of sums of ≤ 23 terms of magnitude ≤ 1: far below 1e-5
      if (maxAbsError(ref.data, naive.data) > 1e-5) throw new Error(`${layout} causal=${causal}: O differs`);
      if (maxAbsError(ref.lse.data, naive.lse) > 1e-5) throw new Error(`${layout} causal=${causal}: lse differs`);
    }
  }
});

// ── The reference against an independent implementation ────────────────────────────────────

type Causal = boolean | "bottom-right" | "top-left";

/** A random call: dense ([B, N, H, d] or [B, H, N, d]) or varlen (packed [total, H, d]). */
interface Case {
  varlen: boolean;
  B: number;
  Hkv: number;
  group: number;
  Nq: number;
  Nk: number;
  /** (Nq, Nk) of each packed sequence when varlen; either may be 0. */
  lengths: [number, number][];
  d: number;
  dv: number;
  layout: "bshd" | "bhsd";
  causal: Causal;
  window: [number, number] | null;
  scale: number | null;
  softcap: number;
  alibi: "none" | "H" | "BH";
  /** Dense calls only: the library rejects a mask or seqLensK with varlen packing. */
  mask: MaskSpec | null;
  seqLens: boolean;
  amplitude: number;
  /** One non-finite input element, to check that NaN and ±∞ land in the same places. */
  poison: "none" | "q NaN" | "k NaN" | "v NaN" | "k +Infinity";
  seed: number;
}

const side = fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: 30 }));

const caseArbitrary: fc.Arbitrary<Case> = fc.record({
  varlen: fc.boolean(),
  B: fc.integer({ min: 1, max: 3 }),
  Hkv: fc.integer({ min: 1, max: 3 }),
  group: fc.integer({ min: 1, max: 3 }),
  Nq: fc.integer({ min: 1, max: 20 }),
  Nk: fc.integer({ min: 1, max: 24 }),
  lengths: fc.array(fc.tuple(fc.integer({ min: 0, max: 16 }), fc.integer({ min: 0, max: 20 })), {
    minLength: 1,
    maxLength: 4,
  }),
  d: fc.integer({ min: 1, max: 24 }),
  dv: fc.integer({ min: 1, max: 12 }),
  layout: fc.constantFrom("bshd" as const, "bhsd" as const),
  causal: fc.constantFrom<Causal>(false, true, "bottom-right", "top-left"),
  window: fc.option(fc.tuple(side, side), { nil: null }),
  // 0, or a scale f32 does not round to 0 (a positive one that it does is a RangeError)
  scale: fc.option(fc.double({ min: 0, max: 2, noNaN: true }).map((x) => (Math.fround(x) === 0 ? 0 : x)), {
    nil: null,
  }),
  softcap: fc.oneof(fc.constant(0), fc.double({ min: 0.1, max: 50, noNaN: true })),
  alibi: fc.constantFrom("none" as const, "H" as const, "BH" as const),
  mask: fc.option(
    fc.record({
      kind: fc.constantFrom("f32" as const, "u8" as const),
      rank: fc.constantFrom(1 as const, 2 as const, 3 as const, 4 as const),
      keep: fc.tuple(fc.boolean(), fc.boolean(), fc.boolean(), fc.boolean()),
      blocked: fc.constantFrom(0, 0.3, 0.7, 0.97, 1),
    }),
    { nil: null },
  ),
  seqLens: fc.boolean(),
  amplitude: fc.constantFrom(1, 3),
  poison: fc.constantFrom(
    "none" as const,
    "none" as const,
    "q NaN" as const,
    "k NaN" as const,
    "v NaN" as const,
    "k +Infinity" as const,
  ),
  seed: fc.integer(),
});

const cumulative = (ns: number[]) =>
  Int32Array.from([0, ...ns.map((_, i) => ns.slice(0, i + 1).reduce((a, b) => a + b))]);

/** The tensors and options of a case, as the library accepts them. */
function build(c: Case): { q: Tensor; k: Tensor; v: Tensor; options: ReferenceOptions } {
  const random = rng(c.seed);
  const H = c.Hkv * c.group;
  const options: ReferenceOptions = { causal: c.causal };
  let q: Tensor, k: Tensor, v: Tensor;
  let B: number;
  if (c.varlen) {
    const lengths = c.lengths.map(([a, b]) => [a, b]);
    // Shapes need totals ≥ 1: give the last sequence a query and a key when the others have none.
    if (lengths.every(([nq]) => nq === 0)) lengths[lengths.length - 1][0] = 1;
    if (lengths.every(([, nk]) => nk === 0)) lengths[lengths.length - 1][1] = 1;
    options.cuSeqlensQ = cumulative(lengths.map(([nq]) => nq));
    options.cuSeqlensK = cumulative(lengths.map(([, nk]) => nk));
    B = lengths.length;
    const totalQ = options.cuSeqlensQ[B];
    const totalK = options.cuSeqlensK[B];
    q = randomTensor(random, [totalQ, H, c.d], c.amplitude);
    k = randomTensor(random, [totalK, c.Hkv, c.d], c.amplitude);
    v = randomTensor(random, [totalK, c.Hkv, c.dv]);
  } else {
    B = c.B;
    options.layout = c.layout;
    const shape = (N: number, heads: number, D: number) => c.layout === "bshd" ? [B, N, heads, D] : [B, heads, N, D];
    q = randomTensor(random, shape(c.Nq, H, c.d), c.amplitude);
    k = randomTensor(random, shape(c.Nk, c.Hkv, c.d), c.amplitude);
    v = randomTensor(random, shape(c.Nk, c.Hkv, c.dv));
    if (c.mask) options.mask = makeMask(random, c.mask, [B, H, c.Nq, c.Nk]);
    if (c.seqLens) {
      const seqLensK = Int32Array.from({ length: B }, () => {
        const r = random();
        return r < 0.15 ? 0 : r < 0.35 ? c.Nk : Math.floor(random() * (c.Nk + 1));
      });
      options.seqLensK = seqLensK;
      // Keys past each entry's length do not exist: NaN there must reach neither result.
      const seqAxis = c.layout === "bshd" ? 1 : 2;
      for (const t of [k, v]) {
        const [, a1, a2, D] = t.shape;
        for (let b = 0; b < B; b++) {
          for (let x = 0; x < a1; x++) {
            for (let y = 0; y < a2; y++) {
              if ((seqAxis === 1 ? x : y) < seqLensK[b]) continue;
              t.data.fill(NaN, ((b * a1 + x) * a2 + y) * D, ((b * a1 + x) * a2 + y + 1) * D);
            }
          }
        }
      }
    }
  }
  if (c.window) options.windowSize = c.window;
  if (c.scale !== null) options.scale = c.scale;
  if (c.softcap !== 0) options.softcap = c.softcap;
  if (c.alibi !== "none") {
    options.alibiSlopes = Float32Array.from({ length: c.alibi === "H" ? H : B * H }, () => 1.5 * random() - 0.5);
  }
  if (c.poison !== "none") {
    const [name, value] = c.poison.split(" ");
    const t = name === "q" ? q : name === "k" ? k : v;
    const at = Math.floor(random() * t.data.length);
    if (!Number.isNaN(t.data[at])) t.data[at] = value === "NaN" ? NaN : Infinity;
  }
  return { q, k, v, options };
}

/** max |x| over the finite elements. */
const maxFinite = (xs: ArrayLike<number>) =>
  Array.from(xs).reduce((a, x) => (Number.isFinite(x) ? Math.max(a, Math.abs(x)) : a), 0);

/**
 * A bound on |S| before the mask: |scale·q·k| ≤ scale·d·max|q|·max|k|, softcap ≤ softcap, and
 * |ALiBi bias| ≤ max|slope|·(Nq + Nk), plus 2 for the float masks' biases in (−2, 2).
 */
function scoreMagnitude(q: Tensor, k: Tensor, options: ReferenceOptions): number {
  const d = q.shape[q.shape.length - 1];
  const scale = options.scale ?? 1 / Math.sqrt(d);
  const dot = scale * d * maxFinite(q.data) * maxFinite(k.data);
  const capped = options.softcap ? Math.min(dot, options.softcap) : dot;
  const positions = q.data.length / d + k.data.length / d; // ≥ Nq + Nk of any sequence
  return capped + maxFinite(options.alibiSlopes ?? []) * positions + 2;
}

/** Equal non-finite values in the same places, and |a − b| ≤ tolerance elsewhere. */
function assertClose(what: string, actual: ArrayLike<number>, expected: ArrayLike<number>, tolerance: number): void {
  if (actual.length !== expected.length) throw new Error(`${what}: length ${actual.length} ≠ ${expected.length}`);
  for (let i = 0; i < expected.length; i++) {
    const [a, e] = [actual[i], expected[i]];
    if (Number.isFinite(a) && Number.isFinite(e) ? !(Math.abs(a - e) <= tolerance) : !Object.is(a, e)) {
      throw new Error(
        `${what}: element ${i} is ${a}, the independent naive attention has ${e} (tolerance ${tolerance})`,
      );
    }
  }
}

test("referenceAttention() equals an independent naive attention on random calls with every option and layout", () => {
  // Both are f64 and differ only in summation order (the reference also skips dropped keys while
  // the naive builds all of S). Each score is a sum of d ≤ 24 products and a few additions, so
  // its two values differ by at most ~(d + 4)·2⁻⁵³·M, where M bounds |S| (scoreMagnitude); O is a
  // convex combination of values |v| ≤ 1 and moves by at most twice the score error plus the
  // rounding of sums of ≤ 24 terms; lse by the score error plus ~Nk·2⁻⁵³·|lse| with |lse| ≤ M + ln Nk.
  // All of this is below 1e-14·(1 + M); the tolerance 1e-12·(1 + M) leaves 100× room, while a
  // wrong key, bias, alignment or head moves results by many orders of magnitude more.
  const seen = { varlen: 0, bhsd: 0, mask: 0, seqLens: 0, window: 0, topLeft: 0, alibi: 0, softcap: 0, gqa: 0 };
  const rows = { masked: 0, nan: 0, finite: 0 };
  fc.assert(
    fc.property(caseArbitrary, (c) => {
      const { q, k, v, options } = build(c);
      const ref = referenceAttention(q, k, v, { ...options, returnLse: true });
      const naive = naiveAttention(q, k, v, options);
      const tolerance = 1e-12 * (1 + scoreMagnitude(q, k, options));
      const where = JSON.stringify(c);
      assertClose(`O of ${where}`, ref.data, naive.data, tolerance);
      assertClose(`lse of ${where}`, ref.lse.data, naive.lse, tolerance);
      seen.varlen += c.varlen ? 1 : 0;
      seen.bhsd += options.layout === "bhsd" ? 1 : 0;
      seen.mask += options.mask ? 1 : 0;
      seen.seqLens += options.seqLensK ? 1 : 0;
      seen.window += options.windowSize ? 1 : 0;
      seen.topLeft += options.causal === "top-left" ? 1 : 0;
      seen.alibi += options.alibiSlopes ? 1 : 0;
      seen.softcap += options.softcap ? 1 : 0;
      seen.gqa += c.group > 1 ? 1 : 0;
      for (const x of naive.lse) {
        if (x === -Infinity) rows.masked++;
        else if (Number.isNaN(x)) rows.nan++;
        else rows.finite++;
      }
    }),
    { seed: 0x0dd5eed, numRuns: 300 },
  );
  // The generator must reach every option and every kind of row, or the property says little.
  for (const [name, n] of Object.entries({ ...seen, ...rows })) {
    if (n < 20) throw new Error(`only ${n} runs or rows with ${name}: ${JSON.stringify({ seen, rows })}`);
  }
});
