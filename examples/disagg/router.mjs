#!/usr/bin/env node
// A disaggregated serving loop in three processes: this router, a prefill
// worker and a decode worker (prefill.mjs, decode.mjs). The workers find each
// other through the TCP side channel (the decode listens, the prefill fetches,
// both prove they know a secret) or through etcd (--etcd URL); the router
// sends requests to the prefill and passes tickets between them, as a serving
// front end does. The prefill's compute is simulated (every KV element filled
// from its coordinates, then --layer-ms of free event loop per layer); the
// decode checks every byte. Printed: a timeline of compute, transfers and
// checks per mode, and each worker's event-loop delay.
//
//   node examples/disagg/router.mjs [--mode pull|push|stream|all] [--requests N]
//     [--tokens N] [--model NAME] [--layer-ms MS] [--etcd URL] [--engine ucx|nixl]
//     [--json] [--timeout-ms MS]
//
// `kvxfer demo` runs this with the same options.
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MODELS, blocksFor, layoutFor } from './kv.mjs';
import { now } from './worker.mjs';

const MODES = ['pull', 'push', 'stream'];
const WIDTH = 64;

const OPTIONS = {
  mode: { type: 'string', default: 'all' },
  requests: { type: 'string', default: '4' },
  tokens: { type: 'string', default: '512' },
  model: { type: 'string', default: 'llama-3.1-8b' },
  'layer-ms': { type: 'string', default: '1' },
  etcd: { type: 'string' },
  engine: { type: 'string' },
  json: { type: 'boolean', default: false },
  'timeout-ms': { type: 'string', default: '120000' },
  help: { type: 'boolean', short: 'h', default: false },
};

function usage(problem) {
  const text =
    'usage: kvxfer demo [--mode pull|push|stream|all] [--requests N] [--tokens N] [--model NAME]\n' +
    '                   [--layer-ms MS] [--etcd URL] [--engine ucx|nixl] [--json] [--timeout-ms MS]\n' +
    `models: ${Object.keys(MODELS).join(', ')}\n`;
  if (problem === undefined) {
    process.stdout.write(text);
    process.exit(0);
  }
  process.stderr.write(`kvxfer demo: ${problem}\n${text}`);
  process.exit(2);
}

function positiveInt(name, { zero = false } = {}) {
  const value = Number(args[name]);
  if (!Number.isSafeInteger(value) || value < (zero ? 0 : 1)) usage(`--${name} must be a ${zero ? 'non-negative' : 'positive'} integer`);
  return value;
}

let args;
try {
  ({ values: args } = parseArgs({ options: OPTIONS }));
} catch (error) {
  usage(error.message);
}
if (args.help) usage();
const modes = args.mode === 'all' ? MODES : [args.mode];
if (!modes.every((m) => MODES.includes(m))) usage(`--mode must be one of ${MODES.join(', ')} or all`);
if (!(args.model in MODELS)) usage(`unknown model '${args.model}'`);
const requests = positiveInt('requests');
const tokens = positiveInt('tokens');
const layerMs = positiveInt('layer-ms', { zero: true });
const timeoutMs = positiveInt('timeout-ms');
// Every request of a mode holds its blocks at once on the decode side (push
// reserves them all up front): size both pools for that.
const poolBlocks = requests * blocksFor(layoutFor(args.model, 1), tokens);
const layout = layoutFor(args.model, poolBlocks);

const discovery = args.etcd
  ? { kind: 'etcd', url: args.etcd, namespace: `kvxfer-demo-${process.pid}-${Date.now()}` }
  : { kind: 'side-channel', secret: randomBytes(16).toString('hex') };

// Workers -------------------------------------------------------------------

