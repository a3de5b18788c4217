// Shared by the benchmark scripts: where the numbers come from, and writing them to BENCHMARKS.md.

import { cpus } from "node:os";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import process from "node:process";

// deno-lint-ignore no-explicit-any
const runtime = globalThis as any;

/** "node 20.20.2", "deno 2.9.6" or "bun 1.4.5". */
export function runtimeName(): string {
  if (runtime.Deno?.version) return `deno ${runtime.Deno.version.deno}`;
  if (runtime.Bun?.version) return `bun ${runtime.Bun.version}`;
  return `node ${process.versions.node}`;
}

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
