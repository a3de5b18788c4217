// Places a validated problem in the kernels' HBM (linear memory), runs the forward kernel head by
// head and copies the results out.
//
// Two placements, one kernel:
// - whole: every tensor is copied in with one bulk copy and the kernel reads heads through the
//   layout's strides. Used while everything fits in WHOLE_BUDGET_BYTES.
// - streamed: per (batch, head), K and V of that head are gathered into HBM and Q is fed in
//   chunks of rows; each chunk's O goes straight to the caller's buffer. The HBM footprint is one
//   head's K and V plus a chunk, whatever B and H are — what keeps a 65,536-token call small.
// A query row's result does not depend on how rows are grouped into blocks or chunks (each row's
// arithmetic only depends on the key tiling), so both placements give the same bits.

import type { AttentionProblem } from "./_validate.ts";
import { message } from "./_validate.ts";
import type { Kernels } from "./wasm/loader.ts";

/** Problems whose tensors total at most this many bytes are copied in whole. */
export const WHOLE_BUDGET_BYTES = 16 << 20;
/** Target size of one streamed chunk of Q plus its O. */
const CHUNK_BYTES = 1 << 20;
const PAGE_BYTES = 65536;
/** wasm32 addresses 4 GiB. */
const MAX_MEMORY_BYTES = 65536 * PAGE_BYTES;

/** What the kernel needs beyond the validated shapes. */
export interface ForwardConfig {
  sramBytes: number;
  Br: number;
  out: Float32Array | undefined;
  /** Placement threshold; tests lower it to exercise streaming on small shapes. */
  wholeBudgetBytes?: number;
}

/** Output and (when asked for) lse of a forward call. */
export interface ForwardResult {
  o: Float32Array;
  lse: Float32Array | undefined;
}

const align = (bytes: number) => Math.ceil(bytes / 64) * 64;

/** Byte offsets of consecutive 64-byte aligned buffers of the given float counts, and the end. */
function place(base: number, floats: number[]): number[] {
  const ptrs: number[] = [];
  let at = base;
  for (const n of floats) {
    ptrs.push(at);
    at = align(at + 4 * n);
  }
  ptrs.push(at);
  return ptrs;
}

function ensureMemory(kernels: Kernels, endBytes: number, what: string): void {
  if (endBytes > MAX_MEMORY_BYTES) {
    throw new RangeError(
      message(
        `${what} needs ${endBytes} bytes of WebAssembly memory, more than the ${MAX_MEMORY_BYTES} bytes (4 GiB) a wasm32 module can address`,
      ),
    );
  }
  const memory = kernels.memory;
  const missing = endBytes - memory.buffer.byteLength;
  if (missing <= 0) return;
  try {
    memory.grow(Math.ceil(missing / PAGE_BYTES));
  } catch (cause) {
    throw new RangeError(
      message(`${what} needs ${endBytes} bytes of WebAssembly memory and the runtime refused to grow it`),
      { cause },
    );
  }
}

/** Copies `rows` rows of `cols` floats between arrays with the given row strides. */
function copyRows(
  dst: Float32Array,
  dstAt: number,
  dstStride: number,
  src: Float32Array,
  srcAt: number,
  srcStride: number,
  rows: number,
  cols: number,
): void {
  if (dstStride === cols && srcStride === cols) {
    dst.set(src.subarray(srcAt, srcAt + rows * cols), dstAt);
    return;
  }
  for (let r = 0; r < rows; r++) {
    const s = srcAt + r * srcStride;
    dst.set(src.subarray(s, s + cols), dstAt + r * dstStride);
  }
}

/** Runs the forward pass of a validated problem. */
export function runForward(kernels: Kernels, p: AttentionProblem, config: ForwardConfig): ForwardResult {
  const { B, H, Nq, dv } = p;
  const oLength = B * Nq * H * dv;
  const lseLength = p.returnLse ? B * H * Nq : 0;
  const wholeFloats = [p.q.length, p.k.length, p.v.length, oLength, lseLength];
  const wholeBytes = wholeFloats.reduce((a, n) => a + 4 * n, 0);
  const o = config.out ?? new Float32Array(oLength);
  const lse = p.returnLse ? new Float32Array(lseLength) : undefined;
  if (wholeBytes <= (config.wholeBudgetBytes ?? WHOLE_BUDGET_BYTES)) {
    runWhole(kernels, p, config, wholeFloats, o, lse);
  } else {
    runStreamed(kernels, p, config, o, lse);
  }
  return { o, lse };
}

