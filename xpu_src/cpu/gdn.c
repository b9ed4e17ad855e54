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

/* ---- gated delta rule: shared pieces ------------------------------------------ */

/* kh = h . k and qh = h . q in one pass over h. */
static void vec_dot2(const float *h, const float *k, const float *q, int64_t n, float *kh, float *qh) {
  int64_t i = 0;
  float sk = 0.0f, sq = 0.0f;
#if XK_F32_LANES == 16
  __m512 ak = _mm512_setzero_ps(), aq = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 x = _mm512_loadu_ps(h + i);
    ak = _mm512_fmadd_ps(x, _mm512_loadu_ps(k + i), ak);
    aq = _mm512_fmadd_ps(x, _mm512_loadu_ps(q + i), aq);
  }
  sk = _mm512_reduce_add_ps(ak);
  sq = _mm512_reduce_add_ps(aq);
#elif XK_F32_LANES == 8
  __m256 ak = _mm256_setzero_ps(), aq = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(h + i);
    ak = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + i), ak);
    aq = _mm256_fmadd_ps(x, _mm256_loadu_ps(q + i), aq);
  }
  float lk[8], lq[8];
  _mm256_storeu_ps(lk, ak);
  _mm256_storeu_ps(lq, aq);
  for (int j = 0; j < 8; j++) {
    sk += lk[j];
    sq += lq[j];
  }
#endif
  for (; i < n; i++) {
    sk = fmaf(h[i], k[i], sk);
    sq = fmaf(h[i], q[i], sq);
  }
  *kh = sk;
  *qh = sq;
}

/* y[i] = a * x[i] + b * z[i] (y may equal x). */
static void vec_axpby(float *y, float a, const float *x, float b, const float *z, int64_t n) {
  int64_t i = 0;
#if XK_F32_LANES == 16
  const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(vb, _mm512_loadu_ps(z + i), _mm512_mul_ps(va, _mm512_loadu_ps(x + i))));
#elif XK_F32_LANES == 8
  const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(vb, _mm256_loadu_ps(z + i), _mm256_mul_ps(va, _mm256_loadu_ps(x + i))));
#endif
  for (; i < n; i++) y[i] = fmaf(b, z[i], a * x[i]);
}

/* y[i] += a * x[i] and w[i] += b * x[i] in one pass over x. */
static void vec_axpy2(float *y, float a, float *w, float b, const float *x, int64_t n) {
  int64_t i = 0;
#if XK_F32_LANES == 16
  const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, v, _mm512_loadu_ps(y + i)));
    _mm512_storeu_ps(w + i, _mm512_fmadd_ps(vb, v, _mm512_loadu_ps(w + i)));
  }
#elif XK_F32_LANES == 8
  const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, v, _mm256_loadu_ps(y + i)));
    _mm256_storeu_ps(w + i, _mm256_fmadd_ps(vb, v, _mm256_loadu_ps(w + i)));
  }
#endif
  for (; i < n; i++) {
    y[i] = fmaf(a, x[i], y[i]);
    w[i] = fmaf(b, x[i], w[i]);
  }
}

/* A [V, K] fp32 state with element (v, k) at p[v * sv + k * sk]. */
typedef struct st_view {
  float *p;
  int64_t sv, sk;
} st_view;

/* Sequence n: batch row, first token and length. */
typedef struct gdn_seq {
  int64_t row, bos, len;
} gdn_seq;

static gdn_seq gdn_seq_of(const xk_gdn_args *a, int64_t n) {
  gdn_seq s = {n, 0, a->seqlen};
  if (a->cu_seqlens.data) {
    s.row = 0;
    s.bos = la_at(&a->cu_seqlens, n);
    s.len = la_at(&a->cu_seqlens, n + 1) - s.bos;
  }
  return s;
}

static inline const char *gdn_ptr(const xk_gdn_tensor *t, int64_t n, int64_t tok, int64_t h) {
  return (const char *)t->data + (n * t->s_seq + tok * t->s_tok + h * t->s_head) * xk_dtype_size(t->dtype);
}

