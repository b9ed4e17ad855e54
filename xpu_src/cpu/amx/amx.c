/*
 * AMX tier (Intel Advanced Matrix Extensions): bf16 x bf16 linear on the tile
 * unit (TDPBF16PS), and a TDPBF16PS peak probe. build.rs compiles this file
 * once, as its own unit, with the avx512 tier's flags plus -mamx-tile
 * -mamx-bf16 (XK_TIER=amx); the amx kernel table is the avx512 table with the
 * entries below swapped in (xk_amx_table_init), and the Rust side only offers
 * the tier once CPUID, XCR0 and the kernel's XTILEDATA permission say the
 * tiles can be used (xk_amx_request_permission).
 *
 * GEMM formulation. AMX computes C[16 x 16] += A[16 x 32] . B where A is
 * row-major bf16 (a row holds 32 consecutive k) and B holds pairs of k
 * interleaved (VNNI: row u, column j = (b[2u][j], b[2u+1][j])). A weight
 * W[N, K] with K contiguous already *is* an A operand: 16 weight rows x 32 k
 * load straight from memory with the row stride, no packing. So the kernel
 * computes the transposed product C^T[n][m] = sum_k W[n][k] x[m][k], with x
 * (the smaller operand for any M < N) packed into VNNI B tiles per k block,
 * and transposes each finished 16 x 16 tile in the epilogue (bias added in
 * fp32, then the one rounding to the output dtype).
 *
 * Blocking. A grid tile is tile_m rows x tile_n columns of out. M > 16: the
 * K loop runs in blocks of AMX_KC (or the whole K when the tile's packed x
 * fits FULLK_BYTES); per block the tile's x rows are packed, and for every 32
 * weight rows (copied to a compact, zero-padded buffer; loaded straight from
 * memory when the tile has at most NXB_DIRECT x blocks) each 32 x rows
 * accumulate a 2x2 block of C tiles over the block's 32-k steps; C tiles are
 * spilled, exactly, to an fp32 buffer between k blocks. M <= 16 (decode, see
 * src/ops/linear_amx.rs): one x tile over the whole K against 4 weight tiles
 * (64 rows) loaded straight from memory, only a tile crossing N and the K
 * tail staged zero-padded.
 *
 * Numerics: fp32 accumulation; each output element sums its k products in
 * 32-k steps in k order (the steps and their alignment depend only on K), so
 * results do not depend on tile shapes, kc or threads. TDPBF16PS treats bf16
 * denormal inputs as zero, flushes denormal results and rounds to nearest
 * even regardless of MXCSR; see the linear tolerance in src/ops/linear.rs.
 */
#define _GNU_SOURCE /* syscall() */
#include <cpuid.h>

#include "../../common/convert.h"
#include "../../common/tier.h"

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define XK_ALWAYS_INLINE static inline __attribute__((always_inline))

/* ---- the avx512 kernels this tier reuses ---------------------------------- */

extern const xk_kernel_table xk_kernels_avx512;
int64_t xk_linear_gemm_plan_avx512(xk_linear_args *a, int64_t threads);
void xk_linear_gemm_avx512(const xk_linear_args *a, int64_t tile_begin, int64_t tile_end, void *workspace);

/* ---- OS support -------------------------------------------------------------- */

int32_t xk_amx_request_permission(void) {
#if defined(__linux__) && defined(__x86_64__)
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27))) return -1; /* OSXSAVE */
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  (void)hi;
  if ((lo & (3u << 17)) != (3u << 17)) return -1; /* XCR0: XTILECFG, XTILEDATA enabled */
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) != 0) return -1;
  unsigned long perm = 0;
  if (syscall(SYS_arch_prctl, 0x1022 /* ARCH_GET_XCOMP_PERM */, &perm) != 0) return -1;
  return (perm >> 18) & 1 ? 0 : -1;
#else
  return -1;
#endif
}

/* ---- tiles ------------------------------------------------------------------- */

typedef struct amx_cfg {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} amx_cfg;

/* Every tile 16 rows x 64 bytes: C (16 x 16 f32), W (16 x 32 bf16), x (16 pairs x 16 rows). */
static void amx_config(void) {
  _Alignas(64) amx_cfg c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int i = 0; i < 8; i++) {
    c.colsb[i] = 64;
    c.rows[i] = 16;
  }
  _tile_loadconfig(&c);
}

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t align64(int64_t b) { return (b + 63) & ~(int64_t)63; }

