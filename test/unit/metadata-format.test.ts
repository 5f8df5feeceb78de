// Proves the two forms of a NIXL-engine agent's metadata: kvxfer's checked envelope (the
// default, loaded by kvxfer peers) and NIXL's bare blob ({ format: 'nixl' }, for NIXL agents in
// other languages), which a kvxfer NIXL agent also loads and uses; and that the UCX engine has no
// bare NIXL form. The NIXL part is skipped, with the reason in the title, where NIXL does not load.
import { describe, expect, it } from 'vitest'
import { KiB, NIXL_ABSENT, closeAll, createAgent, fillBytes, rejectsWith, reportNixlSkipped, sha256, throwsWith } from '../fixtures/index.js'

describe.skipIf(NIXL_ABSENT !== null)('nixl engine: metadata formats', { timeout: 60_000 }, () => {
  it('the bare NIXL blob is the one inside the envelope, and loads and works too', async () => {
    const a = await createAgent('fmt-a', { engine: 'nixl' })
    const b = await createAgent('fmt-b', { engine: 'nixl' })
    try {
      const rb = await b.allocate(64 * KiB)
      const ra = await a.allocate(64 * KiB)
      const enveloped = b.metadata()
      const bare = b.metadata({ format: 'nixl' })
      expect(Buffer.from(enveloped.subarray(0, 4)).toString()).toBe('KVXN')
      // The header's length field says how long the NIXL blob after it is; kvxfer's section follows.
      const nixlLength = Buffer.from(enveloped).readUInt32LE(8)
      expect(nixlLength).toBe(bare.length)
      expect(enveloped.length).toBeGreaterThan(16 + nixlLength)
      expect(Buffer.compare(enveloped.subarray(16, 16 + nixlLength), bare)).toBe(0)
      expect(await a.loadPeer(bare)).toBe(b.name)
      const want = sha256(fillBytes(ra.view(), 41))
      await a.write(ra, rb, b.name, { timeoutMs: 10_000 })
      expect(sha256(rb.view())).toBe(want)
    } finally {
      await closeAll(a, b)
    }
  })

  it("remote descriptors: checked at prepare() with kvxfer's envelope, by NIXL at the first post with a bare blob", async () => {
    const a = await createAgent('fmt-chk-a', { engine: 'nixl' })
    const b = await createAgent('fmt-chk-b', { engine: 'nixl' })
    const c = await createAgent('fmt-chk-c', { engine: 'nixl' })
    try {
      const ra = await a.allocate(64 * KiB)
      await b.allocate(64 * KiB)
      await c.allocate(64 * KiB)
      await a.loadPeer(b.metadata())
      await a.loadPeer(c.metadata({ format: 'nixl' }))
      const outside = { address: 0x1000n, length: 4096, device: 0 }
      throwsWith(() => a.prepare({ op: 'write', local: ra.slice(0, 4096), remote: outside, peer: b.name }), 'ERR_NOT_REGISTERED')
      const xfer = a.prepare({ op: 'write', local: ra.slice(0, 4096), remote: outside, peer: c.name })
      try {
        await rejectsWith(() => xfer.post({ timeoutMs: 10_000 }), 'ERR_NOT_REGISTERED')
        await rejectsWith(() => xfer.post({ timeoutMs: 10_000 }), 'ERR_NOT_REGISTERED')
      } finally {
        xfer.release()
      }
    } finally {
      await closeAll(a, b, c)
    }
  })
})
reportNixlSkipped('metadata formats')

describe('ucx engine: metadata formats', () => {
  it("{ format: 'nixl' } is refused with ERR_INVALID_ARG", async () => {
    const a = await createAgent('fmt-ucx', { engine: 'ucx' })
    try {
      throwsWith(() => a.metadata({ format: 'nixl' }), 'ERR_INVALID_ARG')
    } finally {
      await closeAll(a)
    }
  })
})
