// Shape checks of the validation stage: tensors, the agreement of q, k and v, and the list of
// sequences (batch entries or varlen packing) with their offsets. Touches no WebAssembly memory.

import { ShapeError } from "./errors.ts";
import { bitsOf, type ElementData, isFloat16Array } from "./_half.ts";
import { describe, formatShape, message } from "./_messages.ts";
import type { Sequence, Strides } from "./_problem.ts";
import type { Dtype, Layout } from "./tensor.ts";

const product = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/**
 * Whether `value` is a typed array of `type` itself: `instanceof` alone also admits a Proxy of one
 * (or an object whose prototype is one), whose elements cannot be copied as a typed array's.
 */
export function isArrayOf<T extends ArrayBufferView>(
  value: unknown,
  type: abstract new (...args: never[]) => T,
): value is T {
  return value instanceof type && ArrayBuffer.isView(value);
}

/** Whether a view's buffer was detached (transferred, e.g. by `structuredClone(x, { transfer })`). */
export function isDetached(view: ArrayBufferView): boolean {
  if (view.byteLength !== 0) return false;
  const buffer = view.buffer as ArrayBufferLike & { detached?: boolean };
  if (typeof buffer.detached === "boolean") return buffer.detached;
  try {
    new Uint8Array(buffer); // a detached buffer cannot be viewed (Node 20 has no `detached`)
    return false;
  } catch {
    return true;
  }
}

/** The TypeError for an array whose buffer was detached. */
export function detachedError(name: string): TypeError {
  return new TypeError(
    message(`${name} must be readable: its ArrayBuffer is detached (it was transferred), so it holds no elements`),
  );
}

/** Checks a tensor's type, rank, dims and length; `dims` names the axes for messages. */
export function checkTensor(
  name: string,
  t: unknown,
  dims: string,
  rank: number,
  types: readonly (Float32ArrayConstructor | Uint8ArrayConstructor)[] = [Float32Array],
): { data: Float32Array; shape: number[] } {
  const { data, shape } = fieldsOf(name, t);
  if (!types.some((type) => isArrayOf<ArrayBufferView>(data, type))) {
    const allowed = types.map((type) => type.name).join(" or ");
    throw new TypeError(message(`${name}.data must be a ${allowed}: ${name}.data is ${describe(data)}`));
  }
  return { data: data as Float32Array, shape: checkShape(name, shape, (data as Float32Array).length, dims, rank) };
}

/** A checked tensor that may hold 16-bit elements: its data as the kernels read it, and its dtype. */
export interface ElementTensor {
  /** f32 values, or the 16-bit elements' bits (a Float16Array's seen as a Uint16Array). */
  data: ElementData;
  shape: number[];
  dtype: Dtype;
  /** The caller's array, as passed. */
  original: ArrayBufferView;
}

/**
 * Checks a tensor that may be stored in 16 bits (q, k, v, a KV cache's rows, the backward's out and
 * dOut): its data and dtype agree (a Float32Array with dtype "f32" or none; a Uint16Array of raw
 * bits with dtype "f16" or "bf16"; a Float16Array with dtype "f16" or none), then as checkTensor.
 */
export function checkElementTensor(name: string, t: unknown, dims: string, rank: number): ElementTensor {
  const { data, shape } = fieldsOf(name, t);
  const dtype = readDtype(name, data, (t as { dtype?: unknown }).dtype);
  const view = data as ArrayBufferView & { length: number };
  const elements = data instanceof Float32Array || data instanceof Uint16Array ? data : bitsOf(view);
  return { data: elements, shape: checkShape(name, shape, view.length, dims, rank), dtype, original: view };
}

/** The message part that says how 16-bit tensors are passed. */
const HALF_FORMS = 'a Uint16Array of raw bits with dtype "f16" or "bf16", or a Float16Array';

