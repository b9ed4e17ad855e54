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
#include "../common/simd512.h"
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
/* 2^(d log2 e) by a degree-5 polynomial on [-1/2, 1/2] and vscalefps: within
 * 4.3e-6 of e^d for every float d in [-27.8, 0] (checked exhaustively), and
 * with the exp_spec error (2.6e-7) within XS_APPROX_EPS / 2 of exp_spec. */
static inline __m512 xs_aexp16(__m512 d) {
  return xk_exp2_16(_mm512_mul_ps(d, _mm512_set1_ps(1.44269504088896341f)));
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
   * compare + popcount sweep; every third step the keys left in (lo, hi]
   * are compressed in place (those above hi counted), so the sweeps shrink. */
  (void)w;
  __m512i vlo = _mm512_set1_epi32(-1), vhi = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 in = i + 16 <= n ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    const __m512i v = _mm512_maskz_loadu_epi32(in, k + i);
    vlo = _mm512_mask_min_epu32(vlo, in, vlo, v);
    vhi = _mm512_mask_max_epu32(vhi, in, vhi, v);
  }
  /* invariant: #{key >= lo} >= kk (counting `above`), #{key >= hi + 1} < kk */
  uint64_t lo = _mm512_reduce_min_epu32(vlo), hi = _mm512_reduce_max_epu32(vhi);
  int64_t above = 0;
  for (int step = 0; lo < hi; step++) {
    if (step % 3 == 2) {
      /* keep (lo, hi]: keys above hi are counted, keys <= lo can only be the answer lo itself */
      const __m512i vl = _mm512_set1_epi32((int)(uint32_t)lo), vh = _mm512_set1_epi32((int)(uint32_t)hi);
      int64_t j = 0;
      for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 in = i + 16 <= n ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512i v = _mm512_maskz_loadu_epi32(in, k + i);
        const __mmask16 up = _mm512_mask_cmp_epu32_mask(in, v, vh, _MM_CMPINT_NLE);
        const __mmask16 mid = _mm512_mask_cmp_epu32_mask(in, v, vl, _MM_CMPINT_NLE) & (__mmask16)~up;
        above += __builtin_popcount((unsigned)up);
        _mm512_storeu_si512(k + j, _mm512_maskz_compress_epi32(mid, v));
        j += __builtin_popcount((unsigned)mid);
      }
      n = j;
    }
    const uint64_t mid = lo + (hi - lo + 1) / 2;
    const __m512i vm = _mm512_set1_epi32((int)(uint32_t)mid);
    int64_t c = above;
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 in = i + 16 <= n ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
      c += __builtin_popcount(_mm512_mask_cmp_epu32_mask(in, _mm512_maskz_loadu_epi32(in, k + i), vm, _MM_CMPINT_NLT));
    }
    if (c >= kk)
      lo = mid;
    else
      hi = mid - 1;
  }
  return (uint32_t)lo;
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
#if XK_F32_LANES == 16
static uint32_t xs_smallest_kept16(uint32_t *k, uint64_t *w, int64_t n, xs_u128 lim, uint64_t acc0,
                                   uint64_t *mass_ge);
#endif
static uint32_t xs_smallest_kept(uint32_t *k, uint64_t *w, int64_t n, xs_u128 lim, uint64_t acc0,
                                 uint64_t *mass_ge) {
#if XK_F32_LANES == 16
  return xs_smallest_kept16(k, w, n, lim, acc0, mass_ge);
#endif
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

#if XK_F32_LANES == 16
/* xs_smallest_kept by bisection on the key value: x* = the smallest integer
 * with (acc0 + S(x)) * 2^32 < lim, S(x) = the weight of keys > x, is found by
 * masked-sum sweeps; the answer is the smallest key >= x*. Every third step
 * the entries left in (lo, hi] are compressed in place (the weight above hi
 * is carried), so the sweeps shrink. Same result as the quickselect. */
static uint64_t xs_wsum_above16(const uint32_t *k, const uint64_t *w, int64_t n, uint32_t x) {
  const __m512i vx = _mm512_set1_epi32((int)x);
  __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 in = i + 16 <= n ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    const __mmask16 gt = _mm512_mask_cmp_epu32_mask(in, _mm512_maskz_loadu_epi32(in, k + i), vx, _MM_CMPINT_NLE);
    s0 = _mm512_add_epi64(s0, _mm512_maskz_loadu_epi64((__mmask8)gt, w + i));
    s1 = _mm512_add_epi64(s1, _mm512_maskz_loadu_epi64((__mmask8)(gt >> 8), w + i + 8));
  }
  return (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(s0, s1));
}

