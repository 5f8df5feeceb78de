import { ErrorCode, KvxferError, invalidArg, withCallerStack } from './errors';
import type { OperationOptions } from './types';

/** @internal */
export function checkBounds(options: OperationOptions | undefined): void {
  if (options === undefined) return;
  if (typeof options !== 'object' || options === null) throw invalidArg('options must be an object');
  const { timeoutMs, signal } = options;
  if (timeoutMs !== undefined && !(typeof timeoutMs === 'number' && timeoutMs >= 0 && Number.isFinite(timeoutMs))) {
    throw invalidArg('timeoutMs must be a non-negative finite number');
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalidArg('signal must be an AbortSignal');
}

/** @internal */
export function abortedError(what: string, signal: AbortSignal): KvxferError {
  return new KvxferError(ErrorCode.ABORTED, `${what} was aborted`, { cause: signal.reason });
}

/**
 * One 'abort' listener per signal, however many operations wait on it: an
 * application that bounds a burst of 200 writes with one AbortSignal would
 * otherwise get Node's MaxListenersExceededWarning (more than 10 listeners).
 */
const abortWaiters = new WeakMap<AbortSignal, Set<() => void>>();

function onAbortOf(signal: AbortSignal, waiter: () => void): void {
  let waiters = abortWaiters.get(signal);
  if (waiters === undefined) {
    const set = new Set<() => void>();
    waiters = set;
    abortWaiters.set(signal, set);
    signal.addEventListener(
      'abort',
      () => {
        abortWaiters.delete(signal);
        for (const w of [...set]) w();
      },
      { once: true },
    );
  }
  waiters.add(waiter);
}

function offAbortOf(signal: AbortSignal, waiter: () => void): void {
  // The listener stays until the signal aborts or is collected: adding and
  // removing it per operation would cost more than the one closure it keeps.
  abortWaiters.get(signal)?.delete(waiter);
}

/**
 * Settles a promise exactly once, from whichever comes first: the operation,
 * its timeout, or its abort signal. The operation itself may go on (a posted
 * transfer still pins its memory until the engine lets go); only the caller
 * stops waiting.
 * @internal
 */
export class Bounded<T> {
  readonly promise: Promise<T>;
  #resolve!: (value: T) => void;
  #reject!: (error: unknown) => void;
  #timer: NodeJS.Timeout | undefined;
  #signal: AbortSignal | undefined;
  #onAbort: (() => void) | undefined;
  settled = false;

  /**
   * `caller` (an Error made when the call was made) lends its stack to the
   * timeout and abort errors, which are otherwise made in a timer or an
   * event listener with no trace of the caller.
   */
  constructor(what: string, options: OperationOptions | undefined, onGiveUp?: () => void, caller?: Error) {
    this.promise = new Promise<T>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    const signal = options?.signal;
    if (signal?.aborted) {
      this.reject(withCallerStack(abortedError(what, signal), caller));
      return;
    }
    if (options?.timeoutMs !== undefined) {
      this.#timer = setTimeout(() => {
        const error = new KvxferError(ErrorCode.TIMEOUT, `${what} timed out after ${options.timeoutMs} ms`);
        this.reject(withCallerStack(error, caller));
        onGiveUp?.();
      }, options.timeoutMs);
    }
    if (signal !== undefined) {
      this.#signal = signal;
      this.#onAbort = () => {
        this.reject(withCallerStack(abortedError(what, signal), caller));
        onGiveUp?.();
      };
      onAbortOf(signal, this.#onAbort);
    }
  }

  resolve(value: T): void {
    if (this.settled) return;
    this.#finish();
    this.#resolve(value);
  }

  reject(error: unknown): void {
    if (this.settled) return;
    this.#finish();
    this.#reject(error);
  }

  #finish(): void {
    this.settled = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    if (this.#signal !== undefined && this.#onAbort !== undefined) {
      offAbortOf(this.#signal, this.#onAbort);
    }
  }
}

/** What an operation's completion settles: a Bounded, or one slot of a Burst. @internal */
export interface Settleable {
  readonly settled: boolean;
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

/**
 * One promise for a burst of operations (Agent.postAll): it resolves with
 * every result, in order, once all succeeded; once every one has settled,
 * it rejects with the first failure. A timeout or an abort settles it at
 * once, as Bounded does.
 * @internal
 */
export class Burst<T> {
  readonly bounded: Bounded<T[]>;
  readonly #results: T[];
  #left: number;
  #failure: unknown;
  #failed = false;

  constructor(count: number, what: string, options: OperationOptions | undefined, onGiveUp: () => void, caller: Error) {
    this.bounded = new Bounded<T[]>(what, options, onGiveUp, caller);
    this.#results = new Array<T>(count);
    this.#left = count;
  }

  slot(index: number): Settleable {
    return new BurstSlot(this, index);
  }

  settle(index: number, failed: boolean, outcome: unknown): void {
    if (failed) {
      if (!this.#failed) this.#failure = outcome;
      this.#failed = true;
    } else {
      this.#results[index] = outcome as T;
    }
    if (--this.#left > 0) return;
    if (this.#failed) this.bounded.reject(this.#failure);
    else this.bounded.resolve(this.#results);
  }
}

interface BurstSettle {
  readonly bounded: { readonly settled: boolean };
  settle(index: number, failed: boolean, outcome: unknown): void;
}

class BurstSlot implements Settleable {
  constructor(
    readonly burst: BurstSettle,
    readonly index: number,
  ) {}

  get settled(): boolean {
    return this.burst.bounded.settled;
  }

  resolve(value: unknown): void {
    this.burst.settle(this.index, false, value);
  }

  reject(error: unknown): void {
    this.burst.settle(this.index, true, error);
  }
}
