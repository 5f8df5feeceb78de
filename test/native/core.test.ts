// The addon's Node-free core (native/agent/tables, plan_builder, descs) as
// C++ tests under ASan + UBSan, built by test/native/Makefile. Each C++ case
// is one test here, so a failure names the case and shows its checks.
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const dir = fileURLToPath(new URL('.', import.meta.url))
const build = spawnSync('make', ['-s', '-j2', '-C', dir], { encoding: 'utf8' })
const missing = build.error !== undefined ? `make is not available (${build.error.message})` : null

interface CaseResult {
  name: string
  ok: boolean
  details: string[]
}

function runCases(): { results: CaseResult[]; summary: string; status: number | null; output: string } {
  const binary = fileURLToPath(new URL('../../build/native-tests/core-tests', import.meta.url))
  const run = spawnSync(binary, [], { encoding: 'utf8', timeout: 120_000 })
  const output = `${run.stdout ?? ''}${run.stderr ?? ''}`
  const results: CaseResult[] = []
  let details: string[] = []
  let summary = ''
  for (const line of (run.stdout ?? '').split('\n')) {
    const verdict = /^(ok|FAIL) (.*)$/.exec(line)
    if (verdict !== null) {
      results.push({ name: verdict[2]!, ok: verdict[1] === 'ok', details })
      details = []
    } else if (line.startsWith('  FAILED ')) {
      details.push(line.trim())
    } else if (/^\d+ cases, \d+ failed checks$/.test(line)) {
      summary = line
    }
  }
  return { results, summary, status: run.status, output }
}

if (missing !== null) {
  describe.skip('native core', () => {
    it(`[skipped: ${missing}]`, () => {})
  })
} else {
  describe('native core (C++, no Node)', () => {
    it('builds with -Wall -Wextra -Werror under ASan and UBSan', () => {
      expect(build.status, `${build.stdout}${build.stderr}`).toBe(0)
    })
    const run = build.status === 0 ? runCases() : undefined
    it('runs to the end: every case reported, clean exit (no sanitizer report)', () => {
      expect(run, 'the build failed').toBeDefined()
      expect(run!.summary, run!.output).toMatch(/^\d+ cases, 0 failed checks$/)
      expect(run!.results.length).toBeGreaterThan(20)
      expect(run!.status, run!.output).toBe(0)
    })
    for (const c of run?.results ?? []) {
      it(c.name, () => {
        expect(c.details, 'failed checks').toEqual([])
        expect(c.ok).toBe(true)
      })
    }
  })
}
