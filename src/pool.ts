/**
 * `createAttentionPool`: the same attention on every core. Each Worker of a pool is a streaming
 * multiprocessor with its own SRAM arena, and all of them share one HBM: a shared, growable
 * `WebAssembly.Memory` holding the threads build of the kernels.
 *
 * @module
 */
import { ensureArena } from "./_blocks.ts";
import { ensureMemory } from "./_forward.ts";
import { HEAD_DIM_MAX, PAGE_BYTES } from "./_limits.ts";
import {
  align,
  allocateResults,
  CACHED_KV_BYTES,
  checkAddressable,
  CHUNK_BYTES,
  type ForwardPlan,
  forwardSteps,
  type KernelName,
  planForward,
  planScope,
  type Step,
} from "./_plan.ts";
import { type BackwardPlan, planBackward } from "./_backward_plan.ts";
import { allocateGradients, ensureBackwardArena, gradientsOf, runBackwardSync } from "./_backward_run.ts";
import type { AttentionGradients, FlashAttentionBackwardOptions } from "./backward.ts";
import { checkOptionKeys } from "./_options.ts";
import type { AttentionCall, BackwardCall } from "./_problem.ts";
import { appendRows, attend, outputOf, prepare } from "./_run.ts";
import { chooseSplits } from "./_splits.ts";
import { backwardStatsOf, type Counters, readCounterBlock, resetCounterBlock, statsOf, sumCounters } from "./_stats.ts";
import {
  validateBackwardCall,
  validateForwardCall,
  validateKvCacheCall,
  validateResidentCacheCall,
} from "./_validate.ts";
import { heapOf } from "./_heap.ts";
import { type KvCache, type KvCacheConfig, readCacheConfig, ResidentKvCache } from "./_resident_cache.ts";
import {
  POOL_MEMORY,
  SABOTAGE,
  type Sabotage,
  sharedMemory,
  spawnWorker,
  type WorkerHandle,
  type WorkerLoss,
  type WorkerMessage,
} from "./_workers.ts";
import type { FlashAttentionOptions } from "./flash_attention.ts";
import type { KvCacheOptions, ResidentKvCacheOptions } from "./kv_cache.ts";
import type { AttentionOutput, HalfAttentionOutput } from "./result.ts";
import type { HalfDtype, InputTensor } from "./tensor.ts";
import { WASM_BASE64 as THREADS_WASM_BASE64 } from "./wasm/kernels_threads.generated.ts";
import { WASM_BASE64 as THREADS_RELAXED_WASM_BASE64 } from "./wasm/kernels_threads_relaxed.generated.ts";
import { decodeBase64, init, loadKernels, type RawKernels } from "./wasm/loader.ts";

/** Options of {@linkcode createAttentionPool}. */
export interface AttentionPoolOptions {
  /**
   * Number of Workers, from 1 to {@linkcode POOL_MAX_THREADS}. Default: the runtime's hardware
   * concurrency (`navigator.hardwareConcurrency`, or `os.availableParallelism()` on Node 20).
   */
  threads?: number;
}

/** Most Workers a pool may have (each reserves an 8 MiB arena of the 4 GiB memory). */
export const POOL_MAX_THREADS = 128;

/**
 * A pool of Workers computing attention together. Its calls take the arguments of the
 * synchronous functions, validate them the same way (a bad call rejects with the same typed
 * error, before any work), and resolve to results bitwise identical to theirs. Calls may overlap:
 * they run one after another in the order they were made, each on every Worker.
 */
