// The pool when a Worker is lost mid-call: its instance traps, it throws an uncaught error, or it
// is terminated from outside. The test hook (src/_workers.ts's SABOTAGE, internal) makes one
// Worker fail during its next job request, each way for real: an out-of-bounds access in the
// kernels, an uncaught exception in the Worker, a terminate() the pool is not told of (it learns
// of it the way the runtime reports it: Node's `exit`, Bun's `close`, Deno's released Web Lock).
// After each, exactly the affected call rejects with a PoolWorkerError naming the Worker, and the
// next call gives the synchronous function's bits.

import {
  type AttentionPool,
  createAttentionPool,
  flashAttention,
  flashAttentionBackward,
  PoolWorkerError,
} from "../mod.ts";
import { POOL_TUNING, startPool } from "../src/pool.ts";
import { SABOTAGE, type Sabotage } from "../src/_workers.ts";
import { assertBitwiseEqual, assertChildExitsCleanly, assertSameOutput, randomTensor, rng, test } from "./_util.ts";

/** Every call on the Workers, however small. */
const DISPATCH = { ...POOL_TUNING, inlineFlops: 0 };

const REASON: Record<Sabotage, PoolWorkerError["reason"]> = { trap: "trap", throw: "error", terminate: "exit" };

function sabotage(pool: AttentionPool, t: number, how: Sabotage): void {
  (pool as unknown as { [SABOTAGE](t: number, how: Sabotage): void })[SABOTAGE](t, how);
}

/** Awaits a call that must reject with a PoolWorkerError for Worker `t` lost by `how`. */
async function assertLost(what: string, call: Promise<unknown>, t: number, how: Sabotage): Promise<void> {
  const error = await call.then(() => undefined, (e: unknown) => e);
  if (!(error instanceof PoolWorkerError)) throw new Error(`${what}: expected a PoolWorkerError, got ${String(error)}`);
  if (error.worker !== t || error.reason !== REASON[how]) {
    throw new Error(`${what}: worker ${error.worker}, reason ${error.reason}; expected ${t}, ${REASON[how]}`);
  }
  if (!error.message.includes(`pool Worker ${t} (flash-attention SM ${t}`)) {
    throw new Error(`${what}: the message does not name the Worker: ${error.message}`);
  }
}

async function withPool(threads: number, fn: (pool: AttentionPool) => Promise<void>): Promise<void> {
  const pool = await startPool(threads, DISPATCH);
  try {
    await fn(pool);
  } finally {
    await pool.close();
  }
}

const random = rng(1313);
const q = randomTensor(random, [2, 70, 4, 20]);
const k = randomTensor(random, [2, 90, 2, 20]);
const v = randomTensor(random, [2, 90, 2, 20]);
const options = { causal: true, returnLse: true } as const;

for (const how of ["trap", "throw", "terminate"] as const) {
  test(`a pool Worker lost mid-call (${how}) rejects that call with a PoolWorkerError, and the next call gives the synchronous bits`, async () => {
    const expected = flashAttention(q, k, v, options);
    await withPool(3, async (pool) => {
      sabotage(pool, 1, how);
      // The call behind the failing one is not affected: it runs on the replacement Worker.
      const failing = pool.flashAttention(q, k, v, options);
      const next = pool.flashAttention(q, k, v, options);
      await assertLost(how, failing, 1, how);
      assertSameOutput(`the call queued behind (${how})`, await next, expected);
      assertSameOutput(`a later call (${how})`, await pool.flashAttention(q, k, v, options), expected);
    });
  });
}

test("a pool survives repeated Worker losses (every way, every Worker, 9 in a row) with the synchronous bits after each", async () => {
  const expected = flashAttention(q, k, v, options);
  await withPool(3, async (pool) => {
    let n = 0;
    for (const how of ["trap", "terminate", "throw"] as const) {
      for (let t = 0; t < 3; t++) {
        sabotage(pool, t, how);
        await assertLost(`loss ${n++} (${how}, Worker ${t})`, pool.flashAttention(q, k, v, options), t, how);
        assertSameOutput(
          `after loss ${n} (${how}, Worker ${t})`,
          await pool.flashAttention(q, k, v, options),
          expected,
        );
      }
    }
  });
});

