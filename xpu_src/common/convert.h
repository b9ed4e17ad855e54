/*
 * Conversions between f32 and the storage formats (f16, bf16, fp8 e4m3fn,
 * fp8 e5m2), scalar and vectorised for the tier being compiled.
 *
 * Every rounding is round-to-nearest-even; f32 -> fp8 saturates to the largest
 * finite value (inf included, as CUDA's __NV_SATFINITE) and keeps NaN a NaN.
 * The vector paths produce exactly the scalar paths' bits: the Rust reference
 * (src/dtype.rs) and the tests hold them to that.
 */
#ifndef XK_CONVERT_H
#define XK_CONVERT_H

#include <stdint.h>
#include <string.h>

#include "../include/xops_kernels.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

static inline uint32_t xk_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static inline float xk_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* Round a non-negative float below 2^23 to the nearest integer, ties to even. */
static inline uint32_t xk_rne_small(float f) {
  return (uint32_t)((f + 0x1p23f) - 0x1p23f);
}

/* ---- scalar ------------------------------------------------------------ */

static inline float xk_bf16_to_f32_scalar(uint16_t h) { return xk_bits_f32((uint32_t)h << 16); }

static inline uint16_t xk_f32_to_bf16_scalar(float f) {
  uint32_t u = xk_f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float xk_f16_to_f32_scalar(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0) {
    float mag = (float)man * 0x1p-24f; /* zero or subnormal, exact */
    return xk_bits_f32(sign | xk_f32_bits(mag));
  }
  if (exp == 31) return xk_bits_f32(sign | 0x7f800000u | (man << 13));
  return xk_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

static inline uint16_t xk_f32_to_f16_scalar(float f) {
  uint32_t u = xk_f32_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a & 0x7fffffu) >> 13));
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds past 65504 */
  if (a < 0x38800000u) return (uint16_t)(sign | xk_rne_small(xk_bits_f32(a) * 0x1p24f));
  return (uint16_t)(sign | ((a + 0xfffu + ((a >> 13) & 1u) - (112u << 23)) >> 13));
}

/* Format constants of the two fp8 encodings. */
typedef struct xk_fp8_format {
  uint32_t mant_shift;   /* f32 mantissa bits dropped: 20 (e4m3) or 21 (e5m2) */
  uint32_t rebias;       /* (127 - bias) << mantissa bits */
  uint32_t min_normal;   /* f32 bits of the smallest normal */
  float subnormal_scale; /* 1 / smallest subnormal */
  uint32_t max_finite;   /* encoding of the largest finite value */
  uint32_t nan;          /* encoding of the canonical NaN */
} xk_fp8_format;

static const xk_fp8_format XK_E4M3 = {20, 120u << 3, 0x3c800000u, 0x1p9f, 0x7e, 0x7f};
static const xk_fp8_format XK_E5M2 = {21, 112u << 2, 0x38800000u, 0x1p16f, 0x7b, 0x7e};

static inline uint8_t xk_f32_to_fp8_scalar(float f, const xk_fp8_format *fmt) {
  uint32_t u = xk_f32_bits(f);
  uint32_t sign = (u >> 24) & 0x80u, a = u & 0x7fffffffu;
  uint32_t r;
  if (a > 0x7f800000u) {
    r = fmt->nan;
  } else if (a < fmt->min_normal) {
    r = xk_rne_small(xk_bits_f32(a) * fmt->subnormal_scale);
  } else {
    uint32_t half = (1u << (fmt->mant_shift - 1)) - 1u;
    r = ((a + half + ((a >> fmt->mant_shift) & 1u)) >> fmt->mant_shift) - (fmt->rebias);
    if (r > fmt->max_finite) r = fmt->max_finite;
  }
  return (uint8_t)(sign | r);
}

static inline float xk_fp8_to_f32_scalar(uint8_t v, const xk_fp8_format *fmt) {
  const uint32_t sign = (uint32_t)(v & 0x80u) << 24, mag = v & 0x7fu;
  const uint32_t man_bits = 23u - fmt->mant_shift, man = mag & ((1u << man_bits) - 1u);
  const int e4m3 = fmt->nan == 0x7fu;
  if (e4m3 ? mag == 0x7fu : (mag >> man_bits) == 31u) { /* e4m3fn: NaN only; e5m2: inf and NaN */
    return xk_bits_f32(sign | 0x7f800000u | (man ? 0x400000u : 0u));
  }
  if ((mag >> man_bits) == 0) return xk_bits_f32(sign | xk_f32_bits((float)man / fmt->subnormal_scale));
  return xk_bits_f32(sign | ((mag + (fmt->rebias)) << fmt->mant_shift));
}

