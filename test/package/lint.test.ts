// The published package's checks, as CI runs them through `npm test`: publint (strict) and
// @arethetypeswrong/cli on the packed tarball (`npm run lint:package`), and the API reference
// (`npm run docs`, typedoc with every warning an error: an undocumented export or a broken link
// fails it), written to a temporary folder and read back for the README's examples and both
// entries.
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'kvxfer-docs-'))
const npm = (...args: string[]) => spawnSync('npm', args, { cwd: ROOT, encoding: 'utf8', timeout: 240_000, env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' } })

afterAll(() => fs.rmSync(out, { recursive: true, force: true }))

describe('the published package', { timeout: 240_000 }, () => {
  it('npm run lint:package: publint --strict and attw --pack find nothing', () => {
    const r = npm('run', 'lint:package')
    expect(r.status, r.stdout + r.stderr).toBe(0)
    expect(r.stdout).toMatch(/All good!/)
    expect(r.stdout).toMatch(/No problems found/)
    // Both entries were checked, under every resolution mode.
    expect(r.stdout).toMatch(/"kvxfer\/prometheus"/)
    expect(r.stdout).not.toMatch(/❌|⚠️|🥴|💀|🐛|❗️|🚭|🎭/u)
  })

  it('npm run docs: typedoc builds the reference with no warning, with the README and both entries', () => {
    const r = npm('run', 'docs', '--', '--out', out)
    expect(r.status, r.stdout + r.stderr).toBe(0)
    expect(r.stdout + r.stderr).not.toMatch(/\[warning\]|\[error\]/)
    const index = fs.readFileSync(path.join(out, 'index.html'), 'utf8')
    // The README is the front page, examples included.
    expect(index).toMatch(/A complete two-process handoff/)
    expect(index).toMatch(/collectMetrics/)
    expect(fs.existsSync(path.join(out, 'modules', 'kvxfer.html'))).toBe(true)
    expect(fs.existsSync(path.join(out, 'modules', 'kvxfer_prometheus.html'))).toBe(true)
    for (const page of ['classes/kvxfer.Agent.html', 'functions/kvxfer_prometheus.collectMetrics.html']) {
      expect(fs.existsSync(path.join(out, page)), page).toBe(true)
    }
    expect(fs.readFileSync(path.join(out, 'classes', 'kvxfer.Agent.html'), 'utf8')).toMatch(/Starts an agent: its engine and its owner thread/)
  })
})
