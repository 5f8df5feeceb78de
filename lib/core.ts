import { Bounded, Burst, abortedError, checkBounds, type Settleable } from './bounds';
import { ErrorCode, KvxferError, invalidArg, withCallerStack } from './errors';
import { binding, type NativeAgent, type NativeAgentOptions, type NativeEvent, type NativeTelemetry } from './native';
import { Mailbox } from './notifications';
import type { Region } from './region';
import { EVENT_KIND } from './protocol';
import { Stats } from './stats';
import type { Transfer } from './transfer';
import type { OperationOptions, PeerEvent, PeerListener, TransferResult } from './types';

interface PendingOperation {
  bounded: Settleable;
  caller: Error | undefined;
  transfer: Transfer | undefined;
  /** The caller gave up but the operation succeeded: undo what it made. */
  onLateSuccess: (() => void) | undefined;
}

/** What an operation adds to its token, beyond its promise. @internal */
export interface SubmitExtras {
  caller?: Error;
  transfer?: Transfer;
  onLateSuccess?: () => void;
}

/**
 * Frames `payload` for an internal channel: 00 fe "kv", a u8 name length,
 * the name, then the payload. Text never starts with NUL, so an
 * application's notification is taken for a channel's only if it starts
 * with these bytes and names a channel this agent claimed.
 * @internal
 */
export function channelMessage(name: string, payload: Uint8Array): Uint8Array {
  const nameBytes = Buffer.from(name, 'latin1');
  const out = Buffer.allocUnsafe(CHANNEL_MARK.length + 1 + nameBytes.length + payload.byteLength);
  CHANNEL_MARK.copy(out, 0);
  out[CHANNEL_MARK.length] = nameBytes.length;
  nameBytes.copy(out, CHANNEL_MARK.length + 1);
  out.set(payload, CHANNEL_MARK.length + 1 + nameBytes.length);
  return out;
}

const CHANNEL_MARK = Buffer.from([0x00, 0xfe, 0x6b, 0x76]);

function parseChannelMessage(data: Buffer): { name: string; payload: Buffer } | undefined {
  const mark = CHANNEL_MARK.length;
  if (data.length <= mark || data.compare(CHANNEL_MARK, 0, mark, 0, mark) !== 0) return undefined;
  const nameLength = data[mark]!;
  if (data.length < mark + 1 + nameLength) return undefined;
  return {
    name: data.toString('latin1', mark + 1, mark + 1 + nameLength),
    payload: data.subarray(mark + 1 + nameLength),
  };
}

/**
 * Calls an application's listener; one that throws does not keep the others
 * from hearing, and its error reaches uncaughtException afterwards (the
 * owner thread's batch is never cut short).
 */
function callListener<E>(listener: (event: E) => void, event: E): void {
  try {
    listener(event);
  } catch (error) {
    queueMicrotask(() => {
      throw error;
    });
  }
}

/**
 * The state Agent, Region and Transfer share, and the protocol with the
 * native agent: a call answers at once with a token, and its outcome comes
 * later in a batch of events under that token. Not exported from the
 * package: the public classes are thin views over it.
 * @internal
 */
export class AgentCore {
  readonly native: NativeAgent;
  readonly name: string;
  /** By token: native tokens are small slot numbers, reused once delivered. */
  pending: (PendingOperation | undefined)[] = [];
  readonly regions = new Set<Region>();
  readonly mailbox = new Mailbox(this);
  readonly stats = new Stats();
  closePromise: Promise<void> | undefined;
  closed = false;
  readonly peerListeners = new Set<PeerListener>();
  readonly metadataListeners = new Set<() => void>();
  /**
   * kvxfer's own protocols over notifications (the KV handoff), by channel
   * name: a notification framed by channelMessage() for a channel someone
   * claimed goes to it instead of the application's mailbox.
   */
  readonly channels = new Map<string, (peer: string, payload: Buffer) => void>();
  /** Side channels the agent listens on (lib/discovery): closed with it. */
  readonly sideChannels = new Set<{ close(): Promise<void> }>();
  /**
   * etcd memberships of this agent (lib/discovery/etcd.ts): close() makes
   * each leave (its lease revoked, so its record goes at once) and waits for
   * that, which each membership bounds by its own request timeout.
   */
  readonly memberships = new Set<{ leave(): Promise<void> }>();
  /** Peers the engine reported failed, until they are loaded again or forgotten. */
  readonly failedPeers = new Map<string, KvxferError>();

  constructor(name: string, options: NativeAgentOptions) {
    this.name = name;
    const { NativeAgent } = binding();
    this.native = new NativeAgent(name, options, (done, others) => this.onEvents(done, others));
  }

