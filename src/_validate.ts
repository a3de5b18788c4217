// The validation stage, shared by every attention function, the pool and the reference: it checks
// everything a caller passes and describes the call as an AttentionProblem (a list of sequences
// with element offsets and strides into the caller's arrays) and an AttentionCall (how to run it).
// Nothing here touches WebAssembly memory, so a call that fails validation leaves the module as it
// was. The checks that need the kernels (an arena that holds a tile, the memory limit) are the
// plan's (_plan.ts), and also run before anything is written.

import { ShapeError } from "./errors.ts";
import { describe, formatShape, message } from "./_messages.ts";
import {
  checkHeadDims,
  checkOptionKeys,
  checkOut,
  checkStats,
  notWithVarlen,
  overlaps,
  readBoolean,
  readCausal,
  readLayout,
  readMask,
  readOutDtype,
  readScale,
  readSlopes,
  readSoftcap,
  readSramBytes,
  readWindow,
  RUN_OPTION_KEYS,
  SEMANTIC_OPTION_KEYS,
  SEQUENCE_OPTION_KEYS,
} from "./_options.ts";
import type { AttentionCall, AttentionProblem, BackwardCall, ScoreOptions } from "./_problem.ts";
import {
  batchSequences,
  checkElementTensor,
  checkInt32Array,
  checkQkv,
  checkTensor,
  type ElementTensor,
  isArrayOf,
  outputShape,
  product,
  type QkvShapes,
  type SequenceList,
  stridesOf,
  type TensorReader,
  varlenSequences,
} from "./_shapes.ts";
import { readSplits } from "./_splits.ts";
import type { ResidentKvCache } from "./_resident_cache.ts";
import type { FlashAttentionBackwardOptions } from "./backward.ts";
import type { FlashAttentionOptions } from "./flash_attention.ts";
import type { KvCacheOptions, ResidentKvCacheOptions } from "./kv_cache.ts";

export type { AttentionCall, AttentionProblem, Sequence, Strides } from "./_problem.ts";

/** Every key of an options type that a key list lacks (never when the list is complete). */
type Unlisted<Options, Keys extends readonly string[]> = Exclude<keyof Options, Keys[number]>;
// Each list names every option of its type, and (satisfies, below) nothing else: an option cannot
// exist in one and not the other.
const _forwardKeysComplete: [Unlisted<FlashAttentionOptions, typeof FORWARD_OPTION_KEYS>] extends [never] ? true
  : never = true;
const _kvKeysComplete: [Unlisted<KvCacheOptions, typeof KV_CACHE_OPTION_KEYS>] extends [never] ? true : never = true;
const _backwardKeysComplete: [Unlisted<FlashAttentionBackwardOptions, typeof BACKWARD_OPTION_KEYS>] extends [never]
  ? true
  : never = true;
const _residentKeysComplete: [Unlisted<ResidentKvCacheOptions, typeof RESIDENT_KV_OPTION_KEYS>] extends [never] ? true
  : never = true;

interface ValidateConfig {
  /** Options this function accepts besides the common ones (already checked for unknown keys). */
  seqLensK?: Int32Array;
  varlen?: { cuSeqlensQ: unknown; cuSeqlensK: unknown };
  /** How q, k, v are read (default checkElementTensor: arrays in the caller's memory). */
  readTensor?: TensorReader;
}

/** Reads the options that change the scores, for q, k, v of `s` and `batch` sequences. */
function readScoreOptions(options: Record<string, unknown>, s: QkvShapes, batch: number): ScoreOptions {
  const varlen = s.layout === "thd";
  const scale = readScale(options.scale, s.d);
  const softcap = readSoftcap(options.softcap);
  const causal = readCausal(options.causal);
  const [windowLeft, windowRight] = readWindow(options.windowSize, causal, Math.max(s.Nq, s.Nk));
  const alibiSlopes = readSlopes(options.alibiSlopes, s.H, batch, varlen);
  let mask;
  if (options.mask !== undefined) {
    if (varlen) throw notWithVarlen("mask");
    mask = readMask(options.mask, [s.B, s.H, s.Nq, s.Nk]);
  }
  return { scale, softcap, windowLeft, windowRight, topLeft: causal === "top-left", alibiSlopes, mask };
}

