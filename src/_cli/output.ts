// Where the commands write, and the progress display: a bar redrawn in place on a terminal, plain
// lines elsewhere, so that pipes, logs and tests see no control characters.

/** A text sink: process.stdout or process.stderr, or a test's collector. */
export interface Output {
  /** Writes text as it is (no newline added). */
  write(text: string): unknown;
  /** Whether this is a terminal: only then is a progress bar drawn. */
  isTTY?: boolean;
  /** The terminal's width in characters, where known. */
  columns?: number;
}

/** The two outputs of a command: results on stdout, progress and errors on stderr. */
export interface Streams {
  /** Results: headers, tables, reports. */
  stdout: Output;
  /** Progress and errors. */
  stderr: Output;
}

/** Reports how far a long run has come. */
export interface Progress {
  /**
   * Shows that `done` of the run's steps are finished and what runs now.
   *
   * @param done Steps finished.
   * @param label What the next step is.
   */
  update(done: number, label: string): void;
  /**
   * Reports a finished part of the run: a plain line off a terminal; nothing on one (the bar shows it).
   *
   * @param text The line, without a newline.
   */
  note(text: string): void;
  /** Ends the display: the bar's line is cleared. */
  end(): void;
}

const BAR_WIDTH = 24;

/**
 * A progress display on `output` for a run of `total` steps: on a terminal a bar redrawn in place
 * (carriage return, erase line); elsewhere the bar is never drawn and `note` lines are written
 * as they come.
 *
 * @param output Where to draw (stderr).
 * @param total The number of steps.
 * @returns The display.
 */
export function progress(output: Output, total: number): Progress {
  if (!output.isTTY) {
    return { update() {}, note: (text) => void output.write(`${text}\n`), end() {} };
  }
  const width = Math.max(20, (output.columns || 80) - 1); // 0 where the terminal does not say
  let drawn = false;
  return {
    update(done, label) {
      const filled = Math.round((BAR_WIDTH * done) / Math.max(1, total));
      const bar = `[${"#".repeat(filled)}${"-".repeat(BAR_WIDTH - filled)}] ${done}/${total} ${label}`;
      output.write(`\r\x1b[2K${[...bar].slice(0, width).join("")}`);
      drawn = true;
    },
    note() {},
    end() {
      if (drawn) output.write("\r\x1b[2K");
      drawn = false;
    },
  };
}
