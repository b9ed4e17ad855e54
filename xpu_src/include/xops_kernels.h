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

/* Machine probes used by the benchmarks to measure this machine's limits. */
typedef struct xk_probe_result {
  double value; /* a checksum, so the compiler cannot drop the work */
} xk_probe_result;

/* ---- FC / GEMM: linear, weight-only int4/int8, W8A8 int8 (gemm.c, quant.c) ---- */

/* What the weight operand of a linear holds. */
typedef enum xk_weight_kind {
  XK_WEIGHT_DENSE = 0, /* w: [N, K] elements of w_dtype (f32/f16/bf16), K contiguous */
  XK_WEIGHT_INT4 = 1,  /* w: [N, 64 * ceil(K/128)] bytes of 4-bit codes in the blocked order of gemm.c */
  XK_WEIGHT_INT8 = 2,  /* w: [N, K] bytes of 8-bit unsigned codes */
} xk_weight_kind;

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

typedef struct xk_kernel_table {
  const char *name;
  /* Writes tokens [token_begin, token_end) of a->slot_mapping. */
  void (*kv_write)(const xk_kv_write_args *a, int64_t token_begin, int64_t token_end);
  /* Sums n floats with wide loads: the DRAM read probe. */
  double (*probe_read)(const float *src, int64_t n);
  /* Runs `iters` rounds of independent FMA chains; returns the flops done. */
  double (*probe_fma)(int64_t iters, xk_probe_result *sink);
  /* FC / GEMM (gemm.c, quant.c). */
  /* Writes xf rows [m_begin, m_end): x converted to f32, perm applied. */
  void (*linear_prep)(const xk_linear_args *a, int64_t m_begin, int64_t m_end);
  /* Decode regime (M <= 16): out columns [n_begin, n_end) for every row, weights streamed once. */
  void (*linear_gemv)(const xk_linear_args *a, int64_t n_begin, int64_t n_end);
  /* Sets tile_m / tile_n / bf16_pairs for `threads` workers; returns workspace bytes per tile. */
  int64_t (*linear_gemm_plan)(xk_linear_args *a, int64_t threads);
  /* Tiles [tile_begin, tile_end) (row-tile fastest), workspace of linear_gemm_plan bytes. */
  void (*linear_gemm)(const xk_linear_args *a, int64_t tile_begin, int64_t tile_end, void *workspace);
  /* Rows [m_begin, m_end) of scaled_int8_quant. */
  void (*int8_quant)(const xk_int8_quant_args *a, int64_t m_begin, int64_t m_end);
  /* Out columns [n_begin, n_end) of the int8 x int8 GEMM, every row. */
  void (*int8_mm)(const xk_int8_mm_args *a, int64_t n_begin, int64_t n_end);
  /* bf16 dot-product throughput (vdpbf16ps where the tier has it); returns flops done. */
  double (*probe_bf16dot)(int64_t iters, xk_probe_result *sink);
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
