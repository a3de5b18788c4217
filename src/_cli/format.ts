// How the commands print numbers and tables.

/**
 * A markdown table with its columns padded to their widest cell, readable in a terminal and
 * pasteable into a document.
 *
 * @param header The column names.
 * @param rows The cells, one array per row.
 * @param align Per column: "l" (left, the default of the first column) or "r" (right, the others').
 * @returns The table, lines joined by newlines, without a final newline.
 */
export function table(
  header: readonly string[],
  rows: readonly (readonly string[])[],
  align: readonly ("l" | "r")[] = header.map((_, i) => (i === 0 ? "l" : "r")),
): string {
  const length = (s: string) => [...s].length;
  const widths = header.map((h, i) => Math.max(3, length(h), ...rows.map((row) => length(row[i] ?? ""))));
  const pad = (s: string, i: number) => {
    const fill = " ".repeat(widths[i] - length(s));
    return align[i] === "r" ? fill + s : s + fill;
  };
  const line = (cells: readonly string[]) => `| ${cells.map((cell, i) => pad(cell, i)).join(" | ")} |`;
  const rule = `|${
    widths.map((w, i) => (align[i] === "r" ? ` ${"-".repeat(w - 1)}: ` : ` ${"-".repeat(w)} `)).join("|")
  }|`;
  return [line(header), rule, ...rows.map((row) => line(row))].join("\n");
}

/**
 * An integer with its thousands grouped by commas, whatever the locale: "138,412,032".
 *
 * @param n A non-negative integer.
 * @returns The digits, grouped.
 */
export function groupDigits(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/**
 * A byte count in binary units, three significant digits: "128 KiB", "1.5 MiB", "900 B".
 *
 * @param bytes A byte count.
 * @returns The count with its unit.
 */
export function binaryBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let x = bytes;
  let unit = 0;
  while (x >= 1024 && unit < units.length - 1) {
    x /= 1024;
    unit++;
  }
  return `${unit === 0 ? x : +x.toPrecision(3)} ${units[unit]}`;
}

/**
 * A duration in milliseconds with about three significant digits: "0.0512", "4.61", "1933.3".
 *
 * @param ms Milliseconds.
 * @returns The number, without a unit.
 */
export function formatMs(ms: number): string {
  if (ms >= 100) return ms.toFixed(1);
  if (ms >= 1) return ms.toFixed(2);
  return ms.toPrecision(3);
}

/**
 * A positive quantity to three significant digits without exponent below 1e6: "22.6", "0.457".
 *
 * @param x The number.
 * @returns Its text.
 */
export function threeDigits(x: number): string {
  return x >= 1e6 || x < 1e-3 ? x.toExponential(2) : String(+x.toPrecision(3));
}

/**
 * Median of a non-empty list of numbers.
 *
 * @param xs The numbers (not modified).
 * @returns Their median: the middle one, or the mean of the middle two.
 */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
