/**
 * Instantiates the embedded WebAssembly kernels (src/wasm/kernels.generated.ts) once per realm.
 *
 * The module imports nothing and exports its memory; no managed objects cross the boundary, so the
 * raw WebAssembly API with pointer arguments serves better than `@assemblyscript/loader`.
 *
 * @module
 */
import { WASM_BASE64 } from "./kernels.generated.ts";
import { WASM_BASE64 as RELAXED_WASM_BASE64 } from "./kernels_relaxed.generated.ts";

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
  streamedRows(d: number, dv: number): number;
  resetCounters(sm: number): void;
  expInto(dstPtr: number, srcPtr: number, n: number): void;
  expBase2Into(dstPtr: number, srcPtr: number, n: number): void;
  widenInto(dstPtr: number, srcPtr: number, n: number, kind: number): void;
  narrowInto(dstPtr: number, srcPtr: number, n: number, kind: number): void;
  forward(sm: number, ...args: ForwardParameters): void;
  mergeSplits(sm: number, ...args: MergeParameters): void;
  backwardBlockSize(sramBytes: number, d: number, dv: number, masked: boolean): number;
  backwardArenaBytes(B: number, d: number, dv: number, masked: boolean): number;
  backwardPrep(sm: number, ...args: PrepParameters): void;
  backwardDkDv(sm: number, ...args: BackwardParameters): void;
  backwardDqMerge(sm: number, ...args: DqMergeParameters): void;
  /** 1 in the relaxed-SIMD build, 0 in the baseline. */
  relaxedSimd(): number;
  /** The products' multiply-add on one lane: a·b + c, fused or not (see assembly/kernels.ts). */
  maddProbe(a: number, b: number, c: number): number;
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
  dqKind: number,
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
  oKind: number,
  dOKind: number,
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
  qKind: number,
  kKind: number,
  vKind: number,
  dOKind: number,
  dkKind: number,
  dvKind: number,
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
  qKind: number,
  kKind: number,
  vKind: number,
  oKind: number,
  copyThin: number | boolean,
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
  oKind: number,
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
  /**
   * Query blocks of at most this many virtual rows read only the K and V rows of the keys they see
   * (K streamed into registers, assembly/stream.ts); 0 if none do with head dims d, dv.
   */
  streamedRows(d: number, dv: number): number;
  /** The SM's counter block. */
  countersPtr(): number;
  resetCounters(): void;
  expInto(dstPtr: number, srcPtr: number, n: number): void;
  /** The forward's exponential, e^x through 2^(x·log2 e) (assembly/exp.ts, expBase2), on n floats at srcPtr into dstPtr. */
  expBase2Into(dstPtr: number, srcPtr: number, n: number): void;
  /** The tile copies' widening (assembly/half.ts): n elements of `kind` at srcPtr as f32 at dstPtr. */
  widenInto(dstPtr: number, srcPtr: number, n: number, kind: number): void;
  /** The tile copies' narrowing: n f32 at srcPtr as elements of `kind`, rounded to nearest even. */
  narrowInto(dstPtr: number, srcPtr: number, n: number, kind: number): void;
  forward(...args: ForwardParameters): void;
  mergeSplits(...args: MergeParameters): void;
  /** Backward block size B (Br = Bc = B) for an arena, 0 if none fits. */
  backwardBlockSize(sramBytes: number, d: number, dv: number, masked: boolean): number;
  backwardArenaBytes(B: number, d: number, dv: number, masked: boolean): number;
  backwardPrep(...args: PrepParameters): void;
  backwardDkDv(...args: BackwardParameters): void;
  backwardDqMerge(...args: DqMergeParameters): void;
  /** Which build these kernels are. */
  readonly simd: SimdBuild;
  /** Whether their multiply-adds round once (the relaxed build on an engine that fuses them). */
  readonly fusedMultiplyAdd: boolean;
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
    streamedRows: (d, dv) => raw.streamedRows(d, dv),
    countersPtr: () => sm,
    resetCounters: () => raw.resetCounters(sm),
    expInto: (dstPtr, srcPtr, n) => raw.expInto(dstPtr, srcPtr, n),
    expBase2Into: (dstPtr, srcPtr, n) => raw.expBase2Into(dstPtr, srcPtr, n),
    widenInto: (dstPtr, srcPtr, n, kind) => raw.widenInto(dstPtr, srcPtr, n, kind),
    narrowInto: (dstPtr, srcPtr, n, kind) => raw.narrowInto(dstPtr, srcPtr, n, kind),
    forward: (...args) => raw.forward(sm, ...args),
    mergeSplits: (...args) => raw.mergeSplits(sm, ...args),
    backwardBlockSize: (sramBytes, d, dv, masked) => raw.backwardBlockSize(sramBytes, d, dv, masked),
    backwardArenaBytes: (B, d, dv, masked) => raw.backwardArenaBytes(B, d, dv, masked),
    backwardPrep: (...args) => raw.backwardPrep(sm, ...args),
    backwardDkDv: (...args) => raw.backwardDkDv(sm, ...args),
    backwardDqMerge: (...args) => raw.backwardDqMerge(sm, ...args),
    simd: raw.relaxedSimd() === 1 ? "relaxed" : "baseline",
    // (1 + 2⁻¹²)² − (1 + 2⁻¹¹) is 2⁻²⁴ when fused; the separately rounded product gives 0.
    fusedMultiplyAdd: raw.maddProbe(1 + 2 ** -12, 1 + 2 ** -12, -(1 + 2 ** -11)) !== 0,
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

