// Fuzzes the decoders of peer input written in TypeScript (the native ones are libFuzzer
// targets, test/fuzz/native): KV handoff tickets, and the side channel's frames from both ends
// of a real TCP connection. Seeded from real bytes: tickets kvxfer encodes, and the two byte
// streams of a real fetchPeer exchange (with and without a secret) recorded through a proxy.
// Each input is a seeded random mutation of a seed (mulberry32; the failing input's index and
// seed are printed). What must hold:
//   ticket         decodeTicket returns a ticket or throws KvxferError ERR_BAD_METADATA;
//   listener       a listener fed N mutated client streams never crashes, refuses each bad one,
//                  and still serves a real fetchPeer afterwards;
//   fetch          fetchPeer against a server that answers N mutated server streams settles every
//                  time, with a KvxferError or a peer loaded, within its timeout.
// Usage: node test/fuzz/js/fuzz.mjs [ticket|listener|fetch ...]; KVXFER_FUZZ_JS_RUNS (default
// 10^6 tickets, 20,000 connections each side), KVXFER_FUZZ_SEED. Prints one `RESULT {json}` line.
import { createServer, connect } from 'node:net'
import { mulberry32 } from './rng.mjs'

const ROOT = new URL('../../../dist/', import.meta.url).href
const { Agent, KvxferError } = await import(`${ROOT}index.js`)
const { decodeTicket, encodeTicket } = await import(`${ROOT}kv/ticket.js`)

const SEED = Number(process.env.KVXFER_FUZZ_SEED ?? 0x6b767866)
const RUNS = process.env.KVXFER_FUZZ_JS_RUNS === undefined ? undefined : Number(process.env.KVXFER_FUZZ_JS_RUNS)
const targets = process.argv.slice(2).length > 0 ? process.argv.slice(2) : ['ticket', 'listener', 'fetch']

const int = (rng, n) => Math.floor(rng() * n)
const randomBytes = (rng, n) => Buffer.from(Uint8Array.from({ length: n }, () => int(rng, 256)))

/** One random mutation of `src`: what libFuzzer's default mutators do, a few at a time. */
function mutate(rng, src) {
  let b = Buffer.from(src)
  for (let k = 1 + int(rng, 3); k > 0; k--) {
    const n = b.length
    switch (int(rng, 9)) {
      case 0: b = b.subarray(0, int(rng, n + 1)); break // truncate
      case 1: if (n > 0) b[int(rng, n)] ^= 1 << int(rng, 8); break // bit flip
      case 2: if (n > 0) b[int(rng, n)] = int(rng, 256); break // byte overwrite
      case 3: { const at = int(rng, n + 1); b = Buffer.concat([b.subarray(0, at), randomBytes(rng, 1 + int(rng, 16)), b.subarray(at)]); break } // insert
      case 4: { const at = int(rng, n + 1); b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(n, at + 1 + int(rng, 16)))]); break } // delete
      case 5: b = Buffer.concat([b, randomBytes(rng, 1 + int(rng, 64))]); break // append junk
      case 6: if (n >= 4) { const at = int(rng, n - 3); b.writeUInt32LE([0, 0xffffffff, 0x7fffffff, 1 << 24, int(rng, 2 ** 32)][int(rng, 5)], at) } break // an interesting u32
      case 7: if (n > 0) { const at = int(rng, n); const len = 1 + int(rng, Math.min(32, n - at)); b = Buffer.concat([b, b.subarray(at, at + len)]) } break // duplicate a run
      default: b = randomBytes(rng, int(rng, 96)) // random
    }
  }
  return b
}

function fail(target, i, why) {
  console.error(`fuzz ${target}: input ${i} (KVXFER_FUZZ_SEED=${SEED}): ${why}`)
  process.exit(1)
}

// ---- tickets ----
function fuzzTickets(runs) {
  const seeds = [
    { kind: 'pull', agent: 'prefill-0', id: 7, request: 'req-42', blocks: [3, 9, 10, 11, 40], layout: 'kvl1-0123456789abcdef', tp: { rank: 1, size: 2 } },
    { kind: 'push', agent: 'decode-3', id: 0, request: 'r', blocks: Array.from({ length: 300 }, (_, i) => i * 3), layout: 'kvl1-ffffffffffffffff', tp: { rank: 0, size: 1 } },
  ].map((t) => Buffer.from(encodeTicket(t)))
  const rng = mulberry32(SEED)
  let accepted = 0
  for (let i = 0; i < runs; i++) {
    const input = mutate(rng, seeds[i % seeds.length])
    try {
      decodeTicket(input)
      accepted++
    } catch (error) {
      if (!(error instanceof KvxferError) || error.code !== 'ERR_BAD_METADATA') fail('ticket', i, String(error?.stack ?? error))
    }
  }
  return { inputs: runs, accepted, refused: runs - accepted }
}

