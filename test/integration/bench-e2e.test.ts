// `kvxfer bench` end to end, as a user runs it: tiny runs in local mode (a forked target, the
// TCP metadata exchange, real transfers), the two-host modes over 127.0.0.1, --check verifying
// every byte at the destination, and the --json/--csv/--chart outputs. Correctness only: no
// figure is compared with anything (timings on a shared 2-core machine prove nothing).
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { BASELINE_FIGURES, KVXFER_FIGURES, KV_FIGURES, SCHEMA, validateReport, type Report } from '../../dist/bench/report.js'

const MAIN = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url))
const dir = mkdtempSync(join(tmpdir(), 'kvxfer-bench-'))
const hasPerftest = spawnSync('sh', ['-c', 'command -v ucx_perftest'], { encoding: 'utf8' }).status === 0
// With LD_LIBRARY_PATH pointing at another UCX (the NIXL runs), the system's ucx_perftest loads
// libraries it was not built for and may crash; the bench must then say so in the series.
const perftestMayFail = (process.env.LD_LIBRARY_PATH ?? '') !== ''

afterAll(() => rmSync(dir, { recursive: true, force: true }))

interface Run { code: number | null; stdout: string; stderr: string }

// These runs test the CLI, not an engine: they pin the UCX engine (which names its series
// plainly) unless a test picks one, so 'auto' picking NIXL where it loads changes nothing.
function bench(args: string[], timeoutMs = 90_000): Promise<Run> {
  const engine = args.includes('--engine') ? [] : ['--engine', 'ucx']
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, 'bench', ...args, ...engine], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`kvxfer bench ${args.join(' ')} ran over ${timeoutMs} ms\n${stderr}`))
    }, timeoutMs)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

const readReport = (file: string) => JSON.parse(readFileSync(file, 'utf8')) as Report

function expectOk(run: Run): void {
  expect(run.code, `exit status; stderr:\n${run.stderr}`).toBe(0)
}

