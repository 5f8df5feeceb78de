// GPU memory end to end, where there is a GPU: kvxfer/cuda itself (device memory, copies, the
// device-side checksum against its host twin), the memory-type check at registration, and VRAM
// moved by real transfers between this process and peer processes: host to device, device to
// device on one GPU (cuda_ipc), GPU i to GPU j where there are two, and a KV pool in VRAM handed
// off. Every byte is checked: by the device checksum, which any moved, swapped or altered 8-byte
// word changes, and by sha256 of the bytes read back.
//
// Each group skips with its reason in its name: no CUDA device (kvxfer/cuda's status() says
// why), an engine without CUDA support (info() says why; Debian's UCX has none), fewer than two
// GPUs. scripts/gpu-smoke.sh runs this file on a GPU node.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { Agent, KvLayout, info, type KvLayoutOptions, type Region } from '../../dist/index.js'
import * as cuda from '../../dist/cuda.js'
import {
  ENGINES, MiB, applyMoves, closeAll, createAgent, elementMoves, exchangeMetadata, fillBytes, randomBytesFor, rdesc, rejectsWith,
  sha256, throwsWith, type EngineName,
} from '../fixtures/index.js'
import { disposeAllPeers, spawnPeer } from '../fixtures/peers.js'

const gpus = cuda.status()
const NO_GPU = gpus.deviceCount > 0 ? null : `no CUDA device: ${gpus.reason ?? 'unknown'}`
const FEWER_THAN_TWO = gpus.deviceCount >= 2 ? null : `needs two GPUs, this machine has ${gpus.deviceCount}`

function engineWithoutCuda(engine: EngineName): string | null {
  const support = info().engines[engine].cuda
  return support?.supported ? null : `the ${engine} engine has no CUDA support: ${support?.reason ?? 'unknown'}`
}

const firstReason = (...reasons: Array<string | null>): string | null => reasons.find((r) => r !== null) ?? null
const titled = (title: string, reason: string | null): string => (reason === null ? title : `${title} [skipped: ${reason}]`)

// An odd size: the checksum's last partial word and the transports' tails are exercised too.
const SIZE = 8 * MiB + 5