static inline float gdn_scalar(const xk_gdn_tensor *t, int64_t n, int64_t tok, int64_t h) {
  return xk_load_scalar(gdn_ptr(t, n, tok, h), t->dtype, 0);
}

static int64_t gdn_index(const xk_gdn_args *a, int64_t n, int64_t col) {
  const xk_la_index v = {a->state_indices, 1, a->state_indices_dtype};
  return la_at(&v, n * a->idx_s_seq + col * a->idx_s_tok);
}

/* Loads token `tok` of q and k (head h) as f32, l2-normalised if asked, q scaled. */
static void gdn_load_qk(const xk_gdn_args *a, int64_t n, int64_t tok, int64_t h, float *q, float *k) {
  la_load_row(q, gdn_ptr(&a->q, n, tok, h), a->q.dtype, a->head_k_dim, 1);
  la_load_row(k, gdn_ptr(&a->k, n, tok, h), a->k.dtype, a->head_k_dim, 1);
  float qs = a->scale;
  if (a->use_qk_l2norm) {
    qs /= sqrtf(vec_dot(q, q, a->head_k_dim) + 1e-6f);
    vec_scale(k, k, 1.0f / sqrtf(vec_dot(k, k, a->head_k_dim) + 1e-6f), a->head_k_dim);
  }
  vec_scale(q, q, qs, a->head_k_dim);
}

static inline void prefetch_bytes(const char *p, int64_t n) {
  for (int64_t i = 0; i < n; i += 64) __builtin_prefetch(p + i, 0, 3);
}

static inline void prefetch_bytes_w(char *p, int64_t n) {
  for (int64_t i = 0; i < n; i += 64) __builtin_prefetch(p + i, 1, 3);
}

/* Prefetches q, k (head h), v and o (head hv) of tokens [t0, t1): the rows of
 * one head are a head-stride apart in memory, too far for the hardware prefetcher. */
static void gdn_prefetch_tokens(const xk_gdn_args *a, int64_t row, int64_t t0, int64_t t1, int64_t h, int64_t hv) {
  const int64_t qb = a->head_k_dim * xk_dtype_size(a->q.dtype), kb = a->head_k_dim * xk_dtype_size(a->k.dtype);
  const int64_t vb = a->head_v_dim * xk_dtype_size(a->v.dtype);
  for (int64_t t = t0; t < t1; t++) {
    prefetch_bytes(gdn_ptr(&a->q, row, t, h), qb);
    prefetch_bytes(gdn_ptr(&a->k, row, t, h), kb);
    prefetch_bytes(gdn_ptr(&a->v, row, t, hv), vb);
    prefetch_bytes_w((char *)a->o + (row * a->o_s_seq + t * a->o_s_tok + hv * a->o_s_head) * xk_dtype_size(a->o_dtype),
                     a->head_v_dim * xk_dtype_size(a->o_dtype));
  }
}

static void gdn_store_o(const xk_gdn_args *a, int64_t n, int64_t tok, int64_t hv, const float *o) {
  char *dst = (char *)a->o + (n * a->o_s_seq + tok * a->o_s_tok + hv * a->o_s_head) * xk_dtype_size(a->o_dtype);
  la_store_row(dst, a->o_dtype, o, a->head_v_dim, 1);
}

static void gdn_zero_outputs(const xk_gdn_args *a, gdn_seq s, int64_t hv, float *zeros) {
  memset(zeros, 0, (size_t)a->head_v_dim * sizeof(float));
  for (int64_t t = 0; t < s.len; t++) gdn_store_o(a, s.row, s.bos + t, hv, zeros);
}

/* ---- fused_recurrent_gated_delta_rule -------------------------------------------- */

/*
 * One token: dst = exp(g) src + d k^T with d = beta (v - exp(g) src k), and
 * o = dst q = exp(g) (src q) + (k . q) d. dst may equal src (rows are read
 * before they are written). `tmp` holds 2V floats.
 */
