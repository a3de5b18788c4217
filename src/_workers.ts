// Starting and talking to the pool's Workers in every runtime: module Workers from a Blob URL where
// the platform has `Worker` (Deno, Bun, browsers), Node's worker_threads from a data: URL
// otherwise. The Worker's code is embedded (src/wasm/worker.generated.ts), so nothing is read
// from disk or fetched.

import { MAX_MEMORY_BYTES, PAGE_BYTES } from "./_limits.ts";
import { WORKER_SOURCE } from "./wasm/worker.generated.ts";

/**
 * How a Worker was lost without the pool ending it: an uncaught error in it (its `error` event),
 * or it stopped (Node's `exit`, Bun's `close`, or, with Web Locks, the lock it held was released).
 */
export type WorkerLoss = "error" | "exit";

/**
 * Internal, for the pool's tests only: `pool[SABOTAGE](t, how)` makes Worker t fail during its
 * next job request. "trap": its instance traps (an out-of-bounds access); "throw": it throws an
 * uncaught error; "terminate": the pool's handle ends it without telling the pool, as something
 * outside would, so that the pool learns of it only the way the runtime reports it.
 */
export const SABOTAGE: unique symbol = Symbol("flash-attention pool: test-only fault injection");

/**
 * Internal, for the soak (soak/soak.ts) and tests only: `pool[POOL_MEMORY]()` is the pool's shared
 * memory (undefined before it starts), so that they can watch its size.
 */
export const POOL_MEMORY: unique symbol = Symbol("flash-attention pool: its shared memory, for the soak");

/** What {@linkcode SABOTAGE} can do to a Worker. */
export type Sabotage = "trap" | "throw" | "terminate";

/** One Worker, whatever the runtime: a message channel, a failure signal, and a way to end it. */
export interface WorkerHandle {
  post(message: unknown): void;
  /** Called with every message the Worker posts. */
  onMessage: (message: WorkerMessage) => void;
  /**
   * Called when the Worker is lost without the pool ending it (possibly twice: Node reports an
   * uncaught error, then the exit).
   */
  onFailure: (loss: WorkerLoss, detail: string) => void;
  /**
   * Ends the Worker. Resolves once the runtime reports it stopped (Node, Bun, and Web Locks
   * runtimes: Deno, browsers), at once where it cannot tell. The Worker keeps the process alive
   * until then, even if it was unref'd.
   */
  terminate(): Promise<void>;
  /** Internal, tests only ({@linkcode SABOTAGE}): ends the Worker unannounced. */
  kill(): void;
  /** Keep the process alive while this Worker runs (Node and Bun; no-op elsewhere). */
  ref(): void;
  /** Let the process exit while this Worker idles (Node and Bun; no-op elsewhere). */
  unref(): void;
}

/** The messages a Worker posts (src/_worker.ts). */
export type WorkerMessage =
  | { type: "started" }
  | { type: "ready" }
  | { type: "done"; jobs: number }
  | { type: "error"; name: string; message: string };

// deno-lint-ignore no-explicit-any
const platform = globalThis as any;

/** Starts a Worker running src/_worker.ts and resolves when it listens. */
export async function spawnWorker(name: string): Promise<WorkerHandle> {
  const handle = typeof platform.Worker === "function" ? webWorker(name) : await nodeWorker(name);
  await new Promise<void>((resolve, reject) => {
    handle.onMessage = (message) => {
      if (message.type === "started") resolve();
      else reject(new Error(`Cannot start a pool Worker as it sent ${JSON.stringify(message)} first`));
    };
    handle.onFailure = (_, detail) => reject(new Error(`Cannot start a pool Worker as it ${detail}`));
  });
  return handle;
}

