// Proves DescList is a faithful, compact container: from() accepts regions, slices and plain
// descriptors; length, totalBytes, get() and iteration agree; encode()/decode() round-trip
// exactly (64-bit addresses, lengths above 4 GiB, device ids, 10,000 entries, unaligned
// input bytes); malformed input is refused with ERR_INVALID_ARG.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { Agent, DescList, type Region } from '../../dist/index.js'
import { GiB, KiB, closeAll, eachCase, range, throwsWith, uniqueName } from '../fixtures/index.js'

// Every test here is bounded (30 s unless a suite sets its own).
vi.setConfig({ testTimeout: 30_000, hookTimeout: 60_000 })

interface PlainDesc { address: bigint; length: number; device: number }

const plain = (list: DescList): PlainDesc[] =>
  [...list].map((d) => ({ address: d.address, length: d.length, device: d.device }))

let agent: Agent
let region: Region
let bufRegion: Region

beforeAll(async () => {
  agent = await Agent.create({ name: uniqueName('descs') })
  region = await agent.allocate(64 * KiB)
  bufRegion = await agent.register(Buffer.alloc(4 * KiB))
}, 30_000)

afterAll(() => closeAll(agent), 30_000)

describe('DescList.from', () => {
  it('takes plain descriptors; device defaults to 0', () => {
    const list = DescList.from([
      { address: 0x1000n, length: 16 },
      { address: 0x2000n, length: 32, device: 3 },
    ])
    expect(list.length).toBe(2)
    expect(list.totalBytes).toBe(48)
    expect(plain(list)).toEqual([
      { address: 0x1000n, length: 16, device: 0 },
      { address: 0x2000n, length: 32, device: 3 },
    ])
  })

  it('takes regions and slices of regions', () => {
    const list = DescList.from([region, region.slice(100, 200), bufRegion])
    expect(list.length).toBe(3)
    expect(list.totalBytes).toBe(region.length + 200 + bufRegion.length)
    expect(plain(list)).toEqual([
      { address: region.address, length: region.length, device: region.device },
      { address: region.address + 100n, length: 200, device: region.device },
      { address: bufRegion.address, length: bufRegion.length, device: bufRegion.device },
    ])
  })

  it('takes any iterable, e.g. a generator', () => {
    function* gen() {
      for (let i = 0; i < 5; i++) yield { address: BigInt(0x10000 + i * 64), length: 64 }
    }
    const list = DescList.from(gen())
    expect(list.length).toBe(5)
    expect(list.totalBytes).toBe(320)
  })

  it('an empty list', () => {
    const list = DescList.from([])
    expect(list.length).toBe(0)
    expect(list.totalBytes).toBe(0)
    expect([...list]).toEqual([])
    expect(plain(DescList.decode(list.encode()))).toEqual([])
  })

  it('get(i) and iteration agree, and iterating twice gives the same', () => {
    const items = range(50).map((i) => ({ address: BigInt(0x100000 + i * 4096), length: 100 + i, device: i % 4 }))
    const list = DescList.from(items)
    const first = plain(list)
    expect(first).toEqual(items)
    expect(plain(list)).toEqual(items)
    for (let i = 0; i < items.length; i++) {
      const d = list.get(i)
      expect({ address: d.address, length: d.length, device: d.device }).toEqual(items[i])
    }
    let n = 0
    for (const d of list) {
      expect(typeof d.address).toBe('bigint')
      expect(typeof d.length).toBe('number')
      expect(typeof d.device).toBe('number')
      n++
    }
    expect(n).toBe(50)
  })

  it('refuses malformed descriptors with ERR_INVALID_ARG', async () => {
    const bad: unknown[] = [
      null,
      42,
      [null],
      [42],
      [{ address: 'x', length: 1 }],
      [{ length: 1 }],
      [{ address: 0x1000n }],
      [{ address: 0x1000n, length: -1 }],
      [{ address: 0x1000n, length: Number.NaN }],
      [{ address: 0x1000n, length: 1.5 }],
      [{ address: -1n, length: 1 }],
      [{ address: 1n << 64n, length: 1 }],
      [{ address: 0x1000n, length: 1, device: -1 }],
      [{ address: 0x1000n, length: 1, device: 'gpu0' }],
    ]
    await eachCase(bad, (items) => throwsWith(() => DescList.from(items as never), 'ERR_INVALID_ARG'))
  })
})

