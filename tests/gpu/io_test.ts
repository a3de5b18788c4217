// The WebGPU kernel's counted traffic. Its blocks are checked against the footprint rule as
// src/gpu/_tiling.ts's header states it (recomputed here), its counters against a brute-force
// count over every (query, key) pair written here and against flashAttentionIo given the GPU's
// blocks — the IO theorem's closed form on real workgroup memory — and its u64 counters across
// the 2³² boundary.

import fc from "fast-check";
import type { FlashAttentionOptions, Mask } from "../../mod.ts";
import { flashAttentionIo, type TensorBytes } from "../../src/io.ts";
import { zeroBytes } from "../../src/result.ts";
import { randomTensor, rng } from "../_util.ts";
import { validateForwardCall } from "../../src/_validate.ts";
import { prepareGpuCall, runGpuCall } from "../../src/gpu/_runner.ts";
import { readTargets } from "../../src/gpu/_tiling.ts";
import { COUNTER_SLOTS } from "../../src/gpu/shaders/forward.ts";
import { device, gpuAttention, gpuTest, TILINGS } from "./_gpu.ts";

const roundUp = (x: number, step: number) => Math.ceil(x / step) * step;

/** The workgroup memory of a tiling as the header of src/gpu/_tiling.ts states it. */
function statedFootprint(Br: number, Bc: number, T: number, d: number, dv: number, masked: boolean): number {
  const R = roundUp(
    Math.max(Bc * (roundUp(d, 4) + roundUp(dv, 4)), 4 * Br * T),
    (Bc / T) * (roundUp(d, 4) + roundUp(dv, 4)),
  );
  return 4 * R + (masked ? 16 : 0);
}

/** The stated rule by exhaustive search: the largest Br (target, halved to 8), then the largest Bc (a multiple of T). */
function statedBlocks(
  sramBytes: number,
  d: number,
  dv: number,
  masked: boolean,
  t: { rowsPerWorkgroup: number; threadsPerRow: number; keysPerTile: number },
  maxInvocations: number,
) {
  const T = t.threadsPerRow;
  for (let Br = t.rowsPerWorkgroup; Br >= 8; Br /= 2) {
    if (Br * T > maxInvocations) continue;
    for (let Bc = t.keysPerTile - (t.keysPerTile % T); Bc >= T; Bc -= T) {
      if (statedFootprint(Br, Bc, T, d, dv, masked) <= sramBytes) return { Br, Bc };
    }
  }
  return undefined;
}

gpuTest(
  "GPU tiling: Br and Bc follow the stated rule from the exact workgroup footprint, which never exceeds sramBytes",
  async () => {
    const targets = [
      { rowsPerWorkgroup: 64, threadsPerRow: 4, keysPerTile: 64 },
      ...Object.values(TILINGS),
    ];
    for (const t of targets) {
      const gpu = await gpuAttention(t);
      const limit = gpu.adapter.maxWorkgroupStorageBytes;
      const invocations = Math.min(
        gpu.device.limits.maxComputeInvocationsPerWorkgroup,
        gpu.device.limits.maxComputeWorkgroupSizeX,
      );
      for (const [d, dv] of [[1, 1], [5, 7], [64, 64], [128, 96], [256, 256]]) {
        for (const masked of [false, true]) {
          for (const sramBytes of [64, 1000, 4096, 8192 + 16, 16384, limit]) {
            const stated = statedBlocks(sramBytes, d, dv, masked, t, invocations);
            let got;
            try {
              got = gpu.tiling(d, dv, { sramBytes, masked });
            } catch (error) {
              if (stated !== undefined || !(error instanceof RangeError)) throw error;
              continue;
            }
            const where = JSON.stringify({ t, d, dv, masked, sramBytes });
            if (stated === undefined) throw new Error(`${where}: a tiling ${got.Br} × ${got.Bc} where none fits`);
            if (got.Br !== stated.Br || got.Bc !== stated.Bc) {
              throw new Error(`${where}: ${got.Br} × ${got.Bc}, stated rule ${stated.Br} × ${stated.Bc}`);
            }
            const bytes = statedFootprint(got.Br, got.Bc, t.threadsPerRow, d, dv, masked);
            if (got.sramPeakBytes !== bytes || bytes > sramBytes) throw new Error(`${where}: ${got.sramPeakBytes} B`);
          }
        }
      }
    }
  },
);

