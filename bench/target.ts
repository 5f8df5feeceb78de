/**
 * `kvxfer bench target`: the passive side. Listens on TCP; for each
 * initiator session it creates the agents, allocates their memory, swaps
 * metadata, hands out where each point's blocks are, verifies the bytes on
 * --check, counts notifications, and runs the servers of the ucx_perftest and
 * net baselines. `local` mode forks one of these on 127.0.0.1 and talks to it
 * over the same protocol.
 */
import * as net from 'node:net';
import * as os from 'node:os';
import { Agent, DescList, info, type Region } from 'kvxfer';
import type { BenchOptions } from './args';
import { startNetSink } from './baselines/net';
import { findPerftest, startPerftestServer, type PerftestServer } from './baselines/perftest';
import { allocateBenchMemory, freeBenchMemory, type BenchMem } from './memory';
import { checkBlock, fillBlock, poison } from './pattern';
import { Channel, type Message } from './wire';

export const PROTOCOL_VERSION = 2;

/** What the target says about itself; also the initiator's `host` in the report. */
export function hostInfo(): Record<string, unknown> {
  const cpus = os.cpus();
  return {
    hostname: os.hostname(),
    cpus: cpus.length,
    cpuModel: cpus[0]?.model?.trim() ?? 'unknown',
    memoryBytes: os.totalmem(),
    load: os.loadavg().map((l) => Math.round(l * 100) / 100),
    platform: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
  };
}

interface HelloBody {
  version: number;
  engine: 'auto' | 'ucx' | 'nixl';
  transports: string | null;
  mem: BenchMem;
  device: number;
  agents: number;
  bytes: number;
  notify: boolean;
}

interface PointBody {
  id: number;
  blockSize: number;
  count: number;
  op: 'write' | 'read';
  check: boolean;
  seeds: number[];
}

/** Where entry i of a point's list lives on the target: reverse order, as a paged KV pool scatters blocks. */
function blockOffset(i: number, count: number, blockSize: number): number {
  return (count - 1 - i) * blockSize;
}

class Session {
  agents: Agent[] = [];
  regions: Region[] = [];
  counts: Map<string, number>[] = [];
  notifyAbort = new AbortController();
  sink: net.Server | undefined;
  perftests: PerftestServer[] = [];

  constructor(
    readonly ch: Channel,
    readonly options: BenchOptions,
    readonly userEnv: NodeJS.ProcessEnv,
  ) {}

  async run(): Promise<void> {
    const hello = await this.ch.next('hello', 30_000);
    const h = hello.body as unknown as HelloBody;
    if (h.version !== PROTOCOL_VERSION) throw new Error(`the initiator speaks bench protocol ${h.version}; this target speaks ${PROTOCOL_VERSION}`);
    const given = this.options.given;
    const engine = given.has('engine') ? this.options.engine : h.engine;
    const transports = given.has('transports') ? this.options.transports : h.transports ?? undefined;
    const mem = given.has('mem') ? this.options.mem : h.mem;
    if (hello.blobs.length !== h.agents) throw new Error('the initiator sent a metadata blob count that does not match its agents');
    for (let i = 0; i < h.agents; i++) {
      const agent = await Agent.create({
        name: `bench-target-${os.hostname()}-${process.pid}-${i}`,
        engine,
        ...(transports ? { transports } : {}),
      });
      this.agents.push(agent);
      this.regions.push(await allocateBenchMemory(agent, h.bytes, mem, h.device));
      this.counts.push(new Map());
    }
    for (let i = 0; i < h.agents; i++) await this.agents[i].loadPeer(hello.blobs[i], { timeoutMs: 30_000 });
    if (h.notify) this.agents.forEach((agent, i) => void this.countNotifications(agent, this.counts[i]));
    this.sink = await startNetSink(this.ch.socket.localAddress ?? '127.0.0.1');
    const ucx = info().engines.ucx;
    this.ch.send(
      'ready',
      {
        agents: this.agents.map((a) => a.name),
        engine: this.agents[0]?.engine ?? engine,
        netPort: (this.sink.address() as net.AddressInfo).port,
        perftest: findPerftest() !== undefined,
        host: hostInfo(),
        ucx: ucx.version ?? null,
        transports: transports ?? this.userEnv.UCX_TLS ?? null,
      },
      this.agents.map((a) => a.metadata()),
    );

    for (;;) {
      const message = await this.ch.next(undefined, 24 * 3600_000);
      if (message.type === 'bye') break;
      await this.handle(message, transports);
    }
  }

  async countNotifications(agent: Agent, counts: Map<string, number>): Promise<void> {
    try {
      for await (const n of agent.notifications({ signal: this.notifyAbort.signal })) {
        counts.set(n.message, (counts.get(n.message) ?? 0) + 1);
      }
    } catch {
      // aborted or closed: the session is over
    }
  }

