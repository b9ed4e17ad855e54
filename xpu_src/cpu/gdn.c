/*
 * Gated DeltaNet helpers and recurrences (fla / vLLM semantics):
 * fused_gdn_gating, l2norm, rms_norm_gated (row grids), and the gated delta
 * rule (one grid block per (sequence, value head)), recurrent and chunked.
 */
#include "../common/tier.h"
#include "la_util.h"

/* Rows are converted to f32 in pieces of this many elements. */
#define ROW_PIECE 512

static inline int64_t row_offset(const xk_rows *r, int64_t row) {
  return (row / r->inner) * r->outer_stride + (row % r->inner) * r->stride;
}

/* ---- vector primitives on f32 rows ----------------------------------------- */

static float vec_dot(const float *a, const float *b, int64_t n) {
  int64_t i = 0;
  float s = 0.0f;
#if XK_F32_LANES == 16
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
  s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#elif XK_F32_LANES == 8
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  acc0 = _mm256_add_ps(acc0, acc1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  s = _mm_cvtss_f32(h);
#endif
  for (; i < n; i++) s = fmaf(a[i], b[i], s);
  return s;
}

/* y[i] = x[i] * s */
static void vec_scale(float *y, const float *x, float s, int64_t n) {
  int64_t i = 0;
#if XK_F32_LANES == 16
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), _mm512_set1_ps(s)));
#elif XK_F32_LANES == 8
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(s)));
#endif
  for (; i < n; i++) y[i] = x[i] * s;
}

/* y[i] = x[i] * m[i] */
static void vec_mul(float *y, const float *x, const float *m, int64_t n) {
  int64_t i = 0;
#if XK_F32_LANES == 16
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(m + i)));
#elif XK_F32_LANES == 8
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(m + i)));
#endif
  for (; i < n; i++) y[i] = x[i] * m[i];
}

/* y[i] += x[i] */
static void vec_add(float *y, const float *x, int64_t n) {
  int64_t i = 0;
#if XK_F32_LANES == 16
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(y + i), _mm512_loadu_ps(x + i)));
#elif XK_F32_LANES == 8
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
#endif
  for (; i < n; i++) y[i] += x[i];
}

/* ---- fused_gdn_gating ------------------------------------------------------- */

void XK_FN(gdn_gating)(const xk_gdn_gating_args *a, int64_t row_begin, int64_t row_end) {
  const float beta = a->softplus_beta;
  for (int64_t t = row_begin; t < row_end; t++) {
    for (int64_t h = 0; h < a->num_heads; h++) {
      const float A = xk_load_scalar(a->a_log, a->a_log_dtype, h * a->a_log_stride);
      const float dt = xk_load_scalar(a->dt_bias, a->dt_bias_dtype, h * a->dt_bias_stride);
      const float x = xk_load_scalar(a->a, a->a_dtype, t * a->a_stride_row + h * a->a_stride_head) + dt;
      const float bx = beta * x;
      const float sp = bx <= a->threshold ? log1pf(expf(bx)) / beta : x;
      xk_store_scalar(a->g, a->g_dtype, t * a->g_stride_row + h * a->g_stride_head, -expf(A) * sp);
      const float b = xk_load_scalar(a->b, a->b_dtype, t * a->b_stride_row + h * a->b_stride_head);
      xk_store_scalar(a->beta_output, a->beta_dtype, t * a->beta_stride_row + h * a->beta_stride_head,
                      1.0f / (1.0f + expf(-b)));
    }
  }
}

/* ---- l2norm ----------------------------------------------------------------- */

