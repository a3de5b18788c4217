/**
 * The edge handler in workerd, Cloudflare's Workers runtime: build.ts bundles worker.ts with the
 * `workerd` condition, a real `workerd serve` child process listens on a free port of 127.0.0.1,
 * and real HTTP requests check its answers. workerd refuses to compile WebAssembly from bytes, so
 * every correct answer shows that "@flash/attention" resolved to npm/workerd.ts and took its kernels
 * from the raw `.wasm` module, with no `init()`; the same worker bundled without the condition gets
 * the runtime's CompileError, which shows the condition is what makes it work.
 *
 *   node --import tsx --test examples/workerd/workerd_test.ts
 *
 * Tolerance, for every answer: error(served vs f64 reference) ≤ 2 × error(naive f32 vs f64) + 1e-6,
 * the repository's rule (tests/_util.ts); the answers also hold exactly the bits `flashAttention`
 * gives in this process (one build of the kernels, baseline SIMD: the same bits in every runtime).
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { after, before, test } from "node:test";
import { flashAttention, type FlashAttentionOptions, type Tensor } from "@flash/attention";
import { referenceAttention } from "@flash/attention/reference";
import { assertBitwiseEqual, assertFlashTolerance, naiveAttentionF32, randomTensor, rng } from "../../tests/_util.ts";
import { decodeBinaryAnswer, DEFAULT_MAX_BODY_BYTES, encodeBinaryRequest } from "../edge/handler.ts";
import { buildWorker, OUT_DIR, WORKERD, WORKERD_COMPATIBILITY_DATE } from "./build.ts";

/** workerd starts in about a second; a start or a request that takes this long has hung. */
const TIMEOUT_MS = 30_000;

interface Workerd {
  url: string;
  port: number;
  close(): Promise<void>;
}

/**
 * Starts `workerd serve` on port 0 and reads the port it got from its control fd (3), where it
 * writes `{"event":"listen","socket":"http","port":N}` once listening.
 */
async function startWorkerd(config: string): Promise<Workerd> {
  const child: ChildProcess = spawn(
    WORKERD,
    ["serve", config, "--socket-addr", "http=127.0.0.1:0", "--control-fd", "3", "--verbose"],
    { stdio: ["ignore", "ignore", "pipe", "pipe"] },
  );
  let stderr = "";
  child.stderr!.on("data", (chunk) => (stderr += chunk));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const close = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    await exited;
  };
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let control = "";
      const timer = setTimeout(() => reject(new Error(`workerd did not listen in time: ${stderr}`)), TIMEOUT_MS);
      (child.stdio[3] as Readable).on("data", (chunk) => {
        control += chunk;
        const match = /"event":"listen","socket":"http","port":(\d+)/.exec(control);
        if (match) {
          clearTimeout(timer);
          resolve(Number(match[1]));
        }
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`workerd exited with ${code} before listening: ${stderr}`));
      });
    });
    return { url: `http://127.0.0.1:${port}/`, port, close };
  } catch (error) {
    await close();
    throw error;
  }
}

function post(server: Workerd, body: BodyInit, type = "application/json", accept?: string): Promise<Response> {
  const headers: Record<string, string> = { "content-type": type };
  if (accept !== undefined) headers.accept = accept;
  return fetch(server.url, { method: "POST", body, headers, signal: AbortSignal.timeout(TIMEOUT_MS) });
}

const json = (t: Tensor) => ({ shape: t.shape, data: Array.from(t.data) });

/** Checks a served answer against the f64 reference (tolerance rule) and the in-process bits. */
function checkAnswer(
  what: string,
  answer: { shape: readonly number[]; data: Float32Array; lse?: Tensor },
  [q, k, v]: Tensor[],
  options: FlashAttentionOptions,
): void {
  const reference = referenceAttention(q, k, v, { ...options, returnLse: true });
  const naive = naiveAttentionF32(q, k, v, options);
  const local = flashAttention(q, k, v, { ...options, returnLse: true });
  assert.deepEqual(answer.shape, reference.shape, `${what}: shape`);
  assertFlashTolerance(`${what}: O`, answer.data, reference.data, naive.data);
  assertBitwiseEqual(`${what}: O vs in-process`, answer.data, local.data);
  assert.ok(answer.lse, `${what}: lse missing`);
  assert.deepEqual(answer.lse.shape, reference.lse.shape, `${what}: lse shape`);
  assertFlashTolerance(`${what}: lse`, answer.lse.data, reference.lse.data, naive.lse);
  assertBitwiseEqual(`${what}: lse vs in-process`, answer.lse.data, local.lse.data);
}

let server: Workerd;
const random = rng(99);

before(async () => {
  server = await startWorkerd(await buildWorker());
});

after(async () => {
  await server?.close();
});

test("the config's compatibility date is one the installed workerd supports", () => {
  const config = readFileSync(join(OUT_DIR, "config.capnp"), "utf8");
  const date = /compatibilityDate = "(\d{4}-\d{2}-\d{2})"/.exec(config)?.[1];
  assert.ok(date !== undefined, "config.capnp sets no compatibilityDate");
  assert.ok(date <= WORKERD_COMPATIBILITY_DATE, `${date} is newer than workerd's ${WORKERD_COMPATIBILITY_DATE}`);
});

