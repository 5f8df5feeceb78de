// Proves every error code is produced on purpose, with the right code, as a KvxferError:
// ERR_INVALID_ARG, ERR_NOT_REGISTERED, ERR_OUT_OF_RANGE, ERR_UNKNOWN_PEER, ERR_BAD_METADATA,
// ERR_TIMEOUT, ERR_ABORTED, ERR_CLOSED and ERR_BUSY. Synchronous APIs (prepare, slice, view,
// metadata) must throw; promise APIs must reject (never throw synchronously). Every case here
// uses agents in this process (loopback); ERR_PEER_UNREACHABLE needs a peer process to kill, so
// it is test/integration/errors.test.ts.
// Everything runs on each engine: UCX always, NIXL too where it loads. Where NIXL legitimately
// behaves differently (it checks remote descriptors itself, at the first post), the NIXL
// behaviour is asserted explicitly.
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { Agent, info, type Region } from '../../dist/index.js'
import {
  ENGINES, KiB, MiB, NIXL_ABSENT, closeAll, createAgent, createAgents, eachCase, exchangeMetadata, expectKvxferError, fillBytes,
  rejectsWith, reportNixlSkipped, settle, sha256, throwsWith, uniqueName, within,
} from '../fixtures/index.js'
import { explain, runFixture } from '../fixtures/peers.js'

// Every test here is bounded (30 s unless a suite sets its own).
vi.setConfig({ testTimeout: 30_000, hookTimeout: 60_000 })

reportNixlSkipped('every error code (loopback agents and killed peers)')

const hasTaskset = spawnSync('taskset', ['-c', '0', 'true'], { stdio: 'ignore', timeout: 10_000 }).status === 0

