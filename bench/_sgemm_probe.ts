/**
 * The packed-SGEMM probe (bench/probes/sgemm.ts) as a callable: the best rate the kernels' own
 * build flags reach on a register-blocked matrix product, measured in the same run as what is
 * compared with it (bench:simd's forward, bench:decode-dtype's ceiling). No work at import time.
 */
import { compile } from "../_tools/_asc.ts";

/** The probe's shape: M = 64, N = 1024, K = 64 (a Q·Kᵀ tile row), PROBE.repeats products per run. */
export const PROBE = { M: 64, N: 1024, K: 64, repeats: 40 };
/** Flops of one probe run (PROBE.repeats products). */
export const probeFlops: number = 2 * PROBE.M * PROBE.N * PROBE.K * PROBE.repeats;

/** One run of the probe built with `flags`, warmed up to the optimising tier. */
export async function probeRunner(flags: readonly string[]): Promise<() => void> {
  const { M, N, K, repeats } = PROBE;
  const wasm = await compile(".", flags, "bench/probes/sgemm.ts");
  const { instance } = await WebAssembly.instantiate(wasm as Uint8Array<ArrayBuffer>, {});
  const probe = instance.exports as unknown as {
    memory: WebAssembly.Memory;
    sgemm(C: number, A: number, B: number, M: number, N: number, K: number): void;
  };
  const [A, B, C] = [65536, 65536 + 4 * M * K, 65536 + 4 * (M * K + K * N)];
  probe.memory.grow(Math.ceil((C + 4 * M * N) / 65536) + 1);
  const f32 = new Float32Array(probe.memory.buffer);
  for (let i = A / 4; i < C / 4; i++) f32[i] = ((i * 7919) % 97) / 97 - 0.5;
  const run = () => {
    for (let r = 0; r < repeats; r++) probe.sgemm(C, A, B, M, N, K);
  };
  for (let i = 0; i < 20; i++) run();
  return run;
}
