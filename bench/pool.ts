/**
 * The pool's benchmark, every figure measured side by side in one run:
 *
 * 1. prefill scaling: one thread vs a pool of Workers (B = 1, H = 8, d = 64, causal and not);
 * 2. the break-even below which a dispatch to the Workers costs more than it saves;
 * 3. decode over a 32K KV cache (Nq = 1, H = 32, Hkv = 8, d = 128): a caller-owned cache, a cache
 *    that lives in HBM, and the same on the pool, against a plain WebAssembly memory-read probe;
 * 4. the longest sequence: N = 262,144, H = 1, d = 64, causal, on the pool, checked on sampled
 *    rows against the f64 reference, with time and peak memory.
 *
 *   npx tsx bench/pool.ts      deno task bench:pool      bun bench/pool.ts
 *   --quick: small sizes, nothing written; --no-long: skip section 4
 */
import process from "node:process";
import { compile } from "../_tools/_asc.ts";
import { runLongSequence, TOLERANCE } from "../examples/long_sequence.ts";
import { createKvCache, flashAttention, flashAttentionWithKvCache } from "../mod.ts";
import { POOL_TUNING, startPool } from "../src/pool.ts";
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
const long = !quick && !process.argv.includes("--no-long");
const threads = 2;
const sections: string[] = [
  `### ${runtimeName()}`,
  "",
  `CPU: ${cpuName()}. f32, default arena (128 KiB); the pool has ${threads} Workers. Each ratio is the`,
  "median (and quartiles) of per-pair ratios of calls made moments apart, alternating which goes first.",
  "",
];
const log = (line = "") => {
  console.log(line);
  sections.push(line);
};
const x = (ratios: number[], p: number) => `${quantile(ratios, p).toFixed(2)}×`;

