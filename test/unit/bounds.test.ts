// One AbortSignal bounding many operations at once: every one of them settles when it aborts,
// none is left listening after it settled, and Node's listener-leak warning never fires.
import { describe, expect, it } from 'vitest'
import { MiB, closeAll, createAgents, exchangeMetadata, expectKvxferError, settle } from '../fixtures/index.js'

function recordWarnings(): { warnings: Error[]; stop: () => void } {
  const warnings: Error[] = []
  const onWarning = (warning: Error) => warnings.push(warning)
  process.on('warning', onWarning)
  return { warnings, stop: () => process.off('warning', onWarning) }
}

describe('one AbortSignal for many operations', () => {
  it('200 writes and 50 waits under one signal: no MaxListenersExceededWarning; the abort rejects every wait ERR_ABORTED', async () => {
    const [a, b] = await createAgents(2, 'one-signal')
    const recorder = recordWarnings()
    try {
      const local = await a.allocate(MiB)
      const remote = await b.allocate(MiB)
      const name = await exchangeMetadata(a, b)
      const controller = new AbortController()
      const signal = controller.signal
      const writes = await Promise.all(Array.from({ length: 200 }, () => a.write(local, remote, name, { signal })))
      expect(writes.every((w) => w.bytes === MiB)).toBe(true)
      const waits = Array.from({ length: 50 }, (_, i) => settle(a.waitForNotification(name, `never-${i}`, { signal })))
      controller.abort()
      for (const outcome of await Promise.all(waits)) {
        expect(outcome.ok).toBe(false)
        expectKvxferError((outcome as { error: unknown }).error, 'ERR_ABORTED')
      }
      // The warning is emitted on the next tick: give it one.
      await new Promise((resolve) => setImmediate(resolve))
      expect(recorder.warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([])
    } finally {
      recorder.stop()
      await closeAll(a, b)
    }
  })
})
