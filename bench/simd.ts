/**
 * The relaxed-SIMD build against the baseline, both against the products' ceiling, and the same
 * on every runtime, measured in one run:
 *
 *   npm run bench:simd       (node with --experimental-wasm-relaxed-simd)
 *   deno task bench:simd
 *
 * 1. This runtime: the packed SGEMM probe (bench/probes/sgemm.ts, the kernels' flags and register
 *    block) in both builds, and the forward at N = 1024–4096 (B = 1, H = 8, d = 64, not causal)
 *    in both builds, timed in alternating pairs; GFLOP/s by 4·B·H·N²·d, the relaxed/baseline
 *    ratio (median of per-pair ratios) and each build as a percentage of its own probe.
 * 2. Where the forward's time goes, at N = 2048: the products at the probe's rate, exp at the
 *    kernels' own rate (expInto, timed here), and the rest (row max and sum, the rescale of O, the
 *    tile copies, loop overhead) as what remains. A model from measured rates, not a profiler.
 * 3. The runtimes: the same measurement at N = 2048 in child processes of node (with and without
 *    the relaxed-SIMD flag), deno (as it runs, and with V8's wasm bounds checks off, the test-only
 *    flag that shows what the bounds checks cost) and bun.
 *
 * `--child` prints one JSON line of part 3's measurements and exits; `--quick` shrinks everything.
 * Writes its tables into BENCHMARKS.md.
 */
import { spawnSync } from "node:child_process";
import process from "node:process";
import { ASC_FLAGS, ASC_RELAXED_FLAGS, compile } from "../_tools/_asc.ts";
import { ensureArena } from "../src/_blocks.ts";
import { runForward } from "../src/_forward.ts";
import type { AttentionProblem } from "../src/_problem.ts";
import { validateCall } from "../src/_validate.ts";
import { DEFAULT_SRAM_BYTES } from "../src/_limits.ts";
import { createLoader, type Kernels, relaxedSimdValidates, type SimdBuild } from "../src/wasm/loader.ts";
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
const child = process.argv.includes("--child");
const [H, d] = [8, 64];
const flopsOf = (N: number) => 4 * H * N * N * d;
const gflops = (flops: number, ms: number) => flops / ms / 1e6;
const fmt = (x: number, digits = 1) => x.toFixed(digits);

/** The kernels of one embedded build, on their own loader (so both builds live in one process). */
async function kernelsOf(build: SimdBuild): Promise<Kernels> {
  const loader = createLoader();
  await loader.init({ simd: build });
  return loader.loadKernels();
}

/** A forward call on given kernels, planned once. */
function forwardRunner(kernels: Kernels, problem: AttentionProblem): () => void {
  const { Br, Bc } = ensureArena(kernels, DEFAULT_SRAM_BYTES, problem);
  const config = { sramBytes: DEFAULT_SRAM_BYTES, Br, Bc, out: undefined, numSplits: 1 };
  return () => void runForward(kernels, problem, config);
}

function problemOf(N: number): AttentionProblem {
  const q = random([1, N, H, d], 1), k = random([1, N, H, d], 2), v = random([1, N, H, d], 3);
  return validateCall(q, k, v, {});
}

/** GFLOP/s of the packed SGEMM probe built with `flags` (M = 64, N = 1024, K = 64: a Q·Kᵀ tile row). */
async function probeGflops(flags: readonly string[]): Promise<number> {
  const [M, N, K] = [64, 1024, 64];
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
  const repeats = 40;
  const run = () => {
    const start = performance.now();
    for (let r = 0; r < repeats; r++) probe.sgemm(C, A, B, M, N, K);
    return performance.now() - start;
  };
  for (let i = 0; i < 20; i++) run(); // the optimising tier
  const ms = Array.from({ length: quick ? 10 : 30 }, run);
  return gflops(2 * M * N * K * repeats, median(ms));
}

/** Median ms per element of the kernels' exp (expInto over 2¹⁸ non-positive floats). */
function expMsPerElement(kernels: Kernels): number {
  const n = 1 << 18;
  const src = kernels.hbmPtr();
  const dst = src + 4 * n;
  const need = dst + 4 * n;
  const memory = kernels.memory as unknown as WebAssembly.Memory;
  if (memory.buffer.byteLength < need) memory.grow(Math.ceil((need - memory.buffer.byteLength) / 65536));
  const x = new Float32Array(memory.buffer, src, n);
  for (let i = 0; i < n; i++) x[i] = -((i * 37) % 1000) / 50;
  const ms: number[] = [];
  for (let i = 0; i < (quick ? 10 : 40); i++) {
    const start = performance.now();
    kernels.expInto(dst, src, n);
    ms.push(performance.now() - start);
  }
  return median(ms.slice(5)) / n;
}

