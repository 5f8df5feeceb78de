// Metadata that changes while peers hold it, on every engine: a region registered later reaches
// the peers by itself and merges into the peer they hold (prepared transfers stay valid, nothing
// is duplicated); a region deregistered and registered again is reachable again; a peer that
// leaves (discovery saw it go) fails its work with the reason; this agent says when its own
// metadata changed.
import { afterEach, describe, expect, it } from 'vitest'
import { Agent, type PeerEvent, type Region } from '../../dist/index.js'
import {
  ENGINES, MiB, closeAll, createAgent, eventually, exchangeMetadata, expectKvxferError, fillBytes, rdesc, recordPeerEvents,
  rejectsWith, settle, sha256, within,
} from '../fixtures/index.js'
import { disposeAllPeers, spawnPeer } from '../fixtures/peers.js'

// Whether `remote` of `peer` is known here yet (a prepare into it is refused until its metadata arrived).
function tryPrepare(agent: Agent, local: Region, remote: Region, peer: string): boolean {
  try {
    agent.prepare({ op: 'write', local: local.slice(0, 1), remote: remote.slice(0, 1), peer }).release()
    return true
  } catch {
    return false
  }
}

describe.each(ENGINES)('%s engine', (engine) => {
  afterEach(() => disposeAllPeers(), 30_000)

  it('a region a loaded peer registers later reaches us by itself: merged in place, prepared transfers stay valid', { timeout: 60_000 }, async () => {
    const agent = await createAgent('pushed', { engine })
    const events = recordPeerEvents(agent)
    try {
      const peer = await spawnPeer({ engine })
      const first = await peer.register(MiB)
      const name = await exchangeMetadata(agent, peer)
      const local = await agent.allocate(MiB)
      const prepared = agent.prepare({ op: 'write', local, remote: rdesc(first, 0, MiB), peer: name })

      const later = await peer.register(2 * MiB, 'Uint8Array')
      await eventually('the pushed update', () => events.some((e) => e.type === 'updated' && e.peer === name))
      // Into the new region, with nobody passing metadata around again.
      let want = sha256(fillBytes(local.view(), 21))
      await agent.write(local, rdesc(later, MiB, MiB), name)
      expect(await peer.hash(later, MiB, MiB)).toBe(want)
      // The transfer prepared before the update still posts, into the first region.
      want = sha256(fillBytes(local.view(), 22))
      await prepared.post()
      expect(await peer.hash(first)).toBe(want)

      // Loading the same metadata by hand again is an update of the same peer, not a second one.
      expect(await agent.loadPeer(await peer.metadata())).toBe(name)
      await prepared.post()
      expect(Object.keys(agent.stats().peers)).toEqual([name])
      expect(events.filter((e) => e.type !== 'updated').map((e) => e.type)).toEqual(['loaded'])
      prepared.release()
    } finally {
      await closeAll(agent)
    }
  })

  it('deregistered and registered again (the same Buffer, so the same address): reachable again, and the old one is refused meanwhile', { timeout: 60_000 }, async () => {
    const agent = await createAgent('again', { engine })
    const events = recordPeerEvents(agent)
    try {
      const peer = await spawnPeer({ engine })
      const region = await peer.register(MiB)
      const name = await exchangeMetadata(agent, peer)
      const local = await agent.allocate(MiB)
      await agent.write(local, rdesc(region, 0, MiB), name)

      await peer.deregister(region, true)
      await rejectsWith(async () => {
        // The revocation travels on its own: retry until it has arrived.
        for (;;) {
          await agent.write(rdesc(local, 0, 4096), rdesc(region, 0, 4096), name)
          await new Promise((resolve) => setTimeout(resolve, 5))
        }
      }, 'ERR_NOT_REGISTERED', 5_000)
      const updates = events.filter((e) => e.type === 'updated').length
      const back = await peer.reregister(region)
      expect(back.address).toBe(region.address)
      await eventually('the pushed update', () => events.filter((e) => e.type === 'updated').length > updates)
      const want = sha256(fillBytes(local.view(), 23))
      await agent.write(local, rdesc(back, 0, MiB), name)
      expect(await peer.hash(back)).toBe(want)
    } finally {
      await closeAll(agent)
    }
  })

  it('with pushUpdates off a new region stays unknown until its metadata is loaded again, which merges it', { timeout: 60_000 }, async () => {
    const agent = await createAgent('quiet', { engine })
    const events = recordPeerEvents(agent)
    try {
      const peer = await spawnPeer({ engine, pushUpdates: false })
      const first = await peer.allocate(MiB)
      const name = await exchangeMetadata(agent, peer)
      const local = await agent.allocate(MiB)
      const prepared = agent.prepare({ op: 'write', local, remote: rdesc(first, 0, MiB), peer: name })
      const later = await peer.allocate(MiB)
      await new Promise((resolve) => setTimeout(resolve, 200))
      expect(() => agent.prepare({ op: 'write', local, remote: rdesc(later, 0, MiB), peer: name })).toThrow(/no registered region/)
      expect(await agent.loadPeer(await peer.metadata())).toBe(name)
      expect(events.map((e) => e.type)).toEqual(['loaded', 'updated'])
      const want = sha256(fillBytes(local.view(), 24))
      await agent.write(local, rdesc(later, 0, MiB), name)
      expect(await peer.hash(later)).toBe(want)
      await prepared.post()
      prepared.release()
      await expect(Agent.create({ engine, pushUpdates: 'yes' as unknown as boolean })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' })
    } finally {
      await closeAll(agent)
    }
  })

  it('metadata({ regions }) is partial: a peer that loads it reaches those regions only, and loading more merges them in', { timeout: 60_000 }, async () => {
    const agent = await createAgent('partial', { engine, pushUpdates: false })
    const other = await createAgent('partial-other', { engine })
    try {
      const shared = await agent.allocate(MiB)
      const secret = await agent.allocate(MiB)
      const peer = await spawnPeer({ engine })
      const source = await peer.allocate(MiB)
      const name = await peer.loadPeer(agent.metadata({ regions: [shared] }))
      expect(name).toBe(agent.name)
      const whole = [[0, MiB]] as const
      const want = await peer.fill(source, 31)
      await peer.transfer('write', source, whole, [{ address: shared.address, length: MiB }], name)
      expect(sha256(shared.view())).toBe(want)
      const refused = await settle(peer.transfer('write', source, whole, [{ address: secret.address, length: MiB }], name))
      expect(refused.ok).toBe(false)
      expect((refused as { error: Error }).error.message).toMatch(/ERR_NOT_REGISTERED|no registered region/)
      expect(sha256(secret.view())).not.toBe(want)

      // The rest, later: merged into the same peer.
      expect(await peer.loadPeer(agent.metadata({ regions: [secret, secret] }))).toBe(name)
      await peer.transfer('write', source, whole, [{ address: secret.address, length: MiB }], name)
      expect(sha256(secret.view())).toBe(want)

      expect(() => agent.metadata({ regions: 'all' as unknown as [] })).toThrow(/array of Regions/)
      const foreign = await other.allocate(4096)
      expect(() => agent.metadata({ regions: [foreign] })).toThrow(/Regions this agent registered/)
      const gone = await agent.allocate(4096)
      await gone.deregister()
      expect(() => agent.metadata({ regions: [gone] })).toThrow(/deregistered/)
      if (engine === 'nixl') expect(() => agent.metadata({ format: 'nixl', regions: [shared] })).toThrow(/no partial form/)
      // Empty: connection details only; loading it connects and reaches nothing.
      expect(agent.metadata({ regions: [] }).byteLength).toBeLessThan(agent.metadata().byteLength)
    } finally {
      await closeAll(agent, other)
    }
  })

  it('forgetPeer(name, { reason }) fails in-flight, prepared and new work with ERR_PEER_UNREACHABLE naming the reason; a reload works again', { timeout: 60_000 }, async () => {
    const agent = await createAgent('leaver', { engine })
    try {
      const peer = await spawnPeer({ engine })
      const remote = await peer.allocate(4 * MiB)
      const name = await exchangeMetadata(agent, peer)
      const local = await agent.allocate(4 * MiB)
      const prepared = agent.prepare({ op: 'write', local, remote: rdesc(remote, 0, 4 * MiB), peer: name })
      await prepared.post()
      const inFlight = Array.from({ length: 64 }, () => settle(agent.write(local, rdesc(remote, 0, 4 * MiB), name)))

      await agent.forgetPeer(name, { reason: 'the etcd key went' })
      for (const outcome of await within(Promise.all(inFlight), 5_000, 'in-flight writes')) {
        // Those the engine finished before the forget reached it succeeded.
        if (!outcome.ok) {
          expectKvxferError(outcome.error, 'ERR_PEER_UNREACHABLE')
          expect((outcome.error as Error).message).toContain('the etcd key went')
        }
      }
      const again = await rejectsWith(() => prepared.post(), 'ERR_PEER_UNREACHABLE', 1_000)
      expect(again.message).toMatch(/left: the etcd key went/)
      const fresh = await rejectsWith(() => agent.write(local, rdesc(remote, 0, MiB), name), 'ERR_PEER_UNREACHABLE', 1_000)
      expect(fresh.message).toMatch(/left: the etcd key went/)
      prepared.release()

      // The same agent, loaded again (it came back): transfers work and land.
      expect(await agent.loadPeer(await peer.metadata())).toBe(name)
      const want = sha256(fillBytes(local.view(), 11))
      await agent.write(local, rdesc(remote, 0, 4 * MiB), name)
      expect(await peer.hash(remote)).toBe(want)
      // Forgetting a departed name that was not loaded again is not an error.
      await agent.forgetPeer(name, { reason: 'gone again' })
      await agent.forgetPeer(name)
      await rejectsWith(() => agent.write(local, rdesc(remote, 0, MiB), name), 'ERR_UNKNOWN_PEER', 1_000)
      await expect(agent.forgetPeer(name, { reason: 7 as unknown as string })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' })
    } finally {
      await closeAll(agent)
    }
  })

  // Hundreds of pushes of growing metadata (up to 12-16 KB by UCX version, several fragments each over shared memory)
  // and a notification of the largest size: on the UCX engine these are tagged messages that UCX
  // 1.13 may complete inside the receive call itself, and the agent then closes with none of them
  // left behind (a receive taken for pending there was once written to after it was freed, and
  // cancelled at close: SIGSEGV in about half the runs, and an ASan report in every run of
  // `npm run test:asan`, which runs this file).
  it('hundreds of pushed updates, each larger than the last, and a 16 KiB notification arrive whole; both agents close cleanly', { timeout: 60_000 }, async () => {
    const pusher = await createAgent('pusher', { engine })
    const receiver = await createAgent('receiver', { engine })
    const events = recordPeerEvents(receiver)
    try {
      await exchangeMetadata(receiver, pusher)
      await exchangeMetadata(pusher, receiver)
      let last
      for (let i = 0; i < 300; i++) last = await pusher.register(Buffer.alloc(4096 + i))
      // Longer than one of UCX's shared-memory segments (8 KiB), so the last pushes arrive in fragments.
      expect(pusher.metadata().length).toBeGreaterThan(8 * 1024)
      const local = await receiver.allocate(4096)
      await eventually('the last pushed update', () => events.some((e) => e.type === 'updated') && tryPrepare(receiver, local, last!, pusher.name))
      const want = sha256(fillBytes(local.view(), 31))
      await receiver.write(local, last!.slice(0, 4096), pusher.name)
      expect(sha256(Buffer.from(last!.view().subarray(0, 4096)))).toBe(want)

      const message = fillBytes(new Uint8Array(16 * 1024), 32)
      const arrived = receiver.waitForNotification(pusher.name, message, { timeoutMs: 10_000 })
      await pusher.notify(receiver.name, message)
      expect(sha256((await arrived).data)).toBe(sha256(message))
    } finally {
      await closeAll(pusher, receiver)
    }
  })

  it("'metadata' fires after each registration and deregistration, once metadata() has changed", async () => {
    const agent = await createAgent('md-events', { engine })
    try {
      const seen: Uint8Array[] = []
      const listener = () => seen.push(agent.metadata())
      agent.on('metadata', listener)
      const before = agent.metadata()
      const region = await agent.register(Buffer.alloc(MiB))
      expect(seen).toHaveLength(1)
      expect(Buffer.compare(seen[0]!, before)).not.toBe(0)
      const allocated = await agent.allocate(MiB)
      expect(seen).toHaveLength(2)
      await region.deregister()
      await allocated.deregister()
      expect(seen).toHaveLength(4)
      // A refused registration changes nothing and says nothing.
      await expect(agent.register({ kind: 'dram', address: 0n, length: 0 })).rejects.toBeDefined()
      agent.off('metadata', listener)
      await agent.allocate(MiB)
      expect(seen).toHaveLength(4)
      expect(() => agent.on('nonsense' as 'peer', () => {})).toThrow(/emits 'peer' and 'metadata'/)
    } finally {
      await closeAll(agent)
    }
  })
})
