// Tensors that live in GPU buffers: recognised by the validation stage through a TensorReader
// (src/_shapes.ts), so their shapes meet exactly the checks and errors of host arrays. The
// reader records each buffer for the runner and hands validation an empty placeholder of the
// tensor's dtype in place of its data (nothing reads it: the runner binds the buffer instead).

import { ShapeError } from "../errors.ts";
import { describe, formatShape, message } from "../_messages.ts";
import { checkElementTensor, checkShape, type ElementTensor, type TensorReader } from "../_shapes.ts";
import type { Dtype } from "../tensor.ts";
import { BUFFER_USAGE, type GpuBufferLike } from "./_webgpu.ts";

/**
 * A tensor stored in a GPU buffer of the device that runs the call: contiguous, row-major from
 * byte 0, elements of `dtype` (f32 by default; `"f16"` and `"bf16"` as raw 16-bit words, two to a
 * 4-byte word, the first in the low half). The buffer needs `GPUBufferUsage.STORAGE`; it is read,
 * never written, and stays the caller's.
 */
export interface GpuTensor<Buffer extends GpuBufferLike = GpuBufferLike> {
  /** The GPUBuffer holding the elements. */
  buffer: Buffer;
  /** The size of each dimension. */
  shape: readonly number[];
  /** How the elements are stored; default `"f32"`. */
  dtype?: Dtype;
}

/** Whether `t` is a tensor in a GPU buffer (it has a `buffer` object and no `data`). */
export function isGpuTensor(t: unknown): t is GpuTensor {
  if (typeof t !== "object" || t === null) return false;
  const { buffer, data } = t as { buffer?: unknown; data?: unknown };
  return data === undefined && typeof buffer === "object" && buffer !== null;
}

/**
 * A TensorReader that accepts GPU tensors besides host ones, recording each GPU tensor's buffer in
 * `found` under its name ("q", "k", "v").
 */
export function gpuTensorReader(found: Map<string, GpuBufferLike>): TensorReader {
  return (name, t, dims, rank) => {
    if (!isGpuTensor(t)) {
      if (typeof t === "object" && t !== null && "buffer" in t && "data" in t) {
        throw new TypeError(message(`${name} has both data and buffer: pass a host array or a GPU buffer, not both`));
      }
      return checkElementTensor(name, t, dims, rank);
    }
    const tensor = checkGpuTensor(name, t, dims, rank);
    found.set(name, t.buffer);
    return tensor;
  };
}

/** Checks a GPU tensor's dtype, shape and buffer; returns it as validation sees tensors. */
export function checkGpuTensor(name: string, t: GpuTensor, dims: string, rank: number): ElementTensor {
  const dtype = t.dtype ?? "f32";
  if (dtype !== "f32" && dtype !== "f16" && dtype !== "bf16") {
    throw new TypeError(message(`${name}.dtype must be "f32", "f16" or "bf16": ${name}.dtype is ${describe(dtype)}`));
  }
  const shape = t.shape as unknown;
  const elements = Array.isArray(shape) ? shape.reduce((a: number, b: unknown) => a * (b as number), 1) : 0;
  const checked = checkShape(name, shape, elements, dims, rank);
  const { size, usage, mapState } = t.buffer as Partial<GpuBufferLike>;
  if (typeof size !== "number" || typeof usage !== "number") {
    throw new TypeError(message(`${name}.buffer must be a GPUBuffer: ${name}.buffer is ${describe(t.buffer)}`));
  }
  if ((usage & BUFFER_USAGE.STORAGE) === 0) {
    throw new TypeError(
      message(`${name}.buffer needs GPUBufferUsage.STORAGE to be read by the kernel: ${name}.buffer.usage is ${usage}`),
    );
  }
  if (mapState !== undefined && mapState !== "unmapped") {
    throw new TypeError(message(`${name}.buffer must be unmapped to be used by the GPU: it is ${mapState}`));
  }
  const bytes = elements * (dtype === "f32" ? 4 : 2);
  if (size < bytes) {
    throw new ShapeError(
      message(
        `${name}.buffer must hold at least ${bytes} bytes (${name}.shape ${
          formatShape(checked)
        } of ${dtype}): ${name}.buffer.size is ${size}`,
      ),
      `at least ${bytes} bytes`,
      `${size} bytes`,
    );
  }
  const placeholder = dtype === "f32" ? new Float32Array(0) : new Uint16Array(0);
  return { data: placeholder, shape: checked, dtype, original: placeholder };
}
