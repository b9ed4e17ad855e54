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
 * fp32, then the one rounding to the output dtype). The pre-packed path
 * (XK_WEIGHT_PACKED_AMX, below) instead stores the weights as VNNI B tiles
 * once and computes C itself, x as row-major A tiles.
 *
 * Blocking. A grid tile is tile_m rows x tile_n columns of out. M > 16: the
 * K loop runs in blocks of AMX_KC (or the whole K when the tile's packed x
 * fits FULLK_BYTES); per block the tile's x rows are packed, and for every 32
 * weight rows (copied to a compact, zero-padded buffer; loaded straight from
 * memory when the tile has at most NXB_DIRECT x blocks) each 32 x rows
 * accumulate a 2x2 block of C tiles over the block's 32-k steps; C tiles are
 * spilled, exactly, to an fp32 buffer between k blocks. N <= 64 with M > 16
 * runs nw_tile instead (narrow weights: C itself, x rows as A tiles straight
 * from x, the weights packed per call). M <= 16 (decode, see
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
#include "../../common/simd512.h"
#include "../../common/tier.h"
#include "amx_tiles.h"

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define XK_ALWAYS_INLINE static inline __attribute__((always_inline))

/* ---- the avx512 kernels this tier reuses ---------------------------------- */

extern const xk_kernel_table xk_kernels_avx512;
int64_t xk_linear_gemm_plan_avx512(xk_linear_args *a, int64_t threads);
void xk_linear_gemm_avx512(const xk_linear_args *a, int64_t tile_begin, int64_t tile_end, void *workspace);
void xk_linear_pack_w_avx512(const xk_linear_args *a, int64_t begin, int64_t end, void *dst);

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

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t align64(int64_t b) { return (b + 63) & ~(int64_t)63; }

static inline __mmask32 kmask(int64_t left) {
  return left >= 32 ? 0xFFFFFFFFu : left <= 0 ? 0u : (__mmask32)((1u << left) - 1u);
}

/* Rows [r0, r0 + 16) of src (bf16, row stride `stride` elements; rows past
 * rows_valid zero), k [k0, k0 + kl) as `steps` VNNI B tiles of 1 KiB, tile s
 * at dst + s * tstride (uint32 units): row u, column j = (src[r0 + j][k0 +
 * 32s + 2u], ... + 1); k past kl is zero. */
static void pack_vnni(const uint16_t *src, int64_t stride, int64_t r0, int64_t rows_valid, int64_t k0, int64_t kl,
                      int64_t steps, uint32_t *dst, int64_t tstride) {
  for (int64_t s = 0; s < steps; s++) {
    const __mmask32 km = kmask(kl - 32 * s);
    __m512i r[16];
    for (int j = 0; j < 16; j++)
      r[j] = j < rows_valid ? _mm512_maskz_loadu_epi16(km, src + (r0 + j) * stride + k0 + 32 * s)
                            : _mm512_setzero_si512();
    xk_transpose16_epi32(r);
    for (int u = 0; u < 16; u++) _mm512_storeu_si512(dst + s * tstride + u * 16, r[u]);
  }
}

/* x rows as VNNI B tiles (see pack_vnni). */
static void pack_x(const xk_linear_args *a, int64_t r0, int64_t rows_valid, int64_t k0, int64_t kl, int64_t steps,
                   uint32_t *dst, int64_t tstride) {
  pack_vnni((const uint16_t *)a->x, a->x_stride, r0, rows_valid, k0, kl, steps, dst, tstride);
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

/* Outputs of at least this many bytes are written with streaming stores
 * where a row of the block is whole and 64-byte aligned: ordinary stores
 * that miss the caches stall the tile loads behind them (M = 512, K = N =
 * 4096: the epilogue took ~10% of the GEMM; with streaming stores ~1%). A
 * smaller out is likely read again from cache, so it is stored normally. */
#ifndef PK_NT_MIN
#define PK_NT_MIN (4 << 20)
#endif

static inline int out_nt(const xk_linear_args *a) {
  return a->m * a->n * (a->out_dtype == XK_F32 ? 4 : 2) >= PK_NT_MIN;
}

/* bias[n .. n + 32) (columns past nm zero) as two f32 vectors. */
XK_ALWAYS_INLINE void bias32(const xk_linear_args *a, int64_t n, __mmask32 nm, __m512 *b0, __m512 *b1) {
  *b0 = _mm512_setzero_ps();
  *b1 = _mm512_setzero_ps();
  if (!a->bias) return;
  if (a->bias_dtype == XK_F32) {
    *b0 = _mm512_maskz_loadu_ps((__mmask16)nm, (const float *)a->bias + n);
    *b1 = _mm512_maskz_loadu_ps((__mmask16)(nm >> 16), (const float *)a->bias + n + 16);
  } else {
    const __m512i bb = _mm512_maskz_loadu_epi16(nm, (const uint16_t *)a->bias + n);
    *b0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(bb)), 16));
    *b1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(bb, 1)), 16));
  }
}

/* out[m][n .. n + nn) = (v0, v1) (nn <= 32 columns, nm their mask), one
 * 64-byte store (bf16); streaming when `nt` and the row is whole and
 * aligned (the caller fences). */
XK_ALWAYS_INLINE void store_row32(const xk_linear_args *a, int64_t m, int64_t n, int64_t nn, __mmask32 nm, __m512 v0,
                                  __m512 v1, int nt) {
  const int64_t row = m * a->out_stride + n;
  if (a->out_dtype == XK_F32) {
    float *o = (float *)a->out + row;
    if (nt && nn == 32 && ((uintptr_t)o & 63) == 0) {
      _mm512_stream_ps(o, v0);
      _mm512_stream_ps(o + 16, v1);
    } else {
      _mm512_mask_storeu_ps(o, (__mmask16)nm, v0);
      _mm512_mask_storeu_ps(o + 16, (__mmask16)(nm >> 16), v1);
    }
  } else {
    uint16_t *o = (uint16_t *)a->out + row;
    const __m512i h = _mm512_inserti64x4(_mm512_castsi256_si512(to_bf16(v0)), to_bf16(v1), 1);
    if (nt && nn == 32 && ((uintptr_t)o & 63) == 0)
      _mm512_stream_si512((void *)o, h);
    else
      _mm512_mask_storeu_epi16(o, nm, h);
  }
}

/* One finished C^T tile ct[16 n][16 m]: out[m0 + j][n0 + i] = ct[i][j] + bias[n0 + i]
 * for i < nn, j < mm. */
static void epilogue_tile(const xk_linear_args *a, const float *ct, int64_t n0, int64_t nn, int64_t m0, int64_t mm) {
  if (nn <= 0 || mm <= 0) return;
  __m512i r[16];
  for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512(ct + 16 * i);
  xk_transpose16_epi32(r);
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
 * x tiles), weights in tiles 4-5, x in 6-7, over `steps` k-steps; also
 * prefetches into L2, spread evenly over the steps, `lines` lines of rows
 * `row` lines long, `rstride` bytes apart, from pf. */
