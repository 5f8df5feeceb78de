import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { Bounded, checkBounds } from '../bounds';
import { ErrorCode, KvxferError, invalidArg, withCallerStack } from '../errors';
import type { OperationOptions } from '../types';

/**
 * The TCP side channel: one connection per exchange, four frames.
 *
 *   client -> HELLO      nonce_c (32 bytes)
 *   server -> CHALLENGE  flags (bit 0: a secret is required), nonce_s (32 bytes)
 *   client -> CLIENT     mac_c, the client's metadata
 *   server -> SERVER     mac_s, the server's metadata    (or ERROR)
 *
 * mac_c = HMAC-SHA256(secret, "kvxfer-sc1 client" | nonce_c | nonce_s | sha256(client metadata))
 * mac_s = HMAC-SHA256(secret, "kvxfer-sc1 server" | nonce_c | nonce_s | sha256(server metadata) | sha256(client metadata))
 *
 * A mac is a byte of length (0 or 32) then its bytes. The server loads the
 * client's metadata before it answers, so both sides can transfer once
 * fetchPeer resolves; it reveals its own metadata only to a client that
 * proved the secret, and each side's nonce makes a recorded exchange useless
 * to replay. ERROR carries a code (a byte of length, then ASCII) and a UTF-8
 * message. Every frame starts with a 12-byte header: "KVSC", u8 version,
 * u8 type, u16 zero, u32 little-endian payload length (at most
 * MAX_FRAME_BYTES). A frame of another version is refused, not guessed at.
 * @internal
 */
export const SIDE_CHANNEL_VERSION = 1;
const MAGIC = Buffer.from('KVSC', 'ascii');
const HEADER_BYTES = 12;
/** Far above any metadata blob (a UCX blob is a few KiB plus ~100 bytes a region). */
const MAX_FRAME_BYTES = 16 * 1024 * 1024;
const NONCE_BYTES = 32;
const MAX_CONNECTIONS = 512;
const MAC_BYTES = 32;
const FLAG_SECRET = 1;

const enum Frame {
  Hello = 1,
  Challenge = 2,
  Client = 3,
  Server = 4,
  Error = 5,
}

/** Options of Agent.listen. */
export interface ListenOptions {
  /** Address to listen on; default '127.0.0.1'. */
  host?: string;
  /** Port; default 0 (any free port). */
  port?: number;
  /** When set, only clients that prove they know it get our metadata. */
  secret?: string | Uint8Array;
  /** How long one client may take over its exchange; default 10000. */
  exchangeTimeoutMs?: number;
}

/** A listening side channel, from Agent.listen. */
export interface SideChannel {
  /** The address it listens on. */
  readonly host: string;
  /** The port it listens on (the one chosen, when 0 was asked for). */
  readonly port: number;
  /** Exchanges completed, and refused (wrong or missing secret, malformed frames, timeouts). */
  stats(): {
    /** Exchanges completed. */
    served: number;
    /** Exchanges refused or cut off. */
    refused: number;
  };
  /** Stops listening; exchanges under way are cut off. */
  close(): Promise<void>;
}

/** Options of Agent.fetchPeer. */
export interface FetchPeerOptions extends OperationOptions {
  /** The listener's host name or address. */
  host: string;
  /** The listener's TCP port. */
  port: number;
  /** The listener's secret, when it has one. A listener that proves no secret is then refused. */
  secret?: string | Uint8Array;
}

/** What the side channel needs of an agent. @internal */
export interface SideChannelAgent {
  readonly name: string;
  metadata(): Uint8Array;
  loadPeer(metadata: Uint8Array, options?: OperationOptions): Promise<string>;
}

function header(type: Frame, length: number): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  MAGIC.copy(h, 0);
  h.writeUInt8(SIDE_CHANNEL_VERSION, 4);
  h.writeUInt8(type, 5);
  h.writeUInt32LE(length, 8);
  return h;
}

function send(socket: Socket, type: Frame, ...parts: Uint8Array[]): void {
  const length = parts.reduce((sum, part) => sum + part.byteLength, 0);
  socket.write(Buffer.concat([header(type, length), ...parts]));
}

function withMac(mac: Buffer | undefined): Buffer {
  return mac === undefined ? Buffer.from([0]) : Buffer.concat([Buffer.from([mac.length]), mac]);
}

