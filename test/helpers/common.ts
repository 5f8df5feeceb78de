// Shared test helpers: sizes, names, error assertions, bounded waits and in-process agent pairs.
// Everything that talks to another process lives in ./peer.ts.
import { inspect } from 'node:util'
import { expect } from 'vitest'
import { Agent, KvxferError } from '../../dist/index.js'

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

/** Two agents in this process (loopback). Close them with closeAll(). */
export async function createAgents(count: number, prefix = 'agent', transports?: string): Promise<Agent[]> {
  const agents: Agent[] = []
  for (let i = 0; i < count; i++) {
    agents.push(await Agent.create(transports === undefined
      ? { name: uniqueName(prefix) }
      : { name: uniqueName(prefix), transports }))
  }
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
