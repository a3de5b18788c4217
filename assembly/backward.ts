// Exact attention backward with recomputation (FlashAttention, Dao et al. 2022, Algorithm 4;
// FlashAttention-2, Dao 2024, Algorithm 2), in an order that needs no atomics and gives the same
// bits however the work is cut.
//
// Inputs per K/V head and its g query heads (virtual rows, as in forward.ts and hbm.ts): Q, K, V,
// dO, lse (from the forward) and D = rowsum(dO ∘ O) (backwardPrep, run first). For every tile:
//   S = scale·Qi·Kjᵀ, transformed as the forward does (softcap, ALiBi, mask, −∞ where not visible)
//   P = exp(S − lse)                                (0 where not visible, and for rows with lse = −∞)
//   dP = dOi·Vjᵀ;  dS = P ∘ (dP − D), times 1 − tanh²(S_raw/softcap) with a softcap
//   dV += Pᵀ·dOi;  dK += dSᵀ·Qi;  dQ += dS·Kj;  dK (and each tile's dQ) ×= scale
// No Nq × Nk matrix exists: S, P, dP and dS live one tile at a time in the arena.
//
// Loop order and determinism. FlashAttention-2 runs key blocks outside and query blocks inside,
// keeps dK and dV in SRAM, and adds each tile's dQ into HBM with atomics, whose order (and so
// whose rounding) changes from run to run. Here the keys of a head group are cut into at most
// DQ_SEGMENTS segments of whole key blocks, a number that depends on the problem only (never on
// the Workers), and backwardDkDv runs one segment: key blocks outside, in order, the query blocks
// that see each inside, in order; dK and dV accumulate in the arena, and each tile's dQ is added
// into the segment's own partial dQ in HBM (a read-modify-write no other call touches).
// backwardDqMerge then sums a row's partials in segment order. Every output element is therefore
// a sum in a fixed order made by one call, and any number of Workers gives the same bits, at the
// cost of the partials' traffic and memory (DQ_SEGMENTS copies of dQ) instead of atomics.
//
// Tiles: square blocks, Br = Bc = B (backwardBlockSize). Per key block the kernel loads Kj (for
// dQ += dS·Kj) and Vjᵀ, and builds Kjᵀ from Kj in the arena; S, P, dP and dS have a row per query,
// lanes along keys, so every product reads the query tiles row by row and all five reuse the
// forward's register-blocked routines (simd.ts).
// Arena layout, in floats from arenaOf(sm), dP = roundUp(d, 8), dvP = roundUp(dv, 8):
//   Q     B × dP    Qi
//   dO    B × dvP   dOi
//   K     B × dP    Kj (rows past the block's keys zero)
//   KT    dP × B    Kjᵀ
//   VT    dvP × B   Vjᵀ
//   S     B × B     scores, then P
//   dP    B × B     dP, then dS
//   Mask  B × B     the mask tile, laid out like S (only when the call has a mask)
//   AccK  B × dP    dK accumulator (backwardPrep: O rows, over AccK, AccV and dQ)
//   AccV  B × dvP   dV accumulator
//   dQ    B × dP    this tile's dQ rows (backwardDqMerge: one segment's rows)
//   lse, D, slope  B each;  first, end, pos  B i32 each;  ones  4 (the unit rescale of accumulateValues)

import { paddedDv, roundUp, arenaOf, ARENA_MAX_BYTES } from "./arena";
import { expNonPositive } from "./exp";
import {
  ARENA_PEAK,
  FLOPS,
  MASK_NONE,
  TENSOR_D,
  TENSOR_DK,
  TENSOR_DOUT,
  TENSOR_DQ,
  TENSOR_DV,
  TENSOR_K,
  TENSOR_LSE,
  TENSOR_O,
  TENSOR_Q,
  TENSOR_SLOPES,
  TENSOR_V,
  TILES_COMPUTED,
  TILES_SKIPPED_MASK,
  countAdd,
  countMax,
  loadMaskTile,
  loadRows,
  loadRowsTransposed,
  loadVirtualRows,
  storeRows,
  addRows,
  TENSOR_PARTIAL,
} from "./hbm";
import { elementShift } from "./half";
import { addBiases, addr, endKey, firstKey, i32At, imax, imin, rowRanges, tanh } from "./scores";
import { accumulateValues, madd, scoresStrip } from "./simd";