function badFrame(why: string): KvxferError {
  return new KvxferError(ErrorCode.BAD_METADATA, `side channel: ${why}`);
}

/**
 * Splits the byte stream into frames; a malformed or oversized one fails the
 * reader for good. It never holds more than one frame's worth: more bytes
 * than the largest frame, or bytes when no frame is due, fail it and close
 * the socket.
 */
class FrameReader {
  readonly #chunks: Buffer[] = [];
  #bytes = 0;
  #frames = 0;
  #waiting: ((frame: { type: Frame; payload: Buffer }) => void) | undefined;
  #failWaiting: ((error: KvxferError) => void) | undefined;
  #error: KvxferError | undefined;

  constructor(socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      // Past the exchange (or a failure), nothing more is read.
      if (this.#error !== undefined) {
        socket.destroy();
        return;
      }
      this.#chunks.push(chunk);
      this.#bytes += chunk.length;
      if (this.#bytes > HEADER_BYTES + MAX_FRAME_BYTES) {
        this.fail(badFrame('the other side sent more than a frame can hold'));
        socket.destroy();
        return;
      }
      this.#deliver();
    });
    // A connection that ends before any frame was dropped (a listener at its
    // limit, or closing); one that ends mid-exchange broke the protocol.
    const ended = () =>
      this.fail(
        this.#frames === 0
          ? new KvxferError(ErrorCode.PEER_UNREACHABLE, 'side channel: the other side closed the connection')
          : badFrame('the other side closed the connection mid-exchange'),
      );
    socket.on('end', ended);
    socket.on('close', ended);
    socket.on('error', (error) => this.fail(new KvxferError(ErrorCode.PEER_UNREACHABLE, `side channel: ${error.message}`, { cause: error })));
  }

  /** No more frames are due: anything the other side sends now is refused. */
  done(): void {
    this.fail(badFrame('the exchange is over'));
  }

  /** The next frame, which must be of `type` (or ERROR, which becomes a rejection). */
  next(type: Frame): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      if (this.#error !== undefined) return reject(this.#error);
      this.#waiting = (frame) => {
        if (frame.type === type) return resolve(frame.payload);
        if (frame.type === Frame.Error) return reject(decodeError(frame.payload));
        reject(badFrame(`expected frame type ${type}, got ${frame.type}`));
      };
      this.#failWaiting = reject;
      this.#deliver();
    });
  }

  fail(error: KvxferError): void {
    this.#error ??= error;
    const reject = this.#failWaiting;
    this.#waiting = this.#failWaiting = undefined;
    reject?.(this.#error);
  }

  #deliver(): void {
    if (this.#error !== undefined || this.#waiting === undefined || this.#bytes < HEADER_BYTES) return;
    const b = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#bytes);
    this.#chunks.length = 0;
    this.#chunks.push(b);
    if (!b.subarray(0, 4).equals(MAGIC)) return this.fail(badFrame('not a kvxfer side channel (bad magic)'));
    const version = b.readUInt8(4);
    if (version !== SIDE_CHANNEL_VERSION) {
      return this.fail(badFrame(`frame version ${version}; this kvxfer speaks version ${SIDE_CHANNEL_VERSION}`));
    }
    if (b.readUInt16LE(6) !== 0) return this.fail(badFrame('reserved header bytes are not zero'));
    const length = b.readUInt32LE(8);
    if (length > MAX_FRAME_BYTES) return this.fail(badFrame(`a frame of ${length} bytes is over the ${MAX_FRAME_BYTES}-byte cap`));
    if (b.length < HEADER_BYTES + length) return;
    const frame = { type: b.readUInt8(5) as Frame, payload: b.subarray(HEADER_BYTES, HEADER_BYTES + length) };
    const rest = b.subarray(HEADER_BYTES + length);
    this.#chunks.length = 0;
    this.#bytes = rest.length;
    if (rest.length > 0) this.#chunks.push(rest);
    this.#frames++;
    const waiting = this.#waiting!;
    this.#waiting = this.#failWaiting = undefined;
    waiting(frame);
  }
}

function encodeError(error: KvxferError): Buffer[] {
  const code = Buffer.from(error.code, 'ascii');
  return [Buffer.from([code.length]), code, Buffer.from(error.message, 'utf8')];
}

