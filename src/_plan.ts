// The plan of a forward call: where every tensor goes in HBM (linear memory) and which kernel calls
// to make, decided before anything is copied or computed. One plan, several runners: the
// synchronous runner (_forward.ts) makes the kernel calls one after another on the calling thread;
// the pool (pool.ts) hands each phase's calls to its Workers. A plan is data (named records of
// kernel arguments) plus the copies that stage the caller's tensors into HBM and back.
//
// Placements:
// - slab: a sequence's tensors (every head) are copied in with one bulk copy each and the kernel
//   reads heads through the caller's strides. Consecutive sequences share a phase while their
//   tensors total at most slabBudgetBytes.
// - streamed: a sequence too large for a slab stages K and V (all heads in one bulk copy up to
//   KV_SLAB_BUDGET_BYTES, else one head at a time, gathered) and feeds the queries of each head
//   group in chunks of positions, one phase per chunk; each chunk's O goes straight to the
//   caller's buffer. The HBM footprint is at most max(KV_SLAB_BUDGET_BYTES, one head's K and V)
//   plus a chunk, whatever B and H are.
// A query row's result does not depend on how rows are grouped into blocks, chunks or jobs (each
// row's arithmetic only depends on the key tiling, and chunks hold whole query blocks), so every
// placement and every split into jobs gives the same bits, and moves the same bytes.
//
// Split-KV (Flash-Decoding): with numSplits > 1 the keys of each head are cut into that many
// ranges (whole Bc blocks each); the kernel writes a normalised partial O and lse per range and
// a merge job combines them, in split order.

import { bytesOf, ELEMENT_KIND, type ElementData, viewOf } from "./_half.ts";
import { MAX_MEMORY_BYTES } from "./_limits.ts";
import { message } from "./_messages.ts";
import type { AttentionProblem, OutBuffer, Sequence } from "./_problem.ts";
import { splitRanges } from "./_splits.ts";

/** Sequences whose staged tensors total at most this many bytes are copied in whole. */
export const SLAB_BUDGET_BYTES = 16 << 20;
/** A streamed sequence stages the K and V of all its heads at once up to this size. */
const KV_SLAB_BUDGET_BYTES = 32 << 20;
/** Most bytes of the HBM area through which head-major staging passes the caller's K and V rows. */
const STAGING_BYTES = 1 << 20;
/** Most bytes of split-KV partial results per head group; more splits fall back to none. */
const SPLIT_SCRATCH_BYTES = 16 << 20;
/** Target size of one streamed chunk of queries (Q, O, lse and mask rows). */
export const CHUNK_BYTES = 1 << 20;
/**
 * Calls whose K and V (the keys each sequence sees, every head) total at most this many bytes
 * stream a thin block's K from HBM into registers; larger ones copy its K and V rows as stored into
 * the arena first (ForwardJob.copyThin). Measured on decode steps (Zen 5, node): with K and V of
 * 8 MiB streaming was 11% faster in f32 (the rows come from the CPU's caches), from 16 MiB on the
 * copy was 7–23% faster (the engine's memmove keeps more cache misses in flight than a product
 * loop does).
 */
export const CACHED_KV_BYTES = 8 << 20;
export const MASK_NONE = 0;
export const MASK_F32 = 1;
export const MASK_U8 = 2;

/** How a runner wants a problem laid out. */
export interface PlanConfig {
  /** Arena size and the blocks the kernels derive from it. */
  sramBytes: number;
  Br: number;
  Bc: number;
  /** Key splits per head (1 = none). */
  numSplits: number;
  /** First byte of HBM the plan may use. */
  hbmPtr: number;
  /** Sequences up to this size are staged whole (several to a phase); larger ones are streamed. */
  slabBudgetBytes: number;
  /** Target bytes of one streamed chunk of queries. */
  chunkBytes: number;
  /** Jobs to cut each (sequence, head group) or streamed chunk into, along whole query blocks (1: one call). */
  jobsPerGroup: number;
  /** K and V bytes up to which thin blocks stream K (CACHED_KV_BYTES; tests lower it). */
  cachedKvBytes: number;
}

/** A plan's config with what planForward derives from it once per call, for the jobs it makes. */
type JobConfig = PlanConfig & Pick<ForwardJob, "copyThin">;

/**
 * One call of the forward kernel (assembly/forward.ts), argument for argument: byte addresses end
 * in Ptr, strides count elements; Q, O and lse are addressed by virtual row (assembly/hbm.ts).
 */
export interface ForwardJob {
  qPtr: number;
  qRowStride: number;
  qHeadStride: number;
  kPtr: number;
  kRowStride: number;
  vPtr: number;
  vRowStride: number;
  oPtr: number;
  oRowStride: number;
  oHeadStride: number;
  lsePtr: number;
  lseRowStride: number;
  lseHeadStride: number;
  Nq: number;
  g: number;
  keyBegin: number;
  keyEnd: number;
  d: number;
  dv: number;
  scale: number;
  softcap: number;
  visOffset: number;
  windowLeft: number;
  windowRight: number;
  slopesPtr: number;
  alibiOffset: number;
  maskPtr: number;
  maskKind: number;
  maskRowStride: number;
  maskHeadStride: number;
  maskColStride: number;
  sramBytes: number;
  partial: boolean;
  /** Element kinds of Q, K, V and O (assembly/half.ts; O's is ignored for a split's partial result). */
  qKind: number;
  kKind: number;
  vKind: number;
  oKind: number;
  /**
   * Whether a thin query block (at most 4 virtual rows, assembly/stream.ts) copies its K and V rows
   * as stored into the arena (the call's K and V exceed cachedKvBytes) instead of streaming K.
   */
  copyThin: boolean;
}

