/**
 * The WebGPU forward against a WGSL SGEMM probe on the same adapter, in one run (Deno: Node 20 has
 * no WebGPU):
 *
 *   deno task bench:gpu            npm run bench:gpu (the same, through Deno)
 *   deno run -A bench/gpu.ts --quick    tiny sizes: checks that everything runs, times nothing worth reading
 *
 * Prints the adapter and its limits, then:
 * 1. the SGEMM probe (bench/_sgemm_wgsl.ts: 128 × 128 tiles, 8 × 8 per thread) at 4096³, checked
 *    against host dot products, as TFLOP/s (2·M·N·K);
 * 2. the forward at N = 1024 … 32768 (B = 1, H = 8, d = 64), causal and not, for each tiling asked
 *    for, inputs and output on the device, as TFLOP/s (4·B·H·N²·d, half for causal), as a
 *    percentage of the probe, and the causal speedup (non-causal time / causal time). The first
 *    size's output is checked against the f64 reference. Tilings: `--tilings=64x4,64x8,64x4/32` lists
 *    rows per workgroup × threads per row (/ keys per tile, default the library's), `-noprefetch` after one turns
 *    software pipelining off
 *    (default: 64x2/32-noprefetch, the default tiling, first: the baselines are compared with it; then
 *    128x1/32-noprefetch, and 64x4/64-noprefetch, the default until 2026-12).
 *
 * Timing: each measurement is a batch of dispatches in one submit, each in its own compute pass;
 * with `timestamp-query` each pass's begin and end are timestamped and the median pass is reported,
 * beside the batch's wall time per dispatch (submit to onSubmittedWorkDone). The two must agree
 * within a factor (timestamps in other units than ns, as some drivers report, would show here):
 * where they do not, or where the adapter has no timestamps, the wall time is used. After 0.3 s of
 * untimed dispatches, three batches of about `--seconds`/3 each (default 0.5 s in all) are timed
 * and the one with the fastest median is reported (see `measure`).
 *
 * 3. baselines beside our first tiling: onnxruntime-web's WebGPU MultiHeadAttention
 *    (bench/field/_ort_webgpu.ts) at `--ort-sizes` (default 1024, 4096, 16384) when bench/field is
 *    installed (`npm ci` in bench/field; `--no-ort` skips it), and PyTorch's fp32
 *    scaled_dot_product_attention read from `--torch=FILE`, the output of bench/probes/torch_sdpa.py
 *    run on the same machine.
 *
 * 4. the backward (gpu.flashAttentionBackward, default tiling, or `--backward-tiling=64x2/32`) at
 *    `--backward-sizes` (default 1024, 4096, 16384; `--no-backward` skips it), wall time per call with
 *    its transfers, and each of its three passes (D, dQ, dK/dV) by timestamp-query where the adapter
 *    has it.
 *
 * Other flags: `--sizes=1024,4096` (the N to run), `--heads=8`, `--seconds=0.5`, `--no-write` (do
 * not write BENCHMARKS.md; `--quick` never writes). Writes a section `gpu-<adapter>` of BENCHMARKS.md.
 */
import process from "node:process";
import type { Tensor } from "../mod.ts";
import { randomTensor, rng } from "../src/_cli/random.ts";
import { referenceAttention } from "../src/reference.ts";
import { createGpuAttention } from "../src/gpu.ts";
import { validateBackwardCall, validateForwardCall } from "../src/_validate.ts";
import { BACKWARD_PASSES, runGpuBackward } from "../src/gpu/_backward.ts";
import { gpuTensorReader } from "../src/gpu/_inputs.ts";
import { type GpuContext, prepareGpuCall } from "../src/gpu/_runner.ts";
import { readTargets } from "../src/gpu/_tiling.ts";
import { type GpuBufferLike, type GpuDevice, REQUESTED_LIMITS } from "../src/gpu/_webgpu.ts";
import { sgemmGrid, sgemmKernel } from "./_sgemm_wgsl.ts";
import { median, table, writeSection } from "./_report.ts";

