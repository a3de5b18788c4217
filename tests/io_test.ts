// The IO counters. The kernel's measured traffic is checked against counts this file derives on
// its own — the block sizes from the arena layout and the README's rule, the tiles from every
// (query, key) pair and the documented visibility rule — and against src/io.ts's closed forms;
// the traffic scales as the paper's analysis says; standard attention is counted by running
// Algorithm 0 (bench/_standard.ts); the arena never holds more than M.

import fc from "fast-check";
import { standardAttention } from "../bench/_standard.ts";
import {
  chooseSplits,
  flashAttention,
  type FlashAttentionOptions,
  flashAttentionWithKvCache,
  type Mask,
  ShapeError,
} from "../mod.ts";
import {
  type AttentionShape,
  flashAttentionBackwardIo,
  flashAttentionIo,
  type IoOptions,
  standardAttentionIo,
  type TensorBytes,
} from "../src/io.ts";
import { zeroBytes } from "../src/result.ts";
import { referenceAttention } from "../src/reference.ts";
import { runForward } from "../src/_forward.ts";
import { readStats } from "../src/_stats.ts";
import { validateCall } from "../src/_validate.ts";
import { loadKernels } from "../src/wasm/loader.ts";
import { assertFlashTolerance, assertThrows, naiveAttentionF32, randomTensor, rng, test } from "./_util.ts";

const kernels = loadKernels();
const roundUp = (x: number, step: number) => Math.ceil(x / step) * step;
/** Rows the score GEMM computes for a block of n rows: strips of 8, a last strip of at most 4 rows as 4. */
const scoreRows = (n: number) => 8 * Math.floor(n / 8) + (n % 8 === 0 ? 0 : n % 8 <= 4 ? 4 : 8);

// ── The tiling as documented, recomputed here without the kernel or src/io.ts ──────────────────

/**
 * Exact arena bytes of blocks Br × Bc, from the layout in assembly/arena.ts's header: regions in
 * floats, each starting 16-byte aligned (Br is a multiple of 8, so only Kj needs rounding), dv
 * padded to dvP = roundUp(dv, 8) for the value GEMM.
 */
function arenaFootprintBytes(Br: number, Bc: number, d: number, dv: number, masked: boolean): number {
  const dvP = roundUp(dv, 8);
  const floats = d * Br + // Qiᵀ
    roundUp(Bc * d, 4) + // Kj
    Bc * dvP + // Vj
    Bc * Br + // Sᵀ, P in place
    (masked ? Bc * Br : 0) + // mask tile
    Br * dvP + // O
    7 * Br; // m, l, alpha, slope, first, end, pos
  return 4 * floats;
}

/**
 * The README's block-size rule by exhaustive search: Bc is the largest multiple of 4 up to 64
 * that leaves Br ≥ Bc, Br the largest multiple of 8 up to 16384 whose footprint fits in M.
 * Undefined when not even 8 × 4 fits.
 */
function documentedBlocks(sramBytes: number, d: number, dv: number, masked: boolean) {
  for (let Bc = 64; Bc >= 4; Bc -= 4) {
    for (let Br = 16384; Br >= Bc; Br -= 8) {
      if (arenaFootprintBytes(Br, Bc, d, dv, masked) <= sramBytes) return { Br, Bc };
    }
  }
  return undefined;
}

// ── Random problems ─────────────────────────────────────────────────────────────────────────────

interface IoCase {
  B: number;
  H: number;
  Hkv: number;
  Nq: number;
  Nk: number;
  d: number;
  dv: number;
  sramBytes: number;
  causal: false | "bottom-right" | "top-left";
  window: [number, number] | undefined;
  returnLse: boolean;
  alibi: boolean;
  mask: "none" | "f32" | "u8";
  /** Keys per batch entry (the seqLensK option), or undefined. */
  seqLensK: number[] | undefined;
  /** Varlen packing: queries and keys per packed sequence (cuSeqlensQ/K), or undefined. */
  varlen: { Nq: number[]; Nk: number[] } | undefined;
  seed: number;
}

/** A fraction in [0, 1], the ends often: empty and full sequences. */
const fraction = fc.oneof(fc.constant(0), fc.constant(1), fc.double({ min: 0, max: 1, noNaN: true }));

/** Lengths f·N per sequence; the last one N if all would be 0 (a packed tensor has rows). */
function packed(fractions: number[], N: number): number[] {
  const lengths = fractions.map((f) => Math.round(f * N));
  if (!lengths.some((n) => n > 0)) lengths[lengths.length - 1] = N;
  return lengths;
}

/** Head dims that are multiples of 8, up to maxD. */
const headDimOf8 = (maxD: number) => fc.integer({ min: 1, max: Math.floor(maxD / 8) }).map((n) => 8 * n);

/**
 * Random problems with Nq, Nk ≤ maxN and d, dv ≤ maxD; with `lengths`, a third of them give each
 * batch entry its own key length (seqLensK) and a third pack sequences of their own lengths
 * (varlen, without a mask, which varlen does not take).
 */
const cases = (maxN: number, maxD: number, lengths = false) =>
  fc.record({
    B: fc.integer({ min: 1, max: 2 }),
    Hkv: fc.integer({ min: 1, max: 3 }),
    group: fc.integer({ min: 1, max: 3 }),
    // A third of the calls have at most 4 query positions and a third of the head dims are
    // multiples of 8: thin query blocks, which stream only the keys they see, come up often.
    Nq: fc.oneof(fc.integer({ min: 1, max: maxN }), fc.integer({ min: 1, max: maxN }), fc.integer({ min: 1, max: 4 })),
    Nk: fc.integer({ min: 1, max: maxN }),
    d: fc.oneof(fc.integer({ min: 1, max: maxD }), fc.integer({ min: 1, max: maxD }), headDimOf8(maxD)),
    dv: fc.oneof(fc.integer({ min: 1, max: maxD }), fc.integer({ min: 1, max: maxD }), headDimOf8(maxD)),
    arena: fc.double({ min: 0, max: 1, noNaN: true }),
    causal: fc.constantFrom(false as const, "bottom-right" as const, "top-left" as const),
    window: fc.option(fc.tuple(fc.integer({ min: -1, max: 60 }), fc.integer({ min: -1, max: 60 })), { nil: undefined }),
    returnLse: fc.boolean(),
    alibi: fc.boolean(),
    mask: fc.constantFrom("none" as const, "f32" as const, "u8" as const),
    lengths: lengths ? fc.constantFrom("dense" as const, "seqLensK" as const, "varlen" as const) : fc.constant("dense"),
    fractions: fc.array(fc.tuple(fraction, fraction), { minLength: 2, maxLength: 2 }),
    seed: fc.integer(),
  }).map((r): IoCase => {
    const { lengths, fractions, ...rest } = r;
    const entries = fractions.slice(0, r.B);
    const mask = lengths === "varlen" ? "none" : r.mask;
    const smallest = arenaFootprintBytes(8, 4, r.d, r.dv, mask !== "none");
    return {
      ...rest,
      mask,
      seqLensK: lengths === "seqLensK" ? entries.map(([, f]) => Math.round(f * r.Nk)) : undefined,
      varlen: lengths === "varlen"
        ? { Nq: packed(entries.map(([f]) => f), r.Nq), Nk: packed(entries.map(([, f]) => f), r.Nk) }
        : undefined,
      H: r.Hkv * r.group,
      // Squared: most arenas are small, where tiles are many and partial.
      sramBytes: Math.floor(smallest + r.arena ** 2 * (256 * 1024 - smallest)),
    };
  });
