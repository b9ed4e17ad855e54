/*
 * Layer ops with vLLM's semantics (csrc/layernorm_kernels.cu,
 * pos_encoding_kernels.cu, activation_kernels.cu): rms_norm and
 * fused_add_rms_norm, rotary_embedding (NeoX and GPT-J pairs), silu_and_mul.
 *
 * Every op loads its storage format to f32, computes in f32 (sums of squares
 * accumulate in f32 lanes) and rounds once when it stores. One grid block is
 * a range of rows (tokens); each row's arithmetic is fixed, so results do not
 * depend on how the launcher splits the grid.
 *
 * The row functions are always inlined into a switch over the dtypes, so each
 * (dtype, weight dtype) pair gets a loop without per-element dtype branches.
 */
#include <math.h>

#include "../common/convert.h"
#include "../common/tier.h"

#define XK_INLINE static inline __attribute__((always_inline))

/* ---- vector primitives for this tier ------------------------------------ */

#if XK_F32_LANES == 16
typedef __m512 vf;
#define VL 16
XK_INLINE vf v_load(const void *p, int32_t dt) { return xk_load16(p, dt); }
/* bf16 stores use vcvtneps2bf16 (round to nearest even, NaN quieted as the
 * scalar path); it flushes f32 subnormals to zero, so lanes holding one
 * (rare) take convert.h's integer path, keeping the scalar path's bits. */
XK_INLINE void v_store(void *p, int32_t dt, vf v) {
  if (dt == XK_BF16) {
    if (__builtin_expect(_mm512_fpclass_ps_mask(v, 0x20) == 0, 1)) { /* no subnormal lane */
      _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(v));
      return;
    }
  }
  xk_store16(p, dt, v);
}
XK_INLINE vf v_set1(float x) { return _mm512_set1_ps(x); }
XK_INLINE vf v_zero(void) { return _mm512_setzero_ps(); }
XK_INLINE vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
XK_INLINE vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
XK_INLINE vf v_fmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }  /* a*b + c */
XK_INLINE vf v_fmsub(vf a, vf b, vf c) { return _mm512_fmsub_ps(a, b, c); }  /* a*b - c */
XK_INLINE vf v_loadf(const float *p) { return _mm512_loadu_ps(p); }
XK_INLINE float v_hsum(vf v) { return _mm512_reduce_add_ps(v); }
#elif XK_F32_LANES == 8
typedef __m256 vf;
#define VL 8
XK_INLINE vf v_load(const void *p, int32_t dt) { return xk_load8(p, dt); }
XK_INLINE void v_store(void *p, int32_t dt, vf v) { xk_store8(p, dt, v); }
XK_INLINE vf v_set1(float x) { return _mm256_set1_ps(x); }
XK_INLINE vf v_zero(void) { return _mm256_setzero_ps(); }
XK_INLINE vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
XK_INLINE vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
XK_INLINE vf v_fmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
XK_INLINE vf v_fmsub(vf a, vf b, vf c) { return _mm256_fmsub_ps(a, b, c); }
XK_INLINE vf v_loadf(const float *p) { return _mm256_loadu_ps(p); }
XK_INLINE float v_hsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#else
#define VL 1
#endif

XK_INLINE const char *at(const void *base, int64_t elem, int64_t es) { return (const char *)base + elem * es; }
XK_INLINE char *at_mut(void *base, int64_t elem, int64_t es) { return (char *)base + elem * es; }

/* ---- rms_norm / fused_add_rms_norm -------------------------------------- */

/* Partial sums: 4 vectors of lanes, then 8 scalar lanes for the tail. */
#define RMS_UNROLL 4

#if VL > 1
/* The value pass 1 squares at i: input, or (fused) the rounded input + residual,
 * which it also stores into the residual. */
XK_INLINE vf rms_load(const char *x, char *res, int64_t i, int32_t dt) {
  const int64_t es = xk_dtype_size(dt);
  if (!res) return v_load(x + i * es, dt);
  const vf z = v_add(v_load(x + i * es, dt), v_load(res + i * es, dt));
  v_store(res + i * es, dt, z);
  return dt == XK_F32 ? z : v_load(res + i * es, dt);
}
#endif

