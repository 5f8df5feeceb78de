// The TCP side channel (agent.listen / agent.fetchPeer): one exchange loads each side's metadata
// into the other, with bytes then moved and checked both ways; a shared secret is proven by
// both sides or the exchange is refused with ERR_UNAUTHORIZED on both; garbage, truncated,
// oversized and other-version frames are refused without a hang and the listener keeps
// serving; a silent server times out; 100 concurrent fetches are served; a region registered
// after the exchange reaches the other side.
import { connect, createServer, type Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import type { Agent } from '../../dist/index.js'
import { ENGINES, MiB, closeAll, createAgent, expectKvxferError, fillBytes, rdesc, rejectsWith, settle, sha256, within } from '../fixtures/index.js'
import { disposeAllPeers, spawnPeer } from '../fixtures/peers.js'

/** Sends `bytes` to a listener and resolves with what it answers before closing. */
function rawExchange(port: number, bytes: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port })
    const chunks: Buffer[] = []
    socket.on('data', (chunk) => chunks.push(chunk))
    socket.on('close', () => resolve(Buffer.concat(chunks)))
    socket.on('error', reject)
    socket.on('connect', () => {
      socket.write(bytes)
      socket.end()
    })
  })
}

function frameHeader(type: number, length: number, version = 1): Buffer {
  const h = Buffer.alloc(12)
  h.write('KVSC', 0, 'ascii')
  h.writeUInt8(version, 4)
  h.writeUInt8(type, 5)
  h.writeUInt32LE(length, 8)
  return h
}

