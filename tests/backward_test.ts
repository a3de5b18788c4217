// flashAttentionBackward: the gradients of exact attention (ALGORITHMS.md §6).
//
// Oracles, none of them the code under test:
// - tests/_naive_backward.ts, an f64 transcription of §6 and the chain rule (itself checked against
//   finite differences in tests/naive_backward_test.ts), and its f32 mode as the "same precision,
//   other order" baseline of the flash-attention repository's gradient rule (§7):
//   max|lib − f64| ≤ 3 × max|naive f32 − f64| + floor;
// - central finite differences of the library's own forward (end to end);
// - the closed-form IO model (src/io.ts), which counts from formulas, not from the kernels;
// - properties that need no oracle: bitwise repeatability, pool = synchronous, zero gradients for
//   rows that see nothing, typed errors, caller buffers.
// Every tolerance is stated and justified where it is used.

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  type AttentionGradients,
  type AttentionOutput,
  type AttentionPool,
  flashAttention,
  flashAttentionBackward,
  type FlashAttentionBackwardOptions,
  type FlashAttentionOptions,
  type Layout,
  ShapeError,
  type Tensor,
} from "../mod.ts";
import { type BackwardIoOptions, flashAttentionBackwardIo } from "../src/io.ts";
import { POOL_TUNING, type PoolTuning, startPool } from "../src/pool.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import { planBackward } from "../src/_backward_plan.ts";
import { ensureBackwardArena } from "../src/_backward_run.ts";
import { heapOf } from "../src/_heap.ts";
import { SLAB_BUDGET_BYTES } from "../src/_plan.ts";
import { validateBackwardCall } from "../src/_validate.ts";
import type { NaiveOptions } from "./_naive.ts";
import { naiveAttentionBackward } from "./_naive_backward.ts";
import {
  assertBitwiseEqual,
  assertThrows,
  makeMask,
  type MaskSpec,
  maxAbsError,
  randomTensor,
  rng,
  test,
} from "./_util.ts";

type Causal = boolean | "bottom-right" | "top-left";
type Gradient = "dq" | "dk" | "dv";
const GRADIENTS: readonly Gradient[] = ["dq", "dk", "dv"];

const kernels = loadKernels();

/** Pools tuned so that even these small problems run on the Workers. */
const DISPATCH: PoolTuning = { ...POOL_TUNING, inlineFlops: 0 };
/** Many small jobs and every sequence in a phase of its own: more cuts, same bits. */
const STREAM: PoolTuning = { inlineFlops: 0, slabBudgetBytes: 0, jobsPerThread: 16 };

/** Runs `fn` with fresh pools, closing them whatever happens. */
async function withPools(
  specs: { threads: number; tuning: PoolTuning }[],
  fn: (pools: AttentionPool[]) => Promise<void>,
): Promise<void> {
  const pools: AttentionPool[] = [];
  try {
    // One at a time: the machine's cores are shared.
    for (const s of specs) pools.push(await startPool(s.threads, s.tuning));
    await fn(pools);
  } finally {
    await Promise.all(pools.map((p) => p.close()));
  }
}

/** Throws if any element of any array is NaN (inputs here are finite, so NaN is always a bug). */
function assertNoNaN(what: string, arrays: Record<string, ArrayLike<number>>): void {
  for (const [name, a] of Object.entries(arrays)) {
    for (let i = 0; i < a.length; i++) {
      if (Number.isNaN(a[i])) throw new Error(`${what}: ${name}[${i}] is NaN`);
    }
  }
}

const maxAbs = (xs: ArrayLike<number>) => {
  let m = 0;
  for (let i = 0; i < xs.length; i++) m = Math.max(m, Math.abs(xs[i]));
  return m;
};

/** The options the oracles and the forward share: everything but the run options. */
function semanticOf(options: FlashAttentionBackwardOptions): NaiveOptions {
  const { sramBytes: _s, stats: _t, out: _o, ...semantic } = options;
  return semantic;
}

/** The forward with lse, then the backward with the same options. */
function forwardBackward(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  dOut: (o: AttentionOutput) => Tensor,
  options: FlashAttentionBackwardOptions,
): { o: AttentionOutput; dO: Tensor; grads: AttentionGradients } {
  const { out: _out, stats: _stats, ...forward } = options;
  const o = flashAttention(q, k, v, { ...forward, returnLse: true } as FlashAttentionOptions);
  const dO = dOut(o);
  return { o, dO, grads: flashAttentionBackward(q, k, v, o, dO, options) };
}

/**
 * The gradient rule of the flash-attention repository (ALGORITHMS.md §7), per gradient:
 * max|lib − f64| ≤ 3 × max|naive f32 − f64| + floor, floor = FLOOR · max(1, G), where G is the
 * largest |element| of the three f64 gradients dq, dk, dv together.
 *
 * Why 3× (the repository's factor for gradients, vs 2× for the forward): the library's gradients
 * depend on its own f32 forward (O and lse carry their rounding into D = rowsum(dO ∘ O) and
 * P = exp(S − lse)), it sums dK/dV over blocks and GQA heads in another order than the naive loop,
 * and its exp is a polynomial (≤ 2.5e-7 relative).
 *
 * Why a floor: the naive f32 error is a useless yardstick where the exact gradient vanishes by
 * cancellation. A row that sees one key has P = 1 and dS = P·(dP − D) = 0 exactly (the softmax of
 * one score is constant), so f64 and naive f32 — which sums dP and D = dO·O, O = V, in the same
 * order — give dq = dk = 0 to the bit, while the library, which sums D (in its own kernel, SIMD
 * order) and dP (in the tile product) differently, keeps a residue of a few ulps of dO·V per row.
 * dk_j sums that residue times q_i over the rows i that see key j, the same rows dv_j = Σ_i P·dO_i
 * sums over, so the residue scales with the gradients' magnitude G (dv's, when dq and dk are 0) and
 * not with dk's own. Why 2e-6 (≈ 32 f32 ulps of G): over 300 random problems drawn from this
 * arbitrary (two seeds, this file's included) the largest (error − 3 × naive error) / max(1, G)
 * was 5.7e-7, in a one-key case (3.9e-7 elsewhere); every real mistake (a wrong head, mask, sign, scale
 * or softcap factor) errs by the gradient's own size, and multiplying dk by 1 + 1e-5 is caught
 * (tried while writing this test).
 */
