/**
 * The IO model of the paper (FlashAttention, Dao et al. 2022, §3.2 and Theorem 2), for this
 * library's memory hierarchy: WebAssembly linear memory plays HBM, the kernel's arena plays SRAM.
 *
 * - {@linkcode standardAttentionIo}: the HBM traffic of standard attention counted as the paper's
 *   Algorithm 0 does (write S, read S, write P, read P, ...).
 * - {@linkcode flashAttentionIo}: the traffic of this library's kernel, in closed form for its
 *   loop order and the block sizes it derives from the arena size. `flashAttention(..., { stats:
 *   true })` reports the same numbers, measured by the kernel's tile copies as they move bytes.
 *
 * @module
 */
import { DEFAULT_SRAM_BYTES } from "./_limits.ts";
import { describe, message } from "./_messages.ts";
import { checkOptionKeys, notWithVarlen, readBoolean, readCausal, readSramBytes, readWindow } from "./_options.ts";
import { checkCumulative, checkSeqLensK } from "./_shapes.ts";
import { checkSplits, splitRanges } from "./_splits.ts";
import { segmentsOf } from "./_backward_plan.ts";
import { blockKeys, type KeyVisibility, keyVisibility } from "./_visibility.ts";
import { ShapeError } from "./errors.ts";
import {
  type BackwardIoCounts,
  type FlashIoCounts,
  type IoCounts,
  sumBytes,
  type TensorBytes,
  zeroBackwardBytes,
  zeroBytes,
} from "./result.ts";
import { loadKernels } from "./wasm/loader.ts";

export type {
  AttentionStats,
  BackwardIoCounts,
  BackwardTensorBytes,
  FlashIoCounts,
  IoCounts,
  TensorBytes,
} from "./result.ts";

/**
 * The sizes of an attention problem. With varlen packing (`cuSeqlensQ`, `cuSeqlensK` in the
 * options) B is the number of packed sequences and Nq, Nk the packed totals, as q's and k's
 * first dims in a varlen `flashAttention` call.
 */
export interface AttentionShape {
  /** Batch size (varlen: the number of sequences). */
  B: number;
  /** Query heads. */
  H: number;
  /** Key/value heads (default H). */
  Hkv?: number;
  /** Queries per sequence (varlen: totalQ). */
  Nq: number;
  /** Keys per sequence (varlen: totalK; with seqLensK: the padded length). */
  Nk: number;
  /** Head dim of q and k. */
  d: number;
  /** Head dim of v (default d). */
  dv?: number;
}

/**
 * Bytes per element of each tensor in HBM: 4 for f32 (the default), 2 for f16 or bf16 (as a call's
 * tensors with that `dtype`, or its output with that `outDtype`, are counted). lse, D, the split-KV
 * partial results and the backward's partial dQ and gradients are always f32.
 */
export interface ElementBytes {
  /** Queries. */
  q?: 2 | 4;
  /** Keys (a KV cache's: its `dtype`). */
  k?: 2 | 4;
  /** Values. */
  v?: 2 | 4;
  /** The output O: written by the forward, read by the backward. */
  o?: 2 | 4;
  /**
   * S and P, which only standard attention stores in HBM ({@linkcode standardAttentionIo}); the
   * flash kernels keep them in the arena, so {@linkcode flashAttentionIo} has no use for it.
   */
  scores?: 2 | 4;
}

/** {@linkcode ElementBytes} of the backward's tensors: the forward's, and dO. */
export interface BackwardElementBytes extends Omit<ElementBytes, "scores"> {
  /** The output's gradient dO. */
  dOut?: 2 | 4;
}

/**
 * Options that change the traffic of standard attention (the paper's Algorithm 0). Causal masks
 * and windows do not: Algorithm 0 computes and materialises every score and applies the mask
 * from indices in its softmax pass, without reading anything.
 */
export interface StandardIoOptions {
  /**
   * Bytes per element of q, k, v, O and of S and P (default 4 each): e.g. `{ q: 2, k: 2, v: 2,
   * o: 2, scores: 2 }` for the paper's fp16 run.
   */
  elementBytes?: ElementBytes;
  /** Whether lse (one f32 per query row and head) is written, by the softmax pass. */
  returnLse?: boolean;
  /** Bytes per element of a mask of shape [B, H, Nq, Nk], read once by the softmax pass (0: no mask). */
  maskElementBytes?: 0 | 1 | 4;
  /**
   * Valid keys per batch entry (length B, each in [0, Nk]), as `flashAttention`'s option: entry b
   * is a sequence of Nq queries and seqLensK[b] keys.
   */
  seqLensK?: Int32Array;
  /**
   * Varlen packing, as `flashAttention`'s options: sequence b has cuSeqlensQ[b + 1] − cuSeqlensQ[b]
   * queries and cuSeqlensK[b + 1] − cuSeqlensK[b] keys. Both are given or neither; length B + 1,
   * from 0, non-decreasing, ending at the shape's Nq and Nk.
   */
  cuSeqlensQ?: Int32Array;
  /** See `cuSeqlensQ`. */
  cuSeqlensK?: Int32Array;
}

