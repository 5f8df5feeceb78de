#!/usr/bin/env node
// The performance targets, measured with `kvxfer bench` on this machine
// (shared memory between two processes). Each bench command is one run with
// --repeat N (default 3): N rounds, kvxfer and ucx_perftest back to back in
// each; a ratio is taken within each round and the median round reported.
// Where a target compares two runs (registered Buffer against allocate(),
// loaded against quiet), each run's ratio to ucx_perftest is taken first, so
// the machine's drift between the runs cancels out. Prints a markdown table;
// --json FILE keeps every report.
//
//   npm run build && node bench/targets.js [--runs N] [--json FILE] [--only 1,2a]
//
// Targets 1 to 4 are the performance issue's; 5 and 6 are kept from the
// first round of targets.
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
const gb = (v) => `${v.toFixed(2)} GB/s`;
const size = (b) => (b >= MiB ? `${b / MiB}M` : `${b / 1024}K`);

/** kvxfer GB/s over ucx_perftest's at one block size: the median of the rounds' ratios. */
function perftestRatio(r, block) {
  const kv = at(kvxfer(r), block);
  const base = at(baseline(r, 'ucx_perftest'), block);
  const a = kv.runs ?? [kv.figures.gbps];
  const b = base.runs ?? [base.figures.gbps];
  return median(a.map((x, i) => x / b[i]));
}

const blocksOf = (r) => kvxfer(r).points.map((p) => p.blockSize);
const worst = (per) => per.reduce((a, b) => (b.value < a.value ? b : a));

/** Each block's ratio of one run's perftest ratio to another's; the worst block decides. */
function relative(numerator, denominator, min) {
  const per = blocksOf(numerator).map((block) => ({ block, value: perftestRatio(numerator, block) / perftestRatio(denominator, block) }));
  const w = worst(per);
  return {
    value: w.value,
    all: per.map((p) => p.value),
    pass: w.value >= min,
    detail: per
      .map((p) => `${size(p.block)} ${p.value.toFixed(2)} (${perftestRatio(numerator, p.block).toFixed(2)} / ${perftestRatio(denominator, p.block).toFixed(2)})`)
      .join(', '),
  };
}

/** The worst event-loop delay p99 over a run's kvxfer points, against `max` ms. */
function eld(reports, max) {
  const points = reports.flatMap((r) => kvxfer(r).points);
  const p99 = points.map((p) => p.figures.eldP99Ms);
  const w = Math.max(...p99);
  return { value: w, all: p99, pass: w <= max, detail: `worst ${w.toFixed(2)} ms over ${points.length} points (${points.map((p) => `${size(p.blockSize)} ${p.figures.eldP99Ms.toFixed(1)}`).join(', ')})` };
}

const BIG = ['--block-sizes', '1M..64M', '--in-flight', '4', '--baseline', 'ucx_perftest'];

/** The bench runs, by name; targets share them. */
const RUN_ARGS = {
  allocate: ['--mem', 'dram', ...BIG],
  buffer: ['--mem', 'buffer', ...BIG],
  allocateLoaded: ['--mem', 'dram', '--load', '2', ...BIG],
  bufferLoaded: ['--mem', 'buffer', '--load', '2', ...BIG],
  batch16k: ['--block-sizes', '16K', '--batch-sizes', '1024', '--in-flight', '1', '--baseline', 'ucx_perftest'],
  single16m: ['--block-sizes', '16M', '--in-flight', '1', '--baseline', 'ucx_perftest'],
  small: ['--block-sizes', '4K', '--in-flight', '64', '--burst', '16', '--duration', '2', '--baseline', 'ucx_perftest'],
  smallSingle: ['--block-sizes', '4K', '--in-flight', '64', '--duration', '2', '--baseline', 'ucx_perftest'],
  net: ['--block-sizes', '4M', '--in-flight', '4', '--baseline', 'net'],
  prepare: ['--block-sizes', '4K', '--batch-sizes', '10000', '--in-flight', '1', '--recreate', '--duration', '1', '--baseline', 'none'],
};

