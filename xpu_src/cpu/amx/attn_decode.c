/*
 * AMX decode attention: paged_attention_v1 / v2 partitions over vLLM's paged
 * cache, bf16 queries over bf16 or fp8 (e4m3 / e5m2) caches. Q.K^T and P.V
 * run on the tile unit (TDPBF16PS: exact bf16 x bf16 products, fp32
 * accumulation); the core streams the cache, converts fp8 and computes the
 * softmax. Other calls go to the avx512 kernels (xk_attn_*_amx below fall
 * back to them).
 *
 * Layouts, no transposes:
 *   keys [blocks][Hkv][D/x][bs][x], x = 16 bytes: a chunk of 16 tokens x 16
 *     bytes is a tile A of 16 rows (tokens) x 8 bf16 dims (row stride 16 B),
 *     and logits^T[16 tokens][Gp heads] += A . B, B = the queries' same 8
 *     dims as 4 VNNI rows of dim pairs x Gp heads. fp8 chunks (16 dims) are
 *     converted to bf16 rows of 32 bytes first (exact) and use 8 pair rows.
 *   values [blocks][Hkv][D][bs]: A = 16 value rows (dims) x tw tokens (tw =
 *     32 when bs is a multiple of 32, else 16; row stride bs), B = P^T as
 *     tw/2 rows of token pairs x Gp heads, C = out^T[16 dims][Gp] fp32,
 *     accumulated over the whole range (4 C tiles = 64 dims per pass).
 * Gp is the query-head group G rounded up to a power of two (<= 16); the
 * extra heads are zero. One unit = one (sequence, partition) and a run of
 * adjacent kv heads, as the avx512 fast path (kv heads of a block are
 * adjacent in memory).
 *
 * Numerics (the module tolerance of src/ops/attention.rs): logits = fp32
 * sums of exact products (tile order), times scale * k_scale (+ alibi);
 * softmax in fp32 over the range with max and sum as vLLM; probabilities
 * normalised, rounded to bf16 (the query dtype) and zero past the context;
 * P.V sums exact products in fp32; output = acc * v_scale rounded once.
 * Slots past the context in the last group never reach the output: their
 * logit rows are masked to -inf and their value columns are staged as zero
 * (0 * NaN would be NaN). TDPBF16PS flushes bf16 denormal inputs and the
 * core runs with FTZ/DAZ as the avx512 fast path does. Every kv head's
 * arithmetic is fixed by the call alone, so results do not depend on
 * threads or units.
 *
 * No software prefetch: each cache block is read as one contiguous span,
 * which the hardware prefetchers follow; a cursor walking the spans a fixed
 * distance ahead (several distances and hints) measured no better.
 */
#include <float.h>
#include <math.h>

#include "../../common/convert.h"
#include "../../common/simd512.h"
#include "../../common/tier.h"

#pragma GCC target("avx512vbmi")

#define AD_INLINE static inline __attribute__((always_inline))
#define AD_FTZ_DAZ 0x8040u
#define AD_LG_BUDGET (1 << 20) /* logits + probabilities of a unit */
#ifndef AD_FP8
#define AD_FP8 1 /* fp8 caches on this path (0: the avx512 fast path) */
#endif
#ifndef AD_VLAG
#define AD_VLAG 2 /* fp8 values: groups staged ahead of their tiles */
#endif
#define AD_VSLOTS 4 /* > AD_VLAG, a power of two */
#ifndef AD_VB
#define AD_VB 4 /* value groups per P.V batch */
#endif
#define AD_NB 4                /* 16-token groups per Q.K tile batch (C tiles 0-3) */

extern const xk_kernel_table xk_kernels_avx512;

