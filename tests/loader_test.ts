// The embedded modules and init(): the two SIMD builds and how one is chosen.

import { WASM_BASE64, WASM_SHA256 } from "../src/wasm/kernels.generated.ts";
import { createLoader, embeddedWasm, init, type Kernels, relaxedSimdValidates } from "../src/wasm/loader.ts";
import { flashAttention, type Tensor } from "../mod.ts";
import { referenceForward } from "../src/_reference.ts";
import { attend, prepare } from "../src/_run.ts";
import { validateCall, validateForwardCall } from "../src/_validate.ts";
import { assertFlashTolerance, randomTensor, rng, test } from "./_util.ts";

test("the embedded module's bytes have the SHA-256 recorded in its header", async () => {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", embeddedWasm()));
  const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  if (hex !== WASM_SHA256) throw new Error(`sha256 ${hex} ≠ ${WASM_SHA256}`);
  if (!WebAssembly.validate(embeddedWasm())) throw new Error("the embedded bytes are not a valid module");
  if (WASM_BASE64.length === 0) throw new Error("empty module");
});

test("init() accepts nothing, bytes or a compiled WebAssembly.Module", async () => {
  await init();
  const fromBytes = createLoader();
  await fromBytes.init(embeddedWasm());
  if (fromBytes.loadKernels().headDimMax() !== 256) throw new Error("kernels from bytes not ready");
  const fromModule = createLoader();
  await fromModule.init(await WebAssembly.compile(embeddedWasm()));
  if (fromModule.loadKernels().headDimMax() !== 256) throw new Error("kernels from a Module not ready");
});

test("init() rejects bytes that are not the kernels, and the embedded module still loads after", async () => {
  const loader = createLoader();
  let rejected = false;
  try {
    await loader.init(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0])); // an empty but valid module
  } catch (error) {
    rejected = error instanceof TypeError && error.message.includes("does not export");
  }
  if (!rejected) throw new Error("a module without the kernels was accepted");
  try {
    await loader.init(new Uint8Array([1, 2, 3]));
    rejected = false;
  } catch (error) {
    rejected = error instanceof WebAssembly.CompileError;
  }
  if (!rejected) throw new Error("invalid bytes were accepted");
  if (loader.loadKernels().headDimMax() !== 256) throw new Error("fallback to the embedded module failed");
});

test("init() rejects a source that is neither bytes, a module nor options with a TypeError naming it (found by the fuzzer)", async () => {
  for (
    const [source, described] of [["wasm", "string"], [5, "number"], [null, "null"], [[0, 97], "an object (Array)"]]
  ) {
    const loader = createLoader();
    let caught: unknown;
    try {
      await loader.init(source as never);
    } catch (error) {
      caught = error;
    }
    if (!(caught instanceof TypeError) || !caught.message.includes(`source must be the module's bytes`)) {
      throw new Error(`${described}: ${String(caught)}`);
    }
    if (!caught.message.endsWith(`source is ${described}`)) throw new Error(caught.message);
    if (loader.loadKernels().headDimMax() !== 256) {
      throw new Error(
        `${described}: the embedded module did not load after`,
      );
    }
  }
  // Options made with Object.create(null) are options too.
  const info = await createLoader().init(Object.assign(Object.create(null), { simd: "baseline" }));
  if (info.simd !== "baseline") throw new Error(`options without a prototype: ${info.simd}`);
});

test("flashAttention() works without init() (synchronous compilation on first use)", () => {
  const t = randomTensor(rng(1), [1, 4, 1, 4]);
  const o = flashAttention(t, t, t);
  if (o.data.some((x) => !Number.isFinite(x))) throw new Error("non-finite output");
});

// ── The two SIMD builds ──────────────────────────────────────────────────────────────────────────

/** flashAttention's synchronous path run on the given kernels (not the package's). */
function forwardOn(kernels: Kernels, q: Tensor, k: Tensor, v: Tensor, options: { causal?: boolean } = {}) {
  return attend(prepare(validateForwardCall(q, k, v, options), kernels));
}

