// Every kind of bad input gets a typed error naming the values, before any WebAssembly work,
// and the module stays usable afterwards.

import { flashAttention, ShapeError, type Tensor } from "../mod.ts";
import { referenceAttention } from "../src/reference.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import { assertBitwiseEqual, assertThrows, randomTensor, rng, test } from "./_util.ts";

const random = rng(42);
const q = randomTensor(random, [2, 10, 3, 8]);
const k = randomTensor(random, [2, 12, 3, 8]);
const v = randomTensor(random, [2, 12, 3, 5]);
const good = flashAttention(q, k, v, { causal: true, returnLse: true });

const tensor = (shape: number[], length = shape.reduce((a, b) => a * b, 1)): Tensor => ({
  data: new Float32Array(length),
  shape,
});

// deno-lint-ignore no-explicit-any
const call = (...args: any[]) => () => (flashAttention as any)(...args);

test("a data length that differs from the product of the shape is a ShapeError naming both", () => {
  const e = assertThrows(call(tensor([2, 10, 3, 8], 100), k, v), ShapeError, "q.data must hold 480 elements");
  if (!e.message.includes("[2, 10, 3, 8]") || !e.message.includes("q.data.length is 100")) throw e;
  assertThrows(call(q, k, tensor([2, 12, 3, 5], 359)), ShapeError, "v.data must hold 360 elements");
});

test("a rank other than 4 is a ShapeError", () => {
  assertThrows(
    call(tensor([10, 3, 8]), k, v),
    ShapeError,
    'q must have rank 4 ([B, N, H, d] in layout "bshd"): q.shape is [10, 3, 8]',
  );
  assertThrows(call(q, tensor([1, 2, 12, 3, 8]), v), ShapeError, "k must have rank 4");
  assertThrows(call(tensor([2, 10, 3]), k, v, { layout: "bhsd" }), ShapeError, '([B, H, N, d] in layout "bhsd")');
});

test("B, H, d or Nk that disagree between q, k and v are ShapeErrors naming both shapes", () => {
  assertThrows(
    call(q, tensor([1, 12, 3, 8]), v),
    ShapeError,
    "k must have the same batch size as q: q.shape is [2, 10, 3, 8], k.shape is [1, 12, 3, 8]",
  );
  assertThrows(
    call(q, tensor([2, 12, 2, 8]), tensor([2, 12, 2, 5])),
    ShapeError,
    "the number of query heads must be a multiple of the number of key/value heads (GQA): H is 3, Hkv is 2",
  );
  assertThrows(
    call(q, tensor([2, 12, 3, 7]), v),
    ShapeError,
    "k must have the same head dim as q: q.shape is [2, 10, 3, 8], k.shape is [2, 12, 3, 7]",
  );
  assertThrows(call(q, k, tensor([3, 12, 3, 5])), ShapeError, "v must have the same batch size as k");
  assertThrows(call(q, k, tensor([2, 12, 1, 5])), ShapeError, "v must have the same number of heads as k");
  assertThrows(
    call(q, k, tensor([2, 11, 3, 5])),
    ShapeError,
    "v must have the same sequence length as k: k.shape is [2, 12, 3, 8], v.shape is [2, 11, 3, 5]",
  );
  const e = assertThrows(call(q, tensor([2, 12, 3, 7]), v), ShapeError, "head dim") as ShapeError;
  if (e.expected !== "head dim 8" || e.actual !== "head dim 7") throw new Error(`${e.expected} / ${e.actual}`);
});

test("dims that are zero, negative or not integers are ShapeErrors", () => {
  for (const bad of [0, -3, 2.5, NaN, Infinity]) {
    assertThrows(
      call({ data: q.data, shape: [2, bad, 3, 8] }, k, v),
      ShapeError,
      "q.shape must hold positive integers",
    );
  }
  assertThrows(
    call(q, { data: new Float32Array(0), shape: [2, 0, 3, 8] }, v),
    ShapeError,
    "k.shape must hold positive integers: k.shape is [2, 0, 3, 8]",
  );
});

test("a NaN, infinite or negative scale is a RangeError, and a non-number a TypeError, naming it", () => {
  for (
    const [scale, shown] of [[NaN, "NaN"], [Infinity, "Infinity"], [-0.5, "-0.5"], [-Infinity, "-Infinity"]] as const
  ) {
    assertThrows(call(q, k, v, { scale }), RangeError, `scale must be a finite number ≥ 0: scale is ${shown}`);
  }
  assertThrows(call(q, k, v, { scale: "1" }), TypeError, 'scale must be a number: scale is "1"');
});

