// Proves kvxfer is safe across object and process lifetimes:
//  - GC (`node --expose-gc` children): registered memory with no JS reference survives GC and
//    moves correct bytes; in-flight transfers survive GC; deregistered buffers and closed
//    agents are collectable; dropped, unclosed agents do not crash;
//  - process exit: an idle agent lets a process exit; a pending transfer or an awaited
//    notification keeps it alive; process.exit() with transfers in flight does not crash;
//    Buffers from view() stay valid after deregister()/close();
//  - worker_threads: agents in two workers transfer to each other; terminating a worker with
//    a live, busy agent does not crash;
//  - close(): during 200 in-flight writes every promise settles (resolved or ERR_CLOSED);
//    close() is idempotent, also through Symbol.asyncDispose;
//  - more than 4 GiB: allocate(5 GiB), view() and transfers above the 4 GiB mark.
import { afterEach, describe, expect, it } from 'vitest'
import { Agent } from '../../dist/index.js'
import {
  GiB, KiB, MiB, closeAll, createAgents, exchangeMetadata, expectKvxferError, fillBytes, randomBytesFor, range, settle,
  sha256, throwsWith, uniqueName, within,
} from '../fixtures/index.js'
import { explain, killAllChildren, runFixture, startFixture } from '../fixtures/peers.js'

afterEach(() => killAllChildren(), 30_000)

describe('GC safety (node --expose-gc)', { timeout: 90_000 }, () => {
  it.each([
    'registered-buffer-survives-gc',
    'gc-during-transfers',
    'deregistered-buffer-is-collectable',
    'closed-agent-is-collectable',
    'dropped-without-close',
  ])('%s', async (scenario) => {
    const run = await runFixture('gc.mjs', [scenario], { execArgv: ['--expose-gc'], timeoutMs: 60_000 })
    expect(run.code, explain(run)).toBe(0)
    expect(run.signal, explain(run)).toBeNull()
    expect(run.results, explain(run)).toEqual([{ ok: true }])
  })
})

describe('process lifetime', { timeout: 60_000 }, () => {
  it.each(['idle', 'idle-after-work'])('an %s agent (never closed) lets the process exit by itself', async (scenario) => {
    const run = await runFixture('exit.mjs', [scenario], { timeoutMs: 20_000 })
    expect(run.code, explain(run)).toBe(0)
    expect(run.signal, explain(run)).toBeNull()
    expect(run.stdout).toContain('READY')
  })

  it('a pending transfer keeps the process alive until it completes (top-level await)', async () => {
    const run = await runFixture('exit.mjs', ['pending-write'], { timeoutMs: 30_000 })
    expect(run.code, `exit code 13 means the event loop emptied with the write still pending\n${explain(run)}`).toBe(0)
    expect(run.results).toEqual([{ bytes: 64 * MiB }])
  })

  it('an awaited waitForNotification (timeoutMs 1500) keeps the process alive, which exits after the timeout', async () => {
    const child = startFixture('exit.mjs', ['wait-timeout'])
    await child.waitForLine('READY', 20_000)
    await new Promise((resolve) => setTimeout(resolve, 500))
    expect(child.alive, `exited while waiting\n${child.stdout}\n${child.stderr}`).toBe(true)
    const run = await child.finish(20_000)
    expect(run.code, explain(run)).toBe(0)
    expect(run.results).toEqual([{ code: 'ERR_TIMEOUT' }])
  })

  it('an awaited waitForNotification with no timeout keeps the process alive until a notification from another process wakes it', async () => {
    const me = await Agent.create({ name: uniqueName('waker') })
    try {
      const child = startFixture('exit.mjs', ['wait-external', me.name])
      const line = await child.waitForLine('META ', 20_000)
      const childName = await me.loadPeer(Buffer.from(line.slice(5), 'base64'))
      await new Promise((resolve) => setTimeout(resolve, 500))
      expect(child.alive, `the child exited with its waitForNotification pending\n${child.stdout}\n${child.stderr}`).toBe(true)
      await me.notify(childName, 'wake')
      const run = await child.finish(20_000)
      expect(run.code, explain(run)).toBe(0)
      expect(run.results).toEqual([{ message: 'wake', peer: me.name }])
    } finally {
      await closeAll(me)
    }
  })

  it('process.exit() with 50 transfers in flight and nothing closed exits cleanly', async () => {
    const run = await runFixture('exit.mjs', ['exit-during-transfers'], { timeoutMs: 30_000 })
    expect(run.signal, explain(run)).toBeNull()
    expect(run.code, explain(run)).toBe(0)
    expect(run.stdout).toContain('READY')
  })

  it('Buffers from region.view() stay valid memory after deregister() and close()', async () => {
    const run = await runFixture('exit.mjs', ['views-outlive-regions'], { timeoutMs: 30_000 })
    expect(run.signal, explain(run)).toBeNull()
    expect(run.code, explain(run)).toBe(0)
    expect(run.results).toEqual([{ ok: true }])
  })
})

describe('worker_threads', { timeout: 90_000 }, () => {
  it('agents in two workers move bytes to each other (checked by hash)', async () => {
    const run = await runFixture('workers.mjs', ['transfer'], { timeoutMs: 60_000 })
    expect(run.code, explain(run)).toBe(0)
    expect(run.results).toEqual([{ ok: true }])
  })

  it('terminating a worker whose agent is live and busy does not crash; other agents keep working', async () => {
    const run = await runFixture('workers.mjs', ['terminate'], { timeoutMs: 60_000 })
    expect(run.signal, explain(run)).toBeNull()
    expect(run.code, explain(run)).toBe(0)
    expect(run.results).toMatchObject([{ ok: true }])
  })
})

describe('workers that end with agents open', { timeout: 90_000 }, () => {
  // The library's libuv handles close asynchronously; a worker that is its only user unloads it
  // right after its cleanup hooks, so the handles must be closed before that, not after.
  it.each(['sole-user-returns', 'sole-user-exits', 'sole-user-terminated', 'shared-exits-and-terminations'])('%s: no crash', async (scenario) => {
    const run = await runFixture('worker-ends.mjs', [scenario], { timeoutMs: 60_000 })
    expect(run.signal, explain(run)).toBeNull()
    expect(run.code, explain(run)).toBe(0)
    expect(run.results, explain(run)).toMatchObject([{ ok: true }])
  })
})

describe('close()', { timeout: 60_000 }, () => {
  it.each(['', 'busy'])('close() from the handler of a registration that timed out (%s): nothing throws, close() resolves', async (arg) => {
    const run = await runFixture('exit.mjs', ['late-registration-close', arg], { timeoutMs: 30_000 })
    expect(run.signal, explain(run)).toBeNull()
    expect(run.code, explain(run)).toBe(0)
    expect(run.results, explain(run)).toEqual([{ ok: true, allocate: 'ERR_TIMEOUT' }])
  })

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