describe(titled('kvxfer/cuda on a GPU', NO_GPU), () => {
  const pointers: bigint[] = []
  const malloc = (bytes: number, device = 0): bigint => {
    const p = cuda.malloc(device, bytes)
    pointers.push(p)
    return p
  }
  afterAll(() => {
    for (const p of pointers.splice(0)) cuda.free(p)
  })

  it.skipIf(NO_GPU !== null)('lists its devices and computes checksums on the device', () => {
    expect(gpus.devices?.length).toBe(gpus.deviceCount)
    expect(cuda.checksumPlacement(0)).toEqual({ onDevice: true })
  })

  it.skipIf(NO_GPU !== null)('copies to and from the host byte for byte; the device checksum equals its host twin', () => {
    const p = malloc(SIZE)
    const bytes = fillBytes(Buffer.alloc(SIZE), 1)
    cuda.copyFromHost(p, bytes)
    expect(cuda.checksum(p, SIZE)).toBe(cuda.checksumHost(bytes))
    const back = Buffer.alloc(SIZE)
    cuda.copyToHost(back, p)
    expect(back.equals(bytes)).toBe(true)
  })

  it.skipIf(NO_GPU !== null)('the checksum changes when one byte changes, or two words swap', () => {
    const p = malloc(4096)
    const bytes = fillBytes(Buffer.alloc(4096), 2)
    cuda.copyFromHost(p, bytes)
    const original = cuda.checksum(p, 4096)
    const changed = Buffer.from(bytes)
    changed[4000] ^= 1
    cuda.copyFromHost(p, changed)
    expect(cuda.checksum(p, 4096)).not.toBe(original)
    const swapped = Buffer.from(bytes)
    swapped.set(bytes.subarray(8, 16), 0)
    swapped.set(bytes.subarray(0, 8), 8)
    cuda.copyFromHost(p, swapped)
    expect(cuda.checksum(p, 4096)).not.toBe(original)
  })

  it.skipIf(NO_GPU !== null)('fill sets every byte; memcpyDtoD copies; timeMemcpyDtoD measures', () => {
    const a = malloc(SIZE)
    const b = malloc(SIZE)
    cuda.fill(a, 0xa5, SIZE)
    const back = Buffer.alloc(SIZE)
    cuda.copyToHost(back, a)
    expect(back.every((x) => x === 0xa5)).toBe(true)
    cuda.memcpyDtoD(b, a, SIZE)
    expect(cuda.checksum(b, SIZE)).toBe(cuda.checksumHost(back))
    expect(cuda.timeMemcpyDtoD(b, a, SIZE, 4)).toBeGreaterThan(0)
  })

  it.skipIf(NO_GPU !== null)('refuses bad pointers and ranges with KvxferErrors', () => {
    const p = malloc(4096)
    throwsWith(() => cuda.copyToHost(Buffer.alloc(4097), p), 'ERR_OUT_OF_RANGE')
    throwsWith(() => cuda.checksum(p + 1n, 8), 'ERR_INVALID_ARG')
    throwsWith(() => cuda.malloc(gpus.deviceCount, 4096), 'ERR_INVALID_ARG')
    throwsWith(() => cuda.fill(0x1000n, 0, 8), 'ERR_INVALID_ARG')
    const once = cuda.malloc(0, 4096)
    cuda.free(once)
    throwsWith(() => cuda.free(once), 'ERR_INVALID_ARG')
  })

  it.skipIf(NO_GPU !== null)('a device pointer registered as dram is refused: ERR_INVALID_ARG', async () => {
    const p = malloc(4096)
    const agent = await Agent.create()
    try {
      const error = await rejectsWith(() => agent.register({ kind: 'dram', address: p, length: 4096 }), 'ERR_INVALID_ARG')
      expect(error.message).toMatch(/register it as 'vram'/)
    } finally {
      await agent.close()
    }
  })
})