/** One call of the split-KV merge (assembly/merge.ts). */
export interface MergeJob {
  partPtr: number;
  partLsePtr: number;
  splits: number;
  rows: number;
  dv: number;
  oPtr: number;
  oRowStride: number;
  oHeadStride: number;
  lsePtr: number;
  lseRowStride: number;
  lseHeadStride: number;
  g: number;
  sramBytes: number;
  /** O's element kind. */
  oKind: number;
}

/** The forward kernel's arguments in its parameter order. */
export function forwardArgs(j: ForwardJob): number[] {
  return [
    j.qPtr,
    j.qRowStride,
    j.qHeadStride,
    j.kPtr,
    j.kRowStride,
    j.vPtr,
    j.vRowStride,
    j.oPtr,
    j.oRowStride,
    j.oHeadStride,
    j.lsePtr,
    j.lseRowStride,
    j.lseHeadStride,
    j.Nq,
    j.g,
    j.keyBegin,
    j.keyEnd,
    j.d,
    j.dv,
    j.scale,
    j.softcap,
    j.visOffset,
    j.windowLeft,
    j.windowRight,
    j.slopesPtr,
    j.alibiOffset,
    j.maskPtr,
    j.maskKind,
    j.maskRowStride,
    j.maskHeadStride,
    j.maskColStride,
    j.sramBytes,
    j.partial ? 1 : 0,
    j.qKind,
    j.kKind,
    j.vKind,
    j.oKind,
    j.copyThin ? 1 : 0,
  ];
}

/** The merge kernel's arguments in its parameter order. */
export function mergeArgs(m: MergeJob): number[] {
  return [
    m.partPtr,
    m.partLsePtr,
    m.splits,
    m.rows,
    m.dv,
    m.oPtr,
    m.oRowStride,
    m.oHeadStride,
    m.lsePtr,
    m.lseRowStride,
    m.lseHeadStride,
    m.g,
    m.sramBytes,
    m.oKind,
  ];
}

/** The kernels a plan calls, by their export names (assembly/kernels.ts). */
export type KernelName = "forward" | "mergeSplits" | "backwardPrep" | "backwardDkDv" | "backwardDqMerge";

/**
 * Kernel calls that may run in any order or in parallel (each writes only its own outputs), as
 * rows of arguments after the SM; a runner finishes one step before it starts the next.
 */
export interface Step {
  kernel: KernelName;
  args: number[][];
}

/** A forward phase's steps: its jobs, then its merges. */
export function forwardSteps(phase: Phase): Step[] {
  return [
    { kernel: "forward", args: phase.jobs.map(forwardArgs) },
    { kernel: "mergeSplits", args: phase.merges.map(mergeArgs) },
  ];
}

/** Where a call's results go on the caller's side: O (as the runners write it), and lse when asked for. */
export interface Results {
  o: ElementData;
  lse: Float32Array | undefined;
  /** O as the caller gets it: `o`, or the caller's Float16Array whose bits `o` views. */
  data: OutBuffer["data"];
}

/** The caller-side arrays a run of p fills: `out` or a fresh O of its dtype, and lse when asked for. */
export function allocateResults(p: AttentionProblem, out: OutBuffer | undefined): Results {
  const o = out?.view ?? (p.dtypes.o === "f32" ? new Float32Array(p.oLength) : new Uint16Array(p.oLength));
  return { o, lse: p.returnLse ? new Float32Array(p.lseLength) : undefined, data: out?.data ?? o };
}

/** Bytes per element of q, k, v and O. */
export function elementSizes(p: AttentionProblem): { q: number; k: number; v: number; o: number } {
  return { q: bytesOf(p.dtypes.q), k: bytesOf(p.dtypes.k), v: bytesOf(p.dtypes.v), o: bytesOf(p.dtypes.o) };
}

/** Bytes of the K and V rows a call reads: every sequence's visible keys, all K/V heads. */
function kvBytes(p: AttentionProblem): number {
  const size = elementSizes(p);
  const keys = p.sequences.reduce((sum, s) => sum + (s.Nq > 0 ? s.Nk : 0), 0);
  return keys * p.Hkv * (p.d * size.k + p.dv * size.v);
}

/** The kernels' element kinds of q, k, v and O (assembly/half.ts). */
export function elementKinds(p: AttentionProblem): { qKind: number; kKind: number; vKind: number; oKind: number } {
  const { q, k, v, o } = p.dtypes;
  return { qKind: ELEMENT_KIND[q], kKind: ELEMENT_KIND[k], vKind: ELEMENT_KIND[v], oKind: ELEMENT_KIND[o] };
}

/** Copies a caller's array (or part of it) into linear memory at byte address `ptr`, as its elements are stored. */
export function stageArray(memory: ArrayBufferLike, ptr: number, data: ElementData | Uint8Array): void {
  const view = data instanceof Float32Array
    ? new Float32Array(memory)
    : data instanceof Uint16Array
    ? new Uint16Array(memory)
    : new Uint8Array(memory);
  view.set(data as Float32Array, ptr / data.BYTES_PER_ELEMENT);
}

