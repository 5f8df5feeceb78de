/**
 * The timed loop of one kvxfer point: `inFlight` lanes per agent pair, each
 * posting its own prepared transfer (a Transfer in flight cannot be posted
 * again), all pairs at once. A warmup phase runs first and is discarded; the
 * timed phase stops after `iters` requests or `duration` seconds, whichever
 * comes first, and every lane drains before the figures are taken.
 *
 * Posts carry no timeoutMs (that is a timer per request, which would be
 * measured too); a watchdog fails the point if nothing completes for the
 * timeout instead.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Agent, DescList, Transfer } from 'kvxfer';
import { Samples, summarize } from './stats';

/** Delay histogram resolution; its interval is subtracted from the samples. */
const ELD_RESOLUTION_MS = 1;
const AUTO_WARMUP_ITERS = 8;
const AUTO_WARMUP_MS = 200;

export interface Lane {
  agent: Agent;
  peer: string;
  local: DescList;
  remote: DescList;
}

export interface LoopSpec {
  op: 'write' | 'read';
  prepared: boolean;
  notify?: string;
  iters?: number;
  /** Seconds. */
  duration?: number;
  /** undefined: at least AUTO_WARMUP_ITERS and AUTO_WARMUP_MS. */
  warmup?: number;
  timeoutMs: number;
  /** Bytes per request. */
  requestBytes: number;
  /** Descriptors per request. */
  batch: number;
  /** Requests posted together by one Agent.postAll (consecutive lanes of one pair); 1: each posts its own. */
  burst?: number;
}

export interface LoopResult {
  iterations: number;
  warmupIterations: number;
  /** Requests whose latency was timed: all, or one in 2^k at high rates. */
  timedRequests: number;
  /** Every completed post of the run, warmup included (for counting notifications). */
  totalPosts: number;
  /** The same, per lane. */
  postsPerLane: number[];
  bytes: number;
  seconds: number;
  gbps: number;
  msgRate: number;
  requestRate: number;
  latAvgUs: number;
  latP50Us: number;
  latP99Us: number;
  latP999Us: number;
  prepareUs: number;
  prepareMaxUs: number;
  postUs: number;
  /** The engine's own post-to-completion time (TransferResult.durationNs), before the completion reaches JS. */
  engineUs: number;
  cpuSeconds: number;
  cpuPercent: number;
  eldP99Ms: number;
  eldMaxMs: number;
}

export interface Progress {
  /** 0..1 of the current phase, for the progress bar. */
  fraction: number;
}

/** Shared stop rule and counters for the lanes of one phase. */
class Phase {
  claimed = 0;
  completed = 0;
  failed: unknown;
  stopped = false;
  readonly start = performance.now();
  readonly deadline: number;

  constructor(
    readonly limit: number,
    durationMs: number,
    readonly minimumMs = 0,
  ) {
    this.deadline = this.start + durationMs;
  }

  /**
   * May a lane post one more request? Reads the clock on every 32nd claim
   * only: performance.now() costs about 0.1 us, a tenth of a small request.
   */
  claim(): boolean {
    if (this.stopped) return false;
    if (this.claimed === 0) {
      this.claimed++;
      return true;
    }
    if ((this.claimed & 31) === 0) {
      const now = performance.now();
      if (now - this.start >= this.minimumMs && now >= this.deadline) this.stopped = true;
    }
    if (this.claimed >= this.limit && performance.now() - this.start >= this.minimumMs) this.stopped = true;
    if (this.stopped) return false;
    this.claimed++;
    return true;
  }

  fail(error: unknown): void {
    this.failed ??= error;
    this.stopped = true;
  }

  fraction(): number {
    const byCount = Number.isFinite(this.limit) ? this.completed / this.limit : 0;
    const byTime = Number.isFinite(this.deadline) ? (performance.now() - this.start) / (this.deadline - this.start) : 0;
    return Math.min(1, Math.max(byCount, byTime));
  }
}

interface Recorders {
  latency: Samples;
  post: Samples;
  engine: Samples;
  prepare: Samples;
  /** Time one request in (mask + 1): a power of two. */
  mask: number;
}

