// A prefill worker hands a request's KV blocks to a decode worker.
// Run: node examples/handoff.mjs   (after `npm run build`)
// The two processes exchange metadata over the fork() IPC channel (with
// structured clone, so Uint8Arrays travel as they are); in a
// deployment that is a TCP side channel or etcd.
import { fork } from 'node:child_process';
import { randomFillSync, createHash } from 'node:crypto';
import { Agent, DescList } from 'kvxfer'; // the package itself (self-reference), as an installed one

const BLOCK = 256 * 1024;
const BLOCKS = 32;
const sha = (b) => createHash('sha256').update(b).digest('hex');

if (process.argv[2] === 'decode') {
  // Decode: owns a KV pool, says where the request's blocks must go, waits.
  const agent = await Agent.create({ name: 'decode-0' });
  const pool = await agent.allocate(BLOCKS * BLOCK);
  const blocks = DescList.from(Array.from({ length: BLOCKS }, (_, i) => pool.slice(i * BLOCK, BLOCK)));
  process.send({ metadata: agent.metadata(), blocks: blocks.encode() });
  const { metadata } = await new Promise((r) => process.once('message', r));
  await agent.loadPeer(metadata);
  await agent.waitForNotification('prefill-0', 'req-42', { timeoutMs: 30_000 });
  process.send({ hash: sha(pool.view()) });
  await agent.close();
} else {
  // Prefill: computes KV (random bytes here), writes it into decode's pool.
  const decode = fork(new URL(import.meta.url).pathname, ['decode'], { serialization: 'advanced' });
  const next = () => new Promise((r) => decode.once('message', r));
  const agent = await Agent.create({ name: 'prefill-0' });
  const kv = await agent.allocate(BLOCKS * BLOCK);
  randomFillSync(kv.view());

  const hello = await next();
  const peer = await agent.loadPeer(hello.metadata);
  const remote = DescList.decode(hello.blocks);
  decode.send({ metadata: agent.metadata() });

  // Local and remote lists pair up block by block; one request moves them all.
  const local = DescList.from(Array.from({ length: BLOCKS }, (_, i) => kv.slice(i * BLOCK, BLOCK)));
  const { bytes, durationNs } = await agent.write(local, remote, peer, { notify: 'req-42', timeoutMs: 30_000 });
  const { hash } = await next();
  console.log(`${bytes} bytes in ${(durationNs / 1e6).toFixed(2)} ms; decode ${hash === sha(kv.view()) ? 'has' : 'DOES NOT have'} the same bytes`);
  await agent.close();
  decode.kill();
}
