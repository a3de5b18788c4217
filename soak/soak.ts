/**
 * The soak: many random calls in one process, watching what they leave behind.
 *
 * 1. `--calls` (default 20,000) synchronous calls with random shapes and options: forwards (dense
 *    and varlen, every option, 16-bit outputs, `out`, `stats`), decode steps on KV caches that live
 *    in WebAssembly memory (createKvCache, append, flashAttentionWithKvCache, free) and on
 *    caller-owned caches, backwards, and malformed calls that must throw a TypeError or RangeError
 *    (after each, a fixed canary call must repeat its bits).
 * 2. `--pool-calls` (default 2,000) calls of the same kinds on one pool of 2 Workers that takes
 *    every call (none runs inline), its own KV caches included.
 * 3. `--pool-cycles` (default 200) pools created, used once and closed.
 *
 * Measured: the WebAssembly memory's size (the package's single-threaded kernels' memory; the
 * pool's shared memory) after the warm-up and at the end, which must be equal; the JS heap after a
 * forced GC at checkpoints, whose least-squares slope over the checkpoints after the warm-up must
 * not project more than HEAP_BOUND_BYTES of growth; every `--sample`th call of each kind checked
 * against the f64 reference by the tests' tolerance rule (the pool's bitwise against the
 * synchronous call instead); after the pool cycles, the process's threads back to their count
 * before, no pool left reachable after GC, and on Deno no Worker's Web Lock still held.
 *
 * Warm-up: the first WARMUP_SHARE of each phase's calls. Every size the generator draws is bounded
 * (see SIZES), so by then the memory has grown to what the largest calls need; a later growth
 * means something is not released.
 *
 * Usage: `npm run soak` (node --expose-gc), `deno task soak` (--v8-flags=--expose-gc),
 * `bun soak/soak.ts`; flags `--calls N --pool-calls N --pool-cycles N --seed S --sample K`.
 * Prints a table of the figures and "soak: N passed, M failed"; exits 1 on any violation.
 *
 * @module
 */
import { readdirSync } from "node:fs";
import process from "node:process";
import fc from "fast-check";
import {
  type AttentionOutput,
  type AttentionPool,
  createAttentionPool,
  createKvCache,
  flashAttention,
  flashAttentionBackward,
  type FlashAttentionBackwardOptions,
  type FlashAttentionOptions,
  flashAttentionWithKvCache,
  type KvCache,
  type Tensor,
} from "../mod.ts";
import { referenceAttention } from "../src/reference.ts";
import { POOL_MEMORY } from "../src/_workers.ts";
import { POOL_TUNING, startPool } from "../src/pool.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import {
  buildSpec,
  causalArb,
  maskArb,
  type Model,
  softcapArb,
  type Spec,
  specArbitrary,
  varlenInputs,
  windowArb,
} from "../tests/_cases.ts";
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

// ── Settings ─────────────────────────────────────────────────────────────────────────────────

/** Share of each phase's calls that is warm-up: the memory may grow during it, never after. */
const WARMUP_SHARE = 0.1;
/** Heap checkpoints per phase (after a forced GC each). */
const CHECKPOINTS = 20;
/**
 * Most heap growth the fitted slope may project over a phase's calls after the warm-up. Why 2 MiB:
 * with a forced GC before each reading, the heap of a healthy run moves by a few hundred KB from
 * checkpoint to checkpoint (code compiled for rarely taken paths, inline caches, the runtimes' own
 * caches) without a trend; 2 MiB over the 18,000 calls after the default warm-up fails any leak of
 * more than 116 bytes per call, i.e. any retained result (a typed array and its header), closure
 * or promise. Tried: retaining each forward's lse fails it. Fewer calls detect less.
 */
const HEAP_BOUND_BYTES = 2 << 20;
/** Threads the runtime may start or stop on its own during the pool cycles (its GC and compiler helpers). */
const THREAD_SLACK = 4;
/**
 * Pools that may stay reachable after GC: none on V8; 2 on Bun, whose JavaScriptCore scans the
 * native stack conservatively, so a stale word can keep the last pool alive (a leak keeps them all).
 */
// deno-lint-ignore no-explicit-any
const REACHABLE_SLACK = (globalThis as any).Bun ? 2 : 0;

/** The bounds of every size the generator draws. */
const SIZES = { B: 2, Hkv: 2, group: 3, Nq: 48, Nk: 64, d: 40, maxLen: 96, backwardN: 32, backwardD: 24 };

interface Settings {
  calls: number;
  poolCalls: number;
  poolCycles: number;
  seed: number;
  sample: number;
}

function readSettings(argv: string[]): Settings {
  const settings: Settings = { calls: 20_000, poolCalls: 2_000, poolCycles: 200, seed: 13, sample: 20 };
  const names: Record<string, keyof Settings> = {
    "--calls": "calls",
    "--pool-calls": "poolCalls",
    "--pool-cycles": "poolCycles",
    "--seed": "seed",
    "--sample": "sample",
  };
  for (let i = 0; i < argv.length; i += 2) {
    const name = names[argv[i]];
    const value = Number(argv[i + 1]);
    if (name === undefined || !Number.isSafeInteger(value) || value < 0) {
      throw new Error(
        `soak: unknown flag or bad value "${argv[i]} ${argv[i + 1]}"; flags: ${Object.keys(names).join(", ")}`,
      );
    }
    settings[name] = value;
  }
  if (settings.sample < 1) settings.sample = 1;
  return settings;
}

// ── The runtime: forced GC, heap, threads ────────────────────────────────────────────────────

// deno-lint-ignore no-explicit-any
const platform = globalThis as any;
const RUNTIME = platform.Deno ? "deno" : platform.Bun ? "bun" : "node";
const RUNTIME_VERSION = platform.Deno?.version.deno ?? platform.Bun?.version ?? process.versions.node;