/**
 * Throws the RangeError for a call whose placements end past what wasm32 addresses; `what` names
 * the part of the call that must fit at once.
 */
export function checkAddressable(endPtr: number, what: string, shapes: string): void {
  if (endPtr > MAX_MEMORY_BYTES) {
    throw new RangeError(
      message(
        `${what} needs ${endPtr} bytes of WebAssembly memory, more than the ${MAX_MEMORY_BYTES} bytes (4 GiB) a wasm32 module can address: ${shapes}`,
      ),
    );
  }
}

/** What of a plan must fit in memory at once, for messages. */
export const planScope = (plan: ForwardPlan): string => plan.streamed ? "one head of this call" : "this call";

/**
 * A step of a plan: stage inputs into HBM, run the jobs (independent of each other, in any order
 * or in parallel), then the merges (each reads only its own jobs' partials), then copy results out.
 */
export interface Phase {
  /** Copies this phase's inputs from the caller's arrays into HBM (`memory`: the linear memory's buffer). */
  stage(memory: ArrayBufferLike): void;
  jobs: ForwardJob[];
  merges: MergeJob[];
  /** Copies this phase's results from HBM to the caller's arrays. */
  unstage(memory: ArrayBufferLike, results: Results): void;
}

/** A whole call: its phases in order and the memory they need. */
export interface ForwardPlan {
  phases: Phase[];
  /** One past the last byte any phase uses: linear memory must reach it. */
  endPtr: number;
  /** Whether some sequence is streamed (for messages: then only a part of the call is in memory at once). */
  streamed: boolean;
}

/**
 * Lays out a validated problem for a runner. Nothing is copied or computed here; the plan's
 * memory need is checked against WebAssembly's limit, so a problem too large fails before
 * anything is written (to `out`, or to a KV cache by its caller).
 */
export function planForward(p: AttentionProblem, given: PlanConfig): ForwardPlan {
  const config: JobConfig = { ...given, copyThin: kvBytes(p) > given.cachedKvBytes };
  const phases: Phase[] = [];
  let endPtr = config.hbmPtr;
  let streamed = false;
  let batch: Sequence[] = [];
  let batchBytes = 0;
  const flush = () => {
    if (batch.length === 0) return;
    const phase = planSlabs(p, config, batch);
    phases.push(phase);
    endPtr = Math.max(endPtr, phase.endPtr);
    batch = [];
    batchBytes = 0;
  };
  for (const s of p.sequences) {
    if (s.Nq === 0) continue;
    const bytes = slabBytes(p, s);
    if (bytes > config.slabBudgetBytes) {
      flush();
      const plan = planStreamed(p, config, s);
      phases.push(...plan.phases);
      endPtr = Math.max(endPtr, plan.endPtr);
      streamed = true;
      continue;
    }
    if (batchBytes + bytes > config.slabBudgetBytes) flush();
    batch.push(s);
    batchBytes += bytes;
  }
  flush();
  const plan = { phases, endPtr, streamed };
  checkAddressable(endPtr, planScope(plan), p.shapes);
  return plan;
}

/** `bytes` rounded up to a 64-byte line. */
export const align = (bytes: number): number => Math.ceil(bytes / 64) * 64;

/** Consecutive 64-byte aligned regions of the given byte sizes from `base`: their addresses and the end. */
export function place<K extends string>(base: number, sizes: Record<K, number>): Record<K | "end", number> {
  const ptrs: Record<string, number> = {};
  let at = base;
  for (const key of Object.keys(sizes) as K[]) {
    ptrs[key] = at;
    at = align(at + sizes[key]);
  }
  ptrs.end = at;
  return ptrs as Record<K | "end", number>;
}

/** Copies `rows` rows of `cols` elements between arrays with the given row strides. */
export function copyRows<T extends Float32Array | Uint16Array | Uint8Array>(
  dst: T,
  dstAt: number,
  dstStride: number,
  src: T,
  srcAt: number,
  srcStride: number,
  rows: number,
  cols: number,
): void {
  if (dstStride === cols && srcStride === cols) {
    dst.set(src.subarray(srcAt, srcAt + rows * cols), dstAt);
    return;
  }
  for (let r = 0; r < rows; r++) {
    const s = srcAt + r * srcStride;
    dst.set(src.subarray(s, s + cols), dstAt + r * dstStride);
  }
}

/** Copies `n` elements with source stride `stride` (0: broadcast one value) into dst at dstAt. */
function copyStrided<T extends Float32Array | Uint8Array>(
  dst: T,
  dstAt: number,
  src: T,
  srcAt: number,
  stride: number,
  n: number,
): void {
  if (stride === 1) dst.set(src.subarray(srcAt, srcAt + n), dstAt);
  else if (stride === 0) dst.fill(src[srcAt], dstAt, dstAt + n);
  else for (let i = 0; i < n; i++) dst[dstAt + i] = src[srcAt + i * stride];
}

export const maskKind = (p: AttentionProblem): number =>
  p.mask === undefined ? MASK_NONE : p.mask.data instanceof Uint8Array ? MASK_U8 : MASK_F32;

export const maskElementBytes = (p: AttentionProblem): number => maskKind(p) === MASK_U8 ? 1 : 4;