test("the bundle takes the kernels from the raw .wasm module, through npm/workerd.ts", () => {
  const bundle = readFileSync(join(OUT_DIR, "worker.js"), "utf8");
  assert.match(bundle, /^\/\/ npm\/workerd\.ts$/m);
  assert.match(bundle, /^import \w+ from "\.\/kernels\.wasm";$/m);
  assert.deepEqual(
    readFileSync(join(OUT_DIR, "kernels.wasm")),
    readFileSync(new URL("../../src/wasm/kernels.wasm", import.meta.url)),
  );
});

test("workerd answers a JSON request within the tolerance of the f64 reference", async () => {
  const tensors = [[2, 5, 4, 8], [2, 9, 2, 8], [2, 9, 2, 8]].map((shape) => randomTensor(random, shape));
  const [q, k, v] = tensors.map(json);
  const options = { causal: true, softcap: 8 };
  const response = await post(server, JSON.stringify({ q, k, v, options, returnLse: true }));
  assert.equal(response.status, 200, await response.clone().text());
  const body = await response.json();
  const lse = { shape: body.lse.shape, data: Float32Array.from(body.lse.data, (x: number | null) => x ?? -Infinity) };
  checkAnswer("JSON", { shape: body.shape, data: Float32Array.from(body.data), lse }, tensors, options);
});

test("workerd answers a binary request in the binary format", async () => {
  const tensors = [[1, 3, 8, 6], [1, 3, 8, 6], [1, 3, 8, 5]].map((shape) => randomTensor(random, shape));
  const [q, k, v] = tensors;
  const options = { layout: "bhsd", windowSize: [1, 0] } as const;
  const body = encodeBinaryRequest(q, k, v, options, true);
  const response = await post(server, body, "application/x-flash-attention", "application/x-flash-attention");
  assert.equal(response.status, 200, await response.clone().text());
  assert.equal(response.headers.get("content-type"), "application/x-flash-attention");
  checkAnswer("binary", decodeBinaryAnswer(new Uint8Array(await response.arrayBuffer())), tensors, options);
});

test("workerd answers a bad request with 400 and the library's error, then keeps serving", async () => {
  const [q, k, v] = [[1, 4, 2, 8], [1, 4, 2, 4], [1, 4, 2, 8]].map((shape) => randomTensor(random, shape));
  let expected: Error | undefined;
  try {
    flashAttention(q, k, v);
  } catch (error) {
    expected = error as Error;
  }
  assert.ok(expected, "the library accepted the call");
  const response = await post(server, JSON.stringify({ q: json(q), k: json(k), v: json(v) }));
  assert.equal(response.status, 400);
  assert.deepEqual(await response.json(), { error: expected.name, message: expected.message });

  const good = [q, q, v];
  const again = await post(server, JSON.stringify({ q: json(q), k: json(q), v: json(v), returnLse: true }));
  const body = await again.json();
  const lse = { shape: body.lse.shape, data: Float32Array.from(body.lse.data) };
  checkAnswer("after the error", { shape: body.shape, data: Float32Array.from(body.data), lse }, good, {});
});

test("workerd answers a body over the limit with 413 without reading it", async () => {
  // The header announces one byte over the default limit and no byte of the body is sent: the
  // answer can only come from the Content-Length.
  const head = await new Promise<string>((resolve, reject) => {
    const socket = connect(server.port, "127.0.0.1");
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error("no answer: the worker waits for the body"));
    }, TIMEOUT_MS);
    socket.once("error", reject);
    socket.once("data", (chunk) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(chunk.toString("latin1"));
    });
    socket.write(
      "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
        `Content-Length: ${DEFAULT_MAX_BODY_BYTES + 1}\r\n\r\n`,
    );
  });
  assert.match(head.split("\r\n")[0], /^HTTP\/1\.1 413 /);
  const body = JSON.parse(head.slice(head.indexOf("\r\n\r\n") + 4));
  assert.equal(body.error, "RangeError");
  assert.match(body.message, new RegExp(`its Content-Length is ${DEFAULT_MAX_BODY_BYTES + 1}$`));
});

test("the same worker bundled without the workerd condition cannot compile its kernels in workerd", async () => {
  const other = await startWorkerd(
    await buildWorker({ outDir: join(OUT_DIR, "without-condition"), conditions: ["worker"] }),
  );
  try {
    const [q, k, v] = [[1, 2, 1, 4], [1, 2, 1, 4], [1, 2, 1, 4]].map((shape) => json(randomTensor(random, shape)));
    const response = await post(other, JSON.stringify({ q, k, v }));
    assert.equal(response.status, 500);
    const body = await response.json();
    assert.equal(body.error, "CompileError");
    assert.match(body.message, /disallowed by embedder/);
  } finally {
    await other.close();
  }
});
