// KV caches that live in HBM (createKvCache, pool.createKvCache): decode loops give the bits and
// counted bytes of the caller-owned caches, appends check before they write, and the memory a
// cache holds is never overwritten by a call and is reused once freed.

import fc from "fast-check";
import {
  createKvCache,
  flashAttention,
  flashAttentionWithKvCache,
  type KvCache,
  type KvCacheOptions,
  type Tensor,
} from "../mod.ts";
import { POOL_TUNING, startPool } from "../src/pool.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import { assertSameOutput, assertThrows, randomTensor, rng, test } from "./_util.ts";

const decodeArb = fc.record({
  B: fc.integer({ min: 1, max: 3 }),
  Hkv: fc.integer({ min: 1, max: 3 }),
  group: fc.integer({ min: 1, max: 4 }),
  d: fc.integer({ min: 1, max: 40 }),
  dv: fc.integer({ min: 1, max: 40 }),
  maxLen: fc.integer({ min: 4, max: 200 }),
  /** New positions per step: a prompt, then single tokens or short bursts. */
  steps: fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 1, maxLength: 6 }),
  causal: fc.boolean(),
  window: fc.option(fc.tuple(fc.integer({ min: -1, max: 20 }), fc.integer({ min: -1, max: 3 })), { nil: null }),
  alibi: fc.boolean(),
  softcap: fc.constantFrom(0, 5),
  numSplits: fc.integer({ min: 1, max: 4 }),
  seed: fc.integer(),
});

test("a decode loop on createKvCache and on a pool's cache gives the caller-owned caches' bits and bytes", async () => {
  const pool = await startPool(2, { ...POOL_TUNING, inlineFlops: 0 });
  try {
    await fc.assert(
      fc.asyncProperty(decodeArb, async (c) => {
        const random = rng(c.seed);
        const H = c.Hkv * c.group;
        const steps = c.steps.filter((_, i, all) => all.slice(0, i + 1).reduce((a, b) => a + b) <= c.maxLen);
        const kOwned = { data: new Float32Array(c.B * c.maxLen * c.Hkv * c.d), shape: [c.B, c.maxLen, c.Hkv, c.d] };
        const vOwned = { data: new Float32Array(c.B * c.maxLen * c.Hkv * c.dv), shape: [c.B, c.maxLen, c.Hkv, c.dv] };
        const config = { batch: c.B, maxLen: c.maxLen, kvHeads: c.Hkv, headDim: c.d, valueDim: c.dv };
        const cache = createKvCache(config);
        const pooled = pool.createKvCache(config);
        const options: KvCacheOptions = { causal: c.causal, numSplits: c.numSplits, returnLse: true, stats: true };
        if (c.window) options.windowSize = c.window;
        if (c.alibi) options.alibiSlopes = Float32Array.from({ length: H }, () => random());
        if (c.softcap) options.softcap = c.softcap;
        try {
          let length = 0;
          for (const n of steps) {
            const kNew = randomTensor(random, [c.B, n, c.Hkv, c.d]);
            const vNew = randomTensor(random, [c.B, n, c.Hkv, c.dv]);
            const q = randomTensor(random, [c.B, n, H, c.d]);
            const cacheSeqLens = new Int32Array(c.B).fill(length);
            const owned = flashAttentionWithKvCache(q, kOwned, vOwned, { ...options, cacheSeqLens, kNew, vNew });
            cache.append(kNew, vNew);
            pooled.append(kNew, vNew);
            length += n;
            const where = `${JSON.stringify(c)}, length ${length}`;
            assertSameOutput(`createKvCache, ${where}`, flashAttentionWithKvCache(q, cache, options), owned);
            assertSameOutput(`pool cache, ${where}`, await pool.flashAttentionWithKvCache(q, pooled, options), owned);
            if (cache.length(c.B - 1) !== length || pooled.length(0) !== length) throw new Error(`lengths at ${where}`);
          }
        } finally {
          cache.free();
          pooled.free();
        }
      }),
      { seed: 0xcac4e, numRuns: 50, includeErrorInReport: true },
    );
  } finally {
    await pool.close();
  }
});

