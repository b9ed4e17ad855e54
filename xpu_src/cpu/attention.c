/*
 * Attention over paged KV caches:
 *   attn_paged         paged_attention_v1 / paged_attention_v2 partitions (vLLM)
 *   attn_paged_reduce  the v2 reduction over partitions
 *   attn_varlen        flash_attn_varlen_func with a block_table (prefill, decode, mixed)
 *   merge_attn_states  merging two partial attention results by their LSE
 *
 * A grid block owns one sequence (or a tile of its queries) and one KV head,
 * so every query head of a GQA group shares each K/V load. Keys and values
 * are staged 32 tokens at a time (XA_W), converted from the cache format,
 * into an L1-resident layout the micro-kernels stream:
 *   kT [Dp][32]  keys transposed: one vector of 32 tokens per head-dim element
 *   vt [32][Dp]  values: one row per token
 * Dp is head_size rounded up to 32; the padding is zero.
 *
 * fp32 path (every tier): QK^T and PV are register-blocked outer products,
 * a broadcast q (or p) element times a vector of k (or v), fp32 FMA.
 * bf16 path (AVX-512, bf16 queries, bf16 or fp8 caches): the staged data stays
 * bf16; kT holds (d, d+1) pairs per token and vt holds (t, t+1) pairs per
 * head-dim element, so vdpbf16ps computes both products with exact bf16 x bf16
 * products accumulated in fp32. fp8 values are exact in bf16 and f32.
 *
 * Numerics (shared by all paths): logits and softmax in fp32; fp8 K and V are
 * dequantised as fp8 * scale, with the scale applied to the fp32 dot product
 * and to the fp32 accumulator; probabilities are rounded to the query dtype
 * before P.V; the output is rounded once to the query dtype.
 */
#include <float.h>
#include <math.h>

#include "../common/convert.h"
#include "../common/simd512.h"
#include "../common/tier.h"
#include "attn_util.h"

#define XA_W 32     /* tokens per staged tile */
#define XA_VT 64    /* varlen: tokens per online-softmax step (a multiple of XA_W) */
#define XA_ALIGN 64 /* workspace regions start on cache lines */

static inline int64_t xa_min(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t xa_max(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t xa_round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

/* ---- vector primitives ---------------------------------------------------- */

#if XK_F32_LANES == 16
typedef __m512 xa_vf;
#define XA_VL 16
#define xa_vload(p) _mm512_loadu_ps(p)
#define xa_vstore(p, v) _mm512_storeu_ps(p, v)
#define xa_vset1(x) _mm512_set1_ps(x)
#define xa_vzero() _mm512_setzero_ps()
#define xa_vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define xa_vmul(a, b) _mm512_mul_ps(a, b)
#define XA_QK_NR 8 /* rows per QK register block: 8 x 2 accumulators */
#define XA_PV_NR 4 /* rows per PV register block: 4 x 4 accumulators */
#define XA_PV_NV 4
#define XA_BF16 1
#elif XK_F32_LANES == 8
typedef __m256 xa_vf;
#define XA_VL 8
#define xa_vload(p) _mm256_loadu_ps(p)
#define xa_vstore(p, v) _mm256_storeu_ps(p, v)
#define xa_vset1(x) _mm256_set1_ps(x)
#define xa_vzero() _mm256_setzero_ps()
#define xa_vfma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define xa_vmul(a, b) _mm256_mul_ps(a, b)
#define XA_QK_NR 2 /* 2 x 4 accumulators */
#define XA_PV_NR 2
#define XA_PV_NV 4
#define XA_BF16 0
#else
#define XA_BF16 0
#endif

#if XK_F32_LANES == 8
static inline __m256 xa_exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ); /* false for NaN */
  x = _mm256_max_ps(lo, x);                               /* NaN survives */
  x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  /* 2^k for k in [-126, 127] by building the exponent field. */
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(under, y);
}
#endif

/* x[i] = exp(x[i] - m) for i < n; returns the sum (fixed order for a tier). */
static float xa_exp_sum(float *x, int64_t n, float m) {
  int64_t i = 0;
  float sum = 0.0f;
#if XK_F32_LANES == 16
  const __m512 vm = _mm512_set1_ps(m);
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 e = xk_exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
    _mm512_storeu_ps(x + i, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (i < n) {
    const __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
    const __m512 e = xk_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm));
    _mm512_mask_storeu_ps(x + i, k, e);
    acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(k, e));
    i = n;
  }
  sum = _mm512_reduce_add_ps(acc);
#elif XK_F32_LANES == 8
  const __m256 vm = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 e = xa_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  if (i < n) { /* the tail in its lanes, so element i always lands in lane i % 8 */
    float t[8];
    for (int j = 0; j < 8; j++) t[j] = i + j < n ? x[i + j] : -INFINITY;
    const __m256 e = xa_exp8(_mm256_sub_ps(_mm256_loadu_ps(t), vm));
    _mm256_storeu_ps(t, e);
    for (int j = 0; i + j < n; j++) x[i + j] = t[j];
    acc = _mm256_add_ps(acc, e);
    i = n;
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, acc);
  for (int j = 0; j < 8; j++) sum += lanes[j];
#endif
  for (; i < n; i++) {
    x[i] = expf(x[i] - m);
    sum += x[i];
  }
  return sum;
}

/* max(init, x[0..n)), NaN elements ignored (as fmaxf). */
static float xa_max_row(const float *x, int64_t n, float init) {
  int64_t i = 0;
  float m = init;
#if XK_F32_LANES == 16
  __m512 acc = _mm512_set1_ps(init);
  for (; i + 16 <= n; i += 16) acc = _mm512_max_ps(_mm512_loadu_ps(x + i), acc);
  if (i < n) {
    const __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
    acc = _mm512_mask_max_ps(acc, k, _mm512_maskz_loadu_ps(k, x + i), acc);
    i = n;
  }
  m = _mm512_reduce_max_ps(acc);
#elif XK_F32_LANES == 8
  __m256 acc = _mm256_set1_ps(init);
  for (; i + 8 <= n; i += 8) acc = _mm256_max_ps(_mm256_loadu_ps(x + i), acc);
  float lanes[8];
  _mm256_storeu_ps(lanes, acc);
  for (int j = 0; j < 8; j++) m = lanes[j] > m ? lanes[j] : m;
#endif
  for (; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

/* x[i] = cap * tanh(x[i] / cap), through exp of a non-positive argument. */
static void xa_softcap(float *x, int64_t n, float cap) {
  int64_t i = 0;
  const float inv = 1.0f / cap;
#if XK_F32_LANES == 16
  for (; i + 16 <= n; i += 16) {
    const __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + i), _mm512_set1_ps(inv));
    const __m512 ay = _mm512_abs_ps(y);
    const __m512 e = xk_exp16(_mm512_mul_ps(ay, _mm512_set1_ps(-2.0f)));
    __m512 t = _mm512_div_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), e), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    t = _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_castps_si512(t), _mm512_and_si512(_mm512_castps_si512(y), _mm512_set1_epi32((int)0x80000000u))));
    _mm512_storeu_ps(x + i, _mm512_mul_ps(t, _mm512_set1_ps(cap)));
  }
#endif
  for (; i < n; i++) x[i] = cap * tanhf(x[i] * inv);
}

/* Rounds x[0..n) to dtype (probabilities before P.V). */
static void xa_round_to(float *x, int64_t n, int32_t dtype) {
  if (dtype == XK_F32) return;
  int64_t i = 0;
  /* f32-sized scratch: the compiler cannot see that dtype is a 16-bit type */
#if XK_F32_LANES == 16
  float tmp[16];
  for (; i + 16 <= n; i += 16) {
    xk_store16(tmp, dtype, _mm512_loadu_ps(x + i));
    _mm512_storeu_ps(x + i, xk_load16(tmp, dtype));
  }
#elif XK_F32_LANES == 8
  float tmp[8];
  for (; i + 8 <= n; i += 8) {
    xk_store8(tmp, dtype, _mm256_loadu_ps(x + i));
    _mm256_storeu_ps(x + i, xk_load8(tmp, dtype));
  }
#endif
  for (; i < n; i++) {
    float h;
    xk_store_scalar(&h, dtype, 0, x[i]);
    x[i] = xk_load_scalar(&h, dtype, 0);
  }
}

/* ---- conversion of cache / query rows -------------------------------------- */

#if XK_F32_LANES == 16
/* 16 elements of any kernel dtype as f32; lanes outside m read nothing and give 0. */
static inline __m512 xa_ld16(const void *src, int32_t dt, __mmask16 m) {
  switch (dt) {
    case XK_F32: return _mm512_maskz_loadu_ps(m, src);
    case XK_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src));
    case XK_BF16:
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src)), 16));
    case XK_F8E5M2: /* e5m2 is the top byte of an f16 */
      return _mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_maskz_loadu_epi8(m, src)), 8));
    default: { /* e4m3fn: (mag << 7) read as f16 is value * 2^-8, subnormals included */
      const __m256i w = _mm256_cvtepu8_epi16(_mm_maskz_loadu_epi8(m, src));
      const __m256i mag = _mm256_and_si256(w, _mm256_set1_epi16(0x7f));
      const __m256i h = _mm256_or_si256(_mm256_slli_epi16(mag, 7),
                                        _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8));
      const __m512 f = _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.0f));
      const __mmask16 nan = _mm256_cmpeq_epi16_mask(mag, _mm256_set1_epi16(0x7f));
      return _mm512_mask_mov_ps(f, nan, _mm512_set1_ps(NAN));
    }
  }
}
#elif XK_F32_LANES == 8
static inline __m256 xa_ld8(const void *src, int32_t dt) {
  switch (dt) {
    case XK_F32: return _mm256_loadu_ps(src);
    case XK_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)src));
    case XK_BF16:
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)src)), 16));
    case XK_F8E5M2:
      return _mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)src)), 8));
    default: {
      const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)src));
      const __m128i mag = _mm_and_si128(w, _mm_set1_epi16(0x7f));
      const __m128i h =
          _mm_or_si128(_mm_slli_epi16(mag, 7), _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x80)), 8));
      const __m256 f = _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0f));
      const __m256 nan = _mm256_castsi256_ps(_mm256_cvtepi16_epi32(_mm_cmpeq_epi16(mag, _mm_set1_epi16(0x7f))));
      return _mm256_blendv_ps(f, _mm256_set1_ps(NAN), nan);
    }
  }
}
#endif

/* dst[0..n) = src converted to f32. */
static inline void xa_to_f32(float *dst, const void *src, int32_t dt, int64_t n) {
  int64_t i = 0;
#if XK_F32_LANES > 1
  const char *s = (const char *)src;
  const int64_t es = xk_dtype_size(dt);
#endif
#if XK_F32_LANES == 16
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, xa_ld16(s + i * es, dt, 0xffff));
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(dst + i, m, xa_ld16(s + i * es, dt, m));
    i = n;
  }
#elif XK_F32_LANES == 8
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, xa_ld8(s + i * es, dt));
#endif
  for (; i < n; i++) dst[i] = xk_load_scalar(src, dt, i);
}

#if XA_BF16
/* n 16-bit elements, copied with (masked) 64-byte moves: no libc call for short rows. */
static inline void xa_copy_u16(uint16_t *dst, const void *src, int64_t n) {
  const uint16_t *s = (const uint16_t *)src;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) _mm512_storeu_si512((void *)(dst + i), _mm512_loadu_si512((const void *)(s + i)));
  if (i < n) {
    const __mmask32 m = (__mmask32)((1ull << (n - i)) - 1ull);
    _mm512_mask_storeu_epi16(dst + i, m, _mm512_maskz_loadu_epi16(m, s + i));
  }
}

/* dst[0..n) = src (bf16, or fp8 widened exactly) as bf16 bits. */
static inline void xa_to_bf16(uint16_t *dst, const void *src, int32_t dt, int64_t n) {
  if (dt == XK_BF16) {
    xa_copy_u16(dst, src, n);
    return;
  }
  const char *s = (const char *)src;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i f = _mm512_castps_si512(xa_ld16(s + i, dt, 0xffff));
    _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(f, 16)));
  }
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
    const __m512i f = _mm512_castps_si512(xa_ld16(s + i, dt, m));
    _mm256_mask_storeu_epi16(dst + i, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(f, 16)));
  }
}
#endif

/* Converts n elements into an f32 (bf = 0) or bf16 (bf = 1) buffer. */
static inline void xa_cvt(void *dst, int bf, const void *src, int32_t dt, int64_t n) {
#if XA_BF16
  if (bf) {
    xa_to_bf16((uint16_t *)dst, src, dt, n);
    return;
  }
#else
  (void)bf;
#endif
  xa_to_f32((float *)dst, src, dt, n);
}

/* ---- 16 x 16 transpose of 32-bit elements ---------------------------------- */

/* dst[j * dld + i] = src[i * sld + j] for i, j < 16. */
static void xa_tr16(const uint32_t *src, int64_t sld, uint32_t *dst, int64_t dld) {
#if XK_F32_LANES == 16
  __m512i r[16];
  for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512((const void *)(src + i * sld));
  xk_transpose16_epi32(r);
  for (int i = 0; i < 16; i++) _mm512_storeu_si512((void *)(dst + i * dld), r[i]);
#elif XK_F32_LANES == 8
  for (int bi = 0; bi < 16; bi += 8) {
    for (int bj = 0; bj < 16; bj += 8) {
      __m256 r[8], t[8];
      for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps((const float *)(src + (bi + i) * sld + bj));
      for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
      }
      for (int g = 0; g < 2; g++) {
        r[4 * g + 0] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        r[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xee);
        r[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        r[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xee);
      }
      /* r[4g + j], 128-bit lane k: column 4k + j of rows 4g .. 4g + 3 */
      for (int j = 0; j < 4; j++) {
        _mm256_storeu_ps((float *)(dst + (bj + j) * dld + bi), _mm256_permute2f128_ps(r[j], r[4 + j], 0x20));
        _mm256_storeu_ps((float *)(dst + (bj + 4 + j) * dld + bi), _mm256_permute2f128_ps(r[j], r[4 + j], 0x31));
      }
    }
  }
#else
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 16; j++) dst[j * dld + i] = src[i * sld + j];
#endif
}

/* ---- workspace --------------------------------------------------------------- */

typedef struct xa_ws {
  void *q;        /* [R][Dp] f32, or bf16 on the bf16 path */
  float *acc;     /* [R][Dp] */
  float *lg;      /* [R][L] logits, then probabilities */
  uint16_t *p16;  /* [R][L] bf16 probabilities (bf16 path) */
  float *kT;      /* [Dp][W] (bf16 path: [Dp/2][W] pairs) */
  float *vt;      /* [W][Dp] (bf16 path: [W/2][Dp] pairs) */
  float *stage;   /* [W][Dp] rows or [Dp][W] columns before a transpose */
  float *m, *l;   /* [R] running max and sum */
  int64_t *lo, *hi, *pos; /* [R] key range and position of each query row */
  int64_t R, L, Dp;
} xa_ws;

/* The paged decode's softmax of the n logits x of query head h (keys at
 * positions pos0, pos0 + 1, ... relative to the last, 0): times sc, ALiBi
 * added, normalised by the exp sum + 1e-6 as vLLM does, and (v2) the
 * partition's max logit and exp sum stored. Every paged path calls it. */
static void xa_paged_softmax(const xk_attn_args *a, float *x, int64_t n, float sc, int64_t seq, int64_t h,
                             int64_t part, int64_t pos0) {
  const float slope = a->alibi_slopes ? a->alibi_slopes[seq * a->alibi_stride_seq + h] : 0.0f;
  for (int64_t i = 0; i < n; i++) x[i] *= sc;
  if (slope != 0.0f) {
    for (int64_t i = 0; i < n; i++) x[i] += slope * (float)(pos0 + i);
  }
  const float mx = xa_max_row(x, n, -FLT_MAX);
  const float sum = xa_exp_sum(x, n, mx);
  const float inv = 1.0f / (sum + 1e-6f);
  for (int64_t i = 0; i < n; i++) x[i] *= inv;
  if (a->partition_size) {
    const int64_t o = seq * a->part_strides[0] + h * a->part_strides[1] + part * a->part_strides[2];
    a->max_logits[o] = mx;
    a->exp_sums[o] = sum;
  }
}

static int64_t xa_rows(const xk_attn_args *a) {
  return a->kind == XK_ATTN_PAGED ? a->num_heads / a->num_kv_heads : a->max_rows;
}

/* Logit columns per row: a partition, a whole sequence (v1) or a varlen step. */
static int64_t xa_cols(const xk_attn_args *a) {
  if (a->kind != XK_ATTN_PAGED) return XA_VT;
  return a->partition_size ? a->partition_size : xa_round_up(xa_max(a->max_context, 1), XA_W);
}

#if XK_F32_LANES == 16
static int xd_paged_ok(const xk_attn_args *a);
static int64_t xd_paged_nk_max(const xk_attn_args *a, int64_t L);
#elif XK_F32_LANES == 8
static int xe_paged_ok(const xk_attn_args *a);
#endif

static int64_t xa_ws_layout(const xk_attn_args *a, char *base, xa_ws *w) {
  const int64_t Dp = xa_round_up(a->head_size, XA_W), L = xa_cols(a);
  int64_t R = xa_max(xa_rows(a), 1), Lbf = L, Qw = Dp, Aw = Dp;
  int64_t kTn = Dp * XA_W;
#if XK_F32_LANES == 8
  if (a->kind == XK_ATTN_VARLEN) { /* the prefill path: rows fill whole vectors, a step of K or V rows in kT */
    R = xa_round_up(R, 8);
    kTn = Dp * XA_VT;
  }
#endif
#if XK_F32_LANES == 16
  if (a->kind == XK_ATTN_PAGED && xd_paged_ok(a)) { /* the fast path: rows of several kv heads, no bf16 copy */
    R = a->num_heads / a->num_kv_heads * xd_paged_nk_max(a, L);
    Lbf = 0;
  }
#elif XK_F32_LANES == 8
  if (a->kind == XK_ATTN_PAGED && xe_paged_ok(a)) { /* the fast path: q planes, f32 probability planes in p16 */
    Qw = 2 * Dp;
    Lbf = 4 * L;
    if (a->cache_dtype == XK_BF16) Aw = 9 * Dp + 16 + (1024 + R - 1) / R; /* + xe_pv's lanes, 4 KiB slack */
  }
#endif
  int64_t off = 0;
#define XA_TAKE(field, type, count)                                       \
  do {                                                                    \
    if (w) w->field = (type *)(base + off);                               \
    off += xa_round_up((int64_t)sizeof(type) * (int64_t)(count), XA_ALIGN); \
  } while (0)
  XA_TAKE(q, float, R * Qw);
  XA_TAKE(acc, float, R * Aw);
  XA_TAKE(lg, float, R * L);
  XA_TAKE(p16, uint16_t, R * Lbf);
  XA_TAKE(kT, float, kTn);
  XA_TAKE(vt, float, Dp * XA_W);
  XA_TAKE(stage, float, Dp * XA_W);
  XA_TAKE(m, float, R);
  XA_TAKE(l, float, R);
  XA_TAKE(lo, int64_t, R);
  XA_TAKE(hi, int64_t, R);
  XA_TAKE(pos, int64_t, R);
#undef XA_TAKE
  if (w) {
    w->R = R;
    w->L = L;
    w->Dp = Dp;
  }
  return off;
}

int64_t XK_FN(attn_workspace)(const xk_attn_args *a) { return xa_ws_layout(a, NULL, NULL); }

static inline int xa_bf16_path(const xk_attn_args *a) {
#if XA_BF16
  return a->bf16_dot && a->dtype == XK_BF16 && (a->cache_dtype == XK_BF16 || xk_is_fp8(a->cache_dtype));
#else
  (void)a;
  return 0;
#endif
}

/* ---- staging ------------------------------------------------------------------ */

typedef struct xa_src {
  const xk_attn_args *a;
  const int32_t *bt; /* this sequence's block table row */
  int64_t kvh;
  int bf;            /* bf16 path */
} xa_src;

/* Tokens [t0, t0 + n) of a tile as runs that share a cache block. */
typedef struct xa_runs {
  int64_t n, count;
  int64_t j[XA_W], len[XA_W], block[XA_W], off[XA_W];
} xa_runs;

static void xa_make_runs(const xa_src *s, int64_t t0, int64_t n, xa_runs *r) {
  const int64_t bs = s->a->block_size;
  int64_t b = t0 / bs, off = t0 % bs;
  r->n = n;
  r->count = 0;
  for (int64_t j = 0; j < n;) {
    const int64_t len = xa_min(n - j, bs - off);
    r->j[r->count] = j;
    r->len[r->count] = len;
    r->block[r->count] = (int64_t)s->bt[b * s->a->block_tables_stride_block];
    r->off[r->count++] = off;
    j += len;
    b++;
    off = 0;
  }
}

/* Cache lines of the next tile, prefetched a few at a time from inside the
 * current tile's micro-kernels so the DRAM reads overlap compute without
 * flooding the miss queues. */
#define XA_PF_MAX 1024
typedef struct xa_pf {
  const char *p[XA_PF_MAX];
  int64_t n, i;
} xa_pf;

static inline void xa_pf_step(xa_pf *pf, int k) {
  for (; k > 0 && pf->i < pf->n; k--) __builtin_prefetch(pf->p[pf->i++], 0, 2);
}

static inline void xa_pf_add(xa_pf *pf, const char *line) {
  if (pf->n < XA_PF_MAX) pf->p[pf->n++] = line;
}

/* Queues the key (value = 0) or value (value = 1) lines of tokens [t0, t0 + n). */
static void xa_pf_fill(xa_pf *pf, const xa_src *src, int64_t t0, int64_t n, int value, int64_t kvh) {
  pf->n = pf->i = 0;
  if (n <= 0) return;
  xa_src sk = *src;
  sk.kvh = kvh;
  const xa_src *s = &sk;
  const xk_attn_args *a = s->a;
  const int64_t D = a->head_size, es = xk_dtype_size(a->cache_dtype);
  const int64_t *st = value ? a->value_cache_strides : a->key_cache_strides;
  const char *cache = (const char *)(value ? a->value_cache : a->key_cache);
  xa_runs ru;
  xa_make_runs(s, t0, n, &ru);
  for (int64_t r = 0; r < ru.count; r++) {
    const int64_t blk = ru.block[r], off = ru.off[r], len = ru.len[r];
    if (a->layout == XK_LAYOUT_FLASH) {
      for (int64_t j = 0; j < len; j++) {
        const char *row = cache + (blk * st[0] + (off + j) * st[1] + s->kvh * st[2]) * es;
        for (int64_t b = 0; b < D * es; b += 64) xa_pf_add(pf, row + b);
      }
    } else if (!value) { /* [D/x][bs][x]: chunk c of the run is len * 16 contiguous bytes */
      const char *base = cache + (blk * st[0] + s->kvh * st[1] + off * st[3]) * es;
      for (int64_t c = 0; c < D / a->x; c++) {
        for (int64_t b = 0; b < len * 16; b += 64) xa_pf_add(pf, base + c * st[2] * es + b);
      }
    } else { /* [D][bs]: row d of the run is len elements */
      const char *base = cache + (blk * st[0] + s->kvh * st[1] + off * st[3]) * es;
      for (int64_t d = 0; d < D; d++) {
        const char *row = base + d * st[2] * es;
        for (int64_t b = 0; b < len * es; b += 64) xa_pf_add(pf, row + b);
        if (((uintptr_t)row & 63) + (uintptr_t)(len * es) > 64) xa_pf_add(pf, row + len * es - 1);
      }
    }
  }
}

/* What a tile prefetches while it computes: tokens [t, t + n) of K or V. */
typedef struct xa_next {
  int64_t t, n;
  int value;
  int64_t kvh;
} xa_next;

/* One query row into q[r] (zero-padded to Dp). */
static void xa_load_q(const xa_src *s, const xa_ws *w, int64_t r, const void *src) {
  const int64_t D = s->a->head_size, Dp = w->Dp;
  if (s->bf) {
    uint16_t *d = (uint16_t *)w->q + r * Dp;
    xa_cvt(d, 1, src, XK_BF16, D);
    memset(d + D, 0, (size_t)(Dp - D) * 2);
  } else {
    float *d = (float *)w->q + r * Dp;
    xa_to_f32(d, src, s->a->dtype, D);
    memset(d + D, 0, (size_t)(Dp - D) * 4);
  }
}

/* One 16-byte chunk of the paged key layout into the staging format. */
static inline void xa_cvt_chunk(char *dst, int bf, const char *src, int32_t dt) {
#if XA_BF16
  if (bf && dt == XK_BF16) {
    _mm_storeu_si128((__m128i *)dst, _mm_loadu_si128((const __m128i *)src));
    return;
  }
#endif
  xa_cvt(dst, bf, src, dt, 16 / xk_dtype_size(dt));
}

/* The run holding tokens [j, j + 16) of the tile whole, or -1. */
static inline int64_t xa_run_covering16(const xa_runs *ru, int64_t j) {
  for (int64_t r = 0; r < ru->count; r++) {
    if (ru->j[r] <= j && ru->j[r] + ru->len[r] >= j + 16) return r;
  }
  return -1;
}

/* Address of tile token j's row (flash layout) or of its slot in the block
 * (paged: element 0 of head-dim 0), or NULL past the tile's tokens. */
static inline const char *xa_token_ptr(const xa_src *s, const xa_runs *ru, int64_t j, int value) {
  const xk_attn_args *a = s->a;
  if (j >= ru->n) return NULL;
  int64_t r = 0;
  while (ru->j[r] + ru->len[r] <= j) r++;
  const int64_t *st = value ? a->value_cache_strides : a->key_cache_strides;
  const char *cache = (const char *)(value ? a->value_cache : a->key_cache);
  const int64_t off = ru->off[r] + (j - ru->j[r]), es = xk_dtype_size(a->cache_dtype);
  if (a->layout == XK_LAYOUT_FLASH) return cache + (ru->block[r] * st[0] + off * st[1] + s->kvh * st[2]) * es;
  return cache + (ru->block[r] * st[0] + s->kvh * st[1] + off * st[3]) * es;
}

#if XA_BF16
/* 32 fp8 values as 32 bf16 (exact): normals by rebiasing the exponent,
 * subnormals from a table, inf / NaN kept. */
