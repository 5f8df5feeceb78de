import { ErrorCode, KvxferError, invalidArg } from './errors';
import { LIMITS } from './protocol';

/** One contiguous piece of memory: where, how long, and on which device. */
export interface Desc {
  /** The first byte. */
  address: bigint;
  /** Bytes from `address`. */
  length: number;
  /** The CUDA device of VRAM; 0 for host memory. */
  device: number;
}

/** What DescList.from accepts: a Desc, or anything shaped like one (a Region). */
export interface DescLike {
  /** The first byte. */
  address: bigint;
  /** Bytes from `address`, more than 0. */
  length: number | bigint;
  /** The CUDA device of VRAM (default 0). */
  device?: number;
}

// The layout shared with native/descs.h (DescList* in native/protocol.h): a
// header, then one fixed-size entry per descriptor, little endian.
const HEADER = LIMITS.DescListHeaderBytes;
const ENTRY = LIMITS.DescListEntryBytes;
const VERSION = LIMITS.DescListVersion;
const MAGIC = LIMITS.DescListMagic;
const MAX_COUNT = LIMITS.MaxDescriptors;
// A descriptor may end exactly at the top of the 64-bit address space.
const ADDRESS_END = 1n << 64n;
const TWO_32 = 2 ** 32;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function checkLength(value: number | bigint, index: number): number {
  const length = typeof value === 'bigint' ? Number(value) : value;
  if (!Number.isSafeInteger(length) || length <= 0) {
    throw invalidArg(`descriptor ${index}: length must be a positive integer, got ${String(value)}`);
  }
  return length;
}

/**
 * A packed list of descriptors: one ArrayBuffer however many blocks it holds,
 * cheap to build for 10,000s of KV blocks, and sent to a peer as is.
 */
export class DescList implements Iterable<Desc> {
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  /** Number of descriptors. */
  readonly length: number;
  /** Sum of the descriptors' lengths. */
  readonly totalBytes: number;

