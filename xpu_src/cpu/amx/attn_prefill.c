/*
 * AMX tier: flash_attn_varlen_func (attn_varlen) on the tile unit, in the
 * style of FlashAttention-2. Compiled in the amx unit (see amx.c); installed
 * over the avx512 table's attn_varlen / attn_workspace by
 * xk_attn_prefill_amx_install, which keeps the previous entries as the
 * fallback for everything this file does not handle (fp8 caches, f32/f16
 * queries, softcap, ALiBi, head sizes that are not a multiple of 64, paged
 * layouts) and for work items of a single query (decode rows: the previous
 * entry's DRAM-bound decode path; repacking K/V would not be repaid). Such
 * a row's result differs from the same row computed in a prefill item by
 * summation order only, within the documented tolerance.
 *
 * Per grid block (a work item = queries i0..i1 of one sequence, and one or
 * more kv heads), per kv head: the R = (i1 - i0) * G query rows of the GQA
 * group (row r = (i - i0) * G + g) share every K/V block.
 *   Q   bf16 [R32][D], row-major: the A operand of S = Q K^T as it is.
 *   K   blocks of AP_KB tokens repacked into VNNI pairs kp[D/2][KB]
 *       (dword (u, j) = K[j][2u], K[j][2u+1]): a 16 x 16 dword transpose per
 *       16 tokens x 32 head-dim elements. Packed once per (sequence, kv
 *       head) into a per-thread buffer that the following items of the same
 *       head reuse (contexts too long for it: per item, chunk by chunk).
 *   V   the same blocks as pairs of tokens vp[KB/2][D] (dword (u, d) =
 *       V[2u][d], V[2u+1][d]): an interleave of two rows.
 *   A unit = 32 rows (two tiles) x one key block; units run row pairs outer
 *   and blocks inner, in chunks of AP_CHUNK blocks (a chunk's K/V stays in
 *   L2 while all pairs use it), software-pipelined: the softmax of unit j
 *   (vector units) interleaved with the tile work of units j-1 (P.V) and
 *   j+1 (Q.K^T).
 *   S   = Q K^T on tiles (2 x 2 blocks of C tiles), fp32 [32][KB]; scaled,
 *       masked (causal / window, per row [lo, hi)), online softmax in fp32
 *       on AVX-512, 16 rows at a time with the row statistics as vectors;
 *       P rounded to bf16 (flash-attn: P enters P.V in the input dtype),
 *       the row sum taken over the unrounded fp32 P.
 *   O   fp32 [R32][D], rescaled by exp(m_old - m_new) when a row's
 *       reference max moves (after the previous unit's P.V), then
 *       O += P V on tiles. The reference max lags the running max (lazy
 *       rescaling): 16 rows that all have a reference take a block in one
 *       pass against it (ap_sm_fast) when each row's P sum to at most
 *       AP_SUMMAX = 2^16 (so every P is); otherwise the two passes move a
 *       row's reference when the block's max exceeds it by more than
 *       AP_LAZY = 8 in log2 units (ap_sm_mid). So P <= 2^16 always; the
 *       scale <= 0 path (ap_softmax_row) keeps the exact running max.
 *
 * Numerics and invariance. Key blocks are aligned to multiples of AP_KB from
 * key 0, so every row walks the same blocks whatever work item (or thread)
 * holds it; a block a row does not attend at all leaves its state exactly as
 * it was (max unchanged, so the rescale factor is exactly 1, P = 0, sum + 0),
 * so skipping such blocks for whole row pairs, or running them, changes
 * nothing. Keys and
 * values past the last attended key are never read (zero in the repacked
 * blocks), so unused cache slots (NaN) never reach the output. Products are
 * exact bf16 x bf16 in fp32 (TDPBF16PS: bf16 denormals read as zero, fp32
 * results flushed, round to nearest even); only the summation order differs
 * from the avx512 paths, within the op's documented bf16 tolerance.
 *
 * Where the time goes (session 6 measurements, 1 thread, T=2048 causal,
 * 34.4 GFLOP; standalone harness with parts compiled out): the tile work
 * ~20 ms (16/2 D=256) / ~21.5 ms (32/8 D=128), the softmax ~6 / ~12 ms,
 * the rest (Q copy, O zeroing, K/V packing, output) ~6.7 ms, and the
 * whole is about their sum. On this core dense AVX-512 work hardly
 * overlaps TDPBF16PS work (micro-benchmark: 192 FMAs per 4-product step
 * take 10.7 ms with the tiles vs 4.7 ms tiles alone and 5.3 ms FMAs alone;
 * up to ~64 per step hide; VCVTNE2PS2BF16 overlaps least), so how the
 * softmax rows are interleaved with the tile steps barely matters, and its
 * uop count adds to the time. The tile sequence itself (2 x 2 C blocks,
 * S stored per 32 keys, O loaded/stored per 32 columns, K/V from L2) runs
 * at 41-47% of the bf16 peak even alone (random data), against 70-80%
 * for the same products and A/B loads with no C-tile loads or stores.
 *
 * Session 7 (same harness at load 4-5, so 10-20% above quiet times), after
 * dropping the O clear and adding the single-pass softmax: T=2048 splits
 * into tiles ~20 / ~19 ms, softmax ~3.8 / ~9 ms, rest ~7.4 / ~9.9 ms
 * (16/2 D=256 / 32/8 D=128); T=8192 into ~373 / ~338, ~69 / ~135 and
 * ~77 / ~98 ms. The rest is mostly the Q copy (row groups a token stride
 * apart, from far memory), the output stores and the K/V packing.
 * Micro-benchmarks of the tile sequence alone: Q.K^T with its S stores
 * 1640-2480 GFLOP/s (2460-2510 without them), P.V with O loaded/stored
 * every 8 steps 1860-2080 (2700-3000 without). Measured and not kept (no
 * gain beyond the noise, or slower): B tiles by TILELOADDT1; the other
 * product order (B first, A1 before B1); a group's lower S pair stored
 * after the next group's first products (+5% alone, -6% in the kernel);
 * Q.K^T steps before P.V steps; AP_CHUNK 1 or 4; AP_KB 128 or 512; a
 * degree-3 2^x for P; the next call's query rows prefetched during this
 * call's units (slower), or a few rows ahead of the copy; streaming
 * stores for the output; 256 or 1024 rows per work item.
 *
 * Session 8 (harness, load 3-4, T=2048, 16/2 D=256 / 32/8 D=128, old
 * 29-31 / 37-40 ms): the query copy costs ~2 / ~3 ms and the output rows
 * ~2 / ~3 ms (ablations that read the query rows of tokens i % 4, or write
 * the output rows over 64 rows only, keeping the data realistic; reading
 * the workspace's stale, all-zero query rows instead also makes every
 * softmax take the fast path and overstates the copy). Measured and not
 * kept, each within the noise: row sums of P by VDPBF16PS over the bf16 P
 * (one uop per 32 keys instead of two additions); a one-pass softmax for a
 * 16-row group's first block against a guessed reference (max of the
 * first and last attended vectors; kept when ap_sm_fast accepts the sums);
 * every line of the query row 8-64 rows ahead prefetched (again); the
 * output rows of a finished pair written one per softmax row of the next
 * unit (bit-identical, 0-1%); step positions kept as counters in the
 * unit instead of a division per tile step (bit-identical, 32/8 ~7%
 * slower). Streaming output stores looked 6% faster on
 * 32/8 in the harness but not in `xpu-ops bench` (old/new alternated three
 * times: 33.2 / 35.0 / 37.0 ms best old vs 33.3 / 37.1 / 38.6 new).
 */