test("init() options: simd is checked, and a build other than the running one is refused", async () => {
  const loader = createLoader();
  await assertRejects(() => loader.init({ simd: "fast" } as never), TypeError, 'simd must be "auto", "baseline" or');
  await assertRejects(() => loader.init({ threads: 2 } as never), TypeError, 'unknown key "threads"');
  const { simd } = await loader.init({ simd: "baseline" });
  if (simd !== "baseline" || loader.loadKernels().simd !== "baseline") throw new Error(`asked baseline, got ${simd}`);
  if (loader.loadKernels().fusedMultiplyAdd) throw new Error("the baseline build claims fused multiply-adds");
  if ((await loader.init()).simd !== "baseline") throw new Error("init() again did not report the running build");
  if (relaxedSimdValidates()) {
    await assertRejects(() => loader.init({ simd: "relaxed" }), Error, "the baseline build already runs");
  }
});

test("where relaxed SIMD does not validate, asking for it fails and names the flag; where it does, auto picks it if fused", async () => {
  if (!relaxedSimdValidates()) {
    await assertRejects(() => createLoader().init({ simd: "relaxed" }), Error, "--experimental-wasm-relaxed-simd");
    const auto = await createLoader().init();
    if (auto.simd !== "baseline") throw new Error(`auto chose ${auto.simd} without relaxed SIMD`);
    return;
  }
  const relaxed = createLoader();
  if ((await relaxed.init({ simd: "relaxed" })).simd !== "relaxed") throw new Error("relaxed not chosen");
  const fused = relaxed.loadKernels().fusedMultiplyAdd;
  const auto = await createLoader().init();
  if (auto.simd !== (fused ? "relaxed" : "baseline")) {
    throw new Error(`auto chose ${auto.simd} on an engine whose relaxed madd is ${fused ? "" : "not "}fused`);
  }
});

test("the relaxed build: within the f32 rule of the reference, the same bits on every call, other bits than the baseline where fused", async () => {
  if (!relaxedSimdValidates()) {
    // Node 20 without --experimental-wasm-relaxed-simd: npm test runs this file again with the flag.
    await assertRejects(() => createLoader().init({ simd: "relaxed" }), Error, "does not validate relaxed SIMD");
    return;
  }
  const relaxedLoader = createLoader();
  await relaxedLoader.init({ simd: "relaxed" });
  const baselineLoader = createLoader();
  await baselineLoader.init({ simd: "baseline" });
  const relaxed = relaxedLoader.loadKernels();
  const baseline = baselineLoader.loadKernels();
  const random = rng(12);
  const [B, N, H, d] = [1, 300, 2, 64];
  const q = randomTensor(random, [B, N, H, d]), k = randomTensor(random, [B, N, H, d]);
  const v = randomTensor(random, [B, N, H, d]);
  for (const causal of [false, true]) {
    const first = forwardOn(relaxed, q, k, v, { causal });
    const problem = validateCall(q, k, v, { causal });
    const reference = referenceForward(problem, (x) => x);
    const naive = referenceForward(problem, Math.fround, relaxed.fusedMultiplyAdd);
    assertFlashTolerance(`relaxed O (causal ${causal})`, first.data, reference.o, naive.o);
    // Called again until the engine has surely tiered the kernels up: the same bits every time.
    for (let call = 0; call < 30; call++) {
      const again = forwardOn(relaxed, q, k, v, { causal });
      if (!again.data.every((x, i) => Object.is(x, first.data[i]))) {
        throw new Error(`call ${call + 2} changed the bits`);
      }
    }
    const base = forwardOn(baseline, q, k, v, { causal });
    const differs = base.data.some((x, i) => !Object.is(x, first.data[i]));
    if (differs !== relaxed.fusedMultiplyAdd) {
      throw new Error(
        `the relaxed build's bits ${differs ? "differ from" : "equal"} the baseline's, ` +
          `with multiply-adds ${relaxed.fusedMultiplyAdd ? "" : "not "}fused`,
      );
    }
  }
});

/** Resolves unless `run` rejects with an instance of `type` whose message contains `fragment`. */
async function assertRejects(
  run: () => Promise<unknown>,
  type: new (...args: never[]) => Error,
  fragment: string,
): Promise<void> {
  try {
    await run();
  } catch (error) {
    if (error instanceof type && error.message.includes(fragment)) return;
    throw new Error(`expected ${type.name} with "${fragment}", got ${String(error)}`);
  }
  throw new Error(`expected ${type.name} with "${fragment}", but it resolved`);
}
