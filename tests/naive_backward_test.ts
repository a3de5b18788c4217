// The backward oracle (tests/_naive_backward.ts) against central finite differences of the forward
// oracle (tests/_naive.ts): for L = Σ dOut ∘ O with a random dOut, every element x of q, k and v is
// moved by ±h and (L(x + h) − L(x − h)) / 2h must match the analytic ∂L/∂x.
//
// Tolerance 1e-6 absolute, h = 1e-5. The inputs are O(1), so every score is O(1) and L, a sum of
// at most a few dozen terms dOut·O each below 1 in magnitude, is O(10). Central differences err by
// h²/6·|∂³L/∂x³| (truncation: ~1e-10 × an O(1..100) third derivative, ≤ 1e-8 here) plus the f64
// rounding of L divided by the step (~ few·2.2e-16·|L| / 2h ≈ 1e-9). So a correct gradient agrees
// to ~1e-8 at worst (every case here also passes at 1e-9); 1e-6 leaves two orders of margin, while
// any real mistake (a missed term, a wrong head, a wrong sign, a dropped softcap factor) errs by
// the size of the gradient, ~1e-2..1. Each test also checks that its gradients are not all zero,
// so the comparison cannot pass vacuously.

import { naiveAttention, type NaiveOptions, type NaiveTensor } from "./_naive.ts";
import { naiveAttentionBackward, type NaiveGradients } from "./_naive_backward.ts";
import { rng, test } from "./_util.ts";

const FD_STEP = 1e-5;
const FD_TOLERANCE = 1e-6;

/** A tensor of the given shape with f64 entries uniform in (−amplitude, amplitude). */
function tensor(random: () => number, shape: number[], amplitude = 1): NaiveTensor & { data: Float64Array } {
  const data = new Float64Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = (2 * random() - 1) * amplitude;
  return { data, shape };
}

/** One call: q, k, v, a random dOut of O's shape and the options. */
interface Call {
  q: NaiveTensor & { data: Float64Array };
  k: NaiveTensor & { data: Float64Array };
  v: NaiveTensor & { data: Float64Array };
  dOut: NaiveTensor;
  options: NaiveOptions;
}

interface Dims {
  B: number;
  Nq: number;
  Nk: number;
  H: number;
  Hkv: number;
  d: number;
  dv: number;
}

/** The shapes of the brief: B = 2, Nq = 3, Nk = 5, H = 2, Hkv = 1 (GQA), d = 3, dv = 2. */
const SMALL: Dims = { B: 2, Nq: 3, Nk: 5, H: 2, Hkv: 1, d: 3, dv: 2 };

/** A dense call in layout bshd ([B, N, H, d]) or bhsd ([B, H, N, d]). */
function dense(seed: number, dims: Partial<Dims> = {}, options: NaiveOptions = {}, amplitude = 1): Call {
  const { B, Nq, Nk, H, Hkv, d, dv } = { ...SMALL, ...dims };
  const random = rng(seed);
  const shape = (N: number, heads: number, D: number) =>
    options.layout === "bhsd" ? [B, heads, N, D] : [B, N, heads, D];
  return {
    q: tensor(random, shape(Nq, H, d), amplitude),
    k: tensor(random, shape(Nk, Hkv, d), amplitude),
    v: tensor(random, shape(Nk, Hkv, dv)),
    dOut: tensor(random, shape(Nq, H, dv)),
    options,
  };
}

/** L = Σ dOut ∘ O. */
function loss(call: Call, q: NaiveTensor, k: NaiveTensor, v: NaiveTensor): number {
  const o = naiveAttention(q, k, v, call.options).data;
  let sum = 0;
  for (let i = 0; i < o.length; i++) sum += call.dOut.data[i] * o[i];
  return sum;
}

