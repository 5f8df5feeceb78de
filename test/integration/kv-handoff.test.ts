// KvHandoff across processes, on every engine: pull (the decode side READs an offer), push and
// layer-wise streaming (the prefill side WRITEs into a reservation), for every order and heads
// layout, and heterogeneous tensor parallelism (p, d) in {(2,1), (1,2), (4,2)}. Every byte of
// the decode pool is checked afterwards: its old bytes with exactly the handed-off elements
// replaced (the reference in test/fixtures/kv.ts). Then what goes wrong: a lease that ran out
// (ERR_LEASE_EXPIRED, never bytes that may be stale), a peer that dies mid-handoff on either
// side, timeouts and aborts; in every case both sides settle and nothing is left in flight.
import { afterEach, describe, expect, it } from 'vitest'
import { KvHandoff, KvLayout, KvPool, type Agent, type KvHeadLayout, type KvLayoutOptions, type KvOrder } from '../../dist/index.js'
import {
  ENGINES, applyMoves, closeAll, createAgent, elementMoves, eventually, exchangeMetadata, expectKvxferError, fillPool, randomBytesFor,
  readPool, rejectsWith, settle, sha256, throwsWith, within,
} from '../fixtures/index.js'
import { disposeAllPeers, spawnPeer, type Peer, type PeerPool } from '../fixtures/peers.js'

const ORDERS: KvOrder[] = ['layer-kv-block', 'layer-block-kv', 'block-layer-kv']
const HEADS: KvHeadLayout[] = ['NHD', 'HND']
const SHAPE = { layers: 3, blocks: 8, blockTokens: 4, kvHeads: 4, headDim: 8, dtype: 'fp16' } as const
const opts = (order: KvOrder, heads: KvHeadLayout, more: Partial<KvLayoutOptions> = {}): KvLayoutOptions => ({ ...SHAPE, order, heads, ...more })
/** Scattered on purpose: no two neighbours are adjacent on both sides. */
const SRC = [5, 1, 6, 2]
const DST = [2, 7, 0, 4]

interface Decode {
  agent: Agent
  pool: KvPool
  handoff: KvHandoff
  before: Buffer
  options: KvLayoutOptions
}

interface Prefill {
  peer: Peer
  pool: PeerPool
  bytes: Buffer
  options: KvLayoutOptions
}

