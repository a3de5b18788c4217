// Minimal SVG charts for the IO report: line charts with log or linear axes, and bar charts.
// Plain strings, no dependency. Byte axes are labelled in binary units (KiB, MiB, GiB), as the
// text of the report and the README are.

/** One line of a chart. */
export interface Series {
  name: string;
  points: [number, number][];
  color: string;
  dashed?: boolean;
  /** Draw the points as circles (measured values) instead of a line. */
  markers?: boolean;
}

/** One axis of a line chart. */
export interface Axis {
  label: string;
  log?: boolean;
  /** Values are byte counts: binary tick labels, and on a log axis ticks at powers of 2. */
  bytes?: boolean;
}

/** A line chart. */
export interface LineChart {
  title: string;
  x: Axis;
  y: Axis;
  series: Series[];
  /** Corner of the plot that holds the legend (default top-left); pick one the lines leave empty. */
  legend?: "top-left" | "top-right" | "bottom-left";
}

const W = 640;
const H = 400;
const M = { left: 80, right: 20, top: 40, bottom: 60 };

const escape = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** 1.5K, 2M, 3G-style numbers. */
export function si(x: number): string {
  const units: [number, string][] = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "K"]];
  for (const [scale, unit] of units) {
    if (Math.abs(x) >= scale) return `${+(x / scale).toPrecision(3)}${unit}`;
  }
  return `${+x.toPrecision(3)}`;
}

/** Byte counts in binary units: 512 B, 16 KiB, 1.5 MiB, 4 GiB. */
export function binaryBytes(x: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let u = 0;
  while (u < units.length - 1 && Math.abs(x) >= 1024) {
    x /= 1024;
    u++;
  }
  return `${+x.toPrecision(3)} ${units[u]}`;
}

/** Integers as they are below 100,000 (sequence lengths), else si. */
function plain(x: number): string {
  return Math.abs(x) < 1e5 ? `${+x.toPrecision(Number.isInteger(x) ? 6 : 3)}` : si(x);
}

function logTicks(min: number, max: number, base: number): number[] {
  const lo = Math.floor(Math.log(min) / Math.log(base) + 1e-9);
  const hi = Math.ceil(Math.log(max) / Math.log(base) - 1e-9);
  // Powers of 2 every 1, 2, 5 or 10 exponents (1 KiB, 1 MiB, … at 10), whichever gives ≤ 8 ticks.
  const step = base === 2 ? [1, 2, 5, 10, 20].find((s) => (hi - lo) / s <= 8) ?? 20 : 1;
  const out: number[] = [];
  for (let e = Math.ceil(lo / step) * step; e <= hi; e += step) out.push(base ** e);
  return out.filter((t) => t >= min / 1.001 && t <= max * 1.001);
}

function linearTicks(min: number, max: number): number[] {
  const step = 10 ** Math.floor(Math.log10((max - min) / 4 || 1));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => (max - min) / s <= 8) ?? step * 10;
  const out: number[] = [];
  for (let t = Math.ceil(min / nice) * nice; t <= max + 1e-9; t += nice) out.push(t);
  return out;
}