export interface AttentionPool {
  /** The number of Workers. */
  readonly threads: number;
  /**
   * `flashAttention` on the pool with a 16-bit output (`outDtype: "f16"` or `"bf16"`).
   *
   * @param q Queries.
   * @param k Keys.
   * @param v Values.
   * @param options As `flashAttention`'s, with `outDtype`.
   * @returns A promise of the 16-bit output.
   */
  flashAttention(
    q: InputTensor,
    k: InputTensor,
    v: InputTensor,
    options: FlashAttentionOptions & { outDtype: HalfDtype },
  ): Promise<HalfAttentionOutput>;
  /**
   * `flashAttention` on the pool: same arguments, options and errors, and the same bits.
   *
   * @param q Queries.
   * @param k Keys.
   * @param v Values.
   * @param options As `flashAttention`'s.
   * @returns A promise of the output (with `lse` and `stats` when asked for).
   */
  flashAttention(
    q: InputTensor,
    k: InputTensor,
    v: InputTensor,
    options?: FlashAttentionOptions,
  ): Promise<AttentionOutput>;
  /**
   * `flashAttentionWithKvCache` on the pool: same arguments, options and errors. The
   * bits equal the synchronous call's with the same `numSplits`; the automatic choice (0) may
   * split the keys here where the synchronous function does not (it splits when there are fewer
   * head groups than Workers), and then differs from it in the last bits.
   *
   * @param q Queries, [B, Nq, H, d].
   * @param kCache Key cache, [B, maxLen, Hkv, d]; written to when `kNew` is given.
   * @param vCache Value cache, [B, maxLen, Hkv, dv]; written to when `vNew` is given.
   * @param options As `flashAttentionWithKvCache`'s.
   * @returns A promise of the output.
   */
  flashAttentionWithKvCache(
    q: InputTensor,
    kCache: InputTensor,
    vCache: InputTensor,
    options?: KvCacheOptions,
  ): Promise<AttentionOutput>;
  /**
   * `flashAttentionWithKvCache` on a KV cache this pool created ({@linkcode AttentionPool.createKvCache}):
   * the Workers read its keys and values where they live. Same options as the synchronous call
   * with a cache object, and the same bits with the same `numSplits`.
   *
   * @param q Queries, [B, Nq, H, d].
   * @param cache A cache from this pool's `createKvCache`.
   * @param options As `flashAttentionWithKvCache`'s with a cache object.
   * @returns A promise of the output.
   */
  flashAttentionWithKvCache(q: InputTensor, cache: KvCache, options?: ResidentKvCacheOptions): Promise<AttentionOutput>;
  /**
   * `flashAttentionWithKvCache` on a cache this pool created, with a 16-bit output (`outDtype`).
   *
   * @param q Queries, [B, Nq, H, d].
   * @param cache A cache from this pool's `createKvCache`.
   * @param options Options with `outDtype: "f16"` or `"bf16"`.
   * @returns A promise of the 16-bit output.
   */
  flashAttentionWithKvCache(
    q: InputTensor,
    cache: KvCache,
    options: ResidentKvCacheOptions & { outDtype: HalfDtype },
  ): Promise<HalfAttentionOutput>;
  /**
   * `flashAttentionWithKvCache` on caller-owned caches, with a 16-bit output (`outDtype`).
   *
   * @param q Queries, [B, Nq, H, d].
   * @param kCache Key cache, [B, maxLen, Hkv, d].
   * @param vCache Value cache, [B, maxLen, Hkv, dv].
   * @param options Options with `outDtype: "f16"` or `"bf16"`.
   * @returns A promise of the 16-bit output.
   */
  flashAttentionWithKvCache(
    q: InputTensor,
    kCache: InputTensor,
    vCache: InputTensor,
    options: KvCacheOptions & { outDtype: HalfDtype },
  ): Promise<HalfAttentionOutput>;
  /**
   * A KV cache in the pool's shared memory, for this pool's `flashAttentionWithKvCache`. Do not
   * reset or free it while a call that reads it is pending (those throw); appending is fine.
   *
   * @param config The cache's sizes.
   * @returns The cache, empty.
   * @throws {TypeError} For a config that is not an object, has unknown keys or non-number sizes.
   * @throws {RangeError} For sizes that are not positive integers, head dims above 256, or a cache
   *   that does not fit in WebAssembly memory.
   */
  createKvCache(config: KvCacheConfig): KvCache;
  /**
   * `flashAttentionBackward` on the pool: same arguments, options and errors, and the same bits
   * for any number of Workers (dQ jobs own whole query blocks, dK/dV jobs whole key blocks).
   *
   * @param q Queries.
   * @param k Keys.
   * @param v Values.
   * @param out The forward's result with its `lse`.
   * @param dOut ∂L/∂O.
   * @param options As `flashAttentionBackward`'s.
   * @returns A promise of the gradients.
   */
  flashAttentionBackward(
    q: InputTensor,
    k: InputTensor,
    v: InputTensor,
    out: AttentionOutput | HalfAttentionOutput,
    dOut: InputTensor,
    options?: FlashAttentionBackwardOptions,
  ): Promise<AttentionGradients>;
  /**
   * Ends every Worker once the calls already made have finished; later calls reject. Resolves
   * when the Workers are gone.
   */
  close(): Promise<void>;
}

