/*
 * Sampling (issue 6): FlashInfer's sorting-free samplers and filters and
 * vLLM's fused sampler. One grid block = one output row; a row is never split.
 *
 * The definitions below are the contract every tier and the Rust oracle
 * (src/reference/sampling.rs) share bit for bit. For one row:
 *
 *   y_i    the value as f32: probs, or logits (divided by the temperature when
 *          one is given, in f32 as vLLM does).
 *   key(y) the order-preserving u32 of y + 0.0f (-0 and +0 tie); NaN never
 *          reaches a filter (a NaN row is an error).
 *   m      max_i y_i.
 *   W_i    an integer weight. Logits: trunc(expf_spec(y_i - m) * 2^40) when
 *          fl(y_i - m) >= -27.8f, else 0 (exp(-27.8) < 2^-40). Probs:
 *          trunc(min(max(p_i, 0), 2) * 2^40). Sums of W are exact integers,
 *          so they do not depend on summation order, ISA tier or threads.
 *   top-k  keeps key(y) >= the key of the k-th largest value (ties kept).
 *   min-p  logits: keeps fl(y - m) >= fl32(ln(min_p)) (the log form of
 *          p_i >= min_p * p_max); probs: keeps y >= fl(min_p * m).
 *   top-p  over S1, what top-k and min-p keep, with Z = sum of W over S1 (or
 *          over the whole row for FlashInfer's "joint" order): keeps i iff
 *          G_i * 2^32 < ceil(top_p * 2^32) * Z, G_i = sum of W_j over j in S1
 *          with y_j > y_i. The largest value always stays.
 *   draw   u = word (offset mod 4) of Philox4x32-10(counter = (offset / 4,
 *          subsequence), key = seed); T = (u * Z_S) >> 32 over the kept set S;
 *          the sample is the first index (index order) whose running sum of W
 *          over S exceeds T: inverse CDF of the renormalised distribution.
 *
 * Every filter keeps an upper set of values, so a row's kept set is
 * {key(y) >= tau} for one threshold tau. No sort: the kernel finds tau with a
 * one-pass candidate filter (running lower bound, quickselect compaction), a
 * weighted quickselect for top-p, and a three-level radix select over the
 * whole row when the candidates do not fit the workspace.
 */
#include <math.h>

#include "../common/convert.h"
#include "../common/tier.h"

#define XS_W_CUT (-27.8f)
#define XS_W_SCALE 0x1p40f
#define XS_EXP64_CUT (-700.0)
#define XS_HIST 2048
#define XS_NTHR 12

__extension__ typedef unsigned __int128 xs_u128;

/* ---- the specified exp ---------------------------------------------------- */

#define XS_LOG2E 0x1.715476p+0f
#define XS_LN2_HI 0x1.62e4p-1f
#define XS_LN2_LO 0x1.7f7d1cp-20f
#define XS_MAGIC32 12582912.0f /* 1.5 * 2^23 */

/* e^d for d in [-27.8, 0]: round-to-nearest range reduction, Taylor to
 * degree 6 in Estrin form, separate multiplies and adds (no FMA) so every
 * tier rounds the same way:
 *   p = (1 + r) + r2 * ((r / 6 + 1/2) + r2 * ((r / 120 + 1/24) + r2 / 720)). */
static inline float xs_expf(float d) {
  const float t = d * XS_LOG2E + XS_MAGIC32;
  const uint32_t n = xk_f32_bits(t) - xk_f32_bits(XS_MAGIC32);
  const float nf = t - XS_MAGIC32;
  float r = d - nf * XS_LN2_HI;
  r = r - nf * XS_LN2_LO;
  const float r2 = r * r;
  const float a = 1.0f + r, b = r * (1.0f / 6.0f) + 0.5f, c = r * (1.0f / 120.0f) + 1.0f / 24.0f;
  float q = r2 * (1.0f / 720.0f) + c;
  q = r2 * q + b;
  const float p = r2 * q + a;
  return xk_bits_f32(xk_f32_bits(p) + (n << 23));
}

#define XS_LOG2E64 0x1.71547652b82fep+0
#define XS_LN2_HI64 0x1.62e42feep-1
#define XS_LN2_LO64 0x1.a39ef35793c76p-33
#define XS_MAGIC64 6755399441055744.0 /* 1.5 * 2^52 */

static inline uint64_t xs_f64_bits(double d) {
  uint64_t u;
  memcpy(&u, &d, 8);
  return u;
}
static inline double xs_bits_f64(uint64_t u) {
  double d;
  memcpy(&d, &u, 8);
  return d;
}

/* e^d for d in [-700, 0], degree-13 Taylor: the raw-logprob normaliser. */
static inline double xs_exp64(double d) {
  const double t = d * XS_LOG2E64 + XS_MAGIC64;
  const uint64_t n = xs_f64_bits(t) - xs_f64_bits(XS_MAGIC64);
  const double nf = t - XS_MAGIC64;
  double r = d - nf * XS_LN2_HI64;
  r = r - nf * XS_LN2_LO64;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  return xs_bits_f64(xs_f64_bits(p) + (n << 52));
}

#if XK_F32_LANES == 16
static inline __m512 xs_expf16(__m512 d) {
  const __m512 magic = _mm512_set1_ps(XS_MAGIC32);
  const __m512 t = _mm512_add_ps(_mm512_mul_ps(d, _mm512_set1_ps(XS_LOG2E)), magic);
  const __m512i n = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(magic));
  const __m512 nf = _mm512_sub_ps(t, magic);
  __m512 r = _mm512_sub_ps(d, _mm512_mul_ps(nf, _mm512_set1_ps(XS_LN2_HI)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(nf, _mm512_set1_ps(XS_LN2_LO)));
  const __m512 r2 = _mm512_mul_ps(r, r);
  const __m512 a = _mm512_add_ps(_mm512_set1_ps(1.0f), r);
  const __m512 b = _mm512_add_ps(_mm512_mul_ps(r, _mm512_set1_ps(1.0f / 6.0f)), _mm512_set1_ps(0.5f));
  const __m512 c = _mm512_add_ps(_mm512_mul_ps(r, _mm512_set1_ps(1.0f / 120.0f)), _mm512_set1_ps(1.0f / 24.0f));
  __m512 q = _mm512_add_ps(_mm512_mul_ps(r2, _mm512_set1_ps(1.0f / 720.0f)), c);
  q = _mm512_add_ps(_mm512_mul_ps(r2, q), b);
  const __m512 p = _mm512_add_ps(_mm512_mul_ps(r2, q), a);
  return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32(n, 23)));
}

static inline __m512d xs_exp64x8(__m512d d) {
  const __m512d magic = _mm512_set1_pd(XS_MAGIC64);
  const __m512d t = _mm512_add_pd(_mm512_mul_pd(d, _mm512_set1_pd(XS_LOG2E64)), magic);
  const __m512i n = _mm512_sub_epi64(_mm512_castpd_si512(t), _mm512_castpd_si512(magic));
  const __m512d nf = _mm512_sub_pd(t, magic);
  __m512d r = _mm512_sub_pd(d, _mm512_mul_pd(nf, _mm512_set1_pd(XS_LN2_HI64)));
  r = _mm512_sub_pd(r, _mm512_mul_pd(nf, _mm512_set1_pd(XS_LN2_LO64)));
  static const double c[13] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                               1.0 / 40320.0,     1.0 / 5040.0,     1.0 / 720.0,     1.0 / 120.0,
                               1.0 / 24.0,        1.0 / 6.0,        0.5,             1.0,
                               1.0};
  __m512d p = _mm512_set1_pd(1.0 / 6227020800.0);
  for (int j = 0; j < 13; j++) p = _mm512_add_pd(_mm512_mul_pd(p, r), _mm512_set1_pd(c[j]));
  return _mm512_castsi512_pd(_mm512_add_epi64(_mm512_castpd_si512(p), _mm512_slli_epi64(n, 52)));
}
#elif XK_F32_LANES == 8
static inline __m256 xs_expf8(__m256 d) {
  const __m256 magic = _mm256_set1_ps(XS_MAGIC32);
  const __m256 t = _mm256_add_ps(_mm256_mul_ps(d, _mm256_set1_ps(XS_LOG2E)), magic);
  const __m256i n = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic));
  const __m256 nf = _mm256_sub_ps(t, magic);
  __m256 r = _mm256_sub_ps(d, _mm256_mul_ps(nf, _mm256_set1_ps(XS_LN2_HI)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(nf, _mm256_set1_ps(XS_LN2_LO)));
  const __m256 r2 = _mm256_mul_ps(r, r);
  const __m256 a = _mm256_add_ps(_mm256_set1_ps(1.0f), r);
  const __m256 b = _mm256_add_ps(_mm256_mul_ps(r, _mm256_set1_ps(1.0f / 6.0f)), _mm256_set1_ps(0.5f));
  const __m256 c = _mm256_add_ps(_mm256_mul_ps(r, _mm256_set1_ps(1.0f / 120.0f)), _mm256_set1_ps(1.0f / 24.0f));
  __m256 q = _mm256_add_ps(_mm256_mul_ps(r2, _mm256_set1_ps(1.0f / 720.0f)), c);
  q = _mm256_add_ps(_mm256_mul_ps(r2, q), b);
  const __m256 p = _mm256_add_ps(_mm256_mul_ps(r2, q), a);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(n, 23)));
}

static inline __m256d xs_exp64x4(__m256d d) {
  const __m256d magic = _mm256_set1_pd(XS_MAGIC64);
  const __m256d t = _mm256_add_pd(_mm256_mul_pd(d, _mm256_set1_pd(XS_LOG2E64)), magic);
  const __m256i n = _mm256_sub_epi64(_mm256_castpd_si256(t), _mm256_castpd_si256(magic));
  const __m256d nf = _mm256_sub_pd(t, magic);
  __m256d r = _mm256_sub_pd(d, _mm256_mul_pd(nf, _mm256_set1_pd(XS_LN2_HI64)));
  r = _mm256_sub_pd(r, _mm256_mul_pd(nf, _mm256_set1_pd(XS_LN2_LO64)));
  static const double c[13] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                               1.0 / 40320.0,     1.0 / 5040.0,     1.0 / 720.0,     1.0 / 120.0,
                               1.0 / 24.0,        1.0 / 6.0,        0.5,             1.0,
                               1.0};
  __m256d p = _mm256_set1_pd(1.0 / 6227020800.0);
  for (int j = 0; j < 13; j++) p = _mm256_add_pd(_mm256_mul_pd(p, r), _mm256_set1_pd(c[j]));
  return _mm256_castsi256_pd(_mm256_add_epi64(_mm256_castpd_si256(p), _mm256_slli_epi64(n, 52)));
}

