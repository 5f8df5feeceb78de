/**
 * `kvxfer bench --kv MODEL --tokens N --handoff pull|push|stream`: KV handoff
 * between two processes on this host, against one contiguous transfer of the
 * same bytes in the same run (a READ for pull, a WRITE for push and stream).
 *
 * This process is the decode worker for pull (it pulls) and the prefill
 * worker for push and stream (it pushes); it forks the other worker
 * (handoff-peer.js), which it finds through the TCP side channel, and plays
 * the router: tickets cross the fork's IPC channel. Each request uses
 * scattered block ids (no two adjacent), as a paged cache hands them out.
 *
 * Reported per point: the handoff time per request (median, p90) and its
 * ratio to the contiguous transfer; descriptors before and after merging;
 * the launch overhead of a one-block request (offer -> pull -> done); for
 * stream, the request's time against its compute plus one layer's transfer;
 * and the event loop's delay (p99) on both sides while handing off.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import * as path from 'node:path';
import { Agent, KvHandoff, KvLayout, KvPool, type Region } from 'kvxfer';
import type { BenchOptions, KvOptions } from './args';

export type HandoffMode = 'pull' | 'push' | 'stream';

/** Where the pools live: allocate()d memory (shared memory UCX places), or registered Buffers. */
export type PoolMemory = 'allocate' | 'buffer';

/** A pool of `layout` and a region of `contiguousBytes` beside it, both in `memory`. */
export async function benchMemory(agent: Agent, layout: KvLayout, contiguousBytes: number, memory: PoolMemory): Promise<{ pool: KvPool; contiguous: Region }> {
  if (memory === 'allocate') return { pool: await KvPool.allocate(agent, layout), contiguous: await agent.allocate(contiguousBytes) };
  const [pool, contiguous] = await Promise.all([agent.register(Buffer.alloc(layout.bytes)), agent.register(Buffer.alloc(contiguousBytes))]);
  return { pool: KvPool.over(agent, pool, layout), contiguous };
}

/** What the bench asks of the forked worker, and what it answers. */
export type PeerRequest =
  | { op: 'setup'; layout: object; engine: string; transports?: string; contiguousBytes: number; pool: PoolMemory }
  | { op: 'offer'; request: string; blocks: number[] }
  | { op: 'reserve'; request: string; blocks: number[] }
  | { op: 'loop'; reset: boolean }
  | { op: 'exit' };

interface Answer {
  ok: boolean;
  error?: string;
  [key: string]: unknown;
}

export interface HandoffPoint {
  tokens: number;
  bytes: number;
  blocks: number;
  descriptors: { unmerged: number; merged: number };
  iterations: number;
  handoffMs: { median: number; p90: number };
  contiguousMs: { median: number };
  /** handoff GB/s over contiguous GB/s: 1 is as fast as one transfer of the same bytes. */
  ratio: number;
  /**
   * stream only: the compute as it took (median), one layer's share of the
   * contiguous transfer, and how many such layer transfers the request
   * took beyond its compute (median; the target is at most 1.2).
   */
  stream?: { computeMsPerLayer: number; computeMs: number; oneLayerMs: number; overComputeInLayers: number };
  eventLoopP99Ms: { here: number; peer: number };
}

export interface HandoffReport {
  schema: 'kvxfer-bench-handoff/1';
  command: string;
  mode: HandoffMode;
  model: string;
  /** The pools' memory (--pool). */
  pool: PoolMemory;
  layout: Record<string, unknown>;
  engine: string;
  host: { cpus: number; load: number[] };
  /**
   * A one-block request, offer -> pull -> done: its time (median, p90), a
   * plain READ of the same descriptors right after it (median), and the
   * median of their difference, which is what the handoff adds; and one
   * notification round trip between the same processes (median), the floor
   * under a handoff that waits for the other side's confirmation.
   */
  launchUs: { median: number; p90: number; readMedian: number; overheadMedian: number; roundTripMedian: number; iterations: number };
  points: HandoffPoint[];
}

const PEER = path.join(__dirname, 'handoff-peer.js');

function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

const round = (v: number, digits = 3) => Math.round(v * 10 ** digits) / 10 ** digits;