const FLOOR = 2e-6;

/** Checks the library's gradients against the f64 oracle by the rule; returns the worst error/bound ratio. */
function checkGradients(
  what: string,
  grads: AttentionGradients,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  dO: Tensor,
  options: FlashAttentionBackwardOptions,
): number {
  const semantic = semanticOf(options);
  const exact = naiveAttentionBackward(q, k, v, dO, semantic, "f64");
  const f32 = naiveAttentionBackward(q, k, v, dO, semantic, "f32");
  const magnitude = Math.max(1, ...GRADIENTS.map((name) => maxAbs(exact[name])));
  let worst = 0;
  for (const name of GRADIENTS) {
    const got = grads[name].data;
    assertNoNaN(`${what}: ${name}`, { got, f64: exact[name] });
    if (got.length !== exact[name].length) throw new Error(`${what}: ${name} has ${got.length} elements`);
    const error = maxAbsError(got, exact[name]);
    const baseline = maxAbsError(f32[name], exact[name]);
    const bound = 3 * baseline + FLOOR * magnitude;
    if (!(error <= bound)) {
      throw new Error(
        `${what}: ${name} error ${error} exceeds 3 × naive f32 error ${baseline} + floor = ${bound}`,
      );
    }
    worst = Math.max(worst, error / bound);
  }
  return worst;
}

const cumulative = (ns: number[]) => {
  const out = new Int32Array(ns.length + 1);
  ns.forEach((n, i) => (out[i + 1] = out[i] + n));
  return out;
};

// ── Memory ─────────────────────────────────────────────────────────────────────────────────

test("flashAttentionBackward() keeps HBM at O(N·d): at N = 8192 its plan and the memory it grows stay far below one N × N matrix", () => {
  // N = 8192, H = 1, d = dv = 16. The backward stages q, k, v, O, dO, dQ, dK, dV (N·d floats each),
  // lse and D (N floats each) and the partial dQ of at most 8 key segments (8·N·d floats):
  // 16·N·d·4 + 2·N·4 ≈ 8.06 MiB. The budget allows 20·N·d·4 (10 MiB) for alignment and headroom,
  // plus 1 MiB for 64 KiB page rounding: 11 MiB. One N × N f32 matrix (S, P or dS for a single head)
  // is N²·4 = 256 MiB, and even an eighth of one is 32 MiB > 11 MiB, so an implementation that
  // placed any N × N/8 block of scores in HBM fails here.
  // What is measured does not depend on what ran before in this process (Bun runs every file in
  // one): the plan's HBM span from its first byte, and that the run grows the memory no further
  // than that span's end.
  const [N, d] = [8192, 16];
  const budget = 20 * N * d * 4 + (1 << 20);
  if (!(budget < (N * N * 4) / 8)) throw new Error("the budget does not separate O(N·d) from O(N²)");
  const random = rng(0x3e3);
  const q = randomTensor(random, [1, N, 1, d]);
  const k = randomTensor(random, [1, N, 1, d]);
  const v = randomTensor(random, [1, N, 1, d]);
  const o = flashAttention(q, k, v, { causal: true, returnLse: true });
  const dOut = randomTensor(random, [...o.shape]);
  const call = validateBackwardCall(q, k, v, o, dOut, { causal: true });
  const start = heapOf(kernels.memory, kernels.hbmPtr()).end;
  const plan = planBackward(call.problem, call, {
    sramBytes: call.sramBytes,
    B: ensureBackwardArena(kernels, call.sramBytes, call.problem),
    hbmPtr: start,
    slabBudgetBytes: SLAB_BUDGET_BYTES,
    queryJobsPerGroup: 1,
  });
  const span = plan.endPtr - start;
  if (!(span >= 16 * N * d * 4 && span <= budget)) {
    throw new Error(`the plan spans ${span} bytes of HBM, outside [${16 * N * d * 4}, ${budget}]`);
  }
  const before = kernels.memory.buffer.byteLength;
  const grads = flashAttentionBackward(q, k, v, o, dOut, { causal: true });
  const after = kernels.memory.buffer.byteLength;
  const limit = Math.max(before, Math.ceil(plan.endPtr / 65536) * 65536);
  if (after > limit) {
    throw new Error(`the backward grew memory to ${after} bytes, past its plan's end ${plan.endPtr} (was ${before})`);
  }
  // The call did compute something (not an early exit that would pass trivially).
  assertNoNaN("N = 8192", { dq: grads.dq.data, dk: grads.dk.data, dv: grads.dv.data });
  if (!(maxAbs(grads.dv.data) > 0.1)) throw new Error(`dv is (nearly) zero: ${maxAbs(grads.dv.data)}`);
});

// ── 1. Random problems against the f64 oracle ───────────────────────────────────────────────

const side = fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: 70 }));
const maskArb: fc.Arbitrary<MaskSpec> = fc.record({
  kind: fc.constantFrom("f32" as const, "u8" as const),
  rank: fc.constantFrom(1 as const, 2 as const, 3 as const, 4 as const),
  keep: fc.tuple(fc.boolean(), fc.boolean(), fc.boolean(), fc.oneof(fc.constant(true), fc.boolean())),
  blocked: fc.constantFrom(0, 0.3, 0.7, 0.97),
});