/** Element extent of a strided block: the span from its first to one past its last element. */
const extent = (counts: number[], strides: number[]) => counts.reduce((a, n, i) => a + (n - 1) * strides[i], 0) + 1;

/** Elements of each tensor a sequence's slab holds. */
export interface SlabExtents {
  q: number;
  k: number;
  v: number;
  o: number;
  lse: number;
  mask: number;
  /** The mask's element offset of the sequence's batch entry. */
  maskBase: number;
}

export function slabExtents(p: AttentionProblem, s: Sequence): SlabExtents {
  const { H, Hkv, d, dv } = p;
  const m = p.mask;
  return {
    q: extent([s.Nq, H, d], [p.qStrides.row, p.qStrides.head, 1]),
    // K and V that live in HBM already (a resident KV cache) are read where they are.
    k: s.Nk === 0 || p.resident ? 0 : extent([s.Nk, Hkv, d], [p.kStrides.row, p.kStrides.head, 1]),
    v: s.Nk === 0 || p.resident ? 0 : extent([s.Nk, Hkv, dv], [p.vStrides.row, p.vStrides.head, 1]),
    o: extent([s.Nq, H, dv], [p.oStrides.row, p.oStrides.head, 1]),
    lse: p.returnLse ? H * s.Nq : 0, // staged as [H][Nq], whatever the caller's lse layout
    mask: m && s.Nk > 0 ? extent([H, s.Nq, s.Nk], [m.strides[1], m.strides[2], m.strides[3]]) : 0,
    maskBase: m ? s.b * m.strides[0] : 0,
  };
}

/** Positions per job: whole query blocks (Br virtual rows, g rows per position), `parts` jobs over n positions. */
export function positionsPerJob(config: { Br: number }, g: number, n: number, parts: number): number {
  const blockPositions = config.Br / gcd(config.Br, g);
  return blockPositions * Math.max(1, Math.ceil(Math.ceil(n / blockPositions) / Math.max(1, parts)));
}

/** The query-position ranges [i0, i0 + n) of the jobs of one head group. */
function jobRanges(config: PlanConfig, g: number, n: number): [number, number][] {
  const step = positionsPerJob(config, g, n, config.jobsPerGroup);
  const ranges: [number, number][] = [];
  for (let i0 = 0; i0 < n; i0 += step) ranges.push([i0, Math.min(step, n - i0)]);
  return ranges;
}

/** Bytes of split-KV partials for `rows` virtual rows and `splits` splits. */
const splitScratchBytes = (p: AttentionProblem, rows: number, splits: number) =>
  splits > 1 ? 4 * splits * rows * (p.dv + 1) + 128 : 0;

/**
 * Splits a sequence's head groups use: none without keys, or when the partials of a whole head
 * group (Nq·g rows) would not fit the budget. The rule looks at the sequence only, not at how a
 * runner places or cuts it, so every runner makes the same choice and computes the same bits.
 */
function splitsFor(config: PlanConfig, s: Sequence, p: AttentionProblem): number {
  const wanted = Math.min(config.numSplits, Math.ceil(s.Nk / config.Bc));
  if (wanted <= 1) return 1;
  return splitScratchBytes(p, s.Nq * p.group, wanted) <= SPLIT_SCRATCH_BYTES ? wanted : 1;
}

/** Scratch bytes of the split-KV partials of one head group's jobs over `positions` positions. */
function groupScratchBytes(p: AttentionProblem, config: PlanConfig, positions: number, splits: number): number {
  let bytes = 0;
  for (const [, n] of jobRanges(config, p.group, positions)) bytes += align(splitScratchBytes(p, n * p.group, splits));
  return bytes;
}

/** Bytes a sequence's slab needs, by the placement rule (split scratch counted as for 2 splits). */
function slabBytes(p: AttentionProblem, s: Sequence): number {
  const e = slabExtents(p, s);
  const size = elementSizes(p);
  return size.q * e.q + size.k * e.k + size.v * e.v + size.o * e.o + 4 * e.lse + maskElementBytes(p) * e.mask +
    splitScratchBytes(p, s.Nq * p.group, 2);
}

/** The slopes of sequence s's heads start here in alibiSlopes. */
export const slopeBase = (p: AttentionProblem, s: Sequence): number =>
  p.alibiSlopes && p.alibiSlopes.length !== p.H ? s.b * p.H : 0;

/**
 * One head group's query range as the kernel sees it: pointers and strides of Q, O, lse and the
 * mask rows for its first position, the keys it may see and its alignment offsets.
 */
type GroupCall =
  & Omit<
    ForwardJob,
    | "g"
    | "keyBegin"
    | "d"
    | "dv"
    | "scale"
    | "softcap"
    | "windowLeft"
    | "windowRight"
    | "maskKind"
    | "sramBytes"
    | "partial"
    | "qKind"
    | "kKind"
    | "vKind"
    | "oKind"
    | "copyThin"
  >
  & {
    /** All keys of the group: keyBegin is 0, split-KV cuts [0, keyEnd) into ranges. */
    keyEnd: number;
    /** Byte size of one mask element (1 or 4). */
    maskBytes: number;
  };

/**
 * The jobs of one head group: its positions cut into whole query blocks (config.jobsPerGroup
 * parts), each run as one kernel call or as `splits` calls and a merge, with its partials at
 * `scratchPtr` onward (groupScratchBytes of them). Returns the scratch end.
 */
