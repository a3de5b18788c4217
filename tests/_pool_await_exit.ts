// Child script of pool_test.ts: every await of a pool's life (start, a call on the Workers, a lost
// Worker and its replacement, close) from a function that the module does not await, then returns.
// No top-level await on purpose: a pending top-level await keeps Bun running on its own, and so
// hid that Bun ended the process inside `await pool.close()` (status 0, nothing more printed) while
// the pool waited with its Workers unref'd for them to stop. The test checks that the last line,
// "closed", is printed and the process then exits on its own.

import process from "node:process";
import { flashAttention } from "../mod.ts";
import { POOL_TUNING, PoolWorkerError, startPool } from "../src/pool.ts";
import { SABOTAGE, type Sabotage } from "../src/_workers.ts";

async function main(): Promise<void> {
  const [B, N, H, d] = [1, 64, 4, 16];
  const data = Float32Array.from({ length: B * N * H * d }, (_, i) => Math.sin(i));
  const q = { data, shape: [B, N, H, d] };
  const expected = flashAttention(q, q, q, { causal: true });
  const pool = await startPool(2, { ...POOL_TUNING, inlineFlops: 0 });
  console.log("started");
  const o = await pool.flashAttention(q, q, q, { causal: true });
  if (!o.data.every((x, i) => Object.is(x, expected.data[i]))) throw new Error("the pool's bits differ");
  console.log("computed");
  (pool as unknown as { [SABOTAGE](t: number, how: Sabotage): void })[SABOTAGE](1, "terminate");
  const error = await pool.flashAttention(q, q, q, { causal: true }).then(() => undefined, (e: unknown) => e);
  if (!(error instanceof PoolWorkerError)) throw new Error("the call did not reject with a PoolWorkerError");
  console.log("lost a Worker");
  const again = await pool.flashAttention(q, q, q, { causal: true });
  if (!again.data.every((x, i) => Object.is(x, expected.data[i]))) throw new Error("the replaced pool's bits differ");
  console.log("replaced it");
  await pool.close();
  console.log("closed");
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
