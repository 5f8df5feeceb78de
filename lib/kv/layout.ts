import { createHash } from 'node:crypto';
import { ErrorCode, KvxferError, invalidArg } from '../errors';

/** The element type of the cache. fp8 is any 8-bit format (e4m3, e5m2): only the size matters here. */
export type KvDtype = 'fp32' | 'bf16' | 'fp16' | 'fp8';

/**
 * How the block parts (one layer's K or V of one block) follow each other in memory.
 * - `layer-kv-block`: all K blocks of layer 0, all V blocks of layer 0, then layer 1 (vLLM's flash-attn cache).
 * - `layer-block-kv`: per layer, block by block, each block's K then V (FlashInfer).
 * - `block-layer-kv`: one block holds every layer's K and V (a cache that pages whole blocks).
 */
export type KvOrder = 'layer-kv-block' | 'layer-block-kv' | 'block-layer-kv';

/** Inside a part: `NHD` is token-major (token, head, dim), `HND` head-major (head, token, dim). */
export type KvHeadLayout = 'NHD' | 'HND';

/** A worker's tensor-parallel position: it holds the `rank`-th of `size` equal slices of the KV heads. */
export interface KvTp {
  rank: number;
  size: number;
}

/** What KvLayout is made from. */
export interface KvLayoutOptions {
  /** Transformer layers with a KV cache. */
  layers: number;
  /** Blocks in the pool (on this worker). */
  blocks: number;
  /** Tokens per block. */
  blockTokens: number;
  /** The model's KV heads, all ranks together. */
  kvHeads: number;
  /** Elements per head. */
  headDim: number;
  dtype: KvDtype;
  order: KvOrder;
  heads: KvHeadLayout;
  /** Default `{ rank: 0, size: 1 }`: one worker holds every head. */
  tp?: KvTp;
}

/** One element of the cache; `head` is the model-global head index. */
export interface KvElement {
  layer: number;
  /** 0 for K, 1 for V. */
  kv: number;
  block: number;
  token: number;
  head: number;
}

/** One part: a layer's K or V of one block. */
export interface KvPart {
  layer: number;
  /** 0 for K, 1 for V. */
  kv: number;
  block: number;
}

/** Bytes per element. */
const KV_DTYPE_BYTES: Readonly<Record<KvDtype, number>> = Object.freeze({ fp32: 4, bf16: 2, fp16: 2, fp8: 1 });
const ORDERS: readonly KvOrder[] = ['layer-kv-block', 'layer-block-kv', 'block-layer-kv'];
const HEAD_LAYOUTS: readonly KvHeadLayout[] = ['NHD', 'HND'];
const OPTION_KEYS = new Set(['layers', 'blocks', 'blockTokens', 'kvHeads', 'headDim', 'dtype', 'order', 'heads', 'tp']);
/** The version of what `hash` covers; a change to it changes every hash. */
const HASH_VERSION = 1;

function positive(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw invalidArg(`KvLayout: ${what} must be a positive integer, got ${String(value)}`);
  }
  return value;
}

/** a * b, refused once it passes 2^53 (from there on numbers stop counting bytes exactly). */
function product(a: number, b: number, what: string): number {
  const n = a * b;
  if (n > Number.MAX_SAFE_INTEGER) throw invalidArg(`KvLayout: ${what} (${n} bytes) is past 2^53`);
  return n;
}

function oneOf<T extends string>(value: unknown, allowed: readonly T[], what: string): T {
  if (!allowed.includes(value as T)) {
    throw invalidArg(`KvLayout: ${what} must be one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${String(value)}`);
  }
  return value as T;
}

/** An index in [0, end): INVALID_ARG for a non-integer, OUT_OF_RANGE outside. @internal */
export function checkIndex(value: unknown, end: number, what: string, start = 0): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
    throw invalidArg(`${what} must be an integer, got ${String(value)}`);
  }
  if (value < start || value >= end) {
    throw new KvxferError(ErrorCode.OUT_OF_RANGE, `${what} ${value} is outside [${start}, ${end})`);
  }
  return value;
}

