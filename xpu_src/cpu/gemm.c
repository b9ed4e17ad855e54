/*
 * FC / GEMM: y = x * w^T (+ bias), F.linear semantics, with dense f32/f16/bf16
 * weights or weight-only 4/8-bit codes. fp32 accumulation everywhere.
 *
 * Two regimes, chosen by the launcher from the shape alone:
 *
 *  - decode (linear_gemv, M <= 16): a grid block is a range of output columns
 *    n. Each weight row is streamed once from memory (K-chunked so the f32
 *    activations stay in L1 when M > 4) and dotted with every activation row:
 *    register tiles of up to 4 rows x 4 columns of 16-lane partial sums,
 *    reduced once per output. On AVX2, M >= 2 runs gv_blocked: blocks of 12
 *    weight rows, K chunks of x kept in L1, tiles of 12 8-lane sums. The
 *    activations are read from `xf`, an f32 copy that linear_prep writes (it
 *    applies `perm` too).
 *    Int4 codes on AVX-512 run q4_gemv instead: three vector ops per 16
 *    codes and row (shift, vpermps from a per-group table of weights, FMA),
 *    with the tile's rows in different 4 KiB pages. At M = 1 on AVX-512,
 *    int8 and int4 with groups of a multiple of 128 read 8 weight rows at
 *    once (8 row streams in 8 pages) instead of 4. At M = 1 on AVX2 d1_gemv
 *    runs tiles of 8 rows (dense and int8: one row from each of 8 runs of
 *    consecutive rows, 8 long streams); for codes it sums q against x per
 *    group and applies scale and zero once a group (see there: a different
 *    rounding from the other paths, within the same tolerance).
 *
 *  - tiled GEMM (linear_gemm, larger M): a grid block is a tile of tile_m rows
 *    x tile_n columns of the output. For each K block the tile packs its
 *    weights into NR-column panels (converted to f32, dequantised, or kept as
 *    bf16 pairs for vdpbf16ps; dense weights on AVX2 a panel at a time, just
 *    before its first use) and runs an MR x NR register microkernel over
 *    them, activations packed into MR-row micro-panels (or read straight from
 *    x, or from a converted copy, when the tile has few panels).
 *
 * Determinism: every output element sums its K products in an order fixed by
 * the tier, the regime and K alone (K blocks in order, lanes, one reduction
 * tree; quantized rows at M = 1 on AVX2 count as a regime of their own).
 * Grid blocks never split K and never share an output, so the result does
 * not depend on the number of threads or on how tiles are cut.
 *
 * Canonical int4 code layout (XK_WEIGHT_INT4): each weight row n holds
 * 64 * ceil(K/128) bytes. Block b (64 bytes = 16 little-endian 32-bit words)
 * holds k = 128 b .. 128 b + 127: word l (0..15), bits 4i..4i+3 (i = 0..7)
 * hold the code of k = 128 b + 16 i + l. A shift by 4i of the 16 words thus
 * yields 16 consecutive k in 16 lanes. Codes past K are zero and never read.
 * Codes are unsigned; w = (code - zero) * scale with zero = 8 (4-bit) or 128
 * (8-bit) when there is no zeros tensor. XK_WEIGHT_INT8 rows are K plain bytes.
 */
#include "../common/convert.h"
#include "../common/simd512.h"
#include "../common/tier.h"

#define XK_ALWAYS_INLINE static inline __attribute__((always_inline))

/* ---- scalar helpers (every tier) ------------------------------------------ */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

static inline uint32_t q4_code(const uint8_t *row, int64_t k) {
  const int64_t r = k & 127;
  return (row[(k >> 7) * 64 + (r & 15) * 4 + (r >> 5)] >> (4 * ((r >> 4) & 1))) & 0xFu;
}

static inline float implicit_zero(const xk_linear_args *a) { return a->w_kind == XK_WEIGHT_INT4 ? 8.0f : 128.0f; }

static inline float group_scale(const xk_linear_args *a, int64_t n, int64_t g) {
  return xk_load_scalar(a->scales, a->sz_dtype, n * a->sz_stride + g);
}

static inline float group_zero(const xk_linear_args *a, int64_t n, int64_t g) {
  return a->zeros ? xk_load_scalar(a->zeros, a->sz_dtype, n * a->sz_stride + g) : implicit_zero(a);
}

/* The f32 value of weight (n, k): dense conversion or (code - zero) * scale. */
static inline float w_value(const xk_linear_args *a, int64_t n, int64_t k) {
  if (a->w_kind == XK_WEIGHT_DENSE) return xk_load_scalar(a->w, a->w_dtype, n * a->w_stride + k);
  const uint8_t *row = (const uint8_t *)a->w + n * a->w_stride;
  const float q = (float)(a->w_kind == XK_WEIGHT_INT4 ? q4_code(row, k) : row[k]);
  const int64_t g = k / a->group_size;
  return (q - group_zero(a, n, g)) * group_scale(a, n, g);
}

static inline float x_value(const xk_linear_args *a, int64_t m, int64_t k) {
  return xk_load_scalar(a->x, a->x_dtype, m * a->x_stride + (a->perm ? a->perm[k] : k));
}

static inline float bias_value(const xk_linear_args *a, int64_t n) {
  return a->bias ? xk_load_scalar(a->bias, a->bias_dtype, n) : 0.0f;
}

static inline void store_out(const xk_linear_args *a, int64_t m, int64_t n, float acc) {
  xk_store_scalar(a->out, a->out_dtype, m * a->out_stride + n, acc + bias_value(a, n));
}

void XK_FN(linear_prep)(const xk_linear_args *a, int64_t m_begin, int64_t m_end) {
  const int64_t xs = xk_dtype_size(a->x_dtype);
  for (int64_t m = m_begin; m < m_end; m++) {
    float *dst = a->xf + m * a->xf_stride;
    const char *src = (const char *)a->x + m * a->x_stride * xs;
    if (a->perm) {
      for (int64_t k = 0; k < a->k; k++) dst[k] = xk_load_scalar(src, a->x_dtype, a->perm[k]);
    } else {
      xk_convert_row(dst, XK_F32, src, a->x_dtype, a->k, 1.0f);
    }
  }
}

/* Generic tier (and the probes' fallback): one sequential fp32 sum per output. */
#if XK_F32_LANES == 1

void XK_FN(linear_gemv)(const xk_linear_args *a, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; n++) {
    for (int64_t m = 0; m < a->m; m++) {
      const float *xr = a->xf + m * a->xf_stride;
      float acc = 0.0f;
      for (int64_t k = 0; k < a->k; k++) acc += xr[k] * w_value(a, n, k);
      store_out(a, m, n, acc);
    }
  }
}

int64_t XK_FN(linear_gemm_plan)(xk_linear_args *a, int64_t threads) {
  (void)threads;
  a->tile_m = 64;
  a->tile_n = 64;
  a->bf16_pairs = 0;
  return 0;
}

void XK_FN(linear_gemm)(const xk_linear_args *a, int64_t tile_begin, int64_t tile_end, void *workspace) {
  (void)workspace;
  const int64_t mtiles = cdiv(a->m, a->tile_m);
  for (int64_t t = tile_begin; t < tile_end; t++) {
    const int64_t m0 = (t % mtiles) * a->tile_m, n0 = (t / mtiles) * a->tile_n;
    const int64_t m1 = min64(a->m, m0 + a->tile_m), n1 = min64(a->n, n0 + a->tile_n);
    for (int64_t m = m0; m < m1; m++) {
      for (int64_t n = n0; n < n1; n++) {
        float acc = 0.0f;
        for (int64_t k = 0; k < a->k; k++) acc += x_value(a, m, k) * w_value(a, n, k);
        store_out(a, m, n, acc);
      }
    }
  }
}

/* No packed layouts on this tier (the launcher keeps a plain copy). */
void XK_FN(linear_pack_w)(const xk_linear_args *a, int64_t begin, int64_t end, void *dst) {
  (void)a;
  (void)begin;
  (void)end;
  (void)dst;
}

void XK_FN(linear_pack_x)(const xk_linear_args *a, int64_t begin, int64_t end) {
  (void)a;
  (void)begin;
  (void)end;
}

double XK_FN(probe_bf16dot)(int64_t iters, xk_probe_result *sink) {
  float acc[4] = {0, 1, 2, 3};
  for (int64_t it = 0; it < iters; it++)
    for (int l = 0; l < 4; l++) acc[l] = acc[l] * 0.999999f + 1e-7f;
  sink->value = acc[0] + acc[1] + acc[2] + acc[3];
  return 2.0 * (double)iters * 4;
}

#else /* vector tiers ------------------------------------------------------- */

/* ---- vector primitives: VL f32 lanes ------------------------------------- */

#if XK_F32_LANES == 16
#define VL 16
typedef __m512 vf;
typedef __mmask16 vmask;
XK_ALWAYS_INLINE vmask vm_first(int64_t n) {
  return n >= 16 ? (vmask)0xFFFF : n <= 0 ? (vmask)0 : (vmask)((1u << n) - 1u);
}
XK_ALWAYS_INLINE vf vf_zero(void) { return _mm512_setzero_ps(); }
XK_ALWAYS_INLINE vf vf_set1(float x) { return _mm512_set1_ps(x); }
XK_ALWAYS_INLINE vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
XK_ALWAYS_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
XK_ALWAYS_INLINE vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
XK_ALWAYS_INLINE vf vf_loadm(const float *p, vmask m) { return _mm512_maskz_loadu_ps(m, p); }
XK_ALWAYS_INLINE void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
XK_ALWAYS_INLINE void vf_storem(float *p, vf v, vmask m) { _mm512_mask_storeu_ps(p, m, v); }
XK_ALWAYS_INLINE float vf_hsum(vf v) { return _mm512_reduce_add_ps(v); }
/* Lanes at or past the mask's end are zero. */
XK_ALWAYS_INLINE vf vw_loadm(const void *p, int32_t dt, vmask m) {
  switch (dt) {
    case XK_F32: return _mm512_maskz_loadu_ps(m, p);
    case XK_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
    default:
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
  }
}
#else
#define VL 8
typedef __m256 vf;
typedef int vmask; /* number of leading valid lanes, 0..8 */
XK_ALWAYS_INLINE vmask vm_first(int64_t n) { return n >= 8 ? 8 : n <= 0 ? 0 : (int)n; }
XK_ALWAYS_INLINE vf vf_zero(void) { return _mm256_setzero_ps(); }
XK_ALWAYS_INLINE vf vf_set1(float x) { return _mm256_set1_ps(x); }
XK_ALWAYS_INLINE vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
XK_ALWAYS_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
XK_ALWAYS_INLINE vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
XK_ALWAYS_INLINE vf vf_loadm(const float *p, vmask m) {
  if (m == 8) return _mm256_loadu_ps(p);
  float t[8] = {0};
  memcpy(t, p, (size_t)m * 4);
  return _mm256_loadu_ps(t);
}
XK_ALWAYS_INLINE void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
XK_ALWAYS_INLINE void vf_storem(float *p, vf v, vmask m) {
  if (m == 8) {
    _mm256_storeu_ps(p, v);
    return;
  }
  float t[8];
  _mm256_storeu_ps(t, v);
  memcpy(p, t, (size_t)m * 4);
}
XK_ALWAYS_INLINE float vf_hsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
XK_ALWAYS_INLINE vf vw_loadm(const void *p, int32_t dt, vmask m) {
  if (m == 8) return xk_load8(p, dt);
  uint8_t t[32] = {0};
  memcpy(t, p, (size_t)m * (size_t)xk_dtype_size(dt));
  return xk_load8(t, dt);
}
#endif

/* ---- weight vectors: VL consecutive k of one weight row as f32 ------------ */

enum { WK_F32, WK_F16, WK_BF16, WK_INT4, WK_INT8 };

static inline int wkind_of(const xk_linear_args *a) {
  if (a->w_kind == XK_WEIGHT_INT4) return WK_INT4;
  if (a->w_kind == XK_WEIGHT_INT8) return WK_INT8;
  return a->w_dtype == XK_F32 ? WK_F32 : a->w_dtype == XK_F16 ? WK_F16 : WK_BF16;
}

/* Per (row, group) parameters of a quantized row. For int4 on AVX-512, `p`
 * is the 16-entry table (code - zero) * scale; otherwise p = scale, q = -zero * scale. */
typedef struct wparams {
  vf p, q;
} wparams;

XK_ALWAYS_INLINE wparams wparams_load(const xk_linear_args *a, const int kind, int64_t n, int64_t g) {
  wparams r;
  const float s = group_scale(a, n, g), z = group_zero(a, n, g);
#if VL == 16
  if (kind == WK_INT4) {
    const vf iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    r.p = _mm512_fmadd_ps(iota, vf_set1(s), vf_set1(-z * s)); /* exact for f16/bf16 scales */
    r.q = r.p;
    return r;
  }
#endif
  (void)kind;
  r.p = vf_set1(s);
  r.q = vf_set1(-z * s); /* (q - z) * s = q * s - z * s: exact for f16/bf16 scales */
  return r;
}

/* Weights k .. k+VL-1 of a row (row points at element/byte 0 of the row);
 * lanes at or past the mask's end are zero. Int4 needs k % VL == 0 and a full mask. */
XK_ALWAYS_INLINE vf w_vec(const int kind, const void *row, int64_t k, vmask m, wparams wp) {
  switch (kind) {
    case WK_F32: return vf_loadm((const float *)row + k, m);
    case WK_F16: return vw_loadm((const uint16_t *)row + k, XK_F16, m);
    case WK_BF16: return vw_loadm((const uint16_t *)row + k, XK_BF16, m);
#if VL == 16
    case WK_INT4: {
      const __m512i raw = _mm512_loadu_si512((const uint8_t *)row + (k >> 7) * 64);
      const __m512i idx = _mm512_srl_epi32(raw, _mm_cvtsi32_si128((int)(4 * ((k >> 4) & 7))));
      return _mm512_permutexvar_ps(idx, wp.p);
    }
    default: {
      const __m128i c = _mm_maskz_loadu_epi8(m, (const uint8_t *)row + k);
      const vf q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(c));
      return _mm512_maskz_fmadd_ps(m, q, wp.p, wp.q);
    }
#else
    case WK_INT4: {
      const __m256i raw = _mm256_loadu_si256(
          (const __m256i *)((const uint8_t *)row + (k >> 7) * 64 + ((k >> 3) & 1) * 32));
      const __m256i c = _mm256_and_si256(_mm256_srl_epi32(raw, _mm_cvtsi32_si128((int)(4 * ((k >> 4) & 7)))),
                                         _mm256_set1_epi32(0xF));
      return _mm256_fmadd_ps(_mm256_cvtepi32_ps(c), wp.p, wp.q);
    }
    default: {
      __m128i c;
      if (m == 8) {
        c = _mm_loadl_epi64((const __m128i *)((const uint8_t *)row + k));
      } else {
        uint8_t t[8] = {0};
        memcpy(t, (const uint8_t *)row + k, (size_t)m);
        c = _mm_loadl_epi64((const __m128i *)t);
      }
      const vf q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c));
      vf w = _mm256_fmadd_ps(q, wp.p, wp.q);
      if (m != 8) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        w = _mm256_and_ps(w, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(m), lane)));
      }
      return w;
    }
#endif
  }
}

static inline const void *w_row(const xk_linear_args *a, int64_t n) {
  const int64_t es = a->w_kind == XK_WEIGHT_DENSE ? xk_dtype_size(a->w_dtype) : 1;
  return (const char *)a->w + n * a->w_stride * es;
}

/* ---- decode regime --------------------------------------------------------- */

