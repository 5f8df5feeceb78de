// The tooling lives outside the library: cli/ (the kvxfer command) and bench/ (the harness
// behind `kvxfer bench`) use kvxfer's public API only, imported by the package name, and
// lib/ holds the library alone. Reads source files; starts no process.
import { readFileSync, readdirSync } from 'node:fs'
import { dirname, join, relative, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import ts from 'typescript'
import { describe, expect, it } from 'vitest'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const TOOLS = ['cli', 'bench']

function files(dir: string, ending: RegExp): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => ending.test(f) && !f.split(sep).includes('node_modules'))
    .map((f) => join(dir, f))
}

/** Every module specifier in a TypeScript source: import/export ... from, import(), require(), require.resolve(). */
// The package's entry points, as its "exports" map names them.
const PUBLIC_ENTRIES = Object.keys((JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { exports: Record<string, unknown> }).exports)
  .map((key) => (key === '.' ? 'kvxfer' : `kvxfer/${key.slice(2)}`))

function specifiers(source: string): string[] {
  const patterns = [
    /\b(?:import|export)\s[^'";]*?\bfrom\s*['"]([^'"]+)['"]/g,
    /^\s*import\s*['"]([^'"]+)['"]/gm,
    /\bimport\s*\(\s*['"]([^'"]+)['"]/g,
    /\brequire(?:\.resolve)?\s*\(\s*['"]([^'"]+)['"]/g,
  ]
  return patterns.flatMap((p) => [...source.matchAll(p)].map((m) => m[1]))
}

/** Why `spec`, imported by `file`, reaches past the public API; undefined when it does not. */
function offence(file: string, spec: string): string | undefined {
  if (spec.startsWith('node:') || PUBLIC_ENTRIES.includes(spec)) return undefined
  if (spec.startsWith('kvxfer/')) return `a path inside the kvxfer package (its API is ${PUBLIC_ENTRIES.join(', ')})`
  if (spec.startsWith('/')) return 'an absolute path'
  if (!spec.startsWith('.')) return undefined // another package
  const target = relative(ROOT, join(ROOT, dirname(file), spec)).split(sep)
  if (!TOOLS.includes(target[0])) return `outside cli/ and bench/ (${target.join('/')}): import the library as 'kvxfer'`
  return undefined
}

describe('cli/ and bench/ use the public API only', () => {
  const sources = TOOLS.flatMap((dir) => files(dir, /\.ts$/))

  it('finds the tools and their imports', () => {
    expect(sources).toContain(join('cli', 'main.ts'))
    expect(sources).toContain(join('bench', 'index.ts'))
    expect(specifiers(readFileSync(join(ROOT, 'cli', 'main.ts'), 'utf8'))).toContain('kvxfer')
  })

  it('no .ts under cli/ or bench/ imports lib/, dist/ or a file inside the package', () => {
    const bad = sources.flatMap((file) =>
      specifiers(readFileSync(join(ROOT, file), 'utf8')).flatMap((spec) => {
        const why = offence(file, spec)
        return why === undefined ? [] : [`${file}: '${spec}': ${why}`]
      }),
    )
    expect(bad).toEqual([])
  })

  it('the check catches what it is for', () => {
    expect(offence('bench/initiator.ts', '../lib/index')).toMatch(/outside cli\/ and bench\//)
    expect(offence('bench/baselines/memcpy.ts', '../../lib/native')).toMatch(/outside/)
    expect(offence('cli/main.ts', '../dist/native.js')).toMatch(/outside/)
    expect(offence('cli/main.ts', 'kvxfer/dist/native.js')).toMatch(/inside the kvxfer package/)
    expect(offence('cli/main.ts', '../bench/index')).toBeUndefined()
    expect(specifiers("import x from '../lib/a';\nimport type { Y } from \"../lib/b\"\nconst z = require('../lib/c')\nawait import('../lib/d')"))
      .toEqual(['../lib/a', '../lib/b', '../lib/d', '../lib/c'])
  })
})

describe('lib/ is the library alone', () => {
  const sources = files('lib', /\.ts$/)

  it('holds no command or benchmark code', () => {
    expect(sources.length).toBeGreaterThan(0)
    expect(sources.filter((f) => /(^|[/\\])(cli|bench)([/\\.]|$)/.test(relative('lib', f)))).toEqual([])
    for (const file of sources) {
      const source = readFileSync(join(ROOT, file), 'utf8')
      expect(source.startsWith('#!'), `${file} is a command`).toBe(false)
      expect(specifiers(source).filter((s) => /(^|\/)(cli|bench)(\/|$)/.test(s)), file).toEqual([])
      expect(source, file).not.toMatch(/memcpyBench/)
    }
  })

  it('the library build does not compile the tools', () => {
    const { config } = ts.readConfigFile(join(ROOT, 'tsconfig.json'), ts.sys.readFile)
    const tsconfig = config as { include: string[]; compilerOptions: { rootDir: string } }
    expect(tsconfig.compilerOptions.rootDir).toBe('lib')
    expect(tsconfig.include).toEqual(['lib/**/*.ts'])
  })
})
