// Parent side of the child processes tests use:
//  - spawnPeer(): a forked test/fixtures/peer.mjs, a kvxfer agent in another process,
//    driven by typed async methods;
//  - startFixture()/runFixture(): one-shot scripts in test/fixtures (GC, process exit,
//    worker_threads) whose exit code and output a test checks.
// Every child is tracked; call killAllChildren() (or disposeAllPeers()) in afterEach/afterAll
// so no test leaves a process behind.
import { fork, spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { Agent } from '../../dist/index.js'
import { createRpcClient } from '../fixtures/rpc.mjs'
import { within } from './common.js'

export const FIXTURES_DIR = fileURLToPath(new URL('../fixtures/', import.meta.url))
export const fixturePath = (name: string): string => fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url))

const OUTPUT_TAIL = 16 * 1024

export interface ExitInfo {
  code: number | null
  signal: NodeJS.Signals | null
}

const children = new Set<ChildProcess>()

function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null
}

function track(child: ChildProcess): Promise<ExitInfo> {
  children.add(child)
  return new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      children.delete(child)
      resolve({ code, signal })
    })
  })
}

async function killChild(child: ChildProcess, exited: Promise<ExitInfo>, signal: NodeJS.Signals = 'SIGKILL'): Promise<ExitInfo> {
  if (!hasExited(child)) child.kill(signal)
  return within(exited, 10_000, `child ${child.pid} exiting after ${signal}`)
}

const exitPromises = new WeakMap<ChildProcess, Promise<ExitInfo>>()

/** SIGKILL every child process any helper started and wait until they are gone. */
export async function killAllChildren(): Promise<void> {
  await Promise.all([...children].map((c) => killChild(c, exitPromises.get(c) ?? Promise.resolve({ code: null, signal: null }))))
}

function collectOutput(child: ChildProcess): () => string {
  let tail = ''
  const add = (chunk: Buffer) => {
    tail = (tail + chunk.toString('utf8')).slice(-OUTPUT_TAIL)
  }
  child.stdout?.on('data', add)
  child.stderr?.on('data', add)
  return () => tail
}

// ---------------------------------------------------------------------------------------------
// Peers

export interface SpawnPeerOptions {
  /** Agent name; default a unique 'peer-…' name. */
  name?: string
  /**
   * UCX transports for the peer's agent: exported as UCX_TLS in the child (which is what NIXL's
   * UCX backend follows) and, for the UCX engine, also passed as Agent.create's `transports`.
   */
  transports?: string
  /** The peer agent's engine; default the library's 'auto'. spawnPeer checks the agent really runs on it. */
  engine?: 'auto' | 'ucx' | 'nixl'
  env?: NodeJS.ProcessEnv
  /** Create the agent right away (default true). */
  create?: boolean
}

/** A region inside a peer: `id` names it in commands; address/length let this side build descriptors. */
export interface PeerRegion {
  id: number
  address: bigint
  length: number
  kind: string
  device: number
}

/** [offset, length] inside a region. */
export type Slice = readonly [number, number]
/** Remote descriptors for a peer-initiated transfer: an encoded DescList or plain descriptors. */
export type RemoteSpec = Uint8Array | ReadonlyArray<{ address: bigint; length: number; device?: number }>

export interface PeerNotification {
  peer: string
  message: string
  data: Uint8Array
  hash?: string
}

export interface TransferResult {
  bytes: number
  durationNs: number
  /** NIXL engine only. */
  telemetry?: { postUs: number; transferUs: number; bytes: number; descriptors: number }
}

let peerCounter = 0
const livePeers = new Set<Peer>()

export class Peer {
  name = ''
  engine = ''
  readonly exited: Promise<ExitInfo>
  private readonly rpc: ReturnType<typeof createRpcClient>
  private readonly output: () => string

