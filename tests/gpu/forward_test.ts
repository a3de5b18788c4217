// The WebGPU forward against the f64 reference: random problems, tile edges for several workgroup
// shapes and arenas, the benchmark's shape on the default tiling, the rules for rows that see no
// key, and bitwise repeatability. Tolerance: the flash-attention rule (tests/_util.ts), as for the
// CPU build: error(GPU vs f64) ≤ 2 × error(naive f32 vs f64) + 1e-6, for O and for lse.

import fc from "fast-check";
import type { FlashAttentionOptions, Tensor } from "../../mod.ts";
import { referenceAttention } from "../../src/reference.ts";
import { footprintBytes } from "../../src/gpu/_tiling.ts";
import { assertBitwiseEqual, randomTensor, rng } from "../_util.ts";
import { type Case, inputs, toBhsd } from "../_cases.ts";
import { checkAgainstReference, gpuAttention, gpuTest, TILINGS, upload } from "./_gpu.ts";

const tilingNames = Object.keys(TILINGS) as (keyof typeof TILINGS)[];

gpuTest(
  "GPU flashAttention() matches the f64 reference within the flash-attention tolerance on random problems",
  async () => {
    // Head dims not multiples of 4, 1, and 16, with tilings, in pairs that other tests share (so the
    // suite compiles few kernels).
    const arbitrary = fc.record({
      B: fc.integer({ min: 1, max: 2 }),
      H: fc.integer({ min: 1, max: 3 }),
      Nq: fc.integer({ min: 1, max: 90 }),
      Nk: fc.integer({ min: 1, max: 90 }),
      shape: fc.constantFrom(
        { dims: [5, 7], tiling: "tiny" as const },
        { dims: [5, 7], tiling: "small" as const },
        { dims: [16, 1], tiling: "small" as const },
        { dims: [13, 16], tiling: "wide" as const },
      ),
      causal: fc.constantFrom<FlashAttentionOptions["causal"]>(false, true, "top-left"),
      layout: fc.constantFrom("bshd" as const, "bhsd" as const),
      scale: fc.option(fc.double({ min: 0.01, max: 2, noNaN: true }), { nil: undefined }),
      hugeLogits: fc.boolean(),
      seed: fc.integer(),
    });
    await fc.assert(
      fc.asyncProperty(arbitrary, async (r) => {
        const [d, dv] = r.shape.dims;
        const scale = r.scale ?? 1 / Math.sqrt(d);
        // Typical |logit| ≈ amplitude²·scale·sqrt(d)/3: this makes the largest reach ~±1e4.
        const amplitude = r.hugeLogits ? Math.sqrt(3e4 / (scale * Math.sqrt(d))) : 1;
        const c: Case = {
          ...r,
          d,
          dv,
          amplitude,
          options: { causal: r.causal, layout: r.layout, scale: r.scale },
        };
        const gpu = await gpuAttention(TILINGS[r.shape.tiling]);
        const [q, k, v] = inputs(c);
        await checkAgainstReference(gpu, JSON.stringify(r), q, k, v, c.options);
      }),
      { seed: 0x69e, numRuns: 60 },
    );
  },
);

gpuTest(
  "GPU flashAttention() is exact at tile edges (N ∈ {1, Bc−1, Bc, Bc+1, Br±1, 3·Bc+5}) for several workgroups and arenas",
  async () => {
    let seed = 1;
    for (const name of tilingNames) {
      const gpu = await gpuAttention(TILINGS[name]);
      const [d, dv] = [5, 7];
      // The default arena (the device's workgroup storage) and the smallest that holds this tiling's
      // Br with Bc = T (tests/gpu/io_test.ts checks which Bc the rule then picks).
      const { rowsPerWorkgroup: Br0, threadsPerRow: T } = TILINGS[name];
      for (const sramBytes of [undefined, footprintBytes(Br0, T, T, d, dv, false)]) {
        const { Br, Bc } = gpu.tiling(d, dv, { sramBytes });
        if (Br !== Br0) throw new Error(`${name}: Br ${Br}`);
        const lengths = [...new Set([1, Bc - 1, Bc, Bc + 1, 3 * Bc + 5, Br - 1, Br + 1])].filter((n) => n >= 1);
        for (const Nq of lengths) {
          for (const Nk of [1, Bc - 1, Bc + 1, 3 * Bc + 5].filter((n) => n >= 1)) {
            for (const causal of [false, true]) {
              const c: Case = { B: 1, H: 2, Nq, Nk, d, dv, options: { causal, sramBytes }, amplitude: 1, seed: seed++ };
              const [q, k, v] = inputs(c);
              await checkAgainstReference(gpu, `${name} ${JSON.stringify(c)}`, q, k, v, c.options);
            }
          }
        }
      }
    }
  },
);

