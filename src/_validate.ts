// Up-front checks of everything a caller passes, shared by every attention function and the
// reference. Nothing here touches WebAssembly memory: a call that fails validation leaves the
// module as it was. The result, an AttentionProblem, describes the call as a list of sequences
// (batch entries, or packed varlen sequences) with element offsets and strides into the caller's
// arrays, which is all the driver and the reference need.

import { ShapeError } from "./errors.ts";
import type { Layout, Tensor } from "./tensor.ts";

/** Element strides of a q/k/v/o tensor: per sequence position (row) and per head. */
export interface Strides {
  row: number;
  head: number;
}

/** One sequence of the call: a batch entry, or one packed sequence of a varlen call. */
export interface Sequence {
  /** Batch index (selects ALiBi slopes of shape [B, H] and the mask's batch). */
  b: number;
  /** Element offsets of the sequence's first row, head 0, in q, k, v and the output. */
  qBase: number;
  kBase: number;
  vBase: number;
  oBase: number;
  /** Offset of its first query's lse, head 0. */
  lseBase: number;
  /** Number of queries and of valid keys (keys past Nk do not exist). */
  Nq: number;
  Nk: number;
}

/** How masking, biases and capping apply to scores, after validation. */
export interface ScoreOptions {
  scale: number;
  /** 0 = off. */
  softcap: number;
  /** Window bounds, −1 = unbounded; causal is [−1, 0]. */
  windowLeft: number;
  windowRight: number;
  /** Causal/window alignment: bottom-right (i + Nk − Nq) or top-left (i). */
  topLeft: boolean;
  /** Per-head slopes, length H or B·H; the bias is −slope·|i + Nk − Nq − j|. */
  alibiSlopes: Float32Array | undefined;
  mask: ValidMask | undefined;
}

/** A mask with element strides broadcast to [B, H, Nq, Nk] (0 on broadcast axes). */
export interface ValidMask {
  data: Float32Array | Uint8Array;
  strides: [number, number, number, number];
}

/** A validated attention call. */
export interface AttentionProblem extends ScoreOptions {
  B: number;
  H: number;
  Hkv: number;
  d: number;
  dv: number;
  /** Query heads per K/V head, H / Hkv. */
  group: number;
  layout: Layout | "thd";
  returnLse: boolean;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  qStrides: Strides;
  kStrides: Strides;
  vStrides: Strides;
  oStrides: Strides;
  /** lse element strides: per query position and per head. */
  lseStrides: Strides;
  sequences: Sequence[];
  oShape: number[];
  oLength: number;
  lseShape: number[];
  lseLength: number;
  /** "q.shape is [..], k.shape is [..], v.shape is [..]", for messages of later checks. */
  shapes: string;
}

const PREFIX = "Cannot compute attention as";

/** Options that change what attention computes, shared by every attention function. */
export const SEMANTIC_OPTION_KEYS = ["scale", "causal", "windowSize", "softcap", "alibiSlopes", "mask"] as const;
/** Options that say how the sequences are laid out (not for the KV cache, whose layout is fixed). */
export const SEQUENCE_OPTION_KEYS = ["seqLensK", "cuSeqlensQ", "cuSeqlensK", "layout"] as const;

/** Formats a message with the library's prefix. */
export function message(text: string): string {
  return `${PREFIX} ${text}`;
}

/** "[1, 128, 8, 64]" */
export function formatShape(shape: readonly unknown[]): string {
  return `[${shape.map((x) => typeof x === "string" ? `"${x}"` : String(x)).join(", ")}]`;
}

/** A short description of a value for error messages. */
export function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) {
    return value.length <= 8 ? `an Array ${formatShape(value)}` : `an Array of length ${value.length}`;
  }
  if (ArrayBuffer.isView(value)) {
    const name = value.constructor.name;
    return `${/^[AEIO]/.test(name) ? "an" : "a"} ${name}`; // "a Uint8Array", "an Int32Array"
  }
  if (typeof value === "object") return `an object (${value?.constructor?.name ?? "no prototype"})`;
  if (typeof value === "string") return `"${value}"`;
  return String(value);
}

