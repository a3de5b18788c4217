// Valid-call properties: random shapes and option combinations of every public function, checked
// against the f64 reference with the tolerance rule of tests/_util.ts (error ≤ 2 × naive f32 error
// + 1e-6; gradients 3 × + 2e-6·max(1, G), as tests/backward_test.ts), and against the invariants
// the README states: lse finite or −∞, fully masked rows O = 0 and lse = −∞, repeated calls and
// pool calls bitwise equal to the synchronous call, stats equal to the IO model's closed form.

import fc from "fast-check";
import {
  type AttentionOutput,
  type AttentionPool,
  createKvCache,
  type Dtype,
  flashAttention,
  flashAttentionBackward,
  type FlashAttentionBackwardOptions,
  type FlashAttentionOptions,
  flashAttentionWithKvCache,
  type HalfAttentionOutput,
  type InputTensor,
  type KvCache,
  type Tensor,
} from "../mod.ts";
import { flashAttentionBackwardIo, flashAttentionIo, standardAttentionIo } from "../src/io.ts";
import { referenceAttention } from "../src/reference.ts";
import { causalArb, softcapArb, windowArb } from "../tests/_cases.ts";
import { naiveAttentionBackward } from "../tests/_naive_backward.ts";
import {
  assertBitwiseEqual,
  assertFlashTolerance,
  assertSameOutput,
  maxAbsError,
  naiveAttentionF32,
  randomTensor,
  rng,
} from "../tests/_util.ts";
import { buildForward, EDGE_VALUES, type ForwardCase, forwardCaseArb, fromHalfBits, stored, widen } from "./_gen.ts";
import type { FuzzProperty } from "./_runner.ts";

type Output = AttentionOutput | HalfAttentionOutput;

const SEMANTIC = [
  "scale",
  "causal",
  "windowSize",
  "softcap",
  "alibiSlopes",
  "mask",
  "seqLensK",
  "cuSeqlensQ",
  "cuSeqlensK",
  "layout",
] as const;

/** The options that change what is computed (those the reference and the backward take). */
function semanticOf(options: FlashAttentionOptions): FlashAttentionBackwardOptions {
  const out: Record<string, unknown> = {};
  for (const key of SEMANTIC) if (options[key] !== undefined) out[key] = options[key];
  return out as FlashAttentionBackwardOptions;
}

const finiteWhereReference = (xs: ArrayLike<number>, ref: ArrayLike<number>) =>
  Array.from(ref).every((r, i) => !Number.isFinite(r) || Number.isFinite(xs[i]));

/** The f32 bits of a number. */
const bitsOf32 = (x: number) => new Uint32Array(new Float32Array([x]).buffer)[0];

/** Throws unless each 16-bit element of `half` is the f32 value of `full` rounded to nearest (even on ties). */
function assertRounded(what: string, half: Uint16Array, full: Float32Array, dtype: "f16" | "bf16"): void {
  for (let i = 0; i < full.length; i++) {
    const x = full[i];
    const h = fromHalfBits(half[i], dtype);
    if (Number.isNaN(x) || Number.isNaN(h)) {
      if (Number.isNaN(x) !== Number.isNaN(h)) throw new Error(`${what}: element ${i} is ${h} for ${x}`);
      continue;
    }
    if (dtype === "bf16") {
      const bits = bitsOf32(x);
      const nearest = ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
      if (half[i] !== nearest) {
        throw new Error(`${what}: element ${i} is bf16 ${half[i]} for ${x}, expected ${nearest}`);
      }
      continue;
    }
    const a = Math.abs(x);
    if (a >= 65520) {
      if (h !== (x > 0 ? Infinity : -Infinity)) throw new Error(`${what}: element ${i} is ${h} for ${x} (overflow)`);
      continue;
    }
    // Half an ulp of f16 at x: 2^(e − 11) for normal x, 2^−25 in the subnormal range.
    const halfUlp = a < 2 ** -14 ? 2 ** -25 : 2 ** (Math.floor(Math.log2(a)) - 11);
    if (!(Math.abs(h - x) <= halfUlp) || (x !== 0 && h !== 0 && Math.sign(h) !== Math.sign(x))) {
      throw new Error(`${what}: element ${i} is f16 ${h} for ${x}: not the nearest`);
    }
  }
}