/** A target that compares run `run` with run `base`, each as its ratio to ucx_perftest: >= 0.8. */
const relativeTarget = (id, goal, run, base) => ({ id, goal, runs: [run, base], read: (r) => relative(r[run], r[base], 0.8) });

/** Each target: the runs it reads and how to read its figure out of their reports. */
const TARGETS = [
  relativeTarget('1', 'register(Buffer) >= 0.8 of allocate() at 1 MiB to 64 MiB, quiet (worst block; each as its ratio to ucx_perftest)', 'buffer', 'allocate'),
  relativeTarget('2a', 'allocate() with both cores loaded (--load 2) keeps >= 0.8 of its quiet ratio to ucx_perftest (worst block)', 'allocateLoaded', 'allocate'),
  relativeTarget('2b', 'register(Buffer) the same', 'bufferLoaded', 'buffer'),
  {
    id: '2c',
    goal: 'event-loop delay p99 <= 5 ms under that load (worst point of both loaded runs)',
    runs: ['allocateLoaded', 'bufferLoaded'],
    unit: ' ms',
    read: ({ allocateLoaded, bufferLoaded }) => eld([allocateLoaded, bufferLoaded], 5),
  },
  {
    id: '3a',
    goal: 'allocate(), every block size >= 1 MiB: >= 0.95 of ucx_perftest (worst block)',
    runs: ['allocate'],
    read: ({ allocate }) => {
      const per = blocksOf(allocate).map((block) => ({ block, value: perftestRatio(allocate, block) }));
      const w = worst(per);
      return { value: w.value, all: per.map((p) => p.value), pass: w.value >= 0.95, detail: per.map((p) => `${size(p.block)} ${p.value.toFixed(2)}`).join(', ') };
    },
  },
  {
    id: '3b',
    goal: "1,024 x 16 KiB in one request (16 MiB, 1,024 distinct blocks) >= 0.85 of ucx_perftest's one 16 MiB put (the run after)",
    runs: ['batch16k', 'single16m'],
    read: ({ batch16k, single16m }) => {
      const kv = at(kvxfer(batch16k), 16384).figures.gbps;
      const put = at(baseline(single16m, 'ucx_perftest'), 16 * MiB).figures.gbps;
      const own = at(kvxfer(single16m), 16 * MiB).figures.gbps;
      return { value: kv / put, all: [kv / put], pass: kv / put >= 0.85, detail: `${gb(kv)} vs ${gb(put)} (kvxfer's own 16 MiB put: ${gb(own)})` };
    },
  },
  {
    id: '3c',
    goal: 'event-loop delay p99 <= 2 ms, quiet (worst point of the allocate() run)',
    runs: ['allocate'],
    unit: ' ms',
    read: ({ allocate }) => eld([allocate], 2),
  },
  {
    id: '4',
    goal: "4 KiB single-descriptor transfers, 64 in flight, posted 16 at a time (agent.postAll): message rate >= 0.25 of ucx_perftest's",
    runs: ['small', 'smallSingle'],
    read: ({ small, smallSingle }) => {
      const value = perftestRatio(small, 4096);
      const p = at(kvxfer(small), 4096).figures;
      const base = at(baseline(small, 'ucx_perftest'), 4096).figures;
      const single = perftestRatio(smallSingle, 4096);
      return { value, all: [value], pass: value >= 0.25, detail: `${(p.msgRate / 1e3).toFixed(0)}K vs ${(base.msgRate / 1e6).toFixed(2)}M msg/s; event-loop delay p99 ${p.eldP99Ms.toFixed(1)} ms; one post() each: ${single.toFixed(2)}` };
    },
  },
  {
    id: '5',
    goal: '(round 1) >= 4x the net baseline at 4 MiB',
    runs: ['net'],
    read: ({ net }) => {
      const kv = at(kvxfer(net), 4 * MiB);
      const base = at(baseline(net, 'net'), 4 * MiB);
      const ratios = (kv.runs ?? [kv.figures.gbps]).map((x, i) => x / (base.runs ?? [base.figures.gbps])[i]);
      return { value: median(ratios), all: ratios, pass: median(ratios) >= 4, detail: `${gb(kv.figures.gbps)} vs ${gb(base.figures.gbps)}` };
    },
  },
  {
    id: '6',
    goal: '(round 1) prepare() of a 10,000-descriptor transfer <= 5 ms (slowest prepare of the run)',
    runs: ['prepare'],
    unit: ' ms',
    read: ({ prepare }) => {
      const p = kvxfer(prepare).points[0].figures;
      return { value: p.prepareMaxUs / 1e3, all: [p.prepareMaxUs / 1e3], pass: p.prepareMaxUs / 1e3 <= 5, detail: `avg ${(p.prepareUs / 1e3).toFixed(2)} ms, max ${(p.prepareMaxUs / 1e3).toFixed(2)} ms over ${p.iterations} prepares` };
    },
  },
];

