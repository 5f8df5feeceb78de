import type { AgentCore } from './core';
import type { Desc, DescLike } from './descs';
import { ErrorCode, KvxferError, invalidArg } from './errors';
import type { MemoryKind, OperationOptions } from './types';

/** An offset or a length given as a number or a bigint, as a number. @internal */
export function toInteger(value: number | bigint, what: string): number {
  const n = typeof value === 'bigint' ? Number(value) : value;
  if (!Number.isSafeInteger(n) || n < 0) throw invalidArg(`${what} must be a non-negative integer`);
  return n;
}

/** What the native side registered, as a Region is made from it. @internal */
export interface Registration {
  /** The native side's name for the region. */
  id: number;
  address: bigint;
  length: number;
  kind: MemoryKind;
  device: number;
  /** The JS memory the region keeps alive. */
  memory?: Uint8Array;
  /** The engine's own host memory, which view() reaches through the native side. */
  allocated?: boolean;
}

/**
 * Registered memory. Transfers read and write inside regions. Made by
 * Agent.register and Agent.allocate.
 */
export class Region implements DescLike {
  /** The first byte (for a file: the offset in the file). */
  readonly address: bigint;
  /** Bytes from `address`. */
  readonly length: number;
  /** Where the memory is. */
  readonly kind: MemoryKind;
  /** The CUDA device of VRAM; 0 for host memory; the descriptor of a file. */
  readonly device: number;
  readonly #core: AgentCore;
  readonly #id: number;
  readonly #memory: Uint8Array | undefined;
  readonly #allocated: boolean;
  #deregistered = false;

  private constructor(core: AgentCore, registration: Registration) {
    this.#core = core;
    this.#id = registration.id;
    this.address = registration.address;
    this.length = registration.length;
    this.kind = registration.kind;
    this.device = registration.device;
    this.#memory = registration.memory;
    this.#allocated = registration.allocated ?? false;
  }

  /** The native id of a live region of `core`'s agent, or why not. @internal */
  static idOf(region: unknown, core: AgentCore): number {
    if (!(region instanceof Region) || region.#core !== core) {
      throw new KvxferError(ErrorCode.INVALID_ARG, 'regions must be Regions this agent registered');
    }
    if (!region.registered) throw new KvxferError(ErrorCode.NOT_REGISTERED, 'the region was deregistered');
    return region.#id;
  }

  /** A region the native side registered, counted by its agent from now on. @internal */
  static adopt(core: AgentCore, registration: Registration): Region {
    const region = new Region(core, registration);
    core.regions.add(region);
    return region;
  }

  /** False once deregistered or once its agent closed. */
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
