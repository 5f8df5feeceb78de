// UCX metadata whose checksum is right but whose regions lie: a region that claims more memory
// than its key maps, or starts before it, would send copies (kvxfer's direct one, or UCX's own
// through the same mapping) into other memory of this process. Such metadata is refused with
// ERR_BAD_METADATA at loadPeer, and nothing is loaded; the honest blob still loads and works.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Agent, Region } from '../../dist/index.js'
import { MiB, closeAll, createAgent, fillBytes, rejectsWith, sha256 } from '../fixtures/index.js'
import { ucxMetadataFields, withFixedChecksum } from '../fixtures/ucx-metadata.js'

/** The blob with one region's address and length changed and its checksum made right again. */
function withRegion(blob: Buffer, index: number, change: { address?: bigint; length?: bigint }): Buffer {
  const out = Buffer.from(blob)
  const entry = ucxMetadataFields(out).regions[index]!
  if (change.address !== undefined) out.writeBigUInt64LE(change.address, entry.at)
  if (change.length !== undefined) out.writeBigUInt64LE(change.length, entry.at + 8)
  return withFixedChecksum(out)
}

describe('ucx engine: metadata whose regions lie about their memory', { timeout: 60_000 }, () => {
  let a: Agent
  let b: Agent
  let ra: Region
  let rb: Region
  beforeAll(async () => {
    a = await createAgent('lie-a', { engine: 'ucx' })
    b = await createAgent('lie-b', { engine: 'ucx' })
    ra = await a.allocate(MiB)
    rb = await b.allocate(MiB)
  })
  afterAll(() => closeAll(a, b))

  it('a region longer than its memory, or starting before it, is ERR_BAD_METADATA; the honest blob loads and works', async () => {
    const honest = b.metadata()
    const [region] = ucxMetadataFields(honest).regions
    expect(region!.address).toBe(rb.address)
    // The tampered blobs pass the checksum: only the region check can refuse them.
    for (const lie of [
      withRegion(honest, 0, { length: 1024n * BigInt(MiB) }),
      withRegion(honest, 0, { address: rb.address - BigInt(64 * MiB), length: BigInt(65 * MiB) }),
    ]) {
      const error = await rejectsWith(() => a.loadPeer(lie), 'ERR_BAD_METADATA')
      expect(error.message).toMatch(/is not the memory its key maps on this host/)
      expect(a.stats().peers[b.name]).toBeUndefined()
    }
    expect(await a.loadPeer(honest)).toBe(b.name)
    const want = sha256(fillBytes(ra.view(), 7))
    await a.write(ra, rb, b.name, { timeoutMs: 10_000 })
    expect(sha256(rb.view())).toBe(want)
  })
})
