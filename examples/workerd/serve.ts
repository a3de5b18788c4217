/**
 * Builds the workerd example and serves it in the foreground until Ctrl-C:
 *
 *   npm run example:workerd                 (http://127.0.0.1:8787/)
 *   npx tsx examples/workerd/serve.ts --port=9000
 *
 * @module
 */
import { spawn } from "node:child_process";
import process from "node:process";
import { buildWorker, WORKERD } from "./build.ts";

const flag = process.argv.slice(2).find((arg) => arg.startsWith("--port="));
const port = Number(flag?.slice("--port=".length) ?? 8787);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  throw new RangeError(`Cannot serve the worker as --port must be an integer in [0, 65535]: it is "${flag}"`);
}
const config = await buildWorker();
console.log(`Serving ${config} with workerd on 127.0.0.1:${port} (Ctrl-C stops)`);
const child = spawn(WORKERD, ["serve", config, "--socket-addr", `http=127.0.0.1:${port}`, "--verbose"], {
  stdio: "inherit",
});
for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => child.kill(signal));
child.on("exit", (code, signal) => process.exit(code ?? (signal === null ? 0 : 1)));