static uint32_t xs_smallest_kept16(uint32_t *k, uint64_t *w, int64_t n, xs_u128 lim, uint64_t acc0,
                                   uint64_t *mass_ge) {
  if (n <= 0 || !xs_kept(acc0, lim)) return 0xffffffffu;
  __m512i vlo = _mm512_set1_epi32(-1), vhi = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 in = i + 16 <= n ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    const __m512i v = _mm512_maskz_loadu_epi32(in, k + i);
    vlo = _mm512_mask_min_epu32(vlo, in, vlo, v);
    vhi = _mm512_mask_max_epu32(vhi, in, vhi, v);
  }
  const uint32_t kmin = _mm512_reduce_min_epu32(vlo);
  /* Q(hi) holds (S(max key) = 0); x* <= kmin when Q(kmin - 1) holds. */
  uint64_t lo = (uint64_t)kmin - 1, hi = _mm512_reduce_max_epu32(vhi);
  uint64_t carried = 0;            /* weight of dropped entries above hi */
  uint32_t carried_min = 0xffffffffu; /* their smallest key */
  if (xs_kept(acc0 + xs_wsum_above16(k, w, n, (uint32_t)lo), lim)) {
    hi = kmin;
  } else {
    for (int step = 0; hi - lo > 1; step++) {
      if (step % 3 == 2) {
        const __m512i vl = _mm512_set1_epi32((int)(uint32_t)lo), vh = _mm512_set1_epi32((int)(uint32_t)hi);
        __m512i c0 = _mm512_setzero_si512(), c1 = _mm512_setzero_si512(), cm = _mm512_set1_epi32(-1);
        int64_t j = 0;
        for (int64_t i = 0; i < n; i += 16) {
          const __mmask16 in = i + 16 <= n ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
          const __m512i v = _mm512_maskz_loadu_epi32(in, k + i);
          const __m512i w0 = _mm512_maskz_loadu_epi64((__mmask8)in, w + i);
          const __m512i w1 = _mm512_maskz_loadu_epi64((__mmask8)(in >> 8), w + i + 8);
          const __mmask16 up = _mm512_mask_cmp_epu32_mask(in, v, vh, _MM_CMPINT_NLE);
          const __mmask16 mid = _mm512_mask_cmp_epu32_mask(in, v, vl, _MM_CMPINT_NLE) & (__mmask16)~up;
          c0 = _mm512_mask_add_epi64(c0, (__mmask8)up, c0, w0);
          c1 = _mm512_mask_add_epi64(c1, (__mmask8)(up >> 8), c1, w1);
          cm = _mm512_mask_min_epu32(cm, up, cm, v);
          /* in place: stores at j <= i cover entries already read */
          const int lo8 = __builtin_popcount((unsigned)(mid & 0xff));
          _mm512_storeu_si512(k + j, _mm512_maskz_compress_epi32(mid, v));
          _mm512_storeu_si512(w + j, _mm512_maskz_compress_epi64((__mmask8)mid, w0));
          _mm512_storeu_si512(w + j + lo8, _mm512_maskz_compress_epi64((__mmask8)(mid >> 8), w1));
          j += __builtin_popcount((unsigned)mid);
        }
        carried += (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(c0, c1));
        const uint32_t m2 = _mm512_reduce_min_epu32(cm);
        carried_min = m2 < carried_min ? m2 : carried_min;
        n = j;
      }
      const uint64_t mid = lo + (hi - lo) / 2;
      if (xs_kept(acc0 + carried + xs_wsum_above16(k, w, n, (uint32_t)mid), lim))
        hi = mid;
      else
        lo = mid;
    }
  }
  /* the answer: the smallest key >= hi, among the entries left and the carried ones */
  const __m512i vh = _mm512_set1_epi32((int)(uint32_t)hi);
  __m512i cm = _mm512_set1_epi32(-1);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 in = i + 16 <= n ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    const __m512i v = _mm512_maskz_loadu_epi32(in, k + i);
    cm = _mm512_mask_min_epu32(cm, _mm512_mask_cmp_epu32_mask(in, v, vh, _MM_CMPINT_NLT), cm, v);
  }
  uint32_t v = _mm512_reduce_min_epu32(cm);
  v = carried_min < v ? carried_min : v;
  if (mass_ge) *mass_ge = acc0 + carried + (v ? xs_wsum_above16(k, w, n, v - 1) : 0);
  return v;
}
#endif

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
  int asum;    /* in (AVX-512 BOUNDS, no temperature): also sum xs_aexp16(y - m) */
  double sum;  /* out: that sum (all values; see xs_pass_fast_t) */
  int64_t rescales;
  uint64_t ztail; /* out: exact W of the values after the vector part */
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

/* Scales the online sums by exp_spec(old max - new max) per lane (within
 * 2.6e-7 of e^d on [-28.8, 0], checked exhaustively; 3.5e-7 with the
 * products' rounding); lanes whose max rose by more than 1 - XS_W_CUT drop
 * their sum (all its values have W = 0 against any later max). */
static inline __attribute__((always_inline)) void xs_rescale(__m512 *vs, __m512d *s0, __m512d *s1, __m512 oldm,
                                                              __m512 newm) {
  const __m512 d = _mm512_sub_ps(oldm, newm);
  const __mmask16 ok = _mm512_cmp_ps_mask(d, _mm512_set1_ps(XS_W_CUT - 1.0f), _CMP_GE_OQ);
  const __m512 sc = _mm512_maskz_mov_ps(ok, xs_expf16(_mm512_maskz_mov_ps(ok, d)));
  *vs = _mm512_mul_ps(*vs, sc);
  *s0 = _mm512_mul_pd(*s0, _mm512_cvtps_pd(_mm512_castps512_ps256(sc)));
  *s1 = _mm512_mul_pd(*s1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(sc, 1)));
}

/* asum: an online sum of xs_aexp16(y - M) over the values with
 * fl(y - M) >= cut, M = the lane's running max (rescaled as it rises, see
 * xs_rescale), brought to the row max at the end: each term is within
 * XS_APPROX_EPS / 2 of W / 2^40 plus the rescale errors (p->rescales of
 * them, 3.5e-7 each), or has W = 0 and is below 2^-40. Float partial sums of 64 terms a
 * lane go to double lanes. */
