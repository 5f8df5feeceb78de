// Discovery through a real etcd (EtcdDiscovery, lib/discovery/etcd.ts). Agents in other
// processes find each other only through etcd (no metadata passes through the test) and move
// bytes checked at the far end, both ways. A member that leaves, closes, is SIGKILLed or stalls
// past its TTL is seen to leave, and transfers to it reject ERR_PEER_UNREACHABLE; one that comes
// back under its name is loaded and usable again. etcd restarted under the members, or replaced
// by an empty one: they report the loss, re-join and go on. Compat and engine mismatches are
// reported, not connected; regions registered after join reach the peers; bad records in etcd
// are reported and skipped; connect() to a dead or silent endpoint fails within its bound.
import { createServer, type Socket } from 'node:net'
import { Etcd3 } from 'etcd3'
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest'
import { EtcdDiscovery, type Agent, type EtcdMembership, type Region } from '../../dist/index.js'
import { ENGINES, MiB, closeAll, createAgent, createAgents, eventually, fillBytes, rdesc, rejectsWith, reportNixlSkipped, sha256, uniqueName, within } from '../fixtures/index.js'
import { ETCD_ABSENT, EtcdServer, EventLog, TLS_ABSENT, freePort, stopAllEtcd } from '../fixtures/etcd.js'
import { disposeAllPeers, explain, killAllChildren, runFixture, spawnPeer, startFixture, type Peer, type PeerRegion } from '../fixtures/peers.js'

const TTL = 2
/** A crashed member's record goes at its TTL; etcd looks for expired leases every 0.5 s. */
const LEAVE_BOUND_MS = TTL * 1000 + 2000

/** Figures measured, printed once at the end. */
const figures: string[] = []
afterAll(() => {
  if (figures.length > 0) console.log(`etcd discovery figures:\n  ${figures.join('\n  ')}`)
})