/** Blocks of a runner's tiling: query rows Br and keys Bc per tile, in a memory of `sramBytes` of which it uses `sramPeakBytes`. */
export interface IoBlocks {
  /** Query block rows (virtual rows). */
  Br: number;
  /** Key block size. */
  Bc: number;
  /** The on-chip memory the blocks were sized for, in bytes. */
  sramBytes: number;
  /** The on-chip memory the blocks use, in bytes. */
  sramPeakBytes: number;
}

/** Options that change the traffic of this library's kernel ({@linkcode flashAttentionIo}). */
export interface IoOptions extends StandardIoOptions {
  /**
   * Causal mask, as `flashAttention`'s option: `true` or `"bottom-right"` (query i sees keys
   * j ≤ i + Nk − Nq) or `"top-left"` (j ≤ i). Key blocks no query of a block sees are skipped.
   */
  causal?: boolean | "bottom-right" | "top-left";
  /** Sliding window `[left, right]`, −1 unbounded, aligned like `causal` (bottom-right without it). */
  windowSize?: readonly [number, number];
  /** Arena size; default {@linkcode DEFAULT_SRAM_BYTES}. */
  sramBytes?: number;
  /**
   * The tiling of another runner, used instead of the blocks the CPU kernels derive from
   * `sramBytes` (which is then not allowed): a WebGPU attention's `tiling(d, dv)` (from
   * `@flash/attention/gpu`), whose Br, Bc and workgroup memory the result reports. Its kernel
   * moves data by the same rule, whole tiles for every block (it has no thin blocks), so its
   * measured `stats` equal this model's bytes too.
   */
  blocks?: IoBlocks;
  /**
   * Bytes per element of a mask of shape [B, H, Nq, Nk] that blocks no whole tile (0: no mask):
   * each visible tile reads its mask tile.
   */
  maskElementBytes?: 0 | 1 | 4;
  /** Whether ALiBi slopes are read (one per query row and block). */
  alibi?: boolean;
  /**
   * Split-KV, as `flashAttentionWithKvCache`'s `numSplits` (not with varlen packing, which that
   * function does not take): 0 or absent is its automatic choice for the longest sequence
   * (`chooseSplits`), otherwise the integer asked for. A sequence of Nk keys is cut into ranges
   * of ⌈Nk / (s·Bc)⌉ whole key blocks, s = min(numSplits, ⌈Nk / Bc⌉); the kernel runs once per
   * range, reading Q again and writing each row's normalised O and lse as partial results, and
   * the merge reads those back and writes O (and lse).
   *
   * Not modelled: the library runs a sequence unsplit when the partials of one head group would
   * not fit a 16 MiB scratch, 4·s·rows·(dv + 1) + 128 > 2²⁴ bytes with rows = Nq·H/Hkv, however
   * the sequence is placed or cut into jobs (the stats show it: `written.partial` is 0).
   */
  numSplits?: number;
}

/**
 * HBM traffic of standard attention, counted as the paper's Algorithm 0: read Q and K, write
 * S = scale·QKᵀ; read S (and the mask), write P = softmax(S) (and lse); read P and V, write O = PV.
 * Each phase reads its inputs and writes its output exactly once, the fewest accesses the
 * algorithm can make. Every query head reads its K and V (a GQA group does not share them). Elements
 * are f32 unless `elementBytes` says otherwise (lse is f32). A sequence without queries or without
 * keys reads nothing and writes its O and lse.
 *
 * @param shape The problem's sizes.
 * @param options Whether a mask is read and lse written, and the sequences' own lengths (each
 *   sequence runs Algorithm 0 at its Nq × Nk); an {@linkcode IoOptions} may be passed as it is (its
 *   other fields do not change Algorithm 0's traffic).
 * @returns Bytes read and written per tensor (S and P are counted under `partial`).
 * @throws {TypeError} If a size of `shape` is missing or not a number, `shape` or `options` has an
 *   unknown key, an option has the wrong type, seqLensK or a cuSeqlens is not an Int32Array, only one cuSeqlens is
 *   given, or seqLensK or a mask (maskElementBytes) is combined with varlen packing.
 * @throws {ShapeError} If seqLensK's length is not shape.B, or a cuSeqlens' length is not
 *   shape.B + 1 (or below 2).
 * @throws {RangeError} If a size is not an integer in range (H, d ≥ 1; B, Nq, Nk ≥ 0), H is not a multiple of
 *   Hkv, maskElementBytes is not 0, 1 or 4, seqLensK holds a length outside [0, Nk], the cuSeqlens do not start
 *   at 0, decrease, or do not end at shape.Nq and shape.Nk, or the total passes `Number.MAX_SAFE_INTEGER` bytes
 *   (too large to count exactly).
 *
 * @example Usage
 * ```ts
 * import { standardAttentionIo } from "@flash/attention/io";
 * const io = standardAttentionIo({ B: 1, H: 1, Nq: 1024, Nk: 1024, d: 64 });
 * if (io.totalBytes !== 4 * (3 * 1024 * 64 + 4 * 1024 * 1024 + 1024 * 64)) throw new Error("unexpected");
 * // A byte mask adds one read of each of its Nq × Nk elements.
 * const masked = standardAttentionIo({ B: 1, H: 1, Nq: 1024, Nk: 1024, d: 64 }, { maskElementBytes: 1 });
 * if (masked.read.mask !== 1024 * 1024) throw new Error("unexpected");
 * ```
 */