/** B is a multiple of this (strips of 8 lanes in every product). */
const B_STEP: i32 = 8;
/** Largest B: past it the tiles stop fitting a core's caches and traffic barely falls. */
const B_MAX: i32 = 128;

const R_Q: i32 = 0;
const R_DO: i32 = 1;
const R_K: i32 = 2;
const R_KT: i32 = 3;
const R_VT: i32 = 4;
const R_S: i32 = 5;
const R_DP: i32 = 6;
const R_MASK: i32 = 7;
const R_ACC_K: i32 = 8;
const R_ACC_V: i32 = 9;
const R_DQ: i32 = 10;
const R_LSE: i32 = 11;
const R_D: i32 = 12;
const R_SLOPE: i32 = 13;
const R_FIRST: i32 = 14;
const R_END: i32 = 15;
const R_POS: i32 = 16;
const R_ONES: i32 = 17;
const R_END_OF_ARENA: i32 = 18;

/** Most segments a head group's keys are cut into (backwardDkDv's partial dQ, summed by backwardDqMerge). */
export const DQ_SEGMENTS: i32 = 8;

function regionFloats(region: i32, B: i32, d: i32, dv: i32, masked: bool): i32 {
  const dP = roundUp(d, 8);
  const dvP = paddedDv(dv);
  switch (region) {
    case R_Q: case R_K: case R_KT: case R_ACC_K: case R_DQ: return B * dP;
    case R_DO: case R_VT: case R_ACC_V: return B * dvP;
    case R_S: case R_DP: return B * B;
    case R_MASK: return masked ? B * B : 0;
    case R_ONES: return 4;
    default: return B; // lse, D, slope, first, end, pos
  }
}

function regionAt(region: i32, B: i32, d: i32, dv: i32, masked: bool): i32 {
  let offset = 0;
  for (let r = 0; r < region; r++) offset += regionFloats(r, B, d, dv, masked);
  return offset;
}

/** Exact arena bytes the backward kernels use with blocks B × B and head dims d, dv. */
export function backwardArenaBytes(B: i32, d: i32, dv: i32, masked: bool): i32 {
  return regionAt(R_END_OF_ARENA, B, d, dv, masked) << 2;
}

/**
 * Block size B (Br = Bc = B) of the backward for an arena of sramBytes: the largest multiple of 8
 * up to 128 whose exact footprint fits, or 0 if not even 8 does.
 */
export function backwardBlockSize(sramBytes: i32, d: i32, dv: i32, masked: bool): i32 {
  if (sramBytes > ARENA_MAX_BYTES) return 0;
  for (let B = B_MAX; B >= B_STEP; B -= B_STEP) {
    if (backwardArenaBytes(B, d, dv, masked) <= sramBytes) return B;
  }
  return 0;
}

// Region addresses of the current call (wasm globals: per instance, so per Worker; no allocation).
let tQ: usize = 0;
let tDO: usize = 0;
let tK: usize = 0;
let tKT: usize = 0;
let tVT: usize = 0;
let tS: usize = 0;
let tDP: usize = 0;
let tMask: usize = 0;
let tAccK: usize = 0;
let tAccV: usize = 0;
let tDQ: usize = 0;
let tLse: usize = 0;
let tD: usize = 0;
let tSlope: usize = 0;
let tFirst: usize = 0;
let tEnd: usize = 0;
let tPos: usize = 0;
let tOnes: usize = 0;

