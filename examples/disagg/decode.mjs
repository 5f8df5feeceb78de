// The decode worker of examples/disagg (forked by router.mjs): receives a
// request's KV cache into blocks of its own pool, pulling it with the
// prefill's ticket (pull) or reserving blocks for the prefill to write into
// (push, stream), and checks every byte of every layer against what the
// prefill's compute put there.
import { blocksFor, checkLayer } from './kv.mjs';
import { now, serveWorker } from './worker.mjs';

const HANDOFF_TIMEOUT_MS = 30_000;

/** Reservations waiting for their layers: what `landed` answers with. */
const reservations = new Map();

function checkAll(pool, request, blocks) {
  for (let layer = 0; layer < pool.layout.layers; layer++) {
    const mismatch = checkLayer(pool, request, blocks, layer);
    if (mismatch !== null) return mismatch;
  }
  return null;
}

const requestBytes = (layout, blocks) => blocks.length * layout.layers * 2 * layout.partBytes;

serveWorker('decode', {
  // Pull mode: READs the request from the prefill's blocks, then checks it.
  async pull({ request, tokens, ticket }, { pool, handoff }) {
    const blocks = pool.allocBlocks(blocksFor(pool.layout, tokens));
    let result;
    try {
      const start = now();
      await handoff.pull([ticket], blocks, { timeoutMs: HANDOFF_TIMEOUT_MS });
      const pulled = now();
      const mismatch = checkAll(pool, request, blocks);
      result = { pulled: [start, pulled], checked: [[pulled, now()]], bytes: requestBytes(pool.layout, blocks), mismatch };
    } finally {
      pool.freeBlocks(blocks);
    }
    return { ...result, freeBlocks: pool.freeBlockCount };
  },
  // Push and stream: reserves blocks and checks each layer as it lands, as
  // attention would start on it.
  reserve({ request, tokens }, { pool, handoff }) {
    const blocks = pool.allocBlocks(blocksFor(pool.layout, tokens));
    const reservation = handoff.reserve(`req-${request}`, blocks, { timeoutMs: HANDOFF_TIMEOUT_MS });
    const landed = [];
    const checked = [];
    const outcome = (async () => {
      let mismatch = null;
      // One layer's check per turn of the event loop, queued as layers land:
      // the loop stays free to take the next layer's arrival (on a GPU,
      // attention would run asynchronously too).
      let checks = Promise.resolve();
      const check = (layer) => {
        const start = now();
        mismatch ??= checkLayer(pool, request, blocks, layer);
        checked.push([start, now()]);
      };
      try {
        for await (const layer of reservation.layers) {
          landed[layer] = now();
          checks = checks.then(() => new Promise((resolve) => setImmediate(() => resolve(check(layer)))));
        }
        await reservation.done;
        await checks;
        return { landed, checked, bytes: requestBytes(pool.layout, blocks), mismatch };
      } finally {
        pool.freeBlocks(blocks);
      }
    })();
    outcome.catch(() => {});
    reservations.set(request, outcome);
    return { ticket: reservation.ticket };
  },
  async landed({ request }, { pool }) {
    const outcome = reservations.get(request);
    reservations.delete(request);
    return { ...(await outcome), freeBlocks: pool.freeBlockCount };
  },
});