gpuTest(
  "GPU flashAttention() with the default tiling matches the reference at d = 64 around its 64 × 32 tiles",
  async () => {
    // The benchmark's head dim on the kernel the benchmark runs (64 rows, 2 threads per row, 32 keys).
    const gpu = await gpuAttention();
    const { Br, Bc } = gpu.tiling(64);
    if (gpu.adapter.maxWorkgroupStorageBytes >= 16384 && (Br !== 64 || Bc !== 32)) throw new Error(`${Br} × ${Bc}`);
    let seed = 100;
    for (const [Nq, Nk] of [[1, 1], [31, 33], [63, 65], [64, 32], [65, 200], [130, 129]]) {
      for (const causal of [false, true]) {
        const c: Case = { B: 1, H: 2, Nq, Nk, d: 64, dv: 64, options: { causal }, amplitude: 1, seed: seed++ };
        const [q, k, v] = inputs(c);
        await checkAgainstReference(gpu, JSON.stringify(c), q, k, v, c.options);
      }
    }
  },
);

gpuTest("GPU flashAttention() keeps logits of ±1e4 finite and exact (the online softmax never overflows)", async () => {
  const gpu = await gpuAttention(TILINGS.small);
  const c: Case = {
    B: 1,
    H: 2,
    Nq: 77,
    Nk: 90,
    d: 16,
    dv: 1,
    options: {},
    amplitude: Math.sqrt(3e4 / (0.25 * 4)),
    seed: 7,
  };
  const [q, k, v] = inputs(c);
  const o = await checkAgainstReference(gpu, JSON.stringify(c), q, k, v, c.options);
  const largest = o.lse.data.reduce((a, x) => Math.max(a, Math.abs(x)), 0);
  if (!(largest > 5e3)) throw new Error(`the inputs did not reach large logits: max |lse| ${largest}`);
});

gpuTest("GPU flashAttention() gives O = 0 and lse = −∞ to queries that see no key (causal with Nq > Nk)", async () => {
  const gpu = await gpuAttention(TILINGS.small);
  const random = rng(3);
  const [Nq, Nk] = [40, 9];
  const q = randomTensor(random, [2, Nq, 3, 16]);
  const k = randomTensor(random, [2, Nk, 3, 16]);
  const v = randomTensor(random, [2, Nk, 3, 7]);
  const o = await gpu.flashAttention(q, k, v, { causal: true, returnLse: true });
  for (let b = 0; b < 2; b++) {
    for (let h = 0; h < 3; h++) {
      for (let i = 0; i < Nq; i++) {
        const blind = i < Nq - Nk; // i + Nk − Nq < 0: no key j ≥ 0 is visible
        const lse = o.lse.data[(b * 3 + h) * Nq + i];
        if (blind !== (lse === -Infinity)) throw new Error(`query ${i}: lse ${lse}`);
        for (let c = 0; c < 7; c++) {
          const x = o.data[((b * Nq + i) * 3 + h) * 7 + c];
          if (blind ? !Object.is(x, 0) : !Number.isFinite(x)) throw new Error(`query ${i}: O ${x}`);
        }
      }
    }
  }
  await checkAgainstReference(gpu, "causal Nq > Nk", q, k, v, { causal: true });
});

