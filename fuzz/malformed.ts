// Malformed-call properties: a valid call of each public function, broken in one way (a kind of
// abuse from the lists below, with fast-check choosing the kind, the argument and the bad value).
// The broken call must throw (or reject with) the typed error the API documents, whose message names
// the argument — never a WebAssembly trap or an internal error — and the valid call made again
// afterwards must give the bits it gave before. A few abuses are not errors: a SharedArrayBuffer or
// a byte offset behind the data, a Proxy around the tensor object; those must give the same bits.
// A getter that throws inside an argument throws the caller's own error, unchanged.

import fc from "fast-check";
import {
  type AttentionOutput,
  type AttentionPool,
  createAttentionPool,
  createKvCache,
  flashAttention,
  flashAttentionBackward,
  flashAttentionWithKvCache,
  type Tensor,
} from "../mod.ts";
import { flashAttentionBackwardIo, flashAttentionIo, standardAttentionIo } from "../src/io.ts";
import { assertBitwiseEqual, randomTensor, rng } from "../tests/_util.ts";
import { createLoader } from "../src/wasm/loader.ts";
import { backed } from "./_gen.ts";
import type { FuzzProperty } from "./_runner.ts";
import type { Handler } from "./valid.ts";

type ErrorType = typeof TypeError | typeof RangeError;
type AnyFn = (...args: unknown[]) => unknown;

/** What a broken call must do: throw `type` naming `names`, give the valid call's bits, or rethrow `own`. */
type Expect = { type: ErrorType; names: string } | { same: true } | { own: Error };

/** The caller's own error, thrown by a getter. */
class CallerError extends Error {}

const detached = <T extends Float32Array | Uint16Array>(data: T): T => {
  const copy = data.slice() as T;
  structuredClone(copy.buffer, { transfer: [copy.buffer as ArrayBuffer] });
  return copy;
};

/** Throws unless `error` is what `expect` asks for. */
function assertExpected(what: string, error: unknown, expect: Expect): void {
  if ("same" in expect) throw new Error(`${what}: expected the valid call's result, got ${String(error)}`);
  if ("own" in expect) {
    if (error !== expect.own) throw new Error(`${what}: expected the caller's own error, got ${String(error)}`);
    return;
  }
  if (error instanceof WebAssembly.RuntimeError || !(error instanceof expect.type)) {
    throw new Error(`${what}: expected a ${expect.type.name} naming ${expect.names}, got ${String(error)}`);
  }
  if (!error.message.includes(expect.names)) {
    throw new Error(`${what}: the ${error.name} does not name ${expect.names}: ${error.message}`);
  }
}

// ── The base calls ───────────────────────────────────────────────────────────────────────

interface Base {
  B: number;
  Hkv: number;
  group: number;
  Nq: number;
  Nk: number;
  d: number;
  dv: number;
  seed: number;
}

const baseArb: fc.Arbitrary<Base> = fc.record({
  B: fc.integer({ min: 1, max: 2 }),
  Hkv: fc.integer({ min: 1, max: 2 }),
  group: fc.integer({ min: 1, max: 2 }),
  Nq: fc.integer({ min: 1, max: 9 }),
  Nk: fc.integer({ min: 1, max: 9 }),
  d: fc.integer({ min: 1, max: 9 }),
  dv: fc.integer({ min: 1, max: 9 }),
  seed: fc.integer(),
});

function tensorsOf(b: Base): { q: Tensor; k: Tensor; v: Tensor } {
  const random = rng(b.seed);
  return {
    q: randomTensor(random, [b.B, b.Nq, b.Hkv * b.group, b.d]),
    k: randomTensor(random, [b.B, b.Nk, b.Hkv, b.d]),
    v: randomTensor(random, [b.B, b.Nk, b.Hkv, b.dv]),
  };
}

const BASE_OPTIONS = { causal: true, returnLse: true } as const;

// ── Abuses of a tensor argument ──────────────────────────────────────────────────────────

/** A broken copy of tensor `t` named `name`, and what a call must do with it. */
type TensorAbuse = (t: Tensor, name: string, pick: number) => { value: unknown; expect: Expect };

const BAD_DIMS = [0, -1, 2.5, NaN, Infinity, 2 ** 53, "4", null];

