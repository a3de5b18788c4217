// Reading the kernels' counters (assembly/hbm.ts) into AttentionStats.

import type { AttentionProblem } from "./_problem.ts";
import {
  type AttentionStats,
  type BackwardStats,
  type BackwardTensorBytes,
  sumBytes,
  type TensorBytes,
  zeroBackwardBytes,
} from "./result.ts";
import type { Kernels } from "./wasm/loader.ts";

/** Counter slots, as assembly/hbm.ts lays them out (u64 each). */
const TENSOR_SLOTS = 13;
const TILES_COMPUTED = 2 * TENSOR_SLOTS;
const TILES_SKIPPED_MASK = TILES_COMPUTED + 1;
const FLOPS = TILES_COMPUTED + 2;
const ARENA_PEAK = TILES_COMPUTED + 3;
const COUNTER_SLOTS = TILES_COMPUTED + 4;
/** The forward's tensor ids of assembly/hbm.ts in slot order. */
const FORWARD_TENSORS: (keyof TensorBytes)[] = ["q", "k", "v", "o", "lse", "mask", "partial", "slopes"];
/** Every tensor id of assembly/hbm.ts in slot order. */
const TENSORS: (keyof BackwardTensorBytes)[] = [...FORWARD_TENSORS, "dOut", "D", "dq", "dk", "dv"];

/** The kernels' counters since the last resetCounters(), as numbers (exact below 2^53). */
export interface Counters {
  read: BackwardTensorBytes;
  written: BackwardTensorBytes;
  tilesComputed: number;
  tilesSkippedByMask: number;
  flops: number;
  arenaPeakBytes: number;
}

/** Reads the counter block of the single-threaded kernels' SM. */
export function readCounters(kernels: Kernels): Counters {
  return readCounterBlock(kernels.memory.buffer, kernels.countersPtr());
}

/** Zeroes the counter block at byte address `ptr` of `memory`. */
export function resetCounterBlock(memory: ArrayBufferLike, ptr: number): void {
  new BigUint64Array(memory, ptr, COUNTER_SLOTS).fill(0n);
}

/** Reads the counter block of assembly/hbm.ts at byte address `ptr` of `memory`. */
export function readCounterBlock(memory: ArrayBufferLike, ptr: number): Counters {
  const c = Array.from(new BigUint64Array(memory, ptr, COUNTER_SLOTS), Number);
  const read = {} as BackwardTensorBytes;
  const written = {} as BackwardTensorBytes;
  TENSORS.forEach((name, i) => {
    read[name] = c[i];
    written[name] = c[TENSOR_SLOTS + i];
  });
  return {
    read,
    written,
    tilesComputed: c[TILES_COMPUTED],
    tilesSkippedByMask: c[TILES_SKIPPED_MASK],
    flops: c[FLOPS],
    arenaPeakBytes: c[ARENA_PEAK],
  };
}

/** Statistics of the run since the last resetCounters(), for problem p with the given blocks. */
export function readStats(
  kernels: Kernels,
  p: AttentionProblem,
  blocks: { sramBytes: number; Br: number; Bc: number },
): AttentionStats {
  return statsOf(readCounters(kernels), p, blocks);
}

/** Adds counters of several SMs: bytes, tiles and flops sum; the arena peak is the largest. */
export function sumCounters(all: Counters[]): Counters {
  const total: Counters = {
    read: zeroBackwardBytes(),
    written: zeroBackwardBytes(),
    tilesComputed: 0,
    tilesSkippedByMask: 0,
    flops: 0,
    arenaPeakBytes: 0,
  };
  for (const c of all) {
    for (const t of TENSORS) {
      total.read[t] += c.read[t];
      total.written[t] += c.written[t];
    }
    total.tilesComputed += c.tilesComputed;
    total.tilesSkippedByMask += c.tilesSkippedByMask;
    total.flops += c.flops;
    total.arenaPeakBytes = Math.max(total.arenaPeakBytes, c.arenaPeakBytes);
  }
  return total;
}

/** Statistics from counters `c` for problem p with the given blocks. */
export function statsOf(
  c: Counters,
  p: AttentionProblem,
  blocks: { sramBytes: number; Br: number; Bc: number },
): AttentionStats {
  const read = forwardBytes(c.read);
  const written = forwardBytes(c.written);
  const { Br, Bc } = blocks;
  let tiles = 0;
  let Tr = 0;
  let Tc = 0;
  for (const s of p.sequences) {
    if (s.Nq === 0) continue;
    const tr = Math.ceil((s.Nq * p.group) / Br);
    const tc = Math.ceil(s.Nk / Bc);
    tiles += p.Hkv * tr * tc;
    Tr = Math.max(Tr, tr);
    Tc = Math.max(Tc, tc);
  }
  return {
    read,
    written,
    totalBytes: sumBytes(read) + sumBytes(written),
    sramBytes: blocks.sramBytes,
    sramPeakBytes: c.arenaPeakBytes,
    Br,
    Bc,
    Tr,
    Tc,
    tilesComputed: c.tilesComputed,
    tilesSkipped: tiles - c.tilesComputed,
    flops: c.flops,
  };
}

/** The forward's tensors of a counter block (the backward's slots are zero in a forward run). */
function forwardBytes(t: BackwardTensorBytes): TensorBytes {
  const bytes = {} as TensorBytes;
  for (const name of FORWARD_TENSORS) bytes[name] = t[name];
  return bytes;
}

/** Statistics of a backward run from counters `c`, for problem p with blocks B × B. */
export function backwardStatsOf(
  c: Counters,
  p: AttentionProblem,
  blocks: { sramBytes: number; B: number },
): BackwardStats {
  const { B } = blocks;
  let tiles = 0;
  let Tr = 0;
  let Tc = 0;
  for (const s of p.sequences) {
    if (s.Nq === 0) continue;
    const tr = Math.ceil((s.Nq * p.group) / B);
    const tc = Math.ceil(s.Nk / B);
    tiles += p.Hkv * tr * tc;
    Tr = Math.max(Tr, tr);
    Tc = Math.max(Tc, tc);
  }
  return {
    read: c.read,
    written: c.written,
    totalBytes: sumBytes(c.read) + sumBytes(c.written),
    sramBytes: blocks.sramBytes,
    sramPeakBytes: c.arenaPeakBytes,
    Br: B,
    Bc: B,
    Tr,
    Tc,
    tilesComputed: c.tilesComputed,
    tilesSkipped: tiles - c.tilesComputed,
    flops: c.flops,
  };
}
