// The pool: the same bits, bytes and errors as the synchronous functions, whatever the Workers do.
//
// Every pool here is started inside its test and closed before the test ends. Most tests use
// pools tuned to dispatch every call to the Workers (inlineFlops = 0), since the default would
// run these small problems on the calling thread; one pool also streams every sequence through
// HBM (slabBudgetBytes = 0) and cuts groups into many jobs, so that every path of the plan runs
// on the Workers.

import fc from "fast-check";
import {
  type AttentionOutput,
  type AttentionPool,
  createAttentionPool,
  flashAttention,
  type FlashAttentionOptions,
  flashAttentionWithKvCache,
  type KvCacheOptions,
  type Layout,
  POOL_MAX_THREADS,
  type Tensor,
} from "../mod.ts";
import { flashAttentionIo } from "../src/io.ts";
import { POOL_TUNING, startPool } from "../src/pool.ts";
import {
  assertBitwiseEqual,
  assertChildExitsCleanly,
  assertSameOutput,
  assertThrows,
  makeMask,
  type MaskSpec,
  randomTensor,
  rng,
  test,
} from "./_util.ts";

type Causal = boolean | "bottom-right" | "top-left";

const DISPATCH = { ...POOL_TUNING, inlineFlops: 0 };
const STREAM = { inlineFlops: 0, slabBudgetBytes: 0, jobsPerThread: 16 };

/** Runs `fn` with fresh pools, closing them whatever happens. */
async function withPools(
  specs: { threads: number; tuning: typeof POOL_TUNING }[],
  fn: (pools: AttentionPool[]) => Promise<void>,
): Promise<void> {
  const pools = await Promise.all(specs.map((s) => startPool(s.threads, s.tuning)));
  try {
    await fn(pools);
  } finally {
    await Promise.all(pools.map((p) => p.close()));
  }
}

/** Head dims 1..47 that are never a multiple of 4 (the kernels pad them). */
const oddDim = fc.tuple(fc.integer({ min: 0, max: 11 }), fc.integer({ min: 1, max: 3 })).map(([a, r]) => 4 * a + r);
const side = fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: 60 }));
const maskArb: fc.Arbitrary<MaskSpec> = fc.record({
  kind: fc.constantFrom("f32" as const, "u8" as const),
  rank: fc.constantFrom(1 as const, 2 as const, 3 as const, 4 as const),
  keep: fc.tuple(fc.boolean(), fc.boolean(), fc.boolean(), fc.oneof(fc.constant(true), fc.boolean())),
  blocked: fc.constantFrom(0, 0.3, 0.97),
});

const specArb = fc.record({
  B: fc.integer({ min: 1, max: 3 }),
  Hkv: fc.integer({ min: 1, max: 3 }),
  group: fc.integer({ min: 1, max: 3 }),
  Nq: fc.integer({ min: 1, max: 90 }),
  Nk: fc.integer({ min: 1, max: 100 }),
  d: oddDim,
  dv: oddDim,
  layout: fc.constantFrom<Layout>("bshd", "bhsd"),
  causal: fc.constantFrom<Causal>(false, true, "bottom-right", "top-left"),
  window: fc.option(fc.tuple(side, side), { nil: null }),
  // 0, or a scale f32 does not round to 0 (a positive one that it does is a RangeError)
  scale: fc.option(fc.double({ min: 0, max: 2, noNaN: true }).map((x) => (Math.fround(x) === 0 ? 0 : x)), {
    nil: null,
  }),
  alibi: fc.constantFrom("none" as const, "H" as const, "BH" as const),
  softcap: fc.oneof(fc.constant(0), fc.double({ min: 0.1, max: 50, noNaN: true })),
  mask: fc.option(maskArb, { nil: null }),
  seqLens: fc.boolean(),
  /** Arena of 2^log2 bytes, or the default. */
  log2Arena: fc.option(fc.integer({ min: 13, max: 18 }), { nil: null }),
  seed: fc.integer(),
});
type Spec = typeof specArb extends fc.Arbitrary<infer T> ? T : never;