/** Renders a line chart as an SVG document. */
export function lineChart(chart: LineChart): string {
  const all = chart.series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const yBase = chart.y.bytes ? 2 : 10;
  if (!chart.y.log) y0 = Math.min(0, y0);
  if (chart.y.log) {
    const log = (y: number) => Math.log(y) / Math.log(yBase);
    [y0, y1] = [yBase ** Math.floor(log(y0) + 1e-9), yBase ** Math.ceil(log(y1) - 1e-9)];
  }
  const tx = (x: number) => chart.x.log ? Math.log10(x) : x;
  const ty = (y: number) => chart.y.log ? Math.log10(y) : y;
  const px = (x: number) => M.left + ((tx(x) - tx(x0)) / (tx(x1) - tx(x0) || 1)) * (W - M.left - M.right);
  const py = (y: number) => H - M.bottom - ((ty(y) - ty(y0)) / (ty(y1) - ty(y0) || 1)) * (H - M.top - M.bottom);
  const xFormat = chart.x.bytes ? binaryBytes : plain;
  const yFormat = chart.y.bytes ? binaryBytes : plain;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${escape(chart.title)}</text>`,
  ];
  // A log x axis is ticked at the data's x values (the sweep's sizes), a linear one at round numbers.
  const xTicks = chart.x.log ? xs.filter((x, i) => xs.indexOf(x) === i).sort((a, b) => a - b) : linearTicks(x0, x1);
  for (const t of xTicks) {
    parts.push(
      `<line x1="${px(t)}" y1="${M.top}" x2="${px(t)}" y2="${H - M.bottom}" stroke="#eee"/>`,
      `<text x="${px(t)}" y="${H - M.bottom + 16}" text-anchor="middle" font-size="11">${xFormat(t)}</text>`,
    );
  }
  for (const t of chart.y.log ? logTicks(y0, y1, yBase) : linearTicks(y0, y1)) {
    parts.push(
      `<line x1="${M.left}" y1="${py(t)}" x2="${W - M.right}" y2="${py(t)}" stroke="#eee"/>`,
      `<text x="${M.left - 6}" y="${py(t) + 4}" text-anchor="end">${yFormat(t)}</text>`,
    );
  }
  parts.push(
    `<line x1="${M.left}" y1="${H - M.bottom}" x2="${W - M.right}" y2="${H - M.bottom}" stroke="black"/>`,
    `<line x1="${M.left}" y1="${M.top}" x2="${M.left}" y2="${H - M.bottom}" stroke="black"/>`,
    `<text x="${W / 2}" y="${H - 18}" text-anchor="middle">${escape(chart.x.label)}</text>`,
    `<text transform="translate(18 ${H / 2}) rotate(-90)" text-anchor="middle">${escape(chart.y.label)}</text>`,
  );
  chart.series.forEach((s, i) => {
    if (s.markers) {
      for (const [x, y] of s.points) parts.push(`<circle cx="${px(x)}" cy="${py(y)}" r="4" fill="${s.color}"/>`);
    } else {
      const d = s.points.map(([x, y], j) => `${j ? "L" : "M"}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ");
      parts.push(
        `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ""}/>`,
      );
    }
    const lx = chart.legend === "top-right" ? W - M.right - 300 : M.left;
    const ly = chart.legend === "bottom-left"
      ? H - M.bottom - 10 - 18 * (chart.series.length - 1 - i)
      : M.top + 8 + 18 * i;
    parts.push(
      s.markers
        ? `<circle cx="${lx + 20}" cy="${ly - 4}" r="4" fill="${s.color}"/>`
        : `<line x1="${lx + 10}" y1="${ly - 4}" x2="${lx + 30}" y2="${ly - 4}" stroke="${s.color}" stroke-width="2"${
          s.dashed ? ' stroke-dasharray="6 4"' : ""
        }/>`,
      `<text x="${lx + 36}" y="${ly}">${escape(s.name)}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}

/** A grouped bar chart: one group per category, one bar per series. */
export function barChart(
  title: string,
  yLabel: string,
  categories: string[],
  series: { name: string; values: number[]; color: string }[],
): string {
  const max = Math.max(...series.flatMap((s) => s.values));
  const plotW = W - M.left - M.right;
  const plotH = H - M.top - M.bottom;
  const groupW = plotW / categories.length;
  const barW = (groupW * 0.7) / series.length;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${escape(title)}</text>`,
    `<line x1="${M.left}" y1="${H - M.bottom}" x2="${W - M.right}" y2="${H - M.bottom}" stroke="black"/>`,
    `<text transform="translate(18 ${H / 2}) rotate(-90)" text-anchor="middle">${escape(yLabel)}</text>`,
  ];
  for (const t of linearTicks(0, max)) {
    const y = H - M.bottom - (t / max) * plotH;
    parts.push(
      `<line x1="${M.left}" y1="${y}" x2="${W - M.right}" y2="${y}" stroke="#eee"/>`,
      `<text x="${M.left - 6}" y="${y + 4}" text-anchor="end">${plain(t)}</text>`,
    );
  }
  categories.forEach((category, c) => {
    const gx = M.left + c * groupW + groupW * 0.15;
    series.forEach((s, i) => {
      const h = (s.values[c] / max) * plotH;
      const x = gx + i * barW;
      parts.push(
        `<rect x="${x}" y="${H - M.bottom - h}" width="${barW - 2}" height="${h}" fill="${s.color}"/>`,
        `<text x="${x + barW / 2}" y="${H - M.bottom - h - 4}" text-anchor="middle" font-size="10">${
          plain(s.values[c])
        }</text>`,
      );
    });
    parts.push(
      `<text x="${M.left + c * groupW + groupW / 2}" y="${H - M.bottom + 16}" text-anchor="middle">${
        escape(category)
      }</text>`,
    );
  });
  series.forEach((s, i) => {
    const ly = M.top + 8 + 18 * i;
    parts.push(
      `<rect x="${W - M.right - 230}" y="${ly - 10}" width="12" height="12" fill="${s.color}"/>`,
      `<text x="${W - M.right - 212}" y="${ly}">${escape(s.name)}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}
