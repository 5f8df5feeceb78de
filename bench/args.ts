/**
 * `kvxfer bench` command line: parsing and validation. Pure functions, no
 * I/O, so the unit tests drive them directly. A bad command line is a
 * UsageError, which the CLI prints with a pointer to --help and exits 2.
 */
import { KV_MODELS, DTYPE_BYTES, type KvShape } from './kv';
import type { BenchMem } from './memory';

export type Mode = 'local' | 'target' | 'initiator';
export type Reuse = 'none' | 'requests' | 'all';
export type BaselineName = 'ucx_perftest' | 'net' | 'memcpy' | 'cuda_memcpy';
export const BASELINES: readonly BaselineName[] = ['ucx_perftest', 'net', 'memcpy', 'cuda_memcpy'];

export interface HostPort {
  host: string;
  port: number;
}

export interface KvOptions extends KvShape {
  /** The preset name, or 'custom'. */
  model: string;
  /** Prompt lengths to move, one point each. */
  tokens: number[];
}

export interface BenchOptions {
  mode: Mode;
  listen: HostPort;
  connect?: HostPort;
  /** target: serve one session, then exit. */
  once: boolean;
  op: 'write' | 'read';
  blockSizes: number[];
  batchSizes: number[];
  /** Timed iterations per point; undefined: bounded by duration. */
  iters?: number;
  /** Untimed iterations first; undefined: at least 8 and about 0.2 s. */
  warmup?: number;
  /** Seconds per point; undefined when --iters alone bounds the loop. */
  duration?: number;
  inFlight: number;
  /** Requests posted together by one Agent.postAll; 1: one post each. */
  burst: number;
  prepared: boolean;
  /**
   * Which blocks requests share. 'requests' (default): the in-flight requests
   * of a point move the same blocks, each descriptor of a request its own;
   * 'none': every descriptor of every request has its own block; 'all': one
   * block per side for everything, ucx_perftest's footprint.
   */
  reuse: Reuse;
  engine: 'auto' | 'ucx' | 'nixl';
  mem: BenchMem;
  device: number;
  /** --mem vram: the target's GPU (default --device). */
  peerDevice: number;
  agents: number;
  notify: boolean;
  check: boolean;
  /** UCX_TLS for both sides and the ucx_perftest baseline. */
  transports?: string;
  baselines: BaselineName[];
  kv?: KvOptions;
  json?: string;
  csv?: string;
  chart?: string;
  /** Progress bar: 'auto' shows it on a TTY only. */
  progress: 'auto' | 'never';
  /** Bytes each side may allocate per agent; a plan that needs more is refused. */
  maxMemory: number;
  /** Per post, milliseconds. */
  timeoutMs: number;
  /** The initiator agents' busyPollUs; undefined: the library's default. */
  busyPollUs?: number;
  /** Rounds per block size (kvxfer and baselines interleaved); the median round is reported. */
  repeat: number;
  /** Busy processes beside the run (--load N; bench/load.ts), 0: none. */
  load: number;
  /** Run nothing: print and write the outputs of a saved --json report. */
  from?: string;
  /** KV handoff between two processes instead of the transfer points (bench/handoff.ts). */
  handoff?: 'pull' | 'push' | 'stream';
  /** --handoff stream: simulated compute per layer, milliseconds. */
  computeMs: number;
  /** --handoff: the pools' memory, allocate() or registered Buffers. */
  pool: 'allocate' | 'buffer';
  /** Which options the user gave (a target takes unset ones from the initiator). */
  given: Set<string>;
}

export class UsageError extends Error {
  override name = 'UsageError';
}