function build(s: Spec): { q: Tensor; k: Tensor; v: Tensor; options: FlashAttentionOptions } {
  const random = rng(s.seed);
  const H = s.Hkv * s.group;
  const shape = (N: number, heads: number, D: number) => s.layout === "bshd" ? [s.B, N, heads, D] : [s.B, heads, N, D];
  const q = randomTensor(random, shape(s.Nq, H, s.d));
  const k = randomTensor(random, shape(s.Nk, s.Hkv, s.d));
  const v = randomTensor(random, shape(s.Nk, s.Hkv, s.dv));
  const options: FlashAttentionOptions = { layout: s.layout, causal: s.causal, returnLse: true, stats: true };
  if (s.window) options.windowSize = s.window;
  if (s.scale !== null) options.scale = s.scale;
  if (s.alibi !== "none") {
    options.alibiSlopes = Float32Array.from({ length: s.alibi === "H" ? H : s.B * H }, () => random());
  }
  if (s.softcap !== 0) options.softcap = s.softcap;
  if (s.mask) options.mask = makeMask(random, s.mask, [s.B, H, s.Nq, s.Nk]);
  if (s.seqLens) options.seqLensK = Int32Array.from({ length: s.B }, () => Math.floor(random() * (s.Nk + 1)));
  // 8 KiB holds the smallest blocks up to d = dv = 47 with a mask; larger arenas give larger Br.
  if (s.log2Arena !== null) options.sramBytes = 1 << s.log2Arena;
  return { q, k, v, options };
}

test("pool.flashAttention() gives the synchronous bits, lse and counted bytes over random shapes and every option", async () => {
  await withPools([{ threads: 2, tuning: DISPATCH }, { threads: 3, tuning: STREAM }], async (pools) => {
    await fc.assert(
      fc.asyncProperty(specArb, async (s) => {
        const { q, k, v, options } = build(s);
        const sync = flashAttention(q, k, v, options);
        for (const [i, pool] of pools.entries()) {
          assertSameOutput(`pool ${i}, ${JSON.stringify(s)}`, await pool.flashAttention(q, k, v, options), sync);
        }
      }),
      { seed: 0x9001, numRuns: 70, includeErrorInReport: true },
    );
  });
});

test("pool.flashAttention() gives the synchronous bits with varlen packing, empty sequences included", async () => {
  const lengths = fc.array(fc.tuple(fc.integer({ min: 0, max: 50 }), fc.integer({ min: 0, max: 60 })), {
    minLength: 1,
    maxLength: 5,
  });
  await withPools([{ threads: 2, tuning: DISPATCH }, { threads: 2, tuning: STREAM }], async (pools) => {
    await fc.assert(
      fc.asyncProperty(
        lengths,
        oddDim,
        fc.integer({ min: 1, max: 3 }),
        fc.boolean(),
        fc.integer(),
        async (ls, d, g, causal, seed) => {
          const random = rng(seed);
          if (ls.every(([nq]) => nq === 0)) ls[0][0] = 1;
          if (ls.every(([, nk]) => nk === 0)) ls[0][1] = 1;
          const cumulative = (ns: number[]) =>
            Int32Array.from([0, ...ns.map((_, i) => ns.slice(0, i + 1).reduce((a, b) => a + b))]);
          const cuSeqlensQ = cumulative(ls.map(([nq]) => nq));
          const cuSeqlensK = cumulative(ls.map(([, nk]) => nk));
          const [totalQ, totalK] = [cuSeqlensQ[ls.length], cuSeqlensK[ls.length]];
          const q = randomTensor(random, [totalQ, 2 * g, d]);
          const k = randomTensor(random, [totalK, 2, d]);
          const v = randomTensor(random, [totalK, 2, d]);
          const options = { cuSeqlensQ, cuSeqlensK, causal, returnLse: true, stats: true, sramBytes: 16384 };
          const sync = flashAttention(q, k, v, options);
          for (const pool of pools) {
            assertSameOutput(JSON.stringify(ls), await pool.flashAttention(q, k, v, options), sync);
          }
        },
      ),
      { seed: 0x9002, numRuns: 40, includeErrorInReport: true },
    );
  });
});

