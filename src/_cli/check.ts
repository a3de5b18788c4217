// `flash-attention check`: random equivalence checks of flashAttention against the f64 reference,
// with the tolerance rule of the repository's tests.

import { parseArgs } from "node:util";
import { referenceForward } from "../_reference.ts";
import { validateCall } from "../_validate.ts";
import { flashAttention, type FlashAttentionOptions } from "../flash_attention.ts";
import { referenceAttention, type ReferenceOptions } from "../reference.ts";
import type { AttentionOutput } from "../result.ts";
import type { Mask, Tensor } from "../tensor.ts";
import { integer, parseWith } from "./args.ts";
import { binaryBytes } from "./format.ts";
import { progress, type Streams } from "./output.ts";
import { runtimeName } from "./platform.ts";
import { randomTensor, rng } from "./random.ts";

/** The options of `check`, as node:util's parseArgs takes them. */
export const CHECK_OPTIONS = {
  cases: { type: "string" },
  seed: { type: "string" },
  case: { type: "string" },
  verbose: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

const DEFAULT_CASES = 100;

/** The help of `check`. */
export const CHECK_HELP = `Usage: flash-attention check [options]

Runs flashAttention on random problems and compares each output O and lse with the f64
reference (referenceAttention). A case passes when
  error(flash vs f64) ≤ 2 × error(naive f32 vs f64) + 1e-6
(max absolute errors; naive f32: the reference's loop with every operation rounded to f32), and
NaN appears exactly where the reference has NaN. Cases draw B, H, Hkv (GQA), Nq, Nk, d, dv,
layout, causal (both alignments), windows, scale, softcap, ALiBi, float and boolean masks, key
lengths and the arena size. Exit code 1 if any case fails.

Options:
  --cases <n>     how many cases (default ${DEFAULT_CASES})
  --seed <n>      seed of the cases (default: a random one, printed)
  --case <i>      run only case i of the seed (0-based; a failure names its case)
  --verbose       print every case, not only the failures
  -h, --help      show this help

Example: flash-attention check --cases 500 --seed 42`;

/** One random problem of a check. */
export interface CheckCase {
  /** Its index in the seed's sequence of cases. */
  index: number;
  /** Queries. */
  q: Tensor;
  /** Keys. */
  k: Tensor;
  /** Values. */
  v: Tensor;
  /** The options it runs with: the reference's, `returnLse` always on (lse is checked too), and an arena size. */
  options: ReferenceOptions & { returnLse: true; sramBytes?: number };
}

/** The attention being checked: `flashAttention`, or a stand-in. */
export type Attention = (q: Tensor, k: Tensor, v: Tensor, options: FlashAttentionOptions) => AttentionOutput;

/** A 32-bit mix (murmur3's finaliser), so that case i of a seed does not depend on the others. */
function mix(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/**
 * Case `index` of `seed`: a random problem and options, the same on every run and runtime.
 *
 * @param seed The seed of the run.
 * @param index The case's index.
 * @returns The case.
 */
export function makeCase(seed: number, index: number): CheckCase {
  const random = rng(mix(seed ^ mix(index + 1)));
  const int = (lo: number, hi: number) => lo + Math.floor(random() * (hi - lo + 1));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)];
  const coin = (p: number) => random() < p;
  // Sizes: small enough for the f64 and f32 references, with edges (N = 1, d not a multiple of 4).
  const B = int(1, 2);
  const Hkv = int(1, 2);
  const H = Hkv * pick([1, 1, 2, 3]);
  const Nq = coin(0.15) ? 1 : int(1, 72);
  const Nk = coin(0.4) ? Nq : int(1, 72);
  const d = pick([1, 3, 4, 8, 16, 32, 64, int(1, 80)]);
  const dv = coin(0.2) ? int(1, 80) : d;
  const layout = coin(0.25) ? "bhsd" : "bshd";
  const amplitude = pick([1, 1, 3]);
  const tensor = (N: number, heads: number, dim: number) =>
    randomTensor(random, layout === "bshd" ? [B, N, heads, dim] : [B, heads, N, dim], amplitude);
  const q = tensor(Nq, H, d);
  const k = tensor(Nk, Hkv, d);
  const v = tensor(Nk, Hkv, dv);
  const options: CheckCase["options"] = { returnLse: true };
  if (layout === "bhsd") options.layout = layout;
  const causal = pick([false, false, true, "top-left"] as const);
  if (causal !== false) options.causal = causal;
  if (coin(0.2)) options.windowSize = [int(-1, Nk), int(-1, Nk)];
  if (coin(0.3)) options.scale = 0.05 + 2 * random();
  if (coin(0.2)) options.softcap = 0.5 + 30 * random();
  if (coin(0.15)) options.alibiSlopes = Float32Array.from({ length: coin(0.5) ? H : B * H }, () => random());
  if (coin(0.2)) {
    // A mask broadcasting to [B, H, Nq, Nk]: its trailing dims, each kept or a broadcast 1 (Nk always kept).
    const full = [B, H, Nq, Nk];
    const rank = int(1, 4);
    const shape = full.slice(4 - rank).map((n, i) => (i === rank - 1 || coin(0.6) ? n : 1));
    const size = shape.reduce((a, b) => a * b, 1);
    const mask: Mask = coin(0.5)
      ? { data: Float32Array.from({ length: size }, () => (coin(0.2) ? -Infinity : 4 * random() - 2)), shape }
      : { data: Uint8Array.from({ length: size }, () => (coin(0.2) ? 0 : int(1, 255))), shape };
    options.mask = mask;
  }
  if (coin(0.15)) options.seqLensK = Int32Array.from({ length: B }, () => int(0, Nk));
  const sramBytes = pick([undefined, undefined, 16 * 1024, 32 * 1024]);
  if (sramBytes !== undefined) options.sramBytes = sramBytes;
  return { index, q, k, v, options };
}