// ── Random problems ─────────────────────────────────────────────────────────────────────────────

interface IoCase {
  B: number;
  Hkv: number;
  group: number;
  Nq: number;
  Nk: number;
  causal: false | "bottom-right" | "top-left";
  window: [number, number] | undefined;
  returnLse: boolean;
  alibi: boolean;
  mask: "none" | "f32" | "u8";
  lengths: "dense" | "seqLensK" | "varlen";
  fractions: [number, number][];
  tiling: "tiny" | "small";
  seed: number;
}

const [D, DV] = [5, 7];
const fraction = fc.oneof(fc.constant(0), fc.constant(1), fc.double({ min: 0, max: 1, noNaN: true }));
const cases = fc.record({
  B: fc.integer({ min: 1, max: 2 }),
  Hkv: fc.integer({ min: 1, max: 2 }),
  group: fc.integer({ min: 1, max: 3 }),
  Nq: fc.integer({ min: 1, max: 70 }),
  Nk: fc.integer({ min: 1, max: 70 }),
  causal: fc.constantFrom(false as const, "bottom-right" as const, "top-left" as const),
  window: fc.option(fc.tuple(fc.integer({ min: -1, max: 30 }), fc.integer({ min: -1, max: 30 })), { nil: undefined }),
  returnLse: fc.boolean(),
  alibi: fc.boolean(),
  mask: fc.constantFrom("none" as const, "f32" as const, "u8" as const),
  lengths: fc.constantFrom("dense" as const, "seqLensK" as const, "varlen" as const),
  fractions: fc.array(fc.tuple(fraction, fraction), { minLength: 2, maxLength: 2 }),
  tiling: fc.constant("small" as const), // the variants' kernels; 16 × 16 tiles, many per problem here
  seed: fc.integer(),
}).map((c): IoCase => c.lengths === "varlen" ? { ...c, mask: "none" } : c);

/** Every sequence's (Nq, Nk). */
function sequencesOf(c: IoCase): { Nq: number; Nk: number }[] {
  const entries = c.fractions.slice(0, c.B);
  if (c.lengths === "varlen") {
    const nq = entries.map(([f]) => Math.round(f * c.Nq));
    const nk = entries.map(([, f]) => Math.round(f * c.Nk));
    if (!nq.some((n) => n > 0)) nq[nq.length - 1] = c.Nq;
    if (!nk.some((n) => n > 0)) nk[nk.length - 1] = c.Nk;
    return nq.map((Nq, b) => ({ Nq, Nk: nk[b] }));
  }
  return entries.map(([, f]) => ({ Nq: c.Nq, Nk: c.lengths === "seqLensK" ? Math.round(f * c.Nk) : c.Nk }));
}

const cumulative = (ns: number[]) => Int32Array.from([0, ...ns], ((sum) => (x) => (sum += x))(0));

function lengthOptions(c: IoCase) {
  const seqs = sequencesOf(c);
  if (c.lengths === "seqLensK") return { seqLensK: Int32Array.from(seqs, (s) => s.Nk) };
  if (c.lengths === "varlen") {
    return { cuSeqlensQ: cumulative(seqs.map((s) => s.Nq)), cuSeqlensK: cumulative(seqs.map((s) => s.Nk)) };
  }
  return {};
}

