// Bad variant options (GQA, windows, ALiBi, softcap, masks, key lengths, varlen) and bad KV-cache
// calls get a typed error whose message names the values, before any work: a failed KV-cache call
// leaves both caches bit for bit as they were, and the next valid call computes the same bits.

import { flashAttention, flashAttentionWithKvCache, ShapeError, type Tensor } from "../mod.ts";
import { assertBitwiseEqual, assertThrows, randomTensor, rng, test } from "./_util.ts";

const random = rng(77);
const [B, Nq, Nk, H, d, dv] = [2, 10, 12, 4, 8, 5];
const q = randomTensor(random, [B, Nq, H, d]);
const k = randomTensor(random, [B, Nk, 2, d]);
const v = randomTensor(random, [B, Nk, 2, dv]);

// deno-lint-ignore no-explicit-any
const call = (options: any, qq: Tensor = q, kk: Tensor = k, vv: Tensor = v) => () =>
  flashAttention(qq, kk, vv, options);

test("alibiSlopes of a length other than H or B·H is a ShapeError naming both lengths", () => {
  const e = assertThrows(
    call({ alibiSlopes: new Float32Array(5) }),
    ShapeError,
    "alibiSlopes must have length H = 4 or B·H = 8 (B = 2): alibiSlopes.length is 5",
  ) as ShapeError;
  if (e.expected !== "4 or 8" || e.actual !== "5") throw new Error(`${e.expected} / ${e.actual}`);
  assertThrows(call({ alibiSlopes: new Float32Array(0) }), ShapeError, "alibiSlopes.length is 0");
  assertThrows(
    call({ alibiSlopes: new Float64Array(4) }),
    TypeError,
    "alibiSlopes must be a Float32Array: alibiSlopes is a Float64Array",
  );
});

test("a mask shape that does not broadcast to [B, H, Nq, Nk] is a ShapeError naming the dim", () => {
  assertThrows(
    call({ mask: { data: new Float32Array(36), shape: [3, 12] } }),
    ShapeError,
    "mask.shape [3, 12] does not broadcast to [B, H, Nq, Nk] = [2, 4, 10, 12]: dim 0 is 3, expected 1 or 10",
  );
  assertThrows(
    call({ mask: { data: new Uint8Array(13), shape: [13] } }),
    ShapeError,
    "dim 0 is 13, expected 1 or 12",
  );
  // Left-aligned is not numpy broadcasting: [B, Nk] lines B up with Nq.
  assertThrows(call({ mask: { data: new Float32Array(24), shape: [2, 12] } }), ShapeError, "expected 1 or 10");
  assertThrows(
    call({ mask: { data: new Float32Array(5), shape: [1, 1, 1, 1, 5] } }),
    ShapeError,
    "mask must have 1 to 4 dims, broadcasting to [B, H, Nq, Nk]: mask.shape is [1, 1, 1, 1, 5]",
  );
  assertThrows(
    call({ mask: { data: new Float32Array(11), shape: [12] } }),
    ShapeError,
    "mask.data must hold 12 elements",
  );
});

test("a mask whose data is neither a Float32Array nor a Uint8Array is a TypeError", () => {
  for (const [data, name] of [[new Float64Array(12), "a Float64Array"], [new Int8Array(12), "an Int8Array"]] as const) {
    assertThrows(
      call({ mask: { data, shape: [12] } }),
      TypeError,
      `mask.data must be a Float32Array or Uint8Array: mask.data is ${name}`,
    );
  }
  assertThrows(call({ mask: { data: new Uint8ClampedArray(12), shape: [12] } }), TypeError, "mask.data must be");
});

