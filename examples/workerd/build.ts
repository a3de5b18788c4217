/**
 * Builds the workerd example into `.scratch/workerd/`: `worker.js` (worker.ts bundled by esbuild
 * with the `workerd` condition, so "@flash/attention" resolves to npm/workerd.ts), `kernels.wasm`
 * (the raw module, which the bundle imports and workerd loads as a precompiled `WebAssembly.Module`)
 * and `config.capnp` (the config beside them, whose `embed` paths are relative to it).
 *
 *   npx tsx examples/workerd/build.ts
 *
 * @module
 */
import { copyFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { build, type Plugin } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");

/** The workerd npm package: its binary's path, and the newest compatibility date it supports. */
const workerd = createRequire(import.meta.url)("workerd") as { default: string; compatibilityDate: string };

/** Path of the workerd binary (the package's platform binary, not a shim that would outlive a kill). */
export const WORKERD: string = workerd.default;

/** Newest compatibility date the installed workerd supports (what `workerd --version` prints). */
export const WORKERD_COMPATIBILITY_DATE: string = workerd.compatibilityDate;

/** Where the build goes: ignored by git. */
export const OUT_DIR: string = join(root, ".scratch/workerd");

/** The kernels, which the config declares as the `wasm` module "kernels.wasm" beside worker.js. */
const KERNELS = join(root, "src/wasm/kernels.wasm");

/**
 * Keeps the `.wasm` import a separate module: esbuild leaves `import kernels from "./kernels.wasm"`
 * in the bundle, and workerd hands it the `WebAssembly.Module` it compiled when loading the config.
 */
const wasmModules: Plugin = {
  name: "wasm-modules",
  setup(build) {
    build.onResolve({ filter: /\.wasm$/ }, (args) => {
      const file = resolve(args.resolveDir, args.path);
      if (file !== KERNELS) {
        throw new Error(`Cannot build the worker as the config declares only ${KERNELS}: ${file} is imported`);
      }
      return { path: "./kernels.wasm", external: true };
    });
  },
};

/** Where to build, and with which export conditions. */
export interface BuildOptions {
  /** The output folder (created if missing). Default {@linkcode OUT_DIR}. */
  outDir?: string;
  /**
   * esbuild's conditions. Default `["workerd", "worker"]`, what Wrangler sets: "@flash/attention"
   * then resolves through package.json's exports (a self-reference, this being the package) to
   * npm/workerd.ts. Without "workerd" it resolves to mod.ts, whose kernels workerd cannot compile.
   */
  conditions?: string[];
}

/**
 * Bundles the worker and writes the config beside it.
 *
 * @param options Where to build, and with which conditions.
 * @returns The path of the config to pass to `workerd serve`.
 */
export async function buildWorker(options: BuildOptions = {}): Promise<string> {
  const { outDir = OUT_DIR, conditions = ["workerd", "worker"] } = options;
  mkdirSync(outDir, { recursive: true });
  await build({
    entryPoints: [join(here, "worker.ts")],
    outfile: join(outDir, "worker.js"),
    bundle: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    conditions,
    plugins: [wasmModules],
    logLevel: "warning",
  });
  copyFileSync(KERNELS, join(outDir, "kernels.wasm"));
  const config = join(outDir, "config.capnp");
  copyFileSync(join(here, "config.capnp"), config);
  return config;
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  console.log(`Built ${await buildWorker()}`);
}