/**
 * One line describing a case: its shapes and the options it sets.
 *
 * @param c The case.
 * @returns "q [2, 37, 4, 24], k [2, 51, 2, 24], v [2, 51, 2, 24]; causal, softcap 12.5, ...".
 */
export function describeCase(c: CheckCase): string {
  const shape = (t: Tensor) => `[${t.shape.join(", ")}]`;
  const parts: string[] = [];
  const o = c.options;
  if (o.layout) parts.push(o.layout);
  if (o.causal) parts.push(o.causal === true ? "causal" : `causal "${o.causal}"`);
  if (o.windowSize) parts.push(`window [${o.windowSize.join(", ")}]`);
  if (o.scale !== undefined) parts.push(`scale ${+o.scale.toPrecision(4)}`);
  if (o.softcap !== undefined) parts.push(`softcap ${+o.softcap.toPrecision(4)}`);
  if (o.alibiSlopes) parts.push(`ALiBi (${o.alibiSlopes.length} slopes)`);
  if (o.mask) {
    parts.push(`${o.mask.data instanceof Uint8Array ? "boolean" : "float"} mask [${o.mask.shape.join(", ")}]`);
  }
  if (o.seqLensK) parts.push(`seqLensK [${o.seqLensK.join(", ")}]`);
  if (o.sramBytes) parts.push(`arena ${binaryBytes(o.sramBytes)}`);
  return `q ${shape(c.q)}, k ${shape(c.k)}, v ${shape(c.v)}${parts.length ? `; ${parts.join(", ")}` : ""}`;
}

/** How one output compares with the reference under the tolerance rule. */
export interface Comparison {
  /** max |actual − reference| over the elements where the reference is not NaN. */
  error: number;
  /** The same for the naive f32 baseline. */
  naiveError: number;
  /** The tolerance: 2 × naiveError + 1e-6. */
  bound: number;
  /** The first element that is NaN in one of actual and reference only, or −1. */
  nanMismatch: number;
  /** Whether the output passes: no NaN mismatch and error ≤ bound. */
  ok: boolean;
}

/** max |a − b| where the reference is not NaN; equal values (infinities too) count 0, a NaN difference ∞. */
function maxError(a: ArrayLike<number>, reference: ArrayLike<number>): number {
  let max = 0;
  for (let i = 0; i < reference.length; i++) {
    if (Number.isNaN(reference[i]) || a[i] === reference[i]) continue;
    const e = Math.abs(a[i] - reference[i]);
    if (!(e <= max)) max = Number.isNaN(e) ? Infinity : e;
  }
  return max;
}

/**
 * The tolerance rule of the repository's tests (`assertFlashTolerance` in tests/_util.ts, which
 * gives the reasons): error(actual vs f64 reference) ≤ 2 × error(naive f32 vs f64 reference) +
 * 1e-6. The factor 2 leaves room for the kernel's summation order, its polynomial exp and the
 * online softmax's rescaling; the floor covers a naive error near zero. NaN must appear exactly
 * where the reference has NaN; errors are taken over the other elements.
 *
 * @param actual The output checked.
 * @param reference The f64 reference's.
 * @param naive The naive f32 baseline's.
 * @returns The errors, the bound and whether it passes.
 */
export function compare(
  actual: ArrayLike<number>,
  reference: ArrayLike<number>,
  naive: ArrayLike<number>,
): Comparison {
  let nanMismatch = -1;
  if (actual.length !== reference.length) nanMismatch = Math.min(actual.length, reference.length);
  for (let i = 0; nanMismatch < 0 && i < reference.length; i++) {
    if (Number.isNaN(actual[i]) !== Number.isNaN(reference[i])) nanMismatch = i;
  }
  const error = maxError(actual, reference);
  const naiveError = maxError(naive, reference);
  const bound = 2 * naiveError + 1e-6;
  return { error, naiveError, bound, nanMismatch, ok: nanMismatch < 0 && error <= bound };
}

/** Which output a comparison is of. */
type OutputName = "O" | "lse";

/** The worst result of a run so far, by error ÷ tolerance or by absolute error. */
interface Worst {
  index: number;
  output: OutputName;
  comparison: Comparison;
}

