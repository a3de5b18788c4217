/// <reference lib="dom" />
/**
 * The browser example's page script (served bundled by serve.ts): causal attention computed on the main thread and
 * on a pool of Workers, with the time of each, and a heat map of one head's attention probabilities. With `?webgpu`
 * in the address (the page's WebGPU switch) it computes the same attention on the GPU too.
 *
 * The results go to the page and to `globalThis.__results` (a JSON-able summary, with the inputs' seeds and shapes) and
 * `globalThis.__outputs` (the output arrays), which browser_test.ts reads.
 */
import { type AttentionOutput, createAttentionPool, flashAttention, init, type Tensor } from "@flash/attention";
import { createGpuAttention } from "@flash/attention/gpu";

/** A deterministic problem: q, k, v drawn in that order from mulberry32(seed), uniform in (−amplitude, amplitude). */
export interface Problem {
  seed: number;
  /** [B, N, H, d] (layout "bshd"), the same for q, k and v. */
  shape: [number, number, number, number];
  amplitude: number;
  causal: boolean;
}

/** How one run went: its time, and a summary of its output. */
export interface RunSummary {
  milliseconds: number;
  /** Σ O, summed in f64. */
  checksum: number;
  /** O's first four values. */
  first: number[];
}

/** A problem as the page drew it: `inputSum` = Σ q + Σ k + Σ v in f64, so a test can tell it drew the same inputs. */
export type DrawnProblem = Problem & { inputSum: number };

/** What the page computed, for people (the page) and for browser_test.ts. */
export interface PageResults {
  crossOriginIsolated: boolean;
  /** The main-thread and pool runs' problem. */
  problem: DrawnProblem;
  main: RunSummary;
  /** The pool's run, or why there is none (e.g. a page that is not cross-origin isolated). */
  pool: (RunSummary & { threads: number; startMilliseconds: number }) | { error: string };
  /** max |O_main − O_pool| over all elements (0 when the pool agrees, as it should, bit for bit). */
  maxDifference?: number;
  /**
   * The WebGPU run, when the switch is on: the adapter, the first call's time (which compiles the kernel) and the
   * second's; or why there is none (no WebGPU in this browser, ...). Absent when the switch is off.
   */
  gpu?: (RunSummary & { adapter: string; firstMilliseconds: number; maxDifference: number }) | { error: string };
  /** The heat map's problem, its head, and P[i][j] of that head (0 where masked). */
  heatMap: { problem: DrawnProblem; head: number; p: number[][] };
}

/** The output arrays behind the summaries. */
export interface PageOutputs {
  main: { o: Float32Array; lse: Float32Array };
  pool?: { o: Float32Array; lse: Float32Array };
  gpu?: { o: Float32Array; lse: Float32Array };
}

declare global {
  /** Set once the page is done: its results, or the error that stopped it. */
  var __results: PageResults | { error: string } | undefined;
  /** The output arrays, set with `__results` when the page computed them. */
  var __outputs: PageOutputs | undefined;
}

const PROBLEM: Problem = { seed: 1, shape: [1, 1024, 4, 64], amplitude: 1, causal: true };
/** Larger inputs than PROBLEM's make sharper probabilities, so the picture shows more than the causal triangle. */
const HEAT_MAP_PROBLEM: Problem = { seed: 2, shape: [1, 32, 4, 64], amplitude: 2, causal: true };
const HEAT_MAP_HEAD = 0;

/** mulberry32, the generator of tests/_util.ts's `rng`, so a test can recompute the inputs from the seed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function inputs({ seed, shape, amplitude }: Problem): [Tensor, Tensor, Tensor] {
  const random = rng(seed);
  const tensor = () => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = (2 * random() - 1) * amplitude;
    return { data, shape };
  };
  return [tensor(), tensor(), tensor()];
}

function drawn(problem: Problem, tensors: Tensor[]): DrawnProblem {
  return { ...problem, inputSum: tensors.reduce((a, t) => t.data.reduce((b, x) => b + x, a), 0) };
}

function summary(o: AttentionOutput, milliseconds: number): RunSummary {
  return { milliseconds, checksum: o.data.reduce((sum, x) => sum + x, 0), first: Array.from(o.data.subarray(0, 4)) };
}

/** P[i][j] = exp(scale·q_i·k_j − lse_i) for one head: exact, since lse_i = ln Σ_j exp(scale·q_i·k_j). */
function probabilities(q: Tensor, k: Tensor, lse: Tensor, head: number, causal: boolean): number[][] {
  const [, N, H, d] = q.shape;
  const scale = 1 / Math.sqrt(d);
  return Array.from({ length: N }, (_, i) =>
    Array.from({ length: N }, (_, j) => {
      if (causal && j > i) return 0;
      let s = 0;
      for (let c = 0; c < d; c++) s += q.data[(i * H + head) * d + c] * k.data[(j * H + head) * d + c];
      return Math.exp(scale * s - lse.data[head * N + i]);
    }));
}

/** viridis at five stops, interpolated: dark purple for 0, yellow for 1. */
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const MASKED = [230, 230, 230];

function color(t: number): number[] {
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  return VIRIDIS[i].map((a, c) => Math.round(a + (VIRIDIS[i + 1][c] - a) * (x - i)));
}