describe.each(ENGINES)('%s engine: VRAM', (engine) => {
  const skip = firstReason(NO_GPU, engineWithoutCuda(engine))
  const pointers: bigint[] = []
  const agents: Agent[] = []
  const malloc = (bytes: number, device = 0): bigint => {
    const p = cuda.malloc(device, bytes)
    pointers.push(p)
    return p
  }
  afterEach(async () => {
    await closeAll(...agents.splice(0))
    await disposeAllPeers()
    for (const p of pointers.splice(0)) cuda.free(p)
  }, 60_000)

  async function vramAgent(prefix: string, bytes: number, device = 0): Promise<{ agent: Agent; region: Region; pointer: bigint }> {
    const agent = await createAgent(prefix, { engine })
    agents.push(agent)
    const pointer = malloc(bytes, device)
    const region = await agent.register({ kind: 'vram', address: pointer, length: bytes, device })
    return { agent, region, pointer }
  }

  it.skipIf(skip !== null)(titled('refuses host memory as vram, a wrong device, and a range past the allocation', skip), async () => {
    // 64 MiB: a whole number of CUDA's allocation granules, so its range is exactly what was asked.
    const { agent, pointer } = await vramAgent('vram-checks', 64 * MiB)
    const host = Buffer.alloc(4096)
    const hostAddress = BigInt((await agent.register(host)).address)
    await rejectsWith(() => agent.register({ kind: 'vram', address: hostAddress, length: 4096, device: 0 }), 'ERR_INVALID_ARG')
    if (gpus.deviceCount > 1) {
      await rejectsWith(() => agent.register({ kind: 'vram', address: pointer, length: 4096, device: 1 }), 'ERR_INVALID_ARG')
    }
    await rejectsWith(() => agent.register({ kind: 'vram', address: pointer + 4096n, length: 64 * MiB, device: 0 }), 'ERR_OUT_OF_RANGE')
  })

  it.skipIf(skip !== null)(titled('host to device and device to device between two processes on one GPU, every byte', skip), async () => {
    const here = await vramAgent('vram-here', SIZE)
    const peer = await spawnPeer({ engine })
    await peer.create()
    await exchangeMetadata(here.agent, peer)
    const peerVram = await peer.vramRegister(SIZE, 0)
    const peerHost = await peer.register(SIZE)

    // Host to device: the peer WRITEs its host Buffer into our VRAM.
    await peer.fill(peerHost, 11)
    await peer.transfer('write', peerHost, [[0, SIZE]], [rdesc(here.region, 0, SIZE)], here.agent.name)
    const expected11 = fillBytes(Buffer.alloc(SIZE), 11)
    expect(cuda.checksum(here.pointer, SIZE)).toBe(cuda.checksumHost(expected11))

    // Device to device (cuda_ipc on one GPU): we WRITE our VRAM into the peer's.
    cuda.copyFromHost(here.pointer, fillBytes(Buffer.alloc(SIZE), 12))
    await here.agent.write(here.region, [{ address: peerVram.address, length: SIZE, device: 0 }], peer.name)
    expect(await peer.vramChecksum(peerVram)).toBe(cuda.checksumHost(fillBytes(Buffer.alloc(SIZE), 12)))

    // Device to device by READ, in pieces at odd offsets: the peer's VRAM into ours, poisoned first.
    await peer.vramFill(peerVram, 13)
    cuda.copyFromHost(here.pointer, fillBytes(Buffer.alloc(SIZE), 14))
    const pieces: Array<[number, number]> = [[0, 4096], [4096 + 3, 1 * MiB], [2 * MiB + 1, SIZE - 2 * MiB - 1]]
    await here.agent.read(
      pieces.map(([o, l]) => here.region.slice(o, l)),
      pieces.map(([o, l]) => ({ address: peerVram.address + BigInt(o), length: l, device: 0 })),
      peer.name,
    )
    const want = fillBytes(Buffer.alloc(SIZE), 14)
    const source = fillBytes(Buffer.alloc(SIZE), 13)
    for (const [o, l] of pieces) source.copy(want, o, o, o + l)
    const got = Buffer.alloc(SIZE)
    cuda.copyToHost(got, here.pointer)
    expect(sha256(got)).toBe(sha256(want))
    expect(cuda.checksum(here.pointer, SIZE)).toBe(cuda.checksumHost(want))

    // Device to host: the peer READs our VRAM into its host Buffer.
    await peer.transfer('read', peerHost, [[0, SIZE]], [rdesc(here.region, 0, SIZE)], here.agent.name)
    expect(await peer.hash(peerHost)).toBe(sha256(want))
  })

  it.skipIf(firstReason(skip, FEWER_THAN_TWO) !== null)(
    titled('GPU 0 to GPU 1 across processes, both ways', firstReason(skip, FEWER_THAN_TWO)),
    async () => {
      const here = await vramAgent('vram-gpu0', SIZE, 0)
      const peer = await spawnPeer({ engine })
      await peer.create()
      await exchangeMetadata(here.agent, peer)
      const there = await peer.vramRegister(SIZE, 1)
      const bytes = fillBytes(Buffer.alloc(SIZE), 21)
      cuda.copyFromHost(here.pointer, bytes)
      await here.agent.write(here.region, [{ address: there.address, length: SIZE, device: 1 }], peer.name)
      expect(await peer.vramChecksum(there)).toBe(cuda.checksumHost(bytes))
      const other = await peer.vramFill(there, 22)
      await here.agent.read(here.region, [{ address: there.address, length: SIZE, device: 1 }], peer.name)
      expect(cuda.checksum(here.pointer, SIZE)).toBe(other)
      expect(await peer.vramHash(there)).toBe(sha256(fillBytes(Buffer.alloc(SIZE), 22)))
    },
  )

  it.skipIf(skip !== null)(titled('a KV pool in VRAM handed off between processes: pull, then push', skip), async () => {
    const options: KvLayoutOptions = { layers: 4, blocks: 16, blockTokens: 16, kvHeads: 8, headDim: 128, dtype: 'bf16', order: 'layer-kv-block', heads: 'NHD' }
    const layout = new KvLayout(options)
    const src = [9, 2, 14, 5, 6]
    const dst = [1, 12, 3, 7, 8]
    const decodeDevice = gpus.deviceCount > 1 ? 1 : 0
    const prefill = await spawnPeer({ engine })
    const decode = await spawnPeer({ engine })
    await prefill.create()
    await decode.create()
    await exchangeMetadata(prefill, decode)
    const prefillPool = await prefill.kvPool(options, 'vram', 0)
    const decodePool = await decode.kvPool(options, 'vram', decodeDevice)
    await prefill.kvHandoff(prefillPool)
    await decode.kvHandoff(decodePool)
    await prefill.kvFill(prefillPool, 31)
    await decode.kvFill(decodePool, 32)
    const moves = elementMoves(options, src, options, dst)
    const afterPull = applyMoves(randomBytesFor(layout.bytes, 32), randomBytesFor(layout.bytes, 31), moves, layout.headBytes)

    const offer = await prefill.kvOffer(prefillPool, 'vram-pull', src)
    await decode.kvPull(decodePool, [offer.ticket], dst)
    await prefill.finish(offer.token)
    expect(await decode.kvHash(decodePool)).toBe(sha256(afterPull))

    await prefill.kvFill(prefillPool, 33)
    const reservation = await decode.kvReserve(decodePool, 'vram-push', dst)
    await prefill.kvPush(prefillPool, [reservation.ticket], src)
    expect(await decode.finish<number[]>(reservation.token)).toHaveLength(options.layers)
    expect(await decode.kvHash(decodePool)).toBe(sha256(applyMoves(afterPull, randomBytesFor(layout.bytes, 33), moves, layout.headBytes)))
  })
})

