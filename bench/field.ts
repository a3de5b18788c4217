/**
 * The field benchmark: this library against onnxruntime's attention on the same inputs, forward,
 * B = 1, H = 8, d = 64, N ∈ {1024, …, 16384}, non-causal and causal. Engines:
 *
 * - ours, 1 thread: `flashAttention` (WebAssembly SIMD, synchronous);
 * - ours, pool: `createAttentionPool({ threads })` where this checkout has it (2 threads, and the
 *   machine's hardware concurrency if larger);
 * - onnxruntime-web (WebAssembly backend) with `env.wasm.numThreads` = 1 and 2;
 * - onnxruntime-node, the native CPU execution provider, with `intraOpNumThreads` = 1 and 2.
 *
 * onnxruntime runs its com.microsoft MultiHeadAttention contrib op (query, key, value [B, N, H·d];
 * causal through its `unidirectional` attribute) from a one-node model built in code
 * (bench/field/_onnx.ts). Each onnxruntime engine runs in its own process (bench/field/_engine.ts)
 * under the same runtime as this script; the onnxruntime packages live in bench/field/, outside
 * the root install, and are installed there on first use (`npm ci --prefix bench/field`).
 *
 * Every engine's first call at each shape is checked against the f64 reference on 64 sampled query
 * rows before anything is timed. Up to N = 8192 the engines' timed calls are interleaved, one call
 * each per round, so that the ratios in a row come from the same minutes of a shared host; at
 * N = 16384 they run one after the other, so that only one engine's memory is held at a time.
 * Writes the table into BENCHMARKS.md (section `field-<runtime>`).
 *
 *   npm run bench:field            deno task bench:field            bun bench/field.ts
 *   options: --quick (N = 256 and 512, few calls: a smoke run; nothing written), --no-write,
 *            --sizes=1024,2048 (those N only; nothing written)
 */
import { spawn, spawnSync } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { availableParallelism, cpus, loadavg } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import * as lib from "../mod.ts";
import type { AttentionOutput, FlashAttentionOptions, Tensor } from "../mod.ts";
import { referenceAttention } from "../src/reference.ts";
import { cpuName, median, runtimeKey, runtimeName, table, writeSection } from "./_report.ts";
import { d, flops, H, inputs, SAMPLED_ROWS, sampledRows, takeRows } from "./field/_problem.ts";
import type { Inputs } from "./field/_problem.ts";
import { decodeF32, REPLY_PREFIX } from "./field/_protocol.ts";
import type { OrtEngine, Reply, Request } from "./field/_protocol.ts";

const argv = process.argv.slice(2);
const quick = argv.includes("--quick");
const sizesArg = argv.find((a) => a.startsWith("--sizes="));
const FULL_SIZES = [1024, 2048, 4096, 8192, 16384];
const sizes = quick ? [256, 512] : sizesArg ? sizesArg.slice("--sizes=".length).split(",").map(Number) : FULL_SIZES;
const write = !argv.includes("--no-write") && !quick && !sizesArg;

/**
 * Largest |engine − f64 reference| accepted on the sampled rows. Outputs are convex combinations
 * of values in [−1, 1); f32 rounding of the scores (|S| ≤ 8 here) and of sums over ≤ 16384 keys
 * leaves errors near 1e-7 (printed per engine), so 1e-4 tolerates any summation order. It still
 * catches real mistakes: at N = 16384 the outputs are small (|O| ≤ 0.03, near-uniform averages of
 * many values), yet a scale 10% off moves them by about 7e-4, and a missing causal mask by 1e-2.
 */
const TOLERANCE = 1e-4;

/** Up to this N, engines alternate call by call; above it, one engine at a time (see the header). */
const INTERLEAVE_MAX_N = 8192;

/**
 * Calls per engine and shape: `warmups` untimed (the checked first call is one of them), then
 * `reps` timed, of which the median is reported. Fewer at large N to keep the full run near ten
 * minutes on a 2-core machine: at N = 16384 a call takes 5–30 s (ours on one thread ~30 s), so
 * there the checked call is the only warm-up and one call is timed.
 */
function schedule(N: number): { warmups: number; reps: number } {
  if (quick) return { warmups: 2, reps: 3 };
  if (N <= 1024) return { warmups: 2, reps: 9 };
  if (N <= 2048) return { warmups: 2, reps: 7 };
  if (N <= 4096) return { warmups: 2, reps: 5 };
  if (N <= 8192) return { warmups: 2, reps: 3 };
  return { warmups: 1, reps: 1 };
}

