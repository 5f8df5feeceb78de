// Proves the published typings are the public API and nothing else, and that
// they are right for both kinds of consumer: the package is packed as
// `npm pack` would publish it, unpacked into a temporary node_modules, and
// an ES module and a CommonJS consumer (./fixtures) are type-checked against
// it under module/moduleResolution nodenext with skipLibCheck off, including
// @ts-expect-error lines that reach for internals. Then every declaration
// file in the tarball is read for what it exports: the entry's values match
// what dist/index.js and dist/index.mjs export at run time, and no file
// exports a name outside the public set.
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import ts from 'typescript'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const FIXTURES = fileURLToPath(new URL('./fixtures', import.meta.url))

const PUBLIC_VALUES = ['Agent', 'DescList', 'ErrorCode', 'EtcdDiscovery', 'KvHandoff', 'KvLayout', 'KvPool', 'KvxferError', 'Region', 'RemoteKvPool', 'Transfer', 'decodeTicket', 'info']
const PUBLIC_TYPES = [
  'AgentOptions', 'AgentStats', 'CostEstimate', 'CudaSupport', 'Desc', 'DescLike', 'Descriptors', 'EngineInfo',
  'EngineName', 'EtcdConnectOptions', 'EtcdEvent', 'EtcdJoinOptions', 'EtcdMembership', 'EtcdMembershipState', 'EtcdPeer',
  'ExternalMemory', 'FileMemory', 'FetchPeerOptions', 'KvBlockOptions', 'KvDescCount', 'KvDtype', 'KvElement', 'KvHeadLayout',
  'KvLayoutOptions', 'KvOrder', 'KvPairedDescs', 'KvPart', 'KvPoolDescriptor', 'KvPoolRegion', 'KvTp', 'KvxferErrorDetails', 'KvxferInfo', 'ListenOptions', 'Memory',
  'MemoryKind', 'Notification', 'Offer', 'OfferOptions', 'OperationOptions', 'PeerEvent', 'PeerListener', 'PeerStats', 'SideChannel', 'TransferOptions', 'TransferResult',
  'TransferSpec', 'TransferTelemetry', 'Reservation', 'Stream', 'Ticket', 'TicketKind',
]
const PUBLIC = [...PUBLIC_VALUES, ...PUBLIC_TYPES].sort()
/** kvxfer/prometheus. */
const PROMETHEUS_VALUES = ['DEFAULT_DURATION_BUCKETS', 'collectMetrics']
const PROMETHEUS = [...PROMETHEUS_VALUES, 'MetricsCollector', 'MetricsOptions', 'MetricsRegistry'].sort()
/** kvxfer/cuda. */
const CUDA_VALUES = [
  'canAccessPeer', 'checksum', 'checksumHost', 'checksumPlacement', 'copyFromHost', 'copyToHost', 'deviceCount', 'fill', 'free', 'malloc',
  'memcpyDtoD', 'status', 'timeMemcpyDtoD',
]
const CUDA = [...CUDA_VALUES, 'ChecksumPlacement', 'CudaStatus', 'DevicePointer'].sort()

let tmp: string
let pkg: string
/** The declaration files in the tarball, relative to the package. */
let declarations: string[]