/** Copies of a cache so that the synchronous and the pooled call each append to their own. */
const copy = (t: Tensor): Tensor => ({ data: t.data.slice(), shape: t.shape });

test("pool.flashAttentionWithKvCache() appends and attends as the synchronous function with the same numSplits", async () => {
  const caseArb = fc.record({
    B: fc.integer({ min: 1, max: 3 }),
    Hkv: fc.integer({ min: 1, max: 2 }),
    group: fc.integer({ min: 1, max: 4 }),
    Nq: fc.integer({ min: 1, max: 4 }),
    maxLen: fc.integer({ min: 8, max: 300 }),
    Nnew: fc.integer({ min: 0, max: 3 }),
    d: oddDim,
    numSplits: fc.integer({ min: 1, max: 6 }),
    causal: fc.boolean(),
    seed: fc.integer(),
  });
  await withPools([{ threads: 2, tuning: DISPATCH }], async ([pool]) => {
    await fc.assert(
      fc.asyncProperty(caseArb, async (c) => {
        const random = rng(c.seed);
        const H = c.Hkv * c.group;
        const kCache = randomTensor(random, [c.B, c.maxLen, c.Hkv, c.d]);
        const vCache = randomTensor(random, [c.B, c.maxLen, c.Hkv, c.d]);
        const cacheSeqLens = Int32Array.from({ length: c.B }, () => Math.floor(random() * (c.maxLen - c.Nnew + 1)));
        const q = randomTensor(random, [c.B, c.Nq, H, c.d]);
        const options: KvCacheOptions = { cacheSeqLens, numSplits: c.numSplits, causal: c.causal, returnLse: true };
        if (c.Nnew > 0) {
          options.kNew = randomTensor(random, [c.B, c.Nnew, c.Hkv, c.d]);
          options.vNew = randomTensor(random, [c.B, c.Nnew, c.Hkv, c.d]);
        }
        const [kSync, vSync, kPool, vPool] = [copy(kCache), copy(vCache), copy(kCache), copy(vCache)];
        const sync = flashAttentionWithKvCache(q, kSync, vSync, { ...options, stats: true });
        const pooled = await pool.flashAttentionWithKvCache(q, kPool, vPool, { ...options, stats: true });
        assertSameOutput(JSON.stringify(c), pooled, sync);
        assertBitwiseEqual("kCache after the append", kPool.data, kSync.data);
        assertBitwiseEqual("vCache after the append", vPool.data, vSync.data);
      }),
      { seed: 0x9003, numRuns: 60, includeErrorInReport: true },
    );
  });
});

test("the pool's automatic split-KV choice is exact: a decode step matches the reference's tolerance and its splits' bits", async () => {
  // One K/V head and one query: fewer head groups than Workers, so the pool splits the keys.
  const random = rng(31);
  const [maxLen, d] = [4096, 64];
  const q = randomTensor(random, [1, 1, 4, d]);
  const kCache = randomTensor(random, [1, maxLen, 1, d]);
  const vCache = randomTensor(random, [1, maxLen, 1, d]);
  await withPools([{ threads: 2, tuning: DISPATCH }], async ([pool]) => {
    const auto = await pool.flashAttentionWithKvCache(q, kCache, vCache, { stats: true });
    if (!(auto.stats!.written.partial > 0)) throw new Error("the pool did not split a single-group decode");
    const splits = 2; // chooseSplits(4096 keys, 2 Workers per group)
    assertSameOutput(
      "auto = 2 splits",
      auto,
      flashAttentionWithKvCache(q, kCache, vCache, { numSplits: splits, stats: true }),
    );
    const unsplit = flashAttentionWithKvCache(q, kCache, vCache);
    // Split or not, the same attention: within f32 rounding of each other (|O| ≤ 1 here).
    for (let i = 0; i < unsplit.data.length; i++) {
      if (!(Math.abs(unsplit.data[i] - auto.data[i]) <= 1e-6)) {
        throw new Error(`element ${i}: ${auto.data[i]} vs ${unsplit.data[i]}`);
      }
    }
  });
});

