// A KV cache that lives in HBM (a kernels' linear memory) across calls: decode steps read its keys
// and values where they are, with no copy into WebAssembly memory per step. Layout per tensor:
// [B, Hkv, maxLen, D], so each head's keys are one contiguous run that the kernel streams through.
// Its elements are f32, f16 or bf16 (the config's dtype); appended rows are converted to it.

import { ensureMemory } from "./_forward.ts";
import { bytesOf, convertInto, viewOf } from "./_half.ts";
import type { HbmHeap } from "./_heap.ts";
import { MAX_MEMORY_BYTES } from "./_limits.ts";
import { describe, formatShape } from "./_messages.ts";
import { checkOptionKeys } from "./_options.ts";
import { checkElementTensor, checkInt32Array } from "./_shapes.ts";
import { ShapeError } from "./errors.ts";
import type { Dtype, InputTensor } from "./tensor.ts";
import type { WasmMemory } from "./wasm/loader.ts";

/** The sizes of a KV cache. */
export interface KvCacheConfig {
  /** Batch entries (B), each with its own length. */
  batch: number;
  /** Positions each entry can hold. */
  maxLen: number;
  /** Key/value heads (Hkv). */
  kvHeads: number;
  /** Head dim of the keys (d), at most 256. */
  headDim: number;
  /** Head dim of the values (dv), at most 256; default headDim. */
  valueDim?: number;
  /**
   * How the keys and values are stored: `"f32"` (default), or `"f16"` / `"bf16"`, half the memory
   * and half the bytes a decode step reads (the kernels widen each tile to f32, exactly). Rows
   * appended in another dtype are converted: f32 rows are rounded to nearest even.
   */
  dtype?: Dtype;
}

/**
 * A key/value cache in the kernels' memory. Append each step's keys and values, then pass the
 * cache to `flashAttentionWithKvCache(q, cache, options)` (or a pool's, for a pool's cache):
 * entry b attends to its first `length(b)` positions.
 */
export interface KvCache {
  /** Batch entries. */
  readonly batch: number;
  /** Positions each entry can hold. */
  readonly maxLen: number;
  /** Key/value heads. */
  readonly kvHeads: number;
  /** Head dim of the keys. */
  readonly headDim: number;
  /** Head dim of the values. */
  readonly valueDim: number;
  /** How the keys and values are stored. */
  readonly dtype: Dtype;
  /**
   * Writes `kNew` [B, Nnew, Hkv, d] and `vNew` [B, Nnew, Hkv, dv] after each entry's current
   * positions, and advances every entry's length by Nnew — or, with `lengths`, entry b by
   * lengths[b] ≤ Nnew, its first lengths[b] new rows (a ragged batch: prompts of different lengths).
   * Rows of another dtype than the cache's are converted to it: exactly when it is wider, rounded
   * to nearest even (ties to even, overflow to ±Infinity) when it is narrower, e.g. f32 rows into a
   * bf16 cache.
   *
   * @param kNew New keys.
   * @param vNew New values.
   * @param lengths Rows to take of each entry (length B, each in [0, Nnew]); default all Nnew.
   * @throws {ShapeError} If a shape or `lengths`' length does not match the cache.
   * @throws {RangeError} If an entry would pass maxLen or `lengths` is out of range (nothing is
   *   written then).
   * @throws {TypeError} For data that is not a tensor of a known dtype, `lengths` that is not an
   *   Int32Array, or a freed cache.
   */
  append(kNew: InputTensor, vNew: InputTensor, lengths?: Int32Array): void;
  /**
   * The number of positions entry b holds.
   *
   * @param b The batch entry.
   * @returns Its length.
   */
  length(b: number): number;
  /** Empties every entry (lengths 0). Throws if a pool call that reads the cache is pending. */
  reset(): void;
  /** Releases the cache's memory; the cache cannot be used afterwards. Throws like `reset`. */
  free(): void;
}

const PREFIX = "Cannot use the KV cache as";