test("seqLensK above Nk, negative, of the wrong length or type is rejected with the entry named", () => {
  assertThrows(
    call({ seqLensK: new Int32Array([12, 13]) }),
    RangeError,
    "seqLensK must hold key lengths in [0, Nk = 12]: seqLensK[1] is 13 (k.shape is [2, 12, 2, 8])",
  );
  assertThrows(call({ seqLensK: new Int32Array([-1, 3]) }), RangeError, "seqLensK[0] is -1");
  assertThrows(
    call({ seqLensK: new Int32Array([1, 2, 3]) }),
    ShapeError,
    "seqLensK must have length B = 2: seqLensK.length is 3",
  );
  assertThrows(
    call({ seqLensK: [12, 12] }),
    TypeError,
    "seqLensK must be an Int32Array: seqLensK is an Array [12, 12]",
  );
});

test("a number of query heads that is not a multiple of the K/V heads is a ShapeError", () => {
  const k3 = randomTensor(random, [B, Nk, 3, d]);
  const v3 = randomTensor(random, [B, Nk, 3, dv]);
  assertThrows(
    call({}, q, k3, v3),
    ShapeError,
    "the number of query heads must be a multiple of the number of key/value heads (GQA): H is 4, Hkv is 3",
  );
  // More K/V heads than query heads is no GQA either.
  const k8 = randomTensor(random, [B, Nk, 8, d]);
  const v8 = randomTensor(random, [B, Nk, 8, dv]);
  assertThrows(call({}, q, k8, v8), ShapeError, "H is 4, Hkv is 8");
});

// Varlen: 3 sequences packed into 10 queries and 14 keys.
const qv = randomTensor(random, [10, H, d]);
const kv = randomTensor(random, [14, 2, d]);
const vv = randomTensor(random, [14, 2, dv]);
const cuQ = new Int32Array([0, 4, 4, 10]);
const cuK = new Int32Array([0, 5, 9, 14]);
// deno-lint-ignore no-explicit-any
const varlen = (options: any) => call(options, qv, kv, vv);

test("cuSeqlens that do not start at 0, decrease or miss the total are RangeErrors naming the entries", () => {
  assertThrows(
    varlen({ cuSeqlensQ: new Int32Array([1, 4, 4, 10]), cuSeqlensK: cuK }),
    RangeError,
    "cuSeqlensQ must start at 0: cuSeqlensQ[0] is 1",
  );
  assertThrows(
    varlen({ cuSeqlensQ: cuQ, cuSeqlensK: new Int32Array([0, 5, 3, 14]) }),
    RangeError,
    "cuSeqlensK must be non-decreasing: cuSeqlensK[1] is 5, cuSeqlensK[2] is 3",
  );
  assertThrows(
    varlen({ cuSeqlensQ: new Int32Array([0, 4, 4, 9]), cuSeqlensK: cuK }),
    RangeError,
    "cuSeqlensQ must end at the total length q.shape[0] = 10: cuSeqlensQ[3] is 9",
  );
  assertThrows(
    varlen({ cuSeqlensQ: cuQ, cuSeqlensK: new Int32Array([0, 5, 9, 15]) }),
    RangeError,
    "cuSeqlensK must end at the total length k.shape[0] = 14: cuSeqlensK[3] is 15",
  );
});

