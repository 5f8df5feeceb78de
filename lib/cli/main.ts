#!/usr/bin/env node
import { KvxferError } from '../errors';
import { info } from '../info';
import { demo } from './demo';

const USAGE = `usage: kvxfer <command>

commands:
  demo    a two-process prefill -> decode KV handoff, bytes checked at the far end
  info    engines, UCX version and transports, as JSON
`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'demo':
      return demo(rest);
    case 'info':
      console.log(JSON.stringify(info(), null, 2));
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
