// flashAttentionWithKvCache: appends kNew/vNew into the caches in place at cacheSeqLens, then
// attends to the first cacheSeqLens[b] + Nnew keys of each entry. The oracle is the f64 reference
// on caches whose expected contents the tests build themselves (original rows, then the new rows
// at cacheSeqLens), with seqLensK = cacheSeqLens + Nnew. Tolerance: the flash-attention rule of
// tests/_util.ts (error ≤ 2 × naive f32 error + 1e-6) unless a test says otherwise. Cache slots
// past the valid lengths hold NaN, so any read of a key that does not exist shows in the output.

import fc from "fast-check";
import { chooseSplits, flashAttentionWithKvCache, type KvCacheOptions, type Mask, type Tensor } from "../mod.ts";
import { referenceAttention, type ReferenceOptions } from "../src/reference.ts";
import { readCounters } from "../src/_stats.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import {
  assertBitwiseEqual,
  assertFlashTolerance,
  maxAbsError,
  naiveAttentionF32,
  randomTensor,
  rng,
  test,
} from "./_util.ts";

const kernels = loadKernels();

/** Bytes written to split-KV partials since the last resetCounters(). */
function partialBytesWritten(): number {
  return readCounters(kernels).written.partial;
}

type Causal = boolean | "bottom-right" | "top-left";

/** A cache [B, maxLen, Hkv, D] with random rows below `lengths[b]` and NaN above. */
function makeCache(random: () => number, shape: number[], lengths: Int32Array): Tensor {
  const t = randomTensor(random, shape);
  const [B, maxLen, Hkv, D] = shape;
  for (let b = 0; b < B; b++) t.data.fill(NaN, (b * maxLen + lengths[b]) * Hkv * D, (b + 1) * maxLen * Hkv * D);
  return t;
}

/** The cache after appending: a copy of `cache` with `rows` [B, Nnew, Hkv, D] at lengths[b]. */
function appended(cache: Tensor, rows: Tensor | undefined, lengths: Int32Array): Tensor {
  const data = cache.data.slice();
  if (rows === undefined) return { data, shape: cache.shape };
  const [B, maxLen, Hkv, D] = cache.shape;
  const Nnew = rows.shape[1];
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < Nnew; t++) {
      for (let x = 0; x < Hkv * D; x++) {
        data[(b * maxLen + lengths[b] + t) * Hkv * D + x] = rows.data[(b * Nnew + t) * Hkv * D + x];
      }
    }
  }
  return { data, shape: cache.shape };
}

/** Checks one call: caches written exactly as expected, O and lse against the reference. */
function checkCall(
  what: string,
  q: Tensor,
  kCache: Tensor,
  vCache: Tensor,
  options: KvCacheOptions,
): { data: Float32Array; lse: Float32Array } {
  const B = q.shape[0];
  const lengths = options.cacheSeqLens ?? new Int32Array(B).fill(kCache.shape[1]);
  const lengthsBefore = lengths.slice();
  const kAfter = appended(kCache, options.kNew as Tensor | undefined, lengths);
  const vAfter = appended(vCache, options.vNew as Tensor | undefined, lengths);
  const o = flashAttentionWithKvCache(q, kCache, vCache, { ...options, returnLse: true });
  assertBitwiseEqual(`kCache after ${what}`, kCache.data, kAfter.data);
  assertBitwiseEqual(`vCache after ${what}`, vCache.data, vAfter.data);
  if (options.cacheSeqLens && options.cacheSeqLens.join() !== lengthsBefore.join()) {
    throw new Error(`cacheSeqLens changed: ${lengthsBefore} → ${options.cacheSeqLens}`);
  }
  const Nnew = options.kNew?.shape[1] ?? 0;
  const semantic: ReferenceOptions = {
    seqLensK: lengths.map((n) => n + Nnew),
    scale: options.scale,
    causal: options.causal,
    windowSize: options.windowSize,
    softcap: options.softcap,
    alibiSlopes: options.alibiSlopes,
    mask: options.mask,
  };
  const ref = referenceAttention(q, kAfter, vAfter, { ...semantic, returnLse: true });
  const naive = naiveAttentionF32(q, kAfter, vAfter, semantic);
  // The valid rows are finite: a NaN means a slot past cacheSeqLens + Nnew was read. Checked
  // separately because the tolerance rule is vacuous when reference and baseline are both NaN.
  for (const a of [o.data, o.lse!.data, ref.data, ref.lse.data, naive.data, naive.lse]) {
    if (a.some(Number.isNaN)) throw new Error(`NaN in a result of ${what}`);
  }
  assertFlashTolerance(`O of ${what}`, o.data, ref.data, naive.data);
  assertFlashTolerance(`lse of ${what}`, o.lse!.data, ref.lse.data, naive.lse);
  if (o.shape.join() !== [B, q.shape[1], q.shape[2], vCache.shape[3]].join()) throw new Error(`shape ${o.shape}`);
  return { data: o.data, lse: o.lse!.data };
}

