// Up-front checks of everything a caller passes, shared by flashAttention and referenceAttention.
// Nothing here touches WebAssembly memory: a call that fails validation leaves the module as it was.

import { ShapeError } from "./errors.ts";
import type { Layout, Tensor } from "./tensor.ts";

/** Element strides of one tensor for (batch, head, sequence position). */
export interface Strides {
  batch: number;
  head: number;
  row: number;
}

/** A validated attention call: sizes, resolved options and the strides of every tensor. */
export interface AttentionProblem {
  B: number;
  H: number;
  Nq: number;
  Nk: number;
  d: number;
  dv: number;
  layout: Layout;
  scale: number;
  causal: boolean;
  returnLse: boolean;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  qStrides: Strides;
  kStrides: Strides;
  vStrides: Strides;
  oStrides: Strides;
  /** Output shape in the input's layout. */
  oShape: number[];
}

/** The options both attention functions understand. */
export interface CommonOptions {
  scale?: number;
  causal?: boolean;
  layout?: Layout;
  returnLse?: boolean;
}

const PREFIX = "Cannot compute attention as";

/** "[1, 128, 8, 64]" */
export function formatShape(shape: readonly unknown[]): string {
  return `[${shape.map((x) => typeof x === "string" ? `"${x}"` : String(x)).join(", ")}]`;
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an Array";
  if (ArrayBuffer.isView(value)) return `a ${value.constructor.name}`;
  if (typeof value === "object") return `an object (${value?.constructor?.name ?? "no prototype"})`;
  if (typeof value === "string") return `"${value}"`;
  return String(value);
}

