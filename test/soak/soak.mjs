// The soak program (`npm run test:soak`; test/soak/soak.test.ts runs a short version): run with
// node --expose-gc. Four phases, each measured after a forced GC:
//   transfers  N prepared WRITEs with a notification each, 64 in flight, between two agents;
//              RSS (and V8's share of it), fds and active handles after a warm-up of N/5 and
//              at the end;
//   in-flight  10,000 WRITEs posted at once (agent.write, each its own request);
//   agents     M agents created, used once and closed, one after another;
//   workers    W worker_threads, each opening an agent, starting a transfer and being
//              terminated with the agent open.
// Prints one line `RESULT {json}` with every phase's figures and the engine the agents ran on;
// exits 1 when a phase fails outright (a transfer rejected, a notification missing).
// KVXFER_SOAK_ENGINE=ucx|nixl picks the engine (default: the library's, NIXL where it loads).
import { Worker, isMainThread, parentPort } from 'node:worker_threads'
import { readFileSync, readdirSync } from 'node:fs'

const LIB = new URL('../../dist/index.js', import.meta.url).href
const ENGINE = process.env.KVXFER_SOAK_ENGINE

/** Agent.create on the engine KVXFER_SOAK_ENGINE names, if any. */
function createAgent(Agent, options = {}) {
  return Agent.create(ENGINE ? { ...options, engine: ENGINE } : options)
}

if (!isMainThread) {
  const { Agent } = await import(LIB)
  const a = await createAgent(Agent)
  const b = await createAgent(Agent)
  const pool = await b.allocate(1 << 20)
  await a.loadPeer(b.metadata())
  const local = await a.register(Buffer.alloc(1 << 20))
  void a.write(local, pool.slice(0, 1 << 20), b.name).catch(() => {})
  parentPort.postMessage('open')
} else {
  await main()
}

// Handles of what just closed (a terminated worker's) go on the next turns of the loop.
function settle() {
  return new Promise((resolve) => setTimeout(resolve, 200))
}

function measure() {
  globalThis.gc?.()
  globalThis.gc?.()
  const m = process.memoryUsage()
  const mib = (bytes) => Math.round((bytes / 2 ** 20) * 10) / 10
  return {
    rssMiB: mib(m.rss),
    // V8's share of the RSS (its young generation grows with the allocation rate, up to its
    // semi-space limit, and keeps the pages), what of it is live, and memory outside V8's heap
    // (Buffers): kvxfer's own growth shows in rssMiB - heapTotalMiB.
    heapTotalMiB: mib(m.heapTotal),
    heapUsedMiB: mib(m.heapUsed),
    externalMiB: mib(m.external),
    fds: readdirSync('/proc/self/fd').length,
    mappings: readFileSync('/proc/self/maps', 'utf8').split('\n').length - 1,
    // Where UCX's shared-memory attachments live.
    sharedMappings: readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.split(' ')[1]?.[3] === 's').length,
    handles: process.getActiveResourcesInfo().length,
    handleKinds: [...new Set(process.getActiveResourcesInfo())].join(","),
  }
}