#include <math.h>

#include "../../common/convert.h"
#include "../../common/simd512.h"
#include "../../common/tier.h"
#include "../attn_util.h"
#include "amx_tiles.h"

#define AP_INLINE static inline __attribute__((always_inline))
/* GCC's _tile_loadd is an asm without a memory clobber: vector stores it
 * must see (packed K/V, P, rescaled O) are fenced off with this. */
#define AP_BARRIER() __asm__ volatile("" ::: "memory")

#ifndef AP_CHUNK
#define AP_CHUNK 2 /* key blocks per chunk (512 keys) */
#endif

/* Lazy rescaling threshold (log2 units): see ap_sm_mid. */
#ifndef AP_LAZY
#define AP_LAZY 8.0f
#endif

/* Largest row sum of P (against the current reference) a block may reach
 * in the single-pass softmax (ap_sm_fast); above it the two passes run. */
#ifndef AP_SUMMAX
#define AP_SUMMAX 65536.0f
#endif

#ifndef AP_KB
#define AP_KB 256 /* keys per block: a multiple of 32 */
#endif

/* Row strides of the buffers the tiles load and store: each row 64 bytes
 * longer than its data, so that the 16 rows of a tile (row strides of
 * 256 B to 1 KiB otherwise) do not all fall into the same few L1 sets. */
#define AP_KS (AP_KB + 16) /* packed key row (dword pairs) */
#define AP_SS (AP_KB + 16) /* logits row (fp32) */
#define AP_PS (AP_KB + 32) /* probabilities row (bf16) */
static inline int64_t ap_qs(int64_t D) { return D + 32; } /* Q row (bf16) */
static inline int64_t ap_os(int64_t D) { return D + 16; } /* O row (fp32) */
static inline int64_t ap_vs(int64_t D) { return D + 16; } /* packed value row (dword pairs) */
static inline int64_t ap_kblk(int64_t D) { return D / 2 * AP_KS; } /* dwords per packed key block */
static inline int64_t ap_vblk(int64_t D) { return AP_KB / 2 * ap_vs(D); } /* dwords per packed value block */

typedef void (*ap_varlen_fn)(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end);
typedef int64_t (*ap_ws_fn)(const xk_attn_args *a);

static ap_varlen_fn ap_prev_varlen;
static ap_ws_fn ap_prev_ws;