static inline __attribute__((always_inline)) void xs_pass_fast_t(const xs_src *s, xs_ws *w, xs_pass *p,
                                                                   const int dtype, const int collect0,
                                                                   const int asum) {
  const char *const base = s->p;
  const int64_t n = s->n, es = s->es;
  const int minp = p->minp;
  int collect = collect0;
  int64_t cn = 0, trig = p->trigger;
  float mrun = -INFINITY; /* min-p: the raw max so far (every block that raises it hits) */
  __m512 vXL = _mm512_set1_ps(p->XL), vmax = _mm512_set1_ps(-INFINITY);
  __mmask16 knan = 0;
  __m512 vs = _mm512_setzero_ps();
  __m512d sd0 = _mm512_setzero_pd(), sd1 = sd0;
  __m512i vres = _mm512_setzero_si512(); /* rescales per lane */
  int blk = 0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    if (asum) { /* more work a line: every line, further ahead */
      for (int q = 0; q < 4; q++) _mm_prefetch(base + i * es + 2 * XS_PF_BYTES + q * 16 * es, _MM_HINT_T2);
    } else {
      _mm_prefetch(base + i * es + XS_PF_BYTES, _MM_HINT_T2);
    }
    const __m512 y0 = xs_ldx(base, i, dtype), y1 = xs_ldx(base, i + 16, dtype);
    const __m512 y2 = xs_ldx(base, i + 32, dtype), y3 = xs_ldx(base, i + 48, dtype);
    knan = _kor_mask16(knan, _kor_mask16(_mm512_cmp_ps_mask(y0, y1, _CMP_UNORD_Q),
                                         _mm512_cmp_ps_mask(y2, y3, _CMP_UNORD_Q)));
    const __m512 c = _mm512_max_ps(_mm512_max_ps(y0, y1), _mm512_max_ps(y2, y3));
    if (asum) {
      const __m512 nm = _mm512_max_ps(c, vmax); /* a NaN in c leaves vmax as it was */
      const __mmask16 up = _mm512_cmp_ps_mask(nm, vmax, _CMP_GT_OQ);
      if (__builtin_expect(up != 0, 0)) {
        xs_rescale(&vs, &sd0, &sd1, vmax, nm);
        vres = _mm512_mask_add_epi32(vres, up, vres, _mm512_set1_epi32(1));
      }
      vmax = nm;
      const __m512 cut = _mm512_set1_ps(XS_W_CUT);
      const __m512 d0 = _mm512_sub_ps(y0, vmax), d1 = _mm512_sub_ps(y1, vmax);
      const __m512 d2 = _mm512_sub_ps(y2, vmax), d3 = _mm512_sub_ps(y3, vmax);
      const __m512 e01 = _mm512_add_ps(_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(d0, cut, _CMP_GE_OQ), xs_aexp16(d0)),
                                       _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(d1, cut, _CMP_GE_OQ), xs_aexp16(d1)));
      const __m512 e23 = _mm512_add_ps(_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(d2, cut, _CMP_GE_OQ), xs_aexp16(d2)),
                                       _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(d3, cut, _CMP_GE_OQ), xs_aexp16(d3)));
      vs = _mm512_add_ps(vs, _mm512_add_ps(e01, e23));
      if (++blk == 16) {
        sd0 = _mm512_add_pd(sd0, _mm512_cvtps_pd(_mm512_castps512_ps256(vs)));
        sd1 = _mm512_add_pd(sd1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(vs, 1)));
        vs = _mm512_setzero_ps();
        blk = 0;
      }
    } else {
      vmax = _mm512_max_ps(c, vmax); /* a NaN in c leaves vmax as it was */
    }
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
  if (asum) {
    /* to the row max; the tail's exact W */
    const __m512 vm = _mm512_set1_ps(mx);
    sd0 = _mm512_add_pd(sd0, _mm512_cvtps_pd(_mm512_castps512_ps256(vs)));
    sd1 = _mm512_add_pd(sd1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(vs, 1)));
    vs = _mm512_setzero_ps();
    if (mx > -INFINITY) xs_rescale(&vs, &sd0, &sd1, vmax, _mm512_max_ps(vm, vmax));
    p->sum = _mm512_reduce_add_pd(_mm512_add_pd(sd0, sd1));
    p->rescales = (int64_t)_mm512_reduce_max_epi32(vres) + 1; /* the most any lane's terms went through */
    uint64_t zt = 0;
    for (int64_t j = n - n % 64; j < n; j++) {
      const float x = xk_load_scalar(base, dtype, j);
      if (x == x) zt += xs_weight(1, x, mx);
    }
    p->ztail = zt;
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
  const int asum = p->asum && collect == 1 && !s->has_t;
  p->asum = asum;
  switch (s->dtype) {
    case XK_F32:
      if (asum)
        xs_pass_fast_t(s, w, p, XK_F32, 1, 1);
      else if (collect == 1)
        xs_pass_fast_t(s, w, p, XK_F32, 1, 0);
      else if (collect == 2)
        xs_pass_fast_t(s, w, p, XK_F32, 2, 0);
      else
        xs_pass_fast_t(s, w, p, XK_F32, 0, 0);
      return 1;
    case XK_F16:
      if (asum)
        xs_pass_fast_t(s, w, p, XK_F16, 1, 1);
      else
        xs_pass_fast_t(s, w, p, XK_F16, collect, 0);
      return 1;
    case XK_BF16:
      if (asum)
        xs_pass_fast_t(s, w, p, XK_BF16, 1, 1);
      else
        xs_pass_fast_t(s, w, p, XK_BF16, collect, 0);
      return 1;
    default: p->asum = 0; return 0;
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
  p->asum = 0;
  p->trigger = trig = xs_trigger(w, p, 0);
#if XK_F32_LANES == 16
  __m512 vmax = _mm512_set1_ps(-INFINITY), vL = _mm512_set1_ps(p->L);
  __mmask16 mnan = 0, mpinf = 0, mneg = 0;
  __m512i ah = _mm512_setzero_si512(), al = _mm512_setzero_si512();
  int blk = 0;
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (; i + 16 <= n; i += 16) {
    _mm_prefetch((const char *)s->p + i * s->es + XS_PF_BYTES, _MM_HINT_T2);
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
    if ((i & 15) == 0) _mm_prefetch((const char *)s->p + i * s->es + 4096, _MM_HINT_T2);
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

/* The first index in [from, to) at which the running sum of W over y >= tau,
 * from `from`, exceeds t. */
static int64_t xs_scan_range(const xs_src *s, float m, float tau, uint64_t t, int64_t from, int64_t to) {
  const int64_t n = to;
  int64_t i = from, last = -1;
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
  return last; /* unreachable when t < the range's total */
}

/* The first index whose running sum of W over y >= tau exceeds t (t < that total). */
static int64_t xs_scan(const xs_src *s, float m, float tau, uint64_t t) { return xs_scan_range(s, m, tau, t, 0, s->n); }

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
  int banded;     /* top-p resolved in a band (AVX-512): see xs_band */
  uint32_t khi;   /* band: keys >= khi are kept; their W per chunk is in ws.hm */
  int64_t clen, nchunk;
} xs_row;

/* Keeps candidates with key >= tau and fills their keys and weights. */
static void xs_buf_filter(const xs_src *s, xs_ws *w, xs_row *r, uint32_t tau) {
  int64_t j = 0;
#if XK_F32_LANES == 16
  const int64_t n = r->n;
  const __m512i vt = _mm512_set1_epi32((int)tau);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 in = i + 16 <= n ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    const __m512 y = _mm512_maskz_loadu_ps(in, w->cy + i);
    const __m512i ix = _mm512_maskz_loadu_epi32(in, w->ci + i);
    const __m512i k = xs_key16(y);
    const __mmask16 keep = _mm512_mask_cmp_epu32_mask(in, k, vt, _MM_CMPINT_NLT);
    __m512i lo, hi;
    xs_w16(y, r->m, s->logits, keep, &lo, &hi);
    const int lo8 = __builtin_popcount((unsigned)(keep & 0xff));
    _mm512_storeu_ps(w->cy + j, _mm512_maskz_compress_ps(keep, y));
    _mm512_storeu_si512(w->ci + j, _mm512_maskz_compress_epi32(keep, ix));
    _mm512_storeu_si512(w->ck + j, _mm512_maskz_compress_epi32(keep, k));
    _mm512_storeu_si512(w->cw + j, _mm512_maskz_compress_epi64((__mmask8)keep, lo));
    _mm512_storeu_si512(w->cw + j + lo8, _mm512_maskz_compress_epi64((__mmask8)(keep >> 8), hi));
    j += __builtin_popcount((unsigned)keep);
  }
  r->n = j;
  return;
#endif
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

#if XK_F32_LANES == 16
/* ---- top-p in a band (AVX-512) ----------------------------------------------
 * Top-p over S1 = {key >= t0} when the nucleus is larger than the probe,
 * in one pass over the row instead of a mass pass, a radix select and a
 * scan:
 *  1. plan: estimate Z and the boundary from the probe (the exact top of
 *     the row) and a strided sample of the row, and pick a key band
 *     [klo, khi) around the estimated boundary, sized to the workspace;
 *  2. one pass: the exact W total Z of S1, the exact weight A of keys >= khi
 *     (also per chunk of the row, for the draw), and the band's values and
 *     indices in index order;
 *  3. the boundary by a weighted select over the band with A carried; the
 *     draw walks the per-chunk kept weights and scans one chunk.
 * The plan only decides where to look: if the band overflows or the
 * boundary lies outside it, the caller falls back to the radix select with
 * the exact Z, so the kept set and the sample never depend on it. */
typedef struct xs_band {
  uint32_t t0, klo, khi;
  uint64_t z, a;
  int64_t nb, clen, nchunk;
} xs_band;

/* Band half-width as a fraction of the workspace, in estimated elements. */
#define XS_BAND_FILL 0.36

enum { XS_PLAN_NONE = 0, XS_PLAN_TOP = 1, XS_PLAN_BAND = 2 };

/* Plans the top-p search: XS_PLAN_TOP when the probe's exact top (`nprobe`
 * candidates in cy, all of S1 >= key lk among them) likely holds the
 * nucleus, XS_PLAN_BAND with a band, XS_PLAN_NONE when it cannot tell. */
static int xs_band_plan(const xs_src *s, xs_ws *w, float m, uint32_t t0, int64_t nprobe, uint32_t lk, float top_p,
                        int need_band, xs_band *b) {
  const uint32_t pk = lk > t0 ? lk : t0;
  /* exact weight of the probe part: S1 keys >= lk */
  uint64_t mp = 0;
  if (nprobe > 0) {
    __m512i acc = _mm512_setzero_si512();
    const __m512i vp = _mm512_set1_epi32((int)pk);
    for (int64_t i = 0; i < nprobe; i += 16) {
      const __mmask16 in = i + 16 <= nprobe ? (__mmask16)0xffff : (__mmask16)((1u << (nprobe - i)) - 1);
      const __m512 y = _mm512_maskz_loadu_ps(in, w->cy + i);
      const __mmask16 keep = _mm512_mask_cmp_epu32_mask(in, xs_key16(y), vp, _MM_CMPINT_NLT);
      __m512i lo, hi;
      xs_w16(y, m, s->logits, keep, &lo, &hi);
      acc = _mm512_add_epi64(acc, _mm512_add_epi64(lo, hi));
    }
    mp = (uint64_t)_mm512_reduce_add_epi64(acc);
  }
  /* a strided sample of whole vectors: S1 keys below the probe part */
  const int64_t nvec = s->n / 16, room = w->cap / 16;
  if (nvec < 1 || room < 1) return 0;
  const int64_t stride = (nvec + room - 1) / room;
  const __m512i vt0 = _mm512_set1_epi32((int)t0), vpk = _mm512_set1_epi32((int)pk);
  __m512i acc = _mm512_setzero_si512();
  int64_t cnt = 0, nsv = 0;
  for (int64_t v = 0; v < nvec; v += stride, nsv++) {
    const __m512 y = xs_ld16(s, v * 16);
    const __m512i k = xs_key16(y);
    __mmask16 in = _mm512_cmp_epu32_mask(k, vt0, _MM_CMPINT_NLT);
    if (nprobe > 0 || lk != 0xffffffffu) in &= _mm512_cmp_epu32_mask(k, vpk, _MM_CMPINT_LT);
    __m512i lo, hi;
    xs_w16(y, m, s->logits, in, &lo, &hi);
    acc = _mm512_add_epi64(acc, _mm512_add_epi64(lo, hi));
    const int lo8 = __builtin_popcount((unsigned)(in & 0xff));
    _mm512_storeu_si512(w->sk + cnt, _mm512_maskz_compress_epi32(in, k));
    _mm512_storeu_si512(w->sw + cnt, _mm512_maskz_compress_epi64((__mmask8)in, lo));
    _mm512_storeu_si512(w->sw + cnt + lo8, _mm512_maskz_compress_epi64((__mmask8)(in >> 8), hi));
    cnt += __builtin_popcount((unsigned)in);
  }
  const double f = (double)nvec / (double)nsv, ms = (double)(uint64_t)_mm512_reduce_add_epi64(acc);
  double target = (double)top_p * ((double)mp + f * ms);
  if ((double)mp >= target && (nprobe > 0 || lk != 0xffffffffu) && !need_band) return XS_PLAN_TOP;
  if ((double)mp >= target) target = (double)mp * 1.02; /* known to reach below the probe: just below it */
  if (cnt == 0) return XS_PLAN_NONE;
  /* the estimated boundary vhat: sample weight above it ~ (target - mp) / f */
  const double need = (target - (double)mp) / f;
  memcpy(w->ck, w->sk, sizeof(uint32_t) * (size_t)cnt);
  memcpy(w->cw, w->sw, sizeof(uint64_t) * (size_t)cnt);
  const uint64_t needi = need < 1.0 ? 1 : need > 0x1p62 ? (uint64_t)1 << 62 : (uint64_t)need;
  uint32_t vhat = xs_smallest_kept16(w->ck, w->cw, cnt, (xs_u128)needi << 32, 0, NULL);
  if (vhat == 0xffffffffu) return XS_PLAN_NONE;
  /* its rank in the sample, and the keys r sample ranks either side */
  int64_t rank = 0;
  {
    const __m512i vv = _mm512_set1_epi32((int)vhat);
    for (int64_t i = 0; i < cnt; i += 16) {
      const __mmask16 in = i + 16 <= cnt ? (__mmask16)0xffff : (__mmask16)((1u << (cnt - i)) - 1);
      rank += __builtin_popcount(
          _mm512_mask_cmp_epu32_mask(in, _mm512_maskz_loadu_epi32(in, w->sk + i), vv, _MM_CMPINT_NLT));
    }
  }
  int64_t r = (int64_t)(XS_BAND_FILL * (double)w->cap / f);
  if (r < 1) r = 1;
  b->t0 = t0;
  if (rank - r >= 1) {
    memcpy(w->ck, w->sk, sizeof(uint32_t) * (size_t)cnt);
    b->khi = xs_kth_largest(w, w->ck, cnt, rank - r);
  } else {
    b->khi = pk; /* up to the probe part (0xffffffff: nothing above) */
  }
  if (rank + r <= cnt) {
    memcpy(w->ck, w->sk, sizeof(uint32_t) * (size_t)cnt);
    b->klo = xs_kth_largest(w, w->ck, cnt, rank + r);
  } else {
    b->klo = t0;
  }
  if (b->khi <= b->klo) return XS_PLAN_NONE;
  return XS_PLAN_BAND;
}

/* Relative bound on |W / 2^40 - approx| per element (1e-5) plus the float
 * partial sums (32 terms a lane between flushes: 2e-6), with margin. */
#define XS_APPROX_EPS 2e-5

/* The smallest y with fl(y - m) >= XS_W_CUT (y - m is monotone in y). */
static float xs_cut_bound(float m) {
  float c = m + XS_W_CUT;
  for (int it = 0; it < 64 && c == c; it++) {
    if (c - m >= XS_W_CUT) {
      const float d = nextafterf(c, -INFINITY);
      if (!(d - m >= XS_W_CUT)) return c;
      c = d;
    } else {
      c = nextafterf(c, INFINITY);
    }
  }
  return -INFINITY;
}

static inline __attribute__((always_inline)) void xs_approx_loop(const xs_src *s, float m, float ylo, float yhi,
                                                                  const int dtype, const int has_t, double *sum,
                                                                  int64_t *end) {
  const char *const base = s->p;
  const int64_t n = s->n;
  const __m512 vm = _mm512_set1_ps(m), vlo = _mm512_set1_ps(ylo), vhi = _mm512_set1_ps(yhi), vt = _mm512_set1_ps(s->t);
  double acc = 0.0;
  int64_t i = 0;
  while (i + 32 <= n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    const int64_t stop = n - i > 64 * 16 ? i + 64 * 16 : n - 31;
    for (; i < stop; i += 32) {
      __m512 y0 = xs_ldx(base, i, dtype), y1 = xs_ldx(base, i + 16, dtype);
      if (has_t) {
        y0 = _mm512_div_ps(y0, vt);
        y1 = _mm512_div_ps(y1, vt);
      }
      const __mmask16 in0 = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(y0, vlo, _CMP_GE_OQ), y0, vhi, _CMP_LT_OQ);
      const __mmask16 in1 = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(y1, vlo, _CMP_GE_OQ), y1, vhi, _CMP_LT_OQ);
      a0 = _mm512_mask_add_ps(a0, in0, a0, xs_aexp16(_mm512_sub_ps(y0, vm)));
      a1 = _mm512_mask_add_ps(a1, in1, a1, xs_aexp16(_mm512_sub_ps(y1, vm)));
    }
    const __m512 a = _mm512_add_ps(a0, a1);
    acc += (double)_mm512_reduce_add_pd(_mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(a)),
                                                      _mm512_cvtps_pd(_mm512_extractf32x8_ps(a, 1))));
  }
  *sum = acc;
  *end = i;
}

