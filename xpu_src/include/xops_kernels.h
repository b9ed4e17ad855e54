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
  int32_t fast;     /* the decode fast path may run (AVX2; AVX-512 with VBMI; bf16/fp8 caches, see attention.c) */
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

/* ---- linear attention: causal_conv1d, gated delta rule (issue 4) -------- */

/* Element type of an index tensor (query_start_loc, cache indices, flags). */
typedef enum xk_la_index_dtype {
  XK_LA_I32 = 0,
  XK_LA_I64 = 1,
  XK_LA_BOOL = 2, /* one byte, 0 or 1 */
} xk_la_index_dtype;

/* A host vector of indices: element i at data + i * stride (elements). data == NULL: absent. */
typedef struct xk_la_index {
  const void *data;
  int64_t stride;
  int32_t dtype; /* xk_la_index_dtype */
} xk_la_index;

/*
 * causal_conv1d_fn and causal_conv1d_update. Sequence n's token t, channel c is
 *   x[n * x_stride_seq + (start(n) + t) * x_stride_tok + c * x_stride_dim]
 * with start(n) = query_start_loc[n] (0 without it) and length
 * query_start_loc[n + 1] - start(n) (seqlen without it).
 * Grid block b = n * num_channel_tiles + tile covers channels
 * [tile * channel_tile, min(dim, (tile + 1) * channel_tile)) of sequence n.
 */
typedef struct xk_conv1d_args {
  const void *x; /* host, read; may equal out (in place, same strides) */
  int32_t x_dtype;
  int64_t x_stride_seq, x_stride_tok, x_stride_dim;
  void *out;
  int32_t out_dtype;
  int64_t out_stride_seq, out_stride_tok, out_stride_dim;
  const void *weight; /* [dim, width] */
  int32_t weight_dtype;
  int64_t weight_stride_dim, weight_stride_width;
  const void *bias; /* [dim] or NULL */
  int32_t bias_dtype;
  int64_t bias_stride;
  void *conv_states; /* [cache_lines, dim, state_len], any strides */
  int32_t state_dtype;
  int64_t state_stride_line, state_stride_dim, state_stride_tok;
  int64_t dim, width; /* width in 2..6 */
  int64_t seqlen;     /* tokens per sequence when query_start_loc is absent */
  xk_la_index query_start_loc;     /* [B + 1] or absent */
  xk_la_index cache_indices;       /* [B] cache line of sequence n; absent: line n */
  xk_la_index has_initial_state;   /* [B]; absent: load_state_default */
  xk_la_index num_accepted_tokens; /* [B]; present: spec-decode shift */
  int32_t load_state_default;
  int32_t silu;
  int64_t pad_slot_id; /* a cache index equal to it skips the sequence */
  int64_t channel_tile; /* scratch holds (2 * width + 3) * round_up(channel_tile, 32) + 16 floats */
  int64_t num_channel_tiles;
} xk_conv1d_args;


/* fused_gdn_gating, per row (token) t and value head h:
 *   g[t, h] = -exp(A_log[h]) * softplus(a[t, h] + dt_bias[h]),  beta_output[t, h] = sigmoid(b[t, h])
 * softplus(x) = log(1 + exp(beta x)) / beta, or x where beta x > threshold. */
typedef struct xk_gdn_gating_args {
  const void *a_log;
  int32_t a_log_dtype;
  int64_t a_log_stride;
  const void *a;
  int32_t a_dtype;
  int64_t a_stride_row, a_stride_head;
  const void *b;
  int32_t b_dtype;
  int64_t b_stride_row, b_stride_head;
  const void *dt_bias;
  int32_t dt_bias_dtype;
  int64_t dt_bias_stride;
  void *g;
  int32_t g_dtype;
  int64_t g_stride_row, g_stride_head;
  void *beta_output;
  int32_t beta_dtype;
  int64_t beta_stride_row, beta_stride_head;
  int64_t num_heads;
  float softplus_beta, threshold;
} xk_gdn_gating_args;

