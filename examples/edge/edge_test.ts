/**
 * The edge handler served by `deno run --allow-net=127.0.0.1 examples/edge/deno_serve.ts`, a real
 * child process on a free port of 127.0.0.1, checked with real HTTP requests:
 *
 *   deno test --allow-net=127.0.0.1 --allow-run examples/edge/edge_test.ts
 *
 * The server has network access to 127.0.0.1 and nothing else (its stdin is closed, so a permission
 * it lacked would be refused, not prompted for): every answer it gives shows that the handler needs
 * no file, env or other access. Errors are compared with what the library (or JSON.parse) throws for
 * the same input in this process, never with a copy of the message.
 *
 * Tolerance, for every answer: error(served vs f64 reference) ≤ 2 × error(naive f32 vs f64) + 1e-6,
 * the repository's rule (tests/_util.ts); the answers also hold exactly the bits `flashAttention`
 * gives in this process (f32 values survive JSON exactly).
 */
import { flashAttention, type FlashAttentionOptions, type Tensor } from "@flash/attention";
import { referenceAttention } from "@flash/attention/reference";
import { assertBitwiseEqual, assertFlashTolerance, naiveAttentionF32, randomTensor, rng } from "../../tests/_util.ts";

const ROOT = new URL("../../", import.meta.url);
const SERVE = new URL("./deno_serve.ts", import.meta.url);
/** Small limits, so the oversize cases send little. */
const MAX_BODY_BYTES = 1 << 20;
const MAX_WORK = 1e6;
/** A request that takes longer has hung: fail instead of waiting. */
const REQUEST_TIMEOUT_MS = 20_000;

interface Server {
  url: string;
  port: number;
  close(): Promise<void>;
}

/** Starts deno_serve.ts as a child process and waits for the URL it prints. */
async function startServer(): Promise<Server> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net=127.0.0.1",
      SERVE.pathname,
      "--port=0",
      `--max-body-bytes=${MAX_BODY_BYTES}`,
      `--max-work=${MAX_WORK}`,
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const close = async () => {
    child.kill("SIGTERM");
    await lines.cancel();
    await child.status;
    await stderr;
  };
  let printed = "";
  const timeout = setTimeout(() => child.kill("SIGKILL"), 30_000);
  try {
    for (;;) {
      const { done, value } = await lines.read();
      if (done) throw new Error(`deno_serve.ts exited before listening: ${printed}\n${await stderr}`);
      printed += value;
      const match = /Listening on (http:\/\/127\.0\.0\.1:(\d+)\/)/.exec(printed);
      if (match) return { url: match[1], port: Number(match[2]), close };
    }
  } catch (error) {
    await close();
    throw error;
  } finally {
    clearTimeout(timeout);
  }
}

/** A tensor as the JSON format writes it. */
const json = (t: Tensor) => ({ shape: t.shape, data: Array.from(t.data) });

/** JSON's null stands for the −∞ lse of a query that sees no key. */
const fromJson = (data: (number | null)[]) => Float32Array.from(data, (x) => x ?? -Infinity);

/** Checks a served answer against the f64 reference (tolerance rule) and the in-process bits. */
function checkAnswer(
  what: string,
  answer: { shape: readonly number[]; data: Float32Array; lse?: { shape: readonly number[]; data: Float32Array } },
  [q, k, v]: Tensor[],
  options: FlashAttentionOptions,
  returnLse: boolean,
): void {
  const reference = referenceAttention(q, k, v, { ...options, returnLse: true });
  const naive = naiveAttentionF32(q, k, v, options);
  const local = flashAttention(q, k, v, { ...options, returnLse: true });
  if (answer.shape.join() !== reference.shape.join()) throw new Error(`${what}: shape ${answer.shape}`);
  assertFlashTolerance(`${what}: O`, answer.data, reference.data, naive.data);
  assertBitwiseEqual(`${what}: O vs in-process`, answer.data, local.data);
  if (!returnLse) {
    if (answer.lse !== undefined) throw new Error(`${what}: lse was not asked for`);
    return;
  }
  if (answer.lse?.shape.join() !== reference.lse.shape.join()) {
    throw new Error(`${what}: lse shape ${answer.lse?.shape}`);
  }
  assertFlashTolerance(`${what}: lse`, answer.lse.data, reference.lse.data, naive.lse);
  assertBitwiseEqual(`${what}: lse vs in-process`, answer.lse.data, local.lse.data);
}

