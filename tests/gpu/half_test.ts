// 16-bit storage on the GPU: f16 and bf16 inputs are widened exactly in the shader (every finite
// f16 pattern, every normal bf16 one), so a call on them gives the bits of the same call on their
// f32 values; outDtype rounds to nearest even exactly as the host's conversion does (src/_half.ts,
// itself checked against an IEEE reference in tests/half_test.ts), ties and overflow included.
//
// GPUs may flush f32 subnormals (WGSL allows it), so values that are subnormal in f32 are left out
// of the exact checks: bf16 subnormals (they are f32 subnormals), and f32 outputs below 2⁻¹²⁶.

import type { Tensor } from "../../mod.ts";
import { convertInto, widened } from "../../src/_half.ts";
import { assertBitwiseEqual, randomTensor, rng } from "../_util.ts";
import { gpuAttention, gpuTest, TILINGS } from "./_gpu.ts";

/**
 * With one key, every query's softmax is that key with weight exactly 1 (exp(0) = 1, l = 1), so
 * O = V exactly, up to the sign of zero (−0 comes back as +0: the merge adds the other threads'
 * zeros). A way to read the shader's conversions of V and O element for element.
 * v holds `rows` rows of `dv` elements, laid out [rows, 1, 1, dv] with q and k of head dim 1.
 */
const oneKey = (rows: number) => ({
  q: { data: new Float32Array(rows).fill(1), shape: [rows, 1, 1, 1] },
  k: { data: new Float32Array(rows).fill(1), shape: [rows, 1, 1, 1] },
});

gpuTest("GPU widens every finite f16 and every normal bf16 pattern of v exactly (one key: O = V)", async () => {
  const gpu = await gpuAttention(TILINGS.small);
  const dv = 16;
  for (const dtype of ["f16", "bf16"] as const) {
    const patterns = Uint16Array.from({ length: 65536 }, (_, i) => i).filter((h) => {
      const exponent = dtype === "f16" ? (h >> 10) & 31 : (h >> 7) & 255;
      const mantissa = dtype === "f16" ? h & 0x3ff : h & 0x7f;
      if (exponent === (dtype === "f16" ? 31 : 255)) return false; // infinities and NaN
      return dtype === "f16" || exponent !== 0 || mantissa === 0; // bf16 subnormals are f32 subnormals
    });
    const rows = Math.ceil(patterns.length / dv);
    const bits = new Uint16Array(rows * dv);
    bits.set(patterns);
    const { q, k } = oneKey(rows);
    const o = await gpu.flashAttention(q, k, { data: bits, shape: [rows, 1, 1, dv], dtype });
    const expected = widened(bits, dtype);
    for (let i = 0; i < patterns.length; i++) {
      // === treats −0 and +0 as equal (see oneKey); everything else must match exactly.
      if (o.data[i] !== expected[i]) {
        throw new Error(`${dtype} 0x${bits[i].toString(16)}: ${o.data[i]} ≠ ${expected[i]}`);
      }
    }
  }
});

gpuTest("GPU on f16 and bf16 q, k, v (mixed) gives the bits of the same call on their f32 values", async () => {
  const gpu = await gpuAttention(TILINGS.small);
  const random = rng(60);
  const [B, Nq, Nk, H, d, dv] = [2, 33, 45, 2, 13, 16];
  const half = (shape: number[], dtype: "f16" | "bf16") => {
    const f32 = randomTensor(random, shape);
    const bits = new Uint16Array(f32.data.length);
    convertInto(bits, dtype, 0, f32.data, "f32", 0, f32.data.length);
    return { data: bits, shape, dtype };
  };
  const q = half([B, Nq, H, d], "bf16");
  const k = half([B, Nk, H, d], "f16");
  const v = half([B, Nk, H, dv], "f16");
  const f32 = (t: { data: Uint16Array; shape: number[]; dtype: "f16" | "bf16" }): Tensor => ({
    data: widened(t.data, t.dtype),
    shape: t.shape,
  });
  for (const causal of [false, true]) {
    const a = await gpu.flashAttention(q, k, v, { causal, returnLse: true });
    const b = await gpu.flashAttention(f32(q), f32(k), f32(v), { causal, returnLse: true });
    assertBitwiseEqual(`O, causal ${causal}`, a.data, b.data);
    assertBitwiseEqual(`lse, causal ${causal}`, a.lse.data, b.lse.data);
  }
});