#if VL == 16
#define GV_MT 4 /* activation rows per register tile */
#define GV_NB 4 /* weight rows per register tile: 16 accumulators (8 x 3 measured slower) */
#define GV_LD GV_NB /* accumulator slots per activation row in accbuf */
#else
#define GV_MT 4
#define GV_NB 6  /* weight rows per register tile at most: gv_nb_of(mt) */
#define GV_BLK 12 /* weight rows per block (gv_blocked): a multiple of every gv_nb_of */
#define GV_LD GV_BLK
#endif
#define GV_MAXM 16
#define GV_SUPER 4 /* int8: row tiles per super-tile at most */
#define GV_KCH 512 /* K chunk when M > GV_MT (multiple of 128) */

/* Named accumulators a<i><j> (i < GV_MT activation rows, j < GV_NB weight
 * rows) so the compiler keeps all of them in registers (those a tile does
 * not use are never read or written, and vanish). */
#if VL == 16
#define GV_IJ(X) \
  X(0, 0) X(0, 1) X(0, 2) X(0, 3) X(1, 0) X(1, 1) X(1, 2) X(1, 3) X(2, 0) X(2, 1) X(2, 2) X(2, 3) X(3, 0) X(3, 1) X(3, 2) X(3, 3)
#define GV_I(X) X(0) X(1) X(2) X(3)
#define GV_J(X) X(0) X(1) X(2) X(3)
#else
#define GV_IJ(X)                                                                                              \
  X(0, 0) X(0, 1) X(0, 2) X(0, 3) X(0, 4) X(0, 5) X(1, 0) X(1, 1) X(1, 2) X(1, 3) X(1, 4) X(1, 5) X(2, 0) X(2, 1) \
      X(2, 2) X(2, 3) X(2, 4) X(2, 5) X(3, 0) X(3, 1) X(3, 2) X(3, 3) X(3, 4) X(3, 5)
#define GV_I(X) X(0) X(1) X(2) X(3)
#define GV_J(X) X(0) X(1) X(2) X(3) X(4) X(5)
#endif
#define GV_ON(i, j) ((i) < mt && (j) < nb)

/* One step of VL k: weights of every row, then every activation row. */
#define GV_W(j) const vf w##j = (j) < nb ? w_vec(kind, wr[j], k, msk, wp[j]) : vf_zero();
/* Activation row i: one load, then its FMAs (one live activation register). */
#define GV_ROW(i)                                                               \
  if ((i) < mt) {                                                               \
    const vf x = FULL ? vf_load(xr[i] + k) : vf_loadm(xr[i] + k, msk);          \
    a##i##0 = vf_fma(x, w0, a##i##0);                                           \
    if (nb > 1) a##i##1 = vf_fma(x, w1, a##i##1);                               \
    if (nb > 2) a##i##2 = vf_fma(x, w2, a##i##2);                               \
    if (nb > 3) a##i##3 = vf_fma(x, w3, a##i##3);                               \
    GV_ROW_WIDE(i)                                                              \
  }
#if VL == 16
#define GV_ROW_WIDE(i)
#define GV_STEP GV_J(GV_W) GV_I(GV_ROW)
#else
#define GV_ROW_WIDE(i)                                                          \
  if (nb > 4) a##i##4 = vf_fma(x, w4, a##i##4);                                 \
  if (nb > 5) a##i##5 = vf_fma(x, w5, a##i##5);
/* Tiles wider than tall (3 x 4, 2 x 6) hold the activations instead and
 * take one weight vector at a time: 12 + mt + 1 registers, not 12 + nb + 1
 * (GCC otherwise reloads the weights as FMA operands for every row). */
#define GV_X(i) const vf x##i = (i) < mt ? (FULL ? vf_load(xr[i] + k) : vf_loadm(xr[i] + k, msk)) : vf_zero();
#define GV_COL(j)                                                               \
  if ((j) < nb) {                                                               \
    const vf w = w_vec(kind, wr[j], k, msk, wp[j]);                             \
    a0##j = vf_fma(x0, w, a0##j);                                               \
    if (mt > 1) a1##j = vf_fma(x1, w, a1##j);                                   \
    if (mt > 2) a2##j = vf_fma(x2, w, a2##j);                                   \
    if (mt > 3) a3##j = vf_fma(x3, w, a3##j);                                   \
  }
#define GV_STEP                 \
  if (mt < nb) {                \
    GV_I(GV_X) GV_J(GV_COL)     \
  } else {                      \
    GV_J(GV_W) GV_I(GV_ROW)     \
  }
#endif
/* The next tile's weight rows (GV_NB rows on), fetched one line per row and
 * step while this tile computes: decode rows are short streams that the
 * hardware prefetchers pick up late. Prefetches past the matrix never fault. */
#if VL == 16
#define GV_PF(j) _mm_prefetch((const char *)wr[j] + pf_off + kb_of(k), _MM_HINT_T0);
#else
#define GV_PF(j) \
  if ((j) < nb) _mm_prefetch((const char *)wr[j] + pf_off + kb_of(k), _MM_HINT_T0);
#endif

#define GV_PF_NEXT INT64_MIN /* gv_tile's pf: the rows GV_NB (int4: 2 GV_NB) on */

/* Partial sums over k in [k0, k1) for rows m0.., weight rows n0..; they live
 * in accbuf[(m * GV_LD + j) * VL] between K chunks. Quantized rows run group
 * by group (the group's scale and zero in wp). While it runs, the tile
 * prefetches the weight bytes pf bytes on from the ones it reads. */
XK_ALWAYS_INLINE void gv_tile(const xk_linear_args *a, const int kind, const int mt, const int nb, int64_t m0,
                              int64_t n0, int64_t k0, int64_t k1, float *accbuf, int first, int64_t pf) {
#define GV_DECL(i, j) \
  vf a##i##j = (GV_ON(i, j) && !first) ? vf_load(accbuf + ((m0 + (i)) * GV_LD + (j)) * VL) : vf_zero();
  GV_IJ(GV_DECL)
  const float *xr[GV_MT];
  for (int i = 0; i < GV_MT; i++) xr[i] = a->xf + (m0 + (i < mt ? i : 0)) * a->xf_stride;
  const void *wr[GV_NB];
  for (int j = 0; j < GV_NB; j++) wr[j] = w_row(a, n0 + (j < nb ? j : 0));
  const int quant = kind == WK_INT4 || kind == WK_INT8;
  const int64_t G = quant ? a->group_size : k1 - k0 + 1;
  /* Bytes per k (int4: half a byte), a constant per kind: the prefetch test
   * below is then one AND per step. */
  const int64_t wsz = quant ? 1 : kind == WK_F32 ? 4 : 2;
#define kb_of(k) (kind == WK_INT4 ? (k) >> 1 : (k)*wsz)
  const int64_t pf_off = pf != GV_PF_NEXT ? pf : (kind == WK_INT4 ? 2 : 1) * GV_NB * a->w_stride * wsz;
  /* Dense rows: one prefetch per 64-byte line (none when the rows are an L1 copy). */
  const int64_t pf_every = a->no_prefetch ? 0 : 1;
  (void)wsz;
  if (quant && m0 == 0) {
    const int64_t ss = xk_dtype_size(a->sz_dtype);
    for (int j = 0; j < GV_NB; j++) {
      const int64_t r = (n0 + GV_NB + j) * a->sz_stride + k0 / G;
      _mm_prefetch((const char *)a->scales + r * ss, _MM_HINT_T0);
      if (a->zeros) _mm_prefetch((const char *)a->zeros + r * ss, _MM_HINT_T0);
    }
  }
  wparams wp[GV_NB];
  for (int j = 0; j < GV_NB; j++) wp[j].p = wp[j].q = vf_zero();
  for (int64_t g0 = k0; g0 < k1;) {
    const int64_t g1 = quant ? min64(k1, (g0 / G + 1) * G) : k1;
    if (quant)
      for (int j = 0; j < nb; j++) wp[j] = wparams_load(a, kind, n0 + j, g0 / G);
    int64_t k = g0;
    {
      const vmask msk = vm_first(VL);
#define FULL 1
      for (; k + VL <= g1; k += VL) {
        if (pf_every && (kb_of(k) & (64 * pf_every - 1)) == 0) {
          GV_J(GV_PF)
        }
        GV_STEP
      }
#undef FULL
    }
    if (k < g1) {
      const vmask msk = vm_first(g1 - k);
#define FULL 0
      GV_STEP
#undef FULL
    }
    g0 = g1;
  }
#define GV_SAVE(i, j) \
  if (GV_ON(i, j)) vf_store(accbuf + ((m0 + (i)) * GV_LD + (j)) * VL, a##i##j);
  GV_IJ(GV_SAVE)
#undef kb_of
}

#define GV_CASE(KIND, MT, NB) \
  case ((MT)-1) * GV_NB + (NB)-1: gv_tile(a, KIND, MT, NB, m0, n0, k0, k1, accbuf, first, pf); break;

#if VL == 16
#define GV_CASES_MT(KIND, MT) GV_CASE(KIND, MT, 1) GV_CASE(KIND, MT, 2) GV_CASE(KIND, MT, 3) GV_CASE(KIND, MT, 4)
#define GV_CASES(KIND) GV_CASES_MT(KIND, 1) GV_CASES_MT(KIND, 2) GV_CASES_MT(KIND, 3) GV_CASES_MT(KIND, 4)
#else
#define GV_CASES_3(KIND, MT) GV_CASE(KIND, MT, 1) GV_CASE(KIND, MT, 2) GV_CASE(KIND, MT, 3)
#define GV_CASES_6(KIND, MT) GV_CASES_3(KIND, MT) GV_CASE(KIND, MT, 4) GV_CASE(KIND, MT, 5) GV_CASE(KIND, MT, 6)
#define GV_CASES(KIND) \
  GV_CASES_6(KIND, 1) GV_CASES_6(KIND, 2) GV_CASES_3(KIND, 3) GV_CASE(KIND, 3, 4) GV_CASES_3(KIND, 4)
#endif
#define GV_DISPATCH(KIND)                                                                               \
  static void gv_tile_##KIND(const xk_linear_args *a, int mt, int nb, int64_t m0, int64_t n0, int64_t k0, \
                             int64_t k1, float *accbuf, int first, int64_t pf) {                        \
    switch ((mt - 1) * GV_NB + nb - 1) {                                                                \
      GV_CASES(KIND)                                                                                    \
      default: break;                                                                                   \
    }                                                                                                   \
  }
GV_DISPATCH(WK_F32)
GV_DISPATCH(WK_F16)
GV_DISPATCH(WK_BF16)
#if VL == 8 /* AVX-512 decodes int4 in q4_gemv */
GV_DISPATCH(WK_INT4)
#endif
GV_DISPATCH(WK_INT8)

typedef void (*gv_tile_fn)(const xk_linear_args *, int, int, int64_t, int64_t, int64_t, int64_t, float *, int,
                           int64_t);


/* out[m][n0 .. n0+nb) = horizontal sums of accbuf row m's nb accumulators
 * (+ bias); f32 output without bias is stored directly. */
static void gv_finish(const xk_linear_args *a, int64_t M, int64_t n0, int nb, const float *accbuf) {
  for (int64_t m = 0; m < M; m++) {
    float sums[GV_LD];
    for (int j = 0; j < nb; j++) sums[j] = vf_hsum(vf_load(accbuf + (m * GV_LD + j) * VL));
    if (a->out_dtype == XK_F32 && !a->bias) {
      memcpy((float *)a->out + m * a->out_stride + n0, sums, (size_t)nb * 4);
      continue;
    }
    for (int j = 0; j < nb; j++) store_out(a, m, n0 + j, sums[j]);
  }
}

#if VL == 8
/* ---- M = 2 .. 16 on AVX2 ---------------------------------------------------
 * Blocks of GV_BLK weight rows; per block, K in chunks of kc, the chunk of x
 * (every row, at most GV_XCH bytes) staying in L1 while each tile of nbt
 * weight rows runs every row tile over it. Register tiles have 12
 * accumulators where M allows (4 x 3, 3 x 4, 2 x 6: a step of 8 k loads
 * 7 or 8 vectors for 12 FMAs); FMA latency 4 on 2 pipes needs 8 chains.
 * The per-lane partial sums live in accbuf between chunks, so every output's
 * arithmetic is that of one gv_tile over all of K: the tiling, kc and M do
 * not change results.
 * Before (session 13: 4 x 2 tiles, all of K per weight-row pair) every pair
 * of weight rows read all of x, from L2 once x passed 32 KiB (M >= 8): M = 16
 * bf16 ran at 33% of the FMA peak, M = 4 cold at 45%. A 4 x 3 tile runs at
 * ~99% of the FMA peak on L1 data over 128 steps, ~85% over 32 (kc = 256).
 * Tried, no better in a harness on this shared Zen 3 (M = 16, K = 4096):
 * blocks of 24 or 48 rows, x chunks of 24 or 32 KiB, prefetching all rows
 * from every row tile or into L2 only; prefetching each tile's share of the
 * next x chunk was ~10% slower.
 * The launcher spaces the x rows 1 KiB apart modulo 4 KiB from K = 1024
 * (rows a power of two apart would share L1 sets: +10%). */
#define GV_XCH 16384 /* bytes of x per K chunk */
#define GV_CONV_KC 1024 /* K chunk bound when rows are converted (M > GV_MT) */

static inline int gv_nb_of(int64_t mt) { return mt >= 4 ? 3 : mt == 3 ? 4 : 6; }

static void gv_blocked(const xk_linear_args *a, gv_tile_fn tile, const int kind, int64_t n_begin, int64_t n_end) {
  const int64_t M = a->m, K = a->k;
  const int64_t T = cdiv(M, GV_MT); /* row tiles, of M / T or M / T + 1 rows */
  /* Several row tiles share a 3-row weight tile (converted once to f32 when
   * it is f16 or bf16); one row tile takes the widest tile it allows. */
  const int64_t nbt = T > 1 ? 3 : gv_nb_of(M);
  /* One row tile (M <= 4) streams its rows over all of K, x (<= 64 KiB)
   * from L2: in chunks the block's 12 row streams hop, and M = 4 cold ran
   * ~10% slower (bench, alternated with session 13's binary). */
  const int64_t kc = T == 1 ? (K + 127) / 128 * 128 : (GV_XCH / (4 * M)) & ~(int64_t)127;
  const int conv = T > 1 && (kind == WK_F16 || kind == WK_BF16);
  const int64_t es = a->w_kind == XK_WEIGHT_DENSE ? xk_dtype_size(a->w_dtype) : 1;
  const int64_t row_bytes = a->w_stride * es;
  const int64_t kc_bytes = kind == WK_INT4 ? kc / 2 : kc * es;
  float accbuf[GV_MAXM * GV_LD * VL] __attribute__((aligned(64)));
  float wbuf[3 * GV_CONV_KC] __attribute__((aligned(64)));
  xk_linear_args later = *a; /* row tiles after the first read the weights from L1 */
  later.no_prefetch = 1;
  xk_linear_args cb = *a; /* the converted tile */
  cb.w = wbuf;
  cb.w_stride = kc;
  cb.w_dtype = XK_F32;
  cb.no_prefetch = 1;
  for (int64_t n0 = n_begin; n0 < n_end; n0 += GV_BLK) {
    const int64_t bl = min64(GV_BLK, n_end - n0);
    if (K == 0) memset(accbuf, 0, sizeof accbuf);
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      const int64_t k1 = min64(K, k0 + kc);
      for (int64_t t0 = 0; t0 < bl; t0 += nbt) {
        const int nb = (int)min64(nbt, bl - t0);
        float *acc = accbuf + t0 * VL;
        /* Prefetch the next tile's rows: the block's next, or after its last
         * the block's first at the next chunk. */
        const int64_t pf = t0 + nbt < bl ? nbt * row_bytes : kc_bytes - t0 * row_bytes;
        if (conv) {
          for (int j = 0; j < nb; j++) {
            const char *src = (const char *)w_row(a, n0 + t0 + j) + k0 * es;
            for (int64_t b = 0; b < (k1 - k0) * es; b += 64) _mm_prefetch(src + pf + b, _MM_HINT_T0);
            xk_convert_row(wbuf + j * kc, XK_F32, src, a->w_dtype, k1 - k0, 1.0f);
          }
          cb.xf = a->xf + k0;
        }
        for (int64_t i = 0, m0 = 0; i < T; m0 += M / T + (i < M % T), i++) {
          const int mt = (int)(M / T + (i < M % T));
          if (conv)
            gv_tile_WK_F32(&cb, mt, nb, m0, 0, 0, k1 - k0, acc, k0 == 0, 0);
          else
            tile(i == 0 ? a : &later, mt, nb, m0, n0 + t0, k0, k1, acc, k0 == 0, pf);
        }
      }
    }
    gv_finish(a, M, n0, (int)bl, accbuf);
  }
}
#endif