/* Row r of a two-level row view starts at (r / inner) * outer_stride + (r % inner) * stride. */
typedef struct xk_rows {
  int64_t stride, inner, outer_stride;
} xk_rows;

/* l2norm over rows of n contiguous elements: y = x / sqrt(sum(x^2) + eps). */
typedef struct xk_l2norm_args {
  const void *x;
  int32_t x_dtype;
  xk_rows x_rows;
  void *out; /* may equal x (same strides) */
  int32_t out_dtype;
  xk_rows out_rows;
  int64_t n;
  float eps;
} xk_l2norm_args;

/* rms_norm_gated over rows of n contiguous elements in groups of group_size:
 * norm_before_gate: y = x * rstd(x) * w (+ b), then y *= silu(z);
 * otherwise:        x' = x * silu(z), y = x' * rstd(x') * w (+ b).
 * rstd(v) = 1 / sqrt(mean(v^2) over the group + eps). z == NULL: no gate. */
typedef struct xk_rms_norm_gated_args {
  const void *x;
  int32_t x_dtype;
  xk_rows x_rows;
  const void *z;
  int32_t z_dtype;
  xk_rows z_rows;
  const void *weight;
  int32_t weight_dtype;
  int64_t weight_stride;
  const void *bias; /* NULL: none */
  int32_t bias_dtype;
  int64_t bias_stride;
  void *out; /* may equal x or z (same strides) */
  int32_t out_dtype;
  xk_rows out_rows;
  int64_t n, group_size;
  float eps;
  int32_t norm_before_gate;
} xk_rms_norm_gated_args;

/* One [B, T, heads, dim] input of the gated delta rule: element (sequence n,
 * token t, head h, i) at data + n * s_seq + t * s_tok + h * s_head + i. For
 * g and beta ([B, T, HV]) i is always 0. */
typedef struct xk_gdn_tensor {
  const void *data;
  int32_t dtype;
  int64_t s_seq, s_tok, s_head;
} xk_gdn_tensor;

/*
 * fused_recurrent_gated_delta_rule and chunk_gated_delta_rule. Grid block
 * b = n * HV + hv runs sequence n (tokens [cu_seqlens[n], cu_seqlens[n+1]) of
 * batch row 0, or all seqlen tokens of batch row n without cu_seqlens) for
 * value head hv, which reads q/k head hv / (HV / H). Per token:
 *   S = exp(g) S;  d = beta (v - S k);  S += d k^T;  o = S q   (S is [V, K])
 * with q, k optionally l2-normalised (eps 1e-6) and q scaled by `scale`.
 * The state pool is fp32 [slots, HV, V, K] with any strides.
 */
typedef struct xk_gdn_args {
  xk_gdn_tensor q, k, v, g, beta; /* beta.data == NULL: beta = 1 */
  void *o;                        /* [B, T, HV, V] */
  int32_t o_dtype;
  int64_t o_s_seq, o_s_tok, o_s_head;
  float *state; /* NULL (chunk only): zero initial state, nothing stored */
  int64_t state_s_slot, state_s_head, state_s_v, state_s_k;
  int64_t num_seqs, seqlen;
  int64_t num_heads, num_v_heads, head_k_dim, head_v_dim; /* H, HV, K, V */
  float scale;
  int32_t use_qk_l2norm;
  xk_la_index cu_seqlens; /* [N + 1] or absent */
  /* Slots: absent -> slot n. Rank 1 [N]: read and written in place.
   * Rank 2 [N, cols] (recurrent only): read at column num_accepted_tokens[n] - 1
   * (0 without it); the state after token t is stored at column t. A negative
   * read slot skips the sequence (its outputs are zeroed); a negative column-t
   * slot just skips that snapshot. */
  const void *state_indices;
  int32_t state_indices_dtype; /* XK_LA_I32 or XK_LA_I64 */
  int64_t idx_s_seq, idx_s_tok;
  int32_t indices_2d;
  xk_la_index num_accepted_tokens; /* recurrent, rank-2 indices only */
  xk_la_index has_initial_state;   /* chunk: absent -> all true */
  int32_t output_final_state;      /* chunk: write the final state back */
} xk_gdn_args;
/* ---- FC / GEMM: linear, weight-only int4/int8, W8A8 int8 (gemm.c, quant.c) ---- */