const fieldDir = fileURLToPath(new URL("./field/", import.meta.url));
const ORT_PACKAGES = ["onnxruntime-web", "onnxruntime-node"] as const;

/** Installs bench/field's pinned packages on first use, without onnxruntime-node's GPU download. */
function ensureInstalled(): void {
  const installed = ORT_PACKAGES.every((p) => existsSync(join(fieldDir, "node_modules", p, "package.json")));
  if (installed) return;
  console.log("installing onnxruntime into bench/field/node_modules (npm ci --prefix bench/field) …");
  // onnxruntime-node's install script would download CUDA binaries; its CPU binary is in the package.
  const result = spawnSync("npm", ["ci", "--prefix", fieldDir, "--no-audit", "--no-fund"], {
    stdio: "inherit",
    env: { ...process.env, ONNXRUNTIME_NODE_INSTALL: "skip" },
    shell: process.platform === "win32",
  });
  if (result.status !== 0) throw new Error(`npm ci --prefix bench/field failed (exit ${result.status})`);
}

function packageVersion(dir: string): string {
  return (JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { version: string }).version;
}

/** "0.1.0 at c8a2f1f", plus a mark when the library's files differ from that commit; the version alone without git. */
function checkoutVersion(root: string): string {
  const version = packageVersion(root);
  const git = (...args: string[]) => spawnSync("git", ["-C", root, ...args], { encoding: "utf8" });
  const head = git("rev-parse", "--short", "HEAD");
  if (head.status !== 0) return version;
  const dirty = git("status", "--porcelain", "--", "mod.ts", "src", "assembly").stdout.trim() !== "";
  return `${version} at ${head.stdout.trim()}${dirty ? " with uncommitted changes" : ""}`;
}

/** The CPU's wide-vector and FMA extensions (Linux /proc), or "" where that is not readable. */
function simdFeatures(): string {
  try {
    const flags = new Set(/^flags\s*:(.*)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1].trim().split(/\s+/));
    const have = ["avx2", "fma", "avx512f"].filter((f) => flags.has(f)).map((f) => f.toUpperCase());
    return `${have.join(", ")}${flags.has("avx512f") ? "" : " (no AVX-512)"}`;
  } catch {
    return "";
  }
}

/**
 * The 1-minute load average at the start of each shape. On a shared host other work changes the
 * numbers, the threaded ones most (with 2 cores, a load above ~2 means something else competed).
 */
const loadsSeen: number[] = [];

const errorText = (error: unknown): string => error instanceof Error ? error.message : String(error);

/** A failure message cut to a table cell: onnxruntime's file paths and C++ signatures dropped. */
function shortReason(message: string): string {
  let text = message.split("\n")[0];
  const at = text.lastIndexOf("ERROR_MESSAGE: ");
  if (at >= 0) text = text.slice(at + "ERROR_MESSAGE: ".length);
  if (/SafeIntOnOverflow/.test(text)) return "integer overflow (onnxruntime SafeInt)";
  text = text.replace(/^\S*[\\/]\S+:\d+\s+/, "").replace(/\|/g, "/");
  return text.length > 90 ? `${text.slice(0, 87)}…` : text;
}

/** One competitor: checked on its first call at a shape, then timed call by call. */
interface Engine {
  /** Its column in the table. */
  readonly column: string;
  /** Sets up the shape, runs it once and returns the sampled output rows; throws if it cannot. */
  prepare(N: number, causal: boolean, x: Inputs): Promise<Float32Array>;
  /** Wall time in ms of one call of the prepared shape. */
  call(): Promise<number>;
  /** Lets go of the shape's memory. */
  release(): Promise<void>;
  /** Ends the engine (its Workers or process). */
  close(): Promise<void>;
}

/** `flashAttention` on the calling thread. */
class OursEngine implements Engine {
  readonly column = "ours 1 thread";
  #run?: () => AttentionOutput;