export function standardAttentionIo(shape: AttentionShape, options: StandardIoOptions = {}): IoCounts {
  checkIoArguments(shape, options, FLASH_KEYS);
  const { H, d } = shape;
  const dv = shape.dv ?? d;
  const read = zeroBytes();
  const written = zeroBytes();
  const size = sizesOf(options.elementBytes);
  for (const { Nq, Nk, count } of sequenceLengths(shape, options)) {
    const heads = count * H;
    // S = scale·QKᵀ (an empty S, without queries or keys, reads nothing)
    const computes = Nq > 0 && Nk > 0 ? 1 : 0;
    read.q += computes * size.q * heads * Nq * d;
    read.k += computes * size.k * heads * Nk * d;
    written.partial += size.scores * heads * Nq * Nk;
    // P = softmax(S + mask)
    read.partial += size.scores * heads * Nq * Nk;
    read.mask += (options.maskElementBytes ?? 0) * heads * Nq * Nk;
    written.partial += size.scores * heads * Nq * Nk;
    if (options.returnLse) written.lse += 4 * heads * Nq;
    // O = PV
    read.partial += size.scores * heads * Nq * Nk;
    read.v += computes * size.v * heads * Nk * dv;
    written.o += size.o * heads * Nq * dv;
  }
  return exact(shape, { read, written, totalBytes: sumBytes(read) + sumBytes(written) });
}

/**
 * `counts` when its total is a safe integer (every count then is: they are non-negative integers
 * summing to it); otherwise the RangeError that says the shape is too large to count exactly.
 */
function exact<T extends { totalBytes: number }>(shape: AttentionShape, counts: T): T {
  if (!Number.isSafeInteger(counts.totalBytes)) {
    throw new RangeError(
      message(
        `the traffic of shape ${
          JSON.stringify(shape)
        } cannot be counted exactly: its bytes pass Number.MAX_SAFE_INTEGER (2^53 − 1), where numbers stop being exact integers`,
      ),
    );
  }
  return counts;
}

