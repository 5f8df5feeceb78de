#!/usr/bin/env node
import { KvxferError, info } from 'kvxfer';
import { bench } from '../bench/index';
import { findPerftest } from '../bench/baselines/perftest';
import { demo } from './demo';

const USAGE = `usage: kvxfer <command>

commands:
  bench   transfer microbenchmark against ucx_perftest, Node TCP and memcpy (kvxfer bench --help)
  demo    a two-process prefill -> decode KV handoff, bytes checked at the far end
  info    engines, UCX version and transports, NIXL and its plugins (--json for JSON)
`;

function infoCommand(args: string[]): number {
  const unknown = args.find((a) => a !== '--json');
  if (unknown !== undefined) {
    process.stderr.write(`kvxfer info: unknown option '${unknown}' (only --json)\n`);
    return 2;
  }
  const base = info();
  const perftest = findPerftest() ?? null;
  if (args.includes('--json')) {
    console.log(JSON.stringify({ ...base, ucxPerftest: perftest }, null, 2));
    return 0;
  }
  const lines = [`kvxfer ${base.version} (node ${process.version}, ${process.platform} ${process.arch})`, '', 'engines'];
  for (const [name, e] of Object.entries(base.engines)) {
    const why = (e.reason ?? 'unknown').split('\n')[0].replace(/;? tried:$/, '');
    lines.push(`  ${name.padEnd(5)} ${e.available ? `available${e.version ? `, version ${e.version}` : ''}` : `not available: ${why}`}`);
  }
  const ucx = base.engines.ucx;
  lines.push('', `UCX ${ucx.version ?? '(not loaded)'}${process.env.UCX_TLS ? `, UCX_TLS=${process.env.UCX_TLS}` : ''}`);
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
    lines.push(`  plugins    ${(engine.plugins ?? []).join(', ') || 'none'}`);
  } else {
    lines.push(`  not available: ${(engine.reason ?? 'not found').replace(/\n/g, '\n    ')}`);
  }
  lines.push('', `ucx_perftest  ${perftest ?? 'not installed (apt-get install ucx-utils): kvxfer bench runs without that baseline'}`);
  console.log(lines.join('\n'));
  return 0;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'bench':
      return bench(rest);
    case 'demo':
      return demo(rest);
    case 'info':
      return infoCommand(rest);
    case undefined:
    case '-h':
    case '--help':
      process.stdout.write(USAGE);
      return command === undefined ? 1 : 0;
    default:
      process.stderr.write(`kvxfer: unknown command '${command}'\n\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    const code = error instanceof KvxferError ? ` [${error.code}]` : '';
    console.error(`kvxfer: ${error instanceof Error ? error.message : String(error)}${code}`);
    process.exitCode = 1;
  },
);