/** Head dims 1..47 that are never a multiple of 4. */
const oddDim = fc.tuple(fc.integer({ min: 0, max: 11 }), fc.integer({ min: 1, max: 3 })).map(([a, r]) => 4 * a + r);
const side = fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: 60 }));

test("flashAttentionWithKvCache() appends in place and matches the reference over the grown caches, with every option", () => {
  const arb = fc.record({
    B: fc.integer({ min: 1, max: 3 }),
    Hkv: fc.integer({ min: 1, max: 3 }),
    group: fc.integer({ min: 1, max: 4 }),
    Nq: fc.integer({ min: 1, max: 6 }),
    Nnew: fc.integer({ min: 0, max: 6 }),
    extra: fc.integer({ min: 0, max: 110 }), // maxLen = Nnew + extra, at least 1
    d: oddDim,
    dv: oddDim,
    explicitLengths: fc.boolean(),
    causal: fc.constantFrom<Causal>(false, true, "bottom-right", "top-left"),
    window: fc.option(fc.tuple(side, side), { nil: null }),
    alibi: fc.constantFrom("none", "H", "BH"),
    softcap: fc.oneof(fc.constant(0), fc.double({ min: 0.1, max: 50, noNaN: true })),
    mask: fc.option(
      fc.record({
        kind: fc.constantFrom("f32", "u8"),
        rank: fc.integer({ min: 1, max: 4 }),
        keep: fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }),
        blocked: fc.constantFrom(0, 0.3, 0.8),
      }),
      { nil: null },
    ),
    numSplits: fc.constantFrom(undefined, 0, 1, 2, 4, 7),
    arena: fc.option(fc.double({ min: 0, max: 1, noNaN: true }), { nil: null }),
    seed: fc.integer(),
  });
  fc.assert(
    fc.property(arb, (s) => {
      const random = rng(s.seed);
      const H = s.Hkv * s.group;
      const maxLen = Math.max(1, s.Nnew + s.extra);
      // Without explicit lengths every cache is full, which leaves no room to append.
      const explicit = s.explicitLengths || s.Nnew > 0;
      const lengths = explicit
        ? Int32Array.from({ length: s.B }, () => Math.floor(random() * (maxLen - s.Nnew + 1)))
        : new Int32Array(s.B).fill(maxLen);
      const q = randomTensor(random, [s.B, s.Nq, H, s.d]);
      const kCache = makeCache(random, [s.B, maxLen, s.Hkv, s.d], lengths);
      const vCache = makeCache(random, [s.B, maxLen, s.Hkv, s.dv], lengths);
      const options: KvCacheOptions = { causal: s.causal, numSplits: s.numSplits };
      if (explicit) options.cacheSeqLens = lengths;
      if (s.Nnew > 0) {
        options.kNew = randomTensor(random, [s.B, s.Nnew, s.Hkv, s.d]);
        options.vNew = randomTensor(random, [s.B, s.Nnew, s.Hkv, s.dv]);
      }
      if (s.window) options.windowSize = s.window;
      if (s.alibi !== "none") {
        options.alibiSlopes = Float32Array.from({ length: s.alibi === "H" ? H : s.B * H }, () => random());
      }
      if (s.softcap !== 0) options.softcap = s.softcap;
      if (s.mask) {
        const full = [s.B, H, s.Nq, maxLen];
        const shape = full.slice(4 - s.mask.rank).map((n, i) => (s.mask!.keep[4 - s.mask!.rank + i] ? n : 1));
        const size = shape.reduce((a, b) => a * b, 1);
        const blocked = () => random() < s.mask!.blocked;
        options.mask = s.mask.kind === "f32"
          ? { data: Float32Array.from({ length: size }, () => (blocked() ? -Infinity : 4 * random() - 2)), shape }
          : { data: Uint8Array.from({ length: size }, () => (blocked() ? 0 : 1)), shape };
      }
      if (s.arena !== null) {
        const least = kernels.arenaBytes(8, 4, s.d, s.dv, s.mask !== null);
        options.sramBytes = Math.floor(least + s.arena ** 2 * (256 * 1024 - least));
      }
      checkCall(JSON.stringify(s), q, kCache, vCache, options);
    }),
    { seed: 0x5eed + 100, numRuns: 40 },
  );
});

