// Reading the commands' arguments: node:util's parseArgs (strict) does the parsing; these turn
// its errors and its strings into usage errors and checked numbers.

/** A mistake in the command line: the tool prints it with a pointer to --help and exits with 2. */
export class UsageError extends Error {
  /**
   * Makes a usage error.
   *
   * @param message What was wrong, naming the option and the value given.
   */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * Runs a parseArgs call, turning the errors it throws for the command line (unknown option,
 * missing value, unexpected argument) into a {@linkcode UsageError} with the same message.
 *
 * @param parse The parseArgs call.
 * @returns What it returns.
 * @throws {UsageError} For any error parseArgs throws.
 */
export function parseWith<T>(parse: () => T): T {
  try {
    return parse();
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message : String(error));
  }
}

/**
 * An integer option: absent gives the fallback; anything but decimal digits in [min, max] is an error.
 *
 * @param flag The option as typed, "--heads".
 * @param value parseArgs' value.
 * @param fallback The default.
 * @param min The smallest value allowed (default 1).
 * @param max The largest value allowed (default 2³¹ − 1).
 * @returns The integer.
 * @throws {UsageError} If the value is not such an integer.
 */
export function integer(
  flag: string,
  value: string | undefined,
  fallback: number,
  min = 1,
  max = 2 ** 31 - 1,
): number {
  if (value === undefined) return fallback;
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!(n >= min && n <= max)) {
    throw new UsageError(`${flag} must be an integer in [${min}, ${max}]: ${flag} is "${value}"`);
  }
  return n;
}

/**
 * A comma-separated list of integers, each in [min, max]: "256,1024,4096".
 *
 * @param flag The option as typed.
 * @param value parseArgs' value.
 * @param fallback The default list.
 * @param min The smallest value allowed.
 * @param max The largest value allowed.
 * @returns The integers, in the order given.
 * @throws {UsageError} If an item is not such an integer.
 */
export function integerList(
  flag: string,
  value: string | undefined,
  fallback: readonly number[],
  min = 1,
  max = 2 ** 31 - 1,
): number[] {
  if (value === undefined) return [...fallback];
  return value.split(",").map((item) => {
    try {
      return integer(flag, item.trim(), 0, min, max);
    } catch {
      throw new UsageError(
        `${flag} must be a comma-separated list of integers in [${min}, ${max}]: ${flag} is "${value}"`,
      );
    }
  });
}

const UNITS: Record<string, number> = { "": 1, b: 1, k: 1024, kib: 1024, m: 1024 ** 2, mib: 1024 ** 2 };

/**
 * A size in bytes: a whole number of bytes, or with a binary unit, "128KiB", "128k", "1MiB", "1m".
 *
 * @param flag The option as typed.
 * @param value parseArgs' value.
 * @param fallback The default, in bytes.
 * @returns Bytes.
 * @throws {UsageError} If the value is not a positive whole number of bytes.
 */
export function byteSize(flag: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const match = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(value.trim());
  const unit = match ? UNITS[match[2].toLowerCase()] : undefined;
  const bytes = match && unit ? Number(match[1]) * unit : NaN;
  if (!(Number.isSafeInteger(bytes) && bytes > 0)) {
    throw new UsageError(
      `${flag} must be a positive whole number of bytes, optionally with a unit (KiB, MiB; k, m): ${flag} is "${value}"`,
    );
  }
  return bytes;
}
