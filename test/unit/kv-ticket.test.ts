// KV handoff tickets come from other processes (through the application's router): a
// well-formed one round-trips, and anything else is ERR_BAD_METADATA, never another exception.
import { randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { KvxferError } from '../../dist/index.js'
import { decodeTicket, encodeTicket, type Ticket } from '../../dist/kv/ticket.js'

const ticket: Ticket = {
  kind: 'pull',
  agent: 'prefill-0',
  id: 7,
  request: 'req-42',
  blocks: [3, 9, 10, 11, 40],
  layout: 'kvl1-0123456789abcdef',
  tp: { rank: 1, size: 2 },
}

function refused(bytes: Uint8Array, why: RegExp): void {
  let error: unknown
  try {
    decodeTicket(bytes)
  } catch (e) {
    error = e
  }
  expect(error, 'a malformed ticket is refused').toBeInstanceOf(KvxferError)
  expect((error as KvxferError).code).toBe('ERR_BAD_METADATA')
  expect((error as KvxferError).message).toMatch(why)
}

function withBody(body: unknown, version = 1, kind = 1): Buffer {
  const json = Buffer.from(JSON.stringify(body))
  const header = Buffer.alloc(12)
  header.write('KVTK', 0, 'latin1')
  header.writeUInt16LE(version, 4)
  header.writeUInt16LE(kind, 6)
  header.writeUInt32LE(json.length, 8)
  return Buffer.concat([header, json])
}

describe('KV tickets', () => {
  it('round-trip, for pull and push', () => {
    expect(decodeTicket(encodeTicket(ticket))).toEqual(ticket)
    expect(decodeTicket(encodeTicket({ ...ticket, kind: 'push' })).kind).toBe('push')
  })

  it('refuse another magic, version or kind, a wrong length, a body that is not JSON', () => {
    const good = Buffer.from(encodeTicket(ticket))
    refused(good.subarray(0, 8), /not a KV ticket/)
    refused(Buffer.concat([Buffer.from('XXXX'), good.subarray(4)]), /not a KV ticket/)
    refused(withBody({}, 2), /version 2 is not supported/)
    refused(withBody({}, 1, 3), /kind 3/)
    refused(good.subarray(0, good.length - 1), /length field/)
    const notJson = Buffer.from(good)
    notJson[12] = 0x7b + 1
    refused(notJson, /not JSON/)
  })

  it('refuse fields out of bounds: names, ids, blocks, layout, tp', () => {
    const body = { ...ticket }
    refused(withBody({ ...body, agent: '' }), /agent/)
    refused(withBody({ ...body, agent: 'x'.repeat(256) }), /agent/)
    refused(withBody({ ...body, id: -1 }), /id/)
    refused(withBody({ ...body, id: 1.5 }), /id/)
    refused(withBody({ ...body, blocks: [] }), /blocks/)
    refused(withBody({ ...body, blocks: [1, 'two'] }), /block ids/)
    refused(withBody({ ...body, blocks: [2 ** 32] }), /block ids/)
    refused(withBody({ ...body, layout: 5 }), /layout/)
    refused(withBody({ ...body, tp: { rank: 2, size: 2 } }), /tp/)
    refused(withBody({ ...body, tp: { rank: 0, size: 0 } }), /tp/)
    refused(withBody(null), /not an object/)
  })

  it('100,000 mutated tickets: each one decodes or is ERR_BAD_METADATA, nothing else', () => {
    const good = Buffer.from(encodeTicket(ticket))
    let accepted = 0
    for (let i = 0; i < 100_000; i++) {
      const bytes = Buffer.from(good)
      const flips = 1 + (i % 4)
      const noise = randomBytes(flips * 3)
      for (let f = 0; f < flips; f++) bytes[noise.readUInt16LE(f * 3) % bytes.length] = noise[f * 3 + 2]!
      const cut = i % 7 === 0 ? bytes.subarray(0, noise[0]! % bytes.length) : bytes
      try {
        decodeTicket(cut)
        accepted++
      } catch (error) {
        if (!(error instanceof KvxferError) || error.code !== 'ERR_BAD_METADATA') throw error
      }
    }
    // Some mutations only change a digit or a letter: those still decode.
    expect(accepted).toBeLessThan(100_000)
  })
})
