// Generated from native/protocol.h by scripts/gen-protocol.js. Do not edit:
// change native/protocol.h and run `npm run build:ts`.

/** The stable error codes of kvxfer: `KvxferError.code` is one of these. */
export const ErrorCode = {
  /** A wrong argument: a type, a count or length mismatch, an empty descriptor, a notification over 16 KiB, a malformed descriptor list, memory registered as the wrong kind. */
  INVALID_ARG: 'ERR_INVALID_ARG',
  /** A local descriptor in no registered region, or a remote one in none of the peer's. */
  NOT_REGISTERED: 'ERR_NOT_REGISTERED',
  /** A descriptor, slice or view that starts inside a region and runs past its end. */
  OUT_OF_RANGE: 'ERR_OUT_OF_RANGE',
  /** A peer name never loaded, forgotten, or replaced by newer metadata. */
  UNKNOWN_PEER: 'ERR_UNKNOWN_PEER',
  /** A metadata blob that is truncated, corrupted, or from another format version or engine. */
  BAD_METADATA: 'ERR_BAD_METADATA',
  /** The peer died, or no transport reaches it. */
  PEER_UNREACHABLE: 'ERR_PEER_UNREACHABLE',
  /** The operation's timeoutMs passed. */
  TIMEOUT: 'ERR_TIMEOUT',
  /** The operation's signal aborted. */
  ABORTED: 'ERR_ABORTED',
  /** The agent is closed, or was closed while the operation was pending. */
  CLOSED: 'ERR_CLOSED',
  /** The resource is in use: a region with unreleased transfers, a transfer still in flight. */
  BUSY: 'ERR_BUSY',
  /** UCX, NIXL or CUDA failed, or the engine cannot do it at all (VRAM on a UCX without CUDA); engineStatus and engineCode say how. */
  ENGINE: 'ERR_ENGINE',
  /** Metadata of a second live agent under the name of a loaded one: forget the loaded one first. */
  NAME_IN_USE: 'ERR_NAME_IN_USE',
  /** A side-channel exchange where one side did not prove it knows the shared secret, or etcd refused the credentials. */
  UNAUTHORIZED: 'ERR_UNAUTHORIZED',
  /** A lease ran out: a KV pull the offering worker could not confirm while its lease held (the blocks may have been reused, so their bytes are not handed out), or an etcd membership's record (etcd no longer holds it). */
  LEASE_EXPIRED: 'ERR_LEASE_EXPIRED',
} as const;

/** One of the stable codes in {@link ErrorCode}. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** @internal The error codes in the addon's order (native/status.h), for the load-time check. */
export const ERROR_CODES = ['ERR_INVALID_ARG', 'ERR_NOT_REGISTERED', 'ERR_OUT_OF_RANGE', 'ERR_UNKNOWN_PEER', 'ERR_BAD_METADATA', 'ERR_PEER_UNREACHABLE', 'ERR_TIMEOUT', 'ERR_ABORTED', 'ERR_CLOSED', 'ERR_BUSY', 'ERR_ENGINE', 'ERR_NAME_IN_USE', 'ERR_UNAUTHORIZED', 'ERR_LEASE_EXPIRED'] as const;

/** @internal Memory kinds as the addon numbers them. */
export const MEM_KIND = {
  dram: 0,
  vram: 1,
  file: 2,
} as const;

/** @internal Transfer directions as the addon numbers them. */
export const XFER_OP = {
  write: 0,
  read: 1,
} as const;

/** @internal The `kind` of the event objects the addon delivers. */
export const EVENT_KIND = {
  Operation: 0,
  Notification: 1,
  PeerFailed: 2,
  PeerChanged: 3,
  NameConflict: 4,
  MetadataChanged: 5,
} as const;

/** @internal Layouts and limits both sides check (see native/protocol.h). */
export const LIMITS = {
  DescListMagic: 1279546955,
  DescListVersion: 1,
  DescListHeaderBytes: 16,
  DescListEntryBytes: 24,
  MaxDescriptors: 268435456,
  NixlEnvelopeBytes: 16,
  MaxNotificationBytes: 16384,
  MaxAgentNameBytes: 255,
  MaxBusyPollUs: 10000,
} as const;
