// The WebGPU backward: gradients against the f64 oracle of tests/_naive_backward.ts (an independent
// transcription of ALGORITHMS.md §6) by the rule the CPU backward's tests state and justify
// (tests/backward_test.ts): max|GPU − f64| ≤ 3 × max|naive f32 − f64| + 2e-6 · max(1, G), G the
// largest |element| of the three f64 gradients; and what needs no oracle: bitwise repeatability,
// 16-bit and GPU-buffer inputs giving the bits of their f32 values, zero gradients where nothing is
// seen, the caller's buffers, and the CPU backward's errors.

import fc from "fast-check";
import {
  type AttentionGradients,
  flashAttentionBackward,
  type FlashAttentionBackwardOptions,
  type Layout,
  type Tensor,
} from "../../mod.ts";
import { convertInto, widened } from "../../src/_half.ts";
import { naiveAttentionBackward } from "../_naive_backward.ts";
import { assertBitwiseEqual, makeMask, type MaskSpec, maxAbsError, randomTensor, rng } from "../_util.ts";
import { assertNoNaN, gpuAttention, gpuTest, TILINGS, upload } from "./_gpu.ts";
import type { GpuTilingTargets } from "../../src/gpu.ts";

type Causal = boolean | "bottom-right" | "top-left";
const GRADIENTS = ["dq", "dk", "dv"] as const;
/**
 * The CPU tests' floor (its reason: where an exact gradient vanishes by cancellation, the naive f32
 * error is no yardstick). Measured here: over 200 random problems of the property below (another
 * seed), the largest (error − 3 × naive error) / max(1, G) was 3.4e-7 and the largest error/bound 0.43.
 */
const FLOOR = 2e-6;

/** The forward's options (what the oracle takes too): everything but where the gradients go. */
function semanticOf(options: FlashAttentionBackwardOptions) {
  const { sramBytes: _s, stats: _t, out: _o, ...semantic } = options;
  return semantic;
}

/** Runs the GPU forward (with lse) and backward; checks the gradients by the rule. Returns them. */
async function checkGradients(
  what: string,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options: FlashAttentionBackwardOptions,
  seed: number,
  tiling: GpuTilingTargets | undefined = TILINGS.small,
): Promise<AttentionGradients> {
  const gpu = await gpuAttention(tiling);
  const semantic = semanticOf(options);
  const out = await gpu.flashAttention(q, k, v, { ...semantic, returnLse: true });
  const dOut = randomTensor(rng(seed), [...out.shape]);
  const grads = await gpu.flashAttentionBackward(q, k, v, out, dOut, options);
  const exact = naiveAttentionBackward(q, k, v, dOut, semantic, "f64");
  const f32 = naiveAttentionBackward(q, k, v, dOut, semantic, "f32");
  const magnitude = Math.max(1, ...GRADIENTS.map((name) => exact[name].reduce((a, x) => Math.max(a, Math.abs(x)), 0)));
  for (const name of GRADIENTS) {
    const got = grads[name].data;
    assertNoNaN(`${what}: ${name}`, got, exact[name]);
    const error = maxAbsError(got, exact[name]);
    const baseline = maxAbsError(f32[name], exact[name]);
    const bound = 3 * baseline + FLOOR * magnitude;
    if (!(error <= bound)) {
      throw new Error(`${what}: ${name} error ${error} exceeds 3 × naive f32 error ${baseline} + floor = ${bound}`);
    }
  }
  return grads;
}

const side = fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: 40 }));
const maskArb: fc.Arbitrary<MaskSpec> = fc.record({
  kind: fc.constantFrom("f32" as const, "u8" as const),
  rank: fc.constantFrom(1 as const, 2 as const, 3 as const, 4 as const),
  keep: fc.tuple(fc.boolean(), fc.boolean(), fc.boolean(), fc.oneof(fc.constant(true), fc.boolean())),
  blocked: fc.constantFrom(0, 0.3, 0.7),
});
const cumulative = (ns: number[]) => Int32Array.from([0, ...ns], ((sum) => (x) => (sum += x))(0));

