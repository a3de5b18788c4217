// GPU buffers in and out: tensors already on the device give the bits of the same tensors from
// host arrays, an output kept on the device holds the bits the host would get and feeds the next
// call as it is, inputs are never written, and the caller owns what is returned.

import type { Tensor } from "../../mod.ts";
import { createGpuAttention } from "../../src/gpu.ts";
import { assertBitwiseEqual, randomTensor, rng } from "../_util.ts";
import { device, download, gpuAttention, gpuTest, TILINGS, upload } from "./_gpu.ts";

const random = rng(50);
const [B, Nq, Nk, H, Hkv, d, dv] = [2, 29, 41, 4, 2, 5, 7];
const q = randomTensor(random, [B, Nq, H, d]);
const k = randomTensor(random, [B, Nk, Hkv, d]);
const v = randomTensor(random, [B, Nk, Hkv, dv]);

gpuTest(
  "GPU tensors as inputs give the bits of the same tensors from host arrays, alone or mixed with host ones",
  async () => {
    const gpu = await gpuAttention(TILINGS.small);
    const onGpu = (x: Tensor) => ({ buffer: upload(x.data), shape: x.shape });
    const [gq, gk, gv] = [onGpu(q), onGpu(k), onGpu(v)];
    const options = { causal: true, returnLse: true, windowSize: [7, -1] } as const;
    const host = await gpu.flashAttention(q, k, v, options);
    for (const [what, a, b, c] of [["all", gq, gk, gv], ["q only", gq, k, v], ["k and v", q, gk, gv]] as const) {
      const o = await gpu.flashAttention(a, b, c, options);
      assertBitwiseEqual(`O, ${what} on the GPU`, o.data, host.data);
      assertBitwiseEqual(`lse, ${what} on the GPU`, o.lse.data, host.lse.data);
    }
    // Inputs are read, never written.
    for (const [name, g, x] of [["q", gq, q], ["k", gk, k], ["v", gv, v]] as const) {
      assertBitwiseEqual(`${name} after the calls`, new Float32Array(await download(g.buffer)), x.data);
      g.buffer.destroy();
    }
  },
);

gpuTest(
  'outputLocation "gpu" leaves O and lse on the device with the host result\'s bits, shape and dtype',
  async () => {
    const gpu = await gpuAttention(TILINGS.small);
    for (const outDtype of ["f32", "bf16"] as const) {
      const host = await gpu.flashAttention(q, k, v, { returnLse: true, outDtype });
      const o = await gpu.flashAttention(q, k, v, { returnLse: true, outDtype, outputLocation: "gpu" });
      if (o.shape.join() !== host.shape.join() || o.dtype !== outDtype) throw new Error(`${o.shape} ${o.dtype}`);
      if (o.lse?.shape.join() !== host.lse.shape.join() || o.lse.dtype !== "f32") throw new Error("lse");
      const n = B * Nq * H * dv;
      const bytes = await download(o.buffer);
      const data = outDtype === "f32" ? new Float32Array(bytes, 0, n) : new Uint16Array(bytes, 0, n);
      assertBitwiseEqual(`O (${outDtype})`, data, host.data as Float32Array | Uint16Array);
      assertBitwiseEqual("lse", new Float32Array(await download(o.lse.buffer), 0, B * H * Nq), host.lse.data);
      o.buffer.destroy();
      o.lse.buffer.destroy();
    }
    const noLse = await gpu.flashAttention(q, k, v, { outputLocation: "gpu" });
    if (noLse.lse !== undefined) throw new Error("an lse buffer without returnLse");
    noLse.buffer.destroy();
  },
);

gpuTest(
  "an output left on the device feeds the next call as it is (a two-layer chain never touches the host)",
  async () => {
    const gpu = await gpuAttention(TILINGS.small);
    // Layer 1: x = attention(q, k, v) with dv = d; layer 2: attention(x, k, v).
    const v5 = randomTensor(random, [B, Nk, Hkv, d]);
    const x = await gpu.flashAttention(q, k, v5, { causal: true, outputLocation: "gpu" });
    const chained = await gpu.flashAttention(x, k, v5, { causal: true });
    const hostX = await gpu.flashAttention(q, k, v5, { causal: true });
    const host = await gpu.flashAttention(hostX, k, v5, { causal: true });
    assertBitwiseEqual("chained O", chained.data, host.data);
    // bf16 activations chain too: the output buffer is a bf16 GPU tensor.
    const x16 = await gpu.flashAttention(q, k, v5, { outDtype: "bf16", outputLocation: "gpu" });
    if (x16.dtype !== "bf16") throw new Error(`dtype ${x16.dtype}`);
    const chained16 = await gpu.flashAttention(x16, k, v5);
    const host16 = await gpu.flashAttention(q, k, v5, { outDtype: "bf16" });
    const again = await gpu.flashAttention(
      { data: host16.data as Uint16Array, shape: host16.shape, dtype: "bf16" },
      k,
      v5,
    );
    assertBitwiseEqual("chained bf16", chained16.data, again.data);
    x.buffer.destroy();
    x16.buffer.destroy();
  },
);

gpuTest(
  "returned buffers belong to the caller: destroy() of a GPU attention on a given device leaves them readable",
  async () => {
    const gpu = await createGpuAttention({ device: device!, tiling: TILINGS.small });
    const host = await gpu.flashAttention(q, k, v);
    const o = await gpu.flashAttention(q, k, v, { outputLocation: "gpu", stats: true });
    gpu.destroy();
    const data = new Float32Array(await download(o.buffer), 0, host.data.length);
    assertBitwiseEqual("O after destroy()", data, host.data as Float32Array);
    if (o.stats === undefined || o.stats.written.o !== 4 * host.data.length) throw new Error("stats");
    o.buffer.destroy();
  },
);
