import * as os from 'node:os';
import { isSharedArrayBuffer } from 'node:util/types';
import { checkBounds } from './bounds';
import { AgentCore } from './core';
import { DescList, type DescLike } from './descs';
import { fetchPeer, listen, type FetchPeerOptions, type ListenOptions, type SideChannel } from './discovery/side-channel';
import { invalidArg } from './errors';
import { binding } from './native';
import { LIMITS, MEM_KIND, XFER_OP } from './protocol';
import { toBytes } from './notifications';
import { Region, toInteger } from './region';
import { Transfer } from './transfer';
import type {
  AgentOptions,
  AgentStats,
  CostEstimate,
  Descriptors,
  EngineName,
  ExternalMemory,
  FileMemory,
  Memory,
  MemoryKind,
  Notification,
  OperationOptions,
  PeerListener,
  TransferOptions,
  TransferResult,
  TransferSpec,
} from './types';

let agentCounter = 0;
/** AgentOptions.busyPollUs when not given: about the wake-up latency of an idle vCPU. */
const DEFAULT_BUSY_POLL_US = 50;

function toDescList(value: Descriptors, side: string): DescList {
  if (value instanceof DescList) return value;
  if (Array.isArray(value)) return DescList.from(value);
  if (value !== null && typeof value === 'object' && typeof (value as DescLike).address === 'bigint') {
    return DescList.from([value as DescLike]);
  }
  throw invalidArg(`${side} must be a DescList, a Region, a descriptor, or an array of them`);
}

const cores = new WeakMap<Agent, AgentCore>();

/** The state behind an agent, for kvxfer's own layers on top of it (lib/kv). @internal */
export function coreOf(agent: Agent): AgentCore {
  const core = cores.get(agent);
  if (core === undefined) throw invalidArg('agent must be an Agent');
  return core;
}

/** One endpoint of KV transfers: a worker process's memory, peers and notifications. */
export class Agent implements AsyncDisposable {
  readonly #core: AgentCore;

  private constructor(core: AgentCore) {
    this.#core = core;
    cores.set(this, core);
  }

  /** The engine this agent runs on. */
  get engine(): EngineName {
    return this.#core.native.engine;
  }

  /**
   * Starts an agent: its engine and its owner thread. Rejects when the
   * engine cannot start, with the reason.
   */
  static async create(options: AgentOptions = {}): Promise<Agent> {
    checkBounds(options);
    const name = options.name ?? `${os.hostname()}-${process.pid}-${agentCounter++}`;
    if (typeof name !== 'string') throw invalidArg('name must be a string');
    const requested = options.engine ?? 'auto';
    if (requested !== 'auto' && requested !== 'ucx' && requested !== 'nixl') {
      throw invalidArg(`unknown engine '${String(requested)}'`);
    }
    // 'auto' prefers NIXL where it loads; 'nixl' asked for explicitly fails
    // at start with the reason it did not load.
    const engine = requested === 'auto' ? (binding().nixlStatus().available ? 'nixl' : 'ucx') : requested;
    for (const key of ['transports', 'backend'] as const) {
      if (options[key] !== undefined && typeof options[key] !== 'string') throw invalidArg(`${key} must be a string`);
    }
    if (options.backendParams !== undefined && (typeof options.backendParams !== 'object' || options.backendParams === null)) {
      throw invalidArg('backendParams must be an object of strings');
    }
    const core = new AgentCore(name, {
      engine,
      transports: options.transports,
      backend: options.backend,
      backendParams: options.backendParams,
      busyPollUs: options.busyPollUs === undefined ? DEFAULT_BUSY_POLL_US : options.busyPollUs,
      peerTimeoutMs: options.peerTimeoutMs,
      pushUpdates: options.pushUpdates,
      shareRegisteredMemory: options.shareRegisteredMemory,
    });
    try {
      await core.submit<void>('starting the agent', () => core.native.start(), options);
    } catch (error) {
      await core.close();
      throw error;
    }
    return new Agent(core);
  }

  /** The name peers know this agent by. */
  get name(): string {
    return this.#core.name;
  }