XK_ALWAYS_INLINE void steps_2x2_pf(int64_t steps, const char *w0, int64_t ws0, const char *w1, int64_t ws1,
                                   const char *x0, const char *x1, const char *pf, int64_t lines, int64_t row,
                                   int64_t rstride) {
  const int64_t per = cdiv(lines, steps > 0 ? steps : 1);
  for (int64_t s = 0; s < steps; s++) {
    for (int64_t g = s * per; g < (s + 1) * per && g < lines; g++)
      _mm_prefetch(pf + (g / row) * rstride + 64 * (g % row), _MM_HINT_T1);
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
#define AMX_PAIRS 2  /* bf16_pairs value: this file's kernel */
#define AMX_NARROW 3 /* bf16_pairs value: the narrow-weight kernel (N <= NW_N) */
/* Narrow weights (see nw_tile): at most NW_N columns, k blocks of NW_KC. */
#define NW_N 64
#ifndef NW_KC
#define NW_KC 256
#endif
#ifndef NW_PFD
#define NW_PFD 4 /* x blocks ahead that the x prefetch runs (k blocks) */
#endif
#ifndef NW_PFD_WHOLE
#define NW_PFD_WHOLE 2 /* the same over the whole K */
#endif
#ifndef NW_WHOLE_MIN
#define NW_WHOLE_MIN (1 << 20) /* a tile's x bytes from which its blocks run over the whole K */
#endif
#ifndef NW_TILE_M_MAX
#define NW_TILE_M_MAX 2048 /* rows per grid tile: 512 KiB of C spill */
#endif
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

static int64_t pk_plan(xk_linear_args *a, int64_t threads);

/* The tile grid of a GEMM: M <= dec_rows runs decode tiles of dec_rows rows
 * over wide column spans; larger M splits rows and columns so every thread
 * gets about two tiles (columns first, keeping tiles >= 128 columns). */
static void plan_tiles(xk_linear_args *a, int64_t threads, int64_t dec_rows) {
  const int64_t want = 2 * (threads > 0 ? threads : 1);
  if (a->m <= dec_rows) {
    a->tile_m = dec_rows;
    const int64_t tn = min64(AMX_DEC_TILE_N, cdiv(cdiv(a->n, want), 64) * 64);
    a->tile_n = tn < 256 ? 256 : tn;
    return;
  }
  int64_t tm = min64(cdiv(a->m, 32) * 32, AMX_TILE_M_MAX);
  int64_t mt = cdiv(a->m, tm);
  int64_t ntn = cdiv(a->n, AMX_TILE_N_MAX);
  if (mt * ntn < want) {
    const int64_t most = a->n / 128 > 1 ? a->n / 128 : 1;
    const int64_t more = min64(cdiv(want, mt), most);
    if (more > ntn) ntn = more;
    if (mt * ntn < want) mt = cdiv(want, ntn);
  }
  tm = cdiv(cdiv(a->m, mt), 32) * 32;
  a->tile_m = tm < 32 ? 32 : tm;
  a->tile_n = cdiv(cdiv(a->n, ntn), 32) * 32;
}

static int64_t nw_plan(xk_linear_args *a, int64_t threads);

int64_t xk_linear_gemm_plan_amx(xk_linear_args *a, int64_t threads) {
  if (a->w_kind == XK_WEIGHT_PACKED_AMX || a->w_kind == XK_WEIGHT_PACKED_AMX3) return pk_plan(a, threads);
  if (!amx_applies(a)) return xk_linear_gemm_plan_avx512(a, threads);
  if (a->m > 16 && a->n <= NW_N) return nw_plan(a, threads);
  a->bf16_pairs = AMX_PAIRS;
  plan_tiles(a, threads, 16);
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

/* This x block's share of the weight rows the block after (n, k0) stages,
 * for steps_2x2_pf: rows from *pf, `row` lines each; returns the lines. */
static int64_t prefetch_share(const gemm_pipe *p, int64_t n, int64_t k0, int64_t xb, const char **pf, int64_t *row) {
  const xk_linear_args *a = p->a;
  const int64_t nn = n + 32 < p->n1 ? n + 32 : p->n0, kk = n + 32 < p->n1 ? k0 : k0 + p->kc;
  if (kk >= a->k) return 0;
  const int64_t r0 = 32 * xb / p->nxb, r1 = min64(32 * (xb + 1) / p->nxb, a->n - nn);
  if (r1 <= r0) return 0;
  *pf = (const char *)((const uint16_t *)a->w + (nn + r0) * a->w_stride + kk);
  *row = cdiv(min64(p->kc, a->k - kk) * 2, 64);
  return (r1 - r0) * *row;
}

/* A finished 2 x 2 block of C^T tiles (tile 2i + j: weight rows n + 16i..,
 * x rows m + 16j..): transposed, then each out row's 32 columns in one
 * 64-byte store (bf16), streaming for a large out (the caller fences). */
static void epilogue_block(const gemm_pipe *p, const float *ct, int64_t n, int64_t m, int nt) {
  const xk_linear_args *a = p->a;
  const int64_t nn = min64(32, p->n1 - n);
  if (nn <= 0) return;
  const __mmask32 nm = kmask(nn);
  __m512 b0, b1;
  bias32(a, n, nm, &b0, &b1);
  for (int j = 0; j < 2; j++) {
    const int64_t mm = min64(16, p->m1 - m - 16 * j);
    if (mm <= 0) break;
    __m512i r0[16], r1[16];
    for (int i = 0; i < 16; i++) {
      r0[i] = _mm512_loadu_si512(ct + 256 * j + 16 * i);
      r1[i] = _mm512_loadu_si512(ct + 256 * (2 + j) + 16 * i);
    }
    xk_transpose16_epi32(r0);
    xk_transpose16_epi32(r1);
    for (int64_t r = 0; r < mm; r++)
      store_row32(a, m + 16 * j + r, n, nn, nm, _mm512_add_ps(_mm512_castsi512_ps(r0[r]), b0),
                  _mm512_add_ps(_mm512_castsi512_ps(r1[r]), b1), nt);
  }
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
  const int nt = out_nt(a);
  int64_t iter = 0;
  for (int64_t kb = 0; kb < kblocks; kb++) {
    const int64_t k0 = kb * p.kc, kl = a->k > 0 ? min64(p.kc, a->k - k0) : 0, steps = cdiv(kl, 32);
    const int first = kb == 0, last = kb == kblocks - 1;
    for (int64_t j = 0; j < 2 * p.nxb; j++)
      pack_x(a, p.m0 + 16 * j, p.m1 - p.m0 - 16 * j, k0, kl, steps, p.xp + j * steps * 256, 256);
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
        { /* the next block's weight rows into L2, a share per x block, a few lines a step (a burst after
           * the block holds the fill buffers the tile loads need: 1.1x at M = 512) */
          const char *pf = NULL;
          int64_t row = 1;
          const int64_t lines = prefetch_share(&p, n, k0, xb, &pf, &row);
          steps_2x2_pf(steps, w0, wstr, w1, wstr, x0, x1, pf, lines, row, a->w_stride * 2);
        }
        if (pending >= 0) {
          epilogue_block(&p, p.ctmp[pending & 1], pend_n, pend_m, nt);
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
  if (pending >= 0) epilogue_block(&p, p.ctmp[pending & 1], pend_n, pend_m, nt);
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
  pack_x(a, 0, a->m, 0, kl, steps, xp, 256);
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

/* ---- pre-packed weights (XK_WEIGHT_PACKED_AMX) ------------------------------------
 *
 * Layout in xops_kernels.h: K blocks of XK_AMX_PACK_KC, 32-column blocks of
 * out (32 weight rows), each step of 32 k two 1 KiB VNNI B tiles back to
 * back. x is packed once per call, by linear_pack_x, into the same block
 * order as row-major A tiles (16 x rows of 32 consecutive k: a plain copy),
 * before the tiles run. So the C tiles hold out itself (16 rows x 16
 * columns), not its transpose: the epilogue adds the bias and rounds rows
 * of 32 columns, one 64-byte store each, with no transpose (it was ~15% of
 * the time at M = 512 with the transposed C of the unpacked path).
 *
 * A grid tile walks k blocks, then 32-column weight blocks (a block's
 * weights, 32 KiB, stay in L1), then 32-row x blocks streamed from L2
 * (TILELOADDT1: they do not evict the weights), C spilled exactly between
 * k blocks (K <= XK_AMX_PACK_KC: C kept over the whole K), so the weights
 * are read in memory order (the decode regime too: M <= 32 is one x block).
 * Each x block prefetches into L2 its share of the next weight block and
 * of the next k block's x, a few lines per step rather than in one burst
 * after the block (1.15-1.2x at M = 512: a burst of L2 prefetches that go
 * to DRAM holds the fill buffers the streamed x tile loads need). Loads
 * are issued right after a tile's last use in the step, so they overlap
 * the remaining products.
 * Same products in the same k order as the unpacked GEMM (TDPBF16PS is
 * symmetric in its two operands): results are bit-identical to it.
 *
 * Measured ceilings (session 7, one thread, thread CPU time, % of the
 * same-process TDPBF16PS probe, load ~4): the bare 2x2 step with both
 * operands in L1 runs at 78% (88-92% with no tile loads at all); x
 * streamed from 512 KiB with TILELOADDT1 75%; plus a C spill to a 1 MiB
 * buffer every 16 steps 54-57%, 63% with the C prefetch. This GEMM with
 * the weights, x, C spills and epilogue all made artificially hot reaches
 * 73-76% at M = 256 and 512 (K = 4096), i.e. the floor of 75% of the
 * probe is the ceiling of this tile sequence with free memory. Knock-outs
 * against the real kernel (GEMM time): weights always L1-hot -15..23%
 * (the weight stream from L3/DRAM), x from one L2 block -4..9%, no C
 * spills -0..10%, no epilogue -2..10%. */

#define PK_KCS (XK_AMX_PACK_KC / 32)
/* The L2 prefetches ask for every PK_PFS-th line: the L2's adjacent-line
 * prefetcher brings the other line of each 128-byte pair, and half as many
 * requests hold the L1 fill buffers the streamed x tile loads need (GEMM
 * 2-6% faster at M = 256..1024; every 4th line was slower). A tile with
 * one x block (M <= 32) streams its weights from DRAM with little x
 * traffic: there every weight line is asked for (M = 1, K = 4096,
 * N = 2048, cold: 1.34 -> 1.09 ms; 1.24 ms before the sparse prefetch). */
#ifndef PK_PFS
#define PK_PFS 2
#endif
#ifndef PK_PF
#define PK_PF 1
#endif

static inline int64_t pk_steps(int64_t k, int64_t kb) { return min64(PK_KCS, cdiv(k, 32) - kb * PK_KCS); }

/* Packs the weight columns of 32-column blocks [begin, end) as VNNI B tiles. */
void xk_linear_pack_w_amx(const xk_linear_args *a, int64_t begin, int64_t end, void *dst) {
  if (a->w_kind != XK_WEIGHT_PACKED_AMX) {
    xk_linear_pack_w_avx512(a, begin, end, dst);
    return;
  }
  const int64_t ks = cdiv(a->k, 32), np = cdiv(a->n, 32);
  const uint16_t *w = (const uint16_t *)a->w;
  for (int64_t kb = 0; kb * PK_KCS < ks; kb++) {
    const int64_t st = pk_steps(a->k, kb), k0 = kb * XK_AMX_PACK_KC;
    uint32_t *blk = (uint32_t *)dst + 512 * (kb * PK_KCS * np);
    for (int64_t nb = begin; nb < end; nb++)
      for (int h = 0; h < 2; h++) {
        const int64_t r0 = nb * 32 + 16 * h;
        pack_vnni(w, a->w_stride, r0, a->n - r0, k0, a->k - k0, st, blk + 512 * nb * st + 256 * h, 512);
      }
  }
}

/* Packed x of at least this many bytes is written with streaming stores: it
 * does not stay in cache for the GEMM anyway, and ordinary stores read each
 * line first (M = 4096, K = 4096: the pack took 7.0 ms, 3.5 with them). */
#ifndef PK_XNT
#define PK_XNT (16 << 20)
#endif

/* Packs x rows of 32-row blocks [begin, end) into a->xp as row-major A
 * tiles (rows past M and k past K zero), row by row: each x row is read
 * once, in order. */
static void pack_x3(const xk_linear_args *a, int64_t begin, int64_t end);

void xk_linear_pack_x_amx(const xk_linear_args *a, int64_t begin, int64_t end) {
  if (a->w_kind == XK_WEIGHT_PACKED_AMX3) {
    pack_x3(a, begin, end);
    return;
  }
  const int64_t ks = cdiv(a->k, 32), mp = cdiv(a->m, 32);
  const uint16_t *x = (const uint16_t *)a->x;
  const int nt = mp * 32 * ks * 64 >= PK_XNT;
  for (int64_t xb = begin; xb < end; xb++)
    for (int64_t r = 0; r < 32; r++) {
      const int64_t m = xb * 32 + r;
      const uint16_t *row = x + m * a->x_stride;
      for (int64_t kb = 0; kb * PK_KCS < ks; kb++) {
        const int64_t st = pk_steps(a->k, kb);
        uint16_t *o = (uint16_t *)a->xp + 1024 * (kb * PK_KCS * mp + xb * st) + r * 32;
        for (int64_t s = 0; s < st; s++) {
          const int64_t k = (kb * PK_KCS + s) * 32;
          const __m512i v = m < a->m ? _mm512_maskz_loadu_epi16(kmask(a->k - k), row + k) : _mm512_setzero_si512();
          if (nt)
            _mm512_stream_si512((void *)(o + s * 1024), v);
          else
            _mm512_storeu_si512(o + s * 1024, v);
        }
      }
    }
  if (nt) _mm_sfence();
}

/* A tile load, TILELOADDT1 when `stream`. */
#define PK_LD(t, p, stream)           \
  do {                                \
    if (stream)                       \
      _tile_stream_loadd(t, p, 64);   \
    else                              \
      _tile_loadd(t, p, 64);          \
  } while (0)

/* 2 x 2 C tiles (C[i][j] = tile 2i + j: x half i, weight half j) over
 * `steps` steps of packed tile pairs (x: A tiles 4-5, w: B tiles 6-7, 2 KiB
 * a step); sx / sw stream that operand. pf: 2 KiB of pf_bytes a step into L1. */
XK_ALWAYS_INLINE void pk_steps_2x2(int64_t steps, const char *x, const char *w, const int sx, const int sw,
                                   const char *pf, int64_t pf_bytes) {
  PK_LD(4, x, sx);
  PK_LD(6, w, sw);
  PK_LD(7, w + 1024, sw);
  PK_LD(5, x + 1024, sx);
  for (int64_t s = 1; s < steps; s++) {
    if (pf)
      for (int64_t c = 2048 * (s - 1); c < 2048 * s && c < pf_bytes; c += 64) _mm_prefetch(pf + c, _MM_HINT_T0);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    PK_LD(4, x + 2048 * s, sx);
    _tile_dpbf16ps(2, 5, 6);
    PK_LD(6, w + 2048 * s, sw);
    _tile_dpbf16ps(3, 5, 7);
    PK_LD(5, x + 2048 * s + 1024, sx);
    PK_LD(7, w + 2048 * s + 1024, sw);
  }
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

/* Step 0's operand tiles of a block (x streamed, weights kept). */
XK_ALWAYS_INLINE void pk_load_ops(const char *x, const char *w) {
  _tile_stream_loadd(4, x, 64);
  _tile_loadd(6, w, 64);
  _tile_loadd(7, w + 1024, 64);
  _tile_stream_loadd(5, x + 1024, 64);
}

/* A block of the spilling GEMM: C in tiles 0-3 and step 0's operands in
 * tiles 4-7 on entry; runs steps 1.. (pk_tail issues the last products).
 * Each step prefetches na lines of pa (every pas-th) and nb of pb (every
 * PK_PFS-th) into L2, and nc of pc into L1. */
XK_ALWAYS_INLINE void pk_body(int64_t steps, const char *x, const char *w, const char *pa, int64_t na, int64_t pas,
                              const char *pb, int64_t nb, const char *pc, int64_t nc) {
  for (int64_t s = 1; s < steps; s++) {
    for (int64_t l = 0; l < nc; l++) _mm_prefetch(pc + 64 * ((s - 1) * nc + l), _MM_HINT_T0);
    for (int64_t l = 0; l < na; l += pas) _mm_prefetch(pa + 64 * ((s - 1) * na + l), _MM_HINT_T1);
    for (int64_t l = 0; l < nb; l += PK_PFS) _mm_prefetch(pb + 64 * ((s - 1) * nb + l), _MM_HINT_T1);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_stream_loadd(4, x + 2048 * s, 64);
    _tile_dpbf16ps(2, 5, 6);
    _tile_loadd(6, w + 2048 * s, 64);
    _tile_dpbf16ps(3, 5, 7);
    _tile_stream_loadd(5, x + 2048 * s + 1024, 64);
    _tile_loadd(7, w + 2048 * s + 1024, 64);
  }
}

/* The block's last products; stores C to dst and (nx != NULL) leaves the
 * next block's step-0 operands (nx, nw) in tiles 4-7. Each store and load is
 * issued right after the last product that reads its tile. */
XK_ALWAYS_INLINE void pk_tail(float *dst, const char *nx, const char *nw) {
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_stored(0, dst, 64);
  if (nx) _tile_stream_loadd(4, nx, 64);
  _tile_dpbf16ps(2, 5, 6);
  _tile_stored(1, dst + 256, 64);
  if (nx) _tile_loadd(6, nw, 64);
  _tile_dpbf16ps(3, 5, 7);
  _tile_stored(2, dst + 512, 64);
  if (nx) {
    _tile_loadd(7, nw + 1024, 64);
    _tile_stream_loadd(5, nx + 1024, 64);
  }
  _tile_stored(3, dst + 768, 64);
}

/* One finished 32 x 32 C block ct (tile 2i + j: rows m + 16i.., columns n +
 * 16j..), row-major: out[m + r][n + c] = C + bias[n + c], for m + r < m1,
 * n + c < n1; one 64-byte row store per output row (bf16), streaming when
 * `nt` and the row is whole and aligned (the caller fences). */
static void pk_epilogue(const xk_linear_args *a, const float *ct, int64_t n, int64_t n1, int64_t m, int64_t m1,
                        int nt) {
  const int64_t nn = min64(32, n1 - n);
  if (nn <= 0) return;
  const __mmask32 nm = kmask(nn);
  __m512 b0, b1;
  bias32(a, n, nm, &b0, &b1);
  for (int i = 0; i < 2; i++) {
    const float *c0 = ct + 512 * i, *c1 = c0 + 256;
    const int64_t rows = min64(16, m1 - m - 16 * i);
    for (int64_t r = 0; r < rows; r++)
      store_row32(a, m + 16 * i + r, n, nn, nm, _mm512_add_ps(_mm512_loadu_ps(c0 + 16 * r), b0),
                  _mm512_add_ps(_mm512_loadu_ps(c1 + 16 * r), b1), nt);
  }
}

/* ---- fp32 on the tile unit (XK_WEIGHT_PACKED_AMX3) ----------------------------
 *
 * (N <= NW_N with M > 16: nw3_tile below, x split inside the kernel.)
 * An f32 x and weight, each split exactly into three bf16 parts, a = a0 + a1
 * + a2 and b = b0 + b1 + b2 (split3): a0 = a rounded to nearest even, a1 =
 * a - a0 rounded to nearest even, a2 = the rest, which fits a bf16's 8 bits.
 * So |a1| <= 2^-8 |a| and |a2| <= 2^-16 |a| (about). The GEMM accumulates in
 * fp32 the six products whose parts sum to at most 2 (a0b0, a0b1, a1b0,
 * a0b2, a1b1, a2b0): every bf16 product is exact in fp32, and the terms
 * dropped (a1b2, a2b1, a2b2) are at most ~2^-23 |a b| together, below the
 * fp32 rounding of the sum. The six run as six segments of k blocks over
 * the whole K, the five small products first and a0b0 last, so the fp32
 * accumulation of the large terms rounds as the FMA path's does (measured
 * error figures: src/ops/linear_amx.rs).
 *
 * What the split cannot carry:
 * - bf16 denormals: TDPBF16PS reads them as zero and flushes products below
 *   2^-126, so a part below 2^-126 is lost (only values below ~2^-110 have
 *   one): absolute error <= 2^-125 (sum_k |x_k| + sum_k |w_k|) + 6K 2^-126.
 * - values whose rounding overflows (|a| within half a bf16 ulp of FLT_MAX):
 *   a0 is truncated there instead, a1 then reaches 2^-7 |a|, still exact.
 * - inf and NaN: a0 = a, a1 = a2 = 0. In the small products a0 meets b1 or
 *   b2, which may be zero (inf * 0 = NaN where the FMA path has inf), so
 *   those segments read x's a0 with non-finite values zeroed (x's fourth
 *   part). A weight with a non-finite value is not split at all
 *   (linear_pack_w3 counts them; the caller runs the FMA path instead). */

/* bf16 rounding to nearest even of f32 bits u, as f32 bits (low half zero). */
XK_ALWAYS_INLINE __m512i rne_hi(__m512i u) {
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  return _mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd),
                          _mm512_set1_epi32((int)0xffff0000u));
}

/* v = p0 + p1 + p2 (finite v), each part bf16 bits in the low half of a lane;
 * p0z is p0 with the non-finite lanes zeroed, whose mask *nf gets. */
XK_ALWAYS_INLINE void split3(__m512 v, __m512i *p0, __m512i *p0z, __m512i *p1, __m512i *p2, __mmask16 *nf) {
  const __m512i u = _mm512_castps_si512(v), ex = _mm512_set1_epi32(0x7f800000);
  const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
  const __mmask16 bad = _mm512_cmpeq_epi32_mask(_mm512_and_si512(u, ex), ex);
  __m512i h = rne_hi(u);
  const __mmask16 trunc = bad | _mm512_cmpeq_epi32_mask(_mm512_and_si512(h, ex), ex);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), ex);
  h = _mm512_mask_mov_epi32(h, trunc, _mm512_and_si512(u, hi));
  h = _mm512_mask_or_epi32(h, nan, h, _mm512_set1_epi32(0x00400000)); /* NaN stays NaN */
  const __m512 r1 = _mm512_maskz_sub_ps((__mmask16)~bad, v, _mm512_castsi512_ps(h));
  const __m512i h1 = rne_hi(_mm512_castps_si512(r1));
  const __m512i h2 = _mm512_and_si512(_mm512_castps_si512(_mm512_sub_ps(r1, _mm512_castsi512_ps(h1))), hi);
  *p0 = _mm512_srli_epi32(h, 16);
  *p0z = _mm512_maskz_mov_epi32((__mmask16)~bad, *p0);
  *p1 = _mm512_srli_epi32(h1, 16);
  *p2 = _mm512_srli_epi32(h2, 16);
  *nf = bad;
}

/* Two 16-lane halves of 32-bit lanes holding bf16 bits -> 32 bf16. */
XK_ALWAYS_INLINE __m512i join16(__m512i lo, __m512i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(lo)), _mm512_cvtepi32_epi16(hi), 1);
}

/* The 32 f32 at p (k past `left` zero) split: parts[0..3] = a0, a0z, a1, a2
 * as 32 bf16 each; returns the non-finite count. */
XK_ALWAYS_INLINE int split32(const float *p, int64_t left, __m512i parts[4]) {
  const __mmask32 km = kmask(left);
  const __m512 v0 = _mm512_maskz_loadu_ps((__mmask16)km, p), v1 = _mm512_maskz_loadu_ps((__mmask16)(km >> 16), p + 16);
  __m512i a[4], b[4];
  __mmask16 n0, n1;
  split3(v0, &a[0], &a[1], &a[2], &a[3], &n0);
  split3(v1, &b[0], &b[1], &b[2], &b[3], &n1);
  for (int i = 0; i < 4; i++) parts[i] = join16(a[i], b[i]);
  return __builtin_popcount((unsigned)n0) + __builtin_popcount((unsigned)n1);
}

/* Packs f32 x rows of 32-row blocks [begin, end) split into a->xp: four parts
 * (a0, a0 with non-finite zeroed, a1, a2), each in linear_pack_x's layout. */
static void pack_x3(const xk_linear_args *a, int64_t begin, int64_t end) {
  const int64_t ks = cdiv(a->k, 32), mp = cdiv(a->m, 32), part = mp * ks * 1024; /* bf16 per part */
  const float *x = (const float *)a->x;
  const int nt = 4 * part * 2 >= PK_XNT;
  for (int64_t xb = begin; xb < end; xb++)
    for (int64_t r = 0; r < 32; r++) {
      const int64_t m = xb * 32 + r;
      const float *row = x + m * a->x_stride;
      for (int64_t kb = 0; kb * PK_KCS < ks; kb++) {
        const int64_t st = pk_steps(a->k, kb);
        uint16_t *o = (uint16_t *)a->xp + 1024 * (kb * PK_KCS * mp + xb * st) + r * 32;
        for (int64_t s = 0; s < st; s++) {
          const int64_t k = (kb * PK_KCS + s) * 32;
          __m512i v[4];
          if (m < a->m)
            split32(row + k, a->k - k, v);
          else
            v[0] = v[1] = v[2] = v[3] = _mm512_setzero_si512();
          for (int p = 0; p < 4; p++) {
            if (nt)
              _mm512_stream_si512((void *)(o + p * part + s * 1024), v[p]);
            else
              _mm512_storeu_si512(o + p * part + s * 1024, v[p]);
          }
        }
      }
    }
  if (nt) _mm_sfence();
}

int64_t xk_linear_pack_w3_amx(const xk_linear_args *a, int64_t begin, int64_t end, void *dst) {
  const int64_t ks = cdiv(a->k, 32), np = cdiv(a->n, 32), part = np * ks * 512; /* uint32 per part */
  const float *w = (const float *)a->w;
  const int nt = 3 * part * 4 >= PK_XNT; /* a split done per call (linear) is not read back from cache */
  int64_t bad = 0;
  for (int64_t kb = 0; kb * PK_KCS < ks; kb++) {
    const int64_t st = pk_steps(a->k, kb), k0 = kb * XK_AMX_PACK_KC;
    uint32_t *blk = (uint32_t *)dst + 512 * (kb * PK_KCS * np);
    for (int64_t nb = begin; nb < end; nb++)
      for (int h = 0; h < 2; h++) {
        const int64_t r0 = nb * 32 + 16 * h;
        for (int64_t s = 0; s < st; s++) {
          const int64_t k = k0 + 32 * s;
          __m512i t[3][16];
          for (int j = 0; j < 16; j++) {
            __m512i v[4];
            if (r0 + j < a->n) {
              bad += split32(w + (r0 + j) * a->w_stride + k, a->k - k, v);
            } else {
              v[0] = v[2] = v[3] = _mm512_setzero_si512();
            }
            t[0][j] = v[0];
            t[1][j] = v[2];
            t[2][j] = v[3];
          }
          for (int p = 0; p < 3; p++) {
            xk_transpose16_epi32(t[p]);
            uint32_t *o = blk + p * part + 512 * (nb * st + s) + 256 * h;
            for (int u = 0; u < 16; u++) {
              if (nt)
                _mm512_stream_si512((void *)(o + u * 16), t[p][u]);
              else
                _mm512_storeu_si512(o + u * 16, t[p][u]);
            }
          }
        }
      }
  }
  if (nt) _mm_sfence();
  return bad;
}

/* The segments of a packed GEMM (see pk_tile): one for bf16; for the split
 * f32, (x part, weight part) = (a0z, b2), (a1, b1), (a2, b0), (a0z, b1),
 * (a1, b0), then (a0, b0): the small products first. */
#define F32_SEGS 6
static int64_t pk_segments(const xk_linear_args *a, const char *W[F32_SEGS], const char *X[F32_SEGS]) {
  if (a->w_kind != XK_WEIGHT_PACKED_AMX3) {
    W[0] = (const char *)a->w;
    X[0] = (const char *)a->xp;
    return 1;
  }
  static const int xs[F32_SEGS] = {1, 2, 3, 1, 2, 0}, wsg[F32_SEGS] = {2, 1, 0, 1, 0, 0};
  const int64_t ks = cdiv(a->k, 32), wpart = cdiv(a->n, 32) * ks * 2048, xpart = cdiv(a->m, 32) * ks * 2048;
  for (int i = 0; i < F32_SEGS; i++) {
    W[i] = (const char *)a->w + wsg[i] * wpart;
    X[i] = (const char *)a->xp + xs[i] * xpart;
  }
  return F32_SEGS;
}

/* Rows [0, M) x columns [nc, nc + 16 * H) (H = 1, 2 halves of a 32-column block, nc a multiple of 16,
 * nc + 16 * H <= 32 * (nc / 32 + 1)) accumulated over all of K into acc[h][m]. */
XK_ALWAYS_INLINE void pk3_dot(const xk_linear_args *a, int64_t nc, const int H, int64_t M, __m512 acc[2][16]) {
  const int64_t K = a->k, ks = cdiv(K, 32), np = cdiv(a->n, 32), part = np * ks * 2048;
  const int64_t nb = nc / 32, h0 = (nc / 16) & 1;
  const char *W = (const char *)a->w;
  const float *x = (const float *)a->x;
  const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
  for (int h = 0; h < H; h++)
    for (int m = 0; m < 16; m++) acc[h][m] = _mm512_setzero_ps();
  for (int64_t kb = 0; kb * PK_KCS < ks; kb++) {
    const int64_t st = pk_steps(K, kb);
    const char *blk = W + 2048 * (kb * PK_KCS * np + nb * st) + 1024 * h0;
    for (int64_t s = 0; s < st; s++) {
      const int64_t k0 = (kb * PK_KCS + s) * 32;
      for (int64_t u = 0; u < 16 && k0 + 2 * u < K; u++) {
        const int64_t k = k0 + 2 * u;
        const int two = k + 1 < K;
        for (int h = 0; h < H; h++) {
          const char *t = blk + 2048 * s + 1024 * h + 64 * u;
          const __m512i r0 = _mm512_loadu_si512(t), r1 = _mm512_loadu_si512(t + part);
          const __m512i r2 = _mm512_loadu_si512(t + 2 * part);
          const __m512 lo = _mm512_add_ps(_mm512_add_ps(_mm512_castsi512_ps(_mm512_slli_epi32(r0, 16)),
                                                        _mm512_castsi512_ps(_mm512_slli_epi32(r1, 16))),
                                          _mm512_castsi512_ps(_mm512_slli_epi32(r2, 16)));
          const __m512 up = _mm512_add_ps(_mm512_add_ps(_mm512_castsi512_ps(_mm512_and_si512(r0, hi)),
                                                        _mm512_castsi512_ps(_mm512_and_si512(r1, hi))),
                                          _mm512_castsi512_ps(_mm512_and_si512(r2, hi)));
          for (int m = 0; m < 16; m++) {
            if (m >= M) break;
            const float *xr = x + m * a->x_stride + k;
            acc[h][m] = _mm512_fmadd_ps(_mm512_set1_ps(xr[0]), lo, acc[h][m]);
            if (two) acc[h][m] = _mm512_fmadd_ps(_mm512_set1_ps(xr[1]), up, acc[h][m]);
          }
        }
      }
    }
  }
}

/* Decode rows (M <= 16) of a split f32 weight, out columns [n0, n1) (n0 a
 * multiple of 32): each weight is rebuilt exactly in f32, (b0 + b1) + b2 = w
 * (b0 + b1 is w rounded at b1's last bit: representable), and multiplied
 * as on the FMA path, one fp32 FMA a product in k order. The weight is read
 * once (1.5x the f32 bytes) where the six-segment tile GEMM reads b0 three
 * times and b1 twice. M <= 8 takes a 32-column block at once (both tile
 * halves: the parts are read in memory order), larger M a half at a time. */
/* M = 1, out columns [n0, n1) (n0 a multiple of 32): k blocks outermost, so
 * the parts are read in memory order (a k block's 32-column blocks are
 * contiguous), the running sums kept exactly in out between k blocks (f32)
 * and the bias added after the last; even and odd k in separate chains
 * (summed at each k block's end) so the FMAs do not wait on each other. */
static void pk3_gemv1(const xk_linear_args *a, int64_t n0, int64_t n1) {
  const int64_t K = a->k, ks = cdiv(K, 32), np = cdiv(a->n, 32), part = np * ks * 2048;
  const char *W = (const char *)a->w;
  const float *x = (const float *)a->x;
  float *out = (float *)a->out;
  const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
  const int64_t kbs = cdiv(ks, PK_KCS);
  for (int64_t kb = 0; kb < kbs || (kb == 0 && ks == 0); kb++) {
    const int64_t st = ks ? pk_steps(K, kb) : 0;
    for (int64_t nc = n0; nc < n1; nc += 32) {
      const int64_t nb = nc / 32;
      const __mmask16 m0 = (__mmask16)kmask(n1 - nc), m1 = (__mmask16)kmask(n1 - nc - 16);
      __m512 e0 = kb ? _mm512_maskz_loadu_ps(m0, out + nc) : _mm512_setzero_ps();
      __m512 e1 = kb ? _mm512_maskz_loadu_ps(m1, out + nc + 16) : _mm512_setzero_ps();
      __m512 o0 = _mm512_setzero_ps(), o1 = o0;
      const char *blk = W + 2048 * (kb * PK_KCS * np + nb * st);
      for (int64_t s = 0; s < st; s++) {
        const int64_t k0 = (kb * PK_KCS + s) * 32;
        for (int64_t u = 0; u < 16 && k0 + 2 * u < K; u++) {
          const int64_t k = k0 + 2 * u;
          const __m512 xe = _mm512_set1_ps(x[k]), xo = _mm512_set1_ps(k + 1 < K ? x[k + 1] : 0.0f);
#define PK3_REBUILD(t, lo, up)                                                                                      \
  const __m512i t##0 = _mm512_loadu_si512(t), t##1 = _mm512_loadu_si512((t) + part),                               \
                t##2 = _mm512_loadu_si512((t) + 2 * part);                                                         \
  const __m512 lo = _mm512_add_ps(_mm512_add_ps(_mm512_castsi512_ps(_mm512_slli_epi32(t##0, 16)),                  \
                                                _mm512_castsi512_ps(_mm512_slli_epi32(t##1, 16))),                 \
                                  _mm512_castsi512_ps(_mm512_slli_epi32(t##2, 16)));                               \
  const __m512 up = _mm512_add_ps(_mm512_add_ps(_mm512_castsi512_ps(_mm512_and_si512(t##0, hi)),                   \
                                                _mm512_castsi512_ps(_mm512_and_si512(t##1, hi))),                  \
                                  _mm512_castsi512_ps(_mm512_and_si512(t##2, hi)))
          const char *ta = blk + 2048 * s + 64 * u, *tb = ta + 1024;
          PK3_REBUILD(ta, la, ua);
          PK3_REBUILD(tb, lb, ub);
#undef PK3_REBUILD
          e0 = _mm512_fmadd_ps(xe, la, e0);
          o0 = _mm512_fmadd_ps(xo, ua, o0);
          e1 = _mm512_fmadd_ps(xe, lb, e1);
          o1 = _mm512_fmadd_ps(xo, ub, o1);
        }
      }
      e0 = _mm512_add_ps(e0, o0);
      e1 = _mm512_add_ps(e1, o1);
      if (kb + 1 >= kbs && a->bias) {
        e0 = _mm512_add_ps(e0, _mm512_maskz_loadu_ps(m0, (const float *)a->bias + nc));
        e1 = _mm512_add_ps(e1, _mm512_maskz_loadu_ps(m1, (const float *)a->bias + nc + 16));
      }
      _mm512_mask_storeu_ps(out + nc, m0, e0);
      _mm512_mask_storeu_ps(out + nc + 16, m1, e1);
    }
  }
}

static void pk3_gemv(const xk_linear_args *a, int64_t n0, int64_t n1) {
  const int64_t M = a->m;
  if (M == 1) {
    pk3_gemv1(a, n0, n1);
    return;
  }
  for (int64_t nc = n0; nc < n1;) {
    __m512 acc[2][16];
    int H = 1;
    if (M <= 8 && (nc & 31) == 0 && nc + 16 < n1) {
      H = 2;
      pk3_dot(a, nc, 2, M, acc);
    } else {
      pk3_dot(a, nc, 1, M, acc);
    }
    for (int h = 0; h < H; h++, nc += 16) {
      const int64_t nn = min64(16, n1 - nc);
      const __mmask16 nm = (__mmask16)kmask(nn);
      const __m512 b = a->bias ? _mm512_maskz_loadu_ps(nm, (const float *)a->bias + nc) : _mm512_setzero_ps();
      for (int m = 0; m < 16 && m < M; m++)
        _mm512_mask_storeu_ps((float *)a->out + m * a->out_stride + nc, nm, _mm512_add_ps(acc[h][m], b));
    }
  }
}

typedef struct pk_ws {
  int64_t cpart, ctmp, total;
} pk_ws;

static pk_ws pk_layout(const xk_linear_args *a) {
  pk_ws w;
  const int64_t nxb = cdiv(a->tile_m, 32), nnb = cdiv(a->tile_n, 32);
  w.cpart = 0;
  w.ctmp = a->k > XK_AMX_PACK_KC || a->w_kind == XK_WEIGHT_PACKED_AMX3 ? align64(nxb * nnb * 4096) : 0;
  w.total = w.ctmp + 2 * 4096 + 64;
  return w;
}

static void pk_tile(const xk_linear_args *a, int64_t t, char *base, const pk_ws *L) {
  const int64_t mtiles = cdiv(a->m, a->tile_m);
  const int64_t m0 = (t % mtiles) * a->tile_m, n0 = (t / mtiles) * a->tile_n;
  const int64_t m1 = min64(a->m, m0 + a->tile_m), n1 = min64(a->n, n0 + a->tile_n);
  float *cpart = (float *)(base + L->cpart), *ctmp = (float *)(base + L->ctmp);
  const int64_t ks = cdiv(a->k, 32), np = cdiv(a->n, 32), mp = cdiv(a->m, 32);
  int64_t kblocks = cdiv(ks, PK_KCS);
  const int64_t nxb = cdiv(m1 - m0, 32);
  const int64_t nb0 = n0 / 32, nb1 = cdiv(n1, 32), xb0 = m0 / 32;
  /* The k blocks run over segments of the whole K, each one (x part, weight
   * part) pair: one segment for bf16, six for the split f32 (see f32_segments). */
  const char *W[F32_SEGS], *X[F32_SEGS];
  const int64_t kbs = kblocks, nseg = pk_segments(a, W, X);
  kblocks *= nseg;
  int64_t pending = -1, pend_n = 0, pend_m = 0, iter = 0;
  const int nt = out_nt(a);
#define PK_W(kb, nb, st) (W[(kb) / kbs] + 2048 * (((kb) % kbs) * PK_KCS * np + (nb) * (st)))
#define PK_X(kb, xb, st) (X[(kb) / kbs] + 2048 * (((kb) % kbs) * PK_KCS * mp + (xb) * (st)))
#define pk_steps(k, kb) pk_steps((k), (kb) % kbs)
#define PK_FLUSH()                                                          \
  if (pending >= 0) {                                                       \
    pk_epilogue(a, ctmp + 1024 * (pending & 1), pend_n, n1, pend_m, m1, nt); \
    pending = -1;                                                           \
  }
  if (kblocks == 0) { /* K = 0: out = bias */
    memset(ctmp, 0, 4096);
    for (int64_t nb = nb0; nb < nb1; nb++)
      for (int64_t xb = 0; xb < nxb; xb++) pk_epilogue(a, ctmp, nb * 32, n1, m0 + 32 * xb, m1, 0);
    return;
  }
  if (kblocks == 1) { /* C over the whole K */
    for (int64_t nb = nb0; nb < nb1; nb++) {
      for (int64_t xb = 0; xb < nxb; xb++, iter++) {
        c_begin(1, NULL);
        const int64_t st = pk_steps(a->k, 0);
        if (nxb == 1) { /* weights used once: streamed, the next block prefetched; x stays in L1 */
          const char *pf = nb + 1 < nb1 ? PK_W(0, nb + 1, st) : NULL;
          pk_steps_2x2(st, PK_X(0, xb0 + xb, st), PK_W(0, nb, st), 0, 1, pf, st * 2048);
        } else {
          pk_steps_2x2(st, PK_X(0, xb0 + xb, st), PK_W(0, nb, st), 1, 0, NULL, 0);
        }
        PK_FLUSH();
        c_end(ctmp + 1024 * (iter & 1));
        pending = iter;
        pend_n = nb * 32;
        pend_m = m0 + 32 * xb;
      }
    }
    PK_FLUSH();
    return;
  }
  /* Blocks (kb, nb, xb) in order; each block's last step stores its C
   * tiles as soon as their products are issued and loads the next block's
   * first operands in between, so the switch to the next block's C tiles
   * does not drain the tile unit (up to ~10% at M = 512). */
  int have_ops = 0;
  for (int64_t kb = 0; kb < kblocks; kb++) {
    const int64_t st = pk_steps(a->k, kb);
    const int first = kb == 0, last = kb == kblocks - 1;
    for (int64_t nb = nb0; nb < nb1; nb++) {
      const char *w = PK_W(kb, nb, st);
      for (int64_t xb = 0; xb < nxb; xb++, iter++) {
        float *cp = cpart + ((nb - nb0) * nxb + xb) * 1024;
        const char *x = PK_X(kb, xb0 + xb, st), *nw = NULL, *nx = NULL;
        if (xb + 1 < nxb) {
          nw = w;
          nx = PK_X(kb, xb0 + xb + 1, st);
        } else if (nb + 1 < nb1) {
          nw = PK_W(kb, nb + 1, st);
          nx = PK_X(kb, xb0, st);
        } else if (kb + 1 < kblocks) {
          const int64_t st1 = pk_steps(a->k, kb + 1);
          nw = PK_W(kb + 1, nb0, st1);
          nx = PK_X(kb + 1, xb0, st1);
        }
        if (!have_ops) pk_load_ops(x, w);
        c_begin(first, cp);
        { /* into L2, spread over the steps: this block's share of the next weight block and of the next k block's x
           * (prefetches past a share's end may touch the next block or past the buffer: they never fault) */
          const char *pw = NULL, *px = NULL;
          int64_t nwl = 0, nxl = 0;
          if (PK_PF) {
            const int64_t kn = nb + 1 < nb1 ? kb : kb + 1;
            if (kn < kblocks) {
              const int64_t stn = pk_steps(a->k, kn), share = cdiv(stn * 32, nxb);
              pw = PK_W(kn, nb + 1 < nb1 ? nb + 1 : nb0, stn) + 64 * xb * share;
              nwl = cdiv(min64(share, stn * 32 - xb * share), st - 1 > 0 ? st - 1 : 1);
              if (xb * share >= stn * 32) nwl = 0;
            }
            if (kb + 1 < kblocks) {
              const int64_t st1 = pk_steps(a->k, kb + 1), lines = nxb * st1 * 32;
              const int64_t blocks = (nb1 - nb0) * nxb, idx = (nb - nb0) * nxb + xb, share = cdiv(lines, blocks);
              if (idx * share < lines) {
                px = PK_X(kb + 1, xb0, st1) + 64 * idx * share;
                nxl = cdiv(min64(share, lines - idx * share), st - 1 > 0 ? st - 1 : 1);
              }
            }
          }
          /* the next block's spilled C (it is loaded unless the next block is
           * in k block 0) into L1: its tile loads follow the last products of
           * this block at once (M = 512: ~5% faster) */
          const char *pc = NULL;
          int64_t ncl = 0;
          const int next_in_kb = xb + 1 < nxb || nb + 1 < nb1;
          if (nx && !(first && next_in_kb)) {
            pc = (const char *)(next_in_kb ? cp + 1024 : cpart);
            ncl = cdiv(64, st - 1 > 0 ? st - 1 : 1);
          }
          pk_body(st, x, w, pw, nwl, nxb > 1 ? PK_PFS : 1, px, nxl, pc, ncl);
        }
        PK_FLUSH();
        pk_tail(last ? ctmp + 1024 * (iter & 1) : cp, nx, nw);
        have_ops = nx != NULL;
        if (last) {
          pending = iter;
          pend_n = nb * 32;
          pend_m = m0 + 32 * xb;
        }
      }
    }
  }
  PK_FLUSH();
#undef PK_W
#undef PK_X
#undef PK_FLUSH
#undef pk_steps
}

static int64_t nw3_plan(xk_linear_args *a, int64_t threads);

static int64_t pk_plan(xk_linear_args *a, int64_t threads) {
  if (a->w_kind == XK_WEIGHT_PACKED_AMX3 && a->n <= NW_N && a->m > 16) return nw3_plan(a, threads);
  a->bf16_pairs = AMX_PAIRS;
  plan_tiles(a, threads, 32); /* packed weights come in 32-row blocks */
  return pk_layout(a).total;
}

/* ---- narrow weights (N <= NW_N, M > 16) -----------------------------------------
 *
 * A weight of at most 64 rows (N = 64 at K = 2048: 256 KiB, far smaller than
 * x) against many x rows. C = x . W^T itself: each 16-row x block is the A
 * operand straight from x (16 rows x 32 k at the x row stride: no packing),
 * and a k block's weights (NW_KC k, 32 KiB) are packed once per grid tile as
 * VNNI B tiles (4 x 16 columns a step) that stay in L1 for every x block of
 * the tile. Each x block's 4 C tiles (16 rows x 64 columns) are spilled
 * exactly between k blocks; the epilogue writes whole rows (no transpose).
 * A tile whose x exceeds NW_WHOLE_MIN (x from L3 or DRAM, not L2) instead
 * runs each x block over the whole K with all the weights packed (from L2,
 * 256 KiB at K = 2048) and no spills: each x row is then read in order, a
 * line of each of a later block's 16 rows prefetched a step, where k
 * blocks read it 512 bytes a page at a time (M = 4096: 1.3x, M = 1024:
 * 1.1-1.3x; at M = 256, x from L2, 0.83-0.88x, so not there).
 * The general kernel packed every x row into VNNI tiles (a transpose) and
 * staged the weights per 32 rows for tiles of 2 x 2: at M = 1024, K = 2048,
 * N = 64 that overhead, not the tile unit, was the time.
 * Same products in the same k order as the general kernel (TDPBF16PS is
 * symmetric in its operands, spills are exact): bit-identical results. */

typedef struct nw_ws {
  int64_t whole, wb, cpart, xs, ctmp, total;
} nw_ws;

static nw_ws nw_layout(const xk_linear_args *a) {
  nw_ws w;
  w.whole = a->tile_m * a->k * 2 > NW_WHOLE_MIN;
  int64_t off = 0;
  w.wb = off;
  off += (w.whole ? cdiv(a->k > 0 ? a->k : 1, 32) : NW_KC / 32) * 4 * 1024;
  w.xs = off;
  off += 1024;
  w.ctmp = off;
  off += 2 * 4096;
  w.cpart = off;
  off += !w.whole && a->k > NW_KC ? cdiv(a->tile_m, 16) * 4096 : 0;
  w.total = off + 64;
  return w;
}

static int64_t nw_plan(xk_linear_args *a, int64_t threads) {
  a->bf16_pairs = AMX_NARROW;
  /* One tile per thread (each packs the weights once); tiles never change the arithmetic. */
  const int64_t t = threads > 0 ? threads : 1;
  a->tile_m = min64(cdiv(cdiv(a->m, t), 16) * 16, NW_TILE_M_MAX);
  a->tile_n = NW_N;
  return nw_layout(a).total;
}

/* Rows [m, m + rows) of a finished 16 x 64 C block (tile i: columns 16i..),
 * plus bias, to out. */
static void nw_epilogue(const xk_linear_args *a, const float *ct, int64_t m, int64_t rows, int nt) {
  for (int64_t n = 0; n < a->n; n += 32) {
    const int64_t nn = min64(32, a->n - n);
    const __mmask32 nm = kmask(nn);
    __m512 b0, b1;
    bias32(a, n, nm, &b0, &b1);
    const float *c0 = ct + 256 * (n / 16), *c1 = c0 + 256;
    for (int64_t r = 0; r < rows; r++)
      store_row32(a, m + r, n, nn, nm, _mm512_add_ps(_mm512_loadu_ps(c0 + 16 * r), b0),
                  _mm512_add_ps(_mm512_loadu_ps(c1 + 16 * r), b1), nt);
  }
}

static void nw_tile(const xk_linear_args *a, int64_t t, char *base, const nw_ws *L) {
  const int64_t m0 = t * a->tile_m, m1 = min64(a->m, m0 + a->tile_m);
  uint32_t *wb = (uint32_t *)(base + L->wb);
  uint16_t *xs = (uint16_t *)(base + L->xs);
  float *cpart = (float *)(base + L->cpart), *ctmp = (float *)(base + L->ctmp);
  const int64_t K = a->k, ks = cdiv(K, 32), kcs = L->whole && ks > 0 ? ks : NW_KC / 32, kc = 32 * kcs;
  const int64_t kblocks = cdiv(ks, kcs), nxb = cdiv(m1 - m0, 16);
  const uint16_t *X = (const uint16_t *)a->x;
  const int64_t xrow = a->x_stride * 2; /* bytes */
  const int nt = out_nt(a);
  if (kblocks == 0) { /* K = 0: out = bias */
    memset(ctmp, 0, 4096);
    for (int64_t m = m0; m < m1; m += 16) nw_epilogue(a, ctmp, m, min64(16, m1 - m), 0);
    return;
  }
  int64_t pending = -1, pend_m = 0, iter = 0;
  for (int64_t kb = 0; kb < kblocks; kb++) {
    const int64_t st = min64(kcs, ks - kb * kcs), k0 = kb * kc;
    const int first = kb == 0, last = kb == kblocks - 1;
    for (int i = 0; i < 4; i++)
      pack_vnni((const uint16_t *)a->w, a->w_stride, 16 * i, a->n - 16 * i, k0, K - k0, st, wb + 256 * i, 1024);
    for (int64_t xb = 0; xb < nxb; xb++, iter++) {
      const int64_t m = m0 + 16 * xb, rows = min64(16, m1 - m);
      float *cp = cpart + 1024 * xb;
      c_begin(first, cp);
      /* The x rows of the block NW_PFD blocks on into L2 (16 a step; one block on was too
       * late at M = 4096: 1.15-1.27x), and the next block's spilled C into L1 (8 lines a step). */
      const int64_t pb = xb + (L->whole ? NW_PFD_WHOLE : NW_PFD);
      const int64_t nm = m0 + 16 * (pb < nxb ? pb : pb - nxb), nk = pb < nxb ? k0 : k0 + kc;
      const int pfx = nk < K && nm < m1, pfc = !(first && xb + 1 < nxb) && (xb + 1 < nxb || k0 + kc < K);
      const int64_t nst = min64(kcs, ks - nk / 32); /* lines per row of that block */
      const char *px = (const char *)(X + min64(nm, a->m - 1) * a->x_stride + nk);
      const char *pc = (const char *)(xb + 1 < nxb ? cp + 1024 : cpart);
      for (int64_t s = 0; s < st; s++) {
        const int64_t k = k0 + 32 * s;
        if (L->whole) {
          if (pfx && s < nst) /* line s of each of its rows */
            for (int64_t r = 0; r < 16 && nm + r < a->m; r++) _mm_prefetch(px + r * xrow + 64 * s, _MM_HINT_T1);
        } else if (pfx && s < 8) { /* two rows a step (measured better here than a line of each row) */
          for (int64_t r = 2 * s; r < 2 * s + 2; r++)
            if (nm + r < a->m)
              for (int64_t l = 0; l < 8 && l < nst; l++) _mm_prefetch(px + r * xrow + 64 * l, _MM_HINT_T1);
        }
        if (pfc && s < 8)
          for (int64_t l = 8 * s; l < 8 * s + 8; l++) _mm_prefetch(pc + 64 * l, _MM_HINT_T0);
        if (rows == 16 && k + 32 <= K) {
          _tile_loadd(4, X + m * a->x_stride + k, xrow);
        } else { /* rows past M or k past K: a zero-padded copy */
          for (int64_t r = 0; r < 16; r++)
            _mm512_storeu_si512(xs + 32 * r, r < rows
                                                 ? _mm512_maskz_loadu_epi16(kmask(K - k), X + (m + r) * a->x_stride + k)
                                                 : _mm512_setzero_si512());
          _tile_loadd(4, xs, 64);
        }
        const uint32_t *w = wb + 1024 * s;
        _tile_loadd(5, w, 64);
        _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(6, w + 256, 64);
        _tile_dpbf16ps(1, 4, 6);
        _tile_loadd(7, w + 512, 64);
        _tile_dpbf16ps(2, 4, 7);
        _tile_loadd(5, w + 768, 64);
        _tile_dpbf16ps(3, 4, 5);
      }
      if (pending >= 0) {
        nw_epilogue(a, ctmp + 1024 * (pending & 1), pend_m, min64(16, m1 - pend_m), nt);
        pending = -1;
      }
      if (last) {
        c_end(ctmp + 1024 * (iter & 1));
        pending = iter;
        pend_m = m;
      } else {
        c_end(cp);
      }
    }
  }
  if (pending >= 0) nw_epilogue(a, ctmp + 1024 * (pending & 1), pend_m, min64(16, m1 - pend_m), nt);
}

/* ---- narrow split f32 weights (XK_WEIGHT_PACKED_AMX3, N <= NW_N, M > 16) ------------
 *
 * The split GEMM of pk_tile packs all of x per call, four bf16 parts (8
 * bytes an element, twice x's f32 bytes) read back by six segments: for a
 * weight of at most 64 columns that packing, not the tile unit, is the time
 * (M = 1024, K = 2048, N = 64: 8.6 ms against the FMA path's 1.6 ms). Here
 * x is split where it is used instead: C = x . W^T itself, 16 x rows a
 * block, C in tiles 0-3 (16 rows x 64 columns; 0-1 for N <= 32). Per k step
 * the block's 16 x 32 f32 are split in registers into row-major A tiles in
 * L1 (VCVTNE2PS2BF16 rounds to nearest even as split32 does, but reads
 * denormals as zero: a part below 2^-126 is then zero where split32 keeps
 * bf16-denormal bits, which TDPBF16PS reads as zero anyway, and an x value
 * below 2^-126 is dropped, within the absolute bound documented there), a0
 * kept in a per-tile buffer, and
 * the five small products (a0z b2, a0z b1, a1 b1, a1 b0, a2 b0) are issued
 * against the three weight parts' B tiles straight from the packed weight;
 * after the whole K the main product a0 b0 runs over the whole K from that
 * buffer. So every output sums the five small products over the whole K
 * first and a0 b0 last, as pk_tile does (the five small ones here in k
 * order, five a step, where pk_tile runs them segment by segment: the same
 * terms, below ~2^-7 |y| together, rounded in another order, so results
 * match pk_tile's to about 2^-31 |y|, not bit for bit; the error figures of
 * src/ops/linear_amx.rs hold). Inf/NaN in x, and values whose rounding to
 * bf16 overflows, are split by split32 itself (a0z zeroed lanes), so the
 * result class is the FMA path's.
 *
 * A grid tile is NW3_TILE_M rows; its k blocks (NW3_KS1 steps in the first
 * pass, NW3_KS2 in the second) run over its x blocks, so a k block's
 * weight tiles are read from L1 by all x blocks but the first; a split
 * weight of at most NW3_WHOLE_W instead runs 16-row tiles over the whole K
 * (see nw3_whole). C is spilled between k blocks and passes (exact), so the
 * tile shape and the thread count never change the arithmetic. The vector split and the tile unit
 * each take about half the time (M = 1024, K = 2048: ~0.6 ms each) and
 * overlap little, however the split is interleaved with the products (the
 * core's vector throughput drops while tiles are in use). */

#ifndef NW3_TILE_M
#define NW3_TILE_M 32
#endif
#ifndef NW3_KS1
#define NW3_KS1 2
#endif
#ifndef NW3_KS2
#define NW3_KS2 8
#endif
#ifndef NW3_PFD
#define NW3_PFD 4 /* x blocks ahead that the x prefetch runs */
#endif

typedef struct nw3_ws {
  int whole;                  /* 16-row tiles over the whole K (see nw3_whole) */
  int64_t ks1, ks2, pfd;      /* k steps a block in the two passes, x blocks the prefetch runs ahead */
  int64_t abuf, stage, cpart, ctmp, total;
} nw3_ws;

/* Whether the split weight (three parts) fits NW3_WHOLE_W: then each grid
 * tile is one 16-row x block over the whole K, its B tiles from L2, and x
 * is read row by row (DRAM pages in order, C never spilled); larger weights
 * run 32-row tiles in k blocks whose B tiles stay in L1. Measured (one
 * thread, N = 64, alternated, load ~6 with other helpers' memory-bound
 * benchmarks): K = 2048, M = 4096 5.8-6.2 -> 4.9-5.6 ms, M = 1024 1.27-1.29
 * -> 1.17-1.24 ms, M = 256 a tie; K = 8192 (3 MiB of parts), M = 512
 * 4.6-4.7 -> 5.9-6.2 ms, so not there. */
#ifndef NW3_WHOLE_W
#define NW3_WHOLE_W (1 << 20)
#endif
static int nw3_whole(const xk_linear_args *a) {
  return 3 * cdiv(a->n, 32) * 32 * cdiv(a->k, 32) * 64 <= NW3_WHOLE_W;
}

static nw3_ws nw3_layout(const xk_linear_args *a) {
  nw3_ws w;
  const int64_t ks = cdiv(a->k, 32), nxb = cdiv(a->tile_m, 16);
  w.whole = nw3_whole(a);
  w.ks1 = w.whole && ks > 0 ? ks : NW3_KS1;
  w.ks2 = w.whole && ks > 0 ? ks : NW3_KS2;
  w.pfd = w.whole ? 1 : NW3_PFD;
  int64_t off = 0;
  w.abuf = off;
  off += nxb * ks * 1024;
  w.stage = off;
  off += 2 * 3 * 1024;
  w.ctmp = off;
  off += 4096;
  w.cpart = off;
  off += nxb * 4096;
  w.total = off + 64;
  return w;
}

static int64_t nw3_plan(xk_linear_args *a, int64_t threads) {
  (void)threads; /* tiles of NW3_TILE_M rows; the grid spreads them */
  a->bf16_pairs = AMX_NARROW;
  a->tile_m = nw3_whole(a) ? 16 : min64(cdiv(a->m, 16) * 16, NW3_TILE_M);
  a->tile_n = NW_N;
  return nw3_layout(a).total;
}

/* One x block's k step to split: rows [m, m + rows) (rows past them zero),
 * k [k, k + 32) (past K zero); a0 to a0t, a0z / a1 / a2 to st[0..2] (1 KiB
 * row-major A tiles each). */
typedef struct nw3_job {
  const float *x;
  int64_t xs, m, rows, k, K;
  uint16_t *a0t, *st;
} nw3_job;

/* The 32 bf16 of p as f32: lanes 0-15 to lo, 16-31 to hi (ilo / ihi from nw3_split_rows). */
XK_ALWAYS_INLINE void nw3_widen(__m512i p, __m512i ilo, __m512i ihi, __m512 *lo, __m512 *hi) {
  *lo = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, ilo, p));
  *hi = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, ihi, p));
}

/* Rows [r0, r1) of job j split as split32 does, except that a0z is not
 * written (a0z = a0 unless a lane is non-finite or its rounding to bf16
 * overflows: then the returned mask is nonzero and nw3_fix reruns the
 * block with split32). */
XK_ALWAYS_INLINE __mmask16 nw3_split_rows(const nw3_job *j, int r0, int r1) {
  const __mmask32 km = kmask(j->K - j->k);
  const __mmask16 k0 = (__mmask16)km, k1 = (__mmask16)(km >> 16);
  /* word i of P into the high half of dword i (ilo: i < 16, ihi: i >= 16), the low halves zeroed by the mask */
  const __m512i ilo = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0, 7, 0, 6, 0, 5, 0, 4, 0,
                                       3, 0, 2, 0, 1, 0, 0, 0);
  const __m512i ihi = _mm512_add_epi16(ilo, _mm512_set1_epi32(16 << 16));
  /* One sum of every a1 + a2 remainder, classified once at the end instead of per row:
   * any non-finite lane makes it inf or NaN. */
  __m512 qs = _mm512_setzero_ps();
  for (int r = r0; r < r1; r++) {
    uint16_t *o0 = j->a0t + 32 * r, *o1 = j->st + 512 + 32 * r, *o2 = j->st + 1024 + 32 * r;
    if (r < j->rows) {
      const float *p = j->x + (j->m + r) * j->xs + j->k;
      const __m512 v0 = _mm512_maskz_loadu_ps(k0, p), v1 = _mm512_maskz_loadu_ps(k1, p + 16);
      const __m512i P = (__m512i)_mm512_cvtne2ps_pbh(v1, v0);
      __m512 h0, h1, g0, g1;
      nw3_widen(P, ilo, ihi, &h0, &h1);
      const __m512 q0 = _mm512_sub_ps(v0, h0), q1 = _mm512_sub_ps(v1, h1);
      qs = _mm512_add_ps(qs, _mm512_add_ps(q0, q1));
      const __m512i Q = (__m512i)_mm512_cvtne2ps_pbh(q1, q0);
      nw3_widen(Q, ilo, ihi, &g0, &g1);
      _mm512_storeu_si512(o0, P);
      _mm512_storeu_si512(o1, Q);
      _mm512_storeu_si512(o2, (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(q1, g1), _mm512_sub_ps(q0, g0)));
    } else {
      const __m512i z = _mm512_setzero_si512();
      _mm512_storeu_si512(o0, z);
      _mm512_storeu_si512(o1, z);
      _mm512_storeu_si512(o2, z);
    }
  }
  return _mm512_fpclass_ps_mask(qs, 0x99); /* inf - inf, NaN - x, finite - inf (overflowed rounding) */
}

/* Job j split by split32 itself (a non-finite or overflowing lane), a0z to st[0]. */
static void nw3_fix(const nw3_job *j) {
  for (int64_t r = 0; r < 16; r++) {
    __m512i v[4];
    if (r < j->rows)
      split32(j->x + (j->m + r) * j->xs + j->k, j->K - j->k, v);
    else
      v[0] = v[1] = v[2] = v[3] = _mm512_setzero_si512();
    _mm512_storeu_si512(j->a0t + 32 * r, v[0]);
    for (int p = 0; p < 3; p++) _mm512_storeu_si512(j->st + 512 * p + 32 * r, v[p + 1]);
  }
}

/* C tiles 0..3 += A (tile 4, loaded from a) . B column tiles of one
 * weight part at wp (tile j at wp + (j / 2) * nbs + (j % 2) * 1024), B in
 * tiles 5-7 in turn; NW3_B2: tiles 0-1. */
#define NW3_B4(wp, nbs)                         \
  do {                                          \
    _tile_loadd(5, (wp), 64);                   \
    _tile_dpbf16ps(0, 4, 5);                    \
    _tile_loadd(6, (wp) + 1024, 64);            \
    _tile_dpbf16ps(1, 4, 6);                    \
    _tile_loadd(7, (wp) + (nbs), 64);           \
    _tile_dpbf16ps(2, 4, 7);                    \
    _tile_loadd(5, (wp) + (nbs) + 1024, 64);    \
    _tile_dpbf16ps(3, 4, 5);                    \
  } while (0)
#define NW3_B2(wp)                              \
  do {                                          \
    _tile_loadd(5, (wp), 64);                   \
    _tile_dpbf16ps(0, 4, 5);                    \
    _tile_loadd(6, (wp) + 1024, 64);            \
    _tile_dpbf16ps(1, 4, 6);                    \
  } while (0)
#define NW3_BP(NC, wp, nbs) \
  do {                      \
    if ((NC) == 4)          \
      NW3_B4(wp, nbs);      \
    else                    \
      NW3_B2(wp);           \
  } while (0)

/* The small products of one k step, (a0z; b2, b1), (a1; b1, b0), (a2; b0),
 * with the next step's split (job nj, when not NULL) issued between them
 * four rows at a time, so the vector work runs while the tile unit works
 * (split first and products after measured ~1.5x slower: the next step's
 * tile loads wait for the split's stores to retire, behind the products).
 * Returns the next split's non-finite mask. */
XK_ALWAYS_INLINE __mmask16 nw3_small(const int NC, const char *a0z, const char *a1, const char *a2, const char *w0,
                                     const char *w1, const char *w2, int64_t nbs, const nw3_job *nj) {
  __mmask16 bad = 0;
  _tile_loadd(4, a0z, 64);
  NW3_BP(NC, w2, nbs);
  if (nj) bad |= nw3_split_rows(nj, 0, 4);
  NW3_BP(NC, w1, nbs);
  if (nj) bad |= nw3_split_rows(nj, 4, 8);
  _tile_loadd(4, a1, 64);
  NW3_BP(NC, w1, nbs);
  if (nj) bad |= nw3_split_rows(nj, 8, 12);
  NW3_BP(NC, w0, nbs);
  if (nj) bad |= nw3_split_rows(nj, 12, 16);
  _tile_loadd(4, a2, 64);
  NW3_BP(NC, w0, nbs);
  return bad;
}

XK_ALWAYS_INLINE void nw3_c_load(const int NC, const float *cp) {
  _tile_loadd(0, cp, 64);
  _tile_loadd(1, cp + 256, 64);
  if (NC == 4) {
    _tile_loadd(2, cp + 512, 64);
    _tile_loadd(3, cp + 768, 64);
  }
}

XK_ALWAYS_INLINE void nw3_c_store(const int NC, float *cp) {
  _tile_stored(0, cp, 64);
  _tile_stored(1, cp + 256, 64);
  if (NC == 4) {
    _tile_stored(2, cp + 512, 64);
    _tile_stored(3, cp + 768, 64);
  }
}

XK_ALWAYS_INLINE void nw3_tile_nc(const int NC, const xk_linear_args *a, int64_t t, char *base, const nw3_ws *L) {
  const int64_t m0 = t * a->tile_m, m1 = min64(a->m, m0 + a->tile_m);
  const int64_t K = a->k, ks = cdiv(K, 32), np = cdiv(a->n, 32), part = np * ks * 2048; /* bytes per part */
  const int64_t nxb = cdiv(m1 - m0, 16);
  uint16_t *abuf = (uint16_t *)(base + L->abuf), *stage = (uint16_t *)(base + L->stage);
  float *cpart = (float *)(base + L->cpart), *ctmp = (float *)(base + L->ctmp);
  const float *x = (const float *)a->x;
  const char *W = (const char *)a->w;
  const int nt = out_nt(a);
  if (ks == 0) { /* K = 0: out = bias */
    memset(ctmp, 0, 4096);
    for (int64_t m = m0; m < m1; m += 16) nw_epilogue(a, ctmp, m, min64(16, m1 - m), 0);
    return;
  }
  const int spill = nxb > 1; /* one x block keeps C in its tiles throughout */
  const int64_t ks1 = L->ks1, ks2 = L->ks2, pfd = L->pfd;
  const int64_t nkb = cdiv(ks, ks1);
  /* first pass: the small products, ks1 steps a block; each step's split is done during the step before */
  nw3_job job[2];
  int cur = 0, bad = 0;
  job[0] = (nw3_job){x, a->x_stride, m0, min64(16, m1 - m0), 0, K, abuf, stage};
  if (nw3_split_rows(&job[0], 0, 16)) {
    nw3_fix(&job[0]);
    bad = 1;
  }
  for (int64_t g0 = 0; g0 < ks; g0 += ks1) {
    const int64_t g1 = min64(ks, g0 + ks1);
    for (int64_t xb = 0; xb < nxb; xb++) {
      float *cp = cpart + 1024 * xb;
      /* x of the block pfd blocks on (in this pass's order, then the next tile's rows) into L2, two
       * lines of each of its rows a step */
      const int64_t q = (g0 / ks1) * nxb + xb + pfd;
      const int64_t pm = q < nkb * nxb ? m0 + 16 * (q % nxb) : m1 + 16 * (q - nkb * nxb);
      const int64_t pk = q < nkb * nxb ? 32 * ks1 * (q / nxb) : 0;
      const char *px = (const char *)(x + min64(pm, a->m - 1) * a->x_stride + pk);
      const int64_t prow = min64(16, a->m - pm), plines = cdiv(min64(32 * ks1, K - pk) * 4, 64);
      if (g0 == 0) {
        _tile_zero(0);
        _tile_zero(1);
        if (NC == 4) {
          _tile_zero(2);
          _tile_zero(3);
        }
      } else if (spill) {
        nw3_c_load(NC, cp);
      }
      for (int64_t g = g0; g < g1; g++) {
        for (int64_t l = 2 * (g - g0); l < 2 * (g - g0) + 2 && l < plines; l++)
          for (int64_t r = 0; r < prow; r++) _mm_prefetch(px + r * a->x_stride * 4 + 64 * l, _MM_HINT_T1);
        /* the next step in this pass's order: the next k step of the block, the next x block, the next k block */
        int64_t nxb_ = xb, ng = g + 1;
        if (ng == g1) {
          ng = g0;
          if (++nxb_ == nxb) {
            nxb_ = 0;
            ng = g1;
          }
        }
        nw3_job *nj = NULL;
        if (ng < ks) {
          const int64_t m = m0 + 16 * nxb_;
          nj = &job[cur ^ 1];
          *nj = (nw3_job){x, a->x_stride, m, min64(16, m1 - m), 32 * ng, K, abuf + 512 * (nxb_ * ks + ng),
                          stage + 1536 * (cur ^ 1)};
        }
        const nw3_job *cj = &job[cur];
        const int64_t kb = g / PK_KCS, s = g % PK_KCS, sts = pk_steps(K, kb);
        const char *w0 = W + 2048 * (kb * PK_KCS * np + s);
        const __mmask16 nbad = nw3_small(NC, (const char *)(bad ? cj->st : cj->a0t), (const char *)(cj->st + 512),
                                         (const char *)(cj->st + 1024), w0, w0 + part, w0 + 2 * part, 2048 * sts, nj);
        bad = 0;
        if (nbad) {
          nw3_fix(nj);
          bad = 1;
        }
        cur ^= 1;
      }
      if (spill) nw3_c_store(NC, cp);
    }
  }
  /* second pass: a0 b0 over the whole K, then the epilogue */
  for (int64_t g0 = 0; g0 < ks; g0 += ks2) {
    const int64_t g1 = min64(ks, g0 + ks2);
    const int last = g1 == ks;
    for (int64_t xb = 0; xb < nxb; xb++) {
      const int64_t m = m0 + 16 * xb, rows = min64(16, m1 - m);
      float *cp = cpart + 1024 * xb;
      if (spill) nw3_c_load(NC, cp);
      for (int64_t g = g0; g < g1; g++) {
        const int64_t kb = g / PK_KCS, s = g % PK_KCS, sts = pk_steps(K, kb);
        const char *w0 = W + 2048 * (kb * PK_KCS * np + s);
        _tile_loadd(4, abuf + 512 * (xb * ks + g), 64);
        NW3_BP(NC, w0, 2048 * sts);
      }
      if (last) {
        nw3_c_store(NC, ctmp);
        nw_epilogue(a, ctmp, m, rows, nt);
      } else if (spill) {
        nw3_c_store(NC, cp);
      }
    }
  }
}

static void nw3_tile(const xk_linear_args *a, int64_t t, char *base, const nw3_ws *L) {
  if (a->n > 32)
    nw3_tile_nc(4, a, t, base, L);
  else
    nw3_tile_nc(2, a, t, base, L);
}

void xk_linear_gemm_amx(const xk_linear_args *a, int64_t tile_begin, int64_t tile_end, void *workspace) {
  if (a->w_kind == XK_WEIGHT_PACKED_AMX3 && a->m <= 16) { /* decode: no tiles, see pk3_gemv */
    for (int64_t t = tile_begin; t < tile_end; t++) pk3_gemv(a, t * a->tile_n, min64(a->n, (t + 1) * a->tile_n));
    return;
  }
  if (a->w_kind == XK_WEIGHT_PACKED_AMX3 && a->bf16_pairs == AMX_NARROW) { /* see nw3_tile */
    const nw3_ws L = nw3_layout(a);
    char *base = (char *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
    xk_amx_config_16x64();
    for (int64_t t = tile_begin; t < tile_end; t++) nw3_tile(a, t, base, &L);
    _tile_release();
    _mm_sfence();
    return;
  }
  if (a->w_kind == XK_WEIGHT_PACKED_AMX || a->w_kind == XK_WEIGHT_PACKED_AMX3) {
    const pk_ws L = pk_layout(a);
    char *base = (char *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
    xk_amx_config_16x64();
    for (int64_t t = tile_begin; t < tile_end; t++) pk_tile(a, t, base, &L);
    _tile_release();
    _mm_sfence(); /* the epilogue's streaming stores, before the caller's join */
    return;
  }
  if (a->bf16_pairs == AMX_NARROW) {
    const nw_ws L = nw_layout(a);
    char *base = (char *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
    xk_amx_config_16x64();
    for (int64_t t = tile_begin; t < tile_end; t++) nw_tile(a, t, base, &L);
    _tile_release();
    _mm_sfence();
    return;
  }
  if (a->bf16_pairs != AMX_PAIRS) {
    xk_linear_gemm_avx512(a, tile_begin, tile_end, workspace);
    return;
  }
  const amx_ws L = ws_layout(a);
  char *base = (char *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
  xk_amx_config_16x64(); /* tile configuration is per-thread state */
  for (int64_t t = tile_begin; t < tile_end; t++) {
    if (a->tile_m <= 16)
      dec_tile(a, t, base, &L);
    else
      gemm_tile(a, t, base, &L);
  }
  _tile_release();
  _mm_sfence(); /* gemm_tile's streaming stores, before the caller's join */
}

/* ---- probe ------------------------------------------------------------------- */

/* bf16 tile peak: independent TDPBF16PS chains on 4 accumulator tiles. */
double xk_probe_bf16_amx(int64_t iters, xk_probe_result *sink) {
  _Alignas(64) uint16_t ab[16 * 32];
  _Alignas(64) float c[256];
  for (int i = 0; i < 16 * 32; i++) ab[i] = (uint16_t)(i & 1 ? 0x3380 : 0x3f80); /* 1, 2^-24 */
  xk_amx_config_16x64();
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

void xk_gdn_amx_install(xk_kernel_table *t); /* gdn_chunk.c */
void xk_kv_amx_install(xk_kernel_table *t);  /* kv_vbmi.c */
int64_t xk_attn_workspace_amx(const xk_attn_args *a);                              /* attn_decode.c */
void xk_attn_paged_amx(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end); /* attn_decode.c */
void xk_attn_varlen_amx(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end); /* attn_decode.c */
void xk_attn_prefill_amx_install(xk_kernel_table *t); /* attn_prefill.c */

void xk_amx_table_init(xk_kernel_table *t) {
  *t = xk_kernels_avx512;
  t->name = "amx";
  t->linear_gemm_plan = xk_linear_gemm_plan_amx;
  t->linear_gemm = xk_linear_gemm_amx;
  t->linear_pack_w = xk_linear_pack_w_amx;
  t->linear_pack_x = xk_linear_pack_x_amx;
  t->linear_pack_w3 = xk_linear_pack_w3_amx;
  t->probe_bf16 = xk_probe_bf16_amx;
  xk_gdn_amx_install(t);
  xk_kv_amx_install(t);
  t->attn_workspace = xk_attn_workspace_amx;
  t->attn_paged = xk_attn_paged_amx;
  t->attn_varlen = xk_attn_varlen_amx;
  /* After the decode entries: the prefill path keeps them as its fallback
   * (its workspace is the larger of the two). */
  xk_attn_prefill_amx_install(t);
}
