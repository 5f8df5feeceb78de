/**
 * --load N: N processes that each keep a core busy for the whole run, beside
 * kvxfer and its baselines alike, so ratios taken under load compare like
 * with like. A serving host is like this: the tokenizer, the scheduler and
 * the HTTP server run beside the transfers.
 */
import { spawn, type ChildProcess } from 'node:child_process';

// Spins, and leaves when its parent has gone (its ppid changes), so a bench
// that dies leaves no spinning process behind.
const SPIN = `const parent = process.ppid; for (let i = 0; ; i++) { if ((i & 0xfffff) === 0 && process.ppid !== parent) process.exit(0); }`;

export interface Load {
  readonly processes: number;
  stop(): Promise<void>;
}

export function startLoad(processes: number): Load {
  const children: ChildProcess[] = [];
  for (let i = 0; i < processes; i++) {
    children.push(spawn(process.execPath, ['-e', SPIN], { stdio: 'ignore' }));
  }
  const killAll = () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  process.once('exit', killAll);
  return {
    processes,
    async stop() {
      process.off('exit', killAll);
      await Promise.all(
        children.map((child) =>
          child.exitCode !== null || child.signalCode !== null
            ? undefined
            : new Promise<void>((resolve) => {
                child.once('exit', () => resolve());
                child.kill('SIGKILL');
              }),
        ),
      );
    },
  };
}