/** f32 test values for rounding: ties and their neighbours, the overflow edges, f16 subnormals, random normals. */
function roundingValues(random: () => number): Float32Array {
  const bits = new Uint32Array(1);
  const f = new Float32Array(bits.buffer);
  const values: number[] = [0, 1, -1, 65504, 65519.99, 65520, -65520, 3.3895313892515355e38, 6.1e-5, 5.96e-8, 2.98e-8];
  const fromBits = (b: number) => {
    bits[0] = b >>> 0;
    return f[0];
  };
  for (let n = 0; n < 4000; n++) {
    const exponent = 103 + Math.floor(random() * 40); // 2⁻²⁴ .. 2¹⁶: f16's range and beyond
    const mantissa = Math.floor(random() * 0x800000);
    const sign = random() < 0.5 ? 0x80000000 : 0;
    const x = (sign | (exponent << 23) | mantissa) >>> 0;
    values.push(fromBits(x));
    values.push(fromBits((x & ~0x1fff) | 0x1000)); // an f16 tie (13 dropped bits = half)
    values.push(fromBits((x & ~0xffff) | 0x8000)); // a bf16 tie (16 dropped bits = half)
  }
  for (let n = 0; n < 500; n++) {
    values.push(fromBits(((1 + Math.floor(random() * 253)) << 23) | Math.floor(random() * 0x800000)));
  }
  return Float32Array.from(values);
}

gpuTest(
  "GPU outDtype rounds to nearest even exactly as the host's conversion (ties, overflow, f16 subnormals)",
  async () => {
    const gpu = await gpuAttention(TILINGS.small);
    const dv = 16;
    const values = roundingValues(rng(61));
    const rows = Math.ceil(values.length / dv);
    const v = { data: new Float32Array(rows * dv), shape: [rows, 1, 1, dv] };
    v.data.set(values);
    const { q, k } = oneKey(rows);
    const o32 = await gpu.flashAttention(q, k, v);
    // O = V (see oneKey), up to the sign of zero.
    for (let i = 0; i < v.data.length; i++) if (o32.data[i] !== v.data[i]) throw new Error(`O ≠ V at ${i}`);
    for (const outDtype of ["f16", "bf16"] as const) {
      const o16 = await gpu.flashAttention(q, k, v, { outDtype });
      const expected = new Uint16Array(v.data.length);
      convertInto(expected, outDtype, 0, o32.data as Float32Array, "f32", 0, v.data.length);
      assertBitwiseEqual(outDtype, o16.data as Uint16Array, expected);
    }
  },
);

gpuTest("GPU outDtype on a real problem gives the host's rounding of the f32 output, into out when given", async () => {
  const gpu = await gpuAttention(TILINGS.small);
  const random = rng(62);
  const q = randomTensor(random, [1, 40, 3, 13]);
  const k = randomTensor(random, [1, 50, 3, 13]);
  const v = randomTensor(random, [1, 50, 3, 16], 300); // values up to ±300: f16 keeps ~0.1 there
  const o32 = await gpu.flashAttention(q, k, v, { causal: true });
  for (const outDtype of ["f16", "bf16"] as const) {
    const expected = new Uint16Array(o32.data.length);
    convertInto(expected, outDtype, 0, o32.data as Float32Array, "f32", 0, o32.data.length);
    const out = new Uint16Array(o32.data.length).fill(0xffff);
    const o16 = await gpu.flashAttention(q, k, v, { causal: true, outDtype, out });
    if (o16.data !== out || o16.dtype !== outDtype) throw new Error("out not used");
    assertBitwiseEqual(outDtype, out, expected);
  }
});
