/**
 * A `fetch`-style HTTP handler that computes `flashAttention` on q, k and v sent in a request, built
 * only on web-standard APIs (Request, Response, ReadableStream, TextDecoder), so the same function
 * serves from `Deno.serve`, a Cloudflare Worker (workerd), Bun or any runtime with a `fetch` handler.
 * It reads no files and no environment.
 *
 * ```ts
 * import { createHandler } from "./handler.ts";
 *
 * const handler = createHandler({ maxBodyBytes: 1 << 20 });
 * const body = JSON.stringify({
 *   q: { shape: [1, 1, 1, 2], data: [1, 0] },
 *   k: { shape: [1, 2, 1, 2], data: [1, 0, 0, 1] },
 *   v: { shape: [1, 2, 1, 1], data: [10, 20] },
 *   options: { scale: 1 },
 * });
 * const headers = { "content-type": "application/json" };
 * const response = await handler(new Request("http://localhost/", { method: "POST", headers, body }));
 * const o = await response.json(); // { shape: [1, 1, 1, 1], data: [12.689...] }
 * const w = Math.E / (Math.E + 1); // softmax([1, 0])[0]
 * if (response.status !== 200 || Math.abs(o.data[0] - (10 * w + 20 * (1 - w))) > 1e-5) throw new Error("unexpected");
 * ```
 *
 * The request and answer formats (JSON and a small binary one), the limits and the status codes are
 * described in examples/edge/README.md.
 *
 * @module
 */
import { flashAttention, type FlashAttentionOptions, type Tensor } from "@flash/attention";

/** Limits of {@linkcode createHandler}. */
export interface HandlerLimits {
  /** Largest request body read, in bytes; a larger one gets 413. Default {@linkcode DEFAULT_MAX_BODY_BYTES}. */
  maxBodyBytes?: number;
  /**
   * Largest problem computed, in floating-point operations `2·H·Σ Nq·Nk·(d + dv)` over the batch
   * (4·B·H·Nq·Nk·d when dv = d), counted without masks; a larger one gets 422.
   * Default {@linkcode DEFAULT_MAX_WORK}.
   */
  maxWork?: number;
}

/** Default body limit: 16 MiB. */
export const DEFAULT_MAX_BODY_BYTES: number = 16 << 20;
/** Default work limit: 10 GFLOP, about half a second of one core at BENCHMARKS.md's ~20 GFLOP/s. */
export const DEFAULT_MAX_WORK: number = 1e10;

/** Media type of the binary format, in Content-Type (also accepted: application/octet-stream) and Accept. */
export const BINARY_MEDIA_TYPE = "application/x-flash-attention";
/** The binary format's first four bytes, ASCII "FATN". */
export const BINARY_MAGIC: readonly number[] = [0x46, 0x41, 0x54, 0x4e];
/** The binary format's version. */
export const BINARY_VERSION = 1;

/** What a request asks for, in either format. */
export interface AttentionRequest {
  /** Queries. */
  q: Tensor;
  /** Keys. */
  k: Tensor;
  /** Values. */
  v: Tensor;
  /** The options, typed arrays already converted from JSON arrays. */
  options: FlashAttentionOptions;
  /** Whether the answer carries lse (checked by the library when not a boolean). */
  returnLse?: unknown;
}

/** What an answer holds: the output, and lse when it was asked for. */
export interface AttentionAnswer extends Tensor {
  /** Log-sum-exp per query, natural log. */
  lse?: Tensor;
}

/** A TypeError or RangeError of the handler's own, with the HTTP status it answers. */
type Refusal = (TypeError | RangeError) & { status: number };

/** A request the handler refuses before the library sees it. */
function refuse(status: number, type: typeof TypeError | typeof RangeError, text: string): Refusal {
  return Object.assign(new type(`Cannot serve attention as ${text}`), { status });
}

// Options that would change what the answer holds: the handler decides that (returnLse at the top).
const REFUSED_OPTIONS = ["returnLse", "out", "stats"] as const satisfies readonly (keyof FlashAttentionOptions)[];
// Options the library takes as typed arrays, sent as JSON arrays of numbers.
const TYPED_OPTIONS = {
  alibiSlopes: "float",
  seqLensK: "int32",
  cuSeqlensQ: "int32",
  cuSeqlensK: "int32",
} as const satisfies Partial<Record<keyof FlashAttentionOptions, "float" | "int32">>;
const JSON_KEYS = ["q", "k", "v", "options", "returnLse"];
const BINARY_TYPES = [BINARY_MEDIA_TYPE, "application/octet-stream"];

