/**
 * The active side of a bench run: connects to a target, sets up the agent
 * pairs, and for every block size runs the kvxfer points, then the baselines
 * at the same size (so each comparison sees the same machine state), and
 * builds the report.
 */
import * as os from 'node:os';
import { Agent, DescList, info, type Region } from 'kvxfer';
import { blockIndex, distinctBlocks, kvBlockBytes, kvBlocks, pointsBytes, type BaselineName, type BenchOptions } from './args';
import { cudaMemcpyName, cudaMemcpyUnavailable, runCudaMemcpy } from './baselines/cuda';
import { memcpyUnavailable, runMemcpy } from './baselines/memcpy';
import { runNet } from './baselines/net';
import { findPerftest, perftestTest, runPerftestClient } from './baselines/perftest';
import { kvBytesPerToken } from './kv';
import { runLoop, type Lane } from './loop';
import { allocateBenchMemory, freeBenchMemory } from './memory';
import { checkBlock, fillBlock, poison } from './pattern';
import { ProgressBar } from './progress';
import {
  BASELINE_FIGURES,
  KVXFER_FIGURES,
  KV_FIGURES,
  SCHEMA,
  formatBytes,
  optionsForReport,
  shortBytes,
  type CheckResult,
  type Point,
  type Report,
  type Series,
} from './report';
import { PROTOCOL_VERSION, hostInfo } from './target';
import { Channel, connect } from './wire';

interface PlannedPoint {
  blockSize: number;
  batch: number;
  tokens?: number;
}

interface Pair {
  agent: Agent;
  peer: string;
  region: Region;
}

export interface RunContext {
  options: BenchOptions;
  command: string;
  userEnv: NodeJS.ProcessEnv;
  /** Prints a line (above the progress bar). */
  log: (line: string) => void;
}

function plan(options: BenchOptions): PlannedPoint[] {
  if (options.kv !== undefined) {
    const kv = options.kv;
    return kv.tokens.map((tokens) => ({ blockSize: kvBlockBytes(kv), batch: kvBlocks(kv, tokens), tokens }));
  }
  const out: PlannedPoint[] = [];
  for (const blockSize of options.blockSizes) for (const batch of options.batchSizes) out.push({ blockSize, batch });
  return out;
}

function seedFor(point: number, pair: number): number {
  return ((point + 1) * 1_000_003 + pair * 7919) >>> 0;
}

