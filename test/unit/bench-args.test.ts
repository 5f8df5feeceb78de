// `kvxfer bench` command line: sizes with units, power-of-two ranges, every option, the KV
// presets, and bad input refused with a clear message (the CLI's exit status: bench-cli.test.ts).
import { describe, expect, it } from 'vitest'
import {
  DEFAULT_BLOCK_SIZES, UsageError, blockIndex, distinctBlocks, kvBlockBytes, kvBlocks, parseBenchArgs, parseCount,
  parseHostPort, parseSize, parseSizeList, pointsBytes,
} from '../../dist/bench/args.js'
import { KV_MODELS, kvBytesPerToken } from '../../dist/bench/kv.js'

const K = 1024
const M = 1024 * K
const G = 1024 * M

const parse = (...argv: string[]) => parseBenchArgs(argv).options

function usageError(fn: () => unknown, match: RegExp): void {
  let error: unknown
  try {
    fn()
  } catch (e) {
    error = e
  }
  expect(error, 'expected a UsageError').toBeInstanceOf(UsageError)
  expect((error as Error).message).toMatch(match)
}

describe('parseSize', () => {
  it.each([
    ['4096', 4096], ['4K', 4 * K], ['4k', 4 * K], ['4KB', 4 * K], ['64KiB', 64 * K], ['1M', M], ['16MiB', 16 * M],
    ['64M', 64 * M], ['2G', 2 * G], ['1.5K', 1536], ['1b', 1], [' 8K ', 8 * K],
  ])('%s -> %d', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes)
  })

  it.each(['', 'K', '4X', '4 KB B', '-1', '0', '1.3', '0.5K.2', '4Kb5', 'abc', '1e3'])('refuses %j', (text) => {
    usageError(() => parseSize(text, '--block-sizes'), /--block-sizes/)
  })
})

describe('parseSizeList', () => {
  it('expands a range over powers of two, both ends included', () => {
    expect(parseSizeList('4K..64M', 'x')).toEqual(Array.from({ length: 15 }, (_, i) => 4 * K * 2 ** i))
    expect(parseSizeList('4K..4K', 'x')).toEqual([4 * K])
  })

  it('takes lists, mixes lists and ranges, sorts and drops duplicates', () => {
    expect(parseSizeList('1M,4K,64K', 'x')).toEqual([4 * K, 64 * K, M])
    expect(parseSizeList('4K..16K,1M,8K', 'x')).toEqual([4 * K, 8 * K, 16 * K, M])
    expect(parseSizeList('3000', 'x')).toEqual([3000])
  })

  it.each([
    ['3K..64K', /powers of two/], ['4K..48K', /powers of two/], ['64K..4K', /backwards/], ['4K..', /not a size/],
    ['..', /not a size/], ['4K..8K..16K', /not a range/], ['4K,,8K', /not a list/], ['', /not a list/],
  ])('refuses %j', (text, match) => {
    usageError(() => parseSizeList(text, '--block-sizes'), match)
  })
})

describe('parseCount and parseHostPort', () => {
  it('counts take unit suffixes and refuse zero and fractions', () => {
    expect(parseCount('1K', 'n')).toBe(1024)
    expect(parseCount('64', 'n')).toBe(64)
    usageError(() => parseCount('0', '--iters'), /--iters.*at least 1/)
    usageError(() => parseCount('2.5', '--iters'), /--iters/)
  })

  it('reads HOST:PORT, [v6]:PORT, and a bare port where a default host exists', () => {
    expect(parseHostPort('10.0.0.2:7345', 'x')).toEqual({ host: '10.0.0.2', port: 7345 })
    expect(parseHostPort('[::1]:80', 'x')).toEqual({ host: '::1', port: 80 })
    expect(parseHostPort('9000', 'x', '0.0.0.0')).toEqual({ host: '0.0.0.0', port: 9000 })
    usageError(() => parseHostPort('host', '--connect'), /HOST:PORT/)
    usageError(() => parseHostPort('host:70000', '--connect'), /HOST:PORT/)
    usageError(() => parseHostPort(':80', '--connect'), /no host/)
  })
})