test("an out buffer of the wrong length or type, or overlapping an input, is rejected", () => {
  assertThrows(
    call(q, k, v, { out: new Float32Array(299) }),
    ShapeError,
    "out must hold 300 elements (output shape [2, 10, 3, 5]): out.length is 299",
  );
  assertThrows(
    call(q, k, v, { out: new Float64Array(300) }),
    TypeError,
    "out must be a Float32Array: out is a Float64Array",
  );
  const shared = new Float32Array(q.data.length + 300);
  shared.set(q.data);
  const qView = { data: shared.subarray(0, q.data.length), shape: q.shape };
  assertThrows(call(qView, k, v, { out: shared.subarray(100, 400) }), TypeError, "out must not share memory with q");
  // Adjacent but not overlapping is fine.
  const o = flashAttention(qView, k, v, { causal: true, out: shared.subarray(q.data.length) });
  assertBitwiseEqual("adjacent out", o.data, good.data);
});

test("head dims above 256 are RangeErrors naming d and dv", () => {
  assertThrows(
    call(tensor([1, 2, 1, 257]), tensor([1, 2, 1, 257]), tensor([1, 2, 1, 4])),
    RangeError,
    "the head dims must be at most 256: d is 257, dv is 4",
  );
  assertThrows(call(tensor([1, 2, 1, 4]), tensor([1, 2, 1, 4]), tensor([1, 2, 1, 300])), RangeError, "dv is 300");
});

test("an arena size that is not an integer, too large, or too small for the head dims is a RangeError", () => {
  const max = loadKernels().arenaMaxBytes();
  assertThrows(
    call(q, k, v, { sramBytes: 1000.5 }),
    RangeError,
    `sramBytes must be an integer in (0, ${max}]: sramBytes is 1000.5`,
  );
  assertThrows(call(q, k, v, { sramBytes: max + 1 }), RangeError, `sramBytes is ${max + 1}`);
  assertThrows(call(q, k, v, { sramBytes: 0 }), RangeError, "sramBytes is 0");
  const minimum = loadKernels().arenaBytes(8, 4, 8, 5, false);
  assertThrows(
    call(q, k, v, { sramBytes: minimum - 1 }),
    RangeError,
    `too small for head dims d = 8, dv = 5: the smallest blocks (Br = 8, Bc = 4) need ${minimum} bytes`,
  );
  flashAttention(q, k, v, { sramBytes: minimum }); // the stated minimum works
});

test("wrong types and unknown options are TypeErrors that name them", () => {
  assertThrows(
    call({ data: Array.from(q.data), shape: q.shape }, k, v),
    TypeError,
    "q.data must be a Float32Array: q.data is an Array",
  );
  assertThrows(
    call(q, { data: new Float64Array(k.data), shape: k.shape }, v),
    TypeError,
    "k.data must be a Float32Array: k.data is a Float64Array",
  );
  assertThrows(call(q, k, null), TypeError, "v must be a tensor { data, shape }: v is null");
  assertThrows(call(q, { data: k.data, shape: "2,12,3,8" }, v), TypeError, "k.shape must be an array");
  assertThrows(
    call(q, k, v, { isCausal: true }),
    TypeError,
    'options has an unknown key "isCausal": the known keys are scale, causal, windowSize',
  );
  assertThrows(
    call(q, k, v, { causal: 1 }),
    TypeError,
    'causal must be true, false, "bottom-right" or "top-left": causal is 1',
  );
  assertThrows(call(q, k, v, { returnLse: "yes" }), TypeError, "returnLse must be a boolean");
  assertThrows(call(q, k, v, { layout: "nhd" }), TypeError, 'layout must be "bshd" or "bhsd": layout is "nhd"');
  assertThrows(call(q, k, v, 5), TypeError, "options must be an object: options is 5");
  // deno-lint-ignore no-explicit-any
  assertThrows(() => (referenceAttention as any)(q, k, v, { sramBytes: 4096 }), TypeError, 'unknown key "sramBytes"');
});

