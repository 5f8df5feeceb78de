// Proves that bytes really move between two processes, over the default transports (shared
// memory between processes on one host) and over tcp: WRITE and READ of pseudo-random data
// at 1 B, 4 KiB, 1 MiB and 64 MiB; 1,000 descriptors in one request; a prepared transfer
// posted many times; 1,000 concurrent transfers; notifications alone and riding on
// transfers, in order, with the data already in place when a notification is seen.
// Every check hashes (sha256) the real bytes at the other end, and every destination is
// first "poisoned" with different bytes, so a transfer that moved nothing cannot pass.
// Everything runs on each engine: UCX always, NIXL too where it loads (both processes on the
// same engine; for NIXL the tcp variant sets UCX_TLS=tcp in both, which its UCX backend follows).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DescList, type Agent, type Region } from '../../dist/index.js'
import {
  ENGINES, KiB, MiB, asBuffer, closeAll, createAgent, exchangeMetadata, fillBytes, invertBytes, randomBytesFor, range, rdesc,
  rejectsWith, reportNixlSkipped, settle, sha256, sha256Slices, within,
} from '../fixtures/index.js'
import { disposeAllPeers, spawnPeer, type Peer, type PeerRegion, type Slice } from '../fixtures/peers.js'

const SIZES = [1, 4 * KiB, 1 * MiB, 64 * MiB]
/** Every big region: the largest case fits at an odd offset, with guard bytes on both sides. */
const REGION = 64 * MiB + 64 * KiB
const LOCAL_OFF = 7
const REMOTE_OFF = 4 * KiB + 13
const GUARD = 64
const XFER_TIMEOUT = 60_000

const TRANSPORTS = [
  { label: 'default transports (shared memory)', transports: undefined as string | undefined },
  { label: 'tcp', transports: 'tcp' as string | undefined },
  // Shared memory with cma left out: a peer's registered Buffer is then reached through UCX's
  // emulated put, as when the kernel refuses the cross-memory copy (EPERM) or
  // KVXFER_UCX_DIRECT_COPY=0.
  { label: 'shared memory without cma', transports: 'posix,sysv,self' as string | undefined },
]
/** Every engine here with every transport choice. */
const VARIANTS = ENGINES.flatMap((engine, e) => TRANSPORTS.map((t, i) => ({ ...t, engine, seedBase: (e * TRANSPORTS.length + i) * 100_000 + 1 })))

reportNixlSkipped('two-process transfers (default transports and tcp)')

/** i -> (i * 7919 + 13) mod n: a fixed permutation of [0, n) (7919 is prime, so coprime with n = 1000). */
const perm = (i: number, n: number) => (i * 7919 + 13) % n

