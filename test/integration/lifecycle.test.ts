// Proves kvxfer is safe across object and process lifetimes. Each scenario runs in a child
// process (test/fixtures/gc.mjs, exit.mjs, workers.mjs, worker-ends.mjs) and the test checks its
// exit code, signal and output:
//  - GC (`node --expose-gc` children): registered memory with no JS reference survives GC and
//    moves correct bytes; in-flight transfers survive GC; deregistered buffers and closed
//    agents are collectable; dropped, unclosed agents do not crash;
//  - process exit: an idle agent lets a process exit; a pending transfer or an awaited
//    notification keeps it alive; process.exit() with transfers in flight does not crash;
//    Buffers from view() stay valid after deregister()/close();
//  - worker_threads: agents in two workers transfer to each other; terminating a worker with
//    a live, busy agent does not crash; workers that end with agents open do not crash;
//  - close() from the handler of a registration that timed out: nothing throws, close() resolves.
// The in-process half (close() under load, more than 4 GiB) is test/unit/lifecycle.test.ts.
import { afterEach, describe, expect, it } from 'vitest'
import { Agent } from '../../dist/index.js'
import { MiB, closeAll, uniqueName } from '../fixtures/index.js'
import { explain, killAllChildren, runFixture, startFixture } from '../fixtures/peers.js'

afterEach(() => killAllChildren(), 30_000)

describe('GC safety (node --expose-gc)', { timeout: 90_000 }, () => {
  it.each([
    'registered-buffer-survives-gc',
    'gc-during-transfers',
    'deregistered-buffer-is-collectable',
    'closed-agent-is-collectable',
    'dropped-without-close',
    'allocate-reused-memory-is-zero',
  ])('%s', async (scenario) => {
    const run = await runFixture('gc.mjs', [scenario], { execArgv: ['--expose-gc'], timeoutMs: 60_000 })
    expect(run.code, explain(run)).toBe(0)
    expect(run.signal, explain(run)).toBeNull()
    expect(run.results, explain(run)).toEqual([{ ok: true }])
  })
})

describe('process lifetime', { timeout: 60_000 }, () => {
  it.each(['idle', 'idle-after-work'])('an %s agent (never closed) lets the process exit by itself', async (scenario) => {
    const run = await runFixture('exit.mjs', [scenario], { timeoutMs: 20_000 })
    expect(run.code, explain(run)).toBe(0)
    expect(run.signal, explain(run)).toBeNull()
    expect(run.stdout).toContain('READY')
  })

  it('a pending transfer keeps the process alive until it completes (top-level await)', async () => {
    const run = await runFixture('exit.mjs', ['pending-write'], { timeoutMs: 30_000 })
    expect(run.code, `exit code 13 means the event loop emptied with the write still pending\n${explain(run)}`).toBe(0)
    expect(run.results).toEqual([{ bytes: 64 * MiB }])
  })

  it('an awaited waitForNotification (timeoutMs 1500) keeps the process alive, which exits after the timeout', async () => {
    const child = startFixture('exit.mjs', ['wait-timeout'])
    await child.waitForLine('READY', 20_000)
    await new Promise((resolve) => setTimeout(resolve, 500))
    expect(child.alive, `exited while waiting\n${child.stdout}\n${child.stderr}`).toBe(true)
    const run = await child.finish(20_000)
    expect(run.code, explain(run)).toBe(0)
    expect(run.results).toEqual([{ code: 'ERR_TIMEOUT' }])
  })

  it('an awaited waitForNotification with no timeout keeps the process alive until a notification from another process wakes it', async () => {
    const me = await Agent.create({ name: uniqueName('waker') })
    try {
      const child = startFixture('exit.mjs', ['wait-external', me.name])
      const line = await child.waitForLine('META ', 20_000)
      const childName = await me.loadPeer(Buffer.from(line.slice(5), 'base64'))
      await new Promise((resolve) => setTimeout(resolve, 500))
      expect(child.alive, `the child exited with its waitForNotification pending\n${child.stdout}\n${child.stderr}`).toBe(true)
      await me.notify(childName, 'wake')
      const run = await child.finish(20_000)
      expect(run.code, explain(run)).toBe(0)
      expect(run.results).toEqual([{ message: 'wake', peer: me.name }])
    } finally {
      await closeAll(me)
    }
  })

  it('process.exit() with 50 transfers in flight and nothing closed exits cleanly', async () => {
    const run = await runFixture('exit.mjs', ['exit-during-transfers'], { timeoutMs: 30_000 })
    expect(run.signal, explain(run)).toBeNull()
    expect(run.code, explain(run)).toBe(0)
    expect(run.stdout).toContain('READY')
  })

  it('Buffers from region.view() stay valid memory after deregister() and close()', async () => {
    const run = await runFixture('exit.mjs', ['views-outlive-regions'], { timeoutMs: 30_000 })
    expect(run.signal, explain(run)).toBeNull()
    expect(run.code, explain(run)).toBe(0)
    expect(run.results).toEqual([{ ok: true }])
  })
})

describe('worker_threads', { timeout: 90_000 }, () => {
  it('agents in two workers move bytes to each other (checked by hash)', async () => {
    const run = await runFixture('workers.mjs', ['transfer'], { timeoutMs: 60_000 })
    expect(run.code, explain(run)).toBe(0)
    expect(run.results).toEqual([{ ok: true }])
  })

  it('terminating a worker whose agent is live and busy does not crash; other agents keep working', async () => {
    const run = await runFixture('workers.mjs', ['terminate'], { timeoutMs: 60_000 })
    expect(run.signal, explain(run)).toBeNull()
    expect(run.code, explain(run)).toBe(0)
    expect(run.results).toMatchObject([{ ok: true }])
  })
})

describe('workers that end with agents open', { timeout: 90_000 }, () => {
  // The library's libuv handles close asynchronously; a worker that is its only user unloads it
  // right after its cleanup hooks, so the handles must be closed before that, not after.
  it.each(['sole-user-returns', 'sole-user-exits', 'sole-user-terminated', 'shared-exits-and-terminations'])('%s: no crash', async (scenario) => {
    const run = await runFixture('worker-ends.mjs', [scenario], { timeoutMs: 60_000 })
    expect(run.signal, explain(run)).toBeNull()
    expect(run.code, explain(run)).toBe(0)
    expect(run.results, explain(run)).toMatchObject([{ ok: true }])
  })
})

describe('close()', { timeout: 60_000 }, () => {
  it.each(['', 'busy'])('close() from the handler of a registration that timed out (%s): nothing throws, close() resolves', async (arg) => {
    const run = await runFixture('exit.mjs', ['late-registration-close', arg], { timeoutMs: 30_000 })
    expect(run.signal, explain(run)).toBeNull()
    expect(run.code, explain(run)).toBe(0)
    expect(run.results, explain(run)).toEqual([{ ok: true, allocate: 'ERR_TIMEOUT' }])
  })
})
