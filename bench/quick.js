#!/usr/bin/env node
// Quick benchmark: repeated 4 MiB WRITEs from this process into a forked
// child process with kvxfer, next to UCX's own ucx_perftest (ucp_put_bw) over
// the same transports, so the two figures can be compared on one machine.
//
//   npm run build && node bench/quick.js [options]
//
// Options:
//   --size <bytes>     transfer size (default 4194304 = 4 MiB)
//   --iters <n>        timed transfers (default 1000)
//   --warmup <n>       untimed transfers first (default 200)
//   --seconds <s>      time the loop for about s seconds instead of --iters
//   --engine <e>       kvxfer engine: auto | ucx | nixl (default auto)
//   --no-perftest      skip ucx_perftest
//   --json             print one JSON object on stdout (the readable report
//                      goes to stderr)
//
// Both sides see the same UCX_TLS: it is taken from the environment (unset by
// default, so UCX picks), handed to kvxfer's agents and inherited by
// ucx_perftest. Throughput is printed in GB/s = 1e9 bytes per second.
// ucx_perftest reports "MB/s" that are MiB/s (2^20 bytes); both units are
// shown for it.
//
// What is measured: kvxfer prepares ONE transfer and posts it again and again,
// each post awaited before the next (a post resolves once the data is at the
// peer). ucx_perftest keeps several puts in flight and completes them in
// bulk, so it is an upper bound, not an equal.
'use strict';

const { fork, spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const MiB = 1024 * 1024;
const ROLE_ARG = '--kvxfer-bench-target';

function loadKvxfer() {
  try {
    return require('../dist/index.js');
  } catch (err) {
    console.error(`bench/quick.js: cannot load ../dist/index.js (run npm run build first): ${err.message}`);
    process.exit(1);
  }
}

// --------------------------------------------------------------------------
// Child: the target of the WRITEs.

async function target() {
  const { Agent, DescList } = loadKvxfer();
  const size = Number(process.env.KVXFER_BENCH_SIZE);
  const engine = process.env.KVXFER_BENCH_ENGINE || 'auto';
  let agent;
  let region;
  let initiator;
  let exiting = false;
  process.on('disconnect', () => process.exit(exiting ? 0 : 1)); // parent went away

  const send = (msg) => new Promise((resolve, reject) =>
    process.send(msg, (err) => (err ? reject(err) : resolve())));

  process.on('message', async (msg) => {
    try {
      if (msg.type === 'peer') {
        initiator = await agent.loadPeer(msg.metadata);
        await send({ type: 'peer-loaded', name: initiator });
      } else if (msg.type === 'verify') {
        await agent.waitForNotification(initiator, msg.notify, { timeoutMs: 30_000 });
        const sha = crypto.createHash('sha256').update(region.view()).digest('hex');
        await send({ type: 'verified', ok: sha === msg.sha, sha });
      } else if (msg.type === 'exit') {
        exiting = true;
        await agent.close();
        await send({ type: 'closed' });
        process.disconnect();
      }
    } catch (err) {
      await send({ type: 'error', message: String(err && err.stack || err), code: err && err.code })
        .catch(() => {});
      process.exit(1);
    }
  });

  try {
    agent = await Agent.create({ name: `bench-target-${process.pid}`, engine, ...transports() });
    region = await agent.allocate(size);
    await send({
      type: 'hello',
      name: agent.name,
      engine: agent.engine,
      metadata: agent.metadata(),
      descs: DescList.from([region]).encode(),
    });
  } catch (err) {
    await send({ type: 'error', message: String(err && err.stack || err), code: err && err.code })
      .catch(() => {});
    process.exit(1);
  }
}

function transports() {
  return process.env.UCX_TLS ? { transports: process.env.UCX_TLS } : {};
}

// --------------------------------------------------------------------------
// Parent.

function parseArgs(argv) {
  const opts = { size: 4 * MiB, iters: 1000, warmup: 200, seconds: 0, engine: 'auto', perftest: true, json: false };
  const num = (name, v) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) usage(`bad value for ${name}: ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [key, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => (inline !== undefined ? inline : argv[++i]);
    switch (key) {
      case '--size': opts.size = Math.floor(num(key, value())); break;
      case '--iters': opts.iters = Math.floor(num(key, value())); break;
      case '--warmup': opts.warmup = Math.floor(num(key, value())); break;
      case '--seconds': opts.seconds = num(key, value()); break;
      case '--engine': opts.engine = value(); break;
      case '--no-perftest': opts.perftest = false; break;
      case '--json': opts.json = true; break;
      case '-h': case '--help': usage(); break;
      default: usage(`unknown option: ${a}`);
    }
  }
  if (opts.size < 1) usage('--size must be at least 1');
  if (opts.iters < 1 && !opts.seconds) usage('--iters must be at least 1');
  return opts;
}

const USAGE = `usage: node bench/quick.js [options]   (after npm run build)
  --size <bytes>     transfer size (default 4194304 = 4 MiB)
  --iters <n>        timed transfers (default 1000)
  --warmup <n>       untimed transfers first (default 200)
  --seconds <s>      time the loop for about s seconds instead of --iters
  --engine <e>       kvxfer engine: auto | ucx | nixl (default auto)
  --no-perftest      skip ucx_perftest
  --json             print one JSON object on stdout (report on stderr)
UCX_TLS from the environment applies to both kvxfer and ucx_perftest.`;

function usage(error) {
  const text = USAGE;
  if (error) {
    console.error(`bench/quick.js: ${error}\n`);
    console.error(text);
    process.exit(2);
  }
  console.log(text);
  process.exit(0);
}

// Buffers every message from the child from the moment it is forked, so a
// reply that arrives while the parent awaits something else is not lost.
class Inbox {
  constructor(child) {
    this.messages = [];
    this.waiter = null;
    this.exited = null;
    child.on('message', (msg) => { this.messages.push(msg); this.wake(); });
    child.on('exit', (code, signal) => { this.exited = signal || code; this.wake(); });
  }
  wake() {
    if (this.waiter) this.waiter();
  }
  // Resolves with the next message of `type`; rejects on an error message
  // from the child, on its exit, or after timeoutMs.
  async next(type, timeoutMs = 60_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.messages.findIndex((m) => m.type === type || m.type === 'error');
      if (i >= 0) {
        const [msg] = this.messages.splice(i, 1);
        if (msg.type === 'error') {
          const err = new Error(`bench target failed: ${msg.message}`);
          err.code = msg.code;
          throw err;
        }
        return msg;
      }
      if (this.exited !== null) throw new Error(`bench target exited (${this.exited}) while waiting for '${type}'`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for '${type}' from the bench target`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => { clearTimeout(timer); resolve(); };
      });
      this.waiter = null;
    }
  }
}

