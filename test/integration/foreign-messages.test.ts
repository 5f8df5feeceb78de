// Tagged messages from a UCX peer that is not kvxfer. A kvxfer agent on the UCX engine takes its
// messages between agents (notifications, revocations, pushed metadata) as UCX tagged messages
// (native/ucx/ucx_control.h). Anyone holding the agent's metadata can connect to its worker and
// send it tagged messages of any tag and any bytes: test/fixtures/ucx_raw_peer.cpp, a plain UCX
// program in another process, does so here.
//  - A flood under tags kvxfer never sends must not stay queued in UCX (which keeps an unprobed
//    tagged message for good): the agent's memory stays flat while ~125 MiB arrive.
//  - Frames under kvxfer's own tags that are malformed, too long, or that claim a loaded peer's
//    name with another incarnation are dropped: none reaches notifications(), none changes
//    what the agent knows of that peer.
//  - The raw peer killed in the middle of a message leaves the agent working (tcp) and closing.
// After each, the agent still moves bytes with an honest peer (hashed at the other end).
// Once over the default transports (shared memory) and once with UCX_TLS=tcp in both processes.
// Skipped, with the reason in the title, where there is no g++ or no pkg-config entry for UCX.
import { execFileSync, spawn } from 'node:child_process'
import { rmSync } from 'node:fs'
import { dirname } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Agent, Notification, PeerEvent, Region } from '../../dist/index.js'
import { KiB, MiB, closeAll, createAgent, fillBytes, settle, sha256, within } from '../fixtures/index.js'
import { LinePeer, compileFixture } from '../fixtures/native-peers.js'
import { ucxMetadataFields } from '../fixtures/ucx-metadata.js'

/** The compiler flags for UCX, or why the raw peer cannot be built here. */
function findUcxFlags(): { cflags: string[]; libs: string[] } | string {
  try {
    execFileSync('g++', ['--version'], { stdio: 'ignore', timeout: 20_000 })
  } catch {
    return 'no C++ compiler (g++ --version failed)'
  }
  try {
    const words = (args: string[]) => execFileSync('pkg-config', args, { encoding: 'utf8', timeout: 20_000 }).trim().split(/\s+/).filter(Boolean)
    return { cflags: words(['--cflags', 'ucx']), libs: words(['--libs', 'ucx']) }
  } catch {
    return "no UCX development files (pkg-config --cflags --libs ucx failed; Debian's libucx-dev has them)"
  }
}

const flags = findUcxFlags()
const absent = typeof flags === 'string' ? flags : null
const skipNote = absent === null ? '' : ` [skipped: ${absent}]`

let compiled: Promise<string> | undefined
function compileRawPeer(): Promise<string> {
  const { cflags, libs } = flags as { cflags: string[]; libs: string[] }
  compiled ??= compileFixture('ucx_raw_peer.cpp', ['-std=c++17', '-O2', ...cflags], libs)
  return compiled
}

// The wire format (README "Formats"; native/ucx/ucx_control.h).
const CONTROL_TAG = 0x4b56584600000000n
const NOTIFICATION = 1
const REVOCATION = 2
const METADATA = 3
const FRAME_VERSION = 2
const MAX_NOTIFICATION = 16 * KiB
const RAW_NAME = 'raw-peer'

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex')
const tagHex = (tag: bigint) => tag.toString(16)
const controlTag = (kind: number) => CONTROL_TAG | BigInt(kind)

/** A control frame: u8 version, u64 incarnation, u16 name length, name, payload. */
function frame(payload: Uint8Array | string, opts: { name?: string | Buffer; nameLength?: number; version?: number; incarnation?: bigint } = {}): Buffer {
  const name = Buffer.from(opts.name ?? RAW_NAME)
  const head = Buffer.alloc(11)
  head.writeUInt8(opts.version ?? FRAME_VERSION, 0)
  head.writeBigUInt64LE(opts.incarnation ?? 0n, 1)
  head.writeUInt16LE(opts.nameLength ?? name.length, 9)
  return Buffer.concat([head, name, Buffer.from(payload)])
}

/** A revocation (`KVRV`) of these regions of a peer's incarnation. */
function revocation(incarnation: bigint, regions: Array<{ address: bigint; length: number }>): Buffer {
  const head = Buffer.alloc(24)
  head.write('KVRV', 0, 'latin1')
  head.writeUInt16LE(1, 4)
  head.writeBigUInt64LE(incarnation, 8)
  head.writeUInt32LE(regions.length, 16)
  const entries = regions.map((r) => {
    const e = Buffer.alloc(24)
    e.writeBigUInt64LE(r.address, 0)
    e.writeBigUInt64LE(BigInt(r.length), 8)
    return e
  })
  return Buffer.concat([head, ...entries])
}

const TRANSPORTS = [
  { label: 'default transports', transports: undefined as string | undefined },
  { label: 'tcp', transports: 'tcp' as string | undefined },
]

