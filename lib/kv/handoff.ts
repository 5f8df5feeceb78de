/**
 * Handing a request's KV cache from a prefill worker to a decode worker:
 * pull (the decode side READs what the prefill offered), push (the prefill
 * WRITEs into blocks the decode side reserved), and layer-wise streaming
 * (each layer written as soon as it is computed). Heads are split by tensor
 * parallelism: each rank moves exactly the slice of heads both sides hold.
 *
 * Control messages ride on the agent's notifications, on kvxfer's internal
 * channel 'kv1' (AgentCore.channels), as small JSON objects; the pools'
 * descriptors travel once per peer, on request. Both agents must have
 * loaded each other (the side channel and etcd discovery do).
 *
 * The lease rule that keeps wrong bytes out: the offering side reuses its
 * blocks only once every head was acknowledged or the lease ran out, and it
 * confirms an acknowledgement only while the lease holds. A pull whose
 * acknowledgement comes too late is refused (ERR_LEASE_EXPIRED), because the
 * blocks may have been rewritten while it read them. A pull in progress
 * extends the lease ('begin' arrives before the READ).
 */
import type { Agent } from '../agent';
import { coreOf } from '../agent';
import { Bounded, abortedError, checkBounds } from '../bounds';
import { channelMessage, type AgentCore } from '../core';
import { ErrorCode, KvxferError, invalidArg } from '../errors';
import type { OperationOptions, PeerEvent } from '../types';
import { KvPool, type RemoteKvPool } from './pool';
import { decodeTicket, encodeTicket, type Ticket } from './ticket';

const CHANNEL = 'kv1';
/** How long a pool descriptor request may take before the handoff gives up on it. */
const POOL_REQUEST_MS = 10_000;
/**
 * Parts (descriptors before merging) per transfer of a big pull: making one
 * part's descriptor costs the JS thread about a microsecond, so a chunk
 * holds the event loop for about a millisecond, and the first chunk's copy
 * starts while the next chunk's descriptors are made.
 */
const PARTS_PER_TRANSFER = 1024;

/**
 * The JS time a handoff spends making and posting transfers before it lets
 * the event loop turn (the loop-delay target is 2 ms at p99). Posting one
 * part per turn instead would let a busy application (its compute between
 * turns) hold a push back for as long as that compute takes.
 */
const POST_BUDGET_MS = 1;

/** Resolves on the event loop's next turn (after I/O callbacks). */
const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
/** Expired offers remembered, so a late acknowledgement is told "expired", not "unknown". */
const EXPIRED_REMEMBERED = 4096;

type HeadRange = readonly [number, number];

/** A message on the channel. */
type Message =
  | { t: 'pool?' }
  | { t: 'pool'; d: string }
  | { t: 'begin'; o: number; h: HeadRange }
  | { t: 'ack'; o: number; h: HeadRange }
  | { t: 'confirm'; o: number; h: HeadRange; ok: boolean; why?: string }
  | { t: 'pushing'; r: number }
  | { t: 'landed'; r: number; l: number; h: HeadRange }
  | { t: 'failed'; r: number; code: string; why: string };

/** How KvHandoff.offer holds the blocks it offers. */
export interface OfferOptions {
  /** How long the blocks stay offered without a pull (ms); a pull in progress extends it. Default 30000. */
  leaseMs?: number;
  /** Withdraws the offer: `done` rejects ERR_ABORTED and later pulls are refused. */
  signal?: AbortSignal;
}

/** What KvHandoff.offer gives: the ticket for the puller and when the blocks are free again. */
export interface Offer {
  /** For the decode side: pass it through the application (its router). */
  ticket: Uint8Array;
  /**
   * Resolves once every head of the blocks was pulled and acknowledged: the
   * blocks may be reused. Rejects ERR_TIMEOUT when the lease ran out first,
   * ERR_PEER_UNREACHABLE when a puller died mid-pull, ERR_ABORTED: either
   * way the blocks are yours again and no pull will be confirmed.
   */
  done: Promise<void>;
}

