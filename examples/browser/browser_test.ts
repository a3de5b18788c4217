/**
 * Runs the browser example in headless Chromium and checks what the page computed against the f64 reference,
 * recomputed here from the seeds and shapes the page reports; then loads it without cross-origin isolation (the pool
 * must refuse, the rest must work), under the Content-Security-Policy the README gives, and under that policy less
 * each of its parts, to show that every part is needed; and with its WebGPU switch on (Chromium started with
 * --enable-unsafe-webgpu, which gives headless Chromium its SwiftShader adapter).
 *
 *   node --import tsx --test examples/browser/browser_test.ts
 *
 * Needs Chromium at /usr/bin/chromium (`apt-get install -y chromium`) or at $CHROMIUM_PATH.
 */
import { existsSync, mkdirSync } from "node:fs";
import { after, before, test } from "node:test";
import { dirname } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { type Browser, chromium, type Page } from "playwright-core";
import { referenceAttention } from "../../src/reference.ts";
import type { Tensor } from "../../mod.ts";
import { assertFlashTolerance, naiveAttentionF32, randomTensor, rng } from "../../tests/_util.ts";
import type { DrawnProblem, PageOutputs, PageResults } from "./main.ts";
import { serve, type Server } from "./serve.ts";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const screenshot = fileURLToPath(new URL("../../.scratch/browser/screenshot.png", import.meta.url));
/** The CSP the README gives: wasm compilation from the page's own scripts, and the pool's Blob-URL Workers. */
const CSP = "script-src 'self' 'wasm-unsafe-eval'; worker-src blob:";

let browser: Browser;
const servers: Server[] = [];

before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `Cannot run the browser example as there is no Chromium at ${CHROMIUM}: apt-get install -y chromium`,
    );
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--enable-unsafe-webgpu"],
    headless: true,
  });
});

after(async () => {
  await browser?.close();
  await Promise.all(servers.map((server) => server.close()));
});

/**
 * Opens the example served with `headers` (at `query`, e.g. "?webgpu") and waits up to `timeout` ms until it reports
 * its results or its error.
 */
async function load(
  headers?: Record<string, string>,
  query = "",
  timeout = 30_000,
): Promise<{ page: Page; results: PageResults | { error: string } }> {
  const server = await serve({ headers });
  servers.push(server);
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  page.on("console", (message) => message.type() === "error" && errors.push(message.text()));
  await page.goto(server.url + query);
  try {
    await page.waitForFunction(() => globalThis.__results !== undefined, null, { timeout });
  } catch (error) {
    throw new Error(`The page reported no results: ${error}; its errors: ${errors.join("; ") || "none"}`);
  }
  return { page, results: (await page.evaluate(() => globalThis.__results))! };
}

/** The page's inputs, drawn again here from its seed and shape, and checked against the page's Σ q + Σ k + Σ v. */
function inputs(problem: DrawnProblem): [Tensor, Tensor, Tensor] {
  const random = rng(problem.seed);
  const tensors = [0, 1, 2].map(() => randomTensor(random, problem.shape, problem.amplitude));
  const inputSum = tensors.reduce((a, t) => t.data.reduce((b, x) => b + x, a), 0);
  assert(
    inputSum === problem.inputSum,
    `The test's inputs are not the page's (does main.ts still draw them as tests/_util.ts's rng and randomTensor?): ` +
      `Σ q + Σ k + Σ v is ${problem.inputSum} on the page, ${inputSum} here`,
  );
  return [tensors[0], tensors[1], tensors[2]];
}

