// The code of one Worker of an attention pool: a streaming multiprocessor. It instantiates the
// threads build of the kernels on the pool's shared memory (the HBM), owns one SM of it (its
// counters and SRAM arena, assembly/arena.ts) and runs kernel calls that the calling thread lists
// in a job table in that memory, taking the next job index from an atomic cursor until none is
// left. Jobs write disjoint rows of their outputs (O and lse, split-KV partials, D, or gradients),
// each summing in its own fixed order, so the order in which the Workers take them changes no bit
// of the result.
//
// This file is not imported: _tools/build_wasm.ts compiles it to JavaScript and embeds it in
// src/wasm/worker.generated.ts, which the pool starts as a module Worker (a Blob URL in Deno, Bun
// and browsers, a data: URL in Node's worker_threads). So it imports nothing and talks to the
// kernels through their raw exports.

/** The messages a pool sends to its Workers. */
type Request =
  | { type: "init"; memory: WebAssembly.Memory; wasm: ArrayBuffer; sm: number }
  | {
    type: "run";
    /** The kernel's export name (assembly/kernels.ts). */
    kernel: KernelName;
    /** Byte address of the job table: `count` rows of `arity` f64 arguments. */
    tablePtr: number;
    count: number;
    arity: number;
    /** Byte address of the i32 cursor the Workers take job indices from. */
    cursorPtr: number;
    /**
     * Internal, for the pool's tests only (src/_workers.ts's SABOTAGE): "trap" runs the first job
     * with an SM address past the memory's end, so the instance really traps (an out-of-bounds
     * access); "throw" throws outside the handler's catch, an uncaught error in this Worker.
     */
    sabotage?: "trap" | "throw";
  };

/** The kernels a pool hands out (src/_plan.ts's KernelName; this file imports nothing). */
type KernelName = "forward" | "mergeSplits" | "backwardPrep" | "backwardDkDv" | "backwardDqMerge";

/** The raw exports this Worker calls: each takes its SM, then the job's arguments. */
type Exports = Record<KernelName, (sm: number, ...args: number[]) => void>;

// deno-lint-ignore no-explicit-any
const scope = globalThis as any;

async function start(): Promise<void> {
  let post: (message: unknown) => void;
  let listen: (handler: (request: Request) => void) => void;
  if (typeof scope.postMessage === "function") {
    // A web Worker: Deno, Bun, browsers.
    post = (message) => scope.postMessage(message);
    listen = (handler) => scope.addEventListener("message", (event: MessageEvent) => handler(event.data));
  } else {
    // Node's worker_threads. The specifier is computed so that no bundler tries to resolve it.
    const specifier = "node:worker_threads";
    const { parentPort } = await import(specifier);
    post = (message) => parentPort.postMessage(message);
    listen = (handler) => parentPort.on("message", handler);
  }

  let memory: WebAssembly.Memory | undefined;
  let kernels: Exports | undefined;
  let sm = 0;

  listen((request) => {
    if (request.type === "run" && request.sabotage === "throw") {
      throw new Error("an uncaught error injected by the pool's test hook");
    }
    try {
      if (request.type === "init") {
        memory = request.memory;
        sm = request.sm;
        const module = new WebAssembly.Module(request.wasm);
        kernels = new WebAssembly.Instance(module, { env: { memory } }).exports as unknown as Exports;
        post({ type: "ready" });
        return;
      }
      const { kernel, tablePtr, count, arity, cursorPtr } = request;
      const run = kernels![kernel];
      // Views made per request: the calling thread may have grown the memory since the last one.
      const cursor = new Int32Array(memory!.buffer, cursorPtr, 1);
      const table = new Float64Array(memory!.buffer, tablePtr, count * arity);
      let done = 0;
      if (request.sabotage === "trap") {
        // 0xFFFFFF00: an SM no memory of the pool reaches (it stays below 4 GiB and is never full).
        run(0xFFFFFF00, ...table.subarray(0, arity));
      }
      for (let i = Atomics.add(cursor, 0, 1); i < count; i = Atomics.add(cursor, 0, 1)) {
        run(sm, ...table.subarray(i * arity, (i + 1) * arity));
        done++;
      }
      post({ type: "done", jobs: done });
    } catch (error) {
      // A WebAssembly.RuntimeError is a trap in the kernels; the pool replaces this Worker either way.
      const name = error instanceof Error ? error.name : "Error";
      post({ type: "error", name, message: error instanceof Error ? error.message : String(error) });
    }
  });
  // Where the runtime has Web Locks (Deno, browsers), this Worker holds a lock named after it for
  // as long as it lives: the pool asks for the same lock, which it gets only once this Worker is
  // gone, since web Workers report no event when they end (src/_workers.ts).
  if (typeof scope.postMessage === "function" && scope.navigator?.locks && typeof scope.name === "string") {
    scope.navigator.locks.request(scope.name, () => {
      post({ type: "started" });
      return new Promise(() => {});
    });
  } else {
    post({ type: "started" });
  }
}

start();

export {};