/** What KvHandoff.reserve gives: the ticket for the pusher and what lands when. */
export interface Reservation {
  /** For the prefill side: pass it through the application (its router). */
  ticket: Uint8Array;
  /** Resolves when every layer of every head this rank holds has landed. */
  done: Promise<void>;
  /** Each layer index once, as it lands (push and stream alike); ends with the request. */
  layers: AsyncIterable<number>;
}

/** A layer-wise push (KvHandoff.stream) in progress. */
export interface Stream {
  /** Layer `layer` is computed: it is written now, while the next one is computed. */
  layerReady(layer: number): void;
  /** Resolves when every layer was declared ready and has landed at every decode rank. */
  done: Promise<void>;
}

function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A caller that never awaits it must not crash the process.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

function intersect(a: HeadRange, b: HeadRange): HeadRange | undefined {
  const start = Math.max(a[0], b[0]);
  const end = Math.min(a[1], b[1]);
  return start < end ? [start, end] : undefined;
}

function isRange(value: unknown): value is HeadRange {
  return (
    Array.isArray(value) &&
    value.length === 2 &&
    Number.isInteger(value[0]) &&
    Number.isInteger(value[1]) &&
    value[0] >= 0 &&
    value[0] < value[1]
  );
}

/** Heads [start, end) of a model with `kvHeads` heads that rank `rank` of `size` holds. */
function headsOf(kvHeads: number, tp: { rank: number; size: number }): HeadRange {
  const per = kvHeads / tp.size;
  return [tp.rank * per, (tp.rank + 1) * per];
}

/** Which heads of a range have been covered so far. */
class Coverage {
  readonly #range: HeadRange;
  readonly #seen: boolean[];
  #left: number;

  constructor(range: HeadRange) {
    this.#range = range;
    this.#seen = new Array<boolean>(range[1] - range[0]).fill(false);
    this.#left = this.#seen.length;
  }

  /** Marks `heads` (clipped to the range); true when everything is covered now. */
  add(heads: HeadRange): boolean {
    const part = intersect(heads, this.#range);
    if (part !== undefined) {
      for (let h = part[0]; h < part[1]; h++) {
        const i = h - this.#range[0];
        if (!this.#seen[i]) {
          this.#seen[i] = true;
          this.#left--;
        }
      }
    }
    return this.#left === 0;
  }

  get complete(): boolean {
    return this.#left === 0;
  }
}

interface OfferState {
  id: number;
  request: string;
  leaseMs: number;
  timer: NodeJS.Timeout;
  coverage: Coverage;
  pullers: Set<string>;
  done: ReturnType<typeof deferred<void>>;
}

interface ReservationState {
  id: number;
  request: string;
  perLayer: Coverage[];
  layersLeft: number;
  pushers: Set<string>;
  done: ReturnType<typeof deferred<void>>;
  landed: number[];
  wake: (() => void) | undefined;
  failure: unknown;
  finished: boolean;
  timer: NodeJS.Timeout | undefined;
}

interface ConfirmWaiter {
  peer: string;
  offer: number;
  heads: HeadRange;
  settle: (ok: boolean, why?: string) => void;
}

/**
 * One per worker: hands requests' KV blocks to and from other workers'
 * KvHandoffs, over the agent's own notifications.
 */
export class KvHandoff {
  /** The agent whose notifications carry the handoff's messages. */
  readonly agent: Agent;
  /** This worker's pool: the blocks it offers, reserves, pulls into and pushes from. */
  readonly pool: KvPool;
  readonly #core: AgentCore;
  readonly #heads: HeadRange;
  #nextId = 1;
  /** Milliseconds of posting work this turn (#timed), counted from #budgetSince. */
  #budgetSpent = 0;
  #budgetSince = 0;
  readonly #offers = new Map<number, OfferState>();
  readonly #expired = new Set<number>();
  readonly #reservations = new Map<number, ReservationState>();
  readonly #remotePools = new Map<string, Promise<RemoteKvPool>>();
  readonly #poolWaiters = new Map<string, ReturnType<typeof deferred<RemoteKvPool>>>();
  readonly #confirmWaiters = new Set<ConfirmWaiter>();
  readonly #failureWaiters = new Map<string, Set<(error: KvxferError) => void>>();
  readonly #onPeer: (event: PeerEvent) => void;
  #closed = false;

