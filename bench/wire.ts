/**
 * The initiator <-> target control channel: length-prefixed frames over one
 * TCP connection. A frame is
 *   u32 frame length (what follows) | u32 header length | header (JSON) | blobs
 * little endian; the header's `blobs` lists the byte length of each binary
 * attachment (metadata blobs, encoded descriptor lists), which follow the
 * header back to back.
 */
import * as net from 'node:net';

const MAX_FRAME = 1 << 30;

export interface Message {
  type: string;
  body: Record<string, unknown>;
  blobs: Buffer[];
}

export class RemoteError extends Error {
  override name = 'RemoteError';
}

export function encodeFrame(type: string, body: Record<string, unknown> = {}, blobs: Uint8Array[] = []): Buffer {
  const header = Buffer.from(JSON.stringify({ ...body, type, blobs: blobs.map((b) => b.byteLength) }), 'utf8');
  const total = 4 + header.length + blobs.reduce((n, b) => n + b.byteLength, 0);
  if (total > MAX_FRAME) throw new Error(`a ${total}-byte control frame is over the 1 GiB limit`);
  const out = Buffer.allocUnsafe(4 + total);
  out.writeUInt32LE(total, 0);
  out.writeUInt32LE(header.length, 4);
  header.copy(out, 8);
  let at = 8 + header.length;
  for (const b of blobs) {
    out.set(b, at);
    at += b.byteLength;
  }
  return out;
}

/** Splits a byte stream into frames; throws on a malformed one. */
export class FrameDecoder {
  #pending: Buffer[] = [];
  #size = 0;

  push(chunk: Buffer): Message[] {
    this.#pending.push(chunk);
    this.#size += chunk.length;
    const out: Message[] = [];
    for (;;) {
      if (this.#size < 4) break;
      const head = this.#take(4, false);
      const total = head.readUInt32LE(0);
      if (total < 4 || total > MAX_FRAME) throw new Error(`malformed control frame (length ${total})`);
      if (this.#size < 4 + total) break;
      const frame = this.#take(4 + total, true).subarray(4);
      const headerLength = frame.readUInt32LE(0);
      if (headerLength > total - 4) throw new Error('malformed control frame (header runs past the frame)');
      let header: { type?: unknown; blobs?: unknown };
      try {
        header = JSON.parse(frame.toString('utf8', 4, 4 + headerLength));
      } catch {
        throw new Error('malformed control frame (header is not JSON)');
      }
      const lengths = header.blobs;
      if (typeof header.type !== 'string' || !Array.isArray(lengths) || !lengths.every((n) => Number.isSafeInteger(n) && n >= 0)) {
        throw new Error('malformed control frame (no type or bad blob list)');
      }
      let at = 4 + headerLength;
      const blobs: Buffer[] = [];
      for (const n of lengths as number[]) {
        if (at + n > frame.length) throw new Error('malformed control frame (blob runs past the frame)');
        blobs.push(Buffer.from(frame.subarray(at, at + n)));
        at += n;
      }
      const { type, blobs: _lengths, ...body } = header as Record<string, unknown>;
      out.push({ type: type as string, body, blobs });
    }
    return out;
  }

  #take(n: number, consume: boolean): Buffer {
    const all = this.#pending.length === 1 ? this.#pending[0] : Buffer.concat(this.#pending);
    this.#pending = [all];
    if (!consume) return all.subarray(0, n);
    const taken = all.subarray(0, n);
    const rest = all.subarray(n);
    this.#pending = rest.length > 0 ? [rest] : [];
    this.#size -= n;
    return taken;
  }
}

/** One end of the control connection: send frames, await the next one. */
export class Channel {
  readonly socket: net.Socket;
  #decoder = new FrameDecoder();
  #inbox: Message[] = [];
  #waiter: (() => void) | undefined;
  #ended: Error | undefined;

  constructor(socket: net.Socket, readonly peerName = 'peer') {
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      try {
        this.#inbox.push(...this.#decoder.push(chunk));
      } catch (error) {
        this.#end(error as Error);
        socket.destroy();
      }
      this.#waiter?.();
    });
    socket.on('error', (error) => this.#end(error));
    socket.on('close', () => this.#end(new Error(`the ${this.peerName} closed the control connection`)));
  }

  #end(error: Error): void {
    this.#ended ??= error;
    this.#waiter?.();
  }

  send(type: string, body: Record<string, unknown> = {}, blobs: Uint8Array[] = []): void {
    if (this.#ended !== undefined) throw this.#ended;
    this.socket.write(encodeFrame(type, body, blobs));
  }

  /** The next message; one of `expect` if given. A peer's 'error' message rejects. */
  async next(expect?: string, timeoutMs = 120_000): Promise<Message> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const message = this.#inbox.shift();
      if (message !== undefined) {
        if (message.type === 'error') {
          throw new RemoteError(`${this.peerName}: ${String(message.body.message)}`);
        }
        if (expect !== undefined && message.type !== expect) {
          throw new Error(`expected '${expect}' from the ${this.peerName}, got '${message.type}'`);
        }
        return message;
      }
      if (this.#ended !== undefined) throw this.#ended;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`the ${this.peerName} sent nothing for ${timeoutMs} ms (waiting for '${expect ?? 'a message'}')`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#waiter = undefined;
    }
  }

  close(): void {
    this.socket.end();
  }
}

export function connect(host: string, port: number, timeoutMs = 15_000): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer from ${host}:${port} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot connect to the bench target at ${host}:${port}: ${error.message}`));
    });
  });
}