const specArb = fc.record({
  B: fc.integer({ min: 1, max: 2 }),
  Hkv: fc.integer({ min: 1, max: 2 }),
  /** H = group·Hkv: group > 1 is GQA (Hkv = 2) or MQA (Hkv = 1). */
  group: fc.integer({ min: 1, max: 3 }),
  Nq: fc.integer({ min: 1, max: 70 }),
  Nk: fc.integer({ min: 1, max: 70 }),
  /** Nk = Nq in about one case in four; otherwise Nk ≠ Nq is enforced. */
  sameLength: fc.constantFrom(false, false, false, true),
  d: fc.integer({ min: 1, max: 40 }),
  dv: fc.integer({ min: 1, max: 40 }),
  layout: fc.constantFrom<Layout>("bshd", "bhsd"),
  causal: fc.constantFrom<Causal>(false, true, "bottom-right", "top-left"),
  window: fc.option(fc.tuple(side, side), { nil: null }),
  scale: fc.option(fc.double({ min: 0.05, max: 1.5, noNaN: true }), { nil: null }),
  softcap: fc.oneof(fc.constant(0), fc.double({ min: 0.5, max: 50, noNaN: true })),
  alibi: fc.constantFrom("none" as const, "H" as const, "BH" as const),
  /** How keys are limited: a mask, seqLensK, both, or varlen packing (which takes neither). */
  keys: fc.constantFrom("none" as const, "mask" as const, "seqLensK" as const, "both" as const, "varlen" as const),
  mask: maskArb,
  /** Varlen: (Nq, Nk) per packed sequence, either may be 0. */
  lengths: fc.array(fc.tuple(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 50 })), {
    minLength: 1,
    maxLength: 4,
  }),
  /** A small arena (many tiles) or the default. */
  sramBytes: fc.option(fc.integer({ min: 16 * 1024, max: 64 * 1024 }), { nil: null }),
  amplitude: fc.constantFrom(1, 2),
  seed: fc.integer(),
});
type Spec = typeof specArb extends fc.Arbitrary<infer T> ? T : never;

function buildSpec(s: Spec): { q: Tensor; k: Tensor; v: Tensor; options: FlashAttentionBackwardOptions } {
  const random = rng(s.seed);
  const H = s.Hkv * s.group;
  const Nk = s.sameLength ? s.Nq : s.Nq === s.Nk ? s.Nk + 1 : s.Nk;
  const options: FlashAttentionBackwardOptions = { causal: s.causal };
  let q: Tensor, k: Tensor, v: Tensor, B: number;
  if (s.keys === "varlen") {
    const lengths = s.lengths.map(([a, b]) => [a, b]);
    // A packed tensor needs rows: give the last sequence a query and a key when none has any.
    if (lengths.every(([nq]) => nq === 0)) lengths[lengths.length - 1][0] = 1;
    if (lengths.every(([, nk]) => nk === 0)) lengths[lengths.length - 1][1] = 1;
    options.cuSeqlensQ = cumulative(lengths.map(([nq]) => nq));
    options.cuSeqlensK = cumulative(lengths.map(([, nk]) => nk));
    B = lengths.length;
    q = randomTensor(random, [options.cuSeqlensQ[B], H, s.d], s.amplitude);
    k = randomTensor(random, [options.cuSeqlensK[B], s.Hkv, s.d], s.amplitude);
    v = randomTensor(random, [options.cuSeqlensK[B], s.Hkv, s.dv]);
  } else {
    B = s.B;
    const shape = (N: number, heads: number, D: number) => s.layout === "bshd" ? [B, N, heads, D] : [B, heads, N, D];
    options.layout = s.layout;
    q = randomTensor(random, shape(s.Nq, H, s.d), s.amplitude);
    k = randomTensor(random, shape(Nk, s.Hkv, s.d), s.amplitude);
    v = randomTensor(random, shape(Nk, s.Hkv, s.dv));
    if (s.keys === "mask" || s.keys === "both") options.mask = makeMask(random, s.mask, [B, H, s.Nq, Nk]);
    if (s.keys === "seqLensK" || s.keys === "both") {
      options.seqLensK = Int32Array.from({ length: B }, () => {
        const r = random();
        return r < 0.2 ? 0 : r < 0.4 ? Nk : Math.floor(random() * (Nk + 1));
      });
    }
  }
  if (s.window) options.windowSize = s.window;
  if (s.scale !== null) options.scale = s.scale;
  if (s.softcap !== 0) options.softcap = s.softcap;
  if (s.alibi !== "none") {
    options.alibiSlopes = Float32Array.from({ length: s.alibi === "H" ? H : B * H }, () => random());
  }
  if (s.sramBytes !== null) {
    // At least the backward's smallest blocks (8 × 8), which the arbitrary's range already holds for d, dv ≤ 40.
    const least = kernels.backwardArenaBytes(8, s.d, s.dv, options.mask !== undefined);
    options.sramBytes = Math.max(least, s.sramBytes);
  }
  return { q, k, v, options };
}

test("flashAttentionBackward() matches the f64 oracle within 3 × the naive f32 error on random shapes and options", () => {
  let nonZero = 0;
  let worst = 0;
  fc.assert(
    fc.property(specArb, (s) => {
      const { q, k, v, options } = buildSpec(s);
      const random = rng(s.seed ^ 0x5a5a);
      const { dO, grads } = forwardBackward(q, k, v, (o) => randomTensor(random, [...o.shape]), options);
      for (const name of GRADIENTS) {
        if (grads[name].shape.join() !== [q, k, v][GRADIENTS.indexOf(name)].shape.join()) {
          throw new Error(`${name}.shape ${grads[name].shape}`);
        }
      }
      worst = Math.max(worst, checkGradients(JSON.stringify(s), grads, q, k, v, dO, options));
      if (maxAbs(grads.dq.data) > 1e-3 && maxAbs(grads.dk.data) > 1e-3) nonZero++;
    }),
    { seed: 0xbac4, numRuns: 60, includeErrorInReport: true },
  );
  // Not vacuous: most random problems have keys to attend to, so real gradients were compared.
  if (nonZero < 30) throw new Error(`only ${nonZero} of 60 runs had non-zero dq and dk`);
  if (!(worst > 0)) throw new Error("every error was exactly 0: the comparison saw nothing");
});

// ── 2. End to end: finite differences of the library's own forward ──────────────────────────