describe.each(ENGINES)('%s engine', (engine) => {
  const nixl = engine === 'nixl'

  const BIG = 64 * MiB

  let a: Agent
  let b: Agent
  let ra: Region // a: 1 MiB, allocate()d
  let aBuf: Buffer
  let raBuf: Region // a: a registered Buffer
  let aBig: Region // a: 64 MiB, for transfers still in flight when the next call comes
  let aSpare1: Region // a: deregistered by the ERR_BUSY tests
  let aSpare2: Region
  let rb: Region // b: 1 MiB
  let bBig: Region // b: 64 MiB
  let rbLate: Region // b: registered after a loaded b's metadata; b does not push it (pushUpdates off)

  beforeAll(async () => {
    a = await createAgent('err-a', { engine })
    b = await createAgent('err-b', { engine, pushUpdates: false })
    ra = await a.allocate(MiB)
    aBuf = Buffer.alloc(64 * KiB)
    raBuf = await a.register(aBuf)
    aBig = await a.allocate(BIG)
    aSpare1 = await a.allocate(MiB)
    aSpare2 = await a.allocate(MiB)
    rb = await b.allocate(MiB)
    bBig = await b.allocate(BIG)
    await exchangeMetadata(a, b)
    rbLate = await b.allocate(64 * KiB)
  }, 60_000)

  afterAll(() => closeAll(a, b), 60_000)

  /** A valid 4 KiB WRITE spec from a to b, with fields replaced by `extra` (typed loosely: many callers make it invalid on purpose). */
  const write4k = (extra: Record<string, unknown> = {}): never =>
    ({ op: 'write', local: ra.slice(0, 4 * KiB), remote: rb.slice(0, 4 * KiB), peer: b.name, ...extra }) as never

  // Remote descriptors the peer's metadata does not cover: prepare() checks every remote descriptor
  // against the regions the peer's metadata lists and throws ERR_NOT_REGISTERED, or ERR_OUT_OF_RANGE
  // for one that runs past the end of a region, on every engine (the NIXL engine's metadata carries
  // the region table in kvxfer's envelope). Only a bare NIXL blob from a non-kvxfer agent is opaque:
  // then NIXL checks at the first post (test/unit/metadata-format.test.ts).

  /** prepare(spec) with a bad remote side throws `code`. */
  async function expectRemoteRefused(spec: never, code: string): Promise<void> {
    throwsWith(() => a.prepare(spec), code)
  }

  it('busyPollUs 0 never polls; 10,000 polls and finds completions; both move the bytes', async () => {
    for (const busyPollUs of [0, 10_000]) {
      const [c, d] = await createAgents(2, `poll-${busyPollUs}`, { engine, busyPollUs })
      try {
        const [rc, rd] = await Promise.all([c.allocate(256 * KiB), d.allocate(256 * KiB)])
        await exchangeMetadata(c, d)
        const before = c.stats().busyPoll
        for (let i = 0; i < 20; i++) {
          const want = sha256(fillBytes(rc.view(), 100 + i))
          await c.write(rc, rd, d.name, { timeoutMs: 30_000 })
          expect(sha256(rd.view()), `busyPollUs ${busyPollUs}, write ${i}`).toBe(want)
        }
        const after = c.stats().busyPoll
        if (busyPollUs === 0) {
          expect(after, 'busyPollUs 0 never polls').toEqual(before)
        } else if (after.contended === before.contended && before.contended === 0) {
          // Each write leaves the loop with nothing else to do until it completes, well inside 10 ms.
          expect(after.polls - before.polls, 'polls while writes were pending').toBeGreaterThan(0)
          expect(after.found - before.found, 'polls that found the completion').toBeGreaterThan(0)
          expect(after.found).toBeLessThanOrEqual(after.polls)
        } else {
          // Other threads held the core (a loaded machine, files running in parallel): polling
          // pauses after each poll that finds it so, and every such poll was counted as one.
          expect(after.contended).toBeLessThanOrEqual(after.polls)
          expect(after.found).toBeLessThanOrEqual(after.polls)
        }
      } finally {
        await closeAll(c, d)
      }
    }
  })

  // One core shared with a busy process (test/fixtures/busy-poll-load.mjs under taskset): a poll's
  // yield hands the core over and comes back late, so polling pauses. Before that rule every write
  // polled (200 writes: 204 polls, none counted contended); now 94-139 polls, 29-42 contended.
  it.skipIf(!hasTaskset)(`busy polling pauses where the core is taken by another process${hasTaskset ? '' : ' [skipped: no taskset]'}`, async () => {
    const run = await runFixture('busy-poll-load.mjs', [engine], { via: ['taskset', '-c', '0'] })
    expect(run.code, explain(run)).toBe(0)
    const r = run.results[0] as { writes: number; bytesOk: boolean; busyPoll: { polls: number; contended: number } }
    expect(r.bytesOk, 'every write arrived').toBe(true)
    expect(r.busyPoll.contended, 'polls that found the core taken').toBeGreaterThan(0)
    expect(r.busyPoll.contended).toBeLessThanOrEqual(r.busyPoll.polls)
    expect(r.busyPoll.polls, 'polls paused after those (one per write otherwise)').toBeLessThan(r.writes)
  })

  describe('the loopback setup itself works (so the failures below are the ones we asked for)', () => {
    it('a valid WRITE between the two agents moves the bytes', async () => {
      const want = sha256(fillBytes(ra.view(0, 4 * KiB), 1))
      const res = await a.write(ra.slice(0, 4 * KiB), rb.slice(0, 4 * KiB), b.name)
      expect(res.bytes).toBe(4 * KiB)
      expect(sha256(rb.view(0, 4 * KiB))).toBe(want)
    })
  })

  describe('ERR_INVALID_ARG', () => {
    it('Agent.create with bad options', async () => {
      await rejectsWith(() => Agent.create({ engine: 'bogus' as never }), 'ERR_INVALID_ARG')
      await rejectsWith(() => Agent.create({ name: 42 as never }), 'ERR_INVALID_ARG')
      await rejectsWith(() => Agent.create({ timeoutMs: 'soon' as never }), 'ERR_INVALID_ARG')
      await eachCase([-1, 10_001, Number.NaN, Infinity, '50', null],
        (bad) => rejectsWith(() => Agent.create({ engine, busyPollUs: bad as never }), 'ERR_INVALID_ARG'))
    })

    it('register() of something that is not memory', async () => {
      await eachCase([42, 'a string', null, undefined, {}, { kind: 'dram' }, { kind: 'floppy', address: 4096n, length: 4096 }, [1, 2, 3]],
        (bad) => rejectsWith(() => a.register(bad as never), 'ERR_INVALID_ARG'))
    })

    it('register() of empty memory', async () => {
      await rejectsWith(() => a.register(Buffer.alloc(0)), 'ERR_INVALID_ARG')
      await rejectsWith(() => a.register(new ArrayBuffer(0)), 'ERR_INVALID_ARG')
    })

    it('allocate() of a bad length', async () => {
      await eachCase([-1, 0, Number.NaN, 1.5, 'big', null, -1n], (bad) => rejectsWith(() => a.allocate(bad as never), 'ERR_INVALID_ARG'))
    })

    it('prepare() with a bad op', () => {
      throwsWith(() => a.prepare(write4k({ op: 'copy' })), 'ERR_INVALID_ARG')
      throwsWith(() => a.prepare(write4k({ op: undefined })), 'ERR_INVALID_ARG')
      throwsWith(() => a.prepare(write4k({ op: 1 })), 'ERR_INVALID_ARG')
    })

    it('prepare() with wrong types', () => {
      throwsWith(() => a.prepare(undefined as never), 'ERR_INVALID_ARG')
      throwsWith(() => a.prepare(write4k({ local: 'ra' })), 'ERR_INVALID_ARG')
      throwsWith(() => a.prepare(write4k({ local: 42 })), 'ERR_INVALID_ARG')
      throwsWith(() => a.prepare(write4k({ remote: null })), 'ERR_INVALID_ARG')
      throwsWith(() => a.prepare(write4k({ remote: { address: 'x', length: 4096 } })), 'ERR_INVALID_ARG')
      throwsWith(() => a.prepare(write4k({ local: { address: ra.address, length: -4096 } })), 'ERR_INVALID_ARG')
      throwsWith(() => a.prepare(write4k({ peer: 42 })), 'ERR_INVALID_ARG')
      throwsWith(() => a.prepare(write4k({ notify: 42 })), 'ERR_INVALID_ARG')
    })

    it('local/remote descriptor COUNT mismatch (same total bytes)', () => {
      throwsWith(() => a.prepare(write4k({
        local: [ra.slice(0, 4 * KiB), ra.slice(4 * KiB, 4 * KiB)],
        remote: [rb.slice(0, 8 * KiB)],
      })), 'ERR_INVALID_ARG')
    })

    it('local/remote descriptor LENGTH mismatch', () => {
      throwsWith(() => a.prepare(write4k({ local: ra.slice(0, 4 * KiB), remote: rb.slice(0, 2 * KiB) })), 'ERR_INVALID_ARG')
      // pairwise mismatch even though the totals agree
      throwsWith(() => a.prepare(write4k({
        local: [ra.slice(0, 1 * KiB), ra.slice(1 * KiB, 3 * KiB)],
        remote: [rb.slice(0, 3 * KiB), rb.slice(3 * KiB, 1 * KiB)],
      })), 'ERR_INVALID_ARG')
    })

    it('a zero-length descriptor', () => {
      throwsWith(() => a.prepare(write4k({ local: { address: ra.address, length: 0, device: 0 }, remote: { address: rb.address, length: 0, device: 0 } })), 'ERR_INVALID_ARG')
      throwsWith(() => a.prepare(write4k({
        local: [ra.slice(0, 4 * KiB), { address: ra.address, length: 0, device: 0 }],
        remote: [rb.slice(0, 4 * KiB), { address: rb.address, length: 0, device: 0 }],
      })), 'ERR_INVALID_ARG')
    })

    it('an empty descriptor list', () => {
      throwsWith(() => a.prepare(write4k({ local: [], remote: [] })), 'ERR_INVALID_ARG')
    })

    it('a notification larger than 16 KiB (string and bytes; prepare, write and notify)', async () => {
      const tooBig = 'x'.repeat(16 * KiB + 1)
      const tooBigBytes = new Uint8Array(16 * KiB + 1)
      throwsWith(() => a.prepare(write4k({ notify: tooBig })), 'ERR_INVALID_ARG')
      throwsWith(() => a.prepare(write4k({ notify: tooBigBytes })), 'ERR_INVALID_ARG')
      await rejectsWith(() => a.write(ra.slice(0, 4 * KiB), rb.slice(0, 4 * KiB), b.name, { notify: tooBig }), 'ERR_INVALID_ARG')
      await rejectsWith(() => a.notify(b.name, tooBig), 'ERR_INVALID_ARG')
      await rejectsWith(() => a.notify(b.name, tooBigBytes), 'ERR_INVALID_ARG')
      // 16 KiB of multi-byte UTF-8 characters is more than 16 KiB of bytes
      await rejectsWith(() => a.notify(b.name, 'é'.repeat(8 * KiB + 1)), 'ERR_INVALID_ARG')
    })

    it('exactly 16 KiB is allowed and arrives whole', async () => {
      const max = 'm'.repeat(16 * KiB)
      const waiting = b.waitForNotification(a.name, max, { timeoutMs: 10_000 })
      await a.notify(b.name, max)
      const n = await waiting
      expect(n.data.byteLength).toBe(16 * KiB)
    })

    it('promise methods reject (not throw) on wrong types', async () => {
      await rejectsWith(() => a.write('ra' as never, rb.slice(0, 4096), b.name), 'ERR_INVALID_ARG')
      await rejectsWith(() => a.read(ra.slice(0, 4096), 42 as never, b.name), 'ERR_INVALID_ARG')
      await rejectsWith(() => a.write(ra.slice(0, 4096), rb.slice(0, 4096), 42 as never), 'ERR_INVALID_ARG')
      await rejectsWith(() => a.notify(42 as never, 'x'), 'ERR_INVALID_ARG')
      await rejectsWith(() => a.notify(b.name, 42 as never), 'ERR_INVALID_ARG')
      await rejectsWith(() => a.loadPeer('not bytes' as never), 'ERR_INVALID_ARG')
      await rejectsWith(() => a.forgetPeer(42 as never), 'ERR_INVALID_ARG')
      await rejectsWith(() => a.waitForNotification(b.name, 42 as never), 'ERR_INVALID_ARG')
    })

    it('slice() and view() with non-numbers', () => {
      throwsWith(() => ra.slice('0' as never, 16), 'ERR_INVALID_ARG')
      throwsWith(() => ra.slice(0, {} as never), 'ERR_INVALID_ARG')
      throwsWith(() => ra.view('0' as never, 16), 'ERR_INVALID_ARG')
    })

    it('post() and waitForNotification() with a signal that is not an AbortSignal', async () => {
      const xfer = a.prepare(write4k())
      try {
        await rejectsWith(() => xfer.post({ signal: {} as never }), 'ERR_INVALID_ARG')
      } finally {
        xfer.release()
      }
      await rejectsWith(() => a.waitForNotification(b.name, 'x', { signal: 'abort' as never }), 'ERR_INVALID_ARG')
    })
  })

  describe('ERR_NOT_REGISTERED', () => {
    it('a local descriptor in memory this agent never registered', async () => {
      throwsWith(() => a.prepare(write4k({ local: { address: 0x1000n, length: 4096, device: 0 } })), 'ERR_NOT_REGISTERED')
      await rejectsWith(() => a.write({ address: 0x1000n, length: 4096, device: 0 }, rb.slice(0, 4096), b.name), 'ERR_NOT_REGISTERED')
    })

    it('a local descriptor in memory another agent registered', () => {
      throwsWith(() => a.prepare(write4k({ local: bBig.slice(0, 4096) })), 'ERR_NOT_REGISTERED')
    })

    it('a local descriptor in a region that was deregistered', async () => {
      const buf = Buffer.alloc(8 * KiB)
      const r = await a.register(buf)
      const desc = r.slice(0, 4096)
      await r.deregister()
      throwsWith(() => a.prepare(write4k({ local: desc })), 'ERR_NOT_REGISTERED')
    })

    it('a remote descriptor outside every region of the peer', async () => {
      await expectRemoteRefused(write4k({ remote: { address: 0x1000n, length: 4096, device: 0 } }), 'ERR_NOT_REGISTERED')
      // registered here, but not at the peer
      await expectRemoteRefused(write4k({ remote: aSpare1.slice(0, 4096) }), 'ERR_NOT_REGISTERED')
      await rejectsWith(() => a.read(ra.slice(0, 4096), { address: 0x1000n, length: 4096, device: 0 }, b.name), 'ERR_NOT_REGISTERED')
      await rejectsWith(() => a.write(ra.slice(0, 4096), { address: 0x1000n, length: 4096, device: 0 }, b.name), 'ERR_NOT_REGISTERED')
      // a refused transfer leaves the connection usable
      expect((await a.write(ra.slice(0, 4096), rb.slice(0, 4096), b.name)).bytes).toBe(4096)
    })

    it('a remote descriptor in a region the peer registered after we loaded its metadata', async () => {
      await expectRemoteRefused(write4k({ remote: rbLate.slice(0, 4096) }), 'ERR_NOT_REGISTERED')
    })

    it('preparing a refused transfer again is refused the same way', async () => {
      const spec = write4k({ remote: { address: 0x1000n, length: 4096, device: 0 } })
      for (let i = 0; i < 3; i++) throwsWith(() => a.prepare(spec), 'ERR_NOT_REGISTERED')
    })
  })

  describe('ERR_OUT_OF_RANGE', () => {
    it('slice() past the end of a region', () => {
      throwsWith(() => ra.slice(ra.length - 10, 11), 'ERR_OUT_OF_RANGE')
      throwsWith(() => ra.slice(ra.length, 1), 'ERR_OUT_OF_RANGE')
      throwsWith(() => ra.slice(0, ra.length + 1), 'ERR_OUT_OF_RANGE')
      throwsWith(() => ra.slice(BigInt(ra.length) + (1n << 40n), 1), 'ERR_OUT_OF_RANGE')
      expect(ra.slice(ra.length - 10, 10).length).toBe(10) // the boundary itself is fine
    })

    it('view() past the end of a region', () => {
      throwsWith(() => ra.view(ra.length - 1, 2), 'ERR_OUT_OF_RANGE')
      throwsWith(() => ra.view(ra.length + 1), 'ERR_OUT_OF_RANGE')
      throwsWith(() => raBuf.view(0, raBuf.length + 1), 'ERR_OUT_OF_RANGE')
      expect(ra.view(ra.length - 2, 2).length).toBe(2)
    })

    it('a local descriptor that starts inside a region and runs past its end', async () => {
      const desc = { address: ra.address + BigInt(ra.length - 100), length: 200, device: 0 }
      throwsWith(() => a.prepare(write4k({ local: desc, remote: rb.slice(0, 200) })), 'ERR_OUT_OF_RANGE')
      await rejectsWith(() => a.write(desc, rb.slice(0, 200), b.name), 'ERR_OUT_OF_RANGE')
    })

    it('a remote descriptor that starts inside a peer region and runs past its end', async () => {
      const desc = { address: rb.address + BigInt(rb.length - 100), length: 200, device: 0 }
      await expectRemoteRefused(write4k({ local: ra.slice(0, 200), remote: desc }), 'ERR_OUT_OF_RANGE')
      await rejectsWith(() => a.read(ra.slice(0, 200), desc, b.name), 'ERR_OUT_OF_RANGE')
      // the boundary itself is fine
      expect((await a.read(ra.slice(0, 100), { address: desc.address, length: 100, device: 0 }, b.name)).bytes).toBe(100)
    })
  })

  describe('ERR_UNKNOWN_PEER', () => {
    it('prepare, write, read, notify and forgetPeer with a peer name never loaded', async () => {
      throwsWith(() => a.prepare(write4k({ peer: 'nobody' })), 'ERR_UNKNOWN_PEER')
      await rejectsWith(() => a.write(ra.slice(0, 4096), rb.slice(0, 4096), 'nobody'), 'ERR_UNKNOWN_PEER')
      await rejectsWith(() => a.read(ra.slice(0, 4096), rb.slice(0, 4096), 'nobody'), 'ERR_UNKNOWN_PEER')
      await rejectsWith(() => a.notify('nobody', 'hello'), 'ERR_UNKNOWN_PEER')
      await rejectsWith(() => a.forgetPeer('nobody'), 'ERR_UNKNOWN_PEER')
    })

    it('a forgotten peer is unknown until loaded again', async () => {
      const [c, d] = await createAgents(2, 'forget', { engine })
      try {
        const rc = await c.allocate(64 * KiB)
        const rd = await d.allocate(64 * KiB)
        await exchangeMetadata(c, d)
        await c.forgetPeer(d.name)
        throwsWith(() => c.prepare({ op: 'write', local: rc.slice(0, 4096), remote: rd.slice(0, 4096), peer: d.name }), 'ERR_UNKNOWN_PEER')
        await rejectsWith(() => c.notify(d.name, 'x'), 'ERR_UNKNOWN_PEER')
        await rejectsWith(() => c.forgetPeer(d.name), 'ERR_UNKNOWN_PEER')
        expect(await c.loadPeer(d.metadata())).toBe(d.name)
        const want = sha256(fillBytes(rc.view(0, 4096), 9))
        await c.write(rc.slice(0, 4096), rd.slice(0, 4096), d.name)
        expect(sha256(rd.view(0, 4096))).toBe(want)
      } finally {
        await closeAll(c, d)
      }
    })
  })

  describe('ERR_BAD_METADATA', () => {
    /**
     * Every blob in `bad` is refused, by an agent that never loaded `a` and by one already
     * connected to `a` (newer metadata from a known peer that arrives damaged), and the refusals do
     * no harm: afterwards `a`'s genuine blob loads in both, and the connected one still reaches `a`
     * (a READ of a's memory and a notification).
     */
    async function expectRefusedHarmlessly(bad: readonly Uint8Array[]): Promise<void> {
      const [fresh, connected] = await createAgents(2, 'bad-md', { engine })
      try {
        const rc = await connected.allocate(64 * KiB)
        await exchangeMetadata(a, connected)
        for (const loader of [fresh, connected]) {
          for (const blob of bad) await rejectsWith(() => loader.loadPeer(blob), 'ERR_BAD_METADATA')
        }
        expect(await fresh.loadPeer(a.metadata()), 'the genuine blob loads after the refusals').toBe(a.name)
        expect(await connected.loadPeer(a.metadata()), 'the genuine blob loads again after the refusals').toBe(a.name)
        const want = sha256(fillBytes(ra.view(256 * KiB, 4 * KiB), 31))
        await connected.read(rc.slice(0, 4 * KiB), ra.slice(256 * KiB, 4 * KiB), a.name, { timeoutMs: 10_000 })
        expect(sha256(rc.view(0, 4 * KiB)), 'a READ over the connection that took the bad blobs').toBe(want)
        const message = uniqueName('still-connected')
        const waiting = settle(a.waitForNotification(connected.name, message, { timeoutMs: 10_000 }))
        await connected.notify(a.name, message, { timeoutMs: 10_000 })
        expect(await waiting).toMatchObject({ ok: true, value: { message } })
      } finally {
        await closeAll(fresh, connected)
      }
    }

    it('random bytes', async () => {
      await expectRefusedHarmlessly([1, 16, 256, 4096].map((n) => randomBytes(n)))
    })

    it('an empty blob', async () => {
      await expectRefusedHarmlessly([new Uint8Array(0)])
    })

    // On the NIXL engine these are refused by kvxfer's envelope (length and CRC-32) before NIXL's
    // own parser sees them: NIXL 1.4 alone accepts some and keeps a half-loaded peer after others.
    it('a truncated blob (1 byte, 8 bytes, half, all but the last byte)', async () => {
      const blob = a.metadata()
      await expectRefusedHarmlessly([1, 8, blob.length >> 1, blob.length - 1].map((n) => blob.slice(0, n)))
    })

    it('a blob with one byte flipped (at the start, middle and end)', async () => {
      const blob = a.metadata()
      await expectRefusedHarmlessly([0, 1, blob.length >> 1, blob.length - 1].map((at) => {
        const bad = Uint8Array.from(blob)
        bad[at]! ^= 0xff
        return bad
      }))
    })

    // The part of the two cases above that every engine gets right today (damage to the header),
    // so the NIXL run keeps checking it while the known bugs are open.
    it('a blob cut short inside its header, or with its first or second byte flipped', async () => {
      const blob = a.metadata()
      const flipped = (at: number) => {
        const bad = Uint8Array.from(blob)
        bad[at]! ^= 0xff
        return bad
      }
      await expectRefusedHarmlessly([blob.slice(0, 1), blob.slice(0, 8), flipped(0), flipped(1)])
    })

    it('a known peer\'s genuine blob loads again (newer metadata replaces older)', async () => {
      expect(await b.loadPeer(a.metadata())).toBe(a.name)
    })
  })

  describe('ERR_TIMEOUT', () => {
    it('waitForNotification with timeoutMs: 50 and nothing coming', async () => {
      await rejectsWith(() => a.waitForNotification(b.name, `never-${uniqueName('t')}`, { timeoutMs: 50 }), 'ERR_TIMEOUT')
    })
  })

  describe('ERR_ABORTED', () => {
    it('waitForNotification with a signal aborted before the call', async () => {
      await rejectsWith(() => a.waitForNotification(b.name, 'x', { signal: AbortSignal.abort() }), 'ERR_ABORTED')
    })

    it('waitForNotification aborted while waiting; the aborted wait does not swallow a later notification', async () => {
      const message = uniqueName('abort-wait')
      const ac = new AbortController()
      const check = rejectsWith(() => a.waitForNotification(b.name, message, { signal: ac.signal }), 'ERR_ABORTED')
      setTimeout(() => ac.abort(), 20)
      await check
      const waiting = a.waitForNotification(b.name, message, { timeoutMs: 10_000 })
      await b.notify(a.name, message)
      expect((await waiting).message).toBe(message)
    })

    it('post() with a signal aborted before the call; the handle still works afterwards', async () => {
      const xfer = a.prepare(write4k())
      try {
        await rejectsWith(() => xfer.post({ signal: AbortSignal.abort() }), 'ERR_ABORTED')
        expect((await xfer.post()).bytes).toBe(4 * KiB)
      } finally {
        xfer.release()
      }
    })

    it('post() aborted while in flight (64 MiB)', async () => {
      const xfer = a.prepare({ op: 'write', local: aBig, remote: bBig, peer: b.name })
      try {
        const ac = new AbortController()
        const check = rejectsWith(() => xfer.post({ signal: ac.signal }), 'ERR_ABORTED')
        ac.abort() // synchronously after post(): a completion can only arrive on a later turn of the event loop
        await check
      } finally {
        xfer.release()
      }
    })

    it('write(), read(), notify(), register(), loadPeer() and Agent.create() with an aborted signal', async () => {
      const signal = AbortSignal.abort()
      await rejectsWith(() => a.write(ra.slice(0, 4096), rb.slice(0, 4096), b.name, { signal }), 'ERR_ABORTED')
      await rejectsWith(() => a.read(ra.slice(0, 4096), rb.slice(0, 4096), b.name, { signal }), 'ERR_ABORTED')
      await rejectsWith(() => a.notify(b.name, 'x', { signal }), 'ERR_ABORTED')
      await rejectsWith(() => a.register(Buffer.alloc(4096), { signal }), 'ERR_ABORTED')
      await rejectsWith(() => a.loadPeer(b.metadata(), { signal }), 'ERR_ABORTED')
      await rejectsWith(() => Agent.create({ name: uniqueName('aborted'), engine, signal }), 'ERR_ABORTED')
    })

    it('a notifications() iterator whose signal is aborted while it waits', async () => {
      const ac = new AbortController()
      const iter = a.notifications({ signal: ac.signal })
      const check = rejectsWith(() => iter.next(), 'ERR_ABORTED')
      setTimeout(() => ac.abort(), 20)
      await check
    })
  })

  describe('ERR_CLOSED', () => {
    it('every method of a closed agent throws or rejects ERR_CLOSED', async () => {
      const [c, d] = await createAgents(2, 'closed', { engine })
      const rc = await c.allocate(64 * KiB)
      const rd = await d.allocate(64 * KiB)
      await exchangeMetadata(c, d)
      const spec = { op: 'write' as const, local: rc.slice(0, 4096), remote: rd.slice(0, 4096), peer: d.name }
      const xfer = c.prepare(spec)
      await c.close()
      try {
        expect(c.closed).toBe(true)
        await rejectsWith(() => c.register(Buffer.alloc(4096)), 'ERR_CLOSED')
        await rejectsWith(() => c.allocate(4096), 'ERR_CLOSED')
        throwsWith(() => c.metadata(), 'ERR_CLOSED')
        await rejectsWith(() => c.loadPeer(d.metadata()), 'ERR_CLOSED')
        await rejectsWith(() => c.forgetPeer(d.name), 'ERR_CLOSED')
        await rejectsWith(() => c.forgetPeer('nobody'), 'ERR_CLOSED')
        throwsWith(() => c.prepare(spec), 'ERR_CLOSED')
        await rejectsWith(() => c.write(spec.local, spec.remote, d.name), 'ERR_CLOSED')
        await rejectsWith(() => c.read(spec.local, spec.remote, d.name), 'ERR_CLOSED')
        await rejectsWith(() => c.notify(d.name, 'x'), 'ERR_CLOSED')
        await rejectsWith(() => c.waitForNotification(d.name, 'x', { timeoutMs: 2_000 }), 'ERR_CLOSED')
        await rejectsWith(() => xfer.post(), 'ERR_CLOSED')
        // cleanup calls stay harmless
        expect(() => xfer.release()).not.toThrow()
        await within(c.close(), 10_000, 'second close()')
        // stats() is left out on purpose: reading final counters of a closed agent is reasonable either way.
      } finally {
        await closeAll(c, d)
      }
    })

    it('notifications() of a closed agent: the call throws ERR_CLOSED, or its first next() rejects ERR_CLOSED', async () => {
      const [c] = await createAgents(1, 'closed-iter', { engine })
      await c.close()
      let iter: AsyncIterableIterator<unknown> | undefined
      try {
        iter = c.notifications()
      } catch (err) {
        expectKvxferError(err, 'ERR_CLOSED')
      }
      if (iter) {
        const it = iter
        await rejectsWith(() => it.next(), 'ERR_CLOSED')
      }
    })

    it('close() rejects a pending waitForNotification with ERR_CLOSED', async () => {
      const [c, d] = await createAgents(2, 'closing', { engine })
      try {
        await exchangeMetadata(c, d)
        const waiting = rejectsWith(() => c.waitForNotification(d.name, 'never'), 'ERR_CLOSED')
        await Promise.all([waiting, within(c.close(), 10_000, 'close()')])
      } finally {
        await closeAll(c, d)
      }
    })

    it('close() rejects a pending notifications() next() with ERR_CLOSED (API: pending promises reject ERR_CLOSED)', async () => {
      const [c] = await createAgents(1, 'closing-iter', { engine })
      const iter = c.notifications()
      const next = rejectsWith(() => iter.next(), 'ERR_CLOSED')
      await Promise.all([next, within(c.close(), 10_000, 'close()')])
    })
  })

  describe('ERR_BUSY', () => {
    it('deregister() while a prepared (unreleased) transfer references the region; fine after release()', async () => {
      const xfer = a.prepare(write4k({ local: aSpare1.slice(0, 4096) }))
      await rejectsWith(() => aSpare1.deregister(), 'ERR_BUSY')
      expect((await xfer.post()).bytes).toBe(4096) // the region is still registered and usable
      xfer.release()
      await aSpare1.deregister()
    })

    it('deregister() while agent.write() from the region is in flight', async () => {
      const want = sha256(fillBytes(aSpare2.view(), 77))
      const writing = settle(a.write(aSpare2, rb, b.name))
      await rejectsWith(() => aSpare2.deregister(), 'ERR_BUSY')
      const res = await writing
      expect(res.ok).toBe(true)
      expect(sha256(rb.view())).toBe(want)
      await aSpare2.deregister()
    })

    it('a second post() on a handle whose 64 MiB post is still in flight', async () => {
      const xfer = a.prepare({ op: 'write', local: aBig, remote: bBig, peer: b.name })
      try {
        const first = settle(xfer.post())
        // post() just returned a promise: its completion cannot have been delivered yet
        await rejectsWith(() => xfer.post(), 'ERR_BUSY')
        const res = await first
        expect(res.ok && res.value.bytes).toBe(BIG)
        expect((await xfer.post()).bytes, 'the handle is usable again once the post completed').toBe(BIG)
      } finally {
        xfer.release()
      }
    })

    it('release() during a post is deferred: the post still completes with the right bytes', async () => {
      const want = sha256(fillBytes(aBig.view(0, 16 * MiB), 78))
      const xfer = a.prepare({ op: 'write', local: aBig.slice(0, 16 * MiB), remote: bBig.slice(0, 16 * MiB), peer: b.name })
      const posting = xfer.post()
      xfer.release()
      expect((await posting).bytes).toBe(16 * MiB)
      expect(sha256(bBig.view(0, 16 * MiB))).toBe(want)
    })
  })

  describe('the error objects', () => {
    it('carry the caller\'s stack for an asynchronous failure (here: a timeout)', async () => {
      const e = await rejectsWith(() => a.waitForNotification(b.name, uniqueName('never'), { timeoutMs: 20 }), 'ERR_TIMEOUT')
      expect(e.stack).toContain('errors.test')
    })

    it('are Errors with a stable code', () => {
      const e = throwsWith(() => ra.slice(ra.length, 1), 'ERR_OUT_OF_RANGE')
      expect(e).toBeInstanceOf(Error)
      expect(e.stack).toContain('errors.test')
    })
  })
})