/** Checks a KV cache's sizes: positive safe integers, head dims at most `headDimMax`. */
export function readCacheConfig(config: unknown, headDimMax: number): Required<KvCacheConfig> {
  const prefix = "Cannot create a KV cache as";
  const c = checkOptionKeys(
    config,
    ["batch", "maxLen", "kvHeads", "headDim", "valueDim", "dtype"],
    (text) => `${prefix} ${text}`,
  );
  const read = (name: string, fallback?: number): number => {
    const value = c[name] === undefined ? fallback : c[name];
    if (typeof value !== "number") {
      throw new TypeError(`${prefix} ${name} must be a number: ${name} is ${describe(value)}`);
    }
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new RangeError(`${prefix} ${name} must be a positive integer: ${name} is ${value}`);
    }
    return value;
  };
  const batch = read("batch");
  const maxLen = read("maxLen");
  const kvHeads = read("kvHeads");
  const headDim = read("headDim");
  const valueDim = read("valueDim", headDim);
  if (headDim > headDimMax || valueDim > headDimMax) {
    throw new RangeError(
      `${prefix} the head dims must be at most ${headDimMax}: headDim is ${headDim}, valueDim is ${valueDim}`,
    );
  }
  const dtype = c.dtype === undefined ? "f32" : c.dtype;
  if (dtype !== "f32" && dtype !== "f16" && dtype !== "bf16") {
    throw new TypeError(`${prefix} dtype must be "f32", "f16" or "bf16": dtype is ${describe(dtype)}`);
  }
  return { batch, maxLen, kvHeads, headDim, valueDim, dtype };
}

/** A KV cache placed in one memory's heap. */
export class ResidentKvCache implements KvCache {
  readonly batch: number;
  readonly maxLen: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly valueDim: number;
  readonly dtype: Dtype;
  /** The linear memory it lives in, and where its keys and values start. */
  readonly memory: WasmMemory;
  readonly kPtr: number;
  readonly vPtr: number;
  readonly #heap: HbmHeap;
  readonly #lengths: Int32Array;
  #pending = 0;
  #freed = false;

  /**
   * Places a cache in `heap` at or above `from` (a pool passes the end of the call it is running,
   * so the new cache never lands on that call's tensors).
   */
  constructor(memory: WasmMemory, heap: HbmHeap, config: Required<KvCacheConfig>, from = heap.start) {
    const { batch, maxLen, kvHeads, headDim, valueDim, dtype } = config;
    const kBytes = bytesOf(dtype) * batch * kvHeads * maxLen * headDim;
    const vBytes = bytesOf(dtype) * batch * kvHeads * maxLen * valueDim;
    const sizes =
      `batch ${batch}, maxLen ${maxLen}, kvHeads ${kvHeads}, headDim ${headDim}, valueDim ${valueDim}, dtype ${dtype}`;
    const wanted = Math.max(heap.end, from) + kBytes + vBytes + 128;
    if (!(wanted <= MAX_MEMORY_BYTES)) {
      throw new RangeError(
        `Cannot create a KV cache as its ${
          kBytes + vBytes
        } bytes do not fit the 4 GiB a wasm32 memory addresses beside what it holds (${heap.end} bytes): ${sizes}`,
      );
    }
    const kPtr = heap.allocate(kBytes, from);
    const vPtr = heap.allocate(vBytes, from);
    const end = Math.max(kPtr + kBytes, vPtr + vBytes);
    try {
      ensureMemory(memory, end, "a KV cache", sizes);
    } catch (error) {
      heap.release(kPtr);
      heap.release(vPtr);
      throw new RangeError(
        `Cannot create a KV cache as its ${
          kBytes + vBytes
        } bytes need ${end} bytes of WebAssembly memory and the runtime refused to grow it: ${sizes}`,
        { cause: error },
      );
    }
    this.batch = batch;
    this.maxLen = maxLen;
    this.kvHeads = kvHeads;
    this.headDim = headDim;
    this.valueDim = valueDim;
    this.dtype = dtype;
    this.memory = memory;
    this.kPtr = kPtr;
    this.vPtr = vPtr;
    this.#heap = heap;
    this.#lengths = new Int32Array(batch);
  }

