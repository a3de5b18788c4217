// The SRAM arena's bound, checked from outside the kernels: before each call every arena byte past
// `sramBytes` is filled with a marker NaN, and afterwards each of those bytes must still hold it.
// This does not trust the kernels' own peak counter (stats.sramPeakBytes, which the kernels compute
// from the same layout that sized the blocks): a write past M anywhere, in the forward kernel or in
// the split-KV merge, changes a marker. A read past M would read NaN and show in the output, which
// must be NaN-free because the inputs are.

import fc from "fast-check";
import { flashAttention, flashAttentionWithKvCache, type Tensor } from "../mod.ts";
import { referenceAttention } from "../src/reference.ts";
import { runForward } from "../src/_forward.ts";
import { ARENA_MAX_BYTES, HEAD_DIM_MAX } from "../src/_limits.ts";
import { validateAttention } from "../src/_validate.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import {
  assertFlashTolerance,
  assertThrows,
  maxAbsError,
  naiveAttentionF32,
  randomTensor,
  rng,
  test,
} from "./_util.ts";

const kernels = loadKernels();
const MARKER = 0x7fc0_abcd; // a quiet NaN with a payload no arithmetic produces

/** The smallest valid arena for head dims d, dv (Br = 8, Bc = 4), with or without a mask tile. */
function smallestArena(d: number, dv: number, masked: boolean): number {
  return kernels.arenaBytes(8, 4, d, dv, masked);
}

/** Arena words from sramBytes to the compiled maximum: everything a call must leave alone. */
function arenaTail(sramBytes: number): Uint32Array {
  const missing = kernels.hbmPtr() - kernels.memory.buffer.byteLength;
  if (missing > 0) kernels.memory.grow(Math.ceil(missing / 65536));
  return new Uint32Array(
    kernels.memory.buffer,
    kernels.arenaPtr() + sramBytes,
    (kernels.arenaMaxBytes() - sramBytes) / 4,
  );
}

/** Runs `call` with the arena past sramBytes marked, then checks the marks are all still there. */
function withinArena<T>(what: string, sramBytes: number, call: () => T): T {
  arenaTail(sramBytes).fill(MARKER);
  const result = call();
  const tail = arenaTail(sramBytes); // a fresh view: the call may have grown memory
  for (let i = 0; i < tail.length; i++) {
    if (tail[i] !== MARKER) throw new Error(`${what}: arena byte ${sramBytes + 4 * i} was written (M = ${sramBytes})`);
  }
  return result;
}

function assertNoNaN(what: string, data: ArrayLike<number>): void {
  for (let i = 0; i < data.length; i++) {
    if (Number.isNaN(data[i])) throw new Error(`${what}: element ${i} is NaN`);
  }
}

test("flashAttention() never writes the arena past sramBytes, for any shape, option and arena size", () => {
  const arb = fc.record({
    B: fc.integer({ min: 1, max: 2 }),
    Hkv: fc.integer({ min: 1, max: 2 }),
    group: fc.integer({ min: 1, max: 3 }),
    Nq: fc.integer({ min: 1, max: 90 }),
    Nk: fc.integer({ min: 1, max: 90 }),
    d: fc.integer({ min: 1, max: 256 }),
    dv: fc.integer({ min: 1, max: 256 }),
    causal: fc.boolean(),
    masked: fc.boolean(),
    extra: fc.double({ min: 0, max: 1, noNaN: true }), // where M falls between the minimum and 4× it
    seed: fc.integer(),
  });
  fc.assert(
    fc.property(arb, (s) => {
      const random = rng(s.seed);
      const H = s.Hkv * s.group;
      const q = randomTensor(random, [s.B, s.Nq, H, s.d]);
      const k = randomTensor(random, [s.B, s.Nk, s.Hkv, s.d]);
      const v = randomTensor(random, [s.B, s.Nk, s.Hkv, s.dv]);
      const mask = s.masked ? randomTensor(random, [s.Nq, s.Nk]) : undefined;
      const minimum = smallestArena(s.d, s.dv, s.masked);
      const sramBytes = 16 * Math.floor((minimum + s.extra * 3 * minimum) / 16) + 16;
      const where = JSON.stringify({ ...s, sramBytes });
      const o = withinArena(where, sramBytes, () => flashAttention(q, k, v, { causal: s.causal, mask, sramBytes }));
      assertNoNaN(where, o.data);
    }),
    { seed: 31, numRuns: 40 },
  );
});

test("the split-KV merge stays inside sramBytes however many splits it merges", () => {
  // Large heads, the smallest arena and more splits than an arena row could hold lse values for:
  // the merge keeps one split's partial tile at a time, so its footprint does not grow with splits.
  // Tolerance: the flash-attention rule of tests/_util.ts.
  const random = rng(5);
  for (const [d, dv, maxLen, numSplits] of [[256, 256, 9000, 9000], [64, 64, 16000, 4000], [3, 130, 700, 61]]) {
    const q = randomTensor(random, [1, 2, 2, d]);
    const kCache = randomTensor(random, [1, maxLen, 1, d]);
    const vCache = randomTensor(random, [1, maxLen, 1, dv]);
    const sramBytes = smallestArena(d, dv, false);
    const where = JSON.stringify({ d, dv, maxLen, numSplits, sramBytes });
    const o = withinArena(
      where,
      sramBytes,
      () => flashAttentionWithKvCache(q, kCache, vCache, { numSplits, sramBytes, stats: true, returnLse: true }),
    );
    if (!(o.stats!.sramPeakBytes <= sramBytes)) throw new Error(`${where}: peak ${o.stats!.sramPeakBytes}`);
    if (!(o.stats!.read.partial > 0)) throw new Error(`${where}: the keys were not split`);
    const ref = referenceAttention(q, kCache, vCache, { returnLse: true });
    const naive = naiveAttentionF32(q, kCache, vCache);
    assertFlashTolerance(`O of ${where}`, o.data, ref.data, naive.data);
    assertFlashTolerance(`lse of ${where}`, o.lse!.data, ref.lse.data, naive.lse);
  }
});