/* trunc of 4 non-negative doubles below 2^52 (here: floats scaled by 2^40). */
static inline __m256i xs_trunc_u64x4(__m256d v) {
  const __m256d two52 = _mm256_set1_pd(0x1p52);
  v = _mm256_add_pd(_mm256_round_pd(v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC), two52);
  return _mm256_sub_epi64(_mm256_castpd_si256(v), _mm256_castpd_si256(two52));
}
#endif

/* ---- Philox4x32-10 -------------------------------------------------------- */

static void xs_philox(const uint32_t *ctr, const uint32_t *key, int32_t rounds, uint32_t *out) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
  for (int32_t r = 0; r < rounds; r++) {
    if (r > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
    const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = (uint32_t)p1;
    c2 = n2;
    c3 = (uint32_t)p0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

static uint32_t xs_uniform_bits(uint64_t seed, uint64_t subsequence, uint64_t offset) {
  const uint64_t block = offset >> 2;
  const uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)subsequence,
                           (uint32_t)(subsequence >> 32)};
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  uint32_t out[4];
  xs_philox(ctr, key, 10, out);
  return out[offset & 3];
}

/* ---- keys, weights, row sources ------------------------------------------ */

static inline uint32_t xs_key(float f) {
  const uint32_t u = xk_f32_bits(f + 0.0f);
  return (u >> 31) ? ~u : (u | 0x80000000u);
}

static inline float xs_unkey(uint32_t k) { return xk_bits_f32((k >> 31) ? (k & 0x7fffffffu) : ~k); }

#define XS_KEY_NEG_INF 0x007fffffu

/* The float threshold of a key threshold: y >= xs_tau(k) iff key(y) >= k, for non-NaN y. */
static inline float xs_tau(uint32_t k) { return k <= XS_KEY_NEG_INF ? -INFINITY : xs_unkey(k); }

typedef struct xs_src {
  const char *p;
  int32_t dtype;
  int64_t es; /* element size */
  int64_t n;
  int logits;
  int has_t;
  float t;
} xs_src;

static inline float xs_at(const xs_src *s, int64_t i) {
  const float v = xk_load_scalar(s->p, s->dtype, i);
  return s->has_t ? v / s->t : v;
}

static inline uint64_t xs_weight(int logits, float y, float m) {
  if (logits) {
    const float d = y - m;
    if (!(d >= XS_W_CUT)) return 0;
    return (uint64_t)(xs_expf(d) * XS_W_SCALE);
  }
  const float c = y > 0.0f ? (y < 2.0f ? y : 2.0f) : 0.0f;
  return (uint64_t)(c * XS_W_SCALE);
}

#if XK_F32_LANES == 16
static inline __m512 xs_ld16(const xs_src *s, int64_t i) {
  const __m512 v = xk_load16(s->p + i * s->es, s->dtype);
  return s->has_t ? _mm512_div_ps(v, _mm512_set1_ps(s->t)) : v;
}

static inline __m512i xs_key16(__m512 y) {
  const __m512i u = _mm512_castps_si512(_mm512_add_ps(y, _mm512_setzero_ps()));
  return _mm512_xor_si512(u, _mm512_or_si512(_mm512_srai_epi32(u, 31), _mm512_set1_epi32((int)0x80000000u)));
}

/* W of 16 lanes as two halves of 8 u64, zero where `valid` is clear. */
static inline void xs_w16(__m512 y, float m, int logits, __mmask16 valid, __m512i *lo, __m512i *hi) {
  __m512 c;
  if (logits) {
    const __m512 d = _mm512_sub_ps(y, _mm512_set1_ps(m));
    valid &= _mm512_cmp_ps_mask(d, _mm512_set1_ps(XS_W_CUT), _CMP_GE_OQ);
    c = _mm512_mul_ps(xs_expf16(d), _mm512_set1_ps(XS_W_SCALE));
  } else {
    c = _mm512_min_ps(_mm512_max_ps(y, _mm512_setzero_ps()), _mm512_set1_ps(2.0f));
    c = _mm512_mul_ps(c, _mm512_set1_ps(XS_W_SCALE));
  }
  *lo = _mm512_maskz_cvttps_epu64((__mmask8)valid, _mm512_castps512_ps256(c));
  *hi = _mm512_maskz_cvttps_epu64((__mmask8)(valid >> 8), _mm512_extractf32x8_ps(c, 1));
}
/* W = H * 2^20 + L in two u32 lanes (zero where `valid` is clear): two cheap
 * f32 -> i32 truncations instead of f32 -> u64 ones. Exact: c * 2^40 - H * 2^20
 * is a float below 2^20 whenever H > 0. */
static inline void xs_wsplit16(__m512 y, float m, int logits, __mmask16 valid, __m512i *h, __m512i *l) {
  __m512 c;
  if (logits) {
    const __m512 d = _mm512_sub_ps(y, _mm512_set1_ps(m));
    valid &= _mm512_cmp_ps_mask(d, _mm512_set1_ps(XS_W_CUT), _CMP_GE_OQ);
    c = xs_expf16(d);
  } else {
    c = _mm512_min_ps(_mm512_max_ps(y, _mm512_setzero_ps()), _mm512_set1_ps(2.0f));
  }
  const __m512i hh = _mm512_maskz_cvttps_epi32(valid, _mm512_mul_ps(c, _mm512_set1_ps(0x1p20f)));
  const __m512 rem = _mm512_sub_ps(_mm512_mul_ps(c, _mm512_set1_ps(XS_W_SCALE)),
                                   _mm512_mul_ps(_mm512_cvtepi32_ps(hh), _mm512_set1_ps(0x1p20f)));
  *l = _mm512_maskz_cvttps_epi32(valid, rem);
  *h = hh;
}

static inline uint64_t xs_hsum_u32x16(__m512i v) {
  const __m512i lo = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(v));
  const __m512i hi = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(v, 1));
  return (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi));
}

static inline uint64_t xs_split_sum16(__m512i h, __m512i l) {
  return (xs_hsum_u32x16(h) << 20) + xs_hsum_u32x16(l);
}
#elif XK_F32_LANES == 8
static inline __m256 xs_ld8(const xs_src *s, int64_t i) {
  const __m256 v = xk_load8(s->p + i * s->es, s->dtype);
  return s->has_t ? _mm256_div_ps(v, _mm256_set1_ps(s->t)) : v;
}

static inline __m256i xs_key8(__m256 y) {
  const __m256i u = _mm256_castps_si256(_mm256_add_ps(y, _mm256_setzero_ps()));
  return _mm256_xor_si256(u, _mm256_or_si256(_mm256_srai_epi32(u, 31), _mm256_set1_epi32((int)0x80000000u)));
}

/* W of 8 lanes as two halves of 4 u64, zero where `valid` (a compare mask) is clear. */
static inline void xs_w8(__m256 y, float m, int logits, __m256 valid, __m256i *lo, __m256i *hi) {
  __m256 c;
  if (logits) {
    const __m256 d = _mm256_sub_ps(y, _mm256_set1_ps(m));
    valid = _mm256_and_ps(valid, _mm256_cmp_ps(d, _mm256_set1_ps(XS_W_CUT), _CMP_GE_OQ));
    c = _mm256_mul_ps(xs_expf8(d), _mm256_set1_ps(XS_W_SCALE));
  } else {
    c = _mm256_min_ps(_mm256_max_ps(y, _mm256_setzero_ps()), _mm256_set1_ps(2.0f));
    c = _mm256_mul_ps(c, _mm256_set1_ps(XS_W_SCALE));
  }
  c = _mm256_and_ps(c, valid);
  *lo = xs_trunc_u64x4(_mm256_cvtps_pd(_mm256_castps256_ps128(c)));
  *hi = xs_trunc_u64x4(_mm256_cvtps_pd(_mm256_extractf128_ps(c, 1)));
}

/* As xs_wsplit16, 8 lanes; `valid` is a compare mask. */
static inline void xs_wsplit8(__m256 y, float m, int logits, __m256 valid, __m256i *h, __m256i *l) {
  __m256 c;
  if (logits) {
    const __m256 d = _mm256_sub_ps(y, _mm256_set1_ps(m));
    valid = _mm256_and_ps(valid, _mm256_cmp_ps(d, _mm256_set1_ps(XS_W_CUT), _CMP_GE_OQ));
    c = xs_expf8(d);
  } else {
    c = _mm256_min_ps(_mm256_max_ps(y, _mm256_setzero_ps()), _mm256_set1_ps(2.0f));
  }
  c = _mm256_and_ps(c, valid);
  const __m256i hh = _mm256_cvttps_epi32(_mm256_mul_ps(c, _mm256_set1_ps(0x1p20f)));
  const __m256 rem = _mm256_sub_ps(_mm256_mul_ps(c, _mm256_set1_ps(XS_W_SCALE)),
                                   _mm256_mul_ps(_mm256_cvtepi32_ps(hh), _mm256_set1_ps(0x1p20f)));
  *l = _mm256_cvttps_epi32(rem);
  *h = hh;
}

static inline uint64_t xs_hsum_u32x8(__m256i v) {
  uint32_t t[8];
  _mm256_storeu_si256((__m256i *)t, v);
  uint64_t r = 0;
  for (int j = 0; j < 8; j++) r += t[j];
  return r;
}

static inline uint64_t xs_hsum_u64x4(__m256i v) {
  uint64_t t[4];
  _mm256_storeu_si256((__m256i *)t, v);
  return t[0] + t[1] + t[2] + t[3];
}

static inline float xs_hmax8(__m256 v) {
  float t[8];
  _mm256_storeu_ps(t, v);
  float r = t[0];
  for (int j = 1; j < 8; j++) r = t[j] > r ? t[j] : r;
  return r;
}
#endif