  constructor(readonly child: ChildProcess, readonly label: string) {
    this.exited = track(child)
    exitPromises.set(child, this.exited)
    this.output = collectOutput(child)
    this.rpc = createRpcClient((msg: unknown) => {
      child.send(msg as never)
    }, label)
    child.on('message', (msg) => this.rpc.handle(msg))
    child.on('error', () => {})
    void this.exited.then(({ code, signal }) => this.rpc.gone(`code ${code}, signal ${signal}; output: ${this.output().slice(-2000)}`))
  }

  get pid(): number {
    return this.child.pid ?? -1
  }

  get alive(): boolean {
    return !hasExited(this.child)
  }

  /** stdout+stderr tail of the child, for diagnostics. */
  get outputTail(): string {
    return this.output()
  }

  call<T = unknown>(cmd: string, args: object = {}, timeoutMs = 60_000): Promise<T> {
    return this.rpc.call(cmd, args, timeoutMs) as Promise<T>
  }

  async create(opts: { name?: string; transports?: string; engine?: string } = {}): Promise<{ name: string; engine: string }> {
    const r = await this.call<{ name: string; engine: string }>('create', opts)
    this.name = r.name
    this.engine = r.engine
    return r
  }

  allocate(size: number): Promise<PeerRegion> {
    return this.call('allocate', { size })
  }

  register(size: number, kind: 'Buffer' | 'Uint8Array' | 'ArrayBuffer' | 'SharedArrayBuffer' | 'DataView' = 'Buffer'): Promise<PeerRegion> {
    return this.call('register', { size, kind })
  }

  /** Fill a range with fillBytes(seed); returns the sha256 of the new bytes. */
  fill(region: PeerRegion, seed: number, offset = 0, length = region.length - offset): Promise<string> {
    return this.call('fill', { region: region.id, seed, offset, length })
  }

  /** Fill a range with the bitwise inverse of fillBytes(seed): differs from that source at every byte. */
  poison(region: PeerRegion, seed: number, offset = 0, length = region.length - offset): Promise<string> {
    return this.call('fill', { region: region.id, seed, offset, length, invert: true })
  }

  hash(region: PeerRegion, offset = 0, length = region.length - offset): Promise<string> {
    return this.call('hash', { region: region.id, offset, length })
  }

  hashSlices(region: PeerRegion, slices: readonly Slice[]): Promise<string> {
    return this.call('hashSlices', { region: region.id, slices })
  }

  /** DescList of slices of the peer's region, encoded by the peer (DescList#encode). */
  encodeDescs(region: PeerRegion, slices: readonly Slice[]): Promise<Uint8Array> {
    return this.call('encodeDescs', { region: region.id, slices })
  }

  metadata(): Promise<Uint8Array> {
    return this.call('metadata')
  }

  loadPeer(blob: Uint8Array): Promise<string> {
    return this.call('loadPeer', { blob })
  }

  forgetPeer(name: string): Promise<boolean> {
    return this.call('forgetPeer', { name })
  }

  /** The peer runs agent.write/read from slices of its region to `remote` on agent `peer`. */
  transfer(op: 'write' | 'read', region: PeerRegion, slices: readonly Slice[], remote: RemoteSpec, peer: string,
    opts: { notify?: string | Uint8Array; timeoutMs?: number } = {}): Promise<TransferResult> {
    return this.call('transfer', { op, region: region.id, slices, remote, peer, ...opts })
  }

  notify(peer: string, message: string | Uint8Array): Promise<boolean> {
    return this.call('notify', { peer, message })
  }

  /** `${prefix}0` … `${prefix}${count-1}`, each awaited before the next. */
  notifyMany(peer: string, prefix: string, count: number): Promise<number> {
    return this.call('notifyMany', { peer, prefix, count })
  }

  waitForNotification(peer: string, message: string | Uint8Array, timeoutMs?: number): Promise<PeerNotification> {
    return this.call('waitForNotification', { peer, message, timeoutMs })
  }