test("cuSeqlens of different lengths, too short, one without the other or not Int32Array are rejected", () => {
  const e = assertThrows(
    varlen({ cuSeqlensQ: new Int32Array([0, 10]), cuSeqlensK: cuK }),
    ShapeError,
    "cuSeqlensQ and cuSeqlensK must have the same length (B + 1): cuSeqlensQ.length is 2, cuSeqlensK.length is 4",
  ) as ShapeError;
  if (e.expected !== "2" || e.actual !== "4") throw new Error(`${e.expected} / ${e.actual}`);
  assertThrows(
    varlen({ cuSeqlensQ: new Int32Array([10]), cuSeqlensK: new Int32Array([14]) }),
    ShapeError,
    "cuSeqlensQ must have length B + 1 ≥ 2: cuSeqlensQ.length is 1",
  );
  assertThrows(varlen({ cuSeqlensQ: cuQ }), TypeError, "cuSeqlensK must be an Int32Array: cuSeqlensK is undefined");
  assertThrows(varlen({ cuSeqlensK: cuK }), TypeError, "cuSeqlensQ must be an Int32Array: cuSeqlensQ is undefined");
  assertThrows(
    varlen({ cuSeqlensQ: [0, 4, 4, 10], cuSeqlensK: cuK }),
    TypeError,
    "cuSeqlensQ must be an Int32Array",
  );
  // Packed tensors are rank 3, and only in layout "bshd".
  assertThrows(
    call({ cuSeqlensQ: new Int32Array([0, 10]), cuSeqlensK: new Int32Array([0, 12]) }),
    ShapeError,
    "q must have rank 3 ([total, H, d] with cuSeqlensQ/cuSeqlensK)",
  );
  assertThrows(
    varlen({ cuSeqlensQ: cuQ, cuSeqlensK: cuK, layout: "bhsd" }),
    TypeError,
    'varlen packing (cuSeqlensQ, cuSeqlensK) needs layout "bshd": layout is "bhsd"',
  );
});

test("cuSeqlens with seqLensK, or with a mask, is a TypeError", () => {
  assertThrows(
    varlen({ cuSeqlensQ: cuQ, cuSeqlensK: cuK, seqLensK: new Int32Array([5, 4, 5]) }),
    TypeError,
    "seqLensK cannot be combined with varlen packing (cuSeqlensQ, cuSeqlensK)",
  );
  assertThrows(
    varlen({ cuSeqlensQ: cuQ, cuSeqlensK: cuK, mask: { data: new Float32Array(14), shape: [14] } }),
    TypeError,
    "mask cannot be combined with varlen packing (cuSeqlensQ, cuSeqlensK)",
  );
  // Varlen ALiBi slopes count packed sequences as the batch.
  assertThrows(
    varlen({ cuSeqlensQ: cuQ, cuSeqlensK: cuK, alibiSlopes: new Float32Array(8) }),
    ShapeError,
    "alibiSlopes must have length H = 4 or B·H = 12 (B (the number of packed sequences) = 3)",
  );
});

test("a malformed windowSize is a RangeError, and one that is not an array a TypeError, that shows it", () => {
  const fragment = "windowSize must be [left, right] with integers ≥ −1 (−1: unbounded): windowSize is";
  const bad: [unknown, string][] = [
    [[-2, 0], "an Array [-2, 0]"],
    [[1], "an Array [1]"],
    [[1, 2, 3], "an Array [1, 2, 3]"],
    [[1.5, 0], "an Array [1.5, 0]"],
    [[0, NaN], "an Array [0, NaN]"],
    [[0, Infinity], "an Array [0, Infinity]"],
    [["1", 0], 'an Array ["1", 0]'],
  ];
  for (const [windowSize, shown] of bad) assertThrows(call({ windowSize }), RangeError, `${fragment} ${shown}`);
  // Not an array at all is a wrong type.
  const notArrays: [unknown, string][] = [[Int32Array.of(1, 1), "an Int32Array"], [null, "null"], [3, "3"]];
  for (const [windowSize, shown] of notArrays) {
    assertThrows(call({ windowSize }), TypeError, `windowSize must be an array [left, right]: windowSize is ${shown}`);
  }
});

test("a negative, NaN or infinite softcap is a RangeError, and a non-number a TypeError, naming it", () => {
  for (const [softcap, shown] of [[-1, "-1"], [NaN, "NaN"], [Infinity, "Infinity"]] as const) {
    assertThrows(call({ softcap }), RangeError, `softcap must be a finite number ≥ 0: softcap is ${shown}`);
  }
  assertThrows(call({ softcap: "30" }), TypeError, 'softcap must be a number: softcap is "30"');
});

