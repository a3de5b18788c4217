/**
 * The npm package tried as a user tries it: builds dist/ (_tools/build_npm.ts), packs it with
 * `npm pack`, installs the tarball into a fresh project in a temporary folder, and there
 *
 *   - imports every entry from Node as ES modules and computes attention (and on a pool; the GPU
 *     entry rejects with GpuUnavailableError, Node having no WebGPU);
 *   - requires every entry from Node as CommonJS with require(esm) turned off, so the CommonJS
 *     build is what runs (Node 20.0–20.18 have no require(esm));
 *   - runs the same two files under Bun, and an `npm:` import under Deno;
 *   - resolves the `workerd` condition and the raw `.wasm` exports, and instantiates the wasm;
 *   - runs the `bin` (`flash-attention --help`) when the package has one;
 *   - type-checks a consumer, as an ES module and as CommonJS, with `lib: ["es2022"]` +
 *     `@types/node` and with `lib: ["es2022", "dom"]`, under TypeScript 5.0, 5.4 and the current
 *     one (5.0 is the oldest supported: it is the first with `moduleResolution: "bundler"` and
 *     `const` type parameters; the declarations use nothing newer).
 *
 *   npm run check:package
 *
 * Stops at the first failure, printing what failed, and exits 1.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";

const root = resolve(".");
const bin = (name: string) => join(root, "node_modules", ".bin", name);
// The older compilers live in their own small project (with its own lockfile), so that the root's
// node_modules/.bin/tsc stays the pinned current one.
const OLD_TYPESCRIPTS = join(root, "_tools", "typescripts");
const TYPESCRIPTS = [
  { version: "5.0", tsc: join(OLD_TYPESCRIPTS, "node_modules/typescript-5.0/bin/tsc") },
  { version: "5.4", tsc: join(OLD_TYPESCRIPTS, "node_modules/typescript-5.4/bin/tsc") },
  { version: "current", tsc: join(root, "node_modules/typescript/bin/tsc") },
];

function step(what: string, cmd: string, args: string[], cwd: string): string {
  try {
    const out = execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    console.log(`ok   ${what}`);
    return out;
  } catch (error) {
    const e = error as { stdout?: string; stderr?: string; message: string };
    throw new Error(`FAIL ${what}\n${e.stdout ?? ""}${e.stderr ?? ""}${e.stdout || e.stderr ? "" : e.message}`);
  }
}

const project = mkdtempSync(join(tmpdir(), "flash-attention-consumer-"));
try {
  step("build dist/", process.execPath, [bin("tsx"), "_tools/build_npm.ts"], root);
  if (!existsSync(join(OLD_TYPESCRIPTS, "node_modules"))) {
    step(
      "install TypeScript 5.0 and 5.4 (_tools/typescripts)",
      "npm",
      ["ci", "--no-audit", "--no-fund"],
      OLD_TYPESCRIPTS,
    );
  }
  const packed = step("npm pack", "npm", ["pack", "--silent", "--pack-destination", project], join(root, "dist"));
  const tarball = join(project, packed.trim().split("\n").at(-1)!);
  writeFileSync(
    join(project, "package.json"),
    JSON.stringify({ name: "consumer", private: true, type: "module" }, null, 2),
  );
  // Deno resolves npm: specifiers from this node_modules, never from the registry.
  writeFileSync(join(project, "deno.json"), JSON.stringify({ nodeModulesDir: "manual" }));
  step("npm install <tarball> into a fresh project", "npm", [
    "install",
    "--no-audit",
    "--no-fund",
    "--offline",
    tarball,
  ], project);
  // The consumer's type checks use the repository's @types/node (the version the lockfile pins).
  mkdirSync(join(project, "node_modules", "@types"), { recursive: true });
  symlinkSync(join(root, "node_modules", "@types", "node"), join(project, "node_modules", "@types", "node"), "dir");
  writeConsumers(project);

  step("Node: import (ES modules)", process.execPath, ["esm.mjs"], project);
  step("Node: require (CommonJS, require(esm) off)", process.execPath, [
    "--no-experimental-require-module",
    "cjs.cjs",
  ], project);
  step("Node: workerd condition and raw .wasm exports", process.execPath, [
    "--conditions=workerd",
    "wasm.mjs",
  ], project);
  step("Bun: import", bin("bun"), ["esm.mjs"], project);
  step("Bun: require", bin("bun"), ["cjs.cjs"], project);
  step("Deno: npm: specifier", bin("deno"), ["run", "--allow-read", "--allow-env", "deno.ts"], project);
  const installed = JSON.parse(readFileSync(join(project, "node_modules/@flash/attention/package.json"), "utf8"));
  if (installed.bin) {
    step("bin: flash-attention --help", join(project, "node_modules", ".bin", "flash-attention"), ["--help"], project);
  }
  for (const { version, tsc } of TYPESCRIPTS) {
    for (const config of ["tsconfig.node.json", "tsconfig.dom.json", "tsconfig.bundler.json"]) {
      step(`TypeScript ${version}: ${config}`, process.execPath, [tsc, "-p", config], project);
    }
  }
  console.log("the packed package installs, runs and type-checks as above");
} catch (error) {
  console.log((error as Error).message);
  process.exitCode = 1;
} finally {
  rmSync(project, { recursive: true, force: true });
}

/** The consumer project's files: one program per way of using the package. */
function writeConsumers(dir: string): void {
  // The same checks in ESM and CommonJS: a small attention call against the f64 reference, the IO
  // model, and the pool giving the same bits.
  const body = `
    const t = (n, s) => ({ data: Float32Array.from({ length: n }, (_, i) => Math.sin(i * s)), shape: [1, n / 8, 1, 8] });
    const q = t(64, 0.3), k = t(96, 0.7), v = t(96, 1.1);
    const o = flashAttention(q, k, v, { causal: true });
    const r = referenceAttention(q, k, v, { causal: true });
    const err = Math.max(...o.data.map((x, i) => Math.abs(x - r.data[i])));
    if (!(err < 1e-5)) throw new Error("error " + err);
    const io = flashAttentionIo({ B: 1, H: 1, Nq: 8, Nk: 12, d: 8 });
    if (!(io.totalBytes > 0)) throw new Error("no IO");
    const pool = await createAttentionPool({ threads: 2 });
    const big = { data: Float32Array.from({ length: 512 * 4 * 32 }, (_, i) => Math.sin(i)), shape: [1, 512, 4, 32] };
    const p = await pool.flashAttention(big, big, big, { causal: true });
    await pool.close();
    const s = flashAttention(big, big, big, { causal: true });
    if (!p.data.every((x, i) => Object.is(x, s.data[i]))) throw new Error("the pool's bits differ");
    // Node 20 and Bun have no WebGPU: the GPU entry loads and says so with its typed error.
    const noGpu = await createGpuAttention().then(() => undefined, (error) => error);
    if (!(noGpu instanceof GpuUnavailableError)) throw new Error("expected GpuUnavailableError, got " + noGpu);
    console.log("max error " + err.toExponential(1) + "; the pool gives the same bits; no WebGPU here, as expected");
  `;
  writeFileSync(
    join(dir, "esm.mjs"),
    `import { flashAttention, init } from "@flash/attention";
    import { referenceAttention } from "@flash/attention/reference";
    import { flashAttentionIo } from "@flash/attention/io";
    import { createAttentionPool } from "@flash/attention/pool";
    import { createGpuAttention, GpuUnavailableError } from "@flash/attention/gpu";
    await init();
    ${body}`,
  );
  writeFileSync(
    join(dir, "cjs.cjs"),
    `const { flashAttention } = require("@flash/attention");
    const { referenceAttention } = require("@flash/attention/reference");
    const { flashAttentionIo } = require("@flash/attention/io");
    const { createAttentionPool } = require("@flash/attention/pool");
    const { createGpuAttention, GpuUnavailableError } = require("@flash/attention/gpu");
    if (!require.resolve("@flash/attention").includes("/cjs/")) throw new Error("require did not pick the CommonJS build");
    (async () => { ${body} })().catch((error) => { console.error(error); process.exit(1); });`,
  );
  writeFileSync(
    join(dir, "wasm.mjs"),
    `import { readFileSync } from "node:fs";
    import { fileURLToPath } from "node:url";
    const entry = import.meta.resolve("@flash/attention");
    if (!entry.endsWith("/npm/workerd.js")) throw new Error("the workerd condition resolved to " + entry);
    for (const name of ["kernels.wasm", "kernels_threads.wasm", "kernels_relaxed.wasm", "kernels_threads_relaxed.wasm"]) {
      const bytes = readFileSync(fileURLToPath(import.meta.resolve("@flash/attention/" + name)));
      // The relaxed builds validate only with relaxed SIMD (Node 20: behind a flag).
      if (!name.includes("relaxed") && !WebAssembly.validate(bytes)) throw new Error(name + " is not a valid module here");
    }
    const bytes = readFileSync(fileURLToPath(import.meta.resolve("@flash/attention/kernels.wasm")));
    const { init, flashAttention } = await import("./node_modules/@flash/attention/mod.js");
    await init(await WebAssembly.compile(bytes));
    const x = { data: new Float32Array(64).fill(1), shape: [1, 8, 1, 8] };
    if (flashAttention(x, x, x).data[0] !== 1) throw new Error("wrong result from the raw module");
    console.log("workerd entry and raw modules resolve; the raw module computes");`,
  );
  writeFileSync(
    join(dir, "deno.ts"),
    `import { flashAttention } from "npm:@flash/attention";
    import { referenceAttention } from "npm:@flash/attention/reference";
    const x = { data: Float32Array.from({ length: 256 }, (_, i) => Math.cos(i)), shape: [1, 32, 1, 8] };
    const o = flashAttention(x, x, x, { causal: true });
    const r = referenceAttention(x, x, x, { causal: true });
    const err = Math.max(...o.data.map((y, i) => Math.abs(y - r.data[i])));
    if (!(err < 1e-5)) throw new Error("error " + err);
    console.log("deno: max error " + err.toExponential(1));`,
  );
  // A typed consumer touching the public types of every entry.
  const typed = (imports: string) =>
    `${imports}
    const q: Tensor = { data: new Float32Array(64), shape: [1, 8, 1, 8] };
    const options: FlashAttentionOptions = { causal: true, returnLse: true };
    const out: AttentionOutput = flashAttention(q, q, q, options);
    const lse: Tensor | undefined = out.lse;
    const grads: AttentionGradients = flashAttentionBackward(q, q, q, out, q, { causal: true });
    const io: FlashIoCounts = flashAttentionIo({ B: 1, H: 1, Nq: 8, Nk: 8, d: 8 });
    const r = referenceAttention(q, q, q);
    const source: WasmSource = new Uint8Array(8);
    export async function run(): Promise<number> {
      await init();
      const pool: AttentionPool = await createAttentionPool({ threads: 2 });
      await pool.close();
      const gpu: GpuAttention | undefined = await createGpuAttention().catch(() => undefined);
      gpu?.destroy();
      return grads.dq.data.length + io.totalBytes + r.data.length + (lse?.data.length ?? 0) + (source ? 1 : 0);
    }
    `;
  const esmImports = `import {
      type AttentionGradients, type AttentionOutput, flashAttention, flashAttentionBackward, type FlashAttentionOptions,
      init, type Tensor, type WasmSource,
    } from "@flash/attention";
    import { type FlashIoCounts, flashAttentionIo } from "@flash/attention/io";
    import { referenceAttention } from "@flash/attention/reference";
    import { type AttentionPool, createAttentionPool } from "@flash/attention/pool";
    import { createGpuAttention, type GpuAttention } from "@flash/attention/gpu";`;
  writeFileSync(join(dir, "consumer.ts"), typed(esmImports));
  // The same text as CommonJS: its imports resolve through the "require" conditions.
  writeFileSync(join(dir, "consumer.cts"), typed(esmImports));
  const config = (lib: string[], types: string[], moduleResolution = "nodenext", module = "nodenext") =>
    JSON.stringify(
      {
        compilerOptions: {
          target: "es2022",
          module,
          moduleResolution,
          lib,
          types,
          strict: true,
          noEmit: true,
          skipLibCheck: false,
        },
        files: moduleResolution === "bundler" ? ["consumer.ts"] : ["consumer.ts", "consumer.cts"],
      },
      null,
      2,
    );
  writeFileSync(join(dir, "tsconfig.node.json"), config(["es2022"], ["node"]));
  writeFileSync(join(dir, "tsconfig.dom.json"), config(["es2022", "dom"], []));
  writeFileSync(join(dir, "tsconfig.bundler.json"), config(["es2022", "dom"], [], "bundler", "esnext"));
}