/** An [Nq, Nk] mask that never blanks a whole tile: finite biases, or booleans that all attend. */
function openMask(c: IoCase): Mask | undefined {
  if (c.mask === "none") return undefined;
  const random = rng(c.seed ^ 0x55);
  if (c.mask === "u8") return { data: new Uint8Array(c.Nq * c.Nk).fill(1), shape: [c.Nq, c.Nk] };
  return { data: Float32Array.from({ length: c.Nq * c.Nk }, () => random() - 0.5), shape: [c.Nq, c.Nk] };
}

function run(c: IoCase) {
  const random = rng(c.seed);
  const H = c.Hkv * c.group;
  const seqs = sequencesOf(c);
  const varlen = c.lengths === "varlen";
  const [Nq, Nk] = varlen ? [seqs.reduce((a, s) => a + s.Nq, 0), seqs.reduce((a, s) => a + s.Nk, 0)] : [c.Nq, c.Nk];
  const rows = (N: number) => varlen ? [N] : [c.B, N];
  const options: FlashAttentionOptions = {
    ...lengthOptions(c),
    returnLse: c.returnLse,
    causal: c.causal,
    windowSize: c.window,
    alibiSlopes: c.alibi ? Float32Array.from({ length: H }, (_, h) => 0.1 * (h + 1)) : undefined,
    mask: openMask(c),
  };
  return {
    q: randomTensor(random, [...rows(Nq), H, D]),
    k: randomTensor(random, [...rows(Nk), c.Hkv, D]),
    v: randomTensor(random, [...rows(Nk), c.Hkv, DV]),
    options,
    shape: { B: c.B, H, Hkv: c.Hkv, Nq, Nk, d: D, dv: DV },
  };
}

/** Visibility as FlashAttentionOptions documents it, for a sequence of Nq queries and Nk keys. */
function sees(c: IoCase, Nq: number, Nk: number, i: number, j: number): boolean {
  const [left, windowRight] = c.window ?? [-1, -1];
  const right = c.causal ? 0 : windowRight;
  const offset = c.causal === "top-left" ? 0 : Nk - Nq;
  return j >= 0 && j < Nk && (left < 0 || j >= i + offset - left) && (right < 0 || j <= i + offset + right);
}

/**
 * The documented algorithm's traffic, counted over every (sequence, K/V head, block of Br virtual
 * rows, tile of Bc keys): a tile is computed iff some (row, key) pair in it is visible, and then
 * reads its K, V and mask tiles; each block reads Q (and slopes) and writes O (and lse) once. The
 * flops: each of a row's T threads computes a tile's slice of Bc/T keys iff the row sees a key of
 * that slice, at 2·(Bc/T)·(roundUp(d, 4) + roundUp(dv, 4)) flops (both products, padded dims).
 */
function bruteForce(c: IoCase, Br: number, Bc: number, T: number) {
  const g = c.group;
  const maskBytes = c.mask === "none" ? 0 : c.mask === "u8" ? 1 : 4;
  const read = zeroBytes();
  const written = zeroBytes();
  let [Tr, Tc, tilesComputed, tiles, units] = [0, 0, 0, 0, 0];
  const KPT = Bc / T;
  for (const { Nq, Nk } of sequencesOf(c)) {
    if (Nq === 0) continue;
    const rows = Nq * g;
    Tr = Math.max(Tr, Math.ceil(rows / Br));
    Tc = Math.max(Tc, Math.ceil(Nk / Bc));
    for (let kvh = 0; kvh < c.Hkv; kvh++) {
      tiles += Math.ceil(rows / Br) * Math.ceil(Nk / Bc);
      for (let i0 = 0; i0 < rows; i0 += Br) {
        const rowsHere = Math.min(Br, rows - i0);
        read.q += 4 * rowsHere * D;
        if (c.alibi) read.slopes += 4 * rowsHere;
        written.o += 4 * rowsHere * DV;
        if (c.returnLse) written.lse += 4 * rowsHere;
        for (let j0 = 0; j0 < Nk; j0 += Bc) {
          const cols = Math.min(Bc, Nk - j0);
          let slices = 0;
          for (let r = i0; r < i0 + rowsHere; r++) {
            for (let t = 0; t < T; t++) {
              let any = false;
              for (let j = j0 + t * KPT; j < Math.min(j0 + (t + 1) * KPT, j0 + cols); j++) {
                any ||= sees(c, Nq, Nk, Math.floor(r / g), j);
              }
              if (any) slices++;
            }
          }
          if (slices === 0) continue;
          tilesComputed++;
          units += slices;
          read.k += 4 * cols * D;
          read.v += 4 * cols * DV;
          read.mask += maskBytes * rowsHere * cols;
        }
      }
    }
  }
  const flops = units * 2 * KPT * (roundUp(D, 4) + roundUp(DV, 4));
  return { read, written, Br, Bc, Tr, Tc, tilesComputed, tilesSkipped: tiles - tilesComputed, flops };
}

