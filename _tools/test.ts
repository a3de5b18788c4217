/**
 * `npm test`: everything CI checks, in one command, with one total.
 *
 * 1. the committed wasm module matches a fresh build of assembly/;
 * 2. `deno doc --lint`, `deno lint`, `deno publish --dry-run` and `deno fmt --check` are clean;
 *    the packed npm package installs into a fresh project and works there (_tools/check_package.ts);
 * 3. the test suite under Node (node:test via tsx), Deno (with the doc examples) and Bun, and each
 *    example's own test in the runtime it is for (the browser page in headless Chromium, the
 *    Cloudflare worker in workerd, the edge handler in Deno); the WebGPU suite (tests/gpu/) under
 *    Deno, on whatever adapter navigator.gpu gives (lavapipe on machines without a GPU).
 * 4. the baseline build's digests of a fixed set of calls (tests/digest_test.ts) are the same on
 *    Node, Deno and Bun.
 * 5. with CI=true only: the soak (soak/soak.ts) on Node with 50 pool cycles instead of 200, its checks
 *    counting as tests; and the fuzzer (fuzz/fuzz.ts) under Node for FUZZ_SECONDS with the fixed seed
 *    FUZZ_SEED, each of its properties counting as one test.
 * Each check counts as one test; each suite adds its own counts. The last line is the total:
 * "N passed, N failed". Exit code 1 if anything failed.
 */
import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import process from "node:process";

interface Outcome {
  passed: number;
  failed: number;
}

const bin = (name: string) => `node_modules/.bin/${name}`;
const testFiles = readdirSync("tests").filter((f) => f.endsWith("_test.ts")).map((f) => `tests/${f}`);

/** Runs a command with inherited stderr, echoing and capturing stdout. */
function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
    let out = "";
    const echo = (chunk: Buffer) => {
      out += chunk.toString();
      process.stdout.write(chunk);
    };
    child.stdout.on("data", echo);
    child.stderr.on("data", echo);
    child.on("error", (error) => {
      out += String(error);
      resolve({ code: 127, out });
    });
    child.on("close", (code) => resolve({ code: code ?? 1, out }));
  });
}

/** A check passes when its command exits 0. */
async function check(name: string, cmd: string, args: string[]): Promise<Outcome> {
  console.log(`\n── check: ${name}`);
  const { code } = await run(cmd, args);
  console.log(`── ${name}: ${code === 0 ? "passed" : "FAILED"}`);
  return code === 0 ? { passed: 1, failed: 0 } : { passed: 0, failed: 1 };
}