const USAGE = `POST q, k, v to get flashAttention(q, k, v, options).
JSON:   Content-Type: application/json
        {"q":{"shape":[B,Nq,H,d],"data":[...]},"k":{...},"v":{...},"options":{"causal":true},"returnLse":true}
        -> {"shape":[B,Nq,H,dv],"data":[...],"lse":{"shape":[B,H,Nq],"data":[...]}}
Binary: Content-Type: ${BINARY_MEDIA_TYPE}, Accept: ${BINARY_MEDIA_TYPE} (see examples/edge/README.md)
`;

/**
 * Creates the handler: POST a JSON or binary body holding q, k, v and options, get the output (and
 * lse) back as JSON, or in the binary format when Accept names it. Invalid input gets 400 with
 * `{ error, message }` where error and message are those the library threw; a body over
 * `maxBodyBytes` gets 413 as soon as its Content-Length or the bytes read so far pass the limit
 * (the rest is never read); a problem over `maxWork` gets 422.
 *
 * @param limits Body and work limits.
 * @returns A handler for `Deno.serve`, a Worker's `fetch` or any `(Request) => Promise<Response>` host.
 * @throws {RangeError} If a limit is not a positive number.
 */
export function createHandler(limits: HandlerLimits = {}): (request: Request) => Promise<Response> {
  const maxBodyBytes = readLimit("maxBodyBytes", limits.maxBodyBytes, DEFAULT_MAX_BODY_BYTES);
  const maxWork = readLimit("maxWork", limits.maxWork, DEFAULT_MAX_WORK);
  return async (request: Request): Promise<Response> => {
    const path = new URL(request.url).pathname;
    if ((request.method === "GET" || request.method === "HEAD") && path === "/") {
      return new Response(request.method === "GET" ? USAGE : null, {
        headers: { "content-type": "text/plain; charset=utf-8" },
      });
    }
    try {
      if (request.method !== "POST") {
        throw refuse(405, TypeError, `the method must be POST: the method is ${request.method}`);
      }
      const type = mediaType(request.headers.get("content-type") ?? "");
      const binary = BINARY_TYPES.includes(type);
      if (!binary && type !== "application/json") {
        throw refuse(
          415,
          TypeError,
          `the Content-Type must be application/json or ${BINARY_TYPES.join(" or ")}: it is "${type}"`,
        );
      }
      const body = await readBody(request, maxBodyBytes);
      const call = binary ? decodeBinaryRequest(body) : readJsonRequest(body);
      const work = countWork(call);
      if (work > maxWork) {
        throw refuse(
          422,
          RangeError,
          `the problem needs ${work} flops (2·H·Nq·Nk·(d + dv) over the batch): the limit is ${maxWork} flops`,
        );
      }
      const options = call.returnLse === undefined ? call.options : { ...call.options, returnLse: call.returnLse };
      const o = flashAttention(call.q, call.k, call.v, options as FlashAttentionOptions);
      const answer: AttentionAnswer = { data: o.data, shape: o.shape, lse: o.lse };
      const accept = (request.headers.get("accept") ?? "").split(",").map(mediaType);
      if (accept.some((type) => BINARY_TYPES.includes(type))) {
        return new Response(encodeBinaryAnswer(answer), { headers: { "content-type": BINARY_MEDIA_TYPE } });
      }
      return Response.json(toJson(answer));
    } catch (error) {
      return errorResponse(error, path === "/" ? "GET, HEAD, POST" : "POST");
    }
  };
}

function readLimit(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !(value > 0)) {
    throw new RangeError(`Cannot create the handler as ${name} must be a positive number: ${name} is ${value}`);
  }
  return value;
}

/** The library's TypeError/RangeError (ShapeError included) and the handler's own refusals get 4xx. */
function errorResponse(error: unknown, allow: string): Response {
  const status = (error as Partial<Refusal>).status ??
    (error instanceof TypeError || error instanceof RangeError || error instanceof SyntaxError ? 400 : 500);
  const name = error instanceof Error ? error.name : "Error";
  const message = error instanceof Error ? error.message : String(error);
  const headers: Record<string, string> = status === 405 ? { allow } : {};
  return Response.json({ error: name, message }, { status, headers });
}

/** "application/json; charset=utf-8" → "application/json" */
function mediaType(header: string): string {
  return header.split(";")[0].trim().toLowerCase();
}

/**
 * The body's bytes, refusing (413) a Content-Length over the limit before reading anything, and a
 * body without one (chunked) as soon as the bytes read pass the limit: the stream is then
 * cancelled, so the rest is never read.
 */