test("flashAttentionWithKvCache() writes the new rows exactly at cacheSeqLens and nothing else", () => {
  const random = rng(301);
  const [B, maxLen, Hkv, d, dv, Nnew] = [3, 20, 2, 5, 3, 4];
  const lengths = new Int32Array([0, 9, 16]); // the last one fills the cache to the end
  const kCache = makeCache(random, [B, maxLen, Hkv, d], lengths);
  const vCache = makeCache(random, [B, maxLen, Hkv, dv], lengths);
  const kBefore = kCache.data.slice();
  const vBefore = vCache.data.slice();
  const kNew = randomTensor(random, [B, Nnew, Hkv, d]);
  const vNew = randomTensor(random, [B, Nnew, Hkv, dv]);
  flashAttentionWithKvCache(randomTensor(random, [B, 1, 4, d]), kCache, vCache, { cacheSeqLens: lengths, kNew, vNew });
  // Element by element: new row t of entry b at position lengths[b] + t, the old bits elsewhere.
  for (const [cache, before, rows, D] of [[kCache, kBefore, kNew, d], [vCache, vBefore, vNew, dv]] as const) {
    for (let b = 0; b < B; b++) {
      for (let n = 0; n < maxLen; n++) {
        for (let x = 0; x < Hkv * D; x++) {
          const at = (b * maxLen + n) * Hkv * D + x;
          const t = n - lengths[b];
          const expected = t >= 0 && t < Nnew ? rows.data[(b * Nnew + t) * Hkv * D + x] : before[at];
          if (!Object.is(cache.data[at], expected)) throw new Error(`entry ${b}, position ${n}: ${cache.data[at]}`);
        }
      }
    }
  }
});

test("flashAttentionWithKvCache() without kNew attends to the first cacheSeqLens keys, or to the whole cache by default", () => {
  const random = rng(302);
  const [B, maxLen, H, Hkv, d, dv] = [2, 33, 4, 2, 9, 6];
  const q = randomTensor(random, [B, 3, H, d]);
  const full = new Int32Array([maxLen, maxLen]);
  const kCache = makeCache(random, [B, maxLen, Hkv, d], full);
  const vCache = makeCache(random, [B, maxLen, Hkv, dv], full);
  const kBefore = kCache.data.slice();
  checkCall("default lengths", q, kCache, vCache, { causal: true });
  checkCall("explicit lengths", q, kCache, vCache, { cacheSeqLens: new Int32Array([7, 0]), causal: true });
  assertBitwiseEqual("kCache untouched", kCache.data, kBefore);
});

