// Runs the fuzz properties one after another, each with fast-check's seed and its share of the time
// bound, and reports what each did: cases run, or fast-check's report (seed, path, shrunk
// counterexample) when it failed.

import fc from "fast-check";

/** A named property, synchronous or asynchronous, with its share of the time (default 1). */
export interface FuzzProperty {
  name: string;
  property: fc.IProperty<unknown> | fc.IAsyncProperty<unknown>;
  weight?: number;
}

/** What one property did. */
export interface PropertyOutcome {
  name: string;
  cases: number;
  failed: boolean;
}

/**
 * Runs `properties` within about `seconds` in all: property i gets seconds × weight / total weight
 * of fast-check runs (interrupted at its limit, which is no failure) with seed `seed`, as many
 * runs as fit. Prints a line per property and, for a failure, fast-check's report.
 */
export async function runProperties(
  properties: FuzzProperty[],
  seed: number,
  seconds: number,
  log: (line: string) => void,
): Promise<PropertyOutcome[]> {
  const total = properties.reduce((sum, p) => sum + (p.weight ?? 1), 0);
  const outcomes: PropertyOutcome[] = [];
  for (const p of properties) {
    const ms = Math.max(1, Math.floor((1000 * seconds * (p.weight ?? 1)) / total));
    const parameters = {
      seed,
      numRuns: 1_000_000_000,
      interruptAfterTimeLimit: ms,
      markInterruptAsFailure: false,
      includeErrorInReport: true,
    };
    const started = Date.now();
    // deno-lint-ignore no-explicit-any
    const details: fc.RunDetails<unknown> = await fc.check(p.property as any, parameters);
    const seconds_ = ((Date.now() - started) / 1000).toFixed(1);
    outcomes.push({ name: p.name, cases: details.numRuns, failed: details.failed });
    if (details.failed) {
      log(`✗ ${p.name}: FAILED after ${details.numRuns} cases (${seconds_} s)`);
      log(`  seed ${details.seed}, path "${details.counterexamplePath}"`);
      log(`  rerun: --seed=${details.seed} --only="${p.name}"`);
      log(fc.defaultReportMessage(details) ?? "(no report)");
    } else {
      log(`✓ ${p.name}: ${details.numRuns} cases (${seconds_} s)`);
    }
  }
  return outcomes;
}
