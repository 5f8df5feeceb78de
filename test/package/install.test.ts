// The package as npm users get it: `npm pack`, then `npm install <tarball>` into an empty
// project, offline (every dependency from a local tarball, an empty npm cache, --offline), with
// no compiler, make or Python on PATH. The prebuilt binary must be what loads, no build may
// run, and from there `kvxfer --version`, `kvxfer info` and the README's two-process handoff
// (examples/handoff.mjs: 8 MiB written, SHA-256 compared at the far end) must work, from an
// ES module and from CommonJS. Where UCX's runtime is missing (libucp hidden in a mount
// namespace: root only) the install still succeeds and the first use says what to install.
//
// The prebuilt binary is made here when prebuilds/ has none newer than the native sources
// (`npm run prebuildify`, in a copy of the sources so that build/ is left alone).
// KVXFER_PACKAGE_UCX_LIBS=/opt/ucx-1.22.0/lib[:...] also runs the handoff on each of those
// UCX builds (LD_LIBRARY_PATH), to check a binary built against one UCX runs on another.
import { spawnSync, type SpawnSyncReturns } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const PREBUILD = path.join(ROOT, 'prebuilds', `${process.platform}-${process.arch}`, 'kvxfer.glibc.node')
const VERSION = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version
/** What the packed package needs at run time (package.json "dependencies"). */
const RUNTIME_DEPS = Object.keys((JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }).dependencies)
const COMPILERS = ['gcc', 'g++', 'cc', 'c++', 'clang', 'make', 'python3', 'python']
/** What npm and its install scripts need besides node: a shell and a few basic tools. */
const TOOLS = ['sh', 'env', 'cat', 'ls', 'uname', 'rm', 'mkdir']
const isRoot = process.getuid?.() === 0
const which = (tool: string) => spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).stdout.trim()
const [UNSHARE, MOUNT] = [which('unshare'), which('mount')]
const hasUnshare = UNSHARE !== '' && MOUNT !== ''
const EXTRA_UCX = (process.env.KVXFER_PACKAGE_UCX_LIBS ?? '').split(':').filter((d) => d !== '')

let tmp: string
let bin: string
let tarball: string
/** Each dependency's tarball, packed from node_modules/. */
let depTarballs: string[]
let files: string[]

function sh(command: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv; timeout?: number } = {}): SpawnSyncReturns<string> {
  return spawnSync(command, args, { encoding: 'utf8', timeout: options.timeout ?? 120_000, cwd: options.cwd, env: options.env })
}

function ok(r: SpawnSyncReturns<string>, what: string): string {
  if (r.status !== 0) throw new Error(`${what}: exit ${r.status ?? r.signal}${r.error ? ` (${r.error.message})` : ''}\n${r.stdout}\n${r.stderr}`)
  return r.stdout
}

function newestMtime(dir: string): number {
  let newest = 0
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) newest = Math.max(newest, fs.statSync(path.join(entry.parentPath, entry.name)).mtimeMs)
  }
  return newest
}

/** `npm run prebuildify` in a copy of the sources, writing prebuilds/ here. */
function prebuildify(): void {
  const stage = fs.mkdtempSync(path.join(os.tmpdir(), 'kvxfer-prebuild-'))
  try {
    for (const p of ['binding.gyp', 'package.json', 'native', 'bench/native']) fs.cpSync(path.join(ROOT, p), path.join(stage, p), { recursive: true })
    fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(stage, 'node_modules'), 'dir')
    ok(sh('npm', ['run', 'prebuildify', '--', '--cwd', stage, '--out', ROOT], { cwd: ROOT, timeout: 540_000 }), 'npm run prebuildify')
  } finally {
    fs.rmSync(stage, { recursive: true, force: true })
  }
}

/** The environment of a machine without build tools: PATH holds node, npm and TOOLS only. */
function bareEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { HOME: path.join(tmp, 'home'), PATH: bin, LANG: 'C.UTF-8', ...extra }
  for (const key of ['UCX_TLS', 'NIXL_PREFIX', 'KVXFER_NIXL_LIB', 'LD_LIBRARY_PATH']) if (process.env[key] !== undefined && !(key in extra)) env[key] = process.env[key]
  return env
}

/** `npm install` of the tarball and its dependencies into a new empty project; no registry, no cache. */
function installInto(project: string, wrap: (argv: string[]) => [string, string[]] = (argv) => [argv[0], argv.slice(1)]) {
  fs.mkdirSync(project, { recursive: true })
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }))
  const [command, args] = wrap([
    'npm', 'install', '--offline', '--no-audit', '--no-fund', '--foreground-scripts',
    '--cache', path.join(project, '.npm-cache'), tarball, ...depTarballs,
  ])
  return sh(command, args, { cwd: project, env: bareEnv(), timeout: 180_000 })
}