/* What the weight operand of a linear holds. */
typedef enum xk_weight_kind {
  XK_WEIGHT_DENSE = 0, /* w: [N, K] elements of w_dtype (f32/f16/bf16), K contiguous */
  XK_WEIGHT_INT4 = 1,  /* w: [N, 64 * ceil(K/128)] bytes of 4-bit codes in the blocked order of gemm.c */
  XK_WEIGHT_INT8 = 2,  /* w: [N, K] bytes of 8-bit unsigned codes */
  XK_WEIGHT_PACKED_AMX = 3,   /* w: bf16 AMX tiles, see XK_AMX_PACK_KC (amx tier only) */
  XK_WEIGHT_PACKED_PANEL = 4, /* w: f32 panels of the tier's NR columns, see XK_PANEL_KC (avx2/avx512) */
  XK_WEIGHT_PACKED_AMX3 = 5,  /* w: an f32 weight split into 3 bf16 parts, see XK_AMX_PACK_KC (amx tier only) */
} xk_weight_kind;

/* Pre-packed weights (PackedLinearWeight). XK_WEIGHT_PACKED_AMX: K in blocks
 * of XK_AMX_PACK_KC (the last one shorter, K zero-padded to 32), N in blocks
 * of 32 rows (zero-padded); block (kb, nb) holds its steps of 32 k back to
 * back, each step two 1 KiB VNNI tiles (weight rows nb*32 + 0..15, then
 * 16..31; tile row u holds, for each of its 16 weight rows j, the bf16 pair
 * k = 2u, 2u + 1 of the step); kb major: block (kb, nb) starts at byte
 * 2048 * (kb * (XK_AMX_PACK_KC / 32) * ceil(N / 32) + nb * steps(kb)).
 * XK_WEIGHT_PACKED_PANEL: K in blocks of XK_PANEL_KC, N padded to NR; block
 * kb starts at float kb * XK_PANEL_KC * Npad and holds Npad / NR panels
 * [kl][NR] f32 (element (k, j) of panel p at p * kl * NR + k * NR + j).
 * XK_WEIGHT_PACKED_AMX3 (f32 x and weights on the tile unit): each f32 w is
 * split exactly as w = b0 + b1 + b2 (bf16 parts, see amx.c), the three parts
 * stored back to back, each in the XK_WEIGHT_PACKED_AMX layout
 * (2048 * ceil(K/32) * ceil(N/32) bytes a part); xp holds x's four parts
 * (a0, a0 with non-finite values zeroed, a1, a2) the same way. */
#define XK_AMX_PACK_KC 512
#define XK_PANEL_KC 256

/* y[m][n] = sum_k x[m][perm ? perm[k] : k] * w[n][k] (+ bias[n]); quantized
 * weights dequantize as w = (code - zero) * scale per (n, k / group_size). */
