// The command-line tool (src/cli.ts, src/_cli/): each command run in-process through main() with
// captured output, its numbers checked against the library's own functions computed here, and the
// entry itself run as a child process of the runtime running this test.

import { deepStrictEqual } from "node:assert";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { flashAttention } from "../mod.ts";
import { flashAttentionBackwardIo, flashAttentionIo, standardAttentionIo } from "../src/io.ts";
import { BENCH_HELP, BENCH_OPTIONS } from "../src/_cli/bench.ts";
import { type Attention, check, CHECK_HELP, CHECK_OPTIONS, compare, makeCase } from "../src/_cli/check.ts";
import { IO_HELP, IO_OPTIONS, standardBackwardIo } from "../src/_cli/io.ts";
import { COMMANDS, main } from "../src/_cli/main.ts";
import type { Streams } from "../src/_cli/output.ts";
import { VERSION } from "../src/_cli/version.ts";
import { test } from "./_util.ts";

const root = fileURLToPath(new URL("../", import.meta.url));

/** Runs the tool in-process; stdout and stderr are collected, stderr a terminal when `tty`. */
async function run(args: string[], tty = false): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const streams: Streams = {
    stdout: { write: (text: string) => void (stdout += text) },
    stderr: { write: (text: string) => void (stderr += text), isTTY: tty, columns: 100 },
  };
  const code = await main(args, streams);
  return { code, stdout, stderr };
}

function expect(condition: boolean, what: string, output?: { stdout: string; stderr: string }): void {
  if (!condition) {
    throw new Error(output ? `${what}\n--- stdout\n${output.stdout}\n--- stderr\n${output.stderr}` : what);
  }
}

// Terminal control: carriage return or an escape sequence.
// deno-lint-ignore no-control-regex
const CONTROL = /[\r\u001b]/;

test("flash-attention --help lists every command; no command prints the same list as an error (exit 2)", async () => {
  const help = await run(["--help"]);
  expect(help.code === 0 && help.stderr === "", "--help should succeed quietly", help);
  for (const name of Object.keys(COMMANDS)) {
    expect(new RegExp(`^  ${name} `, "m").test(help.stdout), `--help does not list ${name}`, help);
  }
  const none = await run([]);
  expect(none.code === 2 && none.stdout === "", "no command should exit 2 with nothing on stdout", none);
  expect(none.stderr.trim() === help.stdout.trim(), "no command should print the help on stderr", none);
});

test("each command's --help describes it and names every option it accepts", async () => {
  const commands = [
    ["bench", BENCH_HELP, BENCH_OPTIONS],
    ["check", CHECK_HELP, CHECK_OPTIONS],
    ["io", IO_HELP, IO_OPTIONS],
  ] as const;
  for (const [name, text, options] of commands) {
    const r = await run([name, "--help"]);
    expect(r.code === 0 && r.stdout === `${text}\n` && r.stderr === "", `${name} --help`, r);
    expect(r.stdout.startsWith(`Usage: flash-attention ${name} [options]`), `${name} --help has no usage line`, r);
    for (const option of Object.keys(options)) {
      expect(r.stdout.includes(`--${option}`), `${name} --help does not mention --${option}`, r);
    }
    const short = await run([name, "-h"]);
    expect(short.code === 0 && short.stdout === r.stdout, `${name} -h differs from --help`, short);
  }
});

test("--version prints the version of deno.json and package.json", async () => {
  for (const file of ["deno.json", "package.json"]) {
    const { version } = JSON.parse(readFileSync(`${root}${file}`, "utf8"));
    expect(version === VERSION, `${file} has version ${version}, the CLI's constant is ${VERSION}`);
  }
  const r = await run(["--version"]);
  expect(r.code === 0 && r.stdout === `${VERSION}\n`, "--version", r);
});

