/*
 * The internal kernel ABI: what the Rust launchers call.
 *
 * Every kernel receives pointers, sizes and element strides that the launcher
 * has already validated; a kernel never allocates, never fails and knows
 * nothing of threads. It computes one "block" of the launcher's grid, given as
 * a half-open index range.
 *
 * Each ISA tier compiles the same sources with its own flags and exports one
 * table of function pointers (xk_kernels_<tier>). The Rust side picks a table
 * once at run time. The Rust bindings (src/sys.rs) are generated from this file
 * by bindgen and checked in: regenerate with `.ci/gen-bindings`.
 */
#ifndef XOPS_KERNELS_H
#define XOPS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Floating formats a kernel can load or store. */
typedef enum xk_dtype {
  XK_F32 = 0,
  XK_F16 = 1,
  XK_BF16 = 2,
  XK_F8E4M3 = 3, /* OCP e4m3fn: bias 7, no inf, max 448, NaN = 0x7f/0xff */
  XK_F8E5M2 = 4, /* OCP e5m2: bias 15, IEEE-like, max finite 57344 */
} xk_dtype;

typedef enum xk_cache_layout {
  /* key [blocks, heads, head_size/x, block_size, x], value [blocks, heads, head_size, block_size] */
  XK_LAYOUT_PAGED = 0,
  /* key and value [blocks, block_size, heads, head_size] (any stride order, head_size contiguous) */
  XK_LAYOUT_FLASH = 1,
} xk_cache_layout;

/* reshape_and_cache / reshape_and_cache_flash: scatter token rows into the cache. */
typedef struct xk_kv_write_args {
  const void *key;   /* host, [tokens, heads, head_size], head_size contiguous */
  const void *value; /* host, same shape as key */
  int64_t key_stride_token, key_stride_head;
  int64_t value_stride_token, value_stride_head;
  int32_t src_dtype;          /* xk_dtype of key and value (F32/F16/BF16) */
  int32_t cache_dtype;        /* xk_dtype of both caches */
  int64_t num_heads, head_size;
  const void *slot_mapping;   /* host, [tokens], int32 or int64; < 0 = padding */
  int32_t slot_mapping_is_i64;
  int32_t layout;             /* xk_cache_layout */
  void *key_cache;            /* host; may equal value_cache */
  void *value_cache;
  int64_t block_size;
  int64_t x;                  /* paged layout: elements per 16-byte key chunk */
  int64_t key_cache_strides[5];   /* element strides, in the layout's dimension order */
  int64_t value_cache_strides[5];
  const float *k_scale;       /* fp8 caches only: stored = saturate(x / scale) */
  const float *v_scale;
  int64_t k_scale_stride;     /* 0: one scale for the tensor, 1: one per head */
  int64_t v_scale_stride;
} xk_kv_write_args;

/* ---- attention (xpu_src/cpu/attention.c) --------------------------------- */

/* Which op an xk_attn_args describes. */
typedef enum xk_attn_kind {
  XK_ATTN_PAGED = 0,  /* paged_attention_v1 (partition_size 0) / v2 partitions */
  XK_ATTN_VARLEN = 1, /* flash_attn_varlen_func over a paged cache (block_table) */
} xk_attn_kind;

/*
 * Attention over a paged KV cache. Every pointer is host memory the launcher
 * validated; strides are in elements. Small per-head tables (alibi slopes,
 * fp8 scales, sinks) and seq_lens / cu_seqlens_q / work are contiguous
 * copies the launcher made.
 */
