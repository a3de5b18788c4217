// The plan of a backward call: where every tensor goes in HBM and which kernel calls to make, as
// steps that any runner (the calling thread, the pool) executes in order. Per phase:
//   1. backwardPrep:    D = rowsum(dO ∘ O), one job per head group;
//   2. backwardDkDv:    dK, dV and partial dQ, one job per segment of a head group's keys;
//   3. backwardDqMerge: dQ = the sum of a row's partials in segment order, jobs over whole rows.
// The segments (at most DQ_SEGMENTS, whole key blocks each) depend on the problem only, every
// output element is written by exactly one kernel call summing in a fixed order, and the merge's
// rows are independent, so every cut, on any number of Workers, gives the bits of the synchronous
// run (assembly/backward.ts).
//
// Placement: each sequence is staged whole (every head of q, k, v, O, dO, lse, and room for D, the
// partial dQ, dQ, dK, dV): every segment reads every query of its head group, so the backward's
// working set is the sequence itself, O(N·d). Consecutive sequences share a phase while their slabs
// total at most slabBudgetBytes; a larger sequence gets a phase of its own.

import { bytesOf, ELEMENT_KIND, type ElementData, viewOf } from "./_half.ts";
import {
  checkAddressable,
  copyRows,
  elementKinds,
  elementSizes,
  maskElementBytes,
  maskKind,
  place,
  positionsPerJob,
  type SlabExtents,
  slabExtents,
  slopeBase,
  stageArray,
  type Step,
} from "./_plan.ts";
import type { AttentionProblem, Sequence } from "./_problem.ts";
import type { Dtype } from "./tensor.ts";
import { blockKeys, type KeyVisibility, keyVisibility } from "./_visibility.ts";

/** One call of backwardDkDv (assembly/backward.ts), argument for argument; dq* address its partial dQ. */
export interface BackwardJob {
  qPtr: number;
  qRowStride: number;
  qHeadStride: number;
  kPtr: number;
  kRowStride: number;
  vPtr: number;
  vRowStride: number;
  dOPtr: number;
  dORowStride: number;
  dOHeadStride: number;
  lsePtr: number;
  dPtr: number;
  lseRowStride: number;
  lseHeadStride: number;
  dqPtr: number;
  dqRowStride: number;
  dqHeadStride: number;
  dkPtr: number;
  dkRowStride: number;
  dvPtr: number;
  dvRowStride: number;
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
  /** Element kinds (assembly/half.ts) of Q, K, V and dO, and of the dK and dV written. */
  qKind: number;
  kKind: number;
  vKind: number;
  dOKind: number;
  dkKind: number;
  dvKind: number;
}

/** backwardDkDv's arguments in its parameter order. */
export function backwardArgs(j: BackwardJob): number[] {
  return [
    j.qPtr,
    j.qRowStride,
    j.qHeadStride,
    j.kPtr,
    j.kRowStride,
    j.vPtr,
    j.vRowStride,
    j.dOPtr,
    j.dORowStride,
    j.dOHeadStride,
    j.lsePtr,
    j.dPtr,
    j.lseRowStride,
    j.lseHeadStride,
    j.dqPtr,
    j.dqRowStride,
    j.dqHeadStride,
    j.dkPtr,
    j.dkRowStride,
    j.dvPtr,
    j.dvRowStride,
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
    j.qKind,
    j.kKind,
    j.vKind,
    j.dOKind,
    j.dkKind,
    j.dvKind,
  ];
}

/** The caller's arrays a backward reads besides q, k, v: O and dO (O's layout, each of its dtype) and lse. */
export interface BackwardInputs {
  o: ElementData;
  dOut: ElementData;
  oDtype: Dtype;
  dOutDtype: Dtype;
  lse: Float32Array;
}

/** The gradients' dtype: f32 (the kernels' dkKind, dvKind and dqKind). */
const GRAD_KIND = ELEMENT_KIND.f32;

/** The caller-side gradient arrays a run fills. */
export interface Gradients {
  dq: Float32Array;
  dk: Float32Array;
  dv: Float32Array;
}

/** A step of a backward plan: stage, run the steps in order, copy the gradients out. */
export interface BackwardPhase {
  stage(memory: ArrayBufferLike): void;
  steps: Step[];
  unstage(memory: ArrayBufferLike, grads: Gradients): void;
}

