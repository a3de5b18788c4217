import fc from "fast-check";
import { flashAttention, type Tensor } from "../mod.ts";
import { referenceAttention } from "../src/reference.ts";
import { runForward } from "../src/_forward.ts";
import { validateAttention } from "../src/_validate.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import { assertBitwiseEqual, assertFlashTolerance, naiveAttentionF32, randomTensor, rng, test } from "./_util.ts";
import { type Case, inputs, stored, toBhsd } from "./_cases.ts";

const kernels = loadKernels();

/** Br and Bc the kernel derives for an arena of sramBytes and head dims d, dv. */
function blocks(sramBytes: number, d: number, dv: number): { Br: number; Bc: number } {
  const packed = kernels.blockSizes(sramBytes, d, dv, false);
  return { Br: packed >>> 16, Bc: packed & 0xffff };
}

/** Runs flashAttention on a case and checks O and lse against the f64 reference. */
function checkCase(c: Case): void {
  const [q, k, v] = inputs(c);
  const { scale, causal, layout } = c.options;
  const o = flashAttention(q, k, v, { ...c.options, returnLse: true });
  const ref = referenceAttention(q, k, v, { scale, causal, layout, returnLse: true });
  const naive = naiveAttentionF32(q, k, v, { scale, causal, layout });
  const where = JSON.stringify({ ...c, options: { ...c.options } });
  assertFlashTolerance(`O of ${where}`, o.data, ref.data, naive.data);
  assertFlashTolerance(`lse of ${where}`, o.lse.data, ref.lse.data, naive.lse);
}

const smallestArena = (d: number, dv: number) => kernels.arenaBytes(8, 4, d, dv, false);

const caseArbitrary = fc.record({
  B: fc.integer({ min: 1, max: 3 }),
  H: fc.integer({ min: 1, max: 4 }),
  Nq: fc.integer({ min: 1, max: 300 }),
  Nk: fc.integer({ min: 1, max: 300 }),
  d: fc.integer({ min: 1, max: 160 }),
  dv: fc.integer({ min: 1, max: 160 }),
  causal: fc.boolean(),
  layout: fc.constantFrom("bshd" as const, "bhsd" as const),
  scale: fc.option(fc.double({ min: 0.01, max: 2, noNaN: true }), { nil: undefined }),
  // Position of the arena between the smallest that fits and 512 KiB, squared to favour small
  // arenas (many tiles); null means the default.
  arena: fc.option(fc.double({ min: 0, max: 1, noNaN: true }), { nil: null }),
  hugeLogits: fc.boolean(),
  seed: fc.integer(),
}).map((r): Case => {
  const sramBytes = r.arena === null
    ? undefined
    : Math.floor(smallestArena(r.d, r.dv) + r.arena ** 2 * (512 * 1024 - smallestArena(r.d, r.dv)));
  const scale = r.scale ?? 1 / Math.sqrt(r.d);
  // Typical |logit| ≈ amplitude²·scale·sqrt(d)/3: this makes the largest logits reach ~±1e4.
  const amplitude = r.hugeLogits ? Math.sqrt(3e4 / (scale * Math.sqrt(r.d))) : 1;
  return {
    B: r.B,
    H: r.H,
    Nq: r.Nq,
    Nk: r.Nk,
    d: r.d,
    dv: r.dv,
    options: { causal: r.causal, layout: r.layout, scale: r.scale, sramBytes },
    amplitude,
    seed: r.seed,
  };
});

test("flashAttention() matches the f64 reference within the flash-attention tolerance on random problems", () => {
  fc.assert(fc.property(caseArbitrary, (c) => checkCase(c)), { seed: 0x5eed, numRuns: 120 });
});

test("flashAttention() keeps logits of ±1e4 finite and exact (online softmax never overflows)", () => {
  const c: Case = {
    B: 1,
    H: 2,
    Nq: 77,
    Nk: 190,
    d: 64,
    dv: 48,
    options: { causal: false },
    amplitude: Math.sqrt(3e4 / (1 / 8 * 8)),
    seed: 7,
  };
  const [q, k, v] = inputs(c);
  const lse = flashAttention(q, k, v, { returnLse: true }).lse.data;
  const largest = lse.reduce((a, x) => Math.max(a, Math.abs(x)), 0);
  if (!(largest > 5e3)) throw new Error(`the generator did not reach large logits: max |lse| ${largest}`);
  checkCase(c);
});

