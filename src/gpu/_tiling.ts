// The WebGPU forward's tiling: how many query rows a workgroup takes (Br), how many threads share
// a row (T), how many keys a K/V tile holds (Bc), and the exact workgroup memory that costs.
// The kernel (shaders/forward.ts) declares exactly this memory, so the footprint here is not an
// estimate: it is what WebGPU counts against maxComputeWorkgroupStorageSize. A leaf.
//
// Workgroup memory of one workgroup (shaders/forward.ts has the phases that use it):
//   scratch  R floats (as R/4 vec4):  the K tile (Bc × dP) and the V tile (Bc × dvP) during the key
//            loop; chunks of the Q tile before it; each thread's (m, l) and chunks of its partial O
//            after it, for the merge of the T threads of a row
//   flag     with a mask only: one atomic u32 (16 bytes, WebGPU's rounding), set by the threads
//            that find an open mask entry in a tile, so the workgroup skips a tile the mask blanks
// with dP = roundUp(d, 4), dvP = roundUp(dv, 4) and
//   R = roundUp(max(Bc·(dP + dvP), 4·Br·T), (Bc/T)·(dP + dvP))
// (the merge moves at least one vec4 per thread at a time; the kernel declares the scratch as whole
// slices of one thread slice's keys, (Bc/T)·(dP + dvP) floats each).

// The defaults, 64 rows × 2 threads per row × 32 keys per tile (128 threads, 16 KiB of workgroup
// memory, which fits WebGPU's default limit), from a sweep of 17 shapes on an NVIDIA H200
// (BENCHMARKS.md): 25.1–26.1 TFLOP/s at N = 8K–32K against 22.6–23.7 for the earlier 64 × 4 × 64,
// and faster at N ≤ 2K. 128 × 1 × 32 runs 3–5% faster without causal at N ≥ 4K but needs twice the
// queries to fill the GPU, and with causal at N = 4K its 256 workgroups of very unequal work ran at
// 10–15 TFLOP/s against 13–24 here.
/** Query rows per workgroup the tiling aims for. */
export const ROWS_PER_WORKGROUP = 64;
/** Threads that share one query row, each owning a slice of Bc/T keys of every tile. */
export const THREADS_PER_ROW = 2;
/** Keys per tile the tiling aims for. */
export const KEYS_PER_TILE = 32;
/** The fewest query rows per workgroup the rule will go down to. */
export const MIN_ROWS = 8;

/** How a caller may reshape the workgroup (tests, benchmarks, tuning for a GPU). */
export interface GpuTilingTargets {
  /** Query rows per workgroup to aim for (halved until the tile fits). Default 64. */
  rowsPerWorkgroup?: number;
  /** Threads per query row (1, 2, 4, 8 or 16). Default 2. */
  threadsPerRow?: number;
  /** Keys per tile to aim for (a multiple of threadsPerRow). Default 32. */
  keysPerTile?: number;
  /**
   * Load the next K/V tile into registers while the current one is computed (software
   * pipelining; not with a mask). Changes the schedule, not the result. Default false: on an
   * NVIDIA H200 it ran 5–8% slower than the plain order at N = 8K–32K (BENCHMARKS.md).
   */
  prefetch?: boolean;
}

/** A tiling the kernel runs with. */
export interface GpuBlocks {
  /** Query rows per workgroup (virtual rows: positions × the query heads of a GQA group). */
  Br: number;
  /** Keys per tile. */
  Bc: number;
  /** Threads per query row; Br·T threads per workgroup. */
  T: number;
  /** Scratch floats R (see the header). */
  scratchFloats: number;
  /** Workgroup memory in bytes: 4·R, and 16 more with a mask. */
  footprintBytes: number;
}

const roundUp = (x: number, step: number) => Math.ceil(x / step) * step;

/** The scratch floats R of a tile Br × Bc with T threads per row and head dims d, dv. */
export function scratchFloats(Br: number, Bc: number, T: number, d: number, dv: number): number {
  const slice = (Bc / T) * (roundUp(d, 4) + roundUp(dv, 4));
  return roundUp(Math.max(T * slice, 4 * Br * T), slice);
}

/** Exact workgroup memory in bytes of the kernel with this tiling, with or without a mask. */
export function footprintBytes(Br: number, Bc: number, T: number, d: number, dv: number, masked: boolean): number {
  return 4 * scratchFloats(Br, Bc, T, d, dv) + (masked ? 16 : 0);
}

/** Checked tuning targets with their defaults. */
export function readTargets(targets: GpuTilingTargets = {}): Required<GpuTilingTargets> {
  const T = targets.threadsPerRow ?? THREADS_PER_ROW;
  return {
    rowsPerWorkgroup: targets.rowsPerWorkgroup ?? ROWS_PER_WORKGROUP,
    threadsPerRow: T,
    keysPerTile: targets.keysPerTile ?? KEYS_PER_TILE,
    prefetch: targets.prefetch ?? false,
  };
}

/**
 * The tiling for a workgroup-memory budget of `sramBytes` and head dims d, dv (with room for the
 * mask's flag when `masked`), on a device that
 * runs at most `maxInvocations` threads per workgroup: Br starts at the target and halves (down
 * to MIN_ROWS) while no tile fits; for that Br, Bc is the largest multiple of T up to the target
 * whose exact footprint fits. K and V are read once per query block, so a larger Br is what cuts
 * traffic; Bc only sets how often the workgroup synchronises. Undefined when nothing fits.
 */
export function chooseBlocks(
  sramBytes: number,
  d: number,
  dv: number,
  masked: boolean,
  maxInvocations: number,
  targets: Required<GpuTilingTargets>,
): GpuBlocks | undefined {
  const T = targets.threadsPerRow;
  for (let Br = targets.rowsPerWorkgroup; Br >= MIN_ROWS; Br = Br >> 1) {
    if (Br * T > maxInvocations) continue;
    for (let Bc = Math.floor(targets.keysPerTile / T) * T; Bc >= T; Bc -= T) {
      const bytes = footprintBytes(Br, Bc, T, d, dv, masked);
      if (bytes <= sramBytes) {
        return { Br, Bc, T, scratchFloats: scratchFloats(Br, Bc, T, d, dv), footprintBytes: bytes };
      }
    }
  }
  return undefined;
}