/* keys[j] (and W[j] when w != NULL) of elements i0 .. i0+cnt-1, cnt <= 16. */
static void xs_chunk(const xs_src *s, float m, int64_t i0, int64_t cnt, uint32_t *keys, uint64_t *w) {
#if XK_F32_LANES == 16
  if (cnt == 16) {
    const __m512 y = xs_ld16(s, i0);
    _mm512_storeu_si512(keys, xs_key16(y));
    if (w) {
      __m512i lo, hi;
      xs_w16(y, m, s->logits, 0xffff, &lo, &hi);
      _mm512_storeu_si512(w, lo);
      _mm512_storeu_si512(w + 8, hi);
    }
    return;
  }
#elif XK_F32_LANES == 8
  if (cnt == 16) {
    for (int h = 0; h < 2; h++) {
      const __m256 y = xs_ld8(s, i0 + 8 * h);
      _mm256_storeu_si256((__m256i *)(keys + 8 * h), xs_key8(y));
      if (w) {
        __m256i lo, hi;
        xs_w8(y, m, s->logits, _mm256_castsi256_ps(_mm256_set1_epi32(-1)), &lo, &hi);
        _mm256_storeu_si256((__m256i *)(w + 8 * h), lo);
        _mm256_storeu_si256((__m256i *)(w + 8 * h + 4), hi);
      }
    }
    return;
  }
#endif
  for (int64_t j = 0; j < cnt; j++) {
    const float y = xs_at(s, i0 + j);
    keys[j] = xs_key(y);
    if (w) w[j] = xs_weight(s->logits, y, m);
  }
}

/* ---- workspace -------------------------------------------------------------- */

typedef struct xs_ws {
  float *cy;    /* candidate values, index order */
  int32_t *ci;  /* candidate indices */
  uint32_t *ck; /* candidate keys (once resolved) */
  uint64_t *cw; /* candidate weights (once resolved) */
  uint32_t *sk; /* scratch for the selections */
  uint64_t *sw;
  uint32_t *hc; /* radix histograms */
  uint64_t *hm;
  int64_t cap;
} xs_ws;

static void xs_ws_init(xs_ws *w, void *mem, int64_t cap) {
  const int64_t slot = cap + 64;
  char *p = (char *)mem;
  w->cw = (uint64_t *)p;
  p += slot * 8;
  w->sw = (uint64_t *)p;
  p += slot * 8;
  w->hm = (uint64_t *)p;
  p += XS_HIST * 8;
  w->cy = (float *)p;
  p += slot * 4;
  w->ci = (int32_t *)p;
  p += slot * 4;
  w->ck = (uint32_t *)p;
  p += slot * 4;
  w->sk = (uint32_t *)p;
  p += slot * 4;
  w->hc = (uint32_t *)p;
  w->cap = cap;
}

/* ---- selections on the candidate scratch (no sort) ------------------------- */

/* Three-way partition of k[lo, hi) (and w alongside) by pivot, descending:
 * [lo, *a) > pivot, [*a, *b) == pivot, [*b, hi) < pivot. */
static void xs_partition(uint32_t *k, uint64_t *w, int64_t lo, int64_t hi, uint32_t pivot, int64_t *a, int64_t *b) {
  int64_t lt = lo, i = lo, gt = hi;
  while (i < gt) {
    if (k[i] > pivot) {
      uint32_t tk = k[i];
      k[i] = k[lt];
      k[lt] = tk;
      if (w) {
        uint64_t tw = w[i];
        w[i] = w[lt];
        w[lt] = tw;
      }
      lt++;
      i++;
    } else if (k[i] < pivot) {
      gt--;
      uint32_t tk = k[i];
      k[i] = k[gt];
      k[gt] = tk;
      if (w) {
        uint64_t tw = w[i];
        w[i] = w[gt];
        w[gt] = tw;
      }
    } else {
      i++;
    }
  }
  *a = lt;
  *b = gt;
}

static uint32_t xs_median3(const uint32_t *k, int64_t lo, int64_t hi) {
  uint32_t x = k[lo], y = k[lo + (hi - lo) / 2], z = k[hi - 1];
  if (x > y) {
    uint32_t t = x;
    x = y;
    y = t;
  }
  if (y > z) y = z;
  return x > y ? x : y;
}

/* The k-th largest of k[0, n) counting repeats (1 <= kk <= n), by histogram
 * narrowing over the key range (no data-dependent branches in the loops).
 * Overwrites k; uses the workspace histogram. */
static uint32_t xs_kth_largest(xs_ws *w, uint32_t *k, int64_t n, int64_t kk) {
#if XK_F32_LANES == 16
  /* Bisection on the key: the largest v with #{key >= v} >= kk, each count a
   * compare + popcount sweep (no data-dependent branches, no histogram). */
  (void)w;
  __m512i vlo = _mm512_set1_epi32(-1), vhi = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i v = _mm512_loadu_si512(k + i);
    vlo = _mm512_min_epu32(vlo, v);
    vhi = _mm512_max_epu32(vhi, v);
  }
  uint32_t lo = _mm512_reduce_min_epu32(vlo), hi = _mm512_reduce_max_epu32(vhi);
  for (; i < n; i++) {
    lo = k[i] < lo ? k[i] : lo;
    hi = k[i] > hi ? k[i] : hi;
  }
  const int64_t nv = n & ~(int64_t)15;
  const __mmask16 tail = (__mmask16)((1u << (n & 15)) - 1);
  while (lo < hi) {
    const uint32_t mid = lo + (uint32_t)(((uint64_t)hi - lo + 1) / 2);
    const __m512i vm = _mm512_set1_epi32((int)mid);
    int64_t c0 = 0, c1 = 0;
    int64_t j = 0;
    for (; j + 32 <= nv; j += 32) {
      c0 += __builtin_popcount(_mm512_cmp_epu32_mask(_mm512_loadu_si512(k + j), vm, _MM_CMPINT_NLT));
      c1 += __builtin_popcount(_mm512_cmp_epu32_mask(_mm512_loadu_si512(k + j + 16), vm, _MM_CMPINT_NLT));
    }
    for (; j < nv; j += 16)
      c0 += __builtin_popcount(_mm512_cmp_epu32_mask(_mm512_loadu_si512(k + j), vm, _MM_CMPINT_NLT));
    if (tail) c1 += __builtin_popcount(_mm512_mask_cmp_epu32_mask(tail, _mm512_maskz_loadu_epi32(tail, k + nv), vm, _MM_CMPINT_NLT));
    if (c0 + c1 >= kk)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
#else
  uint32_t lo = 0xffffffffu, hi = 0;
  for (int64_t i = 0; i < n; i++) {
    lo = k[i] < lo ? k[i] : lo;
    hi = k[i] > hi ? k[i] : hi;
  }
  for (;;) {
    if (n == 1) return k[0];
    if (lo == hi) return lo;
    uint32_t bins = 64;
    while (bins < 2048 && bins < (uint64_t)n) bins <<= 1;
    const uint64_t span = (uint64_t)hi - lo + 1;
    int shift = 0;
    while (((span - 1) >> shift) >= bins) shift++;
    const uint32_t nb = (uint32_t)(((span - 1) >> shift) + 1);
    memset(w->hc, 0, sizeof(uint32_t) * nb);
    for (int64_t i = 0; i < n; i++) w->hc[(k[i] - lo) >> shift]++;
    int64_t acc = 0;
    uint32_t b = nb - 1;
    while (acc + w->hc[b] < kk) acc += w->hc[b--];
    kk -= acc;
    int64_t j = 0;
    for (int64_t i = 0; i < n; i++) {
      k[j] = k[i];
      j += ((k[i] - lo) >> shift) == b;
    }
    n = j;
    const uint32_t nlo = lo + (b << shift);
    const uint64_t top = (uint64_t)nlo + ((1ull << shift) - 1);
    lo = nlo;
    hi = top > hi ? hi : (uint32_t)top;
    if (shift == 0) return lo;
  }
#endif
}

static inline int xs_kept(uint64_t g, xs_u128 lim) { return ((xs_u128)g << 32) < lim; }

/* Top-p: the smallest key v among k[0, n) with (acc0 + G(v)) * 2^32 < lim,
 * where G(v) sums w over entries with key > v; *mass_ge = acc0 + the weight
 * of entries with key >= v. Weighted quickselect; reorders k and w. The
 * largest key qualifies whenever acc0 does. Returns 0xffffffff if none. */
static uint32_t xs_smallest_kept(uint32_t *k, uint64_t *w, int64_t n, xs_u128 lim, uint64_t acc0,
                                 uint64_t *mass_ge) {
  int64_t lo = 0, hi = n;
  uint64_t acc = acc0;
  uint32_t best = 0xffffffffu;
  while (lo < hi) {
    const uint32_t pivot = xs_median3(k, lo, hi);
    int64_t a, b;
    xs_partition(k, w, lo, hi, pivot, &a, &b);
    uint64_t mg = 0, me = 0;
    for (int64_t i = lo; i < a; i++) mg += w[i];
    for (int64_t i = a; i < b; i++) me += w[i];
    if (xs_kept(acc + mg, lim)) {
      best = pivot;
      acc += mg + me;
      if (mass_ge) *mass_ge = acc;
      lo = b;
    } else {
      hi = a;
    }
  }
  return best;
}

static xs_u128 xs_top_p_limit(float top_p, uint64_t z) {
  double q = ceil((double)top_p * 0x1p32);
  if (q < 1.0) q = 1.0;
  if (q > 0x1p32) q = 0x1p32;
  return (xs_u128)(uint64_t)q * z;
}

/* ---- the candidate pass ----------------------------------------------------- */

/* ARGMAX (greedy rows without a temperature): no candidates; the pass
 * records where the running max last rose (arg). */
enum { XS_COLLECT_NONE = 0, XS_COLLECT_BOUNDS = 1, XS_COLLECT_ARGMAX = 2 };

