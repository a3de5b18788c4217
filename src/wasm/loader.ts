/**
 * Instantiates the embedded WebAssembly kernels (src/wasm/kernels.generated.ts) once per realm.
 *
 * The module imports nothing and exports its memory; no managed objects cross the boundary, so the
 * raw WebAssembly API with pointer arguments serves better than `@assemblyscript/loader`.
 *
 * @module
 */
import { WASM_BASE64 } from "./kernels.generated.ts";

/**
 * The part of a `WebAssembly.Memory` the package touches. It is declared here, structurally, so
 * that the package's declarations type-check without the DOM lib: TypeScript's `lib: ["es2022"]`
 * with `@types/node` has no `WebAssembly` namespace.
 */
export interface WasmMemory {
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
  grow(delta: number): number;
}

/**
 * The functions exported by assembly/kernels.ts (pointers are byte addresses, sizes count floats).
 * The attention kernels run on an explicit SM (streaming multiprocessor: counters and arena, see
 * assembly/arena.ts), so several Workers can share one memory.
 */
export interface RawKernels {
  readonly memory: WasmMemory;
  smPtr(): number;
  smBytes(): number;
  arenaPtr(sm: number): number;
  arenaMaxBytes(): number;
  hbmPtr(): number;
  headDimMax(): number;
  blockSizes(sramBytes: number, d: number, dv: number, masked: boolean): number;
  arenaBytes(Br: number, Bc: number, d: number, dv: number, masked: boolean): number;
  resetCounters(sm: number): void;
  expInto(dstPtr: number, srcPtr: number, n: number): void;
  forward(sm: number, ...args: ForwardParameters): void;
  mergeSplits(sm: number, ...args: MergeParameters): void;
  backwardBlockSize(sramBytes: number, d: number, dv: number, masked: boolean): number;
  backwardArenaBytes(B: number, d: number, dv: number, masked: boolean): number;
  backwardPrep(sm: number, ...args: PrepParameters): void;
  backwardDkDv(sm: number, ...args: BackwardParameters): void;
  backwardDqMerge(sm: number, ...args: DqMergeParameters): void;
}

/** backwardDqMerge's parameters after its SM (assembly/backward.ts). */
export type DqMergeParameters = [
  partPtr: number,
  segments: number,
  segmentStride: number,
  rows: number,
  dqPtr: number,
  dqRowStride: number,
  dqHeadStride: number,
  g: number,
  d: number,
  dv: number,
  masked: number | boolean,
  sramBytes: number,
];

/** backwardPrep's parameters after its SM (assembly/backward.ts). */
export type PrepParameters = [
  oPtr: number,
  oRowStride: number,
  oHeadStride: number,
  dOPtr: number,
  dORowStride: number,
  dOHeadStride: number,
  dPtr: number,
  dRowStride: number,
  dHeadStride: number,
  rows: number,
  g: number,
  d: number,
  dv: number,
  masked: number | boolean,
  sramBytes: number,
];

/** backwardDkDv's parameters after its SM (assembly/backward.ts). */
export type BackwardParameters = [
  qPtr: number,
  qRowStride: number,
  qHeadStride: number,
  kPtr: number,
  kRowStride: number,
  vPtr: number,
  vRowStride: number,
  dOPtr: number,
  dORowStride: number,
  dOHeadStride: number,
  lsePtr: number,
  dPtr: number,
  lseRowStride: number,
  lseHeadStride: number,
  dqPtr: number,
  dqRowStride: number,
  dqHeadStride: number,
  dkPtr: number,
  dkRowStride: number,
  dvPtr: number,
  dvRowStride: number,
  Nq: number,
  g: number,
  keyBegin: number,
  keyEnd: number,
  d: number,
  dv: number,
  scale: number,
  softcap: number,
  visOffset: number,
  windowLeft: number,
  windowRight: number,
  slopesPtr: number,
  alibiOffset: number,
  maskPtr: number,
  maskKind: number,
  maskRowStride: number,
  maskHeadStride: number,
  maskColStride: number,
  sramBytes: number,
];