/**
 * A pool call failed because one of the pool's Workers was lost while working on it: its
 * WebAssembly instance trapped (`reason: "trap"`), it threw an uncaught error (`"error"`), or it
 * stopped (`"exit"`: terminated, or its thread ended). Only the calls that Worker was working on
 * reject; the pool starts a new Worker in its place before the next call, which gives the usual
 * bits. A KV-cache call with `kNew` has already written its rows into the caches when it rejects.
 *
 * @example Usage
 * ```ts
 * import { createAttentionPool, PoolWorkerError } from "@flash/attention";
 *
 * const t = { data: new Float32Array(4 * 8).fill(0.5), shape: [1, 4, 1, 8] };
 * const pool = await createAttentionPool({ threads: 2 });
 * try {
 *   let o;
 *   try {
 *     o = await pool.flashAttention(t, t, t);
 *   } catch (error) {
 *     if (!(error instanceof PoolWorkerError)) throw error;
 *     o = await pool.flashAttention(t, t, t); // once more, on the replacement Worker
 *   }
 *   if (o.data.length !== 32) throw new Error("wrong size");
 * } finally {
 *   await pool.close();
 * }
 * ```
 */
export class PoolWorkerError extends Error {
  /** The lost Worker's index, 0 to `threads` − 1 (its SM; its name is "flash-attention SM <index>"). */
  readonly worker: number;
  /** What happened to it. */
  readonly reason: "trap" | "error" | "exit";

  /**
   * Creates a PoolWorkerError.
   *
   * @param message The full message, naming the Worker and what happened.
   * @param worker The Worker's index.
   * @param reason What happened to it.
   */
  constructor(message: string, worker: number, reason: "trap" | "error" | "exit") {
    super(message);
    this.name = "PoolWorkerError";
    this.worker = worker;
    this.reason = reason;
  }
}

/** How a pool places and cuts work; tests change it to reach every path on small problems. */
export interface PoolTuning {
  /**
   * Problems below this many flops (4·H·Nq·Nk·max(d, dv) summed over sequences) run on the
   * calling thread, where a dispatch to the Workers would cost more than it saves (bench/pool.ts
   * measures the break-even).
   */
  inlineFlops: number;
  /** Sequences up to this size are staged whole into the pool's HBM, every tensor copied in once. */
  slabBudgetBytes: number;
  /** Jobs per Worker to aim for, so that uneven jobs (causal rows) still end together. */
  jobsPerThread: number;
  /**
   * The shared memory's maximum in bytes (a multiple of 64 KiB); default: 4 GiB, or less where the
   * runtime cannot reserve that much. Tests set a small one to see a refused grow.
   */
  memoryMaxBytes?: number;
  /** K and V bytes up to which thin blocks stream K; default CACHED_KV_BYTES. Tests lower it. */
  cachedKvBytes?: number;
}

/** The pool's tuning. */
export const POOL_TUNING: PoolTuning = { inlineFlops: 3e7, slabBudgetBytes: 1 << 30, jobsPerThread: 4 };

/**
 * Starts a pool of Workers that compute attention together on one shared WebAssembly memory.
 * Needs `SharedArrayBuffer` (in browsers: a cross-origin isolated page, served with
 * `Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy: require-corp`) and
 * Workers; runs on Deno, Bun, Node ≥ 20 and such browsers. Where they are missing it rejects, and
 * the synchronous functions keep working.
 *
 * Close the pool when done: Deno keeps running while its Workers live. On Node and Bun an idle
 * pool does not keep the process alive.
 *
 * @param options The number of Workers.
 * @returns A promise of the pool, resolved when every Worker is ready.
 * @throws {DOMException} `NotSupportedError` where the runtime has no shared memory or no Workers.
 * @throws {TypeError} For options that are not an object, unknown keys, or a non-number `threads`.
 * @throws {RangeError} For `threads` that is not an integer in [1, {@linkcode POOL_MAX_THREADS}].
 *
 * @example Usage
 * ```ts
 * import { createAttentionPool, flashAttention } from "@flash/attention";
 *
 * const [B, N, H, d] = [1, 256, 4, 32];
 * const tensor = () => ({ data: new Float32Array(B * N * H * d).map(Math.random), shape: [B, N, H, d] });
 * const q = tensor(), k = tensor(), v = tensor();
 * const pool = await createAttentionPool({ threads: 2 });
 * try {
 *   const o = await pool.flashAttention(q, k, v, { causal: true });
 *   const same = flashAttention(q, k, v, { causal: true });
 *   if (!o.data.every((x, i) => Object.is(x, same.data[i]))) throw new Error("not the same bits");
 * } finally {
 *   await pool.close();
 * }
 * ```
 */
