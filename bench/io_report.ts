/**
 * The IO report: FlashAttention's IO analysis reproduced with this library's counted traffic.
 * Prints tables and writes SVG plots to docs/:
 *   1. docs/io_vs_n.svg        HBM traffic vs N, standard vs flash (d = 64), log-log;
 *   2. docs/io_vs_arena.svg    HBM traffic vs arena size M at N = 4096, and
 *      docs/time_vs_arena.svg  measured time on this CPU beside roofline estimates;
 *   3. docs/gpt2_medium.svg    the paper's GPT-2 medium setting, standard vs flash;
 *   4. docs/memory_hierarchy.svg  HBM, the arena and the two loops for one actual call.
 *
 *   npm run io-report         deno task io-report         bun bench/io_report.ts
 *
 * Flash traffic comes from the kernel's counters (flashAttention(..., { stats: true })) and standard
 * traffic from running Algorithm 0 with counted accesses (bench/_standard.ts) wherever a run is
 * affordable, and from flashAttentionIo / standardAttentionIo (equal to the counts byte for byte,
 * see tests/io_test.ts) elsewhere; the report says which. Device profiles are data:
 * bench/devices.json.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { flashAttention, flashAttentionBackward, type HalfTensor, type Tensor } from "../mod.ts";
import { convertInto } from "../src/_half.ts";
import { flashAttentionBackwardIo, flashAttentionIo, standardAttentionIo } from "../src/io.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import { cpuName, median, random, runtimeName, table } from "./_report.ts";
import { standardBackwardIo } from "../src/_cli/io.ts";
import { standardAttention } from "./_standard.ts";
import { barChart, binaryBytes, lineChart } from "./_svg.ts";

type Rate = "hbmBytesPerSecond" | "sramBytesPerSecond" | "flopsPerSecond";

/** A device profile of bench/devices.json: peak rates (null: unknown or measured) and their sources. */
type Device = Record<Rate, number | null> & {
  description: string;
  /** Rates to measure on the machine running the report, and how. */
  measure?: Partial<Record<Rate, { bufferBytes: number; samples: number }>>;
  sources: Record<string, string>;
};

const devices = JSON.parse(readFileSync(new URL("./devices.json", import.meta.url), "utf8")) as Record<string, Device>;
const { A100, H100, CPU } = devices;
const GB = 1e9;
const d = 64;
mkdirSync("docs", { recursive: true });
const out: string[] = [];
const log = (line = "") => {
  console.log(line);
  out.push(line);
};

/**
 * Copy bandwidth of this machine: bytes read + bytes written per second by Float32Array.set
 * between two buffers of `bufferBytes`, median of `samples` timings. Each timing copies at
 * least 64 MiB in total, so a cache-sized buffer is timed over many copies.
 */
function copyBandwidth(bufferBytes: number, samples: number): number {
  const src = new Float32Array(bufferBytes / 4).fill(1);
  const dst = new Float32Array(bufferBytes / 4);
  const copies = Math.ceil((64 << 20) / bufferBytes);
  dst.set(src); // touches every page once before timing
  const rates: number[] = [];
  for (let s = 0; s < samples; s++) {
    const start = performance.now();
    for (let c = 0; c < copies; c++) dst.set(src);
    rates.push((2 * bufferBytes * copies) / ((performance.now() - start) / 1e3));
  }
  return median(rates);
}

// The CPU's rates depend on the machine running the report, so the committed devices.json holds
// how they are measured, not a number; the values measured now go into docs/IO_REPORT.md.
for (const [rate, how] of Object.entries(CPU.measure ?? {}) as [Rate, { bufferBytes: number; samples: number }][]) {
  CPU[rate] = copyBandwidth(how.bufferBytes, how.samples);
}

interface Work {
  hbmBytes: number;
  /** Estimated bytes moved to and from on-chip memory (omitted: no SRAM term). */
  sramBytes?: number;
  /** Floating-point operations (omitted: no compute term). */
  flops?: number;
}

/**
 * Roofline estimate: the slowest of moving the HBM bytes, moving the SRAM bytes and doing the
 * flops, each at the device's peak and all perfectly overlapped, so a lower bound on any real
 * run. A term whose device figure is null (or whose work is not given) is left out.
 */
