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
 *     bf16 caches put S = min(16 / Gp, AD_VS) such (kv head, pass) pairs
 *     side by side in the lanes of one set of C tiles (16 dims x S * Gp):
 *     pair sigma's B holds its P^T in lanes sigma * Gp.. and zeros
 *     elsewhere (P rows are stored S * Gp lanes wide, zero past Gp, and the
 *     tile load starts sigma * Gp lanes early), so each lane keeps its bits
 *     and a set's A tiles of a group are the adjacent S * 2 KiB of a block.
 * Gp is the query-head group G rounded up to a power of two (<= 16); the
 * extra heads are zero. Q.K takes the 16 / Gp adjacent kv heads of a pack
 * into one set of C tiles (16 tokens x 16 lanes, lane k * Gp + h): each kv
 * head's B holds its queries in its own lanes and zeros elsewhere, so a
 * TDPBF16PS adds exact zeros to the other heads' lanes and every logit
 * keeps its bits; the softmax of a pack (ad_softmax_pack) repeats
 * ad_softmax's per-lane operations and order. fp8 caches stage one kv head
 * per step and the steps of a pack's kv heads accumulate into the same C
 * tiles, stored once after the last (AD_FP8PACK; was one store per kv head:
 * Llama 32/8 B=8 ctx=4k 2-10% faster, Qwen 16/2 2-3%, bit-identical).
 * The zeros are exact only for finite keys: an Inf / NaN key element of one
 * kv head inside the context (bf16 Inf / NaN, fp8 e4m3 0x7f / 0xff, e5m2
 * Inf / NaN codes) makes that token's logits of the pack's other kv heads
 * NaN (0 * Inf), so their outputs differ from the reference, which keeps
 * kv heads apart (harness: one NaN e4m3 key code in kv head 1 changed 1362
 * outputs of kv head 0's heads; before AD_FP8PACK only bf16 caches did so).
 * The same holds for the lane slots of bf16 P.V (below): an Inf / NaN value
 * element inside the context also makes the output at the same tile row of
 * the set's other pair NaN (dimension d + 64 or d - 64 of the kv head, or
 * of the next / previous kv head when a set spans two).
 * One unit = one (sequence, partition) and a run of adjacent kv heads, as
 * the avx512 fast path (kv heads of a block are adjacent in memory).
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
 * Tile stores in the streaming loops (measured, B=8 ctx=4096, cold
 * shuffled blocks): each TILESTORED event costs about one DRAM latency of
 * stalled streaming (a K-pass harness, Llama 32/8: 4.5 -> 5.5 ms with one
 * set of 4 C-tile stores per 16 KiB step, to L1 or not). So the P.V
 * accumulators of bf16 caches stay in their tiles over AD_VB = 64 groups
 * (was 4; fp8 keeps 4, AD_VB8), and Q.K stores one C tile set per pack of
 * kv heads (Llama 32/8: 4x fewer stores, Qwen 16/2: 2x).
 *
 * Software prefetch (paged v1/v2): the tile unit has no tile renaming, so
 * an A-tile load waits for the TDPBF16PS that read the tile before and only
 * one or two tile loads are in flight; left to the hardware streams, DRAM
 * idles behind the tile work (cold time ~ hot compute + pattern time). Two
 * cursors walk the cache in the order the tiles (or the fp8 staging) read
 * it and prefetch every line a short distance ahead (ad_kcur: 8 chunks of
 * the step's groups, 12 since session 10; ad_vpf: 4 P.V iterations, fp8
 * only since session 10, bf16 values use ad_vcur). Measured with a standalone
 * harness (B=8, ctx=4096, shuffled blocks, 1 thread): 6-12% faster for
 * bf16, 13-27% for fp8. No better (or slower): prefetching twice as far or
 * half the lines, a second far cursor into L2, touching one line per page
 * of later steps, prefetching the first values into L2 during the softmax,
 * and the same kind of cursor in the varlen decode kernel below (30-40%
 * slower there; its cursor walks whole blocks in memory order instead, see
 * av_vpf). Removing the TDPBF16PS ops from the cold kernel does not
 * change its time; removing the tile loads too does: the loads, not the
 * tile arithmetic, bound it.
 *
 * fp8 (measured with a standalone harness, Qwen 16/2 D=256 and Llama 32/8
 * D=128, B=8, ctx=4096, 1 thread): the widening loop is bound by its cache
 * loads, not by its permutes. Its samples sit on the first consumer of each
 * load; a conversion with one qword permute fewer (bit-identical, 13% faster
 * on L1-resident codes) was 20% SLOWER in the kernel (Llama 13.4 -> 16.1 ms)
 * because the extra permute went in front of the table lookups, on the
 * load-to-store chain. Also no better: L2 prefetch of the key groups 1-4 Q.K
 * steps ahead (T0/T1/T2 hints, whole spans or first lines: 0-15% slower),
 * staging keys 2-3 steps ahead, 2-16 key slots, slots padded off 4 KiB
 * multiples, Q.K tiles before the next step's staging, AD_NB 1/2/4, AD_VLAG
 * 1/3, AD_VB 2/8. Ablations (hot caches): staging alone or the Q.K tiles
 * alone cost a fraction of what both together cost, so the tile loads of
 * staged rows and the staging stores serialise; with cold caches (shuffled
 * blocks) the kernel takes about twice the hot time.
 *
 * Where the bf16 time goes (session 9, harness, Llama 32/8 and Qwen 16/2,
 * B=8 ctx=4096, cold shuffled blocks, 1 thread): perf puts 40-50% of the
 * samples on the prefetch instructions of the two cursors (the V cursor
 * alone 37-40%): they wait for L1 fill buffers, so the kernel streams about
 * 16 lines per memory latency (12.5 GB/s ~ 16 x 64 B / 82 ns). The softmax,
 * the query setup and the output rows take under 1% each. Q.K alone (P.V
 * skipped) reads at 74% of the read probe, P.V alone at 68%. With the
 * harness's cache madvised for 2 MiB pages the kernel is 6% faster (10.64
 * -> 10.02 ms): the page walks of the 4 KiB pages; a cache the engine owns
 * may not have them. A plain-load pattern test reads shuffled 32 KiB blocks
 * one at a time at ~70% of 8 sequential streams and 4 blocks interleaved at
 * ~90%. Measured no better (medians of interleaved ratios, load 3-5): Q.K
 * with a pack's kv heads outer and chunks inner (bit-identical, 1.02-1.11x
 * slower: fewer pages streamed at once); P.V A rows of two value dims (64 B,
 * B block-diagonal over dim parity, C tiles of 2 Gp lanes: half the passes,
 * bit-identical) 1.05-1.17x slower, P.V alone 1.2-1.5x; the V cursor
 * round-robin over the pieces it runs ahead on (1.04-1.07x), two-line T2
 * triggers 8-12 pieces ahead with the T0 cursor 2-3 ahead (1.00-1.03x), T1 /
 * T2 hints for the V cursor (0.96-1.01x), prefetching each unit's first key
 * chunks and value pieces up front (0.99-1.02x; v2's extra cost per unit is
 * not there), fp8 AD_VB8 8 (0.97-1.10x) and 16 (1.0-1.07x).
 *
 * bf16 P.V order (session 10): (kv head, pass, 64 groups) read 2 KiB of
 * 64 blocks in turn, which the L2 streamer cannot follow. With the lane
 * slots a set's A tiles of a group are adjacent (4 KiB), the tiles run
 * group by group and the value cursor (ad_vcur) prefetches them for 8
 * groups round robin, one tile each. Walk harness (the kernel's read
 * orders with tile loads + TDPBF16PS and a T0 cursor, shuffled blocks):
 * the old order 80-90% of a sequential read, 512-byte round robin over 8
 * groups 92-100%, over 2 KiB pieces 82-87%, T2 hints or 2 lines per tile
 * 86-95%. Kernel harness (B=8 ctx=4096, thread CPU time): P.V phase Llama
 * 32/8 14.0 -> 12.4 Mcycles, Qwen 16/2 7.3 -> 6.35, whole kernel 5%
 * faster. AD_VS 4 (Llama: two kv heads per set, 64-byte P rows) gained
 * only 2% (wider P rows in the softmax stores and B loads); AD_VPD 16/40
 * and AD_VW 4/16 within noise. For Q.K the walk harness found nothing
 * better than its current order: steps of 8 blocks, a cursor over a
 * pack's contiguous span (4 or 8 blocks) or kv heads outer read 82-87%
 * where the current order reads 90-96%.
 */
#include <float.h>
#include <math.h>

#include "../../common/convert.h"
#include "../../common/simd512.h"
#include "../../common/tier.h"
#include "../attn_util.h"
#include "amx_tiles.h"

#pragma GCC target("avx512vbmi")