const args = process.argv.slice(2);
const flag = (name: string) => args.includes(`--${name}`);
const option = (name: string, fallback: string) =>
  args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback;
const quick = flag("quick");
const write = !quick && !flag("no-write");
const seconds = Number(option("seconds", quick ? "0.02" : "0.5"));
const H = Number(option("heads", quick ? "2" : "8"));
const d = 64;
const sizes = option("sizes", quick ? "128,256" : "1024,2048,4096,8192,16384,32768").split(",").map(Number);
/** A tiling to run: rows per workgroup, threads per row, keys per tile, pipelining. */
interface Tiling {
  rows: number;
  T: number;
  Bc: number | undefined;
  prefetch: boolean;
  name: string;
}
const tilings: Tiling[] = option(
  "tilings",
  quick ? "64x2/32-noprefetch,64x4/64" : "64x2/32-noprefetch,128x1/32-noprefetch,64x4/64-noprefetch",
)
  .split(",")
  .map((name) => tilingOf(name, "--tilings"));
/** A tiling named ROWSxTHREADS[/KEYS][-noprefetch]. */
function tilingOf(name: string, flagName: string): Tiling {
  const m = /^(\d+)x(\d+)(?:\/(\d+))?(-noprefetch)?$/.exec(name);
  if (!m) throw new Error(`${flagName}: "${name}" is not ROWSxTHREADS[/KEYS][-noprefetch]`);
  const Bc = m[3] === undefined ? undefined : Number(m[3]);
  return { rows: Number(m[1]), T: Number(m[2]), Bc, prefetch: m[4] === undefined, name };
}
/** The tiling targets of a named tiling. */
const targetsOf = (tiling: Tiling) =>
  readTargets({
    threadsPerRow: tiling.T,
    rowsPerWorkgroup: tiling.rows,
    keysPerTile: tiling.Bc,
    prefetch: tiling.prefetch,
  });
const sgemmSize = quick ? 256 : 4096;
/** Seconds of untimed dispatches before each measurement, and its timed batches (the fastest is kept). */
const WARM_SECONDS = quick ? 0.01 : 0.3;
const BATCHES = 3;

const USAGE = { MAP_READ: 1, COPY_SRC: 4, COPY_DST: 8, UNIFORM: 64, STORAGE: 128, QUERY_RESOLVE: 512 };

// ── The device ─────────────────────────────────────────────────────────────────────────────────

const adapter = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" });
if (!adapter) {
  console.error(
    "no WebGPU adapter (Deno needs a Vulkan, Metal or D3D12 driver; on Linux without a GPU: mesa-vulkan-drivers)",
  );
  process.exit(1);
}
// The limits createGpuAttention requests (src/gpu/_webgpu.ts), on a device of our own that can also
// take timestamp queries.
const LIMITS = REQUESTED_LIMITS;
const requiredLimits: Record<string, number> = {};
for (const name of LIMITS) requiredLimits[name] = adapter.limits[name];
const timestamps = adapter.features.has("timestamp-query");
const gpuDevice = await adapter.requestDevice({
  requiredLimits,
  requiredFeatures: timestamps ? ["timestamp-query"] : [],
});
const device = gpuDevice as unknown as GpuDevice;
const info = adapter.info;
const adapterName = info.description || `${info.vendor} ${info.architecture} ${info.device}`.trim() || "unknown";
console.log(`adapter: ${adapterName} (vendor ${info.vendor || "?"}, architecture ${info.architecture || "?"})`);
for (const name of LIMITS) console.log(`  ${name}: ${gpuDevice.limits[name]}`);
console.log(`  timestamp-query: ${timestamps ? "yes" : "no"}; shader-f16: ${adapter.features.has("shader-f16")}`);
console.log(`  Deno ${Deno.version.deno}${quick ? "; --quick: sizes too small for the numbers to mean anything" : ""}`);