function groupJobs(
  p: AttentionProblem,
  config: JobConfig,
  c: GroupCall,
  splits: number,
  scratchPtr: number,
  phase: { jobs: ForwardJob[]; merges: MergeJob[] },
): number {
  const g = p.group;
  const size = elementSizes(p);
  const kinds = elementKinds(p);
  for (const [i0, n] of jobRanges(config, g, c.Nq)) {
    const rows = n * g;
    const job = (keyBegin: number, keyEnd: number, out: [number, number, number], lse: [number, number, number]) =>
      phase.jobs.push({
        qPtr: c.qPtr + size.q * i0 * c.qRowStride,
        qRowStride: c.qRowStride,
        qHeadStride: c.qHeadStride,
        kPtr: c.kPtr,
        kRowStride: c.kRowStride,
        vPtr: c.vPtr,
        vRowStride: c.vRowStride,
        oPtr: out[0],
        oRowStride: out[1],
        oHeadStride: out[2],
        lsePtr: lse[0],
        lseRowStride: lse[1],
        lseHeadStride: lse[2],
        Nq: n,
        g,
        keyBegin,
        keyEnd,
        d: p.d,
        dv: p.dv,
        scale: p.scale,
        softcap: p.softcap,
        visOffset: c.visOffset + i0,
        windowLeft: p.windowLeft,
        windowRight: p.windowRight,
        slopesPtr: c.slopesPtr,
        alibiOffset: c.alibiOffset + i0,
        maskPtr: c.maskPtr === 0 ? 0 : c.maskPtr + c.maskBytes * i0 * c.maskRowStride,
        maskKind: maskKind(p),
        maskRowStride: c.maskRowStride,
        maskHeadStride: c.maskHeadStride,
        maskColStride: c.maskColStride,
        sramBytes: config.sramBytes,
        partial: splits > 1,
        ...kinds,
        copyThin: config.copyThin,
      });
    const oPtr = c.oPtr + size.o * i0 * c.oRowStride;
    const lsePtr = c.lsePtr === 0 ? 0 : c.lsePtr + 4 * i0 * c.lseRowStride;
    if (splits <= 1) {
      job(0, c.keyEnd, [oPtr, c.oRowStride, c.oHeadStride], [lsePtr, c.lseRowStride, c.lseHeadStride]);
      continue;
    }
    // Split-KV: partial O of split t, virtual row r at scratch + (t·rows + r)·dv, its lse after all O.
    const partLsePtr = scratchPtr + 4 * splits * rows * p.dv;
    const ranges = splitRanges(c.keyEnd, splits, config.Bc);
    ranges.forEach(([begin, end], t) =>
      job(begin, end, [scratchPtr + 4 * t * rows * p.dv, g * p.dv, p.dv], [partLsePtr + 4 * t * rows, g, 1])
    );
    phase.merges.push({
      partPtr: scratchPtr,
      partLsePtr,
      splits: ranges.length,
      rows,
      dv: p.dv,
      oPtr,
      oRowStride: c.oRowStride,
      oHeadStride: c.oHeadStride,
      lsePtr,
      lseRowStride: c.lseRowStride,
      lseHeadStride: c.lseHeadStride,
      g,
      sramBytes: config.sramBytes,
      oKind: kinds.oKind,
    });
    scratchPtr = align(scratchPtr + splitScratchBytes(p, rows, splits));
  }
  return scratchPtr;
}

/** Byte addresses of one sequence's slab. */
interface SlabPtrs {
  qPtr: number;
  kPtr: number;
  vPtr: number;
  oPtr: number;
  lsePtr: number;
  maskPtr: number;
  slopesPtr: number;
  scratchPtr: number;
  end: number;
}

/**
 * Whether a slab stages K (and V) head-major, each head's rows contiguous, rather than in the
 * caller's layout: when a head's rows are not contiguous there (bshd: one row of a head every
 * Hkv·d elements). The kernels stream every key row of a head once per query block; rows
 * Hkv·d·4 bytes apart put a head's rows on as many pages as it has rows, which defeats the CPU's
 * prefetchers and thrashes its TLB: at N = 2048, H = 8, d = 64 the tile copies took 19% of the
 * forward in bshd and 4% in bhsd (node --cpu-prof), and the forward ran 1.4× slower. The staging
 * copies every element once either way, so this costs nothing; the kernels' counted tile copies
 * read the same bytes. Caller-owned and resident caches are read where they are.
 */
function headMajor(p: AttentionProblem, s: Sequence, e: SlabExtents): { k: boolean; v: boolean } {
  if (p.resident) return { k: false, v: false };
  const fits = (extent: number, dim: number) => extent >= p.Hkv * s.Nk * dim;
  return {
    k: p.kStrides.row !== p.d && fits(e.k, p.d),
    v: p.vStrides.row !== p.dv && fits(e.v, p.dv),
  };
}

/**
 * Stages a sequence's K and V of every head at ptrs.kPtr and ptrs.vPtr: head-major where `headMajor`
 * says so (head h's rows from element h·Nk·d on), else in the caller's layout (one bulk copy).
 */
