// npm run test:asan, short: the addon built with ASan + UBSan (scripts/test-asan.sh) runs a
// part of this suite (unit tests, two-process transfers, errors, lying metadata, peers, KV
// handoff, SIGKILL and cancel faults, load/forget cycles) in every Node process those tests
// start; it passes when those tests pass and no sanitizer wrote a report. The whole suite
// under the sanitizers: npm run test:asan. Also here: the valgrind memcheck smoke
// (scripts/valgrind-smoke.sh).
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const root = fileURLToPath(new URL('../..', import.meta.url))
const hasAsan = (() => {
  const r = spawnSync('sh', ['-c', 'test -e "$(${CXX:-g++} -print-file-name=libasan.so)"'], { encoding: 'utf8' })
  return r.status === 0
})()
const hasValgrind = spawnSync('sh', ['-c', 'command -v valgrind'], { encoding: 'utf8' }).status === 0
// A sanitized run inside a sanitized run would test nothing more.
const nested = process.env.KVXFER_ADDON !== undefined

const tail = (s: string, n = 4000) => (s.length > n ? `…${s.slice(-n)}` : s)

describe.skipIf(!hasAsan || nested)(hasAsan ? 'ASan + UBSan build of the addon' : 'ASan + UBSan (skipped: g++ has no libasan.so)', () => {
  it('the short suite passes on it with no sanitizer report', { timeout: 1_200_000 }, () => {
    const r = spawnSync('bash', ['scripts/test-asan.sh', '--no-valgrind', '--short'], { cwd: root, encoding: 'utf8', timeout: 1_150_000, env: { ...process.env, NO_COLOR: '1' } })
    const out = `${r.stdout}${r.stderr}`
    const verdict = /test:asan: (\d+) passed, (\d+) failed, (\d+) skipped; sanitizer reports: (\d+)/.exec(out)
    expect(verdict, tail(out)).not.toBeNull()
    const [, passed, failed, , reports] = verdict!.map(Number)
    console.info(verdict![0])
    expect(reports, tail(out)).toBe(0)
    expect(failed, tail(out)).toBe(0)
    expect(passed).toBeGreaterThan(100)
    expect(r.status, tail(out)).toBe(0)
  })
})

describe.skipIf(!hasValgrind || nested)(hasValgrind ? 'valgrind memcheck' : 'valgrind memcheck (skipped: valgrind is not installed)', () => {
  it('two agents move checked bytes and close: no invalid access, nothing definitely lost by the addon', { timeout: 600_000 }, () => {
    const r = spawnSync('bash', ['scripts/valgrind-smoke.sh'], { cwd: root, encoding: 'utf8', timeout: 580_000 })
    const out = `${r.stdout}${r.stderr}`
    const verdict = /valgrind-smoke: (\d+) errors?, (\d+) bytes definitely lost in the addon/.exec(out)
    expect(verdict, tail(out)).not.toBeNull()
    console.info(verdict![0])
    expect(r.status, tail(out)).toBe(0)
  })
})