export const DEFAULT_BLOCK_SIZES = [4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20];
export const DEFAULT_PORT = 7345;
/** A small pipeline, as ucx_perftest's put_bw keeps puts outstanding; --in-flight 1 for per-request latency. */
export const DEFAULT_IN_FLIGHT = 4;
const DEFAULT_DURATION = 1;

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 2 ** 10,
  kb: 2 ** 10,
  kib: 2 ** 10,
  m: 2 ** 20,
  mb: 2 ** 20,
  mib: 2 ** 20,
  g: 2 ** 30,
  gb: 2 ** 30,
  gib: 2 ** 30,
};

/** '4K', '64KiB', '1M', '1.5M', '4096' -> bytes. K, M, G are powers of 1024. */
export function parseSize(text: string, what = 'size'): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = match ? UNITS[match[2].toLowerCase()] : undefined;
  if (!match || unit === undefined) {
    throw new UsageError(`${what}: '${text}' is not a size (examples: 4096, 4K, 64KiB, 1M, 2G)`);
  }
  const value = Number(match[1]) * unit;
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new UsageError(`${what}: '${text}' must be a whole number of bytes, at least 1`);
  }
  return value;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

/**
 * A list of sizes: '4K,64K,1M', a range of powers of two '4K..64M', or both
 * ('4K..16K,1M'). Sorted, duplicates dropped.
 */
export function parseSizeList(text: string, what: string, parse: (text: string, what: string) => number = parseSize): number[] {
  const out = new Set<number>();
  const parts = text.split(',').map((p) => p.trim());
  if (parts.length === 0 || parts.some((p) => p === '')) {
    throw new UsageError(`${what}: '${text}' is not a list (examples: 4K,64K,1M or 4K..64M)`);
  }
  for (const part of parts) {
    const range = part.split('..');
    if (range.length === 1) {
      out.add(parse(part, what));
      continue;
    }
    if (range.length !== 2) throw new UsageError(`${what}: '${part}' is not a range such as 4K..64M`);
    const lo = parse(range[0], what);
    const hi = parse(range[1], what);
    if (!isPowerOfTwo(lo) || !isPowerOfTwo(hi)) {
      throw new UsageError(`${what}: a range runs over powers of two; '${part}' does not start and end on one`);
    }
    if (lo > hi) throw new UsageError(`${what}: range '${part}' runs backwards`);
    for (let v = lo; v <= hi; v *= 2) out.add(v);
  }
  return [...out].sort((a, b) => a - b);
}

/** A positive integer; 'K'/'M' suffixes allowed for counts too (1K = 1024). */
export function parseCount(text: string, what: string, min = 1): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = match ? UNITS[match[2].toLowerCase()] : undefined;
  const value = match && unit !== undefined ? Number(match[1]) * unit : NaN;
  if (!Number.isSafeInteger(value)) throw new UsageError(`${what}: '${text}' is not a whole number`);
  if (value < min) throw new UsageError(`${what}: must be at least ${min}, got '${text}'`);
  return value;
}

function parseZeroOrCount(text: string, what: string): number {
  return text.trim() === '0' ? 0 : parseCount(text, what);
}

function parseSeconds(text: string, what: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$/.exec(text);
  if (!match) throw new UsageError(`${what}: '${text}' is not a duration (examples: 2, 0.5s, 500ms)`);
  const factor = match[2] === 'ms' ? 1e-3 : match[2] === 'm' ? 60 : 1;
  const seconds = Number(match[1]) * factor;
  if (!(seconds > 0) || seconds > 3600) throw new UsageError(`${what}: must be between 0 and 3600 seconds`);
  return seconds;
}

export function parseHostPort(text: string, what: string, defaultHost?: string): HostPort {
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(text) ?? (defaultHost !== undefined ? /^()()(\d+)$/.exec(text) : null);
  const port = match ? Number(match[3]) : NaN;
  const host = match ? match[1] ?? match[2] : '';
  if (!match || !(port >= 0 && port <= 65535)) {
    throw new UsageError(`${what}: '${text}' is not HOST:PORT (example: 10.0.0.2:${DEFAULT_PORT})`);
  }
  if (host === '' && defaultHost === undefined) throw new UsageError(`${what}: '${text}' names no host`);
  return { host: host === '' ? defaultHost! : host, port };
}

