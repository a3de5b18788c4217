// The score product of a thin query block, and how such a block reads K and V.
//
// A query block of at most THIN_ROWS virtual rows (a decode step: one position of the g ≤ 4 heads
// that share a K/V head; or the last few rows of a longer call) uses each key exactly once, by one
// register block, so a widened f32 copy of its K and V tiles would buy no reuse. It reads only the
// keys some row of the block can see, the union [first, end) of its rows' visible ranges, in one
// of two ways that the host picks per call (the kernel's copyThin, from CACHED_KV_BYTES in
// src/_plan.ts):
// - streaming (the call's K and V fit in the CPU's caches): the score product reads f32 or bf16 K
//   rows straight from HBM into registers, as FlashDecoding does on a GPU (hbm.ts's countStreamed
//   counts them, one addition per tile); V rows are widened into the arena by the tile copy.
// - copying (larger K and V, which come from DRAM): f32 and bf16 K and V rows are copied into the
//   arena as stored (hbm.ts's loadRowsAsStored, one memory.copy per tile when rows are
//   contiguous), and both products widen bf16 in registers. Engines run memory.copy as a library
//   memmove that keeps many more cache misses in flight than a product loop reading HBM does: on
//   decode steps with 16 MiB and more of K and V this made f32 steps 7–23% faster and bf16 ones
//   9–14%; with 8 MiB, which the caches hold, streaming was 11% faster in f32 (bench:decode-dtype,
//   BENCHMARKS.md).
// f16 K and V rows are widened into the arena by the tile copy either way: in the products, f16's
// widening (half.ts's f16Lanes, nine operations and five constants per four values) made V8 spill
// (0.62× for V; 0.84× for K against the copy), while the tile copy widens eight at a time in four
// operations per four values when none is Infinity or NaN. With copyThin the rows are first copied
// as stored and then widened in place (hbm.ts's loadRowsWidened), for the memmove's reason above:
// 1.15× on a 32K-token f16 decode step, 0.93× where the caches hold K and V.
// Both ways run the same operations in the same order on the same values: same bits, same bytes.
// Everything else (Q, S, m, l, O, masks, biases) stays in the arena.
//
// This file and hbm.ts are the only code that reads tensors in HBM. bf16 elements are widened by
// half.ts's widen4, four at a time and in order, so a bf16 K gives the bits of an f32 one holding
// the same values (as an f16 K does through the tile copy).

import { ELEMENT_BF16, ELEMENT_F32, elementShift, widen4 } from "./half";
import { madd } from "./simd";

/** Query blocks of at most this many virtual rows stream K (see the header). */
export const THIN_ROWS: i32 = 4;

/**
 * Whether a block of `rowsHere` rows is thin (streams K, copies only the V rows it sees): at most
 * THIN_ROWS rows, d a multiple of 4 (whole f32x4 groups: no read passes the end of a K row) and dv of
 * 8 (the value product's width, so the copied rows need no padding).
 */
// @ts-ignore: decorator
@inline export function isThin(rowsHere: i32, d: i32, dv: i32): bool {
  return rowsHere <= THIN_ROWS && (d & 3) == 0 && (dv & 7) == 0;
}

/**
 * For the host's IO model: the most virtual rows a query block may have and still be thin (read
 * only the K and V rows of the keys it sees) with head dims d, dv (THIN_ROWS), or 0 if none is.
 */
export function streamedRows(d: i32, dv: i32): i32 {
  return isThin(1, d, dv) ? THIN_ROWS : 0;
}

/** [Σa, Σb, Σc, Σd]: the lane sums of four vectors, each as (lane 0 + lane 2) + (lane 1 + lane 3). */
// @ts-ignore: decorator
@inline function laneSums(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = f32x4.add(v128.shuffle<f32>(a, b, 0, 4, 1, 5), v128.shuffle<f32>(a, b, 2, 6, 3, 7));
  const cd = f32x4.add(v128.shuffle<f32>(c, d, 0, 4, 1, 5), v128.shuffle<f32>(c, d, 2, 6, 3, 7));
  return f32x4.add(v128.shuffle<f32>(ab, cd, 0, 1, 4, 5), v128.shuffle<f32>(ab, cd, 2, 3, 6, 7));
}