#define AD_INLINE static inline __attribute__((always_inline))
#define AD_FTZ_DAZ 0x8040u
#define AD_LG_BUDGET (1 << 23) /* logits + probabilities of a unit */
#ifndef AD_FP8
#define AD_FP8 1 /* fp8 caches on this path (0: the avx512 fast path) */
#endif
#ifndef AD_VLAG
#define AD_VLAG 2 /* fp8 values: groups staged ahead of their tiles */
#endif
#define AD_VSLOTS 4 /* > AD_VLAG, a power of two */
#ifndef AD_VB
#define AD_VB 64 /* value groups per P.V batch (bf16): its C tiles are spilled once per batch */
#endif
#ifndef AD_VB8
#define AD_VB8 4 /* the same for fp8 caches (tuned with the staging; 64 not shown better) */
#endif
#ifndef AD_FP8PACK
#define AD_FP8PACK 1 /* fp8 caches: Q.K C tiles shared by a pack of kv heads (0: one set per kv head) */
#endif
#if !AD_FP8PACK
#error "ad_softmax writes P rows of Gp lanes as rows of R lanes: only right for Gp = 16 (AD_FP8PACK 1)"
#endif
#ifndef AD_VS
#define AD_VS 2 /* bf16 P.V: most lane slots (pairs) per set */
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
  int64_t ppk, W; /* kv heads per Q.K pack, logit lanes (ppk * Gp) */
  int64_t npass, S, R, pvr; /* 64-dim P.V passes, P.V lane slots, lanes (S * Gp), u32 per kv head of P rows */
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
  g.ppk = g.fp8 && !AD_FP8PACK ? 1 : 16 / g.Gp;
  g.W = g.ppk * g.Gp;
  int64_t off = 0;
  g.qv = off;
  off += ad_al(g.nkmax * (g.D / 2) * g.W * 4);
  g.lg = off;
  off += ad_al(ad_up(g.nkmax, g.ppk) * g.Lp * g.Gp * 4);
  g.npass = (g.D + 63) / 64;
  g.S = ad_min(16 / g.Gp, AD_VS);
  g.R = g.S * g.Gp;
  /* P^T rows of R lanes (the kv head's Gp heads, then zeros) after one zero row */
  g.pvr = (g.Lp / 2 + 1) * g.R;
  g.pv = off;
  off += ad_al(ad_up(g.nkmax, g.ppk) * g.pvr * 4);
  g.ot = off;
  off += ad_al(ad_max(g.nkmax * g.D * g.Gp * 4, (g.nkmax * g.npass + g.S - 1) / g.S * 4 * 16 * g.R * 4));
  g.kst = off;
  off += g.fp8 ? ad_al(2 * AD_NB * 16 * g.D * 2) : 0;
  g.vst = off;
  off += g.fp8 ? ad_al(AD_VSLOTS * 64 * 16 * 2) : 0;
  g.vlast = off;
  off += ad_al((g.S + 1) * g.D * g.tw * 2);
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

/* C tiles 0-3: 16 x Gp f32; A tiles 4-5: 16 rows x abytes; B tiles 6-7: brows x Gp pairs. */
static void ad_config(int64_t gp, int64_t abytes, int64_t brows) {
  const uint16_t cb = (uint16_t)(4 * gp), ab = (uint16_t)abytes;
  const uint8_t br = (uint8_t)brows;
  const uint8_t rows[8] = {16, 16, 16, 16, 16, 16, br, br};
  const uint16_t colsb[8] = {cb, cb, cb, cb, ab, ab, cb, cb};
  xk_amx_load_config(rows, colsb);
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

/* The softmax of ad_softmax for a pack of kv heads whose logits share
 * vectors: lg[Lp][16], lane k * gp + h = head h of the pack's kv head k,
 * one token per vector. Per lane the same operations as ad_softmax on its
 * own kv head (sc16 / sl16 per lane; a lane's sum is accumulated in 16 / gp
 * token-interleaved partial sums and added as ad_fold adds them), so the
 * results are the same bits. Writes P^T pairs to pv0 + k * (Lp / 2) * gp. */
static void ad_softmax_pack(const ad_geom *g, float *lg, uint32_t *pv0, int64_t nkp, int64_t n, int64_t t0, int64_t L,
                            const float *sc16, const float *sl16, float *m16, float *s16) {
  const int64_t gp = g->Gp, vto = 16 / gp, nt = ad_up(n, 32);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 vsc = _mm512_loadu_ps(sc16), vsl = sl16 ? _mm512_loadu_ps(sl16) : _mm512_setzero_ps();
  __m512 vmax = _mm512_set1_ps(-FLT_MAX);
  for (int64_t t = 0; t < nt; t++) {
    __m512 x = _mm512_mul_ps(_mm512_loadu_ps(lg + 16 * t), vsc);
    if (sl16) {
      const __m512 pos = _mm512_cvtepi32_ps(_mm512_set1_epi32((int)(t + t0 - L + 1)));
      x = _mm512_add_ps(x, _mm512_mul_ps(vsl, pos));
    }
    if (t >= n) x = _mm512_set1_ps(-INFINITY);
    _mm512_storeu_ps(lg + 16 * t, x);
    vmax = _mm512_max_ps(x, vmax); /* a NaN logit is skipped (fmaxf, as the reference): MAXPS returns vmax */
  }
  __m512 acc[16];
  for (int64_t j = 0; j < vto; j++) acc[j] = _mm512_setzero_ps();
  for (int64_t t = 0; t < nt; t++) {
    const __m512 x = _mm512_loadu_ps(lg + 16 * t);
    const __mmask16 valid = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
    const __m512 e = _mm512_maskz_mov_ps(valid, xk_exp16(_mm512_sub_ps(x, vmax)));
    _mm512_storeu_ps(lg + 16 * t, e);
    acc[t & (vto - 1)] = _mm512_add_ps(acc[t & (vto - 1)], e);
  }
  /* ad_fold leaves lane j (token residue j) with the sum folded from j, and
   * ad_softmax scales those tokens by its own 1 / sum */
  for (int64_t w = 1; w < vto; w *= 2) {
    __m512 nxt[16];
    for (int64_t j = 0; j < vto; j++) nxt[j] = _mm512_add_ps(acc[j], acc[(j + w) & (vto - 1)]);
    for (int64_t j = 0; j < vto; j++) acc[j] = nxt[j];
  }
  const __m512 vsum = acc[0];
  __m512 inv[16];
  for (int64_t j = 0; j < vto; j++)
    inv[j] = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(acc[j], _mm512_set1_ps(1e-6f)));
  for (int64_t q = 0; q < nt / 2; q++) {
    const __m512i r0 =
        _mm512_cvtepu16_epi32(ad_bf16(_mm512_mul_ps(_mm512_loadu_ps(lg + 32 * q), inv[(2 * q) & (vto - 1)])));
    const __m512i r1 =
        _mm512_cvtepu16_epi32(ad_bf16(_mm512_mul_ps(_mm512_loadu_ps(lg + 32 * q + 16), inv[(2 * q + 1) & (vto - 1)])));
    const __m512i v = _mm512_or_si512(r0, _mm512_slli_epi32(r1, 16));
    for (int64_t k = 0; k < nkp; k++) /* kv head k's lanes to lanes 0..gp-1, zero above */
      _mm512_mask_storeu_epi32(pv0 + k * g->pvr + q * g->R, (__mmask16)((1u << g->R) - 1u),
                          _mm512_maskz_permutexvar_epi32((__mmask16)((1u << gp) - 1u),
                                                         _mm512_add_epi32(lane, _mm512_set1_epi32((int)(k * gp))), v));
  }
  _mm512_storeu_ps(m16, vmax);
  _mm512_storeu_ps(s16, vsum);
}

/* ---- prefetch cursors ------------------------------------------------------------ */

#ifndef AD_PFH
#define AD_PFH _MM_HINT_T0
#endif
#ifndef AD_KPF
#define AD_KPF 12 /* bf16 keys: chunks (of every group of a step) ahead of the tiles (8 before the P.V lane slots) */
#endif
#ifndef AD_KPF8
#define AD_KPF8 0 /* fp8 keys: chunks ahead of the step being staged */
#endif
#ifndef AD_VPF
#define AD_VPF 4 /* values: P.V iterations ahead of the tiles (fp8: of the staging) */
#endif

/* Walks the keys of a unit in the order the Q.K steps read them (step,
 * chunk, group) some distance ahead, prefetching each group's 256-byte
 * piece (16 tokens x 16 bytes) of a chunk: the tile unit waits for each
 * tile load before the next (no tile renaming), so the hardware streams
 * alone leave DRAM idle behind the tile work. */
typedef struct ad_kcur {
  const char *cache;
  const int32_t *bt;
  const int64_t *ks;
  int64_t btb, bs, es, t0, k0, nk, ng16, nsteps, nch, ppk;
  int64_t ps, pc, n, nkp, nsub, cc, kk;
  const char *p[AD_NB];
} ad_kcur;

/* A step is (batch of AD_NB groups, pack of up to ppk kv heads); its
 * sub-chunks run (chunk, kv head of the pack). */
static void ad_kcur_load(ad_kcur *c) {
  c->n = 0;
  c->nsub = 1;
  c->nkp = 1;
  if (c->ps >= c->nsteps) return;
  const int64_t npk = (c->nk + c->ppk - 1) / c->ppk;
  const int64_t gb = c->ps / npk * AD_NB, kv0 = c->ps % npk * c->ppk, nb = ad_min(AD_NB, c->ng16 - gb);
  c->nkp = ad_min(c->ppk, c->nk - kv0);
  c->nsub = c->nch * c->nkp;
  for (int64_t i = 0; i < nb; i++) {
    const int64_t tok = c->t0 + 16 * (gb + i), blk = c->bt[(tok / c->bs) * c->btb];
    c->p[c->n++] = c->cache + (blk * c->ks[0] + (c->k0 + kv0) * c->ks[1] + (tok % c->bs) * c->ks[3]) * c->es;
  }
}

