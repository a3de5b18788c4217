/**
 * Decode over a KV cache stored in 16 bits against the same cache in f32, side by side in one run:
 * Nq = 1 per step, H = 32, Hkv = 8, d = 128 (bench/pool.ts's decode shape), 32,768 cached positions.
 * A 16-bit cache holds half the bytes, and each step reads half of them: its tile copies widen the
 * keys and values to f32 on their way into the arena. Per dtype the table gives the median time per
 * step and, against f32, the median (and quartiles) of per-pair ratios of steps made moments apart
 * (alternating which goes first), on one thread and on a pool of 2 Workers. A last line gives the
 * ceiling this host sets on the one-thread ratio (ceiling() says how it is measured).
 *
 *   npm run bench:decode-dtype      deno task bench:decode-dtype      bun bench/decode_dtype.ts
 *   --quick: 2,048 positions and few pairs, nothing written (a smoke run)
 */
import process from "node:process";
import { ASC_FLAGS, ASC_RELAXED_FLAGS } from "../_tools/_asc.ts";
import { createKvCache, DEFAULT_SRAM_BYTES, flashAttentionWithKvCache, type KvCache } from "../mod.ts";
import { POOL_TUNING, startPool } from "../src/pool.ts";
import type { Dtype } from "../src/tensor.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import { probeFlops, probeRunner } from "./_sgemm_probe.ts";
import {
  cpuName,
  median,
  pairedTimes,
  quantile,
  random,
  runtimeKey,
  runtimeName,
  table,
  writeSection,
} from "./_report.ts";

const quick = process.argv.includes("--quick");
const [H, Hkv, d, maxLen] = [32, 8, 128, quick ? 2048 : 32768];
const pairs = quick ? 4 : 20;
/** K and V bytes one step reads from a cache of `dtype`. */
const kvBytes = (dtype: Dtype) => 2 * maxLen * Hkv * d * (dtype === "f32" ? 4 : 2);
const threads = 2;
const dtypes: Dtype[] = ["f32", "bf16", "f16"];
const lines: string[] = [];
const log = (line = "") => {
  console.log(line);
  lines.push(line);
};

/** Fills a cache with the same random keys and values in chunks of positions (rounded to its dtype). */
function fill(cache: KvCache): void {
  const chunk = 2048;
  for (let at = 0; at < maxLen; at += chunk) {
    const n = Math.min(chunk, maxLen - at);
    cache.append(random([1, n, Hkv, d], 6 + at), random([1, n, Hkv, d], 7 + at));
  }
}

/**
 * What this host allows a 16-bit cache to gain on one thread, for steps that copy their K and V
 * tiles into the arena and then compute on them (the kernels' way for K/V beyond the caches): each
 * dtype's copy time, measured as the same bytes moved Bc rows at a time into one arena-sized region
 * of a WebAssembly memory (copyWithin, a memmove like the kernels' memory.copy), plus the step's
 * flops at the SGEMM probe's rate (the build the kernels run). Computing at the probe's rate is
 * more than either step does, so the ratio is a ceiling, not a prediction.
 */