/** `count` distinct block ids of `blocks`, no two adjacent, in a shuffled order. */
export function scatteredBlocks(count: number, blocks: number, seed: number): number[] {
  if (2 * count > blocks) throw new Error(`${count} scattered blocks need a pool of at least ${2 * count}`);
  const ids = Array.from({ length: count }, (_, i) => 2 * i);
  let s = seed >>> 0 || 1;
  for (let i = ids.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) >>> 0;
    const j = s % (i + 1);
    [ids[i], ids[j]] = [ids[j]!, ids[i]!];
  }
  return ids;
}

class PeerWorker {
  readonly #child: ChildProcess;
  #next: Promise<unknown> = Promise.resolve();

  constructor() {
    this.#child = fork(PEER, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' });
  }

  /** One request at a time, answered in order. */
  call(request: PeerRequest): Promise<Answer> {
    const run = this.#next.then(
      () =>
        new Promise<Answer>((resolve, reject) => {
          const onExit = (code: number | null) => reject(new Error(`the handoff peer exited (${code})`));
          this.#child.once('exit', onExit);
          this.#child.once('message', (answer) => {
            this.#child.off('exit', onExit);
            const a = answer as Answer;
            if (a.ok) resolve(a);
            else reject(new Error(`handoff peer: ${a.error}`));
          });
          this.#child.send(request);
        }),
    );
    this.#next = run.catch(() => {});
    return run;
  }

  kill(): void {
    this.#child.kill('SIGKILL');
  }
}

export function layoutFor(kv: KvOptions, tokens: number): KvLayout {
  const requestBlocks = Math.ceil(tokens / kv.blockTokens);
  return new KvLayout({
    layers: kv.layers,
    blocks: 2 * requestBlocks,
    blockTokens: kv.blockTokens,
    kvHeads: kv.kvHeads,
    headDim: kv.headDim,
    dtype: kv.dtype,
    order: 'layer-kv-block',
    heads: 'HND',
  });
}

