/**
 * onnxruntime-web's WebGPU execution provider as a baseline for bench/gpu.ts: one com.microsoft
 * MultiHeadAttention node (bench/field/_onnx.ts) run by ort's own WebGPU attention shader, with
 * q, k, v created as GPU buffers on ort's device and the output kept there, so the timing covers
 * the attention dispatches and not a round trip through the CPU.
 *
 * Deno only (Node 20 has no WebGPU). onnxruntime-web comes from bench/field's own install (`npm ci`
 * in bench/field), never the root's. Its WebGPU bundle is imported from local files and its
 * WebAssembly handed over as bytes (`env.wasm.wasmBinary`; no `wasmPaths`, no network), and the
 * session refuses to fall back to the CPU for any node, so a number here is always ort's WebGPU.
 */

/** What bench/gpu.ts needs from the engine. */
export interface OrtWebGpu {
  /** onnxruntime-web's version. */
  version: string;
  /**
   * Runs MultiHeadAttention on [1, N, H·d] inputs already on the GPU, `repeats` times back to back,
   * and returns the median milliseconds of one run (each run awaited until its GPU work is done).
   */
  time(N: number, causal: boolean, repeats: number): Promise<number>;
  /** The output of one run at N, downloaded, [1, N, H·d] (for a correctness check). */
  output(N: number, causal: boolean): Promise<Float32Array>;
  release(): Promise<void>;
}

// deno-lint-ignore no-explicit-any
type Ort = any;

/** Where bench/field installs onnxruntime-web, relative to this file. */
const DIST = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url);

/**
 * Loads ort's WebGPU bundle and starts a session per causal setting. `inputs(N)` gives the f32
 * data of q, k, v ([1, N, H·d] each); `wasmBinary` may be given (e.g. a decompressed copy),
 * otherwise it is read from bench/field's install.
 */
export async function startOrtWebGpu(
  H: number,
  d: number,
  inputs: (N: number) => { q: Float32Array; k: Float32Array; v: Float32Array },
  wasmBinary?: Uint8Array,
): Promise<OrtWebGpu> {
  const { multiHeadAttentionModel } = await import("./_onnx.ts");
  const ort: Ort = await import(
    new URL("ort.webgpu.bundle.min.mjs", DIST).href
  );
  ort.env.wasm.wasmBinary = wasmBinary ??
    await Deno.readFile(new URL("ort-wasm-simd-threaded.asyncify.wasm", DIST));
  ort.env.wasm.numThreads = 1;
  ort.env.logLevel = "error";
  const options = {
    executionProviders: ["webgpu"],
    preferredOutputLocation: "gpu-buffer",
    extra: { session: { disable_cpu_ep_fallback: "1" } },
  };
  const sessions = new Map<boolean, Ort>();
  for (const causal of [false, true]) {
    sessions.set(
      causal,
      await ort.InferenceSession.create(
        multiHeadAttentionModel(H, d, causal),
        options,
      ),
    );
  }
  const device: GPUDevice = await ort.env.webgpu.device;
  const feeds = new Map<
    number,
    { tensors: Record<string, Ort>; buffers: GPUBuffer[] }
  >();

  /** q, k, v of length N as GPU tensors on ort's device (made once per N). */
  function feedsFor(N: number) {
    let f = feeds.get(N);
    if (f) return f;
    const data = inputs(N);
    const buffers: GPUBuffer[] = [];
    const tensors: Record<string, Ort> = {};
    for (
      const [name, array] of [["query", data.q], ["key", data.k], [
        "value",
        data.v,
      ]] as const
    ) {
      const buffer = device.createBuffer({
        size: array.byteLength,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC |
          GPUBufferUsage.COPY_DST,
      });
      device.queue.writeBuffer(buffer, 0, array as Float32Array<ArrayBuffer>);
      buffers.push(buffer);
      tensors[name] = ort.Tensor.fromGpuBuffer(buffer, {
        dataType: "float32",
        dims: [1, N, H * d],
      });
    }
    f = { tensors, buffers };
    feeds.set(N, f);
    return f;
  }

  async function runOnce(N: number, causal: boolean): Promise<Ort> {
    const result = await sessions.get(causal).run(feedsFor(N).tensors);
    await device.queue.onSubmittedWorkDone();
    return result.output;
  }

  return {
    version: ort.env.versions?.web ?? "unknown",
    async time(N, causal, repeats) {
      (await runOnce(N, causal)).dispose(); // warm-up: shader compilation, allocations
      const ms: number[] = [];
      for (let i = 0; i < repeats; i++) {
        const t0 = performance.now();
        const out = await runOnce(N, causal);
        ms.push(performance.now() - t0);
        out.dispose();
      }
      ms.sort((a, b) => a - b);
      return ms[ms.length >> 1];
    },
    async output(N, causal) {
      const out = await runOnce(N, causal);
      const data = new Float32Array(await out.getData());
      out.dispose();
      return data;
    },
    async release() {
      for (const { buffers } of feeds.values()) {
        for (const b of buffers) b.destroy();
      }
      feeds.clear();
      for (const s of sessions.values()) await s.release();
    },
  };
}