  constructor(agent: Agent, pool: KvPool) {
    if (!(pool instanceof KvPool)) throw invalidArg('pool must be a KvPool');
    if (pool.agent !== agent) throw invalidArg("the pool must be the agent's own");
    this.agent = agent;
    this.pool = pool;
    this.#core = coreOf(agent);
    this.#core.checkOpen();
    if (this.#core.channels.has(CHANNEL)) throw invalidArg('the agent already has a KvHandoff');
    this.#heads = [pool.layout.headStart, pool.layout.headEnd];
    this.#core.channels.set(CHANNEL, (peer, payload) => this.#receive(peer, payload));
    this.#onPeer = (event) => this.#peerEvent(event);
    agent.on('peer', this.#onPeer);
  }

  // Pull -----------------------------------------------------------------

  /** Offers blocks for a decode worker to pull (pull mode, the prefill side). */
  offer(request: string, blockIds: readonly number[], options: OfferOptions = {}): Offer {
    this.#checkOpen();
    const blocks = this.#checkBlocks(blockIds);
    if (typeof request !== 'string') throw invalidArg('request must be a string');
    const leaseMs = options.leaseMs ?? 30_000;
    if (!(Number.isFinite(leaseMs) && leaseMs > 0)) throw invalidArg('leaseMs must be a positive number');
    checkBounds({ signal: options.signal });
    const id = this.#nextId++;
    const done = deferred<void>();
    const state: OfferState = {
      id,
      request,
      leaseMs,
      timer: setTimeout(() => this.#expire(state), leaseMs),
      coverage: new Coverage(this.#heads),
      pullers: new Set(),
      done,
    };
    state.timer.unref?.();
    this.#offers.set(id, state);
    const signal = options.signal;
    if (signal !== undefined) {
      const onAbort = () => this.#endOffer(state, abortedError(`the offer of request '${request}'`, signal));
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
      void done.promise.finally(() => signal.removeEventListener('abort', onAbort)).catch(() => {});
    }
    return { ticket: this.#ticket('pull', id, request, blocks), done: done.promise };
  }

  /**
   * Pulls offered blocks into ours (pull mode, the decode side): READs the
   * heads this rank holds from every ticket that has some of them, then
   * acknowledges. Resolves once every offering side confirmed its lease
   * held; rejects ERR_LEASE_EXPIRED where one could not (the bytes may be
   * stale: recompute), or with the transfer's error. It settles only once
   * none of its READs is still writing into `blockIds`.
   */
  async pull(tickets: readonly Uint8Array[], blockIds: readonly number[], options: OperationOptions = {}): Promise<void> {
    this.#checkOpen();
    checkBounds(options);
    const blocks = this.#checkBlocks(blockIds);
    const sources = this.#sourcesFor(tickets, 'pull', blocks.length);
    const outcomes = await Promise.allSettled(sources.map(({ ticket, heads }) => this.#pullOne(ticket, heads, blocks, options)));
    const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
  }

  async #pullOne(ticket: Ticket, heads: HeadRange, blocks: number[], options: OperationOptions): Promise<void> {
    const peer = ticket.agent;
    const remote = await this.#remotePool(peer, options);
    this.#send(peer, { t: 'begin', o: ticket.id, h: heads });
    const ack = this.#encode({ t: 'ack', o: ticket.id, h: heads });
    const chunk = this.#blocksPerChunk(heads);
    const confirmed = this.#awaitConfirm(peer, ticket.id, heads, options);
    try {
      if (blocks.length <= chunk) {
        // The acknowledgement rides on the READ: the engine sends it the moment
        // the bytes are here, without a trip through this thread; the
        // confirmation can then come back before the READ's own completion
        // reaches us.
        const { local, remote: far } = this.pool.pairDescs(blocks, remote, ticket.blocks, { heads });
        await this.agent.read(local, far, peer, { ...options, notify: ack });
      } else {
        // A big request: one READ per chunk of blocks, each posted as soon as
        // its descriptors are made, the event loop let turn every
        // POST_BUDGET_MS of that work, so the copying starts at once and the
        // loop keeps turning. Acknowledged once every READ is done (separate
        // requests complete in any order).
        const reads: Promise<unknown>[] = [];
        let failed = false;
        for (let at = 0; at < blocks.length && !failed; at += chunk) {
          await this.#turnIfDue();
          const read = this.#timed(() => {
            const { local, remote: far } = this.pool.pairDescs(blocks.slice(at, at + chunk), remote, ticket.blocks.slice(at, at + chunk), { heads });
            return this.agent.read(local, far, peer, options);
          });
          read.catch(() => (failed = true));
          reads.push(read);
        }
        const outcomes = await Promise.allSettled(reads);
        const first = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
        if (first !== undefined) throw first.reason;
        this.#sendRaw(peer, ack);
      }
    } catch (error) {
      confirmed.cancel();
      throw error;
    }
    const { ok, why } = await confirmed.promise;
    if (!ok) {
      throw new KvxferError(
        ErrorCode.LEASE_EXPIRED,
        `request '${ticket.request}' from '${peer}': ${why ?? 'the offer expired'}; its blocks may have been reused, recompute them`,
      );
    }
  }

  // Push -----------------------------------------------------------------

  /** Reserves blocks for a prefill worker to push into (push mode, the decode side). */
  reserve(request: string, blockIds: readonly number[], options: OperationOptions = {}): Reservation {
    this.#checkOpen();
    checkBounds(options);
    if (typeof request !== 'string') throw invalidArg('request must be a string');
    const blocks = this.#checkBlocks(blockIds);
    const id = this.#nextId++;
    const layers = this.pool.layout.layers;
    const state: ReservationState = {
      id,
      request,
      perLayer: Array.from({ length: layers }, () => new Coverage(this.#heads)),
      layersLeft: layers,
      pushers: new Set(),
      done: deferred<void>(),
      landed: [],
      wake: undefined,
      failure: undefined,
      finished: false,
      timer: undefined,
    };
    this.#reservations.set(id, state);
    const what = `the reservation of request '${request}'`;
    if (options.timeoutMs !== undefined) {
      state.timer = setTimeout(
        () => this.#endReservation(state, new KvxferError(ErrorCode.TIMEOUT, `${what} timed out after ${options.timeoutMs} ms`)),
        options.timeoutMs,
      );
    }
    const signal = options.signal;
    if (signal !== undefined) {
      const onAbort = () => this.#endReservation(state, abortedError(what, signal));
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
      void state.done.promise.finally(() => signal.removeEventListener('abort', onAbort)).catch(() => {});
    }
    return { ticket: this.#ticket('push', id, request, blocks), done: state.done.promise, layers: this.#landedLayers(state) };
  }

  /** Writes every layer of our blocks into each reservation's (push mode, the prefill side). */
  push(tickets: readonly Uint8Array[], blockIds: readonly number[], options: OperationOptions = {}): Promise<void> {
    const s = this.stream(tickets, blockIds, options);
    for (let layer = 0; layer < this.pool.layout.layers; layer++) s.layerReady(layer);
    return s.done;
  }

  /**
   * Layer-wise push: call `layerReady(i)` once layer i of `blockIds` is
   * computed; it is written while the next layer is computed.
   */
  stream(tickets: readonly Uint8Array[], blockIds: readonly number[], options: OperationOptions = {}): Stream {
    this.#checkOpen();
    checkBounds(options);
    const blocks = this.#checkBlocks(blockIds);
    const targets = this.#sourcesFor(tickets, 'push', blocks.length);
    const layers = this.pool.layout.layers;
    const ready = new Set<number>();
    const writes: Promise<unknown>[] = [];
    const allReady = deferred<void>();
    // Each target's pool descriptor first; writes queue behind it.
    const remotes = targets.map(({ ticket }) => {
      this.#send(ticket.agent, { t: 'pushing', r: ticket.id });
      return this.#remotePool(ticket.agent, options);
    });
    // Layers are posted in order, each as soon as it is ready, the event loop
    // let turn every POST_BUDGET_MS of that work (push: every layer at once):
    // the first is copying while the next one's descriptors are made, and
    // the loop keeps turning. Boxed, so the chain waits for the post, not
    // for the WRITE.
    let posting: Promise<unknown> = Promise.resolve();
    const layerReady = (layer: number): void => {
      if (!Number.isInteger(layer) || layer < 0 || layer >= layers) {
        throw invalidArg(`layer must be an integer from 0 to ${layers - 1}`);
      }
      if (ready.has(layer)) throw invalidArg(`layer ${layer} was already declared ready`);
      ready.add(layer);
      targets.forEach(({ ticket, heads }, i) => {
        const posted = Promise.all([remotes[i]!, posting.then(() => this.#turnIfDue())]).then(([remote]) =>
          this.#timed(() => {
            const pair = this.pool.pairDescs(blocks, remote, ticket.blocks, { layers: [layer], heads });
            const landed = this.#encode({ t: 'landed', r: ticket.id, l: layer, h: heads });
            return { write: this.agent.write(pair.local, pair.remote, ticket.agent, { ...options, notify: landed }) };
          }),
        );
        posting = posted.catch(() => {});
        writes.push(posted.then(({ write }) => write));
      });
      if (ready.size === layers) allReady.resolve();
    };
    const done = (async () => {
      await allReady.promise;
      const outcomes = await Promise.allSettled(writes);
      const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
      if (failed === undefined) return;
      const error = failed.reason as KvxferError;
      for (const { ticket } of targets) {
        this.#send(ticket.agent, { t: 'failed', r: ticket.id, code: error.code ?? ErrorCode.ENGINE, why: error.message });
      }
      throw error;
    })();
    done.catch(() => {});
    return { layerReady, done };
  }

  /** Stops: pending offers, reservations and waits reject ERR_CLOSED; the channel is released. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const closed = () => new KvxferError(ErrorCode.CLOSED, 'the KV handoff was closed');
    for (const offer of [...this.#offers.values()]) this.#endOffer(offer, closed());
    for (const reservation of [...this.#reservations.values()]) this.#endReservation(reservation, closed());
    for (const waiter of [...this.#confirmWaiters]) waiter.settle(false, 'the KV handoff was closed');
    for (const waiter of this.#poolWaiters.values()) waiter.reject(closed());
    this.#core.channels.delete(CHANNEL);
    this.agent.off('peer', this.#onPeer);
  }

  // Internals ------------------------------------------------------------

  #checkOpen(): void {
    if (this.#closed) throw new KvxferError(ErrorCode.CLOSED, 'the KV handoff was closed');
    this.#core.checkOpen();
  }

  #checkBlocks(blockIds: readonly number[]): number[] {
    if (!Array.isArray(blockIds) || blockIds.length === 0) throw invalidArg('blockIds must be a non-empty array of block ids');
    const blocks = this.pool.layout.blocks;
    for (const id of blockIds) {
      if (!Number.isInteger(id) || id < 0 || id >= blocks) throw invalidArg(`block id ${String(id)} is not in the pool (0 to ${blocks - 1})`);
    }
    return [...blockIds];
  }

  #ticket(kind: 'pull' | 'push', id: number, request: string, blocks: number[]): Uint8Array {
    const layout = this.pool.layout;
    return encodeTicket({ kind, agent: this.agent.name, id, request, blocks, layout: layout.hash, tp: { ...layout.tp } });
  }

  /** The tickets that hold some of our heads, with that slice; they must cover all of ours. */
  #sourcesFor(tickets: readonly Uint8Array[], kind: 'pull' | 'push', count: number): { ticket: Ticket; heads: HeadRange }[] {
    if (!Array.isArray(tickets) || tickets.length === 0) throw invalidArg('tickets must be a non-empty array');
    const layout = this.pool.layout;
    const coverage = new Coverage(this.#heads);
    const sources: { ticket: Ticket; heads: HeadRange }[] = [];
    for (const bytes of tickets) {
      const ticket = decodeTicket(bytes);
      if (ticket.kind !== kind) throw invalidArg(`a ${ticket.kind} ticket was given where ${kind} tickets are needed`);
      if (ticket.layout !== layout.hash) {
        throw invalidArg(`the ticket of '${ticket.agent}' is for another KV layout (${ticket.layout}, ours ${layout.hash})`);
      }
      if (ticket.blocks.length !== count) {
        throw invalidArg(`the ticket of '${ticket.agent}' names ${ticket.blocks.length} blocks, and ${count} were given here`);
      }
      if (layout.kvHeads % ticket.tp.size !== 0) throw invalidArg(`the ticket's tp size ${ticket.tp.size} does not divide ${layout.kvHeads} heads`);
      const heads = intersect(headsOf(layout.kvHeads, ticket.tp), this.#heads);
      if (heads === undefined) continue;
      coverage.add(heads);
      sources.push({ ticket, heads });
    }
    if (!coverage.complete) throw invalidArg(`the tickets do not cover heads [${this.#heads[0]}, ${this.#heads[1]}) that this rank holds`);
    return sources;
  }

  #encode(message: Message): Uint8Array {
    return channelMessage(CHANNEL, encodeMessage(message));
  }

  /** Runs `post` and counts its time against this turn's POST_BUDGET_MS. */
  #timed<T>(post: () => T): T {
    const start = performance.now();
    // Work counted long ago was in another turn of the loop.
    if (start - this.#budgetSince > 2 * POST_BUDGET_MS) {
      this.#budgetSince = start;
      this.#budgetSpent = 0;
    }
    try {
      return post();
    } finally {
      this.#budgetSpent += performance.now() - start;
    }
  }

  /** A turn of the event loop once this turn's POST_BUDGET_MS is spent; nothing to wait for before. */
  #turnIfDue(): Promise<void> | undefined {
    if (this.#budgetSpent < POST_BUDGET_MS) return undefined;
    return nextTurn().then(() => {
      this.#budgetSpent = 0;
      this.#budgetSince = performance.now();
    });
  }

  /** How many blocks one transfer of a big request takes: about PARTS_PER_TRANSFER parts. */
  #blocksPerChunk(heads: HeadRange): number {
    const perBlock = this.pool.blockDescCount([0], { heads }).unmerged;
    return Math.max(1, Math.floor(PARTS_PER_TRANSFER / perBlock));
  }

  #send(peer: string, message: Message): void {
    this.#sendRaw(peer, this.#encode(message));
  }

  #sendRaw(peer: string, payload: Uint8Array): void {
    this.agent.notify(peer, payload).catch(() => {
      // A peer that cannot be told fails its own side: its failure reaches
      // whoever waits on it through the peer events.
    });
  }

  /** The peer's pool, asked for once and kept while the peer is. */
  #remotePool(peer: string, options: OperationOptions): Promise<RemoteKvPool> {
    let pool = this.#remotePools.get(peer);
    if (pool === undefined) {
      const waiter = deferred<RemoteKvPool>();
      this.#poolWaiters.set(peer, waiter);
      pool = waiter.promise;
      this.#remotePools.set(peer, pool);
      pool.catch(() => this.#remotePools.delete(peer));
      const timer = setTimeout(
        () => waiter.reject(new KvxferError(ErrorCode.TIMEOUT, `'${peer}' did not send its KV pool within ${POOL_REQUEST_MS} ms`)),
        POOL_REQUEST_MS,
      );
      void pool.finally(() => clearTimeout(timer)).catch(() => {});
      this.#send(peer, { t: 'pool?' });
    }
    return this.#bounded(`waiting for the KV pool of '${peer}'`, pool, peer, options);
  }

  #awaitConfirm(
    peer: string,
    offer: number,
    heads: HeadRange,
    options: OperationOptions,
  ): { promise: Promise<{ ok: boolean; why?: string }>; cancel: () => void } {
    const answer = deferred<{ ok: boolean; why?: string }>();
    const waiter: ConfirmWaiter = {
      peer,
      offer,
      heads,
      settle: (ok, why) => {
        this.#confirmWaiters.delete(waiter);
        answer.resolve({ ok, why });
      },
    };
    this.#confirmWaiters.add(waiter);
    const bounded = this.#bounded(`waiting for '${peer}' to confirm its lease`, answer.promise, peer, options);
    void bounded.catch(() => this.#confirmWaiters.delete(waiter));
    // For a READ that failed: nothing will be confirmed; settles the wait (and its timer) now.
    const cancel = () => waiter.settle(false, 'the READ failed');
    return { promise: bounded, cancel };
  }

  /** `promise`, or the first of: its timeout, its abort, the peer's failure. */
  #bounded<T>(what: string, promise: Promise<T>, peer: string, options: OperationOptions): Promise<T> {
    const bounded = new Bounded<T>(what, options);
    const failed = this.#core.failedPeers.get(peer);
    if (failed !== undefined) bounded.reject(failed);
    let waiters = this.#failureWaiters.get(peer);
    if (waiters === undefined) this.#failureWaiters.set(peer, (waiters = new Set()));
    const onFailure = (error: KvxferError) => bounded.reject(error);
    waiters.add(onFailure);
    promise.then(
      (value) => bounded.resolve(value),
      (error: unknown) => bounded.reject(error),
    );
    return bounded.promise.finally(() => waiters.delete(onFailure));
  }

  #peerEvent(event: PeerEvent): void {
    if (event.type === 'failed' || event.type === 'forgotten' || event.type === 'replaced') {
      this.#remotePools.delete(event.peer);
    }
    if (event.type !== 'failed' && event.type !== 'forgotten') return;
    const error =
      event.error ?? new KvxferError(ErrorCode.PEER_UNREACHABLE, `peer '${event.peer}' was forgotten during a KV handoff`);
    for (const waiter of [...(this.#failureWaiters.get(event.peer) ?? [])]) waiter(error);
    this.#poolWaiters.get(event.peer)?.reject(error);
    for (const offer of [...this.#offers.values()]) {
      if (offer.pullers.has(event.peer)) this.#endOffer(offer, error);
    }
    for (const reservation of [...this.#reservations.values()]) {
      if (reservation.pushers.has(event.peer)) this.#endReservation(reservation, error);
    }
  }

  #receive(peer: string, payload: Buffer): void {
    const m = decodeMessage(payload);
    if (m === undefined || this.#closed) return;
    switch (m.t) {
      case 'pool?':
        this.#send(peer, { t: 'pool', d: Buffer.from(this.pool.descriptor()).toString('base64') });
        break;
      case 'pool': {
        const waiter = this.#poolWaiters.get(peer);
        if (waiter === undefined) break;
        this.#poolWaiters.delete(peer);
        try {
          waiter.resolve(KvPool.remote(Buffer.from(m.d, 'base64')));
        } catch (error) {
          waiter.reject(error);
        }
        break;
      }
      case 'begin': {
        const offer = this.#offers.get(m.o);
        if (offer === undefined) break;
        offer.pullers.add(peer);
        // A pull in progress extends the lease.
        offer.timer.refresh();
        break;
      }
      case 'ack': {
        const offer = this.#offers.get(m.o);
        if (offer === undefined) {
          const why = this.#expired.has(m.o)
            ? 'the offer ended (its lease ran out, or it was withdrawn) before the pull was acknowledged'
            : 'no such offer';
          this.#send(peer, { t: 'confirm', o: m.o, h: m.h, ok: false, why });
          break;
        }
        this.#send(peer, { t: 'confirm', o: m.o, h: m.h, ok: true });
        if (offer.coverage.add(m.h)) this.#endOffer(offer, undefined);
        break;
      }
      case 'confirm':
        for (const waiter of this.#confirmWaiters) {
          if (waiter.peer === peer && waiter.offer === m.o && waiter.heads[0] === m.h[0] && waiter.heads[1] === m.h[1]) {
            waiter.settle(m.ok, m.why);
            break;
          }
        }
        break;
      case 'pushing':
        this.#reservations.get(m.r)?.pushers.add(peer);
        break;
      case 'landed': {
        const reservation = this.#reservations.get(m.r);
        if (reservation === undefined || m.l >= reservation.perLayer.length) break;
        reservation.pushers.add(peer);
        const layer = reservation.perLayer[m.l]!;
        if (layer.complete || !layer.add(m.h)) break;
        reservation.landed.push(m.l);
        reservation.wake?.();
        if (--reservation.layersLeft === 0) this.#endReservation(reservation, undefined);
        break;
      }
      case 'failed': {
        const reservation = this.#reservations.get(m.r);
        if (reservation === undefined) break;
        const code = Object.values(ErrorCode).includes(m.code as ErrorCode) ? (m.code as ErrorCode) : ErrorCode.ENGINE;
        this.#endReservation(reservation, new KvxferError(code, `'${peer}' failed to push request '${reservation.request}': ${m.why}`));
        break;
      }
    }
  }

  #expire(offer: OfferState): void {
    this.#endOffer(
      offer,
      new KvxferError(ErrorCode.TIMEOUT, `the offer of request '${offer.request}' expired: not pulled within its ${offer.leaseMs} ms lease`),
    );
  }

  #endOffer(offer: OfferState, error: unknown): void {
    if (!this.#offers.delete(offer.id)) return;
    clearTimeout(offer.timer);
    if (error === undefined) {
      offer.done.resolve();
      return;
    }
    this.#expired.add(offer.id);
    if (this.#expired.size > EXPIRED_REMEMBERED) this.#expired.delete(this.#expired.values().next().value!);
    offer.done.reject(error);
  }

  #endReservation(reservation: ReservationState, error: unknown): void {
    if (reservation.finished) return;
    reservation.finished = true;
    this.#reservations.delete(reservation.id);
    if (reservation.timer !== undefined) clearTimeout(reservation.timer);
    reservation.failure = error;
    if (error === undefined) reservation.done.resolve();
    else reservation.done.reject(error);
    reservation.wake?.();
  }

  async *#landedLayers(reservation: ReservationState): AsyncGenerator<number> {
    let next = 0;
    for (;;) {
      while (next < reservation.landed.length) yield reservation.landed[next++]!;
      if (reservation.finished) {
        if (reservation.failure !== undefined) throw reservation.failure;
        return;
      }
      await new Promise<void>((resolve) => (reservation.wake = resolve));
      reservation.wake = undefined;
    }
  }
}

function encodeMessage(message: Message): Uint8Array {
  return Buffer.from(JSON.stringify(message), 'utf8');
}

/** A message from a peer: anything malformed is dropped (no caller waits on it alone). */
function decodeMessage(payload: Buffer): Message | undefined {
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(payload.toString('utf8')) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  if (m === null || typeof m !== 'object') return undefined;
  const id = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 0;
  switch (m.t) {
    case 'pool?':
      return { t: 'pool?' };
    case 'pool':
      return typeof m.d === 'string' ? { t: 'pool', d: m.d } : undefined;
    case 'begin':
    case 'ack':
      return id(m.o) && isRange(m.h) ? { t: m.t, o: m.o as number, h: m.h } : undefined;
    case 'confirm':
      return id(m.o) && isRange(m.h) && typeof m.ok === 'boolean'
        ? { t: 'confirm', o: m.o as number, h: m.h, ok: m.ok, why: typeof m.why === 'string' ? m.why : undefined }
        : undefined;
    case 'pushing':
      return id(m.r) ? { t: 'pushing', r: m.r as number } : undefined;
    case 'landed':
      return id(m.r) && id(m.l) && isRange(m.h) ? { t: 'landed', r: m.r as number, l: m.l as number, h: m.h } : undefined;
    case 'failed':
      return id(m.r) && typeof m.code === 'string' && typeof m.why === 'string'
        ? { t: 'failed', r: m.r as number, code: m.code, why: m.why }
        : undefined;
    default:
      return undefined;
  }
}
