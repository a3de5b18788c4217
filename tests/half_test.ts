// Half-precision storage (assembly/half.ts, src/_half.ts): f16 and bf16 tensors in HBM, widened to
// f32 by the tile copies, and outputs rounded to 16 bits by the store.
//
// The conversions are checked against references written here from the IEEE 754 definitions —
// values from sign, exponent and mantissa with Math.pow, rounding by searching the table of every
// representable value — not from the kernels' bit tricks: every 16-bit pattern widened, and every
// tie, the boundaries and random f32 narrowed, through the routines the tile copies call
// (widenInto, narrowInto) and through the host's conversion (what KV-cache appends use). Attention
// on 16-bit tensors is checked against the f64 reference fed the same rounded values, with the
// repository's tolerance rule, and bit for bit against the same call on those values in f32
// (widening is exact, so the arithmetic must be that call's).

import {
  type AttentionOutput,
  createKvCache,
  flashAttention,
  flashAttentionBackward,
  type FlashAttentionOptions,
  flashAttentionWithKvCache,
  type HalfAttentionOutput,
  type HalfDtype,
  type HalfTensor,
  ShapeError,
  type Tensor,
} from "../mod.ts";
import { convertInto, ELEMENT_KIND } from "../src/_half.ts";
import { heapOf } from "../src/_heap.ts";
import { flashAttentionBackwardIo, flashAttentionIo } from "../src/io.ts";
import { POOL_TUNING, startPool } from "../src/pool.ts";
import { referenceAttention } from "../src/reference.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import {
  assertBitwiseEqual,
  assertFlashTolerance,
  assertSameOutput,
  assertThrows,
  makeMask,
  naiveAttentionF32,
  randomTensor,
  rng,
  test,
} from "./_util.ts";

const kernels = loadKernels();
const FORMATS = {
  f16: { exponentBits: 5, mantissaBits: 10, bias: 15 },
  bf16: { exponentBits: 8, mantissaBits: 7, bias: 127 },
} as const;

// ---------------------------------------------------------------------------------------------
// Independent references, from the formats' definitions.

/** The value of a 16-bit pattern: (−1)^s · 1.m · 2^(e − bias), subnormal 0.m · 2^(1 − bias), e all ones ∞/NaN. */
function halfValue(h: number, dtype: HalfDtype): number {
  const { exponentBits, mantissaBits, bias } = FORMATS[dtype];
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> mantissaBits) & ((1 << exponentBits) - 1);
  const m = h & ((1 << mantissaBits) - 1);
  if (e === (1 << exponentBits) - 1) return m === 0 ? sign * Infinity : NaN;
  if (e === 0) return sign * m * Math.pow(2, 1 - bias - mantissaBits);
  return sign * (1 + m / Math.pow(2, mantissaBits)) * Math.pow(2, e - bias);
}

/**
 * Every non-negative finite value of a format in code order, and past the largest one the value
 * the next code would have with an unbounded exponent (2^16 for f16, 2^128 for bf16), where its
 * code means Infinity: IEEE 754 rounds to Infinity exactly from halfway to that value.
 */
const TABLES = Object.fromEntries(
  (["f16", "bf16"] as const).map((dtype) => {
    const { exponentBits, mantissaBits, bias } = FORMATS[dtype];
    const infinityCode = ((1 << exponentBits) - 1) << mantissaBits;
    const values = Array.from({ length: infinityCode + 1 }, (_, h) => halfValue(h, dtype));
    values[infinityCode] = Math.pow(2, (1 << exponentBits) - 1 - bias);
    return [dtype, values];
  }),
) as Record<HalfDtype, number[]>;

/** The code of the value nearest to x, ties to the even code; undefined for NaN. */
function roundReference(x: number, dtype: HalfDtype): number | undefined {
  if (Number.isNaN(x)) return undefined;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  const table = TABLES[dtype];
  const top = table.length - 1;
  if (a >= table[top]) return sign | top;
  let [lo, hi] = [0, top]; // table[lo] ≤ a < table[hi]
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (table[mid] <= a) lo = mid;
    else hi = mid;
  }
  const halfway = (table[lo] + table[hi]) / 2; // exact: one bit more than the format's values
  const code = a < halfway ? lo : a > halfway ? hi : lo % 2 === 0 ? lo : hi;
  return sign | code;
}

// ---------------------------------------------------------------------------------------------
// The kernels' conversions, through linear memory above any resident tensor.

function scratch(bytes: number): number {
  const ptr = Math.ceil(heapOf(kernels.memory, kernels.hbmPtr()).end / 64) * 64;
  const needed = ptr + bytes - kernels.memory.buffer.byteLength;
  if (needed > 0) kernels.memory.grow(Math.ceil(needed / 65536));
  return ptr;
}

