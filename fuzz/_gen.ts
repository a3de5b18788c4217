// Generators of valid calls for the fuzz properties: plain-data descriptions (printed as the
// counterexample when a property fails) and the tensors they stand for, drawn from their seed. The
// option arbitraries and the tensor builders are the test suite's (tests/_cases.ts), so the fuzzer
// and the tests mean the same thing by a case.

import fc from "fast-check";
import type { Dtype, FlashAttentionOptions, InputTensor, Tensor } from "../mod.ts";
import {
  buildSpec,
  causalArb,
  maskArb,
  type Model,
  softcapArb,
  type Spec,
  specArbitrary,
  varlenInputs,
  windowArb,
} from "../tests/_cases.ts";
import { rng } from "../tests/_util.ts";

/** How a tensor's data is held: its own ArrayBuffer, a view at a byte offset, or a SharedArrayBuffer. */
export type Backing = "plain" | "offset" | "shared";

/** Values at the edges of f32 that a case may plant in q, k or v. */
export const EDGE_VALUES = [3.4028234663852886e38, -3.4028234663852886e38, 1e-45, -1e-45, 1.2e-38, 0, -0] as const;

/** A valid forward call: a tests/_cases.ts Spec plus the storage and run options. */
export interface ForwardCase extends Spec {
  /** Packed (Nq, Nk) pairs: a varlen call (layout, mask and seqLensK are then dropped). */
  varlen: [number, number][] | null;
  dtypes: [Dtype, Dtype, Dtype];
  outDtype: Dtype;
  returnLse: boolean;
  stats: boolean;
  sramBytes: number | null;
  backing: Backing;
  /** Where edge values go: [tensor, element index (mod length), EDGE_VALUES index], or none. */
  edges: [0 | 1 | 2, number, number][];
}

const dtypeArb = fc.constantFrom<Dtype>("f32", "f32", "f16", "bf16");

/** Head dims 1..40, odd ones often (the kernels pad d to 4 and dv to 8). */
const dimArb = fc.oneof(fc.integer({ min: 1, max: 12 }), fc.integer({ min: 13, max: 40 }));

const base: Model<Spec> = {
  B: fc.integer({ min: 1, max: 3 }),
  Hkv: fc.integer({ min: 1, max: 3 }),
  group: fc.integer({ min: 1, max: 3 }),
  Nq: fc.integer({ min: 1, max: 40 }),
  Nk: fc.integer({ min: 1, max: 48 }),
  sameLength: fc.boolean(),
  d: dimArb,
  dv: dimArb,
  layout: fc.constantFrom("bshd" as const, "bhsd" as const),
  causal: causalArb,
  window: fc.option(windowArb(50), { nil: null }),
  // f32 scales: 0, or at least its smallest subnormal (a positive scale that rounds to 0 is an error)
  scale: fc.option(fc.double({ min: 0, max: 2, noNaN: true }).map(Math.fround), { nil: null }),
  alibi: fc.constantFrom("none" as const, "H" as const, "BH" as const),
  softcap: fc.oneof(fc.constant(0), softcapArb),
  mask: fc.option(maskArb, { nil: null }),
  seqLens: fc.boolean(),
  amplitude: fc.constantFrom(0.5, 1, 3),
  seed: fc.integer(),
};

/** Small sram sizes force many tiles; null is the default arena. */
const sramArb = fc.option(fc.constantFrom(16384, 24000, 65536), { nil: null });

export const forwardCaseArb: fc.Arbitrary<ForwardCase> = fc.tuple(
  specArbitrary(base, {}),
  fc.record({
    varlen: fc.option(
      fc.array(fc.tuple(fc.integer({ min: 0, max: 20 }), fc.integer({ min: 0, max: 24 })), {
        minLength: 1,
        maxLength: 4,
      }),
      { nil: null, freq: 4 },
    ),
    dtypes: fc.tuple(dtypeArb, dtypeArb, dtypeArb),
    outDtype: fc.constantFrom<Dtype>("f32", "f32", "f16", "bf16"),
    returnLse: fc.boolean(),
    stats: fc.boolean(),
    sramBytes: sramArb,
    backing: fc.constantFrom<Backing>("plain", "offset", "shared"),
    edges: fc.oneof(
      { weight: 3, arbitrary: fc.constant<[0 | 1 | 2, number, number][]>([]) },
      fc.array(
        fc.tuple(
          fc.constantFrom<0 | 1 | 2>(0, 1, 2),
          fc.nat(),
          fc.integer({ min: 0, max: EDGE_VALUES.length - 1 }),
        ),
        { minLength: 1, maxLength: 3 },
      ),
    ),
  }),
).map(([spec, extra]) => ({ ...spec, ...extra }));

