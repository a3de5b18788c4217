// Calls that need more WebAssembly memory than there is: more than a wasm32 memory addresses
// (4 GiB), or more than the runtime lets the memory grow to. Each path that computes a call's
// memory need is tried — the forward, a caller-owned KV cache, a resident KV cache, the backward,
// the pool's forward, backward and caches, the pool's own shared memory — and each must fail with a
// RangeError that names the bytes, before it grows the memory, allocates the result or writes to
// the caller's buffers, and leave the library giving the same bits as before.
//
// The huge inputs are Float32Arrays that no one writes: every runtime allocates them lazily
// (untouched pages), so a 2.25 GB array costs no real memory. A KV cache's config needs no data at
// all. A refused grow is real: the threads build of the kernels (which imports its memory) runs on
// a shared memory with a small maximum, through the same prepare/run path as the package's
// kernels, and a pool is started with a small maximum (PoolTuning.memoryMaxBytes).

import {
  type AttentionOutput,
  createKvCache,
  flashAttention,
  flashAttentionBackward,
  flashAttentionWithKvCache,
  type Tensor,
} from "../mod.ts";
import { runBackwardSync } from "../src/_backward_run.ts";
import { readCacheConfig, ResidentKvCache } from "../src/_resident_cache.ts";
import { heapOf } from "../src/_heap.ts";
import { MAX_MEMORY_BYTES, PAGE_BYTES } from "../src/_limits.ts";
import { attend, prepare } from "../src/_run.ts";
import { validateBackwardCall, validateForwardCall } from "../src/_validate.ts";
import { POOL_MEMORY } from "../src/_workers.ts";
import { type AttentionPool, POOL_TUNING, startPool } from "../src/pool.ts";
import { sharedMemory } from "../src/_workers.ts";
import { WASM_BASE64 as THREADS_WASM_BASE64 } from "../src/wasm/kernels_threads.generated.ts";
import { bindFirstSm, decodeBase64, type Kernels, loadKernels, type RawKernels } from "../src/wasm/loader.ts";
import { assertBitwiseEqual, assertSameOutput, assertThrows, randomTensor, rng, test } from "./_util.ts";

const random = rng(4096);
const D = 256;
/** Keys of one head whose K and V (f32, d = 256) need 2 × 2.25 GB: more than 4 GiB. */
const NK_HUGE = 2_200_000;
/** A [1, N, 1, d] tensor of zeros that nothing writes (allocated lazily). */
const lazy = (N: number, d: number): Tensor => ({ data: new Float32Array(N * d), shape: [1, N, 1, d] });

/** The bytes a message says a call needs ("needs N bytes"), or throws when it names none. */
function neededBytes(error: Error): number {
  const m = /needs (\d+) bytes/.exec(error.message);
  if (!m) throw new Error(`the message does not name the bytes needed: ${error.message}`);
  return Number(m[1]);
}

/** The package's memory size and the end of its resident heap: a failed call changes neither. */
function packageMemoryState(): string {
  const kernels = loadKernels();
  return `${kernels.memory.buffer.byteLength} bytes, heap end ${heapOf(kernels.memory, kernels.hbmPtr()).end}`;
}

// A small valid call, repeated after every failure: the same bits each time.
const q = randomTensor(random, [1, 33, 2, 24]);
const k = randomTensor(random, [1, 40, 2, 24]);
const v = randomTensor(random, [1, 40, 2, 24]);
const OPTIONS = { causal: true, returnLse: true } as const;
const dOut = randomTensor(random, [1, 33, 2, 24]);

test("a forward call needing more than 4 GiB is a RangeError naming the bytes; nothing grows or is written, and the next call repeats its bits", () => {
  const before = flashAttention(q, k, v, OPTIONS);
  const memory = packageMemoryState();
  const out = new Float32Array(D).fill(7);
  const e = assertThrows(
    () => flashAttention(lazy(1, D), lazy(NK_HUGE, D), lazy(NK_HUGE, D), { out }),
    RangeError,
    "4 GiB",
  );
  if (!(neededBytes(e) > MAX_MEMORY_BYTES)) throw new Error(`needs ${neededBytes(e)} bytes: not more than 4 GiB`);
  if (packageMemoryState() !== memory) throw new Error(`memory changed: ${memory} → ${packageMemoryState()}`);
  if (!out.every((x) => x === 7)) throw new Error("out was written before the failure");
  assertSameOutput("after the failure", flashAttention(q, k, v, OPTIONS), before);
});