static inline int64_t ap_min(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t ap_max(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t ap_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

/* The cases this file computes; the rest goes to the previous table entry. */
static int ap_applies(const xk_attn_args *a) {
  if (a->kind != XK_ATTN_VARLEN || a->layout != XK_LAYOUT_FLASH) return 0;
  if (a->dtype != XK_BF16 || a->cache_dtype != XK_BF16) return 0;
  if (a->softcap > 0.0f || a->alibi_slopes) return 0;
  if (a->head_size % 64 || a->head_size > 512 || a->head_size <= 0) return 0;
  return a->key_cache_strides[3] == 1 && a->value_cache_strides[3] == 1;
}

/* ---- workspace ------------------------------------------------------------------ */

typedef struct ap_ws {
  uint16_t *q;   /* [R32][D] bf16 */
  float *s;      /* [2][32][KB]: a unit's logits (two units in flight) */
  uint16_t *p;   /* [2][32][KB] bf16 */
  float *alpha;  /* [2][32]: a unit's O rescale factors */
  float *o;      /* [R32][D] */
  float *m, *l;  /* [R32] */
  int64_t *lo, *hi; /* [R32] */
  int64_t *tlo, *thi, *tlo_max, *thi_min; /* [R32 / 32]: a row pair's attended key range (union) and its common part */
  uint8_t *ohas; /* [R32 / 32]: whether the pair's O rows hold data yet (else they count as zero) */
  uint32_t *kc, *vc; /* packed key blocks [NB][D/2][KB], value blocks [NB][KB/2][D] */
  int64_t NB;        /* blocks kc/vc hold */
} ap_ws;

/* Packed K/V blocks kept between the work items of one (sequence, kv head)
 * that a thread runs in turn (when the whole context fits the buffer):
 * blocks [lo, hi) hold keys [lo * KB, end) (keys from end to the block's end
 * zero). Else an item packs its keys chunk by chunk (seq = -1). */
typedef struct ap_cache {
  int64_t seq, kvh, lo, hi, end;
} ap_cache;

/* Largest packed K/V buffer per thread (bytes). */
#ifndef AP_CACHE_MAX
#define AP_CACHE_MAX (32ll << 20)
#endif

/* Key blocks the workspace's packed buffer holds: the longest context's, or
 * as many as AP_CACHE_MAX allows (at least one). */
static int64_t ap_cache_blocks(const xk_attn_args *a) {
  int64_t maxk = 0;
  for (int64_t s = 0; s < a->num_seqs; s++) maxk = ap_max(maxk, a->seq_lens[s]);
  const int64_t nb = ap_max((maxk + AP_KB - 1) / AP_KB, 1), cap = ap_max(AP_CACHE_MAX / ((ap_kblk(a->head_size) + ap_vblk(a->head_size)) * 4), 1);
  return ap_min(nb, cap);
}

static int64_t ap_layout(const xk_attn_args *a, char *base, ap_ws *w) {
  const int64_t D = a->head_size, R32 = ap_up(ap_max(a->max_rows, 1), 32), NB = ap_cache_blocks(a);
  int64_t off = 0;
#define AP_TAKE(field, type, count)                              \
  do {                                                           \
    if (w) w->field = (type *)(base + off);                      \
    off += ap_up((int64_t)sizeof(type) * (int64_t)(count), 64); \
  } while (0)
  AP_TAKE(q, uint16_t, R32 * ap_qs(D));
  AP_TAKE(s, float, 2 * 32 * AP_SS);
  AP_TAKE(p, uint16_t, 2 * 32 * AP_PS);
  AP_TAKE(alpha, float, 2 * 32);
  AP_TAKE(o, float, R32 * ap_os(D));
  AP_TAKE(m, float, R32);
  AP_TAKE(l, float, R32);
  AP_TAKE(lo, int64_t, R32);
  AP_TAKE(hi, int64_t, R32);
  AP_TAKE(tlo, int64_t, R32 / 32);
  AP_TAKE(thi, int64_t, R32 / 32);
  AP_TAKE(tlo_max, int64_t, R32 / 32);
  AP_TAKE(thi_min, int64_t, R32 / 32);
  AP_TAKE(ohas, uint8_t, R32 / 32);
  AP_TAKE(kc, uint32_t, NB * ap_kblk(D));
  AP_TAKE(vc, uint32_t, NB * ap_vblk(D));
#undef AP_TAKE
  if (w) w->NB = NB;
  return off + 64;
}

static int64_t ap_workspace(const xk_attn_args *a) {
  const int64_t prev = ap_prev_ws(a);
  return ap_applies(a) ? ap_max(prev, ap_layout(a, NULL, NULL)) : prev;
}

/* ---- tiles -------------------------------------------------------------------- */

/* 2^x for softmax arguments in log2 units (finite, <= 0 up to rounding):
 * f = x - floor(x) in [0, 1) by one VREDUCEPS, a degree-4 polynomial fitted
 * to 2^f on [0, 1) (relative error < 2.7e-6, far below the bf16 rounding of
 * P), and VSCALEFPS, which multiplies by 2^floor(x) itself: 6 vector uops
 * where a round (VRNDSCALEPS, two uops), a subtraction and a degree-5
 * polynomial took 9. Dense vector work hardly overlaps the tile unit's
 * (measured: x uops per tile step cost about as much with the tiles
 * running as alone), so these uops add to the kernel's time. */
AP_INLINE __m512 ap_exp2(__m512 x) {
  const __m512 f = _mm512_reduce_ps(x, _MM_FROUND_TO_NEG_INF);
  __m512 p = _mm512_set1_ps(0.013534121215343475f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.052011482417583466f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24144279956817627f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6930038332939148f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000026226043701f));
  return _mm512_scalef_ps(p, x);
}

/* The same for any argument: -inf (and anything below -150) gives 0 through
 * the clamp (2^-150 flushes to zero). */
AP_INLINE __m512 ap_exp2_16(__m512 x) { return ap_exp2(_mm512_max_ps(_mm512_set1_ps(-150.0f), x)); }

/* ---- repacking ------------------------------------------------------------------ */

typedef struct ap_seq {
  const xk_attn_args *a;
  const int32_t *bt;
  int64_t kvh;
} ap_seq;

/* Row pointers of tokens [t0, t0 + n) (n <= AP_KB) of the key (value = 0) or
 * value cache: one division for the first token, then page by page. */
static void ap_rows(const ap_seq *s, int value, int64_t t0, int64_t n, const uint16_t **rows) {
  const xk_attn_args *a = s->a;
  const int64_t *st = value ? a->value_cache_strides : a->key_cache_strides;
  const uint16_t *base = (const uint16_t *)(value ? a->value_cache : a->key_cache) + s->kvh * st[2];
  const int64_t bs = a->block_size;
  int64_t page = t0 / bs, off = t0 % bs;
  const uint16_t *pg = base + (int64_t)s->bt[page * a->block_tables_stride_block] * st[0];
  for (int64_t j = 0; j < n; j++) {
    rows[j] = pg + off * st[1];
    if (++off == bs && j + 1 < n) {
      off = 0;
      page++;
      pg = base + (int64_t)s->bt[page * a->block_tables_stride_block] * st[0];
    }
  }
}

/* Keys [t0, t0 + n) (n <= KB; the rest of the block zero) into kp. */
static void ap_pack_k(const ap_seq *s, int64_t t0, int64_t n, int64_t D, uint32_t *kp) {
  const uint16_t *rows[AP_KB];
  ap_rows(s, 0, t0, n, rows);
  for (int64_t j = n; j < AP_KB; j++) rows[j] = NULL;
  for (int64_t nt = 0; nt < AP_KB / 16; nt++) {
    if (16 * nt >= n) {
      for (int64_t u = 0; u < D / 2; u++) _mm512_storeu_si512(kp + u * AP_KS + 16 * nt, _mm512_setzero_si512());
      continue;
    }
    for (int64_t c = 0; c < D / 32; c++) {
      __m512i r[16];
      for (int j = 0; j < 16; j++) {
        const uint16_t *row = rows[16 * nt + j];
        r[j] = row ? _mm512_loadu_si512(row + 32 * c) : _mm512_setzero_si512();
      }
      xk_transpose16_epi32(r);
      for (int u = 0; u < 16; u++) _mm512_storeu_si512(kp + (16 * c + u) * AP_KS + 16 * nt, r[u]);
    }
  }
}

/* Values [t0, t0 + n) into vp (token pairs; tokens past n zero). */
static void ap_pack_v(const ap_seq *s, int64_t t0, int64_t n, int64_t D, uint32_t *vp) {
  const __m512i i0 = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), i1 = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
  const uint16_t *rows[AP_KB];
  ap_rows(s, 1, t0, n, rows);
  for (int64_t u = 0; u < AP_KB / 2; u++) {
    uint32_t *dst = vp + u * ap_vs(D);
    if (2 * u >= n) {
      for (int64_t d = 0; d < D; d += 16) _mm512_storeu_si512(dst + d, _mm512_setzero_si512());
      continue;
    }
    const uint16_t *ra = rows[2 * u], *rb = 2 * u + 1 < n ? rows[2 * u + 1] : NULL;
    for (int64_t d = 0; d < D; d += 32) {
      const __m512i x = _mm512_loadu_si512(ra + d), y = rb ? _mm512_loadu_si512(rb + d) : _mm512_setzero_si512();
      const __m512i lo = _mm512_unpacklo_epi16(x, y), hi = _mm512_unpackhi_epi16(x, y);
      _mm512_storeu_si512(dst + d, _mm512_permutex2var_epi64(lo, i0, hi));
      _mm512_storeu_si512(dst + d + 16, _mm512_permutex2var_epi64(lo, i1, hi));
    }
  }
}