static void gdn_token(st_view src, st_view dst, const float *q, const float *k, const float *v, float decay,
                      float beta, int64_t K, int64_t V, float *o, float *tmp) {
  const float qk = vec_dot(q, k, K);
  if (src.sk == 1 && dst.sk == 1) {
    /* [V, K] rows contiguous in K: one pass per row. */
    for (int64_t i = 0; i < V; i++) {
      const float *row = src.p + i * src.sv;
      float kh, qh;
      vec_dot2(row, k, q, K, &kh, &qh);
      const float d = beta * (v[i] - decay * kh);
      o[i] = fmaf(decay, qh, d * qk);
      vec_axpby(dst.p + i * dst.sv, decay, row, d, k, K);
    }
  } else if (src.sv == 1 && dst.sv == 1) {
    /* K-first layout: rows contiguous in V; S k and S q accumulate over rows. */
    float *kh = tmp, *qh = tmp + V;
    memset(kh, 0, (size_t)V * sizeof(float));
    memset(qh, 0, (size_t)V * sizeof(float));
    for (int64_t j = 0; j < K; j++) vec_axpy2(kh, k[j], qh, q[j], src.p + j * src.sk, V);
    float *d = kh; /* d overwrites S k */
    for (int64_t i = 0; i < V; i++) {
      d[i] = beta * (v[i] - decay * kh[i]);
      o[i] = fmaf(decay, qh[i], d[i] * qk);
    }
    for (int64_t j = 0; j < K; j++) vec_axpby(dst.p + j * dst.sk, decay, src.p + j * src.sk, k[j], d, V);
  } else {
    for (int64_t i = 0; i < V; i++) {
      float kh = 0.0f, qh = 0.0f;
      for (int64_t j = 0; j < K; j++) {
        const float h = src.p[i * src.sv + j * src.sk];
        kh = fmaf(h, k[j], kh);
        qh = fmaf(h, q[j], qh);
      }
      const float d = beta * (v[i] - decay * kh);
      o[i] = fmaf(decay, qh, d * qk);
      for (int64_t j = 0; j < K; j++) {
        const float h = src.p[i * src.sv + j * src.sk];
        dst.p[i * dst.sv + j * dst.sk] = fmaf(d, k[j], decay * h);
      }
    }
  }
}

static void recurrent_block(const xk_gdn_args *a, float *scratch, int64_t n, int64_t hv) {
  const int64_t K = a->head_k_dim, V = a->head_v_dim, h = hv / (a->num_v_heads / a->num_heads);
  const gdn_seq s = gdn_seq_of(a, n);
  if (s.len <= 0) return;
  float *tmp_state = scratch, *q = tmp_state + K * V, *k = q + K, *v = k + K, *o = v + V, *tmp = o + V;
  int64_t slot0 = n;
  if (a->state_indices) {
    const int64_t col = a->num_accepted_tokens.data ? la_at(&a->num_accepted_tokens, n) - 1 : 0;
    slot0 = gdn_index(a, n, a->indices_2d ? col : 0);
  }
  if (slot0 < 0) {
    gdn_zero_outputs(a, s, hv, o);
    return;
  }
  const int64_t ss = a->state_s_slot, sh = a->state_s_head;
  st_view cur = {a->state + slot0 * ss + hv * sh, a->state_s_v, a->state_s_k};
  /* The scratch state mirrors the pool's contiguous dim. */
  const st_view tmpv = a->state_s_k == 1 || a->state_s_v != 1 ? (st_view){tmp_state, K, 1}
                                                                : (st_view){tmp_state, 1, V};
  for (int64_t t = 0; t < s.len; t++) {
    const int64_t tok = s.bos + t;
    if (t + 1 < s.len) gdn_prefetch_tokens(a, s.row, tok + 1, tok + 2, h, hv);
    st_view dst = cur;
    if (a->indices_2d) {
      const int64_t slot = gdn_index(a, n, t);
      if (slot >= 0) {
        dst = (st_view){a->state + slot * ss + hv * sh, a->state_s_v, a->state_s_k};
      } else {
        dst = tmpv;
      }
    }
    gdn_load_qk(a, s.row, tok, h, q, k);
    la_load_row(v, gdn_ptr(&a->v, s.row, tok, hv), a->v.dtype, V, 1);
    const float decay = expf(gdn_scalar(&a->g, s.row, tok, hv));
    const float beta = a->beta.data ? gdn_scalar(&a->beta, s.row, tok, hv) : 1.0f;
    gdn_token(cur, dst, q, k, v, decay, beta, K, V, o, tmp);
    gdn_store_o(a, s.row, tok, hv, o);
    cur = dst;
  }
}