test("flashAttention() is exact at tile edges: N ∈ {1, Bc−1, Bc, Bc+1, 3·Bc+5} and Br±1 for several arenas", () => {
  let seed = 1;
  for (const [d, dv] of [[64, 64], [13, 7], [128, 96]]) {
    for (const sramBytes of [smallestArena(d, dv), 16 * 1024, 48 * 1024, 128 * 1024]) {
      if (sramBytes < smallestArena(d, dv)) continue;
      const { Br, Bc } = blocks(sramBytes, d, dv);
      const lengths = [1, Bc - 1, Bc, Bc + 1, 3 * Bc + 5, Br - 1, Br, Br + 1].filter((n) => n >= 1);
      for (const Nq of lengths) {
        for (const Nk of [1, Bc - 1, Bc, Bc + 1, 3 * Bc + 5].filter((n) => n >= 1)) {
          for (const causal of [false, true]) {
            checkCase({ B: 1, H: 1, Nq, Nk, d, dv, options: { causal, sramBytes }, amplitude: 1, seed: seed++ });
          }
        }
      }
    }
  }
});

test("flashAttention() matches the reference with head dims up to 256, at tile edges, in the smallest and the default arena", () => {
  // The random property stops at d, dv = 160; these pairs reach the documented maximum of 256,
  // with the largest odd dim (255, padded by the kernels), a dim of 1 on either side, and
  // d ≠ dv both not multiples of 4. Br and Bc come from the kernel's own stats for each arena (the
  // default one included). Tolerance: the flash-attention rule of tests/_util.ts, as above.
  let seed = 1000;
  for (const [d, dv] of [[256, 256], [255, 1], [1, 256], [200, 243]]) {
    for (const sramBytes of [smallestArena(d, dv), undefined]) {
      const probe = (D: number): Tensor => ({ data: new Float32Array(D), shape: [1, 1, 1, D] });
      const { stats } = flashAttention(probe(d), probe(d), probe(dv), { sramBytes, stats: true });
      const { Br, Bc } = stats!;
      const derived = blocks(stats!.sramBytes, d, dv);
      if (derived.Br !== Br || derived.Bc !== Bc) {
        throw new Error(`stats ${Br} × ${Bc}, blockSizes ${derived.Br} × ${derived.Bc}`);
      }
      if (sramBytes !== undefined && (Br !== 8 || Bc !== 4)) throw new Error(`smallest arena gives ${Br} × ${Bc}`);
      const queries = [...new Set([1, Bc - 1, Bc + 1, Br + 1])].filter((n) => n >= 1);
      for (const Nq of queries) {
        for (const Nk of [1, Bc - 1, Bc + 1]) {
          for (const causal of [false, true]) {
            checkCase({ B: 1, H: 2, Nq, Nk, d, dv, options: { causal, sramBytes }, amplitude: 1, seed: seed++ });
          }
        }
      }
    }
  }
});

test("flashAttention() gives O = 0 and lse = −∞ to queries that see no key (causal with Nq > Nk)", () => {
  const random = rng(3);
  const [Nq, Nk] = [40, 9];
  const q = randomTensor(random, [2, Nq, 3, 16]);
  const k = randomTensor(random, [2, Nk, 3, 16]);
  const v = randomTensor(random, [2, Nk, 3, 8]);
  const o = flashAttention(q, k, v, { causal: true, returnLse: true });
  for (let b = 0; b < 2; b++) {
    for (let h = 0; h < 3; h++) {
      for (let i = 0; i < Nq; i++) {
        const blind = i < Nq - Nk; // i + Nk − Nq < 0: no key j ≥ 0 is visible
        const lse = o.lse.data[(b * 3 + h) * Nq + i];
        if (blind !== (lse === -Infinity)) throw new Error(`query ${i}: lse ${lse}`);
        for (let c = 0; c < 8; c++) {
          const x = o.data[((b * Nq + i) * 3 + h) * 8 + c];
          if (blind ? x !== 0 : !Number.isFinite(x)) throw new Error(`query ${i}: O ${x}`);
        }
      }
    }
  }
  checkCase({ B: 2, H: 3, Nq, Nk, d: 16, dv: 8, options: { causal: true }, amplitude: 1, seed: 4 });
});