typedef struct xs_pass {
  /* in */
  int mode;
  int probs;         /* track negatives and the W total */
  int64_t k;         /* BOUNDS: top-k (0 = off) */
  int minp;          /* BOUNDS: min-p bound on */
  float lnmp, min_p; /* logits: fl32(ln(min_p)); probs: min_p */
  xs_u128 lim; /* MASS: top-p limit */
  float m;           /* MASS: the row max */
  float L;           /* collect y >= L */
  float XL;          /* the raw-value form of L: raw x < XL implies y < L */
  int64_t trigger;   /* compact when more candidates than this */
  /* out */
  float max;
  int nan, pinf, neg;
  uint64_t zsum;
  int64_t n;
  int overflow;
  int64_t arg; /* ARGMAX: the first index to search for the max from; -1 = 0 */
} xs_pass;

/* A lower bound on the min-p threshold from a running max m_run <= m. */
static float xs_minp_bound(const xs_src *s, const xs_pass *p, float m_run) {
  if (!(m_run > -INFINITY)) return -INFINITY;
  if (!s->logits) return p->min_p * m_run;
  const float margin = 1e-3f + 1e-5f * (fabsf(m_run) + fabsf(p->lnmp));
  return (m_run + p->lnmp) - margin;
}

/* The next compaction point: cheap quickselects early, room to grow later. */
static int64_t xs_trigger(const xs_ws *w, const xs_pass *p, int64_t n) {
  int64_t t = 2 * n + 4 * p->k + 64;
  if (t < 256) t = 256;
  if (t > w->cap - 16) t = w->cap - 16;
  return t;
}

/* The smallest raw x with fl(x / t) >= L (exactly: division by t > 0 is
 * monotone), so the pass compares raw values and divides only what it keeps.
 * Without a temperature it is L itself; -inf if the search does not settle. */
static float xs_xbound(const xs_src *s, float L) {
  if (!s->has_t || !(L > -INFINITY)) return L;
  const float t = s->t;
  float c = L * t;
  if (c != c) return -INFINITY;
  for (int it = 0; it < 16; it++) {
    if (c / t >= L) {
      const float d = nextafterf(c, -INFINITY);
      if (!(d / t >= L)) return c;
      c = d;
    } else {
      c = nextafterf(c, INFINITY);
    }
  }
  return -INFINITY;
}

/* Raises the lower bound and drops candidates below it (keeping index order). */
static void xs_compact(const xs_src *s, xs_ws *w, xs_pass *p, float m_run) {
  uint32_t lk = xs_key(p->L);
  const int64_t n = p->n;
  if (p->minp) {
    const uint32_t b = xs_key(xs_minp_bound(s, p, m_run));
    if (b > lk) lk = b;
  }
  if (p->k > 0 && n >= p->k) {
    for (int64_t i = 0; i < n; i++) w->sk[i] = xs_key(w->cy[i]);
    const uint32_t t = xs_kth_largest(w, w->sk, n, p->k);
    if (t > lk) lk = t;
  }
  int64_t j = 0;
#if XK_F32_LANES == 16
  /* Compress in place: the stores at j <= i only overwrite entries already read. */
  const __m512i vlk = _mm512_set1_epi32((int)lk);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 in = i + 16 <= n ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    const __m512 y = _mm512_maskz_loadu_ps(in, w->cy + i);
    const __m512i ix = _mm512_maskz_loadu_epi32(in, w->ci + i);
    const __mmask16 keep = _mm512_mask_cmp_epu32_mask(in, xs_key16(y), vlk, _MM_CMPINT_NLT);
    _mm512_storeu_ps(w->cy + j, _mm512_maskz_compress_ps(keep, y));
    _mm512_storeu_si512(w->ci + j, _mm512_maskz_compress_epi32(keep, ix));
    j += __builtin_popcount((unsigned)keep);
  }
#else
  for (int64_t i = 0; i < n; i++) {
    if (xs_key(w->cy[i]) >= lk) {
      w->cy[j] = w->cy[i];
      w->ci[j] = w->ci[i];
      j++;
    }
  }
#endif
  p->n = j;
  p->L = xs_tau(lk);
  p->XL = xs_xbound(s, p->L);
  if (j > w->cap / 2) p->overflow = 1;
  p->trigger = xs_trigger(w, p, j);
}

#if XK_F32_LANES == 16
/* ---- the streaming pass (AVX-512, logits) ------------------------------------
 * 64 raw values per step from four independent loads, a software prefetch
 * 4 KiB ahead (the hardware streamer stops at every 4 KiB page), the NaN test
 * and a max tree with one loop-carried max, and one compare of the block max
 * against the raw-value bound: the rare blocks that hold a candidate go to
 * xs_hit64. No division in the loop: y = x / t is monotone in x, so the max
 * and the bound work on raw values and only kept values are divided. */
#define XS_PF_BYTES 4096

static inline __attribute__((always_inline)) __m512 xs_ldx(const char *p, int64_t i, const int dtype) {
  switch (dtype) {
    case XK_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 2 * i)));
    case XK_BF16:
      return _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + 2 * i))), 16));
    default: return _mm512_loadu_ps((const float *)p + i);
  }
}

/* Raises the min-p bound from the running raw max. */
static __attribute__((noinline)) void xs_minp_raise(const xs_src *s, xs_pass *p, float mx_raw) {
  const float m_run = s->has_t ? mx_raw / s->t : mx_raw;
  const float b = xs_minp_bound(s, p, m_run);
  if (b > p->L) {
    p->L = b;
    p->XL = xs_xbound(s, b);
  }
}

/* Appends the values of y (raw; elements i0 + lane) at or above the raw
 * bound to the candidates, divided by the temperature. */
static inline __attribute__((always_inline)) int64_t xs_keep16(const xs_src *s, xs_ws *w, int64_t cn, __m512 y,
                                                                __m512 vXL, int64_t i0) {
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __mmask16 k = _mm512_cmp_ps_mask(y, vXL, _CMP_GE_OQ);
  const __m512 v = s->has_t ? _mm512_div_ps(y, _mm512_set1_ps(s->t)) : y;
  _mm512_storeu_ps(w->cy + cn, _mm512_maskz_compress_ps(k, v));
  _mm512_storeu_si512(w->ci + cn, _mm512_maskz_compress_epi32(k, _mm512_add_epi32(lanes, _mm512_set1_epi32((int)i0))));
  return cn + __builtin_popcount((unsigned)k);
}

static inline __attribute__((always_inline)) void xs_pass_fast_t(const xs_src *s, xs_ws *w, xs_pass *p,
                                                                   const int dtype, const int collect0) {
  const char *const base = s->p;
  const int64_t n = s->n, es = s->es;
  const int minp = p->minp;
  int collect = collect0;
  int64_t cn = 0, trig = p->trigger;
  float mrun = -INFINITY; /* min-p: the raw max so far (every block that raises it hits) */
  __m512 vXL = _mm512_set1_ps(p->XL), vmax = _mm512_set1_ps(-INFINITY);
  __mmask16 knan = 0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    _mm_prefetch(base + i * es + XS_PF_BYTES, _MM_HINT_T2);
    const __m512 y0 = xs_ldx(base, i, dtype), y1 = xs_ldx(base, i + 16, dtype);
    const __m512 y2 = xs_ldx(base, i + 32, dtype), y3 = xs_ldx(base, i + 48, dtype);
    knan = _kor_mask16(knan, _kor_mask16(_mm512_cmp_ps_mask(y0, y1, _CMP_UNORD_Q),
                                         _mm512_cmp_ps_mask(y2, y3, _CMP_UNORD_Q)));
    const __m512 c = _mm512_max_ps(_mm512_max_ps(y0, y1), _mm512_max_ps(y2, y3));
    vmax = _mm512_max_ps(c, vmax); /* a NaN in c leaves vmax as it was */
    if (collect == 2 && __builtin_expect(_mm512_cmp_ps_mask(c, vXL, _CMP_GT_OQ) != 0, 0)) {
      vXL = _mm512_set1_ps(_mm512_reduce_max_ps(c)); /* the running max */
      p->arg = i;
    }
    if (collect == 1 && __builtin_expect(_mm512_cmp_ps_mask(c, vXL, _CMP_GE_OQ) != 0, 0)) {
      if (minp) {
        const float cb = _mm512_reduce_max_ps(c);
        if (cb > mrun) {
          mrun = cb;
          xs_minp_raise(s, p, mrun);
          vXL = _mm512_set1_ps(p->XL);
        }
      }
      cn = xs_keep16(s, w, cn, y0, vXL, i);
      cn = xs_keep16(s, w, cn, y1, vXL, i + 16);
      cn = xs_keep16(s, w, cn, y2, vXL, i + 32);
      cn = xs_keep16(s, w, cn, y3, vXL, i + 48);
      if (cn > trig) {
        const float mr = _mm512_reduce_max_ps(vmax);
        p->n = cn;
        xs_compact(s, w, p, s->has_t ? mr / s->t : mr);
        cn = p->n;
        trig = p->trigger;
        vXL = _mm512_set1_ps(p->XL);
        if (p->overflow) collect = 0;
      }
    }
  }
  float mx = _mm512_reduce_max_ps(vmax);
  int nan = knan != 0;
  for (; i < n; i++) {
    const float x = xk_load_scalar(base, dtype, i);
    if (x != x) {
      nan = 1;
      continue;
    }
    if (collect == 2 && x > mx) p->arg = i;
    if (x > mx) mx = x;
    if (collect == 1 && minp && x > mrun) {
      mrun = x;
      xs_minp_raise(s, p, mrun);
    }
    if (collect == 1 && x >= p->XL) {
      w->cy[cn] = s->has_t ? x / s->t : x;
      w->ci[cn] = (int32_t)i;
      cn++;
      if (cn > trig) {
        p->n = cn;
        xs_compact(s, w, p, s->has_t ? mx / s->t : mx);
        cn = p->n;
        trig = p->trigger;
        if (p->overflow) collect = 0;
      }
    }
  }
  if (s->has_t) mx = mx / s->t;
  p->n = cn;
  p->max = mx;
  p->nan = nan;
  p->pinf = mx == INFINITY;
  p->neg = 0;
  p->zsum = 0;
}