/** A whole backward call. */
export interface BackwardPlan {
  phases: BackwardPhase[];
  /** One past the last byte any phase uses. */
  endPtr: number;
}

/** How a runner wants a backward laid out and cut. */
export interface BackwardPlanConfig {
  sramBytes: number;
  /** Block size (Br = Bc = B) the kernels derive from sramBytes. */
  B: number;
  hbmPtr: number;
  slabBudgetBytes: number;
  /** dQ merge jobs per head group (whole query blocks each); the dK/dV jobs are the segments. */
  queryJobsPerGroup: number;
}

/** Most segments a head group's keys are cut into: assembly/backward.ts's DQ_SEGMENTS. */
export const DQ_SEGMENTS = 8;

/**
 * The key ranges of a sequence's segments: at most DQ_SEGMENTS runs of whole key blocks of B (none
 * without keys), cut so that each holds about the same number of tiles to compute — with causal
 * masking the first key blocks are seen by many more query blocks than the last — by the kernel's
 * own rule (blockKeys). It depends on the problem alone, so every runner cuts the same segments and
 * sums dQ in the same order.
 */
export function segmentsOf(Nq: number, Nk: number, g: number, B: number, visible: KeyVisibility): [number, number][] {
  if (Nk === 0) return [];
  const rows = Nq * g;
  const blocks = Math.ceil(Nk / B);
  // Tiles per key block (at least 1, so that blocks no query sees still spread out): each query
  // block adds 1 to the key blocks it meets, recorded as a difference array and summed once, so the
  // count takes O(Tr + Tc) steps rather than O(Tr·Tc) (the IO model runs this for long sequences).
  const delta = new Float64Array(blocks + 1);
  for (let i0 = 0; i0 < rows; i0 += B) {
    const [lo, hi] = blockKeys(visible, i0, Math.min(B, rows - i0), g);
    if (lo >= hi) continue;
    delta[Math.floor(lo / B)]++;
    delta[Math.ceil(hi / B)]--;
  }
  const work = new Array<number>(blocks);
  for (let j = 0, running = 1; j < blocks; j++) work[j] = running += delta[j];
  const total = work.reduce((a, w) => a + w, 0);
  const count = Math.min(DQ_SEGMENTS, blocks);
  const ranges: [number, number][] = [];
  let begin = 0;
  let done = 0;
  for (let j = 0; j < blocks; j++) {
    done += work[j];
    // Close a segment once it reaches its share of the work (the last one takes the rest).
    if (ranges.length < count - 1 && done >= (total * (ranges.length + 1)) / count) {
      ranges.push([begin * B, Math.min(Nk, (j + 1) * B)]);
      begin = j + 1;
    }
  }
  if (begin < blocks) ranges.push([begin * B, Nk]);
  return ranges;
}

/** A sequence's segments in a validated problem. */
const segmentsFor = (p: AttentionProblem, s: Sequence, B: number) =>
  segmentsOf(
    s.Nq,
    s.Nk,
    p.group,
    B,
    keyVisibility(s.Nk, p.topLeft ? 0 : s.Nk - s.Nq, p.windowLeft, p.windowRight),
  );

/** Floats of a sequence's partial dQ: every segment's rows of every head. */
const partialFloats = (p: AttentionProblem, s: Sequence, B: number) => segmentsFor(p, s, B).length * s.Nq * p.H * p.d;

/** Bytes of one sequence's slab: its inputs (each of its dtype), its f32 gradients and the partial dQ. */
function slabBytes(p: AttentionProblem, inputs: BackwardInputs, s: Sequence, e: SlabExtents, B: number): number {
  const size = elementSizes(p);
  const inputBytes = size.q * e.q + size.k * e.k + size.v * e.v +
    (bytesOf(inputs.oDtype) + bytesOf(inputs.dOutDtype)) * e.o;
  return inputBytes + 4 * (e.q + e.k + e.v + 2 * e.lse + partialFloats(p, s, B)) + maskElementBytes(p) * e.mask;
}

/** Extents of a sequence's tensors; lse and D are staged as [H][Nq] whatever the caller's layout. */
function extentsOf(p: AttentionProblem, s: Sequence): SlabExtents {
  return { ...slabExtents({ ...p, returnLse: false, resident: undefined }, s), lse: p.H * s.Nq };
}

