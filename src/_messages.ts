// How errors read (STYLE §6): one prefix, shapes in full, values described. A leaf: imports nothing.

const PREFIX = "Cannot compute attention as";

/** Formats a message with the library's prefix. */
export function message(text: string): string {
  return `${PREFIX} ${text}`;
}

/** "[1, 128, 8, 64]" */
export function formatShape(shape: readonly unknown[]): string {
  return `[${shape.map((x) => typeof x === "string" ? `"${x}"` : String(x)).join(", ")}]`;
}

/** A short description of a value for error messages. */
export function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) {
    return value.length <= 8 ? `an Array ${formatShape(value)}` : `an Array of length ${value.length}`;
  }
  if (ArrayBuffer.isView(value)) {
    const name = value.constructor.name;
    return `${/^[AEIO]/.test(name) ? "an" : "a"} ${name}`; // "a Uint8Array", "an Int32Array"
  }
  if (typeof value === "object") return `an object (${value?.constructor?.name ?? "no prototype"})`;
  if (typeof value === "string") return `"${value}"`;
  return String(value);
}