typedef struct xk_linear_args {
  int64_t m, n, k;
  const void *x;          /* host, [M, K] of x_dtype, row stride x_stride elements, K contiguous */
  int64_t x_stride;
  int32_t x_dtype;
  const int32_t *perm;    /* host, [K] input-channel permutation (act-order), or NULL */
  float *xf;              /* host, [M, K] f32 activations for linear_gemv (row stride xf_stride); */
  int64_t xf_stride;      /*   linear_prep writes it, or it points at an f32 x without perm */
  const void *w;          /* host, see xk_weight_kind; w_stride in elements (dense) or bytes (codes) */
  int64_t w_stride;
  int32_t w_dtype;        /* dense weights: F32/F16/BF16 */
  int32_t w_kind;         /* xk_weight_kind */
  const void *scales;     /* host, [N, K / group_size] of sz_dtype (quantized only) */
  const void *zeros;      /* host, same shape and dtype as scales, or NULL: zero = 2^(bits-1) */
  int64_t sz_stride;      /* row stride of scales and zeros, elements */
  int32_t sz_dtype;
  int64_t group_size;
  const void *bias;       /* host, [N] of bias_dtype, or NULL */
  int32_t bias_dtype;
  void *out;              /* host, [M, N] of out_dtype, row stride out_stride elements */
  int64_t out_stride;
  int32_t out_dtype;
  /* Tiled GEMM: set by linear_gemm_plan; a tile is tile_m rows x tile_n columns of out. */
  int64_t tile_m, tile_n;
  int32_t bf16_pairs;     /* 1: bf16 x and w through the vdpbf16ps microkernel */
  int32_t no_prefetch;    /* kernel-internal: 1 when w is an L1 copy (no row prefetch) */
  void *xp;               /* XK_WEIGHT_PACKED_AMX: x packed by linear_pack_x (the weight's block order
                           * over M padded to 32 rows; each tile 16 x rows of 32 consecutive bf16 k),
                           * ceil(M/32) * 32 * ceil(K/32) * 64 bytes */
} xk_linear_args;

/* scaled_int8_quant: out = saturate(round_even(x / scale) (+ azp)), per token or static. */
typedef struct xk_int8_quant_args {
  int64_t m, k;
  const void *x;          /* host, [M, K] of x_dtype, row stride x_stride, K contiguous */
  int64_t x_stride;
  int32_t x_dtype;
  int8_t *out;            /* host, [M, K], row stride out_stride */
  int64_t out_stride;
  float *scale;           /* host: static, [1] read; dynamic, [M] written (stride scale_stride) */
  int32_t *azp;           /* host: NULL (symmetric), else like scale */
  int64_t scale_stride, azp_stride;
  int32_t is_static;
} xk_int8_quant_args;

/* out[m][n] = a_scale[m] * b_scale[n] * (sum_k a[m][k] * b[n][k] - azp[m] * azp_adj[n]) + bias[n];
 * without azp, azp_adj[n] alone is subtracted (per-tensor azp folded in by the caller). */