/**
 * Which build of the kernels runs: `"baseline"` (WebAssembly SIMD, separate multiply and add: the
 * same bits on every runtime) or `"relaxed"` (relaxed SIMD's fused multiply-add in the products
 * and the exp polynomial: faster where the CPU has FMA, deterministic within the build, but not
 * bit-identical to the baseline).
 */
export type SimdBuild = "baseline" | "relaxed";

/** What `init` accepts besides a module: which build to use. */
export interface InitOptions {
  /**
   * `"auto"` (default): the relaxed build where the runtime validates relaxed SIMD and fuses its
   * multiply-adds (Deno, Chromium; Node 20 only with `--experimental-wasm-relaxed-simd`), else
   * the baseline (Bun validates relaxed SIMD but multiplies and adds separately, so the relaxed
   * build would only repeat the baseline's bits). `"baseline"` or `"relaxed"` ask for one build
   * (`"relaxed"` fails where relaxed SIMD does not validate).
   */
  simd?: "auto" | SimdBuild;
}

/** What `init` resolves to: the build that runs. */
export interface KernelInfo {
  /** The build that runs. */
  simd: SimdBuild;
}

/** An embedded build's bytes (decoded on each call; callers keep what they need). */
export function embeddedWasm(build: SimdBuild = "baseline"): ArrayBuffer {
  return decodeBase64(build === "relaxed" ? RELAXED_WASM_BASE64 : WASM_BASE64);
}

let relaxedValidates: boolean | undefined;

/** Whether this runtime accepts the relaxed-SIMD build (asked once). */
export function relaxedSimdValidates(): boolean {
  relaxedValidates ??= WebAssembly.validate(embeddedWasm("relaxed"));
  return relaxedValidates;
}

/** `simd` checked: the build asked for, or "auto". */
function readSimd(simd: unknown = "auto"): "auto" | SimdBuild {
  if (simd !== "auto" && simd !== "baseline" && simd !== "relaxed") {
    throw new TypeError(
      `Cannot initialise @flash/attention as simd must be "auto", "baseline" or "relaxed": simd is ${
        typeof simd === "string" ? JSON.stringify(simd) : String(simd)
      }`,
    );
  }
  if (simd === "relaxed" && !relaxedSimdValidates()) {
    throw new Error(
      'Cannot initialise @flash/attention with simd: "relaxed" as this runtime does not validate relaxed SIMD ' +
        "(Node 20 needs --experimental-wasm-relaxed-simd)",
    );
  }
  return simd;
}

/**
 * Whether `auto` settles on relaxed kernels just made: only where the engine fuses its
 * multiply-adds. Relaxed SIMD lets an engine compute relaxed_madd as a multiply then an add
 * (JavaScriptCore, Bun's engine, does on the machines measured): that build would then give the
 * baseline's bits at the baseline's speed, and the baseline is the one identical everywhere.
 */
function keepRelaxed(simd: "auto" | SimdBuild, kernels: Kernels): boolean {
  return simd === "relaxed" || kernels.fusedMultiplyAdd;
}

/** The embedded build `simd` picks, compiled and instantiated asynchronously. */
async function instantiateEmbedded(simd: "auto" | SimdBuild): Promise<Kernels> {
  const make = async (build: SimdBuild) =>
    checkExports(await WebAssembly.instantiate(await WebAssembly.compile(embeddedWasm(build)), {}));
  if (simd !== "baseline" && relaxedSimdValidates()) {
    const relaxed = await make("relaxed");
    if (keepRelaxed(simd, relaxed)) return relaxed;
  }
  return await make("baseline");
}

/** The same, synchronously (Deno, Bun, Node; browsers refuse to compile large modules so). */
function instantiateEmbeddedSync(simd: "auto" | SimdBuild): Kernels {
  const make = (build: SimdBuild) =>
    checkExports(new WebAssembly.Instance(new WebAssembly.Module(embeddedWasm(build)), {}));
  if (simd !== "baseline" && relaxedSimdValidates()) {
    const relaxed = make("relaxed");
    if (keepRelaxed(simd, relaxed)) return relaxed;
  }
  return make("baseline");
}