/* Starts the cursor `ahead` sub-chunks past (step 0, sub-chunk 0). */
static void ad_kcur_init(ad_kcur *c, int64_t ahead) {
  c->ps = 0;
  c->pc = ahead;
  ad_kcur_load(c);
  while (c->pc >= c->nsub && c->ps < c->nsteps) {
    c->pc -= c->nsub;
    c->ps++;
    ad_kcur_load(c);
  }
  c->cc = c->pc / c->nkp;
  c->kk = c->pc % c->nkp;
}

/* The four lines of a 256-byte piece (the hint must be a constant). */
#define AD_PREFETCH256(p, hint)          \
  do {                                   \
    _mm_prefetch((p), (hint));           \
    _mm_prefetch((p) + 64, (hint));      \
    _mm_prefetch((p) + 128, (hint));     \
    _mm_prefetch((p) + 192, (hint));     \
  } while (0)

/* Prefetches the cursor's chunk and moves it one chunk on. */
AD_INLINE void ad_kcur_step(ad_kcur *c) {
  const int64_t off = (c->cc * c->ks[2] + c->kk * c->ks[1]) * c->es;
  for (int64_t i = 0; i < c->n; i++) {
    const char *p = c->p[i] + off;
    AD_PREFETCH256(p, AD_PFH);
  }
  if (++c->kk == c->nkp) {
    c->kk = 0;
    c->cc++;
  }
  if (++c->pc == c->nsub) {
    c->pc = 0;
    c->cc = 0;
    c->kk = 0;
    c->ps++;
    ad_kcur_load(c);
  }
}

/* Varlen decode (bf16 cache, the item's kv heads filling whole token rows):
 * walks the value blocks of a step in memory order (256-byte pieces, the
 * step's groups interleaved) and prefetches them into L2 a few lines per
 * Q.K chunk step, so that the values are in flight while the tiles work on
 * the keys and the core on the softmax. */
#ifndef AV_SG
#define AV_SG 8 /* bf16 varlen decode: most 16-token groups per step */
#endif
#ifndef AV_SG8
#define AV_SG8 4 /* fp8 varlen decode: 16-token groups per step (a multiple of 4) */
#endif
#define AV_SGMAX (AV_SG > AV_SG8 ? AV_SG : AV_SG8)
#ifndef AV_SGB
#define AV_SGB (128 << 10) /* bf16 varlen decode: most cache bytes (K or V) of a step */
#endif
typedef struct av_vpf {
  const char *p[AV_SGMAX];
  int64_t ng, span, o, j, per;
} av_vpf;

AD_INLINE void av_vpf_tick(av_vpf *c) {
  for (int64_t k = 0; k < c->per && c->o < c->span; k += 4) {
    const char *p = c->p[c->j] + c->o;
    AD_PREFETCH256(p, _MM_HINT_T2);
    if (++c->j == c->ng) {
      c->j = 0;
      c->o += 256;
    }
  }
}

/* ---- Q.K ---------------------------------------------------------------------- */

/* logits^T of ng (<= 4) groups of 16 tokens: C tile i += A_i(c) . B(c) over
 * nch chunks; A_i(c) at A[i] + c * achunk (16 rows, astride apart), B(c) at
 * qv + c * bstep (brows pair rows of gp). Stores C_i to lg + 16 i gp. */
static void ad_qk(const char *const A[AD_NB], int64_t ng, int64_t nch, int64_t achunk, int64_t astride,
                  const uint32_t *qv, int64_t bstep, int64_t gp, float *lg, ad_kcur *pf, av_vpf *vpf, int64_t nkp,
                  int64_t akv, int64_t qvk, int zero, int store) {
  if (zero) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  const int64_t bstr = 4 * gp;
#define AD_QK_STEP(BT, c, k)                                           \
  do {                                                                 \
    if (pf) ad_kcur_step(pf);                                          \
    if (vpf) av_vpf_tick(vpf);                                         \
    const int64_t ao_ = (c) * achunk + (k) * akv;                      \
    _tile_loadd(BT, qv + (c) * bstep + (k) * qvk, bstr);               \
    _tile_loadd(4, A[0] + ao_, astride);                               \
    _tile_dpbf16ps(0, 4, BT);                                          \
    if (ng > 1) {                                                      \
      _tile_loadd(5, A[1] + ao_, astride);                             \
      _tile_dpbf16ps(1, 5, BT);                                        \
    }                                                                  \
    if (ng > 2) {                                                      \
      _tile_loadd(4, A[2] + ao_, astride);                             \
      _tile_dpbf16ps(2, 4, BT);                                        \
    }                                                                  \
    if (ng > 3) {                                                      \
      _tile_loadd(5, A[3] + ao_, astride);                             \
      _tile_dpbf16ps(3, 5, BT);                                        \
    }                                                                  \
  } while (0)
  if (nkp == 1) {
    int64_t c = 0;
    for (; c + 2 <= nch; c += 2) {
      AD_QK_STEP(6, c, 0);
      AD_QK_STEP(7, c + 1, 0);
    }
    if (c < nch) AD_QK_STEP(6, c, 0);
  } else {
    /* a pack of kv heads: block-diagonal B (each kv head's queries in its
     * own lanes, zero elsewhere), one C tile per group for the whole pack */
    int64_t t = 0;
    for (int64_t c = 0; c < nch; c++)
      for (int64_t k = 0; k < nkp; k++, t++) {
        if (t & 1)
          AD_QK_STEP(7, c, k);
        else
          AD_QK_STEP(6, c, k);
      }
  }
#undef AD_QK_STEP
  if (!store) return;
  _tile_stored(0, lg, bstr);
  if (ng > 1) _tile_stored(1, lg + 16 * gp, bstr);
  if (ng > 2) _tile_stored(2, lg + 32 * gp, bstr);
  if (ng > 3) _tile_stored(3, lg + 48 * gp, bstr);
}

/* ---- P.V ---------------------------------------------------------------------- */

/* Prefetches the values P.V iteration u (of the batch at group jb, nbj
 * groups; u may run into later batches) reads: (kv head, 64-dim pass,
 * group) in the order of ad_paged, 16 rows per 16 dims. */
static void ad_vpf(const xk_attn_args *a, const int32_t *bt, int64_t btb, int64_t t0, int64_t k0, int64_t es,
                   int64_t tw, int64_t nj, int64_t nk, int64_t npass, int64_t jb, int64_t nbj, int64_t u) {
  while (u >= nk * npass * nbj && jb + nbj < nj) {
    u -= nk * npass * nbj;
    jb += nbj;
    nbj = ad_min(es == 1 ? AD_VB8 : AD_VB, nj - jb);
  }
  if (u >= nk * npass * nbj) return;
  const int64_t *vs = a->value_cache_strides, bs = a->block_size, D = a->head_size;
  const int64_t i = u % nbj, s = u / nbj % npass, kvl = u / (nbj * npass);
  const int64_t tok = t0 + (jb + i) * tw, blk = bt[(tok / bs) * btb];
  const char *p = (const char *)a->value_cache + (blk * vs[0] + (k0 + kvl) * vs[1] + tok % bs + 64 * s * vs[2]) * es;
  const int64_t rows = 16 * ad_min(4, (D - 64 * s) / 16), rb = vs[2] * es, rstep = rb < 64 ? 64 / rb : 1;
  for (int64_t r = 0; r < rows; r += rstep) _mm_prefetch(p + r * rb, AD_PFH);
}

/* bf16 P.V in lane slots: the unit's (kv head, 64-dim pass) pairs in
 * order, S = 16 / Gp per set; pair sigma of a set owns C lanes sigma * Gp
 * ... + Gp - 1 (B = its P^T rows, zero in the other lanes), so the four C
 * tiles of a set hold 16 dims x 16 lanes and a set covers S pairs that lie
 * next to each other in a block (kv head, then dims). A set's A tiles of a
 * group: byte offsets from the group's value base. */
#ifndef AD_VW
#define AD_VW 8 /* bf16 P.V: groups whose A tiles the value cursor interleaves */
#endif
#ifndef AD_VPD
#define AD_VPD 24 /* bf16 P.V: value cursor distance in A tiles */
#endif
typedef struct ad_vset {
  int64_t nt;
  int64_t off[64];
} ad_vset;

static void ad_vset_load(ad_vset *v, int64_t set, int64_t S, int64_t npairs, int64_t npass, int64_t D,
                         const int64_t *vs, int64_t es) {
  v->nt = 0;
  for (int64_t p = set * S; p < ad_min(npairs, set * S + S); p++) {
    const int64_t kvl = p / npass, s = p % npass, ns = ad_min(4, (D - 64 * s) / 16);
    for (int64_t j = 0; j < ns; j++) v->off[v->nt++] = (kvl * vs[1] + (64 * s + 16 * j) * vs[2]) * es;
  }
}

/* Walks the A tiles of bf16 P.V (batch, set, window of AD_VW groups) and
 * prefetches their lines, a window's groups interleaved tile by tile (the
 * tiles themselves run group by group): a set's A tiles of a group are
 * adjacent in its block, so the window streams AD_VW pages at a time in
 * memory order, which the L2 streamer follows (harness: 512-byte pieces
 * of 8 blocks round robin 92-100% of a sequential read, 2 KiB pieces
 * 82-87%, the (kv head, pass, 64 groups) order 80-85%). */
typedef struct ad_vcur {
  const char *cache;
  const int32_t *bt;
  const int64_t *vs;
  int64_t btb, bs, es, t0, k0, tw, nj, vbn, S, npairs, npass, D, nsets, rb, rstep;
  int64_t jb, nbj, set, jw, nw, t, i;
  ad_vset st;
  const char *gb[AD_VW];
} ad_vcur;

