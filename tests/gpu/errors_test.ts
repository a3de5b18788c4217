// Typed errors of the WebGPU backend. A bad call rejects with exactly the error the CPU build
// throws (class and message: the same validation code runs), before the GPU does anything; the
// GPU's own limits (workgroup storage, binding sizes), GPU tensors and options have their own
// typed errors; and a GPU attention that failed, or was destroyed, behaves as documented.

import { flashAttention, ShapeError } from "../../mod.ts";
import { createGpuAttention, GpuUnavailableError } from "../../src/gpu.ts";
import { BUFFER_USAGE } from "../../src/gpu/_webgpu.ts";
import { assertBitwiseEqual, assertThrows, randomTensor, rng } from "../_util.ts";
import { device, gpuAttention, gpuTest, TILINGS, upload } from "./_gpu.ts";

/** The error a promise rejects with (fails when it resolves). */
async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    return error as Error;
  }
  throw new Error("expected a rejection, but the call succeeded");
}

async function assertRejects(
  promise: Promise<unknown>,
  // deno-lint-ignore no-explicit-any
  type: abstract new (...args: any[]) => Error,
  fragment: string,
): Promise<void> {
  const error = await rejection(promise);
  if (!(error instanceof type)) throw new Error(`expected ${type.name}, got ${error}`);
  if (!error.message.includes(fragment)) throw new Error(`expected "${fragment}" in "${error.message}"`);
}

/** The suite's device behind a wrapper that counts every call that would make GPU work. */
function countingDevice(): { device: GPUDevice; calls: () => number } {
  let calls = 0;
  const counted = new Set([
    "createBuffer",
    "createShaderModule",
    "createComputePipelineAsync",
    "createBindGroup",
    "createCommandEncoder",
  ]);
  const wrapped = new Proxy(device!, {
    get(target, key) {
      const value = Reflect.get(target, key, target);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        if (counted.has(String(key))) calls++;
        return value.apply(target, args);
      };
    },
  });
  return { device: wrapped, calls: () => calls };
}

const random = rng(40);
const t = (shape: number[]) => randomTensor(random, shape);
const [q, k, v] = [t([2, 9, 4, 5]), t([2, 11, 2, 5]), t([2, 11, 2, 7])];

/** Bad calls of every kind validation knows, with what they get wrong. */
const BAD_CALLS: [string, unknown, unknown, unknown, unknown][] = [
  ["q is not a tensor", null, k, v, undefined],
  ["q.data is an Array", { data: [1, 2], shape: [1, 1, 1, 2] }, k, v, undefined],
  ["q has rank 3", t([9, 4, 5]), k, v, undefined],
  ["q.data does not match q.shape", { data: new Float32Array(7), shape: [2, 9, 4, 5] }, k, v, undefined],
  ["k's head dim differs", q, t([2, 11, 2, 6]), v, undefined],
  ["H is not a multiple of Hkv", t([2, 9, 3, 5]), k, v, undefined],
  ["a Uint16Array without dtype", { data: new Uint16Array(360), shape: [2, 9, 4, 5] }, k, v, undefined],
  ["an unknown option", q, k, v, { isCausal: true }],
  ["options is a number", q, k, v, 5],
  ["causal is a string", q, k, v, { causal: "yes" }],
  ["scale is negative", q, k, v, { scale: -1 }],
  ["softcap is NaN", q, k, v, { softcap: NaN }],
  ["windowSize is malformed", q, k, v, { windowSize: [1, -2] }],
  ["alibiSlopes has the wrong length", q, k, v, { alibiSlopes: new Float32Array(3) }],
  ["the mask does not broadcast", q, k, v, { mask: { data: new Float32Array(10), shape: [10] } }],
  ["seqLensK is out of range", q, k, v, { seqLensK: Int32Array.from([3, 12]) }],
  ["cuSeqlens do not start at 0", t([9, 4, 5]), t([11, 2, 5]), t([11, 2, 7]), {
    cuSeqlensQ: Int32Array.from([1, 9]),
    cuSeqlensK: Int32Array.from([0, 11]),
  }],
  ["seqLensK with varlen", t([9, 4, 5]), t([11, 2, 5]), t([11, 2, 7]), {
    cuSeqlensQ: Int32Array.from([0, 9]),
    cuSeqlensK: Int32Array.from([0, 11]),
    seqLensK: Int32Array.from([1]),
  }],
  ["out has the wrong length", q, k, v, { out: new Float32Array(5) }],
  ["out does not suit outDtype", q, k, v, { out: new Float32Array(2 * 9 * 4 * 7), outDtype: "bf16" }],
  ["outDtype is unknown", q, k, v, { outDtype: "f8" }],
  ["d is above 256", t([1, 2, 1, 257]), t([1, 2, 1, 257]), t([1, 2, 1, 3]), undefined],
  ["sramBytes is 0", q, k, v, { sramBytes: 0 }],
  ["sramBytes is above 8 MiB", q, k, v, { sramBytes: 9 << 20 }],
  ["returnLse is a string", q, k, v, { returnLse: "yes" }],
  ["stats is a number", q, k, v, { stats: 1 }],
  ["layout is unknown", q, k, v, { layout: "sbhd" }],
];