async function readBody(request: Request, maxBytes: number): Promise<Uint8Array<ArrayBuffer>> {
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > maxBytes) {
    request.body?.cancel().catch(() => {});
    throw refuse(413, RangeError, `the body must be at most ${maxBytes} bytes: its Content-Length is ${declared}`);
  }
  if (request.body === null) return new Uint8Array(0);
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      reader.cancel().catch(() => {});
      throw refuse(
        413,
        RangeError,
        `the body must be at most ${maxBytes} bytes: more than ${maxBytes} bytes were sent`,
      );
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

function readJsonRequest(bytes: Uint8Array): AttentionRequest {
  const body: unknown = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  if (!isObject(body)) {
    throw refuse(400, TypeError, `the body must be a JSON object { q, k, v }: it is ${describe(body)}`);
  }
  for (const key of Object.keys(body)) {
    if (!JSON_KEYS.includes(key)) {
      throw refuse(400, TypeError, `the body has an unknown key "${key}": the known keys are ${JSON_KEYS.join(", ")}`);
    }
  }
  return {
    q: readJsonTensor("q", body.q),
    k: readJsonTensor("k", body.k),
    v: readJsonTensor("v", body.v),
    options: readOptions(body.options),
    returnLse: body.returnLse,
  };
}

/** `{ shape, data: number[] }` → a Tensor; the shape is the library's to check. */
function readJsonTensor(name: string, value: unknown): Tensor {
  if (!isObject(value) || !isNumberArray(value.data)) {
    throw refuse(
      400,
      TypeError,
      `${name} must be an object { shape, data } with data an array of numbers: ${name} is ${describe(value)}`,
    );
  }
  return { data: Float32Array.from(value.data), shape: value.shape as number[] };
}

/**
 * The options object with JSON arrays turned into the typed arrays the library takes; every other
 * key and value is the library's to check (an unknown key gets its error), except the options that
 * would change what the answer holds.
 */
function readOptions(value: unknown): FlashAttentionOptions {
  if (value === undefined) return {};
  if (!isObject(value)) {
    throw refuse(400, TypeError, `options must be a JSON object: options is ${describe(value)}`);
  }
  const options: Record<string, unknown> = { ...value };
  for (const key of REFUSED_OPTIONS) {
    if (key in options) {
      throw refuse(
        400,
        TypeError,
        `options.${key} is not available over HTTP: ${
          key === "returnLse" ? "send returnLse beside options" : "the answer always holds the output only"
        }`,
      );
    }
  }
  for (const [key, kind] of Object.entries(TYPED_OPTIONS)) {
    const x = options[key];
    if (!Array.isArray(x)) continue; // absent, or the library's error
    if (kind === "float" ? !isNumberArray(x) : !x.every((n) => Number.isInteger(n) && n === (n | 0))) {
      throw refuse(
        400,
        TypeError,
        `options.${key} must be an array of ${kind === "float" ? "numbers" : "32-bit integers"}: it is ${describe(x)}`,
      );
    }
    options[key] = kind === "float" ? Float32Array.from(x) : Int32Array.from(x);
  }
  return options as FlashAttentionOptions;
}

/**
 * The request's floating-point operations, 2·H·Σ Nq·Nk·(d + dv) over the sequences, when the shapes
 * and data agree; 0 when they do not (the library then refuses the call with its own error).
 */
function countWork({ q, k, v, options }: AttentionRequest): number {
  const shapes = [q, k, v].map((t) => t.shape);
  const consistent = [q, k, v].every((t) =>
    Array.isArray(t.shape) && t.shape.every((n) => Number.isSafeInteger(n) && n > 0) &&
    t.shape.reduce((a, b) => a * b, 1) === t.data.length
  );
  if (!consistent) return 0;
  const [qs, ks, vs] = shapes;
  const dims = qs[qs.length - 1] + vs[vs.length - 1];
  const { cuSeqlensQ: cuQ, cuSeqlensK: cuK } = options;
  if (cuQ !== undefined || cuK !== undefined) {
    // varlen: q [totalQ, H, d], k [totalK, Hkv, d]; sequence b pairs its queries with its keys
    if (!(cuQ instanceof Int32Array && cuK instanceof Int32Array) || cuQ.length !== cuK.length) return 0;
    let pairs = 0;
    for (let b = 0; b + 1 < cuQ.length; b++) {
      pairs += Math.max(0, cuQ[b + 1] - cuQ[b]) * Math.max(0, cuK[b + 1] - cuK[b]);
    }
    return 2 * qs[1] * pairs * dims;
  }
  if (qs.length !== 4 || ks.length !== 4) return 0;
  const [B, H, Nq, Nk] = options.layout === "bhsd" ? [qs[0], qs[1], qs[2], ks[2]] : [qs[0], qs[2], qs[1], ks[1]];
  return 2 * B * H * Nq * Nk * dims;
}

