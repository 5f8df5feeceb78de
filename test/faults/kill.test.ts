// A peer SIGKILLed in the middle of a burst of WRITEs posted with no timeoutMs: every promise
// must settle by itself within FAULT_SETTLE_MS, a failure is a KvxferError ERR_PEER_UNREACHABLE
// (a write that got there before the death may resolve), writes posted after the death reject,
// the agent keeps working with another peer, and the dead peer's name can be loaded again.
// Rounds per case: KVXFER_FAULT_ROUNDS (npm run test:faults runs 100; the suite runs a few).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Agent, PeerEvent, Region } from '../../dist/index.js'
import { ENGINES, MiB, closeAll, createAgent, exchangeMetadata, fillBytes, rdesc, settle, sha256, withEnv, within } from '../fixtures/index.js'
import { disposeAllPeers, spawnPeer, type Peer, type PeerRegion } from '../fixtures/peers.js'
import { FAULT_ROUNDS, FAULT_SETTLE_MS, recordFigure, summarize } from './report.js'

const BLOCK = 4 * MiB
const WRITES = 200
const KILL_AFTER_MS = 5
/** How soon after a same-host peer's exit the agent refuses work with it. */
const DETECT_MS = 1_000

type Memory = 'register' | 'allocate'
const CASES: ReadonlyArray<{ transports: 'sm' | 'tcp'; memory: Memory }> = [
  { transports: 'sm', memory: 'register' },
  { transports: 'sm', memory: 'allocate' },
  { transports: 'tcp', memory: 'register' },
  { transports: 'tcp', memory: 'allocate' },
]

