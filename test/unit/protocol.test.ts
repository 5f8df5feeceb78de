// native/protocol.h is the one source of the constants the addon and the
// library share: lib/protocol.ts is generated from it, and the addon exports
// the same tables, which the loader compares at load.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { describe, expect, it } from 'vitest'
import { LIBRARY_PROTOCOL, binding, protocolMismatches } from '../../dist/native.js'
import { ErrorCode, KvxferError } from '../../dist/index.js'

const require = createRequire(import.meta.url)
const generator = require('../../scripts/gen-protocol.js') as { generate(): string; outputPath: string }

describe('protocol', () => {
  it('lib/protocol.ts is what native/protocol.h generates', () => {
    expect(readFileSync(generator.outputPath, 'utf8')).toBe(generator.generate())
  })

  it("the loaded addon's tables are the library's", () => {
    expect(binding().protocol).toEqual(LIBRARY_PROTOCOL)
    expect(protocolMismatches(binding().protocol)).toEqual([])
  })

  it('an addon with other tables is named table by table', () => {
    const stale = structuredClone(binding().protocol)
    stale.MEM_KIND.file = 7
    stale.LIMITS.DescListVersion = 2
    const problems = protocolMismatches(stale)
    expect(problems).toHaveLength(2)
    expect(problems[0]).toMatch(/^MEM_KIND: library .*"file":2.*, addon .*"file":7/)
    expect(problems[1]).toMatch(/^LIMITS: /)
    expect(protocolMismatches(undefined)).toEqual(['the addon exports no protocol tables'])
  })

  it('errors the addon raises carry the public codes', () => {
    const codes = Object.values(ErrorCode)
    expect(codes).toEqual([...LIBRARY_PROTOCOL.ERROR_CODES])
    let thrown: unknown
    try {
      new (binding().NativeAgent)('', { engine: 'ucx' }, () => {})
    } catch (error) {
      thrown = error
    }
    expect(thrown).toBeInstanceOf(KvxferError)
    expect((thrown as KvxferError).code).toBe(ErrorCode.INVALID_ARG)
  })
})