/**
 * HBM traffic of this library's forward kernel, from formulas, for the block sizes Br, Bc the
 * kernel derives from the arena size: Q is read once, O (and lse) written once, and each K/V tile
 * is read once per query block that can see it. A query block's visible keys form one range,
 * from the first key its first row sees to one past the last key its last row sees, so the tiles
 * it reads are the key blocks that range touches: the traffic is a sum over the Tr query blocks of
 * one closed-form term each, with no per-tile loop. A thin query block (at most 4 virtual rows, such
 * as a decode step's, when d is a multiple of 4 and dv of 8; CPU kernels only) reuses no tile across rows, so it
 * streams K rows from HBM straight into registers and copies V rows, of exactly that range of keys. With a mask (`maskElementBytes`), each visible
 * tile also reads its mask tile; a mask that blocks whole tiles makes the kernel skip them, which
 * this model cannot know and does not model. Sequences of their own lengths (`seqLensK`, varlen
 * packing) are each one such sum, with visibility aligned to their own Nk; Tr and Tc are then the
 * largest over the sequences that have queries. With `numSplits` each key range is one such sum, plus the partial
 * results the ranges write and the merge reads back. A KV-cache call is modelled with its caches'
 * maxLen as Nk and `seqLensK` = cacheSeqLens (plus the appended keys). 16-bit tensors (f16, bf16)
 * are modelled with `elementBytes` (2 per element; lse and partial results stay f32), as their
 * tile copies count them.
 *
 * @param shape The problem's sizes.
 * @param options Causal/window visibility, arena size, lse, mask, ALiBi and sequence lengths.
 * @returns Bytes per tensor, the tiling and the tile counts.
 * @throws {RangeError} If the arena cannot hold the smallest blocks for these head dims, numSplits
 *   is negative or not an integer, or the sequence lengths are out of range or the total too large to count
 *   exactly (as {@linkcode standardAttentionIo}).
 * @throws {TypeError} If numSplits is not a number or is combined with varlen packing, and as
 *   {@linkcode standardAttentionIo} for sequence options of the wrong type or that do not combine.
 * @throws {ShapeError} As {@linkcode standardAttentionIo}, for sequence options of the wrong length.
 *
 * @example Usage
 * ```ts
 * import { flashAttentionIo } from "@flash/attention/io";
 * const io = flashAttentionIo({ B: 1, H: 1, Nq: 1024, Nk: 1024, d: 64 }, { sramBytes: 128 * 1024 });
 * // K and V are read once per query block
 * if (io.read.k !== io.Tr * 1024 * 64 * 4) throw new Error("unexpected");
 * // bf16 keys and values move half the bytes
 * const half = flashAttentionIo({ B: 1, H: 1, Nq: 1024, Nk: 1024, d: 64 }, { elementBytes: { k: 2, v: 2 } });
 * if (half.read.k !== io.read.k / 2 || half.read.q !== io.read.q) throw new Error("unexpected");
 * ```
 */
export function flashAttentionIo(shape: AttentionShape, options: IoOptions = {}): FlashIoCounts {
  checkIoArguments(shape, options, FLASH_KEYS);
  const { H, d } = shape;
  const Hkv = shape.Hkv ?? H;
  const dv = shape.dv ?? d;
  const g = H / Hkv;
  const maskBytes = options.maskElementBytes ?? 0;
  const { Br, Bc, sramBytes, sramPeakBytes } = options.blocks ?? cpuBlocks(options.sramBytes, d, dv, maskBytes > 0);
  const sequences = sequenceLengths(shape, options);
  if (options.numSplits !== undefined && (options.cuSeqlensQ !== undefined || options.cuSeqlensK !== undefined)) {
    throw notWithVarlen("numSplits (split-KV of the KV-cache function)");
  }
  const numSplits = checkSplits(options.numSplits, Math.max(0, ...sequences.map((s) => s.Nk)));
  // Thin blocks are the CPU kernels' (assembly/stream.ts); another runner's tiling has none.
  const streamedRows = options.blocks ? 0 : loadKernels().streamedRows(d, dv);
  const total = sumSequences(
    sequences,
    Hkv,
    zeroBytes,
    (Nq, Nk) => sequenceIo(Nq, Nk, g, Br, Bc, d, dv, options, numSplits, streamedRows),
  );
  return exact(shape, withTiling(total, sramBytes, sramPeakBytes, Br, Bc));
}

/** The blocks the CPU kernels derive from an arena of `sramBytes` (default DEFAULT_SRAM_BYTES), and its use. */
function cpuBlocks(sramBytes = DEFAULT_SRAM_BYTES, d: number, dv: number, masked: boolean): IoBlocks {
  const kernels = loadKernels();
  const packed = kernels.blockSizes(sramBytes, d, dv, masked);
  if (packed === 0) {
    throw new RangeError(message(`sramBytes ${sramBytes} cannot hold the smallest blocks for d = ${d}, dv = ${dv}`));
  }
  const Br = packed >>> 16;
  const Bc = packed & 0xffff;
  return { Br, Bc, sramBytes, sramPeakBytes: kernels.arenaBytes(Br, Bc, d, dv, masked) };
}

/** A summed closed form with the arena and its blocks, fields in the order the kernels' stats list them. */
function withTiling<T extends TensorBytes>(
  total: ReturnType<typeof sumSequences<T>>,
  sramBytes: number,
  sramPeakBytes: number,
  Br: number,
  Bc: number,
) {
  const { read, written, totalBytes, Tr, Tc, tilesComputed, tilesSkipped } = total;
  return { read, written, totalBytes, sramBytes, sramPeakBytes, Br, Bc, Tr, Tc, tilesComputed, tilesSkipped };
}

/** The IO of one (sequence, K/V head), as the closed forms compute it. */
interface SequenceIo<T extends TensorBytes> {
  read: T;
  written: T;
  Tr: number;
  Tc: number;
  tilesComputed: number;
}