// ── Timing ─────────────────────────────────────────────────────────────────────────────────────

interface Timing {
  /** Median pass time from timestamps (undefined without them), and wall time per dispatch, ms. */
  gpuMs: number | undefined;
  wallMs: number;
  /** What the table reports: timestamps when they agree with the wall clock, else the wall time. */
  ms: number;
  reps: number;
  note: string;
}

/** Runs `encode` (one dispatch in the given pass) `reps` times in one submit; times every pass. */
async function batch(encode: (pass: GPUComputePassEncoder) => void, reps: number): Promise<Timing> {
  const querySet = timestamps ? gpuDevice.createQuerySet({ type: "timestamp", count: 2 * reps }) : undefined;
  const resolve = querySet
    ? gpuDevice.createBuffer({ size: 16 * reps, usage: USAGE.QUERY_RESOLVE | USAGE.COPY_SRC })
    : undefined;
  const readback = querySet
    ? gpuDevice.createBuffer({ size: 16 * reps, usage: USAGE.MAP_READ | USAGE.COPY_DST })
    : undefined;
  const encoder = gpuDevice.createCommandEncoder();
  for (let r = 0; r < reps; r++) {
    const pass = encoder.beginComputePass(
      querySet
        ? { timestampWrites: { querySet, beginningOfPassWriteIndex: 2 * r, endOfPassWriteIndex: 2 * r + 1 } }
        : {},
    );
    encode(pass);
    pass.end();
  }
  if (querySet) {
    encoder.resolveQuerySet(querySet, 0, 2 * reps, resolve!, 0);
    encoder.copyBufferToBuffer(resolve!, 0, readback!, 0, 16 * reps);
  }
  const start = performance.now();
  gpuDevice.queue.submit([encoder.finish()]);
  await gpuDevice.queue.onSubmittedWorkDone();
  const wallMs = (performance.now() - start) / reps;
  let gpuMs: number | undefined;
  let note = "";
  if (readback) {
    await readback.mapAsync(GPUMapMode.READ);
    const ticks = new BigUint64Array(readback.getMappedRange());
    const passes = Array.from({ length: reps }, (_, r) => Number(ticks[2 * r + 1] - ticks[2 * r]) / 1e6);
    readback.unmap();
    gpuMs = median(passes);
    // A pass cannot take longer than the wall clock's share, nor much less unless launches dominate.
    const ratio = wallMs / gpuMs;
    if (!(ratio > 0.9 && ratio < 3)) {
      note = `timestamps disagree with the wall clock (wall/timestamp ${ratio.toFixed(2)})`;
    }
  }
  querySet?.destroy();
  resolve?.destroy();
  readback?.destroy();
  const ms = gpuMs !== undefined && note === "" ? gpuMs : wallMs;
  return { gpuMs, wallMs, ms, reps, note };
}

/**
 * Estimates one dispatch, warms up with about `WARM_SECONDS` of the same dispatches (an idle GPU
 * runs at low clocks for a while after work resumes), then times `BATCHES` batches of about
 * `seconds / BATCHES` each and keeps the one with the fastest median pass: on the lent H200 a
 * whole batch of 1–6 ms dispatches ran up to 4× slow now and then (a different shape each run,
 * with every pass of that batch slow alike), which one batch reported as the shape's speed.
 */
async function measure(encode: (pass: GPUComputePassEncoder) => void): Promise<Timing> {
  await batch(encode, 2);
  const once = await batch(encode, 1);
  const repsFor = (s: number) => Math.max(3, Math.min(1000, Math.round((s * 1000) / Math.max(once.wallMs, 1e-3))));
  await batch(encode, repsFor(WARM_SECONDS));
  let best: Timing | undefined;
  for (let b = 0; b < BATCHES; b++) {
    const timing = await batch(encode, repsFor(seconds / BATCHES));
    if (best === undefined || timing.ms < best.ms) best = timing;
  }
  return best!;
}

