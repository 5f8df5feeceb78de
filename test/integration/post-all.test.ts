// Agent.postAll: prepared transfers posted as one burst to a peer in another process. Every
// transfer's bytes are checked at the other end; a burst with one bad member posts none of
// them (the others stay postable); a failure, a timeout and an abort each settle the burst,
// and the transfers can be posted again afterwards. On every engine.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Agent, Region, Transfer } from '../../dist/index.js'
import { ENGINES, KiB, closeAll, createAgent, exchangeMetadata, fillBytes, rdesc, rejectsWith, sha256 } from '../fixtures/index.js'
import { disposeAllPeers, spawnPeer, type Peer, type PeerRegion } from '../fixtures/peers.js'

const BLOCK = 64 * KiB
const COUNT = 16

describe.each(ENGINES)('%s engine: postAll', { timeout: 60_000 }, (engine) => {
  let agent: Agent
  let other: Agent
  let peer: Peer
  let name: string
  let local: Region
  let remote: PeerRegion
  let transfers: Transfer[]

  beforeAll(async () => {
    agent = await createAgent('post-all', { engine })
    other = await createAgent('post-all-other', { engine })
    peer = await spawnPeer({ engine })
    local = await agent.register(Buffer.alloc(COUNT * BLOCK))
    remote = await peer.allocate(COUNT * BLOCK)
    name = await exchangeMetadata(agent, peer)
    transfers = Array.from({ length: COUNT }, (_, i) =>
      agent.prepare({ op: 'write', local: [local.slice(i * BLOCK, BLOCK)], remote: [rdesc(remote, i * BLOCK, BLOCK)], peer: name }))
  }, 60_000)

  afterAll(async () => {
    for (const t of transfers ?? []) t.release()
    await closeAll(agent, other)
    await disposeAllPeers()
  })

  /** Every block of the local region gets its own bytes; returns the hash the peer must see. */
  function fillAll(seed: number): string {
    fillBytes(local.view(), seed)
    return sha256(local.view())
  }

  it('moves every transfer, in one burst, and resolves with their results in order', async () => {
    for (let round = 1; round <= 3; round++) {
      const want = fillAll(round)
      const results = await agent.postAll(transfers)
      expect(results).toHaveLength(COUNT)
      for (const r of results) expect(r.bytes).toBe(BLOCK)
      expect(await peer.hash(remote)).toBe(want)
    }
    expect(agent.stats().inFlight).toBe(0)
  })

  it("a burst into the peer's registered Buffer (not allocate()d memory) lands every byte", async () => {
    const buffer = await peer.register(COUNT * BLOCK, 'Buffer')
    // Its newer metadata, rather than waiting for the pushed update.
    await agent.loadPeer(await peer.metadata())
    const intoBuffer = Array.from({ length: COUNT }, (_, i) =>
      agent.prepare({ op: 'write', local: [local.slice(i * BLOCK, BLOCK)], remote: [rdesc(buffer, i * BLOCK, BLOCK)], peer: name }))
    try {
      const want = fillAll(21)
      const results = await agent.postAll(intoBuffer)
      expect(results.map((r) => r.bytes)).toEqual(Array.from({ length: COUNT }, () => BLOCK))
      expect(await peer.hash(buffer)).toBe(want)
    } finally {
      for (const t of intoBuffer) t.release()
    }
  })

  it('an empty burst resolves with no results', async () => {
    await expect(agent.postAll([])).resolves.toEqual([])
  })

  it('a released, repeated or foreign transfer refuses the whole burst, and posts none of it', async () => {
    const released = agent.prepare({ op: 'write', local: [local.slice(0, BLOCK)], remote: [rdesc(remote, 0, BLOCK)], peer: name })
    released.release()
    await peer.fill(remote, 77)
    const untouched = await peer.hash(remote)
    fillAll(5)
    await rejectsWith(() => agent.postAll([...transfers.slice(0, 4), released]), 'ERR_INVALID_ARG')
    await rejectsWith(() => agent.postAll([transfers[0]!, transfers[1]!, transfers[0]!]), 'ERR_INVALID_ARG')
    const peerOfOther = await other.loadPeer(await peer.metadata())
    const foreign = other.prepare({ op: 'write', local: [(await other.allocate(BLOCK)).slice(0, BLOCK)], remote: [rdesc(remote, 0, BLOCK)], peer: peerOfOther })
    await rejectsWith(() => agent.postAll([transfers[2]!, foreign]), 'ERR_INVALID_ARG')
    foreign.release()
    await rejectsWith(() => agent.postAll([transfers[3]!, {} as Transfer]), 'ERR_INVALID_ARG')
    await rejectsWith(() => agent.postAll('no' as unknown as Transfer[]), 'ERR_INVALID_ARG')
    expect(await peer.hash(remote)).toBe(untouched)
    // None of them was left in flight: all post again.
    const want = fillAll(6)
    await agent.postAll(transfers)
    expect(await peer.hash(remote)).toBe(want)
  })

  it('a transfer already in flight refuses the burst with ERR_BUSY', async () => {
    const inFlight = transfers[0]!.post()
    await rejectsWith(() => agent.postAll(transfers.slice(0, 3)), 'ERR_BUSY')
    await inFlight
    await agent.postAll(transfers.slice(0, 3))
  })

  it('a signal aborted before, or a zero timeout, settles the burst; the transfers post again after', async () => {
    const aborted = new AbortController()
    aborted.abort()
    await rejectsWith(() => agent.postAll(transfers, { signal: aborted.signal }), 'ERR_ABORTED')
    const timedOut = agent.postAll(transfers, { timeoutMs: 0 })
    const outcome = await timedOut.then(() => 'resolved', (e: { code?: string }) => e.code)
    // A burst may finish before a zero timer fires; what it must not do is hang or fail otherwise.
    expect(['resolved', 'ERR_TIMEOUT']).toContain(outcome)
    // Busy until the engine lets go of them (a timed-out burst may still be running).
    for (let i = 0; ; i++) {
      try {
        const want = fillAll(9)
        await agent.postAll(transfers)
        expect(await peer.hash(remote)).toBe(want)
        break
      } catch (error) {
        if ((error as { code?: string }).code !== 'ERR_BUSY' || i > 1000) throw error
        await new Promise((resolve) => setTimeout(resolve, 1))
      }
    }
  })

  it('a dead peer fails the burst with ERR_PEER_UNREACHABLE, with no timeout set', async () => {
    const victim = await spawnPeer({ engine })
    const region = await victim.allocate(COUNT * BLOCK)
    const victimName = await agent.loadPeer(await victim.metadata())
    const doomed = Array.from({ length: COUNT }, (_, i) =>
      agent.prepare({ op: 'write', local: [local.slice(i * BLOCK, BLOCK)], remote: [rdesc(region, i * BLOCK, BLOCK)], peer: victimName }))
    await victim.kill('SIGKILL')
    // The agent learns of the death at once (pidfd) or at the first transfer: either way the
    // burst is refused or fails, never hangs.
    await rejectsWith(async () => {
      for (;;) await agent.postAll(doomed)
    }, 'ERR_PEER_UNREACHABLE')
    for (const t of doomed) t.release()
    // The agent still works with the live peer.
    const want = fillAll(11)
    await agent.postAll(transfers)
    expect(await peer.hash(remote)).toBe(want)
  })
})