typedef struct xk_attn_args {
  int32_t kind;        /* xk_attn_kind */
  int32_t dtype;       /* query, out, tmp_out: F32, F16 or BF16 */
  int32_t cache_dtype; /* dtype, or F8E4M3 / F8E5M2 (dequantised as fp8 * scale) */
  int32_t layout;      /* xk_cache_layout of key_cache and value_cache */
  int64_t num_seqs, num_heads, num_kv_heads, head_size, block_size;
  const void *query; /* [tokens, num_heads, head_size], head_size contiguous */
  int64_t q_stride_token, q_stride_head;
  void *out; /* same shape as query */
  int64_t out_stride_token, out_stride_head;
  const void *key_cache; /* paged: [blocks, kv_heads, head_size/x, block_size, x]; flash: [blocks, block_size, kv_heads, head_size] */
  const void *value_cache; /* paged: [blocks, kv_heads, head_size, block_size]; flash: as key_cache */
  int64_t key_cache_strides[5], value_cache_strides[5];
  int64_t x; /* paged key: elements per 16-byte chunk */
  const int32_t *block_tables; /* [num_seqs, max_blocks] */
  int64_t block_tables_stride_seq, block_tables_stride_block;
  const int32_t *seq_lens; /* [num_seqs]: keys of each sequence (seq_lens / seqused_k) */
  float scale;             /* softmax scale applied to q.k */
  float softcap;           /* varlen: > 0 replaces s by softcap * tanh(s / softcap) */
  const float *alibi_slopes; /* NULL or [num_seqs or 1][num_heads] */
  int64_t alibi_stride_seq;  /* 0: one row of slopes for every sequence */
  const float *k_scale;      /* NULL (1) or [num_seqs or 1][num_kv_heads], fp8 caches */
  const float *v_scale;
  int64_t scale_stride_seq;
  /* varlen */
  const int32_t *cu_seqlens_q; /* [num_seqs + 1] */
  const int32_t *work;         /* [items][3]: sequence, first query, end query */
  int32_t causal;              /* queries aligned to the end of their context */
  int32_t has_lse;
  int64_t window_left, window_right; /* -1: unbounded */
  const float *s_aux;                /* NULL or [num_heads] sink logits */
  float *lse;                        /* NULL or [num_heads, tokens] */
  int64_t lse_stride_head, lse_stride_token;
  int64_t max_rows; /* most (query, head) rows one grid block has, over its kv heads */
  int64_t kv_group; /* varlen: adjacent kv heads per grid block (they share cache lines in NHD layouts) */
  int32_t bf16_dot; /* AVX-512: bf16 queries over bf16/fp8 caches use vdpbf16ps (else widen to fp32 + FMA) */
  int32_t pad_;
  /* paged */
  int64_t partition_size; /* 0: v1, one partition covering the sequence; v2: 512 */
  int64_t max_partitions; /* v2: partitions per sequence in the grid */
  int64_t max_context;    /* longest sequence */
  float *exp_sums;        /* v2: [num_seqs, num_heads, partitions] */
  float *max_logits;
  int64_t part_strides[3]; /* of exp_sums and max_logits */
  void *tmp_out;           /* v2: [num_seqs, num_heads, partitions, head_size] */
  int64_t tmp_out_strides[4];
} xk_attn_args;

/* merge_attn_states: outputs [tokens, heads, head_size], LSEs [heads, tokens]. */
typedef struct xk_merge_args {
  int32_t dtype; /* F32, F16 or BF16, all three outputs */
  int32_t pad_;
  int64_t num_tokens, num_heads, head_size;
  void *output;
  int64_t out_strides[2];
  const void *prefix_output;
  int64_t prefix_strides[2];
  const void *suffix_output;
  int64_t suffix_strides[2];
  const float *prefix_lse;
  int64_t prefix_lse_strides[2];
  const float *suffix_lse;
  int64_t suffix_lse_strides[2];
  float *output_lse; /* NULL or [heads, tokens] */
  int64_t output_lse_strides[2];
} xk_merge_args;

/* rms_norm and fused_add_rms_norm: one grid block = a range of rows.
 * rms_norm:  out[r] = input[r] * rsqrt(mean(input[r]^2) + eps) * weight.
 * fused (residual != NULL): residual[r] = round(input[r] + residual[r]), then
 * out[r] = rms_norm(residual[r]); the launcher passes out == input. */
typedef struct xk_rms_norm_args {
  void *out;             /* host, [rows, hidden_size], row stride out_stride */
  const void *input;     /* host, [rows, hidden_size], row stride input_stride */
  void *residual;        /* host or NULL, [rows, hidden_size], row stride residual_stride */
  const void *weight;    /* host, [hidden_size], contiguous */
  int64_t out_stride, input_stride, residual_stride; /* elements between rows */
  int64_t hidden_size;
  int32_t dtype;         /* xk_dtype of out, input and residual (F32/F16/BF16) */
  int32_t weight_dtype;  /* F32/F16/BF16 */
  float epsilon;
} xk_rms_norm_args;

