// Running a validated problem: the checks that depend on the kernels, then the driver.

import { runForward } from "./_forward.ts";
import { readStats } from "./_stats.ts";
import { type AttentionProblem, checkOut, message } from "./_validate.ts";
import type { AttentionOutput } from "./flash_attention.ts";
import { type Kernels, loadKernels } from "./wasm/loader.ts";

/** Default SRAM arena: fits the L2 cache of current CPUs with room to spare. */
export const DEFAULT_SRAM_BYTES = 128 * 1024;

/** A problem with everything checked, ready to run. */
export interface PreparedCall {
  problem: AttentionProblem;
  kernels: Kernels;
  out: Float32Array | undefined;
  sramBytes: number;
  Br: number;
  Bc: number;
}

/** Checks what depends on the kernels (head dims, arena size) and the output buffer. */
export function prepare(problem: AttentionProblem, opts: Record<string, unknown>): PreparedCall {
  const out = checkOut(opts.out, problem);
  const kernels = loadKernels();
  const maxHeadDim = kernels.headDimMax();
  if (problem.d > maxHeadDim || problem.dv > maxHeadDim) {
    throw new RangeError(
      message(`the head dims must be at most ${maxHeadDim}: d is ${problem.d}, dv is ${problem.dv}`),
    );
  }
  const masked = problem.mask !== undefined;
  const sramBytes = checkSramBytes(opts.sramBytes, problem.d, problem.dv, masked, kernels);
  const blocks = kernels.blockSizes(sramBytes, problem.d, problem.dv, masked);
  return { problem, kernels, out, sramBytes, Br: blocks >>> 16, Bc: blocks & 0xffff };
}

/** Runs a prepared call and wraps the result, with the kernels' counters when `stats` is set. */
export function attend(call: PreparedCall, numSplits: number, stats: boolean): AttentionOutput {
  const { problem, kernels, out, sramBytes, Br, Bc } = call;
  if (stats) kernels.resetCounters();
  const { o, lse } = runForward(kernels, problem, { sramBytes, Br, Bc, out, numSplits });
  const result: AttentionOutput = { data: o, shape: problem.oShape };
  if (lse) result.lse = { data: lse, shape: problem.lseShape };
  if (stats) result.stats = readStats(kernels, problem, { sramBytes, Br, Bc });
  return result;
}

function checkSramBytes(value: unknown, d: number, dv: number, masked: boolean, kernels: Kernels): number {
  const sramBytes = value ?? DEFAULT_SRAM_BYTES;
  const max = kernels.arenaMaxBytes();
  if (typeof sramBytes !== "number" || !Number.isInteger(sramBytes) || sramBytes <= 0 || sramBytes > max) {
    throw new RangeError(
      message(`sramBytes must be an integer in (0, ${max}]: sramBytes is ${String(sramBytes)}`),
    );
  }
  if (kernels.blockSizes(sramBytes, d, dv, masked) === 0) {
    throw new RangeError(
      message(
        `sramBytes is ${sramBytes}, too small for head dims d = ${d}, dv = ${dv}${
          masked ? " with a mask" : ""
        }: the smallest blocks (Br = 8, Bc = 4) need ${kernels.arenaBytes(8, 4, d, dv, masked)} bytes`,
      ),
    );
  }
  return sramBytes;
}
