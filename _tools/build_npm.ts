/**
 * Builds the npm package into dist/: the TypeScript sources compiled to ES2022 JavaScript with
 * declarations (relative ".ts" imports rewritten to ".js"), and a package.json whose exports
 * mirror deno.json's. Publish with `npm publish dist/`.
 *
 *   npm run build:npm        deno task build:npm
 *
 * With --check it also imports the built package in a plain Node process (no TypeScript loader)
 * and runs one attention call, and the same on a pool of Workers, exiting 1 on failure.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import process from "node:process";

const deno = JSON.parse(readFileSync("deno.json", "utf8"));
const exports: Record<string, { types: string; default: string }> = {};
for (const [key, path] of Object.entries(deno.exports as Record<string, string>)) {
  const js = path.replace(/^\.\//, "./").replace(/\.ts$/, ".js");
  exports[key] = { types: js.replace(/\.js$/, ".d.ts"), default: js };
}

rmSync("dist", { recursive: true, force: true });
execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.npm.json"], { stdio: "inherit" });
writeFileSync(
  "dist/package.json",
  JSON.stringify(
    {
      name: deno.name,
      version: deno.version,
      description: "FlashAttention for JavaScript runtimes: exact tiled attention in WebAssembly SIMD",
      license: deno.license,
      type: "module",
      engines: { node: ">=20" },
      exports,
      sideEffects: false,
    },
    null,
    2,
  ) + "\n",
);
for (const file of ["README.md", "LICENSE"]) writeFileSync(`dist/${file}`, readFileSync(file));
console.log("wrote dist/ (npm package)");

if (process.argv.includes("--check")) {
  const script = `
    const { flashAttention, init } = await import("./dist/mod.js");
    const { referenceAttention } = await import("./dist/src/reference.js");
    await init();
    const t = (n, s) => ({ data: Float32Array.from({ length: n }, (_, i) => Math.sin(i * s)), shape: [1, n / 8, 1, 8] });
    const q = t(64, 0.3), k = t(96, 0.7), v = t(96, 1.1);
    const o = flashAttention(q, k, v, { causal: true });
    const r = referenceAttention(q, k, v, { causal: true });
    const err = Math.max(...o.data.map((x, i) => Math.abs(x - r.data[i])));
    if (!(err < 1e-5)) throw new Error("error " + err);
    const { createAttentionPool } = await import("./dist/mod.js");
    const pool = await createAttentionPool({ threads: 2 });
    const big = { data: Float32Array.from({ length: 512 * 4 * 32 }, (_, i) => Math.sin(i)), shape: [1, 512, 4, 32] };
    const p = await pool.flashAttention(big, big, big, { causal: true });
    await pool.close();
    const s = flashAttention(big, big, big, { causal: true });
    if (!p.data.every((x, i) => Object.is(x, s.data[i]))) throw new Error("the pool's bits differ");
    console.log("dist/ imports in plain Node and computes attention (max error " + err.toExponential(1) + "), on a pool too");
  `;
  execFileSync(process.execPath, ["--input-type=module", "-e", script], { stdio: "inherit" });
}
