// Running a validated problem: the checks that depend on the kernels, then the driver.

import { type ForwardConfig, type ForwardPlan, planForward, runForward } from "./_forward.ts";
import { readStats } from "./_stats.ts";
import { type AttentionProblem, checkOut, describe, message } from "./_validate.ts";
import type { AttentionOutput } from "./flash_attention.ts";
import { type Kernels, loadKernels } from "./wasm/loader.ts";

/** Default SRAM arena: fits the L2 cache of current CPUs with room to spare. */
export const DEFAULT_SRAM_BYTES = 128 * 1024;

/** A problem with everything checked and placed in linear memory, ready to run. */
export interface PreparedCall {
  problem: AttentionProblem;
  kernels: Kernels;
  config: ForwardConfig;
  plan: ForwardPlan;
}

/** The kernels' compiled limits (assembly/arena.ts), mirrored so they are checked before loading them; tests pin the two equal. */
export const HEAD_DIM_MAX = 256;
export const ARENA_MAX_BYTES = 8 << 20;

/**
 * Checks the head dims, the arena size and the output buffer, then what needs the kernels (the
 * arena fitting a tile, the problem fitting linear memory). Nothing is computed or written yet.
 */
export function prepare(problem: AttentionProblem, opts: Record<string, unknown>, numSplits = 1): PreparedCall {
  const out = checkOut(opts.out, problem);
  if (problem.d > HEAD_DIM_MAX || problem.dv > HEAD_DIM_MAX) {
    throw new RangeError(
      message(
        `the head dims must be at most ${HEAD_DIM_MAX}: d is ${problem.d}, dv is ${problem.dv} (${problem.shapes})`,
      ),
    );
  }
  const requested = checkSramRange(opts.sramBytes);
  const kernels = loadKernels();
  const masked = problem.mask !== undefined;
  const sramBytes = checkSramFits(requested, problem, masked, kernels);
  const blocks = kernels.blockSizes(sramBytes, problem.d, problem.dv, masked);
  const config: ForwardConfig = { sramBytes, Br: blocks >>> 16, Bc: blocks & 0xffff, out, numSplits };
  return { problem, kernels, config, plan: planForward(kernels, problem, config) };
}

/** Runs a prepared call and wraps the result, with the kernels' counters when `stats` is set. */
export function attend(call: PreparedCall, stats: boolean): AttentionOutput {
  const { problem, kernels, config, plan } = call;
  if (stats) kernels.resetCounters();
  const { o, lse } = runForward(kernels, problem, config, plan);
  const result: AttentionOutput = { data: o, shape: problem.oShape };
  if (lse) result.lse = { data: lse, shape: problem.lseShape };
  if (stats) result.stats = readStats(kernels, problem, config);
  return result;
}

function checkSramRange(value: unknown): number {
  if (value === undefined) return DEFAULT_SRAM_BYTES;
  if (typeof value !== "number") {
    throw new TypeError(message(`sramBytes must be a number: sramBytes is ${describe(value)}`));
  }
  if (!Number.isInteger(value) || value <= 0 || value > ARENA_MAX_BYTES) {
    throw new RangeError(message(`sramBytes must be an integer in (0, ${ARENA_MAX_BYTES}]: sramBytes is ${value}`));
  }
  return value;
}

function checkSramFits(sramBytes: number, p: AttentionProblem, masked: boolean, kernels: Kernels): number {
  if (kernels.blockSizes(sramBytes, p.d, p.dv, masked) === 0) {
    throw new RangeError(
      message(
        `sramBytes is ${sramBytes}, too small for head dims d = ${p.d}, dv = ${p.dv}${
          masked ? " with a mask" : ""
        }: the smallest blocks (Br = 8, Bc = 4) need ${
          kernels.arenaBytes(8, 4, p.d, p.dv, masked)
        } bytes (${p.shapes})`,
      ),
    );
  }
  return sramBytes;
}
