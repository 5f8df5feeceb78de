import * as os from 'node:os';
import { Bounded, OperationOptions, abortedError, checkBounds } from './bounds';
import { DescList, type Desc, type DescLike } from './descs';
import { ErrorCode, KvxferError, invalidArg, withCallerStack } from './errors';
import { binding, type NativeAgent, type NativeAgentOptions, type NativeEvent, type NativeTelemetry } from './native';

export type EngineName = 'ucx' | 'nixl';
/** 'file': a file through NIXL's POSIX backend (KV offload to storage). */
export type MemoryKind = 'dram' | 'vram' | 'file';

const KIND_CODES: Record<MemoryKind, number> = { dram: 0, vram: 1, file: 2 };

export interface AgentOptions extends OperationOptions {
  /** Unique among the agents that talk to each other. Default: host-pid-counter. */
  name?: string;
  /** 'auto' (default) picks NIXL where it loads, else UCX. */
  engine?: 'auto' | EngineName;
  /** UCX_TLS for this agent only, e.g. 'tcp' or 'sm,self' (UCX engine). Default: the environment's. */
  transports?: string;
  /** NIXL engine: the backend plugin to create (default 'UCX'). */
  backend?: string;
  /** NIXL engine: parameters for the backend, on top of the plugin's defaults. */
  backendParams?: Record<string, string>;
  /**
   * Microseconds the JS thread polls for completions before the event loop
   * sleeps, while this agent has operations pending (0 to 10,000; default 50;
   * 0: never). Only when the loop is about to sleep, never past its next
   * timer, and once per loop turn for all the agents of a thread; the thread
   * yields its core between looks. A completion
   * found this way needs no wake-up of a sleeping thread, which on a VM costs
   * tens of microseconds: with one 1 MiB write in flight on a 2-vCPU VM,
   * latency goes from 83-92 us to 36 us (kvxfer bench --in-flight 1).
   */
  busyPollUs?: number;
}

/** Memory that is not a JS buffer: a CUDA allocation, or host memory the caller owns. */
export interface ExternalMemory {
  kind: 'dram' | 'vram';
  address: bigint;
  length: number | bigint;
  device?: number;
}

/**
 * Part of an open file (NIXL engine, POSIX backend). The region's address is
 * the offset and its device the descriptor: a transfer names this agent as
 * its peer and the file's descriptors as the remote side.
 */
export interface FileMemory {
  kind: 'file';
  fd: number;
  offset?: number | bigint;
  length: number | bigint;
}

export type Memory = ArrayBufferView | ArrayBuffer | SharedArrayBuffer | ExternalMemory | FileMemory;

/** Where a transfer's bytes are: a list, a region, a slice, or an array of those. */
export type Descriptors = DescList | DescLike | DescLike[];

export interface TransferSpec {
  op: 'write' | 'read';
  local: Descriptors;
  remote: Descriptors;
  /** The peer's agent name, as loadPeer returned it. */
  peer: string;
  /** Sent to the peer once the data is in place there (at most 16 KiB). */
  notify?: string | Uint8Array;
  /** The kind of the peer's memory (NIXL engine; default: the local kind). */
  remoteKind?: MemoryKind;
}

export interface TransferTelemetry {
  /** Time NIXL spent posting, in microseconds. */
  postUs: number;
  /** Time from post to completion as NIXL measured it, in microseconds. */
  transferUs: number;
  bytes: number;
  descriptors: number;
}

export interface TransferResult {
  bytes: number;
  /** From post to completion, measured on the owner thread. */
  durationNs: number;
  /** NIXL's own measurement of this transfer (NIXL engine only). */
  telemetry?: TransferTelemetry;
}

export interface CostEstimate {
  durationUs: number;
  errorMarginUs: number;
  method: string;
}

export interface Notification {
  peer: string;
  /** The payload decoded as UTF-8. */
  message: string;
  data: Uint8Array;
}

export interface PeerStats {
  transfers: number;
  bytes: number;
  failures: number;
  failed: boolean;
}

export interface AgentStats {
  transfers: number;
  failures: number;
  bytesWritten: number;
  bytesRead: number;
  inFlight: number;
  notificationsSent: number;
  notificationsReceived: number;
  regions: number;
  peers: Record<string, PeerStats>;
  /** Sums of NIXL's per-transfer telemetry (NIXL engine only). */
  telemetry?: { transfers: number; postUs: number; transferUs: number; bytes: number };
  /**
   * The JS thread's polls for completions before the loop slept (busyPollUs):
   * how many, how many found one (each a wake-up saved), time spent.
   */
  busyPoll: { polls: number; found: number; us: number };
}

