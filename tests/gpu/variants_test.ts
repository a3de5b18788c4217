// Every option of the CPU forward on the WebGPU kernel — GQA/MQA, sliding windows, ALiBi, softcap,
// masks, seqLensK, varlen packing, both causal alignments — against the f64 reference, and the
// bitwise relations that hold because a row's arithmetic depends only on its own keys: GQA equals
// MHA on repeated K/V, a varlen call equals separate calls, blocked keys vanish whatever their score.
// Tolerance: the flash-attention rule (tests/gpu/_gpu.ts), for O and lse. Head dims and tilings come
// from a few values, so the suite compiles few kernels on lavapipe.

import fc from "fast-check";
import type { FlashAttentionOptions, Tensor } from "../../mod.ts";
import { assertBitwiseEqual, randomTensor, rng } from "../_util.ts";
import {
  buildSpec,
  type Causal,
  causalArb,
  maskArb,
  type Model,
  softcapArb,
  type Spec,
  specArbitrary,
  varlenInputs,
  windowArb,
} from "../_cases.ts";
import { checkAgainstReference, gpuAttention, gpuTest, TILINGS } from "./_gpu.ts";

/** A variant problem (tests/_cases.ts) run on one of two small tilings. */
interface TilingSpec extends Spec {
  tiling: "tiny" | "small";
}

const windowArbitrary = windowArb(40);

/** Random problems with every option off except those given; head dims 5 and 7 (few kernels to compile). */
function specs(overrides: Partial<Model<TilingSpec>>): fc.Arbitrary<TilingSpec> {
  return specArbitrary<TilingSpec>({
    B: fc.integer({ min: 1, max: 2 }),
    Hkv: fc.integer({ min: 1, max: 3 }),
    group: fc.constant(1),
    Nq: fc.integer({ min: 1, max: 48 }),
    Nk: fc.integer({ min: 1, max: 60 }),
    sameLength: fc.constant(false),
    d: fc.constant(5),
    dv: fc.constant(7),
    layout: fc.constant("bshd" as const),
    causal: fc.constant(false as Causal),
    window: fc.constant(null),
    scale: fc.constant(null),
    alibi: fc.constant("none" as const),
    softcap: fc.constant(0),
    mask: fc.constant(null),
    seqLens: fc.constant(false),
    amplitude: fc.constant(1),
    tiling: fc.constantFrom("tiny" as const, "small" as const),
    seed: fc.integer(),
  }, overrides);
}

async function checkSpec(s: TilingSpec): Promise<void> {
  const { q, k, v, options } = buildSpec(s);
  await checkAgainstReference(await gpuAttention(TILINGS[s.tiling]), JSON.stringify(s), q, k, v, options);
}

const runs = (n: number, numRuns = 25) => ({ seed: 0x69e0 + n, numRuns });

gpuTest("GPU: GQA/MQA (query head h reads K/V head ⌊h/(H/Hkv)⌋) matches the reference on random problems", async () => {
  const arb = specs({ group: fc.integer({ min: 1, max: 6 }), causal: causalArb });
  await fc.assert(fc.asyncProperty(arb, checkSpec), runs(1));
});

gpuTest("GPU: sliding windows [left, right] with every causal alignment match the reference", async () => {
  const arb = specs({ window: windowArbitrary, causal: causalArb, group: fc.integer({ min: 1, max: 3 }) });
  await fc.assert(fc.asyncProperty(arb, checkSpec), runs(2));
});

gpuTest("GPU: ALiBi slopes of length H or B·H add −slope·|i + Nk − Nq − j| as the reference does", async () => {
  const arb = specs({
    alibi: fc.constantFrom("H" as const, "BH" as const),
    causal: causalArb,
    group: fc.integer({ min: 1, max: 3 }),
    tiling: fc.constant("small" as const),
  });
  await fc.assert(fc.asyncProperty(arb, checkSpec), runs(3));
});

gpuTest("GPU: softcap caps the scaled scores with softcap·tanh(S/softcap) as the reference does", async () => {
  const arb = specs({ softcap: softcapArb, causal: causalArb, tiling: fc.constant("small" as const) });
  await fc.assert(fc.asyncProperty(arb, checkSpec), runs(4));
});

gpuTest("GPU: float and boolean masks broadcast right-aligned to [B, H, Nq, Nk] match the reference", async () => {
  const arb = specs({
    mask: maskArb,
    causal: causalArb,
    group: fc.integer({ min: 1, max: 3 }),
    tiling: fc.constant("small" as const),
  });
  await fc.assert(fc.asyncProperty(arb, checkSpec), runs(5, 40));
});

