// The memcpy baseline of `kvxfer bench` is a native module of its own, outside the library:
// it loads and copies, refuses bad arguments with a plain TypeError or RangeError, is reported
// unavailable (never a crash) where it is missing, and build/Release holds no second .node file
// for node-gyp-build or prebuildify to take for the addon.
import { readFileSync, readdirSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { MEMCPY_MODULE, loadMemcpyModule, memcpyUnavailable, runMemcpy } from '../../dist/bench/baselines/memcpy.js'

const require = createRequire(import.meta.url)

describe('the memcpy module', () => {
  it('is built beside the addon, and is not a .node file', () => {
    expect(MEMCPY_MODULE).toMatch(/\/build\/Release\/kvxfer_bench\.so$/)
    expect(memcpyUnavailable()).toBeUndefined()
    expect(readdirSync(dirname(MEMCPY_MODULE)).filter((f) => f.endsWith('.node'))).toEqual(['kvxfer.node'])
  })

  it('is not part of kvxfer.node', () => {
    const addon = readFileSync(join(dirname(MEMCPY_MODULE), 'kvxfer.node'))
    expect(addon.includes('NativeAgent')).toBe(true)
    expect(addon.includes('memcpyBench')).toBe(false)
  })

  it('times copies', () => {
    const { memcpyBench } = loadMemcpyModule(MEMCPY_MODULE)
    expect(memcpyBench!(4096, 10)).toBeGreaterThan(0)
  })

  it('refuses bad arguments with a plain error that names them', () => {
    const { memcpyBench } = loadMemcpyModule(MEMCPY_MODULE)
    const call = memcpyBench as unknown as (...args: unknown[]) => number
    expect(() => call('4096', 1)).toThrow(TypeError)
    expect(() => call('4096', 1)).toThrow(/memcpyBench: bytes must be a number/)
    expect(() => call(4096)).toThrow(/memcpyBench: iterations must be a number/)
    for (const bytes of [0, -1, 1.5, 2 ** 40]) expect(() => call(bytes, 1)).toThrow(RangeError)
    expect(() => call(4096, 0)).toThrow(/memcpyBench: iterations must be a positive integer/)
  })

  it('is reported unavailable, with the reason, where it is missing or does not load', () => {
    expect(loadMemcpyModule('/nonexistent/kvxfer_bench.so')).toEqual({
      unavailable: expect.stringMatching(/not built here \(no \/nonexistent\/kvxfer_bench\.so; .*--build-from-source\)/),
    })
    const notAModule = loadMemcpyModule(require.resolve('../../package.json'))
    expect(notAModule.memcpyBench).toBeUndefined()
    expect(notAModule.unavailable).toMatch(/package\.json does not load: /)
  })

  it('runMemcpy: exactly --iters copies, or about --duration', async () => {
    const counted = await runMemcpy(64 * 1024, undefined, 100)
    expect(counted.iterations).toBe(100)
    expect(counted.bytes).toBe(100 * 64 * 1024)
    expect(counted.gbps).toBeGreaterThan(0)
    const timed = await runMemcpy(64 * 1024, 0.05, undefined)
    expect(timed.seconds).toBeGreaterThanOrEqual(0.05)
  })
})
