/*
 * Helpers shared by the linear-attention kernels (conv.c, gdn.c): index
 * vectors, strided row loads/stores through f32, and vector exp / silu.
 */
#ifndef XK_LA_UTIL_H
#define XK_LA_UTIL_H

#include <math.h>

#include "../common/convert.h"

/* Element i of an index vector (the launcher checked that it is present). */
static inline int64_t la_at(const xk_la_index *v, int64_t i) {
  const char *p = (const char *)v->data;
  switch (v->dtype) {
    case XK_LA_I32: return ((const int32_t *)p)[i * v->stride];
    case XK_LA_I64: return ((const int64_t *)p)[i * v->stride];
    default: return ((const uint8_t *)p)[i * v->stride] != 0;
  }
}

/* dst[i] = src[i * stride] as f32, for n elements of `dtype`. */
static inline void la_load_row(float *dst, const void *src, int32_t dtype, int64_t n, int64_t stride) {
  if (stride == 1 || n <= 1) {
    xk_convert_row(dst, XK_F32, src, dtype, n, 1.0f);
    return;
  }
  switch (dtype) {
    case XK_F32:
      for (int64_t i = 0; i < n; i++) dst[i] = ((const float *)src)[i * stride];
      return;
    case XK_BF16:
      for (int64_t i = 0; i < n; i++) dst[i] = xk_bf16_to_f32_scalar(((const uint16_t *)src)[i * stride]);
      return;
    default:
      for (int64_t i = 0; i < n; i++) dst[i] = xk_load_scalar(src, dtype, i * stride);
      return;
  }
}

/* dst[i * stride] = src[i] rounded to `dtype`. */
static inline void la_store_row(void *dst, int32_t dtype, const float *src, int64_t n, int64_t stride) {
  if (stride == 1 || n <= 1) {
    xk_convert_row(dst, dtype, src, XK_F32, n, 1.0f);
    return;
  }
  switch (dtype) {
    case XK_F32:
      for (int64_t i = 0; i < n; i++) ((float *)dst)[i * stride] = src[i];
      return;
    case XK_BF16:
      for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i * stride] = xk_f32_to_bf16_scalar(src[i]);
      return;
    default:
      for (int64_t i = 0; i < n; i++) xk_store_scalar(dst, dtype, i * stride, src[i]);
      return;
  }
}

/*
 * __builtin_prefetch with an empty volatile asm on its address: GCC's
 * pure/const analysis sees no side effect in a prefetch, so a helper that only
 * prefetches is found const and its calls are deleted as dead code (gdn.c at
 * -O3 lost every prefetch of its recurrent kernel that way). The asm keeps
 * the helper, and so the prefetch, in place.
 */
#define LA_PREFETCH(p, rw, locality)              \
  do {                                            \
    const void *la_pf_ = (const void *)(p);       \
    __builtin_prefetch(la_pf_, (rw), (locality)); \
    __asm__ volatile("" : : "r"(la_pf_));         \
  } while (0)

static inline float la_silu(float x) { return x / (1.0f + expf(-x)); }

/*
 * exp on vectors: x = n ln2 + r with |r| <= ln2 / 2, a degree-6 polynomial for
 * e^r (relative error ~1e-7), then the 2^n scaling. Inputs are clamped to the
 * finite range (NaN stays NaN: the clamps put the variable second, which the
 * min/max instructions return when either operand is NaN).
 */
#if XK_F32_LANES == 16
static inline __m512 la_exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(88.0f), x);
  x = _mm512_max_ps(_mm512_set1_ps(-103.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
/* x / (1 + e^-x) with a reciprocal estimate and one Newton step (~1 ulp;
 * a division costs several times more). Where 1 + e^-x overflows, the
 * estimate is 0 and so is the result, as the division would give. */
static inline __m512 la_silu16(__m512 x) {
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), la_exp16(_mm512_sub_ps(_mm512_setzero_ps(), x)));
  __m512 r = _mm512_rcp14_ps(d);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
  return _mm512_mul_ps(x, r);
}
#elif XK_F32_LANES == 8
/*
 * la_exp8 and la_silu8 on n <= 8 vectors in place, each operation across the
 * vectors before the next (the single-vector forms are n = 1): one vector's
 * silu is a ~70-cycle dependency chain, and issued vector after vector it
 * fills the FP scheduler (Zen 3) before the next vector's independent work
 * can start. Same operations for any n, so the same bits.
 *
 * The 2^k scaling adds k to p's exponent field (an integer add, off the two
 * FMA/mul pipes of Zen 3, 1 cycle instead of 3): the same bits as the fp32
 * product p * 2^k that it replaced, because that product is exact. p is in
 * [0.7, 1.42] (|r| <= ln2 / 2, a positive normal), k in [-126, 127], and the
 * result stays normal: k = -126 needs x log2(e) <= -125.5, so r > 0.33 and
 * p >= 1; k = 127 needs r < 0, so p < 1. A NaN lane converts to k =
 * 0x80000000, whose shifted bits are 0: p (NaN) is kept, as p * 2^0 kept it.
 * Checked against the multiplying form on all 2^32 inputs.
 *
 * neg: e^-x (for silu) without the negation: the clamps, k and the first
 * reduction step take -x's operations mirrored (max(-88, x), min(87, .),
 * k = round(x * -log2(e)), r = -(k ln2_hi) - x), which round alike (round to
 * nearest is symmetric), and the first step's r is bitwise the old r
 * (signed zeros included: both give r = +0 for x = +-0). A NaN x stays the
 * same quiet NaN throughout, as 0 - x made it. Saves a subtraction and its
 * 3 cycles of latency per vector.
 */
