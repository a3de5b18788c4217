// Determinism across runtimes. The baseline build (loaded explicitly, whatever init() would pick:
// Deno picks the relaxed build) runs a fixed set of calls through the library's own synchronous
// paths, and this file writes the SHA-256 of every output array to .scratch/digest-<runtime>.json.
// npm test (_tools/test.ts) runs it under Node, Deno and Bun, then fails unless the three files
// hold the same digests. The relaxed build, whose bits may differ between engines (fused or not),
// is checked within itself: the whole set twice in the same runtime, the same digests.

import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { InputTensor, Tensor } from "../mod.ts";
import { runBackwardSync } from "../src/_backward_run.ts";
import { convertInto } from "../src/_half.ts";
import { attend, prepare } from "../src/_run.ts";
import { validateBackwardCall, validateForwardCall, validateKvCacheCall } from "../src/_validate.ts";
import { createLoader, type Kernels, relaxedSimdValidates } from "../src/wasm/loader.ts";
import { makeMask, randomTensor, rng, test } from "./_util.ts";

type Arrays = Record<string, Float32Array | Uint16Array>;

/** A half-precision copy of a tensor (rounded to nearest even). */
function half(t: Tensor, dtype: "f16" | "bf16"): InputTensor {
  const data = new Uint16Array(t.data.length);
  convertInto(data, dtype, 0, t.data, "f32", 0, t.data.length);
  return { data, shape: t.shape, dtype };
}

/** The fixed calls, each run on `kernels` through the path the public function takes. */
function calls(kernels: Kernels): [string, Arrays][] {
  const random = rng(2024);
  const forward = (q: InputTensor, k: InputTensor, v: InputTensor, options: object): Arrays => {
    const o = attend(prepare(validateForwardCall(q, k, v, options as never), kernels));
    return o.lse ? { o: o.data, lse: o.lse.data } : { o: o.data };
  };
  const [B, N, H, Hkv, d] = [2, 77, 4, 2, 24];
  const q = randomTensor(random, [B, N, H, d]);
  const k = randomTensor(random, [B, N + 9, Hkv, d]);
  const v = randomTensor(random, [B, N + 9, Hkv, d]);
  const kFull = randomTensor(random, [B, N + 9, H, d]);
  const vFull = randomTensor(random, [B, N + 9, H, d]);
  const lse = { returnLse: true };
  const out: [string, Arrays][] = [
    ["forward", forward(q, kFull, vFull, lse)],
    ["causal", forward(q, kFull, vFull, { ...lse, causal: true })],
    [
      "causal top-left, bhsd",
      forward(
        { data: q.data, shape: [B, H, N, d] },
        { data: kFull.data, shape: [B, H, N + 9, d] },
        { data: vFull.data, shape: [B, H, N + 9, d] },
        { ...lse, causal: "top-left", layout: "bhsd" },
      ),
    ],
    ["window, GQA", forward(q, k, v, { ...lse, windowSize: [13, 5] })],
    [
      "ALiBi, softcap",
      forward(q, k, v, { ...lse, alibiSlopes: Float32Array.of(0.5, 0.25, 0.125, 0.0625), softcap: 7 }),
    ],
    [
      "f32 mask",
      forward(q, k, v, {
        ...lse,
        mask: makeMask(random, { kind: "f32", rank: 4, keep: [true, true, true, true], blocked: 0.2 }, [
          B,
          H,
          N,
          N + 9,
        ]),
      }),
    ],
    [
      "u8 mask, causal",
      forward(q, k, v, {
        ...lse,
        causal: true,
        mask: makeMask(random, { kind: "u8", rank: 2, keep: [false, false, true, true], blocked: 0.3 }, [
          B,
          H,
          N,
          N + 9,
        ]),
      }),
    ],
    ["logits near ±1e4", forward(q, k, v, { ...lse, scale: 300 })],
  ];
  // Varlen: three sequences packed along one axis, one of them empty.
  const qPacked = randomTensor(random, [90, H, d]);
  const kPacked = randomTensor(random, [110, Hkv, d]);
  const vPacked = randomTensor(random, [110, Hkv, d]);
  out.push([
    "varlen, causal",
    forward(qPacked, kPacked, vPacked, {
      ...lse,
      causal: true,
      cuSeqlensQ: Int32Array.of(0, 40, 40, 90),
      cuSeqlensK: Int32Array.of(0, 50, 60, 110),
    }),
  ]);
  // 16-bit inputs and outputs.
  for (const dtype of ["f16", "bf16"] as const) {
    out.push([
      `${dtype} in, f32 out`,
      forward(half(q, dtype), half(k, dtype), half(v, dtype), { ...lse, causal: true }),
    ]);
    out.push([`f32 in, ${dtype} out`, forward(q, k, v, { ...lse, outDtype: dtype })]);
  }
  // A KV-cache decode step with new rows (the updated caches are digested too), and split-KV.
  const maxLen = 200;
  const kCache = randomTensor(random, [B, maxLen, Hkv, d]);
  const vCache = randomTensor(random, [B, maxLen, Hkv, d]);
  const qStep = randomTensor(random, [B, 1, H, d]);
  const decode = (options: object): Arrays => {
    const o = attend(prepare(validateKvCacheCall(qStep, kCache, vCache, options as never), kernels));
    return { o: o.data, kCache: kCache.data.slice(), vCache: vCache.data.slice() };
  };
  out.push([
    "KV-cache decode with kNew",
    decode({
      cacheSeqLens: Int32Array.of(150, 97),
      kNew: randomTensor(random, [B, 1, Hkv, d]),
      vNew: randomTensor(random, [B, 1, Hkv, d]),
      numSplits: 1,
    }),
  ]);
  out.push(["split-KV decode (4 splits)", decode({ cacheSeqLens: Int32Array.of(190, 160), numSplits: 4 })]);
  out.push(["split-KV decode (auto)", decode({ cacheSeqLens: Int32Array.of(200, 7) })]);
  // The backward: dq, dk, dv of a causal GQA call with its forward's lse.
  const fwd = attend(prepare(validateForwardCall(q, k, v, { causal: true, returnLse: true }), kernels));
  const dOut = randomTensor(random, [B, N, H, d]);
  const backward = (dtype?: "bf16"): Arrays => {
    const args = dtype ? [half(q, dtype), half(k, dtype), half(v, dtype)] : [q, k, v];
    const grads = runBackwardSync(
      validateBackwardCall(args[0], args[1], args[2], fwd, dOut, { causal: true }),
      kernels,
    );
    return { dq: grads.dq.data, dk: grads.dk.data, dv: grads.dv.data };
  };
  out.push(["backward, causal, GQA", backward()]);
  out.push(["backward, bf16 inputs", backward("bf16")]);
  return out;
}