const e = (x: number) => x.toExponential(2);

/**
 * Runs one case: `attention`, the f64 reference and the naive f32 baseline, compared for O and lse.
 *
 * @param c The case.
 * @param attention The function checked.
 * @returns The comparison of each output.
 * @throws What `attention` or the reference throw.
 */
export function runCase(c: CheckCase, attention: Attention): [OutputName, Comparison][] {
  const actual = attention(c.q, c.k, c.v, c.options);
  const { sramBytes: _, ...semantic } = c.options;
  const reference = referenceAttention(c.q, c.k, c.v, semantic);
  const naive = referenceForward(validateCall(c.q, c.k, c.v, { ...semantic }), Math.fround);
  return [
    ["O", compare(actual.data, reference.data, naive.o)],
    ["lse", compare(actual.lse?.data ?? [], reference.lse.data, naive.lse)],
  ];
}

/** What a failed comparison says. */
function failure(output: OutputName, r: Comparison): string {
  return r.nanMismatch >= 0
    ? `  ${output}: element ${r.nanMismatch} is NaN on one side only (flash vs reference)`
    : `  ${output}: error ${e(r.error)} > tolerance ${e(r.bound)} (2 × naive f32 error ${e(r.naiveError)} + 1e-6)`;
}

/**
 * Runs `flash-attention check`.
 *
 * @param args The arguments after "check".
 * @param streams Where to write.
 * @param attention The function checked: `flashAttention`; tests pass a wrong one to see it caught.
 * @returns The exit code: 0 if every case passed, 1 otherwise.
 * @throws {UsageError} For a malformed command line.
 */
export function check(args: string[], streams: Streams, attention: Attention = flashAttention): number {
  const { values } = parseWith(() => parseArgs({ args, options: CHECK_OPTIONS, strict: true }));
  if (values.help) {
    streams.stdout.write(`${CHECK_HELP}\n`);
    return 0;
  }
  const cases = integer("--cases", values.cases, DEFAULT_CASES);
  const seed = integer("--seed", values.seed, Math.floor(Math.random() * 2 ** 32), 0, 2 ** 32 - 1);
  const only = values.case === undefined ? undefined : integer("--case", values.case, 0, 0);
  const indices = only === undefined ? Array.from({ length: cases }, (_, i) => i) : [only];
  const out = (line = "") => streams.stdout.write(`${line}\n`);
  const rerun = (index?: number) =>
    `flash-attention check --seed ${seed} ${index === undefined ? `--cases ${cases}` : `--case ${index}`}`;

  out(`flash-attention check — ${runtimeName()}; ${indices.length} random case(s), seed ${seed}`);
  out("each case: error(flash vs f64 reference) ≤ 2 × error(naive f32 vs f64) + 1e-6, for O and lse");
  let failed = 0;
  let worstRatio: Worst | undefined;
  let worstError: Worst | undefined;
  const bar = progress(streams.stderr, indices.length);
  try {
    for (const [n, index] of indices.entries()) {
      bar.update(n, `case ${index}`);
      const c = makeCase(seed, index);
      let line: string;
      try {
        const results = runCase(c, attention);
        for (const [output, comparison] of results) {
          const ratio = comparison.error / comparison.bound;
          if (!worstRatio || !(ratio <= worstRatio.comparison.error / worstRatio.comparison.bound)) {
            worstRatio = { index, output, comparison };
          }
          if (!worstError || !(comparison.error <= worstError.comparison.error)) {
            worstError = { index, output, comparison };
          }
        }
        const bad = results.filter(([, r]) => !r.ok);
        if (bad.length > 0) failed++;
        line = bad.length === 0 ? `ok   case ${index}: ${describeCase(c)}` : [
          `FAIL case ${index}: ${describeCase(c)}`,
          ...bad.map(([o, r]) => failure(o, r)),
          `  rerun: ${rerun(index)}`,
        ]
          .join("\n");
      } catch (error) {
        failed++;
        const thrown = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
        line = `FAIL case ${index}: ${describeCase(c)}\n  threw ${thrown}\n  rerun: ${rerun(index)}`;
      }
      if (values.verbose || line.startsWith("FAIL")) {
        bar.end();
        out(line);
      }
    }
  } finally {
    bar.end();
  }
  out(failed === 0 ? `all ${indices.length} case(s) passed` : `${failed} of ${indices.length} case(s) FAILED`);
  if (worstRatio) {
    const r = worstRatio.comparison;
    out(
      `worst: case ${worstRatio.index} (${worstRatio.output}), error ${e(r.error)} = ${
        (r.error / r.bound).toFixed(3)
      } × its tolerance ${e(r.bound)}`,
    );
  }
  if (worstError) {
    const r = worstError.comparison;
    out(
      `largest absolute error: ${e(r.error)} (case ${worstError.index}, ${worstError.output}; tolerance ${e(r.bound)})`,
    );
  }
  out(`seed ${seed}; rerun: ${rerun(only)}`);
  return failed === 0 ? 0 : 1;
}
