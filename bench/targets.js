#!/usr/bin/env node
// The six targets of the bench issue, measured with `kvxfer bench` on this
// machine. Each command is one run with --repeat N (default 3): N rounds,
// kvxfer and its baseline side by side in each; a ratio is taken within each
// round and the median round is reported with the spread. Prints a markdown
// table; --json FILE keeps every report.
//
//   npm run build && node bench/targets.js [--runs N] [--json FILE] [--only 1,3]
'use strict';

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const MAIN = path.join(__dirname, '..', 'dist', 'cli', 'main.js');

const argv = process.argv.slice(2);
const flag = (name, fallback) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : fallback;
};
const RUNS = Number(flag('--runs', '3'));
const JSON_OUT = flag('--json', undefined);
const ONLY = flag('--only', undefined)?.split(',');

const kvxfer = (r) => r.series.find((s) => s.kind === 'kvxfer');
const baseline = (r, name) => r.series.find((s) => s.baseline === name);
const at = (series, block) => series.points.find((p) => p.blockSize === block);
const MiB = 2 ** 20;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];

/** kvxfer GB/s over the baseline's, round by round (same block size: for batch 1 also the message-rate ratio). */
function pairedRatios(r, name, block) {
  const kv = at(kvxfer(r), block);
  const base = at(baseline(r, name), block);
  const a = kv.runs ?? [kv.figures.gbps];
  const b = base.runs ?? [base.figures.gbps];
  return a.map((x, i) => x / b[i]);
}

const ratioTarget = (name, block, min, detail) => (r) => {
  const ratios = pairedRatios(r, name, block);
  return { value: median(ratios), all: ratios, pass: median(ratios) >= min, detail: detail(r) };
};
const gb = (v) => `${v.toFixed(2)} GB/s`;

/** Event-loop delay p99 of the one kvxfer point, against the 2 ms target. */
const eldTarget = (rate) => (r) => {
  const p = kvxfer(r).points[0].figures;
  return { value: p.eldP99Ms, all: [p.eldP99Ms], pass: p.eldP99Ms <= 2, detail: `${p.eldP99Ms.toFixed(2)} ms at ${rate(p)}` };
};

/** Each target: the command, and how to read its figure out of the report. */
const TARGETS = [
  {
    id: '1',
    goal: 'blocks >= 1 MiB: kvxfer / ucx_perftest bandwidth >= 0.95 (worst block size)',
    args: ['--block-sizes', '1M..64M', '--in-flight', '4', '--baseline', 'ucx_perftest'],
    read: (r) => {
      const per = kvxfer(r).points.map((p) => ({ block: p.blockSize, ratio: median(pairedRatios(r, 'ucx_perftest', p.blockSize)) }));
      const worst = per.reduce((a, b) => (b.ratio < a.ratio ? b : a));
      return { value: worst.ratio, all: per.map((p) => p.ratio), pass: worst.ratio >= 0.95, detail: per.map((p) => `${p.block / MiB}M ${p.ratio.toFixed(2)}`).join(', ') };
    },
  },
  {
    id: '2',
    goal: '1,024 x 16 KiB in one request: >= 0.85 of ucx_perftest put_bw at 16 KiB (1,024 distinct blocks)',
    args: ['--block-sizes', '16K', '--batch-sizes', '1024', '--in-flight', '1', '--baseline', 'ucx_perftest'],
    read: ratioTarget('ucx_perftest', 16384, 0.85, (r) => `${gb(at(kvxfer(r), 16384).figures.gbps)} vs ${gb(at(baseline(r, 'ucx_perftest'), 16384).figures.gbps)}`),
  },
  {
    id: '2b',
    goal: "the same with --reuse all (all descriptors on one 16 KiB block per side: ucx_perftest's footprint)",
    args: ['--block-sizes', '16K', '--batch-sizes', '1024', '--in-flight', '1', '--reuse', 'all', '--baseline', 'ucx_perftest'],
    read: ratioTarget('ucx_perftest', 16384, 0.85, (r) => `${gb(at(kvxfer(r), 16384).figures.gbps)} vs ${gb(at(baseline(r, 'ucx_perftest'), 16384).figures.gbps)}`),
  },
  {
    id: '3',
    goal: "4 KiB single-descriptor transfers, 64 in flight: message rate >= 0.25 of ucx_perftest's",
    args: ['--block-sizes', '4K', '--in-flight', '64', '--duration', '2', '--baseline', 'ucx_perftest'],
    read: ratioTarget('ucx_perftest', 4096, 0.25, (r) => {
      const p = at(kvxfer(r), 4096).figures;
      return `${(p.msgRate / 1e3).toFixed(0)}K vs ${(at(baseline(r, 'ucx_perftest'), 4096).figures.msgRate / 1e6).toFixed(2)}M msg/s; event-loop delay p99 ${p.eldP99Ms.toFixed(1)} ms`;
    }),
  },
  {
    id: '4',
    goal: 'event-loop delay p99 while saturating <= 2 ms (4 MiB blocks, 4 in flight)',
    args: ['--block-sizes', '4M', '--in-flight', '4', '--duration', '2', '--baseline', 'none'],
    unit: ' ms',
    read: eldTarget((p) => gb(p.gbps)),
  },
  {
    id: '4b',
    goal: 'the same with many small requests (4 KiB blocks, 64 in flight)',
    args: ['--block-sizes', '4K', '--in-flight', '64', '--duration', '2', '--baseline', 'none'],
    unit: ' ms',
    read: eldTarget((p) => `${(p.msgRate / 1e3).toFixed(0)}K msg/s`),
  },
  {
    id: '5',
    goal: '>= 4x the net baseline at 4 MiB',
    args: ['--block-sizes', '4M', '--in-flight', '4', '--baseline', 'net'],
    read: ratioTarget('net', 4 * MiB, 4, (r) => `${gb(at(kvxfer(r), 4 * MiB).figures.gbps)} vs ${gb(at(baseline(r, 'net'), 4 * MiB).figures.gbps)}`),
  },
  {
    id: '6',
    goal: 'prepare() of a 10,000-descriptor transfer <= 5 ms (slowest prepare of the run)',
    args: ['--block-sizes', '4K', '--batch-sizes', '10000', '--in-flight', '1', '--recreate', '--duration', '1', '--baseline', 'none'],
    unit: ' ms',
    read: (r) => {
      const p = kvxfer(r).points[0].figures;
      return { value: p.prepareMaxUs / 1e3, all: [p.prepareMaxUs / 1e3], pass: p.prepareMaxUs / 1e3 <= 5, detail: `avg ${(p.prepareUs / 1e3).toFixed(2)} ms, max ${(p.prepareMaxUs / 1e3).toFixed(2)} ms over ${p.iterations} prepares` };
    },
  },
];