type Counts = { read: TensorBytes; written: TensorBytes; [key: string]: unknown };

function assertSameIo(where: string, names: [string, string], a: Counts, b: Counts, keys: string[]): void {
  for (const side of ["read", "written"] as const) {
    for (const tensor of Object.keys(zeroBytes()) as (keyof TensorBytes)[]) {
      if (a[side][tensor] !== b[side][tensor]) {
        throw new Error(
          `${where}: ${side}.${tensor} is ${a[side][tensor]} by ${names[0]}, ${b[side][tensor]} by ${names[1]}`,
        );
      }
    }
  }
  for (const key of keys) {
    if (a[key] !== b[key]) throw new Error(`${where}: ${key} is ${a[key]} by ${names[0]}, ${b[key]} by ${names[1]}`);
  }
}

gpuTest(
  "GPU stats equal a brute-force count over every (query, key) pair, and flashAttentionIo with the GPU's blocks",
  async () => {
    await fc.assert(
      fc.asyncProperty(cases, async (c) => {
        const gpu = await gpuAttention(TILINGS[c.tiling]);
        const { q, k, v, options, shape } = run(c);
        const stats = (await gpu.flashAttention(q, k, v, { ...options, stats: true })).stats!;
        const masked = c.mask !== "none";
        const tiling = gpu.tiling(D, DV, { masked });
        const brute = bruteForce(c, tiling.Br, tiling.Bc, TILINGS[c.tiling].threadsPerRow);
        const where = JSON.stringify(c);
        const keys = ["Br", "Bc", "Tr", "Tc", "tilesComputed", "tilesSkipped"];
        assertSameIo(where, ["the GPU", "brute force"], { ...stats }, brute, [...keys, "flops"]);
        const closed = flashAttentionIo(shape, {
          ...lengthOptions(c),
          returnLse: c.returnLse,
          causal: c.causal,
          windowSize: c.window,
          maskElementBytes: c.mask === "none" ? 0 : c.mask === "u8" ? 1 : 4,
          alibi: c.alibi,
          blocks: tiling,
        });
        assertSameIo(where, ["flashAttentionIo", "the GPU"], { ...closed }, { ...stats }, [
          ...keys,
          "sramBytes",
          "sramPeakBytes",
          "totalBytes",
        ]);
      }),
      { seed: 0x6910, numRuns: 60 },
    );
  },
);

