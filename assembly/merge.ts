// Split-KV merge (Flash-Decoding, Dao, Haziza, Massa, Sizov 2023).
//
// Each split of the keys produced, per row, a normalised output O_s and its log-sum-exp lse_s.
// The online-softmax states merge associatively:
//   lse = log Σ_s e^(lse_s),   O = Σ_s e^(lse_s − lse) · O_s,
// with the identity (lse = −∞, O = 0): rows no split saw get O = 0 and lse = −∞.

import { arenaPtr, paddedDv } from "./arena";
import { ARENA_PEAK, TENSOR_LSE, TENSOR_O, TENSOR_PARTIAL, countMax, loadRows, storeRows } from "./hbm";

/**
 * Merges `splits` partial results of `rows` virtual rows. Partial O of split s, row r is the dv
 * floats at partPtr + (s·rows + r)·dv; its lse at partLsePtr + (s·rows + r). Results go to
 * virtual rows 0..rows−1 of O and lse (addressed as in hbm.ts, lse skipped when lsePtr = 0).
 * Uses the arena for (splits + 2·dvP + 2) floats per row of a block.
 */
export function mergeSplits(
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
): void {
  const dvP = paddedDv(dv);
  const block = max(1, min(rows, (sramBytes >> 2) / (splits + 2 * dvP + 2)));
  const arena = arenaPtr();
  const lseTile = arena; // splits × block
  const acc = lseTile + (<usize>(splits * block) << 2); // block × dvP
  const part = acc + (<usize>(block * dvP) << 2); // block × dvP
  const lseOut = part + (<usize>(block * dvP) << 2); // block
  const weightSum = lseOut + (<usize>block << 2); // block
  countMax(ARENA_PEAK, <i32>(weightSum + (<usize>block << 2) - arena));
  for (let r0 = 0; r0 < rows; r0 += block) {
    const n = min(block, rows - r0);
    loadRows(lseTile, block, splits, block, partLsePtr + (<usize>r0 << 2), rows, splits, n, TENSOR_PARTIAL);
    memory.fill(acc, 0, <usize>(n * dvP) << 2);
    // m = max_s lse_s, stored in lseOut until the end
    for (let r = 0; r < n; r++) {
      let mx: f32 = -Infinity;
      for (let s = 0; s < splits; s++) mx = max(mx, load<f32>(lseTile + (<usize>(s * block + r) << 2)));
      store<f32>(lseOut + (<usize>r << 2), mx);
      store<f32>(weightSum + (<usize>r << 2), 0);
    }
    // acc = Σ_s e^(lse_s − m) · O_s
    for (let s = 0; s < splits; s++) {
      loadRows(part, dvP, n, dvP, partPtr + (<usize>((s * rows + r0) * dv) << 2), dv, n, dv, TENSOR_PARTIAL);
      for (let r = 0; r < n; r++) {
        const mx = load<f32>(lseOut + (<usize>r << 2));
        const w: f32 = mx == -Infinity ? 0 : Mathf.exp(load<f32>(lseTile + (<usize>(s * block + r) << 2)) - mx);
        store<f32>(weightSum + (<usize>r << 2), load<f32>(weightSum + (<usize>r << 2)) + w);
        const wV = f32x4.splat(w);
        const a = acc + (<usize>(r * dvP) << 2);
        const p = part + (<usize>(r * dvP) << 2);
        for (let c = 0; c < dvP; c += 4) {
          const at = <usize>c << 2;
          v128.store(a + at, f32x4.add(v128.load(a + at), f32x4.mul(wV, v128.load(p + at))));
        }
      }
    }
    // O = acc / Σ w; lse = m + ln Σ w
    for (let r = 0; r < n; r++) {
      const sum = load<f32>(weightSum + (<usize>r << 2));
      const a = acc + (<usize>(r * dvP) << 2);
      if (sum == 0) {
        memory.fill(a, 0, <usize>dvP << 2);
        store<f32>(lseOut + (<usize>r << 2), -Infinity);
      } else {
        const sV = f32x4.splat(sum);
        for (let c = 0; c < dvP; c += 4) v128.store(a + (<usize>c << 2), f32x4.div(v128.load(a + (<usize>c << 2)), sV));
        store<f32>(lseOut + (<usize>r << 2), load<f32>(lseOut + (<usize>r << 2)) + Mathf.log(sum));
      }
    }
    storeRows(oPtr, oRowStride, oHeadStride, g, r0, acc, dvP, n, dv, TENSOR_O);
    if (lsePtr != 0) storeRows(lsePtr, lseRowStride, lseHeadStride, g, r0, lseOut, 1, n, 1, TENSOR_LSE);
  }
}