const TENSOR_ABUSES: Record<string, TensorAbuse> = {
  "detached buffer": (t, name) => ({
    value: { data: detached(t.data), shape: t.shape },
    expect: { type: TypeError, names: `${name}.data` },
  }),
  "Float64Array data": (t, name) => ({
    value: { data: Float64Array.from(t.data), shape: t.shape },
    expect: { type: TypeError, names: `${name}.data` },
  }),
  "plain array data": (t, name) => ({
    value: { data: Array.from(t.data), shape: t.shape },
    expect: { type: TypeError, names: `${name}.data` },
  }),
  "Proxy around the data": (t, name) => ({
    value: { data: new Proxy(t.data, {}), shape: t.shape },
    expect: { type: TypeError, names: `${name}.data` },
  }),
  "data one element short": (t, name) => ({
    value: { data: t.data.subarray(1), shape: t.shape },
    expect: { type: TypeError, names: `${name}.data` },
  }),
  "a bad dim": (t, name, pick) => {
    const shape = [...t.shape] as unknown[];
    shape[pick % shape.length] = BAD_DIMS[pick % BAD_DIMS.length];
    return { value: { data: t.data, shape }, expect: { type: TypeError, names: `${name}.shape` } };
  },
  "dims whose product overflows": (t, name, pick) => ({
    value: { data: t.data, shape: t.shape.map((n, i) => (i === pick % 4 ? n : 2 ** (16 + (pick % 24)))) },
    expect: { type: TypeError, names: name },
  }),
  "wrong rank": (t, name, pick) => ({
    value: { data: t.data, shape: pick % 2 ? t.shape.slice(1) : [1, ...t.shape] },
    expect: { type: TypeError, names: `${name} must have rank` },
  }),
  "shape not an array": (t, name) => ({
    value: { data: t.data, shape: t.shape.join(",") },
    expect: { type: TypeError, names: `${name}.shape` },
  }),
  "not a tensor": (_t, name, pick) => ({
    value: [null, 5, "q", undefined][pick % 4],
    expect: { type: TypeError, names: name },
  }),
  "unknown dtype": (t, name) => ({
    value: { data: t.data, shape: t.shape, dtype: "f8" },
    expect: { type: TypeError, names: `${name}.dtype` },
  }),
  "Uint16Array without dtype": (t, name) => ({
    value: { data: new Uint16Array(t.data.length), shape: t.shape },
    expect: { type: TypeError, names: `${name}.dtype` },
  }),
  "SharedArrayBuffer data": (t) => ({
    value: { data: backed(t.data, "shared"), shape: t.shape },
    expect: { same: true },
  }),
  "data at a byte offset": (t) => ({
    value: { data: backed(t.data, "offset"), shape: t.shape },
    expect: { same: true },
  }),
  "Proxy around the tensor": (t) => ({ value: new Proxy(t, {}), expect: { same: true } }),
  "a shape that changes after its first read": (t) => {
    let reads = 0;
    const shape = new Proxy([...t.shape], {
      get: (target, key, receiver) => {
        if (key === "0" && reads++ > 0) return 1000;
        return Reflect.get(target, key, receiver);
      },
    });
    return { value: { data: t.data, shape }, expect: { same: true } };
  },
  "a getter that throws": () => {
    const own = new CallerError("the caller's getter");
    return {
      value: {
        get data(): never {
          throw own;
        },
        shape: [1],
      },
      expect: { own },
    };
  },
};

// ── Abuses of the options ────────────────────────────────────────────────────────────────

/** Broken options (merged over the base's), and what a call must do with them. */
type OptionAbuse = (b: Base, t: { q: Tensor; k: Tensor; v: Tensor }, pick: number) => {
  options: unknown;
  expect: Expect;
  /** Replaces q when the abuse needs q in a particular buffer. */
  q?: Tensor;
};

const pickOf = <T>(xs: readonly T[], pick: number): T => xs[pick % xs.length];
const range = (names: string) => ({ type: RangeError, names });
const type = (names: string) => ({ type: TypeError, names });

/** Bad values of a number option: [value, the error it gets]. */
const badNumbers = (name: string): [unknown, Expect][] => [
  [NaN, range(name)],
  [-1, range(name)],
  [Infinity, range(name)],
  [1e39, range(name)],
  ["1", type(name)],
  [null, type(name)],
];

