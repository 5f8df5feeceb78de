// What UCX and NIXL print: nothing by default for a plain run (kvxfer's own UCX settings never
// make UCX warn, whatever the transports), and KVXFER_LOG_LEVEL is the one knob for both.
import { describe, expect, it } from 'vitest'
import { ENGINES } from '../fixtures/index.js'
import { explain, runFixture } from '../fixtures/peers.js'

describe.each(ENGINES)('%s engine', (engine) => {
  it.each(['tcp', ''])('an agent with transports %j: UCX prints no warning', async (transports) => {
    const run = await runFixture('two-agents.mjs', [engine, transports], { timeoutMs: 30_000 })
    expect(run.code, explain(run)).toBe(0)
    expect(run.results, explain(run)).toEqual([{ ok: true }])
    expect(run.stderr, 'stderr').not.toMatch(/UCX\s+WARN|UCX\s+ERROR/)
  })

  it('KVXFER_LOG_LEVEL=info shows UCX\'s info lines; =error hides its warnings', async () => {
    const env = { ...process.env }
    delete env.UCX_LOG_LEVEL
    delete env.NIXL_LOG_LEVEL
    const info = await runFixture('two-agents.mjs', [engine, 'tcp'], { timeoutMs: 30_000, env: { ...env, KVXFER_LOG_LEVEL: 'info' } })
    expect(info.code, explain(info)).toBe(0)
    expect(info.stderr + info.stdout).toMatch(/UCX\s+INFO/)
    // NIXL's own lines (glog: I<date> …) follow the same knob.
    if (engine === 'nixl') expect(info.stderr + info.stdout).toMatch(/^I\d{4} .*nixl/m)
    // An unknown UCX variable makes UCX warn, unless the level is error.
    const quiet = await runFixture('two-agents.mjs', [engine, 'tcp'], { timeoutMs: 30_000, env: { ...env, UCX_KVXFER_NO_SUCH_SETTING: '1', KVXFER_LOG_LEVEL: 'error' } })
    expect(quiet.code, explain(quiet)).toBe(0)
    expect(quiet.stderr + quiet.stdout).not.toMatch(/UCX\s+WARN/)
    const loud = await runFixture('two-agents.mjs', [engine, 'tcp'], { timeoutMs: 30_000, env: { ...env, UCX_KVXFER_NO_SUCH_SETTING: '1' } })
    expect(loud.stderr + loud.stdout, 'the same run without the knob warns').toMatch(/UCX\s+WARN.*UCX_KVXFER_NO_SUCH_SETTING/)
  })
})
