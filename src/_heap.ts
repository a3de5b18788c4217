// Resident tensors in HBM: KV caches that live in a linear memory across calls. Each memory has
// one heap of them above its SMs; a call's plan places its own tensors above the heap's end, so
// nothing a call stages ever overlaps a resident tensor.

import { align } from "./_plan.ts";
import type { WasmMemory } from "./wasm/loader.ts";

/** The resident blocks of one linear memory, first fit, 64-byte aligned. */
export class HbmHeap {
  /** First byte the heap may use. */
  readonly start: number;
  /** Live blocks [ptr, end), sorted by address. */
  #blocks: { ptr: number; end: number }[] = [];

  constructor(start: number) {
    this.start = start;
  }

  /** One past the last live block: where a call's placements may begin. */
  get end(): number {
    return this.#blocks.length === 0 ? this.start : this.#blocks[this.#blocks.length - 1].end;
  }

  /**
   * Reserves `bytes` at or above `from` (default: the heap's start) and returns the address: the
   * first gap that fits, else the end.
   */
  allocate(bytes: number, from = this.start): number {
    const size = align(bytes);
    let at = Math.max(this.start, align(from));
    let index = 0;
    for (; index < this.#blocks.length; index++) {
      if (this.#blocks[index].ptr - at >= size) break;
      at = Math.max(at, this.#blocks[index].end);
    }
    this.#blocks.splice(index, 0, { ptr: at, end: at + size });
    return at;
  }

  /** Releases the block at `ptr`. */
  release(ptr: number): void {
    this.#blocks = this.#blocks.filter((b) => b.ptr !== ptr);
  }
}

const heaps = new WeakMap<WasmMemory, HbmHeap>();

/** The heap of `memory`, made on first use with its resident blocks starting at `start`. */
export function heapOf(memory: WasmMemory, start: number): HbmHeap {
  let heap = heaps.get(memory);
  if (heap === undefined) {
    heap = new HbmHeap(start);
    heaps.set(memory, heap);
  }
  return heap;
}
