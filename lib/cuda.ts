/**
 * The little CUDA a KV transfer needs around it, with no PyTorch: device
 * memory to register as `vram`, filling it and reading it back, a checksum
 * computed on the device, and timed device-to-device copies (the baseline of
 * `kvxfer bench --mem vram`). The `kvxfer/cuda` entry of the package.
 *
 * ```ts
 * import { Agent } from 'kvxfer';
 * import * as cuda from 'kvxfer/cuda';
 *
 * if (cuda.deviceCount() > 0) {
 *   const pointer = cuda.malloc(0, 64 << 20);
 *   const region = await agent.register({ kind: 'vram', address: pointer, length: 64 << 20, device: 0 });
 *   // ... transfers ...
 *   await region.deregister();
 *   cuda.free(pointer);
 * }
 * ```
 *
 * CUDA's runtime (libcudart) is loaded at run time, from `KVXFER_CUDART` when
 * set, else by its usual names on the loader path and under /usr/local/cuda:
 * kvxfer itself is built without CUDA. On a machine without a GPU (or without
 * NVIDIA's driver) this module loads, {@link status} says why there is no
 * device and {@link deviceCount} is 0; the other functions throw a
 * `KvxferError` `ERR_ENGINE` saying the same.
 *
 * Every function is synchronous: it blocks the calling thread until CUDA has
 * finished. It is meant for tests, benchmarks and setting up pools, not for
 * the path of a transfer. Pointers are process-wide (CUDA's own), given and
 * taken as `bigint` (a `number` is accepted where it is exact).
 *
 * @module kvxfer/cuda
 */
import { binding, type NativeCuda } from './native';
import { invalidArg } from './errors';

/** A device pointer as CUDA gives it: a `bigint`, or an exact `number`. */
export type DevicePointer = bigint | number;

/** Where {@link checksum} runs on a device, as {@link checksumPlacement} says. */
export interface ChecksumPlacement {
  /** On the device (the kernel loaded); else on the host, from a copy. */
  onDevice: boolean;
  /** Why not on the device, when not. */
  reason?: string;
}

/** What {@link status} says of CUDA here. */
export interface CudaStatus {
  /** At least one device can be used. */
  available: boolean;
  /** How many devices CUDA sees (0 without a GPU or driver). */
  deviceCount: number;
  /** Why there is no device, when there is none. */
  reason?: string;
  /** The libcudart that loaded. */
  runtime?: string;
  /** Its version, as CUDA numbers it (13000 for 13.0). */
  runtimeVersion?: number;
  /** The driver's CUDA version, where a driver is installed. */
  driverVersion?: number;
  /** Each device, when there are some. */
  devices?: {
    /** The device ordinal, as `device` in a `vram` region. */
    index: number;
    /** Its name, e.g. "NVIDIA H100 80GB HBM3". */
    name?: string;
  }[];
}

function native(): NativeCuda {
  return binding().cuda;
}

function asBytes(view: ArrayBufferView, what: string): Uint8Array {
  if (!ArrayBuffer.isView(view)) throw invalidArg(`${what} must be a Buffer, TypedArray or DataView`);
  return view instanceof Uint8Array ? view : new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/** What CUDA can do here: devices, versions, or why there are none. Never throws for a missing GPU. */
export function status(): CudaStatus {
  return native().status();
}

/** How many CUDA devices there are: 0 without a GPU or driver ({@link status} says why). */
export function deviceCount(): number {
  return native().status().deviceCount;
}

/** Allocates `bytes` of memory on `device` (cudaMalloc); free it with {@link free}. */
export function malloc(device: number, bytes: number | bigint): bigint {
  return native().malloc(device, bytes);
}

/** Frees what {@link malloc} returned. Deregister any region over it first. */
export function free(pointer: DevicePointer): void {
  native().free(pointer);
}

/** Sets `bytes` bytes at `pointer` to `byte` (cudaMemset). */
export function fill(pointer: DevicePointer, byte: number, bytes: number | bigint): void {
  native().fill(pointer, byte, bytes);
}

/** Copies host memory to the device, `source.byteLength` bytes to `pointer`. */
export function copyFromHost(pointer: DevicePointer, source: ArrayBufferView): void {
  native().copyFromHost(pointer, asBytes(source, 'source'));
}

/** Copies `target.byteLength` bytes at `pointer` into host memory. */
export function copyToHost(target: ArrayBufferView, pointer: DevicePointer): void {
  native().copyToHost(asBytes(target, 'target'), pointer);
}

/**
 * A 64-bit checksum of `bytes` bytes at `pointer` (8-byte aligned), computed
 * on the device: equal to {@link checksumHost} of the same bytes, and
 * changed by any moved, swapped or altered 8-byte word. Where the driver
 * will not load its kernel it is computed on the host from a copy
 * ({@link checksumPlacement} tells).
 */
export function checksum(pointer: DevicePointer, bytes: number | bigint): bigint {
  return native().checksum(pointer, bytes);
}

/** {@link checksum}'s value for bytes in host memory. Needs no GPU. */
export function checksumHost(bytes: ArrayBufferView): bigint {
  return native().checksumHost(asBytes(bytes, 'bytes'));
}

/** Whether {@link checksum} runs on `device`, and why not when it does not. */
export function checksumPlacement(device: number): ChecksumPlacement {
  return native().checksumPlacement(device);
}

/** Copies `bytes` from `source` to `target`, device to device (two devices' too), done on return. */
export function memcpyDtoD(target: DevicePointer, source: DevicePointer, bytes: number | bigint): void {
  native().memcpy(target, source, bytes);
}

/**
 * Times `iterations` device-to-device copies of `bytes` (after one untimed
 * copy) with CUDA events, peer access enabled where the devices allow it:
 * the seconds they took together.
 */
export function timeMemcpyDtoD(
  target: DevicePointer,
  source: DevicePointer,
  bytes: number | bigint,
  iterations: number,
): number {
  return native().timeMemcpy(target, source, bytes, iterations);
}

/** Whether `device` can reach `peer`'s memory directly (NVLink or PCIe peer-to-peer). */
export function canAccessPeer(device: number, peer: number): boolean {
  return native().canAccessPeer(device, peer);
}