/** The forward kernel's parameters after its SM (assembly/forward.ts). */
export type ForwardParameters = [
  qPtr: number,
  qRowStride: number,
  qHeadStride: number,
  kPtr: number,
  kRowStride: number,
  vPtr: number,
  vRowStride: number,
  oPtr: number,
  oRowStride: number,
  oHeadStride: number,
  lsePtr: number,
  lseRowStride: number,
  lseHeadStride: number,
  Nq: number,
  g: number,
  keyBegin: number,
  keyEnd: number,
  d: number,
  dv: number,
  scale: number,
  softcap: number,
  visOffset: number,
  windowLeft: number,
  windowRight: number,
  slopesPtr: number,
  alibiOffset: number,
  maskPtr: number,
  maskKind: number,
  maskRowStride: number,
  maskHeadStride: number,
  maskColStride: number,
  sramBytes: number,
  partial: number | boolean,
];

/** The merge kernel's parameters after its SM (assembly/merge.ts). */
export type MergeParameters = [
  partPtr: number,
  partLsePtr: number,
  splits: number,
  rows: number,
  dv: number,
  oPtr: number,
  oRowStride: number,
  oHeadStride: number,
  lsePtr: number,
  lseRowStride: number,
  lseHeadStride: number,
  g: number,
  sramBytes: number,
];

/**
 * The single-threaded kernels: the module's functions bound to its one SM, whose HBM starts at
 * hbmPtr(). What the synchronous runner and the tests use.
 */
export interface Kernels {
  readonly memory: WasmMemory;
  /** The SM's arena. */
  arenaPtr(): number;
  arenaMaxBytes(): number;
  hbmPtr(): number;
  headDimMax(): number;
  blockSizes(sramBytes: number, d: number, dv: number, masked: boolean): number;
  arenaBytes(Br: number, Bc: number, d: number, dv: number, masked: boolean): number;
  /** The SM's counter block. */
  countersPtr(): number;
  resetCounters(): void;
  expInto(dstPtr: number, srcPtr: number, n: number): void;
  forward(...args: ForwardParameters): void;
  mergeSplits(...args: MergeParameters): void;
  /** Backward block size B (Br = Bc = B) for an arena, 0 if none fits. */
  backwardBlockSize(sramBytes: number, d: number, dv: number, masked: boolean): number;
  backwardArenaBytes(B: number, d: number, dv: number, masked: boolean): number;
  backwardPrep(...args: PrepParameters): void;
  backwardDkDv(...args: BackwardParameters): void;
  backwardDqMerge(...args: DqMergeParameters): void;
}

/** Binds raw kernels to their first SM. */
export function bindFirstSm(raw: RawKernels): Kernels {
  const sm = raw.smPtr();
  return {
    memory: raw.memory,
    arenaPtr: () => raw.arenaPtr(sm),
    arenaMaxBytes: () => raw.arenaMaxBytes(),
    hbmPtr: () => raw.hbmPtr(),
    headDimMax: () => raw.headDimMax(),
    blockSizes: (sramBytes, d, dv, masked) => raw.blockSizes(sramBytes, d, dv, masked),
    arenaBytes: (Br, Bc, d, dv, masked) => raw.arenaBytes(Br, Bc, d, dv, masked),
    countersPtr: () => sm,
    resetCounters: () => raw.resetCounters(sm),
    expInto: (dstPtr, srcPtr, n) => raw.expInto(dstPtr, srcPtr, n),
    forward: (...args) => raw.forward(sm, ...args),
    mergeSplits: (...args) => raw.mergeSplits(sm, ...args),
    backwardBlockSize: (sramBytes, d, dv, masked) => raw.backwardBlockSize(sramBytes, d, dv, masked),
    backwardArenaBytes: (B, d, dv, masked) => raw.backwardArenaBytes(B, d, dv, masked),
    backwardPrep: (...args) => raw.backwardPrep(sm, ...args),
    backwardDkDv: (...args) => raw.backwardDkDv(sm, ...args),
    backwardDqMerge: (...args) => raw.backwardDqMerge(sm, ...args),
  };
}

/**
 * What `init` accepts: the module's bytes (an `ArrayBuffer` or a view of one) or an already
 * compiled `WebAssembly.Module`. The module is typed `object`: TypeScript's own declaration of
 * `WebAssembly.Module` has no members, so `object` accepts exactly what it accepts, and the
 * declarations need no DOM lib.
 */
