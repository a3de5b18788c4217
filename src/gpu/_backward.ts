// The WebGPU backward: a validated backward call (src/_validate.ts's validateBackwardCall) run as
// three dispatches in one submit (shaders/backward.ts: D, then dQ, then dK and dV), with the same
// error scopes and one upload per distinct host array as the forward's runner. The gradients come
// back into the caller's `out` buffers or new arrays.

import { ELEMENT_KIND } from "../_half.ts";
import { message } from "../_messages.ts";
import type { BackwardCall } from "../_problem.ts";
import type { AttentionGradients } from "../backward.ts";
import {
  BACKWARD_PARAM,
  BACKWARD_PARAM_WORDS,
  backwardDkDvKernel,
  backwardDqKernel,
  type BackwardKernelConfig,
  backwardKey,
  backwardPrepKernel,
} from "./shaders/backward.ts";
import { ITEM_WORDS, SEQUENCE_WORDS } from "./shaders/forward.ts";
import { grid, maskKindOf, queryBlocks, writeSequences } from "./_plan.ts";
import { blocksFor, checkBinding, type GpuContext } from "./_runner.ts";
import { BUFFER_USAGE, type GpuBufferLike, type GpuPipelineLike, MAP_READ } from "./_webgpu.ts";

const roundUp4 = (bytes: number) => Math.max(4, Math.ceil(bytes / 4) * 4);

/** A compiled pipeline, cached per context under `key`. */
function compiled(ctx: GpuContext, key: string, code: () => string): Promise<GpuPipelineLike> {
  let pipeline = ctx.pipelines.get(key);
  if (pipeline === undefined) {
    const module = ctx.device.createShaderModule({ code: code(), label: `flash-attention ${key}` });
    pipeline = ctx.device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main" } });
    ctx.pipelines.set(key, pipeline);
    pipeline.catch(() => ctx.pipelines.delete(key));
  }
  return pipeline;
}

/** Writes a typed array into a buffer from byte 0 (a tail that is not a whole word padded). */
function writeArray(ctx: GpuContext, buffer: GpuBufferLike, data: ArrayBufferView): void {
  const whole = data.byteLength & ~3;
  if (whole > 0) ctx.device.queue.writeBuffer(buffer, 0, new Uint8Array(data.buffer, data.byteOffset, whole));
  if (whole < data.byteLength) {
    const tail = new Uint8Array(4);
    tail.set(new Uint8Array(data.buffer, data.byteOffset + whole, data.byteLength - whole));
    ctx.device.queue.writeBuffer(buffer, whole, tail);
  }
}

/** The backward's passes, in dispatch order (what `passMs` of runGpuBackward reports). */
export const BACKWARD_PASSES = ["D = rowsum(dO ∘ O)", "dQ", "dK, dV"] as const;

/**
 * Runs a validated backward call on the GPU. `gpuInputs` holds the GPU buffers of q, k, v given as
 * GPU tensors; everything else is uploaded. `stats` is refused (the GPU backward counts nothing).
 * With `passMs` (benchmarks: bench/gpu.ts) on a device that has `timestamp-query`, each pass of
 * BACKWARD_PASSES is timestamped and its milliseconds pushed there.
 */