const caseArbitrary = cases(200, 96);
const lengthsCaseArbitrary = cases(200, 96, true);

/** Every sequence's (Nq, Nk): the batch entries, or the packed sequences of a varlen case. */
function sequencesOf(c: IoCase): { Nq: number; Nk: number }[] {
  if (c.varlen) return c.varlen.Nq.map((Nq, b) => ({ Nq, Nk: c.varlen!.Nk[b] }));
  return Array.from({ length: c.B }, (_, b) => ({ Nq: c.Nq, Nk: c.seqLensK ? c.seqLensK[b] : c.Nk }));
}

const cumulative = (lengths: number[]) => Int32Array.from([0, ...lengths], ((sum) => (x) => (sum += x))(0));

/** A mask that never blocks a whole tile: finite biases, or booleans that are all "attend". */
/** An [Nq, Nk] mask: finite biases in [−0.5, 0.5), or booleans of which about a quarter block. */
function randomMask(kind: "f32" | "u8", Nq: number, Nk: number, random: () => number): Mask {
  return kind === "u8"
    ? { data: Uint8Array.from({ length: Nq * Nk }, () => random() < 0.75 ? 1 : 0), shape: [Nq, Nk] }
    : { data: Float32Array.from({ length: Nq * Nk }, () => random() - 0.5), shape: [Nq, Nk] };
}

function openMask(c: IoCase): Mask | undefined {
  if (c.mask === "none") return undefined;
  if (c.mask === "u8") return { data: new Uint8Array(c.Nq * c.Nk).fill(1), shape: [c.Nq, c.Nk] };
  return randomMask("f32", c.Nq, c.Nk, rng(c.seed ^ 0x55));
}

const maskElementBytes = (c: IoCase) => c.mask === "none" ? 0 : c.mask === "u8" ? 1 : 4;

function run(c: IoCase) {
  const random = rng(c.seed);
  const { B, Nq, Nk } = shapeOf(c);
  const rows = (N: number) => c.varlen ? [N] : [B, N];
  const q = randomTensor(random, [...rows(Nq), c.H, c.d]);
  const k = randomTensor(random, [...rows(Nk), c.Hkv, c.d]);
  const v = randomTensor(random, [...rows(Nk), c.Hkv, c.dv]);
  const options: FlashAttentionOptions = {
    ...lengthOptions(c),
    sramBytes: c.sramBytes,
    returnLse: c.returnLse,
    causal: c.causal,
    windowSize: c.window,
    alibiSlopes: c.alibi ? Float32Array.from({ length: c.H }, (_, h) => 0.1 * (h + 1)) : undefined,
    mask: openMask(c),
  };
  return { q, k, v, options };
}

/** The shape as flashAttentionIo takes it: for varlen, B sequences and the packed totals. */
function shapeOf(c: IoCase) {
  const total = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const [Nq, Nk] = c.varlen ? [total(c.varlen.Nq), total(c.varlen.Nk)] : [c.Nq, c.Nk];
  return { B: c.B, H: c.H, Hkv: c.Hkv, Nq, Nk, d: c.d, dv: c.dv };
}

/** seqLensK or cuSeqlensQ/cuSeqlensK, as both flashAttention and flashAttentionIo take them. */
function lengthOptions(c: IoCase) {
  if (c.seqLensK) return { seqLensK: Int32Array.from(c.seqLensK) };
  if (c.varlen) return { cuSeqlensQ: cumulative(c.varlen.Nq), cuSeqlensK: cumulative(c.varlen.Nk) };
  return {};
}

function closedForm(c: IoCase, numSplits?: number) {
  return flashAttentionIo(shapeOf(c), {
    ...lengthOptions(c),
    ...(numSplits === undefined ? {} : { numSplits }),
    sramBytes: c.sramBytes,
    returnLse: c.returnLse,
    causal: c.causal,
    windowSize: c.window,
    maskElementBytes: maskElementBytes(c),
    alibi: c.alibi,
  });
}

/**
 * The visibility rule as FlashAttentionOptions documents it: query position i sees key j iff
 * i + offset − left ≤ j ≤ i + offset + right, a bound of −1 unbounded, causal meaning right = 0,
 * offset = Nk − Nq (bottom-right) or 0 (top-left, only with causal: "top-left"), with the Nq and
 * Nk of the query's own sequence (seqLensK, varlen).
 */
function sees(c: IoCase, Nq: number, Nk: number, i: number, j: number): boolean {
  const [left, windowRight] = c.window ?? [-1, -1];
  const right = c.causal ? 0 : windowRight;
  const offset = c.causal === "top-left" ? 0 : Nk - Nq;
  return (left < 0 || j >= i + offset - left) && (right < 0 || j <= i + offset + right);
}

/**
 * The traffic of the documented algorithm, counted by brute force: for every (sequence, K/V head,
 * query block of Br virtual rows, key block of Bc keys of that sequence's own Nq and Nk), the tile
 * is computed iff some (row, key)
 * pair in it is visible (row r is position ⌊r/g⌋ of a GQA group of g heads); a computed tile reads
 * its K, V (and mask) tile — except in a thin query block (at most 4 rows, d a multiple of 4 and dv
 * of 8), which reads the K and V rows of only the keys some row of the block sees; each query
 * block reads Q (and slopes) and writes O (and lse) once.
 * Also the flops' bounds: at least 2·(d + dv) per visible pair (one score and one value product),
 * at most the padded tile (score GEMM rows in strips of 8, a last strip of at most 4 rows computed
 * as 4, and keys padded to 4; value GEMM rows padded to 4 and dv to 8; a thin block: 1, 2 or 4
 * rows (3 as 4) over the keys it sees, unpadded), which is exactly what a tile costs when every row sees every key.
 */