const fmt = (x: number, digits = 2) => x.toFixed(digits);
/** TFLOP/s with 3 significant digits (lavapipe's are thousandths). */
const tf = (x: number) => x >= 100 ? x.toFixed(0) : x.toPrecision(3);
const tflops = (flops: number, ms: number) => flops / ms / 1e9;

/** A storage buffer holding `data`. */
function upload(data: Float32Array): GPUBuffer {
  const buffer = gpuDevice.createBuffer({
    size: data.byteLength,
    usage: USAGE.STORAGE | USAGE.COPY_DST | USAGE.COPY_SRC,
  });
  gpuDevice.queue.writeBuffer(buffer, 0, data as Float32Array<ArrayBuffer>);
  return buffer;
}

async function download(buffer: GPUBuffer, bytes: number): Promise<Float32Array> {
  const staging = gpuDevice.createBuffer({ size: bytes, usage: USAGE.MAP_READ | USAGE.COPY_DST });
  const encoder = gpuDevice.createCommandEncoder();
  encoder.copyBufferToBuffer(buffer, 0, staging, 0, bytes);
  gpuDevice.queue.submit([encoder.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const data = new Float32Array(staging.getMappedRange().slice(0));
  staging.destroy();
  return data;
}

// ── 1. The SGEMM probe ─────────────────────────────────────────────────────────────────────────

async function sgemm(size: number): Promise<{ timing: Timing; tflops: number; maxError: number }> {
  const [M, N, K] = [size, size, size];
  const random = rng(7);
  const A = Float32Array.from({ length: M * K }, () => random() - 0.5);
  const B = Float32Array.from({ length: K * N }, () => random() - 0.5);
  const [a, b] = [upload(A), upload(B)];
  const c = gpuDevice.createBuffer({ size: 4 * M * N, usage: USAGE.STORAGE | USAGE.COPY_SRC });
  const params = gpuDevice.createBuffer({ size: 16, usage: USAGE.UNIFORM | USAGE.COPY_DST });
  gpuDevice.queue.writeBuffer(params, 0, new Uint32Array([M, N, K, 0]));
  const module = gpuDevice.createShaderModule({ code: sgemmKernel() });
  const pipeline = await gpuDevice.createComputePipelineAsync({
    layout: "auto",
    compute: { module, entryPoint: "main" },
  });
  const bindGroup = gpuDevice.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [params, a, b, c].map((buffer, binding) => ({ binding, resource: { buffer } })),
  });
  const [gx, gy] = sgemmGrid(M, N);
  const timing = await measure((pass) => {
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(gx, gy);
  });
  // Spot check: 64 elements of C against f64 dot products (error bound: K f32 roundings of |terms| ≤ 0.25).
  const C = await download(c, 4 * M * N);
  let maxError = 0;
  for (let n = 0; n < 64; n++) {
    const [i, j] = [(n * 7919) % M, (n * 104729) % N];
    let dot = 0;
    for (let k = 0; k < K; k++) dot += A[i * K + k] * B[k * N + j];
    maxError = Math.max(maxError, Math.abs(C[i * N + j] - dot));
  }
  if (!(maxError < 1e-5 * K)) throw new Error(`the SGEMM probe is wrong: max error ${maxError}`);
  for (const buffer of [a, b, c, params]) buffer.destroy();
  return { timing, tflops: tflops(2 * M * N * K, timing.ms), maxError };
}

// ── 2. The forward ─────────────────────────────────────────────────────────────────────────────

interface Row {
  N: number;
  tiling: Tiling;
  causal: boolean;
  timing: Timing;
  tflops: number;
}

/** One size's inputs, on the host (for the check) and on the device. */
interface Inputs {
  N: number;
  host: Tensor[];
  buffers: GPUBuffer[];
}