static const char *ad_vgroup(const ad_vcur *c, int64_t j) {
  const int64_t tok = c->t0 + j * c->tw, blk = c->bt[(tok / c->bs) * c->btb];
  return c->cache + (blk * c->vs[0] + c->k0 * c->vs[1] + tok % c->bs) * c->es;
}

static void ad_vcur_window(ad_vcur *c) {
  c->nw = ad_min(AD_VW, c->jb + c->nbj - c->jw);
  for (int64_t i = 0; i < c->nw; i++) c->gb[i] = ad_vgroup(c, c->jw + i);
}

static void ad_vcur_init(ad_vcur *c) {
  c->jb = c->set = c->jw = c->t = c->i = 0;
  c->nbj = ad_min(c->vbn, c->nj);
  c->rb = c->vs[2] * c->es;
  c->rstep = c->rb < 64 ? 64 / c->rb : 1;
  if (c->nj <= 0) return;
  ad_vset_load(&c->st, 0, c->S, c->npairs, c->npass, c->D, c->vs, c->es);
  ad_vcur_window(c);
}

AD_INLINE void ad_vcur_step(ad_vcur *c) {
  if (c->jb >= c->nj) return;
  const char *p = c->gb[c->i] + c->st.off[c->t];
  for (int64_t r = 0; r < 16; r += c->rstep) _mm_prefetch(p + r * c->rb, AD_PFH);
  if (++c->i < c->nw) return;
  c->i = 0;
  if (++c->t < c->st.nt) return;
  c->t = 0;
  c->jw += c->nw;
  if (c->jw >= c->jb + c->nbj) {
    if (++c->set == c->nsets) {
      c->set = 0;
      c->jb += c->nbj;
      if (c->jb >= c->nj) return;
      c->nbj = ad_min(c->vbn, c->nj - c->jb);
    }
    c->jw = c->jb;
    ad_vset_load(&c->st, c->set, c->S, c->npairs, c->npass, c->D, c->vs, c->es);
  }
  ad_vcur_window(c);
}

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
    /* queries as VNNI B rows: qv[kvl][pair p][lane (kvl % ppk) * gp + h],
     * the other lanes zero (a pack's block-diagonal B) */
    const int64_t W = g.W, ppk = g.ppk, npk = (nk + ppk - 1) / ppk;
    for (int64_t kvl = 0; kvl < nk; kvl++) {
      uint32_t *q = qv + kvl * (D / 2) * W;
      if (ppk > 1) memset(q, 0, (size_t)((D / 2) * W) * 4);
      q += kvl % ppk * gp;
      for (int64_t h = 0; h < gp; h++) {
        const char *src = h < G ? (const char *)a->query +
                                      (seq * a->q_stride_token + ((k0 + kvl) * G + h) * a->q_stride_head) * 2
                                : NULL;
        for (int64_t p = 0; p < D / 2; p++) {
          uint32_t v = 0;
          if (src) memcpy(&v, src + 4 * p, 4);
          q[p * W + h] = v;
        }
      }
    }
    const int64_t ng16 = (n + 15) / 16;
    /* Q.K: steps (batch of AD_NB groups, kv head); fp8 keys are staged one
     * step ahead (a tile load right after the stores that wrote its data
     * waits for them to drain), chunk by chunk across the step's groups so
     * that the loads of its (scattered) blocks are in flight together. */
    if (ng16) ad_config(W, kab, kab / 4);
    /* fp8: steps (batch, kv head), the tiles of a pack's kv heads
     * accumulate in one set of C tiles, stored after its last kv head */
    const int64_t nsteps = (ng16 + AD_NB - 1) / AD_NB * (fp8 ? nk : npk);
#define AD_KSTAGE(st)                                                                                        \
  do {                                                                                                       \
    const int64_t gb_ = (st) / nk * AD_NB, kvl_ = (st) % nk, nb_ = ad_min(AD_NB, ng16 - gb_);                \
    const char *kb_[AD_NB];                                                                                  \
    for (int64_t i_ = 0; i_ < nb_; i_++) {                                                                   \
      const int64_t tok_ = t0 + 16 * (gb_ + i_), blk_ = bt[(tok_ / bs) * btb];                               \
      kb_[i_] = (const char *)a->key_cache + (blk_ * ks[0] + (k0 + kvl_) * ks[1] + (tok_ % bs) * ks[3]);     \
    }                                                                                                        \
    char *d_ = kst + ((st) & 1) * AD_NB * 16 * D * 2;                                                        \
    for (int64_t c_ = 0; c_ < nch; c_++)                                                                     \
      for (int64_t i_ = 0; i_ < nb_; i_++)                                                                   \
        ad_stage_fp8(kb_[i_] + c_ * ks[2], 16, 16, 16, &cv, d_ + i_ * 16 * D * 2 + c_ * 512);                \
  } while (0)
    /* bf16: the tiles read the cache; fp8: the staging of step st + 1
     * runs before the tiles of step st, so the cursor walks a step further */
    ad_kcur kc = {.cache = (const char *)a->key_cache, .bt = bt, .ks = ks, .btb = btb, .bs = bs, .es = es,
                  .t0 = t0, .k0 = k0, .nk = nk, .ng16 = ng16, .nsteps = nsteps, .nch = nch, .ppk = fp8 ? 1 : ppk};
    ad_kcur_init(&kc, fp8 ? 2 * nch + AD_KPF8 : AD_KPF);
    if (fp8 && nsteps) AD_KSTAGE(0);
    for (int64_t st = 0; st < nsteps; st++) {
      const int64_t gb = st / (fp8 ? nk : npk) * AD_NB, nb = ad_min(AD_NB, ng16 - gb);
      const int64_t pk = fp8 ? st % nk / ppk : st % npk, kvl = fp8 ? st % nk : pk * ppk, kq = kvl - pk * ppk;
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
      ad_qk(A, nb, nch, fp8 ? 512 : ks[2] * es, kab, qv + kvl * (D / 2) * W, kab / 4 * W, W,
            lgb + (pk * g.Lp + 16 * gb) * W, &kc, NULL, fp8 ? 1 : ad_min(ppk, nk - kvl), ks[1] * es, (D / 2) * W,
            !fp8 || kq == 0, !fp8 || kq == ppk - 1 || kvl == nk - 1);
    }
