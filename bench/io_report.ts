/**
 * The IO report: FlashAttention's IO analysis reproduced with this library's counted traffic.
 * Prints tables and writes SVG plots to docs/:
 *   1. docs/io_vs_n.svg        HBM traffic vs N, standard vs flash (d = 64), log-log;
 *   2. docs/io_vs_arena.svg    HBM traffic vs arena size M at N = 4096, and
 *      docs/time_vs_arena.svg  measured time on this CPU and the A100 roofline estimate;
 *   3. docs/gpt2_medium.svg    the paper's GPT-2 medium setting, standard vs flash;
 *   4. docs/memory_hierarchy.svg  HBM, the arena and the two loops for one actual call.
 *
 *   npm run io-report         deno task io-report         bun bench/io_report.ts
 *
 * Flash traffic comes from the kernel's counters (flashAttention(..., { stats: true })) wherever a
 * run is affordable, and from flashAttentionIo (equal to the counters byte for byte, see
 * tests/io_test.ts) elsewhere; the report says which. Device profiles are data: bench/devices.json.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { flashAttention } from "../mod.ts";
import { flashAttentionIo, standardAttentionIo } from "../src/io.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import { cpuName, median, random, runtimeName, table } from "./_report.ts";
import { barChart, lineChart, si } from "./_svg.ts";

interface Device {
  description: string;
  hbmBytesPerSecond: number;
  sramBytesPerSecond: number | null;
  flopsPerSecond: number;
}
const devices = JSON.parse(readFileSync(new URL("./devices.json", import.meta.url), "utf8")) as Record<string, Device>;
const A100 = devices.A100;
const GB = 1e9;
const d = 64;
mkdirSync("docs", { recursive: true });
const out: string[] = [];
const log = (line = "") => {
  console.log(line);
  out.push(line);
};

/** Roofline time in seconds: the slower of moving the bytes and doing the flops. */
const roofline = (device: Device, bytes: number, flops: number) =>
  Math.max(bytes / device.hbmBytesPerSecond, flops / device.flopsPerSecond);

log(`# IO report — ${runtimeName()}, ${cpuName()}`);
log();

// 1. Traffic vs N.
{
  const Ns = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536];
  const rows: (string | number)[][] = [];
  const standard: [number, number][] = [];
  const flash: [number, number][] = [];
  const measured: [number, number][] = [];
  for (const N of Ns) {
    const shape = { B: 1, H: 1, Nq: N, Nk: N, d };
    const s = standardAttentionIo(shape).totalBytes;
    const f = flashAttentionIo(shape).totalBytes;
    let m = "";
    if (N <= 4096) {
      const q = random([1, N, 1, d], 1);
      const stats = flashAttention(q, random([1, N, 1, d], 2), random([1, N, 1, d], 3), { stats: true }).stats!;
      measured.push([N, stats.totalBytes]);
      m = si(stats.totalBytes);
    }
    standard.push([N, s]);
    flash.push([N, f]);
    rows.push([N, si(s), si(f), m, (s / f).toFixed(1)]);
  }
  log("## 1. HBM traffic vs sequence length (B = 1, H = 1, d = 64, f32, default 128 KiB arena)");
  log();
  log(table(["N", "standard bytes", "flash bytes (closed form)", "flash bytes (counted)", "standard / flash"], rows));
  log();
  writeFileSync(
    "docs/io_vs_n.svg",
    lineChart({
      title: "HBM traffic vs N (d = 64, f32, 128 KiB arena)",
      xLabel: "sequence length N",
      yLabel: "bytes moved between HBM and SRAM",
      xLog: true,
      yLog: true,
      series: [
        { name: "standard attention (Algorithm 0)", points: standard, color: "#d62728" },
        { name: "flash, closed form", points: flash, color: "#1f77b4" },
        { name: "flash, counted by the kernel", points: measured, color: "#1f77b4", markers: true },
      ],
    }),
  );
}