function assert(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

/** P of one head from scores and lse, exactly as the page computes it (P = 0 where masked). */
function probabilities(q: Tensor, k: Tensor, lse: ArrayLike<number>, head: number): number[][] {
  const [, N, H, d] = q.shape;
  const scale = 1 / Math.sqrt(d);
  return Array.from({ length: N }, (_, i) =>
    Array.from({ length: N }, (_, j) => {
      if (j > i) return 0;
      let s = 0;
      for (let c = 0; c < d; c++) s += q.data[(i * H + head) * d + c] * k.data[(j * H + head) * d + c];
      return Math.exp(scale * s - lse[head * N + i]);
    }));
}

/** The results of a page that computed, or an error saying what stopped it. */
function computed(results: PageResults | { error: string }, what: string): PageResults {
  if ("error" in results) throw new Error(`The page failed ${what}: ${results.error}`);
  return results;
}

/** The pool's run on a page whose pool ran, or an error saying why it did not. */
function pooled(results: PageResults, what: string): Extract<PageResults["pool"], { threads: number }> {
  if ("error" in results.pool) throw new Error(`The page's pool failed ${what}: ${results.pool.error}`);
  return results.pool;
}

test("the browser example computes attention on the main thread and in a pool that match the f64 reference", async () => {
  const loaded = await load();
  const { page } = loaded;
  const results = computed(loaded.results, "with COOP/COEP headers");
  assert(results.crossOriginIsolated, "The page is not cross-origin isolated: check serve.ts's COOP/COEP headers");
  const pool = pooled(results, "on a cross-origin isolated page");
  const outputs: PageOutputs = (await page.evaluate(() => globalThis.__outputs))!;
  assert(outputs.pool !== undefined, "The page has no pool output");

  // Tolerance, as every test of the repository: error(page vs f64 reference) ≤ 2 × error(naive f32 vs f64) + 1e-6.
  // The kernels store and accumulate in f32, so the page cannot match f64 exactly; a naive f32 attention shows
  // how far f32 arithmetic alone lands, and the factor 2 leaves room for the kernels' other summation order, their
  // polynomial exp and the online softmax's rescaling (tests/_util.ts).
  const { problem } = results;
  assert(problem.causal, "The test expects a causal problem");
  const [q, k, v] = inputs(problem);
  const reference = referenceAttention(q, k, v, { causal: true, returnLse: true });
  const naive = naiveAttentionF32(q, k, v, { causal: true });
  for (const [name, output] of Object.entries(outputs)) {
    assertFlashTolerance(`${name} O`, output.o, reference.data, naive.data);
    assertFlashTolerance(`${name} lse`, output.lse, reference.lse.data, naive.lse);
  }
  // The README promises the pool's bits equal the synchronous call's, for any number of Workers.
  assert(results.maxDifference === 0, `The pool's output differs from the main thread's by ${results.maxDifference}`);
  assert(outputs.pool.o.every((x, i) => Object.is(x, outputs.main.o[i])), "The pool's O has other bits");
  assert(outputs.pool.lse.every((x, i) => Object.is(x, outputs.main.lse[i])), "The pool's lse has other bits");

  // The heat map: P from the page's lse against P from the f64 reference's (the same formula, so they differ only
  // by their lse), with the same rule. A row that sees a key sums to 1 within 1e-5: its sum is
  // exp(lse_exact − lse_page), and |lse| < 8 here puts an f32 lse within a few 1e-7 of exact (1e-5 leaves room
  // for the kernel's own error, which the rule above bounds). A row that sees none is all 0.
  const { heatMap } = results;
  assert(heatMap.problem.causal, "The test expects a causal heat map");
  const [hq, hk, hv] = inputs(heatMap.problem);
  const referenceLse = referenceAttention(hq, hk, hv, { causal: true, returnLse: true }).lse.data;
  const referenceP = probabilities(hq, hk, referenceLse, heatMap.head);
  const naiveP = probabilities(hq, hk, naiveAttentionF32(hq, hk, hv, { causal: true }).lse, heatMap.head);
  assertFlashTolerance("heat map P", heatMap.p.flat(), referenceP.flat(), naiveP.flat());
  const N = heatMap.p.length;
  heatMap.p.forEach((row, i) => {
    const sum = row.reduce((a, x) => a + x, 0);
    const seesKey = Number.isFinite(referenceLse[heatMap.head * N + i]);
    assert(seesKey ? Math.abs(sum - 1) <= 1e-5 : sum === 0, `Heat map row ${i} sums to ${sum}`);
  });

  // The picture: grey exactly where a query does not see the key, and each row brightest at its largest P (up
  // to the colour scale's 8-bit steps).
  const pixels = await page.evaluate(() => {
    const canvas = document.querySelector("canvas")!;
    return Array.from(canvas.getContext("2d")!.getImageData(0, 0, canvas.width, canvas.height).data);
  });
  assert(pixels.length === 4 * N * N, `The canvas holds ${pixels.length / 4} pixels, not ${N}²`);
  const rgb = (i: number, j: number) => pixels.slice(4 * (i * N + j), 4 * (i * N + j) + 3);
  const brightness = (i: number, j: number) => rgb(i, j).reduce((a, b) => a + b, 0);
  for (let i = 0; i < N; i++) {
    let brightest = 0;
    for (let j = 0; j < N; j++) {
      const grey = rgb(i, j).every((c) => c === 230);
      assert(grey === j > i, `Heat map cell (${i}, ${j}) is ${grey ? "" : "not "}grey`);
      if (j <= i && brightness(i, j) > brightness(i, brightest)) brightest = j;
    }
    const max = Math.max(...referenceP[i]);
    assert(
      referenceP[i][brightest] >= max - 0.02,
      `Heat map row ${i} is brightest at a P of ${referenceP[i][brightest]}, not ${max}`,
    );
  }

  mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
  console.log(
    `main thread ${results.main.milliseconds.toFixed(1)} ms, pool of ${pool.threads} Workers ` +
      `${pool.milliseconds.toFixed(1)} ms (+ ${pool.startMilliseconds.toFixed(1)} ms to start)`,
  );
  await page.close();
});

test("the browser example computes on the main thread without COOP/COEP, and says why the pool is missing", async () => {
  const { page, results } = await load({ "Cross-Origin-Embedder-Policy": "unsafe-none" });
  const plain = computed(results, "without cross-origin isolation");
  assert(!plain.crossOriginIsolated, "The page is cross-origin isolated without COEP");
  assert("error" in plain.pool, "The pool started on a page that is not cross-origin isolated");
  assert(plain.pool.error.startsWith("NotSupportedError"), `The pool failed with ${plain.pool.error}`);
  await page.close();
});

test("the browser example runs under the README's CSP, which needs both 'wasm-unsafe-eval' and worker-src blob:", async () => {
  const strict = await load({ "Content-Security-Policy": CSP });
  pooled(computed(strict.results, `under ${CSP}`), `under ${CSP}`);

  const noWasm = await load({ "Content-Security-Policy": "script-src 'self'; worker-src blob:" });
  assert("error" in noWasm.results, "The page computed without 'wasm-unsafe-eval'");
  assert(
    /WebAssembly/.test(noWasm.results.error),
    `Without 'wasm-unsafe-eval' the page failed: ${noWasm.results.error}`,
  );

  const noBlob = await load({ "Content-Security-Policy": "script-src 'self' 'wasm-unsafe-eval'" });
  const { pool } = computed(noBlob.results, "without worker-src blob:");
  assert("error" in pool, "The pool started without worker-src blob:");
  assert(
    /pool Worker.*worker-src blob:/.test(pool.error),
    `Without worker-src blob: the pool failed with ${pool.error}`,
  );
  for (const { page } of [strict, noWasm, noBlob]) await page.close();
});

test("the browser example's WebGPU switch computes the same attention on the GPU, within the tolerance", async () => {
  // SwiftShader compiles the kernel in LLVM: the first call takes about 20 s on a 2-core machine.
  const { page, results } = await load(undefined, "?webgpu", 180_000);
  const computedResults = computed(results, "with the WebGPU switch on");
  const gpu = computedResults.gpu;
  assert(gpu !== undefined, "The page did not run the GPU with ?webgpu");
  if ("error" in gpu) throw new Error(`The page's WebGPU run failed: ${gpu.error}`);
  const outputs: PageOutputs = (await page.evaluate(() => globalThis.__outputs))!;
  assert(outputs.gpu !== undefined, "The page has no GPU output");
  // The rule of the first test. The GPU's fma() may round once or twice (WGSL allows both); the baseline rounds twice,
  // as the CPU kernels do under Node, and at N = 1024 the error is that of sums over up to 1024 keys either way.
  const [q, k, v] = inputs(computedResults.problem);
  const reference = referenceAttention(q, k, v, { causal: true, returnLse: true });
  const naive = naiveAttentionF32(q, k, v, { causal: true });
  assertFlashTolerance("WebGPU O", outputs.gpu.o, reference.data, naive.data);
  assertFlashTolerance("WebGPU lse", outputs.gpu.lse, reference.lse.data, naive.lse);
  const text = await page.evaluate(() => document.getElementById("webgpu-switch")!.textContent);
  assert(text === "WebGPU: on (turn off)", `The switch reads "${text}"`);
  console.log(
    `WebGPU (${gpu.adapter}): ${gpu.milliseconds.toFixed(1)} ms, first call ${gpu.firstMilliseconds.toFixed(1)} ms`,
  );
  await page.close();
  // Without the switch the page does not touch the GPU.
  const off = await load();
  assert(computed(off.results, "with the switch off").gpu === undefined, "The page ran the GPU without ?webgpu");
  await off.page.close();
});