/**
 * Sums a per-(sequence, K/V head) closed form over the sequences that have queries (each distinct
 * (Nq, Nk) counted `count` times, Hkv heads each); Tr and Tc are the largest.
 */
function sumSequences<T extends TensorBytes>(
  sequences: { Nq: number; Nk: number; count: number }[],
  Hkv: number,
  zero: () => T,
  one: (Nq: number, Nk: number) => SequenceIo<T>,
) {
  const read = zero();
  const written = zero();
  let [Tr, Tc, tiles, tilesComputed] = [0, 0, 0, 0];
  for (const { Nq, Nk, count } of sequences) {
    if (Nq === 0) continue;
    const io = one(Nq, Nk);
    const heads = count * Hkv;
    for (const key of Object.keys(read) as (keyof T)[]) {
      (read[key] as number) += heads * (io.read[key] as number);
      (written[key] as number) += heads * (io.written[key] as number);
    }
    Tr = Math.max(Tr, io.Tr);
    Tc = Math.max(Tc, io.Tc);
    tiles += heads * io.Tr * io.Tc;
    tilesComputed += heads * io.tilesComputed;
  }
  return {
    read,
    written,
    totalBytes: sumBytes(read) + sumBytes(written),
    Tr,
    Tc,
    tilesComputed,
    tilesSkipped: tiles - tilesComputed,
  };
}

/**
 * The traffic of one (sequence, K/V head) of Nq positions and Nk keys: query blocks of Br virtual
 * rows (row r is position ⌊r/g⌋ of a GQA group of g heads), one closed-form term each, once per
 * split-KV key range.
 */
function sequenceIo(
  Nq: number,
  Nk: number,
  g: number,
  Br: number,
  Bc: number,
  d: number,
  dv: number,
  options: IoOptions,
  numSplits: number,
  streamedRows: number,
) {
  const visible = visibleKeys(Nq, Nk, options);
  const maskBytes = options.maskElementBytes ?? 0;
  const size = sizesOf(options.elementBytes);
  const rows = Nq * g;
  const read = zeroBytes();
  const written = zeroBytes();
  // Key ranges of one kernel call each: all keys, or the split-KV ranges of whole key blocks.
  const ranges = splitRanges(Nk, numSplits, Bc);
  const split = ranges.length > 1;
  let tilesComputed = 0;
  for (const [begin, stop] of ranges) {
    for (let i0 = 0; i0 < rows; i0 += Br) {
      const rowsHere = Math.min(Br, rows - i0);
      read.q += size.q * rowsHere * d;
      if (options.alibi) read.slopes += 4 * rowsHere;
      if (split) {
        written.partial += 4 * rowsHere * (dv + 1); // normalised O and lse of this range, f32
      } else {
        written.o += size.o * rowsHere * dv;
        if (options.returnLse) written.lse += 4 * rowsHere;
      }
      // Keys [first, end) of the range are visible to some row; key blocks ⌊first/Bc⌋ …
      // ⌈end/Bc⌉ − 1 are read, the last one only up to the range's end (begin is a block edge).
      const [blockFirst, blockEnd] = blockKeys(visible, i0, rowsHere, g);
      const first = Math.max(begin, blockFirst);
      const end = Math.min(stop, blockEnd);
      if (first >= end) continue;
      const jBegin = Math.floor(first / Bc) * Bc;
      const jEnd = Math.min(stop, Math.ceil(end / Bc) * Bc);
      tilesComputed += Math.ceil(end / Bc) - jBegin / Bc;
      // A block of at most streamedRows rows reads exactly the keys it sees; others copy whole tiles.
      const keysRead = rowsHere <= streamedRows ? end - first : jEnd - jBegin;
      read.k += size.k * keysRead * d;
      read.v += size.v * keysRead * dv;
      read.mask += maskBytes * rowsHere * (jEnd - jBegin);
    }
  }
  if (split) {
    // The merge reads every range's partials and writes the output once.
    read.partial += 4 * ranges.length * rows * (dv + 1);
    written.o += size.o * rows * dv;
    if (options.returnLse) written.lse += 4 * rows;
  }
  return { read, written, Tr: Math.ceil(rows / Br), Tc: Math.ceil(Nk / Bc), tilesComputed };
}

/** Options that change the traffic of this library's backward ({@linkcode flashAttentionBackwardIo}). */
export interface BackwardIoOptions extends Omit<IoOptions, "numSplits" | "returnLse" | "elementBytes" | "blocks"> {
  /** Bytes per element of q, k, v, O and dO (default 4 each); the gradients, lse and D are f32. */
  elementBytes?: BackwardElementBytes;
}