void XK_FN(gdn_recurrent)(const xk_gdn_args *a, float *scratch, int64_t block_begin, int64_t block_end) {
  for (int64_t b = block_begin; b < block_end; b++) recurrent_block(a, scratch, b / a->num_v_heads, b % a->num_v_heads);
}


/* ---- chunk_gated_delta_rule ---------------------------------------------------- */

#define CHUNK 64

enum { TRI_NONE = 0, TRI_N = 1, TRI_P = 2 };

/*
 * C[i][j] (+)= alpha * sum_p A(i, p) B[p][j] for i < M, j < N, p < P, with
 * A(i, p) = A[i * rsa + p * csa], B row-major (ldb), C row-major (ldc).
 * tri == TRI_N: row block i0 only computes columns j < i0 + 4 (lower-triangular
 * results); tri == TRI_P: row block i0 only sums p < i0 + 4 (A lower triangular).
 */
#if XK_F32_LANES == 16
static void micro_4x64(int64_t P, const float *a0, const float *a1, const float *a2, const float *a3, int64_t csa,
                       const float *B, int64_t ldb, float *C, int64_t ldc, int64_t mr, int64_t nc, float alpha,
                       int accumulate) {
  __mmask16 m[4];
  for (int v = 0; v < 4; v++) {
    const int64_t cnt = nc - 16 * v;
    m[v] = cnt >= 16 ? (__mmask16)0xffff : cnt <= 0 ? (__mmask16)0 : (__mmask16)((1u << cnt) - 1u);
  }
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00;
  __m512 c10 = c00, c11 = c00, c12 = c00, c13 = c00;
  __m512 c20 = c00, c21 = c00, c22 = c00, c23 = c00;
  __m512 c30 = c00, c31 = c00, c32 = c00, c33 = c00;
  for (int64_t p = 0; p < P; p++) {
    const float *b = B + p * ldb;
    const __m512 b0 = _mm512_maskz_loadu_ps(m[0], b), b1 = _mm512_maskz_loadu_ps(m[1], b + 16);
    const __m512 b2 = _mm512_maskz_loadu_ps(m[2], b + 32), b3 = _mm512_maskz_loadu_ps(m[3], b + 48);
    __m512 x = _mm512_set1_ps(a0[p * csa]);
    c00 = _mm512_fmadd_ps(x, b0, c00), c01 = _mm512_fmadd_ps(x, b1, c01);
    c02 = _mm512_fmadd_ps(x, b2, c02), c03 = _mm512_fmadd_ps(x, b3, c03);
    x = _mm512_set1_ps(a1[p * csa]);
    c10 = _mm512_fmadd_ps(x, b0, c10), c11 = _mm512_fmadd_ps(x, b1, c11);
    c12 = _mm512_fmadd_ps(x, b2, c12), c13 = _mm512_fmadd_ps(x, b3, c13);
    x = _mm512_set1_ps(a2[p * csa]);
    c20 = _mm512_fmadd_ps(x, b0, c20), c21 = _mm512_fmadd_ps(x, b1, c21);
    c22 = _mm512_fmadd_ps(x, b2, c22), c23 = _mm512_fmadd_ps(x, b3, c23);
    x = _mm512_set1_ps(a3[p * csa]);
    c30 = _mm512_fmadd_ps(x, b0, c30), c31 = _mm512_fmadd_ps(x, b1, c31);
    c32 = _mm512_fmadd_ps(x, b2, c32), c33 = _mm512_fmadd_ps(x, b3, c33);
  }
  __m512 acc[4][4] = {{c00, c01, c02, c03}, {c10, c11, c12, c13}, {c20, c21, c22, c23}, {c30, c31, c32, c33}};
  const __m512 va = _mm512_set1_ps(alpha);
  for (int64_t r = 0; r < mr; r++) {
    float *c = C + r * ldc;
    for (int v = 0; v < 4; v++) {
      if (!m[v]) continue;
      __m512 y = accumulate ? _mm512_fmadd_ps(va, acc[r][v], _mm512_maskz_loadu_ps(m[v], c + 16 * v))
                            : _mm512_mul_ps(va, acc[r][v]);
      _mm512_mask_storeu_ps(c + 16 * v, m[v], y);
    }
  }
}
#define NR 64
#elif XK_F32_LANES == 8
static void micro_4x16(int64_t P, const float *a0, const float *a1, const float *a2, const float *a3, int64_t csa,
                       const float *B, int64_t ldb, float *C, int64_t ldc, int64_t mr, int64_t nc, float alpha,
                       int accumulate) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nc), lane);
  const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nc - 8), lane);
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  for (int64_t p = 0; p < P; p++) {
    const float *b = B + p * ldb;
    const __m256 b0 = _mm256_maskload_ps(b, m0), b1 = _mm256_maskload_ps(b + 8, m1);
    __m256 x = _mm256_set1_ps(a0[p * csa]);
    c00 = _mm256_fmadd_ps(x, b0, c00), c01 = _mm256_fmadd_ps(x, b1, c01);
    x = _mm256_set1_ps(a1[p * csa]);
    c10 = _mm256_fmadd_ps(x, b0, c10), c11 = _mm256_fmadd_ps(x, b1, c11);
    x = _mm256_set1_ps(a2[p * csa]);
    c20 = _mm256_fmadd_ps(x, b0, c20), c21 = _mm256_fmadd_ps(x, b1, c21);
    x = _mm256_set1_ps(a3[p * csa]);
    c30 = _mm256_fmadd_ps(x, b0, c30), c31 = _mm256_fmadd_ps(x, b1, c31);
  }
  __m256 acc[4][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
  const __m256 va = _mm256_set1_ps(alpha);
  for (int64_t r = 0; r < mr; r++) {
    float *c = C + r * ldc;
    __m256 y0 = _mm256_mul_ps(va, acc[r][0]), y1 = _mm256_mul_ps(va, acc[r][1]);
    if (accumulate) {
      y0 = _mm256_fmadd_ps(va, acc[r][0], _mm256_maskload_ps(c, m0));
      y1 = _mm256_fmadd_ps(va, acc[r][1], _mm256_maskload_ps(c + 8, m1));
    }
    _mm256_maskstore_ps(c, m0, y0);
    _mm256_maskstore_ps(c + 8, m1, y1);
  }
}
#define NR 16
#else
static void micro_generic(int64_t P, const float *const *a, int64_t csa, const float *B, int64_t ldb, float *C,
                          int64_t ldc, int64_t mr, int64_t nc, float alpha, int accumulate) {
  float acc[4][16];
  for (int64_t r = 0; r < mr; r++)
    for (int64_t j = 0; j < nc; j++) acc[r][j] = 0.0f;
  for (int64_t p = 0; p < P; p++) {
    const float *b = B + p * ldb;
    for (int64_t r = 0; r < mr; r++) {
      const float x = a[r][p * csa];
      for (int64_t j = 0; j < nc; j++) acc[r][j] = fmaf(x, b[j], acc[r][j]);
    }
  }
  for (int64_t r = 0; r < mr; r++)
    for (int64_t j = 0; j < nc; j++)
      C[r * ldc + j] = accumulate ? fmaf(alpha, acc[r][j], C[r * ldc + j]) : alpha * acc[r][j];
}
#define NR 16
#endif

