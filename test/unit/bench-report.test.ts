// The pieces of `kvxfer bench` that need no agent: the report schema validator, the table,
// CSV and SVG writers, the --check byte pattern, and the framing of the control channel.
import { describe, expect, it } from 'vitest'
import { renderChart } from '../../dist/bench/chart.js'
import { checkBlock, fillBlock, poison } from '../../dist/bench/pattern.js'
import {
  BASELINE_FIGURES, KVXFER_FIGURES, SCHEMA, formatCsv, formatTable, validateReport, type Report,
} from '../../dist/bench/report.js'
import { FrameDecoder, encodeFrame } from '../../dist/bench/wire.js'

function figures(names: readonly string[], value = 1.5): Record<string, number> {
  return Object.fromEntries(names.map((n) => [n, value]))
}

function sampleReport(): Report {
  const point = (blockSize: number, names: readonly string[], gbps: number) => ({
    op: 'write' as const, blockSize, batch: 1, inFlight: 1, agents: 1, figures: { ...figures(names), gbps },
  })
  return {
    schema: SCHEMA,
    command: 'kvxfer bench --block-sizes 4K,1M',
    startedAt: new Date(0).toISOString(),
    seconds: 3,
    host: { hostname: 'h', cpus: 2 },
    target: { hostname: 'h' },
    kvxfer: { version: '0.0.0' },
    options: { op: 'write' },
    series: [
      {
        name: 'kvxfer', kind: 'kvxfer', figures: [...KVXFER_FIGURES],
        points: [4096, 1 << 20].map((b) => ({ ...point(b, KVXFER_FIGURES, b / 1e5), ratio: { ucx_perftest: 0.5, net: 4, memcpy: null } })),
      },
      { name: 'ucx_perftest ucp_put_bw', kind: 'baseline', baseline: 'ucx_perftest', figures: [...BASELINE_FIGURES.ucx_perftest], points: [4096, 1 << 20].map((b) => point(b, BASELINE_FIGURES.ucx_perftest, 20)) },
      { name: 'net', kind: 'baseline', baseline: 'net', figures: [...BASELINE_FIGURES.net], points: [4096, 1 << 20].map((b) => point(b, BASELINE_FIGURES.net, 0.5)) },
      { name: 'memcpy', kind: 'baseline', baseline: 'memcpy', figures: [...BASELINE_FIGURES.memcpy], points: [], unavailable: 'skipped' },
    ],
  }
}

describe('validateReport', () => {
  it('accepts a well-formed report', () => {
    expect(validateReport(sampleReport())).toEqual([])
  })

  it('names every missing, non-numeric or undeclared figure', () => {
    const r = sampleReport()
    delete r.series[0].points[0].figures.latP99Us
    r.series[1].points[1].figures.gbps = Number.NaN
    ;(r.series[2].points[0].figures as Record<string, unknown>).msgRate = '12'
    r.series[2].points[1].figures.extra = 1
    const problems = validateReport(r)
    expect(problems).toEqual(expect.arrayContaining([
      expect.stringMatching(/series\[0\].*points\[0\]: figure latP99Us is undefined/),
      expect.stringMatching(/series\[1\].*points\[1\]: figure gbps is NaN/),
      expect.stringMatching(/series\[2\].*points\[0\]: figure msgRate is 12/),
      expect.stringMatching(/series\[2\].*points\[1\]: figure extra is not declared/),
    ]))
  })

  it('refuses the wrong schema, missing series, bad ratios and empty series without a reason', () => {
    expect(validateReport(null)).toEqual(['the report is not an object'])
    expect(validateReport({ ...sampleReport(), schema: 'x' })[0]).toMatch(/schema/)
    expect(validateReport({ ...sampleReport(), series: [] })).toContain('series is not a non-empty array')
    const r = sampleReport()
    r.series[0].points[0].ratio = { net: Number.POSITIVE_INFINITY }
    delete r.series[3].unavailable
    r.series[0].points[1].blockSize = 0
    expect(validateReport(r)).toEqual(expect.arrayContaining([
      expect.stringMatching(/ratio\.net is Infinity/),
      expect.stringMatching(/series\[3\].*no points and no reason/),
      expect.stringMatching(/blockSize is not a positive integer/),
    ]))
  })
})

