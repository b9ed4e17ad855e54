/*
 * W8A8 int8 (vLLM's scaled_int8_quant and int8_scaled_mm(_azp) semantics):
 *
 *  - int8_quant: one grid block = a range of token rows. Static:
 *    q = sat8(rne(x / scale)), with a zero point q = sat8(sat32(rne(x / scale)) + azp).
 *    Dynamic symmetric: scale = absmax / 127, q = sat8(rne(x * (127 / absmax))).
 *    Dynamic asymmetric: scale = (max - min) / 255, azp = rne(-128 - min / scale),
 *    q as static with zero point. rne = round half to even; NaN quantizes to 0.
 *    A constant row c (max == min) gets scale |c| / 127 (1 when c = 0), so it
 *    dequantizes to c instead of dividing by zero.
 *
 *  - int8_mm: one grid block = a range of output columns n, every row.
 *    dot = sum_k a[m][k] * b[n][k] exactly in int32 (|dot| < 2^31 for
 *    K < 131072), then out = fl(fl(fl(dot - azp[m] * azp_adj[n]) * a_scale[m])
 *    * b_scale[n]) + bias[n]. The AVX-512 tier runs vpdpbusd on b ^ 0x80
 *    (unsigned) times a (signed) and subtracts 128 * sum_k a[m][k]; wrapping
 *    int32 arithmetic makes the result exact. Every tier computes the same
 *    integer dot, so results are bit-identical across tiers and thread counts.
 */
#include <math.h>

#include "../common/convert.h"
#include "../common/tier.h"

static inline int64_t qmin64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Round half to even, then saturate to int32; NaN -> 0. */
static inline int32_t sat_rne_i32(float v) {
  if (v != v) return 0;
  const float a = v < 0 ? -v : v;
  float r = v;
  if (a < 0x1p23f) {
    const float ra = (a + 0x1p23f) - 0x1p23f;
    r = v < 0 ? -ra : ra;
  }
  if (r >= 2147483648.0f) return INT32_MAX;
  if (r <= -2147483648.0f) return INT32_MIN;
  return (int32_t)r;
}

static inline int8_t sat8(int64_t v) { return (int8_t)(v < -128 ? -128 : v > 127 ? 127 : v); }

/* Symmetric quantization of one row: q = sat8(rne(x * mul)) or sat8(rne(x / div)). */
static void quant_row_sym(const char *x, int32_t dt, int8_t *out, int64_t k, float mul, float div, int use_div) {
  int64_t i = 0;
#if XK_F32_LANES == 16
  const __m512 vmul = _mm512_set1_ps(mul), vdiv = _mm512_set1_ps(div);
  const int64_t es = xk_dtype_size(dt);
  for (; i < k; i += 16) {
    const int64_t left = k - i;
    __m512 v;
    if (left >= 16) {
      v = xk_load16(x + i * es, dt);
    } else {
      char tmp[64] = {0};
      memcpy(tmp, x + i * es, (size_t)(left * es));
      v = xk_load16(tmp, dt);
    }
    v = use_div ? _mm512_div_ps(v, vdiv) : _mm512_mul_ps(v, vmul);
    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v); /* NaN -> 0 */
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-128.0f)), _mm512_set1_ps(127.0f));
    const __m512i q = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
    _mm_mask_storeu_epi8(out + i, m, _mm512_cvtepi32_epi8(q));
  }
#endif
  for (; i < k; i++) {
    const float xv = xk_load_scalar(x, dt, i);
    out[i] = sat8(sat_rne_i32(use_div ? xv / div : xv * mul));
  }
}

static void quant_row_azp(const char *x, int32_t dt, int8_t *out, int64_t k, float scale, int32_t azp) {
  for (int64_t i = 0; i < k; i++) out[i] = sat8((int64_t)sat_rne_i32(xk_load_scalar(x, dt, i) / scale) + azp);
}

static float row_absmax(const char *x, int32_t dt, int64_t k) {
  float m = 0.0f;
  int64_t i = 0;
#if XK_F32_LANES == 16
  const int64_t es = xk_dtype_size(dt);
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= k; i += 16) acc = _mm512_max_ps(_mm512_abs_ps(xk_load16(x + i * es, dt)), acc); /* NaN skipped */
  m = _mm512_reduce_max_ps(acc);
