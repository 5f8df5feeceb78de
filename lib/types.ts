/**
 * The public types of kvxfer: what the caller passes in and what comes back.
 * The classes that take and return them live next to their own code.
 */
import type { DescList, DescLike } from './descs';
import type { KvxferError } from './errors';

/** The engine an agent runs on: UCX directly, or NVIDIA NIXL. */
export type EngineName = 'ucx' | 'nixl';

/**
 * Where a region's memory is: host memory, GPU memory, or a file
 * ('file': through NIXL's POSIX backend, for KV offload to storage).
 */
export type MemoryKind = 'dram' | 'vram' | 'file';

/** What every asynchronous call accepts. */
export interface OperationOptions {
  /** Rejects with ERR_ABORTED when this signal aborts. */
  signal?: AbortSignal;
  /** Rejects with ERR_TIMEOUT after this many milliseconds. */
  timeoutMs?: number;
}

/** How Agent.create makes an agent; `signal` and `timeoutMs` bound its start. */
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
   * yields its core between looks, and stops polling for a while (1 ms,
   * doubling up to 1 s) when a yield shows the core taken by other threads.
   * A completion
   * found this way needs no wake-up of a sleeping thread, which on a VM costs
   * tens of microseconds: with one 1 MiB write in flight on a 2-vCPU VM,
   * latency goes from 83-92 us to 36 us (kvxfer bench --in-flight 1).
   */
  busyPollUs?: number;
  /**
   * A peer with transfers or notifications in flight that finishes none of
   * them for this long is declared unreachable: its work rejects
   * ERR_PEER_UNREACHABLE and a `failed` peer event is emitted. This is what
   * catches a peer on another host that went silent (a cut link, a frozen
   * host), which no transport reports in good time; a dead process on this
   * host is seen at once regardless. Keep it above the duration of your
   * longest single transfer. 0: never. Default 10000.
   */
  peerTimeoutMs?: number;
  /**
   * Tell the kvxfer peers this agent has loaded of each region it
   * registers: they merge it into the peer they hold (a peer event
   * `updated`) and can reach it at once, without anyone passing metadata
   * around again. Deregistrations always reach them (as revocations).
   * Turn it off when you hand out partial metadata (`metadata({ regions })`)
   * and decide yourself who learns of what. Default true.
   */
  pushUpdates?: boolean;
  /**
   * UCX engine: move the whole pages of each registered Buffer, TypedArray
   * or ArrayBuffer into shared memory where they make 1 MiB or more (up to
   * 512 such buffers at a time), once, when it is
   * registered, so that agents in other processes on this host copy into and
   * out of it with memcpy, as into `allocate()`d memory, instead of the
   * kernel's cross-process copy (a quarter of memcpy's speed on some
   * kernels). The memory stays at its address with its bytes; the bytes
   * before its first whole page and after its last go by the kernel copy.
   * register() then copies the buffer's written pages on the calling
   * thread (about what writing them the first time cost; pages never
   * written are not copied), and the last deregistration of them copies
   * them back to private memory. Turn it off for memory that another thread
   * writes while it is registered, or that other code pinned for a device
   * (cudaHostRegister, io_uring, another RDMA library): those writes, or
   * that device, would miss the moved pages. A SharedArrayBuffer is never
   * moved. Off where the agent cannot copy across processes itself
   * (transports without cma, KVXFER_UCX_DIRECT_COPY=0). Default true.
   */
  shareRegisteredMemory?: boolean;
}

/** Memory that is not a JS buffer: a CUDA allocation, or host memory the caller owns. */
export interface ExternalMemory {
  /** 'vram' for a device pointer, 'dram' for host memory. */
  kind: 'dram' | 'vram';
  /** The first byte. */
  address: bigint;
  /** Bytes from `address`. */
  length: number | bigint;
  /** The CUDA device of VRAM (default 0). */
  device?: number;
}

/**
 * Part of an open file (NIXL engine, POSIX backend). The region's address is
 * the offset and its device the descriptor: a transfer names this agent as
 * its peer and the file's descriptors as the remote side.
 */
export interface FileMemory {
  /** Always 'file'. */
  kind: 'file';
  /** An open file descriptor; the caller keeps it open while the region is registered. */
  fd: number;
  /** Where in the file the region starts (default 0). */
  offset?: number | bigint;
  /** Bytes from `offset`. */
  length: number | bigint;
}

/**
 * What Agent.register takes: JS memory (kept alive by the region), or
 * memory described by address (VRAM, native host memory, a file).
 */
export type Memory = ArrayBufferView | ArrayBuffer | SharedArrayBuffer | ExternalMemory | FileMemory;

/** Where a transfer's bytes are: a list, a region, a slice, or an array of those. */
export type Descriptors = DescList | DescLike | DescLike[];

/** What Agent.prepare validates into a Transfer. */
export interface TransferSpec {
  /** 'write' puts local bytes into the peer's memory; 'read' fetches them. */
  op: 'write' | 'read';
  /** This agent's side: registered memory. */
  local: Descriptors;
  /** The peer's side, as the peer described it (DescList.decode). */
  remote: Descriptors;
  /** The peer's agent name, as loadPeer returned it. */
  peer: string;
  /** Sent to the peer once the data is in place there (at most 16 KiB). */
  notify?: string | Uint8Array;
  /** The kind of the peer's memory (NIXL engine; default: the local kind). */
  remoteKind?: MemoryKind;
}

