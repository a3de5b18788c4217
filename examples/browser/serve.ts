/**
 * `npm run example:browser`: serves the browser example on http://127.0.0.1:8000/ (or the port given as the first
 * argument, 0 for any free one). index.html is served as it is; main.ts is bundled by esbuild on each request for
 * main.js (so a reload picks up an edit) into .scratch/browser/, which git ignores.
 *
 * Every response carries Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp: they
 * make the page cross-origin isolated, the condition on which browsers grant SharedArrayBuffer, which the pool's
 * shared WebAssembly memory needs.
 *
 *   npm run example:browser            npm run example:browser -- 8080
 *   deno task example:browser          bun examples/browser/serve.ts
 */
import { readFile } from "node:fs/promises";
import { createServer, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import process from "node:process";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

/** Options of {@linkcode serve}. */
export interface ServeOptions {
  /** The port on 127.0.0.1; 0 (the default) picks a free one. */
  port?: number;
  /** Headers added to every response, e.g. a Content-Security-Policy. */
  headers?: Record<string, string>;
}

/** A running server. */
export interface Server {
  /** The page's address, e.g. "http://127.0.0.1:8000/". */
  url: string;
  /** Stops the server and the bundler. */
  close(): Promise<void>;
}

/** The headers that make a page cross-origin isolated (`crossOriginIsolated === true`). */
export const ISOLATION_HEADERS: Readonly<Record<string, string>> = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
};

const here = fileURLToPath(new URL(".", import.meta.url));
const outdir = fileURLToPath(new URL("../../.scratch/browser/", import.meta.url));

/**
 * Starts the example's server on 127.0.0.1.
 *
 * @param options The port and extra headers.
 * @returns The page's URL and a way to stop serving.
 */
export async function serve(options: ServeOptions = {}): Promise<Server> {
  const bundler = await esbuild.context({
    entryPoints: [`${here}main.ts`],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    outdir,
    sourcemap: "linked",
    logLevel: "silent",
  });
  const headers = { ...ISOLATION_HEADERS, "Cache-Control": "no-store", ...options.headers };
  const send = (response: ServerResponse, status: number, type: string, body: string | Uint8Array) => {
    response.writeHead(status, { ...headers, "Content-Type": type }).end(body);
  };
  const server = createServer(async (request, response) => {
    const path = new URL(request.url ?? "/", "http://localhost").pathname;
    try {
      if (path === "/" || path === "/index.html") {
        send(response, 200, "text/html; charset=utf-8", await readFile(`${here}index.html`));
      } else if (path === "/main.js") {
        await bundler.rebuild();
        send(response, 200, "text/javascript; charset=utf-8", await readFile(`${outdir}main.js`));
      } else if (path === "/main.js.map") {
        send(response, 200, "application/json", await readFile(`${outdir}main.js.map`));
      } else {
        send(response, 404, "text/plain; charset=utf-8", `Not found: ${path}`);
      }
    } catch (error) {
      // Build errors reach the browser's console as the script's failed load, and the terminal here.
      console.error(error);
      send(response, 500, "text/plain; charset=utf-8", String(error));
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, "127.0.0.1", resolve);
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await bundler.dispose();
    },
  };
}

if (import.meta.main ?? process.argv[1]?.endsWith("serve.ts")) {
  const port = Number(process.argv[2] ?? 8000);
  const { url } = await serve({ port });
  console.log(`Serving the browser example at ${url} (Ctrl+C stops)`);
}
