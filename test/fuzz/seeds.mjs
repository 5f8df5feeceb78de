// Writes the seed corpus of the native fuzz targets (test/fuzz/native/) from
// real blobs: UCX metadata of agents with no, one and several regions (a
// registered Buffer, allocate()d memory, a narrowed blob), encoded
// descriptor lists, and control frames (test/fuzz/native/control_frame_seeds.cc,
// which needs a C++ compiler); with NIXL installed, the NIXL engine's envelopes
// too (without it that corpus is left as it is). Run it again after a format change:
//   node test/fuzz/seeds.mjs
//   NIXL_PREFIX=/opt/nixl LD_LIBRARY_PATH=<NIXL's UCX>/lib:/opt/nixl/lib/x86_64-linux-gnu node test/fuzz/seeds.mjs
import { spawnSync } from 'node:child_process'
import { mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Agent, DescList, info } from '../../dist/index.js'

const CORPUS = join(dirname(fileURLToPath(import.meta.url)), 'corpus')

function write(target, name, bytes) {
  mkdirSync(join(CORPUS, target), { recursive: true })
  writeFileSync(join(CORPUS, target, name), bytes)
}

for (const target of ['ucx_metadata', 'desc_list', 'control_frame']) rmSync(join(CORPUS, target), { recursive: true, force: true })

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
  // Whole pages of a large registered Buffer in shared memory: the region's shared-pages fields set.
  await agent.register(Buffer.alloc(2 << 20))
  write('ucx_metadata', 'shared-pages', agent.metadata())

  write('desc_list', 'one', DescList.from([buffer.slice(0, 4096)]).encode())
  write('desc_list', 'blocks', DescList.from(Array.from({ length: 16 }, (_, i) => pool.slice(i * 4096, 4096))).encode())
  write('desc_list', 'devices', DescList.from([{ address: 1n << 40n, length: 1 << 20, device: 3 }, { address: 0xffff_ffff_0000n, length: 65536, device: 0 }]).encode())
} finally {
  await agent.close()
}
if (info().engines.nixl.available) {
  rmSync(join(CORPUS, 'nixl_envelope'), { recursive: true, force: true })
  const nixl = await Agent.create({ name: 'fuzz-seed-nixl', engine: 'nixl', transports: 'sm' })
  try {
    write('nixl_envelope', 'no-regions', nixl.metadata())
    await nixl.register(Buffer.alloc(64 << 10))
    const pool = await nixl.allocate(1 << 20)
    write('nixl_envelope', 'two-regions', nixl.metadata())
    write('nixl_envelope', 'narrowed', nixl.metadata({ regions: [pool] }))
  } finally {
    await nixl.close()
  }
} else {
  console.log(`NIXL is not available here: test/fuzz/corpus/nixl_envelope is left as it is (${info().engines.nixl.reason?.split('\n')[0]})`)
}
// Control frames are packed by the engine's own code, around the metadata written above.
const made = spawnSync('make', ['-s', '-C', join(dirname(fileURLToPath(import.meta.url)), 'native'), 'seeds'], { stdio: 'inherit' })
if (made.status !== 0) throw new Error('make seeds failed: test/fuzz/corpus/control_frame is incomplete')
console.log(`seeds written under ${CORPUS}`)