#if VL == 16
/* ---- int4 decode on AVX-512 ------------------------------------------------
 *
 * Per 16 codes of a weight row: one immediate shift of the row's 64-byte
 * block (the codes in the low nibbles; vpermps ignores the rest), one vpermps
 * from the group's 16-entry table (code - zero) * scale and one FMA per
 * activation row. A table costs one FMA per group and row, from scales and
 * -zero * scale converted to f32 once per Q4_SB codes of a tile. The weights
 * are exactly those of the other tiers (fma(code, s, -z * s), exact for
 * f16/bf16 scales), summed in a fixed order that depends on K and M only.
 *
 * Measured and rejected (session 9; M = 1, K = 4096, N = 2048, harness with
 * old and new kernels interleaved in one process, load 3-4.5). This kernel
 * runs at 18.2-18.9 GB/s with the codes in L2/L3 against 16.8 GB/s from
 * DRAM (8-stream probe), so it is near its vector throughput at DRAM speed:
 *  - bf16 activations through vdpbf16ps on exact bf16 tables (code - zi),
 *    codes paired by vpmultishiftqb, scale applied per group: 3 ops per 32
 *    codes and row instead of 6, yet 1.3-1.4x slower (30 -> 40 us, N = 256
 *    warm): vdpbf16ps costs ~1.4 FMAs here and vpermw more than vpermps;
 *    with a 16-bit shift instead of vpmultishiftqb still 1.2x slower.
 *  - the tile unit for M = 1 (16 weight rows unpacked by shift + vpermw
 *    into an A tile, x as a one-column B tile, C per group times the 16
 *    rows' scales): 1.3-1.45x slower (224 -> 293-304 us at G = K, 237 ->
 *    336 us at g128, L3-warm); each TDPBF16PS costs a full tile op for one
 *    column, and the tile loads wait for the vector stores that fill them.
 *  - code prefetch 2 super-tiles ahead, half a super-tile, NTA, a second
 *    T1 prefetch two super-tiles on, and scale/zero lines one super-tile
 *    ahead: cold medians equal or 1-7% slower (NTA 2x slower).
 * Session 10 (same kind of harness, 1 GiB cold, load 4-7, and a pattern
 * model: the same decode without scales over other row orders):
 *  - kept: 8-row tiles at M = 1 for G % 128 == 0 (2-5% faster cold; for
 *    G = 32/64 4-8% slower, so those stay 4 wide) and one scale chunk per
 *    4096 codes (+2-3% warm).
 *  - where the time goes (K = 4096, N = 2048 g128): pure loads in this
 *    order 258 us, with the decode 290-300 us, the full kernel ~320-335 us,
 *    8-stream probe 248 us. The decode's 23 vector ops per 128 codes and
 *    row sit at the p0/p5 bound (vpermps and shifts one a cycle, FMA two);
 *    scales and their tables are ~12% of the warm time (g128, 24% at g32).
 *  - even nibbles by loads at byte offsets 1..3 instead of shifts (20 ops
 *    instead of 23): the split (or masked) loads make it 15% slower warm.
 *  - instruction rates measured here: vdpbf16ps one per ~2 cycles and
 *    sharing p5, so no bf16-pair path; vpdpbusd/vpdpwssd two a cycle, but
 *    an exact integer dot needs x in 2-3 int8/int16 planes per block plus
 *    per-group plane and zero bookkeeping: no fewer ops at g128, more at
 *    g32, and inexact when a block's x spans more exponents than the planes.
 *  - scale/zero lines prefetched 1-4 super-tiles ahead, spread over the
 *    first blocks: g128 1-2% faster, g32 2-3% slower; prefetch hints T1/T2,
 *    distances 1-3 super-tiles, R = 4-16 rows per stream: within 3%; half
 *    a super-tile or none: 10-25% slower.
 */
#define Q4_SB 4096                /* codes per scale chunk (multiple of 128) */
#define Q4_SMAX (Q4_SB / 32 + 16) /* groups a chunk touches (<= 128), room for whole 16-lane stores */
#define Q4_MAXR 4                 /* row tiles per super-tile at most */
#define Q4_NBMAX 8                /* weight rows per tile at most (M = 1, groups of 128 k or more) */
enum { Q4_GANY = 0, Q4_G32 = 1, Q4_G64 = 2, Q4_G128 = 3 };

/* Weight rows n0 + j * rs (j < NB) against activation rows m0 .. m0 + MT - 1 over
 * codes [k0, k1); the partial sums of (m, j) live in accbuf[(m * ns + slot + j) * VL]. */
XK_ALWAYS_INLINE void q4_tile(const xk_linear_args *a, const int MT, const int NB, const int GK, int64_t m0,
                              int64_t n0, int64_t rs, int64_t k0, int64_t k1, float *accbuf, int64_t ns, int64_t slot,
                              int first) {
  const int64_t G = a->group_size;
  const int has_z = a->zeros != NULL;
  const vf iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  vf acc[2][Q4_NBMAX], lut[Q4_NBMAX];
  __m512i d[Q4_NBMAX];
  const float *xr[2];
  const uint8_t *wr[Q4_NBMAX];
  for (int i = 0; i < MT; i++) {
    xr[i] = a->xf + (m0 + i) * a->xf_stride;
    for (int j = 0; j < NB; j++) acc[i][j] = first ? vf_zero() : vf_load(accbuf + ((m0 + i) * ns + slot + j) * VL);
  }
  for (int j = 0; j < NB; j++) wr[j] = (const uint8_t *)a->w + (n0 + j * rs) * a->w_stride;
  /* The same line of the same rows one super-tile (4 rs rows) on: measured
   * best (a shorter distance lands in rows this tile is reading). */
  const int64_t pf = (NB > 4 ? NB : 4) * rs * a->w_stride;
  /* Per group of the scale chunk: s and -z * s (exact for f16/bf16 scales). */
  float sb[Q4_NBMAX][Q4_SMAX] __attribute__((aligned(64))), zb[Q4_NBMAX][Q4_SMAX] __attribute__((aligned(64)));
  const int64_t ss = xk_dtype_size(a->sz_dtype);

#define Q4_STEP(I)                                                                           \
  {                                                                                          \
    vf w_[Q4_NBMAX];                                                                             \
    for (int j = 0; j < NB; j++)                                                             \
      w_[j] = _mm512_permutexvar_ps((I) ? _mm512_srli_epi32(d[j], 4 * (I)) : d[j], lut[j]);  \
    for (int i = 0; i < MT; i++) {                                                           \
      const vf x_ = vf_load(xr[i] + b0 + 16 * (I));                                          \
      for (int j = 0; j < NB; j++) acc[i][j] = vf_fma(x_, w_[j], acc[i][j]);                 \
    }                                                                                        \
  }
  /* The table of group gi: (code - zero) * scale for codes 0..15. */
#define Q4_LUT(j) lut[j] = _mm512_fmadd_ps(iota, vf_set1(sb[j][gi]), vf_set1(zb[j][gi]))
  /* The current group ends at code KEND: the next group's tables. */
#define Q4_BUMP                                        \
  {                                                    \
    gi++;                                              \
    for (int j = 0; j < NB; j++) Q4_LUT(j);            \
  }
#define Q4_NEXT(KEND)                                  \
  if ((KEND) < c1) {                                   \
    gi++;                                              \
    gend += G;                                         \
    for (int j = 0; j < NB; j++) Q4_LUT(j);            \
  }

  for (int64_t c0 = k0; c0 < k1; c0 += Q4_SB) {
    const int64_t c1 = min64(k1, c0 + Q4_SB);
    const int64_t g_lo = c0 / G, ng = (c1 - 1) / G + 1 - g_lo;
    int64_t gi = 0, gend = (g_lo + 1) * G; /* the current group: index in sb, end */
    for (int j = 0; j < NB; j++) {
      const int64_t off = ((n0 + j * rs) * a->sz_stride + g_lo) * ss;
      for (int64_t g = 0; g < ng; g += VL) {
        const vmask m = vm_first(ng - g);
        const vf sv = vw_loadm((const char *)a->scales + off + g * ss, a->sz_dtype, m);
        const vf zv = has_z ? vw_loadm((const char *)a->zeros + off + g * ss, a->sz_dtype, m) : vf_set1(8.0f);
        vf_store(sb[j] + g, sv);
        vf_store(zb[j] + g, _mm512_sub_ps(vf_zero(), _mm512_mul_ps(zv, sv)));
      }
      Q4_LUT(j);
    }
    for (int64_t b0 = c0; b0 < c1; b0 += 128) {
      for (int j = 0; j < NB; j++) {
        d[j] = _mm512_loadu_si512(wr[j] + b0 / 2);
        _mm_prefetch((const char *)wr[j] + pf + b0 / 2, _MM_HINT_T0);
      }
      if (b0 + 128 <= c1 && (GK == Q4_G32 || GK == Q4_G64)) {
        /* Groups of 32 or 64 end inside the block at fixed codes: the next
         * tables without the bookkeeping of Q4_NEXT (gend is not used). */
        Q4_STEP(0) Q4_STEP(1)
        if (GK == Q4_G32) Q4_BUMP
        Q4_STEP(2) Q4_STEP(3)
        Q4_BUMP
        Q4_STEP(4) Q4_STEP(5)
        if (GK == Q4_G32) Q4_BUMP
        Q4_STEP(6) Q4_STEP(7)
        if (b0 + 128 < c1) Q4_BUMP
      } else if (b0 + 128 <= c1) {
        Q4_STEP(0) Q4_STEP(1)
        if (GK == Q4_GANY && b0 + 32 == gend) Q4_NEXT(b0 + 32)
        Q4_STEP(2) Q4_STEP(3)
        if (GK == Q4_GANY && b0 + 64 == gend) Q4_NEXT(b0 + 64)
        Q4_STEP(4) Q4_STEP(5)
        if (GK == Q4_GANY && b0 + 96 == gend) Q4_NEXT(b0 + 96)
        Q4_STEP(6) Q4_STEP(7)
        if (b0 + 128 == gend) Q4_NEXT(b0 + 128)
      } else { /* the last, partial block of K: 32, 64 or 96 codes */
        if (GK == Q4_G32 || GK == Q4_G64) gend = b0 + G; /* a group starts at b0 */
        Q4_STEP(0) Q4_STEP(1)
        if (b0 + 32 == gend) Q4_NEXT(b0 + 32)
        if (b0 + 32 < c1) {
          Q4_STEP(2) Q4_STEP(3)
          if (b0 + 64 == gend) Q4_NEXT(b0 + 64)
        }
        if (b0 + 64 < c1) {
          Q4_STEP(4) Q4_STEP(5)
          if (b0 + 96 == gend) Q4_NEXT(b0 + 96)
        }
      }
    }
  }
#undef Q4_STEP
#undef Q4_LUT
#undef Q4_NEXT
#undef Q4_BUMP
  for (int i = 0; i < MT; i++)
    for (int j = 0; j < NB; j++) vf_store(accbuf + ((m0 + i) * ns + slot + j) * VL, acc[i][j]);
}

#define Q4_FN(MT, NB, GK)                                                                                  \
  static void q4_tile_##MT##_##NB##_##GK(const xk_linear_args *a, int64_t m0, int64_t n0, int64_t rs, int64_t k0, \
                                         int64_t k1, float *accbuf, int64_t ns, int64_t slot, int first) {         \
    q4_tile(a, MT, NB, GK, m0, n0, rs, k0, k1, accbuf, ns, slot, first);                                        \
  }
#define Q4_FNS(GK) Q4_FN(1, 1, GK) Q4_FN(1, 4, GK) Q4_FN(2, 1, GK) Q4_FN(2, 4, GK)
Q4_FNS(0)
Q4_FNS(1)
Q4_FNS(2)
Q4_FNS(3)
Q4_FN(1, 8, 3)
typedef void (*q4_tile_fn)(const xk_linear_args *, int64_t, int64_t, int64_t, int64_t, int64_t, float *, int64_t,
                           int64_t, int);
#define Q4_ROW(GK) {q4_tile_1_1_##GK, q4_tile_1_4_##GK, q4_tile_2_1_##GK, q4_tile_2_4_##GK}
static const q4_tile_fn q4_tiles[4][4] = {Q4_ROW(0), Q4_ROW(1), Q4_ROW(2), Q4_ROW(3)};

/* linear_gemv for int4 codes: tiles of up to 2 activation rows x 4 weight
 * rows (8 weight rows at M = 1 when G % 128 == 0). A super-tile of 4 R (8 R)
 * rows runs as R tiles of rows r, r + R, r + 2R, ... (R = rows per 4 KiB
 * page), so that the tile's row streams lie in different pages (one stream
 * per page for the L2 streamer). Each output's arithmetic is the same in
 * any tile, so tiling never changes results. */
static void q4_gemv(const xk_linear_args *a, int64_t n_begin, int64_t n_end) {
  const int64_t M = a->m, K = a->k, G = a->group_size;
  const int gk = G == 32 ? Q4_G32 : G == 64 ? Q4_G64 : G % 128 == 0 ? Q4_G128 : Q4_GANY;
  /* One row tile streams each weight row once over all of K; several row
   * tiles share K chunks that stay in L1 between them. */
  const int64_t kch = M <= 2 ? (K > 0 ? K : 1) : GV_KCH;
  int64_t R = a->w_stride <= 0 || a->w_stride >= 4096 ? 1 : 4096 / a->w_stride;
  if (R > Q4_MAXR) R = Q4_MAXR;
  const int tw = M == 1 && gk == Q4_G128 ? 8 : 4; /* rows per tile of a full super-tile */
  const int64_t ns = tw * Q4_MAXR;
  float accbuf[GV_MAXM * 4 * Q4_MAXR * VL] __attribute__((aligned(64)));
  for (int64_t n0 = n_begin; n0 < n_end;) {
    /* A super-tile of tw R rows, else of 4R rows, else a tile of 4, else one row (the block's end). */
    const int64_t left = n_end - n0;
    const int w = left >= tw * R ? tw : left >= 4 ? 4 : 1;
    const int64_t rt = w > 1 && left >= w * R ? R : 1, rows = w * rt;
    if (K == 0) memset(accbuf, 0, sizeof accbuf);
    for (int64_t k0 = 0; k0 < K; k0 += kch) {
      const int64_t k1 = min64(K, k0 + kch);
      for (int64_t m0 = 0; m0 < M; m0 += 2) {
        const int mt = (int)min64(2, M - m0);
        if (rows == 1) {
          q4_tiles[gk][(mt - 1) * 2](a, m0, n0, 1, k0, k1, accbuf, ns, 0, k0 == 0);
          continue;
        }
        const q4_tile_fn f = w == 8 ? q4_tile_1_8_3 : q4_tiles[gk][(mt - 1) * 2 + 1];
        for (int64_t r = 0; r < rt; r++) f(a, m0, n0 + r, rt, k0, k1, accbuf, ns, w * r, k0 == 0);
      }
    }
    /* Slot w r + j holds row n0 + r + j rt. */
    for (int64_t m = 0; m < M; m++)
      for (int64_t t = 0; t < rows; t++) {
        const int64_t slot = w * (t % rt) + t / rt;
        store_out(a, m, n0 + t, vf_hsum(vf_load(accbuf + (m * ns + slot) * VL)));
      }
    n0 += rows;
  }
}
#endif

