/**
 * Bench memory. DRAM comes from agent.allocate(): engine-allocated shared
 * memory, the fast path (a same-host peer copies straight into it).
 *
 * VRAM would be register({ kind: 'vram', address, length, device }) over a
 * CUDA allocation. Node cannot allocate device memory without a CUDA binding,
 * which kvxfer does not ship, so --mem vram stops here with the reason; this
 * is the one place a CUDA allocator would plug in.
 */
import * as fs from 'node:fs';
import { info, type Agent, type Region } from 'kvxfer';

/** Why --mem vram cannot run here. */
export function vramUnavailable(device: number): string {
  const hasGpu = fs.existsSync(`/dev/nvidia${device}`);
  const ucx = info().engines.ucx;
  const cuda = (ucx.transports ?? []).some((t) => t.name.startsWith('cuda'));
  if (!hasGpu) return `--mem vram needs an NVIDIA GPU (/dev/nvidia${device}); this machine has none. Use --mem dram.`;
  if (!cuda) {
    return '--mem vram needs a UCX built with CUDA (transports cuda_copy/cuda_ipc); the UCX kvxfer loaded reports none. ' +
      'Point LD_LIBRARY_PATH at a CUDA-enabled UCX, or use --mem dram.';
  }
  return '--mem vram: kvxfer bench has no CUDA allocator (allocating device memory from Node needs a CUDA binding that kvxfer ' +
    "does not ship). Your own code can register({ kind: 'vram', address, length, device }) with a pointer from one.";
}

export async function allocateBenchMemory(agent: Agent, bytes: number, mem: 'dram' | 'vram', device: number): Promise<Region> {
  if (mem === 'vram') throw new Error(vramUnavailable(device));
  return agent.allocate(Math.max(bytes, 4096));
}