function decodeError(payload: Buffer): KvxferError {
  const length = payload.length > 0 ? payload.readUInt8(0) : 0;
  const code = payload.subarray(1, 1 + length).toString('ascii');
  const message = payload.subarray(1 + length).toString('utf8');
  const known = (Object.values(ErrorCode) as string[]).includes(code) ? (code as ErrorCode) : ErrorCode.BAD_METADATA;
  return new KvxferError(known, `the other side refused the exchange: ${message}`);
}

/** A mac field: a byte of length (0 or 32), then the mac. */
function readMac(payload: Buffer, what: string): { mac: Buffer | undefined; rest: Buffer } {
  if (payload.length < 1) throw badFrame(`${what} frame is empty`);
  const length = payload.readUInt8(0);
  if (length !== 0 && length !== MAC_BYTES) throw badFrame(`${what} frame has a ${length}-byte mac`);
  if (payload.length < 1 + length) throw badFrame(`${what} frame is truncated`);
  return { mac: length === 0 ? undefined : payload.subarray(1, 1 + length), rest: payload.subarray(1 + length) };
}

function sha256(bytes: Uint8Array): Buffer {
  return createHash('sha256').update(bytes).digest();
}

function mac(secret: Buffer, label: string, ...parts: Uint8Array[]): Buffer {
  const h = createHmac('sha256', secret).update(label);
  for (const part of parts) h.update(part);
  return h.digest();
}

function sameMac(a: Buffer | undefined, b: Buffer): boolean {
  return a !== undefined && a.length === b.length && timingSafeEqual(a, b);
}

function toSecret(secret: string | Uint8Array | undefined): Buffer | undefined {
  if (secret === undefined) return undefined;
  const bytes = typeof secret === 'string' ? Buffer.from(secret, 'utf8') : secret instanceof Uint8Array ? Buffer.from(secret) : undefined;
  if (bytes === undefined || bytes.length === 0) throw invalidArg('secret must be a non-empty string or Uint8Array');
  return bytes;
}

function unauthorized(message: string): KvxferError {
  return new KvxferError(ErrorCode.UNAUTHORIZED, message);
}

/** Agent.listen; `onClose` runs once, when the channel closes. @internal */
export async function listen(agent: SideChannelAgent, options: ListenOptions = {}, onClose?: () => void): Promise<SideChannel> {
  if (options === null || typeof options !== 'object') throw invalidArg('listen() takes { host?, port?, secret? }');
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? 0;
  if (typeof host !== 'string' || host === '') throw invalidArg('host must be a non-empty string');
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw invalidArg('port must be an integer from 0 to 65535');
  const secret = toSecret(options.secret);
  const exchangeTimeoutMs = options.exchangeTimeoutMs ?? 10_000;
  if (!(Number.isFinite(exchangeTimeoutMs) && exchangeTimeoutMs > 0)) throw invalidArg('exchangeTimeoutMs must be a positive number');
  const counts = { served: 0, refused: 0 };
  const sockets = new Set<Socket>();

  const serve = async (socket: Socket): Promise<void> => {
    const frames = new FrameReader(socket);
    const nonceC = await frames.next(Frame.Hello);
    if (nonceC.length !== NONCE_BYTES) throw badFrame(`HELLO carries ${nonceC.length} bytes, not a ${NONCE_BYTES}-byte nonce`);
    const nonceS = randomBytes(NONCE_BYTES);
    send(socket, Frame.Challenge, Buffer.from([secret === undefined ? 0 : FLAG_SECRET]), nonceS);
    const { mac: macC, rest: clientBlob } = readMac(await frames.next(Frame.Client), 'CLIENT');
    if (secret !== undefined && !sameMac(macC, mac(secret, 'kvxfer-sc1 client', nonceC, nonceS, sha256(clientBlob)))) {
      throw unauthorized(macC === undefined ? 'the client proved no secret, and this listener has one' : 'the client does not know the secret');
    }
    await agent.loadPeer(clientBlob, { timeoutMs: exchangeTimeoutMs });
    const serverBlob = agent.metadata();
    const macS = secret === undefined ? undefined : mac(secret, 'kvxfer-sc1 server', nonceC, nonceS, sha256(serverBlob), sha256(clientBlob));
    frames.done();
    send(socket, Frame.Server, withMac(macS), serverBlob);
    socket.end();
  };

  const server: Server = createServer((socket) => {
    sockets.add(socket);
    // A client that stalls (or trickles) is cut off; the listener goes on serving others.
    const deadline = setTimeout(() => {
      if (!socket.destroyed) socket.destroy();
    }, exchangeTimeoutMs);
    socket.on('close', () => {
      clearTimeout(deadline);
      sockets.delete(socket);
    });
    serve(socket).then(
      () => {
        counts.served++;
      },
      (error: unknown) => {
        counts.refused++;
        if (!socket.destroyed && error instanceof KvxferError) {
          send(socket, Frame.Error, ...encodeError(error));
          socket.end();
        } else {
          socket.destroy();
        }
      },
    );
  });
  // Each exchange holds a socket and up to a frame's worth of memory until its
  // deadline: past this many at once, new connections are dropped.
  server.maxConnections = MAX_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) =>
      reject(new KvxferError(ErrorCode.INVALID_ARG, `cannot listen on ${host}:${port}: ${error.message}`, { cause: error })),
    );
    server.listen(port, host, () => resolve());
  });
  // Past listen(), an error (EMFILE from accept) must not go unhandled; the
  // listener keeps going.
  server.on('error', () => {
    counts.refused++;
  });
  const address = server.address();
  const bound = typeof address === 'object' && address !== null ? address.port : port;
  let closing: Promise<void> | undefined;
  return {
    host,
    port: bound,
    stats: () => ({ ...counts }),
    close() {
      if (closing === undefined) onClose?.();
      closing ??= new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      });
      return closing;
    },
  };
}

