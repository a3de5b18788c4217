// The IO counters: measured HBM traffic equals the closed form exactly, scales as the paper's
// analysis says, and the arena never holds more than M.

import fc from "fast-check";
import { flashAttention, type FlashAttentionOptions, flashAttentionWithKvCache, type Mask } from "../mod.ts";
import { flashAttentionIo, standardAttentionIo } from "../src/io.ts";
import { runForward } from "../src/_forward.ts";
import { readStats } from "../src/_stats.ts";
import { validateAttention } from "../src/_validate.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import { randomTensor, rng, test } from "./_util.ts";

const kernels = loadKernels();

interface IoCase {
  B: number;
  H: number;
  Hkv: number;
  Nq: number;
  Nk: number;
  d: number;
  dv: number;
  sramBytes: number;
  visibility: "none" | "causal" | "window";
  window: [number, number];
  returnLse: boolean;
  alibi: boolean;
  mask: "none" | "f32" | "u8";
  seed: number;
}

const caseArbitrary = fc.record({
  B: fc.integer({ min: 1, max: 2 }),
  Hkv: fc.integer({ min: 1, max: 3 }),
  group: fc.integer({ min: 1, max: 3 }),
  Nq: fc.integer({ min: 1, max: 200 }),
  Nk: fc.integer({ min: 1, max: 200 }),
  d: fc.integer({ min: 1, max: 96 }),
  dv: fc.integer({ min: 1, max: 96 }),
  arena: fc.double({ min: 0, max: 1, noNaN: true }),
  visibility: fc.constantFrom("none" as const, "causal" as const, "window" as const),
  window: fc.tuple(fc.integer({ min: -1, max: 60 }), fc.integer({ min: -1, max: 60 })),
  returnLse: fc.boolean(),
  alibi: fc.boolean(),
  mask: fc.constantFrom("none" as const, "f32" as const, "u8" as const),
  seed: fc.integer(),
}).map((r): IoCase => {
  const masked = r.mask !== "none";
  const smallest = kernels.arenaBytes(8, 4, r.d, r.dv, masked);
  return {
    ...r,
    H: r.Hkv * r.group,
    sramBytes: Math.floor(smallest + r.arena ** 2 * (256 * 1024 - smallest)),
  };
});

/** A mask that never blocks a whole tile: finite biases, or booleans that are all "attend". */
function openMask(c: IoCase): Mask | undefined {
  if (c.mask === "none") return undefined;
  const n = c.Nq * c.Nk;
  if (c.mask === "u8") return { data: new Uint8Array(n).fill(1), shape: [c.Nq, c.Nk] };
  const random = rng(c.seed ^ 0x55);
  return { data: Float32Array.from({ length: n }, () => random() - 0.5), shape: [c.Nq, c.Nk] };
}

function run(c: IoCase) {
  const random = rng(c.seed);
  const q = randomTensor(random, [c.B, c.Nq, c.H, c.d]);
  const k = randomTensor(random, [c.B, c.Nk, c.Hkv, c.d]);
  const v = randomTensor(random, [c.B, c.Nk, c.Hkv, c.dv]);
  const options: FlashAttentionOptions = {
    sramBytes: c.sramBytes,
    returnLse: c.returnLse,
    causal: c.visibility === "causal",
    windowSize: c.visibility === "window" ? c.window : undefined,
    alibiSlopes: c.alibi ? Float32Array.from({ length: c.H }, (_, h) => 0.1 * (h + 1)) : undefined,
    mask: openMask(c),
  };
  return { q, k, v, options };
}

function expected(c: IoCase) {
  return flashAttentionIo(
    { B: c.B, H: c.H, Hkv: c.Hkv, Nq: c.Nq, Nk: c.Nk, d: c.d, dv: c.dv },
    {
      sramBytes: c.sramBytes,
      returnLse: c.returnLse,
      causal: c.visibility === "causal",
      windowSize: c.visibility === "window" ? c.window : undefined,
      maskElementBytes: c.mask === "none" ? 0 : c.mask === "u8" ? 1 : 4,
      alibi: c.alibi,
    },
  );
}

function assertSameIo(where: string, measured: Record<string, unknown>, closed: Record<string, unknown>): void {
  for (const key of ["read", "written", "totalBytes", "Br", "Bc", "Tr", "Tc", "tilesComputed", "tilesSkipped"]) {
    const a = JSON.stringify(measured[key]);
    const b = JSON.stringify(closed[key]);
    if (a !== b) throw new Error(`${where}: ${key} measured ${a}, closed form ${b}`);
  }
}