/* Bounds on the W total of S1 keys below pk (t0 <= key < pk) from one cheap
 * pass: lo <= Z <= hi, exactly (see XS_APPROX_EPS; trunc loses < 1 each).
 * In values: t0 <= key < pk and fl(y - m) >= cut is ylo <= y < yhi. */
static void xs_approx_rest(const xs_src *s, float m, uint32_t t0, uint32_t pk, uint64_t *zlo, uint64_t *zhi) {
  const int64_t n = s->n;
  float ylo = xs_cut_bound(m);
  if (xs_tau(t0) > ylo) ylo = xs_tau(t0);
  const float yhi = pk == 0xffffffffu ? INFINITY : xs_tau(pk);
  double sum = 0.0;
  int64_t i = 0;
  if (s->logits && s->dtype == XK_F32 && !s->has_t)
    xs_approx_loop(s, m, ylo, yhi, XK_F32, 0, &sum, &i);
  else if (s->logits && s->dtype == XK_F32)
    xs_approx_loop(s, m, ylo, yhi, XK_F32, 1, &sum, &i);
  else if (s->logits && !s->has_t && (s->dtype == XK_F16 || s->dtype == XK_BF16))
    s->dtype == XK_F16 ? xs_approx_loop(s, m, ylo, yhi, XK_F16, 0, &sum, &i)
                       : xs_approx_loop(s, m, ylo, yhi, XK_BF16, 0, &sum, &i);
  uint64_t exact = 0;
  for (; i < n; i++) {
    const float y = xs_at(s, i);
    const uint32_t k = xs_key(y);
    if (y == y && k >= t0 && k < pk) exact += xs_weight(s->logits, y, m);
  }
  /* each term within XS_APPROX_EPS / 2 of W / 2^40 + [0, 2^-40); float
   * partial sums of at most 33 terms a lane: 2e-6 relative */
  const double scaled = sum * 0x1p40;
  const double lo = scaled * (1.0 - XS_APPROX_EPS) - (double)n - 1.0, hi = scaled * (1.0 + XS_APPROX_EPS) + 1.0;
  *zlo = exact + (lo > 0.0 ? (uint64_t)lo : 0);
  *zhi = exact + (hi < 0x1p62 ? (uint64_t)hi + 1 : (uint64_t)1 << 62);
}

