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
/**
 * The threads build: the same kernels on an imported, shared memory of up to 4 GiB, for the pool's
 * Workers (one instance each, all on one memory; assembly/arena.ts gives each its own SM).
 */
export const ASC_THREADS_FLAGS: readonly string[] = [
  ...ASC_FLAGS,
  "--enable",
  "threads",
  "--importMemory",
  "--sharedMemory",
  "--maximumMemory",
  "65536",
];
/**
 * The relaxed-SIMD builds: the same sources with `f32x4.relaxed_madd` where simd.ts's `madd` is
 * used (fused multiply-add on CPUs with FMA). Deterministic within a build, not bit-identical to
 * the baseline; `init()` picks them where the runtime validates them.
 */
export const ASC_RELAXED_FLAGS: readonly string[] = [...ASC_FLAGS, "--enable", "relaxed-simd"];
/** The threads build, relaxed. */
export const ASC_THREADS_RELAXED_FLAGS: readonly string[] = [...ASC_THREADS_FLAGS, "--enable", "relaxed-simd"];
/** The installed compiler's version (package.json pins it). */
export const ASC_VERSION: string = asc.version;

/**
 * Compiles `entry` (default: ENTRY) under `baseDir` (default: the working directory) with `flags`
 * (default: the single-threaded build) and returns the module's bytes.
 */
export async function compile(
  baseDir = ".",
  flags: readonly string[] = ASC_FLAGS,
  entry: string = ENTRY,
): Promise<Uint8Array> {
  let wasm: Uint8Array | undefined;
  const stderr = asc.createMemoryStream();
  const { error } = await asc.main([entry, ...flags, "--baseDir", baseDir, "--outFile", "kernels.wasm"], {
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