function webWorker(name: string): WorkerHandle {
  const url = URL.createObjectURL(new Blob([WORKER_SOURCE], { type: "text/javascript" }));
  // A name of its own: with Web Locks the Worker holds a lock of that name while it lives.
  const unique = `${name} ${crypto.randomUUID()}`;
  const worker = new platform.Worker(url, { type: "module", name: unique });
  let ended = false;
  let stopped = () => {};
  const gone = new Promise<void>((resolve) => stopped = resolve);
  // Bun fires `close` when a Worker stops; Deno and browsers fire nothing, but release the Web Lock
  // the Worker held. Where neither exists, an end the pool did not ask for goes unnoticed.
  const watch = platform.Bun ? "close" : platform.navigator?.locks ? "lock" : "none";
  const onStopped = () => {
    stopped();
    if (!ended) {
      ended = true;
      handle.onFailure("exit", "stopped (it was terminated, or its thread ended)");
    }
  };
  const handle: WorkerHandle = {
    post: (message) => worker.postMessage(message),
    onMessage: () => {},
    onFailure: () => {},
    terminate: () => {
      ended = true;
      // Ref'd until it has stopped: the pool awaits `gone`, and Bun lets the process exit with an
      // unref'd Worker's `close` still to come (status 0, mid-await); Node keeps it alive anyway.
      worker.ref?.();
      worker.terminate();
      return watch === "none" ? Promise.resolve() : gone;
    },
    kill: () => worker.terminate(),
    ref: () => worker.ref?.(),
    unref: () => worker.unref?.(),
  };
  if (watch === "close") worker.addEventListener("close", onStopped);
  worker.onmessage = (event: MessageEvent) => {
    if (event.data?.type === "started") {
      URL.revokeObjectURL(url);
      // Granted once the Worker, which took the lock before saying "started", is gone.
      if (watch === "lock") platform.navigator.locks.request(unique, onStopped);
    }
    handle.onMessage(event.data);
  };
  worker.onerror = (event: ErrorEvent) => {
    event.preventDefault?.();
    // A Worker the page's Content-Security-Policy blocks fails with a bare Event: say what to check.
    const why = event.message ??
      "no reason given (in a browser: a Content-Security-Policy needs `worker-src blob:` for the pool's Workers)";
    if (!ended) handle.onFailure("error", `failed: ${why}`);
  };
  worker.onmessageerror = () => {
    if (!ended) handle.onFailure("error", "sent a message that cannot be read");
  };
  return handle;
}

async function nodeWorker(name: string): Promise<WorkerHandle> {
  // The specifier is computed so that bundlers for browsers do not try to resolve it.
  const specifier = "node:worker_threads";
  const { Worker } = await import(specifier);
  const worker = new Worker(new URL(`data:text/javascript,${encodeURIComponent(WORKER_SOURCE)}`), { name });
  let ended = false;
  let stopped = () => {};
  const gone = new Promise<void>((resolve) => stopped = resolve);
  const handle: WorkerHandle = {
    post: (message) => worker.postMessage(message),
    onMessage: () => {},
    onFailure: () => {},
    terminate: () => {
      ended = true;
      worker.terminate();
      return gone;
    },
    kill: () => worker.terminate(),
    ref: () => worker.ref(),
    unref: () => worker.unref(),
  };
  worker.on("message", (message: WorkerMessage) => handle.onMessage(message));
  worker.on("error", (error: Error) => {
    if (!ended) handle.onFailure("error", `failed: ${error.message}`);
  });
  worker.on("exit", (code: number) => {
    stopped();
    if (!ended) handle.onFailure("exit", `exited with code ${code}`);
  });
  return handle;
}

/**
 * A shared memory of `initial` pages that may grow to `maximumBytes`, by default 4 GiB or less where
 * the runtime cannot reserve that much address space up front (a shared memory never moves, so its
 * maximum is reserved at once): 1 GiB, then 256 MiB. A call that would need more fails as a refused
 * grow. Where the runtime cannot make even the smallest, a RangeError names the bytes asked for.
 */
export function sharedMemory(initial: number, maximumBytes?: number): WebAssembly.Memory {
  const maxima = maximumBytes === undefined ? [MAX_MEMORY_BYTES, 1 << 30, 256 << 20] : [maximumBytes];
  let failure: unknown;
  for (const bytes of maxima) {
    try {
      return new WebAssembly.Memory({ initial, maximum: Math.max(initial, bytes / PAGE_BYTES), shared: true });
    } catch (error) {
      failure = error;
    }
  }
  throw new RangeError(
    `Cannot create an attention pool as the runtime refused its shared WebAssembly memory of ${
      initial * PAGE_BYTES
    } bytes (the Workers' SMs), growable to ${Math.max(initial * PAGE_BYTES, maxima.at(-1)!)} bytes: ${
      failure instanceof Error ? failure.message : String(failure)
    }`,
    { cause: failure },
  );
}