static inline int64_t ad_min(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t ad_max(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t ad_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
static inline int64_t ad_al(int64_t b) { return (b + 63) & ~(int64_t)63; }

/* ---- applicability and geometry --------------------------------------------- */

static int64_t ad_gp(int64_t g) {
  int64_t p = 1;
  while (p < g) p *= 2;
  return p;
}

static int ad_paged_ok(const xk_attn_args *a) {
  const int32_t dt = a->cache_dtype;
  if (a->kind != XK_ATTN_PAGED || !a->fast || a->layout != XK_LAYOUT_PAGED || a->dtype != XK_BF16) return 0;
  if (!(dt == XK_BF16 || (AD_FP8 && xk_is_fp8(dt)))) return 0;
  if (a->num_kv_heads <= 0 || a->num_heads % a->num_kv_heads) return 0;
  const int64_t G = a->num_heads / a->num_kv_heads, D = a->head_size, bs = a->block_size;
  if (G > 16 || D % 16 || D > 512 || bs % 16 || bs <= 0) return 0;
  const int64_t x = 16 / xk_dtype_size(dt);
  const int64_t *ks = a->key_cache_strides, *vs = a->value_cache_strides;
  return a->x == x && ks[4] == 1 && ks[3] == x && vs[3] == 1;
}

typedef struct ad_geom {
  int64_t G, Gp, D, bs, es, tw, Lp, nkmax, Hkv, P;
  int fp8;
  /* workspace offsets */
  int64_t qv, lg, pv, ot, kst, vst, vlast, row, total;
} ad_geom;

static ad_geom ad_layout(const xk_attn_args *a) {
  ad_geom g;
  g.Hkv = a->num_kv_heads;
  g.G = a->num_heads / g.Hkv;
  g.Gp = ad_gp(g.G);
  g.D = a->head_size;
  g.bs = a->block_size;
  g.es = xk_dtype_size(a->cache_dtype);
  g.fp8 = xk_is_fp8(a->cache_dtype);
  g.tw = (!g.fp8 && g.bs % 32 == 0) ? 32 : 16;
  g.P = a->partition_size ? a->max_partitions : 1;
  const int64_t L = a->partition_size ? a->partition_size : ad_max(a->max_context, 1);
  g.Lp = ad_up(L, 32);
  const int64_t per_head = g.Lp * g.Gp * 6;
  g.nkmax = ad_max(1, ad_min(g.Hkv, AD_LG_BUDGET / per_head));
  int64_t off = 0;
  g.qv = off;
  off += ad_al(g.nkmax * (g.D / 2) * g.Gp * 4);
  g.lg = off;
  off += ad_al(g.nkmax * g.Lp * g.Gp * 4);
  g.pv = off;
  off += ad_al(g.nkmax * (g.Lp / 2) * g.Gp * 4);
  g.ot = off;
  off += ad_al(g.nkmax * g.D * g.Gp * 4);
  g.kst = off;
  off += g.fp8 ? ad_al(2 * AD_NB * 16 * g.D * 2) : 0;
  g.vst = off;
  off += g.fp8 ? ad_al(AD_VSLOTS * 64 * 16 * 2) : 0;
  g.vlast = off;
  off += ad_al(g.D * g.tw * 2);
  g.row = off;
  off += ad_al(g.D * 4);
  g.total = off + 64;
  return g;
}

/* The unit starting at grid block b (kv heads fastest): one (sequence,
 * partition), kv heads [*k0, *k0 + *nk); returns the grid block after it. */
static int64_t ad_unit(const xk_attn_args *a, const ad_geom *g, int64_t b, int64_t end, int64_t *seq, int64_t *part,
                       int64_t *k0, int64_t *nk, int64_t *t0, int64_t *t1) {
  *k0 = b % g->Hkv;
  *part = (b / g->Hkv) % g->P;
  *seq = b / (g->Hkv * g->P);
  *nk = ad_min(ad_min(g->Hkv - *k0, end - b), g->nkmax);
  const int64_t len = a->seq_lens[*seq];
  *t0 = *part * a->partition_size;
  *t1 = a->partition_size ? ad_min(*t0 + a->partition_size, len) : len;
  return b + *nk;
}

/* ---- tiles ------------------------------------------------------------------- */

typedef struct ad_cfg {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} ad_cfg;

/* C tiles 0-3: 16 x Gp f32; A tiles 4-5: 16 rows x abytes; B tiles 6-7: brows x Gp pairs. */
static void ad_config(int64_t gp, int64_t abytes, int64_t brows) {
  _Alignas(64) ad_cfg c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int i = 0; i < 4; i++) {
    c.rows[i] = 16;
    c.colsb[i] = (uint16_t)(4 * gp);
  }
  for (int i = 4; i < 6; i++) {
    c.rows[i] = 16;
    c.colsb[i] = (uint16_t)abytes;
  }
  for (int i = 6; i < 8; i++) {
    c.rows[i] = (uint8_t)brows;
    c.colsb[i] = (uint16_t)(4 * gp);
  }
  _tile_loadconfig(&c);
  __asm__ volatile("" ::: "memory");
}

/* ---- fp8 -> bf16 ------------------------------------------------------------- */

typedef struct ad_cvt {
  __m512i lo0, lo1, hi0, hi1, sgn;
} ad_cvt;

static void ad_cvt_init(ad_cvt *t, int32_t dt) {
  _Alignas(64) uint8_t lo[128], hi[128];
  for (int c = 0; c < 128; c++) {
    const uint8_t code = (uint8_t)c;
    const uint32_t bits = xk_f32_bits(xk_fp8_to_f32_scalar(code, xk_fp8_format_of(dt))); /* exact in bf16 */
    lo[c] = (uint8_t)(bits >> 16);
    hi[c] = (uint8_t)(bits >> 24);
  }
  t->lo0 = _mm512_load_si512((const void *)lo);
  t->lo1 = _mm512_load_si512((const void *)(lo + 64));
  t->hi0 = _mm512_load_si512((const void *)hi);
  t->hi1 = _mm512_load_si512((const void *)(hi + 64));
  t->sgn = _mm512_set1_epi8((char)0x80);
}

/* 64 codes, 128-bit lane L = row L (16 codes), as 4 bf16 rows of 32 bytes in
 * natural order: *o0 = rows 0-1, *o1 = rows 2-3. */
AD_INLINE void ad_fp8_rows4(__m512i x, const ad_cvt *t, __m512i *o0, __m512i *o1) {
  const __m512i lo = _mm512_permutex2var_epi8(t->lo0, x, t->lo1);
  const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(t->hi0, x, t->hi1), x, t->sgn, 0xf8);
  const __m512i wl = _mm512_unpacklo_epi8(lo, hi), wh = _mm512_unpackhi_epi8(lo, hi);
  *o0 = _mm512_permutex2var_epi64(wl, _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), wh);
  *o1 = _mm512_permutex2var_epi64(wl, _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15), wh);
}