/** A full collection, twice with a macrotask between (WeakRefs clear only after the current job). */
async function collect(): Promise<void> {
  for (let i = 0; i < 2; i++) {
    if (platform.Bun) platform.Bun.gc(true);
    else platform.gc();
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
}

/** The heap and the ArrayBuffers' backing stores (`arrayBuffers` where the runtime reports it, else `external`). */
function jsBytes(): number {
  const usage = process.memoryUsage() as { heapUsed: number; arrayBuffers?: number; external?: number };
  return usage.heapUsed + (usage.arrayBuffers ?? usage.external ?? 0);
}

/** Most forced collections one reading may take while the figure still falls. */
const MAX_COLLECTIONS = 8;
/** Bytes a reading lost to the later collections, where that was over 1 MiB (reported as a figure). */
const late: number[] = [];

/**
 * JS memory in use after a forced GC: the heap and the ArrayBuffers' backing stores, which live
 * outside it (a result's Float32Array). Collects again while the figure still falls, and keeps
 * the lowest: V8 frees dead backing stores on a concurrent sweeper, so a reading taken right after
 * a malformed call's 4.5 GB of lazy inputs once still counted them (4.2 GiB at one checkpoint of a
 * CI run, the rest at 10 MiB). A leak is never freed, so it survives the lowest reading.
 */
async function heapAfterGc(): Promise<number> {
  await collect();
  const first = jsBytes();
  let lowest = first;
  for (let i = 1; i < MAX_COLLECTIONS; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    await collect();
    const bytes = jsBytes();
    if (bytes >= lowest) break;
    lowest = bytes;
  }
  if (first - lowest > 1 << 20) late.push(first - lowest);
  return lowest;
}

/** The process's OS threads (Linux's /proc), or NaN where that cannot be read. */
function osThreads(): number {
  try {
    return readdirSync("/proc/self/task").length;
  } catch {
    return NaN;
  }
}

// ── Checks and figures ───────────────────────────────────────────────────────────────────────

const checks: { name: string; ok: boolean; detail: string }[] = [];
const figures: [string, string][] = [];

function check(name: string, ok: boolean, detail: string): void {
  checks.push({ name, ok, detail });
  console.log(`${ok ? "ok  " : "FAIL"} ${name}: ${detail}`);
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(2)} MiB`;
const int = (n: number) => n.toLocaleString("en-US");

/** Least-squares slope of ys over xs. */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  const mx = xs.reduce((a, x) => a + x, 0) / n;
  const my = ys.reduce((a, y) => a + y, 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) ** 2;
  }
  return sxx === 0 ? 0 : sxy / sxx;
}

/**
 * A phase's memory record: the WebAssembly memory's size and the heap after GC at checkpoints.
 * `judge` checks that neither grew after the warm-up.
 */
class Watch {
  readonly points: { call: number; heap: number; wasm: number }[] = [];
  warmWasm = 0;
  warmHeap = 0;
  maxWasm = 0;
  lastGrowth = 0;
  #wasm: () => number;
  #seen = 0;

  constructor(wasm: () => number) {
    this.#wasm = wasm;
  }

  /** Call after every call: notes the memory's size (cheap), and when it last grew. */
  note(call: number): void {
    const bytes = this.#wasm();
    if (bytes > this.#seen) {
      this.#seen = bytes;
      this.lastGrowth = call;
    }
    this.maxWasm = Math.max(this.maxWasm, bytes);
  }

  async checkpoint(call: number, warm: boolean): Promise<void> {
    const heap = await heapAfterGc();
    const wasm = this.#wasm();
    this.points.push({ call, heap, wasm });
    if (warm) {
      this.warmWasm = wasm;
      this.warmHeap = heap;
    }
  }

  judge(phase: string, total: number, warmup: number): void {
    const end = this.points[this.points.length - 1];
    figures.push(
      [
        `${phase}: WebAssembly memory after warm-up (call ${int(warmup)}) / end`,
        `${int(this.warmWasm)} / ${int(end.wasm)} bytes (high-water ${mib(this.maxWasm)}, last grew at call ${
          int(this.lastGrowth)
        })`,
      ],
      [`${phase}: heap after GC, after warm-up / end`, `${mib(this.warmHeap)} / ${mib(end.heap)}`],
    );
    check(
      `${phase}: the WebAssembly memory does not grow after the warm-up`,
      end.wasm === this.warmWasm && this.maxWasm === this.warmWasm,
      `${int(this.warmWasm)} bytes after call ${int(warmup)}, ${int(end.wasm)} at the end, high-water ${
        int(this.maxWasm)
      }; last growth at call ${int(this.lastGrowth)}`,
    );
    const after = this.points.filter((p) => p.call >= warmup);
    if (process.env.SOAK_POINTS) {
      console.log(
        phase,
        after.map((p) => `${p.call}:${(p.heap / 1024).toFixed(0)}K`).join(" "),
      );
    }
    const perCall = slope(after.map((p) => p.call), after.map((p) => p.heap));
    const projected = perCall * (total - warmup);
    figures.push([
      `${phase}: heap slope after warm-up`,
      `${perCall.toFixed(2)} bytes/call (${mib(projected)} projected)`,
    ]);
    check(
      `${phase}: the JS heap does not grow (fitted slope × calls ≤ ${mib(HEAP_BOUND_BYTES)})`,
      projected <= HEAP_BOUND_BYTES,
      `${perCall.toFixed(2)} bytes per call over ${after.length} checkpoints, ${mib(projected)} over ${
        int(total - warmup)
      } calls; ${mib(this.warmHeap)} → ${mib(end.heap)}`,
    );
  }
}

// ── Random calls ─────────────────────────────────────────────────────────────────────────────

const dim = fc.integer({ min: 1, max: SIZES.d });
const MODEL: Model<Spec> = {
  B: fc.integer({ min: 1, max: SIZES.B }),
  Hkv: fc.integer({ min: 1, max: SIZES.Hkv }),
  group: fc.integer({ min: 1, max: SIZES.group }),
  Nq: fc.integer({ min: 1, max: SIZES.Nq }),
  Nk: fc.integer({ min: 1, max: SIZES.Nk - 1 }), // specArbitrary may add 1
  sameLength: fc.boolean(),
  d: dim,
  dv: dim,
  layout: fc.constantFrom("bshd" as const, "bhsd" as const),
  causal: causalArb,
  window: fc.option(windowArb(SIZES.Nk), { nil: null }),
  // A positive scale that f32 rounds to 0 is refused (a RangeError, validate_test): such draws become 0.
  scale: fc.option(fc.double({ min: 0, max: 2, noNaN: true }).map((x) => Math.fround(x) === 0 ? 0 : x), { nil: null }),
  alibi: fc.constantFrom("none" as const, "H" as const, "BH" as const),
  softcap: fc.oneof(fc.constant(0), softcapArb),
  mask: fc.option(maskArb, { nil: null }),
  seqLens: fc.boolean(),
  amplitude: fc.constantFrom(1, 3),
  seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
};
const SPEC = specArbitrary(MODEL, {});
const BACKWARD_SPEC = specArbitrary(MODEL, {
  B: fc.constant(1),
  Nq: fc.integer({ min: 1, max: SIZES.backwardN }),
  Nk: fc.integer({ min: 1, max: SIZES.backwardN - 1 }),
  d: fc.integer({ min: 1, max: SIZES.backwardD }),
  dv: fc.integer({ min: 1, max: SIZES.backwardD }),
});

/** One spec of `arb`, drawn from the stream `random`. */
const draw = (arb: fc.Arbitrary<Spec>, random: () => number): Spec =>
  fc.sample(arb, { seed: Math.floor(random() * 2 ** 31), numRuns: 1 })[0];

/** The options the reference takes: the semantic ones. */
function semantic(options: FlashAttentionOptions): FlashAttentionOptions {
  const { out: _o, outDtype: _d, sramBytes: _s, stats: _t, ...rest } = options;
  return rest;
}

/** O and lse of a forward against the f64 reference, by the tests' rule (tests/_util.ts). */
function checkForward(
  what: string,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options: FlashAttentionOptions,
  o: AttentionOutput,
) {
  const sem = { ...semantic(options), returnLse: true };
  const reference = referenceAttention(q, k, v, sem);
  const naive = naiveAttentionF32(q, k, v, sem);
  assertFlashTolerance(`${what}: O`, o.data as Float32Array, reference.data, naive.data);
  if (o.lse) assertFlashTolerance(`${what}: lse`, o.lse.data, reference.lse!.data, naive.lse);
}

/** Gradients against the f64 oracle by backward_test.ts's rule: 3 × naive f32 error + 2e-6 · max(1, |g|). */
function checkGradients(
  what: string,
  grads: Record<"dq" | "dk" | "dv", Tensor>,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  dO: Tensor,
  options: FlashAttentionOptions,
): void {
  const exact = naiveAttentionBackward(q, k, v, dO, semantic(options) as never, "f64");
  const f32 = naiveAttentionBackward(q, k, v, dO, semantic(options) as never, "f32");
  const names = ["dq", "dk", "dv"] as const;
  const magnitude = Math.max(1, ...names.map((n) => exact[n].reduce((a, x) => Math.max(a, Math.abs(x)), 0)));
  for (const name of names) {
    const error = maxAbsError(grads[name].data, exact[name]);
    const bound = 3 * maxAbsError(f32[name], exact[name]) + 2e-6 * magnitude;
    if (!(error <= bound)) throw new Error(`${what}: ${name} error ${error} exceeds ${bound}`);
  }
}

/** A forward call's extra options: lse, a 16-bit or caller-owned output, a small arena, stats. */
function extras(random: () => number, outLength: number, sampled: boolean): FlashAttentionOptions {
  const options: FlashAttentionOptions = {};
  if (random() < 0.5) options.returnLse = true;
  const r = random();
  // A sampled call's output is compared with another call's: neither 16 bits nor a shared `out`.
  if (!sampled && r < 0.15) options.outDtype = random() < 0.5 ? "bf16" : "f16";
  else if (!sampled && r < 0.3) options.out = new Float32Array(outLength);
  if (random() < 0.2) options.sramBytes = 16 << 10;
  if (random() < 0.1) options.stats = true;
  return options;
}

/** Per-kind counts of a phase. */
type Counts = Record<string, number>;
const bump = (counts: Counts, key: string) => (counts[key] = (counts[key] ?? 0) + 1);

/** A KV cache in use over several decode steps, with the caller-owned copy of what it holds. */
interface Session {
  cache: KvCache;
  B: number;
  H: number;
  Hkv: number;
  d: number;
  dv: number;
  maxLen: number;
  /** [B, maxLen, Hkv, d] copies of the keys and values appended (f32 caches only). */
  kDense: Float32Array | undefined;
  vDense: Float32Array | undefined;
  steps: number;
}

function newSession(random: () => number, make: (config: Parameters<typeof createKvCache>[0]) => KvCache): Session {
  const B = 1 + Math.floor(random() * SIZES.B);
  const Hkv = 1 + Math.floor(random() * SIZES.Hkv);
  const H = Hkv * (1 + Math.floor(random() * SIZES.group));
  const d = 1 + Math.floor(random() * SIZES.d);
  const dv = 1 + Math.floor(random() * SIZES.d);
  const maxLen = 8 + Math.floor(random() * (SIZES.maxLen - 7));
  const dtype = random() < 0.75 ? "f32" as const : "bf16" as const;
  const cache = make({ batch: B, maxLen, kvHeads: Hkv, headDim: d, valueDim: dv, dtype });
  const dense = dtype === "f32";
  return {
    cache,
    B,
    H,
    Hkv,
    d,
    dv,
    maxLen,
    kDense: dense ? new Float32Array(B * maxLen * Hkv * d) : undefined,
    vDense: dense ? new Float32Array(B * maxLen * Hkv * dv) : undefined,
    steps: 0,
  };
}

/** Appends 1–4 rows (ragged now and then) to a session's cache and its dense copy. */
function appendStep(random: () => number, s: Session): void {
  const room = Math.min(...Array.from({ length: s.B }, (_, b) => s.maxLen - s.cache.length(b)));
  const Nnew = Math.min(room, 1 + Math.floor(random() * 4));
  if (Nnew === 0) return;
  const kNew = randomTensor(random, [s.B, Nnew, s.Hkv, s.d]);
  const vNew = randomTensor(random, [s.B, Nnew, s.Hkv, s.dv]);
  const lengths = random() < 0.3
    ? Int32Array.from({ length: s.B }, () => Math.floor(random() * (Nnew + 1)))
    : undefined;
  const at = Array.from({ length: s.B }, (_, b) => s.cache.length(b));
  s.cache.append(kNew, vNew, lengths);
  if (!s.kDense || !s.vDense) return;
  for (let b = 0; b < s.B; b++) {
    const rows = lengths ? lengths[b] : Nnew;
    for (const [dense, t, D] of [[s.kDense, kNew, s.d], [s.vDense, vNew, s.dv]] as const) {
      // [B, Nnew, Hkv, D] rows into [B, maxLen, Hkv, D] at the entry's length.
      const row = s.Hkv * D;
      dense.set(t.data.subarray(b * Nnew * row, (b * Nnew + rows) * row), (b * s.maxLen + at[b]) * row);
    }
  }
}

/** The session's caller-owned form: caches, lengths. */
function denseOf(s: Session): { kCache: Tensor; vCache: Tensor; cacheSeqLens: Int32Array } {
  return {
    kCache: { data: s.kDense!, shape: [s.B, s.maxLen, s.Hkv, s.d] },
    vCache: { data: s.vDense!, shape: [s.B, s.maxLen, s.Hkv, s.dv] },
    cacheSeqLens: Int32Array.from({ length: s.B }, (_, b) => s.cache.length(b)),
  };
}

// ── Malformed calls ──────────────────────────────────────────────────────────────────────────

type ErrorClass = typeof TypeError | typeof RangeError;

/** The calls a phase makes: the synchronous functions, or a pool's (which return promises). */
interface Api {
  // deno-lint-ignore no-explicit-any
  flashAttention(...args: any[]): unknown;
  // deno-lint-ignore no-explicit-any
  flashAttentionWithKvCache(...args: any[]): unknown;
  // deno-lint-ignore no-explicit-any
  flashAttentionBackward(...args: any[]): unknown;
  createKvCache(config: Parameters<typeof createKvCache>[0]): KvCache;
}

const SYNC: Api = { flashAttention, flashAttentionWithKvCache, flashAttentionBackward, createKvCache };

/**
 * One malformed call built from a valid spec: the function that makes it and the class it must
 * throw (ShapeError is a TypeError). `huge` calls use 2.25 GB inputs that no one writes
 * (allocated lazily), so they are drawn rarely.
 */
function malformed(
  api: Api,
  random: () => number,
  spec: Spec,
  session: Session | undefined,
): [string, () => unknown, ErrorClass] {
  const { q, k, v, options } = buildSpec(spec);
  const cases: [string, () => unknown, ErrorClass][] = [
    [
      "k of another head dim",
      () => api.flashAttention(q, { data: k.data, shape: [...k.shape.slice(0, 3), k.shape[3] + 1] }, v),
      TypeError,
    ],
    [
      "q.data too short",
      () => api.flashAttention({ data: q.data.subarray(1), shape: q.shape }, k, v, options),
      TypeError,
    ],
    ["scale NaN", () => api.flashAttention(q, k, v, { ...options, scale: NaN }), RangeError],
    ["an unknown option", () => api.flashAttention(q, k, v, { ...options, isCausal: true } as never), TypeError],
    ["causal 1", () => api.flashAttention(q, k, v, { ...options, causal: 1 } as never), TypeError],
    ["sramBytes 1", () => api.flashAttention(q, k, v, { ...options, sramBytes: 1 }), RangeError],
    [
      "out one element too long",
      () => api.flashAttention(q, k, v, { ...options, out: new Float32Array(q.data.length / spec.d * spec.dv + 1) }),
      TypeError,
    ],
    ["windowSize [-2, 0]", () => api.flashAttention(q, k, v, { ...options, windowSize: [-2, 0] }), RangeError],
    [
      "a mask of the wrong shape",
      () => api.flashAttention(q, k, v, { ...options, mask: { data: new Float32Array(3), shape: [3, 1, 1, 1] } }),
      TypeError,
    ],
    [
      "a KV cache past 4 GiB",
      () => api.createKvCache({ batch: 64, maxLen: 1 << 20, kvHeads: 8, headDim: 128 }),
      RangeError,
    ],
    ["a KV cache of batch 0", () => api.createKvCache({ batch: 0, maxLen: 4, kvHeads: 1, headDim: 4 }), RangeError],
    [
      "backward without lse",
      () => api.flashAttentionBackward(q, k, v, flashAttention(q, k, v, options), q, options),
      TypeError,
    ],
    [
      "a caller-owned cache overflowed by kNew",
      () => {
        const row = randomTensor(random, [spec.B, 2, spec.Hkv, spec.d]);
        const rowV = randomTensor(random, [spec.B, 2, spec.Hkv, spec.dv]);
        const kc = randomTensor(random, [spec.B, 4, spec.Hkv, spec.d]);
        const vc = randomTensor(random, [spec.B, 4, spec.Hkv, spec.dv]);
        const qq = randomTensor(random, [spec.B, 1, spec.Hkv * spec.group, spec.d]);
        return api.flashAttentionWithKvCache(qq, kc, vc, {
          cacheSeqLens: new Int32Array(spec.B).fill(3),
          kNew: row,
          vNew: rowV,
        });
      },
      RangeError,
    ],
  ];
  if (session) {
    const s = session;
    cases.push(
      [
        "q of another batch for a cache",
        () => api.flashAttentionWithKvCache(randomTensor(random, [s.B + 1, 1, s.H, s.d]), s.cache),
        TypeError,
      ],
      [
        "an append past maxLen",
        () =>
          s.cache.append(
            randomTensor(random, [s.B, s.maxLen + 1, s.Hkv, s.d]),
            randomTensor(random, [s.B, s.maxLen + 1, s.Hkv, s.dv]),
          ),
        RangeError,
      ],
    );
  }
  if (random() < 0.005) {
    const huge = (N: number): Tensor => ({ data: new Float32Array(N * 256), shape: [1, N, 1, 256] });
    return ["a forward past 4 GiB", () => api.flashAttention(huge(1), huge(2_200_000), huge(2_200_000)), RangeError];
  }
  return cases[Math.floor(random() * cases.length)];
}

/** Runs a malformed call; a violation unless it throws (or its promise rejects with) an instance of `type`. */
async function expectThrow(what: string, fn: () => unknown, type: ErrorClass): Promise<string> {
  let result: unknown;
  try {
    result = await fn();
  } catch (error) {
    if (error instanceof type) return (error as Error).name;
    throw new Error(`${what}: expected a ${type.name}, got ${String(error)}`);
  }
  throw new Error(`${what}: expected a ${type.name}, but the call returned ${String(result)}`);
}

/**
 * The warm-up's first calls: the largest of each kind the generator can draw (every size at its
 * bound, every option that stages a tensor: a full f32 mask, per-entry ALiBi slopes, lse, the most
 * splits), so that the memory reaches its high-water mark however the random calls fall.
 */
async function largestCalls(api: Api): Promise<void> {
  const random = rng(1);
  const { B, Hkv, group, Nq, Nk, d, maxLen, backwardN, backwardD } = SIZES;
  const H = Hkv * group;
  const spec: Spec = {
    B,
    Hkv,
    group,
    Nq,
    Nk,
    sameLength: false,
    d,
    dv: d,
    layout: "bshd",
    causal: false,
    window: null,
    scale: null,
    alibi: "BH",
    softcap: 0,
    mask: { kind: "f32", rank: 4, keep: [true, true, true, true], blocked: 0 },
    seqLens: false,
    amplitude: 1,
    seed: 1,
  };
  const { q, k, v, options } = buildSpec(spec);
  await api.flashAttention(q, k, v, { ...options, returnLse: true });
  const pairs = Array.from({ length: 3 }, (): [number, number] => [Nq - 1, Nk - 1]);
  const varlen = varlenInputs(random, pairs, Hkv, H, d, d);
  await api.flashAttention(varlen.q, varlen.k, varlen.v, {
    cuSeqlensQ: varlen.cuSeqlensQ,
    cuSeqlensK: varlen.cuSeqlensK,
    returnLse: true,
  });
  const kCache = randomTensor(random, [B, Nk + 4, Hkv, d]);
  const vCache = randomTensor(random, [B, Nk + 4, Hkv, d]);
  const kNew = randomTensor(random, [B, 4, Hkv, d]);
  const vNew = randomTensor(random, [B, 4, Hkv, d]);
  const cacheSeqLens = new Int32Array(B).fill(Nk);
  for (const numSplits of [0, 1, 3]) {
    await api.flashAttentionWithKvCache(randomTensor(random, [B, 4, H, d]), kCache, vCache, {
      cacheSeqLens: cacheSeqLens.slice(),
      kNew,
      vNew,
      numSplits,
      returnLse: true,
    });
  }
  const cache = api.createKvCache({ batch: B, maxLen, kvHeads: Hkv, headDim: d });
  try {
    cache.append(randomTensor(random, [B, maxLen, Hkv, d]), randomTensor(random, [B, maxLen, Hkv, d]));
    for (const numSplits of [0, 1, 2, 3, 4]) {
      await api.flashAttentionWithKvCache(randomTensor(random, [B, 2, H, d]), cache, { numSplits, returnLse: true });
    }
  } finally {
    cache.free();
  }
  const small = buildSpec({ ...spec, B: 1, Nq: backwardN, Nk: backwardN, d: backwardD, dv: backwardD });
  const out = flashAttention(small.q, small.k, small.v, { ...small.options, returnLse: true });
  await api.flashAttentionBackward(small.q, small.k, small.v, out, randomTensor(random, [...out.shape]), small.options);
}

// ── Phase 1: synchronous calls ───────────────────────────────────────────────────────────────

async function soakSync(settings: Settings): Promise<void> {
  const random = rng(settings.seed);
  const kernels = loadKernels();
  const watch = new Watch(() => kernels.memory.buffer.byteLength);
  const counts: Counts = {};
  const total = settings.calls;
  const warmup = Math.floor(total * WARMUP_SHARE);
  const every = Math.max(1, Math.floor(total / CHECKPOINTS));
  // The canary: a fixed call whose bits must not change after any failed call.
  const canaryQ = randomTensor(rng(7), [1, 17, 2, 12]);
  const canaryOptions = { causal: true, returnLse: true } as const;
  const canary = flashAttention(canaryQ, canaryQ, canaryQ, canaryOptions);
  let session: Session | undefined;
  const started = performance.now();
  await largestCalls(SYNC);
  watch.note(0);
  await watch.checkpoint(0, warmup === 0);
  for (let call = 1; call <= total; call++) {
    const r = random();
    const kind = r < 0.4
      ? "forward"
      : r < 0.45
      ? "varlen"
      : r < 0.7
      ? "decode"
      : r < 0.75
      ? "caller cache"
      : r < 0.85
      ? "backward"
      : "malformed";
    const n = bump(counts, kind);
    const sampled = n % settings.sample === 0;
    try {
      if (kind === "forward") {
        const spec = draw(SPEC, random);
        const { q, k, v, options } = buildSpec(spec);
        const outLength = spec.B * spec.Nq * spec.Hkv * spec.group * spec.dv;
        const all = { ...options, ...extras(random, outLength, sampled) };
        const o = flashAttention(q, k, v, all);
        if (sampled) checkForward(`call ${call} (forward)`, q, k, v, all, o), bump(counts, "sampled");
      } else if (kind === "varlen") {
        const spec = draw(SPEC, random);
        const pairs = Array.from({ length: 1 + Math.floor(random() * 3) }, (): [number, number] => [
          Math.floor(random() * SIZES.Nq),
          Math.floor(random() * SIZES.Nk),
        ]);
        const { q, k, v, cuSeqlensQ, cuSeqlensK } = varlenInputs(
          random,
          pairs,
          spec.Hkv,
          spec.Hkv * spec.group,
          spec.d,
          spec.dv,
        );
        const options: FlashAttentionOptions = {
          cuSeqlensQ,
          cuSeqlensK,
          causal: spec.causal,
          returnLse: random() < 0.5,
        };
        if (spec.softcap) options.softcap = spec.softcap;
        const o = flashAttention(q, k, v, options);
        if (sampled) checkForward(`call ${call} (varlen)`, q, k, v, options, o), bump(counts, "sampled");
      } else if (kind === "decode") {
        if (session === undefined || session.steps >= 24) {
          session?.cache.free();
          session = newSession(random, createKvCache);
        }
        const s = session;
        s.steps++;
        appendStep(random, s);
        const q = randomTensor(random, [s.B, 1 + Math.floor(random() * 2), s.H, s.d]);
        const options = { causal: random() < 0.7, numSplits: Math.floor(random() * 5), returnLse: random() < 0.5 };
        const o = flashAttentionWithKvCache(q, s.cache, options);
        if (sampled && s.kDense) {
          // The cache gives the bits of its caller-owned form, which the reference checks.
          const { kCache, vCache, cacheSeqLens } = denseOf(s);
          assertSameOutput(
            `call ${call} (decode vs caller-owned)`,
            o,
            flashAttentionWithKvCache(q, kCache, vCache, { ...options, cacheSeqLens }),
          );
          const seqLensK = cacheSeqLens;
          checkForward(`call ${call} (decode)`, q, kCache, vCache, { causal: options.causal, seqLensK }, o);
          bump(counts, "sampled");
        }
      } else if (kind === "caller cache") {
        const spec = draw(SPEC, random);
        const H = spec.Hkv * spec.group;
        const maxLen = spec.Nk + 4;
        const kCache = randomTensor(random, [spec.B, maxLen, spec.Hkv, spec.d]);
        const vCache = randomTensor(random, [spec.B, maxLen, spec.Hkv, spec.dv]);
        const Nnew = 1 + Math.floor(random() * 4);
        const cacheSeqLens = Int32Array.from({ length: spec.B }, () => Math.floor(random() * (maxLen - Nnew + 1)));
        const kNew = randomTensor(random, [spec.B, Nnew, spec.Hkv, spec.d]);
        const vNew = randomTensor(random, [spec.B, Nnew, spec.Hkv, spec.dv]);
        const q = randomTensor(random, [spec.B, Nnew, H, spec.d]);
        const options = { cacheSeqLens, kNew, vNew, causal: spec.causal, numSplits: Math.floor(random() * 4) };
        const o = flashAttentionWithKvCache(q, kCache, vCache, options);
        if (sampled) {
          const seqLensK = Int32Array.from(cacheSeqLens, (n) => n + Nnew);
          checkForward(`call ${call} (caller cache)`, q, kCache, vCache, { causal: spec.causal, seqLensK }, o);
          bump(counts, "sampled");
        }
      } else if (kind === "backward") {
        const spec = draw(BACKWARD_SPEC, random);
        const { q, k, v, options } = buildSpec(spec);
        const out = flashAttention(q, k, v, { ...options, returnLse: true });
        const dOut = randomTensor(random, [...out.shape]);
        const grads = flashAttentionBackward(q, k, v, out, dOut, semantic(options) as FlashAttentionBackwardOptions);
        if (sampled) checkGradients(`call ${call} (backward)`, grads, q, k, v, dOut, options), bump(counts, "sampled");
      } else {
        const [what, fn, type] = malformed(SYNC, random, draw(SPEC, random), session);
        bump(counts, `threw ${await expectThrow(`call ${call} (${what})`, fn, type)}`);
        const again = flashAttention(canaryQ, canaryQ, canaryQ, canaryOptions);
        assertBitwiseEqual(`call ${call}: the canary after "${what}"`, again.data, canary.data);
        assertBitwiseEqual(`call ${call}: the canary's lse after "${what}"`, again.lse.data, canary.lse.data);
      }
    } catch (error) {
      bump(counts, "violations");
      if ((counts.violations ?? 0) <= 5) console.log(`FAIL call ${call} (${kind}): ${(error as Error).stack}`);
    }
    watch.note(call);
    if (call % every === 0 || call === warmup || call === total) await watch.checkpoint(call, call === warmup);
  }
  session?.cache.free();
  const seconds = (performance.now() - started) / 1000;
  const thrown = Object.entries(counts).filter(([key]) => key.startsWith("threw")).sort().map(([key, n]) =>
    `${int(n)} ${key.slice(6)}`
  );
  figures.push(
    ["sync: calls", `${int(total)} in ${seconds.toFixed(1)} s`],
    [
      "sync: by kind",
      ["forward", "varlen", "decode", "caller cache", "backward", "malformed"].map((k) => `${k} ${int(counts[k] ?? 0)}`)
        .join(", "),
    ],
    ["sync: malformed calls that threw", thrown.join(", ") || "none"],
    [
      "sync: sampled against the f64 reference",
      `${int(counts.sampled ?? 0)} (every ${settings.sample}th of each kind)`,
    ],
  );
  check(
    "sync: every call gave a checked result or threw the expected error",
    (counts.violations ?? 0) === 0,
    `${int(counts.violations ?? 0)} violations`,
  );
  watch.judge("sync", total, warmup);
}