/** A tensor's dtype from its data and its `dtype` field, or the TypeError that says why they disagree. */
function readDtype(name: string, data: unknown, dtype: unknown): Dtype {
  if (dtype !== undefined && dtype !== "f32" && dtype !== "f16" && dtype !== "bf16") {
    throw new TypeError(message(`${name}.dtype must be "f32", "f16" or "bf16": ${name}.dtype is ${describe(dtype)}`));
  }
  if (isArrayOf(data, Float32Array)) {
    if (dtype === undefined || dtype === "f32") return "f32";
    const forms = dtype === "f16" ? "a Uint16Array of raw bits or a Float16Array" : "a Uint16Array of raw bits";
    throw new TypeError(
      message(`${name}.data must be ${forms} when ${name}.dtype is "${dtype}": ${name}.data is a Float32Array`),
    );
  }
  if (isArrayOf(data, Uint16Array)) {
    if (dtype === "f16" || dtype === "bf16") return dtype;
    throw new TypeError(
      message(
        `${name}.dtype must say what the Uint16Array holds, "f16" or "bf16": ${name}.dtype is ${
          dtype === undefined ? "missing" : `"${dtype}"`
        }`,
      ),
    );
  }
  if (isFloat16Array(data)) {
    if (dtype === undefined || dtype === "f16") return "f16";
    throw new TypeError(
      message(`${name}.dtype must be "f16" (or left out) for a Float16Array: ${name}.dtype is "${dtype}"`),
    );
  }
  throw new TypeError(
    message(`${name}.data must be a Float32Array: ${name}.data is ${describe(data)} (16-bit tensors: ${HALF_FORMS})`),
  );
}

/** A tensor's fields, or the TypeError for something that is not an object. */
function fieldsOf(name: string, t: unknown): { data: unknown; shape: unknown } {
  if (typeof t !== "object" || t === null) {
    throw new TypeError(message(`${name} must be a tensor { data, shape }: ${name} is ${describe(t)}`));
  }
  const { data, shape } = t as { data?: unknown; shape?: unknown };
  if (ArrayBuffer.isView(data) && isDetached(data)) throw detachedError(`${name}.data`);
  return { data, shape };
}

/**
 * Checks a shape's rank and dims, and that it holds `length` elements; returns a copy. The shape is
 * read once, into the copy that is checked and returned: a Proxy that answers differently on a
 * later read cannot pass the checks with one shape and run with another.
 */
export function checkShape(name: string, value: unknown, length: number, dims: string, rank: number): number[] {
  if (!Array.isArray(value)) {
    throw new TypeError(message(`${name}.shape must be an array: ${name}.shape is ${describe(value)}`));
  }
  const shape: unknown[] = Array.from(value);
  if (shape.length !== rank) {
    throw new ShapeError(
      message(`${name} must have rank ${rank} (${dims}): ${name}.shape is ${formatShape(shape)}`),
      dims,
      formatShape(shape),
    );
  }
  if (!shape.every((x) => Number.isSafeInteger(x) && (x as number) > 0)) {
    throw new ShapeError(
      message(`${name}.shape must hold positive integers: ${name}.shape is ${formatShape(shape)}`),
      dims,
      formatShape(shape),
    );
  }
  const size = product(shape as number[]);
  if (length !== size) {
    throw new ShapeError(
      message(
        `${name}.data must hold ${size} elements (the product of ${name}.shape ${
          formatShape(shape)
        }): ${name}.data.length is ${length}`,
      ),
      String(size),
      String(length),
    );
  }
  return shape as number[];
}

/** Checks an Int32Array option of a given length. */
export function checkInt32Array(name: string, value: unknown, length: number, lengthText: string): Int32Array {
  if (!isArrayOf(value, Int32Array)) {
    throw new TypeError(message(`${name} must be an Int32Array: ${name} is ${describe(value)}`));
  }
  if (value.length !== length) {
    throw new ShapeError(
      message(`${name} must have length ${lengthText} = ${length}: ${name}.length is ${value.length}`),
      String(length),
      String(value.length),
    );
  }
  return value;
}

/**
 * Checks per-entry key lengths: an Int32Array of length B (`bName` in messages) holding lengths
 * in [0, Nk]; `context` is appended to the range error (e.g. the tensors' shapes).
 */
export function checkSeqLensK(value: unknown, B: number, bName: string, Nk: number, context = ""): Int32Array {
  const seqLensK = checkInt32Array("seqLensK", value, B, bName);
  for (let b = 0; b < B; b++) {
    if (!(seqLensK[b] >= 0 && seqLensK[b] <= Nk)) {
      throw new RangeError(
        message(`seqLensK must hold key lengths in [0, Nk = ${Nk}]: seqLensK[${b}] is ${seqLensK[b]}${context}`),
      );
    }
  }
  return seqLensK;
}