/** Central differences of L with respect to every element of q, k and v. */
function finiteDifferences(call: Call): NaiveGradients {
  const { q, k, v } = call;
  const along = (which: 0 | 1 | 2): Float64Array => {
    const base = [q, k, v][which];
    const grad = new Float64Array(base.data.length);
    for (let idx = 0; idx < base.data.length; idx++) {
      const at = (x: number) => {
        const data = Float64Array.from(base.data);
        data[idx] = x;
        const moved = { data, shape: base.shape };
        return loss(call, which === 0 ? moved : q, which === 1 ? moved : k, which === 2 ? moved : v);
      };
      const [up, down] = [base.data[idx] + FD_STEP, base.data[idx] - FD_STEP];
      grad[idx] = (at(up) - at(down)) / (up - down); // the step actually taken, after rounding
    }
    return grad;
  };
  return { dq: along(0), dk: along(1), dv: along(2) };
}

/**
 * Checks the oracle against finite differences on `call` and returns its gradients. Every gradient
 * must be finite; each of dq, dk, dv must have an element above 1e-3 (not vacuous).
 */
function checkAgainstFiniteDifferences(call: Call): NaiveGradients {
  const analytic = naiveAttentionBackward(call.q, call.k, call.v, call.dOut, call.options);
  const numeric = finiteDifferences(call);
  for (const name of ["dq", "dk", "dv"] as const) {
    const [a, n] = [analytic[name], numeric[name]];
    if (a.length !== n.length) throw new Error(`${name}: length ${a.length} ≠ ${n.length}`);
    let largest = 0;
    for (let i = 0; i < a.length; i++) {
      if (!Number.isFinite(a[i])) throw new Error(`${name}[${i}] is ${a[i]}`);
      const error = Math.abs(a[i] - n[i]);
      if (!(error <= FD_TOLERANCE)) {
        throw new Error(`${name}[${i}]: analytic ${a[i]} vs finite differences ${n[i]} (error ${error})`);
      }
      largest = Math.max(largest, Math.abs(a[i]));
    }
    if (!(largest > 1e-3)) throw new Error(`${name} is (nearly) all zero: max |${name}| = ${largest}`);
  }
  return analytic;
}