/* The streaming pass for logits rows; 0 when the row's dtype has none. */
static int xs_pass_fast(const xs_src *s, xs_ws *w, xs_pass *p) {
  const int collect = p->mode == XS_COLLECT_ARGMAX && !s->has_t ? 2 : p->mode == XS_COLLECT_BOUNDS;
  p->n = 0;
  p->overflow = 0;
  p->arg = -1;
  p->trigger = xs_trigger(w, p, 0);
  p->XL = collect == 2 ? -INFINITY : xs_xbound(s, p->L);
  switch (s->dtype) {
    case XK_F32:
      if (collect == 1)
        xs_pass_fast_t(s, w, p, XK_F32, 1);
      else if (collect == 2)
        xs_pass_fast_t(s, w, p, XK_F32, 2);
      else
        xs_pass_fast_t(s, w, p, XK_F32, 0);
      return 1;
    case XK_F16: xs_pass_fast_t(s, w, p, XK_F16, collect); return 1;
    case XK_BF16: xs_pass_fast_t(s, w, p, XK_BF16, collect); return 1;
    default: return 0;
  }
}
#endif

/* One pass over the row: max, NaN/inf/negative flags, the probs W total, and
 * (mode != NONE) the candidates y >= L under a rising lower bound. */
static void xs_pass_run(const xs_src *src, xs_ws *w, xs_pass *p) {
#if XK_F32_LANES == 16
  if (src->logits && xs_pass_fast(src, w, p)) return;
#endif
  const xs_src sl = *src; /* a local copy: the candidate stores cannot alias it */
  const xs_src *s = &sl;
  const int64_t n = s->n;
  const int probs = p->probs, minp = p->minp;
  (void)minp;
  float *const cy = w->cy;
  int32_t *const ci = w->ci;
  int64_t i = 0, cn = 0, trig;
  int collect = p->mode == XS_COLLECT_BOUNDS;
  float mx = -INFINITY;
  int nan = 0, pinf = 0, neg = 0;
  uint64_t z = 0;
  p->n = 0;
  p->overflow = 0;
  p->arg = -1;
  p->trigger = trig = xs_trigger(w, p, 0);
#if XK_F32_LANES == 16
  __m512 vmax = _mm512_set1_ps(-INFINITY), vL = _mm512_set1_ps(p->L);
  __mmask16 mnan = 0, mpinf = 0, mneg = 0;
  __m512i ah = _mm512_setzero_si512(), al = _mm512_setzero_si512();
  int blk = 0;
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (; i + 16 <= n; i += 16) {
    const __m512 y = xs_ld16(s, i);
    mnan |= _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q);
    mpinf |= _mm512_cmp_ps_mask(y, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ);
    vmax = _mm512_max_ps(y, vmax);
    if (probs) {
      mneg |= _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_LT_OQ);
      __m512i h, l;
      xs_wsplit16(y, 0.0f, 0, 0xffff, &h, &l);
      ah = _mm512_add_epi32(ah, h);
      al = _mm512_add_epi32(al, l);
      if (++blk == 1024) {
        z += xs_split_sum16(ah, al);
        ah = al = _mm512_setzero_si512();
        blk = 0;
      }
    }
    if (collect) {
      const __mmask16 k = _mm512_cmp_ps_mask(y, vL, _CMP_GE_OQ);
      if (k) {
        _mm512_mask_compressstoreu_ps(cy + cn, k, y);
        _mm512_mask_compressstoreu_epi32(ci + cn, k, _mm512_add_epi32(lanes, _mm512_set1_epi32((int)i)));
        cn += __builtin_popcount((unsigned)k);
        if (cn > trig) {
          p->n = cn;
          xs_compact(s, w, p, _mm512_reduce_max_ps(vmax));
          cn = p->n;
          trig = p->trigger;
          vL = _mm512_set1_ps(p->L);
          if (p->overflow) collect = 0;
        }
      }
      if (minp && (i & 4095) == 0) {
        const float b = xs_minp_bound(s, p, _mm512_reduce_max_ps(vmax));
        if (b > p->L) {
          p->L = b;
          vL = _mm512_set1_ps(b);
        }
      }
    }
  }
  mx = _mm512_reduce_max_ps(vmax);
  nan = mnan != 0;
  pinf = mpinf != 0;
  neg = mneg != 0;
  z += xs_split_sum16(ah, al);
#elif XK_F32_LANES == 8
  __m256 vmax = _mm256_set1_ps(-INFINITY), vL = _mm256_set1_ps(p->L);
  __m256 anynan = _mm256_setzero_ps(), anypinf = _mm256_setzero_ps(), anyneg = _mm256_setzero_ps();
  __m256i ah = _mm256_setzero_si256(), al = _mm256_setzero_si256();
  int blk = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 y = xs_ld8(s, i);
    anynan = _mm256_or_ps(anynan, _mm256_cmp_ps(y, y, _CMP_UNORD_Q));
    anypinf = _mm256_or_ps(anypinf, _mm256_cmp_ps(y, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ));
    vmax = _mm256_max_ps(y, vmax);
    if (probs) {
      anyneg = _mm256_or_ps(anyneg, _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_LT_OQ));
      __m256i h, l;
      xs_wsplit8(y, 0.0f, 0, _mm256_castsi256_ps(_mm256_set1_epi32(-1)), &h, &l);
      ah = _mm256_add_epi32(ah, h);
      al = _mm256_add_epi32(al, l);
      if (++blk == 1024) {
        z += (xs_hsum_u32x8(ah) << 20) + xs_hsum_u32x8(al);
        ah = al = _mm256_setzero_si256();
        blk = 0;
      }
    }
    if (collect) {
      int k = _mm256_movemask_ps(_mm256_cmp_ps(y, vL, _CMP_GE_OQ));
      if (k) {
        float t[8];
        _mm256_storeu_ps(t, y);
        while (k) {
          const int b = __builtin_ctz((unsigned)k);
          k &= k - 1;
          cy[cn] = t[b];
          ci[cn] = (int32_t)(i + b);
          cn++;
        }
        if (cn > trig) {
          p->n = cn;
          xs_compact(s, w, p, xs_hmax8(vmax));
          cn = p->n;
          trig = p->trigger;
          vL = _mm256_set1_ps(p->L);
          if (p->overflow) collect = 0;
        }
      }
      if (minp && (i & 4095) == 0) {
        const float b = xs_minp_bound(s, p, xs_hmax8(vmax));
        if (b > p->L) {
          p->L = b;
          vL = _mm256_set1_ps(b);
        }
      }
    }
  }
  mx = xs_hmax8(vmax);
  nan = _mm256_movemask_ps(anynan) != 0;
  pinf = _mm256_movemask_ps(anypinf) != 0;
  neg = _mm256_movemask_ps(anyneg) != 0;
  z += (xs_hsum_u32x8(ah) << 20) + xs_hsum_u32x8(al);
#endif
  for (; i < n; i++) {
    const float y = xs_at(s, i);
    if (y != y) {
      nan = 1;
      continue;
    }
    if (y == INFINITY) pinf = 1;
    if (y > mx) mx = y;
    if (probs) {
      if (y < 0.0f) neg = 1;
      z += xs_weight(0, y, 0.0f);
    }
    if (collect && y >= p->L) {
      cy[cn] = y;
      ci[cn] = (int32_t)i;
      cn++;
      if (cn > trig) {
        p->n = cn;
        xs_compact(s, w, p, mx);
        cn = p->n;
        trig = p->trigger;
        if (p->overflow) collect = 0;
      }
    }
  }
  p->n = cn;
  p->max = mx;
  p->nan = nan;
  p->pinf = pinf;
  p->neg = neg;
  p->zsum = z;
}

/* ---- whole-row passes ------------------------------------------------------- */

/* Sum of W over y >= tau. The vector paths keep H and L (W = H * 2^20 + L)
 * in u32 lanes and move them to u64 every 1024 vectors (H <= 2^21). */
static uint64_t xs_mass(const xs_src *s, float m, float tau) {
  const int64_t n = s->n;
  int64_t i = 0;
  uint64_t z = 0;
#if XK_F32_LANES == 16
  const __m512 vtau = _mm512_set1_ps(tau);
  while (i + 16 <= n) {
    __m512i ah = _mm512_setzero_si512(), al = _mm512_setzero_si512();
    const int64_t stop = (n - i) / 16 > 1024 ? i + 1024 * 16 : n - 15;
    for (; i < stop; i += 16) {
      const __m512 y = xs_ld16(s, i);
      const __mmask16 valid = _mm512_cmp_ps_mask(y, vtau, _CMP_GE_OQ);
      if (!valid) continue;
      __m512i h, l;
      xs_wsplit16(y, m, s->logits, valid, &h, &l);
      ah = _mm512_add_epi32(ah, h);
      al = _mm512_add_epi32(al, l);
    }
    z += xs_split_sum16(ah, al);
  }
#elif XK_F32_LANES == 8
  const __m256 vtau = _mm256_set1_ps(tau);
  while (i + 8 <= n) {
    __m256i ah = _mm256_setzero_si256(), al = _mm256_setzero_si256();
    const int64_t stop = (n - i) / 8 > 1024 ? i + 1024 * 8 : n - 7;
    for (; i < stop; i += 8) {
      const __m256 y = xs_ld8(s, i);
      const __m256 valid = _mm256_cmp_ps(y, vtau, _CMP_GE_OQ);
      if (!_mm256_movemask_ps(valid)) continue;
      __m256i h, l;
      xs_wsplit8(y, m, s->logits, valid, &h, &l);
      ah = _mm256_add_epi32(ah, h);
      al = _mm256_add_epi32(al, l);
    }
    z += (xs_hsum_u32x8(ah) << 20) + xs_hsum_u32x8(al);
  }
#endif
  for (; i < n; i++) {
    const float y = xs_at(s, i);
    if (y >= tau) z += xs_weight(s->logits, y, m);
  }
  return z;
}