function bruteForceIo(c: IoCase, Br: number, Bc: number, numSplits = 1) {
  const g = c.H / c.Hkv;
  const maskBytes = maskElementBytes(c);
  const read = zeroBytes();
  const written = zeroBytes();
  let [Tr, Tc, tilesComputed, tilesSkipped, usefulFlops, paddedFlops] = [0, 0, 0, 0, 0, 0];
  for (const { Nq, Nk } of sequencesOf(c)) {
    const rows = Nq * g;
    // Tr and Tc: the most blocks of any sequence that has queries.
    if (Nq > 0) [Tr, Tc] = [Math.max(Tr, Math.ceil(rows / Br)), Math.max(Tc, Math.ceil(Nk / Bc))];
    // Split-KV as IoOptions.numSplits documents it: s = min(numSplits, ⌈Nk/Bc⌉) and, if s > 1,
    // ranges of ⌈Nk/(s·Bc)⌉ whole key blocks, each a kernel call writing partials.
    const splits = Math.min(numSplits, Math.ceil(Nk / Bc));
    const blocksPerRange = splits > 1 ? Math.ceil(Nk / (splits * Bc)) : Math.max(1, Math.ceil(Nk / Bc));
    const ranges = Math.max(1, Math.ceil(Nk / (blocksPerRange * Bc)));
    for (let kvh = 0; kvh < c.Hkv; kvh++) {
      for (let range = 0; range < ranges; range++) {
        const [begin, stop] = [range * blocksPerRange * Bc, Math.min(Nk, (range + 1) * blocksPerRange * Bc)];
        for (let i0 = 0; i0 < rows; i0 += Br) {
          const rowsHere = Math.min(Br, rows - i0);
          read.q += 4 * rowsHere * c.d;
          if (c.alibi) read.slopes += 4 * rowsHere;
          if (splits > 1) {
            written.partial += 4 * rowsHere * (c.dv + 1);
          } else {
            written.o += 4 * rowsHere * c.dv;
            if (c.returnLse) written.lse += 4 * rowsHere;
          }
          const thin = rowsHere <= 4 && c.d % 4 === 0 && c.dv % 8 === 0;
          for (let j0 = begin; j0 < stop; j0 += Bc) {
            const cols = Math.min(Bc, Nk - j0);
            let pairs = 0;
            let keysSeen = 0; // keys of the tile that some row of the block sees
            for (let j = j0; j < j0 + cols; j++) {
              let seen = false;
              for (let r = i0; r < i0 + rowsHere; r++) {
                if (sees(c, Nq, Nk, Math.floor(r / g), j)) [pairs, seen] = [pairs + 1, true];
              }
              if (seen) keysSeen++;
            }
            if (pairs === 0) {
              tilesSkipped++;
              continue;
            }
            tilesComputed++;
            read.k += 4 * (thin ? keysSeen : cols) * c.d;
            read.v += 4 * (thin ? keysSeen : cols) * c.dv;
            read.mask += maskBytes * rowsHere * cols;
            usefulFlops += 2 * pairs * (c.d + c.dv);
            paddedFlops += thin
              ? 2 * (rowsHere <= 2 ? rowsHere : 4) * keysSeen * (c.d + c.dv)
              : 2 * scoreRows(rowsHere) * roundUp(cols, 4) * c.d + 2 * roundUp(rowsHere, 4) * cols * roundUp(c.dv, 8);
          }
        }
      }
      if (splits > 1) {
        // The merge: every range's partials in, the output out.
        read.partial += 4 * ranges * rows * (c.dv + 1);
        written.o += 4 * rows * c.dv;
        if (c.returnLse) written.lse += 4 * rows;
      }
    }
  }
  return { read, written, Br, Bc, Tr, Tc, tilesComputed, tilesSkipped, usefulFlops, paddedFlops };
}

type Counts = { read: TensorBytes; written: TensorBytes; [key: string]: unknown };

/** Throws unless every per-tensor byte count, the tiling and the tile counts agree. */
function assertSameIo(where: string, names: [string, string], a: Counts, b: Counts): void {
  const differ = (what: string, x: unknown, y: unknown) => {
    throw new Error(`${where}: ${what} is ${x} by ${names[0]}, ${y} by ${names[1]}`);
  };
  for (const side of ["read", "written"] as const) {
    for (const tensor of Object.keys(zeroBytes()) as (keyof TensorBytes)[]) {
      if (a[side][tensor] !== b[side][tensor]) differ(`${side}.${tensor}`, a[side][tensor], b[side][tensor]);
    }
  }
  for (const key of ["Br", "Bc", "Tr", "Tc", "tilesComputed", "tilesSkipped"]) {
    if (a[key] !== b[key]) differ(key, a[key], b[key]);
  }
}

// ── Measured traffic against independent counts ────────────────────────────────────────────────

test("the measured HBM traffic equals a brute-force count over every (query, key) pair, and flashAttentionIo", () => {
  fc.assert(
    fc.property(lengthsCaseArbitrary, (c) => {
      const blocks = documentedBlocks(c.sramBytes, c.d, c.dv, c.mask !== "none");
      if (!blocks) throw new Error(`no blocks fit ${JSON.stringify(c)}`);
      const brute = bruteForceIo(c, blocks.Br, blocks.Bc);
      const { q, k, v, options } = run(c);
      const stats = flashAttention(q, k, v, { ...options, stats: true }).stats!;
      const where = JSON.stringify(c);
      assertSameIo(where, ["the kernel", "brute force"], { ...stats }, brute);
      assertSameIo(where, ["flashAttentionIo", "brute force"], { ...closedForm(c) }, brute);
      const sum = (t: TensorBytes) => Object.values(t).reduce((x, y) => x + y, 0);
      if (stats.totalBytes !== sum(brute.read) + sum(brute.written)) throw new Error(`${where}: totalBytes`);
      // Flops: exact when nothing restricts visibility; otherwise between the two bounds.
      const unrestricted = !c.causal && (c.window === undefined || (c.window[0] < 0 && c.window[1] < 0));
      if (
        unrestricted
          ? stats.flops !== brute.paddedFlops
          : !(stats.flops >= brute.usefulFlops && stats.flops <= brute.paddedFlops)
      ) {
        throw new Error(`${where}: flops ${stats.flops}, bounds [${brute.usefulFlops}, ${brute.paddedFlops}]`);
      }
    }),
    { seed: 0x10, numRuns: 120, includeErrorInReport: true },
  );
});

