// Proves KvLayout puts every element where its order and head layout say: for small shapes of
// every order x heads layout x dtype x tp, a reference that walks the memory in the layout's
// order (no formula: it counts) agrees with layout.offset for every element, and the offsets are
// unique, headBytes-aligned and cover [0, bytes) exactly once; the published formulas agree too.
// For shapes past 2^32 bytes the offsets match the formulas computed in bigint. hash covers the
// model-level shape and nothing else (not blocks, not tp). Every bad argument is refused.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { KvLayout, type KvDtype, type KvElement, type KvHeadLayout, type KvLayoutOptions, type KvOrder } from '../../dist/index.js'
import { DTYPE_BYTES as DTYPES, eachCase, kvKey as key, throwsWith, walkLayout as walk } from '../fixtures/index.js'

const ORDERS: KvOrder[] = ['layer-kv-block', 'layer-block-kv', 'block-layer-kv']
const HEADS: KvHeadLayout[] = ['NHD', 'HND']

/** Shapes up to these sizes, of every order, heads layout, dtype and tp position. */
function shapes(max: { layers: number; blocks: number; blockTokens: number; headsPerRank: number; tpSize: number; headDim: number }) {
  const upTo = (n: number) => fc.integer({ min: 1, max: n })
  return fc
    .record({
      layers: upTo(max.layers),
      blocks: upTo(max.blocks),
      blockTokens: upTo(max.blockTokens),
      headsPerRank: upTo(max.headsPerRank),
      tpSize: upTo(max.tpSize),
      rankSeed: fc.nat(),
      headDim: upTo(max.headDim),
      dtype: fc.constantFrom(...(Object.keys(DTYPES) as KvDtype[])),
      order: fc.constantFrom(...ORDERS),
      heads: fc.constantFrom(...HEADS),
    })
    .map(({ headsPerRank, tpSize, rankSeed, ...rest }): KvLayoutOptions => ({
      ...rest,
      kvHeads: headsPerRank * tpSize,
      tp: { rank: rankSeed % tpSize, size: tpSize },
    }))
}

const smallOptions = shapes({ layers: 3, blocks: 4, blockTokens: 4, headsPerRank: 3, tpSize: 3, headDim: 5 })

/** The formulas as the README states them, in bigint. */
function formula(o: KvLayoutOptions, e: KvElement): bigint {
  const tp = o.tp ?? { rank: 0, size: 1 }
  const [L, B, T, D, s] = [o.layers, o.blocks, o.blockTokens, o.headDim, DTYPES[o.dtype]].map(BigInt)
  const H = BigInt(o.kvHeads / tp.size)
  const [layer, kv, block, token] = [e.layer, e.kv, e.block, e.token].map(BigInt)
  const head = BigInt(e.head - tp.rank * (o.kvHeads / tp.size))
  const P = T * H * D * s
  const part = o.order === 'layer-kv-block' ? ((layer * 2n + kv) * B + block) * P
    : o.order === 'layer-block-kv' ? ((layer * B + block) * 2n + kv) * P
      : ((block * L + layer) * 2n + kv) * P
  return part + (o.heads === 'NHD' ? (token * H + head) : (head * T + token)) * D * s
}