function stageKeysValues(
  memory: ArrayBufferLike,
  p: AttentionProblem,
  s: Sequence,
  e: SlabExtents,
  ptrs: { kPtr: number; vPtr: number; stagingPtr: number },
  headMajor: { k: boolean; v: boolean },
): void {
  const size = elementSizes(p);
  for (const [name, dim] of [["k", p.d], ["v", p.dv]] as const) {
    const [data, strides, base, ptr] = name === "k"
      ? [p.k, p.kStrides, s.kBase, ptrs.kPtr]
      : [p.v, p.vStrides, s.vBase, ptrs.vPtr];
    if (!headMajor[name]) {
      stageArray(memory, ptr, data.subarray(base, base + e[name]));
      continue;
    }
    const hbm = viewOf(memory, p.dtypes[name]);
    if (strides.head === dim) {
      // Each position's heads are contiguous (bshd): through the staging area, a chunk at a time.
      const tempElems = stagingBytes(p, e, headMajor) / size[name];
      stageHeadMajor(
        hbm,
        ptr / size[name],
        data,
        base,
        strides.row,
        p.Hkv,
        s.Nk,
        dim,
        ptrs.stagingPtr / size[name],
        tempElems,
      );
      continue;
    }
    for (let h = 0; h < p.Hkv; h++) {
      copyRows(hbm, ptr / size[name] + h * s.Nk * dim, dim, data, base + h * strides.head, strides.row, s.Nk, dim);
    }
  }
}

/**
 * Bytes of the staging area that stageKeysValues passes head-major K and V through: all of the
 * larger such tensor up to STAGING_BYTES, and at least one position of every head; 0 with neither.
 */
function stagingBytes(p: AttentionProblem, e: SlabExtents, headMajor: { k: boolean; v: boolean }): number {
  const size = elementSizes(p);
  const need = (extent: number, rowStride: number, bytes: number) =>
    Math.min(extent * bytes, Math.max(STAGING_BYTES, rowStride * bytes));
  return Math.max(
    headMajor.k ? need(e.k, p.kStrides.row, size.k) : 0,
    headMajor.v ? need(e.v, p.vStrides.row, size.v) : 0,
  );
}

/**
 * Lays out `rows` positions of `heads` heads head-major in HBM — head h, position n at
 * dstAt + (h·rows + n)·dim — from `src`, where they lie at srcAt + n·rowStride + h·dim (each
 * position's heads contiguous). A chunk of whole positions is copied into the staging area at
 * tempAt (tempElems elements) in one `set`, then every row moved to its place with `copyWithin`,
 * which allocates nothing: a `set` of a `subarray` per row made a view per row, and those views
 * were about half of the staging's time (node 20, N = 1024, H = 8, d = 64).
 */
function stageHeadMajor<T extends Float32Array | Uint16Array>(
  hbm: T,
  dstAt: number,
  src: T,
  srcAt: number,
  rowStride: number,
  heads: number,
  rows: number,
  dim: number,
  tempAt: number,
  tempElems: number,
): void {
  const span = heads * dim; // one position's elements
  const chunk = Math.max(1, Math.floor((tempElems - span) / rowStride) + 1); // (chunk − 1)·rowStride + span ≤ tempElems
  for (let n0 = 0; n0 < rows; n0 += chunk) {
    const n1 = Math.min(rows, n0 + chunk);
    const from = srcAt + n0 * rowStride;
    hbm.set(src.subarray(from, from + (n1 - n0 - 1) * rowStride + span) as T, tempAt);
    for (let h = 0; h < heads; h++) {
      let to = dstAt + (h * rows + n0) * dim;
      let at = tempAt + h * dim;
      for (let n = n0; n < n1; n++, to += dim, at += rowStride) hbm.copyWithin(to, at, at + dim);
    }
  }
}

