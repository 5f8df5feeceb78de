// Shared test helpers: sizes, names, error assertions, bounded waits and in-process agent pairs.
// Everything that talks to another process lives in ./peer.ts.
import { inspect } from 'node:util'
import { describe, expect, it } from 'vitest'
import { Agent, KvxferError, info, type AgentOptions } from '../../dist/index.js'

export { asBuffer, fillBytes, randomBytesFor, sha256, sha256Slices } from '../fixtures/bytes.mjs'

export const KiB = 1024
export const MiB = 1024 * KiB
export const GiB = 1024 * MiB

let nameCounter = 0
/** An agent name no other live agent in this run uses. */
export function uniqueName(prefix: string): string {
  return `${prefix}-${process.pid}-${++nameCounter}`
}

export const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i)

/** A plain descriptor over [offset, offset+length) of something with an address (a Region or a peer's region). */
export function rdesc(region: { address: bigint }, offset: number, length: number) {
  return { address: region.address + BigInt(offset), length, device: 0 }
}

/** Flip every byte in place: a destination "poisoned" this way differs from the source at every byte. */
export function invertBytes(buf: Uint8Array): Uint8Array {
  for (let i = 0; i < buf.length; i++) buf[i] = ~buf[i] & 0xff
  return buf
}

/** Thrown by within() when a promise did not settle in time. */
export class NotSettled extends Error {
  override name = 'NotSettled'
}

