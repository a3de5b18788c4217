// Minimal SVG charts for the IO report: line charts with log or linear axes, and bar charts.
// Plain strings, no dependency.

/** One line of a chart. */
export interface Series {
  name: string;
  points: [number, number][];
  color: string;
  dashed?: boolean;
  /** Draw the points as circles (measured values) instead of a line. */
  markers?: boolean;
}

/** A line chart. */
export interface LineChart {
  title: string;
  xLabel: string;
  yLabel: string;
  xLog?: boolean;
  yLog?: boolean;
  series: Series[];
  /** Formats tick values. */
  format?: (x: number) => string;
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

function ticks(min: number, max: number, log: boolean): number[] {
  if (log) {
    const out: number[] = [];
    for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e++) out.push(10 ** e);
    return out.filter((t) => t >= min / 1.001 && t <= max * 1.001);
  }
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
  if (!chart.yLog) y0 = Math.min(0, y0);
  if (chart.yLog) [y0, y1] = [10 ** Math.floor(Math.log10(y0)), 10 ** Math.ceil(Math.log10(y1))];
  const tx = (x: number) => chart.xLog ? Math.log10(x) : x;
  const ty = (y: number) => chart.yLog ? Math.log10(y) : y;
  const px = (x: number) => M.left + ((tx(x) - tx(x0)) / (tx(x1) - tx(x0) || 1)) * (W - M.left - M.right);
  const py = (y: number) => H - M.bottom - ((ty(y) - ty(y0)) / (ty(y1) - ty(y0) || 1)) * (H - M.top - M.bottom);
  const format = chart.format ?? si;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${escape(chart.title)}</text>`,
  ];
  const xTicks = chart.xLog ? xs.filter((x, i) => xs.indexOf(x) === i).sort((a, b) => a - b) : ticks(x0, x1, false);
  for (const t of xTicks) {
    parts.push(
      `<line x1="${px(t)}" y1="${M.top}" x2="${px(t)}" y2="${H - M.bottom}" stroke="#eee"/>`,
      `<text x="${px(t)}" y="${H - M.bottom + 16}" text-anchor="middle">${format(t)}</text>`,
    );
  }
  for (const t of ticks(y0, y1, chart.yLog ?? false)) {
    parts.push(
      `<line x1="${M.left}" y1="${py(t)}" x2="${W - M.right}" y2="${py(t)}" stroke="#eee"/>`,
      `<text x="${M.left - 6}" y="${py(t) + 4}" text-anchor="end">${format(t)}</text>`,
    );
  }
  parts.push(
    `<line x1="${M.left}" y1="${H - M.bottom}" x2="${W - M.right}" y2="${H - M.bottom}" stroke="black"/>`,
    `<line x1="${M.left}" y1="${M.top}" x2="${M.left}" y2="${H - M.bottom}" stroke="black"/>`,
    `<text x="${W / 2}" y="${H - 18}" text-anchor="middle">${escape(chart.xLabel)}</text>`,
    `<text transform="translate(18 ${H / 2}) rotate(-90)" text-anchor="middle">${escape(chart.yLabel)}</text>`,
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
    const ly = M.top + 8 + 18 * i;
    parts.push(
      s.markers
        ? `<circle cx="${M.left + 20}" cy="${ly - 4}" r="4" fill="${s.color}"/>`
        : `<line x1="${M.left + 10}" y1="${ly - 4}" x2="${M.left + 30}" y2="${
          ly - 4
        }" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ""}/>`,
      `<text x="${M.left + 36}" y="${ly}">${escape(s.name)}</text>`,
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
  for (const t of ticks(0, max, false)) {
    const y = H - M.bottom - (t / max) * plotH;
    parts.push(
      `<line x1="${M.left}" y1="${y}" x2="${W - M.right}" y2="${y}" stroke="#eee"/>`,
      `<text x="${M.left - 6}" y="${y + 4}" text-anchor="end">${si(t)}</text>`,
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
          si(s.values[c])
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
      `<rect x="${W - M.right - 200}" y="${ly - 10}" width="12" height="12" fill="${s.color}"/>`,
      `<text x="${W - M.right - 182}" y="${ly}">${escape(s.name)}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}