describe('parseBenchArgs', () => {
  it('--mem vram: GPU --device here, --peer-device on the target (default the same), cudaMemcpy as the baseline', () => {
    const same = parse('--mem', 'vram', '--device', '2')
    expect([same.mem, same.device, same.peerDevice]).toEqual(['vram', 2, 2])
    expect(same.baselines).toEqual(['cuda_memcpy'])
    const two = parse('--mem', 'vram', '--peer-device', '1', '--baseline', 'all')
    expect([two.device, two.peerDevice]).toEqual([0, 1])
    expect(two.baselines).toEqual(['ucx_perftest', 'net', 'memcpy', 'cuda_memcpy'])
    expect(parse('--baseline', 'all').baselines).toEqual(['ucx_perftest', 'net', 'memcpy'])
  })

  it('has defaults that make a short local run', () => {
    const o = parse()
    expect(o.mode).toBe('local')
    expect(o.op).toBe('write')
    expect(o.blockSizes).toEqual(DEFAULT_BLOCK_SIZES)
    expect(o.batchSizes).toEqual([1])
    expect(o.inFlight).toBe(4)
    expect(o.duration).toBe(1)
    expect(o.iters).toBeUndefined()
    expect(o.warmup).toBeUndefined()
    expect(o.prepared).toBe(true)
    expect(o.reuse).toBe('requests')
    expect(o.agents).toBe(1)
    expect(o.mem).toBe('dram')
    expect(o.engine).toBe('auto')
    expect(o.baselines).toEqual(['ucx_perftest', 'net', 'memcpy'])
    expect(o.check).toBe(false)
    expect(o.notify).toBe(false)
    expect(o.progress).toBe('auto')
    expect(o.repeat).toBe(1)
    expect(o.load).toBe(0)
    expect(o.busyPollUs, 'the library default applies').toBeUndefined()
  })

  it('--mem buffer registers Buffers on both sides; --load N runs N busy processes beside the run', () => {
    expect(parse('--mem', 'buffer').mem).toBe('buffer')
    expect(parse('--load', '2').load).toBe(2)
    expect(parse('--load=0').load).toBe(0)
  })

  it('--burst N posts the in-flight requests N at a time (one postAll); default 1, one post each', () => {
    expect(parse().burst).toBe(1)
    expect(parse('--in-flight', '64', '--burst', '16').burst).toBe(16)
  })

  it('reads every option, in both --opt value and --opt=value forms', () => {
    const o = parse(
      '--op', 'read', '--block-sizes=4K..1M', '--batch-sizes', '1,16,1K', '--iters', '500', '--warmup', '0', '--duration', '500ms',
      '--in-flight', '64', '--recreate', '--reuse', 'none', '--engine', 'ucx', '--agents', '4', '--notify', '--check',
      '--transports', 'sm,self', '--baseline', 'net', '--baseline', 'memcpy', '--json', 'out/r.json', '--csv', 'r.csv',
      '--chart', 'r.svg', '--no-progress', '--timeout', '5', '--max-memory', '64G', '--repeat', '3', '--busy-poll', '0',
    )
    expect(o).toMatchObject({
      op: 'read', batchSizes: [1, 16, 1024], iters: 500, warmup: 0, duration: 0.5, inFlight: 64, prepared: false,
      reuse: 'none', engine: 'ucx', agents: 4, notify: true, check: true, transports: 'sm,self',
      baselines: ['net', 'memcpy'], json: 'out/r.json', csv: 'r.csv', chart: 'r.svg', progress: 'never', timeoutMs: 5000,
      maxMemory: 64 * G, repeat: 3, busyPollUs: 0,
    })
    expect(o.blockSizes).toEqual([4 * K, 8 * K, 16 * K, 32 * K, 64 * K, 128 * K, 256 * K, 512 * K, M])
  })

  it('--iters alone bounds the loop by count; with --duration, whichever ends first', () => {
    expect(parse('--iters', '20').duration).toBeUndefined()
    expect(parse('--iters', '20', '--duration', '2').duration).toBe(2)
  })

  it('--baseline takes lists, all and none', () => {
    expect(parse('--baseline', 'none').baselines).toEqual([])
    expect(parse('--baseline', 'memcpy,ucx-perftest').baselines).toEqual(['ucx_perftest', 'memcpy'])
    expect(parse('--baseline', 'none', '--baseline', 'all').baselines).toEqual(['ucx_perftest', 'net', 'memcpy'])
    expect(parse('--baseline', 'perftest').baselines).toEqual(['ucx_perftest'])
  })

  it('modes: target listens, initiator connects', () => {
    expect(parse('target').listen).toEqual({ host: '0.0.0.0', port: 7345 })
    expect(parse('target', '--listen', '127.0.0.1:0', '--once')).toMatchObject({ mode: 'target', listen: { host: '127.0.0.1', port: 0 }, once: true })
    expect(parse('initiator', '--connect', 'gpu-b:7345').connect).toEqual({ host: 'gpu-b', port: 7345 })
    expect(parse('local').mode).toBe('local')
    expect(parseBenchArgs(['--help']).help).toBe(true)
  })

  it.each([
    [['--bogus'], /unknown option '--bogus'/],
    [['stray'], /mode: 'stray' is not one of local, target, initiator/],
    [['--block-sizes'], /--block-sizes needs a value/],
    [['--block-sizes', '4X'], /--block-sizes: '4X' is not a size/],
    [['--block-sizes', '3K..1M'], /powers of two/],
    [['--op', 'copy'], /--op: 'copy' is not one of write, read/],
    [['--mem', 'hbm'], /--mem: 'hbm' is not one of dram, buffer, vram/],
    [['--load', '-1'], /--load/],
    [['--in-flight', '64', '--burst', '10'], /--burst must divide --in-flight/],
    [['--in-flight', '4', '--burst', '2', '--recreate'], /--burst posts prepared requests/],
    [['--burst', '0'], /--burst: must be at least 1/],
    [['--load', '1000'], /--load: at most 256/],
    [['target', '--load', '2'], /--load runs beside an initiator or a local run/],
    [['--kv', 'llama-3.1-8b', '--handoff', 'pull', '--mem', 'buffer'], /--handoff takes its pools' memory from --pool/],
    [['--peer-device', '1'], /--peer-device is for --mem vram/],
    [['--baseline', 'cuda_memcpy'], /the cuda_memcpy baseline is for --mem vram/],
    [['--mem', 'vram', '--check'], /--check reads the bench memory from the host/],
    [['--mem', 'vram', '--peer-device', 'x'], /--peer-device/],
    [['--engine', 'rdma'], /--engine/],
    [['--reuse', 'some'], /--reuse/],
    [['--in-flight', '0'], /--in-flight: must be at least 1/],
    [['--repeat', '0'], /--repeat: must be at least 1/],
    [['--busy-poll', '20000'], /--busy-poll: at most 10000/],
    [['--busy-poll', '-5'], /--busy-poll/],
    [['--duration', 'soon'], /--duration/],
    [['--baseline', 'iperf'], /--baseline: 'iperf'/],
    [['--check=yes'], /--check takes no value/],
    [['--chart', 'bw.png'], /\.svg/],
    [['--transports', 'sm;rm -rf'], /--transports/],
    [['--prepared', '--recreate'], /exclude each other/],
    [['initiator'], /needs --connect/],
    [['--connect', 'h:1'], /--connect is for initiator mode/],
    [['--listen', '1.2.3.4:5'], /for target mode/],
    [['--block-sizes', '64M', '--in-flight', '128', '--reuse', 'none'], /over --max-memory/],
    [['--tokens', '1K'], /--tokens needs --kv/],
    [['--kv', 'gpt-9'], /unknown model 'gpt-9'/],
    [['--kv', 'custom', '--layers', '2'], /--kv custom needs/],
    [['--kv', 'llama-3.1-8b', '--block-sizes', '4K'], /drop --block-sizes/],
  ])('refuses %j', (argv, match) => {
    usageError(() => parseBenchArgs(argv as string[]), match as RegExp)
  })
})

describe('blocks and memory per point', () => {
  it('--reuse decides which blocks requests share', () => {
    const base = parse('--block-sizes', '4K', '--batch-sizes', '8', '--in-flight', '4')
    expect(distinctBlocks(base, 8)).toBe(8)
    expect([blockIndex(base, 8, 0, 3), blockIndex(base, 8, 2, 3)]).toEqual([3, 3])
    const none = { ...base, reuse: 'none' as const }
    expect(distinctBlocks(none, 8)).toBe(32)
    expect([blockIndex(none, 8, 0, 3), blockIndex(none, 8, 2, 3)]).toEqual([3, 19])
    const all = { ...base, reuse: 'all' as const }
    expect(distinctBlocks(all, 8)).toBe(1)
    expect(blockIndex(all, 8, 3, 7)).toBe(0)
    expect(pointsBytes(none)).toEqual([4 * K * 32])
  })
})

describe('--kv', () => {
  it('turns tokens into one descriptor per layer, K/V and block', () => {
    const o = parse('--kv', 'llama-3.1-8b', '--tokens', '1000,4K')
    expect(o.kv).toMatchObject({ model: 'llama-3.1-8b', layers: 32, kvHeads: 8, headDim: 128, dtype: 'bf16', blockTokens: 16, tokens: [1000, 4096] })
    expect(kvBlockBytes(o.kv!)).toBe(16 * 8 * 128 * 2)
    expect(kvBlocks(o.kv!, 1000)).toBe(32 * 2 * 63)
    expect(kvBytesPerToken(o.kv!)).toBe(128 * K)
  })

  it('custom shapes and overrides', () => {
    const o = parse('--kv', 'custom', '--layers', '2', '--kv-heads', '1', '--head-dim', '64', '--dtype', 'fp8', '--block-tokens', '32', '--tokens', '64')
    expect(kvBlockBytes(o.kv!)).toBe(32 * 64)
    expect(kvBlocks(o.kv!, 64)).toBe(2 * 2 * 2)
    expect(parse('--kv', 'Qwen2.5-7B', '--dtype', 'fp32').kv).toMatchObject({ model: 'qwen2.5-7b', kvHeads: 4, dtype: 'fp32' })
  })

  it('every preset has a sane shape', () => {
    for (const [name, shape] of Object.entries(KV_MODELS)) {
      expect(shape.layers, name).toBeGreaterThan(0)
      expect(kvBytesPerToken(shape), name).toBeGreaterThanOrEqual(16 * K)
    }
  })
})
