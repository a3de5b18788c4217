// Option readers of the validation stage: one small reader per option, each turning what the
// caller passed into a checked value or a typed error that names it. Touches no WebAssembly memory.

import { ShapeError } from "./errors.ts";
import { bitsOf, type ElementData, isFloat16Array } from "./_half.ts";
import { ARENA_MAX_BYTES, DEFAULT_SRAM_BYTES, HEAD_DIM_MAX } from "./_limits.ts";
import { describe, formatShape, message } from "./_messages.ts";
import type { AttentionProblem, OutBuffer, ValidMask } from "./_problem.ts";
import { checkTensor, detachedError, isArrayOf, isDetached } from "./_shapes.ts";
import type { Dtype, Layout, Tensor } from "./tensor.ts";

/** Options that change what attention computes, shared by every attention function. */
export const SEMANTIC_OPTION_KEYS = ["scale", "causal", "windowSize", "softcap", "alibiSlopes", "mask"] as const;
/** Options that say how the sequences are laid out (not for the KV cache, whose layout is fixed). */
export const SEQUENCE_OPTION_KEYS = ["seqLensK", "cuSeqlensQ", "cuSeqlensK", "layout"] as const;
/** Options of how a call runs rather than what it computes. */
export const RUN_OPTION_KEYS = ["returnLse", "out", "outDtype", "sramBytes", "stats"] as const;

/**
 * Rejects option keys the function does not know, so a misspelt option never goes unnoticed;
 * `say` formats the messages (default: the attention functions' prefix).
 */
export function checkOptionKeys(
  options: unknown,
  known: readonly string[],
  say: (text: string) => string = message,
): Record<string, unknown> {
  if (options === undefined) return {};
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new TypeError(say(`options must be an object: options is ${describe(options)}`));
  }
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      throw new TypeError(say(`options has an unknown key "${key}": the known keys are ${known.join(", ")}`));
    }
  }
  return options as Record<string, unknown>;
}

/** The TypeError for an option that varlen packing does not take; `detail` names its value. */
export function notWithVarlen(what: string, detail?: string): TypeError {
  return new TypeError(
    message(`${what} cannot be combined with varlen packing (cuSeqlensQ, cuSeqlensK)${detail ? `: ${detail}` : ""}`),
  );
}

/** `layout`: "bshd" (default) or "bhsd"; varlen packing needs "bshd". */
export function readLayout(value: unknown, varlen: boolean): Layout {
  const layout = value === undefined ? "bshd" : value;
  if (layout !== "bshd" && layout !== "bhsd") {
    throw new TypeError(message(`layout must be "bshd" or "bhsd": layout is ${describe(layout)}`));
  }
  if (varlen && layout !== "bshd") {
    throw new TypeError(message(`varlen packing (cuSeqlensQ, cuSeqlensK) needs layout "bshd": layout is "${layout}"`));
  }
  return layout;
}

/** A boolean option, false when absent. */
export function readBoolean(name: string, value: unknown): boolean {
  if (value === undefined) return false;
  if (typeof value !== "boolean") {
    throw new TypeError(message(`${name} must be a boolean: ${name} is ${describe(value)}`));
  }
  return value;
}

/** The `stats` option. */
export function checkStats(value: unknown): boolean {
  return readBoolean("stats", value);
}

/** Largest finite f32: the kernels compute in f32, so larger numbers would become Infinity there. */
const F32_MAX = 3.4028234663852886e38;

