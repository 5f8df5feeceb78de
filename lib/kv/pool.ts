import { Agent } from '../agent';
import { DescList } from '../descs';
import { ErrorCode, KvxferError, invalidArg } from '../errors';
import { Region, toInteger } from '../region';
import type { OperationOptions } from '../types';
import {
  checkRegionLengths,
  decodeDescriptor,
  encodeDescriptor,
  type KvPoolDescriptor,
  type KvPoolRegion,
} from './descriptor';
import { KvLayout } from './layout';
import {
  checkBlockIds,
  checkHeadRange,
  merged,
  paired,
  partRuns,
  selection,
  type KvBlockOptions,
  type KvDescCount,
  type Runs,
  type Selection,
  type Span,
} from './runs';

/** The two lists of a transfer between two pools, descriptor i of one paired with descriptor i of the other. */
export interface KvPairedDescs {
  local: DescList;
  remote: DescList;
  /** Descriptors each list would have without merging. */
  unmerged: number;
}

/** The fields two pools paired element by element must share. */
const PAIRED_FIELDS = ['layers', 'blockTokens', 'kvHeads', 'headDim', 'dtype', 'heads'] as const;

/**
 * A layout over memory: what local and remote pools share. Turns block ids
 * into descriptor lists, merging runs that are adjacent in memory (never
 * across regions).
 */
abstract class KvBlockSpace {
  readonly layout: KvLayout;
  readonly #spans: readonly Span[];

  /** @internal */
  protected constructor(layout: KvLayout, spans: readonly Span[]) {
    this.layout = layout;
    this.#spans = spans;
  }