/** Resolve/reject like `promise`, or reject with NotSettled after `ms`. */
export async function within<T>(promise: PromiseLike<T>, ms: number, what = 'operation'): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new NotSettled(`${what} did not settle within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

export type Settled<T> = { ok: true; value: T } | { ok: false; error: unknown }

/** Never rejects; attach at once so a later rejection is never "unhandled". */
export function settle<T>(promise: PromiseLike<T>): Promise<Settled<T>> {
  return Promise.resolve(promise).then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  )
}

function show(err: unknown): string {
  if (err instanceof Error) return `${err.name}${(err as { code?: string }).code ? ` ${(err as { code?: string }).code}` : ''}: ${err.message}`
  return String(err)
}

/** Assert `err` is a KvxferError with this code, and return it typed. */
export function expectKvxferError(err: unknown, code: string): KvxferError {
  expect(err, `expected KvxferError ${code}, got ${show(err)}`).toBeInstanceOf(KvxferError)
  expect(err, 'a KvxferError is an Error').toBeInstanceOf(Error)
  const e = err as KvxferError
  expect(e.code, `wrong code for: ${e.message}`).toBe(code)
  expect(typeof e.message).toBe('string')
  expect(e.message.length).toBeGreaterThan(0)
  return e
}

/** `fn` must throw synchronously a KvxferError with `code` (synchronous APIs: prepare, slice, view, metadata, DescList). */
export function throwsWith(fn: () => unknown, code: string): KvxferError {
  let returned: unknown
  try {
    returned = fn()
  } catch (err) {
    return expectKvxferError(err, code)
  }
  throw new Error(`expected a thrown KvxferError ${code}, but the call returned ${show(returned)}`)
}

/**
 * `fn` must return a promise (not throw synchronously: it is a promise API) that rejects
 * with a KvxferError with `code` within `boundMs`.
 */
export async function rejectsWith(fn: () => unknown, code: string, boundMs = 15_000): Promise<KvxferError> {
  let result: unknown
  try {
    result = fn()
  } catch (err) {
    throw new Error(`expected a promise rejecting with ${code}, but the call threw synchronously: ${show(err)}`)
  }
  if (!result || typeof (result as PromiseLike<unknown>).then !== 'function') {
    throw new Error(`expected a promise rejecting with ${code}, but the call returned ${show(result)}`)
  }
  const outcome = await within(settle(result as PromiseLike<unknown>), boundMs, `promise expected to reject with ${code}`)
  if (outcome.ok) throw new Error(`expected a rejection with ${code}, but the promise resolved with ${show(outcome.value)}`)
  return expectKvxferError(outcome.error, code)
}

/** Both agents load each other's metadata. Call it after registering every region the other side will use. */
export async function exchangeMetadata(a: Agent, b: Agent): Promise<void> {
  expect(await a.loadPeer(b.metadata())).toBe(b.name)
  expect(await b.loadPeer(a.metadata())).toBe(a.name)
}

// ---------------------------------------------------------------------------------------------
// Engines

export type EngineName = 'ucx' | 'nixl'

const nixlInfo = info().engines.nixl
/** Why the NIXL variants cannot run here (the first line of info().engines.nixl.reason), or null when NIXL loads. */
export const NIXL_ABSENT: string | null = nixlInfo.available
  ? null
  : `NIXL engine unavailable: ${(nixlInfo.reason ?? 'no reason given').split('\n')[0]!.replace(/[;:,]?\s*tried:?\s*$/, '').trim()}`
/** The engines engine-parameterized suites run on: UCX always, NIXL where it loads (NIXL_PREFIX=/opt/nixl …). */
export const ENGINES: readonly EngineName[] = NIXL_ABSENT === null ? ['ucx', 'nixl'] : ['ucx']

/**
 * Where NIXL is missing, registers one skipped test whose title carries the reason, so a run
 * without NIXL reports that (and why) the NIXL variants of `what` did not run.
 */
export function reportNixlSkipped(what: string): void {
  if (NIXL_ABSENT === null) return
  describe.skip(`nixl engine: ${what}`, () => {
    it(`[skipped: ${NIXL_ABSENT}]`, () => {})
  })
}

/**
 * `it`, or `it.fails` where `buggy` holds: a test that documents a known implementation bug on one
 * engine. It keeps running there and turns red once the bug is fixed (then drop the marker).
 */
export function itUnlessKnownBug(buggy: boolean): typeof it | typeof it.fails {
  return buggy ? it.fails : it
}

/** Run `fn` with these environment variables set (undefined: unset), restored afterwards. */
export async function withEnv<T>(vars: Record<string, string | undefined>, fn: () => Promise<T>): Promise<T> {
  const saved: Record<string, string | undefined> = {}
  for (const [key, value] of Object.entries(vars)) {
    saved[key] = process.env[key]
    if (value === undefined) delete process.env[key]
    else process.env[key] = value
  }
  try {
    return await fn()
  } finally {
    for (const [key, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[key]
      else process.env[key] = value
    }
  }
}

export interface AgentSpec {
  /** Default: the library's 'auto' (NIXL where it loads, else UCX). */
  engine?: EngineName
  /** UCX transports (UCX_TLS), e.g. 'tcp'. */
  transports?: string
  busyPollUs?: number
}

/**
 * Agent.create on one engine. The UCX engine takes `transports` as an option. NIXL's UCX backend
 * ignores that option and reads UCX_TLS from the environment when the agent creates it, so for
 * NIXL `transports` is set as UCX_TLS for the duration of Agent.create (the process's own
 * UCX_TLS is restored afterwards).
 */
export async function createAgent(prefix: string, spec: AgentSpec = {}): Promise<Agent> {
  const options: AgentOptions = { name: uniqueName(prefix) }
  if (spec.engine !== undefined) options.engine = spec.engine
  if (spec.busyPollUs !== undefined) options.busyPollUs = spec.busyPollUs
  if (spec.engine === 'nixl') {
    const agent = spec.transports === undefined
      ? await Agent.create(options)
      : await withEnv({ UCX_TLS: spec.transports }, () => Agent.create(options))
    expect(agent.engine, 'the agent runs on the engine asked for').toBe('nixl')
    return agent
  }
  if (spec.transports !== undefined) options.transports = spec.transports
  const agent = await Agent.create(options)
  if (spec.engine !== undefined) expect(agent.engine, 'the agent runs on the engine asked for').toBe(spec.engine)
  return agent
}

/** Agents in this process (loopback). Close them with closeAll(). `spec` may be a transports string. */
export async function createAgents(count: number, prefix = 'agent', spec: string | AgentSpec = {}): Promise<Agent[]> {
  const resolved = typeof spec === 'string' ? { transports: spec } : spec
  const agents: Agent[] = []
  for (let i = 0; i < count; i++) agents.push(await createAgent(prefix, resolved))
  return agents
}

/** Close every agent, bounded; safe on undefined and on agents already closed. */
export async function closeAll(...agents: Array<Agent | undefined>): Promise<void> {
  await within(Promise.all(agents.map((a) => a?.close())), 30_000, 'closing agents')
}

/** Run `check` for every case; one assertion at the end lists every case that failed (not just the first). */
export async function eachCase<T>(cases: readonly T[], check: (c: T) => unknown): Promise<void> {
  const failures: string[] = []
  for (const c of cases) {
    try {
      await check(c)
    } catch (err) {
      failures.push(`${inspect(c, { depth: 3, breakLength: Infinity })}: ${String((err as Error)?.message ?? err).split('\n')[0]}`)
    }
  }
  expect(failures, 'cases that failed').toEqual([])
}
