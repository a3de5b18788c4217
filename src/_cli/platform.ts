// What the tool runs on, for the headers of its reports: the runtime and, where allowed, the CPU.

import { cpus } from "node:os";
import process from "node:process";

// deno-lint-ignore no-explicit-any
const runtime = globalThis as any;

/**
 * The runtime and its version: "node 20.20.2", "deno 2.9.6" or "bun 1.4.5".
 *
 * @returns The name and version.
 */
export function runtimeName(): string {
  if (runtime.Deno?.version) return `deno ${runtime.Deno.version.deno}`;
  if (runtime.Bun?.version) return `bun ${runtime.Bun.version}`;
  return `node ${process.versions.node}`;
}

/**
 * The CPU model and logical core count, from `node:os` `cpus()`. Deno grants that only with
 * `--allow-sys=cpus`; without it this says so instead of prompting or throwing (the permission is
 * queried first, since asking `cpus()` would prompt on a terminal).
 *
 * @returns "AMD EPYC (2 logical cores)", or a line saying why the CPU is unknown.
 */
export function cpuName(): string {
  const permissions = runtime.Deno?.permissions;
  if (permissions?.querySync && permissions.querySync({ name: "sys", kind: "cpus" }).state !== "granted") {
    return "CPU not shown (Deno needs --allow-sys=cpus for it)";
  }
  try {
    const list = cpus();
    return `${list[0]?.model ?? "unknown CPU"} (${list.length} logical cores)`;
  } catch (error) {
    return `CPU unknown (${error instanceof Error ? error.message : String(error)})`;
  }
}