/**
 * The shape of a paged KV cache and where each element lives: shape math
 * only, no memory. With `H` heads on this rank, `s` bytes per element,
 * `T = blockTokens` and `D = headDim`, a part (one layer's K or V of one
 * block) is `P = T*H*D*s` bytes; inside it an element (token, head) is at
 * `(token*H + head)*D*s` (NHD) or `(head*T + token)*D*s` (HND); parts are
 * at `((layer*2 + kv)*blocks + block)*P` (layer-kv-block),
 * `((layer*blocks + block)*2 + kv)*P` (layer-block-kv) or
 * `((block*layers + layer)*2 + kv)*P` (block-layer-kv).
 *
 * Every size is a number: exact below 2^53 bytes, which the constructor
 * checks, so pools above 4 GiB are fine.
 */
export class KvLayout {
  readonly layers: number;
  readonly blocks: number;
  readonly blockTokens: number;
  /** The model's KV heads, all ranks together. */
  readonly kvHeads: number;
  readonly headDim: number;
  readonly dtype: KvDtype;
  readonly order: KvOrder;
  readonly heads: KvHeadLayout;
  readonly tp: Readonly<KvTp>;
  /** Bytes per element. */
  readonly dtypeBytes: number;
  /** Heads this rank holds: `kvHeads / tp.size`. */
  readonly headsPerRank: number;
  /** The first model-global head of this rank: `tp.rank * headsPerRank`. */
  readonly headStart: number;
  /** One past the last model-global head of this rank. */
  readonly headEnd: number;
  /** One head of one token: `headDim * dtypeBytes`. Every offset is a multiple of it. */
  readonly headBytes: number;
  /** One token of a part, all of this rank's heads: `headsPerRank * headBytes`. */
  readonly tokenBytes: number;
  /** One part, a layer's K or V of one block: `blockTokens * tokenBytes`. */
  readonly partBytes: number;
  /** One block across every layer, K and V: `2 * layers * partBytes`. */
  readonly blockBytes: number;
  /** One layer across every block, K and V: `2 * blocks * partBytes`. */
  readonly layerBytes: number;
  /** The whole pool. */
  readonly bytes: number;
  /**
   * What two workers must agree on to hand blocks over, as a short stable
   * string: layers, blockTokens, kvHeads, headDim, dtype, order and heads.
   * Not `blocks` (pools differ in size) and not `tp`: a prefill worker with
   * tp.size 1 and decode workers with tp.size 2 of one model have the same
   * hash, since each decode rank reads its slice of the heads. Compare
   * hashes when a worker joins; compare tp to pick the ranks to pair.
   */
  readonly hash: string;

