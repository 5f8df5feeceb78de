/**
 * Prometheus metrics for kvxfer agents, through prom-client: the
 * `kvxfer/prometheus` entry of the package.
 *
 * ```ts
 * import { Registry } from 'prom-client';
 * import { collectMetrics } from 'kvxfer/prometheus';
 *
 * const registry = new Registry();
 * const metrics = collectMetrics(agent, { registry });
 * // serve `await registry.metrics()` with `registry.contentType`
 * metrics.unregister();
 * ```
 *
 * prom-client is an optional peer dependency of kvxfer: install it
 * (`npm install prom-client`) to use this entry; the main entry never loads it.
 *
 * @module kvxfer/prometheus
 */
import {
  Counter,
  Gauge,
  Histogram,
  Registry,
  register as globalRegistry,
  type OpenMetricsContentType,
  type PrometheusContentType,
} from 'prom-client';
import { Agent, coreOf } from './agent';
import { invalidArg } from './errors';
import type { AgentStats } from './types';
import type { OpTally } from './stats';

/** A prom-client registry of either exposition format. */
export type MetricsRegistry = Registry<PrometheusContentType> | Registry<OpenMetricsContentType>;

/** Options of collectMetrics. */
export interface MetricsOptions {
  /**
   * The registry to register the metrics in. Default: prom-client's global
   * `register`. Counters are named for the registry's format at this call
   * (`_total` in the name for Prometheus' text format; OpenMetrics
   * registries add it themselves).
   */
  registry?: MetricsRegistry;
  /** Prepended to every metric name. Default `'kvxfer_'`. */
  prefix?: string;
  /**
   * The most peers an agent's metrics name in their `peer` label; the
   * transfers of peers seen after that many are counted under
   * `peer="other"`. Default 32.
   */
  maxPeers?: number;
  /**
   * Upper bounds, in seconds, of the transfer-time histogram's buckets.
   * Default {@link DEFAULT_DURATION_BUCKETS} (10 us to 10 s).
   */
  buckets?: readonly number[];
}

/** What collectMetrics returns: the way to stop collecting. */
export interface MetricsCollector {
  /**
   * Stops reporting this agent. The metrics leave the registry once no
   * agent is reported in it under this prefix. Idempotent.
   */
  unregister(): void;
}

/**
 * The transfer-time histogram's default bucket bounds in seconds: 1, 2.5
 * and 5 per decade from 10 us to 10 s. A 4 KiB transfer on one host takes
 * tens of microseconds, a 1 GiB one across a slow link seconds.
 */
export const DEFAULT_DURATION_BUCKETS: readonly number[] = Object.freeze([
  0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
  2.5, 5, 10,
]);

const DEFAULT_MAX_PEERS = 32;
/** The `peer` label of every peer past maxPeers. */
const OTHER = 'other';
const OPS = ['write', 'read'] as const;
type Op = (typeof OPS)[number];

/** One reported agent. */
interface Entry {
  agent: Agent;
  maxPeers: number;
  /** Peers that have their own label, in the order they were first seen. */
  named: Set<string>;
  detach: () => void;
}

type CounterName = 'transfers' | 'failures' | 'bytes';

/** The configuration of a metric that `fill` sets anew at each scrape (registered by the caller). */
function scraped<L extends string, M extends { reset(): void }>(name: string, help: string, labelNames: L[], fill: (metric: M) => void) {
  return {
    name,
    help,
    labelNames,
    registers: [],
    collect(this: M) {
      this.reset();
      fill(this);
    },
  };
}

/** The metrics of one registry and prefix, shared by every agent reported there. */
class MetricSet {
  readonly entries = new Set<Entry>();
  readonly #registry: MetricsRegistry;
  readonly #names: string[] = [];
  readonly histogram: Histogram<'agent' | 'op'>;
  #nixl: string[] | undefined;
  readonly #prefix: string;
  /** One snapshot per agent per scrape, so that every metric of a scrape agrees. */
  #snapshots: Map<Entry, AgentStats> | undefined;