export async function createAttentionPool(options?: AttentionPoolOptions): Promise<AttentionPool> {
  const threads = await readThreads(options);
  if (typeof SharedArrayBuffer === "undefined") {
    throw new DOMException(
      "Cannot create an attention pool as this runtime has no SharedArrayBuffer (browsers grant it to cross-origin " +
        "isolated pages: serve them with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: " +
        "require-corp); the synchronous functions work without it",
      "NotSupportedError",
    );
  }
  // deno-lint-ignore no-explicit-any
  const platform = globalThis as any;
  if (typeof platform.Worker !== "function" && platform.process?.versions?.node === undefined) {
    throw new DOMException(
      "Cannot create an attention pool as this runtime has no Workers; the synchronous functions work without them",
      "NotSupportedError",
    );
  }
  return await startPool(threads, POOL_TUNING);
}

/** Starts a pool of `threads` Workers with the given tuning (createAttentionPool without its checks). */
export async function startPool(threads: number, tuning: PoolTuning): Promise<AttentionPool> {
  const pool = new Pool(threads, tuning);
  await pool.start();
  return pool;
}

async function readThreads(options: unknown): Promise<number> {
  const prefix = "Cannot create an attention pool as";
  const opts = checkOptionKeys(options, ["threads"], (text) => `${prefix} ${text}`);
  if (opts.threads === undefined) return Math.min(POOL_MAX_THREADS, await hardwareConcurrency());
  if (typeof opts.threads !== "number") {
    throw new TypeError(`${prefix} threads must be a number: threads is ${String(opts.threads)}`);
  }
  if (!Number.isInteger(opts.threads) || opts.threads < 1 || opts.threads > POOL_MAX_THREADS) {
    throw new RangeError(
      `${prefix} threads must be an integer in [1, ${POOL_MAX_THREADS}]: threads is ${opts.threads}`,
    );
  }
  return opts.threads;
}

/** Logical cores the runtime reports. */
async function hardwareConcurrency(): Promise<number> {
  // deno-lint-ignore no-explicit-any
  const reported = (globalThis as any).navigator?.hardwareConcurrency;
  if (typeof reported === "number" && reported >= 1) return reported;
  const specifier = "node:os"; // Node 20 has no navigator
  const os = await import(specifier);
  return os.availableParallelism?.() ?? os.cpus().length;
}

/** A forward plan with each phase's jobs and merges as steps. */
function stepped(plan: ForwardPlan) {
  return { ...plan, phases: plan.phases.map((phase) => ({ ...phase, steps: forwardSteps(phase) })) };
}

/** One Worker's slot: its handle and the reply it is waiting for. */
interface Slot {
  worker: WorkerHandle | undefined;
  pending: { resolve: (message: WorkerMessage) => void; reject: (error: Error) => void } | undefined;
  /** Why the slot has no Worker, once one was lost. */
  lost: PoolWorkerError | undefined;
  /** Resolves when the slot's last lost Worker has stopped (where the runtime tells). */
  stopped: Promise<void>;
  /** Test-only fault to inject into the Worker's next job request ({@linkcode SABOTAGE}). */
  sabotage: Sabotage | undefined;
}

class Pool implements AttentionPool {
  readonly threads: number;
  #memory: WebAssembly.Memory | undefined;
  /** The threads build of the same SIMD family as the single-threaded kernels (set by start). */
  #wasm = new ArrayBuffer(0);
  #slots: Slot[];
  /** Byte addresses from the threads build's memory map (assembly/arena.ts). */
  #smPtr = 0;
  #smBytes = 0;
  #hbmPtr = 0;
  /** The last call in the queue: each call starts when the one before it settles. */
  #tail: Promise<unknown> = Promise.resolve();
  #closed = false;
  #tuning: PoolTuning;
  /** One past the last byte the call in progress uses (its plan and job table), or 0 when idle. */
  #runningEnd = 0;

