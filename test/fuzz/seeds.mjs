// Writes the seed corpus of the native fuzz targets (test/fuzz/native/) from
// real blobs: UCX metadata of agents with no, one and several regions (a
// registered Buffer, allocate()d memory, a narrowed blob), and encoded
// descriptor lists. Run it again after a format change:
//   node test/fuzz/seeds.mjs
import { mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Agent, DescList } from '../../dist/index.js'

const CORPUS = join(dirname(fileURLToPath(import.meta.url)), 'corpus')

function write(target, name, bytes) {
  mkdirSync(join(CORPUS, target), { recursive: true })
  writeFileSync(join(CORPUS, target, name), bytes)
}

for (const target of ['ucx_metadata', 'desc_list']) rmSync(join(CORPUS, target), { recursive: true, force: true })

// Shared memory only: the worker address then names no network interface of this machine.
const agent = await Agent.create({ name: 'fuzz-seed', engine: 'ucx', transports: 'sm,self' })
try {
  write('ucx_metadata', 'no-regions', agent.metadata())
  const buffer = await agent.register(Buffer.alloc(64 << 10))
  write('ucx_metadata', 'one-region', agent.metadata())
  const pool = await agent.allocate(1 << 20)
  await agent.register(new Uint8Array(4096))
  write('ucx_metadata', 'three-regions', agent.metadata())
  write('ucx_metadata', 'narrowed', agent.metadata({ regions: [pool] }))

  write('desc_list', 'one', DescList.from([buffer.slice(0, 4096)]).encode())
  write('desc_list', 'blocks', DescList.from(Array.from({ length: 16 }, (_, i) => pool.slice(i * 4096, 4096))).encode())
  write('desc_list', 'devices', DescList.from([{ address: 1n << 40n, length: 1 << 20, device: 3 }, { address: 0xffff_ffff_0000n, length: 65536, device: 0 }]).encode())
} finally {
  await agent.close()
}
console.log(`seeds written under ${CORPUS}`)