/** A suite's counts come from its runner's summary; a crash without a summary counts as a failure. */
async function suite(
  name: string,
  cmd: string,
  args: string[],
  summary: (out: string) => Outcome | undefined,
  env: Record<string, string> = {},
): Promise<Outcome> {
  console.log(`\n── suite: ${name}`);
  const { code, out } = await run(cmd, args, { NO_COLOR: "1", FORCE_COLOR: "0", ...env });
  // deno-lint-ignore no-control-regex
  const counts = summary(out.replace(/\x1b\[[0-9;]*m/g, ""));
  const outcome = counts ?? { passed: 0, failed: 1 };
  if (code !== 0 && outcome.failed === 0) outcome.failed = 1;
  console.log(`── ${name}: ${outcome.passed} passed, ${outcome.failed} failed${counts ? "" : " (no summary)"}`);
  return outcome;
}

const lastInt = (out: string, pattern: RegExp): number | undefined => {
  const all = [...out.matchAll(pattern)];
  return all.length === 0 ? undefined : Number(all[all.length - 1][1]);
};

const both = (passed: number | undefined, failed: number | undefined): Outcome | undefined =>
  passed === undefined || failed === undefined ? undefined : { passed, failed };

/** node:test's TAP summary: "# pass N" and "# fail N". */
function tapCounts(out: string): Outcome | undefined {
  return both(lastInt(out, /^# pass (\d+)$/gm), lastInt(out, /^# fail (\d+)$/gm));
}

/** deno test's summary line: "ok | N passed (M steps) | N failed". */
function denoCounts(out: string): Outcome | undefined {
  const m = [...out.matchAll(/\| (\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed/g)].at(-1);
  return m ? { passed: Number(m[1]), failed: Number(m[2]) } : undefined;
}

/**
 * tests/digest_test.ts wrote .scratch/digest-<runtime>.json in each suite: the baseline build's
 * SHA-256 per call and output. Passes when all three files exist and agree; else prints which
 * outputs differ on which runtime.
 */
function digestCheck(): Outcome {
  const name = "the baseline build's digests are the same on node, deno and bun";
  console.log(`\n── check: ${name}`);
  const runtimes = ["node", "deno", "bun"];
  const digests: Record<string, Record<string, string>> = {};
  const problems: string[] = [];
  for (const runtime of runtimes) {
    const file = `${DIGESTS}/digest-${runtime}.json`;
    if (existsSync(file)) digests[runtime] = JSON.parse(readFileSync(file, "utf8")).digests;
    else problems.push(`${file} is missing: tests/digest_test.ts did not run (or failed) under ${runtime}`);
  }
  if (problems.length === 0) {
    const keys = new Set(runtimes.flatMap((runtime) => Object.keys(digests[runtime])));
    for (const key of keys) {
      const values = runtimes.map((runtime) => digests[runtime][key]);
      if (new Set(values).size > 1) {
        problems.push(
          `${key}: ${runtimes.map((runtime, i) => `${runtime} ${values[i]?.slice(0, 12) ?? "none"}`).join(", ")}`,
        );
      }
    }
  }
  for (const problem of problems) console.log(`  ${problem}`);
  console.log(`── ${name}: ${problems.length === 0 ? "passed" : "FAILED"}`);
  return problems.length === 0 ? { passed: 1, failed: 0 } : { passed: 0, failed: 1 };
}

// Digests from an earlier run must not pass the check: each suite writes its own anew.
const DIGESTS = ".scratch";
for (const runtime of ["node", "deno", "bun"]) rmSync(`${DIGESTS}/digest-${runtime}.json`, { force: true });

const outcomes: Outcome[] = [];
outcomes.push(
  await check("wasm module matches assembly/", process.execPath, [bin("tsx"), "_tools/build_wasm.ts", "--check"]),
);
outcomes.push(
  await check("deno doc --lint", bin("deno"), [
    "doc",
    "--lint",
    "mod.ts",
    "src/reference.ts",
    "src/io.ts",
    "src/pool.ts",
    "src/cli.ts",
    "src/gpu.ts",
  ]),
);
outcomes.push(await check("deno lint", bin("deno"), ["lint"]));
// The JSR package: it builds, its public API has no slow types, and it holds what publish.include
// lists (the README's links are checked against that list by tests/readme_test.ts).
outcomes.push(await check("deno publish --dry-run", bin("deno"), ["publish", "--dry-run", "--allow-dirty"]));
outcomes.push(await check("deno fmt --check", bin("deno"), ["fmt", "--check"]));
outcomes.push(
  await check("npm package: the packed tarball installs, runs and type-checks", process.execPath, [
    bin("tsx"),
    "_tools/check_package.ts",
  ]),
);
outcomes.push(
  await suite(
    "node",
    process.execPath,
    ["--import", "tsx", "--test", "--test-reporter=tap", ...testFiles],
    tapCounts,
  ),
);
// Node 20 runs the baseline build unless told to validate relaxed SIMD; Deno runs the whole suite
// on the relaxed build (it fuses), Bun on the baseline (it validates relaxed SIMD without fusing).
// So Node runs the relaxed build's own tests, the pool's (faults included), the backward's and the digest's (its relaxed repeat check) once more with the flag.
outcomes.push(
  await suite(
    "node, relaxed SIMD (--experimental-wasm-relaxed-simd)",
    process.execPath,
    [
      "--experimental-wasm-relaxed-simd",
      "--import",
      "tsx",
      "--test",
      "--test-reporter=tap",
      "tests/loader_test.ts",
      "tests/pool_test.ts",
      "tests/pool_faults_test.ts",
      "tests/backward_test.ts",
      "tests/digest_test.ts",
    ],
    tapCounts,
  ),
);
outcomes.push(
  await suite(
    "browser example (headless Chromium)",
    process.execPath,
    ["--import", "tsx", "--test", "--test-reporter=tap", "examples/browser/browser_test.ts"],
    tapCounts,
  ),
);
outcomes.push(
  await suite(
    "workerd example (the real workerd)",
    process.execPath,
    ["--import", "tsx", "--test", "--test-reporter=tap", "examples/workerd/workerd_test.ts"],
    tapCounts,
  ),
);
outcomes.push(
  await suite(
    "Deno edge example (a server with --allow-net=127.0.0.1 only)",
    bin("deno"),
    ["test", "--allow-net=127.0.0.1", "--allow-run", "examples/edge/edge_test.ts"],
    denoCounts,
  ),
);
outcomes.push(
  await suite("deno", bin("deno"), [
    "test",
    "--allow-read",
    "--allow-run",
    "--allow-env",
    "--allow-write=.scratch",
    "--doc",
    "mod.ts",
    "src/",
    // The files of tests/, not its folders: tests/gpu/ is the gpu suite's (with --doc, deno test
    // runs a folder's tests whatever --ignore says).
    ...testFiles,
  ], denoCounts),
);
// WebGPU needs Deno (Node 20 and Bun have no navigator.gpu). With CI=true a missing adapter fails.
outcomes.push(
  await suite(
    "gpu (WebGPU, Deno)",
    bin("deno"),
    ["test", "--allow-env", "--allow-read", "--allow-write=.scratch", "--allow-run", "tests/gpu/"],
    denoCounts,
    { XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? "/tmp" },
  ),
);
outcomes.push(
  await suite(
    "bun",
    bin("bun"),
    ["test", "--timeout", "600000", "--path-ignore-patterns=tests/gpu/**", "./tests/"],
    (out) => both(lastInt(out, /^\s*(\d+) pass$/gm), lastInt(out, /^\s*(\d+) fail$/gm)),
  ),
);
outcomes.push(digestCheck());
// The soak measures one process; only CI runs it. Its default counts took 67–135 s on Node on the
// project's 2-core machines, most of it the 200 pool cycles (Node starts a Worker in 100–250 ms),
// so CI keeps its 20,000 calls and 2,000 pool calls and makes 50 pools; it prints "soak: N passed, M failed".
if (process.env.CI === "true") {
  outcomes.push(
    await suite(
      "soak (node --expose-gc, 50 pool cycles)",
      process.execPath,
      ["--expose-gc", "--import", "tsx", "soak/soak.ts", "--pool-cycles", "50"],
      (out) => both(lastInt(out, /^soak: (\d+) passed/gm), lastInt(out, /^soak: \d+ passed, (\d+) failed$/gm)),
    ),
  );
}
// The fuzzer is seeded and time-bounded; CI runs it for a fixed time with a fixed seed, so a failure
// there reproduces with `npm run fuzz -- --seed=<FUZZ_SEED>`. Without CI=true it is left to `npm run fuzz`.
const FUZZ_SEED = 20261203;
const FUZZ_SECONDS = 120;
if (process.env.CI === "true") {
  outcomes.push(
    await suite(
      `fuzz (node, ${FUZZ_SECONDS} s, seed ${FUZZ_SEED})`,
      process.execPath,
      ["--import", "tsx", "fuzz/fuzz.ts", `--seed=${FUZZ_SEED}`, `--seconds=${FUZZ_SECONDS}`],
      // "fuzz: N cases, M properties passed, F failed"
      (out) =>
        both(
          lastInt(out, /^fuzz: \d+ cases, (\d+) properties passed/gm),
          lastInt(out, /properties passed, (\d+) failed$/gm),
        ),
    ),
  );
}

const passed = outcomes.reduce((a, o) => a + o.passed, 0);
const failed = outcomes.reduce((a, o) => a + o.failed, 0);
console.log(`\n${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