/** Agent.fetchPeer. @internal */
export function fetchPeer(agent: SideChannelAgent, options: FetchPeerOptions): Promise<string> {
  const caller = new Error();
  try {
    if (options === null || typeof options !== 'object') throw invalidArg('fetchPeer() takes { host, port, secret?, timeoutMs?, signal? }');
    checkBounds(options);
    const { host, port } = options;
    if (typeof host !== 'string' || host === '') throw invalidArg('host must be a non-empty string');
    if (!Number.isInteger(port) || port <= 0 || port > 65535) throw invalidArg('port must be an integer from 1 to 65535');
    const secret = toSecret(options.secret);
    const what = `fetching peer metadata from ${host}:${port}`;
    let socket: Socket | undefined;
    const bounded = new Bounded<string>(what, { timeoutMs: options.timeoutMs ?? 10_000, signal: options.signal }, () => socket?.destroy(), caller);
    if (bounded.settled) return bounded.promise;
    socket = connect({ host, port });
    const frames = new FrameReader(socket);
    const exchange = async (s: Socket): Promise<string> => {
      await new Promise<void>((resolve, reject) => {
        s.once('connect', resolve);
        s.once('error', (error) =>
          reject(new KvxferError(ErrorCode.PEER_UNREACHABLE, `no side channel at ${host}:${port}: ${error.message}`, { cause: error })),
        );
      });
      const nonceC = randomBytes(NONCE_BYTES);
      send(s, Frame.Hello, nonceC);
      const challenge = await frames.next(Frame.Challenge);
      if (challenge.length !== 1 + NONCE_BYTES) throw badFrame('CHALLENGE has the wrong size');
      const wantsSecret = (challenge.readUInt8(0) & FLAG_SECRET) !== 0;
      const nonceS = challenge.subarray(1);
      if (secret !== undefined && !wantsSecret) {
        throw unauthorized(`the listener at ${host}:${port} has no secret, and this exchange requires one`);
      }
      const clientBlob = agent.metadata();
      const macC = secret === undefined ? undefined : mac(secret, 'kvxfer-sc1 client', nonceC, nonceS, sha256(clientBlob));
      send(s, Frame.Client, withMac(macC), clientBlob);
      const { mac: macS, rest: serverBlob } = readMac(await frames.next(Frame.Server), 'SERVER');
      if (secret !== undefined && !sameMac(macS, mac(secret, 'kvxfer-sc1 server', nonceC, nonceS, sha256(serverBlob), sha256(clientBlob)))) {
        throw unauthorized(`the listener at ${host}:${port} does not know the secret`);
      }
      frames.done();
      s.end();
      return agent.loadPeer(serverBlob);
    };
    exchange(socket).then(
      (name) => bounded.resolve(name),
      (error: unknown) => {
        socket?.destroy();
        bounded.reject(error instanceof KvxferError ? withCallerStack(error, caller) : error);
      },
    );
    return bounded.promise;
  } catch (error) {
    return Promise.reject(error);
  }
}
