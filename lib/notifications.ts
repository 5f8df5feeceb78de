import { Bounded, abortedError, checkBounds } from './bounds';
import type { AgentCore } from './core';
import { invalidArg, type KvxferError } from './errors';
import type { Notification, OperationOptions } from './types';

const encoder = new TextEncoder();

/** A notification payload as bytes. @internal */
export function toBytes(message: string | Uint8Array, what: string): Uint8Array {
  if (typeof message === 'string') return encoder.encode(message);
  if (message instanceof Uint8Array) return message;
  throw invalidArg(`${what} must be a string or a Uint8Array`);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.compare(a, b) === 0;
}

interface IteratorWaiter {
  iterator: object;
  /** Only notifications from this peer; undefined: from any. */
  peer: string | undefined;
  resolve: (result: IteratorResult<Notification>) => void;
  reject: (error: unknown) => void;
}

interface MatchWaiter {
  peer: string;
  data: Uint8Array;
  bounded: Bounded<Notification>;
}

/**
 * An agent's received notifications and the JS waiting for them. Each
 * notification goes to one consumer: a matching waitForNotification first,
 * then the longest-waiting iterator, else the inbox until someone asks.
 * @internal
 */
export class Mailbox {
  readonly #core: AgentCore;
  readonly #inbox: Notification[] = [];
  readonly #iteratorWaiters: IteratorWaiter[] = [];
  readonly #matchWaiters: MatchWaiter[] = [];
  #holding = false;

  constructor(core: AgentCore) {
    this.#core = core;
  }

  deliver(notification: Notification): void {
    const match = this.#matchWaiters.findIndex(
      (w) => w.peer === notification.peer && sameBytes(w.data, notification.data),
    );
    const taker = match >= 0 ? -1 : this.#iteratorWaiters.findIndex((w) => w.peer === undefined || w.peer === notification.peer);
    if (match >= 0) {
      const [waiter] = this.#matchWaiters.splice(match, 1);
      waiter.bounded.resolve(notification);
    } else if (taker >= 0) {
      this.#iteratorWaiters.splice(taker, 1)[0]!.resolve({ done: false, value: notification });
    } else {
      this.#inbox.push(notification);
    }
    this.#updateHold();
  }

  /**
   * The peer failed: whoever waits on it alone (waitForNotification, an
   * iterator of its notifications) rejects with the failure. What it sent
   * before stays in the inbox, handed out first.
   */
  peerFailed(peer: string, error: KvxferError): void {
    const matchWaiters = this.#matchWaiters;
    for (let i = matchWaiters.length - 1; i >= 0; i--) {
      if (matchWaiters[i]!.peer !== peer) continue;
      matchWaiters.splice(i, 1)[0]!.bounded.reject(error);
    }
    const iteratorWaiters = this.#iteratorWaiters;
    for (let i = iteratorWaiters.length - 1; i >= 0; i--) {
      if (iteratorWaiters[i]!.peer !== peer) continue;
      iteratorWaiters.splice(i, 1)[0]!.reject(error);
    }
    this.#updateHold();
  }

  iterate(options: { peer?: string; signal?: AbortSignal }): AsyncIterableIterator<Notification> {
    const core = this.#core;
    core.checkOpen();
    const { peer, signal } = options;
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalidArg('signal must be an AbortSignal');
    if (peer !== undefined && typeof peer !== 'string') throw invalidArg('peer must be a string');
    const fromPeer = (n: Notification) => peer === undefined || n.peer === peer;
    const mailbox = this;
    const waiters = this.#iteratorWaiters;
    let finished = false;
    const iterator: AsyncIterableIterator<Notification> = {
      next(): Promise<IteratorResult<Notification>> {
        if (signal?.aborted) return Promise.reject(abortedError('waiting for notifications', signal));
        if (finished) return Promise.resolve({ done: true, value: undefined });
        const inbox = mailbox.#inbox;
        const at = peer === undefined ? (inbox.length > 0 ? 0 : -1) : inbox.findIndex(fromPeer);
        if (at >= 0) return Promise.resolve({ done: false, value: inbox.splice(at, 1)[0]! });
        try {
          core.checkOpen();
          mailbox.#checkAlive(peer);
        } catch (error) {
          return Promise.reject(error);
        }
        return new Promise((resolve, reject) => {
          waiters.push({ iterator, peer, resolve, reject });
          mailbox.#updateHold();
        });
      },
      return(): Promise<IteratorResult<Notification>> {
        finished = true;
        release({ done: true, value: undefined });
        return Promise.resolve({ done: true, value: undefined });
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    const release = (result: IteratorResult<Notification> | Error) => {
      for (let i = waiters.length - 1; i >= 0; i--) {
        const waiter = waiters[i];
        if (waiter.iterator !== iterator) continue;
        waiters.splice(i, 1);
        if (result instanceof Error) waiter.reject(result);
        else waiter.resolve(result);
      }
      mailbox.#updateHold();
    };
    signal?.addEventListener('abort', () => release(abortedError('waiting for notifications', signal)), { once: true });
    return iterator;
  }

  waitFor(peer: string, message: string | Uint8Array, options: OperationOptions | undefined): Promise<Notification> {
    try {
      checkBounds(options);
      this.#core.checkOpen();
      if (typeof peer !== 'string') throw invalidArg('peer must be a string');
      const data = toBytes(message, 'message');
      const inbox = this.#inbox;
      const ready = inbox.findIndex((n) => n.peer === peer && sameBytes(n.data, data));
      if (ready >= 0) return Promise.resolve(inbox.splice(ready, 1)[0]);
      this.#checkAlive(peer);
      const waiters = this.#matchWaiters;
      const giveUp = () => {
        const at = waiters.indexOf(waiter);
        if (at >= 0) waiters.splice(at, 1);
        this.#updateHold();
      };
      const what = `waiting for a notification from '${peer}'`;
      const waiter: MatchWaiter = { peer, data, bounded: new Bounded<Notification>(what, options, giveUp, new Error()) };
      if (!waiter.bounded.settled) {
        waiters.push(waiter);
        this.#updateHold();
      }
      return waiter.bounded.promise;
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** The agent is closing: nobody waits any longer; the inbox stays readable. */
  close(closedError: () => KvxferError): void {
    for (const waiter of this.#matchWaiters.splice(0)) waiter.bounded.reject(closedError());
    for (const waiter of this.#iteratorWaiters.splice(0)) waiter.reject(closedError());
    this.#updateHold();
  }

  /** Waiting on a peer known dead would never end. */
  #checkAlive(peer: string | undefined): void {
    const failure = peer === undefined ? undefined : this.#core.failedPeers.get(peer);
    if (failure !== undefined) throw failure;
  }

  /** JS waiting on notifications keeps the process alive; nothing else here does. */
  #updateHold(): void {
    const want = !this.#core.closed && this.#iteratorWaiters.length + this.#matchWaiters.length > 0;
    if (want === this.#holding) return;
    this.#holding = want;
    const native = this.#core.native;
    if (want) native.hold();
    else native.unhold();
  }
}