test("sizes whose buffers cannot fit in WebAssembly memory are a RangeError, not a trap", () => {
  // One head's K and V alone need more than 4 GiB. The arrays are allocated lazily by every
  // runtime (untouched pages), so this costs no real memory.
  const Nk = 2_200_000;
  const big = (D: number): Tensor => ({ data: new Float32Array(Nk * D), shape: [1, Nk, 1, D] });
  assertThrows(call(tensor([1, 1, 1, 256]), big(256), big(256)), RangeError, "one head of this call needs");
  const e = assertThrows(call(tensor([1, 1, 1, 256]), big(256), big(256)), RangeError, "4 GiB");
  if (!/needs \d+ bytes/.test(e.message)) throw e;
});

test("after every kind of failed call the module computes the same bits as before", () => {
  // One or more calls per kind of bad input tested above. Each must throw its own error (a call
  // that does not throw fails here), and the valid call after it must give the bits it gave before
  // any failure: a failed call may not leave state behind in the module (memory grown or written,
  // arena, counters).
  const max = loadKernels().arenaMaxBytes();
  const minimum = loadKernels().arenaBytes(8, 4, 8, 5, false);
  const shared = new Float32Array(q.data.length + 300);
  shared.set(q.data);
  const qView = { data: shared.subarray(0, q.data.length), shape: q.shape };
  const Nk = 2_200_000; // K and V of one head need more than 4 GiB (allocated lazily, as above)
  const big = (D: number): Tensor => ({ data: new Float32Array(Nk * D), shape: [1, Nk, 1, D] });
  // deno-lint-ignore no-explicit-any
  type ErrorClass = abstract new (...args: any[]) => Error;
  // deno-lint-ignore no-explicit-any
  const reference = referenceAttention as any;
  const failures: [string, () => unknown, ErrorClass, string][] = [
    ["q.data too short", call(tensor([2, 10, 3, 8], 100), k, v), ShapeError, "q.data must hold 480 elements"],
    ["v.data too short", call(q, k, tensor([2, 12, 3, 5], 359)), ShapeError, "v.data must hold 360 elements"],
    ["q of rank 3", call(tensor([10, 3, 8]), k, v), ShapeError, "q must have rank 4"],
    ["k of rank 5", call(q, tensor([1, 2, 12, 3, 8]), v), ShapeError, "k must have rank 4"],
    ["q of rank 3, bhsd", call(tensor([2, 10, 3]), k, v, { layout: "bhsd" }), ShapeError, '"bhsd"'],
    ["k of another batch size", call(q, tensor([1, 12, 3, 8]), v), ShapeError, "same batch size as q"],
    ["H not a multiple of Hkv", call(q, tensor([2, 12, 2, 8]), tensor([2, 12, 2, 5])), ShapeError, "(GQA)"],
    ["k of another head dim", call(q, tensor([2, 12, 3, 7]), v), ShapeError, "same head dim as q"],
    ["v of another batch size", call(q, k, tensor([3, 12, 3, 5])), ShapeError, "same batch size as k"],
    ["v with other heads", call(q, k, tensor([2, 12, 1, 5])), ShapeError, "same number of heads as k"],
    ["v of another length", call(q, k, tensor([2, 11, 3, 5])), ShapeError, "same sequence length as k"],
    ...[0, -3, 2.5, NaN, Infinity].map((bad): [string, () => unknown, ErrorClass, string] => [
      `a dim of ${bad}`,
      call({ data: q.data, shape: [2, bad, 3, 8] }, k, v),
      ShapeError,
      "q.shape must hold positive integers",
    ]),
    ["Nk = 0", call(q, { data: new Float32Array(0), shape: [2, 0, 3, 8] }, v), ShapeError, "k.shape must hold"],
    ...[NaN, Infinity, -0.5, -Infinity].map((scale): [string, () => unknown, ErrorClass, string] => [
      `scale ${scale}`,
      call(q, k, v, { scale }),
      RangeError,
      `scale is ${scale}`,
    ]),
    ["scale a string", call(q, k, v, { scale: "1" }), TypeError, "scale must be a number"],
    ["out too short", call(q, k, v, { out: new Float32Array(299) }), ShapeError, "out.length is 299"],
    ["out too long", call(q, k, v, { out: new Float32Array(1) }), ShapeError, "out.length is 1"],
    ["out a Float64Array", call(q, k, v, { out: new Float64Array(300) }), TypeError, "out must be a Float32Array"],
    ["out overlapping q", call(qView, k, v, { out: shared.subarray(100, 400) }), TypeError, "share memory with q"],
    ["d = 257", call(tensor([1, 2, 1, 257]), tensor([1, 2, 1, 257]), tensor([1, 2, 1, 4])), RangeError, "d is 257"],
    ["dv = 300", call(tensor([1, 2, 1, 4]), tensor([1, 2, 1, 4]), tensor([1, 2, 1, 300])), RangeError, "dv is 300"],
    ["sramBytes 1000.5", call(q, k, v, { sramBytes: 1000.5 }), RangeError, "sramBytes is 1000.5"],
    ["sramBytes too large", call(q, k, v, { sramBytes: max + 1 }), RangeError, `sramBytes is ${max + 1}`],
    ["sramBytes 0", call(q, k, v, { sramBytes: 0 }), RangeError, "sramBytes is 0"],
    ["sramBytes 1", call(q, k, v, { sramBytes: 1 }), RangeError, "sramBytes"],
    ["sramBytes too small", call(q, k, v, { sramBytes: minimum - 1 }), RangeError, "too small for head dims"],
    ["q.data an Array", call({ data: Array.from(q.data), shape: q.shape }, k, v), TypeError, "q.data must be"],
    ["k.data a Float64Array", call(q, { data: new Float64Array(k.data), shape: k.shape }, v), TypeError, "k.data"],
    ["v null", call(q, k, null), TypeError, "v must be a tensor { data, shape }: v is null"],
    ["k.shape a string", call(q, { data: k.data, shape: "2,12,3,8" }, v), TypeError, "k.shape must be an array"],
    ["unknown option", call(q, k, v, { isCausal: true }), TypeError, 'unknown key "isCausal"'],
    ["causal 1", call(q, k, v, { causal: 1 }), TypeError, "causal is 1"],
    ["returnLse a string", call(q, k, v, { returnLse: "yes" }), TypeError, "returnLse must be a boolean"],
    ["unknown layout", call(q, k, v, { layout: "nhd" }), TypeError, 'layout is "nhd"'],
    ["options a number", call(q, k, v, 5), TypeError, "options must be an object"],
    ["reference with sramBytes", () => reference(q, k, v, { sramBytes: 4096 }), TypeError, 'unknown key "sramBytes"'],
    ["too large for wasm memory", call(tensor([1, 1, 1, 256]), big(256), big(256)), RangeError, "4 GiB"],
  ];
  for (const [what, fail, type, fragment] of failures) {
    try {
      assertThrows(fail, type, fragment);
    } catch (error) {
      throw new Error(`${what}: ${(error as Error).message}`);
    }
    const again = flashAttention(q, k, v, { causal: true, returnLse: true });
    assertBitwiseEqual(`O after ${what}`, again.data, good.data);
    assertBitwiseEqual(`lse after ${what}`, again.lse.data, good.lse.data);
  }
});

