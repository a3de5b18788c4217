// `flash-attention io`: the HBM traffic of standard and flash attention for one shape, from the IO
// model of src/io.ts (the paper's Algorithm 0 against this library's kernels).

import { parseArgs } from "node:util";
import { DEFAULT_SRAM_BYTES } from "../_limits.ts";
import { type AttentionShape, flashAttentionBackwardIo, flashAttentionIo, standardAttentionIo } from "../io.ts";
import { type BackwardTensorBytes, type IoCounts, sumBytes, type TensorBytes, zeroBackwardBytes } from "../result.ts";
import { byteSize, integer, parseWith, UsageError } from "./args.ts";
import { binaryBytes, groupDigits, table } from "./format.ts";
import type { Streams } from "./output.ts";

/** The options of `io`, as node:util's parseArgs takes them. */
export const IO_OPTIONS = {
  seq: { type: "string" },
  "seq-k": { type: "string" },
  batch: { type: "string" },
  heads: { type: "string" },
  "kv-heads": { type: "string" },
  dim: { type: "string" },
  "dim-v": { type: "string" },
  sram: { type: "string" },
  causal: { type: "boolean" },
  lse: { type: "boolean" },
  backward: { type: "boolean" },
  "bytes-per-element": { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

/** The help of `io`. */
export const IO_HELP = `Usage: flash-attention io [options]

Prints the HBM traffic (bytes read and written, per tensor and in total) of standard attention,
counted as the paper's Algorithm 0, and of this library's kernel for the block sizes it derives
from the arena size: flashAttentionIo and standardAttentionIo of @flash/attention/io, which
equal what the kernels count (flashAttention(..., { stats: true })). Nothing is computed.

Options:
  --seq <n>                   queries per sequence Nq, and keys Nk unless --seq-k (default 1024)
  --seq-k <n>                 keys per sequence Nk (default Nq)
  --batch <n>                 batch size B (default 1)
  --heads <n>                 query heads H (default 8)
  --kv-heads <n>              key/value heads Hkv, a divisor of H (default H; fewer is GQA)
  --dim <n>                   head dim d of q and k (default 64)
  --dim-v <n>                 head dim dv of v (default d)
  --sram <size>               arena size M, bytes or KiB/MiB: 131072, 128KiB, 1MiB (default 128KiB)
  --causal                    causal mask (key blocks no query of a block sees are skipped)
  --lse                       the forward also writes lse (one f32 per query and head)
  --backward                  also the backward: flashAttentionBackwardIo against standard
                              attention's backward (the paper's Algorithm 3)
  --bytes-per-element <4|2>   4: f32, as the library runs (default); 2: fp16/bf16, every count
                              halved (the same tiling; the paper's GPUs ran fp16)
  --json                      print JSON instead of tables
  -h, --help                  show this help

Example: flash-attention io --seq 4096 --heads 16 --dim 64 --causal --backward`;

/**
 * HBM traffic of standard attention's backward, the paper's Algorithm 3, per query head (a GQA
 * group does not share K and V), f32: dV = Pᵀ·dO reads P and dO, writes dV; dP = dO·Vᵀ reads dO
 * and V, writes dP; dS = P ∘ (dP − rowsum(P ∘ dP)) reads P and dP, writes dS; dQ = dS·K reads dS
 * and K, writes dQ; dK = dSᵀ·Q reads dS and Q, writes dK. P, dP and dS count under `partial`.
 * For Nq = Nk = N and dv = d: elementBytes·(5N² + 5Nd + 2N² + 3Nd) per head.
 *
 * @param shape The problem's sizes.
 * @param elementBytes Bytes of every element (4: f32; bench/io_report.ts also takes 2, fp16).
 * @returns Bytes read and written per tensor.
 */
export function standardBackwardIo(
  shape: AttentionShape,
  elementBytes = 4,
): { read: BackwardTensorBytes; written: BackwardTensorBytes; totalBytes: number } {
  const { B, H, Nq, Nk, d } = shape;
  const dv = shape.dv ?? d;
  const heads = B * H;
  const read = zeroBackwardBytes();
  const written = zeroBackwardBytes();
  read.partial = elementBytes * heads * 5 * Nq * Nk; // P twice, dP once, dS twice
  written.partial = elementBytes * heads * 2 * Nq * Nk; // dP and dS
  read.dOut = elementBytes * heads * 2 * Nq * dv;
  read.v = elementBytes * heads * Nk * dv;
  read.k = elementBytes * heads * Nk * d;
  read.q = elementBytes * heads * Nq * d;
  written.dv = elementBytes * heads * Nk * dv;
  written.dq = elementBytes * heads * Nq * d;
  written.dk = elementBytes * heads * Nk * d;
  return { read, written, totalBytes: sumBytes(read) + sumBytes(written) };
}

/** Counts with every byte field multiplied by `factor` (the tiling fields as they are). */
function scaled<T extends IoCounts>(counts: T, factor: number): T {
  const scale = (bytes: TensorBytes) => {
    const result = { ...bytes };
    for (const key of Object.keys(result) as (keyof TensorBytes)[]) result[key] *= factor;
    return result;
  };
  return {
    ...counts,
    read: scale(counts.read),
    written: scale(counts.written),
    totalBytes: counts.totalBytes * factor,
  };
}

/** The per-tensor table of one pass: a row for every tensor either side reads or writes. */
function tensorTable(standard: IoCounts, flash: IoCounts): string {
  const keys = Object.keys(flash.read) as (keyof TensorBytes)[];
  const rows = keys
    .filter((key) => standard.read[key] || standard.written[key] || flash.read[key] || flash.written[key])
    .map((key) => [
      key,
      groupDigits(standard.read[key] ?? 0),
      groupDigits(standard.written[key] ?? 0),
      groupDigits(flash.read[key]),
      groupDigits(flash.written[key]),
    ]);
  rows.push([
    "total",
    groupDigits(sumBytes(standard.read)),
    groupDigits(sumBytes(standard.written)),
    groupDigits(sumBytes(flash.read)),
    groupDigits(sumBytes(flash.written)),
  ]);
  return table(["tensor", "standard read", "standard written", "flash read", "flash written"], rows);
}

/**
 * Runs `flash-attention io`.
 *
 * @param args The arguments after "io".
 * @param streams Where to write.
 * @returns The exit code: 0.
 * @throws {UsageError} For a malformed command line.
 * @throws {RangeError} If the arena cannot hold the smallest blocks for these head dims (from src/io.ts).
 */
export function io(args: string[], streams: Streams): number {
  const { values } = parseWith(() => parseArgs({ args, options: IO_OPTIONS, strict: true }));
  if (values.help) {
    streams.stdout.write(`${IO_HELP}\n`);
    return 0;
  }
  const Nq = integer("--seq", values.seq, 1024);
  const Nk = integer("--seq-k", values["seq-k"], Nq);
  const B = integer("--batch", values.batch, 1);
  const H = integer("--heads", values.heads, 8);
  const Hkv = integer("--kv-heads", values["kv-heads"], H);
  if (H % Hkv !== 0) throw new UsageError(`--kv-heads must divide --heads: --heads is ${H}, --kv-heads is ${Hkv}`);
  const d = integer("--dim", values.dim, 64);
  const dv = integer("--dim-v", values["dim-v"], d);
  const sramBytes = byteSize("--sram", values.sram, DEFAULT_SRAM_BYTES);
  const bytesPerElement = values["bytes-per-element"] ?? "4";
  if (bytesPerElement !== "4" && bytesPerElement !== "2") {
    throw new UsageError(`--bytes-per-element must be 4 or 2: --bytes-per-element is "${bytesPerElement}"`);
  }
  const factor = Number(bytesPerElement) / 4;
  const causal = values.causal ?? false;
  const returnLse = values.lse ?? false;
  const shape: Required<AttentionShape> = { B, H, Hkv, Nq, Nk, d, dv };

  const forward = {
    standard: scaled(standardAttentionIo(shape, { returnLse }), factor),
    flash: scaled(flashAttentionIo(shape, { causal, sramBytes, returnLse }), factor),
  };
  const backward = values.backward
    ? {
      standard: scaled(standardBackwardIo(shape), factor),
      flash: scaled(flashAttentionBackwardIo(shape, { causal, sramBytes }), factor),
    }
    : undefined;
  const ratio = (pass: { standard: IoCounts; flash: IoCounts }) => pass.standard.totalBytes / pass.flash.totalBytes;

  if (values.json) {
    const report = {
      shape,
      options: { causal, returnLse, sramBytes },
      bytesPerElement: Number(bytesPerElement),
      forward: { ...forward, ratio: ratio(forward) },
      ...(backward ? { backward: { ...backward, ratio: ratio(backward) } } : {}),
    };
    streams.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    return 0;
  }
  const out = (line = "") => streams.stdout.write(`${line}\n`);
  const total = (bytes: number) => `${groupDigits(bytes)} bytes (${binaryBytes(bytes)})`;
  const summary = (pass: { standard: IoCounts; flash: IoCounts }) =>
    `standard ${total(pass.standard.totalBytes)}, flash ${total(pass.flash.totalBytes)}: ` +
    `standard ÷ flash = ${ratio(pass).toFixed(2)}×`;
  const f = forward.flash;
  out("flash-attention io — HBM traffic, standard attention vs this library's kernels (src/io.ts)");
  out(
    `B = ${B}, H = ${H}, Hkv = ${Hkv}, Nq = ${Nq}, Nk = ${Nk}, d = ${d}, dv = ${dv}; ${
      causal ? "causal" : "non-causal"
    }; ${
      factor === 1
        ? "f32 (4-byte elements)"
        : "2-byte elements (fp16/bf16): the f32 counts halved, for the f32 kernels' blocks"
    }`,
  );
  out(
    `arena M = ${binaryBytes(sramBytes)}: forward blocks Br = ${f.Br}, Bc = ${f.Bc} (Tr = ${f.Tr}, Tc = ${f.Tc}; ` +
      `${f.tilesComputed} tiles computed, ${f.tilesSkipped} skipped; ${
        binaryBytes(f.sramPeakBytes)
      } of the arena used)`,
  );
  out();
  out("forward (partial: S and P for standard attention; split-KV partials for flash)");
  out();
  out(tensorTable(forward.standard, forward.flash));
  out();
  out(summary(forward));
  if (backward) {
    const b = backward.flash;
    out();
    out(
      `backward (Algorithm 3 for standard attention; partial: its P, dP and dS, flash's partial dQ), blocks Br = Bc = ${b.Br} ` +
        `(Tr = ${b.Tr}, Tc = ${b.Tc}; ${b.tilesComputed} tiles computed, ${b.tilesSkipped} skipped)`,
    );
    out();
    out(tensorTable(backward.standard, backward.flash));
    out();
    out(summary(backward));
    const both = {
      standard: { totalBytes: forward.standard.totalBytes + backward.standard.totalBytes },
      flash: { totalBytes: forward.flash.totalBytes + backward.flash.totalBytes },
    };
    out(
      `forward + backward: standard ${total(both.standard.totalBytes)}, flash ${total(both.flash.totalBytes)}: ` +
        `standard ÷ flash = ${(both.standard.totalBytes / both.flash.totalBytes).toFixed(2)}×`,
    );
  }
  return 0;
}