gpuTest("GPU backward: gradients match the f64 oracle on random problems with every option", async () => {
  const arb = fc.record({
    B: fc.integer({ min: 1, max: 2 }),
    Hkv: fc.integer({ min: 1, max: 2 }),
    group: fc.integer({ min: 1, max: 3 }),
    Nq: fc.integer({ min: 1, max: 45 }),
    Nk: fc.integer({ min: 1, max: 45 }),
    layout: fc.constantFrom<Layout>("bshd", "bhsd"),
    causal: fc.constantFrom<Causal>(false, true, "top-left"),
    window: fc.option(fc.tuple(side, side), { nil: null }),
    scale: fc.option(fc.double({ min: 0.05, max: 1.5, noNaN: true }), { nil: null }),
    softcapValue: fc.double({ min: 0.5, max: 50, noNaN: true }),
    // Which score terms are on: four combinations that cover each (every one compiles 3 kernels).
    terms: fc.constantFrom(
      { softcap: false, alibi: false, mask: "none" as const },
      { softcap: true, alibi: true, mask: "none" as const },
      { softcap: false, alibi: true, mask: "f32" as const },
      { softcap: true, alibi: false, mask: "u8" as const },
    ),
    seqLens: fc.boolean(),
    varlen: fc.boolean(),
    mask: maskArb,
    lengths: fc.array(fc.tuple(fc.integer({ min: 0, max: 25 }), fc.integer({ min: 0, max: 30 })), {
      minLength: 1,
      maxLength: 3,
    }),
    seed: fc.integer(),
  });
  await fc.assert(
    fc.asyncProperty(arb, async (s) => {
      const random = rng(s.seed);
      const H = s.Hkv * s.group;
      const [d, dv] = [5, 7];
      const options: FlashAttentionBackwardOptions = { causal: s.causal };
      if (s.window) options.windowSize = s.window;
      if (s.scale !== null) options.scale = s.scale;
      if (s.terms.softcap) options.softcap = s.softcapValue;
      let q: Tensor, k: Tensor, v: Tensor;
      if (s.varlen && s.terms.mask === "none") {
        const nq = s.lengths.map(([a]) => a);
        const nk = s.lengths.map(([, b]) => b);
        if (!nq.some((n) => n > 0)) nq[0] = 1;
        if (!nk.some((n) => n > 0)) nk[0] = 1;
        options.cuSeqlensQ = cumulative(nq);
        options.cuSeqlensK = cumulative(nk);
        const [tq, tk] = [options.cuSeqlensQ[nq.length], options.cuSeqlensK[nk.length]];
        [q, k, v] = [
          randomTensor(random, [tq, H, d]),
          randomTensor(random, [tk, s.Hkv, d]),
          randomTensor(random, [
            tk,
            s.Hkv,
            dv,
          ]),
        ];
        if (s.terms.alibi) options.alibiSlopes = Float32Array.from({ length: nq.length * H }, random);
      } else {
        const shape = (N: number, heads: number, D: number) =>
          s.layout === "bshd" ? [s.B, N, heads, D] : [s.B, heads, N, D];
        [q, k, v] = [
          randomTensor(random, shape(s.Nq, H, d)),
          randomTensor(random, shape(s.Nk, s.Hkv, d)),
          randomTensor(
            random,
            shape(s.Nk, s.Hkv, dv),
          ),
        ];
        options.layout = s.layout;
        if (s.terms.alibi) options.alibiSlopes = Float32Array.from({ length: H }, random);
        if (s.terms.mask !== "none") {
          options.mask = makeMask(random, { ...s.mask, kind: s.terms.mask }, [s.B, H, s.Nq, s.Nk]);
        }
        if (s.seqLens) {
          options.seqLensK = Int32Array.from({ length: s.B }, () => Math.floor(random() * (s.Nk + 1)));
        }
      }
      await checkGradients(JSON.stringify(s), q, k, v, options, s.seed ^ 0x77);
    }),
    { seed: 0x6b0, numRuns: 50 },
  );
});