  constructor(threads: number, tuning: PoolTuning) {
    this.threads = threads;
    this.#tuning = tuning;
    this.#slots = Array.from(
      { length: threads },
      () => ({
        worker: undefined,
        pending: undefined,
        lost: undefined,
        stopped: Promise.resolve(),
        sabotage: undefined,
      }),
    );
  }

  /** Creates the shared memory and starts every Worker on its SM. */
  async start(): Promise<void> {
    // The single-threaded kernels decide block sizes and run small calls inline; compiled
    // asynchronously here, since browsers refuse to compile large modules synchronously on the
    // main thread.
    // The Workers run the threads build of the same family (baseline or relaxed), so that the pool
    // gives the synchronous functions' bits.
    const { simd } = await init();
    this.#wasm = decodeBase64(simd === "relaxed" ? THREADS_RELAXED_WASM_BASE64 : THREADS_WASM_BASE64);
    // The memory map is the kernels' own: read it from a throwaway instance on a one-page memory.
    const probe = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    const { instance } = await WebAssembly.instantiate(this.#wasm, { env: { memory: probe } });
    const raw = instance.exports as unknown as RawKernels;
    this.#smPtr = raw.smPtr();
    this.#smBytes = raw.smBytes();
    this.#hbmPtr = this.#smPtr + this.threads * this.#smBytes;
    this.#memory = sharedMemory(Math.ceil(this.#hbmPtr / PAGE_BYTES), this.#tuning.memoryMaxBytes);
    try {
      await Promise.all(this.#slots.map((_, t) => this.#startWorker(t)));
    } catch (error) {
      await this.#terminate();
      throw error;
    }
    this.#idle();
  }

  async #startWorker(t: number): Promise<void> {
    const slot = this.#slots[t];
    // A lost Worker may still be running a job: its replacement waits until it has stopped.
    await slot.stopped;
    const worker = await spawnWorker(`flash-attention SM ${t}`);
    slot.worker = worker;
    slot.lost = undefined;
    const lose = (reason: PoolWorkerError["reason"], detail: string) => {
      if (slot.worker !== worker) return; // already lost (Node reports an error, then the exit)
      const what = reason === "trap" ? "trapped" : reason === "error" ? "failed" : "stopped";
      const error = new PoolWorkerError(
        `Cannot compute attention as pool Worker ${t} (flash-attention SM ${t}, of ${this.threads}) ${what}: ` +
          `${detail}; the pool starts a new Worker in its place before the next call`,
        t,
        reason,
      );
      // The Worker is gone or cannot be trusted: its slot starts a new one before the next call.
      slot.worker = undefined;
      slot.lost = error;
      slot.stopped = worker.terminate();
      const pending = slot.pending;
      slot.pending = undefined;
      pending?.reject(error);
    };
    worker.onMessage = (message) => {
      if (slot.worker !== worker) return;
      if (message.type === "error") {
        const trapped = message.name === "RuntimeError";
        lose(
          trapped ? "trap" : "error",
          `${trapped ? "its WebAssembly instance trapped" : "it threw"}: ` +
            `${message.name}: ${message.message}`,
        );
        return;
      }
      const pending = slot.pending;
      slot.pending = undefined;
      pending?.resolve(message);
    };
    worker.onFailure = (loss: WorkerLoss, detail: string) => lose(loss, `it ${detail}`);
    await this.#request(t, {
      type: "init",
      memory: this.#memory,
      wasm: this.#wasm,
      sm: this.#smPtr + t * this.#smBytes,
    });
  }

  #request(t: number, message: { type: string; [key: string]: unknown }): Promise<WorkerMessage> {
    const slot = this.#slots[t];
    const worker = slot.worker;
    if (worker === undefined) {
      // Lost while idle, between the phases of this call.
      return Promise.reject(slot.lost ?? new Error("the pool was closed"));
    }
    const sabotage = message.type === "run" ? slot.sabotage : undefined;
    slot.sabotage = undefined;
    return new Promise((resolve, reject) => {
      slot.pending = { resolve, reject };
      // "terminate" ends the Worker instead of sending the job: sent first, a small job could be
      // done and answered before the end takes effect, and the call would not see the loss.
      if (sabotage === "terminate") worker.kill();
      else worker.post(sabotage === "trap" || sabotage === "throw" ? { ...message, sabotage } : message);
    });
  }

  /** Internal, the soak and tests only: the shared memory (see {@linkcode POOL_MEMORY}). */
  [POOL_MEMORY](): WebAssembly.Memory | undefined {
    return this.#memory;
  }

  /** Internal, tests only: Worker `t` fails during its next job request (see {@linkcode SABOTAGE}). */
  [SABOTAGE](t: number, how: Sabotage): void {
    this.#slots[t].sabotage = how;
  }

  #idle(): void {
    for (const slot of this.#slots) slot.worker?.unref();
  }

  #busy(): void {
    for (const slot of this.#slots) slot.worker?.ref();
  }

  /** Ends every Worker; resolves when they have stopped (where the runtime tells). */
  async #terminate(): Promise<void> {
    const stopping = this.#slots.map((slot) => {
      const stopped = slot.worker ? Promise.all([slot.stopped, slot.worker.terminate()]) : slot.stopped;
      slot.worker = undefined;
      slot.pending?.reject(new Error("the pool was closed"));
      slot.pending = undefined;
      return stopped;
    });
    await Promise.all(stopping);
  }

  // The interface's overloads type the result by outDtype; one implementation returns whichever the
  // call asked for.
  flashAttention(q: InputTensor, k: InputTensor, v: InputTensor, options?: FlashAttentionOptions): Promise<never> {
    return this.#submit(() => validateForwardCall(q, k, v, options)) as Promise<never>;
  }

  flashAttentionWithKvCache(
    q: InputTensor,
    cache: InputTensor | KvCache,
    vCache?: InputTensor | ResidentKvCacheOptions,
    options?: KvCacheOptions,
  ): Promise<never> {
    return this.#submit(() =>
      cache instanceof ResidentKvCache
        ? validateResidentCacheCall(q, cache, vCache)
        : validateKvCacheCall(q, cache, vCache, options)
    ) as Promise<never>;
  }

  close(): Promise<void> {
    if (this.#closed) return this.#tail.then(() => {}, () => {});
    this.#closed = true;
    const done = this.#tail.then(() => {}, () => {}).then(() => this.#terminate());
    this.#tail = done;
    return done;
  }

  createKvCache(config: KvCacheConfig): KvCache {
    if (this.#closed) throw new Error("Cannot create a KV cache as the pool is closed");
    const heap = heapOf(this.#memory!, this.#hbmPtr);
    // Above the tensors of a call in progress, which the plan placed above the heap's end.
    return new ResidentKvCache(this.#memory!, heap, readCacheConfig(config, HEAD_DIM_MAX), this.#runningEnd);
  }

  /**
   * Validates now (so a bad call rejects at once, with the synchronous call's error), then queues
   * the run; the plan is made when the run starts, above any KV cache created meanwhile.
   */
  #submit(validate: () => AttentionCall): Promise<AttentionOutput> {
    return this.#enqueue(() => {
      const call = validate();
      return { run: this.#schedule(call), cache: call.cache };
    });
  }

  /**
   * Runs `accept` now (validation and scheduling: a bad call rejects at once) and queues what it
   * returns behind the calls already made.
   */
  #enqueue<T>(accept: () => { run: () => Promise<T> | T; cache?: { hold(): () => void } }): Promise<T> {
    let run: () => Promise<T> | T;
    let release = () => {};
    try {
      if (this.#closed) throw new Error("Cannot compute attention as the pool is closed");
      const accepted = accept();
      run = accepted.run;
      if (accepted.cache) release = accepted.cache.hold();
    } catch (error) {
      return Promise.reject(error);
    }
    const result = this.#tail.then(run).finally(release);
    this.#tail = result.catch(() => {});
    return result;
  }

  /** Decides how a validated call runs: on the calling thread when small, else on the Workers. */
  #schedule(call: AttentionCall): () => Promise<AttentionOutput> | AttentionOutput {
    const { problem: p } = call;
    if (p.resident && p.resident.memory !== this.#memory) {
      throw new TypeError(
        "Cannot compute attention as the KV cache lives in another memory: pass it to the functions of the pool " +
          "that created it (or to the synchronous function, for a cache from createKvCache)",
      );
    }
    const kernels = loadKernels(); // the single-threaded build: the same block rule and the inline runs
    const blocks = { sramBytes: call.sramBytes, ...ensureArena(kernels, call.sramBytes, p) };
    let flops = 0;
    for (const s of p.sequences) flops += 4 * p.H * s.Nq * s.Nk * Math.max(p.d, p.dv);
    if (flops < this.#tuning.inlineFlops && !p.resident) {
      // every check, memory included, before anything is written
      return () => attend(prepare(call));
    }
    return () => this.#run(call, this.#plan(call, blocks), blocks);
  }

  /** The plan of a call on the Workers, placed above the pool's SMs and KV caches. */
  #plan(call: AttentionCall, blocks: { sramBytes: number; Br: number; Bc: number }): ForwardPlan {
    const { problem: p } = call;
    const groups = p.sequences.filter((s) => s.Nq > 0).length * p.Hkv;
    const keys = Math.max(0, ...p.sequences.map((s) => s.Nk));
    const numSplits = call.numSplits || chooseSplits(keys, Math.ceil(this.threads / Math.max(1, groups)));
    const plan = planForward(p, {
      ...blocks,
      numSplits,
      hbmPtr: heapOf(this.#memory!, this.#hbmPtr).end,
      slabBudgetBytes: this.#tuning.slabBudgetBytes,
      chunkBytes: CHUNK_BYTES * this.threads,
      jobsPerGroup: Math.ceil((this.#tuning.jobsPerThread * this.threads) / Math.max(1, groups)),
      cachedKvBytes: this.#tuning.cachedKvBytes ?? CACHED_KV_BYTES,
    });
    checkAddressable(this.#tableEnd(stepped(plan)), `${planScope(plan)}, with its job table,`, p.shapes);
    return plan;
  }

  /** One past the largest job table of a plan's steps (8 bytes per argument). */
  #tableEnd(plan: { endPtr: number; phases: { steps: Step[] }[] }): number {
    const sizes = plan.phases.flatMap((phase) =>
      phase.steps.map((step) => step.args.length * (step.args[0]?.length ?? 0))
    );
    return this.#tablePtr(plan.endPtr) + 8 * Math.max(0, ...sizes);
  }

  /** Where a plan's job table goes: after everything the plan places, behind a 64-byte cursor line. */
  #tablePtr(endPtr: number): number {
    return align(endPtr) + 64;
  }

  async #run(
    call: AttentionCall,
    plan: ForwardPlan,
    blocks: { sramBytes: number; Br: number; Bc: number },
  ): Promise<AttentionOutput> {
    const { problem: p } = call;
    // The memory first: a refused grow must fail the call before its result arrays exist.
    ensureMemory(this.#memory!, this.#tableEnd(stepped(plan)), planScope(plan), p.shapes);
    const results = allocateResults(p, call.out);
    const perWorker = await this.#runPhases(stepped(plan), results, planScope(plan), p.shapes, () => {
      if (call.append) appendRows(call.append);
    });
    const output = outputOf(p, results);
    if (call.stats) {
      output.stats = {
        ...statsOf(sumCounters(perWorker), p, blocks),
        sramPeakBytesPerWorker: perWorker.map((c) => c.arenaPeakBytes),
      };
    }
    return output;
  }

  flashAttentionBackward(
    q: InputTensor,
    k: InputTensor,
    v: InputTensor,
    out: AttentionOutput | HalfAttentionOutput,
    dOut: InputTensor,
    options?: FlashAttentionBackwardOptions,
  ): Promise<AttentionGradients> {
    return this.#enqueue(() => {
      const call = validateBackwardCall(q, k, v, out, dOut, options);
      const { problem: p } = call;
      const kernels = loadKernels();
      const B = ensureBackwardArena(kernels, call.sramBytes, p);
      let flops = 0;
      for (const s of p.sequences) flops += 10 * p.H * s.Nq * s.Nk * Math.max(p.d, p.dv);
      if (flops < this.#tuning.inlineFlops) return { run: () => runBackwardSync(call) };
      return { run: () => this.#runBackward(call, B) };
    });
  }

  async #runBackward(call: BackwardCall, B: number): Promise<AttentionGradients> {
    const { problem: p } = call;
    const groups = p.sequences.filter((s) => s.Nq > 0).length * p.Hkv;
    const jobsPerGroup = Math.ceil((this.#tuning.jobsPerThread * this.threads) / Math.max(1, groups));
    const plan: BackwardPlan = planBackward(p, call, {
      sramBytes: call.sramBytes,
      B,
      hbmPtr: heapOf(this.#memory!, this.#hbmPtr).end,
      slabBudgetBytes: this.#tuning.slabBudgetBytes,
      queryJobsPerGroup: jobsPerGroup,
    });
    const scope = "the backward of one sequence of this call";
    checkAddressable(this.#tableEnd(plan), `${scope}, with its job table,`, p.shapes);
    // The memory first: a refused grow must fail the call before it zeroes the caller's gradient buffers.
    ensureMemory(this.#memory!, this.#tableEnd(plan), scope, p.shapes);
    const grads = allocateGradients(call);
    const perWorker = await this.#runPhases(plan, grads, scope, p.shapes, () => {});
    const result = gradientsOf(call, grads);
    if (call.stats) {
      result.stats = {
        ...backwardStatsOf(sumCounters(perWorker), p, { sramBytes: call.sramBytes, B }),
        sramPeakBytesPerWorker: perWorker.map((c) => c.arenaPeakBytes),
      };
    }
    return result;
  }

  /**
   * Runs a plan's phases on the Workers: grows the memory, calls `before` (once nothing can fail
   * for lack of memory), then stages, dispatches each step and unstages, phase by phase. Returns
   * each Worker's counters.
   */
  async #runPhases<R>(
    plan: {
      endPtr: number;
      phases: { stage(m: ArrayBufferLike): void; steps: Step[]; unstage(m: ArrayBufferLike, r: R): void }[];
    },
    results: R,
    scope: string,
    shapes: string,
    before: () => void,
  ): Promise<Counters[]> {
    const memory = this.#memory!;
    ensureMemory(memory, this.#tableEnd(plan), scope, shapes);
    this.#runningEnd = this.#tableEnd(plan);
    try {
      await this.#replaceLostWorkers();
      before();
      for (let t = 0; t < this.threads; t++) resetCounterBlock(memory.buffer, this.#smPtr + t * this.#smBytes);
      this.#busy();
      for (const phase of plan.phases) {
        phase.stage(memory.buffer);
        for (const step of phase.steps) await this.#dispatch(step.kernel, step.args, plan.endPtr);
        phase.unstage(memory.buffer, results);
      }
    } finally {
      this.#idle();
      this.#runningEnd = 0;
    }
    return this.#slots.map((_, t) => readCounterBlock(memory.buffer, this.#smPtr + t * this.#smBytes));
  }

  /** Writes the job table and has every Worker take jobs from it until none is left. */
  async #dispatch(kernel: KernelName, jobs: number[][], endPtr: number): Promise<void> {
    if (jobs.length === 0) return;
    const arity = jobs[0].length;
    const memory = this.#memory!;
    const cursorPtr = align(endPtr);
    const tablePtr = this.#tablePtr(endPtr);
    const table = new Float64Array(memory.buffer, tablePtr, jobs.length * arity);
    jobs.forEach((args, i) => table.set(args, i * arity));
    Atomics.store(new Int32Array(memory.buffer, cursorPtr, 1), 0, 0);
    const workers = Math.min(this.threads, jobs.length);
    const replies = await Promise.allSettled(
      Array.from(
        { length: workers },
        (_, t) => this.#request(t, { type: "run", kernel, tablePtr, count: jobs.length, arity, cursorPtr }),
      ),
    );
    const failed = replies.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
  }

  /** Starts a new Worker in every slot whose Worker was lost (it crashed or was ended). */
  async #replaceLostWorkers(): Promise<void> {
    const lost = this.#slots.map((slot, t) => slot.worker === undefined ? t : -1).filter((t) => t >= 0);
    await Promise.all(lost.map((t) => this.#startWorker(t)));
  }
}
