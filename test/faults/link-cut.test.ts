// Another host that becomes unreachable mid-transfer: a peer in a network namespace, reached
// over tcp through a veth pair, whose link goes down while WRITEs posted with no timeoutMs are in
// flight. Its process lives on and no transport reports the silence in good time (TCP retries
// for minutes), so it is the agent's peerTimeoutMs that must fail the peer: every promise
// settles, as ERR_PEER_UNREACHABLE, within peerTimeoutMs and its check interval (README "Peers
// and failures").
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { ENGINES, MiB, closeAll, createAgent, exchangeMetadata, fillBytes, rdesc, settle, sha256, within, withEnv } from '../fixtures/index.js'
import { NETNS_ABSENT, createNamespace, removeAllNamespaces, type Namespace } from '../fixtures/netns.js'
import { disposeAllPeers, spawnPeer } from '../fixtures/peers.js'
import { FAULT_ROUNDS, recordFigure, summarize } from './report.js'

const PEER_TIMEOUT_MS = 3_000
/** peerTimeoutMs, plus the 100 ms between the owner thread's looks and the teardown. */
const LINK_CUT_BOUND_MS = PEER_TIMEOUT_MS + 1_000
const BLOCK = 4 * MiB
const WRITES = 64
const ROUNDS = Math.min(FAULT_ROUNDS, 5)

// UCX 1.22 reads the routing table once per process: every namespace a round uses must exist
// before the first agent starts.
let namespaces: Namespace[] = []
beforeAll(() => {
  if (NETNS_ABSENT === null) namespaces = Array.from({ length: ROUNDS * ENGINES.length }, () => createNamespace())
})
afterAll(() => removeAllNamespaces())

describe.skipIf(NETNS_ABSENT !== null).each(ENGINES)('%s engine', (engine) => {
  afterEach(() => disposeAllPeers(), 30_000)

  const settleTimes: number[] = []
  afterAll(() => summarize(`link cut ${engine}`, settleTimes))

  it(`${ROUNDS} rounds: the link to a peer in another namespace goes down with ${WRITES} x 4 MiB WRITEs in flight`, { timeout: 30_000 + ROUNDS * (LINK_CUT_BOUND_MS + 15_000) }, async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const ns = namespaces.shift()!
      const tcpOnly = { UCX_TLS: 'tcp', UCX_NET_DEVICES: ns.device }
      const remote = await spawnPeer({ engine, transports: 'tcp', netns: ns.name, env: tcpOnly })
      const agent = await withEnv({ UCX_TLS: 'tcp', UCX_NET_DEVICES: ns.hostDevice }, () => createAgent(`cut-${engine}`, { engine, transports: 'tcp', peerTimeoutMs: PEER_TIMEOUT_MS }))
      try {
        const local = await agent.allocate(BLOCK)
        const region = await remote.allocate(BLOCK)
        const name = await exchangeMetadata(agent, remote)
        const want = sha256(fillBytes(local.view(), round + 1))
        await agent.write(local, rdesc(region, 0, BLOCK), name)
        expect(await remote.hash(region), 'the link works before the cut').toBe(want)

        const writes = Array.from({ length: WRITES }, () => settle(agent.write(local, rdesc(region, 0, BLOCK), name)))
        await new Promise((resolve) => setTimeout(resolve, 2))
        const cutAt = performance.now()
        ns.setLink(false)
        const outcomes = await within(Promise.all(writes), LINK_CUT_BOUND_MS + 10_000, `round ${round}: writes over a cut link`)
        const settleMs = performance.now() - cutAt
        settleTimes.push(settleMs)
        let resolved = 0
        for (const outcome of outcomes) {
          if (outcome.ok) resolved++
          else expect((outcome.error as { code?: string }).code, String(outcome.error)).toBe('ERR_PEER_UNREACHABLE')
        }
        recordFigure({ case: `link-cut/${engine}`, round, settleMs, resolved, rejected: WRITES - resolved })
        expect(resolved, 'some writes were still in flight when the link went down').toBeLessThan(WRITES)
        expect(settleMs, `round ${round}: every write settled`).toBeLessThan(LINK_CUT_BOUND_MS)
        const after = await within(settle(agent.write(local, rdesc(region, 0, BLOCK), name)), 5_000, 'a write after the cut')
        expect(after.ok).toBe(false)
      } finally {
        await closeAll(agent)
        await remote.dispose()
        ns.remove()
      }
    }
  })
})

describe.runIf(NETNS_ABSENT !== null)('link cut between network namespaces', () => {
  it.skip(`[skipped: ${NETNS_ABSENT}]`, () => {})
})
