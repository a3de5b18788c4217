// HBM ↔ SRAM tile copies: with stream.ts (a thin query block's K when it streams, read into
// registers), the only code that reads or writes the tensors in linear memory.
//
// The module's linear memory plays HBM: the host places Q, K, V, O, lse and masks there. Kernels
// compute only on the arena (arena.ts), and every byte they move between the two goes through the
// routines below, which add it to a per-tensor counter. The counters are therefore the exact HBM
// traffic of a run, not an estimate.
//
// Query-side tensors (Q, O, lse, mask rows) are addressed by "virtual rows": with g query heads
// sharing one K/V head (GQA), virtual row r is query position ⌊r/g⌋ of head r mod g, so a tile of
// rows covers all heads of the group for consecutive positions. Its element offset is
//   ⌊r/g⌋·rowStride + (r mod g)·headStride,
// which the copies below step from row to row (head, then position) instead of dividing per row;
// virtualRowAt divides, for loadRowsTransposed's blocks of 4 rows (4 divisions against 4 rows of
// copying).
//
// Each streaming multiprocessor (SM: one thread's counters and arena, see arena.ts) counts into its
// own block, at the SM's first byte (little-endian u64): bytesRead[TENSOR_SLOTS],
// bytesWritten[TENSOR_SLOTS], then the tile counters (TILES_*). The copy routines take that
// block's address, `counters`, so SMs running in parallel never share a counter.
//
// Element kinds (half.ts): a tensor in HBM holds f32, f16 or bf16 elements; the arena holds f32,
// except the K and V rows a thin block copies as stored (loadRowsAsStored, stream.ts), which its
// products widen in registers. The copies that read or write q, k, v, O and dO take the tensor's
// `kind` (f32 when left out), address its rows in elements of that size, widen 16-bit elements into
// f32 on the way in (widenRow, widenOne) and round f32 results to 16 bits on the way out
// (narrowRow), and count the bytes the tensor really occupies: 2 per element for f16 and bf16, 4
// for f32.

import { ELEMENT_F32, elementBytes, elementShift, narrowRow, widenOne, widenRow } from "./half";

export const TENSOR_Q: i32 = 0;
export const TENSOR_K: i32 = 1;
export const TENSOR_V: i32 = 2;
export const TENSOR_O: i32 = 3;
export const TENSOR_LSE: i32 = 4;
export const TENSOR_MASK: i32 = 5;
/** Partial O and lse of split-KV, written by the forward kernel and read back by the merge. */
export const TENSOR_PARTIAL: i32 = 6;
/** ALiBi slopes. */
export const TENSOR_SLOPES: i32 = 7;
/** The backward's inputs dO and D = rowsum(dO ∘ O), and its outputs dQ, dK, dV. */
export const TENSOR_DOUT: i32 = 8;
export const TENSOR_D: i32 = 9;
export const TENSOR_DQ: i32 = 10;
export const TENSOR_DK: i32 = 11;
export const TENSOR_DV: i32 = 12;
export const TENSOR_SLOTS: i32 = 13;
/** Key/value tiles computed, and tiles skipped because the mask blanked them. */
export const TILES_COMPUTED: i32 = 2 * TENSOR_SLOTS;
export const TILES_SKIPPED_MASK: i32 = 2 * TENSOR_SLOTS + 1;
/** Floating-point operations of the two matrix products as executed (padding lanes included). */
export const FLOPS: i32 = 2 * TENSOR_SLOTS + 2;
/** Largest arena extent (bytes from the SM's arena start) any kernel laid out since the last reset. */
export const ARENA_PEAK: i32 = 2 * TENSOR_SLOTS + 3;
export const COUNTER_SLOTS: i32 = 2 * TENSOR_SLOTS + 4;
export const COUNTERS_BYTES: i32 = COUNTER_SLOTS * 8;

/** Mask element types. */
export const MASK_NONE: i32 = 0;
export const MASK_F32: i32 = 1;
export const MASK_U8: i32 = 2;