gpuTest("GPU flashAttention() with scale 0 averages the values uniformly", async () => {
  const gpu = await gpuAttention(TILINGS.small);
  const random = rng(5);
  const q = randomTensor(random, [1, 3, 1, 5]);
  const k = randomTensor(random, [1, 6, 1, 5]);
  const v = randomTensor(random, [1, 6, 1, 2]);
  const o = await gpu.flashAttention(q, k, v, { scale: 0, returnLse: true });
  for (let i = 0; i < 3; i++) {
    for (let c = 0; c < 2; c++) {
      let mean = 0;
      for (let j = 0; j < 6; j++) mean += v.data[j * 2 + c] / 6;
      // six f32 products and sums of values below 1: well within 1e-6
      if (Math.abs(o.data[i * 2 + c] - mean) > 1e-6) throw new Error(`O[${i}][${c}] ${o.data[i * 2 + c]} ≠ ${mean}`);
    }
    // ln 6 from f32 exp and log: within 1e-6
    if (Math.abs(o.lse.data[i] - Math.log(6)) > 1e-6) throw new Error(`lse ${o.lse.data[i]} ≠ ln 6`);
  }
});

gpuTest("GPU flashAttention() writes into out, whatever out held before, and returns it", async () => {
  const gpu = await gpuAttention(TILINGS.small);
  const random = rng(6);
  const q = randomTensor(random, [2, 50, 2, 5]);
  const k = randomTensor(random, [2, 70, 2, 5]);
  const v = randomTensor(random, [2, 70, 2, 7]);
  const fresh = await gpu.flashAttention(q, k, v, { causal: true });
  const out = new Float32Array(2 * 50 * 2 * 7).fill(NaN);
  const o = await gpu.flashAttention(q, k, v, { causal: true, out });
  if (o.data !== out) throw new Error("the result does not use the caller's buffer");
  assertBitwiseEqual("out", out, fresh.data);
  await gpu.flashAttention(q, k, v, { causal: true, out });
  assertBitwiseEqual("out reused", out, fresh.data);
});

gpuTest("GPU flashAttention() gives bitwise identical results on repeated and concurrent calls", async () => {
  const gpu = await gpuAttention(TILINGS.wide);
  const random = rng(8);
  const q = randomTensor(random, [1, 130, 3, 13]);
  const k = randomTensor(random, [1, 257, 3, 13]);
  const v = randomTensor(random, [1, 257, 3, 16]);
  const first = await gpu.flashAttention(q, k, v, { causal: true, returnLse: true });
  const other = randomTensor(random, [2, 64, 1, 13]);
  for (let i = 0; i < 10; i++) {
    await gpu.flashAttention(other, other, other); // other calls in between must not matter
    const again = await gpu.flashAttention(q, k, v, { causal: true, returnLse: true });
    assertBitwiseEqual(`O, call ${i}`, again.data, first.data);
    assertBitwiseEqual(`lse, call ${i}`, again.lse.data, first.lse.data);
  }
  // Calls in flight together: each gets its own buffers and its own bits.
  const together = await Promise.all(
    Array.from(
      { length: 6 },
      (_, i) =>
        i % 2 === 0
          ? gpu.flashAttention(q, k, v, { causal: true, returnLse: true })
          : gpu.flashAttention(other, other, other, { returnLse: true }),
    ),
  );
  const alone = await gpu.flashAttention(other, other, other, { returnLse: true });
  together.forEach((o, i) => assertBitwiseEqual(`concurrent call ${i}`, o.data, i % 2 === 0 ? first.data : alone.data));
});

gpuTest(
  "GPU flashAttention() never reads past a tensor: NaN around the inputs, in host arrays or GPU buffers, changes no bit",
  async () => {
    const gpu = await gpuAttention(TILINGS.small);
    const random = rng(9);
    const [B, Nq, Nk, H, d, dv] = [2, 41, 53, 2, 13, 16];
    const q = randomTensor(random, [B, Nq, H, d]);
    const k = randomTensor(random, [B, Nk, H, d]);
    const v = randomTensor(random, [B, Nk, H, dv]);
    // Host inputs as views into larger NaN-filled buffers, as in xformers' padded tests.
    const padded = (t: Tensor): Tensor => {
      const big = new Float32Array(t.data.length + 64).fill(NaN);
      big.set(t.data, 32);
      return { data: big.subarray(32, 32 + t.data.length), shape: t.shape };
    };
    // GPU buffers longer than their tensors, NaN after the last element.
    const onGpu = (t: Tensor) => {
      const data = new Float32Array(t.data.length + 37).fill(NaN);
      data.set(t.data);
      return { buffer: upload(data), shape: t.shape };
    };
    for (const causal of [false, true]) {
      const options = { causal, returnLse: true } as const;
      const clean = await gpu.flashAttention(q, k, v, options);
      const viewed = await gpu.flashAttention(padded(q), padded(k), padded(v), options);
      const buffers = [onGpu(q), onGpu(k), onGpu(v)];
      const fromGpu = await gpu.flashAttention(buffers[0], buffers[1], buffers[2], options);
      for (const b of buffers) b.buffer.destroy();
      for (const [what, o] of [["host views", viewed], ["GPU buffers", fromGpu]] as const) {
        if (o.data.some(Number.isNaN)) throw new Error(`NaN leaked into O (${what})`);
        assertBitwiseEqual(`O, ${what}`, o.data, clean.data);
        assertBitwiseEqual(`lse, ${what}`, o.lse.data, clean.lse.data);
      }
    }
  },
);