test("flashAttentionBackward() matches central finite differences of flashAttention (causal; softcap + ALiBi)", () => {
  // L = Σ w ∘ O for a fixed random w, so dOut = w and ∂L/∂x is what the backward returns.
  // B = 1, N = 6, H = 2, Hkv = 1 (MQA: dK, dV sum two heads), d = 5, dv = 3; every element of q,
  // k and v is moved by ±h (after rounding to f32; the step actually taken is used).
  //
  // Tolerance 2e-3 · max(1, |g|), h = 2e-2:
  // - rounding: the forward is f32; each of the 36 elements of O carries a relative error of at
  //   most ~1e-6 (a few f32 roundings, the polynomial exp's 2.5e-7), |O| ≤ max|v| < 1 and |w| < 1,
  //   so L is off by at most 36·1e-6 ≈ 4e-5 and (L₊ − L₋)/2h by at most 4e-5/0.04 ≈ 9e-4 if every
  //   error were aligned (they are not: the largest error seen with these seeds is 8e-6);
  // - truncation: h²/6 · |∂³L/∂x³| ≈ 7e-5 × an O(1) third derivative (scores here are O(1)).
  // So 2e-3 covers the worst case with a factor 2, while a wrong gradient (missing softcap factor,
  // wrong head, a mask or slope leaking into dS) errs by the gradient's own size, 1e-1..1 (dv scaled
  // by 1.01 fails here).
  const h = 2e-2;
  const tolerance = (g: number) => 2e-3 * Math.max(1, Math.abs(g));
  const random = rng(0xfd);
  const [B, N, H, Hkv, d, dv] = [1, 6, 2, 1, 5, 3];
  const cases: [string, FlashAttentionOptions & FlashAttentionBackwardOptions, number][] = [
    ["causal", { causal: true }, 1],
    ["softcap + ALiBi", { softcap: 1.5, alibiSlopes: new Float32Array([0.5, 0.25]) }, 2],
    ["top-left causal + window + softcap + ALiBi", {
      causal: "top-left",
      windowSize: [2, -1],
      softcap: 3,
      alibiSlopes: new Float32Array([0.3, 0.7]),
    }, 2],
  ];
  let worst = 0;
  for (const [name, options, amplitude] of cases) {
    const q = randomTensor(random, [B, N, H, d], amplitude);
    const k = randomTensor(random, [B, N, Hkv, d], amplitude);
    const v = randomTensor(random, [B, N, Hkv, dv]);
    const w = randomTensor(random, [B, N, H, dv]);
    const loss = (qq: Tensor, kk: Tensor, vv: Tensor) => {
      const o = flashAttention(qq, kk, vv, options).data;
      let sum = 0;
      for (let i = 0; i < o.length; i++) sum += w.data[i] * o[i];
      return sum;
    };
    const o = flashAttention(q, k, v, { ...options, returnLse: true });
    const grads = flashAttentionBackward(q, k, v, o, w, options);
    const inputs = [q, k, v];
    inputs.forEach((base, which) => {
      const g = grads[GRADIENTS[which]].data;
      if (!(maxAbs(g) > 0.05)) throw new Error(`${name}: ${GRADIENTS[which]} is (nearly) all zero`);
      for (let idx = 0; idx < base.data.length; idx++) {
        const at = (x: number) => {
          const data = Float32Array.from(base.data);
          data[idx] = x;
          const moved = { data, shape: base.shape };
          return loss(which === 0 ? moved : q, which === 1 ? moved : k, which === 2 ? moved : v);
        };
        const up = Math.fround(base.data[idx] + h);
        const down = Math.fround(base.data[idx] - h);
        const numeric = (at(up) - at(down)) / (up - down);
        const error = Math.abs(numeric - g[idx]);
        worst = Math.max(worst, error);
        if (!(error <= tolerance(g[idx]))) {
          throw new Error(
            `${name}: ${GRADIENTS[which]}[${idx}] is ${g[idx]}, finite differences give ${numeric} (error ${error})`,
          );
        }
      }
    });
  }
  if (!(worst > 0)) throw new Error("finite differences matched to the last bit: the check saw nothing");
});

// ── 3. Determinism: repeated calls and pools of any size give the same bits ──────────────────

/** Throws unless two gradient results hold the same bits, and (when both have them) the same stats. */
function assertSameGradients(what: string, actual: AttentionGradients, expected: AttentionGradients): void {
  for (const name of GRADIENTS) {
    assert.deepEqual(actual[name].shape, expected[name].shape, `${what}: ${name}.shape`);
    assertBitwiseEqual(`${what}: ${name}`, actual[name].data, expected[name].data);
  }
  if ((actual.stats === undefined) !== (expected.stats === undefined)) throw new Error(`${what}: stats on one side`);
  if (actual.stats && expected.stats) {
    const { sramPeakBytesPerWorker: peaks, ...sums } = actual.stats;
    const { sramPeakBytesPerWorker: _none, ...want } = expected.stats;
    assert.deepStrictEqual(sums, want, `${what}: stats`);
    if (peaks !== undefined) {
      if (Math.max(...peaks) !== want.sramPeakBytes) throw new Error(`${what}: per-Worker peaks ${peaks}`);
      if (peaks.some((p) => p > want.sramBytes)) throw new Error(`${what}: a Worker's peak exceeds M`);
    }
  }
}

