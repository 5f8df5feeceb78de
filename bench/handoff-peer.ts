/**
 * The other worker of `kvxfer bench --handoff` (bench/handoff.ts), forked:
 * decode for pull, prefill for push and stream. It listens on a side
 * channel for the bench to fetch, then offers or reserves blocks when told,
 * and reports its event loop's delay.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Agent, KvHandoff, KvLayout, type KvLayoutOptions } from 'kvxfer';
import { benchMemory, type PeerRequest } from './handoff';

let agent: Agent | undefined;
let handoff: KvHandoff | undefined;
const loop = monitorEventLoopDelay({ resolution: 1 });

/** Sends every notification back to its sender: the bench's round-trip baseline. */
function echo(of: Agent): void {
  void (async () => {
    for await (const n of of.notifications()) await of.notify(n.peer, n.data).catch(() => {});
  })().catch(() => {});
}

async function handle(request: PeerRequest): Promise<Record<string, unknown>> {
  switch (request.op) {
    case 'setup': {
      if (agent !== undefined) await agent.close();
      agent = await Agent.create({
        name: `bench-handoff-peer-${process.pid}-${Date.now()}`,
        engine: request.engine as 'ucx' | 'nixl',
        ...(request.transports !== undefined ? { transports: request.transports } : {}),
      });
      echo(agent);
      const { pool, contiguous: region } = await benchMemory(agent, new KvLayout(request.layout as KvLayoutOptions), request.contiguousBytes, request.pool);
      handoff = new KvHandoff(agent, pool);
      // Before the exchange, so that the bench's agent loads it with the rest.
      const channel = await agent.listen({ host: '127.0.0.1', port: 0 });
      return {
        name: agent.name,
        port: channel.port,
        descriptor: pool.descriptor(),
        region: { address: region.address, length: region.length },
      };
    }
    case 'offer': {
      const offer = handoff!.offer(request.request, request.blocks);
      offer.done.catch(() => {});
      return { ticket: offer.ticket };
    }
    case 'reserve': {
      const reservation = handoff!.reserve(request.request, request.blocks);
      reservation.done.catch(() => {});
      return { ticket: reservation.ticket };
    }
    case 'loop': {
      const p99 = loop.percentile(99) / 1e6;
      loop.reset();
      if (request.reset) loop.enable();
      else loop.disable();
      return { p99 };
    }
    case 'exit':
      if (agent !== undefined) await agent.close();
      setImmediate(() => process.exit(0));
      return {};
  }
}

process.on('message', (request: PeerRequest) => {
  handle(request).then(
    (answer) => process.send!({ ok: true, ...answer }),
    (error: unknown) => process.send!({ ok: false, error: error instanceof Error ? error.message : String(error) }),
  );
});
process.on('disconnect', () => process.exit(0));