/** Sets every counter of the block at `counters` (an SM's first byte) to zero. */
export function resetCounters(counters: usize): void {
  memory.fill(counters, 0, <usize>COUNTERS_BYTES);
}

/** Adds n to counter slot `slot` of the block at `counters`. */
// @ts-ignore: decorator
@inline export function countAdd(counters: usize, slot: i32, n: u64): void {
  const at = counters + (<usize>slot << 3);
  store<u64>(at, load<u64>(at) + n);
}

/** Raises counter slot `slot` of the block at `counters` to at least n. */
// @ts-ignore: decorator
@inline export function countMax(counters: usize, slot: i32, n: i32): void {
  const at = counters + (<usize>slot << 3);
  if (<u64>n > load<u64>(at)) store<u64>(at, <u64>n);
}

// @ts-ignore: decorator
@inline function countRead(counters: usize, tensor: i32, bytes: i32): void {
  countAdd(counters, tensor, <u64>bytes);
}

/**
 * Counts `bytes` of `tensor` read from HBM straight into registers by a thin query block's score
 * product (stream.ts), once per tile: the same counter as the tile copies'.
 */
// @ts-ignore: decorator
@inline export function countStreamed(counters: usize, tensor: i32, bytes: i32): void {
  countRead(counters, tensor, bytes);
}

// @ts-ignore: decorator
@inline function countWritten(counters: usize, tensor: i32, bytes: i32): void {
  countAdd(counters, TENSOR_SLOTS + tensor, <u64>bytes);
}

/**
 * HBM → arena: copies `rows` rows of `cols` elements of `kind` (source row stride `srcStride`
 * elements) to `dst` as floats with row stride `dstStride`, then zero-fills each row up to
 * `dstCols` and adds zero rows up to `dstRows`, so tiles never carry stale arena contents into the
 * arithmetic.
 */
export function loadRows(
  counters: usize,
  dst: usize,
  dstStride: i32,
  dstRows: i32,
  dstCols: i32,
  src: usize,
  srcStride: i32,
  rows: i32,
  cols: i32,
  tensor: i32,
  kind: i32 = ELEMENT_F32,
): void {
  const shift = elementShift(kind);
  if (kind == ELEMENT_F32 && srcStride == cols && dstStride == cols && dstCols == cols) {
    // f32 rows contiguous on both sides (a head-major K or V tile): one block copy, which engines
    // run as a library memmove, several times the speed of a v128 loop.
    memory.copy(dst, src, <usize>(rows * cols) << 2);
  } else {
    for (let r = 0; r < rows; r++) {
      const d = dst + (<usize>(r * dstStride) << 2);
      widenRow(d, src + ((<usize>r * <usize>srcStride) << shift), cols, kind);
      if (dstCols > cols) memory.fill(d + (<usize>cols << 2), 0, <usize>(dstCols - cols) << 2);
    }
  }
  for (let r = rows; r < dstRows; r++) {
    memory.fill(dst + (<usize>(r * dstStride) << 2), 0, <usize>dstCols << 2);
  }
  countRead(counters, tensor, rows * cols * elementBytes(kind));
}

/**
 * HBM → arena without conversion: `rows` rows of `cols` elements of `kind` (source row stride
 * `srcStride` elements) to `dst` as they are, rows contiguous (cols elements apart). For a thin
 * query block's K and V rows when it copies them (stream.ts): its products widen them in
 * registers. One block copy when the source rows are contiguous too, else one per row.
 */
export function loadRowsAsStored(
  counters: usize,
  dst: usize,
  src: usize,
  srcStride: i32,
  rows: i32,
  cols: i32,
  tensor: i32,
  kind: i32,
): void {
  const shift = elementShift(kind);
  const rowBytes = <usize>cols << shift;
  if (srcStride == cols) memory.copy(dst, src, rowBytes * <usize>rows);
  else {
    const srcRowBytes = <usize>srcStride << shift;
    for (let r = 0; r < rows; r++) memory.copy(dst + <usize>r * rowBytes, src + <usize>r * srcRowBytes, rowBytes);
  }
  countRead(counters, tensor, rows * cols * elementBytes(kind));
}

