// Naive attention as JS users write it today: materialise S = scale·QKᵀ for each head in a
// Float32Array, mask with −Infinity, softmax each row with Math.exp, multiply by V. The causal
// mask is applied to the full matrix (no skipped work), which is what such code usually does.

import type { Tensor } from "../mod.ts";

/** Standard attention, layout [B, N, H, d], returning O [B, Nq, H, dv]. */
export function naiveAttention(q: Tensor, k: Tensor, v: Tensor, causal: boolean): Float32Array {
  const [B, Nq, H, d] = q.shape;
  const Nk = k.shape[1];
  const dv = v.shape[3];
  const scale = 1 / Math.sqrt(d);
  const o = new Float32Array(B * Nq * H * dv);
  const S = new Float32Array(Nq * Nk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < Nq; i++) {
        const qi = ((b * Nq + i) * H + h) * d;
        for (let j = 0; j < Nk; j++) {
          const kj = ((b * Nk + j) * H + h) * d;
          let dot = 0;
          for (let c = 0; c < d; c++) dot += q.data[qi + c] * k.data[kj + c];
          S[i * Nk + j] = causal && j > i + Nk - Nq ? -Infinity : scale * dot;
        }
      }
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
      for (let i = 0; i < Nq; i++) {
        const oi = ((b * Nq + i) * H + h) * dv;
        for (let j = 0; j < Nk; j++) {
          const p = S[i * Nk + j];
          const vj = ((b * Nk + j) * H + h) * dv;
          for (let c = 0; c < dv; c++) o[oi + c] += p * v.data[vj + c];
        }
      }
    }
  }
  return o;
}

/**
 * The naive backward as JS users would write it (what tfjs-style autodiff of the naive forward
 * amounts to): per head, recompute and store P (Nq × Nk, Float32Array) and dP, then
 * dV = Pᵀ·dO, dS = P ∘ (dP − rowsum(dO ∘ O)), dQ = scale·dS·K, dK = scale·dSᵀ·Q. Layout [B, N, H, d].
 */
export function naiveAttentionBackward(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  dOut: Tensor,
  causal: boolean,
): { dq: Float32Array; dk: Float32Array; dv: Float32Array } {
  const [B, Nq, H, d] = q.shape;
  const Nk = k.shape[1];
  const dv = v.shape[3];
  const scale = 1 / Math.sqrt(d);
  const grads = {
    dq: new Float32Array(q.data.length),
    dk: new Float32Array(k.data.length),
    dv: new Float32Array(v.data.length),
  };
  const P = new Float32Array(Nq * Nk);
  const dS = new Float32Array(Nq * Nk);
  const qAt = (b: number, i: number, h: number) => ((b * Nq + i) * H + h) * d;
  const kAt = (b: number, j: number, h: number) => ((b * Nk + j) * H + h) * d;
  const vAt = (b: number, j: number, h: number) => ((b * Nk + j) * H + h) * dv;
  const oAt = (b: number, i: number, h: number) => ((b * Nq + i) * H + h) * dv;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      // P = softmax(S), stored whole
      for (let i = 0; i < Nq; i++) {
        let max = -Infinity;
        for (let j = 0; j < Nk; j++) {
          let dot = 0;
          for (let c = 0; c < d; c++) dot += q.data[qAt(b, i, h) + c] * k.data[kAt(b, j, h) + c];
          const s = causal && j > i + Nk - Nq ? -Infinity : scale * dot;
          P[i * Nk + j] = s;
          max = Math.max(max, s);
        }
        let sum = 0;
        for (let j = 0; j < Nk; j++) sum += P[i * Nk + j] = Math.exp(P[i * Nk + j] - max);
        for (let j = 0; j < Nk; j++) P[i * Nk + j] /= sum;
      }
      // dP = dO·Vᵀ; D = rowsum(dO ∘ O) = rowsum(P ∘ dP); dS = P ∘ (dP − D)
      for (let i = 0; i < Nq; i++) {
        let D = 0;
        for (let j = 0; j < Nk; j++) {
          let dot = 0;
          for (let c = 0; c < dv; c++) dot += dOut.data[oAt(b, i, h) + c] * v.data[vAt(b, j, h) + c];
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
          for (let c = 0; c < dv; c++) grads.dv[vAt(b, j, h) + c] += p * dOut.data[oAt(b, i, h) + c];
          for (let c = 0; c < d; c++) {
            grads.dk[kAt(b, j, h) + c] += ds * q.data[qAt(b, i, h) + c];
            grads.dq[qAt(b, i, h) + c] += ds * k.data[kAt(b, j, h) + c];
          }
        }
      }
    }
  }
  return grads;
}
