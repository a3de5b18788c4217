// Thin query blocks: at most 4 virtual rows (a decode step, or the last rows of a longer call) with
// d a multiple of 4 and dv of 8 read only the keys some row of the block sees (assembly/stream.ts):
// K streamed from HBM into registers, or, when the call's K and V exceed CACHED_KV_BYTES, K and V
// rows copied as stored into the arena (f16's then widened in place, bf16 widened in registers). These tests aim at that path: its
// results against the f64 reference with every option that changes which keys a row sees, the
// claim that keys outside the block's view are never read, and the two ways of reading K and V
// giving the same bits and bytes.
//
// Tolerance: the flash-attention rule of tests/_util.ts (error vs f64 ≤ 2 × the naive f32 error
// + 1e-6). The IO counters of thin blocks are checked against a brute-force count in io_test.ts.

import fc from "fast-check";
import { flashAttention, type FlashAttentionOptions, type HalfTensor, type Tensor } from "../mod.ts";
import { ensureArena } from "../src/_blocks.ts";
import { runForward } from "../src/_forward.ts";
import { POOL_TUNING, startPool } from "../src/pool.ts";
import { readStats } from "../src/_stats.ts";
import { validateForwardCall } from "../src/_validate.ts";
import { referenceAttention } from "../src/reference.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import { stored, type StoredDtype } from "./_cases.ts";
import {
  assertBitwiseEqual,
  assertFlashTolerance,
  makeMask,
  naiveAttentionF32,
  randomTensor,
  rng,
  test,
} from "./_util.ts";

const kernels = loadKernels();

test("the kernels stream K and V for blocks of at most 4 rows exactly when d is a multiple of 4 and dv of 8", () => {
  for (const [d, dv, rows] of [[4, 8, 4], [64, 64, 4], [128, 256, 4], [12, 24, 4], [6, 8, 0], [8, 12, 0], [3, 3, 0]]) {
    const got = kernels.streamedRows(d, dv);
    if (got !== rows) throw new Error(`streamedRows(${d}, ${dv}) is ${got}, expected ${rows}`);
  }
});

/** Thin-block problems: Nq·g ≤ 4, or a longer call whose last query block has 1–4 rows. */
const thinCases = fc.record({
  B: fc.integer({ min: 1, max: 2 }),
  Hkv: fc.integer({ min: 1, max: 2 }),
  g: fc.constantFrom(1, 2, 4),
  Nq: fc.integer({ min: 1, max: 4 }),
  long: fc.boolean(),
  Nk: fc.integer({ min: 1, max: 150 }),
  d: fc.integer({ min: 1, max: 10 }).map((n) => 4 * n),
  dv: fc.integer({ min: 1, max: 5 }).map((n) => 8 * n),
  causal: fc.constantFrom(false, "bottom-right" as const, "top-left" as const),
  window: fc.option(fc.tuple(fc.integer({ min: -1, max: 40 }), fc.integer({ min: -1, max: 40 })), { nil: undefined }),
  softcap: fc.constantFrom(0, 5),
  alibi: fc.boolean(),
  mask: fc.constantFrom("none" as const, "f32" as const, "u8" as const),
  seqLensK: fc.boolean(),
  smallArena: fc.boolean(),
  seed: fc.integer(),
});

type ThinCase = typeof thinCases extends fc.Arbitrary<infer T> ? T : never;

/**
 * One thin-block problem: Nq·g ≤ 4 rows, one thin block; or a long call, 8 more positions, so that
 * with the smallest arena (Br = 8) the last block has Nq·g mod 8 ∈ 1..4 rows. K and V stored as
 * kDtype and vDtype; sramBytes is the smallest arena or undefined (the default).
 */
function thinProblem(c: ThinCase, kDtype: StoredDtype = "f32", vDtype: StoredDtype = "f32") {
  const random = rng(c.seed);
  const H = c.Hkv * c.g;
  const positions = Math.max(1, Math.floor(c.Nq / c.g));
  const Nq = c.long ? 8 + positions : positions;
  const q = randomTensor(random, [c.B, Nq, H, c.d]);
  const k = stored(randomTensor(random, [c.B, c.Nk, c.Hkv, c.d]), kDtype, random);
  const v = stored(randomTensor(random, [c.B, c.Nk, c.Hkv, c.dv]), vDtype, random);
  const mask = c.mask === "none"
    ? undefined
    : makeMask(random, { kind: c.mask, rank: 4, keep: [true, true, true, true], blocked: 0.2 }, [c.B, H, Nq, c.Nk]);
  const options: FlashAttentionOptions = {
    causal: c.window ? undefined : c.causal,
    windowSize: c.window,
    softcap: c.softcap,
    alibiSlopes: c.alibi ? Float32Array.from({ length: H }, (_, h) => 0.5 ** (h + 1)) : undefined,
    mask,
    seqLensK: c.seqLensK ? Int32Array.from({ length: c.B }, () => Math.floor(random() * (c.Nk + 1))) : undefined,
  };
  const sramBytes = c.smallArena ? kernels.arenaBytes(8, 4, c.d, c.dv, mask !== undefined) : undefined;
  return { q, k, v, options, sramBytes, Nq };
}

