// Proves the two forms of a NIXL-engine agent's metadata: kvxfer's checked envelope (the
// default, loaded by kvxfer peers) and NIXL's bare blob ({ format: 'nixl' }, for NIXL agents in
// other languages), which a kvxfer NIXL agent also loads and uses; and that the UCX engine has no
// bare NIXL form. The NIXL part is skipped, with the reason in the title, where NIXL does not load.
import { describe, expect, it } from 'vitest'
import { KiB, NIXL_ABSENT, closeAll, createAgent, fillBytes, reportNixlSkipped, sha256, throwsWith } from '../fixtures/index.js'

describe.skipIf(NIXL_ABSENT !== null)('nixl engine: metadata formats', { timeout: 60_000 }, () => {
  it('the bare NIXL blob is the envelope without its 16-byte header, and loads and works too', async () => {
    const a = await createAgent('fmt-a', { engine: 'nixl' })
    const b = await createAgent('fmt-b', { engine: 'nixl' })
    try {
      const rb = await b.allocate(64 * KiB)
      const ra = await a.allocate(64 * KiB)
      const enveloped = b.metadata()
      const bare = b.metadata({ format: 'nixl' })
      expect(Buffer.from(enveloped.subarray(0, 4)).toString()).toBe('KVXN')
      expect(Buffer.compare(enveloped.subarray(16), bare)).toBe(0)
      expect(await a.loadPeer(bare)).toBe(b.name)
      const want = sha256(fillBytes(ra.view(), 41))
      await a.write(ra, rb, b.name, { timeoutMs: 10_000 })
      expect(sha256(rb.view())).toBe(want)
    } finally {
      await closeAll(a, b)
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