static inline __m512i xa_fp8x32_to_bf16(__m256i bytes, int32_t dt) {
  const __m512i w = _mm512_cvtepu8_epi16(bytes);
  const __m512i mag = _mm512_and_si512(w, _mm512_set1_epi16(0x7f));
  const __m512i sign = _mm512_slli_epi16(_mm512_and_si512(w, _mm512_set1_epi16(0x80)), 8);
  __m512i r;
  if (dt == XK_F8E4M3) {
    const __m512i sub = _mm512_setr_epi32(0x3b000000, 0x3bc03b80, 0x3c203c00, 0x3c603c40, 0, 0, 0, 0, 0, 0, 0, 0,
                                          0, 0, 0, 0); /* m * 2^-9, m = 0 .. 7 */
    r = _mm512_add_epi16(_mm512_slli_epi16(mag, 4), _mm512_set1_epi16(0x3c00));
    r = _mm512_mask_mov_epi16(r, _mm512_cmplt_epu16_mask(mag, _mm512_set1_epi16(8)),
                              _mm512_permutexvar_epi16(mag, sub));
    r = _mm512_mask_mov_epi16(r, _mm512_cmpeq_epi16_mask(mag, _mm512_set1_epi16(0x7f)), _mm512_set1_epi16(0x7fc0));
  } else {
    const __m512i sub = _mm512_setr_epi32(0x37800000, 0x38403800, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                          0); /* m * 2^-16, m = 0 .. 3 */
    r = _mm512_add_epi16(_mm512_slli_epi16(mag, 5), _mm512_set1_epi16(0x3800));
    r = _mm512_mask_mov_epi16(r, _mm512_cmplt_epu16_mask(mag, _mm512_set1_epi16(4)),
                              _mm512_permutexvar_epi16(mag, sub));
    r = _mm512_mask_mov_epi16(r, _mm512_cmpeq_epi16_mask(mag, _mm512_set1_epi16(0x7c)), _mm512_set1_epi16(0x7f80));
    r = _mm512_mask_mov_epi16(r, _mm512_cmpgt_epu16_mask(mag, _mm512_set1_epi16(0x7c)), _mm512_set1_epi16(0x7fc0));
  }
  return _mm512_or_si512(r, sign);
}

/* Elements [e, e + 32) of a row (bf16 or fp8) as bf16, elements past n read as 0. */
static inline __m512i xa_load32_bf16(const char *row, int32_t dt, int64_t e, int64_t n) {
  if (e + 32 <= n) {
    if (dt == XK_BF16) return _mm512_loadu_si512((const void *)(row + 2 * e));
    return xa_fp8x32_to_bf16(_mm256_loadu_si256((const __m256i *)(row + e)), dt);
  }
  const __mmask32 m = n > e ? (__mmask32)((1ull << (n - e)) - 1ull) : 0;
  if (dt == XK_BF16) return _mm512_maskz_loadu_epi16(m, row + 2 * e);
  return _mm512_maskz_mov_epi16(m, xa_fp8x32_to_bf16(_mm256_maskz_loadu_epi8(m, row + e), dt));
}

/* 16 tokens of one block, paged keys: chunk c holds 16 bytes of a token:
 * (d, d+1) pairs 4c .. 4c+3 (bf16) or 8c .. 8c+7 (fp8). Permute the chunk's
 * 16 tokens straight into kT pair rows, columns col .. col+15. */
static void xa_stage_k_paged16(const xa_src *s, const xa_ws *w, const char *base, int64_t col) {
  const xk_attn_args *a = s->a;
  const int64_t es = xk_dtype_size(a->cache_dtype), cs = a->key_cache_strides[2] * es;
  uint32_t *kT = (uint32_t *)w->kT + col;
  if (a->cache_dtype == XK_BF16) {
    /* z_k: tokens 4k .. 4k+3 x pairs 0 .. 3 */
    const __m512i ia = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    const __m512i ib = _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
    for (int64_t c = 0; c < a->head_size / 8; c++) {
      const char *p = base + c * cs;
      const __m512i z0 = _mm512_loadu_si512((const void *)p), z1 = _mm512_loadu_si512((const void *)(p + 64));
      const __m512i z2 = _mm512_loadu_si512((const void *)(p + 128)), z3 = _mm512_loadu_si512((const void *)(p + 192));
      const __m512i t0 = _mm512_permutex2var_epi32(z0, ia, z1), t1 = _mm512_permutex2var_epi32(z0, ib, z1);
      const __m512i u0 = _mm512_permutex2var_epi32(z2, ia, z3), u1 = _mm512_permutex2var_epi32(z2, ib, z3);
      _mm512_storeu_si512((void *)(kT + (4 * c + 0) * XA_W), _mm512_shuffle_i64x2(t0, u0, 0x44));
      _mm512_storeu_si512((void *)(kT + (4 * c + 1) * XA_W), _mm512_shuffle_i64x2(t0, u0, 0xee));
      _mm512_storeu_si512((void *)(kT + (4 * c + 2) * XA_W), _mm512_shuffle_i64x2(t1, u1, 0x44));
      _mm512_storeu_si512((void *)(kT + (4 * c + 3) * XA_W), _mm512_shuffle_i64x2(t1, u1, 0xee));
    }
    return;
  }
  /* fp8: y_k = tokens 2k, 2k+1 x pairs 0 .. 7 after widening. Level 1 gathers
   * 4 tokens x 4 pairs per vector (one pair per 128-bit lane), level 2 is a
   * 4 x 4 transpose of lanes. */
  const __m512i i0 = _mm512_setr_epi32(0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27);
  const __m512i i1 = _mm512_setr_epi32(4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31);
  for (int64_t c = 0; c < a->head_size / 16; c++) {
    const char *p = base + c * cs;
    __m512i y[8];
    for (int k = 0; k < 8; k++) y[k] = xa_fp8x32_to_bf16(_mm256_loadu_si256((const __m256i *)(p + 32 * k)), a->cache_dtype);
    __m512i lo[4], hi[4]; /* lo[q]: tokens 4q .. 4q+3, lane p = pair p (0 .. 3); hi: pairs 4 .. 7 */
    for (int q = 0; q < 4; q++) {
      lo[q] = _mm512_permutex2var_epi32(y[2 * q], i0, y[2 * q + 1]);
      hi[q] = _mm512_permutex2var_epi32(y[2 * q], i1, y[2 * q + 1]);
    }
    for (int h = 0; h < 2; h++) {
      const __m512i *v = h ? hi : lo;
      const __m512i x0 = _mm512_shuffle_i32x4(v[0], v[1], 0x44), x1 = _mm512_shuffle_i32x4(v[0], v[1], 0xee);
      const __m512i z0 = _mm512_shuffle_i32x4(v[2], v[3], 0x44), z1 = _mm512_shuffle_i32x4(v[2], v[3], 0xee);
      uint32_t *row = kT + (8 * c + 4 * h) * XA_W;
      _mm512_storeu_si512((void *)(row + 0 * XA_W), _mm512_shuffle_i32x4(x0, z0, 0x88));
      _mm512_storeu_si512((void *)(row + 1 * XA_W), _mm512_shuffle_i32x4(x0, z0, 0xdd));
      _mm512_storeu_si512((void *)(row + 2 * XA_W), _mm512_shuffle_i32x4(x1, z1, 0x88));
      _mm512_storeu_si512((void *)(row + 3 * XA_W), _mm512_shuffle_i32x4(x1, z1, 0xdd));
    }
  }
}

/* 16 token rows (flash layout; NULL rows are zero) transposed into kT pair
 * rows, columns col .. col+15, 16 pairs at a time. */
static void xa_stage_k_rows16(const xa_src *s, const xa_ws *w, const char *const *rows, int64_t col) {
  const int64_t D = s->a->head_size;
  const int32_t dt = s->a->cache_dtype;
  uint32_t *kT = (uint32_t *)w->kT + col;
  for (int64_t e = 0; e < D; e += 32) {
    __m512i t[16];
    for (int i = 0; i < 16; i++) t[i] = rows[i] ? xa_load32_bf16(rows[i], dt, e, D) : _mm512_setzero_si512();
    xk_transpose16_epi32(t);
    for (int i = 0; i < 16; i++) _mm512_storeu_si512((void *)(kT + (e / 2 + i) * XA_W), t[i]);
  }
}
#endif

#if XK_F32_LANES == 16
/* fp32 path: elements [e, e + 16) of token row `row` (flash), as f32, 0 past n. */
static inline __m512 xa_row_ld16(const char *row, int32_t dt, int64_t e, int64_t n) {
  const int64_t es = xk_dtype_size(dt);
  const __mmask16 m = e + 16 <= n ? (__mmask16)0xffff : (__mmask16)((1u << (n - e)) - 1u);
  return xa_ld16(row + e * es, dt, m);
}

/* fp32 path: head-dim elements [e, e + 16) of a token of the paged key
 * layout (16-byte chunks cs bytes apart, x elements each), 0 past D. */
static inline __m512 xa_paged_ld16(const char *tok, int32_t dt, int64_t e, int64_t x, int64_t cs, int64_t D) {
  if (x == 16) return xa_ld16(tok + (e / 16) * cs, dt, 0xffff);
  if (x == 8) {
    const __m128i lo = _mm_loadu_si128((const __m128i *)(tok + (e / 8) * cs));
    const __m128i hi = e + 8 < D ? _mm_loadu_si128((const __m128i *)(tok + (e / 8 + 1) * cs)) : _mm_setzero_si128();
    const __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
    if (dt == XK_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  __m512i v = _mm512_setzero_si512(); /* x == 4: f32 */
  for (int k = 0; k < 4 && e + 4 * k < D; k++) {
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(tok + (e / 4 + k) * cs)), k);
  }
  return _mm512_castsi512_ps(v);
}

/* fp32 path: 16 tokens (NULL = missing) of keys into kT columns col .. col+15,
 * 16 head-dim rows at a time through a register transpose. */
static void xa_stage_k_f32_16(const xa_src *s, const xa_ws *w, const char *const *tok, int64_t col) {
  const xk_attn_args *a = s->a;
  const int64_t D = a->head_size, cs = a->key_cache_strides[2] * xk_dtype_size(a->cache_dtype);
  const int32_t dt = a->cache_dtype;
  const int flash = a->layout == XK_LAYOUT_FLASH;
  for (int64_t e = 0; e < D; e += 16) {
    __m512i t[16];
    for (int i = 0; i < 16; i++) {
      if (!tok[i]) {
        t[i] = _mm512_setzero_si512();
      } else {
        t[i] = _mm512_castps_si512(flash ? xa_row_ld16(tok[i], dt, e, D) : xa_paged_ld16(tok[i], dt, e, a->x, cs, D));
      }
    }
    xk_transpose16_epi32(t);
    for (int i = 0; i < 16; i++) _mm512_storeu_si512((void *)(w->kT + (e + i) * XA_W + col), t[i]);
  }
}
#endif

/* Generic: keys of tile tokens [j0, j0 + 16) as rows of the stage buffer, then
 * transposed into kT columns j0 .. j0+15. */
static void xa_stage_k_generic16(const xa_src *s, const xa_ws *w, const xa_runs *ru, int64_t j0) {
  const xk_attn_args *a = s->a;
  const int64_t D = a->head_size, Dp = w->Dp, es = xk_dtype_size(a->cache_dtype), dsz = s->bf ? 2 : 4;
  const int64_t *ks = a->key_cache_strides;
  char *stage = (char *)w->stage;
  for (int64_t j = j0; j < j0 + 16; j++) {
    char *dst = stage + j * Dp * dsz;
    const char *src = xa_token_ptr(s, ru, j, 0);
    if (!src) {
      memset(dst, 0, (size_t)(Dp * dsz));
      continue;
    }
    if (a->layout == XK_LAYOUT_FLASH) {
      xa_cvt(dst, s->bf, src, a->cache_dtype, D);
    } else {
      for (int64_t c = 0; c < D / a->x; c++) xa_cvt(dst + c * a->x * dsz, s->bf, src + c * ks[2] * es, a->cache_dtype, a->x);
    }
    memset(dst + D * dsz, 0, (size_t)((Dp - D) * dsz));
  }
  const int64_t ncol = s->bf ? Dp / 2 : Dp; /* 32-bit elements per row */
  for (int64_t cb = 0; cb < ncol; cb += 16) {
    xa_tr16((const uint32_t *)w->stage + j0 * ncol + cb, ncol, (uint32_t *)w->kT + cb * XA_W + j0, XA_W);
  }
}

/* Keys of the tile's tokens into kT ([Dp][W], or [Dp/2][W] pairs); missing
 * tokens are zero. Rows past head_size are never read. */
static void xa_stage_k(const xa_src *s, const xa_ws *w, const xa_runs *ru) {
  for (int64_t j0 = 0; j0 < XA_W; j0 += 16) {
#if XA_BF16
    if (s->bf) {
      const xk_attn_args *a = s->a;
      if (a->layout == XK_LAYOUT_FLASH) {
        const char *rows[16];
        for (int i = 0; i < 16; i++) rows[i] = xa_token_ptr(s, ru, j0 + i, 0);
        xa_stage_k_rows16(s, w, rows, j0);
        continue;
      }
      if (a->key_cache_strides[3] == a->x && xa_run_covering16(ru, j0) >= 0) {
        xa_stage_k_paged16(s, w, xa_token_ptr(s, ru, j0, 0), j0);
        continue;
      }
    }
#endif
#if XK_F32_LANES == 16
    if (!s->bf) {
      const char *tok[16];
      for (int i = 0; i < 16; i++) tok[i] = xa_token_ptr(s, ru, j0 + i, 0);
      xa_stage_k_f32_16(s, w, tok, j0);
      continue;
    }
#endif
    xa_stage_k_generic16(s, w, ru, j0);
  }
}

/* Values of the tile's tokens into vt ([W][Dp], or [W/2][Dp] pairs); missing
 * tokens and head-dim padding are zero. */
static void xa_stage_v(const xa_src *s, const xa_ws *w, const xa_runs *ru) {
  const xk_attn_args *a = s->a;
  const int64_t D = a->head_size, Dp = w->Dp, es = xk_dtype_size(a->cache_dtype), dsz = s->bf ? 2 : 4;
  const int64_t *vs = a->value_cache_strides, n = ru->n;
#if XA_BF16
  if (s->bf && a->layout == XK_LAYOUT_FLASH) {
    /* vt[tp][d] = (v[2tp][d], v[2tp+1][d]) straight from the token rows. */
    const __m512i lo_idx = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    const __m512i hi_idx = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    uint32_t *vt = (uint32_t *)w->vt;
    for (int64_t tp = 0; tp < XA_W / 2; tp++) {
      const char *ra = xa_token_ptr(s, ru, 2 * tp, 1), *rb = xa_token_ptr(s, ru, 2 * tp + 1, 1);
      for (int64_t d = 0; d < Dp; d += 32) {
        const __m512i x = ra ? xa_load32_bf16(ra, a->cache_dtype, d, D) : _mm512_setzero_si512();
        const __m512i y = rb ? xa_load32_bf16(rb, a->cache_dtype, d, D) : _mm512_setzero_si512();
        const __m512i lo = _mm512_unpacklo_epi16(x, y), hi = _mm512_unpackhi_epi16(x, y);
        _mm512_storeu_si512((void *)(vt + tp * Dp + d), _mm512_permutex2var_epi64(lo, lo_idx, hi));
        _mm512_storeu_si512((void *)(vt + tp * Dp + d + 16), _mm512_permutex2var_epi64(lo, hi_idx, hi));
      }
    }
    return;
  }
  if (s->bf && xa_run_covering16(ru, 0) >= 0 && xa_run_covering16(ru, 16) >= 0) {
    /* Paged: rows d .. d+15 of 32 tokens (two halves of 16) form a 16 x 16
     * tile of token pairs, transposed in registers into vt [pair][d]. */
    const char *b0 = xa_token_ptr(s, ru, 0, 1), *b1 = xa_token_ptr(s, ru, 16, 1);
    const int64_t rs = vs[2] * es;
    uint32_t *vt = (uint32_t *)w->vt;
    for (int64_t db = 0; db < Dp; db += 16) {
      __m512i t[16];
      for (int i = 0; i < 16; i++) {
        const int64_t d = db + i;
        if (d >= D) {
          t[i] = _mm512_setzero_si512();
        } else if (a->cache_dtype == XK_BF16) {
          const __m256i lo = _mm256_loadu_si256((const __m256i *)(b0 + d * rs));
          const __m256i hi = _mm256_loadu_si256((const __m256i *)(b1 + d * rs));
          t[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        } else {
          const __m128i lo = _mm_loadu_si128((const __m128i *)(b0 + d * rs));
          const __m128i hi = _mm_loadu_si128((const __m128i *)(b1 + d * rs));
          t[i] = xa_fp8x32_to_bf16(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1), a->cache_dtype);
        }
      }
      xk_transpose16_epi32(t);
      for (int i = 0; i < 16; i++) _mm512_storeu_si512((void *)(vt + i * Dp + db), t[i]);
    }
    return;
  }
#endif
#if XK_F32_LANES == 16
  if (!s->bf && a->layout == XK_LAYOUT_PAGED && (n == 16 || n == 32) && xa_run_covering16(ru, 0) >= 0 &&
      (n == 16 || xa_run_covering16(ru, 16) >= 0)) {
    /* Paged, fp32 path: rows d .. d+15 of each 16-token half transposed in
     * registers into vt [token][d]. Tokens past n are never read. */
    const int64_t rs = vs[2] * es;
    for (int64_t h = 0; h < n / 16; h++) {
      const char *b = xa_token_ptr(s, ru, 16 * h, 1);
      for (int64_t db = 0; db < Dp; db += 16) {
        __m512i t[16];
        for (int i = 0; i < 16; i++) {
          t[i] = db + i < D ? _mm512_castps_si512(xa_ld16(b + (db + i) * rs, a->cache_dtype, 0xffff))
                            : _mm512_setzero_si512();
        }
        xk_transpose16_epi32(t);
        for (int i = 0; i < 16; i++) _mm512_storeu_si512((void *)(w->vt + (16 * h + i) * Dp + db), t[i]);
      }
    }
    return;
  }
#endif
  if (a->layout == XK_LAYOUT_FLASH) {
    /* Token rows straight into vt (fp32 path). */
    char *rows = (char *)w->vt;
    for (int64_t r = 0; r < ru->count; r++) {
      for (int64_t j = 0; j < ru->len[r]; j++) {
        const char *src =
            (const char *)a->value_cache + (ru->block[r] * vs[0] + (ru->off[r] + j) * vs[1] + s->kvh * vs[2]) * es;
        xa_cvt(rows + (ru->j[r] + j) * Dp * dsz, s->bf, src, a->cache_dtype, D);
      }
    }
    if (Dp > D) {
      for (int64_t j = 0; j < n; j++) memset(rows + (j * Dp + D) * dsz, 0, (size_t)((Dp - D) * dsz));
    }
    if (n < XA_W) memset(rows + n * Dp * dsz, 0, (size_t)((XA_W - n) * Dp * dsz));
    return;
  }
  /* Paged: each head-dim element is a row of block_size tokens. Gather
   * columns stage[d][j] run by run, then transpose. */
  char *stage = (char *)w->stage;
  for (int64_t r = 0; r < ru->count; r++) {
    const char *base = (const char *)a->value_cache + (ru->block[r] * vs[0] + s->kvh * vs[1] + ru->off[r] * vs[3]) * es;
    for (int64_t d = 0; d < D; d++) {
      xa_cvt(stage + (d * XA_W + ru->j[r]) * dsz, s->bf, base + d * vs[2] * es, a->cache_dtype, ru->len[r]);
    }
  }
  if (n < XA_W) {
    for (int64_t d = 0; d < D; d++) memset(stage + (d * XA_W + n) * dsz, 0, (size_t)((XA_W - n) * dsz));
  }
  if (Dp > D) memset(stage + D * XA_W * dsz, 0, (size_t)((Dp - D) * XA_W * dsz));
  if (s->bf) {
    /* stage [Dp][16 pairs] -> vt [16 pairs][Dp] */
    for (int64_t db = 0; db < Dp; db += 16) {
      xa_tr16((const uint32_t *)w->stage + db * 16, 16, (uint32_t *)w->vt + db, Dp);
    }
  } else {
    for (int64_t db = 0; db < Dp; db += 16) {
      for (int64_t tb = 0; tb < XA_W; tb += 16) {
        xa_tr16((const uint32_t *)w->stage + db * XA_W + tb, XA_W, (uint32_t *)w->vt + tb * Dp + db, Dp);
      }
    }
  }
}

/* ---- micro-kernels ------------------------------------------------------------ */

/* lg[r][0..W) = q[r] . kT[:, 0..W) for r < nr (fp32 path). */
#if XK_F32_LANES > 1
#define XA_NVW (XA_W / XA_VL)
static inline __attribute__((always_inline)) void xa_qk_f32_block(const float *q, int64_t qld, const float *kT,
                                                                  int64_t D, float *lg, int64_t lld, const int nr,
                                                                  xa_pf *pf) {
  xa_vf acc[XA_QK_NR][XA_NVW];
#pragma GCC unroll 8
  for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
    for (int v = 0; v < XA_NVW; v++) acc[i][v] = xa_vzero();
  for (int64_t d = 0; d < D; d++) {
    xa_pf_step(pf, 2);
    xa_vf k[XA_NVW];
#pragma GCC unroll 4
    for (int v = 0; v < XA_NVW; v++) k[v] = xa_vload(kT + d * XA_W + v * XA_VL);
#pragma GCC unroll 8
    for (int i = 0; i < nr; i++) {
      const xa_vf qb = xa_vset1(q[i * qld + d]);
#pragma GCC unroll 4
      for (int v = 0; v < XA_NVW; v++) acc[i][v] = xa_vfma(qb, k[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
    for (int v = 0; v < XA_NVW; v++) xa_vstore(lg + i * lld + v * XA_VL, acc[i][v]);
}
#endif

static void xa_qk_f32(const float *q, int64_t qld, int64_t nrows, const float *kT, int64_t D, float *lg,
                      int64_t lld, xa_pf *pf) {
#if XK_F32_LANES > 1
  int64_t r = 0;
  for (; r + XA_QK_NR <= nrows; r += XA_QK_NR) xa_qk_f32_block(q + r * qld, qld, kT, D, lg + r * lld, lld, XA_QK_NR, pf);
#if XA_QK_NR > 4
  if (r + 4 <= nrows) {
    xa_qk_f32_block(q + r * qld, qld, kT, D, lg + r * lld, lld, 4, pf);
    r += 4;
  }
#endif
#if XA_QK_NR > 2
  if (r + 2 <= nrows) {
    xa_qk_f32_block(q + r * qld, qld, kT, D, lg + r * lld, lld, 2, pf);
    r += 2;
  }
#endif
  for (; r < nrows; r++) xa_qk_f32_block(q + r * qld, qld, kT, D, lg + r * lld, lld, 1, pf);
#else
  xa_pf_step(pf, XA_PF_MAX);
  for (int64_t r = 0; r < nrows; r++) {
    for (int64_t j = 0; j < XA_W; j++) {
      float s = 0.0f;
      for (int64_t d = 0; d < D; d++) s += q[r * qld + d] * kT[d * XA_W + j];
      lg[r * lld + j] = s;
    }
  }
#endif
}

/* acc[r][0..Dp) += sum_t p[r][t] * vt[t][0..Dp) for t < ntok (fp32 path). */
#if XK_F32_LANES > 1
static inline __attribute__((always_inline)) void xa_pv_f32_block(const float *p, int64_t pld, int64_t ntok,
                                                                  const float *vt, int64_t Dp, float *acc,
                                                                  int64_t d0, const int nr, const int nv, xa_pf *pf) {
  xa_vf a[XA_PV_NR][XA_PV_NV];
#pragma GCC unroll 4
  for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) a[i][v] = xa_vload(acc + i * Dp + d0 + v * XA_VL);
  for (int64_t t = 0; t < ntok; t++) {
    xa_pf_step(pf, 1);
    xa_vf x[XA_PV_NV];
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) x[v] = xa_vload(vt + t * Dp + d0 + v * XA_VL);
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++) {
      const xa_vf pb = xa_vset1(p[i * pld + t]);
#pragma GCC unroll 4
      for (int v = 0; v < nv; v++) a[i][v] = xa_vfma(pb, x[v], a[i][v]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) xa_vstore(acc + i * Dp + d0 + v * XA_VL, a[i][v]);
}

static inline __attribute__((always_inline)) void xa_pv_f32_rows(const float *p, int64_t pld, int64_t ntok,
                                                                 const float *vt, int64_t Dp, float *acc,
                                                                 const int nr, xa_pf *pf) {
  int64_t d0 = 0;
  for (; d0 + XA_PV_NV * XA_VL <= Dp; d0 += XA_PV_NV * XA_VL) {
    xa_pv_f32_block(p, pld, ntok, vt, Dp, acc, d0, nr, XA_PV_NV, pf);
  }
  for (; d0 < Dp; d0 += XA_VL) xa_pv_f32_block(p, pld, ntok, vt, Dp, acc, d0, nr, 1, pf);
}
#endif

static void xa_pv_f32(const float *p, int64_t pld, int64_t nrows, int64_t ntok, const float *vt, int64_t Dp,
                      float *acc, xa_pf *pf) {
#if XK_F32_LANES > 1
  int64_t r = 0;
  for (; r + XA_PV_NR <= nrows; r += XA_PV_NR) xa_pv_f32_rows(p + r * pld, pld, ntok, vt, Dp, acc + r * Dp, XA_PV_NR, pf);
#if XA_PV_NR > 2
  if (r + 2 <= nrows) {
    xa_pv_f32_rows(p + r * pld, pld, ntok, vt, Dp, acc + r * Dp, 2, pf);
    r += 2;
  }
#endif
  for (; r < nrows; r++) xa_pv_f32_rows(p + r * pld, pld, ntok, vt, Dp, acc + r * Dp, 1, pf);
#else
  xa_pf_step(pf, XA_PF_MAX);
  for (int64_t r = 0; r < nrows; r++) {
    for (int64_t t = 0; t < ntok; t++) {
      const float pr = p[r * pld + t];
      for (int64_t d = 0; d < Dp; d++) acc[r * Dp + d] += pr * vt[t * Dp + d];
    }
  }
#endif
}

#if XA_BF16
/* bf16 path: q2 [r][Dp/2] and kT2 [Dp/2][W] are (d, d+1) pairs. */
static inline __attribute__((always_inline)) void xa_qk_bf16_block(const uint32_t *q2, int64_t qld, const uint32_t *kT2,
                                                                   int64_t Dh, float *lg, int64_t lld, const int nr,
                                                                   xa_pf *pf) {
  __m512 acc[8][2];
#pragma GCC unroll 8
  for (int i = 0; i < nr; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t d = 0; d < Dh; d++) {
    xa_pf_step(pf, 2);
    const __m512bh k0 = (__m512bh)_mm512_loadu_si512((const void *)(kT2 + d * XA_W));
    const __m512bh k1 = (__m512bh)_mm512_loadu_si512((const void *)(kT2 + d * XA_W + 16));
#pragma GCC unroll 8
    for (int i = 0; i < nr; i++) {
      const __m512bh qb = (__m512bh)_mm512_set1_epi32((int)q2[i * qld + d]);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], qb, k0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], qb, k1);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < nr; i++) {
    _mm512_storeu_ps(lg + i * lld, acc[i][0]);
    _mm512_storeu_ps(lg + i * lld + 16, acc[i][1]);
  }
}

static void xa_qk_bf16(const uint32_t *q2, int64_t qld, int64_t nrows, const uint32_t *kT2, int64_t Dh, float *lg,
                       int64_t lld, xa_pf *pf) {
  int64_t r = 0;
  for (; r + 8 <= nrows; r += 8) xa_qk_bf16_block(q2 + r * qld, qld, kT2, Dh, lg + r * lld, lld, 8, pf);
  if (r + 4 <= nrows) {
    xa_qk_bf16_block(q2 + r * qld, qld, kT2, Dh, lg + r * lld, lld, 4, pf);
    r += 4;
  }
  if (r + 2 <= nrows) {
    xa_qk_bf16_block(q2 + r * qld, qld, kT2, Dh, lg + r * lld, lld, 2, pf);
    r += 2;
  }
  for (; r < nrows; r++) xa_qk_bf16_block(q2 + r * qld, qld, kT2, Dh, lg + r * lld, lld, 1, pf);
}

/* p2 [r][pairs] are (t, t+1) bf16 probability pairs, vt2 [pairs][Dp] value pairs. */
static inline __attribute__((always_inline)) void xa_pv_bf16_block(const uint32_t *p2, int64_t pld, int64_t npair,
                                                                   const uint32_t *vt2, int64_t Dp, float *acc,
                                                                   int64_t d0, const int nr, const int nv, xa_pf *pf) {
  __m512 a[4][4];
#pragma GCC unroll 4
  for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) a[i][v] = _mm512_loadu_ps(acc + i * Dp + d0 + v * 16);
  for (int64_t tp = 0; tp < npair; tp++) {
    xa_pf_step(pf, 2);
    __m512bh x[4];
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) x[v] = (__m512bh)_mm512_loadu_si512((const void *)(vt2 + tp * Dp + d0 + v * 16));
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++) {
      const __m512bh pb = (__m512bh)_mm512_set1_epi32((int)p2[i * pld + tp]);
#pragma GCC unroll 4
      for (int v = 0; v < nv; v++) a[i][v] = _mm512_dpbf16_ps(a[i][v], pb, x[v]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) _mm512_storeu_ps(acc + i * Dp + d0 + v * 16, a[i][v]);
}