test("a backward call needing more than 4 GiB is a RangeError naming the bytes; the gradient buffers stay untouched", () => {
  const out = flashAttention(q, k, v, OPTIONS);
  const before = flashAttentionBackward(q, k, v, out, dOut, { causal: true });
  const memory = packageMemoryState();
  const qq = lazy(1, D);
  const o = { data: new Float32Array(D), shape: [1, 1, 1, D], lse: { data: new Float32Array(1), shape: [1, 1, 1] } };
  const dq = new Float32Array(D).fill(7);
  const e = assertThrows(
    () => flashAttentionBackward(qq, lazy(NK_HUGE, D), lazy(NK_HUGE, D), o, lazy(1, D), { out: { dq } }),
    RangeError,
    "4 GiB",
  );
  if (!(neededBytes(e) > MAX_MEMORY_BYTES)) throw new Error(`needs ${neededBytes(e)} bytes: not more than 4 GiB`);
  if (packageMemoryState() !== memory) throw new Error(`memory changed: ${memory} → ${packageMemoryState()}`);
  if (!dq.every((x) => x === 7)) throw new Error("dq was written before the failure");
  const again = flashAttentionBackward(q, k, v, out, dOut, { causal: true });
  for (const name of ["dq", "dk", "dv"] as const) assertBitwiseEqual(name, again[name].data, before[name].data);
});

test("a KV cache whose config needs more than 4 GiB fails at creation with its bytes, however far the product overflows", () => {
  const before = flashAttention(q, k, v, OPTIONS);
  const memory = packageMemoryState();
  const configs = [
    // 2 × 4 × 64 × 2^20 × 128 = 2^36 bytes
    { batch: 64, maxLen: 1 << 20, kvHeads: 8, headDim: 128 },
    // Each size a safe integer, their product far past 2^53: the bytes are inexact but still too many.
    { batch: 2 ** 40, maxLen: 2 ** 40, kvHeads: 2 ** 40, headDim: 256, dtype: "bf16" as const },
    // Just past 4 GiB: 2 × 2 × 1 × 2^30 × 1 + the memory below the heap.
    { batch: 1, maxLen: 1 << 30, kvHeads: 1, headDim: 1, dtype: "f16" as const },
  ];
  for (const config of configs) {
    const e = assertThrows(() => createKvCache(config), RangeError, "do not fit the 4 GiB");
    const bytes = Number(/its (\S+) bytes/.exec(e.message)?.[1]);
    if (!(bytes >= 4 * 2 ** 30)) throw new Error(`unexpected bytes in ${e.message}`);
    if (packageMemoryState() !== memory) throw new Error(`memory changed: ${memory} → ${packageMemoryState()}`);
  }
  // The heap is as it was: a cache made now lands where one made before would.
  const cache = createKvCache({ batch: 1, maxLen: 8, kvHeads: 2, headDim: 24 });
  try {
    cache.append(randomTensor(random, [1, 8, 2, 24]), randomTensor(random, [1, 8, 2, 24]));
    flashAttentionWithKvCache(randomTensor(random, [1, 1, 2, 24]), cache);
  } finally {
    cache.free();
  }
  if (packageMemoryState() !== memory) throw new Error(`a freed cache left the heap at ${packageMemoryState()}`);
  assertSameOutput("after the failures", flashAttention(q, k, v, OPTIONS), before);
});

test("a caller-owned KV cache needing more than 4 GiB fails before its new row is written", () => {
  const memory = packageMemoryState();
  const kc = lazy(NK_HUGE, D);
  const vc = lazy(NK_HUGE, D);
  const row = { data: new Float32Array(D).fill(1), shape: [1, 1, 1, D] };
  const cacheSeqLens = Int32Array.of(NK_HUGE - 1);
  const e = assertThrows(
    () => flashAttentionWithKvCache(lazy(1, D), kc, vc, { cacheSeqLens, kNew: row, vNew: row }),
    RangeError,
    "4 GiB",
  );
  if (!(neededBytes(e) > MAX_MEMORY_BYTES)) throw new Error(`needs ${neededBytes(e)} bytes`);
  if (kc.data[(NK_HUGE - 1) * D] !== 0 || vc.data[(NK_HUGE - 1) * D] !== 0) throw new Error("the row was appended");
  if (packageMemoryState() !== memory) throw new Error(`memory changed: ${memory} → ${packageMemoryState()}`);
});

/**
 * The threads build of the kernels on a shared memory that may grow to `maxBytes` only: the
 * package's kernels with a runtime that refuses larger grows.
 */
function limitedKernels(maxBytes: number): Kernels {
  const memory = new WebAssembly.Memory({ initial: 1, maximum: maxBytes / PAGE_BYTES, shared: true });
  const module = new WebAssembly.Module(decodeBase64(THREADS_WASM_BASE64));
  const instance = new WebAssembly.Instance(module, { env: { memory } });
  return bindFirstSm(instance.exports as unknown as RawKernels);
}

