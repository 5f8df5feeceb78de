// Block ids -> contiguous runs of a pool's memory, merged: the part of
// KvPool that needs no agent, shared by local and remote pools.
import { DescList } from '../descs';
import { ErrorCode, KvxferError, invalidArg } from '../errors';
import { checkIndex, type KvLayout, type KvOrder } from './layout';

/** Where one of a pool's regions is. @internal */
export interface Span {
  address: bigint;
  length: number;
  device: number;
}

/** Which bytes of the given blocks blockDescs covers. */
export interface KvBlockOptions {
  /** Layer indices, in this order (default every layer, 0 up). */
  layers?: number | readonly number[];
  /** 0 for K only, 1 for V only (default both). */
  kv?: 0 | 1;
  /**
   * Model-global heads `[start, end)` inside this rank's (default all of
   * them). With `HND` each part gives one run; with `NHD` the heads of a
   * token are contiguous but tokens are not: one descriptor per token.
   */
  heads?: readonly [number, number];
  /** Merge runs adjacent in memory into one descriptor (default true). */
  merge?: boolean;
}

/** How many descriptors a selection makes. */
export interface KvDescCount {
  /** After merging adjacent runs. */
  merged: number;
  /** One per part (per token of a part for an NHD head subset). */
  unmerged: number;
}

/** A selection resolved and checked. @internal */
export interface Selection {
  layers: readonly number[];
  kvs: readonly number[];
  /** Model-global heads [start, end). */
  headStart: number;
  headEnd: number;
  merge: boolean;
}

/**
 * Runs of a pool's memory as parallel arrays (region index, offset in that
 * region, length): cheap for the 100,000s of parts a big request names.
 * @internal
 */
export class Runs {
  readonly region: number[] = [];
  readonly offset: number[] = [];
  readonly length: number[] = [];

  get count(): number {
    return this.region.length;
  }

  push(region: number, offset: number, length: number): void {
    this.region.push(region);
    this.offset.push(offset);
    this.length.push(length);
  }

  /** Whether a run at (region, offset) would continue the last one. */
  continues(region: number, offset: number): boolean {
    const last = this.region.length - 1;
    return last >= 0 && this.region[last] === region && this.offset[last] + this.length[last] === offset;
  }

  extendLast(length: number): void {
    this.length[this.length.length - 1] += length;
  }

  /** Appends a run, merged into the last one where it continues it. */
  add(region: number, offset: number, length: number): void {
    if (this.continues(region, offset)) this.extendLast(length);
    else this.push(region, offset, length);
  }

  toDescList(spans: readonly Span[]): DescList {
    return DescList.fromRuns(spans, this.region, this.offset, this.length);
  }
}

/** Block ids as an array of checked indices. @internal */
export function checkBlockIds(ids: Iterable<number>, layout: KvLayout, what = 'block'): number[] {
  if (ids === null || typeof ids !== 'object' || typeof (ids as Iterable<number>)[Symbol.iterator] !== 'function') {
    throw invalidArg('block ids must be an array (or iterable) of integers');
  }
  const array = Array.isArray(ids) ? (ids as number[]) : Array.from(ids);
  for (let i = 0; i < array.length; i++) checkIndex(array[i], layout.blocks, what);
  return array;
}

/** The selection blockDescs makes from its options on `layout`. @internal */
export function selection(layout: KvLayout, options: KvBlockOptions | undefined): Selection {
  if (options !== undefined && (options === null || typeof options !== 'object')) throw invalidArg('options must be an object');
  const { layers, kv, heads, merge = true } = options ?? {};
  if (typeof merge !== 'boolean') throw invalidArg('merge must be a boolean');
  let layerList: number[];
  if (layers === undefined) layerList = Array.from({ length: layout.layers }, (_, i) => i);
  else if (typeof layers === 'number') layerList = [checkIndex(layers, layout.layers, 'layer')];
  else if (Array.isArray(layers)) layerList = layers.map((layer: unknown) => checkIndex(layer, layout.layers, 'layer'));
  else throw invalidArg('layers must be a layer index or an array of them');
  if (kv !== undefined && kv !== 0 && kv !== 1) throw invalidArg(`kv must be 0 (K) or 1 (V), got ${String(kv)}`);
  let headStart = layout.headStart;
  let headEnd = layout.headEnd;
  if (heads !== undefined) {
    if (!Array.isArray(heads) || heads.length !== 2) throw invalidArg('heads must be a model-global range [start, end)');
    [headStart, headEnd] = checkHeadRange(layout, heads[0], heads[1]);
  }
  return { layers: layerList, kvs: kv === undefined ? [0, 1] : [kv], headStart, headEnd, merge };
}

