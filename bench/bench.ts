/**
 * Forward-pass benchmark: flashAttention vs naive TS attention, B = 1, H = 8, d = 64,
 * N ∈ {256, …, 4096}, causal and not. Prints median ms and GFLOP/s (4·B·H·Nq·Nk·d, half for
 * causal) with the runtime and CPU, and writes the table into BENCHMARKS.md.
 *
 *   npm run bench            deno task bench            bun bench/bench.ts
 *   options: --quick (fewer sizes, for a smoke run), --no-write (do not touch BENCHMARKS.md)
 *
 * Naive attention runs at every N, but only once per shape from N = 2048 on: at N = 4096 one call
 * takes about a minute here.
 */
import process from "node:process";
import { flashAttention } from "../mod.ts";
import { naiveAttention } from "../src/_cli/naive.ts";
import {
  cpuName,
  measure,
  pairedTimes,
  quantile,
  random,
  runtimeKey,
  runtimeName,
  table,
  timeOnce,
  writeSection,
} from "./_report.ts";

const quick = process.argv.includes("--quick");
const write = !process.argv.includes("--no-write");
const [B, H, d] = [1, 8, 64];
const sizes = quick ? [256, 512] : [256, 512, 1024, 2048, 4096];
/** From this N on, naive attention is timed with a single call (about a minute at N = 4096); --quick covers it at 512. */
const NAIVE_SINGLE_CALL_N = quick ? 512 : 2048;
const notes = [
  "Median of ≥ 5 calls (flash) and of 3 calls (naive, which materialises S and does not skip masked work);",
  `naive from N = ${NAIVE_SINGLE_CALL_N} on is a single call (about a minute at N = 4096), so its time is one sample.`,
];

const gflops = (N: number, causal: boolean, ms: number) => (4 * B * H * N * N * d * (causal ? 0.5 : 1)) / (ms * 1e6);

console.log(`flashAttention vs naive TS — B=${B}, H=${H}, d=${d}, f32`);
console.log(`runtime: ${runtimeName()}; CPU: ${cpuName()}`);
console.log(`${notes.join("\n")}\n`);
const rows: (string | number)[][] = [];
const causalRows: (string | number)[][] = [];
for (const N of sizes) {
  const q = random([B, N, H, d], 1);
  const k = random([B, N, H, d], 2);
  const v = random([B, N, H, d], 3);
  for (const causal of [false, true]) {
    const iterations = N >= 2048 ? 5 : 15;
    const fms = await measure("flash", () => void flashAttention(q, k, v, { causal }), iterations, true);
    const naive = () => void naiveAttention(q, k, v, causal);
    const nms = N >= NAIVE_SINGLE_CALL_N ? timeOnce(naive) : await measure("naive", naive, 3, N < 1024);
    const row = [
      N,
      causal ? "yes" : "no",
      fms.toFixed(2),
      gflops(N, causal, fms).toFixed(1),
      nms.toFixed(1),
      gflops(N, causal, nms).toFixed(2),
      `${(nms / fms).toFixed(1)}×`,
    ];
    rows.push(row);
    console.log(row.join("\t"));
  }
  // The causal speedup from alternating pairs of calls, not from the two medians above.
  // Even counts: as many AB pairs as BA pairs, so a call's position in its pair cancels out.
  const pairs = quick ? 6 : N >= 4096 ? 10 : N >= 2048 ? 12 : 22;
  const { ratios } = await pairedTimes(
    () => void flashAttention(q, k, v, { causal: false }),
    () => void flashAttention(q, k, v, { causal: true }),
    pairs,
    1,
  );
  const x = (p: number) => `${quantile(ratios, p).toFixed(2)}×`;
  causalRows.push([N, pairs, x(0.5), `${x(0.25)}–${x(0.75)}`]);
}
const causalHeader = ["N", "pairs", "non-causal ms / causal ms (median)", "quartiles (25%–75%)"];

const body = [
  `### ${runtimeName()}`,
  "",
  `CPU: ${cpuName()}. B = ${B}, H = ${H}, d = ${d}, f32, one thread, default arena (128 KiB).`,
  ...notes,
  "",
  table(["N", "causal", "flash ms", "flash GFLOP/s", "naive ms", "naive GFLOP/s", "flash speedup"], rows),
  "",
  "Causal speedup of flash over its own non-causal run (skipped blocks), timed separately from the table",
  "above: one non-causal and one causal call per pair, alternating which goes first; the median and",
  "quartiles of the per-pair ratios (steadier on a shared host than a ratio of two medians):",
  "",
  table(causalHeader, causalRows),
].join("\n");
console.log(`\n${table(causalHeader, causalRows)}`);
if (write && !quick) {
  writeSection("BENCHMARKS.md", `forward-${runtimeKey()}`, body);
  console.log("\nwrote BENCHMARKS.md");
}
