// Child script of pool_test.ts: starts a pool, runs a call on its Workers, closes the pool and
// returns from the module. The test checks that the process then exits on its own.

import { createAttentionPool, flashAttention } from "../mod.ts";

const [B, N, H, d] = [1, 256, 4, 32]; // 3.4e7 flops: dispatched to the Workers
const data = Float32Array.from({ length: B * N * H * d }, (_, i) => Math.sin(i));
const q = { data, shape: [B, N, H, d] };
const pool = await createAttentionPool({ threads: 2 });
const o = await pool.flashAttention(q, q, q, { causal: true });
const expected = flashAttention(q, q, q, { causal: true });
if (!o.data.every((x, i) => Object.is(x, expected.data[i]))) throw new Error("the pool's bits differ");
await pool.close();
console.log("closed");
