/**
 * Autoregressive decoding with a KV cache: 256 decode steps that grow a cache to 4,096 tokens
 * (B = 2, H = 8 query heads sharing Hkv = 2 K/V heads, d = 64, causal), every step checked against
 * the f64 reference over the same cache.
 *
 *   npx tsx examples/decode_loop.ts       deno run examples/decode_loop.ts       bun examples/decode_loop.ts
 */
import process from "node:process";
import { flashAttentionWithKvCache, type Tensor } from "../mod.ts";
import { referenceAttention } from "../src/reference.ts";

const [B, H, Hkv, d] = [2, 8, 2, 64];
const maxLen = 4096;
const steps = 256;
/** f32 over ≤ 4,096 keys of O(1) values against f64: a few 1e-7 expected; 1e-5 leaves margin. */
const TOLERANCE = 1e-5;

let seed = 7;
function random(shape: number[]): Tensor {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    data[i] = seed / 2 ** 31 - 1;
  }
  return { data, shape };
}

// A prompt of maxLen − steps tokens already in the cache (entry 1 a bit shorter: ragged batch).
const kCache = random([B, maxLen, Hkv, d]);
const vCache = random([B, maxLen, Hkv, d]);
const cacheSeqLens = new Int32Array([maxLen - steps, maxLen - steps - 100]);

let worst = 0;
let attendMs = 0;
let kvBytes = 0; // K and V bytes the steps attend over
for (let step = 0; step < steps; step++) {
  const q = random([B, 1, H, d]);
  const kNew = random([B, 1, Hkv, d]);
  const vNew = random([B, 1, Hkv, d]);
  const start = performance.now();
  const o = flashAttentionWithKvCache(q, kCache, vCache, { cacheSeqLens, kNew, vNew, causal: true });
  attendMs += performance.now() - start;
  cacheSeqLens[0] += 1; // the caller advances the cache
  cacheSeqLens[1] += 1;
  kvBytes += (cacheSeqLens[0] + cacheSeqLens[1]) * Hkv * 2 * d * 4;
  const ref = referenceAttention(q, kCache, vCache, { causal: true, seqLensK: cacheSeqLens });
  for (let i = 0; i < o.data.length; i++) worst = Math.max(worst, Math.abs(o.data[i] - ref.data[i]));
  if (!(worst <= TOLERANCE)) {
    console.error(`step ${step}: max |error| ${worst} exceeds ${TOLERANCE}`);
    process.exit(1);
  }
}
console.log(`${steps} decode steps, B = ${B}, H = ${H}, Hkv = ${Hkv}, d = ${d}, cache up to ${maxLen} tokens`);
console.log(`every step matches the f64 reference: max |error| = ${worst.toExponential(2)} (tolerance ${TOLERANCE})`);
console.log(
  `mean step ${(attendMs / steps).toFixed(2)} ms, ${(kvBytes / attendMs / 1e6).toFixed(2)} GB/s of K/V attended`,
);