const installed = (project: string) => path.join(project, 'node_modules', 'kvxfer')

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvxfer-package-'))
  fs.mkdirSync(path.join(tmp, 'home'))
  if (!fs.existsSync(PREBUILD) || fs.statSync(PREBUILD).mtimeMs < Math.max(newestMtime(path.join(ROOT, 'native')), fs.statSync(path.join(ROOT, 'binding.gyp')).mtimeMs)) {
    prebuildify()
  }
  const packed = JSON.parse(ok(sh('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', tmp], { cwd: ROOT }), 'npm pack'))
  tarball = path.join(tmp, packed[0].filename)
  files = packed[0].files.map((f: { path: string }) => f.path)
  depTarballs = RUNTIME_DEPS.map((dep) => {
    const out = JSON.parse(ok(sh('npm', ['pack', '--json', '--pack-destination', tmp, path.join(ROOT, 'node_modules', dep)], { cwd: tmp }), `npm pack ${dep}`))
    return path.join(tmp, out[0].filename)
  })
  // A bin directory with node, npm and basic tools, and nothing to build with.
  bin = path.join(tmp, 'bin')
  fs.mkdirSync(bin)
  fs.symlinkSync(process.execPath, path.join(bin, 'node'))
  const npmCli = fs.realpathSync(which('npm'))
  fs.symlinkSync(npmCli, path.join(bin, 'npm'))
  fs.symlinkSync(path.join(path.dirname(npmCli), 'npx-cli.js'), path.join(bin, 'npx'))
  for (const tool of TOOLS) fs.symlinkSync(which(tool), path.join(bin, tool))
}, 600_000)

afterAll(() => {
  if (tmp !== undefined) fs.rmSync(tmp, { recursive: true, force: true })
})

describe('the packed tarball', { timeout: 300_000 }, () => {
  let project: string
  let pkgDir: string

  it('holds the prebuilt binary, the install script and the entries, and no build output', () => {
    expect(files).toContain(`prebuilds/${process.platform}-${process.arch}/kvxfer.glibc.node`)
    for (const f of ['scripts/install.js', 'dist/index.js', 'dist/index.mjs', 'dist/prometheus.js', 'dist/prometheus.mjs', 'dist/cli/main.js', 'prometheus/package.json', 'binding.gyp', 'README.md', 'CHANGELOG.md']) {
      expect(files).toContain(f)
    }
    expect(files.filter((f) => f.startsWith('build/') || f.startsWith('test/') || f.endsWith('.tgz'))).toEqual([])
  })

  it('installs offline with no compiler, make or Python on PATH, and builds nothing', () => {
    for (const tool of COMPILERS) {
      expect(sh('sh', ['-c', `command -v ${tool}`], { env: bareEnv() }).status, `${tool} must not be on the bare PATH`).not.toBe(0)
    }
    project = path.join(tmp, 'project')
    const r = installInto(project)
    expect(r.status, `npm install:\n${r.stdout}\n${r.stderr}`).toBe(0)
    pkgDir = installed(project)
    expect(fs.existsSync(path.join(pkgDir, 'build')), 'a build/ directory: something was compiled').toBe(false)
    expect(r.stdout + r.stderr).not.toMatch(/gyp|building from source/)
    // The binary that loads is the prebuilt one.
    const which = ok(sh('node', ['-p', "require('node-gyp-build').resolve(require('node:path').dirname(require.resolve('kvxfer/package.json')))"], { cwd: project, env: bareEnv() }), 'resolve')
    expect(which.trim()).toBe(path.join(fs.realpathSync(pkgDir), 'prebuilds', `${process.platform}-${process.arch}`, 'kvxfer.glibc.node'))
  })

  it('runs kvxfer --version and kvxfer info from there', () => {
    expect(ok(sh('npx', ['--offline', 'kvxfer', '--version'], { cwd: project, env: bareEnv() }), 'kvxfer --version')).toBe(`${VERSION}\n`)
    const info = ok(sh('npx', ['--offline', 'kvxfer', 'info'], { cwd: project, env: bareEnv() }), 'kvxfer info')
    expect(info).toMatch(new RegExp(`^kvxfer ${VERSION.replace(/\./g, '\\.')} \\(node v`))
    expect(info).toMatch(/^ {2}ucx {3}available, version \d+\.\d+/m)
  })

  it("runs the README's two-process handoff from there (ESM), and the CommonJS entry loads the same addon", () => {
    fs.copyFileSync(path.join(ROOT, 'examples', 'handoff.mjs'), path.join(project, 'handoff.mjs'))
    const out = ok(sh('node', ['handoff.mjs'], { cwd: project, env: bareEnv(), timeout: 120_000 }), 'node handoff.mjs')
    expect(out).toMatch(/decode has the same bytes$/m)
    const cjs = ok(sh('node', ['-e', "const k = require('kvxfer'); console.log(k.info().engines.ucx.available, typeof k.Agent.create)"], { cwd: project, env: bareEnv() }), 'require')
    expect(cjs).toBe('true function\n')
    // prom-client is an optional peer, not installed here: only kvxfer/prometheus needs it.
    const prom = sh('node', ['-e', "require('kvxfer/prometheus')"], { cwd: project, env: bareEnv() })
    expect(prom.status).not.toBe(0)
    expect(prom.stderr).toMatch(/Cannot find module 'prom-client'/)
  })

  it.each(EXTRA_UCX.length > 0 ? EXTRA_UCX : ['(set KVXFER_PACKAGE_UCX_LIBS to run the handoff on other UCX builds)'])(
    'runs the handoff with LD_LIBRARY_PATH=%s',
    (lib) => {
      if (EXTRA_UCX.length === 0) return
      const env = bareEnv({ LD_LIBRARY_PATH: lib })
      const version = ok(sh('node', ['-p', "require('kvxfer').info().engines.ucx.version"], { cwd: project, env }), 'info')
      expect(version.trim()).toMatch(/^\d+\.\d+/)
      const out = ok(sh('node', ['handoff.mjs'], { cwd: project, env, timeout: 120_000 }), `handoff on ${lib}`)
      expect(out).toMatch(/decode has the same bytes$/m)
      console.log(`handoff ok with UCX ${version.trim()} from ${lib}`)
    },
  )
})