/** One size's inputs (the same for every engine), uploaded to our device unless `onDevice` is false. */
function inputsOf(N: number, onDevice = true): Inputs {
  const random = rng(N);
  const shape = [1, N, H, d];
  const host = [randomTensor(random, shape), randomTensor(random, shape), randomTensor(random, shape)];
  return { N, host, buffers: onDevice ? host.map((t) => upload(t.data)) : [] };
}

async function forward(inputs: Inputs, tiling: Tiling, causal: boolean, check: boolean): Promise<Row> {
  const { N, host, buffers } = inputs;
  const ctx: GpuContext = {
    device,
    targets: targetsOf(tiling),
    pipelines: new Map(),
  };
  const shape = [1, N, H, d];
  const tensors = buffers.map((buffer) => ({ buffer: buffer as unknown as GpuBufferLike, shape }));
  const found = new Map<string, GpuBufferLike>();
  const call = validateForwardCall(tensors[0], tensors[1], tensors[2], { causal }, gpuTensorReader(found));
  const prepared = await prepareGpuCall(ctx, call, found, gpuDevice.limits.maxComputeWorkgroupStorageSize);
  const timing = await measure((pass) => prepared.dispatch(pass as never));
  if (check) {
    // The output of the timed dispatches against the f64 reference on the first 8 queries' heads.
    // The reference of those rows alone (q cut to its first 8 positions; "top-left" is then the
    // alignment of the full square call), so the check costs O(8·N) and not the whole problem.
    const O = await download(prepared.o as unknown as GPUBuffer, 4 * N * H * d);
    const q8 = { data: host[0].data.subarray(0, 8 * H * d), shape: [1, 8, H, d] };
    const ref = referenceAttention(q8, host[1], host[2], { causal: causal ? "top-left" : false });
    let maxError = 0;
    for (let i = 0; i < 8 * H * d; i++) maxError = Math.max(maxError, Math.abs(O[i] - ref.data[i]));
    if (!(maxError < 1e-4)) throw new Error(`N = ${N}: the forward's output is off by ${maxError}`);
  }
  prepared.releaseInputs();
  for (const b of [prepared.o, prepared.lse, prepared.counters]) b.destroy();
  const flops = 4 * H * N * N * d / (causal ? 2 : 1);
  return { N, tiling, causal, timing, tflops: tflops(flops, timing.ms) };
}

const probe = await sgemm(sgemmSize);
console.log(
  `SGEMM ${sgemmSize}³: ${fmt(probe.timing.ms, 3)} ms, ${tf(probe.tflops)} TFLOP/s` +
    ` (wall ${fmt(probe.timing.wallMs, 3)} ms/dispatch, ${probe.timing.reps} dispatches)${
      probe.timing.note ? `; ${probe.timing.note}` : ""
    }`,
);
const rows: Row[] = [];
for (const N of sizes) {
  const inputs = inputsOf(N);
  for (const tiling of tilings) {
    for (const causal of [false, true]) {
      const row = await forward(inputs, tiling, causal, N === sizes[0]);
      rows.push(row);
      console.log(
        `${tiling.name}, N = ${N}, ${causal ? "causal" : "full"}: ${fmt(row.timing.ms, 3)} ms, ${
          tf(row.tflops)
        } TFLOP/s, ` +
          `${fmt((100 * row.tflops) / probe.tflops, 0)}% of SGEMM (wall ${fmt(row.timing.wallMs, 3)} ms, ` +
          `${row.timing.reps} dispatches)${row.timing.note ? `; ${row.timing.note}` : ""}`,
      );
    }
  }
  for (const b of inputs.buffers) b.destroy();
}

// ── 3. onnxruntime-web's WebGPU attention and PyTorch's, beside ours ────────────────────────────

/** Our first tiling's time at (N, causal): what the baselines are compared with. */
const ours = (N: number, causal: boolean) =>
  rows.find((r) => r.N === N && r.tiling === tilings[0] && r.causal === causal)!;