function oneOf<T extends string>(value: string, allowed: readonly T[], what: string): T {
  if (!(allowed as readonly string[]).includes(value)) {
    throw new UsageError(`${what}: '${value}' is not one of ${allowed.join(', ')}`);
  }
  return value as T;
}

function parseBaselines(text: string, into: Set<BaselineName>, vram: boolean): void {
  for (const raw of text.split(',')) {
    const name = raw.trim().replace(/-/g, '_');
    if (name === 'none') {
      into.clear();
    } else if (name === 'all') {
      for (const b of BASELINES) if (vram || b !== 'cuda_memcpy') into.add(b);
    } else if (name === 'perftest') {
      into.add('ucx_perftest');
    } else {
      into.add(oneOf(name, [...BASELINES], '--baseline'));
    }
  }
}

/** Options that take a value, and flags that do not. */
const VALUE_OPTIONS = new Set([
  'listen', 'connect', 'op', 'block-sizes', 'batch-sizes', 'iters', 'warmup', 'duration', 'in-flight', 'burst',
  'reuse', 'engine', 'mem', 'device', 'peer-device', 'agents', 'transports', 'baseline', 'kv', 'tokens', 'layers', 'kv-heads',
  'head-dim', 'dtype', 'block-tokens', 'json', 'csv', 'chart', 'max-memory', 'timeout', 'repeat', 'load', 'from',
  'busy-poll', 'handoff', 'compute-ms', 'pool',
]);
const FLAG_OPTIONS = new Set(['once', 'prepared', 'no-prepared', 'recreate', 'notify', 'check', 'no-progress', 'help']);
const ALIASES: Record<string, string> = {
  'block-size': 'block-sizes', 'batch-size': 'batch-sizes', s: 'block-sizes', b: 'batch-sizes', n: 'iters',
  w: 'warmup', d: 'duration', baselines: 'baseline', 'inflight': 'in-flight', h: 'help', tls: 'transports',
};

export interface ParsedCommand {
  help: boolean;
  options: BenchOptions;
}

