/**
 * `npm start` / `deno task demo`: causal attention over 32,768 tokens (B = 1, H = 1, d = 64),
 * which naive attention cannot fit (its score matrix alone is N²·4 bytes = 4 GiB), checked
 * against the f64 reference on sampled rows, with time, GFLOP/s and peak memory.
 *
 *   npm start                   # N = 32768
 *   npm start -- 65536          # any N
 *   npm start -- --pool         # on a pool of Workers, one per core
 */
import process from "node:process";
import { readFileSync, writeFileSync } from "node:fs";
import { type AttentionPool, createAttentionPool, flashAttention, type Tensor } from "../mod.ts";
import { referenceAttention } from "../src/reference.ts";

/** What a run measured. */
export interface LongSequenceRun {
  N: number;
  seconds: number;
  gflops: number;
  /** Peak RSS during the call minus RSS just before it (inputs and output already allocated). */
  peakExtraBytes: number | undefined;
  /** Largest |flash − f64 reference| over the sampled rows. */
  maxError: number;
  sampledRows: number;
}

const MiB = 1024 * 1024;

/** The process's peak RSS in bytes (Linux /proc), or undefined where it is not readable. */
function peakRss(): number | undefined {
  try {
    const kb = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
    return kb ? Number(kb[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Current RSS in bytes (Linux /proc), or undefined. */
function currentRss(): number | undefined {
  try {
    const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
    return kb ? Number(kb[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Resets the kernel's peak-RSS mark to the current RSS (Linux ≥ 4.0); false where not possible. */
function resetPeakRss(): boolean {
  try {
    writeFileSync("/proc/self/clear_refs", "5");
    return true;
  } catch {
    return false;
  }
}

function randomTensor(shape: number[], seed: number): Tensor {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  let s = seed >>> 0;
  for (let i = 0; i < data.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    data[i] = s / 2 ** 31 - 1;
  }
  return { data, shape };
}

/**
 * Runs causal attention over N tokens (on `pool` if given, else on the calling thread) and checks
 * sampled rows against the f64 reference.
 */
export async function runLongSequence(N: number, d = 64, pool?: AttentionPool): Promise<LongSequenceRun> {
  const q = randomTensor([1, N, 1, d], 1);
  const k = randomTensor([1, N, 1, d], 2);
  const v = randomTensor([1, N, 1, d], 3);
  // Touch the output's pages now, so that the measurement below counts only the call's own memory.
  const out = new Float32Array(N * d).fill(NaN);
  const warm = randomTensor([1, 512, 1, d], 4);
  flashAttention(warm, warm, warm, { causal: true }); // compile the module outside the measurement
  if (pool) await pool.flashAttention(warm, warm, warm, { causal: true });

  const before = currentRss();
  const canReset = resetPeakRss();
  const start = performance.now();
  if (pool) await pool.flashAttention(q, k, v, { causal: true, out });
  else flashAttention(q, k, v, { causal: true, out });
  const seconds = (performance.now() - start) / 1000;
  const peak = peakRss();
  const peakExtraBytes = canReset && before !== undefined && peak !== undefined ? peak - before : undefined;

  // With causal attention query i sees keys 0..i, so its reference is a one-row problem over
  // that prefix: cheap enough to compute in f64 for a sample of rows.
  const rows = [0, 1, 63, 64, 4095, N >> 1, N - 2, N - 1].filter((i) => i < N);
  for (let i = 0; i < 8; i++) rows.push(Math.floor(((i + 0.5) / 8) * N));
  let maxError = 0;
  for (const i of rows) {
    const qi = { data: q.data.subarray(i * d, (i + 1) * d), shape: [1, 1, 1, d] };
    const prefix = (t: Tensor) => ({ data: t.data.subarray(0, (i + 1) * d), shape: [1, i + 1, 1, d] });
    const ref = referenceAttention(qi, prefix(k), prefix(v)).data;
    for (let c = 0; c < d; c++) maxError = Math.max(maxError, Math.abs(out[i * d + c] - ref[c]));
  }
  const flops = 4 * N * N * d * 0.5;
  return { N, seconds, gflops: flops / seconds / 1e9, peakExtraBytes, maxError, sampledRows: rows.length };
}

/** Error allowed on sampled rows: f32 accumulation over up to N keys of O(1) values. */
export const TOLERANCE = 1e-5;

if (import.meta.main ?? process.argv[1]?.endsWith("long_sequence.ts")) {
  const usePool = process.argv.includes("--pool");
  const N = Number(process.argv.slice(2).find((a) => !a.startsWith("--")) ?? 32768);
  const d = 64;
  const pool = usePool ? await createAttentionPool() : undefined;
  console.log(
    `causal attention, B = 1, H = 1, N = ${N}, d = ${d}, f32, ${
      pool ? `a pool of ${pool.threads} Workers` : "one thread"
    }`,
  );
  console.log(`naive attention would materialise S: N²·4 bytes = ${(N * N * 4 / 2 ** 30).toFixed(2)} GiB`);
  const run = await runLongSequence(N, d, pool);
  await pool?.close();
  console.log(`time: ${run.seconds.toFixed(2)} s, ${run.gflops.toFixed(1)} GFLOP/s`);
  const inputs = (3 * N * d + N * d) * 4;
  console.log(`inputs + output: ${(inputs / MiB).toFixed(1)} MiB`);
  console.log(
    run.peakExtraBytes === undefined
      ? "peak memory: not measurable on this platform (needs Linux /proc)"
      : `peak memory of the call beyond inputs and output: ${(run.peakExtraBytes / MiB).toFixed(1)} MiB`,
  );
  const ok = run.maxError <= TOLERANCE;
  console.log(
    `check: ${run.sampledRows} sampled rows vs the f64 reference, max |error| = ${run.maxError.toExponential(2)} ` +
      `(tolerance ${TOLERANCE}) — ${ok ? "OK" : "FAILED"}`,
  );
  if (!ok) process.exit(1);
}