  constructor(registry: MetricsRegistry, prefix: string, buckets: readonly number[]) {
    this.#registry = registry;
    this.#prefix = prefix;
    const byOpAndPeer = (name: string, help: string, field: CounterName) =>
      this.#counter(name, help, ['agent', 'op', 'peer'], (metric) => {
        for (const [entry] of this.#scrape()) {
          for (const [labels, tally] of this.#tallies(entry)) metric.inc(labels, tally[field]);
        }
      });
    byOpAndPeer('transfers', 'Transfers that completed, by op and peer.', 'transfers');
    byOpAndPeer('transfer_failures', 'Transfers that failed (refused ones to a dead peer included), by op and peer.', 'failures');
    byOpAndPeer('transfer_bytes', 'Bytes moved by transfers that completed, by op and peer.', 'bytes');
    this.histogram = new Histogram({
      name: `${prefix}transfer_duration_seconds`,
      help: 'Time from post to completion of transfers that completed, by op (counted from collectMetrics on).',
      labelNames: ['agent', 'op'],
      buckets: [...buckets],
      registers: [],
    });
    this.#add(this.histogram);
    const perAgent = (kind: 'counter' | 'gauge', name: string, help: string, value: (s: AgentStats) => number) => {
      const collect = (metric: Counter<'agent'> | Gauge<'agent'>) => {
        for (const [entry, stats] of this.#scrape()) {
          if (metric instanceof Counter) metric.inc({ agent: entry.agent.name }, value(stats));
          else metric.set({ agent: entry.agent.name }, value(stats));
        }
      };
      if (kind === 'counter') this.#counter(name, help, ['agent'], collect);
      else this.#gauge(name, help, ['agent'], collect);
    };
    perAgent('gauge', 'transfers_in_flight', 'Transfers posted and not completed yet.', (s) => s.inFlight);
    perAgent('gauge', 'regions', 'Memory regions registered now.', (s) => s.regions);
    perAgent('counter', 'notifications_sent', 'Notifications sent, standalone or riding on a transfer.', (s) => s.notificationsSent);
    perAgent('counter', 'notifications_received', 'Notifications received, standalone or riding on a transfer.', (s) => s.notificationsReceived);
    perAgent('counter', 'busy_polls', 'Polls of the JS thread for completions before the event loop slept (busyPollUs).', (s) => s.busyPoll.polls);
    perAgent('counter', 'busy_poll_hits', 'Busy polls that found a completion (each a wake-up saved).', (s) => s.busyPoll.found);
    perAgent('counter', 'busy_poll_seconds', 'Time spent busy-polling.', (s) => s.busyPoll.us / 1e6);
    perAgent('counter', 'busy_poll_contended', 'Busy polls cut short because other threads held the core (polling then pauses).', (s) => s.busyPoll.contended);
    this.#gauge('peer_failed', 'Peers found dead or unreachable (1) or not (0); under peer="other", how many of the rest are.', ['agent', 'peer'], (metric) => {
      for (const [entry, stats] of this.#scrape()) {
        const agent = entry.agent.name;
        let others: number | undefined;
        for (const [peer, p] of Object.entries(stats.peers)) {
          const label = this.#label(entry, peer);
          if (label === OTHER) others = (others ?? 0) + (p.failed ? 1 : 0);
          else metric.set({ agent, peer: label }, p.failed ? 1 : 0);
        }
        if (others !== undefined) metric.set({ agent, peer: OTHER }, others);
      }
    });
  }

  get empty(): boolean {
    return this.entries.size === 0;
  }

  /** NIXL's own figures, registered while a NIXL-engine agent is reported. */
  updateNixl(): void {
    const wanted = [...this.entries].some((e) => e.agent.engine === 'nixl');
    if (wanted && this.#nixl === undefined) {
      const before = this.#names.length;
      const nixl = (name: string, help: string, value: (t: NonNullable<AgentStats['telemetry']>) => number) =>
        this.#counter(name, help, ['agent'], (metric) => {
          for (const [entry, stats] of this.#scrape()) {
            if (entry.agent.engine === 'nixl') metric.inc({ agent: entry.agent.name }, stats.telemetry === undefined ? 0 : value(stats.telemetry));
          }
        });
      nixl('nixl_transfers', 'Transfers NIXL measured (NIXL engine).', (t) => t.transfers);
      nixl('nixl_post_seconds', "NIXL's post time of the transfers it measured, summed (NIXL engine).", (t) => t.postUs / 1e6);
      nixl('nixl_transfer_seconds', "NIXL's transfer time of the transfers it measured, summed (NIXL engine).", (t) => t.transferUs / 1e6);
      nixl('nixl_bytes', 'Bytes of the transfers NIXL measured (NIXL engine).', (t) => t.bytes);
      this.#nixl = this.#names.splice(before);
    } else if (!wanted && this.#nixl !== undefined) {
      for (const name of this.#nixl) this.#registry.removeSingleMetric(name);
      this.#nixl = undefined;
    }
  }

  /** Takes every metric out of the registry. */
  remove(): void {
    for (const name of [...this.#names, ...(this.#nixl ?? [])]) this.#registry.removeSingleMetric(name);
  }

  /** A counter whose values are set from the agents' figures at each scrape. */
  #counter<L extends string>(base: string, help: string, labelNames: L[], fill: (metric: Counter<L>) => void): void {
    // OpenMetrics registries add the `_total` suffix themselves.
    const openMetrics = (this.#registry.contentType as string) === Registry.OPENMETRICS_CONTENT_TYPE;
    this.#add(new Counter<L>(scraped(`${this.#prefix}${base}${openMetrics ? '' : '_total'}`, help, labelNames, fill)));
  }

  /** A gauge whose values are set from the agents' figures at each scrape. */
  #gauge<L extends string>(base: string, help: string, labelNames: L[], fill: (metric: Gauge<L>) => void): void {
    this.#add(new Gauge<L>(scraped(`${this.#prefix}${base}`, help, labelNames, fill)));
  }

  #add(metric: Counter<string> | Gauge<string> | Histogram<string>): void {
    const name = (metric as unknown as { name: string }).name;
    if (this.#registry.getSingleMetric(name) !== undefined) {
      for (const added of this.#names) this.#registry.removeSingleMetric(added);
      throw invalidArg(`the registry already has a metric named '${name}': choose another prefix`);
    }
    this.#registry.registerMetric(metric);
    this.#names.push(name);
  }

  /** The agents to report in this scrape and their figures; closed agents leave the set here. */
  #scrape(): Map<Entry, AgentStats> {
    if (this.#snapshots === undefined) {
      const snapshots = new Map<Entry, AgentStats>();
      for (const entry of [...this.entries]) {
        if (entry.agent.closed) entry.detach();
        else snapshots.set(entry, entry.agent.stats());
      }
      this.#snapshots = snapshots;
      // Every metric of one registry.metrics() is collected before the
      // next macrotask: that is one scrape.
      setImmediate(() => (this.#snapshots = undefined));
    }
    return this.#snapshots;
  }

  /** The `peer` label of a peer: its name, or `other` past the agent's cap. */
  #label(entry: Entry, peer: string): string {
    if (entry.named.has(peer)) return peer;
    if (entry.named.size < entry.maxPeers) {
      entry.named.add(peer);
      return peer;
    }
    return OTHER;
  }

  /** An agent's counters by op and label, the peers past the cap summed under `other`. */
  #tallies(entry: Entry): [{ agent: string; op: Op; peer: string }, OpTally][] {
    const out = new Map<string, [{ agent: string; op: Op; peer: string }, OpTally]>();
    for (const [peer, tallies] of coreOf(entry.agent).stats.opTallies()) {
      const label = this.#label(entry, peer);
      OPS.forEach((op, i) => {
        const key = `${op}\0${label}`;
        let row = out.get(key);
        if (row === undefined) {
          row = [{ agent: entry.agent.name, op, peer: label }, { transfers: 0, bytes: 0, failures: 0 }];
          out.set(key, row);
        }
        row[1].transfers += tallies[i].transfers;
        row[1].bytes += tallies[i].bytes;
        row[1].failures += tallies[i].failures;
      });
    }
    return [...out.values()];
  }
}