static inline __attribute__((always_inline)) void xa_pv_bf16_rows(const uint32_t *p2, int64_t pld, int64_t npair,
                                                                  const uint32_t *vt2, int64_t Dp, float *acc,
                                                                  const int nr, xa_pf *pf) {
  int64_t d0 = 0;
  for (; d0 + 64 <= Dp; d0 += 64) xa_pv_bf16_block(p2, pld, npair, vt2, Dp, acc, d0, nr, 4, pf);
  for (; d0 < Dp; d0 += 16) xa_pv_bf16_block(p2, pld, npair, vt2, Dp, acc, d0, nr, 1, pf);
}

static void xa_pv_bf16(const uint32_t *p2, int64_t pld, int64_t nrows, int64_t npair, const uint32_t *vt2,
                       int64_t Dp, float *acc, xa_pf *pf) {
  int64_t r = 0;
  for (; r + 4 <= nrows; r += 4) xa_pv_bf16_rows(p2 + r * pld, pld, npair, vt2, Dp, acc + r * Dp, 4, pf);
  if (r + 2 <= nrows) {
    xa_pv_bf16_rows(p2 + r * pld, pld, npair, vt2, Dp, acc + r * Dp, 2, pf);
    r += 2;
  }
  for (; r < nrows; r++) xa_pv_bf16_rows(p2 + r * pld, pld, npair, vt2, Dp, acc + r * Dp, 1, pf);
}
#endif

/* Logits of rows [0, nrows) for tokens [t0, t0 + n) into lg[r][col0 ..],
 * prefetching `next` meanwhile. */
static void xa_qk_tile(const xa_src *s, const xa_ws *w, int64_t r0, int64_t nrows, int64_t t0, int64_t n,
                       int64_t col0, xa_next next) {
  xa_runs ru;
  xa_make_runs(s, t0, n, &ru);
  xa_stage_k(s, w, &ru);
  xa_pf pf;
  xa_pf_fill(&pf, s, next.t, next.n, next.value, next.kvh);
#if XA_BF16
  if (s->bf) {
    xa_qk_bf16((const uint32_t *)((const uint16_t *)w->q + r0 * w->Dp), w->Dp / 2, nrows, (const uint32_t *)w->kT,
               (s->a->head_size + 1) / 2, w->lg + r0 * w->L + col0, w->L, &pf);
    xa_pf_step(&pf, XA_PF_MAX);
    return;
  }
#endif
  xa_qk_f32((const float *)w->q + r0 * w->Dp, w->Dp, nrows, w->kT, s->a->head_size, w->lg + r0 * w->L + col0, w->L,
            &pf);
  xa_pf_step(&pf, XA_PF_MAX);
}

/* acc[r] += P[r][col0 .. col0 + n) . V[t0 .. t0 + n) for rows [0, nrows),
 * prefetching `next` meanwhile. */
static void xa_pv_tile(const xa_src *s, const xa_ws *w, int64_t r0, int64_t nrows, int64_t t0, int64_t n,
                       int64_t col0, xa_next next) {
  xa_runs ru;
  xa_make_runs(s, t0, n, &ru);
  xa_stage_v(s, w, &ru);
  xa_pf pf;
  xa_pf_fill(&pf, s, next.t, next.n, next.value, next.kvh);
#if XA_BF16
  if (s->bf) {
    xa_pv_bf16((const uint32_t *)(w->p16 + r0 * w->L + col0), w->L / 2, nrows, (n + 1) / 2, (const uint32_t *)w->vt,
               w->Dp, w->acc + r0 * w->Dp, &pf);
    xa_pf_step(&pf, XA_PF_MAX);
    return;
  }
#endif
  xa_pv_f32(w->lg + r0 * w->L + col0, w->L, nrows, n, w->vt, w->Dp, w->acc + r0 * w->Dp, &pf);
  xa_pf_step(&pf, XA_PF_MAX);
}

/* The tile after [st, st + W) within [t_begin, t_end), of K (value 0) or V. */
static inline xa_next xa_after(int64_t st, int64_t t_end, int value, int64_t kvh) {
  const xa_next nx = {st + XA_W, xa_min(XA_W, t_end - st - XA_W), value, kvh};
  return nx;
}

static void xa_prefetch_now(const xa_src *s, xa_next next) {
  xa_pf pf;
  xa_pf_fill(&pf, s, next.t, next.n, next.value, next.kvh);
  xa_pf_step(&pf, XA_PF_MAX);
}

/* Rounds probabilities p[0..n) of row r to the query dtype where P.V reads them;
 * the bf16 path also zero-fills the pair slots up to the next tile boundary. */
static void xa_store_probs(const xa_src *s, const xa_ws *w, int64_t r, int64_t col0, int64_t n) {
  float *p = w->lg + r * w->L + col0;
#if XA_BF16
  if (s->bf) {
    uint16_t *d = w->p16 + r * w->L + col0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) xk_store16(d + i, XK_BF16, _mm512_loadu_ps(p + i));
    for (; i < n; i++) d[i] = xk_f32_to_bf16_scalar(p[i]);
    const int64_t end = xa_min(xa_round_up(n, XA_W), w->L - col0);
    for (; i < end; i++) d[i] = 0;
    return;
  }
#endif
  xa_round_to(p, n, s->a->dtype);
}

/* Writes f32 row * f into dst (dtype). */
static void xa_write_row(void *dst, int32_t dtype, float *row, int64_t n, float f) {
  for (int64_t i = 0; i < n; i++) row[i] *= f;
  xk_convert_row(dst, dtype, row, XK_F32, n, 1.0f);
}

/* ---- decode fast path (AVX-512 + VBMI) ------------------------------------------
 *
 * Decode reads every key and value once, so it must run at DRAM speed. On
 * cores where vdpbf16ps issues at a quarter of the fp32 FMA rate the fastest
 * exact form is fp32 FMA over K and V widened in registers, laid out so that
 * no transpose is needed:
 *
 *   keys (paged [D/x][bs][x]): 64 bytes of a chunk are 4 tokens x 16 bytes.
 *     Widened, each 128-bit lane holds 4 consecutive head-dim elements of one
 *     token, so q enters as a 4-element broadcast and the accumulator lanes
 *     are (token, d mod 4) partial sums, reduced once per 16 tokens.
 *   values (paged [D][bs]): 4 rows of 16 tokens form, after widening, four
 *     vectors whose 128-bit lane L holds 4 tokens of row d + L; the
 *     probabilities enter as 4-element broadcasts and the accumulator lanes
 *     are (row, token mod 4) partial sums, reduced once per 512 tokens.
 *
 * fp8 codes become bf16 through two 128-entry byte tables (vpermt2b: exact
 * for all 256 codes, NaN included, built from xa_fp8x32_to_bf16), bf16
 * becomes f32 by a 16-bit shift (unpack with zero). Products are exact (the
 * same as the vdpbf16ps path); only the fp32 summation order differs.
 *
 * A prefetch cursor walks the cache regions in the order the kernel consumes
 * them (keys of a range, then its values, then the next grid block) a fixed
 * distance ahead, a few lines per micro-kernel iteration: the block tables
 * are shuffled, so the hardware prefetchers cannot follow.
 *
 * Used for paged_attention_v1/v2 with bf16 or fp8 caches, block_size a
 * multiple of 16, head_size a multiple of 16, standard strides, any query
 * dtype; else the general path below runs.
 */
#if XK_F32_LANES == 16
#define XD_TARGET __attribute__((target("avx512vbmi")))
#define XD_INLINE static inline __attribute__((always_inline, target("avx512vbmi")))
#define XD_G 16 /* tokens per group: one slice of a cache block */
/* MXCSR flush-to-zero and denormals-are-zero: probabilities far below the
 * maximum underflow into f32 denormals, and an FMA producing a denormal costs
 * a microcode assist (~100x a normal FMA). vdpbf16ps flushes them as well;
 * the effect on results is below 1e-38 relative. */
#define XD_FTZ_DAZ 0x8040u

/* fp8 -> bf16 byte tables for magnitudes 0..127; the sign is or-ed in. */
typedef struct xd_cvt {
  __m512i lo0, lo1, hi0, hi1, sgn;
} xd_cvt;

static XD_TARGET void xd_cvt_init(xd_cvt *t, int32_t dt) {
  __m512i lo[2], hi[2];
  for (int k = 0; k < 2; k++) {
    __m256i idx[2];
    for (int h = 0; h < 2; h++) {
      idx[h] = _mm256_add_epi8(_mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                                                21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31),
                               _mm256_set1_epi8((char)(64 * k + 32 * h)));
    }
    const __m512i w0 = xa_fp8x32_to_bf16(idx[0], dt), w1 = xa_fp8x32_to_bf16(idx[1], dt);
    lo[k] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(w0)), _mm512_cvtepi16_epi8(w1), 1);
    hi[k] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(_mm512_srli_epi16(w0, 8))),
                               _mm512_cvtepi16_epi8(_mm512_srli_epi16(w1, 8)), 1);
  }
  t->lo0 = lo[0];
  t->lo1 = lo[1];
  t->hi0 = hi[0];
  t->hi1 = hi[1];
  t->sgn = _mm512_set1_epi8((char)0x80);
}

/* 64 fp8 bytes (128-bit lane L: elements 16L .. 16L+15) as four f32 vectors:
 * f[s] lane L holds elements 16L + 4s .. 16L + 4s + 3. */
XD_INLINE void xd_fp8_f32(__m512i x, const xd_cvt *t, __m512 f[4]) {
  const __m512i lo = _mm512_permutex2var_epi8(t->lo0, x, t->lo1);
  const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(t->hi0, x, t->hi1), x, t->sgn, 0xf8);
  const __m512i wl = _mm512_unpacklo_epi8(lo, hi), wh = _mm512_unpackhi_epi8(lo, hi), z = _mm512_setzero_si512();
  f[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, wl));
  f[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, wl));
  f[2] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, wh));
  f[3] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, wh));
}

/* 32 bf16 (128-bit lane L: elements 8L .. 8L+7): f[0] lane L = 8L .. 8L+3, f[1] = 8L+4 .. 8L+7. */
XD_INLINE void xd_bf16_f32(__m512i x, __m512 f[2]) {
  const __m512i z = _mm512_setzero_si512();
  f[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, x));
  f[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, x));
}

XD_INLINE __m512 xd_bcast4(const float *p) { return _mm512_broadcast_f32x4(_mm_loadu_ps(p)); }

/* Pairwise sums: lane i < 8 = a[2i] + a[2i+1], lane 8 + i = b[2i] + b[2i+1]. */
XD_INLINE __m512 xd_hadd(__m512 a, __m512 b) {
  const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  return _mm512_add_ps(_mm512_permutex2var_ps(a, ev, b), _mm512_permutex2var_ps(a, od, b));
}

/* ---- prefetch cursor ---- */

typedef struct xd_pf {
  const xk_attn_args *a;
  int64_t b, end;            /* next grid block of the cursor; end of this call's range */
  int64_t t, t0, t1, ts, te, step, k0, nk; /* group start, the unit's range and steps, kv heads [k0, k0 + nk) */
  const int32_t *bt;
  int phase, done;           /* 0: keys, 1: values */
  const char *base;          /* region: rows (o, i) at base + o * os + i * is, rbytes each */
  int64_t no, os, ni, is, rbytes, o, i, off;
  int64_t ahead, dist;       /* bytes issued and not yet consumed; target */
} xd_pf;

/* Varlen grid block b: its sequence, first kv head and the key range its rows
 * attend ([*lo, *hi), empty if lo >= hi), as attn_varlen computes it. */
static void xd_varlen_range(const xk_attn_args *a, int64_t b, int64_t *seq_out, int64_t *kvh0, int64_t *lo_out,
                            int64_t *hi_out) {
  const int64_t KG = a->kv_group > 0 ? a->kv_group : 1, NG = a->num_kv_heads / KG;
  const int64_t item = b / NG, seq = a->work[3 * item], i0 = a->work[3 * item + 1], i1 = a->work[3 * item + 2];
  const int64_t q_len = a->cu_seqlens_q[seq + 1] - a->cu_seqlens_q[seq], k_len = a->seq_lens[seq];
  int64_t LO = INT64_MAX, HI = 0;
  for (int64_t i = i0; i < i1; i++) {
    const int64_t pos = i + k_len - q_len;
    int64_t lo, hi;
    xk_attn_key_range(a, pos, k_len, &lo, &hi);
    if (lo < hi) {
      LO = xa_min(LO, lo);
      HI = xa_max(HI, hi);
    }
  }
  *seq_out = seq;
  *kvh0 = (b % NG) * KG;
  *lo_out = LO == INT64_MAX ? 0 : LO;
  *hi_out = HI;
}

/* Most kv heads a paged unit takes: their logits ([heads][L] f32) stay under 4 MiB. */
static int64_t xd_paged_nk_max(const xk_attn_args *a, int64_t L) {
  const int64_t G = a->num_heads / a->num_kv_heads;
  return xa_max(1, xa_min(a->num_kv_heads, ((int64_t)1 << 20) / xa_max(1, G * L)));
}

/* The paged unit starting at grid block b (kv heads fastest in the grid):
 * one (sequence, partition) and the kv heads [*k0, *k0 + *nk) of [b, end);
 * returns the grid block after it. */
static int64_t xd_paged_unit(const xk_attn_args *a, int64_t L, int64_t b, int64_t end, int64_t *seq, int64_t *part,
                             int64_t *k0, int64_t *nk, int64_t *t0, int64_t *t1) {
  const int64_t Hkv = a->num_kv_heads, P = a->partition_size ? a->max_partitions : 1;
  *k0 = b % Hkv;
  *part = (b / Hkv) % P;
  *seq = b / (Hkv * P);
  *nk = xa_min(xa_min(Hkv - *k0, end - b), xd_paged_nk_max(a, L));
  const int64_t len = a->seq_lens[*seq];
  *t0 = *part * a->partition_size;
  *t1 = a->partition_size ? xa_min(*t0 + a->partition_size, len) : len;
  return b + *nk;
}

static XD_TARGET void xd_pf_region(xd_pf *pf) {
  const xk_attn_args *a = pf->a;
  const int64_t bs = a->block_size, es = xk_dtype_size(a->cache_dtype), D = a->head_size;
  const int64_t blk = (int64_t)pf->bt[(pf->t / bs) * a->block_tables_stride_block], off = pf->t % bs;
  const int64_t *st = pf->phase ? a->value_cache_strides : a->key_cache_strides;
  const char *cache = (const char *)(pf->phase ? a->value_cache : a->key_cache);
  if (a->layout == XK_LAYOUT_FLASH) {
    pf->base = cache + (blk * st[0] + off * st[1] + pf->k0 * st[2]) * es;
    pf->no = XD_G;
    pf->os = st[1] * es;
    pf->ni = 1;
    pf->rbytes = pf->is = pf->nk * D * es;
  } else {
    pf->base = cache + (blk * st[0] + pf->k0 * st[1] + off * st[3]) * es;
    pf->no = pf->nk;
    pf->os = st[1] * es;
    pf->ni = pf->phase ? D : D / a->x;
    pf->is = st[2] * es;
    pf->rbytes = pf->phase ? XD_G * es : XD_G * 16;
  }
  if (pf->is == pf->rbytes) { /* contiguous rows: one row per outer step, maybe one row in all */
    pf->rbytes *= pf->ni;
    pf->ni = 1;
    pf->is = pf->rbytes;
    if (pf->os == pf->rbytes) {
      pf->rbytes *= pf->no;
      pf->no = 1;
    }
  }
  pf->o = pf->i = pf->off = 0;
}

/* Moves the cursor to the first unit at or after pf->b with tokens. */
static XD_TARGET void xd_pf_block(xd_pf *pf) {
  const xk_attn_args *a = pf->a;
  while (pf->b < pf->end) {
    int64_t seq, part, k0, nk, t0, t1;
    if (a->kind == XK_ATTN_VARLEN) {
      xd_varlen_range(a, pf->b, &seq, &k0, &t0, &t1);
      t0 &= ~(int64_t)(XD_G - 1);
      nk = a->kv_group > 0 ? a->kv_group : 1;
      pf->b++;
      pf->step = XA_VT;
    } else {
      pf->b = xd_paged_unit(a, xa_cols(a), pf->b, pf->end, &seq, &part, &k0, &nk, &t0, &t1);
      pf->step = t1 - t0;
    }
    if (t1 <= t0) continue;
    pf->t = pf->t0 = pf->ts = t0;
    pf->t1 = t1;
    pf->te = xa_min(t0 + pf->step, t1);
    pf->k0 = k0;
    pf->nk = nk;
    pf->bt = a->block_tables + seq * a->block_tables_stride_seq;
    pf->phase = 0;
    xd_pf_region(pf);
    return;
  }
  pf->done = 1;
}

static XD_TARGET void xd_pf_next(xd_pf *pf) {
  pf->t += XD_G;
  if (pf->t >= pf->te) {
    if (pf->phase == 0) {
      pf->phase = 1;
      pf->t = pf->ts;
    } else if (pf->te < pf->t1) {
      pf->phase = 0;
      pf->t = pf->ts = pf->te;
      pf->te = xa_min(pf->ts + pf->step, pf->t1);
    } else {
      xd_pf_block(pf);
      return;
    }
  }
  xd_pf_region(pf);
}

static XD_TARGET void xd_pf_init(xd_pf *pf, const xk_attn_args *a, int64_t begin, int64_t end, int64_t dist) {
  memset(pf, 0, sizeof *pf);
  pf->a = a;
  pf->b = begin;
  pf->end = end;
  pf->dist = dist;
  xd_pf_block(pf);
}

/* Up to `want` lines of the cursor's current row, contiguous from the returned pointer. */
static inline __attribute__((always_inline)) const char *xd_pf_take(xd_pf *pf, int64_t want, int64_t *got) {
  *got = 0;
  if (pf->done || want <= 0) return NULL;
  const char *p = pf->base + pf->o * pf->os + pf->i * pf->is + pf->off;
  const int64_t n = xa_min(want, (pf->rbytes - pf->off + 63) / 64);
  pf->off += 64 * n;
  pf->ahead += 64 * n;
  *got = n;
  if (pf->off >= pf->rbytes) {
    pf->off = 0;
    if (++pf->i == pf->ni) {
      pf->i = 0;
      if (++pf->o == pf->no) xd_pf_next(pf);
    }
  }
  return p;
}

/* A strip of lines for a micro-kernel of `iters` iterations after `consumed`
 * bytes were read: at most 8 lines an iteration. */
typedef struct xd_strip {
  const char *p;
  int64_t n;
} xd_strip;

static inline __attribute__((always_inline)) xd_strip xd_pf_strip(xd_pf *pf, int64_t consumed, int64_t iters) {
  pf->ahead -= consumed;
  xd_strip s = {NULL, 0};
  const int64_t want = xa_min((pf->dist - pf->ahead) / 64, 8 * iters);
  s.p = xd_pf_take(pf, want, &s.n);
  return s;
}

/* Lines [k * i, k * i + k) of the strip, k = ceil(n / iters) (at most 8). */
static inline __attribute__((always_inline)) void xd_strip_step(const xd_strip *s, int64_t i, int64_t k) {
  for (int64_t j = k * i; j < k * i + k && j < s->n; j++) _mm_prefetch(s->p + 64 * j, _MM_HINT_T1);
}

/* ---- QK: logits of NR rows x 8 tokens ---- */

/* acc[r][j] over the head dim for the 2 quads (4 tokens each) at kb: bf16
 * chunks of 8 elements cs bytes apart (quad j at +64 j), or fp8 chunks of 16.
 * Writes 8 logits per row to lg + r * lld. */
XD_INLINE void xd_qk8(const float *q, int64_t qld, const char *kb, int64_t cs, int64_t D, const int fp8,
                      const xd_cvt *t, const int NR, float *lg, int64_t lld, const xd_strip *pf) {
  __m512 acc[8][2];
#pragma GCC unroll 8
  for (int r = 0; r < NR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  const int64_t E = fp8 ? 16 : 8, nch = D / E, k = (pf->n + nch - 1) / (nch ? nch : 1);
  for (int64_t c = 0; c < nch; c++) {
    xd_strip_step(pf, c, k);
    const char *p = kb + c * cs;
    if (fp8) {
      __m512 f[2][4];
      xd_fp8_f32(_mm512_loadu_si512((const void *)p), t, f[0]);
      xd_fp8_f32(_mm512_loadu_si512((const void *)(p + 64)), t, f[1]);
#pragma GCC unroll 8
      for (int r = 0; r < NR; r++) {
#pragma GCC unroll 4
        for (int s = 0; s < 4; s++) {
          const __m512 qb = xd_bcast4(q + r * qld + c * 16 + 4 * s);
          acc[r][0] = _mm512_fmadd_ps(f[0][s], qb, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(f[1][s], qb, acc[r][1]);
        }
      }
    } else {
      __m512 f[2][2];
      xd_bf16_f32(_mm512_loadu_si512((const void *)p), f[0]);
      xd_bf16_f32(_mm512_loadu_si512((const void *)(p + 64)), f[1]);
#pragma GCC unroll 8
      for (int r = 0; r < NR; r++) {
#pragma GCC unroll 2
        for (int s = 0; s < 2; s++) {
          const __m512 qb = xd_bcast4(q + r * qld + c * 8 + 4 * s);
          acc[r][0] = _mm512_fmadd_ps(f[0][s], qb, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(f[1][s], qb, acc[r][1]);
        }
      }
    }
  }
  /* acc[r][j] lane 4L + p: token 4j + L, partial p. */
#pragma GCC unroll 4
  for (int r = 0; r + 1 < NR; r += 2) {
    const __m512 x = xd_hadd(xd_hadd(acc[r][0], acc[r][1]), xd_hadd(acc[r + 1][0], acc[r + 1][1]));
    _mm256_storeu_ps(lg + r * lld, _mm512_castps512_ps256(x));
    _mm256_storeu_ps(lg + (r + 1) * lld, _mm512_extractf32x8_ps(x, 1));
  }
  if (NR & 1) {
    const __m512 h = xd_hadd(acc[NR - 1][0], acc[NR - 1][1]);
    _mm256_storeu_ps(lg + (NR - 1) * lld, _mm512_castps512_ps256(xd_hadd(h, h)));
  }
}

#define XD_QK_DEF(NR)                                                                                          \
  static XD_TARGET void xd_qk8_##NR(const float *q, int64_t qld, const char *kb, int64_t cs, int64_t D, int fp8, \
                                    const xd_cvt *t, float *lg, int64_t lld, const xd_strip *pf) {              \
    if (fp8)                                                                                                   \
      xd_qk8(q, qld, kb, cs, D, 1, t, NR, lg, lld, pf);                                                        \
    else                                                                                                       \
      xd_qk8(q, qld, kb, cs, D, 0, t, NR, lg, lld, pf);                                                        \
  }
XD_QK_DEF(8)
XD_QK_DEF(4)
XD_QK_DEF(2)
XD_QK_DEF(1)

/* ---- PV: out[r][d] += sum_t p[r][t] v[t][d] over a tile of groups ---- */

/* Rows d .. d+3 of a group's values (row 0 at vb, rows rs bytes apart) as four
 * f32 vectors: f[s] lane L = tokens 4s .. 4s+3 of row d + L; tokens >= nv are 0. */
XD_INLINE void xd_v4(const char *vb, int64_t rs, const int fp8, const xd_cvt *t, int64_t nv, __m512 f[4]) {
  if (fp8) {
    __m512i x;
    if (rs == 16) {
      x = _mm512_loadu_si512((const void *)vb);
    } else {
      x = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)vb));
      x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(vb + rs)), 1);
      x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(vb + 2 * rs)), 2);
      x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(vb + 3 * rs)), 3);
    }
    xd_fp8_f32(x, t, f);
  } else {
    __m512i a, b;
    if (rs == 32) {
      a = _mm512_loadu_si512((const void *)vb);
      b = _mm512_loadu_si512((const void *)(vb + 64));
    } else {
      a = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)vb)),
                             _mm256_loadu_si256((const __m256i *)(vb + rs)), 1);
      b = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(vb + 2 * rs))),
                             _mm256_loadu_si256((const __m256i *)(vb + 3 * rs)), 1);
    }
    /* a = rows d, d+1 (16 tokens each), b = rows d+2, d+3: gather tokens 0-7 and 8-15 of the 4 rows */
    xd_bf16_f32(_mm512_shuffle_i64x2(a, b, 0x88), f);
    xd_bf16_f32(_mm512_shuffle_i64x2(a, b, 0xdd), f + 2);
  }
  if (nv < XD_G) {
#pragma GCC unroll 4
    for (int s = 0; s < 4; s++) {
      const int64_t k = xa_max(0, xa_min(4, nv - 4 * s));
      const __mmask16 m = (__mmask16)(((1u << k) - 1u) * 0x1111u);
      f[s] = _mm512_maskz_mov_ps(m, f[s]);
    }
  }
}

