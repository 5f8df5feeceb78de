// Proves KvPool puts a layout over real registered memory and names the right bytes: pools over
// one registered Buffer, one Buffer per layer and allocate() memory; view() and blockDescs() land
// where layout.offset says (written through one, read through the caller's own Buffer); the
// block allocator; descriptor() round trips, and garbage, truncated or altered descriptors are
// refused. Then real bytes move between a pool here and a pool in another process, for every
// order x heads layout, with scattered block ids and with runs that merge, both directions, each
// side initiating: the far end's whole pool must equal its old bytes with exactly the moved
// elements replaced (computed here from the reference in test/fixtures/kv.ts), so a transfer that
// moved too much, too little or the wrong elements fails. Heterogeneous TP: decode pools with
// tp.size 2 each read their heads' slice from a tp.size 1 prefill pool (HND and NHD).
// Every engine here: UCX always, NIXL where it loads.
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KvLayout, KvPool, KvxferError, type Agent, type KvHeadLayout, type KvLayoutOptions, type KvOrder, type Region } from '../../dist/index.js'
import {
  ENGINES, applyMoves, closeAll, createAgent, elementMoves, exchangeMetadata, fillPool, randomBytesFor, range, readPool, reportNixlSkipped,
  sha256, sha256Slices, throwsWith, rejectsWith,
} from '../fixtures/index.js'
import { disposeAllPeers, spawnPeer, type Peer, type PeerPool } from '../fixtures/peers.js'

reportNixlSkipped('KV pools (one process and two)')

const ORDERS: KvOrder[] = ['layer-kv-block', 'layer-block-kv', 'block-layer-kv']
const HEADS: KvHeadLayout[] = ['NHD', 'HND']
const SHAPE = { layers: 3, blocks: 8, blockTokens: 4, kvHeads: 4, headDim: 8, dtype: 'fp16' } as const
const opts = (order: KvOrder, heads: KvHeadLayout, more: Partial<KvLayoutOptions> = {}): KvLayoutOptions => ({ ...SHAPE, order, heads, ...more })

type Form = 'allocate' | 'buffer' | 'layers'

async function makePool(agent: Agent, o: KvLayoutOptions, form: Form): Promise<KvPool> {
  const layout = new KvLayout(o)
  if (form === 'allocate') return KvPool.allocate(agent, layout)
  if (form === 'buffer') return KvPool.over(agent, await agent.register(Buffer.alloc(layout.bytes)), layout)
  const regions: Region[] = []
  for (const _ of range(layout.layers)) regions.push(await agent.register(Buffer.alloc(layout.layerBytes)))
  return KvPool.over(agent, regions, layout)
}

/** Per-layer regions where the order allows them, else one Buffer. */
const layersOr = (order: KvOrder): Form => (order === 'block-layer-kv' ? 'buffer' : 'layers')