/**
 * Validates q, k, v and the common options: shape checks, then the sequences, then the options
 * that change the scores. `extra` carries the per-function sequence options: seqLensK (valid keys
 * per batch entry) or varlen packing.
 */
export function validateAttention(
  q: unknown,
  k: unknown,
  v: unknown,
  options: Record<string, unknown>,
  extra: ValidateConfig = {},
): AttentionProblem {
  const varlen = extra.varlen !== undefined;
  const layout = readLayout(options.layout, varlen);
  const s = checkQkv(q, k, v, varlen ? "thd" : layout, extra.readTensor);
  const list: SequenceList = varlen
    ? varlenSequences(s, extra.varlen!.cuSeqlensQ, extra.varlen!.cuSeqlensK)
    : batchSequences(s, extra.seqLensK);
  return problemOf(s, list, readScoreOptions(options, s, list.batch), options);
}

/** Assembles a problem from checked shapes, its sequences and its score options. */
function problemOf(
  s: QkvShapes,
  list: SequenceList,
  score: ScoreOptions,
  options: Record<string, unknown>,
): AttentionProblem {
  const oShape = outputShape(s);
  const lseShape = list.lseShape;
  return {
    B: list.batch,
    H: s.H,
    Hkv: s.Hkv,
    d: s.d,
    dv: s.dv,
    group: s.H / s.Hkv,
    layout: s.layout,
    returnLse: readBoolean("returnLse", options.returnLse),
    ...score,
    q: s.q.data,
    k: s.k.data,
    v: s.v.data,
    dtypes: { q: s.q.dtype, k: s.k.dtype, v: s.v.dtype, o: readOutDtype(options.outDtype) },
    qStrides: stridesOf(s.layout, s.H, s.Nq, s.d),
    kStrides: stridesOf(s.layout, s.Hkv, s.Nk, s.d),
    vStrides: stridesOf(s.layout, s.Hkv, s.Nk, s.dv),
    oStrides: stridesOf(s.layout, s.H, s.Nq, s.dv),
    lseStrides: list.lseStrides,
    sequences: list.sequences,
    qShape: [...s.q.shape],
    kShape: [...s.k.shape],
    vShape: [...s.v.shape],
    oShape,
    oLength: product(oShape),
    lseShape,
    lseLength: product(lseShape),
    shapes: `q.shape is ${formatShape(s.q.shape)}, k.shape is ${formatShape(s.k.shape)}, v.shape is ${
      formatShape(s.v.shape)
    }`,
  };
}

/**
 * Validates a call whose options may carry per-sequence key lengths (`seqLensK`) or varlen
 * packing (`cuSeqlensQ`, `cuSeqlensK`), which exclude each other.
 */
export function validateCall(
  q: unknown,
  k: unknown,
  v: unknown,
  opts: Record<string, unknown>,
  readTensor?: TensorReader,
): AttentionProblem {
  const varlen = opts.cuSeqlensQ !== undefined || opts.cuSeqlensK !== undefined;
  if (varlen && opts.seqLensK !== undefined) {
    throw notWithVarlen("seqLensK");
  }
  return validateAttention(q, k, v, opts, {
    seqLensK: opts.seqLensK as Int32Array | undefined,
    varlen: varlen ? { cuSeqlensQ: opts.cuSeqlensQ, cuSeqlensK: opts.cuSeqlensK } : undefined,
    readTensor,
  });
}

/** The options of `flashAttention`. */
export const FORWARD_OPTION_KEYS = [
  ...SEMANTIC_OPTION_KEYS,
  ...SEQUENCE_OPTION_KEYS,
  ...RUN_OPTION_KEYS,
] as const satisfies readonly (keyof FlashAttentionOptions)[];

/** The run options every call shares, read in the order their errors surface. */
function readRun(problem: AttentionProblem, opts: Record<string, unknown>, numSplits: number): AttentionCall {
  const stats = checkStats(opts.stats);
  const out = checkOut(opts.out, problem);
  checkHeadDims(problem);
  const sramBytes = readSramBytes(opts.sramBytes);
  return { problem, out, sramBytes, stats, numSplits };
}

/**
 * The whole validation of a `flashAttention` call (of the synchronous function, a pool's or a GPU
 * attention's, which passes its own `readTensor` for tensors in GPU buffers).
 */