/* For NR rows (p rows pld apart, zero past n), ngrp groups with value rows
 * at vb[g] (rs bytes apart), the last one holding nlast valid tokens:
 * out[r][0 .. D) += P . V. Eight head-dim rows at a time (two slabs of 4). */
XD_INLINE void xd_pv(const float *p, int64_t pld, const char *const *vb0, int64_t voff, int64_t ngrp, int64_t nlast,
                     int64_t rs, int64_t D, const int fp8, const xd_cvt *t, const int NR, float *out, int64_t old,
                     xd_pf *pfc, int64_t consumed_per_dblock) {
  for (int64_t d0 = 0; d0 < D; d0 += 8) {
    const xd_strip pf = xd_pf_strip(pfc, consumed_per_dblock, ngrp);
    const int64_t k = (pf.n + ngrp - 1) / (ngrp ? ngrp : 1);
    __m512 acc[8][2];
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ngrp; g++) {
      xd_strip_step(&pf, g, k);
      const int64_t nv = g + 1 == ngrp ? nlast : XD_G;
      __m512 f0[4], f1[4];
      const char *vb = vb0[g] + voff;
      xd_v4(vb + d0 * rs, rs, fp8, t, nv, f0);
      xd_v4(vb + (d0 + 4) * rs, rs, fp8, t, nv, f1);
#pragma GCC unroll 8
      for (int r = 0; r < NR; r++) {
#pragma GCC unroll 4
        for (int s = 0; s < 4; s++) {
          const __m512 pb = xd_bcast4(p + r * pld + g * XD_G + 4 * s);
          acc[r][0] = _mm512_fmadd_ps(f0[s], pb, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(f1[s], pb, acc[r][1]);
        }
      }
    }
    /* acc[r][h] lane 4L + p: row d0 + 4h + L, partial p */
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++) {
      const __m512 h = xd_hadd(acc[r][0], acc[r][1]);
      const __m256 s = _mm512_castps512_ps256(xd_hadd(h, h));
      _mm256_storeu_ps(out + r * old + d0, _mm256_add_ps(_mm256_loadu_ps(out + r * old + d0), s));
    }
  }
}

#define XD_PV_DEF(NR)                                                                                          \
  static XD_TARGET void xd_pv_##NR(const float *p, int64_t pld, const char *const *vb, int64_t voff,             \
                                   int64_t ngrp, int64_t nlast, int64_t rs, int64_t D, int fp8, const xd_cvt *t, \
                                   float *out, int64_t old, xd_pf *pfc, int64_t cpd) {                          \
    if (fp8)                                                                                                   \
      xd_pv(p, pld, vb, voff, ngrp, nlast, rs, D, 1, t, NR, out, old, pfc, cpd);                               \
    else                                                                                                       \
      xd_pv(p, pld, vb, voff, ngrp, nlast, rs, D, 0, t, NR, out, old, pfc, cpd);                               \
  }
XD_PV_DEF(8)
XD_PV_DEF(4)
XD_PV_DEF(2)
XD_PV_DEF(1)

#define XD_TILE 16 /* groups (256 tokens) per P.V sweep */

/* Whether the fast path takes this paged call. */
static int xd_paged_ok(const xk_attn_args *a) {
  const int32_t dt = a->cache_dtype;
  if (!a->fast || a->layout != XK_LAYOUT_PAGED || !(dt == XK_BF16 || xk_is_fp8(dt))) return 0;
  if (a->block_size % XD_G || a->head_size % 16 || a->head_size > 512) return 0;
  const int64_t x = 16 / xk_dtype_size(dt);
  return a->x == x && a->key_cache_strides[4] == 1 && a->key_cache_strides[3] == x &&
         a->value_cache_strides[3] == 1;
}

/* Units of one (sequence, partition) and a range of its kv heads: keys, then
 * values, of every kv head of a cache block are adjacent, so walking the kv
 * heads of a block together reads one contiguous span per block. */
static XD_TARGET __attribute__((noinline)) void xd_paged(const xk_attn_args *a, const xa_ws *w, int64_t begin,
                                                          int64_t end) {
  const int64_t G = a->num_heads / a->num_kv_heads, D = a->head_size, Dp = w->Dp;
  const int64_t qes = xk_dtype_size(a->dtype);
  const int64_t es = xk_dtype_size(a->cache_dtype), bs = a->block_size, L_ = w->L;
  const int fp8 = xk_is_fp8(a->cache_dtype);
  const int64_t *ks = a->key_cache_strides, *vs_ = a->value_cache_strides;
  const int64_t cs = ks[2] * es, rs = vs_[2] * es;
  const int64_t kgrp = XD_G * D * es; /* key (or value) bytes of a group and kv head */
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | XD_FTZ_DAZ);
  xd_cvt t;
  if (fp8) xd_cvt_init(&t, a->cache_dtype);
  const int64_t nkm = xd_paged_nk_max(a, L_);
  xd_pf pf; /* a tile of values plus 64 tokens ahead */
  xd_pf_init(&pf, a, begin, end, nkm * (XD_TILE + 4) * kgrp);
  float *qf = (float *)w->q;
  const char *vb[XD_TILE];
  for (int64_t b = begin; b < end;) {
    int64_t seq, part, k0, nk, t0, t1;
    b = xd_paged_unit(a, L_, b, end, &seq, &part, &k0, &nk, &t0, &t1);
    if (a->partition_size && t1 <= t0) continue; /* v2: nothing to do, nothing written */
    const int64_t L = a->seq_lens[seq], n = xa_max(0, t1 - t0), R = nk * G;
    const int32_t *bt = a->block_tables + seq * a->block_tables_stride_seq;
    for (int64_t r = 0; r < R; r++) {
      const int64_t h = k0 * G + r;
      xa_to_f32(qf + r * Dp, (const char *)a->query + (seq * a->q_stride_token + h * a->q_stride_head) * qes,
                a->dtype, D);
    }
    const int64_t ngrp = (n + XD_G - 1) / XD_G;
    /* Pass 1: logits of every token of the range. */
    for (int64_t gi = 0; gi < ngrp; gi++) {
      const int64_t tok = t0 + gi * XD_G;
      const int64_t blk = (int64_t)bt[(tok / bs) * a->block_tables_stride_block];
      const char *kb0 = (const char *)a->key_cache + (blk * ks[0] + k0 * ks[1] + (tok % bs) * ks[3]) * es;
      int first = 1;
      for (int64_t kvl = 0; kvl < nk; kvl++) {
        const char *kb = kb0 + kvl * ks[1] * es;
        for (int64_t r0 = 0; r0 < G;) {
          const int64_t nr = G - r0 >= 8 ? 8 : G - r0 >= 4 ? 4 : G - r0 >= 2 ? 2 : 1;
          for (int64_t h = 0; h < 2; h++) {
            const xd_strip st = xd_pf_strip(&pf, first ? nk * kgrp : 0, D / (fp8 ? 16 : 8));
            first = 0;
            const int64_t r = kvl * G + r0;
            const float *q = qf + r * Dp;
            float *lg = w->lg + r * L_ + gi * XD_G + 8 * h;
            const char *k8 = kb + 128 * h;
            switch (nr) {
              case 8: xd_qk8_8(q, Dp, k8, cs, D, fp8, &t, lg, L_, &st); break;
              case 4: xd_qk8_4(q, Dp, k8, cs, D, fp8, &t, lg, L_, &st); break;
              case 2: xd_qk8_2(q, Dp, k8, cs, D, fp8, &t, lg, L_, &st); break;
              default: xd_qk8_1(q, Dp, k8, cs, D, fp8, &t, lg, L_, &st); break;
            }
          }
          r0 += nr;
        }
      }
    }
    /* Softmax of each row; probabilities rounded to the query dtype, 0 past n. */
    for (int64_t r = 0; r < R; r++) {
      const int64_t kvh = k0 + r / G, h = k0 * G + r;
      const float ksc = a->k_scale ? a->k_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
      const float sc = a->scale * ksc;
      float *x = w->lg + r * L_;
      xa_paged_softmax(a, x, n, sc, seq, h, part, t0 - L + 1);
      xa_round_to(x, n, a->dtype);
      for (int64_t i = n; i < ngrp * XD_G; i++) x[i] = 0.0f;
    }
    /* Pass 2: P.V, a tile of groups at a time, eight head-dim rows per sweep. */
    memset(w->acc, 0, (size_t)(R * Dp) * sizeof(float));
    for (int64_t g0 = 0; g0 < ngrp; g0 += XD_TILE) {
      const int64_t ng = xa_min(XD_TILE, ngrp - g0);
      for (int64_t gi = 0; gi < ng; gi++) {
        const int64_t tok = t0 + (g0 + gi) * XD_G;
        const int64_t blk = (int64_t)bt[(tok / bs) * a->block_tables_stride_block];
        vb[gi] = (const char *)a->value_cache + (blk * vs_[0] + k0 * vs_[1] + (tok % bs) * vs_[3]) * es;
      }
      const int64_t nlast = xa_min(XD_G, n - (g0 + ng - 1) * XD_G);
      const int64_t cpd = ng * kgrp / (D / 8); /* value bytes one 8-row sweep of a kv head reads */
      for (int64_t kvl = 0; kvl < nk; kvl++) {
        const int64_t voff = kvl * vs_[1] * es;
        for (int64_t r0 = 0; r0 < G;) {
          const int64_t nr = G - r0 >= 8 ? 8 : G - r0 >= 4 ? 4 : G - r0 >= 2 ? 2 : 1;
          const int64_t r = kvl * G + r0;
          const float *p = w->lg + r * L_ + g0 * XD_G;
          float *o = w->acc + r * Dp;
          const int64_t c = r0 == 0 ? cpd : 0;
          switch (nr) {
            case 8: xd_pv_8(p, L_, vb, voff, ng, nlast, rs, D, fp8, &t, o, Dp, &pf, c); break;
            case 4: xd_pv_4(p, L_, vb, voff, ng, nlast, rs, D, fp8, &t, o, Dp, &pf, c); break;
            case 2: xd_pv_2(p, L_, vb, voff, ng, nlast, rs, D, fp8, &t, o, Dp, &pf, c); break;
            default: xd_pv_1(p, L_, vb, voff, ng, nlast, rs, D, fp8, &t, o, Dp, &pf, c); break;
          }
          r0 += nr;
        }
      }
    }
    for (int64_t r = 0; r < R; r++) {
      const int64_t kvh = k0 + r / G, h = k0 * G + r;
      const float vsc = a->v_scale ? a->v_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
      char *dst;
      if (a->partition_size) {
        dst = (char *)a->tmp_out +
              (seq * a->tmp_out_strides[0] + h * a->tmp_out_strides[1] + part * a->tmp_out_strides[2]) * qes;
      } else {
        dst = (char *)a->out + (seq * a->out_stride_token + h * a->out_stride_head) * qes;
      }
      xa_write_row(dst, a->dtype, w->acc + r * Dp, D, vsc);
    }
  }
  _mm_setcsr(csr);
}

/* ---- varlen (flash layout) ---- */

/* Keys of 16 token rows (row 0 at r0, rows rstride apart, rowbytes each, a
 * multiple of 64) into the paged chunk layout at stage: chunk c (16 bytes of
 * every token) at stage + 256 c, quad j at + 64 j. */
XD_INLINE void xd_stage_k(const char *r0, int64_t rstride, int64_t rowbytes, char *stage) {
#pragma GCC unroll 1
  for (int64_t j = 0; j < 4; j++) {
    const char *p = r0 + 4 * j * rstride;
    for (int64_t off = 0; off < rowbytes; off += 64) {
      const __m512i v0 = _mm512_loadu_si512((const void *)(p + off));
      const __m512i v1 = _mm512_loadu_si512((const void *)(p + rstride + off));
      const __m512i v2 = _mm512_loadu_si512((const void *)(p + 2 * rstride + off));
      const __m512i v3 = _mm512_loadu_si512((const void *)(p + 3 * rstride + off));
      const __m512i t0 = _mm512_shuffle_i64x2(v0, v1, 0x44), t1 = _mm512_shuffle_i64x2(v0, v1, 0xee);
      const __m512i t2 = _mm512_shuffle_i64x2(v2, v3, 0x44), t3 = _mm512_shuffle_i64x2(v2, v3, 0xee);
      char *o = stage + (off / 16) * 256 + 64 * j;
      _mm512_storeu_si512((void *)o, _mm512_shuffle_i64x2(t0, t2, 0x88));
      _mm512_storeu_si512((void *)(o + 256), _mm512_shuffle_i64x2(t0, t2, 0xdd));
      _mm512_storeu_si512((void *)(o + 512), _mm512_shuffle_i64x2(t1, t3, 0x88));
      _mm512_storeu_si512((void *)(o + 768), _mm512_shuffle_i64x2(t1, t3, 0xdd));
    }
  }
}

/* fp8 value rows (D elements, D a multiple of 64) as bf16 rows in natural order. */
XD_INLINE void xd_stage_v_fp8(const char *src, int64_t D, const xd_cvt *t, uint16_t *dst) {
  const __m512i i0 = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), i1 = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
  for (int64_t e = 0; e < D; e += 64) {
    const __m512i x = _mm512_loadu_si512((const void *)(src + e));
    const __m512i lo = _mm512_permutex2var_epi8(t->lo0, x, t->lo1);
    const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(t->hi0, x, t->hi1), x, t->sgn, 0xf8);
    const __m512i wl = _mm512_unpacklo_epi8(lo, hi), wh = _mm512_unpackhi_epi8(lo, hi);
    _mm512_storeu_si512((void *)(dst + e), _mm512_permutex2var_epi64(wl, i0, wh));
    _mm512_storeu_si512((void *)(dst + e + 32), _mm512_permutex2var_epi64(wl, i1, wh));
  }
}

/* acc[r][..] += sum_j p[r][j] v[j] for n bf16 value rows (rows[j]), NR rows:
 * 32 head-dim elements at a time; acc holds each 32-element piece permuted
 * (vector v, lane 4L + e <-> element 8L + 4v + e), see xd_unpermute. */
XD_INLINE void xd_pvr(const float *p, int64_t pld, const char *const *rows, int64_t n, int64_t D, const int NR,
                      float *acc, int64_t ald, const xd_strip *pf) {
  const int64_t it = D / 32 * n, k = (pf->n + it - 1) / (it ? it : 1);
  for (int64_t d0 = 0; d0 < D; d0 += 32) {
    __m512 a[8][2];
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++) {
      a[r][0] = _mm512_loadu_ps(acc + r * ald + d0);
      a[r][1] = _mm512_loadu_ps(acc + r * ald + d0 + 16);
    }
    for (int64_t j = 0; j < n; j++) {
      xd_strip_step(pf, d0 / 32 * n + j, k);
      __m512 f[2];
      xd_bf16_f32(_mm512_loadu_si512((const void *)(rows[j] + 2 * d0)), f);
#pragma GCC unroll 8
      for (int r = 0; r < NR; r++) {
        const __m512 pb = _mm512_set1_ps(p[r * pld + j]);
        a[r][0] = _mm512_fmadd_ps(f[0], pb, a[r][0]);
        a[r][1] = _mm512_fmadd_ps(f[1], pb, a[r][1]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++) {
      _mm512_storeu_ps(acc + r * ald + d0, a[r][0]);
      _mm512_storeu_ps(acc + r * ald + d0 + 16, a[r][1]);
    }
  }
}

#define XD_PVR_DEF(NR)                                                                                         \
  static XD_TARGET void xd_pvr_##NR(const float *p, int64_t pld, const char *const *rows, int64_t n, int64_t D, \
                                    float *acc, int64_t ald, const xd_strip *pf) {                             \
    xd_pvr(p, pld, rows, n, D, NR, acc, ald, pf);                                                              \
  }
XD_PVR_DEF(8)
XD_PVR_DEF(4)
XD_PVR_DEF(2)
XD_PVR_DEF(1)

/* Undoes xd_pvr's order on one row of D elements (tmp: D floats). */
static void xd_unpermute(float *row, int64_t D, float *tmp) {
  for (int64_t d0 = 0; d0 < D; d0 += 32) {
    for (int v = 0; v < 2; v++)
      for (int L = 0; L < 4; L++)
        for (int e = 0; e < 4; e++) tmp[d0 + 8 * L + 4 * v + e] = row[d0 + 16 * v + 4 * L + e];
  }
  memcpy(row, tmp, (size_t)D * sizeof(float));
}

static int xd_varlen_ok(const xk_attn_args *a) {
  const int32_t dt = a->cache_dtype;
  if (!a->fast || a->layout != XK_LAYOUT_FLASH || !(dt == XK_BF16 || xk_is_fp8(dt))) return 0;
  const int fp8 = xk_is_fp8(dt);
  if (a->block_size % XD_G || a->head_size % (fp8 ? 64 : 32) || a->head_size > 512) return 0;
  return a->key_cache_strides[3] == 1 && a->value_cache_strides[3] == 1;
}

/* flash_attn_varlen_func as attn_varlen below (same steps, masks and online
 * softmax), with the decode fast path's micro-kernels. */
static XD_TARGET __attribute__((noinline)) void xd_varlen(const xk_attn_args *a, const xa_ws *w, int64_t begin,
                                                           int64_t end) {
  const int64_t Hkv = a->num_kv_heads, G = a->num_heads / Hkv, D = a->head_size, Dp = w->Dp;
  const int64_t KG = a->kv_group > 0 ? a->kv_group : 1;
  const int64_t qes = xk_dtype_size(a->dtype), es = xk_dtype_size(a->cache_dtype), bs = a->block_size;
  const int fp8 = xk_is_fp8(a->cache_dtype);
  const int64_t *ks = a->key_cache_strides, *vs_ = a->value_cache_strides, L_ = w->L;
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | XD_FTZ_DAZ);
  xd_cvt t;
  if (fp8) xd_cvt_init(&t, a->cache_dtype);
  const int64_t tok_bytes = KG * D * es; /* keys (or values) of a token for the block's kv heads */
  xd_pf pf;
  xd_pf_init(&pf, a, begin, end, 2 * XA_VT * tok_bytes);
  float *qf = (float *)w->q;
  char *kst = (char *)w->kT;        /* staged keys of one group */
  uint16_t *vst = (uint16_t *)w->vt; /* fp8: staged bf16 values of a step */
  const char *rows[XA_VT];
  for (int64_t b = begin; b < end; b++) {
    int64_t seq, kvh0, LO, HI;
    xd_varlen_range(a, b, &seq, &kvh0, &LO, &HI);
    const int64_t NG = Hkv / KG, item = b / NG;
    const int64_t i0 = a->work[3 * item + 1], i1 = a->work[3 * item + 2];
    const int64_t q0 = a->cu_seqlens_q[seq], q_len = a->cu_seqlens_q[seq + 1] - q0, k_len = a->seq_lens[seq];
    const int64_t RQ = (i1 - i0) * G, R = RQ * KG;
    const int32_t *bt = a->block_tables + seq * a->block_tables_stride_seq;
    for (int64_t i = i0; i < i1; i++) {
      const int64_t pos = i + k_len - q_len;
      int64_t lo, hi;
      xk_attn_key_range(a, pos, k_len, &lo, &hi);
      for (int64_t kvl = 0; kvl < KG; kvl++) {
        for (int64_t g = 0; g < G; g++) {
          const int64_t r = kvl * RQ + (i - i0) * G + g, h = (kvh0 + kvl) * G + g;
          w->pos[r] = pos;
          w->lo[r] = lo;
          w->hi[r] = hi;
          w->m[r] = -INFINITY;
          w->l[r] = 0.0f;
          xa_to_f32(qf + r * Dp, (const char *)a->query + ((q0 + i) * a->q_stride_token + h * a->q_stride_head) * qes,
                    a->dtype, D);
        }
      }
    }
    memset(w->acc, 0, (size_t)(R * Dp) * sizeof(float));
    const int64_t LOa = LO & ~(int64_t)(XD_G - 1);
    for (int64_t ts = LOa; ts < HI; ts += XA_VT) {
      const int64_t te = xa_min(ts + XA_VT, HI), n = te - ts, ngrp = (n + XD_G - 1) / XD_G;
      /* logits */
      for (int64_t kvl = 0; kvl < KG; kvl++) {
        const int64_t kvh = kvh0 + kvl;
        for (int64_t gi = 0; gi < ngrp; gi++) {
          const int64_t tok = ts + gi * XD_G;
          const int64_t blk = (int64_t)bt[(tok / bs) * a->block_tables_stride_block];
          const char *r0 = (const char *)a->key_cache + (blk * ks[0] + (tok % bs) * ks[1] + kvh * ks[2]) * es;
          xd_stage_k(r0, ks[1] * es, D * es, kst);
          int first = 1;
          for (int64_t q = 0; q < RQ;) {
            const int64_t nr = RQ - q >= 8 ? 8 : RQ - q >= 4 ? 4 : RQ - q >= 2 ? 2 : 1;
            for (int64_t h = 0; h < 2; h++) {
              const xd_strip st = xd_pf_strip(&pf, first ? XD_G * D * es : 0, D / (fp8 ? 16 : 8));
              first = 0;
              const float *qq = qf + (kvl * RQ + q) * Dp;
              float *lg = w->lg + (kvl * RQ + q) * L_ + gi * XD_G + 8 * h;
              const char *k8 = kst + 128 * h;
              switch (nr) {
                case 8: xd_qk8_8(qq, Dp, k8, 256, D, fp8, &t, lg, L_, &st); break;
                case 4: xd_qk8_4(qq, Dp, k8, 256, D, fp8, &t, lg, L_, &st); break;
                case 2: xd_qk8_2(qq, Dp, k8, 256, D, fp8, &t, lg, L_, &st); break;
                default: xd_qk8_1(qq, Dp, k8, 256, D, fp8, &t, lg, L_, &st); break;
              }
            }
            q += nr;
          }
        }
      }
      /* masks and the online softmax (as attn_varlen) */
      for (int64_t r = 0; r < R; r++) {
        const int64_t kvh = kvh0 + r / RQ, h = kvh * G + r % G;
        const float ksc = a->k_scale ? a->k_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
        const float sc = a->scale * ksc;
        float *x = w->lg + r * L_;
        for (int64_t i = 0; i < n; i++) x[i] *= sc;
        if (a->softcap > 0.0f) xa_softcap(x, n, a->softcap);
        if (a->alibi_slopes) {
          const float slope = a->alibi_slopes[seq * a->alibi_stride_seq + h];
          const int64_t pos = w->pos[r];
          for (int64_t i = 0; i < n; i++) x[i] -= slope * fabsf((float)(pos - (ts + i)));
        }
        const int64_t lo = w->lo[r] - ts, hi = w->hi[r] - ts;
        for (int64_t i = 0; i < n; i++) {
          if (i < lo || i >= hi) x[i] = -INFINITY;
        }
        const float mt = xa_max_row(x, n, -INFINITY);
        const float m_new = fmaxf(w->m[r], mt);
        if (m_new == -INFINITY) {
          for (int64_t i = 0; i < n; i++) x[i] = 0.0f;
        } else {
          const float alpha = w->m[r] == -INFINITY ? 0.0f : expf(w->m[r] - m_new);
          const float sum = xa_exp_sum(x, n, m_new);
          if (alpha != 1.0f) {
            float *acc = w->acc + r * Dp;
            for (int64_t d = 0; d < Dp; d++) acc[d] *= alpha;
          }
          w->l[r] = w->l[r] * alpha + sum;
          w->m[r] = m_new;
        }
        xa_round_to(x, n, a->dtype);
      }
      /* P.V */
      for (int64_t kvl = 0; kvl < KG; kvl++) {
        const int64_t kvh = kvh0 + kvl;
        for (int64_t j = 0; j < n; j++) {
          const int64_t tok = ts + j;
          const int64_t blk = (int64_t)bt[(tok / bs) * a->block_tables_stride_block];
          rows[j] = (const char *)a->value_cache + (blk * vs_[0] + (tok % bs) * vs_[1] + kvh * vs_[2]) * es;
        }
        if (fp8) {
          for (int64_t j = 0; j < n; j++) {
            xd_stage_v_fp8(rows[j], D, &t, vst + j * D);
            rows[j] = (const char *)(vst + j * D);
          }
        }
        for (int64_t q = 0; q < RQ;) {
          const int64_t nr = RQ - q >= 8 ? 8 : RQ - q >= 4 ? 4 : RQ - q >= 2 ? 2 : 1;
          const xd_strip st = xd_pf_strip(&pf, q == 0 ? n * D * es : 0, D / 32 * n);
          const float *p = w->lg + (kvl * RQ + q) * L_;
          float *o = w->acc + (kvl * RQ + q) * Dp;
          switch (nr) {
            case 8: xd_pvr_8(p, L_, rows, n, D, o, Dp, &st); break;
            case 4: xd_pvr_4(p, L_, rows, n, D, o, Dp, &st); break;
            case 2: xd_pvr_2(p, L_, rows, n, D, o, Dp, &st); break;
            default: xd_pvr_1(p, L_, rows, n, D, o, Dp, &st); break;
          }
          q += nr;
        }
      }
      /* the cursor counts whole groups; the consumers above counted tokens */
      pf.ahead -= KG * (ngrp * XD_G - n) * D * es;
    }
    for (int64_t r = 0; r < R; r++) {
      const int64_t kvh = kvh0 + r / RQ, i = i0 + (r % RQ) / G, h = kvh * G + r % G;
      const float vsc = a->v_scale ? a->v_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
      float m = w->m[r], l = w->l[r];
      const float f = xk_attn_row_factor(a, h, &m, &l);
      xd_unpermute(w->acc + r * Dp, D, w->stage);
      xa_write_row((char *)a->out + ((q0 + i) * a->out_stride_token + h * a->out_stride_head) * qes, a->dtype,
                   w->acc + r * Dp, D, f * vsc);
      if (a->lse) a->lse[h * a->lse_stride_head + (q0 + i) * a->lse_stride_token] = xk_attn_lse(m, l);
    }
  }
  _mm_setcsr(csr);
}