describe('encode / decode', () => {
  const cases: Record<string, PlainDesc[]> = {
    'one descriptor': [{ address: 0x7f0000001000n, length: 4096, device: 0 }],
    'addresses using all 64 bits': [
      { address: 0xffff_ffff_ffff_e000n, length: 4096, device: 0 },
      { address: 1n, length: 1, device: 0 },
      { address: 0x8000_0000_0000_0000n, length: 7, device: 0 },
    ],
    'lengths above 4 GiB': [
      { address: 0x1000n, length: 5 * GiB, device: 0 },
      { address: 0x2000n, length: 2 ** 32, device: 0 },
      { address: 0x3000n, length: 2 ** 32 + 1, device: 0 },
    ],
    'device ids': [
      { address: 0x1000n, length: 16, device: 0 },
      { address: 0x1000n, length: 16, device: 7 },
      { address: 0x1000n, length: 16, device: 255 },
    ],
  }

  it.each(Object.entries(cases))('round-trips %s', (_, items) => {
    const list = DescList.from(items)
    const bytes = list.encode()
    expect(bytes).toBeInstanceOf(Uint8Array)
    const back = DescList.decode(bytes)
    expect(back.length).toBe(items.length)
    expect(back.totalBytes).toBe(items.reduce((s, d) => s + d.length, 0))
    expect(plain(back)).toEqual(items)
    // encoding is deterministic
    expect(Buffer.from(back.encode()).equals(Buffer.from(bytes))).toBe(true)
  })

  it('round-trips 10,000 descriptors compactly (packed binary, not text)', () => {
    const items = range(10_000).map((i) => ({ address: 0x7f00_0000_0000n + BigInt(i) * 8192n + BigInt(i % 7), length: 4096 + (i % 13), device: i % 2 }))
    const list = DescList.from(items)
    expect(list.totalBytes).toBe(items.reduce((s, d) => s + d.length, 0))
    const bytes = list.encode()
    expect(bytes.byteLength).toBeLessThanOrEqual(32 * items.length + 256)
    expect(plain(DescList.decode(bytes))).toEqual(items)
  })

  it('decodes from a Buffer and from a view at an odd byte offset', () => {
    const items = range(33).map((i) => ({ address: BigInt(0x100000 + i * 977), length: 1 + i, device: 0 }))
    const bytes = DescList.from(items).encode()
    expect(plain(DescList.decode(Buffer.from(bytes)))).toEqual(items)
    const host = new Uint8Array(bytes.byteLength + 11)
    host.set(bytes, 3)
    host.fill(0xee, 0, 3)
    host.fill(0xee, 3 + bytes.byteLength)
    expect(plain(DescList.decode(host.subarray(3, 3 + bytes.byteLength)))).toEqual(items)
  })

  it('a region list encoded on one side works as remote descriptors after decode', () => {
    const bytes = DescList.from([region.slice(0, 1024), region.slice(2048, 1024)]).encode()
    const list = DescList.decode(bytes)
    expect(plain(list)).toEqual([
      { address: region.address, length: 1024, device: region.device },
      { address: region.address + 2048n, length: 1024, device: region.device },
    ])
  })
})

describe('decode refuses malformed bytes with ERR_INVALID_ARG', () => {
  const good = () => DescList.from([{ address: 0x1000n, length: 16 }, { address: 0x2000n, length: 32 }]).encode()

  it('empty input', () => {
    throwsWith(() => DescList.decode(new Uint8Array(0)), 'ERR_INVALID_ARG')
  })

  it('every truncation of a valid encoding', () => {
    const bytes = good()
    for (let n = 0; n < bytes.byteLength; n++) throwsWith(() => DescList.decode(bytes.slice(0, n)), 'ERR_INVALID_ARG')
  })

  it('a valid encoding with trailing bytes', () => {
    const bytes = good()
    for (const extra of [1, 7, 24]) {
      const longer = new Uint8Array(bytes.byteLength + extra)
      longer.set(bytes)
      throwsWith(() => DescList.decode(longer), 'ERR_INVALID_ARG')
    }
  })

  it('random bytes', () => {
    let x = 0x2545f491
    const next = () => ((x ^= x << 13), (x ^= x >>> 17), (x ^= x << 5), x >>> 0)
    for (let i = 0; i < 200; i++) {
      const bytes = new Uint8Array(1 + (next() % 200)).map(() => next() & 0xff)
      throwsWith(() => DescList.decode(bytes), 'ERR_INVALID_ARG')
    }
  })

  it('not bytes at all', async () => {
    await eachCase([null, undefined, 'AAAA', 42, [1, 2, 3], {}], (bad) => throwsWith(() => DescList.decode(bad as never), 'ERR_INVALID_ARG'))
  })
})

describe('DescList.fromRuns (the KV pools\' way to build big lists)', () => {
  it('encodes the same bytes as from() for runs of spans anywhere in the 64-bit space', async () => {
    const { DescList: Lists } = await import('../../dist/descs.js')
    const spans = [
      { address: 0x7f00_0000_1000n, device: 0 },
      { address: 0xffff_fff0n, device: 3 }, // offsets carry into the high word
      { address: 0x1_0000_0000_0000n - 0x1000n, device: 7 },
    ]
    const span: number[] = []
    const offset: number[] = []
    const length: number[] = []
    let seed = 12345
    const next = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n)
    for (let i = 0; i < 5000; i++) {
      span.push(next(3))
      offset.push(next(2 ** 20) * 4096 + next(4096))
      length.push(1 + next(2 ** 24) + (i % 97 === 0 ? 2 ** 33 : 0))
    }
    const fast = Lists.fromRuns(spans, span, offset, length)
    const plain = DescList.from(span.map((k, i) => ({ address: spans[k]!.address + BigInt(offset[i]!), length: length[i]!, device: spans[k]!.device })))
    expect(Buffer.from(fast.encode()).equals(Buffer.from(plain.encode()))).toBe(true)
    expect(fast.totalBytes).toBe(plain.totalBytes)
    expect(fast.length).toBe(5000)
  })
})
