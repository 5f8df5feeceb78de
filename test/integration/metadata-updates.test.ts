// Metadata that changes while peers hold it, on every engine: a peer that leaves (discovery saw
// it go) fails its work with the reason; this agent says when its own metadata changed.
import { afterEach, describe, expect, it } from 'vitest'
import {
  ENGINES, MiB, closeAll, createAgent, exchangeMetadata, expectKvxferError, fillBytes, rdesc, rejectsWith, settle, sha256,
  within,
} from '../fixtures/index.js'
import { disposeAllPeers, spawnPeer } from '../fixtures/peers.js'

describe.each(ENGINES)('%s engine', (engine) => {
  afterEach(() => disposeAllPeers(), 30_000)

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
