// Proves kvxfer is safe across object lifetimes, with agents in this process:
//  - close(): during 200 in-flight writes every promise settles (resolved or ERR_CLOSED);
//    close() is idempotent, also through Symbol.asyncDispose;
//  - more than 4 GiB: allocate(5 GiB), view() and transfers above the 4 GiB mark.
// GC, process exit, worker_threads and close() in a timed-out registration's handler run in
// child processes: test/integration/lifecycle.test.ts.
import { describe, expect, it } from 'vitest'
import { Agent } from '../../dist/index.js'
import {
  GiB, KiB, MiB, closeAll, createAgents, exchangeMetadata, expectKvxferError, fillBytes, randomBytesFor, range, settle,
  sha256, throwsWith, uniqueName, within,
} from '../fixtures/index.js'

describe('close()', { timeout: 60_000 }, () => {
  it('during 200 in-flight writes: every promise settles, resolved with its bytes moved or rejected ERR_CLOSED', async () => {
    const [a, b] = await createAgents(2, 'close-busy')
    try {
      const N = 200
      const L = 256 * KiB
      const ra = await a.allocate(N * L)
      const rb = await b.allocate(N * L)
      await exchangeMetadata(a, b)
      fillBytes(ra.view(), 41)
      const source = randomBytesFor(N * L, 41) // the same bytes, kept outside a's memory

      const writes = range(N).map((i) => settle(a.write(ra.slice(i * L, L), rb.slice(i * L, L), b.name)))
      const closing = settle(a.close())
      const outcomes = await within(Promise.all(writes), 30_000, 'writes after close()')
      expect(await within(closing, 30_000, 'close()')).toEqual({ ok: true, value: undefined })
      expect(a.closed).toBe(true)

      let resolved = 0
      outcomes.forEach((o, i) => {
        if (o.ok) {
          resolved++
          expect(o.value.bytes).toBe(L)
          expect(sha256(rb.view(i * L, L)), `write ${i} resolved but its bytes are not there`).toBe(sha256(source.subarray(i * L, (i + 1) * L)))
        } else {
          expectKvxferError(o.error, 'ERR_CLOSED')
        }
      })
      console.info(`close() during ${N} writes: ${resolved} resolved, ${N - resolved} rejected ERR_CLOSED`)
      // Writes still pending when close() is called reject then, as documented: they do not wait
      // for the engine's teardown (nor resolve after it). No event-loop turn passed between
      // posting and close(), so none had completed.
      expect(N - resolved, 'writes pending at close() rejected ERR_CLOSED').toBe(N)
      // b is unaffected
      const rb2 = await b.allocate(4 * KiB)
      expect(rb2.length).toBe(4 * KiB)
    } finally {
      await closeAll(a, b)
    }
  })

  it('with prepared transfers posted and a waitForNotification pending', async () => {
    const [a, b] = await createAgents(2, 'close-prepared')
    try {
      const ra = await a.allocate(16 * MiB)
      const rb = await b.allocate(16 * MiB)
      await exchangeMetadata(a, b)
      const xfers = range(8).map((i) => a.prepare({ op: i % 2 ? 'read' : 'write', local: ra.slice(i * 2 * MiB, 2 * MiB), remote: rb.slice(i * 2 * MiB, 2 * MiB), peer: b.name }))
      const posts = xfers.map((x) => settle(x.post()))
      const waiting = settle(a.waitForNotification(b.name, 'never'))
      await within(a.close(), 30_000, 'close()')
      for (const o of await within(Promise.all(posts), 30_000, 'posts')) {
        if (!o.ok) expectKvxferError(o.error, 'ERR_CLOSED')
      }
      const w = await within(waiting, 10_000, 'waitForNotification')
      expect(w.ok).toBe(false)
      if (!w.ok) expectKvxferError(w.error, 'ERR_CLOSED')
      for (const x of xfers) expect(() => x.release()).not.toThrow()
    } finally {
      await closeAll(a, b)
    }
  })

  it('is idempotent: concurrent and repeated calls all resolve', async () => {
    const a = await Agent.create({ name: uniqueName('close-twice') })
    await a.allocate(MiB)
    expect(a.closed).toBe(false)
    await within(Promise.all([a.close(), a.close(), a.close()]), 20_000, 'concurrent close()')
    expect(a.closed).toBe(true)
    await within(a.close(), 10_000, 'another close()')
    expect(a.closed).toBe(true)
  })

  it('Symbol.asyncDispose closes the agent (await using)', async () => {
    const a = await Agent.create({ name: uniqueName('dispose') })
    await a[Symbol.asyncDispose]()
    expect(a.closed).toBe(true)
    await within(a.close(), 10_000, 'close() after dispose')
  })
})

describe('more than 4 GiB', { timeout: 120_000 }, () => {
  it('allocate(5 GiB): view() above 4 GiB reads and writes the right bytes; transfers from and into slices above 4 GiB move the right bytes', async () => {
    const [a, b] = await createAgents(2, 'big')
    try {
      const big = await a.allocate(5n * BigInt(GiB))
      expect(big.length).toBe(5 * GiB)
      const rb = await b.allocate(4 * MiB)
      await exchangeMetadata(a, b)

      const HI = 4 * GiB + 12_345 // above 2^32: a 32-bit truncation would land at 12,345
      expect(big.slice(HI, MiB).address).toBe(big.address + BigInt(HI))

      // view(): write above 4 GiB, read it back through another view, the low alias stays zero
      const want = sha256(fillBytes(big.view(HI, MiB), 51))
      expect(sha256(big.view(HI, MiB))).toBe(want)
      expect(big.view(HI - 4 * GiB, MiB).equals(Buffer.alloc(MiB)), 'a write above 4 GiB landed 4 GiB lower').toBe(true)

      // a view straddling the 4 GiB mark
      const across = fillBytes(big.view(4 * GiB - 2 * KiB, 4 * KiB), 52)
      expect(big.view(4 * GiB, 2 * KiB).equals(across.subarray(2 * KiB))).toBe(true)
      expect(big.view(0, 4 * KiB).equals(Buffer.alloc(4 * KiB))).toBe(true)

      // WRITE from a slice above 4 GiB
      await a.write(big.slice(HI, MiB), rb.slice(0, MiB), b.name)
      expect(sha256(rb.view(0, MiB))).toBe(want)

      // READ into the very end of the region
      const END = 5 * GiB - MiB
      const want2 = sha256(fillBytes(rb.view(MiB, MiB), 53))
      await a.read(big.slice(END, MiB), rb.slice(MiB, MiB), b.name)
      expect(sha256(big.view(END, MiB))).toBe(want2)
      expect(big.view(END - 4 * GiB, MiB).equals(Buffer.alloc(MiB)), 'a read above 4 GiB landed 4 GiB lower').toBe(true)

      // b WRITEs into a slice above 4 GiB (the remote side above 4 GiB)
      const want3 = sha256(fillBytes(rb.view(2 * MiB, MiB), 54))
      await b.write(rb.slice(2 * MiB, MiB), big.slice(HI + 8 * MiB, MiB), a.name)
      expect(sha256(big.view(HI + 8 * MiB, MiB))).toBe(want3)

      throwsWith(() => big.slice(5 * GiB - 10, 11), 'ERR_OUT_OF_RANGE')
      throwsWith(() => big.view(5 * GiB - 10, 11), 'ERR_OUT_OF_RANGE')
      await big.deregister()
    } finally {
      await closeAll(a, b)
    }
  })
})
