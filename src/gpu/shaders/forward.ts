// Exact attention forward in WGSL, FlashAttention-2 (Dao, ICLR 2024, arXiv 2307.08691, Algorithm 1),
// generated per shape class: head dims, tiling, element kinds and the optional score terms are
// compile-time constants, so the loops over d, dv and a thread's keys unroll into named registers
// (private arrays indexed in loops spill on some drivers; GPU_NOTES.md).
//
// One workgroup computes one query block: Br virtual rows of one (sequence, K/V head), where
// virtual row r is position ⌊r/g⌋ of query head r mod g of the K/V head's GQA group (as on the
// CPU, assembly/hbm.ts), so one K/V tile serves the whole group. Threads: Br·T, thread `li` owns
// row li mod Br and slice t = ⌊li / Br⌋ of every key tile, keys [t·Bc/T, (t+1)·Bc/T). The threads
// of one slice are consecutive, so a hardware subgroup reads the same K and V element of
// workgroup memory at once (a broadcast, never a bank conflict).
//
// Loop order: the query block is the workgroup, key blocks Kj, Vj (Bc keys) the loop inside it:
//   1. Qi → registers, through the scratch in chunks (each element read from HBM once);
//   2. per key block the block can see (causal and windows skip the others, as on the CPU):
//      (mask: each thread reads its mask entries; a tile the mask blanks entirely is skipped)
//      Kj, Vj → workgroup memory; then each thread, on its slice and its own online-softmax
//      state (m, l, O in registers, nothing shared):
//        S = scale·Qi·Kjᵀ, S ← softcap·tanh(S/softcap) − slope·|i + Nk − Nq − j| + mask
//        mNew = max(m, rowmax(S)); P = exp(S − mNew); alpha = exp(m − mNew)
//        l = alpha·l + rowsum(P); O = alpha·O + P·Vj; m = mNew
//   3. epilogue: the T states of a row merge by the associative rule (ALGORITHMS.md §2):
//      M = max m_t, L = Σ e^(m_t − M)·l_t, O = Σ (e^(m_t − M)/L)·O_t, lse = M + ln(L),
//      summed in thread order, so every run gives the same bits.
// Keys a row cannot see are excluded by a flag, never by a sentinel score: m starts at the most
// negative finite f32 (WGSL has no −∞ literal, and a compiler may assume no infinities), which
// every finite score reaches, so a row's l stays 0 exactly when it sees no key: then O = 0 and
// lse = −∞ (written as its bits).
//
// Workgroup memory: src/gpu/_tiling.ts (R floats of scratch, and with a mask one atomic u32). The
// scratch is declared as slices, one per thread slice of a K/V tile: WebGPU clamps every runtime
// array index into range (naga's Restrict policy), so the products' reads, written as
// wg[t][constant], pay one clamp of t instead of one per read. HBM traffic is
// counted per workgroup, not per element: each tile copy adds its bytes to a workgroup-uniform
// local, and thread 0 adds the totals to the call's counters once at the end (u64 counters as two
// u32 words, the carry detected as a wrap of the low word), in the slot order of src/_stats.ts.

import {
  bytesOfKind,
  each,
  KIND_BF16,
  KIND_F16,
  KIND_F32,
  loader,
  roundUp4,
  TANH,
  VISIBILITY,
  widening,
} from "./_wgsl.ts";

export { KIND_BF16, KIND_F16, KIND_F32 };
/** Mask kinds (as src/_plan.ts numbers them). */
export const MASK_NONE = 0;
export const MASK_F32 = 1;
export const MASK_U8 = 2;

/** What a compiled kernel is specialised for. */
export interface ForwardKernelConfig {
  Br: number;
  Bc: number;
  T: number;
  d: number;
  dv: number;
  /** Scratch floats R (src/gpu/_tiling.ts), a multiple of 4. */
  scratchFloats: number;
  qKind: number;
  kKind: number;
  vKind: number;
  oKind: number;
  maskKind: number;
  alibi: boolean;
  softcap: boolean;
  /**
   * Software pipelining: the next K/V tile is loaded into registers while the current one is
   * computed, and stored to workgroup memory after it (only without a mask, whose tile check must
   * come before the tile's loads). Changes the schedule, not one bit of the result.
   */
  prefetch: boolean;
}