const FORWARD_OPTION_ABUSES: Record<string, OptionAbuse> = {
  "bad scale": (_b, _t, pick) => {
    const [scale, expect] = pickOf([...badNumbers("scale"), [1e-320, range("scale")] as [unknown, Expect]], pick);
    return { options: { scale }, expect };
  },
  "bad softcap": (_b, _t, pick) => {
    const [softcap, expect] = pickOf([...badNumbers("softcap"), [1e-46, range("softcap")] as [unknown, Expect]], pick);
    return { options: { softcap }, expect };
  },
  "bad causal": (_b, _t, pick) => ({
    options: { causal: pickOf(["yes", 1, null, "top"], pick) },
    expect: type("causal"),
  }),
  "bad windowSize": (_b, _t, pick) => {
    const value = pickOf([[1.5, 0], [-2, 3], [0], [0, 1, 2], [NaN, 1], "3", 4], pick);
    return { options: { windowSize: value }, expect: Array.isArray(value) ? range("windowSize") : type("windowSize") };
  },
  "bad alibiSlopes": (b, _t, pick) => {
    const H = b.Hkv * b.group;
    const value = pickOf([new Float32Array(b.B * H + 1), new Float64Array(H), Array(H).fill(0.5), "x"], pick);
    return { options: { alibiSlopes: value }, expect: { type: TypeError, names: "alibiSlopes" } };
  },
  "bad seqLensK": (b, _t, pick) => {
    const cases: [unknown, Expect][] = [
      [new Int32Array(b.B + 1), type("seqLensK")],
      [new Int32Array(b.B).fill(b.Nk + 1), range("seqLensK")],
      [new Int32Array(b.B).fill(-1), range("seqLensK")],
      [new Float32Array(b.B), type("seqLensK")],
      [detached(new Float32Array(b.B)), type("seqLensK")],
    ];
    const [value, expect] = pickOf(cases, pick);
    return { options: { causal: false, seqLensK: value }, expect };
  },
  "varlen with one cuSeqlens, or with seqLensK": (b, _t, pick) => {
    const options = pickOf<Record<string, unknown>>([
      { cuSeqlensQ: Int32Array.of(0, b.Nq) },
      { cuSeqlensK: Int32Array.of(0, b.Nk) },
      { cuSeqlensQ: Int32Array.of(0, 1), cuSeqlensK: Int32Array.of(0, 1), seqLensK: Int32Array.of(1) },
    ], pick);
    return { options, expect: { type: TypeError, names: pick % 3 === 2 ? "seqLensK" : "cuSeqlens" } };
  },
  "bad layout": (_b, _t, pick) => ({
    options: { layout: pickOf(["bsdh", "BSHD", 4, null], pick) },
    expect: type("layout"),
  }),
  "bad boolean option": (_b, _t, pick) => {
    const name = pickOf(["returnLse", "stats"], pick);
    return { options: { [name]: pickOf([1, "true", null, {}], pick >> 1) }, expect: type(name) };
  },
  "bad outDtype": (_b, _t, pick) => ({
    options: { outDtype: pickOf(["f8", "F16", 16, null], pick) },
    expect: type("outDtype"),
  }),
  "bad sramBytes": (_b, _t, pick) => {
    const [value, expect] = pickOf<[unknown, Expect]>([
      [0, range("sramBytes")],
      [-5, range("sramBytes")],
      [1.5, range("sramBytes")],
      [2 ** 40, range("sramBytes")],
      [NaN, range("sramBytes")],
      ["4096", type("sramBytes")],
      [64, range("sramBytes")],
    ], pick);
    return { options: { sramBytes: value }, expect };
  },
  "out aliasing q": (_b, t, pick) => {
    const oLength = t.q.data.length / t.q.shape[3] * t.v.shape[3];
    const shared = new Float32Array(t.q.data.length + oLength);
    const at = pick % t.q.data.length;
    shared.set(t.q.data);
    return {
      q: { data: shared.subarray(0, t.q.data.length), shape: t.q.shape },
      options: { out: shared.subarray(at, at + oLength) },
      expect: type("out must not share memory with q"),
    };
  },
  "out aliasing k or v": (_b, t, pick) => {
    const oLength = t.q.data.length / t.q.shape[3] * t.v.shape[3];
    const source = pick % 2 ? t.k.data : t.v.data;
    if (source.length < oLength) return { options: { out: source }, expect: type("out") };
    return {
      options: { out: source.subarray(0, oLength) },
      expect: type(`out must not share memory with ${pick % 2 ? "k" : "v"}`),
    };
  },
  "bad out": (_b, t, pick) => {
    const oLength = t.q.data.length / t.q.shape[3] * t.v.shape[3];
    const value = pickOf([
      new Float32Array(oLength + 1),
      new Float64Array(oLength),
      detached(new Float32Array(oLength)),
      Array(oLength).fill(0),
      new Uint16Array(oLength),
    ], pick);
    return { options: { out: value }, expect: type("out") };
  },
  "bad mask": (b, _t, pick) => {
    const value = pickOf([
      { data: new Float32Array(b.Nk + 1), shape: [b.Nk + 1] },
      { data: new Int8Array(b.Nk), shape: [b.Nk] },
      { data: detached(new Float32Array(b.Nk)), shape: [b.Nk] },
      { data: new Float32Array(b.Nk), shape: [1, 1, 1, 1, b.Nk] },
      "mask",
    ], pick);
    return { options: { mask: value }, expect: type("mask") };
  },
  "unknown option key": (_b, _t, pick) => {
    const key = pickOf(["casual", "Scale", "window", "lse"], pick);
    return { options: { [key]: true }, expect: type(`"${key}"`) };
  },
  "options not an object": (_b, _t, pick) => ({
    options: pickOf([5, "x", [], null, true], pick),
    expect: type("options"),
  }),
  "a getter that throws in the options": (_b, _t, pick) => {
    const own = new CallerError("the caller's getter");
    const key = pickOf(["scale", "causal", "mask", "out", "sramBytes"], pick);
    return {
      options: Object.defineProperty({}, key, {
        enumerable: true,
        get: () => {
          throw own;
        },
      }),
      expect: { own },
    };
  },
};

