/**
 * `kvxfer info [--json]`: what this installation can do: the engines, UCX's
 * version and transports, NIXL and its plugins (or where it looked), and
 * GPU memory support per engine and the GPUs CUDA sees, and whether
 * ucx_perftest is there for `kvxfer bench`.
 */
import { info } from 'kvxfer';
import { status as cudaStatus } from 'kvxfer/cuda';
import { findPerftest } from '../bench/baselines/perftest';

/** Runs `kvxfer info ...` (argv after 'info'); returns the exit status. */
export function infoCommand(args: string[]): number {
  const unknown = args.find((a) => a !== '--json');
  if (unknown !== undefined) {
    process.stderr.write(`kvxfer info: unknown option '${unknown}' (only --json)\n`);
    return 2;
  }
  const base = info();
  const perftest = findPerftest() ?? null;
  if (args.includes('--json')) {
    console.log(JSON.stringify({ ...base, cuda: cudaStatus(), ucxPerftest: perftest }, null, 2));
    return 0;
  }
  const lines = [`kvxfer ${base.version} (node ${process.version}, ${process.platform} ${process.arch})`, '', 'engines'];
  for (const [name, e] of Object.entries(base.engines)) {
    const why = (e.reason ?? 'unknown').split('\n')[0].replace(/;? tried:$/, '');
    lines.push(`  ${name.padEnd(5)} ${e.available ? `available${e.version ? `, version ${e.version}` : ''}` : `not available: ${why}`}`);
  }
  const ucx = base.engines.ucx;
  lines.push('', `UCX ${ucx.version ?? '(not loaded)'}${ucx.threads === false ? ', without thread support' : ''}${process.env.UCX_TLS ? `, UCX_TLS=${process.env.UCX_TLS}` : ''}`);
  if (ucx.transports !== undefined) {
    const byName = new Map<string, string[]>();
    for (const t of ucx.transports) byName.set(t.name, [...(byName.get(t.name) ?? []), t.device]);
    for (const [name, devices] of byName) lines.push(`  ${name.padEnd(10)} ${devices.join(', ')}`);
  }
  // What the NIXL engine itself found: the library it loaded and its
  // plugins, or every place it looked and why it could not load.
  lines.push('', 'NIXL');
  const engine = base.engines.nixl;
  if (engine.available) {
    lines.push(`  C API      ${engine.path ?? '?'}`);
    const memory = engine.memoryTypes ?? {};
    lines.push(`  plugins    ${(engine.plugins ?? []).map((p) => (memory[p]?.length ? `${p} (${memory[p].join(', ')})` : p)).join(', ') || 'none'}`);
  } else {
    lines.push(`  not available: ${(engine.reason ?? 'not found').replace(/\n/g, '\n    ')}`);
  }
  lines.push('', 'GPU memory (vram regions)');
  for (const [name, e] of Object.entries(base.engines)) {
    if (!e.available) continue;
    const cuda = e.cuda;
    const detail = cuda?.supported
      ? `supported${cuda.transports?.length ? `, transports ${cuda.transports.join(', ')}` : ''}${cuda.backends?.length ? `, backends ${cuda.backends.join(', ')}` : ''}`
      : `not supported: ${cuda?.reason ?? 'unknown'}`;
    lines.push(`  ${name.padEnd(5)} ${detail}`);
  }
  const gpus = cudaStatus();
  lines.push(`  GPUs  ${gpus.deviceCount > 0 ? (gpus.devices ?? []).map((d) => `${d.index}: ${d.name ?? '?'}`).join('; ') : `none (${gpus.reason ?? 'unknown'})`}`);
  lines.push('', `ucx_perftest  ${perftest ?? 'not installed (apt-get install ucx-utils): kvxfer bench runs without that baseline'}`);
  console.log(lines.join('\n'));
  return 0;
}