async function ceiling(): Promise<string> {
  const kernels = loadKernels();
  const Bc = kernels.blockSizes(DEFAULT_SRAM_BYTES, d, d, false) & 0xffff;
  const memory = new WebAssembly.Memory({ initial: Math.ceil((kvBytes("f32") + (1 << 20)) / 65536) });
  const bytes = new Uint8Array(memory.buffer);
  bytes.fill(1);
  const from = 1 << 20; // the source; the arena-sized destination is the first MiB
  const copier = (dtype: Dtype) => () => {
    const [total, tile] = [kvBytes(dtype), Bc * d * (dtype === "f32" ? 4 : 2)];
    for (let at = 0; at < total; at += tile) bytes.copyWithin(0, from + at, from + Math.min(total, at + tile));
  };
  const probe = await probeRunner(kernels.simd === "relaxed" ? ASC_RELAXED_FLAGS : ASC_FLAGS);
  // At least 1.5 s of probe runs first: V8 tiers the probe up to its optimising compiler in the
  // background, and until it has, the probe runs at a fraction of its rate.
  for (const start = performance.now(); performance.now() - start < (quick ? 0 : 1500);) probe();
  const { msA, msB } = await pairedTimes(copier("f32"), copier("bf16"), pairs, 2);
  const probeMs: number[] = [];
  for (let i = 0; i < pairs; i++) {
    const start = performance.now();
    probe();
    probeMs.push(performance.now() - start);
  }
  const [f32Ms, bf16Ms] = [median(msA), median(msB)];
  const gflops = probeFlops / median(probeMs) / 1e6;
  const computeMs = (4 * H * maxLen * d) / gflops / 1e6;
  return `Ceiling on one thread: the f32 step's K/V tile copies take ${f32Ms.toFixed(2)} ms ` +
    `(${(kvBytes("f32") / f32Ms / 1e6).toFixed(1)} GB/s), bf16's ${bf16Ms.toFixed(2)} ms; the step's ` +
    `${(4 * H * maxLen * d / 1e6).toFixed(0)} MFLOP take ${computeMs.toFixed(2)} ms at the SGEMM probe's ` +
    `${gflops.toFixed(1)} GFLOP/s (${kernels.simd} build). A step that copied and then computed at the probe's rate ` +
    `would be at most ${((f32Ms + computeMs) / (bf16Ms + computeMs)).toFixed(2)}× faster with a bf16 cache.`;
}

const q = random([1, 1, H, d], 5);
const limit = await ceiling();
const pool = await startPool(threads, POOL_TUNING);
const rows: (string | number)[][] = [];
try {
  const caches = dtypes.map((dtype) => {
    const config = { batch: 1, maxLen, kvHeads: Hkv, headDim: d, dtype };
    const own = createKvCache(config);
    const pooled = pool.createKvCache(config);
    fill(own);
    fill(pooled);
    return { dtype, own, pooled };
  });
  // The counters must show half the K/V bytes for 16 bits, and the steps must run.
  for (const { dtype, own } of caches) {
    const { stats } = flashAttentionWithKvCache(q, own, { stats: true });
    if (stats!.read.k + stats!.read.v !== kvBytes(dtype)) throw new Error(`${dtype}: ${stats!.read.k} bytes of K`);
  }
  const x = (ratios: number[], p: number) => `${quantile(ratios, p).toFixed(2)}×`;
  for (const where of ["1 thread", `pool, ${threads} Workers`]) {
    const step = (cache: KvCache) =>
      where === "1 thread" ? () => flashAttentionWithKvCache(q, cache) : () => pool.flashAttentionWithKvCache(q, cache);
    const f32 = caches[0];
    const f32Cache = where === "1 thread" ? f32.own : f32.pooled;
    for (const c of caches.slice(1)) {
      const cache = where === "1 thread" ? c.own : c.pooled;
      const { msA, msB, ratios } = await pairedTimes(step(f32Cache), step(cache), pairs, 2);
      if (c === caches[1]) {
        rows.push([where, "f32", (kvBytes("f32") / 2 ** 20).toFixed(0), median(msA).toFixed(2), "1 (baseline)", ""]);
      }
      const row = [
        where,
        c.dtype,
        (kvBytes(c.dtype) / 2 ** 20).toFixed(0),
        median(msB).toFixed(2),
        x(ratios, 0.5),
        `${x(ratios, 0.25)}–${x(ratios, 0.75)}`,
      ];
      rows.push(row);
      console.log(row.join("\t"));
    }
  }
  for (const { own, pooled } of caches) {
    own.free();
    pooled.free();
  }
} finally {
  await pool.close();
}

log(`### ${runtimeName()}`);
log();
log(
  `CPU: ${cpuName()}. Decode step: Nq = 1, H = ${H}, Hkv = ${Hkv}, d = ${d}, ${maxLen} cached positions in a ` +
    "createKvCache / pool.createKvCache cache of each dtype, default arena (128 KiB). Speedup: the median (and " +
    "quartiles) of per-pair ratios f32 ms / 16-bit ms, steps made moments apart.",
);
log();
log(table(["where", "cache dtype", "K/V MiB per step", "ms per step (median)", "speedup vs f32", "quartiles"], rows));
log();
log(limit);
if (!quick) {
  writeSection("BENCHMARKS.md", `decode-dtype-${runtimeKey()}`, lines.join("\n"));
  console.log("\nwrote BENCHMARKS.md");
}