describe('writers', () => {
  it('the table groups rows by block size and has a ratio column per baseline', () => {
    const table = formatTable(sampleReport())
    const lines = table.split('\n')
    expect(lines[0]).toMatch(/^series\s+block\s+batch\s+GB\/s/)
    expect(lines[0]).toMatch(/xperftest\s+xnet\s+xmemcpy$/)
    expect(lines.filter((l) => l.startsWith('kvxfer ')).length).toBe(2)
    expect(table).toMatch(/kvxfer\s+4K\s+1\s+0\.04 .* 0\.50\s+4\.00\s+-\n/)
    expect(table).toMatch(/memcpy: skipped/)
  })

  it('CSV: a header with every figure, one row per point', () => {
    const csv = formatCsv(sampleReport()).trimEnd().split('\n')
    const head = csv[0].split(',')
    expect(head.slice(0, 8)).toEqual(['series', 'kind', 'op', 'blockSize', 'batch', 'inFlight', 'agents', 'tokens'])
    for (const f of [...KVXFER_FIGURES, ...BASELINE_FIGURES.net, 'ratio_ucx_perftest', 'ratio_net', 'ratio_memcpy']) expect(head).toContain(f)
    expect(csv.length).toBe(1 + 6)
    expect(csv.every((row) => row.split(',').length === head.length)).toBe(true)
  })

  it('the SVG chart has one polyline and one legend entry per series with points', () => {
    const svg = renderChart(sampleReport())
    expect(svg.startsWith('<svg')).toBe(true)
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true)
    expect(svg.match(/<polyline/g)?.length).toBe(3)
    for (const name of ['kvxfer', 'ucx_perftest ucp_put_bw', 'net']) expect(svg).toContain(`>${name}</text>`)
    expect(svg).toContain('>4K</text>')
    expect(svg).toContain('>1M</text>')
    expect(svg).not.toMatch(/NaN|undefined/)
  })
})

describe('--check pattern', () => {
  it('each block checks against its own index and seed only; one flipped byte fails', () => {
    for (const size of [1, 4096, 65521, 65522, 200_000, 1 << 20]) {
      const block = Buffer.alloc(size)
      fillBlock(block, 7, 3)
      expect(checkBlock(block, 7, 3), `size ${size}`).toBe(true)
      if (size > 64) {
        expect(checkBlock(block, 7, 4), `size ${size}, other index`).toBe(false)
        expect(checkBlock(block, 8, 3), `size ${size}, other seed`).toBe(false)
      }
      for (const at of [0, size >> 1, size - 1]) {
        block[at] ^= 1
        expect(checkBlock(block, 7, 3), `size ${size}, byte ${at} flipped`).toBe(false)
        block[at] ^= 1
      }
      poison(block)
      expect(checkBlock(block, 7, 3)).toBe(false)
    }
  })
})

describe('control frames', () => {
  it('round-trip with blobs, whatever the chunking', () => {
    const a = encodeFrame('point', { id: 3, list: [1, 2] }, [Buffer.from('meta'), new Uint8Array(0), Buffer.alloc(70_000, 9)])
    const b = encodeFrame('bye')
    const bytes = Buffer.concat([a, b])
    for (const chunk of [1, 7, 4096, bytes.length]) {
      const decoder = new FrameDecoder()
      const out = []
      for (let i = 0; i < bytes.length; i += chunk) out.push(...decoder.push(bytes.subarray(i, i + chunk)))
      expect(out.map((m) => m.type)).toEqual(['point', 'bye'])
      expect(out[0].body).toEqual({ id: 3, list: [1, 2] })
      expect(out[0].blobs.map((x) => x.length)).toEqual([4, 0, 70_000])
      expect(out[0].blobs[0].toString()).toBe('meta')
      expect(out[1].blobs).toEqual([])
    }
  })

  it('refuse malformed frames', () => {
    const bad = (frame: Buffer) => () => new FrameDecoder().push(frame)
    const header = (json: string) => {
      const h = Buffer.from(json)
      const f = Buffer.alloc(8 + h.length)
      f.writeUInt32LE(4 + h.length, 0)
      f.writeUInt32LE(h.length, 4)
      h.copy(f, 8)
      return f
    }
    expect(bad(Buffer.from([2, 0, 0, 0, 0, 0]))).toThrow(/malformed/)
    expect(bad(header('{nope'))).toThrow(/not JSON/)
    expect(bad(header('{"blobs":[]}'))).toThrow(/no type/)
    expect(bad(header('{"type":"x","blobs":[5]}'))).toThrow(/runs past/)
  })
})
