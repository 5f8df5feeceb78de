/**
 * The report of a bench run: one object that the table, --json, --csv and
 * --chart are all made from. Its shape is `kvxfer-bench/1`:
 *
 *   { schema, command, startedAt, seconds, host, kvxfer, options, series[] }
 *   series: { name, kind: 'kvxfer' | 'baseline', baseline?, figures[], points[], unavailable? }
 *   point:  { op, blockSize, batch, inFlight, agents, tokens?, figures: { <every name in series.figures>: number },
 *             ratio?: { <baseline>: number | null }, check?, notifications?, command? }
 *
 * Every figure listed in a series' `figures` is present in each of its
 * points and is a finite number. Units are in the names: gbps = 1e9 bytes/s,
 * msgRate = descriptors/s, *Us = microseconds, *Ms = milliseconds.
 */
import type { BaselineName, BenchOptions } from './args';

export const SCHEMA = 'kvxfer-bench/1';

export const KVXFER_FIGURES = [
  'gbps', 'msgRate', 'requestRate', 'iterations', 'bytes', 'seconds',
  'latAvgUs', 'latP50Us', 'latP99Us', 'latP999Us',
  'prepareUs', 'prepareMaxUs', 'postUs', 'engineUs', 'cpuSeconds', 'cpuPercent', 'eldP99Ms', 'eldMaxMs',
] as const;
export const KV_FIGURES = ['tokens', 'kvBytes', 'moveMs'] as const;
export const BASELINE_FIGURES: Record<BaselineName, readonly string[]> = {
  ucx_perftest: ['gbps', 'msgRate', 'iterations', 'latAvgUs', 'latP50Us'],
  net: ['gbps', 'msgRate', 'iterations', 'bytes', 'seconds', 'latAvgUs', 'latP50Us', 'latP99Us', 'latP999Us', 'cpuSeconds', 'cpuPercent', 'eldP99Ms', 'eldMaxMs'],
  memcpy: ['gbps', 'msgRate', 'iterations', 'bytes', 'seconds', 'latAvgUs'],
  cuda_memcpy: ['gbps', 'msgRate', 'iterations', 'bytes', 'seconds', 'latAvgUs'],
};

export interface CheckResult {
  verified: boolean;
  ok: boolean;
  /** Bytes compared at the destination. */
  bytes: number;
  blocks: number;
  badBlocks: number;
  /** Where the check ran: the target (write) or the initiator (read). */
  side: 'target' | 'initiator';
}

export interface Point {
  op: 'write' | 'read';
  blockSize: number;
  batch: number;
  inFlight: number;
  agents: number;
  tokens?: number;
  figures: Record<string, number>;
  ratio?: Partial<Record<BaselineName, number | null>>;
  check?: CheckResult;
  notifications?: { expected: number; received: number };
  command?: string;
  /** With --repeat N: GB/s of every round, in order; the figures are the median round's. */
  runs?: number[];
}

export interface Series {
  name: string;
  kind: 'kvxfer' | 'baseline';
  baseline?: BaselineName;
  figures: string[];
  points: Point[];
  /** Why a baseline has no points (ucx_perftest missing, a run failed). */
  unavailable?: string;
}

export interface Report {
  schema: typeof SCHEMA;
  command: string;
  startedAt: string;
  seconds: number;
  host: Record<string, unknown>;
  target: Record<string, unknown>;
  kvxfer: Record<string, unknown>;
  options: Record<string, unknown>;
  series: Series[];
}

/** The options as they go into the report (JSON-friendly). */
export function optionsForReport(o: BenchOptions): Record<string, unknown> {
  return {
    mode: o.mode,
    op: o.op,
    blockSizes: o.blockSizes,
    batchSizes: o.batchSizes,
    iters: o.iters ?? null,
    warmup: o.warmup ?? 'auto',
    duration: o.duration ?? null,
    inFlight: o.inFlight,
    ...(o.burst > 1 ? { burst: o.burst } : {}),
    prepared: o.prepared,
    reuse: o.reuse,
    engine: o.engine,
    mem: o.mem,
    ...(o.mem === 'vram' ? { device: o.device, peerDevice: o.peerDevice } : {}),
    agents: o.agents,
    notify: o.notify,
    check: o.check,
    transports: o.transports ?? process.env.UCX_TLS ?? null,
    baselines: o.baselines,
    kv: o.kv ?? null,
    repeat: o.repeat,
    load: o.load,
  };
}