  checkOpen(): void {
    if (this.closePromise !== undefined) {
      throw new KvxferError(ErrorCode.CLOSED, `agent '${this.name}' is closed`);
    }
  }

  /** Runs a native call that answers with a token, and waits for that token. */
  submit<T>(
    what: string,
    call: () => number,
    options: OperationOptions | undefined,
    extra: SubmitExtras = {},
  ): Promise<T> {
    try {
      checkBounds(options);
      this.checkOpen();
      if (options?.signal?.aborted) return Promise.reject(abortedError(what, options.signal));
      const caller = extra.caller ?? new Error();
      const token = call();
      // A transfer the caller gives up on is aborted where the engine can
      // (NIXL releases the request); its memory stays pinned until then.
      const bounded = new Bounded<T>(
        what,
        options,
        extra.transfer !== undefined && (options?.timeoutMs !== undefined || options?.signal !== undefined)
          ? () => this.native.cancel(token)
          : undefined,
        caller,
      );
      // One object shape for every operation keeps this path monomorphic.
      const op: PendingOperation = { bounded, caller, transfer: extra.transfer, onLateSuccess: extra.onLateSuccess };
      this.pending[token] = op;
      return bounded.promise;
    } catch (error) {
      if (extra.transfer !== undefined) this.stats.countRefused(extra.transfer.op, extra.transfer.peer, error);
      return Promise.reject(error);
    }
  }