test("the pool's counted bytes equal flashAttentionIo's closed form, with each Worker's arena within M", async () => {
  const random = rng(32);
  await withPools([{ threads: 2, tuning: DISPATCH }], async ([pool]) => {
    for (
      const [N, H, d, causal, sramBytes] of [
        [300, 4, 32, false, 16384],
        [513, 2, 64, true, 65536],
        [129, 6, 16, "top-left", 8192],
      ] as const
    ) {
      const q = randomTensor(random, [1, N, H, d]);
      const o = await pool.flashAttention(q, q, q, { causal, sramBytes, stats: true });
      const io = flashAttentionIo({ B: 1, H, Nq: N, Nk: N, d }, { causal, sramBytes });
      const { flops: _, sramPeakBytesPerWorker, ...measured } = o.stats!;
      if (JSON.stringify(measured) !== JSON.stringify(io)) {
        throw new Error(`N ${N}: measured ${JSON.stringify(measured)}\n closed form ${JSON.stringify(io)}`);
      }
      if (sramPeakBytesPerWorker?.length !== 2) throw new Error(`per-Worker peaks: ${sramPeakBytesPerWorker}`);
      if (sramPeakBytesPerWorker.some((x) => x > sramBytes)) throw new Error(`peaks ${sramPeakBytesPerWorker} > M`);
    }
  });
});

test("many overlapping calls from several async tasks all come back right, in order for the caches", async () => {
  const random = rng(33);
  const problems = Array.from({ length: 12 }, (_, i) => {
    const [N, H, d] = [40 + 23 * i, 1 + (i % 3), 8 + 5 * (i % 4)];
    const q = randomTensor(random, [1, N, H, d]);
    const k = randomTensor(random, [1, N + 7, H, d]);
    const v = randomTensor(random, [1, N + 7, H, d]);
    const options = { causal: i % 2 === 0, returnLse: true };
    return { q, k, v, options, expected: flashAttention(q, k, v, options) };
  });
  // One cache that every decode step appends to: the steps must run in the order they were made.
  const [maxLen, Hkv, d] = [64, 2, 16];
  const steps = Array.from({ length: 8 }, () => ({
    q: randomTensor(random, [1, 1, 4, d]),
    kNew: randomTensor(random, [1, 1, Hkv, d]),
    vNew: randomTensor(random, [1, 1, Hkv, d]),
  }));
  const syncK = { data: new Float32Array(maxLen * Hkv * d), shape: [1, maxLen, Hkv, d] };
  const syncV = copy(syncK);
  const expectedSteps = steps.map((s, i) =>
    flashAttentionWithKvCache(s.q, syncK, syncV, { cacheSeqLens: new Int32Array([i]), kNew: s.kNew, vNew: s.vNew })
  );
  await withPools([{ threads: 2, tuning: { ...DISPATCH, inlineFlops: 20000 } }], async ([pool]) => {
    const poolK = { data: new Float32Array(maxLen * Hkv * d), shape: [1, maxLen, Hkv, d] };
    const poolV = copy(poolK);
    const decode = steps.map((s, i) =>
      pool.flashAttentionWithKvCache(s.q, poolK, poolV, {
        cacheSeqLens: new Int32Array([i]),
        kNew: s.kNew,
        vNew: s.vNew,
      })
    );
    const task = async (offset: number) => {
      const results: Promise<AttentionOutput>[] = [];
      for (let i = offset; i < problems.length; i += 3) {
        const { q, k, v, options } = problems[i];
        results.push(pool.flashAttention(q, k, v, options));
        await Promise.resolve(); // interleave with the other tasks' calls
      }
      return Promise.all(results);
    };
    const [a, b, c, steps2] = await Promise.all([task(0), task(1), task(2), Promise.all(decode)]);
    [a, b, c].forEach((results, offset) =>
      results.forEach((o, j) => assertSameOutput(`problem ${offset + 3 * j}`, o, problems[offset + 3 * j].expected))
    );
    steps2.forEach((o, i) => assertSameOutput(`decode step ${i}`, o, expectedSteps[i]));
    assertBitwiseEqual("kCache", poolK.data, syncK.data);
  });
});