/* ---- tile kernels ------------------------------------------------------------------ */

/* A unit of work: the 32 query rows r0.. (two 16-row tiles) against one
 * key block (kp, vp packed; kb0 its first key). Its tile work is cut into
 * steps, so that it can be spread between the rows of another unit's
 * softmax (the tile unit then runs while the vector units work; a long run
 * of tile instructions issued at once would stall the softmax). Both
 * products use 2 x 2 blocks of C tiles: every A and B tile loaded feeds two
 * TDPBF16PS.
 *
 * QK: S[32][KB] = Q K^T, per 32 keys: zero, D/32 steps (2 Q tiles, 2 key
 * tiles, 4 products), store. */
typedef struct ap_unit {
  int64_t r0, kb0, mask, buf;
  int fresh; /* the pair's first unit: its P.V starts from zero tiles, not from O in memory */
  int m0, m1; /* the vectors (16 keys) of the block that every row of the pair attends: [m0, m1), in pairs */
  int64_t g0, g1; /* the 32-key groups of the block that some row of the pair attends */
  const uint32_t *kp, *vp;
} ap_unit;

/* C tiles 0-3 += the A pair at a (rows 0-15, then 16-31; rows lda bytes
 * apart) times the B pair at b (xk_amx_dp_b2), tile 5 loaded after the
 * first two products. */
AP_INLINE void ap_dp_2x2(const char *a, int64_t lda, const char *b, int64_t ldb) {
  _tile_loadd(4, a, lda);
  _tile_loadd(6, b, ldb);
  _tile_dpbf16ps(0, 4, 6);
  _tile_loadd(7, b + 64, ldb);
  _tile_dpbf16ps(1, 4, 7);
  _tile_loadd(5, a + 16 * lda, lda);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

/* Only the key groups g0..g1 run: the logits of the others are masked. */
AP_INLINE int64_t ap_qk_steps(const ap_unit *u, int64_t D) { return (u->g1 - u->g0) * (D / 32 + 2); }
AP_INLINE void ap_qk_step(const ap_ws *w, const ap_unit *u, int64_t D, int64_t st) {
  const int64_t per = D / 32 + 2, n0 = (u->g0 + st / per) * 32, k = st % per;
  if (k == 0) {
    xk_amx_zero_c2x2();
  } else if (k == per - 1) {
    xk_amx_store_c2x2(w->s + u->buf * (32 * AP_SS) + n0, AP_SS);
  } else {
    const int64_t c = k - 1;
    const char *b = (const char *)u->kp + (16 * c * AP_KS + n0) * 4;
    const char *q = (const char *)(w->q + u->r0 * ap_qs(D)) + 64 * c;
    ap_dp_2x2(q, ap_qs(D) * 2, b, AP_KS * 4);
  }
}

/* PV: O[32][D] += P V, per 32 head-dim columns: load O (2 x 2 tiles),
 * KB/32 steps (2 P tiles, 2 value tiles, 4 products), store O. */
/* Only the key groups g0..g1: P is exactly 0 in the others, whose products
 * would add exact zeros. */
AP_INLINE int64_t ap_pv_steps(const ap_unit *u, int64_t D) { return D / 32 * (u->g1 - u->g0 + 2); }
AP_INLINE void ap_pv_step(const ap_ws *w, const ap_unit *u, int64_t D, int64_t st) {
  const int64_t per = u->g1 - u->g0 + 2, d0 = st / per * 32, k = st % per;
  float *o = w->o + u->r0 * ap_os(D) + d0;
  if (k == 0) {
    if (u->fresh)
      xk_amx_zero_c2x2();
    else
      xk_amx_load_c2x2(o, ap_os(D));
  } else if (k == per - 1) {
    xk_amx_store_c2x2(o, ap_os(D));
  } else {
    const int64_t kk = u->g0 + k - 1;
    const char *b = (const char *)u->vp + (16 * kk * ap_vs(D) + d0) * 4;
    const char *pp = (const char *)(w->p + u->buf * (32 * AP_PS)) + 64 * kk;
    ap_dp_2x2(pp, AP_PS * 2, b, ap_vs(D) * 4);
  }
}

/* Online softmax of row r over the block's logits S (unscaled); writes bf16 P
 * and records the factor O is to be rescaled by. The max is taken over S and scaled once (rounding is
 * monotonic, so that is the max of the scaled logits); exp(s * scale - m)
 * is 2^(one FMA). */
AP_INLINE void ap_softmax_row(const ap_ws *w, int64_t r, const float *sr, uint16_t *pr, float *alpha_out, int64_t kb0, float scale,
                               int mask) {
  enum { NV = AP_KB / 16 };
  __m512 x[NV];
  for (int v = 0; v < NV; v++) x[v] = _mm512_loadu_ps(sr + 16 * v);
  if (!(scale > 0.0f)) { /* scale the logits first: the max of S is not that of S * scale */
    for (int v = 0; v < NV; v++) x[v] = _mm512_mul_ps(x[v], _mm512_set1_ps(scale));
    scale = 1.0f;
  }
  if (mask) {
    const int64_t lo = w->lo[r] - kb0, hi = w->hi[r] - kb0;
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i vlo = _mm512_set1_epi32((int)ap_max(ap_min(lo, AP_KB), -1));
    const __m512i vhi = _mm512_set1_epi32((int)ap_max(ap_min(hi, AP_KB), -1));
    for (int v = 0; v < NV; v++) {
      const __m512i col = _mm512_add_epi32(iota, _mm512_set1_epi32(16 * v));
      const __mmask16 keep = _mm512_cmpge_epi32_mask(col, vlo) & _mm512_cmplt_epi32_mask(col, vhi);
      x[v] = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), keep, x[v]);
    }
  }
  __m512 mv = x[0];
  for (int v = 1; v < NV; v++) mv = _mm512_max_ps(mv, x[v]);
  const float mt = _mm512_reduce_max_ps(mv) * scale;
  const float m_old = w->m[r], m_new = mt > m_old ? mt : m_old;
  if (m_new == -INFINITY) { /* nothing attended yet */
    memset(pr, 0, AP_KB * 2);
    *alpha_out = 1.0f;
    return;
  }
  const float alpha = m_old == m_new ? 1.0f : expf(m_old - m_new);
  const float L2E = 1.44269504088896341f;
  const __m512 mn = _mm512_set1_ps(-m_new * L2E), sc = _mm512_set1_ps(scale * L2E);
  __m512 sum = _mm512_setzero_ps();
  for (int v = 0; v < NV; v++) {
    const __m512 e = ap_exp2_16(_mm512_fmadd_ps(x[v], sc, mn));
    sum = _mm512_add_ps(sum, e);
    _mm256_storeu_si256((__m256i *)(pr + 16 * v), (__m256i)_mm512_cvtneps_pbh(e));
  }
  w->l[r] = w->l[r] * alpha + _mm512_reduce_add_ps(sum);
  w->m[r] = m_new;
  *alpha_out = alpha;
}

