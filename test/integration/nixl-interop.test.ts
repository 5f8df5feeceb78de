// Proves a kvxfer agent on the NIXL engine interoperates with a plain NIXL agent: a small C++
// program on NIXL's own C++ API (test/fixtures/nixl_peer.cpp, compiled here into a temp dir)
// runs in another process; the two exchange metadata and buffer addresses over the child's
// stdin/stdout, then:
//  - kvxfer WRITEs random bytes (scattered descriptors) into the C++ agent's buffer with a
//    notification; the C++ side sees the notification (getNotifs) and hashes its buffer at that
//    moment: the FNV-1a must equal the one computed here over the bytes sent;
//  - kvxfer READs what the C++ side filled;
//  - the C++ side WRITEs its own pattern (createXferReq + postXferReq with a notification) into
//    kvxfer's memory; kvxfer waits for the notification and checks the bytes; it READs too;
//  - a standalone genNotif from C++ reaches kvxfer, and agent.notify reaches C++ (getNotifs).
// Once over the default transports and once with UCX_TLS=tcp in both processes.
// Skipped, with the reason in the title, when NIXL does not load, its headers (nixl.h) or
// libnixl.so are not under its prefix, there is no g++, or the UCX in use has no thread support.
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { existsSync, rmSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DescList, info, type Agent, type Region } from '../../dist/index.js'
import {
  KiB, MiB, NIXL_ABSENT, closeAll, createAgent, fillBytes, invertBytes, range, settle, uniqueName, within,
} from '../fixtures/index.js'
import { LinePeer, compileFixture } from '../fixtures/native-peers.js'

const ARCH_DIR: Record<string, string> = { x64: 'x86_64-linux-gnu', arm64: 'aarch64-linux-gnu' }

interface Toolchain {
  prefix: string
  libDir: string
}

/** Where NIXL's headers and libnixl.so are, or why the C++ peer cannot be built here. */
function findToolchain(): Toolchain | string {
  if (NIXL_ABSENT !== null) return NIXL_ABSENT
  // NIXL_PREFIX if set, else the prefix of the libnixl_capi.so kvxfer loaded (<prefix>/lib/...).
  const path = info().engines.nixl.path ?? ''
  const prefix = process.env.NIXL_PREFIX || (path.includes('/lib/') ? path.slice(0, path.lastIndexOf('/lib/')) : '')
  if (prefix === '') return `NIXL's install prefix is unknown (set NIXL_PREFIX; kvxfer loaded ${path || 'no path'})`
  if (!existsSync(join(prefix, 'include', 'nixl.h'))) return `NIXL's C++ headers are missing (no nixl.h under ${prefix}/include)`
  const libDir = [join(prefix, 'lib', ARCH_DIR[process.arch] ?? ''), join(prefix, 'lib'), path ? dirname(path) : '']
    .find((dir) => dir !== '' && existsSync(join(dir, 'libnixl.so')))
  if (libDir === undefined) return `libnixl.so is missing under ${prefix}/lib`
  try {
    execFileSync('g++', ['--version'], { stdio: 'ignore', timeout: 20_000 })
  } catch {
    return 'no C++ compiler (g++ --version failed)'
  }
  // The C++ peer is a NIXL agent with its progress thread, which needs a UCX built with threads
  // (NIXL's README builds it with contrib/configure-release-mt).
  if (info().engines.ucx.threads === false) {
    return `the UCX in use (${info().engines.ucx.version}) was built without threads, which NIXL's C++ agents need`
  }
  return { prefix, libDir }
}

const toolchain = findToolchain()
const absent = typeof toolchain === 'string' ? toolchain : null
const skipNote = absent === null ? '' : ` [skipped: ${absent}]`

/** FNV-1a, 32 bits, as nixl_peer.cpp computes it. */
function fnv1a(...parts: Uint8Array[]): string {
  let h = 0x811c9dc5
  for (const bytes of parts) {
    for (let i = 0; i < bytes.length; i++) {
      h ^= bytes[i]!
      h = Math.imul(h, 0x01000193) >>> 0
    }
  }
  return h.toString(16).padStart(8, '0')
}

const b64 = (data: string | Uint8Array) => Buffer.from(data).toString('base64')
const unb64 = (text: string) => Buffer.from(text, 'base64').toString('utf8')

let compiled: Promise<string> | undefined

/** Compile test/fixtures/nixl_peer.cpp once per run (bounded), into a temp dir. */
function compilePeer(): Promise<string> {
  const { prefix, libDir } = toolchain as Toolchain
  compiled ??= compileFixture('nixl_peer.cpp', ['-std=c++20', '-O2', `-I${join(prefix, 'include')}`],
    [`-L${libDir}`, '-lnixl', '-lnixl_build', `-Wl,-rpath,${libDir}`])
  return compiled
}