#if VL == 16
/* Int8 codes at M = 1: weight rows n0 + j rs (j < 8) over all of K, 8 row
 * streams at once (in 8 pages when rows fill a page; 4 rows measured 4-5%
 * slower cold). Per output the same operations in the same order as
 * gv_tile (group by group, 16 codes a step, then the masked rest; one
 * accumulator; one reduction), so results do not depend on the tiling. */
static void q8_tile8(const xk_linear_args *a, int64_t n0, int64_t rs) {
  const int64_t K = a->k, G = a->group_size;
  const float *xr = a->xf;
  const uint8_t *wr[8];
  vf acc[8];
  for (int j = 0; j < 8; j++) {
    wr[j] = (const uint8_t *)a->w + (n0 + j * rs) * a->w_stride;
    acc[j] = vf_zero();
  }
  const int64_t pf = 8 * rs * a->w_stride; /* the same line one super-tile (8 rs rows) on */
  for (int64_t g0 = 0; g0 < K;) {
    const int64_t g1 = min64(K, (g0 / G + 1) * G);
    wparams wp[8];
    for (int j = 0; j < 8; j++) wp[j] = wparams_load(a, WK_INT8, n0 + j * rs, g0 / G);
    int64_t k = g0;
    for (; k + VL <= g1; k += VL) {
      if ((k & 63) == 0)
        for (int j = 0; j < 8; j++) _mm_prefetch((const char *)wr[j] + pf + k, _MM_HINT_T0);
      const vf x = vf_load(xr + k);
      for (int j = 0; j < 8; j++) acc[j] = vf_fma(x, w_vec(WK_INT8, wr[j], k, vm_first(VL), wp[j]), acc[j]);
    }
    if (k < g1) {
      const vmask msk = vm_first(g1 - k);
      const vf x = vf_loadm(xr + k, msk);
      for (int j = 0; j < 8; j++) acc[j] = vf_fma(x, w_vec(WK_INT8, wr[j], k, msk, wp[j]), acc[j]);
    }
    g0 = g1;
  }
  for (int j = 0; j < 8; j++) store_out(a, 0, n0 + j * rs, vf_hsum(acc[j]));
}
#endif

#if VL == 8
/* ---- M = 1 on AVX2 ----------------------------------------------------------
 *
 * One activation row: a tile streams D1_R weight rows at once over all of K
 * (eight FMA chains cover the FMA latency; eight row streams keep DRAM
 * busy).
 *
 * Dense and int8 rows: a block's rows are cut into D1_R runs of consecutive
 * rows and a tile takes the next row of every run, so each of the 8 streams
 * walks consecutive rows, one long sequential stream that the hardware
 * prefetchers keep running across rows (cold, K=4096 N=2048 bf16, 4 KiB pages:
 * ~0.85 -> ~0.72 ms against tiles of 8 adjacent rows; adjacent rows restart
 * 8 short streams every tile). The run length is odd, so the 8 rows of a tile
 * never share one L1 set when rows are a power of two long. No software
 * prefetch there: with long streams it measured no faster, and prefetching
 * within the rows (256 B to 2 KiB ahead) slower (1.05-1.15 ms: the prefetches
 * hold L1 miss buffers the hardware L2 streams would use). Int4 rows keep
 * tiles of adjacent rows and prefetch the same bytes of the next tile (when
 * those are at most 16 KiB: further ahead the lines left L1 before use); the
 * int4 loop is bound by its vector ops, not by DRAM, and runs measured 15%
 * slower there. Session 15 (int4 g128, K=4096 N=2048, one thread, alternated
 * in a C harness; this host's timings swing +-10%): no prefetch runs faster
 * warm (weights in L3: ~350 vs ~400 us) but slower cold (~560-600 vs ~520);
 * hints T1, T2, NTA and distances of 2 and 4 tiles measured within the noise
 * of T0 at one tile cold (498-538 us each); the words loaded once into a
 * register instead of as two AND operands, no faster (L2-resident 25.1 ->
 * 24.8 us at N=128); int4 groups run as in d1_q8 (start and end outside a
 * branch-free step loop, no sum t on the stack) slower (warm 396 -> 437-485,
 * L2-resident 24.9 -> 28.1 us), cause not found. Session 17 (N=128 in L2, K=4096 g128, ~22.6 us, ~1 cycle
 * per 8 codes and row, the same in L1 and L3, so not the memory walk): tiles of 10 or 12 adjacent rows (more
 * FMA chains) 23.4 / 25.1 us, the compiler spilling sums t; each 16-code step as two passes over the rows, one
 * nibble and one mask at a time (fewer live registers, same order per row) 29.3 us at 8 rows, 33.3 at 12;
 * both bit-identical, both rejected. Two threads: pinned to both
 * CPUs, int4 g128 M=1 ran 447 -> 241 us (best) and M=16 6.5 -> 3.2 ms; the
 * bench's bimodal 2-thread medians come from the other jobs on this 2-CPU
 * host, not from the work split.
 *
 * Dense rows: per output the operations of gv_tile (one 8-lane accumulator,
 * k in order, then the masked rest; one reduction), so results are those of
 * every other decode tile.
 *
 * Int4 and int8 rows: the weights are not dequantized one by one (that costs
 * a second FMA per 8 codes). Per group and lane the codes are summed against
 * x as they are, t = sum x_k q_k - z sum x_k, and the group adds s * t. The
 * zero term starts t (per-lane group sums of x, prepared once per chunk of K
 * for every row), except for int4 with a zeros tensor: there t starts at 0
 * and a tile adds the groups' -s z sum x to its sums once (see d1_q4). The
 * codes are not converted either: an AND leaves code q at bit b of its
 * 32-bit word (int4: b = 4i for nibble i < 6 of the block's word, or of the
 * word 2 bytes on for nibbles 6 and 7 of a block's first half, or a shift
 * down by 24 or 28 in its second half; int8: b = 8j for byte j < 3, a shift
 * by 24 for byte 3), a bit pattern below 2^24, which as an f32 is exactly
 * q 2^(b - 149) (a denormal, or the smallest normal binade). The FMA takes
 * it as it is against x_k 2^(149 - e - b), prepared per chunk: the product
 * is x_k q 2^-e exactly, in the unit 2^e of t (see d1_unit; the scales carry
 * 2^e). So per 8 codes one AND (or shift) and one
 * FMA, against AND, conversion and FMA before (warm, L1: int4 ~1.07 -> ~0.76
 * cycles per 8 codes and row in a standalone loop; the FMA takes denormal
 * operands at full rate on Zen 3). d1_gemv clears DAZ (MXCSR) for the call:
 * with it the codes would read as zeros. Int8 reads byte j of word l, so its
 * lane l covers k = 4l + j of each 32 (x transposed to match at prep).
 * The sums round differently from the other decode paths (products with a
 * power-of-2 factor, code order within a 32 or 128 block): the same
 * tolerance holds (measured error <= 0.03 of sqrt(K) 2^-24 sum |x w|; int4
 * with zeros since the zero terms moved out of t, M=1 K=4096 N=2048 bf16 x
 * of 4 scales: max 0.0095 / 0.0106 / 0.0153 at g128 / g64 / g32, against
 * 0.0041 / 0.0053 / 0.0064 before).
 * Each output's arithmetic does not depend on the tile: results do not
 * depend on the number of threads. */
#define D1_R 8     /* weight rows per tile */
#define D1_KC 4096 /* activations prepared per chunk of K (a multiple of 128) */
#define D1_PFMAX 16384 /* int4: bytes of the next tile prefetched at most */
#define D1_NB 64   /* rows whose partial sums (acc, t) outlive a chunk when K > D1_KC */
#define D1_MAXG (D1_KC / 32 + 1) /* groups a chunk touches at most (groups are a multiple of 32, or K) */

/* The prepared activations of the chunk [c0, c1) of K. */
typedef struct d1_chunk {
  int64_t c0, c1;            /* c1: min(c0 + D1_KC, K rounded up to 32) */
  int e;                     /* 2^e: the unit of the sums t (see d1_unit) */
  float xs[D1_KC];           /* x_k 2^(149 - e - b) in the kernels' order (see d1_prep); zero past K */
  float xg[D1_MAXG * VL];    /* per group starting in the chunk: lane l holds 2^-e times the sum of x_k over the
                              * group's k = l mod 8, times -zero when there is no zeros tensor */
  float xq[D1_MAXG];         /* int4 with zeros: per group starting in the chunk, the sum of its lanes in xg */
} d1_chunk;

/* v * 2^e = v p[0] p[1], exact unless the result under- or overflows (e in [-252, 254]: two normal powers of 2,
 * both of the sign of e, so the first product never leaves the range the second one ends in). */
typedef struct d1_pow2 {
  vf p[2];
} d1_pow2;
static inline d1_pow2 d1_pow2_of(int e) {
  const int h = e / 2;
  const d1_pow2 r = {{_mm256_castsi256_ps(_mm256_set1_epi32((h + 127) << 23)),
                      _mm256_castsi256_ps(_mm256_set1_epi32((e - h + 127) << 23))}};
  return r;
}
XK_ALWAYS_INLINE vf d1_ldexp(vf v, d1_pow2 f) { return _mm256_mul_ps(_mm256_mul_ps(v, f.p[0]), f.p[1]); }

/* The bit position b of the code of nibble i in half h of a block in the word D1_Q4 ANDs it from: the block's
 * word (i < 6), the word 2 bytes on (i = 6, 7 in half 0: still inside the block), the word shifted down by 24 or
 * 28 (i = 6, 7 in half 1). */
static inline int d1_shift(int i, int h) { return i < 6 ? 4 * i : h ? 0 : 4 * (i - 4); }

/* The exponent e of the unit 2^e of the group sums t: with b the largest biased exponent of |x_k| (so
 * |x_k| < 2^(b - 126)), e = b - 104 keeps every prepared x_k 2^(149 - e - shift) below 2^127 and the products
 * x_k q 2^-e normal for |x_k| down to ~2^-100 of the largest (below that they round as denormals, far inside
 * the tolerance). Inf / nan count as b = 254. */
static int d1_unit(const xk_linear_args *a) {
  const int64_t K = a->k;
  const __m256i abs = _mm256_set1_epi32(0x7FFFFFFF);
  __m256i m = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + VL <= K; k += VL)
    m = _mm256_max_epi32(m, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(a->xf + k)), abs));
  uint32_t u[VL];
  _mm256_storeu_si256((__m256i *)u, m);
  uint32_t mx = 0;
  for (int l = 0; l < VL; l++) mx = u[l] > mx ? u[l] : mx;
  for (; k < K; k++) {
    uint32_t b;
    memcpy(&b, a->xf + k, 4);
    b &= 0x7FFFFFFFu;
    mx = b > mx ? b : mx;
  }
  int b = (int)(mx >> 23);
  if (b > 254) b = 254; /* inf / nan */
  return b - 104;
}

static void d1_prep(const xk_linear_args *a, const int q4, int64_t c0, d1_chunk *c) {
  const int64_t K = a->k, G = a->group_size;
  const float *x = a->xf;
  c->c0 = c0;
  c->c1 = min64(c0 + D1_KC, (K + 31) & ~(int64_t)31);
#define D1_X(K0) ((K0) + VL <= K ? vf_load(x + (K0)) : vf_loadm(x + (K0), vm_first(K - (K0))))
  if (q4) {
    /* x_k 2^(149 - e - shift) for k in nibble i, half h of its block: 16 factors, index (k / 8) % 16. */
    d1_pow2 f[16];
    for (int i = 0; i < 16; i++) f[i] = d1_pow2_of(149 - c->e - d1_shift(i >> 1, i & 1));
    for (int64_t k = c0; k < c->c1; k += 128)
      for (int i = 0; i < 16 && k + 8 * i < c->c1; i++)
        vf_store(c->xs + (k - c0) + 8 * i, d1_ldexp(D1_X(k + 8 * i), f[i]));
  } else {
    /* Int8: each 32 k, x_(k + 4l + j) to lane l of vector j (byte j of word l), times 2^(149 - e - 8j), j < 3,
     * and 2^(149 - e) for j = 3 (shifted down): halves of 4 k to the 128-bit lanes, then 4 x 4 transposes. */
    d1_pow2 f[4];
    for (int j = 0; j < 4; j++) f[j] = d1_pow2_of(149 - c->e - (j < 3 ? 8 * j : 0));
    for (int64_t k = c0; k < c->c1; k += 32) {
      const vf v0 = D1_X(k), v1 = D1_X(k + 8), v2 = D1_X(k + 16), v3 = D1_X(k + 24);
      const vf u0 = _mm256_permute2f128_ps(v0, v2, 0x20), u1 = _mm256_permute2f128_ps(v0, v2, 0x31);
      const vf u2 = _mm256_permute2f128_ps(v1, v3, 0x20), u3 = _mm256_permute2f128_ps(v1, v3, 0x31);
      const __m256d l01 = _mm256_castps_pd(_mm256_unpacklo_ps(u0, u1));
      const __m256d h01 = _mm256_castps_pd(_mm256_unpackhi_ps(u0, u1));
      const __m256d l23 = _mm256_castps_pd(_mm256_unpacklo_ps(u2, u3));
      const __m256d h23 = _mm256_castps_pd(_mm256_unpackhi_ps(u2, u3));
      float *d = c->xs + (k - c0);
      vf_store(d, d1_ldexp(_mm256_castpd_ps(_mm256_unpacklo_pd(l01, l23)), f[0]));
      vf_store(d + 8, d1_ldexp(_mm256_castpd_ps(_mm256_unpackhi_pd(l01, l23)), f[1]));
      vf_store(d + 16, d1_ldexp(_mm256_castpd_ps(_mm256_unpacklo_pd(h01, h23)), f[2]));
      vf_store(d + 24, d1_ldexp(_mm256_castpd_ps(_mm256_unpackhi_pd(h01, h23)), f[3]));
    }
  }
  /* The zero terms in the unit 2^e. */
  const d1_pow2 fe = d1_pow2_of(-c->e);
  const vf zs = vf_set1(a->zeros ? 1.0f : -implicit_zero(a));
  float *xg = c->xg;
  for (int64_t g0 = (c0 + G - 1) / G * G; g0 < min64(c0 + D1_KC, K); g0 += G, xg += VL) {
    vf s = vf_zero();
    for (int64_t k = g0; k < min64(g0 + G, K); k += VL) s = vf_add(s, D1_X(k));
    vf_store(xg, d1_ldexp(_mm256_mul_ps(s, zs), fe));
    if (a->zeros) c->xq[(xg - c->xg) / VL] = vf_hsum(vf_load(xg));
  }
#undef D1_X
}