describe.each(VARIANTS)('$engine engine: two processes, $label', { timeout: 120_000 }, ({ engine, transports, seedBase }) => {
  let agent: Agent
  let peer: Peer
  let peerName: string
  let local: Region // allocate()d, REGION bytes
  let remote: PeerRegion // allocate()d in the peer, REGION bytes
  let remoteBuf: PeerRegion // a registered Buffer in the peer
  let seed = seedBase
  const nextSeed = () => ++seed

  /** Host memory of every kind register() takes; each must move correct bytes. */
  const kinds: Record<string, () => ArrayBufferLike | ArrayBufferView> = {
    Buffer: () => Buffer.alloc(96 * KiB),
    'pooled Buffer (non-zero byteOffset)': () => Buffer.allocUnsafe(1000),
    'Uint8Array at byteOffset 96': () => new Uint8Array(new ArrayBuffer(96 * KiB + 96), 96, 96 * KiB),
    Float64Array: () => new Float64Array(12 * KiB),
    'DataView at byteOffset 8': () => new DataView(new ArrayBuffer(64 * KiB + 8), 8, 64 * KiB),
    ArrayBuffer: () => new ArrayBuffer(80 * KiB),
    SharedArrayBuffer: () => new SharedArrayBuffer(72 * KiB),
  }
  const kindRegions = new Map<string, { region: Region; bytes: Buffer; memory: unknown }>()

  beforeAll(async () => {
    agent = await createAgent('xfer', { engine, transports })
    peer = await spawnPeer({ engine, transports })
    local = await agent.allocate(REGION)
    for (const [kind, make] of Object.entries(kinds)) {
      const memory = make()
      const region = await agent.register(memory as never)
      kindRegions.set(kind, { region, bytes: asBuffer(memory), memory })
    }
    remote = await peer.allocate(REGION)
    remoteBuf = await peer.register(256 * KiB, 'Buffer')
    // Regions first, then metadata: a peer's metadata describes the regions it had then.
    peerName = await exchangeMetadata(agent, peer)
  }, 60_000)

  afterAll(async () => {
    await closeAll(agent)
    await disposeAllPeers()
  }, 60_000)

  it('both agents run on the engine under test', () => {
    expect(agent.engine).toBe(engine)
    expect(peer.engine).toBe(engine)
  })

  it('the regions have the sizes and kinds asked for', () => {
    expect(local.length).toBe(REGION)
    expect(local.kind).toBe('dram')
    expect(remote.length).toBe(REGION)
    expect(remote.kind).toBe('dram')
    for (const [kind, { region, bytes }] of kindRegions) {
      expect(region.length, kind).toBe(bytes.length)
    }
    // allocate() memory is zero-filled
    expect(local.view(0, 64 * KiB).equals(Buffer.alloc(64 * KiB))).toBe(true)
  })

  // ---- single descriptor, every size ------------------------------------------------------------

  describe.each(SIZES)('%i bytes, one descriptor', (size) => {
    it('WRITE: the peer hashes exactly the bytes we sent', async () => {
      const s = nextSeed()
      const src = fillBytes(local.view(LOCAL_OFF, size), s)
      const want = sha256(src)
      // Poison the destination with the bitwise inverse of the source; record the guard bytes.
      await peer.poison(remote, s, REMOTE_OFF, size)
      expect(await peer.hash(remote, REMOTE_OFF, size)).not.toBe(want)
      const guardsBefore = await peer.hashSlices(remote, [[REMOTE_OFF - GUARD, GUARD], [REMOTE_OFF + size, GUARD]])

      const res = await agent.write(local.slice(LOCAL_OFF, size), rdesc(remote, REMOTE_OFF, size), peerName, { timeoutMs: XFER_TIMEOUT })

      expect(res.bytes).toBe(size)
      expect(typeof res.durationNs).toBe('number')
      // NIXL reports its own measurement of each transfer; UCX has none.
      if (engine === 'nixl') expect(res.telemetry).toMatchObject({ bytes: size, descriptors: 1 })
      else expect(res.telemetry).toBeUndefined()
      expect(await peer.hash(remote, REMOTE_OFF, size)).toBe(want)
      expect(await peer.hashSlices(remote, [[REMOTE_OFF - GUARD, GUARD], [REMOTE_OFF + size, GUARD]]),
        'bytes next to the destination changed').toBe(guardsBefore)
    })

    it('READ: we hash exactly the bytes the peer holds', async () => {
      const s = nextSeed()
      const want = await peer.fill(remote, s, REMOTE_OFF, size)
      const dst = invertBytes(fillBytes(local.view(LOCAL_OFF, size), s))
      expect(sha256(dst)).not.toBe(want)
      const around = () => Buffer.concat([local.view(0, LOCAL_OFF), local.view(LOCAL_OFF + size, GUARD)])
      const before = around()

      const res = await agent.read(local.slice(LOCAL_OFF, size), rdesc(remote, REMOTE_OFF, size), peerName, { timeoutMs: XFER_TIMEOUT })

      expect(res.bytes).toBe(size)
      expect(sha256(local.view(LOCAL_OFF, size))).toBe(want)
      expect(around().equals(before), 'bytes next to the destination changed').toBe(true)
    })
  })

  it('WRITE and READ into a Buffer the peer registered (not allocate()d)', async () => {
    const size = 200 * KiB + 3
    const s = nextSeed()
    const want = sha256(fillBytes(local.view(0, size), s))
    await peer.poison(remoteBuf, s, 11, size)
    await agent.write(local.slice(0, size), rdesc(remoteBuf, 11, size), peerName)
    expect(await peer.hash(remoteBuf, 11, size)).toBe(want)

    const want2 = await peer.fill(remoteBuf, nextSeed(), 5, size)
    await agent.read(local.slice(1, size), rdesc(remoteBuf, 5, size), peerName)
    expect(sha256(local.view(1, size))).toBe(want2)
  })

  it.each(Object.keys(kinds))('WRITE and READ from registered host memory: %s', async (kind) => {
    const { region, bytes } = kindRegions.get(kind)!
    const n = bytes.length
    // WRITE all of it (passing the Region itself as `local`)
    const s = nextSeed()
    fillBytes(bytes, s)
    const want = sha256(bytes)
    await peer.poison(remote, s, REMOTE_OFF, n)
    const res = await agent.write(region, rdesc(remote, REMOTE_OFF, n), peerName)
    expect(res.bytes).toBe(n)
    expect(await peer.hash(remote, REMOTE_OFF, n)).toBe(want)
    // READ into an inner slice; check it through the JS object we registered, not through kvxfer
    const off = 5
    const len = n - 9
    const want2 = await peer.fill(remote, nextSeed(), REMOTE_OFF, len)
    const head = Buffer.from(bytes.subarray(0, off))
    const tail = Buffer.from(bytes.subarray(off + len))
    await agent.read(region.slice(off, len), rdesc(remote, REMOTE_OFF, len), peerName)
    expect(sha256(bytes.subarray(off, off + len))).toBe(want2)
    expect(bytes.subarray(0, off).equals(head)).toBe(true)
    expect(bytes.subarray(off + len).equals(tail)).toBe(true)
  })

  // ---- many descriptors in one request ----------------------------------------------------------

  describe('1,000 descriptors of 4 KiB in one request', () => {
    const N = 1000
    const L = 4 * KiB
    const BASE = 64 * KiB + 3 // remote descriptors: unaligned, stride 8 KiB, a 4 KiB gap after each
    // local descriptor i is block perm(i) of a dense 4,000 KiB area: scattered, out of order
    const localSlices: Slice[] = range(N).map((i) => [perm(i, N) * L, L])
    const remoteSlices: Slice[] = range(N).map((i) => [BASE + i * 2 * L, L])
    const gapSlices: Slice[] = [[BASE - L, L], ...range(N).map((i): Slice => [BASE + i * 2 * L + L, L])]
    const localList = () => DescList.from(localSlices.map(([o, l]) => local.slice(o, l)))

    it('WRITE: every block lands at its own remote address, the gaps stay untouched', async () => {
      const s = nextSeed()
      const area = fillBytes(local.view(0, N * L), s)
      const want = sha256Slices(area, localSlices)
      await peer.fill(remote, s + 7, BASE - L, 2 * N * L + L)
      const gapsBefore = await peer.hashSlices(remote, gapSlices)
      expect(await peer.hashSlices(remote, remoteSlices)).not.toBe(want)

      // The peer encodes its descriptors; we decode them (the cross-process use of DescList).
      const remoteList = DescList.decode(await peer.encodeDescs(remote, remoteSlices))
      expect(remoteList.length).toBe(N)
      expect(remoteList.totalBytes).toBe(N * L)
      const list = localList()
      expect(list.length).toBe(N)

      const res = await agent.write(list, remoteList, peerName, { timeoutMs: XFER_TIMEOUT })

      expect(res.bytes).toBe(N * L)
      expect(await peer.hashSlices(remote, remoteSlices)).toBe(want)
      expect(await peer.hashSlices(remote, gapSlices), 'a gap between descriptors was written').toBe(gapsBefore)
    })

    it('READ: every block comes from its own remote address', async () => {
      const s = nextSeed()
      await peer.fill(remote, s, BASE - L, 2 * N * L + L)
      const want = await peer.hashSlices(remote, remoteSlices)
      invertBytes(fillBytes(local.view(0, N * L), s))
      const after = Buffer.from(local.view(N * L, GUARD))
      const remoteList = DescList.from(remoteSlices.map(([o, l]) => rdesc(remote, o, l)))

      const res = await agent.read(localList(), remoteList, peerName, { timeoutMs: XFER_TIMEOUT })

      expect(res.bytes).toBe(N * L)
      expect(sha256Slices(local.view(0, N * L), localSlices)).toBe(want)
      expect(local.view(N * L, GUARD).equals(after)).toBe(true)
    })
  })

  // On one host a peer's registered Buffer is reached by the kernel's cross-memory copy, which
  // takes at most 1,024 descriptors per call; its allocate()d memory is mapped here and copied
  // by memcpy. One request mixing both, more than two batches long: every byte where it belongs.
  describe('2,500 descriptors alternating between a peer Buffer and its allocate()d memory', () => {
    const N = 2500
    const L = 61
    const STRIDE = 97
    const into = (i: number) => (i % 2 === 0 ? remoteBuf : remote)
    const slot = (i: number) => Math.floor(i / 2) * STRIDE + 5
    const localSlices: Slice[] = range(N).map((i) => [perm(i, N) * L, L])
    const slicesOf = (region: 0 | 1): Slice[] => range(N).filter((i) => i % 2 === region).map((i): Slice => [slot(i), L])
    const gapsOf = (region: 0 | 1): Slice[] => range(N).filter((i) => i % 2 === region).map((i): Slice => [slot(i) + L, STRIDE - L])
    const remoteList = () => DescList.from(range(N).map((i) => rdesc(into(i), slot(i), L)))
    const localList = () => DescList.from(localSlices.map(([o, l]) => local.slice(o, l)))
    /** The local bytes in the order of the remote descriptors that land in region `r`. */
    const wantFor = (area: Buffer, r: 0 | 1) => sha256Slices(area, localSlices.filter((_, i) => i % 2 === r))

    it('WRITE: every block lands in its region at its address, the gaps stay untouched', async () => {
      const s = nextSeed()
      const area = fillBytes(local.view(0, N * L), s)
      const span = slot(N - 1) + STRIDE
      await peer.fill(remoteBuf, s + 3, 0, span)
      await peer.fill(remote, s + 4, 0, span)
      const gaps = [await peer.hashSlices(remoteBuf, gapsOf(0)), await peer.hashSlices(remote, gapsOf(1))]

      const res = await agent.write(localList(), remoteList(), peerName, { timeoutMs: XFER_TIMEOUT })

      expect(res.bytes).toBe(N * L)
      expect(await peer.hashSlices(remoteBuf, slicesOf(0))).toBe(wantFor(area, 0))
      expect(await peer.hashSlices(remote, slicesOf(1))).toBe(wantFor(area, 1))
      expect(await peer.hashSlices(remoteBuf, gapsOf(0)), 'a gap in the Buffer was written').toBe(gaps[0])
      expect(await peer.hashSlices(remote, gapsOf(1)), 'a gap in allocate()d memory was written').toBe(gaps[1])
    })

    it('READ: every block comes from its region and address', async () => {
      const s = nextSeed()
      const span = slot(N - 1) + STRIDE
      await peer.fill(remoteBuf, s, 0, span)
      await peer.fill(remote, s + 1, 0, span)
      const want = [await peer.hashSlices(remoteBuf, slicesOf(0)), await peer.hashSlices(remote, slicesOf(1))]
      invertBytes(fillBytes(local.view(0, N * L), s))

      const res = await agent.read(localList(), remoteList(), peerName, { timeoutMs: XFER_TIMEOUT })

      expect(res.bytes).toBe(N * L)
      expect(wantFor(local.view(0, N * L), 0)).toBe(want[0])
      expect(wantFor(local.view(0, N * L), 1)).toBe(want[1])
    })
  })

  // ---- prepared transfers -----------------------------------------------------------------------

  describe('a prepared transfer posted several times', () => {
    const SIZE = 1 * MiB
    const R_OFF = 8 * MiB + 1

    it('WRITE: each post moves the bytes the local memory holds at that moment', async () => {
      // local and remote given as arrays of descriptors (not DescLists): two halves
      const xfer = agent.prepare({
        op: 'write',
        local: [local.slice(0, SIZE / 2), local.slice(SIZE / 2, SIZE / 2)],
        remote: [rdesc(remote, R_OFF, SIZE / 2), rdesc(remote, R_OFF + SIZE / 2, SIZE / 2)],
        peer: peerName,
      })
      try {
        for (let round = 0; round < 5; round++) {
          const s = nextSeed()
          const want = sha256(fillBytes(local.view(0, SIZE), s))
          await peer.poison(remote, s, R_OFF, SIZE)
          const res = await xfer.post({ timeoutMs: XFER_TIMEOUT })
          expect(res.bytes).toBe(SIZE)
          expect(await peer.hash(remote, R_OFF, SIZE), `round ${round}`).toBe(want)
        }
      } finally {
        xfer.release()
      }
      expect(() => xfer.release(), 'release() is idempotent').not.toThrow()
    })

    it('READ with 1,000 descriptors: each post fetches what the peer holds at that moment', async () => {
      const N = 1000
      const L = 1 * KiB
      const localSlices: Slice[] = range(N).map((i) => [perm(i, N) * L, L])
      const remoteSlices: Slice[] = range(N).map((i) => [R_OFF + i * L, L])
      const xfer = agent.prepare({
        op: 'read',
        local: DescList.from(localSlices.map(([o, l]) => local.slice(o, l))),
        remote: DescList.decode(await peer.encodeDescs(remote, remoteSlices)),
        peer: peerName,
      })
      try {
        for (let round = 0; round < 4; round++) {
          await peer.fill(remote, nextSeed(), R_OFF, N * L)
          const want = await peer.hashSlices(remote, remoteSlices)
          invertBytes(local.view(0, N * L))
          const res = await xfer.post({ timeoutMs: XFER_TIMEOUT })
          expect(res.bytes).toBe(N * L)
          expect(sha256Slices(local.view(0, N * L), localSlices), `round ${round}`).toBe(want)
        }
      } finally {
        xfer.release()
      }
    })

    it('WRITE with notify: every post delivers the notification, after its data', async () => {
      const xfer = agent.prepare({
        op: 'write',
        local: local.slice(0, SIZE),
        remote: rdesc(remote, R_OFF, SIZE),
        peer: peerName,
        notify: `prepared-${seed}`,
      })
      const message = `prepared-${seed}`
      try {
        for (let round = 0; round < 3; round++) {
          const want = sha256(fillBytes(local.view(0, SIZE), nextSeed()))
          const armed = await peer.armWaitThenHash(agent.name, message, remote, R_OFF, SIZE)
          await xfer.post({ timeoutMs: XFER_TIMEOUT })
          const seen = await armed.finish()
          expect(seen.message).toBe(message)
          expect(seen.peer).toBe(agent.name)
          expect(seen.hash, `round ${round}: data not in place when the notification arrived`).toBe(want)
        }
      } finally {
        xfer.release()
      }
    })

    it('stats() count every post and its bytes', async () => {
      const before = agent.stats()
      const xfer = agent.prepare({ op: 'write', local: local.slice(0, 4 * KiB), remote: rdesc(remote, R_OFF, 4 * KiB), peer: peerName })
      for (let i = 0; i < 3; i++) await xfer.post()
      xfer.release()
      const after = agent.stats()
      expect(Number(after.transfers) - Number(before.transfers)).toBe(3)
      expect(Number(after.bytesWritten) - Number(before.bytesWritten)).toBe(3 * 4 * KiB)
      expect(Number(after.inFlight)).toBe(0)
      expect(after.peers[peerName], 'per-peer stats').toBeDefined()
      expect(Number(after.peers[peerName]!.bytes) - Number(before.peers[peerName]?.bytes ?? 0)).toBe(3 * 4 * KiB)
      // NIXL's per-transfer telemetry is summed in stats(); UCX has none.
      if (engine === 'nixl') {
        expect(after.telemetry!.transfers - (before.telemetry?.transfers ?? 0)).toBe(3)
        expect(after.telemetry!.bytes - (before.telemetry?.bytes ?? 0)).toBe(3 * 4 * KiB)
      } else {
        expect(after.telemetry).toBeUndefined()
      }
    })
  })

  // ---- concurrency ------------------------------------------------------------------------------

  describe('1,000 concurrent transfers into distinct slices', () => {
    const N = 1000
    const L = 4 * KiB

    it('WRITE: Promise.all of 1,000 agent.write calls, then one hash of the whole area', async () => {
      const s = nextSeed()
      const src = fillBytes(local.view(0, N * L), s)
      const expected = Buffer.alloc(N * L)
      for (let i = 0; i < N; i++) src.copy(expected, perm(i, N) * L, i * L, (i + 1) * L)
      await peer.poison(remote, s, 0, N * L)

      const results = await within(Promise.all(range(N).map((i) =>
        agent.write(local.slice(i * L, L), rdesc(remote, perm(i, N) * L, L), peerName, { timeoutMs: XFER_TIMEOUT }))),
      XFER_TIMEOUT + 10_000, '1,000 writes')

      expect(results.every((r) => r.bytes === L)).toBe(true)
      expect(await peer.hash(remote, 0, N * L)).toBe(sha256(expected))
      expect(Number(agent.stats().inFlight)).toBe(0)
    })

    it('READ: Promise.all of 1,000 agent.read calls, then one hash of the whole area', async () => {
      const s = nextSeed()
      const peerHash = await peer.fill(remote, s, 0, N * L)
      const remoteBytes = randomBytesFor(N * L, s) // what the peer wrote, computed here
      expect(sha256(remoteBytes), 'fixture: fillBytes differs between processes').toBe(peerHash)
      const expected = Buffer.alloc(N * L)
      for (let i = 0; i < N; i++) remoteBytes.copy(expected, i * L, perm(i, N) * L, (perm(i, N) + 1) * L)
      invertBytes(local.view(0, N * L))

      const results = await within(Promise.all(range(N).map((i) =>
        agent.read(local.slice(i * L, L), rdesc(remote, perm(i, N) * L, L), peerName, { timeoutMs: XFER_TIMEOUT }))),
      XFER_TIMEOUT + 10_000, '1,000 reads')

      expect(results.every((r) => r.bytes === L)).toBe(true)
      expect(sha256(local.view(0, N * L))).toBe(sha256(expected))
    })
  })

  it('64 lanes reposting small WRITEs do not starve the event loop: completions arrive one batch per loop turn', async () => {
    const LANES = 64
    const POSTS = 6400
    const L = 4 * KiB
    const R_OFF = 16 * MiB
    const s = nextSeed()
    const src = fillBytes(local.view(0, LANES * L), s)
    await peer.poison(remote, s, R_OFF, LANES * L)
    const lanes = range(LANES).map((i) =>
      agent.prepare({ op: 'write', local: [local.slice(i * L, L)], remote: [rdesc(remote, R_OFF + i * L, L)], peer: peerName }))
    let completed = 0
    let turns = 0
    let atLastTurn = 0
    let mostInOneTurn = 0
    let storming = true
    const turn = () => {
      if (!storming) return
      turns++
      mostInOneTurn = Math.max(mostInOneTurn, completed - atLastTurn)
      atLastTurn = completed
      setImmediate(turn)
    }
    setImmediate(turn)
    try {
      await within(Promise.all(lanes.map(async (xfer) => {
        while (completed < POSTS) {
          await xfer.post({ timeoutMs: XFER_TIMEOUT })
          completed++
        }
      })), XFER_TIMEOUT + 10_000, 'the reposting lanes')
    } finally {
      storming = false
      for (const xfer of lanes) xfer.release()
    }
    // A batch holds at most LANES completions (no more are in flight), so at one batch per
    // turn no turn sees more than LANES. Batches drained back to back within one turn, each
    // reposting the next, would show as many more.
    expect(mostInOneTurn, `${completed} completions in ${turns} loop turns`).toBeLessThanOrEqual(LANES)
    expect(turns).toBeGreaterThanOrEqual(Math.floor(completed / LANES))
    expect(await peer.hash(remote, R_OFF, LANES * L)).toBe(sha256(src))
  })

  // ---- notifications ----------------------------------------------------------------------------

  describe('notifications', () => {
    it('100 notifications from the peer arrive here in the order they were sent', async () => {
      const prefix = `order-in-${nextSeed()}-`
      const iter = agent.notifications()
      const first = iter.next() // listening before the peer starts sending
      const sending = settle(peer.notifyMany(agent.name, prefix, 100))
      const got: string[] = []
      const deadline = 30_000
      let step = await within(first, deadline, 'first notification')
      for (;;) {
        expect(step.done).toBe(false)
        const n = step.value!
        if (n.message.startsWith(prefix)) {
          expect(n.peer).toBe(peerName)
          expect(Buffer.from(n.data).toString('utf8')).toBe(n.message)
          got.push(n.message)
        }
        if (got.length === 100) break
        step = await within(iter.next(), deadline, `notification ${got.length}`)
      }
      await iter.return?.()
      expect(await sending).toEqual({ ok: true, value: 100 })
      expect(got).toEqual(range(100).map((i) => `${prefix}${i}`))
    })

    it('100 notifications from here arrive at the peer in the order they were sent', async () => {
      const prefix = `order-out-${nextSeed()}-`
      const collecting = await peer.armCollect(prefix, 100)
      for (let i = 0; i < 100; i++) await agent.notify(peerName, `${prefix}${i}`)
      const got = await collecting.finish()
      expect(got.map((n) => n.message)).toEqual(range(100).map((i) => `${prefix}${i}`))
      expect(got.every((n) => n.peer === agent.name)).toBe(true)
    })

    it('notifications alone and riding on WRITEs keep their order; each WRITE\'s data is in place on arrival', async () => {
      const prefix = `mix-${nextSeed()}-`
      const SLOT = 1 * MiB // large enough that a notification sent ahead of its data would be caught
      const count = 20
      const hashes: Record<string, { region: number; offset: number; length: number }> = {}
      for (let k = 1; k < count; k += 2) hashes[`${prefix}${k}`] = { region: remote.id, offset: 16 * MiB + k * SLOT, length: SLOT }
      const collecting = await peer.armCollect(prefix, count, { hashes })
      const want: Record<string, string> = {}
      for (let k = 0; k < count; k++) {
        const message = `${prefix}${k}`
        if (k % 2 === 0) {
          await agent.notify(peerName, message)
        } else {
          want[message] = sha256(fillBytes(local.view(k * SLOT, SLOT), nextSeed()))
          await agent.write(local.slice(k * SLOT, SLOT), rdesc(remote, 16 * MiB + k * SLOT, SLOT), peerName, { notify: message })
        }
      }
      const got = await collecting.finish()
      expect(got.map((n) => n.message)).toEqual(range(count).map((k) => `${prefix}${k}`))
      for (const n of got) {
        if (want[n.message] !== undefined) expect(n.hash, `${n.message}: data not in place on arrival`).toBe(want[n.message])
      }
    })

    it.each([1 * MiB, 64 * MiB])('WRITE of %i bytes with notify: when the peer sees the notification, it hashes the new data', async (size) => {
      const rounds = size > MiB ? 2 : 10
      for (let round = 0; round < rounds; round++) {
        const message = `data-ready-${nextSeed()}`
        const want = sha256(fillBytes(local.view(LOCAL_OFF, size), seed))
        await peer.poison(remote, seed, REMOTE_OFF, size)
        const armed = await peer.armWaitThenHash(agent.name, message, remote, REMOTE_OFF, size)
        const res = await agent.write(local.slice(LOCAL_OFF, size), rdesc(remote, REMOTE_OFF, size), peerName,
          { notify: message, timeoutMs: XFER_TIMEOUT })
        expect(res.bytes).toBe(size)
        const seen = await armed.finish()
        expect(seen.hash, `round ${round}: the notification overtook the data`).toBe(want)
      }
    })

    it('the peer WRITEs into our memory with notify: when we see the notification, the data is here', async () => {
      const size = 4 * MiB
      const off = 32 * MiB + 5
      for (let round = 0; round < 5; round++) {
        const message = `to-us-${nextSeed()}`
        const want = await peer.fill(remote, seed, 0, size)
        invertBytes(local.view(off, size))
        const ourDescs = DescList.from([local.slice(off, size)]).encode()
        const waiting = agent.waitForNotification(peerName, message, { timeoutMs: 30_000 })
        const writing = settle(peer.transfer('write', remote, [[0, size]], ourDescs, agent.name, { notify: message }))
        const n = await waiting
        const got = sha256(local.view(off, size)) // in the same tick the notification was delivered
        expect(n.message).toBe(message)
        expect(n.peer).toBe(peerName)
        expect(got, `round ${round}: the notification overtook the data`).toBe(want)
        expect(await writing).toMatchObject({ ok: true, value: { bytes: size } })
      }
    })

    it('READ with notify tells the peer once the read is done', async () => {
      const size = 256 * KiB
      const message = `read-done-${nextSeed()}`
      const want = await peer.fill(remote, seed, REMOTE_OFF, size)
      const armed = await peer.start<{ message: string; peer: string }>('waitForNotification', { peer: agent.name, message, timeoutMs: 30_000 })
      await agent.read(local.slice(0, size), rdesc(remote, REMOTE_OFF, size), peerName, { notify: message })
      expect(sha256(local.view(0, size))).toBe(want)
      const n = await armed.finish()
      expect(n.message).toBe(message)
      expect(n.peer).toBe(agent.name)
    })

    it('binary, UTF-8 and 16 KiB messages arrive intact', async () => {
      const binary = new Uint8Array(300).map((_, i) => (i * 37) & 0xff)
      const utf8 = `héllo ✓ 𝄞 ${nextSeed()}`
      const big = Buffer.alloc(16 * KiB, 'k').toString('latin1') // exactly the 16 KiB maximum
      for (const message of [binary, utf8, big]) {
        const armed = await peer.start<{ message: string; data: Uint8Array; peer: string }>('waitForNotification',
          { peer: agent.name, message, timeoutMs: 30_000 })
        await agent.notify(peerName, message)
        const n = await armed.finish()
        const bytes = typeof message === 'string' ? Buffer.from(message, 'utf8') : Buffer.from(message)
        expect(Buffer.from(n.data).equals(bytes)).toBe(true)
        if (typeof message === 'string') expect(n.message).toBe(message)
      }
    })

    it('waitForNotification also takes one that already arrived, and consumes it exactly once', async () => {
      const message = `early-${nextSeed()}`
      await peer.notify(agent.name, message)
      // make sure it has arrived: a later notification on the same connection has arrived
      await peer.notify(agent.name, `${message}-fence`)
      await agent.waitForNotification(peerName, `${message}-fence`, { timeoutMs: 30_000 })
      const n = await agent.waitForNotification(peerName, message, { timeoutMs: 30_000 })
      expect(n.message).toBe(message)
      await rejectsWith(() => agent.waitForNotification(peerName, message, { timeoutMs: 200 }), 'ERR_TIMEOUT')
    })
  })
})