/** f32 bits as a number. */
function f32Bits(x: number): number {
  const f = new Float32Array([x]);
  return new Uint32Array(f.buffer)[0];
}

/** The 16-bit element of `dtype` nearest below |x| (truncation: any bits are valid data). */
export function toHalfBits(x: number, dtype: "f16" | "bf16"): number {
  const bits = f32Bits(x);
  if (dtype === "bf16") return bits >>> 16;
  const sign = (bits >>> 16) & 0x8000;
  const a = Math.abs(x);
  if (Number.isNaN(x)) return 0x7e00;
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) return sign | Math.floor(a / 2 ** -24); // subnormal (or zero)
  const exponent = ((bits >>> 23) & 0xff) - 127 + 15;
  return sign | (exponent << 10) | ((bits >>> 13) & 0x3ff);
}

/** The value of a 16-bit element (exact). */
export function fromHalfBits(h: number, dtype: "f16" | "bf16"): number {
  if (dtype === "bf16") {
    const u = new Uint32Array([h << 16]);
    return new Float32Array(u.buffer)[0];
  }
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 31;
  const mantissa = h & 0x3ff;
  if (exponent === 31) return mantissa === 0 ? sign * Infinity : NaN;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** A copy of `data` held as `backing` says. */
export function backed<T extends Float32Array | Uint16Array>(data: T, backing: Backing): T {
  if (backing === "plain") return data;
  const Ctor = data.constructor as new (buffer: ArrayBufferLike, offset: number, length: number) => T;
  const pad = backing === "offset" ? 3 * data.BYTES_PER_ELEMENT : 0;
  const buffer = backing === "shared"
    ? new SharedArrayBuffer(data.byteLength + pad)
    : new ArrayBuffer(data.byteLength + pad + 8);
  const view = new Ctor(buffer, pad, data.length);
  view.set(data);
  return view;
}

/** A tensor of f32 values stored as `dtype` (16-bit: truncated), held as `backing`. */
export function stored(t: Tensor, dtype: Dtype, backing: Backing): InputTensor {
  if (dtype === "f32") return { data: backed(t.data, backing), shape: t.shape };
  const bits = Uint16Array.from(t.data, (x) => toHalfBits(x, dtype));
  return { data: backed(bits, backing), shape: t.shape, dtype };
}

/** The f32 values a stored tensor holds (16-bit elements widened exactly). */
export function widen(t: InputTensor): Tensor {
  if (t.data instanceof Float32Array) return { data: Float32Array.from(t.data), shape: t.shape };
  const dtype = (t.dtype ?? "f16") as "f16" | "bf16";
  return { data: Float32Array.from(t.data as Uint16Array, (h) => fromHalfBits(h, dtype)), shape: t.shape };
}

/** The inputs of a forward case: q, k, v as stored, their f32 values, and the options. */
export function buildForward(c: ForwardCase): {
  q: InputTensor;
  k: InputTensor;
  v: InputTensor;
  f32: [Tensor, Tensor, Tensor];
  options: FlashAttentionOptions;
} {
  let tensors: [Tensor, Tensor, Tensor];
  let options: FlashAttentionOptions;
  if (c.varlen) {
    const random = rng(c.seed);
    const H = c.Hkv * c.group;
    const packed = varlenInputs(random, c.varlen, c.Hkv, H, c.d, c.dv);
    tensors = [packed.q, packed.k, packed.v];
    options = { causal: c.causal, cuSeqlensQ: packed.cuSeqlensQ, cuSeqlensK: packed.cuSeqlensK };
    if (c.window) options.windowSize = c.window;
    if (c.scale !== null) options.scale = c.scale;
    if (c.softcap !== 0) options.softcap = c.softcap;
    if (c.alibi !== "none") options.alibiSlopes = Float32Array.from({ length: H }, () => random());
  } else {
    const built = buildSpec(c);
    tensors = [built.q, built.k, built.v];
    options = built.options;
  }
  for (const [which, at, value] of c.edges) {
    const data = tensors[which].data;
    data[at % data.length] = EDGE_VALUES[value];
  }
  const stores = tensors.map((t, i) => stored(t, c.dtypes[i], c.backing));
  options.returnLse = c.returnLse;
  options.stats = c.stats;
  if (c.outDtype !== "f32") options.outDtype = c.outDtype;
  if (c.sramBytes !== null) options.sramBytes = c.sramBytes;
  return {
    q: stores[0],
    k: stores[1],
    v: stores[2],
    f32: stores.map(widen) as [Tensor, Tensor, Tensor],
    options,
  };
}
