import { randomBytes } from 'node:crypto';
import * as os from 'node:os';
import type { Agent } from '../agent';
import { Bounded, abortedError, checkBounds } from '../bounds';
import { ErrorCode, KvxferError, invalidArg, withCallerStack } from '../errors';
import type { EngineName, OperationOptions } from '../types';

// etcd3 (and its gRPC stack) is loaded by connect(), not by `require('kvxfer')`:
// only a process that uses etcd pays for it. These are its types alone.
type Etcd3Module = typeof import('etcd3');
type Namespace = import('etcd3').Namespace;
type Lease = import('etcd3').Lease;
type Watcher = import('etcd3').Watcher;
type KeyValue = import('etcd3').IKeyValue;

/**
 * etcd3 is an optional peer dependency: only an application that uses etcd
 * installs it (and its gRPC stack). cockatiel, its retry library, comes with it.
 */
function loadEtcd3(): { etcd: Etcd3Module; cockatiel: typeof import('cockatiel') } {
  let etcd: Etcd3Module;
  try {
    etcd = require('etcd3') as Etcd3Module;
  } catch (error) {
    throw new KvxferError(ErrorCode.ENGINE, "EtcdDiscovery needs the 'etcd3' package: npm install etcd3", { cause: error });
  }
  // etcd3's own copy where npm nested it, else the top-level one it shares.
  const cockatiel = require(require.resolve('cockatiel', { paths: [require.resolve('etcd3')] })) as typeof import('cockatiel');
  return { etcd, cockatiel };
}

/**
 * Discovery through etcd. Each member publishes one record under a lease it
 * keeps alive, and watches everyone's:
 *
 *   <namespace>/agents/<agent name>  ->  a JSON record (below)
 *
 * A member that leaves revokes its lease; one that crashes stops renewing it
 * and etcd deletes the record when the lease's TTL runs out. Either way the
 * others see the key deleted: a `leave`.
 *
 * The record, version 1 (UTF-8 JSON, at most MAX_RECORD_BYTES):
 *
 *   { "v": 1, "name": "decode-0", "instance": "<16 hex digits, new for each join()>",
 *     "engine": "ucx" | "nixl", "host": "<hostname>", "pid": 1234,
 *     "compat": "<string>" | null, "info": <the application's JSON> | null,
 *     "metadata": "<agent.metadata(), base64>" }
 *
 * A reader refuses a record of another version instead of guessing at it
 * (an `invalid` event), and ignores fields it does not know: a field added
 * in a way older readers may ignore keeps version 1, any other change gets
 * a new version number.
 */
const RECORD_VERSION = 1;
/** Far above a record of a real agent (a UCX blob is a few KiB plus ~100 bytes a region), below etcd's 1.5 MiB request cap. */
const MAX_RECORD_BYTES = 1024 * 1024;
/** Records per range request of a full read: pages of at most 32 MiB (grpcOptions below). */
const RANGE_PAGE = 32;
/** gRPC's default 4 MiB per message would refuse a page of large records. */
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
/** Events an iterator holds that its reader has not taken; past it, the iterator fails. */
const MAX_UNREAD_EVENTS = 10_000;
const AGENTS = 'agents/';
const DEFAULT_TTL_SECONDS = 10;
const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_REQUEST_TIMEOUT_MS = 5_000;
/** The pause between attempts to reach etcd again: doubling from the first to the last. */
const RETRY_FIRST_MS = 100;
const RETRY_MAX_MS = 2_000;

/** How EtcdDiscovery.connect reaches etcd. The options etcd3's client takes pass through unchanged. */
export interface EtcdConnectOptions extends OperationOptions {
  /** etcd's client URLs, e.g. 'http://10.0.0.5:2379' ('https://' with TLS). */
  endpoints: string | string[];
  /** The prefix of every key kvxfer writes, so that deployments can share an etcd; default 'kvxfer'. */
  namespace?: string;
  /** The TTL of each member's lease: a crashed member's record is gone this long after its last renewal; default 10. */
  ttlSeconds?: number;
  /** The deadline of each request to etcd after connect (publish, renew, read); default 5000. */
  requestTimeoutMs?: number;
  /** TLS: etcd's CA, and the client's key and certificate where etcd asks for one. */
  credentials?: {
    /** The CA etcd's certificate is signed by (PEM). */
    rootCertificate: Buffer;
    /** The client's private key (PEM), where etcd asks for a client certificate. */
    privateKey?: Buffer;
    /** The client's certificate chain (PEM), with privateKey. */
    certChain?: Buffer;
  };
  /** etcd's user and password authentication. */
  auth?: {
    /** The etcd user. */
    username: string;
    /** Its password. */
    password: string;
  };
  /** gRPC channel options, e.g. { 'grpc.ssl_target_name_override': 'etcd.cluster.local' }. */
  grpcOptions?: Record<string, string | number>;
  /** etcd3's dialTimeout. */
  dialTimeout?: number;
  /** etcd3's defaultCallOptions; replaces the per-request deadline of requestTimeoutMs. */
  defaultCallOptions?: object | ((context: object) => object);
  /** etcd3's faultHandling (cockatiel policies); replaces kvxfer's retry, circuit breaker and watch backoff. */
  faultHandling?: object;
}

/** Options of EtcdDiscovery.join. `timeoutMs` (default 10000) and `signal` bound the join. */
export interface EtcdJoinOptions extends OperationOptions {
  /**
   * Load each compatible member's metadata into the agent as it joins or
   * updates, and forget it (failing its work with ERR_PEER_UNREACHABLE)
   * when it leaves; default true. Without it the application does that
   * from the events, which carry the metadata.
   */
  autoConnect?: boolean;
  /** The application's description of this member (role, TP rank...): any JSON, published with it. */
  info?: unknown;
  /** A compatibility tag (e.g. a KV layout hash): members whose tag differs are reported, not connected. */
  compat?: string;
}