XK_INLINE void rms_row(const xk_rms_norm_args *a, int64_t r, int fused, int32_t dt, int32_t wdt) {
  const int64_t n = a->hidden_size, es = xk_dtype_size(dt);
  const void *weight = a->weight; /* locals: stores through char * could alias *a */
  const char *x = at(a->input, r * a->input_stride, es);
  char *res = fused ? at_mut(a->residual, r * a->residual_stride, es) : NULL;
  /* The row the norm reads: the input, or the updated residual. */
  const char *src = fused ? res : x;
  char *out = at_mut(a->out, r * a->out_stride, es);

  /* Pass 1: sum of squares (fused: residual = round(input + residual) first,
   * and the square of the rounded value, as vLLM's kernel). */
  float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  float total = 0.0f;
  int64_t i = 0;
#if VL > 1
  vf acc[RMS_UNROLL];
  for (int u = 0; u < RMS_UNROLL; u++) acc[u] = v_zero();
  for (; i + RMS_UNROLL * VL <= n; i += RMS_UNROLL * VL) {
    for (int u = 0; u < RMS_UNROLL; u++) {
      const vf z = rms_load(x, res, i + u * VL, dt);
      acc[u] = v_fmadd(z, z, acc[u]);
    }
  }
  for (; i + VL <= n; i += VL) {
    const vf z = rms_load(x, res, i, dt);
    acc[0] = v_fmadd(z, z, acc[0]);
  }
  total = v_hsum(v_add(v_add(acc[0], acc[1]), v_add(acc[2], acc[3])));
#endif
  for (; i < n; i++) {
    float z = xk_load_scalar(x, dt, i);
    if (fused) {
      z += xk_load_scalar(res, dt, i);
      xk_store_scalar(res, dt, i, z);
      z = xk_load_scalar(res, dt, i);
    }
    tail[i & 7] += z * z;
  }
  for (int j = 0; j < 8; j++) total += tail[j];

  /* One scalar per row: form the scale in double, from the f32 sum. */
  const float scale = (float)(1.0 / sqrt((double)total / (double)n + (double)a->epsilon));

  /* Pass 2: out = src * scale * weight, rounded once. The row is in L1 by now.
   * In place (out == src) is safe: each vector is loaded before it is stored. */
  i = 0;
#if VL > 1
  const vf vs = v_set1(scale);
  const int64_t ws = xk_dtype_size(wdt);
  for (; i + VL <= n; i += VL) {
    const vf v = v_mul(v_load(src + i * es, dt), vs);
    v_store(out + i * es, dt, v_mul(v, v_load(at(weight, i, ws), wdt)));
  }
#endif
  for (; i < n; i++) {
    const float v = xk_load_scalar(src, dt, i) * scale;
    xk_store_scalar(out, dt, i, v * xk_load_scalar(weight, wdt, i));
  }
}

XK_INLINE void rms_rows(const xk_rms_norm_args *a, int64_t b, int64_t e, int32_t dt, int32_t wdt) {
  if (a->residual) {
    for (int64_t r = b; r < e; r++) rms_row(a, r, 1, dt, wdt);
  } else {
    for (int64_t r = b; r < e; r++) rms_row(a, r, 0, dt, wdt);
  }
}

#define RMS_WEIGHT_CASES(DT)                                 \
  switch (a->weight_dtype) {                                 \
    case XK_F16: rms_rows(a, b, e, DT, XK_F16); return;      \
    case XK_BF16: rms_rows(a, b, e, DT, XK_BF16); return;    \
    default: rms_rows(a, b, e, DT, XK_F32); return;          \
  }

void XK_FN(rms_norm)(const xk_rms_norm_args *a, int64_t b, int64_t e) {
  if (a->hidden_size == 0) return;
  switch (a->dtype) {
    case XK_F16: RMS_WEIGHT_CASES(XK_F16)
    case XK_BF16: RMS_WEIGHT_CASES(XK_BF16)
    default: RMS_WEIGHT_CASES(XK_F32)
  }
}

/* ---- rotary_embedding ---------------------------------------------------- */

