// Property tests of the public API's arguments (fast-check, seeded: a failure prints the seed and
// the smallest counterexample). Whatever a caller passes, kvxfer answers with a result or a
// KvxferError with a stable code, synchronously or as a rejection, never a crash or a wrong
// answer: sizes, offsets and lengths that are negative, fractional, NaN, infinite, past 2^53 or
// 2^64, or that overflow when added; names with odd bytes; registrations that overlap; and
// descriptor lists that name one block twice, whose bytes must still land exactly.
import { readFileSync } from 'node:fs'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Agent, DescList, KvxferError, type Region } from '../../dist/index.js'
import { closeAll, exchangeMetadata, fillBytes, settle, uniqueName } from '../fixtures/index.js'

const SEED = Number(process.env.KVXFER_PROPERTY_SEED ?? 0x6b767866)
const params = (numRuns: number) => ({ seed: SEED, numRuns })

/** Any number or bigint a caller might pass for a size or offset, valid or not. */
const anyInteger = fc.oneof(
  fc.integer({ min: -10, max: 1 << 20 }),
  fc.double({ noDefaultInfinity: false, noNaN: false }),
  fc.constantFrom(0, -0, 1.5, Number.NaN, Infinity, -Infinity, 2 ** 53, 2 ** 53 + 2, 2 ** 64, Number.MAX_VALUE),
  fc.bigInt({ min: -(1n << 70n), max: 1n << 70n }),
  fc.constantFrom(0n, -1n, 1n << 63n, (1n << 64n) - 1n, 1n << 64n),
)

/** What a call did: its value, or the KvxferError it threw or rejected with. Anything else fails the test. */
async function outcome<T>(call: () => T | Promise<T>): Promise<{ ok: true; value: T } | { ok: false; code: string }> {
  try {
    return { ok: true, value: await call() }
  } catch (error) {
    expect(error, String(error)).toBeInstanceOf(KvxferError)
    return { ok: false, code: (error as KvxferError).code }
  }
}

const isSize = (v: unknown, max: number): v is number | bigint =>
  (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= max) || (typeof v === 'bigint' && v >= 0n && v <= BigInt(max))

