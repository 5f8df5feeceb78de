import type { AgentCore, SubmitExtras } from './core';
import { invalidArg } from './errors';
import type { OpTally } from './stats';
import type { OperationOptions, PeerStats, TransferResult, TransferSpec } from './types';

/** A validated transfer, ready to be posted any number of times. Made by Agent.prepare. */
export class Transfer {
  /** 'write' puts local bytes into the peer's memory; 'read' fetches them. */
  readonly op: 'write' | 'read';
  /** The peer's agent name. */
  readonly peer: string;
  /** Total bytes moved by one post. */
  readonly bytes: number;
  /** Number of descriptors. */
  readonly descriptors: number;
  /** Whether each post also sends a notification. @internal */
  readonly notifies: boolean;
  readonly #core: AgentCore;
  /** The native side's name for the prepared transfer. @internal */
  readonly id: number;
  readonly #caller: Error;
  #released = false;
  #what: string | undefined;
  // Made once, not per post: small transfers are posted millions of times.
  #postCall: (() => number) | undefined;
  #postExtras: SubmitExtras | undefined;
  /** The peer's counters, looked up once rather than per completion. @internal */
  readonly peerStats: PeerStats;
  /** The peer's counters for this op, likewise. @internal */
  readonly opTally: OpTally;

  private constructor(core: AgentCore, id: number, spec: TransferSpec, bytes: number, descriptors: number, caller: Error) {
    this.#core = core;
    this.peerStats = core.stats.peer(spec.peer);
    this.opTally = core.stats.opTally(spec.peer, spec.op);
    this.id = id;
    this.op = spec.op;
    this.peer = spec.peer;
    this.bytes = bytes;
    this.descriptors = descriptors;
    this.notifies = spec.notify !== undefined;
    this.#caller = caller;
  }

  /**
   * A transfer the native side prepared as `id`; `caller`, made where
   * prepare() was called, lends its stack to the errors of every post.
   * @internal
   */
  static create(core: AgentCore, id: number, spec: TransferSpec, bytes: number, descriptors: number, caller: Error): Transfer {
    return new Transfer(core, id, spec, bytes, descriptors, caller);
  }

  /** Where prepare() was called: its stack goes on the errors of every post. @internal */
  get caller(): Error {
    return this.#caller;
  }

  /** Whether this transfer was prepared by the agent `core` belongs to. @internal */
  isOf(core: AgentCore): boolean {
    return this.#core === core;
  }

  /** True once release() was called. */
  get released(): boolean {
    return this.#released;
  }

  /**
   * Moves the bytes. Rejects ERR_BUSY if this transfer is still in flight.
   * A timeout or abort rejects the promise at once; the memory stays pinned
   * until the engine has finished with it.
   */
  post(options?: OperationOptions): Promise<TransferResult> {
    const core = this.#core;
    this.#what ??= `${this.op} of ${this.bytes} bytes with '${this.peer}'`;
    this.#postCall ??= () => {
      if (this.#released) throw invalidArg('the transfer was released');
      const token = core.native.post(this.id);
      core.stats.inFlight++;
      return token;
    };
    this.#postExtras ??= { transfer: this, caller: this.#caller };
    return core.submit<TransferResult>(this.#what, this.#postCall, options, this.#postExtras);
  }

  /** Frees the prepared transfer; deferred until an in-flight post finishes. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    if (!this.#core.closed) this.#core.native.release(this.id);
  }
}
