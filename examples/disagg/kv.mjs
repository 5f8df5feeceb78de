// What the prefill and the decode worker of examples/disagg share: the model's
// KV layout, the simulated compute (every element filled from its
// coordinates) and the decode's check of every byte against it.
import { KvLayout } from 'kvxfer';

/** KV shapes of a few models (bf16, 16-token blocks, as vLLM pages them). */
export const MODELS = {
  'llama-3.1-8b': { layers: 32, kvHeads: 8, headDim: 128 },
  'llama-3.1-70b': { layers: 80, kvHeads: 8, headDim: 128 },
  'qwen2.5-7b': { layers: 28, kvHeads: 4, headDim: 128 },
  tiny: { layers: 4, kvHeads: 4, headDim: 16 },
};

/** The layout both workers allocate: HND, so that a TP rank's heads are contiguous in each block. */
export function layoutFor(model, blocks) {
  const shape = MODELS[model];
  if (shape === undefined) throw new Error(`unknown model '${model}' (known: ${Object.keys(MODELS).join(', ')})`);
  // HND: the fill and the check below walk a head's tokens in one run.
  return new KvLayout({ ...shape, blocks, blockTokens: 16, dtype: 'bf16', order: 'layer-kv-block', heads: 'HND' });
}

/** Blocks a request of `tokens` tokens takes. */
export const blocksFor = (layout, tokens) => Math.ceil(tokens / layout.blockTokens);

// A 32-bit mix (murmur3's finalizer) of the element's coordinates: a wrong
// block, layer, K/V, head or token gives other bytes.
function seed(request, layer, kv, head, token) {
  let h = Math.imul(request, 0x9e3779b1) ^ Math.imul(layer + 1, 0x85ebca6b) ^ Math.imul(kv + 1, 0xc2b2ae35);
  h ^= Math.imul(head + 1, 0x27d4eb2f) ^ Math.imul(token + 1, 0x165667b1);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

// Visits every (kv, block of the request, head) of one layer with the word
// index in the pool where its tokens start: with HND a head's tokens follow
// each other in a block. Request-relative token = block index in the request
// * blockTokens + token in the block, so that the prefill and the decode agree
// whatever block ids their allocators handed out.
function forEachHead(layout, blockIds, layer, visit) {
  for (let kv = 0; kv < 2; kv++) {
    for (let i = 0; i < blockIds.length; i++) {
      for (let head = layout.headStart; head < layout.headEnd; head++) {
        visit(layout.offset({ layer, kv, block: blockIds[i], token: 0, head }) >>> 2, kv, head, i * layout.blockTokens);
      }
    }
  }
}

const words = (pool) => {
  const view = pool.view();
  return new Uint32Array(view.buffer, view.byteOffset, view.byteLength >>> 2);
};

/**
 * The simulated compute of one layer of a request: each element's headDim
 * values (as 4-byte words) follow from (request, layer, kv, head, token) and
 * the word's place in it.
 */
export function computeLayer(pool, request, blockIds, layer) {
  const { blockTokens, headBytes } = pool.layout;
  const perToken = headBytes >>> 2;
  const u32 = words(pool);
  forEachHead(pool.layout, blockIds, layer, (base, kv, head, firstToken) => {
    for (let t = 0; t < blockTokens; t++) {
      const s = seed(request, layer, kv, head, firstToken + t);
      const at = base + t * perToken;
      for (let w = 0; w < perToken; w++) u32[at + w] = (s + w) >>> 0;
    }
  });
}

/** Checks every byte of one layer of a request: the first element that differs, in words, or null. */
export function checkLayer(pool, request, blockIds, layer) {
  const { blockTokens, headBytes } = pool.layout;
  const perToken = headBytes >>> 2;
  const u32 = words(pool);
  let mismatch = null;
  forEachHead(pool.layout, blockIds, layer, (base, kv, head, firstToken) => {
    for (let t = 0; t < blockTokens && mismatch === null; t++) {
      const s = seed(request, layer, kv, head, firstToken + t);
      const at = base + t * perToken;
      for (let w = 0; w < perToken; w++) {
        if (u32[at + w] !== (s + w) >>> 0) {
          mismatch = `layer ${layer} ${kv === 0 ? 'K' : 'V'} head ${head} token ${firstToken + t} word ${w}`;
          break;
        }
      }
    }
  });
  return mismatch;
}