describe('kvxfer bench, local mode', { timeout: 120_000 }, () => {
  it('a tiny WRITE run: table, --check verified at the target, JSON/CSV/SVG with every series, point and figure', async () => {
    const json = join(dir, 'write.json')
    const csv = join(dir, 'write.csv')
    const chart = join(dir, 'write.svg')
    const run = await bench(['--block-sizes', '4K,64K', '--iters', '20', '--warmup', '2', '--check', '--json', json, '--csv', csv, '--chart', chart])
    expectOk(run)
    expect(run.stdout).toMatch(/^series\s+block\s+batch\s+GB\/s/m)
    expect(run.stdout).toMatch(/^kvxfer\s+4K\s+1\s/m)
    expect(run.stdout).toMatch(/^memcpy\s+64K\s/m)
    expect(run.stdout).toMatch(/--check: every byte verified at the destination \(2 points/)
    // stderr is a pipe here: one progress line per step (2 kvxfer points, then 3 baselines at each of 2 sizes), in order.
    const steps = run.stderr.split('\n').filter((l) => l.startsWith('kvxfer bench: ['))
    expect(steps.map((l) => /^kvxfer bench: \[(\d+)\/8\] /.exec(l)?.[1])).toEqual(['1', '2', '3', '4', '5', '6', '7', '8'])
    expect(steps[0]).toMatch(/^kvxfer bench: \[1\/8\] kvxfer 4K x1 \(\d+s\)$/)
    expect(run.stderr).not.toMatch(/\x1b/)

    const report = readReport(json)
    expect(validateReport(report)).toEqual([])
    expect(report.schema).toBe(SCHEMA)
    expect(report.options).toMatchObject({ op: 'write', iters: 20, warmup: 2, check: true })
    const names = report.series.map((s) => s.name)
    expect(names).toEqual(['kvxfer', hasPerftest ? 'ucx_perftest ucp_put_bw' : 'ucx_perftest', 'net', 'memcpy'])
    for (const series of report.series) {
      if (series.baseline === 'ucx_perftest' && !hasPerftest) {
        expect(series.unavailable).toMatch(/not installed/)
        continue
      }
      if (series.baseline === 'ucx_perftest' && perftestMayFail && series.unavailable !== undefined) {
        expect(series.unavailable).toMatch(/^failed at /)
        continue
      }
      expect(series.figures).toEqual(series.kind === 'kvxfer' ? [...KVXFER_FIGURES] : [...BASELINE_FIGURES[series.baseline!]])
      expect(series.points.map((p) => p.blockSize)).toEqual([4096, 65536])
      for (const p of series.points) {
        for (const f of series.figures) expect(Number.isFinite(p.figures[f]), `${series.name} ${p.blockSize} ${f}`).toBe(true)
        expect(p.figures.gbps).toBeGreaterThan(0)
      }
    }
    const kvxfer = report.series[0]
    for (const p of kvxfer.points) {
      expect(p.figures.iterations).toBe(20)
      expect(p.figures.bytes).toBe(20 * p.blockSize)
      expect(p.check).toEqual({ verified: true, ok: true, bytes: p.blockSize, blocks: 1, badBlocks: 0, side: 'target' })
      expect(Object.keys(p.ratio!).sort()).toEqual(['memcpy', 'net', 'ucx_perftest'])
      expect(p.ratio!.net).toBeGreaterThan(0)
      expect(p.ratio!.memcpy).toBeGreaterThan(0)
      const perftestRan = hasPerftest && report.series.some((s) => s.baseline === 'ucx_perftest' && s.points.length > 0)
      if (perftestRan) expect(p.ratio!.ucx_perftest).toBeGreaterThan(0)
    }

    const rows = readFileSync(csv, 'utf8').trimEnd().split('\n')
    expect(rows[0]).toMatch(/^series,kind,op,blockSize,batch,inFlight,agents,tokens,gbps,msgRate/)
    expect(rows.length).toBe(1 + report.series.reduce((n, s) => n + s.points.length, 0))

    const svg = readFileSync(chart, 'utf8')
    expect(svg).toMatch(/^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/)
    expect(svg.match(/<polyline/g)?.length).toBe(report.series.filter((s) => s.points.length > 0).length)

    // --from: the same table and chart again from the saved report, nothing run.
    const again = join(dir, 'again.svg')
    const from = await bench(['--from', json, '--chart', again])
    expectOk(from)
    expect(from.stdout).toContain(report.command)
    expect(from.stdout).toMatch(/^kvxfer\s+4K\s+1\s/m)
    expect(readFileSync(again, 'utf8')).toBe(svg)
    const bad = await bench(['--from', csv])
    expect(bad.code).toBe(1)
    expect(bad.stderr).toMatch(/cannot read|not a kvxfer-bench report/)
  })

  it('READ with batches, several agents, in-flight requests, re-created requests and notifications: verified at the initiator', async () => {
    const json = join(dir, 'read.json')
    const run = await bench([
      '--op', 'read', '--block-sizes', '4K', '--batch-sizes', '1,8', '--in-flight', '3', '--reuse', 'none', '--agents', '2',
      '--recreate', '--notify', '--iters', '24', '--warmup', '3', '--check', '--repeat', '2', '--baseline', 'none', '--json', json,
    ])
    expectOk(run)
    const report = readReport(json)
    expect(validateReport(report)).toEqual([])
    expect(report.series.map((s) => s.name)).toEqual(['kvxfer x1', 'kvxfer x8'])
    for (const series of report.series) {
      const [p] = series.points
      expect(p).toMatchObject({ op: 'read', inFlight: 3, agents: 2 })
      expect(p.check).toMatchObject({ verified: true, ok: true, side: 'initiator', blocks: 2 * 3 * p.batch, badBlocks: 0 })
      expect(p.notifications!.received).toBe(p.notifications!.expected)
      expect(p.notifications!.expected).toBeGreaterThanOrEqual(24 + 3)
      expect(p.figures.prepareUs).toBeGreaterThan(0)
      expect(p.runs).toHaveLength(2)
      expect(p.runs).toContain(p.figures.gbps)
    }
    expect(run.stdout).toMatch(/--notify: every notification arrived/)
  })

  it('--mem buffer moves registered Buffers, WRITE and READ verified; --load 1 runs a busy process for the run and stops it', async () => {
    // The --load processes, by their command line (read from /proc: no subprocess).
    const spinners = () =>
      readdirSync('/proc').filter((pid) => {
        if (!/^\d+$/.test(pid)) return false
        try {
          return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('process.ppid; for')
        } catch {
          return false
        }
      }).length
    const before = spinners()
    for (const op of ['write', 'read']) {
      const json = join(dir, `buffer-${op}.json`)
      const run = await bench(['--mem', 'buffer', '--load', '1', '--op', op, '--block-sizes', '4K,1M', '--batch-sizes', '1,4', '--iters', '16', '--warmup', '2', '--check', '--baseline', 'none', '--json', json])
      expectOk(run)
      const report = readReport(json)
      expect(validateReport(report)).toEqual([])
      expect(report.options).toMatchObject({ mem: 'buffer', load: 1 })
      for (const series of report.series) for (const p of series.points) expect(p.check).toMatchObject({ verified: true, ok: true, badBlocks: 0 })
    }
    expect(spinners(), 'a --load process outlived the run').toBe(before)
  })

  it('--burst posts the in-flight requests together with postAll, every block checked', async () => {
    const json = join(dir, 'burst.json')
    const run = await bench(['--in-flight', '8', '--burst', '4', '--block-sizes', '4K,64K', '--iters', '64', '--warmup', '8', '--check', '--baseline', 'none', '--json', json])
    expectOk(run)
    const report = readReport(json)
    expect(validateReport(report)).toEqual([])
    expect(report.options).toMatchObject({ inFlight: 8, burst: 4 })
    for (const series of report.series) {
      for (const p of series.points) {
        expect(p.check).toMatchObject({ verified: true, ok: true, badBlocks: 0 })
        expect(p.figures.iterations).toBeGreaterThanOrEqual(64)
      }
    }
  })

  it('--kv turns a model shape and prompt lengths into descriptors', async () => {
    const json = join(dir, 'kv.json')
    const run = await bench([
      '--kv', 'custom', '--layers', '2', '--kv-heads', '2', '--head-dim', '64', '--block-tokens', '16', '--tokens', '64,256',
      '--iters', '5', '--warmup', '1', '--check', '--baseline', 'memcpy', '--json', json,
    ])
    expectOk(run)
    const report = readReport(json)
    expect(validateReport(report)).toEqual([])
    const [series] = report.series
    expect(series.name).toBe('kvxfer custom')
    expect(series.figures).toEqual([...KVXFER_FIGURES, ...KV_FIGURES])
    expect(series.points.map((p) => [p.tokens, p.blockSize, p.batch])).toEqual([
      [64, 16 * 2 * 64 * 2, 2 * 2 * 4],
      [256, 16 * 2 * 64 * 2, 2 * 2 * 16],
    ])
    for (const p of series.points) {
      expect(p.figures.kvBytes).toBe(p.tokens! * 2 * 2 * 2 * 64 * 2)
      expect(p.figures.moveMs).toBeGreaterThan(0)
      expect(p.check?.ok).toBe(true)
    }
    expect(run.stdout).toMatch(/^series\s+tokens\s+block/m)
  })
})

describe('kvxfer bench, two-host modes over 127.0.0.1', { timeout: 120_000 }, () => {
  it('target --once serves one initiator --connect and exits 0', async () => {
    const target = spawn(process.execPath, [MAIN, 'bench', 'target', '--listen', '127.0.0.1:0', '--once'], { stdio: ['ignore', 'pipe', 'pipe'] })
    const targetExit = new Promise<number | null>((resolve) => target.on('close', resolve))
    try {
      const port = await new Promise<number>((resolve, reject) => {
        let out = ''
        target.stdout.on('data', (d) => {
          out += d
          const m = /listening on 127\.0\.0\.1:(\d+)/.exec(out)
          if (m) resolve(Number(m[1]))
        })
        target.on('close', () => reject(new Error(`target exited before listening: ${out}`)))
      })
      const json = join(dir, 'two-host.json')
      const run = await bench(['initiator', '--connect', `127.0.0.1:${port}`, '--block-sizes', '16K', '--iters', '10', '--warmup', '1', '--check', '--baseline', 'net', '--json', json])
      expectOk(run)
      const report = readReport(json)
      expect(validateReport(report)).toEqual([])
      expect(report.options.mode).toBe('initiator')
      expect(report.series[0].points[0].check?.ok).toBe(true)
      expect(await targetExit).toBe(0)
    } finally {
      target.kill()
    }
  })

  it('an initiator with no target there fails with exit status 1 and says why', async () => {
    const run = await bench(['initiator', '--connect', '127.0.0.1:1', '--baseline', 'none'])
    expect(run.code).toBe(1)
    expect(run.stderr).toMatch(/cannot connect to the bench target at 127\.0\.0\.1:1/)
  })
})