/* In-register transpose of 16 vectors of 16 32-bit lanes: r[j] lane i <- r[i] lane j. */
XK_ALWAYS_INLINE void transpose16(__m512i r[16]) {
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

static inline __mmask32 kmask(int64_t left) {
  return left >= 32 ? 0xFFFFFFFFu : left <= 0 ? 0u : (__mmask32)((1u << left) - 1u);
}

/* x rows [r0, r0 + 16) (rows past rows_valid zero), k [k0, k0 + kl) as `steps`
 * VNNI B tiles of 1 KiB at dst: tile s, row u, column j = (x[r0 + j][k0 + 32s + 2u], ... + 1);
 * k past kl is zero. */
static void pack_x(const xk_linear_args *a, int64_t r0, int64_t rows_valid, int64_t k0, int64_t kl, int64_t steps,
                   uint32_t *dst) {
  const uint16_t *x = (const uint16_t *)a->x;
  for (int64_t s = 0; s < steps; s++) {
    const __mmask32 km = kmask(kl - 32 * s);
    __m512i r[16];
    for (int j = 0; j < 16; j++)
      r[j] = j < rows_valid ? _mm512_maskz_loadu_epi16(km, x + (r0 + j) * a->x_stride + k0 + 32 * s)
                            : _mm512_setzero_si512();
    transpose16(r);
    for (int u = 0; u < 16; u++) _mm512_storeu_si512(dst + s * 256 + u * 16, r[u]);
  }
}

/* Copies weight rows [n, n + rows) (rows <= 16; the rest zero), k [k0, k0 + kl)
 * into dst[16][ld] bf16, zero past kl up to ld. */
static void stage_w(const xk_linear_args *a, int64_t n, int64_t rows, int64_t k0, int64_t kl, int64_t ld,
                    uint16_t *dst) {
  const uint16_t *w = (const uint16_t *)a->w;
  for (int i = 0; i < 16; i++) {
    for (int64_t k = 0; k < ld; k += 32) {
      const __m512i v = i < rows ? _mm512_maskz_loadu_epi16(kmask(kl - k), w + (n + i) * a->w_stride + k0 + k)
                                 : _mm512_setzero_si512();
      _mm512_storeu_si512(dst + i * ld + k, v);
    }
  }
}

/* f32 -> bf16 bits, round to nearest even, NaN kept quiet (as xk_store16). */
XK_ALWAYS_INLINE __m256i to_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16);
  const __m512i ab = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 is_nan = _mm512_cmpgt_epu32_mask(ab, _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_mov_epi32(r, is_nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);
}

/* One finished C^T tile ct[16 n][16 m]: out[m0 + j][n0 + i] = ct[i][j] + bias[n0 + i]
 * for i < nn, j < mm. */
static void epilogue_tile(const xk_linear_args *a, const float *ct, int64_t n0, int64_t nn, int64_t m0, int64_t mm) {
  if (nn <= 0 || mm <= 0) return;
  __m512i r[16];
  for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512(ct + 16 * i);
  transpose16(r);
  const __mmask16 nm = nn >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nn) - 1u);
  __m512 b = _mm512_setzero_ps();
  if (a->bias) {
    if (a->bias_dtype == XK_F32)
      b = _mm512_maskz_loadu_ps(nm, (const float *)a->bias + n0);
    else
      b = _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(nm, (const uint16_t *)a->bias + n0)), 16));
  }
  for (int j = 0; j < mm; j++) {
    const __m512 v = _mm512_add_ps(_mm512_castsi512_ps(r[j]), b);
    if (a->out_dtype == XK_F32)
      _mm512_mask_storeu_ps((float *)a->out + (m0 + j) * a->out_stride + n0, nm, v);
    else
      _mm256_mask_storeu_epi16((uint16_t *)a->out + (m0 + j) * a->out_stride + n0, nm, to_bf16(v));
  }
}

/* ---- tile blocks ------------------------------------------------------------- */

/* 2 x 2 C tiles (tiles 0-3: C[i][j] = tile 2i + j; i over weight tiles, j over
 * x tiles), weights in tiles 4-5, x in 6-7, over `steps` k-steps. */
XK_ALWAYS_INLINE void steps_2x2(int64_t steps, const char *w0, int64_t ws0, const char *w1, int64_t ws1,
                                const char *x0, const char *x1) {
  for (int64_t s = 0; s < steps; s++) {
    _tile_loadd(4, w0 + 64 * s, ws0);
    _tile_loadd(6, x0 + 1024 * s, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, x1 + 1024 * s, 64);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, w1 + 64 * s, ws1);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
}

