/**
 * The `memcpy` baseline: one thread copying `blockSize` bytes between two
 * page-aligned buffers, in native code (bench/native/memcpy.cc). A same-host
 * transfer is at best one such copy, so this is the bound. Runs on the JS
 * thread in calls of about 20 ms.
 *
 * The copy loop is a native module of its own, not part of kvxfer.node:
 * binding.gyp builds it into build/Release/kvxfer_bench.so whenever kvxfer
 * is built from source. Where it is missing (an install from a prebuilt
 * binary) the baseline is reported unavailable, as a missing ucx_perftest is.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const CALL_BYTES = 128 * 2 ** 20;

/**
 * The memcpy module of the kvxfer package this file belongs to. Not a .node
 * file, so that node-gyp-build and prebuildify never take it for the addon.
 */
export const MEMCPY_MODULE = path.join(path.dirname(require.resolve('kvxfer/package.json')), 'build', 'Release', 'kvxfer_bench.so');

/** ns for `iterations` single-thread copies of `bytes` between two page-aligned buffers. */
export type MemcpyBench = (bytes: number, iterations: number) => number;

export type MemcpyModule = { memcpyBench: MemcpyBench; unavailable?: undefined } | { memcpyBench?: undefined; unavailable: string };

/** Loads the memcpy module at `file`, or says why it cannot. */
export function loadMemcpyModule(file: string): MemcpyModule {
  if (!fs.existsSync(file)) {
    return { unavailable: `its native module is not built here (no ${file}; it is built with kvxfer from source: npm rebuild kvxfer --build-from-source)` };
  }
  const addon = { exports: {} as { memcpyBench?: unknown } };
  try {
    process.dlopen(addon, file);
  } catch (error) {
    return { unavailable: `its native module ${file} does not load: ${error instanceof Error ? error.message.split('\n')[0] : String(error)}` };
  }
  const { memcpyBench } = addon.exports;
  if (typeof memcpyBench !== 'function') return { unavailable: `its native module ${file} has no memcpyBench()` };
  return { memcpyBench: memcpyBench as MemcpyBench };
}

let cached: MemcpyModule | undefined;

function memcpyModule(): MemcpyModule {
  cached ??= loadMemcpyModule(MEMCPY_MODULE);
  return cached;
}

/** Why the memcpy baseline cannot run here, or undefined when it can. */
export function memcpyUnavailable(): string | undefined {
  return memcpyModule().unavailable;
}

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
  const { memcpyBench, unavailable } = memcpyModule();
  if (memcpyBench === undefined) throw new Error(`the memcpy baseline is unavailable: ${unavailable}`);
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