async function runLane(
  lane: Lane,
  spec: LoopSpec,
  phase: Phase,
  rec: Recorders | undefined,
  prepared: Transfer | undefined,
  posts: number[],
  index: number,
): Promise<void> {
  const { agent, peer, local, remote } = lane;
  const mask = rec?.mask ?? 0;
  let k = index; // lanes start at different offsets, so the timed requests interleave
  try {
    while (phase.claim()) {
      let transfer = prepared;
      if (transfer === undefined) {
        const tp = performance.now();
        transfer = agent.prepare({ op: spec.op, local, remote, peer, notify: spec.notify });
        if (rec !== undefined) rec.prepare.push(performance.now() - tp);
      }
      try {
        if (rec !== undefined && (k++ & mask) === 0) {
          const t0 = performance.now();
          const posted = transfer.post();
          const t1 = performance.now();
          const result = await posted;
          const t2 = performance.now();
          rec.post.push(t1 - t0);
          rec.latency.push(t2 - t0);
          rec.engine.push(result.durationNs / 1e6);
        } else {
          await transfer.post();
        }
      } finally {
        if (prepared === undefined) transfer.release();
      }
      posts[index]++;
      phase.completed++;
    }
  } catch (error) {
    phase.fail(error);
  }
}

/**
 * A group of `burst` lanes of one pair posting their prepared transfers
 * together (Agent.postAll) and waiting for all: each request in it counts
 * as one, and its latency is the burst's.
 */
async function runBurst(
  agent: Agent,
  phase: Phase,
  rec: Recorders | undefined,
  transfers: Transfer[],
  posts: number[],
  first: number,
): Promise<void> {
  const mask = rec?.mask ?? 0;
  let k = first;
  try {
    for (;;) {
      let n = 0;
      while (n < transfers.length && phase.claim()) n++;
      if (n === 0) return;
      const batch = n === transfers.length ? transfers : transfers.slice(0, n);
      if (rec !== undefined && (k++ & mask) === 0) {
        const t0 = performance.now();
        const posted = agent.postAll(batch);
        const t1 = performance.now();
        const results = await posted;
        const t2 = performance.now();
        for (let i = 0; i < n; i++) {
          rec.post.push((t1 - t0) / n);
          rec.latency.push(t2 - t0);
          rec.engine.push(results[i]!.durationNs / 1e6);
        }
      } else {
        await agent.postAll(batch);
      }
      for (let i = 0; i < n; i++) posts[first + i]++;
      phase.completed += n;
      if (n < transfers.length) return;
    }
  } catch (error) {
    phase.fail(error);
  }
}

async function runPhase(
  lanes: Lane[],
  spec: LoopSpec,
  phase: Phase,
  rec: Recorders | undefined,
  transfers: (Transfer | undefined)[],
  progress: Progress,
  posts: number[],
  share: [number, number],
): Promise<void> {
  let failed: () => void = () => {};
  const failure = new Promise<void>((resolve) => {
    failed = resolve;
  });
  let seen = -1;
  let quietSince = performance.now();
  // The watchdog: progress bar, and a point that stops completing fails (a lane stuck in an await cannot notice).
  const watchdog = setInterval(() => {
    progress.fraction = share[0] + share[1] * phase.fraction();
    const now = performance.now();
    if (phase.completed !== seen) {
      seen = phase.completed;
      quietSince = now;
    } else if (now - quietSince > spec.timeoutMs) {
      phase.fail(new Error(`no request completed for ${spec.timeoutMs / 1000} s: the transfer hangs`));
    }
    if (phase.failed !== undefined) failed();
  }, 100);
  try {
    const burst = spec.burst ?? 1;
    const running: Promise<void>[] = [];
    if (burst > 1) {
      for (let i = 0; i < lanes.length; i += burst) {
        running.push(runBurst(lanes[i]!.agent, phase, rec, transfers.slice(i, i + burst) as Transfer[], posts, i));
      }
    } else {
      lanes.forEach((lane, i) => running.push(runLane(lane, spec, phase, rec, transfers[i], posts, i)));
    }
    await Promise.race([Promise.all(running), failure]);
    if (phase.failed !== undefined) throw phase.failed;
  } finally {
    clearInterval(watchdog);
  }
}