test("a scale or softcap that f32 cannot hold (beyond its largest value, or a softcap it rounds to 0) is a RangeError", () => {
  // The kernels compute in f32: 1e39 would become Infinity there (NaN results), and a softcap of
  // 1e-46 would become 0, which turns capping off while the caller asked for it.
  for (const name of ["scale", "softcap"]) {
    assertThrows(
      call({ [name]: 1e39 }),
      RangeError,
      `${name} must be at most 3.4028234663852886e+38 (the largest f32): ${name} is 1e+39`,
    );
  }
  assertThrows(
    call({ softcap: 1e-46 }),
    RangeError,
    "softcap must be 0 or at least the smallest f32, 1.4e-45: softcap is 1e-46",
  );
  flashAttention(q, k, v, { scale: 3.4028234663852886e38, softcap: 1.5e-45 }); // the limits themselves work
});

test("null is not a default: options given as null are TypeErrors, like any other wrong type", () => {
  assertThrows(call({ scale: null }), TypeError, "scale must be a number: scale is null");
  assertThrows(call({ softcap: null }), TypeError, "softcap must be a number: softcap is null");
  assertThrows(call({ sramBytes: null }), TypeError, "sramBytes must be a number: sramBytes is null");
  assertThrows(call({ sramBytes: "131072" }), TypeError, 'sramBytes must be a number: sramBytes is "131072"');
  assertThrows(call({ causal: null }), TypeError, "causal is null");
  assertThrows(call({ layout: null }), TypeError, "layout is null");
});

test("a problem too large for WebAssembly memory fails before any sequence is written to out", () => {
  // Varlen: the first sequence is small, the second needs more than 4 GiB for one head's K and V.
  // The arrays are allocated lazily by every runtime (untouched pages), so this costs no real memory.
  const NkBig = 2_200_000;
  const D = 256;
  const qq = { data: new Float32Array(2 * D).fill(0.5), shape: [2, 1, D] };
  const kk = { data: new Float32Array((1 + NkBig) * D), shape: [1 + NkBig, 1, D] };
  const vv = { data: new Float32Array((1 + NkBig) * D), shape: [1 + NkBig, 1, D] };
  const out = new Float32Array(2 * D).fill(7);
  const cuSeqlensQ = Int32Array.of(0, 1, 2);
  const cuSeqlensK = Int32Array.of(0, 1, 1 + NkBig);
  assertThrows(() => flashAttention(qq, kk, vv, { cuSeqlensQ, cuSeqlensK, out }), RangeError, "4 GiB");
  if (!out.every((x) => x === 7)) throw new Error("the first sequence was written before the failure");
  // The message names the shapes.
  assertThrows(
    () => flashAttention(qq, kk, vv, { cuSeqlensQ, cuSeqlensK }),
    RangeError,
    `q.shape is [2, 1, 256], k.shape is [${1 + NkBig}, 1, 256], v.shape is [${1 + NkBig}, 1, 256]`,
  );
});

// ── KV cache ─────────────────────────────────────────────────────────────────────────────────

const maxLen = 12;
const kCache = randomTensor(random, [B, maxLen, 2, d]);
const vCache = randomTensor(random, [B, maxLen, 2, dv]);
const kCacheBits = kCache.data.slice();
const vCacheBits = vCache.data.slice();
const qDecode = randomTensor(random, [B, 1, H, d]);
const kNew = randomTensor(random, [B, 3, 2, d]);
const vNew = randomTensor(random, [B, 3, 2, dv]);

/** Asserts the failure and that neither cache changed by a bit. */
function assertCacheCallThrows(
  // deno-lint-ignore no-explicit-any
  options: any,
  // deno-lint-ignore no-explicit-any
  type: abstract new (...args: any[]) => Error,
  fragment: string,
  qq: Tensor = qDecode,
): Error {
  const e = assertThrows(() => flashAttentionWithKvCache(qq, kCache, vCache, options), type, fragment);
  assertBitwiseEqual(`kCache after "${fragment}"`, kCache.data, kCacheBits);
  assertBitwiseEqual(`vCache after "${fragment}"`, vCache.data, vCacheBits);
  return e;
}