interface Baseline {
  name: string;
  N: number;
  causal: boolean;
  ms?: number;
  tflops?: number;
  note?: string;
}
const baselines: Baseline[] = [];

// onnxruntime-web 1.30's WebGPU MultiHeadAttention (bench/field/_ort_webgpu.ts), when bench/field is
// installed (`npm ci` in bench/field; kept out of the main install like the field benchmark).
const ortSizes = option("ort-sizes", quick ? "128" : "1024,4096,16384").split(",").map(Number)
  .filter((N) => sizes.includes(N));
let ortVersion = "";
if (!flag("no-ort")) {
  const { startOrtWebGpu } = await import("./field/_ort_webgpu.ts").catch(() => ({ startOrtWebGpu: undefined }));
  let ort: Awaited<ReturnType<NonNullable<typeof startOrtWebGpu>>> | undefined;
  try {
    ort = await startOrtWebGpu?.(H, d, (N) => {
      const [q, k, v] = inputsOf(N, false).host;
      return { q: q.data, k: k.data, v: v.data };
    });
  } catch (error) {
    console.log(`onnxruntime-web: not run (${(error as Error).message.split("\n")[0]}); \`npm ci\` in bench/field`);
  }
  if (ort) {
    ortVersion = ort.version;
    for (const N of ortSizes) {
      for (const causal of [false, true]) {
        const flops = 4 * H * N * N * d / (causal ? 2 : 1);
        try {
          if (N === ortSizes[0]) {
            // Its output against the f64 reference on the first 8 queries, as ours is checked.
            const [q, k, v] = inputsOf(N, false).host;
            const out = await ort.output(N, causal);
            const ref = referenceAttention(q, k, v, { causal });
            let maxError = 0;
            for (let i = 0; i < 8 * H * d; i++) maxError = Math.max(maxError, Math.abs(out[i] - ref.data[i]));
            if (!(maxError < 1e-4)) throw new Error(`its output is off by ${maxError}`);
          }
          const ms = await ort.time(N, causal, quick ? 2 : 5);
          baselines.push({ name: `onnxruntime-web ${ort.version} WebGPU`, N, causal, ms, tflops: tflops(flops, ms) });
        } catch (error) {
          baselines.push({ name: `onnxruntime-web ${ort.version} WebGPU`, N, causal, note: (error as Error).message });
        }
        const b = baselines.at(-1)!;
        console.log(`onnxruntime-web, N = ${N}, ${causal ? "causal" : "full"}: ${b.ms?.toFixed(3) ?? b.note} ms`);
      }
    }
    await ort.release();
  }
}

// PyTorch's fp32 scaled_dot_product_attention on the same machine, from bench/probes/torch_sdpa.py's
// output (`--torch=FILE`: one JSON object per line), when it was run beside this benchmark.
const torchFile = option("torch", "");
let torchDevice = "";
if (torchFile) {
  for (const line of Deno.readTextFileSync(torchFile).split("\n").filter((l) => l.trim().startsWith("{"))) {
    const r = JSON.parse(line);
    if (r.device) torchDevice = `${r.device}, torch ${r.torch}`;
    else if (sizes.includes(r.N)) {
      baselines.push({
        name: "PyTorch fp32 scaled_dot_product_attention",
        N: r.N,
        causal: r.causal,
        ms: r.ms,
        tflops: r.tflops,
      });
    }
  }
}

// ── 4. The backward ────────────────────────────────────────────────────────────────────────────