/* cos/sin are converted to f32 this many pairs at a time. */
#define ROPE_CHUNK 256

/* NeoX: x = row[i], y = row[half + i] for i in [c0, c0 + n). */
XK_INLINE void rope_neox(char *row, int32_t dt, int64_t half, int64_t c0, int64_t n, const float *c,
                         const float *s) {
  const int64_t es = xk_dtype_size(dt);
  char *xp = row + c0 * es, *yp = row + (half + c0) * es;
  int64_t i = 0;
#if VL > 1
  for (; i + VL <= n; i += VL) {
    const vf x = v_load(xp + i * es, dt), y = v_load(yp + i * es, dt);
    const vf vc = v_loadf(c + i), vs = v_loadf(s + i);
    v_store(xp + i * es, dt, v_fmsub(x, vc, v_mul(y, vs)));
    v_store(yp + i * es, dt, v_fmadd(y, vc, v_mul(x, vs)));
  }
#endif
  for (; i < n; i++) {
    const float x = xk_load_scalar(xp, dt, i), y = xk_load_scalar(yp, dt, i);
    xk_store_scalar(xp, dt, i, x * c[i] - y * s[i]);
    xk_store_scalar(yp, dt, i, y * c[i] + x * s[i]);
  }
}

/* GPT-J: x = row[2i], y = row[2i + 1] for i in [c0, c0 + n). cd and sd hold
 * each pair's cos and sin twice, sin signed for its member (cd[2i] = cd[2i+1]
 * = cos_i, sd[2i] = -sin_i, sd[2i+1] = sin_i), so a vector of interleaved
 * pairs rotates as v * cd + swap_pairs(v) * sd. */
XK_INLINE void rope_gptj(char *row, int32_t dt, int64_t c0, int64_t n, const float *c, const float *s,
                         const float *cd, const float *sd) {
  const int64_t es = xk_dtype_size(dt);
  char *p = row + 2 * c0 * es;
  int64_t j = 0; /* element index within the chunk: 2n elements */
#if VL == 16
  for (; j + 16 <= 2 * n; j += 16) {
    const __m512 v = v_load(p + j * es, dt);
    const __m512 sw = _mm512_permute_ps(v, 0xB1);
    v_store(p + j * es, dt, _mm512_fmadd_ps(v, _mm512_loadu_ps(cd + j), _mm512_mul_ps(sw, _mm512_loadu_ps(sd + j))));
  }
#elif VL == 8
  for (; j + 8 <= 2 * n; j += 8) {
    const __m256 v = v_load(p + j * es, dt);
    const __m256 sw = _mm256_permute_ps(v, 0xB1);
    v_store(p + j * es, dt, _mm256_fmadd_ps(v, _mm256_loadu_ps(cd + j), _mm256_mul_ps(sw, _mm256_loadu_ps(sd + j))));
  }
#else
  (void)cd;
  (void)sd;
#endif
  for (int64_t i = j / 2; i < n; i++) {
    const float x = xk_load_scalar(p, dt, 2 * i), y = xk_load_scalar(p, dt, 2 * i + 1);
    xk_store_scalar(p, dt, 2 * i, x * c[i] - y * s[i]);
    xk_store_scalar(p, dt, 2 * i + 1, y * c[i] + x * s[i]);
  }
}

XK_INLINE void rope_heads(void *base, int64_t stride_token, int64_t stride_head, int64_t heads, int64_t t,
                          int32_t dt, int is_neox, int64_t half, int64_t c0, int64_t n, const float *c,
                          const float *s, const float *cd, const float *sd) {
  const int64_t es = xk_dtype_size(dt);
  for (int64_t h = 0; h < heads; h++) {
    char *row = at_mut(base, t * stride_token + h * stride_head, es);
    if (is_neox) {
      rope_neox(row, dt, half, c0, n, c, s);
    } else {
      rope_gptj(row, dt, c0, n, c, s, cd, sd);
    }
  }
}

