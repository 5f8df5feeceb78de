/**
 * Bench memory. 'dram' comes from agent.allocate(): engine-allocated shared
 * memory (a same-host peer copies straight into it). 'buffer' is a
 * Buffer.alloc registered with agent.register(), what a Node user registers
 * first. 'vram' is device memory from kvxfer/cuda, registered as a 'vram'
 * region, as a serving worker registers its KV cache.
 */
import { info, type Agent, type Region } from 'kvxfer';
import * as cuda from 'kvxfer/cuda';

/** Why --mem vram cannot run here on `engine` with GPU `device`; undefined when it can. */
export function vramUnavailable(engine: 'auto' | 'ucx' | 'nixl', device: number): string | undefined {
  const gpus = cuda.status();
  if (gpus.deviceCount === 0) return `--mem vram needs a CUDA device; ${gpus.reason ?? 'there is none'}. Use --mem dram.`;
  if (device >= gpus.deviceCount) return `--mem vram: there is no GPU ${device} (this machine has ${gpus.deviceCount}).`;
  const engines = info().engines;
  const which = engine === 'auto' ? (engines.nixl.available ? 'nixl' : 'ucx') : engine;
  const support = engines[which].cuda;
  if (!support?.supported) return `--mem vram: the ${which} engine cannot move GPU memory here: ${support?.reason ?? 'unknown'}`;
  return undefined;
}

export type BenchMem = 'dram' | 'buffer' | 'vram';

export async function allocateBenchMemory(agent: Agent, bytes: number, mem: BenchMem, device: number): Promise<Region> {
  const length = Math.max(bytes, 4096);
  if (mem === 'dram') return agent.allocate(length);
  if (mem === 'buffer') return agent.register(Buffer.alloc(length));
  const pointer = cuda.malloc(device, length);
  try {
    return await agent.register({ kind: 'vram', address: pointer, length, device });
  } catch (error) {
    cuda.free(pointer);
    throw error;
  }
}

/** Gives back what allocateBenchMemory took from CUDA; call it once the region's agent is closed. */
export function freeBenchMemory(region: Region | undefined): void {
  if (region?.kind === 'vram') cuda.free(region.address);
}