export type WasmSource = ArrayBuffer | ArrayBufferView | object;

/** The bytes of a base64 text (an embedded module). */
export function decodeBase64(text: string): ArrayBuffer {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

/** The embedded module's bytes (decoded on each call; callers keep what they need). */
export function embeddedWasm(): ArrayBuffer {
  return decodeBase64(WASM_BASE64);
}

/** One set of kernels and the ways to make it ready. */
export interface KernelLoader {
  /**
   * Compiles and instantiates `source` (default: the module given to `useModule`, else the
   * embedded bytes) unless already ready.
   */
  init(source?: WasmSource): Promise<void>;
  /** The ready kernels, instantiating the default module synchronously on first use. */
  loadKernels(): Kernels;
  /**
   * Makes a precompiled module the default, so that neither `init` nor the first call compiles
   * bytes (what runtimes that forbid compiling, such as workerd, need).
   */
  useModule(module: object): void;
}

/** A loader with its own kernels: the package keeps one; tests make fresh ones. */
export function createLoader(): KernelLoader {
  let kernels: Kernels | undefined;
  let preset: object | undefined;
  return {
    async init(source?: WasmSource): Promise<void> {
      if (kernels !== undefined) return;
      source ??= preset;
      const module = source instanceof WebAssembly.Module
        ? source
        : await WebAssembly.compile((source ?? embeddedWasm()) as BufferSource);
      const instance = await WebAssembly.instantiate(module, {});
      kernels ??= checkExports(instance);
    },
    loadKernels(): Kernels {
      if (kernels === undefined) {
        const instance = new WebAssembly.Instance(preset ?? new WebAssembly.Module(embeddedWasm()), {});
        kernels = checkExports(instance);
      }
      return kernels;
    },
    useModule(module: object): void {
      preset = module;
    },
  };
}

const packageLoader = createLoader();

/**
 * Prepares the WebAssembly kernels. Optional on Deno, Bun and Node, where the first call of
 * `flashAttention` compiles the embedded module synchronously; needed in browsers (whose main
 * thread refuses to compile large modules synchronously) and on edge runtimes that forbid
 * compiling from bytes (pass the precompiled `WebAssembly.Module` there).
 *
 * Calling it again once the kernels are ready does nothing.
 *
 * @param source The module's bytes or a compiled `WebAssembly.Module`; defaults to the bytes
 *   embedded in the package.
 * @returns A promise that resolves when the kernels are ready.
 * @throws {WebAssembly.CompileError} If `source` is not a valid module for this runtime.
 * @throws {TypeError} If `source` is a module that does not export the kernels.
 *
 * @example Usage
 * ```ts
 * import { init } from "@flash/attention";
 * await init();
 * ```
 */
export function init(source?: WasmSource): Promise<void> {
  return packageLoader.init(source);
}

/**
 * Makes `module` (a precompiled build of the kernels) the package's default, for runtimes that
 * forbid compiling bytes; the npm package's `workerd` entry calls it with the raw `.wasm`.
 */
export function useModule(module: object): void {
  packageLoader.useModule(module);
}

/** The package's kernels, compiling the embedded module synchronously on first use. */
export function loadKernels(): Kernels {
  return packageLoader.loadKernels();
}

/** Exports every build of assembly/kernels.ts has. */
export const REQUIRED_EXPORTS = [
  "memory",
  "smPtr",
  "smBytes",
  "arenaPtr",
  "arenaMaxBytes",
  "hbmPtr",
  "headDimMax",
  "blockSizes",
  "arenaBytes",
  "resetCounters",
  "expInto",
  "forward",
  "mergeSplits",
  "backwardBlockSize",
  "backwardArenaBytes",
  "backwardPrep",
  "backwardDkDv",
  "backwardDqMerge",
] as const;

function checkExports(instance: WebAssembly.Instance): Kernels {
  // Not named `exports`: the CommonJS build would read its own module's exports through it.
  const provided = instance.exports;
  const missing = REQUIRED_EXPORTS.filter((name) => !(name in provided));
  if (missing.length > 0) {
    throw new TypeError(
      `Cannot initialise @flash/attention as the WebAssembly module does not export ${missing.join(", ")}`,
    );
  }
  return bindFirstSm(provided as unknown as RawKernels);
}