#endif /* XK_F32_LANES == 16 */

/* ---- decode fast path (AVX2) ----------------------------------------------------
 *
 * Decode reads every key and value once and does G = H / Hkv FMAs per cache
 * element (one per query head of the kv head), so it must run at the FMA
 * peak, not at staging speed. K and V are widened in registers straight from
 * the paged cache, once per pass over a kv head's query rows, without a
 * transpose or a gather:
 *
 *   32 bytes of cache as f32 planes: bf16 gives two, the even elements
 *   (w << 16) and the odd ones (w & 0xffff0000); fp8 gives four, plane k
 *   holding byte k of every dword: the byte moved to the top, shifted right
 *   arithmetically into place (4 for e4m3, 3 for e5m2), masked to sign,
 *   exponent and mantissa and multiplied by 2^120 (2^112): exact for every
 *   finite code, subnormals included (so no DAZ here). NaN (e4m3) and Inf /
 *   NaN (e5m2) codes are found per load and fixed on a rare path.
 *   keys (paged [D/x][bs][x]): a load is two tokens of one 16-byte chunk, so
 *     plane lanes are (token, d mod 4 or 8 class) partial sums; q enters as
 *     matching planes (precomputed, 8 floats each) and the 4 partials of a
 *     token are added by hadd once per logit.
 *   values (paged [D][bs]): a load is 16 tokens of one row (bf16) or 16
 *     tokens of two rows (fp8); the probabilities enter as planes in the
 *     same token order (written once per row after the softmax) and the
 *     accumulator lanes are reduced once per tile of 256 tokens.
 * Eight accumulators per micro-kernel (4 query rows x 2 token pairs or value
 * loads, down to 1 x 8), the FMA latency x throughput of Zen 3, with the q
 * (p) vector of a row kept in a register for its 2 to 8 FMAs. Measured and
 * rejected: 8 rows x 1 (one load per FMA, the K or V load shared by 8 rows),
 * as fast in L1 and 3-7% slower in the B=8 bench shapes; 2 x 4 and 1 x 8
 * spill (used only for G < 4). Eight chains are only just enough on this
 * Zen 3: a bare loop of 8 independent FMA chains ran at 28-69% of the peak
 * (by unrolling), 9-12 chains at 99% (session 16); 12 accumulators did not
 * fit the registers of these kernels (see xf_ below).
 *
 * Runs with MXCSR flush-to-zero (not DAZ, which would drop the fp8
 * subnormals above): products and probabilities below 2^-126 flush to 0,
 * an effect below 1e-38 relative. Used for paged_attention_v1/v2 with bf16
 * or fp8 caches, block_size a multiple of 16, head_size a multiple of 16,
 * at most 16 query heads per kv head, standard strides.
 */
#if XK_F32_LANES == 8
#define XE_INLINE static inline __attribute__((always_inline))
#define XE_G 16    /* tokens per group: one slice of a cache block */
/* Groups per P.V sweep. The rows d of a tile's groups are 4 KiB apart modulo
 * (kv head stride of the paged layout): they share one L1 set of 8 ways, so
 * a sweep over 16 groups missed L1 on every load; 8 measured 8-13% faster
 * than 16 (and 4 or 6 slower than 8). */
#define XE_TILE 8
#define XE_FTZ 0x8000u
/* Keeps v in a register: the compiler would otherwise fold its load into
 * every FMA that uses it, one load per FMA, and the loads limit the loop. */
#define XE_REG(v) __asm__("" : "+x"(v))
#define XE_PD 2 /* groups the key prefetches run ahead of pass 1 */

/* Plane k of 32 cache bytes w (see above); fp8 codes left at 2^-120 (e4m3)
 * or 2^-112 (e5m2) of their value when raw (exact: no rounding, DAZ off). */
XE_INLINE __m256 xe_plane_raw(__m256i w, const int fp8, const int e5, const int k) {
  if (!fp8) {
    return k ? _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32((int)0xffff0000u)))
             : _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  const __m256i y = k == 3 ? w : _mm256_slli_epi32(w, 8 * (3 - k));
  return _mm256_castsi256_ps(_mm256_and_si256(_mm256_srai_epi32(y, e5 ? 3 : 4),
                                              _mm256_set1_epi32(e5 ? (int)0x8fe00000u : (int)0x87f00000u)));
}

XE_INLINE __m256 xe_plane(__m256i w, const int fp8, const int e5, const int k) {
  const __m256 f = xe_plane_raw(w, fp8, e5, k);
  return fp8 ? _mm256_mul_ps(f, _mm256_set1_ps(e5 ? 0x1p112f : 0x1p120f)) : f;
}

/* Bytes of w that hold an fp8 code that is not finite (0xff in those bytes). */
XE_INLINE __m256i xe_special(__m256i w, const int e5) {
  const __m256i m = _mm256_set1_epi8(e5 ? 0x7c : 0x7f);
  return _mm256_cmpeq_epi8(_mm256_and_si256(w, m), m);
}

/* Plane k of w with its non-finite codes made Inf / NaN (s = xe_special(w)),
 * the others raw or scaled as xe_plane_raw / xe_plane. */
XE_INLINE __m256 xe_plane_fix(__m256i w, __m256i s, const int e5, const int k, const int raw) {
  const __m256 f = raw ? xe_plane_raw(w, 1, e5, k) : xe_plane(w, 1, e5, k);
  __m256i m = _mm256_srai_epi32(k == 3 ? s : _mm256_slli_epi32(s, 8 * (3 - k)), 31);
  if (e5) m = _mm256_and_si256(m, _mm256_set1_epi32(0x7f800000)); /* exponent all ones, mantissa kept */
  return _mm256_or_ps(f, _mm256_castsi256_ps(m));                  /* e4m3: all ones, a NaN */
}

/* Four accumulators a[j] (lanes: 128-bit half h, 4 partials) as one vector:
 * lane j = the half-0 sum of a[j], lane 4 + j = the half-1 sum. */
XE_INLINE __m256 xe_hred4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  return _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
}

/* Stores NR x M accumulators (8 in all) whose halves are two outputs each
 * (row r: outputs 2j, 2j + 1 of a[r][j]) to dst[r * ld + 0 .. 2M), adding
 * to dst when acc. */
XE_INLINE void xe_store2(__m256 a[8][8], const int NR, const int M, float *dst, int64_t ld, const int acc) {
  if (M >= 4) {
    for (int r = 0; r < NR; r++) {
      for (int j = 0; j < M; j += 4) {
        const __m256 x = xe_hred4(a[r][j], a[r][j + 1], a[r][j + 2], a[r][j + 3]);
        const __m128 lo = _mm256_castps256_ps128(x), hi = _mm256_extractf128_ps(x, 1);
        __m128 v0 = _mm_unpacklo_ps(lo, hi), v1 = _mm_unpackhi_ps(lo, hi);
        float *d = dst + r * ld + 2 * j;
        if (acc) {
          v0 = _mm_add_ps(v0, _mm_loadu_ps(d));
          v1 = _mm_add_ps(v1, _mm_loadu_ps(d + 4));
        }
        _mm_storeu_ps(d, v0);
        _mm_storeu_ps(d + 4, v1);
      }
    }
  } else if (M == 2) {
    for (int r = 0; r < NR; r += 2) {
      const __m256 x = xe_hred4(a[r][0], a[r][1], a[r + 1][0], a[r + 1][1]);
      const __m128 lo = _mm256_castps256_ps128(x), hi = _mm256_extractf128_ps(x, 1);
      __m128 v0 = _mm_unpacklo_ps(lo, hi), v1 = _mm_unpackhi_ps(lo, hi);
      float *d0 = dst + r * ld, *d1 = d0 + ld;
      if (acc) {
        v0 = _mm_add_ps(v0, _mm_loadu_ps(d0));
        v1 = _mm_add_ps(v1, _mm_loadu_ps(d1));
      }
      _mm_storeu_ps(d0, v0);
      _mm_storeu_ps(d1, v1);
    }
  }
}

/* The same for accumulators whose 8 lanes are partials of one output each
 * (row r: output j of a[r][j]), adding to dst when acc. */
XE_INLINE void xe_store1(__m256 a[8][8], const int NR, const int M, float *dst, int64_t ld, const int acc) {
  if (M >= 4) {
    for (int r = 0; r < NR; r++) {
      for (int j = 0; j < M; j += 4) {
        const __m256 x = xe_hred4(a[r][j], a[r][j + 1], a[r][j + 2], a[r][j + 3]);
        const __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
        float *d = dst + r * ld + j;
        _mm_storeu_ps(d, acc ? _mm_add_ps(_mm_loadu_ps(d), s) : s);
      }
    }
  } else if (M == 2) {
    for (int r = 0; r < NR; r += 2) {
      const __m256 x = xe_hred4(a[r][0], a[r][1], a[r + 1][0], a[r + 1][1]);
      const __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
      const __m128 s1 = _mm_movehl_ps(s, s);
      float *d0 = dst + r * ld, *d1 = d0 + ld;
      _mm_storel_pi((__m64 *)d0, acc ? _mm_add_ps(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)d0)), s) : s);
      _mm_storel_pi((__m64 *)d1, acc ? _mm_add_ps(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)d1)), s1) : s1);
    }
  }
}

/* One 32-byte chunk of Q.K for xe_qk and xf_qk: the key words w[0 .. TP)
 * (one token each) widened plane by plane, times the NR query rows of the
 * chunk's planes at qc ([plane][row][8]), into acc[r][j]. Non-finite fp8
 * codes are or-ed into *sp unless fix (xe_plane_fix then widens them). */
XE_INLINE void xe_qk_words(__m256 acc[8][8], const __m256i *w, const float *qc, const int fp8, const int e5,
                           const int fix, const int raw, const int NR, const int TP, __m256i *sp) {
  const int NP = fp8 ? 4 : 2;
  __m256i s[8];
  if (fp8) {
#pragma GCC unroll 8
    for (int j = 0; j < TP; j++) {
      s[j] = xe_special(w[j], e5);
      if (!fix) *sp = _mm256_or_si256(*sp, s[j]);
    }
  }
#pragma GCC unroll 4
  for (int k = 0; k < NP; k++) {
    __m256 f[8];
#pragma GCC unroll 8
    for (int j = 0; j < TP; j++) {
      f[j] = fp8 && fix ? xe_plane_fix(w[j], s[j], e5, k, raw)
                        : raw ? xe_plane_raw(w[j], fp8, e5, k) : xe_plane(w[j], fp8, e5, k);
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++) {
      __m256 q = _mm256_loadu_ps(qc + (k * NR + r) * 8);
      if (TP > 1) XE_REG(q);
#pragma GCC unroll 8
      for (int j = 0; j < TP; j++) acc[r][j] = _mm256_fmadd_ps(f[j], q, acc[r][j]);
    }
  }
}

/* Logits of NR query rows (q planes at qp: [chunk][plane][row][8]) for the 16
 * tokens at kb (chunks cs bytes apart, nch of them), TP token pairs per
 * pass, to lg[r * lld + 0 .. 16). Prefetches (into L2) the 16 tokens at pk
 * when pk, 4 lines per chunk, TP / 2 lines an iteration. Returns 1 (with lg partly written) when an fp8 key is not
 * finite and fix is 0: the caller runs it again with fix. */
XE_INLINE int xe_qk(const float *qp, const char *kb, int64_t cs, int64_t nch, const int fp8,
                    const int e5, const int fix, const int raw, const int NR, const int TP, float *lg, int64_t lld,
                    const char *pk) {
  const int NP = fp8 ? 4 : 2;
  __m256i sp = _mm256_setzero_si256();
  for (int tp0 = 0; tp0 < 8; tp0 += TP) {
    __m256 acc[8][8];
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 8
      for (int j = 0; j < TP; j++) acc[r][j] = _mm256_setzero_ps();
    for (int64_t c = 0; c < nch; c++) {
      if (pk) { /* in address order (the L2 streamer follows it): line l, chunk l / 4 */
        const int64_t l0 = (tp0 / TP * nch + c) * (TP / 2);
#pragma GCC unroll 4
        for (int u = 0; u < TP / 2; u++) _mm_prefetch(pk + ((l0 + u) >> 2) * cs + ((l0 + u) & 3) * 64, _MM_HINT_T1);
      }
      __m256i w[8];
#pragma GCC unroll 8
      for (int j = 0; j < TP; j++) w[j] = _mm256_loadu_si256((const __m256i *)(kb + c * cs + 32 * (tp0 + j)));
      xe_qk_words(acc, w, qp + c * NP * NR * 8, fp8, e5, fix, raw, NR, TP, &sp);
    }
    xe_store2(acc, NR, TP, lg + 2 * tp0, lld, 0);
  }
  return fp8 && !fix && !_mm256_testz_si256(sp, sp);
}

/* P.V of NR rows over ngrp groups (value rows of group g at vb[g] + voff,
 * rs bytes apart; the last group holds nlast tokens) for head-dim rows
 * d0 .. d0 + DR. bf16: into the lane accumulators of row r at av + r ald
 * (vector d: 8 partial sums of head-dim row d), whose lanes xe_pv_sum adds
 * once per sequence: reducing them after each tile of groups (hadd trees)
 * took a quarter of the kernel's time. fp8: av[r * ald + d] += the sums
 * (reduced per tile): fp8 needs more registers (4 planes, the non-finite
 * check), and lane accumulators made the compiler spill (-10% in L2).
 * Probability planes at pp: [group][plane][row][8], for fp8 times 2^120
 * (2^112) as the values stay raw (xe_plane_raw): the same exact products as
 * scaled values times p, one multiply less per plane. Returns 1 (adding
 * nothing) on a non-finite fp8 value when fix is 0. */
XE_INLINE int xe_pv(const float *pp, const char *const *vb, int64_t voff, int64_t ngrp, int64_t nlast,
                    int64_t rs, int64_t d0, const int fp8, const int e5, const int fix, const int NR, const int DR,
                    float *av, int64_t ald) {
  const int NP = fp8 ? 4 : 2, M = fp8 ? DR / 2 : DR; /* loads per group (fp8: two rows each) */
  __m256 acc[8][8];
  if (!fp8) av += d0 * 8;
#pragma GCC unroll 8
  for (int r = 0; r < NR; r++)
#pragma GCC unroll 8
    for (int j = 0; j < M; j++) acc[r][j] = fp8 ? _mm256_setzero_ps() : _mm256_loadu_ps(av + r * ald + 8 * j);
  __m256i sp = _mm256_setzero_si256();
  for (int64_t g = 0; g < ngrp; g++) {
    const char *v = vb[g] + voff + d0 * rs;
    __m256i w[8], s[8];
#pragma GCC unroll 8
    for (int j = 0; j < M; j++) {
      if (fp8) {
        w[j] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(v + 2 * j * rs))),
                                       _mm_loadu_si128((const __m128i *)(v + (2 * j + 1) * rs)), 1);
      } else {
        w[j] = _mm256_loadu_si256((const __m256i *)(v + j * rs));
      }
    }
    if (g + 1 == ngrp && nlast < XE_G) { /* padding slots may hold NaN: zero them */
      const __m256i iota = fp8 ? _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4,
                                                  5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
                               : _mm256_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
      const __m256i keep = fp8 ? _mm256_cmpgt_epi8(_mm256_set1_epi8((char)nlast), iota)
                               : _mm256_cmpgt_epi16(_mm256_set1_epi16((short)nlast), iota);
#pragma GCC unroll 8
      for (int j = 0; j < M; j++) w[j] = _mm256_and_si256(w[j], keep);
    }
    if (fp8) {
#pragma GCC unroll 8
      for (int j = 0; j < M; j++) {
        s[j] = xe_special(w[j], e5);
        if (!fix) sp = _mm256_or_si256(sp, s[j]);
      }
    }
#pragma GCC unroll 4
    for (int k = 0; k < NP; k++) {
      __m256 f[8];
#pragma GCC unroll 8
      for (int j = 0; j < M; j++) f[j] = fp8 && fix ? xe_plane_fix(w[j], s[j], e5, k, 1) : xe_plane_raw(w[j], fp8, e5, k);
#pragma GCC unroll 8
      for (int r = 0; r < NR; r++) {
        __m256 p = _mm256_loadu_ps(pp + ((g * NP + k) * NR + r) * 8);
        if (M > 1) XE_REG(p);
#pragma GCC unroll 8
        for (int j = 0; j < M; j++) acc[r][j] = _mm256_fmadd_ps(f[j], p, acc[r][j]);
      }
    }
  }
  if (fp8 && !fix && !_mm256_testz_si256(sp, sp)) return 1;
  if (fp8) {
    xe_store2(acc, NR, M, av + d0, ald, 1);
    return 0;
  }
#pragma GCC unroll 8
  for (int r = 0; r < NR; r++)
#pragma GCC unroll 8
    for (int j = 0; j < M; j++) _mm256_storeu_ps(av + r * ald + 8 * j, acc[r][j]);
  return 0;
}

/* out[r * old + d] = the lane sums of xe_pv's bf16 accumulators (rows 0 .. nr). */
static void xe_pv_sum(const float *av, int64_t ald, int64_t nr, int64_t D, float *out, int64_t old) {
  __m256 a[8][8];
  for (int64_t r = 0; r < nr; r++) {
    for (int64_t d = 0; d < D; d += 4) {
      for (int j = 0; j < 4; j++) a[0][j] = _mm256_loadu_ps(av + r * ald + (d + j) * 8);
      xe_store1(a, 1, 4, out + r * old + d, old, 0);
    }
  }
}

/* One fp8 Q.K kernel: raw keys (the q planes carry 2^120 / 2^112) or scaled. */
#define XE_QK8(E5, RAW, NR)                                                                                          \
  do {                                                                                                               \
    if (xe_qk(qp, kb, cs, nch, 1, E5, 0, RAW, NR, 8 / NR, lg, lld, pk))                                              \
      xe_qk(qp, kb, cs, nch, 1, E5, 1, RAW, NR, 8 / NR, lg, lld, NULL);                                              \
  } while (0)
/* The micro-kernels for NR rows (8 accumulators: M = 8 / NR per row). */
#define XE_DEF(NR)                                                                                                   \
  static void xe_qk_##NR(const float *qp, const char *kb, int64_t cs, int64_t nch, int32_t dt, int raw, float *lg,   \
                         int64_t lld, const char *pk) {                                                              \
    if (dt == XK_BF16) {                                                                                             \
      xe_qk(qp, kb, cs, nch, 0, 0, 0, 0, NR, 8 / NR, lg, lld, pk);                                                   \
    } else if (dt == XK_F8E4M3) {                                                                                    \
      if (raw)                                                                                                       \
        XE_QK8(0, 1, NR);                                                                                            \
      else                                                                                                           \
        XE_QK8(0, 0, NR);                                                                                            \
    } else {                                                                                                         \
      if (raw)                                                                                                       \
        XE_QK8(1, 1, NR);                                                                                            \
      else                                                                                                           \
        XE_QK8(1, 0, NR);                                                                                            \
    }                                                                                                                \
  }                                                                                                                  \
  static void xe_pv_##NR(const float *pp, const char *const *vb, int64_t voff, int64_t ngrp, int64_t nlast,          \
                         int64_t rs, int64_t D, int32_t dt, float *av, int64_t ald) {                                \
    const int64_t DR = dt == XK_BF16 ? 8 / NR : 16 / NR;                                                             \
    for (int64_t d0 = 0; d0 < D; d0 += DR) {                                                                         \
      if (dt == XK_BF16) {                                                                                           \
        xe_pv(pp, vb, voff, ngrp, nlast, rs, d0, 0, 0, 0, NR, 8 / NR, av, ald);                                      \
      } else if (dt == XK_F8E4M3) {                                                                                  \
        if (xe_pv(pp, vb, voff, ngrp, nlast, rs, d0, 1, 0, 0, NR, 16 / NR, av, ald))                                 \
          xe_pv(pp, vb, voff, ngrp, nlast, rs, d0, 1, 0, 1, NR, 16 / NR, av, ald);                                   \
      } else {                                                                                                       \
        if (xe_pv(pp, vb, voff, ngrp, nlast, rs, d0, 1, 1, 0, NR, 16 / NR, av, ald))                                 \
          xe_pv(pp, vb, voff, ngrp, nlast, rs, d0, 1, 1, 1, NR, 16 / NR, av, ald);                                   \
      }                                                                                                              \
    }                                                                                                                \
  }
XE_DEF(4)
XE_DEF(2)
XE_DEF(1)
#undef XE_QK8

/* Rows per micro-kernel call from row r0 of G: 4, 2 or 1. */
static inline int64_t xe_nr(int64_t G, int64_t r0) {
  return G - r0 >= 4 ? 4 : G - r0 >= 2 ? 2 : 1;
}

/* q (f32, D elements) as row rr of nr in the planes at dst: chunk c (E
 * elements), plane k: lanes i and 4 + i hold element c E + (E / 4) i + k,
 * the element xe_plane puts there. */
static void xe_q_planes(const float *q, int64_t D, const int fp8, float qs, int64_t nr, int64_t rr, float *dst) {
  const int64_t E = fp8 ? 16 : 8, NP = fp8 ? 4 : 2, step = fp8 ? 4 : 2;
  for (int64_t c = 0; c < D / E; c++)
    for (int64_t k = 0; k < NP; k++)
      for (int64_t i = 0; i < 8; i++) dst[((c * NP + k) * nr + rr) * 8 + i] = q[c * E + step * (i & 3) + k] * qs;
}

/* Probabilities p[0 .. 16 ngrp) times ps as row rr of nr in the planes
 * xe_pv reads (group g, plane k at dst + ((g NP + k) nr + rr) 8). */
static void xe_p_planes(const float *p, int64_t ngrp, const int fp8, float ps, int64_t nr, int64_t rr, float *dst) {
  const int64_t NP = fp8 ? 4 : 2;
  const __m256 sc = _mm256_set1_ps(ps);
  for (int64_t g = 0; g < ngrp; g++, p += XE_G) {
    float *d = dst + g * NP * nr * 8 + rr * 8;
    if (fp8) { /* plane k, lanes i and 4 + i: token 4 i + k */
      const __m256 a = _mm256_mul_ps(_mm256_loadu_ps(p), sc), b = _mm256_mul_ps(_mm256_loadu_ps(p + 8), sc);
      const __m256 lo = _mm256_permute2f128_ps(a, b, 0x20), hi = _mm256_permute2f128_ps(a, b, 0x31);
      /* lo = tokens 0-3 | 8-11, hi = 4-7 | 12-15: transpose the 4 x 4 blocks */
      const __m256 t0 = _mm256_unpacklo_ps(lo, hi), t1 = _mm256_unpackhi_ps(lo, hi);
      /* t0 = 0 4 1 5 | 8 12 9 13, t1 = 2 6 3 7 | 10 14 11 15 */
      const __m256 k0 = _mm256_shuffle_ps(t0, t1, 0x44), k1 = _mm256_shuffle_ps(t0, t1, 0xee);
      /* k0 = 0 4 2 6 | 8 12 10 14 (k = 0: 0 4 8 12; k = 2: 2 6 10 14), k1 = 1 5 3 7 | 9 13 11 15 */
      const __m256 e0 = _mm256_permutevar8x32_ps(k0, _mm256_setr_epi32(0, 1, 4, 5, 0, 1, 4, 5));
      const __m256 e2 = _mm256_permutevar8x32_ps(k0, _mm256_setr_epi32(2, 3, 6, 7, 2, 3, 6, 7));
      const __m256 e1 = _mm256_permutevar8x32_ps(k1, _mm256_setr_epi32(0, 1, 4, 5, 0, 1, 4, 5));
      const __m256 e3 = _mm256_permutevar8x32_ps(k1, _mm256_setr_epi32(2, 3, 6, 7, 2, 3, 6, 7));
      _mm256_storeu_ps(d, e0);
      _mm256_storeu_ps(d + 8 * nr, e1);
      _mm256_storeu_ps(d + 16 * nr, e2);
      _mm256_storeu_ps(d + 24 * nr, e3);
    } else { /* plane k: tokens 2 i + k */
      const __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
      const __m256 ev = _mm256_shuffle_ps(a, b, 0x88), od = _mm256_shuffle_ps(a, b, 0xdd);
      /* ev = 0 2 8 10 | 4 6 12 14 */
      const __m256i ord = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
      _mm256_storeu_ps(d, _mm256_permutevar8x32_ps(ev, ord));
      _mm256_storeu_ps(d + 8 * nr, _mm256_permutevar8x32_ps(od, ord));
    }
  }
}

static int xe_paged_ok(const xk_attn_args *a) {
  const int32_t dt = a->cache_dtype;
  if (!a->fast || a->layout != XK_LAYOUT_PAGED || !(dt == XK_BF16 || xk_is_fp8(dt))) return 0;
  if (a->block_size % XE_G || a->head_size % 16 || a->head_size > 512 || a->num_heads / a->num_kv_heads > 16) return 0;
  const int64_t x = 16 / xk_dtype_size(dt);
  return a->x == x && a->key_cache_strides[4] == 1 && a->key_cache_strides[3] == x &&
         a->value_cache_strides[3] == 1;
}