export function validateForwardCall(
  q: unknown,
  k: unknown,
  v: unknown,
  options: unknown,
  readTensor?: TensorReader,
): AttentionCall {
  const opts = checkOptionKeys(options, FORWARD_OPTION_KEYS);
  return readRun(validateCall(q, k, v, opts, readTensor), opts, 1);
}

/** The options of `flashAttentionWithKvCache` with a cache that lives in HBM. */
export const RESIDENT_KV_OPTION_KEYS = [
  "numSplits",
  ...SEMANTIC_OPTION_KEYS,
  ...RUN_OPTION_KEYS,
] as const satisfies readonly (keyof ResidentKvCacheOptions)[];

/**
 * The whole validation of a `flashAttentionWithKvCache` call on a KV cache that lives in HBM: q
 * [B, Nq, H, d] against the cache's sizes; entry b attends to its current length. The cache's
 * keys and values stay where they are (layout [B, Hkv, maxLen, D]).
 */
export function validateResidentCacheCall(q: unknown, cache: ResidentKvCache, options: unknown): AttentionCall {
  const opts = checkOptionKeys(options, RESIDENT_KV_OPTION_KEYS);
  const lengths = cache.lengths();
  const { batch: B, maxLen, kvHeads: Hkv, headDim: d, valueDim: dv } = cache;
  const Q = checkElementTensor("q", q, '[B, Nq, H, d] in layout "bshd"', 4);
  const against = `q.shape is ${formatShape(Q.shape)}, the cache is [B, maxLen, Hkv, d] = ${cache.shape}`;
  const agree = (what: string, expected: number, actual: number) => {
    if (expected !== actual) {
      throw new ShapeError(
        message(`q must have the cache's ${what}: ${against}`),
        `${what} ${expected}`,
        `${what} ${actual}`,
      );
    }
  };
  agree("batch size", B, Q.shape[0]);
  agree("head dim", d, Q.shape[3]);
  const H = Q.shape[2];
  if (H % Hkv !== 0) {
    throw new ShapeError(
      message(`the number of query heads must be a multiple of the cache's key/value heads (GQA): ${against}`),
      `a multiple of ${Hkv}`,
      String(H),
    );
  }
  // The cache's K and V stay in HBM: empty placeholders of its dtype stand for them.
  const placeholder = cache.dtype === "f32" ? new Float32Array(0) : new Uint16Array(0);
  const resident = (shape: number[]) => ({ data: placeholder, shape, dtype: cache.dtype, original: placeholder });
  const s: QkvShapes = {
    layout: "bshd",
    q: Q,
    k: resident([B, maxLen, Hkv, d]),
    v: resident([B, maxLen, Hkv, dv]),
    B,
    H,
    Hkv,
    d,
    dv,
    Nq: Q.shape[1],
    Nk: maxLen,
  };
  const list = batchSequences(s, lengths);
  for (const seq of list.sequences) {
    seq.kBase = seq.b * Hkv * maxLen * d;
    seq.vBase = seq.b * Hkv * maxLen * dv;
  }
  const problem = problemOf(s, list, readScoreOptions(opts, s, B), opts);
  problem.kStrides = { row: d, head: maxLen * d };
  problem.vStrides = { row: dv, head: maxLen * dv };
  problem.shapes = against;
  problem.resident = { memory: cache.memory, kPtr: cache.kPtr, vPtr: cache.vPtr };
  const call = readRun(problem, opts, readSplits(opts.numSplits));
  call.cache = cache;
  return call;
}

/** The options of `flashAttentionWithKvCache` with caller-owned caches. */
export const KV_CACHE_OPTION_KEYS = [
  "cacheSeqLens",
  "kNew",
  "vNew",
  "numSplits",
  ...SEMANTIC_OPTION_KEYS,
  ...RUN_OPTION_KEYS,
] as const satisfies readonly (keyof KvCacheOptions)[];

/**
 * The whole validation of a `flashAttentionWithKvCache` call with caller-owned caches: shapes with
 * the caches' own length first, then the lengths the call will attend to (cacheSeqLens plus the
 * appended rows), then the run options. The append itself is only described, for the runner to
 * make once the plan's checks have passed too.
 */
