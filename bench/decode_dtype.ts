/**
 * Decode over a KV cache stored in 16 bits against the same cache in f32, side by side in one run:
 * Nq = 1 per step, H = 32, Hkv = 8, d = 128 (bench/pool.ts's decode shape), 32,768 cached positions.
 * A 16-bit cache holds half the bytes, and each step reads half of them: its tile copies widen the
 * keys and values to f32 on their way into the arena. Per dtype the table gives the median time per
 * step and, against f32, the median (and quartiles) of per-pair ratios of steps made moments apart
 * (alternating which goes first), on one thread and on a pool of 2 Workers.
 *
 *   npm run bench:decode-dtype      deno task bench:decode-dtype      bun bench/decode_dtype.ts
 *   --quick: 2,048 positions and few pairs, nothing written (a smoke run)
 */
import process from "node:process";
import { createKvCache, flashAttentionWithKvCache, type KvCache } from "../mod.ts";
import { POOL_TUNING, startPool } from "../src/pool.ts";
import type { Dtype } from "../src/tensor.ts";
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

const q = random([1, 1, H, d], 5);
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
  const kvBytes = (dtype: Dtype) => 2 * maxLen * Hkv * d * (dtype === "f32" ? 4 : 2);
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
if (!quick) {
  writeSection("BENCHMARKS.md", `decode-dtype-${runtimeKey()}`, lines.join("\n"));
  console.log("\nwrote BENCHMARKS.md");
}