/** For each lse element, the offset of its O row and the row's stride between elements. */
function rowsOf(o: { shape: readonly number[] }, layout: string, varlen: boolean): (i: number) => number {
  if (varlen) {
    const [T, H, dv] = o.shape;
    return (i) => {
      const [h, t] = [Math.floor(i / T), i % T];
      return (t * H + h) * dv;
    };
  }
  const [B, a, b, dv] = o.shape;
  const [H, Nq] = layout === "bhsd" ? [a, b] : [b, a];
  return (i) => {
    const [bb, h, n] = [Math.floor(i / (H * Nq)), Math.floor(i / Nq) % H, i % Nq];
    return (layout === "bhsd" ? (bb * H + h) * Nq + n : (bb * Nq + n) * H + h) * dv + 0 * B;
  };
}

/** O and lse of a forward output against the reference, the naive f32 baseline and the invariants. */
function checkAgainstReference(
  what: string,
  out: AttentionOutput,
  f32: [Tensor, Tensor, Tensor],
  options: FlashAttentionOptions,
  edges: boolean,
  huge = false,
): void {
  const semantic = semanticOf(options);
  const ref = referenceAttention(f32[0], f32[1], f32[2], { ...semantic, returnLse: true });
  const naive = naiveAttentionF32(f32[0], f32[1], f32[2], semantic);
  // Values near ±f32 max may overflow in f32 arithmetic where f64 does not, and scale every error
  // (the kernels' exp is good to 2.5e-7 relative, the naive baseline's Math.exp to half an ulp) far
  // beyond what the rule's factor 2 and 1e-6 floor are for: with those, only the invariants apply.
  const comparable = huge === false && finiteWhereReference(naive.data, ref.data) &&
    finiteWhereReference(naive.lse, ref.lse.data);
  if (comparable) {
    assertFlashTolerance(`${what}: O`, out.data, ref.data, naive.data);
    if (out.lse) assertFlashTolerance(`${what}: lse`, out.lse.data, ref.lse.data, naive.lse);
  } else if (!edges) {
    throw new Error(`${what}: the naive f32 baseline overflows on inputs without edge values`);
  }
  if (!out.lse) return;
  // Which rows see no key. With values near ±f32 max a score can overflow to −∞ in f32 (the kernels'
  // and the naive baseline's arithmetic) but not in f64: a row whose every score does counts as
  // fully masked, as in the naive f32 baseline, so that baseline says which rows those are.
  const empty = comparable ? ref.lse.data : naive.lse;
  const varlen = options.cuSeqlensQ !== undefined;
  const rowAt = rowsOf(out, options.layout ?? "bshd", varlen);
  const dv = out.shape[out.shape.length - 1];
  for (let i = 0; i < out.lse.data.length; i++) {
    const lse = out.lse.data[i];
    const masked = empty[i] === -Infinity;
    if (!(Number.isFinite(lse) || lse === -Infinity || (edges && Number.isNaN(lse)))) {
      throw new Error(`${what}: lse[${i}] is ${lse}: neither finite nor −∞`);
    }
    if (masked !== (lse === -Infinity)) {
      throw new Error(
        `${what}: lse[${i}] is ${lse}, the ${comparable ? "reference" : "naive f32 baseline"}'s is ${empty[i]}`,
      );
    }
    if (masked) {
      const at = rowAt(i);
      for (let c = 0; c < dv; c++) {
        if (out.data[at + c] !== 0) {
          throw new Error(`${what}: fully masked row ${i} has O[${c}] = ${out.data[at + c]}, not 0`);
        }
      }
    }
  }
}

/** elementBytes of flashAttentionIo for the stored dtypes. */
const bytes = (d: Dtype) => (d === "f32" ? 4 : 2) as 2 | 4;

