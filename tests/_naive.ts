// An independent oracle for the f64 reference: attention written from ALGORITHMS.md §5 and the
// README's option table only, sharing no code with src/ (no validation, no strides, no problem
// description). It trusts its input: callers pass only calls the library accepts. It is plain on
// purpose: for each (sequence, head) it builds the whole Nq × Nk score matrix S, applies each
// documented step to all of S in turn, then takes a row softmax and multiplies by V.

/** A row-major tensor; the data may be any array of numbers. */
export interface NaiveTensor {
  data: ArrayLike<number>;
  shape: readonly number[];
}

/** The semantic options of flashAttention, as the README documents them. */
export interface NaiveOptions {
  scale?: number;
  causal?: boolean | "bottom-right" | "top-left";
  windowSize?: readonly [number, number];
  softcap?: number;
  alibiSlopes?: ArrayLike<number>;
  mask?: { data: Float32Array | Uint8Array; shape: readonly number[] };
  seqLensK?: ArrayLike<number>;
  cuSeqlensQ?: ArrayLike<number>;
  cuSeqlensK?: ArrayLike<number>;
  layout?: "bshd" | "bhsd";
}

/** Where element (n, h, c) of one sequence lives in a q, k, v or output array. */
export type Locate = (n: number, h: number, c: number) => number;

/** One sequence: a batch entry, or one packed sequence of a varlen call. */
export interface Entry {
  /** Index for per-entry ALiBi slopes and the mask's batch axis. */
  b: number;
  Nq: number;
  /** Valid keys: keys j ≥ Nk do not exist. */
  Nk: number;
  /** Keys present in k and v for this entry (≥ Nk; the mask's last axis spans all of them). */
  NkStored: number;
  q: Locate;
  k: Locate;
  v: Locate;
  o: Locate;
  /** Where query i's lse of head h goes. */
  lse: (i: number, h: number) => number;
}

/** The sequences of a call, with where their elements live, and the call's sizes. */
export interface NaiveLayout {
  entries: Entry[];
  B: number;
  H: number;
  Hkv: number;
  d: number;
  dv: number;
  outLength: number;
  lseLength: number;
}

/** Lays out q, k, v and the output as the README documents the layouts and varlen packing. */
export function naiveLayout(q: NaiveTensor, k: NaiveTensor, v: NaiveTensor, options: NaiveOptions): NaiveLayout {
  const varlen = options.cuSeqlensQ !== undefined;
  const d = q.shape[q.shape.length - 1];
  const dv = v.shape[v.shape.length - 1];
  const entries: Entry[] = [];
  let H: number, Hkv: number, B: number;
  let outLength: number, lseLength: number;
  if (varlen) {
    const cuQ = options.cuSeqlensQ!;
    const cuK = options.cuSeqlensK!;
    const [totalQ] = q.shape;
    H = q.shape[1];
    Hkv = k.shape[1];
    B = cuQ.length - 1;
    outLength = totalQ * H * dv;
    lseLength = H * totalQ;
    for (let b = 0; b < B; b++) {
      const [q0, k0] = [cuQ[b], cuK[b]];
      const Nk = cuK[b + 1] - k0;
      entries.push({
        b,
        Nq: cuQ[b + 1] - q0,
        Nk,
        NkStored: Nk,
        q: (n, h, c) => ((q0 + n) * H + h) * d + c,
        k: (n, h, c) => ((k0 + n) * Hkv + h) * d + c,
        v: (n, h, c) => ((k0 + n) * Hkv + h) * dv + c,
        o: (n, h, c) => ((q0 + n) * H + h) * dv + c,
        lse: (i, h) => h * totalQ + q0 + i,
      });
    }
  } else {
    const bhsd = options.layout === "bhsd";
    // [B, N, heads, D] or [B, heads, N, D]
    const [seqAxis, headAxis] = bhsd ? [2, 1] : [1, 2];
    B = q.shape[0];
    H = q.shape[headAxis];
    Hkv = k.shape[headAxis];
    const Nq = q.shape[seqAxis];
    const NkStored = k.shape[seqAxis];
    outLength = B * Nq * H * dv;
    lseLength = B * H * Nq;
    const at = (N: number, heads: number, D: number) => (b: number, n: number, h: number, c: number) =>
      bhsd ? ((b * heads + h) * N + n) * D + c : ((b * N + n) * heads + h) * D + c;
    const [qAt, kAt, vAt, oAt] = [at(Nq, H, d), at(NkStored, Hkv, d), at(NkStored, Hkv, dv), at(Nq, H, dv)];
    for (let b = 0; b < B; b++) {
      entries.push({
        b,
        Nq,
        Nk: options.seqLensK ? options.seqLensK[b] : NkStored,
        NkStored,
        q: (n, h, c) => qAt(b, n, h, c),
        k: (n, h, c) => kAt(b, n, h, c),
        v: (n, h, c) => vAt(b, n, h, c),
        o: (n, h, c) => oAt(b, n, h, c),
        lse: (i, h) => (b * H + h) * Nq + i,
      });
    }
  }

  return { entries, B, H, Hkv, d, dv, outLength, lseLength };
}