static void gemm(int64_t M, int64_t N, int64_t P, const float *A, int64_t rsa, int64_t csa, const float *B,
                 int64_t ldb, float *C, int64_t ldc, float alpha, int accumulate, int tri) {
  /* Column panels outermost: a panel of B (P x NR) stays in L1 across row blocks. */
  for (int64_t j0 = 0; j0 < N; j0 += NR) {
    for (int64_t i0 = 0; i0 < M; i0 += 4) {
      const int64_t mr = M - i0 < 4 ? M - i0 : 4;
      int64_t nlim = N, plim = P;
      if (tri == TRI_N && i0 + mr < nlim) nlim = i0 + mr;
      if (tri == TRI_P && i0 + mr < plim) plim = i0 + mr;
      if (j0 >= nlim) continue;
      const int64_t nc = nlim - j0 < NR ? nlim - j0 : NR;
      const float *a[4];
      for (int64_t r = 0; r < 4; r++) a[r] = A + (i0 + (r < mr ? r : mr - 1)) * rsa;
#if XK_F32_LANES == 16
      micro_4x64(plim, a[0], a[1], a[2], a[3], csa, B + j0, ldb, C + i0 * ldc + j0, ldc, mr, nc, alpha, accumulate);
#elif XK_F32_LANES == 8
      micro_4x16(plim, a[0], a[1], a[2], a[3], csa, B + j0, ldb, C + i0 * ldc + j0, ldc, mr, nc, alpha, accumulate);
#else
      micro_generic(plim, a, csa, B + j0, ldb, C + i0 * ldc + j0, ldc, mr, nc, alpha, accumulate);
#endif
    }
  }
}

