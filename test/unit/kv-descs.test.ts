// Proves blockDescs and pairDescs name exactly the bytes they should, on pools described the way a
// peer describes them (RemoteKvPool: pure, no agent). Property tests against the reference walk
// (test/fixtures/kv.ts): every descriptor is read back element by element, and the elements must
// be exactly the selected ones (blocks, layers, K/V, heads), inside one region each, merged as far
// as memory allows (no two neighbours left that could join) and never across regions, even
// regions that touch in the address space. pairDescs must pair element with element across pools
// of different orders, sizes, TP positions and region forms. Plus the counts the bench reports,
// fixed examples, and every refusal.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  KvLayout, KvPool, type DescList, type KvDtype, type KvElement, type KvHeadLayout, type KvLayoutOptions, type KvOrder, type RemoteKvPool,
} from '../../dist/index.js'
import { kvKey, range, selectedElements, throwsWith, walkLayout, type KvReference } from '../fixtures/index.js'

const ORDERS: KvOrder[] = ['layer-kv-block', 'layer-block-kv', 'block-layer-kv']
const HEADS: KvHeadLayout[] = ['NHD', 'HND']
const DTYPES: KvDtype[] = ['fp32', 'bf16', 'fp16', 'fp8']

type Form = 'one' | 'layers'

/** A peer's pool over synthetic addresses; per-layer regions touch each other in the address space. */
function remotePool(o: KvLayoutOptions, form: Form, base = 0x7f00_0000_0000n, device = 0): RemoteKvPool {
  const layout = new KvLayout(o)
  const regions = form === 'one'
    ? [{ address: base, length: layout.bytes, kind: 'dram' as const, device }]
    : range(layout.layers).map((l) => ({ address: base + BigInt(l * layout.layerBytes), length: layout.layerBytes, kind: 'dram' as const, device }))
  return KvPool.remote({ agent: 'peer', layout, regions })
}

interface Piece {
  region: number
  /** Byte offset in the layout. */
  offset: number
  length: number
}

/** Where each descriptor is, as layout offsets; fails on one that leaves its region or names another device. */
function locate(pool: RemoteKvPool, list: DescList): Piece[] {
  return [...list].map((d, i) => {
    const region = pool.regions.findIndex((r) => d.address >= r.address && d.address < r.address + BigInt(r.length))
    expect(region, `descriptor ${i} is in a region`).toBeGreaterThanOrEqual(0)
    const r = pool.regions[region]
    expect(d.address + BigInt(d.length) <= r.address + BigInt(r.length), `descriptor ${i} stays inside region ${region}`).toBe(true)
    expect(d.device).toBe(r.device)
    const base = pool.regions.length === 1 ? 0 : region * pool.layout.layerBytes
    return { region, offset: base + Number(d.address - r.address), length: d.length }
  })
}

/** The elements of each piece, in memory order. */
function elementsOf(ref: KvReference, pieces: Piece[]): KvElement[][] {
  return pieces.map((p) => {
    expect(p.offset % ref.slot).toBe(0)
    expect(p.length % ref.slot).toBe(0)
    return range(p.length / ref.slot).map((i) => ref.at.get(p.offset + i * ref.slot)!)
  })
}

const sortedKeys = (elements: KvElement[]) => elements.map(kvKey).sort()

/** No two neighbours that could have been one descriptor. */
function expectMaximal(pieces: Piece[]): void {
  for (let i = 1; i < pieces.length; i++) {
    const [a, b] = [pieces[i - 1], pieces[i]]
    expect(a.region === b.region && a.offset + a.length === b.offset, `descriptors ${i - 1} and ${i} touch and were not merged`).toBe(false)
  }
}

/** Model fields two pools of one model share; each side then gets its own blocks, order, tp and region form. */
const model = fc.record({
  layers: fc.integer({ min: 1, max: 3 }),
  blockTokens: fc.integer({ min: 1, max: 4 }),
  kvHeads: fc.constantFrom(2, 4, 6),
  headDim: fc.integer({ min: 1, max: 3 }),
  dtype: fc.constantFrom(...DTYPES),
  heads: fc.constantFrom(...HEADS),
})