function runWhole(
  kernels: Kernels,
  p: AttentionProblem,
  config: ForwardConfig,
  floats: number[],
  o: Float32Array,
  lse: Float32Array | undefined,
): void {
  const { B, H, Nq, Nk, d, dv, qStrides: qs, kStrides: ks, vStrides: vs, oStrides: os } = p;
  const [qPtr, kPtr, vPtr, oPtr, lsePtr, end] = place(kernels.hbmPtr(), floats);
  ensureMemory(kernels, end, "this call");
  const hbm = new Float32Array(kernels.memory.buffer);
  hbm.set(p.q, qPtr / 4);
  hbm.set(p.k, kPtr / 4);
  hbm.set(p.v, vPtr / 4);
  const [left, right] = p.causal ? [-1, 0] : [-1, -1];
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      kernels.forwardHead(
        qPtr + 4 * (b * qs.batch + h * qs.head),
        qs.row,
        kPtr + 4 * (b * ks.batch + h * ks.head),
        ks.row,
        vPtr + 4 * (b * vs.batch + h * vs.head),
        vs.row,
        oPtr + 4 * (b * os.batch + h * os.head),
        os.row,
        lse ? lsePtr + 4 * (b * H + h) * Nq : 0,
        Nq,
        Nk,
        d,
        dv,
        p.scale,
        Nk - Nq,
        left,
        right,
        config.sramBytes,
      );
    }
  }
  o.set(hbm.subarray(oPtr / 4, oPtr / 4 + o.length));
  lse?.set(hbm.subarray(lsePtr / 4, lsePtr / 4 + lse.length));
}

function runStreamed(
  kernels: Kernels,
  p: AttentionProblem,
  config: ForwardConfig,
  o: Float32Array,
  lse: Float32Array | undefined,
): void {
  const { B, H, Nq, Nk, d, dv, qStrides: qs, kStrides: ks, vStrides: vs, oStrides: os } = p;
  const Br = config.Br;
  const chunkRows = Math.min(Nq, Math.max(Br, Math.floor(CHUNK_BYTES / (4 * (d + dv + 1)) / Br) * Br));
  const [kPtr, vPtr, qPtr, oPtr, lsePtr, end] = place(
    kernels.hbmPtr(),
    [Nk * d, Nk * dv, chunkRows * d, chunkRows * dv, chunkRows],
  );
  ensureMemory(kernels, end, "one head of this call");
  const hbm = new Float32Array(kernels.memory.buffer);
  const [left, right] = p.causal ? [-1, 0] : [-1, -1];
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      copyRows(hbm, kPtr / 4, d, p.k, b * ks.batch + h * ks.head, ks.row, Nk, d);
      copyRows(hbm, vPtr / 4, dv, p.v, b * vs.batch + h * vs.head, vs.row, Nk, dv);
      for (let i0 = 0; i0 < Nq; i0 += chunkRows) {
        const rows = Math.min(chunkRows, Nq - i0);
        copyRows(hbm, qPtr / 4, d, p.q, b * qs.batch + h * qs.head + i0 * qs.row, qs.row, rows, d);
        kernels.forwardHead(
          qPtr,
          d,
          kPtr,
          d,
          vPtr,
          dv,
          oPtr,
          dv,
          lse ? lsePtr : 0,
          rows,
          Nk,
          d,
          dv,
          p.scale,
          Nk - Nq + i0,
          left,
          right,
          config.sramBytes,
        );
        copyRows(o, b * os.batch + h * os.head + i0 * os.row, os.row, hbm, oPtr / 4, dv, rows, dv);
        if (lse) {
          const at = (b * H + h) * Nq + i0;
          lse.set(hbm.subarray(lsePtr / 4, lsePtr / 4 + rows), at);
        }
      }
    }
  }
}