test("unknown options, commands and malformed values exit 2 with a message on stderr naming them", async () => {
  const cases: [string[], string][] = [
    [["bench", "--bogus"], "Unknown option '--bogus'"],
    [["check", "--cases"], "--cases"],
    [["io", "--seq", "0"], '--seq must be an integer in [1, 2147483647]: --seq is "0"'],
    [["io", "--bytes-per-element", "8"], '--bytes-per-element must be 4 or 2: --bytes-per-element is "8"'],
    [["io", "--sram", "12 parsecs"], "--sram must be a positive whole number of bytes"],
    [["bench", "--heads", "6", "--kv-heads", "4"], "--kv-heads must divide --heads"],
    [["bench", "--seq", "64,x"], "--seq must be a comma-separated list"],
    [["io", "extra"], "Unexpected argument 'extra'"],
    [["--bogus"], "Unknown option '--bogus'"],
    [["frobnicate"], 'unknown command "frobnicate": the commands are bench, check, io'],
  ];
  for (const [args, fragment] of cases) {
    const r = await run(args);
    expect(r.code === 2 && r.stdout === "", `${args.join(" ")} should exit 2 with nothing on stdout`, r);
    expect(r.stderr.includes(fragment), `${args.join(" ")}: stderr should contain ${JSON.stringify(fragment)}`, r);
    expect(r.stderr.includes("--help"), `${args.join(" ")}: stderr should point to --help`, r);
  }
});

test("check --cases 20 --seed 1 passes and reports its worst error below the tolerance, and the seed", async () => {
  const r = await run(["check", "--cases", "20", "--seed", "1"]);
  expect(r.code === 0, "check should pass", r);
  expect(r.stdout.includes("all 20 case(s) passed") && !r.stdout.includes("FAIL"), "no failures expected", r);
  const worst = /worst: case \d+ \((O|lse)\), error (\S+) = (\S+) × its tolerance (\S+)/.exec(r.stdout);
  expect(worst !== null, "no worst-error line", r);
  const [error, ratio, bound] = [Number(worst![2]), Number(worst![3]), Number(worst![4])];
  expect(ratio > 0 && ratio < 1 && error < bound, `worst error ${error} should be below its tolerance ${bound}`, r);
  expect(r.stdout.includes("seed 1; rerun: flash-attention check --seed 1 --cases 20"), "no seed line", r);
  // Cases are a function of (seed, index): the same seed gives the same report.
  const again = await run(["check", "--cases", "20", "--seed", "1"]);
  expect(again.stdout === r.stdout, "a rerun with the same seed should print the same report", again);
});