/** The stats of a call equal flashAttentionIo's closed form (no mask: the model assumes none blanks a tile). */
function checkStats(what: string, c: ForwardCase, out: Output, options: FlashAttentionOptions): void {
  const stats = out.stats!;
  const H = c.Hkv * c.group;
  const shape = c.varlen
    ? {
      B: c.varlen.length,
      H,
      Hkv: c.Hkv,
      Nq: (options.cuSeqlensQ as Int32Array).at(-1)!,
      Nk: (options.cuSeqlensK as Int32Array).at(-1)!,
      d: c.d,
      dv: c.dv,
    }
    : { B: c.B, H, Hkv: c.Hkv, Nq: c.Nq, Nk: c.Nk, d: c.d, dv: c.dv };
  const io = flashAttentionIo(shape, {
    causal: options.causal,
    windowSize: options.windowSize,
    sramBytes: options.sramBytes,
    returnLse: options.returnLse,
    alibi: options.alibiSlopes !== undefined,
    seqLensK: options.seqLensK,
    cuSeqlensQ: options.cuSeqlensQ,
    cuSeqlensK: options.cuSeqlensK,
    elementBytes: { q: bytes(c.dtypes[0]), k: bytes(c.dtypes[1]), v: bytes(c.dtypes[2]), o: bytes(c.outDtype) },
  });
  const { flops: _flops, ...measured } = stats;
  const a = JSON.stringify({ ...measured, sramPeakBytesPerWorker: undefined });
  const b = JSON.stringify(io);
  if (a !== b) throw new Error(`${what}: stats differ from flashAttentionIo\n stats ${a}\n model ${b}`);
}

/** One forward case through the synchronous function, checked. Returns the output and its inputs. */
function forwardChecked(c: ForwardCase) {
  const { q, k, v, f32, options } = buildForward(c);
  const out = flashAttention(q, k, v, options) as Output;
  assertSameOutput("a repeated call", out as AttentionOutput, flashAttention(q, k, v, options) as AttentionOutput);
  // The f32 result on the widened values: the same bits whatever the storage of the inputs.
  const f32Options = { ...options, outDtype: undefined, stats: false, returnLse: true };
  const full = flashAttention(f32[0], f32[1], f32[2], f32Options);
  if (c.outDtype === "f32") {
    assertBitwiseEqual("O vs the f32 call", out.data as Float32Array, full.data);
  } else {
    assertRounded("O rounded to 16 bits", out.data as Uint16Array, full.data, c.outDtype);
  }
  if (out.lse) assertBitwiseEqual("lse vs the f32 call", out.lse.data, full.lse!.data);
  const huge = c.edges.some(([, , value]) => Math.abs(EDGE_VALUES[value]) > 1);
  checkAgainstReference("forward", full, f32, options, c.edges.length > 0, huge);
  if (c.stats && options.mask === undefined) checkStats("forward", c, out, options);
  return { q, k, v, options, out };
}

// ── KV cache ─────────────────────────────────────────────────────────────────────────────

interface KvCase {
  B: number;
  Hkv: number;
  group: number;
  maxLen: number;
  Nq: number;
  d: number;
  dv: number;
  /** Each entry's fill, as a fraction of the room left after the new rows. */
  fill: number[];
  Nnew: number;
  dtype: Dtype;
  causal: boolean | "bottom-right" | "top-left";
  window: [number, number] | null;
  softcap: number;
  alibi: boolean;
  numSplits: number;
  returnLse: boolean;
  seed: number;
}

const kvCaseArb: fc.Arbitrary<KvCase> = fc.record({
  B: fc.integer({ min: 1, max: 3 }),
  Hkv: fc.integer({ min: 1, max: 2 }),
  group: fc.integer({ min: 1, max: 3 }),
  maxLen: fc.integer({ min: 1, max: 70 }),
  Nq: fc.integer({ min: 1, max: 4 }),
  d: fc.integer({ min: 1, max: 20 }),
  dv: fc.integer({ min: 1, max: 20 }),
  fill: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 3, maxLength: 3 }),
  Nnew: fc.integer({ min: 0, max: 3 }),
  dtype: fc.constantFrom<Dtype>("f32", "f16", "bf16"),
  causal: causalArb,
  window: fc.option(windowArb(20), { nil: null }),
  softcap: fc.oneof(fc.constant(0), softcapArb),
  alibi: fc.boolean(),
  numSplits: fc.integer({ min: 0, max: 5 }),
  returnLse: fc.boolean(),
  seed: fc.integer(),
});