/** Problems with a report's structure; empty when it is well-formed. */
export function validateReport(report: unknown): string[] {
  const problems: string[] = [];
  const r = report as Report;
  if (r === null || typeof r !== 'object') return ['the report is not an object'];
  if (r.schema !== SCHEMA) problems.push(`schema is ${String(r.schema)}, not ${SCHEMA}`);
  for (const key of ['command', 'startedAt'] as const) if (typeof r[key] !== 'string') problems.push(`${key} is not a string`);
  if (typeof r.seconds !== 'number') problems.push('seconds is not a number');
  for (const key of ['host', 'target', 'kvxfer', 'options'] as const) {
    if (r[key] === null || typeof r[key] !== 'object') problems.push(`${key} is not an object`);
  }
  if (!Array.isArray(r.series) || r.series.length === 0) return [...problems, 'series is not a non-empty array'];
  r.series.forEach((s, i) => {
    const where = `series[${i}] (${String(s?.name)})`;
    if (typeof s?.name !== 'string') problems.push(`${where}: name is not a string`);
    if (s?.kind !== 'kvxfer' && s?.kind !== 'baseline') problems.push(`${where}: kind is ${String(s?.kind)}`);
    if (!Array.isArray(s?.figures) || s.figures.some((f) => typeof f !== 'string')) {
      problems.push(`${where}: figures is not a list of names`);
      return;
    }
    if (!Array.isArray(s.points)) {
      problems.push(`${where}: points is not an array`);
      return;
    }
    if (s.points.length === 0 && typeof s.unavailable !== 'string') problems.push(`${where}: no points and no reason`);
    s.points.forEach((p, j) => {
      const at = `${where}.points[${j}]`;
      for (const key of ['blockSize', 'batch', 'inFlight', 'agents'] as const) {
        if (!Number.isSafeInteger(p?.[key]) || p[key] < 1) problems.push(`${at}: ${key} is not a positive integer`);
      }
      if (p?.op !== 'write' && p?.op !== 'read') problems.push(`${at}: op is ${String(p?.op)}`);
      if (p?.figures === null || typeof p?.figures !== 'object') {
        problems.push(`${at}: figures is not an object`);
        return;
      }
      for (const f of s.figures) {
        if (typeof p.figures[f] !== 'number' || !Number.isFinite(p.figures[f])) problems.push(`${at}: figure ${f} is ${String(p.figures[f])}`);
      }
      for (const f of Object.keys(p.figures)) if (!s.figures.includes(f)) problems.push(`${at}: figure ${f} is not declared`);
      if (p.runs !== undefined && (!Array.isArray(p.runs) || p.runs.some((v) => typeof v !== 'number' || !Number.isFinite(v)))) {
        problems.push(`${at}: runs is not a list of numbers`);
      }
      if (s.kind === 'kvxfer') {
        if (p.ratio === null || typeof p.ratio !== 'object') problems.push(`${at}: ratio is not an object`);
        else {
          for (const [b, v] of Object.entries(p.ratio)) {
            if (v !== null && (typeof v !== 'number' || !Number.isFinite(v))) problems.push(`${at}: ratio.${b} is ${String(v)}`);
          }
        }
      }
    });
  });
  return problems;
}