gpuTest("GPU: seqLensK hides the keys past each entry's length and aligns causal and windows to it", async () => {
  const arb = specs({
    seqLens: fc.constant(true),
    causal: causalArb,
    window: fc.option(windowArbitrary, { nil: null }),
    group: fc.integer({ min: 1, max: 3 }),
    B: fc.integer({ min: 1, max: 4 }),
  });
  await fc.assert(fc.asyncProperty(arb, checkSpec), runs(6));
});

gpuTest(
  "GPU: every option at once (GQA, window, ALiBi, softcap, mask, seqLensK, causal, layout, scale) matches the reference",
  async () => {
    const arb = specs({
      B: fc.integer({ min: 1, max: 3 }),
      group: fc.integer({ min: 1, max: 4 }),
      sameLength: fc.boolean(),
      layout: fc.constantFrom("bshd" as const, "bhsd" as const),
      causal: causalArb,
      window: fc.option(windowArbitrary, { nil: null }),
      scale: fc.option(fc.double({ min: 0.05, max: 2, noNaN: true }), { nil: null }),
      alibi: fc.constantFrom("none" as const, "H" as const, "BH" as const),
      softcap: fc.oneof(fc.constant(0), softcapArb),
      mask: fc.option(maskArb, { nil: null }),
      seqLens: fc.boolean(),
      tiling: fc.constant("small" as const),
    });
    await fc.assert(fc.asyncProperty(arb, checkSpec), runs(7, 40));
  },
);

// ── Varlen ───────────────────────────────────────────────────────────────────────────────────

gpuTest(
  "GPU: varlen packing (empty sequences allowed) with GQA, windows, ALiBi, softcap and causal matches the reference",
  async () => {
    const arb = fc.record({
      pairs: fc.array(fc.tuple(fc.integer({ min: 0, max: 30 }), fc.integer({ min: 0, max: 40 })), {
        minLength: 1,
        maxLength: 4,
      }),
      Hkv: fc.integer({ min: 1, max: 2 }),
      group: fc.integer({ min: 1, max: 3 }),
      causal: causalArb,
      window: fc.option(windowArbitrary, { nil: null }),
      alibi: fc.boolean(),
      softcap: fc.oneof(fc.constant(0), softcapArb),
      seed: fc.integer(),
    });
    await fc.assert(
      fc.asyncProperty(arb, async (s) => {
        const random = rng(s.seed);
        const H = s.Hkv * s.group;
        const { q, k, v, cuSeqlensQ, cuSeqlensK } = varlenInputs(random, s.pairs, s.Hkv, H, 5, 7);
        const options: FlashAttentionOptions = { cuSeqlensQ, cuSeqlensK, causal: s.causal };
        if (s.window) options.windowSize = s.window;
        if (s.alibi) options.alibiSlopes = Float32Array.from({ length: s.pairs.length * H }, random);
        if (s.softcap) options.softcap = s.softcap;
        const gpu = await gpuAttention(TILINGS.small);
        const o = await checkAgainstReference(gpu, JSON.stringify(s), q, k, v, options);
        if (o.shape.join() !== [q.shape[0], H, 7].join()) throw new Error(`O shape ${o.shape}`);
        if (o.lse.shape.join() !== [H, q.shape[0]].join()) throw new Error(`lse shape ${o.lse.shape}`);
      }),
      runs(8),
    );
  },
);