test("flashAttentionBackward() gives the same bits on every call, and pools of 1, 2 and 3 Workers give the synchronous bits and counts", async () => {
  // Blocks B = Br = Bc of 8..128 on a 40000-byte arena and 300·2 = 600 virtual rows per group give
  // several dQ and dK/dV jobs per group on the Workers; the bits must not depend on the cut.
  const random = rng(0xde7);
  const problems: [string, Tensor, Tensor, Tensor, FlashAttentionBackwardOptions][] = [];
  {
    const [B, Nq, Nk, H, Hkv, d, dv] = [2, 300, 280, 4, 2, 24, 20];
    const q = randomTensor(random, [B, Nq, H, d]);
    const k = randomTensor(random, [B, Nk, Hkv, d]);
    const v = randomTensor(random, [B, Nk, Hkv, dv]);
    problems.push(["causal", q, k, v, { causal: true, sramBytes: 40000, stats: true }]);
    const mask = makeMask(random, { kind: "f32", rank: 4, keep: [true, false, true, true], blocked: 0.2 }, [
      B,
      H,
      Nq,
      Nk,
    ]);
    problems.push(["mask + window + ALiBi + softcap", q, k, v, {
      mask,
      windowSize: [90, 20],
      softcap: 4,
      alibiSlopes: Float32Array.from({ length: H }, () => random()),
      sramBytes: 40000,
      stats: true,
    }]);
  }
  {
    const [H, Hkv, d, dv] = [4, 2, 24, 20];
    const lengths = [[0, 5], [130, 140], [77, 0], [200, 180], [1, 1]];
    const cuSeqlensQ = cumulative(lengths.map(([a]) => a));
    const cuSeqlensK = cumulative(lengths.map(([, b]) => b));
    const q = randomTensor(random, [cuSeqlensQ[5], H, d]);
    const k = randomTensor(random, [cuSeqlensK[5], Hkv, d]);
    const v = randomTensor(random, [cuSeqlensK[5], Hkv, dv]);
    problems.push(["varlen", q, k, v, { cuSeqlensQ, cuSeqlensK, causal: "top-left", sramBytes: 40000, stats: true }]);
  }
  const runs = problems.map(([name, q, k, v, options]) => {
    const { o, dO, grads } = forwardBackward(q, k, v, (o) => randomTensor(random, [...o.shape]), options);
    // Not vacuous: the gradients are real.
    if (!(maxAbs(grads.dq.data) > 1e-3 && maxAbs(grads.dk.data) > 1e-3 && maxAbs(grads.dv.data) > 1e-3)) {
      throw new Error(`${name}: gradients are (nearly) zero`);
    }
    if (!(grads.stats!.Tr >= 3 && grads.stats!.Tc >= 3)) throw new Error(`${name}: only ${grads.stats!.Tr} blocks`);
    assertSameGradients(`${name}, second call`, flashAttentionBackward(q, k, v, o, dO, options), grads);
    return { name, q, k, v, o, dO, options, grads };
  });
  const specs = [1, 2, 3].map((threads) => ({ threads, tuning: DISPATCH }));
  await withPools([...specs, { threads: 2, tuning: STREAM }], async (pools) => {
    for (const [i, pool] of pools.entries()) {
      for (const r of runs) {
        const got = await pool.flashAttentionBackward(r.q, r.k, r.v, r.o, r.dO, r.options);
        if (got.stats?.sramPeakBytesPerWorker?.length !== pool.threads) {
          throw new Error(`${r.name}, pool ${i}: the call did not run on the Workers`);
        }
        assertSameGradients(`${r.name}, pool ${i} (${pool.threads} Workers)`, got, r.grads);
      }
    }
  });
});

test("assertSameGradients itself catches one flipped bit and a differing counter", () => {
  const make = () => ({
    dq: { data: new Float32Array([1, 2]), shape: [2] },
    dk: { data: new Float32Array([3]), shape: [1] },
    dv: { data: new Float32Array([4]), shape: [1] },
  });
  const a = make();
  const b = make();
  b.dk.data[0] = Math.fround(3 + 2 ** -22);
  assertThrows(() => assertSameGradients("flip", a, b), Error, "dk");
  const stats = flashAttentionBackwardIo({ B: 1, H: 1, Nq: 8, Nk: 8, d: 4 });
  const c = { ...make(), stats: { ...stats, flops: 1 } };
  const e = { ...make(), stats: { ...stats, flops: 2 } };
  assertThrows(() => assertSameGradients("stats", c, e), Error, "stats");
});

// ── 4. Rows that see no key ──────────────────────────────────────────────────────────────────

