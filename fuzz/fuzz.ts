/**
 * The fuzzer of issue 13 ("Reliability under abuse"): fast-check properties over every public
 * function, with valid calls (checked against the f64 reference and the invariants) and malformed
 * ones (each must throw a typed error naming the problem and leave the library giving the same bits).
 *
 * ```sh
 * npm run fuzz -- --seed=42 --seconds=60     # Node (tsx)
 * deno task fuzz --seed=42 --seconds=60
 * bun fuzz/fuzz.ts --seed=42 --seconds=60
 * ```
 *
 * Flags: `--seed=N` (default: random, always printed), `--seconds=S` (the time bound, default 60),
 * `--only=TEXT` (the properties whose name contains TEXT). The last line is
 * "fuzz: N cases, M properties passed, F failed"; the exit code is 1 when a property failed.
 *
 * @module
 */
import process from "node:process";
import { POOL_TUNING, startPool } from "../src/pool.ts";
import { malformedProperties } from "./malformed.ts";
import { runProperties } from "./_runner.ts";
import { type Handler, validProperties } from "./valid.ts";

function flag(name: string): string | undefined {
  const prefix = `--${name}=`;
  return process.argv.slice(2).find((arg) => arg.startsWith(prefix))?.slice(prefix.length);
}

for (const arg of process.argv.slice(2)) {
  if (!/^--(seed|seconds|only)=/.test(arg)) {
    console.error(`fuzz: unknown argument "${arg}" (flags: --seed=N, --seconds=S, --only=TEXT)`);
    process.exit(2);
  }
}
const seedText = flag("seed");
const seed = seedText === undefined ? (Math.random() * 2 ** 31) | 0 : Number(seedText);
const seconds = Number(flag("seconds") ?? 60);
if (!Number.isSafeInteger(seed) || !(seconds > 0)) {
  console.error(`fuzz: --seed must be an integer and --seconds a positive number`);
  process.exit(2);
}
const only = flag("only");

// deno-lint-ignore no-explicit-any
const runtime = (globalThis as any).Deno ? "deno" : (globalThis as any).Bun ? "bun" : `node ${process.version}`;
console.log(`fuzz: seed ${seed}, ${seconds} s, on ${runtime}`);

// Two Workers, and every call on them however small (the default sends small calls inline).
const pool = await startPool(2, { ...POOL_TUNING, inlineFlops: 0 });
const { createHandler } = await import("../examples/edge/handler.ts");
const handler: Handler = createHandler({ maxBodyBytes: 64 << 20, maxWork: 1e9 });
const properties = [...validProperties(pool, handler), ...malformedProperties(pool, handler)]
  .filter((p) => only === undefined || p.name.includes(only));
let outcomes;
try {
  outcomes = await runProperties(properties, seed, seconds, (line) => console.log(line));
} finally {
  await pool.close();
}
const cases = outcomes.reduce((sum, o) => sum + o.cases, 0);
const failed = outcomes.filter((o) => o.failed).length;
if (failed > 0) console.log(`fuzz: seed ${seed}; rerun a failure with --seed=${seed} --only="<its name>"`);
console.log(`fuzz: ${cases} cases, ${outcomes.length - failed} properties passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