async function benchKvxfer(opts, log) {
  const { Agent, DescList } = loadKvxfer();
  const child = fork(__filename, [ROLE_ARG], {
    env: { ...process.env, KVXFER_BENCH_SIZE: String(opts.size), KVXFER_BENCH_ENGINE: opts.engine },
    serialization: 'advanced', // Uint8Array over IPC
    // The child prints nothing itself; UCX warnings it may print go to our
    // stderr so that --json output on stdout stays clean.
    stdio: ['ignore', 2, 2, 'ipc'],
  });
  const inbox = new Inbox(child);
  let agent;
  try {
    const hello = await inbox.next('hello');
    agent = await Agent.create({ name: `bench-initiator-${process.pid}`, engine: opts.engine, ...transports() });
    const local = await agent.allocate(opts.size);
    crypto.randomFillSync(local.view());
    const sha = crypto.createHash('sha256').update(local.view()).digest('hex');

    child.send({ type: 'peer', metadata: agent.metadata() });
    const peer = await agent.loadPeer(hello.metadata);
    await inbox.next('peer-loaded');
    const remote = DescList.decode(hello.descs);

    log(`kvxfer: engine ${agent.engine} (target: ${hello.engine}), ${fmtBytes(opts.size)} WRITE, ` +
      `${opts.warmup} warmup + ${opts.seconds ? `~${opts.seconds} s` : `${opts.iters}`} timed posts of one prepared transfer`);

    const xfer = agent.prepare({ op: 'write', local, remote, peer });
    let n = 0;
    let ns = 0n;
    let postUs;
    try {
      for (let i = 0; i < opts.warmup; i++) await xfer.post({ timeoutMs: 30_000 });
      const durations = [];
      const t0 = process.hrtime.bigint();
      const deadline = opts.seconds ? t0 + BigInt(Math.round(opts.seconds * 1e9)) : 0n;
      for (;;) {
        const res = await xfer.post({ timeoutMs: 30_000 });
        durations.push(res.durationNs);
        n++;
        if (deadline ? process.hrtime.bigint() >= deadline : n >= opts.iters) break;
      }
      ns = process.hrtime.bigint() - t0;
      postUs = percentiles(durations.map((d) => Number(d) / 1e3));
    } finally {
      xfer.release();
    }

    // One more WRITE, with a notification, so the target can check it holds
    // our bytes: a benchmark that moves nothing must not pass.
    const notify = `kvxfer-bench-verify-${process.pid}`;
    child.send({ type: 'verify', notify, sha });
    await agent.write(local, remote, peer, { notify, timeoutMs: 30_000 });
    const verified = await inbox.next('verified');
    if (!verified.ok) throw new Error('data check failed: the target region does not hold the bytes written');

    child.send({ type: 'exit' });
    await inbox.next('closed', 15_000).catch(() => {});

    const seconds = Number(ns) / 1e9;
    const bytes = n * opts.size;
    return {
      engine: agent.engine,
      iterations: n,
      bytes,
      seconds,
      gbps: bytes / seconds / 1e9,
      avgUs: (seconds * 1e6) / n,
      postUs, // durationNs as the native side measured it, in microseconds
      verified: true,
    };
  } finally {
    if (agent) await agent.close().catch(() => {});
    if (child.exitCode === null && child.signalCode === null) child.kill();
  }
}