test("flashAttention() with scale 0 averages the values uniformly", () => {
  const random = rng(5);
  const q = randomTensor(random, [1, 3, 1, 5]);
  const k = randomTensor(random, [1, 6, 1, 5]);
  const v = randomTensor(random, [1, 6, 1, 2]);
  const o = flashAttention(q, k, v, { scale: 0, returnLse: true });
  for (let i = 0; i < 3; i++) {
    for (let c = 0; c < 2; c++) {
      let mean = 0;
      for (let j = 0; j < 6; j++) mean += v.data[j * 2 + c] / 6;
      // six f32 products and sums of values below 1: well within 1e-6
      if (Math.abs(o.data[i * 2 + c] - mean) > 1e-6) throw new Error(`O[${i}][${c}] ${o.data[i * 2 + c]} ≠ ${mean}`);
    }
    if (Math.abs(o.lse.data[i] - Math.log(6)) > 1e-6) throw new Error(`lse ${o.lse.data[i]} ≠ ln 6`);
  }
});

test("flashAttention() writes into out, whatever out held before, and returns it", () => {
  const random = rng(6);
  const q = randomTensor(random, [2, 50, 2, 24]);
  const k = randomTensor(random, [2, 70, 2, 24]);
  const v = randomTensor(random, [2, 70, 2, 40]);
  const fresh = flashAttention(q, k, v, { causal: true });
  const out = new Float32Array(2 * 50 * 2 * 40).fill(NaN);
  const o = flashAttention(q, k, v, { causal: true, out });
  if (o.data !== out) throw new Error("the result does not use the caller's buffer");
  assertBitwiseEqual("out", out, fresh.data);
  flashAttention(q, k, v, { causal: true, out }); // reuse with the previous result inside
  assertBitwiseEqual("out reused", out, fresh.data);
});

test("flashAttention() gives bitwise identical results on repeated calls", () => {
  const random = rng(8);
  const q = randomTensor(random, [1, 130, 3, 33]);
  const k = randomTensor(random, [1, 257, 3, 33]);
  const v = randomTensor(random, [1, 257, 3, 20]);
  const first = flashAttention(q, k, v, { causal: true, returnLse: true });
  const other = randomTensor(random, [2, 64, 1, 8]);
  for (let i = 0; i < 50; i++) {
    flashAttention(other, other, other); // different shapes in between must not matter
    const again = flashAttention(q, k, v, { causal: true, returnLse: true });
    assertBitwiseEqual(`O, call ${i}`, again.data, first.data);
    assertBitwiseEqual(`lse, call ${i}`, again.lse.data, first.lse.data);
  }
});

/** Fills everything past the traffic counters (arena and HBM) with NaN. */
function poisonMemory(): void {
  new Float32Array(kernels.memory.buffer, kernels.arenaPtr()).fill(NaN);
}

test("flashAttention() never lets NaN-poisoned arena, HBM or neighbouring input memory into the output", () => {
  const random = rng(9);
  const [B, Nq, Nk, H, d, dv] = [2, 91, 133, 2, 19, 11];
  // Inputs are views into larger NaN-filled buffers, as in xformers' padded tests.
  const padded = (t: Tensor): Tensor => {
    const big = new Float32Array(t.data.length + 64).fill(NaN);
    big.set(t.data, 32);
    return { data: big.subarray(32, 32 + t.data.length), shape: t.shape };
  };
  const q = randomTensor(random, [B, Nq, H, d]);
  const k = randomTensor(random, [B, Nk, H, d]);
  const v = randomTensor(random, [B, Nk, H, dv]);
  for (const causal of [false, true]) {
    for (const sramBytes of [smallestArena(d, dv), 40000, 131072]) {
      const options = { causal, sramBytes, returnLse: true } as const;
      const clean = flashAttention(q, k, v, options);
      poisonMemory();
      const poisoned = flashAttention(padded(q), padded(k), padded(v), options);
      if (poisoned.data.some(Number.isNaN)) throw new Error("NaN leaked into O");
      assertBitwiseEqual("O after poisoning", poisoned.data, clean.data);
      assertBitwiseEqual("lse after poisoning", poisoned.lse.data, clean.lse.data);
    }
  }
});