// ── Calls of each function ───────────────────────────────────────────────────────────────

const NAMES = ["q", "k", "v"] as const;

/** The output bits of a forward-like result (O, and lse when present). */
function bitsEqual(what: string, a: AttentionOutput, b: AttentionOutput): void {
  assertBitwiseEqual(`${what}: O`, a.data, b.data);
  if (a.lse || b.lse) assertBitwiseEqual(`${what}: lse`, a.lse!.data, b.lse!.data);
}

/** Runs a broken call; checks its outcome, then the valid call's bits. */
async function broken(
  what: string,
  call: () => unknown,
  expect: Expect,
  valid: () => unknown,
  before: unknown,
  same: (what: string, a: unknown, b: unknown) => void,
): Promise<void> {
  let outcome: unknown;
  let threw = false;
  try {
    outcome = await call();
  } catch (error) {
    threw = true;
    assertExpected(what, error, expect);
  }
  if (!threw) {
    if (!("same" in expect)) throw new Error(`${what}: expected an error, the call returned`);
    same(`${what}: the result`, outcome, before);
  }
  same(`${what}: the next valid call`, await valid(), before);
}

const abuseArb = <T>(table: Record<string, T>) => fc.constantFrom(...Object.keys(table));

/** The forward's properties, synchronous or on the pool. */
function forwardProperty(run: (q: unknown, k: unknown, v: unknown, o: unknown) => unknown): fc.IAsyncProperty<unknown> {
  return fc.asyncProperty(
    baseArb,
    fc.oneof(
      fc.record({ tensor: fc.constantFrom(0, 1, 2), abuse: abuseArb(TENSOR_ABUSES), pick: fc.nat(1000) }),
      fc.record({ abuse: abuseArb(FORWARD_OPTION_ABUSES), pick: fc.nat(1000) }),
    ),
    async (b, how) => {
      const t = tensorsOf(b);
      const valid = () => run(t.q, t.k, t.v, BASE_OPTIONS);
      const before = await valid();
      const args: unknown[] = [t.q, t.k, t.v, BASE_OPTIONS];
      let expect: Expect;
      if ("tensor" in how) {
        const abused = TENSOR_ABUSES[how.abuse](args[how.tensor] as Tensor, NAMES[how.tensor], how.pick);
        args[how.tensor] = abused.value;
        expect = abused.expect;
      } else {
        const abused = FORWARD_OPTION_ABUSES[how.abuse](b, t, how.pick);
        const o = abused.options;
        args[3] = typeof o === "object" && o !== null && !Array.isArray(o)
          ? Object.defineProperties({ ...BASE_OPTIONS }, Object.getOwnPropertyDescriptors(o))
          : o;
        if (abused.q) args[0] = abused.q;
        expect = abused.expect;
      }
      await broken(
        how.abuse,
        () => run(...args as [unknown, unknown, unknown, unknown]),
        expect,
        valid,
        before,
        (w, x, y) => bitsEqual(w, x as AttentionOutput, y as AttentionOutput),
      );
    },
  );
}