/* nrows (a multiple of 4) rows of 16 fp8 codes, rs bytes apart, into bf16
 * rows of 32 bytes at dst; codes of tokens >= nv read as +0. */
AD_INLINE void ad_stage_fp8(const char *src, int64_t rs, int64_t nrows, int64_t nv, const ad_cvt *t, char *dst) {
  const __mmask64 m = nv >= 16 ? ~(__mmask64)0 : (__mmask64)(((1ull << nv) - 1) * 0x0001000100010001ull);
  for (int64_t r = 0; r < nrows; r += 4) {
    __m512i x;
    if (rs == 16) {
      x = _mm512_loadu_si512((const void *)(src + r * 16));
    } else {
      const char *p = src + r * rs;
      x = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p));
      x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(p + rs)), 1);
      x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(p + 2 * rs)), 2);
      x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(p + 3 * rs)), 3);
    }
    x = _mm512_maskz_mov_epi8(m, x);
    __m512i o0, o1;
    ad_fp8_rows4(x, t, &o0, &o1);
    _mm512_storeu_si512((void *)(dst + r * 32), o0);
    _mm512_storeu_si512((void *)(dst + r * 32 + 64), o1);
  }
}

/* ---- softmax ------------------------------------------------------------------ */


/* Folds lanes of the same head (lane % gp): every lane ends with its head's max / sum. */
AD_INLINE __m512 ad_fold(__m512 v, int64_t gp, int max) {
  for (int64_t s = gp; s < 16; s *= 2) {
    const __m512i idx = _mm512_and_si512(_mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                                                            12, 13, 14, 15),
                                                          _mm512_set1_epi32((int)s)),
                                         _mm512_set1_epi32(15));
    const __m512 w = _mm512_permutexvar_ps(idx, v);
    v = max ? _mm512_max_ps(v, w) : _mm512_add_ps(v, w);
  }
  return v;
}

