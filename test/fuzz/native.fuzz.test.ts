// The native fuzz targets (test/fuzz/native/: libFuzzer under ASan and UBSan, seeded from the
// real blobs in test/fuzz/corpus/) run here with 10^6 inputs each, which takes seconds:
// `npm run test:fuzz` is the same run on its own (RUNS=... for more). A crash, a sanitizer
// report, a leak or a timeout leaves its input under build/fuzz/<target>/ and fails this test.
// Skips, with the reason, where clang or libFuzzer is missing.
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

const ROOT = join(__dirname, '..', '..')
const TARGETS = ['desc_list', 'ucx_metadata', 'nixl_envelope', 'plan_builder', 'control_frame']
const RUNS = Number(process.env.KVXFER_FUZZ_RUNS ?? 1_000_000)

function clangAbsence(): string | null {
  const clang = ['clang++', 'clang++-14'].find((c) => spawnSync(c, ['--version'], { stdio: 'ignore' }).status === 0)
  if (clang === undefined) return 'no clang++ (Debian: apt-get install clang libclang-rt-dev; scripts/setup.sh does)'
  const probe = spawnSync(clang, ['-fsanitize=fuzzer', '-x', 'c++', '-', '-o', '/dev/null'], {
    input: 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }',
  })
  return probe.status === 0 ? null : `${clang} cannot link libFuzzer (Debian: apt-get install libclang-rt-dev)`
}

const absent = clangAbsence()

describe(`native fuzz targets${absent ? ` [skipped: ${absent}]` : ''}`, { timeout: 600_000 }, () => {
  it('every target has a seed corpus of real blobs', () => {
    for (const t of TARGETS) expect(existsSync(join(ROOT, 'test', 'fuzz', 'corpus', t)), t).toBe(true)
  })

  it.skipIf(absent !== null).each(TARGETS)(`%s: ${RUNS.toLocaleString('en')} inputs, no crash, no sanitizer report`, (target) => {
    const r = spawnSync('make', ['-s', '-C', 'test/fuzz/native', 'run', `RUNS=${RUNS}`, `TARGETS=${target}`], { cwd: ROOT, encoding: 'utf8', timeout: 540_000 })
    const output = r.stdout + r.stderr
    expect(r.status, output).toBe(0)
    expect(output).toMatch(new RegExp(`== ${target}: ok`))
    expect(Number(/stat::number_of_executed_units: (\d+)/.exec(output)?.[1])).toBeGreaterThanOrEqual(RUNS)
  })
})
