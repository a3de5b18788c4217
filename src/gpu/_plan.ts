// The plan of a WebGPU forward call: the validated problem (src/_validate.ts) as one dispatch.
// Every tensor is bound whole and addressed with the problem's element offsets and strides, so
// the caller's arrays upload as they are (and GPU tensors are bound where they are). One
// workgroup per work item (sequence, K/V head, query block of Br virtual rows); the items are
// listed heaviest first (most visible keys), so a causal call's long blocks start before the
// short ones instead of finishing last. Nothing depends on the order but the schedule: each item
// writes only its own rows.

import { message } from "../_messages.ts";
import { slopeBase } from "../_plan.ts";
import type { AttentionProblem } from "../_problem.ts";
import { blockKeys, keyVisibility } from "../_visibility.ts";
import { ELEMENT_KIND } from "../_half.ts";
import {
  type ForwardKernelConfig,
  ITEM_WORDS,
  MASK_F32,
  MASK_NONE,
  MASK_U8,
  PARAM,
  PARAM_WORDS,
  SEQUENCE_WORDS,
} from "./shaders/forward.ts";
import type { GpuBlocks } from "./_tiling.ts";

/** A call laid out for the kernel. */
export interface GpuPlan {
  kernel: ForwardKernelConfig;
  /** The uniform parameters (PARAM's layout). */
  params: ArrayBuffer;
  /** Work items, then the sequence table, then the ALiBi slopes (their f32 bits). */
  meta: Uint32Array;
  /** Workgroups in x and y (items beyond the count return at once). */
  grid: [number, number];
  items: number;
}

/** The kernel's mask kind of a problem. */
export const maskKindOf = (p: AttentionProblem): number =>
  p.mask === undefined ? MASK_NONE : p.mask.data instanceof Uint8Array ? MASK_U8 : MASK_F32;

/**
 * Lays out a validated problem for blocks `b`; `maxPerDimension` is the device's
 * maxComputeWorkgroupsPerDimension (a RangeError when even a square grid cannot hold the items);
 * `prefetch` asks for the pipelined kernel (granted without a mask).
 */
export function planGpuForward(
  p: AttentionProblem,
  b: GpuBlocks,
  maxPerDimension: number,
  prefetch: boolean,
): GpuPlan {
  const items = queryBlocks(p, b.Br);
  const seqTable = ITEM_WORDS * items.length;
  const slopeTable = seqTable + SEQUENCE_WORDS * p.sequences.length;
  const meta = new Uint32Array(slopeTable + (p.alibiSlopes?.length ?? 0));
  items.forEach((item, n) => meta.set(item, ITEM_WORDS * n));
  writeSequences(p, meta, seqTable, slopeTable);
  const [gridX] = grid(items.length, maxPerDimension, p.shapes);
  const g = p.group;

  const params = new ArrayBuffer(4 * PARAM_WORDS);
  const u32 = new Uint32Array(params);
  const i32 = new Int32Array(params);
  const f32 = new Float32Array(params);
  const m = p.mask?.strides ?? [0, 0, 0, 0];
  u32[PARAM.items] = items.length;
  u32[PARAM.g] = g;
  u32[PARAM.seqTable] = seqTable;
  u32[PARAM.slopeTable] = slopeTable;
  u32[PARAM.qRow] = p.qStrides.row;
  u32[PARAM.qHead] = p.qStrides.head;
  u32[PARAM.kRow] = p.kStrides.row;
  u32[PARAM.kHead] = p.kStrides.head;
  u32[PARAM.vRow] = p.vStrides.row;
  u32[PARAM.vHead] = p.vStrides.head;
  u32[PARAM.oRow] = p.oStrides.row;
  u32[PARAM.oHead] = p.oStrides.head;
  u32[PARAM.lseRow] = p.lseStrides.row;
  u32[PARAM.lseHead] = p.lseStrides.head;
  u32[PARAM.returnLse] = p.returnLse ? 1 : 0;
  i32[PARAM.windowLeft] = p.windowLeft;
  i32[PARAM.windowRight] = p.windowRight;
  f32[PARAM.scale] = p.scale;
  f32[PARAM.softcap] = p.softcap;
  u32[PARAM.maskH] = m[1];
  u32[PARAM.maskI] = m[2];
  u32[PARAM.maskJ] = m[3];
  u32[PARAM.gridX] = gridX;

  const kernel: ForwardKernelConfig = {
    Br: b.Br,
    Bc: b.Bc,
    T: b.T,
    d: p.d,
    dv: p.dv,
    scratchFloats: b.scratchFloats,
    qKind: ELEMENT_KIND[p.dtypes.q],
    kKind: ELEMENT_KIND[p.dtypes.k],
    vKind: ELEMENT_KIND[p.dtypes.v],
    oKind: ELEMENT_KIND[p.dtypes.o],
    maskKind: maskKindOf(p),
    alibi: p.alibiSlopes !== undefined,
    softcap: p.softcap !== 0,
    prefetch: prefetch && p.mask === undefined,
  };
  return { kernel, params, meta, grid: grid(items.length, maxPerDimension, p.shapes), items: items.length };
}