test("rows that see no key (all-false mask rows, causal with Nq > Nk) get dq = 0 exactly, give dk and dv nothing, and nothing is NaN", () => {
  // Such a row has lse = −∞; a kernel that forms P = exp(S − lse) without a guard gets
  // exp(+∞) = ∞ and 0·∞ = NaN. "Give dk and dv nothing" is checked without an oracle: changing the
  // q and dOut rows of the blind queries (and rerunning the forward) must leave dk and dv equal.
  const random = rng(0xb11d);
  const [B, H, Hkv, d, dv] = [2, 4, 2, 9, 7];
  const cases: {
    name: string;
    Nq: number;
    Nk: number;
    options: FlashAttentionBackwardOptions;
    blind: (b: number, i: number) => boolean;
  }[] = [];
  {
    const [Nq, Nk] = [40, 33];
    const blank = new Set(["0,0", "0,1", "0,17", "0,39", "1,5"]);
    for (let i = 8; i < 24; i++) blank.add(`1,${i}`); // whole query blocks of 8 virtual rows (group 2)
    const data = new Uint8Array(B * Nq * Nk);
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < Nq; i++) {
        for (let j = 0; j < Nk; j++) data[(b * Nq + i) * Nk + j] = !blank.has(`${b},${i}`) && random() < 0.7 ? 1 : 0;
      }
    }
    const blind = (b: number, i: number) => blank.has(`${b},${i}`);
    for (const sramBytes of [kernels.backwardArenaBytes(8, d, dv, true), 60000]) {
      cases.push({
        name: `boolean mask, M = ${sramBytes}`,
        Nq,
        Nk,
        options: { mask: { data, shape: [B, 1, Nq, Nk] }, sramBytes },
        blind,
      });
      cases.push({
        name: `boolean mask + causal top-left, M = ${sramBytes}`,
        Nq,
        Nk,
        options: { mask: { data, shape: [B, 1, Nq, Nk] }, causal: "top-left", sramBytes },
        blind,
      });
    }
  }
  {
    // Bottom-right causal, Nq = 50 > Nk = 13: query i sees j ≤ i − 37, so queries 0..36 see nothing.
    const [Nq, Nk] = [50, 13];
    const blind = (_b: number, i: number) => i + Nk - Nq < 0;
    for (const sramBytes of [kernels.backwardArenaBytes(8, d, dv, false), 60000]) {
      cases.push({ name: `causal Nq > Nk, M = ${sramBytes}`, Nq, Nk, options: { causal: true, sramBytes }, blind });
      cases.push({
        name: `causal Nq > Nk + softcap + ALiBi, M = ${sramBytes}`,
        Nq,
        Nk,
        options: {
          causal: "bottom-right",
          softcap: 2,
          alibiSlopes: Float32Array.from({ length: H }, () => random()),
          sramBytes,
        },
        blind,
      });
    }
  }
  for (const c of cases) {
    const { Nq, Nk, options } = c;
    const q = randomTensor(random, [B, Nq, H, d]);
    const k = randomTensor(random, [B, Nk, Hkv, d]);
    const v = randomTensor(random, [B, Nk, Hkv, dv]);
    const dOut = randomTensor(random, [B, Nq, H, dv]);
    const { o, grads } = forwardBackward(q, k, v, () => dOut, options);
    assertNoNaN(c.name, { dq: grads.dq.data, dk: grads.dk.data, dv: grads.dv.data });
    checkGradients(c.name, grads, q, k, v, dOut, options);
    const qAt = (b: number, i: number, h: number) => ((b * Nq + i) * H + h) * d;
    const oAt = (b: number, i: number, h: number) => ((b * Nq + i) * H + h) * dv;
    let blindRows = 0;
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < Nq; i++) {
        if (!c.blind(b, i)) continue;
        blindRows++;
        for (let h = 0; h < H; h++) {
          // The forward agrees these rows are blind (else the test's own bookkeeping is wrong).
          if (o.lse!.data[(b * H + h) * Nq + i] !== -Infinity) throw new Error(`${c.name}: row ${b},${i} saw a key`);
          const row = grads.dq.data.subarray(qAt(b, i, h), qAt(b, i, h) + d);
          if (row.some((x) => x !== 0)) throw new Error(`${c.name}: dq of blind row ${b},${i} head ${h}: ${row}`);
        }
      }
    }
    if (blindRows === 0) throw new Error(`${c.name}: no blind rows`);
    // Move the blind rows' queries and output gradients far away: dk and dv must not change.
    const q2 = { data: Float32Array.from(q.data), shape: q.shape };
    const dOut2 = { data: Float32Array.from(dOut.data), shape: dOut.shape };
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < Nq; i++) {
        if (!c.blind(b, i)) continue;
        for (let h = 0; h < H; h++) {
          for (let x = 0; x < d; x++) q2.data[qAt(b, i, h) + x] = 50 * (2 * random() - 1);
          for (let x = 0; x < dv; x++) dOut2.data[oAt(b, i, h) + x] = 1e6 * (2 * random() - 1);
        }
      }
    }
    const moved = forwardBackward(q2, k, v, () => dOut2, options).grads;
    for (const name of ["dk", "dv"] as const) {
      const [a, b] = [grads[name].data, moved[name].data];
      // Value equality (a blind row adds ±0, which may flip the sign of a zero sum, nothing else).
      for (let i = 0; i < a.length; i++) {
        if (a[i] !== b[i]) {
          throw new Error(`${c.name}: ${name}[${i}] moved from ${a[i]} to ${b[i]} with the blind rows`);
        }
      }
    }
    assertNoNaN(`${c.name}, moved`, { dq: moved.dq.data });
  }
});

// ── 5. Counted IO against the closed form ────────────────────────────────────────────────────