#undef AD_KSTAGE
    /* bf16 P.V reads P rows shifted by whole lane slots: the row before a
     * kv head's first is zero (the softmax writes whole rows, zero past Gp) */
    for (int64_t kvl = 0; kvl < nk; kvl++) memset(pvb + kvl * g.pvr, 0, (size_t)g.R * 4);
    /* softmax per kv head (per pack of kv heads when their logits share vectors) */
    for (int64_t pk = 0; ppk > 1 && pk < npk; pk++) {
      const int64_t kv0 = pk * ppk, nkp = ad_min(ppk, nk - kv0);
      _Alignas(64) float sc16[16], sl16[16], m16[16], s16[16];
      for (int64_t l = 0; l < 16; l++) {
        const int64_t kvh = k0 + kv0 + l / gp, h = l % gp;
        const int in = l / gp < nkp;
        sc16[l] = a->scale * (a->k_scale && in ? a->k_scale[seq * a->scale_stride_seq + kvh] : 1.0f);
        sl16[l] = a->alibi_slopes && in && h < G ? a->alibi_slopes[seq * a->alibi_stride_seq + kvh * G + h] : 0.0f;
      }
      if (n > 0) {
        ad_softmax_pack(&g, lgb + pk * g.Lp * 16, pvb + kv0 * g.pvr + g.R, nkp, n, t0, L, sc16,
                        a->alibi_slopes ? sl16 : NULL, m16, s16);
      } else {
        for (int64_t l = 0; l < 16; l++) {
          m16[l] = -FLT_MAX;
          s16[l] = 0.0f;
        }
      }
      if (a->partition_size) {
        for (int64_t k = 0; k < nkp; k++)
          for (int64_t h = 0; h < G; h++) {
            const int64_t o = seq * a->part_strides[0] + ((k0 + kv0 + k) * G + h) * a->part_strides[1] +
                              part * a->part_strides[2];
            a->max_logits[o] = m16[k * gp + h];
            a->exp_sums[o] = s16[k * gp + h];
          }
      }
    }
    for (int64_t kvl = 0; ppk == 1 && kvl < nk; kvl++) {
      const int64_t kvh = k0 + kvl;
      const float ksc = a->k_scale ? a->k_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
      const float *sl = a->alibi_slopes ? a->alibi_slopes + seq * a->alibi_stride_seq + kvh * G : NULL;
      if (n > 0) {
        ad_softmax(a, &g, lgb + kvl * g.Lp * gp, pvb + kvl * g.pvr + g.R, n, t0, L, a->scale * ksc, sl, mx, sm);
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
    /* P.V: batches of AD_VB groups of tw tokens, block-major; each
     * accumulator lives in C tiles over a batch and is spilled to cacc
     * between batches (the sums keep the token order). */
    const int64_t nj = (n + tw - 1) / tw, nlast = n - (nj - 1) * tw;
    const int64_t vbn = fp8 ? AD_VB8 : AD_VB;
    const int64_t S = g.S, R = g.R, npairs = nk * npass, nsets = (npairs + S - 1) / S;
    if (!fp8 && nj) {
      /* bf16: batches of AD_VB groups; per set of S (kv head, pass) pairs
       * one set of C tiles (16 dims x 16 lanes), groups in order, the
       * set's pairs per group (the sums of every lane keep the token order) */
      ad_config(R, 2 * tw, tw / 2);
      ad_vcur vc = {.cache = (const char *)a->value_cache, .bt = bt, .vs = vs, .btb = btb, .bs = bs, .es = es,
                    .t0 = t0, .k0 = k0, .tw = tw, .nj = nj, .vbn = vbn, .S = S, .npairs = npairs,
                    .npass = npass, .D = D, .nsets = nsets};
      ad_vcur_init(&vc);
      for (int64_t k = 0; k < AD_VPD; k++) ad_vcur_step(&vc);
      int64_t bt_ = 0;
      for (int64_t jb = 0; jb < nj; jb += vbn) {
        const int64_t nbj = ad_min(vbn, nj - jb);
        const int last = jb + nbj == nj;
        for (int64_t set = 0; set < nsets; set++) {
          const int64_t p0 = set * S, p1 = ad_min(npairs, p0 + S), kvf = p0 / npass;
          float *o = cacc + set * 4 * 16 * R;
          if (jb == 0) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
          } else {
            _tile_loadd(0, o, 4 * R);
            _tile_loadd(1, o + 16 * R, 4 * R);
            _tile_loadd(2, o + 32 * R, 4 * R);
            _tile_loadd(3, o + 48 * R, 4 * R);
          }
          if (last && nlast < tw) { /* the last group's values of the set's kv heads, zero past the context */
            const __mmask32 m = (__mmask32)((1u << nlast) - 1u);
            for (int64_t kvl = kvf; kvl <= (p1 - 1) / npass; kvl++) {
              const char *vb = ad_vgroup(&vc, nj - 1) + kvl * vs[1] * es;
              uint16_t *dst = (uint16_t *)vlast + (kvl - kvf) * D * tw;
              for (int64_t d = 0; d < D; d++) {
                const __m512i v = _mm512_maskz_loadu_epi16(m, vb + d * vs[2] * es);
                _mm512_mask_storeu_epi16(dst + d * tw, tw == 32 ? ~(__mmask32)0 : 0xFFFF, v);
              }
            }
          }
          for (int64_t i = 0; i < nbj; i++) {
            const int64_t j = jb + i;
            const int stg = last && i == nbj - 1 && nlast < tw;
            const char *gbase = stg ? NULL : ad_vgroup(&vc, j);
            for (int64_t p = p0; p < p1; p++) {
              const int64_t kvl = p / npass, s = p % npass, ns = ad_min(4, (D - 64 * s) / 16);
              const uint32_t *B = pvb + kvl * g.pvr + R + j * (tw / 2) * R - (p - p0) * gp;
              const char *A;
              int64_t astr;
              if (stg) {
                A = vlast + ((kvl - kvf) * D + 64 * s) * tw * 2;
                astr = tw * 2;
              } else {
                A = gbase + (kvl * vs[1] + 64 * s * vs[2]) * es;
                astr = vs[2] * es;
              }
#define AD_PVS_STEP(BT)                     \
  do {                                      \
    _tile_loadd(BT, B, 4 * R);              \
    ad_vcur_step(&vc);                      \
    _tile_loadd(4, A, astr);                \
    _tile_dpbf16ps(0, 4, BT);               \
    if (ns > 1) {                           \
      ad_vcur_step(&vc);                    \
      _tile_loadd(5, A + 16 * astr, astr);  \
      _tile_dpbf16ps(1, 5, BT);             \
    }                                       \
    if (ns > 2) {                           \
      ad_vcur_step(&vc);                    \
      _tile_loadd(4, A + 32 * astr, astr);  \
      _tile_dpbf16ps(2, 4, BT);             \
    }                                       \
    if (ns > 3) {                           \
      ad_vcur_step(&vc);                    \
      _tile_loadd(5, A + 48 * astr, astr);  \
      _tile_dpbf16ps(3, 5, BT);             \
    }                                       \
  } while (0)
              if (bt_++ & 1)
                AD_PVS_STEP(7);
              else
                AD_PVS_STEP(6);
#undef AD_PVS_STEP
            }
          }
          _tile_stored(0, o, 4 * R);
          _tile_stored(1, o + 16 * R, 4 * R);
          _tile_stored(2, o + 32 * R, 4 * R);
          _tile_stored(3, o + 48 * R, 4 * R);
        }
      }
    }
    /* fp8: values widened into staging slots AD_VLAG iterations ahead;
     * batches of AD_VB8 groups, (kv head, 64-dim pass) outer, one set of C
     * tiles each (16 dims x Gp), spilled to cacc between batches */
    if (fp8 && nj) ad_config(gp, 2 * tw, tw / 2);
    for (int64_t jb = 0; fp8 && jb < nj; jb += vbn) {
      const int64_t nbj = ad_min(vbn, nj - jb);
      const char *vb0[AD_VB > AD_VB8 ? AD_VB : AD_VB8];
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
        const uint32_t *pv = pvb + kvl * g.pvr + R + jb * (tw / 2) * R;
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
            const int64_t it = (kvl * npass + s) * nbj + i;
            if (it == 0)
              for (int64_t k = 0; k < AD_VLAG && k < nvit; k++) AD_VSTAGE(k);
            if (it + AD_VLAG < nvit) AD_VSTAGE(it + AD_VLAG);
            const char *A = vst + (it & (AD_VSLOTS - 1)) * 64 * 32;
            const int64_t astr = 32;
            const uint32_t *B = pv + i * (tw / 2) * R;
            ad_vpf(a, bt, btb, t0, k0, es, tw, nj, nk, npass, jb, nbj, it + AD_VLAG + AD_VPF);
#define AD_PV_STEP(BT)                      \
  do {                                      \
    _tile_loadd(BT, B, 4 * R);              \
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
    if (!nj) memset(cacc, 0, (size_t)(fp8 ? nk * D * gp : nsets * 4 * 16 * R) * sizeof(float));
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
        if (fp8) {
          for (int64_t d = 0; d < D; d++) row[d] = ot[d * gp + h] * vsc;
        } else {
          for (int64_t d = 0; d < D; d++) {
            const int64_t p = kvl * npass + d / 64;
            row[d] = cacc[((p / S * 4 + d % 64 / 16) * 16 + d % 16) * R + p % S * gp + h] * vsc;
          }
        }
        xk_convert_row(dst, a->dtype, row, XK_F32, D, 1.0f);
      }
    }
  }
  _tile_release();
  _mm_setcsr(csr);
}

/* ---- flash_attn_varlen_func decode items ------------------------------------------
 *
 * Work items of one query over the flash layout [blocks][bs][Hkv][D] (HND
 * views by strides). One tile shape (16 rows x 64 bytes) serves both
 * products, so the config is loaded once:
 *   Q.K: logits[16 tokens][16 lanes] += K[16 tokens][32 dims] . Qvnni, A =
 *     16 key rows straight from the cache (row stride = the token stride),
 *     B = the queries' 32 dims as 16 pair rows x 16 heads (heads >= G zero).
 *   P.V: the value rows are not in VNNI pair order, so each probability
 *     row is split in two: A row 2h holds (p_h,t, 0) and row 2h+1 (0, p_h,t)
 *     for the 16 tokens t of a group, B = 16 value rows x 32 dims straight
 *     from the cache, and C[2h + e][n] = sum_t p_h,t v_t[2n + e]: out[h] for
 *     the 32 dims of the tile, even dims in row 2h, odd in 2h + 1. Needs
 *     2 G <= 16.
 * Steps of 16 SG keys (SG groups of 16, aligned to 16; SG = 4 for fp8, up
 * to 8 for bf16, see av_layout) with the online softmax
 * of attn_varlen (probabilities exp(s - running max) rounded to bf16, fp32
 * sum of the unrounded ones, accumulator rescaled when the max grows), the
 * same logit order (scale * k_scale, softcap, ALiBi, window/causal mask) and
 * the same sink / LSE epilogue. Groups that straddle the attended range take
 * their values from a zero-padded copy (unused slots may hold NaN). fp8
 * caches are widened to bf16 (exact) into staging rows first, k_scale on the
 * logits and v_scale on the output. Each kv head's arithmetic depends on the
 * call alone (not on kv_group or threads).
 * The softmax runs on the transposed logits of a step: one vector of 16
 * tokens per (head, group), so G heads cost G vectors where the logit rows
 * cost 16 lanes with G used (Llama 32/8, G = 4: the hot kernel 2.8 -> 1.95
 * ms at B=8, ctx=4096); each head's sum of the step is a tree sum of its
 * vectors (the bits may differ from a token-order sum; same tolerance).
 * Memory (bf16, harness, B=8 ctx=4096, 1 thread, cold shuffled blocks): a
 * K/V tile load is 16 token rows of 64 bytes at the token stride, 16 lines
 * in 4 pages (Qwen 16/2 D=256), so the hardware streams follow it worse
 * than the paged layout's 256 contiguous bytes: the step's tile loads alone
 * (no arithmetic) take 5.4 ms where plain loads of the same blocks in memory
 * order take 4.5 ms (Llama 32/8 D=128: 10.0 vs 8.7 ms); the hot kernel takes
 * 0.9 ms (Llama 1.95), the cold one 6.9 (12.1) before the prefetch cursors.
 * No better: other tile orders (block by block: Qwen 10% slower), staging
 * bf16 K/V by vector copies, prefetching each line in tile order, or the
 * first lines of each page, or whole next steps into L1; Q.K packs of 16/G
 * kv heads sharing the C tiles as the paged kernel does (bit-identical,
 * median ratio 0.94-1.06 at B=8 ctx=4k: a step also loads and stores the
 * P.V accumulators per kv head: 4 (Qwen) to 8 (Llama) more tile-store
 * events per step).
 * Step length (session 8, harness, B=8 ctx=4k, interleaved, load 1-5):
 * bf16 steps of 8 groups made Qwen 16/2 D=256 9-11% faster (half the P.V
 * spills); Llama 32/8 D=128 measured 3-9% SLOWER with 8 groups and 24%
 * with 16 (with or without the packs below), Qwen 9% with 16 and 11-16%
 * with 32. The limit looks like the number of 4 KiB pages a step keeps
 * open: a tile load touches 16 token rows (Qwen 1 KiB rows: 4 pages of a
 * 16 KiB block; Llama 2 KiB rows: 8 pages of 32 KiB), and the steps that
 * were fast open at most 32 pages (Qwen 8 blocks, Llama 4). Hence the
 * 128 KiB bound on a step's key rows (AV_SGB). Also no better at the
 * chosen steps: Q.K packs of 16/G kv heads (Qwen 0.98-0.99, Llama
 * 1.03-1.10) with or without P.V tiles of 2 G rows (Llama 0.98-1.08;
 * bit-identical); a software-prefetch cursor over the next step's whole K
 * and V blocks spread over the step (1.39-1.66x slower: every prefetch
 * that misses holds an L1 fill buffer, so the core streams at most about
 * 16 lines per DRAM latency where the L2 streamer alone reaches the probe's
 * bandwidth); prefetching half of the lines (two of each 256-byte piece,
 * the adjacent-line prefetcher to fill the rest: 1.07-1.22x slower);
 * items of 4 or 2 kv heads for Llama (1.35-1.59x slower); fp8 steps of 8
 * groups (AV_SG8; Qwen 0.74-1.14, Llama 0.99-1.08: unresolved under load,
 * left at 4). */