test("numSplits 1, 4 and 0 (auto) agree with the reference and with each other", () => {
  // Each meets the rule against the reference; two results may then differ by the sum of their
  // allowed errors (2 × (2 × naive + 1e-6), the triangle inequality).
  const random = rng(303);
  const [B, maxLen, H, Hkv, d, dv] = [2, 700, 8, 2, 19, 13];
  const lengths = new Int32Array([650, 333]);
  const sramBytes = kernels.arenaBytes(8, 4, d, dv, false) * 2; // small blocks: many to split
  const q = randomTensor(random, [B, 1, H, d]);
  const kCache = makeCache(random, [B, maxLen, Hkv, d], lengths);
  const vCache = makeCache(random, [B, maxLen, Hkv, dv], lengths);
  const kNew = randomTensor(random, [B, 1, Hkv, d]);
  const vNew = randomTensor(random, [B, 1, Hkv, dv]);
  const alibiSlopes = Float32Array.from({ length: H }, (_, h) => 2 ** (-(h + 1)));
  const results = [];
  for (const numSplits of [1, 4, 0]) {
    // Fresh copies: each call appends at the same place.
    const kc = { data: kCache.data.slice(), shape: kCache.shape };
    const vc = { data: vCache.data.slice(), shape: vCache.shape };
    kernels.resetCounters();
    const options = { cacheSeqLens: lengths, kNew, vNew, causal: true, alibiSlopes, sramBytes, numSplits };
    results.push(checkCall(`numSplits ${numSplits}`, q, kc, vc, options));
    if (numSplits === 4 && !(partialBytesWritten() > 0)) throw new Error("numSplits 4 did not split the keys");
    if (numSplits === 1 && partialBytesWritten() !== 0) throw new Error("numSplits 1 split the keys");
  }
  const kAfter = appended(kCache, kNew, lengths);
  const vAfter = appended(vCache, vNew, lengths);
  const semantic = { seqLensK: lengths.map((n) => n + 1), causal: true, alibiSlopes };
  const ref = referenceAttention(q, kAfter, vAfter, { ...semantic, returnLse: true });
  const naive = naiveAttentionF32(q, kAfter, vAfter, semantic);
  const allowO = 2 * (2 * maxAbsError(naive.data, ref.data) + 1e-6);
  const allowLse = 2 * (2 * maxAbsError(naive.lse, ref.lse.data) + 1e-6);
  for (const [a, b] of [[0, 1], [0, 2], [1, 2]]) {
    if (!(maxAbsError(results[a].data, results[b].data) <= allowO)) throw new Error(`O of ${a} and ${b} disagree`);
    if (!(maxAbsError(results[a].lse, results[b].lse) <= allowLse)) throw new Error(`lse of ${a} and ${b} disagree`);
  }
});

test("a 20-step decode loop with a prefill matches the reference at every step and leaves every row in place", () => {
  const random = rng(304);
  const [B, maxLen, H, Hkv, d, dv] = [2, 40, 6, 2, 13, 11];
  const lengths = new Int32Array([3, 0]); // ragged: entry 1 starts empty
  const kCache = makeCache(random, [B, maxLen, Hkv, d], lengths);
  const vCache = makeCache(random, [B, maxLen, Hkv, dv], lengths);
  const alibiSlopes = Float32Array.from({ length: H }, (_, h) => 2 ** (-(h + 1) / 2));
  const common = { causal: true, windowSize: [24, -1] as const, alibiSlopes, softcap: 20, sramBytes: 8192 };
  // Chunked prefill: 7 tokens at once, causal aligned to each entry's new length.
  const prefill = 7;
  checkCall("prefill", randomTensor(random, [B, prefill, H, d]), kCache, vCache, {
    ...common,
    cacheSeqLens: lengths,
    kNew: randomTensor(random, [B, prefill, Hkv, d]),
    vNew: randomTensor(random, [B, prefill, Hkv, dv]),
  });
  for (let b = 0; b < B; b++) lengths[b] += prefill; // the caller advances the cache
  for (let step = 0; step < 20; step++) {
    checkCall(`step ${step}`, randomTensor(random, [B, 1, H, d]), kCache, vCache, {
      ...common,
      cacheSeqLens: lengths,
      kNew: randomTensor(random, [B, 1, Hkv, d]),
      vNew: randomTensor(random, [B, 1, Hkv, dv]),
      numSplits: step % 3, // auto, none and two splits in turn
    });
    for (let b = 0; b < B; b++) lengths[b] += 1;
  }
  if (lengths.join() !== "30,27") throw new Error(`lengths ${lengths}`);
});