/**
 * HBM traffic of this library's backward (`flashAttentionBackward`), from formulas, for the
 * square blocks B = Br = Bc it derives from the arena size. Per (sequence, K/V head) of Nq·g
 * virtual rows, whose keys are cut into at most min(8, ⌈Nk/B⌉) segments of whole key blocks with
 * about the same number of tiles each (the library's own rule, shared with this model):
 * - D = rowsum(dO ∘ O): O and dO read once, D written once;
 * - per key block: its K and V rows read once, its dK and dV rows written once;
 * - per tile computed (a query block whose keys [first of its first row, end of its last row) are
 *   not empty and meet the key block: the forward's rule): the query block's Q, dO, lse and D rows
 *   (and slopes, and the mask tile) read, and its rows of the segment's partial dQ read and written
 *   (partial);
 * - the merge: every segment's partial rows read (partial), dQ written once.
 * So Q and dO are read about Tc times, as the paper's Theorem 5 says: Θ(N²·d²/M). Masks that blank
 * whole tiles are not modelled (the kernel skips those), as for {@linkcode flashAttentionIo}.
 * 16-bit q, k, v, O and dO are modelled with `elementBytes`.
 *
 * @param shape The problem's sizes.
 * @param options Causal/window visibility, arena size, mask, ALiBi and sequence lengths.
 * @returns Bytes per tensor (the gradients' and D's included), the tiling and the tile counts.
 * @throws {RangeError} If the arena cannot hold the backward's 8 × 8 blocks for these head dims, or
 *   as {@linkcode standardAttentionIo} for sequence lengths out of range.
 * @throws {TypeError} As {@linkcode standardAttentionIo}.
 * @throws {ShapeError} As {@linkcode standardAttentionIo}.
 *
 * @example Usage
 * ```ts
 * import { flashAttentionBackwardIo } from "@flash/attention/io";
 * const io = flashAttentionBackwardIo({ B: 1, H: 1, Nq: 1024, Nk: 1024, d: 64 });
 * // K and V are read once; Q once per key block (every query sees every key)
 * if (io.read.k !== 1024 * 64 * 4 || io.read.q !== io.Tc * 1024 * 64 * 4) throw new Error("unexpected");
 * ```
 */
export function flashAttentionBackwardIo(shape: AttentionShape, options: BackwardIoOptions = {}): BackwardIoCounts {
  checkIoArguments(shape, options, BACKWARD_KEYS);
  const { H, d } = shape;
  const Hkv = shape.Hkv ?? H;
  const dv = shape.dv ?? d;
  const g = H / Hkv;
  const sramBytes = options.sramBytes ?? DEFAULT_SRAM_BYTES;
  const maskBytes = options.maskElementBytes ?? 0;
  const kernels = loadKernels();
  const B = kernels.backwardBlockSize(sramBytes, d, dv, maskBytes > 0);
  if (B === 0) {
    throw new RangeError(
      message(`sramBytes ${sramBytes} cannot hold the backward's smallest blocks for d = ${d}, dv = ${dv}`),
    );
  }
  const total = sumSequences(
    sequenceLengths(shape, options),
    Hkv,
    zeroBackwardBytes,
    (Nq, Nk) => sequenceBackwardIo(Nq, Nk, g, B, d, dv, options),
  );
  return exact(shape, withTiling(total, sramBytes, kernels.backwardArenaBytes(B, d, dv, maskBytes > 0), B, B));
}

/** The backward traffic of one (sequence, K/V head), blocks B × B. */
function sequenceBackwardIo(
  Nq: number,
  Nk: number,
  g: number,
  B: number,
  d: number,
  dv: number,
  options: BackwardIoOptions,
) {
  const visible = visibleKeys(Nq, Nk, options);
  const maskBytes = options.maskElementBytes ?? 0;
  const size = sizesOf(options.elementBytes);
  const rows = Nq * g;
  const read = zeroBackwardBytes();
  const written = zeroBackwardBytes();
  // D = rowsum(dO ∘ O)
  read.o += size.o * rows * dv;
  read.dOut += size.dOut * rows * dv;
  written.D += 4 * rows;
  // Every key block: its K and V rows read once, its dK and dV rows written once.
  read.k += size.k * Nk * d;
  read.v += size.v * Nk * dv;
  written.dk += 4 * Nk * d;
  written.dv += 4 * Nk * dv;
  let tilesComputed = 0;
  // The tiles of a query block are the key blocks that meet its keys [first, end): counted per
  // query block, in O(Tr) rather than O(Tr·Tc), so that long sequences are modelled in little time.
  for (let i0 = 0; i0 < rows; i0 += B) {
    const rowsHere = Math.min(B, rows - i0);
    const [first, end] = blockKeys(visible, i0, rowsHere, g);
    if (first >= end) continue;
    const jBegin = Math.floor(first / B) * B;
    const tiles = Math.ceil(end / B) - jBegin / B;
    const cols = Math.min(Nk, Math.ceil(end / B) * B) - jBegin; // the keys of those key blocks
    tilesComputed += tiles;
    read.q += tiles * size.q * rowsHere * d;
    read.dOut += tiles * size.dOut * rowsHere * dv;
    read.lse += tiles * 4 * rowsHere;
    read.D += tiles * 4 * rowsHere;
    if (options.alibi) read.slopes += tiles * 4 * rowsHere;
    read.mask += maskBytes * rowsHere * cols;
    read.partial += tiles * 4 * rowsHere * d; // the segment's partial dQ rows, read and written back
    written.partial += tiles * 4 * rowsHere * d;
  }
  // The merge: every segment's partial dQ read, dQ written once.
  const segments = segmentsOf(Nq, Nk, g, B, visible).length;
  read.partial += 4 * segments * rows * d;
  written.dq += 4 * rows * d;
  return { read, written, Tr: Math.ceil(rows / B), Tc: Math.ceil(Nk / B), tilesComputed };
}