/** Bytes of kvxfer's envelope before a NIXL blob (native/nixl/nixl_engine.cc). */
const NIXL_ENVELOPE_HEADER = 16;
const encoder = new TextEncoder();
let agentCounter = 0;
/** AgentOptions.busyPollUs when not given: about the wake-up latency of an idle vCPU. */
const DEFAULT_BUSY_POLL_US = 50;

interface PendingOperation {
  bounded: Bounded<any>;
  caller: Error | undefined;
  transfer: Transfer | undefined;
  /** The caller gave up but the operation succeeded: undo what it made. */
  onLateSuccess: (() => void) | undefined;
}

interface SubmitExtras {
  caller?: Error;
  transfer?: Transfer;
  onLateSuccess?: () => void;
}

interface IteratorWaiter {
  iterator: object;
  resolve: (result: IteratorResult<Notification>) => void;
  reject: (error: unknown) => void;
}

interface MatchWaiter {
  peer: string;
  data: Uint8Array;
  bounded: Bounded<Notification>;
}

function toBytes(message: string | Uint8Array, what: string): Uint8Array {
  if (typeof message === 'string') return encoder.encode(message);
  if (message instanceof Uint8Array) return message;
  throw invalidArg(`${what} must be a string or a Uint8Array`);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.compare(a, b) === 0;
}

function toDescList(value: Descriptors, side: string): DescList {
  if (value instanceof DescList) return value;
  if (Array.isArray(value)) return DescList.from(value);
  if (value !== null && typeof value === 'object' && typeof (value as DescLike).address === 'bigint') {
    return DescList.from([value as DescLike]);
  }
  throw invalidArg(`${side} must be a DescList, a Region, a descriptor, or an array of them`);
}

function toInteger(value: number | bigint, what: string): number {
  const n = typeof value === 'bigint' ? Number(value) : value;
  if (!Number.isSafeInteger(n) || n < 0) throw invalidArg(`${what} must be a non-negative integer`);
  return n;
}

/**
 * The state Agent, Region and Transfer share. Not exported from the package:
 * the public classes are thin views over it.
 */
class AgentCore {
  readonly native: NativeAgent;
  readonly name: string;
  /** By token: native tokens are small slot numbers, reused once delivered. */
  pending: (PendingOperation | undefined)[] = [];
  readonly regions = new Set<Region>();
  readonly inbox: Notification[] = [];
  readonly iteratorWaiters: IteratorWaiter[] = [];
  readonly matchWaiters: MatchWaiter[] = [];
  closePromise: Promise<void> | undefined;
  closed = false;
  holding = false;
  stats = {
    transfers: 0,
    failures: 0,
    bytesWritten: 0,
    bytesRead: 0,
    inFlight: 0,
    notificationsSent: 0,
    notificationsReceived: 0,
  };
  peerStats = new Map<string, PeerStats>();
  telemetry: { transfers: number; postUs: number; transferUs: number; bytes: number } | undefined;

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
      if (extra.transfer !== undefined) this.countRefused(extra.transfer.peer, error);
      return Promise.reject(error);
    }
  }

  /** A transfer refused before it was posted because its peer is known to be dead is a failure too. */
  countRefused(peer: string, error: unknown): void {
    if (error instanceof KvxferError && error.code === ErrorCode.PEER_UNREACHABLE) {
      this.stats.failures++;
      this.peer(peer).failures++;
    }
  }

  peer(name: string): PeerStats {
    let stats = this.peerStats.get(name);
    if (stats === undefined) {
      stats = { transfers: 0, bytes: 0, failures: 0, failed: false };
      this.peerStats.set(name, stats);
    }
    return stats;
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
      case 0:
        this.complete(event.token, event.error, event.value, event.telemetry);
        break;
      case 1:
        this.deliver({ peer: event.peer, message: event.data.toString('utf8'), data: event.data });
        break;
      case 2:
        this.peer(event.peer).failed = true;
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
          this.telemetry ??= { transfers: 0, postUs: 0, transferUs: 0, bytes: 0 };
          this.telemetry.transfers++;
          this.telemetry.postUs += telemetry.postUs;
          this.telemetry.transferUs += telemetry.transferUs;
          this.telemetry.bytes += telemetry.bytes;
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

  deliver(notification: Notification): void {
    this.stats.notificationsReceived++;
    const match = this.matchWaiters.findIndex(
      (w) => w.peer === notification.peer && sameBytes(w.data, notification.data),
    );
    if (match >= 0) {
      const [waiter] = this.matchWaiters.splice(match, 1);
      waiter.bounded.resolve(notification);
    } else if (this.iteratorWaiters.length > 0) {
      this.iteratorWaiters.shift()!.resolve({ done: false, value: notification });
    } else {
      this.inbox.push(notification);
    }
    this.updateHold();
  }

  /** JS waiting on notifications keeps the process alive; nothing else here does. */
  updateHold(): void {
    const want = !this.closed && this.iteratorWaiters.length + this.matchWaiters.length > 0;
    if (want === this.holding) return;
    this.holding = want;
    if (want) this.native.hold();
    else this.native.unhold();
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
    for (const waiter of this.matchWaiters.splice(0)) waiter.bounded.reject(closedError());
    for (const waiter of this.iteratorWaiters.splice(0)) waiter.reject(closedError());
    this.updateHold();
    return this.closePromise;
  }
}