// ---- two forked peers, no agent in the test process ---------------------------------------------

describe.each(VARIANTS)('$engine engine: two forked peers, $label', { timeout: 120_000 }, ({ engine, transports }) => {
  afterAll(() => disposeAllPeers(), 30_000)

  it('peer A WRITEs to peer B with notify and READs back from B; B and A hash the bytes', async () => {
    const [a, b] = await Promise.all([spawnPeer({ engine, transports }), spawnPeer({ engine, transports })])
    const SIZE = 8 * MiB + 1
    const ra = await a.allocate(SIZE + 4 * KiB)
    const rb = await b.register(SIZE + 4 * KiB, 'Buffer')
    await exchangeMetadata(a, b)

    const want = await a.fill(ra, 4242, 0, SIZE)
    await b.poison(rb, 4242, 3, SIZE)
    const armed = await b.armWaitThenHash(a.name, 'a-to-b', rb, 3, SIZE)
    const bDescs = await b.encodeDescs(rb, [[3, SIZE]])
    const res = await a.transfer('write', ra, [[0, SIZE]], bDescs, b.name, { notify: 'a-to-b' })
    expect(res.bytes).toBe(SIZE)
    expect((await armed.finish()).hash).toBe(want)

    const want2 = await b.fill(rb, 4343, 3, SIZE)
    await a.transfer('read', ra, [[7, SIZE]], [{ address: rb.address + 3n, length: SIZE }], b.name)
    expect(await a.hash(ra, 7, SIZE)).toBe(want2)
  })
})