#define AV_NB 4 /* 16-token groups per Q.K tile batch */

static int av_ok(const xk_attn_args *a) {
  const int32_t dt = a->cache_dtype;
  if (a->kind != XK_ATTN_VARLEN || !a->fast || a->layout != XK_LAYOUT_FLASH || a->dtype != XK_BF16) return 0;
  if (!(dt == XK_BF16 || (AD_FP8 && xk_is_fp8(dt)))) return 0;
  if (a->num_kv_heads <= 0 || a->num_heads % a->num_kv_heads) return 0;
  const int64_t G = a->num_heads / a->num_kv_heads, D = a->head_size, bs = a->block_size;
  if (G > 8 || D <= 0 || D % 32 || D > 512 || bs <= 0 || bs % 16) return 0;
  /* fp8 with G <= 4 runs here too: with the step's rows staged across its
   * groups (av_stage_step) Llama 32/8 fp8 B=8 ctx=4k measured ~10% faster
   * than the avx512 fast path (it was 10-20% slower before). */
  return a->key_cache_strides[3] == 1 && a->value_cache_strides[3] == 1;
}

typedef struct av_geom {
  int64_t KG, D, nch, SG;
  int64_t qb, lg, pe, acc, ml, vz, kst, lt, row, total;
} av_geom;

static av_geom av_layout(const xk_attn_args *a) {
  av_geom g;
  g.KG = a->kv_group > 0 ? a->kv_group : 1;
  g.D = a->head_size;
  g.nch = g.D / 32;
  const int fp8 = xk_is_fp8(a->cache_dtype);
  /* groups per step: fp8 AV_NB (its staging slots), bf16 up to AV_SG groups
   * of at most AV_SGB bytes of key rows of all kv heads (Qwen 16/2 D=256: 8,
   * Llama 32/8 D=128: 4), a multiple of AV_NB; fixed by the call's shape, not
   * by kv_group (which depends on the thread count) */
  g.SG = AV_SG8;
  if (!fp8) g.SG = ad_max(AV_NB, ad_min(AV_SG, AV_SGB / (16 * a->num_kv_heads * g.D * 2)) / AV_NB * AV_NB);
  int64_t off = 0;
  g.qb = off; /* [KG][nch][16][16] u32 */
  off += g.KG * g.nch * 1024;
  g.lg = off; /* [KG][SG][16][16] f32 */
  off += g.KG * g.SG * 1024;
  g.pe = off; /* [KG][SG][16][16] u32 */
  off += g.KG * g.SG * 1024;
  g.acc = off; /* [KG][nch][16][16] f32 */
  off += g.KG * g.nch * 1024;
  g.ml = off; /* [KG][2][16] f32: running max and sum per lane */
  off += g.KG * 128;
  g.vz = off; /* fp8: [KG][SG][16][D] widened value rows; bf16: [2][16][D] zero-padded edge groups */
  off += (fp8 ? g.KG * g.SG : 2) * 16 * g.D * 2;
  g.kst = off; /* fp8: [2][KG][SG][16][D] bf16 key rows, a step ahead */
  off += fp8 ? 2 * g.KG * g.SG * 16 * g.D * 2 : 0;
  g.lt = off; /* [8][SG * 16] f32: one kv head's logits, transposed */
  off += 8 * g.SG * 64;
  g.row = off;
  off += ad_al(g.D * 4);
  g.total = off + 64;
  return g;
}

static inline int av_decode_item(const xk_attn_args *a, int64_t b) {
  const int64_t KG = a->kv_group > 0 ? a->kv_group : 1, item = b / (a->num_kv_heads / KG);
  return a->work[3 * item + 2] - a->work[3 * item + 1] == 1;
}

/* fp8 -> bf16 of 32 codes (exact; byte tables of ad_cvt), natural order. */
AD_INLINE __m512i av_fp8x32(__m256i codes, const ad_cvt *t) {
  const __m512i x = _mm512_zextsi256_si512(codes);
  const __m512i lo = _mm512_permutex2var_epi8(t->lo0, x, t->lo1);
  const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(t->hi0, x, t->hi1), x, t->sgn, 0xf8);
  /* bytes 0-31 of lo / hi: interleave to 32 little-endian words */
  const __m512i wl = _mm512_unpacklo_epi8(lo, hi), wh = _mm512_unpackhi_epi8(lo, hi);
  /* wl lanes: L0 = codes 0-7, L1 = 16-23; wh: L0 = 8-15, L1 = 24-31 */
  return _mm512_permutex2var_epi64(wl, _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), wh);
}

/* D cache elements as bf16 at d (fp8 widened exactly). */
AD_INLINE void av_row(const char *s, int64_t D, int fp8, const ad_cvt *t, uint16_t *d) {
  if (!fp8) {
    memcpy(d, s, (size_t)D * 2);
    return;
  }
  int64_t c = 0;
  for (; c + 64 <= D; c += 64) {
    __m512i o0, o1;
    ad_fp8_rows4(_mm512_loadu_si512((const void *)(s + c)), t, &o0, &o1);
    _mm512_storeu_si512((void *)(d + c), o0);
    _mm512_storeu_si512((void *)(d + c + 32), o1);
  }
  if (c < D) _mm512_storeu_si512((void *)(d + c), av_fp8x32(_mm256_loadu_si256((const __m256i *)(s + c)), t));
}

/* Keys or values of nkv kv heads from kvh for one step (groups of 16 tokens
 * from ts, at most ngmax) as bf16 rows at dst[kvl][group][16][D] (token rows
 * outer, groups, then heads inner); tokens outside [lo, hi) are zero and not
 * read. */
static void av_stage_step(const xk_attn_args *a, const int32_t *bt, const char *cache, const int64_t *st, int64_t es,
                          int64_t ts, int64_t ngmax, int64_t lo, int64_t hi, int64_t kvh, int64_t nkv, int fp8,
                          const ad_cvt *t, uint16_t *dst) {
  const int64_t D = a->head_size, bs = a->block_size, ng = ad_min(ngmax, (hi - ts + 15) / 16);
  const char *src[AV_SGMAX];
  int64_t r0[AV_SGMAX], r1[AV_SGMAX];
  for (int64_t j = 0; j < ng; j++) {
    const int64_t tok = ts + 16 * j, blk = bt[(tok / bs) * a->block_tables_stride_block];
    src[j] = cache + (blk * st[0] + (tok % bs) * st[1] + kvh * st[2]) * es;
    r0[j] = ad_max(0, lo - tok);
    r1[j] = ad_min(16, hi - tok);
  }
  /* rows outer, groups inner: the loads of the step's (scattered) blocks
   * are in flight together */
  for (int64_t r = 0; r < 16; r++) {
    for (int64_t j = 0; j < ng; j++) {
      for (int64_t kvl = 0; kvl < nkv; kvl++) {
        uint16_t *d = dst + ((kvl * ngmax + j) * 16 + r) * D;
        if (r < r0[j] || r >= r1[j])
          memset(d, 0, (size_t)D * 2);
        else
          av_row(src[j] + (r * st[1] + kvl * st[2]) * es, D, fp8, t, d);
      }
    }
  }
}