test("KV-cache calls with split-KV and appended keys move exactly the brute-force count's bytes, and flashAttentionIo's", () => {
  const kvCases = lengthsCaseArbitrary.filter((c) => c.varlen === undefined);
  fc.assert(
    fc.property(kvCases, fc.integer({ min: 1, max: 9 }), fc.integer({ min: 0, max: 3 }), (c, numSplits, appended) => {
      const { q, k, v, options } = run(c);
      // Entry b attends to its cached keys plus the appended ones: c's key length in all.
      const lengths = sequencesOf(c).map((s) => s.Nk);
      const Nnew = Math.min(appended, ...lengths);
      const cacheSeqLens = Int32Array.from(lengths, (n) => n - Nnew);
      const random = rng(c.seed ^ 0x99);
      const kNew = Nnew > 0 ? randomTensor(random, [c.B, Nnew, c.Hkv, c.d]) : undefined;
      const vNew = Nnew > 0 ? randomTensor(random, [c.B, Nnew, c.Hkv, c.dv]) : undefined;
      // The KV-cache function takes cacheSeqLens, not seqLensK.
      const { seqLensK: _, ...attention } = options;
      const stats = flashAttentionWithKvCache(q, k, v, {
        ...attention,
        cacheSeqLens,
        kNew,
        vNew,
        numSplits,
        stats: true,
      }).stats!;
      const blocks = documentedBlocks(c.sramBytes, c.d, c.dv, c.mask !== "none")!;
      const brute = bruteForceIo(c, blocks.Br, blocks.Bc, numSplits);
      // seqLensK = cacheSeqLens: a cache is keys of their own length per entry.
      const closed = closedForm(c, numSplits);
      const where = `numSplits ${numSplits}, Nnew ${Nnew}, ${JSON.stringify(c)}`;
      assertSameIo(where, ["the kernel", "brute force"], { ...stats }, brute);
      assertSameIo(where, ["flashAttentionIo", "brute force"], { ...closed }, brute);
    }),
    { seed: 0x16, numRuns: 100, includeErrorInReport: true },
  );
});

test("split-KV falls back to one split exactly when a call's partials would pass the 16 MiB scratch", () => {
  // One sequence placed whole: rows = Nq·H/Hkv = 2048, dv = 255, so s splits need
  // 4·s·2048·256 + 128 bytes: 7 fit in 16 MiB, 8 do not.
  const [Nq, maxLen, d] = [2048, 256, 255];
  const random = rng(21);
  const q = randomTensor(random, [1, Nq, 1, d]);
  const k = randomTensor(random, [1, maxLen, 1, d]);
  const v = randomTensor(random, [1, maxLen, 1, d]);
  for (const numSplits of [7, 8]) {
    const fits = 4 * numSplits * Nq * (d + 1) + 128 <= 16 * 1024 * 1024;
    const stats = flashAttentionWithKvCache(q, k, v, { numSplits, stats: true }).stats!;
    if (Math.ceil(maxLen / stats.Bc) < numSplits) throw new Error(`only ${maxLen / stats.Bc} key blocks to split`);
    if (fits !== stats.written.partial > 0) {
      throw new Error(`numSplits ${numSplits}: partials ${stats.written.partial}`);
    }
    const shape = { B: 1, H: 1, Nq, Nk: maxLen, d };
    const modelled = flashAttentionIo(shape, { numSplits: fits ? numSplits : 1 });
    if (modelled.totalBytes !== stats.totalBytes) throw new Error(`numSplits ${numSplits}: ${stats.totalBytes} B`);
  }
});

test("streaming heads and chunks through HBM moves exactly the brute-force count's bytes too, split or not", () => {
  fc.assert(
    fc.property(lengthsCaseArbitrary, fc.integer({ min: 1, max: 9 }), (c, numSplits) => {
      const { q, k, v, options } = run(c);
      const problem = validateCall(q, k, v, { ...options });
      const blocks = { sramBytes: c.sramBytes, ...documentedBlocks(c.sramBytes, c.d, c.dv, c.mask !== "none")! };
      // runForward trusts its blocks (the kernel would not return on an arena too small for them).
      const packed = kernels.blockSizes(c.sramBytes, c.d, c.dv, c.mask !== "none");
      if (packed !== blocks.Br * 65536 + blocks.Bc) {
        throw new Error(`${JSON.stringify(c)}: blocks ${packed >>> 16} × ${packed & 0xffff}`);
      }
      kernels.resetCounters();
      runForward(kernels, problem, { ...blocks, out: undefined, numSplits, slabBudgetBytes: 0 });
      const brute = bruteForceIo(c, blocks.Br, blocks.Bc, numSplits);
      assertSameIo(`streamed, numSplits ${numSplits}, ${JSON.stringify(c)}`, ["the kernel", "brute force"], {
        ...readStats(kernels, problem, blocks),
      }, brute);
    }),
    { seed: 0x11, numRuns: 80, includeErrorInReport: true },
  );
});

test("Br and Bc follow the documented rule from the exact arena footprint, which never exceeds M", () => {
  // Arenas log-uniform from below the smallest blocks to the 8 MiB maximum, head dims up to 256.
  const blockCase = fc.record({
    d: fc.integer({ min: 1, max: 256 }),
    dv: fc.integer({ min: 1, max: 256 }),
    masked: fc.boolean(),
    log2M: fc.double({ min: 10, max: 23, noNaN: true }),
  });
  const check = (d: number, dv: number, masked: boolean, sramBytes: number) => {
    const q = randomTensor(rng(d), [1, 3, 1, d]);
    const v = randomTensor(rng(dv), [1, 3, 1, dv]);
    const mask = masked ? { data: new Uint8Array(9).fill(1), shape: [3, 3] } : undefined;
    const call = () => flashAttention(q, q, v, { sramBytes, mask, stats: true }).stats!;
    const expected = documentedBlocks(sramBytes, d, dv, masked);
    const where = `d = ${d}, dv = ${dv}, masked = ${masked}, M = ${sramBytes}`;
    if (!expected) {
      assertThrows(call, RangeError, "too small");
      return;
    }
    const stats = call();
    if (stats.Br !== expected.Br || stats.Bc !== expected.Bc) {
      throw new Error(`${where}: kernel Br × Bc = ${stats.Br} × ${stats.Bc}, rule ${expected.Br} × ${expected.Bc}`);
    }
    const footprint = arenaFootprintBytes(expected.Br, expected.Bc, d, dv, masked);
    if (stats.sramPeakBytes !== footprint || footprint > sramBytes) {
      throw new Error(`${where}: peak ${stats.sramPeakBytes}, documented footprint ${footprint}, M ${sramBytes}`);
    }
  };
  fc.assert(
    fc.property(blockCase, ({ d, dv, masked, log2M }) => check(d, dv, masked, Math.floor(2 ** log2M))),
    { seed: 0x13, numRuns: 150, includeErrorInReport: true },
  );
  // The edges: the README's example, the Br cap of 16384, the smallest arena and one byte less.
  const readme = documentedBlocks(128 * 1024, 64, 64, false)!;
  if (readme.Br !== 120 || readme.Bc !== 64) throw new Error(`README example: ${readme.Br} × ${readme.Bc}`);
  check(64, 64, false, 128 * 1024);
  check(1, 1, false, 8 << 20);
  if (documentedBlocks(8 << 20, 1, 1, false)!.Br !== 16384) throw new Error("Br is not capped at 16384");
  for (const masked of [false, true]) {
    const smallest = arenaFootprintBytes(8, 4, 256, 256, masked);
    check(256, 256, masked, smallest);
    check(256, 256, masked, smallest - 1);
  }
});