/* Dense rows n0 + j rs (j < R) over all of K. */
XK_ALWAYS_INLINE void d1_dense(const xk_linear_args *a, const int kind, const int R, int64_t n0, int64_t rs) {
  const int64_t K = a->k;
  const float *x = a->xf;
  const char *wr[D1_R];
  vf acc[D1_R];
  for (int j = 0; j < R; j++) {
    wr[j] = (const char *)w_row(a, n0 + j * rs);
    acc[j] = vf_zero();
  }
  const wparams wp = {vf_zero(), vf_zero()};
  int64_t k = 0;
  for (; k + VL <= K; k += VL) {
    const vf xv = vf_load(x + k);
    for (int j = 0; j < R; j++) acc[j] = vf_fma(xv, w_vec(kind, wr[j], k, VL, wp), acc[j]);
  }
  if (k < K) {
    const vmask m = vm_first(K - k);
    const vf xv = vf_loadm(x + k, m);
    for (int j = 0; j < R; j++) acc[j] = vf_fma(xv, w_vec(kind, wr[j], k, m, wp), acc[j]);
  }
  for (int j = 0; j < R; j++) store_out(a, 0, n0 + j * rs, vf_hsum(acc[j]));
}

/* This chunk's scales (times 2^e when e != 0) and zeros of rows n0 + j rs in f32, groups c0 / G on; returns
 * their number. */
XK_ALWAYS_INLINE int64_t d1_scales(const xk_linear_args *a, const int has_z, const int R, int64_t n0, int64_t rs,
                                   const d1_chunk *c, int e, float (*sb)[D1_MAXG], float (*zb)[D1_MAXG]) {
  const int64_t G = a->group_size, g_lo = c->c0 / G, ng = (min64(c->c1, a->k) - 1) / G + 1 - g_lo;
  const int64_t ss = xk_dtype_size(a->sz_dtype);
  const d1_pow2 fe = d1_pow2_of(e);
  for (int j = 0; j < R; j++) {
    const int64_t off = ((n0 + j * rs) * a->sz_stride + g_lo) * ss;
    xk_convert_row(sb[j], XK_F32, (const char *)a->scales + off, a->sz_dtype, ng, 1.0f);
    int64_t g = 0;
    for (; g + VL <= ng; g += VL) vf_store(sb[j] + g, d1_ldexp(vf_load(sb[j] + g), fe));
    for (; g < ng; g++) sb[j][g] = sb[j][g] * _mm256_cvtss_f32(fe.p[0]) * _mm256_cvtss_f32(fe.p[1]);
    if (has_z) xk_convert_row(zb[j], XK_F32, (const char *)a->zeros + off, a->sz_dtype, ng, 1.0f);
  }
  return ng;
}

/* Int4 rows n0 + j rs (j < R; rs = 1: the tiles of adjacent rows) over the chunk c. st holds each row's
 * (acc, t) between chunks, row j's pair at st + 2 j rs VL; first / last: the chunk starts / ends K. Per 8 codes
 * and row one AND (two shifts for two nibbles of 128) and one FMA on the codes' bit patterns (see above). */
XK_ALWAYS_INLINE void d1_q4(const xk_linear_args *a, const int has_z, const int R, int64_t n0, int64_t rs,
                            const d1_chunk *c, float *st, int first, int last) {
  const int64_t K = a->k, G = a->group_size, c0 = c->c0, c1 = c->c1;
  const float *xs = c->xs - c0;
  const uint8_t *wr[D1_R];
  vf t[D1_R];
  float acc[D1_R * VL] __attribute__((aligned(32))); /* in memory (see d1_q8): in registers, t spilled */
  for (int j = 0; j < R; j++) {
    wr[j] = (const uint8_t *)a->w + (n0 + j * rs) * a->w_stride;
    vf_store(acc + j * VL, first ? vf_zero() : vf_load(st + (2 * j * rs) * VL));
    t[j] = first ? vf_zero() : vf_load(st + (2 * j * rs + 1) * VL);
  }
  const int64_t pf = R * a->w_stride, pf_on = rs == 1 && pf <= D1_PFMAX;
  float sb[D1_R][D1_MAXG], zb[D1_R][D1_MAXG];
  const int64_t ng = d1_scales(a, has_z, R, n0, rs, c, c->e, sb, zb);
  int64_t gi = 0;                              /* the current group, index in sb */
  int64_t gstart = c0 / G * G;                 /* its start (before c0: started in an earlier chunk) */
  int64_t gend = min64(gstart + G, K);         /* its end */
  const float *xg = c->xg;                     /* the next group start's lane sums */
  if (has_z) {
    /* With a zeros tensor, the zero terms -s z sum x of the groups starting in this chunk go into acc once,
     * 8 groups a vector (xq: the groups' sums of x), instead of t = -z sum x per group and row (an FMA and
     * a broadcast each). Cold K=4096 N=2048, 3 alternated rounds: g128 480-497 -> 476-478 us, g64 564-580
     * -> 526-539, g32 703-732 -> 633-658. A different rounding (the zero terms summed apart), same
     * tolerance. Symmetric rows keep t = -8 sum x (a copy): the same there measured ~5% slower. */
    const int64_t g0 = gstart < c0 ? 1 : 0, nq = ng - g0;
    for (int j = 0; j < R; j++) {
      vf zt = vf_zero();
      float zs = 0.0f;
      int64_t i = 0;
      for (; i + VL <= nq; i += VL)
        zt = _mm256_fnmadd_ps(_mm256_mul_ps(vf_load(sb[j] + g0 + i), vf_load(zb[j] + g0 + i)), vf_load(c->xq + i),
                              zt);
      for (; i < nq; i++) zs -= sb[j][g0 + i] * zb[j][g0 + i] * c->xq[i];
      zt = _mm256_add_ps(zt, _mm256_setr_ps(zs, 0, 0, 0, 0, 0, 0, 0));
      vf_store(acc + j * VL, vf_add(vf_load(acc + j * VL), zt));
    }
  }
  /* Block b0 (128 codes, 64 bytes a row): 32-code steps p (nibbles 2p, 2p + 1, both 32-byte halves). */
#define D1_Q4(P, H)                                                                                        \
  {                                                                                                      \
    const vf x0 = vf_load(xs + b0 + 32 * (P) + 8 * (H)), x1 = vf_load(xs + b0 + 32 * (P) + 16 + 8 * (H));   \
    __m256i m0 = _mm256_set1_epi32((int)(0xFu << d1_shift(2 * (P), H)));                                \
    __m256i m1 = _mm256_set1_epi32((int)(0xFu << d1_shift(2 * (P) + 1, H)));                            \
    __asm__ volatile("" : "+x"(m0), "+x"(m1)); /* set here: hoisted, 8 masks spilled two sums t */      \
    int64_t off = b0 / 2 + 32 * (H) + ((P) == 3 && (H) == 0 ? 2 : 0);                                   \
    __asm__ volatile("" : "+r"(off)); /* loads where used: hoisted, the 8 rows' words spill */           \
    for (int j = 0; j < R; j++) {                                                                        \
      __m256i w = _mm256_loadu_si256((const __m256i *)(wr[j] + off)), w1 = w;                           \
      if ((P) == 3 && (H) == 1) {                                                                        \
        w1 = _mm256_srli_epi32(w, 28);                                                                   \
        w = _mm256_srli_epi32(w, 24);                                                                    \
      }                                                                                                  \
      t[j] = vf_fma(x0, _mm256_castsi256_ps(_mm256_and_si256(w, m0)), t[j]);                            \
      t[j] = vf_fma(x1, _mm256_castsi256_ps((P) == 3 && (H) == 1 ? w1 : _mm256_and_si256(w1, m1)), t[j]); \
    }                                                                                                    \
  }
#define D1_Q4P(P)                                                                           \
  {                                                                                         \
    const int64_t k32 = b0 + 32 * (P);                                                      \
    if (k32 >= c1) break;                                                                   \
    if (k32 == gstart) { /* the group starts: t = -z sum x (zeros tensor: 0, the term is in acc) */\
      const vf xgv = has_z ? vf_zero() : vf_load(xg);                                       \
      xg += VL;                                                                             \
      for (int j = 0; j < R; j++) t[j] = xgv;                                               \
    }                                                                                       \
    D1_Q4(P, 0) D1_Q4(P, 1)                                                                 \
    if (k32 + 32 >= gend) { /* the group ends: acc += s t */                                \
      for (int j = 0; j < R; j++)                                                           \
        vf_store(acc + j * VL, vf_fma(t[j], vf_set1(sb[j][gi]), vf_load(acc + j * VL)));    \
      gi++;                                                                                 \
      gstart = gend;                                                                        \
      gend = min64(gend + G, K);                                                            \
    }                                                                                       \
  }
  for (int64_t b0 = c0; b0 < c1; b0 += 128) {
    if (pf_on)
      for (int j = 0; j < R; j++) _mm_prefetch((const char *)wr[j] + pf + b0 / 2, _MM_HINT_T0);
    do {
      D1_Q4P(0) D1_Q4P(1) D1_Q4P(2) D1_Q4P(3)
    } while (0);
  }
#undef D1_Q4P
#undef D1_Q4
  for (int j = 0; j < R; j++) {
    if (last) {
      store_out(a, 0, n0 + j * rs, vf_hsum(vf_load(acc + j * VL)));
    } else {
      vf_store(st + (2 * j * rs) * VL, vf_load(acc + j * VL));
      vf_store(st + (2 * j * rs + 1) * VL, t[j]);
    }
  }
}

/* t[j] += x_k q_k 2^-e of int8 rows wr over k in [k0, k1) (k0 a multiple of 32; k1 too, or K). Per 32 codes
 * one load, three ANDs and a shift: byte j of word l, code q of k = k0 + 4 l + j, as the bit pattern q 2^8j
 * (j < 3) or q (j = 3), against xs (see d1_prep).
 * Groups of 128 k or more (and per-channel rows) read x3 from memory as an FMA operand, once per row: with
 * x0..x3, three masks, a word and an operand all in registers, the 8 sums t need 17 registers, and the compiler
 * kept one t on the stack, a store-to-load round trip on its FMA chain every 32 codes. Harness, old and new
 * alternated in one process, per-channel K=4096: N=2048 in L3 301-308 -> 274-282 us, N=256 in L2 38.4-40.3 ->
 * 36.2-37.1 us, N=2048 cold 389-396 -> 387-388 us best (medians 408-422 -> 403-412); same bits. Groups of 32
 * and 64 keep x3 in a register: with the reload they ran 3% slower (N=256 in L2, g32 76.4-76.8 -> 79.2-79.4 us).
 * Even so, this build's g32 / g64 copy ran 1.5-2% / ~1% slower than before (code placement; same operations). */
/* *p, loaded where used (the compiler cannot reuse an earlier load). */
XK_ALWAYS_INLINE vf d1_reload(const float *p) {
  __asm__("" : "+r"(p));
  return vf_load(p);
}

XK_ALWAYS_INLINE void d1_q8_run(const int R, const uint8_t *const *wr, const float *xs, int64_t K, int64_t k0,
                                int64_t k1, vf *t, const int mem3) {
#define D1_Q8(SRC, X3)                                                                                 \
  for (int j = 0; j < R; j++) {                                                                        \
    __m256i w = _mm256_loadu_si256((const __m256i *)(SRC));                                            \
    __asm__("" : "+x"(w)); /* one load for the four codes (the compiler would load four times) */     \
    t[j] = vf_fma(x0, _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(0xFF))), t[j]);       \
    t[j] = vf_fma(x1, _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(0xFF00))), t[j]);     \
    t[j] = vf_fma(x2, _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(0xFF0000))), t[j]);   \
    t[j] = vf_fma(X3, _mm256_castsi256_ps(_mm256_srli_epi32(w, 24)), t[j]);                            \
  }
  int64_t k = k0;
  if (mem3) {
    for (; k + 32 <= k1; k += 32) {
      const vf x0 = vf_load(xs + k), x1 = vf_load(xs + k + 8), x2 = vf_load(xs + k + 16);
      D1_Q8(wr[j] + k, d1_reload(xs + k + 24))
    }
  } else {
    for (; k + 32 <= k1; k += 32) {
      const vf x0 = vf_load(xs + k), x1 = vf_load(xs + k + 8), x2 = vf_load(xs + k + 16), x3 = vf_load(xs + k + 24);
      D1_Q8(wr[j] + k, x3)
    }
  }
  if (k < k1) { /* the row's last codes (K % 32 != 0 only when G = K): xs is zero past K */
    const vf x0 = vf_load(xs + k), x1 = vf_load(xs + k + 8), x2 = vf_load(xs + k + 16), x3 = vf_load(xs + k + 24);
    uint8_t b[32] = {0};
    D1_Q8((memcpy(b, wr[j] + k, (size_t)(K - k)), b), x3)
  }
#undef D1_Q8
}

/* Int8 rows n0 + j rs (j < R) over the chunk c; st as in d1_q4, row j's pair at st + 2 j rs VL. A group's start
 * and end run outside its step loop, and acc stays in memory (touched once a group): with both inside the loop
 * (as in d1_q4) the compiler kept the 8 sums t on the stack between steps, a store-to-load round trip on every
 * FMA chain (1.21 -> 1.08 cycles per 8 codes and row, L1-resident; cold K=4096 N=2048 ~0.69 -> ~0.47 ms with
 * the row runs). The same operations in the same order: results are unchanged. */
XK_ALWAYS_INLINE void d1_q8(const xk_linear_args *a, const int has_z, const int R, int64_t n0, int64_t rs,
                            const d1_chunk *c, float *st, int first, int last) {
  const int64_t K = a->k, G = a->group_size, c0 = c->c0, c1 = min64(c->c1, K);
  const float *xs = c->xs - c0;
  const uint8_t *wr[D1_R];
  vf t[D1_R];
  float acc[D1_R * VL] __attribute__((aligned(32)));
  for (int j = 0; j < R; j++) {
    wr[j] = (const uint8_t *)a->w + (n0 + j * rs) * a->w_stride;
    vf_store(acc + j * VL, first ? vf_zero() : vf_load(st + (2 * j * rs) * VL));
    t[j] = first ? vf_zero() : vf_load(st + (2 * j * rs + 1) * VL);
  }
  float sb[D1_R][D1_MAXG], zb[D1_R][D1_MAXG];
  const int64_t ng = d1_scales(a, has_z, R, n0, rs, c, c->e, sb, zb);
  const float *xg = c->xg; /* the next group start's lane sums */
  for (int64_t gi = 0; gi < ng; gi++) {
    const int64_t gs = (c0 / G + gi) * G, ge = min64(gs + G, K);
    const int64_t lo = gs > c0 ? gs : c0, hi = min64(ge, c1);
    if (lo == gs) { /* the group starts: t = -z sum x */
      const vf xgv = vf_load(xg);
      xg += VL;
      for (int j = 0; j < R; j++) t[j] = has_z ? _mm256_fnmadd_ps(xgv, vf_set1(zb[j][gi]), vf_zero()) : xgv;
    }
    if (G >= 128)
      d1_q8_run(R, wr, xs, K, lo, hi, t, 1);
    else
      d1_q8_run(R, wr, xs, K, lo, hi, t, 0);
    if (hi == ge) /* the group ends: acc += s t */
      for (int j = 0; j < R; j++) vf_store(acc + j * VL, vf_fma(t[j], vf_set1(sb[j][gi]), vf_load(acc + j * VL)));
  }
  for (int j = 0; j < R; j++) {
    if (last) {
      store_out(a, 0, n0 + j * rs, vf_hsum(vf_load(acc + j * VL)));
    } else {
      vf_store(st + (2 * j * rs) * VL, vf_load(acc + j * VL));
      vf_store(st + (2 * j * rs + 1) * VL, t[j]);
    }
  }
}