  /**
   * Start a command in the peer and return once it is running (e.g. a waitForNotification is
   * registered); `finish()` resolves with its result.
   */
  async start<T = unknown>(cmd: string, args: object): Promise<{ finish: (timeoutMs?: number) => Promise<T> }> {
    const token = await this.call<number>('start', { cmd, args })
    return { finish: (timeoutMs = 60_000) => this.call<T>('finish', { token }, timeoutMs) }
  }

  /** Armed waitForNotification that hashes [offset, offset+length) of `region` the moment it arrives. */
  armWaitThenHash(peer: string, message: string | Uint8Array, region: PeerRegion, offset: number, length: number, timeoutMs = 30_000) {
    return this.start<{ message: string; peer: string; hash: string }>('waitThenHash',
      { peer, message, region: region.id, offset, length, timeoutMs })
  }

  /** Armed collector of `count` notifications starting with `prefix`, in arrival order. */
  armCollect(prefix: string, count: number, opts: { timeoutMs?: number; hashes?: Record<string, { region: number; offset: number; length: number }> } = {}) {
    return this.start<PeerNotification[]>('collect', { prefix, count, ...opts })
  }

  stats(): Promise<Record<string, unknown>> {
    return this.call('stats')
  }

  close(): Promise<boolean> {
    return this.call('close')
  }

  /** Send a signal and wait until the process is gone. */
  kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<ExitInfo> {
    return killChild(this.child, this.exited, signal)
  }

  /** Kill the child (no graceful close: a test's own agent must cope with a vanished peer). */
  async dispose(): Promise<void> {
    livePeers.delete(this)
    await this.kill('SIGKILL')
  }
}

/** Fork test/fixtures/peer.mjs and (by default) create its agent. */
export async function spawnPeer(opts: SpawnPeerOptions = {}): Promise<Peer> {
  const env: NodeJS.ProcessEnv = { ...process.env, ...opts.env }
  if (opts.transports !== undefined) env.UCX_TLS = opts.transports
  const child = fork(fixturePath('peer.mjs'), [], {
    env,
    execArgv: [],
    serialization: 'advanced',
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  })
  const peer = new Peer(child, `peer#${++peerCounter} (pid ${child.pid})`)
  livePeers.add(peer)
  if (opts.create !== false) {
    try {
      // `transports` is a UCX-engine option; a NIXL peer gets its transports from UCX_TLS alone.
      await peer.create({
        name: opts.name ?? `peer-${process.pid}-${peerCounter}`,
        ...(opts.transports !== undefined && opts.engine !== 'nixl' ? { transports: opts.transports } : {}),
        ...(opts.engine !== undefined ? { engine: opts.engine } : {}),
      })
    } catch (err) {
      await peer.dispose()
      throw new Error(`spawnPeer: create failed: ${(err as Error).message}\n${peer.outputTail}`)
    }
    if (opts.engine !== undefined && opts.engine !== 'auto' && peer.engine !== opts.engine) {
      await peer.dispose()
      throw new Error(`spawnPeer: asked for engine ${opts.engine}, the peer's agent runs on ${peer.engine}`)
    }
  }
  return peer
}

/** Kill every peer still running; use in afterEach/afterAll. */
export async function disposeAllPeers(): Promise<void> {
  await Promise.all([...livePeers].map((p) => p.dispose()))
  await killAllChildren()
}

/**
 * Exchange metadata between an agent in this process and a peer, both ways.
 * Call it after both sides registered every region the other will address.
 * Resolves with the peer's agent name as this agent knows it.
 */
export async function connect(agent: Agent, peer: Peer): Promise<string> {
  const name = await agent.loadPeer(await peer.metadata())
  if (name !== peer.name) throw new Error(`loadPeer returned ${name}, the peer's agent is ${peer.name}`)
  const back = await peer.loadPeer(agent.metadata())
  if (back !== agent.name) throw new Error(`peer's loadPeer returned ${back}, the agent is ${agent.name}`)
  return name
}