test("the measured HBM traffic equals flashAttentionIo's closed form byte for byte", () => {
  fc.assert(
    fc.property(caseArbitrary, (c) => {
      const { q, k, v, options } = run(c);
      const stats = flashAttention(q, k, v, { ...options, stats: true }).stats!;
      assertSameIo(JSON.stringify(c), { ...stats }, { ...expected(c) });
    }),
    { seed: 0x10, numRuns: 120 },
  );
});

test("streaming heads and chunks through HBM moves exactly the bytes of the closed form too", () => {
  fc.assert(
    fc.property(caseArbitrary, (c) => {
      const { q, k, v, options } = run(c);
      const problem = validateAttention(q, k, v, { ...options });
      const packed = kernels.blockSizes(c.sramBytes, c.d, c.dv, c.mask !== "none");
      const blocks = { sramBytes: c.sramBytes, Br: packed >>> 16, Bc: packed & 0xffff };
      kernels.resetCounters();
      runForward(kernels, problem, { ...blocks, out: undefined, numSplits: 1, slabBudgetBytes: 0 });
      assertSameIo(`streamed ${JSON.stringify(c)}`, { ...readStats(kernels, problem, blocks) }, { ...expected(c) });
    }),
    { seed: 0x11, numRuns: 60 },
  );
});

test("a mask that blocks whole tiles skips them: K and V are not read for those tiles", () => {
  const [Nq, Nk, d] = [64, 256, 32];
  const sramBytes = 32 * 1024;
  const random = rng(3);
  const q = randomTensor(random, [1, Nq, 1, d]);
  const k = randomTensor(random, [1, Nk, 1, d]);
  const v = randomTensor(random, [1, Nk, 1, d]);
  const Bc = kernels.blockSizes(sramBytes, d, d, true) & 0xffff;
  // Only keys of the first block are open.
  const mask = { data: Uint8Array.from({ length: Nq * Nk }, (_, i) => (i % Nk) < Bc ? 1 : 0), shape: [Nq, Nk] };
  const stats = flashAttention(q, k, v, { mask, sramBytes, stats: true }).stats!;
  const open = flashAttentionIo({ B: 1, H: 1, Nq, Nk, d }, { sramBytes, maskElementBytes: 1 });
  if (stats.read.k !== open.Tr * Bc * d * 4) {
    throw new Error(`K read ${stats.read.k}, expected ${open.Tr * Bc * d * 4}`);
  }
  if (stats.tilesComputed !== open.Tr) throw new Error(`tiles computed ${stats.tilesComputed}`);
  if (stats.tilesSkipped !== open.Tr * (open.Tc - 1)) throw new Error(`tiles skipped ${stats.tilesSkipped}`);
  if (stats.read.mask !== open.read.mask) throw new Error("every mask tile is still read once");
});

test("at fixed N and d, HBM traffic falls as the arena grows (K/V re-reads ∝ 1/Br) until Q fits at once", () => {
  const [N, d] = [1024, 64];
  const shape = { B: 1, H: 1, Nq: N, Nk: N, d };
  let previous = Infinity;
  let reachedOneBlock = false;
  for (let sramBytes = 16 * 1024; sramBytes <= 1024 * 1024; sramBytes *= 2) {
    const io = flashAttentionIo(shape, { sramBytes });
    // K and V are read once per query block: exactly Tr·N·(d + dv)·4 bytes.
    if (io.read.k + io.read.v !== io.Tr * N * 2 * d * 4) throw new Error(`M = ${sramBytes}: K/V bytes`);
    if (io.Tr !== Math.ceil(N / io.Br)) throw new Error(`M = ${sramBytes}: Tr ${io.Tr}, Br ${io.Br}`);
    if (!(io.totalBytes <= previous)) throw new Error(`M = ${sramBytes}: traffic grew to ${io.totalBytes}`);
    if (io.Tr === 1) {
      // Q fits at once: the minimum, every tensor moved once.
      const once = 4 * N * (d + d + d + d);
      if (io.totalBytes !== once) throw new Error(`M = ${sramBytes}: ${io.totalBytes} ≠ ${once}`);
      reachedOneBlock = true;
    }
    previous = io.totalBytes;
  }
  if (!reachedOneBlock) throw new Error("the sweep never reached Tr = 1");
  // Doubling the arena roughly halves the K/V term while Tr is large (at small arenas Bc shrinks
  // first, so the 1/M regime starts once Bc has reached its target of 64).
  const small = flashAttentionIo(shape, { sramBytes: 128 * 1024 });
  const large = flashAttentionIo(shape, { sramBytes: 256 * 1024 });
  const ratio = (small.read.k + small.read.v) / (large.read.k + large.read.v);
  if (!(ratio > 1.6 && ratio < 2.6)) throw new Error(`K/V traffic ratio for 2× arena: ${ratio}`);
});

