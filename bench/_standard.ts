// Standard attention as the paper's Algorithm 0 (Dao et al. 2022, §2.2), with its HBM traffic
// counted: the baseline the IO report sets against the flash kernel's counters.
//
//   Require Q, K, V in HBM.
//   1. Load Q, K by blocks from HBM, compute S = scale·QKᵀ, write S to HBM.
//   2. Read S from HBM, compute P = softmax(S), write P to HBM.
//   3. Load P and V by blocks from HBM, compute O = PV, write O to HBM.
//
// S and P are real Nq × Nk arrays (f32, one pair per head) standing for HBM; the arithmetic works on
// local rows standing for on-chip memory, and every element that crosses between the two goes
// through `move`, the one function that counts bytes. On-chip memory is unbounded here: K stays on
// chip for all of phase 1 and V for all of phase 3, so each phase reads its inputs and writes its
// output once — the most favourable case for standard attention, and what the paper counts. A
// sequence without queries or keys has an empty S and reads nothing; it writes its O (zeros) and lse.
// Masks, when given, are read in phase 2; causal and windows are applied there from indices
// (no traffic). lse, when asked for, is written in phase 2. With `elementBytes: 2` the HBM tensors
// (Q, K, V, S, P, O) are stored in fp16, as in the paper's runs: each element that crosses counts
// 2 bytes, and what is written to S, P and O is rounded to f16 on its way (lse stays f32).
//
// It lives in bench/ because the IO report is what it exists for (its counts stand beside the
// kernel's there); tests/io_test.ts imports it to check that its output is attention (against the
// f64 reference) and that its counts equal standardAttentionIo, so the report's baseline is tested.

import type { Mask, Tensor } from "../mod.ts";
import { convertInto } from "../src/_half.ts";
import { type IoCounts, sumBytes, type TensorBytes, zeroBytes } from "../src/result.ts";

/** Options of {@linkcode standardAttention}: `flashAttention`'s semantics, BSHD layout only. */
export interface StandardOptions {
  /** Default 1/sqrt(d). */
  scale?: number;
  /** As `flashAttention`: `true`/`"bottom-right"` (j ≤ i + Nk − Nq) or `"top-left"` (j ≤ i). */
  causal?: boolean | "bottom-right" | "top-left";
  /** `[left, right]`, −1 unbounded, aligned like `causal`. */
  windowSize?: readonly [number, number];
  /** Additive f32 bias or u8 mask (nonzero attends), broadcast right-aligned to [B, H, Nq, Nk]. */
  mask?: Mask;
  /** Also compute lse = log Σ_j exp(S_ij), shape [B, H, Nq]. */
  returnLse?: boolean;
  /**
   * Bytes per element of Q, K, V, S, P and O in HBM: 4 (f32, default) or 2 (fp16 storage: q, k, v
   * should then hold f16 values, and S, P and O are rounded to f16 as they are written).
   */
  elementBytes?: 2 | 4;
}

/** O [B, Nq, H, dv], lse [B, H, Nq] when asked for, and the counted HBM traffic. */
export interface StandardResult {
  o: Tensor;
  lse?: Float32Array;
  io: IoCounts;
}

