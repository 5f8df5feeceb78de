// The part of a worker of examples/disagg that does not depend on its role:
// the agent and its KV pool, finding the other worker (the TCP side channel,
// or etcd), the event loop's delay, and the router's requests, which arrive
// over the fork's IPC channel (an HTTP or gRPC front end in a deployment).
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { Agent, EtcdDiscovery, KvHandoff, KvPool } from 'kvxfer';
import { layoutFor } from './kv.mjs';

/** Wall-clock milliseconds with sub-millisecond resolution: the workers' timelines line up on one host. */
export const now = () => performance.timeOrigin + performance.now();

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Sets up this worker from the router's `init` and serves its requests:
 * `handlers[op](message, worker)` answers each; what it throws goes back as
 * the request's error.
 */
export function serveWorker(role, handlers) {
  const loop = monitorEventLoopDelay({ resolution: 1 });
  let worker;
  const common = {
    async init({ name, model, blocks, engine, discovery }) {
      const agent = await Agent.create({ name, ...(engine ? { engine } : {}) });
      const pool = await KvPool.allocate(agent, layoutFor(model, blocks));
      const handoff = new KvHandoff(agent, pool);
      worker = { role, agent, pool, handoff, discovery, membership: undefined, channel: undefined };
      // Pools before discovery: their regions are in the metadata the other side loads.
      if (discovery.kind === 'etcd') {
        worker.etcd = await EtcdDiscovery.connect({ endpoints: [discovery.url], namespace: discovery.namespace, ttlSeconds: 5 });
        worker.membership = await worker.etcd.join(agent, { info: { role }, compat: pool.layout.hash });
        return { name };
      }
      if (role === 'decode') {
        worker.channel = await agent.listen({ host: '127.0.0.1', port: 0, secret: discovery.secret });
        return { name, host: worker.channel.host, port: worker.channel.port };
      }
      return { name };
    },
    // Resolves the other worker's name once this agent has loaded it.
    async connect({ peerRole, host, port }) {
      const { agent, discovery, membership } = worker;
      if (discovery.kind !== 'etcd') {
        return { peer: await agent.fetchPeer({ host, port, secret: discovery.secret, timeoutMs: 10_000 }) };
      }
      const present = membership.peers().find((p) => p.info?.role === peerRole);
      if (present !== undefined) return { peer: present.name };
      const stop = new AbortController();
      const timer = setTimeout(() => stop.abort(), 15_000);
      try {
        for await (const ev of membership.events({ signal: stop.signal })) {
          if (ev.type === 'join' && ev.info?.role === peerRole) return { peer: ev.peer };
        }
      } finally {
        clearTimeout(timer);
      }
      throw new Error(`no ${peerRole} worker joined through etcd`);
    },
    loopReset() {
      loop.reset();
      loop.enable();
      return {};
    },
    loopRead() {
      loop.disable();
      return { p99Ms: loop.percentile(99) / 1e6, maxMs: loop.max / 1e6 };
    },
    async exit() {
      worker?.handoff.close();
      await worker?.membership?.leave();
      await worker?.etcd?.close();
      await worker?.channel?.close();
      await worker?.agent.close();
      setImmediate(() => process.exit(0));
      return {};
    },
  };
  process.on('message', (message) => {
    const handler = handlers[message.op] ?? common[message.op];
    Promise.resolve()
      .then(() => {
        if (handler === undefined) throw new Error(`unknown request '${message.op}'`);
        return handler(message, worker);
      })
      .then(
        (result) => process.send({ id: message.id, ok: true, result }),
        (error) => process.send({ id: message.id, ok: false, error: `${error.message}${error.code ? ` [${error.code}]` : ''}` }),
      );
  });
  // The router is gone: so is this worker (its agent's peers see it leave).
  process.on('disconnect', () => process.exit(1));
}