function readNonNegative(name: string, value: unknown, fallback: number): number {
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

/** `scale`: finite, ≥ 0, within f32, and not a positive number that f32 rounds to 0; default 1/sqrt(d). */
export function readScale(value: unknown, d: number): number {
  const scale = readNonNegative("scale", value, 1 / Math.sqrt(d));
  if (scale > 0 && Math.fround(scale) === 0) {
    // the kernels would multiply by 0 (0·∞ = NaN) where the f64 reference multiplies by the scale
    throw new RangeError(message(`scale must be 0 or at least the smallest f32, 1.4e-45: scale is ${scale}`));
  }
  return scale;
}

/** `softcap`: finite, ≥ 0, within f32, and not a positive number that f32 rounds to 0 (0: off). */
export function readSoftcap(value: unknown): number {
  const softcap = readNonNegative("softcap", value, 0);
  if (softcap > 0 && Math.fround(softcap) === 0) {
    // f32 would round it to 0, which the kernels read as "no softcap"
    throw new RangeError(message(`softcap must be 0 or at least the smallest f32, 1.4e-45: softcap is ${softcap}`));
  }
  return softcap;
}

/** `causal`: false (default), true, "bottom-right" or "top-left". */
export function readCausal(value: unknown): boolean | "bottom-right" | "top-left" {
  const causal = value === undefined ? false : value;
  if (causal !== true && causal !== false && causal !== "bottom-right" && causal !== "top-left") {
    throw new TypeError(
      message(`causal must be true, false, "bottom-right" or "top-left": causal is ${describe(causal)}`),
    );
  }
  return causal;
}

/**
 * `windowSize` with `causal`, as the kernels take them: [left, right], −1 unbounded. A side at
 * least `reach` = max(Nq, Nk) long reaches every key, whatever the alignment, so it becomes
 * unbounded, which also keeps the kernels' i32 key arithmetic (i + Nk − Nq + right) from
 * overflowing; causal is the window [left, 0].
 */
export function readWindow(value: unknown, causal: boolean | string, reach: number): [number, number] {
  let [left, right] = [-1, -1];
  if (value !== undefined) {
    if (!Array.isArray(value)) {
      throw new TypeError(message(`windowSize must be an array [left, right]: windowSize is ${describe(value)}`));
    }
    const ok = value.length === 2 && value.every((x) => Number.isSafeInteger(x) && x >= -1);
    if (!ok) {
      throw new RangeError(
        message(
          `windowSize must be [left, right] with integers ≥ −1 (−1: unbounded): windowSize is ${describe(value)}`,
        ),
      );
    }
    [left, right] = value;
  }
  if (left >= reach) left = -1;
  if (right >= reach) right = -1;
  if (causal !== false) right = 0;
  return [left, right];
}

/** `alibiSlopes`: a Float32Array of length H or B·H. */
export function readSlopes(value: unknown, H: number, B: number, varlen: boolean): Float32Array | undefined {
  if (value === undefined) return undefined;
  if (!isArrayOf(value, Float32Array)) {
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

/** `mask`: a float or byte tensor broadcasting right-aligned to `full` = [B, H, Nq, Nk], with its strides. */
export function readMask(value: unknown, full: number[]): ValidMask {
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

/** `outDtype`: how the output is stored, "f32" (default), "f16" or "bf16". */
export function readOutDtype(value: unknown): Dtype {
  if (value === undefined) return "f32";
  if (value !== "f32" && value !== "f16" && value !== "bf16") {
    throw new TypeError(message(`outDtype must be "f32", "f16" or "bf16": outDtype is ${describe(value)}`));
  }
  return value;
}

/**
 * `out`: an array for the output's dtype (a Float32Array for "f32"; a Uint16Array, or for "f16" a
 * Float16Array, for 16 bits) of the output's size that overlaps no input.
 */
export function checkOut(out: unknown, p: AttentionProblem): OutBuffer | undefined {
  if (out === undefined) return undefined;
  if (ArrayBuffer.isView(out) && isDetached(out)) throw detachedError("out");
  const dtype = p.dtypes.o;
  let view: ElementData | undefined;
  if (dtype === "f32") {
    if (isArrayOf(out, Float32Array)) view = out as Float32Array;
  } else if (isArrayOf(out, Uint16Array)) {
    view = out as Uint16Array;
  } else if (dtype === "f16" && isFloat16Array(out)) {
    view = bitsOf(out as Uint16Array);
  }
  if (view === undefined) {
    throw new TypeError(
      message(
        dtype === "f32"
          ? `out must be a Float32Array: out is ${describe(out)}`
          : `out must be a Uint16Array${
            dtype === "f16" ? " or a Float16Array" : ""
          } when outDtype is "${dtype}": out is ${describe(out)}`,
      ),
    );
  }
  if (view.length !== p.oLength) {
    throw new ShapeError(
      message(
        `out must hold ${p.oLength} elements (output shape ${formatShape(p.oShape)}): out.length is ${view.length}`,
      ),
      String(p.oLength),
      String(view.length),
    );
  }
  for (const [name, input] of [["q", p.q], ["k", p.k], ["v", p.v]] as const) {
    if (overlaps(view, input)) {
      throw new TypeError(message(`out must not share memory with ${name}: pass a separate buffer`));
    }
  }
  return { view, data: out as OutBuffer["data"] };
}

/** Whether two views share bytes. */
export function overlaps(a: ArrayBufferView, b: ArrayBufferView): boolean {
  if (a.buffer !== b.buffer) return false;
  return a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

/** The kernels' head-dim limit, checked before they are loaded. */
export function checkHeadDims(p: AttentionProblem): void {
  if (p.d > HEAD_DIM_MAX || p.dv > HEAD_DIM_MAX) {
    throw new RangeError(
      message(`the head dims must be at most ${HEAD_DIM_MAX}: d is ${p.d}, dv is ${p.dv} (${p.shapes})`),
    );
  }
}

/** `sramBytes`: an integer in (0, ARENA_MAX_BYTES]; whether it holds a tile is the plan's check. */
export function readSramBytes(value: unknown): number {
  if (value === undefined) return DEFAULT_SRAM_BYTES;
  if (typeof value !== "number") {
    throw new TypeError(message(`sramBytes must be a number: sramBytes is ${describe(value)}`));
  }
  if (!Number.isInteger(value) || value <= 0 || value > ARENA_MAX_BYTES) {
    throw new RangeError(message(`sramBytes must be an integer in (0, ${ARENA_MAX_BYTES}]: sramBytes is ${value}`));
  }
  return value;
}
