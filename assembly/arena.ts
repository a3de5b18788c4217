// The SRAM arena: a fixed region of linear memory where all attention arithmetic happens.
//
// Memory map (byte addresses):
//   [0, __heap_base)                   the module's static data (none today)
//   [smPtr() + t·SM_BYTES, +SM_BYTES)  streaming multiprocessor t, for t = 0 .. T − 1:
//       [sm, +COUNTERS_BYTES)          its HBM traffic counters (hbm.ts)
//       [arenaPtr(sm), +ARENA_MAX)     its arena; a call uses the first `sramBytes`
//   [smPtr() + T·SM_BYTES, memory end) HBM: tensors placed by the host
// The single-threaded build uses one SM (T = 1) and hbmPtr(); a pool of T Workers on one shared
// memory gives Worker t the SM at smPtr() + t·SM_BYTES. Every kernel takes its SM's address, so
// Workers never share an arena or a counter.
//
// Arena layout of one call, in floats from arenaPtr(sm), regions in this order, each a multiple of
// 4 floats so that every region starts 16-byte aligned:
//   QiT    d × Br      query tile, transposed and packed in panels of 8 queries (d × 8 each, so a
//                      score strip reads its operand contiguously): the score GEMM runs its vector
//                      lanes along queries
//   Kj     Bc × d      key tile (rows past the valid keys rounded up to 4 are zero)
//   Vj     Bc × dvP    value tile, rows padded with zeros to dvP = roundUp(dv, 8)
//   S      Bc × Br     scores, transposed, in panels of 4 queries (Bc × 4 each: query r of key c
//                      at (r/4)·4·Bc + 4c + r mod 4), so the softmax and the value product read a
//                      group of 4 queries contiguously; P overwrites S in place
//   Mask   Bc × Br     the mask tile, transposed (query r of key c at c·ldq + r; only when the call
//                      has a mask)
//   O      Br × dvP    output accumulator
//   m, l, alpha        Br each: running max, running sum, this tile's rescale factor
//   slope  Br          ALiBi slope of each query row
//   first, end, pos    Br i32 each: each row's visible keys [first, end) and its ALiBi position
// A tile with fewer rows than Br uses row strides rounded up to 8 instead of Br, never more.

import { COUNTERS_BYTES } from "./hbm";

/** Largest arena a call may ask for. */
export const ARENA_MAX_BYTES: i32 = 8 << 20;
/** Largest head dimension (d and dv). */
export const HEAD_DIM_MAX: i32 = 256;
/** Br is a multiple of this (two f32x4 vectors of queries in the score GEMM). */
export const BR_STEP: i32 = 8;
/** Bc is a multiple of this (four keys per register block of the score GEMM). */
export const BC_STEP: i32 = 4;
/** Preferred Bc: the largest Bc ≤ this with Br ≥ Bc is chosen. */
export const BC_TARGET: i32 = 64;
/** Br is packed in the upper 16 bits of blockSizes(), kept below the sign bit. */
const BR_MAX: i32 = 16384;

export const REGION_QIT: i32 = 0;
export const REGION_KJ: i32 = 1;
export const REGION_VJ: i32 = 2;
export const REGION_S: i32 = 3;
export const REGION_MASK: i32 = 4;
export const REGION_O: i32 = 5;
export const REGION_M: i32 = 6;
export const REGION_L: i32 = 7;
export const REGION_ALPHA: i32 = 8;
export const REGION_SLOPE: i32 = 9;
export const REGION_ROW_FIRST: i32 = 10;
export const REGION_ROW_END: i32 = 11;
export const REGION_ROW_POS: i32 = 12;
export const REGION_END: i32 = 13;

/** Counters rounded up to a 64-byte line, so the arena starts on one. */
const COUNTERS_SPAN: i32 = (COUNTERS_BYTES + 63) & ~63;
/** Bytes of one SM: its counters, then the largest arena. */
export const SM_BYTES: i32 = COUNTERS_SPAN + ARENA_MAX_BYTES;

/** Byte address of the first SM (the first 64-byte line after the module's static data). */
export function smPtr(): usize {
  return (__heap_base + 63) & ~(<usize>63);
}