describe.skipIf(ETCD_ABSENT !== null).each(ENGINES)('%s engine', (engine) => {
  let etcd: EtcdServer
  let namespace: string
  const agents: Agent[] = []
  const discoveries: EtcdDiscovery[] = []

  beforeEach(async () => {
    etcd = await EtcdServer.start()
    namespace = uniqueName('kvxfer-test')
  })
  afterEach(async () => {
    await Promise.all(discoveries.splice(0).map((d) => within(d.close(), 15_000, 'closing a discovery')))
    await closeAll(...agents.splice(0))
    await disposeAllPeers()
    await stopAllEtcd()
  }, 60_000)

  interface Local {
    agent: Agent
    discovery: EtcdDiscovery
    membership: EtcdMembership
    log: EventLog
    region: Region
  }

  /** An agent in this process with a 1 MiB region, joined. */
  async function localMember(prefix: string, opts: { info?: unknown; compat?: string; ttlSeconds?: number; autoConnect?: boolean } = {}): Promise<Local> {
    const agent = await createAgent(prefix, { engine })
    agents.push(agent)
    const region = await agent.allocate(MiB)
    const discovery = await EtcdDiscovery.connect({ endpoints: etcd.endpoint, namespace, ttlSeconds: opts.ttlSeconds ?? TTL })
    discoveries.push(discovery)
    const membership = await discovery.join(agent, { info: opts.info, compat: opts.compat, autoConnect: opts.autoConnect })
    return { agent, discovery, membership, log: new EventLog(membership.events()), region }
  }

  interface Remote {
    peer: Peer
    region: PeerRegion
  }

  /** An agent in another process with a 1 MiB region, joined. */
  async function remoteMember(opts: { name?: string; info?: unknown; compat?: string; ttlSeconds?: number } = {}): Promise<Remote> {
    const peer = await spawnPeer({ engine, ...(opts.name === undefined ? {} : { name: opts.name }) })
    const region = await peer.allocate(MiB)
    await peer.etcdJoin({ endpoints: etcd.endpoint, namespace, ttlSeconds: opts.ttlSeconds ?? TTL, info: opts.info, compat: opts.compat })
    return { peer, region }
  }

  /** This process's agent writes fresh bytes into the remote member's region; the far end's hash must match. */
  async function writeChecked(local: Local, remote: Remote, seed: number): Promise<void> {
    const want = sha256(fillBytes(local.region.view(), seed))
    await local.agent.write(local.region, rdesc(remote.region, 0, MiB), remote.peer.name, { timeoutMs: 10_000 })
    expect(await remote.peer.hash(remote.region), `bytes written to ${remote.peer.name}`).toBe(want)
  }

  /** The remote member writes fresh bytes into this process's region. */
  async function writtenChecked(remote: Remote, local: Local, seed: number): Promise<void> {
    const want = await remote.peer.fill(remote.region, seed)
    await remote.peer.transfer('write', remote.region, [[0, MiB]], [{ address: local.region.address, length: MiB }], local.agent.name, { timeoutMs: 10_000 })
    expect(sha256(local.region.view()), `bytes written by ${remote.peer.name}`).toBe(want)
  }

  it('members in other processes find each other only through etcd: join, peers() with their info, bytes checked both ways', async () => {
    const router = await localMember('router', { info: { role: 'router' } })
    const prefill = await remoteMember({ info: { role: 'prefill', tpRank: 0 } })
    const decode = await remoteMember({ info: { role: 'decode', tpRank: 1 } })
    await router.log.waitFor('join', { peer: prefill.peer.name })
    await router.log.waitFor('join', { peer: decode.peer.name })
    const peers = router.membership.peers().sort((a, b) => a.name.localeCompare(b.name))
    expect(peers.map((p) => [p.name, p.info, p.engine, p.pid])).toEqual(
      [
        [prefill.peer.name, { role: 'prefill', tpRank: 0 }, engine, prefill.peer.pid],
        [decode.peer.name, { role: 'decode', tpRank: 1 }, engine, decode.peer.pid],
      ].sort((a, b) => String(a[0]).localeCompare(String(b[0]))),
    )
    expect(router.membership.state).toBe('joined')
    expect(router.membership.key).toBe(`${namespace}/agents/${router.agent.name}`)
    await prefill.peer.etcdWaitFor('join', { peer: decode.peer.name })
    expect((await prefill.peer.etcdPeers()).map((p) => [p.name, p.info]).sort()).toEqual(
      [[router.agent.name, { role: 'router' }], [decode.peer.name, { role: 'decode', tpRank: 1 }]].sort(),
    )

    // Nobody called loadPeer: the memberships did, from the records.
    await writeChecked(router, prefill, 1)
    await writtenChecked(prefill, router, 2)
    const want = await prefill.peer.fill(prefill.region, 3)
    await prefill.peer.transfer('write', prefill.region, [[0, MiB]], [{ address: decode.region.address, length: MiB }], decode.peer.name)
    expect(await decode.peer.hash(decode.region)).toBe(want)

    // An iterator made now starts with who is there.
    const late = router.membership.events()
    const first = [await late.next(), await late.next()].map((r) => (r.value as { type: string; peer: string }))
    expect(first.map((e) => `${e.type} ${e.peer}`).sort()).toEqual([`join ${prefill.peer.name}`, `join ${decode.peer.name}`].sort())
    await late.return!()
  })

  it('leave() and agent.close() delete the record at once (TTL 30 s): the others see leave, transfers to it reject ERR_PEER_UNREACHABLE; joined again it is usable', async () => {
    const router = await localMember('router', { ttlSeconds: 30 })
    const worker = await remoteMember({ ttlSeconds: 30 })
    await router.log.waitFor('join', { peer: worker.peer.name })
    const prepared = router.agent.prepare({ op: 'write', local: router.region, remote: rdesc(worker.region, 0, MiB), peer: worker.peer.name })
    await prepared.post({ timeoutMs: 10_000 })

    let mark = router.log.mark
    const leftAt = Date.now()
    await worker.peer.etcdLeave()
    const leave = await router.log.waitFor('leave', { peer: worker.peer.name, from: mark, timeoutMs: 5_000 })
    expect(leave.at - leftAt, 'a revoked lease is seen at once, not at its 30 s TTL').toBeLessThan(5_000)
    expect(leave.reason).toContain('left')
    expect(router.membership.peers()).toEqual([])
    const refused = await rejectsWith(() => prepared.post({ timeoutMs: 10_000 }), 'ERR_PEER_UNREACHABLE')
    expect(refused.message).toContain('left')
    prepared.release()
    await rejectsWith(() => router.agent.write(router.region, rdesc(worker.region, 0, MiB), worker.peer.name), 'ERR_PEER_UNREACHABLE')

    mark = router.log.mark
    await worker.peer.etcdJoin({ endpoints: etcd.endpoint, namespace, ttlSeconds: 30 })
    await router.log.waitFor('join', { peer: worker.peer.name, from: mark })
    await writeChecked(router, worker, 4)

    // Closing the agent leaves too.
    mark = router.log.mark
    const closedAt = Date.now()
    await worker.peer.close()
    const closed = await router.log.waitFor('leave', { peer: worker.peer.name, from: mark, timeoutMs: 5_000 })
    expect(closed.at - closedAt).toBeLessThan(5_000)
    const raw = new Etcd3({ hosts: etcd.endpoint })
    try {
      expect(await raw.getAll().prefix(`${namespace}/agents/`).keys()).toEqual([`${namespace}/agents/${router.agent.name}`])
    } finally {
      raw.close()
    }
  })

  it(`a SIGKILLed member: the others see leave within TTL + 2 s (${TTL} s TTL), transfers to it reject ERR_PEER_UNREACHABLE; a new process under its name joins and is usable`, async () => {
    const router = await localMember('router')
    const name = uniqueName('worker')
    const victim = await remoteMember({ name })
    const witness = await remoteMember()
    await router.log.waitFor('join', { peer: name })
    await witness.peer.etcdWaitFor('join', { peer: name })
    await writeChecked(router, victim, 5)

    const mark = router.log.mark
    const witnessMark = await witness.peer.etcdMark()
    const killedAt = Date.now()
    await victim.peer.kill('SIGKILL')
    const leave = await router.log.waitFor('leave', { peer: name, from: mark, timeoutMs: LEAVE_BOUND_MS + 5_000 })
    const seen = await witness.peer.etcdWaitFor('leave', { peer: name, from: witnessMark, timeoutMs: LEAVE_BOUND_MS + 5_000 })
    figures.push(`${engine}: leave seen ${leave.at - killedAt} ms (in this process) and ${seen.at - killedAt} ms (in another) after SIGKILL, TTL ${TTL} s`)
    expect(leave.at - killedAt).toBeLessThan(LEAVE_BOUND_MS)
    expect(seen.at - killedAt).toBeLessThan(LEAVE_BOUND_MS)
    await rejectsWith(() => router.agent.write(router.region, rdesc(victim.region, 0, MiB), name), 'ERR_PEER_UNREACHABLE')

    const again = await remoteMember({ name })
    await router.log.waitFor('join', { peer: name, from: mark })
    await witness.peer.etcdWaitFor('join', { peer: name, from: witnessMark })
    await writeChecked(router, again, 6)
    await writtenChecked(again, router, 7)
  })

  it('etcd restarted under the members: they report disconnected, re-join, keep their peers, transfers work; later changes are seen (the watches resumed)', async () => {
    const router = await localMember('router')
    const a = await remoteMember()
    const b = await remoteMember()
    await router.log.waitFor('join', { peer: a.peer.name })
    await router.log.waitFor('join', { peer: b.peer.name })
    await a.peer.etcdWaitFor('join', { peer: b.peer.name })
    const mark = router.log.mark
    const marks = await Promise.all([a, b].map((m) => m.peer.etcdMark()))

    await etcd.kill()
    const lost = await router.log.waitFor('disconnected', { from: mark, timeoutMs: 10_000 })
    expect(lost.error.code).toBe('ERR_PEER_UNREACHABLE')
    expect(router.membership.state).toBe('rejoining')
    await new Promise((resolve) => setTimeout(resolve, 1_000))
    await etcd.resume()
    const upAt = Date.now()
    const rejoined = await router.log.waitFor('rejoined', { from: mark, timeoutMs: 15_000 })
    const remote = await Promise.all([a, b].map((m, i) => m.peer.etcdWaitFor('rejoined', { from: marks[i], timeoutMs: 15_000 })))
    for (const [i, m] of [a, b].entries()) {
      expect((await m.peer.etcdEvents(marks[i])).map((e) => e.type)).toContain('disconnected')
    }
    figures.push(`${engine}: re-joined ${rejoined.at - upAt} ms (this process), ${remote.map((e) => e.at - upAt).join(' and ')} ms (others) after etcd was back`)
    expect(router.membership.state).toBe('joined')
    expect(router.log.since(mark).filter((e) => e.startsWith('leave')), 'nobody left').toEqual([])
    expect(router.membership.peers().map((p) => p.name).sort()).toEqual([a.peer.name, b.peer.name].sort())
    await writeChecked(router, a, 8)
    await writtenChecked(b, router, 9)

    // The watches go on: a leave and a join after the restart are seen.
    const after = router.log.mark
    await b.peer.etcdLeave()
    await router.log.waitFor('leave', { peer: b.peer.name, from: after })
    const c = await remoteMember()
    await router.log.waitFor('join', { peer: c.peer.name, from: after })
    await a.peer.etcdWaitFor('join', { peer: c.peer.name })
    await writeChecked(router, c, 10)
  })

  it('a member stalled past its TTL (SIGSTOP): the others see it leave; resumed, it reports lease-lost, re-joins, and is loaded and usable again', async () => {
    const router = await localMember('router')
    const worker = await remoteMember()
    await router.log.waitFor('join', { peer: worker.peer.name })
    const mark = router.log.mark
    const workerMark = await worker.peer.etcdMark()
    const stoppedAt = Date.now()
    worker.peer.child.kill('SIGSTOP')
    try {
      const leave = await router.log.waitFor('leave', { peer: worker.peer.name, from: mark, timeoutMs: LEAVE_BOUND_MS + 5_000 })
      expect(leave.at - stoppedAt).toBeLessThan(LEAVE_BOUND_MS)
    } finally {
      worker.peer.child.kill('SIGCONT')
    }
    const lost = await worker.peer.etcdWaitFor('lease-lost', { from: workerMark, timeoutMs: 15_000 })
    expect(lost.code).toBe('ERR_LEASE_EXPIRED')
    await worker.peer.etcdWaitFor('rejoined', { from: workerMark, timeoutMs: 15_000 })
    await router.log.waitFor('join', { peer: worker.peer.name, from: mark, timeoutMs: 15_000 })
    await writeChecked(router, worker, 11)
  })

  it('autoConnect: false: nothing is loaded or forgotten; the events carry the metadata the application loads', async () => {
    const local = await localMember('manual', { autoConnect: false })
    const { agent, region, membership, log } = local
    const worker = await remoteMember()
    const join = await log.waitFor('join', { peer: worker.peer.name })
    await rejectsWith(() => agent.write(region, rdesc(worker.region, 0, MiB), worker.peer.name), 'ERR_UNKNOWN_PEER')
    expect(await agent.loadPeer(join.metadata)).toBe(worker.peer.name)
    expect(membership.peers()[0]!.metadata).toEqual(join.metadata)
    await writeChecked(local, worker, 20)
    const mark = log.mark
    await worker.peer.etcdLeave()
    await log.waitFor('leave', { peer: worker.peer.name, from: mark })
    // Not forgotten: the worker's agent lives on, and so does the connection to it.
    await writeChecked(local, worker, 21)
  })

  it('compat: a member with another compat tag is reported incompatible on both sides and not connected; peers() leaves it out', async () => {
    const router = await localMember('router', { compat: 'layout-a' })
    const other = await remoteMember({ compat: 'layout-b' })
    const same = await remoteMember({ compat: 'layout-a' })
    const incompatible = await router.log.waitFor('incompatible', { peer: other.peer.name })
    expect(incompatible.reason).toContain('layout-b')
    await router.log.waitFor('join', { peer: same.peer.name })
    expect(router.membership.peers().map((p) => p.name)).toEqual([same.peer.name])
    expect(router.log.since().filter((e) => e === `join ${other.peer.name}`)).toEqual([])
    // Not loaded: the agent does not know it.
    await rejectsWith(() => router.agent.write(router.region, rdesc(other.region, 0, MiB), other.peer.name), 'ERR_UNKNOWN_PEER')
    await writeChecked(router, same, 12)
    await other.peer.etcdWaitFor('incompatible', { peer: router.agent.name })
    await other.peer.etcdWaitFor('incompatible', { peer: same.peer.name })
    expect(await other.peer.etcdPeers()).toEqual([])
    expect((await other.peer.etcdEvents()).filter((e) => e.type === 'join')).toEqual([])
  })

  it('a region registered after join reaches the peers (update) and can be written to; one deregistered is refused', async () => {
    const router = await localMember('router')
    const worker = await remoteMember()
    await router.log.waitFor('join', { peer: worker.peer.name })
    await worker.peer.etcdWaitFor('join', { peer: router.agent.name })

    let mark = router.log.mark
    const added = await worker.peer.allocate(MiB)
    await router.log.waitFor('update', { peer: worker.peer.name, from: mark })
    const want = sha256(fillBytes(router.region.view(), 13))
    await router.agent.write(router.region, rdesc(added, 0, MiB), worker.peer.name, { timeoutMs: 10_000 })
    expect(await worker.peer.hash(added)).toBe(want)

    // And the other way: a region of this process's agent reaches the worker.
    const workerMark = await worker.peer.etcdMark()
    const mine = await router.agent.allocate(MiB)
    await worker.peer.etcdWaitFor('update', { peer: router.agent.name, from: workerMark })
    const theirs = await worker.peer.fill(worker.region, 14)
    await worker.peer.transfer('write', worker.region, [[0, MiB]], [{ address: mine.address, length: MiB }], router.agent.name, { timeoutMs: 10_000 })
    expect(sha256(mine.view())).toBe(theirs)

    mark = router.log.mark
    await worker.peer.deregister(added)
    await router.log.waitFor('update', { peer: worker.peer.name, from: mark })
    await rejectsWith(() => router.agent.write(router.region, rdesc(added, 0, MiB), worker.peer.name), 'ERR_NOT_REGISTERED')
  })

  it('bad records in etcd are reported invalid and skipped; a member overwritten with garbage stays usable and its owner reports displaced', async () => {
    const raw = new Etcd3({ hosts: etcd.endpoint })
    const key = (name: string) => `${namespace}/agents/${name}`
    try {
      // One there before anyone joins: join still works.
      await raw.put(key('early')).value('not json')
      const router = await localMember('router')
      expect(router.membership.peers()).toEqual([])
      const worker = await remoteMember()
      await router.log.waitFor('join', { peer: worker.peer.name })

      const record = (name: string, fields: Record<string, unknown> = {}) =>
        JSON.stringify({ v: 1, name, instance: '0123456789abcdef', engine, host: 'h', pid: 1, compat: null, info: null, metadata: Buffer.from('kvxfer').toString('base64'), ...fields })
      const cases: Array<[string, string | Buffer, string]> = [
        ['garbage', '{"v":1,', 'not JSON'],
        ['array', '[1,2,3]', 'not a JSON object'],
        ['future', record('future', { v: 2 }), 'version 2'],
        ['oversized', Buffer.alloc(1024 * 1024 + 100, 0x20), 'cap'],
        ['misnamed', record('someone-else'), 'names agent'],
        ['no-metadata', record('no-metadata', { metadata: '%%%' }), 'base64'],
        ['bad-engine', record('bad-engine', { engine: 'tcp' }), 'engine'],
        // Well-formed, but the metadata is not an agent's: the agent refuses it.
        ['bad-blob', record('bad-blob'), ''],
      ]
      for (const [name, value, why] of cases) {
        const mark = router.log.mark
        await raw.put(key(name)).value(value)
        const invalid = await router.log.waitFor('invalid', { peer: name, from: mark })
        expect(invalid.error.code, name).toBe('ERR_BAD_METADATA')
        expect(invalid.error.message, name).toContain(why)
        expect(invalid.key).toBe(key(name))
      }
      expect(router.membership.peers().map((p) => p.name)).toEqual([worker.peer.name])

      // The worker's own record overwritten: the router keeps the worker as it was, the worker
      // sees another writer under its name.
      const workerMark = await worker.peer.etcdMark()
      const mark = router.log.mark
      await raw.put(key(worker.peer.name)).value('garbage')
      await router.log.waitFor('invalid', { peer: worker.peer.name, from: mark })
      const displaced = await worker.peer.etcdWaitFor('displaced', { from: workerMark })
      expect(displaced.code).toBe('ERR_NAME_IN_USE')
      expect(await worker.peer.etcdState()).toBe('displaced')
      expect(router.membership.peers().map((p) => p.name)).toEqual([worker.peer.name])
      await writeChecked(router, worker, 15)

      // And the watch goes on.
      const late = await remoteMember()
      await router.log.waitFor('join', { peer: late.peer.name, from: mark })
      await writeChecked(router, late, 16)
    } finally {
      raw.close()
    }
  })

  it('etcd replaced by an empty one on the same address: members report lease-lost, re-join, and follow the new history (a member that died meanwhile leaves, a new one is seen)', async () => {
    const router = await localMember('router')
    const worker = await remoteMember()
    const victim = await remoteMember()
    await router.log.waitFor('join', { peer: worker.peer.name })
    await router.log.waitFor('join', { peer: victim.peer.name })
    // Push the old history's revision far past what the new etcd reaches in this test: a watch
    // that went on from the old revision would see none of the new etcd's changes.
    const raw = new Etcd3({ hosts: etcd.endpoint })
    try {
      for (let i = 0; i < 100; i++) await raw.put(`${namespace}/noise`).value(String(i))
    } finally {
      raw.close()
    }
    const mark = router.log.mark
    const workerMark = await worker.peer.etcdMark()
    await etcd.kill()
    await victim.peer.kill('SIGKILL')
    await etcd.restartEmpty()
    await router.log.waitFor('lease-lost', { from: mark, timeoutMs: 15_000 })
    await router.log.waitFor('rejoined', { from: mark, timeoutMs: 15_000 })
    await worker.peer.etcdWaitFor('rejoined', { from: workerMark, timeoutMs: 15_000 })
    // The victim never published in the new etcd: reading it whole shows it gone.
    await router.log.waitFor('leave', { peer: victim.peer.name, from: mark, timeoutMs: 15_000 })
    const only = (names: string[], name: string) => names.length === 1 && names[0] === name
    await eventually('the router listing the worker alone', () => only(router.membership.peers().map((p) => p.name), worker.peer.name), 15_000)
    await eventually('the worker listing the router alone', async () => only((await worker.peer.etcdPeers()).map((p) => p.name), router.agent.name), 15_000)
    await writeChecked(router, worker, 17)
    // A member that joins the new etcd is seen.
    const late = await remoteMember()
    await router.log.waitFor('join', { peer: late.peer.name, from: mark })
    await worker.peer.etcdWaitFor('join', { peer: late.peer.name, from: workerMark })
  })

  it('two agents under one name: the later takes the record (the others see leave then join, and reach the new one); the earlier reports displaced', async () => {
    const router = await localMember('router')
    const name = uniqueName('twin')
    const first = await remoteMember({ name })
    await router.log.waitFor('join', { peer: name })
    const mark = router.log.mark
    const firstMark = await first.peer.etcdMark()
    const second = await remoteMember({ name })
    await router.log.waitFor('leave', { peer: name, from: mark })
    await router.log.waitFor('join', { peer: name, from: mark })
    expect(router.membership.peers().map((p) => p.pid)).toEqual([second.peer.pid])
    const displaced = await first.peer.etcdWaitFor('displaced', { from: firstMark })
    expect(displaced.code).toBe('ERR_NAME_IN_USE')
    await writeChecked(router, second, 18)
  })

  it('with etcd gone, leave() rejects and agent.close() finishes, both within requestTimeoutMs', async () => {
    const agent = await createAgent('orphan', { engine })
    agents.push(agent)
    const other = await createAgent('orphan', { engine })
    agents.push(other)
    const discovery = await EtcdDiscovery.connect({ endpoints: etcd.endpoint, namespace, ttlSeconds: TTL, requestTimeoutMs: 1_000 })
    discoveries.push(discovery)
    const first = await discovery.join(agent)
    const second = await discovery.join(other)
    await etcd.kill()
    let started = Date.now()
    const error = await rejectsWith(() => first.leave(), 'ERR_PEER_UNREACHABLE', 10_000)
    expect(error.message).toContain('lease expires')
    expect(Date.now() - started).toBeLessThan(1_000 + 1_000)
    expect(first.state).toBe('left')
    started = Date.now()
    await within(other.close(), 10_000, 'agent.close() with etcd gone')
    expect(Date.now() - started).toBeLessThan(1_000 + 1_000)
    expect(second.state).toBe('left')
  })

  it('events(): an aborted signal rejects next() with ERR_ABORTED; leave() ends every iterator; close() of the discovery leaves; join of a closed agent is ERR_CLOSED', async () => {
    const a = await localMember('a')
    const b = await localMember('b')
    await a.log.waitFor('join', { peer: b.agent.name })
    const controller = new AbortController()
    const iterator = a.membership.events({ signal: controller.signal })
    expect((await iterator.next()).value).toMatchObject({ type: 'join', peer: b.agent.name })
    const pending = iterator.next()
    controller.abort()
    await rejectsWith(() => pending, 'ERR_ABORTED')
    await rejectsWith(() => iterator.next(), 'ERR_ABORTED')

    const waiting = a.membership.events()
    await waiting.next()
    const next = waiting.next()
    await a.membership.leave()
    expect(await within(next, 5_000, 'next() after leave')).toEqual({ done: true, value: undefined })
    await within(new Promise<void>((resolve) => {
      const check = () => (a.log.ended ? resolve() : setTimeout(check, 10))
      check()
    }), 5_000, 'the log iterator ending')
    expect(a.log.failure).toBeUndefined()
    expect(a.membership.state).toBe('left')
    await a.membership.leave()
    await b.log.waitFor('leave', { peer: a.agent.name })

    // The discovery's close() makes its memberships leave.
    const bMark = b.log.mark
    const c = await localMember('c')
    await b.log.waitFor('join', { peer: c.agent.name, from: bMark })
    await c.discovery.close()
    expect(c.membership.state).toBe('left')
    await b.log.waitFor('leave', { peer: c.agent.name, from: bMark })
    await rejectsWith(() => c.discovery.join(c.agent), 'ERR_CLOSED')

    await a.agent.close()
    await rejectsWith(() => a.discovery.join(a.agent), 'ERR_CLOSED')
    await rejectsWith(() => a.discovery.join(b.agent, { info: { n: 1n } }), 'ERR_INVALID_ARG')
    await rejectsWith(() => a.discovery.join(b.agent, { compat: 7 as unknown as string }), 'ERR_INVALID_ARG')
  })
})