/** The tile copies' widening of `bits`, `chunk` elements per call (a chunk below 4 runs only the scalar tail). */
function kernelWiden(bits: Uint16Array, dtype: HalfDtype, chunk = bits.length): Float32Array {
  const src = scratch(6 * bits.length + 128);
  const dst = src + Math.ceil((2 * bits.length) / 64) * 64;
  new Uint16Array(kernels.memory.buffer, src, bits.length).set(bits);
  for (let i = 0; i < bits.length; i += chunk) {
    kernels.widenInto(dst + 4 * i, src + 2 * i, Math.min(chunk, bits.length - i), ELEMENT_KIND[dtype]);
  }
  return new Float32Array(kernels.memory.buffer, dst, bits.length).slice();
}

/** The tile copies' narrowing of `values`. */
function kernelNarrow(values: Float32Array, dtype: HalfDtype): Uint16Array {
  const src = scratch(6 * values.length + 128);
  const dst = src + Math.ceil((4 * values.length) / 64) * 64;
  new Float32Array(kernels.memory.buffer, src, values.length).set(values);
  kernels.narrowInto(dst, src, values.length, ELEMENT_KIND[dtype]);
  return new Uint16Array(kernels.memory.buffer, dst, values.length).slice();
}

/** The host's narrowing (KV-cache appends). */
function hostNarrow(values: Float32Array, dtype: HalfDtype): Uint16Array {
  const bits = new Uint16Array(values.length);
  convertInto(bits, dtype, 0, values, "f32", 0, values.length);
  return bits;
}

const f32Bits = (x: Float32Array) => new Uint32Array(x.buffer, x.byteOffset, x.length);

test("widening turns every f16 and bf16 bit pattern into its exact value, NaN payloads kept", () => {
  const all = Uint16Array.from({ length: 65536 }, (_, h) => h);
  // The same patterns shuffled: f16's widening takes a shorter path for a group of eight without
  // Infinity or NaN, so in order (groups all finite or all not) and shuffled (groups that mix them).
  const shuffled = all.slice();
  const random = rng(136);
  for (let i = shuffled.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
  }
  for (const dtype of ["f16", "bf16"] as const) {
    const mantissaBits = FORMATS[dtype].mantissaBits;
    // SIMD lanes (the whole array; 13 elements per call: a group of eight, one of four and one
    // element) and the scalar tail (three per call), which is also the conversion the transposed
    // tile copies make element by element (widenOne)
    for (const [patterns, chunk] of [[all, all.length], [all, 13], [all, 3], [shuffled, all.length]] as const) {
      const got = kernelWiden(patterns, dtype, chunk);
      const bits = f32Bits(got);
      for (let i = 0; i < 65536; i++) {
        const h = patterns[i];
        const expected = halfValue(h, dtype);
        if (Number.isNaN(expected)) {
          // sign and payload where an f32 keeps them: the top of the mantissa
          const payload = (h & ((1 << mantissaBits) - 1)) << (23 - mantissaBits);
          const wanted = ((h & 0x8000) << 16 | 0x7f800000 | payload) >>> 0;
          if (bits[i] !== wanted) throw new Error(`${dtype} 0x${h.toString(16)}: bits 0x${bits[i].toString(16)}`);
        } else if (!Object.is(got[i], expected)) {
          throw new Error(`${dtype} 0x${h.toString(16)} (chunk ${chunk}): ${got[i]}, expected ${expected}`);
        }
      }
    }
    // the host's widening (the f64 reference's decoding) agrees bit for bit
    const host = new Float32Array(65536);
    convertInto(host, "f32", 0, all, dtype, 0, all.length);
    assertBitwiseEqual(`host ${dtype}`, host, kernelWiden(all, dtype));
  }
});

/** f32 values that test rounding to `dtype`: every value, tie and neighbour of a tie, boundaries, random bits. */
function roundingCases(dtype: HalfDtype): Float32Array {
  const table = TABLES[dtype];
  const cases: number[] = [0, -0, Infinity, -Infinity, NaN];
  const below = (x: number) => nextF32(x, -1);
  const above = (x: number) => nextF32(x, 1);
  for (let c = 0; c + 1 < table.length; c++) {
    const tie = (table[c] + table[c + 1]) / 2;
    for (const x of [table[c], tie, below(tie), above(tie)]) cases.push(x, -x);
  }
  const max = table[table.length - 2];
  const smallest = table[1];
  cases.push(max, above(max), (max + table[table.length - 1]) / 2, 3.4028234663852886e38, smallest, smallest / 2);
  cases.push(below(smallest / 2), above(smallest / 2), 1.401298464324817e-45, 1.1754942106924411e-38);
  const random = rng(7);
  const bits = new Uint32Array(1);
  const view = new Float32Array(bits.buffer);
  for (let i = 0; i < 200_000; i++) {
    bits[0] = Math.floor(random() * 2 ** 32);
    cases.push(view[0]);
  }
  return Float32Array.from(cases);
}