gpuTest(
  "GPU flashAttention() rejects every bad call with the CPU build's error, class and message, before any GPU work",
  async () => {
    const counting = countingDevice();
    const gpu = await createGpuAttention({ device: counting.device, tiling: TILINGS.small });
    for (const [what, q, k, v, options] of BAD_CALLS) {
      let cpu: Error | undefined;
      try {
        flashAttention(q as never, k as never, v as never, options as never);
      } catch (error) {
        cpu = error as Error;
      }
      if (cpu === undefined) throw new Error(`${what}: the CPU build accepted it`);
      const onGpu = await rejection(gpu.flashAttention(q as never, k as never, v as never, options as never));
      if (onGpu.constructor !== cpu.constructor || onGpu.message !== cpu.message) {
        throw new Error(
          `${what}: GPU ${onGpu.constructor.name} "${onGpu.message}", CPU ${cpu.constructor.name} "${cpu.message}"`,
        );
      }
    }
    if (counting.calls() !== 0) throw new Error(`${counting.calls()} device calls during bad calls`);
    // The wrapper does count: a valid call makes buffers.
    await gpu.flashAttention(q, k, v);
    if (counting.calls() === 0) throw new Error("the counting device saw no call");
    gpu.destroy();
  },
);

gpuTest(
  "GPU sramBytes beyond the device's workgroup storage, or too small for the head dims, is a RangeError naming it",
  async () => {
    const gpu = await gpuAttention(TILINGS.small);
    const limit = gpu.adapter.maxWorkgroupStorageBytes;
    await assertRejects(
      gpu.flashAttention(q, k, v, { sramBytes: limit + 16 }),
      RangeError,
      "maxComputeWorkgroupStorageSize",
    );
    await assertRejects(
      gpu.flashAttention(q, k, v, { sramBytes: limit + 16 }),
      RangeError,
      `sramBytes is ${limit + 16}`,
    );
    await assertRejects(
      gpu.flashAttention(q, k, v, { sramBytes: 64 }),
      RangeError,
      "too small for head dims d = 5, dv = 7",
    );
    // The largest that fits works.
    await gpu.flashAttention(q, k, v, { sramBytes: limit });
    // tiling() says the same as a call would, and checks its head dims.
    assertThrows(() => gpu.tiling(5, 7, { sramBytes: limit + 16 }), RangeError, "maxComputeWorkgroupStorageSize");
    assertThrows(() => gpu.tiling(5, 7, { sramBytes: 64 }), RangeError, "too small for head dims d = 5, dv = 7");
    assertThrows(() => gpu.tiling(5, 7, { sramBytes: 0 }), RangeError, "sramBytes must be an integer in (0,");
    assertThrows(() => gpu.tiling(0), RangeError, "d must be an integer in [1, 256]");
    assertThrows(() => gpu.tiling(5, 257), RangeError, "dv must be an integer in [1, 256]");
  },
);

gpuTest("GPU outputLocation other than cpu or gpu, or out with gpu, is a TypeError", async () => {
  const gpu = await gpuAttention(TILINGS.small);
  await assertRejects(
    gpu.flashAttention(q, k, v, { outputLocation: "disk" } as never),
    TypeError,
    'outputLocation must be "cpu" or "gpu"',
  );
  const out = new Float32Array(2 * 9 * 4 * 7);
  await assertRejects(gpu.flashAttention(q, k, v, { outputLocation: "gpu", out }), TypeError, "out cannot be combined");
});

gpuTest(
  "GPU tensors: a buffer without STORAGE, smaller than its shape, mapped, or with both data and buffer, or a bad dtype, is a typed error",
  async () => {
    const gpu = await gpuAttention(TILINGS.small);
    const copyOnly = device!.createBuffer({ size: 4 * q.data.length, usage: BUFFER_USAGE.COPY_DST });
    await assertRejects(
      gpu.flashAttention({ buffer: copyOnly, shape: q.shape }, k, v),
      TypeError,
      "q.buffer needs GPUBufferUsage.STORAGE",
    );
    copyOnly.destroy();
    const small = upload(q.data.subarray(0, 10));
    await assertRejects(
      gpu.flashAttention({ buffer: small, shape: q.shape }, k, v),
      ShapeError,
      "q.buffer must hold at least 1440 bytes",
    );
    await assertRejects(
      gpu.flashAttention({ buffer: small, shape: [2, 9, 4] }, k, v),
      ShapeError,
      "q must have rank 4",
    );
    await assertRejects(
      gpu.flashAttention({ buffer: small, shape: q.shape, dtype: "f64" } as never, k, v),
      TypeError,
      'q.dtype must be "f32", "f16" or "bf16"',
    );
    await assertRejects(
      gpu.flashAttention({ buffer: small, data: q.data, shape: q.shape } as never, k, v),
      TypeError,
      "q has both data and buffer",
    );
    small.destroy();
    const mapped = device!.createBuffer({
      size: 4 * q.data.length,
      usage: BUFFER_USAGE.STORAGE,
      mappedAtCreation: true,
    });
    await assertRejects(gpu.flashAttention({ buffer: mapped, shape: q.shape }, k, v), TypeError, "must be unmapped");
    mapped.destroy();
    await assertRejects(
      gpu.flashAttention({ buffer: {}, shape: q.shape } as never, k, v),
      TypeError,
      "q.buffer must be a GPUBuffer",
    );
  },
);