/**
 * The (Nq, Nk) of every sequence, each distinct pair once with how many sequences have it: B
 * entries of the shape's Nq and Nk, of Nq and seqLensK[b], or the varlen sequences.
 */
// standardAttentionIo takes an IoOptions as it is, so it knows the same keys.
const FLASH_KEYS = [
  "returnLse",
  "maskElementBytes",
  "elementBytes",
  "seqLensK",
  "cuSeqlensQ",
  "cuSeqlensK",
  "causal",
  "windowSize",
  "sramBytes",
  "alibi",
  "numSplits",
  "blocks",
] as const;
const BACKWARD_KEYS = FLASH_KEYS.filter((key) => key !== "numSplits" && key !== "returnLse" && key !== "blocks");
const SHAPE_KEYS = ["B", "H", "Hkv", "Nq", "Nk", "d", "dv"] as const;

/**
 * The IO functions' one validation stage: the shape's sizes are integers in range with H a
 * multiple of Hkv, and the options have known keys and values of the right kind (the sequence
 * lengths and numSplits are checked where they are read). Throws TypeError or RangeError.
 */
function checkIoArguments(shape: AttentionShape, options: unknown, known: readonly string[]): void {
  if (typeof shape !== "object" || shape === null) {
    throw new TypeError(message(`shape must be an object { B, H, Nq, Nk, d }: shape is ${describe(shape)}`));
  }
  for (const key of Object.keys(shape)) {
    if (!(SHAPE_KEYS as readonly string[]).includes(key)) {
      throw new TypeError(message(`shape has an unknown key "${key}": the known keys are ${SHAPE_KEYS.join(", ")}`));
    }
  }
  const size = (name: (typeof SHAPE_KEYS)[number], min: number, optional = false) => {
    const value = shape[name];
    if (optional && value === undefined) return;
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min) {
      const what = value === undefined ? "missing" : describe(value);
      throw new (typeof value === "number" ? RangeError : TypeError)(
        message(`shape.${name} must be an integer ≥ ${min}: shape.${name} is ${what}`),
      );
    }
  };
  size("B", 0);
  size("H", 1);
  size("Hkv", 1, true);
  size("Nq", 0);
  size("Nk", 0);
  size("d", 1);
  size("dv", 1, true);
  if (shape.H % (shape.Hkv ?? shape.H) !== 0) {
    throw new RangeError(message(`shape.H must be a multiple of shape.Hkv: H is ${shape.H}, Hkv is ${shape.Hkv}`));
  }
  const o = checkOptionKeys(options, known);
  if (o.elementBytes !== undefined) checkElementBytes(o.elementBytes, known === BACKWARD_KEYS);
  readBoolean("returnLse", o.returnLse);
  readBoolean("alibi", o.alibi);
  if (o.maskElementBytes !== undefined && ![0, 1, 4].includes(o.maskElementBytes as number)) {
    throw new RangeError(
      message(`maskElementBytes must be 0, 1 or 4: maskElementBytes is ${describe(o.maskElementBytes)}`),
    );
  }
  readWindow(o.windowSize, readCausal(o.causal), Number.MAX_SAFE_INTEGER);
  if (o.sramBytes !== undefined) readSramBytes(o.sramBytes);
  if (o.blocks !== undefined) checkBlocks(o.blocks, o.sramBytes);
}