/** Counter slots (u64 each, two u32 words): read[8], written[8], tiles, tiles skipped by the mask, flop units. */
export const COUNTER_TILES = 16;
export const COUNTER_SKIPPED = 17;
export const COUNTER_UNITS = 18;
export const COUNTER_SLOTS = 19;
/** The forward's tensors in counter order (src/_stats.ts). */
export const TENSOR_SLOT = { q: 0, k: 1, v: 2, o: 3, lse: 4, mask: 5, partial: 6, slopes: 7 } as const;

/** u32 words per sequence in the sequence table. */
export const SEQUENCE_WORDS = 12;
/** u32 words per work item (sequence, K/V head, first virtual row). */
export const ITEM_WORDS = 3;
/** u32 words of the uniform parameters. */
export const PARAM_WORDS = 24;
/** The uniform parameters' word offsets. */
export const PARAM = {
  items: 0,
  g: 1,
  seqTable: 2,
  slopeTable: 3,
  qRow: 4,
  qHead: 5,
  kRow: 6,
  kHead: 7,
  vRow: 8,
  vHead: 9,
  oRow: 10,
  oHead: 11,
  lseRow: 12,
  lseHead: 13,
  returnLse: 14,
  windowLeft: 15,
  windowRight: 16,
  scale: 17,
  softcap: 18,
  maskH: 19,
  maskI: 20,
  maskJ: 21,
  gridX: 22,
} as const;

/** Flops of one unit (one thread's slice of one tile): both products over Bc/T keys, padded head dims. */
export function flopsPerUnit(c: { Bc: number; T: number; d: number; dv: number }): number {
  return 2 * (c.Bc / c.T) * (roundUp4(c.d) + roundUp4(c.dv));
}

/** A cache key naming everything the generated text depends on. */
export function kernelKey(c: ForwardKernelConfig): string {
  return [
    c.Br,
    c.Bc,
    c.T,
    c.d,
    c.dv,
    c.scratchFloats,
    c.qKind,
    c.kKind,
    c.vKind,
    c.oKind,
    c.maskKind,
    c.alibi,
    c.softcap,
    c.prefetch,
  ].join(",");
}

