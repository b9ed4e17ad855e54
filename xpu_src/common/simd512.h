/*
 * AVX-512 building blocks shared by several kernel files (attention, sampling,
 * the AMX GEMM and attention kernels). Only compiled where the tier has
 * AVX-512F.
 */
#ifndef XK_SIMD512_H
#define XK_SIMD512_H

#if defined(__AVX512F__)
#include <immintrin.h>

/* In-register transpose of 16 vectors of 16 32-bit lanes: r[j] lane i <- r[i] lane j. */
static inline __attribute__((always_inline)) void xk_transpose16_epi32(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  /* r[4g + j] lane 4L + q holds row 4g + q, column 4L + j (L = 128-bit lane). */
  for (int j = 0; j < 4; j++) {
    const __m512i u0 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x88), u1 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xDD);
    const __m512i u2 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x88);
    const __m512i u3 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xDD);
    t[j] = _mm512_shuffle_i32x4(u0, u2, 0x88);
    t[8 + j] = _mm512_shuffle_i32x4(u0, u2, 0xDD);
    t[4 + j] = _mm512_shuffle_i32x4(u1, u3, 0x88);
    t[12 + j] = _mm512_shuffle_i32x4(u1, u3, 0xDD);
  }
  for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* exp(x) for x <= ~88 (softmax arguments are <= 0); NaN stays NaN, -inf gives 0.
 * Cody-Waite reduction x = k ln2 + r and a degree-6 polynomial for e^r (~1 ulp).
 * Every attention path uses this one, so their softmaxes agree bit for bit. */
static inline __attribute__((always_inline)) __m512 xk_exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-105.0f), x); /* NaN in x survives (second operand) */
  x = _mm512_min_ps(_mm512_set1_ps(88.7f), x);
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, k);
}

/* 2^x for finite x: the degree-5 Taylor polynomial of 2^f, f = x - round(x)
 * in [-1/2, 1/2] (relative error < 2.5e-6), times 2^round(x) by vscalefps.
 * Results below 2^-126 are 0 under FTZ. Cheaper than xk_exp16 where a few
 * ulps do not matter (probabilities rounded to bf16, sampling thresholds). */
static inline __attribute__((always_inline)) __m512 xk_exp2_16(__m512 x) {
  const __m512 k = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, k);
  __m512 p = _mm512_set1_ps(1.3333558146e-3f);                 /* ln2^5 / 120 */
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076e-3f)); /* ln2^4 / 24 */
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108665e-2f)); /* ln2^3 / 6 */
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650696e-1f)); /* ln2^2 / 2 */
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718056e-1f)); /* ln2 */
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, k);
}

#endif
#endif
