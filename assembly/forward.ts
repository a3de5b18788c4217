// Exact attention forward, FlashAttention-2 (Dao, ICLR 2024, arXiv 2307.08691, Algorithm 1).
//
// One call handles one K/V head and the g query heads that share it (g = 1 without GQA):
//   O = softmax(S)·V with S = scale·Q·Kᵀ, then softcap, + ALiBi bias, + mask, − ∞ where not visible,
// and lse = log Σ_j exp(S_ij) per query row. The g heads are interleaved into "virtual rows"
// (row r is position ⌊r/g⌋ of head r mod g, see hbm.ts), so one K/V tile serves the whole group.
//
// Loop order: query blocks Qi (Br virtual rows) outside, key/value blocks Kj, Vj (Bc keys)
// inside; the online-softmax state (m, l, O) of a query block stays in the arena for the whole
// inner loop, so no Nq × Nk matrix ever exists. Tile sizes and arena layout: arena.ts. Every HBM
// access is a counted tile copy (hbm.ts), except a thin block's K when it streams: a block of at
// most 4 rows reuses no K tile across rows, so its score product reads K rows from HBM (stream.ts)
// or, with copyThin, from a copy of them as stored in the arena; it reads only the K and V rows of
// the keys it sees.
//
// Visibility (causal and sliding windows): position i sees key j iff
//   keyBegin ≤ j < keyEnd  and  i + visOffset − windowLeft ≤ j ≤ i + visOffset + windowRight,
// a window bound of −1 meaning unbounded. Causal is (−1, 0); visOffset = Nk − Nq aligns it
// bottom-right, 0 top-left. [keyBegin, keyEnd) is the valid key range: keys past a sequence's
// length do not exist, and split-KV gives each split its own range.
// Key blocks no row of a query block can see are neither loaded nor computed; inside a block each
// strip of queries computes only the columns it can see; a block the mask blanks entirely is
// skipped after loading only its mask tile.

import {
  BR_STEP,
  REGION_END,
  REGION_ALPHA,
  REGION_ROW_FIRST,
  REGION_KJ,
  REGION_ROW_END,
  REGION_L,
  REGION_M,
  REGION_MASK,
  REGION_O,
  REGION_ROW_POS,
  REGION_QIT,
  REGION_S,
  REGION_SLOPE,
  REGION_VJ,
  arenaOf,
  blockSizes,
  paddedDv,
  regionOffset,
  roundUp,
} from "./arena";
import { expBase2 } from "./exp";
import { addBiases, addr, i32At, imax, imin, rowRanges, tanh } from "./scores";
import {
  MASK_NONE,
  TENSOR_K,
  TENSOR_LSE,
  TENSOR_O,
  TENSOR_PARTIAL,
  TENSOR_Q,
  TENSOR_SLOPES,
  TENSOR_V,
  ARENA_PEAK,
  FLOPS,
  TILES_COMPUTED,
  TILES_SKIPPED_MASK,
  countAdd,
  countMax,
  countStreamed,
  loadMaskTile,
  loadRows,
  loadRowsAsStored,
  loadRowsWidened,
  loadRowsTransposed,
  loadVirtualRows,
  storeRows,
} from "./hbm";
import { ELEMENT_F16, ELEMENT_F32, elementBytes, elementShift } from "./half";
import { accumulateFewValues, accumulateValues, madd, scoresStrip4, scoresStripMax } from "./simd";
import { isThin, scoresThin, thinRowsOf } from "./stream";

/**
 * Attention of one K/V head and its g query heads, on the SM at `sm` (its arena and counters,
 * arena.ts). Pointers are byte addresses in HBM, strides
 * count elements. Q, O and lse are addressed by virtual row (hbm.ts); K is Nk × d and V is
 * Nk × dv with the given row strides, indexed by absolute key. Optional parts are off when their
 * pointer is 0 (lse, slopes, mask) or softcap is 0. ALiBi adds −slope·|i + alibiOffset − j|. The
 * mask element of (row, key) is at maskPtr + (offset of virtual row `row`, hbm.ts) + key·maskColStride, of type maskKind.
 * With `partial` (a split of split-KV) O and lse are counted as partial results, not outputs.
 * Q, K, V and O hold elements of qKind, kKind, vKind and oKind (half.ts: f32, f16 or bf16), widened
 * into the arena's f32 by the tile copies (a thin block's K and V with copyThin: in registers,
 * stream.ts) and O rounded on its way out; partial results and lse are always f32 (a split's O
 * ignores oKind). copyThin: how a thin block reads K and V (stream.ts; same bits either way).
 * The caller guarantees 1 ≤ d, dv ≤ HEAD_DIM_MAX and blockSizes(sramBytes, d, dv, masked) ≠ 0.
 */
