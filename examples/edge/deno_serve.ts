/**
 * Serves the edge handler (./handler.ts) with `Deno.serve`. It needs network access to its address
 * only: no read, env or other permission. The options come from the command line, not the
 * environment:
 *
 *   deno run --allow-net=127.0.0.1 examples/edge/deno_serve.ts [--port=8000] [--hostname=127.0.0.1]
 *     [--max-body-bytes=16777216] [--max-work=1e10]
 *
 * `--port=0` picks a free port. Once listening it prints one line, `Listening on http://<host>:<port>/`.
 *
 * @module
 */
import { createHandler, type HandlerLimits } from "./handler.ts";

const USAGE = "usage: deno run --allow-net=127.0.0.1 examples/edge/deno_serve.ts [--port=8000] " +
  "[--hostname=127.0.0.1] [--max-body-bytes=N] [--max-work=N]";

/** The command line's `--name=value` flags, checked. */
function parseFlags(args: readonly string[]): { port: number; hostname: string; limits: HandlerLimits } {
  const flags = new Map<string, string>();
  for (const arg of args) {
    const match = /^--(port|hostname|max-body-bytes|max-work)=(.+)$/.exec(arg);
    if (match === null) throw new TypeError(`Cannot start the server as "${arg}" is not a known flag: ${USAGE}`);
    flags.set(match[1], match[2]);
  }
  const number = (name: string): number | undefined => {
    const text = flags.get(name);
    if (text === undefined) return undefined;
    const value = Number(text);
    if (!Number.isFinite(value) || value < 0) {
      throw new RangeError(`Cannot start the server as --${name} must be a number ≥ 0: it is "${text}"`);
    }
    return value;
  };
  return {
    port: number("port") ?? 8000,
    hostname: flags.get("hostname") ?? "127.0.0.1",
    limits: { maxBodyBytes: number("max-body-bytes"), maxWork: number("max-work") },
  };
}

const { port, hostname, limits } = parseFlags(Deno.args);
Deno.serve({
  port,
  hostname,
  onListen: (address) => console.log(`Listening on http://${address.hostname}:${address.port}/`),
}, createHandler(limits));