test("an append that would overflow a cache is a RangeError and writes nothing, not even to entries that fit", () => {
  // Entry 0 has room for the 3 new rows; entry 1 (at 10 of 12) has not.
  assertCacheCallThrows(
    { cacheSeqLens: new Int32Array([2, 10]), kNew, vNew },
    RangeError,
    "appending 3 new keys at cacheSeqLens[1] = 10 overflows the cache of maxLen 12",
  );
  // The default lengths mean full caches: any append overflows.
  assertCacheCallThrows({ kNew, vNew }, RangeError, "appending 3 new keys at cacheSeqLens[0] = 12");
});

test("a KV-cache call too large for WebAssembly memory fails before appending", () => {
  // A lazily allocated cache of 2.2M rows of d = 256: attending to all of it needs more than 4 GiB.
  const big = 2_200_000;
  const D = 256;
  const kc = { data: new Float32Array(big * D), shape: [1, big, 1, D] };
  const vc = { data: new Float32Array(big * D), shape: [1, big, 1, D] };
  const row = { data: new Float32Array(D).fill(1), shape: [1, 1, 1, D] };
  const qq = { data: new Float32Array(D), shape: [1, 1, 1, D] };
  const cacheSeqLens = Int32Array.of(big - 1);
  assertThrows(
    () => flashAttentionWithKvCache(qq, kc, vc, { cacheSeqLens, kNew: row, vNew: row }),
    RangeError,
    "4 GiB",
  );
  const last = (big - 1) * D;
  if (!kc.data.subarray(last).every((x) => x === 0) || !vc.data.subarray(last).every((x) => x === 0)) {
    throw new Error("the new row was appended before the failure");
  }
});

test("kNew without vNew, or vNew without kNew, is a TypeError", () => {
  const cacheSeqLens = new Int32Array([0, 0]);
  assertCacheCallThrows({ cacheSeqLens, kNew }, TypeError, "kNew and vNew go together: pass both or neither");
  assertCacheCallThrows({ cacheSeqLens, vNew }, TypeError, "kNew and vNew go together");
});

test("kNew or vNew of the wrong shape is a ShapeError naming the expected shape", () => {
  const cacheSeqLens = new Int32Array([0, 0]);
  assertCacheCallThrows(
    { cacheSeqLens, kNew: randomTensor(random, [B, 3, 1, d]), vNew },
    ShapeError,
    "kNew must have shape [2, 3, 2, 8] (B, Nnew, Hkv and the cache's head dim): kNew.shape is [2, 3, 1, 8]",
  );
  assertCacheCallThrows(
    { cacheSeqLens, kNew, vNew: randomTensor(random, [B, 2, 2, dv]) },
    ShapeError,
    "vNew must have shape [2, 3, 2, 5]",
  );
  assertCacheCallThrows(
    { cacheSeqLens, kNew: randomTensor(random, [1, 3, 2, d]), vNew },
    ShapeError,
    "kNew.shape is [1, 3, 2, 8]",
  );
  assertCacheCallThrows(
    { cacheSeqLens, kNew: randomTensor(random, [B, 3, 2 * d]), vNew },
    ShapeError,
    "kNew must have rank 4 ([B, Nnew, Hkv, d])",
  );
});

test("cacheSeqLens outside [0, maxLen], of the wrong length or type is rejected", () => {
  assertCacheCallThrows(
    { cacheSeqLens: new Int32Array([3, 13]) },
    RangeError,
    "cacheSeqLens must hold lengths in [0, maxLen = 12]: cacheSeqLens[1] is 13",
  );
  assertCacheCallThrows({ cacheSeqLens: new Int32Array([-1, 0]), kNew, vNew }, RangeError, "cacheSeqLens[0] is -1");
  assertCacheCallThrows(
    { cacheSeqLens: new Int32Array([1]) },
    ShapeError,
    "cacheSeqLens must have length B = 2: cacheSeqLens.length is 1",
  );
  assertCacheCallThrows(
    { cacheSeqLens: new Uint32Array([1, 1]) },
    TypeError,
    "cacheSeqLens must be an Int32Array: cacheSeqLens is a Uint32Array",
  );
});