export function validateKvCacheCall(q: unknown, kCache: unknown, vCache: unknown, options: unknown): AttentionCall {
  const opts = checkOptionKeys(options, KV_CACHE_OPTION_KEYS);
  const shapes = validateAttention(q, kCache, vCache, opts);
  const [B, maxLen, Hkv, d] = (kCache as { shape: number[] }).shape;
  const dv = shapes.dv;
  const cacheSeqLens = opts.cacheSeqLens === undefined
    ? new Int32Array(B).fill(maxLen)
    : checkInt32Array("cacheSeqLens", opts.cacheSeqLens, B, "B");
  for (let b = 0; b < B; b++) {
    if (!(cacheSeqLens[b] >= 0 && cacheSeqLens[b] <= maxLen)) {
      throw new RangeError(
        message(`cacheSeqLens must hold lengths in [0, maxLen = ${maxLen}]: cacheSeqLens[${b}] is ${cacheSeqLens[b]}`),
      );
    }
  }
  const appended = checkNew(opts.kNew, opts.vNew, [B, Hkv, d, dv], cacheSeqLens, maxLen);
  const seqLensK = cacheSeqLens.map((n) => n + appended.Nnew);
  const problem = validateAttention(q, kCache, vCache, opts, { seqLensK });
  const call = readRun(problem, opts, readSplits(opts.numSplits));
  if (appended.Nnew > 0) {
    call.append = {
      kCache: shapes.k,
      vCache: shapes.v,
      rowAt: Int32Array.from(cacheSeqLens, (n, b) => b * maxLen + n),
      Nnew: appended.Nnew,
      kNew: appended.k!.data,
      vNew: appended.v!.data,
      dtypes: { kCache: shapes.dtypes.k, vCache: shapes.dtypes.v, kNew: appended.k!.dtype, vNew: appended.v!.dtype },
      kRow: Hkv * d,
      vRow: Hkv * dv,
    };
  }
  return call;
}

function checkNew(
  kNew: unknown,
  vNew: unknown,
  [B, Hkv, d, dv]: number[],
  cacheSeqLens: Int32Array,
  maxLen: number,
): { Nnew: number; k?: ElementTensor; v?: ElementTensor } {
  if (kNew === undefined && vNew === undefined) return { Nnew: 0 };
  if (kNew === undefined || vNew === undefined) {
    throw new TypeError(message("kNew and vNew go together: pass both or neither"));
  }
  const dims = "[B, Nnew, Hkv, d]";
  const k = checkElementTensor("kNew", kNew, dims, 4);
  const v = checkElementTensor("vNew", vNew, dims, 4);
  const Nnew = k.shape[1];
  const expect = (name: string, shape: number[], wanted: number[]) => {
    if (shape.join() !== wanted.join()) {
      throw new ShapeError(
        message(
          `${name} must have shape ${formatShape(wanted)} (B, Nnew, Hkv and the cache's head dim): ${name}.shape is ${
            formatShape(shape)
          }`,
        ),
        formatShape(wanted),
        formatShape(shape),
      );
    }
  };
  expect("kNew", k.shape, [B, Nnew, Hkv, d]);
  expect("vNew", v.shape, [B, Nnew, Hkv, dv]);
  for (let b = 0; b < B; b++) {
    if (cacheSeqLens[b] + Nnew > maxLen) {
      throw new RangeError(
        message(
          `appending ${Nnew} new keys at cacheSeqLens[${b}] = ${
            cacheSeqLens[b]
          } overflows the cache of maxLen ${maxLen}`,
        ),
      );
    }
  }
  return { Nnew, k, v };
}

/** The options of `flashAttentionBackward`. */
export const BACKWARD_OPTION_KEYS = [
  ...SEMANTIC_OPTION_KEYS,
  ...SEQUENCE_OPTION_KEYS,
  "out",
  "sramBytes",
  "stats",
] as const satisfies readonly (keyof FlashAttentionBackwardOptions)[];

/**
 * The whole validation of a `flashAttentionBackward` call: q, k, v and the forward's options as
 * `flashAttention` checks them (q, k, v through `readTensor` when a runner passes its own), then
 * `out` (the forward's result, with its lse) and `dOut` against the output's shape, then the
 * gradient buffers and the run options.
 */
