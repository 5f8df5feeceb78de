/**
 * Deterministic block contents for --check. Block k of a point with seed s
 * holds byte T[(shift(s, k) + i) mod P] at offset i, where T is a pseudo-
 * random tile of prime length P: every block differs from every other, from
 * zeros and from the poison byte, so a block that was not moved, was moved
 * to the wrong place or was torn fails the check. Both sides build the same
 * bytes from (seed, k) alone; nothing but the seed crosses the wire.
 */
const P = 65521; // the largest prime below 2^16
const POISON = 0xa5;

function mix(a: number, b: number): number {
  let h = (Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 0x7f4a7c15, 0xc2b2ae35)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b) >>> 0;
  return (h ^ (h >>> 13)) >>> 0;
}

const tiles = new Map<number, Buffer>();

/** The tile for a seed, twice over, so any rotation of it is one slice. */
function tile(seed: number): Buffer {
  let t = tiles.get(seed);
  if (t === undefined) {
    t = Buffer.allocUnsafe(2 * P);
    let x = mix(seed, 0x5eed) || 1;
    for (let i = 0; i < P; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      t[i] = x & 0xff;
    }
    t.copy(t, P, 0, P);
    if (tiles.size > 8) tiles.clear();
    tiles.set(seed, t);
  }
  return t;
}

/** Fills `block` with the contents of block `index` for `seed`. */
export function fillBlock(block: Buffer, seed: number, index: number): void {
  const t = tile(seed);
  const shift = mix(seed, index) % P;
  let filled = t.copy(block, 0, shift, shift + Math.min(P, block.length));
  // The contents repeat every P bytes: double what is there until full.
  while (filled < block.length) {
    const n = Math.min(filled, block.length - filled);
    block.copyWithin(filled, 0, n);
    filled += n;
  }
}

/** True when `block` holds exactly the contents of block `index` for `seed`; reads every byte. */
export function checkBlock(block: Buffer, seed: number, index: number): boolean {
  const t = tile(seed);
  const shift = mix(seed, index) % P;
  const head = Math.min(P, block.length);
  if (t.compare(block, 0, head, shift, shift + head) !== 0) return false;
  // The first P bytes are right, and byte i equals byte i - P for every i >= P.
  return block.length <= P || block.compare(block, 0, block.length - P, P, block.length) === 0;
}

/** Fills a destination with a byte no pattern block is made of. */
export function poison(block: Buffer): void {
  block.fill(POISON);
}