test("the backward's stats (less flops) equal flashAttentionBackwardIo() exactly, with the arena peak within M", () => {
  const random = rng(0x10);
  const [B, Nq, Nk, H, d, dv] = [2, 45, 70, 2, 12, 10];
  interface IoCase {
    name: string;
    Hkv?: number;
    layout?: Layout;
    options: FlashAttentionBackwardOptions;
    io: BackwardIoOptions;
    varlen?: [number, number][];
  }
  // A float mask of finite biases and scattered −∞ (p = 0.05: a whole 8 × 8 tile blocked has
  // probability 0.05⁶⁴), and a byte mask with a quarter zeros: neither blanks a tile, which the
  // closed form does not model.
  const f32Mask = {
    data: Float32Array.from({ length: Nq * Nk }, () => random() < 0.05 ? -Infinity : random() - 0.5),
    shape: [Nq, Nk],
  };
  const u8Mask = {
    data: Uint8Array.from({ length: B * H * Nq * Nk }, () => random() < 0.25 ? 0 : 1),
    shape: [B, H, Nq, Nk],
  };
  const slopes = Float32Array.from({ length: H }, () => random());
  const cases: IoCase[] = [
    { name: "plain", options: {}, io: {} },
    { name: "plain, bhsd", layout: "bhsd", options: { layout: "bhsd" }, io: {} },
    { name: "causal (bottom-right)", options: { causal: true }, io: { causal: true } },
    { name: "causal top-left", options: { causal: "top-left" }, io: { causal: "top-left" } },
    { name: "window", options: { windowSize: [9, 3] }, io: { windowSize: [9, 3] } },
    {
      name: "window + top-left causal",
      options: { windowSize: [20, 5], causal: "top-left" },
      io: { windowSize: [20, 5], causal: "top-left" },
    },
    { name: "ALiBi", options: { alibiSlopes: slopes }, io: { alibi: true } },
    { name: "float mask", options: { mask: f32Mask }, io: { maskElementBytes: 4 } },
    { name: "byte mask + causal", options: { mask: u8Mask, causal: true }, io: { maskElementBytes: 1, causal: true } },
    {
      name: "seqLensK (one 0)",
      options: { seqLensK: new Int32Array([0, 33]) },
      io: { seqLensK: new Int32Array([0, 33]) },
    },
    {
      name: "seqLensK + causal",
      options: { seqLensK: new Int32Array([70, 9]), causal: true },
      io: { seqLensK: new Int32Array([70, 9]), causal: true },
    },
    { name: "GQA (Hkv = 1)", Hkv: 1, options: { causal: "top-left" }, io: { causal: "top-left" } },
    { name: "small arena", options: { sramBytes: 9000, causal: true }, io: { sramBytes: 9000, causal: true } },
    {
      name: "small arena + mask + ALiBi",
      options: { sramBytes: 12000, mask: f32Mask, alibiSlopes: slopes },
      io: { sramBytes: 12000, maskElementBytes: 4, alibi: true },
    },
    { name: "varlen", varlen: [[20, 30], [0, 7], [25, 0], [45, 70]], options: {}, io: {} },
    {
      name: "varlen + causal + small arena",
      varlen: [[20, 30], [0, 7], [25, 0], [45, 70]],
      options: { causal: true, sramBytes: 9000 },
      io: { causal: true, sramBytes: 9000 },
    },
  ];
  for (const c of cases) {
    const Hkv = c.Hkv ?? H;
    let q: Tensor, k: Tensor, v: Tensor, options = c.options, io = c.io;
    let shape = { B, H, Hkv, Nq, Nk, d, dv };
    if (c.varlen) {
      const cuSeqlensQ = cumulative(c.varlen.map(([a]) => a));
      const cuSeqlensK = cumulative(c.varlen.map(([, b]) => b));
      const n = c.varlen.length;
      shape = { B: n, H, Hkv, Nq: cuSeqlensQ[n], Nk: cuSeqlensK[n], d, dv };
      q = randomTensor(random, [shape.Nq, H, d]);
      k = randomTensor(random, [shape.Nk, Hkv, d]);
      v = randomTensor(random, [shape.Nk, Hkv, dv]);
      options = { ...options, cuSeqlensQ, cuSeqlensK };
      io = { ...io, cuSeqlensQ, cuSeqlensK };
    } else {
      const at = (N: number, heads: number, D: number) => c.layout === "bhsd" ? [B, heads, N, D] : [B, N, heads, D];
      q = randomTensor(random, at(Nq, H, d));
      k = randomTensor(random, at(Nk, Hkv, d));
      v = randomTensor(random, at(Nk, Hkv, dv));
    }
    const { grads } = forwardBackward(q, k, v, (o) => randomTensor(random, [...o.shape]), { ...options, stats: true });
    const { flops, ...measured } = grads.stats!;
    const modelled = flashAttentionBackwardIo(shape, io);
    assert.deepStrictEqual(measured, { ...modelled }, `${c.name}: measured vs closed form`);
    if (!(measured.sramPeakBytes > 0 && measured.sramPeakBytes <= measured.sramBytes)) {
      throw new Error(`${c.name}: peak ${measured.sramPeakBytes}, M ${measured.sramBytes}`);
    }
    if (!(flops > 0)) throw new Error(`${c.name}: flops ${flops}`);
  }
});

// ── 6. Errors ────────────────────────────────────────────────────────────────────────────────

test("flashAttentionBackward() rejects bad calls with typed errors naming the shapes, the pool with the same ones, and stays usable", async () => {
  const random = rng(0xe44);
  const [B, N, H, d, dv] = [1, 6, 2, 5, 3];
  const q = randomTensor(random, [B, N, H, d]);
  const k = randomTensor(random, [B, N, H, d]);
  const v = randomTensor(random, [B, N, H, dv]);
  const o = flashAttention(q, k, v, { causal: true, returnLse: true });
  const dOut = randomTensor(random, [B, N, H, dv]);
  const good = flashAttentionBackward(q, k, v, o, dOut, { causal: true });
  const noLse = flashAttention(q, k, v, { causal: true });
  const shortOut = { data: new Float32Array(B * 5 * H * dv), shape: [B, 5, H, dv], lse: o.lse };
  const q64 = randomTensor(random, [1, 4, 1, 64]);
  const o64 = flashAttention(q64, q64, q64, { returnLse: true });
  const k4 = randomTensor(random, [B, N, H, 4]);
  const shared = new Float32Array(2 * q.data.length);
  type Args = [Tensor, Tensor, Tensor, AttentionOutput, Tensor, unknown];
  // deno-lint-ignore no-explicit-any
  const cases: [string, Args, abstract new (...args: any[]) => Error, string[]][] = [
    ["out without lse", [q, k, v, noLse, dOut, {}], TypeError, ["returnLse"]],
    ["out of the wrong shape", [q, k, v, shortOut, dOut, {}], ShapeError, [
      "out.shape is [1, 5, 2, 3]",
      "q.shape is [1, 6, 2, 5]",
      "k.shape is [1, 6, 2, 5]",
      "v.shape is [1, 6, 2, 3]",
    ]],
    ["dOut of the wrong shape", [q, k, v, o, randomTensor(random, [B, N, H, 4]), {}], ShapeError, [
      "dOut.shape is [1, 6, 2, 4]",
      "out.shape is [1, 6, 2, 3]",
    ]],
    [
      "out.lse of the wrong shape",
      [q, k, v, { ...o, lse: { data: new Float32Array(H * 5), shape: [B, H, 5] } }, dOut, {}],
      ShapeError,
      [
        "out.lse",
        "[1, 2, 5]",
      ],
    ],
    [
      "out.dq of the wrong length",
      [q, k, v, o, dOut, { out: { dq: new Float32Array(q.data.length - 1) } }],
      ShapeError,
      [
        "out.dq",
        String(q.data.length - 1),
      ],
    ],
    ["out.dk not a Float32Array", [q, k, v, o, dOut, { out: { dk: new Float64Array(k.data.length) } }], TypeError, [
      "out.dk",
      "Float32Array",
    ]],
    ["out.dq overlapping q", [q, k, v, o, dOut, { out: { dq: q.data } }], TypeError, ["out.dq", "share memory with q"]],
    [
      "out.dv overlapping dOut",
      [q, k, v, o, { data: shared.subarray(0, dOut.data.length), shape: dOut.shape }, {
        out: { dv: shared.subarray(3, 3 + v.data.length) },
      }],
      TypeError,
      ["out.dv", "dOut"],
    ],
    [
      "out.dk overlapping out.dq",
      [q, k, v, o, dOut, {
        out: { dq: shared.subarray(0, q.data.length), dk: shared.subarray(q.data.length - 1, 2 * q.data.length - 1) },
      }],
      TypeError,
      ["out.dk", "dq"],
    ],
    ["the forward's returnLse", [q, k, v, o, dOut, { returnLse: true }], TypeError, ['"returnLse"']],
    ["numSplits", [q, k, v, o, dOut, { numSplits: 2 }], TypeError, ['"numSplits"']],
    ["q and k of other head dims", [q, k4, v, o, dOut, {}], ShapeError, [
      "q.shape is [1, 6, 2, 5]",
      "k.shape is [1, 6, 2, 4]",
    ]],
    [
      "an arena below the 8 × 8 blocks",
      [q64, q64, q64, o64, randomTensor(random, [...o64.shape]), { sramBytes: 1024 }],
      RangeError,
      [
        "sramBytes",
        "1024",
      ],
    ],
  ];
  const fail = (args: Args) => () =>
    flashAttentionBackward(
      ...(args as [Tensor, Tensor, Tensor, AttentionOutput, Tensor, FlashAttentionBackwardOptions]),
    );
  const thrown: Error[] = [];
  for (const [what, args, type, fragments] of cases) {
    for (const fragment of fragments) assertThrows(fail(args), type, fragment);
    thrown.push(assertThrows(fail(args), type, fragments[0]));
    // Each failure leaves the module usable: the next valid call gives the same bits.
    assertSameGradients(`after ${what}`, flashAttentionBackward(q, k, v, o, dOut, { causal: true }), good);
  }
  // The forward's own error for mismatched head dims, word for word.
  let forwardError: unknown;
  try {
    flashAttention(q, k4, v);
  } catch (error) {
    forwardError = error;
  }
  const headDims = thrown[cases.findIndex(([what]) => what === "q and k of other head dims")];
  if (!(forwardError instanceof ShapeError) || forwardError.message !== headDims.message) {
    throw new Error(
      `the backward's head-dim error "${headDims.message}" is not the forward's "${String(forwardError)}"`,
    );
  }

  await withPools([{ threads: 2, tuning: DISPATCH }], async ([pool]) => {
    for (const [i, [what, args, type]] of cases.entries()) {
      const rejected = await pool.flashAttentionBackward(
        ...(args as [Tensor, Tensor, Tensor, AttentionOutput, Tensor, FlashAttentionBackwardOptions]),
      ).then(() => undefined, (e: unknown) => e);
      if (
        !(rejected instanceof type) || rejected.constructor !== thrown[i].constructor ||
        rejected.message !== thrown[i].message
      ) {
        throw new Error(`pool, ${what}: rejected with ${String(rejected)}, the function threw ${String(thrown[i])}`);
      }
    }
    assertSameGradients(
      "pool after the bad calls",
      await pool.flashAttentionBackward(q, k, v, o, dOut, { causal: true }),
      good,
    );
  });
});