/** Runs a whole benchmark against the target at host:port; returns the report. */
export async function runInitiator(ctx: RunContext, host: string, port: number): Promise<Report> {
  const { options } = ctx;
  const started = new Date();
  const t0 = performance.now();
  const points = plan(options);
  const blockSizes = [...new Set(points.map((p) => p.blockSize))];
  const steps = (points.length + blockSizes.length * options.baselines.length) * options.repeat;
  const bar = new ProgressBar(steps, options.progress === 'auto');
  const log = (line: string) => (bar.enabled ? bar.log(line) : ctx.log(line));

  const ch = new Channel(await connect(host, port), 'bench target');
  const pairs: Pair[] = [];
  try {
    const bytes = Math.max(...pointsBytes(options));
    const agents: Agent[] = [];
    for (let i = 0; i < options.agents; i++) {
      const agent = await Agent.create({
        name: `bench-initiator-${os.hostname()}-${process.pid}-${i}`,
        engine: options.engine,
        ...(options.transports ? { transports: options.transports } : {}),
        ...(options.busyPollUs !== undefined ? { busyPollUs: options.busyPollUs } : {}),
      });
      agents.push(agent);
      pairs.push({ agent, peer: '', region: await allocateBenchMemory(agent, bytes, options.mem, options.device) });
    }
    ch.send(
      'hello',
      {
        version: PROTOCOL_VERSION,
        engine: options.engine,
        transports: options.transports ?? null,
        mem: options.mem,
        // The target's GPU.
        device: options.peerDevice,
        agents: options.agents,
        bytes,
        notify: options.notify,
      },
      agents.map((a) => a.metadata()),
    );
    const ready = await ch.next('ready', 120_000);
    for (let i = 0; i < pairs.length; i++) pairs[i].peer = await pairs[i].agent.loadPeer(ready.blobs[i], { timeoutMs: 30_000 });
    const target = ready.body as { host: Record<string, unknown>; netPort: number; perftest: boolean; engine: string; ucx: string | null; transports: string | null };
    log(
      `kvxfer bench: ${options.op.toUpperCase()} ${pairs[0].agent.name} -> ${target.host.hostname as string} (${pairs[0].agent.engine}, ` +
        `UCX ${info().engines.ucx.version ?? '?'}, UCX_TLS=${options.transports ?? ctx.userEnv.UCX_TLS ?? 'default'}), ` +
        `${options.agents} pair${options.agents > 1 ? 's' : ''}, in-flight ${options.inFlight}${options.burst > 1 ? ` (bursts of ${options.burst})` : ''}, ${options.prepared ? 'prepared' : 're-created'} requests` +
        `${options.notify ? ', with notifications' : ''}${options.check ? ', --check' : ''}`,
    );

    // Series: kvxfer per batch size (or one per --kv model), then the baselines.
    const kvxferSeries = new Map<string, Series>();
    // 'kvxfer', 'kvxfer x16' (per batch size), 'kvxfer llama-3.1-8b'; the engine is named when it is not UCX.
    const kvxferLabel = pairs[0].agent.engine === 'ucx' ? 'kvxfer' : `kvxfer ${pairs[0].agent.engine}`;
    const seriesName = (p: PlannedPoint) =>
      options.kv !== undefined ? `${kvxferLabel} ${options.kv.model}` : p.batch > 1 || options.batchSizes.length > 1 ? `${kvxferLabel} x${p.batch}` : kvxferLabel;
    for (const p of points) {
      const name = seriesName(p);
      if (!kvxferSeries.has(name)) {
        kvxferSeries.set(name, {
          name,
          kind: 'kvxfer',
          figures: [...KVXFER_FIGURES, ...(options.kv ? KV_FIGURES : [])],
          points: [],
        });
      }
    }
    const baselineSeries = new Map<BaselineName, Series>(
      options.baselines.map((b) => [b, { name: b, kind: 'baseline', baseline: b, figures: [...BASELINE_FIGURES[b]], points: [] } satisfies Series]),
    );

    const perftestBin = findPerftest();
    const perftestName = perftestBin !== undefined ? perftestTest(options.op, perftestBin) : 'ucp_put_bw';
    if (options.baselines.includes('ucx_perftest')) {
      if (perftestBin === undefined) baselineSeries.get('ucx_perftest')!.unavailable = 'ucx_perftest is not installed here (Debian/Ubuntu: apt-get install ucx-utils)';
      else if (!target.perftest) baselineSeries.get('ucx_perftest')!.unavailable = 'ucx_perftest is not installed on the target';
      else baselineSeries.get('ucx_perftest')!.name = `ucx_perftest ${perftestName}`;
    }
    if (options.baselines.includes('memcpy')) {
      const why = memcpyUnavailable();
      if (why !== undefined) baselineSeries.get('memcpy')!.unavailable = why;
    }
    if (options.baselines.includes('cuda_memcpy')) {
      const series = baselineSeries.get('cuda_memcpy')!;
      series.name = cudaMemcpyName(options.device, options.peerDevice);
      const why = cudaMemcpyUnavailable(options.device, options.peerDevice);
      if (why !== undefined) series.unavailable = why;
    }

    let pointId = 0;
    let failures = 0;
    // --repeat N: N rounds per block size, kvxfer and baselines interleaved, so that each sees the machine in
    // the same moods; each point keeps its median round (by GB/s) and lists every round's GB/s.
    const medianRun = (runs: Point[]): Point => {
      const sorted = [...runs].sort((a, b) => a.figures.gbps - b.figures.gbps);
      const chosen = sorted[Math.floor((sorted.length - 1) / 2)];
      if (runs.length > 1) chosen.runs = runs.map((r) => r.figures.gbps);
      return chosen;
    };
    for (const blockSize of blockSizes) {
      const here = points.filter((q) => q.blockSize === blockSize);
      const kvRuns: Point[][] = here.map(() => []);
      const baseRuns = new Map<BaselineName, Point[]>(options.baselines.map((b) => [b, []]));
      for (let round = 0; round < options.repeat; round++) {
        const of = options.repeat > 1 ? ` (${round + 1}/${options.repeat})` : '';
        let bestMsgRate = 0;
        for (const [i, p] of here.entries()) {
          const id = pointId++;
          bar.step(`kvxfer ${shortBytes(p.blockSize)} x${p.batch}${p.tokens !== undefined ? ` (${p.tokens} tokens)` : ''}${of}`);
          const point = await runKvxferPoint(ch, pairs, options, p, id, bar.current);
          bestMsgRate = Math.max(bestMsgRate, point.figures.msgRate);
          if (point.check?.verified && !point.check.ok) failures++;
          if (point.notifications && point.notifications.received < point.notifications.expected) failures++;
          kvRuns[i].push(point);
        }
        for (const b of options.baselines) {
          const series = baselineSeries.get(b)!;
          bar.step(`${b} ${shortBytes(blockSize)}${of}`);
          if (series.unavailable !== undefined && series.points.length === 0 && baseRuns.get(b)!.length === 0) continue;
          try {
            baseRuns.get(b)!.push(await runBaseline(b, ch, host, target.netPort, options, ctx, blockSize, bestMsgRate, perftestBin, perftestName, bar.current));
          } catch (error) {
            const why = error instanceof Error ? error.message : String(error);
            log(`${b} at ${shortBytes(blockSize)} failed: ${why}`);
            series.unavailable = `failed at ${shortBytes(blockSize)}: ${why.split('\n')[0]}`;
          }
        }
      }
      here.forEach((p, i) => kvxferSeries.get(seriesName(p))!.points.push(medianRun(kvRuns[i])));
      for (const [b, runs] of baseRuns) if (runs.length > 0) baselineSeries.get(b)!.points.push(medianRun(runs));
    }
    bar.done();

    // Ratios: kvxfer GB/s over each baseline's at the same block size.
    for (const series of kvxferSeries.values()) {
      for (const point of series.points) {
        point.ratio = {};
        for (const [b, base] of baselineSeries) {
          const match = base.points.find((q) => q.blockSize === point.blockSize);
          point.ratio[b] = match !== undefined && match.figures.gbps > 0 ? point.figures.gbps / match.figures.gbps : null;
        }
      }
    }

    ch.send('bye');
    await ch.next('bye', 60_000).catch(() => undefined);
    ch.close();
    const about = info();
    const ucx = about.engines.ucx;
    const report: Report = {
      schema: SCHEMA,
      command: ctx.command,
      startedAt: started.toISOString(),
      seconds: (performance.now() - t0) / 1000,
      host: hostInfo(),
      target: { ...target.host, engine: target.engine, ucx: target.ucx, transports: target.transports },
      kvxfer: {
        version: about.version,
        engine: pairs[0].agent.engine,
        ucx: ucx.version ?? null,
        transports: options.transports ?? ctx.userEnv.UCX_TLS ?? null,
      },
      options: optionsForReport(options),
      series: [...kvxferSeries.values(), ...baselineSeries.values()],
    };
    if (failures > 0) (report as Report & { failed?: number }).failed = failures;
    return report;
  } finally {
    bar.done();
    await Promise.allSettled(pairs.map((p) => p.agent.close()));
    for (const p of pairs) freeBenchMemory(p.region);
    ch.socket.destroy();
  }
}