/* out[j] = exp(x - y[j]) for j < n. */
static void vec_exp_sub(float *out, float x, const float *y, int64_t n) {
  int64_t j = 0;
#if XK_F32_LANES == 16
  for (; j + 16 <= n; j += 16)
    _mm512_storeu_ps(out + j, la_exp16(_mm512_sub_ps(_mm512_set1_ps(x), _mm512_loadu_ps(y + j))));
#elif XK_F32_LANES == 8
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(out + j, la_exp8(_mm256_sub_ps(_mm256_set1_ps(x), _mm256_loadu_ps(y + j))));
#endif
  for (; j < n; j++) out[j] = expf(x - y[j]);
}

/* Scratch of one chunked block, as offsets into the caller's float buffer. */
typedef struct chunk_scratch {
  float *S;  /* [K][V] state */
  float *Q;  /* [C][K] q (scaled), then q * exp(G) */
  float *Kc; /* [C][K] k, then k * exp(G_last - G) */
  float *KT; /* [K][C] k transposed */
  float *X;  /* [C][K + V]: beta exp(G) k | beta v, then W | U */
  float *A;  /* [C][C] */
  float *P;  /* [C][C] */
  float *D;  /* [C][V] U - W S */
  float *O;  /* [C][V] */
  float *G, *beta, *e; /* [C] cumulative log decay, beta, exp row */
  float *row;          /* max(K, V) */
} chunk_scratch;

static int64_t chunk_layout(int64_t K, int64_t V, float *base, chunk_scratch *s) {
  const int64_t C = CHUNK;
  const int64_t sizes[] = {K * V, C * K, C * K, K * C, C * (K + V), C * C, C * C, C * V, C * V, C, C, C,
                           K > V ? K : V};
  float **ptrs[] = {&s->S, &s->Q, &s->Kc, &s->KT, &s->X, &s->A, &s->P, &s->D, &s->O, &s->G, &s->beta, &s->e,
                    &s->row};
  int64_t off = 0;
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
    if (base) *ptrs[i] = base + off;
    off += (sizes[i] + 15) & ~(int64_t)15; /* keep each piece 64-byte aligned relative to base */
  }
  return off;
}