test("streaming heads and query chunks through HBM gives the same bits as copying everything in", () => {
  const random = rng(10);
  for (const layout of ["bshd", "bhsd"] as const) {
    for (const causal of [false, true]) {
      const [B, Nq, Nk, H, d, dv] = [2, 300, 170, 3, 40, 24];
      const shape = (N: number, D: number) => layout === "bshd" ? [B, N, H, D] : [B, H, N, D];
      const q = randomTensor(random, shape(Nq, d));
      const k = randomTensor(random, shape(Nk, d));
      const v = randomTensor(random, shape(Nk, dv));
      const problem = validateAttention(q, k, v, { causal, layout, returnLse: true });
      const sramBytes = 16 * 1024; // Br = 24 here: many chunks of whole query blocks
      const { Br, Bc } = blocks(sramBytes, d, dv);
      const whole = runForward(kernels, problem, { sramBytes, Br, Bc, out: undefined, numSplits: 1 });
      poisonMemory();
      const streamed = runForward(kernels, problem, {
        sramBytes,
        Br,
        Bc,
        out: undefined,
        numSplits: 1,
        slabBudgetBytes: 0,
      });
      assertBitwiseEqual(`O ${layout} causal=${causal}`, streamed.o, whole.o);
      assertBitwiseEqual(`lse ${layout} causal=${causal}`, streamed.lse!, whole.lse!);
    }
  }
});

test("flashAttention() in layout bhsd gives the bits of bshd on transposed data", () => {
  const random = rng(11);
  const [B, Nq, Nk, H, d, dv] = [2, 37, 45, 3, 10, 6];
  const q = randomTensor(random, [B, Nq, H, d]);
  const k = randomTensor(random, [B, Nk, H, d]);
  const v = randomTensor(random, [B, Nk, H, dv]);
  const bshd = flashAttention(q, k, v, { causal: true, returnLse: true });
  const bhsd = flashAttention(toBhsd(q), toBhsd(k), toBhsd(v), {
    causal: true,
    returnLse: true,
    layout: "bhsd",
  });
  if (bhsd.shape.join() !== [B, H, Nq, dv].join()) throw new Error(`shape ${bhsd.shape}`);
  assertBitwiseEqual("O", bhsd.data, toBhsd({ data: bshd.data, shape: bshd.shape }).data);
  assertBitwiseEqual("lse", bhsd.lse.data, bshd.lse.data);
});

test("flashAttention() stages bshd K and V head-major through its staging area in chunks: the bits of bhsd", () => {
  // K of 1,126,400 bytes (f32) and 1,075,200 (bf16) pass the 1 MiB staging area in two chunks (1024 + 76 and
  // 2048 + 52 positions, H = 4 over Hkv = 2 heads); V fits in one. bhsd is copied in whole and read in place.
  const random = rng(17);
  for (const [dtype, Nk] of [["f32", 1100], ["bf16", 2100]] as const) {
    const [B, Nq, H, Hkv, d, dv] = [1, 8, 4, 2, 128, 64];
    const q = randomTensor(random, [B, Nq, H, d]);
    const [kf, vf] = [randomTensor(random, [B, Nk, Hkv, d]), randomTensor(random, [B, Nk, Hkv, dv])];
    const [k, v] = [stored(kf, dtype, random), stored(vf, dtype, random)];
    const bshd = flashAttention(q, k, v, { returnLse: true });
    const bhsd = flashAttention(toBhsd(q), toBhsd(k), toBhsd(v), { returnLse: true, layout: "bhsd" });
    assertBitwiseEqual(`O ${dtype}`, bhsd.data, toBhsd({ data: bshd.data, shape: bshd.shape }).data);
    assertBitwiseEqual(`lse ${dtype}`, bhsd.lse.data, bshd.lse.data);
  }
});

test("flashAttention() propagates NaN and Infinity in the inputs as naive attention does, without throwing", () => {
  // 20 × 30: the softmax takes each row max in its own pass (30 keys, not a multiple of 4); 16 × 64: every strip of 8
  // queries sees its whole key block, so the score strips hand it their running max instead.
  for (const [Nq, Nk] of [[20, 30], [16, 64]]) propagatesNonFinite(Nq, Nk);
});