// ── 7. Caller-owned gradient buffers ─────────────────────────────────────────────────────────

test("out: { dq, dk, dv } pre-filled with NaN are written in place, keys past seqLensK get 0, and the bits equal fresh arrays", async () => {
  // NaN in the buffers proves every element is written (or zeroed) and none is read before.
  const random = rng(0x0b);
  const [B, Nq, Nk, H, Hkv, d, dv] = [3, 37, 29, 4, 2, 11, 6];
  const seqLensK = new Int32Array([29, 0, 12]);
  const q = randomTensor(random, [B, Nq, H, d]);
  const k = randomTensor(random, [B, Nk, Hkv, d]);
  const v = randomTensor(random, [B, Nk, Hkv, dv]);
  const options: FlashAttentionBackwardOptions = { seqLensK, causal: true, sramBytes: 20000 };
  const { o, dO, grads: fresh } = forwardBackward(q, k, v, (o) => randomTensor(random, [...o.shape]), options);
  checkGradients("fresh arrays", fresh, q, k, v, dO, options);
  const buffers = () => ({
    dq: new Float32Array(q.data.length).fill(NaN),
    dk: new Float32Array(k.data.length).fill(NaN),
    dv: new Float32Array(v.data.length).fill(NaN),
  });
  const check = (what: string, got: AttentionGradients, out: ReturnType<typeof buffers>) => {
    for (const name of GRADIENTS) {
      if (got[name].data !== out[name]) throw new Error(`${what}: ${name} is not the caller's buffer`);
    }
    assertNoNaN(what, out);
    assertSameGradients(what, got, fresh);
    // Keys at or past each entry's length get exactly 0 (and entry 1, with no keys, 0 everywhere).
    const kAt = (b: number, j: number, D: number) => (b * Nk + j) * Hkv * D;
    for (let b = 0; b < B; b++) {
      for (const [name, D] of [["dk", d], ["dv", dv]] as const) {
        const tail = out[name].subarray(kAt(b, seqLensK[b], D), kAt(b, Nk, D));
        if (tail.some((x) => x !== 0)) throw new Error(`${what}: ${name} past seqLensK[${b}] is not 0`);
      }
    }
    const entry1 = out.dq.subarray(Nq * H * d, 2 * Nq * H * d);
    if (entry1.some((x) => x !== 0)) throw new Error(`${what}: dq of the entry with no keys is not 0`);
  };
  const sync = buffers();
  check("synchronous", flashAttentionBackward(q, k, v, o, dO, { ...options, out: sync }), sync);
  // Only some buffers given: the others are fresh arrays with the same bits.
  const dkOnly = new Float32Array(k.data.length).fill(NaN);
  const partial = flashAttentionBackward(q, k, v, o, dO, { ...options, out: { dk: dkOnly } });
  if (partial.dk.data !== dkOnly) throw new Error("out.dk alone is not used");
  assertSameGradients("out.dk alone", partial, fresh);
  await withPools([{ threads: 2, tuning: DISPATCH }], async ([pool]) => {
    const mine = buffers();
    check("pool", await pool.flashAttentionBackward(q, k, v, o, dO, { ...options, out: mine }), mine);
  });
});
