// The products' ceiling: a packed single-precision matrix product with the kernels' register
// block (4 rows × 8 columns, 8 accumulators), built by bench/simd.ts with the kernels' own flags,
// baseline and relaxed. C[M × N] = A[M × K] · B[K × N], B packed as N/8 panels of K rows of 8
// floats, so every load of B is contiguous: the best case of the kernels' S = Q·Kᵀ and O += P·V,
// which read tiles already laid out in the arena. Its GFLOP/s is what the attention kernels'
// products could reach at most on this runtime; the benchmark reports the forward against it.

// The kernels' own multiply-add: fused in the relaxed build, mul then add in the baseline.
import { madd } from "../../assembly/simd";

/** C = A·B for M a multiple of 4 and N of 8; addresses in bytes, C row-major M × N. */
export function sgemm(C: usize, A: usize, Bp: usize, M: i32, N: i32, K: i32): void {
  const aRow = <usize>K << 2;
  const cRow = <usize>N << 2;
  for (let j = 0; j < N; j += 8) {
    const panel = Bp + <usize>j * aRow;
    for (let i = 0; i < M; i += 4) {
      let c00 = f32x4.splat(0), c01 = f32x4.splat(0), c10 = f32x4.splat(0), c11 = f32x4.splat(0);
      let c20 = f32x4.splat(0), c21 = f32x4.splat(0), c30 = f32x4.splat(0), c31 = f32x4.splat(0);
      let a = A + <usize>i * aRow;
      const aEnd = a + aRow;
      let b = panel;
      for (; a < aEnd; a += 4) {
        const b0 = v128.load(b);
        const b1 = v128.load(b, 16);
        let x = v128.load32_splat(a);
        c00 = madd(x, b0, c00);
        c01 = madd(x, b1, c01);
        x = v128.load32_splat(a + aRow);
        c10 = madd(x, b0, c10);
        c11 = madd(x, b1, c11);
        x = v128.load32_splat(a + 2 * aRow);
        c20 = madd(x, b0, c20);
        c21 = madd(x, b1, c21);
        x = v128.load32_splat(a + 3 * aRow);
        c30 = madd(x, b0, c30);
        c31 = madd(x, b1, c31);
        b += 32;
      }
      const c = C + <usize>i * cRow + (<usize>j << 2);
      v128.store(c, c00);
      v128.store(c, c01, 16);
      v128.store(c + cRow, c10);
      v128.store(c + cRow, c11, 16);
      v128.store(c + 2 * cRow, c20);
      v128.store(c + 2 * cRow, c21, 16);
      v128.store(c + 3 * cRow, c30);
      v128.store(c + 3 * cRow, c31, 16);
    }
  }
}