function sha256(data: Float32Array | Uint16Array): string {
  return createHash("sha256").update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength)).digest("hex");
}

/** Per call and output array, the SHA-256 of its bytes. */
function digests(kernels: Kernels): Record<string, string> {
  const result: Record<string, string> = {};
  for (const [name, arrays] of calls(kernels)) {
    for (const [what, data] of Object.entries(arrays)) result[`${name}: ${what}`] = sha256(data);
  }
  return result;
}

function diff(a: Record<string, string>, b: Record<string, string>): string[] {
  return [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((key) => a[key] !== b[key]);
}

// deno-lint-ignore no-explicit-any
const platform = globalThis as any;
const runtime = platform.Deno ? "deno" : platform.Bun ? "bun" : "node";

test(`the baseline build's digest of a fixed set of calls is written for this runtime (${runtime}) and repeats`, async () => {
  const loader = createLoader();
  await loader.init({ simd: "baseline" });
  const kernels = loader.loadKernels();
  if (kernels.simd !== "baseline") throw new Error(`asked for the baseline build, got ${kernels.simd}`);
  const first = digests(kernels);
  const again = diff(first, digests(kernels));
  if (again.length > 0) throw new Error(`the baseline build changed its bits on a second run: ${again.join("; ")}`);
  const folder = fileURLToPath(new URL("../.scratch/", import.meta.url));
  mkdirSync(folder, { recursive: true });
  writeFileSync(
    `${folder}digest-${runtime}.json`,
    JSON.stringify({ runtime, build: "baseline", digests: first }, null, 1),
  );
});

test("the relaxed build's digest of the same calls repeats within this runtime", async () => {
  if (!relaxedSimdValidates()) return; // Node 20 without --experimental-wasm-relaxed-simd
  const loader = createLoader();
  await loader.init({ simd: "relaxed" });
  const kernels = loader.loadKernels();
  const first = digests(kernels);
  for (let run = 2; run <= 3; run++) {
    const changed = diff(first, digests(kernels));
    if (changed.length > 0) throw new Error(`run ${run} of the relaxed build changed: ${changed.join("; ")}`);
  }
});

test("the digest tells builds apart where their bits differ, and one flipped bit changes it", async () => {
  const a = Float32Array.of(1, 2, 3);
  const b = a.slice();
  new Uint32Array(b.buffer)[1] ^= 1;
  if (sha256(a) === sha256(b)) throw new Error("one flipped bit kept the digest");
  if (!relaxedSimdValidates()) return;
  const relaxed = createLoader();
  await relaxed.init({ simd: "relaxed" });
  const baseline = createLoader();
  await baseline.init({ simd: "baseline" });
  const differs = diff(digests(relaxed.loadKernels()), digests(baseline.loadKernels())).length > 0;
  if (differs !== relaxed.loadKernels().fusedMultiplyAdd) {
    throw new Error(
      `the builds' digests ${differs ? "differ" : "agree"} with multiply-adds ${differs ? "not " : ""}fused`,
    );
  }
});
