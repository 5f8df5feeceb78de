/**
 * Handoff tickets: what a prefill (pull) or decode (push) worker hands the
 * other side through the application (its router): who holds the blocks,
 * which ones, and under what layout. They name block ids, not descriptors:
 * the pools' descriptors travel once per peer (KvHandoff asks for them).
 * Tickets come from other processes: decodeTicket trusts nothing.
 *
 * Layout (little endian): "KVTK", u16 version (1), u16 kind (1 pull, 2
 * push), u32 length of the JSON that follows, the JSON: { agent, id,
 * request, blocks, layout, tp: { rank, size } }.
 */
import { ErrorCode, KvxferError } from '../errors';

export type TicketKind = 'pull' | 'push';

/** What a ticket says, decoded. */
export interface Ticket {
  /** pull: the offering (prefill) side; push: the reserving (decode) side. */
  kind: TicketKind;
  /** The agent holding the blocks (pull) or waiting for them (push). */
  agent: string;
  /** The offer's or reservation's id at that agent. */
  id: number;
  /** The application's request id. */
  request: string;
  /** Block ids in that agent's pool, in request order. */
  blocks: number[];
  /** KvLayout.hash of that agent's pool (model-level shape: it must match ours). */
  layout: string;
  /** That agent's tensor-parallel rank and size. */
  tp: { rank: number; size: number };
}

const MAGIC = Buffer.from('KVTK', 'latin1');
const VERSION = 1;
const HEADER_BYTES = 12;
/** A request of 1M blocks is far beyond any context length. */
const MAX_BLOCKS = 1 << 20;
const MAX_TICKET_BYTES = HEADER_BYTES + 16 * MAX_BLOCKS;

function bad(why: string): KvxferError {
  return new KvxferError(ErrorCode.BAD_METADATA, `malformed KV ticket: ${why}`);
}

/** The bytes of a ticket (KvHandoff makes them). */
export function encodeTicket(ticket: Ticket): Uint8Array {
  const json = Buffer.from(
    JSON.stringify({
      agent: ticket.agent,
      id: ticket.id,
      request: ticket.request,
      blocks: ticket.blocks,
      layout: ticket.layout,
      tp: ticket.tp,
    }),
    'utf8',
  );
  const out = Buffer.alloc(HEADER_BYTES + json.length);
  MAGIC.copy(out, 0);
  out.writeUInt16LE(VERSION, 4);
  out.writeUInt16LE(ticket.kind === 'pull' ? 1 : 2, 6);
  out.writeUInt32LE(json.length, 8);
  json.copy(out, HEADER_BYTES);
  return out;
}

function isIndex(value: unknown, below = Number.MAX_SAFE_INTEGER): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < below;
}

/** Reads a ticket from another process; ERR_BAD_METADATA for anything but a well-formed one. */
export function decodeTicket(bytes: Uint8Array): Ticket {
  if (!(bytes instanceof Uint8Array)) throw new KvxferError(ErrorCode.INVALID_ARG, 'a ticket is a Uint8Array');
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length < HEADER_BYTES || b.compare(MAGIC, 0, 4, 0, 4) !== 0) throw bad('not a KV ticket');
  const version = b.readUInt16LE(4);
  if (version !== VERSION) throw bad(`version ${version} is not supported (expected ${VERSION})`);
  const kindCode = b.readUInt16LE(6);
  if (kindCode !== 1 && kindCode !== 2) throw bad(`kind ${kindCode}`);
  const length = b.readUInt32LE(8);
  if (length !== b.length - HEADER_BYTES || b.length > MAX_TICKET_BYTES) throw bad('length field does not match');
  let body: unknown;
  try {
    body = JSON.parse(b.toString('utf8', HEADER_BYTES));
  } catch {
    throw bad('its body is not JSON');
  }
  const t = body as Record<string, unknown>;
  if (t === null || typeof t !== 'object') throw bad('its body is not an object');
  if (typeof t.agent !== 'string' || t.agent.length === 0 || t.agent.length > 255) throw bad('agent');
  if (!isIndex(t.id, 2 ** 32)) throw bad('id');
  if (typeof t.request !== 'string' || t.request.length > 1024) throw bad('request');
  if (!Array.isArray(t.blocks) || t.blocks.length === 0 || t.blocks.length > MAX_BLOCKS) throw bad('blocks');
  if (!t.blocks.every((id) => isIndex(id, 2 ** 32))) throw bad('block ids');
  if (typeof t.layout !== 'string' || t.layout.length === 0 || t.layout.length > 128) throw bad('layout');
  const tp = t.tp as Record<string, unknown> | null;
  if (tp === null || typeof tp !== 'object' || !isIndex(tp.size, 65537) || tp.size === 0 || !isIndex(tp.rank, tp.size)) {
    throw bad('tp');
  }
  return {
    kind: kindCode === 1 ? 'pull' : 'push',
    agent: t.agent,
    id: t.id,
    request: t.request,
    blocks: t.blocks as number[],
    layout: t.layout,
    tp: { rank: tp.rank, size: tp.size },
  };
}