/** Parses `kvxfer bench [local|target|initiator] [options]` (argv without 'bench'). */
export function parseBenchArgs(argv: readonly string[]): ParsedCommand {
  const args = [...argv];
  let mode: Mode = 'local';
  if (args.length > 0 && !args[0].startsWith('-')) {
    mode = oneOf(args.shift()!, ['local', 'target', 'initiator'] as const, 'mode');
  }
  const values = new Map<string, string[]>();
  const given = new Set<string>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const match = /^--?([A-Za-z][\w-]*)(?:=(.*))?$/s.exec(arg);
    if (!match) throw new UsageError(`unexpected argument '${arg}'`);
    const name = ALIASES[match[1]] ?? match[1];
    if (FLAG_OPTIONS.has(name)) {
      if (match[2] !== undefined) throw new UsageError(`--${name} takes no value`);
      given.add(name);
      continue;
    }
    if (!VALUE_OPTIONS.has(name)) throw new UsageError(`unknown option '${arg}'`);
    let value = match[2];
    if (value === undefined) {
      if (i + 1 >= args.length) throw new UsageError(`--${name} needs a value`);
      value = args[++i];
    }
    given.add(name);
    values.set(name, [...(values.get(name) ?? []), value]);
  }
  const last = (name: string): string | undefined => values.get(name)?.at(-1);

  // GPU memory is compared with CUDA's own device-to-device copy; host memory with UCX's
  // perftest, Node's sockets and one memcpy.
  const vram = last('mem') === 'vram';
  const baselines = new Set<BaselineName>(mode === 'target' ? [] : vram ? ['cuda_memcpy'] : ['ucx_perftest', 'net', 'memcpy']);
  if (values.has('baseline')) {
    baselines.clear();
    for (const v of values.get('baseline')!) parseBaselines(v, baselines, vram);
  }

  if (given.has('prepared') && (given.has('no-prepared') || given.has('recreate'))) {
    throw new UsageError('--prepared and --recreate/--no-prepared exclude each other');
  }

  const options: BenchOptions = {
    mode,
    listen: parseHostPort(last('listen') ?? `0.0.0.0:${DEFAULT_PORT}`, '--listen', '0.0.0.0'),
    once: given.has('once'),
    op: oneOf(last('op') ?? 'write', ['write', 'read'] as const, '--op'),
    blockSizes: last('block-sizes') !== undefined ? parseSizeList(last('block-sizes')!, '--block-sizes') : [...DEFAULT_BLOCK_SIZES],
    batchSizes: last('batch-sizes') !== undefined
      ? parseSizeList(last('batch-sizes')!, '--batch-sizes', (t, w) => parseCount(t, w))
      : [1],
    iters: last('iters') !== undefined ? parseCount(last('iters')!, '--iters') : undefined,
    warmup: last('warmup') !== undefined ? parseZeroOrCount(last('warmup')!, '--warmup') : undefined,
    duration: last('duration') !== undefined ? parseSeconds(last('duration')!, '--duration') : undefined,
    inFlight: last('in-flight') !== undefined ? parseCount(last('in-flight')!, '--in-flight') : DEFAULT_IN_FLIGHT,
    burst: last('burst') !== undefined ? parseCount(last('burst')!, '--burst') : 1,
    prepared: !(given.has('no-prepared') || given.has('recreate')),
    reuse: oneOf(last('reuse') ?? 'requests', ['none', 'requests', 'all'] as const, '--reuse'),
    engine: oneOf(last('engine') ?? 'auto', ['auto', 'ucx', 'nixl'] as const, '--engine'),
    mem: oneOf(last('mem') ?? 'dram', ['dram', 'buffer', 'vram'] as const, '--mem'),
    device: last('device') !== undefined ? parseZeroOrCount(last('device')!, '--device') : 0,
    peerDevice: 0,
    agents: last('agents') !== undefined ? parseCount(last('agents')!, '--agents') : 1,
    notify: given.has('notify'),
    check: given.has('check'),
    transports: last('transports'),
    baselines: BASELINES.filter((b) => baselines.has(b)),
    json: last('json'),
    csv: last('csv'),
    chart: last('chart'),
    progress: given.has('no-progress') ? 'never' : 'auto',
    maxMemory: last('max-memory') !== undefined ? parseSize(last('max-memory')!, '--max-memory') : 4 * 2 ** 30,
    timeoutMs: last('timeout') !== undefined ? parseSeconds(last('timeout')!, '--timeout') * 1000 : 60_000,
    repeat: last('repeat') !== undefined ? parseCount(last('repeat')!, '--repeat') : 1,
    load: last('load') !== undefined ? parseZeroOrCount(last('load')!, '--load') : 0,
    computeMs: last('compute-ms') !== undefined ? Number(last('compute-ms')) : 1,
    pool: oneOf(last('pool') ?? 'allocate', ['allocate', 'buffer'] as const, '--pool'),
    given,
  };
  if (last('handoff') !== undefined) {
    options.handoff = oneOf(last('handoff')!, ['pull', 'push', 'stream'] as const, '--handoff');
    if (!values.has('kv')) throw new UsageError('--handoff needs --kv MODEL (the shape of the pools)');
    if (mode !== 'local') throw new UsageError('--handoff runs on one host: local mode');
  }
  if (given.has('pool') && options.handoff === undefined) throw new UsageError('--pool is for --handoff');
  options.peerDevice = last('peer-device') !== undefined ? parseZeroOrCount(last('peer-device')!, '--peer-device') : options.device;
  if (options.handoff !== undefined && given.has('mem')) throw new UsageError('--handoff takes its pools\' memory from --pool; --mem is for transfers');
  if (options.mem === 'vram') {
    if (options.check) throw new UsageError('--check reads the bench memory from the host; with --mem vram the GPU tests (scripts/gpu-smoke.sh) check the bytes');
  } else {
    if (given.has('peer-device')) throw new UsageError('--peer-device is for --mem vram');
    if (options.baselines.includes('cuda_memcpy')) throw new UsageError('the cuda_memcpy baseline is for --mem vram');
  }
  if (given.has('compute-ms')) {
    if (options.handoff !== 'stream') throw new UsageError('--compute-ms is for --handoff stream');
    if (!(Number.isFinite(options.computeMs) && options.computeMs >= 0 && options.computeMs <= 10_000)) {
      throw new UsageError('--compute-ms: milliseconds from 0 to 10000');
    }
  }
  if (last('from') !== undefined) options.from = last('from');
  if (last('busy-poll') !== undefined) {
    options.busyPollUs = parseZeroOrCount(last('busy-poll')!, '--busy-poll');
    if (options.busyPollUs > 10_000) throw new UsageError('--busy-poll: at most 10000 (microseconds)');
  }
  if (last('connect') !== undefined) options.connect = parseHostPort(last('connect')!, '--connect');
  if (options.iters === undefined && options.duration === undefined) options.duration = DEFAULT_DURATION;
  if (options.inFlight > 4096) throw new UsageError('--in-flight: at most 4096');
  if (options.burst > 1) {
    if (options.inFlight % options.burst !== 0) throw new UsageError('--burst must divide --in-flight (each burst is that many of its requests)');
    if (!options.prepared) throw new UsageError('--burst posts prepared requests; it does not go with --recreate');
  }
  if (options.agents > 64) throw new UsageError('--agents: at most 64');
  if (options.repeat > 100) throw new UsageError('--repeat: at most 100');
  if (options.load > 256) throw new UsageError('--load: at most 256 busy processes');
  if (options.load > 0 && mode === 'target') throw new UsageError('--load runs beside an initiator or a local run; start load on the target host yourself');
  if (options.transports !== undefined && !/^\^?[\w,:-]+$/.test(options.transports)) {
    throw new UsageError(`--transports: '${options.transports}' is not a UCX_TLS list such as sm,self or tcp`);
  }
  for (const [flag, file] of [['--chart', options.chart], ['--json', options.json], ['--csv', options.csv]] as const) {
    if (file !== undefined && file.trim() === '') throw new UsageError(`${flag} needs a file name`);
  }
  if (options.chart !== undefined && !options.chart.toLowerCase().endsWith('.svg')) {
    throw new UsageError(`--chart writes SVG: name a .svg file, got '${options.chart}'`);
  }

  if (mode === 'initiator' && options.connect === undefined) {
    throw new UsageError("initiator mode needs --connect HOST:PORT (the address 'kvxfer bench target' listens on)");
  }
  if (mode !== 'initiator' && options.connect !== undefined) {
    throw new UsageError('--connect is for initiator mode (kvxfer bench initiator --connect HOST:PORT)');
  }
  if (mode !== 'target' && (given.has('listen') || given.has('once'))) {
    throw new UsageError('--listen and --once are for target mode (kvxfer bench target --listen HOST:PORT)');
  }

  const kvFlags = ['tokens', 'layers', 'kv-heads', 'head-dim', 'dtype', 'block-tokens'];
  if (values.has('kv')) {
    options.kv = parseKv(last('kv')!, last);
    if (given.has('block-sizes') || given.has('batch-sizes')) {
      throw new UsageError('--kv derives block and batch sizes from the model shape; drop --block-sizes/--batch-sizes');
    }
  } else {
    const stray = kvFlags.find((f) => given.has(f));
    if (stray !== undefined) throw new UsageError(`--${stray} needs --kv MODEL (or --kv custom)`);
  }

  // Everything a point allocates: its distinct blocks, per agent, per side.
  const perAgent = Math.max(...pointsBytes(options));
  if (perAgent > options.maxMemory) {
    throw new UsageError(
      `the largest point needs ${perAgent} bytes per agent on each side ` +
        `over --max-memory ${options.maxMemory}; lower --in-flight, --batch-sizes or --block-sizes, or raise --max-memory`,
    );
  }
  return { help: given.has('help'), options };
}