describe.skipIf(ETCD_ABSENT !== null)('EtcdDiscovery.connect', () => {
  afterEach(() => stopAllEtcd())

  it('a process whose memberships ended exits by itself; one with a live membership stays alive', async () => {
    const etcd = await EtcdServer.start()
    const run = await runFixture('exit.mjs', ['etcd-ended', etcd.endpoint], { timeoutMs: 20_000 })
    expect(run.code, explain(run)).toBe(0)
    expect(run.results, explain(run)).toEqual([{ ok: true }])
    const live = startFixture('exit.mjs', ['etcd-live', etcd.endpoint])
    try {
      await live.waitForLine('READY')
      await new Promise((resolve) => setTimeout(resolve, 1_500))
      expect(live.alive, 'a live membership keeps its process').toBe(true)
    } finally {
      await killAllChildren()
    }
  })

  it('a dead endpoint: ERR_PEER_UNREACHABLE within timeoutMs; a silent one: ERR_TIMEOUT; an abort: ERR_ABORTED; bad options: ERR_INVALID_ARG', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`
    let started = Date.now()
    const refused = await rejectsWith(() => EtcdDiscovery.connect({ endpoints: dead, timeoutMs: 1_500 }), 'ERR_PEER_UNREACHABLE', 10_000)
    expect(Date.now() - started).toBeLessThan(1_500 + 1_000)
    expect(refused.message).toContain('ECONNREFUSED')

    const held: Socket[] = []
    const silent = createServer((socket) => held.push(socket))
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
    try {
      started = Date.now()
      const endpoint = `http://127.0.0.1:${(silent.address() as { port: number }).port}`
      await rejectsWith(() => EtcdDiscovery.connect({ endpoints: endpoint, timeoutMs: 1_500 }), 'ERR_TIMEOUT', 10_000)
      expect(Date.now() - started).toBeLessThan(1_500 + 1_000)
    } finally {
      for (const socket of held) socket.destroy()
      silent.close()
    }

    started = Date.now()
    await rejectsWith(() => EtcdDiscovery.connect({ endpoints: dead, timeoutMs: 30_000, signal: AbortSignal.timeout(300) }), 'ERR_ABORTED', 10_000)
    expect(Date.now() - started).toBeLessThan(300 + 1_000)

    for (const bad of [
      { endpoints: [] },
      { endpoints: 'http://127.0.0.1:1', namespace: 'ends/' },
      { endpoints: 'http://127.0.0.1:1', ttlSeconds: 0 },
      { endpoints: 'http://127.0.0.1:1', timeoutMs: -1 },
    ]) {
      await expect(EtcdDiscovery.connect(bad as never), JSON.stringify(bad)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' })
    }
  })

  it('an etcd that is still starting: connect() waits for it within timeoutMs', async () => {
    const etcd = await EtcdServer.start()
    await etcd.kill()
    const connecting = EtcdDiscovery.connect({ endpoints: etcd.endpoint, timeoutMs: 15_000 })
    await new Promise((resolve) => setTimeout(resolve, 500))
    await etcd.resume()
    const discovery = await within(connecting, 20_000, 'connect')
    await discovery.close()
  })
})