describe(titled('kvxfer bench --mem vram', firstReason(NO_GPU, engineWithoutCuda('ucx'))), () => {
  const skip = firstReason(NO_GPU, engineWithoutCuda('ucx'))
  it.skipIf(skip !== null)('runs VRAM to VRAM between two processes beside cudaMemcpy in the same run, as JSON', { timeout: 150_000 }, async () => {
    const { spawnSync } = await import('node:child_process')
    const { mkdtempSync, readFileSync } = await import('node:fs')
    const { tmpdir } = await import('node:os')
    const { join } = await import('node:path')
    const json = join(mkdtempSync(join(tmpdir(), 'kvxfer-gpu-bench-')), 'vram.json')
    const peerDevice = gpus.deviceCount > 1 ? '1' : '0'
    const cli = join(__dirname, '..', '..', 'dist', 'cli', 'main.js')
    const r = spawnSync(process.execPath, [cli, 'bench', '--engine', 'ucx', '--mem', 'vram', '--peer-device', peerDevice, '--block-sizes', '4M', '--duration', '0.3', '--json', json, '--no-progress'], { encoding: 'utf8', timeout: 120_000 })
    expect(r.status, r.stderr).toBe(0)
    const report = JSON.parse(readFileSync(json, 'utf8')) as { series: Array<{ kind: string; baseline?: string; points: Array<{ figures: { gbps: number }; ratio?: Record<string, number | null> }> }> }
    const kvxfer = report.series.find((s) => s.kind === 'kvxfer')!
    const baseline = report.series.find((s) => s.baseline === 'cuda_memcpy')!
    expect(baseline.points[0].figures.gbps).toBeGreaterThan(0)
    expect(kvxfer.points[0].ratio?.cuda_memcpy).toBeGreaterThan(0)
  })
})