gpuTest("GPU backward: the default tiling at d = 64 (the benchmark's shape) matches the f64 oracle", async () => {
  // 64-key blocks whose K and V stay in workgroup memory, query tiles of several rows per thread,
  // and a last block and tile that are partly empty.
  const random = rng(71);
  const q = randomTensor(random, [1, 150, 2, 64]);
  const k = randomTensor(random, [1, 141, 2, 64]);
  const v = randomTensor(random, [1, 141, 2, 64]);
  for (const causal of [false, true]) {
    await checkGradients(`d 64, causal ${causal}`, q, k, v, { causal }, 0x71, undefined);
  }
});

gpuTest("GPU backward: the gradients are the same bits on every call", async () => {
  const gpu = await gpuAttention(TILINGS.small);
  const random = rng(70);
  const q = randomTensor(random, [1, 40, 4, 5]);
  const k = randomTensor(random, [1, 50, 2, 5]);
  const v = randomTensor(random, [1, 50, 2, 7]);
  const out = await gpu.flashAttention(q, k, v, { causal: true, returnLse: true });
  const dOut = randomTensor(random, [...out.shape]);
  const first = await gpu.flashAttentionBackward(q, k, v, out, dOut, { causal: true });
  for (let i = 0; i < 5; i++) {
    const again = await gpu.flashAttentionBackward(q, k, v, out, dOut, { causal: true });
    for (const name of GRADIENTS) assertBitwiseEqual(`${name}, call ${i}`, again[name].data, first[name].data);
  }
  // The CPU backward is within the rule too, but sums in another order: not its bits.
  const cpu = flashAttentionBackward(q, k, v, out, dOut, { causal: true });
  if (cpu.dq.data.every((x, i) => Object.is(x, first.dq.data[i]))) throw new Error("the GPU gave the CPU's bits");
});

gpuTest("GPU backward: rows that see no key and keys no row sees get zero gradients", async () => {
  // Causal with Nq > Nk: the first Nq − Nk queries see nothing. seqLensK: keys past each entry's
  // length are seen by no row.
  const gpu = await gpuAttention(TILINGS.small);
  const random = rng(71);
  const [B, Nq, Nk, H] = [2, 30, 20, 2];
  const q = randomTensor(random, [B, Nq, H, 5]);
  const k = randomTensor(random, [B, Nk, H, 5]);
  const v = randomTensor(random, [B, Nk, H, 7]);
  const seqLensK = Int32Array.from([20, 13]);
  const out = await gpu.flashAttention(q, k, v, { causal: true, seqLensK, returnLse: true });
  const dOut = randomTensor(random, [...out.shape]);
  const g = await checkGradients("blind rows", q, k, v, { causal: true, seqLensK }, 71);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < Nq - seqLensK[b]; i++) {
      const row = g.dq.data.subarray(((b * Nq + i) * H) * 5, ((b * Nq + i + 1) * H) * 5);
      if (!row.every((x) => x === 0)) throw new Error(`dq of blind query ${i} of entry ${b}: ${row}`);
    }
    for (let j = seqLensK[b]; j < Nk; j++) {
      const dk = g.dk.data.subarray(((b * Nk + j) * H) * 5, ((b * Nk + j + 1) * H) * 5);
      const dv = g.dv.data.subarray(((b * Nk + j) * H) * 7, ((b * Nk + j + 1) * H) * 7);
      if (!dk.every((x) => x === 0) || !dv.every((x) => x === 0)) throw new Error(`key ${j} of entry ${b}`);
    }
  }
  void out;
  void dOut;
});