/* The first index whose running sum of W over y >= tau exceeds t (t < that total). */
static int64_t xs_scan(const xs_src *s, float m, float tau, uint64_t t) {
  const int64_t n = s->n;
  int64_t i = 0, last = -1;
  uint64_t acc = 0;
#if XK_F32_LANES == 16
  const __m512 vtau = _mm512_set1_ps(tau);
  for (; i + 16 <= n; i += 16) {
    const __m512 y = xs_ld16(s, i);
    const __mmask16 valid = _mm512_cmp_ps_mask(y, vtau, _CMP_GE_OQ);
    if (!valid) continue;
    __m512i h, l;
    xs_wsplit16(y, m, s->logits, valid, &h, &l);
    const uint64_t sum = xs_split_sum16(h, l);
    if (acc + sum > t) {
      uint32_t hl[16], ll[16];
      _mm512_storeu_si512(hl, h);
      _mm512_storeu_si512(ll, l);
      for (int j = 0; j < 16; j++) {
        acc += ((uint64_t)hl[j] << 20) + ll[j];
        if (acc > t) return i + j;
      }
    }
    acc += sum;
    last = i + 15 - __builtin_clz((unsigned)valid << 16);
  }
#elif XK_F32_LANES == 8
  const __m256 vtau = _mm256_set1_ps(tau);
  for (; i + 8 <= n; i += 8) {
    const __m256 y = xs_ld8(s, i);
    const __m256 valid = _mm256_cmp_ps(y, vtau, _CMP_GE_OQ);
    const int vm = _mm256_movemask_ps(valid);
    if (!vm) continue;
    __m256i h, l;
    xs_wsplit8(y, m, s->logits, valid, &h, &l);
    const uint64_t sum = (xs_hsum_u32x8(h) << 20) + xs_hsum_u32x8(l);
    if (acc + sum > t) {
      uint32_t hl[8], ll[8];
      _mm256_storeu_si256((__m256i *)hl, h);
      _mm256_storeu_si256((__m256i *)ll, l);
      for (int j = 0; j < 8; j++) {
        acc += ((uint64_t)hl[j] << 20) + ll[j];
        if (acc > t) return i + j;
      }
    }
    acc += sum;
    last = i + 31 - __builtin_clz((unsigned)vm);
  }
#endif
  for (; i < n; i++) {
    const float y = xs_at(s, i);
    if (!(y >= tau)) continue;
    last = i;
    acc += xs_weight(s->logits, y, m);
    if (acc > t) return i;
  }
  return last; /* unreachable when t < the total */
}

/* Keys (and W when w != NULL) of the elements i0 .. i0+15 whose key lies in
 * [lo, hi]; returns the lane mask (bit j = element i0 + j), full chunks only. */
static unsigned xs_chunk_in(const xs_src *s, float m, int64_t i0, uint32_t lo, uint32_t hi, uint32_t *keys,
                            uint64_t *w) {
#if XK_F32_LANES == 16
  const __m512 y = xs_ld16(s, i0);
  const __m512i k = xs_key16(y);
  const __mmask16 in = _mm512_cmp_epu32_mask(k, _mm512_set1_epi32((int)lo), _MM_CMPINT_NLT) &
                       _mm512_cmp_epu32_mask(k, _mm512_set1_epi32((int)hi), _MM_CMPINT_LE);
  if (in) {
    _mm512_storeu_si512(keys, k);
    if (w) {
      __m512i wl, wh;
      xs_w16(y, m, s->logits, in, &wl, &wh);
      _mm512_storeu_si512(w, wl);
      _mm512_storeu_si512(w + 8, wh);
    }
  }
  return in;
#elif XK_F32_LANES == 8
  unsigned mask = 0;
  const __m256i bias = _mm256_set1_epi32((int)0x80000000u);
  const __m256i lob = _mm256_xor_si256(_mm256_set1_epi32((int)lo), bias);
  const __m256i hib = _mm256_xor_si256(_mm256_set1_epi32((int)hi), bias);
  for (int h = 0; h < 2; h++) {
    const __m256 y = xs_ld8(s, i0 + 8 * h);
    const __m256i k = xs_key8(y);
    const __m256i kb = _mm256_xor_si256(k, bias);
    const __m256i out = _mm256_or_si256(_mm256_cmpgt_epi32(lob, kb), _mm256_cmpgt_epi32(kb, hib));
    const unsigned in = ~(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(out)) & 0xffu;
    if (!in) continue;
    mask |= in << (8 * h);
    _mm256_storeu_si256((__m256i *)(keys + 8 * h), k);
    if (w) {
      __m256i wl, wh;
      xs_w8(y, m, s->logits, _mm256_castsi256_ps(_mm256_andnot_si256(out, _mm256_set1_epi32(-1))), &wl, &wh);
      _mm256_storeu_si256((__m256i *)(w + 8 * h), wl);
      _mm256_storeu_si256((__m256i *)(w + 8 * h + 4), wh);
    }
  }
  return mask;
#else
  unsigned mask = 0;
  for (int j = 0; j < 16; j++) {
    const float y = xs_at(s, i0 + j);
    const uint32_t k = xs_key(y);
    if (y != y || k < lo || k > hi) continue;
    mask |= 1u << j;
    keys[j] = k;
    if (w) w[j] = xs_weight(s->logits, y, m);
  }
  return mask;
#endif
}

/* Calls body(key, weight, index) for every element with key in [lo, hi]. */
#define XS_FOR_IN_RANGE(s, m, lo, hi, want_w, body)                                         \
  do {                                                                                      \
    uint32_t ks_[16];                                                                       \
    uint64_t ws_[16];                                                                       \
    int64_t i_ = 0;                                                                         \
    for (; i_ + 16 <= (s)->n; i_ += 16) {                                                   \
      unsigned mk_ = xs_chunk_in((s), (m), i_, (lo), (hi), ks_, (want_w) ? ws_ : NULL);     \
      while (mk_) {                                                                         \
        const int j_ = __builtin_ctz(mk_);                                                  \
        mk_ &= mk_ - 1;                                                                     \
        const uint32_t key_ = ks_[j_];                                                      \
        const uint64_t wt_ = (want_w) ? ws_[j_] : 0;                                        \
        const int64_t idx_ = i_ + j_;                                                       \
        (void)key_;                                                                         \
        (void)wt_;                                                                          \
        (void)idx_;                                                                         \
        body;                                                                               \
      }                                                                                     \
    }                                                                                       \
    for (; i_ < (s)->n; i_++) {                                                             \
      const float y_ = xs_at((s), i_);                                                      \
      const uint32_t key_ = xs_key(y_);                                                     \
      if (y_ != y_ || key_ < (lo) || key_ > (hi)) continue;                                 \
      const uint64_t wt_ = (want_w) ? xs_weight((s)->logits, y_, (m)) : 0;                  \
      const int64_t idx_ = i_;                                                              \
      (void)wt_;                                                                            \
      (void)idx_;                                                                           \
      body;                                                                                 \
    }                                                                                       \
  } while (0)

/* Threshold select over the whole row among elements with key >= lo, without
 * sorting: histograms of 2048 bins over the remaining key range [lo, hi],
 * narrowed each pass, and once the boundary bin holds few enough elements
 * they are collected and finished by quickselect.
 * Count mode (lim == 0): the key of the kk-th largest (0 when fewer exist).
 * Mass mode: the smallest key v with G(v) * 2^32 < lim, G over keys >= lo;
 * *zge = the weight of keys >= v. */
static uint32_t xs_select(const xs_src *s, xs_ws *w, float m, uint32_t lo, int64_t kk, xs_u128 lim, uint64_t *zge) {
  const int mass = lim != 0;
  uint32_t hi = xs_key(m);
  uint64_t acc = 0; /* count or weight of elements with key > hi (and >= lo) */
  while (lo <= hi) {
    const uint64_t span = (uint64_t)hi - lo + 1;
    int shift = 0;
    while (((span - 1) >> shift) >= XS_HIST) shift++;
    const uint32_t nb = (uint32_t)(((span - 1) >> shift) + 1);
    memset(w->hc, 0, sizeof(uint32_t) * nb);
    if (mass) memset(w->hm, 0, sizeof(uint64_t) * nb);
    XS_FOR_IN_RANGE(s, m, lo, hi, mass, {
      const uint32_t bin = (key_ - lo) >> shift;
      w->hc[bin]++;
      if (mass) w->hm[bin] += wt_;
    });
    int64_t b, found = -1;
    uint64_t at = acc;
    if (!mass) {
      for (b = (int64_t)nb - 1; b >= 0; b--) {
        if (acc + w->hc[b] >= (uint64_t)kk) {
          found = b;
          at = acc;
          break;
        }
        acc += w->hc[b];
      }
      if (found < 0) return 0; /* fewer than kk */
    } else {
      for (b = (int64_t)nb - 1; b >= 0; b--) {
        if (!w->hc[b]) continue;
        if (!xs_kept(acc, lim)) break;
        found = b;
        at = acc;
        acc += w->hm[b];
      }
      if (found < 0) return 0xffffffffu;
    }
    acc = at;
    const uint32_t nlo = lo + ((uint32_t)found << shift);
    const uint64_t top = (uint64_t)nlo + ((1ull << shift) - 1);
    const uint32_t nhi = top > hi ? hi : (uint32_t)top;
    if (shift == 0) {
      if (zge) *zge = acc + w->hm[found] * (uint64_t)mass;
      return nlo;
    }
    if (w->hc[found] <= (uint32_t)(w->cap / 2)) {
      int64_t n = 0;
      XS_FOR_IN_RANGE(s, m, nlo, nhi, mass, {
        w->sk[n] = key_;
        w->sw[n] = wt_;
        n++;
      });
      if (!mass) return xs_kth_largest(w, w->sk, n, kk - (int64_t)acc);
      uint64_t z = 0;
      const uint32_t v = xs_smallest_kept(w->sk, w->sw, n, lim, acc, &z);
      if (zge) *zge = z;
      return v;
    }
    lo = nlo;
    hi = nhi;
  }
  return mass ? 0xffffffffu : 0;
}