  async handle(message: Message, transports: string | undefined): Promise<void> {
    switch (message.type) {
      case 'point': {
        const p = message.body as unknown as PointBody;
        const lists = this.regions.map((region, a) => {
          const descs = [];
          for (let i = 0; i < p.count; i++) {
            const at = blockOffset(i, p.count, p.blockSize);
            descs.push(region.slice(at, p.blockSize));
            if (p.check && p.op === 'write') poison(region.view(at, p.blockSize));
            if (p.check && p.op === 'read') fillBlock(region.view(at, p.blockSize), p.seeds[a], i);
          }
          return DescList.from(descs).encode();
        });
        this.ch.send('point', { id: p.id }, lists);
        return;
      }
      case 'verify': {
        const p = message.body as unknown as PointBody & { notify: string | null; expected: number[] };
        const received: number[] = [];
        if (p.notify !== null) {
          const deadline = Date.now() + 30_000;
          for (let a = 0; a < this.agents.length; a++) {
            while ((this.counts[a].get(p.notify) ?? 0) < p.expected[a] && Date.now() < deadline) {
              await new Promise((r) => setTimeout(r, 5));
            }
            received.push(this.counts[a].get(p.notify) ?? 0);
            this.counts[a].delete(p.notify);
          }
        }
        let bytes = 0;
        let blocks = 0;
        let badBlocks = 0;
        if (p.check && p.op === 'write') {
          this.regions.forEach((region, a) => {
            for (let i = 0; i < p.count; i++) {
              const ok = checkBlock(region.view(blockOffset(i, p.count, p.blockSize), p.blockSize), p.seeds[a], i);
              blocks++;
              bytes += p.blockSize;
              if (!ok) badBlocks++;
            }
          });
        }
        this.ch.send('verify', { id: p.id, bytes, blocks, badBlocks, received });
        return;
      }
      case 'perftest': {
        const bin = findPerftest();
        if (bin === undefined) {
          this.ch.send('perftest', { error: 'ucx_perftest is not installed on the target (Debian/Ubuntu: apt-get install ucx-utils)' });
          return;
        }
        const env = { ...this.userEnv, ...(transports ? { UCX_TLS: transports } : {}) };
        const server = await startPerftestServer(bin, this.ch.socket.localAddress ?? '0.0.0.0', env);
        this.perftests.push(server);
        this.ch.send('perftest', { port: server.port });
        return;
      }
      default:
        throw new Error(`unexpected '${message.type}' from the initiator`);
    }
  }

  async close(): Promise<void> {
    this.notifyAbort.abort();
    for (const p of this.perftests) if (p.child.exitCode === null) p.child.kill('SIGKILL');
    this.sink?.close();
    await Promise.allSettled(this.agents.map((a) => a.close()));
    for (const region of this.regions.splice(0)) freeBenchMemory(region);
  }
}

/** Serves one initiator on an accepted connection. */
export async function serveSession(socket: net.Socket, options: BenchOptions, userEnv: NodeJS.ProcessEnv): Promise<void> {
  const ch = new Channel(socket, 'initiator');
  const session = new Session(ch, options, userEnv);
  try {
    await session.run();
    await session.close();
    ch.send('bye');
    ch.close();
  } catch (error) {
    await session.close();
    try {
      ch.send('error', { message: error instanceof Error ? error.message : String(error) });
      ch.close();
    } catch {
      socket.destroy();
    }
    throw error;
  }
}

/** `kvxfer bench target`: listen, serve sessions one at a time (--once: one, then exit). */
export async function runTarget(options: BenchOptions, userEnv: NodeJS.ProcessEnv): Promise<number> {
  const server = net.createServer({ pauseOnConnect: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.listen.port, options.listen.host, () => resolve());
  });
  const address = server.address() as net.AddressInfo;
  // `local` mode reads this line to learn the port.
  process.stdout.write(`kvxfer bench target: listening on ${address.address}:${address.port}\n`);
  let busy = false;
  return new Promise<number>((resolve) => {
    server.on('connection', (socket) => {
      if (busy) {
        new Channel(socket, 'initiator').send('error', { message: 'this target is serving another initiator; try again later' });
        socket.end();
        return;
      }
      busy = true;
      socket.resume();
      const peer = `${socket.remoteAddress}:${socket.remotePort}`;
      serveSession(socket, options, userEnv).then(
        () => {
          if (!options.once) process.stdout.write(`kvxfer bench target: session with ${peer} done\n`);
          return 0;
        },
        (error: unknown) => {
          process.stderr.write(`kvxfer bench target: session with ${peer} failed: ${error instanceof Error ? error.message : String(error)}\n`);
          return 1;
        },
      ).then((code) => {
        busy = false;
        if (options.once) {
          server.close();
          resolve(code);
        }
      });
    });
  });
}