  /** The cache's shape as a caller-owned cache would have it, for messages. */
  get shape(): string {
    return formatShape([this.batch, this.maxLen, this.kvHeads, this.headDim]);
  }

  /** A copy of every entry's length (for a call, which must not see later appends). */
  lengths(): Int32Array {
    this.#check();
    return this.#lengths.slice();
  }

  length(b: number): number {
    this.#check();
    if (!Number.isInteger(b) || b < 0 || b >= this.batch) {
      throw new RangeError(`${PREFIX} b must be an integer in [0, ${this.batch}): b is ${b}`);
    }
    return this.#lengths[b];
  }

  append(kNew: InputTensor, vNew: InputTensor, lengths?: Int32Array): void {
    this.#check();
    const { batch: B, kvHeads: Hkv, headDim: d, valueDim: dv, maxLen } = this;
    const k = checkElementTensor("kNew", kNew, "[B, Nnew, Hkv, d]", 4);
    const v = checkElementTensor("vNew", vNew, "[B, Nnew, Hkv, dv]", 4);
    const Nnew = k.shape[1];
    for (const [name, t, D] of [["kNew", k, d], ["vNew", v, dv]] as const) {
      const wanted = [B, Nnew, Hkv, D];
      if (t.shape.join() !== wanted.join()) {
        throw new ShapeError(
          `${PREFIX} ${name} must have shape ${
            formatShape(wanted)
          } (the cache's B, Hkv and head dim, kNew's Nnew): ${name}.shape is ${formatShape(t.shape)}`,
          formatShape(wanted),
          formatShape(t.shape),
        );
      }
    }
    const taken = lengths === undefined ? new Int32Array(B).fill(Nnew) : checkInt32Array("lengths", lengths, B, "B");
    for (let b = 0; b < B; b++) {
      if (!(taken[b] >= 0 && taken[b] <= Nnew)) {
        throw new RangeError(
          `${PREFIX} lengths must hold row counts in [0, Nnew = ${Nnew}]: lengths[${b}] is ${taken[b]}`,
        );
      }
      if (this.#lengths[b] + taken[b] > maxLen) {
        throw new RangeError(
          `${PREFIX} appending ${taken[b]} positions to entry ${b}, which holds ${
            this.#lengths[b]
          }, passes maxLen ${maxLen}`,
        );
      }
    }
    const hbm = viewOf(this.memory.buffer, this.dtype);
    const size = bytesOf(this.dtype);
    for (const [t, ptr, D] of [[k, this.kPtr, d], [v, this.vPtr, dv]] as const) {
      for (let b = 0; b < B; b++) {
        for (let h = 0; h < Hkv; h++) {
          // [B, Hkv, maxLen, D] in the cache, [B, Nnew, Hkv, D] in the new rows.
          let at = ptr / size + ((b * Hkv + h) * maxLen + this.#lengths[b]) * D;
          for (let n = 0; n < taken[b]; n++, at += D) {
            convertInto(hbm, this.dtype, at, t.data, t.dtype, ((b * Nnew + n) * Hkv + h) * D, D);
          }
        }
      }
    }
    for (let b = 0; b < B; b++) this.#lengths[b] += taken[b];
  }

  reset(): void {
    this.#check();
    this.#checkIdle("reset");
    this.#lengths.fill(0);
  }

  free(): void {
    if (this.#freed) return;
    this.#checkIdle("free");
    this.#freed = true;
    this.#heap.release(this.kPtr);
    this.#heap.release(this.vPtr);
  }

  /** Marks a pool call that reads the cache as pending until `done` runs. */
  hold(): () => void {
    this.#pending++;
    return () => this.#pending--;
  }

  #check(): void {
    if (this.#freed) throw new TypeError(`${PREFIX} it was freed`);
  }

  #checkIdle(what: string): void {
    if (this.#pending > 0) {
      throw new TypeError(`${PREFIX} a pool call that reads it is still pending: await it before ${what}()`);
    }
  }
}