// gpu.flashAttentionBackward through the public API on the default tiling: q, k, v as GPU tensors,
// out and dOut from the host (the API takes them so), the gradients read back. Wall time per call,
// median of a few after a warm-up, so it includes those transfers (≈ 5·N·H·d·4 bytes, milliseconds
// at N = 16K against a backward of about a tenth of a second). Flops: 10·B·H·N²·d (the five
// products of the recomputing backward; dQ and dK/dV recompute S and P in their own kernels, which
// this count does not credit), half for causal.
interface BackwardRow {
  N: number;
  causal: boolean;
  ms: number;
  tflops: number;
  /** Median milliseconds of each pass (BACKWARD_PASSES) from timestamps, where the adapter has them. */
  passMs: number[];
}
const backwardRows: BackwardRow[] = [];
const backwardTiling = option("backward-tiling", "");
const backwardSizes = option("backward-sizes", quick ? "128" : "1024,4096,16384").split(",").map(Number);
if (!flag("no-backward")) {
  const gpu = await createGpuAttention({ device: gpuDevice });
  // The backward runs through the runner the public call uses (after the same validation), so that
  // each of its passes can be timestamped as well.
  const targets = backwardTiling === "" ? readTargets() : targetsOf(tilingOf(backwardTiling, "--backward-tiling"));
  const ctx: GpuContext = { device, targets, pipelines: new Map() };
  for (const N of backwardSizes) {
    const inputs = inputsOf(N);
    const shape = [1, N, H, d];
    const [qT, kT, vT] = inputs.buffers.map((buffer) => ({ buffer, shape }));
    const dOut = randomTensor(rng(N + 1), shape);
    for (const causal of [false, true]) {
      const out = await gpu.flashAttention(qT, kT, vT, { causal, returnLse: true });
      const found = new Map<string, GpuBufferLike>();
      const call = validateBackwardCall(qT, kT, vT, out, dOut, { causal }, gpuTensorReader(found));
      const passes: number[][] = [];
      const run = async () => {
        const ms: number[] = [];
        await runGpuBackward(ctx, call, found, gpuDevice.limits.maxComputeWorkgroupStorageSize, ms);
        passes.push(ms);
      };
      await run(); // compiles the kernels
      passes.length = 0;
      const times: number[] = [];
      for (let i = 0; i < (quick ? 2 : 5); i++) {
        const start = performance.now();
        await run();
        times.push(performance.now() - start);
      }
      const ms = median(times);
      const passMs = passes[0].length === 0 ? [] : BACKWARD_PASSES.map((_, n) => median(passes.map((p) => p[n])));
      const row = { N, causal, ms, tflops: tflops(10 * H * N * N * d / (causal ? 2 : 1), ms), passMs };
      backwardRows.push(row);
      console.log(
        `backward, N = ${N}, ${causal ? "causal" : "full"}: ${fmt(ms, 3)} ms, ${tf(row.tflops)} TFLOP/s` +
          (passMs.length === 0
            ? ""
            : `; passes ${BACKWARD_PASSES.map((name, n) => `${name} ${fmt(passMs[n], 3)} ms`).join(", ")}`),
      );
    }
    for (const b of inputs.buffers) b.destroy();
  }
  gpu.destroy();
}
const backwardBody = backwardRows.length === 0 ? "" : [
  "",
  "",
  `The backward (\`gpu.flashAttentionBackward\`, ${
    backwardTiling === "" ? "default tiling" : backwardTiling
  }): wall time per call including the upload of out ` +
  "and dOut and the read-back of dQ, dK, dV; TFLOP/s = 10·B·H·N²·d / t (half for causal), the forward's time beside it; " +
  "each of its three passes timed by timestamp-query (median over the calls).",
  "",
  table(
    [
      "N",
      "causal",
      "backward ms",
      "TFLOP/s",
      "forward ms",
      "backward ÷ forward time",
      ...BACKWARD_PASSES.map((n) => `${n}, ms`),
    ],
    backwardRows.map((r) => {
      const o = ours(r.N, r.causal);
      return [
        r.N,
        r.causal ? "yes" : "no",
        fmt(r.ms, 3),
        tf(r.tflops),
        o ? fmt(o.timing.ms, 3) : "",
        o ? fmt(r.ms / o.timing.ms, 2) : "",
        ...BACKWARD_PASSES.map((_, n) => r.passMs.length === 0 ? "" : fmt(r.passMs[n], 3)),
      ];
    }),
  ),
].join("\n");