test("a bad pool call rejects with the synchronous call's typed error and message, and the pool works after it", async () => {
  const random = rng(34);
  const q = randomTensor(random, [1, 96, 2, 16]);
  const bad: [string, () => unknown[]][] = [
    ["k of another head dim", () => [q, randomTensor(random, [1, 96, 2, 8]), q, {}]],
    ["an unknown option", () => [q, q, q, { casual: true }]],
    ["a negative scale", () => [q, q, q, { scale: -1 }]],
    ["a mask that does not broadcast", () => [q, q, q, { mask: { data: new Float32Array(5), shape: [5] } }]],
    ["an out of the wrong size", () => [q, q, q, { out: new Float32Array(3) }]],
    ["an arena too small", () => [q, q, q, { sramBytes: 64 }]],
    ["an arena too large", () => [q, q, q, { sramBytes: 1 << 30 }]],
    ["data that is not a Float32Array", () => [{ data: [1, 2], shape: [1, 1, 1, 2] }, q, q]],
    ["options that are null", () => [q, q, q, null]],
  ];
  await withPools([{ threads: 2, tuning: DISPATCH }], async ([pool]) => {
    for (const [what, args] of bad) {
      let expected: unknown;
      try {
        // deno-lint-ignore no-explicit-any
        (flashAttention as any)(...args());
      } catch (error) {
        expected = error;
      }
      if (!(expected instanceof Error)) throw new Error(`${what}: the synchronous call did not throw`);
      let actual: unknown;
      // deno-lint-ignore no-explicit-any
      await (pool.flashAttention as any)(...args()).catch((error: unknown) => (actual = error));
      if (
        !(actual instanceof Error) || actual.constructor !== expected.constructor || actual.message !== expected.message
      ) {
        throw new Error(`${what}: the pool rejected with ${String(actual)}, the function threw ${String(expected)}`);
      }
    }
    const kvBad = () =>
      pool.flashAttentionWithKvCache(q, copy(q), copy(q), {
        cacheSeqLens: new Int32Array([95]),
        kNew: randomTensor(random, [1, 2, 2, 16]),
        vNew: randomTensor(random, [1, 2, 2, 16]),
      });
    const error = await kvBad().then(() => undefined, (e: unknown) => e);
    if (!(error instanceof RangeError) || !error.message.includes("overflows the cache")) {
      throw new Error(`an overflowing append: ${String(error)}`);
    }
    assertSameOutput("after the bad calls", await pool.flashAttention(q, q, q), flashAttention(q, q, q));
  });
});

test("createAttentionPool() rejects bad options with typed errors that name them", async () => {
  const cases: [unknown, abstract new (...args: never[]) => Error, string][] = [
    [{ threads: 0 }, RangeError, "threads must be an integer in [1, 128]: threads is 0"],
    [{ threads: 1.5 }, RangeError, "threads is 1.5"],
    [{ threads: POOL_MAX_THREADS + 1 }, RangeError, "threads is 129"],
    [{ threads: "2" }, TypeError, "threads must be a number"],
    [{ thread: 2 }, TypeError, 'unknown key "thread"'],
    [4, TypeError, "options must be an object"],
  ];
  for (const [options, type, fragment] of cases) {
    // deno-lint-ignore no-explicit-any
    const error = await createAttentionPool(options as any).then(() => undefined, (e: unknown) => e);
    if (!(error instanceof type) || !error.message.includes(fragment)) {
      throw new Error(`${JSON.stringify(options)}: expected ${type.name} with "${fragment}", got ${String(error)}`);
    }
  }
});