/** Standard attention (Algorithm 0) on q [B, Nq, H, d], k [B, Nk, Hkv, d], v [B, Nk, Hkv, dv]. */
export function standardAttention(q: Tensor, k: Tensor, v: Tensor, options: StandardOptions = {}): StandardResult {
  const [B, Nq, H, d] = q.shape;
  const [, Nk, Hkv] = k.shape;
  const dv = v.shape[3];
  const g = H / Hkv;
  const scale = options.scale ?? 1 / Math.sqrt(d);
  const read = zeroBytes();
  const written = zeroBytes();
  const elementBytes = options.elementBytes ?? 4;
  const bits = new Uint16Array(Math.max(Nk, dv));

  /**
   * The one place HBM is touched: copies n elements from `src` (at srcAt, stride srcStride) to
   * `dst` (at dstAt, stride 1), counting their bytes as read (HBM → chip) or written (chip → HBM)
   * for `tensor`: `elementBytes` each, except the mask's own size and lse's 4. With fp16 storage
   * what is written to S, P and O is rounded to f16 first.
   */
  function move(
    direction: "read" | "write",
    tensor: keyof TensorBytes,
    dst: Float32Array | Uint8Array,
    dstAt: number,
    src: Float32Array | Uint8Array,
    srcAt: number,
    srcStride: number,
    n: number,
  ): void {
    const stored = tensor === "mask" ? src.BYTES_PER_ELEMENT : tensor === "lse" ? 4 : elementBytes;
    if (direction === "write" && stored === 2) {
      // round to f16 and back (exact), through the library's own conversion
      convertInto(bits, "f16", 0, src as Float32Array, "f32", srcAt, n);
      convertInto(dst as Float32Array, "f32", dstAt, bits, "f16", 0, n);
    } else {
      for (let x = 0; x < n; x++) dst[dstAt + x] = src[srcAt + x * srcStride];
    }
    (direction === "read" ? read : written)[tensor] += n * stored;
  }

  const o = new Float32Array(B * Nq * H * dv);
  const lse = options.returnLse ? new Float32Array(B * H * Nq) : undefined;
  const [windowLeft, windowRight] = options.windowSize ?? [-1, -1];
  const right = options.causal ? 0 : windowRight;
  const offset = options.causal === "top-left" ? 0 : Nk - Nq;
  const sees = (i: number, j: number) =>
    (windowLeft < 0 || j >= i + offset - windowLeft) && (right < 0 || j <= i + offset + right);
  const mask = options.mask;
  const maskStrides = mask ? broadcastStrides(mask.shape, [B, H, Nq, Nk]) : [0, 0, 0, 0];

  // HBM: the per-head S and P.
  const S = new Float32Array(Nq * Nk);
  const P = new Float32Array(Nq * Nk);
  // On chip: whole K or V of a head, one row of Q, S/P (and its f64 working copy), mask and O.
  const kChip = new Float32Array(Nk * d);
  const vChip = new Float32Array(Nk * dv);
  const qRow = new Float32Array(d);
  const sRow = new Float32Array(Nk);
  const scores = new Float64Array(Nk);
  const maskRow = mask ? new (mask.data instanceof Uint8Array ? Uint8Array : Float32Array)(Nk) : undefined;
  const oRow = new Float32Array(dv);
  const lseValue = new Float32Array(1);

  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / g);
      // 1. S = scale·QKᵀ; an empty S (no queries or no keys) needs no Q or K
      if (Nq > 0 && Nk > 0) {
        for (let j = 0; j < Nk; j++) move("read", "k", kChip, j * d, k.data, ((b * Nk + j) * Hkv + kvh) * d, 1, d);
        for (let i = 0; i < Nq; i++) {
          move("read", "q", qRow, 0, q.data, ((b * Nq + i) * H + h) * d, 1, d);
          for (let j = 0; j < Nk; j++) {
            let dot = 0;
            for (let c = 0; c < d; c++) dot += qRow[c] * kChip[j * d + c];
            sRow[j] = scale * dot;
          }
          move("write", "partial", S, i * Nk, sRow, 0, 1, Nk);
        }
      }
      // 2. P = softmax(S + mask), −∞ where not visible; lse = m + log(l)
      for (let i = 0; i < Nq; i++) {
        move("read", "partial", sRow, 0, S, i * Nk, 1, Nk);
        if (mask && maskRow) {
          const at = b * maskStrides[0] + h * maskStrides[1] + i * maskStrides[2];
          move("read", "mask", maskRow, 0, mask.data, at, maskStrides[3], Nk);
        }
        let m = -Infinity;
        for (let j = 0; j < Nk; j++) {
          let x = sees(i, j) ? sRow[j] : -Infinity;
          if (maskRow) {
            // A blocked key (u8 zero or f32 −∞) is gone whatever its score, as in flashAttention.
            const blocked = maskRow instanceof Uint8Array ? maskRow[j] === 0 : maskRow[j] === -Infinity;
            x = blocked ? -Infinity : x + (maskRow instanceof Uint8Array ? 0 : maskRow[j]);
          }
          scores[j] = x;
          m = Math.max(m, x);
        }
        let l = 0;
        for (let j = 0; j < Nk; j++) {
          scores[j] = m === -Infinity ? 0 : Math.exp(scores[j] - m);
          l += scores[j];
        }
        for (let j = 0; j < Nk; j++) sRow[j] = l === 0 ? 0 : scores[j] / l;
        move("write", "partial", P, i * Nk, sRow, 0, 1, Nk);
        if (lse) {
          lseValue[0] = l === 0 ? -Infinity : m + Math.log(l);
          move("write", "lse", lse, (b * H + h) * Nq + i, lseValue, 0, 1, 1);
        }
      }
      // 3. O = PV; without queries V is not needed
      for (let j = 0; j < Nk && Nq > 0; j++) {
        move("read", "v", vChip, j * dv, v.data, ((b * Nk + j) * Hkv + kvh) * dv, 1, dv);
      }
      for (let i = 0; i < Nq; i++) {
        move("read", "partial", sRow, 0, P, i * Nk, 1, Nk);
        for (let c = 0; c < dv; c++) {
          let sum = 0;
          for (let j = 0; j < Nk; j++) sum += sRow[j] * vChip[j * dv + c];
          oRow[c] = sum;
        }
        move("write", "o", o, ((b * Nq + i) * H + h) * dv, oRow, 0, 1, dv);
      }
    }
  }
  const io = { read, written, totalBytes: sumBytes(read) + sumBytes(written) };
  return { o: { data: o, shape: [B, Nq, H, dv] }, lse, io };
}

/** Element strides of a mask broadcast right-aligned to `full` (0 along broadcast dimensions). */
function broadcastStrides(shape: readonly number[], full: number[]): number[] {
  const padded = [...Array(full.length - shape.length).fill(1), ...shape];
  const strides = new Array<number>(full.length);
  let stride = 1;
  for (let a = full.length - 1; a >= 0; a--) {
    strides[a] = padded[a] === 1 ? 0 : stride;
    stride *= padded[a];
  }
  return strides;
}