/** The f32 next to x (an f32) in direction `step` (±1), through its bits. */
function nextF32(x: number, step: 1 | -1): number {
  const view = new Float32Array([x]);
  const bits = new Int32Array(view.buffer);
  if (x === 0) return step * 1.401298464324817e-45;
  bits[0] += x > 0 === (step > 0) ? 1 : -1;
  return view[0];
}

test("narrowing rounds f32 to f16 and bf16 to nearest even: every tie, the boundaries and random values", () => {
  for (const dtype of ["f16", "bf16"] as const) {
    const cases = roundingCases(dtype);
    const { mantissaBits, exponentBits } = FORMATS[dtype];
    for (const [who, got] of [["kernel", kernelNarrow(cases, dtype)], ["host", hostNarrow(cases, dtype)]] as const) {
      for (let i = 0; i < cases.length; i++) {
        const x = cases[i];
        const expected = roundReference(x, dtype);
        if (expected === undefined) {
          // NaN: a quiet NaN (top mantissa bit set) with the sign and the top payload bits
          const sign = (f32Bits(cases.subarray(i, i + 1))[0] >>> 16) & 0x8000;
          const payload = (f32Bits(cases.subarray(i, i + 1))[0] & 0x7fffff) >>> (23 - mantissaBits);
          const quiet = 1 << (mantissaBits - 1);
          const wanted = sign | (((1 << exponentBits) - 1) << mantissaBits) | quiet | payload;
          if (got[i] !== wanted) throw new Error(`${who} ${dtype}(NaN ${i}): 0x${got[i].toString(16)}`);
        } else if (got[i] !== expected) {
          throw new Error(
            `${who} ${dtype}(${x}): 0x${got[i].toString(16)} (${halfValue(got[i], dtype)}), expected 0x${
              expected.toString(16)
            } (${halfValue(expected, dtype)})`,
          );
        }
      }
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Attention on 16-bit tensors.

/** A random 16-bit tensor (values rounded by the reference) and its values as an f32 tensor. */
function halfTensor(random: () => number, shape: number[], dtype: HalfDtype, scale = 1): [HalfTensor, Tensor] {
  const source = randomTensor(random, shape).data;
  const bits = Uint16Array.from(source, (x) => roundReference(x * scale, dtype)!);
  return [{ data: bits, shape, dtype }, decoded(bits, dtype, shape)];
}

function decoded(bits: Uint16Array, dtype: HalfDtype, shape: readonly number[]): Tensor {
  return { data: Float32Array.from(bits, (h) => halfValue(h, dtype)), shape };
}

/** q, k, v of the given dtypes ("f32" for a plain tensor) and their f32 values. */
function inputs(
  random: () => number,
  shapes: [number[], number[], number[]],
  dtypes: readonly ("f32" | HalfDtype)[],
): { half: (Tensor | HalfTensor)[]; f32: Tensor[] } {
  const half: (Tensor | HalfTensor)[] = [];
  const f32: Tensor[] = [];
  shapes.forEach((shape, i) => {
    const dtype = dtypes[i];
    if (dtype === "f32") {
      const t = randomTensor(random, shape);
      half.push(t);
      f32.push(t);
    } else {
      const [h, f] = halfTensor(random, shape, dtype);
      half.push(h);
      f32.push(f);
    }
  });
  return { half, f32 };
}

/** elementBytes for flashAttentionIo from tensors' dtypes. */
const bytes = (t: Tensor | HalfTensor): 2 | 4 => "dtype" in t && t.dtype !== undefined && t.dtype !== "f32" ? 2 : 4;

const CASES: { what: string; dtypes: ("f32" | HalfDtype)[]; shape: number[][]; options: FlashAttentionOptions }[] = [
  {
    what: "bf16, causal",
    dtypes: ["bf16", "bf16", "bf16"],
    shape: [[2, 33, 2, 24], [2, 45, 2, 24], [2, 45, 2, 24]],
    options: { causal: true },
  },
  {
    what: "f16, GQA, dv ≠ d",
    dtypes: ["f16", "f16", "f16"],
    shape: [[1, 70, 4, 19], [1, 70, 2, 19], [1, 70, 2, 7]],
    options: {},
  },
  {
    what: "f32 q, bf16 k and v",
    dtypes: ["f32", "bf16", "bf16"],
    shape: [[2, 9, 2, 16], [2, 130, 1, 16], [2, 130, 1, 16]],
    options: { causal: "top-left" },
  },
  {
    what: "mixed, window and ALiBi",
    dtypes: ["f16", "f32", "bf16"],
    shape: [[1, 50, 3, 12], [1, 61, 3, 12], [1, 61, 3, 12]],
    options: { windowSize: [7, 3], alibiSlopes: new Float32Array([0.5, 0.25, 0.125]) },
  },
  {
    what: "bf16, layout bhsd, softcap, seqLensK",
    dtypes: ["bf16", "bf16", "bf16"],
    shape: [[2, 2, 31, 8], [2, 2, 40, 8], [2, 2, 40, 8]],
    options: { layout: "bhsd", softcap: 5, seqLensK: new Int32Array([40, 17]) },
  },
  {
    what: "f16, varlen",
    dtypes: ["f16", "f16", "f16"],
    shape: [[30, 2, 16], [41, 2, 16], [41, 2, 16]],
    options: { cuSeqlensQ: new Int32Array([0, 10, 30]), cuSeqlensK: new Int32Array([0, 25, 41]), causal: true },
  },
];

test("flashAttention() on 16-bit tensors matches the f64 reference on their values, and the f32 call's bits", () => {
  const random = rng(21);
  for (const c of CASES) {
    const { half, f32 } = inputs(random, c.shape as [number[], number[], number[]], c.dtypes);
    const options = { ...c.options, returnLse: true as const };
    const got = flashAttention(half[0], half[1], half[2], { ...options, stats: true });
    // widening is exact, so the arithmetic is that of the f32 call on the same values
    const same = flashAttention(f32[0], f32[1], f32[2], options);
    assertBitwiseEqual(`${c.what}: O`, got.data, same.data);
    assertBitwiseEqual(`${c.what}: lse`, got.lse.data, same.lse.data);
    // tolerance: error vs the f64 reference ≤ 2 × the naive f32 error + 1e-6, both fed the same values
    const reference = referenceAttention(f32[0], f32[1], f32[2], options);
    const naive = naiveAttentionF32(f32[0], f32[1], f32[2], options);
    assertFlashTolerance(`${c.what}: O`, got.data, reference.data, naive.data);
    assertFlashTolerance(`${c.what}: lse`, got.lse.data, reference.lse!.data, naive.lse);
    // the reference reads 16-bit tensors at their values too
    assertBitwiseEqual(
      `${c.what}: reference on 16-bit tensors`,
      new Float32Array(referenceAttention(half[0], half[1], half[2], options).data),
      new Float32Array(reference.data),
    );
    // the counters count 2 bytes per 16-bit element, as the IO model does
    const layout = c.options.layout === "bhsd";
    const varlen = c.options.cuSeqlensQ !== undefined;
    const [qs, ks, vs] = c.shape;
    const io = flashAttentionIo(
      varlen ? { B: 2, H: qs[1], Hkv: ks[1], Nq: qs[0], Nk: ks[0], d: qs[2], dv: vs[2] } : {
        B: qs[0],
        H: qs[layout ? 1 : 2],
        Hkv: ks[layout ? 1 : 2],
        Nq: qs[layout ? 2 : 1],
        Nk: ks[layout ? 2 : 1],
        d: qs[3],
        dv: vs[3],
      },
      {
        causal: c.options.causal as boolean | undefined,
        windowSize: c.options.windowSize as [number, number] | undefined,
        alibi: c.options.alibiSlopes !== undefined,
        seqLensK: c.options.seqLensK as Int32Array | undefined,
        cuSeqlensQ: c.options.cuSeqlensQ as Int32Array | undefined,
        cuSeqlensK: c.options.cuSeqlensK as Int32Array | undefined,
        returnLse: true,
        elementBytes: { q: bytes(half[0]), k: bytes(half[1]), v: bytes(half[2]) },
      },
    );
    const { flops: _, ...counted } = got.stats!;
    if (JSON.stringify(counted) !== JSON.stringify(io)) {
      throw new Error(`${c.what}: stats ${JSON.stringify(counted)}\n vs closed form ${JSON.stringify(io)}`);
    }
  }
});

test("flashAttention() with a mask on bf16 tensors gives the f32 call's bits and counts 2-byte q, k, v", () => {
  const random = rng(22);
  const [B, Nq, Nk, H, d] = [2, 40, 56, 2, 16];
  const { half, f32 } = inputs(random, [[B, Nq, H, d], [B, Nk, H, d], [B, Nk, H, d]], ["bf16", "bf16", "bf16"]);
  for (const kind of ["f32", "u8"] as const) {
    const mask = makeMask(random, { kind, rank: 4, keep: [true, false, true, true], blocked: 0.3 }, [B, H, Nq, Nk]);
    const got = flashAttention(half[0], half[1], half[2], { mask, stats: true });
    const same = flashAttention(f32[0], f32[1], f32[2], { mask, stats: true });
    assertBitwiseEqual(`mask ${kind}`, got.data, same.data);
    for (const t of ["q", "k", "v"] as const) {
      if (2 * got.stats!.read[t] !== same.stats!.read[t]) throw new Error(`mask ${kind}: read.${t}`);
    }
    assertFlashTolerance(
      `mask ${kind}`,
      got.data,
      referenceAttention(f32[0], f32[1], f32[2], { mask }).data,
      naiveAttentionF32(f32[0], f32[1], f32[2], { mask }).data,
    );
  }
});

/** The reference rounding of an f32 output. */
const roundAll = (values: Float32Array, dtype: HalfDtype) => Uint16Array.from(values, (x) => roundReference(x, dtype)!);

test("outDtype stores O in 16 bits, rounded to nearest even from the f32 result; lse stays f32", () => {
  const random = rng(23);
  const { half } = inputs(random, [[1, 150, 2, 20], [1, 150, 2, 20], [1, 150, 2, 12]], ["bf16", "f16", "bf16"]);
  const [q, k, v] = half;
  for (const outDtype of ["f16", "bf16"] as const) {
    const f32 = flashAttention(q, k, v, { causal: true, returnLse: true, stats: true });
    const got = flashAttention(q, k, v, { causal: true, returnLse: true, outDtype, stats: true });
    if (got.dtype !== outDtype || !(got.data instanceof Uint16Array)) throw new Error(`${outDtype}: ${got.data}`);
    assertBitwiseEqual(`${outDtype}: O`, got.data, roundAll(f32.data, outDtype));
    assertBitwiseEqual(`${outDtype}: lse`, got.lse.data, f32.lse.data);
    if (2 * got.stats!.written.o !== f32.stats!.written.o) throw new Error(`${outDtype}: written.o`);
    // into the caller's buffer
    const out = new Uint16Array(got.data.length);
    const into = flashAttention(q, k, v, { causal: true, outDtype, out });
    if (into.data !== out) throw new Error("the result does not use the caller's buffer");
    assertBitwiseEqual(`${outDtype}: out`, out, got.data as Uint16Array);
    // streamed through HBM in chunks (sramBytes small: many query blocks), the same bits
    const big = inputs(random, [[1, 700, 1, 8], [1, 700, 1, 8], [1, 700, 1, 8]], ["bf16", "bf16", "bf16"]).half;
    const whole = flashAttention(big[0], big[1], big[2], { outDtype, sramBytes: 16384 });
    const wholeF32 = flashAttention(big[0], big[1], big[2], { sramBytes: 16384 });
    assertBitwiseEqual(`${outDtype}: many blocks`, whole.data as Uint16Array, roundAll(wholeF32.data, outDtype));
  }
});

const FLOAT16 = (globalThis as { Float16Array?: new (n: number) => ArrayBufferView & ArrayLike<number> })
  .Float16Array;

if (FLOAT16 !== undefined) {
  test("a Float16Array is read as f16, and may be the out of an f16 output", () => {
    const random = rng(24);
    const [h] = halfTensor(random, [1, 20, 2, 8], "f16");
    const f16 = new FLOAT16(h.data.length);
    new Uint16Array(f16.buffer, f16.byteOffset, f16.length).set(h.data as Uint16Array);
    const t = { data: f16, shape: h.shape } as HalfTensor;
    const expected = flashAttention(h, h, h, { causal: true, outDtype: "f16" });
    const out = new FLOAT16(expected.data.length);
    const got = flashAttention(t, { ...t, dtype: "f16" }, t, { causal: true, outDtype: "f16", out: out as never });
    if (got.data !== out) throw new Error("the result does not use the caller's Float16Array");
    assertBitwiseEqual("Float16Array", new Uint16Array(out.buffer), expected.data as Uint16Array);
    const values = out as ArrayLike<number>;
    if (!Array.from(values).every((x, i) => Object.is(x, halfValue((expected.data as Uint16Array)[i], "f16")))) {
      throw new Error("the Float16Array does not hold the values");
    }
  });
}

test("a 16-bit KV cache rounds appended f32 rows, and decoding on it gives the bits of an f32 cache of those values", async () => {
  const random = rng(25);
  const [B, maxLen, H, Hkv, d, dv] = [2, 300, 4, 2, 24, 16];
  for (const dtype of ["bf16", "f16"] as const) {
    const config = { batch: B, maxLen, kvHeads: Hkv, headDim: d, valueDim: dv, dtype };
    const cache = createKvCache(config);
    const pool = await startPool(2, { ...POOL_TUNING, inlineFlops: 0 });
    try {
      const pooled = pool.createKvCache(config);
      if (cache.dtype !== dtype || pooled.dtype !== dtype) throw new Error("dtype");
      // the caller-owned f32 caches of the rounded values, [B, maxLen, Hkv, D]
      const kOwned = new Float32Array(B * maxLen * Hkv * d);
      const vOwned = new Float32Array(B * maxLen * Hkv * dv);
      const lengths = new Int32Array(B);
      const append = (Nnew: number, taken: Int32Array) => {
        const kNew = randomTensor(random, [B, Nnew, Hkv, d]);
        const vNew = randomTensor(random, [B, Nnew, Hkv, dv]);
        cache.append(kNew, vNew, taken);
        pooled.append(kNew, vNew, taken);
        for (const [rows, owned, D] of [[kNew.data, kOwned, d], [vNew.data, vOwned, dv]] as const) {
          for (let b = 0; b < B; b++) {
            for (let n = 0; n < taken[b]; n++) {
              for (let x = 0; x < Hkv * D; x++) {
                const value = rows[(b * Nnew + n) * Hkv * D + x];
                owned[(b * maxLen + lengths[b] + n) * Hkv * D + x] = halfValue(roundReference(value, dtype)!, dtype);
              }
            }
          }
        }
        for (let b = 0; b < B; b++) lengths[b] += taken[b];
      };
      append(200, new Int32Array([200, 133])); // a ragged prompt
      for (let step = 0; step < 3; step++) {
        append(1, new Int32Array([1, 1]));
        const q = randomTensor(random, [B, 1, H, d]);
        const kCache = { data: kOwned, shape: [B, maxLen, Hkv, d] };
        const vCache = { data: vOwned, shape: [B, maxLen, Hkv, dv] };
        for (const numSplits of [1, 3]) {
          const options = { causal: true, returnLse: true, stats: true, numSplits };
          const got = flashAttentionWithKvCache(q, cache, options);
          const owned = flashAttentionWithKvCache(q, kCache, vCache, { ...options, cacheSeqLens: lengths });
          assertBitwiseEqual(`${dtype} step ${step}, ${numSplits} splits: O`, got.data, owned.data);
          assertBitwiseEqual(`${dtype} step ${step}: lse`, got.lse!.data, owned.lse!.data);
          assertSameOutput(
            `${dtype} pool, step ${step}`,
            await pool.flashAttentionWithKvCache(q, pooled, options),
            got,
          );
          const io = flashAttentionIo(
            { B, H, Hkv, Nq: 1, Nk: maxLen, d, dv },
            { causal: true, returnLse: true, seqLensK: lengths, numSplits, elementBytes: { k: 2, v: 2 } },
          );
          const { flops: _, ...counted } = got.stats!;
          if (JSON.stringify(counted) !== JSON.stringify(io)) {
            throw new Error(`${dtype} step ${step}: stats ${JSON.stringify(counted)} vs ${JSON.stringify(io)}`);
          }
          const options64 = { causal: true, seqLensK: lengths };
          assertFlashTolerance(
            `${dtype} step ${step}`,
            got.data,
            referenceAttention(q, kCache, vCache, options64).data,
            naiveAttentionF32(q, kCache, vCache, options64).data,
          );
          const rounded = flashAttentionWithKvCache(q, cache, { causal: true, numSplits, outDtype: "bf16" });
          assertBitwiseEqual(
            `${dtype} step ${step}: bf16 output`,
            rounded.data as Uint16Array,
            roundAll(got.data, "bf16"),
          );
        }
      }
      // bf16 rows into an f16 cache: exact to f32, then rounded to f16
      if (dtype === "f16") {
        const [kRow, kRowF32] = halfTensor(random, [B, 1, Hkv, d], "bf16", 1e3);
        const [vRow] = halfTensor(random, [B, 1, Hkv, dv], "bf16");
        cache.append(kRow, vRow);
        const at = (b: number) => (b * Hkv * maxLen + lengths[b]) * d; // head 0 of entry b, [B, Hkv, maxLen, d]
        const stored = new Uint16Array(
          kernels.memory.buffer,
          (cache as unknown as { kPtr: number }).kPtr,
          B * Hkv * maxLen * d,
        );
        for (let b = 0; b < B; b++) {
          for (let x = 0; x < d; x++) {
            const wanted = roundReference(kRowF32.data[b * Hkv * d + x], "f16");
            if (stored[at(b) + x] !== wanted) throw new Error(`bf16 → f16 append: entry ${b}, element ${x}`);
          }
        }
      }
      pooled.free();
    } finally {
      cache.free();
      await pool.close();
    }
  }
});

test("caller-owned 16-bit caches take f32 and 16-bit kNew, vNew, converted to the caches' dtype", () => {
  const random = rng(26);
  const [B, maxLen, Hkv, d] = [1, 40, 2, 8];
  const [kCache, kValues] = halfTensor(random, [B, maxLen, Hkv, d], "bf16");
  const [vCache, vValues] = halfTensor(random, [B, maxLen, Hkv, d], "f16");
  const kNew = randomTensor(random, [B, 2, Hkv, d]);
  const [vNew, vNewValues] = halfTensor(random, [B, 2, Hkv, d], "bf16");
  const q = randomTensor(random, [B, 1, 4, d]);
  const cacheSeqLens = new Int32Array([30]);
  const got = flashAttentionWithKvCache(q, kCache, vCache, { cacheSeqLens, kNew, vNew, causal: true });
  const row = 30 * Hkv * d;
  for (let x = 0; x < 2 * Hkv * d; x++) {
    kValues.data[row + x] = halfValue(roundReference(kNew.data[x], "bf16")!, "bf16");
    vValues.data[row + x] = halfValue(roundReference(vNewValues.data[x], "f16")!, "f16");
    if ((kCache.data as Uint16Array)[row + x] !== roundReference(kNew.data[x], "bf16")) throw new Error("kCache");
    if ((vCache.data as Uint16Array)[row + x] !== roundReference(vNewValues.data[x], "f16")) throw new Error("vCache");
  }
  const same = flashAttentionWithKvCache(q, kValues, vValues, { cacheSeqLens: new Int32Array([32]), causal: true });
  assertBitwiseEqual("caller-owned 16-bit caches", got.data, same.data);
});

test("the pool gives the synchronous bits and bytes for 16-bit tensors and outputs", async () => {
  const random = rng(27);
  const { half } = inputs(random, [[2, 120, 4, 32], [2, 150, 2, 32], [2, 150, 2, 24]], ["bf16", "f16", "bf16"]);
  const [q, k, v] = half;
  const pools = await Promise.all([
    startPool(2, { ...POOL_TUNING, inlineFlops: 0 }),
    startPool(3, { inlineFlops: 0, slabBudgetBytes: 0, jobsPerThread: 16 }), // streamed, many jobs
  ]);
  try {
    for (const pool of pools) {
      for (const outDtype of ["f32", "bf16"] as const) {
        const options = { causal: true, returnLse: true, stats: true, outDtype };
        const expected = flashAttention(q, k, v, options) as AttentionOutput | HalfAttentionOutput;
        const got = await pool.flashAttention(q, k, v, options) as AttentionOutput | HalfAttentionOutput;
        assertSameOutput(`pool ${pool.threads}, ${outDtype}`, got as AttentionOutput, expected as AttentionOutput);
      }
    }
  } finally {
    await Promise.all(pools.map((p) => p.close()));
  }
});

test("flashAttentionBackward() on 16-bit q, k, v, out and dOut gives the f32 call's bits and counts 2-byte elements", async () => {
  const random = rng(28);
  const [B, N, H, Hkv, d] = [1, 70, 4, 2, 16];
  const { half, f32 } = inputs(random, [[B, N, H, d], [B, N, Hkv, d], [B, N, Hkv, d]], ["bf16", "f16", "bf16"]);
  const out = flashAttention(half[0], half[1], half[2], { causal: true, returnLse: true, outDtype: "bf16" });
  const outValues = { ...decoded(out.data as Uint16Array, "bf16", out.shape), lse: out.lse };
  const [dOut, dOutValues] = halfTensor(random, [B, N, H, d], "f16");
  const got = flashAttentionBackward(half[0], half[1], half[2], out, dOut, { causal: true, stats: true });
  const same = flashAttentionBackward(f32[0], f32[1], f32[2], outValues, dOutValues, { causal: true });
  for (const name of ["dq", "dk", "dv"] as const) assertBitwiseEqual(name, got[name].data, same[name].data);
  const io = flashAttentionBackwardIo(
    { B, H, Hkv, Nq: N, Nk: N, d },
    { causal: true, elementBytes: { q: 2, k: 2, v: 2, o: 2, dOut: 2 } },
  );
  const { flops: _, ...counted } = got.stats!;
  if (JSON.stringify(counted) !== JSON.stringify(io)) {
    throw new Error(`backward stats ${JSON.stringify(counted)}\n vs closed form ${JSON.stringify(io)}`);
  }
  const pool = await startPool(2, { ...POOL_TUNING, inlineFlops: 0 });
  try {
    const pooled = await pool.flashAttentionBackward(half[0], half[1], half[2], out, dOut, { causal: true });
    for (const name of ["dq", "dk", "dv"] as const) {
      assertBitwiseEqual(`pool ${name}`, pooled[name].data, got[name].data);
    }
  } finally {
    await pool.close();
  }
});

test("16-bit tensors, dtypes and outputs that do not fit are TypeErrors that say why, and the module stays usable", () => {
  const shape = [1, 4, 1, 8];
  const f32 = { data: new Float32Array(32), shape };
  const bits = new Uint16Array(32);
  // deno-lint-ignore no-explicit-any
  const call = (...args: any[]) => () => (flashAttention as any)(...args);
  assertThrows(
    call({ data: bits, shape }, f32, f32),
    TypeError,
    'Cannot compute attention as q.dtype must say what the Uint16Array holds, "f16" or "bf16": q.dtype is missing',
  );
  assertThrows(
    call(f32, { data: bits, shape, dtype: "f32" }, f32),
    TypeError,
    'k.dtype must say what the Uint16Array holds, "f16" or "bf16": k.dtype is "f32"',
  );
  assertThrows(
    call(f32, f32, { data: new Float32Array(32), shape, dtype: "bf16" }),
    TypeError,
    'v.data must be a Uint16Array of raw bits when v.dtype is "bf16": v.data is a Float32Array',
  );
  assertThrows(
    call({ data: new Float32Array(32), shape, dtype: "f16" }, f32, f32),
    TypeError,
    'q.data must be a Uint16Array of raw bits or a Float16Array when q.dtype is "f16": q.data is a Float32Array',
  );
  assertThrows(
    call({ data: bits, shape, dtype: "fp16" }, f32, f32),
    TypeError,
    'q.dtype must be "f32", "f16" or "bf16": q.dtype is "fp16"',
  );
  assertThrows(
    call({ data: new Int16Array(32), shape, dtype: "f16" }, f32, f32),
    TypeError,
    "q.data must be a Float32Array: q.data is an Int16Array (16-bit tensors:",
  );
  assertThrows(
    call({ data: new Uint16Array(31), shape, dtype: "bf16" }, f32, f32),
    ShapeError,
    "q.data must hold 32 elements",
  );
  assertThrows(
    call(f32, f32, f32, { outDtype: "half" }),
    TypeError,
    'outDtype must be "f32", "f16" or "bf16": outDtype is "half"',
  );
  assertThrows(
    call(f32, f32, f32, { outDtype: "bf16", out: new Float32Array(32) }),
    TypeError,
    'out must be a Uint16Array when outDtype is "bf16": out is a Float32Array',
  );
  assertThrows(
    call(f32, f32, f32, { outDtype: "f16", out: new Float32Array(32) }),
    TypeError,
    'out must be a Uint16Array or a Float16Array when outDtype is "f16": out is a Float32Array',
  );
  assertThrows(
    call(f32, f32, f32, { out: new Uint16Array(32) }),
    TypeError,
    "out must be a Float32Array: out is a Uint16Array",
  );
  assertThrows(
    call(f32, f32, f32, { outDtype: "f16", out: new Uint16Array(16) }),
    ShapeError,
    "out must hold 32 elements",
  );
  const k = { data: bits, shape, dtype: "bf16" };
  assertThrows(call(f32, k, f32, { outDtype: "bf16", out: bits }), TypeError, "out must not share memory with k");
  if (FLOAT16 !== undefined) {
    assertThrows(
      call({ data: new FLOAT16(32), shape, dtype: "bf16" }, f32, f32),
      TypeError,
      'q.dtype must be "f16" (or left out) for a Float16Array: q.dtype is "bf16"',
    );
  }
  assertThrows(
    // deno-lint-ignore no-explicit-any
    () => createKvCache({ batch: 1, maxLen: 8, kvHeads: 1, headDim: 8, dtype: "f8" as any }),
    TypeError,
    'Cannot create a KV cache as dtype must be "f32", "f16" or "bf16": dtype is "f8"',
  );
  const cache = createKvCache({ batch: 1, maxLen: 8, kvHeads: 1, headDim: 8, dtype: "bf16" });
  try {
    assertThrows(
      () => cache.append({ data: new Uint16Array(8), shape: [1, 1, 1, 8] } as HalfTensor, f32),
      TypeError,
      "kNew.dtype must say what the Uint16Array holds",
    );
    if (cache.length(0) !== 0) throw new Error("a failed append wrote rows");
  } finally {
    cache.free();
  }
  assertThrows(
    () => flashAttentionIo({ B: 1, H: 1, Nq: 8, Nk: 8, d: 8 }, { elementBytes: { k: 3 as 2 } }),
    RangeError,
    "elementBytes.k must be 2 (f16, bf16) or 4 (f32): elementBytes.k is 3",
  );
  assertThrows(
    () => flashAttentionIo({ B: 1, H: 1, Nq: 8, Nk: 8, d: 8 }, { elementBytes: { dOut: 2 } as never }),
    TypeError,
    'elementBytes has an unknown key "dOut"',
  );
  // and the module still works
  const o = flashAttention({ data: Uint16Array.from({ length: 32 }, () => 0x3f80), shape, dtype: "bf16" }, f32, f32);
  if (!o.data.every((x) => x === 0)) throw new Error("the module is not usable after the errors");
});