  /** True from the moment close() is called. */
  get closed(): boolean {
    return this.#core.closePromise !== undefined;
  }

  /** Registers JS memory (kept alive by the region) or external memory (VRAM, native host memory). */
  register(memory: Memory, options?: OperationOptions): Promise<Region> {
    const core = this.#core;
    let bytes: Uint8Array | undefined;
    if (ArrayBuffer.isView(memory)) {
      bytes = new Uint8Array(memory.buffer, memory.byteOffset, memory.byteLength);
    } else if (memory instanceof ArrayBuffer || memory instanceof SharedArrayBuffer) {
      bytes = new Uint8Array(memory);
    }
    if (bytes !== undefined) {
      const view = bytes;
      return this.#registerWith(
        'registering memory',
        options,
        (id, address) => Region.adopt(core, { id, address, length: view.byteLength, kind: 'dram', device: 0, memory: view }),
        // isSharedArrayBuffer, not instanceof: it holds for one from another realm too.
        () => core.native.registerMemory(view, !isSharedArrayBuffer(view.buffer)),
      );
    }
    const isFile = memory !== null && typeof memory === 'object' && (memory as FileMemory).kind === 'file';
    if (!isFile && (memory === null || typeof memory !== 'object' || typeof (memory as ExternalMemory).address !== 'bigint')) {
      return Promise.reject(
        invalidArg('register() takes a Buffer, TypedArray, DataView, ArrayBuffer, SharedArrayBuffer or { kind, address, length, device }'),
      );
    }
    if ((memory as FileMemory).kind === 'file') return this.#registerFile(memory as FileMemory, options);
    const external = memory as ExternalMemory;
    const kind = external.kind;
    if (kind !== 'dram' && kind !== 'vram') return Promise.reject(invalidArg("kind must be 'dram', 'vram' or 'file'"));
    const device = external.device ?? 0;
    let length = 0;
    return this.#registerWith(
      `registering ${kind} memory`,
      options,
      (id, address) => Region.adopt(core, { id, address, length, kind, device }),
      () => {
        length = toInteger(external.length, 'length');
        return core.native.registerAddress(MEM_KIND[kind], external.address, length, device);
      },
    );
  }

  #registerFile(file: FileMemory, options: OperationOptions | undefined): Promise<Region> {
    const core = this.#core;
    let offset = 0n;
    let length = 0;
    return this.#registerWith(
      'registering a file',
      options,
      (id) => Region.adopt(core, { id, address: offset, length, kind: 'file', device: file.fd }),
      () => {
        if (!Number.isInteger(file.fd) || file.fd < 0) throw invalidArg('fd must be an open file descriptor');
        offset = BigInt(toInteger(file.offset ?? 0, 'offset'));
        length = toInteger(file.length, 'length');
        return core.native.registerAddress(MEM_KIND.file, offset, length, file.fd);
      },
    );
  }

  /**
   * Host memory of any size (above 4 GiB too), allocated by the engine where
   * peers reach it fastest (UCX: shared memory a same-host peer copies into
   * directly), registered. `region.view()` reads and writes it.
   */
  allocate(length: number | bigint, options?: OperationOptions): Promise<Region> {
    const core = this.#core;
    let size = 0;
    return this.#registerWith(
      'allocating memory',
      options,
      (id, address) => Region.adopt(core, { id, address, length: size, kind: 'dram', device: 0, allocated: true }),
      () => {
        size = toInteger(length, 'length');
        return core.native.allocate(size);
      },
    );
  }

  /**
   * The native id of one of this agent's live regions: ERR_INVALID_ARG for
   * anything else, ERR_NOT_REGISTERED once deregistered.
   * @internal
   */
  regionId(region: unknown): number {
    return Region.idOf(region, this.#core);
  }

  /** Shared by register and allocate: submit, then wrap the region once its address is known. */
  #registerWith(
    what: string,
    options: OperationOptions | undefined,
    make: (id: number, address: bigint) => Region,
    call: () => [number, number],
  ): Promise<Region> {
    const core = this.#core;
    let id = 0;
    return core
      .submit<bigint>(
        what,
        () => {
          let token: number;
          [token, id] = call();
          return token;
        },
        options,
        // Registered after the caller gave up: undo it, unless close() is
        // about to (the agent refuses calls once it is closing).
        { onLateSuccess: () => (core.closePromise === undefined ? core.native.deregister(id) : undefined) },
      )
      .then((address) => make(id, address));
  }

  /**
   * This agent's metadata: what a peer's loadPeer needs. Changes as regions
   * come and go (the 'metadata' event says when). On the NIXL engine it is
   * NIXL's own blob in a small kvxfer envelope that a kvxfer peer checks
   * (NIXL's blobs carry no checksum); `{ format: 'nixl' }` gives the bare
   * NIXL blob for a NIXL agent written in another language (Python, C++).
   * loadPeer accepts both.
   *
   * `{ regions }`: partial metadata, naming only these regions (each
   * registered by this agent): a peer that loads it reaches only them, and
   * loading more later merges in. On the UCX engine the other regions' keys
   * are not in it at all; on the NIXL engine kvxfer peers hold to the list,
   * but the NIXL blob inside still describes every region, so it is not a
   * boundary against a peer that reads NIXL blobs itself. Combine it with
   * `pushUpdates: false`, or new regions reach loaded peers anyway.
   *
   * Each call returns a new Buffer with memory of its own (a copy), so
   * changing it changes nothing else; `.slice()` on it is a view, as on any
   * Buffer.
   */
  metadata(options: { format?: 'kvxfer' | 'nixl'; regions?: readonly Region[] } = {}): Buffer {
    const core = this.#core;
    core.checkOpen();
    const format = options.format ?? 'kvxfer';
    if (format !== 'kvxfer' && format !== 'nixl') throw invalidArg("format must be 'kvxfer' or 'nixl'");
    const regions = options.regions;
    if (regions !== undefined && !Array.isArray(regions)) throw invalidArg('regions must be an array of Regions');
    if (format === 'nixl' && this.engine !== 'nixl') throw invalidArg("format 'nixl' needs the NIXL engine");
    if (format === 'nixl' && regions !== undefined) {
      throw invalidArg("format 'nixl' has no partial form: NIXL's partial blobs carry no connection details");
    }
    const blob =
      regions === undefined ? core.native.metadata() : core.native.metadata(regions.map((r) => Region.idOf(r, core)));
    if (format === 'kvxfer') return blob;
    // The envelope's header says how long the NIXL blob after it is
    // (native/nixl/nixl_engine.cc); kvxfer's own section follows it.
    const length = new DataView(blob.buffer, blob.byteOffset, blob.byteLength).getUint32(8, true);
    return blob.subarray(LIMITS.NixlEnvelopeBytes, LIMITS.NixlEnvelopeBytes + length);
  }

  /** Connects to a peer from its metadata; resolves with the peer's name. Newer metadata replaces older. */
  loadPeer(metadata: Uint8Array, options?: OperationOptions): Promise<string> {
    if (!(metadata instanceof Uint8Array)) return Promise.reject(invalidArg('metadata must be a Uint8Array'));
    return this.#core.submit<string>('loading peer metadata', () => this.#core.native.loadPeer(metadata), options);
  }

  /**
   * Serves this agent's metadata on a TCP side channel: a peer's fetchPeer()
   * gets it and sends its own in the same exchange (both can transfer
   * afterwards). With `secret`, only a peer that proves it knows it is
   * served (HMAC over fresh nonces and both blobs). Closed with the agent.
   */
  async listen(options: ListenOptions = {}): Promise<SideChannel> {
    const core = this.#core;
    core.checkOpen();
    const channel: SideChannel = await listen(this, options, () => core.sideChannels.delete(channel));
    if (core.closePromise !== undefined) {
      await channel.close();
      core.checkOpen();
    }
    core.sideChannels.add(channel);
    return channel;
  }

  /**
   * Fetches a peer's metadata from its side channel (listen()), sends ours in
   * the same exchange, loads it and resolves the peer's name. Rejects
   * ERR_UNAUTHORIZED when either side does not prove the secret,
   * ERR_BAD_METADATA for anything but a well-formed exchange, ERR_TIMEOUT
   * after `timeoutMs` (default 10000), ERR_PEER_UNREACHABLE when nothing
   * listens there.
   */
  fetchPeer(options: FetchPeerOptions): Promise<string> {
    try {
      this.#core.checkOpen();
    } catch (error) {
      return Promise.reject(error);
    }
    return fetchPeer(this, options);
  }

  /**
   * Disconnects from a peer once no prepared transfer uses it. With
   * `reason` (the peer left: discovery saw it go), its transfers in flight
   * and those prepared against it fail ERR_PEER_UNREACHABLE saying so, and
   * so do new ones naming it until it is loaded again.
   */
  async forgetPeer(name: string, options: { reason?: string } = {}): Promise<void> {
    const core = this.#core;
    core.checkOpen();
    const reason = options.reason;
    if (reason !== undefined && typeof reason !== 'string') throw invalidArg('reason must be a string');
    core.native.forgetPeer(name, reason);
    core.failedPeers.delete(name);
    core.emitPeer({ type: 'forgotten', peer: name });
  }

  /**
   * Listens to what happens to peers (`'peer'`): loaded, updated, replaced
   * by a new incarnation, failed (dead or unreachable), forgotten; or to
   * this agent's metadata (`'metadata'`): a region was registered or
   * deregistered, so metadata() changed (loaded kvxfer peers are told by
   * the engine; discovery republishes). A listener's exception goes to
   * `uncaughtException`; it does not stop the agent.
   */
  on(event: 'peer', listener: PeerListener): this;
  on(event: 'metadata', listener: () => void): this;
  on(event: 'peer' | 'metadata', listener: PeerListener | (() => void)): this {
    if (typeof listener !== 'function') throw invalidArg('listener must be a function');
    this.#listeners(event).add(listener as PeerListener & (() => void));
    return this;
  }

  /** Stops a listener added with on(). */
  off(event: 'peer', listener: PeerListener): this;
  off(event: 'metadata', listener: () => void): this;
  off(event: 'peer' | 'metadata', listener: PeerListener | (() => void)): this {
    this.#listeners(event).delete(listener as PeerListener & (() => void));
    return this;
  }

  #listeners(event: string): Set<PeerListener> | Set<() => void> {
    if (event === 'peer') return this.#core.peerListeners;
    if (event === 'metadata') return this.#core.metadataListeners;
    throw invalidArg(`unknown event '${String(event)}'; the agent emits 'peer' and 'metadata'`);
  }

  /**
   * Ties an etcd membership to this agent: close() makes it leave and waits
   * for that. Returns what unties it (the membership left by itself).
   * @internal
   */
  tieMembership(membership: { leave(): Promise<void> }): () => void {
    const core = this.#core;
    core.checkOpen();
    core.memberships.add(membership);
    return () => core.memberships.delete(membership);
  }

  /** Validates a transfer once, so that posting it is cheap. Throws on bad input. */
  prepare(spec: TransferSpec): Transfer {
    const core = this.#core;
    core.checkOpen();
    if (spec === null || typeof spec !== 'object') throw invalidArg('prepare() takes { op, local, remote, peer, notify? }');
    const op = spec.op === 'write' || spec.op === 'read' ? XFER_OP[spec.op] : -1;
    if (op < 0) throw invalidArg(`op must be 'write' or 'read', got ${String(spec.op)}`);
    if (typeof spec.peer !== 'string') throw invalidArg('peer must be the peer agent name (a string)');
    const local = toDescList(spec.local, 'local');
    const remote = toDescList(spec.remote, 'remote');
    let notify: Uint8Array | undefined;
    if (spec.notify !== undefined) notify = toBytes(spec.notify, 'notify');
    let remoteKind: number | undefined;
    if (spec.remoteKind !== undefined) {
      remoteKind = Object.hasOwn(MEM_KIND, spec.remoteKind) ? MEM_KIND[spec.remoteKind] : undefined;
      if (remoteKind === undefined) throw invalidArg("remoteKind must be 'dram', 'vram' or 'file'");
    }
    const caller = new Error();
    const [id, bytes] = core.native.prepare(op, local.packed, remote.packed, spec.peer, notify, remoteKind);
    return Transfer.create(core, id, spec, bytes, local.length, caller);
  }

  /**
   * Posts prepared transfers of this agent as one burst: all are checked
   * first (none is posted if one is released, in flight, listed twice or
   * its peer is unusable), then handed to the engine in one step. Resolves
   * with every result, in order, once all succeeded; rejects with the first
   * failure once every transfer has settled (their memory is then free to
   * reuse), or at once on a timeout or abort (which cancels them). Cheaper
   * per transfer than posting each: one call, one hand-off, one promise.
   */
  postAll(transfers: readonly Transfer[], options?: OperationOptions): Promise<TransferResult[]> {
    return this.#core.submitAll(transfers, options);
  }

  /** The engine's prediction of how long one post of `transfer` takes (NIXL engine). */
  estimate(transfer: Transfer, options?: OperationOptions): Promise<CostEstimate> {
    const core = this.#core;
    return core.submit<CostEstimate>('estimating a transfer', () => core.native.estimate(transfer.id), options);
  }

  /** prepare + post + release. */
  async write(local: Descriptors, remote: Descriptors, peer: string, options?: TransferOptions): Promise<TransferResult> {
    return this.#once('write', local, remote, peer, options);
  }

  /** prepare + post + release, the other way. */
  async read(local: Descriptors, remote: Descriptors, peer: string, options?: TransferOptions): Promise<TransferResult> {
    return this.#once('read', local, remote, peer, options);
  }

  async #once(
    op: 'write' | 'read',
    local: Descriptors,
    remote: Descriptors,
    peer: string,
    options: TransferOptions | undefined,
  ): Promise<TransferResult> {
    checkBounds(options);
    let transfer: Transfer;
    try {
      transfer = this.prepare({ op, local, remote, peer, notify: options?.notify, remoteKind: options?.remoteKind });
    } catch (error) {
      this.#core.stats.countRefused(op, peer, error);
      throw error;
    }
    try {
      return await transfer.post(options);
    } finally {
      transfer.release();
    }
  }

  /** Sends a notification (at most 16 KiB) to a loaded peer. */
  notify(peer: string, message: string | Uint8Array, options?: OperationOptions): Promise<void> {
    const core = this.#core;
    return core
      .submit<void>(
        `notifying '${peer}'`,
        () => core.native.notify(peer, toBytes(message, 'message')),
        options,
      )
      .then(() => {
        core.stats.notificationsSent++;
      });
  }

  /**
   * Notifications as they arrive, each delivered to one consumer: several
   * iterators share one stream, and waitForNotification takes its match
   * first. With `peer`, only that peer's, and `next()` rejects
   * ERR_PEER_UNREACHABLE once it fails. `next()` rejects ERR_CLOSED once the
   * agent closes and ERR_ABORTED when the signal aborts; notifications that
   * arrived before are still handed out first.
   */
  notifications(options: { peer?: string; signal?: AbortSignal } = {}): AsyncIterableIterator<Notification> {
    return this.#core.mailbox.iterate(options);
  }

  /**
   * Waits for (and consumes) one notification from `peer` with exactly this
   * payload. Rejects ERR_PEER_UNREACHABLE when that peer fails (a loaded
   * peer's death is seen at once on one host; see README "Peers and failures").
   */
  waitForNotification(peer: string, message: string | Uint8Array, options?: OperationOptions): Promise<Notification> {
    return this.#core.mailbox.waitFor(peer, message, options);
  }

  /** A snapshot of the counters; later calls do not change it. */
  stats(): AgentStats {
    const core = this.#core;
    return core.stats.snapshot(core.regions.size, core.native.busyPollStats());
  }

  /**
   * Stops the agent: in-flight work is cancelled and rejects ERR_CLOSED, all
   * memory is deregistered, peers are disconnected. Idempotent; never hangs.
   */
  close(): Promise<void> {
    return this.#core.close();
  }

  /** close(), for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