/* 4 x 1 C tiles (tiles 0-3, one per weight tile), x in tile 4, weights in 5-7 (5 twice). */
XK_ALWAYS_INLINE void steps_4x1(int64_t steps, const char *const w[4], const int64_t ws[4], const char *x0) {
  for (int64_t s = 0; s < steps; s++) {
    _tile_loadd(4, x0 + 1024 * s, 64);
    _tile_loadd(5, w[0] + 64 * s, ws[0]);
    _tile_dpbf16ps(0, 5, 4);
    _tile_loadd(6, w[1] + 64 * s, ws[1]);
    _tile_dpbf16ps(1, 6, 4);
    _tile_loadd(7, w[2] + 64 * s, ws[2]);
    _tile_dpbf16ps(2, 7, 4);
    _tile_loadd(5, w[3] + 64 * s, ws[3]);
    _tile_dpbf16ps(3, 5, 4);
  }
}

XK_ALWAYS_INLINE void c_begin(int first, const float *cp) {
  if (first) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  } else {
    _tile_loadd(0, cp, 64);
    _tile_loadd(1, cp + 256, 64);
    _tile_loadd(2, cp + 512, 64);
    _tile_loadd(3, cp + 768, 64);
  }
}

XK_ALWAYS_INLINE void c_end(float *cp) {
  _tile_stored(0, cp, 64);
  _tile_stored(1, cp + 256, 64);
  _tile_stored(2, cp + 512, 64);
  _tile_stored(3, cp + 768, 64);
}

/* ---- plan and tiles ---------------------------------------------------------- */

/* Tiles whose packed x (all of K) fits this many bytes keep the whole K in
 * one block: no C spills, weights staged once per 32 rows (M=32..256 up to
 * 1.7x faster than 256-k blocks; 2 MiB of x measured slower). */
#ifndef FULLK_BYTES
#define FULLK_BYTES (1 << 20)
#endif
#ifndef AMX_KC
#define AMX_KC 256 /* K per block when M > 16 (multiple of 32) */
#endif
#ifndef AMX_TILE_M_MAX
#define AMX_TILE_M_MAX 512 /* rows per grid tile (M > 16) */
#endif
#ifndef AMX_TILE_N_MAX
#define AMX_TILE_N_MAX 512 /* columns per grid tile (M > 16) */
#endif
#ifndef AMX_DEC_TILE_N
#define AMX_DEC_TILE_N 1024 /* columns per grid tile (M <= 16) */
#endif
#define AMX_PAIRS 2 /* bf16_pairs value: this file's kernel */
/* Tiles of at most this many 32-row x blocks load weights straight from
 * memory (no compact copy: it is not repaid by 1-2 uses; M=32 1.7x, M=64
 * 1.13x faster, M=128 0.87x). */
#ifndef NXB_DIRECT
#define NXB_DIRECT 2
#endif

static int amx_applies(const xk_linear_args *a) {
  return a->w_kind == XK_WEIGHT_DENSE && a->w_dtype == XK_BF16 && a->x_dtype == XK_BF16 && !a->perm &&
         (a->out_dtype == XK_F32 || a->out_dtype == XK_BF16) &&
         (!a->bias || a->bias_dtype == XK_F32 || a->bias_dtype == XK_BF16);
}

/* Workspace of one grid tile (byte offsets from a 64-byte aligned base). */
typedef struct amx_ws {
  int64_t kc;                      /* k per block (a multiple of 32) */
  int64_t xp, cpart, stage, ctmp;  /* GEMM: x tiles, C spill, weights, finished C [2] */
  int64_t total;
} amx_ws;

static amx_ws ws_layout(const xk_linear_args *a) {
  amx_ws w;
  const int64_t kpad = cdiv(a->k > 0 ? a->k : 1, 32) * 32;
  int64_t off = 0;
  if (a->tile_m <= 16) { /* decode: x tiles of the whole K, two staged weight tiles, the K tail, finished C */
    w.kc = kpad;
    w.xp = off;
    off += align64(kpad * 32);
    w.stage = off;
    off += align64(2 * 16 * kpad * 2) + 4 * 1024;
    w.cpart = 0;
    w.ctmp = off;
    off += 4 * 1024;
  } else {
    w.kc = cdiv(a->tile_m, 32) * 32 * kpad * 2 <= FULLK_BYTES ? kpad : min64(AMX_KC, kpad);
    const int64_t xtiles = cdiv(a->tile_m, 32) * 2, ntiles = cdiv(a->tile_n, 32) * 2;
    w.xp = off;
    off += align64(xtiles * w.kc * 32);
    w.cpart = off;
    off += a->k > w.kc ? align64(xtiles * ntiles * 1024) : 0;
    w.stage = off;
    off += align64(32 * w.kc * 2);
    w.ctmp = off;
    off += 2 * 4 * 1024;
  }
  w.total = off + 64;
  return w;
}