// ---- side channel ----
/** The two byte streams of one real exchange, recorded by a proxy between fetchPeer and listen. */
async function recordExchange(server, client, secret) {
  const channel = await server.listen({ secret })
  const toServer = []
  const toClient = []
  const proxy = createServer((inbound) => {
    const outbound = connect(channel.port, '127.0.0.1')
    inbound.on('data', (d) => { toServer.push(Buffer.from(d)); outbound.write(d) })
    outbound.on('data', (d) => { toClient.push(Buffer.from(d)); inbound.write(d) })
    inbound.on('end', () => outbound.end())
    outbound.on('end', () => inbound.end())
    inbound.on('error', () => outbound.destroy())
    outbound.on('error', () => inbound.destroy())
  })
  await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve))
  await client.fetchPeer({ host: '127.0.0.1', port: proxy.address().port, secret, timeoutMs: 10_000 })
  await new Promise((resolve) => proxy.close(resolve))
  await channel.close()
  return { toServer: Buffer.concat(toServer), toClient: Buffer.concat(toClient) }
}

/** Sends `bytes`, ends, and waits for the other side to close (bounded). */
function sendAndWait(port, bytes) {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1')
    const timer = setTimeout(() => { socket.destroy(); resolve('hung') }, 15_000)
    socket.on('error', () => {})
    socket.on('data', () => {})
    socket.on('close', () => { clearTimeout(timer); resolve('closed') })
    socket.end(bytes)
  })
}

async function fuzzListener(runs, server, client, seeds) {
  const rng = mulberry32(SEED ^ 0x5a5a)
  const results = {}
  for (const [label, secret] of [['open', undefined], ['secret', 'fuzz-secret']]) {
    const channel = await server.listen({ secret, exchangeTimeoutMs: 5_000 })
    const seed = seeds[label].toServer
    let hung = 0
    const half = Math.ceil(runs / 2)
    // A few connections at a time: the listener serves them concurrently, as it would a crowd.
    for (let i = 0; i < half; i += 8) {
      const batch = []
      for (let j = i; j < Math.min(half, i + 8); j++) batch.push(sendAndWait(channel.port, mutate(rng, seed)))
      for (const outcome of await Promise.all(batch)) if (outcome === 'hung') hung++
    }
    if (hung > 0) fail('listener', -1, `${hung} connections neither served nor closed within 15 s`)
    // The listener still serves a real exchange.
    await client.fetchPeer({ host: '127.0.0.1', port: channel.port, secret, timeoutMs: 10_000 })
    const stats = channel.stats()
    await channel.close()
    results[label] = { connections: half, served: stats.served, refused: stats.refused }
  }
  return results
}

async function fuzzFetch(runs, client, seeds) {
  const rng = mulberry32(SEED ^ 0xa5a5)
  const results = {}
  for (const [label, secret] of [['open', undefined], ['secret', 'fuzz-secret']]) {
    const seed = seeds[label].toClient
    let next = Buffer.alloc(0)
    const fake = createServer((socket) => {
      socket.on('error', () => {})
      socket.on('data', () => {})
      socket.end(next)
    })
    await new Promise((resolve) => fake.listen(0, '127.0.0.1', resolve))
    const port = fake.address().port
    const half = Math.ceil(runs / 2)
    const codes = {}
    let loaded = 0
    for (let i = 0; i < half; i++) {
      next = mutate(rng, seed)
      const started = performance.now()
      try {
        await client.fetchPeer({ host: '127.0.0.1', port, secret, timeoutMs: 2_000 })
        loaded++
      } catch (error) {
        if (!(error instanceof KvxferError)) fail('fetch', i, String(error?.stack ?? error))
        codes[error.code] = (codes[error.code] ?? 0) + 1
      }
      if (performance.now() - started > 4_000) fail('fetch', i, 'fetchPeer took past twice its timeout')
    }
    await new Promise((resolve) => fake.close(resolve))
    results[label] = { exchanges: half, loaded, refused: codes }
  }
  return results
}

const result = {}
const started = performance.now()
if (targets.includes('ticket')) result.ticket = fuzzTickets(RUNS ?? 1_000_000)
if (targets.includes('listener') || targets.includes('fetch')) {
  const server = await Agent.create({ name: `fuzz-server-${process.pid}` })
  const client = await Agent.create({ name: `fuzz-client-${process.pid}` })
  await server.allocate(4096)
  const seeds = {
    open: await recordExchange(server, client, undefined),
    secret: await recordExchange(server, client, 'fuzz-secret'),
  }
  result.seedBytes = { open: [seeds.open.toServer.length, seeds.open.toClient.length], secret: [seeds.secret.toServer.length, seeds.secret.toClient.length] }
  const connections = RUNS ?? 20_000
  if (targets.includes('listener')) result.listener = await fuzzListener(connections, server, client, seeds)
  if (targets.includes('fetch')) result.fetch = await fuzzFetch(connections, client, seeds)
  await client.close()
  await server.close()
}
result.seconds = Math.round((performance.now() - started) / 100) / 10
console.log(`RESULT ${JSON.stringify(result)}`)