  /**
   * Posts prepared transfers of this agent as one burst (Agent.postAll):
   * checked all before any is posted, handed to the owner thread at once.
   */
  submitAll(transfers: readonly Transfer[], options: OperationOptions | undefined): Promise<TransferResult[]> {
    try {
      if (!Array.isArray(transfers)) throw invalidArg('postAll takes an array of prepared transfers');
      checkBounds(options);
      this.checkOpen();
      const what = `a burst of ${transfers.length} transfers`;
      if (options?.signal?.aborted) return Promise.reject(abortedError(what, options.signal));
      const ids = new Uint32Array(transfers.length);
      for (let i = 0; i < transfers.length; i++) {
        const transfer = transfers[i];
        if (transfer === null || typeof transfer !== 'object' || !transfer.isOf?.(this)) {
          throw invalidArg(`transfers[${i}] is not a transfer prepared by agent '${this.name}'`);
        }
        if (transfer.released) throw invalidArg(`transfers[${i}] was released`);
        ids[i] = transfer.id;
      }
      if (transfers.length === 0) return Promise.resolve([]);
      const tokens = this.native.postAll(ids);
      this.stats.inFlight += tokens.length;
      // Errors carry the stack of each transfer's prepare(), as post()'s do:
      // capturing a stack per burst costs more than posting a small one.
      const burst = new Burst<TransferResult>(tokens.length, what, options, () => {
        for (const token of tokens) this.native.cancel(token);
      }, transfers[0]!.caller);
      for (let i = 0; i < tokens.length; i++) {
        const transfer = transfers[i]!;
        this.pending[tokens[i]!] = { bounded: burst.slot(i), caller: transfer.caller, transfer, onLateSuccess: undefined };
      }
      return burst.bounded.promise;
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * One batch from the owner thread. Every entry is handled even if one
   * throws: the native side has already forgotten the batch's tokens, and a
   * dropped entry would leave a promise unsettled for good (and its token,
   * reused, pointing at someone else's operation). The first error is
   * rethrown at the end.
   */
  onEvents(done: Float64Array, others: NativeEvent[]): void {
    let failure: unknown;
    // One try block around each loop, not one per entry: the loop over
    // completions is the hot path. After a throw it resumes past the entry.
    let i = 0;
    while (i < done.length) {
      try {
        for (; i < done.length; i += 2) this.complete(done[i], undefined, done[i + 1]);
      } catch (error) {
        failure ??= error;
        i += 2;
      }
    }
    let k = 0;
    while (k < others.length) {
      try {
        for (; k < others.length; k++) this.handleEvent(others[k]);
      } catch (error) {
        failure ??= error;
        k++;
      }
    }
    if (failure !== undefined) throw failure;
  }

  handleEvent(event: NativeEvent): void {
    switch (event.kind) {
      case EVENT_KIND.Operation:
        this.complete(event.token, event.error, event.value, event.telemetry);
        break;
      case EVENT_KIND.Notification:
        this.stats.notificationsReceived++;
        if (this.channels.size > 0 && this.#deliverToChannel(event.peer, event.data)) break;
        this.mailbox.deliver({ peer: event.peer, message: event.data.toString('utf8'), data: event.data });
        break;
      case EVENT_KIND.PeerFailed:
        this.stats.peer(event.peer).failed = true;
        this.failedPeers.set(event.peer, event.error);
        this.mailbox.peerFailed(event.peer, event.error);
        this.emitPeer({ type: 'failed', peer: event.peer, error: event.error });
        break;
      case EVENT_KIND.NameConflict:
        this.stats.notificationsReceived++;
        this.emitPeer({
          type: 'conflict',
          peer: event.peer,
          notification: { peer: event.peer, message: event.data.toString('utf8'), data: event.data },
        });
        break;
      case EVENT_KIND.MetadataChanged:
        for (const listener of [...this.metadataListeners]) callListener(listener, undefined);
        break;
      case EVENT_KIND.PeerChanged:
        this.stats.peer(event.peer).failed = false;
        this.failedPeers.delete(event.peer);
        this.emitPeer({ type: event.change, peer: event.peer });
        break;
    }
  }

  #deliverToChannel(peer: string, data: Buffer): boolean {
    const channel = parseChannelMessage(data);
    if (channel === undefined) return false;
    const handler = this.channels.get(channel.name);
    if (handler === undefined) return false;
    callListener((payload: Buffer) => handler(peer, payload), channel.payload);
    return true;
  }

  /**
   * Calls every peer listener (callListener).
   */
  emitPeer(event: PeerEvent): void {
    for (const listener of [...this.peerListeners]) callListener(listener, event);
  }

  complete(token: number, error: KvxferError | undefined, value: unknown, telemetry?: NativeTelemetry): void {
    const op = this.pending[token];
    if (op === undefined) return;
    this.pending[token] = undefined;
    const transfer = op.transfer;
    if (transfer !== undefined) {
      this.stats.inFlight--;
      const peer = transfer.peerStats;
      if (error === undefined) {
        this.stats.transfers++;
        if (transfer.notifies) this.stats.notificationsSent++;
        if (transfer.op === 'write') this.stats.bytesWritten += transfer.bytes;
        else this.stats.bytesRead += transfer.bytes;
        peer.transfers++;
        peer.bytes += transfer.bytes;
        transfer.opTally.transfers++;
        transfer.opTally.bytes += transfer.bytes;
        this.stats.observer?.(transfer.op, value as number);
        const result: TransferResult = { bytes: transfer.bytes, durationNs: value as number };
        if (telemetry !== undefined) {
          result.telemetry = telemetry;
          this.stats.addTelemetry(telemetry);
        }
        value = result;
      } else {
        this.stats.failures++;
        peer.failures++;
        transfer.opTally.failures++;
      }
    }
    if (error !== undefined) {
      op.bounded.reject(withCallerStack(error, op.caller));
    } else if (op.bounded.settled) {
      op.onLateSuccess?.();
    } else {
      op.bounded.resolve(value);
    }
  }

  close(): Promise<void> {
    if (this.closePromise !== undefined) return this.closePromise;
    const closedError = () => new KvxferError(ErrorCode.CLOSED, `agent '${this.name}' was closed`);
    let token: number;
    try {
      token = this.native.close();
    } catch (error) {
      this.closePromise = Promise.resolve();
      this.closed = true;
      return this.closePromise;
    }
    // What is still pending rejects now, as documented: close() waits for
    // the engine to let go of the memory, the caller need not wait with it.
    // (An operation the engine finished meanwhile is done, but its outcome
    // is not reported: the agent is closed.)
    for (let t = 0; t < this.pending.length; t++) {
      const op = this.pending[t];
      if (op === undefined) continue;
      this.pending[t] = undefined;
      if (op.transfer !== undefined) this.stats.inFlight--;
      op.bounded.reject(withCallerStack(closedError(), op.caller));
    }
    const bounded = new Bounded<void>('closing the agent', undefined);
    this.pending[token] = { bounded, caller: undefined, transfer: undefined, onLateSuccess: undefined };
    // Memberships leave alongside the engine's teardown, not before it: a
    // leave that cannot reach etcd must not hold up close().
    const leaving = [...this.memberships].map((membership) => membership.leave().catch(() => {}));
    this.memberships.clear();
    const closed = bounded.promise.finally(() => {
      this.closed = true;
      for (const op of this.pending) op?.bounded.reject(closedError());
      this.pending = [];
      this.regions.clear();
    });
    this.closePromise = Promise.all([closed, ...leaving]).then(() => {});
    this.mailbox.close(closedError);
    for (const channel of this.sideChannels) void channel.close();
    this.sideChannels.clear();
    return this.closePromise;
  }
}
