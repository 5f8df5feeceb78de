/**
 * The `ucx_perftest` baseline: UCX's own benchmark between the same two
 * hosts (a server next to the bench target, the client here), UCP put or get
 * bandwidth at each block size, over the same UCX_TLS.
 *
 * ucx_perftest's "bandwidth (MB/s)" columns are MiB/s (it divides by 2^20);
 * they are converted to GB/s (1e9 bytes/s) here. The message rate is the
 * "overall" msg/s column.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

export function findPerftest(): string | undefined {
  const explicit = process.env.KVXFER_UCX_PERFTEST;
  if (explicit) return explicit;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir === '') continue;
    const file = path.join(dir, 'ucx_perftest');
    try {
      fs.accessSync(file, fs.constants.X_OK);
      if (fs.statSync(file).isFile()) return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

export function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, host, () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Test names differ between UCX releases: 1.13 has ucp_get, later ones ucp_get_bw too. */
export function perftestTest(op: 'write' | 'read', bin: string): string {
  if (op === 'write') return 'ucp_put_bw';
  const help = spawnSync(bin, ['-h'], { encoding: 'utf8', timeout: 10_000 });
  const text = `${help.stdout ?? ''}${help.stderr ?? ''}`;
  return /\bucp_get_bw\b/.test(text) ? 'ucp_get_bw' : 'ucp_get';
}

export interface PerftestServer {
  port: number;
  child: ChildProcess;
  output(): string;
}

/** Target side: one server for one test (ucx_perftest serves one client, then exits). */
export async function startPerftestServer(bin: string, host: string, env: NodeJS.ProcessEnv): Promise<PerftestServer> {
  const port = await freePort(host);
  const child = spawn(bin, ['-p', String(port)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  child.on('error', (e) => (out += String(e)));
  // Reaped once the client is done; never left behind.
  const reaper = setTimeout(() => child.kill('SIGKILL'), 15 * 60_000);
  reaper.unref();
  child.on('exit', () => clearTimeout(reaper));
  return { port, child, output: () => out };
}

export interface PerftestResult {
  command: string;
  iterations: number;
  gbps: number;
  mibps: number;
  msgRate: number;
  latAvgUs: number;
  latP50Us: number;
  finalLine: string;
}

/**
 * "Final:  iters  p50  lat_avg  lat_overall  bw_avg  bw_overall  mr_avg  mr_overall" (UCX 1.13).
 * Returns undefined when there is no such line.
 */
export function parsePerftest(out: string): Omit<PerftestResult, 'command'> | undefined {
  const finals = out.split('\n').filter((l) => /^\s*Final:/.test(l));
  if (finals.length === 0) return undefined;
  const line = finals[finals.length - 1].trim();
  const nums = line.replace(/^Final:/, '').trim().split(/\s+/).map(Number);
  if (nums.length < 8 || [0, 1, 3, 5, 7].some((i) => !Number.isFinite(nums[i]))) return undefined;
  return {
    iterations: nums[0],
    latP50Us: nums[1],
    // The average column reads 'inf' when a timing window was empty; the overall one never does.
    latAvgUs: Number.isFinite(nums[2]) ? nums[2] : nums[3],
    mibps: nums[5],
    gbps: (nums[5] * 2 ** 20) / 1e9,
    msgRate: nums[7],
    finalLine: line,
  };
}

function run(bin: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ code: number | string | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: -1, out: out + String(e) });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: signal ?? code, out });
    });
  });
}

export interface PerftestClientSpec {
  bin: string;
  host: string;
  port: number;
  test: string;
  size: number;
  iters: number;
  warmup: number;
  env: NodeJS.ProcessEnv;
  timeoutMs: number;
}

/** Initiator side. The server may need a moment to listen: refused connections are retried. */
export async function runPerftestClient(spec: PerftestClientSpec): Promise<PerftestResult> {
  const args = [spec.host, '-p', String(spec.port), '-t', spec.test, '-s', String(spec.size), '-n', String(spec.iters), '-w', String(spec.warmup)];
  const command = `ucx_perftest ${args.join(' ')}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    const { code, out } = await run(spec.bin, args, spec.env, spec.timeoutMs);
    const parsed = code === 0 ? parsePerftest(out) : undefined;
    if (parsed !== undefined) return { command, ...parsed };
    if (/Connection refused/.test(out) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      continue;
    }
    const tail = out.trimEnd().split('\n').slice(-8).join('\n');
    throw new Error(`${command} failed (exit ${String(code)}):\n${tail}`);
  }
}
