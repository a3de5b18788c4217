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
 *    kernels' own rate (expBase2Into, the forward's exp, timed here), and the rest (row max and sum, the rescale of O, the
 *    tile copies, loop overhead) as what remains. A model from measured rates, not a profiler.
 * 3. The runtimes: the same measurement at N = 2048 in child processes of node (with and without
 *    the relaxed-SIMD flag), deno (as it runs, and with V8's wasm bounds checks off, the test-only
 *    flag that shows what the bounds checks cost) and bun.
 *
 * `--child` prints one JSON line of part 3's measurements and exits; `--quick` shrinks everything
 * and writes nothing; `--sram=BYTES` runs the forwards with that arena instead of the default
 * (bench/arena.ts compares two). Writes its tables into BENCHMARKS.md.
 */
import { spawnSync } from "node:child_process";
import process from "node:process";
import { ASC_FLAGS, ASC_RELAXED_FLAGS } from "../_tools/_asc.ts";
import type { AttentionCall } from "../src/_problem.ts";
import { attend, prepare } from "../src/_run.ts";
import { validateForwardCall } from "../src/_validate.ts";
import { createLoader, type Kernels, relaxedSimdValidates, type SimdBuild } from "../src/wasm/loader.ts";
import { cpuName, median, quantile, random, runtimeKey, runtimeName, table, writeSection } from "./_report.ts";
import { probeFlops, probeRunner } from "./_sgemm_probe.ts";

const quick = process.argv.includes("--quick");
const child = process.argv.includes("--child");
const sramArg = process.argv.find((a) => a.startsWith("--sram="));
/** The forwards' arena (`--sram=BYTES`), or undefined for the library's default. */
const sramBytes = sramArg === undefined ? undefined : Number(sramArg.slice("--sram=".length));
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

/** A forward call on given kernels: flashAttention's own synchronous path, planned once. */
function forwardRunner(kernels: Kernels, call: AttentionCall): () => void {
  const prepared = prepare(call, kernels);
  return () => void attend(prepared);
}

function callOf(N: number): AttentionCall {
  const q = random([1, N, H, d], 1), k = random([1, N, H, d], 2), v = random([1, N, H, d], 3);
  return validateForwardCall(q, k, v, sramBytes === undefined ? {} : { sramBytes });
}

/**
 * Times several calls in rounds, each round calling every one once (in rotating order), so that
 * their ratios are taken moments apart on a noisy host. Returns each call's times, by round.
 * Untimed rounds come first: at least `warmup` of them and at least WARMUP_MS of calls, so that
 * V8's background tier-up of the kernels (Liftoff to TurboFan, which can take the other core of
 * a 2-core host for a while) is over before anything is timed.
 */
function interleaved(runs: (() => void)[], rounds: number, warmup = 1): number[][] {
  const warmupStart = performance.now();
  for (let w = 0; w < warmup || performance.now() - warmupStart < WARMUP_MS; w++) for (const run of runs) run();
  const times = runs.map(() => [] as number[]);
  for (let round = 0; round < rounds; round++) {
    for (let j = 0; j < runs.length; j++) {
      const i = (j + round) % runs.length;
      const start = performance.now();
      runs[i]();
      times[i].push(performance.now() - start);
    }
  }
  return times;
}

/** The least time of untimed calls before each measurement (interleaved). */
const WARMUP_MS = quick ? 0 : 1500;

/** The median over rounds of a[r] / b[r]. */
const medianRatio = (a: number[], b: number[]) => median(a.map((x, r) => x / b[r]));

/** One run of the forward's exponential (expBase2Into over n = 2¹⁸ non-positive floats in the kernels' HBM). */
function expRunner(kernels: Kernels): { run: () => void; n: number } {
  const n = 1 << 18;
  const src = kernels.hbmPtr();
  const dst = src + 4 * n;
  const need = dst + 4 * n;
  const memory = kernels.memory as unknown as WebAssembly.Memory;
  if (memory.buffer.byteLength < need) memory.grow(Math.ceil((need - memory.buffer.byteLength) / 65536));
  const x = new Float32Array(memory.buffer, src, n);
  for (let i = 0; i < n; i++) x[i] = -((i * 37) % 1000) / 50;
  return { run: () => kernels.expBase2Into(dst, src, n), n };
}

/** Part 3's measurement in this process: the probe and the forward at N = 2048, both builds where they run. */
async function runtimeRow(): Promise<Record<string, unknown>> {
  const N = quick ? 512 : 2048;
  const call = callOf(N);
  const runs = [forwardRunner(await kernelsOf("baseline"), call), await probeRunner(ASC_FLAGS)];
  const out: Record<string, unknown> = { runtime: runtimeName(), relaxedValidates: relaxedSimdValidates() };
  if (relaxedSimdValidates()) {
    const relaxedKernels = await kernelsOf("relaxed");
    out.fused = relaxedKernels.fusedMultiplyAdd;
    runs.push(forwardRunner(relaxedKernels, call), await probeRunner(ASC_RELAXED_FLAGS));
  }
  const t = interleaved(runs, quick ? 3 : 8);
  out.forwardBaseline = gflops(flopsOf(N), median(t[0]));
  out.probeBaseline = gflops(probeFlops, median(t[1]));
  if (t.length > 2) {
    out.forwardRelaxed = gflops(flopsOf(N), median(t[2]));
    out.probeRelaxed = gflops(probeFlops, median(t[3]));
  }
  return out;
}

if (child) {
  console.log(JSON.stringify(await runtimeRow()));
  process.exit(0);
}