/* Top-p with the nucleus in the probe part P = S1 keys >= pk (all in cy),
 * with the S1 total Z known only within [zlo, zhi] (`rest`: bounds on the
 * part below pk, W(P) is added). Returns the boundary when both ends give
 * the same one and nothing below pk can be kept, else 0xffffffff. Leaves P
 * in ck / cw, r->n entries, either way. */
#define XS_TOP_BELOW 0xfffffffeu /* xs_top_decide: the nucleus surely reaches below pk */
static uint32_t xs_top_decide(const xs_src *s, xs_ws *w, xs_row *r, uint32_t pk, float top_p, uint64_t zlo,
                              uint64_t zhi, int rest) {
  xs_buf_filter(s, w, r, pk);
  uint64_t zp = 0;
  for (int64_t i = 0; i < r->n; i++) zp += w->cw[i];
  if (rest) {
    zlo += zp;
    zhi += zp;
  }
  if (zlo < zp) zlo = zp;
  if (zhi < zlo) zhi = zlo;
  const xs_u128 llo = xs_top_p_limit(top_p, zlo), lhi = xs_top_p_limit(top_p, zhi);
  if (xs_kept(zp, llo)) return XS_TOP_BELOW; /* something below pk is kept */
  if (xs_kept(zp, lhi)) return 0xffffffffu;   /* ... may be */
  memcpy(w->sk, w->ck, sizeof(uint32_t) * (size_t)r->n);
  memcpy(w->sw, w->cw, sizeof(uint64_t) * (size_t)r->n);
  const uint32_t a = xs_smallest_kept16(w->sk, w->sw, r->n, llo, 0, NULL);
  memcpy(w->sk, w->ck, sizeof(uint32_t) * (size_t)r->n);
  memcpy(w->sw, w->cw, sizeof(uint64_t) * (size_t)r->n);
  const uint32_t b = xs_smallest_kept16(w->sk, w->sw, r->n, lhi, 0, NULL);
  return a == b ? a : 0xffffffffu;
}

