// Seeded random numbers for the commands' inputs: the same values on every run and runtime.

import type { Tensor } from "../tensor.ts";

/**
 * mulberry32: a small seeded PRNG with a full 2³² period.
 *
 * @param seed Any 32-bit integer.
 * @returns A function returning floats in [0, 1).
 */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A tensor of the given shape with entries uniform in (−amplitude, amplitude).
 *
 * @param random The source of floats in [0, 1).
 * @param shape The tensor's shape.
 * @param amplitude The bound of the entries (default 1).
 * @returns The tensor.
 */
export function randomTensor(random: () => number, shape: number[], amplitude = 1): Tensor {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = (2 * random() - 1) * amplitude;
  return { data, shape };
}