/**
 * Lays out a validated problem's backward. Nothing is copied or computed here; the memory need is
 * checked against WebAssembly's limit first.
 */
export function planBackward(p: AttentionProblem, inputs: BackwardInputs, config: BackwardPlanConfig): BackwardPlan {
  const phases: BackwardPhase[] = [];
  let endPtr = config.hbmPtr;
  let batch: Sequence[] = [];
  let batchBytes = 0;
  const flush = () => {
    if (batch.length === 0) return;
    const phase = planSlabs(p, inputs, config, batch);
    phases.push(phase);
    endPtr = Math.max(endPtr, phase.endPtr);
    batch = [];
    batchBytes = 0;
  };
  for (const s of p.sequences) {
    if (s.Nq === 0) continue; // no query: its keys get no gradient (the arrays start at zero)
    const bytes = slabBytes(p, inputs, s, extentsOf(p, s), config.B);
    if (batchBytes + bytes > config.slabBudgetBytes) flush();
    batch.push(s);
    batchBytes += bytes;
  }
  flush();
  checkAddressable(endPtr, "the backward of one sequence of this call", p.shapes);
  return { phases, endPtr };
}

/** Which of Q and dO a slab stages group-major (see groupMajor). */
interface Grouped {
  q: boolean;
  dO: boolean;
}

/**
 * Whether Q and dO are staged group-major, [position][head of the group][dim] per K/V head group, so
 * that a group's virtual rows (position ⌊r/g⌋ of its head r mod g) are contiguous: the dK/dV
 * kernel streams them once per key segment, and rows spread over the tensor (bshd: a position every
 * H·d elements; bhsd with g > 1: the group's heads Nq·d apart) defeat the CPU's prefetchers and TLB,
 * as K and V did in the forward (src/_plan.ts, headMajor). Only where the caller's layout does not
 * already keep them together; the staging copies every element once either way.
 */
function groupMajor(p: AttentionProblem, s: Sequence, e: { q: number; o: number }): Grouped {
  const g = p.group;
  const together = (strides: { row: number; head: number }, dim: number) =>
    strides.row === g * dim && (g === 1 || strides.head === dim);
  return {
    q: !together(p.qStrides, p.d) && e.q >= p.H * s.Nq * p.d,
    dO: !together(p.oStrides, p.dv) && e.o >= p.H * s.Nq * p.dv,
  };
}

/** Copies a sequence's rows of `data` (at `base`, with `strides`) group-major into `hbm` from element `at`. */
function stageGrouped(
  hbm: ElementData,
  at: number,
  data: ElementData,
  base: number,
  strides: { row: number; head: number },
  p: AttentionProblem,
  s: Sequence,
  dim: number,
): void {
  const g = p.group;
  for (let h = 0; h < p.H; h++) {
    const group = at + Math.floor(h / g) * s.Nq * g * dim + (h % g) * dim;
    copyRows(hbm, group, g * dim, data, base + h * strides.head, strides.row, s.Nq, dim);
  }
}

