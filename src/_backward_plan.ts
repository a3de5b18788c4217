// The plan of a backward call: where every tensor goes in HBM and which kernel calls to make, as
// steps that any runner (the calling thread, the pool) executes in order. Per phase:
//   1. backwardPrep: D = rowsum(dO ∘ O), one job per head group;
//   2. backwardDq:   dQ, jobs over whole query blocks of each head group;
//   3. backwardDkDv: dK and dV, jobs over whole key blocks of each K/V head.
// Every output element is written by exactly one kernel call, summing in a fixed order, and jobs
// are cut only at block edges (blocks of B from the sequence's first row and first key), so every
// cut, on any number of Workers, gives the bits of the one-call-per-group run (assembly/backward.ts).
//
// Placement: each sequence is staged whole (every head of q, k, v, O, dO, lse, and room for D, dQ,
// dK, dV): the dK/dV kernel reads every query of a head group for each key block, so the backward's
// working set is the sequence itself, O(N·d). Consecutive sequences share a phase while their slabs
// total at most slabBudgetBytes; a larger sequence gets a phase of its own.

import {
  checkAddressable,
  maskElementBytes,
  maskKind,
  place,
  positionsPerJob,
  type SlabExtents,
  slabExtents,
  slopeBase,
  type Step,
} from "./_plan.ts";
import type { AttentionProblem, Sequence } from "./_problem.ts";
import { splitRanges } from "./_splits.ts";

/** One call of backwardDq or backwardDkDv (assembly/backward.ts), argument for argument. */
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
}

/** The arguments of backwardDq and backwardDkDv in their parameter order. */
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
  ];
}

/** The caller's arrays a backward reads besides q, k, v: O and dO (O's layout) and lse. */
export interface BackwardInputs {
  o: Float32Array;
  dOut: Float32Array;
  lse: Float32Array;
}

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
  /** dQ jobs per head group (whole query blocks each). */
  queryJobsPerGroup: number;
  /** dK/dV jobs per K/V head (whole key blocks each). */
  keyJobsPerGroup: number;
}

/** Bytes of one sequence's slab: its inputs and its gradients. */
function slabBytes(p: AttentionProblem, e: SlabExtents): number {
  return 4 * (2 * e.q + 2 * e.k + 2 * e.v + 2 * e.o + 2 * e.lse) + maskElementBytes(p) * e.mask;
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
    const bytes = slabBytes(p, extentsOf(p, s));
    if (batchBytes + bytes > config.slabBudgetBytes) flush();
    batch.push(s);
    batchBytes += bytes;
  }
  flush();
  checkAddressable(endPtr, "the backward of one sequence of this call", p.shapes);
  return { phases, endPtr };
}