/** Throws unless every listed element of `xs` is exactly 0 (±0). */
function assertZeroAt(what: string, xs: Float64Array, indices: Iterable<number>): void {
  for (const i of indices) if (xs[i] !== 0) throw new Error(`${what}[${i}] is ${xs[i]}, expected exactly 0`);
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

// ── The cases ──────────────────────────────────────────────────────────────────────────────

test("naiveAttentionBackward() matches finite differences without options (MHA)", () => {
  checkAgainstFiniteDifferences(dense(1, { Hkv: 2 }));
});

test("naiveAttentionBackward() matches finite differences with GQA (H = 4, Hkv = 2, repeat-interleave)", () => {
  // Hkv = 2 < H = 4 tells repeat-interleave (h → ⌊h/2⌋) from tiling (h → h mod 2).
  checkAgainstFiniteDifferences(dense(2, { H: 4, Hkv: 2 }));
});

test("naiveAttentionBackward() matches finite differences with MQA (Hkv = 1) and a given scale", () => {
  checkAgainstFiniteDifferences(dense(3, {}, { scale: 0.9 }));
});

test("naiveAttentionBackward() matches finite differences with causal bottom-right, Nq < Nk", () => {
  checkAgainstFiniteDifferences(dense(4, {}, { causal: "bottom-right" }));
});

test("naiveAttentionBackward() matches finite differences with causal: true, Nq > Nk (rows without keys)", () => {
  // Nq = 5, Nk = 3: queries 0 and 1 see no key (j ≤ i − 2), so their dq rows are exactly 0.
  const call = dense(5, { Nq: 5, Nk: 3 }, { causal: true });
  const { dq } = checkAgainstFiniteDifferences(call);
  const { B, H, d } = SMALL;
  const at = (b: number, i: number, h: number, c: number) => ((b * 5 + i) * H + h) * d + c;
  for (const b of range(B)) {
    for (const i of [0, 1]) for (const h of range(H)) assertZeroAt("dq", dq, range(d).map((c) => at(b, i, h, c)));
  }
});

test("naiveAttentionBackward() matches finite differences with causal top-left, Nq < Nk and Nq > Nk", () => {
  checkAgainstFiniteDifferences(dense(6, {}, { causal: "top-left" }));
  checkAgainstFiniteDifferences(dense(7, { Nq: 5, Nk: 3 }, { causal: "top-left" }));
});

test("naiveAttentionBackward() matches finite differences with a sliding window", () => {
  checkAgainstFiniteDifferences(dense(8, {}, { windowSize: [1, 1] }));
  checkAgainstFiniteDifferences(dense(9, { Nq: 5, Nk: 4 }, { windowSize: [0, 2] }));
});

test("naiveAttentionBackward() matches finite differences with a window and causal top-left", () => {
  checkAgainstFiniteDifferences(dense(10, { Nq: 4, Nk: 5 }, { causal: "top-left", windowSize: [1, -1] }));
});

test("naiveAttentionBackward() matches finite differences with softcap", () => {
  // Amplitude 2 makes |S_raw| reach ~3.5, well into tanh's curved part for softcap 1.5.
  checkAgainstFiniteDifferences(dense(11, {}, { softcap: 1.5 }, 2));
});

test("naiveAttentionBackward() matches finite differences with per-head ALiBi slopes", () => {
  checkAgainstFiniteDifferences(dense(12, {}, { alibiSlopes: [0.5, 0.25] }));
});

test("naiveAttentionBackward() matches finite differences with per-batch·head ALiBi slopes and causal", () => {
  checkAgainstFiniteDifferences(dense(13, {}, { alibiSlopes: [0.5, 0.25, 1, 0.125], causal: true }));
});

test("naiveAttentionBackward() matches finite differences with a float mask holding −∞", () => {
  const { B, H, Nq, Nk } = SMALL;
  const random = rng(14);
  const data = Float32Array.from({ length: B * H * Nq * Nk }, () => 4 * random() - 2);
  data[1] = data[7] = data[Nq * Nk + 4] = -Infinity;
  checkAgainstFiniteDifferences(dense(15, {}, { mask: { data, shape: [B, H, Nq, Nk] } }));
});

test("naiveAttentionBackward() matches finite differences with a broadcast boolean mask", () => {
  // [B, 1, 1, Nk] → every head and query of a batch entry sees the same keys; values 1..255 attend.
  const { B, Nk } = SMALL;
  const data = Uint8Array.from([1, 0, 255, 7, 0, 0, 3, 1, 0, 9]);
  checkAgainstFiniteDifferences(dense(16, {}, { mask: { data, shape: [B, 1, 1, Nk] } }));
});

test("naiveAttentionBackward() gives a fully masked row exactly zero gradients, no NaN", () => {
  // [Nq, Nk] float mask: query 1 is blocked everywhere, in every batch entry and head.
  const { B, H, Nq, Nk, d } = SMALL;
  const data = new Float32Array(Nq * Nk).fill(0.25);
  for (const j of range(Nk)) data[1 * Nk + j] = -Infinity;
  const call = dense(17, {}, { mask: { data, shape: [Nq, Nk] } });
  const { dq } = checkAgainstFiniteDifferences(call);
  const at = (b: number, i: number, h: number, c: number) => ((b * Nq + i) * H + h) * d + c;
  for (const b of range(B)) for (const h of range(H)) assertZeroAt("dq", dq, range(d).map((c) => at(b, 1, h, c)));

  // The same row blocked by a boolean mask instead.
  const bool = new Uint8Array(Nq * Nk).fill(1);
  for (const j of range(Nk)) bool[1 * Nk + j] = 0;
  const g = checkAgainstFiniteDifferences({ ...call, options: { mask: { data: bool, shape: [Nq, Nk] } } });
  for (const b of range(B)) for (const h of range(H)) assertZeroAt("dq", g.dq, range(d).map((c) => at(b, 1, h, c)));
});

test("naiveAttentionBackward() matches finite differences with seqLensK, one of them 0", () => {
  // Batch 0 keeps 3 of its 5 keys, batch 1 none: keys past the valid length get exactly zero dk, dv,
  // and batch 1's queries see nothing, so its dq is exactly 0 too.
  const { Nq, Nk, H, Hkv, d, dv } = SMALL;
  const call = dense(18, {}, { seqLensK: [3, 0], causal: true });
  const g = checkAgainstFiniteDifferences(call);
  const keyRows = (b: number, from: number, D: number) =>
    range(Nk).filter((j) => j >= from).flatMap((j) => range(Hkv * D).map((x) => (b * Nk + j) * Hkv * D + x));
  assertZeroAt("dk", g.dk, [...keyRows(0, 3, d), ...keyRows(1, 0, d)]);
  assertZeroAt("dv", g.dv, [...keyRows(0, 3, dv), ...keyRows(1, 0, dv)]);
  assertZeroAt("dq", g.dq, range(Nq * H * d).map((x) => Nq * H * d + x));
});

test("naiveAttentionBackward() matches finite differences with varlen sequences (causal, ALiBi)", () => {
  // Three packed sequences: Nq/Nk = 2/4, 3/3, 1/2; q [6, H, d], k [9, Hkv, d], v [9, Hkv, dv].
  const { H, Hkv, d, dv } = SMALL;
  const random = rng(19);
  const cuSeqlensQ = [0, 2, 5, 6];
  const cuSeqlensK = [0, 4, 7, 9];
  const call: Call = {
    q: tensor(random, [6, H, d]),
    k: tensor(random, [9, Hkv, d]),
    v: tensor(random, [9, Hkv, dv]),
    dOut: tensor(random, [6, H, dv]),
    options: { cuSeqlensQ, cuSeqlensK, causal: true, alibiSlopes: [0.5, 0.25] },
  };
  checkAgainstFiniteDifferences(call);
  checkAgainstFiniteDifferences({ ...call, options: { cuSeqlensQ, cuSeqlensK, windowSize: [1, 0] } });
});

test("naiveAttentionBackward() matches finite differences in layout bhsd (GQA, causal, mask)", () => {
  const dims = { H: 4, Hkv: 2 };
  const random = rng(20);
  const mask = { data: Float32Array.from({ length: 4 * 3 * 5 }, () => 2 * random() - 1), shape: [4, 3, 5] };
  checkAgainstFiniteDifferences(dense(21, dims, { layout: "bhsd", causal: true, mask }));
});

test("naiveAttentionBackward() in f32 mode stays within 1e-4 of f64 and holds f32 values", () => {
  // f32 rounding (2^-24 ≈ 6e-8 relative) over sums of ≤ 5 terms of O(1): errors ~1e-7, far below 1e-4.
  const call = dense(22, { Hkv: 2 });
  const exact = naiveAttentionBackward(call.q, call.k, call.v, call.dOut, call.options);
  const f32 = naiveAttentionBackward(call.q, call.k, call.v, call.dOut, call.options, "f32");
  let differs = false;
  for (const name of ["dq", "dk", "dv"] as const) {
    f32[name].forEach((x, i) => {
      if (Math.fround(x) !== x) throw new Error(`${name}[${i}] = ${x} is not an f32 value`);
      const error = Math.abs(x - exact[name][i]);
      if (!(error <= 1e-4)) throw new Error(`${name}[${i}]: f32 ${x} vs f64 ${exact[name][i]}`);
      if (error > 0) differs = true;
    });
  }
  // The inputs are f64 values, so an f32 mode that really rounds must differ somewhere.
  if (!differs) throw new Error("f32 mode gave the f64 result bit for bit: it does not round");
});
