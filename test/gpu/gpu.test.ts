// Proves VRAM works end to end where a GPU exists: device memory (cuMemAlloc through the tiny
// helper test/fixtures/cuda-mem.c) registers as a 'vram' region, and WRITE/READ between it
// and host memory of another agent move the right bytes (checked by copying back to the host
// and hashing). Skipped, with the reason in the test name, when there is no NVIDIA GPU
// (`nvidia-smi -L` fails) or UCX reports no CUDA transport.
import { execFileSync } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Agent, info, type Region } from '../../dist/index.js'
import { MiB, closeAll, exchangeMetadata, fillBytes, fixturePath, randomBytesFor, sha256, uniqueName } from '../fixtures/index.js'

function gpuAbsence(): string | null {
  try {
    const list = execFileSync('nvidia-smi', ['-L'], { encoding: 'utf8', timeout: 20_000, stdio: ['ignore', 'pipe', 'ignore'] })
    if (!/GPU \d+/.test(list)) return 'nvidia-smi -L lists no GPU'
  } catch {
    return 'no NVIDIA GPU (nvidia-smi -L failed)'
  }
  const ucx = info().engines.ucx
  if (!ucx.available) return `UCX engine unavailable: ${ucx.reason ?? 'no reason given'}`
  if (!(ucx.transports ?? []).some((t) => t.name.startsWith('cuda'))) return 'UCX reports no CUDA transport (cuda_copy/cuda_ipc)'
  return null
}

const absent = gpuAbsence()
const hasGpu = absent === null
const skipNote = hasGpu ? '' : ` [skipped: ${absent}]`

interface CudaMem {
  init(device: number): void
  alloc(bytes: number): bigint
  free(ptr: bigint): void
  htod(ptr: bigint, src: Buffer): void
  dtoh(dst: Buffer, ptr: bigint): void
}

/** Compile and load the helper (only called when a GPU is present). */
function loadCudaHelper(): CudaMem {
  const out = join(mkdtempSync(join(tmpdir(), 'kvxfer-cuda-')), 'cuda-mem.node')
  execFileSync('cc', ['-shared', '-fPIC', '-O2', '-o', out, fixturePath('cuda-mem.c')], { stdio: 'inherit' })
  const mod = { exports: {} as CudaMem }
  process.dlopen(mod, out)
  return mod.exports
}

describe(`GPU memory (VRAM)${skipNote}`, { timeout: 120_000 }, () => {
  let cuda: CudaMem
  let a: Agent
  let b: Agent
  let ptr = 0n
  let vram: Region
  let host: Region
  const SIZE = 16 * MiB

  beforeAll(async () => {
    if (!hasGpu) return
    cuda = loadCudaHelper()
    cuda.init(0)
    ptr = cuda.alloc(SIZE)
    a = await Agent.create({ name: uniqueName('gpu-a') })
    b = await Agent.create({ name: uniqueName('gpu-b') })
    vram = await a.register({ kind: 'vram', address: ptr, length: SIZE, device: 0 })
    host = await b.allocate(SIZE)
    await exchangeMetadata(a, b)
  }, 120_000)

  afterAll(async () => {
    if (!hasGpu) return
    await closeAll(a, b)
    if (ptr) cuda.free(ptr)
  }, 60_000)

  it.skipIf(!hasGpu)(`registers device memory as a vram region${skipNote}`, () => {
    expect(vram.kind).toBe('vram')
    expect(vram.device).toBe(0)
    expect(vram.address).toBe(ptr)
    expect(vram.length).toBe(SIZE)
  })

  it.skipIf(!hasGpu)(`WRITE from VRAM to another agent's host memory moves the right bytes${skipNote}`, async () => {
    const src = randomBytesFor(SIZE, 61)
    cuda.htod(ptr, src)
    fillBytes(host.view(), 62)
    const res = await a.write(vram, host, b.name, { timeoutMs: 60_000 })
    expect(res.bytes).toBe(SIZE)
    expect(sha256(host.view())).toBe(sha256(src))
  })

  it.skipIf(!hasGpu)(`READ from another agent's host memory into VRAM moves the right bytes${skipNote}`, async () => {
    const want = sha256(fillBytes(host.view(), 63))
    cuda.htod(ptr, Buffer.alloc(SIZE))
    await a.read(vram.slice(0, SIZE), host.slice(0, SIZE), b.name, { timeoutMs: 60_000 })
    const back = Buffer.alloc(SIZE)
    cuda.dtoh(back, ptr)
    expect(sha256(back)).toBe(want)
  })

  it.skipIf(!hasGpu)(`the other agent WRITEs into our VRAM (VRAM as the remote side)${skipNote}`, async () => {
    const want = sha256(fillBytes(host.view(0, MiB), 64))
    await b.write(host.slice(0, MiB), vram.slice(5 * MiB, MiB), a.name, { timeoutMs: 60_000 })
    const back = Buffer.alloc(MiB)
    cuda.dtoh(back, ptr + BigInt(5 * MiB))
    expect(sha256(back)).toBe(want)
  })
})