/* Binary search: the smallest key q <= key(m) with fl(unkey(q) - m) >= lnmp. */
static uint32_t xs_minp_key_logits(float m, float lnmp) {
  uint32_t lo = XS_KEY_NEG_INF, hi = xs_key(m);
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (xs_unkey(mid) - m >= lnmp)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

/* ---- one row: threshold, draw ------------------------------------------------ */

typedef struct xs_filter {
  int64_t k;   /* 0 = off */
  float top_p; /* >= 1 = off */
  float min_p; /* <= 0 = off */
  int joint;
} xs_filter;

typedef struct xs_row {
  int status;
  float m;
  uint64_t zfull; /* probs: W total of the row */
  uint32_t tau;
  int in_buf;     /* the kept set is cand[0, n) with ck/cw filled */
  int64_t n;
  int have_z;     /* zkept holds the kept set's W total */
  uint64_t zkept;
} xs_row;

/* Keeps candidates with key >= tau and fills their keys and weights. */
static void xs_buf_filter(const xs_src *s, xs_ws *w, xs_row *r, uint32_t tau) {
  int64_t j = 0;
  for (int64_t i = 0; i < r->n; i++) {
    const uint32_t k = xs_key(w->cy[i]);
    if (k < tau) continue;
    w->cy[j] = w->cy[i];
    w->ci[j] = w->ci[i];
    w->ck[j] = k;
    w->cw[j] = xs_weight(s->logits, w->cy[i], r->m);
    j++;
  }
  r->n = j;
}

/* Candidates probed for top-p without a small top-k: the nucleus is resolved
 * in the buffer when these already hold the top-p mass. */
#define XS_TOPP_PROBE 512

static void xs_row_filter(const xs_src *s, const xs_filter *f, xs_ws *w, xs_row *r) {
  const int topk = f->k > 0 && f->k < s->n, topp = f->top_p < 1.0f, minp = f->min_p > 0.0f;
  const int small_k = topk && f->k <= w->cap / 4;
  xs_pass p;
  memset(&p, 0, sizeof p);
  p.probs = !s->logits;
  p.k = small_k ? f->k : (topp ? XS_TOPP_PROBE : 0);
  p.minp = minp;
  p.min_p = f->min_p;
  p.lnmp = minp ? (float)log((double)f->min_p) : 0.0f;
  p.mode = (p.k > 0 || minp) ? XS_COLLECT_BOUNDS : XS_COLLECT_NONE;
  p.L = -INFINITY;
  xs_pass_run(s, w, &p);
  r->status = p.nan ? XK_ROW_NAN : p.pinf ? XK_ROW_POS_INF : p.neg ? XK_ROW_NEGATIVE : XK_ROW_OK;
  if (!r->status && s->logits && !(p.max > -INFINITY)) r->status = XK_ROW_NO_FINITE;
  r->m = p.max;
  r->zfull = p.zsum;
  if (r->status) return;
  const float m = p.max;
  /* The buffer holds every element >= p.L (and maybe some below). */
  const int collected = p.mode != XS_COLLECT_NONE && !p.overflow;
  r->n = p.n;

  uint32_t tau = 0;
  if (minp) tau = s->logits ? xs_minp_key_logits(m, p.lnmp) : xs_key(f->min_p * m);
  if (topk) {
    uint32_t tk;
    if (collected && small_k) {
      for (int64_t i = 0; i < r->n; i++) w->sk[i] = xs_key(w->cy[i]);
      tk = r->n >= f->k ? xs_kth_largest(w, w->sk, r->n, f->k) : 0;
    } else {
      tk = xs_select(s, w, m, 0, f->k, 0, NULL);
    }
    if (tk > tau) tau = tk;
  }
  /* S1 = {key >= tau}; it lies in the buffer when tau >= key(p.L). */
  r->in_buf = collected && tau >= xs_key(p.L);
  if (topp) {
    uint64_t zp = 0;
    if (f->joint) zp = s->logits ? xs_mass(s, m, -INFINITY) : r->zfull;
    uint32_t tp = 0xffffffffu;
    if (r->in_buf) {
      xs_buf_filter(s, w, r, tau);
      if (!f->joint) {
        zp = 0;
        for (int64_t i = 0; i < r->n; i++) zp += w->cw[i];
      }
      const xs_u128 lim = xs_top_p_limit(f->top_p, zp);
      memcpy(w->sk, w->ck, sizeof(uint32_t) * (size_t)r->n);
      memcpy(w->sw, w->cw, sizeof(uint64_t) * (size_t)r->n);
      tp = xs_smallest_kept(w->sk, w->sw, r->n, lim, 0, NULL);
    } else {
      if (!f->joint) zp = xs_mass(s, m, xs_tau(tau));
      const xs_u128 lim = xs_top_p_limit(f->top_p, zp);
      int done = 0;
      if (collected) {
        /* The probe holds every element >= p.L, all inside S1. If their
         * weight reaches the top-p mass, nothing below p.L is kept. */
        const uint32_t lk = xs_key(p.L);
        xs_buf_filter(s, w, r, lk > tau ? lk : tau);
        uint64_t mc = 0;
        for (int64_t i = 0; i < r->n; i++) mc += w->cw[i];
        if (!xs_kept(mc, lim)) {
          memcpy(w->sk, w->ck, sizeof(uint32_t) * (size_t)r->n);
          memcpy(w->sw, w->cw, sizeof(uint64_t) * (size_t)r->n);
          tp = xs_smallest_kept(w->sk, w->sw, r->n, lim, 0, NULL);
          r->in_buf = 1;
          done = 1;
        }
      }
      if (!done) {
        uint64_t zk = 0;
        tp = xs_select(s, w, m, tau, 0, lim, &zk);
        if (tp != 0xffffffffu) {
          r->have_z = 1;
          r->zkept = zk;
        }
      }
    }
    if (tp != 0xffffffffu && tp > tau) tau = tp;
  }
  r->tau = tau;
  if (r->in_buf) xs_buf_filter(s, w, r, tau);
}

/* The draw over the kept set of a filtered row. */
static int64_t xs_row_draw(const xs_src *s, xs_ws *w, const xs_row *r, uint32_t u) {
  if (r->in_buf) {
    uint64_t z = 0;
    for (int64_t i = 0; i < r->n; i++) z += w->cw[i];
    const uint64_t t = (uint64_t)(((xs_u128)u * z) >> 32);
    uint64_t acc = 0;
    for (int64_t i = 0; i < r->n; i++) {
      acc += w->cw[i];
      if (acc > t) return w->ci[i];
    }
    return r->n ? w->ci[r->n - 1] : 0;
  }
  const float tauf = xs_tau(r->tau);
  const uint64_t z = r->have_z                                     ? r->zkept
                     : (!s->logits && r->tau <= XS_KEY_NEG_INF) ? r->zfull
                                                                : xs_mass(s, r->m, tauf);
  const uint64_t t = (uint64_t)(((xs_u128)u * z) >> 32);
  const int64_t i = xs_scan(s, r->m, tauf, t);
  return i < 0 ? 0 : i;
}

/* ---- greedy and raw logprobs ------------------------------------------------- */

static int64_t xs_first_equal(const xs_src *s, float m, int64_t from) {
  int64_t i = from;
#if XK_F32_LANES == 16
  for (; i + 16 <= s->n; i += 16) {
    const __mmask16 e = _mm512_cmp_ps_mask(xs_ld16(s, i), _mm512_set1_ps(m), _CMP_EQ_OQ);
    if (e) return i + __builtin_ctz((unsigned)e);
  }
#elif XK_F32_LANES == 8
  for (; i + 8 <= s->n; i += 8) {
    const int e = _mm256_movemask_ps(_mm256_cmp_ps(xs_ld8(s, i), _mm256_set1_ps(m), _CMP_EQ_OQ));
    if (e) return i + __builtin_ctz((unsigned)e);
  }
#endif
  for (; i < s->n; i++)
    if (xs_at(s, i) == m) return i;
  return 0;
}

/* log of the fp64 sum of exp_spec((double)y - m) in a fixed order (lane i mod
 * 16, lanes added 0..15), and #{j : y_j >= ytok}. */
static double xs_lse(const xs_src *s, float m, float ytok, int64_t *rank) {
  double lanes[16] = {0};
  int64_t cnt = 0, i = 0;
  const double md = (double)m;
#if XK_F32_LANES == 16
  __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
  for (; i + 16 <= s->n; i += 16) {
    const __m512 y = xs_ld16(s, i);
    cnt += __builtin_popcount((unsigned)_mm512_cmp_ps_mask(y, _mm512_set1_ps(ytok), _CMP_GE_OQ));
    const __m512d d0 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(y)), _mm512_set1_pd(md));
    const __m512d d1 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(y, 1)), _mm512_set1_pd(md));
    const __mmask8 k0 = _mm512_cmp_pd_mask(d0, _mm512_set1_pd(XS_EXP64_CUT), _CMP_GE_OQ);
    const __mmask8 k1 = _mm512_cmp_pd_mask(d1, _mm512_set1_pd(XS_EXP64_CUT), _CMP_GE_OQ);
    acc0 = _mm512_mask_add_pd(acc0, k0, acc0, xs_exp64x8(d0));
    acc1 = _mm512_mask_add_pd(acc1, k1, acc1, xs_exp64x8(d1));
  }
  _mm512_storeu_pd(lanes, acc0);
  _mm512_storeu_pd(lanes + 8, acc1);
#elif XK_F32_LANES == 8
  __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
  for (; i + 16 <= s->n; i += 16) {
    for (int h = 0; h < 2; h++) {
      const __m256 y = xs_ld8(s, i + 8 * h);
      cnt += __builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(y, _mm256_set1_ps(ytok), _CMP_GE_OQ)));
      for (int q = 0; q < 2; q++) {
        const __m128 yq = q ? _mm256_extractf128_ps(y, 1) : _mm256_castps256_ps128(y);
        const __m256d d = _mm256_sub_pd(_mm256_cvtps_pd(yq), _mm256_set1_pd(md));
        const __m256d ok = _mm256_cmp_pd(d, _mm256_set1_pd(XS_EXP64_CUT), _CMP_GE_OQ);
        acc[2 * h + q] = _mm256_add_pd(acc[2 * h + q], _mm256_and_pd(ok, xs_exp64x4(d)));
      }
    }
  }
  for (int q = 0; q < 4; q++) _mm256_storeu_pd(lanes + 4 * q, acc[q]);
#endif
  for (; i < s->n; i++) {
    const float y = xs_at(s, i);
    cnt += y >= ytok;
    const double d = (double)y - md;
    if (d >= XS_EXP64_CUT) lanes[i & 15] += xs_exp64(d);
  }
  double total = 0.0;
  for (int l = 0; l < 16; l++) total += lanes[l];
  *rank = cnt;
  return log(total);
}