/* f32 -> bf16 bits, round to nearest even (inputs are finite). */
AD_INLINE __m256i ad_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  return _mm512_cvtepi32_epi16(
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16));
}

/* Softmax of one kv head's logits lg[Lp][gp] (n valid tokens) into P^T VNNI
 * pv[Lp/2][gp] (pairs of tokens per head, zero past n); writes each head's
 * max and sum to mx[], sm[] (gp entries). */
static void ad_softmax(const xk_attn_args *a, const ad_geom *g, float *lg, uint32_t *pv, int64_t n, int64_t t0,
                       int64_t L, float sc, const float *slopes, float *mx, float *sm) {
  const int64_t gp = g->Gp, vt = 16 / gp; /* tokens per vector */
  const int64_t nvec = ad_up(n, 32) * gp / 16; /* even: pairs of vectors below */
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i ltok = _mm512_srli_epi32(lane, __builtin_ctzll((unsigned long long)gp));
  _Alignas(64) float sl[16];
  for (int l = 0; l < 16; l++) sl[l] = slopes && l % gp < g->G ? slopes[l % gp] : 0.0f;
  const __m512 vsl = _mm512_load_ps(sl), vsc = _mm512_set1_ps(sc);
  const int alibi = slopes != NULL;
  __m512 vmax = _mm512_set1_ps(-FLT_MAX);
  for (int64_t i = 0; i < nvec; i++) {
    const __m512i tok = _mm512_add_epi32(ltok, _mm512_set1_epi32((int)(i * vt)));
    const __mmask16 valid = _mm512_cmplt_epi32_mask(tok, _mm512_set1_epi32((int)n));
    __m512 x = _mm512_mul_ps(_mm512_loadu_ps(lg + 16 * i), vsc);
    if (alibi) {
      const __m512 pos = _mm512_cvtepi32_ps(_mm512_add_epi32(tok, _mm512_set1_epi32((int)(t0 - L + 1))));
      x = _mm512_add_ps(x, _mm512_mul_ps(vsl, pos));
    }
    x = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), valid, x);
    _mm512_storeu_ps(lg + 16 * i, x);
    vmax = _mm512_max_ps(vmax, x);
  }
  vmax = ad_fold(vmax, gp, 1);
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t i = 0; i < nvec; i++) {
    const __m512 x = _mm512_loadu_ps(lg + 16 * i);
    const __mmask16 valid = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
    const __m512 e = _mm512_maskz_mov_ps(valid, xk_exp16(_mm512_sub_ps(x, vmax)));
    _mm512_storeu_ps(lg + 16 * i, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  vsum = ad_fold(vsum, gp, 0);
  const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(vsum, _mm512_set1_ps(1e-6f)));
  /* 32 values = 32/gp tokens: out (pair q, head h, s) = q*2gp + 2h + s <- in (2q + s)*gp + h */
  _Alignas(64) int16_t idx[32];
  for (int q = 0; q < 32 / (2 * gp); q++)
    for (int h = 0; h < gp; h++)
      for (int s = 0; s < 2; s++) idx[q * 2 * gp + 2 * h + s] = (int16_t)((2 * q + s) * gp + h);
  const __m512i perm = _mm512_load_si512((const void *)idx);
  for (int64_t i = 0; i < nvec; i += 2) {
    const __m256i b0 = ad_bf16(_mm512_mul_ps(_mm512_loadu_ps(lg + 16 * i), inv));
    const __m256i b1 = ad_bf16(_mm512_mul_ps(_mm512_loadu_ps(lg + 16 * i + 16), inv));
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(b0), b1, 1);
    _mm512_storeu_si512((void *)(pv + 8 * i), _mm512_permutexvar_epi16(perm, v));
  }
  _Alignas(64) float m16[16], s16[16];
  _mm512_store_ps(m16, vmax);
  _mm512_store_ps(s16, vsum);
  for (int64_t h = 0; h < gp; h++) {
    mx[h] = m16[h];
    sm[h] = s16[h];
  }
  (void)a;
}