function toJson(answer: AttentionAnswer): unknown {
  // JSON has no −Infinity: the lse of a query that sees no key is written as null
  const tensor = (t: Tensor) => ({ shape: t.shape, data: Array.from(t.data) });
  return answer.lse === undefined ? tensor(answer) : { ...tensor(answer), lse: tensor(answer.lse) };
}

// The binary format (examples/edge/README.md), little-endian throughout. A request:
//   magic "FATN" | u16 version | u16 flags (bit 0: returnLse) | u32 optionsBytes |
//   u8 rank of q, k, v, u8 0 | u32 dims of q, k, v | options JSON | 0-3 zero bytes to a multiple of 4 |
//   f32 data of q, k, v
// An answer:
//   magic "FATN" | u16 version | u16 flags (bit 0: lse follows) | u8 rank of o, u8 rank of lse (0: none),
//   u16 0 | u32 dims of o, lse | f32 data of o, lse

const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

function checkMagic(view: DataView, what: string): void {
  if (view.byteLength < 12 || BINARY_MAGIC.some((byte, i) => view.getUint8(i) !== byte)) {
    throw refuse(400, TypeError, `${what} must start with the bytes "FATN" and a 12-byte header`);
  }
  const version = view.getUint16(4, true);
  if (version !== BINARY_VERSION) {
    throw refuse(400, TypeError, `${what} must have version ${BINARY_VERSION}: its version is ${version}`);
  }
}

/** Reads `count` f32 values at byte `offset` of `view` (a multiple of 4). */
function readFloats(view: DataView, offset: number, count: number): Float32Array {
  if (LITTLE_ENDIAN) {
    return new Float32Array(view.buffer.slice(view.byteOffset + offset, view.byteOffset + offset + 4 * count));
  }
  return Float32Array.from({ length: count }, (_, i) => view.getFloat32(offset + 4 * i, true));
}

function writeFloats(view: DataView, offset: number, data: Float32Array): number {
  if (LITTLE_ENDIAN) {
    new Uint8Array(view.buffer, view.byteOffset + offset).set(
      new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    );
  } else {
    for (let i = 0; i < data.length; i++) view.setFloat32(offset + 4 * i, data[i], true);
  }
  return offset + data.byteLength;
}

/**
 * Reads a binary request (see examples/edge/README.md).
 *
 * @param bytes The body.
 * @returns q, k, v, the options and whether lse is asked for.
 * @throws {TypeError} If the bytes do not follow the format; shapes and options are the library's to check.
 */
export function decodeBinaryRequest(bytes: Uint8Array): AttentionRequest {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  checkMagic(view, "a binary body");
  const flags = view.getUint16(6, true);
  if (flags & ~1) throw refuse(400, TypeError, `the binary body's flags must be 0 or 1: they are ${flags}`);
  const optionsBytes = view.getUint32(8, true);
  const ranks = [0, 1, 2].map((i) => bytes.byteLength >= 16 ? view.getUint8(12 + i) : 0);
  if (bytes.byteLength < 16 || view.getUint8(15) !== 0 || ranks.includes(0)) {
    throw refuse(400, TypeError, "a binary body must give q, k and v ranks ≥ 1 in bytes 12-14, and 0 in 15");
  }
  let offset = 16;
  const shapes = ranks.map((rank) => {
    const shape = Array.from(
      { length: rank },
      (_, i) => offset + 4 * i + 4 <= bytes.byteLength ? view.getUint32(offset + 4 * i, true) : 0,
    );
    offset += 4 * rank;
    return shape;
  });
  const optionsEnd = offset + optionsBytes;
  const dataStart = Math.ceil(optionsEnd / 4) * 4;
  const sizes = shapes.map((shape) => shape.reduce((a, b) => a * b, 1));
  const expected = dataStart + 4 * (sizes[0] + sizes[1] + sizes[2]);
  if (bytes.byteLength !== expected) {
    throw refuse(
      400,
      TypeError,
      `a binary body with shapes q ${fmt(shapes[0])}, k ${fmt(shapes[1])}, v ${
        fmt(shapes[2])
      } and ${optionsBytes} bytes of options must have ${expected} bytes: it has ${bytes.byteLength}`,
    );
  }
  const options = optionsBytes === 0
    ? {}
    : readOptions(JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(offset, optionsEnd))));
  const [q, k, v] = shapes.map((shape, i) => {
    const start = dataStart + 4 * (i === 0 ? 0 : i === 1 ? sizes[0] : sizes[0] + sizes[1]);
    return { data: readFloats(view, start, sizes[i]), shape };
  });
  return { q, k, v, options, returnLse: (flags & 1) === 1 ? true : undefined };
}

