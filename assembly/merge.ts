// Split-KV merge (Flash-Decoding, Dao, Haziza, Massa, Sizov 2023).
//
// Each split of the keys produced, per row, a normalised output O_s and its log-sum-exp lse_s.
// The states merge associatively, with the same online rule as the forward kernel's softmax,
// one split at a time (so the arena never holds more than one split's partial tile):
//   mNew = max(m, lse_s);  alpha = e^(m − mNew);  w = e^(lse_s − mNew)
//   l = alpha·l + w;       O = alpha·O + w·O_s;   m = mNew
// epilogue: O /= l; lse = m + ln(l). The identity is (m = −∞, l = 0, O = 0): rows no split saw
// get O = 0 and lse = −∞.

import { arenaOf, paddedDv } from "./arena";
import { ARENA_PEAK, TENSOR_LSE, TENSOR_O, TENSOR_PARTIAL, countMax, loadRows, storeRows } from "./hbm";

/** Floats of arena one merged row needs: O accumulator, one split's O_s, lse_s, m and l. */
function mergeRowFloats(dv: i32): i32 {
  return 2 * paddedDv(dv) + 3;
}

/**
 * Merges `splits` partial results of `rows` virtual rows, on the SM at `sm` (arena.ts). Partial O of split s, row r is the dv
 * floats at partPtr + (s·rows + r)·dv; its lse at partLsePtr + (s·rows + r). Results go to
 * virtual rows 0..rows−1 of O (elements of oKind, half.ts) and lse (f32), addressed as in hbm.ts,
 * lse skipped when lsePtr = 0.
 * Uses the arena for mergeRowFloats(dv) floats per row of a block, whatever the split count.
 */
export function mergeSplits(
  sm: usize,
  partPtr: usize,
  partLsePtr: usize,
  splits: i32,
  rows: i32,
  dv: i32,
  oPtr: usize,
  oRowStride: i32,
  oHeadStride: i32,
  lsePtr: usize,
  lseRowStride: i32,
  lseHeadStride: i32,
  g: i32,
  sramBytes: i32,
  oKind: i32,
): void {
  const dvP = paddedDv(dv);
  // The validated arena holds at least one forward tile, which is larger than one merged row.
  const block = min(rows, (sramBytes >> 2) / mergeRowFloats(dv));
  if (block <= 0 && rows > 0) unreachable(); // an arena the host should have rejected: trap rather than loop forever
  const arena = arenaOf(sm);
  const OPtr = arena; // block × dvP accumulator
  const OsPtr = OPtr + (<usize>(block * dvP) << 2); // block × dvP, split s's partial O
  const lsePartPtr = OsPtr + (<usize>(block * dvP) << 2); // block, split s's lse
  const mPtr = lsePartPtr + (<usize>block << 2); // block
  const lPtr = mPtr + (<usize>block << 2); // block
  countMax(sm, ARENA_PEAK, <i32>(lPtr + (<usize>block << 2) - arena));
  for (let r0 = 0; r0 < rows; r0 += block) {
    const n = min(block, rows - r0);
    memory.fill(OPtr, 0, <usize>(n * dvP) << 2);
    for (let r = 0; r < n; r++) {
      store<f32>(mPtr + (<usize>r << 2), -Infinity);
      store<f32>(lPtr + (<usize>r << 2), 0);
    }
    for (let s = 0; s < splits; s++) {
      loadRows(sm, lsePartPtr, n, 1, n, partLsePtr + (<usize>(s * rows + r0) << 2), n, 1, n, TENSOR_PARTIAL);
      loadRows(sm, OsPtr, dvP, n, dvP, partPtr + (<usize>((s * rows + r0) * dv) << 2), dv, n, dv, TENSOR_PARTIAL);
      // r < n ≤ block, so every address below stays inside this block's regions.
      for (let r = 0; r < n; r++) {
        const m = load<f32>(mPtr + (<usize>r << 2));
        const lseS = load<f32>(lsePartPtr + (<usize>r << 2));
        // mNew = max(m, lse_s); a split that saw no key (lse_s = −∞) leaves the state as it is
        const mNew = max(m, lseS);
        if (mNew == -Infinity) continue;
        const alpha: f32 = Mathf.exp(m - mNew);
        const w: f32 = Mathf.exp(lseS - mNew);
        store<f32>(lPtr + (<usize>r << 2), alpha * load<f32>(lPtr + (<usize>r << 2)) + w);
        store<f32>(mPtr + (<usize>r << 2), mNew);
        // O = alpha·O + w·O_s
        const alphaV = f32x4.splat(alpha);
        const wV = f32x4.splat(w);
        const o = OPtr + (<usize>(r * dvP) << 2);
        const os = OsPtr + (<usize>(r * dvP) << 2);
        for (let c = 0; c < dvP; c += 4) {
          const at = <usize>c << 2;
          v128.store(o + at, f32x4.add(f32x4.mul(alphaV, v128.load(o + at)), f32x4.mul(wV, v128.load(os + at))));
        }
      }
    }
    // epilogue: O /= l; lse = m + ln(l), kept in the m slots for the store
    for (let r = 0; r < n; r++) {
      const l = load<f32>(lPtr + (<usize>r << 2));
      const o = OPtr + (<usize>(r * dvP) << 2);
      if (l == 0) {
        memory.fill(o, 0, <usize>dvP << 2);
        store<f32>(mPtr + (<usize>r << 2), -Infinity);
      } else {
        const lV = f32x4.splat(l);
        for (let c = 0; c < dvP; c += 4) v128.store(o + (<usize>c << 2), f32x4.div(v128.load(o + (<usize>c << 2)), lV));
        store<f32>(mPtr + (<usize>r << 2), load<f32>(mPtr + (<usize>r << 2)) + Mathf.log(l));
      }
    }
    storeRows(sm, oPtr, oRowStride, oHeadStride, g, r0, OPtr, dvP, n, dv, TENSOR_O, oKind);
    if (lsePtr != 0) storeRows(sm, lsePtr, lseRowStride, lseHeadStride, g, r0, mPtr, 1, n, 1, TENSOR_LSE);
  }
}