gpuTest(
  "GPU: a varlen call gives the bits of separate calls on each sequence (O = 0, lse = −∞ where Nk = 0)",
  async () => {
    const gpu = await gpuAttention(TILINGS.tiny);
    const random = rng(20);
    const pairs: [number, number][] = [[7, 11], [0, 5], [13, 0], [9, 9]];
    const [Hkv, H] = [2, 4];
    const { q, k, v, cuSeqlensQ, cuSeqlensK } = varlenInputs(random, pairs, Hkv, H, 5, 7);
    const packed = await gpu.flashAttention(q, k, v, { cuSeqlensQ, cuSeqlensK, causal: true, returnLse: true });
    const totalQ = q.shape[0];
    for (let b = 0; b < pairs.length; b++) {
      const [q0, q1] = [cuSeqlensQ[b], cuSeqlensQ[b + 1]];
      const [k0, k1] = [cuSeqlensK[b], cuSeqlensK[b + 1]];
      if (q1 === q0) continue;
      const rows = (t: Tensor, from: number, to: number, heads: number, D: number): Tensor => ({
        data: t.data.slice(from * heads * D, to * heads * D),
        shape: [1, to - from, heads, D],
      });
      const Oexpected = packed.data.slice(q0 * H * 7, q1 * H * 7) as Float32Array;
      if (k1 === k0) {
        if (!Oexpected.every((x) => Object.is(x, 0))) throw new Error(`sequence ${b}: O is not 0`);
        for (let h = 0; h < H; h++) {
          for (let i = q0; i < q1; i++) {
            if (packed.lse.data[h * totalQ + i] !== -Infinity) throw new Error(`sequence ${b}: lse not −∞`);
          }
        }
        continue;
      }
      const alone = await gpu.flashAttention(
        rows(q, q0, q1, H, 5),
        rows(k, k0, k1, Hkv, 5),
        rows(v, k0, k1, Hkv, 7),
        { causal: true, returnLse: true },
      );
      assertBitwiseEqual(`O of sequence ${b}`, Oexpected, alone.data);
      for (let h = 0; h < H; h++) {
        const packedLse = packed.lse.data.slice(h * totalQ + q0, h * totalQ + q1);
        assertBitwiseEqual(
          `lse of sequence ${b}, head ${h}`,
          packedLse,
          alone.lse.data.slice(h * (q1 - q0), (h + 1) * (q1 - q0)),
        );
      }
    }
  },
);

// ── Bitwise relations ────────────────────────────────────────────────────────────────────────

gpuTest("GPU: GQA gives the bits of MHA on K/V repeat-interleaved per head", async () => {
  const gpu = await gpuAttention(TILINGS.small);
  const random = rng(21);
  const [B, Nq, Nk, Hkv, g, d, dv] = [2, 37, 45, 2, 3, 5, 7];
  const H = Hkv * g;
  const q = randomTensor(random, [B, Nq, H, d]);
  const k = randomTensor(random, [B, Nk, Hkv, d]);
  const v = randomTensor(random, [B, Nk, Hkv, dv]);
  const repeat = (t: Tensor, D: number): Tensor => {
    const data = new Float32Array(B * Nk * H * D);
    for (let b = 0; b < B; b++) {
      for (let j = 0; j < Nk; j++) {
        for (let h = 0; h < H; h++) {
          const from = ((b * Nk + j) * Hkv + Math.floor(h / g)) * D;
          data.set(t.data.subarray(from, from + D), ((b * Nk + j) * H + h) * D);
        }
      }
    }
    return { data, shape: [B, Nk, H, D] };
  };
  for (const options of [{ causal: true }, { windowSize: [3, 5] as [number, number] }, {}]) {
    const gqa = await gpu.flashAttention(q, k, v, { ...options, returnLse: true });
    const mha = await gpu.flashAttention(q, repeat(k, d), repeat(v, dv), { ...options, returnLse: true });
    assertBitwiseEqual(`O ${JSON.stringify(options)}`, gqa.data, mha.data);
    assertBitwiseEqual(`lse ${JSON.stringify(options)}`, gqa.lse.data, mha.lse.data);
  }
});

gpuTest(
  "GPU: top-left causal equals bottom-right when Nq = Nk, and on the first Nq keys when Nq < Nk (bitwise)",
  async () => {
    const gpu = await gpuAttention(TILINGS.tiny);
    const random = rng(22);
    const q = randomTensor(random, [1, 19, 2, 5]);
    const k = randomTensor(random, [1, 19, 2, 5]);
    const v = randomTensor(random, [1, 19, 2, 7]);
    const topLeft = await gpu.flashAttention(q, k, v, { causal: "top-left", returnLse: true });
    const bottomRight = await gpu.flashAttention(q, k, v, { causal: true, returnLse: true });
    assertBitwiseEqual("Nq = Nk", topLeft.data, bottomRight.data);
    const kLong = randomTensor(random, [1, 31, 2, 5]);
    const vLong = randomTensor(random, [1, 31, 2, 7]);
    const first = (t: Tensor, n: number, D: number): Tensor => ({
      data: t.data.slice(0, n * 2 * D),
      shape: [1, n, 2, D],
    });
    const longer = await gpu.flashAttention(q, kLong, vLong, { causal: "top-left", returnLse: true });
    const cut = await gpu.flashAttention(q, first(kLong, 19, 5), first(vLong, 19, 7), {
      causal: true,
      returnLse: true,
    });
    assertBitwiseEqual("Nq < Nk", longer.data, cut.data);
    assertBitwiseEqual("Nq < Nk, lse", longer.lse.data, cut.lse.data);
  },
);