export function validateBackwardCall(
  q: unknown,
  k: unknown,
  v: unknown,
  out: unknown,
  dOut: unknown,
  options: unknown,
  readTensor?: TensorReader,
): BackwardCall {
  const opts = checkOptionKeys(options, BACKWARD_OPTION_KEYS);
  const problem = validateCall(q, k, v, { ...opts, out: undefined }, readTensor);
  const dims = problem.layout === "thd"
    ? "[totalQ, H, dv]"
    : problem.layout === "bhsd"
    ? "[B, H, Nq, dv]"
    : "[B, Nq, H, dv]";
  const O = checkElementTensor("out", out, `the forward's output, ${dims}`, problem.oShape.length);
  const against = (name: string, shape: number[], wanted: number[], what: string) => {
    if (shape.join() !== wanted.join()) {
      throw new ShapeError(
        message(
          `${name} must have shape ${formatShape(wanted)} (${what}): ${name}.shape is ${
            formatShape(shape)
          }, ${problem.shapes}`,
        ),
        formatShape(wanted),
        formatShape(shape),
      );
    }
  };
  against("out", O.shape, problem.oShape, "the forward's output for these q, k, v");
  const dO = checkElementTensor("dOut", dOut, `the output's gradient, ${dims}`, problem.oShape.length);
  if (dO.shape.join() !== O.shape.join()) {
    throw new ShapeError(
      message(
        `dOut must have the shape of out: dOut.shape is ${formatShape(dO.shape)}, out.shape is ${formatShape(O.shape)}`,
      ),
      formatShape(O.shape),
      formatShape(dO.shape),
    );
  }
  const lseTensor = (out as { lse?: unknown }).lse;
  if (lseTensor === undefined) {
    throw new TypeError(
      message(
        "out.lse is missing: the backward needs the forward's log-sum-exp, so run flashAttention with returnLse: true and pass its result as out",
      ),
    );
  }
  const lse = checkTensor("out.lse", lseTensor, "the forward's lse", problem.lseShape.length);
  against("out.lse", lse.shape, problem.lseShape, "the forward's lse for these q, k, v");
  const stats = checkStats(opts.stats);
  const grads = checkGradientBuffers(opts.out, problem, [O.data, dO.data, lse.data]);
  checkHeadDims(problem);
  const sramBytes = readSramBytes(opts.sramBytes);
  return {
    problem,
    o: O.data,
    dOut: dO.data,
    oDtype: O.dtype,
    dOutDtype: dO.dtype,
    lse: lse.data,
    out: grads,
    sramBytes,
    stats,
  };
}

/** `out` of the backward: optional dq, dk, dv buffers of q's, k's and v's sizes that overlap nothing else. */
function checkGradientBuffers(
  value: unknown,
  p: AttentionProblem,
  others: ArrayBufferView[],
): { dq?: Float32Array; dk?: Float32Array; dv?: Float32Array } {
  if (value === undefined) return {};
  const opts = checkOptionKeys(value, ["dq", "dk", "dv"], (text) => message(text.replaceAll("options", "out")));
  const grads: { dq?: Float32Array; dk?: Float32Array; dv?: Float32Array } = {};
  const inputs: [string, ArrayBufferView][] = [["q", p.q], ["k", p.k], ["v", p.v], ["out.data", others[0]], [
    "dOut.data",
    others[1],
  ], ["out.lse.data", others[2]]];
  // Sized by the shapes, not the arrays: a runner's tensors may live elsewhere (GPU buffers).
  for (const [name, shape] of [["dq", p.qShape], ["dk", p.kShape], ["dv", p.vShape]] as const) {
    const buffer = opts[name];
    if (buffer === undefined) continue;
    if (!isArrayOf(buffer, Float32Array)) {
      throw new TypeError(message(`out.${name} must be a Float32Array: out.${name} is ${describe(buffer)}`));
    }
    const length = product(shape);
    if (buffer.length !== length) {
      throw new ShapeError(
        message(
          `out.${name} must hold ${length} elements (the size of ${
            name.slice(1)
          }): out.${name}.length is ${buffer.length}`,
        ),
        String(length),
        String(buffer.length),
      );
    }
    for (const [other, array] of [...inputs, ...Object.entries(grads)]) {
      if (overlaps(buffer, array)) {
        throw new TypeError(message(`out.${name} must not share memory with ${other}: pass a separate buffer`));
      }
    }
    grads[name] = buffer;
  }
  return grads;
}
