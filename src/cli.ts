#!/usr/bin/env node
/**
 * The `flash-attention` command-line tool: running this module runs it on the process's
 * arguments and sets the exit code. `bench` times flashAttention against naive attention,
 * `check` runs random equivalence checks against the f64 reference, `io` prints the HBM traffic
 * of standard and flash attention; `--help` lists them.
 *
 * ```sh
 * npx @flash/attention check --cases 200
 * deno run --allow-sys=cpus jsr:@flash/attention/cli bench --seq 1024,4096 --causal
 * ```
 *
 * Deno needs no permission; `--allow-sys=cpus` lets `bench` name the CPU.
 *
 * @module
 */
import process from "node:process";
import { main } from "./_cli/main.ts";

// A reader that stops early (`| head`) closes the pipe: end quietly, as other command-line tools do.
process.stdout.on("error", (error: { code?: string }) => {
  if (error.code !== "EPIPE") throw error;
  process.exit(0);
});
process.exitCode = await main(process.argv.slice(2));