/* O rows r0..r0+31 times the factors a softmax recorded (after the previous
 * P.V into these rows, before the next). */
AP_INLINE void ap_rescale(const ap_ws *w, int64_t r0, const float *alpha, int64_t D) {
  for (int64_t r = 0; r < 32; r++) {
    if (alpha[r] == 1.0f) continue;
    float *o = w->o + (r0 + r) * ap_os(D);
    const __m512 al = _mm512_set1_ps(alpha[r]);
    for (int64_t d = 0; d < D; d += 16) _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), al));
  }
}

/* The same for 16 rows r0.. at once, in two passes, with the row statistics
 * (max, sum, rescale factor) as vectors over the rows (the 16 per-row
 * partial vectors transposed and combined lane-wise): no horizontal
 * reductions, no per-row branches. Pass 1 (per row): the masked max of the
 * row's logits, kept lane-wise. Then ap_sm_mid: the new running max and the
 * factors. Pass 2 (per row): P = 2^(s * scale * log2e - m * log2e), rounded
 * to bf16, and the lane-wise partial sums; ap_sm_end folds them into l.
 * Rows that attend no key so far (max -inf) get P = 0, factor 1. */
typedef struct ap_sm16 {
  __m512 v[16];
  _Alignas(64) float nm[16]; /* -m_new * log2e per row (0 where m_new is -inf) */
  __m512 alpha;
} ap_sm16;

AP_INLINE __mmask16 ap_keep(const ap_ws *w, int64_t r, int64_t kb0, int v) {
  const int64_t lo = w->lo[r] - kb0, hi = w->hi[r] - kb0;
  const __m512i col = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                       _mm512_set1_epi32(16 * v));
  const __m512i vlo = _mm512_set1_epi32((int)ap_max(ap_min(lo, AP_KB), -1));
  const __m512i vhi = _mm512_set1_epi32((int)ap_max(ap_min(hi, AP_KB), -1));
  return _mm512_cmpge_epi32_mask(col, vlo) & _mm512_cmplt_epi32_mask(col, vhi);
}

/* Vectors v0..v1 of the row; those outside [m0, m1) hold keys some row of
 * the pair does not attend and take the row's mask. */
AP_INLINE void ap_sm_pass1(ap_sm16 *t, const ap_ws *w, int64_t r0, int64_t r, const float *sr, int64_t kb0, int m0,
                           int m1, int v0, int v1) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (int v = v0; v < v1; v++) {
    const __m512 x = _mm512_loadu_ps(sr + 16 * v);
    m = v < m0 || v >= m1 ? _mm512_mask_max_ps(m, ap_keep(w, r0 + r, kb0, v), m, x) : _mm512_max_ps(m, x);
  }
  t->v[r] = m;
}

AP_INLINE void ap_sm_mid(ap_sm16 *t, const ap_ws *w, int64_t r0, float scale) {
  xk_transpose16_epi32((__m512i *)t->v);
  __m512 m = t->v[0];
  for (int j = 1; j < 16; j++) m = _mm512_max_ps(m, t->v[j]);
  const float L2E = 1.44269504088896341f;
  const __m512 m_old = _mm512_loadu_ps(w->m + r0), cand = _mm512_max_ps(m_old, _mm512_mul_ps(m, _mm512_set1_ps(scale)));
  /* lazy rescaling (as FlashAttention-4): the reference max moves only when
   * the block's max exceeds it by more than AP_LAZY in log2 units, so P <=
   * 2^AP_LAZY and most blocks leave O unscaled (factor exactly 1); the final
   * 1/l and the LSE use the same reference, so the result is the same
   * softmax. A row's first attended block (m_old = -inf) always sets it. */
  const __mmask16 keep = _mm512_cmp_ps_mask(_mm512_sub_ps(cand, m_old), _mm512_set1_ps(AP_LAZY / L2E), _CMP_LE_OQ);
  const __m512 m_new = _mm512_mask_mov_ps(cand, keep, m_old);
  const __mmask16 same = _mm512_cmp_ps_mask(m_old, m_new, _CMP_EQ_OQ);
  const __mmask16 none = _mm512_cmp_ps_mask(m_new, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ);
  t->alpha = _mm512_mask_mov_ps(ap_exp2_16(_mm512_mul_ps(_mm512_sub_ps(m_old, m_new), _mm512_set1_ps(L2E))),
                                (__mmask16)(same | none), _mm512_set1_ps(1.0f));
  _mm512_storeu_ps(w->m + r0, m_new);
  _mm512_store_ps(t->nm, _mm512_maskz_mov_ps((__mmask16)~none, _mm512_mul_ps(m_new, _mm512_set1_ps(-L2E))));
}

