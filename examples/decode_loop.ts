/**
 * Autoregressive decoding with a KV cache: 256 decode steps that grow a cache to 4,096 tokens
 * (B = 2, H = 8 query heads sharing Hkv = 2 K/V heads, d = 64, causal). Every step is checked
 * against the f64 reference, twice: with the library's default (numSplits omitted) and with the
 * keys split into 4 chunks whose partial results are merged (Flash-Decoding).
 *
 * The expected output is computed from the example's own copy of the whole K/V sequences, never
 * from the caches that flashAttentionWithKvCache writes, so a new token appended at the wrong slot
 * (or not at all) fails the check.
 *
 *   npx tsx examples/decode_loop.ts       deno run examples/decode_loop.ts       bun examples/decode_loop.ts
 */
import process from "node:process";
import { chooseSplits, flashAttentionWithKvCache, type Tensor } from "../mod.ts";
import { referenceAttention } from "../src/reference.ts";

const [B, H, Hkv, d] = [2, 8, 2, 64];
const maxLen = 4096;
const steps = 256;
/** Explicit split count of the second call of each step. */
const SPLITS = 4;
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

function fail(text: string): never {
  console.error(text);
  process.exit(1);
}

// The example's own copy of every token each sequence will hold: a prompt already in the cache,
// then one new token per step (entry 1's prompt is 100 tokens shorter: a ragged batch).
const kSeq = random([B, maxLen, Hkv, d]);
const vSeq = random([B, maxLen, Hkv, d]);
const promptLens = [maxLen - steps, maxLen - steps - 100];
const row = Hkv * d; // floats per token

// The caches hold the prompts; the slots after them hold stale values (as reused memory would),
// which only the function's appends replace.
const kCache = random([B, maxLen, Hkv, d]);
const vCache = random([B, maxLen, Hkv, d]);
for (let b = 0; b < B; b++) {
  const from = b * maxLen * row;
  const to = from + promptLens[b] * row;
  kCache.data.set(kSeq.data.subarray(from, to), from);
  vCache.data.set(vSeq.data.subarray(from, to), from);
}
const cacheSeqLens = new Int32Array(promptLens);

/** Token `at` of every entry, from the example's copy, as a [B, 1, Hkv, d] tensor. */
function token(seq: Tensor, at: Int32Array): Tensor {
  const data = new Float32Array(B * row);
  for (let b = 0; b < B; b++) {
    data.set(seq.data.subarray((b * maxLen + at[b]) * row, (b * maxLen + at[b] + 1) * row), b * row);
  }
  return { data, shape: [B, 1, Hkv, d] };
}

function maxError(actual: Float32Array, expected: Float64Array): number {
  let worst = 0;
  for (let i = 0; i < actual.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
  return worst;
}

let worstDefault = 0;
let worstSplit = 0;
let defaultMs = 0;
let splitMs = 0;
let kvBytes = 0; // K and V bytes the steps attend over
const autoSplits = new Set<number>(); // what the default call chose (chooseSplits of the longest entry)
for (let step = 0; step < steps; step++) {
  const q = random([B, 1, H, d]);
  const kNew = token(kSeq, cacheSeqLens);
  const vNew = token(vSeq, cacheSeqLens);

  // What users write: append the new token and attend, with the library's choice of splits.
  let start = performance.now();
  const o = flashAttentionWithKvCache(q, kCache, vCache, { cacheSeqLens, kNew, vNew, causal: true });
  defaultMs += performance.now() - start;
  cacheSeqLens[0] += 1; // the caller advances the cache
  cacheSeqLens[1] += 1;
  kvBytes += (cacheSeqLens[0] + cacheSeqLens[1]) * row * 2 * 4;
  autoSplits.add(chooseSplits(Math.max(...cacheSeqLens)));

  // The same attention with the keys split (Flash-Decoding), over the caches as they now are.
  start = performance.now();
  const split = flashAttentionWithKvCache(q, kCache, vCache, {
    cacheSeqLens,
    causal: true,
    numSplits: SPLITS,
    stats: true,
  });
  splitMs += performance.now() - start;
  if (!(split.stats!.written.partial > 0)) fail(`step ${step}: numSplits = ${SPLITS} wrote no partial results`);

  // Expected: attention over the example's own sequences, up to each entry's new length.
  const ref = referenceAttention(q, kSeq, vSeq, { causal: true, seqLensK: cacheSeqLens });
  worstDefault = Math.max(worstDefault, maxError(o.data, ref.data));
  worstSplit = Math.max(worstSplit, maxError(split.data, ref.data));
  if (!(worstDefault <= TOLERANCE)) {
    fail(`step ${step}: default call, max |error| ${worstDefault} exceeds ${TOLERANCE}`);
  }
  if (!(worstSplit <= TOLERANCE)) {
    fail(`step ${step}: ${SPLITS} splits, max |error| ${worstSplit} exceeds ${TOLERANCE}`);
  }
}

// The caches now hold exactly the example's sequences up to each entry's length.
for (let b = 0; b < B; b++) {
  for (let i = 0; i < cacheSeqLens[b] * row; i++) {
    const at = b * maxLen * row + i;
    if (kCache.data[at] !== kSeq.data[at] || vCache.data[at] !== vSeq.data[at]) {
      fail(`entry ${b}, token ${Math.floor(i / row)}: the cache differs from the appended sequence`);
    }
  }
}

const err = (x: number) => x.toExponential(2);
console.log(`${steps} decode steps, B = ${B}, H = ${H}, Hkv = ${Hkv}, d = ${d}, cache up to ${maxLen} tokens`);
console.log(`expected outputs come from the example's own K/V sequences, not from the caches the calls wrote`);
console.log(
  `default (the library chose ${[...autoSplits].join(" or ")} split${
    autoSplits.size === 1 && autoSplits.has(1) ? "" : "s"
  }): every step matches the f64 reference, ` +
    `max |error| = ${err(worstDefault)} (tolerance ${TOLERANCE})`,
);
console.log(`numSplits = ${SPLITS} (split-KV, merged): every step matches too, max |error| = ${err(worstSplit)}`);
console.log(`the caches hold every appended token at its slot`);
console.log(
  `mean step ${(defaultMs / steps).toFixed(2)} ms (${(kvBytes / defaultMs / 1e6).toFixed(2)} GB/s of K/V attended), ` +
    `${(splitMs / steps).toFixed(2)} ms with ${SPLITS} splits`,
);
