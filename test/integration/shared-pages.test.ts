// Registered Buffers whose whole pages move into shared memory (native/shared_pages.h), so that a
// UCX agent in another process on this host copies into them with memcpy rather than the kernel's
// cross-process copy. Checked on the real mappings: the registering process's /proc/<pid>/maps
// shows its pages in a kvxfer memfd, the initiator's shows that same file (its inode) mapped once
// it loaded the metadata, and every byte of a write or read lands, the ones around the whole
// pages (still private, copied by the kernel) included. Metadata that lies about the shared pages
// is either refused (malformed) or checked against the peer's real mappings and not trusted.
import { closeSync, ftruncateSync, openSync, readFileSync } from 'node:fs'
import { afterEach, describe, expect, it } from 'vitest'
import { Agent, DescList, type Region } from '../../dist/index.js'
import {
  KiB, MiB, closeAll, createAgent, eventually, exchangeMetadata, fillBytes, rdesc, rejectsWith, sha256, sha256Slices, type Slice,
} from '../fixtures/index.js'
import { disposeAllPeers, spawnPeer, type Peer, type PeerRegion } from '../fixtures/peers.js'
import { ucxMetadataFields, withFixedChecksum } from '../fixtures/ucx-metadata.js'

const PAGE = 4096n

interface SharedMapping {
  from: bigint
  to: bigint
  inode: string
}

/** The kvxfer shared-memory files mapped in a process (`self` or a pid). */
function sharedMappings(pid: number | 'self'): SharedMapping[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8')
    .split('\n')
    .filter((line) => line.includes('/memfd:kvxfer-shared'))
    .map((line) => {
      const [range, , , , inode] = line.split(/\s+/)
      const [from, to] = range!.split('-').map((h) => BigInt(`0x${h}`))
      return { from: from!, to: to!, inode: inode! }
    })
}

/** Resident kB of this process's mappings of file `inode` (smaps' Rss). */
function residentKb(inode: string): number {
  let kb = 0
  let inFile = false
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inFile = line.split(/\s+/)[4] === inode
    else if (inFile && line.startsWith('Rss:')) kb += Number(line.split(/\s+/)[1])
  }
  return kb
}

/** The whole pages inside [address, address + length). */
function wholePages(address: bigint, length: number): { from: bigint; to: bigint } {
  return { from: ((address + PAGE - 1n) / PAGE) * PAGE, to: ((address + BigInt(length)) / PAGE) * PAGE }
}

/** The one shared mapping of `pid` that holds all of the region's whole pages, or undefined. */
function sharedHolding(pid: number | 'self', region: { address: bigint; length: number }): SharedMapping | undefined {
  const pages = wholePages(region.address, region.length)
  return sharedMappings(pid).find((m) => m.from <= pages.from && pages.to <= m.to)
}

/** Descriptors of `region` at `slices`, and the same slices of `local`. */
function sliced(local: Region, remote: PeerRegion, slices: readonly Slice[]) {
  return {
    local: DescList.from(slices.map(([o, n]) => local.slice(o, n))),
    remote: DescList.from(slices.map(([o, n]) => rdesc(remote, o, n))),
  }
}

