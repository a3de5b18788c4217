/**
 * Trains a one-layer attention model with this library's forward and backward, by plain gradient
 * descent, on a task that only attention can solve: every sequence of random tokens has one
 * position marked, and every position must output the marked token. The model has learnable
 * projections Wq, Wk, Wv (per head) and Wo; flashAttention computes O = softmax(Q·Kᵀ/√d)·V and
 * flashAttentionBackward gives dQ, dK, dV; the projections' gradients are plain matrix products.
 *
 *   npm run example:train       deno task example:train       bun examples/train_tiny_attention.ts
 *
 * Prints the loss per epoch and the accuracy on sequences the model never saw, and exits with
 * status 1 unless the loss has fallen below 0.05 and the accuracy is at least 99%.
 */
import process from "node:process";
import { flashAttention, flashAttentionBackward, type Tensor } from "../mod.ts";

/** Sizes of the task and of the model. */
export interface TrainConfig {
  vocab: number;
  seqLen: number;
  batch: number;
  heads: number;
  headDim: number;
  epochs: number;
  learningRate: number;
  seed: number;
}

export const DEFAULT_CONFIG: TrainConfig = {
  vocab: 8,
  seqLen: 16,
  batch: 64,
  heads: 2,
  headDim: 8,
  epochs: 80,
  learningRate: 3,
  seed: 7,
};

/** A seeded uniform generator in [0, 1). */
function generator(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/**
 * A batch of the task: inputs [batch, seqLen, vocab + 2] (a one-hot token, a marker bit, a
 * constant 1) and each sequence's target, the marked token.
 */
function makeBatch(config: TrainConfig, random: () => number): { x: Float32Array; target: Int32Array } {
  const { vocab, seqLen, batch } = config;
  const features = vocab + 2;
  const x = new Float32Array(batch * seqLen * features);
  const target = new Int32Array(batch);
  for (let b = 0; b < batch; b++) {
    const marked = Math.floor(random() * seqLen);
    for (let n = 0; n < seqLen; n++) {
      const token = Math.floor(random() * vocab);
      const row = (b * seqLen + n) * features;
      x[row + token] = 1;
      x[row + vocab] = n === marked ? 1 : 0;
      x[row + vocab + 1] = 1;
      if (n === marked) target[b] = token;
    }
  }
  return { x, target };
}

/** C[m×n] = A[m×k]·B[k×n], or with A transposed (A is k×m) when `transposeA`, or B (n×k) when `transposeB`. */
function matmul(
  a: Float32Array,
  b: Float32Array,
  m: number,
  k: number,
  n: number,
  transposeA = false,
  transposeB = false,
): Float32Array {
  const c = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let p = 0; p < k; p++) {
      const aip = transposeA ? a[p * m + i] : a[i * k + p];
      if (aip === 0) continue;
      for (let j = 0; j < n; j++) c[i * n + j] += aip * (transposeB ? b[j * k + p] : b[p * n + j]);
    }
  }
  return c;
}

/** The model's weights: features → H·d for Wq, Wk, Wv; H·d → vocab for Wo. */
interface Weights {
  wq: Float32Array;
  wk: Float32Array;
  wv: Float32Array;
  wo: Float32Array;
}