function roofline(device: Device, work: Work): { seconds: number; bound: string } {
  const terms: [string, number | undefined, number | null][] = [
    ["HBM", work.hbmBytes, device.hbmBytesPerSecond],
    ["SRAM", work.sramBytes, device.sramBytesPerSecond],
    ["compute", work.flops, device.flopsPerSecond],
  ];
  let best = { seconds: 0, bound: "" };
  for (const [bound, amount, rate] of terms) {
    if (amount !== undefined && rate !== null && amount / rate > best.seconds) best = { seconds: amount / rate, bound };
  }
  return best;
}

/** 1.5 T, 12.8 G: decimal prefixes, as the devices' rates are published. */
const rate = (x: number | null) =>
  x === null ? "—" : x >= 1e12 ? `${+(x / 1e12).toPrecision(3)} T` : `${+(x / 1e9).toPrecision(3)} G`;

log(`# IO report — ${runtimeName()}, ${cpuName()}`);
log();
log("## Devices (bench/devices.json; the CPU's rates measured by this run)");
log();
log(table(
  ["device", "HBM B/s", "SRAM B/s", "flop/s"],
  Object.entries(devices).map(([name, dev]) => [
    name,
    rate(dev.hbmBytesPerSecond),
    rate(dev.sramBytesPerSecond),
    rate(dev.flopsPerSecond),
  ]),
));
log();
for (const [name, dev] of Object.entries(devices)) {
  log(`- ${name}: ${dev.description}.`);
  for (const [field, source] of Object.entries(dev.sources)) log(`  - ${field}: ${source}.`);
}
log();

// 1. Traffic vs N.
{
  const Ns = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536];
  const rows: (string | number)[][] = [];
  const standard: [number, number][] = [];
  const standardCounted: [number, number][] = [];
  const flash: [number, number][] = [];
  const flashCounted: [number, number][] = [];
  for (const N of Ns) {
    const shape = { B: 1, H: 1, Nq: N, Nk: N, d };
    const s = standardAttentionIo(shape).totalBytes;
    const f = flashAttentionIo(shape).totalBytes;
    const [q, k, v] = [1, 2, 3].map((seed) => random([1, N, 1, d], seed));
    let [sc, fc] = ["", ""];
    if (N <= 4096) {
      const stats = flashAttention(q, k, v, { stats: true }).stats!;
      flashCounted.push([N, stats.totalBytes]);
      fc = binaryBytes(stats.totalBytes);
    }
    if (N <= 2048) {
      const { io } = standardAttention(q, k, v);
      standardCounted.push([N, io.totalBytes]);
      sc = binaryBytes(io.totalBytes);
    }
    standard.push([N, s]);
    flash.push([N, f]);
    rows.push([N, binaryBytes(s), sc, binaryBytes(f), fc, (s / f).toFixed(1)]);
  }
  log("## 1. HBM traffic vs sequence length (B = 1, H = 1, d = 64, f32, default 128 KiB arena)");
  log();
  log(table(
    ["N", "standard (closed form)", "standard (Algorithm 0 run)", "flash (closed form)", "flash (kernel)", "ratio"],
    rows,
  ));
  log();
  log("Runs are counted where affordable (Algorithm 0 in JS up to N = 2048, the kernel up to 4096).");
  log();
  writeFileSync(
    "docs/io_vs_n.svg",
    lineChart({
      title: "HBM traffic vs N (d = 64, f32, 128 KiB arena)",
      x: { label: "sequence length N", log: true },
      y: { label: "bytes moved between HBM and SRAM", log: true, bytes: true },
      series: [
        { name: "standard attention, Algorithm 0 closed form", points: standard, color: "#d62728" },
        { name: "standard, counted by running Algorithm 0", points: standardCounted, color: "#d62728", markers: true },
        { name: "flash, closed form", points: flash, color: "#1f77b4" },
        { name: "flash, counted by the kernel", points: flashCounted, color: "#1f77b4", markers: true },
      ],
    }),
  );
}