test("thin query blocks match the f64 reference with causal, windows, softcap, ALiBi, masks and seqLensK", () => {
  fc.assert(
    fc.property(thinCases, (c) => {
      const { q, k, v, options, sramBytes, Nq } = thinProblem(c);
      const o = flashAttention(q, k, v, { ...options, sramBytes, returnLse: true });
      const ref = referenceAttention(q, k, v, { ...options, returnLse: true });
      const naive = naiveAttentionF32(q, k as Tensor, v as Tensor, options); // thinProblem's default: f32 K and V
      const what = JSON.stringify({ ...c, Nq });
      assertFlashTolerance(`O of ${what}`, o.data, ref.data, naive.data);
      assertFlashTolerance(`lse of ${what}`, o.lse.data, ref.lse.data, naive.lse);
    }),
    { seed: 0x57e, numRuns: 60, includeErrorInReport: true },
  );
});

test("a thin block never reads a key none of its rows sees: NaN there gives the bits of finite values", () => {
  // Keys outside the block's view (before a window, past seqLensK, after top-left causal's last
  // visible key) hold NaN in K and V; had the streamed products read them, NaN would reach O.
  const random = rng(77);
  const [B, Nk, Hkv, g, d, dv] = [2, 90, 2, 2, 16, 8];
  const H = Hkv * g;
  const q = randomTensor(random, [B, 2, H, d]); // 2 positions × 2 heads: 4 rows, one thin block
  const k = randomTensor(random, [B, Nk, Hkv, d]);
  const v = randomTensor(random, [B, Nk, Hkv, dv]);
  const cases: [string, FlashAttentionOptions, (b: number, j: number) => boolean][] = [
    // window [5, 0] bottom-right: rows see keys Nk − 2 − 5 … Nk − 1
    ["window", { windowSize: [5, 0] }, (_b, j) => j >= Nk - 7],
    ["seqLensK", { seqLensK: new Int32Array([37, 61]) }, (b, j) => j < [37, 61][b]],
    ["top-left causal", { causal: "top-left" }, (_b, j) => j <= 1],
  ];
  for (const [what, options, seen] of cases) {
    const poisoned = (t: Tensor, D: number): Tensor => {
      const data = t.data.slice();
      for (let b = 0; b < B; b++) {
        for (let j = 0; j < Nk; j++) {
          if (!seen(b, j)) data.fill(NaN, ((b * Nk + j) * Hkv) * D, ((b * Nk + j + 1) * Hkv) * D);
        }
      }
      return { data, shape: t.shape };
    };
    const clean = flashAttention(q, k, v, { ...options, returnLse: true });
    const dirty = flashAttention(q, poisoned(k, d), poisoned(v, dv), { ...options, returnLse: true });
    assertBitwiseEqual(`${what}: O`, dirty.data, clean.data);
    assertBitwiseEqual(`${what}: lse`, dirty.lse.data, clean.lse.data);
    if (clean.data.some(Number.isNaN)) throw new Error(`${what}: NaN in the clean call`);
  }
});

test("a row's thin-block result does not depend on how many rows its block has (1, 2 or 4): same bits", () => {
  // scoresRows sums every (row, key) pair with the same operations for R = 1, 2 and 4, and the value
  // product accumulates each row alone, so one query head alone, in pairs or in fours over one K/V
  // head gives the same O and lse, in every build.
  const random = rng(78);
  const [Nk, d, dv] = [203, 24, 16];
  const q = randomTensor(random, [1, 1, 4, d]);
  const k = randomTensor(random, [1, Nk, 1, d]);
  const v = randomTensor(random, [1, Nk, 1, dv]);
  const heads = (from: number, to: number): Tensor => ({
    data: q.data.slice(from * d, to * d),
    shape: [1, 1, to - from, d],
  });
  const four = flashAttention(q, k, v, { returnLse: true, windowSize: [150, -1] });
  for (const g of [1, 2]) {
    for (let h = 0; h < 4; h += g) {
      const part = flashAttention(heads(h, h + g), k, v, { returnLse: true, windowSize: [150, -1] });
      assertBitwiseEqual(`g = ${g}, heads ${h}…: O`, part.data, four.data.slice(h * dv, (h + g) * dv));
      assertBitwiseEqual(`g = ${g}, heads ${h}…: lse`, part.lse.data, four.lse.data.slice(h, h + g));
    }
  }
});

/**
 * The synchronous runner on a validated call with the given K/V threshold (undefined: the default,
 * under which these small calls stream K): O, lse and the counters.
 */