typedef struct xk_int8_mm_args {
  int64_t m, n, k;
  const int8_t *a;        /* host, [M, K], row stride a_stride bytes */
  int64_t a_stride;
  const int8_t *b;        /* host, [N, K] (upstream's column-major [K, N]), row stride b_stride bytes */
  int64_t b_stride;
  const float *a_scales;  /* host, [M] (stride a_scales_stride) or [1] (stride 0) */
  int64_t a_scales_stride;
  const float *b_scales;  /* host, [N] or [1], like a_scales */
  int64_t b_scales_stride;
  const int32_t *azp_adj; /* host, [N] or NULL */
  const int32_t *azp;     /* host, [M] (stride azp_stride) or NULL */
  int64_t azp_stride;
  const int32_t *a_sum;   /* host, [M]: sum_k a[m][k], for tiers that flip b to unsigned */
  const void *bias;       /* host, [N] of bias_dtype, or NULL */
  int32_t bias_dtype;
  void *out;              /* host, [M, N] of out_dtype, row stride out_stride */
  int64_t out_stride;
  int32_t out_dtype;
} xk_int8_mm_args;
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
  /* causal_conv1d: grid blocks [block_begin, block_end) of xk_conv1d_args;
   * `scratch` is private to the caller (see channel_tile). */
  void (*causal_conv1d)(const xk_conv1d_args *a, float *scratch, int64_t block_begin, int64_t block_end);
  /* Rows [row_begin, row_end) of the elementwise GDN helpers. */
  void (*gdn_gating)(const xk_gdn_gating_args *a, int64_t row_begin, int64_t row_end);
  void (*l2norm)(const xk_l2norm_args *a, int64_t row_begin, int64_t row_end);
  void (*rms_norm_gated)(const xk_rms_norm_gated_args *a, int64_t row_begin, int64_t row_end);
  /* Gated delta rule, grid blocks [block_begin, block_end). `scratch` holds
   * gdn_scratch_floats(head_k_dim, head_v_dim, chunked) floats private to the caller,
   * with chunked = 0 for gdn_recurrent and min(block_end - block_begin, HV) for gdn_chunk. */
  void (*gdn_recurrent)(const xk_gdn_args *a, float *scratch, int64_t block_begin, int64_t block_end);
  void (*gdn_chunk)(const xk_gdn_args *a, float *scratch, int64_t block_begin, int64_t block_end);
  int64_t (*gdn_scratch_floats)(int64_t head_k_dim, int64_t head_v_dim, int32_t chunked);
  /* FC / GEMM (gemm.c, quant.c). */
  /* Writes xf rows [m_begin, m_end): x converted to f32, perm applied. */
  void (*linear_prep)(const xk_linear_args *a, int64_t m_begin, int64_t m_end);
  /* Decode regime (M <= 16): out columns [n_begin, n_end) for every row, weights streamed once. */
  void (*linear_gemv)(const xk_linear_args *a, int64_t n_begin, int64_t n_end);
  /* Sets tile_m / tile_n / bf16_pairs for `threads` workers; returns workspace bytes per tile. */
  int64_t (*linear_gemm_plan)(xk_linear_args *a, int64_t threads);
  /* Tiles [tile_begin, tile_end) (row-tile fastest), workspace of linear_gemm_plan bytes. */
  void (*linear_gemm)(const xk_linear_args *a, int64_t tile_begin, int64_t tile_end, void *workspace);
  /* Packs the dense weight a->w into the layout a->w_kind names (PACKED_AMX: 32-row blocks
   * [begin, end); PACKED_PANEL: NR-column panels [begin, end)) at dst. */
  void (*linear_pack_w)(const xk_linear_args *a, int64_t begin, int64_t end, void *dst);
  /* PACKED_AMX: packs x rows of 32-row blocks [begin, end) into a->xp. */
  void (*linear_pack_x)(const xk_linear_args *a, int64_t begin, int64_t end);
  /* PACKED_AMX3 (amx tier; NULL elsewhere): splits and packs the f32 dense weight a->w's
   * 32-row blocks [begin, end) at dst; returns how many weights were not finite. */
  int64_t (*linear_pack_w3)(const xk_linear_args *a, int64_t begin, int64_t end, void *dst);
  /* Rows [m_begin, m_end) of scaled_int8_quant. */
  void (*int8_quant)(const xk_int8_quant_args *a, int64_t m_begin, int64_t m_end);
  /* Out columns [n_begin, n_end) of the int8 x int8 GEMM, every row. */
  void (*int8_mm)(const xk_int8_mm_args *a, int64_t n_begin, int64_t n_end);
  /* bf16 dot-product throughput (vdpbf16ps where the tier has it); returns flops done. */
  double (*probe_bf16dot)(int64_t iters, xk_probe_result *sink);
  /* bf16 peak: independent vdpbf16ps chains (avx512) or TDPBF16PS tiles (amx);
   * returns the flops done. NULL on tiers without a bf16 dot instruction. */
  double (*probe_bf16)(int64_t iters, xk_probe_result *sink);
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

/* AMX (xpu_src/cpu/amx, x86-64 builds whose compiler has -mamx-tile/-mamx-bf16).
 * xk_amx_request_permission: 0 once the OS enables the tile state (XCR0) and
 * grants this process XTILEDATA (Linux arch_prctl), else -1; call it once,
 * after CPUID says AMX-TILE and AMX-BF16. xk_amx_table_init: *t = the avx512
 * table with the AMX kernels swapped in (call only after permission). */
int32_t xk_amx_request_permission(void);
void xk_amx_table_init(xk_kernel_table *t);

/* Scalar conversions shared with the Rust side (tests check them bit for bit). */
float xk_fp8_to_f32(uint8_t v, int32_t fp8_dtype);
uint8_t xk_f32_to_fp8(float v, int32_t fp8_dtype);

#ifdef __cplusplus
}
#endif

#endif /* XOPS_KERNELS_H */
