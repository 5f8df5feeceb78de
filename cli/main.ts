#!/usr/bin/env node
/**
 * The `kvxfer` command (package.json "bin"): dispatches to `bench`
 * (bench/index.ts), `demo` (./demo) and `info` (./info) and prints the usage.
 */
import { KvxferError } from 'kvxfer';
import { bench } from '../bench/index';
import { demo } from './demo';
import { infoCommand } from './info';

const USAGE = `usage: kvxfer <command>
       kvxfer --version

commands:
  bench   transfer microbenchmark against ucx_perftest, Node TCP and memcpy (kvxfer bench --help)
  demo    router, prefill and decode processes hand KV caches over (pull, push, stream), every byte checked (kvxfer demo --help)
  info    engines, UCX version and transports, NIXL and its plugins (--json for JSON)
`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'bench':
      return bench(rest);
    case 'demo':
      return demo(rest);
    case 'info':
      return infoCommand(rest);
    case '-v':
    case '--version':
      // From package.json, not info(): it works where the addon cannot load.
      process.stdout.write(`${(require('kvxfer/package.json') as { version: string }).version}\n`);
      return 0;
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