function runThin(
  q: Tensor,
  k: Tensor | HalfTensor,
  v: Tensor | HalfTensor,
  options: FlashAttentionOptions,
  numSplits: number,
  cachedKvBytes: number | undefined,
) {
  const call = validateForwardCall(q, k, v, { ...options, returnLse: true });
  const { Br, Bc } = ensureArena(kernels, call.sramBytes, call.problem);
  kernels.resetCounters();
  const config = { sramBytes: call.sramBytes, Br, Bc, out: undefined, numSplits, cachedKvBytes };
  const result = runForward(kernels, call.problem, config);
  return { ...result, stats: readStats(kernels, call.problem, config) };
}

test("thin blocks that copy K and V rows into the arena give the bits and bytes of those that stream K", () => {
  // Both ways run scoresRows' and accumulateRows' operations in the same order on the same f32
  // values (bf16 widened in registers and f16 by the tile copy, either way), and read the same
  // rows: the keys some row of the block sees. cachedKvBytes = 0 makes every call copy.
  fc.assert(
    fc.property(
      thinCases,
      fc.constantFrom("f32" as const, "bf16" as const, "f16" as const),
      fc.constantFrom("f32" as const, "bf16" as const, "f16" as const),
      fc.constantFrom(1, 3),
      (c, kDtype, vDtype, numSplits) => {
        const { q, k, v, options: plain, sramBytes, Nq } = thinProblem(c, kDtype, vDtype);
        const options = { ...plain, sramBytes };
        const streaming = runThin(q, k, v, options, numSplits, undefined);
        const copying = runThin(q, k, v, options, numSplits, 0);
        const what = JSON.stringify({ ...c, Nq, kDtype, vDtype, numSplits });
        assertBitwiseEqual(`O of ${what}`, copying.o as Float32Array, streaming.o as Float32Array);
        assertBitwiseEqual(`lse of ${what}`, copying.lse!, streaming.lse!);
        const [counted, expected] = [JSON.stringify(copying.stats), JSON.stringify(streaming.stats)];
        if (counted !== expected) throw new Error(`counters of ${what}: ${counted}, streaming ${expected}`);
      },
    ),
    { seed: 0xc0b1, numRuns: 80, includeErrorInReport: true },
  );
});

test("a decode step copies its K rows as stored into the arena above the K/V threshold, and only there", () => {
  // The bits and bytes above cannot tell the two ways apart, so this looks in the arena: after a
  // copying step it holds the bytes of the last K row the step read (f32 or bf16, as stored); a
  // streaming step leaves K out of the arena (its tile copies write f32 rows of V only).
  const random = rng(81);
  const [Nk, Hkv, g, d, dv] = [100, 2, 2, 16, 8];
  for (const dtype of ["f32", "bf16"] as const) {
    const q = randomTensor(random, [1, 1, Hkv * g, d]);
    const k = stored(randomTensor(random, [1, Nk, Hkv, d]), dtype, random);
    const v = randomTensor(random, [1, Nk, Hkv, dv]);
    // the last head's last key row, as stored in k ([1, Nk, Hkv, d])
    const bytes = dtype === "f32" ? 4 : 2;
    const last = new Uint8Array(k.data.buffer, k.data.byteOffset + (Nk * Hkv - 1) * d * bytes, d * bytes);
    for (const cachedKvBytes of [undefined, 0]) {
      const arena = new Uint8Array(kernels.memory.buffer, kernels.arenaPtr(), kernels.arenaMaxBytes());
      arena.fill(0xff);
      runThin(q, k, v, {}, 1, cachedKvBytes);
      const after = new Uint8Array(kernels.memory.buffer, kernels.arenaPtr(), kernels.arenaMaxBytes());
      const holds = indexOfBytes(after, last) >= 0;
      if (holds !== (cachedKvBytes === 0)) {
        throw new Error(
          `${dtype}, cachedKvBytes ${cachedKvBytes}: the arena ${holds ? "holds" : "lacks"} the last K row`,
        );
      }
    }
  }
});

/** The first index of `needle` in `hay`, or −1. */
function indexOfBytes(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

test("the pool's thin blocks copy K and V above its K/V threshold and give the synchronous bits", async () => {
  const random = rng(82);
  const [B, Nk, Hkv, g, d, dv] = [2, 300, 2, 4, 32, 16];
  const q = randomTensor(random, [B, 1, Hkv * g, d]);
  const k = stored(randomTensor(random, [B, Nk, Hkv, d]), "bf16", random);
  const v = stored(randomTensor(random, [B, Nk, Hkv, dv]), "bf16", random);
  const options = { returnLse: true, seqLensK: new Int32Array([300, 171]) };
  const expected = flashAttention(q, k, v, options);
  const pool = await startPool(2, { ...POOL_TUNING, inlineFlops: 0, cachedKvBytes: 0 });
  try {
    const got = await pool.flashAttention(q, k, v, options);
    assertBitwiseEqual("O", got.data, expected.data);
    assertBitwiseEqual("lse", got.lse!.data, expected.lse!.data);
  } finally {
    await pool.close();
  }
});