describe.each(ENGINES)('%s engine: KvHandoff', { timeout: 120_000 }, (engine) => {
  const agents: Agent[] = []
  let seed = engine === 'ucx' ? 100 : 200
  afterEach(async () => {
    await closeAll(...agents.splice(0))
    await disposeAllPeers()
  }, 60_000)

  /** A worker here, its pool over one registered Buffer, filled with known bytes. */
  async function localWorker(options: KvLayoutOptions, prefix = 'kv-here'): Promise<Decode> {
    const agent = await createAgent(prefix, { engine })
    agents.push(agent)
    const layout = new KvLayout(options)
    const pool = KvPool.over(agent, await agent.register(Buffer.alloc(layout.bytes)), layout)
    const before = fillPool(pool, seed++)
    return { agent, pool, handoff: new KvHandoff(agent, pool), before, options }
  }

  /** A worker in another process, its pool allocated, filled with known bytes. */
  async function remoteWorker(options: KvLayoutOptions): Promise<Prefill> {
    const peer = await spawnPeer({ engine })
    const pool = await peer.kvPool(options, 'allocate')
    await peer.kvHandoff(pool)
    const s = seed++
    await peer.kvFill(pool, s)
    return { peer, pool, bytes: randomBytesFor(new KvLayout(options).bytes, s), options }
  }

  async function connect(locals: Decode[], remotes: Prefill[]): Promise<void> {
    for (const l of locals) for (const r of remotes) await exchangeMetadata(l.agent, r.peer)
  }

  /** The decode pool as it must be: its old bytes, with each source's heads of our heads moved in. */
  function expected(decode: Decode, sources: Array<{ options: KvLayoutOptions; bytes: Buffer }>, src = SRC, dst = DST): string {
    const layout = decode.pool.layout
    let bytes = decode.before
    for (const source of sources) {
      const theirs = new KvLayout(source.options)
      const heads: [number, number] = [Math.max(theirs.headStart, layout.headStart), Math.min(theirs.headEnd, layout.headEnd)]
      if (heads[0] >= heads[1]) continue
      bytes = applyMoves(bytes, source.bytes, elementMoves(source.options, src, decode.options, dst, { heads }), layout.headBytes)
    }
    return sha256(bytes)
  }

  describe('every order and heads layout, tp (1, 1)', () => {
    for (const order of ORDERS) {
      for (const heads of HEADS) {
        it(`${order} ${heads}: pull, push and stream move exactly the request's blocks`, async () => {
          const o = opts(order, heads)
          const decode = await localWorker(o)
          const prefill = await remoteWorker(o)
          await connect([decode], [prefill])

          // Pull: the prefill offers, the decode pulls; the offer's done resolves on the acknowledgement.
          const offer = await prefill.peer.kvOffer(prefill.pool, 'req-pull', SRC)
          await decode.handoff.pull([offer.ticket], DST)
          expect(sha256(readPool(decode.pool))).toBe(expected(decode, [prefill]))
          await prefill.peer.finish(offer.token)

          // Push: the decode reserves, the prefill pushes every layer; each layer lands once.
          fillPool(decode.pool, 7)
          decode.before = readPool(decode.pool)
          const reservation = decode.handoff.reserve('req-push', DST)
          const landed: number[] = []
          const collecting = (async () => {
            for await (const layer of reservation.layers) landed.push(layer)
          })()
          await prefill.peer.kvPush(prefill.pool, [reservation.ticket], SRC)
          await reservation.done
          await collecting
          expect(landed.sort()).toEqual([0, 1, 2])
          expect(sha256(readPool(decode.pool))).toBe(expected(decode, [prefill]))

          // Stream: layer i is written as soon as it is declared ready, in order.
          fillPool(decode.pool, 8)
          decode.before = readPool(decode.pool)
          const streamed = decode.handoff.reserve('req-stream', DST)
          const order2: number[] = []
          const collect2 = (async () => {
            for await (const layer of streamed.layers) order2.push(layer)
          })()
          await prefill.peer.kvStream(prefill.pool, [streamed.ticket], SRC, 5)
          await streamed.done
          await collect2
          expect(order2).toEqual([0, 1, 2])
          expect(sha256(readPool(decode.pool))).toBe(expected(decode, [prefill]))
          expect(decode.agent.stats().inFlight).toBe(0)
        })
      }
    }
  })

  it('a request bigger than one transfer: pulled in chunks of blocks, pushed layer by layer, byte-exact', async () => {
    // 64 layers: 128 parts a block, so a pull takes 8 blocks a READ and these 20 take three.
    const o: KvLayoutOptions = { ...opts('layer-kv-block', 'HND'), layers: 64, blocks: 48 }
    const src = Array.from({ length: 20 }, (_, i) => (i * 7 + 3) % 48)
    const dst = Array.from({ length: 20 }, (_, i) => (i * 11 + 5) % 48)
    const decode = await localWorker(o)
    const prefill = await remoteWorker(o)
    await connect([decode], [prefill])

    const offer = await prefill.peer.kvOffer(prefill.pool, 'req-big', src)
    await decode.handoff.pull([offer.ticket], dst)
    expect(sha256(readPool(decode.pool))).toBe(expected(decode, [prefill], src, dst))
    await prefill.peer.finish(offer.token)

    fillPool(decode.pool, 12)
    decode.before = readPool(decode.pool)
    const reservation = decode.handoff.reserve('req-big-push', dst)
    const landed: number[] = []
    const collecting = (async () => {
      for await (const layer of reservation.layers) landed.push(layer)
    })()
    await prefill.peer.kvPush(prefill.pool, [reservation.ticket], src)
    await reservation.done
    await collecting
    expect(landed.sort((a, b) => a - b)).toEqual(Array.from({ length: 64 }, (_, i) => i))
    expect(sha256(readPool(decode.pool))).toBe(expected(decode, [prefill], src, dst))
    expect(decode.agent.stats().inFlight).toBe(0)
  })

  describe('heterogeneous tensor parallelism (HND)', () => {
    for (const [p, d] of [[2, 1], [1, 2], [4, 2]] as const) {
      it(`prefill tp ${p}, decode tp ${d}: each rank moves its heads' slice, pull, push and stream`, async () => {
        const prefills: Prefill[] = []
        for (let rank = 0; rank < p; rank++) prefills.push(await remoteWorker(opts('layer-kv-block', 'HND', { tp: { rank, size: p } })))
        const decodes: Decode[] = []
        for (let rank = 0; rank < d; rank++) decodes.push(await localWorker(opts('layer-kv-block', 'HND', { tp: { rank, size: d } }), `kv-d${rank}`))
        await connect(decodes, prefills)

        // Pull: every prefill rank offers; every decode rank pulls from those holding its heads.
        const offers = await Promise.all(prefills.map((w) => w.peer.kvOffer(w.pool, 'req-tp', SRC)))
        const tickets = offers.map((o) => o.ticket)
        await Promise.all(decodes.map((w) => w.handoff.pull(tickets, DST)))
        for (const w of decodes) expect(sha256(readPool(w.pool))).toBe(expected(w, prefills))
        // A prefill rank is done only once every decode rank reading it acknowledged.
        await Promise.all(prefills.map((w, i) => w.peer.finish(offers[i]!.token)))

        // Push: every decode rank reserves; every prefill rank pushes into those holding its heads.
        for (const w of decodes) {
          fillPool(w.pool, 9)
          w.before = readPool(w.pool)
        }
        const reservations = decodes.map((w) => w.handoff.reserve('req-tp-push', DST))
        const pushTickets = reservations.map((r) => r.ticket)
        await Promise.all(prefills.map((w) => w.peer.kvPush(w.pool, pushTickets, SRC)))
        await Promise.all(reservations.map((r) => r.done))
        for (const w of decodes) expect(sha256(readPool(w.pool))).toBe(expected(w, prefills))

        // Stream: the same, layer by layer; each decode rank sees every layer once.
        for (const w of decodes) {
          fillPool(w.pool, 11)
          w.before = readPool(w.pool)
        }
        const streamed = decodes.map((w) => w.handoff.reserve('req-tp-stream', DST))
        const seen = streamed.map(async (r) => {
          const layers: number[] = []
          for await (const layer of r.layers) layers.push(layer)
          return layers.sort((a, b) => a - b)
        })
        await Promise.all(prefills.map((w) => w.peer.kvStream(w.pool, streamed.map((r) => r.ticket), SRC)))
        await Promise.all(streamed.map((r) => r.done))
        for (const layers of await Promise.all(seen)) expect(layers).toEqual(Array.from({ length: SHAPE.layers }, (_, i) => i))
        for (const w of decodes) expect(sha256(readPool(w.pool))).toBe(expected(w, prefills))
      })
    }

    it('tickets that do not cover this rank\'s heads, of another layout or block count, or of the wrong kind are refused', async () => {
      const decode = await localWorker(opts('layer-kv-block', 'HND', { tp: { rank: 0, size: 1 } }))
      const half = await remoteWorker(opts('layer-kv-block', 'HND', { tp: { rank: 0, size: 2 } }))
      await connect([decode], [half])
      const offer = await half.peer.kvOffer(half.pool, 'req', SRC)
      await expect(decode.handoff.pull([offer.ticket], DST)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG', message: expect.stringMatching(/do not cover heads \[0, 4\)/) })
      await expect(decode.handoff.pull([offer.ticket], DST.slice(1))).rejects.toMatchObject({ code: 'ERR_INVALID_ARG', message: expect.stringMatching(/names 4 blocks/) })
      const reservation = decode.handoff.reserve('r', DST)
      await expect(decode.handoff.pull([reservation.ticket], DST)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG', message: expect.stringMatching(/push ticket/) })
      const other = await localWorker(opts('layer-kv-block', 'HND', { headDim: 16 }), 'kv-other')
      const foreign = other.handoff.offer('x', [0])
      await expect(decode.handoff.pull([foreign.ticket], [0])).rejects.toMatchObject({ code: 'ERR_INVALID_ARG', message: expect.stringMatching(/another KV layout/) })
      await expect(decode.handoff.pull([new Uint8Array(20)], DST)).rejects.toMatchObject({ code: 'ERR_BAD_METADATA' })
      throwsWith(() => decode.handoff.offer('x', [8]), 'ERR_INVALID_ARG')
      throwsWith(() => decode.handoff.offer('x', []), 'ERR_INVALID_ARG')
      throwsWith(() => decode.handoff.offer('x', [0], { leaseMs: -1 }), 'ERR_INVALID_ARG')
      throwsWith(() => new KvHandoff(decode.agent, decode.pool), 'ERR_INVALID_ARG')
      throwsWith(() => new KvHandoff(other.agent, decode.pool), 'ERR_INVALID_ARG')
      decode.handoff.close()
      await expect(reservation.done).rejects.toMatchObject({ code: 'ERR_CLOSED' })
      other.handoff.close()
      await expect(foreign.done).rejects.toMatchObject({ code: 'ERR_CLOSED' })
    })
  })

  describe('what goes wrong', () => {
    const o = opts('layer-kv-block', 'HND')

    it('a lease that ran out: the late pull rejects ERR_LEASE_EXPIRED, the offer ERR_TIMEOUT; an aborted offer is refused the same way', async () => {
      const decode = await localWorker(o)
      const prefill = await remoteWorker(o)
      await connect([decode], [prefill])
      const offer = await prefill.peer.kvOffer(prefill.pool, 'req-late', SRC, 200)
      const done = settle(prefill.peer.finish(offer.token))
      const outcome = await done
      expect(outcome.ok).toBe(false)
      expect((outcome as { error: Error & { code?: string } }).error.code).toBe('ERR_TIMEOUT')
      const late = await rejectsWith(() => decode.handoff.pull([offer.ticket], DST), 'ERR_LEASE_EXPIRED')
      expect(late.message).toMatch(/may have been reused/)

      // Withdrawn by its signal: done rejects ERR_ABORTED, a pull after it is not confirmed.
      const here = await localWorker(o, 'kv-prefill-here')
      const there = await spawnPeer({ engine })
      const pool = await there.kvPool(o, 'allocate')
      await there.kvHandoff(pool)
      await exchangeMetadata(here.agent, there)
      const controller = new AbortController()
      const withdrawn = here.handoff.offer('req-abort', SRC, { signal: controller.signal })
      controller.abort()
      await rejectsWith(() => withdrawn.done, 'ERR_ABORTED')
      const refused = await settle(there.kvPull(pool, [withdrawn.ticket], DST))
      expect(refused.ok).toBe(false)
      expect((refused as { error: { code?: string } }).error.code).toBe('ERR_LEASE_EXPIRED')
      expect(here.agent.stats().inFlight).toBe(0)
    })

    it('the prefill dies while a pull waits for its confirmation: the pull rejects ERR_PEER_UNREACHABLE, with nothing in flight', async () => {
      const decode = await localWorker(o)
      const prefill = await remoteWorker(o)
      await connect([decode], [prefill])
      const offer = await prefill.peer.kvOffer(prefill.pool, 'req-dies', SRC)
      // Frozen: it cannot confirm, so the pull waits; then killed.
      process.kill(prefill.peer.pid, 'SIGSTOP')
      const pulling = settle(decode.handoff.pull([offer.ticket], DST))
      await new Promise((resolve) => setTimeout(resolve, 100))
      await prefill.peer.kill('SIGKILL')
      const outcome = await within(pulling, 5_000, 'the pull from a dead prefill')
      expect(outcome.ok).toBe(false)
      expectKvxferError((outcome as { error: unknown }).error, 'ERR_PEER_UNREACHABLE')
      expect(decode.agent.stats().inFlight).toBe(0)
    })

    it('a puller dies mid-pull: the offer rejects ERR_PEER_UNREACHABLE (the blocks are the prefill\'s again)', async () => {
      const big = opts('layer-kv-block', 'HND', { blocks: 256, blockTokens: 16, kvHeads: 8, headDim: 128, dtype: 'bf16', layers: 4 })
      const prefill = await localWorker(big, 'kv-prefill-here')
      const decode = await spawnPeer({ engine })
      const pool = await decode.kvPool(big, 'allocate')
      await decode.kvHandoff(pool)
      await exchangeMetadata(prefill.agent, decode)
      const blocks = Array.from({ length: 256 }, (_, i) => i)
      const offer = prefill.handoff.offer('req-puller-dies', blocks)
      const received = prefill.agent.stats().notificationsReceived
      const pulling = settle(decode.kvPull(pool, [offer.ticket], blocks))
      // Its 'begin' (after its request for our pool) has arrived: it is pulling. Freeze it there.
      await eventually('the pull to begin', () => prefill.agent.stats().notificationsReceived >= received + 2, 10_000)
      process.kill(decode.pid, 'SIGSTOP')
      await decode.kill('SIGKILL')
      await rejectsWith(() => offer.done, 'ERR_PEER_UNREACHABLE', 5_000)
      expect((await pulling).ok).toBe(false)
      expect(prefill.agent.stats().inFlight).toBe(0)
    })

    it('the prefill dies mid-stream: the reservation and its layers reject ERR_PEER_UNREACHABLE', async () => {
      const decode = await localWorker(o)
      const prefill = await remoteWorker(o)
      await connect([decode], [prefill])
      const reservation = decode.handoff.reserve('req-stream-dies', DST)
      const layers = reservation.layers[Symbol.asyncIterator]()
      void prefill.peer.kvStream(prefill.pool, [reservation.ticket], SRC, 2_000).catch(() => {})
      // The first layer lands; the prefill dies computing the next.
      expect(await within(layers.next(), 10_000, 'layer 0')).toEqual({ done: false, value: 0 })
      await prefill.peer.kill('SIGKILL')
      await rejectsWith(() => reservation.done, 'ERR_PEER_UNREACHABLE', 5_000)
      await rejectsWith(() => layers.next(), 'ERR_PEER_UNREACHABLE', 1_000)
    })

    it('the decode dies mid-stream: the stream rejects ERR_PEER_UNREACHABLE once it writes again', async () => {
      const prefill = await localWorker(o, 'kv-prefill-here')
      const decode = await spawnPeer({ engine })
      const pool = await decode.kvPool(o, 'allocate')
      await decode.kvHandoff(pool)
      await exchangeMetadata(prefill.agent, decode)
      const reservation = await decode.kvReserve(pool, 'req-decode-dies', DST)
      const s = prefill.handoff.stream([reservation.ticket], SRC)
      s.layerReady(0)
      await eventually('layer 0 to land', () => prefill.agent.stats().transfers >= 1, 10_000)
      await decode.kill('SIGKILL')
      s.layerReady(1)
      s.layerReady(2)
      await rejectsWith(() => s.done, 'ERR_PEER_UNREACHABLE', 5_000)
      throwsWith(() => s.layerReady(2), 'ERR_INVALID_ARG')
      expect(prefill.agent.stats().inFlight).toBe(0)
    })

    it('timeouts and aborts: a reservation nobody fills, a pull from a frozen prefill, an aborted pull', async () => {
      const decode = await localWorker(o)
      const prefill = await remoteWorker(o)
      await connect([decode], [prefill])
      const empty = decode.handoff.reserve('req-nobody', DST, { timeoutMs: 200 })
      await rejectsWith(() => empty.done, 'ERR_TIMEOUT', 2_000)
      const layers = empty.layers[Symbol.asyncIterator]()
      await rejectsWith(() => layers.next(), 'ERR_TIMEOUT', 1_000)

      const offer = await prefill.peer.kvOffer(prefill.pool, 'req-frozen', SRC)
      process.kill(prefill.peer.pid, 'SIGSTOP')
      try {
        await rejectsWith(() => decode.handoff.pull([offer.ticket], DST, { timeoutMs: 300 }), 'ERR_TIMEOUT', 3_000)
        const controller = new AbortController()
        const aborted = settle(decode.handoff.pull([offer.ticket], DST, { signal: controller.signal }))
        setTimeout(() => controller.abort(), 100)
        const outcome = await within(aborted, 3_000, 'the aborted pull')
        expect(outcome.ok).toBe(false)
        expectKvxferError((outcome as { error: unknown }).error, 'ERR_ABORTED')
      } finally {
        process.kill(prefill.peer.pid, 'SIGCONT')
      }
      expect(decode.agent.stats().inFlight).toBe(0)
    })
  })
})