/**
 * softmax(S)·V per (sequence, head) in f64 with S built in the documented order:
 * S = scale·q·k; softcap·tanh(S/softcap); + ALiBi bias −slope·|i + Nk − Nq − j|; + mask; then keys
 * outside the causal window or past the entry's valid length are dropped. Causal and windows are
 * aligned bottom-right to each entry's own Nk (top-left with causal "top-left"); ALiBi distances
 * are always bottom-right. Nk is the entry's valid length wherever it appears (the README says so
 * for causal and windows; for ALiBi this follows FlashAttention, which the README does not spell
 * out). A mask value of −∞ or a boolean zero makes the score −∞ (it does not add −∞ to it, so a
 * NaN score of a blocked key is gone). A row with no key left (or only −∞ scores) gets O = 0 and lse = −∞.
 *
 * Layouts: "bshd" q [B, Nq, H, d], k [B, Nk, Hkv, d], v [B, Nk, Hkv, dv], O [B, Nq, H, dv], lse
 * [B, H, Nq]; "bhsd" swaps the sequence and head axes of q, k, v and O; varlen (cuSeqlensQ/K) has
 * q [totalQ, H, d], k [totalK, Hkv, d], v [totalK, Hkv, dv], O [totalQ, H, dv], lse [H, totalQ].
 */
export function naiveAttention(
  q: NaiveTensor,
  k: NaiveTensor,
  v: NaiveTensor,
  options: NaiveOptions = {},
): { data: Float64Array; lse: Float64Array } {
  const { entries, B, H, Hkv, d, dv, outLength, lseLength } = naiveLayout(q, k, v, options);
  const scale = options.scale ?? 1 / Math.sqrt(d);
  const softcap = options.softcap ?? 0;
  const causal = options.causal ?? false;
  const topLeft = causal === "top-left";
  let [left, right] = options.windowSize ?? [-1, -1];
  if (causal !== false) right = 0; // causal is the window [left, 0]
  const group = H / Hkv;

  const out = new Float64Array(outLength);
  const lse = new Float64Array(lseLength).fill(-Infinity);

  for (const e of entries) {
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / group); // repeat-interleave
      const slopes = options.alibiSlopes;
      const slope = slopes === undefined ? 0 : slopes.length === H ? slopes[h] : slopes[e.b * H + h];

      // S = scale·q·k over every stored key
      const S: number[][] = [];
      for (let i = 0; i < e.Nq; i++) {
        const row: number[] = [];
        for (let j = 0; j < e.NkStored; j++) {
          let dot = 0;
          for (let c = 0; c < d; c++) dot += q.data[e.q(i, h, c)] * k.data[e.k(j, kvh, c)];
          row.push(scale * dot);
        }
        S.push(row);
      }
      // softcap, on the scaled scores
      if (softcap !== 0) { for (const row of S) row.forEach((x, j) => (row[j] = softcap * Math.tanh(x / softcap))); }
      // + ALiBi bias, distances always bottom-right aligned
      if (slopes !== undefined) {
        S.forEach((row, i) => row.forEach((x, j) => (row[j] = x - slope * Math.abs(i + e.Nk - e.Nq - j))));
      }
      // + mask: a float bias is added; −∞ or a boolean zero blocks the key (its score becomes −∞)
      if (options.mask) {
        const mask = options.mask;
        S.forEach((row, i) =>
          row.forEach((x, j) => {
            const m = maskAt(mask, [e.b, h, i, j], [B, H, e.Nq, e.NkStored]);
            row[j] = mask.data instanceof Uint8Array ? (m !== 0 ? x : -Infinity) : m === -Infinity ? -Infinity : x + m;
          })
        );
      }
      // drop keys outside the causal window or past the valid length
      for (let i = 0; i < e.Nq; i++) {
        const diagonal = topLeft ? i : i + e.Nk - e.Nq;
        const keep = (j: number) =>
          j < e.Nk && (left < 0 || j >= diagonal - left) && (right < 0 || j <= diagonal + right);
        const kept = S[i].map((_, j) => j).filter(keep);

        // row softmax over the kept keys
        const scores = kept.map((j) => S[i][j]);
        if (scores.every((x) => x === -Infinity)) continue; // fully masked: O = 0, lse = −∞
        const m = scores.reduce((a, x) => Math.max(a, x), -Infinity); // NaN if any score is NaN
        const P = scores.map((x) => Math.exp(x - m));
        const l = P.reduce((a, p) => a + p, 0);
        for (let c = 0; c < dv; c++) {
          let o = 0;
          kept.forEach((j, t) => (o += (P[t] / l) * v.data[e.v(j, kvh, c)]));
          out[e.o(i, h, c)] = o;
        }
        lse[e.lse(i, h)] = m + Math.log(l);
      }
    }
  }
  return { data: out, lse };
}

/** The mask element for index [b, h, i, j] of `full`, numpy-broadcast from the right. */
export function maskAt(
  mask: { data: ArrayLike<number>; shape: readonly number[] },
  index: number[],
  full: number[],
): number {
  const shape = [...Array(4 - mask.shape.length).fill(1), ...mask.shape];
  let at = 0;
  for (let axis = 0; axis < 4; axis++) {
    if (shape[axis] !== 1 && shape[axis] !== full[axis]) throw new Error(`mask ${mask.shape} vs ${full}`);
    at = at * shape[axis] + (shape[axis] === 1 ? 0 : index[axis]);
  }
  return mask.data[at];
}
