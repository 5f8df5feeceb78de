// Giving up on transfers while they run: a timeout, an abort and close() in the middle of a burst
// of WRITEs to a peer in another process, over shared memory and tcp, from and to registered
// Buffers as well as allocate() memory. Every promise settles at once with the caller's reason
// (or resolves, if it finished first), nothing crashes, and afterwards the agent (timeout, abort)
// or a new agent (close) moves bytes that are checked at the other end.
// Rounds per case: KVXFER_FAULT_ROUNDS (npm run test:faults runs 100; the suite runs a few).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Agent, Region } from '../../dist/index.js'
import { ENGINES, MiB, closeAll, createAgent, exchangeMetadata, fillBytes, rdesc, settle, sha256, within } from '../fixtures/index.js'
import { disposeAllPeers, spawnPeer, type Peer, type PeerRegion } from '../fixtures/peers.js'
import { FAULT_ROUNDS, recordFigure } from './report.js'

const BLOCK = MiB
const WRITES = 200
/** A give-up must settle everything this fast: it never waits for the engine. */
const GIVE_UP_MS = 1_000

describe.each(ENGINES)('%s engine', (engine) => {
  describe.each([
    { transports: 'sm', memory: 'allocate' },
    { transports: 'sm', memory: 'register' },
    { transports: 'tcp', memory: 'allocate' },
    { transports: 'tcp', memory: 'register' },
  ] as const)('over $transports, $memory memory', ({ transports, memory }) => {
    const agentTransports = transports === 'tcp' ? 'tcp' : undefined
    let peer: Peer
    let remote: PeerRegion

    beforeAll(async () => {
      peer = await spawnPeer({ engine, transports: agentTransports })
      remote = memory === 'register' ? await peer.register(BLOCK) : await peer.allocate(BLOCK)
    }, 60_000)
    afterAll(() => disposeAllPeers(), 30_000)

    async function connected(): Promise<{ agent: Agent; local: Region; name: string }> {
      const agent = await createAgent(`cancel-${transports}`, { engine, transports: agentTransports })
      const local = memory === 'register' ? await agent.register(Buffer.alloc(BLOCK)) : await agent.allocate(BLOCK)
      const name = await exchangeMetadata(agent, peer)
      return { agent, local, name }
    }

    async function checkedWrite(agent: Agent, local: Region, name: string, seed: number): Promise<void> {
      const want = sha256(fillBytes(local.view(), seed))
      await agent.write(local, rdesc(remote, 0, BLOCK), name)
      expect(await peer.hash(remote)).toBe(want)
    }

    function tally(outcomes: Array<{ ok: boolean; error?: unknown }>, code: string): number {
      let resolved = 0
      for (const outcome of outcomes) {
        if (outcome.ok) resolved++
        else expect((outcome.error as { code?: string }).code, String(outcome.error)).toBe(code)
      }
      return resolved
    }

    it(`${FAULT_ROUNDS} rounds each: timeoutMs, an abort and close() during ${WRITES} in-flight WRITEs`, { timeout: 60_000 + FAULT_ROUNDS * 10_000 }, async () => {
      const { agent, local, name } = await connected()
      try {
        for (let round = 0; round < FAULT_ROUNDS; round++) {
          // A timeout shorter than the burst: the later writes time out.
          const timed = Array.from({ length: WRITES }, () => settle(agent.write(local, rdesc(remote, 0, BLOCK), name, { timeoutMs: 2 })))
          const timedOut = WRITES - tally(await within(Promise.all(timed), GIVE_UP_MS + 2, 'timed-out writes'), 'ERR_TIMEOUT')

          const controller = new AbortController()
          const aborted = Array.from({ length: WRITES }, () => settle(agent.write(local, rdesc(remote, 0, BLOCK), name, { signal: controller.signal })))
          setTimeout(() => controller.abort(), 1)
          const abortedCount = WRITES - tally(await within(Promise.all(aborted), GIVE_UP_MS, 'aborted writes'), 'ERR_ABORTED')
          recordFigure({ case: `cancel/${engine}/${transports}/${memory}`, round, timedOut, aborted: abortedCount })

          // The agent is unharmed: the next write lands, checked at the other end.
          await checkedWrite(agent, local, name, round + 1)
          expect(agent.stats().inFlight).toBe(0)
        }
      } finally {
        await closeAll(agent)
      }

      for (let round = 0; round < FAULT_ROUNDS; round++) {
        const { agent: closing, local: closingLocal, name: closingName } = await connected()
        const writes = Array.from({ length: WRITES }, () => settle(closing.write(closingLocal, rdesc(remote, 0, BLOCK), closingName)))
        const closed = closing.close()
        const outcomes = await within(Promise.all(writes), GIVE_UP_MS, 'writes pending at close()')
        expect(WRITES - tally(outcomes, 'ERR_CLOSED'), 'writes pending at close() rejected').toBe(WRITES)
        await within(closed, 10_000, 'close()')
        // The peer is fine: a new agent reaches it.
        const next = await connected()
        try {
          await checkedWrite(next.agent, next.local, next.name, round + 50)
        } finally {
          await closeAll(next.agent)
        }
      }
    })
  })
})
