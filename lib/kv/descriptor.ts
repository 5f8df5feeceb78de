// The wire form of a pool descriptor: what a peer needs to name blocks in a
// pool it does not own. A header, then JSON, because it travels once per
// peer and is easiest to check field by field; addresses go as decimal
// strings (JSON numbers stop at 2^53).
import { ErrorCode, KvxferError, invalidArg } from '../errors';
import { KvLayout, type KvLayoutOptions } from './layout';

/** One region of a pool as a peer sees it. */
export interface KvPoolRegion {
  address: bigint;
  length: number;
  kind: 'dram' | 'vram';
  /** The CUDA device of VRAM; 0 for host memory. */
  device: number;
}

/** A pool as KvPool.decodeDescriptor reads it from a peer. */
export interface KvPoolDescriptor {
  /** The agent that owns the pool: the peer name transfers to it use. */
  agent: string;
  layout: KvLayout;
  /** One region for the whole layout, or one per layer. */
  regions: readonly KvPoolRegion[];
}

const MAGIC = 0x4450564b; // 'KVPD' little endian
const VERSION = 1;
const HEADER = 12;
/** Far above any real pool (one region per layer, a few hundred layers). */
const MAX_BYTES = 1 << 20;
const MAX_NAME_BYTES = 255;
const TWO_64 = 1n << 64n;

/**
 * Why `lengths` cannot hold `layout`: one region of exactly `layout.bytes`,
 * or one per layer of exactly `layout.layerBytes` with the layer outermost.
 * Throws ERR_INVALID_ARG.
 * @internal
 */
export function checkRegionLengths(layout: KvLayout, lengths: readonly number[]): void {
  if (lengths.length === 1) {
    if (lengths[0] !== layout.bytes) {
      throw invalidArg(`the region is ${lengths[0]} bytes; the layout needs exactly ${layout.bytes}`);
    }
    return;
  }
  if (lengths.length !== layout.layers) {
    throw invalidArg(`a pool takes one region or one per layer (${layout.layers}), not ${lengths.length}`);
  }
  if (layout.order === 'block-layer-kv') {
    throw invalidArg("per-layer regions need the layer outermost ('layer-kv-block' or 'layer-block-kv'); 'block-layer-kv' spreads each block over every layer");
  }
  lengths.forEach((length, layer) => {
    if (length !== layout.layerBytes) {
      throw invalidArg(`the region of layer ${layer} is ${length} bytes; a layer needs exactly ${layout.layerBytes}`);
    }
  });
}

/** The wire form of a pool. @internal */
export function encodeDescriptor(descriptor: KvPoolDescriptor): Uint8Array {
  const json = JSON.stringify({
    agent: descriptor.agent,
    layout: descriptor.layout.options,
    regions: descriptor.regions.map((r) => ({ address: r.address.toString(), length: r.length, kind: r.kind, device: r.device })),
  });
  const body = Buffer.from(json, 'utf8');
  const bytes = new Uint8Array(HEADER + body.length);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, MAGIC, true);
  view.setUint16(4, VERSION, true);
  view.setUint32(8, body.length, true);
  bytes.set(body, HEADER);
  return bytes;
}

function bad(message: string, cause?: unknown): KvxferError {
  return new KvxferError(ErrorCode.BAD_METADATA, `pool descriptor: ${message}`, cause === undefined ? {} : { cause });
}

/** A plain object with exactly these keys (absent optional ones allowed). */
function record(value: unknown, what: string, keys: readonly string[], optional: readonly string[] = []): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw bad(`${what} is not an object`);
  for (const key of Object.keys(value)) if (!keys.includes(key) && !optional.includes(key)) throw bad(`${what} has an unknown field '${key}'`);
  for (const key of keys) if (!(key in value)) throw bad(`${what} lacks '${key}'`);
  return value as Record<string, unknown>;
}

function region(value: unknown, index: number): KvPoolRegion {
  const what = `region ${index}`;
  const r = record(value, what, ['address', 'length', 'kind', 'device']);
  if (typeof r.address !== 'string' || !/^(0|[1-9][0-9]{0,19})$/.test(r.address)) throw bad(`${what}: address is not a decimal string`);
  const address = BigInt(r.address);
  if (typeof r.length !== 'number' || !Number.isSafeInteger(r.length) || r.length <= 0) throw bad(`${what}: length is not a positive integer`);
  if (address + BigInt(r.length) > TWO_64) throw bad(`${what} runs past the 64-bit address space`);
  if (r.kind !== 'dram' && r.kind !== 'vram') throw bad(`${what}: kind must be 'dram' or 'vram'`);
  if (typeof r.device !== 'number' || !Number.isSafeInteger(r.device) || r.device < 0 || r.device >= 2 ** 32) {
    throw bad(`${what}: device is not a 32-bit unsigned integer`);
  }
  return { address, length: r.length, kind: r.kind, device: r.device };
}

/** Reads a descriptor from a peer; every field checked, anything wrong ERR_BAD_METADATA. @internal */
export function decodeDescriptor(input: unknown): KvPoolDescriptor {
  if (!(input instanceof Uint8Array)) throw invalidArg('a pool descriptor is a Uint8Array');
  if (input.byteLength < HEADER) throw bad(`${input.byteLength} bytes is shorter than the header`);
  if (input.byteLength > MAX_BYTES) throw bad(`${input.byteLength} bytes is more than ${MAX_BYTES}`);
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  if (view.getUint32(0, true) !== MAGIC) throw bad('bad magic number');
  const version = view.getUint16(4, true);
  if (version !== VERSION) throw bad(`version ${version} is not supported (this kvxfer reads ${VERSION})`);
  if (view.getUint16(6, true) !== 0) throw bad('reserved bits are set');
  const length = view.getUint32(8, true);
  if (length !== input.byteLength - HEADER) throw bad(`the header says ${length} bytes follow, ${input.byteLength - HEADER} do`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(input.subarray(HEADER)));
  } catch (error) {
    throw bad('the body is not UTF-8 JSON', error);
  }
  const top = record(parsed, 'the descriptor', ['agent', 'layout', 'regions']);
  if (typeof top.agent !== 'string' || top.agent.length === 0 || Buffer.byteLength(top.agent) > MAX_NAME_BYTES) {
    throw bad(`agent must be a name of 1 to ${MAX_NAME_BYTES} bytes`);
  }
  const options = record(top.layout, 'layout', ['layers', 'blocks', 'blockTokens', 'kvHeads', 'headDim', 'dtype', 'order', 'heads'], ['tp']);
  if (options.tp !== undefined) record(options.tp, 'layout.tp', ['rank', 'size']);
  let layout: KvLayout;
  try {
    layout = new KvLayout(options as unknown as KvLayoutOptions);
  } catch (error) {
    throw bad((error as Error).message, error);
  }
  if (!Array.isArray(top.regions)) throw bad('regions is not an array');
  const regions = top.regions.map(region);
  try {
    checkRegionLengths(layout, regions.map((r) => r.length));
  } catch (error) {
    throw bad((error as Error).message, error);
  }
  return { agent: top.agent, layout, regions: Object.freeze(regions) };
}