/** The metric sets of each registry, by prefix. */
const sets = new WeakMap<MetricsRegistry, Map<string, MetricSet>>();

/**
 * Reports an agent's figures to Prometheus through prom-client: transfers,
 * failures and bytes by op and peer, a transfer-time histogram, transfers in
 * flight, regions, notifications, busy-poll figures, failed peers, and on the
 * NIXL engine NIXL's own telemetry. Every metric has an `agent` label (the
 * agent's name), so several agents can be reported in one registry; the
 * `peer` label names at most `maxPeers` peers per agent, the rest are summed
 * under `peer="other"`.
 *
 * The counters are the agent's since it started (what {@link Agent.stats}
 * says); the histogram counts transfers from this call on. Values are read
 * at each scrape: nothing is done per transfer beyond one histogram
 * observation. An agent that has closed is dropped at the next scrape.
 *
 * @example
 * ```ts
 * import http from 'node:http';
 * import { Registry } from 'prom-client';
 * import { Agent } from 'kvxfer';
 * import { collectMetrics } from 'kvxfer/prometheus';
 *
 * const agent = await Agent.create({ name: 'prefill-0' });
 * const registry = new Registry();
 * const metrics = collectMetrics(agent, { registry });
 * http.createServer(async (req, res) => {
 *   res.setHeader('Content-Type', registry.contentType);
 *   res.end(await registry.metrics());
 * }).listen(9400);
 * // later: metrics.unregister();
 * ```
 */
