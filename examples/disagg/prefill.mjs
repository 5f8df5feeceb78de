// The prefill worker of examples/disagg (forked by router.mjs): computes a
// request's KV cache layer by layer (simulated: a fill, then `layerMs` of
// "GPU" time the event loop is free during) and hands it to the decode
// worker: offers it (pull), pushes it once computed (push), or writes each
// layer as soon as it is computed (stream).
import { blocksFor, computeLayer } from './kv.mjs';
import { now, serveWorker, sleep } from './worker.mjs';

const LEASE_MS = 30_000;
const HANDOFF_TIMEOUT_MS = 30_000;

/** Requests computed and not yet handed off: their handoff's promise, and when it settled. */
const inFlight = new Map();

serveWorker('prefill', {
  // Computes the request and starts its handoff; answers once it is computed
  // (the ticket, for pull), so that the router can send the next request
  // while this one moves.
  async prefill({ request, tokens, mode, tickets, layerMs }, { pool, handoff }) {
    const blocks = pool.allocBlocks(blocksFor(pool.layout, tokens));
    const computed = [];
    const ready = [];
    const stream = mode === 'stream' ? handoff.stream(tickets, blocks, { timeoutMs: HANDOFF_TIMEOUT_MS }) : undefined;
    // The stream's own failure (the decode worker died) surfaces in `done` below.
    stream?.done.catch(() => {});
    for (let layer = 0; layer < pool.layout.layers; layer++) {
      const start = now();
      computeLayer(pool, request, blocks, layer);
      await sleep(layerMs);
      computed.push([start, now()]);
      if (stream !== undefined) {
        stream.layerReady(layer);
        ready.push(now());
      }
    }
    let done;
    let ticket;
    const handoffStart = now();
    if (mode === 'pull') {
      const offer = handoff.offer(`req-${request}`, blocks, { leaseMs: LEASE_MS });
      ticket = offer.ticket;
      done = offer.done;
    } else if (mode === 'push') {
      done = handoff.push(tickets, blocks, { timeoutMs: HANDOFF_TIMEOUT_MS });
    } else {
      done = stream.done;
    }
    const settled = done.then(
      () => ({ ok: true, at: now() }),
      (error) => ({ ok: false, at: now(), error: `${error.message} [${error.code}]` }),
    );
    // The blocks go back to the allocator once the handoff settled, whichever way.
    settled.then(() => pool.freeBlocks(blocks));
    inFlight.set(request, settled);
    return { ticket, computed, ready, handoffStart };
  },
  // When the request's handoff settled: the decode side acknowledged (pull) or
  // every layer landed (push, stream), and the blocks are free again.
  async finished({ request }, { pool }) {
    const settled = await inFlight.get(request);
    inFlight.delete(request);
    if (!settled.ok) throw new Error(`request ${request}: ${settled.error}`);
    return { at: settled.at, freeBlocks: pool.freeBlockCount };
  },
});