const pool = await startPool(threads, POOL_TUNING);
const dispatching = await startPool(threads, { ...POOL_TUNING, inlineFlops: 0 });
try {
  // 1. Prefill scaling.
  {
    const [B, H, d] = [1, 8, 64];
    const rows: (string | number)[][] = [];
    for (const N of quick ? [512, 1024] : [1024, 2048, 4096]) {
      const q = random([B, N, H, d], 1);
      const k = random([B, N, H, d], 2);
      const v = random([B, N, H, d], 3);
      for (const causal of [false, true]) {
        const pairs = quick ? 4 : N >= 4096 ? 8 : 12;
        const { msA, msB, ratios } = await pairedTimes(
          () => flashAttention(q, k, v, { causal }),
          () => pool.flashAttention(q, k, v, { causal }),
          pairs,
          1,
        );
        const flops = 4 * B * H * N * N * d * (causal ? 0.5 : 1);
        const gflops = (ms: number) => (flops / ms / 1e6).toFixed(1);
        const row = [N, causal ? "yes" : "no", gflops(median(msA)), gflops(median(msB)), x(ratios, 0.5)];
        rows.push([...row, `${x(ratios, 0.25)}–${x(ratios, 0.75)}`]);
        console.log(row.join("\t"));
      }
    }
    log(`#### Prefill: one thread vs the pool (B = 1, H = 8, d = 64), GFLOP/s from median times`);
    log();
    log(table(["N", "causal", "1 thread", `pool (${threads})`, "speedup (median)", "quartiles"], rows));
    log();
  }

  // 2. Break-even of a dispatch: the synchronous call vs the same call forced onto the Workers.
  {
    const [B, H, d] = [1, 8, 64];
    const rows: (string | number)[][] = [];
    for (const N of [16, 32, 64, 128, 256]) {
      const q = random([B, N, H, d], 4);
      const { ratios } = await pairedTimes(
        () => flashAttention(q, q, q),
        () => dispatching.flashAttention(q, q, q),
        quick ? 10 : 40,
        3,
      );
      const flops = 4 * B * H * N * N * d;
      rows.push([N, flops.toExponential(1), x(ratios, 0.5), `${x(ratios, 0.25)}–${x(ratios, 0.75)}`]);
      console.log(rows.at(-1)!.join("\t"));
    }
    log(
      `#### Break-even: the synchronous call vs the same call dispatched to the Workers (B = 1, H = 8, d = 64); ` +
        `the pool runs calls below ${POOL_TUNING.inlineFlops.toExponential(0)} flops on the calling thread`,
    );
    log();
    log(table(["N", "flops", "1 thread ms / dispatched ms (median)", "quartiles"], rows));
    log();
  }

  // 3. Decode over a KV cache.
  {
    const [H, Hkv, d, maxLen] = quick ? [32, 8, 128, 4096] : [32, 8, 128, 32768];
    const q = random([1, 1, H, d], 5);
    const kCache = random([1, maxLen, Hkv, d], 6);
    const vCache = random([1, maxLen, Hkv, d], 7);
    const config = { batch: 1, maxLen, kvHeads: Hkv, headDim: d };
    const cache = createKvCache(config);
    const shared = pool.createKvCache(config);
    for (const c of [cache, shared]) c.append(kCache, vCache);
    const kvBytes = 2 * maxLen * Hkv * d * 4;

    // The probe: stream a buffer of the cache's size with the same build flags as the kernels.
    const probeWasm = await compile(".", undefined, "bench/probes/read.ts");
    const { instance } = await WebAssembly.instantiate(probeWasm as Uint8Array<ArrayBuffer>, {});
    const probe = instance.exports as unknown as {
      memory: WebAssembly.Memory;
      readSum(ptr: number, bytes: number): number;
    };
    probe.memory.grow(Math.ceil((kvBytes + 65536) / 65536));
    new Float32Array(probe.memory.buffer, 65536, kvBytes / 4).fill(1);
    const probeMs: number[] = [];
    for (let i = 0; i < (quick ? 5 : 15); i++) {
      const start = performance.now();
      if (probe.readSum(65536, kvBytes) !== kvBytes / 4) throw new Error("the probe misread");
      probeMs.push(performance.now() - start);
    }

    const same = (a: Float32Array, b: Float32Array) => a.every((v, i) => Object.is(v, b[i]));
    const owned = flashAttentionWithKvCache(q, kCache, vCache);
    if (!same(flashAttentionWithKvCache(q, cache).data, owned.data)) throw new Error("the HBM cache's bits differ");
    const pairs = quick ? 6 : 20;
    const copying = await pairedTimes(
      () => flashAttentionWithKvCache(q, kCache, vCache),
      () => flashAttentionWithKvCache(q, cache),
      pairs,
      2,
    );
    const pooled = await pairedTimes(
      () => flashAttentionWithKvCache(q, cache),
      () => pool.flashAttentionWithKvCache(q, shared),
      pairs,
      2,
    );
    const probeMedian = median(probeMs);
    const residentMs = median([...copying.msB, ...pooled.msA]);
    /** A table row: what, its median ms a step, its K/V GB/s and that as a share of the probe's. */
    const row = (what: string, ms: number) => [
      what,
      ms.toFixed(2),
      (kvBytes / ms / 1e6).toFixed(1),
      `${(probeMedian / ms * 100).toFixed(0)}%`,
    ];
    log(
      `#### Decode step: Nq = 1, H = ${H}, Hkv = ${Hkv}, d = ${d}, ${maxLen} cached positions (${
        (kvBytes / 2 ** 20).toFixed(0)
      } MiB of K and V per step)`,
    );
    log();
    log(
      table(["what", "ms per step (median)", "K/V GB/s", "of the probe"], [
        row("wasm memory-read probe (1 thread, 128-bit loads)", probeMedian),
        row("caller-owned cache (copied into wasm memory each step)", median(copying.msA)),
        row("createKvCache (read in place), 1 thread", residentMs),
        row(`pool.createKvCache, ${threads} Workers`, median(pooled.msB)),
      ]),
    );
    log();
    log(
      `Cache in HBM vs caller-owned: ${x(copying.ratios, 0.5)} faster (quartiles ${x(copying.ratios, 0.25)}–${
        x(copying.ratios, 0.75)
      }); pool vs one thread on the HBM cache: ${x(pooled.ratios, 0.5)} (quartiles ${x(pooled.ratios, 0.25)}–${
        x(pooled.ratios, 0.75)
      }), the pool splitting over the ${Hkv} K/V heads.`,
    );
    log();
    cache.free();
    shared.free();

    // One K/V head (MQA): fewer head groups than Workers, so the pool splits the keys (split-KV).
    const mqaConfig = { batch: 1, maxLen, kvHeads: 1, headDim: d };
    const mqa = createKvCache(mqaConfig);
    const mqaShared = pool.createKvCache(mqaConfig);
    const kOne = random([1, maxLen, 1, d], 8);
    const vOne = random([1, maxLen, 1, d], 9);
    for (const c of [mqa, mqaShared]) c.append(kOne, vOne);
    const q8 = random([1, 1, 8, d], 10);
    const split = await pairedTimes(
      () => flashAttentionWithKvCache(q8, mqa),
      () => pool.flashAttentionWithKvCache(q8, mqaShared),
      pairs,
      2,
    );
    const splits = (await pool.flashAttentionWithKvCache(q8, mqaShared, { stats: true })).stats!.written.partial > 0;
    if (!splits) throw new Error("the pool did not split the MQA decode step");
    log(
      `Split-KV: one K/V head (H = 8, Hkv = 1, ${maxLen} positions, ${
        (kvBytes / Hkv / 2 ** 20).toFixed(0)
      } MiB a step), the pool's automatic split over ${threads} Workers vs one thread: ${
        x(split.ratios, 0.5)
      } (quartiles ${x(split.ratios, 0.25)}–${x(split.ratios, 0.75)}), ${median(split.msA).toFixed(2)} → ${
        median(split.msB).toFixed(2)
      } ms a step.`,
    );
    log();
    mqa.free();
    mqaShared.free();
  }
} finally {
  await Promise.all([pool.close(), dispatching.close()]);
}

