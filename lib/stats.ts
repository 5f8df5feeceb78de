import { ErrorCode, KvxferError } from './errors';
import type { NativeTelemetry } from './native';
import type { AgentStats, PeerStats } from './types';

type TelemetrySums = NonNullable<AgentStats['telemetry']>;

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

  /** A transfer refused before it was posted because its peer is known to be dead is a failure too. */
  countRefused(peer: string, error: unknown): void {
    if (error instanceof KvxferError && error.code === ErrorCode.PEER_UNREACHABLE) {
      this.failures++;
      this.peer(peer).failures++;
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
    const [polls, found, ns] = busyPoll;
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
      busyPoll: { polls, found, us: Math.round(ns / 1e3) },
    };
    if (this.#telemetry !== undefined) stats.telemetry = { ...this.#telemetry };
    return stats;
  }
}