/** KV-cache abuses: options of the caller-owned form, and of createKvCache and a cache object. */
function kvCacheProperty(pool?: AttentionPool): fc.IAsyncProperty<unknown> {
  const kv = pool ? pool.flashAttentionWithKvCache.bind(pool) : flashAttentionWithKvCache;
  return fc.asyncProperty(baseArb, fc.nat(1000), fc.integer({ min: 0, max: 13 }), async (b, pick, kind) => {
    const t = tensorsOf(b);
    const lens = new Int32Array(b.B).fill(Math.max(0, b.Nk - 1));
    const random = rng(b.seed ^ 7);
    const row = (D: number) => randomTensor(random, [b.B, 1, b.Hkv, D]);
    const [kNew, vNew] = [row(b.d), row(b.dv)];
    const options = { causal: true, cacheSeqLens: lens, kNew, vNew, numSplits: 1 };
    const kBits = t.k.data.slice();
    const vBits = t.v.data.slice();
    const valid = async () => {
      const [k, v] = [{ data: kBits.slice(), shape: t.k.shape }, { data: vBits.slice(), shape: t.v.shape }];
      return await kv(t.q, k, v, options);
    };
    const before = await valid();
    const k = { data: kBits.slice(), shape: t.k.shape };
    const v = { data: vBits.slice(), shape: t.v.shape };
    const bad: [Record<string, unknown>, Expect][] = [
      [{ numSplits: pickOf([-1, 1.5, NaN, Infinity], pick) }, range("numSplits")],
      [{ numSplits: "2" }, type("numSplits")],
      [{ cacheSeqLens: new Int32Array(b.B).fill(b.Nk + 1) }, range("cacheSeqLens")],
      [{ cacheSeqLens: new Float32Array(b.B) }, type("cacheSeqLens")],
      [{ cacheSeqLens: new Int32Array(b.B + 1) }, type("cacheSeqLens")],
      [{ cacheSeqLens: new Int32Array(b.B).fill(b.Nk) }, range("overflows the cache")],
      [{ vNew: undefined }, type("kNew and vNew")],
      [{ kNew: { data: kNew.data, shape: [b.B, 1, b.Hkv + 1, b.d] } }, type("kNew")],
      [{ vNew: { data: detached(vNew.data), shape: vNew.shape } }, type("vNew")],
      [{ layout: "bhsd" }, type('"layout"')],
      [{ seqLensK: lens }, type('"seqLensK"')],
    ];
    if (kind < bad.length) {
      const [o, expect] = bad[kind];
      await broken(
        `KV cache ${Object.keys(o)[0]}`,
        () => kv(t.q, k, v, { ...options, ...o }),
        expect,
        valid,
        before,
        (w, x, y) => bitsEqual(w, x as AttentionOutput, y as AttentionOutput),
      );
      // Nothing was written to the caches.
      assertBitwiseEqual("kCache after a failed call", k.data, kBits);
      assertBitwiseEqual("vCache after a failed call", v.data, vBits);
      return;
    }
    // createKvCache and a cache object.
    const create = pool ? pool.createKvCache.bind(pool) : createKvCache;
    const config = { batch: b.B, maxLen: b.Nk, kvHeads: b.Hkv, headDim: b.d, valueDim: b.dv };
    const badConfigs: [unknown, Expect][] = [
      [{ ...config, batch: pickOf([0, -1, 1.5, NaN], pick) }, range("batch")],
      [{ ...config, maxLen: "8" }, type("maxLen")],
      [{ ...config, batch: 2 ** 30, maxLen: 2 ** 30, kvHeads: 2 ** (pick % 30) }, range("fit")],
      [{ ...config, headDim: 257 }, range("head dims")],
      [{ ...config, dtype: "f8" }, type("dtype")],
      [{ ...config, heads: 1 }, type('"heads"')],
      [pickOf([null, 5, "config"], pick), type("must be an object")],
    ];
    if (kind === 11) {
      const [c, expect] = pickOf(badConfigs, pick >> 2);
      let threw = false;
      try {
        create(c as typeof config).free();
      } catch (error) {
        threw = true;
        assertExpected("createKvCache", error, expect);
      }
      if (!threw) throw new Error(`createKvCache(${JSON.stringify(c)}) did not throw`);
      bitsEqual("the next valid call", await valid() as AttentionOutput, before as AttentionOutput);
      return;
    }
    const cache = create(config);
    try {
      const wrong = { data: new Float32Array(b.B * 2 * b.Hkv * (b.d + 1)), shape: [b.B, 2, b.Hkv, b.d + 1] };
      const fill = { data: new Float32Array(b.B * (b.Nk + 1) * b.Hkv * b.d), shape: [b.B, b.Nk + 1, b.Hkv, b.d] };
      const fillV = { data: new Float32Array(b.B * (b.Nk + 1) * b.Hkv * b.dv), shape: [b.B, b.Nk + 1, b.Hkv, b.dv] };
      let threw = false;
      try {
        if (kind === 12) cache.append(wrong, wrong);
        else cache.append(fill, fillV);
      } catch (error) {
        threw = true;
        assertExpected("cache.append", error, kind === 12 ? type("kNew") : range("maxLen"));
      }
      if (!threw) throw new Error("a bad cache.append did not throw");
      if (cache.length(0) !== 0) throw new Error(`a failed append changed the length to ${cache.length(0)}`);
    } finally {
      cache.free();
    }
    let threw = false;
    try {
      await kv(t.q, cache, {});
    } catch (error) {
      threw = true;
      assertExpected("a freed cache", error, type("freed"));
    }
    if (!threw) throw new Error("a freed cache was used");
    bitsEqual("the next valid call", await valid() as AttentionOutput, before as AttentionOutput);
  });
}