test("append() checks shapes and room before writing: a failed append changes nothing", () => {
  const random = rng(41);
  const [B, maxLen, Hkv, d] = [2, 5, 2, 8];
  const cache = createKvCache({ batch: B, maxLen, kvHeads: Hkv, headDim: d });
  try {
    const rows = (n: number, heads = Hkv, D = d) => randomTensor(random, [B, n, heads, D]);
    cache.append(rows(3), rows(3));
    const q = randomTensor(random, [B, 1, 4, d]);
    const before = flashAttentionWithKvCache(q, cache, { returnLse: true });
    assertThrows(() => cache.append(rows(3), rows(3)), RangeError, "entry 0, which holds 3, passes maxLen 5");
    assertThrows(() => cache.append(rows(1, 1), rows(1)), TypeError, "kNew must have shape [2, 1, 2, 8]");
    assertThrows(() => cache.append(rows(1), rows(2)), TypeError, "vNew must have shape [2, 1, 2, 8]");
    assertThrows(() => cache.append(rows(1), rows(1, Hkv, 4)), TypeError, "vNew must have shape [2, 1, 2, 8]");
    assertThrows(
      // deno-lint-ignore no-explicit-any
      () => cache.append({ data: [1], shape: [1] } as any, rows(1)),
      TypeError,
      "kNew.data must be a Float32Array",
    );
    if (cache.length(0) !== 3 || cache.length(1) !== 3) throw new Error("a failed append moved a length");
    const after = flashAttentionWithKvCache(q, cache, { returnLse: true });
    assertSameOutput("after the failed appends", after, before);
    cache.append(rows(2), rows(2));
    if (cache.length(1) !== 5) throw new Error(`length ${cache.length(1)} after filling`);
    assertThrows(() => cache.length(2), RangeError, "b must be an integer in [0, 2): b is 2");
  } finally {
    cache.free();
  }
});

test("reset() empties every entry (O = 0, lse = −∞) and free() ends the cache; both fine to repeat", () => {
  const random = rng(42);
  const cache = createKvCache({ batch: 1, maxLen: 16, kvHeads: 1, headDim: 4, valueDim: 3 });
  cache.append(randomTensor(random, [1, 4, 1, 4]), randomTensor(random, [1, 4, 1, 3]));
  cache.reset();
  cache.reset();
  const o = flashAttentionWithKvCache(randomTensor(random, [1, 2, 2, 4]), cache, { returnLse: true });
  if (o.shape.join() !== "1,2,2,3") throw new Error(`shape ${o.shape}`);
  if (!o.data.every((x) => x === 0) || !o.lse!.data.every((x) => x === -Infinity)) throw new Error("not empty");
  cache.free();
  cache.free();
  assertThrows(
    () => cache.append(randomTensor(random, [1, 1, 1, 4]), randomTensor(random, [1, 1, 1, 3])),
    TypeError,
    "freed",
  );
  assertThrows(() => flashAttentionWithKvCache(randomTensor(random, [1, 1, 1, 4]), cache), TypeError, "freed");
  assertThrows(() => cache.length(0), TypeError, "freed");
});

test("createKvCache() rejects bad sizes with typed errors that name them", () => {
  // deno-lint-ignore no-explicit-any
  const cases: [unknown, abstract new (...args: any[]) => Error, string][] = [
    [{ batch: 1, maxLen: 0, kvHeads: 1, headDim: 4 }, RangeError, "maxLen must be a positive integer: maxLen is 0"],
    [{ batch: 1.5, maxLen: 4, kvHeads: 1, headDim: 4 }, RangeError, "batch is 1.5"],
    [{ batch: 1, maxLen: 4, kvHeads: 1, headDim: 257 }, RangeError, "head dims must be at most 256"],
    [{ batch: 1, maxLen: 4, kvHeads: 1 }, TypeError, "headDim must be a number: headDim is undefined"],
    [{ batch: 1, maxLen: 4, kvHeads: 1, headDim: 4, heads: 2 }, TypeError, 'unknown key "heads"'],
    [null, TypeError, "options must be an object"],
    [{ batch: 64, maxLen: 1 << 20, kvHeads: 8, headDim: 128 }, RangeError, "do not fit the 4 GiB"],
  ];
  for (const [config, type, fragment] of cases) {
    // deno-lint-ignore no-explicit-any
    assertThrows(() => createKvCache(config as any), type, fragment);
  }
});

