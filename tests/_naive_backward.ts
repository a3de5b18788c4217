// An independent oracle for the backward pass: the gradients of L = Σ dOut ∘ O with respect to q, k
// and v, written from ALGORITHMS.md §6 and the chain rule only, sharing no code with src/. Like
// tests/_naive.ts it trusts its input and is plain on purpose: for each (sequence, query head) it
// builds the whole Nq × Nk score matrix and the whole probability matrix P, then differentiates
// each step of the forward in reverse order. tests/naive_backward_test.ts checks it against central
// finite differences of naiveAttention.

import { maskAt, naiveLayout, type NaiveOptions, type NaiveTensor } from "./_naive.ts";

/** The gradients of Σ dOut ∘ O, each with the shape and layout of q, k and v respectively. */
export interface NaiveGradients {
  dq: Float64Array;
  dk: Float64Array;
  dv: Float64Array;
}

/**
 * dQ, dK, dV of L = Σ dOut ∘ O, where O is naiveAttention(q, k, v, options).data (same options, same
 * layouts; dOut has O's shape). Per (sequence, query head h) with kv head ⌊h / (H/Hkv)⌋:
 * S_raw = scale·q·k; S = softcap·tanh(S_raw/softcap); + ALiBi bias; + mask; keys outside the causal
 * window or past the valid length dropped; P = softmax(S) row-wise (P = 0 for a row with no key
 * left, or only −∞ scores); O = P·V. Then
 *   dV += Pᵀ·dO;  dP = dO·Vᵀ;  D_i = Σ_c dO[i,c]·O[i,c];  dS = P ∘ (dP − D);
 *   dS_raw = dS ∘ (1 − tanh²(S_raw/softcap)) with softcap, else dS;
 *   dQ += scale·dS_raw·K;  dK += scale·dS_rawᵀ·Q,
 * so dK and dV of a kv head sum over its query heads (GQA). The mask, the ALiBi bias and the dropped
 * keys are constants: they get no gradient, and a blocked or dropped key contributes nothing. A
 * fully-masked row gets zero gradients, never NaN.
 *
 * precision "f32" rounds every intermediate result (each product, each sum, scale, exp, tanh, the
 * inputs themselves) with Math.fround: a naive f32 backward, the baseline of the tolerance rule. The
 * results are still returned as Float64Array (holding f32 values).
 */
