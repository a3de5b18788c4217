/**
 * One onnxruntime engine in its own process, driven by bench/field.ts over stdin/stdout (see
 * _protocol.ts). A process per engine and thread count because onnxruntime-web reads
 * `env.wasm.numThreads` once, when its first session starts, and because a failed or aborted
 * WebAssembly instance then takes only its own process down.
 *
 *   <runtime> bench/field/_engine.ts ort-web|ort-node <threads>
 */
import process from "node:process";
import { createInterface } from "node:readline";
import { multiHeadAttentionModel } from "./_onnx.ts";
import { B, d, H, inputs, sampledRows, takeRows } from "./_problem.ts";
import { encodeF32, REPLY_PREFIX } from "./_protocol.ts";
import type { OrtEngine, Reply, Request } from "./_protocol.ts";

/** A session for one problem: run it once, or let it go. */
interface Prepared {
  run(): Promise<Float32Array>;
  release(): Promise<void>;
}

/** What each onnxruntime package offers this script. */
interface Runner {
  /** A session of the MultiHeadAttention model on the inputs for N. */
  prepare(N: number, causal: boolean): Promise<Prepared>;
  /** The thread count the library really uses (onnxruntime-web falls back to 1 where it cannot start threads). */
  threadsInEffect(): number;
}

// Spinning intra-op threads keep polling after a run; on a 2-core machine that would take cycles
// from the next engine's call. Without it a parallel section costs one thread wake-up, which is
// small against calls of 10 ms and more.
const NO_SPINNING = { session: { intra_op: { allow_spinning: "0" } } };

/** The parts of an onnxruntime session and tensor class this script uses (the same in both packages). */
interface OrtSession {
  run(feeds: Record<string, unknown>): Promise<Record<string, { data: unknown }>>;
  release(): Promise<void>;
}
type OrtTensor = new (type: "float32", data: Float32Array, dims: number[]) => unknown;

/** A session on the inputs for N, fed as query, key and value [B, N, H·d]. */
function sessionOn(Tensor: OrtTensor, session: OrtSession, N: number): Prepared {
  const { q, k, v } = inputs(N);
  const dims = [B, N, H * d];
  return {
    async run() {
      const feeds = {
        query: new Tensor("float32", q.data, dims),
        key: new Tensor("float32", k.data, dims),
        value: new Tensor("float32", v.data, dims),
      };
      const { output } = await session.run(feeds);
      return output.data as Float32Array;
    },
    release: () => session.release(),
  };
}

async function ortWeb(threads: number): Promise<Runner> {
  const ort = await import("onnxruntime-web");
  // Read when the first session starts the WebAssembly module, never again.
  ort.env.wasm.numThreads = threads;
  ort.env.logLevel = "error";
  return {
    threadsInEffect: () => ort.env.wasm.numThreads ?? 1,
    async prepare(N, causal) {
      const session = await ort.InferenceSession.create(multiHeadAttentionModel(H, d, causal), {
        executionProviders: ["wasm"],
        logSeverityLevel: 3,
        extra: NO_SPINNING,
      });
      return sessionOn(ort.Tensor, session, N);
    },
  };
}

async function ortNode(threads: number): Promise<Runner> {
  const ort = await import("onnxruntime-node");
  return {
    threadsInEffect: () => threads,
    async prepare(N, causal) {
      const session = await ort.InferenceSession.create(multiHeadAttentionModel(H, d, causal), {
        executionProviders: ["cpu"],
        intraOpNumThreads: threads,
        interOpNumThreads: 1,
        executionMode: "sequential",
        logSeverityLevel: 3,
        extra: NO_SPINNING,
      });
      return sessionOn(ort.Tensor, session, N);
    },
  };
}

function reply(message: Reply): void {
  process.stdout.write(`${REPLY_PREFIX}${JSON.stringify(message)}\n`);
}

const errorText = (error: unknown): string => error instanceof Error ? error.message : String(error);

const [engine, threadsArg] = process.argv.slice(2) as [OrtEngine, string];
const threads = Number(threadsArg);
let runner: Runner;
try {
  if (engine !== "ort-web" && engine !== "ort-node") throw new Error(`unknown engine "${engine}"`);
  if (!Number.isInteger(threads) || threads < 1) throw new Error(`bad thread count "${threadsArg}"`);
  runner = engine === "ort-web" ? await ortWeb(threads) : await ortNode(threads);
  reply({ kind: "ready" });
} catch (error) {
  reply({ kind: "error", error: errorText(error) });
  process.exit(1);
}

let prepared: Prepared | undefined;
for await (const line of createInterface({ input: process.stdin })) {
  const request = JSON.parse(line) as Request;
  try {
    if (request.cmd === "prepare") {
      await prepared?.release();
      prepared = undefined;
      const next = await runner.prepare(request.N, request.causal);
      prepared = next;
      const output = await next.run();
      reply({
        kind: "prepared",
        rows: encodeF32(takeRows(output, sampledRows(request.N))),
        threads: runner.threadsInEffect(),
      });
    } else if (request.cmd === "call") {
      if (!prepared) throw new Error("call before prepare");
      const start = performance.now();
      await prepared.run();
      reply({ kind: "timed", ms: performance.now() - start });
    } else {
      await prepared?.release();
      prepared = undefined;
      reply({ kind: "released" });
    }
  } catch (error) {
    reply({ kind: "error", error: errorText(error) });
  }
}
// onnxruntime-web's worker threads would keep the process alive after stdin closes.
process.exit(0);