  private constructor(bytes: Uint8Array, count: number, totalBytes: number) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.length = count;
    this.totalBytes = totalBytes;
  }

  /** Builds a list from regions, slices and plain `{ address, length, device? }` objects. */
  static from(items: Iterable<DescLike>): DescList {
    if (items === null || typeof items !== 'object' || typeof (items as Iterable<DescLike>)[Symbol.iterator] !== 'function') {
      throw invalidArg('DescList.from expects an iterable of regions or { address, length, device? }');
    }
    const array = Array.isArray(items) ? (items as DescLike[]) : Array.from(items);
    if (array.length > MAX_COUNT) throw invalidArg('too many descriptors');
    const bytes = new Uint8Array(HEADER + ENTRY * array.length);
    const view = new DataView(bytes.buffer);
    view.setUint32(0, MAGIC, true);
    view.setUint16(4, VERSION, true);
    view.setUint32(8, array.length, true);
    let total = 0;
    for (let i = 0; i < array.length; i++) {
      const item = array[i];
      if (item === null || typeof item !== 'object' || typeof item.address !== 'bigint') {
        throw invalidArg(`descriptor ${i}: expected { address: bigint, length, device? }`);
      }
      const length = checkLength(item.length, i);
      const device = item.device ?? 0;
      if (!Number.isInteger(device) || device < 0 || device >= TWO_32) {
        throw invalidArg(`descriptor ${i}: device must be a non-negative integer`);
      }
      if (item.address < 0n || item.address + BigInt(length) > ADDRESS_END) {
        throw invalidArg(`descriptor ${i}: address out of the 64-bit range`);
      }
      const at = HEADER + ENTRY * i;
      view.setBigUint64(at, item.address, true);
      view.setUint32(at + 8, length % TWO_32, true);
      view.setUint32(at + 12, Math.floor(length / TWO_32), true);
      view.setUint32(at + 16, device, true);
      total += length;
    }
    return new DescList(bytes, array.length, total);
  }

  /**
   * A list from parallel arrays, with no object or BigInt per descriptor
   * (KvPool's runs: 10,000s per request): descriptor i starts `offset[i]`
   * bytes into span `span[i]` and is `length[i]` long. The caller checked
   * that every run lies inside its span. @internal
   */
  static fromRuns(
    spans: readonly { address: bigint; device: number }[],
    span: readonly number[],
    offset: readonly number[],
    length: readonly number[],
  ): DescList {
    const count = span.length;
    if (!LITTLE_ENDIAN) {
      return DescList.from(span.map((k, i) => ({ address: spans[k]!.address + BigInt(offset[i]!), length: length[i]!, device: spans[k]!.device })));
    }
    if (count > MAX_COUNT) throw invalidArg('too many descriptors');
    const bytes = new Uint8Array(HEADER + ENTRY * count);
    const view = new DataView(bytes.buffer);
    view.setUint32(0, MAGIC, true);
    view.setUint16(4, VERSION, true);
    view.setUint32(8, count, true);
    const low = spans.map((s) => Number(s.address & 0xffffffffn));
    const high = spans.map((s) => Number(s.address >> 32n));
    const devices = spans.map((s) => s.device);
    // The entries as 32-bit words, little endian like the layout.
    const words = new Uint32Array(bytes.buffer, HEADER, (ENTRY * count) >>> 2);
    const stride = ENTRY >>> 2;
    let total = 0;
    for (let i = 0, w = 0; i < count; i++, w += stride) {
      const k = span[i]!;
      const sum = low[k]! + offset[i]!;
      const lo = sum >>> 0;
      const len = length[i]!;
      const lenLo = len >>> 0;
      words[w] = lo;
      words[w + 1] = high[k]! + (sum - lo) / TWO_32;
      words[w + 2] = lenLo;
      words[w + 3] = (len - lenLo) / TWO_32;
      words[w + 4] = devices[k]!;
      total += len;
    }
    return new DescList(bytes, count, total);
  }

  /** Reads a list a peer sent. The bytes are checked and copied. */
  static decode(input: Uint8Array): DescList {
    if (!(input instanceof Uint8Array)) throw invalidArg('DescList.decode expects a Uint8Array');
    const bytes = new Uint8Array(input); // a copy: Buffer#slice would be a view
    if (bytes.byteLength < HEADER) throw invalidArg('descriptor list is shorter than its header');
    const view = new DataView(bytes.buffer);
    if (view.getUint32(0, true) !== MAGIC) throw invalidArg('descriptor list has a bad magic number');
    const version = view.getUint16(4, true);
    if (version !== VERSION) throw invalidArg(`descriptor list version ${version} is not supported`);
    const count = view.getUint32(8, true);
    if (count > MAX_COUNT || bytes.byteLength !== HEADER + ENTRY * count) {
      throw invalidArg(`descriptor list size does not match its count of ${count}`);
    }
    let total = 0;
    for (let i = 0; i < count; i++) {
      const at = HEADER + ENTRY * i;
      const hi = view.getUint32(at + 12, true);
      const length = view.getUint32(at + 8, true) + hi * TWO_32;
      if (length === 0 || hi >= 2 ** 21) {
        throw invalidArg(`descriptor ${i}: length must be a positive integer below 2^53`);
      }
      if (view.getBigUint64(at, true) + BigInt(length) > ADDRESS_END) {
        throw invalidArg(`descriptor ${i} wraps around the address space`);
      }
      total += length;
    }
    return new DescList(bytes, count, total);
  }

  /** The wire form, for a peer's DescList.decode. */
  encode(): Uint8Array {
    return this.#bytes.slice();
  }

  /** The packed bytes without a copy, for the native layer. @internal */
  get packed(): Uint8Array {
    return this.#bytes;
  }

  /** The descriptor at `index`; ERR_OUT_OF_RANGE outside the list. */
  get(index: number): Desc {
    if (!Number.isInteger(index) || index < 0 || index >= this.length) {
      throw new KvxferError(ErrorCode.OUT_OF_RANGE, `index ${index} is outside a list of ${this.length}`);
    }
    const at = HEADER + ENTRY * index;
    return {
      address: this.#view.getBigUint64(at, true),
      length: this.#view.getUint32(at + 8, true) + this.#view.getUint32(at + 12, true) * TWO_32,
      device: this.#view.getUint32(at + 16, true),
    };
  }

  /** The descriptors in order. */
  *[Symbol.iterator](): Iterator<Desc> {
    for (let i = 0; i < this.length; i++) yield this.get(i);
  }
}