// ---------------------------------------------------------------- formatting

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** 4096 -> '4K', 1048576 -> '1M': the block-size axis and table. */
export function shortBytes(n: number): string {
  for (const [unit, size] of [['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10]] as const) {
    if (n >= size && n % size === 0) return `${n / size}${unit}`;
  }
  return n >= 1024 ? `${(n / 1024).toFixed(1)}K` : `${n}`;
}

function num(v: number | undefined, digits: number): string {
  if (v === undefined || !Number.isFinite(v)) return '-';
  return v.toFixed(digits);
}

function rate(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return '-';
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}K`;
  return v.toFixed(0);
}

function us(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return '-';
  if (v >= 1e4) return `${(v / 1e3).toFixed(1)}ms`;
  return v >= 100 ? v.toFixed(0) : v.toFixed(v >= 10 ? 1 : 2);
}

const SHORT_BASELINE: Record<BaselineName, string> = { ucx_perftest: 'perftest', net: 'net', memcpy: 'memcpy', cuda_memcpy: 'cudaMemcpy' };

/** The terminal table: for each block size, the kvxfer rows, then the baselines. */
export function formatTable(report: Report): string {
  const baselines = report.series.filter((s) => s.kind === 'baseline').map((s) => s.baseline!);
  const kv = report.series.some((s) => s.points.some((p) => p.tokens !== undefined));
  const head = [
    'series', ...(kv ? ['tokens'] : []), 'block', 'batch', 'GB/s', 'msg/s', 'lat avg', 'p50', 'p99', 'p99.9',
    'prep', 'post', 'cpu%', 'eld p99', ...(kv ? ['move ms'] : []), ...baselines.map((b) => `x${SHORT_BASELINE[b]}`),
  ];
  const rows: string[][] = [];
  const blocks = [...new Set(report.series.flatMap((s) => s.points.map((p) => p.blockSize)))].sort((a, b) => a - b);
  for (const block of blocks) {
    for (const s of report.series) {
      for (const p of s.points.filter((q) => q.blockSize === block)) {
        const f = p.figures;
        const kvx = s.kind === 'kvxfer';
        rows.push([
          s.name,
          ...(kv ? [p.tokens !== undefined ? String(p.tokens) : ''] : []),
          shortBytes(p.blockSize),
          kvx ? String(p.batch) : '',
          num(f.gbps, 2),
          rate(f.msgRate),
          us(f.latAvgUs),
          us(f.latP50Us),
          us(f.latP99Us),
          us(f.latP999Us),
          kvx ? us(f.prepareUs) : '',
          kvx ? us(f.postUs) : '',
          f.cpuPercent !== undefined ? num(f.cpuPercent, 0) : '',
          f.eldP99Ms !== undefined ? num(f.eldP99Ms, 2) : '',
          ...(kv ? [f.moveMs !== undefined ? num(f.moveMs, 2) : ''] : []),
          ...baselines.map((b) => (kvx ? (p.ratio?.[b] == null ? '-' : num(p.ratio[b]!, 2)) : '')),
        ]);
      }
    }
  }
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  const out = [line(head), widths.map((w) => '-'.repeat(w)).join('  ')];
  let lastBlock: string | undefined;
  for (const r of rows) {
    const block = r[kv ? 2 : 1];
    if (lastBlock !== undefined && block !== lastBlock) out.push('');
    lastBlock = block;
    out.push(line(r).trimEnd());
  }
  const notes: string[] = [];
  for (const s of report.series) if (s.unavailable) notes.push(`${s.name}: ${s.unavailable}`);
  const checks = report.series.flatMap((s) => s.points.filter((p) => p.check?.verified));
  if (checks.length > 0) {
    const bad = checks.filter((p) => !p.check!.ok);
    notes.push(
      bad.length === 0
        ? `--check: every byte verified at the destination (${checks.length} points, ${formatBytes(checks.reduce((n, p) => n + p.check!.bytes, 0))})`
        : `--check: ${bad.length} of ${checks.length} points FAILED: the destination does not hold the bytes sent`,
    );
  }
  const notifies = report.series.flatMap((s) => s.points.filter((p) => p.notifications));
  if (notifies.length > 0) {
    const missing = notifies.filter((p) => p.notifications!.received < p.notifications!.expected);
    notes.push(missing.length === 0 ? `--notify: every notification arrived (${notifies.length} points)` : `--notify: notifications missing in ${missing.length} points`);
  }
  notes.push(
    'GB/s = 1e9 bytes/s; msg/s = descriptors/s; latencies in us per request (post to completion); prep/post: us per prepare() / post() call;',
    'cpu% = initiator process CPU over wall time (100 = one core); eld p99 = event-loop delay p99 in ms; xNAME = kvxfer GB/s / NAME GB/s at that block size.',
  );
  return `${out.join('\n')}\n\n${notes.join('\n')}\n`;
}

const CSV_FIXED = ['series', 'kind', 'op', 'blockSize', 'batch', 'inFlight', 'agents', 'tokens'];

function csvCell(v: unknown): string {
  if (v === undefined || v === null) return '';
  const s = String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** One row per point; every figure of every series is a column (empty where a series has no such figure). */
export function formatCsv(report: Report): string {
  const figures = [...new Set(report.series.flatMap((s) => s.figures))];
  const baselines = report.series.filter((s) => s.kind === 'baseline').map((s) => s.baseline!);
  const head = [...CSV_FIXED, ...figures, ...baselines.map((b) => `ratio_${b}`), 'checked', 'check_ok'];
  const rows = [head.join(',')];
  for (const s of report.series) {
    for (const p of s.points) {
      rows.push(
        [
          s.name, s.kind, p.op, p.blockSize, p.batch, p.inFlight, p.agents, p.tokens,
          ...figures.map((f) => p.figures[f]),
          ...baselines.map((b) => p.ratio?.[b]),
          p.check?.verified ?? '', p.check?.ok ?? '',
        ].map(csvCell).join(','),
      );
    }
  }
  return `${rows.join('\n')}\n`;
}
