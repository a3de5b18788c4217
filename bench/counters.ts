/**
 * What the always-on HBM traffic counters cost: the forward pass through the library with the
 * kernels as built (counting) against the same sources with counting compiled out.
 *
 * 1. Copies assembly/ into a temporary directory and compiles it twice with _tools/_asc.ts (the
 *    compiler and flags of _tools/build_wasm.ts): as it is, and with the bodies of countAdd and countMax in hbm.ts, the only code that
 *    raises the counters, removed. The patch is an exact string replacement that fails loudly if
 *    hbm.ts changed, and the two builds must differ. The unpatched build is compared with the
 *    committed module; BENCHMARKS.md is only written when they are the same bytes.
 * 2. Loads two copies of the library (mod.ts and src/) side by side and gives each one module with
 *    `init(bytes)` (which only takes effect before a library's first call, hence the copies).
 * 3. Per shape, checks that both give bitwise equal outputs and that only the counting one counts
 *    (`stats`), warms both up, then times single calls in alternating pairs (AB, BA, AB, …) and
 *    reports each side's median, and the median and quartiles (25%, 75%) of the per-pair ratios
 *    counting / no counting (1.00: no difference).
 *
 *   npm run bench:counters       deno task bench:counters       bun bench/counters.ts
 *   options: --quick (tiny shapes, few pairs: a smoke run; nothing written), --no-write
 */
import { createHash } from "node:crypto";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath, pathToFileURL } from "node:url";
import { compile } from "../_tools/_asc.ts";
import type { AttentionStats } from "../mod.ts";
import { embeddedWasm } from "../src/wasm/loader.ts";
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
const write = !process.argv.includes("--no-write") && !quick;
const root = fileURLToPath(new URL("..", import.meta.url));
const GENERATED = "src/wasm/kernels.generated.ts";

/**
 * The counting code of assembly/hbm.ts, each function whole, and what replaces it. If hbm.ts
 * changes, update these; the script refuses to run rather than benchmark the same code twice.
 */
const PATCHES: readonly { from: string; to: string }[] = [
  {
    from: [
      "@inline export function countAdd(counters: usize, slot: i32, n: u64): void {",
      "  const at = counters + (<usize>slot << 3);",
      "  store<u64>(at, load<u64>(at) + n);",
      "}",
    ].join("\n"),
    to: "@inline export function countAdd(counters: usize, slot: i32, n: u64): void {}",
  },
  {
    from: [
      "@inline export function countMax(counters: usize, slot: i32, n: i32): void {",
      "  const at = counters + (<usize>slot << 3);",
      "  if (<u64>n > load<u64>(at)) store<u64>(at, <u64>n);",
      "}",
    ].join("\n"),
    to: "@inline export function countMax(counters: usize, slot: i32, n: i32): void {}",
  },
];

interface Shape {
  label: string;
  B: number;
  Nq: number;
  Nk: number;
  H: number;
  d: number;
  causal: boolean;
  pairs: number;
}

const [H, d] = [8, 64];
const SHAPES: Shape[] = quick
  ? [
    { label: "N = 64", B: 1, Nq: 64, Nk: 64, H, d, causal: false, pairs: 6 },
    { label: "N = 128, causal", B: 1, Nq: 128, Nk: 128, H, d, causal: true, pairs: 6 },
    { label: "Nq = 1, Nk = 256 (decode-like)", B: 1, Nq: 1, Nk: 256, H, d, causal: false, pairs: 6 },
  ]
  : [
    { label: "N = 512", B: 1, Nq: 512, Nk: 512, H, d, causal: false, pairs: 60 },
    { label: "N = 512, causal", B: 1, Nq: 512, Nk: 512, H, d, causal: true, pairs: 60 },
    { label: "N = 2048", B: 1, Nq: 2048, Nk: 2048, H, d, causal: false, pairs: 20 },
    { label: "N = 2048, causal", B: 1, Nq: 2048, Nk: 2048, H, d, causal: true, pairs: 20 },
    { label: "N = 2048, one head", B: 1, Nq: 2048, Nk: 2048, H: 1, d, causal: false, pairs: 40 },
    { label: "Nq = 1, Nk = 4096 (decode-like)", B: 1, Nq: 1, Nk: 4096, H, d, causal: false, pairs: 200 },
  ];
const WARMUP_CALLS = 3;

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

/** Replaces each patch's text, which must occur exactly once. */
function patchOut(source: string): string {
  for (const { from, to } of PATCHES) {
    const count = source.split(from).length - 1;
    if (count !== 1) {
      throw new Error(
        `assembly/hbm.ts: expected exactly one occurrence of\n${from}\nbut found ${count}; ` +
          "update PATCHES in bench/counters.ts to the current counting code",
      );
    }
    source = source.replace(from, to);
  }
  return source;
}

type Library = typeof import("../mod.ts");

/** A private copy of the library (mod.ts and src/) in `dir`, made ready with the module `wasm`. */
async function loadLibrary(dir: string, wasm: Uint8Array): Promise<Library> {
  cpSync(join(root, "mod.ts"), join(dir, "mod.ts"));
  cpSync(join(root, "src"), join(dir, "src"), { recursive: true });
  writeFileSync(join(dir, "package.json"), '{ "type": "module" }\n');
  const library: Library = await import(pathToFileURL(join(dir, "mod.ts")).href);
  await library.init(wasm);
  return library;
}