function layOut(sm: usize, B: i32, d: i32, dv: i32, masked: bool): void {
  const arena = arenaOf(sm);
  tQ = addr(arena, regionAt(R_Q, B, d, dv, masked));
  tDO = addr(arena, regionAt(R_DO, B, d, dv, masked));
  tK = addr(arena, regionAt(R_K, B, d, dv, masked));
  tKT = addr(arena, regionAt(R_KT, B, d, dv, masked));
  tVT = addr(arena, regionAt(R_VT, B, d, dv, masked));
  tS = addr(arena, regionAt(R_S, B, d, dv, masked));
  tDP = addr(arena, regionAt(R_DP, B, d, dv, masked));
  tMask = addr(arena, regionAt(R_MASK, B, d, dv, masked));
  tAccK = addr(arena, regionAt(R_ACC_K, B, d, dv, masked));
  tAccV = addr(arena, regionAt(R_ACC_V, B, d, dv, masked));
  tDQ = addr(arena, regionAt(R_DQ, B, d, dv, masked));
  tLse = addr(arena, regionAt(R_LSE, B, d, dv, masked));
  tD = addr(arena, regionAt(R_D, B, d, dv, masked));
  tSlope = addr(arena, regionAt(R_SLOPE, B, d, dv, masked));
  tFirst = addr(arena, regionAt(R_FIRST, B, d, dv, masked));
  tEnd = addr(arena, regionAt(R_END, B, d, dv, masked));
  tPos = addr(arena, regionAt(R_POS, B, d, dv, masked));
  tOnes = addr(arena, regionAt(R_ONES, B, d, dv, masked));
  v128.store(tOnes, f32x4.splat(1));
  countMax(sm, ARENA_PEAK, backwardArenaBytes(B, d, dv, masked));
}

/** B for a call, trapping on an arena the host should have rejected. */
function blockOf(sramBytes: i32, d: i32, dv: i32, masked: bool): i32 {
  const B = backwardBlockSize(sramBytes, d, dv, masked);
  if (B == 0) unreachable();
  return B;
}

/** lse with −∞ (a row that saw no key) replaced by +∞, so that exp(S − lse) is 0 there, not NaN. */
// @ts-ignore: decorator
@inline function lseForExp(lse: v128): v128 {
  return v128.bitselect(f32x4.splat(Infinity), lse, f32x4.eq(lse, f32x4.splat(-Infinity)));
}

/**
 * D = rowsum(dO ∘ O) for `rows` virtual rows (Nq·g), on the SM at `sm`: O and dO (elements of
 * oKind and dOKind, half.ts) read by virtual row, D (f32) written with the lse's strides. Runs
 * before backwardDkDv.
 */
export function backwardPrep(
  sm: usize,
  oPtr: usize, oRowStride: i32, oHeadStride: i32,
  dOPtr: usize, dORowStride: i32, dOHeadStride: i32,
  dPtr: usize, dRowStride: i32, dHeadStride: i32,
  rows: i32, g: i32, d: i32, dv: i32, masked: bool, sramBytes: i32,
  oKind: i32, dOKind: i32,
): void {
  const B = blockOf(sramBytes, d, dv, masked);
  layOut(sm, B, d, dv, masked);
  const dvP = paddedDv(dv);
  const O = tAccK; // AccK, AccV and dQ together hold B × dvP (B·dP + B·dvP + B·dP ≥ B·dvP)
  for (let i0 = 0; i0 < rows; i0 += B) {
    const rowsHere = imin(B, rows - i0);
    loadVirtualRows(sm, O, dvP, rowsHere, dvP, oPtr, oRowStride, oHeadStride, g, i0, rowsHere, dv, TENSOR_O, oKind);
    loadVirtualRows(
      sm, tDO, dvP, rowsHere, dvP, dOPtr, dORowStride, dOHeadStride, g, i0, rowsHere, dv, TENSOR_DOUT, dOKind,
    );
    for (let r = 0; r < rowsHere; r++) {
      let sum = f32x4.splat(0);
      for (let c = 0; c < dvP; c += 4) {
        sum = madd(v128.load(addr(O, r * dvP + c)), v128.load(addr(tDO, r * dvP + c)), sum);
      }
      const total = (f32x4.extract_lane(sum, 0) + f32x4.extract_lane(sum, 1)) +
        (f32x4.extract_lane(sum, 2) + f32x4.extract_lane(sum, 3));
      store<f32>(addr(tD, r), total);
    }
    storeRows(sm, dPtr, dRowStride, dHeadStride, g, i0, tD, 1, rowsHere, 1, TENSOR_D);
  }
}