/** Options of Agent.write and Agent.read, which prepare, post and release in one call. */
export interface TransferOptions extends OperationOptions {
  /** Sent to the peer once the data is in place there (at most 16 KiB). */
  notify?: string | Uint8Array;
  /** The kind of the peer's memory (NIXL engine; default: the local kind). */
  remoteKind?: MemoryKind;
}

/** NIXL's own measurement of one transfer. */
export interface TransferTelemetry {
  /** Time NIXL spent posting, in microseconds. */
  postUs: number;
  /** Time from post to completion as NIXL measured it, in microseconds. */
  transferUs: number;
  /** Bytes NIXL counted. */
  bytes: number;
  /** Descriptors NIXL counted. */
  descriptors: number;
}

/** What a completed post resolves with. */
export interface TransferResult {
  /** Bytes moved. */
  bytes: number;
  /** From post to completion, measured on the owner thread. */
  durationNs: number;
  /** NIXL's own measurement of this transfer (NIXL engine only). */
  telemetry?: TransferTelemetry;
}

/** The engine's prediction of one post of a transfer (Agent.estimate). */
export interface CostEstimate {
  /** The expected duration, in microseconds. */
  durationUs: number;
  /** How far off the engine says it may be, in microseconds. */
  errorMarginUs: number;
  /** How the engine estimated it, in its own words. */
  method: string;
}

/** A message from a peer: standalone (Agent.notify) or riding on a transfer. */
export interface Notification {
  /** The sender's agent name. */
  peer: string;
  /** The payload decoded as UTF-8. */
  message: string;
  /**
   * The payload as sent: a Buffer of its own (a copy for this notification),
   * so `data.slice()` is a view into it, as on any Buffer.
   */
  data: Buffer;
}

/**
 * What happened to a peer, as `agent.on('peer', listener)` reports it:
 * - `loaded`: its metadata was loaded under a name not loaded before;
 * - `updated`: newer metadata of the same agent (other regions) replaced the old;
 * - `replaced`: metadata of another incarnation (a restarted worker) replaced the
 *   old one, whose in-flight work failed with ERR_PEER_UNREACHABLE;
 * - `failed`: the peer died or became unreachable: its in-flight transfers,
 *   notifications and waits on it rejected with `error`, new work with it is
 *   refused until it is loaded again;
 * - `forgotten`: forgetPeer() was called;
 * - `conflict`: a notification came from another agent under the name of the
 *   live peer loaded (another incarnation: a second agent with that name, or
 *   a restart not loaded yet). It is not delivered as the loaded peer's; it
 *   is here, in `notification`. (UCX engine: NIXL's notifications carry only
 *   a name.)
 */
export interface PeerEvent {
  /** What happened (see above). */
  type: 'loaded' | 'updated' | 'replaced' | 'failed' | 'forgotten' | 'conflict';
  /** The peer's agent name. */
  peer: string;
  /** Why the peer failed (`failed` only). */
  error?: KvxferError;
  /** The notification that came from the other agent (`conflict` only). */
  notification?: Notification;
}

/** Receives peer events; see PeerEvent. */
export type PeerListener = (event: PeerEvent) => void;

/** Counters for one peer, in AgentStats.peers. */
export interface PeerStats {
  /** Transfers with this peer that completed. */
  transfers: number;
  /** Bytes those transfers moved. */
  bytes: number;
  /** Transfers with this peer that failed. */
  failures: number;
  /** The peer was found dead: its transfers fail with ERR_PEER_UNREACHABLE. */
  failed: boolean;
}

/** A snapshot of an agent's counters (Agent.stats). */
export interface AgentStats {
  /** Transfers that completed. */
  transfers: number;
  /** Transfers that failed, refused ones to a dead peer included. */
  failures: number;
  /** Bytes written to peers. */
  bytesWritten: number;
  /** Bytes read from peers. */
  bytesRead: number;
  /** Posts not completed yet. */
  inFlight: number;
  /** Standalone notifications sent. */
  notificationsSent: number;
  /** Notifications received, standalone or riding on a transfer. */
  notificationsReceived: number;
  /** Regions registered now. */
  regions: number;
  /** Counters per peer name. */
  peers: Record<string, PeerStats>;
  /** Sums of NIXL's per-transfer telemetry (NIXL engine only). */
  telemetry?: {
    /** Transfers NIXL measured. */
    transfers: number;
    /** Their TransferTelemetry.postUs, summed. */
    postUs: number;
    /** Their TransferTelemetry.transferUs, summed. */
    transferUs: number;
    /** Their TransferTelemetry.bytes, summed. */
    bytes: number;
  };
  /**
   * The JS thread's polls for completions before the loop slept (busyPollUs):
   * how many, how many found one (each a wake-up saved), time spent.
   */
  busyPoll: {
    /** Polls made. */
    polls: number;
    /** Polls that found a completion. */
    found: number;
    /** Microseconds spent polling. */
    us: number;
    /**
     * Polls cut short because other threads held the core (a yield came
     * back late); after each the loop slept without polling for a while.
     * Many of them: the cores are oversubscribed, polling is mostly off.
     */
    contended: number;
  };
}