/** Rejects option keys the function does not know, so a misspelt option never goes unnoticed. */
export function checkOptionKeys(options: unknown, known: readonly string[]): Record<string, unknown> {
  if (options === undefined) return {};
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new TypeError(message(`options must be an object: options is ${describe(options)}`));
  }
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      throw new TypeError(message(`options has an unknown key "${key}": the known keys are ${known.join(", ")}`));
    }
  }
  return options as Record<string, unknown>;
}

const product = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** Checks a tensor's type, rank, dims and length; `dims` names the axes for messages. */
export function checkTensor(
  name: string,
  t: unknown,
  dims: string,
  rank: number,
  types: readonly (Float32ArrayConstructor | Uint8ArrayConstructor)[] = [Float32Array],
): { data: Float32Array; shape: number[] } {
  if (typeof t !== "object" || t === null) {
    throw new TypeError(message(`${name} must be a tensor { data, shape }: ${name} is ${describe(t)}`));
  }
  const { data, shape } = t as Partial<Tensor>;
  if (!types.some((type) => data instanceof type)) {
    const allowed = types.map((type) => type.name).join(" or ");
    throw new TypeError(message(`${name}.data must be a ${allowed}: ${name}.data is ${describe(data)}`));
  }
  if (!Array.isArray(shape)) {
    throw new TypeError(message(`${name}.shape must be an array: ${name}.shape is ${describe(shape)}`));
  }
  if (shape.length !== rank) {
    throw new ShapeError(
      message(`${name} must have rank ${rank} (${dims}): ${name}.shape is ${formatShape(shape)}`),
      dims,
      formatShape(shape),
    );
  }
  if (!shape.every((x) => Number.isSafeInteger(x) && x > 0)) {
    throw new ShapeError(
      message(`${name}.shape must hold positive integers: ${name}.shape is ${formatShape(shape)}`),
      dims,
      formatShape(shape),
    );
  }
  const size = product(shape);
  if (data!.length !== size) {
    throw new ShapeError(
      message(
        `${name}.data must hold ${size} elements (the product of ${name}.shape ${
          formatShape(shape)
        }): ${name}.data.length is ${data!.length}`,
      ),
      String(size),
      String(data!.length),
    );
  }
  return { data: data as Float32Array, shape: [...shape] };
}

/** The `stats` option. */
export function checkStats(value: unknown): boolean {
  return checkBoolean("stats", value);
}

function checkBoolean(name: string, value: unknown): boolean {
  if (value === undefined) return false;
  if (typeof value !== "boolean") {
    throw new TypeError(message(`${name} must be a boolean: ${name} is ${describe(value)}`));
  }
  return value;
}

/** Largest finite f32: the kernels compute in f32, so larger numbers would become Infinity there. */
const F32_MAX = 3.4028234663852886e38;

function checkNonNegative(name: string, value: unknown, fallback: number): number {
  const x = value === undefined ? fallback : value;
  if (typeof x !== "number") {
    throw new TypeError(message(`${name} must be a number: ${name} is ${describe(x)}`));
  }
  if (!Number.isFinite(x) || x < 0) {
    throw new RangeError(message(`${name} must be a finite number ≥ 0: ${name} is ${describe(x)}`));
  }
  if (x > F32_MAX) {
    throw new RangeError(message(`${name} must be at most ${F32_MAX} (the largest f32): ${name} is ${describe(x)}`));
  }
  return x;
}