gpuTest(
  "GPU: −∞ floats and boolean zeros mask alike (bitwise), and a blocked key is gone even when its score dwarfs the rest",
  async () => {
    const gpu = await gpuAttention(TILINGS.small);
    const random = rng(23);
    const [Nq, Nk] = [21, 35];
    const q = randomTensor(random, [1, Nq, 1, 5]);
    const k = randomTensor(random, [1, Nk, 1, 5]);
    const v = randomTensor(random, [1, Nk, 1, 7]);
    const blocked = Array.from({ length: Nq * Nk }, () => random() < 0.4);
    const bytes = Uint8Array.from(blocked, (b) => b ? 0 : 1);
    const floats = Float32Array.from(blocked, (b) => b ? -Infinity : 0);
    const u8 = await gpu.flashAttention(q, k, v, { mask: { data: bytes, shape: [Nq, Nk] }, returnLse: true });
    const f32 = await gpu.flashAttention(q, k, v, { mask: { data: floats, shape: [Nq, Nk] }, returnLse: true });
    assertBitwiseEqual("O", u8.data, f32.data);
    assertBitwiseEqual("lse", u8.lse.data, f32.lse.data);
    // Keys blocked for every query, given scores of ~1e16 (finite in f32, and far above every other
    // score): excluded, not weighed, so nothing changes.
    for (let j = 0; j < Nk; j += 4) for (let i = 0; i < Nq; i++) bytes[i * Nk + j] = 0;
    const kWild = { data: k.data.slice(), shape: k.shape };
    for (let j = 0; j < Nk; j += 4) kWild.data.fill(3e15, j * 5, j * 5 + 5);
    const qLarge = { data: q.data.map((x) => x + 3), shape: q.shape };
    const after = await gpu.flashAttention(qLarge, kWild, v, {
      mask: { data: bytes, shape: [Nq, Nk] },
      returnLse: true,
    });
    const beforeLarge = await gpu.flashAttention(qLarge, k, v, {
      mask: { data: bytes, shape: [Nq, Nk] },
      returnLse: true,
    });
    assertBitwiseEqual("O with huge blocked scores", after.data, beforeLarge.data);
    assertBitwiseEqual("lse with huge blocked scores", after.lse.data, beforeLarge.lse.data);
  },
);

gpuTest(
  "GPU: a mask that blanks whole rows gives them O = 0 and lse = −∞; fully blanked tiles are skipped, the rest is exact",
  async () => {
    const gpu = await gpuAttention(TILINGS.small);
    const random = rng(24);
    const [Nq, Nk, H] = [40, 70, 2];
    const q = randomTensor(random, [1, Nq, H, 5]);
    const k = randomTensor(random, [1, Nk, H, 5]);
    const v = randomTensor(random, [1, Nk, H, 7]);
    // Rows 3 and 17 see nothing; keys 16–47 are blocked for everyone (whole 16-key tiles).
    const data = new Uint8Array(Nq * Nk).fill(1);
    for (const i of [3, 17]) data.fill(0, i * Nk, (i + 1) * Nk);
    for (let i = 0; i < Nq; i++) data.fill(0, i * Nk + 16, i * Nk + 48);
    const mask = { data, shape: [Nq, Nk] };
    const o = await checkAgainstReference(gpu, "blank rows and tiles", q, k, v, { mask });
    for (let h = 0; h < H; h++) {
      for (const i of [3, 17]) {
        if (o.lse.data[h * Nq + i] !== -Infinity) throw new Error(`row ${i}: lse ${o.lse.data[h * Nq + i]}`);
        const row = o.data.subarray((i * H + h) * 7, (i * H + h + 1) * 7);
        if (!row.every((x) => Object.is(x, 0))) throw new Error(`row ${i}: O ${row}`);
      }
    }
    const { stats } = await gpu.flashAttention(q, k, v, { mask, stats: true });
    const { Br, Bc } = stats!;
    if (Bc !== 16) throw new Error(`Bc ${Bc}: the test blanks 16-key tiles`);
    // Two of the five key tiles are blank for every query block: skipped, their K and V not read.
    const blocks = Math.ceil((Nq * 1) / Br) * H;
    if (stats!.tilesSkipped !== 2 * blocks) throw new Error(`skipped ${stats!.tilesSkipped}, expected ${2 * blocks}`);
    if (stats!.read.k !== blocks * (Nk - 32) * 5 * 4) throw new Error(`K bytes ${stats!.read.k}`);
  },
);