/** Nk keys of d = 64 in one head: K and V need 2 × 25.6 MB, more than a 32 MiB memory holds. */
const NK_BIG = 100_000;
const LIMIT = 32 << 20;

test("a forward call needing more than the runtime lets the memory grow to is a RangeError naming the bytes; the next call repeats its bits", () => {
  const kernels = limitedKernels(LIMIT);
  const run = (qq: Tensor, kk: Tensor, vv: Tensor, options: object = {}) =>
    attend(prepare(validateForwardCall(qq, kk, vv, options), kernels));
  const before = run(q, k, v, OPTIONS);
  const size = kernels.memory.buffer.byteLength;
  const out = new Float32Array(64).fill(7);
  const e = assertThrows(
    () => run(lazy(1, 64), lazy(NK_BIG, 64), lazy(NK_BIG, 64), { out }),
    RangeError,
    "the runtime refused to grow it",
  );
  if (!(neededBytes(e) > LIMIT)) throw new Error(`needs ${neededBytes(e)} bytes, within the limit`);
  if (!(e.cause instanceof RangeError)) throw new Error(`the runtime's own error is not the cause: ${e.cause}`);
  if (kernels.memory.buffer.byteLength !== size) throw new Error("the memory grew");
  if (!out.every((x) => x === 7)) throw new Error("out was written before the failure");
  assertSameOutput("after the refused grow", run(q, k, v, OPTIONS), before as AttentionOutput);
});

test("a backward call needing more than the runtime grants is a RangeError before the gradient buffers are zeroed", () => {
  const kernels = limitedKernels(LIMIT);
  const out = flashAttention(q, k, v, OPTIONS);
  const grads = (qq: Tensor, kk: Tensor, vv: Tensor, o: AttentionOutput, dO: Tensor, options: object) =>
    runBackwardSync(validateBackwardCall(qq, kk, vv, o, dO, options), kernels);
  const before = grads(q, k, v, out, dOut, { causal: true });
  const size = kernels.memory.buffer.byteLength;
  const o = { data: new Float32Array(64), shape: [1, 1, 1, 64], lse: { data: new Float32Array(1), shape: [1, 1, 1] } };
  const dk = new Float32Array(NK_BIG * 64);
  dk[0] = 7;
  const e = assertThrows(
    () => grads(lazy(1, 64), lazy(NK_BIG, 64), lazy(NK_BIG, 64), o, lazy(1, 64), { out: { dk } }),
    RangeError,
    "the runtime refused to grow it",
  );
  if (!(neededBytes(e) > LIMIT)) throw new Error(`needs ${neededBytes(e)} bytes, within the limit`);
  if (kernels.memory.buffer.byteLength !== size) throw new Error("the memory grew");
  if (dk[0] !== 7) throw new Error("dk was zeroed before the failure");
  const again = grads(q, k, v, out, dOut, { causal: true });
  for (const name of ["dq", "dk", "dv"] as const) assertBitwiseEqual(name, again[name].data, before[name].data);
});

test("a resident KV cache larger than the runtime grants fails with its bytes and gives its heap space back", () => {
  const kernels = limitedKernels(LIMIT);
  const heap = heapOf(kernels.memory, kernels.hbmPtr());
  const make = (maxLen: number) =>
    new ResidentKvCache(kernels.memory, heap, readCacheConfig({ batch: 1, maxLen, kvHeads: 1, headDim: 64 }, 256));
  const first = make(16);
  const firstPtr = first.kPtr;
  first.free();
  const size = kernels.memory.buffer.byteLength;
  const e = assertThrows(() => make(NK_BIG), RangeError, "the runtime refused to grow it");
  if (!e.message.includes(`its ${2 * 4 * NK_BIG * 64} bytes need`)) throw new Error(`bytes not named: ${e.message}`);
  if (kernels.memory.buffer.byteLength !== size) throw new Error("the memory grew");
  const again = make(16);
  if (again.kPtr !== firstPtr) throw new Error(`the failed cache kept heap space: ${again.kPtr} vs ${firstPtr}`);
  again.free();
});

/** Runs `fn` on a pool whose Workers take every call and whose memory grows to `memoryMaxBytes` at most. */
async function withPool(memoryMaxBytes: number | undefined, fn: (pool: AttentionPool) => Promise<void>) {
  const pool = await startPool(2, { ...POOL_TUNING, inlineFlops: 0, memoryMaxBytes });
  try {
    await fn(pool);
  } finally {
    await pool.close();
  }
}

