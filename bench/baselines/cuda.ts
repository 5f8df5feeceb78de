/**
 * The `cuda_memcpy` baseline of `--mem vram`: cudaMemcpy of `blockSize`
 * bytes from GPU --device to GPU --peer-device (the same GPU: device to
 * device; two GPUs: peer to peer, over NVLink or PCIe where they reach each
 * other), timed with CUDA events (kvxfer/cuda timeMemcpyDtoD). A transfer
 * between two processes' VRAM on one node is at best such a copy.
 */
import * as cuda from 'kvxfer/cuda';

export interface CudaMemcpyResult {
  iterations: number;
  bytes: number;
  seconds: number;
  gbps: number;
  latAvgUs: number;
}

/** The series' name: what is copied where. */
export function cudaMemcpyName(device: number, peerDevice: number): string {
  return device === peerDevice ? `cudaMemcpy DtoD (GPU ${device})` : `cudaMemcpy peer GPU ${device} -> ${peerDevice}`;
}

/** Why the baseline cannot run here, or undefined when it can. */
export function cudaMemcpyUnavailable(device: number, peerDevice: number): string | undefined {
  const gpus = cuda.status();
  if (Math.max(device, peerDevice) >= gpus.deviceCount) return `needs GPU ${Math.max(device, peerDevice)}; ${gpus.reason ?? `there are ${gpus.deviceCount}`}`;
  return undefined;
}

/** Copies for about `seconds`, or exactly `iters` copies when `iters` is given and `seconds` is not. */
export async function runCudaMemcpy(
  blockSize: number,
  device: number,
  peerDevice: number,
  seconds: number | undefined,
  iters: number | undefined,
  progress: { fraction: number } = { fraction: 0 },
): Promise<CudaMemcpyResult> {
  const source = cuda.malloc(device, blockSize);
  let target: bigint | undefined;
  try {
    target = cuda.malloc(peerDevice, blockSize);
    cuda.fill(source, 0x5a, blockSize);
    // A short calibration sizes the timed calls at about 20 ms each, so the
    // event loop and the progress bar get through between them.
    const probe = cuda.timeMemcpyDtoD(target, source, blockSize, 4) / 4;
    const perCall = Math.max(1, Math.min(100_000, Math.floor(0.02 / Math.max(probe, 1e-7))));
    let elapsed = 0;
    let iterations = 0;
    // The events' time decides; the wall clock only bounds a device that reports none.
    const wallLimit = performance.now() + 1000 * (10 + 4 * (seconds ?? 0.5));
    const done = (): boolean =>
      performance.now() > wallLimit ||
      (seconds === undefined && iters !== undefined ? iterations >= iters : elapsed >= Math.max(0.05, seconds ?? 0.5));
    while (!done()) {
      const n = seconds === undefined && iters !== undefined ? Math.min(perCall, iters - iterations) : perCall;
      elapsed += cuda.timeMemcpyDtoD(target, source, blockSize, n);
      iterations += n;
      progress.fraction = seconds === undefined && iters !== undefined ? iterations / iters : Math.min(1, elapsed / (seconds ?? 0.5));
      await new Promise((resolve) => setImmediate(resolve));
    }
    return { iterations, bytes: iterations * blockSize, seconds: elapsed, gbps: (iterations * blockSize) / elapsed / 1e9, latAvgUs: (elapsed / iterations) * 1e6 };
  } finally {
    cuda.free(source);
    if (target !== undefined) cuda.free(target);
  }
}