// 2. Traffic and time vs arena size at N = 4096 (the shape of the paper's Figure 2, middle).
{
  const N = 4096;
  const [q, k, v] = [1, 2, 3].map((seed) => random([1, N, 1, d], seed));
  const rows: (string | number)[][] = [];
  const traffic: [number, number][] = [];
  const series = { cpu: [] as [number, number][], cpuBound: [] as [number, number][], a100: [] as [number, number][] };
  for (let sramBytes = 16 * 1024; sramBytes <= 8 * 1024 * 1024; sramBytes *= 2) {
    const call = () => flashAttention(q, k, v, { sramBytes, stats: true }).stats!;
    const stats = call();
    const times: number[] = [];
    for (let i = 0; i < 3; i++) {
      const start = performance.now();
      call();
      times.push(performance.now() - start);
    }
    const ms = median(times);
    // On chip, every score element is written as S, read, written as P and read again.
    const work = { hbmBytes: stats.totalBytes, sramBytes: stats.totalBytes + 4 * 4 * N * N, flops: stats.flops };
    const cpuBound = roofline(CPU, work);
    const a100 = roofline(A100, work);
    traffic.push([sramBytes, stats.totalBytes]);
    series.cpu.push([sramBytes, ms]);
    series.cpuBound.push([sramBytes, cpuBound.seconds * 1e3]);
    series.a100.push([sramBytes, a100.seconds * 1e6]);
    rows.push([
      binaryBytes(sramBytes),
      stats.Br,
      stats.Bc,
      stats.Tr,
      binaryBytes(stats.totalBytes),
      ms.toFixed(0),
      `${(cpuBound.seconds * 1e3).toFixed(1)} (${cpuBound.bound})`,
      `${(a100.seconds * 1e6).toFixed(1)} (${a100.bound})`,
    ]);
  }
  log(`## 2. HBM traffic and time vs arena size M (N = ${N}, B = 1, H = 1, d = 64, counted by the kernel)`);
  log();
  log(table(
    [
      "M",
      "Br",
      "Bc",
      "Tr",
      "HBM bytes",
      "time on this CPU (ms)",
      "CPU bandwidth bound (ms)",
      "A100 roofline on these f32 bytes (µs)",
    ],
    rows,
  ));
  log();
  log(
    "The CPU bound is the measured copy bandwidths' roofline (no compute term): far below the measured time, so this " +
      "CPU is bound by the arithmetic, not by moving bytes. The A100 column applies the roofline to the f32 bytes " +
      "the kernel moved; section 3 counts fp16 runs (2-byte q, k, v, O), as the paper ran. SRAM bytes are " +
      "estimated as the HBM bytes plus four on-chip trips per score element (S written, read; P written, read).",
  );
  log();
  writeFileSync(
    "docs/io_vs_arena.svg",
    lineChart({
      title: `HBM traffic vs arena size M (N = ${N}, d = 64)`,
      x: { label: "arena size M", log: true, bytes: true },
      y: { label: "bytes moved between HBM and SRAM", log: true, bytes: true },
      legend: "top-right",
      series: [{ name: "flash, counted by the kernel", points: traffic, color: "#1f77b4" }],
    }),
  );
  // The series are in ms (CPU) and µs (A100): each is divided by its own value at the default
  // arena, so the chart compares shapes, not magnitudes (the table has the magnitudes).
  const reference = 128 * 1024;
  const normalise = (points: [number, number][]) => {
    const at = points.find(([m]) => m === reference)![1];
    return points.map(([m, t]): [number, number] => [m, t / at]);
  };
  writeFileSync(
    "docs/time_vs_arena.svg",
    lineChart({
      title: `Time vs arena size M (N = ${N}, d = 64), relative to M = 128 KiB`,
      x: { label: "arena size M", log: true, bytes: true },
      y: { label: "time ÷ the same series' time at M = 128 KiB", log: true },
      legend: "bottom-left",
      series: [
        { name: "measured on this CPU", points: normalise(series.cpu), color: "#2ca02c" },
        { name: "CPU bandwidth bound (measured copy rates)", points: normalise(series.cpuBound), color: "#8c564b" },
        { name: "A100 roofline estimate", points: normalise(series.a100), color: "#9467bd", dashed: true },
      ],
    }),
  );
}

