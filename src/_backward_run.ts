// The synchronous backward: the plan's checks that need the kernels (an arena that holds the
// backward's blocks, the memory limit), then the run of its steps on the calling thread.

import { type BackwardPlan, type Gradients, planBackward } from "./_backward_plan.ts";
import { ensureMemory, runStep } from "./_forward.ts";
import { heapOf } from "./_heap.ts";
import { message } from "./_messages.ts";
import { SLAB_BUDGET_BYTES } from "./_plan.ts";
import type { AttentionProblem, BackwardCall } from "./_problem.ts";
import { backwardStatsOf, readCounters } from "./_stats.ts";
import type { AttentionGradients } from "./backward.ts";
import { type Kernels, loadKernels } from "./wasm/loader.ts";

/** The backward's block size B (Br = Bc = B) for an arena, or a RangeError if none fits. */
export function ensureBackwardArena(kernels: Kernels, sramBytes: number, p: AttentionProblem): number {
  const masked = p.mask !== undefined;
  const B = kernels.backwardBlockSize(sramBytes, p.d, p.dv, masked);
  if (B === 0) {
    throw new RangeError(
      message(
        `sramBytes is ${sramBytes}, too small for the backward with head dims d = ${p.d}, dv = ${p.dv}${
          masked ? " and a mask" : ""
        }: its smallest blocks (8 × 8) need ${kernels.backwardArenaBytes(8, p.d, p.dv, masked)} bytes (${p.shapes})`,
      ),
    );
  }
  return B;
}

/** The caller-side gradient arrays: the caller's buffers (zeroed: rows no sequence owns stay 0) or fresh ones. */
export function allocateGradients(call: BackwardCall): Gradients {
  const { problem: p, out } = call;
  const take = (buffer: Float32Array | undefined, length: number) => buffer ? buffer.fill(0) : new Float32Array(length);
  return { dq: take(out.dq, p.q.length), dk: take(out.dk, p.k.length), dv: take(out.dv, p.v.length) };
}

/** The gradients as the caller gets them: tensors shaped like q, k and v. */
export function gradientsOf(call: BackwardCall, grads: Gradients): AttentionGradients {
  const p = call.problem;
  return {
    dq: { data: grads.dq, shape: p.qShape },
    dk: { data: grads.dk, shape: p.kShape },
    dv: { data: grads.dv, shape: p.vShape },
  };
}

/**
 * Validated, planned and reserved: computes the gradients of a backward call on the calling thread.
 * `kernels` defaults to the package's; tests pass another build's to run the same path on it.
 */
export function runBackwardSync(call: BackwardCall, kernels: Kernels = loadKernels()): AttentionGradients {
  const { problem: p } = call;
  const B = ensureBackwardArena(kernels, call.sramBytes, p);
  const plan: BackwardPlan = planBackward(p, call, {
    sramBytes: call.sramBytes,
    B,
    hbmPtr: heapOf(kernels.memory, kernels.hbmPtr()).end,
    slabBudgetBytes: SLAB_BUDGET_BYTES,
    queryJobsPerGroup: 1,
  });
  ensureMemory(kernels.memory, plan.endPtr, "the backward of one sequence of this call", p.shapes);
  const grads = allocateGradients(call);
  if (call.stats) kernels.resetCounters();
  for (const phase of plan.phases) {
    phase.stage(kernels.memory.buffer);
    for (const step of phase.steps) runStep(kernels, step);
    phase.unstage(kernels.memory.buffer, grads);
  }
  const result = gradientsOf(call, grads);
  if (call.stats) result.stats = backwardStatsOf(readCounters(kernels), p, { sramBytes: call.sramBytes, B });
  return result;
}
