/**
 * The problem every engine of the field benchmark solves, shared by bench/field.ts and the engine
 * processes (bench/field/_engine.ts): the shape, the inputs (rebuilt from seeds in each process, so
 * nothing large crosses a pipe), the rows checked against the f64 reference, and the flop count.
 */
import type { Tensor } from "../../mod.ts";
import { random } from "../_report.ts";

/** Batch, heads and head dim of every run; N varies. */
export const B = 1;
export const H = 8;
export const d = 64;

/** How many query rows are checked against the f64 reference at each N. */
export const SAMPLED_ROWS = 64;

/** The inputs of one problem. */
export interface Inputs {
  q: Tensor;
  k: Tensor;
  v: Tensor;
}

/**
 * q, k, v of shape [B, N, H, d] (layout "bshd"), entries in [−1, 1), the same in every process.
 * Row-major [B, N, H, d] is also onnxruntime's [B, N, H·d], so the same arrays feed every engine.
 */
export function inputs(N: number): Inputs {
  return { q: random([B, N, H, d], 1), k: random([B, N, H, d], 2), v: random([B, N, H, d], 3) };
}

/** The checked query rows: SAMPLED_ROWS of them, evenly spread from 0 to N − 1 (both ends included). */
export function sampledRows(N: number): number[] {
  const rows = new Set<number>();
  for (let j = 0; j < SAMPLED_ROWS; j++) rows.add(Math.round((j * (N - 1)) / (SAMPLED_ROWS - 1)));
  return [...rows];
}

/** The sampled rows of an output laid out [B = 1, N, H·d], concatenated. */
export function takeRows(output: Float32Array, rows: readonly number[]): Float32Array {
  const width = H * d;
  const out = new Float32Array(rows.length * width);
  rows.forEach((row, i) => out.set(output.subarray(row * width, (row + 1) * width), i * width));
  return out;
}

/** Floating-point operations of one forward call: the two matrix products, 4·B·H·N²·d, half for causal. */
export function flops(N: number, causal: boolean): number {
  return 4 * B * H * N * N * d * (causal ? 0.5 : 1);
}
