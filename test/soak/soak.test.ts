// The soak program (test/soak/soak.mjs) at a short size: 50,000 transfers with a notification
// each (RSS outside V8's heap and V8's live heap grow under 5 % after warm-up; fds and active
// handles unchanged), 10,000 transfers in flight at once (all land, every byte checked), 100
// agents created, used and closed beside one long-lived peer, and 30 worker_threads terminated
// with agents open (fds and handles unchanged but for one-time ones). `npm run test:soak` runs
// it at full size (10^6 transfers, 1,000 agents, 1,000 workers).
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { beforeAll, describe, expect, it } from 'vitest'
import { NIXL_ABSENT, RESULT_PREFIX, itUnlessKnownBug } from '../fixtures/index.js'

const SOAK = join(__dirname, 'soak.mjs')
interface Sample { rssMiB: number; heapTotalMiB: number; fds: number; mappings: number; sharedMappings: number; handles: number }
interface AgentsPhase { before: Sample; after: Sample; notifications: number }
/** The library's default engine, which the soak uses unless told: NIXL where it loads. */
const DEFAULT_ENGINE = NIXL_ABSENT === null ? 'nixl' : 'ucx'

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function runSoak(env: Record<string, string>): any {
  const run = spawnSync(process.execPath, ['--expose-gc', SOAK], { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 280_000 })
  expect(run.status, run.stdout + run.stderr).toBe(0)
  return JSON.parse(run.stdout.split('\n').find((l) => l.startsWith(RESULT_PREFIX))!.slice(RESULT_PREFIX.length))
}

/** Every agent pushed its metadata and sent a 1,000-byte notification: the long-lived peer keeps none of it. */
function expectNothingKept({ before, after, notifications }: AgentsPhase): void {
  expect(notifications).toBe(100)
  expect(after.sharedMappings - before.sharedMappings).toBeLessThanOrEqual(2)
  expect(after.mappings - before.mappings).toBeLessThanOrEqual(20)
}

describe('soak, short', { timeout: 300_000 }, () => {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  let r: any
  let ucxAgents: AgentsPhase
  beforeAll(() => {
    r = runSoak({ KVXFER_SOAK_TRANSFERS: '50000', KVXFER_SOAK_AGENTS: '100', KVXFER_SOAK_WORKERS: '30' })
    expect(r.engine).toBe(DEFAULT_ENGINE)
    // Where the default is NIXL, the agents phase runs on the UCX engine too.
    ucxAgents = DEFAULT_ENGINE === 'ucx' ? r.agents : runSoak({ KVXFER_SOAK_PHASES: 'agents', KVXFER_SOAK_AGENTS: '100', KVXFER_SOAK_ENGINE: 'ucx' }).agents
  }, 300_000)

  it('50,000 transfers with notifications: nothing lost, no growth after warm-up, no new fds or handles', () => {
    expect(r.transfers.notificationsReceived).toBe(50_000)
    // V8's reserved young generation grows with the allocation rate up to its limit: reported
    // (rssGrowth), not bounded; what kvxfer and UCX hold is outside it.
    expect(r.transfers.rssOutsideHeapGrowth).toBeLessThan(0.05)
    expect(r.transfers.heapUsedGrowth).toBeLessThan(0.05)
    expect(r.transfers.end.fds).toBe(r.transfers.warm.fds)
    expect(r.transfers.end.handles).toBe(r.transfers.warm.handles)
  })

  it('10,000 transfers in flight at once all land', () => {
    expect(r.inFlight).toMatchObject({ transfers: 10_000, rejected: 0, bytesChecked: true, inFlightAfter: 0 })
  })

  it('100 agents created and closed: fds and handles stay (one-time ones aside)', () => {
    const { before, after } = r.agents as { before: Sample; after: Sample }
    expect(after.fds - before.fds).toBeLessThanOrEqual(2)
    expect(after.handles - before.handles).toBeLessThanOrEqual(1)
  })

  // Over UCX's active messages, each of those made the peer's worker create an endpoint for the
  // sender that it kept until this process exited (~3 shared mappings per agent: 1,000 agents
  // 206 -> 3,435 mappings); the UCX engine sends tagged messages now (native/ucx/ucx_control.h).
  // What is left is V8's heap.
  it('ucx engine: 100 agents created and closed: the long-lived peer they wrote to keeps nothing of them', () => {
    expectNothingKept(ucxAgents)
  })

  // NIXL sends its notifications as UCX active messages (README "Peers and failures"): about 3
  // shared mappings per agent stay.
  if (DEFAULT_ENGINE === 'nixl') {
    itUnlessKnownBug(true)('nixl engine: the same [known: NIXL\'s notifications are active messages; the peer keeps ~3 mappings per agent]', () => {
      expectNothingKept(r.agents)
    })
  }

  it('30 worker_threads terminated with agents open: fds and handles stay (one-time ones aside)', () => {
    const { before, after } = r.workers as { before: Sample; after: Sample }
    // The workers' stdio, piped to this process's, leaves its pipes once.
    expect(after.fds - before.fds).toBeLessThanOrEqual(2)
    expect(after.handles - before.handles).toBeLessThanOrEqual(2)
  })
})