async function runKvxferPoint(
  ch: Channel,
  pairs: Pair[],
  options: BenchOptions,
  p: PlannedPoint,
  id: number,
  progress: { fraction: number },
): Promise<Point> {
  const count = distinctBlocks(options, p.batch);
  const seeds = pairs.map((_, a) => seedFor(id, a));
  const check = options.check;
  ch.send('point', { id, blockSize: p.blockSize, count, op: options.op, check, seeds });
  const reply = await ch.next('point', 300_000);
  const lanes: Lane[] = [];
  pairs.forEach((pair, a) => {
    const remote = DescList.decode(reply.blobs[a]);
    if (remote.length !== count) throw new Error(`the target sent ${remote.length} descriptors, not ${count}`);
    for (let i = 0; i < count; i++) {
      const view = check ? pair.region.view(i * p.blockSize, p.blockSize) : undefined;
      if (view && options.op === 'write') fillBlock(view, seeds[a], i);
      if (view && options.op === 'read') poison(view);
    }
    for (let s = 0; s < options.inFlight; s++) {
      const local = [];
      const remoteSlice = [];
      for (let j = 0; j < p.batch; j++) {
        const i = blockIndex(options, p.batch, s, j);
        local.push(pair.region.slice(i * p.blockSize, p.blockSize));
        remoteSlice.push(remote.get(i));
      }
      lanes.push({ agent: pair.agent, peer: pair.peer, local: DescList.from(local), remote: DescList.from(remoteSlice) });
    }
  });
  const notify = options.notify ? `kvxfer-bench-${process.pid}-${id}` : undefined;
  const result = await runLoop(
    lanes,
    {
      op: options.op,
      prepared: options.prepared,
      notify,
      iters: options.iters,
      duration: options.duration,
      warmup: options.warmup,
      timeoutMs: options.timeoutMs,
      requestBytes: p.batch * p.blockSize,
      batch: p.batch,
      burst: options.burst,
    },
    progress,
  );

  // Lanes are pair-major: options.inFlight lanes per pair.
  const postsPerPair = pairs.map((_, a) =>
    result.postsPerLane.slice(a * options.inFlight, (a + 1) * options.inFlight).reduce((x, y) => x + y, 0),
  );
  ch.send('verify', { id, blockSize: p.blockSize, count, op: options.op, check, seeds, notify: notify ?? null, expected: postsPerPair });
  const verified = await ch.next('verify', 300_000);
  const v = verified.body as { bytes: number; blocks: number; badBlocks: number; received: number[] };

  let checkResult: CheckResult | undefined;
  if (check && options.op === 'write') {
    checkResult = { verified: true, ok: v.badBlocks === 0 && v.blocks === count * pairs.length, bytes: v.bytes, blocks: v.blocks, badBlocks: v.badBlocks, side: 'target' };
  } else if (check) {
    let bad = 0;
    pairs.forEach((pair, a) => {
      for (let i = 0; i < count; i++) if (!checkBlock(pair.region.view(i * p.blockSize, p.blockSize), seeds[a], i)) bad++;
    });
    checkResult = { verified: true, ok: bad === 0, bytes: count * pairs.length * p.blockSize, blocks: count * pairs.length, badBlocks: bad, side: 'initiator' };
  }

  const figures: Record<string, number> = {};
  for (const f of KVXFER_FIGURES) figures[f] = result[f];
  if (p.tokens !== undefined && options.kv !== undefined) {
    figures.tokens = p.tokens;
    figures.kvBytes = p.tokens * kvBytesPerToken(options.kv);
    // What moving one prompt's KV costs: the request's latency, plus its prepare() when requests are re-created.
    figures.moveMs = (result.latAvgUs + (options.prepared ? 0 : result.prepareUs)) / 1e3;
  }
  const point: Point = {
    op: options.op,
    blockSize: p.blockSize,
    batch: p.batch,
    inFlight: options.inFlight,
    agents: pairs.length,
    ...(p.tokens !== undefined ? { tokens: p.tokens } : {}),
    figures,
  };
  if (checkResult) point.check = checkResult;
  if (notify !== undefined) {
    point.notifications = { expected: result.totalPosts, received: v.received.reduce((a, b) => a + b, 0) };
  }
  return point;
}