test("a negative or non-integer numSplits is a RangeError, a non-number a TypeError, and neither writes", () => {
  const cacheSeqLens = new Int32Array([0, 0]);
  for (const [numSplits, shown] of [[-1, "-1"], [1.5, "1.5"], [NaN, "NaN"]] as const) {
    assertCacheCallThrows(
      { cacheSeqLens, kNew, vNew, numSplits },
      RangeError,
      `numSplits must be an integer ≥ 0: numSplits is ${shown}`,
    );
  }
  assertCacheCallThrows({ cacheSeqLens, kNew, vNew, numSplits: "2" }, TypeError, "numSplits must be a number");
});

test("a layout option is a TypeError for the KV cache, which is bshd only", () => {
  // The message is the unknown-option one: "layout" is not among the KV cache's option keys.
  for (const layout of ["bhsd", "bshd"]) assertCacheCallThrows({ layout }, TypeError, "layout");
  // Options of flashAttention that make no sense here are unknown too.
  assertCacheCallThrows({ seqLensK: new Int32Array([1, 1]) }, TypeError, 'unknown key "seqLensK"');
  assertCacheCallThrows({ cuSeqlensQ: new Int32Array([0, 1]) }, TypeError, 'unknown key "cuSeqlensQ"');
});

test("every other check of a KV-cache call also runs before the append", () => {
  const cacheSeqLens = new Int32Array([0, 4]);
  const ok = { cacheSeqLens, kNew, vNew };
  // The mask spans the cache's maxLen, not the attended lengths.
  assertCacheCallThrows(
    { ...ok, mask: { data: new Float32Array(7), shape: [7] } },
    ShapeError,
    "does not broadcast to [B, H, Nq, Nk] = [2, 4, 1, 12]",
  );
  assertCacheCallThrows({ ...ok, alibiSlopes: new Float32Array(3) }, ShapeError, "alibiSlopes must have length H = 4");
  assertCacheCallThrows({ ...ok, windowSize: [-3, 0] }, RangeError, "windowSize must be [left, right]");
  assertCacheCallThrows({ ...ok, softcap: -2 }, RangeError, "softcap is -2");
  assertCacheCallThrows({ ...ok, sramBytes: 64 }, RangeError, "sramBytes is 64, too small");
  assertCacheCallThrows({ ...ok, out: new Float32Array(3) }, ShapeError, "out must hold 40 elements");
  assertCacheCallThrows(ok, ShapeError, "H is 3, Hkv is 2", randomTensor(random, [B, 1, 3, d]));
});

test("after failed KV-cache calls a valid call appends and computes the same bits as on a fresh cache", () => {
  const cacheSeqLens = new Int32Array([5, 9]);
  const fresh = () => ({
    k: { data: kCacheBits.slice(), shape: kCache.shape },
    v: { data: vCacheBits.slice(), shape: vCache.shape },
  });
  const first = fresh();
  const expected = flashAttentionWithKvCache(qDecode, first.k, first.v, { cacheSeqLens, kNew, vNew, causal: true });
  assertCacheCallThrows({ cacheSeqLens: new Int32Array([10, 10]), kNew, vNew }, RangeError, "overflows");
  assertCacheCallThrows({ cacheSeqLens, kNew, vNew, numSplits: -4 }, RangeError, "numSplits");
  const second = fresh();
  const again = flashAttentionWithKvCache(qDecode, second.k, second.v, { cacheSeqLens, kNew, vNew, causal: true });
  assertBitwiseEqual("O", again.data, expected.data);
  assertBitwiseEqual("kCache", second.k.data, first.k.data);
  assertBitwiseEqual("vCache", second.v.data, first.v.data);
});
