// The tool's dispatcher: global options, the command table, and how errors become exit codes
// (0 success, 1 a failed check or an error while running, 2 a malformed command line).

import process from "node:process";
import { parseArgs } from "node:util";
import { parseWith, UsageError } from "./args.ts";
import { bench } from "./bench.ts";
import { check } from "./check.ts";
import { io } from "./io.ts";
import type { Streams } from "./output.ts";
import { VERSION } from "./version.ts";

/** The program's name in messages and help. */
export const PROGRAM = "flash-attention";

/** A command: what it does in one line, and how it runs. */
export interface Command {
  /** One line for the tool's help. */
  summary: string;
  /**
   * Runs the command.
   *
   * @param args The arguments after the command's name.
   * @param streams Where to write.
   * @returns The exit code.
   */
  run(args: string[], streams: Streams): number | Promise<number>;
}

/** The commands, in the order the help lists them. */
export const COMMANDS: Readonly<Record<string, Command>> = {
  bench: { summary: "time flashAttention against naive attention on this machine", run: bench },
  check: { summary: "random equivalence checks against the f64 reference", run: check },
  io: { summary: "HBM traffic of standard and flash attention for one shape", run: io },
};

/** The help of the tool itself. */
export const HELP = `${PROGRAM} ${VERSION}: exact FlashAttention in WebAssembly, from the command line

Usage: ${PROGRAM} <command> [options]

Commands:
${Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(8)}${c.summary}`).join("\n")}

Options:
  -h, --help    show this help ("${PROGRAM} <command> --help" shows a command's)
  --version     print the version

Run it as: npx @flash/attention <command>   or   deno run jsr:@flash/attention/cli <command>`;

const GLOBAL_OPTIONS = {
  help: { type: "boolean", short: "h" },
  version: { type: "boolean" },
} as const;

/**
 * Runs the tool on a command line: `flash-attention <command> [options]`, or `--help`,
 * `--version`. Writes results to `streams.stdout`, progress and errors to `streams.stderr`.
 *
 * @param args The arguments after the program (process.argv.slice(2)).
 * @param streams Where to write; default the process's stdout and stderr.
 * @returns The exit code: 0 success, 1 a failed check or an error while running, 2 a usage error.
 *
 * @example Usage
 * ```ts
 * import { main } from "./main.ts";
 *
 * let text = "";
 * const sink = { write: (s: string) => void (text += s) };
 * const code = await main(["--version"], { stdout: sink, stderr: sink });
 * if (code !== 0 || !/^\d+\.\d+\.\d+/.test(text)) throw new Error("unexpected");
 * ```
 */
export async function main(
  args: string[],
  streams: Streams = { stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  const [name, ...rest] = args;
  const command = name === undefined || name.startsWith("-") ? undefined : COMMANDS[name];
  const prefix = command ? `${PROGRAM} ${name}` : PROGRAM;
  try {
    if (name !== undefined && !name.startsWith("-") && command === undefined) {
      throw new UsageError(`unknown command "${name}": the commands are ${Object.keys(COMMANDS).join(", ")}`);
    }
    if (command) return await command.run(rest, streams);
    const { values } = parseWith(() => parseArgs({ args, options: GLOBAL_OPTIONS, strict: true }));
    if (values.version) {
      streams.stdout.write(`${VERSION}\n`);
      return 0;
    }
    if (values.help) {
      streams.stdout.write(`${HELP}\n`);
      return 0;
    }
    // No command: the help, as an error (a command is required).
    streams.stderr.write(`${HELP}\n`);
    return 2;
  } catch (error) {
    if (error instanceof UsageError) {
      streams.stderr.write(`${prefix}: ${error.message}\nRun "${prefix} --help" for usage.\n`);
      return 2;
    }
    const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    streams.stderr.write(`${prefix}: ${text}\n`);
    return 1;
  }
}