/** Exchange metadata between two peers, both ways. */
export async function connectPeers(p: Peer, q: Peer): Promise<void> {
  await p.loadPeer(await q.metadata())
  await q.loadPeer(await p.metadata())
}

// ---------------------------------------------------------------------------------------------
// One-shot fixture scripts

export interface FixtureOptions {
  execArgv?: string[]
  env?: NodeJS.ProcessEnv
}

export interface FixtureRun extends ExitInfo {
  stdout: string
  stderr: string
  /** Parsed `RESULT <json>` lines, in order. */
  results: unknown[]
}

/** A running fixture script: stdout lines as they come, and its exit. */
export class FixtureProcess {
  readonly exited: Promise<ExitInfo>
  stdout = ''
  stderr = ''
  private waiters: Array<() => void> = []

  constructor(readonly child: ChildProcess) {
    this.exited = track(child)
    exitPromises.set(child, this.exited)
    child.stdout?.on('data', (d: Buffer) => {
      this.stdout += d.toString('utf8')
      this.wake()
    })
    child.stderr?.on('data', (d: Buffer) => {
      this.stderr = (this.stderr + d.toString('utf8')).slice(-OUTPUT_TAIL)
    })
    void this.exited.then(() => this.wake())
  }

  private wake() {
    const w = this.waiters
    this.waiters = []
    for (const f of w) f()
  }

  get alive(): boolean {
    return !hasExited(this.child)
  }

  get lines(): string[] {
    return this.stdout.split('\n').filter((l) => l.length > 0)
  }

  /** The first stdout line starting with `prefix` (resolves early if it was already printed). */
  async waitForLine(prefix: string, timeoutMs = 30_000): Promise<string> {
    const find = () => this.lines.find((l) => l.startsWith(prefix))
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const line = find()
      if (line !== undefined) return line
      if (hasExited(this.child)) {
        throw new Error(`fixture exited before printing ${prefix}\nstdout: ${this.stdout}\nstderr: ${this.stderr}`)
      }
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`fixture did not print ${prefix} within ${timeoutMs} ms\nstdout: ${this.stdout}\nstderr: ${this.stderr}`)
      await within(new Promise<void>((r) => this.waiters.push(r)), left, `waiting for ${prefix}`).catch(() => {})
    }
  }

  /** Wait for the exit, or SIGKILL it after `timeoutMs` and throw with its output. */
  async finish(timeoutMs: number): Promise<FixtureRun> {
    let exit: ExitInfo
    try {
      exit = await within(this.exited, timeoutMs, 'fixture process')
    } catch {
      await killChild(this.child, this.exited)
      throw new Error(`fixture did not exit within ${timeoutMs} ms (killed)\nstdout: ${this.stdout}\nstderr: ${this.stderr}`)
    }
    const results = this.lines.filter((l) => l.startsWith('RESULT ')).map((l) => JSON.parse(l.slice(7)) as unknown)
    return { ...exit, stdout: this.stdout, stderr: this.stderr, results }
  }

  kill(): Promise<ExitInfo> {
    return killChild(this.child, this.exited)
  }
}

/** Start `node [execArgv] test/fixtures/<script> ...args` with no stdin and no IPC channel. */
export function startFixture(script: string, args: string[] = [], opts: FixtureOptions = {}): FixtureProcess {
  const child = spawn(process.execPath, [...(opts.execArgv ?? []), fixturePath(script), ...args], {
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  return new FixtureProcess(child)
}

/** Run a fixture script to completion (bounded by `timeoutMs`). */
export function runFixture(script: string, args: string[] = [], opts: FixtureOptions & { timeoutMs?: number } = {}): Promise<FixtureRun> {
  return startFixture(script, args, opts).finish(opts.timeoutMs ?? 60_000)
}

/** Format a fixture run for an assertion message. */
export function explain(run: { code: number | null; signal: string | null; stdout: string; stderr: string }): string {
  return `exit code ${run.code}, signal ${run.signal}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`
}