function side(m: { layers: number; kvHeads: number }) {
  const sizes = range(m.kvHeads).map((i) => i + 1).filter((s) => m.kvHeads % s === 0)
  return fc.record({
    blocks: fc.integer({ min: 1, max: 6 }),
    order: fc.constantFrom(...ORDERS),
    size: fc.constantFrom(...sizes),
    rankSeed: fc.nat(),
    perLayer: fc.boolean(),
  }).map(({ size, rankSeed, perLayer, ...rest }) => {
    const o: KvLayoutOptions = { ...m, ...rest, tp: { rank: rankSeed % size, size } } as KvLayoutOptions
    const form: Form = perLayer && o.order !== 'block-layer-kv' && m.layers > 1 ? 'layers' : 'one'
    return { o, form }
  })
}

/** Layers and K/V to select: all (undefined) or a subset in some order. */
const layerChoice = (layers: number) => fc.option(fc.shuffledSubarray(range(layers), { minLength: 1 }), { nil: undefined })
const kvChoice = fc.constantFrom<0 | 1 | undefined>(undefined, 0, 1)

describe('blockDescs', () => {
  it('covers exactly the selected elements, merged as far as memory allows (property)', () => {
    const arb = model.chain((m) => side(m).chain(({ o, form }) => {
      const layout = new KvLayout(o)
      return fc.record({
        o: fc.constant(o),
        form: fc.constant(form),
        ids: fc.array(fc.integer({ min: 0, max: o.blocks - 1 }), { maxLength: 8 }),
        layers: layerChoice(o.layers),
        kv: kvChoice,
        heads: fc.option(fc.tuple(fc.integer({ min: layout.headStart, max: layout.headEnd - 1 }), fc.integer({ min: 1, max: layout.headsPerRank }))
          .map(([a, w]) => [a, Math.min(layout.headEnd, a + w)] as [number, number]), { nil: undefined }),
      })
    }))
    fc.assert(
      fc.property(arb, ({ o, form, ids, layers, kv, heads }) => {
        const pool = remotePool(o, form)
        const ref = walkLayout(o)
        const options = { layers, kv, heads }
        const want = selectedElements(o, ids, { layers, kvs: kv === undefined ? undefined : [kv], heads }).map(([, e]) => e)
        const list = pool.blockDescs(ids, options)
        const pieces = locate(pool, list)
        expect(sortedKeys(elementsOf(ref, pieces).flat())).toEqual(sortedKeys(want))
        expectMaximal(pieces)
        expect(list.totalBytes).toBe(want.length * ref.slot)

        const unmerged = pool.blockDescs(ids, { ...options, merge: false })
        const subset = heads !== undefined && heads[1] - heads[0] < pool.layout.headsPerRank
        const perPart = subset && o.heads === 'NHD' ? o.blockTokens : 1
        expect(unmerged.length).toBe(ids.length * (layers ?? range(o.layers)).length * (kv === undefined ? 2 : 1) * perPart)
        expect(sortedKeys(elementsOf(ref, locate(pool, unmerged)).flat())).toEqual(sortedKeys(want))
        expect(pool.blockDescCount(ids, options)).toEqual({ merged: list.length, unmerged: unmerged.length })
      }),
      { numRuns: 400 },
    )
  })

  const o: KvLayoutOptions = { layers: 3, blocks: 16, blockTokens: 4, kvHeads: 4, headDim: 8, dtype: 'fp16', order: 'layer-kv-block', heads: 'NHD' }
  const P = 4 * 4 * 8 * 2

  it('layer-kv-block: a run of consecutive ids is one descriptor per layer and K/V', () => {
    const pool = remotePool(o, 'one')
    expect(pool.blockDescCount([3, 4, 5, 9], {})).toEqual({ merged: 3 * 2 * 2, unmerged: 4 * 3 * 2 })
    const first = pool.blockDescs([3, 4, 5, 9]).get(0)
    expect(first).toEqual({ address: pool.regions[0].address + BigInt(pool.layout.offset({ layer: 0, kv: 0, block: 3, token: 0, head: 0 })), length: 3 * P, device: 0 })
    // Descending ids are adjacent too, but not in the order asked: no merge.
    expect(pool.blockDescCount([5, 4, 3]).merged).toBe(3 * 3 * 2)
    // The whole pool is one descriptor per region.
    expect(pool.blockDescCount(range(16))).toEqual({ merged: 1, unmerged: 16 * 3 * 2 })
    expect(remotePool(o, 'layers').blockDescCount(range(16))).toEqual({ merged: 3, unmerged: 16 * 3 * 2 })
  })

  it('layer-block-kv: a block\'s K and V touch, so a run is one descriptor per layer', () => {
    const pool = remotePool({ ...o, order: 'layer-block-kv' }, 'one')
    expect(pool.blockDescCount([2, 3]).merged).toBe(3)
    expect(pool.blockDescCount([2, 3], { kv: 1 }).merged).toBe(2 * 3)
    expect(pool.blockDescs([2, 3], { layers: 1 }).get(0).length).toBe(4 * P)
  })

  it('block-layer-kv: a run of blocks is one descriptor', () => {
    const pool = remotePool({ ...o, order: 'block-layer-kv' }, 'one')
    expect(pool.blockDescCount([7, 8, 9])).toEqual({ merged: 1, unmerged: 3 * 3 * 2 })
    expect(pool.blockDescs([7, 8, 9]).get(0).length).toBe(3 * 2 * 3 * P)
    expect(pool.blockDescCount([7, 8, 9], { layers: [0, 1] }).merged).toBe(3)
  })

  it('never merges across per-layer regions, even where they touch', () => {
    const pool = remotePool(o, 'layers')
    const [a, b] = [pool.regions[0], pool.regions[1]]
    expect(a.address + BigInt(a.length)).toBe(b.address)
    // Layer 0's last V block ends where layer 1's first K block starts.
    expect(pool.blockDescCount([15], { kv: 1, layers: [0] }).merged).toBe(1)
    const list = pool.blockDescs([15, 0], { layers: [0, 1] })
    expect(list.length).toBe(2 * 2 * 2)
    expect([...list].every((d) => d.length === P)).toBe(true)
  })

  it('heads: HND gives one run per part, NHD one per token', () => {
    const hnd = remotePool({ ...o, heads: 'HND' }, 'one')
    const run = hnd.blockDescs([1], { heads: [1, 3], layers: 0, kv: 0 })
    expect([...run].map((d) => d.length)).toEqual([2 * 4 * 16])
    expect(run.get(0).address - hnd.regions[0].address).toBe(BigInt(hnd.layout.offset({ layer: 0, kv: 0, block: 1, token: 0, head: 1 })))
    const nhd = remotePool(o, 'one')
    const tokens = nhd.blockDescs([1], { heads: [1, 3], layers: 0, kv: 0 })
    expect(tokens.length).toBe(4)
    expect([...tokens].map((d) => Number(d.address - nhd.regions[0].address)))
      .toEqual(range(4).map((token) => nhd.layout.offset({ layer: 0, kv: 0, block: 1, token, head: 1 })))
    // All of the rank's heads is the whole part again.
    expect(nhd.blockDescCount([1], { heads: [0, 4] })).toEqual(nhd.blockDescCount([1]))
  })

  it('heads are model-global: rank 1 of 2 holds [2, 4)', () => {
    const pool = remotePool({ ...o, heads: 'HND', tp: { rank: 1, size: 2 } }, 'one')
    expect(pool.blockDescs([0], { heads: [3, 4], layers: 0, kv: 0 }).get(0).length).toBe(4 * 16)
    throwsWith(() => pool.blockDescs([0], { heads: [1, 3] }), 'ERR_OUT_OF_RANGE')
  })

  it('KvPool.remote checks a hand-made descriptor', () => {
    const layout = new KvLayout(o)
    const region = { address: 0x1000n, length: layout.bytes, kind: 'dram' as const, device: 0 }
    expect(KvPool.remote({ agent: 'p', layout, regions: [region] }).agent).toBe('p')
    throwsWith(() => KvPool.remote({ agent: 'p', layout, regions: [{ ...region, address: 4096 as never }] }), 'ERR_INVALID_ARG')
    throwsWith(() => KvPool.remote({ agent: 'p', layout, regions: [{ ...region, kind: 'file' as never }] }), 'ERR_INVALID_ARG')
    throwsWith(() => KvPool.remote({ agent: 'p', layout, regions: [{ ...region, length: 1 }] }), 'ERR_INVALID_ARG')
    throwsWith(() => KvPool.remote({ agent: 1 as never, layout, regions: [region] }), 'ERR_INVALID_ARG')
    throwsWith(() => KvPool.remote({ agent: 'p', layout: o as never, regions: [region] }), 'ERR_INVALID_ARG')
  })

  it('an empty id list is an empty list', () => {
    expect(remotePool(o, 'one').blockDescs([]).length).toBe(0)
  })

  it('takes any iterable of ids', () => {
    const pool = remotePool(o, 'one')
    expect(pool.blockDescCount(new Set([3, 4]))).toEqual(pool.blockDescCount([3, 4]))
    expect(pool.blockDescCount(Int32Array.of(3, 4))).toEqual(pool.blockDescCount([3, 4]))
  })

  it('refuses ids, layers, kv, heads and options that do not fit', () => {
    const pool = remotePool(o, 'one')
    throwsWith(() => pool.blockDescs([16]), 'ERR_OUT_OF_RANGE')
    throwsWith(() => pool.blockDescs([-1]), 'ERR_OUT_OF_RANGE')
    throwsWith(() => pool.blockDescs([1.5]), 'ERR_INVALID_ARG')
    throwsWith(() => pool.blockDescs(['1'] as never), 'ERR_INVALID_ARG')
    throwsWith(() => pool.blockDescs(3 as never), 'ERR_INVALID_ARG')
    throwsWith(() => pool.blockDescs([0], { layers: 3 }), 'ERR_OUT_OF_RANGE')
    throwsWith(() => pool.blockDescs([0], { layers: [0, 0.5] }), 'ERR_INVALID_ARG')
    throwsWith(() => pool.blockDescs([0], { layers: 'all' as never }), 'ERR_INVALID_ARG')
    throwsWith(() => pool.blockDescs([0], { kv: 2 as never }), 'ERR_INVALID_ARG')
    throwsWith(() => pool.blockDescs([0], { kv: 'k' as never }), 'ERR_INVALID_ARG')
    throwsWith(() => pool.blockDescs([0], { heads: [2, 2] }), 'ERR_INVALID_ARG')
    throwsWith(() => pool.blockDescs([0], { heads: [3, 1] }), 'ERR_INVALID_ARG')
    throwsWith(() => pool.blockDescs([0], { heads: [0, 5] }), 'ERR_OUT_OF_RANGE')
    throwsWith(() => pool.blockDescs([0], { heads: [0] as never }), 'ERR_INVALID_ARG')
    throwsWith(() => pool.blockDescs([0], { merge: 'no' as never }), 'ERR_INVALID_ARG')
    throwsWith(() => pool.blockDescs([0], 7 as never), 'ERR_INVALID_ARG')
  })
})