function planSlabs(
  p: AttentionProblem,
  inputs: BackwardInputs,
  config: BackwardPlanConfig,
  sequences: Sequence[],
): BackwardPhase & { endPtr: number } {
  const prep: number[][] = [];
  const dq: number[][] = [];
  const dkdv: number[][] = [];
  const slabs: { s: Sequence; e: SlabExtents; ptrs: Record<string, number> }[] = [];
  const elementBytes = maskElementBytes(p);
  const m = p.mask?.strides ?? [0, 0, 0, 0];
  const g = p.group;
  let at = config.hbmPtr;
  for (const s of sequences) {
    const e = extentsOf(p, s);
    const ptrs = place(at, {
      qPtr: 4 * e.q,
      kPtr: 4 * e.k,
      vPtr: 4 * e.v,
      oPtr: 4 * e.o,
      dOPtr: 4 * e.o,
      lsePtr: 4 * e.lse,
      dPtr: 4 * e.lse,
      dqPtr: 4 * e.q,
      dkPtr: 4 * e.k,
      dvPtr: 4 * e.v,
      maskPtr: elementBytes * e.mask,
      slopesPtr: p.alibiSlopes ? 4 * p.H : 0,
    });
    for (let kvh = 0; kvh < p.Hkv; kvh++) {
      const h0 = kvh * g; // first query head of the group
      prep.push([
        ptrs.oPtr + 4 * h0 * p.oStrides.head,
        p.oStrides.row,
        p.oStrides.head,
        ptrs.dOPtr + 4 * h0 * p.oStrides.head,
        p.oStrides.row,
        p.oStrides.head,
        ptrs.dPtr + 4 * h0 * s.Nq,
        1,
        s.Nq,
        s.Nq * g,
        g,
        p.d,
        p.dv,
        p.mask === undefined ? 0 : 1,
        config.sramBytes,
      ]);
      const group: BackwardJob = {
        qPtr: ptrs.qPtr + 4 * h0 * p.qStrides.head,
        qRowStride: p.qStrides.row,
        qHeadStride: p.qStrides.head,
        kPtr: ptrs.kPtr + 4 * kvh * p.kStrides.head,
        kRowStride: p.kStrides.row,
        vPtr: ptrs.vPtr + 4 * kvh * p.vStrides.head,
        vRowStride: p.vStrides.row,
        dOPtr: ptrs.dOPtr + 4 * h0 * p.oStrides.head,
        dORowStride: p.oStrides.row,
        dOHeadStride: p.oStrides.head,
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
      };
      // dQ: whole query blocks of the group's Nq·g virtual rows per job.
      const step = positionsPerJob({ Br: config.B }, g, s.Nq, config.queryJobsPerGroup);
      for (let i0 = 0; i0 < s.Nq; i0 += step) {
        dq.push(backwardArgs({
          ...group,
          qPtr: group.qPtr + 4 * i0 * group.qRowStride,
          dOPtr: group.dOPtr + 4 * i0 * group.dORowStride,
          lsePtr: group.lsePtr + 4 * i0,
          dPtr: group.dPtr + 4 * i0,
          dqPtr: group.dqPtr + 4 * i0 * group.dqRowStride,
          Nq: Math.min(step, s.Nq - i0),
          visOffset: group.visOffset + i0,
          alibiOffset: group.alibiOffset + i0,
          maskPtr: group.maskPtr === 0 ? 0 : group.maskPtr + elementBytes * i0 * group.maskRowStride,
        }));
      }
      // dK, dV: whole key blocks per job, every query of the group.
      for (const [keyBegin, keyEnd] of splitRanges(s.Nk, config.keyJobsPerGroup, config.B)) {
        dkdv.push(backwardArgs({ ...group, keyBegin, keyEnd }));
      }
    }
    slabs.push({ s, e, ptrs });
    at = ptrs.end;
  }
  return {
    steps: [
      { kernel: "backwardPrep", args: prep },
      { kernel: "backwardDq", args: dq },
      { kernel: "backwardDkDv", args: dkdv },
    ],
    endPtr: at,
    stage(memory) {
      const hbm = new Float32Array(memory);
      for (const { s, e, ptrs } of slabs) {
        hbm.set(p.q.subarray(s.qBase, s.qBase + e.q), ptrs.qPtr / 4);
        hbm.set(p.k.subarray(s.kBase, s.kBase + e.k), ptrs.kPtr / 4);
        hbm.set(p.v.subarray(s.vBase, s.vBase + e.v), ptrs.vPtr / 4);
        hbm.set(inputs.o.subarray(s.oBase, s.oBase + e.o), ptrs.oPtr / 4);
        hbm.set(inputs.dOut.subarray(s.oBase, s.oBase + e.o), ptrs.dOPtr / 4);
        for (let h = 0; h < p.H; h++) {
          const from = s.lseBase + h * p.lseStrides.head;
          hbm.set(inputs.lse.subarray(from, from + s.Nq), ptrs.lsePtr / 4 + h * s.Nq);
        }
        // Gradient rows no kernel writes (keys past a sequence's length between heads) read back as 0.
        hbm.fill(0, ptrs.dqPtr / 4, ptrs.dqPtr / 4 + e.q);
        hbm.fill(0, ptrs.dkPtr / 4, ptrs.dkPtr / 4 + e.k);
        hbm.fill(0, ptrs.dvPtr / 4, ptrs.dvPtr / 4 + e.v);
        if (p.mask && e.mask > 0) {
          const target = elementBytes === 1 ? new Uint8Array(memory) : hbm;
          target.set(p.mask.data.subarray(e.maskBase, e.maskBase + e.mask), ptrs.maskPtr / elementBytes);
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