/* Quantized rows n0 + j rs (j < R). */
XK_ALWAYS_INLINE void d1_quant(const xk_linear_args *a, const int q4, const int has_z, const int R, int64_t n0,
                               int64_t rs, const d1_chunk *c, float *st, int first, int last) {
  if (q4)
    d1_q4(a, has_z, R, n0, rs, c, st, first, last);
  else
    d1_q8(a, has_z, R, n0, rs, c, st, first, last);
}

#define D1_DENSE_FN(KIND, R) \
  static void d1_dense_##KIND##_##R(const xk_linear_args *a, int64_t n0, int64_t rs) { d1_dense(a, KIND, R, n0, rs); }
#define D1_DENSE_FNS(KIND) D1_DENSE_FN(KIND, 1) D1_DENSE_FN(KIND, 4) D1_DENSE_FN(KIND, 8)
D1_DENSE_FNS(WK_F32)
D1_DENSE_FNS(WK_F16)
D1_DENSE_FNS(WK_BF16)
typedef void (*d1_dense_fn)(const xk_linear_args *, int64_t, int64_t);

#define D1_QUANT_FN(Q4, Z, R)                                                                                \
  static void d1_quant_##Q4##Z##_##R(const xk_linear_args *a, int64_t n0, int64_t rs, const d1_chunk *c, float *st, \
                                     int first, int last) {                                                  \
    d1_quant(a, Q4, Z, R, n0, rs, c, st, first, last);                                                       \
  }
#define D1_QUANT_FNS(Q4, Z) D1_QUANT_FN(Q4, Z, 1) D1_QUANT_FN(Q4, Z, 4) D1_QUANT_FN(Q4, Z, 8)
D1_QUANT_FNS(0, 0)
D1_QUANT_FNS(0, 1)
D1_QUANT_FNS(1, 0)
D1_QUANT_FNS(1, 1)
typedef void (*d1_quant_fn)(const xk_linear_args *, int64_t, int64_t, const d1_chunk *, float *, int, int);

/* Rows [b, e) as tiles: with RUNS, tiles of 8 rows S apart (8 runs of S consecutive rows, S odd); then tiles of
 * 8, 4 and 1 adjacent rows. CALL(R, n0, rs) runs rows n0 + j rs, j < R. */
#define D1_TILES(CALL, RUNS)                                     \
  {                                                              \
    const int64_t S = ((e - b) / D1_R - 1) | 1;                  \
    int64_t n0 = b;                                              \
    if ((RUNS) && S > 1) {                                       \
      for (; n0 < b + S; n0++) CALL(8, n0, S);                   \
      n0 = b + D1_R * S;                                         \
    }                                                            \
    for (; n0 + 8 <= e; n0 += 8) CALL(8, n0, 1);                 \
    for (; n0 + 4 <= e; n0 += 4) CALL(4, n0, 1);                 \
    for (; n0 < e; n0++) CALL(1, n0, 1);                         \
  }

/* Quantized rows [n_begin, n_end). */
static void d1_quant_gemv(const xk_linear_args *a, int64_t n_begin, int64_t n_end) {
  const int64_t K = a->k;
  const int kind = wkind_of(a);
  static const d1_quant_fn fns[4][3] = {{d1_quant_00_1, d1_quant_00_4, d1_quant_00_8},
                                        {d1_quant_01_1, d1_quant_01_4, d1_quant_01_8},
                                        {d1_quant_10_1, d1_quant_10_4, d1_quant_10_8},
                                        {d1_quant_11_1, d1_quant_11_4, d1_quant_11_8}};
  const int q4 = kind == WK_INT4;
  const d1_quant_fn *f = fns[q4 * 2 + (a->zeros != NULL)];
  d1_chunk c;
  c.e = d1_unit(a);
  float st[D1_NB * 2 * VL] __attribute__((aligned(32)));
  if (K <= D1_KC) {
    d1_prep(a, q4, 0, &c);
    const int64_t b = n_begin, e = n_end;
#define D1_CALL(R, N0, RS) f[(R) == 8 ? 2 : (R) == 4](a, N0, RS, &c, st, 1, 1)
    D1_TILES(D1_CALL, !q4)
#undef D1_CALL
    return;
  }
  /* Long rows: blocks of D1_NB rows run chunk by chunk, their (acc, t) kept in st. */
  for (int64_t b = n_begin; b < n_end; b += D1_NB) {
    const int64_t e = min64(n_end, b + D1_NB);
    for (int64_t c0 = 0; c0 < K; c0 += D1_KC) {
      d1_prep(a, q4, c0, &c);
#define D1_CALL(R, N0, RS) f[(R) == 8 ? 2 : (R) == 4](a, N0, RS, &c, st + ((N0) - b) * 2 * VL, c0 == 0, c0 + D1_KC >= K)
      D1_TILES(D1_CALL, !q4)
#undef D1_CALL
    }
  }
}

static void d1_gemv(const xk_linear_args *a, int64_t n_begin, int64_t n_end) {
  const int kind = wkind_of(a);
  if (kind == WK_INT4 || kind == WK_INT8) {
    /* The codes enter the FMAs as denormals: with DAZ set (MXCSR bit 6) they would read as zeros. */
    const unsigned int csr = _mm_getcsr();
    if (csr & 0x40u) _mm_setcsr(csr & ~0x40u);
    d1_quant_gemv(a, n_begin, n_end);
    if (csr & 0x40u) _mm_setcsr(csr);
    return;
  }
  static const d1_dense_fn fns[3][3] = {{d1_dense_WK_F32_1, d1_dense_WK_F32_4, d1_dense_WK_F32_8},
                                        {d1_dense_WK_F16_1, d1_dense_WK_F16_4, d1_dense_WK_F16_8},
                                        {d1_dense_WK_BF16_1, d1_dense_WK_BF16_4, d1_dense_WK_BF16_8}};
  const int64_t b = n_begin, e = n_end;
#define D1_CALL(R, N0, RS) fns[kind][(R) == 8 ? 2 : (R) == 4](a, N0, RS)
  D1_TILES(D1_CALL, 1)
#undef D1_CALL
}
#endif

void XK_FN(linear_gemv)(const xk_linear_args *a, int64_t n_begin, int64_t n_end) {
#if VL == 16
  static const gv_tile_fn tiles[] = {gv_tile_WK_F32, gv_tile_WK_F16, gv_tile_WK_BF16, NULL, gv_tile_WK_INT8};
#else
  static const gv_tile_fn tiles[] = {gv_tile_WK_F32, gv_tile_WK_F16, gv_tile_WK_BF16, gv_tile_WK_INT4,
                                     gv_tile_WK_INT8};
#endif
  const gv_tile_fn tile = tiles[wkind_of(a)];
  const int64_t M = a->m, K = a->k;
  const int kind = wkind_of(a);
  const int64_t kch = M <= GV_MT ? (K > 0 ? K : 1) : GV_KCH;
  float accbuf[GV_MAXM * GV_LD * VL] __attribute__((aligned(64)));
#if VL == 8
  if (M == 1 && K > 0) {
    d1_gemv(a, n_begin, n_end);
    return;
  }
  if (kind != WK_INT4 && kind != WK_INT8) {
    gv_blocked(a, tile, kind, n_begin, n_end);
    return;
  }
  /* Codes at M = 2 .. 16 keep 4 x 2 tiles over whole rows (below): through
   * gv_blocked they ran 1.10-1.32x slower (session 14, K = 4096, N = 2048
   * cold, int8 per channel and int4 g128, M = 2, 4, 8, 16). */
  const int nbt = 2;
#define GV_PF_ROWS(w_stride) ((kind == WK_INT4 ? 2 : 1) * nbt * (w_stride))
#else
  const int nbt = GV_NB;
#define GV_PF_ROWS(w_stride) GV_PF_NEXT
  if (kind == WK_INT4) {
    q4_gemv(a, n_begin, n_end);
    return;
  }
  if (kind == WK_INT8 && M == 1 && K > 0) {
    /* Super-tiles of 8R rows (R rows per 4 KiB page), then the paths below. */
    int64_t R = a->w_stride > 0 && a->w_stride < 4096 ? 4096 / a->w_stride : 1;
    if (R > GV_SUPER) R = GV_SUPER;
    for (; n_end - n_begin >= 8 * R; n_begin += 8 * R)
      for (int64_t r = 0; r < R; r++) q8_tile8(a, n_begin + r, R);
    if (n_begin == n_end) return;
  }
  if (M > GV_MT && (kind == WK_F16 || kind == WK_BF16)) {
    /* Several row tiles: convert each weight chunk to f32 once (exact) and
     * run every row tile from that L1-resident copy. */
    float wbuf[GV_NB * GV_KCH] __attribute__((aligned(64)));
    const int64_t es = xk_dtype_size(a->w_dtype);
    for (int64_t n0 = n_begin; n0 < n_end; n0 += GV_NB) {
      const int nb = (int)min64(GV_NB, n_end - n0);
      if (K == 0) memset(accbuf, 0, sizeof accbuf);
      for (int64_t k0 = 0; k0 < K; k0 += GV_KCH) {
        const int64_t kl = min64(GV_KCH, K - k0);
        for (int j = 0; j < nb; j++) {
          const char *src = (const char *)w_row(a, n0 + j) + k0 * es;
          for (int64_t b = 0; b < kl * es; b += 64) _mm_prefetch(src + GV_NB * a->w_stride * es + b, _MM_HINT_T0);
          xk_convert_row(wbuf + j * GV_KCH, XK_F32, src, a->w_dtype, kl, 1.0f);
        }
        xk_linear_args b = *a;
        b.w = wbuf;
        b.w_stride = GV_KCH;
        b.w_dtype = XK_F32;
        b.xf = a->xf + k0;
        b.no_prefetch = 1;
        for (int64_t m0 = 0; m0 < M; m0 += GV_MT)
          gv_tile_WK_F32(&b, (int)min64(GV_MT, M - m0), nb, m0, 0, 0, kl, accbuf, k0 == 0, GV_PF_NEXT);
      }
      gv_finish(a, M, n0, nb, accbuf);
    }
    return;
  }
#endif
  /* Int8 rows shorter than a 4 KiB page, one K pass (M <= GV_MT): a
   * super-tile of nbt * R rows runs as R tiles of rows r, r + R, r + 2R, ...
   * (R = rows per page), so that a tile's row streams lie in different pages
   * (one stream per page for the L2 streamer). Each output's arithmetic is
   * the same in any tile: results do not change. */
  if (kind == WK_INT8 && M <= GV_MT && K > 0 && a->w_stride < 4096) {
    int64_t R = 4096 / a->w_stride;
    if (R > GV_SUPER) R = GV_SUPER;
    const int64_t ss = xk_dtype_size(a->sz_dtype);
    for (int64_t n0 = n_begin; n0 < n_end;) {
      const int64_t rt = n_end - n0 >= nbt * R ? R : 1;
      for (int64_t r = 0; r < rt; r++) {
        const int nb = (int)min64(nbt, n_end - n0 - r);
        xk_linear_args b = *a;
        b.w = (const uint8_t *)a->w + (n0 + r) * a->w_stride;
        b.w_stride = a->w_stride * rt;
        b.scales = (const char *)a->scales + (n0 + r) * a->sz_stride * ss;
        if (a->zeros) b.zeros = (const char *)a->zeros + (n0 + r) * a->sz_stride * ss;
        b.sz_stride = a->sz_stride * rt;
        tile(&b, (int)M, nb, 0, 0, 0, K, accbuf, 1, GV_PF_ROWS(b.w_stride));
        for (int64_t m = 0; m < M; m++)
          for (int j = 0; j < nb; j++)
            store_out(a, m, n0 + r + j * rt, vf_hsum(vf_load(accbuf + (m * GV_LD + j) * VL)));
      }
      n0 += rt == 1 ? nbt : nbt * R;
    }
    return;
  }
  for (int64_t n0 = n_begin; n0 < n_end; n0 += nbt) {
    const int nb = (int)min64(nbt, n_end - n0);
    if (K == 0) memset(accbuf, 0, sizeof accbuf);
    for (int64_t k0 = 0; k0 < K; k0 += kch) {
      const int64_t k1 = min64(K, k0 + kch);
      for (int64_t m0 = 0; m0 < M; m0 += GV_MT) {
        tile(a, (int)min64(GV_MT, M - m0), nb, m0, n0, k0, k1, accbuf, k0 == 0, GV_PF_ROWS(a->w_stride));
      }
    }
    gv_finish(a, M, n0, nb, accbuf);
  }
#undef GV_PF_ROWS
}

/* ---- tiled GEMM ------------------------------------------------------------ */

#if VL == 16
#define MR 14
#define NR 32
#else
#define MR 6
#define NR 16
#endif
/* AVX2 on Zen 3 (one thread, f32 M = 512-1024, K = 4096), tried against these
 * defaults and no better within the noise of a shared machine: MC_MULT 16 or
 * 24 (BLIS's MC = 144; 79.9 vs 81.6 GFLOP/s), TILE_N_MAX 512 (80.5 vs 81.6),
 * prefetching the next B panel into L1 or L2 from inside the microkernel, a
 * line per k step (79.8-81.7 vs 80.7).
 * Session 17 (harness, thread CPU time, best of 16 alternated runs, M = 512,
 * K = 4096, N = 2048, load 3): the whole GEMM 90.9 / 89.4 GFLOP/s, MC_MULT 16
 * 91.5 / 89.9, MC_MULT 24 90.4 / 87.9 (within 1%, same bits); KC 320 90.7 /
 * 89.5 and other bits (C is summed per K block). The 6 x 16 microkernel runs
 * at 98-100% of the FMA peak with A, B and C in L1 and at ~95% in place (A
 * block from L2, B panels over 2 MiB, C rows 8 KiB apart, no packing); a
 * late C prefetch (48 or 24 k before the end, T0, or T1 at the start) and a
 * 4 x 24 tile measured the same. What is left beyond the ~5% the microkernel
 * loses in place is packing (pack_b ~3.5%, at its from-memory rate). */
#ifndef KC
#define KC 256 /* K per block: f32 units */
#endif
#define KC_PAIRS 256 /* K per block in bf16 pairs (512 elements) */
#ifndef PANEL_PF
#define PANEL_PF 1
#endif
#ifndef MC_MULT
#define MC_MULT 8
#endif
#define MC (MR * MC_MULT) /* activation rows per A block */
#ifndef TILE_N_MAX
#define TILE_N_MAX 2048 /* output columns per tile at most */
#endif
#ifndef DIRECT_MAX_PANELS
#define DIRECT_MAX_PANELS 4 /* N <= 128 on avx512: 1.1-1.3x; at N = 2048-4096 0.95x */
#endif
#ifndef TILE_M_MAX
#define TILE_M_MAX 1024
#endif

/* Partial C rows. On AVX2, vmaskmov rather than vf_loadm / vf_storem: their
 * memcpy calls clobber every vector register, so the compiler spilled all
 * accumulators to the stack at every microkernel's end (+4% with C out of L1). */
#if VL == 16
XK_ALWAYS_INLINE vf c_loadm(const float *p, vmask m) { return vf_loadm(p, m); }
XK_ALWAYS_INLINE void c_storem(float *p, vf v, vmask m) { vf_storem(p, v, m); }
#else
XK_ALWAYS_INLINE __m256i c_lanes(vmask m) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
XK_ALWAYS_INLINE vf c_loadm(const float *p, vmask m) {
  return m == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, c_lanes(m));
}
XK_ALWAYS_INLINE void c_storem(float *p, vf v, vmask m) {
  if (m == 8)
    _mm256_storeu_ps(p, v);
  else
    _mm256_maskstore_ps(p, c_lanes(m), v);
}
#endif

/* C[mr][NR] (+)= A * B over kl: A a packed micro-panel [kl][MR] (or, with rows, f32 rows lda floats apart), B a
 * packed panel [kl][NR]. */