/** Bytes of one SM, so the host can place SM t at smPtr() + t·smBytes(). */
export function smBytes(): i32 {
  return SM_BYTES;
}

/** Byte address of the arena of the SM at `sm`. */
// @ts-ignore: decorator
@inline export function arenaOf(sm: usize): usize {
  return sm + <usize>COUNTERS_SPAN;
}

/** Byte address of the arena of the SM at `sm` (for the host). */
export function arenaPtr(sm: usize): usize {
  return arenaOf(sm);
}

/** Byte address of the first byte the host may use for tensors with one SM. */
export function hbmPtr(): usize {
  return smPtr() + <usize>SM_BYTES;
}

/** Largest arena a call may ask for, in bytes. */
export function arenaMaxBytes(): i32 {
  return ARENA_MAX_BYTES;
}

/** Largest supported head dimension. */
export function headDimMax(): i32 {
  return HEAD_DIM_MAX;
}

// @ts-ignore: decorator
@inline export function roundUp(x: i32, step: i32): i32 {
  return (x + step - 1) / step * step;
}

/** dv padded to the value GEMM's width of two f32x4 vectors. */
// @ts-ignore: decorator
@inline export function paddedDv(dv: i32): i32 {
  return roundUp(dv, 8);
}

function regionFloats(region: i32, Br: i32, Bc: i32, d: i32, dv: i32, masked: bool): i32 {
  switch (region) {
    case REGION_QIT: return d * Br;
    case REGION_KJ: return roundUp(Bc * d, 4);
    case REGION_VJ: return Bc * paddedDv(dv);
    case REGION_S: return Bc * Br;
    case REGION_MASK: return masked ? Bc * Br : 0;
    case REGION_O: return Br * paddedDv(dv);
    default: return Br; // m, l, alpha, slope, first, end, pos
  }
}

/**
 * Offset in floats of `region` from the arena start, for blocks Br × Bc, head dims d, dv, with or
 * without a mask tile.
 */
export function regionOffset(region: i32, Br: i32, Bc: i32, d: i32, dv: i32, masked: bool): i32 {
  let offset = 0;
  for (let r = 0; r < region; r++) offset += regionFloats(r, Br, Bc, d, dv, masked);
  return offset;
}

/** Exact arena bytes used by blocks Br × Bc with head dims d, dv, with or without a mask tile. */
export function arenaBytes(Br: i32, Bc: i32, d: i32, dv: i32, masked: bool): i32 {
  return regionOffset(REGION_END, Br, Bc, d, dv, masked) << 2;
}

/** Largest multiple of BR_STEP whose footprint with this Bc fits in sramBytes (0 if none). */
function largestBr(sramBytes: i32, Bc: i32, d: i32, dv: i32, masked: bool): i32 {
  // The footprint is increasing in Br: binary search over multiples of BR_STEP.
  let lo = 0;
  let hi = BR_MAX / BR_STEP;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (arenaBytes(mid * BR_STEP, Bc, d, dv, masked) <= sramBytes) lo = mid;
    else hi = mid - 1;
  }
  return lo * BR_STEP;
}

/**
 * Block sizes for an arena of sramBytes (with room for a mask tile when `masked`): returns
 * (Br << 16) | Bc, or 0 if even the smallest
 * blocks (BR_STEP × BC_STEP) do not fit.
 *
 * In FlashAttention-2 loop order K and V are read once per query block, so HBM traffic falls as
 * Br grows: Bc is the largest multiple of BC_STEP up to BC_TARGET that still leaves Br ≥ Bc, and
 * Br takes all the space that is left. The footprint is computed exactly (arenaBytes), never
 * estimated, so a call's working set never exceeds sramBytes.
 */
export function blockSizes(sramBytes: i32, d: i32, dv: i32, masked: bool): i32 {
  for (let Bc = BC_TARGET; Bc >= BC_STEP; Bc -= BC_STEP) {
    const Br = largestBr(sramBytes, Bc, d, dv, masked);
    if (Br >= Bc) return (Br << 16) | Bc;
  }
  const Br = largestBr(sramBytes, BC_STEP, d, dv, masked);
  return Br >= BR_STEP ? (Br << 16) | BC_STEP : 0;
}