gpuTest("GPU flashAttention() in layout bhsd gives the bits of bshd on transposed data", async () => {
  const gpu = await gpuAttention(TILINGS.small);
  const random = rng(11);
  const [B, Nq, Nk, H, d, dv] = [2, 37, 45, 3, 13, 16];
  const q = randomTensor(random, [B, Nq, H, d]);
  const k = randomTensor(random, [B, Nk, H, d]);
  const v = randomTensor(random, [B, Nk, H, dv]);
  const bshd = await gpu.flashAttention(q, k, v, { causal: true, returnLse: true });
  const bhsd = await gpu.flashAttention(toBhsd(q), toBhsd(k), toBhsd(v), {
    causal: true,
    returnLse: true,
    layout: "bhsd",
  });
  if (bhsd.shape.join() !== [B, H, Nq, dv].join()) throw new Error(`shape ${bhsd.shape}`);
  assertBitwiseEqual("O", bhsd.data, toBhsd({ data: bshd.data as Float32Array, shape: bshd.shape }).data);
  assertBitwiseEqual("lse", bhsd.lse.data, bshd.lse.data);
});

gpuTest("GPU and CPU results differ in bits but both meet the tolerance against the reference", async () => {
  // Not a bitwise claim across backends (the kernels sum in other orders); a check that the GPU
  // path is not secretly the CPU one, and that both are within the rule on the same problem.
  const gpu = await gpuAttention(TILINGS.small);
  const { flashAttention } = await import("../../mod.ts");
  const random = rng(12);
  const q = randomTensor(random, [1, 80, 2, 13]);
  const k = randomTensor(random, [1, 90, 2, 13]);
  const v = randomTensor(random, [1, 90, 2, 16]);
  const onGpu = await checkAgainstReference(gpu, "GPU", q, k, v, { causal: true });
  const onCpu = flashAttention(q, k, v, { causal: true, returnLse: true });
  const ref = referenceAttention(q, k, v, { causal: true });
  let differ = 0;
  for (let i = 0; i < ref.data.length; i++) if (!Object.is(onGpu.data[i], onCpu.data[i])) differ++;
  if (differ === 0) throw new Error("the GPU gave the CPU's exact bits on every element");
});

gpuTest("GPU software pipelining (tiling.prefetch) changes no bit of O, lse or stats", async () => {
  // The pipelined kernel loads tile j + 1 while computing tile j; the arithmetic is the same.
  const random = rng(13);
  for (const [d, dv] of [[5, 7], [16, 1]]) {
    const q = randomTensor(random, [2, 70, 2, d]);
    const k = randomTensor(random, [2, 90, 2, d]);
    const v = randomTensor(random, [2, 90, 2, dv]);
    for (
      const options of [{}, { causal: true }, { windowSize: [9, 3] as const }, { seqLensK: Int32Array.from([0, 61]) }]
    ) {
      const run = async (prefetch: boolean) =>
        (await gpuAttention({ ...TILINGS.small, prefetch })).flashAttention(q, k, v, {
          ...options,
          returnLse: true,
          stats: true,
        });
      const [on, off] = [await run(true), await run(false)];
      const what = `d ${d}, dv ${dv}, ${JSON.stringify(options)}`;
      assertBitwiseEqual(`O, ${what}`, on.data, off.data);
      assertBitwiseEqual(`lse, ${what}`, on.lse.data, off.lse.data);
      if (JSON.stringify(on.stats) !== JSON.stringify(off.stats)) throw new Error(`stats differ, ${what}`);
    }
  }
});