/** Runs the handoff bench; resolves with the report. */
export async function runHandoffBench(
  options: BenchOptions & { handoff: HandoffMode; computeMs: number },
  command: string,
  log: (line: string) => void,
): Promise<HandoffReport> {
  const kv = options.kv!;
  const mode = options.handoff;
  const iterations = options.iters ?? 10;
  const warmup = options.warmup ?? 2;
  const peer = new PeerWorker();
  const points: HandoffPoint[] = [];
  let launch = { median: 0, p90: 0, readMedian: 0, overheadMedian: 0, roundTripMedian: 0, iterations: 0 };
  let engine = '';
  try {
    for (const tokens of kv.tokens) {
      const layout = layoutFor(kv, tokens);
      const agent = await Agent.create({
        name: `bench-handoff-${process.pid}-${tokens}`,
        ...(options.engine !== 'auto' ? { engine: options.engine } : {}),
        ...(options.transports !== undefined ? { transports: options.transports } : {}),
      });
      engine = agent.engine;
      try {
        const requestBlocks = layout.blocks / 2;
        const bytes = requestBlocks * layout.blockBytes;
        const { pool, contiguous } = await benchMemory(agent, layout, bytes, options.pool);
        const handoff = new KvHandoff(agent, pool);
        const setup = await peer.call({
          op: 'setup',
          layout: layout.options,
          engine: agent.engine,
          transports: options.transports,
          contiguousBytes: bytes,
          pool: options.pool,
        });
        await agent.fetchPeer({ host: '127.0.0.1', port: setup.port as number });
        const peerName = setup.name as string;
        const far = setup.region as { address: bigint; length: number };
        const remote = KvPool.remote(setup.descriptor as Uint8Array);

        const times: number[] = [];
        const contiguousTimes: number[] = [];
        const streamTimes: number[] = [];
        const computeTimes: number[] = [];
        const loop = monitorEventLoopDelay({ resolution: 1 });
        let peerP99 = 0;
        for (let i = 0; i < warmup + iterations; i++) {
          const measured = i >= warmup;
          if (i === warmup) {
            loop.enable();
            await peer.call({ op: 'loop', reset: true });
          }
          const mine = scatteredBlocks(requestBlocks, layout.blocks, 2 * i + 1);
          const theirs = scatteredBlocks(requestBlocks, layout.blocks, 2 * i + 2);
          // The contiguous transfer of the same bytes, in the same direction, right before.
          const c0 = process.hrtime.bigint();
          if (mode === 'pull') await agent.read(contiguous.slice(0, bytes), [{ address: far.address, length: bytes }], peerName);
          else await agent.write(contiguous.slice(0, bytes), [{ address: far.address, length: bytes }], peerName);
          const c1 = process.hrtime.bigint();
          if (measured) contiguousTimes.push(Number(c1 - c0) / 1e6);

          if (mode === 'pull') {
            const offer = await peer.call({ op: 'offer', request: `r${i}`, blocks: theirs });
            const p0 = process.hrtime.bigint();
            await handoff.pull([offer.ticket as Uint8Array], mine);
            if (measured) times.push(Number(process.hrtime.bigint() - p0) / 1e6);
          } else {
            const reservation = await peer.call({ op: 'reserve', request: `r${i}`, blocks: theirs });
            const p0 = process.hrtime.bigint();
            if (mode === 'push') {
              await handoff.push([reservation.ticket as Uint8Array], mine);
            } else {
              const s = handoff.stream([reservation.ticket as Uint8Array], mine);
              // The compute as it really took (a timer sleeps at least its time, on a busy host longer).
              let computed = 0n;
              for (let layer = 0; layer < layout.layers; layer++) {
                const k0 = process.hrtime.bigint();
                if (options.computeMs > 0) await new Promise((resolve) => setTimeout(resolve, options.computeMs));
                computed += process.hrtime.bigint() - k0;
                s.layerReady(layer);
              }
              await s.done;
              if (measured) {
                streamTimes.push(Number(process.hrtime.bigint() - p0) / 1e6);
                computeTimes.push(Number(computed) / 1e6);
              }
            }
            if (measured && mode === 'push') times.push(Number(process.hrtime.bigint() - p0) / 1e6);
            if (measured && mode === 'stream') times.push(streamTimes.at(-1)!);
          }
        }
        loop.disable();
        peerP99 = (await peer.call({ op: 'loop', reset: false })).p99 as number;
        const counted = pool.pairDescs(scatteredBlocks(requestBlocks, layout.blocks, 1), remote, scatteredBlocks(requestBlocks, layout.blocks, 2));
        const handoffMedian = quantile(times, 0.5);
        const contiguousMedian = quantile(contiguousTimes, 0.5);
        const point: HandoffPoint = {
          tokens,
          bytes,
          blocks: requestBlocks,
          descriptors: { unmerged: counted.unmerged, merged: counted.local.length },
          iterations,
          handoffMs: { median: round(handoffMedian), p90: round(quantile(times, 0.9)) },
          contiguousMs: { median: round(contiguousMedian) },
          ratio: round(contiguousMedian / handoffMedian),
          eventLoopP99Ms: { here: round(loop.percentile(99) / 1e6), peer: round(peerP99) },
        };
        if (mode === 'stream') {
          const oneLayerMs = contiguousMedian / layout.layers;
          // Per iteration: what the request took beyond its own compute, in layer transfers.
          const over = streamTimes.map((t, k) => (t - computeTimes[k]!) / oneLayerMs);
          point.stream = {
            computeMsPerLayer: options.computeMs,
            computeMs: round(quantile(computeTimes, 0.5)),
            oneLayerMs: round(oneLayerMs),
            overComputeInLayers: round(quantile(over, 0.5)),
          };
        }
        points.push(point);
        log(
          `${tokens} tokens (${(bytes / 2 ** 20).toFixed(0)} MiB, ${requestBlocks} scattered blocks, ` +
            `${point.descriptors.unmerged} -> ${point.descriptors.merged} descriptors): ${mode} ${point.handoffMs.median} ms, ` +
            `contiguous ${point.contiguousMs.median} ms, ratio ${point.ratio}`,
        );

        // Launch overhead: a one-block request, offer -> pull -> done (pull mode only measures it).
        if (mode === 'pull' && launch.iterations === 0) {
          // Blocks the runs above used (even ids): their pages are mapped on both sides, as a
          // serving pool's are. A block touched for the first time pays a page fault per page
          // (a few ms for a 2 MiB block), which is not the handoff's cost.
          const launches: number[] = [];
          const reads: number[] = [];
          for (let i = 0; i < 20 + 200; i++) {
            const theirs = 2 * (i % requestBlocks);
            const mine = 2 * ((i + 1) % requestBlocks);
            const offer = await peer.call({ op: 'offer', request: `one${i}`, blocks: [theirs] });
            const p0 = process.hrtime.bigint();
            await handoff.pull([offer.ticket as Uint8Array], [mine]);
            const p1 = process.hrtime.bigint();
            // The same bytes by one plain READ: what the handoff adds is the difference.
            const one = pool.pairDescs([mine], remote, [theirs]);
            const r0 = process.hrtime.bigint();
            await agent.read(one.local, one.remote, peerName);
            const r1 = process.hrtime.bigint();
            if (i >= 20) {
              launches.push(Number(p1 - p0) / 1e3);
              reads.push(Number(r1 - r0) / 1e3);
            }
          }
          // The floor under any confirmed handoff: one notification there and back, between
          // the same two processes (each way through both engines' threads and event loops).
          const trips: number[] = [];
          for (let i = 0; i < 20 + 200; i++) {
            const t0 = process.hrtime.bigint();
            const back = agent.waitForNotification(peerName, `ping${i}`, { timeoutMs: 10_000 });
            await agent.notify(peerName, `ping${i}`);
            await back;
            if (i >= 20) trips.push(Number(process.hrtime.bigint() - t0) / 1e3);
          }
          const overheads = launches.map((t, k) => t - reads[k]!);
          launch = {
            median: round(quantile(launches, 0.5), 1),
            p90: round(quantile(launches, 0.9), 1),
            readMedian: round(quantile(reads, 0.5), 1),
            overheadMedian: round(quantile(overheads, 0.5), 1),
            roundTripMedian: round(quantile(trips, 0.5), 1),
            iterations: launches.length,
          };
          log(
            `launch of a one-block pull (${layout.blockBytes / 2 ** 20} MiB): median ${launch.median} us, p90 ${launch.p90} us; ` +
              `the same bytes by one READ ${launch.readMedian} us; the handoff adds ${launch.overheadMedian} us (median); ` +
              `one notification round trip ${launch.roundTripMedian} us`,
          );
        }
        handoff.close();
      } finally {
        await agent.close();
      }
    }
    await peer.call({ op: 'exit' }).catch(() => {});
  } finally {
    peer.kill();
  }
  const os = await import('node:os');
  return {
    schema: 'kvxfer-bench-handoff/1',
    command,
    mode,
    pool: options.pool,
    model: kv.model,
    layout: { ...layoutFor(kv, kv.tokens[0]!).options, blocks: 'twice the request' },
    engine,
    host: { cpus: os.cpus().length, load: os.loadavg().map((l) => round(l, 2)) },
    launchUs: launch,
    points,
  };
}