describe.skipIf(!isRoot || !hasUnshare)(`without UCX's runtime libraries${isRoot && hasUnshare ? '' : ' (skipped: needs root and unshare to hide libucp)'}`, { timeout: 300_000 }, () => {
  /** Runs argv (found on the bare PATH) with libucp replaced by an empty file, in a mount namespace of its own. */
  const hidden = (argv: string[]): [string, string[]] => {
    const ldd = ok(sh('ldd', [PREBUILD]), 'ldd')
    const libucp = /libucp\.so\.\d+ => (\S+)/.exec(ldd)?.[1]
    if (libucp === undefined) throw new Error(`ldd does not show libucp:\n${ldd}`)
    const quoted = argv.map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ')
    return [UNSHARE, ['--mount', '--propagation', 'private', 'sh', '-c', `${MOUNT} --bind /dev/null '${fs.realpathSync(libucp)}' && exec ${quoted}`]]
  }

  it('the install succeeds and says what to apt-get install; the first use throws a KvxferError that says it too', () => {
    const project = path.join(tmp, 'no-ucx')
    const r = installInto(project, hidden)
    expect(r.status, `npm install:\n${r.stdout}\n${r.stderr}`).toBe(0)
    expect(r.stdout + r.stderr).toMatch(/cannot load here: UCX's runtime libraries are missing/)
    expect(r.stdout + r.stderr).toMatch(/apt-get install libucx0/)
    expect(fs.existsSync(path.join(installed(project), 'build'))).toBe(false)

    const probe = [
      "const kvxfer = await import('kvxfer')", // importing never throws
      'try { await kvxfer.Agent.create(); console.log("created") }',
      'catch (e) { console.log(JSON.stringify({ kvxfer: e instanceof kvxfer.KvxferError, code: e.code, message: e.message })) }',
    ].join('\n')
    const [command, args] = hidden(['node', '--input-type=module', '-e', probe])
    const out = JSON.parse(ok(sh(command, args, { cwd: project, env: bareEnv() }), 'probe'))
    expect(out).toMatchObject({ kvxfer: true, code: 'ERR_ENGINE' })
    expect(out.message).toMatch(/UCX is not installed or not on the loader path/)
    expect(out.message).toMatch(/apt-get install libucx0/)
    expect(out.message).toMatch(/libucp\.so/)
    // The same binary loads once the library is back: it was the missing UCX, nothing else.
    expect(ok(sh('node', ['-p', "require('kvxfer').info().engines.ucx.available"], { cwd: project, env: bareEnv() }), 'info')).toBe('true\n')
  })
})