  /**
   * Descriptors covering `blockIds`' bytes (in the order given; ids may
   * repeat) for the layers, K/V and heads `options` select. Runs adjacent
   * in memory, e.g. consecutive ids in a layer-outermost order, become one
   * descriptor unless `merge` is false.
   */
  blockDescs(blockIds: Iterable<number>, options?: KvBlockOptions): DescList {
    const [runs, sel] = this.#runs(blockIds, options);
    return (sel.merge ? merged(runs) : runs).toDescList(this.#spans);
  }

  /** How many descriptors blockDescs makes for these arguments, merged and not. */
  blockDescCount(blockIds: Iterable<number>, options?: KvBlockOptions): KvDescCount {
    const [runs] = this.#runs(blockIds, options);
    return { merged: merged(runs).count, unmerged: runs.count };
  }

  #runs(blockIds: Iterable<number>, options: KvBlockOptions | undefined): [Runs, Selection] {
    const sel = selection(this.layout, options);
    return [partRuns(this.layout, this.#spans.length, checkBlockIds(blockIds, this.layout), sel), sel];
  }

  /**
   * Descriptors for a transfer between this pool's `localIds` and `remote`'s
   * `remoteIds` (block i to block i): the same layers and K/V on both sides,
   * and the heads both ranks hold unless `heads` says (heterogeneous TP: a
   * decode rank and the prefill rank it reads from), cut so descriptor i of `local` and of
   * `remote` are the same elements, and merged only where both sides are
   * adjacent. The pools must agree on layers, blockTokens, kvHeads,
   * headDim, dtype and heads; their orders may differ (that merges less).
   */
  pairDescs(localIds: Iterable<number>, remote: KvPool | RemoteKvPool, remoteIds: Iterable<number>, options?: KvBlockOptions): KvPairedDescs {
    if (!(remote instanceof KvBlockSpace)) throw invalidArg('pairDescs needs a KvPool or a RemoteKvPool');
    const mine = this.layout;
    const theirs = remote.layout;
    for (const field of PAIRED_FIELDS) {
      if (mine[field] !== theirs[field]) {
        throw invalidArg(`the pools differ in ${field}: ${String(mine[field])} here, ${String(theirs[field])} there`);
      }
    }
    const local = checkBlockIds(localIds, mine, 'local block');
    const far = checkBlockIds(remoteIds, theirs, 'remote block');
    if (local.length !== far.length) throw invalidArg(`${local.length} local block ids for ${far.length} remote ones`);
    if (options !== undefined && (options === null || typeof options !== 'object')) throw invalidArg('options must be an object');
    let heads = options?.heads;
    if (heads === undefined) {
      const [start, end] = [Math.max(mine.headStart, theirs.headStart), Math.min(mine.headEnd, theirs.headEnd)];
      if (start >= end) {
        throw invalidArg(`the ranks share no heads: [${mine.headStart}, ${mine.headEnd}) here, [${theirs.headStart}, ${theirs.headEnd}) there`);
      }
      heads = [start, end];
    }
    const sel = selection(mine, { ...options, heads });
    checkHeadRange(theirs, sel.headStart, sel.headEnd);
    const ours = partRuns(mine, this.#spans.length, local, sel);
    const other = partRuns(theirs, remote.#spans.length, far, sel, mine.order);
    const [a, b, pieces] = paired(ours, other, sel.merge);
    return { local: a.toDescList(this.#spans), remote: b.toDescList(remote.#spans), unmerged: pieces };
  }
}

function toSpan(r: { address: bigint; length: number; device: number }): Span {
  return { address: r.address, length: r.length, device: r.device };
}

/**
 * A KV cache pool in this agent's registered memory: a KvLayout over one
 * region, or one region per layer (as vLLM registers its per-layer
 * tensors), host memory or VRAM. It names blocks as descriptor lists,
 * describes itself to peers (descriptor()), and has a block allocator for
 * runtimes that have none.
 */
export class KvPool extends KvBlockSpace implements AsyncDisposable {
  readonly agent: Agent;
  /** One region for the whole layout, or one per layer. */
  readonly regions: readonly Region[];
  /** Set when KvPool.allocate made the memory, which close() then gives back. */
  readonly #owned: boolean;
  /** The allocator, made on first use: a stack of free ids (popped from the end) and who is taken. */
  #free: Int32Array | undefined;
  #freeTop = 0;
  #taken: Uint8Array | undefined;

  private constructor(agent: Agent, regions: readonly Region[], layout: KvLayout, owned: boolean) {
    super(layout, regions.map(toSpan));
    this.agent = agent;
    this.regions = regions;
    this.#owned = owned;
  }

  /** A pool in host memory the engine allocates (any size) for `layout`; close() frees it. */
  static async allocate(agent: Agent, layout: KvLayout, options?: OperationOptions): Promise<KvPool> {
    if (!(agent instanceof Agent)) throw invalidArg('KvPool.allocate needs an Agent');
    if (!(layout instanceof KvLayout)) throw invalidArg('KvPool.allocate needs a KvLayout');
    const region = await agent.allocate(layout.bytes, options);
    return new KvPool(agent, [region], layout, true);
  }

  /**
   * A pool over memory `agent` registered (DRAM or VRAM): one region of
   * exactly `layout.bytes`, or one region per layer of exactly
   * `layout.layerBytes` each (the order must then have the layer
   * outermost). The regions stay the caller's.
   */
  static over(agent: Agent, regions: Region | readonly Region[], layout: KvLayout): KvPool {
    if (!(agent instanceof Agent)) throw invalidArg('KvPool.over needs an Agent');
    if (!(layout instanceof KvLayout)) throw invalidArg('KvPool.over needs a KvLayout');
    const list: readonly Region[] = Array.isArray(regions) ? [...regions] : [regions as Region];
    for (const region of list) {
      agent.regionId(region);
      if (region.kind !== 'dram' && region.kind !== 'vram') throw invalidArg(`a pool lives in DRAM or VRAM, not ${region.kind}`);
    }
    if (new Set(list).size !== list.length) throw invalidArg('a region appears twice');
    checkRegionLengths(layout, list.map((r) => r.length));
    return new KvPool(agent, Object.freeze(list), layout, false);
  }

  /** Reads a peer's descriptor(); untrusted bytes: anything malformed is ERR_BAD_METADATA. */
  static decodeDescriptor(bytes: Uint8Array): KvPoolDescriptor {
    return decodeDescriptor(bytes);
  }

  /** A peer's pool, from its descriptor(), to name its blocks in transfers. */
  static remote(descriptor: Uint8Array | KvPoolDescriptor): RemoteKvPool {
    return new RemoteKvPool(descriptor instanceof Uint8Array ? decodeDescriptor(descriptor) : descriptor);
  }

  /**
   * This pool for a peer, sent once: the agent's name, the layout (tp
   * included) and where each region is. KvPool.remote reads it.
   */
  descriptor(): Uint8Array {
    return encodeDescriptor({
      agent: this.agent.name,
      layout: this.layout,
      regions: this.regions.map((r) => ({ ...toSpan(r), kind: r.kind as KvPoolRegion['kind'] })),
    });
  }

  /**
   * A Buffer over `[offset, offset + length)` of the layout's bytes (default
   * to the end of the region `offset` is in); no copy. Host memory only, and
   * inside one region.
   */
  view(offset = 0, length?: number): Buffer {
    const start = toInteger(offset, 'offset');
    if (start >= this.layout.bytes) {
      throw new KvxferError(ErrorCode.OUT_OF_RANGE, `offset ${start} is past the pool's ${this.layout.bytes} bytes`);
    }
    const index = this.regions.length === 1 ? 0 : Math.floor(start / this.layout.layerBytes);
    const region = this.regions[index];
    if (region.kind !== 'dram') throw invalidArg(`view() needs host memory; this pool is in ${region.kind}`);
    const at = start - (this.regions.length === 1 ? 0 : index * this.layout.layerBytes);
    const size = length === undefined ? region.length - at : toInteger(length, 'length');
    if (size > region.length - at) {
      throw new KvxferError(
        ErrorCode.OUT_OF_RANGE,
        `a view of ${size} bytes at ${start} runs past the end of its region (${this.regions.length === 1 ? 'the pool' : `layer ${index}`})`,
      );
    }
    return region.view(at, size);
  }

  #allocator(): Int32Array {
    if (this.#free === undefined) {
      const blocks = this.layout.blocks;
      if (blocks > 2 ** 28) throw invalidArg(`allocBlocks handles pools of up to 2^28 blocks, not ${blocks}`);
      this.#free = new Int32Array(blocks);
      // Popped from the end: ids come out 0, 1, 2, ... so fresh blocks are adjacent and merge.
      for (let i = 0; i < blocks; i++) this.#free[i] = blocks - 1 - i;
      this.#freeTop = blocks;
      this.#taken = new Uint8Array(blocks);
    }
    return this.#free;
  }

  /** Blocks not handed out by allocBlocks. */
  get freeBlockCount(): number {
    return this.#free === undefined ? this.layout.blocks : this.#freeTop;
  }

  /**
   * `n` free block ids, ascending, for a runtime without its own block
   * allocator; ERR_BUSY (and nothing taken) when fewer are free.
   */
  allocBlocks(n: number): number[] {
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw invalidArg(`allocBlocks takes a non-negative integer, got ${String(n)}`);
    const free = this.#allocator();
    if (n > this.#freeTop) {
      throw new KvxferError(ErrorCode.BUSY, `the pool has ${this.#freeTop} free blocks of ${this.layout.blocks}; ${n} were asked for`);
    }
    const ids = Array.from(free.subarray(this.#freeTop - n, this.#freeTop)).reverse();
    this.#freeTop -= n;
    for (const id of ids) this.#taken![id] = 1;
    return ids.sort((x, y) => x - y);
  }

  /** Gives blocks back to allocBlocks. A block it did not hand out, or one given twice, is ERR_INVALID_ARG and frees nothing. */
  freeBlocks(blockIds: Iterable<number>): void {
    const ids = checkBlockIds(blockIds, this.layout);
    const free = this.#allocator();
    const taken = this.#taken!;
    const seen = new Set<number>();
    for (const id of ids) {
      if (taken[id] !== 1) throw invalidArg(`block ${id} is not allocated (freed already, or never from allocBlocks)`);
      if (seen.has(id)) throw invalidArg(`block ${id} appears twice`);
      seen.add(id);
    }
    // Pushed highest first, so the next allocBlocks pops them ascending.
    for (const id of [...seen].sort((x, y) => y - x)) {
      taken[id] = 0;
      free[this.#freeTop++] = id;
    }
  }

  /** Frees memory KvPool.allocate made; a pool over the caller's regions leaves them registered. */
  async close(options?: OperationOptions): Promise<void> {
    if (this.#owned && this.regions[0].registered) await this.regions[0].deregister(options);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * A peer's pool as its descriptor() describes it: the same blockDescs, for
 * the peer's memory, so a request can name the peer's block ids instead of
 * carrying descriptors.
 */
export class RemoteKvPool extends KvBlockSpace {
  /** The agent that owns the pool: the peer name for transfers. */
  readonly agent: string;
  readonly regions: readonly KvPoolRegion[];

  /** From KvPool.decodeDescriptor's result; KvPool.remote takes the bytes too. */
  constructor(descriptor: KvPoolDescriptor) {
    if (descriptor === null || typeof descriptor !== 'object' || !(descriptor.layout instanceof KvLayout) || !Array.isArray(descriptor.regions)) {
      throw invalidArg('RemoteKvPool needs a descriptor from KvPool.decodeDescriptor');
    }
    if (typeof descriptor.agent !== 'string') throw invalidArg('a pool descriptor names its agent');
    const regions = Object.freeze(descriptor.regions.map((r) => ({ ...r })));
    DescList.from(regions); // addresses, lengths and devices as a transfer will need them
    if (!regions.every((r) => r.kind === 'dram' || r.kind === 'vram')) throw invalidArg("a pool's regions are 'dram' or 'vram'");
    checkRegionLengths(descriptor.layout, regions.map((r) => r.length));
    super(descriptor.layout, regions.map(toSpan));
    this.agent = descriptor.agent;
    this.regions = regions;
  }
}