/** The C++ NIXL agent (see nixl_peer.cpp). */
class CppPeer extends LinePeer {
  address = 0n
  length = 0
  metadata = new Uint8Array(0)

  constructor(child: ChildProcessWithoutNullStreams) {
    super(child, 'nixl_peer')
  }

  /** READY <address> <length> <b64 metadata> */
  async start(): Promise<void> {
    const [address, length, metadata] = await this.ready()
    if (metadata === undefined) throw this.failure(`READY without its address, length and metadata`)
    this.address = BigInt(address!)
    this.length = Number(length)
    this.metadata = new Uint8Array(Buffer.from(metadata, 'base64'))
  }
}

const TRANSPORTS = [
  { label: 'default transports', transports: undefined as string | undefined },
  { label: 'tcp', transports: 'tcp' as string | undefined },
]

const CPP_BUFFER = 32 * MiB
const POOL = 32 * MiB
const SIZES = [4 * KiB + 3, 4 * MiB + 1]

describe.skipIf(absent !== null).each(TRANSPORTS)(`kvxfer (NIXL engine) and a NIXL C++ agent, $label${skipNote}`,
  { timeout: 60_000 }, ({ transports }) => {
    let cpp: CppPeer
    let agent: Agent
    let pool: Region // allocate()d
    let buf: Region // a registered Buffer
    let cppName = ''
    let seed = transports === 'tcp' ? 5000 : 1
    const nextSeed = () => ++seed
    const cppDesc = (offset: number, length: number) => ({ address: cpp.address + BigInt(offset), length, device: 0 })

    beforeAll(async () => {
      const binary = await compilePeer()
      const env: NodeJS.ProcessEnv = { ...process.env }
      if (transports !== undefined) env.UCX_TLS = transports
      cpp = new CppPeer(spawn(binary, [uniqueName('cpp'), String(CPP_BUFFER), '240'], { env, stdio: ['pipe', 'pipe', 'pipe'] }))
      await cpp.start()
      expect(cpp.length).toBe(CPP_BUFFER)
      agent = await createAgent('interop', { engine: 'nixl', transports })
      pool = await agent.allocate(POOL)
      buf = await agent.register(Buffer.alloc(MiB))
      // Metadata both ways; regions first (NIXL metadata lists the registered memory).
      cppName = await agent.loadPeer(cpp.metadata)
      const [loaded] = await cpp.send(`LOAD ${b64(agent.metadata({ format: 'nixl' }))}`)
      expect(unb64(loaded!)).toBe(agent.name)
    }, 180_000)

    afterAll(async () => {
      await closeAll(agent)
      if (cpp) await cpp.stop()
    }, 60_000)

    it('the C++ agent is a peer under its own name', () => {
      expect(agent.engine).toBe('nixl')
      expect(cppName).toMatch(/^cpp-/)
    })

    it.each(SIZES)('kvxfer WRITEs %i random bytes (3 scattered descriptors) with a notification; C++ sees them in place', async (size) => {
      const s = nextSeed()
      // local: three pieces of the pool, out of order and unaligned; remote: one contiguous run at an odd offset
      const cuts = [0, Math.floor(size / 3), Math.floor((2 * size) / 3), size]
      const pieces = range(3).map((i) => ({ length: cuts[i + 1]! - cuts[i]!, at: [2 * MiB + 5, 17, 8 * MiB + 1][i]!, to: cuts[i]! }))
      const source = fillBytes(pool.view(0, 12 * MiB), s)
      const want = fnv1a(...pieces.map((p) => source.subarray(p.at, p.at + p.length)))
      const REMOTE_OFF = 1 * MiB + 7
      const poisoned = await cpp.send(`FILL ${s + 1} ${REMOTE_OFF} ${size}`)
      expect(poisoned[0]).not.toBe(want)
      const guard = (await cpp.send(`HASH ${REMOTE_OFF + size} 64`))[0]

      const message = `kv-to-cpp-${s}`
      const waiting = cpp.send(`WAIT ${b64(message)} 15000 ${REMOTE_OFF} ${size}`, 30_000)
      const res = await agent.write(
        DescList.from(pieces.map((p) => pool.slice(p.at, p.length))),
        DescList.from(pieces.map((p) => cppDesc(REMOTE_OFF + p.to, p.length))),
        cppName, { notify: message, timeoutMs: 30_000 })
      expect(res.bytes).toBe(size)
      const [sender, seen] = await waiting
      expect(unb64(sender!), 'the notification names its sender').toBe(agent.name)
      expect(seen, 'the bytes were in place when the notification arrived').toBe(want)
      expect((await cpp.send(`HASH ${REMOTE_OFF} ${size}`))[0]).toBe(want)
      expect((await cpp.send(`HASH ${REMOTE_OFF + size} 64`))[0], 'bytes after the destination changed').toBe(guard)
    })

    it('kvxfer READs what the C++ agent filled', async () => {
      const size = 3 * MiB + 11
      const s = nextSeed()
      const [cppHash] = await cpp.send(`FILL ${s} 13 ${size}`)
      const expected = fillBytes(Buffer.alloc(size), s)
      expect(cppHash, 'the C++ fill is fillBytes()').toBe(fnv1a(expected))
      invertBytes(pool.view(1, size))
      const res = await agent.read(pool.slice(1, size), cppDesc(13, size), cppName, { timeoutMs: 30_000 })
      expect(res.bytes).toBe(size)
      expect(pool.view(1, size).equals(expected)).toBe(true)
    })

    it.each(SIZES)('the C++ agent WRITEs its pattern of %i bytes into kvxfer memory with a notification; kvxfer sees it in place', async (size) => {
      const s = nextSeed()
      const CPP_OFF = 3
      const LOCAL_OFF = 16 * MiB + 9
      const [cppHash] = await cpp.send(`FILL ${s} ${CPP_OFF} ${size}`)
      const expected = fillBytes(Buffer.alloc(size), s)
      expect(cppHash).toBe(fnv1a(expected))
      invertBytes(fillBytes(pool.view(LOCAL_OFF, size), s))
      const after = Buffer.from(pool.view(LOCAL_OFF + size, 64))

      const message = `cpp-to-kv-${s}`
      const waiting = agent.waitForNotification(cppName, message, { timeoutMs: 30_000 })
      const writing = settle(cpp.send(`XFER WRITE ${CPP_OFF} ${pool.address + BigInt(LOCAL_OFF)} ${size} ${b64(message)}`, 40_000))
      const n = await waiting
      const got = Buffer.from(pool.view(LOCAL_OFF, size)) // in the same tick the notification was delivered
      expect(n.peer).toBe(cppName)
      expect(n.message).toBe(message)
      expect(fnv1a(got), 'the bytes were in place when the notification arrived').toBe(cppHash)
      expect(got.equals(expected)).toBe(true)
      expect(pool.view(LOCAL_OFF + size, 64).equals(after), 'bytes after the destination changed').toBe(true)
      expect(await writing).toEqual({ ok: true, value: [] })
    })

    it('the C++ agent READs a registered Buffer of kvxfer', async () => {
      const size = 512 * KiB + 1
      const s = nextSeed()
      const bytes = fillBytes(buf.view(100, size), s)
      await cpp.send(`FILL ${s + 1} ${8 * MiB} ${size}`) // poison the destination
      await cpp.send(`XFER READ ${8 * MiB} ${buf.address + 100n} ${size} -`, 40_000)
      expect((await cpp.send(`HASH ${8 * MiB} ${size}`))[0]).toBe(fnv1a(bytes))
    })

    it('a genNotif from the C++ agent reaches kvxfer (text and binary)', async () => {
      const text = `gen-notif-${nextSeed()} ✓`
      const binary = new Uint8Array(300).map((_, i) => (i * 37 + seed) & 0xff)
      for (const message of [text, binary]) {
        const waiting = agent.waitForNotification(cppName, message, { timeoutMs: 15_000 })
        await cpp.send(`NOTIFY ${b64(message)}`)
        const n = await waiting
        expect(n.peer).toBe(cppName)
        expect(Buffer.from(n.data).equals(Buffer.from(message))).toBe(true)
      }
    })

    it('20 genNotifs from the C++ agent arrive at kvxfer in order', async () => {
      const prefix = `order-${nextSeed()}-`
      const iter = agent.notifications()
      try {
        for (let i = 0; i < 20; i++) await cpp.send(`NOTIFY ${b64(`${prefix}${i}`)}`)
        const got: string[] = []
        while (got.length < 20) {
          const step = await within(iter.next(), 15_000, `notification ${got.length}`)
          expect(step.done).toBe(false)
          if (step.value!.message.startsWith(prefix)) got.push(step.value!.message)
        }
        expect(got).toEqual(range(20).map((i) => `${prefix}${i}`))
      } finally {
        await iter.return?.()
      }
    })

    it('agent.notify from kvxfer reaches the C++ agent (getNotifs)', async () => {
      const message = `notify-cpp-${nextSeed()}`
      const waiting = cpp.send(`WAIT ${b64(message)} 15000`, 30_000)
      await agent.notify(cppName, message, { timeoutMs: 15_000 })
      const [sender] = await waiting
      expect(unb64(sender!)).toBe(agent.name)
    })
  })

afterAll(async () => {
  const built = compiled === undefined ? undefined : await settle(compiled)
  if (built?.ok) rmSync(dirname(built.value), { recursive: true, force: true })
})