XK_INLINE void rope_tokens(const xk_rotary_args *a, int64_t b, int64_t e, int32_t dt) {
  const int64_t half = a->rot_dim / 2, cs = xk_dtype_size(a->cache_dtype);
  float c[ROPE_CHUNK], s[ROPE_CHUNK], cd[2 * ROPE_CHUNK], sd[2 * ROPE_CHUNK];
  for (int64_t t = b; t < e; t++) {
    const int64_t ip = t * a->positions_stride;
    const int64_t pos = a->positions_is_i64 ? ((const int64_t *)a->positions)[ip]
                                            : (int64_t)((const int32_t *)a->positions)[ip];
    const char *cache_row = at(a->cos_sin_cache, pos * a->cache_stride, cs);
    for (int64_t c0 = 0; c0 < half; c0 += ROPE_CHUNK) {
      const int64_t n = half - c0 < ROPE_CHUNK ? half - c0 : ROPE_CHUNK;
      xk_convert_row(c, XK_F32, cache_row + c0 * cs, a->cache_dtype, n, 1.0f);
      xk_convert_row(s, XK_F32, cache_row + (half + c0) * cs, a->cache_dtype, n, 1.0f);
      if (!a->is_neox && VL > 1) {
        for (int64_t i = 0; i < n; i++) {
          cd[2 * i] = cd[2 * i + 1] = c[i];
          sd[2 * i] = -s[i];
          sd[2 * i + 1] = s[i];
        }
      }
      rope_heads(a->query, a->query_stride_token, a->query_stride_head, a->num_heads, t, dt, a->is_neox, half, c0,
                 n, c, s, cd, sd);
      if (a->key) {
        rope_heads(a->key, a->key_stride_token, a->key_stride_head, a->num_kv_heads, t, dt, a->is_neox, half, c0,
                   n, c, s, cd, sd);
      }
    }
  }
}

void XK_FN(rotary_embedding)(const xk_rotary_args *a, int64_t b, int64_t e) {
  switch (a->dtype) {
    case XK_F16: rope_tokens(a, b, e, XK_F16); return;
    case XK_BF16: rope_tokens(a, b, e, XK_BF16); return;
    default: rope_tokens(a, b, e, XK_F32); return;
  }
}

/* ---- silu_and_mul --------------------------------------------------------- */

/*
 * silu(x) = x / (1 + e^(-x)) without libm, and without overflow: with
 * t = -|x| and e = e^t in (0, 1],
 *   x >= 0: x / (1 + e),    x < 0: x·e / (1 + e).
 * e^t: t = k ln2 + r with |r| <= ln2 / 2 (ln2 split in two so k ln2 is
 * exact), e^r by the Cephes expf polynomial (p), and 2^k applied as two
 * factors f1·f2 so k may run down to -150. For x < 0 the numerator is formed
 * as ((x·p)·f1)·f2, so it only leaves the normal range on its last, exact
 * power-of-two step: results stay accurate down to the subnormals. Below
 * t = -103.98 e is 0 (the numerator x·0). NaN stays NaN; silu(+inf) = +inf,
 * silu(-inf) = NaN (-inf/inf, as the formula upstream).
 * Measured: at most 3 f32 ulp from silu in f64 wherever the result is normal
 * (tests/layer.rs `silu_f32_error_in_ulps`).
 */
#define EXP_LO -103.97208404541015625f
#define EXP_LOG2E 1.44269504088896341f
#define EXP_C1 0.693359375f
#define EXP_C2 (-2.12194440e-4f)
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

XK_INLINE float silu_scalar(float x) {
  float t = x < 0.0f ? x : -x; /* -|x|; NaN stays NaN */
  const int under = t < EXP_LO;
  if (under || t != t) t = EXP_LO;
  const float k = (t * EXP_LOG2E + 0x1.8p23f) - 0x1.8p23f; /* round to nearest */
  float r = t - k * EXP_C1;
  r = r - k * EXP_C2;
  float p = EXP_P0;
  p = p * r + EXP_P1;
  p = p * r + EXP_P2;
  p = p * r + EXP_P3;
  p = p * r + EXP_P4;
  p = p * r + EXP_P5;
  p = p * (r * r) + r + 1.0f;
  const int32_t ki = (int32_t)k, k1 = ki / 2, k2 = ki - k1;
  const float f1 = xk_bits_f32((uint32_t)(k1 + 127) << 23), f2 = xk_bits_f32((uint32_t)(k2 + 127) << 23);
  const float e = under ? 0.0f : p * f1 * f2;
  const float num = x >= 0.0f ? x : under ? x * 0.0f : ((x * p) * f1) * f2;
  return num / (1.0f + e);
}