// 3. GPT-2 medium: N = 1024, d = 64, 16 heads, batch 64, forward + backward.
{
  const [B, H, N] = [64, 16, 1024];
  const heads = B * H;
  const shape = { B, H, Nq: N, Nk: N, d };
  /** The f16 tensor nearest to t (round to nearest even), as the paper's fp16 runs store it. */
  const toF16 = (t: Tensor): HalfTensor => {
    const bits = new Uint16Array(t.data.length);
    convertInto(bits, "f16", 0, t.data, "f32", 0, t.data.length);
    return { data: bits, shape: t.shape, dtype: "f16" };
  };
  const values = (t: HalfTensor): Tensor => {
    const data = new Float32Array(t.data.length);
    convertInto(data, "f32", 0, t.data as Uint16Array, "f16", 0, data.length);
    return { data, shape: t.shape };
  };
  // Counted on one head and multiplied by the heads (every head moves the same bytes), once with
  // f32 tensors and once with fp16 ones: flash by the kernels' counters, standard by running
  // Algorithm 0. The fp16 runs store q, k, v, O and dO in 16 bits; lse, D, the backward's partial
  // dQ and its gradients stay f32 (as FlashAttention-2 keeps softmax_lse, softmax_d and dq_accum).
  const [q, k, v] = [1, 2, 3].map((seed) => random([1, N, 1, d], seed));
  const [q16, k16, v16] = [q, k, v].map(toF16);
  const dOut = random([1, N, 1, d], 4);
  const dOut16 = toF16(dOut);
  const bytes16 = { q: 2, k: 2, v: 2, o: 2 } as const;
  const one = flashAttention(q, k, v, { stats: true }).stats!;
  const one16 = flashAttention(q16, k16, v16, { outDtype: "f16", stats: true }).stats!;
  const withLse = flashAttention(q, k, v, { returnLse: true });
  const withLse16 = flashAttention(q16, k16, v16, { returnLse: true, outDtype: "f16" });
  const oneBackward = flashAttentionBackward(q, k, v, withLse, dOut, { stats: true }).stats!;
  const oneBackward16 = flashAttentionBackward(q16, k16, v16, withLse16, dOut16, { stats: true }).stats!;
  const counts = {
    standardForward: standardAttention(q, k, v).io.totalBytes * heads,
    standardForward16: standardAttention(values(q16), values(k16), values(v16), { elementBytes: 2 }).io.totalBytes *
      heads,
    flashForward: one.totalBytes * heads,
    flashForward16: one16.totalBytes * heads,
    flashBackward: oneBackward.totalBytes * heads,
    flashBackward16: oneBackward16.totalBytes * heads,
  };
  const closedForms = {
    standardForward: standardAttentionIo(shape).totalBytes,
    standardForward16: standardAttentionIo(shape, { elementBytes: { ...bytes16, scores: 2 } }).totalBytes,
    flashForward: flashAttentionIo(shape).totalBytes,
    flashForward16: flashAttentionIo(shape, { elementBytes: bytes16 }).totalBytes,
    flashBackward: flashAttentionBackwardIo(shape).totalBytes,
    flashBackward16: flashAttentionBackwardIo(shape, { elementBytes: { ...bytes16, dOut: 2 } }).totalBytes,
  };
  for (const [name, counted] of Object.entries(counts)) {
    const model = closedForms[name as keyof typeof closedForms];
    if (counted !== model) throw new Error(`${name}: counted ${counted} bytes, the closed form says ${model}`);
  }
  // Standard backward (the paper's Algorithm 3): read P, dO → dV; read dO, V → dP; read P, dP →
  // dS; read dS, K → dQ; read dS, Q → dK; in closed form (the CLI's), elements of 4 or 2 bytes.
  const standardBackward = standardBackwardIo(shape, 4).totalBytes;
  const standardBackward16 = standardBackwardIo(shape, 2).totalBytes;
  // Matmul flops, 2·N²·d each per head: standard does 2 forward and 4 backward (dV, dP, dQ, dK).
  // Flash's are as the kernels counted them: the backward recomputes S (5 products).
  const matmul = 2 * heads * N * N * d;
  const standardFlops = 6 * matmul;
  const flashFlops = (one.flops + oneBackward.flops) * heads;
  const standardTotal = counts.standardForward + standardBackward;
  const standardTotal16 = counts.standardForward16 + standardBackward16;
  const flashTotal = counts.flashForward + counts.flashBackward;
  const flashTotal16 = counts.flashForward16 + counts.flashBackward16;
  // On chip, in fp16 bytes: every HBM byte passes through once; flash also makes four trips per
  // score element in the forward (S, P written and read) and ten in the backward (S, P, dP written
  // and read; dS written and read twice, for dK and for dQ).
  const scoreElements = heads * N * N;
  const standardWork = { hbmBytes: standardTotal16, sramBytes: standardTotal16, flops: standardFlops };
  const flashWork = { hbmBytes: flashTotal16, sramBytes: flashTotal16 + 2 * 14 * scoreElements, flops: flashFlops };
  const gb = (bytes: number) => (bytes / GB).toFixed(1);
  const share = (part: number) => `${((100 * part) / flashTotal16).toFixed(0)}% of flash`;
  const rows = [
    [
      "standard forward, counted by running Algorithm 0",
      gb(counts.standardForward),
      gb(counts.standardForward16),
      "",
    ],
    ["standard backward, Algorithm 3 closed form", gb(standardBackward), gb(standardBackward16), ""],
    ["standard total", gb(standardTotal), gb(standardTotal16), ""],
    ["standard, the paper's measurement (A100, fp16)", "", "40.3", ""],
    [
      "flash forward, counted by the kernel",
      gb(counts.flashForward),
      gb(counts.flashForward16),
      share(counts.flashForward16),
    ],
    [
      "flash backward, counted by the kernels",
      gb(counts.flashBackward),
      gb(counts.flashBackward16),
      share(counts.flashBackward16),
    ],
    ["flash total", gb(flashTotal), gb(flashTotal16), ""],
    ["flash, the paper's measurement (A100, fp16)", "", "4.4", ""],
  ];
  const partial16 = (oneBackward16.read.partial + oneBackward16.written.partial) * heads;
  const ms = (device: Device, work: Work) => {
    const r = roofline(device, work);
    return `${(r.seconds * 1e3).toFixed(1)} (${r.bound})`;
  };
  const timeRows = [
    [
      "standard",
      ms(A100, standardWork),
      ms(H100, standardWork),
      ms(A100, { hbmBytes: 40.3 * GB }),
      "41.7",
    ],
    ["flash", ms(A100, flashWork), ms(H100, flashWork), ms(A100, { hbmBytes: 4.4 * GB }), "7.3"],
  ];
  log("## 3. GPT-2 medium attention (N = 1024, d = 64, 16 heads, batch 64), forward + backward");
  log();
  log(table(["HBM traffic (GB = 10⁹ bytes)", "f32 run, counted", "fp16 run, counted", "share"], rows));
  log();
  log(
    "The fp16 runs store q, k, v, O and dO (and, for standard attention, S and P) in 16 bits and count 2 bytes per " +
      "element; lse, D, the backward's partial dQ and its gradients are f32 (FlashAttention-2 keeps its lse, D " +
      `and dQ accumulator in f32 too). The partial dQ alone is ${gb(partial16)} GB of the fp16 backward, which ` +
      `therefore moves ${(100 * counts.flashBackward16 / counts.flashBackward).toFixed(0)}% of the f32 run's bytes, ` +
      "not half.",
  );
  log();
  log(table(
    [
      "roofline on the fp16 counts (ms)",
      "A100",
      "H100",
      "A100, HBM term on the paper's measured bytes",
      "paper's measured runtime (A100)",
    ],
    timeRows,
  ));
  log();
  log(
    `Matmul flops in these estimates: standard ${gb(standardFlops)} GFLOP, flash ${gb(flashFlops)} GFLOP (the ` +
      "paper's table lists 66.6 and 75.2 GFLOPs). SRAM bytes are estimated as the HBM bytes plus, for flash, 4 " +
      "forward and 10 backward on-chip trips per score element (2 bytes each). H100 has no SRAM term (no " +
      "published figure).",
  );
  log();
  log(
    `Flash forward: Br = ${one.Br}, Bc = ${one.Bc} from the default 128 KiB arena (Tr = ${one.Tr}), so K and V are ` +
      `read ${one.Tr} times per head. Flash backward: Br = Bc = ${oneBackward.Br} (Tr = Tc = ${oneBackward.Tc}): K ` +
      "and V are read once, Q and dO once per key block, and each tile's dQ rows are added into its key segment's " +
      "partial dQ (read and written back; `partial`), which a merge sums.",
  );
  log();
  writeFileSync(
    "docs/gpt2_medium.svg",
    barChart(
      "GPT-2 medium attention, forward + backward: HBM traffic",
      "GB (10⁹ bytes)",
      ["standard", "flash (counted)"],
      [
        { name: "ours, f32 run", values: [standardTotal / GB, flashTotal / GB], color: "#1f77b4" },
        { name: "ours, fp16 run", values: [standardTotal16 / GB, flashTotal16 / GB], color: "#aec7e8" },
        { name: "paper (A100, fp16, measured)", values: [40.3, 4.4], color: "#ff7f0e" },
      ],
    ),
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
  const dvP = Math.ceil(d / 8) * 8;
  const regions: [string, number][] = [
    [`Qiᵀ  ${d}×${Br}`, d * Br],
    [`Kj  ${Bc}×${d}`, Bc * d],
    [`Vj  ${Bc}×${dvP}`, Bc * dvP],
    [`Sᵀ / P  ${Bc}×${Br}`, Bc * Br],
    [`O  ${Br}×${dvP}`, Br * dvP],
  ];
  regions.push(["m, l, α, …", used / 4 - regions.reduce((a, [, floats]) => a + floats, 0)]);
  const colors = ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#dddddd"];
  const scale = 520 / (sramBytes / 4);
  let x = 60;
  const centers: number[] = [];
  const boxes = regions.map(([name, floats], i) => {
    const w = floats * scale;
    centers.push(x + w / 2);
    const box = `<rect x="${x}" y="230" width="${w}" height="60" fill="${colors[i]}" stroke="#555"/>` +
      `<text x="${x + w / 2}" y="${i % 2 ? 322 : 306}" text-anchor="middle" font-size="11">${name}</text>`;
    x += w;
    return box;
  });
  const arrow = (x1: number, y1: number, x2: number, y2: number, color: string) =>
    `<path d="M${x1},${y1} C${x1},${(y1 + y2) / 2} ${x2},${
      (y1 + y2) / 2
    } ${x2},${y2}" fill="none" stroke="${color}" stroke-width="2" marker-end="url(#a)"/>`;
  // The arrows run from HBM (bottom edge y = 140) to the tiles (top edge y = 230) through the
  // empty band between the two boxes; the SRAM caption sits below the tiles so none crosses it.
  const svg = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 640 440" font-family="sans-serif" font-size="13">`,
    `<rect width="640" height="440" fill="white"/>`,
    `<text x="320" y="24" text-anchor="middle" font-size="15">One call: N = ${N}, d = ${d}, arena M = ${
      binaryBytes(sramBytes)
    } → Br = ${Br}, Bc = ${Bc}</text>`,
    `<rect x="40" y="50" width="560" height="110" fill="#f4f4f4" stroke="#333"/>`,
    `<text x="50" y="70">HBM (WebAssembly linear memory): Q, K, V, O (${binaryBytes(4 * N * d)} each) and lse</text>`,
    ...["Q", "K", "V", "O"].map((t, i) =>
      `<rect x="${60 + i * 135}" y="85" width="120" height="55" fill="white" stroke="#555"/>` +
      `<text x="${120 + i * 135}" y="117" text-anchor="middle">${t}  ${N}×${d}</text>`
    ),
    `<rect x="40" y="200" width="560" height="160" fill="#eef6ee" stroke="#333"/>`,
    ...boxes,
    `<text x="50" y="350">SRAM arena: M = ${binaryBytes(sramBytes)}, ${
      binaryBytes(used)
    } used by this layout (drawn to scale)</text>`,
    arrow(120, 140, centers[0], 230, "#1f77b4"),
    arrow(255, 140, centers[1], 230, "#d62728"),
    arrow(390, 140, centers[2], 230, "#d62728"),
    arrow(centers[4], 230, 525, 140, "#1f77b4"),
    `<defs><marker id="a" markerWidth="8" markerHeight="8" refX="6" refY="3" orient="auto"><path d="M0,0 L6,3 L0,6 z"/></marker></defs>`,
    `<text x="50" y="395" fill="#1f77b4">outer loop: ${
      Math.ceil(N / Br)
    } query blocks (Tr) — Qi read once, O written once</text>`,
    `<text x="50" y="420" fill="#d62728">inner loop: ${
      Math.ceil(N / Bc)
    } key blocks (Tc) — Kj, Vj read once per query block</text>`,
    "</svg>",
  ].join("\n");
  writeFileSync("docs/memory_hierarchy.svg", svg + "\n");
}

writeFileSync("docs/IO_REPORT.md", out.join("\n") + "\n");
console.log("wrote docs/IO_REPORT.md and docs/*.svg");
