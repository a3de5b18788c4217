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

/** The limits the backend reads (a GPUSupportedLimits has them all). */
export interface GpuLimits {
  readonly maxComputeWorkgroupStorageSize: number;
  readonly maxComputeInvocationsPerWorkgroup: number;
  readonly maxComputeWorkgroupSizeX: number;
  readonly maxComputeWorkgroupsPerDimension: number;
  readonly maxStorageBufferBindingSize: number;
  readonly maxBufferSize: number;
  readonly maxStorageBuffersPerShaderStage: number;
}

/** A GPUBuffer, as far as the backend uses one. */
export interface GpuBufferLike {
  readonly size: number;
  readonly usage: number;
  readonly mapState?: string;
  mapAsync(mode: number, offset?: number, size?: number): Promise<unknown>;
  getMappedRange(offset?: number, size?: number): ArrayBuffer;
  unmap(): unknown;
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

/** A GPUDevice, as far as the backend uses one. */
export interface GpuDeviceLike {
  readonly limits: GpuLimits;
  readonly features: { has(name: string): boolean };
  readonly queue: GpuQueueLike;
  readonly lost: Promise<{ readonly reason?: unknown; readonly message: string }>;
  createBuffer(descriptor: { size: number; usage: number; mappedAtCreation?: boolean; label?: string }): GpuBufferLike;
  createShaderModule(descriptor: { code: string; label?: string }): unknown;
  createComputePipelineAsync(descriptor: unknown): Promise<GpuPipelineLike>;
  createBindGroup(descriptor: unknown): unknown;
  createCommandEncoder(descriptor?: unknown): GpuEncoderLike;
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
  }): Promise<GpuDeviceLike>;
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