/* xs_top_decide with the part below pk bounded by one cheap pass. */
static uint32_t xs_top_resolve(const xs_src *s, xs_ws *w, xs_row *r, uint32_t t0, uint32_t pk, float top_p) {
  uint64_t rlo, rhi;
  xs_approx_rest(s, r->m, t0, pk, &rlo, &rhi);
  const uint32_t v = xs_top_decide(s, w, r, pk, top_p, rlo, rhi, 1);
  return v == XS_TOP_BELOW ? 0xffffffffu : v;
}

/* Bounds on the row's W total from the pass's online sum (p->asum). */
static void xs_asum_bounds(const xs_src *s, const xs_pass *p, uint64_t *zlo, uint64_t *zhi) {
  const double eps = XS_APPROX_EPS + 5e-7 * (double)p->rescales;
  const double scaled = p->sum * 0x1p40;
  const double lo = scaled * (1.0 - eps) - (double)s->n - 1.0, hi = scaled * (1.0 + eps) + 1.0;
  *zlo = p->ztail + (lo > 0.0 ? (uint64_t)lo : 0);
  *zhi = p->ztail + (hi < 0x1p62 ? (uint64_t)hi + 1 : (uint64_t)1 << 62);
}

/* The band pass (see above). Chunks of clen elements (multiple of 16, at
 * most XS_HIST of them): ws.hm[c] = W of chunk c's keys >= khi. */