/** A member of the namespace as its record describes it. */
export interface EtcdPeer {
  /** Its agent name. */
  name: string;
  /** Its engine. */
  engine: EngineName;
  /** The host it runs on, as it published it. */
  host: string;
  /** Its process id on that host. */
  pid: number;
  /** Its compatibility tag, if it has one. */
  compat?: string;
  /** Its application JSON (`info` of its join), null if none. */
  info: unknown;
  /** Its agent's metadata, what agent.loadPeer takes. */
  metadata: Uint8Array;
}

/**
 * What a membership reports (EtcdMembership.events):
 * - `join`: a compatible member appeared (with autoConnect: it is loaded, transfers can start);
 * - `update`: its record changed (new regions: with autoConnect, loaded again, which the agent
 *   merges in place);
 * - `leave`: it left, crashed (its lease expired), became incompatible, or was replaced by a new
 *   instance under its name (a `join` follows); with autoConnect it is forgotten with `reason`,
 *   which fails its work with ERR_PEER_UNREACHABLE;
 * - `incompatible`: a member with another compat tag or engine; not connected;
 * - `invalid`: a record that cannot be used (not JSON, another version, over the size cap, or
 *   metadata the agent refused): skipped, and a member it would have replaced stays as it was;
 * - `disconnected`: this member lost contact with etcd (renewing its lease or watching failed);
 *   loaded peers are not touched; a `rejoined` follows once etcd answers again;
 * - `lease-lost`: etcd no longer holds this member's record (its lease expired: the process was
 *   stalled or cut off past its TTL, or the record was deleted): the others saw it leave;
 * - `rejoined`: this member published its record again under a new lease and watches again;
 * - `displaced`: another agent published under this member's name (a second agent with the same
 *   name, or this worker restarted while the old process still ran); this member stops
 *   publishing (leave() it).
 */
export type EtcdEvent =
  | {
      /** A compatible member appeared. */
      type: 'join';
      /** Its agent name. */
      peer: string;
      /** Its application JSON. */
      info: unknown;
      /** Its agent's metadata, what agent.loadPeer takes. */
      metadata: Uint8Array;
    }
  | {
      /** A member's record changed (it registered or dropped regions). */
      type: 'update';
      /** Its agent name. */
      peer: string;
      /** Its application JSON. */
      info: unknown;
      /** Its agent's newer metadata. */
      metadata: Uint8Array;
    }
  | {
      /** A member left, crashed, became incompatible or was replaced: it is no longer a target. */
      type: 'leave';
      /** Its agent name. */
      peer: string;
      /** Its application JSON. */
      info: unknown;
      /** Why it is gone, in words. */
      reason: string;
    }
  | {
      /** A member with another compat tag or engine; not connected. */
      type: 'incompatible';
      /** Its agent name. */
      peer: string;
      /** Its application JSON. */
      info: unknown;
      /** How it differs, in words. */
      reason: string;
    }
  | {
      /** A record that cannot be used; skipped. */
      type: 'invalid';
      /** Its etcd key. */
      key: string;
      /** The agent name the key names. */
      peer: string;
      /** What is wrong with the record. */
      error: KvxferError;
    }
  | {
      /** This member lost contact with etcd; it keeps trying to get back. */
      type: 'disconnected';
      /** What happened. */
      error: KvxferError;
    }
  | {
      /** etcd no longer holds this member's record: the others saw it leave. */
      type: 'lease-lost';
      /** What happened. */
      error: KvxferError;
    }
  | {
      /** Another agent published under this member's name; this member stopped publishing. */
      type: 'displaced';
      /** What happened. */
      error: KvxferError;
    }
  | {
      /** This member published its record again and watches again. */
      type: 'rejoined';
    };

/** Where a membership stands: publishing, getting back to etcd, pushed out by another agent, or left. */
export type EtcdMembershipState = 'joined' | 'rejoining' | 'displaced' | 'left';

/** A record as published, checked. */
interface MemberRecord {
  name: string;
  instance: string;
  engine: EngineName;
  host: string;
  pid: number;
  compat: string | null;
  info: unknown;
  metadata: Uint8Array;
}

/** A member this membership knows of: its record as parsed, and the bytes it came as. */
interface Known {
  record: MemberRecord;
  value: Buffer;
}

function badRecord(key: string, why: string): KvxferError {
  return new KvxferError(ErrorCode.BAD_METADATA, `etcd record ${key}: ${why}`);
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** The record under `agents/<name>`, checked field by field; throws ERR_BAD_METADATA. */
function decodeRecord(value: Buffer, name: string, key: string): MemberRecord {
  if (value.length > MAX_RECORD_BYTES) throw badRecord(key, `${value.length} bytes, over the ${MAX_RECORD_BYTES}-byte cap`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(value.toString('utf8'));
  } catch {
    throw badRecord(key, 'not JSON');
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw badRecord(key, 'not a JSON object');
  const r = parsed as Record<string, unknown>;
  if (r.v !== RECORD_VERSION) {
    throw badRecord(key, `record version ${JSON.stringify(r.v) ?? 'missing'}; this kvxfer reads version ${RECORD_VERSION}`);
  }
  if (r.name !== name) throw badRecord(key, `names agent ${JSON.stringify(r.name)}, not '${name}'`);
  if (typeof r.instance !== 'string' || r.instance.length === 0 || r.instance.length > 64) throw badRecord(key, 'bad instance');
  if (r.engine !== 'ucx' && r.engine !== 'nixl') throw badRecord(key, `unknown engine ${JSON.stringify(r.engine)}`);
  if (typeof r.host !== 'string') throw badRecord(key, 'bad host');
  if (!Number.isSafeInteger(r.pid)) throw badRecord(key, 'bad pid');
  if (r.compat !== null && typeof r.compat !== 'string') throw badRecord(key, 'compat is neither a string nor null');
  if (typeof r.metadata !== 'string' || r.metadata.length === 0 || r.metadata.length % 4 !== 0 || !BASE64.test(r.metadata)) {
    throw badRecord(key, 'metadata is not base64');
  }
  return {
    name,
    instance: r.instance,
    engine: r.engine,
    host: r.host,
    pid: r.pid as number,
    compat: r.compat,
    info: r.info ?? null,
    metadata: new Uint8Array(Buffer.from(r.metadata, 'base64')),
  };
}

/** Why a member cannot work with this one, or undefined when it can. */
function incompatibility(record: MemberRecord, engine: EngineName, compat: string | null): string | undefined {
  if (record.engine !== engine) return `'${record.name}' runs the ${record.engine} engine, this agent the ${engine} engine`;
  if (record.compat !== compat) {
    return `'${record.name}' has compat ${JSON.stringify(record.compat)}, this member ${JSON.stringify(compat)}`;
  }
  return undefined;
}

/** The etcd revision of a response or key, as a bigint (etcd3 gives strings). */
const revisionOf = (text: string | undefined): bigint => BigInt(text ?? '0');

/** A pause that an abort signal cuts short. */
function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
  });
}