/* rotary_embedding, in place on query and key: one grid block = a range of tokens. */
typedef struct xk_rotary_args {
  const void *positions;      /* host, [tokens] int32 or int64, element stride positions_stride */
  int64_t positions_stride;
  int32_t positions_is_i64;
  int32_t is_neox;            /* 1: pairs (i, i + rot_dim/2); 0 (GPT-J): pairs (2i, 2i + 1) */
  void *query;                /* host, [tokens, num_heads, head_size], head_size contiguous */
  int64_t query_stride_token, query_stride_head, num_heads;
  void *key;                  /* host or NULL, [tokens, num_kv_heads, head_size] */
  int64_t key_stride_token, key_stride_head, num_kv_heads;
  int32_t dtype;              /* xk_dtype of query and key (F32/F16/BF16) */
  int32_t cache_dtype;        /* xk_dtype of cos_sin_cache (F32/F16/BF16) */
  const void *cos_sin_cache;  /* host, [max_position, rot_dim]: cos in [0, rot_dim/2), sin after */
  int64_t cache_stride;       /* elements between cache rows */
  int64_t rot_dim;            /* even, <= head_size; dims past it are left alone */
} xk_rotary_args;

/* silu_and_mul: out[r, i] = silu(input[r, i]) * input[r, d + i]; one grid block = a range of rows. */
typedef struct xk_silu_and_mul_args {
  void *out;          /* host, [rows, d], row stride out_stride */
  const void *input;  /* host, [rows, 2 * d], row stride input_stride */
  int64_t out_stride, input_stride;
  int64_t d;
  int32_t dtype;      /* xk_dtype of out and input (F32/F16/BF16) */
} xk_silu_and_mul_args;

/* Machine probes used by the benchmarks to measure this machine's limits. */
typedef struct xk_probe_result {
  double value; /* a checksum, so the compiler cannot drop the work */
} xk_probe_result;

/* ---- sampling (issue 6) -------------------------------------------------
 * Per-row outcome of a sampling or filter kernel; the launcher turns a
 * non-zero status into a named error before it writes any output. */
typedef enum xk_row_status {
  XK_ROW_OK = 0,
  XK_ROW_NAN = 1,       /* a NaN in the row */
  XK_ROW_POS_INF = 2,   /* +inf (logits, or logits / temperature), or inf in probs */
  XK_ROW_NEGATIVE = 3,  /* a negative probability */
  XK_ROW_NO_FINITE = 4, /* logits: every value is -inf */
} xk_row_status;

/* FlashInfer's samplers and vLLM's fused sampler: one output row per grid block.
 * The filters and the draw are defined in xpu_src/cpu/sampling.c. */
typedef struct xk_sample_args {
  const void *x;              /* host, [num_rows, vocab] logits or probs, rows x_row_stride apart */
  int64_t x_row_stride;       /* elements */
  int32_t x_dtype;            /* F32/F16/BF16 */
  int32_t is_logits;          /* 1: weights are softmax(y); 0: probs */
  int64_t vocab;              /* 1 <= vocab < 2^24 */
  const int64_t *row_index;   /* [batch] input row of each output row */
  const float *penalized;     /* NULL or [batch, vocab] f32: rows read instead of x where row_penalized[b] */
  const uint8_t *row_penalized;
  const float *temperature;   /* NULL or [batch]: y = x / temperature (logits) */
  const uint8_t *greedy;      /* NULL or [batch]: 1 = argmax of the (penalized) row */
  const int32_t *top_k;       /* NULL or [batch]: 0 = off, else 1 <= k < vocab */
  const float *top_p;         /* NULL or [batch]: in (0, 1]; 1 = off */
  const float *min_p;         /* NULL or [batch]: in [0, 1]; 0 = off */
  int32_t joint;              /* top-p mass over the whole row (FlashInfer "joint") */
  const uint64_t *seed;       /* [batch] Philox key */
  const uint64_t *offset;     /* [batch] Philox offset (32-bit words) */
  const uint64_t *subsequence;/* [batch] Philox counter high half */
  int64_t *samples;           /* [batch] out */
  int32_t *status;            /* [batch] out, xk_row_status */
  double *mass;               /* [batch] out: probs rows, sum of trunc(p * 2^40) / 2^40 */
  int32_t num_logprobs;       /* < 0: no logprobs; else top-n of the raw row */
  int64_t *logprob_ids;       /* [batch, num_logprobs + 1]: sampled token, then the top-n */
  float *logprobs;            /* [batch, num_logprobs + 1] */
  int64_t *ranks;             /* [batch]: #{j : raw y_j >= raw y_sampled} */
  int64_t cap;                /* candidate buffer entries per workspace */
} xk_sample_args;

/* top_k_renorm_probs, top_p_renorm_probs, top_k_mask_logits: a read-only
 * phase (threshold and kept sum per row), then a write phase. */
