// Shared by the benchmark scripts: where the numbers come from, and writing them to BENCHMARKS.md.

import { Bench } from "tinybench";
import { cpus } from "node:os";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import type { Tensor } from "../mod.ts";

import { runtimeName } from "../src/_cli/platform.ts";

export { runtimeName };

/** "deno", "bun" or "node". */
export function runtimeKey(): string {
  return runtimeName().split(" ")[0];
}

/** CPU model and logical core count. */
export function cpuName(): string {
  const list = cpus();
  return `${list[0]?.model ?? "unknown CPU"} (${list.length} logical cores)`;
}

/** Median of a list of numbers. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Replaces (or appends) the section between `<!-- key:start -->` and `<!-- key:end -->`. */
export function writeSection(file: string, key: string, body: string): void {
  const start = `<!-- ${key}:start -->`;
  const end = `<!-- ${key}:end -->`;
  const block = `${start}\n${body.trim()}\n${end}`;
  const text = existsSync(file) ? readFileSync(file, "utf8") : "";
  const from = text.indexOf(start);
  const to = text.indexOf(end);
  const next = from >= 0 && to > from
    ? text.slice(0, from) + block + text.slice(to + end.length)
    : `${text.trimEnd()}\n\n${block}\n`;
  writeFileSync(file, next);
}

/** A markdown table. */
export function table(header: string[], rows: (string | number)[][]): string {
  const line = (cells: (string | number)[]) => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map((_, i) => i === 0 ? "---" : "---:")), ...rows.map(line)].join("\n");
}

/** A tensor of the given shape with deterministic pseudo-random entries in [−1, 1). */
export function random(shape: number[], seed = 12345): Tensor {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  let s = seed >>> 0;
  for (let i = 0; i < data.length; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    data[i] = s / 2 ** 31 - 1;
  }
  return { data, shape };
}

/**
 * Wall time in ms of exactly one call of `fn`. tinybench (see `measure`) calls a task once more,
 * untimed, to find out whether it is async; use this where one call is all there is time for.
 */
export function timeOnce(fn: () => void): number {
  const start = performance.now();
  fn();
  return performance.now() - start;
}

/** Median latency in ms of `fn` under tinybench, with at least `iterations` timed calls. */
export async function measure(name: string, fn: () => void, iterations: number, warmup: boolean): Promise<number> {
  const bench = new Bench({ time: 0, iterations, warmup, warmupIterations: 2, warmupTime: 0, throws: true });
  bench.add(name, fn);
  await bench.run();
  const result = bench.tasks[0].result;
  if (result.state !== "completed") throw new Error(`${name}: ${result.state}`);
  return result.latency.p50;
}

/** Linear-interpolated quantile of sorted numbers. */
export function quantile(sorted: number[], p: number): number {
  const at = p * (sorted.length - 1);
  const lo = Math.floor(at);
  return sorted[lo] + (sorted[Math.min(lo + 1, sorted.length - 1)] - sorted[lo]) * (at - lo);
}

/** Per-pair timings of two calls and their ratios A/B, sorted. */
export interface PairedTimes {
  msA: number[];
  msB: number[];
  ratios: number[];
}

/**
 * Times `runA` and `runB` in `pairs` alternating pairs (AB, BA, AB, …) after `warmup` calls of
 * each, one call per side per pair (awaited, so either may be async). On a shared, noisy host the
 * ratio of each pair's two calls, made moments apart, is far steadier than the ratio of two
 * medians taken minutes apart.
 */
export async function pairedTimes(
  runA: () => unknown,
  runB: () => unknown,
  pairs: number,
  warmup: number,
): Promise<PairedTimes> {
  const time = async (fn: () => unknown) => {
    const start = performance.now();
    await fn();
    return performance.now() - start;
  };
  for (let i = 0; i < warmup; i++) {
    await runA();
    await runB();
  }
  const msA: number[] = [];
  const msB: number[] = [];
  for (let pair = 0; pair < pairs; pair++) {
    if (pair % 2 === 0) {
      msA.push(await time(runA));
      msB.push(await time(runB));
    } else {
      msB.push(await time(runB));
      msA.push(await time(runA));
    }
  }
  const ratios = msA.map((x, i) => x / msB[i]).sort((x, y) => x - y);
  return { msA, msB, ratios };
}
