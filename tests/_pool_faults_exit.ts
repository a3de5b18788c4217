// Child script of pool_faults_test.ts: loses a pool Worker each way the test hook can (a trap, an
// uncaught error, a termination), checks that the next call is right, closes the pool and returns
// from the module. The test checks that the process then exits on its own (Deno keeps running
// while any Worker, or any wait for a Worker's end, is left).

import { flashAttention } from "../mod.ts";
import { POOL_TUNING, PoolWorkerError, startPool } from "../src/pool.ts";
import { SABOTAGE, type Sabotage } from "../src/_workers.ts";

const [B, N, H, d] = [1, 64, 4, 16];
const data = Float32Array.from({ length: B * N * H * d }, (_, i) => Math.sin(i));
const q = { data, shape: [B, N, H, d] };
const pool = await startPool(2, { ...POOL_TUNING, inlineFlops: 0 });
const expected = flashAttention(q, q, q, { causal: true });
for (const how of ["trap", "throw", "terminate"] as Sabotage[]) {
  (pool as unknown as { [SABOTAGE](t: number, how: Sabotage): void })[SABOTAGE](1, how);
  const error = await pool.flashAttention(q, q, q, { causal: true }).then(() => undefined, (e: unknown) => e);
  if (!(error instanceof PoolWorkerError)) throw new Error(`${how}: the call did not reject with a PoolWorkerError`);
  const o = await pool.flashAttention(q, q, q, { causal: true });
  if (!o.data.every((x, i) => Object.is(x, expected.data[i]))) throw new Error(`${how}: the pool's bits differ`);
}
await pool.close();
console.log("closed");
