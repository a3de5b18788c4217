// The embedded module and init().

import { WASM_BASE64, WASM_SHA256 } from "../src/wasm/kernels.generated.ts";
import { createLoader, embeddedWasm, init } from "../src/wasm/loader.ts";
import { flashAttention } from "../mod.ts";
import { randomTensor, rng, test } from "./_util.ts";

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

test("flashAttention() works without init() (synchronous compilation on first use)", () => {
  const t = randomTensor(rng(1), [1, 4, 1, 4]);
  const o = flashAttention(t, t, t);
  if (o.data.some((x) => !Number.isFinite(x))) throw new Error("non-finite output");
});