AP_INLINE void ap_sm_pass2(ap_sm16 *t, const ap_ws *w, int64_t r0, int64_t r, const float *sr, uint16_t *pr, int64_t kb0,
                           float scale, int m0, int m1, int v0, int v1) {
  const __m512 sc = _mm512_set1_ps(scale * 1.44269504088896341f), mn = _mm512_set1_ps(t->nm[r]);
  __m512 sum = _mm512_setzero_ps();
  for (int v = v0; v < v1; v += 2) {
    __m512 e[2];
    for (int j = 0; j < 2; j++) {
      const __m512 x = _mm512_loadu_ps(sr + 16 * (v + j));
      if (v < m0 || v >= m1) /* masked logits: P = 0 (they may be stale, unset or -inf) */
        e[j] = _mm512_maskz_mov_ps(ap_keep(w, r0 + r, kb0, v + j), ap_exp2_16(_mm512_fmadd_ps(x, sc, mn)));
      else /* finite logits, <= the running max: no clamp needed */
        e[j] = ap_exp2(_mm512_fmadd_ps(x, sc, mn));
      sum = _mm512_add_ps(sum, e[j]);
    }
    _mm512_storeu_si512((__m512i *)(pr + 16 * v), (__m512i)_mm512_cvtne2ps_pbh(e[1], e[0]));
  }
  t->v[r] = sum;
}

AP_INLINE void ap_sm_end(ap_sm16 *t, const ap_ws *w, int64_t r0, float *alpha_out) {
  xk_transpose16_epi32((__m512i *)t->v);
  __m512 s = t->v[0];
  for (int j = 1; j < 16; j++) s = _mm512_add_ps(s, t->v[j]);
  _mm512_storeu_ps(w->l + r0, _mm512_fmadd_ps(_mm512_loadu_ps(w->l + r0), t->alpha, s));
  _mm512_storeu_ps(alpha_out, t->alpha);
}

/* The single-pass form for 16 rows that all have a reference max already
 * (the common case after a row's first block): pass 2 against it (factor
 * 1, no max pass, no transpose of maxima), then the row sums; when every
 * row's sum is at most AP_SUMMAX (so every P is too; NaN fails the test)
 * they are added to l and 1 is returned, else nothing changes and the
 * caller runs the two passes, which rewrite P. Where the two passes would
 * keep every reference (block max at most AP_LAZY above it, so each sum at
 * most KB * 2^AP_LAZY = AP_SUMMAX) both give the same bits; a block that
 * passes here but would have moved a reference keeps it (P <= 2^16), which
 * changes P's rounding points only (each P keeps its relative rounding). */
AP_INLINE int ap_sm_fast(const ap_sm16 *t, const ap_ws *w, int64_t r0, float *alpha_out) {
  __m512 v[16];
  for (int j = 0; j < 16; j++) v[j] = t->v[j];
  xk_transpose16_epi32((__m512i *)v);
  __m512 s = v[0];
  for (int j = 1; j < 16; j++) s = _mm512_add_ps(s, v[j]);
  if (_mm512_cmp_ps_mask(s, _mm512_set1_ps(AP_SUMMAX), _CMP_LE_OQ) != 0xffff) return 0;
  _mm512_storeu_ps(w->l + r0, _mm512_add_ps(_mm512_loadu_ps(w->l + r0), s));
  _mm512_storeu_ps(alpha_out, _mm512_set1_ps(1.0f));
  return 1;
}

/* ---- the kernel ------------------------------------------------------------------ */

/* The units of an item, in order: row pairs outer, each pair's key blocks
 * in [b0, b1) (clipped to the pair's range) inner. */
typedef struct ap_iter {
  int64_t pair, b, pb1;
} ap_iter;

static int ap_next(const ap_ws *w, int64_t npairs, int64_t b0, int64_t b1, ap_iter *it, ap_unit *u, int64_t base,
                   int64_t D) {
  while (it->b >= it->pb1) {
    if (++it->pair >= npairs) return 0;
    const int64_t lo = w->tlo[it->pair], hi = w->thi[it->pair];
    if (lo >= hi) continue;
    it->b = ap_max(b0, lo / AP_KB);
    it->pb1 = ap_min(b1, (hi + AP_KB - 1) / AP_KB);
  }
  const int64_t p = it->pair, b = it->b++, kb0 = b * AP_KB;
  u->r0 = 32 * p;
  u->kb0 = kb0;
  /* a pair whose rows' union range meets the block runs it (a row that
   * attends none of its keys keeps its state exactly: see the top of the
   * file); masks where some row does not attend the whole block */
  u->mask = w->tlo_max[p] > kb0 || w->thi_min[p] < kb0 + AP_KB;
  {
    const int64_t clo = w->tlo_max[p] - kb0, chi = w->thi_min[p] - kb0;
    u->m0 = clo <= 0 ? 0 : (int)ap_min(AP_KB / 16, (clo + 31) / 32 * 2);
    u->m1 = chi <= 0 ? 0 : (int)ap_min(AP_KB / 16, chi / 32 * 2);
    if (u->m1 < u->m0) u->m0 = u->m1 = 0;
  }
  u->g0 = (ap_max(w->tlo[p], kb0) - kb0) / 32;
  u->g1 = (ap_min(w->thi[p], kb0 + AP_KB) - kb0 + 31) / 32;
  u->fresh = !w->ohas[p];
  w->ohas[p] = 1;
  u->kp = w->kc + (b - base) * ap_kblk(D);
  u->vp = w->vc + (b - base) * ap_vblk(D);
  return 1;
}