/** Backward abuses: out, its lse, dOut, the gradient buffers and the backward's options. */
function backwardProperty(pool?: AttentionPool): fc.IAsyncProperty<unknown> {
  // Typed loosely: the broken calls pass what the types forbid.
  const backward = (pool ? pool.flashAttentionBackward.bind(pool) : flashAttentionBackward) as (
    ...args: unknown[]
  ) => unknown;
  return fc.asyncProperty(baseArb, fc.nat(1000), fc.integer({ min: 0, max: 11 }), async (b, pick, kind) => {
    const t = tensorsOf(b);
    const o = flashAttention(t.q, t.k, t.v, BASE_OPTIONS);
    const dO = randomTensor(rng(b.seed ^ 3), [...o.shape]);
    const valid = () => backward(t.q, t.k, t.v, o, dO, { causal: true });
    const before = await valid();
    const same = (w: string, x: unknown, y: unknown) => {
      for (const name of ["dq", "dk", "dv"] as const) {
        type G = Record<typeof name, Tensor>;
        assertBitwiseEqual(`${w}: ${name}`, (x as G)[name].data, (y as G)[name].data);
      }
    };
    const wrongShape = {
      data: dO.data.subarray(1),
      shape: [dO.shape[0], dO.shape[1], dO.shape[2], dO.shape[3] - 1 || 2],
    };
    const calls: [() => unknown, Expect][] = [
      [() => backward(t.q, t.k, t.v, { data: o.data, shape: o.shape }, dO, {}), type("out.lse")],
      [() => backward(t.q, t.k, t.v, o, wrongShape, {}), type("dOut")],
      [() => backward(t.q, t.k, t.v, o, { data: detached(dO.data), shape: dO.shape }, {}), type("dOut")],
      [
        () => backward(t.q, t.k, t.v, { ...o, lse: { data: o.lse.data.subarray(1), shape: o.lse.shape } }, dO, {}),
        type("out.lse"),
      ],
      [() => backward(t.q, t.k, t.v, o, dO, { out: { dq: t.q.data } }), type("out.dq")],
      [() => backward(t.q, t.k, t.v, o, dO, { out: { dk: new Float32Array(t.k.data.length + 1) } }), type("out.dk")],
      [
        () =>
          backward(t.q, t.k, t.v, o, dO, {
            out: { dv: o.data.length === t.v.data.length ? o.data : new Float64Array(t.v.data.length) },
          }),
        type("out.dv"),
      ],
      [() => backward(t.q, t.k, t.v, o, dO, { out: { dx: new Float32Array(1) } }), type('"dx"')],
      [() => backward(t.q, t.k, t.v, o, dO, { returnLse: true }), type('"returnLse"')],
      [() => backward(t.q, t.k, t.v, o, dO, { scale: pickOf([NaN, -2, 1e39], pick) }), range("scale")],
      [() => backward({ data: new Proxy(t.q.data, {}), shape: t.q.shape }, t.k, t.v, o, dO, {}), type("q.data")],
      [() => backward(t.q, t.k, t.v, o, dO, { sramBytes: pickOf([0, 1.5, 64, 2 ** 40], pick) }), range("sramBytes")],
    ];
    const [call, expect] = calls[kind];
    await broken(`backward abuse ${kind}`, call, expect, valid, before, same);
  });
}

// ── The IO model ─────────────────────────────────────────────────────────────────────────

const IO_FUNCTIONS = { standardAttentionIo, flashAttentionIo, flashAttentionBackwardIo } as Record<string, AnyFn>;

const ioProperty = fc.property(
  fc.constantFrom(...Object.keys(IO_FUNCTIONS)),
  fc.constantFrom("B", "H", "Hkv", "Nq", "Nk", "d", "dv"),
  fc.nat(1000),
  fc.integer({ min: 0, max: 6 }),
  (fn, key, pick, kind) => {
    const shape: Record<string, unknown> = { B: 2, H: 4, Hkv: 2, Nq: 64, Nk: 80, d: 16, dv: 8 };
    const valid = () => IO_FUNCTIONS[fn](shape, { causal: true }) as { totalBytes: number };
    const before = valid().totalBytes;
    const cases: [unknown, unknown, Expect][] = [
      [{ ...shape, [key]: pickOf([NaN, -1, 2.5, Infinity, 2 ** 53], pick) }, {}, range(`shape.${key}`)],
      [{ ...shape, [key]: pickOf(["4", null, {}], pick) }, {}, type(`shape.${key}`)],
      [pickOf([null, 5, "shape"], pick), {}, type("shape")],
      [{ ...shape, heads: 4 }, {}, type('"heads"')],
      [shape, { maskElementBytes: pickOf([2, 3, -1, "1"], pick) }, range("maskElementBytes")],
      [shape, { sramBytes: pickOf([0, 1.5, 2 ** 40], pick) }, range("sramBytes")],
      // Sizes whose counts pass 2^53: the model cannot count them exactly.
      [{ ...shape, B: 2 ** 30, H: 2 ** 14, Hkv: 2 ** 14, Nq: 64, Nk: 2 ** (pick % 12) }, {}, range("exactly")],
    ];
    const [s, o, expect] = cases[kind];
    let threw = false;
    try {
      IO_FUNCTIONS[fn](s, o);
    } catch (error) {
      threw = true;
      assertExpected(`${fn}`, error, expect);
    }
    if (!threw) throw new Error(`${fn}(${JSON.stringify(s)}, ${JSON.stringify(o)}) did not throw`);
    if (valid().totalBytes !== before) throw new Error(`${fn}: the next valid call differs`);
  },
);