/**
 * One segment of a head group's backward: dK and dV of keys [keyBegin, keyEnd) (whole blocks of B
 * from the sequence's first key, the last one possibly short) of one K/V head, and their share of
 * dQ, over all Nq·g virtual rows of its query heads, on the SM at `sm`: key blocks outside, the
 * query blocks that see them inside, in increasing order, so the GQA sum over the group's heads is
 * part of that fixed order. Each tile's dQ rows are added to the segment's partial dQ at dqPtr
 * (virtual rows, zero before the first call; no other call writes it). Pointers are byte
 * addresses in HBM, strides count elements; Q, dO, lse, D and the partial dQ are addressed by
 * virtual row (D with the lse's strides), K, V, dK and dV by absolute key. Q, K, V and dO hold
 * elements of qKind, kKind, vKind and dOKind, dK and dV are written as dkKind and dvKind (half.ts);
 * lse, D and the partial dQ are f32. Visibility, ALiBi, softcap and the mask as forward.ts.
 */
export function backwardDkDv(
  sm: usize,
  qPtr: usize, qRowStride: i32, qHeadStride: i32,
  kPtr: usize, kRowStride: i32,
  vPtr: usize, vRowStride: i32,
  dOPtr: usize, dORowStride: i32, dOHeadStride: i32,
  lsePtr: usize, dPtr: usize, lseRowStride: i32, lseHeadStride: i32,
  dqPtr: usize, dqRowStride: i32, dqHeadStride: i32,
  dkPtr: usize, dkRowStride: i32, dvPtr: usize, dvRowStride: i32,
  Nq: i32, g: i32, keyBegin: i32, keyEnd: i32, d: i32, dv: i32,
  scale: f32, softcap: f32, visOffset: i32, windowLeft: i32, windowRight: i32,
  slopesPtr: usize, alibiOffset: i32,
  maskPtr: usize, maskKind: i32, maskRowStride: i32, maskHeadStride: i32, maskColStride: i32,
  sramBytes: i32,
  qKind: i32, kKind: i32, vKind: i32, dOKind: i32, dkKind: i32, dvKind: i32,
): void {
  const masked = maskKind != MASK_NONE;
  const B = blockOf(sramBytes, d, dv, masked);
  layOut(sm, B, d, dv, masked);
  const dP = roundUp(d, 8);
  const dvP = paddedDv(dv);
  const negInf = f32x4.splat(-Infinity);
  const zero = f32x4.splat(0);
  const one = f32x4.splat(1);
  const softcapV = f32x4.splat(softcap);
  const lanes = i32x4(0, 1, 2, 3);
  const rows = Nq * g;
  let tilesComputed: u64 = 0;
  let tilesSkipped: u64 = 0;
  let flops: u64 = 0;

  for (let j0 = keyBegin; j0 < keyEnd; j0 += B) {
    const cols = imin(B, keyEnd - j0);
    const ldk = roundUp(cols, 8); // row stride of Kjᵀ, Vjᵀ, S, dP and the mask tile
    const cols4 = roundUp(cols, 4);
    // Kj (rows past the block's keys zero up to ldk, columns past d zero), Kjᵀ built from it in the
    // arena, and Vjᵀ (columns past the block's keys zero, rows past dv zero): once per key block.
    loadRows(sm, tK, dP, ldk, dP, kPtr + (<usize>(j0 * kRowStride) << elementShift(kKind)), kRowStride, cols, d, TENSOR_K, kKind);
    for (let c = 0; c < ldk; c++) {
      for (let k = 0; k < dP; k++) store<f32>(addr(tKT, k * ldk + c), load<f32>(addr(tK, c * dP + k)));
    }
    loadRowsTransposed(
      sm, tVT, ldk, vPtr + (<usize>(j0 * vRowStride) << elementShift(vKind)), vRowStride, 0, 1, 0, cols, dv, TENSOR_V, vKind,
    );
    memory.fill(addr(tVT, dv * ldk), 0, <usize>((dvP - dv) * ldk) << 2);
    memory.fill(tAccK, 0, <usize>(cols4 * dP) << 2);
    memory.fill(tAccV, 0, <usize>(cols4 * dvP) << 2);

    for (let i0 = 0; i0 < rows; i0 += B) {
      const rowsHere = imin(B, rows - i0);
      const rows4 = roundUp(rowsHere, 4);
      // The tile is computed iff the keys the block's rows see, [first of its first row, end of its
      // last row), are not empty and meet this key block (the forward's rule for the same tile).
      const iFirst = i0 / g;
      const iLast = (i0 + rowsHere - 1) / g;
      const jFirst = firstKey(iFirst, visOffset, windowLeft, keyBegin, keyEnd);
      const jEnd = endKey(iLast, visOffset, windowRight, keyBegin, keyEnd);
      if (jFirst >= j0 + cols) break; // later blocks see only later keys
      if (jFirst >= jEnd || jEnd <= j0) continue;
      if (masked) {
        const open = loadMaskTile(
          sm, tMask, ldk, maskPtr, maskKind, maskRowStride, maskHeadStride, maskColStride, g, i0, rowsHere, j0, cols,
          false,
        );
        if (!open) {
          tilesSkipped++;
          continue;
        }
      }
      tilesComputed++;
      loadVirtualRows(sm, tQ, dP, rows4, dP, qPtr, qRowStride, qHeadStride, g, i0, rowsHere, d, TENSOR_Q, qKind);
      loadVirtualRows(
        sm, tDO, dvP, rows4, dvP, dOPtr, dORowStride, dOHeadStride, g, i0, rowsHere, dv, TENSOR_DOUT, dOKind,
      );
      loadRowsTransposed(sm, tLse, B, lsePtr, lseRowStride, lseHeadStride, g, i0, rowsHere, 1, TENSOR_LSE);
      loadRowsTransposed(sm, tD, B, dPtr, lseRowStride, lseHeadStride, g, i0, rowsHere, 1, TENSOR_D);
      if (slopesPtr != 0) loadRowsTransposed(sm, tSlope, B, slopesPtr, 0, 1, g, i0, rowsHere, 1, TENSOR_SLOPES);
      rowRanges(tFirst, tEnd, tPos, i0, rowsHere, g, visOffset, windowLeft, windowRight, alibiOffset, keyBegin, keyEnd);

      // S = scale·Qi·Kjᵀ and dP = dOi·Vjᵀ, a row per query, per strip of 8 keys.
      for (let c = 0; c < ldk; c += 8) {
        scoresStrip(addr(tS, c), ldk, 4, addr(tKT, c), ldk, tQ, dP, 0, rows4, scale);
        scoresStrip(addr(tDP, c), ldk, 4, addr(tVT, c), ldk, tDO, dvP, 0, rows4, 1);
      }
      flops += <u64>(2 * rows4 * ldk * (dP + dvP));

      // P = exp(S − lse) and dS = P ∘ (dP − D), lanes along keys; padding rows get P = dS = 0.
      for (let r = 0; r < rows4; r++) {
        const rowAt = r * ldk;
        if (r >= rowsHere) {
          memory.fill(addr(tS, rowAt), 0, <usize>ldk << 2);
          memory.fill(addr(tDP, rowAt), 0, <usize>ldk << 2);
          continue;
        }
        const lse = lseForExp(v128.load32_splat(addr(tLse, r)));
        const D = v128.load32_splat(addr(tD, r));
        const first = i32x4.splat(i32At(tFirst, r));
        const end = i32x4.splat(i32At(tEnd, r));
        const alibiPos = i32x4.splat(i32At(tPos, r));
        const slope = v128.load32_splat(addr(tSlope, r));
        for (let c = 0; c < ldk; c += 4) {
          const at = rowAt + c;
          const key = i32x4.add(i32x4.splat(j0 + c), lanes);
          let x = v128.load(addr(tS, at));
          let capSlope = one;
          if (softcap != 0) {
            const t = tanh(f32x4.div(x, softcapV));
            x = f32x4.mul(softcapV, t);
            capSlope = f32x4.sub(one, f32x4.mul(t, t));
          }
          // (lanes past the block's keys hold no mask entry; they are not visible below)
          x = addBiases(x, slopesPtr != 0, slope, alibiPos, key, masked ? addr(tMask, at) : 0);
          const visible = v128.and(i32x4.ge_s(key, first), i32x4.lt_s(key, end));
          x = v128.bitselect(x, negInf, visible);
          const p = expNonPositive(f32x4.pmin(f32x4.sub(x, lse), zero));
          const dS = f32x4.mul(f32x4.mul(p, f32x4.sub(v128.load(addr(tDP, at)), D)), capSlope);
          v128.store(addr(tS, at), p);
          v128.store(addr(tDP, at), dS);
        }
      }

      // dV += Pᵀ·dOi and dK += dSᵀ·Qi, per group of 4 keys, summing over the rows in order.
      for (let c = 0; c < cols4; c += 4) {
        accumulateValues(tAccV, dvP, addr(tS, c), ldk, tDO, c, 0, rows4, tOnes);
        accumulateValues(tAccK, dP, addr(tDP, c), ldk, tQ, c, 0, rows4, tOnes);
      }
      flops += <u64>(2 * cols4 * rows4 * (dP + dvP));

      // dQ = scale·dS·Kj for this tile, a row per query, per strip of 8 columns; then added to the
      // segment's partial dQ in HBM.
      for (let x = 0; x < dP; x += 8) scoresStrip(addr(tDQ, x), dP, 4, addr(tK, x), dP, tDP, ldk, 0, rows4, scale);
      flops += <u64>(2 * rows4 * ldk * dP);
      addRows(sm, dqPtr, dqRowStride, dqHeadStride, g, i0, tDQ, dP, rowsHere, d, TENSOR_PARTIAL);
    }

    // epilogue: dK ×= scale
    const scaleV = f32x4.splat(scale);
    for (let at = 0; at < cols * dP; at += 4) {
      v128.store(addr(tAccK, at), f32x4.mul(v128.load(addr(tAccK, at)), scaleV));
    }
    storeRows(
      sm, dkPtr + (<usize>(j0 * dkRowStride) << elementShift(dkKind)), dkRowStride, 0, 1, 0, tAccK, dP, cols, d, TENSOR_DK,
      dkKind,
    );
    storeRows(
      sm, dvPtr + (<usize>(j0 * dvRowStride) << elementShift(dvKind)), dvRowStride, 0, 1, 0, tAccV, dvP, cols, dv, TENSOR_DV,
      dvKind,
    );
  }
  countAdd(sm, TILES_COMPUTED, tilesComputed);
  countAdd(sm, TILES_SKIPPED_MASK, tilesSkipped);
  countAdd(sm, FLOPS, flops);
}