function planSlabs(
  p: AttentionProblem,
  inputs: BackwardInputs,
  config: BackwardPlanConfig,
  sequences: Sequence[],
): BackwardPhase & { endPtr: number } {
  const prep: number[][] = [];
  const dkdv: number[][] = [];
  const merge: number[][] = [];
  const slabs: { s: Sequence; e: SlabExtents; ptrs: Record<string, number>; grouped: Grouped }[] = [];
  const elementBytes = maskElementBytes(p);
  const m = p.mask?.strides ?? [0, 0, 0, 0];
  const g = p.group;
  const size = { ...elementSizes(p), o: bytesOf(inputs.oDtype), dO: bytesOf(inputs.dOutDtype) };
  const { qKind, kKind, vKind } = elementKinds(p);
  const oKind = ELEMENT_KIND[inputs.oDtype];
  const dOKind = ELEMENT_KIND[inputs.dOutDtype];
  let at = config.hbmPtr;
  for (const s of sequences) {
    const e = extentsOf(p, s);
    const segments = segmentsFor(p, s, config.B);
    const rows = s.Nq * g; // virtual rows of a head group
    const ptrs = place(at, {
      partPtr: 4 * partialFloats(p, s, config.B),
      qPtr: size.q * e.q,
      kPtr: size.k * e.k,
      vPtr: size.v * e.v,
      oPtr: size.o * e.o,
      dOPtr: size.dO * e.o,
      lsePtr: 4 * e.lse,
      dPtr: 4 * e.lse,
      dqPtr: 4 * e.q,
      dkPtr: 4 * e.k,
      dvPtr: 4 * e.v,
      maskPtr: elementBytes * e.mask,
      slopesPtr: p.alibiSlopes ? 4 * p.H : 0,
    });
    const grouped = groupMajor(p, s, e);
    for (let kvh = 0; kvh < p.Hkv; kvh++) {
      const h0 = kvh * g; // first query head of the group
      // Q and dO of the group: staged group-major ([position][head of the group][dim]) where the
      // caller's layout does not already keep a group's virtual rows together (groupMajor).
      const q = grouped.q
        ? { ptr: ptrs.qPtr + size.q * kvh * s.Nq * g * p.d, row: g * p.d, head: p.d }
        : { ptr: ptrs.qPtr + size.q * h0 * p.qStrides.head, row: p.qStrides.row, head: p.qStrides.head };
      const dO = grouped.dO
        ? { ptr: ptrs.dOPtr + size.dO * kvh * s.Nq * g * p.dv, row: g * p.dv, head: p.dv }
        : { ptr: ptrs.dOPtr + size.dO * h0 * p.oStrides.head, row: p.oStrides.row, head: p.oStrides.head };
      prep.push([
        ptrs.oPtr + size.o * h0 * p.oStrides.head,
        p.oStrides.row,
        p.oStrides.head,
        dO.ptr,
        dO.row,
        dO.head,
        ptrs.dPtr + 4 * h0 * s.Nq,
        1,
        s.Nq,
        s.Nq * g,
        g,
        p.d,
        p.dv,
        p.mask === undefined ? 0 : 1,
        config.sramBytes,
        oKind,
        dOKind,
      ]);
      const group: BackwardJob = {
        qPtr: q.ptr,
        qRowStride: q.row,
        qHeadStride: q.head,
        kPtr: ptrs.kPtr + size.k * kvh * p.kStrides.head,
        kRowStride: p.kStrides.row,
        vPtr: ptrs.vPtr + size.v * kvh * p.vStrides.head,
        vRowStride: p.vStrides.row,
        dOPtr: dO.ptr,
        dORowStride: dO.row,
        dOHeadStride: dO.head,
        lsePtr: ptrs.lsePtr + 4 * h0 * s.Nq,
        dPtr: ptrs.dPtr + 4 * h0 * s.Nq,
        lseRowStride: 1,
        lseHeadStride: s.Nq,
        dqPtr: ptrs.dqPtr + 4 * h0 * p.qStrides.head,
        dqRowStride: p.qStrides.row,
        dqHeadStride: p.qStrides.head,
        dkPtr: ptrs.dkPtr + 4 * kvh * p.kStrides.head,
        dkRowStride: p.kStrides.row,
        dvPtr: ptrs.dvPtr + 4 * kvh * p.vStrides.head,
        dvRowStride: p.vStrides.row,
        Nq: s.Nq,
        g,
        keyBegin: 0,
        keyEnd: s.Nk,
        d: p.d,
        dv: p.dv,
        scale: p.scale,
        softcap: p.softcap,
        visOffset: p.topLeft ? 0 : s.Nk - s.Nq,
        windowLeft: p.windowLeft,
        windowRight: p.windowRight,
        slopesPtr: p.alibiSlopes ? ptrs.slopesPtr + 4 * h0 : 0,
        alibiOffset: s.Nk - s.Nq,
        maskPtr: p.mask ? ptrs.maskPtr + elementBytes * h0 * m[1] : 0,
        maskKind: maskKind(p),
        maskRowStride: m[2],
        maskHeadStride: m[1],
        maskColStride: m[3],
        sramBytes: config.sramBytes,
        qKind,
        kKind,
        vKind,
        dOKind,
        dkKind: GRAD_KIND,
        dvKind: GRAD_KIND,
      };
      // dK, dV and partial dQ: one job per segment, its partial at partial + s·rows·d (virtual rows).
      const partPtr = ptrs.partPtr + 4 * kvh * segments.length * rows * p.d;
      segments.forEach(([keyBegin, keyEnd], t) =>
        dkdv.push(backwardArgs({
          ...group,
          dqPtr: partPtr + 4 * t * rows * p.d,
          dqRowStride: g * p.d,
          dqHeadStride: p.d,
          keyBegin,
          keyEnd,
        }))
      );
      // dQ: the partials summed, jobs over whole query blocks of the group's rows.
      const step = positionsPerJob({ Br: config.B }, g, s.Nq, config.queryJobsPerGroup);
      for (let i0 = 0; i0 < s.Nq; i0 += step) {
        merge.push([
          partPtr + 4 * i0 * g * p.d,
          segments.length,
          rows * p.d,
          Math.min(step, s.Nq - i0) * g,
          group.dqPtr + 4 * i0 * group.dqRowStride,
          group.dqRowStride,
          group.dqHeadStride,
          g,
          p.d,
          p.dv,
          p.mask === undefined ? 0 : 1,
          config.sramBytes,
          GRAD_KIND,
        ]);
      }
    }
    slabs.push({ s, e, ptrs, grouped });
    at = ptrs.end;
  }
  return {
    steps: [
      { kernel: "backwardPrep", args: prep },
      { kernel: "backwardDkDv", args: dkdv },
      { kernel: "backwardDqMerge", args: merge },
    ],
    endPtr: at,
    stage(memory) {
      const hbm = new Float32Array(memory);
      for (const { s, e, ptrs, grouped } of slabs) {
        if (grouped.q) {
          stageGrouped(viewOf(memory, p.dtypes.q), ptrs.qPtr / size.q, p.q, s.qBase, p.qStrides, p, s, p.d);
        } else stageArray(memory, ptrs.qPtr, p.q.subarray(s.qBase, s.qBase + e.q));
        stageArray(memory, ptrs.kPtr, p.k.subarray(s.kBase, s.kBase + e.k));
        stageArray(memory, ptrs.vPtr, p.v.subarray(s.vBase, s.vBase + e.v));
        stageArray(memory, ptrs.oPtr, inputs.o.subarray(s.oBase, s.oBase + e.o));
        if (grouped.dO) {
          const hbmDO = viewOf(memory, inputs.dOutDtype);
          stageGrouped(hbmDO, ptrs.dOPtr / size.dO, inputs.dOut, s.oBase, p.oStrides, p, s, p.dv);
        } else stageArray(memory, ptrs.dOPtr, inputs.dOut.subarray(s.oBase, s.oBase + e.o));
        for (let h = 0; h < p.H; h++) {
          const from = s.lseBase + h * p.lseStrides.head;
          hbm.set(inputs.lse.subarray(from, from + s.Nq), ptrs.lsePtr / 4 + h * s.Nq);
        }
        // The partial dQ starts at zero; gradient rows no kernel writes (keys past a sequence's length
        // between heads) read back as 0.
        hbm.fill(0, ptrs.partPtr / 4, ptrs.partPtr / 4 + partialFloats(p, s, config.B));
        hbm.fill(0, ptrs.dqPtr / 4, ptrs.dqPtr / 4 + e.q);
        hbm.fill(0, ptrs.dkPtr / 4, ptrs.dkPtr / 4 + e.k);
        hbm.fill(0, ptrs.dvPtr / 4, ptrs.dvPtr / 4 + e.v);
        if (p.mask && e.mask > 0) {
          stageArray(memory, ptrs.maskPtr, p.mask.data.subarray(e.maskBase, e.maskBase + e.mask));
        }
        const base = slopeBase(p, s);
        if (p.alibiSlopes) hbm.set(p.alibiSlopes.subarray(base, base + p.H), ptrs.slopesPtr / 4);
      }
    },
    unstage(memory, grads) {
      const hbm = new Float32Array(memory);
      for (const { s, e, ptrs } of slabs) {
        grads.dq.set(hbm.subarray(ptrs.dqPtr / 4, ptrs.dqPtr / 4 + e.q), s.qBase);
        grads.dk.set(hbm.subarray(ptrs.dkPtr / 4, ptrs.dkPtr / 4 + e.k), s.kBase);
        grads.dv.set(hbm.subarray(ptrs.dvPtr / 4, ptrs.dvPtr / 4 + e.v), s.vBase);
      }
    },
  };
}
