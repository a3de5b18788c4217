// The split-KV count (Flash-Decoding): the automatic choice and the option's validation, shared by
// the KV-cache function and the IO model.

import { describe, message } from "./_messages.ts";

/** Splits are worth their merge only with enough keys per split. */
const MIN_KEYS_PER_SPLIT = 1024;
/** Most splits the automatic choice makes. */
const MAX_AUTO_SPLITS = 16;

/**
 * The automatic split count: Flash-Decoding splits the keys when there are too few query rows to
 * occupy every worker. On one thread (`workers` = 1, the synchronous functions) a split only adds
 * its merge, so this returns 1; a pool passes the Workers each head group may use and gets one
 * split per Worker, each of at least 1024 keys, at most 16.
 *
 * @param keys The longest sequence's keys.
 * @param workers Workers per head group.
 * @returns The number of splits, at least 1.
 */
export function chooseSplits(keys: number, workers = 1): number {
  return Math.max(1, Math.min(workers, MAX_AUTO_SPLITS, Math.floor(keys / MIN_KEYS_PER_SPLIT)));
}

/** Reads a `numSplits` option: undefined or 0 (the automatic choice) gives 0, otherwise a safe integer ≥ 1. */
export function readSplits(value: unknown): number {
  if (value === undefined || value === 0) return 0;
  if (typeof value !== "number") {
    throw new TypeError(message(`numSplits must be a number: numSplits is ${describe(value)}`));
  }
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(message(`numSplits must be an integer ≥ 0: numSplits is ${String(value)}`));
  }
  return value;
}

/**
 * Validates a `numSplits` option and resolves the automatic choice (0) for the longest sequence
 * of `keys` keys on one thread.
 */
export function checkSplits(value: unknown, keys: number): number {
  return readSplits(value) || chooseSplits(keys);
}

/**
 * The key ranges of split-KV over `keys` keys: s = min(numSplits, ⌈keys / Bc⌉) and, when s > 1,
 * consecutive ranges of ⌈keys / (s·Bc)⌉ whole key blocks (the last one shorter, and possibly fewer
 * than s ranges); otherwise the one range of all keys.
 */
export function splitRanges(keys: number, numSplits: number, Bc: number): [number, number][] {
  const splits = Math.min(numSplits, Math.ceil(keys / Bc));
  if (splits <= 1) return [[0, keys]];
  const keysPerSplit = Math.ceil(keys / splits / Bc) * Bc;
  const ranges: [number, number][] = [];
  for (let begin = 0; begin < keys; begin += keysPerSplit) ranges.push([begin, Math.min(keys, begin + keysPerSplit)]);
  return ranges;
}