/** Timed requests per second kept for latency figures; above it, one in 2^k is timed. */
const TIMED_PER_SECOND = 25_000;

function sampleMask(warmup: Phase): number {
  const seconds = (performance.now() - warmup.start) / 1000;
  const rate = warmup.completed / Math.max(seconds, 1e-3);
  let mask = 0;
  while ((mask + 1) * 2 * TIMED_PER_SECOND <= rate) mask = mask * 2 + 1;
  return mask;
}

/** Runs warmup then the timed phase over all lanes; returns the figures. */
export async function runLoop(lanes: Lane[], spec: LoopSpec, progress: Progress = { fraction: 0 }): Promise<LoopResult> {
  const prepare = new Samples();
  const transfers: (Transfer | undefined)[] = [];
  const posts = lanes.map(() => 0);
  try {
    if (spec.prepared) {
      for (const lane of lanes) {
        const tp = performance.now();
        transfers.push(lane.agent.prepare({ op: spec.op, local: lane.local, remote: lane.remote, peer: lane.peer, notify: spec.notify }));
        prepare.push(performance.now() - tp);
      }
    } else {
      for (let i = 0; i < lanes.length; i++) transfers.push(undefined);
    }

    const warmup =
      spec.warmup !== undefined
        ? new Phase(spec.warmup, Infinity)
        : new Phase(AUTO_WARMUP_ITERS * lanes.length, Infinity, AUTO_WARMUP_MS);
    if (warmup.limit > 0) await runPhase(lanes, spec, warmup, undefined, transfers, progress, posts, [0, 0.15]);

    const rec: Recorders = {
      latency: new Samples(),
      post: new Samples(),
      engine: new Samples(),
      prepare: spec.prepared ? prepare : new Samples(),
      mask: warmup.completed > 0 ? sampleMask(warmup) : 0,
    };
    const eld = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });
    const timed = new Phase(spec.iters ?? Infinity, spec.duration !== undefined ? spec.duration * 1000 : Infinity);
    const cpu0 = process.cpuUsage();
    eld.enable();
    const t0 = performance.now();
    await runPhase(lanes, spec, timed, rec, transfers, progress, posts, [0.15, 0.85]);
    const ms = performance.now() - t0;
    eld.disable();
    const cpu = process.cpuUsage(cpu0);

    const seconds = ms / 1000;
    const n = timed.completed;
    const lat = summarize(rec.latency);
    const cpuSeconds = (cpu.user + cpu.system) / 1e6;
    const eldMs = (v: number) => (Number.isFinite(v) ? Math.max(0, v / 1e6 - ELD_RESOLUTION_MS) : 0);
    return {
      iterations: n,
      warmupIterations: warmup.completed,
      totalPosts: n + warmup.completed,
      postsPerLane: posts,
      timedRequests: rec.latency.length,
      bytes: n * spec.requestBytes,
      seconds,
      gbps: (n * spec.requestBytes) / seconds / 1e9,
      msgRate: (n * spec.batch) / seconds,
      requestRate: n / seconds,
      latAvgUs: lat.avg * 1e3,
      latP50Us: lat.p50 * 1e3,
      latP99Us: lat.p99 * 1e3,
      latP999Us: lat.p999 * 1e3,
      prepareUs: rec.prepare.avg() * 1e3,
      prepareMaxUs: rec.prepare.max() * 1e3,
      postUs: rec.post.avg() * 1e3,
      engineUs: rec.engine.avg() * 1e3,
      cpuSeconds,
      cpuPercent: (cpuSeconds / seconds) * 100,
      eldP99Ms: eld.count > 0 ? eldMs(eld.percentile(99)) : 0,
      eldMaxMs: eld.count > 0 ? eldMs(eld.max) : 0,
    };
  } finally {
    for (const t of transfers) t?.release();
  }
}