/* ---- Q.K ---------------------------------------------------------------------- */

/* logits^T of ng (<= 4) groups of 16 tokens: C tile i += A_i(c) . B(c) over
 * nch chunks; A_i(c) at A[i] + c * achunk (16 rows, astride apart), B(c) at
 * qv + c * bstep (brows pair rows of gp). Stores C_i to lg + 16 i gp. */
static void ad_qk(const char *const A[AD_NB], int64_t ng, int64_t nch, int64_t achunk, int64_t astride,
                  const uint32_t *qv, int64_t bstep, int64_t gp, float *lg) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t bstr = 4 * gp;
#define AD_QK_STEP(BT, c)                                              \
  do {                                                                 \
    _tile_loadd(BT, qv + (c) * bstep, bstr);                           \
    _tile_loadd(4, A[0] + (c) * achunk, astride);                      \
    _tile_dpbf16ps(0, 4, BT);                                          \
    if (ng > 1) {                                                      \
      _tile_loadd(5, A[1] + (c) * achunk, astride);                    \
      _tile_dpbf16ps(1, 5, BT);                                        \
    }                                                                  \
    if (ng > 2) {                                                      \
      _tile_loadd(4, A[2] + (c) * achunk, astride);                    \
      _tile_dpbf16ps(2, 4, BT);                                        \
    }                                                                  \
    if (ng > 3) {                                                      \
      _tile_loadd(5, A[3] + (c) * achunk, astride);                    \
      _tile_dpbf16ps(3, 5, BT);                                        \
    }                                                                  \
  } while (0)
  int64_t c = 0;
  for (; c + 2 <= nch; c += 2) {
    AD_QK_STEP(6, c);
    AD_QK_STEP(7, c + 1);
  }
  if (c < nch) AD_QK_STEP(6, c);
#undef AD_QK_STEP
  _tile_stored(0, lg, bstr);
  if (ng > 1) _tile_stored(1, lg + 16 * gp, bstr);
  if (ng > 2) _tile_stored(2, lg + 32 * gp, bstr);
  if (ng > 3) _tile_stored(3, lg + 48 * gp, bstr);
}

/* ---- P.V ---------------------------------------------------------------------- */

/* ---- the kernel ----------------------------------------------------------------- */

