// The fuzz program for the decoders of peer input written in TypeScript (test/fuzz/js/fuzz.mjs:
// KV tickets, and side-channel frames from both ends of real TCP connections), at a short size:
// 50,000 mutated tickets and 2,000 mutated streams each way. `npm run test:fuzz` runs it at full
// size (10^6 tickets, 20,000 connections each way) after the native targets.
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

const FUZZ = join(__dirname, 'js', 'fuzz.mjs')

function run(target: string, runs: number) {
  const result = spawnSync(process.execPath, [FUZZ, target], {
    env: { ...process.env, KVXFER_FUZZ_JS_RUNS: String(runs) },
    encoding: 'utf8',
    timeout: 240_000,
  })
  expect(result.status, result.stdout + result.stderr).toBe(0)
  const line = result.stdout.split('\n').find((l) => l.startsWith('RESULT '))
  expect(line, result.stdout).toBeDefined()
  return JSON.parse(line!.slice('RESULT '.length))
}

describe('fuzzing the TypeScript decoders of peer input', { timeout: 300_000 }, () => {
  it('50,000 mutated KV tickets: each decodes or is ERR_BAD_METADATA', () => {
    const r = run('ticket', 50_000)
    expect(r.ticket.inputs).toBe(50_000)
    // Most mutations break a ticket; a few only change a digit of a name.
    expect(r.ticket.refused).toBeGreaterThan(40_000)
  })

  it('2,000 mutated client streams at a listener (open and with a secret): none hangs, the bad ones are refused, a real fetch is served after', () => {
    const r = run('listener', 2_000)
    for (const side of [r.listener.open, r.listener.secret]) {
      expect(side.connections).toBe(1_000)
      // Every connection ends served or refused, and the real fetch at the end was served.
      expect(side.served + side.refused).toBe(side.connections + 1)
      expect(side.refused).toBeGreaterThan(side.connections / 2)
    }
    // With a secret, a replayed proof never passes: only the real fetch is served.
    expect(r.listener.secret.served).toBe(1)
  })

  it('2,000 mutated server streams at fetchPeer: each settles within its timeout, with a KvxferError or a peer loaded', () => {
    const r = run('fetch', 2_000)
    for (const side of [r.fetch.open, r.fetch.secret]) {
      const refused = Object.values(side.refused as Record<string, number>).reduce((a, b) => a + b, 0)
      expect(side.loaded + refused).toBe(side.exchanges)
    }
    // A replayed server proof of the secret never passes.
    expect(r.fetch.secret.loaded).toBe(0)
    expect(r.fetch.secret.refused.ERR_UNAUTHORIZED).toBeGreaterThan(0)
  })
})