async function main() {
  if (typeof globalThis.gc !== 'function') throw new Error('run soak.mjs with node --expose-gc')
  const { Agent } = await import(LIB)
  const N = Number(process.env.KVXFER_SOAK_TRANSFERS ?? 1_000_000)
  const M = Number(process.env.KVXFER_SOAK_AGENTS ?? 1000)
  const W = Number(process.env.KVXFER_SOAK_WORKERS ?? 1000)
  const IN_FLIGHT = Number(process.env.KVXFER_SOAK_IN_FLIGHT ?? 10_000)
  // KVXFER_SOAK_PHASES=agents,workers runs only those.
  const phases = new Set((process.env.KVXFER_SOAK_PHASES ?? 'transfers,inFlight,agents,workers').split(','))
  const result = {}
  let failed = false

  // transfers
  if (phases.has('transfers')) {
    const a = await createAgent(Agent, { name: `soak-a-${process.pid}` })
    const b = await createAgent(Agent, { name: `soak-b-${process.pid}` })
    const pool = await b.allocate(64 * 4096)
    const local = await a.register(Buffer.alloc(64 * 4096))
    await a.loadPeer(b.metadata())
    await b.loadPeer(a.metadata())
    const WINDOW = 64
    const xfers = Array.from({ length: WINDOW }, (_, i) =>
      a.prepare({ op: 'write', local: [local.slice(i * 4096, 4096)], remote: [pool.slice(i * 4096, 4096)], peer: b.name, notify: `n${i}` }))
    let received = 0
    const abort = new AbortController()
    const counting = (async () => {
      try {
        for await (const _ of b.notifications({ signal: abort.signal })) received++
      } catch {
        // aborted at the end
      }
    })()
    const warmup = Math.max(WINDOW, Math.floor(N / 5))
    let posted = 0
    let warm
    const started = performance.now()
    await Promise.all(xfers.map(async (x) => {
      while (posted < N) {
        posted++
        await x.post()
        if (posted === warmup && warm === undefined) warm = measure()
      }
    }))
    const seconds = (performance.now() - started) / 1000
    while (received < N && performance.now() - started < seconds * 1000 + 10_000) await new Promise((r) => setTimeout(r, 10))
    abort.abort()
    await counting
    const end = measure()
    for (const x of xfers) x.release()
    await a.close()
    await b.close()
    const outsideHeap = (s) => s.rssMiB - s.heapTotalMiB
    result.transfers = {
      transfers: N,
      seconds: Math.round(seconds * 10) / 10,
      notificationsReceived: received,
      warm,
      end,
      rssGrowth: (end.rssMiB - warm.rssMiB) / warm.rssMiB,
      rssOutsideHeapGrowth: (outsideHeap(end) - outsideHeap(warm)) / outsideHeap(warm),
      heapUsedGrowth: (end.heapUsedMiB - warm.heapUsedMiB) / warm.heapUsedMiB,
    }
    if (received !== N) failed = true
  }

  // in flight at once
  if (phases.has('inFlight')) {
    const a = await createAgent(Agent)
    const b = await createAgent(Agent)
    const pool = await b.allocate(IN_FLIGHT * 64)
    const local = await a.register(Buffer.alloc(IN_FLIGHT * 64, 7))
    await a.loadPeer(b.metadata())
    const settled = await Promise.allSettled(Array.from({ length: IN_FLIGHT }, (_, i) => a.write([local.slice(i * 64, 64)], [pool.slice(i * 64, 64)], b.name)))
    const rejected = settled.filter((s) => s.status === 'rejected').length
    const landed = pool.view(0, IN_FLIGHT * 64).every((x) => x === 7)
    result.inFlight = { transfers: IN_FLIGHT, rejected, bytesChecked: landed, inFlightAfter: a.stats().inFlight }
    if (rejected > 0 || !landed) failed = true
    await a.close()
    await b.close()
  }

  // agents created and closed
  if (phases.has('agents')) {
    const peer = await createAgent(Agent)
    const pool = await peer.allocate(4096)
    let notifications = 0
    const abort = new AbortController()
    const counting = (async () => {
      try {
        for await (const n of peer.notifications({ signal: abort.signal })) if (n.message.length === 1000) notifications++
      } catch {
        // aborted at the end
      }
    })()
    const before = measure()
    for (let i = 0; i < M; i++) {
      const a = await createAgent(Agent)
      await a.loadPeer(peer.metadata())
      // register() pushes the agent's metadata to the peer, and the notification is longer than
      // UCX's short messages: both reach the peer as messages of their own.
      const local = await a.register(Buffer.alloc(4096))
      await a.write(local, pool.slice(0, 4096), peer.name, { notify: Buffer.alloc(1000, i & 0xff) })
      await a.close()
    }
    await settle()
    const after = measure()
    abort.abort()
    await counting
    await peer.close()
    result.agents = { agents: M, notifications, before, after }
    result.engine = peer.engine
    if (notifications !== M) failed = true
  }

  // worker_threads terminated with an agent open
  if (phases.has('workers')) {
    const before = measure()
    for (let i = 0; i < W; i++) {
      const worker = new Worker(new URL(import.meta.url))
      await new Promise((resolve, reject) => {
        worker.once('message', resolve)
        worker.once('error', reject)
      })
      await worker.terminate()
    }
    await settle()
    const after = measure()
    result.workers = { workers: W, before, after }
  }

  console.log(`RESULT ${JSON.stringify(result)}`)
  process.exit(failed ? 1 : 0)
}