const speedup = (N: number, tiling: Tiling) => {
  const full = rows.find((r) => r.N === N && r.tiling === tiling && !r.causal)!;
  const causal = rows.find((r) => r.N === N && r.tiling === tiling && r.causal)!;
  return full.timing.ms / causal.timing.ms;
};
const body = [
  `### WebGPU forward on ${adapterName}`,
  "",
  `\`deno task bench:gpu\` (Deno ${Deno.version.deno}), B = 1, H = ${H}, d = ${d}, f32, inputs and output on the device; ` +
  `tiling R×T: R query rows per workgroup, T threads per row ("-noprefetch": without software pipelining). Times: ${
    timestamps
      ? "timestamp-query, median pass of a batch (wall-clock time per dispatch beside it)"
      : "wall clock per dispatch over a batch"
  }, the fastest of ${BATCHES} batches after 0.3 s of warm-up. TFLOP/s = 4·B·H·N²·d / t, half the flops for causal. The SGEMM probe (bench/_sgemm_wgsl.ts, 128 × 128 tiles) ran ` +
  `${sgemmSize}³ at **${tf(probe.tflops)} TFLOP/s** in the same run.`,
  "",
  table(
    ["N", "tiling", "causal", "ms", "wall ms", "TFLOP/s", "% of SGEMM", "causal speedup"],
    rows.map((r) => [
      r.N,
      r.tiling.name,
      r.causal ? "yes" : "no",
      fmt(r.timing.ms, 3),
      fmt(r.timing.wallMs, 3),
      tf(r.tflops),
      `${fmt((100 * r.tflops) / probe.tflops, 0)}%`,
      r.causal ? `${fmt(speedup(r.N, r.tiling))}×` : "",
    ]),
  ),
].join("\n");
const baselineBody = baselines.length === 0 ? "" : [
  "",
  "",
  `Baselines on the same machine, against our ${tilings[0].name} tiling at the same N (ours ÷ theirs: > 1 is faster).` +
  (ortVersion
    ? ` onnxruntime-web ${ortVersion}: its WebGPU execution provider running one com.microsoft MultiHeadAttention node ` +
      "(its own flash-attention shader), q, k, v and the output as GPU buffers on its device, no CPU fallback; wall " +
      "time per session.run until the device is idle, median of 5 after a warm-up."
    : "") +
  (torchDevice
    ? ` PyTorch (${torchDevice}): \`F.scaled_dot_product_attention\` on fp32 [1, H, N, d] tensors, TF32 off, CUDA ` +
      "events, the fastest of 3 medians of 20 calls after 3 warm-ups (bench/probes/torch_sdpa.py)."
    : ""),
  "",
  table(
    ["N", "causal", "baseline", "ms", "TFLOP/s", "ours, TFLOP/s", "ours ÷ theirs"],
    baselines.map((b) => {
      const o = ours(b.N, b.causal);
      return [
        b.N,
        b.causal ? "yes" : "no",
        b.name,
        b.ms === undefined ? `failed: ${b.note}` : fmt(b.ms, 3),
        b.tflops === undefined ? "" : tf(b.tflops),
        tf(o.tflops),
        b.ms === undefined ? "" : `${fmt(b.ms / o.timing.ms, 2)}×`,
      ];
    }),
  ),
].join("\n");
console.log(`\n${body}${baselineBody}${backwardBody}`);
if (write) {
  const key = `gpu-${adapterName.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "")}`;
  writeSection("BENCHMARKS.md", key, body + baselineBody + backwardBody);
  console.log(`\nwrote the section "${key}" of BENCHMARKS.md`);
}
gpuDevice.destroy();