// 2. Traffic and time vs arena size at N = 4096 (the shape of the paper's Figure 2, middle).
{
  const N = 4096;
  const q = random([1, N, 1, d], 1);
  const k = random([1, N, 1, d], 2);
  const v = random([1, N, 1, d], 3);
  const rows: (string | number)[][] = [];
  const traffic: [number, number][] = [];
  const cpuMs: [number, number][] = [];
  const a100Us: [number, number][] = [];
  for (let sramBytes = 16 * 1024; sramBytes <= 8 * 1024 * 1024; sramBytes *= 2) {
    const run = () => flashAttention(q, k, v, { sramBytes, stats: true }).stats!;
    const stats = run();
    const times: number[] = [];
    for (let i = 0; i < 3; i++) {
      const start = performance.now();
      run();
      times.push(performance.now() - start);
    }
    const ms = median(times);
    const estimate = roofline(A100, stats.totalBytes, stats.flops) * 1e6;
    traffic.push([sramBytes, stats.totalBytes]);
    cpuMs.push([sramBytes, ms]);
    a100Us.push([sramBytes, estimate]);
    rows.push([
      si(sramBytes),
      stats.Br,
      stats.Bc,
      stats.Tr,
      si(stats.totalBytes),
      ms.toFixed(0),
      estimate.toFixed(1),
    ]);
  }
  log(`## 2. HBM traffic and time vs arena size M (N = ${N}, B = 1, H = 1, d = 64, counted by the kernel)`);
  log();
  log(table(["M (bytes)", "Br", "Bc", "Tr", "HBM bytes", "time on this CPU (ms)", "A100 roofline (µs)"], rows));
  log();
  writeFileSync(
    "docs/io_vs_arena.svg",
    lineChart({
      title: `HBM traffic vs arena size M (N = ${N}, d = 64)`,
      xLabel: "arena size M (bytes)",
      yLabel: "bytes moved between HBM and SRAM",
      xLog: true,
      yLog: true,
      series: [{ name: "flash, counted by the kernel", points: traffic, color: "#1f77b4" }],
    }),
  );
  writeFileSync(
    "docs/time_vs_arena.svg",
    lineChart({
      title: `Time vs arena size M (N = ${N}, d = 64)`,
      xLabel: "arena size M (bytes)",
      yLabel: "time (ms on this CPU; µs for the A100 estimate)",
      xLog: true,
      yLog: true,
      series: [
        { name: "measured on this CPU (ms)", points: cpuMs, color: "#2ca02c" },
        { name: "A100 roofline estimate (µs)", points: a100Us, color: "#9467bd", dashed: true },
      ],
    }),
  );
}

// 3. GPT-2 medium: N = 1024, d = 64, 16 heads, batch 64, forward + backward.
{
  const [B, H, N] = [64, 16, 1024];
  const heads = B * H;
  // Forward: counted per head by the kernel (one head is representative: every head moves the
  // same bytes), times the number of heads.
  const q = random([1, N, 1, d], 1);
  const one = flashAttention(q, random([1, N, 1, d], 2), random([1, N, 1, d], 3), { stats: true }).stats!;
  const flashForward = one.totalBytes * heads;
  const flashForwardFlops = one.flops * heads;
  // Backward (no backward kernel yet): FlashAttention-2's loop order in closed form — K, V read
  // and dK, dV written once; per key block Q, dO, lse and D read and dQ read and written; D =
  // rowsum(dO ∘ O) costs one read of O and dO. Same Br/Bc as the forward (roles swapped).
  const Tc = Math.ceil(N / one.Br);
  const flashBackward = 4 * heads * (2 * N * d + 2 * N * d + Tc * N * (d + d + 2 + 2 * d) + N * (2 * d + 1));
  // Standard backward (the paper's Algorithm 3): read P, dO → dV; read dO, V → dP; read P, dP →
  // dS; read dS, K → dQ; read dS, Q → dK.
  const standardForward = standardAttentionIo({ B, H, Nq: N, Nk: N, d }).totalBytes;
  const standardBackward = 4 * heads * (5 * N * N + 5 * N * d + 2 * N * N + 3 * N * d);
  // Matmul flops, 2·N²·d each per head: standard does 2 forward and 4 backward (dV, dP, dQ, dK);
  // flash recomputes S in the backward, one more. The forward's are as the kernel counted them.
  const matmul = 2 * heads * N * N * d;
  const standardFlops = 6 * matmul;
  const flashFlops = flashForwardFlops + 5 * matmul;
  const standardTotal = standardForward + standardBackward;
  const flashTotal = flashForward + flashBackward;
  const rows = [
    ["standard, ours (f32, counted as Algorithm 0 + 3)", (standardTotal / GB).toFixed(1)],
    ["standard, same count in fp16 (2-byte elements)", (standardTotal / 2 / GB).toFixed(1)],
    ["standard, the paper's measurement (A100, fp16)", "40.3"],
    ["flash, ours (f32: forward counted, backward closed form)", (flashTotal / GB).toFixed(1)],
    ["flash, same count in fp16", (flashTotal / 2 / GB).toFixed(1)],
    ["flash, the paper's measurement (A100, fp16)", "4.4"],
  ];
  const timeRows = [
    [
      "standard",
      (roofline(A100, standardTotal / 2, standardFlops) * 1e3).toFixed(1),
      "41.7",
    ],
    [
      "flash",
      (roofline(A100, flashTotal / 2, flashFlops) * 1e3).toFixed(1),
      "7.3",
    ],
  ];
  log("## 3. GPT-2 medium attention (N = 1024, d = 64, 16 heads, batch 64), forward + backward");
  log();
  log(table(["HBM traffic", "GB"], rows));
  log();
  log(table(["A100 roofline on the fp16 counts (ms)", "estimate", "paper's measured runtime"], timeRows));
  log();
  log(
    `Flash forward: Br = ${one.Br}, Bc = ${one.Bc} from the default 128 KiB arena (Tr = ${one.Tr}); ` +
      "the paper's kernel keeps larger blocks on chip, so it re-reads K and V fewer times.",
  );
  log();
  writeFileSync(
    "docs/gpt2_medium.svg",
    barChart("GPT-2 medium attention, forward + backward: HBM traffic (GB)", "GB", ["standard", "flash"], [
      { name: "ours, f32", values: [standardTotal / GB, flashTotal / GB], color: "#1f77b4" },
      { name: "ours, in fp16 bytes", values: [standardTotal / 2 / GB, flashTotal / 2 / GB], color: "#aec7e8" },
      { name: "paper (A100, fp16)", values: [40.3, 4.4], color: "#ff7f0e" },
    ]),
  );
}