async function runBaseline(
  b: BaselineName,
  ch: Channel,
  host: string,
  netPort: number,
  options: BenchOptions,
  ctx: RunContext,
  blockSize: number,
  kvxferMsgRate: number,
  perftestBin: string | undefined,
  perftestName: string,
  progress: { fraction: number },
): Promise<Point> {
  const base = { op: options.op, blockSize, batch: 1, inFlight: options.inFlight, agents: 1 };
  const seconds = options.duration ?? 1;
  if (b === 'memcpy') {
    const r = await runMemcpy(blockSize, options.duration !== undefined ? Math.min(options.duration, 0.5) : undefined, options.iters, progress);
    return { ...base, inFlight: 1, figures: { gbps: r.gbps, msgRate: r.iterations / r.seconds, iterations: r.iterations, bytes: r.bytes, seconds: r.seconds, latAvgUs: r.latAvgUs } };
  }
  if (b === 'cuda_memcpy') {
    const r = await runCudaMemcpy(blockSize, options.device, options.peerDevice, options.duration, options.iters, progress);
    return { ...base, inFlight: 1, figures: { gbps: r.gbps, msgRate: r.iterations / r.seconds, iterations: r.iterations, bytes: r.bytes, seconds: r.seconds, latAvgUs: r.latAvgUs } };
  }
  if (b === 'net') {
    const r = await runNet(
      { host, port: netPort, blockSize, inFlight: options.inFlight, iters: options.iters, duration: options.duration, warmup: options.warmup, timeoutMs: options.timeoutMs },
      progress,
    );
    const figures: Record<string, number> = {};
    for (const f of BASELINE_FIGURES.net) figures[f] = (r as unknown as Record<string, number>)[f];
    return { ...base, figures };
  }
  // ucx_perftest has no time limit: --iters, or enough iterations for about --duration at the faster of
  // kvxfer's rate and 10 GB/s (capped at 5M), so that it neither ends in a blink nor runs for minutes.
  ch.send('perftest', {});
  const reply = await ch.next('perftest', 30_000);
  if (typeof reply.body.error === 'string') throw new Error(reply.body.error);
  const guess = Math.max(kvxferMsgRate, Math.min(5e6, 1e10 / blockSize));
  const iters = options.iters ?? Math.min(5_000_000, Math.max(100, Math.round(guess * seconds)));
  const warmup = options.warmup ?? Math.min(10_000, Math.max(10, Math.round(iters / 10)));
  const env = { ...ctx.userEnv, ...(options.transports ? { UCX_TLS: options.transports } : {}) };
  const r = await runPerftestClient({
    bin: perftestBin!,
    host,
    port: reply.body.port as number,
    test: perftestName,
    size: blockSize,
    iters,
    warmup,
    env,
    timeoutMs: Math.max(120_000, options.timeoutMs),
  });
  progress.fraction = 1;
  return {
    ...base,
    inFlight: 1,
    command: r.command,
    figures: { gbps: r.gbps, msgRate: r.msgRate, iterations: r.iterations, latAvgUs: r.latAvgUs, latP50Us: r.latP50Us },
  };
}

export { formatBytes };