describe('engines', () => {
  it.skipIf(info().engines.nixl.available)('engine: "nixl" without NIXL installed rejects with ERR_ENGINE', async () => {
    await rejectsWith(() => Agent.create({ name: uniqueName('nixl'), engine: 'nixl' }), 'ERR_ENGINE')
  })

  it(`engine 'auto' picks NIXL where it loads, else UCX (here: ${NIXL_ABSENT === null ? 'nixl' : 'ucx'})`, async () => {
    const c = await Agent.create({ name: uniqueName('auto'), engine: 'auto' })
    try {
      expect(c.engine).toBe(NIXL_ABSENT === null ? 'nixl' : 'ucx')
    } finally {
      await closeAll(c)
    }
  })

  // Each engine's metadata is its own format: the other engine must refuse it (not crash, not
  // half-load it), and still load its own kind afterwards.
  it.skipIf(NIXL_ABSENT !== null)(`metadata of the other engine is refused with ERR_BAD_METADATA${NIXL_ABSENT === null ? '' : ` [skipped: ${NIXL_ABSENT}]`}`, async () => {
    const [u1, u2] = await createAgents(2, 'cross-ucx', { engine: 'ucx' })
    const [n1, n2] = await createAgents(2, 'cross-nixl', { engine: 'nixl' })
    try {
      await Promise.all([u1, n1].map((x) => x.allocate(64 * KiB)))
      await rejectsWith(() => u2.loadPeer(n1.metadata()), 'ERR_BAD_METADATA')
      await rejectsWith(() => n2.loadPeer(u1.metadata()), 'ERR_BAD_METADATA')
      expect(await u2.loadPeer(u1.metadata())).toBe(u1.name)
      expect(await n2.loadPeer(n1.metadata())).toBe(n1.name)
    } finally {
      await closeAll(u1, u2, n1, n2)
    }
  })
})
