/**
 * The `net` baseline: the same job done with Node's own TCP sockets between
 * the same two processes. The initiator writes blocks; the target copies
 * each block into a destination buffer (as kvxfer's peer ends up with the
 * bytes in its memory) and acknowledges it with one byte; a block counts as
 * done when its acknowledgement is back. `inFlight` blocks are outstanding,
 * as in the kvxfer loop.
 */
import * as net from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Samples, summarize } from '../stats';

const HEADER = 8;
const ACKS = Buffer.alloc(64 * 1024);
const ELD_RESOLUTION_MS = 1;

/** Target side: one server, any number of sequential or parallel connections. */
export function startNetSink(host: string): Promise<net.Server> {
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    let header = Buffer.alloc(0);
    let block = 0;
    let dest: Buffer | undefined;
    let filled = 0;
    socket.on('data', (chunk: Buffer) => {
      if (dest === undefined) {
        header = Buffer.concat([header, chunk]);
        if (header.length < HEADER) return;
        block = header.readUInt32LE(0);
        if (block < 1) {
          socket.destroy();
          return;
        }
        dest = Buffer.allocUnsafe(block);
        chunk = header.subarray(HEADER);
      }
      let at = 0;
      let acks = 0;
      while (at < chunk.length) {
        const n = Math.min(chunk.length - at, block - filled);
        chunk.copy(dest, filled, at, at + n);
        filled += n;
        at += n;
        if (filled === block) {
          filled = 0;
          acks++;
        }
      }
      while (acks > 0) {
        const n = Math.min(acks, ACKS.length);
        socket.write(ACKS.subarray(0, n));
        acks -= n;
      }
    });
    socket.on('error', () => socket.destroy());
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve(server));
  });
}

export interface NetSpec {
  host: string;
  port: number;
  blockSize: number;
  inFlight: number;
  iters?: number;
  duration?: number;
  warmup?: number;
  timeoutMs: number;
}

export interface NetResult {
  iterations: number;
  bytes: number;
  seconds: number;
  gbps: number;
  msgRate: number;
  latAvgUs: number;
  latP50Us: number;
  latP99Us: number;
  latP999Us: number;
  cpuSeconds: number;
  cpuPercent: number;
  eldP99Ms: number;
  eldMaxMs: number;
}

/** Initiator side: connects, runs warmup then the timed phase, returns the figures. */
export async function runNet(spec: NetSpec, progress: { fraction: number } = { fraction: 0 }): Promise<NetResult> {
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ host: spec.host, port: spec.port }, () => resolve(s));
    s.once('error', reject);
  });
  socket.setNoDelay(true);
  const header = Buffer.alloc(HEADER);
  header.writeUInt32LE(spec.blockSize, 0);
  socket.write(header);
  const source = Buffer.alloc(spec.blockSize, 0x5a);

  try {
    const phase = (limit: number, durationMs: number, minimumMs: number, latency: Samples | undefined) =>
      new Promise<number>((resolve, reject) => {
        const sent: number[] = []; // send times of outstanding blocks, oldest first
        let head = 0;
        let claimed = 0;
        let completed = 0;
        const start = performance.now();
        let last = start;
        const more = () => {
          if (claimed === 0) return true;
          const now = performance.now();
          if (now - start < minimumMs) return true;
          return claimed < limit && now < start + durationMs;
        };
        const post = () => {
          claimed++;
          sent.push(performance.now());
          socket.write(source);
        };
        const timer = setInterval(() => {
          progress.fraction = Math.min(1, Math.max(completed / limit, (performance.now() - start) / durationMs));
          if (performance.now() - last > spec.timeoutMs) finish(new Error(`net baseline: no acknowledgement for ${spec.timeoutMs / 1000} s`));
        }, 100);
        const onData = (acks: Buffer) => {
          const now = performance.now();
          last = now;
          for (let i = 0; i < acks.length; i++) {
            latency?.push(now - sent[head]);
            head++;
            completed++;
          }
          if (head > 4096 && head * 2 > sent.length) {
            sent.splice(0, head);
            head = 0;
          }
          while (sent.length - head < spec.inFlight && more()) post();
          if (sent.length === head) finish(undefined);
        };
        const onClose = () => finish(new Error('net baseline: the target closed the connection'));
        const finish = (error: Error | undefined) => {
          clearInterval(timer);
          socket.off('data', onData);
          socket.off('close', onClose);
          if (error) reject(error);
          else resolve(completed);
        };
        socket.on('data', onData);
        socket.on('close', onClose);
        while (sent.length - head < spec.inFlight && more()) post();
      });

    if (spec.warmup === undefined) await phase(8, Infinity, 200, undefined);
    else if (spec.warmup > 0) await phase(spec.warmup, Infinity, 0, undefined);

    const latency = new Samples();
    const eld = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });
    const cpu0 = process.cpuUsage();
    eld.enable();
    const t0 = performance.now();
    const n = await phase(spec.iters ?? Infinity, spec.duration !== undefined ? spec.duration * 1000 : Infinity, 0, latency);
    const seconds = (performance.now() - t0) / 1000;
    eld.disable();
    const cpu = process.cpuUsage(cpu0);
    const lat = summarize(latency);
    const cpuSeconds = (cpu.user + cpu.system) / 1e6;
    const eldMs = (v: number) => (Number.isFinite(v) ? Math.max(0, v / 1e6 - ELD_RESOLUTION_MS) : 0);
    return {
      iterations: n,
      bytes: n * spec.blockSize,
      seconds,
      gbps: (n * spec.blockSize) / seconds / 1e9,
      msgRate: n / seconds,
      latAvgUs: lat.avg * 1e3,
      latP50Us: lat.p50 * 1e3,
      latP99Us: lat.p99 * 1e3,
      latP999Us: lat.p999 * 1e3,
      cpuSeconds,
      cpuPercent: (cpuSeconds / seconds) * 100,
      eldP99Ms: eld.count > 0 ? eldMs(eld.percentile(99)) : 0,
      eldMaxMs: eld.count > 0 ? eldMs(eld.max) : 0,
    };
  } finally {
    socket.destroy();
  }
}