test("close() lets the calls already made finish, then rejects new ones; closing twice is fine", async () => {
  const random = rng(35);
  const q = randomTensor(random, [1, 200, 2, 32]);
  const pool = await startPool(2, DISPATCH);
  const pending = pool.flashAttention(q, q, q, { causal: true });
  const closing = pool.close();
  const late = pool.flashAttention(q, q, q).then(() => undefined, (e: unknown) => e);
  assertSameOutput("the call made before close()", await pending, flashAttention(q, q, q, { causal: true }));
  await closing;
  await pool.close();
  const error = await late;
  if (!(error instanceof Error) || !error.message.includes("the pool is closed")) {
    throw new Error(`a call after close(): ${String(error)}`);
  }
});

test("a pool of one Worker and a pool with the default thread count give the same bits", async () => {
  const random = rng(36);
  const q = randomTensor(random, [2, 150, 4, 24]);
  const k = randomTensor(random, [2, 170, 2, 24]);
  const expected = flashAttention(q, k, k, { causal: true, returnLse: true });
  const one = await startPool(1, DISPATCH);
  const many = await createAttentionPool();
  try {
    if (!(many.threads >= 1)) throw new Error(`default threads ${many.threads}`);
    assertSameOutput("1 Worker", await one.flashAttention(q, k, k, { causal: true, returnLse: true }), expected);
    assertSameOutput("default", await many.flashAttention(q, k, k, { causal: true, returnLse: true }), expected);
  } finally {
    await Promise.all([one.close(), many.close()]);
  }
});

test("a process that closes its pool exits on its own, with no Worker left alive", () => {
  // The same runtime runs a child script that starts a pool, computes, closes it and returns.
  assertChildExitsCleanly(new URL("./_pool_exit.ts", import.meta.url));
});

test("a process awaiting a pool from a function it does not await stays alive until close resolves", () => {
  // Start, a call, a lost Worker and its replacement, close: each awaited with nothing else keeping
  // the process running. Bun ended it inside `await pool.close()` while the pool's Workers were unref'd.
  assertChildExitsCleanly(new URL("./_pool_await_exit.ts", import.meta.url));
});

test("assertSameOutput itself catches one flipped bit (the pool tests above can fail)", () => {
  const a = { data: new Float32Array([1, 2, 3]), shape: [1, 1, 1, 3] };
  const b = { data: new Float32Array([1, 2, 3]), shape: [1, 1, 1, 3] };
  new Uint32Array(b.data.buffer)[2] ^= 1;
  assertThrows(() => assertSameOutput("flipped", a, b), Error, "element 2 differs");
});

test("without SharedArrayBuffer createAttentionPool() rejects with a NotSupportedError and the synchronous API works", async () => {
  // deno-lint-ignore no-explicit-any
  const global = globalThis as any;
  const saved = Object.getOwnPropertyDescriptor(global, "SharedArrayBuffer")!;
  Reflect.deleteProperty(global, "SharedArrayBuffer");
  let error: unknown;
  try {
    if (typeof global.SharedArrayBuffer !== "undefined") throw new Error("this runtime keeps SharedArrayBuffer");
    error = await createAttentionPool({ threads: 2 }).then(() => undefined, (e: unknown) => e);
  } finally {
    Object.defineProperty(global, "SharedArrayBuffer", saved);
  }
  if (
    !(error instanceof DOMException) || error.name !== "NotSupportedError" ||
    !error.message.includes("COOP") && !error.message.includes("Cross-Origin-Opener-Policy")
  ) {
    throw new Error(`expected a NotSupportedError naming cross-origin isolation, got ${String(error)}`);
  }
  const random = rng(37);
  const q = randomTensor(random, [1, 8, 1, 4]);
  if (!flashAttention(q, q, q).data.every(Number.isFinite)) throw new Error("the synchronous call failed");
});
