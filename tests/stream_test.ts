// Thin query blocks: at most 4 virtual rows (a decode step, or the last rows of a longer call) with
// d a multiple of 4 and dv of 8 stream K and V from HBM into registers and read only the keys some
// row of the block sees (assembly/stream.ts). These tests aim at that path: its results against the
// f64 reference with every option that changes which keys a row sees, and the claim that keys
// outside the block's view are never read.
//
// Tolerance: the flash-attention rule of tests/_util.ts (error vs f64 ≤ 2 × the naive f32 error
// + 1e-6). The IO counters of thin blocks are checked against a brute-force count in io_test.ts.

import fc from "fast-check";
import { flashAttention, type FlashAttentionOptions, type Tensor } from "../mod.ts";
import { referenceAttention } from "../src/reference.ts";
import { loadKernels } from "../src/wasm/loader.ts";
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

test("thin query blocks match the f64 reference with causal, windows, softcap, ALiBi, masks and seqLensK", () => {
  fc.assert(
    fc.property(thinCases, (c) => {
      const random = rng(c.seed);
      const H = c.Hkv * c.g;
      // Nq·g ≤ 4 rows: one thin block. A long call: 8 more positions, so that with the smallest
      // arena (Br = 8) the last block has Nq·g mod 8 ∈ 1..4 rows.
      const positions = Math.max(1, Math.floor(c.Nq / c.g));
      const Nq = c.long ? 8 + positions : positions;
      const q = randomTensor(random, [c.B, Nq, H, c.d]);
      const k = randomTensor(random, [c.B, c.Nk, c.Hkv, c.d]);
      const v = randomTensor(random, [c.B, c.Nk, c.Hkv, c.dv]);
      const options: FlashAttentionOptions = {
        causal: c.window ? undefined : c.causal,
        windowSize: c.window,
        softcap: c.softcap,
        alibiSlopes: c.alibi ? Float32Array.from({ length: H }, (_, h) => 0.5 ** (h + 1)) : undefined,
        mask: c.mask === "none"
          ? undefined
          : makeMask(random, { kind: c.mask, rank: 4, keep: [true, true, true, true], blocked: 0.2 }, [
            c.B,
            H,
            Nq,
            c.Nk,
          ]),
        seqLensK: c.seqLensK ? Int32Array.from({ length: c.B }, () => Math.floor(random() * (c.Nk + 1))) : undefined,
      };
      const masked = options.mask !== undefined;
      const sramBytes = c.smallArena ? kernels.arenaBytes(8, 4, c.d, c.dv, masked) : undefined;
      const o = flashAttention(q, k, v, { ...options, sramBytes, returnLse: true });
      const ref = referenceAttention(q, k, v, { ...options, returnLse: true });
      const naive = naiveAttentionF32(q, k, v, options);
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