function propagatesNonFinite(Nq: number, Nk: number): void {
  const random = rng(12);
  const [d, dv] = [8, 4];
  const fresh = () => [
    randomTensor(random, [1, Nq, 1, d]),
    randomTensor(random, [1, Nk, 1, d]),
    randomTensor(random, [1, Nk, 1, dv]),
  ];
  const row = (o: Float32Array, i: number) => Array.from(o.subarray(i * dv, (i + 1) * dv));

  // A NaN in query 5 makes exactly row 5 NaN.
  let [q, k, v] = fresh();
  q.data[5 * d + 2] = NaN;
  let o = flashAttention(q, k, v).data;
  for (let i = 0; i < Nq; i++) {
    if (row(o, i).some(Number.isNaN) !== (i === 5)) throw new Error(`row ${i}: ${row(o, i)}`);
  }

  // +Infinity in a key gives a +∞ score to queries whose dot with it is positive: ∞ − ∞ = NaN,
  // as in naive attention; the reference agrees on which rows.
  [q, k, v] = fresh();
  k.data[7 * d] = Infinity;
  o = flashAttention(q, k, v).data;
  const ref = referenceAttention(q, k, v).data;
  for (let i = 0; i < Nq; i++) {
    const nan = row(o, i).some(Number.isNaN);
    if (nan !== Array.from(ref.subarray(i * dv, (i + 1) * dv)).some(Number.isNaN)) {
      throw new Error(`row ${i}: flash ${row(o, i)}, reference ${ref.subarray(i * dv, (i + 1) * dv)}`);
    }
  }

  // A NaN value in v reaches every query that sees its key.
  [q, k, v] = fresh();
  v.data[3 * dv + 1] = NaN;
  o = flashAttention(q, k, v).data;
  for (let i = 0; i < Nq; i++) if (!Number.isNaN(o[i * dv + 1])) throw new Error(`row ${i} lost the NaN`);
}

test("flashAttention(): the row max the score strips keep gives the bits of the softmax's own max pass", () => {
  // Unmasked, 64 keys (one key block, a multiple of 4): the strips keep the max. An all-true boolean mask changes no
  // score but sends every block through the masked path, which takes the max in a separate pass over the stored
  // scores. Both tile the same way here (one key block of all 64 keys, rows independent), so O and lse must agree bit
  // for bit: a max other than the pass's changes the rounding of every exp(S − m) (a strip handing over the wrong
  // group's max fails here), with NaN scores in head 1's rows and huge ones in head 0's.
  const random = rng(31);
  const [B, Nq, H, Nk, d] = [1, 24, 2, 64, 16];
  const q = randomTensor(random, [B, Nq, H, d]), k = randomTensor(random, [B, Nk, H, d]);
  const v = randomTensor(random, [B, Nk, H, d]);
  k.data[(37 * H + 1) * d + 3] = NaN; // head 1, key 37: a NaN score for every query of head 1
  q.data[(9 * H) * d] = 1e30; // head 0, query 9: huge scores, some +∞
  const mask = { data: new Uint8Array(Nq * Nk).fill(1), shape: [Nq, Nk] };
  const plain = flashAttention(q, k, v, { returnLse: true });
  const masked = flashAttention(q, k, v, { returnLse: true, mask });
  assertBitwiseEqual("O", plain.data as Float32Array, masked.data as Float32Array);
  assertBitwiseEqual("lse", plain.lse!.data as Float32Array, masked.lse!.data as Float32Array);
  // and the test sees both kinds of row: head 1's rows are NaN, head 0's finite except where the reference has NaN
  const ref = referenceAttention(q, k, v).data;
  for (let i = 0; i < plain.data.length; i++) {
    if (Number.isNaN(plain.data[i]) !== Number.isNaN(ref[i])) {
      throw new Error(`element ${i}: ${plain.data[i]} vs ${ref[i]}`);
    }
  }
  if (!plain.data.some(Number.isNaN) || plain.data.every(Number.isNaN)) throw new Error("expected NaN and finite rows");
});