test("flashAttentionWithKvCache() writes into out when given and returns it", () => {
  const random = rng(305);
  const [B, maxLen, H, d, dv] = [1, 12, 2, 6, 5];
  const lengths = new Int32Array([4]);
  const kCache = makeCache(random, [B, maxLen, H, d], lengths);
  const vCache = makeCache(random, [B, maxLen, H, dv], lengths);
  const q = randomTensor(random, [B, 2, H, d]);
  const fresh = flashAttentionWithKvCache(q, kCache, vCache, { cacheSeqLens: lengths });
  const out = new Float32Array(B * 2 * H * dv).fill(NaN);
  const o = flashAttentionWithKvCache(q, kCache, vCache, { cacheSeqLens: lengths, out });
  if (o.data !== out) throw new Error("the result does not use the caller's buffer");
  assertBitwiseEqual("out", out, fresh.data);
});

test("a mask over the cache spans maxLen: entries past cacheSeqLens + Nnew are ignored", () => {
  // The mask's last dim is maxLen whatever the lengths; columns past each entry's keys must not
  // matter, so setting them to anything (here +1e30 or attend) gives the same bits.
  const random = rng(306);
  const [B, maxLen, H, d, dv, Nq] = [2, 30, 3, 7, 4, 2];
  const lengths = new Int32Array([10, 21]);
  const kCache = makeCache(random, [B, maxLen, H, d], lengths);
  const vCache = makeCache(random, [B, maxLen, H, dv], lengths);
  const q = randomTensor(random, [B, Nq, H, d]);
  const base = Float32Array.from({ length: B * Nq * maxLen }, () => (random() < 0.3 ? -Infinity : random() - 0.5));
  const noisy = base.slice();
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < Nq; i++) noisy.fill(1e30, (b * Nq + i) * maxLen + lengths[b], (b * Nq + i + 1) * maxLen);
  }
  const masks: Mask[] = [{ data: base, shape: [B, 1, Nq, maxLen] }, { data: noisy, shape: [B, 1, Nq, maxLen] }];
  const [a, b] = masks.map((mask) => checkCall("mask", q, kCache, vCache, { cacheSeqLens: lengths, mask }));
  assertBitwiseEqual("O", a.data, b.data);
  assertBitwiseEqual("lse", a.lse, b.lse);
});

test("chooseSplits() makes one split per worker, each of at least 1024 keys, at most 16, and 1 on one thread", () => {
  const cases: [number, number | undefined, number][] = [
    [100_000, undefined, 1], // one worker by default: a split would only add its merge
    [100_000, 1, 1],
    [5000, 8, 4], // ⌊5000 / 1024⌋ = 4 splits of ≥ 1024 keys
    [2047, 8, 1],
    [2048, 8, 2],
    [1_000_000, 64, 16],
    [0, 8, 1],
  ];
  for (const [keys, workers, expected] of cases) {
    const got = workers === undefined ? chooseSplits(keys) : chooseSplits(keys, workers);
    if (got !== expected) throw new Error(`chooseSplits(${keys}, ${workers}) is ${got}, expected ${expected}`);
  }
});
