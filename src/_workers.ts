// Starting and talking to the pool's Workers in every runtime: module Workers from a Blob URL where
// the platform has `Worker` (Deno, Bun, browsers), Node's worker_threads from a data: URL
// otherwise. The Worker's code is embedded (src/wasm/worker.generated.ts), so nothing is read
// from disk or fetched.

import { WORKER_SOURCE } from "./wasm/worker.generated.ts";

/** One Worker, whatever the runtime: a message channel, a failure signal, and a way to end it. */
export interface WorkerHandle {
  post(message: unknown): void;
  /** Called with every message the Worker posts. */
  onMessage: (message: WorkerMessage) => void;
  /** Called once if the Worker fails outside a request (an uncaught error, or it exits). */
  onFailure: (error: Error) => void;
  terminate(): void;
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
  | { type: "error"; message: string };

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
    handle.onFailure = reject;
  });
  return handle;
}

function webWorker(name: string): WorkerHandle {
  const url = URL.createObjectURL(new Blob([WORKER_SOURCE], { type: "text/javascript" }));
  const worker = new platform.Worker(url, { type: "module", name });
  const handle: WorkerHandle = {
    post: (message) => worker.postMessage(message),
    onMessage: () => {},
    onFailure: () => {},
    terminate: () => worker.terminate(),
    ref: () => worker.ref?.(),
    unref: () => worker.unref?.(),
  };
  worker.onmessage = (event: MessageEvent) => {
    if (event.data?.type === "started") URL.revokeObjectURL(url);
    handle.onMessage(event.data);
  };
  worker.onerror = (event: ErrorEvent) => {
    event.preventDefault?.();
    // A Worker the page's Content-Security-Policy blocks fails with a bare Event: say what to check.
    const why = event.message ??
      "no reason given (in a browser: a Content-Security-Policy needs `worker-src blob:` for the pool's Workers)";
    handle.onFailure(new Error(`a pool Worker failed: ${why}`));
  };
  worker.onmessageerror = () => handle.onFailure(new Error("a pool Worker sent a message that cannot be read"));
  return handle;
}

async function nodeWorker(name: string): Promise<WorkerHandle> {
  // The specifier is computed so that bundlers for browsers do not try to resolve it.
  const specifier = "node:worker_threads";
  const { Worker } = await import(specifier);
  const worker = new Worker(new URL(`data:text/javascript,${encodeURIComponent(WORKER_SOURCE)}`), { name });
  let ended = false;
  const handle: WorkerHandle = {
    post: (message) => worker.postMessage(message),
    onMessage: () => {},
    onFailure: () => {},
    terminate: () => {
      ended = true;
      worker.terminate();
    },
    ref: () => worker.ref(),
    unref: () => worker.unref(),
  };
  worker.on("message", (message: WorkerMessage) => handle.onMessage(message));
  worker.on("error", (error: Error) => handle.onFailure(new Error(`a pool Worker failed: ${error.message}`)));
  worker.on("exit", (code: number) => {
    if (!ended) handle.onFailure(new Error(`a pool Worker exited with code ${code}`));
  });
  return handle;
}
