// The arena check of the plan stage: the blocks Br × Bc the kernels derive from an arena size, or
// a RangeError when the arena cannot hold the smallest tile. Needs the kernels (assembly/arena.ts
// owns the layout), so it runs after validation and before anything is written.

import { message } from "./_messages.ts";
import type { AttentionProblem } from "./_problem.ts";
import type { Kernels } from "./wasm/loader.ts";

/** Query and key block sizes. */
export interface Blocks {
  Br: number;
  Bc: number;
}

/** The blocks for `sramBytes` and p's head dims, or a RangeError if the arena cannot hold the smallest. */
export function ensureArena(kernels: Kernels, sramBytes: number, p: AttentionProblem): Blocks {
  const masked = p.mask !== undefined;
  const blocks = kernels.blockSizes(sramBytes, p.d, p.dv, masked);
  if (blocks === 0) {
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
  return { Br: blocks >>> 16, Bc: blocks & 0xffff };
}