/* One grid block (sequence, partition, kv head) at a time: q planes, logits
 * of every token of the range, the softmax (as attn_paged), probability
 * planes, then P.V a tile of groups at a time. */
static __attribute__((noinline)) void xe_paged(const xk_attn_args *a, const xa_ws *w, int64_t begin, int64_t end) {
  const int64_t Hkv = a->num_kv_heads, G = a->num_heads / Hkv, D = a->head_size, Dp = w->Dp, L_ = w->L;
  const int64_t P = a->partition_size ? a->max_partitions : 1, qes = xk_dtype_size(a->dtype);
  const int32_t dt = a->cache_dtype;
  const int fp8 = xk_is_fp8(dt);
  const int64_t es = xk_dtype_size(dt), bs = a->block_size, nch = D / (fp8 ? 16 : 8);
  const int64_t *ks = a->key_cache_strides, *vs_ = a->value_cache_strides;
  const int64_t cs = ks[2] * es, rs = vs_[2] * es, QW = 2 * D, PW = fp8 ? 2 * L_ : L_;
  float *qp = (float *)w->q, *pp = (float *)w->p16;
  const char *vb[XE_TILE];
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | XE_FTZ);
  for (int64_t b = begin; b < end; b++) {
    const int64_t kvh = b % Hkv, part = (b / Hkv) % P, seq = b / (Hkv * P); /* kv heads fastest */
    const int64_t L = a->seq_lens[seq], t0 = part * a->partition_size;
    if (a->partition_size && t0 >= L) continue; /* v2: nothing to do, nothing written */
    const int64_t t1 = a->partition_size ? xa_min(t0 + a->partition_size, L) : L, n = t1 - t0;
    const int64_t ngrp = (n + XE_G - 1) / XE_G;
    const int32_t *bt = a->block_tables + seq * a->block_tables_stride_seq;
    /* fp8: when every |q| < 2^7 the q planes carry the keys' 2^120 (2^112)
     * and the keys stay raw (xe_plane_raw): the same exact products, one
     * multiply less per key plane, no overflow. */
    float qmax = 0.0f;
    for (int64_t g = 0; g < G; g++) {
      const int64_t h = kvh * G + g;
      float *qf = w->stage + g * D;
      xa_to_f32(qf, (const char *)a->query + (seq * a->q_stride_token + h * a->q_stride_head) * qes, a->dtype, D);
      for (int64_t i = 0; i < D; i++) qmax = fmaxf(qmax, fabsf(qf[i]));
    }
    const int raw = fp8 && qmax < 0x1p7f;
    const float qs = !raw ? 1.0f : dt == XK_F8E5M2 ? 0x1p112f : 0x1p120f;
    for (int64_t g = 0, r0 = 0; g < G; g++) {
      const int64_t nr = xe_nr(G, r0);
      xe_q_planes(w->stage + g * D, D, fp8, qs, nr, g - r0, qp + r0 * QW);
      if (g + 1 == r0 + nr) r0 += nr;
    }
    /* Pass 1: logits of every token of the range. The keys of the group
     * XE_PD ahead are prefetched into L2, spread over the micro-kernel's
     * iterations (the block table is shuffled: the hardware prefetchers
     * cannot follow). Measured and rejected (B=8 ctx=4096 16/2 D=256 bf16):
     * prefetching into L1 (-3%), also prefetching the group's values for
     * pass 2 (-5%), distances 1 and 4 (-5%, -12%), none (-35%). */
    for (int64_t gi = 0; gi < ngrp; gi++) {
      const int64_t tok = t0 + gi * XE_G;
      const int64_t blk = (int64_t)bt[(tok / bs) * a->block_tables_stride_block];
      const char *kb = (const char *)a->key_cache + (blk * ks[0] + kvh * ks[1] + (tok % bs) * ks[3]) * es;
      const char *pk = NULL;
      if (gi + XE_PD < ngrp) {
        const int64_t tk = tok + XE_PD * XE_G, bk = (int64_t)bt[(tk / bs) * a->block_tables_stride_block];
        pk = (const char *)a->key_cache + (bk * ks[0] + kvh * ks[1] + (tk % bs) * ks[3]) * es;
      }
      for (int64_t r0 = 0; r0 < G;) {
        const int64_t nr = xe_nr(G, r0);
        const float *q = qp + r0 * QW;
        float *lg = w->lg + r0 * L_ + gi * XE_G;
        const char *pf = r0 ? NULL : pk;
        switch (nr) {
          case 4: xe_qk_4(q, kb, cs, nch, dt, raw, lg, L_, pf); break;
          case 2: xe_qk_2(q, kb, cs, nch, dt, raw, lg, L_, pf); break;
          default: xe_qk_1(q, kb, cs, nch, dt, raw, lg, L_, pf); break;
        }
        r0 += nr;
      }
    }
    /* Softmax of each row (as attn_paged); probabilities rounded to the query dtype, 0 past n. */
    const float ksc = a->k_scale ? a->k_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
    const float sc = a->scale * ksc, pscale = !fp8 ? 1.0f : dt == XK_F8E5M2 ? 0x1p112f : 0x1p120f;
    for (int64_t r = 0, r0 = 0; r < G; r++) {
      const int64_t h = kvh * G + r, nr = xe_nr(G, r0);
      float *x = w->lg + r * L_;
      xa_paged_softmax(a, x, n, sc, seq, h, part, t0 - L + 1);
      xa_round_to(x, n, a->dtype);
      for (int64_t i = n; i < ngrp * XE_G; i++) x[i] = 0.0f;
      xe_p_planes(x, ngrp, fp8, pscale, nr, r - r0, pp + r0 * PW);
      if (r + 1 == r0 + nr) r0 += nr;
    }
    /* Pass 2: P.V, a tile of groups at a time. No software prefetch:
     * prefetching the next tile or a few rows ahead measured 3-9% slower. */
    /* bf16: lane accumulators, G rows of ald floats, one cache line more
     * than a row apart, starting 2 KiB into a 4 KiB page: the value lines a
     * call reads share one L1 set (their blocks are 4 KiB aligned), and the
     * accumulator lines of the same call then sit in other sets (without
     * that, -3% instead of +5% at B=1 ctx=512 16/2 D=256 in L2). */
    const int64_t ald = fp8 ? Dp : 8 * D + 16;
    float *av = fp8 ? w->acc : (float *)((((uintptr_t)(w->acc + G * Dp) + 2048 + 4095) & ~(uintptr_t)4095) - 2048);
    memset(av, 0, (size_t)(G * ald) * sizeof(float));
    const int64_t voff = kvh * vs_[1] * es, NPG = fp8 ? 32 : 16;
    for (int64_t g0 = 0; g0 < ngrp; g0 += XE_TILE) {
      const int64_t ng = xa_min(XE_TILE, ngrp - g0);
      for (int64_t gi = 0; gi < ng; gi++) {
        const int64_t tok = t0 + (g0 + gi) * XE_G;
        const int64_t blk = (int64_t)bt[(tok / bs) * a->block_tables_stride_block];
        vb[gi] = (const char *)a->value_cache + (blk * vs_[0] + (tok % bs) * vs_[3]) * es;
      }
      const int64_t nlast = xa_min(XE_G, n - (g0 + ng - 1) * XE_G);
      for (int64_t r0 = 0; r0 < G;) {
        const int64_t nr = xe_nr(G, r0);
        const float *p = pp + r0 * PW + g0 * NPG * nr;
        float *o = av + r0 * ald;
        switch (nr) {
          case 4: xe_pv_4(p, vb, voff, ng, nlast, rs, D, dt, o, ald); break;
          case 2: xe_pv_2(p, vb, voff, ng, nlast, rs, D, dt, o, ald); break;
          default: xe_pv_1(p, vb, voff, ng, nlast, rs, D, dt, o, ald); break;
        }
        r0 += nr;
      }
    }
    if (!fp8) xe_pv_sum(av, ald, G, D, w->acc, Dp);
    const float vsc = a->v_scale ? a->v_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
    for (int64_t r = 0; r < G; r++) {
      const int64_t h = kvh * G + r;
      char *dst;
      if (a->partition_size) {
        dst = (char *)a->tmp_out +
              (seq * a->tmp_out_strides[0] + h * a->tmp_out_strides[1] + part * a->tmp_out_strides[2]) * qes;
      } else {
        dst = (char *)a->out + (seq * a->out_stride_token + h * a->out_stride_head) * qes;
      }
      xa_write_row(dst, a->dtype, w->acc + r * Dp, D, vsc);
    }
  }
  _mm_setcsr(csr);
}

/* ---- varlen decode over the flash layout (AVX2) ---------------------------------
 *
 * flash_attn_varlen_func calls whose work items are one query each (decode
 * rows): the xe_ scheme above over the flash layout [blocks][bs][Hkv][D],
 * where a token's D elements of a kv head are contiguous.
 *   keys: 32 bytes of one token row (16 bf16 or 32 fp8 elements), widened
 *     into 2 or 4 planes (xe_plane: plane k lane i = element NP i + k), times
 *     q in the same planes; the accumulator lanes are partial sums of one
 *     token, reduced once per token (xe_store1). fp8 keys stay raw when
 *     every |q| of the item is below 2^7 (the q planes carry the factor).
 *   values: 32 bytes of one token row widened the same way, times the
 *     token's probability broadcast; the accumulator lanes are head-dim
 *     elements in plane order (acc[c E + 8 k + i] = element c E + NP i + k,
 *     E = 8 NP), put back in order once per item. fp8 values stay raw
 *     (xe_plane_raw) and the probabilities carry the 2^120 / 2^112 instead:
 *     raw * (p 2^120) is the same exact product as (raw 2^120) * p.
 * Each load serves up to 4 query heads of its kv head. Tokens are addressed
 * through per-token row pointers, so any block size and any step start work.
 * The softmax runs online in steps of XF_S keys from the row's first key
 * (attn_varlen's scale, softcap, ALiBi, running maximum and sum, sinks and
 * LSE); probabilities rounded to the query dtype.
 * Memory: pass 1 and pass 2 compute while the next step's keys and values
 * stream into L2 (xf_pf: every line once, in address order, one line per
 * gap FMAs of both passes), so DRAM traffic overlaps the FMAs at the even
 * rate the step needs. Before (session 14), keys and values were prefetched
 * two groups ahead inside pass 1 only, twice the rate there: the software
 * prefetches (L1 miss buffers) could not keep up, and out of cache pass 1
 * took 2.7-3.6x its in-L2 time while pass 2 waited on nothing. Session 15
 * (harness, CPU time, B=8 ctx=4096 cold, new/old median, alternated in one
 * process): Llama bf16 0.70-0.72, Qwen bf16 0.82-0.83, Llama fp8 0.91-0.97,
 * Qwen fp8 1.03-1.05 (compute-bound: the count costs 2-5% of its loop);
 * bit-identical. Now 1.1-1.35x xe_paged's time (bf16 Llama 14.5 vs 12.0 ms,
 * Qwen 11.5 vs 10.3; fp8 Llama 17.9 vs 13.2, Qwen 14.8 vs 11.2): fp8 is
 * compute-bound, in L2 a 64-key step runs at 59-75% of the FMA peak per pass
 * plus 9-15% for the softmax step.
 * Tried and rejected in session 15 (same harness, new/old, Llama/Qwen bf16,
 * Llama/Qwen fp8): keys only prefetched in pass 1, values on demand, 0.86,
 * 1.01, 1.10, 1.15; that plus the next step's values spread over pass 2,
 * 0.88, 0.93, 0.96, 1.03; values on demand in P.V token tiles of 8 or 16 or
 * steps of 16 or 32 keys (for the L2 streamer), 0.93-1.25; every other line
 * only (for the adjacent-line prefetcher), Llama 1.38-1.49; the stream with
 * its count in memory, 0.81-1.16; the stream without the first step's keys,
 * ctx=512 fp8 0.97 / 1.07 (0.84 / 1.02 with them); T0 or T2 hints, no change.
 * Tried in session 14 (new/old time, B=8 ctx=4096, both models, bf16 and
 * fp8): values prefetched during pass 1 of their own step and the next
 * step's keys spread evenly over pass 2 in address order, 0.89-1.20; only the
 * first 2-4 lines of each 4 KiB page, 1.07-1.95; values one kv head ahead in
 * pass 2, 1.01-1.25; steps of 16 or 32 keys, 0.98-1.13; P.V in token tiles of
 * 16 or 32 (the 2 KiB row stride puts a sweep's lines in few L1 sets),
 * 0.95-1.10; raw fp8 keys with the factor on q (as xe_paged), bit-identical
 * but 1.33-1.38x slower in L2 (session 16, on today's kernels: fp8 Q.K
 * 17-20% faster in L2, now used); kv groups of 1, 2, 4 Llama heads instead of 8,
 * 1.01-1.03 vs 0.95; steps of 128 or 256 keys, prefetch distances 3 or 4.
 * Session 16 (rdtsc harness per pass, L3-resident B=1 ctx=512, min per
 * call; bit-identical unless said): raw fp8 keys (above), fp8 Q.K 0.80-0.83;
 * fp8 P.V checking its words once for both plane pairs, 0.95; the softmax
 * step in two passes (xf_softmax_step), 0.85 of the step. Found: in cache the
 * stream costs Llama bf16 13% of Q.K and 35% of P.V (its countdown about two
 * thirds of that; it pays off only out of cache); the softmax step is bound
 * by its 8 exps (about 40% of it). Rejected: Q.K as 4 rows x 3 tokens (12
 * accumulators: spills), 1.39; the stream's count per chunk in Q.K, 1.05;
 * P.V two tokens per stream count (the loop is issue-bound), bf16 Qwen P.V
 * 0.90-0.94 but Llama total 0.95-1.03 against 0.96-0.97 with one token per
 * count (cold, B=1 ctx=512), fp8 1.11 (spills); bf16 P.V as two row pairs of 2 chunks (each line read once per call),
 * Llama 1.05; value rows prefetched into L1 2, 4 or 8 tokens ahead (the 2
 * KiB row stride leaves a sweep 2 L1 sets), P.V 1.06-1.16; steps of 32 keys
 * (other roundings), 0.91-1.01; kv groups of 4 or 2 Llama heads, cold
 * 1.33-1.38 (bf16), 1.09-1.13 (fp8).
 */
#define XF_S XA_VT /* keys per online-softmax step (the workspace's logit columns; a multiple of XE_G) */

/* The prefetch stream of a step (into L2): every line of the next step's key
 * rows, then of its value rows (the first step: its own keys and values
 * before them), token by token in address order, at an even pace over the
 * step's micro-kernel iterations: one line per gap FMAs (cd counts down). */
typedef struct {
  const char *p, *end;           /* the current row's next line and its end */
  const char *const *rows[4];    /* phases: token rows (kv head 0) of K, V (this step), K, V (the next) */
  int64_t n[4], hs[4], np, ph;   /* tokens and head strides per phase; phases; the current one */
  int64_t t, kvl, kv0, kg, rowb; /* position (token, kv head of kg from kv0) and row bytes */
  int64_t gap, cd;
} xf_pf;

/* Next row of the stream (after the last one: p = end = NULL). */
static void xf_pf_row(xf_pf *f) {
  while (f->ph < f->np) {
    if (f->t < f->n[f->ph]) {
      f->p = f->rows[f->ph][f->t] + (f->kv0 + f->kvl) * f->hs[f->ph];
      f->end = f->p + f->rowb;
      if (++f->kvl == f->kg) f->kvl = 0, f->t++;
      return;
    }
    f->ph++, f->t = 0, f->kvl = 0;
  }
  f->p = f->end = NULL;
}

/* A micro-kernel's copy of the stream position and count, in registers
 * (the kernel's stores could alias f: -fno-strict-aliasing). */
typedef struct {
  const char *p;
  int64_t cd;
} xf_pfl;

/* Counts W FMAs down; issues the stream's next lines while the count runs out. */
XE_INLINE void xf_pf_tick(xf_pf *f, xf_pfl *l, int64_t W) {
  if ((l->cd -= W) > 0) return;
  do {
    l->cd += f->gap;
    if (!l->p) return;
    _mm_prefetch(l->p, _MM_HINT_T1);
    l->p += 64;
    if (l->p >= f->end) {
      xf_pf_row(f);
      l->p = f->p;
    }
  } while (l->cd <= 0);
}

/* Logits of NR query rows (q planes at qp: [chunk][plane][row][8]) for the 16
 * token rows kt[0 .. 16) + hoff (nch chunks of 32 bytes), TP tokens per pass,
 * to lg[r * lld + 0 .. 16), advancing the prefetch stream f when f. Returns 1
 * (lg partly written) when an fp8 key is not finite and fix is 0: the caller
 * runs it again with fix. */
XE_INLINE int xf_qk(const float *qp, const char *const *kt, int64_t hoff, int64_t nch, const int fp8, const int e5,
                    const int fix, const int raw, const int NR, const int TP, float *lg, int64_t lld, xf_pf *f) {
  const int NP = fp8 ? 4 : 2;
  __m256i sp = _mm256_setzero_si256();
  xf_pfl pl = {f->p, f->cd};
  for (int tp0 = 0; tp0 < XE_G; tp0 += TP) {
    __m256 acc[8][8];
    const char *kr[8];
#pragma GCC unroll 8
    for (int j = 0; j < TP; j++) kr[j] = kt[tp0 + j] + hoff;
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 8
      for (int j = 0; j < TP; j++) acc[r][j] = _mm256_setzero_ps();
    if (!fix) xf_pf_tick(f, &pl, nch * NR * TP * NP);
    for (int64_t c = 0; c < nch; c++) {
      __m256i w[8];
#pragma GCC unroll 8
      for (int j = 0; j < TP; j++) w[j] = _mm256_loadu_si256((const __m256i *)(kr[j] + 32 * c));
      xe_qk_words(acc, w, qp + c * NP * NR * 8, fp8, e5, fix, raw, NR, TP, &sp);
    }
    xe_store1(acc, NR, TP, lg + tp0, lld, 0);
  }
  f->p = pl.p;
  f->cd = pl.cd;
  return fp8 && !fix && !_mm256_testz_si256(sp, sp);
}

/* One token of xf_pv: the value row v (M chunks) times the NR probabilities
 * p[r * pld] into acc. */
XE_INLINE void xf_pv_tok(__m256 acc[8][8], const char *v, const float *p, int64_t pld, const int fp8, const int e5,
                         const int fix, const int K0, const int NR, const int M, __m256i *sp) {
  __m256i w[8], s[8];
#pragma GCC unroll 8
  for (int m = 0; m < M; m++) {
    w[m] = _mm256_loadu_si256((const __m256i *)(v + 32 * m));
    if (fp8 && fix < 2) {
      s[m] = xe_special(w[m], e5);
      if (!fix) *sp = _mm256_or_si256(*sp, s[m]);
    }
  }
  __m256 pr[8];
#pragma GCC unroll 8
  for (int r = 0; r < NR; r++) pr[r] = _mm256_broadcast_ss(p + r * pld);
#pragma GCC unroll 8
  for (int m = 0; m < M; m++) {
#pragma GCC unroll 2
    for (int k = 0; k < 2; k++) {
      const __m256 f = fp8 && fix == 1 ? xe_plane_fix(w[m], s[m], e5, K0 + k, 1) : xe_plane_raw(w[m], fp8, e5, K0 + k);
#pragma GCC unroll 8
      for (int r = 0; r < NR; r++) acc[r][2 * m + k] = _mm256_fmadd_ps(f, pr[r], acc[r][2 * m + k]);
    }
  }
}

/* P.V of NR rows (probabilities p[r * pld + t], fp8: times 2^120 / 2^112)
 * over the n token rows vt[t] + hoff, for the M chunks of 32 bytes from c0
 * and planes K0, K0 + 1: out[r * old + c E + 8 k + i] += sum_t p v (plane
 * order, see above). Returns 1 (adding nothing) on a non-finite fp8 value
 * when fix is 0; fix 1 widens such values (xe_plane_fix), fix 2 does not
 * look for them (the words are known finite). */
XE_INLINE int xf_pv(const float *p, int64_t pld, const char *const *vt, int64_t hoff, int64_t n, int64_t c0,
                    const int fp8, const int e5, const int fix, const int K0, const int NR, const int M, float *out,
                    int64_t old, xf_pf *f) {
  const int NP = fp8 ? 4 : 2;
  __m256 acc[8][8];
#pragma GCC unroll 8
  for (int r = 0; r < NR; r++)
#pragma GCC unroll 8
    for (int m = 0; m < M; m++)
#pragma GCC unroll 2
      for (int k = 0; k < 2; k++) acc[r][2 * m + k] = _mm256_loadu_ps(out + r * old + (c0 + m) * 8 * NP + 8 * (K0 + k));
  __m256i sp = _mm256_setzero_si256();
  xf_pfl pl = {f->p, f->cd};
  for (int64_t t = 0; t < n; t++) {
    if (fix != 1) xf_pf_tick(f, &pl, 2 * NR * M);
    xf_pv_tok(acc, vt[t] + hoff + 32 * c0, p + t, pld, fp8, e5, fix, K0, NR, M, &sp);
  }
  f->p = pl.p;
  f->cd = pl.cd;
  if (fp8 && !fix && !_mm256_testz_si256(sp, sp)) return 1;
#pragma GCC unroll 8
  for (int r = 0; r < NR; r++)
#pragma GCC unroll 8
    for (int m = 0; m < M; m++)
#pragma GCC unroll 2
      for (int k = 0; k < 2; k++) _mm256_storeu_ps(out + r * old + (c0 + m) * 8 * NP + 8 * (K0 + k), acc[r][2 * m + k]);
  return 0;
}

/* One dtype's P.V kernel over chunks [c0, c0 + M), every plane pair. fp8:
 * the second pair reads the words the first one checked; it looks for
 * non-finite codes again only when the first found some (the checks were a
 * quarter of the vector ALU work of the fp8 P.V loop). */
#define XF_PV8(E5, NR, M)                                                                                           \
  do {                                                                                                              \
    if (xf_pv(p, pld, vt, hoff, n, c0, 1, E5, 0, 0, NR, M, out, old, f)) {                                          \
      xf_pv(p, pld, vt, hoff, n, c0, 1, E5, 1, 0, NR, M, out, old, f);                                              \
      xf_pv(p, pld, vt, hoff, n, c0, 1, E5, 1, 2, NR, M, out, old, f);                                              \
    } else {                                                                                                        \
      xf_pv(p, pld, vt, hoff, n, c0, 1, E5, 2, 2, NR, M, out, old, f);                                              \
    }                                                                                                               \
  } while (0)
#define XF_PV_ALL(NR, M)                                                                                            \
  do {                                                                                                              \
    if (dt == XK_BF16) {                                                                                            \
      xf_pv(p, pld, vt, hoff, n, c0, 0, 0, 0, 0, NR, M, out, old, f);                                               \
    } else if (dt == XK_F8E4M3) {                                                                                   \
      XF_PV8(0, NR, M);                                                                                             \
    } else {                                                                                                        \
      XF_PV8(1, NR, M);                                                                                             \
    }                                                                                                               \
  } while (0)

/* The micro-kernels for NR rows: Q.K^T with 8 / NR tokens per pass, P.V with
 * 4 / NR chunks per token (8 accumulators), then single chunks for the rest. */
#define XF_QK8(E5, RAW, NR)                                                                                         \
  do {                                                                                                              \
    if (xf_qk(qp, kt, hoff, nch, 1, E5, 0, RAW, NR, 8 / NR, lg, lld, f))                                            \
      xf_qk(qp, kt, hoff, nch, 1, E5, 1, RAW, NR, 8 / NR, lg, lld, f);                                              \
  } while (0)
#define XF_DEF(NR)                                                                                                  \
  static void xf_qk_##NR(const float *qp, const char *const *kt, int64_t hoff, int64_t nch, int32_t dt, int raw,    \
                         float *lg, int64_t lld, xf_pf *f) {                                                        \
    if (dt == XK_BF16) {                                                                                            \
      xf_qk(qp, kt, hoff, nch, 0, 0, 0, 0, NR, 8 / NR, lg, lld, f);                                                 \
    } else if (dt == XK_F8E4M3) {                                                                                   \
      if (raw)                                                                                                      \
        XF_QK8(0, 1, NR);                                                                                           \
      else                                                                                                          \
        XF_QK8(0, 0, NR);                                                                                           \
    } else {                                                                                                        \
      if (raw)                                                                                                      \
        XF_QK8(1, 1, NR);                                                                                           \
      else                                                                                                          \
        XF_QK8(1, 0, NR);                                                                                           \
    }                                                                                                               \
  }                                                                                                                 \
  static void xf_pv_##NR(const float *p, int64_t pld, const char *const *vt, int64_t hoff, int64_t n, int64_t cb,   \
                         int64_t ce, int32_t dt, float *out, int64_t old, xf_pf *f) {                               \
    int64_t c0 = cb;                                                                                                \
    for (; c0 + 4 / NR <= ce; c0 += 4 / NR) XF_PV_ALL(NR, 4 / NR);                                                  \
    for (; c0 < ce; c0++) XF_PV_ALL(NR, 1);                                                                         \
  }
XF_DEF(4)
XF_DEF(2)
XF_DEF(1)
#undef XF_DEF
#undef XF_QK8
#undef XF_PV_ALL
#undef XF_PV8

/* q (f32, D elements) as row rr of nr in the planes at dst (chunk c, plane
 * k: lane i holds element c E + NP i + k, E = 8 NP). */
static void xf_q_planes(const float *q, int64_t D, const int fp8, float qs, int64_t nr, int64_t rr, float *dst) {
  const int64_t NP = fp8 ? 4 : 2, E = 8 * NP;
  for (int64_t c = 0; c < D / E; c++)
    for (int64_t k = 0; k < NP; k++)
      for (int64_t i = 0; i < 8; i++) dst[((c * NP + k) * nr + rr) * 8 + i] = q[c * E + NP * i + k] * qs;
}

