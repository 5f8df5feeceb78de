// `kvxfer demo` (examples/disagg): a router, a prefill and a decode process hand requests' KV
// caches over with pull, push and layer-wise streaming, found through the TCP side channel or a
// real etcd; the decode side checks every byte, and both pools have every block back at the end.
import { spawn } from 'node:child_process'
import { afterAll, describe, expect, it } from 'vitest'
import { ENGINES, reportNixlSkipped } from '../fixtures/index.js'
import { ETCD_ABSENT, EtcdServer, stopAllEtcd } from '../fixtures/etcd.js'

const CLI = new URL('../../dist/cli/main.js', import.meta.url).pathname

interface DemoRun {
  status: number | null
  stdout: string
  stderr: string
}

function demo(...args: string[]): Promise<DemoRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'demo', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk))
    child.once('error', reject)
    child.once('exit', (status) => resolve({ status, stdout, stderr }))
  })
}

interface DemoReport {
  schema: string
  ok: boolean
  checkedBytes: number
  discovery: string
  modes: {
    mode: string
    bytes: number
    overlap: number
    loop: { prefill: { p99Ms: number }; decode: { p99Ms: number } }
    freeBlocksAfter: { prefill: number; decode: number; of: number }
    requests: { request: number; bytes: number; mismatch: string | null; handoffMs: number; afterComputeMs: number }[]
  }[]
}

function checkReport(run: DemoRun, modes: string[], requests: number, requestBytes: number): DemoReport {
  expect(run.status, run.stderr).toBe(0)
  const report = JSON.parse(run.stdout) as DemoReport
  expect(report.schema).toBe('kvxfer-demo/1')
  expect(report.ok).toBe(true)
  expect(report.modes.map((m) => m.mode)).toEqual(modes)
  for (const mode of report.modes) {
    expect(mode.requests).toHaveLength(requests)
    for (const r of mode.requests) {
      expect(r.mismatch, `${mode.mode} request ${r.request}`).toBeNull()
      expect(r.bytes).toBe(requestBytes)
      expect(r.handoffMs).toBeGreaterThan(0)
    }
    // Every block went back to its pool on both sides.
    expect(mode.freeBlocksAfter.prefill).toBe(mode.freeBlocksAfter.of)
    expect(mode.freeBlocksAfter.decode).toBe(mode.freeBlocksAfter.of)
    expect(mode.loop.prefill.p99Ms).toBeGreaterThan(0)
  }
  expect(report.checkedBytes).toBe(modes.length * requests * requestBytes)
  return report
}

// llama-3.1-8b: 32 layers x 2 x 8 heads x 128 dims x 2 bytes = 128 KiB per token.
const TOKEN_BYTES = 32 * 2 * 8 * 128 * 2

afterAll(stopAllEtcd)

describe.each(ENGINES)('%s engine', (engine) => {
  it('pull, push and stream over the TCP side channel: every byte checked, every block freed', { timeout: 120_000 }, async () => {
    const run = await demo('--engine', engine, '--json', '--requests', '3', '--tokens', '80')
    checkReport(run, ['pull', 'push', 'stream'], 3, 80 * TOKEN_BYTES)
  })

  it('prints a timeline of compute, transfers and checks, and says every byte matched', { timeout: 120_000 }, async () => {
    const run = await demo('--engine', engine, '--mode', 'stream', '--requests', '2', '--tokens', '32', '--model', 'tiny')
    expect(run.status, run.stderr).toBe(0)
    expect(run.stdout).toMatch(/found each other through the TCP side channel \(127\.0\.0\.1:\d+, with a secret\)/)
    expect(run.stdout).toMatch(/^ {2}compute {3}[.12+]{64} /m)
    expect(run.stdout).toMatch(/^ {2}transfer {2}[.12+]{64} /m)
    expect(run.stdout).toMatch(/^ {2}check {5}[.12+]{64} /m)
    expect(run.stdout).toMatch(/event loop p99 \(max\): prefill [\d.]+ ms/)
    expect(run.stdout).toMatch(/^every byte matched: \d+ [KM]iB checked at the decode side$/m)
  })

  it.skipIf(ETCD_ABSENT !== null)(
    `finds the other worker through a real etcd (--etcd)${ETCD_ABSENT !== null ? ` [skipped: ${ETCD_ABSENT}]` : ''}`,
    { timeout: 120_000 },
    async () => {
      const etcd = await EtcdServer.start()
      try {
        const run = await demo('--engine', engine, '--json', '--etcd', etcd.endpoint, '--mode', 'pull', '--requests', '2', '--tokens', '48')
        const report = checkReport(run, ['pull'], 2, 48 * TOKEN_BYTES)
        expect(report.discovery).toBe('etcd')
      } finally {
        await etcd.stop()
      }
    },
  )
})
reportNixlSkipped('kvxfer demo')

describe('kvxfer demo options', () => {
  it('refuses a bad option with exit 2 and its usage', async () => {
    for (const args of [['--mode', 'teleport'], ['--requests', '0'], ['--model', 'gpt-5'], ['--frobnicate']]) {
      const run = await demo(...args)
      expect(run.status, args.join(' ')).toBe(2)
      expect(run.stderr).toMatch(/^kvxfer demo: .+\nusage: kvxfer demo /)
    }
  })

  it('fails, saying which, when the etcd it was pointed at does not answer', { timeout: 60_000 }, async () => {
    // A port nothing listens on: connect() gives up within its bound.
    const run = await demo('--etcd', 'http://127.0.0.1:9', '--mode', 'pull', '--requests', '1', '--tokens', '16', '--model', 'tiny')
    expect(run.status).toBe(1)
    expect(run.stderr).toMatch(/^kvxfer demo: (prefill|decode): .*\[ERR_(PEER_UNREACHABLE|TIMEOUT)\]/m)
  })
})