test("a cache call rejects caller-cache options and a q that does not match the cache", () => {
  const random = rng(43);
  const cache = createKvCache({ batch: 2, maxLen: 8, kvHeads: 2, headDim: 4 });
  try {
    const q = randomTensor(random, [2, 1, 4, 4]);
    const call = (qq: Tensor, options: object) =>
      // deno-lint-ignore no-explicit-any
      flashAttentionWithKvCache(qq, cache, options as any);
    assertThrows(() => call(q, { cacheSeqLens: new Int32Array(2) }), TypeError, 'unknown key "cacheSeqLens"');
    assertThrows(() => call(q, { kNew: q }), TypeError, 'unknown key "kNew"');
    assertThrows(() => call(q, { layout: "bhsd" }), TypeError, 'unknown key "layout"');
    assertThrows(() => call(randomTensor(random, [1, 1, 4, 4]), {}), TypeError, "q must have the cache's batch size");
    assertThrows(() => call(randomTensor(random, [2, 1, 4, 8]), {}), TypeError, "q must have the cache's head dim");
    assertThrows(
      () => call(randomTensor(random, [2, 1, 3, 4]), {}),
      TypeError,
      "multiple of the cache's key/value heads",
    );
    assertThrows(() => call(q, { numSplits: -1 }), RangeError, "numSplits must be an integer ≥ 0");
  } finally {
    cache.free();
  }
});

test("calls never overwrite a cache that lives in memory, and freed caches' memory is reused", () => {
  const random = rng(44);
  const kernels = loadKernels();
  const cache = createKvCache({ batch: 1, maxLen: 512, kvHeads: 2, headDim: 32 });
  try {
    cache.append(randomTensor(random, [1, 400, 2, 32]), randomTensor(random, [1, 400, 2, 32]));
    const q = randomTensor(random, [1, 3, 4, 32]);
    const before = flashAttentionWithKvCache(q, cache, { returnLse: true });
    // Calls that stage far more than the cache into the same memory: a slab, and a sequence
    // of 4 × 5 MiB, past the 16 MiB slab budget, streamed.
    const big = randomTensor(random, [2, 700, 4, 64]);
    flashAttention(big, big, big, { causal: true });
    const long = randomTensor(random, [1, 20000, 1, 64]);
    flashAttention(long, long, long, { windowSize: [64, 0] });
    assertSameOutput("after large calls", flashAttentionWithKvCache(q, cache, { returnLse: true }), before);
  } finally {
    cache.free();
  }
  const sizes: number[] = [];
  for (let i = 0; i < 40; i++) {
    const c: KvCache = createKvCache({ batch: 1, maxLen: 4096, kvHeads: 2, headDim: 64 }); // 4 MiB
    c.append(randomTensor(random, [1, 1, 2, 64]), randomTensor(random, [1, 1, 2, 64]));
    c.free();
    sizes.push(kernels.memory.buffer.byteLength);
  }
  if (sizes[sizes.length - 1] !== sizes[0]) throw new Error(`memory grew from ${sizes[0]} to ${sizes.at(-1)} bytes`);
});

test("a pool refuses to reset or free a cache while a call that reads it is pending, and allows appends", async () => {
  const random = rng(45);
  const pool = await startPool(2, { ...POOL_TUNING, inlineFlops: 0 });
  try {
    const cache = pool.createKvCache({ batch: 1, maxLen: 4096, kvHeads: 1, headDim: 64 });
    cache.append(randomTensor(random, [1, 4000, 1, 64]), randomTensor(random, [1, 4000, 1, 64]));
    const q = randomTensor(random, [1, 1, 8, 64]);
    const expected = await pool.flashAttentionWithKvCache(q, cache, { numSplits: 1 });
    const pending = pool.flashAttentionWithKvCache(q, cache, { numSplits: 1 });
    assertThrows(() => cache.reset(), TypeError, "still pending: await it before reset()");
    assertThrows(() => cache.free(), TypeError, "still pending: await it before free()");
    cache.append(randomTensor(random, [1, 1, 1, 64]), randomTensor(random, [1, 1, 1, 64])); // past what it reads
    assertSameOutput("the pending call", await pending, expected);
    cache.reset();
    cache.free();
    const own = createKvCache({ batch: 1, maxLen: 8, kvHeads: 1, headDim: 64 });
    const error = await pool.flashAttentionWithKvCache(q, own).then(() => undefined, (e: unknown) => e);
    own.free();
    if (!(error instanceof TypeError) || !error.message.includes("lives in another memory")) {
      throw new Error(`a synchronous cache on the pool: ${String(error)}`);
    }
  } finally {
    await pool.close();
  }
});