/**
 * HBM → arena for a thin block's 16-bit rows (stream.ts): `rows` rows of `cols` elements of `kind`
 * (source row stride `srcStride` elements) to `dst` as f32, rows contiguous, in two passes: the rows
 * as stored (loadRowsAsStored) into the upper half of the destination, then widened in place, all
 * n = rows·cols elements in one pass. A memmove from DRAM keeps more misses in flight than the
 * widening loop does; the loop then reads from the cache. In place is safe because every store
 * lands below the bytes still to be read: widenRow loads each group before storing it, and the
 * group of elements i..i+7 ends its f32 at byte 4·(i + 8) of the destination, at or before byte
 * 2·n + 2·(i + 8), where the elements still to be read start (i + 8 ≤ n; groups of 4 and single
 * elements likewise).
 */
export function loadRowsWidened(
  counters: usize,
  dst: usize,
  src: usize,
  srcStride: i32,
  rows: i32,
  cols: i32,
  tensor: i32,
  kind: i32,
): void {
  const n = rows * cols;
  const stored = dst + (<usize>n << 1);
  loadRowsAsStored(counters, stored, src, srcStride, rows, cols, tensor, kind); // counts the bytes read
  widenRow(dst, stored, n, kind);
}

/**
 * HBM → arena, by virtual row: row r0 + r of `src` (elements of `kind`, addressed as in the header)
 * goes to row r of `dst` (row stride `dstStride`), `cols` floats zero-filled up to `dstCols`, then
 * zero rows up to `dstRows`.
 */
export function loadVirtualRows(
  counters: usize,
  dst: usize,
  dstStride: i32,
  dstRows: i32,
  dstCols: i32,
  src: usize,
  rowStride: i32,
  headStride: i32,
  g: i32,
  r0: i32,
  rows: i32,
  cols: i32,
  tensor: i32,
  kind: i32 = ELEMENT_F32,
): void {
  const shift = elementShift(kind);
  let pos = r0 / g; // virtual row r0 + r is position `pos` of head `head` (header)
  let head = r0 - pos * g;
  for (let r = 0; r < rows; r++) {
    const d = dst + (<usize>(r * dstStride) << 2);
    widenRow(d, src + ((<usize>pos * <usize>rowStride + <usize>head * <usize>headStride) << shift), cols, kind);
    if (++head == g) {
      head = 0;
      pos++;
    }
    if (dstCols > cols) memory.fill(d + (<usize>cols << 2), 0, <usize>(dstCols - cols) << 2);
  }
  for (let r = rows; r < dstRows; r++) {
    memory.fill(dst + (<usize>(r * dstStride) << 2), 0, <usize>dstCols << 2);
  }
  countRead(counters, tensor, rows * cols * elementBytes(kind));
}

/** Byte address of f32 virtual row `row` (header) of the tensor at `src`. */
// @ts-ignore: decorator
@inline function virtualRowAt(src: usize, rowStride: i32, headStride: i32, g: i32, row: i32): usize {
  const pos = row / g;
  return src + ((<usize>pos * <usize>rowStride + <usize>(row - pos * g) * <usize>headStride) << 2);
}

/**
 * HBM → arena, transposed: for virtual rows r0 ≤ r < r0 + rows, dst[c·dstStride + (r − r0)] =
 * src[offset of virtual row r + c] (an element of `kind`, as an f32) for c < cols, and zero for
 * rows ≤ r − r0 < dstStride.
 */
