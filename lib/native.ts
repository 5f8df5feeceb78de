/**
 * The one place that loads the compiled addon and declares its surface.
 * Nothing else imports the .node file.
 */
import * as path from 'node:path';
import { ErrorCode, KvxferError } from './errors';
import { ERROR_CODES, EVENT_KIND, LIMITS, MEM_KIND, XFER_OP } from './protocol';
import type { CudaStatus } from './cuda';

/** What NIXL measured of one transfer. @internal */
export interface NativeTelemetry {
  postUs: number;
  transferUs: number;
  bytes: number;
  descriptors: number;
}
/** Events delivered in batches from the owner thread. @internal */
export interface NativeOperationEvent {
  kind: typeof EVENT_KIND.Operation;
  token: number;
  error?: KvxferError;
  /** A loaded peer's name, a registered region's address, a transfer's duration, an estimate. */
  value?: unknown;
  /** What the engine measured of a transfer (NIXL). */
  telemetry?: NativeTelemetry;
}
/** @internal */
export interface NativeNotificationEvent {
  kind: typeof EVENT_KIND.Notification;
  peer: string;
  data: Buffer;
}
/** @internal */
export interface NativePeerFailedEvent {
  kind: typeof EVENT_KIND.PeerFailed;
  peer: string;
  error: KvxferError;
}
/** A loadPeer that succeeded, just before its operation event. @internal */
export interface NativePeerChangedEvent {
  kind: typeof EVENT_KIND.PeerChanged;
  peer: string;
  change: 'loaded' | 'updated' | 'replaced';
}
/** A region was registered or deregistered: the local metadata changed. @internal */
export interface NativeMetadataChangedEvent {
  kind: typeof EVENT_KIND.MetadataChanged;
}
/** A notification from another agent than the loaded one of that name. @internal */
export interface NativeNameConflictEvent {
  kind: typeof EVENT_KIND.NameConflict;
  peer: string;
  data: Buffer;
}
/** @internal */
export type NativeEvent =
  | NativeOperationEvent
  | NativeNotificationEvent
  | NativePeerFailedEvent
  | NativePeerChangedEvent
  | NativeNameConflictEvent
  | NativeMetadataChangedEvent;

/**
 * `done` holds [token, durationNs] pairs of operations that succeeded: the
 * hot path allocates no object per transfer. `others` holds the rest, in the
 * order they happened.
 * @internal
 */
export type NativeEventHandler = (done: Float64Array, others: NativeEvent[]) => void;

/** @internal */
export interface NativeAgent {
  start(): number;
  /** -> [token, regionId]; the completion's value is the region's address. */
  /** movable: no other thread writes the memory (not a SharedArrayBuffer). */
  registerMemory(bytes: Uint8Array, movable: boolean): [number, number];
  registerAddress(kind: number, address: bigint, length: number | bigint, device: number): [number, number];
  allocate(length: number | bigint): [number, number];
  deregister(regionId: number): number;
  view(regionId: number, offset: number | bigint, length: number | bigint): Buffer;
  /** With region ids: partial metadata naming only those. */
  metadata(regionIds?: number[]): Buffer;
  loadPeer(blob: Uint8Array): number;
  /** With a reason, the peer's work in flight fails ERR_PEER_UNREACHABLE ("left: reason"). */
  forgetPeer(name: string, reason?: string): void;
  /** -> [transferId, bytes]; remoteKind: 0 dram, 1 vram, 2 file, undefined: the local kind */
  prepare(
    op: number,
    local: Uint8Array,
    remote: Uint8Array,
    peer: string,
    notify?: Uint8Array,
    remoteKind?: number,
  ): [number, number];
  post(transferId: number): number;
  /** Posts prepared transfers as one burst, all or none; their tokens, in order. */
  postAll(transferIds: Uint32Array): Uint32Array;
  /** The caller stopped waiting for a post: abort it where the engine can. */
  cancel(token: number): void;
  /** -> token; the completion's value is { durationUs, errorMarginUs, method }. */
  estimate(transferId: number): number;
  release(transferId: number): void;
  notify(peer: string, message: Uint8Array): number;
  close(): number;
  /** [polls, polls that found a completion, nanoseconds spent polling, polls cut short by a taken core] */
  busyPollStats(): Float64Array;
  /** Keep the event loop alive while JS waits for something native. */
  hold(): void;
  unhold(): void;
  readonly engine: 'ucx' | 'nixl';
}

/** @internal */
export interface NativeAgentOptions {
  engine: 'ucx' | 'nixl';
  transports?: string;
  backend?: string;
  backendParams?: Record<string, string>;
  busyPollUs?: number;
  peerTimeoutMs?: number;
  pushUpdates?: boolean;
  shareRegisteredMemory?: boolean;
}

/** @internal */
export interface NativeNixlStatus {
  available: boolean;
  reason?: string;
  path?: string;
  plugins?: string[];
  memoryTypes?: Record<string, string[]>;
  cuda?: NativeCudaSupport;
}

/** @internal */
export interface NativeCudaSupport {
  supported: boolean;
  reason?: string;
  memoryDomains?: string[];
  transports?: string[];
  backends?: string[];
}

/** @internal */
export interface NativeUcxInfo {
  version: string;
  threads: boolean;
  transports: { name: string; device: string }[];
  cuda: NativeCudaSupport;
}

/** The addon's copy of native/protocol.h, in lib/protocol.ts's shape. @internal */
export interface NativeProtocol {
  ERROR_CODES: readonly string[];
  MEM_KIND: Record<string, number>;
  XFER_OP: Record<string, number>;
  EVENT_KIND: Record<string, number>;
  LIMITS: Record<string, number>;
}