test("append() with lengths takes each entry's first rows: a ragged prompt, then decode steps, as caller-owned caches", () => {
  const random = rng(46);
  const [B, maxLen, H, Hkv, d] = [3, 40, 4, 2, 12];
  const cache = createKvCache({ batch: B, maxLen, kvHeads: Hkv, headDim: d });
  const kOwned = { data: new Float32Array(B * maxLen * Hkv * d), shape: [B, maxLen, Hkv, d] };
  const vOwned = { data: new Float32Array(B * maxLen * Hkv * d), shape: [B, maxLen, Hkv, d] };
  try {
    const prompt = new Int32Array([17, 0, 9]);
    const kPrompt = randomTensor(random, [B, 17, Hkv, d]);
    const vPrompt = randomTensor(random, [B, 17, Hkv, d]);
    assertThrows(
      () => cache.append(kPrompt, vPrompt, new Int32Array([17, 0])),
      TypeError,
      "lengths must have length B = 3",
    );
    assertThrows(() => cache.append(kPrompt, vPrompt, new Int32Array([18, 0, 9])), RangeError, "lengths[0] is 18");
    assertThrows(() => cache.append(kPrompt, vPrompt, new Int32Array([17, -1, 9])), RangeError, "lengths[1] is -1");
    cache.append(kPrompt, vPrompt, prompt);
    // The caller-owned caches get the same rows, entry by entry.
    for (let b = 0; b < B; b++) {
      for (let n = 0; n < prompt[b]; n++) {
        const at = (b * maxLen + n) * Hkv * d;
        const from = (b * 17 + n) * Hkv * d;
        kOwned.data.set(kPrompt.data.subarray(from, from + Hkv * d), at);
        vOwned.data.set(vPrompt.data.subarray(from, from + Hkv * d), at);
      }
    }
    const lengths = Int32Array.from(prompt);
    for (let step = 0; step < 5; step++) {
      const q = randomTensor(random, [B, 1, H, d]);
      const kNew = randomTensor(random, [B, 1, Hkv, d]);
      const vNew = randomTensor(random, [B, 1, Hkv, d]);
      const owned = flashAttentionWithKvCache(q, kOwned, vOwned, {
        cacheSeqLens: lengths,
        kNew,
        vNew,
        causal: true,
        returnLse: true,
      });
      cache.append(kNew, vNew);
      for (let b = 0; b < B; b++) lengths[b]++;
      assertSameOutput(`step ${step}`, flashAttentionWithKvCache(q, cache, { causal: true, returnLse: true }), owned);
      for (let b = 0; b < B; b++) if (cache.length(b) !== lengths[b]) throw new Error(`entry ${b}: ${cache.length(b)}`);
    }
  } finally {
    cache.free();
  }
});

test("a cache created and filled while a pool call runs never lands on that call's tensors", async () => {
  const random = rng(47);
  const pool = await startPool(2, { ...POOL_TUNING, inlineFlops: 0 });
  try {
    const q = randomTensor(random, [1, 1500, 4, 64]);
    const expected = flashAttention(q, q, q, { returnLse: true });
    const running = pool.flashAttention(q, q, q, { returnLse: true });
    await new Promise((resolve) => setTimeout(resolve, 20)); // the call is on the Workers now
    const cache = pool.createKvCache({ batch: 1, maxLen: 1500, kvHeads: 4, headDim: 64 });
    cache.append(randomTensor(random, [1, 1500, 4, 64], 1e3), randomTensor(random, [1, 1500, 4, 64], 1e3));
    assertSameOutput("the call that was running", await running, expected);
    cache.free();
  } finally {
    await pool.close();
  }
});