/** Distinct blocks each side holds for a point of `batch` descriptors per request. */
export function distinctBlocks(options: BenchOptions, batch: number): number {
  return options.reuse === 'all' ? 1 : options.reuse === 'requests' ? batch : batch * options.inFlight;
}

/** The block that descriptor `j` of in-flight request `slot` moves. */
export function blockIndex(options: BenchOptions, batch: number, slot: number, j: number): number {
  return options.reuse === 'all' ? 0 : options.reuse === 'requests' ? j : slot * batch + j;
}

/** Bytes one agent needs for each point of the plan. */
export function pointsBytes(options: BenchOptions): number[] {
  if (options.kv !== undefined) {
    const kv = options.kv;
    return kv.tokens.map((t) => distinctBlocks(options, kvBlocks(kv, t)) * kvBlockBytes(kv));
  }
  const out: number[] = [];
  for (const block of options.blockSizes) for (const batch of options.batchSizes) out.push(block * distinctBlocks(options, batch));
  return out;
}

export function kvBlockBytes(shape: KvShape): number {
  return shape.blockTokens * shape.kvHeads * shape.headDim * DTYPE_BYTES[shape.dtype];
}

/** Descriptors for `tokens` tokens: one per (layer, K or V, block). */
export function kvBlocks(shape: KvShape, tokens: number): number {
  return shape.layers * 2 * Math.ceil(tokens / shape.blockTokens);
}