gpuTest("GPU tensors too large for the device's bindings are a RangeError, before any buffer is made", async () => {
  const counting = countingDevice();
  const gpu = await createGpuAttention({ device: counting.device, tiling: TILINGS.small });
  const limit = device!.limits.maxStorageBufferBindingSize;
  // q as a GPU tensor (a stand-in buffer: it is never bound) whose output O needs limit + 4 bytes.
  const N = limit / 4 + 1;
  const fake = { size: 4 * N, usage: BUFFER_USAGE.STORAGE, mapState: "unmapped" } as unknown as GPUBuffer;
  const one = t([1, 1, 1, 1]);
  await assertRejects(
    gpu.flashAttention({ buffer: fake, shape: [1, N, 1, 1] }, one, one),
    RangeError,
    "the output needs a GPU buffer",
  );
  if (counting.calls() !== 0) throw new Error(`${counting.calls()} device calls`);
  gpu.destroy();
});

gpuTest(
  "createGpuAttention() rejects unknown or malformed options, and where there is no WebGPU, with typed errors",
  async () => {
    const create = (options: unknown) => createGpuAttention(options as never);
    await assertRejects(create({ devise: device }), TypeError, 'unknown key "devise"');
    await assertRejects(create({ device: 5 }), TypeError, "device must be a GPUDevice");
    await assertRejects(create({ powerPreference: "fast" }), TypeError, "powerPreference");
    await assertRejects(
      create({ device, tiling: { threadsPerRow: 3 } }),
      RangeError,
      "threadsPerRow must be 1, 2, 4, 8 or 16",
    );
    await assertRejects(create({ device, tiling: { rowsPerWorkgroup: 4 } }), RangeError, "rowsPerWorkgroup");
    await assertRejects(create({ device, tiling: { keysPerTile: 2, threadsPerRow: 4 } }), RangeError, "keysPerTile");
    await assertRejects(create({ device, tiling: { rows: 8 } }), TypeError, 'tiling has an unknown key "rows"');
    // A runtime without navigator.gpu (as Node 20 or Bun): the global is hidden for the call.
    const saved = Object.getOwnPropertyDescriptor(globalThis, "navigator");
    Object.defineProperty(globalThis, "navigator", { value: {}, configurable: true });
    try {
      await assertRejects(createGpuAttention(), GpuUnavailableError, "no navigator.gpu");
    } finally {
      Object.defineProperty(globalThis, "navigator", saved!);
    }
    // An adapter that is not there.
    const none = { gpu: { requestAdapter: () => Promise.resolve(null) } };
    Object.defineProperty(globalThis, "navigator", { value: none, configurable: true });
    try {
      await assertRejects(createGpuAttention(), GpuUnavailableError, "found no adapter");
    } finally {
      Object.defineProperty(globalThis, "navigator", saved!);
    }
  },
);

gpuTest(
  "a destroyed GPU attention rejects with GpuUnavailableError and leaves a device it was given alive",
  async () => {
    const gpu = await createGpuAttention({ device: device!, tiling: TILINGS.small });
    const before = await gpu.flashAttention(q, k, v);
    gpu.destroy();
    await assertRejects(gpu.flashAttention(q, k, v), GpuUnavailableError, "destroyed");
    const other = await gpuAttention(TILINGS.small);
    const after = await other.flashAttention(q, k, v);
    assertBitwiseEqual("another GPU attention on the same device", after.data, before.data);
  },
);

gpuTest("after every kind of failed call the GPU attention computes the same bits as before", async () => {
  const gpu = await gpuAttention(TILINGS.small);
  const first = await gpu.flashAttention(q, k, v, { causal: true, returnLse: true });
  for (const [, bq, bk, bv, options] of BAD_CALLS) {
    await rejection(gpu.flashAttention(bq as never, bk as never, bv as never, options as never));
  }
  await rejection(gpu.flashAttention(q, k, v, { sramBytes: 64 }));
  const again = await gpu.flashAttention(q, k, v, { causal: true, returnLse: true });
  assertBitwiseEqual("O", again.data, first.data);
  assertBitwiseEqual("lse", again.lse.data, first.lse.data);
});

gpuTest("a GPU attention whose device is lost rejects with GpuUnavailableError naming the loss", async () => {
  const adapter = await navigator.gpu.requestAdapter();
  const other = await adapter!.requestDevice();
  const gpu = await createGpuAttention({ device: other, tiling: TILINGS.small });
  await gpu.flashAttention(q, k, v);
  other.destroy();
  await other.lost;
  await assertRejects(gpu.flashAttention(q, k, v), GpuUnavailableError, "the device was lost");
});