static void av_varlen(const xk_attn_args *a, char *base, int64_t begin, int64_t end) {
  const av_geom g = av_layout(a);
  const int64_t KG = g.KG, NG = a->num_kv_heads / KG, G = a->num_heads / a->num_kv_heads, D = g.D, nch = g.nch;
  const int64_t SG = g.SG, SL = SG * 16; /* groups and tokens per step */
  const int64_t bs = a->block_size, btb = a->block_tables_stride_block;
  const int fp8 = xk_is_fp8(a->cache_dtype);
  const int64_t es = fp8 ? 1 : 2;
  const int64_t *ks = a->key_cache_strides, *vs = a->value_cache_strides;
  /* bf16 items whose kv heads fill whole token rows: the next step's keys
   * are prefetched (av_vpf) during P.V (Qwen 16/2 D=256 and Llama 32/8
   * D=128: 3-4% faster), a step's values during its Q.K where the rows are
   * at most 1 KiB (Qwen, 1 KiB rows: 6-8% faster; Llama, 2 KiB rows: 2-4%
   * slower) */
  const int krow = !fp8 && ks[2] == D && ks[1] == KG * D;
  const int vrow = !fp8 && vs[2] == D && vs[1] == KG * D && vs[1] * es <= 1024;
  uint32_t *qb = (uint32_t *)(base + g.qb), *pe = (uint32_t *)(base + g.pe);
  float *lgb = (float *)(base + g.lg), *accb = (float *)(base + g.acc), *mlb = (float *)(base + g.ml);
  float *row = (float *)(base + g.row), *ltb = (float *)(base + g.lt);
  uint16_t *vz = (uint16_t *)(base + g.vz), *kst = (uint16_t *)(base + g.kst);
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | AD_FTZ_DAZ);
  ad_cvt cv;
  memset(&cv, 0, sizeof cv);
  if (fp8) ad_cvt_init(&cv, a->cache_dtype);
  ad_config(16, 64, 16);
  memset(pe, 0, (size_t)(g.KG * SG * 1024)); /* rows 2G..15 stay zero */
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  const float cap = a->softcap, icap = cap > 0.0f ? 1.0f / cap : 0.0f;
  for (int64_t b = begin; b < end; b++) {
    const int64_t item = b / NG, kvh0 = (b % NG) * KG;
    const int64_t seq = a->work[3 * item], i = a->work[3 * item + 1];
    const int64_t q0 = a->cu_seqlens_q[seq], q_len = a->cu_seqlens_q[seq + 1] - q0, k_len = a->seq_lens[seq];
    const int64_t qtok = q0 + i, pos = i + k_len - q_len;
    int64_t lo, hi;
    xk_attn_key_range(a, pos, k_len, &lo, &hi);
    const int32_t *bt = a->block_tables + seq * a->block_tables_stride_seq;
    /* queries as B tiles: qb[kvl][c][p][h] = dims (32c + 2p, +1) of head h */
    memset(qb, 0, (size_t)(KG * nch * 1024));
    memset(accb, 0, (size_t)(KG * nch * 1024));
    for (int64_t kvl = 0; kvl < KG; kvl++) {
      for (int64_t h = 0; h < G; h++) {
        const uint32_t *src = (const uint32_t *)((const char *)a->query +
                                                 (qtok * a->q_stride_token + ((kvh0 + kvl) * G + h) * a->q_stride_head) * 2);
        uint32_t *q = qb + kvl * nch * 256 + h;
        for (int64_t p = 0; p < D / 2; p++) q[(p / 16) * 256 + (p % 16) * 16] = src[p];
      }
      _mm512_storeu_ps(mlb + kvl * 32, ninf);
      _mm512_storeu_ps(mlb + kvl * 32 + 16, _mm512_setzero_ps());
    }
    const int64_t LOa = lo & ~(int64_t)15, kslot = KG * SG * 16 * D;
    /* fp8: a step's keys are widened (in memory order) one step ahead, its
     * values right after its Q.K: a tile load right after the stores of its
     * data waits for them. */
    if (fp8 && LOa < hi)
      av_stage_step(a, bt, (const char *)a->key_cache, ks, 1, LOa, SG, lo, hi, kvh0, KG, 1, &cv, kst);
    for (int64_t ts = LOa, sn = 0; ts < hi; ts += SL, sn++) {
      const int64_t ng = ad_min(SG, (hi - ts + 15) / 16);
      const char *kp[AV_SGMAX], *vp[AV_SGMAX];
      for (int64_t j = 0; j < ng; j++) {
        const int64_t tok = ts + 16 * j, blk = bt[(tok / bs) * btb];
        kp[j] = (const char *)a->key_cache + (blk * ks[0] + (tok % bs) * ks[1]) * es;
        vp[j] = (const char *)a->value_cache + (blk * vs[0] + (tok % bs) * vs[1]) * es;
      }
      /* bf16 (vrow): the step's values stream into L2 during Q.K (fp8, whose
       * values are staged right after Q.K, measured 2-8% slower with it) */
      const int64_t qkt = KG * nch * ((ng + AD_NB - 1) / AD_NB); /* Q.K chunk steps */
      av_vpf vc = {{0}, ng, 16 * vs[1] * es, 0, 0, (ng * 16 * vs[1] * es / 64 + qkt - 1) / qkt};
      for (int64_t j = 0; j < ng; j++) vc.p[j] = vp[j];
      /* Q.K per batch of AD_NB groups and kv head */
      for (int64_t jb = 0; jb < ng; jb += AD_NB) {
        const int64_t nb = ad_min(AD_NB, ng - jb);
        for (int64_t kvl = 0; kvl < KG; kvl++) {
          const int64_t kvh = kvh0 + kvl;
          const char *A[AD_NB];
          int64_t astr = ks[1] * es;
          for (int64_t j = 0; j < nb; j++)
            A[j] = fp8 ? (const char *)(kst + (sn & 1) * kslot + (kvl * SG + jb + j) * 16 * D)
                       : kp[jb + j] + kvh * ks[2] * es;
          if (fp8) astr = D * 2;
          for (int64_t j = nb; j < AD_NB; j++) A[j] = A[0];
          ad_qk(A, nb, nch, 64, astr, qb + kvl * nch * 256, 256, 16, lgb + (kvl * SG + jb) * 256, NULL,
                vrow ? &vc : NULL, 1, 0, 0, 1, 1);
        }
      }
      if (vrow)
        while (vc.o < vc.span) av_vpf_tick(&vc);
      if (fp8) {
        if (ts + SL < hi)
          av_stage_step(a, bt, (const char *)a->key_cache, ks, 1, ts + SL, SG, lo, hi, kvh0, KG, 1, &cv,
                        kst + ((sn + 1) & 1) * kslot);
        av_stage_step(a, bt, (const char *)a->value_cache, vs, 1, ts, SG, lo, hi, kvh0, KG, 1, &cv, vz);
      }
      /* online softmax per kv head on the transposed logits (a vector per head
       * and group: 16 tokens), G heads instead of 16 lanes */
      for (int64_t kvl = 0; kvl < KG; kvl++) {
        const int64_t kvh = kvh0 + kvl;
        const float ksc = a->k_scale ? a->k_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
        const __m512 vsc = _mm512_set1_ps(a->scale * ksc);
        float sl[8] = {0};
        if (a->alibi_slopes)
          for (int64_t h = 0; h < G; h++) sl[h] = a->alibi_slopes[seq * a->alibi_stride_seq + kvh * G + h];
        const float *lg = lgb + kvl * SG * 256;
        __m512 hmx[8];
        for (int h = 0; h < 8; h++) hmx[h] = ninf;
        const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (int64_t j = 0; j < ng; j++) {
          __m512i r16[16];
          for (int t = 0; t < 16; t++) r16[t] = _mm512_castps_si512(_mm512_loadu_ps(lg + 16 * (16 * j + t)));
          xk_transpose16_epi32(r16);
          const __m512i tok = _mm512_add_epi32(lane, _mm512_set1_epi32((int)(ts + 16 * j)));
          const __mmask16 tv = _mm512_cmpge_epi32_mask(tok, _mm512_set1_epi32((int)lo)) &
                               _mm512_cmplt_epi32_mask(tok, _mm512_set1_epi32((int)hi));
          const __m512 dist = _mm512_abs_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_set1_epi32((int)pos), tok)));
          for (int64_t h = 0; h < G; h++) {
            __m512 x = _mm512_mul_ps(_mm512_castsi512_ps(r16[h]), vsc);
            if (cap > 0.0f) {
              const __m512 y = _mm512_mul_ps(x, _mm512_set1_ps(icap));
              const __m512 e = xk_exp16(_mm512_mul_ps(_mm512_abs_ps(y), _mm512_set1_ps(-2.0f)));
              __m512 th = _mm512_div_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), e), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
              th = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(th),
                                                       _mm512_and_si512(_mm512_castps_si512(y),
                                                                        _mm512_set1_epi32((int)0x80000000u))));
              x = _mm512_mul_ps(th, _mm512_set1_ps(cap));
            }
            if (a->alibi_slopes) x = _mm512_sub_ps(x, _mm512_mul_ps(_mm512_set1_ps(sl[h]), dist));
            x = _mm512_mask_mov_ps(ninf, tv, x);
            _mm512_storeu_ps(ltb + h * SL + 16 * j, x);
            hmx[h] = _mm512_mask_max_ps(hmx[h], tv, x, hmx[h]); /* NaN logits ignored as fmaxf */
          }
        }
        _Alignas(64) float tmp[16];
        for (int h = 0; h < 16; h++) tmp[h] = -INFINITY;
        for (int h = 0; h < 8 && h < G; h++) tmp[h] = _mm512_reduce_max_ps(hmx[h]);
        const __m512 vmax = _mm512_load_ps(tmp);
        float *ml = mlb + kvl * 32;
        const __m512 mold = _mm512_loadu_ps(ml);
        const __m512 mnew = _mm512_max_ps(vmax, mold);
        const __mmask16 live = _mm512_cmp_ps_mask(mnew, ninf, _CMP_NEQ_OQ);
        const __mmask16 had = _mm512_cmp_ps_mask(mold, ninf, _CMP_NEQ_OQ);
        const __m512 alpha = _mm512_maskz_mov_ps(had, xk_exp16(_mm512_sub_ps(mold, mnew)));
        _Alignas(64) float msubs[16];
        _mm512_store_ps(msubs, _mm512_maskz_mov_ps(live, mnew));
        /* exp, fp32 sums, bf16 probabilities as split A rows (2h: (p, 0), 2h + 1: (0, p)) */
        for (int h = 0; h < 16; h++) tmp[h] = 0.0f;
        for (int64_t h = 0; h < G; h++) {
          const __m512 ms = _mm512_set1_ps(msubs[h]);
          const __mmask16 lv = (live >> h) & 1 ? (__mmask16)0xffff : 0;
          __m512 acc = _mm512_setzero_ps();
          for (int64_t j = 0; j < ng; j++) {
            const __m512 x = _mm512_loadu_ps(ltb + h * SL + 16 * j);
            const __mmask16 v = _mm512_cmp_ps_mask(x, ninf, _CMP_NEQ_OQ) & lv;
            const __m512 e = _mm512_maskz_mov_ps(v, xk_exp16(_mm512_sub_ps(x, ms)));
            acc = _mm512_add_ps(acc, e);
            const __m512i u = _mm512_castps_si512(e);
            const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
            const __m512i r = _mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd),
                                               _mm512_set1_epi32((int)0xffff0000u));
            uint32_t *P = pe + (kvl * SG + j) * 256;
            _mm512_storeu_si512((void *)(P + (2 * h) * 16), _mm512_srli_epi32(r, 16));
            _mm512_storeu_si512((void *)(P + (2 * h + 1) * 16), r);
          }
          tmp[h] = _mm512_reduce_add_ps(acc);
        }
        const __m512 vsum = _mm512_load_ps(tmp);
        /* lanes that attended nothing yet keep m = -inf, l = 0 */
        const __m512 lold = _mm512_loadu_ps(ml + 16);
        _mm512_storeu_ps(ml + 16, _mm512_mask_mov_ps(lold, live, _mm512_fmadd_ps(lold, alpha, vsum)));
        _mm512_storeu_ps(ml, mnew);
        /* rescale the accumulator where the max grew (rows 2h, 2h + 1 <- alpha_h) */
        const __mmask16 grow = _mm512_cmp_ps_mask(alpha, _mm512_set1_ps(1.0f), _CMP_NEQ_UQ) & had & live;
        if (grow) {
          _Alignas(64) float al[16];
          _mm512_store_ps(al, alpha);
          float *acc = accb + kvl * nch * 256;
          for (int64_t hh = 0; hh < G; hh++) {
            if (!((grow >> hh) & 1)) continue;
            const __m512 f = _mm512_set1_ps(al[hh]);
            for (int64_t c = 0; c < nch; c++)
              for (int e = 0; e < 2; e++) {
                float *p = acc + c * 256 + (2 * hh + e) * 16;
                _mm512_storeu_ps(p, _mm512_mul_ps(_mm512_loadu_ps(p), f));
              }
          }
        }
      }
      /* bf16 (krow): the next step's keys stream into L2 during P.V */
      av_vpf kc2 = {{0}, 0, 16 * ks[1] * es, 0, 0, 0};
      if (krow && ts + SL < hi) {
        const int64_t tn = ts + SL, ticks = KG * ((nch + 3) / 4) * ng;
        kc2.ng = ad_min(SG, (hi - tn + 15) / 16);
        for (int64_t j = 0; j < kc2.ng; j++) {
          const int64_t tok = tn + 16 * j, blk = bt[(tok / bs) * btb];
          kc2.p[j] = (const char *)a->key_cache + (blk * ks[0] + (tok % bs) * ks[1]) * es;
        }
        kc2.per = (kc2.ng * kc2.span / 64 + ticks - 1) / ticks;
      } else {
        kc2.o = kc2.span;
      }
      /* P.V per kv head and pass of 4 C tiles (128 dims) */
      for (int64_t kvl = 0; kvl < KG; kvl++) {
        const int64_t kvh = kvh0 + kvl;
        const char *B[AV_SGMAX];
        int64_t bstr[AV_SGMAX];
        for (int64_t j = 0; j < ng; j++) {
          const int64_t t0 = ts + 16 * j;
          if (fp8) {
            B[j] = (const char *)(vz + (kvl * SG + j) * 16 * D);
            bstr[j] = D * 2;
          } else if (t0 < lo || t0 + 16 > hi) { /* the first or the last group of the range: slot 0 or 1 */
            uint16_t *z = vz + (t0 < lo ? 0 : 16 * D);
            av_stage_step(a, bt, (const char *)a->value_cache, vs, 2, t0, 1, lo, hi, kvh, 1, 0, &cv, z);
            B[j] = (const char *)z;
            bstr[j] = D * 2;
          } else {
            B[j] = vp[j] + kvh * vs[2] * 2;
            bstr[j] = vs[1] * 2;
          }
        }
        float *acc = accb + kvl * nch * 256;
        const uint32_t *P = pe + kvl * SG * 256;
        for (int64_t c0 = 0; c0 < nch; c0 += 4) {
          const int64_t nt4 = ad_min(4, nch - c0);
          float *o = acc + c0 * 256;
          _tile_loadd(0, o, 64);
          if (nt4 > 1) _tile_loadd(1, o + 256, 64);
          if (nt4 > 2) _tile_loadd(2, o + 512, 64);
          if (nt4 > 3) _tile_loadd(3, o + 768, 64);
          for (int64_t j = 0; j < ng; j++) {
            const char *v = B[j] + c0 * 64;
            const int64_t s = bstr[j];
            av_vpf_tick(&kc2);
            _tile_loadd(4, P + j * 256, 64);
            _tile_loadd(5, v, s);
            _tile_dpbf16ps(0, 4, 5);
            if (nt4 > 1) {
              _tile_loadd(6, v + 64, s);
              _tile_dpbf16ps(1, 4, 6);
            }
            if (nt4 > 2) {
              _tile_loadd(7, v + 128, s);
              _tile_dpbf16ps(2, 4, 7);
            }
            if (nt4 > 3) {
              _tile_loadd(5, v + 192, s);
              _tile_dpbf16ps(3, 4, 5);
            }
          }
          _tile_stored(0, o, 64);
          if (nt4 > 1) _tile_stored(1, o + 256, 64);
          if (nt4 > 2) _tile_stored(2, o + 512, 64);
          if (nt4 > 3) _tile_stored(3, o + 768, 64);
        }
      }
    }
    /* epilogue: sinks, 1 / l, v_scale, LSE */
    for (int64_t kvl = 0; kvl < KG; kvl++) {
      const int64_t kvh = kvh0 + kvl;
      const float vsc = a->v_scale ? a->v_scale[seq * a->scale_stride_seq + kvh] : 1.0f;
      const float *acc = accb + kvl * nch * 256, *ml = mlb + kvl * 32;
      for (int64_t gh = 0; gh < G; gh++) {
        const int64_t h = kvh * G + gh;
        float m = ml[gh], l = ml[16 + gh];
        const float f = xk_attn_row_factor(a, h, &m, &l);
        for (int64_t c = 0; c < nch; c++)
          for (int64_t n = 0; n < 16; n++)
            for (int e = 0; e < 2; e++) row[32 * c + 2 * n + e] = acc[c * 256 + (2 * gh + e) * 16 + n] * (f * vsc);
        xk_convert_row((char *)a->out + (qtok * a->out_stride_token + h * a->out_stride_head) * 2, a->dtype, row,
                       XK_F32, D, 1.0f);
        if (a->lse) a->lse[h * a->lse_stride_head + qtok * a->lse_stride_token] = xk_attn_lse(m, l);
      }
    }
  }
  _tile_release();
  _mm_setcsr(csr);
}