/**
 * The work items (sequence, K/V head, first virtual row) of query blocks of Br rows, heaviest first
 * (most visible keys), so a causal call's long blocks start before the short ones.
 */
export function queryBlocks(p: AttentionProblem, Br: number): [number, number, number][] {
  const items: { item: [number, number, number]; weight: number }[] = [];
  p.sequences.forEach((s, seq) => {
    if (s.Nq === 0) return;
    const rows = s.Nq * p.group;
    const visible = keyVisibility(s.Nk, p.topLeft ? 0 : s.Nk - s.Nq, p.windowLeft, p.windowRight);
    for (let i0 = 0; i0 < rows; i0 += Br) {
      const [first, end] = blockKeys(visible, i0, Math.min(Br, rows - i0), p.group);
      const weight = Math.max(0, end - first);
      for (let kvh = 0; kvh < p.Hkv; kvh++) items.push({ item: [seq, kvh, i0], weight });
    }
  });
  items.sort((a, z) => z.weight - a.weight); // stable: equal weights keep sequence order
  return items.map((x) => x.item);
}

/**
 * Writes the sequence table (SEQUENCE_WORDS per sequence: element offsets of q, k, v, O, lse, Nq,
 * Nk, the mask's batch offset, the visibility and ALiBi offsets as i32 bits, the slopes' offset, b)
 * at word `seqTable` of `meta`, and the ALiBi slopes' bits at `slopeTable`.
 */
export function writeSequences(p: AttentionProblem, meta: Uint32Array, seqTable: number, slopeTable: number): void {
  const maskB = p.mask?.strides[0] ?? 0;
  p.sequences.forEach((s, n) => {
    const row = [
      s.qBase,
      s.kBase,
      s.vBase,
      s.oBase,
      s.lseBase,
      s.Nq,
      s.Nk,
      s.b * maskB,
      (p.topLeft ? 0 : s.Nk - s.Nq) >>> 0, // i32 bits
      (s.Nk - s.Nq) >>> 0,
      slopeBase(p, s),
      s.b,
    ];
    meta.set(row, seqTable + SEQUENCE_WORDS * n);
  });
  if (p.alibiSlopes) {
    meta.set(new Uint32Array(p.alibiSlopes.buffer, p.alibiSlopes.byteOffset, p.alibiSlopes.length), slopeTable);
  }
}

/** Workgroups in x and y for `items` (x at most maxPerDimension), or the RangeError when they do not fit. */
export function grid(items: number, maxPerDimension: number, shapes: string): [number, number] {
  const gridX = Math.max(1, Math.min(items, maxPerDimension));
  const gridY = Math.max(1, Math.ceil(items / gridX));
  if (gridY > maxPerDimension) {
    throw new RangeError(
      message(
        `the call needs ${items} workgroups, more than the device's ${maxPerDimension}² (maxComputeWorkgroupsPerDimension squared): ${shapes}`,
      ),
    );
  }
  return [gridX, gridY];
}