test("at fixed M traffic grows as N² for both; standard's constant is larger, matching the closed forms", () => {
  const d = 64;
  const sramBytes = 64 * 1024;
  const random = rng(4);
  let previous: { flash: number; standard: number } | undefined;
  for (const N of [512, 1024, 2048]) {
    const q = randomTensor(random, [1, N, 1, d]);
    const measured = flashAttention(q, q, q, { sramBytes, stats: true }).stats!;
    const shape = { B: 1, H: 1, Nq: N, Nk: N, d };
    const closed = flashAttentionIo(shape, { sramBytes });
    const standard = standardAttentionIo(shape);
    if (measured.totalBytes !== closed.totalBytes) throw new Error(`N = ${N}: measured ≠ closed form`);
    if (!(standard.totalBytes > measured.totalBytes)) throw new Error(`N = ${N}: standard is not larger`);
    if (previous) {
      // Doubling N: the N² terms quadruple; the linear terms only double, so the ratio is in (2, 4].
      const flashGrowth = measured.totalBytes / previous.flash;
      const standardGrowth = standard.totalBytes / previous.standard;
      if (!(flashGrowth > 3 && flashGrowth <= 4)) throw new Error(`flash grew ${flashGrowth}× from N/2 to N = ${N}`);
      if (!(standardGrowth > 3 && standardGrowth <= 4)) throw new Error(`standard grew ${standardGrowth}×`);
    }
    previous = { flash: measured.totalBytes, standard: standard.totalBytes };
  }
});

test("standardAttentionIo counts Algorithm 0: read Q, K, write S; read S, write P; read P, V, write O", () => {
  const io = standardAttentionIo({ B: 2, H: 3, Nq: 10, Nk: 20, d: 8, dv: 4 });
  const heads = 6;
  const reads = heads * (10 * 8 + 20 * 8 + 10 * 20 + 10 * 20 + 20 * 4) * 4;
  const writes = heads * (10 * 20 + 10 * 20 + 10 * 4) * 4;
  if (io.totalBytes !== reads + writes) throw new Error(`${io.totalBytes} ≠ ${reads + writes}`);
});

test("the arena's peak use never exceeds M, for any shape, arena size, option or split count", () => {
  fc.assert(
    fc.property(caseArbitrary, fc.integer({ min: 1, max: 9 }), (c, numSplits) => {
      const { q, k, v, options } = run(c);
      const stats = flashAttention(q, k, v, { ...options, stats: true }).stats!;
      if (!(stats.sramPeakBytes > 0 && stats.sramPeakBytes <= c.sramBytes)) {
        throw new Error(`peak ${stats.sramPeakBytes} > M = ${c.sramBytes} for ${JSON.stringify(c)}`);
      }
      // The KV-cache path with split-KV adds the merge's arena use.
      const cached = flashAttentionWithKvCache(q, k, v, {
        numSplits,
        sramBytes: c.sramBytes,
        mask: options.mask && c.Nq === q.shape[1] ? options.mask : undefined,
        stats: true,
      }).stats!;
      if (!(cached.sramPeakBytes <= c.sramBytes)) throw new Error(`KV cache: peak ${cached.sramPeakBytes}`);
    }),
    { seed: 0x12, numRuns: 60 },
  );
});

test("stats are exact counts, not estimates: Q is read once, O written once, flops counted by the kernel", () => {
  const random = rng(5);
  const [B, Nq, Nk, H, d, dv] = [2, 37, 81, 3, 20, 12];
  const q = randomTensor(random, [B, Nq, H, d]);
  const k = randomTensor(random, [B, Nk, H, d]);
  const v = randomTensor(random, [B, Nk, H, dv]);
  const stats = flashAttention(q, k, v, { stats: true, returnLse: true }).stats!;
  if (stats.read.q !== 4 * B * Nq * H * d) throw new Error(`Q read ${stats.read.q}`);
  if (stats.written.o !== 4 * B * Nq * H * dv) throw new Error(`O written ${stats.written.o}`);
  if (stats.written.lse !== 4 * B * H * Nq) throw new Error(`lse written ${stats.written.lse}`);
  // Every score and value product over visible pairs, at least; padding lanes may add more.
  const useful = 2 * B * H * Nq * Nk * (d + dv);
  if (!(stats.flops >= useful && stats.flops < 3 * useful)) throw new Error(`flops ${stats.flops} vs ${useful}`);
  const without = flashAttention(q, k, v, {}) as { stats?: unknown };
  if (without.stats !== undefined) throw new Error("stats appear without being asked for");
});
