// The library's limits: a leaf that imports nothing, so every stage (validation, plan, runners,
// the IO model) can read them without import cycles.

/** Default SRAM arena: fits the L2 cache of current CPUs with room to spare. */
export const DEFAULT_SRAM_BYTES = 128 * 1024;

/** The kernels' compiled limits (assembly/arena.ts), mirrored so they are checked before loading them; tests pin the two equal. */
export const HEAD_DIM_MAX = 256;
export const ARENA_MAX_BYTES = 8 << 20;

/** WebAssembly page size. */
export const PAGE_BYTES = 65536;
/** wasm32 addresses 4 GiB. */
export const MAX_MEMORY_BYTES = 65536 * PAGE_BYTES;
