/**
 * KV-shaped benchmark points. A paged KV cache (vLLM's layout) holds, per
 * layer, a K and a V tensor of blocks [num_blocks, block_tokens, kv_heads,
 * head_dim]; one block of one tensor is one contiguous descriptor of
 * block_tokens x kv_heads x head_dim x dtype bytes. Moving a prompt of N
 * tokens is layers x 2 x ceil(N / block_tokens) such descriptors.
 */
export type Dtype = 'fp32' | 'bf16' | 'fp16' | 'fp8';

export const DTYPE_BYTES: Record<Dtype, number> = { fp32: 4, bf16: 2, fp16: 2, fp8: 1 };

export interface KvShape {
  layers: number;
  /** Key/value heads (grouped-query attention: fewer than query heads). */
  kvHeads: number;
  headDim: number;
  dtype: Dtype;
  /** Tokens per KV block (vLLM's default is 16). */
  blockTokens: number;
}

/** Shapes from the models' published configs (num_hidden_layers, num_key_value_heads, head_dim), bf16, 16-token blocks. */
export const KV_MODELS: Record<string, KvShape> = {
  'llama-3.2-1b': { layers: 16, kvHeads: 8, headDim: 64, dtype: 'bf16', blockTokens: 16 },
  'llama-3.1-8b': { layers: 32, kvHeads: 8, headDim: 128, dtype: 'bf16', blockTokens: 16 },
  'llama-3.1-70b': { layers: 80, kvHeads: 8, headDim: 128, dtype: 'bf16', blockTokens: 16 },
  'mistral-7b': { layers: 32, kvHeads: 8, headDim: 128, dtype: 'bf16', blockTokens: 16 },
  'mixtral-8x7b': { layers: 32, kvHeads: 8, headDim: 128, dtype: 'bf16', blockTokens: 16 },
  'qwen2.5-7b': { layers: 28, kvHeads: 4, headDim: 128, dtype: 'bf16', blockTokens: 16 },
  'qwen2.5-72b': { layers: 80, kvHeads: 8, headDim: 128, dtype: 'bf16', blockTokens: 16 },
  'gemma-2-9b': { layers: 42, kvHeads: 8, headDim: 256, dtype: 'bf16', blockTokens: 16 },
  'phi-3-mini': { layers: 32, kvHeads: 32, headDim: 96, dtype: 'bf16', blockTokens: 16 },
};

/** KV bytes one token occupies across all layers (K and V). */
export function kvBytesPerToken(shape: KvShape): number {
  return shape.layers * 2 * shape.kvHeads * shape.headDim * DTYPE_BYTES[shape.dtype];
}