  constructor(options: KvLayoutOptions) {
    if (options === null || typeof options !== 'object') throw invalidArg('KvLayout: options must be an object');
    for (const key of Object.keys(options)) {
      if (!OPTION_KEYS.has(key)) throw invalidArg(`KvLayout: unknown option '${key}'`);
    }
    this.layers = positive(options.layers, 'layers');
    this.blocks = positive(options.blocks, 'blocks');
    this.blockTokens = positive(options.blockTokens, 'blockTokens');
    this.kvHeads = positive(options.kvHeads, 'kvHeads');
    this.headDim = positive(options.headDim, 'headDim');
    this.dtype = oneOf(options.dtype, Object.keys(KV_DTYPE_BYTES) as KvDtype[], 'dtype');
    this.order = oneOf(options.order, ORDERS, 'order');
    this.heads = oneOf(options.heads, HEAD_LAYOUTS, 'heads');
    const tp = options.tp === undefined ? { rank: 0, size: 1 } : options.tp;
    if (tp === null || typeof tp !== 'object') throw invalidArg('KvLayout: tp must be { rank, size }');
    const size = positive(tp.size, 'tp.size');
    if (typeof tp.rank !== 'number' || !Number.isSafeInteger(tp.rank) || tp.rank < 0 || tp.rank >= size) {
      throw invalidArg(`KvLayout: tp.rank must be an integer in [0, ${size}), got ${String(tp.rank)}`);
    }
    if (this.kvHeads % size !== 0) {
      throw invalidArg(`KvLayout: kvHeads (${this.kvHeads}) must divide by tp.size (${size})`);
    }
    this.tp = Object.freeze({ rank: tp.rank, size });
    this.dtypeBytes = KV_DTYPE_BYTES[this.dtype];
    this.headsPerRank = this.kvHeads / size;
    this.headStart = tp.rank * this.headsPerRank;
    this.headEnd = this.headStart + this.headsPerRank;
    this.headBytes = product(this.headDim, this.dtypeBytes, 'a head');
    this.tokenBytes = product(this.headsPerRank, this.headBytes, 'a token');
    this.partBytes = product(this.blockTokens, this.tokenBytes, 'a part');
    this.blockBytes = product(product(2, this.layers, 'layers'), this.partBytes, 'a block');
    this.layerBytes = product(product(2, this.blocks, 'blocks'), this.partBytes, 'a layer');
    this.bytes = product(this.layers, this.layerBytes, 'the pool');
    const model = [HASH_VERSION, this.layers, this.blockTokens, this.kvHeads, this.headDim, this.dtype, this.order, this.heads];
    this.hash = `kv${HASH_VERSION}-${createHash('sha256').update(JSON.stringify(model)).digest('hex').slice(0, 32)}`;
    Object.freeze(this);
  }

  /** The options this layout was made from, as a plain object: `new KvLayout({ ...layout.options, tp })`. */
  get options(): KvLayoutOptions {
    const { layers, blocks, blockTokens, kvHeads, headDim, dtype, order, heads } = this;
    return { layers, blocks, blockTokens, kvHeads, headDim, dtype, order, heads, tp: { ...this.tp } };
  }

  /** The byte offset of a part: a layer's K (kv 0) or V (kv 1) of a block. ERR_OUT_OF_RANGE outside the layout. */
  partOffset(part: KvPart): number {
    if (part === null || typeof part !== 'object') throw invalidArg('partOffset expects { layer, kv, block }');
    const layer = checkIndex(part.layer, this.layers, 'layer');
    const kv = checkIndex(part.kv, 2, 'kv');
    const block = checkIndex(part.block, this.blocks, 'block');
    return this.partAt(layer, kv, block);
  }

  /** partOffset without the checks, for loops over indices already checked. @internal */
  partAt(layer: number, kv: number, block: number): number {
    switch (this.order) {
      case 'layer-kv-block':
        return ((layer * 2 + kv) * this.blocks + block) * this.partBytes;
      case 'layer-block-kv':
        return ((layer * this.blocks + block) * 2 + kv) * this.partBytes;
      case 'block-layer-kv':
        return ((block * this.layers + layer) * 2 + kv) * this.partBytes;
    }
  }

  /**
   * The byte offset of an element's first dim. `head` is model-global and
   * must be one of this rank's heads; anything outside the layout is
   * ERR_OUT_OF_RANGE.
   */
  offset(element: KvElement): number {
    if (element === null || typeof element !== 'object') throw invalidArg('offset expects { layer, kv, block, token, head }');
    const part = this.partOffset(element);
    const token = checkIndex(element.token, this.blockTokens, 'token');
    const head = checkIndex(element.head, this.headEnd, `head (this rank holds heads [${this.headStart}, ${this.headEnd}))`, this.headStart);
    return part + this.inPart(token, head - this.headStart);
  }

  /** The offset inside a part of (token, rank-local head). @internal */
  inPart(token: number, localHead: number): number {
    const H = this.headsPerRank;
    const T = this.blockTokens;
    return (this.heads === 'NHD' ? token * H + localHead : localHead * T + token) * this.headBytes;
  }
}