function buildKv(c: KvCase) {
  const random = rng(c.seed);
  const H = c.Hkv * c.group;
  const Nnew = Math.min(c.Nnew, c.maxLen);
  const lens = Int32Array.from(
    { length: c.B },
    (_, b) => Math.min(c.maxLen - Nnew, Math.floor(c.fill[b] * (c.maxLen - Nnew + 1))),
  );
  const half = (t: Tensor) => widen(stored(t, c.dtype, "plain"));
  // The caches and new rows hold values of the cache's dtype, so appending converts nothing.
  const kCache = half(randomTensor(random, [c.B, c.maxLen, c.Hkv, c.d]));
  const vCache = half(randomTensor(random, [c.B, c.maxLen, c.Hkv, c.dv]));
  const kNew = half(randomTensor(random, [c.B, Nnew, c.Hkv, c.d]));
  const vNew = half(randomTensor(random, [c.B, Nnew, c.Hkv, c.dv]));
  const q = randomTensor(random, [c.B, c.Nq, H, c.d]);
  const options: FlashAttentionOptions & { numSplits: number } = { causal: c.causal, numSplits: c.numSplits };
  if (c.window) options.windowSize = c.window;
  if (c.softcap) options.softcap = c.softcap;
  if (c.alibi) options.alibiSlopes = Float32Array.from({ length: H }, () => random());
  if (c.returnLse) options.returnLse = true;
  // The caches after the append: entry b's new rows at lens[b].
  const after = (cache: Tensor, rows: Tensor, D: number) => {
    const data = Float32Array.from(cache.data);
    const row = c.Hkv * D;
    for (let b = 0; b < c.B; b++) {
      data.set(rows.data.subarray(b * Nnew * row, (b + 1) * Nnew * row), (b * c.maxLen + lens[b]) * row);
    }
    return { data, shape: cache.shape };
  };
  return {
    q,
    kCache,
    vCache,
    kNew,
    vNew,
    lens,
    Nnew,
    options,
    kAfter: after(kCache, kNew, c.d),
    vAfter: after(vCache, vNew, c.dv),
  };
}

const asDtype = (t: Tensor, dtype: Dtype): InputTensor => stored(t, dtype, "plain");

function kvChecked(c: KvCase) {
  const x = buildKv(c);
  const kC = asDtype(x.kCache, c.dtype);
  const vC = asDtype(x.vCache, c.dtype);
  const appendOptions = x.Nnew > 0 ? { kNew: x.kNew, vNew: x.vNew } : {};
  const o = flashAttentionWithKvCache(x.q, kC, vC, { ...x.options, cacheSeqLens: x.lens, ...appendOptions });
  assertBitwiseEqual("kCache after the append", widen(kC).data, x.kAfter.data);
  assertBitwiseEqual("vCache after the append", widen(vC).data, x.vAfter.data);
  const seqLensK = x.lens.map((n) => n + x.Nnew);
  const { numSplits: _n, returnLse: _r, ...semantic } = x.options;
  checkAgainstReference(
    "KV cache",
    { ...o, lse: o.lse ?? flashAttention(x.q, x.kAfter, x.vAfter, { ...semantic, seqLensK, returnLse: true }).lse },
    [x.q, x.kAfter, x.vAfter],
    { ...semantic, seqLensK },
    false,
  );
  // The same attention on a cache that lives in WebAssembly memory: the same bits.
  const cache = residentCache(createKvCache, c, x, seqLensK);
  try {
    assertSameOutput("a resident cache vs caller-owned caches", flashAttentionWithKvCache(x.q, cache, x.options), o);
  } finally {
    cache.free();
  }
  return { x, o, kC, vC, seqLensK };
}

/** A cache from `create` holding the first seqLensK[b] rows of entry b of the caches after the append. */
function residentCache(
  create: typeof createKvCache,
  c: KvCase,
  x: ReturnType<typeof buildKv>,
  seqLensK: Int32Array,
): KvCache {
  const config = { batch: c.B, maxLen: c.maxLen, kvHeads: c.Hkv, headDim: c.d, valueDim: c.dv, dtype: c.dtype };
  const cache = create(config);
  const rows = Math.max(...seqLensK);
  if (rows > 0) {
    const take = (t: Tensor, D: number) => {
      const data = new Float32Array(c.B * rows * c.Hkv * D);
      for (let b = 0; b < c.B; b++) {
        data.set(t.data.subarray(b * c.maxLen * c.Hkv * D, (b * c.maxLen + rows) * c.Hkv * D), b * rows * c.Hkv * D);
      }
      return asDtype({ data, shape: [c.B, rows, c.Hkv, D] }, c.dtype);
    };
    cache.append(take(x.kAfter, c.d), take(x.vAfter, c.dv), seqLensK);
  }
  return cache;
}