describe.each(ENGINES)('%s engine', (engine) => {
  describe.each(CASES)('SIGKILL mid-transfer over $transports, $memory memory', ({ transports, memory }) => {
    // 'sm' is UCX's default selection (shared memory, which is what same-host peers use).
    const agentTransports = transports === 'tcp' ? 'tcp' : undefined
    // Known UCX defect, not kvxfer's (README "Peers and failures", limits): on the NIXL
    // engine over tcp with two network devices, UCX gives the endpoint two lanes, and a peer
    // killed while a flush waits on one of them leaves that flush's resume callback queued
    // after NIXL's error callback force-closed the endpoint: the next progress reads the
    // freed endpoint (SIGSEGV in ucp_ep_flush_resume_slow_path_callback; 5 of 7 runs of
    // 100 rounds crashed with lo and eth0, 0 of 4 with lo alone). The UCX engine closes a
    // failed endpoint only once its requests are back, which is why it runs on every device.
    const deviceEnv: Record<string, string> = engine === 'nixl' && transports === 'tcp' ? { UCX_NET_DEVICES: 'lo' } : {}
    let agent: Agent
    let local: Region
    // A second peer that stays alive: the agent must keep working with it.
    let witness: Peer
    let witnessRegion: PeerRegion
    let witnessName: string
    const settleTimes: number[] = []

    beforeAll(async () => {
      agent = await withEnv(deviceEnv, () => createAgent(`kill-${transports}-${memory}`, { engine, transports: agentTransports }))
      local = memory === 'register' ? await agent.register(Buffer.alloc(BLOCK)) : await agent.allocate(BLOCK)
      witness = await spawnPeer({ engine, transports: agentTransports, env: deviceEnv })
      witnessRegion = memory === 'register' ? await witness.register(BLOCK) : await witness.allocate(BLOCK)
      witnessName = await exchangeMetadata(agent, witness)
    }, 60_000)

    afterAll(async () => {
      summarize(`kill ${engine} ${transports} ${memory}`, settleTimes)
      await closeAll(agent)
      await disposeAllPeers()
    }, 60_000)

    // Over tcp a round is cheap, and the suite runs 30: UCX once ran the endpoint's error
    // handler from inside a put, closing the endpoint under the engine's loop (a crash about
    // 1 round in 45; 2 rounds would rarely see it).
    const rounds = process.env.KVXFER_FAULT_ROUNDS === undefined && transports === 'tcp' ? 30 : FAULT_ROUNDS
    it(`${rounds} rounds: ${WRITES} x 4 MiB WRITEs, the peer killed ${KILL_AFTER_MS} ms after posting`, { timeout: 60_000 + rounds * 15_000 }, async () => {
      // The victim of the next round starts while this one runs: spawning dominates a round.
      let next = spawnVictim()
      // A failed round leaves the next victim to afterAll's cleanup, which kills it.
      next.catch(() => {})
      for (let round = 0; round < rounds; round++) {
        const { peer, region } = await next
        // Every victim has the one name: each round loads it again, replacing the dead one.
        const name = await agent.loadPeer(await peer.metadata())
        if (round + 1 < rounds) {
          next = spawnVictim()
          next.catch(() => {})
        }

        let failedSeen = false
        const onPeer = (event: PeerEvent) => {
          if (event.type === 'failed' && event.peer === name) failedSeen = true
        }
        agent.on('peer', onPeer)
        const writes = Array.from({ length: WRITES }, () => settle(agent.write(local, rdesc(region, 0, BLOCK), name)))
        await new Promise((resolve) => setTimeout(resolve, KILL_AFTER_MS))
        const killedAt = performance.now()
        const exited = peer.kill('SIGKILL')
        const outcomes = await within(Promise.all(writes), FAULT_SETTLE_MS + 10_000, `round ${round}: the writes to a killed peer`)
        const settleMs = performance.now() - killedAt
        settleTimes.push(settleMs)
        await exited

        let resolved = 0
        for (const outcome of outcomes) {
          if (outcome.ok) {
            resolved++
            continue
          }
          expect((outcome.error as { code?: string }).code, `round ${round}: ${String(outcome.error)}`).toBe('ERR_PEER_UNREACHABLE')
        }
        recordFigure({ case: `kill/${engine}/${transports}/${memory}`, round, settleMs, resolved, rejected: WRITES - resolved })
        expect(settleMs, `round ${round}: all ${WRITES} writes settled`).toBeLessThan(FAULT_SETTLE_MS)

        // The peer is gone: new writes are refused, whatever the transport, from the moment the
        // agent knows (its 'failed' event), which is within DETECT_MS of the exit. One posted
        // before that may still land in the dead peer's orphaned segment and resolve.
        const exitedAt = performance.now()
        for (;;) {
          const knew = failedSeen
          const after = await within(settle(agent.write(local, rdesc(region, 0, BLOCK), name)), FAULT_SETTLE_MS, 'a write after the death')
          if (!after.ok) {
            expect((after as { error: { code?: string } }).error.code).toBe('ERR_PEER_UNREACHABLE')
            break
          }
          expect(knew, `round ${round}: a write resolved after the agent reported the peer failed`).toBe(false)
          expect(performance.now() - exitedAt, `round ${round}: writes after the exit still resolve`).toBeLessThan(DETECT_MS)
          await new Promise((resolve) => setTimeout(resolve, 1))
        }
        expect(failedSeen, `round ${round}: a 'failed' peer event`).toBe(true)
        agent.off('peer', onPeer)

        // The agent still works with a live peer, bytes checked there.
        const want = sha256(fillBytes(local.view(), round + 1))
        await agent.write(local, rdesc(witnessRegion, 0, BLOCK), witnessName)
        expect(await witness.hash(witnessRegion)).toBe(want)
      }
      // The name of the last dead peer loads again, and works (a restarted worker keeps its name).
      const reborn = await spawnVictim()
      const name = await agent.loadPeer(await reborn.peer.metadata())
      const want = sha256(fillBytes(local.view(), 99))
      await agent.write(local, rdesc(reborn.region, 0, BLOCK), name)
      expect(await reborn.peer.hash(reborn.region)).toBe(want)
      await reborn.peer.dispose()
    })

    /** A peer under the one name every round reuses, not loaded yet. */
    async function spawnVictim(): Promise<{ peer: Peer; region: PeerRegion }> {
      const peer = await spawnPeer({ engine, transports: agentTransports, env: deviceEnv, name: `kill-victim-${engine}-${transports}-${memory}` })
      const region = memory === 'register' ? await peer.register(BLOCK) : await peer.allocate(BLOCK)
      return { peer, region }
    }
  })
})