describe.skipIf(ETCD_ABSENT !== null)('membership events', () => {
  afterEach(() => stopAllEtcd())

  it('an iterator whose reader falls 10,000 events behind fails with ERR_BUSY; one that keeps up goes on', { timeout: 120_000 }, async () => {
    const etcd = await EtcdServer.start()
    const namespace = uniqueName('kvxfer-behind')
    const [agent] = await createAgents(1, 'behind')
    const discovery = await EtcdDiscovery.connect({ endpoints: etcd.endpoint, namespace })
    const raw = new Etcd3({ hosts: etcd.endpoint })
    try {
      const membership = await discovery.join(agent!)
      const idle = membership.events()
      const log = new EventLog(membership.events())
      // Each unreadable record is an `invalid` event.
      for (let i = 0; i < 10_001; i += 500) {
        await Promise.all(Array.from({ length: Math.min(500, 10_001 - i) }, (_, k) => raw.put(`${namespace}/agents/noise-${(i + k) % 50}`).value(`not json ${i + k}`)))
      }
      await eventually('the reading iterator seeing all of them', () => log.events.length >= 10_001, 60_000)
      await rejectsWith(() => idle.next(), 'ERR_BUSY')
      expect(log.failure).toBeUndefined()
      expect(log.ended).toBe(false)
    } finally {
      raw.close()
      await discovery.close()
      await closeAll(agent)
    }
  })
})