describe('KvLayout offsets', () => {
  it('agree with a walk over memory for every element of small shapes (orders x heads x dtypes x tp)', () => {
    fc.assert(
      fc.property(smallOptions, (o) => {
        const layout = new KvLayout(o)
        const ref = walk(o)
        expect(layout.bytes).toBe(ref.bytes)
        const seen: number[] = []
        for (const e of ref.elements) {
          const offset = layout.offset(e)
          expect(offset, key(e)).toBe(ref.offsets.get(key(e)))
          expect(BigInt(offset)).toBe(formula(o, e))
          expect(layout.partOffset(e)).toBe(offset - (offset % layout.partBytes))
          seen.push(offset)
        }
        // Unique, aligned, within bytes, and covering [0, bytes) exactly once.
        seen.sort((a, b) => a - b)
        expect(seen).toEqual(Array.from({ length: layout.bytes / layout.headBytes }, (_, i) => i * layout.headBytes))
      }),
      { numRuns: 300 },
    )
  })

  it('every combination of order, heads layout, dtype and tp has been walked at least once', () => {
    const cases = ORDERS.flatMap((order) => HEADS.flatMap((heads) => (Object.keys(DTYPES) as KvDtype[]).flatMap((dtype) =>
      [{ rank: 0, size: 1 }, { rank: 1, size: 2 }, { rank: 2, size: 3 }].map((tp) => ({ order, heads, dtype, tp })))))
    return eachCase(cases, (c) => {
      const o: KvLayoutOptions = { layers: 2, blocks: 3, blockTokens: 2, kvHeads: 2 * c.tp.size, headDim: 3, ...c }
      const layout = new KvLayout(o)
      const ref = walk(o)
      for (const e of ref.elements) expect(layout.offset(e)).toBe(ref.offsets.get(key(e)))
      expect(layout.headsPerRank).toBe(2)
      expect([layout.headStart, layout.headEnd]).toEqual([2 * c.tp.rank, 2 * c.tp.rank + 2])
    })
  })

  it('derived sizes', () => {
    const layout = new KvLayout({ layers: 32, blocks: 1000, blockTokens: 16, kvHeads: 8, headDim: 128, dtype: 'bf16', order: 'layer-kv-block', heads: 'NHD', tp: { rank: 1, size: 2 } })
    expect(layout.dtypeBytes).toBe(2)
    expect(layout.headsPerRank).toBe(4)
    expect(layout.headBytes).toBe(256)
    expect(layout.tokenBytes).toBe(1024)
    expect(layout.partBytes).toBe(16 * 1024)
    expect(layout.blockBytes).toBe(2 * 32 * 16 * 1024)
    expect(layout.layerBytes).toBe(2 * 1000 * 16 * 1024)
    expect(layout.bytes).toBe(32 * 2 * 1000 * 16 * 1024)
    expect(layout.tp).toEqual({ rank: 1, size: 2 })
    expect(new KvLayout(layout.options)).toEqual(layout)
    expect(Object.isFrozen(layout)).toBe(true)
  })

  it('stay exact past 2^32 bytes (bigint formulas, shapes up to 2^50 bytes)', () => {
    const unit = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true })
    const big = shapes({ layers: 128, blocks: 1 << 20, blockTokens: 256, headsPerRank: 16, tpSize: 8, headDim: 256 })
      .filter((o) => BigInt(o.layers) * BigInt(o.blocks) * BigInt(o.blockTokens * o.kvHeads / o.tp!.size * o.headDim * DTYPES[o.dtype]) * 2n < 2n ** 50n)
    let past32 = 0
    fc.assert(
      fc.property(big, fc.tuple(unit, unit, unit, unit, fc.boolean()), (o, at) => {
        const layout = new KvLayout(o)
        const pick = (u: number, n: number) => Math.floor(u * n)
        const e = {
          layer: pick(at[0], o.layers), kv: at[4] ? 1 : 0, block: pick(at[1], o.blocks), token: pick(at[2], o.blockTokens),
          head: layout.headStart + pick(at[3], layout.headsPerRank),
        }
        expect(BigInt(layout.offset(e))).toBe(formula(o, e))
        expect(BigInt(layout.bytes)).toBe(BigInt(o.layers) * BigInt(o.blocks) * BigInt(o.blockTokens * layout.headsPerRank * o.headDim * DTYPES[o.dtype]) * 2n)
        if (layout.bytes > 2 ** 32) past32++
      }),
      { numRuns: 500 },
    )
    expect(past32, 'shapes past 4 GiB were tried').toBeGreaterThan(50)
  })

  it('refuse elements outside the layout, and heads of another rank (ERR_OUT_OF_RANGE)', () => {
    const layout = new KvLayout({ layers: 2, blocks: 4, blockTokens: 8, kvHeads: 8, headDim: 4, dtype: 'fp8', order: 'layer-block-kv', heads: 'HND', tp: { rank: 1, size: 2 } })
    const ok = { layer: 1, kv: 1, block: 3, token: 7, head: 7 }
    expect(layout.offset(ok)).toBe(layout.bytes - layout.headBytes)
    expect(layout.offset({ ...ok, head: 4, token: 0 })).toBe(layout.partOffset(ok))
    for (const bad of [{ layer: 2 }, { layer: -1 }, { kv: 2 }, { block: 4 }, { token: 8 }, { head: 3 }, { head: 8 }, { head: 0 }]) {
      throwsWith(() => layout.offset({ ...ok, ...bad }), 'ERR_OUT_OF_RANGE')
    }
    for (const bad of [{ layer: 0.5 }, { kv: '1' }, { block: Number.NaN }, { token: undefined }, { head: 2 ** 60 }]) {
      throwsWith(() => layout.offset({ ...ok, ...bad } as never), 'ERR_INVALID_ARG')
    }
    throwsWith(() => layout.partOffset({ layer: 0, kv: 0, block: 4 }), 'ERR_OUT_OF_RANGE')
    throwsWith(() => layout.offset(null as never), 'ERR_INVALID_ARG')
  })
})