/** Part 3's measurement in this process: the probe and the forward at N = 2048, both builds where they run. */
async function runtimeRow(): Promise<Record<string, unknown>> {
  const N = quick ? 512 : 2048;
  const problem = problemOf(N);
  const baseline = forwardRunner(await kernelsOf("baseline"), problem);
  const out: Record<string, unknown> = {
    runtime: runtimeName(),
    relaxedValidates: relaxedSimdValidates(),
    probeBaseline: await probeGflops(ASC_FLAGS),
  };
  if (relaxedSimdValidates()) {
    const relaxedKernels = await kernelsOf("relaxed");
    out.fused = relaxedKernels.fusedMultiplyAdd;
    out.probeRelaxed = await probeGflops(ASC_RELAXED_FLAGS);
    const relaxed = forwardRunner(relaxedKernels, problem);
    const t = await pairedTimes(baseline, relaxed, quick ? 3 : 8, 2);
    out.forwardBaseline = gflops(flopsOf(N), median(t.msA));
    out.forwardRelaxed = gflops(flopsOf(N), median(t.msB));
  } else {
    const ms: number[] = [];
    for (let i = 0; i < 2; i++) baseline();
    for (let i = 0; i < (quick ? 3 : 8); i++) {
      const start = performance.now();
      baseline();
      ms.push(performance.now() - start);
    }
    out.forwardBaseline = gflops(flopsOf(N), median(ms));
  }
  return out;
}

if (child) {
  console.log(JSON.stringify(await runtimeRow()));
  process.exit(0);
}

const log = (line = "") => console.log(line);
const sections: string[] = [];
const header =
  `${runtimeName()} on ${cpuName()}; B = 1, H = ${H}, d = ${d}, not causal, f32; GFLOP/s = 4·B·H·N²·d / time.`;
log(`Relaxed SIMD against the baseline, and the SGEMM ceiling: ${header}`);
if (!relaxedSimdValidates()) {
  log(
    "This runtime does not validate relaxed SIMD (node: run with --experimental-wasm-relaxed-simd, as npm run bench:simd does).",
  );
}

// 1. Both builds against their probes.
{
  const probeBase = await probeGflops(ASC_FLAGS);
  const probeRelaxed = relaxedSimdValidates() ? await probeGflops(ASC_RELAXED_FLAGS) : NaN;
  const base = await kernelsOf("baseline");
  const relaxedKernels = relaxedSimdValidates() ? await kernelsOf("relaxed") : undefined;
  const rows: (string | number)[][] = [];
  for (const N of quick ? [256, 512] : [1024, 2048, 4096]) {
    const problem = problemOf(N);
    const runBase = forwardRunner(base, problem);
    const runRelaxed = relaxedKernels ? forwardRunner(relaxedKernels, problem) : runBase;
    const pairs = quick ? 3 : N >= 4096 ? 6 : 10;
    const t = await pairedTimes(runBase, runRelaxed, pairs, 2);
    const [gBase, gRelaxed] = [gflops(flopsOf(N), median(t.msA)), gflops(flopsOf(N), median(t.msB))];
    const speedup = t.ratios.length ? quantile(t.ratios, 0.5) : NaN;
    rows.push([
      N,
      fmt(gBase),
      `${fmt(100 * gBase / probeBase, 0)}%`,
      relaxedKernels ? fmt(gRelaxed) : "—",
      relaxedKernels ? `${fmt(100 * gRelaxed / probeRelaxed, 0)}%` : "—",
      relaxedKernels
        ? `${fmt(speedup, 2)}× (${fmt(quantile(t.ratios, 0.25), 2)}–${fmt(quantile(t.ratios, 0.75), 2)})`
        : "—",
    ]);
    log(`N = ${N}: baseline ${fmt(gBase)}, relaxed ${fmt(gRelaxed)} GFLOP/s`);
  }
  const fused = relaxedKernels ? (relaxedKernels.fusedMultiplyAdd ? "fused" : "not fused") : "not available";
  sections.push(
    `### Relaxed SIMD and the SGEMM ceiling (${runtimeName()})\n\n${header}\n` +
      `SGEMM probe (64 × 1024 × 64, B packed, 4 × 8 block, the kernels' flags): baseline ${fmt(probeBase)}, ` +
      `relaxed ${relaxedKernels ? fmt(probeRelaxed) : "—"} GFLOP/s; relaxed madd here: ${fused}.\n\n` +
      table(
        [
          "N",
          "baseline GFLOP/s",
          "% of probe",
          "relaxed GFLOP/s",
          "% of probe",
          "relaxed ÷ baseline (median per pair, quartiles)",
        ],
        rows,
      ),
  );
}