/** Runs kvxfer bench; a run killed by a signal (a crash) is retried once, and counted. */
let crashes = 0;
function bench(args, retry = true) {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kvxfer-targets-')), 'r.json');
  const r = spawnSync(process.execPath, [MAIN, 'bench', ...args, '--no-progress', '--json', file], { encoding: 'utf8', timeout: 900_000 });
  if (r.status === null && retry) {
    crashes++;
    console.error(`kvxfer bench ${args.join(' ')} died (${r.signal}); running it again`);
    return bench(args, false);
  }
  if (r.status !== 0) throw new Error(`kvxfer bench ${args.join(' ')} failed (${r.status ?? r.signal}):\n${r.stderr}`);
  const report = JSON.parse(fs.readFileSync(file, 'utf8'));
  fs.rmSync(path.dirname(file), { recursive: true, force: true });
  return report;
}

const chosen = TARGETS.filter((t) => !ONLY || ONLY.includes(t.id));
const reports = {};
const commandOf = (name) => `kvxfer bench ${[...RUN_ARGS[name], '--repeat', String(RUNS)].join(' ')}`;
console.error(`load before: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
for (const name of [...new Set(chosen.flatMap((t) => t.runs))]) {
  console.error(`running ${commandOf(name)}`);
  reports[name] = bench([...RUN_ARGS[name], '--repeat', String(RUNS)]);
}
console.error(`load after: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);

const rows = chosen.map((t) => {
  const result = t.read(reports);
  const unit = t.unit ?? '';
  console.error(`target ${t.id}: ${result.detail}`);
  return {
    id: t.id,
    goal: t.goal,
    runs: t.runs,
    value: `${result.value.toFixed(2)}${unit}`,
    range: result.all.length > 1 ? `${Math.min(...result.all).toFixed(2)} to ${Math.max(...result.all).toFixed(2)}` : '',
    detail: result.detail,
    pass: result.pass,
  };
});

console.log(`| # | target | measured | range | detail (median round of ${RUNS}) | met |`);
console.log('| --- | --- | --- | --- | --- | --- |');
for (const r of rows) console.log(`| ${r.id} | ${r.goal} | ${r.value} | ${r.range} | ${r.detail} | ${r.pass ? 'yes' : '**no**'} |`);
console.log('');
for (const r of rows) console.log(`- ${r.id}: ${r.runs.map((name) => `\`${commandOf(name)}\``).join(' and ')}`);
if (crashes > 0) console.log(`\n${crashes} run(s) died of a signal and were run again.`);
if (JSON_OUT) fs.writeFileSync(JSON_OUT, `${JSON.stringify({ runs: RUNS, reports, rows }, null, 2)}\n`);
