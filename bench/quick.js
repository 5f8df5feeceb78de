#!/usr/bin/env node
// Quick benchmark: one block size, kvxfer WRITE into another process next to
// ucx_perftest (ucp_put_bw) at the same size, in one run. A thin wrapper over
// `kvxfer bench` (bench/*.ts), which does the work and has many more options:
//
//   npm run build && node bench/quick.js [options]
//
// Options:
//   --size <bytes>     transfer size (default 4194304 = 4 MiB; 4K/1M/... work too)
//   --iters <n>        timed transfers (default 1000)
//   --warmup <n>       untimed transfers first (default 200)
//   --seconds <s>      time the loop for about s seconds instead of --iters
//   --engine <e>       kvxfer engine: auto | ucx | nixl (default auto)
//   --no-perftest      skip ucx_perftest
//   --json             print the kvxfer-bench/1 JSON report on stdout (the
//                      table goes to stderr)
//
// Equivalent to: kvxfer bench --block-sizes <size> --in-flight 1 --iters <n>
// --warmup <n> --baseline ucx_perftest. UCX_TLS from the environment applies to both.
'use strict';

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const MAIN = path.join(__dirname, '..', 'dist', 'cli', 'main.js');

function usage(error) {
  const text = fs.readFileSync(__filename, 'utf8').split('\n').slice(1, 19).map((l) => l.replace(/^\/\/ ?/, '')).join('\n');
  if (error) {
    console.error(`bench/quick.js: ${error}\n\n${text}`);
    process.exit(2);
  }
  console.log(text);
  process.exit(0);
}

const opts = { size: '4194304', iters: '1000', warmup: '200', seconds: undefined, engine: 'auto', perftest: true, json: false };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const [key, inline] = argv[i].includes('=') ? [argv[i].slice(0, argv[i].indexOf('=')), argv[i].slice(argv[i].indexOf('=') + 1)] : [argv[i], undefined];
  const value = () => {
    const v = inline !== undefined ? inline : argv[++i];
    if (v === undefined) usage(`${key} needs a value`);
    return v;
  };
  switch (key) {
    case '--size': opts.size = value(); break;
    case '--iters': opts.iters = value(); break;
    case '--warmup': opts.warmup = value(); break;
    case '--seconds': opts.seconds = value(); break;
    case '--engine': opts.engine = value(); break;
    case '--no-perftest': opts.perftest = false; break;
    case '--json': opts.json = true; break;
    case '-h': case '--help': usage(); break;
    default: usage(`unknown option: ${argv[i]}`);
  }
}
if (!fs.existsSync(MAIN)) {
  console.error('bench/quick.js: dist/cli/main.js is missing: run npm run build first');
  process.exit(1);
}

// One request at a time, as this script always measured: one prepared transfer, each post awaited.
const args = ['bench', '--block-sizes', opts.size, '--in-flight', '1', '--warmup', opts.warmup, '--engine', opts.engine,
  '--baseline', opts.perftest ? 'ucx_perftest' : 'none'];
if (opts.seconds !== undefined) args.push('--duration', opts.seconds);
else args.push('--iters', opts.iters);
let jsonFile;
if (opts.json) {
  jsonFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kvxfer-quick-')), 'report.json');
  args.push('--json', jsonFile);
}
// With --json, everything the CLI prints goes to stderr and stdout holds the report alone.
const run = spawnSync(process.execPath, [MAIN, ...args], { stdio: ['ignore', opts.json ? 2 : 1, 2] });
if (jsonFile !== undefined && run.status === 0) process.stdout.write(fs.readFileSync(jsonFile, 'utf8'));
if (jsonFile !== undefined) fs.rmSync(path.dirname(jsonFile), { recursive: true, force: true });
process.exit(run.status ?? 1);
