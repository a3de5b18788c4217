// Exact attention forward, FlashAttention-2 (Dao, ICLR 2024, arXiv 2307.08691, Algorithm 1).
//
// For one head: O = softmax(scale·Q·Kᵀ + mask)·V and lse = rowwise log-sum-exp of the scores.
// Loop order: query blocks Qi (Br rows) outside, key/value blocks Kj, Vj (Bc rows) inside; the
// online-softmax state (m, l, O) of a query block stays in the arena for the whole inner loop,
// so the Nq × Nk score matrix never exists. Tile sizes and the arena layout: arena.ts. Every
// HBM access is a counted tile copy: hbm.ts.
//
// Visibility (causal and sliding windows, bottom-right aligned): query i sees key j iff
//   i + diagOffset − windowLeft ≤ j ≤ i + diagOffset + windowRight,
// a bound of −1 meaning unbounded; causal is (windowLeft, windowRight) = (−1, 0) and
// diagOffset = Nk − Nq (plus the first row's index when the host splits Q into chunks).
// Key blocks no query of the block can see are never loaded nor computed, and inside a block
// each strip of queries only computes the columns it can see.

import {
  BR_STEP, REGION_ALPHA, REGION_KJ, REGION_L, REGION_M, REGION_O, REGION_QIT, REGION_S,
  REGION_VJ, arenaPtr, blockSizes, paddedDv, regionOffset, roundUp,
} from "./arena";
import { expNonPositive } from "./exp";
import {
  TENSOR_K, TENSOR_LSE, TENSOR_O, TENSOR_Q, TENSOR_V, loadRows, loadRowsTransposed, storeRows,
} from "./hbm";
import { accumulateValues, scoresStrip } from "./simd";

// @ts-ignore: decorator
@inline function imin(a: i32, b: i32): i32 { return a < b ? a : b; }
// @ts-ignore: decorator
@inline function imax(a: i32, b: i32): i32 { return a > b ? a : b; }

/** First key query i may see (clamped to [0, Nk]). */
// @ts-ignore: decorator
@inline function firstKey(i: i32, diagOffset: i32, left: i32, Nk: i32): i32 {
  return left < 0 ? 0 : imin(Nk, imax(0, i + diagOffset - left));
}

/** One past the last key query i may see (clamped to [0, Nk]). */
// @ts-ignore: decorator
@inline function endKey(i: i32, diagOffset: i32, right: i32, Nk: i32): i32 {
  return right < 0 ? Nk : imin(Nk, imax(0, i + diagOffset + right + 1));
}

function addr(base: usize, floats: i32): usize {
  return base + (<usize>floats << 2);
}

/**
 * Attention of one head. Tensors are in HBM as row-major matrices with the given row strides
 * (in elements): Q is Nq × d, K is Nk × d, V is Nk × dv, O is Nq × dv; lse (Nq contiguous
 * floats) is written when lsePtr ≠ 0. The caller guarantees 1 ≤ d, dv ≤ HEAD_DIM_MAX and
 * blockSizes(sramBytes, d, dv) ≠ 0.
 */
