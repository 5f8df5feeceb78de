// Proves FILE regions work on the NIXL engine (its POSIX backend): KV blocks written from
// registered memory into a real file land there byte for byte (read back with node:fs), blocks
// read from the file land in memory, scattered descriptors map onto the right file offsets, a
// prepared file transfer can be posted again, and the UCX engine refuses FILE regions clearly.
// The NIXL part is skipped, with the reason in the title, where NIXL does not load.
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DescList, type Agent, type Region } from '../../dist/index.js'
import {
  KiB, MiB, NIXL_ABSENT, closeAll, createAgent, fillBytes, range, rejectsWith, reportNixlSkipped, sha256,
} from '../fixtures/index.js'

const FILE_BYTES = 4 * MiB
const BLOCK = 64 * KiB

describe.skipIf(NIXL_ABSENT !== null)('nixl engine: FILE regions through the POSIX backend', { timeout: 60_000 }, () => {
  let agent: Agent
  let dir: string
  let path: string
  let fd: number
  let memory: Region
  let file: Region

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kvxfer-file-'))
    path = join(dir, 'kv-tier.bin')
    fd = openSync(path, 'w+')
    ftruncateSync(fd, FILE_BYTES)
    agent = await createAgent('file', { engine: 'nixl' })
    memory = await agent.allocate(FILE_BYTES)
    file = await agent.register({ kind: 'file', fd, length: FILE_BYTES })
    // The file is this agent's own: it is the "peer" of a transfer into it.
    expect(await agent.loadPeer(agent.metadata())).toBe(agent.name)
  })

  afterAll(async () => {
    await closeAll(agent)
    closeSync(fd)
    rmSync(dir, { recursive: true, force: true })
  })

  const fileDesc = (offset: number, length: number) => ({ address: BigInt(offset), length, device: fd })

  it('a FILE region reports its offset, length and descriptor', () => {
    expect(file.kind).toBe('file')
    expect(file.address).toBe(0n)
    expect(file.length).toBe(FILE_BYTES)
    expect(file.device).toBe(fd)
  })

  it('WRITE of the whole region: the file holds exactly those bytes', async () => {
    const want = sha256(fillBytes(memory.view(), 21))
    const result = await agent.write(memory, fileDesc(0, FILE_BYTES), agent.name, { remoteKind: 'file', timeoutMs: 30_000 })
    expect(result.bytes).toBe(FILE_BYTES)
    expect(sha256(readFileSync(path))).toBe(want)
  })

  it('READ from the file: memory holds what the file holds', async () => {
    const content = fillBytes(Buffer.alloc(FILE_BYTES), 22)
    writeFileSync(path, content)
    memory.view().fill(0)
    await agent.read(memory, fileDesc(0, FILE_BYTES), agent.name, { remoteKind: 'file', timeoutMs: 30_000 })
    expect(sha256(memory.view())).toBe(sha256(content))
  })

  it('scattered blocks land at their own file offsets, and a prepared transfer posts again', async () => {
    const blocks = FILE_BYTES / BLOCK
    // Memory block i goes to file block (i * 7) % blocks: a permutation, as a KV tier stores
    // a request's blocks wherever it has room.
    const order = range(blocks).map((i) => (i * 7) % blocks)
    const local = DescList.from(range(blocks).map((i) => memory.slice(i * BLOCK, BLOCK)))
    const remote = DescList.from(order.map((at) => fileDesc(at * BLOCK, BLOCK)))
    const transfer = agent.prepare({ op: 'write', local, remote, peer: agent.name, remoteKind: 'file' })
    try {
      for (const seed of [31, 32]) {
        fillBytes(memory.view(), seed)
        await transfer.post({ timeoutMs: 30_000 })
        const written = readFileSync(path)
        for (const i of [0, 1, blocks >> 1, blocks - 1]) {
          const at = order[i]! * BLOCK
          expect(sha256(written.subarray(at, at + BLOCK)), `block ${i} (seed ${seed})`).toBe(sha256(memory.view(i * BLOCK, BLOCK)))
        }
      }
    } finally {
      transfer.release()
    }
  })

  it('completions carry NIXL telemetry, and stats() sums it', async () => {
    const before = agent.stats().telemetry?.transfers ?? 0
    const result = await agent.write(memory.slice(0, BLOCK), fileDesc(0, BLOCK), agent.name, { remoteKind: 'file', timeoutMs: 30_000 })
    expect(result.telemetry?.bytes).toBe(BLOCK)
    expect(result.telemetry?.descriptors).toBe(1)
    expect(agent.stats().telemetry?.transfers).toBe(before + 1)
  })
})
reportNixlSkipped('FILE regions through the POSIX backend')

describe('ucx engine: FILE regions', () => {
  it('are refused with ERR_INVALID_ARG naming the NIXL engine', async () => {
    const agent = await createAgent('file-ucx', { engine: 'ucx' })
    try {
      const e = await rejectsWith(() => agent.register({ kind: 'file', fd: 0, length: 4096 }), 'ERR_INVALID_ARG')
      expect(e.message).toMatch(/NIXL/)
    } finally {
      await closeAll(agent)
    }
  })
})