/**
 * dQ of `rows` virtual rows of a head group from its `segments` partials (backwardDkDv's), summed
 * in segment order: segment s's row r is at partPtr + (s·segmentStride + r·d) floats. Writes dQ
 * rows by virtual row, as elements of dqKind (half.ts).
 */
export function backwardDqMerge(
  sm: usize,
  partPtr: usize, segments: i32, segmentStride: i32, rows: i32,
  dqPtr: usize, dqRowStride: i32, dqHeadStride: i32,
  g: i32, d: i32, dv: i32, masked: bool, sramBytes: i32,
  dqKind: i32,
): void {
  const B = blockOf(sramBytes, d, dv, masked);
  layOut(sm, B, d, dv, masked);
  const dP = roundUp(d, 8);
  for (let i0 = 0; i0 < rows; i0 += B) {
    const rowsHere = imin(B, rows - i0);
    // (no segment: a sequence without keys, whose dQ is 0)
    if (segments == 0) memory.fill(tAccK, 0, <usize>(rowsHere * dP) << 2);
    else loadRows(sm, tAccK, dP, rowsHere, dP, addr(partPtr, i0 * d), d, rowsHere, d, TENSOR_PARTIAL);
    for (let s = 1; s < segments; s++) {
      loadRows(sm, tDQ, dP, rowsHere, dP, addr(partPtr, s * segmentStride + i0 * d), d, rowsHere, d, TENSOR_PARTIAL);
      for (let at = 0; at < rowsHere * dP; at += 4) {
        v128.store(addr(tAccK, at), f32x4.add(v128.load(addr(tAccK, at)), v128.load(addr(tDQ, at))));
      }
    }
    storeRows(sm, dqPtr, dqRowStride, dqHeadStride, g, i0, tAccK, dP, rowsHere, d, TENSOR_DQ, dqKind);
  }
}