/** Rows a thin block of `rowsHere` rows computes: 1, 2 or 4 (3 rows as 4). */
// @ts-ignore: decorator
@inline export function thinRowsOf(rowsHere: i32): i32 {
  return rowsHere <= 2 ? rowsHere : THIN_ROWS;
}

/**
 * Sᵀ = scale · K · Qᵀ for the R ∈ {1, 2, 4} query rows of a thin block, keys [cBegin, cEnd) of one
 * tile:
 *   S[c·ldq + t] = scale · Σ_k K[c][k] · Q[t·d + k]   for t < R, and 0 for R ≤ t < 4,
 * with Q row-major in the arena (R × d; with R = 4, rows past the block are zero) and key row c of
 * the tile at K + c·kRowBytes, elements of `kind`, in HBM (streaming) or in the arena (copying).
 * Lanes run along k: each (row, key) sum is four partial sums, lane j over k ≡ j mod 4 in order,
 * added by laneSums — the same operations for every R, so a row's scores do not depend on how many
 * rows its block has. Register blocks: 4 rows
 * × 2 keys (8 accumulators, 2 key vectors, a query vector), or R ≤ 2 rows × 4 keys.
 */
// @ts-ignore: decorator
@inline function scoresRows(
  S: usize, ldq: i32, Q: usize, d: i32, K: usize, kRowBytes: usize, kind: i32, R: i32,
  cBegin: i32, cEnd: i32, scale: f32,
): void {
  const scaleV = f32x4.splat(scale);
  const zero = f32x4.splat(0);
  const step = <usize>4 << elementShift(kind);
  const qRowBytes = <usize>d << 2;
  const qEnd = Q + qRowBytes;
  const sRowBytes = <usize>ldq << 2;
  let c = cBegin;
  if (R == 4) {
    for (; c + 2 <= cEnd; c += 2) {
      let a00 = zero, a10 = zero, a20 = zero, a30 = zero;
      let a01 = zero, a11 = zero, a21 = zero, a31 = zero;
      let k0 = K + <usize>c * kRowBytes;
      for (let q = Q; q < qEnd; q += 16) {
        const x0 = widen4(k0, kind);
        const x1 = widen4(k0 + kRowBytes, kind);
        let y = v128.load(q);
        a00 = madd(x0, y, a00);
        a01 = madd(x1, y, a01);
        y = v128.load(q + qRowBytes);
        a10 = madd(x0, y, a10);
        a11 = madd(x1, y, a11);
        y = v128.load(q + 2 * qRowBytes);
        a20 = madd(x0, y, a20);
        a21 = madd(x1, y, a21);
        y = v128.load(q + 3 * qRowBytes);
        a30 = madd(x0, y, a30);
        a31 = madd(x1, y, a31);
        k0 += step;
      }
      const s = S + <usize>c * sRowBytes;
      v128.store(s, f32x4.mul(laneSums(a00, a10, a20, a30), scaleV));
      v128.store(s + sRowBytes, f32x4.mul(laneSums(a01, a11, a21, a31), scaleV));
    }
  } else {
    for (; c + 4 <= cEnd; c += 4) {
      // R ≤ 2 rows × 4 keys: a<key><row>
      let a00 = zero, a10 = zero, a20 = zero, a30 = zero;
      let a01 = zero, a11 = zero, a21 = zero, a31 = zero;
      let k0 = K + <usize>c * kRowBytes;
      for (let q = Q; q < qEnd; q += 16) {
        const x0 = widen4(k0, kind);
        const x1 = widen4(k0 + kRowBytes, kind);
        const x2 = widen4(k0 + 2 * kRowBytes, kind);
        const x3 = widen4(k0 + 3 * kRowBytes, kind);
        let y = v128.load(q);
        a00 = madd(x0, y, a00);
        a10 = madd(x1, y, a10);
        a20 = madd(x2, y, a20);
        a30 = madd(x3, y, a30);
        if (R == 2) {
          y = v128.load(q + qRowBytes);
          a01 = madd(x0, y, a01);
          a11 = madd(x1, y, a11);
          a21 = madd(x2, y, a21);
          a31 = madd(x3, y, a31);
        }
        k0 += step;
      }
      const s = S + <usize>c * sRowBytes;
      v128.store(s, f32x4.mul(laneSums(a00, a01, zero, zero), scaleV));
      v128.store(s + sRowBytes, f32x4.mul(laneSums(a10, a11, zero, zero), scaleV));
      v128.store(s + 2 * sRowBytes, f32x4.mul(laneSums(a20, a21, zero, zero), scaleV));
      v128.store(s + 3 * sRowBytes, f32x4.mul(laneSums(a30, a31, zero, zero), scaleV));
    }
  }
  for (; c < cEnd; c++) {
    // The last keys one at a time: the same sums.
    let a0 = zero, a1 = zero, a2 = zero, a3 = zero;
    let k0 = K + <usize>c * kRowBytes;
    for (let q = Q; q < qEnd; q += 16) {
      const x = widen4(k0, kind);
      a0 = madd(x, v128.load(q), a0);
      if (R >= 2) a1 = madd(x, v128.load(q + qRowBytes), a1);
      if (R == 4) {
        a2 = madd(x, v128.load(q + 2 * qRowBytes), a2);
        a3 = madd(x, v128.load(q + 3 * qRowBytes), a3);
      }
      k0 += step;
    }
    v128.store(S + <usize>c * sRowBytes, f32x4.mul(laneSums(a0, a1, a2, a3), scaleV));
  }
}