export function naiveAttentionBackward(
  q: NaiveTensor,
  k: NaiveTensor,
  v: NaiveTensor,
  dOut: NaiveTensor,
  options: NaiveOptions = {},
  precision: "f64" | "f32" = "f64",
): NaiveGradients {
  const r: (x: number) => number = precision === "f32" ? Math.fround : (x) => x;
  // The sequences and where their elements live, as the forward oracle lays them out (dOut has O's).
  const { entries, B, H, Hkv, d, dv } = naiveLayout(q, k, v, options);

  // Inputs as this precision sees them (an f32 implementation reads f32 values).
  const [Q, K, V, dO] = [q, k, v, dOut].map((t) => Float64Array.from(t.data, r));
  const scale = r(options.scale ?? 1 / Math.sqrt(d));
  const softcap = r(options.softcap ?? 0);
  const causal = options.causal ?? false;
  const topLeft = causal === "top-left";
  let [left, right] = options.windowSize ?? [-1, -1];
  if (causal !== false) right = 0; // causal is the window [left, 0]
  const group = H / Hkv;

  const dq = new Float64Array(Q.length);
  const dk = new Float64Array(K.length);
  const dvOut = new Float64Array(V.length);

  for (const e of entries) {
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / group); // repeat-interleave
      const slopes = options.alibiSlopes;
      const slope = slopes === undefined ? 0 : r(slopes.length === H ? slopes[h] : slopes[e.b * H + h]);

      // ── forward, recomputed ──
      // S_raw = scale·q·k over every stored key
      const Sraw: number[][] = [];
      for (let i = 0; i < e.Nq; i++) {
        const row: number[] = [];
        for (let j = 0; j < e.NkStored; j++) {
          let dot = 0;
          for (let c = 0; c < d; c++) dot = r(dot + r(Q[e.q(i, h, c)] * K[e.k(j, kvh, c)]));
          row.push(r(scale * dot));
        }
        Sraw.push(row);
      }
      // T = tanh(S_raw/softcap), kept for the backward through the cap
      const T = Sraw.map((row) => row.map((x) => (softcap !== 0 ? r(Math.tanh(r(x / softcap))) : 0)));
      const S = Sraw.map((row, i) => row.map((x, j) => (softcap !== 0 ? r(softcap * T[i][j]) : x)));
      // + ALiBi bias, distances always bottom-right aligned
      if (slopes !== undefined) {
        S.forEach((row, i) => row.forEach((x, j) => (row[j] = r(x - r(slope * Math.abs(i + e.Nk - e.Nq - j))))));
      }
      // + mask: a float bias is added; −∞ or a boolean zero blocks the key (its score becomes −∞)
      if (options.mask) {
        const mask = options.mask;
        S.forEach((row, i) =>
          row.forEach((x, j) => {
            const m = maskAt(mask, [e.b, h, i, j], [B, H, e.Nq, e.NkStored]);
            row[j] = mask.data instanceof Uint8Array
              ? (m !== 0 ? x : -Infinity)
              : m === -Infinity
              ? -Infinity
              : r(x + m);
          })
        );
      }

      for (let i = 0; i < e.Nq; i++) {
        // keys inside the causal window and the valid length; the others are constants, P = 0
        const diagonal = topLeft ? i : i + e.Nk - e.Nq;
        const keep = (j: number) =>
          j < e.Nk && (left < 0 || j >= diagonal - left) && (right < 0 || j <= diagonal + right);
        const kept = S[i].map((_, j) => j).filter(keep);
        const scores = kept.map((j) => S[i][j]);
        if (scores.every((x) => x === -Infinity)) continue; // fully masked: O = 0, every gradient 0

        // P = softmax(S) over the kept keys
        const m = scores.reduce((a, x) => Math.max(a, x), -Infinity);
        const E = scores.map((x) => r(Math.exp(r(x - m))));
        const l = E.reduce((a, x) => r(a + x), 0);
        const P = E.map((x) => r(x / l));
        // O = P·V
        const O: number[] = [];
        for (let c = 0; c < dv; c++) {
          let o = 0;
          kept.forEach((j, t) => (o = r(o + r(P[t] * V[e.v(j, kvh, c)]))));
          O.push(o);
        }

        // ── backward ──
        // D_i = Σ_c dO[i,c]·O[i,c]
        let D = 0;
        for (let c = 0; c < dv; c++) D = r(D + r(dO[e.o(i, h, c)] * O[c]));
        kept.forEach((j, t) => {
          // dV[j] += P[i,j]·dO[i]
          for (let c = 0; c < dv; c++) {
            const at = e.v(j, kvh, c);
            dvOut[at] = r(dvOut[at] + r(P[t] * dO[e.o(i, h, c)]));
          }
          // dP[i,j] = dO[i]·V[j]
          let dP = 0;
          for (let c = 0; c < dv; c++) dP = r(dP + r(dO[e.o(i, h, c)] * V[e.v(j, kvh, c)]));
          // dS = P ∘ (dP − D), then back through the cap: d(softcap·tanh(x/softcap))/dx = 1 − tanh²
          let dS = r(P[t] * r(dP - D));
          if (softcap !== 0) dS = r(dS * r(1 - r(T[i][j] * T[i][j])));
          // S_raw = scale·q·k: dQ[i] += scale·dS·K[j]; dK[j] += scale·dS·Q[i]
          const g = r(scale * dS);
          for (let c = 0; c < d; c++) {
            const qi = e.q(i, h, c);
            const kj = e.k(j, kvh, c);
            dq[qi] = r(dq[qi] + r(g * K[kj]));
            dk[kj] = r(dk[kj] + r(g * Q[qi]));
          }
        });
      }
    }
  }
  return { dq, dk, dv: dvOut };
}