// 2. Where the time goes, at N = 2048 (baseline and, where it runs, relaxed).
{
  const N = quick ? 512 : 2048;
  const problem = problemOf(N);
  const rows: (string | number)[][] = [];
  const builds: SimdBuild[] = relaxedSimdValidates() ? ["baseline", "relaxed"] : ["baseline"];
  for (const build of builds) {
    const kernels = await kernelsOf(build);
    const run = forwardRunner(kernels, problem);
    for (let i = 0; i < 2; i++) run();
    const ms: number[] = [];
    for (let i = 0; i < (quick ? 3 : 8); i++) {
      const start = performance.now();
      run();
      ms.push(performance.now() - start);
    }
    const total = median(ms);
    const products = flopsOf(N) / (await probeGflops(build === "relaxed" ? ASC_RELAXED_FLAGS : ASC_FLAGS)) / 1e6;
    const exp = expMsPerElement(kernels) * H * N * N;
    const rest = total - products - exp;
    const pct = (x: number) => `${fmt(x)} ms (${fmt(100 * x / total, 0)}%)`;
    rows.push([build, fmt(total), pct(products), pct(exp), pct(rest)]);
  }
  sections.push(
    `### Where the forward's time goes (N = ${N}, ${runtimeName()})\n\n` +
      "A model from rates measured in this run: the products (4·H·N²·d flops) at the SGEMM probe's rate, exp at the " +
      "kernels' own rate (expInto) for the H·N² scores, and the rest — row max and sum, the rescale of O, the tile " +
      "copies, loop overhead — as what remains of the measured time.\n\n" +
      table(["build", "forward ms", "products at the probe's rate", "exp", "the rest"], rows),
  );
}

// 3. The runtimes.
{
  const deno = "node_modules/.bin/deno";
  const children: { name: string; cmd: string; args: string[] }[] = [
    { name: "node 20", cmd: process.execPath, args: ["--import", "tsx", "bench/simd.ts", "--child"] },
    {
      name: "node 20 --experimental-wasm-relaxed-simd",
      cmd: process.execPath,
      args: ["--experimental-wasm-relaxed-simd", "--import", "tsx", "bench/simd.ts", "--child"],
    },
    { name: "deno", cmd: deno, args: ["run", "-A", "bench/simd.ts", "--child"] },
    {
      name: "deno --v8-flags=--no-wasm-bounds-checks (unsafe, measurement only)",
      cmd: deno,
      args: ["run", "-A", "--v8-flags=--no-wasm-bounds-checks", "bench/simd.ts", "--child"],
    },
    { name: "bun", cmd: "node_modules/.bin/bun", args: ["bench/simd.ts", "--child"] },
  ].map((c) => ({ ...c, args: quick ? [...c.args, "--quick"] : c.args }));
  const rows: (string | number)[][] = [];
  let nodeBaseline = NaN;
  for (const c of children) {
    log(`runtime: ${c.name} …`);
    const result = spawnSync(c.cmd, c.args, { encoding: "utf8", timeout: 600_000 });
    const line = (result.stdout ?? "").trim().split("\n").at(-1) ?? "";
    let m: Record<string, number | boolean | string>;
    try {
      m = JSON.parse(line);
    } catch {
      rows.push([c.name, `failed: ${(result.stderr ?? "").trim().split("\n").at(-1)}`, "", "", "", "", ""]);
      continue;
    }
    if (c.name === "node 20") nodeBaseline = m.forwardBaseline as number;
    const num = (k: string) => typeof m[k] === "number" ? fmt(m[k] as number) : "—";
    rows.push([
      `${c.name} (${m.runtime})`,
      num("probeBaseline"),
      num("forwardBaseline"),
      `${fmt(100 * (m.forwardBaseline as number) / nodeBaseline, 0)}%`,
      num("probeRelaxed"),
      num("forwardRelaxed"),
      m.relaxedValidates ? (m.fused ? "yes, fused" : "yes, not fused") : "no",
    ]);
  }
  const N = quick ? 512 : 2048;
  sections.push(
    `### The runtimes (N = ${N}, each a child process of this run, ${cpuName()})\n\n` +
      table(
        [
          "runtime",
          "probe, baseline",
          "forward, baseline",
          "forward, baseline, % of node's",
          "probe, relaxed",
          "forward, relaxed",
          "relaxed SIMD",
        ],
        rows,
      ),
  );
}

writeSection("BENCHMARKS.md", `simd-${runtimeKey()}`, sections.join("\n\n"));
log("\n" + sections.join("\n\n"));
log("\nwrote BENCHMARKS.md");