// One function per (element kind, rows), each with both constants inside its loops: branches of
// one function would be folded back into one loop that tests the kind at every load.

// @ts-ignore: decorator
@inline function scoresOfKind(
  S: usize, ldq: i32, Q: usize, d: i32, K: usize, kRowBytes: usize, kind: i32, rows: i32,
  cBegin: i32, cEnd: i32, scale: f32,
): void {
  if (rows == 1) scoresRows(S, ldq, Q, d, K, kRowBytes, kind, 1, cBegin, cEnd, scale);
  else if (rows == 2) scoresRows(S, ldq, Q, d, K, kRowBytes, kind, 2, cBegin, cEnd, scale);
  else scoresRows(S, ldq, Q, d, K, kRowBytes, kind, 4, cBegin, cEnd, scale);
}

function scoresF32(S: usize, ldq: i32, Q: usize, d: i32, K: usize, kRowBytes: usize, rows: i32, cBegin: i32, cEnd: i32, scale: f32): void {
  scoresOfKind(S, ldq, Q, d, K, kRowBytes, ELEMENT_F32, rows, cBegin, cEnd, scale);
}

function scoresBf16(S: usize, ldq: i32, Q: usize, d: i32, K: usize, kRowBytes: usize, rows: i32, cBegin: i32, cEnd: i32, scale: f32): void {
  scoresOfKind(S, ldq, Q, d, K, kRowBytes, ELEMENT_BF16, rows, cBegin, cEnd, scale);
}

/** scoresRows for K of `kind` (f32 or bf16) and a block of `rows` ∈ {1, 2, 4} (thinRowsOf) rows. */
export function scoresThin(
  S: usize, ldq: i32, Q: usize, d: i32, K: usize, kRowBytes: usize, kind: i32, rows: i32,
  cBegin: i32, cEnd: i32, scale: f32,
): void {
  if (kind == ELEMENT_F32) scoresF32(S, ldq, Q, d, K, kRowBytes, rows, cBegin, cEnd, scale);
  else scoresBf16(S, ldq, Q, d, K, kRowBytes, rows, cBegin, cEnd, scale);
}