static void ap_head(const xk_attn_args *a, ap_ws *w, ap_cache *cache, int64_t seq, int64_t kvh, int64_t i0, int64_t i1) {
  const int64_t G = a->num_heads / a->num_kv_heads, D = a->head_size;
  const int64_t q0 = a->cu_seqlens_q[seq], q_len = a->cu_seqlens_q[seq + 1] - q0, k_len = a->seq_lens[seq];
  const int64_t RQ = (i1 - i0) * G, R32 = ap_up(RQ, 32), NP = R32 / 32;
  const ap_seq sq = {a, a->block_tables + seq * a->block_tables_stride_seq, kvh};
  int64_t LO = INT64_MAX, HI = 0;
  for (int64_t r = 0; r < R32; r++) {
    uint16_t *qd = w->q + r * ap_qs(D);
    w->m[r] = -INFINITY;
    w->l[r] = 0.0f;
    if (r >= RQ) {
      w->lo[r] = w->hi[r] = 0;
      memset(qd, 0, (size_t)D * 2);
      continue;
    }
    const int64_t i = i0 + r / G, h = kvh * G + r % G, pos = i + k_len - q_len;
    int64_t lo, hi;
    xk_attn_key_range(a, pos, k_len, &lo, &hi);
    w->lo[r] = lo;
    w->hi[r] = hi;
    if (lo < hi) {
      LO = ap_min(LO, lo);
      HI = ap_max(HI, hi);
    }
    memcpy(qd, (const uint16_t *)a->query + (q0 + i) * a->q_stride_token + h * a->q_stride_head, (size_t)D * 2);
  }
  /* O is not cleared: a pair's first P.V starts from zero tiles and writes
   * all its rows; the rows of a pair that runs no unit are zero (ohas). */
  for (int64_t p = 0; p < NP; p++) { /* union and intersection of the pair's rows' key ranges */
    int64_t ulo = INT64_MAX, uhi = 0, clo = 0, chi = INT64_MAX;
    for (int64_t r = 32 * p; r < 32 * p + 32; r++) {
      clo = ap_max(clo, w->lo[r]);
      chi = ap_min(chi, w->hi[r]);
      if (w->lo[r] < w->hi[r]) {
        ulo = ap_min(ulo, w->lo[r]);
        uhi = ap_max(uhi, w->hi[r]);
      }
    }
    w->ohas[p] = 0;
    w->tlo[p] = ulo;
    w->thi[p] = uhi;
    w->tlo_max[p] = clo;
    w->thi_min[p] = chi;
  }
  const float scale = a->scale * (a->k_scale ? a->k_scale[seq * a->scale_stride_seq + kvh] : 1.0f);
  const int64_t B0 = LO < HI ? LO / AP_KB : 0, B1 = LO < HI ? (HI + AP_KB - 1) / AP_KB : 0;
  const int whole = (k_len + AP_KB - 1) / AP_KB <= w->NB;
  for (int64_t c0 = B0; c0 < B1; c0 += w->NB) {
    /* the packed blocks [b0, b1) of this chunk, at kc/vc + (b - base) */
    const int64_t b0 = c0, b1 = ap_min(B1, c0 + w->NB), base = whole ? 0 : c0;
    if (whole) { /* pack what the cache lacks */
      if (cache->seq != seq || cache->kvh != kvh || b1 < cache->lo || b0 > cache->hi) {
        cache->seq = seq;
        cache->kvh = kvh;
        cache->lo = cache->hi = b0;
        cache->end = b0 * AP_KB;
      }
      for (int64_t b = b0; b < cache->lo; b++)
        ap_pack_k(&sq, b * AP_KB, AP_KB, D, w->kc + b * ap_kblk(D)),
            ap_pack_v(&sq, b * AP_KB, AP_KB, D, w->vc + b * ap_vblk(D));
      if (HI > cache->end) {
        for (int64_t b = ap_max(cache->end / AP_KB, b0); b < b1; b++) {
          const int64_t n = ap_min(AP_KB, HI - b * AP_KB);
          ap_pack_k(&sq, b * AP_KB, n, D, w->kc + b * ap_kblk(D));
          ap_pack_v(&sq, b * AP_KB, n, D, w->vc + b * ap_vblk(D));
        }
        cache->end = HI;
      }
      cache->lo = ap_min(cache->lo, b0);
      cache->hi = ap_max(cache->hi, b1);
    } else {
      cache->seq = -1;
      for (int64_t b = b0; b < b1; b++) {
        const int64_t n = ap_min(AP_KB, HI - b * AP_KB);
        ap_pack_k(&sq, b * AP_KB, n, D, w->kc + (b - base) * ap_kblk(D));
        ap_pack_v(&sq, b * AP_KB, n, D, w->vc + (b - base) * ap_vblk(D));
      }
    }
    AP_BARRIER();
    /* Software pipeline over the units: unit j's softmax (vector units),
     * its rows interleaved with unit j-1's P.V and unit j+1's Q.K^T (tile
     * unit). S, P and the rescale factors alternate between two buffers;
     * O rows are rescaled by unit j's factors after unit j-1's P.V (which
     * may write the same rows) and before unit j's. */
    for (int64_t e0 = b0; e0 < b1; e0 += AP_CHUNK) { /* key blocks in chunks: a chunk's K/V stays in L2 while every row pair runs it */
    const int64_t e1 = ap_min(b1, e0 + AP_CHUNK);
    ap_iter it = {-1, 0, 0};
    ap_unit u[3];
    int64_t nu = 0;
    int have_prev = 0, have_cur = ap_next(w, NP, e0, e1, &it, &u[1], base, D);
    if (!have_cur) continue;
    u[1].buf = 0;
    for (int64_t st = 0, n = ap_qk_steps(&u[1], D); st < n; st++) ap_qk_step(w, &u[1], D, st);
    while (have_cur) {
      const int have_next = ap_next(w, NP, e0, e1, &it, &u[2], base, D);
      u[2].buf = (u[1].buf + 1) & 1;
      AP_BARRIER();
      const int64_t np = have_prev ? ap_pv_steps(&u[0], D) : 0, total = np + (have_next ? ap_qk_steps(&u[2], D) : 0);
      const ap_unit *c = &u[1];
      const float *sb = w->s + c->buf * (32 * AP_SS);
      uint16_t *pb = w->p + c->buf * (32 * AP_PS);
      float *al = w->alpha + c->buf * 32;
      int64_t st = 0, slot = 0;
#define AP_STEPS()                                              \
  do {                                                          \
    AP_BARRIER();                                               \
    const int64_t until = ap_min(total, total * (++slot) / 64); \
    for (; st < until; st++) {                                  \
      if (st < np)                                              \
        ap_pv_step(w, &u[0], D, st);                            \
      else                                                      \
        ap_qk_step(w, &u[2], D, st - np);                       \
    }                                                           \
  } while (0)
      if (scale > 0.0f) {
        /* only the key groups g0..g1 (the others are masked for every row
         * of the pair, and P.V skips them) */
        const int v0 = (int)(2 * c->g0), v1 = (int)(2 * c->g1);
        for (int64_t h = 0; h < 32; h += 16) {
          ap_sm16 t;
          const int64_t r0 = c->r0 + h;
          const __m512 mo = _mm512_loadu_ps(w->m + r0);
          if (!_mm512_cmp_ps_mask(mo, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ)) {
            _mm512_store_ps(t.nm, _mm512_mul_ps(mo, _mm512_set1_ps(-1.44269504088896341f)));
            for (int64_t r = 0; r < 16; r++) {
              ap_sm_pass2(&t, w, r0, r, sb + (h + r) * AP_SS, pb + (h + r) * AP_PS, c->kb0, scale, c->m0, c->m1, v0, v1);
              AP_STEPS();
              AP_STEPS();
            }
            if (ap_sm_fast(&t, w, r0, al + h)) continue;
          }
          for (int64_t r = 0; r < 16; r++) {
            ap_sm_pass1(&t, w, r0, r, sb + (h + r) * AP_SS, c->kb0, c->m0, c->m1, v0, v1);
            AP_STEPS();
          }
          ap_sm_mid(&t, w, r0, scale);
          for (int64_t r = 0; r < 16; r++) {
            ap_sm_pass2(&t, w, r0, r, sb + (h + r) * AP_SS, pb + (h + r) * AP_PS, c->kb0, scale, c->m0, c->m1, v0, v1);
            AP_STEPS();
          }
          ap_sm_end(&t, w, r0, al + h);
        }
      } else { /* scale <= 0 or NaN: the max of S is not that of S * scale */
        for (int64_t r = 0; r < 32; r++) {
          ap_softmax_row(w, c->r0 + r, sb + r * AP_SS, pb + r * AP_PS, al + r, c->kb0, scale, (int)c->mask);
          AP_STEPS();
          AP_STEPS();
        }
      }
#undef AP_STEPS
      AP_BARRIER();
      if (!c->fresh) ap_rescale(w, c->r0, al, D); /* a fresh pair's O is zero */
      AP_BARRIER();
      u[0] = u[1];
      u[1] = u[2];
      have_prev = 1;
      have_cur = have_next;
      nu++;
    }
    for (int64_t st = 0, n = ap_pv_steps(&u[0], D); st < n; st++) ap_pv_step(w, &u[0], D, st);
    AP_BARRIER();
    }
  }
  const float vsc = a->v_scale ? a->v_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
  for (int64_t r = 0; r < RQ; r++) {
    const int64_t i = i0 + r / G, h = kvh * G + r % G;
    float m = w->m[r], l = w->l[r];
    const float f = xk_attn_row_factor(a, h, &m, &l) * vsc;
    /* o * f rounded to bf16 in one pass (VCVTNE2PS2BF16: round to nearest
     * even, NaN quieted, as xk_convert_row; o * f is never denormal here,
     * FTZ) */
    const float *o = w->o + r * ap_os(D);
    uint16_t *dst = (uint16_t *)a->out + (q0 + i) * a->out_stride_token + h * a->out_stride_head;
    const __m512 vf = _mm512_set1_ps(f);
    if (!w->ohas[r / 32]) { /* O = 0: o * f = +0 (f is finite and >= 0) */
      memset(dst, 0, (size_t)D * 2);
    } else {
      for (int64_t d = 0; d < D; d += 32) {
        const __m512 lo = _mm512_mul_ps(_mm512_loadu_ps(o + d), vf);
        const __m512 hi = _mm512_mul_ps(_mm512_loadu_ps(o + d + 16), vf);
        _mm512_storeu_si512((__m512i *)(dst + d), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
    }
    if (a->lse) a->lse[h * a->lse_stride_head + (q0 + i) * a->lse_stride_token] = xk_attn_lse(m, l);
  }
}

/* Work items of one query (decode rows) stay on the previous table entry
 * (the DRAM-bound decode path); the tile kernel needs several queries per
 * item to repay its K/V repacking. */
static inline int ap_decode_item(const xk_attn_args *a, int64_t b) {
  const int64_t KG = a->kv_group > 0 ? a->kv_group : 1, item = b / (a->num_kv_heads / KG);
  return a->work[3 * item + 2] - a->work[3 * item + 1] <= 1;
}

static void ap_varlen(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end) {
  if (!ap_applies(a)) {
    ap_prev_varlen(a, workspace, begin, end);
    return;
  }
  /* decode items first, in runs of consecutive grid blocks, as the previous entry would take them */
  int64_t tiles = 0;
  for (int64_t b = begin; b < end;) {
    if (!ap_decode_item(a, b)) {
      tiles++;
      b++;
      continue;
    }
    int64_t e = b + 1;
    while (e < end && ap_decode_item(a, e)) e++;
    ap_prev_varlen(a, workspace, b, e);
    b = e;
  }
  if (!tiles) return;
  ap_ws w;
  ap_layout(a, (char *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63), &w);
  const int64_t KG = a->kv_group > 0 ? a->kv_group : 1, NG = a->num_kv_heads / KG;
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | 0x8040u); /* FTZ + DAZ: exp underflow (masked keys) must not take microcode assists */
  xk_amx_config_16x64(); /* per-thread state */
  ap_cache cache = {-1, -1, 0, 0, 0};
  /* kv heads outer: consecutive items of a head re-read the same keys and
   * values, which then stay in L2 (blocks write disjoint outputs; the order
   * does not change any result) */
  for (int64_t kg = 0; kg < NG; kg++) {
    for (int64_t b = begin + ((kg - begin % NG) % NG + NG) % NG; b < end; b += NG) {
      if (ap_decode_item(a, b)) continue;
      const int64_t item = b / NG, kvh0 = (b % NG) * KG;
      const int64_t seq = a->work[3 * item], i0 = a->work[3 * item + 1], i1 = a->work[3 * item + 2];
      for (int64_t kvl = 0; kvl < KG; kvl++) ap_head(a, &w, &cache, seq, kvh0 + kvl, i0, i1);
    }
  }
  _tile_release();
  _mm_setcsr(csr);
}

void xk_attn_prefill_amx_install(xk_kernel_table *t) {
  ap_prev_varlen = t->attn_varlen;
  ap_prev_ws = t->attn_workspace;
  t->attn_varlen = ap_varlen;
  t->attn_workspace = ap_workspace;
}
