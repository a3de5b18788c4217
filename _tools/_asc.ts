/**
 * The one way this project compiles assembly/: the pinned AssemblyScript compiler, the entry file
 * and the flags. Imported by _tools/build_wasm.ts (the committed module) and bench/counters.ts
 * (a patched copy), so both build exactly the same way. No work at import time.
 */
import asc from "assemblyscript/asc";

/** The module's entry file, relative to the base directory. */
export const ENTRY = "assembly/kernels.ts";
/** Baseline SIMD only, stub runtime (no GC, no allocator), raw pointers (the README's design notes say why). */
export const ASC_FLAGS: readonly string[] = [
  "-O3",
  "--converge",
  "--noAssert",
  "--runtime",
  "stub",
  "--enable",
  "simd",
];
/** The installed compiler's version (package.json pins it). */
export const ASC_VERSION: string = asc.version;

/** Compiles ENTRY under `baseDir` (default: the working directory) and returns the module's bytes. */
export async function compile(baseDir = "."): Promise<Uint8Array> {
  let wasm: Uint8Array | undefined;
  const stderr = asc.createMemoryStream();
  const { error } = await asc.main([ENTRY, ...ASC_FLAGS, "--baseDir", baseDir, "--outFile", "kernels.wasm"], {
    stderr,
    writeFile(name: string, contents: Uint8Array | string) {
      if (name.endsWith("kernels.wasm") && typeof contents !== "string") wasm = contents;
    },
  });
  const diagnostics = stderr.toString();
  if (error || diagnostics.trim() !== "") throw new Error(`asc failed in ${baseDir}:\n${diagnostics}${error ?? ""}`);
  if (wasm === undefined) throw new Error("asc produced no binary");
  return wasm;
}