static void xs_band_pass(const xs_src *s, xs_ws *w, float m, xs_band *b) {
  const int64_t n = s->n, cap = w->cap;
  int64_t clen = ((n + XS_HIST - 1) / XS_HIST + 15) & ~(int64_t)15;
  if (clen < 1024) clen = 1024;
  b->clen = clen;
  b->nchunk = (n + clen - 1) / clen;
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i vt0 = _mm512_set1_epi32((int)b->t0), vlo = _mm512_set1_epi32((int)b->klo),
                vhi = _mm512_set1_epi32((int)b->khi);
  uint64_t z = 0, a = 0;
  int64_t nb = 0;
  for (int64_t c = 0; c < b->nchunk; c++) {
    const int64_t i1 = (c + 1) * clen < n ? (c + 1) * clen : n;
    int64_t i = c * clen;
    __m512i zh = _mm512_setzero_si512(), zl = zh, ah = zh, al = zh;
    for (; i + 16 <= i1; i += 16) {
      _mm_prefetch((const char *)s->p + i * s->es + XS_PF_BYTES, _MM_HINT_T0);
      const __m512 y = xs_ld16(s, i);
      const __m512i k = xs_key16(y);
      const __mmask16 in = _mm512_cmp_epu32_mask(k, vt0, _MM_CMPINT_NLT);
      __m512i h, l;
      xs_wsplit16(y, m, s->logits, in, &h, &l);
      zh = _mm512_add_epi32(zh, h);
      zl = _mm512_add_epi32(zl, l);
      const __mmask16 up = _mm512_mask_cmp_epu32_mask(in, k, vhi, _MM_CMPINT_NLT);
      ah = _mm512_mask_add_epi32(ah, up, ah, h);
      al = _mm512_mask_add_epi32(al, up, al, l);
      const __mmask16 bd = _mm512_mask_cmp_epu32_mask(in & (__mmask16)~up, k, vlo, _MM_CMPINT_NLT);
      if (nb + 16 <= cap) {
        _mm512_storeu_ps(w->cy + nb, _mm512_maskz_compress_ps(bd, y));
        _mm512_storeu_si512(w->ci + nb, _mm512_maskz_compress_epi32(bd, _mm512_add_epi32(lanes, _mm512_set1_epi32((int)i))));
      }
      nb += __builtin_popcount((unsigned)bd);
    }
    uint64_t cz = xs_split_sum16(zh, zl), ca = xs_split_sum16(ah, al);
    for (; i < i1; i++) {
      const float y = xs_at(s, i);
      const uint32_t k = xs_key(y);
      if (y != y || k < b->t0) continue;
      const uint64_t wt = xs_weight(s->logits, y, m);
      cz += wt;
      if (k >= b->khi) {
        ca += wt;
      } else if (k >= b->klo) {
        if (nb + 16 <= cap) {
          w->cy[nb] = y;
          w->ci[nb] = (int32_t)i;
        }
        nb++;
      }
    }
    w->hm[c] = ca;
    a += ca;
    z += cz;
  }
  b->z = z;
  b->a = a;
  b->nb = nb;
}

