import { Bounded, abortedError, checkBounds } from './bounds';
import { ErrorCode, KvxferError, withCallerStack } from './errors';
import { binding, type NativeAgent, type NativeAgentOptions, type NativeEvent, type NativeTelemetry } from './native';
import { Mailbox } from './notifications';
import type { Region } from './region';
import { EVENT_KIND } from './protocol';
import { Stats } from './stats';
import type { Transfer } from './transfer';
import type { OperationOptions, TransferResult } from './types';

interface PendingOperation {
  bounded: Bounded<any>;
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
      if (extra.transfer !== undefined) this.stats.countRefused(extra.transfer.peer, error);
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
        this.mailbox.deliver({ peer: event.peer, message: event.data.toString('utf8'), data: event.data });
        break;
      case EVENT_KIND.PeerFailed:
        this.stats.peer(event.peer).failed = true;
        break;
    }
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
        if (transfer.op === 'write') this.stats.bytesWritten += transfer.bytes;
        else this.stats.bytesRead += transfer.bytes;
        peer.transfers++;
        peer.bytes += transfer.bytes;
        const result: TransferResult = { bytes: transfer.bytes, durationNs: value as number };
        if (telemetry !== undefined) {
          result.telemetry = telemetry;
          this.stats.addTelemetry(telemetry);
        }
        value = result;
      } else {
        this.stats.failures++;
        peer.failures++;
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
    const bounded = new Bounded<void>('closing the agent', undefined);
    this.pending[token] = { bounded, caller: undefined, transfer: undefined, onLateSuccess: undefined };
    this.closePromise = bounded.promise.finally(() => {
      this.closed = true;
      for (const op of this.pending) op?.bounded.reject(closedError());
      this.pending = [];
      this.regions.clear();
    });
    this.mailbox.close(closedError);
    return this.closePromise;
  }
}