export function loadRowsTransposed(
  counters: usize,
  dst: usize,
  dstStride: i32,
  src: usize,
  rowStride: i32,
  headStride: i32,
  g: i32,
  r0: i32,
  rows: i32,
  cols: i32,
  tensor: i32,
  kind: i32 = ELEMENT_F32,
): void {
  const shift = elementShift(kind);
  let r = 0;
  if (kind == ELEMENT_F32) {
    // Four rows at a time: a 4 × 4 block read as four row vectors and written as four column
    // vectors (lanes along the rows), so every load and store moves 16 bytes.
    const colsV = cols & ~3;
    const step = <usize>dstStride << 2; // between the four columns' vectors
    for (; r + 4 <= rows; r += 4) {
      const s0 = virtualRowAt(src, rowStride, headStride, g, r0 + r);
      const s1 = virtualRowAt(src, rowStride, headStride, g, r0 + r + 1);
      const s2 = virtualRowAt(src, rowStride, headStride, g, r0 + r + 2);
      const s3 = virtualRowAt(src, rowStride, headStride, g, r0 + r + 3);
      const d = dst + (<usize>r << 2);
      for (let c = 0; c < colsV; c += 4) {
        const at = <usize>c << 2;
        const x0 = v128.load(s0 + at), x1 = v128.load(s1 + at), x2 = v128.load(s2 + at), x3 = v128.load(s3 + at);
        const lo01 = v128.shuffle<f32>(x0, x1, 0, 4, 1, 5); // x0[0] x1[0] x0[1] x1[1]
        const lo23 = v128.shuffle<f32>(x2, x3, 0, 4, 1, 5);
        const hi01 = v128.shuffle<f32>(x0, x1, 2, 6, 3, 7); // x0[2] x1[2] x0[3] x1[3]
        const hi23 = v128.shuffle<f32>(x2, x3, 2, 6, 3, 7);
        const out = d + (<usize>(c * dstStride) << 2);
        v128.store(out, v128.shuffle<f32>(lo01, lo23, 0, 1, 4, 5));
        v128.store(out + step, v128.shuffle<f32>(lo01, lo23, 2, 3, 6, 7));
        v128.store(out + 2 * step, v128.shuffle<f32>(hi01, hi23, 0, 1, 4, 5));
        v128.store(out + 3 * step, v128.shuffle<f32>(hi01, hi23, 2, 3, 6, 7));
      }
      for (let c = colsV; c < cols; c++) {
        const out = d + (<usize>(c * dstStride) << 2);
        const at = <usize>c << 2;
        store<f32>(out, load<f32>(s0 + at));
        store<f32>(out, load<f32>(s1 + at), 4);
        store<f32>(out, load<f32>(s2 + at), 8);
        store<f32>(out, load<f32>(s3 + at), 12);
      }
    }
  }
  let pos = (r0 + r) / g; // the remaining rows (all of them for 16-bit kinds), stepped
  let head = r0 + r - pos * g;
  for (; r < rows; r++) {
    const s = src + ((<usize>pos * <usize>rowStride + <usize>head * <usize>headStride) << shift);
    const d = dst + (<usize>r << 2);
    if (kind == ELEMENT_F32) {
      for (let c = 0; c < cols; c++) {
        store<f32>(d + (<usize>(c * dstStride) << 2), load<f32>(s + (<usize>c << 2)));
      }
    } else {
      for (let c = 0; c < cols; c++) {
        store<f32>(d + (<usize>(c * dstStride) << 2), widenOne(<u32>load<u16>(s + (<usize>c << 1)), kind));
      }
    }
    if (++head == g) {
      head = 0;
      pos++;
    }
  }
  if (dstStride > rows) {
    for (let c = 0; c < cols; c++) {
      memory.fill(dst + (<usize>(c * dstStride + rows) << 2), 0, <usize>(dstStride - rows) << 2);
    }
  }
  countRead(counters, tensor, rows * cols * elementBytes(kind));
}

/**
 * Arena → HBM: row r of `src` (row stride `srcStride`, `cols` floats) goes to virtual row r0 + r
 * of `dst` as elements of `kind` (rounded to nearest even when 16-bit), for r < rows.
 */