  prepare(N: number, causal: boolean, x: Inputs): Promise<Float32Array> {
    this.#run = () => lib.flashAttention(x.q, x.k, x.v, { causal });
    return Promise.resolve(takeRows(this.#run().data, sampledRows(N)));
  }

  call(): Promise<number> {
    const run = this.#run!;
    const start = performance.now();
    run();
    return Promise.resolve(performance.now() - start);
  }

  release(): Promise<void> {
    this.#run = undefined;
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** The Worker pool's API as it is being added to mod.ts, declared here so this file runs before and after. */
interface AttentionPool {
  flashAttention(q: Tensor, k: Tensor, v: Tensor, options?: FlashAttentionOptions): Promise<AttentionOutput>;
  close(): Promise<void>;
}
type CreateAttentionPool = (options: { threads: number }) => Promise<AttentionPool>;

/** `createAttentionPool` if this checkout's mod.ts exports it, looked up at run time. */
function findCreatePool(): CreateAttentionPool | undefined {
  const create = (lib as Record<string, unknown>).createAttentionPool;
  return typeof create === "function" ? create as CreateAttentionPool : undefined;
}

/** `pool.flashAttention` on a pool of `threads` Workers, created once and reused for every shape. */
class PoolEngine implements Engine {
  readonly column: string;
  #pool?: Promise<AttentionPool>;
  #run?: () => Promise<AttentionOutput>;

  constructor(readonly create: CreateAttentionPool, readonly threads: number) {
    this.column = `ours pool (${threads})`;
  }

  async prepare(N: number, causal: boolean, x: Inputs): Promise<Float32Array> {
    this.#pool ??= this.create({ threads: this.threads });
    const pool = await this.#pool;
    this.#run = () => pool.flashAttention(x.q, x.k, x.v, { causal });
    const output = await this.#run();
    if (x.q.data.length === 0) throw new Error("pool.flashAttention detached the input arrays");
    return takeRows(output.data, sampledRows(N));
  }

  async call(): Promise<number> {
    const run = this.#run!;
    const start = performance.now();
    await run();
    return performance.now() - start;
  }

  release(): Promise<void> {
    this.#run = undefined;
    return Promise.resolve();
  }

  async close(): Promise<void> {
    const pool = this.#pool;
    this.#pool = undefined;
    if (pool) await (await pool).close();
  }
}

/** How to start another process of the runtime running this script. */
function runtimeCommand(script: string, args: string[]): [string, string[]] {
  const key = runtimeKey();
  if (key === "deno") return [process.execPath, ["run", "-A", script, ...args]];
  if (key === "bun") return [process.execPath, [script, ...args]];
  // Node: execArgv carries tsx's loader (npx tsx, node --import tsx), so the child can load .ts too.
  return [process.execPath, [...process.execArgv, script, ...args]];
}

/** An onnxruntime engine in its own process (bench/field/_engine.ts), restarted after any failure. */
class ProcessEngine implements Engine {
  readonly column: string;
  #child?: ChildProcess;
  #waiting?: { resolve: (reply: Reply) => void; reject: (error: Error) => void };

  constructor(readonly engine: OrtEngine, readonly threads: number) {
    this.column = `${engine} ${threads} thread${threads === 1 ? "" : "s"}`;
  }

  #next(): Promise<Reply> {
    return new Promise((resolve, reject) => {
      if (!this.#child) reject(new Error("engine process is not running"));
      else this.#waiting = { resolve, reject };
    });
  }

  async #send(request: Request): Promise<Reply> {
    const child = this.#child;
    if (!child) throw new Error("engine process is not running");
    const reply = this.#next();
    child.stdin!.write(`${JSON.stringify(request)}\n`);
    return await reply;
  }

  async #start(): Promise<void> {
    const [cmd, args] = runtimeCommand(join(fieldDir, "_engine.ts"), [this.engine, String(this.threads)]);
    const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
    this.#child = child;
    const first = this.#next();
    createInterface({ input: child.stdout! }).on("line", (line) => {
      if (line.startsWith(REPLY_PREFIX)) {
        const waiting = this.#waiting;
        this.#waiting = undefined;
        waiting?.resolve(JSON.parse(line.slice(REPLY_PREFIX.length)) as Reply);
      } else {
        console.log(`  [${this.column}] ${line}`);
      }
    });
    createInterface({ input: child.stderr! }).on("line", (line) => console.error(`  [${this.column}] ${line}`));
    const gone = (why: string) => {
      if (this.#child === child) this.#child = undefined;
      const waiting = this.#waiting;
      this.#waiting = undefined;
      waiting?.reject(new Error(why));
    };
    child.on("error", (error) => gone(`cannot run ${cmd}: ${error.message}`));
    child.on("exit", (code, signal) => gone(`engine process exited (${signal ?? `code ${code}`})`));
    const reply = await first;
    if (reply.kind !== "ready") {
      await this.close();
      throw new Error(reply.kind === "error" ? reply.error : `unexpected reply ${reply.kind}`);
    }
  }

  async prepare(N: number, causal: boolean): Promise<Float32Array> {
    if (!this.#child) await this.#start();
    const reply = await this.#send({ cmd: "prepare", N, causal });
    if (reply.kind === "error") throw new Error(reply.error);
    if (reply.kind !== "prepared") throw new Error(`unexpected reply ${reply.kind}`);
    if (reply.threads !== this.threads) {
      throw new Error(`runs ${reply.threads} thread${reply.threads === 1 ? "" : "s"}, not ${this.threads}, here`);
    }
    return decodeF32(reply.rows);
  }

  async call(): Promise<number> {
    const reply = await this.#send({ cmd: "call" });
    if (reply.kind === "error") throw new Error(reply.error);
    if (reply.kind !== "timed") throw new Error(`unexpected reply ${reply.kind}`);
    return reply.ms;
  }

  async release(): Promise<void> {
    if (this.#child) await this.#send({ cmd: "release" });
  }

  /** Ends the process: stdin closed (it exits by itself), or killed if it has not gone in 10 s. */
  async close(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.stdin!.end();
    const timer = setTimeout(() => child.kill(), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

/** The outcome of one engine at one shape. */
type Cell =
  | { ms: number; calls: number; gflops: number; error: number }
  | { failure: string };

/** The f64 reference on the sampled rows: query row i sees keys 0..N − 1, or 0..i when causal. */
function referenceRows(x: Inputs, N: number, causal: boolean, rows: readonly number[]): Float64Array {
  const width = H * d;
  const out = new Float64Array(rows.length * width);
  rows.forEach((row, i) => {
    // A one-query problem over exactly the keys row i may see needs no causal option (whose
    // alignment would then be bottom-right over that prefix: every key visible, as wanted).
    const keys = causal ? row + 1 : N;
    const prefix = (t: Tensor): Tensor => ({ data: t.data.subarray(0, keys * width), shape: [1, keys, H, d] });
    const q = { data: x.q.data.subarray(row * width, (row + 1) * width), shape: [1, 1, H, d] };
    out.set(referenceAttention(q, prefix(x.k), prefix(x.v)).data, i * width);
  });
  return out;
}

function maxAbsError(got: Float32Array, want: Float64Array): number {
  if (got.length !== want.length) return Infinity;
  let max = 0;
  // NaN fails the check: `!(e <= max)` is true for it.
  for (let i = 0; i < got.length; i++) {
    const e = Math.abs(got[i] - want[i]);
    if (!(e <= max)) max = Number.isNaN(e) ? Infinity : e;
  }
  return max;
}

/**
 * Checks and times every engine at one shape. Returns a cell per engine: GFLOP/s from the median
 * of the timed calls, or why it has none.
 */
async function runShape(engines: readonly Engine[], N: number, causal: boolean): Promise<Map<Engine, Cell>> {
  loadsSeen.push(loadavg()[0]);
  const shapeStart = performance.now();
  const label = `N = ${N}, ${causal ? "causal" : "non-causal"} (load average ${loadsSeen.at(-1)!.toFixed(2)})`;
  const x = inputs(N);
  const rows = sampledRows(N);
  let start = performance.now();
  const want = referenceRows(x, N, causal, rows);
  console.log(`${label}: f64 reference on ${rows.length} rows (${((performance.now() - start) / 1000).toFixed(1)} s)`);
  const { warmups, reps } = schedule(N);
  const cells = new Map<Engine, Cell>();
  const times = new Map<Engine, number[]>();
  const errors = new Map<Engine, number>();

  const fail = async (engine: Engine, error: unknown) => {
    cells.set(engine, { failure: `fails: ${shortReason(errorText(error))}` });
    console.log(`  ${engine.column.padEnd(20)} fails: ${errorText(error).split("\n")[0].slice(0, 300)}`);
    times.delete(engine);
    // A process engine restarts cleanly for the next shape; an in-process one just lets go.
    await (engine instanceof ProcessEngine ? engine.close() : engine.release().catch(() => {}));
  };
  /** The checked first call: true when the engine may be timed. */
  const check = async (engine: Engine): Promise<boolean> => {
    try {
      start = performance.now();
      const got = await engine.prepare(N, causal, x);
      const seconds = (performance.now() - start) / 1000;
      const error = maxAbsError(got, want);
      const ok = error <= TOLERANCE;
      console.log(
        `  ${engine.column.padEnd(20)} max |error| ${error.toExponential(2)} ${ok ? "ok" : "TOO LARGE"}` +
          ` (first call ${seconds.toFixed(2)} s)`,
      );
      if (!ok) {
        cells.set(engine, { failure: `wrong: max error ${error.toExponential(1)}` });
        await engine.release();
        return false;
      }
      errors.set(engine, error);
      times.set(engine, []);
      return true;
    } catch (error) {
      await fail(engine, error);
      return false;
    }
  };
  /** One call; its time is kept when `timed`. */
  const step = async (engine: Engine, timed: boolean): Promise<void> => {
    if (!times.has(engine)) return;
    try {
      const ms = await engine.call();
      if (timed) times.get(engine)!.push(ms);
    } catch (error) {
      await fail(engine, error);
    }
  };

  if (N <= INTERLEAVE_MAX_N) {
    for (const engine of engines) await check(engine);
    for (let w = 1; w < warmups; w++) for (const engine of engines) await step(engine, false);
    // Each round starts with the next engine, so none always runs right after the same one.
    for (let r = 0; r < reps; r++) {
      for (let i = 0; i < engines.length; i++) await step(engines[(r + i) % engines.length], true);
    }
    for (const engine of engines) if (times.has(engine)) await engine.release();
  } else {
    for (const engine of engines) {
      if (!await check(engine)) continue;
      for (let w = 1; w < warmups; w++) await step(engine, false);
      for (let r = 0; r < reps; r++) await step(engine, true);
      if (times.has(engine)) await engine.release();
    }
  }

  for (const [engine, ms] of times) {
    const m = median(ms);
    const gflops = flops(N, causal) / (m * 1e6);
    cells.set(engine, { ms: m, calls: ms.length, gflops, error: errors.get(engine)! });
    console.log(
      `  ${engine.column.padEnd(20)} median ${m.toFixed(1)} ms of ${ms.length} call${ms.length === 1 ? "" : "s"}` +
        `: ${gflops.toFixed(1)} GFLOP/s`,
    );
  }
  console.log(`  (${((performance.now() - shapeStart) / 1000).toFixed(0)} s for this shape)`);
  return cells;
}

const gflopsCell = (cell: Cell | undefined): string =>
  cell === undefined ? "—" : "failure" in cell ? cell.failure : cell.gflops.toFixed(1);

/** A / B of two engines' GFLOP/s, or "—" when either has none. */
function ratioCell(a: Cell | undefined, b: Cell | undefined): string {
  if (!a || !b || "failure" in a || "failure" in b) return "—";
  return `${(a.gflops / b.gflops).toFixed(2)}×`;
}

// ── main ──

ensureInstalled();
const versions = {
  ours: checkoutVersion(fileURLToPath(new URL("..", import.meta.url))),
  web: packageVersion(join(fieldDir, "node_modules", "onnxruntime-web")),
  node: packageVersion(join(fieldDir, "node_modules", "onnxruntime-node")),
};
const hardwareThreads = availableParallelism?.() ?? cpus().length;
const poolThreads = [...new Set([2, hardwareThreads])].filter((t) => t >= 2).sort((a, b) => a - b);
const createPool = findCreatePool();

const ours = new OursEngine();
const pools = createPool ? poolThreads.map((t) => new PoolEngine(createPool, t)) : [];
const ortWeb = [1, 2].map((t) => new ProcessEngine("ort-web", t));
const ortNode = [1, 2].map((t) => new ProcessEngine("ort-node", t));
const engines: Engine[] = [ours, ...pools, ...ortWeb, ...ortNode];

const simd = simdFeatures();
const poolLine = createPool
  ? `pool: createAttentionPool with ${poolThreads.join(" and ")} threads`
  : "pool: not available in this checkout";
const header = [
  `field benchmark — B = 1, H = ${H}, d = ${d}, f32, forward`,
  `runtime: ${runtimeName()}; CPU: ${cpuName()}${simd ? `; ${simd}` : ""}`,
  `versions: @flash/attention ${versions.ours}, onnxruntime-web ${versions.web}, onnxruntime-node ${versions.node}`,
  poolLine,
];
console.log(`${header.join("\n")}\n`);

const results: { N: number; causal: boolean; cells: Map<Engine, Cell> }[] = [];
const started = performance.now();
try {
  for (const N of sizes) {
    for (const causal of [false, true]) results.push({ N, causal, cells: await runShape(engines, N, causal) });
  }
} finally {
  for (const engine of engines) await engine.close();
}
const minutes = (performance.now() - started) / 60000;

const pool2 = pools.find((p) => p.threads === 2);
const [web1, web2] = ortWeb;
const columns = ["N", "causal", ...engines.map((e) => e.column)];
if (!createPool) columns.splice(3, 0, "ours pool (2)");
columns.push("pool / ort-web 2 threads", "ours 1 thread / ort-web 1 thread");
const rows = results.map(({ N, causal, cells }) => {
  const row = [N, causal ? "yes" : "no", ...engines.map((e) => gflopsCell(cells.get(e)))];
  if (!createPool) row.splice(3, 0, "n/a");
  return [...row, ratioCell(pool2 && cells.get(pool2), cells.get(web2)), ratioCell(cells.get(ours), cells.get(web1))];
});
const errorsSeen = results.flatMap(({ cells }) => [...cells.values()].flatMap((c) => "error" in c ? [c.error] : []));
const worst = errorsSeen.length ? Math.max(...errorsSeen).toExponential(1) : "—";
const callsLine = sizes
  .map((N) => `${schedule(N).warmups} + ${schedule(N).reps} at N = ${N}`)
  .join(", ");
const poolNote = createPool
  ? `Pool: createAttentionPool with ${poolThreads.join(" and ")} threads.`
  : "Pool: not available in this checkout.";
const notes = [
  `CPU: ${cpuName()}${simd ? `, ${simd}` : ""}. B = 1, H = ${H}, d = ${d}, f32, forward.`,
  `Versions: @flash/attention ${versions.ours}, onnxruntime-web ${versions.web}, ` +
  `onnxruntime-node ${versions.node}. ${poolNote}`,
  "",
  "GFLOP/s = 4·B·H·N²·d (half for causal) / median wall time of one call, from inputs in JS arrays to the",
  "output in one, as a caller sees it; the ratio columns divide GFLOP/s (above 1: the first is faster).",
  "onnxruntime runs its com.microsoft MultiHeadAttention op (query, key, value [B, N, H·d], causal through",
  "`unidirectional` = 1) from a one-node model built in code: onnxruntime-web on its WebAssembly backend",
  "(`env.wasm.numThreads`), onnxruntime-node on its native CPU execution provider (`intraOpNumThreads`),",
  "whose kernels use the CPU's widest vectors and fused multiply-add (AVX2 + FMA here, AVX-512 where present),",
  "which WebAssembly cannot express: its vectors are 128-bit, and its only multiply-add (relaxed SIMD's",
  "relaxed_madd) is used neither by ours (baseline SIMD) nor by this onnxruntime-web build (it loads in Node 20,",
  "whose V8 rejects relaxed SIMD).",
  `Calls per engine (untimed, the first one checked + timed): ${callsLine}.`,
  `Engines alternate call by call up to N = ${INTERLEAVE_MAX_N}, and run one after another above it (memory).`,
  `Every engine's first call at each shape is checked against the f64 reference on ${SAMPLED_ROWS} sampled query`,
  `rows (tolerance ${TOLERANCE.toExponential(0)} absolute); the largest error seen was ${worst}.`,
  `Whole run: ${minutes.toFixed(1)} min; 1-minute load average at the start of each shape: ` +
  `${Math.min(...loadsSeen).toFixed(2)}–${Math.max(...loadsSeen).toFixed(2)} (${hardwareThreads} logical cores).`,
];
const tableText = table(columns, rows);
const body = [`### ${runtimeName()}`, "", ...notes, "", tableText].join("\n");
console.log(`\n${tableText}`);
if (write) {
  writeSection("BENCHMARKS.md", `field-${runtimeKey()}`, body);
  console.log("\nwrote BENCHMARKS.md");
}
process.exit(0);