#endif
  for (; i < k; i++) {
    const float a = fabsf(xk_load_scalar(x, dt, i));
    if (a > m) m = a;
  }
  return m;
}

void XK_FN(int8_quant)(const xk_int8_quant_args *a, int64_t m_begin, int64_t m_end) {
  const int64_t es = xk_dtype_size(a->x_dtype);
  for (int64_t m = m_begin; m < m_end; m++) {
    const char *x = (const char *)a->x + m * a->x_stride * es;
    int8_t *out = a->out + m * a->out_stride;
    if (a->is_static) {
      if (a->azp) {
        quant_row_azp(x, a->x_dtype, out, a->k, a->scale[0], a->azp[0]);
      } else {
        quant_row_sym(x, a->x_dtype, out, a->k, 1.0f, a->scale[0], 1);
      }
      continue;
    }
    if (!a->azp) {
      const float absmax = row_absmax(x, a->x_dtype, a->k);
      a->scale[m * a->scale_stride] = absmax / 127.0f;
      quant_row_sym(x, a->x_dtype, out, a->k, 127.0f / absmax, 1.0f, 0);
      continue;
    }
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < a->k; i++) {
      const float v = xk_load_scalar(x, a->x_dtype, i);
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    float scale;
    if (hi > lo) {
      scale = (hi - lo) / 255.0f;
    } else {
      const float c = a->k > 0 ? hi : 0.0f;
      lo = c;
      scale = c != 0.0f ? fabsf(c) / 127.0f : 1.0f;
    }
    const int32_t azp = sat_rne_i32(-128.0f - lo / scale);
    a->scale[m * a->scale_stride] = scale;
    a->azp[m * a->azp_stride] = azp;
    quant_row_azp(x, a->x_dtype, out, a->k, scale, azp);
  }
}

/* ---- int8 x int8 GEMM ------------------------------------------------------- */

static inline void mm_store(const xk_int8_mm_args *a, int64_t m, int64_t n, int32_t dot) {
  int64_t v = dot;
  if (a->azp) {
    v -= (int64_t)a->azp[m * a->azp_stride] * a->azp_adj[n];
  } else if (a->azp_adj) {
    v -= a->azp_adj[n];
  }
  float y = ((float)v * a->a_scales[m * a->a_scales_stride]) * a->b_scales[n * a->b_scales_stride];
  if (a->bias) y += xk_load_scalar(a->bias, a->bias_dtype, n);
  xk_store_scalar(a->out, a->out_dtype, m * a->out_stride + n, y);
}

#define MM_NBLK 64 /* weight rows kept hot (in L2) while every activation row passes */

#if XK_F32_LANES == 16

#define MM_TM 4
#define MM_TN 4
#define MM_IJ(X) \
  X(0, 0) X(0, 1) X(0, 2) X(0, 3) X(1, 0) X(1, 1) X(1, 2) X(1, 3) X(2, 0) X(2, 1) X(2, 2) X(2, 3) X(3, 0) X(3, 1) \
      X(3, 2) X(3, 3)

/* dots[i][j] = sum_k (b[j][k] ^ 0x80) * a[i][k] over all K (int32, wrapping). */
static void mm_tile(const int8_t *const ar[MM_TM], const int8_t *const br[MM_TN], int64_t k,
                    int32_t dots[MM_TM][MM_TN]) {
#define MM_DECL(i, j) __m512i c##i##j = _mm512_setzero_si512();
  MM_IJ(MM_DECL)
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  for (int64_t kk = 0; kk < k; kk += 64) {
    const int64_t left = k - kk;
    const __mmask64 m = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
    const __m512i b0 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, br[0] + kk), flip);
    const __m512i b1 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, br[1] + kk), flip);
    const __m512i b2 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, br[2] + kk), flip);
    const __m512i b3 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, br[3] + kk), flip);
    const __m512i a0 = _mm512_maskz_loadu_epi8(m, ar[0] + kk), a1 = _mm512_maskz_loadu_epi8(m, ar[1] + kk);
    const __m512i a2 = _mm512_maskz_loadu_epi8(m, ar[2] + kk), a3 = _mm512_maskz_loadu_epi8(m, ar[3] + kk);