function run(command: string, args: string[], cwd: string): string {
  const child = spawnSync(command, args, { cwd, encoding: 'utf8', timeout: 60_000 })
  if (child.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited ${child.status ?? child.signal}\n${child.stdout}\n${child.stderr}`)
  }
  return child.stdout
}

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvxfer-types-'))
  const packed = JSON.parse(run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', tmp], ROOT))
  declarations = packed[0].files
    .map((f: { path: string }) => f.path)
    .filter((p: string) => /\.d\.[cm]?ts$/.test(p))
    .sort()
  pkg = path.join(tmp, 'node_modules', 'kvxfer')
  fs.mkdirSync(pkg, { recursive: true })
  run('tar', ['-xzf', path.join(tmp, packed[0].filename), '-C', pkg, '--strip-components=1'], tmp)
  // The consumer's own @types/node and prom-client (kvxfer's optional peer), as an installed
  // project would have them.
  fs.mkdirSync(path.join(tmp, 'node_modules', '@types'))
  for (const dep of ['@types/node', 'prom-client']) {
    fs.symlinkSync(path.join(ROOT, 'node_modules', dep), path.join(tmp, 'node_modules', dep), 'dir')
  }
  for (const name of ['consumer.mts', 'consumer.cts']) fs.copyFileSync(path.join(FIXTURES, name), path.join(tmp, name))
  fs.writeFileSync(path.join(tmp, 'package.json'), JSON.stringify({ name: 'kvxfer-consumer', private: true }))
}, 60_000)

afterAll(() => {
  if (tmp !== undefined) fs.rmSync(tmp, { recursive: true, force: true })
})

const compilerOptions = {
  module: 'nodenext',
  moduleResolution: 'nodenext',
  target: 'es2022',
  lib: ['es2022', 'esnext.disposable'],
  types: ['node'],
  strict: true,
  skipLibCheck: false,
  noEmit: true,
}

describe('the published typings', () => {
  it('type-check an ES module and a CommonJS consumer under nodenext, internals out of reach', () => {
    // Every declaration in the tarball, not only those the entry reaches:
    // none may refer to a declaration that stripInternal removed.
    const files = ['consumer.mts', 'consumer.cts', ...declarations.map((d) => `node_modules/kvxfer/${d}`)]
    fs.writeFileSync(path.join(tmp, 'tsconfig.json'), JSON.stringify({ compilerOptions, files }, null, 2))
    const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
    const child = spawnSync(process.execPath, [tsc, '-p', tmp, '--pretty', 'false'], { encoding: 'utf8', timeout: 60_000 })
    expect(child.stdout + child.stderr, 'tsc output').toBe('')
    expect(child.status).toBe(0)
  }, 60_000)

  it.each([
    { entry: 'index', names: PUBLIC, values: PUBLIC_VALUES },
    { entry: 'prometheus', names: PROMETHEUS, values: PROMETHEUS_VALUES },
    { entry: 'cuda', names: CUDA, values: CUDA_VALUES },
  ])('export from dist/$entry exactly its public names; its values are what its .js and .mjs export', ({ entry, names, values }) => {
    const [dts, dmts] = [`dist/${entry}.d.ts`, `dist/${entry}.d.mts`]
    const exports = readExports([dts, dmts])
    expect(exports.get(dts)!.all).toEqual(names)
    expect(exports.get(dmts)!.all).toEqual([...names, 'default'].sort())

    const probe = [
      "import { createRequire } from 'node:module'",
      `const cjs = createRequire(import.meta.url)(${JSON.stringify(path.join(pkg, 'dist', `${entry}.js`))})`,
      `const esm = await import(${JSON.stringify(pathToFileURL(path.join(pkg, 'dist', `${entry}.mjs`)).href)})`,
      'console.log(JSON.stringify({ cjs: Object.keys(cjs), esm: Object.keys(esm) }))',
    ].join('\n')
    const runtime = JSON.parse(run(process.execPath, ['--input-type=module', '-e', probe], tmp))
    expect(exports.get(dts)!.values).toEqual([...runtime.cjs].sort())
    expect(runtime.esm).toContain('default')
    expect(exports.get(dmts)!.values).toEqual(runtime.esm.filter((n: string) => n !== 'default').sort())
    expect([...runtime.cjs].sort()).toEqual(values)
  })

  it('declare nothing outside the public set in any file of the tarball', () => {
    expect(declarations).toContain('dist/index.d.ts')
    expect(declarations).toContain('dist/index.d.mts')
    expect(declarations).toContain('dist/prometheus.d.ts')
    expect(declarations).toContain('dist/cuda.d.ts')
    const outside: string[] = []
    for (const [file, { all }] of readExports(declarations)) {
      const allowed = file.startsWith('dist/prometheus.') ? PROMETHEUS : file.startsWith('dist/cuda.') ? CUDA : PUBLIC
      for (const name of all) if (name !== 'default' && !allowed.includes(name)) outside.push(`${file}: ${name}`)
    }
    expect(outside).toEqual([])
  })
})

interface Exported {
  /** Every exported name, sorted. */
  all: string[]
  /** Those that name a value at run time (not type-only), sorted. */
  values: string[]
}

/** What each declaration file exports, as the compiler resolves it. */
function readExports(files: string[]): Map<string, Exported> {
  const program = ts.createProgram(
    files.map((f) => path.join(pkg, f)),
    { module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, types: [], noEmit: true },
  )
  const checker = program.getTypeChecker()
  const result = new Map<string, Exported>()
  for (const file of files) {
    const source = program.getSourceFile(path.join(pkg, file))
    if (source === undefined) throw new Error(`${file} is not in the program`)
    const module = checker.getSymbolAtLocation(source)
    const symbols = module === undefined ? [] : checker.getExportsOfModule(module)
    const values = symbols.filter((symbol) => {
      const typeOnly = symbol.declarations?.some((d) => ts.isExportSpecifier(d) && (d.isTypeOnly || d.parent.parent.isTypeOnly))
      const target = symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol
      return !typeOnly && (target.flags & ts.SymbolFlags.Value) !== 0
    })
    result.set(file, {
      all: symbols.map((s) => s.name).sort(),
      values: values.map((s) => s.name).filter((n) => n !== 'default').sort(),
    })
  }
  return result
}