int64_t xk_linear_gemm_plan_amx(xk_linear_args *a, int64_t threads) {
  if (!amx_applies(a)) return xk_linear_gemm_plan_avx512(a, threads);
  a->bf16_pairs = AMX_PAIRS;
  const int64_t want = 2 * (threads > 0 ? threads : 1);
  if (a->m <= 16) {
    a->tile_m = 16;
    const int64_t tn = min64(AMX_DEC_TILE_N, cdiv(cdiv(a->n, want), 64) * 64);
    a->tile_n = tn < 256 ? 256 : tn;
  } else {
    int64_t tm = min64(cdiv(a->m, 32) * 32, AMX_TILE_M_MAX);
    int64_t mt = cdiv(a->m, tm);
    int64_t ntn = cdiv(a->n, AMX_TILE_N_MAX);
    if (mt * ntn < want) {
      const int64_t most = a->n / 128 > 1 ? a->n / 128 : 1; /* keep tiles >= 128 columns */
      const int64_t more = min64(cdiv(want, mt), most);
      if (more > ntn) ntn = more;
      if (mt * ntn < want) mt = cdiv(want, ntn);
    }
    tm = cdiv(cdiv(a->m, mt), 32) * 32;
    a->tile_m = tm < 32 ? 32 : tm;
    a->tile_n = cdiv(cdiv(a->n, ntn), 32) * 32;
  }
  return ws_layout(a).total;
}

/* ---- GEMM tiles (M > 16) --------------------------------------------------------
 *
 * Blocks b = (k block, 32 weight rows), k block major. At each k block the
 * tile's x rows are packed into B tiles; block b's weights are copied to a
 * compact buffer (rows a long stride apart would share L1 sets) and reused,
 * from L1, by every 32-row x block of the tile, whose C tiles are spilled
 * between k blocks. The epilogue of a finished C block runs after the next
 * block's tile instructions are issued, so it overlaps the tile unit's work;
 * so does an L2 prefetch of the next block's weight rows, spread over the x
 * blocks (10-15% faster at M = 512). Staging or packing the next blocks
 * there too measured slower: the loads' L3 misses among the tile
 * instructions stall the tile unit more than they save. */

typedef struct gemm_pipe {
  const xk_linear_args *a;
  int64_t m0, m1, n0, n1, kc, nxb;
  uint32_t *xp;
  uint16_t *stage;
  float *cpart, *ctmp[2];
} gemm_pipe;

/* Stages weight rows [n, n + 32) x k [k0, k0 + kl) as [32][ld] bf16, zero-padded (ld = kl rounded up to 32). */
static void stage_block(const gemm_pipe *p, int64_t n, int64_t k0, int64_t kl) {
  const xk_linear_args *a = p->a;
  const int64_t ld = cdiv(kl, 32) * 32;
  const uint16_t *w = (const uint16_t *)a->w;
  for (int64_t r = 0; r < 32; r++) {
    const int valid = n + r < a->n;
    for (int64_t k = 0; k < ld; k += 32) {
      const __m512i v =
          valid ? _mm512_maskz_loadu_epi16(kmask(kl - k), w + (n + r) * a->w_stride + k0 + k) : _mm512_setzero_si512();
      _mm512_storeu_si512(p->stage + r * ld + k, v);
    }
  }
}

/* Prefetches (into L2) this x block's share of the weight rows the block
 * after (n, k0) stages. */
static void prefetch_next(const gemm_pipe *p, int64_t n, int64_t k0, int64_t xb) {
  const xk_linear_args *a = p->a;
  const int64_t nn = n + 32 < p->n1 ? n + 32 : p->n0, kk = n + 32 < p->n1 ? k0 : k0 + p->kc;
  if (kk >= a->k) return;
  const int64_t bytes = min64(p->kc, a->k - kk) * 2, r1 = 32 * (xb + 1) / p->nxb;
  for (int64_t r = 32 * xb / p->nxb; r < r1 && nn + r < a->n; r++) {
    const char *row = (const char *)((const uint16_t *)a->w + (nn + r) * a->w_stride + kk);
    for (int64_t c = 0; c < bytes; c += 64) _mm_prefetch(row + c, _MM_HINT_T1);
  }
}

