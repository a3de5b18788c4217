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