/** Checks varlen offsets: an Int32Array of length B + 1 ≥ 2, from 0, non-decreasing, ending at `total`. */
export function checkCumulative(name: string, value: unknown, total: number, totalName: string): Int32Array {
  if (!isArrayOf(value, Int32Array)) {
    throw new TypeError(message(`${name} must be an Int32Array: ${name} is ${describe(value)}`));
  }
  if (value.length < 2) {
    throw new ShapeError(
      message(`${name} must have length B + 1 ≥ 2: ${name}.length is ${value.length}`),
      "≥ 2",
      String(value.length),
    );
  }
  if (value[0] !== 0) throw new RangeError(message(`${name} must start at 0: ${name}[0] is ${value[0]}`));
  for (let i = 1; i < value.length; i++) {
    if (value[i] < value[i - 1]) {
      throw new RangeError(
        message(`${name} must be non-decreasing: ${name}[${i - 1}] is ${value[i - 1]}, ${name}[${i}] is ${value[i]}`),
      );
    }
  }
  const last = value[value.length - 1];
  if (last !== total) {
    throw new RangeError(
      message(`${name} must end at the total length ${totalName} = ${total}: ${name}[${value.length - 1}] is ${last}`),
    );
  }
  return value;
}

/** Strides of a tensor with H heads, N positions and D features per head, in `layout`. */
export function stridesOf(layout: Layout | "thd", H: number, N: number, D: number): Strides {
  return layout === "bhsd" ? { row: D, head: N * D } : { row: H * D, head: D };
}

/** q, k and v checked against each other, with the sizes they agree on. */
export interface QkvShapes {
  layout: Layout | "thd";
  q: ElementTensor;
  k: ElementTensor;
  v: ElementTensor;
  /** Batch size, or −1 with varlen packing (the cuSeqlens say). */
  B: number;
  H: number;
  Hkv: number;
  d: number;
  dv: number;
  /** q's and k's sequence dims (packed totals with varlen). */
  Nq: number;
  Nk: number;
}

/** The dims of q, k, v and their sequence/head axes in each layout. */
function axes(layout: Layout | "thd"): { rank: number; n: number; h: number; dims: string } {
  if (layout === "bshd") return { rank: 4, n: 1, h: 2, dims: '[B, N, H, d] in layout "bshd"' };
  if (layout === "bhsd") return { rank: 4, n: 2, h: 1, dims: '[B, H, N, d] in layout "bhsd"' };
  return { rank: 3, n: 0, h: 1, dims: "[total, H, d] with cuSeqlensQ/cuSeqlensK" };
}

/** "a.shape is [..], b.shape is [..]" */
export const twoShapes = (a: string, b: string, sa: number[], sb: number[]): string =>
  `${a}.shape is ${formatShape(sa)}, ${b}.shape is ${formatShape(sb)}`;

/**
 * How q, k and v are read: checkElementTensor, or a runner's reader that also accepts tensors
 * stored elsewhere (the WebGPU runner's GPU buffers) and defers to checkElementTensor otherwise.
 */
export type TensorReader = (name: string, t: unknown, dims: string, rank: number) => ElementTensor;

/**
 * Checks q, k and v in `layout` ("thd": varlen packing): each a tensor of the layout's rank, and
 * their batch, head dim, heads and lengths consistent, with H a multiple of Hkv (GQA).
 */
export function checkQkv(
  q: unknown,
  k: unknown,
  v: unknown,
  layout: Layout | "thd",
  read: TensorReader = checkElementTensor,
): QkvShapes {
  const ax = axes(layout);
  const Q = read("q", q, ax.dims, ax.rank);
  const K = read("k", k, ax.dims, ax.rank);
  const V = read("v", v, ax.dims, ax.rank);
  const same = (what: string, axis: number, a: string, sa: number[], b: string, sb: number[]) => {
    if (sa[axis] !== sb[axis]) {
      throw new ShapeError(
        message(`${b} must have the same ${what} as ${a}: ${twoShapes(a, b, sa, sb)}`),
        `${what} ${sa[axis]}`,
        `${what} ${sb[axis]}`,
      );
    }
  };
  const varlen = layout === "thd";
  if (!varlen) {
    same("batch size", 0, "q", Q.shape, "k", K.shape);
    same("batch size", 0, "k", K.shape, "v", V.shape);
  }
  same("head dim", ax.rank - 1, "q", Q.shape, "k", K.shape);
  same("number of heads", ax.h, "k", K.shape, "v", V.shape);
  same("sequence length", ax.n, "k", K.shape, "v", V.shape);
  const H = Q.shape[ax.h];
  const Hkv = K.shape[ax.h];
  if (H % Hkv !== 0) {
    throw new ShapeError(
      message(
        `the number of query heads must be a multiple of the number of key/value heads (GQA): H is ${H}, Hkv is ${Hkv} (${
          twoShapes("q", "k", Q.shape, K.shape)
        })`,
      ),
      `a divisor of ${H}`,
      String(Hkv),
    );
  }
  return {
    layout,
    q: Q,
    k: K,
    v: V,
    B: varlen ? -1 : Q.shape[0],
    H,
    Hkv,
    d: Q.shape[ax.rank - 1],
    dv: V.shape[ax.rank - 1],
    Nq: Q.shape[ax.n],
    Nk: K.shape[ax.n],
  };
}