test("a mask that blocks whole tiles skips them: K and V are not read for those tiles", () => {
  const [Nq, Nk, d] = [64, 256, 32];
  const sramBytes = 32 * 1024;
  const random = rng(3);
  const q = randomTensor(random, [1, Nq, 1, d]);
  const k = randomTensor(random, [1, Nk, 1, d]);
  const v = randomTensor(random, [1, Nk, 1, d]);
  const { Br, Bc } = documentedBlocks(sramBytes, d, d, true)!;
  const [Tr, Tc] = [Math.ceil(Nq / Br), Math.ceil(Nk / Bc)];
  // Only keys of the first block are open.
  const mask = { data: Uint8Array.from({ length: Nq * Nk }, (_, i) => (i % Nk) < Bc ? 1 : 0), shape: [Nq, Nk] };
  const stats = flashAttention(q, k, v, { mask, sramBytes, stats: true }).stats!;
  if (stats.read.k !== Tr * Bc * d * 4) throw new Error(`K read ${stats.read.k}, expected ${Tr * Bc * d * 4}`);
  if (stats.tilesComputed !== Tr) throw new Error(`tiles computed ${stats.tilesComputed}`);
  if (stats.tilesSkipped !== Tr * (Tc - 1)) throw new Error(`tiles skipped ${stats.tilesSkipped}`);
  // Every mask tile is still read once, to find out that it is blocked.
  if (stats.read.mask !== Nq * Nk) throw new Error(`mask read ${stats.read.mask}, expected ${Nq * Nk}`);
});

// ── Scaling ────────────────────────────────────────────────────────────────────────────────────

test("at fixed N and d, measured K/V traffic falls as 1/M within the tiling's rounding, until Q fits at once", () => {
  const [N, d] = [1024, 64];
  const random = rng(6);
  const [q, k, v] = [0, 1, 2].map(() => randomTensor(random, [1, N, 1, d]));
  let previous = Infinity;
  let reachedOneBlock = false;
  let sawBcTarget = 0;
  for (let sramBytes = 16 * 1024; sramBytes <= 8 * 1024 * 1024; sramBytes *= 2) {
    const stats = flashAttention(q, k, v, { sramBytes, stats: true }).stats!;
    const { Br, Bc, Tr } = stats;
    const kv = stats.read.k + stats.read.v;
    const where = `M = ${sramBytes} (Br = ${Br}, Bc = ${Bc})`;
    // K and V are read once per query block, and there are Tr = ⌈N/Br⌉ of them.
    if (Tr !== Math.ceil(N / Br) || kv !== 4 * Tr * N * (d + d)) throw new Error(`${where}: K/V bytes ${kv}`);
    // The arena's footprint is c0 + c1·Br floats for this Bc (arenaFootprintBytes): c1 per query
    // row (Qiᵀ, S, O and 7 row vectors), c0 for the K and V tiles. Br is the largest multiple of
    // 8 that fits (capped at 16384), so with BrFit = (M/4 − c0)/c1 it lies in (BrFit − 8, BrFit],
    // and Tr = ⌈N/Br⌉ lies in [N/BrFit, N/(BrFit − 8) + 1): the K/V traffic is 8·N²·d/BrFit —
    // ∝ 1/(M − 4·c0) while Bc stays at 64 — up to those two roundings.
    const c1 = d + Bc + roundUp(d, 8) + 7;
    const c0 = roundUp(Bc * d, 4) + Bc * roundUp(d, 8);
    const BrFit = Math.min(16384, (sramBytes / 4 - c0) / c1);
    if (!(Br > BrFit - 8 && Br <= BrFit)) throw new Error(`${where}: Br outside (${BrFit - 8}, ${BrFit}]`);
    const [low, high] = [(8 * N * N * d) / BrFit, 8 * N * d * (N / (BrFit - 8) + 1)];
    if (Tr > 1 && !(kv >= low && kv < high)) throw new Error(`${where}: K/V bytes ${kv} outside [${low}, ${high})`);
    if (Bc === 64) sawBcTarget++;
    if (!(stats.totalBytes <= previous)) throw new Error(`${where}: traffic grew to ${stats.totalBytes}`);
    if (BrFit >= N) {
      // Q fits at once: the minimum, every tensor moved once.
      const once = 4 * N * (d + d + d + d);
      if (Tr !== 1 || stats.totalBytes !== once) throw new Error(`${where}: ${stats.totalBytes} ≠ ${once}`);
      reachedOneBlock = true;
    }
    previous = stats.totalBytes;
  }
  if (!reachedOneBlock) throw new Error("the sweep never reached Tr = 1");
  if (sawBcTarget < 4) throw new Error(`only ${sawBcTarget} arenas in the 1/M regime (Bc = 64)`);
});