describe.each(ENGINES)('%s engine: KvPool', { timeout: 120_000 }, (engine) => {
  let agent: Agent
  let other: Agent
  let peer: Peer
  let seed = engine === 'ucx' ? 1000 : 2000

  beforeAll(async () => {
    agent = await createAgent('kv', { engine })
    other = await createAgent('kv-other', { engine })
    peer = await spawnPeer({ engine })
  }, 60_000)

  afterAll(async () => {
    await closeAll(agent, other)
    await disposeAllPeers()
  }, 60_000)

  describe('in one process', () => {
    it('over one registered Buffer: view, blockDescs and layout.offset agree with the caller\'s Buffer', async () => {
      const layout = new KvLayout(opts('layer-block-kv', 'HND'))
      const memory = Buffer.alloc(layout.bytes)
      const region = await agent.register(memory)
      const pool = KvPool.over(agent, region, layout)
      expect(pool.agent).toBe(agent)
      expect(pool.layout).toBe(layout)
      expect(pool.regions).toEqual([region])
      const e = { layer: 2, kv: 1, block: 5, token: 3, head: 2 }
      const at = layout.offset(e)
      pool.view(at, layout.headBytes).fill(0xab)
      expect(memory.subarray(at, at + layout.headBytes).every((b) => b === 0xab)).toBe(true)
      expect(memory.reduce((n, b) => n + (b === 0xab ? 1 : 0), 0)).toBe(layout.headBytes)
      const desc = pool.blockDescs([5], { layers: 2, kv: 1, heads: [2, 3] }).get(0)
      expect(desc.address).toBe(region.address + BigInt(layout.offset({ ...e, token: 0 })))
      expect(desc.length).toBe(layout.blockTokens * layout.headBytes)
      expect(pool.view().length).toBe(layout.bytes)
      throwsWith(() => pool.view(layout.bytes - 4, 8), 'ERR_OUT_OF_RANGE')
      throwsWith(() => pool.view(layout.bytes), 'ERR_OUT_OF_RANGE')
      throwsWith(() => pool.view(-1), 'ERR_INVALID_ARG')
    })

    it('over one Buffer per layer: each layer in its own region, descriptors never cross them', async () => {
      const layout = new KvLayout(opts('layer-kv-block', 'NHD'))
      const memories = range(layout.layers).map(() => Buffer.alloc(layout.layerBytes))
      const regions: Region[] = []
      for (const m of memories) regions.push(await agent.register(m))
      const pool = KvPool.over(agent, regions, layout)
      const e = { layer: 1, kv: 0, block: 7, token: 1, head: 3 }
      pool.view(layout.offset(e), layout.headBytes).fill(7)
      const inLayer = layout.offset(e) - layout.layerBytes
      expect(memories[1].subarray(inLayer, inLayer + layout.headBytes).every((b) => b === 7)).toBe(true)
      expect(pool.view(layout.layerBytes).length).toBe(layout.layerBytes)
      throwsWith(() => pool.view(layout.layerBytes - 1, 2), 'ERR_OUT_OF_RANGE')
      const all = pool.blockDescs(range(layout.blocks))
      expect([...all]).toEqual(regions.map((r) => ({ address: r.address, length: layout.layerBytes, device: 0 })))
      expect(pool.blockDescCount(range(layout.blocks))).toEqual({ merged: 3, unmerged: 8 * 3 * 2 })
      // Exact offsets of an unmerged list: one per part, in the pool's order (layer, kv, block).
      const parts = pool.blockDescs([6, 2], { merge: false })
      const want = range(3).flatMap((layer) => [0, 1].flatMap((kv) => [6, 2].map((block) => {
        const offset = layout.partOffset({ layer, kv, block })
        return { address: regions[layer].address + BigInt(offset - layer * layout.layerBytes), length: layout.partBytes, device: 0 }
      })))
      expect([...parts]).toEqual(want)
    })

    it('allocated: any size the layout needs, zero-filled; close() frees it', async () => {
      const layout = new KvLayout(opts('block-layer-kv', 'HND'))
      const pool = await KvPool.allocate(agent, layout)
      expect(pool.regions.length).toBe(1)
      expect(pool.regions[0].length).toBe(layout.bytes)
      expect(pool.view().every((b) => b === 0)).toBe(true)
      const first = pool.blockDescs([3, 4])
      expect(first.length).toBe(1)
      expect(first.get(0).address).toBe(pool.regions[0].address + BigInt(3 * layout.blockBytes))
      await pool.close()
      expect(pool.regions[0].registered).toBe(false)
      await pool.close()
      // A pool over the caller's regions leaves them registered.
      const region = await agent.register(Buffer.alloc(layout.bytes))
      await KvPool.over(agent, region, layout).close()
      expect(region.registered).toBe(true)
      await region.deregister()
    })

    it('refuses regions that do not fit the layout', async () => {
      const layout = new KvLayout(opts('layer-kv-block', 'NHD'))
      const whole = await agent.register(Buffer.alloc(layout.bytes))
      const short = await agent.register(Buffer.alloc(layout.bytes - 1))
      const layers = [] as Region[]
      for (const _ of range(3)) layers.push(await agent.register(Buffer.alloc(layout.layerBytes)))
      expect(throwsWith(() => KvPool.over(agent, short, layout), 'ERR_INVALID_ARG').message).toMatch(/needs exactly/)
      throwsWith(() => KvPool.over(agent, [whole, whole], layout), 'ERR_INVALID_ARG')
      throwsWith(() => KvPool.over(agent, layers.slice(0, 2), layout), 'ERR_INVALID_ARG')
      throwsWith(() => KvPool.over(agent, [layers[0], layers[1], layers[1]], layout), 'ERR_INVALID_ARG')
      throwsWith(() => KvPool.over(agent, [layers[0], layers[1], whole], layout), 'ERR_INVALID_ARG')
      const blockMajor = new KvLayout(opts('block-layer-kv', 'NHD'))
      expect(throwsWith(() => KvPool.over(agent, layers, blockMajor), 'ERR_INVALID_ARG').message).toMatch(/layer outermost/)
      throwsWith(() => KvPool.over(agent, [], layout), 'ERR_INVALID_ARG')
      throwsWith(() => KvPool.over(agent, { address: 0n, length: layout.bytes } as never, layout), 'ERR_INVALID_ARG')
      throwsWith(() => KvPool.over(agent, whole, opts('layer-kv-block', 'NHD') as never), 'ERR_INVALID_ARG')
      throwsWith(() => KvPool.over({} as never, whole, layout), 'ERR_INVALID_ARG')
      // Another agent's region, and a deregistered one.
      const foreign = await other.register(Buffer.alloc(layout.bytes))
      throwsWith(() => KvPool.over(agent, foreign, layout), 'ERR_INVALID_ARG')
      await short.deregister()
      const gone = await agent.register(Buffer.alloc(layout.bytes))
      await gone.deregister()
      throwsWith(() => KvPool.over(agent, gone, layout), 'ERR_NOT_REGISTERED')
      await expect(KvPool.allocate(agent, {} as never)).rejects.toBeInstanceOf(KvxferError)
      expect(KvPool.over(agent, layers, layout).regions).toEqual(layers)
    })

    it('block allocator: ascending ids, ERR_BUSY when full, double and foreign frees refused', async () => {
      const pool = await makePool(agent, opts('layer-kv-block', 'HND'), 'allocate')
      expect(pool.freeBlockCount).toBe(8)
      const a = pool.allocBlocks(3)
      expect(a).toEqual([0, 1, 2])
      expect(pool.blockDescCount(a).merged).toBe(3 * 2)
      const b = pool.allocBlocks(5)
      expect(b).toEqual([3, 4, 5, 6, 7])
      expect(pool.freeBlockCount).toBe(0)
      expect(throwsWith(() => pool.allocBlocks(1), 'ERR_BUSY').message).toMatch(/0 free blocks of 8/)
      expect(pool.allocBlocks(0)).toEqual([])
      pool.freeBlocks([6, 4, 5])
      expect(pool.freeBlockCount).toBe(3)
      throwsWith(() => pool.freeBlocks([6]), 'ERR_INVALID_ARG')
      throwsWith(() => pool.freeBlocks([7, 7]), 'ERR_INVALID_ARG')
      throwsWith(() => pool.freeBlocks([8]), 'ERR_OUT_OF_RANGE')
      throwsWith(() => pool.freeBlocks([0.5]), 'ERR_INVALID_ARG')
      // A refused free frees nothing.
      throwsWith(() => pool.freeBlocks([7, 6]), 'ERR_INVALID_ARG')
      expect(pool.freeBlockCount).toBe(3)
      expect(throwsWith(() => pool.allocBlocks(4), 'ERR_BUSY').message).toMatch(/3 free/)
      expect(pool.freeBlockCount).toBe(3)
      expect(pool.allocBlocks(3)).toEqual([4, 5, 6])
      throwsWith(() => pool.allocBlocks(-1), 'ERR_INVALID_ARG')
      throwsWith(() => pool.allocBlocks(1.5), 'ERR_INVALID_ARG')
      pool.freeBlocks([...a, ...b])
      expect(pool.freeBlockCount).toBe(8)
      await pool.close()
    })

    it('descriptor() round trips: the peer\'s view of the pool names the same bytes', async () => {
      const pool = await makePool(agent, opts('layer-block-kv', 'NHD', { tp: { rank: 1, size: 2 } }), 'layers')
      const bytes = pool.descriptor()
      const decoded = KvPool.decodeDescriptor(bytes)
      expect(decoded.agent).toBe(agent.name)
      expect(decoded.layout).toEqual(pool.layout)
      expect(decoded.regions).toEqual(pool.regions.map((r) => ({ address: r.address, length: r.length, kind: 'dram', device: 0 })))
      const remote = KvPool.remote(bytes)
      expect(remote.agent).toBe(agent.name)
      for (const ids of [[0, 1, 2], [7, 3, 4], range(8)]) {
        expect([...remote.blockDescs(ids)]).toEqual([...pool.blockDescs(ids)])
        expect([...remote.blockDescs(ids, { heads: [3, 4] })]).toEqual([...pool.blockDescs(ids, { heads: [3, 4] })])
      }
      expect([...KvPool.remote(decoded).blockDescs([5])]).toEqual([...pool.blockDescs([5])])
    })

    it('decodeDescriptor refuses garbage, truncation, other versions and absurd contents (ERR_BAD_METADATA)', async () => {
      const pool = await makePool(agent, opts('layer-kv-block', 'HND'), 'buffer')
      const good = pool.descriptor()
      const header = 12
      const json = JSON.parse(Buffer.from(good.subarray(header)).toString('utf8'))
      const withBody = (body: unknown, version = 1) => {
        const text = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body, (_, v) => (typeof v === 'bigint' ? v.toString() : v)))
        const out = Buffer.alloc(header + text.length)
        out.set(good.subarray(0, 4))
        out.writeUInt16LE(version, 4)
        out.writeUInt32LE(text.length, 8)
        out.set(text, header)
        return new Uint8Array(out)
      }
      expect(KvPool.decodeDescriptor(withBody(json)).layout).toEqual(pool.layout)
      const refused = (bytes: Uint8Array, why: RegExp) =>
        expect(throwsWith(() => KvPool.decodeDescriptor(bytes), 'ERR_BAD_METADATA').message).toMatch(why)
      for (let n = 0; n < good.length; n++) throwsWith(() => KvPool.decodeDescriptor(good.subarray(0, n)), 'ERR_BAD_METADATA')
      refused(new Uint8Array([...good, 0]), /follow/)
      refused(withBody(json, 2), /version 2/)
      refused(withBody(json, 0), /version 0/)
      const magic = new Uint8Array(good)
      magic[0] ^= 1
      refused(magic, /magic/)
      const reserved = new Uint8Array(good)
      reserved[6] = 1
      refused(reserved, /reserved/)
      refused(withBody('{"agent": "x", '), /JSON/)
      refused(new Uint8Array([...withBody('{}').subarray(0, header), 0xff, 0xfe]), /UTF-8 JSON/)
      refused(withBody('[]'), /not an object/)
      refused(withBody({ ...json, extra: 1 }), /unknown field 'extra'/)
      refused(withBody({ ...json, agent: '' }), /agent/)
      refused(withBody({ ...json, agent: 'x'.repeat(256) }), /agent/)
      refused(withBody({ ...json, layout: { ...json.layout, blocks: 2 ** 60 } }), /blocks/)
      refused(withBody({ ...json, layout: { ...json.layout, layers: 2 ** 30, blocks: 2 ** 30 } }), /2\^53/)
      refused(withBody({ ...json, layout: { ...json.layout, dtype: 'fp64' } }), /dtype/)
      refused(withBody({ ...json, layout: { ...json.layout, tp: { rank: 2, size: 2 } } }), /tp.rank/)
      refused(withBody({ ...json, layout: { ...json.layout, tp: { rank: 0, size: 2, extra: 1 } } }), /unknown field/)
      refused(withBody({ ...json, layout: { ...json.layout, secret: 1 } }), /unknown field/)
      refused(withBody({ ...json, regions: [] }), /one region or one per layer/)
      refused(withBody({ ...json, regions: {} }), /not an array/)
      const r0 = json.regions[0]
      refused(withBody({ ...json, regions: [{ ...r0, length: r0.length + 1 }] }), /needs exactly/)
      refused(withBody({ ...json, regions: [{ ...r0, length: -1 }] }), /length/)
      refused(withBody({ ...json, regions: [{ ...r0, address: 12 }] }), /address/)
      refused(withBody({ ...json, regions: [{ ...r0, address: '0x10' }] }), /address/)
      refused(withBody({ ...json, regions: [{ ...r0, address: (2n ** 64n - 16n).toString() }] }), /64-bit/)
      refused(withBody({ ...json, regions: [{ ...r0, kind: 'file' }] }), /kind/)
      refused(withBody({ ...json, regions: [{ ...r0, device: -1 }] }), /device/)
      refused(withBody({ ...json, regions: [{ ...r0, device: 2 ** 32 }] }), /device/)
      refused(withBody({ ...json, regions: [{ ...r0, more: 1 }] }), /unknown field/)
      refused(withBody({ ...json, regions: range(3).map(() => r0) }), /layer 0/)
      refused(new Uint8Array((1 << 20) + 1), /more than/)
      throwsWith(() => KvPool.decodeDescriptor('bytes' as never), 'ERR_INVALID_ARG')
      // Random bytes, and the good descriptor with random bytes changed: refused, or (a digit
      // changed into another) a descriptor that is itself valid; never any other error.
      fc.assert(
        fc.property(
          fc.oneof(
            fc.uint8Array({ maxLength: 400 }),
            fc.array(fc.tuple(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }).map((edits) => {
              const bytes = new Uint8Array(good)
              for (const [at, value] of edits) bytes[at] = value
              return bytes
            }),
          ),
          (bytes) => {
            try {
              const d = KvPool.decodeDescriptor(bytes)
              expect(d.layout).toBeInstanceOf(KvLayout)
              expect(d.regions.reduce((n, r) => n + r.length, 0)).toBe(d.layout.bytes)
            } catch (error) {
              expect((error as KvxferError).code, String(error)).toBe('ERR_BAD_METADATA')
            }
          },
        ),
        { numRuns: 2000 },
      )
    })
  })

  describe('between two processes', () => {
    let peerName: string

    /** Pools here and in the peer, both filled with known bytes; metadata exchanged after registering. */
    async function twoPools(here: KvLayoutOptions, hereForm: Form, there: KvLayoutOptions, thereForm: Form) {
      const local = await makePool(agent, here, hereForm)
      const remote = await peer.kvPool(there, thereForm)
      const [localSeed, remoteSeed] = [++seed, ++seed]
      const localBytes = Buffer.from(fillPool(local, localSeed))
      await peer.kvFill(remote, remoteSeed)
      peerName = await exchangeMetadata(agent, peer)
      return { local, remote, localBytes, remoteBytes: randomBytesFor(new KvLayout(there).bytes, remoteSeed) }
    }

    /** The peer's pool must hold `before` with exactly `moves` replaced from `src`; the moved bytes hashed alone too. */
    async function expectPeerPool(pool: PeerPool, before: Buffer, src: Buffer, moves: Array<[number, number]>, slot: number) {
      expect(await peer.kvHash(pool, moves.map(([, to]) => [to, slot]))).toBe(sha256Slices(src, moves.map(([from]) => [from, slot])))
      expect(await peer.kvHash(pool)).toBe(sha256(applyMoves(before, src, moves, slot)))
    }

    const cases = ORDERS.flatMap((order) => HEADS.map((heads) => ({ order, heads })))

    it.each(cases)('$order $heads: WRITE and READ of scattered blocks, blockDescs on both sides', async ({ order, heads }) => {
      const o = opts(order, heads)
      const { local, remote, localBytes, remoteBytes } = await twoPools(o, 'allocate', o, layersOr(order))
      const far = KvPool.remote(remote.descriptor)
      // Ids that are adjacent on neither side (nor wrap from the last block of one part row to
      // the first of the next), so each side's own blockDescs merge alike and pair up one to one:
      // per part (layer-kv-block), per block and layer (layer-block-kv), per block (block-layer-kv).
      const [mine, theirs] = [[6, 1, 3], [0, 4, 6]]
      const [l, r] = [local.blockDescs(mine), far.blockDescs(theirs)]
      expect(l.length).toBe({ 'layer-kv-block': 3 * 3 * 2, 'layer-block-kv': 3 * 3, 'block-layer-kv': 3 }[order])
      expect([...l].map((d) => d.length)).toEqual([...r].map((d) => d.length))
      const result = await agent.write(l, r, peerName, { timeoutMs: 30_000 })
      expect(result.bytes).toBe(3 * local.layout.blockBytes)
      const written = elementMoves(o, mine, o, theirs)
      await expectPeerPool(remote, remoteBytes, localBytes, written, local.layout.headBytes)
      // READ other blocks back into other local blocks: this side changes exactly there.
      const [into, from] = [[0, 5], [2, 5]]
      await agent.read(local.blockDescs(into), far.blockDescs(from), peerName, { timeoutMs: 30_000 })
      const afterWrite = applyMoves(remoteBytes, localBytes, written, local.layout.headBytes)
      const read = elementMoves(o, from, o, into)
      expect(sha256(readPool(local))).toBe(sha256(applyMoves(localBytes, afterWrite, read, local.layout.headBytes)))
      await local.close()
    })

    it.each(cases)('$order $heads: runs that merge on one side or both, layer and K/V subsets, the peer initiating', async ({ order, heads }) => {
      const o = opts(order, heads)
      const there = opts(order, heads, { blocks: 12 })
      const { local, remote, localBytes, remoteBytes } = await twoPools(o, layersOr(order), there, 'allocate')
      const far = KvPool.remote(remote.descriptor)
      const [mine, theirs] = [[1, 2, 3, 6, 7, 0], [4, 5, 6, 0, 3, 11]]
      const pair = local.pairDescs(mine, far, theirs)
      expect(pair.unmerged).toBe(6 * 3 * 2)
      expect(pair.local.length).toBeLessThan(pair.unmerged)
      await agent.write(pair.local, pair.remote, peerName, { timeoutMs: 30_000 })
      const written = elementMoves(o, mine, there, theirs)
      await expectPeerPool(remote, remoteBytes, localBytes, written, local.layout.headBytes)
      // The peer reads layers 2 and 0, V only, of three of our blocks into three of its own.
      const sel = { layers: [2, 0], kv: 1 as const }
      const [src, dst] = [[4, 5, 0], [8, 9, 1]]
      const r = await peer.kvTransfer('read', remote, dst, local.descriptor(), src, sel)
      expect(r.bytes).toBe(3 * 2 * local.layout.partBytes)
      const afterWrite = applyMoves(remoteBytes, localBytes, written, local.layout.headBytes)
      const read = elementMoves(o, src, there, dst, { layers: sel.layers, kvs: [1] })
      expect(await peer.kvHash(remote)).toBe(sha256(applyMoves(afterWrite, localBytes, read, local.layout.headBytes)))
      // And writes K of one block into ours.
      await peer.kvTransfer('write', remote, [10], local.descriptor(), [7], { kv: 0 })
      const back = elementMoves(there, [10], o, [7], { kvs: [0] })
      const remoteNow = applyMoves(afterWrite, localBytes, read, local.layout.headBytes)
      expect(sha256(readPool(local))).toBe(sha256(applyMoves(localBytes, remoteNow, back, local.layout.headBytes)))
    })

    it.each(HEADS)('heterogeneous TP, %s: two tp.size 2 decode pools each read their heads from a tp.size 1 prefill pool', async (heads) => {
      const prefill = opts('layer-kv-block', heads, { kvHeads: 8 })
      const remote = await peer.kvPool(prefill, 'layers')
      const prefillSeed = ++seed
      await peer.kvFill(remote, prefillSeed)
      const prefillBytes = randomBytesFor(new KvLayout(prefill).bytes, prefillSeed)
      const far = KvPool.remote(remote.descriptor)
      const [src, dst] = [[5, 2, 3], [0, 1, 6]]
      for (const rank of [0, 1]) {
        const o = { ...prefill, tp: { rank, size: 2 } }
        const local = await makePool(agent, o, 'buffer')
        const before = Buffer.from(fillPool(local, ++seed))
        expect(local.layout.hash).toBe(far.layout.hash)
        peerName = await exchangeMetadata(agent, peer)
        const pair = local.pairDescs(dst, far, src)
        // HND: one run per part of the prefill pool; NHD: one per token.
        expect(pair.local.length).toBe(3 * 3 * 2 * (heads === 'HND' ? 1 : 4))
        await agent.read(pair.local, pair.remote, peerName, { timeoutMs: 30_000 })
        const moves = elementMoves(prefill, src, o, dst, { heads: [rank * 4, rank * 4 + 4] })
        expect(moves.length).toBe(3 * 3 * 2 * 4 * 4)
        expect(sha256(readPool(local))).toBe(sha256(applyMoves(before, prefillBytes, moves, local.layout.headBytes)))
        // The moved elements alone, hashed at both ends.
        expect(sha256Slices(readPool(local), moves.map(([, to]) => [to, local.layout.headBytes])))
          .toBe(sha256Slices(prefillBytes, moves.map(([from]) => [from, local.layout.headBytes])))
      }
      expect(await peer.kvHash(remote)).toBe(sha256(prefillBytes))
    })

    it('descriptors of a pool that is not the peer\'s are refused at prepare (ERR_NOT_REGISTERED)', async () => {
      const o = opts('layer-kv-block', 'HND')
      const { local } = await twoPools(o, 'buffer', o, 'buffer')
      const stale = KvPool.remote({ ...KvPool.decodeDescriptor(local.descriptor()), agent: peerName })
      await rejectsWith(() => agent.write(local.blockDescs([0]), stale.blockDescs([0]), peerName), 'ERR_NOT_REGISTERED')
    })
  })
})