// ── The edge handler ─────────────────────────────────────────────────────────────────────

function handlerProperty(handler: Handler): fc.IAsyncProperty<unknown> {
  const json = (body: unknown, type = "application/json") =>
    new Request("http://fuzz/", {
      method: "POST",
      headers: { "content-type": type },
      body: typeof body === "string" || body instanceof Uint8Array ? body as BodyInit : JSON.stringify(body),
    });
  const q = { shape: [1, 2, 1, 2], data: [1, 0, 0.5, -1] };
  const good = { q, k: q, v: q, options: { causal: true }, returnLse: true };
  return fc.asyncProperty(
    fc.oneof(
      fc.uint8Array({ maxLength: 64 }).map((bytes) => ({ kind: "random bytes", request: () => json(bytes) })),
      fc.uint8Array({ maxLength: 64 }).map((bytes) => ({
        kind: "random binary",
        request: () => json(Uint8Array.from([0x46, 0x41, 0x54, 0x4e, 1, 0, ...bytes]), "application/x-flash-attention"),
      })),
      fc.jsonValue({ maxDepth: 3 }).map((value) => ({ kind: "random JSON", request: () => json(value) })),
      fc.record({
        key: fc.constantFrom("q", "k", "v"),
        value: fc.oneof(
          fc.jsonValue({ maxDepth: 2 }),
          fc.constant({ shape: [2 ** 20, 2 ** 20, 2 ** 20, 2 ** 20], data: [1] }),
          fc.constant({ shape: [1, 2, 1, 2], data: ["1", 2, 3, 4] }),
        ),
      }).map(({ key, value }) => ({ kind: `bad ${key}`, request: () => json({ ...good, [key]: value }) })),
      fc.record({ key: fc.string({ maxLength: 8 }), value: fc.jsonValue({ maxDepth: 1 }) }).map(({ key, value }) => ({
        kind: "bad option",
        request: () => json({ ...good, options: { [key]: value } }),
      })),
    ),
    async ({ kind, request }) => {
      const answer = async () => (await (await handler(json(good))).json()) as { data: number[] };
      const before = await answer();
      const response = await handler(request());
      const body = await response.text();
      if (response.status === 200) return; // random JSON that happens to be a valid request
      if (!(response.status >= 400 && response.status < 500)) {
        throw new Error(`${kind}: status ${response.status}: ${body}`);
      }
      const { error, message } = JSON.parse(body);
      if (typeof error !== "string" || typeof message !== "string" || message.length === 0) {
        throw new Error(`${kind}: the answer does not say what was wrong: ${body}`);
      }
      const after = await answer();
      if (JSON.stringify(after) !== JSON.stringify(before)) throw new Error(`${kind}: the next valid request differs`);
    },
  );
}

// ── The command line ─────────────────────────────────────────────────────────────────────

const CLI_FLAGS = [
  "--seq",
  "--seq-k",
  "--batch",
  "--heads",
  "--kv-heads",
  "--dim",
  "--dim-v",
  "--sram",
  "--bytes-per-element",
  "--causal",
  "--lse",
  "--backward",
  "--json",
  "--cases",
  "--sequence",
  "-x",
];
const CLI_VALUES = [
  "0",
  "1",
  "2",
  "8",
  "64",
  "1024",
  "-3",
  "1.5",
  "abc",
  "",
  "99999999999",
  "2147483647",
  "1e3",
  "128k",
];

/**
 * `flash-attention` (src/cli.ts's main) on random command lines: `io` with any flags and values, and
 * `check` or `bench` with at least one flag they do not know (so that they stop before working).
 * Every run ends with 0, 1 (an error, named by its type) or 2 (a usage error), and never throws.
 */