// ── Backward ─────────────────────────────────────────────────────────────────────────────

const smallForwardArb = forwardCaseArb.map((c) => ({
  ...c,
  Nq: Math.min(c.Nq, 12),
  Nk: c.sameLength ? Math.min(c.Nq, 12) : Math.min(c.Nk, 14),
  d: Math.min(c.d, 10),
  dv: Math.min(c.dv, 10),
  varlen: c.varlen?.map(([a, b]) => [Math.min(a, 8), Math.min(b, 8)] as [number, number]) ?? null,
  outDtype: "f32" as const,
  returnLse: true,
  edges: [],
})).filter((c) => c.sameLength || c.Nq !== c.Nk);

const GRADIENTS = ["dq", "dk", "dv"] as const;

function backwardChecked(c: ForwardCase) {
  // The oracles take f32 values: the widened ones. 16-bit q, k, v must give the same bits as those.
  const built = buildForward(c);
  const [q, k, v] = built.f32;
  const options = built.options;
  const semantic = semanticOf(options);
  const o = flashAttention(q, k, v, { ...semantic, returnLse: true } as FlashAttentionOptions & { returnLse: true });
  const dO = randomTensor(rng(c.seed ^ 0x5eed), [...o.shape]);
  const backwardOptions = { ...semantic, stats: true, ...(c.sramBytes ? { sramBytes: c.sramBytes } : {}) };
  const grads = flashAttentionBackward(q, k, v, o, dO, backwardOptions);
  const again = flashAttentionBackward(q, k, v, o, dO, backwardOptions);
  for (const name of GRADIENTS) assertBitwiseEqual(`a repeated backward: ${name}`, again[name].data, grads[name].data);
  if (c.dtypes.some((dtype) => dtype !== "f32")) {
    const half = flashAttentionBackward(built.q, built.k, built.v, o, dO, { ...semantic });
    for (const name of GRADIENTS) assertBitwiseEqual(`16-bit inputs: ${name}`, half[name].data, grads[name].data);
  }
  const exact = naiveAttentionBackward(q, k, v, dO, semantic, "f64");
  const f32 = naiveAttentionBackward(q, k, v, dO, semantic, "f32");
  const magnitude = Math.max(1, ...GRADIENTS.map((name) => Math.max(0, ...Array.from(exact[name], Math.abs))));
  for (const name of GRADIENTS) {
    const error = maxAbsError(grads[name].data, exact[name]);
    const baseline = maxAbsError(f32[name], exact[name]);
    const bound = 3 * baseline + 2e-6 * magnitude;
    if (!(error <= bound)) {
      throw new Error(`backward: ${name} error ${error} exceeds 3 × ${baseline} + floor = ${bound}`);
    }
  }
  if (options.mask === undefined) {
    const H = c.Hkv * c.group;
    const cu = (name: "cuSeqlensQ" | "cuSeqlensK") => (options[name] as Int32Array).at(-1)!;
    const shape = c.varlen
      ? { B: c.varlen.length, H, Hkv: c.Hkv, Nq: cu("cuSeqlensQ"), Nk: cu("cuSeqlensK"), d: c.d, dv: c.dv }
      : { B: c.B, H, Hkv: c.Hkv, Nq: c.Nq, Nk: c.Nk, d: c.d, dv: c.dv };
    const io = flashAttentionBackwardIo(shape, {
      causal: options.causal,
      windowSize: options.windowSize,
      sramBytes: backwardOptions.sramBytes,
      alibi: options.alibiSlopes !== undefined,
      seqLensK: options.seqLensK,
      cuSeqlensQ: options.cuSeqlensQ,
      cuSeqlensK: options.cuSeqlensK,
    });
    const { flops: _flops, ...measured } = grads.stats!;
    const [a, b] = [JSON.stringify(measured), JSON.stringify(io)];
    if (a !== b) throw new Error(`backward: stats differ from flashAttentionBackwardIo\n stats ${a}\n model ${b}`);
  }
  return { q, k, v, o, dO, options: backwardOptions, grads };
}

