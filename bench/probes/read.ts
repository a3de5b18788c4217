// A plain WebAssembly memory-read probe (AssemblyScript, built with the kernels' flags by
// bench/pool.ts): streams `bytes` bytes from `ptr` with 128-bit loads into four independent
// accumulators, the most a single thread of wasm32 SIMD reads per second. The decode benchmark
// compares the kernel's K/V read rate with it.

/** Sums the f32 lanes of [ptr, ptr + bytes); bytes is a multiple of 64. */
export function readSum(ptr: usize, bytes: i32): f32 {
  let a = f32x4.splat(0);
  let b = f32x4.splat(0);
  let c = f32x4.splat(0);
  let d = f32x4.splat(0);
  const end = ptr + <usize>bytes;
  for (let p = ptr; p < end; p += 64) {
    a = f32x4.add(a, v128.load(p));
    b = f32x4.add(b, v128.load(p, 16));
    c = f32x4.add(c, v128.load(p, 32));
    d = f32x4.add(d, v128.load(p, 48));
  }
  const s = f32x4.add(f32x4.add(a, b), f32x4.add(c, d));
  return f32x4.extract_lane(s, 0) + f32x4.extract_lane(s, 1) + f32x4.extract_lane(s, 2) + f32x4.extract_lane(s, 3);
}
