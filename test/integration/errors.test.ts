// Proves ERR_PEER_UNREACHABLE: a peer process killed with SIGKILL fails the transfers and
// notifications sent to it, with the engine's status and the caller's stack, and the agent keeps
// working with live peers. The other error codes need no second process:
// test/unit/errors.test.ts, whose NIXL skip report covers these cases too.
import { afterEach, describe, expect, it } from 'vitest'
import { KvxferError } from '../../dist/index.js'
import {
  ENGINES, MiB, closeAll, createAgent, exchangeMetadata, fillBytes, rdesc, rejectsWith, settle, sha256, within,
} from '../fixtures/index.js'
import { disposeAllPeers, spawnPeer } from '../fixtures/peers.js'

describe.each(ENGINES)('%s engine', (engine) => {
  const nixl = engine === 'nixl'

  describe('ERR_PEER_UNREACHABLE (a peer process killed with SIGKILL)', { timeout: 90_000 }, () => {
    afterEach(() => disposeAllPeers(), 30_000)

    // Over tcp the kernel closes a killed process's sockets, so UCX sees the connection reset and
    // the transfer must fail with ERR_PEER_UNREACHABLE well before our timeoutMs: ERR_TIMEOUT is
    // NOT accepted here.
    it('tcp: a write and a notify to a peer that was connected and then killed reject with ERR_PEER_UNREACHABLE', async () => {
      const c = await createAgent('dead-tcp', { engine, transports: 'tcp' })
      try {
        const rc = await c.allocate(MiB)
        const p = await spawnPeer({ engine, transports: 'tcp' })
        const pr = await p.allocate(MiB)
        const pName = await exchangeMetadata(c, p)
        // the connection works
        const want = sha256(fillBytes(rc.view(), 5))
        await c.write(rc, rdesc(pr, 0, MiB), pName)
        expect(await p.hash(pr)).toBe(want)

        await p.kill('SIGKILL')

        const e = await rejectsWith(() => c.write(rc, rdesc(pr, 0, MiB), pName, { timeoutMs: 20_000 }), 'ERR_PEER_UNREACHABLE', 30_000)
        // On one host the owner thread sees the process end (its pidfd) before any transport
        // does, and says which process; where the engine saw it first, its own status rides along.
        if (e.engineStatus === undefined) expect(e.message).toMatch(/ \(pid \d+\) (exited|is not running)$/)
        else expect(e.engineStatus, 'engineStatus').toMatch(nixl ? /^NIXL_/ : /^UCS_ERR_/)
        expect(e.stack, 'the caller\'s stack').toContain('errors.test')
        await rejectsWith(() => c.notify(pName, 'anyone there?', { timeoutMs: 20_000 }), 'ERR_PEER_UNREACHABLE', 30_000)

        // the agent still works with a live peer
        const q = await spawnPeer({ engine, transports: 'tcp' })
        const qr = await q.allocate(MiB)
        const qName = await exchangeMetadata(c, q)
        const want2 = sha256(fillBytes(rc.view(), 6))
        await c.write(rc, rdesc(qr, 0, MiB), qName)
        expect(await q.hash(qr)).toBe(want2)
      } finally {
        await closeAll(c)
      }
    })

    it('tcp: a write to a peer killed right after the metadata exchange rejects with ERR_PEER_UNREACHABLE', async () => {
      const c = await createAgent('dead-tcp2', { engine, transports: 'tcp' })
      try {
        const rc = await c.allocate(MiB)
        const p = await spawnPeer({ engine, transports: 'tcp' })
        const pr = await p.allocate(MiB)
        const pName = await exchangeMetadata(c, p)
        await p.kill('SIGKILL')
        await rejectsWith(() => c.write(rc, rdesc(pr, 0, MiB), pName, { timeoutMs: 20_000 }), 'ERR_PEER_UNREACHABLE', 30_000)
      } finally {
        await closeAll(c)
      }
    })

    // Over the default (shared memory) transports nothing tells UCX at once that the peer died: a
    // put through a shared-memory mapping of the dead process's segment can even succeed, and UCX
    // notices a dead peer only through its keepalive. So here we prove only that the promise
    // SETTLES within our timeoutMs: it resolves, or rejects with ERR_PEER_UNREACHABLE (UCX noticed)
    // or ERR_TIMEOUT (our timeoutMs fired first). Nothing else, and it must not hang.
    it('default transports: a write to a killed peer settles (resolves, ERR_PEER_UNREACHABLE or ERR_TIMEOUT)', async () => {
      const c = await createAgent('dead-sm', { engine })
      try {
        const rc = await c.allocate(MiB)
        const p = await spawnPeer({ engine })
        const pr = await p.allocate(MiB)
        const pName = await exchangeMetadata(c, p)
        await c.write(rc, rdesc(pr, 0, MiB), pName)
        await p.kill('SIGKILL')
        const outcome = await within(settle(c.write(rc, rdesc(pr, 0, MiB), pName, { timeoutMs: 5_000 })), 30_000, 'write to a dead peer')
        console.info(`write to a killed peer over the default transports: ${outcome.ok ? 'resolved' : (outcome.error as KvxferError).code}`)
        if (!outcome.ok) {
          expect(outcome.error).toBeInstanceOf(KvxferError)
          expect(['ERR_PEER_UNREACHABLE', 'ERR_TIMEOUT']).toContain((outcome.error as KvxferError).code)
        }
      } finally {
        await closeAll(c)
      }
    })
  })
})