test("a Worker lost in the backward rejects it with a PoolWorkerError, and the next backward gives the synchronous gradients", async () => {
  const out = flashAttention(q, k, v, options);
  const dOut = randomTensor(random, [2, 70, 4, 20]);
  const expected = flashAttentionBackward(q, k, v, out, dOut, { causal: true });
  await withPool(2, async (pool) => {
    for (const how of ["trap", "terminate"] as const) {
      sabotage(pool, 0, how);
      await assertLost(`backward, ${how}`, pool.flashAttentionBackward(q, k, v, out, dOut, { causal: true }), 0, how);
      const grads = await pool.flashAttentionBackward(q, k, v, out, dOut, { causal: true });
      assertBitwiseEqual(`dq after ${how}`, grads.dq.data, expected.dq.data);
      assertBitwiseEqual(`dk after ${how}`, grads.dk.data, expected.dk.data);
      assertBitwiseEqual(`dv after ${how}`, grads.dv.data, expected.dv.data);
    }
  });
});

test("a Worker lost during a decode over a pool's KV cache leaves the cache as it was: the next call repeats the earlier bits", async () => {
  const [B, maxLen, Hkv, d] = [2, 300, 2, 32];
  const qDecode = randomTensor(random, [B, 1, 4, d]);
  await withPool(2, async (pool) => {
    const cache = pool.createKvCache({ batch: B, maxLen, kvHeads: Hkv, headDim: d });
    cache.append(randomTensor(random, [B, 250, Hkv, d]), randomTensor(random, [B, 250, Hkv, d]));
    const before = await pool.flashAttentionWithKvCache(qDecode, cache, { numSplits: 4 });
    for (const how of ["trap", "terminate"] as const) {
      sabotage(pool, 1, how);
      await assertLost(`decode, ${how}`, pool.flashAttentionWithKvCache(qDecode, cache, { numSplits: 4 }), 1, how);
      if (cache.length(0) !== 250 || cache.length(1) !== 250) throw new Error(`${how}: the cache's lengths changed`);
      assertSameOutput(
        `decode after ${how}`,
        await pool.flashAttentionWithKvCache(qDecode, cache, { numSplits: 4 }),
        before,
      );
    }
  });
});

test("the PoolWorkerError tests can fail: a pool without a lost Worker resolves, and the check rejects that", async () => {
  await withPool(2, async (pool) => {
    const error = await assertLost("no loss", pool.flashAttention(q, k, v, options), 0, "trap").then(
      () => undefined,
      (e: unknown) => e,
    );
    if (!(error instanceof Error) || !error.message.includes("expected a PoolWorkerError")) {
      throw new Error(`assertLost accepted a call that resolved: ${String(error)}`);
    }
  });
});

test("createAttentionPool()'s pools take the same hook: a real pool recovers too", async () => {
  const pool = await createAttentionPool({ threads: 2 });
  try {
    // 2·70·90·4·20·4 ≈ 4e6 flops is below the default inlineFlops; a larger call reaches the Workers.
    const big = randomTensor(random, [1, 400, 4, 32]);
    const expected = flashAttention(big, big, big, { causal: true });
    sabotage(pool, 0, "trap");
    await assertLost("default pool", pool.flashAttention(big, big, big, { causal: true }), 0, "trap");
    assertSameOutput("default pool, after", await pool.flashAttention(big, big, big, { causal: true }), expected);
  } finally {
    await pool.close();
  }
});

test("a process whose pool lost Workers each way, then closed it, exits on its own with no Worker left alive", () => {
  assertChildExitsCleanly(new URL("./_pool_faults_exit.ts", import.meta.url));
});