describe.each(ENGINES)('%s engine', (engine) => {
  const agents: Agent[] = []
  afterEach(async () => {
    await closeAll(...agents.splice(0))
    await disposeAllPeers()
  }, 30_000)

  async function agent(prefix: string): Promise<Agent> {
    const a = await createAgent(prefix, { engine })
    agents.push(a)
    return a
  }

  it('one exchange with a peer in another process: both sides loaded, bytes moved and checked both ways', async () => {
    const server = await agent('sc-server')
    const local = await server.allocate(MiB)
    const peer = await spawnPeer({ engine })
    const remote = await peer.allocate(MiB)
    const channel = await server.listen()
    expect(channel.host).toBe('127.0.0.1')
    expect(channel.port).toBeGreaterThan(0)
    // The peer fetches: it loads us, and we load it, in the one exchange.
    expect(await peer.fetchPeer(channel.host, channel.port)).toBe(server.name)
    const want = sha256(fillBytes(local.view(), 1))
    await server.write(local, rdesc(remote, 0, MiB), peer.name)
    expect(await peer.hash(remote)).toBe(want)
    const theirs = await peer.fill(remote, 2)
    await peer.transfer('write', remote, [[0, MiB]], [{ address: local.address, length: MiB }], server.name)
    expect(sha256(local.view())).toBe(theirs)
    expect(channel.stats()).toEqual({ served: 1, refused: 0 })

    // And the other way: we fetch from the peer's listener.
    const theirChannel = await peer.listen()
    expect(await server.fetchPeer({ host: theirChannel.host, port: theirChannel.port })).toBe(peer.name)
  })

  it('a region registered after the exchange reaches the peer (both ways), with no second exchange', async () => {
    const server = await agent('sc-late')
    const peer = await spawnPeer({ engine })
    const channel = await server.listen()
    expect(await peer.fetchPeer(channel.host, channel.port)).toBe(server.name)
    const updated: string[] = []
    server.on('peer', (event) => {
      if (event.type === 'updated') updated.push(event.peer)
    })
    // Registered only now, on both sides.
    const local = await server.register(Buffer.alloc(MiB))
    const remote = await peer.register(MiB)
    const until = Date.now() + 5_000
    while (!updated.includes(peer.name) && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 5))
    expect(updated).toContain(peer.name)
    const want = sha256(fillBytes(local.view(), 5))
    await server.write(local, rdesc(remote, 0, MiB), peer.name)
    expect(await peer.hash(remote)).toBe(want)
    // The peer learnt of ours the same way: it writes into the Buffer registered after the exchange.
    const theirs = await peer.fill(remote, 6)
    let outcome = await settle(peer.transfer('write', remote, [[0, MiB]], [{ address: local.address, length: MiB }], server.name))
    for (let i = 0; !outcome.ok && i < 100; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20))
      outcome = await settle(peer.transfer('write', remote, [[0, MiB]], [{ address: local.address, length: MiB }], server.name))
    }
    expect(outcome.ok).toBe(true)
    expect(sha256(local.view())).toBe(theirs)
  })

  it('a shared secret: proven both ways it works; a wrong, missing or unasked-for secret is ERR_UNAUTHORIZED, and the listener goes on', async () => {
    const server = await agent('sc-secret')
    const client = await agent('sc-client')
    const channel = await server.listen({ secret: 'prefill-decode' })
    await rejectsWith(() => client.fetchPeer({ host: channel.host, port: channel.port, secret: 'wrong' }), 'ERR_UNAUTHORIZED')
    await rejectsWith(() => client.fetchPeer({ host: channel.host, port: channel.port }), 'ERR_UNAUTHORIZED')
    expect(channel.stats()).toEqual({ served: 0, refused: 2 })
    // Refused means not loaded: the server does not know the client yet.
    await rejectsWith(() => server.notify(client.name, 'hi'), 'ERR_UNKNOWN_PEER')
    expect(await client.fetchPeer({ host: channel.host, port: channel.port, secret: 'prefill-decode' })).toBe(server.name)
    expect(channel.stats()).toEqual({ served: 1, refused: 2 })
    await server.notify(client.name, 'hi')
    await within(client.waitForNotification(server.name, 'hi'), 10_000, 'a notification after the exchange')
    // A client that requires a secret refuses a listener that has none.
    const open = await server.listen()
    await rejectsWith(() => client.fetchPeer({ host: open.host, port: open.port, secret: 's' }), 'ERR_UNAUTHORIZED')
  })

  it('garbage, another version, an oversized or truncated frame: refused, never a hang; the listener keeps serving', async () => {
    const server = await agent('sc-garbage')
    const channel = await server.listen({ exchangeTimeoutMs: 2_000 })
    const cases: Array<[string, Buffer]> = [
      ['garbage', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
      ['another version', Buffer.concat([frameHeader(1, 32, 9), Buffer.alloc(32)])],
      ['oversized', frameHeader(1, 0xffffffff)],
      ['truncated', Buffer.concat([frameHeader(1, 32), Buffer.alloc(10)])],
      ['a short nonce', Buffer.concat([frameHeader(1, 3), Buffer.alloc(3)])],
    ]
    for (const [what, bytes] of cases) {
      const answer = await within(rawExchange(channel.port, bytes), 5_000, what)
      // Either an ERROR frame (type 5) naming ERR_BAD_METADATA, or a plain close: never served.
      if (answer.length > 0) {
        expect(answer.readUInt8(5), `${what}: frame type`).toBe(5)
        expect(answer.toString('latin1'), what).toContain('ERR_BAD_METADATA')
      }
    }
    expect(channel.stats()).toEqual({ served: 0, refused: cases.length })
    // A client that says nothing is cut off at exchangeTimeoutMs, and counted.
    const silent = connect({ host: '127.0.0.1', port: channel.port })
    silent.on('error', () => {})
    await within(new Promise((resolve) => silent.on('close', resolve)), 10_000, 'the listener cutting off a silent client')
    const until = Date.now() + 2_000
    while (channel.stats().refused === cases.length && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 10))
    expect(channel.stats()).toEqual({ served: 0, refused: cases.length + 1 })
    const client = await agent('sc-after')
    expect(await client.fetchPeer({ host: channel.host, port: channel.port })).toBe(server.name)
  })

  it('a silent server: ERR_TIMEOUT at timeoutMs; a server that answers garbage: ERR_BAD_METADATA; nothing listening: ERR_PEER_UNREACHABLE', async () => {
    const client = await agent('sc-timeout')
    const held: Socket[] = []
    const silent = createServer((socket) => held.push(socket))
    const garbage = createServer((socket) => socket.end(Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n')))
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
    await new Promise<void>((resolve) => garbage.listen(0, '127.0.0.1', resolve))
    try {
      const port = (s: typeof silent) => (s.address() as { port: number }).port
      const started = Date.now()
      await rejectsWith(() => client.fetchPeer({ host: '127.0.0.1', port: port(silent), timeoutMs: 300 }), 'ERR_TIMEOUT', 5_000)
      expect(Date.now() - started).toBeLessThan(5_000)
      await rejectsWith(() => client.fetchPeer({ host: '127.0.0.1', port: port(garbage) }), 'ERR_BAD_METADATA')
      const closed = createServer()
      await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
      const free = port(closed)
      await new Promise<void>((resolve) => closed.close(() => resolve()))
      await rejectsWith(() => client.fetchPeer({ host: '127.0.0.1', port: free }), 'ERR_PEER_UNREACHABLE')
    } finally {
      for (const socket of held) socket.destroy()
      silent.close()
      garbage.close()
    }
  })

  it('100 concurrent fetches are served; bad options are ERR_INVALID_ARG; the listener closes with its agent', async () => {
    const server = await agent('sc-many')
    const client = await agent('sc-many-client')
    const channel = await server.listen()
    const names = await within(
      Promise.all(Array.from({ length: 100 }, () => client.fetchPeer({ host: channel.host, port: channel.port, timeoutMs: 30_000 }))),
      60_000,
      '100 concurrent fetches',
    )
    expect(new Set(names)).toEqual(new Set([server.name]))
    expect(channel.stats()).toEqual({ served: 100, refused: 0 })
    await rejectsWith(() => client.fetchPeer({ host: '127.0.0.1', port: 0 }), 'ERR_INVALID_ARG')
    await rejectsWith(() => client.fetchPeer({ host: '', port: 1 }), 'ERR_INVALID_ARG')
    await rejectsWith(() => client.fetchPeer({ host: '127.0.0.1', port: channel.port, secret: '' }), 'ERR_INVALID_ARG')
    await rejectsWith(() => server.listen({ port: 70_000 }), 'ERR_INVALID_ARG')
    // listen() and close() racing: the listener does not outlive the agent.
    const racing = settle(server.listen())
    await server.close()
    const raced = await racing
    expect(raced.ok, 'listen() racing close() resolved').toBe(false)
    expectKvxferError((raced as { error: unknown }).error, 'ERR_CLOSED')
    await rejectsWith(() => client.fetchPeer({ host: channel.host, port: channel.port }), 'ERR_PEER_UNREACHABLE')
  })
})
