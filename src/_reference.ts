// The f64 reference's loop, shared with the tests' f32 baseline (which rounds every operation).

import { widened } from "./_half.ts";
import type { AttentionProblem } from "./_problem.ts";

/**
 * Standard attention of a validated problem, one query row at a time, every arithmetic result
 * passed through `round` (the identity gives f64; Math.fround gives f32 arithmetic, which the tests
 * use to size their tolerance). Scores follow the documented order: scale·q·k, softcap, + ALiBi
 * bias, + mask, then keys outside the causal window or past the sequence's length are dropped.
 * With `fused`, the dot products' multiply-adds round once (as the relaxed build's fused
 * multiply-add does: a product of two f32 values is exact in f64), not after the product and again
 * after the sum.
 */
export function referenceForward(
  p: AttentionProblem,
  round: (x: number) => number,
  fused = false,
): { o: Float64Array; lse: Float64Array } {
  const madd = fused
    ? (a: number, b: number, c: number) => round(a * b + c)
    : (a: number, b: number, c: number) => round(round(a * b) + c);
  const o = new Float64Array(p.oLength);
  const lse = new Float64Array(p.lseLength).fill(-Infinity);
  const scale = round(p.scale);
  const softcap = round(p.softcap);
  for (const s of p.sequences) {
    const scores = new Float64Array(s.Nk);
    const alignment = p.topLeft ? 0 : s.Nk - s.Nq;
    for (let h = 0; h < p.H; h++) {
      const kvh = Math.floor(h / p.group); // repeat-interleave: heads h·g .. h·g + g − 1 share one
      const slope = p.alibiSlopes === undefined
        ? 0
        : round(p.alibiSlopes[p.alibiSlopes.length === p.H ? h : s.b * p.H + h]);
      for (let i = 0; i < s.Nq; i++) {
        const lo = p.windowLeft < 0 ? 0 : Math.max(0, i + alignment - p.windowLeft);
        const hi = p.windowRight < 0 ? s.Nk : Math.min(s.Nk, i + alignment + p.windowRight + 1);
        const qi = s.qBase + i * p.qStrides.row + h * p.qStrides.head;
        let max = -Infinity;
        let nan = false;
        for (let j = lo; j < hi; j++) {
          const kj = s.kBase + j * p.kStrides.row + kvh * p.kStrides.head;
          let dot = 0;
          for (let c = 0; c < p.d; c++) dot = madd(p.q[qi + c], p.k[kj + c], dot);
          let x = round(scale * dot);
          if (softcap !== 0) x = round(softcap * round(Math.tanh(round(x / softcap))));
          if (p.alibiSlopes) x = round(x - round(slope * Math.abs(i + s.Nk - s.Nq - j)));
          if (p.mask) {
            const [sb, sh, si, sj] = p.mask.strides;
            const m = p.mask.data[s.b * sb + h * sh + i * si + j * sj];
            // a blocked key (boolean 0 or −∞) gets −∞ whatever its score was, NaN included
            x = p.mask.data instanceof Uint8Array
              ? (m !== 0 ? x : -Infinity)
              : m === -Infinity
              ? -Infinity
              : round(x + m);
          }
          scores[j] = x;
          if (x > max) max = x;
          nan ||= Number.isNaN(x);
        }
        if (max === -Infinity && !nan) continue; // no key visible (or all blocked): O = 0, lse = −∞
        const oi = s.oBase + i * p.oStrides.row + h * p.oStrides.head;
        let sum = 0;
        for (let j = lo; j < hi; j++) {
          scores[j] = round(Math.exp(round(scores[j] - max)));
          sum = round(sum + scores[j]);
        }
        for (let c = 0; c < p.dv; c++) {
          let acc = 0;
          for (let j = lo; j < hi; j++) {
            acc = madd(scores[j], p.v[s.vBase + j * p.vStrides.row + kvh * p.vStrides.head + c], acc);
          }
          o[oi + c] = round(acc / sum);
        }
        lse[s.lseBase + h * p.lseStrides.head + i * p.lseStrides.row] = round(max + round(Math.log(sum)));
      }
    }
  }
  return { o, lse };
}

/** p with 16-bit q, k and v decoded to their (exact) f32 values, which referenceForward reads. */
export function withF32Inputs(p: AttentionProblem): AttentionProblem {
  const { q, k, v } = p.dtypes;
  if (q === "f32" && k === "f32" && v === "f32") return p;
  return {
    ...p,
    q: widened(p.q, q),
    k: widened(p.k, k),
    v: widened(p.v, v),
    dtypes: { ...p.dtypes, q: "f32", k: "f32", v: "f32" },
  };
}