#if VL == 16
XK_INLINE __m512 silu_v(__m512 x) {
  const __m512 t0 = _mm512_or_ps(x, _mm512_set1_ps(-0.0f)); /* -|x| */
  const __mmask16 under = _mm512_cmp_ps_mask(t0, _mm512_set1_ps(EXP_LO), _CMP_LT_OQ);
  const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NGE_UQ); /* x < 0 or NaN */
  const __m512 t = _mm512_max_ps(t0, _mm512_set1_ps(EXP_LO)); /* NaN -> EXP_LO */
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(EXP_LOG2E)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(EXP_C1), t);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(EXP_C2), r);
  __m512 p = _mm512_set1_ps(EXP_P0);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  /* vscalefps applies 2^k exactly (one rounding, only on underflow): the
   * same values as the two-factor scaling of the other tiers. */
  const __m512 e = _mm512_maskz_scalef_ps((__mmask16)~under, p, k);
  __m512 num = _mm512_scalef_ps(_mm512_mul_ps(x, p), k);
  num = _mm512_mask_mul_ps(num, under, x, _mm512_setzero_ps());
  num = _mm512_mask_blend_ps(neg, x, num);
  return _mm512_div_ps(num, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}
#elif VL == 8
XK_INLINE __m256 silu_v(__m256 x) {
  const __m256 t0 = _mm256_or_ps(x, _mm256_set1_ps(-0.0f));
  const __m256 under = _mm256_cmp_ps(t0, _mm256_set1_ps(EXP_LO), _CMP_LT_OQ);
  const __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_NGE_UQ);
  const __m256 t = _mm256_max_ps(t0, _mm256_set1_ps(EXP_LO));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(EXP_LOG2E)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(EXP_C1), t);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(EXP_C2), r);
  __m256 p = _mm256_set1_ps(EXP_P0);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i ki = _mm256_cvtps_epi32(k);
  const __m256i k1 = _mm256_srai_epi32(ki, 1), k2 = _mm256_sub_epi32(ki, k1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
  const __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, bias), 23));
  const __m256 e = _mm256_andnot_ps(under, _mm256_mul_ps(_mm256_mul_ps(p, f1), f2));
  __m256 num = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(x, p), f1), f2);
  num = _mm256_blendv_ps(num, _mm256_mul_ps(x, _mm256_setzero_ps()), under);
  num = _mm256_blendv_ps(x, num, neg);
  return _mm256_div_ps(num, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}
#endif

XK_INLINE void silu_rows(const xk_silu_and_mul_args *a, int64_t b, int64_t e, int32_t dt) {
  const int64_t d = a->d, es = xk_dtype_size(dt);
  for (int64_t r = b; r < e; r++) {
    const char *x = at(a->input, r * a->input_stride, es), *y = x + d * es;
    char *out = at_mut(a->out, r * a->out_stride, es);
    int64_t i = 0;
#if VL > 1
    for (; i + VL <= d; i += VL) {
      const vf vx = v_load(x + i * es, dt), vy = v_load(y + i * es, dt);
      v_store(out + i * es, dt, v_mul(silu_v(vx), vy));
    }
#endif
    for (; i < d; i++) {
      xk_store_scalar(out, dt, i, silu_scalar(xk_load_scalar(x, dt, i)) * xk_load_scalar(y, dt, i));
    }
  }
}

void XK_FN(silu_and_mul)(const xk_silu_and_mul_args *a, int64_t b, int64_t e) {
  switch (a->dtype) {
    case XK_F16: silu_rows(a, b, e, XK_F16); return;
    case XK_BF16: silu_rows(a, b, e, XK_BF16); return;
    default: silu_rows(a, b, e, XK_F32); return;
  }
}