function counted(stats: AttentionStats): number {
  return stats.totalBytes + stats.tilesComputed + stats.flops + stats.sramPeakBytes;
}

// Build both modules and load both libraries.
const work = mkdtempSync(join(tmpdir(), "flash-counters-"));
let counting: Library;
let uncounted: Library;
let countingSha: string;
let uncountedSha: string;
let isCommitted: boolean;
try {
  const sources = join(work, "build");
  cpSync(join(root, "assembly"), join(sources, "assembly"), { recursive: true });
  const countingWasm = await compile(sources);
  const hbm = join(sources, "assembly", "hbm.ts");
  writeFileSync(hbm, patchOut(readFileSync(hbm, "utf8")));
  const uncountedWasm = await compile(sources);
  countingSha = sha256(countingWasm);
  uncountedSha = sha256(uncountedWasm);
  if (countingSha === uncountedSha) throw new Error("the patched build is identical to the unpatched one");
  isCommitted = countingSha === sha256(new Uint8Array(embeddedWasm()));
  counting = await loadLibrary(mkdtempSync(join(work, "counting-")), countingWasm);
  uncounted = await loadLibrary(mkdtempSync(join(work, "uncounted-")), uncountedWasm);
} finally {
  rmSync(work, { recursive: true, force: true });
}

console.log(`HBM counters on vs compiled out — f32, one thread, default arena (128 KiB)`);
console.log(`runtime: ${runtimeName()}; CPU: ${cpuName()}`);
console.log(`counting module:  sha256 ${countingSha}${isCommitted ? " (the committed module)" : ""}`);
console.log(`no-count module:  sha256 ${uncountedSha} (countAdd and countMax emptied)`);
if (!isCommitted) {
  console.log(`warning: assembly/ does not build to the module in ${GENERATED}; both sides are built from assembly/`);
}
console.log("");

const rows: (string | number)[][] = [];
for (const shape of SHAPES) {
  const { B, Nq, Nk, H, d, causal } = shape;
  const q = random([B, Nq, H, d], 1);
  const k = random([B, Nk, H, d], 2);
  const v = random([B, Nk, H, d], 3);

  // The two sides compute the same bits, and only one of them counts.
  const a = counting.flashAttention(q, k, v, { causal, stats: true });
  const b = uncounted.flashAttention(q, k, v, { causal, stats: true });
  if (!a.data.every((x, i) => Object.is(x, b.data[i]))) throw new Error(`${shape.label}: the outputs differ`);
  if (!(counted(a.stats!) > 0)) throw new Error(`${shape.label}: the counting module counted nothing`);
  if (counted(b.stats!) !== 0) throw new Error(`${shape.label}: the no-count module still counts`);

  const run = (library: Library) => () => void library.flashAttention(q, k, v, { causal });
  const { msA, msB, ratios } = await pairedTimes(run(counting), run(uncounted), shape.pairs, WARMUP_CALLS);
  const row = [
    shape.label,
    shape.pairs,
    median(msA).toFixed(2),
    median(msB).toFixed(2),
    quantile(ratios, 0.5).toFixed(3),
    `${quantile(ratios, 0.25).toFixed(3)}–${quantile(ratios, 0.75).toFixed(3)}`,
  ];
  rows.push(row);
  console.log(row.join("\t"));
}

const header = ["shape", "pairs", "counting ms", "no-count ms", "ratio (median)", "ratio quartiles (25%–75%)"];
const notes = [
  `B = 1, H = ${H} (unless the shape says otherwise), d = ${d}, f32, one thread, default arena (128 KiB);`,
  "flashAttention called through the library.",
  `Counting module: sha256 ${countingSha.slice(0, 16)}…${isCommitted ? " (the committed module)" : ""}.`,
  "No-count module: the same sources with the bodies of countAdd and countMax in assembly/hbm.ts removed",
  `(sha256 ${uncountedSha.slice(0, 16)}…).`,
  `After ${WARMUP_CALLS} warm-up calls of each, each pair times one call of each, alternating which goes first`,
  "(AB, BA, …). ms: medians over the pairs. Ratio: counting ms / no-count ms of each pair, its median and its",
  "quartiles (25% and 75%) as the spread; 1.000 is no difference. Even pair counts: as many AB as BA.",
];
console.log(`\n${table(header, rows)}`);
if (write && isCommitted) {
  writeSection(
    join(root, "BENCHMARKS.md"),
    `counters-${runtimeKey()}`,
    [
      `### ${runtimeName()}: HBM counters on vs compiled out`,
      "",
      `CPU: ${cpuName()}.`,
      ...notes,
      "",
      table(header, rows),
    ]
      .join("\n"),
  );
  console.log("\nwrote BENCHMARKS.md");
} else if (write) {
  console.log(`\nnot written to BENCHMARKS.md: these are not the committed module's numbers (run npm run build)`);
}