/** One phase for consecutive sequences placed whole, one slab after another. */
function planSlabs(p: AttentionProblem, config: JobConfig, sequences: Sequence[]): Phase & { endPtr: number } {
  const phase = { jobs: [] as ForwardJob[], merges: [] as MergeJob[] };
  const slabs: { s: Sequence; e: SlabExtents; ptrs: SlabPtrs; kHeadMajor: boolean; vHeadMajor: boolean }[] = [];
  const elementBytes = maskElementBytes(p);
  const size = elementSizes(p);
  const m = p.mask?.strides ?? [0, 0, 0, 0];
  let at = config.hbmPtr;
  for (const s of sequences) {
    const e = slabExtents(p, s);
    const splits = splitsFor(config, s, p);
    const ptrs = place(at, {
      qPtr: size.q * e.q,
      kPtr: size.k * e.k,
      vPtr: size.v * e.v,
      oPtr: size.o * e.o,
      lsePtr: 4 * e.lse,
      maskPtr: elementBytes * e.mask,
      slopesPtr: p.alibiSlopes ? 4 * p.H : 0,
      scratchPtr: p.Hkv * groupScratchBytes(p, config, s.Nq, splits),
    });
    let scratch = ptrs.scratchPtr;
    const kBase = p.resident ? p.resident.kPtr + size.k * s.kBase : ptrs.kPtr;
    const vBase = p.resident ? p.resident.vPtr + size.v * s.vBase : ptrs.vPtr;
    const { k: kHeadMajor, v: vHeadMajor } = headMajor(p, s, e);
    for (let kvh = 0; kvh < p.Hkv; kvh++) {
      const h0 = kvh * p.group; // first query head of the group
      scratch = groupJobs(
        p,
        config,
        {
          qPtr: ptrs.qPtr + size.q * h0 * p.qStrides.head,
          qRowStride: p.qStrides.row,
          qHeadStride: p.qStrides.head,
          kPtr: kHeadMajor ? kBase + size.k * kvh * s.Nk * p.d : kBase + size.k * kvh * p.kStrides.head,
          kRowStride: kHeadMajor ? p.d : p.kStrides.row,
          vPtr: vHeadMajor ? vBase + size.v * kvh * s.Nk * p.dv : vBase + size.v * kvh * p.vStrides.head,
          vRowStride: vHeadMajor ? p.dv : p.vStrides.row,
          oPtr: ptrs.oPtr + size.o * h0 * p.oStrides.head,
          oRowStride: p.oStrides.row,
          oHeadStride: p.oStrides.head,
          lsePtr: p.returnLse ? ptrs.lsePtr + 4 * h0 * s.Nq : 0,
          lseRowStride: 1,
          lseHeadStride: s.Nq,
          Nq: s.Nq,
          keyEnd: s.Nk,
          visOffset: p.topLeft ? 0 : s.Nk - s.Nq,
          alibiOffset: s.Nk - s.Nq,
          slopesPtr: p.alibiSlopes ? ptrs.slopesPtr + 4 * h0 : 0,
          maskPtr: p.mask ? ptrs.maskPtr + elementBytes * h0 * m[1] : 0,
          maskRowStride: m[2],
          maskHeadStride: m[1],
          maskColStride: m[3],
          maskBytes: elementBytes,
        },
        splits,
        scratch,
        phase,
      );
    }
    slabs.push({ s, e, ptrs, kHeadMajor, vHeadMajor });
    at = ptrs.end;
  }
  // One staging area after the slabs, for whichever slab stages K or V head-major.
  const stagingPtr = at;
  for (const { e, kHeadMajor, vHeadMajor } of slabs) {
    at = Math.max(at, align(stagingPtr + stagingBytes(p, e, { k: kHeadMajor, v: vHeadMajor })));
  }
  return {
    ...phase,
    endPtr: at,
    stage(memory) {
      const hbm = new Float32Array(memory);
      for (const { s, e, ptrs, kHeadMajor, vHeadMajor } of slabs) {
        stageArray(memory, ptrs.qPtr, p.q.subarray(s.qBase, s.qBase + e.q));
        if (!p.resident) stageKeysValues(memory, p, s, e, { ...ptrs, stagingPtr }, { k: kHeadMajor, v: vHeadMajor });
        if (p.mask && e.mask > 0) {
          stageArray(memory, ptrs.maskPtr, p.mask.data.subarray(e.maskBase, e.maskBase + e.mask));
        }
        const base = slopeBase(p, s);
        if (p.alibiSlopes) hbm.set(p.alibiSlopes.subarray(base, base + p.H), ptrs.slopesPtr / 4);
      }
    },
    unstage(memory, { o, lse }) {
      const hbm = new Float32Array(memory);
      const hbmO = viewOf(memory, p.dtypes.o);
      for (const { s, e, ptrs } of slabs) {
        const at = ptrs.oPtr / size.o;
        (o as Float32Array).set((hbmO as Float32Array).subarray(at, at + e.o), s.oBase);
        if (lse) {
          for (let h = 0; h < p.H; h++) {
            const at = ptrs.lsePtr / 4 + h * s.Nq;
            lse.set(hbm.subarray(at, at + s.Nq), s.lseBase + h * p.lseStrides.head);
          }
        }
      }
    },
  };
}

/** Byte addresses of a streamed sequence: K/V staging and one chunk of query rows. */
interface StreamPtrs {
  kPtr: number;
  vPtr: number;
  qPtr: number;
  oPtr: number;
  lsePtr: number;
  maskPtr: number;
  slopesPtr: number;
  scratchPtr: number;
  stagingPtr: number;
  end: number;
}