// 4. The memory hierarchy of one call, drawn to the scale of its actual blocks.
{
  const N = 4096;
  const sramBytes = 128 * 1024;
  const kernels = loadKernels();
  const packed = kernels.blockSizes(sramBytes, d, d, false);
  const [Br, Bc] = [packed >>> 16, packed & 0xffff];
  const used = kernels.arenaBytes(Br, Bc, d, d, false);
  const regions: [string, number][] = [
    [`Qiᵀ  ${d}×${Br}`, d * Br],
    [`Kj  ${Bc}×${d}`, Bc * d],
    [`Vj  ${Bc}×${d}`, Bc * d],
    [`Sᵀ / P  ${Bc}×${Br}`, Bc * Br],
    [`O  ${Br}×${d}`, Br * d],
    ["m, l, α, …", (used / 4) - (2 * d * Br + 2 * Bc * d + Bc * Br)],
  ];
  const colors = ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#dddddd"];
  const scale = 520 / (sramBytes / 4);
  let x = 60;
  const centers: number[] = [];
  const boxes = regions.map(([name, floats], i) => {
    const w = floats * scale;
    centers.push(x + w / 2);
    const box = `<rect x="${x}" y="250" width="${w}" height="60" fill="${colors[i]}" stroke="#555"/>` +
      `<text x="${x + w / 2}" y="${i % 2 ? 342 : 326}" text-anchor="middle" font-size="11">${name}</text>`;
    x += w;
    return box;
  });
  const kib = (bytes: number) => `${(bytes / 1024).toFixed(0)} KiB`;
  const arrow = (x1: number, y1: number, x2: number, y2: number, color: string) =>
    `<path d="M${x1},${y1} C${x1},${(y1 + y2) / 2} ${x2},${
      (y1 + y2) / 2
    } ${x2},${y2}" fill="none" stroke="${color}" stroke-width="2" marker-end="url(#a)"/>`;
  const svg = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 640 420" font-family="sans-serif" font-size="13">`,
    `<rect width="640" height="420" fill="white"/>`,
    `<text x="320" y="24" text-anchor="middle" font-size="15">One call: N = ${N}, d = ${d}, arena M = ${
      kib(sramBytes)
    } → Br = ${Br}, Bc = ${Bc}</text>`,
    `<rect x="40" y="50" width="560" height="110" fill="#f4f4f4" stroke="#333"/>`,
    `<text x="50" y="70">HBM (WebAssembly linear memory): Q, K, V, O (${kib(4 * N * d)} each) and lse</text>`,
    ...["Q", "K", "V", "O"].map((t, i) =>
      `<rect x="${60 + i * 135}" y="85" width="120" height="55" fill="white" stroke="#555"/>` +
      `<text x="${120 + i * 135}" y="117" text-anchor="middle">${t}  ${N}×${d}</text>`
    ),
    `<rect x="40" y="200" width="560" height="150" fill="#eef6ee" stroke="#333"/>`,
    `<text x="50" y="220">SRAM arena: M = ${kib(sramBytes)}, ${kib(used)} used by this layout (drawn to scale)</text>`,
    ...boxes,
    arrow(120, 140, centers[0], 250, "#1f77b4"),
    arrow(255, 140, centers[1], 250, "#d62728"),
    arrow(390, 140, centers[2], 250, "#d62728"),
    arrow(centers[4], 250, 525, 140, "#1f77b4"),
    `<defs><marker id="a" markerWidth="8" markerHeight="8" refX="6" refY="3" orient="auto"><path d="M0,0 L6,3 L0,6 z"/></marker></defs>`,
    `<text x="50" y="380" fill="#1f77b4">outer loop: ${
      Math.ceil(N / Br)
    } query blocks (Tr) — Qi read once, O written once</text>`,
    `<text x="50" y="400" fill="#d62728">inner loop: ${
      Math.ceil(N / Bc)
    } key blocks (Tc) — Kj, Vj read once per query block</text>`,
    "</svg>",
  ].join("\n");
  writeFileSync("docs/memory_hierarchy.svg", svg + "\n");
}

writeFileSync("docs/IO_REPORT.md", out.join("\n") + "\n");
console.log("wrote docs/IO_REPORT.md and docs/*.svg");