function parseKv(model: string, last: (name: string) => string | undefined): KvOptions {
  const preset = KV_MODELS[model.toLowerCase()];
  if (preset === undefined && model !== 'custom') {
    throw new UsageError(`--kv: unknown model '${model}'; presets: ${Object.keys(KV_MODELS).join(', ')}, or custom`);
  }
  const base: KvShape = preset ?? { layers: 0, kvHeads: 0, headDim: 0, dtype: 'bf16', blockTokens: 16 };
  const shape: KvShape = {
    layers: last('layers') !== undefined ? parseCount(last('layers')!, '--layers') : base.layers,
    kvHeads: last('kv-heads') !== undefined ? parseCount(last('kv-heads')!, '--kv-heads') : base.kvHeads,
    headDim: last('head-dim') !== undefined ? parseCount(last('head-dim')!, '--head-dim') : base.headDim,
    dtype: last('dtype') !== undefined ? oneOf(last('dtype')!, Object.keys(DTYPE_BYTES) as KvShape['dtype'][], '--dtype') : base.dtype,
    blockTokens: last('block-tokens') !== undefined ? parseCount(last('block-tokens')!, '--block-tokens') : base.blockTokens,
  };
  if (shape.layers === 0 || shape.kvHeads === 0 || shape.headDim === 0) {
    throw new UsageError('--kv custom needs --layers, --kv-heads and --head-dim');
  }
  const tokens = last('tokens') !== undefined
    ? parseSizeList(last('tokens')!, '--tokens', (t, w) => parseCount(t, w))
    : [1024, 4096];
  return { model: preset !== undefined ? model.toLowerCase() : 'custom', tokens, ...shape };
}