int64_t XK_FN(gdn_scratch_floats)(int64_t K, int64_t V, int32_t chunked) {
  if (chunked) {
    chunk_scratch s = {0};
    return chunk_layout(K, V, NULL, &s) + 16;
  }
  return K * V + 2 * K + 4 * V + 64;
}

/* One chunk of Cn tokens starting at token `tok0`; S advances in place. */
static void chunk_step(const xk_gdn_args *a, const chunk_scratch *s, gdn_seq seq, int64_t tok0, int64_t Cn,
                       int64_t h, int64_t hv) {
  const int64_t K = a->head_k_dim, V = a->head_v_dim, C = CHUNK, KV = K + V;
  /* The next chunk's inputs arrive while this one computes: a quarter of its
   * tokens before each of the four GEMM phases, so the prefetches do not
   * queue behind each other. */
  const int64_t end = seq.bos + seq.len, n0 = tok0 + Cn, n1 = n0 + C < end ? n0 + C : end;
  const int64_t pq = (n1 - n0 + 3) / 4;
#define PREFETCH_PART(i) \
  gdn_prefetch_tokens(a, seq.row, n0 + (i) * pq < n1 ? n0 + (i) * pq : n1, n0 + ((i) + 1) * pq < n1 ? n0 + ((i) + 1) * pq : n1, h, hv)
  /* 1. Load the chunk: q (normalised, scaled), k, beta v; cumulative log decay. */
  float gsum = 0.0f;
  for (int64_t i = 0; i < Cn; i++) {
    const int64_t tok = tok0 + i;
    gdn_load_qk(a, seq.row, tok, h, s->Q + i * K, s->Kc + i * K);
    la_load_row(s->X + i * KV + K, gdn_ptr(&a->v, seq.row, tok, hv), a->v.dtype, V, 1);
    gsum += gdn_scalar(&a->g, seq.row, tok, hv);
    s->G[i] = gsum;
    s->beta[i] = a->beta.data ? gdn_scalar(&a->beta, seq.row, tok, hv) : 1.0f;
  }
  for (int64_t i = 0; i < Cn; i++)
    for (int64_t j = 0; j < K; j++) s->KT[j * C + i] = s->Kc[i * K + j];
  PREFETCH_PART(0);
  /* 2. A = k k^T and P = q k^T (lower triangles), then the decay and beta factors. */
  gemm(Cn, Cn, K, s->Kc, K, 1, s->KT, C, s->A, C, 1.0f, 0, TRI_N);
  gemm(Cn, Cn, K, s->Q, K, 1, s->KT, C, s->P, C, 1.0f, 0, TRI_N);
  for (int64_t i = 0; i < Cn; i++) {
    float *arow = s->A + i * C, *prow = s->P + i * C;
    vec_exp_sub(s->e, s->G[i], s->G, i + 1);
    for (int64_t j = 0; j < i; j++) arow[j] *= s->beta[i] * s->e[j];
    for (int64_t j = i; j < C; j++) arow[j] = 0.0f;
    vec_mul(prow, prow, s->e, i + 1);
    for (int64_t j = i + 1; j < C; j++) prow[j] = 0.0f;
  }
  /* 3. Right-hand sides: beta exp(G) k | beta v. */
  for (int64_t i = 0; i < Cn; i++) {
    const float eg = expf(s->G[i]);
    vec_scale(s->X + i * KV, s->Kc + i * K, s->beta[i] * eg, K);
    vec_scale(s->X + i * KV + K, s->X + i * KV + K, s->beta[i], V);
  }
  PREFETCH_PART(1);
  /* 4. (I + A) [W | U] = X by blocked forward substitution. */
  for (int64_t i0 = 0; i0 < Cn; i0 += 4) {
    const int64_t mr = Cn - i0 < 4 ? Cn - i0 : 4;
    if (i0 > 0) gemm(mr, KV, i0, s->A + i0 * C, C, 1, s->X, KV, s->X + i0 * KV, KV, -1.0f, 1, TRI_NONE);
    for (int64_t r = 1; r < mr; r++) {
      float *xi = s->X + (i0 + r) * KV;
      for (int64_t j = i0; j < i0 + r; j++) vec_axpby(xi, 1.0f, xi, -s->A[(i0 + r) * C + j], s->X + j * KV, KV);
    }
  }
  /* 5. D = U - W S. */
  for (int64_t i = 0; i < Cn; i++) memcpy(s->D + i * V, s->X + i * KV + K, (size_t)V * sizeof(float));
  gemm(Cn, V, K, s->X, KV, 1, s->S, V, s->D, V, -1.0f, 1, TRI_NONE);
  PREFETCH_PART(2);
  /* 6. O = (q exp(G)) S + P D. */
  for (int64_t i = 0; i < Cn; i++) vec_scale(s->Q + i * K, s->Q + i * K, expf(s->G[i]), K);
  gemm(Cn, V, K, s->Q, K, 1, s->S, V, s->O, V, 1.0f, 0, TRI_NONE);
  gemm(Cn, V, Cn, s->P, C, 1, s->D, V, s->O, V, 1.0f, 1, TRI_P);
  PREFETCH_PART(3);
#undef PREFETCH_PART
  /* 7. S = exp(G_last) S + (k exp(G_last - G))^T D. */
  const float glast = s->G[Cn - 1];
  vec_scale(s->S, s->S, expf(glast), K * V);
  vec_exp_sub(s->e, glast, s->G, Cn);
  for (int64_t i = 0; i < Cn; i++) vec_scale(s->Kc + i * K, s->Kc + i * K, s->e[i], K);
  gemm(K, V, Cn, s->Kc, 1, K, s->D, V, s->S, V, 1.0f, 1, TRI_NONE);
  for (int64_t i = 0; i < Cn; i++) gdn_store_o(a, seq.row, tok0 + i, hv, s->O + i * V);
}

