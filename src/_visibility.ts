// The kernels' visibility rule (assembly/scores.ts) on the host, for what must predict the kernels'
// tiles without running them: the backward's segments (_backward_plan.ts) and the IO model (io.ts).
// A leaf: imports nothing.

/** The keys position i sees, [first(i), end(i)); both ends are non-decreasing in i. */
export interface KeyVisibility {
  first(i: number): number;
  end(i: number): number;
}

/**
 * Position i sees key j < Nk iff i + offset − left ≤ j ≤ i + offset + right (a bound of −1 is
 * unbounded; causal is right = 0; offset = Nk − Nq bottom-right, 0 top-left).
 */
export function keyVisibility(Nk: number, offset: number, left: number, right: number): KeyVisibility {
  const clamp = (j: number) => Math.min(Nk, Math.max(0, j));
  return {
    first: (i) => left < 0 ? 0 : clamp(i + offset - left),
    end: (i) => right < 0 ? Nk : clamp(i + offset + right + 1),
  };
}

/**
 * The keys a block of virtual rows i0 .. i0 + rows sees (row r is position ⌊r/g⌋): from the first
 * key of its first row to the end of its last row. The kernels compute a key block for a query
 * block iff this range is not empty and meets the key block.
 */
export function blockKeys(visible: KeyVisibility, i0: number, rows: number, g: number): [number, number] {
  return [visible.first(Math.floor(i0 / g)), visible.end(Math.floor((i0 + rows - 1) / g))];
}