// ── Phase 2: calls on one pool ───────────────────────────────────────────────────────────────

const memoryOf = (pool: AttentionPool): WebAssembly.Memory =>
  (pool as unknown as { [POOL_MEMORY](): WebAssembly.Memory })[POOL_MEMORY]();

async function soakPool(settings: Settings): Promise<void> {
  const random = rng(settings.seed + 1);
  // Every call goes to the Workers: the default pool would run these small calls inline.
  const pool = await startPool(2, { ...POOL_TUNING, inlineFlops: 0 });
  const watch = new Watch(() => memoryOf(pool).buffer.byteLength);
  const api: Api = {
    flashAttention: (...args) => pool.flashAttention(...(args as Parameters<typeof flashAttention>)),
    flashAttentionWithKvCache: (...args) => (pool.flashAttentionWithKvCache as (...a: unknown[]) => unknown)(...args),
    flashAttentionBackward: (...args) =>
      pool.flashAttentionBackward(...(args as Parameters<typeof flashAttentionBackward>)),
    createKvCache: (config) => pool.createKvCache(config),
  };
  const counts: Counts = {};
  const total = settings.poolCalls;
  const warmup = Math.floor(total * WARMUP_SHARE);
  const every = Math.max(1, Math.floor(total / CHECKPOINTS));
  const canaryQ = randomTensor(rng(7), [1, 17, 2, 12]);
  const canary = flashAttention(canaryQ, canaryQ, canaryQ, { causal: true });
  let session: Session | undefined;
  const started = performance.now();
  try {
    await largestCalls(api);
    watch.note(0);
    await watch.checkpoint(0, warmup === 0);
    for (let call = 1; call <= total; call++) {
      const r = random();
      const kind = r < 0.5 ? "forward" : r < 0.75 ? "decode" : r < 0.85 ? "backward" : "malformed";
      const n = bump(counts, kind);
      const sampled = n % settings.sample === 0;
      try {
        if (kind === "forward") {
          const spec = draw(SPEC, random);
          const { q, k, v, options } = buildSpec(spec);
          const outLength = spec.B * spec.Nq * spec.Hkv * spec.group * spec.dv;
          const all = { ...options, ...extras(random, outLength, sampled) };
          const o = await pool.flashAttention(q, k, v, all);
          if (sampled) {
            assertSameOutput(`pool call ${call} (forward)`, o, flashAttention(q, k, v, all)), bump(counts, "sampled");
          }
        } else if (kind === "decode") {
          if (session === undefined || session.steps >= 24) {
            session?.cache.free();
            session = newSession(random, (config) => pool.createKvCache(config));
          }
          const s = session;
          s.steps++;
          appendStep(random, s);
          const q = randomTensor(random, [s.B, 1 + Math.floor(random() * 2), s.H, s.d]);
          // An explicit split count: the pool's automatic choice may differ from the synchronous one.
          const options = {
            causal: random() < 0.7,
            numSplits: 1 + Math.floor(random() * 4),
            returnLse: random() < 0.5,
          };
          const o = await pool.flashAttentionWithKvCache(q, s.cache, options);
          if (sampled && s.kDense) {
            const { kCache, vCache, cacheSeqLens } = denseOf(s);
            const expected = flashAttentionWithKvCache(q, kCache, vCache, { ...options, cacheSeqLens });
            assertSameOutput(`pool call ${call} (decode)`, o, expected);
            bump(counts, "sampled");
          }
        } else if (kind === "backward") {
          const spec = draw(BACKWARD_SPEC, random);
          const { q, k, v, options } = buildSpec(spec);
          const out = flashAttention(q, k, v, { ...options, returnLse: true });
          const dOut = randomTensor(random, [...out.shape]);
          const grads = await pool.flashAttentionBackward(
            q,
            k,
            v,
            out,
            dOut,
            semantic(options) as FlashAttentionBackwardOptions,
          );
          if (sampled) {
            const expected = flashAttentionBackward(
              q,
              k,
              v,
              out,
              dOut,
              semantic(options) as FlashAttentionBackwardOptions,
            );
            for (const name of ["dq", "dk", "dv"] as const) {
              assertBitwiseEqual(`pool call ${call} (backward): ${name}`, grads[name].data, expected[name].data);
            }
            bump(counts, "sampled");
          }
        } else {
          const [what, fn, type] = malformed(api, random, draw(SPEC, random), session);
          bump(counts, `threw ${await expectThrow(`pool call ${call} (${what})`, fn, type)}`);
          const again = await pool.flashAttention(canaryQ, canaryQ, canaryQ, { causal: true });
          assertBitwiseEqual(`pool call ${call}: the canary after "${what}"`, again.data, canary.data);
        }
      } catch (error) {
        bump(counts, "violations");
        if ((counts.violations ?? 0) <= 5) console.log(`FAIL pool call ${call} (${kind}): ${(error as Error).stack}`);
      }
      watch.note(call);
      if (call % every === 0 || call === warmup || call === total) await watch.checkpoint(call, call === warmup);
    }
    session?.cache.free();
  } finally {
    await pool.close();
  }
  const seconds = (performance.now() - started) / 1000;
  const thrown = Object.entries(counts).filter(([key]) => key.startsWith("threw")).sort().map(([key, n]) =>
    `${int(n)} ${key.slice(6)}`
  );
  figures.push(
    ["pool: calls (2 Workers, every call dispatched)", `${int(total)} in ${seconds.toFixed(1)} s`],
    [
      "pool: by kind",
      ["forward", "decode", "backward", "malformed"].map((k) => `${k} ${int(counts[k] ?? 0)}`).join(", "),
    ],
    ["pool: malformed calls that rejected", thrown.join(", ") || "none"],
    ["pool: sampled, bitwise against the synchronous call", `${int(counts.sampled ?? 0)}`],
  );
  check(
    "pool: every call gave a checked result or rejected with the expected error",
    (counts.violations ?? 0) === 0,
    `${int(counts.violations ?? 0)} violations`,
  );
  watch.judge("pool", total, warmup);
}