static inline const xk_fp8_format *xk_fp8_format_of(int32_t dtype) {
  return dtype == XK_F8E5M2 ? &XK_E5M2 : &XK_E4M3;
}

static inline int64_t xk_dtype_size(int32_t dtype) {
  switch (dtype) {
    case XK_F32: return 4;
    case XK_F16:
    case XK_BF16: return 2;
    default: return 1;
  }
}

/* ---- vector: 16 lanes (AVX-512) or 8 lanes (AVX2) of f32 ------------------ */

#if defined(__AVX512F__)
#define XK_F32_LANES 16

static inline __m512 xk_load16(const void *src, int32_t dtype) {
  switch (dtype) {
    case XK_F32: return _mm512_loadu_ps(src);
    case XK_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)src));
    case XK_BF16:
      return _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)src)), 16));
    default: {
      float tmp[16];
      const xk_fp8_format *fmt = xk_fp8_format_of(dtype);
      for (int i = 0; i < 16; i++) tmp[i] = xk_fp8_to_f32_scalar(((const uint8_t *)src)[i], fmt);
      return _mm512_loadu_ps(tmp);
    }
  }
}

static inline __m512i xk_fp8_encode16(__m512 v, const xk_fp8_format *fmt) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 24), _mm512_set1_epi32(0x80));
  const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __m512i half = _mm512_set1_epi32((int)((1u << (fmt->mant_shift - 1)) - 1u));
  const __m128i shift = _mm_cvtsi32_si128((int)fmt->mant_shift);
  __m512i odd = _mm512_and_si512(_mm512_srl_epi32(a, shift), _mm512_set1_epi32(1));
  __m512i normal = _mm512_sub_epi32(
      _mm512_srl_epi32(_mm512_add_epi32(_mm512_add_epi32(a, half), odd), shift),
      _mm512_set1_epi32((int)fmt->rebias));
  normal = _mm512_min_epu32(normal, _mm512_set1_epi32((int)fmt->max_finite));
  const __m512 scaled = _mm512_mul_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(fmt->subnormal_scale));
  const __m512i sub = _mm512_cvt_roundps_epi32(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __mmask16 is_sub = _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32((int)fmt->min_normal));
  const __mmask16 is_nan = _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(0x7f800000));
  __m512i r = _mm512_mask_blend_epi32(is_sub, normal, sub);
  r = _mm512_mask_blend_epi32(is_nan, r, _mm512_set1_epi32((int)fmt->nan));
  return _mm512_or_si512(r, sign);
}

static inline void xk_store16(void *dst, int32_t dtype, __m512 v) {
  switch (dtype) {
    case XK_F32: _mm512_storeu_ps(dst, v); return;
    case XK_F16:
      _mm256_storeu_si256((__m256i *)dst, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      return;
    case XK_BF16: {
      const __m512i u = _mm512_castps_si512(v);
      const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
      __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16);
      const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
      const __mmask16 is_nan = _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(0x7f800000));
      r = _mm512_mask_mov_epi32(r, is_nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
      _mm256_storeu_si256((__m256i *)dst, _mm512_cvtepi32_epi16(r));
      return;
    }
    default:
      _mm_storeu_si128((__m128i *)dst, _mm512_cvtepi32_epi8(xk_fp8_encode16(v, xk_fp8_format_of(dtype))));
      return;
  }
}

#elif defined(__AVX2__)
#define XK_F32_LANES 8

static inline __m256 xk_load8(const void *src, int32_t dtype) {
  switch (dtype) {
    case XK_F32: return _mm256_loadu_ps(src);
    case XK_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)src));
    case XK_BF16:
      return _mm256_castsi256_ps(
          _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)src)), 16));
    default: {
      float tmp[8];
      const xk_fp8_format *fmt = xk_fp8_format_of(dtype);
      for (int i = 0; i < 8; i++) tmp[i] = xk_fp8_to_f32_scalar(((const uint8_t *)src)[i], fmt);
      return _mm256_loadu_ps(tmp);
    }
  }
}

/* Keeps byte 0 of each 32-bit lane: 8 lanes -> 8 bytes. */
static inline __m128i xk_pack8_lo_bytes(__m256i r) {
  const __m256i bytes = _mm256_shuffle_epi8(
      r, _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1,
                          -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
  return _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1)));
}