void XK_FN(l2norm)(const xk_l2norm_args *a, int64_t row_begin, int64_t row_end) {
  const int64_t xs = xk_dtype_size(a->x_dtype), os = xk_dtype_size(a->out_dtype);
  float buf[ROW_PIECE];
  for (int64_t r = row_begin; r < row_end; r++) {
    const char *x = (const char *)a->x + row_offset(&a->x_rows, r) * xs;
    char *out = (char *)a->out + row_offset(&a->out_rows, r) * os;
    float ss = 0.0f;
    for (int64_t c = 0; c < a->n; c += ROW_PIECE) {
      const int64_t m = a->n - c < ROW_PIECE ? a->n - c : ROW_PIECE;
      la_load_row(buf, x + c * xs, a->x_dtype, m, 1);
      ss += vec_dot(buf, buf, m);
    }
    const float inv = 1.0f / sqrtf(ss + a->eps);
    for (int64_t c = 0; c < a->n; c += ROW_PIECE) {
      const int64_t m = a->n - c < ROW_PIECE ? a->n - c : ROW_PIECE;
      la_load_row(buf, x + c * xs, a->x_dtype, m, 1);
      vec_scale(buf, buf, inv, m);
      la_store_row(out + c * os, a->out_dtype, buf, m, 1);
    }
  }
}

/* ---- rms_norm_gated ----------------------------------------------------------- */

/* The group's values before normalisation (x, or x * silu(z) when gating first). */
static void rmsg_input(const xk_rms_norm_gated_args *a, float *xv, float *zv, const char *x, const char *z,
                       int64_t c, int64_t m) {
  la_load_row(xv, x + c * xk_dtype_size(a->x_dtype), a->x_dtype, m, 1);
  if (z && !a->norm_before_gate) {
    la_load_row(zv, z + c * xk_dtype_size(a->z_dtype), a->z_dtype, m, 1);
    la_silu_row(zv, m);
    vec_mul(xv, xv, zv, m);
  }
}

void XK_FN(rms_norm_gated)(const xk_rms_norm_gated_args *a, int64_t row_begin, int64_t row_end) {
  const int64_t xs = xk_dtype_size(a->x_dtype), os = xk_dtype_size(a->out_dtype);
  const int64_t zs = a->z ? xk_dtype_size(a->z_dtype) : 0;
  const int64_t wsz = xk_dtype_size(a->weight_dtype), bsz = a->bias ? xk_dtype_size(a->bias_dtype) : 0;
  float xv[ROW_PIECE], zv[ROW_PIECE], wv[ROW_PIECE];
  for (int64_t r = row_begin; r < row_end; r++) {
    const char *x = (const char *)a->x + row_offset(&a->x_rows, r) * xs;
    const char *z = a->z ? (const char *)a->z + row_offset(&a->z_rows, r) * zs : NULL;
    char *out = (char *)a->out + row_offset(&a->out_rows, r) * os;
    for (int64_t g0 = 0; g0 < a->n; g0 += a->group_size) {
      float ss = 0.0f;
      for (int64_t c = g0; c < g0 + a->group_size; c += ROW_PIECE) {
        const int64_t m = g0 + a->group_size - c < ROW_PIECE ? g0 + a->group_size - c : ROW_PIECE;
        rmsg_input(a, xv, zv, x, z, c, m);
        ss += vec_dot(xv, xv, m);
      }
      const float rstd = 1.0f / sqrtf(ss / (float)a->group_size + a->eps);
      for (int64_t c = g0; c < g0 + a->group_size; c += ROW_PIECE) {
        const int64_t m = g0 + a->group_size - c < ROW_PIECE ? g0 + a->group_size - c : ROW_PIECE;
        rmsg_input(a, xv, zv, x, z, c, m);
        la_load_row(wv, (const char *)a->weight + c * a->weight_stride * wsz, a->weight_dtype, m, a->weight_stride);
        vec_scale(xv, xv, rstd, m);
        vec_mul(xv, xv, wv, m);
        if (a->bias) {
          la_load_row(wv, (const char *)a->bias + c * a->bias_stride * bsz, a->bias_dtype, m, a->bias_stride);
          vec_add(xv, wv, m);
        }
        if (z && a->norm_before_gate) {
          la_load_row(zv, z + c * zs, a->z_dtype, m, 1);
          la_silu_row(zv, m);
          vec_mul(xv, xv, zv, m);
        }
        la_store_row(out + c * os, a->out_dtype, xv, m, 1);
      }
    }
  }
}