// ── Phase 3: pools created and closed ────────────────────────────────────────────────────────

/** Web Locks held or awaited for pool Workers (Deno, browsers: a live Worker holds one), or NaN. */
async function workerLocks(): Promise<number> {
  if (!platform.navigator?.locks) return NaN;
  const { held = [], pending = [] } = await platform.navigator.locks.query();
  return [...held, ...pending].filter((l: { name?: string }) => l.name?.startsWith("flash-attention SM")).length;
}

/**
 * One pool: created, used once on its Workers, closed. Only weak references to it and its memory
 * leave this function, so that nothing of the soak's own keeps the last pool alive.
 */
async function oneCycle(
  cycle: number,
  big: Tensor,
  expected: AttentionOutput,
  pools: WeakRef<object>[],
  memories: WeakRef<object>[],
): Promise<void> {
  const pool = await createAttentionPool({ threads: 2 });
  pools.push(new WeakRef(pool));
  memories.push(new WeakRef(memoryOf(pool)));
  try {
    const o = await pool.flashAttention(big, big, big, { causal: true });
    assertBitwiseEqual(`cycle ${cycle}`, o.data, expected.data);
  } finally {
    await pool.close();
  }
}

async function soakCycles(settings: Settings): Promise<void> {
  const cycles = settings.poolCycles;
  const warmup = Math.min(cycles, Math.max(1, Math.floor(cycles * WARMUP_SHARE)));
  const every = Math.max(1, Math.floor(cycles / CHECKPOINTS));
  // 3.4e7 flops: a default pool hands it to its Workers.
  const big = randomTensor(rng(11), [1, 256, 4, 32]);
  const expected = flashAttention(big, big, big, { causal: true });
  const pools: WeakRef<object>[] = [];
  const memories: WeakRef<object>[] = [];
  const heap: { cycle: number; bytes: number }[] = [];
  let threadsAfterWarmup = NaN;
  let violations = 0;
  const started = performance.now();
  const threadsBefore = osThreads();
  for (let cycle = 1; cycle <= cycles; cycle++) {
    try {
      await oneCycle(cycle, big, expected, pools, memories);
    } catch (error) {
      if (++violations <= 5) console.log(`FAIL cycle ${cycle}: ${(error as Error).stack}`);
    }
    if (cycle === warmup) threadsAfterWarmup = osThreads();
    if (cycle % every === 0 || cycle === warmup || cycle === cycles) heap.push({ cycle, bytes: await heapAfterGc() });
  }
  await collect();
  const threadsEnd = osThreads();
  const alivePools = pools.filter((r) => r.deref() !== undefined).length;
  const aliveMemories = memories.filter((r) => r.deref() !== undefined).length;
  const locks = await workerLocks();
  const seconds = (performance.now() - started) / 1000;
  figures.push(
    ["cycles: pools created, used and closed", `${int(cycles)} in ${seconds.toFixed(1)} s`],
    [
      "cycles: OS threads before / after warm-up / end",
      `${threadsBefore} / ${threadsAfterWarmup} / ${threadsEnd}`,
    ],
    ["cycles: pools / shared memories still reachable after GC", `${alivePools} / ${aliveMemories}`],
  );
  if (!Number.isNaN(locks)) figures.push(["cycles: Web Locks of pool Workers held or awaited", `${locks}`]);
  check("cycles: every pool started, gave the bits and closed", violations === 0, `${violations} violations`);
  check(
    "cycles: no Worker thread left alive (OS threads at the end ≤ after the warm-up + slack)",
    Number.isNaN(threadsEnd) || threadsEnd <= threadsAfterWarmup + THREAD_SLACK,
    Number.isNaN(threadsEnd)
      ? "no /proc/self/task here: not measured"
      : `${threadsEnd} threads at the end, ${threadsAfterWarmup} after ${warmup} cycles (a leaked pool keeps 2)`,
  );
  check(
    `cycles: no pool or shared memory stays reachable after close (slack ${REACHABLE_SLACK})`,
    alivePools <= REACHABLE_SLACK && aliveMemories <= REACHABLE_SLACK,
    `${alivePools} pools, ${aliveMemories} memories of ${cycles} still reachable after GC`,
  );
  if (!Number.isNaN(locks)) {
    check("cycles: no pool Worker holds its Web Lock", locks === 0, `${locks} locks named "flash-attention SM …"`);
  }
  const after = heap.filter((p) => p.cycle >= warmup);
  const perCycle = slope(after.map((p) => p.cycle), after.map((p) => p.bytes));
  const projected = perCycle * (cycles - warmup);
  figures.push([
    "cycles: heap after GC, after warm-up / end",
    `${mib(after[0].bytes)} / ${mib(heap[heap.length - 1].bytes)} (slope ${int(Math.round(perCycle))} bytes/cycle)`,
  ]);
  check(
    `cycles: the JS heap does not grow (fitted slope × cycles ≤ ${mib(HEAP_BOUND_BYTES)})`,
    projected <= HEAP_BOUND_BYTES,
    `${int(Math.round(perCycle))} bytes per cycle, ${mib(projected)} over ${int(cycles - warmup)} cycles`,
  );
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});