export async function runGpuBackward(
  ctx: GpuContext,
  call: BackwardCall,
  gpuInputs: Map<string, GpuBufferLike>,
  sramBytes: number,
  passMs?: number[],
): Promise<AttentionGradients> {
  const p = call.problem;
  if (call.stats) {
    throw new TypeError(
      message("stats is not available from the GPU backward: it counts no traffic (the CPU backward does)"),
    );
  }
  const { device } = ctx;
  const limits = device.limits;
  const dq = blocksFor(ctx, sramBytes, p.d, p.dv, false, p.shapes);
  // The dK/dV kernel stages per query row its Q and dO rows and one more vec4 (lse, D, slope): the
  // forward's footprint rule with dv + 4 in place of dv (keys per workgroup as Br, rows per tile as Bc).
  const kv = blocksFor(ctx, sramBytes, p.d, p.dv + 4, false, p.shapes);
  const kernel: BackwardKernelConfig = {
    Br: dq.Br,
    Bc: dq.Bc,
    T: dq.T,
    scratchFloats: dq.scratchFloats,
    Bk: kv.Br,
    Bq: kv.Bc,
    kvScratchFloats: kv.scratchFloats,
    d: p.d,
    dv: p.dv,
    qKind: ELEMENT_KIND[p.dtypes.q],
    kKind: ELEMENT_KIND[p.dtypes.k],
    vKind: ELEMENT_KIND[p.dtypes.v],
    oKind: ELEMENT_KIND[call.oDtype],
    dOKind: ELEMENT_KIND[call.dOutDtype],
    maskKind: maskKindOf(p),
    alibi: p.alibiSlopes !== undefined,
    softcap: p.softcap !== 0,
  };

  // Work items: query blocks for D and dQ, key blocks (of sequences with queries) for dK and dV.
  const qItems = queryBlocks(p, dq.Br);
  const kItems: [number, number, number][] = [];
  p.sequences.forEach((s, seq) => {
    if (s.Nq === 0) return;
    for (let j0 = 0; j0 < s.Nk; j0 += kv.Br) for (let kvh = 0; kvh < p.Hkv; kvh++) kItems.push([seq, kvh, j0]);
  });
  const kItemsAt = ITEM_WORDS * qItems.length;
  const seqTable = kItemsAt + ITEM_WORDS * kItems.length;
  const slopeTable = seqTable + SEQUENCE_WORDS * p.sequences.length;
  const meta = new Uint32Array(slopeTable + (p.alibiSlopes?.length ?? 0));
  qItems.forEach((item, n) => meta.set(item, ITEM_WORDS * n));
  kItems.forEach((item, n) => meta.set(item, kItemsAt + ITEM_WORDS * n));
  writeSequences(p, meta, seqTable, slopeTable);
  const qLength = p.qShape.reduce((a, b) => a * b, 1);
  const kLength = p.kShape.reduce((a, b) => a * b, 1);
  const vLength = p.vShape.reduce((a, b) => a * b, 1);
  const bindings: [string, number][] = [
    ["out", call.o.byteLength],
    ["dOut", call.dOut.byteLength],
    ["lse and D", 8 * p.lseLength],
    ["dq", 4 * qLength],
    ["dk and dv", 4 * (kLength + vLength)],
  ];
  for (const [name, data] of [["q", p.q], ["k", p.k], ["v", p.v]] as const) {
    if (!gpuInputs.has(name)) bindings.push([name, data.byteLength]);
  }
  if (p.mask) bindings.push(["the mask", p.mask.data.byteLength]);
  for (const [what, bytes] of bindings) checkBinding(ctx, what, bytes, p.shapes);
  const qGrid = grid(qItems.length, limits.maxComputeWorkgroupsPerDimension, p.shapes);
  const kGrid = grid(kItems.length, limits.maxComputeWorkgroupsPerDimension, p.shapes);

  const params = new ArrayBuffer(4 * BACKWARD_PARAM_WORDS);
  const u32 = new Uint32Array(params);
  const i32 = new Int32Array(params);
  const f32 = new Float32Array(params);
  const m = p.mask?.strides ?? [0, 0, 0, 0];
  const P = BACKWARD_PARAM;
  u32[P.items] = qItems.length;
  u32[P.g] = p.group;
  u32[P.seqTable] = seqTable;
  u32[P.slopeTable] = slopeTable;
  u32[P.qRow] = p.qStrides.row;
  u32[P.qHead] = p.qStrides.head;
  u32[P.kRow] = p.kStrides.row;
  u32[P.kHead] = p.kStrides.head;
  u32[P.vRow] = p.vStrides.row;
  u32[P.vHead] = p.vStrides.head;
  u32[P.oRow] = p.oStrides.row;
  u32[P.oHead] = p.oStrides.head;
  u32[P.lseRow] = p.lseStrides.row;
  u32[P.lseHead] = p.lseStrides.head;
  u32[P.dOffset] = p.lseLength;
  i32[P.windowLeft] = p.windowLeft;
  i32[P.windowRight] = p.windowRight;
  f32[P.scale] = p.scale;
  f32[P.softcap] = p.softcap;
  u32[P.maskH] = m[1];
  u32[P.maskI] = m[2];
  u32[P.maskJ] = m[3];
  u32[P.gridX] = qGrid[0];
  u32[P.kItems] = kItemsAt;
  u32[P.kItemCount] = kItems.length;
  u32[P.dvOffset] = kLength;
  u32[P.kGridX] = kGrid[0];

  const key = backwardKey(kernel);
  const [prep, dqPipeline, dkdvPipeline] = await Promise.all([
    compiled(
      ctx,
      `bwd-prep ${kernel.Br},${kernel.dv},${kernel.oKind},${kernel.dOKind}`,
      () => backwardPrepKernel(kernel),
    ),
    compiled(ctx, `bwd-dq ${key}`, () => backwardDqKernel(kernel)),
    compiled(ctx, `bwd-dkdv ${key}`, () => backwardDkDvKernel(kernel)),
  ]);

  const made: GpuBufferLike[] = [];
  const buffer = (size: number, usage: number, label: string) => {
    const b = device.createBuffer({ size: roundUp4(size), usage, label });
    made.push(b);
    return b;
  };
  const STORAGE_IN = BUFFER_USAGE.STORAGE | BUFFER_USAGE.COPY_DST;
  const STORAGE_OUT = BUFFER_USAGE.STORAGE | BUFFER_USAGE.COPY_SRC;
  try {
    device.pushErrorScope("out-of-memory");
    device.pushErrorScope("validation");
    const uploads = new Map<ArrayBufferView, GpuBufferLike>();
    const upload = (data: ArrayBufferView, label: string) => {
      let b = uploads.get(data);
      if (b === undefined) {
        b = buffer(data.byteLength, STORAGE_IN, label);
        writeArray(ctx, b, data);
        uploads.set(data, b);
      }
      return b;
    };
    const [q, k, v] = ([["q", p.q], ["k", p.k], ["v", p.v]] as const).map(([name, data]) =>
      gpuInputs.get(name) ?? upload(data, name)
    );
    const o = upload(call.o, "O");
    const dO = upload(call.dOut, "dO");
    const ld = buffer(8 * p.lseLength, STORAGE_IN, "lse, D");
    writeArray(ctx, ld, call.lse);
    const metaBuffer = buffer(meta.byteLength, STORAGE_IN, "work list");
    writeArray(ctx, metaBuffer, meta);
    const paramBuffer = buffer(params.byteLength, BUFFER_USAGE.UNIFORM | BUFFER_USAGE.COPY_DST, "params");
    device.queue.writeBuffer(paramBuffer, 0, new Uint8Array(params));
    const mask = p.mask ? upload(p.mask.data, "mask") : undefined;
    const dqBuffer = buffer(4 * qLength, STORAGE_OUT, "dQ");
    const dkvBuffer = buffer(4 * (kLength + vLength), STORAGE_OUT, "dK, dV");
    const group = (pipeline: GpuPipelineLike, buffers: (GpuBufferLike | undefined)[]) =>
      device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: buffers.flatMap((b, binding) => b ? [{ binding, resource: { buffer: b } }] : []),
      });
    const prepGroup = group(prep, [paramBuffer, o, dO, ld, metaBuffer]);
    const dqGroup = group(dqPipeline, [paramBuffer, q, k, v, dO, ld, metaBuffer, dqBuffer, mask]);
    const dkdvGroup = group(dkdvPipeline, [paramBuffer, q, k, v, dO, ld, metaBuffer, dkvBuffer, mask]);
    const dqStage = buffer(4 * qLength, BUFFER_USAGE.MAP_READ | BUFFER_USAGE.COPY_DST, "dQ readback");
    const dkvStage = buffer(4 * (kLength + vLength), BUFFER_USAGE.MAP_READ | BUFFER_USAGE.COPY_DST, "dK, dV readback");
    const timed = passMs !== undefined && device.features.has("timestamp-query") && device.createQuerySet !== undefined;
    const querySet = timed
      ? device.createQuerySet!({ type: "timestamp", count: 2 * BACKWARD_PASSES.length })
      : undefined;
    const ticksBytes = 16 * BACKWARD_PASSES.length;
    const ticks = timed
      ? buffer(ticksBytes, BUFFER_USAGE.QUERY_RESOLVE | BUFFER_USAGE.COPY_SRC, "timestamps")
      : undefined;
    const ticksStage = timed
      ? buffer(ticksBytes, BUFFER_USAGE.MAP_READ | BUFFER_USAGE.COPY_DST, "timestamps")
      : undefined;
    const encoder = device.createCommandEncoder();
    for (
      const [n, [pipeline, bindGroup, [x, y]]] of ([[prep, prepGroup, qGrid], [dqPipeline, dqGroup, qGrid], [
        dkdvPipeline,
        dkdvGroup,
        kGrid,
      ]] as const).entries()
    ) {
      const pass = encoder.beginComputePass(
        querySet
          ? { timestampWrites: { querySet, beginningOfPassWriteIndex: 2 * n, endOfPassWriteIndex: 2 * n + 1 } }
          : undefined,
      );
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bindGroup);
      pass.dispatchWorkgroups(x, y);
      pass.end();
    }
    if (querySet) {
      encoder.resolveQuerySet!(querySet, 0, 2 * BACKWARD_PASSES.length, ticks!, 0);
      encoder.copyBufferToBuffer(ticks!, 0, ticksStage!, 0, ticksBytes);
    }
    encoder.copyBufferToBuffer(dqBuffer, 0, dqStage, 0, dqStage.size);
    encoder.copyBufferToBuffer(dkvBuffer, 0, dkvStage, 0, dkvStage.size);
    device.queue.submit([encoder.finish()]);
    const [invalid, oom] = await Promise.all([device.popErrorScope(), device.popErrorScope()]);
    if (oom) throw new RangeError(message(`the GPU ran out of memory for this call: ${oom.message} (${p.shapes})`));
    if (invalid) {
      throw new TypeError(
        message(
          `the GPU rejected the call (is every GPU buffer from this device, and not destroyed?): ${invalid.message} (${p.shapes})`,
        ),
      );
    }
    await Promise.all([dqStage.mapAsync(MAP_READ), dkvStage.mapAsync(MAP_READ), ticksStage?.mapAsync(MAP_READ)]);
    if (ticksStage) {
      const t = new BigUint64Array(ticksStage.getMappedRange());
      for (let n = 0; n < BACKWARD_PASSES.length; n++) passMs!.push(Number(t[2 * n + 1] - t[2 * n]) / 1e6);
      querySet!.destroy();
    }
    const dqData = call.out.dq ?? new Float32Array(qLength);
    const dkData = call.out.dk ?? new Float32Array(kLength);
    const dvData = call.out.dv ?? new Float32Array(vLength);
    dqData.set(new Float32Array(dqStage.getMappedRange(), 0, qLength));
    const dkv = dkvStage.getMappedRange();
    dkData.set(new Float32Array(dkv, 0, kLength));
    dvData.set(new Float32Array(dkv, 4 * kLength, vLength));
    return {
      dq: { data: dqData, shape: p.qShape },
      dk: { data: dkData, shape: p.kShape },
      dv: { data: dvData, shape: p.vShape },
    };
  } finally {
    for (const b of made) b.destroy();
  }
}
