// Places a validated problem in the kernels' HBM (linear memory), runs the forward kernel once per
// (sequence, K/V head) and copies the results out.
//
// Two placements, one kernel:
// - slab: a sequence's tensors (every head) are copied in with one bulk copy each and the kernel
//   reads heads through the caller's strides. Used while a sequence fits in SLAB_BUDGET_BYTES.
// - streamed: K and V are staged (all heads in one bulk copy up to KV_SLAB_BUDGET_BYTES, else
//   one head at a time, gathered) and the queries of each head group are fed in chunks of
//   positions; each chunk's O goes straight to the caller's buffer. The HBM footprint is at most
//   max(KV_SLAB_BUDGET_BYTES, one head's K and V) plus a chunk, whatever B and H are.
// A query row's result does not depend on how rows are grouped into blocks or chunks (each row's
// arithmetic only depends on the key tiling), so both placements give the same bits.
//
// Split-KV (Flash-Decoding): with numSplits > 1 the keys of each head are cut into that many
// ranges (whole Bc blocks each); the kernel writes a normalised partial O and lse per range and
// mergeSplits combines them.

import { splitRanges } from "./_splits.ts";
import type { AttentionProblem, Sequence } from "./_validate.ts";
import { message } from "./_validate.ts";
import type { Kernels } from "./wasm/loader.ts";

/** Sequences whose staged tensors total at most this many bytes are copied in whole. */
export const SLAB_BUDGET_BYTES = 16 << 20;
/** A streamed sequence stages the K and V of all its heads at once up to this size. */
const KV_SLAB_BUDGET_BYTES = 32 << 20;
/** Most bytes of split-KV partial results per kernel group; more splits fall back to none. */
const SPLIT_SCRATCH_BYTES = 16 << 20;
/** Target size of one streamed chunk of queries (Q, O, lse and mask rows). */
const CHUNK_BYTES = 1 << 20;
const PAGE_BYTES = 65536;
/** wasm32 addresses 4 GiB. */
const MAX_MEMORY_BYTES = 65536 * PAGE_BYTES;
const MASK_NONE = 0;
const MASK_F32 = 1;
const MASK_U8 = 2;

/** What the driver needs beyond the validated problem. */
export interface ForwardConfig {
  sramBytes: number;
  Br: number;
  Bc: number;
  out: Float32Array | undefined;
  /** Key splits per head (1 = none). */
  numSplits: number;
  /** Placement threshold; tests lower it to exercise streaming on small shapes. */
  slabBudgetBytes?: number;
}

/** Output and (when asked for) lse of a forward call. */
export interface ForwardResult {
  o: Float32Array;
  lse: Float32Array | undefined;
}

const align = (bytes: number) => Math.ceil(bytes / 64) * 64;

/** Byte offsets of consecutive 64-byte aligned buffers of the given byte sizes, and the end. */
function place(base: number, bytes: number[]): number[] {
  const ptrs: number[] = [];
  let at = base;
  for (const n of bytes) {
    ptrs.push(at);
    at = align(at + n);
  }
  ptrs.push(at);
  return ptrs;
}

function ensureMemory(kernels: Kernels, endBytes: number, what: string, shapes: string): void {
  if (endBytes > MAX_MEMORY_BYTES) {
    throw new RangeError(
      message(
        `${what} needs ${endBytes} bytes of WebAssembly memory, more than the ${MAX_MEMORY_BYTES} bytes (4 GiB) a wasm32 module can address: ${shapes}`,
      ),
    );
  }
  const memory = kernels.memory;
  const missing = endBytes - memory.buffer.byteLength;
  if (missing <= 0) return;
  try {
    memory.grow(Math.ceil(missing / PAGE_BYTES));
  } catch (cause) {
    throw new RangeError(
      message(`${what} needs ${endBytes} bytes of WebAssembly memory and the runtime refused to grow it: ${shapes}`),
      { cause },
    );
  }
}

