import { ErrorCode, KvxferError } from './errors';
import type { NativeTelemetry } from './native';
import type { AgentStats, PeerStats } from './types';

type TelemetrySums = NonNullable<AgentStats['telemetry']>;

/** One peer's counters for one direction (write or read). @internal */
export interface OpTally {
  transfers: number;
  bytes: number;
  failures: number;
}

/** Told of each transfer that completes: its direction and how long it took. @internal */
export type TransferObserver = (op: 'write' | 'read', durationNs: number) => void;

/**
 * An agent's counters. Plain fields, so that the completion path and post()
 * (the hot paths) bump them in place, as they did before they had a class.
 * @internal
 */
export class Stats {
  transfers = 0;
  failures = 0;
  bytesWritten = 0;
  bytesRead = 0;
  inFlight = 0;
  notificationsSent = 0;
  notificationsReceived = 0;
  readonly #peers = new Map<string, PeerStats>();
  /** Per peer, [write, read]: what lib/prometheus.ts reports by op and peer. */
  readonly #byOp = new Map<string, [OpTally, OpTally]>();
  /**
   * Called by the completion path for each transfer that succeeded; undefined
   * (one test, no call) unless a metrics collector is attached.
   */
  observer: TransferObserver | undefined;
  readonly #observers = new Set<TransferObserver>();
  // Only the NIXL engine measures: absent until its first transfer.
  #telemetry: TelemetrySums | undefined;

  /** A peer's counters, made on first use and kept for the agent's life. */
  peer(name: string): PeerStats {
    let stats = this.#peers.get(name);
    if (stats === undefined) {
      stats = { transfers: 0, bytes: 0, failures: 0, failed: false };
      this.#peers.set(name, stats);
    }
    return stats;
  }

  /** A peer's counters for one op, made on first use (a Transfer looks them up once). */
  opTally(peer: string, op: 'write' | 'read'): OpTally {
    let tallies = this.#byOp.get(peer);
    if (tallies === undefined) {
      tallies = [
        { transfers: 0, bytes: 0, failures: 0 },
        { transfers: 0, bytes: 0, failures: 0 },
      ];
      this.#byOp.set(peer, tallies);
    }
    return tallies[op === 'write' ? 0 : 1];
  }

  /** Every peer's counters by op, as [peer, write, read]; live objects, not copies. */
  opTallies(): IterableIterator<[string, [OpTally, OpTally]]> {
    return this.#byOp.entries();
  }

  /** Attaches an observer; the returned function detaches it. */
  observe(observer: TransferObserver): () => void {
    this.#observers.add(observer);
    this.#updateObserver();
    return () => {
      this.#observers.delete(observer);
      this.#updateObserver();
    };
  }

  #updateObserver(): void {
    const all = [...this.#observers];
    this.observer =
      all.length === 0
        ? undefined
        : all.length === 1
          ? all[0]
          : (op, durationNs) => {
              for (const observer of all) observer(op, durationNs);
            };
  }

  /** A transfer refused before it was posted because its peer is known to be dead is a failure too. */
  countRefused(op: 'write' | 'read', peer: string, error: unknown): void {
    if (error instanceof KvxferError && error.code === ErrorCode.PEER_UNREACHABLE) {
      this.failures++;
      this.peer(peer).failures++;
      this.opTally(peer, op).failures++;
    }
  }

  addTelemetry(telemetry: NativeTelemetry): void {
    this.#telemetry ??= { transfers: 0, postUs: 0, transferUs: 0, bytes: 0 };
    this.#telemetry.transfers++;
    this.#telemetry.postUs += telemetry.postUs;
    this.#telemetry.transferUs += telemetry.transferUs;
    this.#telemetry.bytes += telemetry.bytes;
  }

  /** Copies, so that a caller's snapshot does not move under it. */
  snapshot(regions: number, busyPoll: Float64Array): AgentStats {
    const peers: Record<string, PeerStats> = {};
    for (const [name, stats] of this.#peers) peers[name] = { ...stats };
    const [polls, found, ns, contended] = busyPoll;
    const stats: AgentStats = {
      transfers: this.transfers,
      failures: this.failures,
      bytesWritten: this.bytesWritten,
      bytesRead: this.bytesRead,
      inFlight: this.inFlight,
      notificationsSent: this.notificationsSent,
      notificationsReceived: this.notificationsReceived,
      regions,
      peers,
      busyPoll: { polls, found, us: Math.round(ns / 1e3), contended },
    };
    if (this.#telemetry !== undefined) stats.telemetry = { ...this.#telemetry };
    return stats;
  }
}