/** The sequences of a call and how its lse is laid out. */
export interface SequenceList {
  /** Batch entries, or packed sequences with varlen. */
  batch: number;
  sequences: Sequence[];
  lseStrides: Strides;
  lseShape: number[];
}

/** Batch entries of a padded call, each with Nk keys or seqLensK[b] keys. */
export function batchSequences(s: QkvShapes, seqLensK: Int32Array | undefined): SequenceList {
  const { B, H, Hkv, d, dv, Nq, Nk } = s;
  if (seqLensK !== undefined) checkSeqLensK(seqLensK, B, "B", Nk, ` (k.shape is ${formatShape(s.k.shape)})`);
  const sequences: Sequence[] = [];
  for (let b = 0; b < B; b++) {
    sequences.push({
      b,
      qBase: b * Nq * H * d,
      kBase: b * Nk * Hkv * d,
      vBase: b * Nk * Hkv * dv,
      oBase: b * Nq * H * dv,
      lseBase: b * H * Nq,
      Nq,
      Nk: seqLensK ? seqLensK[b] : Nk,
    });
  }
  return { batch: B, sequences, lseStrides: { row: 1, head: Nq }, lseShape: [B, H, Nq] };
}

/** The packed sequences of a varlen call, from its cumulative offsets. */
export function varlenSequences(s: QkvShapes, cuSeqlensQ: unknown, cuSeqlensK: unknown): SequenceList {
  const cuQ = checkCumulative("cuSeqlensQ", cuSeqlensQ, s.Nq, "q.shape[0]");
  const cuK = checkCumulative("cuSeqlensK", cuSeqlensK, s.Nk, "k.shape[0]");
  if (cuQ.length !== cuK.length) {
    throw new ShapeError(
      message(
        `cuSeqlensQ and cuSeqlensK must have the same length (B + 1): cuSeqlensQ.length is ${cuQ.length}, cuSeqlensK.length is ${cuK.length}`,
      ),
      String(cuQ.length),
      String(cuK.length),
    );
  }
  const q = stridesOf("thd", s.H, s.Nq, s.d);
  const k = stridesOf("thd", s.Hkv, s.Nk, s.d);
  const v = stridesOf("thd", s.Hkv, s.Nk, s.dv);
  const o = stridesOf("thd", s.H, s.Nq, s.dv);
  const batch = cuQ.length - 1;
  const sequences: Sequence[] = [];
  for (let b = 0; b < batch; b++) {
    sequences.push({
      b,
      qBase: cuQ[b] * q.row,
      kBase: cuK[b] * k.row,
      vBase: cuK[b] * v.row,
      oBase: cuQ[b] * o.row,
      lseBase: cuQ[b],
      Nq: cuQ[b + 1] - cuQ[b],
      Nk: cuK[b + 1] - cuK[b],
    });
  }
  return { batch, sequences, lseStrides: { row: 1, head: s.Nq }, lseShape: [s.H, s.Nq] };
}

/** The output's shape: [B, Nq, H, dv], [B, H, Nq, dv] or [totalQ, H, dv]. */
export function outputShape(s: QkvShapes): number[] {
  if (s.layout === "thd") return [s.Nq, s.H, s.dv];
  return s.layout === "bshd" ? [s.B, s.Nq, s.H, s.dv] : [s.B, s.H, s.Nq, s.dv];
}

export { product };