// ── IO model ─────────────────────────────────────────────────────────────────────────────

const ioArb = fc.record({
  B: fc.integer({ min: 0, max: 64 }),
  Hkv: fc.integer({ min: 1, max: 8 }),
  group: fc.integer({ min: 1, max: 4 }),
  Nq: fc.integer({ min: 0, max: 3000 }),
  Nk: fc.integer({ min: 0, max: 3000 }),
  d: fc.integer({ min: 1, max: 256 }),
  dv: fc.integer({ min: 1, max: 256 }),
  causal: causalArb,
  window: fc.option(windowArb(2000), { nil: undefined }),
  sramBytes: fc.option(fc.integer({ min: 1 << 16, max: 8 << 20 }), { nil: undefined }),
  returnLse: fc.boolean(),
  alibi: fc.boolean(),
  maskElementBytes: fc.constantFrom(0 as const, 1 as const, 4 as const),
});

type IoCase = typeof ioArb extends fc.Arbitrary<infer T> ? T : never;

function ioChecked(c: IoCase) {
  const shape = { B: c.B, H: c.Hkv * c.group, Hkv: c.Hkv, Nq: c.Nq, Nk: c.Nk, d: c.d, dv: c.dv };
  const { B: _b, Hkv: _h, group: _g, Nq: _q, Nk: _k, d: _d, dv: _v, window, ...rest } = c;
  const options = { ...rest, windowSize: window };
  const { returnLse: _r, ...backwardOptions } = options;
  // An arena too small for the head dims is a documented RangeError naming sramBytes.
  const orTooSmall = <T>(f: () => T): T | undefined => {
    try {
      return f();
    } catch (error) {
      if (error instanceof RangeError && error.message.includes("sramBytes")) return undefined;
      throw error;
    }
  };
  const all = [
    [
      "standardAttentionIo",
      standardAttentionIo(shape, { returnLse: c.returnLse, maskElementBytes: c.maskElementBytes }),
    ],
    ["flashAttentionIo", orTooSmall(() => flashAttentionIo(shape, options))],
    ["flashAttentionBackwardIo", orTooSmall(() => flashAttentionBackwardIo(shape, backwardOptions))],
  ] as const;
  for (const [name, io] of all) {
    if (io === undefined) continue;
    const total = [...Object.values(io.read), ...Object.values(io.written)].reduce((a, b) => a + b, 0);
    if (!Number.isSafeInteger(total) || total !== io.totalBytes) {
      throw new Error(`${name}: totalBytes ${io.totalBytes}, the sum of its counts is ${total}`);
    }
  }
  const full = orTooSmall(() => flashAttentionIo(shape, { sramBytes: c.sramBytes }));
  const causal = orTooSmall(() => flashAttentionIo(shape, { sramBytes: c.sramBytes, causal: true }));
  if (full && causal && causal.totalBytes > full.totalBytes) {
    throw new Error(`causal moves more than full: ${causal.totalBytes}`);
  }
}

// ── Handler ──────────────────────────────────────────────────────────────────────────────

/** The edge handler (examples/edge/handler.ts), imported on first use. */
export type Handler = (request: Request) => Promise<Response>;