/** The phases of a sequence too large for a slab: one per (head group, chunk of positions). */
function planStreamed(p: AttentionProblem, config: JobConfig, s: Sequence): { phases: Phase[]; endPtr: number } {
  const { d, dv, group: g } = p;
  const kind = maskKind(p);
  const elementBytes = maskElementBytes(p);
  const size = elementSizes(p);
  const rowBytes = g * (size.q * d + size.o * dv + 4) + (kind === MASK_NONE ? 0 : elementBytes * g * s.Nk);
  // Whole query blocks per chunk (a multiple of Br rows), so the tiling is that of one call.
  const blockPositions = config.Br / gcd(config.Br, g);
  const positions = Math.min(
    s.Nq,
    blockPositions * Math.max(1, Math.floor(config.chunkBytes / rowBytes / blockPositions)),
  );
  const rows = positions * g;
  const splits = splitsFor(config, s, p);
  // K and V of every head at once (one bulk copy each, read through the caller's strides) when
  // they fit KV_SLAB_BUDGET_BYTES; otherwise one head at a time, gathered row by row.
  // Resident K and V (extent 0 here) are read in place, like a slab's.
  const e = slabExtents(p, s);
  const kvSlab = size.k * e.k + size.v * e.v <= KV_SLAB_BUDGET_BYTES;
  const hm = headMajor(p, s, e); // (for the slab of every head; per head, rows are gathered anyway)
  const ptrs: StreamPtrs = place(config.hbmPtr, {
    kPtr: size.k * (kvSlab ? e.k : s.Nk * d),
    vPtr: size.v * (kvSlab ? e.v : s.Nk * dv),
    qPtr: size.q * rows * d,
    oPtr: size.o * rows * dv,
    lsePtr: 4 * rows,
    maskPtr: kind === MASK_NONE ? 0 : elementBytes * rows * s.Nk,
    slopesPtr: 4 * g,
    scratchPtr: groupScratchBytes(p, config, positions, splits),
    stagingPtr: kvSlab && !p.resident ? stagingBytes(p, e, hm) : 0,
  });
  const m = p.mask?.strides ?? [0, 0, 0, 0];
  const kBase = p.resident ? p.resident.kPtr + size.k * s.kBase : ptrs.kPtr;
  const vBase = p.resident ? p.resident.vPtr + size.v * s.vBase : ptrs.vPtr;
  const phases: Phase[] = [];
  for (let kvh = 0; kvh < p.Hkv; kvh++) {
    const h0 = kvh * g;
    for (let i0 = 0; i0 < s.Nq; i0 += positions) {
      const n = Math.min(positions, s.Nq - i0);
      const phase = { jobs: [] as ForwardJob[], merges: [] as MergeJob[] };
      groupJobs(
        p,
        config,
        {
          qPtr: ptrs.qPtr,
          qRowStride: g * d,
          qHeadStride: d,
          kPtr: !kvSlab ? ptrs.kPtr : kBase + size.k * kvh * (hm.k ? s.Nk * d : p.kStrides.head),
          kRowStride: !kvSlab || hm.k ? d : p.kStrides.row,
          vPtr: !kvSlab ? ptrs.vPtr : vBase + size.v * kvh * (hm.v ? s.Nk * dv : p.vStrides.head),
          vRowStride: !kvSlab || hm.v ? dv : p.vStrides.row,
          oPtr: ptrs.oPtr,
          oRowStride: g * dv,
          oHeadStride: dv,
          lsePtr: p.returnLse ? ptrs.lsePtr : 0,
          lseRowStride: 1,
          lseHeadStride: n,
          Nq: n,
          keyEnd: s.Nk,
          visOffset: (p.topLeft ? 0 : s.Nk - s.Nq) + i0,
          alibiOffset: s.Nk - s.Nq + i0,
          slopesPtr: p.alibiSlopes ? ptrs.slopesPtr : 0,
          maskPtr: p.mask ? ptrs.maskPtr : 0,
          maskRowStride: g * s.Nk,
          maskHeadStride: s.Nk,
          maskColStride: 1,
          maskBytes: elementBytes,
        },
        splits,
        ptrs.scratchPtr,
        phase,
      );
      const firstOfHead = i0 === 0;
      phases.push({
        ...phase,
        stage(memory) {
          const hbm = new Float32Array(memory);
          if (kvSlab && !p.resident && kvh === 0 && firstOfHead) stageKeysValues(memory, p, s, e, ptrs, hm);
          if (!kvSlab && firstOfHead) {
            const hbmK = viewOf(memory, p.dtypes.k);
            const hbmV = viewOf(memory, p.dtypes.v);
            copyRows(hbmK, ptrs.kPtr / size.k, d, p.k, s.kBase + kvh * p.kStrides.head, p.kStrides.row, s.Nk, d);
            copyRows(hbmV, ptrs.vPtr / size.v, dv, p.v, s.vBase + kvh * p.vStrides.head, p.vStrides.row, s.Nk, dv);
          }
          if (p.alibiSlopes && firstOfHead) {
            const base = slopeBase(p, s) + h0;
            hbm.set(p.alibiSlopes.subarray(base, base + g), ptrs.slopesPtr / 4);
          }
          // Queries of the group for positions i0..i0+n, laid out [position][head][d].
          const hbmQ = viewOf(memory, p.dtypes.q);
          for (let hh = 0; hh < g; hh++) {
            const qAt = s.qBase + i0 * p.qStrides.row + (h0 + hh) * p.qStrides.head;
            copyRows(hbmQ, ptrs.qPtr / size.q + hh * d, g * d, p.q, qAt, p.qStrides.row, n, d);
            if (p.mask) {
              const target = kind === MASK_U8 ? new Uint8Array(memory) : hbm;
              for (let i = 0; i < n; i++) {
                const src = s.b * m[0] + (h0 + hh) * m[1] + (i0 + i) * m[2];
                copyStrided(target, ptrs.maskPtr / elementBytes + (i * g + hh) * s.Nk, p.mask.data, src, m[3], s.Nk);
              }
            }
          }
        },
        unstage(memory, { o, lse }) {
          const hbm = new Float32Array(memory);
          const hbmO = viewOf(memory, p.dtypes.o);
          for (let hh = 0; hh < g; hh++) {
            const oAt = s.oBase + i0 * p.oStrides.row + (h0 + hh) * p.oStrides.head;
            copyRows(o, oAt, p.oStrides.row, hbmO, ptrs.oPtr / size.o + hh * dv, g * dv, n, dv);
            if (lse) {
              const at = s.lseBase + (h0 + hh) * p.lseStrides.head + i0 * p.lseStrides.row;
              lse.set(hbm.subarray(ptrs.lsePtr / 4 + hh * n, ptrs.lsePtr / 4 + hh * n + n), at);
            }
          }
        },
      });
    }
  }
  return { phases, endPtr: ptrs.end };
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}