/* Writes the sampled token's raw logprob and rank and the top-n raw logprobs. */
static int xs_logprobs(const xs_src *raw, xs_ws *w, int64_t token, int32_t nlp, int64_t *ids, float *lps,
                       int64_t *rank) {
  xs_pass p;
  memset(&p, 0, sizeof p);
  p.k = (nlp > 0 && nlp <= w->cap / 4) ? nlp : 0;
  p.mode = p.k ? XS_COLLECT_BOUNDS : XS_COLLECT_NONE;
  p.L = -INFINITY;
  xs_pass_run(raw, w, &p);
  if (p.nan) return XK_ROW_NAN;
  if (p.pinf) return XK_ROW_POS_INF;
  if (!(p.max > -INFINITY)) return XK_ROW_NO_FINITE;
  const float m = p.max;
  const double lse = xs_lse(raw, m, xs_at(raw, token), rank);
  ids[0] = token;
  lps[0] = (float)(((double)xs_at(raw, token) - (double)m) - lse);
  if (nlp <= 0) return XK_ROW_OK;
  /* The nlp largest by (value desc, index asc). */
  uint32_t tk;
  const int in_buf = p.k > 0 && !p.overflow;
  if (in_buf) {
    for (int64_t i = 0; i < p.n; i++) w->sk[i] = xs_key(w->cy[i]);
    tk = xs_kth_largest(w, w->sk, p.n, nlp);
  } else {
    tk = xs_select(raw, w, m, 0, nlp, 0, NULL);
  }
  int64_t greater = 0;
  if (in_buf) {
    for (int64_t i = 0; i < p.n; i++) greater += xs_key(w->cy[i]) > tk;
  } else {
    uint32_t keys[16];
    for (int64_t i = 0; i < raw->n; i += 16) {
      const int64_t cnt = raw->n - i < 16 ? raw->n - i : 16;
      xs_chunk(raw, m, i, cnt, keys, NULL);
      for (int64_t j = 0; j < cnt; j++) greater += keys[j] > tk;
    }
  }
  int64_t ties = nlp - greater, sel = 0;
  /* selected (key, index) go to sk / sw (index in sw) */
  if (in_buf) {
    for (int64_t i = 0; i < p.n; i++) {
      const uint32_t k = xs_key(w->cy[i]);
      if (k > tk || (k == tk && ties > 0)) {
        if (k == tk) ties--;
        w->sk[sel] = k;
        w->sw[sel] = (uint64_t)w->ci[i];
        sel++;
      }
    }
  } else {
    uint32_t keys[16];
    for (int64_t i = 0; i < raw->n; i += 16) {
      const int64_t cnt = raw->n - i < 16 ? raw->n - i : 16;
      xs_chunk(raw, m, i, cnt, keys, NULL);
      for (int64_t j = 0; j < cnt; j++) {
        const uint32_t k = keys[j];
        if (k > tk || (k == tk && ties > 0)) {
          if (k == tk) ties--;
          w->sk[sel] = k;
          w->sw[sel] = (uint64_t)(i + j);
          sel++;
        }
      }
    }
  }
  /* insertion sort of the nlp selected entries: key desc, index asc */
  for (int64_t i = 1; i < sel; i++) {
    const uint32_t k = w->sk[i];
    const uint64_t x = w->sw[i];
    int64_t j = i;
    while (j > 0 && (w->sk[j - 1] < k || (w->sk[j - 1] == k && w->sw[j - 1] > x))) {
      w->sk[j] = w->sk[j - 1];
      w->sw[j] = w->sw[j - 1];
      j--;
    }
    w->sk[j] = k;
    w->sw[j] = x;
  }
  for (int64_t i = 0; i < sel; i++) {
    const int64_t id = (int64_t)w->sw[i];
    ids[1 + i] = id;
    lps[1 + i] = (float)(((double)xs_at(raw, id) - (double)m) - lse);
  }
  return XK_ROW_OK;
}

/* ---- kernels ------------------------------------------------------------------ */

void XK_FN(sample_rows)(const xk_sample_args *a, int64_t row_begin, int64_t row_end, void *workspace) {
  xs_ws w;
  xs_ws_init(&w, workspace, a->cap);
  const int64_t xes = xk_dtype_size(a->x_dtype);
  for (int64_t b = row_begin; b < row_end; b++) {
    const int64_t row = a->row_index[b];
    xs_src raw = {(const char *)a->x + row * a->x_row_stride * xes, a->x_dtype, xes, a->vocab, a->is_logits, 0, 1.0f};
    xs_src s = raw;
    if (a->penalized && a->row_penalized[b]) {
      s.p = (const char *)(a->penalized + b * a->vocab);
      s.dtype = XK_F32;
      s.es = 4;
    }
    int status;
    int64_t token = 0;
    a->mass[b] = 0.0;
    if (a->greedy && a->greedy[b]) {
      xs_pass p;
      memset(&p, 0, sizeof p);
      p.mode = XS_COLLECT_ARGMAX;
      p.L = -INFINITY;
      xs_pass_run(&s, &w, &p);
      status = p.nan ? XK_ROW_NAN : p.pinf ? XK_ROW_POS_INF : !(p.max > -INFINITY) ? XK_ROW_NO_FINITE : XK_ROW_OK;
      if (!status) token = xs_first_equal(&s, p.max, p.arg > 0 ? p.arg : 0);
    } else {
      if (a->temperature && a->temperature[b] != 1.0f) { /* x / 1 == x: skip the division */
        s.has_t = 1;
        s.t = a->temperature[b];
      }
      xs_filter f;
      f.k = a->top_k ? a->top_k[b] : 0;
      f.top_p = a->top_p ? a->top_p[b] : 1.0f;
      f.min_p = a->min_p ? a->min_p[b] : 0.0f;
      f.joint = a->joint;
      xs_row r;
      memset(&r, 0, sizeof r);
      xs_row_filter(&s, &f, &w, &r);
      status = r.status;
      if (!a->is_logits) a->mass[b] = (double)r.zfull * 0x1p-40;
      if (!status) token = xs_row_draw(&s, &w, &r, xs_uniform_bits(a->seed[b], a->subsequence[b], a->offset[b]));
    }
    if (!status && a->num_logprobs >= 0) {
      const int64_t stride = (int64_t)a->num_logprobs + 1;
      status = xs_logprobs(&raw, &w, token, a->num_logprobs, a->logprob_ids + b * stride, a->logprobs + b * stride,
                           a->ranks + b);
    }
    a->status[b] = status;
    a->samples[b] = token;
  }
}

void XK_FN(filter_rows)(const xk_filter_args *a, int64_t row_begin, int64_t row_end, void *workspace) {
  xs_ws w;
  xs_ws_init(&w, workspace, a->cap);
  const int64_t xes = xk_dtype_size(a->x_dtype);
  for (int64_t b = row_begin; b < row_end; b++) {
    xs_src s = {(const char *)a->x + b * a->x_row_stride * xes, a->x_dtype, xes, a->vocab, a->is_logits, 0, 1.0f};
    xs_filter f;
    f.k = a->top_k ? a->top_k[b] : 0;
    f.top_p = a->top_p ? a->top_p[b] : 1.0f;
    f.min_p = 0.0f;
    f.joint = 0;
    xs_row r;
    memset(&r, 0, sizeof r);
    xs_row_filter(&s, &f, &w, &r);
    a->status[b] = r.status;
    a->mass[b] = a->is_logits ? 0.0 : (double)r.zfull * 0x1p-40;
    a->threshold[b] = r.tau;
    double lanes[16] = {0};
    if (!r.status && !a->is_logits) {
      const float tauf = xs_tau(r.tau);
      for (int64_t i = 0; i < s.n; i++) {
        const float y = xs_at(&s, i);
        if (y >= tauf) lanes[i & 15] += (double)y;
      }
    }
    double total = 0.0;
    for (int l = 0; l < 16; l++) total += lanes[l];
    a->kept_sum[b] = total;
  }
}

void XK_FN(filter_apply)(const xk_filter_args *a, int64_t row_begin, int64_t row_end) {
  const int64_t xes = xk_dtype_size(a->x_dtype), oes = xk_dtype_size(a->out_dtype);
  for (int64_t b = row_begin; b < row_end; b++) {
    const char *x = (const char *)a->x + b * a->x_row_stride * xes;
    char *out = (char *)a->out + b * a->out_row_stride * oes;
    const float tauf = xs_tau(a->threshold[b]);
    const double inv = a->kept_sum[b] > 0.0 ? 1.0 / a->kept_sum[b] : 0.0;
    for (int64_t i = 0; i < a->vocab; i++) {
      const float y = xk_load_scalar(x, a->x_dtype, i);
      float v;
      if (a->is_logits)
        v = y >= tauf ? y : -INFINITY;
      else
        v = y >= tauf ? (float)((double)y * inv) : 0.0f;
      xk_store_scalar(out, a->out_dtype, i, v);
    }
  }
}

void XK_FN(philox4x32)(const uint32_t *ctr, const uint32_t *key, int32_t rounds, uint32_t *out) {
  xs_philox(ctr, key, rounds, out);
}

void XK_FN(sampling_exp_probe)(const float *d32, float *e32, int64_t n32, const double *d64, double *e64,
                               int64_t n64) {
  int64_t i = 0;
#if XK_F32_LANES == 16
  for (; i + 16 <= n32; i += 16) _mm512_storeu_ps(e32 + i, xs_expf16(_mm512_loadu_ps(d32 + i)));
#elif XK_F32_LANES == 8
  for (; i + 8 <= n32; i += 8) _mm256_storeu_ps(e32 + i, xs_expf8(_mm256_loadu_ps(d32 + i)));
#endif
  for (; i < n32; i++) e32[i] = xs_expf(d32[i]);
  i = 0;
#if XK_F32_LANES == 16
  for (; i + 8 <= n64; i += 8) _mm512_storeu_pd(e64 + i, xs_exp64x8(_mm512_loadu_pd(d64 + i)));
#elif XK_F32_LANES == 8
  for (; i + 4 <= n64; i += 4) _mm256_storeu_pd(e64 + i, xs_exp64x4(_mm256_loadu_pd(d64 + i)));
#endif
  for (; i < n64; i++) e64[i] = xs_exp64(d64[i]);
}
