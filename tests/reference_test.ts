// The oracle itself, checked against closed forms worked out by hand and against an independent
// f32 implementation, so that agreement with it means something.

import { referenceAttention } from "../src/reference.ts";
import { maxAbsError, naiveAttentionF32, randomTensor, rng, test } from "./_util.ts";

const t = (data: number[], shape: number[]) => ({ data: new Float32Array(data), shape });

test("referenceAttention() matches softmax weights computed by hand", () => {
  // One query [1, 2], keys [1, 0], [0, 1], [1, 1], scale 1: scores 1, 2, 3.
  const q = t([1, 2], [1, 1, 1, 2]);
  const k = t([1, 0, 0, 1, 1, 1], [1, 3, 1, 2]);
  const v = t([1, 0, 0, 1, 5, 5], [1, 3, 1, 2]);
  const o = referenceAttention(q, k, v, { scale: 1, returnLse: true });
  const z = Math.E + Math.E ** 2 + Math.E ** 3;
  const expected = [(Math.E + 5 * Math.E ** 3) / z, (Math.E ** 2 + 5 * Math.E ** 3) / z];
  if (maxAbsError(o.data, expected) > 1e-15) throw new Error(`O ${o.data} ≠ ${expected}`);
  if (Math.abs(o.lse.data[0] - Math.log(z)) > 1e-15) throw new Error(`lse ${o.lse.data[0]}`);
});

test("referenceAttention() with identical keys averages the visible values (causal, bottom-right)", () => {
  // Nq = 2, Nk = 4: query 0 sees keys 0..2, query 1 sees 0..3 (j ≤ i + Nk − Nq).
  const q = t([0.3, -1, 2, 0.5], [1, 2, 1, 2]);
  const k = t([1, 1, 1, 1, 1, 1, 1, 1], [1, 4, 1, 2]);
  const v = t([1, 2, 3, 4], [1, 4, 1, 1]);
  const o = referenceAttention(q, k, v, { causal: true, returnLse: true });
  if (Math.abs(o.data[0] - 2) > 1e-15 || Math.abs(o.data[1] - 2.5) > 1e-15) throw new Error(`O ${o.data}`);
  // lse = s + ln(visible) with s = (q0 + q1)/sqrt(2)
  const lse0 = (0.3 - 1) / Math.SQRT2 + Math.log(3);
  if (Math.abs(o.lse.data[0] - lse0) > 1e-7) throw new Error(`lse ${o.lse.data[0]} ≠ ${lse0}`);
});

test("referenceAttention() gives O = 0 and lse = −∞ to a query that sees no key", () => {
  const o = referenceAttention(t([1, 1, 1], [1, 3, 1, 1]), t([1], [1, 1, 1, 1]), t([7], [1, 1, 1, 1]), {
    causal: true,
    returnLse: true,
  });
  // Nq = 3, Nk = 1: only query 2 sees key 0.
  if (o.data[0] !== 0 || o.data[1] !== 0 || o.data[2] !== 7) throw new Error(`O ${o.data}`);
  if (o.lse.data[0] !== -Infinity || o.lse.data[1] !== -Infinity || o.lse.data[2] !== 1) {
    throw new Error(`lse ${o.lse.data}`);
  }
});

test("referenceAttention() agrees with an independent naive f32 implementation", () => {
  const random = rng(1);
  for (const layout of ["bshd", "bhsd"] as const) {
    for (const causal of [false, true]) {
      const shape = (N: number, D: number) => layout === "bshd" ? [2, N, 3, D] : [2, 3, N, D];
      const q = randomTensor(random, shape(17, 9));
      const k = randomTensor(random, shape(23, 9));
      const v = randomTensor(random, shape(23, 4));
      const ref = referenceAttention(q, k, v, { causal, layout, scale: 0.7, returnLse: true });
      const naive = naiveAttentionF32(q, k, v, { causal, layout, scale: 0.7 });
      // f32 rounding of sums of ≤ 23 terms of magnitude ≤ 1: far below 1e-5
      if (maxAbsError(ref.data, naive.data) > 1e-5) throw new Error(`${layout} causal=${causal}: O differs`);
      if (maxAbsError(ref.lse.data, naive.lse) > 1e-5) throw new Error(`${layout} causal=${causal}: lse differs`);
    }
  }
});