function post(server: Server, body: BodyInit, type = "application/json", accept?: string): Promise<Response> {
  const headers: Record<string, string> = { "content-type": type };
  if (accept !== undefined) headers.accept = accept;
  return fetch(server.url, { method: "POST", body, headers, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
}

/** The `{ error, message }` an error answer must hold: the name and message of what `fn` throws. */
function thrownBy(fn: () => unknown): { error: string; message: string } {
  try {
    fn();
  } catch (error) {
    if (error instanceof Error) return { error: error.name, message: error.message };
  }
  throw new Error("expected the call to throw");
}

async function expectError(response: Response, status: number, expected: { error: string; message?: string }) {
  const body = await response.json();
  if (response.status !== status || body.error !== expected.error) {
    throw new Error(`expected ${status} ${expected.error}, got ${response.status} ${JSON.stringify(body)}`);
  }
  if (expected.message !== undefined && body.message !== expected.message) {
    throw new Error(`expected the message "${expected.message}", got "${body.message}"`);
  }
  return body as { error: string; message: string };
}

interface Case {
  name: string;
  shapes: [number[], number[], number[]];
  options: Record<string, unknown>;
  returnLse: boolean;
}

/** Each case's options as the library takes them: typed arrays where JSON has arrays. */
function libraryOptions(options: Record<string, unknown>): FlashAttentionOptions {
  const out: Record<string, unknown> = { ...options };
  if (Array.isArray(out.alibiSlopes)) out.alibiSlopes = Float32Array.from(out.alibiSlopes);
  if (Array.isArray(out.seqLensK)) out.seqLensK = Int32Array.from(out.seqLensK);
  return out as FlashAttentionOptions;
}

const JSON_CASES: Case[] = [
  { name: "no options", shapes: [[1, 5, 2, 8], [1, 5, 2, 8], [1, 5, 2, 8]], options: {}, returnLse: false },
  {
    name: "causal GQA with Nq ≠ Nk",
    shapes: [[2, 3, 4, 16], [2, 7, 2, 16], [2, 7, 2, 16]],
    options: { causal: true },
    returnLse: true,
  },
  {
    name: "bhsd, window, softcap, scale, dv ≠ d",
    shapes: [[1, 2, 9, 5], [1, 2, 9, 5], [1, 2, 9, 3]],
    options: { layout: "bhsd", windowSize: [2, 1], softcap: 5, scale: 0.3 },
    returnLse: true,
  },
  {
    name: "ALiBi slopes and key lengths sent as JSON arrays",
    shapes: [[2, 4, 2, 4], [2, 6, 2, 4], [2, 6, 2, 4]],
    options: { alibiSlopes: [0.5, 0.25], seqLensK: [3, 6] },
    returnLse: true,
  },
  {
    name: "fully-masked rows (lse −∞ is null in JSON)",
    shapes: [[1, 5, 1, 4], [1, 3, 1, 4], [1, 3, 1, 4]],
    options: { causal: true },
    returnLse: true,
  },
];

/**
 * A binary request written byte by byte from examples/edge/README.md (not with the handler's
 * encoder, so that the test checks the documented format).
 */
function binaryRequest(tensors: Tensor[], optionsJson: string, returnLse: boolean): Uint8Array<ArrayBuffer> {
  const options = new TextEncoder().encode(optionsJson);
  const dims = tensors.flatMap((t) => t.shape);
  const dataStart = Math.ceil((16 + 4 * dims.length + options.length) / 4) * 4;
  const bytes = new Uint8Array(dataStart + 4 * tensors.reduce((n, t) => n + t.data.length, 0));
  const view = new DataView(bytes.buffer);
  bytes.set([0x46, 0x41, 0x54, 0x4e], 0); // "FATN"
  view.setUint16(4, 1, true);
  view.setUint16(6, returnLse ? 1 : 0, true);
  view.setUint32(8, options.length, true);
  tensors.forEach((t, i) => view.setUint8(12 + i, t.shape.length));
  dims.forEach((n, i) => view.setUint32(16 + 4 * i, n, true));
  bytes.set(options, 16 + 4 * dims.length);
  let offset = dataStart;
  for (const t of tensors) {
    for (const x of t.data) view.setFloat32((offset += 4) - 4, x, true);
  }
  return bytes;
}

/** A binary answer read byte by byte from examples/edge/README.md. */
function readBinaryAnswer(bytes: Uint8Array) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = String.fromCharCode(...bytes.subarray(0, 4));
  if (magic !== "FATN" || view.getUint16(4, true) !== 1) throw new Error(`bad answer header ${magic}`);
  const hasLse = (view.getUint16(6, true) & 1) === 1;
  const [rank, lseRank] = [view.getUint8(8), view.getUint8(9)];
  let offset = 12;
  const dims = (n: number) => Array.from({ length: n }, () => view.getUint32((offset += 4) - 4, true));
  const shape = dims(rank);
  const lseShape = dims(lseRank);
  const floats = (n: number) => Float32Array.from({ length: n }, () => view.getFloat32((offset += 4) - 4, true));
  const data = floats(shape.reduce((a, b) => a * b, 1));
  const lse = hasLse ? { shape: lseShape, data: floats(lseShape.reduce((a, b) => a * b, 1)) } : undefined;
  if (offset !== bytes.byteLength) throw new Error(`the answer has ${bytes.byteLength - offset} extra bytes`);
  return { shape, data, lse };
}

Deno.test("the edge handler served by `deno run --allow-net=127.0.0.1` answers, refuses and limits over real HTTP", async (t) => {
  const server = await startServer();
  const random = rng(2024);
  const good = [[1, 6, 2, 8], [1, 6, 2, 8], [1, 6, 2, 8]].map((shape) => randomTensor(random, shape));
  try {
    await t.step("JSON requests get the output and lse within the tolerance of the f64 reference", async () => {
      for (const c of JSON_CASES) {
        const tensors = c.shapes.map((shape) => randomTensor(random, shape));
        const [q, k, v] = tensors.map(json);
        const response = await post(server, JSON.stringify({ q, k, v, options: c.options, returnLse: c.returnLse }));
        if (response.status !== 200) throw new Error(`${c.name}: ${response.status} ${await response.text()}`);
        const body = await response.json();
        const answer = {
          shape: body.shape,
          data: Float32Array.from(body.data),
          lse: body.lse && { shape: body.lse.shape, data: fromJson(body.lse.data) },
        };
        checkAnswer(c.name, answer, tensors, libraryOptions(c.options), c.returnLse);
      }
    });

    await t.step("a binary request gets a binary answer when Accept asks for it, JSON otherwise", async () => {
      const tensors = [[2, 7, 4, 6], [2, 9, 2, 6], [2, 9, 2, 6]].map((shape) => randomTensor(random, shape));
      // 64 header bytes and 38 option bytes: the data starts after 2 bytes of padding
      const optionsJson = JSON.stringify({ causal: "top-left", seqLensK: [9, 5] });
      const body = binaryRequest(tensors, optionsJson, true);
      const options = libraryOptions(JSON.parse(optionsJson));
      const binary = await post(server, body, "application/x-flash-attention", "application/x-flash-attention");
      if (binary.status !== 200 || binary.headers.get("content-type") !== "application/x-flash-attention") {
        throw new Error(`binary: ${binary.status} ${await binary.text()}`);
      }
      checkAnswer("binary", readBinaryAnswer(new Uint8Array(await binary.arrayBuffer())), tensors, options, true);
      const asJson = await post(server, body, "application/octet-stream");
      const parsed = await asJson.json();
      const answer = { shape: parsed.shape, data: Float32Array.from(parsed.data), lse: { ...parsed.lse } };
      answer.lse.data = fromJson(parsed.lse.data);
      checkAnswer("binary request, JSON answer", answer, tensors, options, true);
    });

    await t.step(
      "bad requests get 400 with the library's error name and message, and the server keeps serving",
      async () => {
        const [q, k, v] = good;
        const malformed = '{"q": {"shape": [1, 6, 2, 8], "data": [0.5,';
        await expectError(await post(server, malformed), 400, thrownBy(() => JSON.parse(malformed)));

        const k3 = randomTensor(random, [1, 6, 2, 3]); // head dim 3, q's is 8
        await expectError(
          await post(server, JSON.stringify({ q: json(q), k: json(k3), v: json(v) })),
          400,
          thrownBy(() => flashAttention(q, k3, v)),
        );
        const lying = { shape: [1, 6, 2, 9], data: Array.from(q.data) }; // data of [1, 6, 2, 8]
        await expectError(
          await post(server, JSON.stringify({ q: lying, k: json(k), v: json(v) })),
          400,
          thrownBy(() => flashAttention({ ...lying, data: q.data }, k, v)),
        );
        const unknown = { casual: true };
        await expectError(
          await post(server, JSON.stringify({ q: json(q), k: json(k), v: json(v), options: unknown })),
          400,
          thrownBy(() => flashAttention(q, k, v, unknown as FlashAttentionOptions)),
        );
        const mistyped = { scale: "0.5" };
        await expectError(
          await post(server, JSON.stringify({ q: json(q), k: json(k), v: json(v), options: mistyped })),
          400,
          thrownBy(() => flashAttention(q, k, v, mistyped as unknown as FlashAttentionOptions)),
        );
        await expectError(
          await post(server, JSON.stringify({ q: json(q), k: json(k), v: json(v), returnLse: "yes" })),
          400,
          thrownBy(() => flashAttention(q, k, v, { returnLse: "yes" } as unknown as FlashAttentionOptions)),
        );
        const k3Heads = randomTensor(random, [1, 6, 3, 8]); // 3 heads, v has 2
        await expectError(
          await post(server, binaryRequest([q, k3Heads, v], "", false), "application/x-flash-attention"),
          400,
          thrownBy(() => flashAttention(q, k3Heads, v)),
        );
        // the handler's own checks of the formats: messages of its own, TypeError
        const strings = { shape: [1, 6, 2, 8], data: ["0.5"] };
        const own = await expectError(
          await post(server, JSON.stringify({ q: strings, k: json(k), v: json(v) })),
          400,
          { error: "TypeError" },
        );
        if (!own.message.includes("q must be an object { shape, data } with data an array of numbers")) {
          throw new Error(own.message);
        }
        const truncated = binaryRequest(good, "", false).subarray(0, 100);
        await expectError(await post(server, truncated, "application/x-flash-attention"), 400, { error: "TypeError" });
        await expectError(await post(server, "q=1", "text/plain"), 415, { error: "TypeError" });
        const get = await fetch(new URL("/anything", server.url));
        await expectError(get, 405, { error: "TypeError" });
        const usage = await fetch(server.url);
        if (usage.status !== 200 || !(await usage.text()).startsWith("POST q, k, v")) throw new Error("no usage text");

        const again = await post(server, JSON.stringify({ q: json(q), k: json(k), v: json(v) }));
        const body = await again.json();
        checkAnswer("after the errors", { shape: body.shape, data: Float32Array.from(body.data) }, good, {}, false);
      },
    );

    await t.step("a body over maxBodyBytes with a Content-Length gets 413", async () => {
      const response = await post(server, new Uint8Array(MAX_BODY_BYTES + 1));
      const body = await expectError(response, 413, { error: "RangeError" });
      if (!body.message.includes(`its Content-Length is ${MAX_BODY_BYTES + 1}`)) throw new Error(body.message);

      // Headers announcing 1 GiB and no body at all: the answer can only come from the header.
      const connection = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
      try {
        const head = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
          `Content-Length: ${2 ** 30}\r\n\r\n`;
        await connection.write(new TextEncoder().encode(head));
        const buffer = new Uint8Array(4096);
        let timer: ReturnType<typeof setTimeout> | undefined;
        const timeout = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error("no answer: the server waits for the body")), REQUEST_TIMEOUT_MS);
        });
        const n = await Promise.race([connection.read(buffer), timeout]).finally(() => clearTimeout(timer));
        const status = new TextDecoder().decode(buffer.subarray(0, n ?? 0)).split("\r\n")[0];
        if (status !== "HTTP/1.1 413 Payload Too Large") throw new Error(`got "${status}"`);
      } finally {
        connection.close();
      }
    });

    await t.step("a chunked body gets 413 as soon as it passes maxBodyBytes, and is not read to its end", async () => {
      const CHUNK = 64 * 1024;
      const CHUNKS = (1 << 30) / CHUNK; // 1 GiB if it were read to the end
      let pulls = 0;
      const stream = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (++pulls === CHUNKS) controller.close();
          else controller.enqueue(new Uint8Array(CHUNK).fill(0x20));
        },
      });
      const response = await post(server, stream);
      const body = await expectError(response, 413, { error: "RangeError" });
      if (!body.message.endsWith(`more than ${MAX_BODY_BYTES} bytes were sent`)) throw new Error(body.message);
      // Sockets and stream queues hold some bytes beyond what the server read (about 6 MiB here);
      // 64 MiB, a 16th of the stream, bounds that with a wide margin.
      const sent = pulls * CHUNK;
      if (sent > 64 * MAX_BODY_BYTES) throw new Error(`the client had to produce ${sent} bytes of the stream`);
      await stream.cancel().catch(() => {});
    });

    await t.step("a problem over maxWork gets 422 naming the work and the limit", async () => {
      const tensors = [[1, 128, 1, 32], [1, 128, 1, 32], [1, 128, 1, 32]].map((shape) => randomTensor(random, shape));
      const [q, k, v] = tensors.map(json);
      const body = await expectError(await post(server, JSON.stringify({ q, k, v })), 422, { error: "RangeError" });
      const work = 4 * 128 * 128 * 32; // 4·B·H·Nq·Nk·d
      if (!body.message.includes(`needs ${work} flops`) || !body.message.endsWith(`the limit is ${MAX_WORK} flops`)) {
        throw new Error(body.message);
      }
    });
  } finally {
    await server.close();
  }
});
