/**
 * What bench/field.ts and an engine process (bench/field/_engine.ts) say to each other: one JSON
 * request per line on the engine's stdin, one JSON reply per line on its stdout. Replies carry a
 * prefix, so anything else a library prints on stdout is told apart and passed on, not parsed.
 */
import { Buffer } from "node:buffer";

/** Marks a reply line on the engine's stdout. */
export const REPLY_PREFIX = "@@field ";

/** The engines that run in their own process, and how each one is given its thread count. */
export type OrtEngine = "ort-web" | "ort-node";

/** A request from bench/field.ts. */
export type Request =
  /** Build the inputs for N, create a session, run once and send back the sampled output rows. */
  | { cmd: "prepare"; N: number; causal: boolean }
  /** Run the prepared problem once and send back its wall time. */
  | { cmd: "call" }
  /** Drop the session and the inputs, so their memory goes back before the next problem. */
  | { cmd: "release" };

/** A reply from an engine process. */
export type Reply =
  /** Sent once at start, after the library loaded. */
  | { kind: "ready" }
  /** `rows`: the sampled output rows as base64 f32 bytes; `threads`: the thread count in effect. */
  | { kind: "prepared"; rows: string; threads: number }
  | { kind: "timed"; ms: number }
  | { kind: "released" }
  | { kind: "error"; error: string };

/** f32 values as base64 text (exact, and a quarter the size of JSON numbers). */
export function encodeF32(values: Float32Array): string {
  return Buffer.from(values.buffer, values.byteOffset, values.byteLength).toString("base64");
}

/** The inverse of {@linkcode encodeF32}. */
export function decodeF32(text: string): Float32Array {
  const bytes = Buffer.from(text, "base64");
  // Copy into a fresh buffer: the Buffer may sit at an offset that is not a multiple of 4.
  const out = new Float32Array(bytes.byteLength / 4);
  new Uint8Array(out.buffer).set(bytes);
  return out;
}
