// What validation hands to the plan, the runners and the reference: a call described as a list of
// sequences with element offsets and strides into the caller's arrays. Types only (a leaf).

import type { ElementData } from "./_half.ts";
import type { Dtype, Float16ArrayLike, Layout } from "./tensor.ts";
import type { WasmMemory } from "./wasm/loader.ts";

/** Element strides of a q/k/v/o tensor: per sequence position (row) and per head. */
export interface Strides {
  row: number;
  head: number;
}

/** One sequence of the call: a batch entry, or one packed sequence of a varlen call. */
export interface Sequence {
  /** Batch index (selects ALiBi slopes of shape [B, H] and the mask's batch). */
  b: number;
  /** Element offsets of the sequence's first row, head 0, in q, k, v and the output. */
  qBase: number;
  kBase: number;
  vBase: number;
  oBase: number;
  /** Offset of its first query's lse, head 0. */
  lseBase: number;
  /** Number of queries and of valid keys (keys past Nk do not exist). */
  Nq: number;
  Nk: number;
}

/** How masking, biases and capping apply to scores, after validation. */
export interface ScoreOptions {
  scale: number;
  /** 0 = off. */
  softcap: number;
  /** Window bounds, −1 = unbounded; causal is [−1, 0]. */
  windowLeft: number;
  windowRight: number;
  /** Causal/window alignment: bottom-right (i + Nk − Nq) or top-left (i). */
  topLeft: boolean;
  /** Per-head slopes, length H or B·H; the bias is −slope·|i + Nk − Nq − j|. */
  alibiSlopes: Float32Array | undefined;
  mask: ValidMask | undefined;
}

/** A mask with element strides broadcast to [B, H, Nq, Nk] (0 on broadcast axes). */
export interface ValidMask {
  data: Float32Array | Uint8Array;
  strides: [number, number, number, number];
}

/** A validated attention call. */
export interface AttentionProblem extends ScoreOptions {
  B: number;
  H: number;
  Hkv: number;
  d: number;
  dv: number;
  /** Query heads per K/V head, H / Hkv. */
  group: number;
  layout: Layout | "thd";
  returnLse: boolean;
  /** The caller's q, k and v: f32 values or 16-bit elements' bits, as `dtypes` says. */
  q: ElementData;
  k: ElementData;
  v: ElementData;
  /** How q, k, v are stored, and how O is to be (lse is always f32). */
  dtypes: { q: Dtype; k: Dtype; v: Dtype; o: Dtype };
  qStrides: Strides;
  kStrides: Strides;
  vStrides: Strides;
  oStrides: Strides;
  /** lse element strides: per query position and per head. */
  lseStrides: Strides;
  sequences: Sequence[];
  /** The shapes of q, k and v as the caller passed them (the backward's gradients have them). */
  qShape: number[];
  kShape: number[];
  vShape: number[];
  oShape: number[];
  oLength: number;
  lseShape: number[];
  lseLength: number;
  /** "q.shape is [..], k.shape is [..], v.shape is [..]", for messages of later checks. */
  shapes: string;
  /**
   * K and V already in HBM (a KV cache that lives there): `k` and `v` are then empty and the
   * sequences' kBase, vBase and the strides address `memory` from kPtr and vPtr (bytes).
   */
  resident?: { memory: WasmMemory; kPtr: number; vPtr: number };
}

/** Rows to write into caller-owned KV caches once every check has passed. */
export interface CacheAppend {
  kCache: ElementData;
  vCache: ElementData;
  /** Element offset of each batch entry's first new row in the caches, in rows (b·maxLen + length). */
  rowAt: Int32Array;
  Nnew: number;
  kNew: ElementData;
  vNew: ElementData;
  /** The caches' and the new rows' dtypes: rows are converted to the cache's (rounded when narrower). */
  dtypes: { kCache: Dtype; vCache: Dtype; kNew: Dtype; vNew: Dtype };
  /** Elements per cache row: Hkv·d and Hkv·dv. */
  kRow: number;
  vRow: number;
}

/**
 * A validated call: the problem and how to run it. Everything here was checked without the
 * kernels; the plan adds what needs them (blocks that fit the arena, the memory limit).
 */
export interface AttentionCall {
  problem: AttentionProblem;
  /** The caller's output buffer, checked for size, dtype and overlap. */
  out: OutBuffer | undefined;
  /** Arena size, in range; whether it holds a tile is the plan's check. */
  sramBytes: number;
  stats: boolean;
  /** Split-KV: 0 lets the runner choose (one thread never splits), otherwise the count asked for. */
  numSplits: number;
  /** KV-cache appends to make after the plan's checks, before running. */
  append?: CacheAppend;
  /** A resident KV cache the call reads, which must not be reset or freed while it runs. */
  cache?: { hold(): () => void };
}

/** A caller's `out`: the view the runners write (a Float16Array's bits), and the array to return. */
export interface OutBuffer {
  view: ElementData;
  data: Float32Array | Uint16Array | Float16ArrayLike;
}

/** A validated backward call: the forward's problem, the arrays the backward reads, and how to run it. */
export interface BackwardCall {
  problem: AttentionProblem;
  /** The forward's output O and the output's gradient dO (O's shape and layout), and the forward's lse. */
  o: ElementData;
  dOut: ElementData;
  /** How O and dO are stored. */
  oDtype: Dtype;
  dOutDtype: Dtype;
  lse: Float32Array;
  /** Caller buffers for the gradients, checked for size and overlap. */
  out: { dq?: Float32Array; dk?: Float32Array; dv?: Float32Array };
  sramBytes: number;
  stats: boolean;
}