static void epilogue_block(const gemm_pipe *p, const float *ct, int64_t n, int64_t m) {
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 2; j++)
      epilogue_tile(p->a, ct + 256 * (2 * i + j), n + 16 * i, min64(16, p->n1 - n - 16 * i), m + 16 * j,
                    min64(16, p->m1 - m - 16 * j));
}

static void gemm_tile(const xk_linear_args *a, int64_t t, char *base, const amx_ws *L) {
  gemm_pipe p;
  p.a = a;
  const int64_t mtiles = cdiv(a->m, a->tile_m);
  p.m0 = (t % mtiles) * a->tile_m;
  p.n0 = (t / mtiles) * a->tile_n;
  p.m1 = min64(a->m, p.m0 + a->tile_m);
  p.n1 = min64(a->n, p.n0 + a->tile_n);
  p.kc = L->kc;
  p.nxb = cdiv(p.m1 - p.m0, 32);
  p.xp = (uint32_t *)(base + L->xp);
  p.stage = (uint16_t *)(base + L->stage);
  p.cpart = (float *)(base + L->cpart);
  p.ctmp[0] = (float *)(base + L->ctmp);
  p.ctmp[1] = p.ctmp[0] + 1024;
  const int64_t kblocks = a->k > 0 ? cdiv(a->k, p.kc) : 1;
  int64_t pending = -1, pend_n = 0, pend_m = 0; /* a finished C block in ctmp[pending & 1] */
  int64_t iter = 0;
  for (int64_t kb = 0; kb < kblocks; kb++) {
    const int64_t k0 = kb * p.kc, kl = a->k > 0 ? min64(p.kc, a->k - k0) : 0, steps = cdiv(kl, 32);
    const int first = kb == 0, last = kb == kblocks - 1;
    for (int64_t j = 0; j < 2 * p.nxb; j++)
      pack_x(a, p.m0 + 16 * j, p.m1 - p.m0 - 16 * j, k0, kl, steps, p.xp + j * steps * 256);
    for (int64_t n = p.n0; n < p.n1; n += 32) {
      const char *w0, *w1;
      int64_t wstr;
      if (p.nxb <= NXB_DIRECT && n + 32 <= a->n && kl % 32 == 0) {
        w0 = (const char *)((const uint16_t *)a->w + n * a->w_stride + k0);
        w1 = w0 + 16 * a->w_stride * 2;
        wstr = a->w_stride * 2;
      } else {
        stage_block(&p, n, k0, kl);
        w0 = (const char *)p.stage;
        w1 = w0 + 16 * steps * 64;
        wstr = steps * 64;
      }
      for (int64_t xb = 0; xb < p.nxb; xb++, iter++) {
        float *cp = p.cpart + (((n - p.n0) / 32) * p.nxb + xb) * 1024;
        c_begin(first, cp);
        const char *x0 = (const char *)(p.xp + 2 * xb * steps * 256), *x1 = x0 + 1024 * steps;
        steps_2x2(steps, w0, wstr, w1, wstr, x0, x1);
        /* The next block's weight rows into L2, a share per x block. */
        prefetch_next(&p, n, k0, xb);
        if (pending >= 0) {
          epilogue_block(&p, p.ctmp[pending & 1], pend_n, pend_m);
          pending = -1;
        }
        if (last) {
          c_end(p.ctmp[iter & 1]);
          pending = iter;
          pend_n = n;
          pend_m = p.m0 + 32 * xb;
        } else {
          c_end(cp);
        }
      }
    }
  }
  if (pending >= 0) epilogue_block(&p, p.ctmp[pending & 1], pend_n, pend_m);
}

/* ---- decode tiles (M <= 16) -------------------------------------------------------
 *
 * One 16-row x block over the whole K (C never spilled); weights are used
 * once, so 4 weight tiles (64 rows) load straight from memory, staging only a
 * tile that crosses N and the K tail. */