export const USAGE = `usage: kvxfer bench [local|target|initiator] [options]

Transfer microbenchmark: kvxfer against ucx_perftest, Node TCP and memcpy, in one run.

modes
  local (default)            fork a target on this host and run the whole benchmark
  target --listen HOST:PORT  wait for an initiator (default 0.0.0.0:${DEFAULT_PORT}); --once: one session, then exit
  initiator --connect HOST:PORT   run against a target on another host

what to move
  --op write|read            WRITE pushes into the target, READ pulls from it (default write)
  --block-sizes LIST         bytes per descriptor: 4K,64K,1M or 4K..64M (powers of two)
                             (default 4K,64K,1M,4M,16M)
  --batch-sizes LIST         descriptors per request, e.g. 1,16,1024 or 1..1024 (default 1)
  --in-flight N              requests posted at once per agent pair (default 4; 1 for
                             per-request latency)
  --burst N                  post the in-flight requests N at a time with one
                             Agent.postAll (N divides --in-flight; default 1: one post each)
  --prepared | --recreate    prepare each request once and repost it (default), or
                             prepare + post + release every time
  --reuse requests|none|all  which blocks requests share (default requests: the in-flight
                             requests move the same blocks, each descriptor of a request its
                             own; none: every request its own blocks; all: one block per
                             side, ucx_perftest's footprint)
  --agents N                 agent pairs running in parallel (default 1)
  --notify                   every request carries a notification the target waits for
  --mem dram|buffer|vram     bench memory on both sides (default dram: allocate(); buffer:
                             a Buffer.alloc registered with register(); vram: GPU memory,
                             allocated with kvxfer/cuda, on --device N here and
                             --peer-device M on the target (default N); needs a GPU and a
                             CUDA-enabled UCX)
  --engine auto|ucx|nixl     kvxfer engine (default auto)
  --transports TLS           UCX_TLS for both sides and ucx_perftest, e.g. sm,self or tcp

how long
  --duration S               seconds per point (default 1; 500ms works)
  --iters N                  timed requests per point (with --duration: whichever ends first)
  --warmup N                 untimed requests first (default: 8 and at least 0.2 s)
  --timeout S                per request (default 60)
  --busy-poll US             the initiator polls for completions this long before its event
                             loop sleeps (Agent.create busyPollUs; default 50, 0: off)
  --check                    after the timed loop, verify every byte at the destination
  --repeat N                 N rounds per block size, kvxfer and baselines interleaved; each
                             point reports its median round (for noisy machines)
  --load N                   N processes keep a core busy each for the whole run, kvxfer and
                             baselines alike (a busy serving host; default 0)

KV-shaped runs (descriptors from a model's KV cache layout)
  --kv MODEL                 ${Object.keys(KV_MODELS).join(', ')}, or custom
  --tokens LIST              prompt lengths (default 1024,4096)
  --handoff pull|push|stream hand each prompt's KV blocks over with KvHandoff between two
                             processes (scattered block ids), against one contiguous
                             transfer of the same bytes; reports per-request time, the
                             ratio, descriptors before and after merging, launch overhead
                             (pull) and event-loop delay on both sides (--iters, default 10)
  --compute-ms MS            --handoff stream: simulated compute per layer (default 1)
  --pool allocate|buffer     --handoff: the pools (and the contiguous baseline) in allocate()d
                             memory (default) or in registered Buffers
  --layers N --kv-heads N --head-dim N --dtype fp32|bf16|fp16|fp8 --block-tokens N   override the shape

baselines (each a series, with kvxfer's ratio to it)
  --baseline LIST            ucx_perftest,net,memcpy (default all), cuda_memcpy (the
                             default with --mem vram: cudaMemcpy device to device, or
                             peer to peer from --device to --peer-device), or none

output
  --json FILE  --csv FILE    every figure of every point
  --chart FILE.svg           bandwidth against block size, one line per series
  --no-progress              no progress on stderr (a bar on a terminal, else a line per point)
  --from FILE.json           run nothing: print the table of a saved --json report and write
                             its --csv/--chart
  --max-memory SIZE          refuse plans needing more per agent and side (default 4G)

Sizes take K, M, G (powers of 1024). Exit status: 0 ok, 1 failed (or --check found a difference), 2 bad command line.
`;