export function forwardHead(
  qPtr: usize, qStride: i32, kPtr: usize, kStride: i32, vPtr: usize, vStride: i32,
  oPtr: usize, oStride: i32, lsePtr: usize,
  Nq: i32, Nk: i32, d: i32, dv: i32, scale: f32,
  diagOffset: i32, windowLeft: i32, windowRight: i32, sramBytes: i32,
): void {
  const blocks = blockSizes(sramBytes, d, dv);
  const Br = blocks >>> 16;
  const Bc = blocks & 0xffff;
  const dvP = paddedDv(dv);
  const arena = arenaPtr();
  const QiT = addr(arena, regionOffset(REGION_QIT, Br, Bc, d, dv));
  const Kj = addr(arena, regionOffset(REGION_KJ, Br, Bc, d, dv));
  const Vj = addr(arena, regionOffset(REGION_VJ, Br, Bc, d, dv));
  const S = addr(arena, regionOffset(REGION_S, Br, Bc, d, dv));
  const O = addr(arena, regionOffset(REGION_O, Br, Bc, d, dv));
  const m = addr(arena, regionOffset(REGION_M, Br, Bc, d, dv));
  const l = addr(arena, regionOffset(REGION_L, Br, Bc, d, dv));
  const alphas = addr(arena, regionOffset(REGION_ALPHA, Br, Bc, d, dv));
  const negInf = f32x4.splat(-Infinity);
  const zero = f32x4.splat(0);

  for (let i0 = 0; i0 < Nq; i0 += Br) {
    const rows = imin(Br, Nq - i0);
    const rows4 = roundUp(rows, 4);
    const ldq = roundUp(rows, BR_STEP); // row stride of QiT and S for this block
    loadRowsTransposed(QiT, ldq, addr(qPtr, i0 * qStride), qStride, rows, d, TENSOR_Q);
    memory.fill(O, 0, <usize>(rows4 * dvP) << 2);
    for (let r = 0; r < rows4; r += 4) {
      v128.store(addr(m, r), negInf);
      v128.store(addr(l, r), zero);
    }

    // Key blocks that some query of this block can see.
    const jBegin = firstKey(i0, diagOffset, windowLeft, Nk) / Bc * Bc;
    const jEnd = endKey(i0 + rows - 1, diagOffset, windowRight, Nk);
    for (let j0 = jBegin; j0 < jEnd; j0 += Bc) {
      const cols = imin(Bc, Nk - j0);
      const cols4 = roundUp(cols, 4);
      loadRows(Kj, d, cols4, d, addr(kPtr, j0 * kStride), kStride, cols, d, TENSOR_K);
      loadRows(Vj, dvP, cols, dvP, addr(vPtr, j0 * vStride), vStride, cols, dv, TENSOR_V);

      // S = scale·Qi·Kjᵀ, per strip of 8 queries over the columns the strip can see.
      for (let r = 0; r < rows; r += BR_STEP) {
        const last = i0 + imin(r + BR_STEP, rows) - 1;
        const cBegin = imax(0, firstKey(i0 + r, diagOffset, windowLeft, Nk) - j0) & ~3;
        const cEnd = imin(cols4, roundUp(imax(0, endKey(last, diagOffset, windowRight, Nk) - j0), 4));
        if (cBegin < cEnd) scoresStrip(S, QiT, ldq, Kj, d, r, cBegin, cEnd, scale);
      }

      // Online softmax and O = alpha·O + P·Vj, per group of 4 queries.
      for (let r = 0; r < rows; r += 4) {
        const i = i0 + r;
        const last = i0 + imin(r + 4, rows) - 1;
        // Columns some query of the group sees: [gBegin, gEnd); all of them see [allBegin, allEnd).
        const gBegin = imax(0, firstKey(i, diagOffset, windowLeft, Nk) - j0);
        const gEnd = imin(cols, imax(0, endKey(last, diagOffset, windowRight, Nk) - j0));
        const allBegin = imax(0, firstKey(last, diagOffset, windowLeft, Nk) - j0);
        const allEnd = imin(cols, imax(0, endKey(i, diagOffset, windowRight, Nk) - j0));
        if (gBegin >= gEnd) continue; // no query of the group sees this block: m, l, O unchanged
        const keyFirst = i32x4(
          firstKey(i, diagOffset, windowLeft, Nk), firstKey(i + 1, diagOffset, windowLeft, Nk),
          firstKey(i + 2, diagOffset, windowLeft, Nk), firstKey(i + 3, diagOffset, windowLeft, Nk),
        );
        const keyEnd = i32x4(
          endKey(i, diagOffset, windowRight, Nk), endKey(i + 1, diagOffset, windowRight, Nk),
          endKey(i + 2, diagOffset, windowRight, Nk), endKey(i + 3, diagOffset, windowRight, Nk),
        );
        const mOld = v128.load(addr(m, r));
        const rowBytes = <usize>ldq << 2;
        const sEnd = addr(S, gEnd * ldq + r);

        // mNew = max(m, rowmax(S)), masking the scores of keys a query cannot see to −∞.
        let rowMax = negInf;
        let c = gBegin;
        for (let s = addr(S, gBegin * ldq + r); s < sEnd; s += rowBytes) {
          let x = v128.load(s);
          if (c < allBegin || c >= allEnd) {
            const key = i32x4.splat(j0 + c);
            const visible = v128.and(i32x4.ge_s(key, keyFirst), i32x4.lt_s(key, keyEnd));
            x = v128.bitselect(x, negInf, visible);
            v128.store(s, x);
          }
          rowMax = f32x4.pmax(rowMax, x);
          c++;
        }
        const mNew = f32x4.pmax(mOld, rowMax);
        // A query that has seen no key yet keeps m = −∞; subtract 0 instead so exp gives 0, not NaN.
        const mUse = v128.bitselect(zero, mNew, f32x4.eq(mNew, negInf));

        // P = exp(S − mNew); rowsum(P)
        let rowSum = zero;
        for (let s = addr(S, gBegin * ldq + r); s < sEnd; s += rowBytes) {
          const p = expNonPositive(f32x4.sub(v128.load(s), mUse));
          v128.store(s, p);
          rowSum = f32x4.add(rowSum, p);
        }

        // alpha = exp(m − mNew); l = alpha·l + rowsum(P); m = mNew
        const alpha = expNonPositive(f32x4.sub(mOld, mUse));
        v128.store(addr(l, r), f32x4.add(f32x4.mul(alpha, v128.load(addr(l, r))), rowSum));
        v128.store(addr(m, r), mNew);
        v128.store(addr(alphas, r), alpha);

        // O = alpha·O + P·Vj
        accumulateValues(O, dvP, S, ldq, Vj, r, gBegin, gEnd, addr(alphas, r));
      }
    }

    // epilogue: O /= l; lse = m + ln(l). A query that saw no key gets O = 0 and lse = −∞.
    for (let r = 0; r < rows; r++) {
      const lr = load<f32>(addr(l, r));
      const o = addr(O, r * dvP);
      if (lr == 0) {
        memory.fill(o, 0, <usize>dvP << 2);
        store<f32>(addr(alphas, r), -Infinity);
      } else {
        const lV = f32x4.splat(lr);
        for (let c = 0; c < dvP; c += 4) v128.store(addr(o, c), f32x4.div(v128.load(addr(o, c)), lV));
        store<f32>(addr(alphas, r), load<f32>(addr(m, r)) + Mathf.log(lr));
      }
    }
    storeRows(addr(oPtr, i0 * oStride), oStride, O, dvP, rows, dv, TENSOR_O);
    if (lsePtr != 0) storeRows(addr(lsePtr, i0), rows, alphas, rows, 1, rows, TENSOR_LSE);
  }
}