/** `blocks`: positive integers Br and Bc, and sramPeakBytes ≤ sramBytes; not with `sramBytes`. */
function checkBlocks(value: unknown, sramBytes: unknown): void {
  const say = (text: string) => message(text.replaceAll("options", "blocks"));
  const blocks = checkOptionKeys(value, ["Br", "Bc", "sramBytes", "sramPeakBytes"], say);
  if (sramBytes !== undefined) {
    throw new TypeError(message("blocks and sramBytes cannot be combined: blocks carries its own sramBytes"));
  }
  for (const name of ["Br", "Bc", "sramBytes", "sramPeakBytes"] as const) {
    const x = blocks[name];
    if (typeof x !== "number") {
      throw new TypeError(message(`blocks.${name} must be a number: blocks.${name} is ${describe(x)}`));
    }
    if (!Number.isSafeInteger(x) || x < (name === "sramPeakBytes" ? 0 : 1)) {
      throw new RangeError(message(`blocks.${name} must be a positive integer: blocks.${name} is ${x}`));
    }
  }
  if ((blocks.sramPeakBytes as number) > (blocks.sramBytes as number)) {
    throw new RangeError(
      message(
        `blocks.sramPeakBytes must be at most blocks.sramBytes: ${blocks.sramPeakBytes} > ${blocks.sramBytes}`,
      ),
    );
  }
}

/** Bytes per element of every tensor `elementBytes` may name, 4 where it does not. */
function sizesOf(e: ElementBytes & BackwardElementBytes = {}) {
  return { q: e.q ?? 4, k: e.k ?? 4, v: e.v ?? 4, o: e.o ?? 4, scores: e.scores ?? 4, dOut: e.dOut ?? 4 };
}

/** `elementBytes`: an object of known tensor names (the backward's with `backward`), each 2 or 4. */
function checkElementBytes(value: unknown, backward: boolean): void {
  const tensors = backward ? ["q", "k", "v", "o", "dOut"] : ["q", "k", "v", "o", "scores"];
  const say = (text: string) => message(text.replaceAll("options", "elementBytes"));
  const sizes = checkOptionKeys(value, tensors, say);
  for (const [name, bytes] of Object.entries(sizes)) {
    if (bytes !== undefined && bytes !== 2 && bytes !== 4) {
      throw new RangeError(
        message(`elementBytes.${name} must be 2 (f16, bf16) or 4 (f32): elementBytes.${name} is ${describe(bytes)}`),
      );
    }
  }
}

function sequenceLengths(shape: AttentionShape, options: StandardIoOptions) {
  const { B, Nq, Nk } = shape;
  const { seqLensK, cuSeqlensQ, cuSeqlensK } = options;
  const lengths: [number, number][] = [];
  if (cuSeqlensQ !== undefined || cuSeqlensK !== undefined) {
    if (seqLensK !== undefined) throw notWithVarlen("seqLensK");
    if (options.maskElementBytes) throw notWithVarlen("a mask", `maskElementBytes is ${options.maskElementBytes}`);
    const cuQ = checkCumulative("cuSeqlensQ", cuSeqlensQ, Nq, "shape.Nq");
    const cuK = checkCumulative("cuSeqlensK", cuSeqlensK, Nk, "shape.Nk");
    if (cuQ.length !== B + 1 || cuK.length !== B + 1) {
      throw new ShapeError(
        message(
          `cuSeqlensQ and cuSeqlensK must have length shape.B + 1 = ${
            B + 1
          }: cuSeqlensQ.length is ${cuQ.length}, cuSeqlensK.length is ${cuK.length}`,
        ),
        String(B + 1),
        `${cuQ.length}, ${cuK.length}`,
      );
    }
    for (let b = 0; b < B; b++) lengths.push([cuQ[b + 1] - cuQ[b], cuK[b + 1] - cuK[b]]);
  } else if (seqLensK !== undefined) {
    checkSeqLensK(seqLensK, B, "shape.B", Nk);
    for (let b = 0; b < B; b++) lengths.push([Nq, seqLensK[b]]);
  } else {
    return [{ Nq, Nk, count: B }];
  }
  const counts = new Map<string, { Nq: number; Nk: number; count: number }>();
  for (const [q, k] of lengths) {
    const key = `${q},${k}`;
    const entry = counts.get(key);
    if (entry) entry.count++;
    else counts.set(key, { Nq: q, Nk: k, count: 1 });
  }
  return [...counts.values()];
}

/** The keys each position sees, by the documented rule, from the options (see _visibility.ts). */
function visibleKeys(Nq: number, Nk: number, options: IoOptions): KeyVisibility {
  const [left, windowRight] = options.windowSize ?? [-1, -1];
  return keyVisibility(Nk, options.causal === "top-left" ? 0 : Nk - Nq, left, options.causal ? 0 : windowRight);
}
