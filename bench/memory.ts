/**
 * Peak memory of one long call: N = 65,536, H = 1, d = 64, causal (memory does not depend on the
 * mask; causal halves the wait). Measures the process's peak RSS during the call minus its RSS
 * just before it, with inputs and output already allocated and touched (Linux /proc: VmHWM reset
 * through /proc/self/clear_refs). Writes the result into BENCHMARKS.md.
 *
 *   npx tsx bench/memory.ts [N]      deno run -A bench/memory.ts      bun bench/memory.ts
 */
import process from "node:process";
import { runLongSequence } from "../examples/long_sequence.ts";
import { cpuName, runtimeKey, runtimeName, writeSection } from "./_report.ts";

const N = Number(process.argv[2] ?? 65536);
const d = 64;
const MiB = 1024 * 1024;
const run = await runLongSequence(N, d);
if (run.peakExtraBytes === undefined) throw new Error("peak RSS is not measurable here (needs Linux /proc)");
const lines = [
  `### ${runtimeName()}: N = ${N}, H = 1, d = ${d}, causal`,
  "",
  `CPU: ${cpuName()}.`,
  "",
  `- inputs + output: ${((4 * N * d * 4) / MiB).toFixed(1)} MiB (naive attention's S alone: ${
    (N * N * 4 / 2 ** 30).toFixed(0)
  } GiB)`,
  `- peak RSS of the call beyond them: **${(run.peakExtraBytes / MiB).toFixed(1)} MiB** (bound: 64 MiB)`,
  `- time: ${run.seconds.toFixed(1)} s, ${run.gflops.toFixed(1)} GFLOP/s`,
  `- ${run.sampledRows} sampled rows vs the f64 reference: max |error| ${run.maxError.toExponential(2)}`,
].join("\n");
console.log(lines);
if (N === 65536) writeSection("BENCHMARKS.md", `memory-${runtimeKey()}`, lines);
if (run.peakExtraBytes >= 64 * MiB) process.exit(1);