static inline __m256i xk_fp8_encode8(__m256 v, const xk_fp8_format *fmt) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), _mm256_set1_epi32(0x80));
  const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  const __m256i half = _mm256_set1_epi32((int)((1u << (fmt->mant_shift - 1)) - 1u));
  const __m128i shift = _mm_cvtsi32_si128((int)fmt->mant_shift);
  __m256i odd = _mm256_and_si256(_mm256_srl_epi32(a, shift), _mm256_set1_epi32(1));
  __m256i normal = _mm256_sub_epi32(_mm256_srl_epi32(_mm256_add_epi32(_mm256_add_epi32(a, half), odd), shift),
                                    _mm256_set1_epi32((int)fmt->rebias));
  normal = _mm256_min_epu32(normal, _mm256_set1_epi32((int)fmt->max_finite));
  /* a <= 0x7fffffff, so signed compares are exact here. */
  const __m256 scaled = _mm256_mul_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(fmt->subnormal_scale));
  const __m256i sub = _mm256_cvtps_epi32(_mm256_round_ps(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  const __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)fmt->min_normal), a);
  const __m256i is_nan = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7f800000));
  __m256i r = _mm256_blendv_epi8(normal, sub, is_sub);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32((int)fmt->nan), is_nan);
  return _mm256_or_si256(r, sign);
}

static inline void xk_store8(void *dst, int32_t dtype, __m256 v) {
  switch (dtype) {
    case XK_F32: _mm256_storeu_ps(dst, v); return;
    case XK_F16: _mm_storeu_si128((__m128i *)dst, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); return;
    case XK_BF16: {
      const __m256i u = _mm256_castps_si256(v);
      const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
      __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16);
      const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
      const __m256i is_nan = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7f800000));
      r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), is_nan);
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
      _mm_storeu_si128((__m128i *)dst, _mm256_castsi256_si128(packed));
      return;
    }
    default: {
      __m128i b = xk_pack8_lo_bytes(xk_fp8_encode8(v, xk_fp8_format_of(dtype)));
      _mm_storel_epi64((__m128i *)dst, b);
      return;
    }
  }
}

#else
#define XK_F32_LANES 1
#endif

/* ---- rows --------------------------------------------------------------- */

static inline float xk_load_scalar(const void *src, int32_t dtype, int64_t i) {
  switch (dtype) {
    case XK_F32: return ((const float *)src)[i];
    case XK_F16: return xk_f16_to_f32_scalar(((const uint16_t *)src)[i]);
    case XK_BF16: return xk_bf16_to_f32_scalar(((const uint16_t *)src)[i]);
    default: return xk_fp8_to_f32_scalar(((const uint8_t *)src)[i], xk_fp8_format_of(dtype));
  }
}

static inline void xk_store_scalar(void *dst, int32_t dtype, int64_t i, float v) {
  switch (dtype) {
    case XK_F32: ((float *)dst)[i] = v; return;
    case XK_F16: ((uint16_t *)dst)[i] = xk_f32_to_f16_scalar(v); return;
    case XK_BF16: ((uint16_t *)dst)[i] = xk_f32_to_bf16_scalar(v); return;
    default: ((uint8_t *)dst)[i] = xk_f32_to_fp8_scalar(v, xk_fp8_format_of(dtype)); return;
  }
}

static inline int xk_is_fp8(int32_t dtype) { return dtype == XK_F8E4M3 || dtype == XK_F8E5M2; }

/*
 * dst[i] = convert(src[i]) for n contiguous elements. For fp8 destinations the
 * value stored is saturate(src[i] / scale); other formats ignore scale.
 */
static inline void xk_convert_row(void *dst, int32_t dst_dtype, const void *src, int32_t src_dtype, int64_t n,
                                  float scale) {
  const int fp8 = xk_is_fp8(dst_dtype);
  if (dst_dtype == src_dtype && !fp8) {
    memcpy(dst, src, (size_t)(n * xk_dtype_size(dst_dtype)));
    return;
  }
  int64_t i = 0;
#if XK_F32_LANES > 1
  const int64_t ds = xk_dtype_size(dst_dtype), ss = xk_dtype_size(src_dtype);
#endif
#if XK_F32_LANES == 16
  const __m512 vscale = _mm512_set1_ps(scale);
  for (; i + 16 <= n; i += 16) {
    __m512 v = xk_load16((const char *)src + i * ss, src_dtype);
    if (fp8) v = _mm512_div_ps(v, vscale);
    xk_store16((char *)dst + i * ds, dst_dtype, v);
  }
#elif XK_F32_LANES == 8
  const __m256 vscale = _mm256_set1_ps(scale);
  for (; i + 8 <= n; i += 8) {
    __m256 v = xk_load8((const char *)src + i * ss, src_dtype);
    if (fp8) v = _mm256_div_ps(v, vscale);
    xk_store8((char *)dst + i * ds, dst_dtype, v);
  }
#endif
  for (; i < n; i++) {
    float v = xk_load_scalar(src, src_dtype, i);
    xk_store_scalar(dst, dst_dtype, i, fp8 ? v / scale : v);
  }
}

#endif /* XK_CONVERT_H */
