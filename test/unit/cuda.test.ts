// GPU memory where there may be no GPU: kvxfer/cuda loads and says why it has no device, its
// host checksum is the documented function (checked against a BigInt reimplementation), info()
// reports CUDA support per engine, and an engine without CUDA refuses VRAM at once with
// ERR_ENGINE saying so (the agent goes on working). test/gpu/ covers the GPU side.
import { spawnSync } from 'node:child_process'
import * as path from 'node:path'
import { describe, expect, it } from 'vitest'
import { info } from '../../dist/index.js'
import * as cuda from '../../dist/cuda.js'
import { ENGINES, closeAll, createAgent, fillBytes, rejectsWith, throwsWith } from '../fixtures/index.js'

const ROOT = path.join(__dirname, '..', '..')
const gpus = cuda.status()
const HAS_GPU = gpus.deviceCount > 0

// checksum.cu's function, written again with BigInt from its comment.
const M64 = (1n << 64n) - 1n
function mix(z: bigint): bigint {
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64
  return z ^ (z >> 31n)
}
function referenceChecksum(bytes: Uint8Array): bigint {
  const padded = new Uint8Array(Math.ceil(bytes.length / 8) * 8)
  padded.set(bytes)
  const view = new DataView(padded.buffer)
  let sum = 0n
  for (let i = 0; i < padded.length / 8; i++) {
    const word = view.getBigUint64(i * 8, true)
    sum = (sum + mix(word ^ ((BigInt(i) * 0x9e3779b97f4a7c15n) & M64))) & M64
  }
  return sum
}

describe('kvxfer/cuda without a GPU', () => {
  it('loads, and status() says how many devices there are, or why there are none', () => {
    expect(typeof gpus.available).toBe('boolean')
    expect(cuda.deviceCount()).toBe(gpus.deviceCount)
    if (HAS_GPU) expect(gpus.devices).toHaveLength(gpus.deviceCount)
    else expect(gpus.reason).toMatch(/\S/)
  })

  it.skipIf(HAS_GPU)('without a device, every CUDA call throws ERR_ENGINE with that reason', () => {
    for (const call of [() => cuda.malloc(0, 4096), () => cuda.free(1n), () => cuda.checksum(8n, 8), () => cuda.canAccessPeer(0, 1)]) {
      const error = throwsWith(call, 'ERR_ENGINE')
      expect(error.message).toContain(gpus.reason)
    }
  })

  it('checksumHost is the documented function, for every tail length', () => {
    for (const length of [0, 1, 7, 8, 9, 63, 64, 1000]) {
      const bytes = fillBytes(Buffer.alloc(length), length + 1)
      expect(cuda.checksumHost(bytes)).toBe(referenceChecksum(bytes))
    }
  })

  it('checksumHost tells apart a changed byte and two swapped words; it takes any ArrayBufferView', () => {
    const bytes = fillBytes(Buffer.alloc(4096), 3)
    const original = cuda.checksumHost(bytes)
    const changed = Buffer.from(bytes)
    changed[100] ^= 0x80
    expect(cuda.checksumHost(changed)).not.toBe(original)
    const swapped = Buffer.from(bytes)
    swapped.set(bytes.subarray(16, 24), 8)
    swapped.set(bytes.subarray(8, 16), 16)
    expect(cuda.checksumHost(swapped)).not.toBe(original)
    expect(cuda.checksumHost(new Uint32Array(bytes.buffer, bytes.byteOffset, 1024))).toBe(original)
    expect(cuda.checksumHost(new DataView(bytes.buffer, bytes.byteOffset, 4096))).toBe(original)
    throwsWith(() => cuda.checksumHost('bytes' as never), 'ERR_INVALID_ARG')
  })
})

describe('info(): CUDA support per engine', () => {
  it('the UCX engine says whether it can move GPU memory, and why not', () => {
    const support = info().engines.ucx.cuda
    expect(support).toBeDefined()
    if (support?.supported) expect(support.memoryDomains?.length).toBeGreaterThan(0)
    else expect(support?.reason).toMatch(/CUDA/)
  })

  it('kvxfer info prints it, and --json carries it with the GPUs', () => {
    const cli = path.join(ROOT, 'dist', 'cli', 'main.js')
    const text = spawnSync(process.execPath, [cli, 'info'], { encoding: 'utf8', timeout: 60_000 })
    expect(text.status, text.stderr).toBe(0)
    expect(text.stdout).toMatch(/GPU memory \(vram regions\)\n {2}ucx {3}(supported|not supported: )/)
    const json = spawnSync(process.execPath, [cli, 'info', '--json'], { encoding: 'utf8', timeout: 60_000 })
    const parsed = JSON.parse(json.stdout) as { engines: { ucx: { cuda: { supported: boolean } } }; cuda: { deviceCount: number } }
    expect(typeof parsed.engines.ucx.cuda.supported).toBe('boolean')
    expect(parsed.cuda.deviceCount).toBe(gpus.deviceCount)
  })
})

describe.each(ENGINES)('%s engine: VRAM where the engine has no CUDA', (engine) => {
  const supported = info().engines[engine].cuda?.supported === true

  it.skipIf(supported)('registering VRAM fails at once with ERR_ENGINE saying so; the agent goes on', async () => {
    const agent = await createAgent('no-cuda', { engine })
    try {
      // Any address: the engine's refusal comes before the pointer is looked at.
      const error = await rejectsWith(() => agent.register({ kind: 'vram', address: 0x7f0000000000n, length: 1 << 20, device: 0 }), 'ERR_ENGINE', 5_000)
      expect(error.message).toMatch(/cannot register VRAM: .*(CUDA|VRAM)/)
      if (engine === 'ucx') expect(error.message).toBe(`cannot register VRAM: ${info().engines.ucx.cuda?.reason}`)
      const region = await agent.register(Buffer.alloc(4096))
      expect(region.kind).toBe('dram')
    } finally {
      await closeAll(agent)
    }
  })
})