/** A non-empty model-global head range inside `layout`'s rank. @internal */
export function checkHeadRange(layout: KvLayout, start: unknown, end: unknown): [number, number] {
  for (const value of [start, end]) {
    if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw invalidArg(`heads must be integers, got ${String(value)}`);
  }
  const [a, b] = [start as number, end as number];
  if (a >= b) throw invalidArg(`heads [${a}, ${b}) is empty`);
  if (a < layout.headStart || b > layout.headEnd) {
    throw new KvxferError(
      ErrorCode.OUT_OF_RANGE,
      `heads [${a}, ${b}) are not all on this rank, which holds [${layout.headStart}, ${layout.headEnd})`,
    );
  }
  return [a, b];
}

/**
 * Visits the parts of (ids[j], layer, kv) in `order`'s memory order, so
 * that consecutive blocks of a run land next to each other and merge.
 */
function forEachPart(order: KvOrder, ids: readonly number[], sel: Selection, visit: (block: number, layer: number, kv: number) => void): void {
  if (order === 'block-layer-kv') {
    for (const block of ids) for (const layer of sel.layers) for (const kv of sel.kvs) visit(block, layer, kv);
  } else if (order === 'layer-block-kv') {
    for (const layer of sel.layers) for (const block of ids) for (const kv of sel.kvs) visit(block, layer, kv);
  } else {
    for (const layer of sel.layers) for (const kv of sel.kvs) for (const block of ids) visit(block, layer, kv);
  }
}

/**
 * The runs of `ids` under `sel` in a pool of `layout` over `regions` (one
 * region, or one per layer), unmerged, parts visited in `order` (the
 * pool's own order, or the other pool's when two are paired).
 * @internal
 */
export function partRuns(layout: KvLayout, regions: number, ids: readonly number[], sel: Selection, order: KvOrder = layout.order): Runs {
  const runs = new Runs();
  const perLayer = regions > 1;
  const a = sel.headStart - layout.headStart;
  const width = sel.headEnd - sel.headStart;
  const full = width === layout.headsPerRank;
  const T = layout.blockTokens;
  const H = layout.headsPerRank;
  const hb = layout.headBytes;
  forEachPart(order, ids, sel, (block, layer, kv) => {
    const region = perLayer ? layer : 0;
    const base = layout.partAt(layer, kv, block) - (perLayer ? layer * layout.layerBytes : 0);
    if (full) {
      runs.push(region, base, layout.partBytes);
    } else if (layout.heads === 'HND') {
      runs.push(region, base + a * T * hb, width * T * hb);
    } else {
      for (let t = 0; t < T; t++) runs.push(region, base + (t * H + a) * hb, width * hb);
    }
  });
  return runs;
}

/** Runs merged where one continues the last. @internal */
export function merged(runs: Runs): Runs {
  const out = new Runs();
  for (let i = 0; i < runs.count; i++) out.add(runs.region[i], runs.offset[i], runs.length[i]);
  return out;
}

/**
 * Two sides' runs of the same elements in the same order, cut into pieces
 * contiguous on both sides; with `merge`, pieces are joined where both
 * sides continue (so the lists pair up descriptor by descriptor, as a
 * transfer needs). Returns [a, b, pieces before merging].
 * @internal
 */
export function paired(a: Runs, b: Runs, merge: boolean): [Runs, Runs, number] {
  const outA = new Runs();
  const outB = new Runs();
  // Plain locals and arrays, no method calls or destructuring: this runs once
  // per piece, 10,000s per request.
  const aRegion = a.region;
  const aOffset = a.offset;
  const aLength = a.length;
  const bRegion = b.region;
  const bOffset = b.offset;
  const bLength = b.length;
  const oaRegion = outA.region;
  const oaOffset = outA.offset;
  const oaLength = outA.length;
  const obRegion = outB.region;
  const obOffset = outB.offset;
  const obLength = outB.length;
  const aCount = aRegion.length;
  const bCount = bRegion.length;
  let pieces = 0;
  let i = 0;
  let j = 0;
  let usedA = 0;
  let usedB = 0;
  // Where the last piece ends on each side (region, byte after it); -1: none yet.
  let endRegionA = -1;
  let endA = 0;
  let endRegionB = -1;
  let endB = 0;
  while (i < aCount && j < bCount) {
    const leftA = aLength[i] - usedA;
    const leftB = bLength[j] - usedB;
    const length = leftA < leftB ? leftA : leftB;
    const ra = aRegion[i];
    const oa = aOffset[i] + usedA;
    const rb = bRegion[j];
    const ob = bOffset[j] + usedB;
    pieces++;
    if (merge && ra === endRegionA && oa === endA && rb === endRegionB && ob === endB) {
      oaLength[oaLength.length - 1] += length;
      obLength[obLength.length - 1] += length;
    } else {
      oaRegion.push(ra);
      oaOffset.push(oa);
      oaLength.push(length);
      obRegion.push(rb);
      obOffset.push(ob);
      obLength.push(length);
    }
    endRegionA = ra;
    endA = oa + length;
    endRegionB = rb;
    endB = ob + length;
    usedA += length;
    usedB += length;
    if (usedA === aLength[i]) {
      i++;
      usedA = 0;
    }
    if (usedB === bLength[j]) {
      j++;
      usedB = 0;
    }
  }
  return [outA, outB, pieces];
}