const cliProperty = fc.asyncProperty(
  fc.constantFrom("io", "check", "bench", "nope", "--help", "--version"),
  fc.array(fc.tuple(fc.constantFrom(...CLI_FLAGS), fc.option(fc.constantFrom(...CLI_VALUES))), { maxLength: 6 }),
  async (command, flags) => {
    const { main } = await import("../src/_cli/main.ts");
    const args = [command, ...flags.flatMap(([flag, value]) => (value === null ? [flag] : [flag, value]))];
    if ((command === "check" || command === "bench") && !args.includes("-x")) args.push("--no-such-flag");
    let [stdout, stderr] = ["", ""];
    const code = await main(args, {
      stdout: { write: (text: string) => (stdout += text) },
      stderr: { write: (text: string) => (stderr += text) },
    });
    if (code === 1 && !/(TypeError|RangeError|ShapeError): Cannot compute attention as/.test(stderr)) {
      throw new Error(`${args.join(" ")}: exit 1 without a typed error: ${stderr}`);
    }
    if (code === 2 && !stderr.includes("--help")) throw new Error(`${args.join(" ")}: exit 2 without a usage hint`);
    if (code !== 0 && code !== 1 && code !== 2) throw new Error(`${args.join(" ")}: exit ${code}`);
    if (code === 0 && command === "io" && args.includes("--json") && !args.includes("--help") && !args.includes("-h")) {
      JSON.parse(stdout);
    }
  },
);

// ── init ─────────────────────────────────────────────────────────────────────────────────

/**
 * `init` of a fresh loader (the package's is already loaded, and then ignores its source) with any
 * value: it resolves (options { simd }), or rejects with a TypeError that names the problem in the
 * library's words, or with a CompileError for bytes that are no module; the kernels load after.
 */
const initProperty = fc.asyncProperty(
  fc.oneof(
    fc.anything({ maxDepth: 1 }),
    fc.uint8Array({ maxLength: 24 }).map((bytes) => Uint8Array.from([0, 97, 115, 109, ...bytes])),
    fc.record({ simd: fc.oneof(fc.string({ maxLength: 4 }), fc.constantFrom("auto", "baseline")) }),
  ),
  async (source) => {
    const loader = createLoader();
    try {
      await loader.init(source as never);
    } catch (error) {
      const named = error instanceof TypeError && error.message.startsWith("Cannot initialise @flash/attention as");
      if (!named && !(error instanceof WebAssembly.CompileError)) {
        throw new Error(`init(${fc.stringify(source)}): ${String(error)}`);
      }
    }
    if (loader.loadKernels().headDimMax() !== 256) throw new Error("the kernels did not load after a failed init");
  },
);

// ── The properties ───────────────────────────────────────────────────────────────────────

/** The malformed-call properties; the pool's and the handler's use the given instances. */
export function malformedProperties(pool: AttentionPool, handler: Handler): FuzzProperty[] {
  return [
    {
      name: "flashAttention: malformed calls throw typed errors naming the problem, then the same bits",
      property: forwardProperty((q, k, v, o) => (flashAttention as AnyFn)(q, k, v, o)),
      weight: 2,
    },
    {
      name: "flashAttentionWithKvCache, createKvCache, cache objects: malformed calls throw typed errors",
      property: kvCacheProperty(),
    },
    { name: "flashAttentionBackward: malformed calls throw typed errors", property: backwardProperty() },
    { name: "IO model: malformed shapes and options throw typed errors", property: ioProperty },
    {
      name: "pool: malformed calls reject with the synchronous call's typed errors",
      property: fc.asyncProperty(
        fc.constantFrom("forward", "kv", "backward", "threads"),
        fc.nat(),
        async (which, seed) => {
          const runs = { seed, numRuns: 1 };
          if (which === "forward") {
            await fc.assert(forwardProperty((q, k, v, o) => (pool.flashAttention as AnyFn)(q, k, v, o)), runs);
          } else if (which === "kv") {
            await fc.assert(kvCacheProperty(pool), runs);
          } else if (which === "backward") {
            await fc.assert(backwardProperty(pool), runs);
          } else {
            const threads = pickOf([0, -1, 1.5, 1000, NaN, "2"], seed);
            const error = await createAttentionPool({ threads: threads as number }).then(
              async (p) => {
                await p.close();
                return undefined;
              },
              (e: unknown) => e,
            );
            assertExpected(
              "createAttentionPool",
              error,
              typeof threads === "string" ? type("threads") : range("threads"),
            );
          }
        },
      ),
    },
    { name: "edge handler: malformed requests get 4xx with the error named", property: handlerProperty(handler) },
    {
      name: "command line: any arguments end with 0, 1 (a typed error) or 2 (usage), never a crash",
      property: cliProperty,
    },
    {
      name: "init: any source resolves or rejects with a typed error, and the kernels load after",
      property: initProperty,
    },
  ];
}
