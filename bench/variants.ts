/**
 * Benchmarks of the variants: sliding window vs causal, GQA vs MHA, and decode steps over a KV
 * cache with and without split-KV. Prints medians with GFLOP/s (and GB/s of K/V for decoding)
 * and writes them into BENCHMARKS.md.
 *
 *   npx tsx bench/variants.ts       deno task bench:variants       bun bench/variants.ts
 *   --quick: small sizes only, nothing written
 */
import process from "node:process";
import { chooseSplits, flashAttention, flashAttentionWithKvCache } from "../mod.ts";
import { cpuName, measure, random, runtimeKey, runtimeName, table, writeSection } from "./_report.ts";

const quick = process.argv.includes("--quick");
const sections: string[] = [`### ${runtimeName()}`, "", `CPU: ${cpuName()}. f32, one thread, default arena.`, ""];
const log = (line: string) => {
  console.log(line);
  sections.push(line);
};

// 1. Sliding window vs causal: the window's cost grows with the window, not with N.
{
  const [B, H, d] = [1, 4, 64];
  const Ns = quick ? [1024, 2048] : [2048, 4096, 8192];
  const rows: (string | number)[][] = [];
  let causal8k = 0;
  let window8k = 0;
  for (const N of Ns) {
    const q = random([B, N, H, d], 1);
    const k = random([B, N, H, d], 2);
    const v = random([B, N, H, d], 3);
    const iterations = N >= 8192 ? 3 : 5;
    const causalMs = await measure("causal", () => void flashAttention(q, k, v, { causal: true }), iterations, true);
    rows.push([N, "causal", causalMs.toFixed(1), ((2 * B * H * N * N * d) / causalMs / 1e6).toFixed(1)]);
    for (const left of [128, 256, 512]) {
      const ms = await measure(
        "window",
        () => void flashAttention(q, k, v, { windowSize: [left, 0] }),
        iterations * 2,
        true,
      );
      // visible keys: min(i, left) + 1 per query
      const pairs = N * (left + 1) - (left * (left + 1)) / 2;
      rows.push([N, `window [${left}, 0]`, ms.toFixed(2), ((4 * B * H * pairs * d) / ms / 1e6).toFixed(1)]);
      if (left === 256) window8k = ms;
    }
    causal8k = causalMs;
  }
  log(`Sliding window vs causal — B = ${B}, H = ${H}, d = ${d}; GFLOP/s counts visible (query, key) pairs.`);
  log("");
  log(table(["N", "mask", "ms", "GFLOP/s"], rows));
  log("");
  log(
    `At N = ${Ns.at(-1)}: causal / window [256, 0] = ${(causal8k / window8k).toFixed(1)}× ` +
      `(ideal ${((Ns.at(-1)! / 2) / 256).toFixed(0)}× from the count of visible pairs).`,
  );
  log("");
}

// 2. GQA vs MHA at the same number of query heads.
{
  const [B, H, d] = [1, 32, 64];
  const N = quick ? 256 : 1024;
  const q = random([B, N, H, d], 1);
  const rows: (string | number)[][] = [];
  let mhaMs = 0;
  for (const Hkv of [32, 8, 1]) {
    const k = random([B, N, Hkv, d], 2);
    const v = random([B, N, Hkv, d], 3);
    const ms = await measure(`Hkv ${Hkv}`, () => void flashAttention(q, k, v, { causal: true }), 5, true);
    if (Hkv === H) mhaMs = ms;
    const name = Hkv === H ? "MHA" : Hkv === 1 ? "MQA" : "GQA";
    rows.push([
      name,
      Hkv,
      ms.toFixed(1),
      ((2 * B * H * N * N * d) / ms / 1e6).toFixed(1),
      `${(mhaMs / ms).toFixed(2)}×`,
    ]);
  }
  log(`GQA vs MHA — B = ${B}, H = ${H}, N = ${N}, d = ${d}, causal.`);
  log("");
  log(table(["", "Hkv", "ms", "GFLOP/s", "speedup vs MHA"], rows));
  log("");
}

// 3. One decode step (Nq = 1) over a KV cache, with and without split-KV, and with the library's
// own choice (numSplits omitted), which is what users get by default.
{
  const [B, H, Hkv, d] = [1, 32, 8, 128];
  const lengths = quick ? [1024, 4096] : [1024, 4096, 16384, 65536];
  const rows: (string | number)[][] = [];
  for (const L of lengths) {
    const kCache = random([B, L, Hkv, d], 2);
    const vCache = random([B, L, Hkv, d], 3);
    const q = random([B, 1, H, d], 1);
    const cacheSeqLens = new Int32Array([L]);
    for (const numSplits of [undefined, 1, 4, 16]) {
      const options = numSplits === undefined ? { cacheSeqLens } : { cacheSeqLens, numSplits };
      const ms = await measure(
        "decode",
        () => void flashAttentionWithKvCache(q, kCache, vCache, options),
        L >= 65536 ? 5 : 20,
        true,
      );
      const flops = 4 * B * H * L * d;
      const kvBytes = 2 * B * L * Hkv * d * 4;
      const splits = numSplits ?? `auto (${chooseSplits(L)})`;
      rows.push([L, splits, ms.toFixed(2), (flops / ms / 1e6).toFixed(1), (kvBytes / ms / 1e6).toFixed(2)]);
    }
  }
  log(`Decode step — B = ${B}, Nq = 1, H = ${H}, Hkv = ${Hkv}, d = ${d}; the cache is copied into WebAssembly`);
  log("memory on every call (it lives in the caller's arrays), and the kernel then reads it once.");
  const choices = [...new Set(lengths.map((L) => chooseSplits(L)))];
  const autoSplits = `${choices.join(" or ")} split${choices.length === 1 && choices[0] === 1 ? "" : "s"}`;
  log(
    `"auto" omits numSplits, the library's default (chooseSplits): Flash-Decoding splits the keys to occupy ` +
      "several workers, but the kernels run on one thread today, where a split only adds its merge, so it chose " +
      `${autoSplits} here (in parentheses).`,
  );
  log("");
  log(table(["cache tokens", "splits", "ms", "GFLOP/s", "GB/s of K/V"], rows));
}

if (!quick) {
  writeSection("BENCHMARKS.md", `variants-${runtimeKey()}`, sections.join("\n"));
  console.log("\nwrote BENCHMARKS.md");
}
