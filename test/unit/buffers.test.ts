// What metadata() and Notification.data are at run time is what their types say: Buffers,
// each with memory of its own, so that changing one (or a view from .slice()) changes nothing
// else, and a peer still loads the metadata the agent hands out next.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Agent } from '../../dist/index.js'
import { ENGINES, closeAll, createAgent, exchangeMetadata } from '../fixtures/index.js'

// The blob's first four bytes: UCX metadata, or kvxfer's envelope around NIXL's.
const MAGIC = { ucx: 'KVXM', nixl: 'KVXN' } as const

describe.each(ENGINES)('%s engine: Buffers the API hands out', { timeout: 30_000 }, (engine) => {
  let a: Agent
  let b: Agent
  beforeAll(async () => {
    a = await createAgent('buf-a', { engine })
    b = await createAgent('buf-b', { engine })
    await a.allocate(4096)
    await exchangeMetadata(a, b)
  })
  afterAll(() => closeAll(a, b))

  it('metadata() is a new Buffer each call; .slice() is a view of it; spoiling one spoils nothing else', async () => {
    const first = a.metadata()
    expect(Buffer.isBuffer(first)).toBe(true)
    const second = a.metadata()
    expect(second.equals(first)).toBe(true)
    expect(second.buffer === first.buffer && second.byteOffset === first.byteOffset).toBe(false)
    const view = first.slice(0, 4)
    view.fill(0) // Buffer#slice is a view: this spoils `first`
    expect(first.subarray(0, 4).equals(Buffer.alloc(4))).toBe(true)
    expect(second.subarray(0, 4).toString('latin1')).toBe(MAGIC[engine])
    expect(a.metadata().equals(second)).toBe(true)
    // The next blob still loads (the spoiled one would not).
    await expect(b.loadPeer(a.metadata())).resolves.toBe(a.name)
  })

  it('Notification.data is a Buffer of its own per notification', async () => {
    await a.notify(b.name, 'same payload')
    await a.notify(b.name, 'same payload')
    const one = await b.waitForNotification(a.name, 'same payload', { timeoutMs: 10_000 })
    const two = await b.waitForNotification(a.name, 'same payload', { timeoutMs: 10_000 })
    for (const n of [one, two]) {
      expect(Buffer.isBuffer(n.data)).toBe(true)
      expect(n.data.toString('utf8')).toBe(n.message)
    }
    one.data.slice(0, 4).fill(0x21)
    expect(one.data.toString('utf8')).toBe('!!!! payload')
    expect(two.data.toString('utf8')).toBe('same payload')
  })
})
