/**
 * `kvxfer bench` / `kvxfer bench local`: the whole benchmark on one machine.
 * Starts `kvxfer bench target --listen 127.0.0.1:0 --once` as a child
 * process, reads the port it prints, and runs the initiator against it: the
 * same TCP exchange as between two hosts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import type { Report } from './report';
import { runInitiator, type RunContext } from './initiator';

const MAIN = path.join(__dirname, '..', 'cli', 'main.js');

function waitForListening(child: ChildProcess, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => fail(new Error(`the bench target did not start listening within ${timeoutMs / 1000} s`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const match = /listening on \S+:(\d+)/.exec(out);
      if (match) {
        cleanup();
        resolve(Number(match[1]));
      }
    };
    const onExit = (code: number | null, signal: string | null) =>
      fail(new Error(`the bench target exited before listening (${signal ?? `exit ${code}`})`));
    const cleanup = () => {
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      child.off('exit', onExit);
    };
    const fail = (error: Error) => {
      cleanup();
      reject(error);
    };
    child.stdout!.on('data', onData);
    child.on('exit', onExit);
  });
}

export async function runLocal(ctx: RunContext): Promise<Report> {
  const args = [MAIN, 'bench', 'target', '--listen', '127.0.0.1:0', '--once'];
  const child = spawn(process.execPath, args, {
    env: ctx.userEnv,
    // The target's own output (UCX warnings, failures) goes to our stderr.
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let how: string | undefined;
  const exited = new Promise<void>((resolve) =>
    child.once('exit', (code, signal) => {
      how = signal !== null ? `died of ${signal}` : `exited with status ${code}`;
      resolve();
    }),
  );
  try {
    const port = await waitForListening(child, 30_000);
    child.stdout!.on('data', (chunk: Buffer) => process.stderr.write(chunk));
    return await runInitiator(ctx, '127.0.0.1', port);
  } catch (error) {
    // A target that crashed shows up here as a closed connection: say what happened to it.
    await Promise.race([exited, new Promise((r) => setTimeout(r, 1000).unref())]);
    if (how !== undefined && error instanceof Error) error.message += ` (the bench target process ${how})`;
    throw error;
  } finally {
    const done = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 15_000).unref())]);
    if (!done) {
      child.kill('SIGKILL');
      await exited;
    }
  }
}