async function handlerChecked(handler: Handler, c: ForwardCase, binary: boolean): Promise<void> {
  const { q, k, v, options } = buildForward({ ...c, dtypes: ["f32", "f32", "f32"], backing: "plain", edges: [] });
  const { causal, scale, windowSize, softcap, alibiSlopes, seqLensK, layout } = options;
  const json: Record<string, unknown> = { causal, scale, windowSize, softcap, layout };
  if (alibiSlopes) json.alibiSlopes = Array.from(alibiSlopes);
  if (seqLensK) json.seqLensK = Array.from(seqLensK);
  const expected = flashAttention(
    q,
    k,
    v,
    { ...semanticOf(options), mask: undefined, returnLse: true } as FlashAttentionOptions & {
      returnLse: true;
    },
  );
  const tensor = (t: InputTensor) => ({ shape: t.shape, data: Array.from(t.data as Float32Array) });
  const { encodeBinaryRequest, decodeBinaryAnswer } = await import("../examples/edge/handler.ts");
  const request = binary
    ? new Request("http://fuzz/", {
      method: "POST",
      headers: { "content-type": "application/x-flash-attention", accept: "application/x-flash-attention" },
      body: encodeBinaryRequest(q as Tensor, k as Tensor, v as Tensor, json, true),
    })
    : new Request("http://fuzz/", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ q: tensor(q), k: tensor(k), v: tensor(v), options: json, returnLse: true }),
    });
  const response = await handler(request);
  if (response.status !== 200) throw new Error(`handler: status ${response.status}: ${await response.text()}`);
  const answer = binary
    ? decodeBinaryAnswer(new Uint8Array(await response.arrayBuffer()))
    : await response.json() as { data: number[]; lse: { data: (number | null)[] } };
  assertBitwiseEqual("handler O", Float32Array.from(answer.data), expected.data);
  const lse = Float32Array.from(answer.lse!.data, (x) => x ?? -Infinity);
  assertBitwiseEqual("handler lse", lse, expected.lse.data);
}

// ── The properties ───────────────────────────────────────────────────────────────────────

/** The valid-call properties; the pool's and the handler's use the given instances. */
export function validProperties(pool: AttentionPool, handler: Handler): FuzzProperty[] {
  return [
    {
      name: "flashAttention: valid calls match the f64 reference, the invariants and flashAttentionIo",
      property: fc.property(forwardCaseArb, (c) => void forwardChecked(c)),
      weight: 3,
    },
    {
      name: "flashAttentionWithKvCache: caller-owned and resident caches match the reference and each other",
      property: fc.property(kvCaseArb, (c) => void kvChecked(c)),
      weight: 2,
    },
    {
      name: "flashAttentionBackward: gradients match the f64 naive backward, stats flashAttentionBackwardIo",
      property: fc.property(smallForwardArb, (c) => void backwardChecked(c)),
      weight: 2,
    },
    {
      name: "IO model: standardAttentionIo, flashAttentionIo and flashAttentionBackwardIo give exact sums",
      property: fc.property(ioArb, (c) => ioChecked(c)),
    },
    {
      name: "pool: flashAttention, KV cache and backward give the synchronous call's bits",
      property: fc.asyncProperty(forwardCaseArb, kvCaseArb, smallForwardArb, async (f, kv, bw) => {
        const forward = forwardChecked(f);
        assertSameOutput(
          "pool forward",
          await pool.flashAttention(forward.q, forward.k, forward.v, forward.options) as AttentionOutput,
          forward.out as AttentionOutput,
        );
        const splits = { ...kv, numSplits: Math.max(1, kv.numSplits) };
        const kvResult = kvChecked(splits);
        const { x, o } = kvResult;
        const [kC, vC] = [asDtype(x.kCache, kv.dtype), asDtype(x.vCache, kv.dtype)];
        const appendOptions = x.Nnew > 0 ? { kNew: x.kNew, vNew: x.vNew } : {};
        const pooled = await pool.flashAttentionWithKvCache(x.q, kC, vC, {
          ...x.options,
          numSplits: splits.numSplits,
          cacheSeqLens: x.lens,
          ...appendOptions,
        });
        assertSameOutput("pool KV cache", pooled, o);
        const cache = residentCache(pool.createKvCache.bind(pool), splits, x, kvResult.seqLensK);
        try {
          assertSameOutput("pool resident KV cache", await pool.flashAttentionWithKvCache(x.q, cache, x.options), o);
        } finally {
          cache.free();
        }
        const b = backwardChecked(bw);
        const grads = await pool.flashAttentionBackward(b.q, b.k, b.v, b.o, b.dO, b.options);
        for (const name of GRADIENTS) assertBitwiseEqual(`pool backward ${name}`, grads[name].data, b.grads[name].data);
      }),
      weight: 2,
    },
    {
      name: "edge handler: valid JSON and binary requests answer flashAttention's bits",
      property: fc.asyncProperty(
        forwardCaseArb.filter((c) => c.varlen === null),
        fc.boolean(),
        (c, binary) => handlerChecked(handler, c, binary),
      ),
    },
  ];
}