const log = (line = "") => console.log(line);
const sections: string[] = [];
const header = `${runtimeName()} on ${cpuName()}; B = 1, H = ${H}, d = ${d}, not causal, f32, ${
  sramBytes === undefined ? "the default arena" : `a ${sramBytes}-byte arena`
}; GFLOP/s = 4·B·H·N²·d / time.`;
log(`Relaxed SIMD against the baseline, and the SGEMM ceiling: ${header}`);
if (!relaxedSimdValidates()) {
  log(
    "This runtime does not validate relaxed SIMD (node: run with --experimental-wasm-relaxed-simd, as npm run bench:simd does).",
  );
}

// 1. Both builds against their probes, all four timed in interleaved rounds.
{
  const base = await kernelsOf("baseline");
  const relaxedKernels = relaxedSimdValidates() ? await kernelsOf("relaxed") : undefined;
  const probes = [await probeRunner(ASC_FLAGS), ...(relaxedKernels ? [await probeRunner(ASC_RELAXED_FLAGS)] : [])];
  const rows: (string | number)[][] = [];
  const probeRates: number[] = [];
  for (const N of quick ? [256, 512] : [1024, 2048, 4096]) {
    const call = callOf(N);
    const runs = [forwardRunner(base, call), probes[0]];
    if (relaxedKernels) runs.push(forwardRunner(relaxedKernels, call), probes[1]);
    const t = interleaved(runs, quick ? 3 : N >= 4096 ? 12 : 24, 2);
    const [gBase, gProbe] = [gflops(flopsOf(N), median(t[0])), gflops(probeFlops, median(t[1]))];
    // The forward's share of its probe, per round: (flops/time) ÷ (probe flops/probe time).
    const share = (fwd: number[], probe: number[]) => medianRatio(probe, fwd) * flopsOf(N) / probeFlops;
    const row: (string | number)[] = [N, fmt(gProbe), fmt(gBase), `${fmt(100 * share(t[0], t[1]), 0)}%`];
    if (relaxedKernels) {
      const ratios = t[0].map((x, r) => x / t[2][r]).sort((a, b) => a - b);
      row.push(
        fmt(gflops(probeFlops, median(t[3]))),
        fmt(gflops(flopsOf(N), median(t[2]))),
        `${fmt(100 * share(t[2], t[3]), 0)}%`,
        `${fmt(quantile(ratios, 0.5), 2)}× (${fmt(quantile(ratios, 0.25), 2)}–${fmt(quantile(ratios, 0.75), 2)})`,
      );
    } else row.push("—", "—", "—", "—");
    rows.push(row);
    probeRates.push(gProbe);
    log(`N = ${N}: ${row.join(" | ")}`);
  }
  const fused = relaxedKernels ? (relaxedKernels.fusedMultiplyAdd ? "fused" : "not fused") : "not available";
  sections.push(
    `### Relaxed SIMD and the SGEMM ceiling (${runtimeName()})\n\n${header}\n` +
      "SGEMM probe: 64 × 1024 × 64, B packed, the kernels' 4 × 8 register block and flags, in each build; every row " +
      "times the two forwards and the two probes in interleaved rounds (medians; shares and ratios are medians of " +
      `per-round ratios). Relaxed madd here: ${fused}.\n\n` +
      table(
        [
          "N",
          "probe, baseline",
          "forward, baseline",
          "% of probe",
          "probe, relaxed",
          "forward, relaxed",
          "% of probe",
          "relaxed ÷ baseline speed (quartiles)",
        ],
        rows,
      ),
  );
}

// 2. Where the time goes, at N = 2048 (baseline and, where it runs, relaxed), rates taken in the same rounds.
{
  const N = quick ? 512 : 2048;
  const call = callOf(N);
  const rows: (string | number)[][] = [];
  const builds: SimdBuild[] = relaxedSimdValidates() ? ["baseline", "relaxed"] : ["baseline"];
  for (const build of builds) {
    const kernels = await kernelsOf(build);
    const exp = expRunner(kernels);
    const t = interleaved(
      [
        forwardRunner(kernels, call),
        await probeRunner(build === "relaxed" ? ASC_RELAXED_FLAGS : ASC_FLAGS),
        exp.run,
      ],
      quick ? 3 : 16,
    );
    // Shares of the forward's time, each the median over rounds of that round's ratio (as in part
    // 1), so that a slow moment of the host moves a whole round, not one side of a ratio.
    const total = median(t[0]);
    const products = total * medianRatio(t[1], t[0]) * flopsOf(N) / probeFlops;
    const expMs = total * medianRatio(t[2], t[0]) / exp.n * H * N * N;
    const rest = total - products - expMs;
    const pct = (x: number) => `${fmt(x)} ms (${fmt(100 * x / total, 0)}%)`;
    rows.push([build, fmt(total), pct(products), pct(expMs), pct(rest)]);
  }
  sections.push(
    `### Where the forward's time goes (N = ${N}, ${runtimeName()})\n\n` +
      "A model from rates measured in this run: the products (4·H·N²·d flops) at the SGEMM probe's rate, exp at the " +
      "kernels' own rate (expBase2Into, the forward's exp) for the H·N² scores, and the rest — row max and sum, the rescale of O, the tile " +
      "copies, loop overhead — as what remains of the measured time. Shares are medians of per-round ratios (16 " +
      "rounds); ms are those shares of the median forward.\n\n" +
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
  ].map((c) => ({ ...c, args: [...c.args, ...(quick ? ["--quick"] : []), ...(sramArg ? [sramArg] : [])] }));
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

log("\n" + sections.join("\n\n"));
if (!quick) {
  writeSection("BENCHMARKS.md", `simd-${runtimeKey()}`, sections.join("\n\n"));
  log("\nwrote BENCHMARKS.md");
}
