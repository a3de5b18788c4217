// The baseline of `flash-attention bench` and of bench/: attention as JS code usually writes it. Per head it
// materialises S = scale·QKᵀ (Nq × Nk) in a Float32Array, masks with −Infinity, softmaxes each row
// with Math.exp and multiplies by V; the causal mask is applied to the whole matrix, so no work is
// skipped. O(Nq·Nk) memory per head. Layout [B, N, H, d]; GQA reads K/V head ⌊h / (H/Hkv)⌋.

import type { Tensor } from "../tensor.ts";

/** The sizes of q [B, Nq, H, d], k [B, Nk, Hkv, d] and v [B, Nk, Hkv, dv]. */
function sizes(q: Tensor, k: Tensor, v: Tensor) {
  const [B, Nq, H, d] = q.shape;
  const [, Nk, Hkv] = k.shape;
  return { B, Nq, H, d, Nk, Hkv, dv: v.shape[3], g: H / Hkv, scale: 1 / Math.sqrt(d) };
}

/**
 * Standard attention, the naive way: softmax(scale·QKᵀ)·V with S stored whole per head.
 *
 * @param q Queries [B, Nq, H, d].
 * @param k Keys [B, Nk, Hkv, d].
 * @param v Values [B, Nk, Hkv, dv].
 * @param causal Bottom-right causal mask (query i sees keys j ≤ i + Nk − Nq).
 * @returns O [B, Nq, H, dv], row-major.
 */
export function naiveAttention(q: Tensor, k: Tensor, v: Tensor, causal: boolean): Float32Array {
  const { B, Nq, H, d, Nk, Hkv, dv, g, scale } = sizes(q, k, v);
  const o = new Float32Array(B * Nq * H * dv);
  const S = new Float32Array(Nq * Nk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / g);
      // S = scale·QKᵀ, masked
      for (let i = 0; i < Nq; i++) {
        const qi = ((b * Nq + i) * H + h) * d;
        for (let j = 0; j < Nk; j++) {
          const kj = ((b * Nk + j) * Hkv + kvh) * d;
          let dot = 0;
          for (let c = 0; c < d; c++) dot += q.data[qi + c] * k.data[kj + c];
          S[i * Nk + j] = causal && j > i + Nk - Nq ? -Infinity : scale * dot;
        }
      }
      // P = softmax(S), in place
      for (let i = 0; i < Nq; i++) {
        let max = -Infinity;
        for (let j = 0; j < Nk; j++) max = Math.max(max, S[i * Nk + j]);
        let sum = 0;
        for (let j = 0; j < Nk; j++) {
          const p = max === -Infinity ? 0 : Math.exp(S[i * Nk + j] - max);
          S[i * Nk + j] = p;
          sum += p;
        }
        for (let j = 0; j < Nk; j++) S[i * Nk + j] = sum === 0 ? 0 : S[i * Nk + j] / sum;
      }
      // O = PV
      for (let i = 0; i < Nq; i++) {
        const oi = ((b * Nq + i) * H + h) * dv;
        for (let j = 0; j < Nk; j++) {
          const p = S[i * Nk + j];
          const vj = ((b * Nk + j) * Hkv + kvh) * dv;
          for (let c = 0; c < dv; c++) o[oi + c] += p * v.data[vj + c];
        }
      }
    }
  }
  return o;
}

/**
 * The naive backward, as autodiff of {@linkcode naiveAttention} amounts to: per head, recompute
 * and store P and dP (Nq × Nk each), then dV = Pᵀ·dO, dS = P ∘ (dP − rowsum(P ∘ dP)),
 * dQ = scale·dS·K, dK = scale·dSᵀ·Q (dK and dV summed over each GQA group).
 *
 * @param q Queries [B, Nq, H, d].
 * @param k Keys [B, Nk, Hkv, d].
 * @param v Values [B, Nk, Hkv, dv].
 * @param dOut ∂L/∂O [B, Nq, H, dv].
 * @param causal Bottom-right causal mask.
 * @returns dq, dk, dv shaped as q, k, v.
 */
export function naiveAttentionBackward(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  dOut: Tensor,
  causal: boolean,
): { dq: Float32Array; dk: Float32Array; dv: Float32Array } {
  const { B, Nq, H, d, Nk, Hkv, dv, g, scale } = sizes(q, k, v);
  const grads = {
    dq: new Float32Array(q.data.length),
    dk: new Float32Array(k.data.length),
    dv: new Float32Array(v.data.length),
  };
  const P = new Float32Array(Nq * Nk);
  const dS = new Float32Array(Nq * Nk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / g);
      const qAt = (i: number) => ((b * Nq + i) * H + h) * d;
      const oAt = (i: number) => ((b * Nq + i) * H + h) * dv;
      const kAt = (j: number) => ((b * Nk + j) * Hkv + kvh) * d;
      const vAt = (j: number) => ((b * Nk + j) * Hkv + kvh) * dv;
      // P = softmax(S), stored whole
      for (let i = 0; i < Nq; i++) {
        let max = -Infinity;
        for (let j = 0; j < Nk; j++) {
          let dot = 0;
          for (let c = 0; c < d; c++) dot += q.data[qAt(i) + c] * k.data[kAt(j) + c];
          const s = causal && j > i + Nk - Nq ? -Infinity : scale * dot;
          P[i * Nk + j] = s;
          max = Math.max(max, s);
        }
        let sum = 0;
        for (let j = 0; j < Nk; j++) sum += P[i * Nk + j] = max === -Infinity ? 0 : Math.exp(P[i * Nk + j] - max);
        for (let j = 0; j < Nk; j++) P[i * Nk + j] = sum === 0 ? 0 : P[i * Nk + j] / sum;
      }
      // dP = dO·Vᵀ; D = rowsum(P ∘ dP); dS = P ∘ (dP − D)
      for (let i = 0; i < Nq; i++) {
        let D = 0;
        for (let j = 0; j < Nk; j++) {
          let dot = 0;
          for (let c = 0; c < dv; c++) dot += dOut.data[oAt(i) + c] * v.data[vAt(j) + c];
          dS[i * Nk + j] = dot;
          D += P[i * Nk + j] * dot;
        }
        for (let j = 0; j < Nk; j++) dS[i * Nk + j] = P[i * Nk + j] * (dS[i * Nk + j] - D);
      }
      // dV = Pᵀ·dO, dK = scale·dSᵀ·Q, dQ = scale·dS·K
      for (let i = 0; i < Nq; i++) {
        for (let j = 0; j < Nk; j++) {
          const p = P[i * Nk + j];
          const ds = scale * dS[i * Nk + j];
          for (let c = 0; c < dv; c++) grads.dv[vAt(j) + c] += p * dOut.data[oAt(i) + c];
          for (let c = 0; c < d; c++) {
            grads.dk[kAt(j) + c] += ds * q.data[qAt(i) + c];
            grads.dq[qAt(i) + c] += ds * k.data[kAt(j) + c];
          }
        }
      }
    }
  }
  return grads;
}