describe('pairDescs', () => {
  it('pairs element with element across orders, sizes, TP positions and region forms (property)', () => {
    const arb = model.chain((m) => fc.tuple(side(m), side(m)).filter(([a, b]) => {
      const [la, lb] = [new KvLayout(a.o), new KvLayout(b.o)]
      return Math.max(la.headStart, lb.headStart) < Math.min(la.headEnd, lb.headEnd)
    }).chain(([a, b]) => {
      const n = Math.min(a.o.blocks, b.o.blocks)
      return fc.record({
        a: fc.constant(a),
        b: fc.constant(b),
        idsA: fc.shuffledSubarray(range(a.o.blocks), { minLength: 0, maxLength: n }),
        idsB: fc.shuffledSubarray(range(b.o.blocks), { minLength: n, maxLength: n }),
        layers: layerChoice(m.layers),
        kv: kvChoice,
        merge: fc.boolean(),
      })
    }))
    fc.assert(
      fc.property(arb, ({ a, b, idsA, idsB, layers, kv, merge }) => {
        const ids = idsB.slice(0, idsA.length)
        const [pa, pb] = [remotePool(a.o, a.form, 0x1000_0000n, 1), remotePool(b.o, b.form, 0x9000_0000_0000n, 2)]
        const [ra, rb] = [walkLayout(a.o), walkLayout(b.o)]
        const { local, remote, unmerged } = pa.pairDescs(idsA, pb, ids, { layers, kv, merge })
        expect(local.length).toBe(remote.length)
        if (!merge) expect(local.length).toBe(unmerged)
        expect(unmerged).toBeGreaterThanOrEqual(local.length)
        const [ea, eb] = [elementsOf(ra, locate(pa, local)), elementsOf(rb, locate(pb, remote))]
        const blockOf = new Map(idsA.map((id, j) => [id, ids[j]]))
        for (let i = 0; i < ea.length; i++) {
          expect(ea[i].length, `pair ${i} has one length`).toBe(eb[i].length)
          ea[i].forEach((e, k) => {
            const f = eb[i][k]
            expect({ ...f, block: 0 }, `pair ${i}, element ${k}`).toEqual({ ...e, block: 0 })
            expect(f.block).toBe(blockOf.get(e.block))
          })
        }
        const heads: [number, number] = [Math.max(pa.layout.headStart, pb.layout.headStart), Math.min(pa.layout.headEnd, pb.layout.headEnd)]
        const want = selectedElements(a.o, idsA, { layers, kvs: kv === undefined ? undefined : [kv], heads }).map(([, e]) => e)
        expect(sortedKeys(ea.flat())).toEqual(sortedKeys(want))
      }),
      { numRuns: 400 },
    )
  })

  const prefill: KvLayoutOptions = { layers: 2, blocks: 8, blockTokens: 4, kvHeads: 4, headDim: 8, dtype: 'bf16', order: 'layer-kv-block', heads: 'HND' }

  it('same shapes: merged where both sides run on, split where either breaks', () => {
    const [a, b] = [remotePool(prefill, 'one'), remotePool({ ...prefill, blocks: 12 }, 'layers', 0x9000_0000n)]
    // Local 1,2,3 | 6,7 | 0; remote 4,5,6 | 0 | 3 | 7: runs 1-3 (both), 6 / 7 split by the remote, 0.
    const { local, remote, unmerged } = a.pairDescs([1, 2, 3, 6, 7, 0], b, [4, 5, 6, 0, 3, 7])
    expect(unmerged).toBe(6 * 2 * 2)
    expect(local.length).toBe(4 * 2 * 2)
    expect([...local].map((d) => d.length)).toEqual([...remote].map((d) => d.length))
    expect(local.get(0).length).toBe(3 * a.layout.partBytes)
  })

  it('heterogeneous TP with HND: a decode rank reads its heads as one run per part of the prefill pool', () => {
    const decode = remotePool({ ...prefill, tp: { rank: 1, size: 2 } }, 'one')
    const pool = remotePool(prefill, 'one', 0x9000_0000n)
    const { local, remote } = decode.pairDescs([0, 1], pool, [5, 6])
    // Decode's parts are whole and adjacent, the prefill runs are not: one pair per part.
    expect(local.length).toBe(2 * 2 * 2)
    expect(remote.get(0)).toEqual({ address: pool.regions[0].address + BigInt(pool.layout.offset({ layer: 0, kv: 0, block: 5, token: 0, head: 2 })), length: decode.layout.partBytes, device: 0 })
    expect(decode.blockDescCount([0, 1]).merged).toBe(2 * 2)
    // NHD: one pair per token.
    const nhd = remotePool({ ...prefill, heads: 'NHD', tp: { rank: 1, size: 2 } }, 'one').pairDescs([0, 1], remotePool({ ...prefill, heads: 'NHD' }, 'one'), [5, 6])
    expect(nhd.local.length).toBe(2 * 2 * 2 * 4)
  })

  it('refuses pools of different models, different counts, and ranks that share no heads', () => {
    const a = remotePool(prefill, 'one')
    for (const change of [{ dtype: 'fp16' as const }, { heads: 'NHD' as const }, { headDim: 4 }, { blockTokens: 8 }, { layers: 3 }, { kvHeads: 8 }]) {
      throwsWith(() => a.pairDescs([0], remotePool({ ...prefill, ...change }, 'one'), [0]), 'ERR_INVALID_ARG')
    }
    throwsWith(() => a.pairDescs([0, 1], a, [0]), 'ERR_INVALID_ARG')
    throwsWith(() => a.pairDescs([0], {} as never, [0]), 'ERR_INVALID_ARG')
    const r0 = remotePool({ ...prefill, tp: { rank: 0, size: 2 } }, 'one')
    const r1 = remotePool({ ...prefill, tp: { rank: 1, size: 2 } }, 'one')
    expect(throwsWith(() => r0.pairDescs([0], r1, [0]), 'ERR_INVALID_ARG').message).toMatch(/share no heads/)
    throwsWith(() => r0.pairDescs([0], a, [0], { heads: [1, 3] }), 'ERR_OUT_OF_RANGE')
    throwsWith(() => a.pairDescs([0], r0, [8]), 'ERR_OUT_OF_RANGE')
  })
})