export function formatHandoffTable(report: HandoffReport): string {
  const lines = [
    `KV handoff (${report.mode}), ${report.model}, pools in ${report.pool === 'buffer' ? 'registered Buffers' : 'allocate()d memory'}, ${report.engine} engine, ${report.host.cpus} CPUs (load ${report.host.load.join(' ')})`,
    'tokens   MiB  descriptors (unmerged -> merged)  handoff ms (p50/p90)  contiguous ms  ratio  loop p99 ms (here/peer)',
  ];
  for (const p of report.points) {
    lines.push(
      `${String(p.tokens).padStart(6)} ${(p.bytes / 2 ** 20).toFixed(0).padStart(5)}  ${`${p.descriptors.unmerged} -> ${p.descriptors.merged}`.padEnd(32)}  ` +
        `${`${p.handoffMs.median}/${p.handoffMs.p90}`.padEnd(20)}  ${String(p.contiguousMs.median).padEnd(13)}  ${String(p.ratio).padEnd(5)}  ` +
        `${p.eventLoopP99Ms.here}/${p.eventLoopP99Ms.peer}`,
    );
    if (p.stream !== undefined) {
      lines.push(
        `        stream: compute took ${p.stream.computeMs} ms (${p.stream.computeMsPerLayer} ms a layer), one layer's transfer ${p.stream.oneLayerMs} ms: ` +
          `finished ${p.stream.overComputeInLayers} layer transfers after the compute`,
      );
    }
  }
  if (report.launchUs.iterations > 0) {
    const l = report.launchUs;
    lines.push(
      `launch (one-block offer -> pull -> done): median ${l.median} us, p90 ${l.p90} us; one READ of the same bytes ${l.readMedian} us; ` +
        `handoff overhead ${l.overheadMedian} us (median); notification round trip ${l.roundTripMedian} us`,
    );
  }
  return `${lines.join('\n')}\n`;
}
