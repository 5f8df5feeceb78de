// `kvxfer bench` as a process: a bad command line exits 2 with the reason and a pointer to
// --help, --help exits 0, and --mem vram fails with a clear reason where it cannot run.
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import * as cuda from '../../dist/cuda.js'
import { info } from '../../dist/index.js'

// Where a GPU and a CUDA-enabled UCX are there, --mem vram runs (test/gpu covers it).
const VRAM_RUNS = cuda.deviceCount() > 0 && info().engines.ucx.cuda?.supported === true

const MAIN = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url))

describe('the CLI', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, [MAIN, 'bench', ...args], { encoding: 'utf8', timeout: 30_000 })

  it('exits 2 with the reason and a pointer to --help on a bad command line', () => {
    for (const args of [['--block-sizes', '4X'], ['--frobnicate'], ['initiator']]) {
      const r = run(...args)
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(2)
      expect(r.stderr).toMatch(/^kvxfer bench: /)
      expect(r.stderr).toMatch(/kvxfer bench --help/)
      expect(r.stdout).toBe('')
    }
  })

  it('--help prints the usage and exits 0', () => {
    const r = run('--help')
    expect(r.status).toBe(0)
    expect(r.stdout).toMatch(/usage: kvxfer bench/)
    expect(r.stdout).toMatch(/--block-sizes/)
  })

  it.skipIf(VRAM_RUNS)('--mem vram fails at once with the reason it cannot run here', () => {
    const r = run('--mem', 'vram', '--baseline', 'none')
    expect(r.status).toBe(1)
    expect(r.stderr).toMatch(cuda.deviceCount() === 0 ? /--mem vram needs a CUDA device; .+\. Use --mem dram\./ : /--mem vram: the \w+ engine cannot move GPU memory here: /)
  })
})