/* The top-p boundary inside the band, or 0xffffffff when it lies outside
 * (or the band overflowed); *zk = the kept weight. Leaves the band's keys and
 * weights in ck / cw (index order), r->n entries. */
static uint32_t xs_band_resolve(const xs_src *s, xs_ws *w, xs_row *r, const xs_band *b, xs_u128 lim, uint64_t *zk) {
  if (b->nb > w->cap - 16) return 0xffffffffu;
  if (!xs_kept(b->a, lim)) return 0xffffffffu; /* the boundary is above the band */
  r->n = b->nb;
  xs_buf_filter(s, w, r, b->klo);
  uint64_t mb = 0;
  for (int64_t i = 0; i < r->n; i++) mb += w->cw[i];
  if (xs_kept(b->a + mb, lim)) return 0xffffffffu; /* ... or below it */
  memcpy(w->sk, w->ck, sizeof(uint32_t) * (size_t)r->n);
  memcpy(w->sw, w->cw, sizeof(uint64_t) * (size_t)r->n);
  return xs_smallest_kept16(w->sk, w->sw, r->n, lim, b->a, zk);
}

/* The draw over a band-resolved row: the chunk holding the running weight
 * T, then a scan of that chunk. */
static int64_t xs_band_draw(const xs_src *s, const xs_ws *w, const xs_row *r, uint64_t t) {
  uint64_t acc = 0;
  int64_t j = 0;
  for (int64_t c = 0; c < r->nchunk; c++) {
    const int64_t i0 = c * r->clen, i1 = i0 + r->clen < s->n ? i0 + r->clen : s->n;
    uint64_t cm = w->hm[c];
    for (; j < r->n && w->ci[j] < i1; j++) cm += w->ck[j] >= r->tau ? w->cw[j] : 0;
    if (acc + cm > t) return xs_scan_range(s, r->m, xs_tau(r->tau), t - acc, i0, i1);
    acc += cm;
  }
  return xs_scan(s, r->m, xs_tau(r->tau), t); /* unreachable: t < the kept weight */
}
#endif

/* Candidates probed for top-p without a small top-k: the nucleus is resolved
 * in the buffer when these already hold the top-p mass. */
#define XS_TOPP_PROBE 32

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
  p.asum = topp && !topk && !minp && !f->joint && s->logits; /* top-p alone: S1 is the row */
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
      int done = 0, zknown = 0, probe = collected;
#if XK_F32_LANES == 16
      xs_band b;
      const uint32_t lk = collected ? xs_key(p.L) : 0xffffffffu;
      int plan = XS_PLAN_NONE, below = 0;
      if (p.asum && collected && tau == 0) {
        /* the pass bounded Z: decide in the probe if it holds the nucleus */
        uint64_t zlo, zhi;
        xs_asum_bounds(s, &p, &zlo, &zhi);
        const uint32_t v = xs_top_decide(s, w, r, lk, f->top_p, zlo, zhi, 0);
        if (v == XS_TOP_BELOW) {
          below = 1;
        } else if (v != 0xffffffffu) {
          tp = v;
          r->in_buf = 1;
          done = 1;
        }
      }
      if (!done && !f->joint) plan = xs_band_plan(s, w, m, tau, collected ? r->n : 0, lk, f->top_p, below, &b);
      if (plan == XS_PLAN_TOP) {
        /* (on a miss the buffer holds the probe part, as the check below wants) */
        const uint32_t v = xs_top_resolve(s, w, r, tau, lk > tau ? lk : tau, f->top_p);
        if (v != 0xffffffffu) {
          tp = v;
          r->in_buf = 1;
          done = 1;
        }
      } else if (plan == XS_PLAN_BAND) {
        xs_band_pass(s, w, m, &b);
        zp = b.z;
        zknown = 1;
        probe = 0; /* the band pass reused the candidate buffer */
        uint64_t zk = 0;
        const uint32_t v = xs_band_resolve(s, w, r, &b, xs_top_p_limit(f->top_p, zp), &zk);
        if (v != 0xffffffffu) {
          tp = v;
          r->banded = 1;
          r->have_z = 1;
          r->zkept = zk;
          r->khi = b.khi;
          r->clen = b.clen;
          r->nchunk = b.nchunk;
          done = 1;
        }
      }
#endif
      if (!done && !f->joint && !zknown) zp = xs_mass(s, m, xs_tau(tau));
      const xs_u128 lim = xs_top_p_limit(f->top_p, zp);
      if (!done && probe) {
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
#if XK_F32_LANES == 16
  if (r->banded) return xs_band_draw(s, w, r, (uint64_t)(((xs_u128)u * r->zkept) >> 32));
#endif
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