// ── Found by the fuzzer (fuzz/, issue 13) ──────────────────────────────────────────────────

test("a Proxy around a typed array is a TypeError naming the argument, not an internal error", () => {
  // A Proxy passes `instanceof Float32Array` but is no typed array: its elements cannot be copied.
  const proxied = { data: new Proxy(q.data, {}), shape: q.shape };
  assertThrows(call(proxied, k, v), TypeError, "q.data must be a Float32Array: q.data is an object (Float32Array)");
  assertThrows(call(q, k, v, { alibiSlopes: new Proxy(new Float32Array(3), {}) }), TypeError, "alibiSlopes must be");
  assertThrows(call(q, k, v, { seqLensK: new Proxy(new Int32Array(2), {}) }), TypeError, "seqLensK must be");
  assertThrows(call(q, k, v, { out: new Proxy(new Float32Array(good.data.length), {}) }), TypeError, "out must be");
  const mask = { data: new Proxy(new Uint8Array(12), {}), shape: [12] };
  assertThrows(call(q, k, v, { mask }), TypeError, "mask.data must be");
  assertBitwiseEqual("O after the Proxies", flashAttention(q, k, v, { causal: true }).data, good.data);
});

test("a shape is read once: a Proxy that answers differently later runs with the shape that was checked", () => {
  // Each dim answers truthfully twice, then 2: checked with one shape, the call must not run with another.
  const shifty = (t: Tensor): Tensor => {
    const reads = new Map<PropertyKey, number>();
    const shape = new Proxy([...t.shape], {
      get(target, key, receiver) {
        const n = (reads.get(key) ?? 0) + 1;
        reads.set(key, n);
        return key === "0" && n > 2 ? 1 : Reflect.get(target, key, receiver);
      },
    });
    return { data: t.data, shape };
  };
  const o = flashAttention(shifty(q), shifty(k), shifty(v), { causal: true, returnLse: true });
  assertBitwiseEqual("O", o.data, good.data);
  assertBitwiseEqual("lse", o.lse.data, good.lse.data);
});