XK_ALWAYS_INLINE void uk_f32(const int mr, int64_t kl, const float *A, const float *B, float *C, int64_t ldc,
                             int load_c, int nr, const int rows, const int64_t lda) {
  enum { NV = NR / VL };
  vf c[MR][NV];
  vmask cm[NV];
  for (int v = 0; v < NV; v++) cm[v] = vm_first(nr - v * VL);
  /* The products sum from zero and C is added at the end: its lines, likely
   * out of cache since the previous K block, are prefetched meanwhile. */
  for (int i = 0; i < mr; i++) {
    for (int v = 0; v < NV; v++) c[i][v] = vf_zero();
    if (load_c) {
      _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
      _mm_prefetch((const char *)(C + i * ldc + NR - 1), _MM_HINT_T0);
    }
  }
  for (int64_t k = 0; k < kl; k++) {
    vf b[NV];
    for (int v = 0; v < NV; v++) b[v] = vf_load(B + k * NR + v * VL);
    for (int i = 0; i < mr; i++) {
      const vf av = vf_set1(rows ? A[i * lda + k] : A[k * MR + i]);
      for (int v = 0; v < NV; v++) c[i][v] = vf_fma(av, b[v], c[i][v]);
    }
  }
  for (int i = 0; i < mr; i++)
    for (int v = 0; v < NV; v++) {
      if (load_c) c[i][v] = vf_add(c[i][v], c_loadm(C + i * ldc + v * VL, cm[v]));
      c_storem(C + i * ldc + v * VL, c[i][v], cm[v]);
    }
}

/* uk_f32 with mr as a compile-time constant: A is a packed micro-panel
 * (uk_f32_any) or f32 rows lda floats apart, x itself with no pack
 * (uk_f32_rows). */
#define UK_CASE(MRC, DIRECT) \
  case MRC: uk_f32(MRC, kl, A, B, C, ldc, load_c, nr, DIRECT, lda); break;
#if MR > 6
#define UK_CASES(DIRECT)                                                                                         \
  UK_CASE(1, DIRECT) UK_CASE(2, DIRECT) UK_CASE(3, DIRECT) UK_CASE(4, DIRECT) UK_CASE(5, DIRECT) UK_CASE(6, DIRECT) \
  UK_CASE(7, DIRECT) UK_CASE(8, DIRECT) UK_CASE(9, DIRECT) UK_CASE(10, DIRECT) UK_CASE(11, DIRECT)                \
  UK_CASE(12, DIRECT) UK_CASE(13, DIRECT) UK_CASE(14, DIRECT)
#else
#define UK_CASES(DIRECT) \
  UK_CASE(1, DIRECT) UK_CASE(2, DIRECT) UK_CASE(3, DIRECT) UK_CASE(4, DIRECT) UK_CASE(5, DIRECT) UK_CASE(6, DIRECT)
#endif
static void uk_f32_any(int mr, int64_t kl, const float *A, const float *B, float *C, int64_t ldc, int load_c,
                       int nr) {
  const int64_t lda = 0;
  switch (mr) {
    UK_CASES(0)
    default: break;
  }
}
static void uk_f32_rows(int mr, int64_t kl, const float *A, const float *B, float *C, int64_t ldc, int load_c,
                        int nr, int64_t lda) {
  switch (mr) {
    UK_CASES(1)
    default: break;
  }
}

#if VL == 16
/* bf16 pairs: C[mr][NR] (+)= sum over pairs u of A[u][i] . B[u][n] (vdpbf16ps): A a packed
 * micro-panel [kl][MR] and B a packed panel [kl][NR] of 32-bit bf16 pairs. */
XK_ALWAYS_INLINE void uk_bf16(const int mr, int64_t kl, const uint32_t *A, const uint32_t *B, float *C, int64_t ldc,
                              int load_c, int nr) {
  __m512 c[MR][2];
  const vmask cm[2] = {vm_first(nr), vm_first(nr - 16)};
  for (int i = 0; i < mr; i++) {
    for (int v = 0; v < 2; v++) c[i][v] = vf_zero();
    if (load_c) { /* as in uk_f32 */
      _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
      _mm_prefetch((const char *)(C + i * ldc + NR - 1), _MM_HINT_T0);
    }
  }
  for (int64_t u = 0; u < kl; u++) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(B + u * NR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(B + u * NR + 16);
    for (int i = 0; i < mr; i++) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32((int)A[u * MR + i]);
      c[i][0] = _mm512_dpbf16_ps(c[i][0], av, b0);
      c[i][1] = _mm512_dpbf16_ps(c[i][1], av, b1);
    }
  }
  for (int i = 0; i < mr; i++)
    for (int v = 0; v < 2; v++) {
      if (load_c) c[i][v] = vf_add(c[i][v], vf_loadm(C + i * ldc + v * 16, cm[v]));
      vf_storem(C + i * ldc + v * 16, c[i][v], cm[v]);
    }
}

#define UKB_CASE(MRC) \
  case MRC: uk_bf16(MRC, kl, A, B, C, ldc, load_c, nr); break;
static void uk_bf16_any(int mr, int64_t kl, const uint32_t *A, const uint32_t *B, float *C, int64_t ldc, int load_c,
                        int nr) {
  switch (mr) {
    UKB_CASE(1) UKB_CASE(2) UKB_CASE(3) UKB_CASE(4) UKB_CASE(5) UKB_CASE(6) UKB_CASE(7)
    UKB_CASE(8) UKB_CASE(9) UKB_CASE(10) UKB_CASE(11) UKB_CASE(12) UKB_CASE(13) UKB_CASE(14)
    default: break;
  }
}
#endif

/* In-register transpose of VL vectors of VL lanes. */
#if VL == 16
XK_ALWAYS_INLINE void transpose(vf r[16]) {
  __m512i v[16];
  for (int i = 0; i < 16; i++) v[i] = _mm512_castps_si512(r[i]);
  xk_transpose16_epi32(v);
  for (int i = 0; i < 16; i++) r[i] = _mm512_castsi512_ps(v[i]);
}
#else
XK_ALWAYS_INLINE void transpose(vf r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

#if VL == 8
/* pack_b_kind for a whole panel of dense rows [pn, pn + NR) on AVX2: the same
 * loads, prefetches and stores, with the row pointers and prefetch targets
 * worked out once per panel instead of per load (f32 weights, K = 4096,
 * N = 2048, harness: 0.27 -> 0.22 ns per element hot, 0.47 -> 0.40 from memory). */
XK_ALWAYS_INLINE void pack_b_dense8(const xk_linear_args *a, const int kind, int64_t n0, int64_t n1, int64_t pn,
                                    int64_t k0, int64_t kl, float *panel) {
  const int32_t dt = kind == WK_F32 ? XK_F32 : kind == WK_F16 ? XK_F16 : XK_BF16;
  const int64_t es = xk_dtype_size(dt), kg_len = 64 / es, pfd = 4 * kg_len;
  const char *rp[NR], *nx[NR];
  int64_t kpb[NR];
  for (int j = 0; j < NR; j++) {
    const int64_t n = pn + j;
    const int last = n + NR >= n1; /* as in pack_b_kind: the next panel's row, or the first panel's next block */
    rp[j] = (const char *)w_row(a, n) + k0 * es;
    kpb[j] = last ? k0 + kl : k0;
    nx[j] = (const char *)w_row(a, last ? n0 + j : n + NR) + kpb[j] * es;
    kpb[j] += pfd - kl; /* kp = kpb + k past the block's end */
  }
  for (int64_t kg = 0; kg < kl; kg += kg_len) {
    for (int jb = 0; jb < NR; jb += 8) {
      for (int64_t k = kg; k < kl && k < kg + kg_len; k += 8) {
        vf r[8];
        if (k + 8 <= kl) {
          for (int j = 0; j < 8; j++) r[j] = xk_load8(rp[jb + j] + k * es, dt);
        } else {
          for (int j = 0; j < 8; j++) r[j] = vw_loadm(rp[jb + j] + k * es, dt, vm_first(kl - k));
        }
        if (k == kg) {
          for (int j = 0; j < 8; j++) {
            if (k + pfd < kl)
              _mm_prefetch(rp[jb + j] + (k + pfd) * es, _MM_HINT_T0);
            else if (kpb[jb + j] + k < a->k)
              _mm_prefetch(nx[jb + j] + (k + pfd - kl) * es, _MM_HINT_T0);
          }
        }
        transpose(r);
        for (int v = 0; v < 8 && k + v < kl; v++) vf_store(panel + (k + v) * NR + jb, r[v]);
      }
    }
  }
}
#endif

/* Packs weight rows [n0, n1) x k [k0, k0 + kl) as f32 panels: panel p at
 * dst + p * kl * NR, element (k, j) at k * NR + j. Rows past n1 are zero.
 * Only the panels whose first row is in [pb, pe) are written. */
XK_ALWAYS_INLINE void pack_b_kind(const xk_linear_args *a, const int kind, int64_t n0, int64_t n1, int64_t pb,
                                  int64_t pe, int64_t k0, int64_t kl, float *dst) {
  const int quant = kind == WK_INT4 || kind == WK_INT8;
  const int64_t es = quant ? 1 : xk_dtype_size(a->w_dtype);
  /* A group of VL rows is read a 64-byte line of each at a time (VL k of
   * codes). Rows a multiple of 4 KiB apart (K = 2048, 4096) share one L1 set:
   * taking VL k per group, as before, re-read each line from L2 for every VL
   * k (bf16 weights, M = 256, K = 4096, N = 2048 on Zen 3: pack_b 10% -> 8%
   * of the profile). The prefetch went to the next panel's row, the same
   * set again: 4 lines ahead measured best (2, 8, 16 and T1 no better). */
  const int64_t kg_len = quant ? VL : 64 / es;
  const int64_t pfd = 4 * kg_len; /* prefetch distance in k: 4 lines ahead, another L1 set */
  for (int64_t pn = pb; pn < pe; pn += NR) {
    float *panel = dst + ((pn - n0) / NR) * kl * NR;
#if VL == 8
    if (!quant && pn + NR <= n1) {
      pack_b_dense8(a, kind, n0, n1, pn, k0, kl, panel);
      continue;
    }
#endif
    for (int64_t kg = 0; kg < kl; kg += kg_len) {
      for (int64_t jb = 0; jb < NR; jb += VL) {
        for (int64_t k = kg; k < kl && k < kg + kg_len; k += VL) {
          const vmask km = vm_first(kl - k);
          const int64_t kk = k0 + k;
          vf r[VL];
          for (int j = 0; j < VL; j++) {
            const int64_t n = pn + jb + j;
            if (n >= n1) {
              r[j] = vf_zero();
              continue;
            }
            wparams wp;
            if (quant) {
              wp = wparams_load(a, kind, n, kk / a->group_size);
            } else {
              wp.p = vf_zero();
              wp.q = wp.p;
            }
            r[j] = w_vec(kind, w_row(a, n), kk, km, wp);
            /* Rows are read as NR streams of a K block each, too short for the
             * hardware prefetchers: fetch pfd k ahead, past the block's end in
             * the next panel's row (after the last panel, in the first panel's
             * row of the next K block). */
            if (!quant && k == kg) {
              int64_t np = n, kp = kk + pfd;
              if (k + pfd >= kl) {
                const int last = n + NR >= n1;
                np = last ? n0 + (n - pn) : n + NR;
                if (!last) kp -= kl;
              }
              if (kp < a->k) _mm_prefetch((const char *)w_row(a, np) + kp * es, _MM_HINT_T0);
            }
          }
          transpose(r);
          for (int v = 0; v < VL && k + v < kl; v++) vf_store(panel + (k + v) * NR + jb, r[v]);
        }
      }
    }
  }
}

static void pack_b(const xk_linear_args *a, int64_t n0, int64_t n1, int64_t pb, int64_t pe, int64_t k0, int64_t kl,
                   float *dst) {
  switch (wkind_of(a)) {
    case WK_F32: pack_b_kind(a, WK_F32, n0, n1, pb, pe, k0, kl, dst); break;
    case WK_F16: pack_b_kind(a, WK_F16, n0, n1, pb, pe, k0, kl, dst); break;
    case WK_BF16: pack_b_kind(a, WK_BF16, n0, n1, pb, pe, k0, kl, dst); break;
    case WK_INT4: pack_b_kind(a, WK_INT4, n0, n1, pb, pe, k0, kl, dst); break;
    default: pack_b_kind(a, WK_INT8, n0, n1, pb, pe, k0, kl, dst); break;
  }
}

#if VL == 16
/* bf16 pairs: rows [n0, n1), k [k0, k0 + kl) as panels of [ceil(kl/2)][NR] 32-bit
 * pairs (w[n][2u], w[n][2u+1]); a missing odd element and rows past n1 are zero. */
static void pack_b_pairs(const xk_linear_args *a, int64_t n0, int64_t n1, int64_t k0, int64_t kl, uint32_t *dst) {
  const int64_t units = (kl + 1) / 2;
  for (int64_t pn = n0; pn < n1; pn += NR) {
    uint32_t *panel = dst + ((pn - n0) / NR) * units * NR;
    for (int64_t u = 0; u < units; u += 16) {
      const int64_t left = kl - 2 * u;
      const __mmask32 km = left >= 32 ? 0xFFFFFFFFu : (__mmask32)((1ull << left) - 1u);
      for (int64_t jb = 0; jb < NR; jb += 16) {
        vf r[16];
        for (int j = 0; j < 16; j++) {
          const int64_t n = pn + jb + j;
          r[j] = n < n1 ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(
                              km, (const uint16_t *)a->w + n * a->w_stride + k0 + 2 * u))
                        : vf_zero();
        }
        transpose(r);
        for (int v = 0; v < 16 && u + v < units; v++)
          _mm512_storeu_si512(panel + (u + v) * NR + jb, _mm512_castps_si512(r[v]));
      }
    }
  }
}
#endif

/* Packs activation rows [r0, r0 + mr) x k [k0, k0 + kl) into a micro-panel
 * dst[k][MR] of f32 (or, for bf16 pairs, [ceil(kl/2)][MR] 32-bit pairs with a
 * zero odd tail); rows past mr are zero. */
#if VL == 8
/* AVX2, whole steps of 8 k of x's dtype dt: one unmasked 8-lane store per k.
 * MR < 8, so a store runs 8 - MR floats into the next k (written next) or,
 * after the last k, into the next micro-panel (packed after this one) or
 * the workspace's 64-byte slack past abuf. The masked store it replaces went
 * through memcpy (f32 x, M = 512, K = 4096, hot: 0.58 -> 0.23 ns per element). */
XK_ALWAYS_INLINE int64_t pack_a8(const xk_linear_args *a, const int32_t dt, int64_t r0, int mr, int64_t k0,
                                 int64_t kl, float *dst) {
  const int64_t xs = xk_dtype_size(dt);
  const char *row[MR];
  for (int i = 0; i < MR; i++) row[i] = (const char *)a->x + ((r0 + i) * a->x_stride + k0) * xs;
  int64_t u = 0;
  for (; u + 8 <= kl; u += 8) {
    vf r[8];
    for (int i = 0; i < 8; i++) {
      if (i >= MR || i >= mr) {
        r[i] = vf_zero();
        continue;
      }
      _mm_prefetch(row[i] + MR * a->x_stride * xs + u * xs, _MM_HINT_T0); /* as in pack_a */
      r[i] = xk_load8(row[i] + u * xs, dt);
    }
    transpose(r);
    for (int v = 0; v < 8; v++) _mm256_storeu_ps(dst + (u + v) * MR, r[v]);
  }
  return u;
}
#endif

