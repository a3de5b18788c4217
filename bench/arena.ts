/**
 * The forward at two arena sizes, side by side (where the last percents of the SGEMM ceiling go):
 *
 *   npm run bench:arena                          128 KiB (the default) against 256 KiB
 *   deno task bench:arena --sram=131072,524288   any two sizes
 *   … --build=relaxed --sizes=2048,4096 --pairs=21
 *
 * For each N (B = 1, H = 8, d = 64, not causal) the two forwards, planned once each, run in
 * alternating pairs (bench/_report.ts's pairedTimes); it prints each one's median GFLOP/s
 * (4·B·H·N²·d / time), its blocks Br × Bc, and the median and quartiles of the per-pair time ratio
 * first ÷ second (> 1: the second arena is faster). Prints only; BENCHMARKS.md quotes a run.
 */
import process from "node:process";
import { attend, prepare } from "../src/_run.ts";
import { validateForwardCall } from "../src/_validate.ts";
import { createLoader, type SimdBuild } from "../src/wasm/loader.ts";
import { cpuName, median, pairedTimes, quantile, random, runtimeName } from "./_report.ts";

const args = process.argv.slice(2);
const option = (name: string, fallback: string) =>
  args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback;
const build = option("build", "baseline") as SimdBuild;
const [sramA, sramB] = option("sram", "131072,262144").split(",").map(Number);
const sizes = option("sizes", "1024,2048,4096").split(",").map(Number);
const pairs = Number(option("pairs", "15"));
const [H, d] = [8, 64];

const loader = createLoader();
await loader.init({ simd: build });
const kernels = loader.loadKernels();
const blocks = (sram: number) => {
  const b = kernels.blockSizes(sram, d, d, false);
  return `${b >>> 16} × ${b & 0xffff}`;
};
console.log(`${runtimeName()}, ${cpuName()}, ${kernels.simd} build; B = 1, H = ${H}, d = ${d}, not causal`);
console.log(`arenas: A = ${sramA} bytes (Br × Bc ${blocks(sramA)}), B = ${sramB} bytes (${blocks(sramB)})`);
for (const N of sizes) {
  const q = random([1, N, H, d], 1), k = random([1, N, H, d], 2), v = random([1, N, H, d], 3);
  const [runA, runB] = [sramA, sramB].map((sramBytes) => {
    const prepared = prepare(validateForwardCall(q, k, v, { sramBytes }), kernels);
    return () => void attend(prepared);
  });
  const { msA, msB, ratios } = await pairedTimes(runA, runB, pairs, 1);
  const gflops = (ms: number[]) => (4 * H * N * N * d / median(ms) / 1e6).toFixed(1);
  console.log(
    `N = ${N}: A ${gflops(msA)} GFLOP/s, B ${gflops(msB)} GFLOP/s; time A ÷ B ${median(ratios).toFixed(3)} ` +
      `(quartiles ${quantile(ratios, 0.25).toFixed(3)}–${quantile(ratios, 0.75).toFixed(3)}, ${pairs} pairs)`,
  );
}