describe.skipIf(absent !== null).each(TRANSPORTS)(`ucx engine: tagged messages from a UCX peer that is not kvxfer, $label${skipNote}`,
  { timeout: 120_000 }, ({ transports }) => {
    let target: Agent // what the raw peer sends to
    let honest: Agent // a kvxfer peer the target has loaded
    let targetRegion: Region
    let honestRegion: Region
    let raw: LinePeer
    let seed = transports === 'tcp' ? 9000 : 1

    beforeAll(async () => {
      const binary = await compileRawPeer()
      target = await createAgent('foreign-target', { engine: 'ucx', transports })
      honest = await createAgent('foreign-honest', { engine: 'ucx', transports })
      targetRegion = await target.allocate(MiB)
      honestRegion = await honest.register(Buffer.alloc(MiB))
      await target.loadPeer(honest.metadata())
      await honest.loadPeer(target.metadata())
      const env: NodeJS.ProcessEnv = { ...process.env }
      if (transports !== undefined) env.UCX_TLS = transports
      const address = ucxMetadataFields(target.metadata()).workerAddress
      raw = new LinePeer(spawn(binary, [hex(address)], { env, stdio: ['pipe', 'pipe', 'pipe'] }), 'ucx_raw_peer')
      await raw.ready()
    }, 180_000)

    afterAll(async () => {
      if (raw) await raw.stop()
      await closeAll(target, honest)
    }, 60_000)

    /** Both ways between target and honest: random bytes written with a notification, then read back, hashed. */
    async function honestPeerStillWorks(): Promise<void> {
      const s = ++seed
      const sent = sha256(fillBytes(honestRegion.view(), s))
      fillBytes(targetRegion.view(), s + 1)
      const message = `honest-${s}`
      const arrived = target.waitForNotification(honest.name, message, { timeoutMs: 20_000 })
      await honest.write(honestRegion, targetRegion, target.name, { notify: message, timeoutMs: 20_000 })
      await arrived
      expect(sha256(targetRegion.view()), 'the bytes the honest peer wrote are in place').toBe(sent)
      fillBytes(targetRegion.view(), s + 2)
      await target.write(targetRegion, honestRegion, honest.name, { timeoutMs: 20_000 })
      expect(sha256(honestRegion.view()), 'the target still writes into the honest peer').toBe(sha256(targetRegion.view()))
    }

    /** A well-formed notification from the raw peer, which every message it sent before precedes (UCX keeps a sender's order). */
    async function sendMarker(message: string): Promise<void> {
      await raw.send(`SEND ${tagHex(controlTag(NOTIFICATION))} ${hex(frame(message))}`)
    }

    it('a flood under tags kvxfer never sends is taken and dropped: memory stays flat, the agent works on', async () => {
      // Warm-up: UCX's receive pools and V8's heap grow to their working size first.
      await raw.send(`FLOOD ${tagHex(0x100000002n)} 256 ${16 * KiB}`)
      await sendMarker('warm')
      await target.waitForNotification(RAW_NAME, 'warm', { timeoutMs: 20_000 })
      const before = process.memoryUsage().rss

      const floods = [
        { tag: 0x100000002n, count: 6000 }, // nothing to do with kvxfer
        { tag: controlTag(0xff), count: 1000 }, // kvxfer's prefix, a kind it does not have
        { tag: CONTROL_TAG | 0x10001n, count: 1000 }, // kvxfer's prefix, the zero bytes not zero
      ]
      let total = 0
      for (const { tag, count } of floods) {
        const [sent] = await raw.send(`FLOOD ${tagHex(tag)} ${count} ${16 * KiB}`, 60_000)
        expect(Number(sent)).toBe(count)
        total += count * 16 * KiB
      }
      await sendMarker('after-flood')
      await target.waitForNotification(RAW_NAME, 'after-flood', { timeoutMs: 30_000 })
      const grown = process.memoryUsage().rss - before
      console.log(`foreign flood, ${transports ?? 'default transports'}: RSS ${grown >= 0 ? '+' : ''}${(grown / MiB).toFixed(1)} MiB while ${(total / MiB).toFixed(0)} MiB arrived`)
      // Messages left queued would hold all of it (~125 MiB); taken and dropped, nothing stays.
      expect(grown, `RSS grew ${(grown / MiB).toFixed(1)} MiB while ${(total / MiB).toFixed(0)} MiB of foreign messages arrived`)
        .toBeLessThan(total / 4)
      await honestPeerStillWorks()
    })

    it('malformed frames under kvxfer tags, and ones claiming a loaded peer with another incarnation, are dropped', async () => {
      const { name: honestName, incarnation } = ucxMetadataFields(honest.metadata())
      const wrongIncarnation = incarnation ^ 1n
      const cases: Array<[string, number, Buffer]> = [
        ['frame version 1', NOTIFICATION, frame('bad-1', { version: 1 })],
        ['frame version 3', NOTIFICATION, frame('bad-2', { version: 3 })],
        ['empty name', NOTIFICATION, frame('bad-3', { name: '', nameLength: 0 })],
        ['name past the end', NOTIFICATION, frame('', { name: 'short', nameLength: 50 })],
        ['name of 256 bytes', NOTIFICATION, frame('bad-4', { name: 'n'.repeat(256) })],
        ['name with a NUL', NOTIFICATION, frame('bad-5', { name: Buffer.from('raw\0peer') })],
        ['no bytes at all', NOTIFICATION, Buffer.alloc(0)],
        ['a truncated header', NOTIFICATION, Buffer.from([FRAME_VERSION, 1, 2, 3, 4])],
        ['a message of 16 KiB + 1', NOTIFICATION, frame(Buffer.alloc(MAX_NOTIFICATION + 1, 0x61))],
        ['a frame longer than any notification may be', NOTIFICATION, frame(Buffer.alloc(64 * KiB, 0x62))],
        ['a revocation of nonsense', REVOCATION, frame('not a revocation')],
        ['a revocation of the honest peer\'s region under another incarnation', REVOCATION,
          frame(revocation(wrongIncarnation, [honestRegion]), { name: honestName, incarnation: wrongIncarnation })],
        ['a revocation whose count runs past its bytes', REVOCATION,
          frame(revocation(incarnation, [honestRegion]).subarray(0, 30), { name: honestName, incarnation: wrongIncarnation })],
        ['metadata of nonsense', METADATA, frame(Buffer.alloc(4 * KiB, 0x63))],
        ['the honest peer\'s metadata under another incarnation', METADATA,
          frame(honest.metadata(), { name: honestName, incarnation: wrongIncarnation })],
        ['our own metadata pushed in the honest peer\'s name', METADATA,
          frame(target.metadata(), { name: honestName, incarnation })],
      ]
      const peerEvents: PeerEvent[] = []
      const onPeer = (e: PeerEvent) => peerEvents.push(e)
      target.on('peer', onPeer)
      for (const [what, kind, bytes] of cases) {
        await raw.send(`SEND ${tagHex(controlTag(kind))} ${hex(bytes)}`).catch((e: unknown) => {
          throw new Error(`sending ${what}: ${(e as Error).message}`)
        })
      }
      await sendMarker('after-malformed')

      // Whatever the target delivers, from any sender name: the marker must be the first.
      const controller = new AbortController()
      const notifications = target.notifications({ signal: controller.signal })
      const first = await within(notifications.next(), 30_000, 'the marker notification')
      controller.abort()
      if (notifications.return) await settle(notifications.return())
      expect(first.done).toBe(false)
      target.off('peer', onPeer)
      const { peer, message } = first.value as Notification
      expect({ peer, message }, 'no malformed frame was delivered').toEqual({ peer: RAW_NAME, message: 'after-malformed' })
      // The honest peer as the target knows it is untouched: no update, replacement or conflict,
      // its region not revoked (the target still writes into it) and its metadata not replaced
      // by ours (the bytes land in the honest peer, not back in the target).
      expect(peerEvents).toEqual([])
      await honestPeerStillWorks()
    })

    // Last: it kills the raw peer, and closes the target. The raw peer's messages of 4 MiB under
    // kvxfer's metadata tag are ones the target takes into a buffer of their own, by UCX's
    // rendezvous (the raw peer keeps UCX's thresholds); killed a few of them in, the one it was
    // sending is never finished. UCX 1.13 aborted the process destroying a worker that held
    // such a receive (ucp_ep.c:437), in 2 of 3 runs of this file; the target must close.
    // Over shared memory a sender killed while it writes into the target's receive queue can
    // stop that queue for good (README "Peers and failures"; 3 of 5 runs here), and the target
    // then reaches no shared-memory peer: there only the close is checked.
    const sharedMemory = transports === undefined
    it(`the raw peer SIGKILLed in the middle of a stream of 4 MiB messages: the target ${sharedMemory ? 'closes [only that: a killed writer can stop the shared-memory receive queue]' : 'goes on and closes'}`, async () => {
      raw.child.stdin.write(`FLOOD ${tagHex(controlTag(METADATA))} 1000 ${4 * MiB}\n`)
      await new Promise((resolve) => setTimeout(resolve, 50))
      expect(raw.alive, 'still sending when killed').toBe(true)
      raw.child.kill('SIGKILL')
      await within(raw.exited, 10_000, 'the raw peer exiting')
      if (!sharedMemory) await honestPeerStillWorks()
      await within(target.close(), 30_000, 'closing the target')
      expect(target.closed).toBe(true)
    })
  })

afterAll(async () => {
  const built = compiled === undefined ? undefined : await settle(compiled)
  if (built?.ok) rmSync(dirname(built.value), { recursive: true, force: true })
})