async function main(): Promise<void> {
  const settings = readSettings(platform.Deno ? platform.Deno.args : process.argv.slice(2));
  if (!platform.Bun && typeof platform.gc !== "function") {
    throw new Error("soak: forced GC is unavailable: run node with --expose-gc, deno with --v8-flags=--expose-gc");
  }
  console.log(`soak on ${RUNTIME} ${RUNTIME_VERSION}, ${loadKernels().simd} build, seed ${settings.seed}`);
  const started = performance.now();
  if (settings.calls > 0) await soakSync(settings);
  if (settings.poolCalls > 0) await soakPool(settings);
  if (settings.poolCycles > 0) await soakCycles(settings);
  figures.push(
    [
      "heap readings lowered by a later collection (over 1 MiB)",
      late.length === 0 ? "none" : `${late.length}, by up to ${mib(Math.max(...late))}`,
    ],
    ["total time", `${((performance.now() - started) / 1000).toFixed(1)} s`],
  );
  console.log(`\n| figure (${RUNTIME} ${RUNTIME_VERSION}) | value |\n| --- | --- |`);
  for (const [name, value] of figures) console.log(`| ${name} | ${value} |`);
  const failed = checks.filter((c) => !c.ok);
  for (const c of failed) console.log(`FAILED: ${c.name}: ${c.detail}`);
  console.log(`\nsoak: ${checks.length - failed.length} passed, ${failed.length} failed`);
  process.exit(failed.length === 0 ? 0 : 1);
}