test("check catches a wrong answer: a perturbed attention fails, names the case and exits 1", () => {
  let stdout = "";
  const sink = { write: (text: string) => void (stdout += text) };
  // Off by 1e-3 in one element: far above the tolerance (≈ 1e-6 for these inputs).
  const perturbed: Attention = (q, k, v, options) => {
    const o = flashAttention(q, k, v, options);
    o.data[0] += 1e-3;
    return o;
  };
  const code = check(["--cases", "4", "--seed", "1"], { stdout: sink, stderr: sink }, perturbed);
  expect(code === 1, `a wrong answer should exit 1, got ${code}\n${stdout}`);
  expect(/FAIL case 0: q \[/.test(stdout) && stdout.includes("O: error 1.00e-3 > tolerance"), `no failure\n${stdout}`);
  expect(stdout.includes("rerun: flash-attention check --seed 1 --case 0"), `no rerun line\n${stdout}`);
  expect(stdout.includes("4 of 4 case(s) FAILED"), `every case should fail\n${stdout}`);
});

test("the tolerance rule passes the kernel's output and fails a perturbed one or a NaN in the wrong place", () => {
  const c = makeCase(1, 0);
  const o = flashAttention(c.q, c.k, c.v, c.options);
  const reference = Float64Array.from(o.data, (x, i) => x + (i % 2 ? 1e-7 : -1e-7));
  const naive = Float64Array.from(o.data, (x, i) => x + (i % 3 ? 2e-7 : 0));
  const ok = compare(o.data, reference, naive);
  expect(ok.ok && ok.nanMismatch === -1, `should pass: ${JSON.stringify(ok)}`);
  expect(Math.abs(ok.bound - (2 * ok.naiveError + 1e-6)) < 1e-15, `bound ${ok.bound}`);
  const off = Float32Array.from(o.data);
  off[3] += 3 * ok.bound;
  const bad = compare(off, reference, naive);
  expect(!bad.ok && bad.error > bad.bound, `should fail: ${JSON.stringify(bad)}`);
  const nan = Float32Array.from(o.data);
  nan[1] = NaN;
  const nanResult = compare(nan, reference, naive);
  expect(!nanResult.ok && nanResult.nanMismatch === 1, `a NaN should fail: ${JSON.stringify(nanResult)}`);
});

test("io --json reports the numbers of flashAttentionIo, standardAttentionIo and flashAttentionBackwardIo", async () => {
  const shape = { B: 2, H: 4, Hkv: 2, Nq: 300, Nk: 517, d: 40, dv: 24 };
  const args = ["io", "--json", "--batch", "2", "--heads", "4", "--kv-heads", "2", "--seq", "300", "--seq-k", "517"];
  args.push("--dim", "40", "--dim-v", "24", "--sram", "64KiB", "--causal", "--lse", "--backward");
  const r = await run(args);
  expect(r.code === 0 && r.stderr === "", "io --json should succeed", r);
  const report = JSON.parse(r.stdout);
  const options = { causal: true, sramBytes: 64 * 1024 };
  const expected = {
    shape,
    options: { causal: true, returnLse: true, sramBytes: 65536 },
    bytesPerElement: 4,
    forward: {
      standard: standardAttentionIo(shape, { returnLse: true }),
      flash: flashAttentionIo(shape, { ...options, returnLse: true }),
    },
    backward: { standard: standardBackwardIo(shape), flash: flashAttentionBackwardIo(shape, options) },
  };
  for (const pass of ["forward", "backward"] as const) {
    const { standard, flash } = expected[pass];
    expect(report[pass].ratio === standard.totalBytes / flash.totalBytes, `${pass} ratio`);
    delete report[pass].ratio;
  }
  deepStrictEqual(report, expected, "io --json differs from src/io.ts");
  // 2-byte elements halve every count and keep the tiling.
  const half = JSON.parse((await run([...args, "--bytes-per-element", "2"])).stdout);
  expect(half.forward.flash.totalBytes * 2 === expected.forward.flash.totalBytes, "fp16 total");
  expect(half.backward.flash.read.q * 2 === expected.backward.flash.read.q, "fp16 backward q");
  expect(half.forward.flash.Br === expected.forward.flash.Br, "fp16 keeps the blocks");
});

test("io prints per-tensor tables, the exact totals of src/io.ts, their ratio and the block sizes", async () => {
  const shape = { B: 1, H: 8, Nq: 1024, Nk: 1024, d: 64 };
  const r = await run(["io", "--seq", "1024", "--heads", "8", "--dim", "64"]);
  expect(r.code === 0 && r.stderr === "", "io should succeed", r);
  const standard = standardAttentionIo(shape);
  const flash = flashAttentionIo(shape);
  const grouped = (n: number) => n.toLocaleString("en-US");
  for (const line of ["| tensor ", "| q ", "| k ", "| v ", "| o ", "| partial ", "| total "]) {
    expect(r.stdout.includes(line), `no table row starting ${JSON.stringify(line)}`, r);
  }
  expect(
    r.stdout.includes(`standard ${grouped(standard.totalBytes)} bytes`) &&
      r.stdout.includes(`flash ${grouped(flash.totalBytes)} bytes`),
    "the totals should be src/io.ts's",
    r,
  );
  expect(r.stdout.includes(`${(standard.totalBytes / flash.totalBytes).toFixed(2)}×`), "no ratio", r);
  expect(r.stdout.includes(`Br = ${flash.Br}, Bc = ${flash.Bc}`), "no block sizes", r);
  expect(r.stdout.includes(`| k       |     ${grouped(standard.read.k)} |`), "the k row should hold k's reads", r);
});

test("standardBackwardIo is the paper's Algorithm 3 count that bench/io_report.ts uses, 4·(7N² + 8Nd) per head", () => {
  const [B, H, N, d] = [2, 3, 257, 40];
  const io = standardBackwardIo({ B, H, Nq: N, Nk: N, d });
  const expected = 4 * B * H * (5 * N * N + 5 * N * d + 2 * N * N + 3 * N * d);
  expect(io.totalBytes === expected, `${io.totalBytes} ≠ ${expected}`);
});

test("bench with a tiny shape prints the header and a table of medians, and no progress bar off a terminal", async () => {
  const r = await run(["bench", "--seq", "64", "--heads", "1", "--dim", "16", "--time", "50"]);
  expect(r.code === 0, "bench should succeed", r);
  const header =
    /^\| shape \[B, N, H, d\] +\| pass +\| implementation +\| calls \| median ms \| GFLOP\/s \| vs naive \|$/m;
  expect(header.test(r.stdout), "no table header with the expected columns", r);
  const row = (name: string) =>
    new RegExp(
      `^\\| \\[1, 64, 1, 16\\] +\\| forward +\\| ${name} +\\| +(\\d+) \\| +([\\d.]+) \\| +([\\d.e+-]+) \\| +(\\S+)× \\|$`,
      "m",
    )
      .exec(r.stdout);
  const flash = row("flash");
  const naive = row("naive f32");
  expect(flash !== null && naive !== null, "no flash or naive row", r);
  expect(Number(flash![1]) >= 3 && Number(naive![1]) >= 1, "too few calls", r);
  // GFLOP/s = 4·B·H·N²·d / median: 262,144 flops here.
  const gflops = 4 * 64 * 64 * 16 / (Number(flash![2]) * 1e6);
  expect(Math.abs(Number(flash![3]) / gflops - 1) < 0.01, `GFLOP/s ${flash![3]} vs ${gflops}`, r);
  expect(Math.abs(Number(flash![4]) / (Number(naive![2]) / Number(flash![2])) - 1) < 0.01, "speedup", r);
  expect(r.stdout.includes("4·B·H·N²·d"), "the flop convention should be stated", r);
  expect(/^flash-attention bench — (node|deno|bun) \S+, /.test(r.stdout), "no runtime in the header", r);
  expect(!CONTROL.test(r.stderr) && r.stderr === "bench: N = 64 done (1/1)\n", "plain progress lines only", r);
});

test("bench draws its progress bar on a terminal and skips the baseline above --baseline-max-seq", async () => {
  const r = await run([
    "bench",
    "--seq",
    "16,32",
    "--heads",
    "1",
    "--dim",
    "8",
    "--iterations",
    "2",
    "--baseline-max-seq",
    "16",
  ], true);
  expect(r.code === 0, "bench should succeed", r);
  expect(r.stderr.includes("\r\x1b[2K[") && r.stderr.endsWith("\r\x1b[2K"), "no bar, or the bar was not cleared", r);
  expect(!CONTROL.test(r.stdout), "stdout must stay free of control characters", r);
  expect(
    /\| \[1, 32, 1, 8\] +\| forward +\| naive f32 +\| +— \| skipped: N > 16 \|/.test(r.stdout),
    "no skipped row",
    r,
  );
  expect(/\| \[1, 16, 1, 8\] +\| forward +\| flash +\| +2 \|/.test(r.stdout), "--iterations 2 should time 2 calls", r);
});

/** Runs src/cli.ts as a program of the runtime running this test; Deno's without any permission. */
function runEntry(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const entry = fileURLToPath(new URL("../src/cli.ts", import.meta.url));
  // deno-lint-ignore no-explicit-any
  const runtime = globalThis as any;
  if (runtime.Deno) {
    // Deno.Command, not node:child_process: Deno's child_process grants a Deno child every
    // permission, which would hide what the entry needs.
    const child = new runtime.Deno.Command(runtime.Deno.execPath(), {
      args: ["run", "--no-prompt", entry, ...args],
      cwd: root,
      env: { NO_COLOR: "1" },
    }).outputSync();
    const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
    return { status: child.code, stdout: text(child.stdout), stderr: text(child.stderr) };
  }
  const prefix = runtime.Bun ? [entry] : ["--import", "tsx", entry];
  const env = { ...process.env, NO_COLOR: "1", FORCE_COLOR: "0" };
  const child = spawnSync(process.execPath, [...prefix, ...args], {
    cwd: root,
    encoding: "utf8",
    timeout: 60_000,
    env,
  });
  if (child.error) throw child.error;
  return child;
}

test("the entry runs as a program in this runtime (Deno: with no permission): output, exit codes 0 and 2", () => {
  const ok = runEntry(["bench", "--seq", "16", "--heads", "1", "--dim", "8", "--iterations", "2"]);
  expect(ok.status === 0, `bench exited with ${ok.status}`, ok);
  expect(ok.stdout.includes("| [1, 16, 1, 8]") && ok.stderr === "bench: N = 16 done (1/1)\n", "bench output", ok);
  // deno-lint-ignore no-explicit-any
  if ((globalThis as any).Deno) {
    expect(ok.stdout.includes("CPU not shown (Deno needs --allow-sys=cpus for it)"), "the CPU line should say why", ok);
  }
  const bad = runEntry(["io", "--bogus"]);
  expect(bad.status === 2 && bad.stderr.includes("Unknown option '--bogus'"), `io --bogus exited ${bad.status}`, bad);
});