/* The online-softmax step of one row without softcap or ALiBi, n a multiple
 * of 8, in two passes over the logits x (times sc: recomputed, not stored):
 * the running maximum, then exp, the sum, the query-dtype rounding (bf16,
 * f16 or f32) and (fp8) the factor ps, stored once. The same operations in
 * the same order as the general step (xa_max_row, xa_exp_sum, xa_round_to):
 * bit-identical; it makes the step about 2x faster in L1 (six calls and
 * four passes over x before). Returns 0 when the row has attended nothing
 * yet (x left for the caller to clear), else 1 with *m, *l, acc updated. */
static int xf_softmax_step(float *x, int64_t n, float sc, float *m, float *l, float *acc, int64_t D,
                           int32_t dtype, float ps) {
  const __m256 vs = _mm256_set1_ps(sc);
  __m256 mx = _mm256_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; j += 8) mx = _mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j), vs), mx);
  float lanes[8], mt = -INFINITY;
  _mm256_storeu_ps(lanes, mx);
  for (int j = 0; j < 8; j++) mt = lanes[j] > mt ? lanes[j] : mt;
  const float m_new = fmaxf(*m, mt);
  if (m_new == -INFINITY) return 0;
  const float alpha = *m == -INFINITY ? 0.0f : expf(*m - m_new);
  const __m256 vm = _mm256_set1_ps(m_new), vp = _mm256_set1_ps(ps);
  const __m256i hi16 = _mm256_set1_epi32((int)0xffff0000u);
  __m256 sum8 = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; j += 8) {
    __m256 e = xa_exp8(_mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j), vs), vm));
    sum8 = _mm256_add_ps(sum8, e);
    if (dtype == XK_BF16) { /* round to nearest even; NaN kept quiet (xk_store8, xk_load8) */
      const __m256i u = _mm256_castps_si256(e);
      const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
      const __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd);
      const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                             _mm256_set1_epi32(0x7f800000));
      e = _mm256_castsi256_ps(
          _mm256_and_si256(_mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan), hi16));
    } else if (dtype == XK_F16) {
      e = _mm256_cvtph_ps(_mm256_cvtps_ph(e, _MM_FROUND_TO_NEAREST_INT));
    }
    if (ps != 1.0f) e = _mm256_mul_ps(e, vp);
    _mm256_storeu_ps(x + j, e);
  }
  float sum = 0.0f;
  _mm256_storeu_ps(lanes, sum8);
  for (int j = 0; j < 8; j++) sum += lanes[j];
  if (alpha != 1.0f) {
    const __m256 va = _mm256_set1_ps(alpha);
    for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(acc + d, _mm256_mul_ps(_mm256_loadu_ps(acc + d), va));
  }
  *l = *l * alpha + sum;
  *m = m_new;
  return 1;
}

static int xf_varlen_ok(const xk_attn_args *a) {
  const int32_t dt = a->cache_dtype;
  if (!a->fast || a->layout != XK_LAYOUT_FLASH || !(dt == XK_BF16 || xk_is_fp8(dt))) return 0;
  const int64_t G = a->num_heads / a->num_kv_heads, KG = a->kv_group > 0 ? a->kv_group : 1;
  if (G > 16 || a->head_size % (xk_is_fp8(dt) ? 32 : 16) || a->head_size > 512) return 0;
  /* items of one query each (a work item's rows: G per kv head of the group) */
  return a->max_rows == G * KG && a->key_cache_strides[3] == 1 && a->value_cache_strides[3] == 1;
}

/* Row pointers (kv head 0) of tokens t0 .. t0 + n of a sequence's keys or values. */
static void xf_rows(const xk_attn_args *a, const int32_t *bt, int value, int64_t t0, int64_t n, const char **rows) {
  const int64_t *st = value ? a->value_cache_strides : a->key_cache_strides, es = xk_dtype_size(a->cache_dtype);
  const char *base = (const char *)(value ? a->value_cache : a->key_cache);
  const int64_t bs = a->block_size;
  int64_t bi = t0 / bs, off = t0 % bs; /* one division per call, not one per token */
  const char *blk = base + (int64_t)bt[bi * a->block_tables_stride_block] * st[0] * es;
  for (int64_t i = 0; i < n; i++) {
    rows[i] = blk + off * st[1] * es;
    if (++off == bs && i + 1 < n) {
      off = 0;
      blk = base + (int64_t)bt[++bi * a->block_tables_stride_block] * st[0] * es;
    }
  }
}

static __attribute__((noinline)) void xf_varlen(const xk_attn_args *a, const xa_ws *w, int64_t begin, int64_t end) {
  const int64_t Hkv = a->num_kv_heads, G = a->num_heads / Hkv, D = a->head_size, Dp = w->Dp, L_ = w->L;
  const int64_t KG = a->kv_group > 0 ? a->kv_group : 1, NG = Hkv / KG, qes = xk_dtype_size(a->dtype);
  const int32_t dt = a->cache_dtype;
  const int fp8 = xk_is_fp8(dt);
  const int64_t es = xk_dtype_size(dt), NP = fp8 ? 4 : 2, nch = D / (8 * NP), rowb = D * es;
  const int64_t khs = a->key_cache_strides[2] * es, vhs = a->value_cache_strides[2] * es;
  const float pscale = !fp8 ? 1.0f : dt == XK_F8E5M2 ? 0x1p112f : 0x1p120f;
  float *qp = (float *)w->q;
  const char *rows[2][2][XF_S + XE_G]; /* [buffer][key, value][token]: this step's and the next one's */
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | XE_FTZ);
  for (int64_t b = begin; b < end; b++) {
    const int64_t item = b / NG, kvh0 = (b % NG) * KG, R = KG * G;
    const int64_t seq = a->work[3 * item], i = a->work[3 * item + 1];
    const int64_t q0 = a->cu_seqlens_q[seq], q_len = a->cu_seqlens_q[seq + 1] - q0, k_len = a->seq_lens[seq];
    const int64_t pos = i + k_len - q_len;
    const int32_t *bt = a->block_tables + seq * a->block_tables_stride_seq;
    int64_t lo, hi;
    xk_attn_key_range(a, pos, k_len, &lo, &hi);
    /* fp8: when every |q| of the item < 2^7, the q planes carry the keys'
     * 2^120 (2^112) and the keys stay raw (xe_plane_raw), as in xe_paged:
     * the same exact products, one multiply less per key plane (fp8 Q.K
     * 17-20% faster in L2, bit-identical). */
    __m256 qm = _mm256_setzero_ps(); /* max |q| (NaN ignored: max_ps returns its second operand) */
    const char *qrow = (const char *)a->query + ((q0 + i) * a->q_stride_token + kvh0 * G * a->q_stride_head) * qes;
    for (int64_t r = 0; fp8 && r < R; r++) {
      xa_to_f32(w->stage, qrow + r * a->q_stride_head * qes, a->dtype, D);
      for (int64_t e = 0; e < D; e += 8)
        qm = _mm256_max_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_loadu_ps(w->stage + e)), qm);
    }
    const int raw = fp8 && _mm256_movemask_ps(_mm256_cmp_ps(qm, _mm256_set1_ps(0x1p7f), _CMP_LT_OQ)) == 0xff;
    const float qs = !raw ? 1.0f : pscale;
    for (int64_t kvl = 0; kvl < KG; kvl++) { /* row r = kvl G + g: query head kvh0 G + r */
      for (int64_t g = 0, r0 = 0; g < G; g++) {
        const int64_t r = kvl * G + g, h = kvh0 * G + r, nr = xe_nr(G, r0);
        xa_to_f32(w->stage, (const char *)a->query + ((q0 + i) * a->q_stride_token + h * a->q_stride_head) * qes,
                  a->dtype, D);
        xf_q_planes(w->stage, D, fp8, qs, nr, g - r0, qp + (kvl * G + r0) * D);
        if (g + 1 == r0 + nr) r0 += nr;
        w->m[r] = -INFINITY;
        w->l[r] = 0.0f;
      }
    }
    memset(w->acc, 0, (size_t)(R * Dp) * sizeof(float));
    const char **kt = rows[0][0], **vt = rows[0][1];
    if (lo < hi) {
      xf_rows(a, bt, 0, lo, xa_min(XF_S, hi - lo), kt);
      xf_rows(a, bt, 1, lo, xa_min(XF_S, hi - lo), vt);
    }
    for (int64_t ts = lo, nb = 1; ts < hi; ts += XF_S, nb ^= 1) {
      const int64_t n = xa_min(XF_S, hi - ts), ngrp = (n + XE_G - 1) / XE_G;
      const int64_t n2 = xa_max(0, xa_min(XF_S, hi - ts - XF_S)); /* the next step's keys */
      const char **kn = rows[nb][0], **vn = rows[nb][1];
      if (n2) {
        xf_rows(a, bt, 0, ts + XF_S, n2, kn);
        xf_rows(a, bt, 1, ts + XF_S, n2, vn);
      }
      for (int64_t j = n; j < ngrp * XE_G; j++) kt[j] = kt[n - 1]; /* a partial group repeats its last key */
      /* The prefetch stream over the step's FMAs (pass 1 runs 16 ngrp keys,
       * pass 2 n values, D / 8 FMAs per key and row): the next step's keys
       * and values, the first step's own before them. A token's rows of the
       * group's kv heads are one span when adjacent. */
      const int64_t adj = khs == rowb && vhs == rowb, first = ts == lo;
      xf_pf f = {.rows = {kt, vt, kn, vn}, .n = {n, n, n2, n2}, .hs = {khs, vhs, khs, vhs}, .np = 4,
                 .ph = first ? 0 : 2, .kv0 = kvh0, .kg = adj ? 1 : KG, .rowb = adj ? KG * rowb : rowb};
      const int64_t lines = ((first ? 2 * n : 0) + 2 * n2) * KG * ((rowb + 63) / 64);
      f.gap = lines ? xa_max(1, (ngrp * XE_G + n) * R * D / 8 / lines) : INT64_MAX;
      f.cd = f.gap;
      xf_pf_row(&f);
      /* Pass 1: logits. */
      for (int64_t gi = 0; gi < ngrp; gi++) {
        for (int64_t kvl = 0; kvl < KG; kvl++) {
          const int64_t hoff = (kvh0 + kvl) * khs;
          for (int64_t r0 = 0; r0 < G;) {
            const int64_t nr = xe_nr(G, r0), r = kvl * G + r0;
            const float *q = qp + r * D;
            float *lg = w->lg + r * L_ + gi * XE_G;
            switch (nr) {
              case 4: xf_qk_4(q, kt + gi * XE_G, hoff, nch, dt, raw, lg, L_, &f); break;
              case 2: xf_qk_2(q, kt + gi * XE_G, hoff, nch, dt, raw, lg, L_, &f); break;
              default: xf_qk_1(q, kt + gi * XE_G, hoff, nch, dt, raw, lg, L_, &f); break;
            }
            r0 += nr;
          }
        }
      }
      /* The online-softmax step (attn_varlen's; every key of the step is in the row's range). */
      for (int64_t r = 0; r < R; r++) {
        const int64_t kvh = kvh0 + r / G, h = kvh0 * G + r;
        const float ks = a->k_scale ? a->k_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
        const float sc = a->scale * ks;
        float *x = w->lg + r * L_;
        const int32_t qd = a->dtype;
        if (a->softcap <= 0.0f && !a->alibi_slopes && n % 8 == 0 && (qd == XK_BF16 || qd == XK_F16 || qd == XK_F32)) {
          if (!xf_softmax_step(x, n, sc, &w->m[r], &w->l[r], w->acc + r * Dp, D, qd, fp8 ? pscale : 1.0f)) {
            for (int64_t j = 0; j < n; j++) x[j] = 0.0f;
          }
          continue;
        }
        for (int64_t j = 0; j < n; j++) x[j] *= sc;
        if (a->softcap > 0.0f) xa_softcap(x, n, a->softcap);
        if (a->alibi_slopes) {
          const float slope = a->alibi_slopes[seq * a->alibi_stride_seq + h];
          for (int64_t j = 0; j < n; j++) x[j] -= slope * fabsf((float)(pos - (ts + j)));
        }
        const float mt = xa_max_row(x, n, -INFINITY);
        const float m_new = fmaxf(w->m[r], mt);
        if (m_new == -INFINITY) { /* nothing attended yet: p = 0 */
          for (int64_t j = 0; j < n; j++) x[j] = 0.0f;
          continue;
        }
        const float alpha = w->m[r] == -INFINITY ? 0.0f : expf(w->m[r] - m_new);
        const float sum = xa_exp_sum(x, n, m_new);
        if (alpha != 1.0f) {
          float *acc = w->acc + r * Dp;
          for (int64_t d = 0; d < D; d++) acc[d] *= alpha;
        }
        w->l[r] = w->l[r] * alpha + sum;
        w->m[r] = m_new;
        xa_round_to(x, n, a->dtype);
        if (fp8) {
          for (int64_t j = 0; j < n; j++) x[j] *= pscale;
        }
      }
      /* Pass 2: P.V over the step's values (in L2 by now), 4 chunks (128
       * bytes of each value row) at a time for all rows of the kv head. */
      for (int64_t kvl = 0; kvl < KG; kvl++) {
        const int64_t hoff = (kvh0 + kvl) * vhs;
        for (int64_t cb = 0; cb < nch; cb += 4) {
          const int64_t ce = xa_min(cb + 4, nch);
          for (int64_t r0 = 0; r0 < G;) {
            const int64_t nr = xe_nr(G, r0), r = kvl * G + r0;
            const float *p = w->lg + r * L_;
            float *o = w->acc + r * Dp;
            switch (nr) {
              case 4:
                if (fp8) { /* 4 rows x 2 planes x 2 chunks would need 16 accumulators: two row pairs */
                  xf_pv_2(p, L_, vt, hoff, n, cb, ce, dt, o, Dp, &f);
                  xf_pv_2(p + 2 * L_, L_, vt, hoff, n, cb, ce, dt, o + 2 * Dp, Dp, &f);
                } else {
                  xf_pv_4(p, L_, vt, hoff, n, cb, ce, dt, o, Dp, &f);
                }
                break;
              case 2: xf_pv_2(p, L_, vt, hoff, n, cb, ce, dt, o, Dp, &f); break;
              default: xf_pv_1(p, L_, vt, hoff, n, cb, ce, dt, o, Dp, &f); break;
            }
            r0 += nr;
          }
        }
      }
      kt = kn;
      vt = vn;
    }
    for (int64_t r = 0; r < R; r++) {
      const int64_t kvh = kvh0 + r / G, h = kvh0 * G + r;
      const float vsc = a->v_scale ? a->v_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
      const float *acc = w->acc + r * Dp;
      float *row = w->stage;
      for (int64_t c = 0; c < nch; c++) /* plane order back to head-dim order */
        for (int64_t k = 0; k < NP; k++)
          for (int64_t e = 0; e < 8; e++) row[c * 8 * NP + NP * e + k] = acc[c * 8 * NP + 8 * k + e];
      float m = w->m[r], l = w->l[r];
      const float f = xk_attn_row_factor(a, h, &m, &l);
      xa_write_row((char *)a->out + ((q0 + i) * a->out_stride_token + h * a->out_stride_head) * qes, a->dtype, row, D,
                   f * vsc);
      if (a->lse) a->lse[h * a->lse_stride_head + (q0 + i) * a->lse_stride_token] = xk_attn_lse(m, l);
    }
  }
  _mm_setcsr(csr);
}
#endif /* XK_F32_LANES == 8 */

/* ---- paged_attention_v1 / v2 -------------------------------------------------- */

void XK_FN(attn_paged)(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end) {
  xa_ws w;
  xa_ws_layout(a, (char *)workspace, &w);
  const int64_t Hkv = a->num_kv_heads, G = a->num_heads / Hkv, D = a->head_size;
  const int64_t P = a->partition_size ? a->max_partitions : 1, qes = xk_dtype_size(a->dtype);
  xa_src s = {a, NULL, 0, xa_bf16_path(a)};
#if XK_F32_LANES == 16
  if (xd_paged_ok(a)) {
    xd_paged(a, &w, begin, end);
    return;
  }
#elif XK_F32_LANES == 8
  if (xe_paged_ok(a)) {
    xe_paged(a, &w, begin, end);
    return;
  }
#endif
  for (int64_t b = begin; b < end; b++) {
    const int64_t kvh = b % Hkv, part = (b / Hkv) % P, seq = b / (Hkv * P); /* kv heads fastest */
    const int64_t L = a->seq_lens[seq], t0 = part * a->partition_size;
    if (a->partition_size && t0 >= L) continue; /* v2: nothing to do, nothing written */
    const int64_t t1 = a->partition_size ? xa_min(t0 + a->partition_size, L) : L, n = t1 - t0;
    s.bt = a->block_tables + seq * a->block_tables_stride_seq;
    s.kvh = kvh;
    const float ks = a->k_scale ? a->k_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
    const float vs = a->v_scale ? a->v_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
    for (int64_t g = 0; g < G; g++) {
      const int64_t h = kvh * G + g;
      xa_load_q(&s, &w, g, (const char *)a->query + (seq * a->q_stride_token + h * a->q_stride_head) * qes);
    }
    /* Pass 1: logits of every token of the range, then the softmax. */
    xa_prefetch_now(&s, (xa_next){t0, xa_min(XA_W, n), 0, kvh});
    for (int64_t st = t0; st < t1; st += XA_W) {
      const xa_next nx = st + XA_W < t1 ? xa_after(st, t1, 0, kvh) : (xa_next){t0, xa_min(XA_W, n), 1, kvh};
      xa_qk_tile(&s, &w, 0, G, st, xa_min(XA_W, t1 - st), st - t0, nx);
    }
    const float sc = a->scale * ks;
    for (int64_t g = 0; g < G; g++) {
      const int64_t h = kvh * G + g;
      float *x = w.lg + g * w.L;
      xa_paged_softmax(a, x, n, sc, seq, h, part, t0 - L + 1);
      xa_store_probs(&s, &w, g, 0, n);
    }
    /* Pass 2: P.V */
    memset(w.acc, 0, (size_t)(G * w.Dp) * sizeof(float));
    for (int64_t st = t0; st < t1; st += XA_W) {
      xa_pv_tile(&s, &w, 0, G, st, xa_min(XA_W, t1 - st), st - t0, xa_after(st, t1, 1, kvh));
    }
    for (int64_t g = 0; g < G; g++) {
      const int64_t h = kvh * G + g;
      char *dst;
      if (a->partition_size) {
        dst = (char *)a->tmp_out + (seq * a->tmp_out_strides[0] + h * a->tmp_out_strides[1] +
                                    part * a->tmp_out_strides[2]) * qes;
      } else {
        dst = (char *)a->out + (seq * a->out_stride_token + h * a->out_stride_head) * qes;
      }
      xa_write_row(dst, a->dtype, w.acc + g * w.Dp, D, vs);
    }
  }
}

void XK_FN(attn_paged_reduce)(const xk_attn_args *a, int64_t begin, int64_t end) {
  const int64_t H = a->num_heads, D = a->head_size, ps = a->partition_size, qes = xk_dtype_size(a->dtype);
  float acc[512], row[512];
  for (int64_t b = begin; b < end; b++) {
    const int64_t seq = b / H, h = b % H;
    const int64_t L = a->seq_lens[seq], np = (L + ps - 1) / ps;
    char *out = (char *)a->out + (seq * a->out_stride_token + h * a->out_stride_head) * qes;
    const char *tmp = (const char *)a->tmp_out + (seq * a->tmp_out_strides[0] + h * a->tmp_out_strides[1]) * qes;
    if (np == 1) {
      memcpy(out, tmp, (size_t)(D * qes));
      continue;
    }
    const float *ml = a->max_logits + seq * a->part_strides[0] + h * a->part_strides[1];
    const float *es = a->exp_sums + seq * a->part_strides[0] + h * a->part_strides[1];
    float mx = -FLT_MAX, total = 0.0f;
    for (int64_t j = 0; j < np; j++) mx = fmaxf(mx, ml[j * a->part_strides[2]]);
    for (int64_t j = 0; j < np; j++) total += es[j * a->part_strides[2]] * expf(ml[j * a->part_strides[2]] - mx);
    const float inv = 1.0f / (total + 1e-6f);
    for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
    for (int64_t j = 0; j < np; j++) {
      const float wj = es[j * a->part_strides[2]] * expf(ml[j * a->part_strides[2]] - mx);
      xa_to_f32(row, tmp + j * a->tmp_out_strides[2] * qes, a->dtype, D);
      for (int64_t d = 0; d < D; d++) acc[d] += row[d] * wj * inv;
    }
    xk_convert_row(out, a->dtype, acc, XK_F32, D, 1.0f);
  }
}

#if XK_F32_LANES == 8
/* ---- varlen prefill (AVX2) ------------------------------------------------------
 *
 * flash_attn_varlen_func work items of several queries, one kv head at a time,
 * with the item's query rows (queries x query heads of the kv head) across the
 * vector lanes:
 *   qT   [D][R8]  the queries, transposed once per item (R8: rows rounded up to 8)
 *   lgT  [n][R8]  logits, then probabilities, of a step of n <= XA_VT keys
 *   accT [D][R8]  the P.V accumulator
 *   kv   [n][Dp]  the step's key (or value) rows, converted to f32 once
 * Q.K^T and P.V are then one register-blocked product, C[b][rows] += sum_k
 * A[b, k] * B[k][rows]: 6 broadcast elements of A (6 keys, or 6 head-dim
 * elements of the values) times 2 vectors of 8 rows: 12 accumulators, 2
 * operands and a broadcast in the 16 ymm registers, 8 loads per 12 FMAs. K and
 * V stay token rows (no transpose), each element is converted once per item and
 * kv head and used by all its rows, and the online softmax runs down the columns
 * of lgT, so a row's maximum and sum are element-wise vector operations.
 *
 * The results are bit-identical to the general loop (attn_varlen below) on this
 * tier: a logit is the same chain of FMAs over d, an accumulator the same chain
 * over keys, the steps, masks and exp (xa_exp8) are the same, and a row's step
 * sum is formed in xa_exp_sum's order (partial sums of keys i mod 8, added in
 * lane order).
 *
 * Replaced (T=2048, causal, bf16, one thread): the general loop, rows x 32 keys
 * as 2 x 4 accumulators with K transposed per tile, at 31-34% of the FMA peak.
 * Measured and not kept: 32-key sub-tiles for Q.K^T and P.V (no faster than
 * whole 64-key steps), prefetch hint T1 instead of T0 (no difference), all
 * prefetches in the first few blocks (the prefetches stall once the miss
 * buffers fill), a separate rescale pass over accT (folded into xp_pv instead).
 */

/* Cache lines of the token rows staged next (a step's values, or the next
 * step's keys), issued a few per micro-kernel block while the current product
 * computes: the rows of a kv head are strided, so the hardware prefetchers do
 * not run ahead of them. */
typedef struct xp_pf {
  const char *row[XA_VT];
  int64_t n, lines, quota; /* rows, lines per row, lines per block */
  int64_t j, l;            /* the next line: line l of row j */
} xp_pf;

static inline void xp_pf_issue(xp_pf *pf) {
  for (int64_t k = 0; k < pf->quota && pf->j < pf->n; k++) {
    _mm_prefetch(pf->row[pf->j] + 64 * pf->l, _MM_HINT_T0);
    if (++pf->l == pf->lines) {
      pf->l = 0;
      pf->j++;
    }
  }
}

/* C[b][0 .. 8 nv) = C[b][..] * S[0 .. 8 nv) (0 if S is NULL)
 *                   + sum_{k < nk} A[b * ab + k * ak] * B[k * bld + 0 .. 8 nv), for b < nb. */
static inline __attribute__((always_inline)) void xp_block(const float *A, int64_t ab, int64_t ak, const float *B,
                                                           int64_t bld, int64_t nk, float *C, int64_t cld,
                                                           const float *S, const int nb, const int nv, xp_pf *pf) {
  xp_pf_issue(pf);
  __m256 acc[12][2], sc[2];
#pragma GCC unroll 2
  for (int v = 0; v < nv; v++) sc[v] = S ? _mm256_loadu_ps(S + 8 * v) : _mm256_setzero_ps();
#pragma GCC unroll 12
  for (int b = 0; b < nb; b++)
#pragma GCC unroll 2
    for (int v = 0; v < nv; v++) acc[b][v] = S ? _mm256_mul_ps(_mm256_loadu_ps(C + b * cld + 8 * v), sc[v]) : sc[v];
  for (int64_t k = 0; k < nk; k++) {
    __m256 x[2];
#pragma GCC unroll 2
    for (int v = 0; v < nv; v++) x[v] = _mm256_loadu_ps(B + k * bld + 8 * v);
#pragma GCC unroll 12
    for (int b = 0; b < nb; b++) {
      const __m256 s = _mm256_broadcast_ss(A + b * ab + k * ak);
#pragma GCC unroll 2
      for (int v = 0; v < nv; v++) acc[b][v] = _mm256_fmadd_ps(s, x[v], acc[b][v]);
    }
  }
#pragma GCC unroll 12
  for (int b = 0; b < nb; b++)
#pragma GCC unroll 2
    for (int v = 0; v < nv; v++) _mm256_storeu_ps(C + b * cld + 8 * v, acc[b][v]);
}

/* Broadcast elements of the next block of xp_gemm at a0 of na (nv row vectors): 6
 * (12), a short remainder split so that no block has fewer than 4 (8) accumulators. */
static inline int xp_nb(int64_t rem, int nv) {
  const int nbmax = 12 / nv;
  return (int)(rem >= nbmax + 4 ? nbmax : rem > nbmax ? (rem + 1) / 2 : rem);
}

/* How many blocks xp_gemm runs. */
static int64_t xp_blocks(int64_t na, int64_t nvr) {
  int64_t n = 0;
  for (int64_t v0 = 0; v0 < nvr; v0 += 2) {
    for (int64_t a0 = 0; a0 < na; n++) a0 += xp_nb(na - a0, nvr - v0 >= 2 ? 2 : 1);
  }
  return n;
}

/* C[0 .. na)[0 .. 8 nvr) = C * S (0 if S is NULL) + A . B in blocks of xp_nb broadcast elements x 2 (or 1)
 * row vectors. */