#define MM_FMA(i, j) c##i##j = _mm512_dpbusd_epi32(c##i##j, b##j, a##i);
    MM_IJ(MM_FMA)
  }
#define MM_RED(i, j) dots[i][j] = _mm512_reduce_add_epi32(c##i##j);
  MM_IJ(MM_RED)
}

#elif XK_F32_LANES == 8

#define MM_TM 2
#define MM_TN 4
/* dots[i][j] = sum_k b[j][k] * a[i][k] (pairs of int16 products, exact). */
static void mm_tile(const int8_t *const ar[MM_TM], const int8_t *const br[MM_TN], int64_t k,
                    int32_t dots[MM_TM][MM_TN]) {
  __m256i c[MM_TM][MM_TN];
  for (int i = 0; i < MM_TM; i++)
    for (int j = 0; j < MM_TN; j++) c[i][j] = _mm256_setzero_si256();
  int64_t kk = 0;
  for (; kk + 16 <= k; kk += 16) {
    __m256i b[MM_TN];
    for (int j = 0; j < MM_TN; j++) b[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(br[j] + kk)));
    for (int i = 0; i < MM_TM; i++) {
      const __m256i av = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(ar[i] + kk)));
      for (int j = 0; j < MM_TN; j++) c[i][j] = _mm256_add_epi32(c[i][j], _mm256_madd_epi16(av, b[j]));
    }
  }
  for (int i = 0; i < MM_TM; i++) {
    for (int j = 0; j < MM_TN; j++) {
      int32_t lanes[8];
      _mm256_storeu_si256((__m256i *)lanes, c[i][j]);
      int32_t s = 0;
      for (int l = 0; l < 8; l++) s += lanes[l];
      for (int64_t t = kk; t < k; t++) s += (int32_t)ar[i][t] * br[j][t];
      dots[i][j] = s;
    }
  }
}

#else

#define MM_TM 1
#define MM_TN 1
static void mm_tile(const int8_t *const ar[MM_TM], const int8_t *const br[MM_TN], int64_t k,
                    int32_t dots[MM_TM][MM_TN]) {
  int32_t s = 0;
  for (int64_t t = 0; t < k; t++) s += (int32_t)ar[0][t] * br[0][t];
  dots[0][0] = s;
}

#endif

void XK_FN(int8_mm)(const xk_int8_mm_args *a, int64_t n_begin, int64_t n_end) {
  for (int64_t nb0 = n_begin; nb0 < n_end; nb0 += MM_NBLK) {
    const int64_t nb1 = qmin64(n_end, nb0 + MM_NBLK);
    for (int64_t m0 = 0; m0 < a->m; m0 += MM_TM) {
      const int mt = (int)qmin64(MM_TM, a->m - m0);
      const int8_t *ar[MM_TM];
      for (int i = 0; i < MM_TM; i++) ar[i] = a->a + (m0 + (i < mt ? i : 0)) * a->a_stride;
      for (int64_t n0 = nb0; n0 < nb1; n0 += MM_TN) {
        const int nt = (int)qmin64(MM_TN, nb1 - n0);
        const int8_t *br[MM_TN];
        for (int j = 0; j < MM_TN; j++) br[j] = a->b + (n0 + (j < nt ? j : 0)) * a->b_stride;
        int32_t dots[MM_TM][MM_TN];
        mm_tile(ar, br, a->k, dots);
        for (int i = 0; i < mt; i++) {
#if XK_F32_LANES == 16
          /* sum (b + 128) * a = dot + 128 * sum a (mod 2^32). */
          const int32_t corr = (int32_t)((uint32_t)a->a_sum[m0 + i] * 128u);
#else
          const int32_t corr = 0;
#endif
          for (int j = 0; j < nt; j++) mm_store(a, m0 + i, n0 + j, (int32_t)((uint32_t)dots[i][j] - (uint32_t)corr));
        }
      }
    }
  }
}