/** Whether init's argument is its options rather than a module or bytes. */
function isOptions(value: unknown): value is InitOptions {
  if (typeof value !== "object" || value === null) return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null; // a literal, or Object.create(null)
}

/** One set of kernels and the ways to make it ready. */
export interface KernelLoader {
  /**
   * Compiles and instantiates `source` (default: the module given to `useModule`, else the
   * embedded build the options choose) unless already ready.
   */
  init(source?: WasmSource | InitOptions): Promise<KernelInfo>;
  /** The ready kernels, instantiating the default module (auto build) synchronously on first use. */
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
    async init(source?: WasmSource | InitOptions): Promise<KernelInfo> {
      const options = isOptions(source) ? source : undefined;
      if (options !== undefined) {
        for (const key of Object.keys(options)) {
          if (key !== "simd") {
            throw new TypeError(
              `Cannot initialise @flash/attention as its options have an unknown key "${key}": the known key is simd`,
            );
          }
        }
      }
      const simd = readSimd(options?.simd);
      if (kernels !== undefined) {
        if (simd !== "auto" && simd !== kernels.simd) {
          throw new Error(
            `Cannot initialise @flash/attention with simd: "${simd}" as the ${kernels.simd} build already runs ` +
              "(the first call or init() chose it; call init with the option before anything else)",
          );
        }
        return { simd: kernels.simd };
      }
      const given = options === undefined ? source : undefined;
      const bytes = given instanceof ArrayBuffer || ArrayBuffer.isView(given) ||
        (typeof SharedArrayBuffer !== "undefined" && given instanceof SharedArrayBuffer);
      if (given !== undefined && !bytes && !(given instanceof WebAssembly.Module)) {
        throw new TypeError(
          "Cannot initialise @flash/attention as source must be the module's bytes (an ArrayBuffer or a typed " +
            `array), a WebAssembly.Module or options { simd }: source is ${
              given === null
                ? "null"
                : typeof given === "object"
                ? `an object (${given.constructor?.name})`
                : typeof given
            }`,
        );
      }
      let ready: Kernels;
      if (given !== undefined || (preset !== undefined && simd === "auto")) {
        const module = given instanceof WebAssembly.Module || given === undefined
          ? (given ?? preset) as WebAssembly.Module
          : await WebAssembly.compile(given as BufferSource);
        ready = checkExports(await WebAssembly.instantiate(module, {}));
      } else {
        ready = await instantiateEmbedded(simd);
      }
      kernels ??= ready;
      return { simd: kernels.simd };
    },
    loadKernels(): Kernels {
      kernels ??= preset !== undefined
        ? checkExports(new WebAssembly.Instance(preset as WebAssembly.Module, {}))
        : instantiateEmbeddedSync("auto");
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
 * Two builds are embedded: the relaxed-SIMD build (fused multiply-adds) runs where the runtime
 * validates it and fuses them, the baseline elsewhere; `init({ simd: "baseline" })` asks for the baseline, whose
 * results are bit-identical on every runtime. The choice is made once, by this call or by the
 * first computation; calling init again afterwards returns the build that runs (and throws if it
 * asks for the other one).
 *
 * @param source The module's bytes or a compiled `WebAssembly.Module` (of either build), or
 *   options choosing an embedded build; by default the embedded build `simd: "auto"` picks.
 * @returns A promise of the build that runs.
 * @throws {WebAssembly.CompileError} If `source` is not a valid module for this runtime.
 * @throws {TypeError} If `source` is none of bytes, a module and options, is a module that does not
 *   export the kernels, or the options are malformed.
 * @throws {Error} If `simd: "relaxed"` is asked where relaxed SIMD does not validate, or a build
 *   other than the one already running is asked.
 *
 * @example Usage
 * ```ts
 * import { init } from "@flash/attention";
 * const { simd } = await init(); // "relaxed" where the runtime fuses relaxed SIMD's madd, else "baseline"
 * if (simd !== "relaxed" && simd !== "baseline") throw new Error("unexpected");
 * ```
 */
export function init(source?: WasmSource | InitOptions): Promise<KernelInfo> {
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
  "streamedRows",
  "resetCounters",
  "expInto",
  "expBase2Into",
  "forward",
  "mergeSplits",
  "backwardBlockSize",
  "backwardArenaBytes",
  "backwardPrep",
  "backwardDkDv",
  "backwardDqMerge",
  "relaxedSimd",
  "maddProbe",
  "widenInto",
  "narrowInto",
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