test("at fixed M traffic grows as N² for both; standard's constant is larger; measured ratios match the closed forms", () => {
  const d = 64;
  const sramBytes = 64 * 1024;
  const random = rng(4);
  let previous: { flash: number; standard: number; Tr: number } | undefined;
  for (const N of [256, 512, 1024]) {
    const [q, k, v] = [0, 1, 2].map(() => randomTensor(random, [1, N, 1, d]));
    const flash = flashAttention(q, k, v, { sramBytes, stats: true }).stats!;
    const standard = standardAttention(q, k, v).io;
    const shape = { B: 1, H: 1, Nq: N, Nk: N, d };
    const closedFlash = flashAttentionIo(shape, { sramBytes }).totalBytes;
    const closedStandard = standardAttentionIo(shape).totalBytes;
    if (flash.totalBytes !== closedFlash || standard.totalBytes !== closedStandard) {
      throw new Error(`N = ${N}: measured ≠ closed form`);
    }
    if (standard.totalBytes / flash.totalBytes !== closedStandard / closedFlash) throw new Error(`N = ${N}: ratio`);
    // N² coefficients: standard moves S and P twice each, 16 bytes per (i, j); flash reads K and
    // V once per query block, 4·2d/Br bytes per (i, j). Larger for standard iff Br > d/2.
    if (!(flash.Br > d / 2 && standard.totalBytes > flash.totalBytes)) throw new Error(`N = ${N}: not larger`);
    if (previous) {
      // Doubling N. Standard moves 16·N·(N + d) bytes, so it grows exactly 4 − 2d/(N + d) (up
      // to the rounding of two divisions, < 1e-12). Flash moves 8·N·d·(1 + Tr) with Tr = ⌈N/Br⌉;
      // doubling N gives ⌈2N/Br⌉ ∈ {2Tr − 1, 2Tr}, so it grows by 2(1 + ⌈2N/Br⌉)/(1 + Tr) ∈
      // [4Tr/(1 + Tr), 2(1 + 2Tr)/(1 + Tr)]: both tend to 4, the N² law.
      const standardGrowth = standard.totalBytes / previous.standard;
      if (Math.abs(standardGrowth - (4 - (2 * d) / (N / 2 + d))) > 1e-12) {
        throw new Error(`standard grew ${standardGrowth}× from N/2 to N = ${N}`);
      }
      const flashGrowth = flash.totalBytes / previous.flash;
      const Tr = previous.Tr;
      if (!(flashGrowth >= (4 * Tr) / (1 + Tr) && flashGrowth <= (2 * (1 + 2 * Tr)) / (1 + Tr))) {
        throw new Error(`flash grew ${flashGrowth}× from N/2 to N = ${N} (Tr was ${Tr})`);
      }
    }
    previous = { flash: flash.totalBytes, standard: standard.totalBytes, Tr: flash.Tr };
  }
});

// ── Standard attention: Algorithm 0, run and counted ──────────────────────────────────────────

test("Algorithm 0 run with counted HBM accesses computes attention, moves standardAttentionIo's bytes, and the measured standard/flash ratio is the closed forms'", () => {
  fc.assert(
    fc.property(cases(40, 24), (c) => {
      const { q, k, v, options } = run(c);
      const where = JSON.stringify(c);
      // A boolean mask that blocks about a quarter of the pairs (the count does not depend on it).
      const mask = c.mask === "u8" ? randomMask("u8", c.Nq, c.Nk, rng(c.seed ^ 0x77)) : options.mask;
      const semantics = { causal: c.causal, windowSize: c.window, mask, returnLse: true as const };
      const standard = standardAttention(q, k, v, { ...semantics, returnLse: c.returnLse });
      // Its output is attention: the tolerance rule of tests/_util.ts against the f64 reference
      // (it stores S, P and O in f32 and sums in f64, so it is no worse than naive f32).
      const reference = referenceAttention(q, k, v, semantics);
      const naive = naiveAttentionF32(q, k, v, semantics);
      assertFlashTolerance(`${where}: O`, standard.o.data, reference.data, naive.data);
      if (c.returnLse) assertFlashTolerance(`${where}: lse`, standard.lse!, reference.lse.data, naive.lse);
      // Its counted bytes are Algorithm 0's.
      const closed = standardAttentionIo(shapeOf(c), { returnLse: c.returnLse, maskElementBytes: maskElementBytes(c) });
      assertSameIo(where, ["Algorithm 0 counted", "standardAttentionIo"], { ...standard.io }, { ...closed });
      if (standard.io.totalBytes !== closed.totalBytes) throw new Error(`${where}: totalBytes`);
      // Measured ratio = closed-form ratio, with the same options for both (an open mask for flash,
      // so that it skips no tile the closed form cannot know about).
      const flash = flashAttention(q, k, v, { ...options, stats: true }).stats!;
      const measured = standard.io.totalBytes / flash.totalBytes;
      const modelled = closed.totalBytes / closedForm(c).totalBytes;
      if (measured !== modelled) throw new Error(`${where}: measured ratio ${measured}, closed forms ${modelled}`);
    }),
    { seed: 0x14, numRuns: 80, includeErrorInReport: true },
  );
});

test("standardAttentionIo counts Algorithm 0: read Q, K, write S; read S, mask, write P, lse; read P, V, write O", () => {
  const shape = { B: 2, H: 3, Nq: 10, Nk: 20, d: 8, dv: 4 };
  const heads = 6;
  const reads = heads * (10 * 8 + 20 * 8 + 10 * 20 + 10 * 20 + 20 * 4) * 4;
  const writes = heads * (10 * 20 + 10 * 20 + 10 * 4) * 4;
  const plain = standardAttentionIo(shape);
  if (plain.totalBytes !== reads + writes) throw new Error(`${plain.totalBytes} ≠ ${reads + writes}`);
  const full = standardAttentionIo(shape, { returnLse: true, maskElementBytes: 4 });
  if (full.read.mask !== heads * 10 * 20 * 4 || full.written.lse !== heads * 10 * 4) {
    throw new Error(`mask ${full.read.mask}, lse ${full.written.lse}`);
  }
  if (full.totalBytes !== reads + writes + heads * (10 * 20 * 4 + 10 * 4)) throw new Error(`${full.totalBytes}`);
  // Visibility does not change Algorithm 0's traffic: it computes every score.
  if (standardAttentionIo(shape, { causal: true, windowSize: [2, 0] } as never).totalBytes !== plain.totalBytes) {
    throw new Error("causal changed the count");
  }
});