/**
 * Writes a binary answer (see examples/edge/README.md).
 *
 * @param answer The output, with lse or not.
 * @returns The bytes.
 */
export function encodeBinaryAnswer(answer: AttentionAnswer): Uint8Array<ArrayBuffer> {
  const lse = answer.lse;
  const dims = [...answer.shape, ...(lse?.shape ?? [])];
  const headerBytes = 12 + 4 * dims.length;
  const bytes = new Uint8Array(headerBytes + answer.data.byteLength + (lse?.data.byteLength ?? 0));
  const view = new DataView(bytes.buffer);
  BINARY_MAGIC.forEach((byte, i) => view.setUint8(i, byte));
  view.setUint16(4, BINARY_VERSION, true);
  view.setUint16(6, lse ? 1 : 0, true);
  view.setUint8(8, answer.shape.length);
  view.setUint8(9, lse?.shape.length ?? 0);
  dims.forEach((n, i) => view.setUint32(12 + 4 * i, n, true));
  const end = writeFloats(view, headerBytes, answer.data);
  if (lse) writeFloats(view, end, lse.data);
  return bytes;
}

/**
 * Writes a binary request: what a client sends (see examples/edge/README.md).
 *
 * @param q Queries.
 * @param k Keys.
 * @param v Values.
 * @param options JSON-able options (typed-array options as arrays of numbers).
 * @param returnLse Whether the answer should carry lse.
 * @returns The bytes.
 */
export function encodeBinaryRequest(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options?: Record<string, unknown>,
  returnLse = false,
): Uint8Array<ArrayBuffer> {
  const json = options === undefined ? new Uint8Array(0) : new TextEncoder().encode(JSON.stringify(options));
  const dims = [...q.shape, ...k.shape, ...v.shape];
  const optionsStart = 16 + 4 * dims.length;
  const dataStart = Math.ceil((optionsStart + json.byteLength) / 4) * 4;
  const bytes = new Uint8Array(dataStart + q.data.byteLength + k.data.byteLength + v.data.byteLength);
  const view = new DataView(bytes.buffer);
  BINARY_MAGIC.forEach((byte, i) => view.setUint8(i, byte));
  view.setUint16(4, BINARY_VERSION, true);
  view.setUint16(6, returnLse ? 1 : 0, true);
  view.setUint32(8, json.byteLength, true);
  [q, k, v].forEach((t, i) => view.setUint8(12 + i, t.shape.length));
  dims.forEach((n, i) => view.setUint32(16 + 4 * i, n, true));
  bytes.set(json, optionsStart);
  writeFloats(view, writeFloats(view, writeFloats(view, dataStart, q.data), k.data), v.data);
  return bytes;
}

/**
 * Reads a binary answer: what a client receives (see examples/edge/README.md).
 *
 * @param bytes The body of a 200 answer whose Content-Type is {@linkcode BINARY_MEDIA_TYPE}.
 * @returns The output, with lse when the answer holds it.
 * @throws {TypeError} If the bytes do not follow the format.
 */
export function decodeBinaryAnswer(bytes: Uint8Array): AttentionAnswer {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  checkMagic(view, "a binary answer");
  const [rank, lseRank] = [view.getUint8(8), view.getUint8(9)];
  const read = (offset: number, n: number) => Array.from({ length: n }, (_, i) => view.getUint32(offset + 4 * i, true));
  const shape = read(12, rank);
  const lseShape = read(12 + 4 * rank, lseRank);
  const start = 12 + 4 * (rank + lseRank);
  const size = shape.reduce((a, b) => a * b, 1);
  const answer: AttentionAnswer = { data: readFloats(view, start, size), shape };
  if (view.getUint16(6, true) & 1) {
    answer.lse = { data: readFloats(view, start + 4 * size, lseShape.reduce((a, b) => a * b, 1)), shape: lseShape };
  }
  return answer;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isNumberArray(value: unknown): value is number[] {
  return Array.isArray(value) && value.every((x) => typeof x === "number");
}

function fmt(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/** A short description of a JSON value for messages. */
function describe(value: unknown): string {
  if (Array.isArray(value)) {
    return value.length <= 8 ? `an array ${JSON.stringify(value)}` : `an array of length ${value.length}`;
  }
  if (isObject(value)) return `an object with keys ${JSON.stringify(Object.keys(value))}`;
  if (typeof value === "string" && value.length > 40) return `a string of length ${value.length}`;
  return value === undefined ? "missing" : JSON.stringify(value);
}