describe('public API arguments', { timeout: 120_000 }, () => {
  let a: Agent
  let b: Agent
  let pool: Region
  const POOL = 1 << 20
  beforeAll(async () => {
    a = await Agent.create({ name: uniqueName('prop-a') })
    b = await Agent.create({ name: uniqueName('prop-b') })
    pool = await b.allocate(POOL)
    await exchangeMetadata(a, b)
  })
  afterAll(() => closeAll(a, b))

  it('region.slice and view: in range gives exactly that range; anything else is ERR_INVALID_ARG or ERR_OUT_OF_RANGE', async () => {
    await fc.assert(
      fc.asyncProperty(anyInteger, anyInteger, async (offset, length) => {
        const slice = await outcome(() => pool.slice(offset as never, length as never))
        const valid = isSize(offset, POOL) && isSize(length, POOL) && Number(length) > 0 && Number(offset) + Number(length) <= POOL
        if (valid) {
          expect(slice).toEqual({ ok: true, value: { address: pool.address + BigInt(offset), length: Number(length), device: 0 } })
          const view = await outcome(() => pool.view(offset as never, length as never))
          expect(view.ok && view.value.length).toBe(Number(length))
        } else {
          expect(slice.ok).toBe(false)
          if (!slice.ok) expect(['ERR_INVALID_ARG', 'ERR_OUT_OF_RANGE']).toContain(slice.code)
        }
      }),
      params(2000),
    )
  })

  it('allocate(length): a bad length is refused with ERR_INVALID_ARG before anything is allocated', async () => {
    const before = a.stats().regions
    await fc.assert(
      fc.asyncProperty(anyInteger.filter((n) => !isSize(n, 2 ** 52) || Number(n) === 0), async (length) => {
        const result = await outcome(() => a.allocate(length as never))
        expect(result).toEqual({ ok: false, code: 'ERR_INVALID_ARG' })
      }),
      params(500),
    )
    expect(a.stats().regions).toBe(before)
  })

  it('register({ kind: dram, address, length }): wrapping, zero or non-integer fields are ERR_INVALID_ARG', async () => {
    await fc.assert(
      fc.asyncProperty(anyInteger, anyInteger, async (address, length) => {
        const valid = isSize(address, Number.MAX_SAFE_INTEGER) && Number(address) > 0 && isSize(length, Number.MAX_SAFE_INTEGER) && Number(length) > 0
        if (valid) return // a real address is needed for a registration that succeeds; covered elsewhere
        const result = await outcome(() => a.register({ kind: 'dram', address: address as never, length: length as never }))
        expect(result).toEqual({ ok: false, code: 'ERR_INVALID_ARG' })
      }),
      params(500),
    )
    const wraps = await outcome(() => a.register({ kind: 'dram', address: (1n << 64n) - 4096n, length: 8192 }))
    expect(wraps).toEqual({ ok: false, code: 'ERR_INVALID_ARG' })
  })

  it('register({ kind: dram }) of memory that is not read-write memory of this process is refused, not faulted on later', async () => {
    // Found by the property above: the last byte of the address space registered, and the first
    // transfer from it would have faulted the worker.
    const maps = readFileSync('/proc/self/maps', 'utf8').trim().split('\n').map((line) => {
      const [range, perms] = line.split(/\s+/)
      const [from, to] = range.split('-').map((x) => BigInt(`0x${x}`))
      return { from, to, perms }
    })
    const readOnly = maps.find((m) => m.perms.startsWith('r-') && m.to - m.from >= 4096n)!
    const cases: Array<[bigint, number, RegExp]> = [
      [(1n << 64n) - 1n, 1, /is not mapped/],
      [0x1000n, 4096, /is not mapped/],
      [readOnly.from, 4096, /is mapped r-/],
    ]
    for (const [address, length, message] of cases) {
      const result = await settle(a.register({ kind: 'dram', address, length }))
      expect(result.ok, `0x${address.toString(16)}`).toBe(false)
      if (!result.ok) {
        expect((result.error as KvxferError).code).toBe('ERR_INVALID_ARG')
        expect((result.error as Error).message).toMatch(message)
      }
    }
    // Across two adjacent mappings is fine as long as both are read-write: a whole allocate()d pool, by address.
    const region = await a.register({ kind: 'dram', address: pool.address, length: POOL })
    await region.deregister()
  })

  it('notify(peer, message): up to 16 KiB is sent, a byte more is ERR_INVALID_ARG', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 20 * 1024 }), async (bytes) => {
        const result = await outcome(() => a.notify(b.name, new Uint8Array(bytes)))
        if (bytes <= 16 * 1024) expect(result.ok).toBe(true)
        else expect(result).toEqual({ ok: false, code: 'ERR_INVALID_ARG' })
      }),
      params(60),
    )
  })

  it('overlapping registrations: a descriptor in any of them prepares; with one deregistered, the rest still cover theirs', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 60 }), fc.integer({ min: 1, max: 64 })), { minLength: 2, maxLength: 5 }),
        fc.nat(),
        async (spans, drop) => {
          const memory = new ArrayBuffer(128 * 64)
          const regions: Array<{ region: Region; start: number; end: number }> = []
          for (const [start, pages] of spans) {
            const end = Math.min(128, start + pages)
            regions.push({ region: await a.register(new Uint8Array(memory, start * 64, (end - start) * 64)), start: start * 64, end: end * 64 })
          }
          const base = regions[0].region.address - BigInt(regions[0].start)
          const remote = [pool.slice(0, 64)]
          const covered = (o: number, l: number, set: typeof regions) => set.some((r) => o >= r.start && o + l <= r.end)
          const tryAt = async (o: number, l: number) =>
            outcome(() => {
              const x = a.prepare({ op: 'write', local: [{ address: base + BigInt(o), length: l }], remote: [{ ...remote[0], length: l }], peer: b.name })
              x.release()
              return true
            })
          for (const r of regions) expect(await tryAt(r.start, Math.min(64, r.end - r.start))).toEqual({ ok: true, value: true })
          const gone = regions.splice(drop % regions.length, 1)[0]
          await gone.region.deregister()
          for (let o = gone.start; o < gone.end; o += 64) {
            const result = await tryAt(o, 64)
            if (covered(o, 64, regions)) expect(result).toEqual({ ok: true, value: true })
            else expect(result.ok).toBe(false)
          }
          for (const r of regions) await r.region.deregister()
        },
      ),
      params(40),
    )
  })

  it('descriptor lists that name one block twice move exactly the bytes they say', async () => {
    const source = fillBytes(Buffer.alloc(64 * 1024), 1)
    const local = await a.register(source)
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 15 }), fc.integer({ min: 0, max: 15 })), { minLength: 1, maxLength: 12 }),
        fc.integer({ min: 1, max: 3 }),
        async (pairs, copies) => {
          // Each (src, dst) pair appears `copies` times: the same bytes to the same place, so the result is defined.
          const list = pairs.flatMap((p) => Array.from({ length: copies }, () => p))
          // A destination named by two different sources has no defined result: keep the first source for it.
          const byDst = new Map<number, number>()
          for (const [s, d] of list) if (!byDst.has(d)) byDst.set(d, s)
          const moves = list.filter(([s, d]) => byDst.get(d) === s)
          pool.view(0, 16 * 4096).fill(0xee)
          const result = await a.write(
            DescList.from(moves.map(([s]) => local.slice(s * 4096, 4096))),
            DescList.from(moves.map(([, d]) => pool.slice(d * 4096, 4096))),
            b.name,
          )
          expect(result.bytes).toBe(moves.length * 4096)
          const expected = Buffer.alloc(16 * 4096, 0xee)
          for (const [d, s] of byDst) source.copy(expected, d * 4096, s * 4096, s * 4096 + 4096)
          expect(Buffer.compare(pool.view(0, 16 * 4096), expected)).toBe(0)
        },
      ),
      params(60),
    )
    await local.deregister()
  })

  it('postAll of any mix of good, released, repeated and foreign transfers: all posted and landed, or none', async () => {
    const source = fillBytes(Buffer.alloc(8 * 4096), 3)
    const local = await a.register(source)
    const good = Array.from({ length: 8 }, (_, i) =>
      a.prepare({ op: 'write', local: [local.slice(i * 4096, 4096)], remote: [pool.slice(i * 4096, 4096)], peer: b.name }))
    const released = a.prepare({ op: 'write', local: [local.slice(0, 4096)], remote: [pool.slice(0, 4096)], peer: b.name })
    released.release()
    await b.loadPeer(a.metadata())
    const foreign = b.prepare({ op: 'write', local: [pool.slice(0, 4096)], remote: [local.slice(0, 4096)], peer: a.name })
    const strays = [released, foreign, {}, null, 7, 'x']
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof(fc.integer({ min: 0, max: 7 }).map((i) => ({ good: i })), fc.integer({ min: 0, max: strays.length - 1 }).map((i) => ({ stray: i }))), { maxLength: 12 }),
        async (picks) => {
          const list = picks.map((p) => ('good' in p ? good[p.good] : strays[p.stray])) as never[]
          const goodOnes = picks.flatMap((p) => ('good' in p ? [p.good] : []))
          const valid = goodOnes.length === picks.length && new Set(goodOnes).size === goodOnes.length
          pool.view(0, 8 * 4096).fill(0xee)
          const result = await outcome(() => a.postAll(list))
          const expected = Buffer.alloc(8 * 4096, 0xee)
          if (valid) {
            expect(result.ok, JSON.stringify(result)).toBe(true)
            for (const i of goodOnes) source.copy(expected, i * 4096, i * 4096, i * 4096 + 4096)
          } else {
            expect(result).toEqual({ ok: false, code: 'ERR_INVALID_ARG' })
          }
          expect(Buffer.compare(pool.view(0, 8 * 4096), expected)).toBe(0)
          expect(a.stats().inFlight).toBe(0)
        },
      ),
      params(200),
    )
    for (const t of good) t.release()
    foreign.release()
    await local.deregister()
  })
})

describe('agent names with odd bytes', { timeout: 120_000 }, () => {
  it('a name is taken exactly as given, or refused with ERR_INVALID_ARG; a peer sees the same name', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.string({ unit: 'binary', minLength: 0, maxLength: 40 }),
          fc.string({ unit: 'grapheme', minLength: 1, maxLength: 20 }),
          fc.constantFrom('', '\0', 'a\0b', ' ', 'x'.repeat(255), 'x'.repeat(256), 'é'.repeat(128), '\uD800', 'name/with/slashes', '../..'),
        ),
        async (name) => {
          const created = await settle(Agent.create({ name }))
          if (!created.ok) {
            expect(created.error).toBeInstanceOf(KvxferError)
            expect((created.error as KvxferError).code).toBe('ERR_INVALID_ARG')
            return
          }
          const agent = created.value
          try {
            expect(agent.name).toBe(name)
            const peer = await Agent.create({ name: uniqueName('names-peer') })
            try {
              expect(await peer.loadPeer(agent.metadata())).toBe(name)
            } finally {
              await peer.close()
            }
          } finally {
            await agent.close()
          }
        },
      ),
      params(25),
    )
  })
})
