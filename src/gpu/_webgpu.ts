// The part of WebGPU the GPU backend touches, declared structurally (as loader.ts declares
// WasmMemory): TypeScript's DOM lib has no WebGPU types, and the package's declarations must
// type-check without @webgpu/types. A real GPUDevice, GPUBuffer, ... fits these interfaces.
// The numeric flags are the WebGPU specification's values. A leaf: imports nothing.

/** GPUBufferUsage flags (WebGPU §5.1). */
export const BUFFER_USAGE = {
  MAP_READ: 0x0001,
  COPY_SRC: 0x0004,
  COPY_DST: 0x0008,
  UNIFORM: 0x0040,
  STORAGE: 0x0080,
  QUERY_RESOLVE: 0x0200,
} as const;

/** GPUMapMode.READ. */
export const MAP_READ = 0x0001;

/**
 * The limits of a GPUDevice that the GPU backend reads (a GPUSupportedLimits has them all).
 * Described by its members, like {@linkcode GpuDeviceLike}, so the types need no WebGPU lib.
 */
export interface GpuLimits {
  /** Bytes of workgroup memory per workgroup: the largest `sramBytes`. */
  readonly maxComputeWorkgroupStorageSize: number;
  /** Threads per workgroup. */
  readonly maxComputeInvocationsPerWorkgroup: number;
  /** Threads along x per workgroup. */
  readonly maxComputeWorkgroupSizeX: number;
  /** Workgroups per dispatch dimension. */
  readonly maxComputeWorkgroupsPerDimension: number;
  /** Bytes of one storage-buffer binding: the largest tensor. */
  readonly maxStorageBufferBindingSize: number;
  /** Bytes of one buffer. */
  readonly maxBufferSize: number;
  /** Storage buffers one shader may bind (the kernel binds 8). */
  readonly maxStorageBuffersPerShaderStage: number;
}

/**
 * The limits a device is requested with (the adapter's own maximum of each; a new device's defaults
 * are lower): by createGpuAttention, and by bench/gpu.ts for its own device.
 */
export const REQUESTED_LIMITS = [
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxStorageBuffersPerShaderStage",
] as const satisfies readonly (keyof GpuLimits)[];

/** A GPUBuffer, described by the members the GPU backend uses: any GPUBuffer fits. */
export interface GpuBufferLike {
  /** Its size in bytes. */
  readonly size: number;
  /** Its GPUBufferUsage flags. */
  readonly usage: number;
  /** "unmapped", "pending" or "mapped". */
  readonly mapState?: string;
  /** Maps it for reading or writing. */
  mapAsync(mode: number, offset?: number, size?: number): Promise<unknown>;
  /** The mapped bytes. */
  getMappedRange(offset?: number, size?: number): ArrayBuffer;
  /** Ends a mapping. */
  unmap(): unknown;
  /** Frees its memory. */
  destroy(): unknown;
}

/**
 * A GPUDevice, described by a few of its members, so that the package's types need no WebGPU
 * lib (TypeScript's DOM lib has none): any GPUDevice fits.
 */
export interface GpuDeviceLike {
  /** Its limits. */
  readonly limits: GpuLimits;
  /** Its queue. */
  readonly queue: unknown;
  /** Makes a buffer (its return type types the GPU backend's output buffers). */
  createBuffer(descriptor: { size: number; usage: number; mappedAtCreation?: boolean; label?: string }): GpuBufferLike;
  /** Destroys the device and every buffer made on it. */
  destroy(): unknown;
}

/** A GPUComputePipeline. */
export interface GpuPipelineLike {
  getBindGroupLayout(index: number): unknown;
}

/** A GPUComputePassEncoder. */
export interface GpuComputePassLike {
  setPipeline(pipeline: unknown): unknown;
  setBindGroup(index: number, group: unknown): unknown;
  dispatchWorkgroups(x: number, y?: number, z?: number): unknown;
  end(): unknown;
}

/** A GPUCommandEncoder. */
export interface GpuEncoderLike {
  beginComputePass(descriptor?: unknown): GpuComputePassLike;
  copyBufferToBuffer(
    source: unknown,
    sourceOffset: number,
    destination: unknown,
    destinationOffset: number,
    size: number,
  ): unknown;
  resolveQuerySet?(querySet: unknown, first: number, count: number, destination: unknown, offset: number): unknown;
  finish(): unknown;
}

/** A GPUQueue. */
export interface GpuQueueLike {
  writeBuffer(buffer: unknown, offset: number, data: unknown, dataOffset?: number, size?: number): unknown;
  submit(commandBuffers: unknown[]): unknown;
  onSubmittedWorkDone(): Promise<unknown>;
}

/** A GPUError from an error scope. */
export interface GpuErrorLike {
  readonly message: string;
}

/** A GPUDevice, as far as the backend uses one (internal: the public type is GpuDeviceLike). */
export interface GpuDevice extends GpuDeviceLike {
  readonly limits: GpuLimits;
  readonly features: { has(name: string): boolean };
  readonly queue: GpuQueueLike;
  readonly lost: Promise<{ readonly reason?: unknown; readonly message: string }>;
  createBuffer(descriptor: { size: number; usage: number; mappedAtCreation?: boolean; label?: string }): GpuBufferLike;
  createShaderModule(descriptor: { code: string; label?: string }): unknown;
  createComputePipelineAsync(descriptor: unknown): Promise<GpuPipelineLike>;
  createBindGroup(descriptor: unknown): unknown;
  createCommandEncoder(descriptor?: unknown): GpuEncoderLike;
  createQuerySet?(descriptor: { type: "timestamp"; count: number }): { destroy(): unknown };
  pushErrorScope(filter: "validation" | "out-of-memory" | "internal"): unknown;
  popErrorScope(): Promise<GpuErrorLike | null>;
  destroy(): unknown;
}

/** What an adapter says about itself (GPUAdapterInfo). */
export interface GpuAdapterInfoLike {
  readonly vendor?: string;
  readonly architecture?: string;
  readonly device?: string;
  readonly description?: string;
  readonly isFallbackAdapter?: boolean;
}

/** A GPUAdapter. */
export interface GpuAdapterLike {
  readonly limits: GpuLimits;
  readonly features: { has(name: string): boolean };
  readonly info?: GpuAdapterInfoLike;
  readonly isFallbackAdapter?: boolean;
  requestDevice(descriptor?: {
    requiredLimits?: Record<string, number>;
    requiredFeatures?: string[];
    label?: string;
  }): Promise<GpuDevice>;
}

/** navigator.gpu. */
export interface GpuLike {
  requestAdapter(options?: { powerPreference?: "low-power" | "high-performance" }): Promise<GpuAdapterLike | null>;
}

/** The runtime's navigator.gpu, or undefined where it has none (Node 20, Bun, workerd). */
export function navigatorGpu(): GpuLike | undefined {
  const navigator = (globalThis as { navigator?: { gpu?: GpuLike } }).navigator;
  return navigator?.gpu ?? undefined;
}