/** Rejects option keys the function does not know, so a misspelt option never goes unnoticed. */
export function checkOptionKeys(options: unknown, known: readonly string[]): Record<string, unknown> {
  if (options === undefined) return {};
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new TypeError(`${PREFIX} options must be an object: options is ${describe(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      throw new TypeError(
        `${PREFIX} options has an unknown key "${key}": the known keys are ${known.join(", ")}`,
      );
    }
  }
  return options as Record<string, unknown>;
}

function checkTensor(name: string, t: unknown, layout: Layout): { data: Float32Array; shape: number[] } {
  if (typeof t !== "object" || t === null) {
    throw new TypeError(`${PREFIX} ${name} must be a tensor { data, shape }: ${name} is ${describe(t)}`);
  }
  const { data, shape } = t as Partial<Tensor>;
  if (!(data instanceof Float32Array)) {
    throw new TypeError(`${PREFIX} ${name}.data must be a Float32Array: ${name}.data is ${describe(data)}`);
  }
  if (!Array.isArray(shape)) {
    throw new TypeError(`${PREFIX} ${name}.shape must be an array: ${name}.shape is ${describe(shape)}`);
  }
  const dims = layout === "bshd" ? "[B, N, H, d]" : "[B, H, N, d]";
  if (shape.length !== 4) {
    throw new ShapeError(
      `${PREFIX} ${name} must have rank 4 (${dims} in layout "${layout}"): ${name}.shape is ${formatShape(shape)}`,
      dims,
      formatShape(shape),
    );
  }
  if (!shape.every((x) => Number.isSafeInteger(x) && x > 0)) {
    throw new ShapeError(
      `${PREFIX} ${name}.shape must hold positive integers: ${name}.shape is ${formatShape(shape)}`,
      dims,
      formatShape(shape),
    );
  }
  const size = shape.reduce((a, b) => a * b, 1);
  if (data.length !== size) {
    throw new ShapeError(
      `${PREFIX} ${name}.data must hold ${size} elements (the product of ${name}.shape ${
        formatShape(shape)
      }): ${name}.data.length is ${data.length}`,
      String(size),
      String(data.length),
    );
  }
  return { data, shape: [...shape] };
}

/** Strides of a 4-D tensor with B, H, N and D in the given layout. */
export function stridesOf(layout: Layout, H: number, N: number, D: number): Strides {
  return layout === "bshd" ? { batch: N * H * D, head: D, row: H * D } : { batch: H * N * D, head: N * D, row: D };
}

/** Validates q, k, v and the options common to every attention function. */
export function validateAttention(
  q: unknown,
  k: unknown,
  v: unknown,
  options: Record<string, unknown>,
): AttentionProblem {
  const layout = options.layout ?? "bshd";
  if (layout !== "bshd" && layout !== "bhsd") {
    throw new TypeError(`${PREFIX} layout must be "bshd" or "bhsd": layout is ${describe(layout)}`);
  }
  const Q = checkTensor("q", q, layout);
  const K = checkTensor("k", k, layout);
  const V = checkTensor("v", v, layout);
  // [B, N, H, D] in "bshd", [B, H, N, D] in "bhsd"
  const nAxis = layout === "bshd" ? 1 : 2;
  const hAxis = layout === "bshd" ? 2 : 1;
  const [B, Nq, H, d] = [Q.shape[0], Q.shape[nAxis], Q.shape[hAxis], Q.shape[3]];
  const Nk = K.shape[nAxis];
  const dv = V.shape[3];
  const shapes = (a: string, b: string, sa: number[], sb: number[]) =>
    `${a}.shape is ${formatShape(sa)}, ${b}.shape is ${formatShape(sb)}`;
  const same = (what: string, axis: number, a: string, sa: number[], b: string, sb: number[]) => {
    if (sa[axis] !== sb[axis]) {
      throw new ShapeError(
        `${PREFIX} ${b} must have the same ${what} as ${a}: ${shapes(a, b, sa, sb)}`,
        `${what} ${sa[axis]}`,
        `${what} ${sb[axis]}`,
      );
    }
  };
  same("batch size", 0, "q", Q.shape, "k", K.shape);
  same("number of heads", hAxis, "q", Q.shape, "k", K.shape);
  same("head dim", 3, "q", Q.shape, "k", K.shape);
  same("batch size", 0, "k", K.shape, "v", V.shape);
  same("number of heads", hAxis, "k", K.shape, "v", V.shape);
  same("sequence length", nAxis, "k", K.shape, "v", V.shape);

  const scale = options.scale ?? 1 / Math.sqrt(d);
  if (typeof scale !== "number" || !Number.isFinite(scale) || scale < 0) {
    throw new RangeError(`${PREFIX} scale must be a finite number ≥ 0: scale is ${describe(scale)}`);
  }
  const causal = checkBoolean("causal", options.causal);
  const returnLse = checkBoolean("returnLse", options.returnLse);

  return {
    B,
    H,
    Nq,
    Nk,
    d,
    dv,
    layout,
    scale,
    causal,
    returnLse,
    q: Q.data,
    k: K.data,
    v: V.data,
    qStrides: stridesOf(layout, H, Nq, d),
    kStrides: stridesOf(layout, H, Nk, d),
    vStrides: stridesOf(layout, H, Nk, dv),
    oStrides: stridesOf(layout, H, Nq, dv),
    oShape: layout === "bshd" ? [B, Nq, H, dv] : [B, H, Nq, dv],
  };
}

function checkBoolean(name: string, value: unknown): boolean {
  if (value === undefined) return false;
  if (typeof value !== "boolean") {
    throw new TypeError(`${PREFIX} ${name} must be a boolean: ${name} is ${describe(value)}`);
  }
  return value;
}

/** Checks the caller's output buffer: a Float32Array of the output's size that overlaps no input. */
export function checkOut(out: unknown, p: AttentionProblem): Float32Array | undefined {
  if (out === undefined) return undefined;
  if (!(out instanceof Float32Array)) {
    throw new TypeError(`${PREFIX} out must be a Float32Array: out is ${describe(out)}`);
  }
  const size = p.oShape.reduce((a, b) => a * b, 1);
  if (out.length !== size) {
    throw new ShapeError(
      `${PREFIX} out must hold ${size} elements (output shape ${formatShape(p.oShape)}): out.length is ${out.length}`,
      String(size),
      String(out.length),
    );
  }
  for (const [name, input] of [["q", p.q], ["k", p.k], ["v", p.v]] as const) {
    if (overlaps(out, input)) {
      throw new TypeError(`${PREFIX} out must not share memory with ${name}: pass a separate buffer`);
    }
  }
  return out;
}

function overlaps(a: Float32Array, b: Float32Array): boolean {
  if (a.buffer !== b.buffer) return false;
  return a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

/** Formats a message with the library's prefix (for errors raised outside this module). */
export function message(text: string): string {
  return `${PREFIX} ${text}`;
}