/** The pauses between attempts to reach etcd again: RETRY_FIRST_MS, doubling to RETRY_MAX_MS; `signal` cuts one short. */
function retryPauses(signal: AbortSignal): () => Promise<void> {
  let wait = RETRY_FIRST_MS;
  return async () => {
    await pause(wait, signal);
    wait = Math.min(wait * 2, RETRY_MAX_MS);
  };
}

/**
 * One reader's events (EtcdMembership.events): a queue it drains, a waiter
 * while it is empty. Ends (done) when the membership ends; fails when the
 * reader falls MAX_UNREAD_EVENTS behind or its signal aborts.
 */
class EventStream implements AsyncIterableIterator<EtcdEvent> {
  readonly #items: EtcdEvent[] = [];
  #waiter: { resolve: (result: IteratorResult<EtcdEvent>) => void; reject: (error: unknown) => void } | undefined;
  #done = false;
  #error: unknown;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort: (() => void) | undefined;
  readonly #detach: (stream: EventStream) => void;

  constructor(signal: AbortSignal | undefined, detach: (stream: EventStream) => void) {
    this.#signal = signal;
    this.#detach = detach;
    if (signal !== undefined) {
      this.#onAbort = () => this.fail(abortedError('waiting for etcd membership events', signal));
      signal.addEventListener('abort', this.#onAbort, { once: true });
    }
  }

  push(event: EtcdEvent): void {
    if (this.#done) return;
    if (this.#waiter !== undefined) {
      const waiter = this.#waiter;
      this.#waiter = undefined;
      waiter.resolve({ done: false, value: event });
      return;
    }
    this.#items.push(event);
    if (this.#items.length > MAX_UNREAD_EVENTS) {
      this.fail(new KvxferError(ErrorCode.BUSY, `an etcd membership event iterator fell ${MAX_UNREAD_EVENTS} events behind`));
    }
  }

  /** No more events: what is queued is still handed out, then done. */
  end(): void {
    if (this.#done) return;
    this.#finish();
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.resolve({ done: true, value: undefined });
  }

  fail(error: unknown): void {
    if (this.#done) return;
    this.#finish();
    this.#error = error;
    this.#items.length = 0;
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.reject(error);
  }

  #finish(): void {
    this.#done = true;
    if (this.#onAbort !== undefined) this.#signal!.removeEventListener('abort', this.#onAbort);
    this.#detach(this);
  }

  next(): Promise<IteratorResult<EtcdEvent>> {
    if (this.#signal?.aborted) return Promise.reject(abortedError('waiting for etcd membership events', this.#signal));
    if (this.#items.length > 0) return Promise.resolve({ done: false, value: this.#items.shift()! });
    if (this.#error !== undefined) return Promise.reject(this.#error);
    if (this.#done) return Promise.resolve({ done: true, value: undefined });
    if (this.#waiter !== undefined) return Promise.reject(invalidArg('next() called again before the previous next() settled'));
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  return(): Promise<IteratorResult<EtcdEvent>> {
    this.#items.length = 0;
    this.end();
    return Promise.resolve({ done: true, value: undefined });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<EtcdEvent> {
    return this;
  }
}

/** What a membership needs of its discovery. @internal */
export interface Connection {
  readonly etcd: Etcd3Module;
  readonly ns: Namespace;
  readonly ttlSeconds: number;
  readonly requestTimeoutMs: number;
  readonly memberships: Set<EtcdMembership>;
  /** etcd3's error as a KvxferError with a stable code. */
  error(error: unknown, what: string): KvxferError;
}

/**
 * A connection to etcd, shared by the memberships of this process's agents.
 * Made by connect(); close() makes every membership leave.
 */
export class EtcdDiscovery implements AsyncDisposable {
  /** The key prefix of this discovery's records. */
  readonly namespace: string;
  /** The lease TTL of each membership, in seconds. */
  readonly ttlSeconds: number;
  readonly #client: import('etcd3').Etcd3;
  readonly #connection: Connection;
  #closing: Promise<void> | undefined;

  private constructor(client: import('etcd3').Etcd3, connection: Connection, namespace: string) {
    this.#client = client;
    this.#connection = connection;
    this.namespace = namespace;
    this.ttlSeconds = connection.ttlSeconds;
  }

  /**
   * Connects to etcd and checks that it answers (a read in the namespace,
   * so missing permissions show here too). Retries until `timeoutMs`
   * (default 10000): etcd may still be starting. Rejects ERR_PEER_UNREACHABLE
   * when etcd refused or failed every attempt (the last failure in the
   * message), ERR_TIMEOUT when nothing answered at all, ERR_UNAUTHORIZED
   * when etcd refused the credentials, ERR_ABORTED on `signal`.
   */
  static async connect(options: EtcdConnectOptions): Promise<EtcdDiscovery> {
    const caller = new Error();
    if (options === null || typeof options !== 'object') throw invalidArg('connect() takes { endpoints, namespace?, ttlSeconds?, ... }');
    checkBounds(options);
    const {
      endpoints,
      namespace = 'kvxfer',
      ttlSeconds = DEFAULT_TTL_SECONDS,
      requestTimeoutMs = DEFAULT_REQUEST_TIMEOUT_MS,
      timeoutMs = DEFAULT_TIMEOUT_MS,
      signal,
      ...passThrough
    } = options;
    const hosts = typeof endpoints === 'string' ? [endpoints] : endpoints;
    if (!Array.isArray(hosts) || hosts.length === 0 || !hosts.every((h) => typeof h === 'string' && h !== '')) {
      throw invalidArg('endpoints must be a URL or a non-empty array of URLs');
    }
    if (typeof namespace !== 'string' || namespace === '' || namespace.endsWith('/')) {
      throw invalidArg("namespace must be a non-empty string that does not end in '/'");
    }
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1) throw invalidArg('ttlSeconds must be a positive integer');
    if (!(Number.isFinite(requestTimeoutMs) && requestTimeoutMs > 0)) throw invalidArg('requestTimeoutMs must be a positive number');

    const { etcd, cockatiel } = loadEtcd3();
    const recoverable = cockatiel.handleWhen(etcd.isRecoverableError);
    const client = new etcd.Etcd3({
      // etcd3's defaults keep a failed host out for 5 s and back off watches
      // up to 30 s; a member re-joins sooner than that once etcd is back.
      faultHandling: {
        host: () => cockatiel.circuitBreaker(recoverable, { halfOpenAfter: 1_000, breaker: new cockatiel.ConsecutiveBreaker(3) }),
        global: cockatiel.retry(recoverable, { maxAttempts: 3 }),
        // etcd3 declares an IBackoff but uses it as the factory its own default is.
        watchBackoff: new cockatiel.ExponentialBackoff({ initialDelay: RETRY_FIRST_MS, maxDelay: 1_000 }) as unknown as import('cockatiel').IBackoff<unknown>,
      },
      defaultCallOptions: (context: { isStream: boolean }) => (context.isStream ? {} : { deadline: Date.now() + requestTimeoutMs }),
      ...(passThrough as object),
      grpcOptions: { 'grpc.max_receive_message_length': MAX_MESSAGE_BYTES, ...(passThrough.grpcOptions ?? {}) },
      hosts,
    } as import('etcd3').IOptions);
    const memberships = new Set<EtcdMembership>();
    const connection: Connection = {
      etcd,
      ns: client.namespace(`${namespace}/`),
      ttlSeconds,
      requestTimeoutMs,
      memberships,
      error: (error, what) => etcdError(etcd, error, what),
    };
    const where = `etcd at ${hosts.join(', ')}`;
    const bounded = new Bounded<EtcdDiscovery>(`connecting to ${where}`, { signal }, undefined, caller);
    let last: unknown;
    // At the bound: the last failure says what went wrong, silence is a timeout.
    const timer = setTimeout(() => {
      const error =
        last === undefined || last instanceof etcd.GRPCDeadlineExceededError
          ? new KvxferError(ErrorCode.TIMEOUT, `connecting to ${where} timed out after ${timeoutMs} ms: nothing answered`)
          : new KvxferError(ErrorCode.PEER_UNREACHABLE, `${where} unreachable for ${timeoutMs} ms: ${(last as Error).message}`, { cause: last });
      bounded.reject(withCallerStack(error, caller));
    }, timeoutMs);
    const deadline = Date.now() + timeoutMs;
    void (async () => {
      while (!bounded.settled) {
        try {
          await connection.ns
            .getAll()
            .prefix(AGENTS)
            .limit(1)
            .options({ deadline: Date.now() + Math.max(1, Math.min(requestTimeoutMs, deadline - Date.now())) })
            .keys();
          bounded.resolve(new EtcdDiscovery(client, connection, namespace));
          return;
        } catch (error) {
          // An open circuit breaker says only that earlier attempts failed: keep theirs.
          if (last === undefined || !cockatiel.isBrokenCircuitError(error)) last = error;
          const mapped = connection.error(error, `connecting to ${where}`);
          if (mapped.code === ErrorCode.UNAUTHORIZED) bounded.reject(withCallerStack(mapped, caller));
        }
        await pause(Math.min(250, Math.max(0, deadline - Date.now())), signal);
      }
    })();
    try {
      return await bounded.promise;
    } catch (error) {
      client.close();
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Publishes `agent` (its metadata, `info`, `compat`) under a lease kept
   * alive, loads the compatible members already there (autoConnect), and
   * watches for more. Resolves once this member is published and knows
   * who is there. The membership ends with leave(), the agent's close() or
   * this discovery's close(); until then it keeps the process alive.
   * Rejects ERR_INVALID_ARG for a record over 1 MiB or `info` that is not
   * JSON, ERR_CLOSED for a closed agent or discovery, and with etcd's
   * failure (ERR_PEER_UNREACHABLE, ERR_TIMEOUT, ERR_UNAUTHORIZED).
   */
  async join(agent: Agent, options: EtcdJoinOptions = {}): Promise<EtcdMembership> {
    const caller = new Error();
    if (this.#closing !== undefined) throw new KvxferError(ErrorCode.CLOSED, 'this etcd discovery is closed');
    if (agent === null || typeof agent !== 'object' || typeof agent.metadata !== 'function') throw invalidArg('join() takes an Agent');
    if (options === null || typeof options !== 'object') throw invalidArg('join() takes { autoConnect?, info?, compat?, timeoutMs?, signal? }');
    checkBounds(options);
    const { autoConnect = true, info = null, compat } = options;
    if (typeof autoConnect !== 'boolean') throw invalidArg('autoConnect must be a boolean');
    if (compat !== undefined && typeof compat !== 'string') throw invalidArg('compat must be a string');
    let infoJson: string | undefined;
    try {
      infoJson = JSON.stringify(info);
    } catch (error) {
      throw invalidArg(`info must be JSON: ${(error as Error).message}`);
    }
    if (infoJson === undefined) throw invalidArg('info must be JSON');
    const membership = EtcdMembership.create(this.#connection, agent, autoConnect, JSON.parse(infoJson), compat ?? null);
    const bounded = new Bounded<EtcdMembership>(
      `joining etcd as '${agent.name}'`,
      { timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS, signal: options.signal },
      () => void membership.leave().catch(() => {}),
      caller,
    );
    if (bounded.settled) return bounded.promise;
    membership.start().then(
      () => bounded.resolve(membership),
      (error: unknown) => {
        void membership.leave().catch(() => {});
        bounded.reject(error instanceof KvxferError ? withCallerStack(error, caller) : error);
      },
    );
    return bounded.promise;
  }

  /** Every membership leaves (bounded by its request timeout), then the connection closes. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= Promise.all([...this.#connection.memberships].map((m) => m.leave().catch(() => {}))).then(() => {
      this.#client.close();
    });
    return this.#closing;
  }

  /** close(), for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** etcd3's errors as KvxferErrors with stable codes. */
function etcdError(etcd: Etcd3Module, error: unknown, what: string): KvxferError {
  if (error instanceof KvxferError) return error;
  const message = error instanceof Error ? error.message : String(error);
  let code: ErrorCode = ErrorCode.PEER_UNREACHABLE;
  if (error instanceof etcd.GRPCDeadlineExceededError) code = ErrorCode.TIMEOUT;
  else if (error instanceof etcd.EtcdLeaseInvalidError) code = ErrorCode.LEASE_EXPIRED;
  else if (
    error instanceof etcd.EtcdAuthenticationFailedError ||
    error instanceof etcd.EtcdPermissionDeniedError ||
    error instanceof etcd.GRPCUnauthenticatedError ||
    error instanceof etcd.EtcdInvalidAuthTokenError ||
    error instanceof etcd.EtcdRoleNotGrantedError ||
    error instanceof etcd.EtcdUserNotFoundError
  ) {
    code = ErrorCode.UNAUTHORIZED;
  }
  return new KvxferError(code, `${what}: ${message}`, { cause: error });
}

/**
 * One agent's membership: its record under a lease, and its view of the
 * others. Everything that changes the view (watch events, a full read)
 * goes through one queue, in etcd's order, so that a join's loadPeer has
 * finished before the same member's leave is handled.
 */
export class EtcdMembership implements AsyncDisposable {
  /** The agent's name, the last part of its key. */
  readonly name: string;
  /** The key of this member's record, namespace included. */
  readonly key: string;
  readonly #connection: Connection;
  readonly #agent: Agent;
  readonly #autoConnect: boolean;
  readonly #info: unknown;
  readonly #compat: string | null;
  readonly #instance = randomBytes(8).toString('hex');
  readonly #peers = new Map<string, Known>();
  readonly #incompatible = new Map<string, Known & { reason: string }>();
  readonly #streams = new Set<EventStream>();
  #state: EtcdMembershipState | 'joining' = 'joining';
  #lease: Lease | undefined;
  #leaseId: string | undefined;
  /** The revision of this member's latest write of its record. */
  #published = 0n;
  #watcher: Watcher | undefined;
  #watching = false;
  readonly #watchWaiters = new Set<() => void>();
  /** The newest revision the watch has shown: a watch that comes back older found another etcd's history. */
  #seen = 0n;
  #queue: Promise<void> = Promise.resolve();
  /** Metadata changed since the record was last built. */
  #stale = false;
  #publishing = false;
  #leaving: Promise<void> | undefined;
  /** Contact with etcd failed while joining: reported once joined. */
  #lostWhileJoining: { error: KvxferError; leaseLost: boolean } | undefined;
  readonly #stop = new AbortController();
  #untie: (() => void) | undefined;
  readonly #onMetadata = () => {
    this.#stale = true;
    this.#republish();
  };

  private constructor(connection: Connection, agent: Agent, autoConnect: boolean, info: unknown, compat: string | null) {
    this.#connection = connection;
    this.#agent = agent;
    this.#autoConnect = autoConnect;
    this.#info = info;
    this.#compat = compat;
    this.name = agent.name;
    this.key = `${connection.ns.prefix.toString()}${AGENTS}${agent.name}`;
  }

  /** EtcdDiscovery.join's, before start(). @internal */
  static create(connection: Connection, agent: Agent, autoConnect: boolean, info: unknown, compat: string | null): EtcdMembership {
    return new EtcdMembership(connection, agent, autoConnect, info, compat);
  }

  /** leave() was called (or the agent closed). A method, so that a check after an await is not narrowed away. */
  #ended(): boolean {
    return this.#state === 'left';
  }

  /** Where this membership stands. */
  get state(): EtcdMembershipState {
    return this.#state === 'joining' ? 'rejoining' : this.#state;
  }

  /** The compatible members present now (not this one), as their records describe them. */
  peers(): EtcdPeer[] {
    return [...this.#peers.values()].map(({ record }) => this.#describe(record));
  }

  /**
   * Events from now on, each iterator getting every event; it starts with a
   * `join` for each member present and an `incompatible` for each such
   * member. Ends (done) when the membership ends (leave(), the agent's
   * close()); `next()` rejects ERR_ABORTED once `signal` aborts, and
   * ERR_BUSY when the reader fell 10,000 events behind.
   */
  events(options: { signal?: AbortSignal } = {}): AsyncIterableIterator<EtcdEvent> {
    const signal = options?.signal;
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalidArg('signal must be an AbortSignal');
    const stream = new EventStream(signal, (s) => this.#streams.delete(s));
    for (const { record } of this.#peers.values()) stream.push(this.#joinEvent('join', record));
    for (const { record, reason } of this.#incompatible.values()) {
      stream.push({ type: 'incompatible', peer: record.name, info: record.info, reason });
    }
    if (this.#ended()) stream.end();
    else if (!signal?.aborted) this.#streams.add(stream);
    return stream;
  }

  /**
   * Deletes this member's record (revokes its lease) and stops watching;
   * event iterators end. Peers it loaded stay loaded. Idempotent. Rejects
   * with etcd's failure when the lease cannot be revoked within the request
   * timeout (the record then goes when the lease expires); the membership
   * has ended all the same.
   */
  leave(options?: OperationOptions): Promise<void> {
    try {
      checkBounds(options);
    } catch (error) {
      return Promise.reject(error);
    }
    this.#leaving ??= this.#end();
    if (options?.timeoutMs === undefined && options?.signal === undefined) return this.#leaving;
    const bounded = new Bounded<void>(`leaving etcd as '${this.name}'`, options, undefined, new Error());
    this.#leaving.then(
      () => bounded.resolve(),
      (error: unknown) => bounded.reject(error),
    );
    return bounded.promise;
  }

  /** leave(), for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.leave();
  }

  /** The join itself: publish, read who is there, watch from that revision on. @internal */
  async start(): Promise<void> {
    this.#untie = this.#agent.tieMembership(this);
    this.#connection.memberships.add(this);
    this.#agent.on('metadata', this.#onMetadata);
    const { lease, id } = await this.#grantAndPublish();
    if (this.#ended()) {
      // Given up while publishing: the record must not outlive the join.
      void lease.revoke().catch(() => {});
      return;
    }
    this.#adoptLease(lease, id);
    await this.#readAll();
    if (this.#ended()) return;
    this.#state = 'joined';
    const lost = this.#lostWhileJoining;
    if (lost !== undefined) return this.#lostContact(lost.error, lost.leaseLost);
    // Metadata that changed while joining is published now.
    this.#republish();
  }

  async #end(): Promise<void> {
    this.#state = 'left';
    this.#stop.abort();
    this.#untie?.();
    this.#connection.memberships.delete(this);
    this.#agent.off('metadata', this.#onMetadata);
    for (const stream of [...this.#streams]) stream.end();
    this.#stopWatching();
    // Whoever waits for the watch (a join, a re-join) finds the membership ended.
    for (const waiter of [...this.#watchWaiters]) waiter();
    // Revoked by its ID: while re-joining, the lease that still holds the
    // record is the old one, which no Lease object keeps alive any more.
    this.#lease?.release();
    this.#lease = undefined;
    const id = this.#leaseId;
    if (id === undefined) return;
    // etcd3 retries a failed request, each try with its own deadline: the
    // whole revoke is bounded here, so that close() waits no longer.
    const { ns, etcd, requestTimeoutMs } = this.#connection;
    const what = `revoking the lease of '${this.name}' (its record goes when the lease expires)`;
    const bounded = new Bounded<void>(what, { timeoutMs: requestTimeoutMs });
    ns.leaseClient.leaseRevoke({ ID: id }).then(
      () => bounded.resolve(),
      // Already gone (expired): so is the record.
      (error: unknown) => (error instanceof etcd.EtcdLeaseInvalidError ? bounded.resolve() : bounded.reject(this.#connection.error(error, what))),
    );
    await bounded.promise;
  }

  #emit(event: EtcdEvent): void {
    if (this.#ended()) return;
    for (const stream of [...this.#streams]) stream.push(event);
  }

  #describe(record: MemberRecord): EtcdPeer {
    const peer: EtcdPeer = {
      name: record.name,
      engine: record.engine,
      host: record.host,
      pid: record.pid,
      info: record.info,
      metadata: record.metadata,
    };
    if (record.compat !== null) peer.compat = record.compat;
    return peer;
  }

  #joinEvent(type: 'join' | 'update', record: MemberRecord): EtcdEvent {
    return { type, peer: record.name, info: record.info, metadata: record.metadata };
  }

  // --- publishing ------------------------------------------------------------------------------

  /** This member's record as published now; ERR_INVALID_ARG over the cap. */
  #record(): Buffer {
    this.#stale = false;
    const record = Buffer.from(
      JSON.stringify({
        v: RECORD_VERSION,
        name: this.name,
        instance: this.#instance,
        engine: this.#agent.engine,
        host: os.hostname(),
        pid: process.pid,
        compat: this.#compat,
        info: this.#info,
        metadata: Buffer.from(this.#agent.metadata()).toString('base64'),
      }),
      'utf8',
    );
    if (record.length > MAX_RECORD_BYTES) {
      throw invalidArg(`the etcd record of '${this.name}' would be ${record.length} bytes, over the ${MAX_RECORD_BYTES}-byte cap`);
    }
    return record;
  }

  async #put(lease: Lease, record: Buffer): Promise<void> {
    const response = await lease.put(`${AGENTS}${this.name}`).value(record).exec();
    const revision = revisionOf(response.header.revision);
    if (revision > this.#published) this.#published = revision;
  }

  /** A new lease, and the record under it (a record already there moves to it). */
  async #grantAndPublish(): Promise<{ lease: Lease; id: string }> {
    const record = this.#record();
    const lease = this.#connection.ns.lease(this.#connection.ttlSeconds);
    try {
      const id = await lease.grant();
      await this.#put(lease, record);
      return { lease, id };
    } catch (error) {
      lease.release();
      throw this.#connection.error(error, `publishing '${this.name}' in etcd`);
    }
  }

  #adoptLease(lease: Lease, id: string): void {
    this.#lease = lease;
    this.#leaseId = id;
    const lost = (error: unknown, leaseLost: boolean) => {
      if (this.#lease === lease) this.#lostContact(this.#connection.error(error, `keeping the lease of '${this.name}'`), leaseLost);
    };
    lease.on('keepaliveFailed', (error: unknown) => lost(error, error instanceof this.#connection.etcd.EtcdLeaseInvalidError));
    lease.on('lost', (error: unknown) => lost(error, true));
  }

  /** The agent's metadata changed: publish it again (one put at a time, the latest record). */
  #republish(): void {
    if (this.#state !== 'joined' || this.#publishing || !this.#stale) return;
    const lease = this.#lease!;
    this.#publishing = true;
    void (async () => {
      try {
        while (this.#stale && this.#state === 'joined' && this.#lease === lease) {
          let record: Buffer;
          try {
            record = this.#record();
          } catch (error) {
            // Too large (or the agent closed): the record in etcd stays the previous one.
            if (error instanceof KvxferError && this.#state === 'joined') {
              this.#emit({ type: 'invalid', key: this.key, peer: this.name, error });
            }
            return;
          }
          await this.#put(lease, record);
        }
      } catch (error) {
        if (this.#lease === lease) {
          const mapped = this.#connection.error(error, `publishing '${this.name}' in etcd`);
          this.#lostContact(mapped, mapped.code === ErrorCode.LEASE_EXPIRED);
        }
      } finally {
        this.#publishing = false;
      }
    })();
  }

  // --- losing etcd, and getting back -----------------------------------------------------------

  /** Contact with etcd failed, or etcd dropped the record: report it, and re-join in the background. */
  #lostContact(error: KvxferError, leaseLost: boolean): void {
    if (this.#state === 'joining') this.#lostWhileJoining ??= { error, leaseLost };
    if (this.#state !== 'joined') return;
    this.#state = 'rejoining';
    if (leaseLost) this.#emit({ type: 'lease-lost', error: this.#leaseLostError(error) });
    else this.#emit({ type: 'disconnected', error });
    void this.#rejoin(leaseLost);
  }

  #leaseLostError(cause: KvxferError): KvxferError {
    if (cause.code === ErrorCode.LEASE_EXPIRED) return cause;
    return new KvxferError(ErrorCode.LEASE_EXPIRED, `the etcd record of '${this.name}' is gone: ${cause.message}`, { cause });
  }

  /**
   * Until it works or the membership ends: tell whether the old lease
   * survived (else `lease-lost`), publish under a new lease, wait for the
   * watch to be back, revoke the old lease; then `rejoined`.
   */
  async #rejoin(leaseLost: boolean): Promise<void> {
    const { ns, requestTimeoutMs } = this.#connection;
    const old = this.#lease;
    const oldId = this.#leaseId;
    // Its keepalives would only fail on; a new lease replaces it.
    this.#lease = undefined;
    old?.release();
    let oldAlive: boolean | undefined = leaseLost ? false : undefined;
    const pauseBeforeRetry = retryPauses(this.#stop.signal);
    while (this.#state === 'rejoining') {
      let granted: { lease: Lease; id: string } | undefined;
      try {
        if (oldAlive === undefined && oldId !== undefined) {
          const { TTL } = await ns.leaseClient.leaseTimeToLive({ ID: oldId });
          oldAlive = Number(TTL) > 0;
          if (!oldAlive && this.#state === 'rejoining') {
            const error = new KvxferError(ErrorCode.LEASE_EXPIRED, `the lease of '${this.name}' expired while etcd was out of reach`);
            this.#emit({ type: 'lease-lost', error });
          }
        }
        granted = await this.#grantAndPublish();
        await this.#watchUp(requestTimeoutMs);
      } catch {
        granted?.lease.release();
        await pauseBeforeRetry();
        continue;
      }
      if (this.#state !== 'rejoining') {
        // Left (or displaced) meanwhile: the new record must not stay.
        void granted.lease.revoke().catch(() => {});
        return;
      }
      this.#adoptLease(granted.lease, granted.id);
      this.#state = 'joined';
      if (oldAlive === true && oldId !== undefined) void ns.leaseClient.leaseRevoke({ ID: oldId }).catch(() => {});
      this.#emit({ type: 'rejoined' });
      this.#republish();
      return;
    }
  }

  // --- watching --------------------------------------------------------------------------------

  /** Resolves once the watch is connected; rejects after `ms`. */
  #watchUp(ms: number): Promise<void> {
    if (this.#watching) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.#watchWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#watchWaiters.delete(done);
        reject(new KvxferError(ErrorCode.TIMEOUT, `the etcd watch of '${this.name}' did not connect within ${ms} ms`));
      }, ms);
      this.#watchWaiters.add(done);
    });
  }

  #stopWatching(): void {
    const watcher = this.#watcher;
    this.#watcher = undefined;
    this.#watching = false;
    if (watcher === undefined) return;
    watcher.removeAllListeners();
    // A late 'error' from a watcher on its way out must not go unhandled.
    watcher.on('error', () => {});
    void watcher.cancel().catch(() => {});
  }

  /**
   * Reads every record at one revision (in pages), brings the view in line
   * with it (members missing from it have left), and watches from the next
   * revision. At join, and whenever the watch cannot resume: etcd cancelled
   * it (its history was compacted) or came back with an older history (a
   * new etcd).
   */
  async #readAll(): Promise<void> {
    this.#stopWatching();
    const { ns, etcd } = this.#connection;
    const range = etcd.Range.prefix(AGENTS);
    let start = range.start;
    let revision: string | undefined;
    const seen = new Set<string>();
    const kvs: KeyValue[] = [];
    for (;;) {
      let builder = ns.getAll().inRange({ start, end: range.end }).sort('Key', 'Ascend').limit(RANGE_PAGE);
      if (revision !== undefined) builder = builder.revision(revision);
      const page = await builder.exec();
      revision ??= page.header.revision;
      kvs.push(...page.kvs);
      if (!page.more || page.kvs.length === 0) break;
      start = Buffer.concat([page.kvs[page.kvs.length - 1]!.key, Buffer.from([0])]);
    }
    const at = revisionOf(revision);
    this.#seen = at;
    for (const kv of kvs) {
      const name = kv.key.toString('utf8').slice(AGENTS.length);
      seen.add(name);
      await this.#apply('put', name, kv.value, revisionOf(kv.mod_revision));
    }
    for (const name of [...this.#peers.keys(), ...this.#incompatible.keys()]) {
      if (!seen.has(name)) await this.#apply('delete', name, Buffer.alloc(0), at);
    }
    if (!seen.has(this.name) && this.#state !== 'joining') await this.#apply('delete', this.name, Buffer.alloc(0), at);
    if (this.#ended()) return;
    await this.#watch(at + 1n);
  }

  async #watch(from: bigint): Promise<void> {
    const watcher = this.#connection.ns.watch().prefix(AGENTS).startRevision(from.toString()).watcher();
    this.#watcher = watcher;
    const enqueue = (type: 'put' | 'delete', kv: KeyValue) => {
      const name = kv.key.toString('utf8').slice(AGENTS.length);
      this.#enqueue(() => this.#apply(type, name, kv.value, revisionOf(kv.mod_revision)));
    };
    watcher.on('put', (kv: KeyValue) => enqueue('put', kv));
    watcher.on('delete', (kv: KeyValue) => enqueue('delete', kv));
    watcher.on('data', (response: { header: { revision: string } }) => {
      const revision = revisionOf(response.header.revision);
      if (revision > this.#seen) this.#seen = revision;
    });
    watcher.on('connected', (response: { header: { revision: string } }) => {
      if (revisionOf(response.header.revision) < this.#seen) {
        // etcd's history is older than what we saw: a new etcd, whose
        // revisions this watch would wait for in vain.
        this.#seen = 0n;
        this.#published = 0n;
        this.#resync();
        return;
      }
      this.#watching = true;
      for (const waiter of [...this.#watchWaiters]) waiter();
    });
    watcher.on('disconnected', (error: unknown) => {
      this.#watching = false;
      this.#lostContact(this.#connection.error(error, `watching etcd for '${this.name}'`), false);
    });
    // etcd cancelled the watch (e.g. its start revision was compacted away).
    watcher.on('error', () => this.#resync());
    await this.#watchUp(this.#connection.requestTimeoutMs);
  }

  /** The watch cannot go on: read everything again (retrying until it works or the membership ends). */
  #resync(): void {
    this.#stopWatching();
    this.#enqueue(async () => {
      const pauseBeforeRetry = retryPauses(this.#stop.signal);
      while (!this.#ended()) {
        try {
          await this.#readAll();
          return;
        } catch {
          this.#stopWatching();
          await pauseBeforeRetry();
        }
      }
    });
  }

  #enqueue(work: () => Promise<void>): void {
    // Work never rejects the chain: each step reports its own failures.
    this.#queue = this.#queue.then(work).catch(() => {});
  }

  // --- the view of the others ------------------------------------------------------------------

  /** One change to `agents/<name>`, in etcd's order. */
  async #apply(type: 'put' | 'delete', name: string, value: Buffer, revision: bigint): Promise<void> {
    if (this.#ended() || name === '') return;
    if (name === this.name) return this.#applyOwn(type, value, revision);
    const key = `${this.#connection.ns.prefix.toString()}${AGENTS}${name}`;
    const known = this.#peers.get(name);
    if (type === 'delete') {
      this.#incompatible.delete(name);
      if (known !== undefined) await this.#drop(known, `'${name}' left (etcd: its record was deleted or its lease expired)`);
      return;
    }
    if (known?.value.equals(value) || this.#incompatible.get(name)?.value.equals(value)) return;
    let record: MemberRecord;
    try {
      record = decodeRecord(value, name, key);
    } catch (error) {
      this.#emit({ type: 'invalid', key, peer: name, error: error as KvxferError });
      return;
    }
    const reason = incompatibility(record, this.#agent.engine, this.#compat);
    if (reason !== undefined) {
      if (known !== undefined) await this.#drop(known, `${reason} (etcd)`);
      this.#incompatible.set(name, { record, value, reason });
      this.#emit({ type: 'incompatible', peer: name, info: record.info, reason });
      return;
    }
    this.#incompatible.delete(name);
    if (known !== undefined && known.record.instance !== record.instance) {
      await this.#drop(known, `'${name}' was replaced by a new instance under its name (etcd)`);
    }
    if (this.#autoConnect) {
      try {
        const loaded = await this.#agent.loadPeer(record.metadata, { timeoutMs: this.#connection.requestTimeoutMs });
        if (loaded !== name) {
          throw new KvxferError(ErrorCode.BAD_METADATA, `etcd record ${key}: its metadata is agent '${loaded}'s`);
        }
      } catch (error) {
        if (this.#ended()) return;
        const cause = error instanceof KvxferError ? error : new KvxferError(ErrorCode.BAD_METADATA, String(error));
        this.#emit({ type: 'invalid', key, peer: name, error: cause });
        return;
      }
    }
    const change = this.#peers.has(name) ? 'update' : 'join';
    this.#peers.set(name, { record, value });
    this.#emit(this.#joinEvent(change, record));
  }

  /** A member is gone: forgotten (autoConnect) with the reason, then `leave`. */
  async #drop(known: Known, reason: string): Promise<void> {
    const name = known.record.name;
    this.#peers.delete(name);
    if (this.#autoConnect && !this.#agent.closed) {
      try {
        await this.#agent.forgetPeer(name, { reason });
      } catch {
        // Already forgotten (by the application) or the agent is closing: nothing to undo.
      }
    }
    this.#emit({ type: 'leave', peer: name, info: known.record.info, reason });
  }

  /** A change to this member's own key that it did not make. */
  #applyOwn(type: 'put' | 'delete', value: Buffer, revision: bigint): void {
    if (this.#state !== 'joined' || revision <= this.#published) return;
    if (type === 'delete') {
      const error = new KvxferError(ErrorCode.LEASE_EXPIRED, `the etcd record of '${this.name}' was deleted (its lease expired or was revoked)`);
      this.#lostContact(error, true);
      return;
    }
    let instance: unknown;
    try {
      instance = (JSON.parse(value.toString('utf8')) as { instance?: unknown }).instance;
    } catch {
      // Not a record at all: someone else's write all the same.
    }
    if (instance === this.#instance) return;
    this.#state = 'displaced';
    const error = new KvxferError(ErrorCode.NAME_IN_USE, `another agent published under the name '${this.name}' in etcd; this member no longer publishes`);
    this.#emit({ type: 'displaced', error });
  }
}