export function forward(
  sm: usize,
  qPtr: usize,
  qRowStride: i32,
  qHeadStride: i32,
  kPtr: usize,
  kRowStride: i32,
  vPtr: usize,
  vRowStride: i32,
  oPtr: usize,
  oRowStride: i32,
  oHeadStride: i32,
  lsePtr: usize,
  lseRowStride: i32,
  lseHeadStride: i32,
  Nq: i32,
  g: i32,
  keyBegin: i32,
  keyEnd: i32,
  d: i32,
  dv: i32,
  scale: f32,
  softcap: f32,
  visOffset: i32,
  windowLeft: i32,
  windowRight: i32,
  slopesPtr: usize,
  alibiOffset: i32,
  maskPtr: usize,
  maskKind: i32,
  maskRowStride: i32,
  maskHeadStride: i32,
  maskColStride: i32,
  sramBytes: i32,
  partial: bool,
  qKind: i32,
  kKind: i32,
  vKind: i32,
  oKind: i32,
  copyThin: bool,
): void {
  const masked = maskKind != MASK_NONE;
  const blocks = blockSizes(sramBytes, d, dv, masked);
  if (blocks == 0) unreachable(); // an arena the host should have rejected: trap rather than loop forever
  const Br = blocks >>> 16;
  const Bc = blocks & 0xffff;
  const dvP = paddedDv(dv);
  const arena = arenaOf(sm);
  // Arena tiles keep the paper's names (Qiᵀ, Kj, Vj, S, O, m, l); all are byte addresses in the
  // arena, sized for Br × Bc by arena.ts, so every index below Br rows / Bc keys stays inside.
  const QiT = addr(arena, regionOffset(REGION_QIT, Br, Bc, d, dv, masked));
  const Kj = addr(arena, regionOffset(REGION_KJ, Br, Bc, d, dv, masked));
  const Vj = addr(arena, regionOffset(REGION_VJ, Br, Bc, d, dv, masked));
  const S = addr(arena, regionOffset(REGION_S, Br, Bc, d, dv, masked));
  const maskTile = addr(arena, regionOffset(REGION_MASK, Br, Bc, d, dv, masked));
  const O = addr(arena, regionOffset(REGION_O, Br, Bc, d, dv, masked));
  const m = addr(arena, regionOffset(REGION_M, Br, Bc, d, dv, masked));
  const l = addr(arena, regionOffset(REGION_L, Br, Bc, d, dv, masked));
  const alphas = addr(arena, regionOffset(REGION_ALPHA, Br, Bc, d, dv, masked));
  const slopes = addr(arena, regionOffset(REGION_SLOPE, Br, Bc, d, dv, masked));
  const rowFirst = addr(arena, regionOffset(REGION_ROW_FIRST, Br, Bc, d, dv, masked)); // i32 per row
  const rowEnd = addr(arena, regionOffset(REGION_ROW_END, Br, Bc, d, dv, masked)); // i32 per row
  const rowPos = addr(arena, regionOffset(REGION_ROW_POS, Br, Bc, d, dv, masked)); // i32 per row
  const transformed = softcap != 0 || slopesPtr != 0 || masked;
  countMax(sm, ARENA_PEAK, regionOffset(REGION_END, Br, Bc, d, dv, masked) << 2);
  const negInf = f32x4.splat(-Infinity);
  const zero = f32x4.splat(0);
  const softcapV = f32x4.splat(softcap);
  const rows = Nq * g;
  // Tile and flop counts stay in locals and reach the counters once per call: no memory traffic
  // for counting inside the tile loops.
  let tilesComputed: u64 = 0;
  let tilesSkipped: u64 = 0;
  let flops: u64 = 0;

  for (let i0 = 0; i0 < rows; i0 += Br) {
    const rowsHere = imin(Br, rows - i0);
    const ldq = roundUp(rowsHere, BR_STEP); // queries in QiT's panels, and the mask tile's row stride
    // A thin block (stream.ts) keeps Q row-major (thinRows × d, padding rows zero) and reads the K
    // and V rows it sees; any other stages Qiᵀ and copies whole K and V tiles.
    const thin = isThin(rowsHere, d, dv);
    const thinRows = thinRowsOf(rowsHere); // the rows a thin block computes: 1, 2 or 4
    if (thin) loadVirtualRows(sm, QiT, d, thinRows, d, qPtr, qRowStride, qHeadStride, g, i0, rowsHere, d, TENSOR_Q, qKind);
    else {
      // Qiᵀ in panels of BR_STEP queries: panel p holds rows 8p..8p+7 as d × 8 (k-major), so a
      // score strip reads its operand contiguously (scoresStrip); rows past rowsHere are zero.
      for (let p = 0; p < ldq; p += BR_STEP) {
        const panel = QiT + (<usize>(p * d) << 2);
        const panelRows = imin(BR_STEP, rowsHere - p);
        loadRowsTransposed(sm, panel, BR_STEP, qPtr, qRowStride, qHeadStride, g, i0 + p, panelRows, d, TENSOR_Q, qKind);
      }
    }
    if (slopesPtr != 0) loadRowsTransposed(sm, slopes, ldq, slopesPtr, 0, 1, g, i0, rowsHere, 1, TENSOR_SLOPES);
    memory.fill(O, 0, <usize>(roundUp(rowsHere, 4) * dvP) << 2);
    for (let r = 0; r < rowsHere; r += 4) {
      v128.store(addr(m, r), negInf);
      v128.store(addr(l, r), zero);
    }
    // Each row's visible keys [first, end) and ALiBi position, once per query block
    // (roundUp(rowsHere, 4) ≤ Br, a multiple of 8: inside the three regions).
    rowRanges(rowFirst, rowEnd, rowPos, i0, rowsHere, g, visOffset, windowLeft, windowRight, alibiOffset, keyBegin, keyEnd);

    // Key blocks that some row of this block can see; the block grid starts at keyBegin.
    const jFirst = i32At(rowFirst, 0);
    const jEnd = i32At(rowEnd, rowsHere - 1);
    const jStart = jFirst < jEnd ? keyBegin + (jFirst - keyBegin) / Bc * Bc : jEnd; // no visible key: no block
    for (let j0 = jStart; j0 < jEnd; j0 += Bc) {
      const cols = imin(Bc, keyEnd - j0);
      if (masked) {
        const open = loadMaskTile(
          sm, maskTile, ldq, maskPtr, maskKind, maskRowStride, maskHeadStride, maskColStride, g, i0, rowsHere, j0, cols, true,
        );
        if (!open) {
          tilesSkipped++;
          continue;
        }
      }
      tilesComputed++;
      const cols4 = roundUp(cols, 4);
      const kTile = kPtr + (<usize>(j0 * kRowStride) << elementShift(kKind));
      const vTile = vPtr + (<usize>(j0 * vRowStride) << elementShift(vKind));
      if (thin) {
        // Sᵀ over the keys some row sees, [cBegin, cEnd): f16 K widened into Kj (with copyThin
        // through a copy as stored), f32 and bf16 K copied as stored with copyThin, else read from
        // HBM (stream.ts says why).
        const cBegin = imax(0, i32At(rowFirst, 0) - j0);
        const cEnd = imin(cols, imax(0, i32At(rowEnd, rowsHere - 1) - j0));
        if (cBegin < cEnd) {
          const kRows = kTile + (<usize>(cBegin * kRowStride) << elementShift(kKind));
          const rowsSeen = cEnd - cBegin;
          if (kKind == ELEMENT_F16) {
            if (copyThin) loadRowsWidened(sm, addr(Kj, cBegin * d), kRows, kRowStride, rowsSeen, d, TENSOR_K, kKind);
            else loadRows(sm, addr(Kj, cBegin * d), d, rowsSeen, d, kRows, kRowStride, rowsSeen, d, TENSOR_K, kKind);
            scoresThin(S, 4, QiT, d, Kj, <usize>d << 2, ELEMENT_F32, thinRows, cBegin, cEnd, scale);
          } else if (copyThin) {
            // (at most Bc rows of d elements of at most 4 bytes: inside Kj)
            const kRowBytes = <usize>d << elementShift(kKind);
            loadRowsAsStored(sm, Kj + <usize>cBegin * kRowBytes, kRows, kRowStride, rowsSeen, d, TENSOR_K, kKind);
            scoresThin(S, 4, QiT, d, Kj, kRowBytes, kKind, thinRows, cBegin, cEnd, scale);
          } else {
            scoresThin(S, 4, QiT, d, kTile, <usize>kRowStride << elementShift(kKind), kKind, thinRows, cBegin, cEnd, scale);
            countStreamed(sm, TENSOR_K, rowsSeen * d * elementBytes(kKind));
          }
          flops += <u64>(2 * thinRows * rowsSeen * d);
        }
      } else {
        loadRows(sm, Kj, d, cols4, d, kTile, kRowStride, cols, d, TENSOR_K, kKind);
        loadRows(sm, Vj, dvP, cols, dvP, vTile, vRowStride, cols, dv, TENSOR_V, vKind);
      }

      // S = scale·Qi·Kjᵀ, per strip of 8 rows over the columns the strip can see (a last strip of
      // at most 4 rows, such as a decode step's, computes only those 4). Each strip also leaves its
      // rows' running max of the scores it stored in `alphas` (free until alpha is written below);
      // the softmax takes it in place of its own max pass where the strip saw the whole block.
      const stripsEnd = thin ? 0 : rowsHere; // a thin block's scores are done
      for (let r = 0; r < stripsEnd; r += BR_STEP) {
        const last = imin(r + BR_STEP, rowsHere) - 1;
        const cBegin = imax(0, i32At(rowFirst, r) - j0) & ~3;
        const cEnd = imin(cols4, roundUp(imax(0, i32At(rowEnd, last) - j0), 4));
        if (cBegin < cEnd) {
          const stripRows = last - r < 4 ? 4 : BR_STEP;
          const panel = QiT + (<usize>(r * d) << 2); // strip r's panel of Qiᵀ (r is a multiple of BR_STEP)
          const sPanel = addr(S, r * Bc); // Sᵀ's panel of queries r..r+3; the next holds r+4..r+7
          const maxPtr = addr(alphas, r);
          if (stripRows == 4) scoresStrip4(sPanel, 4, panel, BR_STEP, Kj, d, cBegin, cEnd, scale, maxPtr);
          else scoresStripMax(sPanel, 4, 4 * Bc, panel, BR_STEP, Kj, d, cBegin, cEnd, scale, maxPtr);
          flops += <u64>(2 * stripRows * (cEnd - cBegin) * d);
        }
      }

      // Online softmax and O = alpha·O + P·Vj, per group of 4 rows.
      for (let r = 0; r < rowsHere; r += 4) {
        const last = imin(r + 4, rowsHere) - 1;
        // Columns some row of the group sees: [gBegin, gEnd); every row sees [allBegin, allEnd).
        const gBegin = imax(0, i32At(rowFirst, r) - j0);
        const gEnd = imin(cols, imax(0, i32At(rowEnd, last) - j0));
        if (gBegin >= gEnd) continue; // no row of the group sees this block: m, l, O unchanged
        const allBegin = imax(0, i32At(rowFirst, last) - j0);
        const allEnd = imin(cols, imax(0, i32At(rowEnd, r) - j0));
        const laneFirst = v128.load(addr(rowFirst, r));
        const laneEnd = v128.load(addr(rowEnd, r));
        const alibiPos = v128.load(addr(rowPos, r));
        const slope = v128.load(addr(slopes, r));
        const mOld = v128.load(addr(m, r));
        // The group's scores: Sᵀ's panel of queries r..r+3, 4 contiguous floats per key.
        const sPanel = addr(S, r * Bc);
        const keyBytes: usize = 16;
        const sBegin = addr(sPanel, gBegin * 4);
        const sEnd = addr(sPanel, gEnd * 4);

        // S ← softcap·tanh(S/softcap) − slope·|i + alibiOffset − j| + mask, −∞ where not visible;
        // mNew = max(m, rowmax(S))
        let rowMax = negInf;
        if (!transformed && !thin && stripSeesBlock(rowFirst, rowEnd, r & ~(BR_STEP - 1), rowsHere, j0, cols)) {
          // The group's strip computed every column of the block and kept the max of what it stored.
          rowMax = v128.load(addr(alphas, r));
        } else if (!transformed && allBegin <= gBegin && gEnd <= allEnd) {
          // Every row of the group sees every column in range and nothing transforms the scores.
          for (let s = sBegin; s < sEnd; s += keyBytes) rowMax = f32x4.pmax(rowMax, v128.load(s));
        } else {
          let c = gBegin;
          for (let s = sBegin; s < sEnd; s += keyBytes) {
            let x = v128.load(s);
            if (softcap != 0) x = f32x4.mul(softcapV, tanh(f32x4.div(x, softcapV)));
            x = addBiases(x, slopesPtr != 0, slope, alibiPos, i32x4.splat(j0 + c), masked ? addr(maskTile, c * ldq + r) : 0);
            if (c < allBegin || c >= allEnd) {
              const key = i32x4.splat(j0 + c);
              const visible = v128.and(i32x4.ge_s(key, laneFirst), i32x4.lt_s(key, laneEnd));
              x = v128.bitselect(x, negInf, visible);
            }
            v128.store(s, x);
            rowMax = f32x4.pmax(rowMax, x);
            c++;
          }
        }
        const mNew = f32x4.pmax(mOld, rowMax);
        // A row that has seen no finite score keeps m = −∞; subtract 0 instead so exp gives 0, not NaN.
        const mUse = v128.bitselect(zero, mNew, f32x4.eq(mNew, negInf));

        // P = exp(S − mNew) (as 2^((S − mNew)·log2 e), exp.ts); rowsum(P)
        let rowSum = zero;
        for (let s = sBegin; s < sEnd; s += keyBytes) {
          const p = expBase2(f32x4.sub(v128.load(s), mUse));
          v128.store(s, p);
          rowSum = f32x4.add(rowSum, p);
        }

        // alpha = exp(m − mNew); l = alpha·l + rowsum(P); m = mNew
        const alpha = expBase2(f32x4.sub(mOld, mUse));
        v128.store(addr(l, r), madd(alpha, v128.load(addr(l, r)), rowSum));
        v128.store(addr(m, r), mNew);
        v128.store(addr(alphas, r), alpha);

        // O = alpha·O + P·Vj (a thin block copies only the rows of Vj it sees, [gBegin, gEnd))
        if (thin) {
          const vRows = vTile + (<usize>(gBegin * vRowStride) << elementShift(vKind));
          const rowsSeen = gEnd - gBegin;
          if (copyThin && vKind != ELEMENT_F16) {
            // V rows as stored (dv = dvP for a thin block), widened in the value product's registers
            const vRowBytes = <usize>dvP << elementShift(vKind);
            loadRowsAsStored(sm, Vj + <usize>gBegin * vRowBytes, vRows, vRowStride, rowsSeen, dv, TENSOR_V, vKind);
            accumulateFewValues(O, dvP, sPanel, 4, Vj, thinRows, gBegin, gEnd, addr(alphas, r), vKind);
          } else {
            // V rows widened into Vj (f16 with copyThin through a copy as stored: stream.ts)
            const vRowsF32 = addr(Vj, gBegin * dvP);
            if (copyThin) loadRowsWidened(sm, vRowsF32, vRows, vRowStride, rowsSeen, dv, TENSOR_V, vKind);
            else loadRows(sm, vRowsF32, dvP, rowsSeen, dvP, vRows, vRowStride, rowsSeen, dv, TENSOR_V, vKind);
            accumulateFewValues(O, dvP, sPanel, 4, Vj, thinRows, gBegin, gEnd, addr(alphas, r), ELEMENT_F32);
          }
        } else {
          accumulateValues(O, dvP, sPanel, 4, Vj, r, gBegin, gEnd, addr(alphas, r));
        }
        flops += <u64>(2 * (thin ? thinRows : 4) * (gEnd - gBegin) * dvP);
      }
    }

    // epilogue: O /= l; lse = m + ln(l). A row that saw no key gets O = 0 and lse = −∞.
    // (r < rowsHere ≤ Br and c < dvP: inside the O, l, m and alpha regions.)
    for (let r = 0; r < rowsHere; r++) {
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
    storeRows(
      sm, oPtr, oRowStride, oHeadStride, g, i0, O, dvP, rowsHere, dv, partial ? TENSOR_PARTIAL : TENSOR_O,
      partial ? ELEMENT_F32 : oKind,
    );
    if (lsePtr != 0) {
      storeRows(sm, lsePtr, lseRowStride, lseHeadStride, g, i0, alphas, 1, rowsHere, 1, partial ? TENSOR_PARTIAL : TENSOR_LSE);
    }
  }
  countAdd(sm, TILES_COMPUTED, tilesComputed);
  countAdd(sm, TILES_SKIPPED_MASK, tilesSkipped);
  countAdd(sm, FLOPS, flops);
}

/**
 * Whether the strip of query rows starting at r8 (a multiple of BR_STEP) computed its scores over
 * the whole key block [j0, j0 + cols): cols a multiple of 4 (no padding keys in its columns) and
 * every row of the strip seeing every key (rows' first visible keys and ends are nondecreasing, so
 * the strip's last row has the latest first key and its first row the earliest end). Its strip then
 * ran over exactly the columns [0, cols) that each of its groups' softmax covers.
 */
// @ts-ignore: decorator
@inline function stripSeesBlock(rowFirst: usize, rowEnd: usize, r8: i32, rowsHere: i32, j0: i32, cols: i32): bool {
  const last = imin(r8 + BR_STEP, rowsHere) - 1;
  return (cols & 3) == 0 && i32At(rowFirst, last) <= j0 && i32At(rowEnd, r8) >= j0 + cols;
}
