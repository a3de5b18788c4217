/**
 * The backward's benchmark, every figure measured side by side in one run:
 *
 * 1. a training step (forward + backward) at N = 16,384, H = 1, d = 64 with its memory, beside
 *    the 2·N²·4 bytes of S and P the naive step stores;
 * 2. backward GFLOP/s (counting 2.5× the forward's flops, as the field does) against the forward on
 *    one thread, the backward on a pool, and a naive TypeScript backward that stores P
 *    (B = 1, H = 8, d = 64, N = 512 … 4096, causal and not);
 * 3. what determinism costs: the time of each kernel of the backward, the partial dQ's traffic,
 *    and the tile products it executes against a fused backward's five.
 *
 *   npx tsx bench/backward.ts      deno task bench:backward      bun bench/backward.ts
 *   --quick: small sizes, nothing written
 */
import process from "node:process";
import { flashAttention, flashAttentionBackward, type Tensor } from "../mod.ts";
import { planBackward } from "../src/_backward_plan.ts";
import { ensureBackwardArena } from "../src/_backward_run.ts";
import { runStep } from "../src/_forward.ts";
import { DEFAULT_SRAM_BYTES } from "../src/_limits.ts";
import { SLAB_BUDGET_BYTES } from "../src/_plan.ts";
import { validateBackwardCall } from "../src/_validate.ts";
import { POOL_TUNING, startPool } from "../src/pool.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import { naiveAttentionBackward } from "../src/_cli/naive.ts";
import {
  cpuName,
  median,
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
const threads = 2;
const sections: string[] = [
  `### ${runtimeName()}`,
  "",
  `CPU: ${cpuName()}. f32, default arena (${DEFAULT_SRAM_BYTES / 1024} KiB: the backward's blocks are ${
    loadKernels().backwardBlockSize(DEFAULT_SRAM_BYTES, 64, 64, false)
  } × ${
    loadKernels().backwardBlockSize(DEFAULT_SRAM_BYTES, 64, 64, false)
  } at d = 64). Ratios are medians (and quartiles) of`,
  "per-pair ratios of calls made moments apart, alternating which goes first; GFLOP/s from median times.",
  "",
];
const log = (line = "") => {
  console.log(line);
  sections.push(line);
};
const x = (ratios: number[], p: number) => `${quantile(ratios, p).toFixed(2)}×`;
const range = (ratios: number[]) => `${x(ratios, 0.25)}–${x(ratios, 0.75)}`;

/** Forward flops of attention over an N × N problem (the 2 products), halved when causal. */
const forwardFlops = (B: number, H: number, N: number, d: number, causal: boolean) =>
  4 * B * H * N * N * d * (causal ? 0.5 : 1);

const pool = await startPool(threads, POOL_TUNING);
try {
  // 1. A training step (first, so that the memory figure is its own) at N = 16,384.
  {
    const [B, H, d] = [1, 1, 64];
    const N = quick ? 4096 : 16384;
    const q = random([B, N, H, d], 9);
    const k = random([B, N, H, d], 10);
    const v = random([B, N, H, d], 11);
    const dOut = random([B, N, H, d], 12);
    // Warm up both kernels (compiled and tiered up) on a small problem, so that the times below are
    // the step's own; the memory figure is the high-water mark of the whole process's kernels.
    {
      const w = random([1, 256, 1, d], 13);
      flashAttentionBackward(w, w, w, flashAttention(w, w, w, { causal: true, returnLse: true }), w, { causal: true });
    }
    const memory = loadKernels().memory;
    const before = memory.buffer.byteLength;
    let out: ReturnType<typeof flashAttention> | undefined;
    let grads: { dq: Tensor } | undefined;
    const fwdMs = timeOnce(() => (out = flashAttention(q, k, v, { causal: true, returnLse: true })));
    const bwdMs = timeOnce(() => (grads = flashAttentionBackward(q, k, v, out!, dOut, { causal: true })));
    const poolStart = performance.now();
    const pooledOut = await pool.flashAttention(q, k, v, { causal: true, returnLse: true });
    const pooled = await pool.flashAttentionBackward(q, k, v, pooledOut, dOut, { causal: true });
    const poolMs = performance.now() - poolStart;
    if (!pooled.dq.data.every((x, i) => Object.is(x, grads!.dq.data[i]))) throw new Error("pool bits differ");
    const wasmBytes = memory.buffer.byteLength;
    const arrays = 4 * N * H * d * 9 + 4 * N * H; // q, k, v, O, dO, dq, dk, dv and lse
    const naiveBytes = 2 * N * N * 4;
    const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;
    log(`#### Training step: N = ${N}, H = ${H}, d = ${d}, causal`);
    log();
    log(
      table(["what", "value"], [
        ["forward, 1 thread", `${fwdMs.toFixed(0)} ms`],
        ["backward, 1 thread", `${bwdMs.toFixed(0)} ms`],
        [`forward + backward on the pool (${threads})`, `${poolMs.toFixed(0)} ms (same bits)`],
        ["WebAssembly memory of the one-thread kernels after the step", `${mib(wasmBytes)} (was ${mib(before)})`],
        ["JS arrays of the step (q, k, v, O, dO, dq, dk, dv, lse)", mib(arrays)],
        ["S and P of a naive step (2·N²·4 bytes)", mib(naiveBytes)],
      ]),
    );
    log();
  }
  // 2. Backward throughput.
  {
    const [B, H, d] = [1, 8, 64];
    const rows: (string | number)[][] = [];
    for (const N of quick ? [256, 512] : [512, 1024, 2048, 4096]) {
      const q = random([B, N, H, d], 1);
      const k = random([B, N, H, d], 2);
      const v = random([B, N, H, d], 3);
      const dOut = random([B, N, H, d], 4);
      for (const causal of [false, true]) {
        const out = flashAttention(q, k, v, { causal, returnLse: true });
        const pairs = quick ? 3 : N >= 4096 ? 5 : N >= 2048 ? 7 : 11;
        const fwd = await pairedTimes(
          () => flashAttention(q, k, v, { causal }),
          () => flashAttentionBackward(q, k, v, out, dOut, { causal }),
          pairs,
          1,
        );
        const pooled = await pairedTimes(
          () => flashAttentionBackward(q, k, v, out, dOut, { causal }),
          () => pool.flashAttentionBackward(q, k, v, out, dOut, { causal }),
          pairs,
          1,
        );
        const flops = forwardFlops(B, H, N, d, causal);
        const gflops = (ms: number, factor = 2.5) => (factor * flops / ms / 1e6).toFixed(1);
        // backward/forward in GFLOP/s = 2.5 · t_forward / t_backward, per pair
        const share = fwd.ratios.map((r) => 2.5 * r);
        let naive: string;
        let naiveRatio: string;
        {
          // Above N = 1024 the naive backward takes minutes: time it on one head (the heads are
          // independent and alike) and multiply by H.
          const onHeads = N <= (quick ? 256 : 1024) ? H : 1;
          const [qs, ks, vs, ds] = [q, k, v, dOut].map((t, i) => onHeads === H ? t : random([B, N, 1, d], 20 + i));
          const naiveMs = timeOnce(() => naiveAttentionBackward(qs, ks, vs, ds, causal)) * (H / onHeads);
          // The naive code computes every score, masked or not: its flops are the non-causal ones.
          naive = (2.5 * forwardFlops(B, H, N, d, false) / naiveMs / 1e6).toFixed(2) + (onHeads < H ? "*" : "");
          naiveRatio = `${(naiveMs / median(pooled.msA)).toFixed(0)}×`;
        }
        const row = [
          N,
          causal ? "yes" : "no",
          gflops(median(fwd.msA), 1),
          gflops(median(fwd.msB)),
          `${(100 * quantile(share, 0.5)).toFixed(0)}% (${(100 * quantile(share, 0.25)).toFixed(0)}–${
            (100 * quantile(share, 0.75)).toFixed(0)
          }%)`,
          gflops(median(pooled.msB)),
          `${x(pooled.ratios, 0.5)} (${range(pooled.ratios)})`,
          naive,
          naiveRatio,
        ];
        rows.push(row);
        console.log(row.join("\t"));
      }
    }
    log(`#### Backward vs forward, one thread and the pool (B = 1, H = 8, d = 64), GFLOP/s`);
    log();
    log(
      "The backward's GFLOP/s count 2.5× the forward's flops (the field's convention: the five tile products " +
        "of the backward against the forward's two), causal halving both; target: backward ≥ 60% of the forward. " +
        "The naive backward computes every score (its flops are the non-causal ones); * = timed on one of the " +
        `${H} heads and multiplied by ${H} (a whole run takes minutes).`,
    );
    log();
    log(
      table([
        "N",
        "causal",
        "forward, 1 thread",
        "backward, 1 thread",
        "backward / forward",
        `backward, pool (${threads})`,
        "pool speedup",
        "naive TS backward (stores P)",
        "ours (1 thread) vs naive",
      ], rows),
    );
    log();
  }

  // 3. What determinism costs: time per kernel, on the calling thread.
  {
    const [B, H, d, N] = quick ? [1, 4, 64, 512] : [1, 8, 64, 2048];
    const q = random([B, N, H, d], 5);
    const k = random([B, N, H, d], 6);
    const v = random([B, N, H, d], 7);
    const dOut = random([B, N, H, d], 8);
    const rows: (string | number)[][] = [];
    for (const causal of [false, true]) {
      const out = flashAttention(q, k, v, { causal, returnLse: true });
      const call = validateBackwardCall(q, k, v, out, dOut, { causal });
      const kernels = loadKernels();
      const Bs = ensureBackwardArena(kernels, call.sramBytes, call.problem);
      const plan = planBackward(call.problem, call, {
        sramBytes: call.sramBytes,
        B: Bs,
        hbmPtr: kernels.hbmPtr(),
        slabBudgetBytes: SLAB_BUDGET_BYTES,
        queryJobsPerGroup: 1,
      });
      const phase = plan.phases[0];
      const need = plan.endPtr - kernels.memory.buffer.byteLength;
      if (need > 0) kernels.memory.grow(Math.ceil(need / 65536));
      phase.stage(kernels.memory.buffer);
      const ms: Record<string, number[]> = { backwardPrep: [], backwardDkDv: [], backwardDqMerge: [] };
      for (let rep = 0; rep < (quick ? 3 : 7); rep++) {
        for (const step of phase.steps) ms[step.kernel].push(timeOnce(() => runStep(kernels, step)));
      }
      const total = Object.values(ms).reduce((a, t) => a + median(t), 0);
      const stats = flashAttentionBackward(q, k, v, out, dOut, { causal, stats: true }).stats!;
      const forwardStats = flashAttention(q, k, v, { causal, stats: true }).stats!;
      const share = (kernel: string) =>
        `${median(ms[kernel]).toFixed(1)} (${(100 * median(ms[kernel]) / total).toFixed(1)}%)`;
      const partialBytes = stats.read.partial + stats.written.partial;
      rows.push([
        causal ? "yes" : "no",
        share("backwardPrep"),
        share("backwardDkDv"),
        share("backwardDqMerge"),
        `${(partialBytes / 2 ** 20).toFixed(0)} MiB (${(100 * partialBytes / stats.totalBytes).toFixed(0)}%)`,
        (stats.flops / (2.5 * forwardStats.flops)).toFixed(2),
      ]);
      console.log(rows.at(-1)!.join("\t"));
    }
    log(`#### What determinism costs (B = ${B}, H = ${H}, N = ${N}, d = ${d}, one thread)`);
    log();
    log(
      "Time per kernel (median ms, share of the backward). The keys of each head are cut into at most 8 segments; " +
        "each segment adds its tiles' dQ into its own partial dQ in HBM, and the merge sums a row's partials in " +
        "segment order. Against FlashAttention-2's atomic adds (the same per-tile dQ traffic, in a different order " +
        "each run) determinism costs the merge and the partials' memory (8 copies of dQ at most). Also: the " +
        "partial-dQ traffic (per-tile read-modify-write and the merge's reads) and its share of the backward's " +
        "bytes, and the tile-product flops executed over the 2.5× forward flops of a fused backward.",
    );
    log();
    log(
      table(
        [
          "causal",
          "D = rowsum(dO∘O)",
          "dK, dV, partial dQ",
          "dQ merge",
          "partial dQ traffic",
          "executed / fused flops",
        ],
        rows,
      ),
    );
    log();
  }
} finally {
  await pool.close();
}

if (!quick) {
  writeSection("BENCHMARKS.md", `backward-${runtimeKey()}`, sections.join("\n"));
  console.log("\nwrote BENCHMARKS.md");
}
