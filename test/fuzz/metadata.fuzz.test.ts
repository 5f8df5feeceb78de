// Proves untrusted bytes cannot crash, hang or fool a loader: 2,000 seeded random mutations
// of a real metadata blob (truncations, bit flips, byte overwrites, insertions, deletions,
// appended junk, random blobs) all make loadPeer reject with ERR_BAD_METADATA; the agent
// still loads the real blob afterwards. Likewise DescList.decode: random bytes and broken
// lengths are refused with ERR_INVALID_ARG, and mutated encodings either are refused or
// decode to well-formed descriptors - never a crash. Seeded (mulberry32), so a failure
// reproduces: the failing iteration and its mutation are in the assertion message.
// loadPeer is fuzzed on every engine (UCX, and NIXL where it loads). NIXL's metadata is NIXL's
// own blob, handed to NIXL as is: there the fuzz proves no crash, no hang, ERR_BAD_METADATA for
// every refusal and a loader that keeps working. That every corrupted blob is refused, and that
// the genuine one loads afterwards, does not hold on NIXL today (a known NIXL-engine bug, shown
// deterministically in test/unit/errors.test.ts, ERR_BAD_METADATA): with random mutations it
// would only show now and then, so it is asserted on UCX only here.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DescList, KvxferError, type Agent, type Region } from '../../dist/index.js'
import { ENGINES, KiB, closeAll, createAgent, range, reportNixlSkipped, settle, within } from '../fixtures/index.js'
import { mulberry32 } from './js/rng.mjs'

const ITERATIONS = 2_000
const SEED = Number(process.env.KVXFER_FUZZ_SEED ?? 0x6b76_7866)

type Rng = ReturnType<typeof mulberry32>
const int = (rng: Rng, n: number) => Math.floor(rng() * n) // [0, n)
const randomBytes = (rng: Rng, n: number) => Uint8Array.from({ length: n }, () => int(rng, 256))

/** One random mutation of `src`; returns the bytes and a description for failure messages. */
function mutate(rng: Rng, src: Uint8Array): { bytes: Uint8Array; how: string } {
  const n = src.length
  switch (int(rng, 8)) {
    case 0: { // truncate
      const len = int(rng, n)
      return { bytes: src.slice(0, len), how: `truncate to ${len}` }
    }
    case 1: { // flip 1..8 random bits
      const out = Uint8Array.from(src)
      const flips = 1 + int(rng, 8)
      const at: number[] = []
      for (let i = 0; i < flips; i++) {
        const bit = int(rng, n * 8)
        out[bit >> 3]! ^= 1 << (bit & 7)
        at.push(bit)
      }
      return { bytes: out, how: `flip bits ${at.join(',')}` }
    }
    case 2: { // overwrite a run of bytes with random values
      const out = Uint8Array.from(src)
      const start = int(rng, n)
      const len = 1 + int(rng, Math.min(32, n - start))
      out.set(randomBytes(rng, len), start)
      return { bytes: out, how: `overwrite [${start}, +${len})` }
    }
    case 3: { // delete a run
      const start = int(rng, n)
      const len = 1 + int(rng, n - start)
      const out = new Uint8Array(n - len)
      out.set(src.subarray(0, start))
      out.set(src.subarray(start + len), start)
      return { bytes: out, how: `delete [${start}, +${len})` }
    }
    case 4: { // insert random bytes
      const at = int(rng, n + 1)
      const ins = randomBytes(rng, 1 + int(rng, 64))
      const out = new Uint8Array(n + ins.length)
      out.set(src.subarray(0, at))
      out.set(ins, at)
      out.set(src.subarray(at), at + ins.length)
      return { bytes: out, how: `insert ${ins.length} at ${at}` }
    }
    case 5: { // append junk
      const junk = randomBytes(rng, 1 + int(rng, 256))
      const out = new Uint8Array(n + junk.length)
      out.set(src)
      out.set(junk, n)
      return { bytes: out, how: `append ${junk.length}` }
    }
    case 6: { // a random blob of a random length (0 .. 2n)
      const len = int(rng, 2 * n + 1)
      return { bytes: randomBytes(rng, len), how: `random ${len} bytes` }
    }
    default: { // keep the first k bytes (header-like), randomise the rest
      const keep = int(rng, n)
      const out = Uint8Array.from(src)
      out.set(randomBytes(rng, n - keep), keep)
      return { bytes: out, how: `randomise after ${keep}` }
    }
  }
}

const sameBytes = (x: Uint8Array, y: Uint8Array) => x.length === y.length && Buffer.from(x).equals(Buffer.from(y))

reportNixlSkipped('metadata fuzz: loadPeer')

