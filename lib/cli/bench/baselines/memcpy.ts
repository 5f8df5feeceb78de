/**
 * The `memcpy` baseline: one thread copying `blockSize` bytes between two
 * page-aligned buffers, in native code (native/bench.cc). A same-host
 * transfer is at best one such copy, so this is the bound. Runs on the JS
 * thread in calls of about 20 ms.
 */
import { binding } from '../../../native';

const CALL_BYTES = 128 * 2 ** 20;

export interface MemcpyResult {
  iterations: number;
  bytes: number;
  seconds: number;
  gbps: number;
  latAvgUs: number;
}

/** Copies for about `seconds`, or exactly `iters` copies when `iters` is given and `seconds` is not. */
export async function runMemcpy(
  blockSize: number,
  seconds: number | undefined,
  iters: number | undefined,
  progress: { fraction: number } = { fraction: 0 },
): Promise<MemcpyResult> {
  const { memcpyBench } = binding();
  const perCall = Math.max(1, Math.floor(CALL_BYTES / blockSize));
  memcpyBench(blockSize, Math.min(perCall, 16)); // warm the code and the allocator
  let ns = 0;
  let iterations = 0;
  if (seconds === undefined && iters !== undefined) {
    while (iterations < iters) {
      const n = Math.min(perCall, iters - iterations);
      ns += memcpyBench(blockSize, n);
      iterations += n;
      progress.fraction = iterations / iters;
      await new Promise((resolve) => setImmediate(resolve));
    }
  } else {
    const limit = Math.max(0.05, seconds ?? 0.5) * 1e9;
    while (ns < limit) {
      ns += memcpyBench(blockSize, perCall);
      iterations += perCall;
      progress.fraction = Math.min(1, ns / limit);
      // Let the progress bar and signals through between calls.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
  return {
    iterations,
    bytes: iterations * blockSize,
    seconds: ns / 1e9,
    gbps: (iterations * blockSize) / ns,
    latAvgUs: ns / iterations / 1e3,
  };
}