/** One forward and backward pass over a batch: the mean cross-entropy, the accuracy and the gradients. */
function step(config: TrainConfig, w: Weights, x: Float32Array, target: Int32Array) {
  const { vocab, seqLen: N, batch: B, heads: H, headDim: d } = config;
  const features = vocab + 2;
  const rows = B * N;
  const width = H * d;
  const shape = [B, N, H, d];
  const q: Tensor = { data: matmul(x, w.wq, rows, features, width), shape };
  const k: Tensor = { data: matmul(x, w.wk, rows, features, width), shape };
  const v: Tensor = { data: matmul(x, w.wv, rows, features, width), shape };
  const out = flashAttention(q, k, v, { returnLse: true });
  const logits = matmul(out.data, w.wo, rows, width, vocab);
  // Softmax cross-entropy over every position; dLogits = (softmax − one-hot) / rows.
  let loss = 0;
  let correct = 0;
  const dLogits = new Float32Array(rows * vocab);
  for (let r = 0; r < rows; r++) {
    const t = target[Math.floor(r / N)];
    const z = logits.subarray(r * vocab, (r + 1) * vocab);
    const max = Math.max(...z);
    let sum = 0;
    for (const value of z) sum += Math.exp(value - max);
    loss += Math.log(sum) + max - z[t];
    if (z.indexOf(max) === t) correct++;
    for (let c = 0; c < vocab; c++) {
      dLogits[r * vocab + c] = (Math.exp(z[c] - max) / sum - (c === t ? 1 : 0)) / rows;
    }
  }
  const dOut: Tensor = { data: matmul(dLogits, w.wo, rows, vocab, width, false, true), shape: out.shape };
  const grads = flashAttentionBackward(q, k, v, out, dOut);
  return {
    loss: loss / rows,
    accuracy: correct / rows,
    grads: {
      wq: matmul(x, grads.dq.data, features, rows, width, true),
      wk: matmul(x, grads.dk.data, features, rows, width, true),
      wv: matmul(x, grads.dv.data, features, rows, width, true),
      wo: matmul(out.data, dLogits, width, rows, vocab, true),
    } as Weights,
  };
}

/** Trains from seeded random weights; returns the loss of every epoch and the held-out accuracy. */
export function train(config: TrainConfig = DEFAULT_CONFIG, log: (line: string) => void = () => {}) {
  const random = generator(config.seed);
  const features = config.vocab + 2;
  const width = config.heads * config.headDim;
  const init = (n: number, scale: number) => Float32Array.from({ length: n }, () => (random() * 2 - 1) * scale);
  const w: Weights = {
    wq: init(features * width, 0.5),
    wk: init(features * width, 0.5),
    wv: init(features * width, 0.5),
    wo: init(width * config.vocab, 0.5),
  };
  const data = makeBatch(config, random);
  const losses: number[] = [];
  for (let epoch = 1; epoch <= config.epochs; epoch++) {
    const { loss, accuracy, grads } = step(config, w, data.x, data.target);
    losses.push(loss);
    log(`epoch ${String(epoch).padStart(3)}  loss ${loss.toFixed(4)}  train accuracy ${(100 * accuracy).toFixed(1)}%`);
    for (const name of ["wq", "wk", "wv", "wo"] as const) {
      const weights = w[name];
      const gradient = grads[name];
      for (let i = 0; i < weights.length; i++) weights[i] -= config.learningRate * gradient[i];
    }
  }
  const heldOut = makeBatch(config, random);
  const { loss, accuracy } = step(config, w, heldOut.x, heldOut.target);
  return { losses, heldOutLoss: loss, heldOutAccuracy: accuracy };
}

if (import.meta.main ?? process.argv[1]?.endsWith("train_tiny_attention.ts")) {
  const c = DEFAULT_CONFIG;
  console.log(
    `Task: ${c.batch} sequences of ${c.seqLen} random tokens (vocabulary ${c.vocab}), one position marked; every ` +
      `position must output the marked token. Model: one attention layer, ${c.heads} heads of dim ${c.headDim}, ` +
      `plain gradient descent (learning rate ${c.learningRate}).`,
  );
  const result = train(c, console.log);
  const last = result.losses[result.losses.length - 1];
  console.log(
    `held-out batch: loss ${result.heldOutLoss.toFixed(4)}, accuracy ${(100 * result.heldOutAccuracy).toFixed(1)}%`,
  );
  if (!(last < 0.05 && result.heldOutAccuracy >= 0.99)) {
    console.error(`training did not converge: final loss ${last}, held-out accuracy ${result.heldOutAccuracy}`);
    process.exit(1);
  }
}
