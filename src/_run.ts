// The synchronous path from a validated call to its result: the plan's checks that need the
// kernels (an arena that holds a tile, the memory limit), then the KV-cache append, then the run.

import { ensureArena } from "./_blocks.ts";
import { type ForwardConfig, planSync, reserve, runForward } from "./_forward.ts";
import type { ForwardPlan, Results } from "./_plan.ts";
import type { AttentionCall, AttentionProblem, CacheAppend } from "./_problem.ts";
import { message } from "./_messages.ts";
import { chooseSplits } from "./_splits.ts";
import { readStats } from "./_stats.ts";
import { convertInto } from "./_half.ts";
import type { AttentionOutput, HalfAttentionOutput } from "./result.ts";
import { type Kernels, loadKernels } from "./wasm/loader.ts";

/** A call with its plan made and memory reserved: nothing can fail between this and its result. */
export interface PreparedCall {
  call: AttentionCall;
  kernels: Kernels;
  config: ForwardConfig;
  plan: ForwardPlan;
}

/**
 * Checks what needs the kernels (the arena holding a tile, the memory the plan needs) and reserves
 * that memory. Nothing is computed or written yet. `kernels` defaults to the package's; tests and
 * benchmarks pass another build's to run the same path on it.
 */
export function prepare(call: AttentionCall, kernels: Kernels = loadKernels()): PreparedCall {
  const { problem } = call;
  if (problem.resident && problem.resident.memory !== kernels.memory) {
    throw new TypeError(
      message(
        "the KV cache lives in a pool's memory: pass it to that pool's flashAttentionWithKvCache, or use createKvCache",
      ),
    );
  }
  const { Br, Bc } = ensureArena(kernels, call.sramBytes, problem);
  const keys = Math.max(0, ...problem.sequences.map((s) => s.Nk));
  const numSplits = call.numSplits || chooseSplits(keys);
  const config: ForwardConfig = { sramBytes: call.sramBytes, Br, Bc, out: call.out, numSplits };
  const plan = planSync(kernels, problem, config);
  reserve(kernels, problem, plan);
  return { call, kernels, config, plan };
}

/**
 * Writes a KV-cache call's new rows into the caller's caches (after every check has passed),
 * converted to each cache's dtype (rounded to nearest even when it is narrower than the rows').
 */
export function appendRows(a: CacheAppend): void {
  const { dtypes } = a;
  for (let b = 0; b < a.rowAt.length; b++) {
    const from = b * a.Nnew;
    convertInto(a.kCache, dtypes.kCache, a.rowAt[b] * a.kRow, a.kNew, dtypes.kNew, from * a.kRow, a.Nnew * a.kRow);
    convertInto(a.vCache, dtypes.vCache, a.rowAt[b] * a.vRow, a.vNew, dtypes.vNew, from * a.vRow, a.Nnew * a.vRow);
  }
}

/**
 * A run's O and lse as the caller gets them, shaped by the problem; a 16-bit O carries its dtype
 * (the public functions' overloads type it as a HalfAttentionOutput).
 */
export function outputOf(p: AttentionProblem, { data, lse }: Results): AttentionOutput {
  const output = { data, shape: p.oShape } as AttentionOutput;
  if (p.dtypes.o !== "f32") (output as unknown as HalfAttentionOutput).dtype = p.dtypes.o;
  if (lse) output.lse = { data: lse, shape: p.lseShape };
  return output;
}

/** Runs a prepared call and wraps the result, with the kernels' counters when `stats` is set. */
export function attend(prepared: PreparedCall): AttentionOutput {
  const { call, kernels, config, plan } = prepared;
  const { problem, stats } = call;
  if (call.append) appendRows(call.append);
  if (stats) kernels.resetCounters();
  const result = outputOf(problem, runForward(kernels, problem, config, plan));
  if (stats) result.stats = readStats(kernels, problem, config);
  return result;
}
