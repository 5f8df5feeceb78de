// `kvxfer bench --handoff` as a process: pull, push and stream between two processes with
// KvHandoff, each against a contiguous transfer of the same bytes, written as a JSON report
// whose figures are consistent with the shape asked for. (What the figures are is for the
// bench to measure, not for a test to assert.)
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const MAIN = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url))
const SHAPE = ['--kv', 'custom', '--layers', '3', '--kv-heads', '2', '--head-dim', '32', '--block-tokens', '16']

describe('kvxfer bench --handoff', { timeout: 120_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvxfer-bench-handoff-'))

  for (const mode of ['pull', 'push', 'stream'] as const) {
    it(`${mode}: a report per prompt length, with descriptors, times and the event loop's delay on both sides`, () => {
      const json = join(dir, `${mode}.json`)
      // push runs on registered Buffers, the others on allocate()d pools.
      const extra = mode === 'stream' ? ['--compute-ms', '1'] : mode === 'push' ? ['--pool', 'buffer'] : []
      const r = spawnSync(process.execPath, [MAIN, 'bench', ...SHAPE, '--tokens', '64,160', '--handoff', mode, '--iters', '3', '--warmup', '1', '--json', json, ...extra], {
        encoding: 'utf8',
        timeout: 110_000,
      })
      expect(r.status, r.stderr).toBe(0)
      expect(r.stdout).toMatch(new RegExp(`KV handoff \\(${mode}\\)`))
      const report = JSON.parse(readFileSync(json, 'utf8'))
      expect(report.schema).toBe('kvxfer-bench-handoff/1')
      expect(report.mode).toBe(mode)
      expect(report.pool).toBe(mode === 'push' ? 'buffer' : 'allocate')
      expect(r.stdout).toMatch(mode === 'push' ? /pools in registered Buffers/ : /pools in allocate\(\)d memory/)
      expect(report.points.map((p: { tokens: number }) => p.tokens)).toEqual([64, 160])
      for (const p of report.points) {
        const blocks = Math.ceil(p.tokens / 16)
        expect(p.blocks).toBe(blocks)
        // 16 tokens x 2 heads x 32 dims x 2 bytes a part; K and V of 3 layers a block.
        expect(p.bytes).toBe(blocks * 3 * 2 * 16 * 2 * 32 * 2)
        // Scattered ids: nothing merges across blocks.
        expect(p.descriptors).toEqual({ unmerged: blocks * 3 * 2, merged: blocks * 3 * 2 })
        expect(p.iterations).toBe(3)
        expect(p.handoffMs.median).toBeGreaterThan(0)
        expect(p.handoffMs.p90).toBeGreaterThanOrEqual(p.handoffMs.median)
        expect(p.contiguousMs.median).toBeGreaterThan(0)
        expect(p.ratio).toBeCloseTo(p.contiguousMs.median / p.handoffMs.median, 2)
        expect(p.eventLoopP99Ms.here).toBeGreaterThan(0)
        expect(p.eventLoopP99Ms.peer).toBeGreaterThan(0)
        if (mode === 'stream') expect(p.stream.computeMs).toBeGreaterThan(0)
      }
      if (mode === 'pull') {
        expect(report.launchUs.iterations).toBe(200)
        expect(report.launchUs.readMedian).toBeGreaterThan(0)
        expect(report.launchUs.median).toBeGreaterThan(report.launchUs.overheadMedian)
      }
    })
  }

  it('refuses --handoff without --kv, an unknown mode, --compute-ms without stream, a bad --pool', () => {
    for (const args of [
      ['--handoff', 'pull'],
      [...SHAPE, '--handoff', 'fetch'],
      [...SHAPE, '--handoff', 'push', '--compute-ms', '2'],
      [...SHAPE, '--handoff', 'pull', '--pool', 'heap'],
      [...SHAPE, '--pool', 'buffer'],
    ]) {
      const r = spawnSync(process.execPath, [MAIN, 'bench', ...args], { encoding: 'utf8', timeout: 30_000 })
      expect(r.status, args.join(' ')).toBe(2)
      expect(r.stderr).toMatch(/kvxfer bench: /)
    }
    rmSync(dir, { recursive: true, force: true })
  })
})
