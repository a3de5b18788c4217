/**
 * The package as Cloudflare Workers (workerd) load it: the same API as `mod.ts`, with the kernels
 * taken from the raw `.wasm` file imported as a precompiled `WebAssembly.Module`, because workerd
 * refuses to compile bytes at run time ("Wasm code generation disallowed by embedder"). The
 * package's `exports` select this file under the `workerd` condition, which Wrangler sets; no
 * `init()` call is needed.
 *
 * npm only: Deno imports `.wasm` files as instantiated modules, not as `WebAssembly.Module`s.
 *
 * @module
 */
import kernels from "../src/wasm/kernels.wasm";
import { useModule } from "../src/wasm/loader.ts";

useModule(kernels);

export * from "../mod.ts";
