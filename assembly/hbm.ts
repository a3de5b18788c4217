// HBM ↔ SRAM tile copies: the only code that reads or writes the tensors in linear memory.
//
// The module's linear memory plays HBM: the host places Q, K, V, O and lse there. Kernels compute
// only on the arena (arena.ts), and every byte they move between the two goes through the three
// routines below, which add it to a per-tensor counter. The counters are therefore the exact HBM
// traffic of a run, not an estimate.
//
// Counter block (at countersPtr(), little-endian u64): bytesRead[TENSOR_SLOTS] then
// bytesWritten[TENSOR_SLOTS], indexed by the TENSOR_* ids.

export const TENSOR_Q: i32 = 0;
export const TENSOR_K: i32 = 1;
export const TENSOR_V: i32 = 2;
export const TENSOR_O: i32 = 3;
export const TENSOR_LSE: i32 = 4;
export const TENSOR_SLOTS: i32 = 8;
export const COUNTERS_BYTES: i32 = 2 * TENSOR_SLOTS * 8;

/** Byte address of the traffic counters (the first bytes after the module's static data). */
export function countersPtr(): usize {
  return (__heap_base + 63) & ~(<usize>63);
}

/** Sets every traffic counter to zero. */
export function resetCounters(): void {
  memory.fill(countersPtr(), 0, <usize>COUNTERS_BYTES);
}

// @ts-ignore: decorator
@inline function count(tensor: i32, bytes: i32, written: bool): void {
  const index = written ? TENSOR_SLOTS + tensor : tensor;
  const slot = countersPtr() + (<usize>index << 3);
  store<u64>(slot, load<u64>(slot) + <u64>bytes);
}

// @ts-ignore: decorator
@inline function copyRow(dst: usize, src: usize, n: i32): void {
  let i = 0;
  for (; i + 4 <= n; i += 4) v128.store(dst + (<usize>i << 2), v128.load(src + (<usize>i << 2)));
  for (; i < n; i++) store<f32>(dst + (<usize>i << 2), load<f32>(src + (<usize>i << 2)));
}

/**
 * HBM → arena: copies `rows` rows of `cols` floats (source row stride `srcStride` elements) to
 * `dst` with row stride `dstStride`, then zero-fills each row up to `dstCols` and adds zero rows
 * up to `dstRows`, so tiles never carry stale arena contents into the arithmetic.
 */
export function loadRows(
  dst: usize, dstStride: i32, dstRows: i32, dstCols: i32,
  src: usize, srcStride: i32, rows: i32, cols: i32, tensor: i32,
): void {
  for (let r = 0; r < rows; r++) {
    const d = dst + (<usize>(r * dstStride) << 2);
    copyRow(d, src + (<usize>r * <usize>srcStride << 2), cols);
    if (dstCols > cols) memory.fill(d + (<usize>cols << 2), 0, <usize>(dstCols - cols) << 2);
  }
  for (let r = rows; r < dstRows; r++) {
    memory.fill(dst + (<usize>(r * dstStride) << 2), 0, <usize>dstCols << 2);
  }
  count(tensor, rows * cols * 4, false);
}

/**
 * HBM → arena, transposed: dst[c·dstStride + r] = src[r·srcStride + c] for r < rows, c < cols,
 * and zero for rows ≤ r < dstStride.
 */
export function loadRowsTransposed(
  dst: usize, dstStride: i32,
  src: usize, srcStride: i32, rows: i32, cols: i32, tensor: i32,
): void {
  for (let r = 0; r < rows; r++) {
    const s = src + (<usize>r * <usize>srcStride << 2);
    const d = dst + (<usize>r << 2);
    for (let c = 0; c < cols; c++) {
      store<f32>(d + (<usize>(c * dstStride) << 2), load<f32>(s + (<usize>c << 2)));
    }
  }
  if (dstStride > rows) {
    for (let c = 0; c < cols; c++) {
      memory.fill(dst + (<usize>(c * dstStride + rows) << 2), 0, <usize>(dstStride - rows) << 2);
    }
  }
  count(tensor, rows * cols * 4, false);
}

/** Arena → HBM: copies `rows` rows of `cols` floats from `src` (row stride `srcStride`) to `dst`. */
export function storeRows(
  dst: usize, dstStride: i32,
  src: usize, srcStride: i32, rows: i32, cols: i32, tensor: i32,
): void {
  for (let r = 0; r < rows; r++) {
    copyRow(dst + (<usize>r * <usize>dstStride << 2), src + (<usize>(r * srcStride) << 2), cols);
  }
  count(tensor, rows * cols * 4, true);
}
