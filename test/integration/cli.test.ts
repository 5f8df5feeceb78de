// The `kvxfer` command as a process: the usage, an unknown command, and `kvxfer info` in text
// and JSON (`kvxfer bench` has bench-cli.test.ts and bench-e2e.test.ts).
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const MAIN = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url))
const run = (...args: string[]) => spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', timeout: 30_000 })

describe('kvxfer', () => {
  it('prints the usage: exit 1 without a command, 0 with --help', () => {
    const none = run()
    expect(none.status).toBe(1)
    expect(none.stdout).toMatch(/^usage: kvxfer <command>/)
    for (const command of ['bench', 'demo', 'info']) expect(none.stdout).toMatch(new RegExp(`^  ${command} `, 'm'))
    const help = run('--help')
    expect(help.status).toBe(0)
    expect(help.stdout).toBe(none.stdout)
  })

  it('--version and -v print the version of the package it runs from', () => {
    const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
    for (const flag of ['--version', '-v']) {
      const r = run(flag)
      expect(r.status, r.stderr).toBe(0)
      expect(r.stdout).toBe(`${version}\n`)
    }
    expect(run().stdout).toMatch(/^ {7}kvxfer --version$/m)
  })

  it('refuses an unknown command with exit 2 and the usage', () => {
    const r = run('frobnicate')
    expect(r.status).toBe(2)
    expect(r.stderr).toMatch(/^kvxfer: unknown command 'frobnicate'\n\nusage: kvxfer <command>/)
    expect(r.stdout).toBe('')
  })
})

describe('kvxfer info', () => {
  it('lists the engines, UCX and ucx_perftest', () => {
    const r = run('info')
    expect(r.status, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/^kvxfer \d+\.\d+\.\d+ \(node v/)
    expect(r.stdout).toMatch(/^ {2}ucx {3}available, version \d+\.\d+/m)
    expect(r.stdout).toMatch(/^ {2}nixl  /m)
    expect(r.stdout).toMatch(/^UCX \d+\.\d+/m)
    expect(r.stdout).toMatch(/^NIXL$/m)
    expect(r.stdout).toMatch(/^ucx_perftest {2}\S/m)
  })

  it('--json: the library info() plus ucxPerftest', () => {
    const r = run('info', '--json')
    expect(r.status, r.stderr).toBe(0)
    const out = JSON.parse(r.stdout) as { version: string; engines: Record<string, { available: boolean }>; ucxPerftest: string | null }
    expect(out.version).toMatch(/^\d+\.\d+\.\d+/)
    expect(out.engines.ucx.available).toBe(true)
    expect(typeof out.engines.nixl.available).toBe('boolean')
    expect(out).toHaveProperty('ucxPerftest')
  })

  it('refuses an unknown option with exit 2', () => {
    const r = run('info', '--yaml')
    expect(r.status).toBe(2)
    expect(r.stderr).toBe("kvxfer info: unknown option '--yaml' (only --json)\n")
  })
})
