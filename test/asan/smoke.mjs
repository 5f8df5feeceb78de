// The valgrind smoke (scripts/valgrind-smoke.sh): two agents in one process, each path of the
// addon once: allocate() and a registered Buffer, WRITE with a notification, READ, a prepared
// transfer posted twice, a refused descriptor, deregister, close. Exits non-zero on wrong bytes.
import { Agent } from '../../dist/index.js'

const MiB = 1 << 20
const fail = (why) => {
  console.error(`smoke: ${why}`)
  process.exit(1)
}
const a = await Agent.create({ name: `vg-a-${process.pid}` })
const b = await Agent.create({ name: `vg-b-${process.pid}` })
const ra = await a.allocate(MiB)
const bytesB = Buffer.alloc(MiB)
const rb = await b.register(bytesB)
await a.loadPeer(b.metadata())
await b.loadPeer(a.metadata())

const pattern = (seed) => Buffer.from(Array.from({ length: MiB }, (_, i) => (i * 31 + seed) & 255))
ra.view().set(pattern(1))
const arrived = b.waitForNotification(a.name, 'written', { timeoutMs: 60_000 })
await a.write(ra, rb, b.name, { notify: 'written', timeoutMs: 60_000 })
await arrived
if (!bytesB.equals(pattern(1))) fail('WRITE: wrong bytes at the destination')

bytesB.set(pattern(2))
await a.read(ra, rb, b.name, { timeoutMs: 60_000 })
if (!Buffer.from(ra.view()).equals(pattern(2))) fail('READ: wrong bytes')

const transfer = a.prepare({ op: 'write', local: ra.slice(0, 4096), remote: rb.slice(8192, 4096), peer: b.name })
for (const seed of [3, 4]) {
  ra.view(0, 4096).set(pattern(seed).subarray(0, 4096))
  await transfer.post({ timeoutMs: 60_000 })
  if (!bytesB.subarray(8192, 8192 + 4096).equals(pattern(seed).subarray(0, 4096))) fail(`prepared post ${seed}: wrong bytes`)
}
transfer.release()

try {
  await a.write(ra, { address: rb.address + BigInt(MiB), length: MiB }, b.name)
  fail('a descriptor past the peer region was accepted')
} catch (error) {
  if (error?.code !== 'ERR_OUT_OF_RANGE' && error?.code !== 'ERR_NOT_REGISTERED') fail(`a descriptor past the region: ${error}`)
}

await rb.deregister()
await a.close()
await b.close()
console.log('smoke: ok')