test("data whose ArrayBuffer was transferred (detached) is a TypeError that says so", () => {
  const gone = (data: Float32Array) => {
    const copy = data.slice();
    structuredClone(copy.buffer, { transfer: [copy.buffer] });
    return copy;
  };
  assertThrows(
    call({ data: gone(q.data), shape: q.shape }, k, v),
    TypeError,
    "q.data must be readable: its ArrayBuffer is detached",
  );
  assertThrows(call(q, k, { data: gone(v.data), shape: v.shape }), TypeError, "v.data must be readable");
  assertThrows(call(q, k, v, { out: gone(good.data) }), TypeError, "out must be readable: its ArrayBuffer is detached");
  assertBitwiseEqual("O after the detached buffers", flashAttention(q, k, v, { causal: true }).data, good.data);
});

test("data in a SharedArrayBuffer or at a byte offset is accepted and gives the same bits", () => {
  const shared = (data: Float32Array, offset: number) => {
    const view = new Float32Array(new SharedArrayBuffer(4 * (data.length + offset)), 4 * offset, data.length);
    view.set(data);
    return view;
  };
  const o = flashAttention(
    { data: shared(q.data, 0), shape: q.shape },
    { data: shared(k.data, 3), shape: k.shape },
    { data: shared(v.data, 1), shape: v.shape },
    { causal: true, returnLse: true, out: shared(new Float32Array(good.data.length), 5) },
  );
  assertBitwiseEqual("O", o.data, good.data);
  assertBitwiseEqual("lse", o.lse.data, good.lse.data);
  // out may share a SharedArrayBuffer with an input, as long as their bytes do not overlap.
  const both = new Float32Array(new SharedArrayBuffer(4 * (q.data.length + good.data.length)));
  both.set(q.data);
  const into = both.subarray(q.data.length);
  flashAttention({ data: both.subarray(0, q.data.length), shape: q.shape }, k, v, { causal: true, out: into });
  assertBitwiseEqual("O beside q", into, good.data);
  assertThrows(
    call({ data: both.subarray(0, q.data.length), shape: q.shape }, k, v, { out: both.subarray(1, 1 + into.length) }),
    TypeError,
    "out must not share memory with q",
  );
});

test("a positive scale that f32 rounds to 0 is a RangeError, as for softcap", () => {
  // The kernels multiply by f32(scale): 0·∞ would be NaN where the f64 reference has 5e-324·∞ = ∞.
  assertThrows(call(q, k, v, { scale: 5e-324 }), RangeError, "scale must be 0 or at least the smallest f32, 1.4e-45");
  assertThrows(call(q, k, v, { scale: 7e-46 }), RangeError, "scale is 7e-46");
  for (const scale of [0, 1.401298464324817e-45, 1e-45]) flashAttention(q, k, v, { scale });
});

test("a getter that throws inside the options or a tensor throws the caller's own error, and nothing changes", () => {
  const own = new Error("the caller's own");
  const throwing = (key: string) =>
    Object.defineProperty({ causal: true }, key, {
      enumerable: true,
      get() {
        throw own;
      },
    });
  for (const key of ["scale", "mask", "out", "sramBytes", "returnLse"]) {
    let caught: unknown;
    try {
      flashAttention(q, k, v, throwing(key) as never);
    } catch (error) {
      caught = error;
    }
    if (caught !== own) throw new Error(`${key}: expected the caller's error, got ${String(caught)}`);
  }
  let caught: unknown;
  try {
    flashAttention(throwing("data") as never, k, v);
  } catch (error) {
    caught = error;
  }
  if (caught !== own) throw new Error(`q.data: expected the caller's error, got ${String(caught)}`);
  assertBitwiseEqual("O after the getters", flashAttention(q, k, v, { causal: true }).data, good.data);
});