test("standardAttentionIo with seqLensK or varlen moves the bytes of Algorithm 0 run on each sequence, empty ones included", () => {
  fc.assert(
    fc.property(lengthsCaseArbitrary, (c) => {
      const { q, k, v } = run(c);
      const counted = { read: zeroBytes(), written: zeroBytes() };
      let [qAt, kAt] = [0, 0]; // row offsets of the sequence in q's and k's first two dims
      sequencesOf(c).forEach(({ Nq, Nk }, b) => {
        // The sequence's rows: entry b (its first Nk keys) or packed rows from qAt and kAt.
        const [qRow, kRow] = c.varlen ? [qAt, kAt] : [b * c.Nq, b * c.Nk];
        const slice = (t: typeof q, row: number, n: number, heads: number, dim: number) => ({
          data: t.data.subarray(row * heads * dim, (row + n) * heads * dim),
          shape: [1, n, heads, dim],
        });
        const mask = c.mask === "none" ? undefined : randomMask(c.mask, Nq, Nk, rng(c.seed ^ b));
        const one = standardAttention(
          slice(q, qRow, Nq, c.H, c.d),
          slice(k, kRow, Nk, c.Hkv, c.d),
          slice(v, kRow, Nk, c.Hkv, c.dv),
          { causal: c.causal, windowSize: c.window, mask, returnLse: c.returnLse },
        );
        for (const side of ["read", "written"] as const) {
          for (const t of Object.keys(zeroBytes()) as (keyof TensorBytes)[]) counted[side][t] += one.io[side][t];
        }
        [qAt, kAt] = [qAt + Nq, kAt + Nk];
      });
      const closed = standardAttentionIo(shapeOf(c), {
        ...lengthOptions(c),
        returnLse: c.returnLse,
        maskElementBytes: maskElementBytes(c),
      });
      assertSameIo(JSON.stringify(c), ["Algorithm 0 per sequence", "standardAttentionIo"], counted, { ...closed });
    }),
    { seed: 0x15, numRuns: 100, includeErrorInReport: true },
  );
});

test("sequence and split options the IO models cannot use are typed errors naming the values", () => {
  const shape = { B: 2, H: 1, Nq: 8, Nk: 8, d: 4 };
  for (const io of [flashAttentionIo, standardAttentionIo]) {
    assertThrows(
      () => io(shape, { seqLensK: new Int32Array([8]) }),
      ShapeError,
      "seqLensK must have length shape.B = 2",
    );
    assertThrows(() => io(shape, { seqLensK: new Int32Array([8, 9]) }), RangeError, "seqLensK[1] is 9");
    assertThrows(() => io(shape, { seqLensK: [8, 8] as never }), TypeError, "seqLensK must be an Int32Array");
    const cu = new Int32Array([0, 3, 8]);
    assertThrows(
      () => io(shape, { seqLensK: new Int32Array([8, 8]), cuSeqlensQ: cu, cuSeqlensK: cu }),
      TypeError,
      "seqLensK cannot be combined",
    );
    assertThrows(() => io(shape, { cuSeqlensQ: cu }), TypeError, "cuSeqlensK must be an Int32Array");
    assertThrows(
      () => io(shape, { cuSeqlensQ: cu, cuSeqlensK: new Int32Array([0, 3, 7]) }),
      RangeError,
      "cuSeqlensK[2] is 7",
    );
    assertThrows(
      () => io(shape, { cuSeqlensQ: cu, cuSeqlensK: new Int32Array([0, 5, 3, 8]) }),
      RangeError,
      "cuSeqlensK[2] is 3",
    );
    assertThrows(
      () => io(shape, { cuSeqlensQ: new Int32Array([0, 8]), cuSeqlensK: new Int32Array([0, 8]) }),
      ShapeError,
      "shape.B + 1 = 3",
    );
    assertThrows(
      () => io(shape, { cuSeqlensQ: cu, cuSeqlensK: cu, maskElementBytes: 1 }),
      TypeError,
      "mask cannot be combined",
    );
  }
  for (const numSplits of [1.5, -1, NaN, 2 ** 53]) {
    assertThrows(() => flashAttentionIo(shape, { numSplits }), RangeError, `numSplits is ${numSplits}`);
  }
  assertThrows(() => flashAttentionIo(shape, { numSplits: "2" as never }), TypeError, 'numSplits is "2"');
  const cu = new Int32Array([0, 3, 8]);
  assertThrows(
    () => flashAttentionIo(shape, { cuSeqlensQ: cu, cuSeqlensK: cu, numSplits: 2 }),
    TypeError,
    "numSplits (split-KV of the KV-cache function) cannot be combined with varlen packing",
  );
  // 0 is the KV-cache function's automatic choice, as there.
  const auto = flashAttentionIo(shape, { numSplits: 0 });
  const chosen = flashAttentionIo(shape, { numSplits: chooseSplits(shape.Nk) });
  if (auto.totalBytes !== chosen.totalBytes) throw new Error(`numSplits 0: ${auto.totalBytes} ≠ ${chosen.totalBytes}`);
});

// ── Arena and exactness ────────────────────────────────────────────────────────────────────────

test("the arena's peak use never exceeds M, for any shape, arena size, option or split count", () => {
  fc.assert(
    fc.property(caseArbitrary, fc.integer({ min: 1, max: 9 }), (c, numSplits) => {
      const { q, k, v, options } = run(c);
      const stats = flashAttention(q, k, v, { ...options, stats: true }).stats!;
      if (!(stats.sramPeakBytes > 0 && stats.sramPeakBytes <= c.sramBytes)) {
        throw new Error(`peak ${stats.sramPeakBytes} > M = ${c.sramBytes} for ${JSON.stringify(c)}`);
      }
      // The KV-cache path with split-KV adds the merge's arena use.
      const cached = flashAttentionWithKvCache(q, k, v, {
        numSplits,
        sramBytes: c.sramBytes,
        mask: options.mask && c.Nq === q.shape[1] ? options.mask : undefined,
        stats: true,
      }).stats!;
      if (!(cached.sramPeakBytes <= c.sramBytes)) throw new Error(`KV cache: peak ${cached.sramPeakBytes}`);
    }),
    { seed: 0x12, numRuns: 60, includeErrorInReport: true },
  );
});

test("stats are exact counts, not estimates: Q is read once, O written once, flops as the padded tiles", () => {
  const random = rng(5);
  const [B, Nq, Nk, H, d, dv] = [2, 37, 81, 3, 20, 12];
  const q = randomTensor(random, [B, Nq, H, d]);
  const k = randomTensor(random, [B, Nk, H, d]);
  const v = randomTensor(random, [B, Nk, H, dv]);
  const stats = flashAttention(q, k, v, { stats: true, returnLse: true }).stats!;
  if (stats.read.q !== 4 * B * Nq * H * d) throw new Error(`Q read ${stats.read.q}`);
  if (stats.written.o !== 4 * B * Nq * H * dv) throw new Error(`O written ${stats.written.o}`);
  if (stats.written.lse !== 4 * B * H * Nq) throw new Error(`lse written ${stats.written.lse}`);
  // The default arena holds all 37 rows in one query block (Br ≥ 37), and the keys are tiles of
  // Bc. Every row sees every key, so each tile costs its padded GEMMs exactly: scores over strips
  // of 8 rows (two f32x4; 37 rows: four strips of 8, then 5 rows as 8) and keys padded to 4, values
  // over rows padded to 4 and dv to 8.
  const { Br, Bc } = documentedBlocks(128 * 1024, d, dv, false)!;
  if (Br < Nq) throw new Error(`Br ${Br} < Nq`);
  let perHead = 0;
  for (let j0 = 0; j0 < Nk; j0 += Bc) {
    const cols = Math.min(Bc, Nk - j0);
    perHead += 2 * scoreRows(Nq) * roundUp(cols, 4) * d + 2 * roundUp(Nq, 4) * cols * roundUp(dv, 8);
  }
  if (stats.flops !== B * H * perHead) throw new Error(`flops ${stats.flops}, padded tiles ${B * H * perHead}`);
  const without = flashAttention(q, k, v, {}) as { stats?: unknown };
  if (without.stats !== undefined) throw new Error("stats appear without being asked for");
});