static inline __attribute__((always_inline)) void xp_gemm(const float *A, int64_t ab, int64_t ak, const float *B,
                                                          int64_t bld, int64_t nk, float *C, int64_t cld,
                                                          const float *S, int64_t na, int64_t nvr, xp_pf *pf) {
  for (int64_t v0 = 0; v0 < nvr; v0 += 2) {
    const int nv = nvr - v0 >= 2 ? 2 : 1;
    for (int64_t a0 = 0; a0 < na;) {
      const int nb = xp_nb(na - a0, nv);
      const float *Ab = A + a0 * ab, *Bv = B + 8 * v0, *Sv = S ? S + 8 * v0 : NULL;
      float *Cb = C + a0 * cld + 8 * v0;
#define XP_CASE(NB, NV) \
  case NB: xp_block(Ab, ab, ak, Bv, bld, nk, Cb, cld, Sv, NB, NV, pf); break
      if (nv == 2) {
        switch (nb) {
          XP_CASE(6, 2); XP_CASE(5, 2); XP_CASE(4, 2); XP_CASE(3, 2); XP_CASE(2, 2); default: XP_CASE(1, 2);
        }
      } else {
        switch (nb) {
          XP_CASE(12, 1); XP_CASE(11, 1); XP_CASE(10, 1); XP_CASE(9, 1); XP_CASE(8, 1); XP_CASE(7, 1);
          XP_CASE(6, 1); XP_CASE(5, 1); XP_CASE(4, 1); XP_CASE(3, 1); XP_CASE(2, 1); default: XP_CASE(1, 1);
        }
      }
#undef XP_CASE
      a0 += nb;
    }
  }
}

/* lgT[j][rows] = sum_d kv[j][d] * qT[d][rows] for keys j < nk (the chain over d of xa_qk_f32). */
static void xp_qk(const float *kv, int64_t Dp, const float *qT, int64_t R8, int64_t D, float *lgT, int64_t nk,
                  xp_pf *pf) {
  xp_gemm(kv, Dp, 1, qT, R8, D, lgT, R8, NULL, nk, R8 / 8, pf);
}

/* accT[d][rows] = accT[d][rows] * alpha[rows] + sum_t p[t][rows] * kv[t][d] over tokens t < nt, for d < D:
 * the online softmax's rescale (alpha = 1: unchanged) folded into the accumulator load. */
static void xp_pv(const float *kv, int64_t Dp, const float *pT, int64_t R8, int64_t nt, float *accT, int64_t D,
                  const float *alpha, xp_pf *pf) {
  xp_gemm(kv, 1, Dp, pT, R8, nt, accT, R8, alpha, D, R8 / 8, pf);
}

/* One work item's rows for one kv head. */
typedef struct xp_rows {
  int64_t R, R8;
  float *qT, *lgT, *accT, *m, *l, *alpha, *slope;
  int32_t *lo, *hi, *pos; /* keys [lo, hi) attended; position of the query */
} xp_rows;

/* Address of token t's row of kv head kvh in the key (value = 0) or value cache. */
static inline const char *xp_row(const xk_attn_args *a, const int32_t *bt, int64_t kvh, int value, int64_t t) {
  const int64_t *st = value ? a->value_cache_strides : a->key_cache_strides;
  const char *cache = (const char *)(value ? a->value_cache : a->key_cache);
  const int64_t bs = a->block_size, blk = (int64_t)bt[(t / bs) * a->block_tables_stride_block];
  return cache + (blk * st[0] + (t % bs) * st[1] + kvh * st[2]) * xk_dtype_size(a->cache_dtype);
}

/* rows[j] = token t0 + j's row of kv head kvh in the key (value = 0) or value cache, j < n. */
static void xp_rows_of(const xk_attn_args *a, const int32_t *bt, int64_t kvh, int value, int64_t t0, int64_t n,
                       const char **rows) {
  if (n <= 0) return;
  const char *r = xp_row(a, bt, kvh, value, t0);
  const int64_t bs = a->block_size;
  const int64_t ts = (value ? a->value_cache_strides : a->key_cache_strides)[1] * xk_dtype_size(a->cache_dtype);
  for (int64_t j = 0; j < n; j++) { /* a block lookup only where a cache block starts */
    if (j > 0) r = (t0 + j) % bs ? r + ts : xp_row(a, bt, kvh, value, t0 + j);
    rows[j] = r;
  }
}

/* n token rows into kv [n][Dp] f32, one loop per cache dtype. */
static void xp_stage(const xk_attn_args *a, const char *const *rows, int64_t n, float *kv, int64_t Dp) {
  const int64_t D = a->head_size;
  switch (D % 8 ? -1 : a->cache_dtype) {
    case XK_BF16:
      for (int64_t j = 0; j < n; j++) {
        const uint16_t *src = (const uint16_t *)rows[j];
        for (int64_t d = 0; d + 8 <= D; d += 8) {
          const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + d)));
          _mm256_storeu_ps(kv + j * Dp + d, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
        }
      }
      break;
    default:
      for (int64_t j = 0; j < n; j++) xa_to_f32(kv + j * Dp, rows[j], a->cache_dtype, D);
      break;
  }
}

/* Queues rows[0 .. n) (none if n <= 0) for blocks of `calls` micro-kernel calls. */
static void xp_pf_set(xp_pf *pf, const xk_attn_args *a, const int32_t *bt, int64_t kvh, int value, int64_t t0,
                      int64_t n, int64_t calls) {
  pf->n = xa_max(0, n);
  pf->lines = (a->head_size * xk_dtype_size(a->cache_dtype) + 63) / 64;
  pf->j = pf->l = 0;
  pf->quota = (pf->n * pf->lines + calls - 1) / calls;
  xp_rows_of(a, bt, kvh, value, t0, pf->n, pf->row);
}

/* dst[j * dld + i] = src[i * sld + j] for i, j < 8. */
static inline void xp_tr8(const float *src, int64_t sld, float *dst, int64_t dld) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * sld);
  for (int i = 0; i < 4; i++) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 2; g++) {
    r[4 * g + 0] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    r[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xee);
    r[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    r[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xee);
  }
  /* r[4g + j], 128-bit lane k: column 4k + j of rows 4g .. 4g + 3 */
  for (int j = 0; j < 4; j++) {
    _mm256_storeu_ps(dst + j * dld, _mm256_permute2f128_ps(r[j], r[4 + j], 0x20));
    _mm256_storeu_ps(dst + (4 + j) * dld, _mm256_permute2f128_ps(r[j], r[4 + j], 0x31));
  }
}

/* The online-softmax step over keys [ts, ts + n) (attn_varlen's, down the
 * columns of lgT): scale, softcap, ALiBi, masks, the running maximum and sum,
 * the rescale factors of accT (alpha, applied by xp_pv), and the probabilities
 * rounded to the query dtype. */
static void xp_softmax(const xk_attn_args *a, const xp_rows *x, int64_t ts, int64_t n, float sc) {
  const int64_t R8 = x->R8;
  const __m256 ninf = _mm256_set1_ps(-INFINITY), vsc = _mm256_set1_ps(sc);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t v = 0; v < R8; v += 8) {
    const __m256i lo = _mm256_loadu_si256((const __m256i *)(x->lo + v));
    const __m256i hi = _mm256_loadu_si256((const __m256i *)(x->hi + v));
    const __m256i pos = _mm256_loadu_si256((const __m256i *)(x->pos + v));
    const __m256 slope = _mm256_loadu_ps(x->slope + v);
    float *col = x->lgT + v;
    __m256 mx = ninf;
    int plain = a->softcap <= 0.0f && !a->alibi_slopes; /* and every row attends every key of the step */
    for (int e = 0; e < 8; e++) plain &= x->lo[v + e] <= ts && x->hi[v + e] >= ts + n;
    for (int64_t j = 0; plain && j < n; j++) {
      const __m256 y = _mm256_mul_ps(_mm256_loadu_ps(col + j * R8), vsc);
      _mm256_storeu_ps(col + j * R8, y);
      mx = _mm256_max_ps(y, mx);
    }
    for (int64_t j = 0; !plain && j < n; j++) {
      __m256 y = _mm256_mul_ps(_mm256_loadu_ps(col + j * R8), vsc);
      if (a->softcap > 0.0f) { /* xa_softcap's scalar form on this tier */
        float t[8];
        const float cap = a->softcap, inv = 1.0f / cap;
        _mm256_storeu_ps(t, y);
        for (int e = 0; e < 8; e++) t[e] = cap * tanhf(t[e] * inv);
        y = _mm256_loadu_ps(t);
      }
      const __m256i key = _mm256_set1_epi32((int)(ts + j));
      if (a->alibi_slopes) {
        const __m256 dist = _mm256_and_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(pos, key)), abs_mask);
        y = _mm256_sub_ps(y, _mm256_mul_ps(slope, dist));
      }
      const __m256i keep = _mm256_andnot_si256(_mm256_cmpgt_epi32(lo, key), _mm256_cmpgt_epi32(hi, key));
      y = _mm256_blendv_ps(ninf, y, _mm256_castsi256_ps(keep));
      _mm256_storeu_ps(col + j * R8, y);
      mx = _mm256_max_ps(y, mx); /* as xa_max_row: NaN logits ignored */
    }
    float mt[8], mn[8], zero[8];
    int anyzero = 0;
    _mm256_storeu_ps(mt, mx);
    for (int e = 0; e < 8; e++) {
      const int64_t r = v + e;
      const float m_new = fmaxf(x->m[r], mt[e]), m = x->m[r];
      zero[e] = m_new == -INFINITY ? -1.0f : 0.0f; /* nothing attended yet: p = 0, m and l kept */
      anyzero |= m_new == -INFINITY;
      /* expf(0) is 1: the call only where the maximum moved */
      x->alpha[r] = m_new == -INFINITY || m == m_new ? 1.0f : m == -INFINITY ? 0.0f : expf(m - m_new);
      mn[e] = m_new == -INFINITY ? 0.0f : m_new;
    }
    const __m256 vm = _mm256_loadu_ps(mn), zmask = _mm256_loadu_ps(zero);
    __m256 part[8];
    for (int e = 0; e < 8; e++) part[e] = _mm256_setzero_ps();
    for (int64_t j0 = 0; j0 < n; j0 += 8) {
#pragma GCC unroll 8
      for (int e = 0; e < 8; e++) {
        if (j0 + e >= n) break;
        float *p = col + (j0 + e) * R8;
        __m256 ex = xa_exp8(_mm256_sub_ps(_mm256_loadu_ps(p), vm));
        part[e] = _mm256_add_ps(part[e], ex);
        if (anyzero) ex = _mm256_blendv_ps(ex, _mm256_setzero_ps(), zmask);
        if (a->dtype == XK_BF16) { /* xk_store8 + xk_load8 in registers: round to nearest even, NaN quieted */
          const __m256i u = _mm256_castps_si256(ex), hi16 = _mm256_set1_epi32((int)0xffff0000u);
          const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
          const __m256i rn =
              _mm256_and_si256(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), hi16);
          const __m256i qn = _mm256_or_si256(_mm256_and_si256(u, hi16), _mm256_set1_epi32(0x400000));
          ex = _mm256_blendv_ps(_mm256_castsi256_ps(rn), _mm256_castsi256_ps(qn), _mm256_cmp_ps(ex, ex, _CMP_UNORD_Q));
        } else if (a->dtype == XK_F16) {
          ex = _mm256_cvtph_ps(_mm256_cvtps_ph(ex, _MM_FROUND_TO_NEAREST_INT));
        }
        _mm256_storeu_ps(p, ex);
      }
    }
    __m256 s = _mm256_setzero_ps();
    for (int e = 0; e < 8; e++) s = _mm256_add_ps(s, part[e]);
    float sum[8];
    _mm256_storeu_ps(sum, s);
    for (int e = 0; e < 8; e++) {
      const int64_t r = v + e;
      if (zero[e] != 0.0f) continue;
      x->l[r] = x->l[r] * x->alpha[r] + sum[e];
      x->m[r] = mn[e];
    }
  }
}

/* The AVX2 prefill path takes calls with work items of several queries (a
 * decode-only call, one query per item, takes xf_varlen or the general loop). */
static int xp_varlen_ok(const xk_attn_args *a) {
  return a->kv_group <= 1 && a->max_rows > a->num_heads / a->num_kv_heads;
}

static void xp_varlen(const xk_attn_args *a, const xa_ws *w, int64_t begin, int64_t end) {
  const int64_t Hkv = a->num_kv_heads, G = a->num_heads / Hkv, D = a->head_size, Dp = w->Dp;
  const int64_t qes = xk_dtype_size(a->dtype);
  float *row = w->stage, *kv = w->kT;
  const char *rows[XA_VT];
  xp_rows x;
  x.qT = (float *)w->q;
  x.lgT = w->lg;
  x.accT = w->acc;
  x.m = w->m;
  x.l = w->l;
  /* the int64 row arrays hold the int32 and float ones (w->R >= R8) */
  x.lo = (int32_t *)w->lo;
  x.hi = x.lo + w->R;
  x.pos = (int32_t *)w->hi;
  x.alpha = (float *)w->pos;
  x.slope = x.alpha + w->R;
  for (int64_t b = begin; b < end; b++) {
    const int64_t item = b / Hkv, kvh = b % Hkv;
    const int64_t seq = a->work[3 * item], i0 = a->work[3 * item + 1], i1 = a->work[3 * item + 2];
    const int64_t q0 = a->cu_seqlens_q[seq], q_len = a->cu_seqlens_q[seq + 1] - q0, k_len = a->seq_lens[seq];
    const int32_t *bt = a->block_tables + seq * a->block_tables_stride_seq;
    x.R = (i1 - i0) * G;
    x.R8 = xa_round_up(x.R, 8);
    const int64_t R8 = x.R8;
    int64_t LO = INT64_MAX, HI = 0;
    for (int64_t r = 0; r < R8; r++) {
      x.m[r] = -INFINITY;
      x.l[r] = 0.0f;
      x.slope[r] = 0.0f;
      if (r >= x.R) { /* padding lanes attend nothing */
        x.lo[r] = x.hi[r] = x.pos[r] = 0;
        continue;
      }
      const int64_t i = i0 + r / G, h = kvh * G + r % G, pos = i + k_len - q_len;
      int64_t lo, hi;
      xk_attn_key_range(a, pos, k_len, &lo, &hi);
      if (lo < hi) {
        LO = xa_min(LO, lo);
        HI = xa_max(HI, hi);
      }
      x.lo[r] = (int32_t)lo;
      x.hi[r] = (int32_t)hi;
      x.pos[r] = (int32_t)pos;
      if (a->alibi_slopes) x.slope[r] = a->alibi_slopes[seq * a->alibi_stride_seq + h];
    }
    for (int64_t r0 = 0; r0 < R8; r0 += 8) { /* 8 query rows at a time into qT, via rows of the stage buffer */
      for (int64_t e = 0; e < 8; e++) {
        const int64_t r = r0 + e, i = i0 + r / G, h = kvh * G + r % G;
        if (r < x.R) {
          xa_to_f32(row + e * Dp, (const char *)a->query + ((q0 + i) * a->q_stride_token + h * a->q_stride_head) * qes,
                    a->dtype, D);
        } else {
          memset(row + e * Dp, 0, (size_t)D * sizeof(float));
        }
      }
      for (int64_t d = 0; d < D; d += 8) xp_tr8(row + d, Dp, x.qT + d * R8 + r0, R8);
    }
    if (LO == INT64_MAX) LO = 0;
    memset(x.accT, 0, (size_t)(D * R8) * sizeof(float));
    const float ks = a->k_scale ? a->k_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
    /* the values of a step are prefetched while its logits compute, the next keys while P.V runs */
    const int64_t qk_calls = xp_blocks(XA_VT, R8 / 8), pv_calls = xp_blocks(D, R8 / 8);
    xp_pf pf;
    for (int64_t ts = LO; ts < HI; ts += XA_VT) {
      const int64_t te = xa_min(ts + XA_VT, HI), n = te - ts;
      xp_rows_of(a, bt, kvh, 0, ts, n, rows);
      xp_stage(a, rows, n, kv, Dp);
      xp_pf_set(&pf, a, bt, kvh, 1, ts, n, qk_calls);
      xp_qk(kv, Dp, x.qT, R8, D, x.lgT, n, &pf);
      xp_softmax(a, &x, ts, n, a->scale * ks);
      xp_rows_of(a, bt, kvh, 1, ts, n, rows);
      xp_stage(a, rows, n, kv, Dp);
      xp_pf_set(&pf, a, bt, kvh, 0, te, xa_min(XA_VT, HI - te), pv_calls);
      xp_pv(kv, Dp, x.lgT, R8, n, x.accT, D, x.alpha, &pf);
    }
    const float vsc = a->v_scale ? a->v_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
    for (int64_t r0 = 0; r0 < x.R; r0 += 8) { /* 8 rows of accT at a time, transposed into the stage buffer */
      for (int64_t d = 0; d < D; d += 8) xp_tr8(x.accT + d * R8 + r0, R8, row + d, Dp);
      for (int64_t r = r0; r < xa_min(r0 + 8, x.R); r++) {
        const int64_t i = i0 + r / G, h = kvh * G + r % G;
        float m = x.m[r], l = x.l[r];
        const float f = xk_attn_row_factor(a, h, &m, &l);
        xa_write_row((char *)a->out + ((q0 + i) * a->out_stride_token + h * a->out_stride_head) * qes, a->dtype,
                     row + (r - r0) * Dp, D, f * vsc);
        if (a->lse) a->lse[h * a->lse_stride_head + (q0 + i) * a->lse_stride_token] = xk_attn_lse(m, l);
      }
    }
  }
}
#endif /* XK_F32_LANES == 8 */

/* ---- flash_attn_varlen_func over a paged cache --------------------------------- */

void XK_FN(attn_varlen)(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end) {
  xa_ws w;
  xa_ws_layout(a, (char *)workspace, &w);
  const int64_t Hkv = a->num_kv_heads, G = a->num_heads / Hkv, D = a->head_size, Dp = w.Dp;
  const int64_t KG = a->kv_group > 0 ? a->kv_group : 1, NG = Hkv / KG;
  const int64_t qes = xk_dtype_size(a->dtype);
  xa_src s = {a, NULL, 0, xa_bf16_path(a)};
#if XK_F32_LANES == 16
  if (xd_varlen_ok(a)) {
    xd_varlen(a, &w, begin, end);
    return;
  }
#endif
#if XK_F32_LANES == 8
  if (xf_varlen_ok(a)) {
    xf_varlen(a, &w, begin, end);
    return;
  }
  if (xp_varlen_ok(a)) {
    xp_varlen(a, &w, begin, end);
    return;
  }
#endif
  for (int64_t b = begin; b < end; b++) {
    /* Block: a work item (queries i0 .. i1 of one sequence) and kv heads
     * kvh0 .. kvh0+KG-1. Row r = kvl * RQ + (i - i0) * G + g. */
    const int64_t item = b / NG, kvh0 = (b % NG) * KG;
    const int64_t seq = a->work[3 * item], i0 = a->work[3 * item + 1], i1 = a->work[3 * item + 2];
    const int64_t q0 = a->cu_seqlens_q[seq], q_len = a->cu_seqlens_q[seq + 1] - q0, k_len = a->seq_lens[seq];
    const int64_t RQ = (i1 - i0) * G, R = RQ * KG;
    s.bt = a->block_tables + seq * a->block_tables_stride_seq;
    int64_t LO = INT64_MAX, HI = 0;
    for (int64_t i = i0; i < i1; i++) {
      const int64_t pos = i + k_len - q_len;
      int64_t lo, hi;
      xk_attn_key_range(a, pos, k_len, &lo, &hi);
      for (int64_t kvl = 0; kvl < KG; kvl++) {
        for (int64_t g = 0; g < G; g++) {
          const int64_t r = kvl * RQ + (i - i0) * G + g, h = (kvh0 + kvl) * G + g;
          w.pos[r] = pos;
          w.lo[r] = lo;
          w.hi[r] = hi;
          w.m[r] = -INFINITY;
          w.l[r] = 0.0f;
          xa_load_q(&s, &w, r, (const char *)a->query + ((q0 + i) * a->q_stride_token + h * a->q_stride_head) * qes);
        }
      }
      if (lo < hi) {
        LO = xa_min(LO, lo);
        HI = xa_max(HI, hi);
      }
    }
    memset(w.acc, 0, (size_t)(R * Dp) * sizeof(float));
    for (int64_t ts = LO; ts < HI; ts += XA_VT) {
      const int64_t te = xa_min(ts + XA_VT, HI), n = te - ts;
      if (ts == LO) xa_prefetch_now(&s, (xa_next){ts, xa_min(XA_W, n), 0, kvh0});
      for (int64_t kvl = 0; kvl < KG; kvl++) {
        s.kvh = kvh0 + kvl;
        for (int64_t st = ts; st < te; st += XA_W) {
          xa_next nx = xa_after(st, te, 0, s.kvh);
          if (st + XA_W >= te) {
            nx = kvl + 1 < KG ? (xa_next){ts, xa_min(XA_W, n), 0, s.kvh + 1} : (xa_next){ts, xa_min(XA_W, n), 1, kvh0};
          }
          xa_qk_tile(&s, &w, kvl * RQ, RQ, st, xa_min(XA_W, te - st), st - ts, nx);
        }
      }
      for (int64_t r = 0; r < R; r++) {
        const int64_t kvh = kvh0 + r / RQ, h = kvh * G + r % G;
        const float ks = a->k_scale ? a->k_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
        const float sc = a->scale * ks;
        float *x = w.lg + r * w.L;
        for (int64_t i = 0; i < n; i++) x[i] *= sc;
        if (a->softcap > 0.0f) xa_softcap(x, n, a->softcap);
        if (a->alibi_slopes) {
          const float slope = a->alibi_slopes[seq * a->alibi_stride_seq + h];
          const int64_t pos = w.pos[r];
          for (int64_t i = 0; i < n; i++) x[i] -= slope * fabsf((float)(pos - (ts + i)));
        }
        const int64_t lo = w.lo[r] - ts, hi = w.hi[r] - ts;
        for (int64_t i = 0; i < n; i++) {
          if (i < lo || i >= hi) x[i] = -INFINITY;
        }
        const float mt = xa_max_row(x, n, -INFINITY);
        const float m_new = fmaxf(w.m[r], mt);
        if (m_new == -INFINITY) { /* nothing attended yet: p = 0 */
          for (int64_t i = 0; i < n; i++) x[i] = 0.0f;
        } else {
          const float alpha = w.m[r] == -INFINITY ? 0.0f : expf(w.m[r] - m_new);
          const float sum = xa_exp_sum(x, n, m_new);
          if (alpha != 1.0f) {
            float *acc = w.acc + r * Dp;
            for (int64_t d = 0; d < Dp; d++) acc[d] *= alpha;
          }
          w.l[r] = w.l[r] * alpha + sum;
          w.m[r] = m_new;
        }
        xa_store_probs(&s, &w, r, 0, n);
      }
      for (int64_t kvl = 0; kvl < KG; kvl++) {
        s.kvh = kvh0 + kvl;
        for (int64_t st = ts; st < te; st += XA_W) {
          xa_next nx = xa_after(st, te, 1, s.kvh);
          if (st + XA_W >= te) {
            nx = kvl + 1 < KG ? (xa_next){ts, xa_min(XA_W, n), 1, s.kvh + 1}
                              : (xa_next){te, xa_min(XA_W, HI - te), 0, kvh0};
          }
          xa_pv_tile(&s, &w, kvl * RQ, RQ, st, xa_min(XA_W, te - st), st - ts, nx);
        }
      }
    }
    for (int64_t r = 0; r < R; r++) {
      const int64_t kvh = kvh0 + r / RQ, i = i0 + (r % RQ) / G, h = kvh * G + r % G;
      const float vs = a->v_scale ? a->v_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
      float m = w.m[r], l = w.l[r];
      const float f = xk_attn_row_factor(a, h, &m, &l);
      xa_write_row((char *)a->out + ((q0 + i) * a->out_stride_token + h * a->out_stride_head) * qes, a->dtype,
                   w.acc + r * Dp, D, f * vs);
      if (a->lse) a->lse[h * a->lse_stride_head + (q0 + i) * a->lse_stride_token] = xk_attn_lse(m, l);
    }
  }
}

/* ---- merge_attn_states -------------------------------------------------------- */

void XK_FN(merge_attn_states)(const xk_merge_args *a, int64_t begin, int64_t end) {
  const int64_t H = a->num_heads, D = a->head_size, es = xk_dtype_size(a->dtype);
  float po[256], so[256];
  for (int64_t b = begin; b < end; b++) {
    const int64_t t = b / H, h = b % H;
    float pl = a->prefix_lse[h * a->prefix_lse_strides[0] + t * a->prefix_lse_strides[1]];
    float sl = a->suffix_lse[h * a->suffix_lse_strides[0] + t * a->suffix_lse_strides[1]];
    /* FA2 reports +inf for an empty row, FA3 -inf: both mean "no keys". */
    if (pl == INFINITY) pl = -INFINITY;
    if (sl == INFINITY) sl = -INFINITY;
    const float mx = fmaxf(pl, sl);
    float ps = 0.0f, ss = 0.0f, lse = -INFINITY;
    if (mx != -INFINITY) {
      const float pe = expf(pl - mx), se = expf(sl - mx), sum = pe + se;
      ps = pe / sum;
      ss = se / sum;
      lse = logf(sum) + mx;
    }
    if (a->output_lse) a->output_lse[h * a->output_lse_strides[0] + t * a->output_lse_strides[1]] = lse;
    const char *pp = (const char *)a->prefix_output + (t * a->prefix_strides[0] + h * a->prefix_strides[1]) * es;
    const char *sp = (const char *)a->suffix_output + (t * a->suffix_strides[0] + h * a->suffix_strides[1]) * es;
    char *op = (char *)a->output + (t * a->out_strides[0] + h * a->out_strides[1]) * es;
    for (int64_t d0 = 0; d0 < D; d0 += 256) {
      const int64_t n = xa_min(256, D - d0);
      /* A side whose weight is 0 (an empty state) contributes nothing, even NaN. */
      if (ps != 0.0f) xa_to_f32(po, pp + d0 * es, a->dtype, n);
      if (ss != 0.0f) xa_to_f32(so, sp + d0 * es, a->dtype, n);
      for (int64_t i = 0; i < n; i++) {
        float v = 0.0f;
        if (ps != 0.0f) v = po[i] * ps;
        if (ss != 0.0f) v += so[i] * ss;
        po[i] = v;
      }
      xk_convert_row(op + d0 * es, a->dtype, po, XK_F32, n, 1.0f);
    }
  }
}
