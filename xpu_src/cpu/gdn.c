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

/* The row loops call vec_dot2 and vec_axpby once per state row: inlined (a
 * second call site made GCC keep them out of line, and the calls slowed B = 1
 * decode by ~10%, 133 -> 150 us, on Zen 3). */
#define ALWAYS_INLINE inline __attribute__((always_inline))

/* kh = h . k and qh = h . q in one pass over h. */
static ALWAYS_INLINE void vec_dot2(const float *h, const float *k, const float *q, int64_t n, float *kh, float *qh) {
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
static ALWAYS_INLINE void vec_axpby(float *y, float a, const float *x, float b, const float *z, int64_t n) {
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

/* Row i of a [V, K] state (rows contiguous in K), as gdn_token defines it:
 * dst row = exp(g) src row + d k with d = beta (v[i] - exp(g) src row . k),
 * o[i] = exp(g) (src row . q) + (k . q) d. */
static inline void gdn_row(st_view src, st_view dst, int64_t i, const float *q, const float *k, const float *v,
                           float decay, float beta, float qk, int64_t K, float *o) {
  const float *row = src.p + i * src.sv;
  float kh, qh;
  vec_dot2(row, k, q, K, &kh, &qh);
  const float d = beta * (v[i] - decay * kh);
  o[i] = fmaf(decay, qh, d * qk);
  vec_axpby(dst.p + i * dst.sv, decay, row, d, k, K);
}

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
  for (int64_t i = 0; i < n; i += 64) LA_PREFETCH(p + i, 0, 3);
}

static inline void prefetch_bytes_w(char *p, int64_t n) {
  for (int64_t i = 0; i < n; i += 64) LA_PREFETCH(p + i, 1, 3);
}

/* Prefetches q, k (head h), v, g, beta and o (head hv) of tokens [t0, t1): the rows of
 * one head are a head-stride apart in memory, too far for the hardware prefetcher. */
static void gdn_prefetch_tokens(const xk_gdn_args *a, int64_t row, int64_t t0, int64_t t1, int64_t h, int64_t hv) {
  const int64_t qb = a->head_k_dim * xk_dtype_size(a->q.dtype), kb = a->head_k_dim * xk_dtype_size(a->k.dtype);
  const int64_t vb = a->head_v_dim * xk_dtype_size(a->v.dtype);
  for (int64_t t = t0; t < t1; t++) {
    prefetch_bytes(gdn_ptr(&a->q, row, t, h), qb);
    prefetch_bytes(gdn_ptr(&a->k, row, t, h), kb);
    prefetch_bytes(gdn_ptr(&a->v, row, t, hv), vb);
    LA_PREFETCH(gdn_ptr(&a->g, row, t, hv), 0, 3);
    if (a->beta.data) LA_PREFETCH(gdn_ptr(&a->beta, row, t, hv), 0, 3);
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
 * How far ahead (bytes) the state rows are prefetched into L2 while a cold
 * state streams through: the L2 streamer alone keeps too few lines in flight
 * (it restarts at every 4 KiB page). Decode with a cold 960 MiB pool (K = V =
 * 128, B = 64, standalone harness) ran 15-17% faster with rows 3-4 KiB ahead
 * prefetched (into the next block's state at the end); 2 KiB gained less,
 * 8-16 KiB no more. AVX2 on Zen 3 (B = 64, cold 256 MiB pool, harness,
 * CPU time): 2, 4, 8, 16 KiB ahead within the noise (9.7-10.8 ms), into L1
 * (prefetcht0) the same, no prefetch 2x slower (12 GB/s); streaming stores
 * of the updated rows 2.5-5x slower (5-10 GB/s: the lines were just read).
 */
#define STATE_PF_BYTES 4096

/* The state rows to prefetch while a token runs: its own (`self`, when it
 * comes cold from the pool) and the next block's first rows (`next.p`, NULL
 * for none; same layout as the pool). */
typedef struct st_prefetch {
  int self;
  st_view next;
} st_prefetch;

static inline void prefetch_row_l2(const float *p, int64_t bytes) {
  for (int64_t i = 0; i < bytes; i += 64) LA_PREFETCH((const char *)p + i, 0, 2);
}

/* Prefetches row `r` of a state with `rows` rows of stride `rs` (rows past
 * the end: the next state's, with stride `ns`). */
static inline void prefetch_state_row(const st_prefetch *pf, const float *p, int64_t rs, int64_t ns, int64_t r,
                                      int64_t rows, int64_t row_bytes) {
  if (r < rows) {
    if (pf->self) prefetch_row_l2(p + r * rs, row_bytes);
  } else if (pf->next.p && r - rows < rows) {
    prefetch_row_l2(pf->next.p + (r - rows) * ns, row_bytes);
  }
}

#if XK_F32_LANES == 16
/* Streams a state's rows run in (V a multiple of it; else one): row i of
 * each quarter in turn, so four runs of lines are in flight at once. With
 * each stream prefetched ahead, decode from a cold 960 MiB pool (K = V =
 * 128, standalone harness) ran 12-20% faster than with one stream. */
#define ROW_STREAMS 4

/* gdn_token's [V, K] rows for K = 16 * nc (nc <= 8), each row held in
 * registers from its dots with k and q to exp(g) row + d k: vec_dot2's and
 * vec_axpby's operations in the same order (bit-identical), without the
 * loop overhead and the second load of the row. Rows run as ROW_STREAMS
 * interleaved streams (rows are independent: the order changes no result). */
static inline __attribute__((always_inline)) void gdn_rows_reg(st_view src, st_view dst, const float *q,
                                                               const float *k, const float *v, float decay,
                                                               float beta, float qk, int64_t V, float *o,
                                                               const st_prefetch *pf, int64_t ahead, const int nc) {
  __m512 kk[8], qq[8];
  const int prefetch = pf->self || pf->next.p;
  const int64_t row_bytes = 64 * nc, streams = V % ROW_STREAMS == 0 ? ROW_STREAMS : 1, part = V / streams;
#pragma GCC unroll 8
  for (int c = 0; c < nc; c++) kk[c] = _mm512_loadu_ps(k + 16 * c), qq[c] = _mm512_loadu_ps(q + 16 * c);
  const __m512 va = _mm512_set1_ps(decay);
  if (pf->self) { /* the first rows of every stream but the first (the previous block fetched those) */
    for (int64_t st = 1; st < streams; st++)
      for (int64_t r = st * part; r < st * part + ahead && r < (st + 1) * part; r++)
        prefetch_row_l2(src.p + r * src.sv, row_bytes);
  }
  for (int64_t i = 0; i < part; i++) {
    for (int64_t st = 0; st < streams; st++) {
      const int64_t r = st * part + i;
      if (prefetch) {
        if (st + 1 < streams) {
          if (pf->self && i + ahead < part) prefetch_row_l2(src.p + (r + ahead) * src.sv, row_bytes);
        } else {
          prefetch_state_row(pf, src.p, src.sv, pf->next.sv, r + ahead, V, row_bytes);
        }
      }
      const float *row = src.p + r * src.sv;
      __m512 x[8], ak = _mm512_setzero_ps(), aq = _mm512_setzero_ps();
#pragma GCC unroll 8
      for (int c = 0; c < nc; c++) {
        x[c] = _mm512_loadu_ps(row + 16 * c);
        ak = _mm512_fmadd_ps(x[c], kk[c], ak);
        aq = _mm512_fmadd_ps(x[c], qq[c], aq);
      }
      const float kh = _mm512_reduce_add_ps(ak), qh = _mm512_reduce_add_ps(aq);
      const float d = beta * (v[r] - decay * kh);
      o[r] = fmaf(decay, qh, d * qk);
      const __m512 vb = _mm512_set1_ps(d);
      float *out = dst.p + r * dst.sv;
#pragma GCC unroll 8
      for (int c = 0; c < nc; c++) _mm512_storeu_ps(out + 16 * c, _mm512_fmadd_ps(vb, kk[c], _mm512_mul_ps(va, x[c])));
    }
  }
}
#elif XK_F32_LANES == 8
/* Rows run in groups of this many on AVX2 (see gdn_rows_avx2). */
#define ROW_GROUP 4

/* 8 x 8 transpose: t[j] lane i = x[i] lane j. */
static inline __attribute__((always_inline)) void transpose8(const __m256 x[8], __m256 t[8]) {
  __m256 a[8], b[8];
  for (int i = 0; i < 8; i += 2) {
    a[i] = _mm256_unpacklo_ps(x[i], x[i + 1]);
    a[i + 1] = _mm256_unpackhi_ps(x[i], x[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    b[i] = _mm256_shuffle_ps(a[i], a[i + 2], 0x44);
    b[i + 1] = _mm256_shuffle_ps(a[i], a[i + 2], 0xee);
    b[i + 2] = _mm256_shuffle_ps(a[i + 1], a[i + 3], 0x44);
    b[i + 3] = _mm256_shuffle_ps(a[i + 1], a[i + 3], 0xee);
  }
  for (int i = 0; i < 4; i++) {
    t[i] = _mm256_permute2f128_ps(b[i], b[i + 4], 0x20);
    t[i + 4] = _mm256_permute2f128_ps(b[i], b[i + 4], 0x31);
  }
}

/* One pass over i < K (step 8) for two row groups: the dots with k and q of
 * group `dr` into acc (rows' k dots in acc[0..3], q dots in acc[4..7]) when
 * `dot`, and the update dst = decay src + d k of group `us` / `ud` (d from
 * dd) when `upd`. */
static inline __attribute__((always_inline)) void rows_pass(const float *const *dr, __m256 *acc, const float *const *us,
                                                            float *const *ud, const float *dd, __m256 va,
                                                            const float *k, const float *q, int64_t K, int dot,
                                                            int upd) {
  __m256 vb[ROW_GROUP];
  for (int r = 0; r < ROW_GROUP; r++) vb[r] = _mm256_broadcast_ss(dd + r);
  for (int64_t i = 0; i < K; i += 8) {
    const __m256 kk = _mm256_loadu_ps(k + i);
    if (dot) {
      const __m256 qq = _mm256_loadu_ps(q + i);
#pragma GCC unroll 4
      for (int r = 0; r < ROW_GROUP; r++) {
        const __m256 x = _mm256_loadu_ps(dr[r] + i);
        acc[r] = _mm256_fmadd_ps(x, kk, acc[r]);
        acc[ROW_GROUP + r] = _mm256_fmadd_ps(x, qq, acc[ROW_GROUP + r]);
      }
    }
    if (upd) {
#pragma GCC unroll 4
      for (int r = 0; r < ROW_GROUP; r++)
        _mm256_storeu_ps(ud[r] + i, _mm256_fmadd_ps(vb[r], kk, _mm256_mul_ps(va, _mm256_loadu_ps(us[r] + i))));
    }
  }
}

/* Group rows r0.. of src / dst. */
static inline void rows_at(st_view src, st_view dst, int64_t r0, const float **s, float **d) {
  for (int r = 0; r < ROW_GROUP; r++) s[r] = src.p + (r0 + r) * src.sv, d[r] = dst.p + (r0 + r) * dst.sv;
}

/*
 * gdn_token's [V, K] rows for K a multiple of 8, ROW_GROUP rows at a time
 * (the V % ROW_GROUP rows left: vec_dot2 / vec_axpby). One row alone is a
 * chain of K / 8 dependent FMAs per dot and a serial lane sum before its
 * update can start: decode with the state hot in L2 ran at only ~35 GB/s
 * of state traffic, no faster than DRAM. Four rows' chains interleave and
 * share the loads of k and q, their lane sums run as one 8 x 8 transpose
 * and 8 vector adds, and the dots of a group run in the same pass as the
 * update of the group before (software pipelined), so the sums' latency
 * overlaps FMAs: ~45 GB/s hot in L2, 1.5-2x per row in L1 (K = V = 128,
 * one core, CPU time). Every row's operations are vec_dot2's and
 * vec_axpby's in the same order (bit-identical): each lane's chain over the
 * row, then 0 + l0 + l1 + ... + l7.
 */
static void gdn_rows_avx2(st_view src, st_view dst, const float *q, const float *k, const float *v, float decay,
                          float beta, float qk, int64_t K, int64_t V, float *o, const st_prefetch *pf,
                          int64_t ahead) {
  const int prefetch = pf->self || pf->next.p;
  const int64_t row_bytes = K * (int64_t)sizeof(float), groups = V / ROW_GROUP;
  const __m256 va = _mm256_set1_ps(decay);
  const __m128 vdec = _mm_set1_ps(decay), vbeta = _mm_set1_ps(beta), vqk = _mm_set1_ps(qk);
  const float *ps[ROW_GROUP], *cs[ROW_GROUP]; /* the previous and the current group's rows */
  float *pd[ROW_GROUP], *cd[ROW_GROUP];
  float dd[ROW_GROUP]; /* the previous group's d */
  __m256 acc[2 * ROW_GROUP];
  for (int64_t g = 0; g < groups; g++) {
    const int64_t r0 = g * ROW_GROUP;
    if (prefetch) {
      for (int r = 0; r < ROW_GROUP; r++)
        prefetch_state_row(pf, src.p, src.sv, pf->next.sv, r0 + r + ahead, V, row_bytes);
    }
    rows_at(src, dst, r0, cs, cd);
    for (int r = 0; r < 2 * ROW_GROUP; r++) acc[r] = _mm256_setzero_ps();
    if (g > 0) {
      rows_pass(cs, acc, ps, pd, dd, va, k, q, K, 1, 1);
    } else {
      rows_pass(cs, acc, ps, pd, dd, va, k, q, K, 1, 0);
    }
    /* Lane j of every accumulator in t[j]: sums 0 + l0 + ... + l7 lane-wise. */
    __m256 t[8];
    transpose8(acc, t);
    __m256 s = _mm256_add_ps(_mm256_setzero_ps(), t[0]);
#pragma GCC unroll 8
    for (int j = 1; j < 8; j++) s = _mm256_add_ps(s, t[j]);
    const __m128 kh = _mm256_castps256_ps128(s), qh = _mm256_extractf128_ps(s, 1);
    const __m128 d = _mm_mul_ps(vbeta, _mm_sub_ps(_mm_loadu_ps(v + r0), _mm_mul_ps(vdec, kh)));
    _mm_storeu_ps(o + r0, _mm_fmadd_ps(vdec, qh, _mm_mul_ps(d, vqk)));
    _mm_storeu_ps(dd, d);
    for (int r = 0; r < ROW_GROUP; r++) ps[r] = cs[r], pd[r] = cd[r];
  }
  if (groups > 0) rows_pass(cs, acc, ps, pd, dd, va, k, q, K, 0, 1); /* the last group's update */
  for (int64_t i = groups * ROW_GROUP; i < V; i++) {
    if (prefetch) prefetch_state_row(pf, src.p, src.sv, pf->next.sv, i + ahead, V, row_bytes);
    gdn_row(src, dst, i, q, k, v, decay, beta, qk, K, o);
  }
}
#endif

/*
 * One token: dst = exp(g) src + d k^T with d = beta (v - exp(g) src k), and
 * o = dst q = exp(g) (src q) + (k . q) d. dst may equal src (rows are read
 * before they are written). `tmp` holds 2V floats.
 */
static void gdn_token(st_view src, st_view dst, const float *q, const float *k, const float *v, float decay,
                      float beta, int64_t K, int64_t V, float *o, float *tmp, const st_prefetch *pf) {
  const float qk = vec_dot(q, k, K);
  const int prefetch = pf->self || pf->next.p;
  if (src.sk == 1 && dst.sk == 1) {
    /* [V, K] rows contiguous in K: one pass per row. */
    const int64_t row_bytes = K * (int64_t)sizeof(float), ahead = (STATE_PF_BYTES + row_bytes - 1) / row_bytes;
#if XK_F32_LANES == 16
    if (K == 128) {
      gdn_rows_reg(src, dst, q, k, v, decay, beta, qk, V, o, pf, ahead, 8);
      return;
    }
    if (K == 64) {
      gdn_rows_reg(src, dst, q, k, v, decay, beta, qk, V, o, pf, ahead, 4);
      return;
    }
#endif
    for (int64_t i = 0; i < V; i++) {
      if (prefetch) prefetch_state_row(pf, src.p, src.sv, pf->next.sv, i + ahead, V, row_bytes);
      gdn_row(src, dst, i, q, k, v, decay, beta, qk, K, o);
    }
  } else if (src.sv == 1 && dst.sv == 1) {
    /* K-first layout: rows contiguous in V; S k and S q accumulate over rows. */
    float *kh = tmp, *qh = tmp + V;
    memset(kh, 0, (size_t)V * sizeof(float));
    memset(qh, 0, (size_t)V * sizeof(float));
    const int64_t row_bytes = V * (int64_t)sizeof(float), ahead = (STATE_PF_BYTES + row_bytes - 1) / row_bytes;
    for (int64_t j = 0; j < K; j++) {
      if (prefetch) prefetch_state_row(pf, src.p, src.sk, pf->next.sk, j + ahead, K, row_bytes);
      vec_axpy2(kh, k[j], qh, q[j], src.p + j * src.sk, V);
    }
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

/*
 * gdn_token for a state already in cache (the tokens after a sequence's
 * first): on AVX2, [V, K] rows with K a multiple of 8 run in gdn_rows_avx2's
 * groups. Not for the state that comes cold from the pool (decode): there
 * gdn_token's row loop moved the state 3-7% faster (B = 64 / 256, 256-512
 * MiB pool, alternated runs, CPU time: 9.1-9.7 vs 9.4-10.4 ms at B = 64)
 * whatever the prefetch distance (2-16 KiB ahead) or spread. The choice is
 * made out here and the function kept out of line: with the groups as a
 * branch inside gdn_token, B = 1 decode (cold, the row loop) got slower
 * (harness best 147-152 vs 131-134 us); out of line, 146-152 vs 142-144 in
 * one noisy comparison.
 */
__attribute__((noinline)) static void gdn_token_hot(st_view src, st_view dst, const float *q, const float *k,
                                                    const float *v, float decay, float beta, int64_t K, int64_t V,
                                                    float *o, float *tmp, const st_prefetch *pf) {
#if XK_F32_LANES == 8
  if (K % 8 == 0 && src.sk == 1 && dst.sk == 1) {
    const int64_t row_bytes = K * (int64_t)sizeof(float), ahead = (STATE_PF_BYTES + row_bytes - 1) / row_bytes;
    gdn_rows_avx2(src, dst, q, k, v, decay, beta, vec_dot(q, k, K), K, V, o, pf, ahead);
    return;
  }
#endif
  gdn_token(src, dst, q, k, v, decay, beta, K, V, o, tmp, pf);
}

/* The slot block (n, hv) reads its state from (< 0: padding). */
static int64_t recurrent_slot(const xk_gdn_args *a, int64_t n) {
  if (!a->state_indices) return n;
  const int64_t col = a->num_accepted_tokens.data ? la_at(&a->num_accepted_tokens, n) - 1 : 0;
  return gdn_index(a, n, a->indices_2d ? col : 0);
}

/* Block (n, hv); `next_b` (-1: none) is the grid block run after it, whose
 * state is prefetched during this block's last token. */
static void recurrent_block(const xk_gdn_args *a, float *scratch, int64_t n, int64_t hv, int64_t next_b) {
  const int64_t K = a->head_k_dim, V = a->head_v_dim, h = hv / (a->num_v_heads / a->num_heads);
  const gdn_seq s = gdn_seq_of(a, n);
  if (s.len <= 0) return;
  float *tmp_state = scratch, *q = tmp_state + K * V, *k = q + K, *v = k + K, *o = v + V, *tmp = o + V;
  const int64_t slot0 = recurrent_slot(a, n);
  if (slot0 < 0) {
    gdn_zero_outputs(a, s, hv, o);
    return;
  }
  const int64_t ss = a->state_s_slot, sh = a->state_s_head;
  st_view cur = {a->state + slot0 * ss + hv * sh, a->state_s_v, a->state_s_k};
  st_view next = {NULL, a->state_s_v, a->state_s_k};
  gdn_seq ns = {0, 0, 0};
  if (next_b >= 0) {
    const int64_t nn = next_b / a->num_v_heads, nslot = recurrent_slot(a, nn);
    ns = gdn_seq_of(a, nn);
    if (nslot >= 0 && ns.len > 0) next.p = a->state + nslot * ss + (next_b % a->num_v_heads) * sh;
  }
  /* The scratch state mirrors the pool's contiguous dim. */
  const st_view tmpv = a->state_s_k == 1 || a->state_s_v != 1 ? (st_view){tmp_state, K, 1}
                                                                : (st_view){tmp_state, 1, V};
  for (int64_t t = 0; t < s.len; t++) {
    const int64_t tok = s.bos + t;
    if (t + 1 < s.len) {
      gdn_prefetch_tokens(a, s.row, tok + 1, tok + 2, h, hv);
    } else if (next.p) { /* the next block's first token */
      const int64_t nhv = next_b % a->num_v_heads;
      gdn_prefetch_tokens(a, ns.row, ns.bos, ns.bos + 1, nhv / (a->num_v_heads / a->num_heads), nhv);
    }
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
    /* The state comes cold from the pool at the first token only. */
    const st_prefetch pf = {t == 0, t + 1 == s.len ? next : (st_view){NULL, 0, 0}};
    if (t == 0) {
      gdn_token(cur, dst, q, k, v, decay, beta, K, V, o, tmp, &pf);
    } else {
      gdn_token_hot(cur, dst, q, k, v, decay, beta, K, V, o, tmp, &pf);
    }
    gdn_store_o(a, s.row, tok, hv, o);
    cur = dst;
  }
}

void XK_FN(gdn_recurrent)(const xk_gdn_args *a, float *scratch, int64_t block_begin, int64_t block_end) {
  for (int64_t b = block_begin; b < block_end; b++)
    recurrent_block(a, scratch, b / a->num_v_heads, b % a->num_v_heads, b + 1 < block_end ? b + 1 : -1);
}


/* ---- chunk_gated_delta_rule ---------------------------------------------------- */

/*
 * Chunks of CHUNK tokens in the UT form, for one sequence and the G = HV / H
 * value heads that share a key head (their q k^T and k k^T are computed once).
 * With G the cumulative log decay inside the chunk, S the [K][V] state before
 * it, and rows i, j tokens of the chunk:
 *   A = strict_tril(beta_i exp(G_i - G_j) k_i . k_j),  P = tril(exp(G_i - G_j) q_i . k_j)
 *   D = (I + A)^-1 (beta (v - exp(G) k S))            (fla's U - W S)
 *   o = exp(G) q S + P D
 *   S = exp(G_last) S + (k exp(G_last - G))^T D
 * Every product runs on register tiles of TMR rows x TNR columns: C (+)= A B
 * with A's rows broadcast element by element and B's rows loaded as vectors,
 * fused with the step that follows (the triangular solve of a tile's diagonal
 * block, the decay factors, the state update), all on f32 operands converted
 * once per chunk. The loops run over TNR-column panels of V outermost, so a
 * panel of S (K x TNR) stays in L1 from S's use to its update.
 */

#define CHUNK 64
/* Value heads run chunk by chunk together (their states stay in L2). On
 * Zen 3 (512 KiB L2: 8 states do not fit) 1, 2, 4, 8 heads ran T = 1024 at
 * 62, 69, 72-75, 74-75 GFLOP/s (AVX2 harness; 1 recomputes the key part
 * for each value head). Also tried there, no gain: KT rows padded to an
 * odd number of lines, the key part's diagonal tiles on whole vectors
 * (~10% slower key part), tile_madd unrolled 4 (+1-2%, within noise). */
#define CHUNK_HEADS 8

#if XK_F32_LANES == 16
typedef __m512 cv_t;
typedef __mmask16 cm_t;
#define CV_L 16
#define TMR 8
#define TNR 32
static inline cm_t cm_of(int64_t n) {
  return n >= 16 ? (cm_t)0xffff : n <= 0 ? (cm_t)0 : (cm_t)((1u << n) - 1u);
}
static inline cv_t cv_load(const float *p, cm_t m) { return _mm512_maskz_loadu_ps(m, p); }
static inline void cv_store(float *p, cv_t x, cm_t m) { _mm512_mask_storeu_ps(p, m, x); }
static inline cv_t cv_set1(float x) { return _mm512_set1_ps(x); }
static inline cv_t cv_fmadd(cv_t a, cv_t b, cv_t c) { return _mm512_fmadd_ps(a, b, c); }
static inline cv_t cv_fnmadd(cv_t a, cv_t b, cv_t c) { return _mm512_fnmadd_ps(a, b, c); }
static inline cv_t cv_mul(cv_t a, cv_t b) { return _mm512_mul_ps(a, b); }
static inline cv_t cv_zero(void) { return _mm512_setzero_ps(); }
static inline cv_t cv_sub(cv_t a, cv_t b) { return _mm512_sub_ps(a, b); }
static inline cv_t cv_exp(cv_t x) { return la_exp16(x); }
static inline cv_t cv_keep(cv_t x, cm_t m) { return _mm512_maskz_mov_ps(m, x); } /* 0 where m is off */
#elif XK_F32_LANES == 8
typedef __m256 cv_t;
/* A lane mask and whether it is full: full vectors take plain loads and
 * stores, as a vmaskmovps store costs ~20 cycles on Zen 3 (6.1 ns against
 * 0.3 ns for vmovups, back to back into L1) and the tiles stored every
 * vector masked (chunked T = 4096: ~5k masked stores per chunk and head). */
typedef struct cm_t {
  __m256i m;
  int full;
} cm_t;
#define CV_L 8
#define TMR 4
#define TNR 16
static inline cm_t cm_of(int64_t n) {
  const int c = n >= 8 ? 8 : n <= 0 ? 0 : (int)n;
  return (cm_t){_mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)), c == 8};
}
static inline cv_t cv_load(const float *p, cm_t m) { return m.full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m.m); }
static inline void cv_store(float *p, cv_t x, cm_t m) {
  if (m.full) {
    _mm256_storeu_ps(p, x);
  } else {
    _mm256_maskstore_ps(p, m.m, x);
  }
}
static inline cv_t cv_set1(float x) { return _mm256_set1_ps(x); }
static inline cv_t cv_fmadd(cv_t a, cv_t b, cv_t c) { return _mm256_fmadd_ps(a, b, c); }
static inline cv_t cv_fnmadd(cv_t a, cv_t b, cv_t c) { return _mm256_fnmadd_ps(a, b, c); }
static inline cv_t cv_mul(cv_t a, cv_t b) { return _mm256_mul_ps(a, b); }
static inline cv_t cv_zero(void) { return _mm256_setzero_ps(); }
static inline cv_t cv_sub(cv_t a, cv_t b) { return _mm256_sub_ps(a, b); }
static inline cv_t cv_exp(cv_t x) { return la_exp8(x); }
static inline cv_t cv_keep(cv_t x, cm_t m) { return _mm256_and_ps(x, _mm256_castsi256_ps(m.m)); }
#else
typedef float cv_t;
typedef int cm_t;
#define CV_L 1
#define TMR 4
#define TNR 16
static inline cm_t cm_of(int64_t n) { return n > 0; }
static inline cv_t cv_load(const float *p, cm_t m) { return m ? *p : 0.0f; }
static inline void cv_store(float *p, cv_t x, cm_t m) {
  if (m) *p = x;
}
static inline cv_t cv_set1(float x) { return x; }
static inline cv_t cv_fmadd(cv_t a, cv_t b, cv_t c) { return fmaf(a, b, c); }
static inline cv_t cv_fnmadd(cv_t a, cv_t b, cv_t c) { return fmaf(-a, b, c); }
static inline cv_t cv_mul(cv_t a, cv_t b) { return a * b; }
static inline cv_t cv_zero(void) { return 0.0f; }
static inline cv_t cv_sub(cv_t a, cv_t b) { return a - b; }
static inline cv_t cv_exp(cv_t x) { return expf(x); }
static inline cv_t cv_keep(cv_t x, cm_t m) { return m ? x : 0.0f; }
#endif
#define TNV (TNR / CV_L)

/* A TMR x TNR accumulator tile (registers once inlined) and its column masks. */
typedef struct tile {
  cv_t c[TMR][TNV];
} tile;
typedef struct tmask {
  cm_t m[TNV];
} tmask;

static ALWAYS_INLINE tmask tmask_of(int64_t nc) {
  tmask m;
#pragma GCC unroll 16
  for (int v = 0; v < TNV; v++) m.m[v] = cm_of(nc - v * CV_L);
  return m;
}

static ALWAYS_INLINE void tile_zero(tile *t) {
#pragma GCC unroll 8
  for (int r = 0; r < TMR; r++)
#pragma GCC unroll 16
    for (int v = 0; v < TNV; v++) t->c[r][v] = cv_zero();
}

/* t[r] (+/-)= sum_{p < P} a[r][p] B[p] over the tile's first nv vectors (B's
 * rows ldb apart, masked to the tile's columns). */
static ALWAYS_INLINE void tile_madd(tile *t, int64_t P, const float *const *a, const float *B, int64_t ldb,
                                    const tmask *m, int neg, int nv) {
#pragma GCC unroll 2
  for (int64_t p = 0; p < P; p++) {
    cv_t b[TNV];
#pragma GCC unroll 16
    for (int v = 0; v < nv; v++) b[v] = cv_load(B + p * ldb + v * CV_L, m->m[v]);
#pragma GCC unroll 8
    for (int r = 0; r < TMR; r++) {
      const cv_t x = cv_set1(a[r][p]);
#pragma GCC unroll 16
      for (int v = 0; v < nv; v++) t->c[r][v] = neg ? cv_fnmadd(x, b[v], t->c[r][v]) : cv_fmadd(x, b[v], t->c[r][v]);
    }
  }
}

/* Stores the first `mr` rows (first nv vectors) of t at C (rows ldc apart). */
static ALWAYS_INLINE void tile_store(const tile *t, float *C, int64_t ldc, int64_t mr, const tmask *m, int nv) {
#pragma GCC unroll 8
  for (int r = 0; r < TMR; r++) {
    if (r >= mr) break;
#pragma GCC unroll 16
    for (int v = 0; v < nv; v++) cv_store(C + r * ldc + v * CV_L, t->c[r][v], m->m[v]);
  }
}

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* Scratch of one chunked block (pointers into the caller's float buffer). */
typedef struct chunk_ws {
  int64_t K, V, ldk, ldv, nst; /* nst: states held */
  /* Shared by the value heads of a key head. */
  float *Q;      /* [C][ldk] q (normalised, scaled), zero rows past the chunk */
  float *Km;     /* [C][ldk] k, likewise */
  float *KT;     /* [round_up(K, TMR)][C] k transposed */
  float *Gk, *Gq; /* [C][C] k k^T and q k^T (lower triangles) */
  /* One value head at a time. */
  float *Vm;     /* [C][ldv] v */
  float *A, *P;  /* [C][C] decayed */
  float *D, *Dt; /* [C][ldv] D and exp(G_last - G) D */
  float *O;      /* [C][ldv] */
  float *Gc, *beta, *eG, *eL; /* [C] cumulative log decay, beta, exp(G), exp(G_last - G) */
  float *S;      /* nst states [K][ldv] (rows up to round_up(K, TMR)), sst floats apart */
  int64_t sst;
} chunk_ws;

/* Row stride for rows of n floats: an odd number of whole cache lines, so
 * that a tile's column panel spreads over all L1 sets. */
static int64_t chunk_ld(int64_t n) { return 16 * ((n + 15) / 16 | 1); }

static int64_t chunk_layout(int64_t K, int64_t V, int64_t G, float *base, chunk_ws *w) {
  const int64_t C = CHUNK, ldk = chunk_ld(K), ldv = chunk_ld(V);
  const int64_t sizes[] = {C * ldk, C * ldk, round_up(K, TMR) * C, C * C, C * C, C * ldv, C * C, C * C,
                           C * ldv, C * ldv, C * ldv, C,           C,     C,     C,       G * round_up(K, TMR) * ldv};
  float **ptrs[] = {&w->Q, &w->Km, &w->KT, &w->Gk, &w->Gq, &w->Vm, &w->A,    &w->P,
                    &w->D, &w->Dt, &w->O,  &w->Gc, &w->beta, &w->eG, &w->eL, &w->S};
  int64_t off = 0;
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
    if (base) *ptrs[i] = base + off;
    off += round_up(sizes[i], 16); /* each piece 64-byte aligned relative to base */
  }
  w->K = K, w->V = V, w->ldk = ldk, w->ldv = ldv, w->nst = G;
  /* A state tile loads whole TMR-row tiles. */
  w->sst = round_up(K, TMR) * ldv;
  return off;
}

int64_t XK_FN(gdn_scratch_floats)(int64_t K, int64_t V, int32_t chunked) {
  if (chunked) {
    chunk_ws w;
    return chunk_layout(K, V, chunked < CHUNK_HEADS ? chunked : CHUNK_HEADS, NULL, &w) + 16;
  }
  return K * V + 2 * K + 4 * V + 64;
}

/* dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols. */
static void chunk_transpose(const float *src, int64_t lds, float *dst, int64_t ldd, int64_t rows, int64_t cols) {
  int64_t rb = 0, cb = 0; /* the rows and columns the register blocks cover */
#if XK_F32_LANES == 16
  /* Whole 16 x 16 blocks in registers: four butterfly stages, each swapping
   * the off-diagonal sub-blocks of size 8, 4, 2, 1 between register pairs. */
  static const int32_t idx[4][2][16] = {
      {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}, {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}},
      {{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27}, {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31}},
      {{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29}, {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}},
      {{0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}, {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}}};
  __m512i ilo[4], ihi[4];
  for (int s = 0; s < 4; s++) {
    ilo[s] = _mm512_loadu_si512(idx[s][0]);
    ihi[s] = _mm512_loadu_si512(idx[s][1]);
  }
  rb = rows / 16 * 16, cb = cols / 16 * 16;
  for (int64_t i0 = 0; i0 < rb; i0 += 16) {
    for (int64_t j0 = 0; j0 < cb; j0 += 16) {
      __m512 r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + (i0 + i) * lds + j0);
#pragma GCC unroll 4
      for (int s = 0; s < 4; s++) {
        const int bs = 8 >> s;
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
          if (i & bs) continue;
          const __m512 a = r[i], b = r[i | bs];
          r[i] = _mm512_permutex2var_ps(a, ilo[s], b);
          r[i | bs] = _mm512_permutex2var_ps(a, ihi[s], b);
        }
      }
#pragma GCC unroll 16
      for (int jj = 0; jj < 16; jj++) _mm512_storeu_ps(dst + (j0 + jj) * ldd + i0, r[jj]);
    }
  }
#elif XK_F32_LANES == 8
  /* 8 x 8 blocks in registers, as the 16 x 16 ones above. */
  rb = rows / 8 * 8, cb = cols / 8 * 8;
  for (int64_t i0 = 0; i0 < rb; i0 += 8) {
    for (int64_t j0 = 0; j0 < cb; j0 += 8) {
      __m256 r[8], t[8];
      for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + (i0 + i) * lds + j0);
      transpose8(r, t);
      for (int jj = 0; jj < 8; jj++) _mm256_storeu_ps(dst + (j0 + jj) * ldd + i0, t[jj]);
    }
  }
#endif
  /* The edges (everything on tiers without the blocks). */
  for (int64_t i = 0; i < rows; i++)
    for (int64_t jj = i < rb ? cb : 0; jj < cols; jj++) dst[jj * ldd + i] = src[i * lds + jj];
}

/* S[k][v] (rows ldv apart) from, or back to, the pool's (v, k) elements. */
static void chunk_state_io(const xk_gdn_args *a, float *S, int64_t ldv, float *pool, int to_pool) {
  const int64_t K = a->head_k_dim, V = a->head_v_dim, sv = a->state_s_v, sk = a->state_s_k;
  if (sk == 1) {
    if (to_pool) {
      chunk_transpose(S, ldv, pool, sv, K, V);
    } else {
      chunk_transpose(pool, sv, S, ldv, V, K);
    }
  } else if (sv == 1) {
    for (int64_t j = 0; j < K; j++) {
      if (to_pool) {
        memcpy(pool + j * sk, S + j * ldv, (size_t)V * sizeof(float));
      } else {
        memcpy(S + j * ldv, pool + j * sk, (size_t)V * sizeof(float));
      }
    }
  } else {
    for (int64_t j = 0; j < K; j++)
      for (int64_t i = 0; i < V; i++) {
        if (to_pool) {
          pool[i * sv + j * sk] = S[j * ldv + i];
        } else {
          S[j * ldv + i] = pool[i * sv + j * sk];
        }
      }
  }
}

/* The key-head part of a chunk of Cn tokens from `tok0`: q, k (zero rows up
 * to Cr), k^T, and the lower triangles of k k^T and q k^T. */
static void chunk_keys(const xk_gdn_args *a, const chunk_ws *w, gdn_seq seq, int64_t tok0, int64_t Cn, int64_t Cr,
                       int64_t h) {
  const int64_t K = w->K, ldk = w->ldk, C = CHUNK;
  for (int64_t i = 0; i < Cn; i++) gdn_load_qk(a, seq.row, tok0 + i, h, w->Q + i * ldk, w->Km + i * ldk);
  for (int64_t i = Cn; i < Cr; i++) {
    memset(w->Q + i * ldk, 0, (size_t)K * sizeof(float));
    memset(w->Km + i * ldk, 0, (size_t)K * sizeof(float));
  }
  chunk_transpose(w->Km, ldk, w->KT, C, Cr, K);
  for (int64_t i0 = 0; i0 < Cr; i0 += TMR) {
    for (int which = 0; which < 2; which++) {
      const float *src = which ? w->Q : w->Km;
      float *dst = which ? w->Gq : w->Gk;
      const float *rows[TMR];
      for (int r = 0; r < TMR; r++) rows[r] = src + (i0 + r) * ldk;
      for (int64_t j0 = 0; j0 < i0 + TMR; j0 += TNR) {
        const int64_t nc = i0 + TMR - j0 < TNR ? i0 + TMR - j0 : TNR;
        const tmask m = tmask_of(nc);
        tile t;
        tile_zero(&t);
        if (TNV > 1 && nc <= CV_L) { /* a narrow tile on the diagonal */
          tile_madd(&t, K, rows, w->KT + j0, C, &m, 0, 1);
          tile_store(&t, dst + i0 * C + j0, C, TMR, &m, 1);
        } else {
          tile_madd(&t, K, rows, w->KT + j0, C, &m, 0, TNV);
          tile_store(&t, dst + i0 * C + j0, C, TMR, &m, TNV);
        }
      }
    }
  }
}

/* Value head part, first half: v, the cumulative log decay, beta (rows past
 * Cn: zero v and beta, no decay), exp(G) and exp(G_last - G). */
static void chunk_values_load(const xk_gdn_args *a, const chunk_ws *w, gdn_seq seq, int64_t tok0, int64_t Cn,
                              int64_t Cr, int64_t hv) {
  const int64_t V = w->V, ldv = w->ldv;
  float gsum = 0.0f;
  for (int64_t i = 0; i < Cn; i++) {
    const int64_t tok = tok0 + i;
    la_load_row(w->Vm + i * ldv, gdn_ptr(&a->v, seq.row, tok, hv), a->v.dtype, V, 1);
    gsum += gdn_scalar(&a->g, seq.row, tok, hv);
    w->Gc[i] = gsum;
    w->beta[i] = a->beta.data ? gdn_scalar(&a->beta, seq.row, tok, hv) : 1.0f;
  }
  for (int64_t i = Cn; i < Cr; i++) {
    memset(w->Vm + i * ldv, 0, (size_t)V * sizeof(float));
    w->Gc[i] = gsum;
    w->beta[i] = 0.0f;
  }
  for (int64_t i0 = 0; i0 < Cr; i0 += CV_L) {
    const cm_t m = cm_of(Cr - i0);
    const cv_t g = cv_load(w->Gc + i0, m);
    cv_store(w->eG + i0, cv_exp(g), m);
    cv_store(w->eL + i0, cv_exp(cv_sub(cv_set1(gsum), g)), m);
  }
}

/* Rows [i0, i1) of the decayed A and P (zero above the diagonal inside each
 * row tile), from chunk_values_load's decays and the key part's Gk, Gq. */
static void chunk_decay_rows(const chunk_ws *w, int64_t i0, int64_t i1) {
  const int64_t C = CHUNK;
  for (int64_t i = i0; i < i1; i++) {
    float *arow = w->A + i * C, *prow = w->P + i * C;
    const float *gk = w->Gk + i * C, *gq = w->Gq + i * C;
    const int64_t lim = (i / TMR + 1) * TMR;
    const cv_t gi = cv_set1(w->Gc[i]), b = cv_set1(w->beta[i]);
    for (int64_t j0 = 0; j0 < lim; j0 += CV_L) {
      const cm_t m = cm_of(lim - j0);
      /* exp(G_i - G_j); lanes j > i may overflow and are zeroed. */
      const cv_t e = cv_exp(cv_sub(gi, cv_load(w->Gc + j0, m)));
      cv_store(arow + j0, cv_keep(cv_mul(b, cv_mul(e, cv_load(gk + j0, m))), cm_of(i - j0)), m);
      cv_store(prow + j0, cv_keep(cv_mul(e, cv_load(gq + j0, m)), cm_of(i + 1 - j0)), m);
    }
  }
}

/* Value head part: chunk_values_load, then the decayed A and P. */
static void chunk_values(const xk_gdn_args *a, const chunk_ws *w, gdn_seq seq, int64_t tok0, int64_t Cn, int64_t Cr,
                         int64_t hv) {
  chunk_values_load(a, w, seq, tok0, Cn, Cr, hv);
  chunk_decay_rows(w, 0, Cr);
}

/* D rows [i0, i0 + TMR) of one panel: beta (v - exp(G) k S), minus A D over
 * the rows before, then the tile's own triangle solved in registers. */
static ALWAYS_INLINE void chunk_solve_tile(const chunk_ws *w, const float *S, int64_t i0, int64_t j0,
                                           const tmask *m) {
  const int64_t C = CHUNK, ldk = w->ldk, ldv = w->ldv;
  const float *rows[TMR];
  tile t;
  tile_zero(&t);
  for (int r = 0; r < TMR; r++) rows[r] = w->Km + (i0 + r) * ldk;
  tile_madd(&t, w->K, rows, S + j0, ldv, m, 0, TNV);
#pragma GCC unroll 8
  for (int r = 0; r < TMR; r++) {
    const cv_t eg = cv_set1(w->eG[i0 + r]), b = cv_set1(w->beta[i0 + r]);
    const float *vr = w->Vm + (i0 + r) * ldv + j0;
#pragma GCC unroll 16
    for (int v = 0; v < TNV; v++) t.c[r][v] = cv_mul(b, cv_fnmadd(eg, t.c[r][v], cv_load(vr + v * CV_L, m->m[v])));
  }
  for (int r = 0; r < TMR; r++) rows[r] = w->A + (i0 + r) * C;
  tile_madd(&t, i0, rows, w->D + j0, ldv, m, 1, TNV);
#pragma GCC unroll 8
  for (int r = 1; r < TMR; r++) {
#pragma GCC unroll 8
    for (int j = 0; j < r; j++) {
      const cv_t x = cv_set1(w->A[(i0 + r) * C + i0 + j]);
#pragma GCC unroll 16
      for (int v = 0; v < TNV; v++) t.c[r][v] = cv_fnmadd(x, t.c[j][v], t.c[r][v]);
    }
  }
  tile_store(&t, w->D + i0 * ldv + j0, ldv, TMR, m, TNV);
#pragma GCC unroll 8
  for (int r = 0; r < TMR; r++) {
    const cv_t e = cv_set1(w->eL[i0 + r]);
#pragma GCC unroll 16
    for (int v = 0; v < TNV; v++) t.c[r][v] = cv_mul(e, t.c[r][v]);
  }
  tile_store(&t, w->Dt + i0 * ldv + j0, ldv, TMR, m, TNV);
}

/* o rows [i0, i0 + TMR) of one panel: exp(G) q S + P D (D's rows below Cn). */
static ALWAYS_INLINE void chunk_out_tile(const chunk_ws *w, const float *S, int64_t Cn, int64_t i0, int64_t j0,
                                         const tmask *m) {
  const int64_t C = CHUNK, ldk = w->ldk, ldv = w->ldv;
  const float *rows[TMR];
  tile t;
  tile_zero(&t);
  for (int r = 0; r < TMR; r++) rows[r] = w->Q + (i0 + r) * ldk;
  tile_madd(&t, w->K, rows, S + j0, ldv, m, 0, TNV);
#pragma GCC unroll 8
  for (int r = 0; r < TMR; r++) {
    const cv_t eg = cv_set1(w->eG[i0 + r]);
#pragma GCC unroll 16
    for (int v = 0; v < TNV; v++) t.c[r][v] = cv_mul(eg, t.c[r][v]);
  }
  for (int r = 0; r < TMR; r++) rows[r] = w->P + (i0 + r) * C;
  tile_madd(&t, i0 + TMR < Cn ? i0 + TMR : Cn, rows, w->D + j0, ldv, m, 0, TNV);
  tile_store(&t, w->O + i0 * ldv + j0, ldv, TMR, m, TNV);
}

/* State rows [d0, d0 + mr) of one panel: exp(G_last) S + (k exp(G_last - G))^T D. */
static ALWAYS_INLINE void chunk_state_tile(const chunk_ws *w, float *S, int64_t Cn, float decay, int64_t d0,
                                           int64_t mr, int64_t j0, const tmask *m) {
  const int64_t C = CHUNK, ldv = w->ldv;
  const float *rows[TMR];
  tile t;
  tile_zero(&t);
  for (int r = 0; r < TMR; r++) rows[r] = w->KT + (d0 + r) * C;
  tile_madd(&t, Cn, rows, w->Dt + j0, ldv, m, 0, TNV);
  const cv_t e = cv_set1(decay);
  float *s = S + d0 * ldv + j0;
#pragma GCC unroll 8
  for (int r = 0; r < TMR; r++) {
#pragma GCC unroll 16
    for (int v = 0; v < TNV; v++) t.c[r][v] = cv_fmadd(e, cv_load(s + r * ldv + v * CV_L, m->m[v]), t.c[r][v]);
  }
  tile_store(&t, s, ldv, mr, m, TNV);
}

/* Input and output cache lines prefetched before each tile. */
#define CHUNK_PF_LINES 8
/* Rows of one (token range, key head, value head) to fetch ahead of their use. */
typedef struct chunk_next {
  int64_t t0, t1, h, hv;
} chunk_next;

/* A walk over the cache lines of q, k (head h), v and o (head hv) of tokens
 * [t, t1), a few lines at a time between tiles: a burst of a chunk's rows at
 * once would queue behind the line fill buffers and stall. Each part's row
 * address is precomputed (the walk recomputed it from the strides for every
 * line: ~3% of a chunked prefill on AVX2). When the next value head shares
 * this one's key head its q and k rows are the ones already loaded: the walk
 * takes v and o alone. */
typedef struct chunk_pf {
  const char *base[4];
  int64_t stride[4], bytes[4];
  int64_t t, t1, part, line, first;
} chunk_pf;

static chunk_pf chunk_pf_init(const xk_gdn_args *a, int64_t row, chunk_next next, int same_key_head) {
  chunk_pf w;
  const xk_gdn_tensor *ts[3] = {&a->q, &a->k, &a->v};
  for (int i = 0; i < 3; i++) {
    const int64_t sz = xk_dtype_size(ts[i]->dtype);
    w.base[i] = gdn_ptr(ts[i], row, 0, i == 2 ? next.hv : next.h);
    w.stride[i] = ts[i]->s_tok * sz;
    w.bytes[i] = (i == 2 ? a->head_v_dim : a->head_k_dim) * sz;
  }
  const int64_t osz = xk_dtype_size(a->o_dtype);
  w.base[3] = (const char *)a->o + (row * a->o_s_seq + next.hv * a->o_s_head) * osz;
  w.stride[3] = a->o_s_tok * osz, w.bytes[3] = a->head_v_dim * osz;
  for (int i = 0; i < 4; i++) { /* from the row's first line (rows need not start on one) */
    const int64_t off = (int64_t)((uintptr_t)w.base[i] & 63);
    w.base[i] -= off, w.bytes[i] += off;
  }
  w.t = next.t0, w.t1 = next.t1, w.first = same_key_head ? 2 : 0, w.part = w.first, w.line = 0;
  return w;
}

static ALWAYS_INLINE void chunk_pf_step(chunk_pf *w, int lines) {
  for (int n = 0; n < lines && w->t < w->t1; n++) {
    const char *p = w->base[w->part] + w->t * w->stride[w->part] + w->line;
    if (w->part == 3) {
      __builtin_prefetch(p, 1, 3);
    } else {
      __builtin_prefetch(p, 0, 3);
    }
    w->line += 64;
    if (w->line >= w->bytes[w->part]) {
      w->line = 0;
      if (++w->part == 4) w->part = w->first, w->t++;
    }
  }
}

/* One value head's chunk: S advances in place, o rows [tok0, tok0 + Cn) are
 * written; the rows of `next` are fetched a piece per panel meanwhile. */
static void chunk_value_head(const xk_gdn_args *a, const chunk_ws *w, float *S, gdn_seq seq, int64_t tok0,
                             int64_t Cn, int64_t Cr, int64_t hv, chunk_next next) {
  const int64_t K = w->K, V = w->V, G = a->num_v_heads / a->num_heads;
  chunk_values(a, w, seq, tok0, Cn, Cr, hv);
  chunk_pf pf = chunk_pf_init(a, seq.row, next, next.t0 == tok0 && next.h == hv / G);
  const float decay = expf(w->Gc[Cr - 1]);
  for (int64_t j0 = 0; j0 < V; j0 += TNR) {
    const tmask m = tmask_of(V - j0);
    for (int64_t i0 = 0; i0 < Cr; i0 += TMR) {
      chunk_pf_step(&pf, CHUNK_PF_LINES);
      chunk_solve_tile(w, S, i0, j0, &m);
    }
    for (int64_t i0 = 0; i0 < Cr; i0 += TMR) {
      chunk_pf_step(&pf, CHUNK_PF_LINES);
      chunk_out_tile(w, S, Cn, i0, j0, &m);
    }
    for (int64_t d0 = 0; d0 < K; d0 += TMR) {
      chunk_pf_step(&pf, CHUNK_PF_LINES);
      chunk_state_tile(w, S, Cn, decay, d0, K - d0, j0, &m);
    }
  }
  chunk_pf_step(&pf, 1 << 30);
  for (int64_t i = 0; i < Cn; i++) gdn_store_o(a, seq.row, tok0 + i, hv, w->O + i * w->ldv);
}

/* Sequence n, value heads [hv0, hv1), chunk by chunk across the heads (a
 * token's rows of all heads share pages), the value heads of one key head
 * after their shared key part. */
static void chunk_seq(const xk_gdn_args *a, const chunk_ws *w, int64_t n, int64_t hv0, int64_t hv1) {
  const int64_t K = w->K, V = w->V, ldv = w->ldv, G = a->num_v_heads / a->num_heads;
  const gdn_seq seq = gdn_seq_of(a, n);
  if (seq.len <= 0) return;
  int64_t slot = n;
  if (a->state_indices) slot = gdn_index(a, n, 0);
  if (a->state && slot < 0) {
    for (int64_t hv = hv0; hv < hv1; hv++) gdn_zero_outputs(a, seq, hv, w->O);
    return;
  }
  const int load = a->state && (!a->has_initial_state.data || la_at(&a->has_initial_state, n));
  for (int64_t hv = hv0; hv < hv1; hv++) {
    float *S = w->S + (hv - hv0) * w->sst;
    if (load) {
      chunk_state_io(a, S, ldv, a->state + slot * a->state_s_slot + hv * a->state_s_head, 0);
    } else {
      for (int64_t j = 0; j < K; j++) memset(S + j * ldv, 0, (size_t)V * sizeof(float));
    }
  }
  const int64_t end = seq.bos + seq.len;
  for (int64_t tok0 = seq.bos; tok0 < end; tok0 += CHUNK) {
    const int64_t Cn = end - tok0 < CHUNK ? end - tok0 : CHUNK, Cr = round_up(Cn, TMR);
    for (int64_t hv = hv0; hv < hv1; hv++) {
      const int64_t h = hv / G;
      if (hv == hv0 || hv % G == 0) chunk_keys(a, w, seq, tok0, Cn, Cr, h);
      chunk_next next = {tok0, tok0 + Cn, (hv + 1) / G, hv + 1};
      if (hv + 1 == hv1) {
        const int64_t t1 = tok0 + Cn + CHUNK < end ? tok0 + Cn + CHUNK : end;
        next = (chunk_next){tok0 + Cn, t1, hv0 / G, hv0};
      }
      chunk_value_head(a, w, w->S + (hv - hv0) * w->sst, seq, tok0, Cn, Cr, hv, next);
    }
  }
  if (a->state && a->output_final_state) {
    for (int64_t hv = hv0; hv < hv1; hv++)
      chunk_state_io(a, w->S + (hv - hv0) * w->sst, ldv, a->state + slot * a->state_s_slot + hv * a->state_s_head, 1);
  }
}

/* `scratch` holds gdn_scratch_floats(K, V, min(block_end - block_begin, HV)) floats. */
void XK_FN(gdn_chunk)(const xk_gdn_args *a, float *scratch, int64_t block_begin, int64_t block_end) {
  const int64_t HV = a->num_v_heads;
  int64_t cap = block_end - block_begin < HV ? block_end - block_begin : HV;
  if (cap > CHUNK_HEADS) cap = CHUNK_HEADS;
  chunk_ws w;
  /* Align the scratch pieces to 64 bytes. */
  chunk_layout(a->head_k_dim, a->head_v_dim, cap, (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63), &w);
  for (int64_t b = block_begin; b < block_end;) {
    const int64_t n = b / HV, hv = b % HV;
    int64_t hv1 = HV - hv < block_end - b ? HV : hv + (block_end - b);
    if (hv1 - hv > CHUNK_HEADS) hv1 = hv + CHUNK_HEADS;
    chunk_seq(a, &w, n, hv, hv1);
    b += hv1 - hv;
  }
}