/** Copies `rows` rows of `cols` elements between arrays with the given row strides (0 repeats a row). */
function copyRows<T extends Float32Array | Uint8Array>(
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

/** Pointers and strides of one kernel call's tensors; see assembly/forward.ts for their meaning. */
interface Call {
  q: number;
  qRow: number;
  qHead: number;
  k: number;
  kRow: number;
  v: number;
  vRow: number;
  o: number;
  oRow: number;
  oHead: number;
  lse: number;
  lseRow: number;
  lseHead: number;
  Nq: number;
  keyEnd: number;
  visOffset: number;
  alibiOffset: number;
  slopes: number;
  mask: number;
  maskRow: number;
  maskHead: number;
  maskCol: number;
}

/** Every sequence's HBM placement, decided (and linear memory grown) before any copy or kernel call. */
export type ForwardPlan = (SlabPlan | StreamedPlan)[];

/**
 * Places every sequence and grows linear memory to fit the largest placement, so a problem too
 * large for WebAssembly memory fails before anything is computed or written (to `out`, or to a
 * KV cache by its caller).
 */
export function planForward(kernels: Kernels, p: AttentionProblem, config: ForwardConfig): ForwardPlan {
  const budget = config.slabBudgetBytes ?? SLAB_BUDGET_BYTES;
  const plan = p.sequences.filter((s) => s.Nq > 0).map((s) =>
    slabBytes(p, s) <= budget ? planSlab(kernels, p, config, s) : planStreamed(kernels, p, config, s)
  );
  const end = plan.reduce((most, x) => Math.max(most, x.end), 0);
  const streamed = plan.some((x) => x.kind === "streamed");
  ensureMemory(kernels, end, streamed ? "one head of this call" : "this call", p.shapes);
  return plan;
}

/** Runs the forward pass of a validated problem (placed by planForward unless a plan is given). */
export function runForward(
  kernels: Kernels,
  p: AttentionProblem,
  config: ForwardConfig,
  plan: ForwardPlan = planForward(kernels, p, config),
): ForwardResult {
  const o = config.out ?? new Float32Array(p.oLength);
  const lse = p.returnLse ? new Float32Array(p.lseLength) : undefined;
  for (const x of plan) {
    if (x.kind === "slab") runSlab(kernels, p, config, x, o, lse);
    else runStreamed(kernels, p, config, x, o, lse);
  }
  return { o, lse };
}

const maskKind = (p: AttentionProblem) =>
  p.mask === undefined ? MASK_NONE : p.mask.data instanceof Uint8Array ? MASK_U8 : MASK_F32;

/** Element extent of a strided block: the span from its first to one past its last element. */
const extent = (counts: number[], strides: number[]) => counts.reduce((a, n, i) => a + (n - 1) * strides[i], 0) + 1;

interface SlabExtents {
  q: number;
  k: number;
  v: number;
  o: number;
  lse: number;
  mask: number;
  maskBase: number;
}

function slabExtents(p: AttentionProblem, s: Sequence): SlabExtents {
  const { H, Hkv, d, dv } = p;
  const m = p.mask;
  return {
    q: extent([s.Nq, H, d], [p.qStrides.row, p.qStrides.head, 1]),
    k: s.Nk === 0 ? 0 : extent([s.Nk, Hkv, d], [p.kStrides.row, p.kStrides.head, 1]),
    v: s.Nk === 0 ? 0 : extent([s.Nk, Hkv, dv], [p.vStrides.row, p.vStrides.head, 1]),
    o: extent([s.Nq, H, dv], [p.oStrides.row, p.oStrides.head, 1]),
    lse: p.returnLse ? H * s.Nq : 0, // staged as [H][Nq], whatever the caller's lse layout
    mask: m && s.Nk > 0 ? extent([H, s.Nq, s.Nk], [m.strides[1], m.strides[2], m.strides[3]]) : 0,
    maskBase: m ? s.b * m.strides[0] : 0,
  };
}

function slabBytes(p: AttentionProblem, s: Sequence): number {
  const e = slabExtents(p, s);
  const maskBytes = maskKind(p) === MASK_U8 ? e.mask : 4 * e.mask;
  return 4 * (e.q + e.k + e.v + e.o + e.lse) + maskBytes + splitScratchBytes(p, s.Nq * p.group, 2);
}

/** Bytes of split-KV partials for `rows` virtual rows and `splits` splits. */
const splitScratchBytes = (p: AttentionProblem, rows: number, splits: number) =>
  splits > 1 ? 4 * splits * rows * (p.dv + 1) + 128 : 0;

/** The slopes of sequence s's heads start here in alibiSlopes. */
const slopeBase = (p: AttentionProblem, s: Sequence) => p.alibiSlopes && p.alibiSlopes.length !== p.H ? s.b * p.H : 0;

/** Where one sequence's tensors go in HBM, decided before anything is copied. */
interface SlabPlan {
  kind: "slab";
  s: Sequence;
  e: SlabExtents;
  splits: number;
  /** Byte addresses of q, k, v, o, lse, mask, slopes and split scratch. */
  ptrs: number[];
  end: number;
}

function planSlab(kernels: Kernels, p: AttentionProblem, config: ForwardConfig, s: Sequence): SlabPlan {
  const e = slabExtents(p, s);
  const maskBytes = maskKind(p) === MASK_U8 ? 1 : 4;
  const splits = splitsFor(config, s, s.Nq * p.group, p);
  const ptrs = place(kernels.hbmPtr(), [
    4 * e.q,
    4 * e.k,
    4 * e.v,
    4 * e.o,
    4 * e.lse,
    maskBytes * e.mask,
    p.alibiSlopes ? 4 * p.H : 0,
    splitScratchBytes(p, s.Nq * p.group, splits),
  ]);
  return { kind: "slab", s, e, splits, ptrs, end: ptrs[ptrs.length - 1] };
}

function runSlab(
  kernels: Kernels,
  p: AttentionProblem,
  config: ForwardConfig,
  plan: SlabPlan,
  o: Float32Array,
  lse: Float32Array | undefined,
): void {
  const { s, e, splits } = plan;
  const kind = maskKind(p);
  const maskBytes = kind === MASK_U8 ? 1 : 4;
  const [qPtr, kPtr, vPtr, oPtr, lsePtr, maskPtr, slopesPtr, scratchPtr] = plan.ptrs;
  const hbm = new Float32Array(kernels.memory.buffer);
  hbm.set(p.q.subarray(s.qBase, s.qBase + e.q), qPtr / 4);
  hbm.set(p.k.subarray(s.kBase, s.kBase + e.k), kPtr / 4);
  hbm.set(p.v.subarray(s.vBase, s.vBase + e.v), vPtr / 4);
  if (p.mask && e.mask > 0) {
    const target = kind === MASK_U8 ? new Uint8Array(kernels.memory.buffer) : hbm;
    target.set(p.mask.data.subarray(e.maskBase, e.maskBase + e.mask), maskPtr / maskBytes);
  }
  const base = slopeBase(p, s);
  if (p.alibiSlopes) hbm.set(p.alibiSlopes.subarray(base, base + p.H), slopesPtr / 4);
  const m = p.mask?.strides ?? [0, 0, 0, 0];
  for (let kvh = 0; kvh < p.Hkv; kvh++) {
    const h0 = kvh * p.group; // first query head of the group
    run(kernels, p, config, splits, scratchPtr, {
      q: qPtr + 4 * h0 * p.qStrides.head,
      qRow: p.qStrides.row,
      qHead: p.qStrides.head,
      k: kPtr + 4 * kvh * p.kStrides.head,
      kRow: p.kStrides.row,
      v: vPtr + 4 * kvh * p.vStrides.head,
      vRow: p.vStrides.row,
      o: oPtr + 4 * h0 * p.oStrides.head,
      oRow: p.oStrides.row,
      oHead: p.oStrides.head,
      lse: lse ? lsePtr + 4 * h0 * s.Nq : 0,
      lseRow: 1,
      lseHead: s.Nq,
      Nq: s.Nq,
      keyEnd: s.Nk,
      visOffset: p.topLeft ? 0 : s.Nk - s.Nq,
      alibiOffset: s.Nk - s.Nq,
      slopes: p.alibiSlopes ? slopesPtr + 4 * h0 : 0,
      mask: p.mask ? maskPtr + maskBytes * h0 * m[1] : 0,
      maskRow: m[2],
      maskHead: m[1],
      maskCol: m[3],
    });
  }
  o.set(hbm.subarray(oPtr / 4, oPtr / 4 + e.o), s.oBase);
  if (lse) {
    for (let h = 0; h < p.H; h++) {
      const at = lsePtr / 4 + h * s.Nq;
      lse.set(hbm.subarray(at, at + s.Nq), s.lseBase + h * p.lseStrides.head);
    }
  }
}

/** A streamed sequence's HBM placement: K/V staging, one chunk of `positions` query positions. */
interface StreamedPlan {
  kind: "streamed";
  s: Sequence;
  positions: number;
  splits: number;
  /** K and V of every head staged at once (else one head at a time). */
  kvSlab: boolean;
  /** Byte addresses of k, v, q, o, lse, mask, slopes and split scratch. */
  ptrs: number[];
  end: number;
}

function planStreamed(kernels: Kernels, p: AttentionProblem, config: ForwardConfig, s: Sequence): StreamedPlan {
  const { d, dv, group: g } = p;
  const kind = maskKind(p);
  const maskBytes = kind === MASK_U8 ? 1 : 4;
  const rowBytes = 4 * g * (d + dv + 1) + (kind === MASK_NONE ? 0 : maskBytes * g * s.Nk);
  // Whole query blocks per chunk (a multiple of Br rows), so the tiling is that of one call.
  const blockPositions = config.Br / gcd(config.Br, g);
  const positions = Math.min(
    s.Nq,
    blockPositions * Math.max(1, Math.floor(CHUNK_BYTES / rowBytes / blockPositions)),
  );
  const rows = positions * g;
  const splits = splitsFor(config, s, rows, p);
  // K and V of every head at once (one bulk copy each, read through the caller's strides) when
  // they fit KV_SLAB_BUDGET_BYTES; otherwise one head at a time, gathered row by row.
  const e = slabExtents(p, s);
  const kvSlab = 4 * (e.k + e.v) <= KV_SLAB_BUDGET_BYTES;
  const ptrs = place(kernels.hbmPtr(), [
    kvSlab ? 4 * e.k : 4 * s.Nk * d,
    kvSlab ? 4 * e.v : 4 * s.Nk * dv,
    4 * rows * d,
    4 * rows * dv,
    4 * rows,
    kind === MASK_NONE ? 0 : maskBytes * rows * s.Nk,
    4 * g,
    splitScratchBytes(p, rows, splits),
  ]);
  return { kind: "streamed", s, positions, splits, kvSlab, ptrs, end: ptrs[ptrs.length - 1] };
}

function runStreamed(
  kernels: Kernels,
  p: AttentionProblem,
  config: ForwardConfig,
  plan: StreamedPlan,
  o: Float32Array,
  lse: Float32Array | undefined,
): void {
  const { d, dv, group: g } = p;
  const { s, positions, splits, kvSlab } = plan;
  const kind = maskKind(p);
  const maskBytes = kind === MASK_U8 ? 1 : 4;
  const e = slabExtents(p, s);
  const [kPtr, vPtr, qPtr, oPtr, lsePtr, maskPtr, slopesPtr, scratchPtr] = plan.ptrs;
  const hbm = new Float32Array(kernels.memory.buffer);
  const hbmBytes = new Uint8Array(kernels.memory.buffer);
  const m = p.mask?.strides ?? [0, 0, 0, 0];
  if (kvSlab) {
    hbm.set(p.k.subarray(s.kBase, s.kBase + e.k), kPtr / 4);
    hbm.set(p.v.subarray(s.vBase, s.vBase + e.v), vPtr / 4);
  }
  for (let kvh = 0; kvh < p.Hkv; kvh++) {
    const h0 = kvh * g;
    if (!kvSlab) {
      copyRows(hbm, kPtr / 4, d, p.k, s.kBase + kvh * p.kStrides.head, p.kStrides.row, s.Nk, d);
      copyRows(hbm, vPtr / 4, dv, p.v, s.vBase + kvh * p.vStrides.head, p.vStrides.row, s.Nk, dv);
    }
    if (p.alibiSlopes) {
      const base = slopeBase(p, s) + h0;
      hbm.set(p.alibiSlopes.subarray(base, base + g), slopesPtr / 4);
    }
    for (let i0 = 0; i0 < s.Nq; i0 += positions) {
      const n = Math.min(positions, s.Nq - i0);
      // Queries of the group for positions i0..i0+n, laid out [position][head][d].
      for (let hh = 0; hh < g; hh++) {
        const qAt = s.qBase + i0 * p.qStrides.row + (h0 + hh) * p.qStrides.head;
        copyRows(hbm, qPtr / 4 + hh * d, g * d, p.q, qAt, p.qStrides.row, n, d);
        if (p.mask) {
          const target = kind === MASK_U8 ? hbmBytes : hbm;
          for (let i = 0; i < n; i++) {
            const src = s.b * m[0] + (h0 + hh) * m[1] + (i0 + i) * m[2];
            copyStrided(target, maskPtr / maskBytes + (i * g + hh) * s.Nk, p.mask.data, src, m[3], s.Nk);
          }
        }
      }
      run(kernels, p, config, splits, scratchPtr, {
        q: qPtr,
        qRow: g * d,
        qHead: d,
        k: kvSlab ? kPtr + 4 * kvh * p.kStrides.head : kPtr,
        kRow: kvSlab ? p.kStrides.row : d,
        v: kvSlab ? vPtr + 4 * kvh * p.vStrides.head : vPtr,
        vRow: kvSlab ? p.vStrides.row : dv,
        o: oPtr,
        oRow: g * dv,
        oHead: dv,
        lse: lse ? lsePtr : 0,
        lseRow: 1,
        lseHead: n,
        Nq: n,
        keyEnd: s.Nk,
        visOffset: (p.topLeft ? 0 : s.Nk - s.Nq) + i0,
        alibiOffset: s.Nk - s.Nq + i0,
        slopes: p.alibiSlopes ? slopesPtr : 0,
        mask: p.mask ? maskPtr : 0,
        maskRow: g * s.Nk,
        maskHead: s.Nk,
        maskCol: 1,
      });
      for (let hh = 0; hh < g; hh++) {
        const oAt = s.oBase + i0 * p.oStrides.row + (h0 + hh) * p.oStrides.head;
        copyRows(o, oAt, p.oStrides.row, hbm, oPtr / 4 + hh * dv, g * dv, n, dv);
        if (lse) {
          const at = s.lseBase + (h0 + hh) * p.lseStrides.head + i0 * p.lseStrides.row;
          lse.set(hbm.subarray(lsePtr / 4 + hh * n, lsePtr / 4 + hh * n + n), at);
        }
      }
    }
  }
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/** Splits actually used: none without keys, or when their partials would not fit the budget. */
function splitsFor(config: ForwardConfig, s: Sequence, rows: number, p: AttentionProblem): number {
  const wanted = Math.min(config.numSplits, Math.ceil(s.Nk / config.Bc));
  if (wanted <= 1) return 1;
  return splitScratchBytes(p, rows, wanted) <= SPLIT_SCRATCH_BYTES ? wanted : 1;
}

/** One kernel call for a group of heads, or `splits` calls and a merge. */
function run(
  kernels: Kernels,
  p: AttentionProblem,
  config: ForwardConfig,
  splits: number,
  scratchPtr: number,
  c: Call,
): void {
  const kernel = (keyBegin: number, keyEnd: number, o: number[], lse: number[], partial: boolean) =>
    kernels.forward(
      c.q,
      c.qRow,
      c.qHead,
      c.k,
      c.kRow,
      c.v,
      c.vRow,
      o[0],
      o[1],
      o[2],
      lse[0],
      lse[1],
      lse[2],
      c.Nq,
      p.group,
      keyBegin,
      keyEnd,
      p.d,
      p.dv,
      p.scale,
      p.softcap,
      c.visOffset,
      p.windowLeft,
      p.windowRight,
      c.slopes,
      c.alibiOffset,
      c.mask,
      maskKind(p),
      c.maskRow,
      c.maskHead,
      c.maskCol,
      config.sramBytes,
      partial,
    );
  if (splits <= 1) {
    kernel(0, c.keyEnd, [c.o, c.oRow, c.oHead], [c.lse, c.lseRow, c.lseHead], false);
    return;
  }
  // Split-KV: partial O of split t, virtual row r at scratch + (t·rows + r)·dv, its lse after all O.
  const rows = c.Nq * p.group;
  const partLse = scratchPtr + 4 * splits * rows * p.dv;
  const ranges = splitRanges(c.keyEnd, splits, config.Bc);
  ranges.forEach(([begin, end], t) =>
    kernel(
      begin,
      end,
      [scratchPtr + 4 * t * rows * p.dv, p.group * p.dv, p.dv],
      [partLse + 4 * t * rows, p.group, 1],
      true,
    )
  );
  kernels.mergeSplits(
    scratchPtr,
    partLse,
    ranges.length,
    rows,
    p.dv,
    c.o,
    c.oRow,
    c.oHead,
    c.lse,
    c.lseRow,
    c.lseHead,
    p.group,
    config.sramBytes,
  );
}