/** Writes the chunks' partial (O, lse) into HBM in the merge's layout, in `order`, and merges them. */
function mergeInKernel(parts: { o: Float32Array; lse: Float32Array }[], order: number[], dv: number) {
  const rows = parts[0].lse.length;
  const partPtr = kernels.hbmPtr();
  const partLsePtr = partPtr + parts.length * rows * dv * 4;
  const oPtr = partLsePtr + parts.length * rows * 4;
  const lsePtr = oPtr + rows * dv * 4;
  const needed = lsePtr + rows * 4 - kernels.memory.buffer.byteLength;
  if (needed > 0) kernels.memory.grow(Math.ceil(needed / 65536));
  const f32 = (ptr: number, n: number) => new Float32Array(kernels.memory.buffer, ptr, n);
  order.forEach((chunk, s) => {
    f32(partPtr + s * rows * dv * 4, rows * dv).set(parts[chunk].o);
    f32(partLsePtr + s * rows * 4, rows).set(parts[chunk].lse);
  });
  kernels.mergeSplits(partPtr, partLsePtr, parts.length, rows, dv, oPtr, dv, 0, lsePtr, 1, 0, 1, 128 << 10, 0);
  return { o: f32(oPtr, rows * dv).slice(), lse: f32(lsePtr, rows).slice() };
}

test("the kernel's split-KV merge gives the full answer whatever order the splits come in", () => {
  // Partials are flashAttention over key chunks, plus the identity state of a split with no keys.
  // Each order must meet the rule against the reference, and two orders may differ only by the
  // rounding of their f32 merges: the bound is the sum of both allowed errors (triangle inequality).
  const random = rng(8);
  const [Nq, Nk, d, dv] = [37, 300, 24, 19];
  const q = randomTensor(random, [1, Nq, 1, d]);
  const k = randomTensor(random, [1, Nk, 1, d]);
  const v = randomTensor(random, [1, Nk, 1, dv]);
  const ends = [0, 7, 64, 65, 150, 299, 300];
  const parts = ends.slice(1).map((to, c) => {
    const from = ends[c];
    const chunk = (t: Tensor) => ({
      data: t.data.slice(from * t.shape[3], to * t.shape[3]),
      shape: [1, to - from, 1, t.shape[3]],
    });
    const part = flashAttention(q, chunk(k), chunk(v), { returnLse: true });
    return { o: part.data, lse: part.lse.data };
  });
  // a split that saw no key (past a sequence's length): the identity state O = 0, lse = −∞
  parts.push({ o: new Float32Array(Nq * dv), lse: new Float32Array(Nq).fill(-Infinity) });
  const ref = referenceAttention(q, k, v, { returnLse: true });
  const naive = naiveAttentionF32(q, k, v);
  const orders = [[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0], [3, 0, 6, 2, 5, 1, 4], [4, 2, 0, 6, 1, 3, 5]];
  const merged = orders.map((order) => mergeInKernel(parts, order, dv));
  for (const [n, m] of merged.entries()) {
    assertFlashTolerance(`O in order ${orders[n]}`, m.o, ref.data, naive.data);
    assertFlashTolerance(`lse in order ${orders[n]}`, m.lse, ref.lse.data, naive.lse);
    const eO = maxAbsError(m.o, merged[0].o);
    const eLse = maxAbsError(m.lse, merged[0].lse);
    const allowance = (naiveValues: ArrayLike<number>, refValues: ArrayLike<number>) =>
      2 * (2 * maxAbsError(naiveValues, refValues) + 1e-6);
    if (!(eO <= allowance(naive.data, ref.data)) || !(eLse <= allowance(naive.lse, ref.lse.data))) {
      throw new Error(`order ${orders[n]} differs from order ${orders[0]} by ${eO} (O), ${eLse} (lse)`);
    }
  }
});

test("the limits checked before loading the kernels are the kernels' own (head dim, arena maximum)", () => {
  if (HEAD_DIM_MAX !== kernels.headDimMax()) throw new Error(`${HEAD_DIM_MAX} ≠ ${kernels.headDimMax()}`);
  if (ARENA_MAX_BYTES !== kernels.arenaMaxBytes()) throw new Error(`${ARENA_MAX_BYTES} ≠ ${kernels.arenaMaxBytes()}`);
});

test("the kernels trap, rather than loop forever, on an arena too small for one tile (the host rejects it first)", () => {
  const t = { data: new Float32Array(4), shape: [1, 1, 1, 4] };
  const tooSmall = smallestArena(4, 4, false) - 16;
  const problem = validateAttention(t, t, t, {});
  // The trap's message differs by engine ("unreachable" in V8, "Unreachable code …" in JavaScriptCore).
  const config = { sramBytes: tooSmall, Br: 8, Bc: 4, out: undefined };
  assertThrows(
    () => runForward(kernels, problem, { ...config, numSplits: 1 }),
    WebAssembly.RuntimeError,
    "nreachable",
  );
  assertThrows(
    () => kernels.mergeSplits(0, 0, 2, 1, 4, 0, 4, 0, 0, 1, 0, 1, 16, 0),
    WebAssembly.RuntimeError,
    "nreachable",
  );
  flashAttention(t, t, t); // and the module still works
});