function startWorker(role) {
  const child = fork(fileURLToPath(new URL(`./${role}.mjs`, import.meta.url)), [], {
    serialization: 'advanced', // tickets are Uint8Arrays
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const pending = new Map();
  let nextId = 0;
  let exited;
  child.on('message', ({ id, ok, result, error }) => {
    const call = pending.get(id);
    pending.delete(id);
    if (ok) call?.resolve(result);
    else call?.reject(new Error(`${role}: ${error}`));
  });
  child.on('exit', (code, signal) => {
    exited = new Error(`the ${role} worker exited (${signal ?? `code ${code}`})`);
    for (const call of pending.values()) call.reject(exited);
    pending.clear();
  });
  return {
    role,
    child,
    call(op, message = {}) {
      if (exited !== undefined) return Promise.reject(exited);
      return new Promise((resolve, reject) => {
        const id = nextId++;
        pending.set(id, { resolve, reject });
        child.send({ ...message, op, id });
      });
    },
  };
}

// Timeline ------------------------------------------------------------------

/** The union of [start, end] spans, sorted and merged. */
function union(spans) {
  const sorted = spans.filter(([a, b]) => b > a).sort((x, y) => x[0] - y[0]);
  const merged = [];
  for (const [a, b] of sorted) {
    const last = merged.at(-1);
    if (last !== undefined && a <= last[1]) last[1] = Math.max(last[1], b);
    else merged.push([a, b]);
  }
  return merged;
}

const length = (spans) => spans.reduce((sum, [a, b]) => sum + b - a, 0);

function intersection(xs, ys) {
  const out = [];
  for (const [a, b] of xs) for (const [c, d] of ys) if (Math.min(b, d) > Math.max(a, c)) out.push([Math.max(a, c), Math.min(b, d)]);
  return out;
}

const label = (k) => (k + 1).toString(36);

/** One row of the chart: each column shows the request busy then ('+' for several, '.' for none). */
function row(records, spansOf, t0, t1) {
  const step = (t1 - t0) / WIDTH;
  let line = '';
  for (let c = 0; c < WIDTH; c++) {
    const a = t0 + c * step;
    const b = a + step;
    const busy = records.filter((r) => spansOf(r).some(([s, e]) => s < b && e > a));
    line += busy.length === 0 ? '.' : busy.length === 1 ? label(busy[0].k) : '+';
  }
  return line;
}

const ms = (v) => `${v.toFixed(1)} ms`;
const size = (bytes) => (bytes >= 2 ** 20 ? `${(bytes / 2 ** 20).toFixed(0)} MiB` : `${(bytes / 1024).toFixed(0)} KiB`);

function report(mode, records, loops, elapsedMs) {
  const t0 = Math.min(...records.map((r) => r.compute[0][0]));
  const t1 = Math.max(...records.map((r) => Math.max(r.wire.at(-1)[1], ...r.checked.map(([, e]) => e))));
  const computeAll = union(records.flatMap((r) => r.compute));
  const wireAll = union(records.flatMap((r) => r.wire));
  const overlap = length(intersection(computeAll, wireAll)) / Math.max(length(wireAll), 1e-9);
  const bytes = records.reduce((sum, r) => sum + r.bytes, 0);
  const perRequest = records.map((r) => {
    const computeEnd = r.compute.at(-1)[1];
    const wireStart = Math.min(...r.wire.map(([s]) => s));
    const wireEnd = Math.max(...r.wire.map(([, e]) => e));
    return {
      request: r.k + 1,
      computeMs: computeEnd - r.compute[0][0],
      handoffMs: wireEnd - wireStart,
      afterComputeMs: wireEnd - computeEnd,
      releasedAfterMs: r.releasedAt - wireEnd,
      bytes: r.bytes,
      mismatch: r.mismatch,
    };
  });
  const summary = {
    mode,
    elapsedMs,
    bytes,
    overlap,
    loop: loops,
    freeBlocksAfter: { prefill: records.at(-1).prefillFree, decode: records.at(-1).decodeFree, of: poolBlocks },
    requests: perRequest,
  };
  if (args.json) return summary;

  const lines = [
    '',
    `${mode}: ${requests} requests x ${tokens} tokens (${size(records[0].bytes)} each, ${blocksFor(layout, tokens)} blocks of ${layout.layers} layers)`,
    `            0 ms${' '.repeat(WIDTH - 4 - ms(t1 - t0).length)}${ms(t1 - t0)}`,
    `  compute   ${row(records, (r) => r.compute, t0, t1)}   prefill: fill + ${layerMs} ms per layer`,
    `  transfer  ${row(records, (r) => r.wire, t0, t1)}   ${mode === 'pull' ? 'decode READs' : 'prefill WRITEs'}${mode === 'stream' ? ', layer by layer' : ''}`,
    `  check     ${row(records, (r) => r.checked, t0, t1)}   decode: every byte`,
    `  ${(overlap * 100).toFixed(0)}% of the transfer time overlapped compute; ` +
      `${(bytes / 1e6 / elapsedMs).toFixed(2)} GB/s over ${ms(elapsedMs)}; ` +
      `event loop p99 (max): prefill ${ms(loops.prefill.p99Ms)} (${ms(loops.prefill.maxMs)}), decode ${ms(loops.decode.p99Ms)} (${ms(loops.decode.maxMs)})`,
  ];
  for (const r of perRequest) {
    lines.push(
      `  request ${r.request}: computed in ${ms(r.computeMs)}, transfer ${ms(r.handoffMs)}, ` +
        `landed ${ms(r.afterComputeMs)} after its compute; ${size(r.bytes)} checked: ${r.mismatch === null ? 'ok' : `MISMATCH at ${r.mismatch}`}`,
    );
  }
  lines.push(`  blocks free afterwards: prefill ${summary.freeBlocksAfter.prefill}/${poolBlocks}, decode ${summary.freeBlocksAfter.decode}/${poolBlocks}`);
  process.stdout.write(`${lines.join('\n')}\n`);
  return summary;
}

// The run --------------------------------------------------------------------

async function runMode(mode, index, prefill, decode) {
  await Promise.all([prefill.call('loopReset'), decode.call('loopReset')]);
  const started = now();
  const pending = [];
  for (let k = 0; k < requests; k++) {
    // Request numbers differ across modes: bytes a handoff failed to move
    // would still hold an earlier request's values, and fail the check.
    const request = index * requests + k;
    if (mode === 'pull') {
      const p = await prefill.call('prefill', { request, tokens, mode, layerMs });
      const d = decode.call('pull', { request, tokens, ticket: p.ticket });
      pending.push(Promise.all([p, d, prefill.call('finished', { request })]).then(([p, d, f]) => ({ k, p, d, f })));
    } else {
      const { ticket } = await decode.call('reserve', { request, tokens });
      const d = decode.call('landed', { request });
      const p = await prefill.call('prefill', { request, tokens, mode, tickets: [ticket], layerMs });
      pending.push(Promise.all([p, d, prefill.call('finished', { request })]).then(([p, d, f]) => ({ k, p, d, f })));
    }
  }
  const done = await Promise.all(pending);
  const elapsedMs = now() - started;
  const [prefillLoop, decodeLoop] = await Promise.all([prefill.call('loopRead'), decode.call('loopRead')]);
  const records = done.map(({ k, p, d, f }) => ({
    k,
    compute: p.computed,
    wire:
      mode === 'pull'
        ? [d.pulled]
        : mode === 'push'
          ? [[p.handoffStart, Math.max(...d.landed)]]
          : p.ready.map((ready, layer) => [ready, d.landed[layer]]),
    checked: d.checked,
    bytes: d.bytes,
    mismatch: d.mismatch,
    releasedAt: f.at,
    prefillFree: f.freeBlocks,
    decodeFree: d.freeBlocks,
  }));
  return report(mode, records, { prefill: prefillLoop, decode: decodeLoop }, elapsedMs);
}

async function main() {
  const prefill = startWorker('prefill');
  const decode = startWorker('decode');
  const watchdog = setTimeout(() => {
    process.stderr.write(`kvxfer demo: not done after ${timeoutMs} ms\n`);
    prefill.child.kill();
    decode.child.kill();
    process.exit(1);
  }, timeoutMs);
  try {
    const init = { model: args.model, blocks: poolBlocks, engine: args.engine, discovery };
    const [, decodeHello] = await Promise.all([
      prefill.call('init', { ...init, name: 'prefill-0' }),
      decode.call('init', { ...init, name: 'decode-0' }),
    ]);
    if (discovery.kind === 'etcd') {
      await Promise.all([prefill.call('connect', { peerRole: 'decode' }), decode.call('connect', { peerRole: 'prefill' })]);
    } else {
      await prefill.call('connect', { host: decodeHello.host, port: decodeHello.port });
    }
    if (!args.json) {
      process.stdout.write(
        `kvxfer demo: prefill-0 and decode-0 found each other through ${discovery.kind === 'etcd' ? `etcd at ${discovery.url}` : `the TCP side channel (${decodeHello.host}:${decodeHello.port}, with a secret)`}; ` +
          `model ${args.model}, bf16, ${layout.blockTokens}-token blocks, HND\n`,
      );
    }
    const results = [];
    for (const [index, mode] of modes.entries()) results.push(await runMode(mode, index, prefill, decode));
    const ok = results.every((r) => r.requests.every((q) => q.mismatch === null));
    const checked = results.reduce((sum, r) => sum + r.bytes, 0);
    if (args.json) {
      process.stdout.write(`${JSON.stringify({ schema: 'kvxfer-demo/1', model: args.model, tokens, requests, discovery: discovery.kind, ok, checkedBytes: checked, modes: results }, null, 2)}\n`);
    } else {
      process.stdout.write(`\n${ok ? 'every byte matched' : 'MISMATCH'}: ${size(checked)} checked at the decode side\n`);
    }
    // The workers close their agents (and leave etcd); the finally below kills
    // whichever has not exited within 10 s.
    const exited = Promise.all([prefill.call('exit'), decode.call('exit')]).catch(() => {});
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 10_000).unref())]);
    return ok ? 0 : 1;
  } finally {
    clearTimeout(watchdog);
    prefill.child.kill();
    decode.child.kill();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    process.stderr.write(`kvxfer demo: ${error.message}\n`);
    process.exitCode = 1;
  },
);