export function storeRows(
  counters: usize,
  dst: usize,
  rowStride: i32,
  headStride: i32,
  g: i32,
  r0: i32,
  src: usize,
  srcStride: i32,
  rows: i32,
  cols: i32,
  tensor: i32,
  kind: i32 = ELEMENT_F32,
): void {
  const shift = elementShift(kind);
  let pos = r0 / g;
  let head = r0 - pos * g;
  for (let r = 0; r < rows; r++) {
    narrowRow(
      dst + ((<usize>pos * <usize>rowStride + <usize>head * <usize>headStride) << shift),
      src + (<usize>(r * srcStride) << 2),
      cols,
      kind,
    );
    if (++head == g) {
      head = 0;
      pos++;
    }
  }
  countWritten(counters, tensor, rows * cols * elementBytes(kind));
}

/**
 * Arena → HBM, adding: virtual row r0 + r of `dst` += row r of `src` (row stride `srcStride`,
 * `cols` floats), for r < rows. Reads and writes the HBM rows, and counts both.
 */
export function addRows(
  counters: usize,
  dst: usize,
  rowStride: i32,
  headStride: i32,
  g: i32,
  r0: i32,
  src: usize,
  srcStride: i32,
  rows: i32,
  cols: i32,
  tensor: i32,
): void {
  let pos = r0 / g;
  let head = r0 - pos * g;
  for (let r = 0; r < rows; r++) {
    const d = dst + ((<usize>pos * <usize>rowStride + <usize>head * <usize>headStride) << 2);
    const s = src + (<usize>(r * srcStride) << 2);
    let c = 0;
    for (; c + 4 <= cols; c += 4) {
      const at = <usize>c << 2;
      v128.store(d + at, f32x4.add(v128.load(d + at), v128.load(s + at)));
    }
    for (; c < cols; c++) {
      const at = <usize>c << 2;
      store<f32>(d + at, load<f32>(d + at) + load<f32>(s + at));
    }
    if (++head == g) {
      head = 0;
      pos++;
    }
  }
  countRead(counters, tensor, rows * cols * 4);
  countWritten(counters, tensor, rows * cols * 4);
}

/**
 * HBM → arena, one mask tile: the bias of virtual row r0 + r and key j0 + c goes to
 * dst[c·dstStride + r] when `transposed` (laid out like the forward's Sᵀ), else to dst[r·dstStride + c],
 * for r < rows and c < cols. The mask element of (row, key) is at
 * (offset of virtual row r) + key·colStride (strides may be 0: broadcasting). Float masks are copied as they
 * are; byte masks become 0 (nonzero: attend) or −∞. Returns true if some entry is not −∞, i.e. the
 * mask leaves something of the tile visible.
 */
export function loadMaskTile(
  counters: usize,
  dst: usize,
  dstStride: i32,
  mask: usize,
  kind: i32,
  rowStride: i32,
  headStride: i32,
  colStride: i32,
  g: i32,
  r0: i32,
  rows: i32,
  j0: i32,
  cols: i32,
  transposed: bool,
): bool {
  let open = false;
  const negInf: f32 = -Infinity;
  const elementBytes = kind == MASK_U8 ? 1 : 4;
  let pos = r0 / g;
  let head = r0 - pos * g;
  for (let r = 0; r < rows; r++) {
    const row = <usize>pos * <usize>rowStride + <usize>head * <usize>headStride;
    if (++head == g) {
      head = 0;
      pos++;
    }
    const d = dst + (<usize>(transposed ? r : r * dstStride) << 2);
    const step = transposed ? dstStride : 1;
    for (let c = 0; c < cols; c++) {
      const at = row + <usize>(j0 + c) * <usize>colStride;
      const x: f32 = kind == MASK_U8 ? (load<u8>(mask + at) != 0 ? 0 : negInf) : load<f32>(mask + (at << 2));
      open = open || x != negInf;
      store<f32>(d + (<usize>(c * step) << 2), x);
    }
  }
  countRead(counters, TENSOR_MASK, rows * cols * elementBytes);
  return open;
}