/** Checks an Int32Array option of a given length. */
export function checkInt32Array(name: string, value: unknown, length: number, lengthText: string): Int32Array {
  if (!(value instanceof Int32Array)) {
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

/** The dims of q, k, v and their sequence/head axes in each layout. */
function axes(layout: Layout | "thd"): { rank: number; n: number; h: number; dims: string } {
  if (layout === "bshd") return { rank: 4, n: 1, h: 2, dims: '[B, N, H, d] in layout "bshd"' };
  if (layout === "bhsd") return { rank: 4, n: 2, h: 1, dims: '[B, H, N, d] in layout "bhsd"' };
  return { rank: 3, n: 0, h: 1, dims: "[total, H, d] with cuSeqlensQ/cuSeqlensK" };
}

/** Strides of a tensor with H heads, N positions and D features per head, in `layout`. */
export function stridesOf(layout: Layout | "thd", H: number, N: number, D: number): Strides {
  return layout === "bhsd" ? { row: D, head: N * D } : { row: H * D, head: D };
}

interface ValidateConfig {
  /** Options this function accepts besides the common ones (already checked for unknown keys). */
  seqLensK?: Int32Array;
  varlen?: { cuSeqlensQ: unknown; cuSeqlensK: unknown };
}

/**
 * Validates q, k, v and the common options. `extra` carries the per-function sequence options:
 * seqLensK (valid keys per batch entry) or varlen packing.
 */
export function validateAttention(
  q: unknown,
  k: unknown,
  v: unknown,
  options: Record<string, unknown>,
  extra: ValidateConfig = {},
): AttentionProblem {
  const varlen = extra.varlen !== undefined;
  const layout = (options.layout === undefined ? "bshd" : options.layout) as Layout | "thd";
  if (layout !== "bshd" && layout !== "bhsd") {
    throw new TypeError(message(`layout must be "bshd" or "bhsd": layout is ${describe(layout)}`));
  }
  if (varlen && layout !== "bshd") {
    throw new TypeError(message(`varlen packing (cuSeqlensQ, cuSeqlensK) needs layout "bshd": layout is "${layout}"`));
  }
  const ax = axes(varlen ? "thd" : layout);
  const Q = checkTensor("q", q, ax.dims, ax.rank);
  const K = checkTensor("k", k, ax.dims, ax.rank);
  const V = checkTensor("v", v, ax.dims, ax.rank);
  const shapes = (a: string, b: string, sa: number[], sb: number[]) =>
    `${a}.shape is ${formatShape(sa)}, ${b}.shape is ${formatShape(sb)}`;
  const same = (what: string, axis: number, a: string, sa: number[], b: string, sb: number[]) => {
    if (sa[axis] !== sb[axis]) {
      throw new ShapeError(
        message(`${b} must have the same ${what} as ${a}: ${shapes(a, b, sa, sb)}`),
        `${what} ${sa[axis]}`,
        `${what} ${sb[axis]}`,
      );
    }
  };
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
          shapes("q", "k", Q.shape, K.shape)
        })`,
      ),
      `a divisor of ${H}`,
      String(Hkv),
    );
  }
  const d = Q.shape[ax.rank - 1];
  const dv = V.shape[ax.rank - 1];
  const NqAll = Q.shape[ax.n];
  const NkAll = K.shape[ax.n];
  const B = varlen ? -1 : Q.shape[0];

  const qStrides = stridesOf(ax.rank === 3 ? "thd" : layout, H, NqAll, d);
  const kStrides = stridesOf(ax.rank === 3 ? "thd" : layout, Hkv, NkAll, d);
  const vStrides = stridesOf(ax.rank === 3 ? "thd" : layout, Hkv, NkAll, dv);
  const oStrides = stridesOf(ax.rank === 3 ? "thd" : layout, H, NqAll, dv);

  // Sequences: batch entries, or the packed sequences of a varlen call.
  const sequences: Sequence[] = [];
  let batch: number;
  let lseStrides: Strides;
  let lseShape: number[];
  if (varlen) {
    const cuQ = checkCumulative("cuSeqlensQ", extra.varlen!.cuSeqlensQ, NqAll, "q.shape[0]");
    const cuK = checkCumulative("cuSeqlensK", extra.varlen!.cuSeqlensK, NkAll, "k.shape[0]");
    if (cuQ.length !== cuK.length) {
      throw new ShapeError(
        message(
          `cuSeqlensQ and cuSeqlensK must have the same length (B + 1): cuSeqlensQ.length is ${cuQ.length}, cuSeqlensK.length is ${cuK.length}`,
        ),
        String(cuQ.length),
        String(cuK.length),
      );
    }
    batch = cuQ.length - 1;
    lseStrides = { row: 1, head: NqAll };
    lseShape = [H, NqAll];
    for (let b = 0; b < batch; b++) {
      sequences.push({
        b,
        qBase: cuQ[b] * qStrides.row,
        kBase: cuK[b] * kStrides.row,
        vBase: cuK[b] * vStrides.row,
        oBase: cuQ[b] * oStrides.row,
        lseBase: cuQ[b],
        Nq: cuQ[b + 1] - cuQ[b],
        Nk: cuK[b + 1] - cuK[b],
      });
    }
  } else {
    batch = B;
    const seqLensK = extra.seqLensK;
    if (seqLensK !== undefined) checkSeqLensK(seqLensK, B, "B", NkAll, ` (k.shape is ${formatShape(K.shape)})`);
    lseStrides = { row: 1, head: NqAll };
    lseShape = [B, H, NqAll];
    for (let b = 0; b < B; b++) {
      sequences.push({
        b,
        qBase: b * NqAll * H * d,
        kBase: b * NkAll * Hkv * d,
        vBase: b * NkAll * Hkv * dv,
        oBase: b * NqAll * H * dv,
        lseBase: b * H * NqAll,
        Nq: NqAll,
        Nk: seqLensK ? seqLensK[b] : NkAll,
      });
    }
  }

  const scale = checkNonNegative("scale", options.scale, 1 / Math.sqrt(d));
  const softcap = checkNonNegative("softcap", options.softcap, 0);
  if (softcap > 0 && Math.fround(softcap) === 0) {
    // f32 would round it to 0, which the kernels read as "no softcap"
    throw new RangeError(message(`softcap must be 0 or at least the smallest f32, 1.4e-45: softcap is ${softcap}`));
  }
  const causal = options.causal === undefined ? false : options.causal;
  if (causal !== true && causal !== false && causal !== "bottom-right" && causal !== "top-left") {
    throw new TypeError(
      message(`causal must be true, false, "bottom-right" or "top-left": causal is ${describe(causal)}`),
    );
  }
  let [windowLeft, windowRight] = checkWindow(options.windowSize);
  // A side at least max(Nq, Nk) long reaches every key, whatever the alignment: call it unbounded,
  // which also keeps the kernels' i32 key arithmetic (i + Nk − Nq + right) from overflowing.
  const reach = Math.max(NqAll, NkAll);
  if (windowLeft >= reach) windowLeft = -1;
  if (windowRight >= reach) windowRight = -1;
  if (causal !== false) windowRight = 0; // causal is the window [left, 0]
  const alibiSlopes = checkSlopes(options.alibiSlopes, H, batch, varlen);
  let mask: ValidMask | undefined;
  if (options.mask !== undefined) {
    if (varlen) throw notWithVarlen("mask");
    mask = checkMask(options.mask, [B, H, NqAll, NkAll]);
  }

  const oShape = varlen ? [NqAll, H, dv] : layout === "bshd" ? [B, NqAll, H, dv] : [B, H, NqAll, dv];
  return {
    B: batch,
    H,
    Hkv,
    d,
    dv,
    group: H / Hkv,
    layout: varlen ? "thd" : layout,
    returnLse: checkBoolean("returnLse", options.returnLse),
    scale,
    softcap,
    windowLeft,
    windowRight,
    topLeft: causal === "top-left",
    alibiSlopes,
    mask,
    q: Q.data,
    k: K.data,
    v: V.data,
    qStrides,
    kStrides,
    vStrides,
    oStrides,
    lseStrides,
    sequences,
    oShape,
    oLength: product(oShape),
    lseShape,
    lseLength: product(lseShape),
    shapes: `q.shape is ${formatShape(Q.shape)}, k.shape is ${formatShape(K.shape)}, v.shape is ${
      formatShape(V.shape)
    }`,
  };
}

/** The TypeError for an option that varlen packing does not take; `detail` names its value. */
export function notWithVarlen(what: string, detail?: string): TypeError {
  return new TypeError(
    message(`${what} cannot be combined with varlen packing (cuSeqlensQ, cuSeqlensK)${detail ? `: ${detail}` : ""}`),
  );
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
  if (!(value instanceof Int32Array)) {
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

function checkWindow(value: unknown): [number, number] {
  if (value === undefined) return [-1, -1];
  if (!Array.isArray(value)) {
    throw new TypeError(message(`windowSize must be an array [left, right]: windowSize is ${describe(value)}`));
  }
  const ok = value.length === 2 && value.every((x) => Number.isSafeInteger(x) && x >= -1);
  if (!ok) {
    throw new RangeError(
      message(`windowSize must be [left, right] with integers ≥ −1 (−1: unbounded): windowSize is ${describe(value)}`),
    );
  }
  return [value[0], value[1]];
}

function checkSlopes(value: unknown, H: number, B: number, varlen: boolean): Float32Array | undefined {
  if (value === undefined) return undefined;
  if (!(value instanceof Float32Array)) {
    throw new TypeError(message(`alibiSlopes must be a Float32Array: alibiSlopes is ${describe(value)}`));
  }
  if (value.length !== H && value.length !== B * H) {
    const bName = varlen ? "B (the number of packed sequences)" : "B";
    throw new ShapeError(
      message(
        `alibiSlopes must have length H = ${H} or B·H = ${
          B * H
        } (${bName} = ${B}): alibiSlopes.length is ${value.length}`,
      ),
      `${H} or ${B * H}`,
      String(value.length),
    );
  }
  return value;
}

/** Checks a mask and computes its strides broadcast right-aligned to `full` ([B, H, Nq, Nk]). */
function checkMask(value: unknown, full: number[]): ValidMask {
  const t = value as Partial<Tensor>;
  const rank = Array.isArray(t?.shape) ? t.shape.length : 0;
  if (Array.isArray(t?.shape) && (rank < 1 || rank > 4)) {
    throw new ShapeError(
      message(`mask must have 1 to 4 dims, broadcasting to [B, H, Nq, Nk]: mask.shape is ${formatShape(t.shape)}`),
      "1 to 4 dims",
      formatShape(t.shape),
    );
  }
  const { data, shape } = checkTensor("mask", value, "1 to 4 dims broadcasting to [B, H, Nq, Nk]", rank, [
    Float32Array,
    Uint8Array,
  ]);
  const padded = [...Array(4 - rank).fill(1), ...shape];
  const strides: [number, number, number, number] = [0, 0, 0, 0];
  let stride = 1;
  for (let axis = 3; axis >= 0; axis--) {
    if (padded[axis] !== full[axis] && padded[axis] !== 1) {
      throw new ShapeError(
        message(
          `mask.shape ${formatShape(shape)} does not broadcast to [B, H, Nq, Nk] = ${formatShape(full)}: dim ${
            axis - (4 - rank)
          } is ${padded[axis]}, expected 1 or ${full[axis]}`,
        ),
        formatShape(full),
        formatShape(shape),
      );
    }
    strides[axis] = padded[axis] === 1 ? 0 : stride;
    stride *= padded[axis];
  }
  return { data: data as Float32Array | Uint8Array, strides };
}

/** Checks the caller's output buffer: a Float32Array of the output's size that overlaps no input. */
export function checkOut(out: unknown, p: AttentionProblem): Float32Array | undefined {
  if (out === undefined) return undefined;
  if (!(out instanceof Float32Array)) {
    throw new TypeError(message(`out must be a Float32Array: out is ${describe(out)}`));
  }
  if (out.length !== p.oLength) {
    throw new ShapeError(
      message(
        `out must hold ${p.oLength} elements (output shape ${formatShape(p.oShape)}): out.length is ${out.length}`,
      ),
      String(p.oLength),
      String(out.length),
    );
  }
  for (const [name, input] of [["q", p.q], ["k", p.k], ["v", p.v]] as const) {
    if (overlaps(out, input)) {
      throw new TypeError(message(`out must not share memory with ${name}: pass a separate buffer`));
    }
  }
  return out;
}

function overlaps(a: ArrayBufferView, b: ArrayBufferView): boolean {
  if (a.buffer !== b.buffer) return false;
  return a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

/**
 * Validates a call whose options may carry per-sequence key lengths (`seqLensK`) or varlen
 * packing (`cuSeqlensQ`, `cuSeqlensK`), which exclude each other.
 */
export function validateCall(q: unknown, k: unknown, v: unknown, opts: Record<string, unknown>): AttentionProblem {
  const varlen = opts.cuSeqlensQ !== undefined || opts.cuSeqlensK !== undefined;
  if (varlen && opts.seqLensK !== undefined) {
    throw notWithVarlen("seqLensK");
  }
  return validateAttention(q, k, v, opts, {
    seqLensK: opts.seqLensK as Int32Array | undefined,
    varlen: varlen ? { cuSeqlensQ: opts.cuSeqlensQ, cuSeqlensK: opts.cuSeqlensK } : undefined,
  });
}
