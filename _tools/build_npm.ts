/**
 * Builds the npm package into dist/ from the TypeScript sources, with the pinned compiler:
 *
 *   dist/*.js, dist/src/**        ES modules (ES2022) with declarations
 *   dist/cjs/**                   the library entries as CommonJS, for `require` without require(esm)
 *   dist/npm/workerd.js           the entry workerd loads (the `workerd` condition)
 *   dist/src/wasm/*.wasm          the raw kernels (all four builds), exported as ./kernels.wasm,
 *                                 ./kernels_relaxed.wasm, ... for runtimes that refuse to compile bytes
 *   dist/src/cli.js               the command-line tool (`bin`)
 *   dist/package.json             exports mirroring deno.json's, with import/require/workerd
 *
 * Relative ".ts" imports are rewritten to ".js" by the compiler. Publish with `npm publish dist/`.
 *
 *   npm run build:npm        deno task build:npm
 *
 * _tools/check_package.ts packs the result and tries it as a user would.
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import process from "node:process";

const deno = JSON.parse(readFileSync("deno.json", "utf8"));
/** The raw modules _tools/build_wasm.ts writes (baseline and relaxed SIMD, single-threaded and threads), by name. */
const WASM_BUILDS = readdirSync("src/wasm").filter((f) => f.endsWith(".wasm")).map((f) => f.slice(0, -".wasm".length));
const tsc = (config: string) =>
  execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", config], { stdio: "inherit" });

/** The conditions of one entry point: ESM and CommonJS, each with its own declarations. */
function entry(path: string): Record<string, unknown> {
  const js = path.replace(/\.ts$/, ".js");
  const cjs = js.replace(/^\.\//, "./cjs/");
  return {
    import: { types: js.replace(/\.js$/, ".d.ts"), default: js },
    require: { types: cjs.replace(/\.js$/, ".d.ts"), default: cjs },
  };
}

const exports: Record<string, unknown> = {};
for (const [key, path] of Object.entries(deno.exports as Record<string, string>)) {
  if (key === "./cli") {
    // An executable, not a library: ESM only (the `bin` runs it).
    exports[key] = { import: path.replace(/\.ts$/, ".js") };
    continue;
  }
  exports[key] = entry(path);
}
// workerd refuses to compile bytes at run time: its entry imports the raw module instead.
exports["."] = { workerd: { types: "./mod.d.ts", default: "./npm/workerd.js" }, ...(exports["."] as object) };
for (const build of WASM_BUILDS) exports[`./${build}.wasm`] = `./src/wasm/${build}.wasm`;
exports["./package.json"] = "./package.json";

rmSync("dist", { recursive: true, force: true });
tsc("tsconfig.npm.json");
// The library entries only: the command-line tool (top-level await) and the workerd entry are ESM.
tsc("tsconfig.npm.cjs.json");
writeFileSync("dist/cjs/package.json", JSON.stringify({ type: "commonjs" }, null, 2) + "\n");
for (const build of WASM_BUILDS) copyFileSync(`src/wasm/${build}.wasm`, `dist/src/wasm/${build}.wasm`);

const bin = existsSync("dist/src/cli.js") ? { "flash-attention": "./src/cli.js" } : undefined;
writeFileSync(
  "dist/package.json",
  JSON.stringify(
    {
      name: deno.name,
      version: deno.version,
      description: "FlashAttention for JavaScript runtimes: exact tiled attention in WebAssembly SIMD",
      keywords: ["attention", "flash-attention", "transformer", "webassembly", "simd", "wasm"],
      license: deno.license,
      type: "module",
      engines: { node: ">=20" },
      bin,
      exports,
      // Only the workerd entry does something on import (it hands the loader its module).
      sideEffects: ["./npm/workerd.js"],
    },
    null,
    2,
  ) + "\n",
);
for (const file of ["README.md", "LICENSE", "CHANGELOG.md"]) writeFileSync(`dist/${file}`, readFileSync(file));
console.log("wrote dist/ (npm package)");