/** The WGSL of the forward kernel for `c`. */
export function forwardKernel(c: ForwardKernelConfig): string {
  const D4 = roundUp4(c.d) / 4;
  const DV4 = roundUp4(c.dv) / 4;
  const KPT = c.Bc / c.T;
  const R4 = c.scratchFloats / 4;
  const NT = c.Br * c.T;
  const S4 = KPT * (D4 + DV4); // vec4s of one thread slice's keys of a K/V tile
  if (!Number.isInteger(KPT) || c.scratchFloats % 4 !== 0 || R4 < c.Br * c.T || R4 % S4 !== 0) {
    throw new Error("bad kernel tiling");
  }
  const QC4 = Math.min(D4, Math.floor(R4 / c.Br)); // Q staging chunk, vec4 columns
  const OC4 = Math.min(DV4, Math.floor(R4 / (c.Br * c.T))); // O merge chunk, vec4 columns
  const masked = c.maskKind !== MASK_NONE;
  const prefetch = c.prefetch && !masked;
  // f32 tensors whose head dim is a multiple of 4 are read as vec4s: every row, head and sequence
  // offset is then a multiple of 4 elements (all are multiples of the head dim).
  const qVec4 = c.qKind === KIND_F32 && c.d % 4 === 0;
  const kVec4 = c.kKind === KIND_F32 && c.d % 4 === 0;
  const vVec4 = c.vKind === KIND_F32 && c.dv % 4 === 0;
  const arrayOf = (kind: number, vec4: boolean) =>
    vec4 ? "array<vec4<f32>>" : kind === KIND_F32 ? "array<f32>" : "array<u32>";
  const keys = (line: (k: number) => string) => each(KPT, line);

  // Q staging: chunks of whole vec4 columns.
  const qChunks: string[] = [];
  for (let c0 = 0; c0 < D4; c0 += QC4) {
    const n4 = Math.min(QC4, D4 - c0);
    const W = 4 * n4;
    qChunks.push(
      qVec4
        ? `
  // Qi columns [${4 * c0}, ${4 * (c0 + n4)}) → scratch [row][${n4} vec4] → registers
  for (var e = li; e < BR * ${n4}u; e += NT) {
    let rl = e / ${n4}u;
    var x = vec4<f32>(0.0);
    if (rl < rowsHere) {
      let rr = i0 + rl;
      x = Q[(qBase + (rr / g) * P.qRow + (kvh * g + rr % g) * P.qHead) / 4u + ${c0}u + e % ${n4}u];
    }
    put(e, x);
  }
  workgroupBarrier();
${each(n4, (i) => `  q${c0 + i} = at(row * ${n4}u + ${i}u);`)}
  workgroupBarrier();`
        : `
  // Qi columns [${4 * c0}, ${4 * (c0 + n4)}) → scratch [row][${W}] → registers
  for (var e = li; e < BR * ${W}u; e += NT) {
    let rl = e / ${W}u;
    let col = ${4 * c0}u + e % ${W}u;
    var x = 0.0;
    if (rl < rowsHere && col < D) {
      let rr = i0 + rl;
      x = loadQ(qBase + (rr / g) * P.qRow + (kvh * g + rr % g) * P.qHead + col);
    }
    setF(e, x);
  }
  workgroupBarrier();
${each(n4, (i) => `  q${c0 + i} = at(row * ${n4}u + ${i}u);`)}
  workgroupBarrier();`,
    );
  }

  // Kj and Vj: each thread copies elements li, li + NT, ... of a tile (vec4s or floats) through
  // registers rk*, rv* into the scratch, K as [key][${4 * D4}], V as [key][${4 * DV4}] after it,
  // zeros past the valid keys and dims.
  const tileCopy = (name: "K" | "V", vec4: boolean, D4n: number, dim: number, offset: number) => {
    const elements = c.Bc * (vec4 ? D4n : 4 * D4n);
    const perThread = Math.ceil(elements / NT);
    const r = name === "K" ? "rk" : "rv";
    const base = name === "K" ? "kBase" : "vBase";
    const stride = name === "K" ? "P.kRow" : "P.vRow";
    const width = vec4 ? D4n : 4 * D4n;
    const type = vec4 ? "vec4<f32>" : "f32";
    return {
      declare: each(perThread, (n) => `  var ${r}${n} = ${type}(0.0);`),
      load: (j: string) =>
        each(perThread, (n) => {
          const value = vec4
            ? `${name}[(${base} + u32(${j} + jl) * ${stride}) / 4u + e % ${width}u]`
            : `load${name}(${base} + u32(${j} + jl) * ${stride} + e % ${width}u)`;
          const inRange = vec4 ? "jl < ct" : `jl < ct && e % ${width}u < ${dim}u`;
          return `      {
        let e = li + ${n * NT}u;
        let jl = i32(e / ${width}u);
        ${r}${n} = ${type}(0.0);
        if (e < ${elements}u && ${inRange}) { ${r}${n} = ${value}; }
      }`;
        }),
      store: each(perThread, (n) => {
        // Element e (key e / width) goes to its key's slice, ⌊key / KPT⌋, at [key mod KPT][column].
        const e = `li + ${n * NT}u`;
        const perSlice = width * KPT;
        const store = vec4
          ? `wg[(${e}) / ${perSlice}u][${offset}u + (${e}) % ${perSlice}u] = ${r}${n};`
          : `wg[(${e}) / ${perSlice}u][${offset}u + ((${e}) % ${perSlice}u) / 4u][(${e}) % 4u] = ${r}${n};`;
        return (n + 1) * NT > elements ? `      if (li + ${n * NT}u < ${elements}u) { ${store} }` : `      ${store}`;
      }),
    };
  };
  const kCopy = tileCopy("K", kVec4, D4, c.d, 0);
  const vCopy = tileCopy("V", vVec4, DV4, c.dv, KPT * D4);
  const loadTile = (j: string) =>
    `      let ct = min(BC, nk - (${j}));
${kCopy.load(j)}
${vCopy.load(j)}`;
  const countTile = `      tiles = tiles + 1u;
      bump(&cK, u32(cols) * ${c.d * bytesOfKind(c.kKind)}u, ${TENSOR_SLOT.k}u, li == 0u);
      bump(&cV, u32(cols) * ${c.dv * bytesOfKind(c.vKind)}u, ${TENSOR_SLOT.v}u, li == 0u);`;

  // O merge: chunks of whole vec4 columns.
  const oChunks: string[] = [];
  for (let c0 = 0; c0 < DV4; c0 += OC4) {
    const n4 = Math.min(OC4, DV4 - c0);
    oChunks.push(`
  // O columns [${4 * c0}, ${
      4 * (c0 + n4)
    }): every thread's f·O_t → scratch [row][t][${n4}], then thread t sums columns ≡ t (mod T)
${each(n4, (i) => `  put((row * T + t) * ${n4}u + ${i}u, f * o${c0 + i});`)}
  workgroupBarrier();
  if (live) {
    for (var i = t; i < ${n4}u; i += T) {
      var acc = at(row * T * ${n4}u + i);
${each(c.T - 1, (tt) => `      acc = acc + at((row * T + ${tt + 1}u) * ${n4}u + i);`)}
      let col = 4u * (${c0}u + i);
      for (var k = 0u; k < 4u; k++) {
        if (col + k < DV) { storeO(oRowBase + col + k, acc[k]); }
      }
    }
  }
  workgroupBarrier();`);
  }

  const maskEntries = !masked ? "" : `
    // The mask entries of this thread's row and keys (a tile the mask blanks entirely is skipped).
${
    keys((k) =>
      `    var pass${k} = false;
    var bias${k} = 0.0;
    if (live && kFirst + ${k} < j0 + cols) {
      let e = maskBase + head * P.maskH + pos * P.maskI + u32(kFirst + ${k}) * P.maskJ;
${
        c.maskKind === MASK_F32
          ? `      let bits = MASK[e];
      pass${k} = bits != NEG_INF_BITS;
      bias${k} = bitcast<f32>(bits);`
          : `      pass${k} = ((MASK[e >> 2u] >> ((e & 3u) * 8u)) & 0xffu) != 0u;`
      }
    }`
    )
  }
    if (${each(KPT, (k) => `pass${k}`).replaceAll("\n", " || ")}) { atomicOr(&wgCount, 1u); }
    workgroupBarrier();
    let open = atomicLoad(&wgCount) != 0u;
    bump(&cMask, u32(rowsHere) * u32(cols) * ${c.maskKind === MASK_U8 ? 1 : 4}u, ${TENSOR_SLOT.mask}u, li == 0u);`;

  const scores = keys((k) => {
    const terms = [`      var x${k} = P.scale * s${k};`];
    if (c.softcap) terms.push(`      x${k} = P.softcap * tanhf(x${k} / P.softcap);`);
    if (c.alibi) terms.push(`      x${k} = x${k} - slope * f32(abs(i32(pos) + alibiOffset - (kFirst + ${k})));`);
    if (c.maskKind === MASK_F32) terms.push(`      x${k} = x${k} + bias${k};`);
    const visible = `kFirst + ${k} >= first && kFirst + ${k} < last`;
    terms.push(`      let vis${k} = ${visible}${masked ? ` && pass${k}` : ""};`);
    return terms.join("\n");
  });

  return `// @generated by src/gpu/shaders/forward.ts: FlashAttention-2 forward, ${c.Br} rows × ${c.Bc} keys, ${c.T} threads per row, d = ${c.d}, dv = ${c.dv}
const BR: u32 = ${c.Br}u;
const T: u32 = ${c.T}u;
const NT: u32 = ${NT}u;
const BC: i32 = ${c.Bc};
const KPT: u32 = ${KPT}u;
const D: u32 = ${c.d}u;
const DV: u32 = ${c.dv}u;
const D4: u32 = ${D4}u;
const DV4: u32 = ${DV4}u;
const S4: u32 = ${S4}u;
// The most negative finite f32: where every running max starts.
const NEG: f32 = -3.40282346638528859812e+38;
const NEG_INF_BITS: u32 = 0xff800000u;

struct Params {
  items: u32, g: u32, seqTable: u32, slopeTable: u32,
  qRow: u32, qHead: u32, kRow: u32, kHead: u32,
  vRow: u32, vHead: u32, oRow: u32, oHead: u32,
  lseRow: u32, lseHead: u32, returnLse: u32, windowLeft: i32,
  windowRight: i32, scale: f32, softcap: f32, maskH: u32,
  maskI: u32, maskJ: u32, gridX: u32, pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> Q: ${arrayOf(c.qKind, qVec4)};
@group(0) @binding(2) var<storage, read> K: ${arrayOf(c.kKind, kVec4)};
@group(0) @binding(3) var<storage, read> V: ${arrayOf(c.vKind, vVec4)};
@group(0) @binding(4) var<storage, read_write> O: ${c.oKind === KIND_F32 ? "array<f32>" : "array<atomic<u32>>"};
@group(0) @binding(5) var<storage, read_write> LSE: array<u32>;
@group(0) @binding(7) var<storage, read> META: array<u32>;
@group(0) @binding(8) var<storage, read_write> COUNTERS: array<atomic<u32>>;
${masked ? "@group(0) @binding(6) var<storage, read> MASK: array<u32>;" : ""}

// The scratch in slices of S4 vec4s: during the key loop, slice t holds thread slice t's keys,
// K as [key][D4] then V as [key][DV4], so the products index it by t and a constant.
var<workgroup> wg: array<array<vec4<f32>, S4>, ${R4 / S4}>;
${masked ? 'var<workgroup> wgCount: atomic<u32>; // the mask\'s "tile open" flag' : ""}

// The scratch as one flat array of vec4s (and of floats), for the phases outside the key loop.
fn at(i: u32) -> vec4<f32> { return wg[i / S4][i % S4]; }
fn put(i: u32, x: vec4<f32>) { wg[i / S4][i % S4] = x; }
fn setF(i: u32, x: f32) { wg[(i >> 2u) / S4][(i >> 2u) % S4][i & 3u] = x; }
fn getF(i: u32) -> f32 { return wg[(i >> 2u) / S4][(i >> 2u) % S4][i & 3u]; }
${widening([c.qKind, c.kKind, c.vKind])}
${qVec4 ? "" : loader("loadQ", "Q", c.qKind)}
${kVec4 ? "" : loader("loadK", "K", c.kKind)}
${vVec4 ? "" : loader("loadV", "V", c.vKind)}
${
    c.oKind === KIND_F32 ? "fn storeO(e: u32, x: f32) { O[e] = x; }" : `
// f32 → 16 bits, rounded to nearest even (src/_half.ts's rules); two elements share a word, so the
// halves are OR-ed into the zeroed output.
${
      c.oKind === KIND_BF16
        ? `fn narrow(x: u32) -> u32 {
  if ((x & 0x7fffffffu) > 0x7f800000u) { return (x >> 16u) | 0x40u; }
  return (x + 0x7fffu + ((x >> 16u) & 1u)) >> 16u;
}`
        : `fn narrow(x: u32) -> u32 {
  let sign = (x >> 16u) & 0x8000u;
  let a = x & 0x7fffffffu;
  if (a > 0x7f800000u) { return sign | 0x7e00u | ((a >> 13u) & 0x3ffu); }
  if (a >= 0x47800000u) { return sign | 0x7c00u; }
  if (a < 0x33000000u) { return sign; } // below 2⁻²⁵: rounds to ±0 (2⁻²⁵ itself is a tie to the even 0)
  if (a < 0x38800000u) {
    // an f16 subnormal: |x|·2²⁴ = mantissa·2^(E − 126), rounded to an integer, ties to even
    let s = 126u - (a >> 23u);
    let mant = (a & 0x7fffffu) | 0x800000u;
    var n = mant >> s;
    let rest = mant & ((1u << s) - 1u);
    let half = 1u << (s - 1u);
    if (rest > half || (rest == half && (n & 1u) == 1u)) { n = n + 1u; }
    return sign | n;
  }
  return sign | ((a - 0x38000000u + 0xfffu + ((a >> 13u) & 1u)) >> 13u);
}`
    }
fn storeO(e: u32, x: f32) { atomicOr(&O[e >> 1u], narrow(bitcast<u32>(x)) << ((e & 1u) * 16u)); }`
  }

// Adds x to the u64 counter in \`slot\` (low word, then the carry into the high word).
fn count(slot: u32, x: u32) {
  if (x == 0u) { return; }
  let old = atomicAdd(&COUNTERS[2u * slot], x);
  if (old + x < old) { atomicAdd(&COUNTERS[2u * slot + 1u], 1u); }
}

// Adds x to a workgroup-local total, handing the total to the counters (thread 0) before it would wrap.
fn bump(total: ptr<function, u32>, x: u32, slot: u32, flush: bool) {
  if (*total + x < *total) {
    if (flush) { count(slot, *total); }
    *total = x;
  } else {
    *total = *total + x;
  }
}

${VISIBILITY.trimStart()}
${c.softcap ? TANH : ""}

@compute @workgroup_size(${NT})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let item = wid.x + wid.y * P.gridX;
  if (item >= P.items) { return; }
  let seq = META[${ITEM_WORDS}u * item];
  let kvh = META[${ITEM_WORDS}u * item + 1u];
  let i0 = META[${ITEM_WORDS}u * item + 2u];
  let sb = P.seqTable + ${SEQUENCE_WORDS}u * seq;
  let qBase = META[sb];
  let kBase = META[sb + 1u] + kvh * P.kHead;
  let vBase = META[sb + 2u] + kvh * P.vHead;
  let oBase = META[sb + 3u];
  let lseBase = META[sb + 4u];
  let nq = META[sb + 5u];
  let nk = i32(META[sb + 6u]);
  let maskBase = META[sb + 7u];
  let visOffset = bitcast<i32>(META[sb + 8u]);
  let alibiOffset = bitcast<i32>(META[sb + 9u]);
  let slopeBase = META[sb + 10u];
  let g = P.g;
  let rowsHere = min(BR, nq * g - i0);
  let row = li % BR;
  let t = li / BR;
  let live = row < rowsHere;
  let r = i0 + row;
  let pos = r / g;
  let head = kvh * g + r % g;
  // This row's visible keys [first, last), and the block's: first of its first row, end of its last.
  let first = firstKey(i32(pos), visOffset, nk);
  let last = endKey(i32(pos), visOffset, nk);
  let jFirst = firstKey(i32(i0 / g), visOffset, nk);
  let jEnd = endKey(i32((i0 + rowsHere - 1u) / g), visOffset, nk);
  var jStart = jEnd;
  if (jFirst < jEnd) { jStart = (jFirst / BC) * BC; }

  // Workgroup-uniform HBM byte totals, handed to the counters by thread 0.
  var cK = 0u;
  var cV = 0u;
  var cMask = 0u;
  var tiles = 0u;
  var skipped = 0u;

${each(D4, (i) => `  var q${i} = vec4<f32>(0.0);`)}
${qChunks.join("\n")}
${
    c.alibi
      ? `
  // ALiBi slope of each row, read once per row
  if (li < rowsHere) { setF(li, bitcast<f32>(META[P.slopeTable + slopeBase + kvh * g + (i0 + li) % g])); }
  workgroupBarrier();
  let slope = getF(row);
  workgroupBarrier();`
      : ""
  }

  var m = NEG;
  var l = 0.0;
${each(DV4, (i) => `  var o${i} = vec4<f32>(0.0);`)}
  var units = 0u;
  let kc0 = t * KPT;
${kCopy.declare}
${vCopy.declare}
${
    prefetch
      ? `  if (jStart < jEnd) {
${loadTile("jStart")}
  }`
      : ""
  }
  for (var j0 = jStart; j0 < jEnd; j0 += BC) {
    let cols = min(BC, nk - j0);
    let kFirst = j0 + i32(kc0);
${masked ? maskEntries : "    let open = true;"}
${
    prefetch
      ? `    // this tile's K and V are in registers (loaded during the previous tile): → scratch
${kCopy.store}
${vCopy.store}
${countTile}
    workgroupBarrier();
    if (j0 + BC < jEnd) {
      // the next tile's K and V → registers, in flight while this tile is computed
${loadTile("j0 + BC")}
    }`
      : `    if (open) {
      {
${loadTile("j0")}
      }
${kCopy.store}
${vCopy.store}
${countTile}
    } else {
      skipped = skipped + 1u;
    }
    workgroupBarrier();`
  }
${masked ? "    if (li == 0u) { atomicStore(&wgCount, 0u); }" : ""}
    let kEnd = min(kFirst + i32(KPT), j0 + cols);
    if (open && live && max(kFirst, first) < min(kEnd, last)) {
      units = units + 1u;
      // S = Qi·Kjᵀ on this thread's keys
${keys((k) => `      var s${k} = 0.0;`)}
${
    each(D4, (i) =>
      keys((k) =>
        `      let k${k}_${i} = wg[t][${k * D4 + i}u];
      s${k} = fma(q${i}.x, k${k}_${i}.x, s${k}); s${k} = fma(q${i}.y, k${k}_${i}.y, s${k}); s${k} = fma(q${i}.z, k${k}_${i}.z, s${k}); s${k} = fma(q${i}.w, k${k}_${i}.w, s${k});`
      ))
  }
      // S ← scale·S, softcap, − ALiBi, + mask; keys this row cannot see are flagged
${scores}
      // mNew = max(m, rowmax(S))
      var mNew = m;
${keys((k) => `      if (vis${k}) { mNew = max(mNew, x${k}); }`)}
      // P = exp(S − mNew); alpha = exp(m − mNew); l = alpha·l + rowsum(P); m = mNew
${keys((k) => `      let p${k} = select(0.0, exp(x${k} - mNew), vis${k});`)}
      let alpha = exp(m - mNew);
      l = alpha * l + (${each(KPT, (k) => `p${k}`).replaceAll("\n", " + ")});
      m = mNew;
      // O = alpha·O + P·Vj
${
    each(DV4, (i) =>
      `      o${i} = o${i} * alpha;
${keys((k) => `      o${i} = fma(vec4<f32>(p${k}), wg[t][${KPT * D4 + k * DV4 + i}u], o${i});`)}`)
  }
    }
    workgroupBarrier();
  }

  // epilogue: merge the T threads of each row; O = Σ (e^(m_t − M)/L)·O_t, lse = M + ln(L)
  put(row * T + t, vec4<f32>(m, l, bitcast<f32>(units), 0.0));
  workgroupBarrier();
  var M = NEG;
${each(c.T, (tt) => `  M = max(M, at(row * T + ${tt}u).x);`)}
  var L = 0.0;
${each(c.T, (tt) => `  L = L + exp(at(row * T + ${tt}u).x - M) * at(row * T + ${tt}u).y;`)}
  var f = 0.0;
  if (L > 0.0) { f = exp(m - M) / L; }
  var flopUnits = 0u;
  if (li == 0u) { for (var i = 0u; i < NT; i++) { flopUnits = flopUnits + bitcast<u32>(at(i).z); } }
  if (live && t == 0u && P.returnLse != 0u) {
    LSE[lseBase + head * P.lseHead + pos * P.lseRow] = select(NEG_INF_BITS, bitcast<u32>(M + log(L)), L > 0.0);
  }
  let oRowBase = oBase + pos * P.oRow + head * P.oHead;
  workgroupBarrier();
${oChunks.join("\n")}

  if (li == 0u) {
    count(${TENSOR_SLOT.q}u, rowsHere * ${c.d * bytesOfKind(c.qKind)}u);
    count(${TENSOR_SLOT.k}u, cK);
    count(${TENSOR_SLOT.v}u, cV);
    count(${TENSOR_SLOT.mask}u, cMask);
    ${c.alibi ? `count(${TENSOR_SLOT.slopes}u, rowsHere * 4u);` : ""}
    count(${8 + TENSOR_SLOT.o}u, rowsHere * ${c.dv * bytesOfKind(c.oKind)}u);
    if (P.returnLse != 0u) { count(${8 + TENSOR_SLOT.lse}u, rowsHere * 4u); }
    count(${COUNTER_TILES}u, tiles);
    count(${COUNTER_SKIPPED}u, skipped);
    count(${COUNTER_UNITS}u, flopUnits);
  }
}
`;
}