static void ad_paged(const xk_attn_args *a, char *base, int64_t begin, int64_t end) {
  const ad_geom g = ad_layout(a);
  const int64_t G = g.G, gp = g.Gp, D = g.D, bs = g.bs, es = g.es, tw = g.tw, fp8 = g.fp8;
  const int64_t *ks = a->key_cache_strides, *vs = a->value_cache_strides;
  uint32_t *qv = (uint32_t *)(base + g.qv), *pvb = (uint32_t *)(base + g.pv);
  float *lgb = (float *)(base + g.lg), *cacc = (float *)(base + g.ot), *row = (float *)(base + g.row);
  char *kst = base + g.kst, *vst = base + g.vst, *vlast = base + g.vlast;
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | AD_FTZ_DAZ);
  ad_cvt cv;
  memset(&cv, 0, sizeof cv);
  if (fp8) ad_cvt_init(&cv, a->cache_dtype);
  const int64_t kab = fp8 ? 32 : 16;           /* A row bytes of a key chunk */
  const int64_t nch = fp8 ? D / 16 : D / 8;    /* key chunks */
  const int64_t npass = (D + 63) / 64;
  float mx[16], sm[16];
  for (int64_t b = begin; b < end;) {
    int64_t seq, part, k0, nk, t0, t1;
    b = ad_unit(a, &g, b, end, &seq, &part, &k0, &nk, &t0, &t1);
    if (a->partition_size && t1 <= t0) continue; /* v2: nothing to do, nothing written */
    const int64_t L = a->seq_lens[seq], n = ad_max(0, t1 - t0);
    const int32_t *bt = a->block_tables + seq * a->block_tables_stride_seq;
    const int64_t btb = a->block_tables_stride_block;
    /* queries as VNNI B rows: qv[kvl][pair p][head h] */
    for (int64_t kvl = 0; kvl < nk; kvl++) {
      uint32_t *q = qv + kvl * (D / 2) * gp;
      for (int64_t h = 0; h < gp; h++) {
        const char *src = h < G ? (const char *)a->query +
                                      (seq * a->q_stride_token + ((k0 + kvl) * G + h) * a->q_stride_head) * 2
                                : NULL;
        for (int64_t p = 0; p < D / 2; p++) {
          uint32_t v = 0;
          if (src) memcpy(&v, src + 4 * p, 4);
          q[p * gp + h] = v;
        }
      }
    }
    const int64_t ng16 = (n + 15) / 16;
    /* Q.K: steps (batch of AD_NB groups, kv head); fp8 keys are staged one
     * step ahead (a tile load right after the stores that wrote its data
     * waits for them to drain). */
    if (ng16) ad_config(gp, kab, kab / 4);
    const int64_t nsteps = (ng16 + AD_NB - 1) / AD_NB * nk;
#define AD_KSTAGE(st)                                                                                        \
  do {                                                                                                       \
    const int64_t gb_ = (st) / nk * AD_NB, kvl_ = (st) % nk, nb_ = ad_min(AD_NB, ng16 - gb_);                \
    for (int64_t i_ = 0; i_ < nb_; i_++) {                                                                   \
      const int64_t tok_ = t0 + 16 * (gb_ + i_), blk_ = bt[(tok_ / bs) * btb];                               \
      const char *kb_ = (const char *)a->key_cache + (blk_ * ks[0] + (k0 + kvl_) * ks[1] + (tok_ % bs) * ks[3]); \
      char *d_ = kst + ((st) & 1) * AD_NB * 16 * D * 2 + i_ * 16 * D * 2;                                     \
      for (int64_t c_ = 0; c_ < nch; c_++) ad_stage_fp8(kb_ + c_ * ks[2], 16, 16, 16, &cv, d_ + c_ * 512);    \
    }                                                                                                        \
  } while (0)
    if (fp8 && nsteps) AD_KSTAGE(0);
    for (int64_t st = 0; st < nsteps; st++) {
      const int64_t gb = st / nk * AD_NB, kvl = st % nk, nb = ad_min(AD_NB, ng16 - gb);
      if (fp8 && st + 1 < nsteps) AD_KSTAGE(st + 1);
      const char *A[AD_NB];
      for (int64_t i = 0; i < nb; i++) {
        if (fp8) {
          A[i] = kst + (st & 1) * AD_NB * 16 * D * 2 + i * 16 * D * 2;
        } else {
          const int64_t tok = t0 + 16 * (gb + i), blk = bt[(tok / bs) * btb];
          A[i] = (const char *)a->key_cache + (blk * ks[0] + (k0 + kvl) * ks[1] + (tok % bs) * ks[3]) * es;
        }
      }
      for (int64_t i = nb; i < AD_NB; i++) A[i] = A[0];
      ad_qk(A, nb, nch, fp8 ? 512 : ks[2] * es, kab, qv + kvl * (D / 2) * gp, kab / 4 * gp, gp,
            lgb + (kvl * g.Lp + 16 * gb) * gp);
    }
#undef AD_KSTAGE
    /* softmax per kv head */
    for (int64_t kvl = 0; kvl < nk; kvl++) {
      const int64_t kvh = k0 + kvl;
      const float ksc = a->k_scale ? a->k_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
      const float *sl = a->alibi_slopes ? a->alibi_slopes + seq * a->alibi_stride_seq + kvh * G : NULL;
      if (n > 0) {
        ad_softmax(a, &g, lgb + kvl * g.Lp * gp, pvb + kvl * (g.Lp / 2) * gp, n, t0, L, a->scale * ksc, sl, mx, sm);
      } else {
        for (int64_t h = 0; h < gp; h++) {
          mx[h] = -FLT_MAX;
          sm[h] = 0.0f;
        }
      }
      if (a->partition_size) {
        for (int64_t h = 0; h < G; h++) {
          const int64_t o = seq * a->part_strides[0] + (kvh * G + h) * a->part_strides[1] + part * a->part_strides[2];
          a->max_logits[o] = mx[h];
          a->exp_sums[o] = sm[h];
        }
      }
    }
    /* P.V: batches of AD_VB groups of tw tokens, block-major; each (kv head,
     * 64-dim pass) accumulator lives in C tiles over a batch and is spilled
     * to cacc between batches (the sums keep the token order). */
    const int64_t nj = (n + tw - 1) / tw, nlast = n - (nj - 1) * tw;
    if (nj) ad_config(gp, 2 * tw, tw / 2);
    for (int64_t jb = 0; jb < nj; jb += AD_VB) {
      const int64_t nbj = ad_min(AD_VB, nj - jb);
      const char *vb0[AD_VB];
      for (int64_t i = 0; i < nbj; i++) {
        const int64_t tok = t0 + (jb + i) * tw, blk = bt[(tok / bs) * btb];
        vb0[i] = (const char *)a->value_cache + (blk * vs[0] + k0 * vs[1] + tok % bs) * es;
      }
      const int last = jb + nbj == nj;
      const int64_t nvit = nk * npass * nbj; /* fp8: (kv head, pass, group) iterations of the batch */
#define AD_VSTAGE(it)                                                                                      \
  do {                                                                                                     \
    const int64_t i_ = (it) % nbj, s_ = (it) / nbj % npass, kvl_ = (it) / (nbj * npass);                   \
    const int64_t nv_ = last && i_ == nbj - 1 ? nlast : tw;                                                \
    ad_stage_fp8(vb0[i_] + kvl_ * vs[1] + 64 * s_ * vs[2], vs[2], 16 * ad_min(4, (D - 64 * s_) / 16), nv_, &cv, \
                 vst + ((it) & (AD_VSLOTS - 1)) * 64 * 32);                                                \
  } while (0)
      for (int64_t kvl = 0; kvl < nk; kvl++) {
        const uint32_t *pv = pvb + kvl * (g.Lp / 2) * gp + jb * (tw / 2) * gp;
        if (last && !fp8 && nlast < tw) { /* the last group's values, zero past the context */
          const uint16_t *vb = (const uint16_t *)(vb0[nbj - 1] + kvl * vs[1] * es);
          const __mmask32 m = (__mmask32)((1u << nlast) - 1u);
          for (int64_t d = 0; d < D; d++) {
            const __m512i v = _mm512_maskz_loadu_epi16(m, vb + d * vs[2]);
            _mm512_mask_storeu_epi16((uint16_t *)vlast + d * tw, tw == 32 ? ~(__mmask32)0 : 0xFFFF, v);
          }
        }
        for (int64_t s = 0; s < npass; s++) {
          const int64_t ns = ad_min(4, (D - 64 * s) / 16);
          float *o = cacc + (kvl * D + 64 * s) * gp;
          const int64_t cs = 4 * gp;
          if (jb == 0) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
          } else {
            _tile_loadd(0, o, cs);
            if (ns > 1) _tile_loadd(1, o + 16 * gp, cs);
            if (ns > 2) _tile_loadd(2, o + 32 * gp, cs);
            if (ns > 3) _tile_loadd(3, o + 48 * gp, cs);
          }
          for (int64_t i = 0; i < nbj; i++) {
            const int64_t nv = last && i == nbj - 1 ? nlast : tw;
            const char *vb = vb0[i] + (kvl * vs[1] + 64 * s * vs[2]) * es;
            const char *A;
            int64_t astr;
            if (fp8) {
              const int64_t it = (kvl * npass + s) * nbj + i;
              if (it == 0)
                for (int64_t k = 0; k < AD_VLAG && k < nvit; k++) AD_VSTAGE(k);
              if (it + AD_VLAG < nvit) AD_VSTAGE(it + AD_VLAG);
              A = vst + (it & (AD_VSLOTS - 1)) * 64 * 32;
              astr = 32;
            } else if (nv < tw) {
              A = vlast + 64 * s * tw * 2;
              astr = tw * 2;
            } else {
              A = vb;
              astr = vs[2] * 2;
            }
            const uint32_t *B = pv + i * (tw / 2) * gp;
#define AD_PV_STEP(BT)                      \
  do {                                      \
    _tile_loadd(BT, B, cs);                 \
    _tile_loadd(4, A, astr);                \
    _tile_dpbf16ps(0, 4, BT);               \
    if (ns > 1) {                           \
      _tile_loadd(5, A + 16 * astr, astr);  \
      _tile_dpbf16ps(1, 5, BT);             \
    }                                       \
    if (ns > 2) {                           \
      _tile_loadd(4, A + 32 * astr, astr);  \
      _tile_dpbf16ps(2, 4, BT);             \
    }                                       \
    if (ns > 3) {                           \
      _tile_loadd(5, A + 48 * astr, astr);  \
      _tile_dpbf16ps(3, 5, BT);             \
    }                                       \
  } while (0)
            if (i & 1)
              AD_PV_STEP(7);
            else
              AD_PV_STEP(6);
#undef AD_PV_STEP
          }
          _tile_stored(0, o, cs);
          if (ns > 1) _tile_stored(1, o + 16 * gp, cs);
          if (ns > 2) _tile_stored(2, o + 32 * gp, cs);
          if (ns > 3) _tile_stored(3, o + 48 * gp, cs);
        }
      }
    }