/* ---- entry points (the amx table) ------------------------------------------------ */

int64_t xk_attn_workspace_amx(const xk_attn_args *a) {
  if (ad_paged_ok(a)) return ad_layout(a).total;
  const int64_t prev = xk_kernels_avx512.attn_workspace(a);
  if (av_ok(a)) return ad_max(prev, av_layout(a).total);
  return prev;
}

void xk_attn_paged_amx(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end) {
  if (!ad_paged_ok(a)) {
    xk_kernels_avx512.attn_paged(a, workspace, begin, end);
    return;
  }
  char *base = (char *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
  ad_paged(a, base, begin, end);
}

/* flash_attn_varlen_func: runs of decode items (one query) on the tile
 * kernel above, the rest on the avx512 kernel. */
void xk_attn_varlen_amx(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end) {
  if (!av_ok(a)) {
    xk_kernels_avx512.attn_varlen(a, workspace, begin, end);
    return;
  }
  char *base = (char *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
  for (int64_t b = begin; b < end;) {
    const int dec = av_decode_item(a, b);
    int64_t e = b + 1;
    while (e < end && av_decode_item(a, e) == dec) e++;
    if (dec)
      av_varlen(a, base, b, e);
    else
      xk_kernels_avx512.attn_varlen(a, workspace, b, e);
    b = e;
  }
}