describe('KvLayout.hash', () => {
  const base: KvLayoutOptions = { layers: 32, blocks: 1000, blockTokens: 16, kvHeads: 8, headDim: 128, dtype: 'bf16', order: 'layer-kv-block', heads: 'HND' }

  it('is stable across releases (a fixed value for a fixed shape)', () => {
    expect(new KvLayout(base).hash).toBe('kv1-5104e362bdf302084dcd7e6fb42990ca')
  })

  it('ignores blocks and tp: a tp.size 1 prefill pool and tp.size 2 decode pools of one model match', () => {
    const hash = new KvLayout(base).hash
    expect(new KvLayout({ ...base, blocks: 7 }).hash).toBe(hash)
    for (const tp of [{ rank: 0, size: 2 }, { rank: 1, size: 2 }, { rank: 3, size: 8 }]) expect(new KvLayout({ ...base, tp }).hash).toBe(hash)
  })

  it('changes with every model-level field', () => {
    const variants: Array<Partial<KvLayoutOptions>> = [
      { layers: 33 }, { blockTokens: 32 }, { kvHeads: 16 }, { headDim: 64 }, { dtype: 'fp16' }, { dtype: 'fp8' },
      { order: 'layer-block-kv' }, { order: 'block-layer-kv' }, { heads: 'NHD' },
    ]
    const hashes = new Set([new KvLayout(base).hash, ...variants.map((v) => new KvLayout({ ...base, ...v }).hash)])
    expect(hashes.size).toBe(variants.length + 1)
  })
})

describe('KvLayout validation (ERR_INVALID_ARG)', () => {
  const base: KvLayoutOptions = { layers: 2, blocks: 4, blockTokens: 16, kvHeads: 8, headDim: 64, dtype: 'fp16', order: 'layer-kv-block', heads: 'NHD' }
  const bad: Array<[string, unknown]> = [
    ['layers 0', { layers: 0 }], ['layers -1', { layers: -1 }], ['layers 1.5', { layers: 1.5 }], ['layers NaN', { layers: Number.NaN }],
    ['layers Infinity', { layers: Infinity }], ['layers "2"', { layers: '2' }], ['layers 2n', { layers: 2n }], ['layers missing', { layers: undefined }],
    ['blocks 0', { blocks: 0 }], ['blockTokens 0', { blockTokens: 0 }], ['kvHeads 0', { kvHeads: 0 }], ['headDim 0', { headDim: 0 }],
    ['headDim 2^53', { headDim: 2 ** 53 }],
    ['dtype fp64', { dtype: 'fp64' }], ['dtype BF16', { dtype: 'BF16' }], ['order', { order: 'kv-layer-block' }], ['heads', { heads: 'NDH' }],
    ['tp.size 0', { tp: { rank: 0, size: 0 } }], ['tp.rank = size', { tp: { rank: 2, size: 2 } }], ['tp.rank -1', { tp: { rank: -1, size: 2 } }],
    ['tp.rank 0.5', { tp: { rank: 0.5, size: 2 } }], ['kvHeads not divisible by tp.size', { tp: { rank: 0, size: 3 } }], ['tp null', { tp: null }],
    ['unknown option', { numLayers: 2 }],
    ['bytes past 2^53', { layers: 2 ** 20, blocks: 2 ** 20, blockTokens: 2 ** 8, headDim: 2 ** 8 }],
    ['a part past 2^53', { blockTokens: 2 ** 30, headDim: 2 ** 30 }],
  ]
  it.each(bad)('%s', (_, change) => {
    const e = throwsWith(() => new KvLayout({ ...base, ...(change as object) } as KvLayoutOptions), 'ERR_INVALID_ARG')
    expect(e.message).toMatch(/^KvLayout: /)
  })

  it('not an object', () => {
    throwsWith(() => new KvLayout(undefined as never), 'ERR_INVALID_ARG')
    throwsWith(() => new KvLayout(null as never), 'ERR_INVALID_ARG')
  })

  it('says what is wrong', () => {
    expect(throwsWith(() => new KvLayout({ ...base, dtype: 'fp64' as never }), 'ERR_INVALID_ARG').message).toMatch(/dtype must be one of 'fp32', 'bf16', 'fp16', 'fp8', got fp64/)
    expect(throwsWith(() => new KvLayout({ ...base, tp: { rank: 0, size: 3 } }), 'ERR_INVALID_ARG').message).toMatch(/kvHeads \(8\) must divide by tp.size \(3\)/)
    expect(throwsWith(() => new KvLayout({ ...base, layers: 2 ** 40, blocks: 2 ** 20 }), 'ERR_INVALID_ARG').message).toMatch(/past 2\^53/)
  })

  it('accepts the largest pool below 2^53', () => {
    const layout = new KvLayout({ ...base, layers: 2 ** 10, blocks: 2 ** 16, blockTokens: 2 ** 4, kvHeads: 2 ** 3, headDim: 2 ** 6, dtype: 'fp8' })
    expect(layout.bytes).toBe(2 ** 40)
    // 2^52 bytes is exact, so accepted; 2^53 is not.
    expect(new KvLayout({ ...base, layers: 2 ** 21, blocks: 2 ** 16 }).bytes).toBe(2 ** 52)
    throwsWith(() => new KvLayout({ ...base, layers: 2 ** 22, blocks: 2 ** 16 }), 'ERR_INVALID_ARG')
  })
})