static void dec_tile(const xk_linear_args *a, int64_t t, char *base, const amx_ws *L) {
  const int64_t n0 = t * a->tile_n, n1 = min64(a->n, n0 + a->tile_n);
  uint32_t *xp = (uint32_t *)(base + L->xp);
  uint16_t *stage = (uint16_t *)(base + L->stage), *tail = stage + 2 * 16 * L->kc;
  float *ctmp = (float *)(base + L->ctmp);
  const int64_t kl = a->k, steps = cdiv(kl, 32), full = kl / 32;
  pack_x(a, 0, a->m, 0, kl, steps, xp);
  for (int64_t nb = n0; nb < n1; nb += 64) {
    const char *wt[4], *tt[4];
    int64_t wsd[4];
    const int64_t tts[4] = {64, 64, 64, 64};
    for (int i = 0; i < 4; i++) {
      const int64_t n = nb + 16 * i;
      if (n >= a->n) { /* past N: any valid tile, its results are never stored */
        wt[i] = wt[0];
        wsd[i] = wsd[0];
      } else if (n + 16 > a->n) {
        stage_w(a, n, a->n - n, 0, kl, L->kc, stage);
        wt[i] = (const char *)stage;
        wsd[i] = L->kc * 2;
      } else {
        wt[i] = (const char *)((const uint16_t *)a->w + n * a->w_stride);
        wsd[i] = a->w_stride * 2;
      }
    }
    if (full < steps) { /* K tail: the last step's weights, zero-padded */
      for (int i = 0; i < 4; i++) {
        const int64_t n = nb + 16 * i;
        stage_w(a, n, n < a->n ? min64(16, a->n - n) : 0, 32 * full, kl - 32 * full, 32, tail + 512 * i);
        tt[i] = (const char *)(tail + 512 * i);
      }
    }
    c_begin(1, NULL);
    steps_4x1(full, wt, wsd, (const char *)xp);
    if (full < steps) steps_4x1(1, tt, tts, (const char *)(xp + 256 * full));
    c_end(ctmp);
    for (int i = 0; i < 4; i++) {
      const int64_t n = nb + 16 * i;
      epilogue_tile(a, ctmp + 256 * i, n, min64(16, n1 - n), 0, a->m);
    }
  }
}

void xk_linear_gemm_amx(const xk_linear_args *a, int64_t tile_begin, int64_t tile_end, void *workspace) {
  if (a->bf16_pairs != AMX_PAIRS) {
    xk_linear_gemm_avx512(a, tile_begin, tile_end, workspace);
    return;
  }
  const amx_ws L = ws_layout(a);
  char *base = (char *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
  amx_config(); /* tile configuration is per-thread state */
  for (int64_t t = tile_begin; t < tile_end; t++) {
    if (a->tile_m <= 16)
      dec_tile(a, t, base, &L);
    else
      gemm_tile(a, t, base, &L);
  }
  _tile_release();
}

/* ---- probe ------------------------------------------------------------------- */

/* bf16 tile peak: independent TDPBF16PS chains on 4 accumulator tiles. */
double xk_probe_bf16_amx(int64_t iters, xk_probe_result *sink) {
  _Alignas(64) uint16_t ab[16 * 32];
  _Alignas(64) float c[256];
  for (int i = 0; i < 16 * 32; i++) ab[i] = (uint16_t)(i & 1 ? 0x3380 : 0x3f80); /* 1, 2^-24 */
  amx_config();
  _tile_loadd(4, ab, 64);
  _tile_loadd(5, ab, 64);
  _tile_loadd(6, ab, 64);
  _tile_loadd(7, ab, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t it = 0; it < iters; it++) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  double s = 0;
  _tile_stored(0, c, 64);
  s += c[0];
  _tile_stored(3, c, 64);
  s += c[255];
  _tile_release();
  sink->value = s;
  return 4.0 * 2.0 * 16 * 16 * 32 * (double)iters;
}

/* ---- the table --------------------------------------------------------------- */

int64_t xk_attn_workspace_amx(const xk_attn_args *a);                              /* attn_decode.c */
void xk_attn_paged_amx(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end); /* attn_decode.c */
void xk_attn_varlen_amx(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end); /* attn_decode.c */

void xk_amx_table_init(xk_kernel_table *t) {
  *t = xk_kernels_avx512;
  t->name = "amx";
  t->linear_gemm_plan = xk_linear_gemm_plan_amx;
  t->linear_gemm = xk_linear_gemm_amx;
  t->probe_bf16 = xk_probe_bf16_amx;
  t->attn_workspace = xk_attn_workspace_amx;
  t->attn_paged = xk_attn_paged_amx;
  t->attn_varlen = xk_attn_varlen_amx;
}