function percentiles(values) {
  const v = values.slice().sort((a, b) => a - b);
  const at = (p) => v[Math.min(v.length - 1, Math.floor(p * v.length))];
  return { p50: round(at(0.5), 1), p99: round(at(0.99), 1), min: round(v[0], 1), max: round(v[v.length - 1], 1) };
}

// --------------------------------------------------------------------------
// ucx_perftest

function findOnPath(name) {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch { /* not here */ }
  }
  return null;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function runProcess(file, args, timeoutMs) {
  return new Promise((resolve) => {
    const p = spawn(file, args, { env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', (err) => { clearTimeout(timer); resolve({ code: -1, out: out + String(err) }); });
    p.on('close', (code, signal) => { clearTimeout(timer); resolve({ code: signal ? `${signal}` : code, out }); });
  });
}

// "Final:  iters  lat50  lat_avg  lat_overall  bw_avg  bw_overall  mr_avg  mr_overall"
// (UCX 1.13; the bandwidth columns are headed "bandwidth (MB/s)" but are
// MiB/s: ucx_perftest divides by 1024*1024).
function parsePerftest(out) {
  const finals = out.split('\n').filter((l) => /^\s*Final:/.test(l));
  if (finals.length === 0) return null;
  const nums = finals[finals.length - 1].replace(/^\s*Final:/, '').trim().split(/\s+/).map(Number);
  if (nums.length < 8 || nums.some((x) => !Number.isFinite(x))) return null;
  return { iterations: nums[0], latencyUs: nums[3], mibps: nums[5], raw: finals[finals.length - 1].trim() };
}

async function benchPerftest(opts, log) {
  const bin = findOnPath('ucx_perftest');
  if (!bin) return { available: false, reason: 'ucx_perftest not found on PATH (Debian/Ubuntu: apt-get install ucx-utils)' };
  // Same number of iterations as the kvxfer loop ran (capped for --seconds).
  const iters = Math.max(1, opts.perftestIters);
  const warmup = Math.max(0, opts.warmup);
  const clientArgs = (port) => ['127.0.0.1', '-p', String(port), '-t', 'ucp_put_bw', '-s', String(opts.size),
    '-n', String(iters), '-w', String(warmup)];
  let last = '';
  for (let attempt = 1; attempt <= 3; attempt++) {
    const port = await freePort();
    const server = spawn(bin, ['-p', String(port)], { env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let serverOut = '';
    server.stdout.on('data', (d) => { serverOut += d; });
    server.stderr.on('data', (d) => { serverOut += d; });
    const serverDone = new Promise((resolve) => server.on('close', resolve));
    await sleep(500 * attempt); // let the server start listening
    if (attempt === 1) log(`ucx_perftest: ${path.basename(bin)} ${clientArgs(port).join(' ')}`);
    const client = await runProcess(bin, clientArgs(port), 120_000);
    const done = await Promise.race([serverDone.then(() => true), sleep(5_000).then(() => false)]);
    if (!done) { server.kill('SIGKILL'); await serverDone; }
    const parsed = client.code === 0 ? parsePerftest(client.out) : null;
    if (parsed) {
      return {
        available: true,
        command: `ucx_perftest ${clientArgs(port).join(' ')}`,
        iterations: parsed.iterations,
        mibps: parsed.mibps,
        gbps: (parsed.mibps * MiB) / 1e9,
        latencyUs: parsed.latencyUs,
        finalLine: parsed.raw,
      };
    }
    last = `client exit ${client.code}:\n${tail(client.out)}\nserver:\n${tail(serverOut)}`;
  }
  return { available: true, error: `ucx_perftest failed: ${last}` };
}

// --------------------------------------------------------------------------

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const log = opts.json ? (...a) => console.error(...a) : (...a) => console.log(...a);
  log(`kvxfer quick bench: ${fmtBytes(opts.size)} WRITE between two processes on this host; ` +
    `UCX_TLS=${process.env.UCX_TLS || '(unset)'}`);

  const kv = await benchKvxfer(opts, log);
  log(`kvxfer:       ${kv.gbps.toFixed(2)} GB/s  (${(kv.gbps * 1e9 / MiB).toFixed(0)} MiB/s; ` +
    `${kv.iterations} x ${fmtBytes(opts.size)} in ${kv.seconds.toFixed(3)} s, ${kv.avgUs.toFixed(1)} us/transfer, ` +
    `post p50 ${kv.postUs.p50} us, p99 ${kv.postUs.p99} us; data verified)`);

  let pt = { available: false, reason: 'skipped (--no-perftest)' };
  if (opts.perftest) {
    pt = await benchPerftest({ ...opts, perftestIters: Math.min(kv.iterations, 100_000) }, log);
  }
  let ratio = null;
  if (pt.gbps) {
    ratio = kv.gbps / pt.gbps;
    log(`ucx_perftest: ${pt.gbps.toFixed(2)} GB/s  (${pt.mibps.toFixed(0)} MiB/s, printed as "MB/s" by ucx_perftest; ` +
      `ucp_put_bw, ${pt.iterations} x ${fmtBytes(opts.size)})`);
    log(`ratio:        kvxfer / ucx_perftest = ${ratio.toFixed(2)} (${(ratio * 100).toFixed(0)}%)`);
  } else if (pt.error) {
    log(`ucx_perftest: ${pt.error}`);
  } else {
    log(`ucx_perftest: not run: ${pt.reason}; kvxfer figure only`);
  }

  if (opts.json) {
    console.log(JSON.stringify({
      bench: 'quick-write',
      unit: 'GB/s (1e9 bytes/s)',
      size: opts.size,
      warmup: opts.warmup,
      ucxTls: process.env.UCX_TLS || null,
      node: process.version,
      kvxfer: kv,
      ucxPerftest: pt,
      ratio,
    }, null, 2));
  }
}

function fmtBytes(n) {
  if (n >= MiB && n % MiB === 0) return `${n / MiB} MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} B`;
}
function round(x, d) { const f = 10 ** d; return Math.round(x * f) / f; }
function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
function tail(s, lines = 20) { return s.trimEnd().split('\n').slice(-lines).join('\n'); }

if (process.argv.includes(ROLE_ARG)) {
  target();
} else {
  main().then(
    () => process.exit(0),
    (err) => {
      console.error(`bench/quick.js: ${err && err.stack || err}`);
      process.exit(1);
    },
  );
}