gpuTest(
  "GPU backward: 16-bit and GPU-buffer inputs give the bits of their f32 values; out buffers are used",
  async () => {
    const gpu = await gpuAttention(TILINGS.small);
    const random = rng(72);
    const half = (shape: number[], dtype: "f16" | "bf16") => {
      const f32 = randomTensor(random, shape);
      const bits = new Uint16Array(f32.data.length);
      convertInto(bits, dtype, 0, f32.data, "f32", 0, f32.data.length);
      return { data: bits, shape, dtype };
    };
    const q16 = half([1, 30, 2, 5], "bf16");
    const k16 = half([1, 40, 2, 5], "f16");
    const v32 = randomTensor(random, [1, 40, 2, 7]);
    const f32 = (t: { data: Uint16Array; shape: number[]; dtype: "f16" | "bf16" }): Tensor => ({
      data: widened(t.data, t.dtype),
      shape: t.shape,
    });
    const [q, k] = [f32(q16), f32(k16)];
    const out = await gpu.flashAttention(q, k, v32, { causal: true, returnLse: true });
    const dOut = randomTensor(random, [...out.shape]);
    const plain = await gpu.flashAttentionBackward(q, k, v32, out, dOut, { causal: true });
    const fromHalf = await gpu.flashAttentionBackward(q16, k16, v32, out, dOut, { causal: true });
    const buffers = [upload(q.data), upload(k.data), upload(v32.data)];
    const buffersOut = { dq: new Float32Array(q.data.length), dk: new Float32Array(k.data.length) };
    const fromGpu = await gpu.flashAttentionBackward(
      { buffer: buffers[0], shape: q.shape },
      { buffer: buffers[1], shape: k.shape },
      { buffer: buffers[2], shape: v32.shape },
      out,
      dOut,
      { causal: true, out: buffersOut },
    );
    for (const b of buffers) b.destroy();
    for (const name of GRADIENTS) {
      assertBitwiseEqual(`${name} from 16-bit inputs`, fromHalf[name].data, plain[name].data);
      assertBitwiseEqual(`${name} from GPU buffers`, fromGpu[name].data, plain[name].data);
    }
    if (fromGpu.dq.data !== buffersOut.dq || fromGpu.dk.data !== buffersOut.dk) throw new Error("out not used");
  },
);

gpuTest("GPU backward: bad calls reject with the CPU backward's errors; stats is a TypeError", async () => {
  const gpu = await gpuAttention(TILINGS.small);
  const random = rng(73);
  const q = randomTensor(random, [1, 8, 2, 5]);
  const k = randomTensor(random, [1, 9, 2, 5]);
  const v = randomTensor(random, [1, 9, 2, 7]);
  const out = await gpu.flashAttention(q, k, v, { returnLse: true });
  const noLse = await gpu.flashAttention(q, k, v);
  const dOut = randomTensor(random, [...out.shape]);
  const cases: [string, unknown, unknown, unknown][] = [
    ["out without lse", noLse, dOut, {}],
    ["dOut of another shape", out, randomTensor(random, [1, 8, 2, 6]), {}],
    ["an unknown option", out, dOut, { returnLse: true }],
    ["an out buffer of the wrong length", out, dOut, { out: { dq: new Float32Array(3) } }],
  ];
  for (const [what, o, dO, options] of cases) {
    let cpu: Error | undefined;
    try {
      flashAttentionBackward(q, k, v, o as never, dO as never, options as never);
    } catch (error) {
      cpu = error as Error;
    }
    if (!cpu) throw new Error(`${what}: the CPU accepted it`);
    let onGpu: Error | undefined;
    try {
      await gpu.flashAttentionBackward(q, k, v, o as never, dO as never, options as never);
    } catch (error) {
      onGpu = error as Error;
    }
    if (onGpu?.constructor !== cpu.constructor || onGpu.message !== cpu.message) {
      throw new Error(`${what}: GPU ${onGpu}, CPU ${cpu}`);
    }
  }
  let stats: Error | undefined;
  try {
    await gpu.flashAttentionBackward(q, k, v, out, dOut, { stats: true });
  } catch (error) {
    stats = error as Error;
  }
  if (!(stats instanceof TypeError) || !stats.message.includes("stats is not available from the GPU backward")) {
    throw new Error(`stats: ${stats}`);
  }
});