const poolMemory = (pool: AttentionPool) =>
  (pool as unknown as { [POOL_MEMORY](): WebAssembly.Memory })[POOL_MEMORY]().buffer.byteLength;

/** Awaits a call that must reject with a RangeError containing `fragment`. */
async function assertRejects(call: Promise<unknown>, fragment: string): Promise<Error> {
  const error = await call.then(() => undefined, (e: unknown) => e);
  if (!(error instanceof RangeError) || !error.message.includes(fragment)) {
    throw new Error(`expected a RangeError containing "${fragment}", got ${String(error)}`);
  }
  return error;
}

test("a pool's calls needing more than its memory may grow to reject with the bytes; nothing is allocated or written, and the pool keeps its bits", async () => {
  const POOL_LIMIT = 48 << 20; // the pool's two SMs take 16 MiB of it
  await withPool(POOL_LIMIT, async (pool) => {
    const out = flashAttention(q, k, v, OPTIONS);
    const forward = await pool.flashAttention(q, k, v, OPTIONS);
    const backward = await pool.flashAttentionBackward(q, k, v, out, dOut, { causal: true });
    const size = poolMemory(pool);
    const o = {
      data: new Float32Array(64),
      shape: [1, 1, 1, 64],
      lse: { data: new Float32Array(1), shape: [1, 1, 1] },
    };
    const outBuffer = new Float32Array(64).fill(7);
    const dq = new Float32Array(64).fill(7);
    const refused = "the runtime refused to grow it";
    const failures = [
      await assertRejects(
        pool.flashAttention(lazy(1, 64), lazy(NK_BIG, 64), lazy(NK_BIG, 64), { out: outBuffer }),
        refused,
      ),
      await assertRejects(
        pool.flashAttentionBackward(lazy(1, 64), lazy(NK_BIG, 64), lazy(NK_BIG, 64), o, lazy(1, 64), { out: { dq } }),
        refused,
      ),
    ];
    for (const e of failures) if (!(neededBytes(e) > POOL_LIMIT)) throw new Error(`needs ${neededBytes(e)} bytes`);
    const e = assertThrows(
      () => pool.createKvCache({ batch: 1, maxLen: NK_BIG, kvHeads: 1, headDim: 64 }),
      RangeError,
      refused,
    );
    if (!e.message.includes(`its ${2 * 4 * NK_BIG * 64} bytes need`)) throw new Error(`bytes not named: ${e.message}`);
    if (poolMemory(pool) !== size) throw new Error(`the pool's memory grew: ${size} → ${poolMemory(pool)}`);
    if (!outBuffer.every((x) => x === 7)) throw new Error("out was written before the failure");
    if (!dq.every((x) => x === 7)) throw new Error("dq was zeroed before the failure");
    assertSameOutput("forward after", await pool.flashAttention(q, k, v, OPTIONS), forward);
    const grads = await pool.flashAttentionBackward(q, k, v, out, dOut, { causal: true });
    for (const name of ["dq", "dk", "dv"] as const) assertBitwiseEqual(name, grads[name].data, backward[name].data);
  });
});

test("a pool's calls needing more than 4 GiB reject with the bytes before its memory grows", async () => {
  await withPool(undefined, async (pool) => {
    const forward = await pool.flashAttention(q, k, v, OPTIONS);
    const size = poolMemory(pool);
    const e = await assertRejects(pool.flashAttention(lazy(1, D), lazy(NK_HUGE, D), lazy(NK_HUGE, D)), "4 GiB");
    if (!(neededBytes(e) > MAX_MEMORY_BYTES)) throw new Error(`needs ${neededBytes(e)} bytes`);
    const c = assertThrows(
      () => pool.createKvCache({ batch: 64, maxLen: 1 << 20, kvHeads: 8, headDim: 128 }),
      RangeError,
      "4 GiB",
    );
    if (!c.message.includes(`its ${2 * 4 * 64 * (1 << 20) * 8 * 128} bytes`)) throw new Error(c.message);
    if (poolMemory(pool) !== size) throw new Error(`the pool's memory grew: ${size} → ${poolMemory(pool)}`);
    assertSameOutput("forward after", await pool.flashAttention(q, k, v, OPTIONS), forward);
  });
});

test("a pool whose shared memory the runtime refuses fails with a RangeError naming its bytes", () => {
  // More pages than wasm32 has: every runtime refuses to make this memory.
  const pages = MAX_MEMORY_BYTES / PAGE_BYTES + 1;
  const e = assertThrows(
    () => sharedMemory(pages),
    RangeError,
    `shared WebAssembly memory of ${pages * PAGE_BYTES} bytes`,
  );
  if (e.cause === undefined) throw new Error("the runtime's own error is not the cause");
});
