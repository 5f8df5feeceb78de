/**
 * --chart FILE.svg: bandwidth against block size (or prompt tokens in --kv
 * runs), one line per series, drawn by hand: log2 x axis, log10 y axis
 * (bandwidths here span three decades, from Node sockets at 4 KiB to memcpy
 * in cache), legend on the right. kvxfer series are solid, baselines dashed.
 */
import { shortBytes, type Report } from './report';

const W = 900;
const H = 520;
const M = { left: 72, right: 210, top: 70, bottom: 64 };
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];
const BASELINE_COLORS: Record<string, string> = { ucx_perftest: '#333333', net: '#e08a00', memcpy: '#9a9a9a' };
const BASELINE_DASH: Record<string, string> = { ucx_perftest: '7 4', net: '6 4', memcpy: '2 4' };

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function fmtGb(v: number): string {
  if (v >= 1) return String(Number(v.toPrecision(3)));
  return String(Number(v.toPrecision(2)));
}

export function renderChart(report: Report, title?: string): string {
  const kv = report.series.some((s) => s.points.some((p) => p.tokens !== undefined));
  const xOf = (p: { blockSize: number; tokens?: number }) => (kv ? p.tokens ?? p.blockSize : p.blockSize);
  const series = report.series
    .map((s) => ({ s, pts: s.points.filter((p) => p.figures.gbps > 0).map((p) => ({ x: xOf(p), y: p.figures.gbps })).sort((a, b) => a.x - b.x) }))
    .filter((e) => e.pts.length > 0);
  const all = series.flatMap((e) => e.pts);
  const plotW = W - M.left - M.right;
  const plotH = H - M.top - M.bottom;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
  );
  const heading = title ?? `kvxfer bench: ${String(report.options.op ?? 'write').toUpperCase()} bandwidth by ${kv ? 'prompt length' : 'block size'}`;
  out.push(`<text x="${M.left}" y="24" font-size="16" font-weight="bold">${esc(heading)}</text>`);
  const command = report.command.length > 110 ? `${report.command.slice(0, 109)}…` : report.command;
  out.push(`<text x="${M.left}" y="42" fill="#555" font-family="Menlo, Consolas, monospace" font-size="11">${esc(command)}</text>`);
  const host = [
    `${String(report.host.cpus ?? '?')} cores ${String(report.host.cpuModel ?? '')}`.trim(),
    report.kvxfer.ucx ? `UCX ${String(report.kvxfer.ucx)}` : '',
    `engine ${String(report.kvxfer.engine ?? '?')}`,
    `in-flight ${String(report.options.inFlight ?? '?')}`,
    report.startedAt.slice(0, 10),
  ].filter((x) => x !== '');
  out.push(`<text x="${M.left}" y="58" fill="#777" font-size="11">${esc(host.join(' · '))}</text>`);
  if (all.length === 0) {
    out.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle">no data</text></svg>`);
    return `${out.join('\n')}\n`;
  }

  // x: log2
  let x0 = Math.floor(Math.log2(Math.min(...all.map((p) => p.x))));
  let x1 = Math.ceil(Math.log2(Math.max(...all.map((p) => p.x))));
  if (x0 === x1) {
    x0 -= 1;
    x1 += 1;
  }
  const sx = (x: number) => M.left + ((Math.log2(x) - x0) / (x1 - x0)) * plotW;
  // y: log10, whole decades
  const ys = all.map((p) => p.y);
  let y0 = Math.floor(Math.log10(Math.min(...ys)));
  let y1 = Math.ceil(Math.log10(Math.max(...ys)));
  if (y0 === y1) y1 += 1;
  const sy = (y: number) => M.top + plotH - ((Math.log10(y) - y0) / (y1 - y0)) * plotH;

  out.push(`<rect x="${M.left}" y="${M.top}" width="${plotW}" height="${plotH}" fill="#fafafa" stroke="#bbb"/>`);
  // y grid: decades labelled, 2x and 5x light
  for (let d = y0; d <= y1; d++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** d;
      if (Math.log10(v) > y1 + 1e-9) continue;
      const y = sy(v).toFixed(1);
      out.push(`<line x1="${M.left}" x2="${M.left + plotW}" y1="${y}" y2="${y}" stroke="${m === 1 ? '#ccc' : '#eee'}"/>`);
      out.push(`<text x="${M.left - 6}" y="${Number(y) + 4}" text-anchor="end" fill="${m === 1 ? '#222' : '#888'}">${fmtGb(v)}</text>`);
    }
  }
  // x grid: every power of two, labels thinned to fit
  const step = Math.max(1, Math.ceil((x1 - x0) / 12));
  for (let e = x0; e <= x1; e++) {
    const x = sx(2 ** e).toFixed(1);
    out.push(`<line x1="${x}" x2="${x}" y1="${M.top}" y2="${M.top + plotH}" stroke="#eee"/>`);
    if ((e - x0) % step === 0) {
      out.push(`<text x="${x}" y="${M.top + plotH + 18}" text-anchor="middle">${kv ? String(2 ** e) : shortBytes(2 ** e)}</text>`);
    }
  }
  out.push(`<text x="${M.left + plotW / 2}" y="${H - 18}" text-anchor="middle">${kv ? 'prompt tokens (log2)' : 'block size, bytes per descriptor (log2)'}</text>`);
  out.push(`<text transform="translate(18 ${M.top + plotH / 2}) rotate(-90)" text-anchor="middle">GB/s (1e9 bytes/s, log scale)</text>`);

  let colorIndex = 0;
  series.forEach((e, i) => {
    const color = e.s.kind === 'baseline' ? BASELINE_COLORS[e.s.baseline ?? ''] ?? '#999' : COLORS[colorIndex++ % COLORS.length];
    const dash = e.s.kind === 'baseline' ? ` stroke-dasharray="${BASELINE_DASH[e.s.baseline ?? ''] ?? '6 4'}"` : '';
    const points = e.pts.map((p) => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(' ');
    out.push(`<polyline fill="none" stroke="${color}" stroke-width="${e.s.kind === 'kvxfer' ? 2.5 : 1.8}"${dash} points="${points}"/>`);
    for (const p of e.pts) {
      out.push(`<circle cx="${sx(p.x).toFixed(1)}" cy="${sy(p.y).toFixed(1)}" r="3.2" fill="${color}"><title>${esc(`${e.s.name} ${kv ? `${p.x} tokens` : shortBytes(p.x)}: ${p.y.toFixed(2)} GB/s`)}</title></circle>`);
    }
    const ly = M.top + 14 + i * 22;
    const lx = M.left + plotW + 16;
    out.push(`<line x1="${lx}" x2="${lx + 28}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2.5"${dash}/>`);
    out.push(`<text x="${lx + 36}" y="${ly + 4}">${esc(e.s.name)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
