// Peers that die, restart or share a name, on every engine: what waits on a dead peer settles
// by itself (no timeoutMs anywhere here), the application hears of it through peer events, a
// restarted peer replaces the old one explicitly, and a second live agent under a loaded name
// is refused rather than merged. The SIGKILL-mid-transfer programs are in test/faults.
import { afterEach, describe, expect, it } from 'vitest'
import type { Agent } from '../../dist/index.js'
import {
  ENGINES, MiB, closeAll, createAgent, eventually, exchangeMetadata, expectKvxferError, fillBytes, rdesc, recordPeerEvents,
  rejectsWith, settle, sha256, uniqueName, within,
} from '../fixtures/index.js'
import { disposeAllPeers, spawnPeer } from '../fixtures/peers.js'

/** Where a dead peer's waits must have settled, with no timeout set. */
const SETTLE_MS = 5_000

describe.each(ENGINES)('%s engine', (engine) => {
  describe('a peer that dies', { timeout: 60_000 }, () => {
    afterEach(() => disposeAllPeers(), 30_000)

    it('waitForNotification and a peer-filtered notifications() iterator on it reject ERR_PEER_UNREACHABLE; a "failed" peer event says why', async () => {
      const agent = await createAgent('wait-dead', { engine })
      const events = recordPeerEvents(agent)
      try {
        const peer = await spawnPeer({ engine })
        const name = await exchangeMetadata(agent, peer)
        // One notification arrives before the death: it is still handed out afterwards.
        await peer.notify(agent.name, 'before')
        await agent.waitForNotification(name, 'before')
        await peer.notify(agent.name, 'queued')
        await eventually('the queued notification', () => agent.stats().notificationsReceived === 2)

        const waiting = settle(agent.waitForNotification(name, 'never sent'))
        const iterator = agent.notifications({ peer: name })
        expect((await iterator.next()).value?.message).toBe('queued')
        const next = settle(iterator.next())
        // Notifications from any peer keep flowing to an unfiltered iterator: it does not fail.
        const anyPeer = agent.notifications()
        const anyNext = settle(within(anyPeer.next(), 60_000, 'unfiltered next()'))

        await peer.kill('SIGKILL')
        const [w, n] = await within(Promise.all([waiting, next]), SETTLE_MS, 'waits on a dead peer')
        expect(w.ok).toBe(false)
        expectKvxferError((w as { error: unknown }).error, 'ERR_PEER_UNREACHABLE')
        expect(n.ok).toBe(false)
        expectKvxferError((n as { error: unknown }).error, 'ERR_PEER_UNREACHABLE')
        // Once it is known dead, a new wait on it rejects at once, and so does a notify.
        await rejectsWith(() => agent.waitForNotification(name, 'later'), 'ERR_PEER_UNREACHABLE', 1_000)
        await rejectsWith(() => agent.notify(name, 'anyone?'), 'ERR_PEER_UNREACHABLE', SETTLE_MS)

        const failed = events.filter((e) => e.type === 'failed')
        expect(failed).toHaveLength(1)
        expect(failed[0]!.peer).toBe(name)
        expectKvxferError(failed[0]!.error, 'ERR_PEER_UNREACHABLE')
        expect(agent.stats().peers[name]?.failed).toBe(true)

        await anyPeer.return!()
        expect(await anyNext).toEqual({ ok: true, value: { done: true, value: undefined } })
      } finally {
        await closeAll(agent)
      }
    })

    it('peer events: loaded, updated (same agent, new regions), replaced (a restart under the name), forgotten', async () => {
      const agent = await createAgent('events', { engine })
      const events = recordPeerEvents(agent)
      try {
        const name = uniqueName('restarting')
        const first = await spawnPeer({ engine, name })
        const r1 = await first.allocate(MiB)
        await agent.loadPeer(await first.metadata())
        await first.allocate(MiB)
        await agent.loadPeer(await first.metadata())
        const local = await agent.allocate(MiB)
        const writes = Array.from({ length: 50 }, () => settle(agent.write(local, rdesc(r1, 0, MiB), name)))

        // A restart: the old process is gone, a new one takes the name. Its metadata replaces the
        // old peer; the old one's work has failed, the new one works.
        await first.kill('SIGKILL')
        const second = await spawnPeer({ engine, name })
        const r2 = await second.allocate(MiB)
        expect(await agent.loadPeer(await second.metadata())).toBe(name)
        for (const outcome of await within(Promise.all(writes), SETTLE_MS, 'writes to the old incarnation')) {
          if (!outcome.ok) expectKvxferError(outcome.error, 'ERR_PEER_UNREACHABLE')
        }
        const want = sha256(fillBytes(local.view(), 3))
        await agent.write(local, rdesc(r2, 0, MiB), name)
        expect(await second.hash(r2)).toBe(want)
        expect(agent.stats().peers[name]?.failed).toBe(false)

        await agent.forgetPeer(name)
        const types = events.filter((e) => e.type !== 'failed').map((e) => `${e.type}:${e.peer}`)
        expect(types).toEqual([`loaded:${name}`, `updated:${name}`, `replaced:${name}`, `forgotten:${name}`])
        // The old incarnation's death, seen by the owner thread, may or may not have come first.
        expect(events.filter((e) => e.type === 'failed').length).toBeLessThanOrEqual(1)
      } finally {
        await closeAll(agent)
      }
    })

    it('a new incarnation under a loaded name fails the old one\'s in-flight work at once, with no death to see', async () => {
      // The old process still runs but its agent is replaced (closed and recreated under the
      // same name, as a worker restarting its engine does): only the incarnation tells.
      const agent = await createAgent('incarnation', { engine })
      const events = recordPeerEvents(agent)
      try {
        const name = uniqueName('reborn')
        const peer = await spawnPeer({ engine, name })
        const r1 = await peer.allocate(MiB)
        await agent.loadPeer(await peer.metadata())
        // Registered before the old agent goes: a registration tells the loaded peers (pushes our
        // metadata), and that push would find the old incarnation's worker gone by itself.
        const local = await agent.allocate(MiB)
        await peer.close()
        await peer.create({ name, engine })
        const r2 = await peer.allocate(MiB)
        const stale = agent.prepare({ op: 'write', local, remote: rdesc(r1, 0, MiB), peer: name })
        expect(await agent.loadPeer(await peer.metadata())).toBe(name)
        expect(events.map((e) => e.type)).toEqual(['loaded', 'failed', 'replaced'])
        // The transfer prepared against the old incarnation is refused, the new one works.
        await rejectsWith(() => stale.post(), 'ERR_PEER_UNREACHABLE', SETTLE_MS)
        stale.release()
        const want = sha256(fillBytes(local.view(), 4))
        await agent.write(local, rdesc(r2, 0, MiB), name)
        expect(await peer.hash(r2)).toBe(want)
      } finally {
        await closeAll(agent)
      }
    })

    it('two live agents under one name: the second one\'s metadata is refused with ERR_NAME_IN_USE, the first keeps working', async () => {
      const agent = await createAgent('two-names', { engine })
      try {
        const name = uniqueName('twin')
        const one = await spawnPeer({ engine, name })
        const two = await spawnPeer({ engine, name })
        const r1 = await one.allocate(MiB)
        await agent.loadPeer(await one.metadata())
        const e = await rejectsWith(async () => agent.loadPeer(await two.metadata()), 'ERR_NAME_IN_USE')
        expect(e.message).toContain(`forgetPeer('${name}')`)
        if (engine === 'ucx') {
          // The second one's notifications are reported as a conflict, not delivered as the first's.
          // (NIXL's notifications carry only a name.)
          const events = recordPeerEvents(agent)
          await one.loadPeer(agent.metadata())
          await two.loadPeer(agent.metadata())
          await two.notify(agent.name, 'from-two')
          await one.notify(agent.name, 'from-one')
          await agent.waitForNotification(name, 'from-one')
          await eventually('the conflict event', () => events.some((ev) => ev.type === 'conflict'))
          const conflict = events.find((ev) => ev.type === 'conflict')!
          expect(conflict.peer).toBe(name)
          expect(conflict.notification?.message).toBe('from-two')
          await rejectsWith(() => agent.waitForNotification(name, 'from-two', { timeoutMs: 200 }), 'ERR_TIMEOUT')
        }
        const local = await agent.allocate(MiB)
        const want = sha256(fillBytes(local.view(), 5))
        await agent.write(local, rdesc(r1, 0, MiB), name)
        expect(await one.hash(r1)).toBe(want)
        // Forgetting the first is how to switch to the second, even while a transfer prepared
        // against the first still holds its connection.
        const held = agent.prepare({ op: 'write', local, remote: rdesc(r1, 0, MiB), peer: name })
        await agent.forgetPeer(name)
        const r2 = await two.allocate(MiB)
        expect(await agent.loadPeer(await two.metadata())).toBe(name)
        await agent.write(local, rdesc(r2, 0, MiB), name)
        expect(await two.hash(r2)).toBe(want)
        held.release()
      } finally {
        await closeAll(agent)
      }
    })
  })

  describe('a peer that deregisters', { timeout: 60_000 }, () => {
    afterEach(() => disposeAllPeers(), 30_000)

    it('its deregistered Buffer is refused ERR_NOT_REGISTERED to new and to prepared transfers, and is never written', async () => {
      const agent = await createAgent('revoked', { engine })
      try {
        const peer = await spawnPeer({ engine })
        const buffer = await peer.register(MiB, 'Buffer')
        const other = await peer.register(MiB, 'Buffer')
        const name = await exchangeMetadata(agent, peer)
        const local = await agent.allocate(MiB)
        fillBytes(local.view(), 6)
        const prepared = agent.prepare({ op: 'write', local, remote: rdesc(buffer, 0, MiB), peer: name })
        const untouched = await peer.poison(buffer, 6)

        // The peer deregisters; its metadata as we loaded it still lists the region, and the
        // Buffer stays alive in the peer (JS owns it). The revocation reaches us by itself.
        await peer.deregister(buffer, true)
        await eventually('the revocation', () => {
          try {
            agent.prepare({ op: 'write', local, remote: rdesc(buffer, 0, MiB), peer: name }).release()
            return false
          } catch (error) {
            expectKvxferError(error, 'ERR_NOT_REGISTERED')
            return true
          }
        }, 2_000)
        const e = await rejectsWith(() => prepared.post(), 'ERR_NOT_REGISTERED')
        expect(e.message).toContain('deregistered')
        prepared.release()
        await rejectsWith(() => agent.write(local, rdesc(buffer, 0, MiB), name), 'ERR_NOT_REGISTERED')
        expect(await peer.hashMemory(buffer), 'the deregistered Buffer was written').toBe(untouched)
        // The peer's other region still takes writes.
        const want = sha256(local.view())
        await agent.write(local, rdesc(other, 0, MiB), name)
        expect(await peer.hash(other)).toBe(want)
      } finally {
        await closeAll(agent)
      }
    })
  })

  describe('stats', () => {
    it('notificationsSent counts the notification of a transfer as well as notify()', async () => {
      const a = await createAgent('stats-a', { engine })
      const b = await createAgent('stats-b', { engine })
      try {
        const ra = await a.allocate(MiB)
        const rb = await b.allocate(MiB)
        await exchangeMetadata(a, b)
        await a.write(ra, rb, b.name, { notify: 'with-write' })
        await a.notify(b.name, 'alone')
        await b.waitForNotification(a.name, 'with-write')
        await b.waitForNotification(a.name, 'alone')
        expect(a.stats().notificationsSent).toBe(2)
        expect(b.stats().notificationsReceived).toBe(2)
      } finally {
        await closeAll(a, b)
      }
    })
  })
})