if (!quick) {
  writeSection("BENCHMARKS.md", `pool-${runtimeKey()}`, sections.join("\n"));
  console.log("\nwrote BENCHMARKS.md");
}

// 4. The longest sequence, on a fresh pool (so its memory growth is the call's own), in its own
// section of BENCHMARKS.md.
if (long) {
  const N = 262144;
  const fresh = await startPool(threads, POOL_TUNING);
  const longLines: string[] = [
    `### ${runtimeName()}: N = ${N}, H = 1, d = 64, causal, on a pool of ${threads} Workers`,
    "",
  ];
  try {
    const run = await runLongSequence(N, 64, fresh);
    const MiB = 2 ** 20;
    longLines.push(
      `CPU: ${cpuName()}.`,
      "",
      `- time: ${run.seconds.toFixed(1)} s, ${run.gflops.toFixed(1)} GFLOP/s`,
      `- inputs + output: ${(4 * N * 64 * 4 / MiB).toFixed(0)} MiB (naive attention's S alone: ${
        (N * N * 4 / 2 ** 30).toFixed(0)
      } GiB)`,
      `- peak RSS of the call beyond them: ${
        run.peakExtraBytes === undefined ? "not measurable here" : `${(run.peakExtraBytes / MiB).toFixed(0)} MiB`
      } (the pool stages every tensor into its shared memory once: q, k, v and O, 256 MiB here)`,
      `- ${run.sampledRows} sampled rows vs the f64 reference: max |error| ${
        run.maxError.toExponential(2)
      } (tolerance ${TOLERANCE})`,
    );
    console.log(longLines.join("\n"));
    if (!(run.maxError <= TOLERANCE)) throw new Error("the long sequence's sampled rows are off");
  } finally {
    await fresh.close();
  }
  writeSection("BENCHMARKS.md", `pool-long-${runtimeKey()}`, longLines.join("\n"));
}