typedef struct xk_filter_args {
  const void *x;              /* host, [rows, vocab] */
  int64_t x_row_stride;
  int32_t x_dtype;
  int32_t is_logits;
  int64_t vocab;
  const int32_t *top_k;       /* NULL or [rows], as xk_sample_args */
  const float *top_p;         /* NULL or [rows] */
  uint32_t *threshold;        /* [rows] phase 1 out: kept iff key(y) >= threshold */
  double *kept_sum;           /* [rows] phase 1 out: fp64 sum of kept probs */
  int32_t *status;            /* [rows] phase 1 out */
  double *mass;               /* [rows] phase 1 out (probs) */
  void *out;                  /* host, [rows, vocab], phase 2 */
  int64_t out_row_stride;
  int32_t out_dtype;
  int64_t cap;
} xk_filter_args;

/* Workspace bytes one sample_rows / filter_rows call needs for `cap` candidates. */
int64_t xk_sampling_workspace_bytes(int64_t cap);

typedef struct xk_kernel_table {
  const char *name;
  /* Writes tokens [token_begin, token_end) of a->slot_mapping. */
  void (*kv_write)(const xk_kv_write_args *a, int64_t token_begin, int64_t token_end);
  /* Layer ops: each computes rows (tokens) [begin, end). */
  void (*rms_norm)(const xk_rms_norm_args *a, int64_t row_begin, int64_t row_end);
  void (*rotary_embedding)(const xk_rotary_args *a, int64_t token_begin, int64_t token_end);
  void (*silu_and_mul)(const xk_silu_and_mul_args *a, int64_t row_begin, int64_t row_end);
  /* Sums n floats with wide loads: the DRAM read probe. */
  double (*probe_read)(const float *src, int64_t n);
  /* Runs `iters` rounds of independent FMA chains; returns the flops done. */
  double (*probe_fma)(int64_t iters, xk_probe_result *sink);
  /* Attention: bytes of workspace one call of attn_paged / attn_varlen needs. */
  int64_t (*attn_workspace)(const xk_attn_args *a);
  /* Grid blocks (sequence, kv head, partition) in [begin, end). */
  void (*attn_paged)(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end);
  /* paged_attention_v2 reduction: grid blocks (sequence, head). */
  void (*attn_paged_reduce)(const xk_attn_args *a, int64_t begin, int64_t end);
  /* Grid blocks (work item, kv head). */
  void (*attn_varlen)(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end);
  /* Grid blocks (token, head). */
  void (*merge_attn_states)(const xk_merge_args *a, int64_t begin, int64_t end);
  /* Runs `iters` rounds of independent vdpbf16ps chains (bf16 dot-product
   * peak for the attention benchmarks); returns the flops done, 0 on tiers
   * without AVX512_BF16. */
  double (*attn_probe_bf16_dot)(int64_t iters, xk_probe_result *sink);
  /* Sampling (issue 6). Rows [row_begin, row_end) of the batch. */
  void (*sample_rows)(const xk_sample_args *a, int64_t row_begin, int64_t row_end, void *workspace);
  void (*filter_rows)(const xk_filter_args *a, int64_t row_begin, int64_t row_end, void *workspace);
  void (*filter_apply)(const xk_filter_args *a, int64_t row_begin, int64_t row_end);
  /* Philox4x32 with `rounds` rounds (10 for Philox4x32-10): out = f(ctr[4], key[2]). */
  void (*philox4x32)(const uint32_t *ctr, const uint32_t *key, int32_t rounds, uint32_t *out);
  /* The tier's exp kernels on arrays: e32 = expf_spec(d32) for d32 in [-27.8, 0],
   * e64 = exp_spec(d64) for d64 in [-700, 0]; vector lanes where the tier has them. */
  void (*sampling_exp_probe)(const float *d32, float *e32, int64_t n32, const double *d64, double *e64,
                             int64_t n64);
} xk_kernel_table;

/* One table per tier; only the tiers of the target architecture are built
 * (x86-64: generic, avx2, avx512; aarch64: generic, neon). */
extern const xk_kernel_table xk_kernels_generic;
extern const xk_kernel_table xk_kernels_avx2;
extern const xk_kernel_table xk_kernels_avx512;
extern const xk_kernel_table xk_kernels_neon;

/* Scalar conversions shared with the Rust side (tests check them bit for bit). */
float xk_fp8_to_f32(uint8_t v, int32_t fp8_dtype);
uint8_t xk_f32_to_fp8(float v, int32_t fp8_dtype);

#ifdef __cplusplus
}
#endif

#endif /* XOPS_KERNELS_H */