test("the IO functions reject a malformed shape or options with a typed error naming it, before any counting", () => {
  const good = { B: 1, H: 2, Nq: 16, Nk: 16, d: 8 };
  const cases: [unknown, unknown, ErrorConstructor, string][] = [
    [undefined, {}, TypeError, "shape must be an object"],
    [{ batch: 1, heads: 1, seqLenQ: 8, seqLenK: 8, headDim: 8 }, {}, TypeError, 'shape has an unknown key "batch"'],
    [{ H: 1, Nq: 8, Nk: 8, d: 8 }, {}, TypeError, "shape.B must be an integer ≥ 0: shape.B is missing"],
    [{ ...good, d: "64" }, {}, TypeError, "shape.d must be an integer ≥ 1"],
    [{ ...good, Nq: 1.5 }, {}, RangeError, "shape.Nq must be an integer ≥ 0: shape.Nq is 1.5"],
    [{ ...good, H: 0 }, {}, RangeError, "shape.H must be an integer ≥ 1"],
    [{ ...good, Nk: NaN }, {}, RangeError, "shape.Nk must be an integer"],
    [{ ...good, Hkv: 3 }, {}, RangeError, "shape.H must be a multiple of shape.Hkv"],
    [good, { casual: true }, TypeError, 'options has an unknown key "casual"'],
    [good, { causal: "yes" }, TypeError, "causal must be"],
    [good, { windowSize: [-2, 0] }, RangeError, "windowSize must be"],
    [good, { sramBytes: 0 }, RangeError, "sramBytes must be an integer"],
    [good, { maskElementBytes: 2 }, RangeError, "maskElementBytes must be 0, 1 or 4"],
    [good, { alibi: 1 }, TypeError, "alibi must be a boolean"],
    [good, null, TypeError, "options must be an object"],
  ];
  for (const [shape, options, kind, text] of cases) {
    for (const fn of [flashAttentionIo, flashAttentionBackwardIo]) {
      assertThrows(() => fn(shape as AttentionShape, options as IoOptions), kind, text);
    }
  }
  // The standard model takes an IoOptions as it is, and checks it the same way.
  assertThrows(() => standardAttentionIo(good, { casual: true } as IoOptions), TypeError, 'unknown key "casual"');
  assertThrows(() => standardAttentionIo({ ...good, d: 0 }), RangeError, "shape.d must be");
  // The backward has no split-KV and no lse output.
  assertThrows(() => flashAttentionBackwardIo(good, { numSplits: 2 } as IoOptions), TypeError, '"numSplits"');
  // A good call still counts afterwards.
  if (!(flashAttentionIo(good).totalBytes > 0)) throw new Error("no traffic for a good call");
});

test("IO counts past 2^53 bytes are a RangeError, not inexact numbers (found by the fuzzer)", () => {
  // 2^30 sequences of 2^14 heads: about 2^57 bytes, beyond what a number holds exactly.
  const shape = { B: 2 ** 30, H: 2 ** 14, Nq: 64, Nk: 64, d: 16 };
  for (
    const [name, fn] of [
      ["standardAttentionIo", standardAttentionIo],
      ["flashAttentionIo", flashAttentionIo],
      ["flashAttentionBackwardIo", flashAttentionBackwardIo],
    ] as const
  ) {
    try {
      fn(shape);
    } catch (error) {
      if (error instanceof RangeError && error.message.includes("cannot be counted exactly")) continue;
      throw new Error(`${name}: ${String(error)}`);
    }
    throw new Error(`${name}: counted ${JSON.stringify(shape)} without an error`);
  }
  // Just below: exact, and no error.
  const io = flashAttentionIo({ B: 2 ** 20, H: 16, Nq: 64, Nk: 64, d: 16 });
  if (!Number.isSafeInteger(io.totalBytes)) throw new Error(`${io.totalBytes}`);
});

test("flashAttentionBackwardIo() models a 16M-token sequence without walking its 10^10 tiles one by one (found by the fuzzer)", () => {
  // Before, the model and the dQ segments visited every (query block, key block) pair: this call took
  // hours (and `flash-attention io --seq 1000000 --backward` 15 s). Now it visits each query block once.
  const N = 2 ** 24;
  const io = flashAttentionBackwardIo({ B: 1, H: 1, Nq: N, Nk: N, d: 8 });
  const B = io.Br;
  const blocks = Math.ceil(N / B);
  if (io.tilesComputed !== blocks * blocks || io.tilesSkipped !== 0) throw new Error(`tiles ${io.tilesComputed}`);
  if (io.read.q !== 4 * blocks * N * 8 || io.read.k !== 4 * N * 8) throw new Error(`read ${JSON.stringify(io.read)}`);
  // Causal: query block i meets key blocks 0 … i (square blocks, Nq = Nk).
  const causal = flashAttentionBackwardIo({ B: 1, H: 1, Nq: N, Nk: N, d: 8 }, { causal: true });
  if (causal.tilesComputed !== (blocks * (blocks + 1)) / 2) throw new Error(`causal tiles ${causal.tilesComputed}`);
});

test("an arena too small for the IO model's blocks is a RangeError with the library's prefix (found by the fuzzer)", () => {
  const shape = { B: 1, H: 1, Nq: 8, Nk: 8, d: 64 };
  for (const fn of [flashAttentionIo, flashAttentionBackwardIo]) {
    try {
      fn(shape, { sramBytes: 64 });
    } catch (error) {
      if (error instanceof RangeError && error.message.startsWith("Cannot compute attention as sramBytes 64")) continue;
      throw new Error(`${fn.name}: ${String(error)}`);
    }
    throw new Error(`${fn.name}: no error`);
  }
});