static inline __attribute__((always_inline)) void la_exp8_n(__m256 *x, const int n, const int neg) {
  __m256 k[8], p[8];
  __m256i e[8];
  if (neg) {
    for (int i = 0; i < n; i++) x[i] = _mm256_max_ps(_mm256_set1_ps(-88.0f), x[i]);
    for (int i = 0; i < n; i++) x[i] = _mm256_min_ps(_mm256_set1_ps(87.0f), x[i]);
    for (int i = 0; i < n; i++) k[i] = _mm256_mul_ps(x[i], _mm256_set1_ps(-1.44269504f));
    for (int i = 0; i < n; i++) k[i] = _mm256_round_ps(k[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    for (int i = 0; i < n; i++) x[i] = _mm256_fnmsub_ps(k[i], _mm256_set1_ps(0.693145752f), x[i]);
  } else {
    for (int i = 0; i < n; i++) x[i] = _mm256_min_ps(_mm256_set1_ps(88.0f), x[i]);
    for (int i = 0; i < n; i++) x[i] = _mm256_max_ps(_mm256_set1_ps(-87.0f), x[i]);
    for (int i = 0; i < n; i++) k[i] = _mm256_mul_ps(x[i], _mm256_set1_ps(1.44269504f));
    for (int i = 0; i < n; i++) k[i] = _mm256_round_ps(k[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    for (int i = 0; i < n; i++) x[i] = _mm256_fnmadd_ps(k[i], _mm256_set1_ps(0.693145752f), x[i]);
  }
  for (int i = 0; i < n; i++) x[i] = _mm256_fnmadd_ps(k[i], _mm256_set1_ps(1.42860677e-6f), x[i]);
  for (int i = 0; i < n; i++) e[i] = _mm256_slli_epi32(_mm256_cvtps_epi32(k[i]), 23);
  for (int i = 0; i < n; i++) p[i] = _mm256_set1_ps(1.0f / 720.0f);
  for (int i = 0; i < n; i++) p[i] = _mm256_fmadd_ps(p[i], x[i], _mm256_set1_ps(1.0f / 120.0f));
  for (int i = 0; i < n; i++) p[i] = _mm256_fmadd_ps(p[i], x[i], _mm256_set1_ps(1.0f / 24.0f));
  for (int i = 0; i < n; i++) p[i] = _mm256_fmadd_ps(p[i], x[i], _mm256_set1_ps(1.0f / 6.0f));
  for (int i = 0; i < n; i++) p[i] = _mm256_fmadd_ps(p[i], x[i], _mm256_set1_ps(0.5f));
  for (int i = 0; i < n; i++) p[i] = _mm256_fmadd_ps(p[i], x[i], _mm256_set1_ps(1.0f));
  for (int i = 0; i < n; i++) p[i] = _mm256_fmadd_ps(p[i], x[i], _mm256_set1_ps(1.0f));
  for (int i = 0; i < n; i++) x[i] = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p[i]), e[i]));
}
static inline __m256 la_exp8(__m256 x) {
  la_exp8_n(&x, 1, 0);
  return x;
}
/*
 * silu(x) = x / (1 + e^-x) with a reciprocal estimate and two Newton steps,
 * in two stages that a caller may run in separate passes over many vectors
 * (the same operations, so the same bits): la_silu8_den_n gives d = 1 +
 * e^-x, la_silu8_div_n then x / d. Each stage is about half of silu's
 * dependency chain, so a pass keeps more vectors in flight.
 */
static inline __attribute__((always_inline)) void la_silu8_den_n(const __m256 *x, __m256 *d, const int n) {
  for (int i = 0; i < n; i++) d[i] = x[i];
  la_exp8_n(d, n, 1);
  for (int i = 0; i < n; i++) d[i] = _mm256_add_ps(_mm256_set1_ps(1.0f), d[i]);
}
static inline __attribute__((always_inline)) void la_silu8_div_n(__m256 *x, const __m256 *d, const int n) {
  __m256 r[8];
  for (int i = 0; i < n; i++) r[i] = _mm256_rcp_ps(d[i]);
  for (int i = 0; i < n; i++) r[i] = _mm256_mul_ps(r[i], _mm256_fnmadd_ps(d[i], r[i], _mm256_set1_ps(2.0f)));
  for (int i = 0; i < n; i++) r[i] = _mm256_mul_ps(r[i], _mm256_fnmadd_ps(d[i], r[i], _mm256_set1_ps(2.0f)));
  for (int i = 0; i < n; i++) x[i] = _mm256_mul_ps(x[i], r[i]);
}
static inline __attribute__((always_inline)) void la_silu8_n(__m256 *x, const int n) {
  __m256 d[8];
  la_silu8_den_n(x, d, n);
  la_silu8_div_n(x, d, n);
}
static inline __m256 la_silu8(__m256 x) {
  la_silu8_n(&x, 1);
  return x;
}
#endif

/* In place: x[i] = silu(x[i]). */
static inline void la_silu_row(float *x, int64_t n) {
  int64_t i = 0;
#if XK_F32_LANES == 16
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, la_silu16(_mm512_loadu_ps(x + i)));
#elif XK_F32_LANES == 8
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, la_silu8(_mm256_loadu_ps(x + i)));
#endif
  for (; i < n; i++) x[i] = la_silu(x[i]);
}

#endif /* XK_LA_UTIL_H */