describe.skipIf(ETCD_ABSENT !== null)('a secured etcd: the options etcd3 takes pass through', () => {
  const agents: Agent[] = []
  const discoveries: EtcdDiscovery[] = []
  afterEach(async () => {
    await Promise.all(discoveries.splice(0).map((d) => within(d.close(), 15_000, 'closing a discovery')))
    await closeAll(...agents.splice(0))
    await stopAllEtcd()
  }, 60_000)

  /** Two agents in this process join through `options` and write to each other, bytes checked. */
  async function twoMembersMeet(options: Parameters<typeof EtcdDiscovery.connect>[0]): Promise<void> {
    const [a, b] = await createAgents(2, 'secured')
    agents.push(a!, b!)
    const [ra, rb] = await Promise.all([a!.allocate(MiB), b!.allocate(MiB)])
    const da = await EtcdDiscovery.connect(options)
    const db = await EtcdDiscovery.connect(options)
    discoveries.push(da, db)
    const ma = await da.join(a!)
    await db.join(b!)
    await new EventLog(ma.events()).waitFor('join', { peer: b!.name })
    const want = sha256(fillBytes(ra!.view(), 19))
    await a!.write(ra!, rb!, b!.name, { timeoutMs: 10_000 })
    expect(sha256(rb!.view())).toBe(want)
  }

  it.skipIf(TLS_ABSENT !== null)(`TLS with client certificates (credentials): members meet; without a client certificate or the CA, connect() is refused${TLS_ABSENT === null ? '' : ` [skipped: ${TLS_ABSENT}]`}`, async () => {
    const etcd = await EtcdServer.start({ tls: true })
    const tls = etcd.tls!
    expect(etcd.endpoint.startsWith('https://')).toBe(true)
    const namespace = uniqueName('kvxfer-tls')
    await twoMembersMeet({ endpoints: etcd.endpoint, namespace, credentials: { rootCertificate: tls.ca, certChain: tls.clientCert, privateKey: tls.clientKey } })
    const noClientCert = await rejectsWith(() => EtcdDiscovery.connect({ endpoints: etcd.endpoint, namespace, credentials: { rootCertificate: tls.ca }, timeoutMs: 1_500 }), 'ERR_PEER_UNREACHABLE')
    expect(noClientCert.message).toContain(etcd.endpoint)
    await rejectsWith(() => EtcdDiscovery.connect({ endpoints: etcd.endpoint, namespace, timeoutMs: 1_500 }), 'ERR_PEER_UNREACHABLE')
  })

  it('user and password auth (auth), with a role on the namespace only: members meet; a wrong password or another namespace is ERR_UNAUTHORIZED at once', async () => {
    const etcd = await EtcdServer.start()
    const namespace = uniqueName('kvxfer-auth')
    const admin = new Etcd3({ hosts: etcd.endpoint })
    try {
      await admin.user('root').create('root-password')
      await admin.user('root').addRole('root')
      const role = await admin.role('kvxfer-worker').create()
      await role.grant({ permission: 'Readwrite', range: admin.range({ prefix: `${namespace}/` }) })
      await admin.user('worker').create('worker-password')
      await admin.user('worker').addRole('kvxfer-worker')
      await admin.auth.authEnable()
    } finally {
      admin.close()
    }
    await twoMembersMeet({ endpoints: etcd.endpoint, namespace, auth: { username: 'worker', password: 'worker-password' } })
    let started = Date.now()
    const refused = await rejectsWith(() => EtcdDiscovery.connect({ endpoints: etcd.endpoint, namespace, auth: { username: 'worker', password: 'wrong' }, timeoutMs: 10_000 }), 'ERR_UNAUTHORIZED')
    expect(refused.message).toContain('authentication failed')
    expect(Date.now() - started, 'refused credentials are not retried until the bound').toBeLessThan(5_000)
    started = Date.now()
    await rejectsWith(() => EtcdDiscovery.connect({ endpoints: etcd.endpoint, namespace: 'elsewhere', auth: { username: 'worker', password: 'worker-password' }, timeoutMs: 10_000 }), 'ERR_UNAUTHORIZED')
    expect(Date.now() - started).toBeLessThan(5_000)
  })
})

describe.runIf(ETCD_ABSENT !== null)('etcd discovery', () => {
  it.skip(`[skipped: ${ETCD_ABSENT}]`, () => {})
})
reportNixlSkipped('etcd discovery')