describe.each(ENGINES)('%s engine: metadata fuzz: loadPeer', { timeout: 180_000 }, (engine) => {
  const nixl = engine === 'nixl'
  let source: Agent
  let loader: Agent
  let blob: Uint8Array

  /** Every loadPeer settles, bounded: a hang fails the test instead of stalling the run. */
  const load = (bytes: Uint8Array) => within(settle(loader.loadPeer(bytes, { timeoutMs: 10_000 })), 20_000, 'loadPeer')

  beforeAll(async () => {
    source = await createAgent('fuzz-src', { engine })
    loader = await createAgent('fuzz-load', { engine })
    // a blob with some regions in it, like a real one
    const regions: Region[] = []
    for (const size of [4 * KiB, 64 * KiB, 1024 * KiB]) regions.push(await source.allocate(size))
    regions.push(await source.register(Buffer.alloc(8 * KiB)))
    blob = Uint8Array.from(source.metadata())
  }, 60_000)

  afterAll(() => closeAll(source, loader), 30_000)

  // kvxfer's own blobs are checksummed on both engines (NIXL's inside kvxfer's envelope).
  const refusedAll = 'are all refused with ERR_BAD_METADATA'

  it(`${ITERATIONS} seeded mutations of a real blob ${refusedAll}`, async () => {
    const rng = mulberry32(SEED)
    let tried = 0
    for (let i = 0; i < ITERATIONS; i++) {
      const { bytes, how } = mutate(rng, blob)
      if (sameBytes(bytes, blob)) continue // a mutation that changed nothing (e.g. two flips of one bit)
      tried++
      const outcome = await load(bytes)
      const context = `iteration ${i} (seed ${SEED}): ${how}`
      expect(outcome.ok, `${context}: loadPeer accepted a corrupted blob`).toBe(false)
      if (!outcome.ok) {
        expect(outcome.error, `${context}: ${String(outcome.error)}`).toBeInstanceOf(KvxferError)
        expect((outcome.error as KvxferError).code, context).toBe('ERR_BAD_METADATA')
      }
    }
    expect(tried).toBeGreaterThan(ITERATIONS * 0.95)
  })

  it(`200 corrupted blobs loaded concurrently ${refusedAll}`, async () => {
    const rng = mulberry32(SEED ^ 0x5555)
    const blobs = range(200).map(() => mutate(rng, blob)).filter((m) => !sameBytes(m.bytes, blob))
    const outcomes = await within(Promise.all(blobs.map((m) => settle(loader.loadPeer(m.bytes, { timeoutMs: 10_000 })))),
      30_000, '200 concurrent loadPeer calls')
    outcomes.forEach((o, i) => {
      expect(o.ok, blobs[i]!.how).toBe(false)
      if (!o.ok) expect((o.error as KvxferError).code, blobs[i]!.how).toBe('ERR_BAD_METADATA')
    })
  })

  if (!nixl) {
    it('afterwards the real blob loads, and the peer it describes is usable', async () => {
      expect(await loader.loadPeer(blob)).toBe(source.name)
      await loader.notify(source.name, 'still alive')
      const n = await source.waitForNotification(loader.name, 'still alive', { timeoutMs: 10_000 })
      expect(n.peer).toBe(loader.name)
    })
  } else {
    it('afterwards the loader still connects to and notifies another agent, and a fresh agent loads the real blob', async () => {
      const other = await createAgent('fuzz-other', { engine })
      const fresh = await createAgent('fuzz-fresh', { engine })
      try {
        expect(await loader.loadPeer(other.metadata())).toBe(other.name)
        const waiting = settle(other.waitForNotification(loader.name, 'still alive', { timeoutMs: 10_000 }))
        await loader.notify(other.name, 'still alive', { timeoutMs: 10_000 })
        expect(await waiting).toMatchObject({ ok: true, value: { peer: loader.name } })
        expect(await fresh.loadPeer(blob)).toBe(source.name)
        await fresh.notify(source.name, 'source still alive', { timeoutMs: 10_000 })
        // source has not loaded fresh's metadata: it cannot name fresh as a peer, but it receives
        expect((await within(source.notifications().next(), 10_000, 'notification at the source')).value?.message)
          .toBe('source still alive')
      } finally {
        await closeAll(other, fresh)
      }
    })
  }
})

describe('descriptor fuzz: DescList.decode', { timeout: 120_000 }, () => {
  const isWellFormed = (list: DescList) => [...list].every((d) =>
    typeof d.address === 'bigint' && d.address >= 0n && d.address < 1n << 64n &&
    Number.isSafeInteger(d.length) && d.length >= 0 &&
    Number.isInteger(d.device) && d.device >= 0)

  it(`${ITERATIONS} random byte strings are refused with ERR_INVALID_ARG`, () => {
    const rng = mulberry32(SEED ^ 0x1234)
    for (let i = 0; i < ITERATIONS; i++) {
      const bytes = randomBytes(rng, int(rng, 512))
      let thrown: unknown
      try {
        DescList.decode(bytes)
      } catch (err) {
        thrown = err
      }
      expect(thrown, `iteration ${i}: ${bytes.length} random bytes decoded`).toBeInstanceOf(KvxferError)
      expect((thrown as KvxferError).code).toBe('ERR_INVALID_ARG')
    }
  })

  it(`${ITERATIONS} mutations of a real encoding: refused (ERR_INVALID_ARG) or well-formed, never a crash`, () => {
    const rng = mulberry32(SEED ^ 0x4321)
    const items = range(64).map((i) => ({ address: 0x7f00_0000_0000n + BigInt(i) * 4096n, length: 4096, device: 0 }))
    const encoded = DescList.from(items).encode()
    let refused = 0
    for (let i = 0; i < ITERATIONS; i++) {
      const { bytes, how } = mutate(rng, encoded)
      let list: DescList | undefined
      try {
        list = DescList.decode(bytes)
      } catch (err) {
        expect(err, `iteration ${i}: ${how}`).toBeInstanceOf(KvxferError)
        expect((err as KvxferError).code, `iteration ${i}: ${how}`).toBe('ERR_INVALID_ARG')
        refused++
        continue
      }
      expect(isWellFormed(list), `iteration ${i}: ${how} decoded to malformed descriptors`).toBe(true)
      expect(list.totalBytes).toBe([...list].reduce((s, d) => s + d.length, 0))
      expect(Number.isInteger(list.length) && list.length >= 0).toBe(true)
    }
    expect(refused).toBeGreaterThan(0)
  })
})