/** One pixel per (query, key), scaled up by CSS; a square-root colour scale keeps small weights visible. */
function drawHeatMap(canvas: HTMLCanvasElement, p: number[][], causal: boolean): void {
  const N = p.length;
  canvas.width = canvas.height = N;
  const context = canvas.getContext("2d")!;
  const image = context.createImageData(N, N);
  for (let i = 0; i < N; i++) {
    for (let j = 0; j < N; j++) {
      image.data.set([...(causal && j > i ? MASKED : color(Math.sqrt(p[i][j]))), 255], 4 * (i * N + j));
    }
  }
  context.putImageData(image, 0, 0);
}

function show(id: string, text: string): void {
  document.getElementById(id)!.textContent = text;
}

const ms = (x: number) => `${x.toFixed(1)} ms`;
const values = (r: RunSummary) =>
  `Σ O = ${r.checksum.toFixed(6)}; O[0..3] = ${r.first.map((x) => x.toFixed(6)).join(", ")}`;

async function run(): Promise<void> {
  await init(); // browsers refuse to compile a module this large synchronously on the main thread
  const [B, N, H, d] = PROBLEM.shape;
  show(
    "problem",
    `B = ${B}, N = ${N}, H = ${H}, d = ${d}, causal; inputs uniform in ±${PROBLEM.amplitude}, seed ${PROBLEM.seed}`,
  );
  show("isolated", crossOriginIsolated ? "yes" : "no: the pool needs COOP/COEP headers");
  const [q, k, v] = inputs(PROBLEM);
  const options = { causal: PROBLEM.causal, returnLse: true } as const;

  let start = performance.now();
  const main = flashAttention(q, k, v, options);
  const mainSummary = summary(main, performance.now() - start);
  show("main-time", ms(mainSummary.milliseconds));
  show("main-values", values(mainSummary));
  const outputs: PageOutputs = { main: { o: main.data, lse: main.lse.data } };

  let pool: PageResults["pool"];
  let maxDifference: number | undefined;
  try {
    start = performance.now();
    const workers = await createAttentionPool();
    const startMilliseconds = performance.now() - start;
    try {
      start = performance.now();
      const o = await workers.flashAttention(q, k, v, options);
      pool = { ...summary(o, performance.now() - start), threads: workers.threads, startMilliseconds };
      outputs.pool = { o: o.data, lse: o.lse!.data };
      maxDifference = o.data.reduce((max, x, i) => Math.max(max, Math.abs(x - main.data[i])), 0);
    } finally {
      await workers.close();
    }
    show("pool-label", `pool (${pool.threads} Workers)`);
    show("pool-time", `${ms(pool.milliseconds)} (+ ${ms(startMilliseconds)} to start)`);
    show("pool-values", values(pool));
    show("difference", `${maxDifference}${maxDifference === 0 ? " (identical)" : ""}`);
  } catch (error) {
    pool = { error: String(error) };
    show("pool-values", pool.error);
  }

  let gpu: PageResults["gpu"];
  const webgpu = new URLSearchParams(location.search).has("webgpu");
  const gpuSwitch = document.getElementById("webgpu-switch") as HTMLAnchorElement;
  gpuSwitch.textContent = webgpu ? "WebGPU: on (turn off)" : "WebGPU: off (turn on)";
  gpuSwitch.href = webgpu ? "?" : "?webgpu";
  if (webgpu) {
    try {
      const onGpu = await createGpuAttention(); // rejects with GpuUnavailableError where the browser has no WebGPU
      try {
        start = performance.now();
        await onGpu.flashAttention(q, k, v, options); // the first call compiles the kernel for this shape
        const firstMilliseconds = performance.now() - start;
        start = performance.now();
        const o = await onGpu.flashAttention(q, k, v, options);
        const maxDifference = o.data.reduce((max, x, i) => Math.max(max, Math.abs(x - main.data[i])), 0);
        const adapter = onGpu.adapter.description || onGpu.adapter.architecture || onGpu.adapter.vendor;
        gpu = { ...summary(o, performance.now() - start), adapter, firstMilliseconds, maxDifference };
        outputs.gpu = { o: o.data, lse: o.lse.data };
      } finally {
        onGpu.destroy();
      }
      show("gpu-label", `WebGPU (${gpu.adapter})`);
      show("gpu-time", `${ms(gpu.milliseconds)} (first call ${ms(gpu.firstMilliseconds)}, with compiling)`);
      show("gpu-values", values(gpu));
      show("gpu-difference", `${gpu.maxDifference} (f32 rounding: the GPU sums in another order)`);
    } catch (error) {
      gpu = { error: String(error) };
      show("gpu-values", gpu.error);
    }
  }

  const [hq, hk, hv] = inputs(HEAT_MAP_PROBLEM);
  const small = flashAttention(hq, hk, hv, { causal: HEAT_MAP_PROBLEM.causal, returnLse: true });
  const p = probabilities(hq, hk, small.lse, HEAT_MAP_HEAD, HEAT_MAP_PROBLEM.causal);
  drawHeatMap(document.querySelector("canvas")!, p, HEAT_MAP_PROBLEM.causal);

  const results: PageResults = {
    crossOriginIsolated,
    problem: drawn(PROBLEM, [q, k, v]),
    main: mainSummary,
    pool,
    maxDifference,
    gpu,
    heatMap: { problem: drawn(HEAT_MAP_PROBLEM, [hq, hk, hv]), head: HEAT_MAP_HEAD, p },
  };
  const { p: _, ...heatMap } = results.heatMap;
  show("results", JSON.stringify({ ...results, heatMap }, null, 2));
  globalThis.__outputs = outputs;
  globalThis.__results = results;
}

run().catch((error) => {
  console.error(error);
  show("problem", `Failed: ${error}`);
  globalThis.__results = { error: String(error) };
});
