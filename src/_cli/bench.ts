// `flash-attention bench`: times flashAttention (and its backward, and a pool of Workers) against
// naive attention (./naive.ts) in the same run, on seeded random inputs, and prints medians.

import { parseArgs } from "node:util";
import { flashAttentionBackward } from "../backward.ts";
import { DEFAULT_SRAM_BYTES, flashAttention } from "../flash_attention.ts";
import { type AttentionPool, createAttentionPool, POOL_MAX_THREADS, POOL_TUNING } from "../pool.ts";
import { byteSize, integer, integerList, parseWith, UsageError } from "./args.ts";
import { binaryBytes, formatMs, median, table, threeDigits } from "./format.ts";
import { naiveAttention, naiveAttentionBackward } from "./naive.ts";
import { progress, type Streams } from "./output.ts";
import { randomTensor, rng } from "./random.ts";
import { cpuName, runtimeName } from "./platform.ts";

/** The options of `bench`, as node:util's parseArgs takes them. */
export const BENCH_OPTIONS = {
  seq: { type: "string" },
  batch: { type: "string" },
  heads: { type: "string" },
  "kv-heads": { type: "string" },
  dim: { type: "string" },
  causal: { type: "boolean" },
  backward: { type: "boolean" },
  pool: { type: "string" },
  sram: { type: "string" },
  time: { type: "string" },
  iterations: { type: "string" },
  "baseline-max-seq": { type: "string" },
  seed: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** Below this many timed calls a shape is timed for longer than --time (unless one call already took longer). */
const MIN_CALLS = 3;
const DEFAULT_SEQ = [256, 1024];
const DEFAULT_TIME_MS = 1000;
const DEFAULT_BASELINE_MAX_SEQ = 1024;

/** The help of `bench`. */
export const BENCH_HELP = `Usage: flash-attention bench [options]

Times flashAttention on this machine against a naive f32 attention run in the same process on
the same random inputs (the naive one materialises the Nq × Nk scores of each head and skips no
masked work), and prints the median time, GFLOP/s and speedup of each.

Options:
  --seq <list>              sequence lengths N = Nq = Nk, comma-separated (default ${DEFAULT_SEQ.join(",")})
  --batch <n>               batch size B (default 1)
  --heads <n>               query heads H (default 8)
  --kv-heads <n>            key/value heads Hkv, a divisor of H (default H; fewer is GQA)
  --dim <n>                 head dim d (default 64)
  --causal                  causal mask
  --backward                also time flashAttentionBackward (and the naive backward)
  --pool[=<threads>]        also time a pool of Workers (createAttentionPool); default one per core
  --sram <size>             arena size, bytes or KiB/MiB: 131072, 128KiB, 1MiB (default 128KiB)
  --time <ms>               time each implementation for this long per shape (default ${DEFAULT_TIME_MS}),
                            at least ${MIN_CALLS} calls unless the warm-up call alone took longer
  --iterations <n>          time exactly n calls instead (after the warm-up)
  --baseline-max-seq <n>    skip the naive baseline above this N (default ${DEFAULT_BASELINE_MAX_SEQ}: about
                            4 s per call at H = 8, d = 64; 0 skips it always)
  --seed <n>                seed of the random inputs (default 1)
  -h, --help                show this help

GFLOP/s counts 4·B·H·N²·d flops for the forward (its two matrix products), half of that when
causal, and 2.5 times the forward for the backward. Progress goes to stderr: a bar on a terminal,
one line per shape otherwise.

Example: flash-attention bench --seq 1024,4096 --heads 8 --dim 64 --causal --pool`;

/** Marks a pool row whose calls ran on the calling thread. */
const INLINE_MARK = " *";

/** One implementation timed on one shape. */
interface Task {
  pass: "forward" | "backward";
  name: string;
  run: () => unknown;
  baseline: boolean;
}

/**
 * Times one function: one untimed warm-up call (a cold call can be many times slower: interpreted,
 * not yet optimised), then `iterations` timed calls, or timed calls for `timeMs`: at least
 * {@linkcode MIN_CALLS}, or one where the warm-up alone took `timeMs`.
 */
async function sample(run: () => unknown, timeMs: number, iterations: number | undefined): Promise<number[]> {
  const once = async () => {
    const start = performance.now();
    await run();
    return performance.now() - start;
  };
  const warmUp = await once();
  const atLeast = iterations ?? (warmUp < timeMs ? MIN_CALLS : 1);
  const times: number[] = [];
  const start = performance.now();
  while (times.length < atLeast || (iterations === undefined && performance.now() - start < timeMs)) {
    times.push(await once());
  }
  return times;
}

/** A tensor of seeded random entries in (−1, 1). */
const random = (shape: number[], seed: number) => randomTensor(rng(seed), shape);

/** What a bench run measures, read from its command line. */
interface Settings {
  sizes: number[];
  B: number;
  H: number;
  Hkv: number;
  d: number;
  causal: boolean;
  backward: boolean;
  /** Pool size: absent for no pool, null for the default size. */
  threads?: number | null;
  sramBytes: number;
  timeMs: number;
  iterations?: number;
  baselineMaxSeq: number;
  seed: number;
}

/** The settings of a command line, or undefined for --help. */
function readSettings(args: string[]): Settings | undefined {
  // "--pool" alone means "a pool of the default size": parseArgs has no optional values, so the
  // bare flag is given the empty value (arguments after a "--" terminator are left alone).
  const end = args.indexOf("--");
  const normalised = args.map((arg, i) => (arg === "--pool" && (end < 0 || i < end) ? "--pool=" : arg));
  const { values } = parseWith(() => parseArgs({ args: normalised, options: BENCH_OPTIONS, strict: true }));
  if (values.help) return undefined;
  const H = integer("--heads", values.heads, 8);
  const Hkv = integer("--kv-heads", values["kv-heads"], H);
  if (H % Hkv !== 0) throw new UsageError(`--kv-heads must divide --heads: --heads is ${H}, --kv-heads is ${Hkv}`);
  return {
    sizes: integerList("--seq", values.seq, DEFAULT_SEQ),
    B: integer("--batch", values.batch, 1),
    H,
    Hkv,
    d: integer("--dim", values.dim, 64),
    causal: values.causal ?? false,
    backward: values.backward ?? false,
    threads: values.pool === undefined
      ? undefined
      : values.pool === ""
      ? null
      : integer("--pool", values.pool, 0, 1, POOL_MAX_THREADS),
    sramBytes: byteSize("--sram", values.sram, DEFAULT_SRAM_BYTES),
    timeMs: integer("--time", values.time, DEFAULT_TIME_MS),
    iterations: values.iterations === undefined ? undefined : integer("--iterations", values.iterations, 1),
    baselineMaxSeq: integer("--baseline-max-seq", values["baseline-max-seq"], DEFAULT_BASELINE_MAX_SEQ, 0),
    seed: integer("--seed", values.seed, 1, 0, 2 ** 32 - 1),
  };
}

/** The implementations timed at one N, on inputs drawn for it, in the order the table lists them. */
function tasksFor(N: number, s: Settings, pool: AttentionPool | undefined): Task[] {
  const { B, H, Hkv, d, causal, sramBytes, seed } = s;
  const q = random([B, N, H, d], seed);
  const k = random([B, N, Hkv, d], seed + 1);
  const v = random([B, N, Hkv, d], seed + 2);
  // The pool runs calls below POOL_TUNING.inlineFlops on the calling thread (its flop count:
  // 4·B·H·N²·d forward, 10·B·H·N²·d backward, causal or not): such rows are marked.
  const poolName = (flops: number) =>
    `pool (${pool?.threads} Workers)${flops * B * H * N * N * d < POOL_TUNING.inlineFlops ? INLINE_MARK : ""}`;
  const tasks: Task[] = [
    { pass: "forward", name: "flash", run: () => flashAttention(q, k, v, { causal, sramBytes }), baseline: false },
  ];
  if (pool) {
    const run = () => pool.flashAttention(q, k, v, { causal, sramBytes });
    tasks.push({ pass: "forward", name: poolName(4), run, baseline: false });
  }
  tasks.push({ pass: "forward", name: "naive f32", run: () => naiveAttention(q, k, v, causal), baseline: true });
  if (!s.backward) return tasks;
  const o = flashAttention(q, k, v, { causal, sramBytes, returnLse: true });
  const dOut = random([B, N, H, d], seed + 3);
  const run = () => flashAttentionBackward(q, k, v, o, dOut, { causal, sramBytes });
  tasks.push({ pass: "backward", name: "flash", run, baseline: false });
  if (pool) {
    const run = () => pool.flashAttentionBackward(q, k, v, o, dOut, { causal, sramBytes });
    tasks.push({ pass: "backward", name: poolName(10), run, baseline: false });
  }
  const naive = () => naiveAttentionBackward(q, k, v, dOut, causal);
  tasks.push({ pass: "backward", name: "naive f32", run: naive, baseline: true });
  return tasks;
}

/**
 * Runs `flash-attention bench`.
 *
 * @param args The arguments after "bench".
 * @param streams Where to write.
 * @returns The exit code: 0.
 * @throws {UsageError} For a malformed command line.
 */
export async function bench(args: string[], streams: Streams): Promise<number> {
  const s = readSettings(args);
  if (s === undefined) {
    streams.stdout.write(`${BENCH_HELP}\n`);
    return 0;
  }
  const out = (line = "") => streams.stdout.write(`${line}\n`);
  const pool = s.threads === undefined ? undefined : await createAttentionPool(s.threads ? { threads: s.threads } : {});
  const perShape = (s.backward ? 2 : 1) * (pool ? 3 : 2);
  const bar = progress(streams.stderr, s.sizes.length * perShape);
  try {
    out(`flash-attention bench — ${runtimeName()}, ${cpuName()}`);
    out(
      `B = ${s.B}, H = ${s.H}, Hkv = ${s.Hkv}, d = ${s.d}, N ∈ {${s.sizes.join(", ")}}, ` +
        `${s.causal ? "causal" : "non-causal"}, f32, arena ${binaryBytes(s.sramBytes)}; ` +
        `flash on one thread${pool ? ` and on a pool of ${pool.threads} Workers` : ""}, ` +
        `${s.backward ? "forward and backward" : "forward"}`,
    );
    out(
      `baseline: naive f32 attention (materialises the scores) for N ≤ ${s.baselineMaxSeq}; times: median of ` +
        (s.iterations === undefined
          ? `the calls in ${s.timeMs} ms (at least ${MIN_CALLS}, or 1 where a call takes longer) after a warm-up call`
          : `${s.iterations} calls after a warm-up call`),
    );
    out();
    const rows: string[][] = [];
    let done = 0;
    for (const [index, N] of s.sizes.entries()) {
      const shape = `[${[s.B, N, s.H, s.d].join(", ")}]`;
      const forwardFlops = 4 * s.B * s.H * N * N * s.d * (s.causal ? 0.5 : 1);
      const tasks = tasksFor(N, s, pool);
      const medians = new Map<Task, { ms: number; calls: number }>();
      for (const task of tasks) {
        bar.update(done++, `N = ${N}: ${task.pass}, ${task.name}`);
        if (task.baseline && N > s.baselineMaxSeq) continue;
        const times = await sample(task.run, s.timeMs, s.iterations);
        medians.set(task, { ms: median(times), calls: times.length });
      }
      for (const task of tasks) {
        const timed = medians.get(task);
        if (!timed) {
          rows.push([shape, task.pass, task.name, "—", `skipped: N > ${s.baselineMaxSeq}`, "—", "—"]);
          continue;
        }
        const flops = task.pass === "forward" ? forwardFlops : 2.5 * forwardFlops;
        const naive = tasks.find((t) => t.baseline && t.pass === task.pass);
        const naiveMs = naive && medians.get(naive)?.ms;
        rows.push([
          shape,
          task.pass,
          task.name,
          String(timed.calls),
          formatMs(timed.ms),
          threeDigits(flops / (timed.ms * 1e6)),
          naiveMs === undefined ? "—" : `${threeDigits(naiveMs / timed.ms)}×`,
        ]);
      }
      bar.note(`bench: N = ${N} done (${index + 1}/${s.sizes.length})`);
    }
    bar.end();
    out(table(
      ["shape [B, N, H, d]", "pass", "implementation", "calls", "median ms", "GFLOP/s", "vs naive"],
      rows,
      ["l", "l", "l", "r", "r", "r", "r"],
    ));
    out();
    out(
      `GFLOP/s: 4·B·H·N²·d flops for the forward${s.causal ? ", halved for causal" : ""}` +
        `${s.backward ? ", 2.5× that for the backward" : ""}. vs naive: the naive median ÷ this median ` +
        "(higher is faster).",
    );
    if (rows.some((row) => row[2].endsWith(INLINE_MARK))) {
      out(
        `*: below the pool's ${
          POOL_TUNING.inlineFlops.toExponential(0).replace("+", "")
        }-flop threshold, so the pool ran the ` +
          "call on the calling thread (a dispatch to the Workers would cost more than it saves).",
      );
    }
    return 0;
  } finally {
    bar.end();
    await pool?.close();
  }
}