gpuTest("GPU stats count 2 bytes per 16-bit element of q, k, v and O, as flashAttentionIo's elementBytes", async () => {
  const gpu = await gpuAttention(TILINGS.small);
  const random = rng(31);
  const bits = (n: number) => Uint16Array.from({ length: n }, () => 0x3c00 + Math.floor(random() * 0x300)); // f16 in [1, 2)
  const [B, Nq, Nk, H] = [2, 33, 47, 2];
  const q = { data: bits(B * Nq * H * D), shape: [B, Nq, H, D], dtype: "bf16" as const };
  const k = { data: bits(B * Nk * H * D), shape: [B, Nk, H, D], dtype: "f16" as const };
  const v = randomTensor(random, [B, Nk, H, DV]);
  const { stats } = await gpu.flashAttention(q, k, v, { causal: true, outDtype: "f16", stats: true });
  const closed = flashAttentionIo({ B, H, Nq, Nk, d: D, dv: DV }, {
    causal: true,
    elementBytes: { q: 2, k: 2, v: 4, o: 2 },
    blocks: gpu.tiling(D, DV),
  });
  assertSameIo("16-bit", ["flashAttentionIo", "the GPU"], { ...closed }, { ...stats! }, [
    "totalBytes",
    "tilesComputed",
  ]);
});

gpuTest(
  "GPU stats are the same whether O stays on the device or comes back, and the arena sizes are the tiling's",
  async () => {
    const gpu = await gpuAttention(TILINGS.small);
    const random = rng(32);
    const q = randomTensor(random, [1, 50, 2, D]);
    const k = randomTensor(random, [1, 60, 2, D]);
    const v = randomTensor(random, [1, 60, 2, DV]);
    const sramBytes = 8192;
    const host = await gpu.flashAttention(q, k, v, { causal: true, stats: true, sramBytes });
    const onGpu = await gpu.flashAttention(q, k, v, { causal: true, stats: true, sramBytes, outputLocation: "gpu" });
    onGpu.buffer.destroy();
    if (JSON.stringify(host.stats) !== JSON.stringify(onGpu.stats)) throw new Error("stats differ");
    const tiling = gpu.tiling(D, DV, { sramBytes });
    const s = host.stats!;
    if (s.sramBytes !== sramBytes || s.sramPeakBytes !== tiling.sramPeakBytes || s.Br !== tiling.Br) {
      throw new Error(`stats ${s.sramBytes} / ${s.sramPeakBytes} / ${s.Br}, tiling ${JSON.stringify(tiling)}`);
    }
  },
);

gpuTest("GPU counters are u64: a count that passes 2³² carries into the high word exactly", async () => {
  // Crossing 2³² for real takes minutes on lavapipe (four billion counted bytes), so the counters
  // start just below a carry instead (the runner's test hook): low words 2³² − 1 and high words 7.
  // Every byte a workgroup adds then carries, and the result must be the start plus the count.
  const ctx = { device: device!, targets: readTargets(TILINGS.small), pipelines: new Map() };
  const random = rng(33);
  const q = randomTensor(random, [2, 70, 3, D]);
  const k = randomTensor(random, [2, 90, 3, D]);
  const v = randomTensor(random, [2, 90, 3, DV]);
  const options = { causal: true, returnLse: true, stats: true } as const;
  const call = validateForwardCall(q, k, v, options);
  const start = new Uint32Array(2 * COUNTER_SLOTS);
  for (let slot = 0; slot < COUNTER_SLOTS; slot++) start.set([2 ** 32 - 1, 7], 2 * slot);
  const prepared = await prepareGpuCall(ctx, call, new Map(), device!.limits.maxComputeWorkgroupStorageSize, start);
  const seeded = (await runGpuCall(ctx, call, prepared, "cpu")).stats!;
  const plain = (await gpuAttention(TILINGS.small)).flashAttention(q, k, v, options);
  const counted = (await plain).stats!;
  const base = 7 * 2 ** 32 + 2 ** 32 - 1;
  for (const side of ["read", "written"] as const) {
    for (const tensor of Object.keys(zeroBytes()) as (keyof TensorBytes)[]) {
      const expected = base + counted[side][tensor];
      if (seeded[side][tensor] !== expected) {
        throw new Error(`${side}.${tensor}: ${seeded[side][tensor]}, expected ${expected}`);
      }
    }
  }
  if (counted.read.k === 0 || counted.written.lse === 0) throw new Error("the call counted nothing to carry");
});