#undef AD_VSTAGE
    if (!nj) memset(cacc, 0, (size_t)(nk * D * gp) * sizeof(float));
    for (int64_t kvl = 0; kvl < nk; kvl++) {
      const int64_t kvh = k0 + kvl;
      const float vsc = a->v_scale ? a->v_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
      const float *ot = cacc + kvl * D * gp;
      for (int64_t h = 0; h < G; h++) {
        const int64_t hh = kvh * G + h;
        char *dst;
        if (a->partition_size) {
          dst = (char *)a->tmp_out +
                (seq * a->tmp_out_strides[0] + hh * a->tmp_out_strides[1] + part * a->tmp_out_strides[2]) * 2;
        } else {
          dst = (char *)a->out + (seq * a->out_stride_token + hh * a->out_stride_head) * 2;
        }
        for (int64_t d = 0; d < D; d++) row[d] = ot[d * gp + h] * vsc;
        xk_convert_row(dst, a->dtype, row, XK_F32, D, 1.0f);
      }
    }
  }
  _tile_release();
  _mm_setcsr(csr);
}

/* ---- entry points (the amx table) ------------------------------------------------ */

int64_t xk_attn_workspace_amx(const xk_attn_args *a) {
  if (ad_paged_ok(a)) return ad_layout(a).total;
  return xk_kernels_avx512.attn_workspace(a);
}

void xk_attn_paged_amx(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end) {
  if (!ad_paged_ok(a)) {
    xk_kernels_avx512.attn_paged(a, workspace, begin, end);
    return;
  }
  char *base = (char *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
  ad_paged(a, base, begin, end);
}