/** Registered memory. Transfers read and write inside regions. */
export class Region implements DescLike {
  readonly address: bigint;
  readonly length: number;
  readonly kind: MemoryKind;
  readonly device: number;
  readonly #core: AgentCore;
  readonly #id: number;
  readonly #memory: Uint8Array | undefined;
  readonly #allocated: boolean;
  #deregistered = false;

  /** @internal */
  constructor(
    core: AgentCore,
    id: number,
    address: bigint,
    length: number,
    kind: MemoryKind,
    device: number,
    memory: Uint8Array | undefined,
    allocated: boolean,
  ) {
    this.#core = core;
    this.#id = id;
    this.address = address;
    this.length = length;
    this.kind = kind;
    this.device = device;
    this.#memory = memory;
    this.#allocated = allocated;
  }

  get registered(): boolean {
    return !this.#deregistered && !this.#core.closed;
  }

  #range(offset: number | bigint, length: number | bigint, what: string): [number, number] {
    const start = toInteger(offset, 'offset');
    const size = toInteger(length, 'length');
    if (start > this.length || size > this.length - start) {
      throw new KvxferError(
        ErrorCode.OUT_OF_RANGE,
        `${what} of ${size} bytes at offset ${start} runs past the end of a ${this.length}-byte region`,
      );
    }
    return [start, size];
  }

  /** A descriptor for part of the region. */
  slice(offset: number | bigint, length: number | bigint): Desc {
    const [start, size] = this.#range(offset, length, 'slice');
    if (size === 0) throw invalidArg('a slice must not be empty');
    return { address: this.address + BigInt(start), length: size, device: this.device };
  }

  /** A Buffer over part of the region's host memory; no copy. */
  view(offset: number | bigint = 0, length?: number | bigint): Buffer {
    const start = toInteger(offset, 'offset');
    const [at, size] = this.#range(start, length ?? Math.max(0, this.length - start), 'view');
    if (this.#memory !== undefined) {
      return Buffer.from(this.#memory.buffer, this.#memory.byteOffset + at, size);
    }
    if (!this.#allocated) throw invalidArg(`view() needs host memory; this region is ${this.kind} memory the caller owns`);
    this.#core.checkOpen();
    if (this.#deregistered) throw new KvxferError(ErrorCode.NOT_REGISTERED, 'the region was deregistered');
    return this.#core.native.view(this.#id, at, size);
  }

  /** Releases the registration. Refused (ERR_BUSY) while a transfer uses the region. */
  deregister(options?: OperationOptions): Promise<void> {
    const promise = this.#core.submit<void>(
      'deregistering a region',
      () => this.#core.native.deregister(this.#id),
      options,
    );
    // The native side accepted it (or failed synchronously): from here the
    // region is gone for new transfers either way.
    return promise.then(() => {
      this.#deregistered = true;
      this.#core.regions.delete(this);
    });
  }
}

/** A validated transfer, ready to be posted any number of times. */
export class Transfer {
  readonly op: 'write' | 'read';
  readonly peer: string;
  /** Total bytes moved by one post. */
  readonly bytes: number;
  /** Number of descriptors. */
  readonly descriptors: number;
  readonly #core: AgentCore;
  /** @internal */
  readonly id: number;
  readonly #caller: Error;
  #released = false;
  #what: string | undefined;
  // Made once, not per post: small transfers are posted millions of times.
  #postCall: (() => number) | undefined;
  #postExtras: SubmitExtras | undefined;
  /** @internal The peer's counters, looked up once rather than per completion. */
  readonly peerStats: PeerStats;

  /** @internal */
  constructor(core: AgentCore, id: number, spec: TransferSpec, bytes: number, descriptors: number, caller: Error) {
    this.#core = core;
    this.peerStats = core.peer(spec.peer);
    this.id = id;
    this.op = spec.op;
    this.peer = spec.peer;
    this.bytes = bytes;
    this.descriptors = descriptors;
    this.#caller = caller;
  }

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

/** One endpoint of KV transfers: a worker process's memory, peers and notifications. */
export class Agent implements AsyncDisposable {
  readonly #core: AgentCore;

  private constructor(core: AgentCore) {
    this.#core = core;
  }

  /** The engine this agent runs on. */
  get engine(): EngineName {
    return this.#core.native.engine;
  }

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
    });
    try {
      await core.submit<void>('starting the agent', () => core.native.start(), options);
    } catch (error) {
      await core.close();
      throw error;
    }
    return new Agent(core);
  }

  get name(): string {
    return this.#core.name;
  }

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
        (id, address) => new Region(core, id, address, view.byteLength, 'dram', 0, view, false),
        () => core.native.registerMemory(view),
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
      (id, address) => new Region(core, id, address, length, kind, device, undefined, false),
      () => {
        length = toInteger(external.length, 'length');
        return core.native.registerAddress(kind === 'vram' ? 1 : 0, external.address, length, device);
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
      (id) => new Region(core, id, offset, length, 'file', file.fd, undefined, false),
      () => {
        if (!Number.isInteger(file.fd) || file.fd < 0) throw invalidArg('fd must be an open file descriptor');
        offset = BigInt(toInteger(file.offset ?? 0, 'offset'));
        length = toInteger(file.length, 'length');
        return core.native.registerAddress(KIND_CODES.file, offset, length, file.fd);
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
      (id, address) => new Region(core, id, address, size, 'dram', 0, undefined, true),
      () => {
        size = toInteger(length, 'length');
        return core.native.allocate(size);
      },
    );
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
      .then((address) => this.#adopt(make(id, address)));
  }

  #adopt(region: Region): Region {
    this.#core.regions.add(region);
    return region;
  }

  /**
   * This agent's metadata: what a peer's loadPeer needs. Changes as regions
   * come and go. On the NIXL engine it is NIXL's own blob in a small kvxfer
   * envelope that a kvxfer peer checks (NIXL's blobs carry no checksum);
   * `{ format: 'nixl' }` gives the bare NIXL blob for a NIXL agent written
   * in another language (Python, C++). loadPeer accepts both.
   */
  metadata(options: { format?: 'kvxfer' | 'nixl' } = {}): Uint8Array {
    const core = this.#core;
    core.checkOpen();
    const format = options.format ?? 'kvxfer';
    if (format !== 'kvxfer' && format !== 'nixl') throw invalidArg("format must be 'kvxfer' or 'nixl'");
    const blob = core.native.metadata();
    if (format === 'kvxfer') return blob;
    if (this.engine !== 'nixl') throw invalidArg("format 'nixl' needs the NIXL engine");
    return blob.subarray(NIXL_ENVELOPE_HEADER);
  }

  /** Connects to a peer from its metadata; resolves with the peer's name. Newer metadata replaces older. */
  loadPeer(metadata: Uint8Array, options?: OperationOptions): Promise<string> {
    if (!(metadata instanceof Uint8Array)) return Promise.reject(invalidArg('metadata must be a Uint8Array'));
    return this.#core.submit<string>('loading peer metadata', () => this.#core.native.loadPeer(metadata), options);
  }

  /** Disconnects from a peer once no prepared transfer uses it. */
  async forgetPeer(name: string): Promise<void> {
    this.#core.checkOpen();
    this.#core.native.forgetPeer(name);
  }

  /** Validates a transfer once, so that posting it is cheap. Throws on bad input. */
  prepare(spec: TransferSpec): Transfer {
    const core = this.#core;
    core.checkOpen();
    if (spec === null || typeof spec !== 'object') throw invalidArg('prepare() takes { op, local, remote, peer, notify? }');
    const op = spec.op === 'write' ? 0 : spec.op === 'read' ? 1 : -1;
    if (op < 0) throw invalidArg(`op must be 'write' or 'read', got ${String(spec.op)}`);
    if (typeof spec.peer !== 'string') throw invalidArg('peer must be the peer agent name (a string)');
    const local = toDescList(spec.local, 'local');
    const remote = toDescList(spec.remote, 'remote');
    let notify: Uint8Array | undefined;
    if (spec.notify !== undefined) notify = toBytes(spec.notify, 'notify');
    let remoteKind: number | undefined;
    if (spec.remoteKind !== undefined) {
      remoteKind = KIND_CODES[spec.remoteKind];
      if (remoteKind === undefined) throw invalidArg("remoteKind must be 'dram', 'vram' or 'file'");
    }
    const caller = new Error();
    const [id, bytes] = core.native.prepare(op, local.packed, remote.packed, spec.peer, notify, remoteKind);
    return new Transfer(core, id, spec, bytes, local.length, caller);
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
      this.#core.countRefused(peer, error);
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
   * first. `next()` rejects ERR_CLOSED once the agent closes (notifications
   * that arrived before are still handed out) and ERR_ABORTED when the
   * signal aborts.
   */
  notifications(options: { signal?: AbortSignal } = {}): AsyncIterableIterator<Notification> {
    const core = this.#core;
    core.checkOpen();
    const signal = options.signal;
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalidArg('signal must be an AbortSignal');
    let finished = false;
    const iterator: AsyncIterableIterator<Notification> = {
      next(): Promise<IteratorResult<Notification>> {
        if (signal?.aborted) return Promise.reject(abortedError('waiting for notifications', signal));
        if (finished) return Promise.resolve({ done: true, value: undefined });
        const ready = core.inbox.shift();
        if (ready !== undefined) return Promise.resolve({ done: false, value: ready });
        try {
          core.checkOpen();
        } catch (error) {
          return Promise.reject(error);
        }
        return new Promise((resolve, reject) => {
          core.iteratorWaiters.push({ iterator, resolve, reject });
          core.updateHold();
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
      for (let i = core.iteratorWaiters.length - 1; i >= 0; i--) {
        const waiter = core.iteratorWaiters[i];
        if (waiter.iterator !== iterator) continue;
        core.iteratorWaiters.splice(i, 1);
        if (result instanceof Error) waiter.reject(result);
        else waiter.resolve(result);
      }
      core.updateHold();
    };
    signal?.addEventListener('abort', () => release(abortedError('waiting for notifications', signal)), { once: true });
    return iterator;
  }

  /** Waits for (and consumes) one notification from `peer` with exactly this payload. */
  waitForNotification(peer: string, message: string | Uint8Array, options?: OperationOptions): Promise<Notification> {
    const core = this.#core;
    try {
      checkBounds(options);
      core.checkOpen();
      if (typeof peer !== 'string') throw invalidArg('peer must be a string');
      const data = toBytes(message, 'message');
      const ready = core.inbox.findIndex((n) => n.peer === peer && sameBytes(n.data, data));
      if (ready >= 0) return Promise.resolve(core.inbox.splice(ready, 1)[0]);
      const giveUp = () => {
        const at = core.matchWaiters.indexOf(waiter);
        if (at >= 0) core.matchWaiters.splice(at, 1);
        core.updateHold();
      };
      const what = `waiting for a notification from '${peer}'`;
      const waiter: MatchWaiter = { peer, data, bounded: new Bounded<Notification>(what, options, giveUp, new Error()) };
      if (!waiter.bounded.settled) {
        core.matchWaiters.push(waiter);
        core.updateHold();
      }
      return waiter.bounded.promise;
    } catch (error) {
      return Promise.reject(error);
    }
  }

  stats(): AgentStats {
    const core = this.#core;
    const peers: Record<string, PeerStats> = {};
    for (const [name, stats] of core.peerStats) peers[name] = { ...stats };
    const [polls, found, ns] = core.native.busyPollStats();
    const busyPoll = { polls, found, us: Math.round(ns / 1e3) };
    const stats: AgentStats = { ...core.stats, regions: core.regions.size, peers, busyPoll };
    if (core.telemetry !== undefined) stats.telemetry = { ...core.telemetry };
    return stats;
  }

  /**
   * Stops the agent: in-flight work is cancelled and rejects ERR_CLOSED, all
   * memory is deregistered, peers are disconnected. Idempotent; never hangs.
   */
  close(): Promise<void> {
    return this.#core.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

export interface TransferOptions extends OperationOptions {
  notify?: string | Uint8Array;
  /** The kind of the peer's memory (NIXL engine; default: the local kind). */
  remoteKind?: MemoryKind;
}