static void pack_a(const xk_linear_args *a, int pairs, int64_t r0, int mr, int64_t k0, int64_t kl, void *dst) {
  const int64_t xs = xk_dtype_size(a->x_dtype);
  if (a->perm) { /* act-order gather: scalar */
    float *d = (float *)dst;
    for (int64_t k = 0; k < kl; k++)
      for (int i = 0; i < MR; i++) d[k * MR + i] = i < mr ? x_value(a, r0 + i, k0 + k) : 0.0f;
    return;
  }
  const int64_t units = pairs ? (kl + 1) / 2 : kl;
  int64_t u0 = 0;
#if VL == 8
  switch (a->x_dtype) {
    case XK_F32: u0 = pack_a8(a, XK_F32, r0, mr, k0, kl, (float *)dst); break;
    case XK_F16: u0 = pack_a8(a, XK_F16, r0, mr, k0, kl, (float *)dst); break;
    case XK_BF16: u0 = pack_a8(a, XK_BF16, r0, mr, k0, kl, (float *)dst); break;
    default: break;
  }
#endif
  for (int64_t u = u0; u < units; u += VL) {
    vf r[VL];
    for (int i = 0; i < VL; i++) {
      if (i >= mr) {
        r[i] = vf_zero();
        continue;
      }
      const char *row = (const char *)a->x + ((r0 + i) * a->x_stride + k0) * xs;
      /* The same line of the next micro-panel's row (rows past M: a harmless prefetch). */
      _mm_prefetch(row + MR * a->x_stride * xs + (pairs ? 2 * u : u) * xs, _MM_HINT_T0);
#if VL == 16
      if (pairs) {
        const int64_t left = kl - 2 * u;
        const __mmask32 km = left >= 32 ? 0xFFFFFFFFu : (__mmask32)((1ull << left) - 1u);
        r[i] = _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(km, (const uint16_t *)row + 2 * u));
        continue;
      }
#endif
      r[i] = vw_loadm(row + u * xs, a->x_dtype, vm_first(kl - u));
    }
    transpose(r);
    for (int v = 0; v < VL && u + v < units; v++) vf_storem((float *)dst + (u + v) * MR, r[v], vm_first(MR));
  }
}

/* Output columns [n0, n1) of rows [m0, m1): out = C + bias, converted. */
static void epilogue(const xk_linear_args *a, int64_t m0, int64_t m1, int64_t n0, int64_t n1, const float *C,
                     int64_t ldc) {
  const int64_t os = xk_dtype_size(a->out_dtype);
  for (int64_t m = m0; m < m1; m++) {
    const float *c = C + (m - m0) * ldc;
    char *o = (char *)a->out + (m * a->out_stride + n0) * os;
    int64_t n = n0;
    if (a->out_dtype == XK_F32 || a->out_dtype == XK_F16 || a->out_dtype == XK_BF16) {
      for (; n + VL <= n1; n += VL) {
        vf v = vf_load(c + (n - n0));
        if (a->bias)
          v = vf_add(v, vw_loadm((const char *)a->bias + n * xk_dtype_size(a->bias_dtype), a->bias_dtype,
                                 vm_first(VL)));
#if VL == 16
        xk_store16(o + (n - n0) * os, a->out_dtype, v);
#else
        xk_store8(o + (n - n0) * os, a->out_dtype, v);
#endif
      }
    }
    for (; n < n1; n++) xk_store_scalar(o, a->out_dtype, n - n0, c[n - n0] + bias_value(a, n));
  }
}

static int64_t align64(int64_t b) { return (b + 63) & ~(int64_t)63; }

int64_t XK_FN(linear_gemm_plan)(xk_linear_args *a, int64_t threads) {
#if VL == 16
  /* bf16_pairs = -1 from the launcher forces the f32 microkernel. */
  a->bf16_pairs = a->bf16_pairs >= 0 && a->w_kind == XK_WEIGHT_DENSE && a->w_dtype == XK_BF16 &&
                  a->x_dtype == XK_BF16 && !a->perm;
#else
  a->bf16_pairs = 0;
#endif
  /* Few, large tiles: a tile packs its activations once per K block for all
   * its columns and its weights once for all its rows, so packing costs
   * ~(1/tile_n + 1/tile_m) of the work; ~2 tiles per thread balance load.
   * One thread takes one tile where TILE_N_MAX allows: 2 tiles packed x twice
   * (f32 M = 512, K = 4096, N = 2048 on Zen 3: pack_a 2.9% -> 1.6% of the time).
   * Tile shapes never change an element's arithmetic. */
  const int64_t want = threads > 1 ? 2 * threads : 1;
  int64_t tm = min64(a->m, TILE_M_MAX);
  int64_t mt = cdiv(a->m, tm);
  int64_t ntn = cdiv(a->n, TILE_N_MAX);
  if (mt * ntn < want) {
    const int64_t most = a->n / 256 > 1 ? a->n / 256 : 1; /* keep tiles >= 256 columns */
    int64_t more = cdiv(want, mt);
    ntn = more < most ? (more > ntn ? more : ntn) : (most > ntn ? most : ntn);
    if (mt * ntn < want) mt = cdiv(want, ntn);
  }
  tm = cdiv(cdiv(a->m, mt), MR) * MR;
  if (tm < MR * 4) tm = MR * 4;
  if (tm > TILE_M_MAX) tm = TILE_M_MAX;
  a->tile_m = tm;
  a->tile_n = cdiv(cdiv(a->n, ntn), NR) * NR;
  const int64_t packb = (a->bf16_pairs ? (int64_t)KC_PAIRS : (int64_t)KC) * a->tile_n * 4;
  const int64_t abuf = (int64_t)MC * (a->bf16_pairs ? KC_PAIRS : KC) * 4;
  const int64_t cpart = a->out_dtype == XK_F32 ? 0 : tm * a->tile_n * 4;
  return align64(packb) + align64(abuf + 64) + align64(cpart) + 64;
}

static void gemm_tile(const xk_linear_args *a, int64_t t, char *ws) {
  const int64_t mtiles = cdiv(a->m, a->tile_m);
  const int64_t m0 = (t % mtiles) * a->tile_m, n0 = (t / mtiles) * a->tile_n;
  const int64_t m1 = min64(a->m, m0 + a->tile_m), n1 = min64(a->n, n0 + a->tile_n);
  const int pairs = a->bf16_pairs;
  const int64_t kblock = pairs ? 2 * KC_PAIRS : KC;
  char *p = (char *)(((uintptr_t)ws + 63) & ~(uintptr_t)63);
  void *packb = p;
  p += align64((pairs ? (int64_t)KC_PAIRS : (int64_t)KC) * a->tile_n * 4);
  void *abuf = p;
  p += align64((int64_t)MC * (pairs ? KC_PAIRS : KC) * 4 + 64);
  float *C;
  int64_t ldc;
  if (a->out_dtype == XK_F32) {
    C = (float *)a->out + m0 * a->out_stride + n0;
    ldc = a->out_stride;
  } else {
    C = (float *)p;
    ldc = a->tile_n;
  }
  const int64_t npanels = cdiv(n1 - n0, NR);
  /* Few panels per A block (N <= 64): the microkernel broadcasts A from f32
   * rows, x itself (direct) or, for f16/bf16 x, the block's rows converted
   * into abuf (kl floats apart). The transposing pack_a was ~35% of such a
   * GEMM (it runs once per A block for only 1-4 panels); same products in the
   * same order. bf16 M = 1024, K = 2048, N = 64 on Zen 3: 58 -> 76 GFLOP/s;
   * copying f32 x the same way instead of reading it in place: 82 -> 70.
   * AVX-512 keeps pack_a for f16/bf16 x (not measured there). */
  const int rows = !pairs && !a->perm && npanels <= DIRECT_MAX_PANELS && (VL == 8 || a->x_dtype == XK_F32);
  const int direct = rows && a->x_dtype == XK_F32;
  const int64_t xs = xk_dtype_size(a->x_dtype);
  const int prepacked = a->w_kind == XK_WEIGHT_PACKED_PANEL; /* tile_n is a multiple of NR */
  const int64_t npad = cdiv(a->n, NR) * NR;
  /* Dense weights on AVX2: each panel is packed just before the first A block
   * uses it (it is then in L1), its rows fetched while the previous panel
   * computes. f32 M = 512, K = 4096, N = 2048 on Zen 3 (perf shares): pack_b
   * 4.5% of the time packed ahead, 5.1% fused without the fetch, 3.5% with
   * it (_MM_HINT_T1 no better). Rejected: the whole next K block's rows
   * fetched a share per microkernel call (T0/T1/T2) while packing ahead:
   * pack_b no faster, the fetch loop +2.6% of the time. */
  const int fuse = VL == 8 && !prepacked && a->w_kind == XK_WEIGHT_DENSE;
  const int64_t wes = a->w_kind == XK_WEIGHT_DENSE ? xk_dtype_size(a->w_dtype) : 1;
  const int64_t fuse_rows = cdiv(NR, cdiv(min64(MC, m1 - m0), MR));

  if (a->k == 0) {
    for (int64_t m = m0; m < m1; m++) memset(C + (m - m0) * ldc, 0, (size_t)(n1 - n0) * 4);
  }
  for (int64_t k0 = 0; k0 < a->k; k0 += kblock) {
    const int64_t kl = min64(kblock, a->k - k0);
    const int64_t units = pairs ? (kl + 1) / 2 : kl;
    if (prepacked)
      packb = (float *)a->w + k0 * npad + (n0 / NR) * kl * NR;
#if VL == 16
    else if (pairs)
      pack_b_pairs(a, n0, n1, k0, kl, (uint32_t *)packb);
#endif
    else if (!fuse)
      pack_b(a, n0, n1, n0, n1, k0, kl, (float *)packb);
    for (int64_t mb = m0; mb < m1; mb += MC) {
      const int64_t mc = min64(MC, m1 - mb);
      /* Micro-panels of MR rows, each [units][MR], back to back (none when A is read from x). */
      for (int64_t i = 0; i < mc && !rows; i += MR)
        pack_a(a, pairs, mb + i, (int)min64(MR, mc - i), k0, kl, (uint32_t *)abuf + i * units);
      for (int64_t i = 0; i < mc && rows && !direct; i++)
        xk_convert_row((float *)abuf + i * units, XK_F32, (const char *)a->x + ((mb + i) * a->x_stride + k0) * xs,
                       a->x_dtype, kl, 1.0f);
      for (int64_t pi = 0; pi < npanels; pi++) {
        const int nr = (int)min64(NR, n1 - n0 - pi * NR);
        const int first = fuse && mb == m0;
        if (first) pack_b(a, n0, n1, n0 + pi * NR, n0 + pi * NR + 1, k0, kl, (float *)packb);
        for (int64_t i = 0; i < mc; i += MR) {
          const int mr = (int)min64(MR, mc - i);
          float *c = C + (mb - m0 + i) * ldc + pi * NR;
#if VL == 16
          if (pairs) {
            uk_bf16_any(mr, units, (const uint32_t *)abuf + i * units, (const uint32_t *)packb + pi * units * NR, c,
                        ldc, k0 > 0, nr);
            continue;
          }
#endif
          if (rows)
            uk_f32_rows(mr, units,
                        direct ? (const float *)a->x + (mb + i) * a->x_stride + k0 : (const float *)abuf + i * units,
                        (const float *)packb + pi * units * NR, c, ldc, k0 > 0, nr, direct ? a->x_stride : units);
          else
            uk_f32_any(mr, units, (const float *)abuf + i * units, (const float *)packb + pi * units * NR, c, ldc,
                       k0 > 0, nr);
          if (first && pi + 1 < npanels) {
            /* The next panel's weight rows, a share of its rows per microkernel call. */
            const int64_t r0 = n0 + (pi + 1) * NR + (i / MR) * fuse_rows;
            for (int64_t r = r0; r < min64(r0 + fuse_rows, min64(n1, n0 + (pi + 2) * NR)); r++) {
              const char *src = (const char *)w_row(a, r) + k0 * wes;
              for (int64_t o = 0; o < kl * wes; o += 64) _mm_prefetch(src + o, _MM_HINT_T0);
              _mm_prefetch(src + kl * wes - 1, _MM_HINT_T0);
            }
          }
#if PANEL_PF
          if (prepacked && mb == m0 && pi + 1 < npanels) {
            /* Pre-packed panels come from L3: bring the next one into L2, a share per micro-panel. */
            const char *nxt = (const char *)((const float *)packb + (pi + 1) * units * NR);
            const int64_t lines = units * NR / 16, per = cdiv(lines, cdiv(mc, MR)), l0 = (i / MR) * per;
            for (int64_t l = l0; l < l0 + per && l < lines; l++) _mm_prefetch(nxt + 64 * l, _MM_HINT_T1);
          }
#endif
        }
      }
    }
  }
  if (a->out_dtype != XK_F32 || a->bias) epilogue(a, m0, m1, n0, n1, C, ldc);
}

void XK_FN(linear_gemm)(const xk_linear_args *a, int64_t tile_begin, int64_t tile_end, void *workspace) {
  for (int64_t t = tile_begin; t < tile_end; t++) gemm_tile(a, t, (char *)workspace);
}

/* XK_WEIGHT_PACKED_PANEL: panels [begin, end) of every K block (see the
 * header); a->w is the dense weight. */
void XK_FN(linear_pack_w)(const xk_linear_args *a, int64_t begin, int64_t end, void *dst) {
  const int64_t npad = cdiv(a->n, NR) * NR;
  xk_linear_args d = *a; /* the source is a dense weight */
  d.w_kind = XK_WEIGHT_DENSE;
  for (int64_t k0 = 0; k0 < a->k; k0 += XK_PANEL_KC) {
    const int64_t kl = min64(XK_PANEL_KC, a->k - k0);
    float *blk = (float *)dst + k0 * npad;
    pack_b(&d, begin * NR, min64(a->n, end * NR), begin * NR, min64(a->n, end * NR), k0, kl, blk + begin * kl * NR);
  }
}

void XK_FN(linear_pack_x)(const xk_linear_args *a, int64_t begin, int64_t end) {
  (void)a;
  (void)begin;
  (void)end;
}

/* ---- probe ------------------------------------------------------------------ */

#define XK_DOT_CHAINS 12

double XK_FN(probe_bf16dot)(int64_t iters, xk_probe_result *sink) {
#if VL == 16
  __m512 acc[XK_DOT_CHAINS];
  const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3380);
  for (int j = 0; j < XK_DOT_CHAINS; j++) acc[j] = _mm512_set1_ps((float)j);
  for (int64_t it = 0; it < iters; it++)
    for (int j = 0; j < XK_DOT_CHAINS; j++) acc[j] = _mm512_dpbf16_ps(acc[j], x, y);
  __m512 s = acc[0];
  for (int j = 1; j < XK_DOT_CHAINS; j++) s = _mm512_add_ps(s, acc[j]);
  sink->value = _mm512_reduce_add_ps(s);
  return 64.0 * (double)iters * XK_DOT_CHAINS;
#else
  /* No bf16 dot instruction: bf16 runs on the fp32 FMA units. */
  __m256 acc[XK_DOT_CHAINS];
  const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  for (int j = 0; j < XK_DOT_CHAINS; j++) acc[j] = _mm256_set1_ps((float)j);
  for (int64_t it = 0; it < iters; it++)
    for (int j = 0; j < XK_DOT_CHAINS; j++) acc[j] = _mm256_fmadd_ps(acc[j], x, y);
  __m256 s = acc[0];
  for (int j = 1; j < XK_DOT_CHAINS; j++) s = _mm256_add_ps(s, acc[j]);
  sink->value = vf_hsum(s);
  return 16.0 * (double)iters * XK_DOT_CHAINS;
#endif
}

#endif /* vector tiers */
