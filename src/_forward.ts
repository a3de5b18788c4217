// The synchronous runner: runs a forward plan (_plan.ts) on the calling thread with the package's
// single-threaded kernels, one kernel call after another.

import { PAGE_BYTES } from "./_limits.ts";
import { message } from "./_messages.ts";
import {
  allocateResults,
  CACHED_KV_BYTES,
  CHUNK_BYTES,
  type ForwardPlan,
  forwardSteps,
  planForward,
  planScope,
  type Results,
  SLAB_BUDGET_BYTES,
  type Step,
} from "./_plan.ts";
import type { AttentionProblem, OutBuffer } from "./_problem.ts";
import { heapOf } from "./_heap.ts";
import type { Kernels, WasmMemory } from "./wasm/loader.ts";

/** What the synchronous runner needs beyond the validated problem. */
export interface ForwardConfig {
  sramBytes: number;
  Br: number;
  Bc: number;
  out: OutBuffer | undefined;
  /** Key splits per head (1 = none). */
  numSplits: number;
  /** Placement threshold; tests lower it to exercise streaming on small shapes. */
  slabBudgetBytes?: number;
  /** K and V bytes up to which thin blocks stream K (CACHED_KV_BYTES); tests lower it to exercise the copy. */
  cachedKvBytes?: number;
}

/** Output and (when asked for) lse of a forward call. */
export type ForwardResult = Results;

/** The plan of a problem for this runner: HBM from the kernels' hbmPtr, one job per head group. */
export function planSync(kernels: Kernels, p: AttentionProblem, config: ForwardConfig): ForwardPlan {
  return planForward(p, {
    sramBytes: config.sramBytes,
    Br: config.Br,
    Bc: config.Bc,
    numSplits: config.numSplits,
    hbmPtr: heapOf(kernels.memory, kernels.hbmPtr()).end, // above any KV cache that lives there
    slabBudgetBytes: config.slabBudgetBytes ?? SLAB_BUDGET_BYTES,
    chunkBytes: CHUNK_BYTES,
    jobsPerGroup: 1,
    cachedKvBytes: config.cachedKvBytes ?? CACHED_KV_BYTES,
  });
}

/**
 * Grows `memory` to at least `endBytes` (at most 4 GiB: planForward checks), or throws a RangeError
 * naming the size when the runtime refuses; `what` and `shapes` describe the call for the message.
 */
export function ensureMemory(memory: WasmMemory, endBytes: number, what: string, shapes: string): void {
  const missing = endBytes - memory.buffer.byteLength;
  if (missing <= 0) return;
  try {
    memory.grow(Math.ceil(missing / PAGE_BYTES));
  } catch (cause) {
    throw new RangeError(
      message(`${what} needs ${endBytes} bytes of WebAssembly memory and the runtime refused to grow it: ${shapes}`),
      { cause },
    );
  }
}

/** Grows the kernels' memory for a plan (before anything is copied or written). */
export function reserve(kernels: Kernels, p: AttentionProblem, plan: ForwardPlan): void {
  ensureMemory(kernels.memory, plan.endPtr, planScope(plan), p.shapes);
}

/** Runs the forward pass of a validated problem (planned and reserved here unless a plan is given). */
export function runForward(
  kernels: Kernels,
  p: AttentionProblem,
  config: ForwardConfig,
  plan?: ForwardPlan,
): ForwardResult {
  if (plan === undefined) {
    plan = planSync(kernels, p, config);
    reserve(kernels, p, plan);
  }
  const results = allocateResults(p, config.out);
  for (const phase of plan.phases) {
    phase.stage(kernels.memory.buffer);
    for (const step of forwardSteps(phase)) runStep(kernels, step);
    phase.unstage(kernels.memory.buffer, results);
  }
  return results;
}

/** Runs one step's kernel calls in order on the calling thread's kernels (any plan's steps). */
export function runStep(kernels: Kernels, step: Step): void {
  // deno-lint-ignore no-explicit-any
  const kernel = kernels[step.kernel] as (...args: any[]) => void;
  for (const args of step.args) kernel(...args);
}