/** kvxfer/cuda's functions in the addon (native/cuda/cuda_helper.cc). @internal */
export interface NativeCuda {
  status(): CudaStatus;
  malloc(device: number, bytes: number | bigint): bigint;
  free(pointer: bigint | number): void;
  fill(pointer: bigint | number, byte: number, bytes: number | bigint): void;
  copyFromHost(pointer: bigint | number, source: Uint8Array): void;
  copyToHost(target: Uint8Array, pointer: bigint | number): void;
  checksum(pointer: bigint | number, bytes: number | bigint): bigint;
  checksumHost(bytes: Uint8Array): bigint;
  checksumPlacement(device: number): { onDevice: boolean; reason?: string };
  memcpy(target: bigint | number, source: bigint | number, bytes: number | bigint): void;
  timeMemcpy(target: bigint | number, source: bigint | number, bytes: number | bigint, iterations: number): number;
  canAccessPeer(device: number, peer: number): boolean;
}

interface Binding {
  protocol: NativeProtocol;
  NativeAgent: new (name: string, options: NativeAgentOptions, onEvents: NativeEventHandler) => NativeAgent;
  setErrorClass(ctor: typeof KvxferError): void;
  info(): { ucx: NativeUcxInfo; nixl: NativeNixlStatus };
  nixlStatus(): NativeNixlStatus;
  cuda: NativeCuda;
}

function explainLoadFailure(error: unknown): KvxferError {
  const message = error instanceof Error ? error.message : String(error);
  let hint: string;
  if (/lib(ucp|uct|ucs|ucm)\.so/.test(message)) {
    hint =
      'UCX is not installed or not on the loader path. On Debian/Ubuntu: `apt-get install libucx0` ' +
      '(or libucx-dev to build from source); elsewhere, point LD_LIBRARY_PATH at the lib/ of your UCX installation.';
  } else if (/No native build was found/.test(message)) {
    hint =
      'no prebuilt binary matches this platform and the addon was not built. Build it with `npm rebuild kvxfer`, ' +
      'which needs libucx-dev, pkg-config, g++, make and python3 (Debian/Ubuntu: `apt-get install libucx-dev pkg-config g++ make python3`).';
  } else {
    hint = 'the native addon could not be loaded.';
  }
  return new KvxferError(ErrorCode.ENGINE, `kvxfer: ${hint}\n  cause: ${message}`, { cause: error });
}

/** The library's protocol tables, as lib/protocol.ts has them. @internal */
export const LIBRARY_PROTOCOL: NativeProtocol = { ERROR_CODES, MEM_KIND, XFER_OP, EVENT_KIND, LIMITS };

/**
 * Where the addon's tables differ from the library's (an addon built from
 * other sources than this JavaScript), one line each; empty when they agree.
 * @internal
 */
export function protocolMismatches(native: NativeProtocol | undefined): string[] {
  if (native === undefined) return ['the addon exports no protocol tables'];
  const problems: string[] = [];
  for (const table of Object.keys(LIBRARY_PROTOCOL) as (keyof NativeProtocol)[]) {
    const ours = JSON.stringify(LIBRARY_PROTOCOL[table]);
    const theirs = JSON.stringify(native[table]);
    if (ours !== theirs) problems.push(`${table}: library ${ours}, addon ${theirs ?? 'missing'}`);
  }
  return problems;
}

function load(): Binding {
  // UCX installs handlers for SIGSEGV, SIGBUS and others when its library
  // loads, replacing Node's own (V8 relies on SIGSEGV for WebAssembly bounds
  // checks). Unless the user asked for them, keep UCX's hands off signals.
  // It must be in the environment before the addon pulls libucs in.
  process.env.UCX_ERROR_SIGNALS ??= '';
  // UCX's memory-event hooks rewrite the code of libc's mmap/munmap (and
  // malloc's relocations) from whichever thread first starts UCX, here an
  // agent's owner thread, while V8's threads are calling those functions:
  // 3 of 150 processes that created, used and closed one agent crashed in
  // V8's heap, none of 150 with the hooks off. The hooks tell UCX's
  // registration cache that memory went away; kvxfer registers explicitly
  // and keeps every region mapped until it is deregistered, so the cache
  // never needs them.
  process.env.UCX_MEM_EVENTS ??= 'no';
  let addon: Binding;
  try {
    // KVXFER_ADDON names another build of the addon, such as the sanitizer
    // build `npm run test:asan` makes (build/asan/kvxfer.node).
    const override = process.env.KVXFER_ADDON;
    if (override !== undefined && override !== '') {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      addon = require(path.resolve(override)) as Binding;
    } else {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const nodeGypBuild = require('node-gyp-build') as (dir: string) => Binding;
      addon = nodeGypBuild(path.join(__dirname, '..'));
    }
  } catch (error) {
    throw explainLoadFailure(error);
  }
  const mismatches = protocolMismatches(addon.protocol);
  if (mismatches.length > 0) {
    throw new KvxferError(
      ErrorCode.ENGINE,
      'kvxfer: the native addon was built from other sources than this library (rebuild it: `npm run build`):\n  ' +
        mismatches.join('\n  '),
    );
  }
  addon.setErrorClass(KvxferError);
  return addon;
}

let cached: Binding | undefined;

/** The addon, loaded on first use so that importing kvxfer never throws. @internal */
export function binding(): Binding {
  cached ??= load();
  return cached;
}