/** Runs kvxfer bench; a run killed by a signal (a crash) is retried once, and counted. */
let crashes = 0;
function run(args, retry = true) {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kvxfer-targets-')), 'r.json');
  const r = spawnSync(process.execPath, [MAIN, 'bench', ...args, '--no-progress', '--json', file], { encoding: 'utf8', timeout: 600_000 });
  if (r.status === null && retry) {
    crashes++;
    console.error(`kvxfer bench ${args.join(' ')} died (${r.signal}); running it again`);
    return run(args, false);
  }
  if (r.status !== 0) throw new Error(`kvxfer bench ${args.join(' ')} failed (${r.status ?? r.signal}):\n${r.stderr}`);
  const report = JSON.parse(fs.readFileSync(file, 'utf8'));
  fs.rmSync(path.dirname(file), { recursive: true, force: true });
  return report;
}

const rows = [];
const all = [];
console.error(`load before: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
for (const t of TARGETS) {
  if (ONLY && !ONLY.includes(t.id)) continue;
  const args = [...t.args, '--repeat', String(RUNS)];
  const report = run(args);
  all.push({ target: t.id, report });
  const result = t.read(report);
  console.error(`target ${t.id}: ${result.detail}`);
  const unit = t.unit ?? '';
  rows.push({
    id: t.id,
    goal: t.goal,
    command: `kvxfer bench ${args.join(' ')}`,
    value: `${result.value.toFixed(2)}${unit}`,
    range: result.all.length > 1 ? `${Math.min(...result.all).toFixed(2)} to ${Math.max(...result.all).toFixed(2)}` : '',
    detail: result.detail,
    pass: result.pass,
  });
}
console.error(`load after: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);

console.log(`| # | target | measured | range | detail (median round of ${RUNS}) | met |`);
console.log('| --- | --- | --- | --- | --- | --- |');
for (const r of rows) console.log(`| ${r.id} | ${r.goal} | ${r.value} | ${r.range} | ${r.detail} | ${r.pass ? 'yes' : '**no**'} |`);
console.log('');
for (const r of rows) console.log(`- ${r.id}: \`${r.command}\``);
if (crashes > 0) console.log(`\n${crashes} run(s) died of a signal and were run again.`);
if (JSON_OUT) fs.writeFileSync(JSON_OUT, `${JSON.stringify(all, null, 2)}\n`);