static void chunk_block(const xk_gdn_args *a, float *scratch, int64_t n, int64_t hv) {
  const int64_t K = a->head_k_dim, V = a->head_v_dim, h = hv / (a->num_v_heads / a->num_heads);
  const gdn_seq seq = gdn_seq_of(a, n);
  if (seq.len <= 0) return;
  chunk_scratch s = {0};
  chunk_layout(K, V, scratch, &s);
  int64_t slot = n;
  if (a->state_indices) slot = gdn_index(a, n, 0);
  if (a->state && slot < 0) {
    gdn_zero_outputs(a, seq, hv, s.row);
    return;
  }
  const int load = a->state && (!a->has_initial_state.data || la_at(&a->has_initial_state, n));
  float *pool = a->state ? a->state + slot * a->state_s_slot + hv * a->state_s_head : NULL;
  /* S[k][v] from the pool's (v, k) element. */
  for (int64_t j = 0; j < K; j++) {
    float *srow = s.S + j * V;
    if (load) {
      for (int64_t i = 0; i < V; i++) srow[i] = pool[i * a->state_s_v + j * a->state_s_k];
    } else {
      memset(srow, 0, (size_t)V * sizeof(float));
    }
  }
  for (int64_t c0 = 0; c0 < seq.len; c0 += CHUNK) {
    const int64_t Cn = seq.len - c0 < CHUNK ? seq.len - c0 : CHUNK;
    chunk_step(a, &s, seq, seq.bos + c0, Cn, h, hv);
  }
  if (pool && a->output_final_state) {
    for (int64_t j = 0; j < K; j++)
      for (int64_t i = 0; i < V; i++) pool[i * a->state_s_v + j * a->state_s_k] = s.S[j * V + i];
  }
}

void XK_FN(gdn_chunk)(const xk_gdn_args *a, float *scratch, int64_t block_begin, int64_t block_end) {
  /* Align the scratch pieces to 64 bytes. */
  float *base = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
  for (int64_t b = block_begin; b < block_end; b++) chunk_block(a, base, b / a->num_v_heads, b % a->num_v_heads);
}