export function collectMetrics(agent: Agent, options: MetricsOptions = {}): MetricsCollector {
  if (!(agent instanceof Agent)) throw invalidArg('collectMetrics expects an Agent');
  const registry = options.registry ?? globalRegistry;
  if (!(registry instanceof Registry)) throw invalidArg('registry must be a prom-client Registry');
  const prefix = options.prefix ?? 'kvxfer_';
  if (typeof prefix !== 'string' || !/^([a-zA-Z_:][a-zA-Z0-9_:]*)?$/.test(prefix)) {
    throw invalidArg(`prefix must be the start of a Prometheus metric name, not ${JSON.stringify(prefix)}`);
  }
  const maxPeers = options.maxPeers ?? DEFAULT_MAX_PEERS;
  if (!Number.isInteger(maxPeers) || maxPeers < 0) throw invalidArg('maxPeers must be an integer >= 0');
  const buckets = options.buckets ?? DEFAULT_DURATION_BUCKETS;
  if (!Array.isArray(buckets) || buckets.some((b) => typeof b !== 'number' || !(b > 0))) {
    throw invalidArg('buckets must be an array of positive numbers');
  }
  let byPrefix = sets.get(registry);
  if (byPrefix === undefined) {
    byPrefix = new Map();
    sets.set(registry, byPrefix);
  }
  let set = byPrefix.get(prefix);
  if (set === undefined) {
    set = new MetricSet(registry, prefix, buckets);
    byPrefix.set(prefix, set);
  }
  for (const entry of set.entries) {
    if (entry.agent === agent) throw invalidArg(`agent '${agent.name}' is already reported in this registry under '${prefix}'`);
  }
  const metricSet = set;
  const histogram = set.histogram;
  // Label sets made once: observe() is on the completion path.
  const histogramLabels = {
    write: { agent: agent.name, op: 'write' as const },
    read: { agent: agent.name, op: 'read' as const },
  };
  let stopObserving: (() => void) | undefined = coreOf(agent).stats.observe((op, durationNs) => {
    try {
      histogram.observe(histogramLabels[op], durationNs / 1e9);
    } catch {
      // The completion path must go on whatever a metrics library does.
    }
  });
  const entry: Entry = {
    agent,
    maxPeers,
    named: new Set(),
    detach: () => {
      if (stopObserving === undefined) return;
      stopObserving();
      stopObserving = undefined;
      metricSet.entries.delete(entry);
      for (const labels of Object.values(histogramLabels)) histogram.remove(labels);
      if (metricSet.empty) {
        metricSet.remove();
        byPrefix.delete(prefix);
      } else {
        metricSet.updateNixl();
      }
    },
  };
  // Every bucket at zero from the start, so that rates work from the first scrape.
  for (const labels of Object.values(histogramLabels)) histogram.zero(labels);
  set.entries.add(entry);
  set.updateNixl();
  return { unregister: () => entry.detach() };
}