describe('ucx engine: registered Buffers in shared memory', { timeout: 60_000 }, () => {
  const agents: Agent[] = []
  afterEach(async () => {
    await closeAll(...agents.splice(0))
    await disposeAllPeers()
  }, 30_000)

  async function agent(prefix: string, spec: Parameters<typeof createAgent>[1] = {}): Promise<Agent> {
    const a = await createAgent(prefix, { engine: 'ucx', ...spec })
    agents.push(a)
    return a
  }

  it('a registered Buffer keeps its bytes and address; a peer maps its pages, and writes and reads land to the byte, around the pages too', async () => {
    const peer = await spawnPeer({ engine: 'ucx' })
    // 100 bytes into a Buffer: the region starts and ends inside a page.
    const size = 4 * MiB + 1000
    const region = await peer.registerFilled(size, 5, 100)
    expect(await peer.hash(region), 'the bytes it had before it was registered').toBe(region.filledHash)
    const held = sharedHolding(peer.pid, region)
    expect(held, 'its whole pages are in a kvxfer shared-memory file').toBeDefined()

    // Sealed: a peer that maps the file cannot shrink it under our copies (SIGBUS).
    const shared = ucxMetadataFields(Buffer.from(await peer.metadata())).regions.find((r) => r.address === region.address)!.shared
    const opened = openSync(`/proc/${peer.pid}/fd/${shared.fd}`, 'r+')
    try {
      expect(() => ftruncateSync(opened, 0)).toThrow(/EPERM/)
    } finally {
      closeSync(opened)
    }

    const initiator = await agent('shared-init')
    const name = await exchangeMetadata(initiator, peer)
    expect(sharedMappings('self').map((m) => m.inode), 'the peer\'s file mapped here').toContain(held!.inode)

    const memory = Buffer.alloc(size)
    const local = await initiator.register(memory)
    expect(residentKb(held!.inode), 'not faulted in ahead').toBeLessThan(64)
    let want = sha256(fillBytes(memory, 6))
    await initiator.write(local, rdesc(region, 0, size), name)
    expect(await peer.hash(region)).toBe(want)
    // Copied through that mapping (the kernel copy would leave it untouched).
    expect(residentKb(held!.inode), 'written through the mapping').toBeGreaterThanOrEqual(4 * 1024 - 8)

    // Descriptors that cross the edges of the whole pages, and ones wholly outside them.
    const pages = wholePages(region.address, size)
    const head = Number(pages.from - region.address)
    const tail = Number(region.address + BigInt(size) - pages.to)
    const edges: Slice[] = [[0, head], [head - 3, 7], [head + 4 * Number(KiB), 100], [size - tail - 5, tail + 5], [size - 1, 1]]
    fillBytes(memory, 7)
    const parts = sliced(local, region, edges)
    await initiator.write(parts.local, parts.remote, name)
    expect(await peer.hashSlices(region, edges)).toBe(sha256Slices(memory, edges))

    want = await peer.fill(region, 8)
    await initiator.read(local, rdesc(region, 0, size), name)
    expect(sha256(memory), 'read back, pages and edges').toBe(want)
    await peer.fill(region, 9)
    await initiator.read(parts.local, parts.remote, name)
    expect(sha256Slices(memory, edges)).toBe(await peer.hashSlices(region, edges))
  })

  it('deregistered, the Buffer keeps its bytes; registered again, its pages move to a new file and the peer reaches them there', async () => {
    const peer = await spawnPeer({ engine: 'ucx' })
    const region = await peer.registerFilled(2 * MiB + 10, 11, 3)
    const first = sharedHolding(peer.pid, region)
    expect(first).toBeDefined()
    const initiator = await agent('shared-again')
    await exchangeMetadata(initiator, peer)

    expect(await peer.deregister(region, true)).toBe(true)
    expect(await peer.hashMemory(region)).toBe(region.filledHash)
    expect(sharedHolding(peer.pid, region), 'its pages back in private memory').toBeUndefined()
    await eventually('the revocation dropped the mapping here', () => !sharedMappings('self').some((m) => m.inode === first!.inode))
    const again = await peer.reregister(region)
    expect(again.address).toBe(region.address)
    const second = sharedHolding(peer.pid, again)
    expect(second).toBeDefined()
    expect(second!.inode, 'a new file').not.toBe(first!.inode)
    expect(await peer.hash(again)).toBe(region.filledHash)

    // Newer metadata (the pushed update may not have come yet): the new file is mapped here.
    const name = await initiator.loadPeer(await peer.metadata())
    expect(sharedMappings('self').map((m) => m.inode)).toContain(second!.inode)
    const memory = Buffer.alloc(again.length)
    const local = await initiator.register(memory)
    const want = sha256(fillBytes(memory, 12))
    await initiator.write(local, rdesc(again, 0, again.length), name)
    expect(await peer.hash(again)).toBe(want)
  })

  it('left where they are: shareRegisteredMemory false, a SharedArrayBuffer, under 1 MiB of whole pages, tcp only; the kernel copy moves the same bytes', async () => {
    const off = await spawnPeer({ engine: 'ucx', shareRegisteredMemory: false })
    const plain = await spawnPeer({ engine: 'ucx' })
    const tcp = await spawnPeer({ engine: 'ucx', transports: 'tcp' })
    const unshared: Array<[Peer, PeerRegion]> = [
      [off, await off.register(4 * MiB)],
      [plain, await plain.register(4 * MiB, 'SharedArrayBuffer')],
      // Buffer.alloc(1 MiB) starts past a page boundary: fewer than 1 MiB of whole pages.
      [plain, await plain.register(MiB)],
      [tcp, await tcp.register(4 * MiB)],
    ]
    for (const [peer, region] of unshared) {
      expect(sharedHolding(peer.pid, region), `${peer.label}: ${region.length} bytes left in place`).toBeUndefined()
    }
    const initiator = await agent('shared-not')
    const memory = Buffer.alloc(4 * MiB)
    const local = await initiator.register(memory)
    for (const [peer, region] of unshared) {
      const name = await initiator.loadPeer(await peer.metadata())
      const want = sha256(fillBytes(memory.subarray(0, region.length), region.length + peer.pid))
      await initiator.write(local.slice(0, region.length), rdesc(region, 0, region.length), name)
      expect(await peer.hash(region), peer.label).toBe(want)
    }
  })

  it('one process: pages another registration covers stay; a registration inside moved pages shares their file; untouched pages are not copied yet read as zeros', async () => {
    const a = await agent('shared-own-a')
    const b = await agent('shared-own-b')
    // Over glibc's largest mmap threshold (32 MiB): fresh pages from the kernel, none touched yet.
    const size = 40 * MiB
    const memory = Buffer.alloc(size)
    memory[5] = 1
    memory[3 * MiB + 17] = 2
    memory[size - 1] = 3

    // Memory an engine allocated on the heap (no shared transport) is another registration too.
    const heapAgent = await agent('shared-own-tcp', { transports: 'tcp' })
    const pool = await heapAgent.allocate(8 * MiB)
    const view = await a.register(pool.view())
    expect(sharedHolding('self', view), 'allocate()d pages stay with their engine').toBeUndefined()
    await view.deregister()

    const small = await a.register(memory.subarray(MiB, MiB + 64 * Number(KiB)))
    let whole = await a.register(memory)
    expect(sharedHolding('self', whole), 'another registration covers some of its pages').toBeUndefined()
    await whole.deregister()
    await small.deregister()

    whole = await a.register(memory)
    const file = sharedHolding('self', whole)
    expect(file).toBeDefined()
    // The one written page inside is in the file; the 40 MiB that were never written are not.
    expect(residentKb(file!.inode), 'resident in the file').toBeLessThan(256)
    expect([memory[5], memory[3 * MiB + 17], memory[size - 1]]).toEqual([1, 2, 3])
    expect(memory.reduce((n, v) => n + (v === 0 ? 0 : 1), 0), 'the rest is zeros').toBe(3)

    // In b, a part of the same pages: the same file, no second move.
    const part = await b.register(memory.subarray(2 * MiB, 5 * MiB))
    const partEntry = ucxMetadataFields(b.metadata()).regions.find((r) => r.address === part.address)!
    expect(partEntry.shared.inode, 'b names a\'s file').toBe(BigInt(file!.inode))
    expect(partEntry.shared.offset, 'at its pages\' place in it').toBe(wholePages(part.address, part.length).from - file!.from)

    // A peer in another process writes into b's part through that file.
    const peer = await spawnPeer({ engine: 'ucx' })
    const name = await exchangeMetadata(b, peer)
    expect(sharedMappings(peer.pid).map((m) => m.inode)).toContain(file!.inode)
    const source = await peer.register(3 * MiB)
    const want = await peer.fill(source, 13)
    await peer.transfer('write', source, [[0, 3 * MiB]], [rdesc(part, 0, 3 * MiB)], b.name)
    expect(sha256(memory.subarray(2 * MiB, 5 * MiB))).toBe(want)
    expect(name).toBe(peer.name)

    // Only the last of the two registrations moves the pages back, bytes kept.
    const before = sha256(memory)
    await whole.deregister()
    expect(sharedHolding('self', part)?.inode).toBe(file!.inode)
    await part.deregister()
    expect(sharedMappings('self').some((m) => m.inode === file!.inode), 'no longer shared').toBe(false)
    expect(sha256(memory)).toBe(before)
  })

  it('metadata that lies about the shared pages: malformed is ERR_BAD_METADATA; a wrong file, inode or offset is not mapped, and the kernel copy lands the bytes', async () => {
    const peer = await spawnPeer({ engine: 'ucx' })
    const region = await peer.register(4 * MiB + 300)
    const held = sharedHolding(peer.pid, region)!
    expect(held).toBeDefined()
    // Private memory of the peer (not shared: too small), to be claimed as that file.
    const other = await peer.register(64 * Number(KiB))
    const honest = Buffer.from(await peer.metadata())
    const entries = ucxMetadataFields(honest).regions
    const entry = entries.find((r) => r.address === region.address)!
    const otherEntry = entries.find((r) => r.address === other.address)!
    expect(entry.shared.length).toBeGreaterThan(0n)
    expect(otherEntry.shared.length).toBe(0n)
    const lie = (change: (blob: Buffer, at: number) => void): Buffer => {
      const blob = Buffer.from(honest)
      change(blob, entry.sharedAt)
      return withFixedChecksum(blob)
    }
    // The other region said to be the first pages of the file, with its fd and inode.
    const otherLie = Buffer.from(honest)
    otherLie.writeBigUInt64LE(wholePages(other.address, other.length).from, otherEntry.sharedAt)
    otherLie.writeBigUInt64LE(PAGE * 4n, otherEntry.sharedAt + 8)
    otherLie.writeBigUInt64LE(entry.shared.inode, otherEntry.sharedAt + 24)
    otherLie.writeUInt32LE(entry.shared.fd, otherEntry.sharedAt + 32)
    withFixedChecksum(otherLie)
    const malformed = [
      lie((blob, at) => blob.writeBigUInt64LE(entry.shared.begin - PAGE * 2n, at)), // starts before the region
      lie((blob, at) => blob.writeBigUInt64LE(entry.shared.length + PAGE * 4n, at + 8)), // ends past it
      lie((blob, at) => blob.writeBigUInt64LE(entry.shared.length - 1n, at + 8)), // not whole pages
      lie((blob, at) => blob.writeUInt32LE(1, at + 36)), // reserved
      lie((blob, at) => blob.fill(0, at + 8, at + 16)), // no length, yet an inode
    ]
    const probe = await agent('shared-lie-probe')
    for (const blob of malformed) await rejectsWith(() => probe.loadPeer(blob), 'ERR_BAD_METADATA')

    const wrong = [
      lie((blob, at) => blob.writeBigUInt64LE(entry.shared.inode + 1n, at + 24)), // another inode
      lie((blob, at) => blob.writeUInt32LE(0, at + 32)), // stdin: not a memfd
      lie((blob, at) => blob.writeUInt32LE(99_999, at + 32)), // no such descriptor
      lie((blob, at) => blob.writeBigUInt64LE(PAGE, at + 16)), // the file, but runs past its end
      lie((blob, at) => { // the file, but a page off
        blob.writeBigUInt64LE(entry.shared.begin + PAGE, at)
        blob.writeBigUInt64LE(entry.shared.length - PAGE, at + 8)
      }),
    ]
    for (const [i, blob] of wrong.entries()) {
      const initiator = await agent(`shared-lie-${i}`)
      const name = await initiator.loadPeer(blob)
      expect(sharedMappings('self').map((m) => m.inode), `lie ${i} mapped nothing`).not.toContain(held.inode)
      const memory = Buffer.alloc(region.length)
      const local = await initiator.register(memory)
      const want = sha256(fillBytes(memory, 20 + i))
      await initiator.write(local, rdesc(region, 0, region.length), name)
      expect(await peer.hash(region), `lie ${i}`).toBe(want)
    }
    // The honest region maps; the one that claims the file over private memory does not.
    const initiator = await agent('shared-lie-other')
    const name = await initiator.loadPeer(otherLie)
    const mine = sharedMappings('self').filter((m) => m.inode === held.inode)
    expect(mine.length, 'only the honest region\'s pages').toBe(1)
    expect(mine[0]!.to - mine[0]!.from).toBe(entry.shared.length)
    const memory = Buffer.alloc(other.length)
    const local = await initiator.register(memory)
    const regionBefore = await peer.hash(region)
    const want = sha256(fillBytes(memory, 30))
    await initiator.write(local, rdesc(other, 0, other.length), name)
    expect(await peer.hash(other)).toBe(want)
    expect(await peer.hash(region), 'the file untouched by that write').toBe(regionBefore)
  })
})
