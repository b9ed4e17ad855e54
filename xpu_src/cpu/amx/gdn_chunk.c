/*
 * chunk_gated_delta_rule on the AMX tile unit, for bf16 q and k (other
 * dtypes run the avx512 fp32 kernel, compiled into this unit from gdn.c).
 *
 * The algorithm is gdn.c's (chunks of CHUNK tokens in the UT form, the value
 * heads of a key head after their shared key part); what changes is where the
 * big products run:
 *   - q and k enter the products raw (bf16, exact): l2norm and scale become
 *     per-row factors rk_i, rq_i applied in fp32 to the products' results
 *     (k_i = rk_i k_raw_i), so no normalised vector is ever rounded;
 *   - [k; q] [k; q]^T (the Gram, 2C x C) is one AMX product of exact bf16
 *     operands with fp32 accumulation: every product is exact;
 *   - [k; q] S (2C x V, for D and o) and k^T Dt (K x V, the state update)
 *     have an fp32 operand (S, Dt = exp(G_last - G) rk D), split into
 *     x = hi + lo with hi = bf16(x), lo = bf16(x - hi): two tile products
 *     (the split doubles the reduction dimension: A [a | a], B [hi; lo]).
 *     What the split drops is below 2^-17 |x| per element (about 2^-18 after
 *     rounding to nearest), so these products carry about fp32 accuracy;
 *   - P D runs on the tiles with both operands split (Ph Dh + Ph Dl + Pl Dh);
 *   - the triangular solve (D = (I + A)^-1 W) runs in two 32-row halves on
 *     gdn.c's fp32 register tiles, the block between them (A[32:, :32]
 *     D[:32]) on the tiles, split as in P D; the decay factors stay fp32.
 * The state update accumulates into exp(G_last) S on the tiles themselves;
 * each finished block of the new state is split (for the next chunk's
 * [k; q] S) and scaled by the next chunk's exp(G_last) while still in L1.
 * o rows leave through streaming stores (whole cache lines; no read for
 * ownership), so the prefetch of the next rows carries q, k, v only.
 * Measured against the recurrent kernel: see chunk_gated_delta_rule in
 * src/ops/gdn.rs. TDPBF16PS flushes bf16 denormal
 * inputs (|x| < 1.2e-38) to zero, which only touches lo parts far below the
 * rounding of their hi. Per element the work order is fixed by K, V and the
 * chunk boundaries only, so results do not depend on head batching or
 * threads.
 *
 * Where the time is not (harness, T = 4096, all buffers on cache lines,
 * about 45-46 ms best of 16): with every B load and TDPBF16PS dropped the
 * kernel still takes ~43.5 ms, so the tile unit is not the limit; dropping
 * the solve saves ~6 ms, the state split ~3 ms, the prefetch walk costs
 * ~2 ms when removed. Tried and measured neutral (within 1%, session 6):
 * the solve's tiles (or P D's blocks) issued between the tile steps of the
 * [k; q] S and P D products, o rows written a few per state-update block,
 * the state update on zeroed tiles added to S by the split pass, column
 * panels outer in the products, B tiles reloaded two products after their
 * last use, prefetching the next block's B or C rows, AMX_HEADS 2/4/16,
 * other AMX_PF_GEMM / AMX_PF_TILE values; plain stores for aligned o rows
 * cost ~5 ms.
 * Session 8 (harness, thread CPU time, old and new interleaved, load 3-5):
 * per-phase rdtsc split X = [k; q] S 25%, solve 21%, state update 19%, o
 * out 9%, key part 10%, P D 7%, v load 5%; rerunning a phase on warm data
 * saves only 15-25%, so the phases are slow in themselves, not for misses
 * (a bare X block loop runs 7.7-8.1 ns per TDPBF16PS against 4.3 without
 * its tile loads). The vector work pays for the tile unit too: a zmm FMA
 * loop that also issues one tile op (load, store, zero or TDPBF16PS) every
 * 25k FMA cycles reaches 144 GFLOP/s instead of 242 (one every 100 cycles:
 * 116); a single tile op after a quiet spell costs ~2 us; a dependent
 * scalar imul chain slows 11% (a power state of the core, not the ports).
 * So every fp32 step here runs at ~60% of the probed FMA peak. Neutral (within 1-2%): X and the update with column
 * panels outer or in 64-row groups, prefetching (and prefetchw) the solve
 * tiles' rows, the q/k/v walk with prefetcht1/t2, q and k rows copied
 * inline instead of memcpy, the split of Dt moved between P D's blocks, o
 * written from P D's blocks (one block late), each panel's block of the
 * solve issued before the previous panel's lower half, exp(G_i - G_j) as a
 * product of two factors per 16-column group. Not kept for accuracy: q S
 * on S's hi part only (as fla's bf16 state) is 4-5% faster but raises o's
 * error to ~1.1e-3 rmse/rms (from ~5e-5).
 * Session 9 (harness, load 3-4): amx_gemm forced inline at its three call
 * sites (constant reps, aks, tri) is neutral; replacing every scalar read
 * of g and beta (amx_gates_load and the next chunk's decay sum) by
 * constants saves only ~1% (0.4-0.6 ms of ~51).
 */
#include <immintrin.h>

/* The fp32 kernels under their own suffix (the fallback and the shared pieces). */
#undef XK_TIER
#define XK_TIER amx_gdn
#include "../gdn.c"
#include "amx_tiles.h"
#undef XK_TIER
#define XK_TIER amx

/* Input and output cache lines of the next head's (or chunk's) rows fetched
 * per tile step of the products and per fp32 register tile: spread thin, so
 * that the compute's own loads never queue behind a burst of misses. */
#ifndef AMX_HEADS
#define AMX_HEADS CHUNK_HEADS
#endif
#ifndef AMX_PF_GEMM
#define AMX_PF_GEMM 4
#endif
#ifndef AMX_PF_TILE
#define AMX_PF_TILE 8
#endif

/* Operand geometry: K and V padded to whole 32-wide tile steps. */
typedef struct amx_ws {
  chunk_ws w;         /* fp32 pieces (Vm, A, P, D, O, Gc, beta, eG, eL, Gk, Gq), rows ld apart */
  int64_t Kp, Vp, ld; /* ld: row stride (floats / words) of the [.][V] buffers, >= Vp */
  uint16_t *AB;       /* [2C][Kp] raw k rows then raw q rows, zero past the chunk */
  uint16_t *KTa;      /* [Kp][C] raw k transposed (A operand of the state update) */
  uint32_t *KTv;      /* [Kp/2][C] pairs of raw k^T (B operand of the Gram) */
  float *Gm;          /* [2C][C] k k^T then q k^T (the w.Gk / w.Gq pair) */
  float *X;           /* [2C][ld] k S then q S (raw k, q) */
  uint32_t *Sp;       /* per state [Kp][ld] (spst words apart): pairs of S rows, hi (rows < Kp/2) then lo */
  int64_t spst;
  uint32_t *Dv;       /* [C][ld] pairs of Dt rows: hi (rows < C/2) then lo */
  uint16_t *Ph, *Pl;  /* [C][C] P split: bf16 hi and lo parts (zero above the diagonal) */
  uint32_t *Dp;       /* [C][ld] pairs of D rows: hi (rows < C/2) then lo */
  uint16_t *Ah, *Al;  /* [C/2][C/2] A's block of rows C/2.., columns ..C/2 split: bf16 hi and lo */
  float *rk, *rq;     /* [C] row factors of k and q (0 past the chunk) */
  float *tmp;         /* [max(Kp, Vp)] */
  float *S;           /* states [Kp][ld], sst floats apart */
  int64_t sst;
} amx_ws;

static int64_t amx_ld(int64_t Vp) { return 16 * ((Vp / 16) | 1); }

static int64_t amx_layout(int64_t K, int64_t V, int64_t G, float *base, amx_ws *x) {
  const int64_t C = CHUNK, Kp = round_up(K, 32), Vp = round_up(V, 32), ld = amx_ld(Vp);
  void *p[21];
  const int64_t sizes[] = {C * ld, C * C,  C * C,  C * ld,  C * ld,   C,  C,  C,  C, /* Vm A P D O Gc beta eG eL */
                           C * Kp,    /* AB (2C x Kp bf16) */
                           Kp * C / 2, /* KTa */
                           Kp * C / 2, /* KTv */
                           2 * C * C, 2 * C * ld, G * Kp * ld, C * ld,
                           C * C / 2, C * C / 2, C * ld, /* Ph Pl Dp */
                           C * C / 8, C * C / 8}; /* Ah Al */
  int64_t off = 0;
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
    p[i] = base ? (void *)(base + off) : NULL;
    off += round_up(sizes[i], 16);
  }
  const int64_t rmax = round_up(Kp > Vp ? (Kp > C ? Kp : C) : (Vp > C ? Vp : C), 16);
  const int64_t extra = 3 * rmax;
  float *rest = base ? base + off : NULL;
  off += extra;
  x->sst = Kp * ld;
  float *S = base ? base + off : NULL;
  off += G * x->sst;
  if (!base) return off;
  chunk_ws *w = &x->w;
  memset(w, 0, sizeof *w);
  w->Vm = p[0], w->A = p[1], w->P = p[2], w->D = p[3], w->O = p[4];
  w->Gc = p[5], w->beta = p[6], w->eG = p[7], w->eL = p[8];
  x->AB = p[9], x->KTa = p[10], x->KTv = p[11], x->Gm = p[12], x->X = p[13], x->Sp = p[14], x->Dv = p[15];
  x->Ph = p[16], x->Pl = p[17], x->Dp = p[18];
  x->Ah = p[19], x->Al = p[20];
  w->Gk = x->Gm, w->Gq = x->Gm + C * C;
  x->rk = rest, x->rq = rest + rmax, x->tmp = rest + 2 * rmax;
  x->S = S;
  x->spst = Kp * ld;
  w->K = K, w->V = V, w->ldv = ld, w->ldk = Kp, w->nst = G;
  x->Kp = Kp, x->Vp = Vp, x->ld = ld;
  return off;
}

int64_t xk_gdn_scratch_floats_amx_tiles(int64_t K, int64_t V, int32_t chunked) {
  const int64_t fp32 = XK_CAT3(xk_gdn_scratch_floats, _, amx_gdn)(K, V, chunked);
  if (!chunked) return fp32;
  amx_ws x;
  const int64_t amx = amx_layout(K, V, chunked < AMX_HEADS ? chunked : AMX_HEADS, NULL, &x) + 16;
  return amx > fp32 ? amx : fp32;
}

static void amx_split_state(const amx_ws *x, float *S, uint32_t *Sp, float decay, int64_t u0, int64_t u1,
                            int64_t c0, int64_t c1);
static void amx_decay_rows(const amx_ws *x, int64_t i0, int64_t i1);

/* The walk over the next rows (gdn.c's chunk_pf order: q, k, v of a token,
 * token after token; o is written by streaming stores, so none of its lines
 * is fetched), with each part's row address precomputed. When the next
 * value head shares this one's key head, its q and k rows are the ones
 * already loaded: the walk takes v alone. */
typedef struct amx_pfw {
  const char *base[3];
  int64_t stride[3], bytes[3];
  int64_t t, t1, part, line, first;
} amx_pfw;

static amx_pfw amx_pf_init(const xk_gdn_args *a, int64_t row, chunk_next next, int same_key_head) {
  amx_pfw w;
  const xk_gdn_tensor *ts[3] = {&a->q, &a->k, &a->v};
  for (int i = 0; i < 3; i++) {
    const int64_t sz = xk_dtype_size(ts[i]->dtype);
    w.base[i] = gdn_ptr(ts[i], row, 0, i == 2 ? next.hv : next.h);
    w.stride[i] = ts[i]->s_tok * sz;
    w.bytes[i] = (i == 2 ? a->head_v_dim : a->head_k_dim) * sz;
    /* From the row's first line (rows need not start on one). */
    const int64_t off = (int64_t)((uintptr_t)w.base[i] & 63);
    w.base[i] -= off, w.bytes[i] += off;
  }
  w.t = next.t0, w.t1 = next.t1, w.first = same_key_head ? 2 : 0, w.part = w.first, w.line = 0;
  return w;
}

static inline void amx_pf_step(const xk_gdn_args *a, int64_t row, amx_pfw *w, int lines) {
  (void)a, (void)row;
  for (int n = 0; n < lines && w->t < w->t1; n++) {
    __builtin_prefetch(w->base[w->part] + w->t * w->stride[w->part] + w->line, 0, 3);
    w->line += 64;
    if (w->line >= w->bytes[w->part]) {
      w->line = 0;
      if (++w->part == 3) w->part = w->first, w->t++;
    }
  }
}

/* One o row (V floats): rounded to o's dtype in `tmp`, then copied out with
 * streaming stores for its whole cache lines (no line of o is read for
 * ownership; the partial lines at the ends, shared with the neighbouring
 * rows, are stored plainly). */
static void amx_stream_o(const xk_gdn_args *a, int64_t row, int64_t tok, int64_t hv, const float *o, char *tmp) {
  const int64_t sz = xk_dtype_size(a->o_dtype), bytes = a->head_v_dim * sz;
  char *dst = (char *)a->o + (row * a->o_s_seq + tok * a->o_s_tok + hv * a->o_s_head) * sz;
  if (a->o_dtype == XK_BF16) { /* round to nearest even, as xk_convert_row */
    for (int64_t j = 0; j < a->head_v_dim; j += 32) {
      const int64_t n = a->head_v_dim - j;
      const __m512 lo = _mm512_maskz_loadu_ps(cm_of(n), o + j), hi = _mm512_maskz_loadu_ps(cm_of(n - 16), o + j + 16);
      _mm512_mask_storeu_epi16(tmp + 2 * j, n >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << n) - 1),
                               (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  } else {
    la_store_row(tmp, a->o_dtype, o, a->head_v_dim, 1);
  }
  int64_t head = (int64_t)((64 - ((uintptr_t)dst & 63)) & 63);
  if (head > bytes) head = bytes;
  memcpy(dst, tmp, (size_t)head);
  int64_t i = head;
  for (; i + 64 <= bytes; i += 64) _mm512_stream_si512((void *)(dst + i), _mm512_loadu_si512(tmp + i));
  memcpy(dst + i, tmp + i, (size_t)(bytes - i));
}

/* ---- tiles ------------------------------------------------------------------- */

/*
 * C[M][N] (=, or += when acc) sum over r < reps, s < aks of A[., 32 s .. +
 * 32) . B[rows 16 (r aks + s) .. + 16]: A row-major bf16 (lda elements a
 * row), B in pairs (VNNI, ldb words a row), C fp32 (ldc floats a row). M, N
 * multiples of 32; 2 x 2 blocks of C tiles, each A tile pair used for all
 * reps (the hi and lo halves of a split B). Every C element sums its steps
 * in the same fixed order.
 */
static void amx_gemm(float *C, int64_t ldc, const uint16_t *A, int64_t lda, int64_t aks, const uint32_t *B,
                     int64_t ldb, int64_t reps, int64_t M, int64_t N, int acc, const xk_gdn_args *a, int64_t row,
                     amx_pfw *pf, const amx_ws *sx, uint32_t *Sp, float decay, const amx_ws *side, int64_t tri) {
  int64_t pm = -1, pn = 0; /* the last finished block, split one block late */
  /* `side`: rows of A and P computed a few per block, while the tiles work. */
  const int64_t per = side ? (CHUNK + (M / 32) * ((N + 31) / 32) - 1) / ((M / 32) * ((N + 31) / 32)) : 0;
  int64_t srow = 0;
  for (int64_t m0 = 0; m0 < M; m0 += 32) {
    for (int64_t n0 = 0; n0 < N; n0 += 32) {
      if (tri && n0 > m0 % tri) continue; /* a block above the diagonal of [k; q] k^T */
      float *c = C + m0 * ldc + n0;
      if (acc) {
        xk_amx_load_c2x2(c, ldc);
      } else {
        xk_amx_zero_c2x2();
      }
      for (int64_t s = 0; s < aks; s++) {
        const uint16_t *ap = A + m0 * lda + 32 * s;
        _tile_loadd(4, ap, lda * 2);
        _tile_loadd(5, ap + 16 * lda, lda * 2);
        for (int64_t r = 0; r < reps; r++) xk_amx_dp_b2(B + 16 * (r * aks + s) * ldb + n0, ldb * 4);
        if (pf) amx_pf_step(a, row, pf, AMX_PF_GEMM);
      }
      /* The state update splits the previous block for the next chunk here,
       * while the tile unit works on this one. */
      if (Sp && pm >= 0) amx_split_state(sx, C, Sp, decay, pm / 2, pm / 2 + 16, pn, pn + 32);
      if (side && srow < CHUNK) {
        amx_decay_rows(side, srow, srow + per < CHUNK ? srow + per : CHUNK);
        srow += per;
      }
      xk_amx_store_c2x2(c, ldc);
      pm = m0, pn = n0;
    }
  }
  if (Sp && pm >= 0) amx_split_state(sx, C, Sp, decay, pm / 2, pm / 2 + 16, pn, pn + 32);
  if (side && srow < CHUNK) amx_decay_rows(side, srow, CHUNK);
}

/* Rows a and b (16 columns each) as 16 pairs (a_j, b_j): hi = the pair of
 * their bf16 roundings (to nearest even), lo = the pair of the remainders'. */
static inline void split_pair(__m512 a, __m512 b, __m512i *hi, __m512i *lo) {
  /* cvtne2ps gives [bf16 a | bf16 b]; the permutation interleaves the halves. */
  const __m512i inter = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i h = _mm512_permutexvar_epi16(inter, (__m512i)_mm512_cvtne2ps_pbh(b, a));
  const __m512 ra = _mm512_sub_ps(a, _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)));
  const __m512 rb = _mm512_sub_ps(b, _mm512_castsi512_ps(_mm512_and_si512(h, _mm512_set1_epi32((int)0xffff0000u))));
  *hi = h;
  *lo = _mm512_permutexvar_epi16(inter, (__m512i)_mm512_cvtne2ps_pbh(rb, ra));
}

/* ---- the chunk ----------------------------------------------------------------- */

/* Key head h, Cn tokens from tok0: raw rows, their factors, k^T both ways, the Gram. */
static void amx_keys(const xk_gdn_args *a, const amx_ws *x, gdn_seq seq, int64_t tok0, int64_t Cn, int64_t h) {
  const int64_t K = x->w.K, Kp = x->Kp, C = CHUNK;
  for (int64_t i = 0; i < C; i++) {
    uint16_t *kr = x->AB + i * Kp, *qr = x->AB + (C + i) * Kp;
    if (i < Cn) {
      const uint16_t *ks = (const uint16_t *)gdn_ptr(&a->k, seq.row, tok0 + i, h);
      const uint16_t *qs = (const uint16_t *)gdn_ptr(&a->q, seq.row, tok0 + i, h);
      memcpy(kr, ks, (size_t)K * 2);
      memcpy(qr, qs, (size_t)K * 2);
      memset(kr + K, 0, (size_t)(Kp - K) * 2);
      memset(qr + K, 0, (size_t)(Kp - K) * 2);
      float rk = 1.0f, rq = a->scale;
      if (a->use_qk_l2norm) { /* as gdn_load_qk; the squares of bf16 elements are exact */
        __m512 sk = _mm512_setzero_ps(), sq = _mm512_setzero_ps();
        for (int64_t d = 0; d < Kp; d += 32) {
          const __m512bh kv = (__m512bh)_mm512_loadu_si512(kr + d), qv = (__m512bh)_mm512_loadu_si512(qr + d);
          sk = _mm512_dpbf16_ps(sk, kv, kv);
          sq = _mm512_dpbf16_ps(sq, qv, qv);
        }
        rk = 1.0f / sqrtf(_mm512_reduce_add_ps(sk) + 1e-6f);
        rq = a->scale / sqrtf(_mm512_reduce_add_ps(sq) + 1e-6f);
      }
      x->rk[i] = rk, x->rq[i] = rq;
    } else {
      memset(kr, 0, (size_t)Kp * 2);
      memset(qr, 0, (size_t)Kp * 2);
      x->rk[i] = 0.0f, x->rq[i] = 0.0f;
    }
  }
  /* KTv[u][j] = pair u of k row j (a 32-bit transpose); KTa[d][i] = k[i][d]. */
  chunk_transpose((const float *)x->AB, Kp / 2, (float *)x->KTv, C, C, Kp / 2);
  for (int64_t u = 0; u < Kp / 2; u++) {
    for (int64_t j = 0; j < C; j += 16) {
      const __m512i p = _mm512_loadu_si512(x->KTv + u * C + j);
      _mm256_storeu_si256((__m256i *)(x->KTa + 2 * u * C + j), _mm512_cvtepi32_epi16(p));
      _mm256_storeu_si256((__m256i *)(x->KTa + (2 * u + 1) * C + j), _mm512_cvtepi32_epi16(_mm512_srli_epi32(p, 16)));
    }
  }
  /* Raw products (the factors rk, rq enter in amx_decay_rows); blocks
   * above the diagonal, which nothing reads, are skipped. */
  amx_gemm(x->Gm, C, x->AB, Kp, Kp / 32, x->KTv, C, 1, 2 * C, C, 0, a, seq.row, NULL, NULL, NULL, 0.0f, NULL, C);
}

/* Row pairs [u0, u1), columns [c0, c1) of S into hi/lo pairs (Sp), and S *= decay. */
static void amx_split_state(const amx_ws *x, float *S, uint32_t *Sp, float decay, int64_t u0, int64_t u1,
                            int64_t c0, int64_t c1) {
  const int64_t Kp = x->Kp, ld = x->ld;
  const __m512 e = _mm512_set1_ps(decay);
  for (int64_t u = u0; u < u1; u++) {
    float *s0 = S + 2 * u * ld, *s1 = s0 + ld;
    uint32_t *hi = Sp + u * ld, *lo = Sp + (Kp / 2 + u) * ld;
    for (int64_t c = c0; c < c1; c += 16) {
      const __m512 a = _mm512_loadu_ps(s0 + c), b = _mm512_loadu_ps(s1 + c);
      __m512i h, l;
      split_pair(a, b, &h, &l);
      _mm512_storeu_si512(hi + c, h);
      _mm512_storeu_si512(lo + c, l);
      _mm512_storeu_ps(s0 + c, _mm512_mul_ps(e, a));
      _mm512_storeu_ps(s1 + c, _mm512_mul_ps(e, b));
    }
  }
}

/* D rows [i0, i0 + TMR) of one panel: beta (v - exp(G) rk (k S)), minus A D
 * over the rows before, the tile's triangle solved in registers; Dt = exp(G_last
 * - G) rk D stored split into pairs for the state update. */
static ALWAYS_INLINE void amx_solve_tile(const amx_ws *x, int64_t i0, int64_t j0, const tmask *m, int64_t p0,
                                         const float *Y, const uint16_t *const *vrows) {
  const chunk_ws *w = &x->w;
  const int64_t C = CHUNK, ld = x->ld;
  const float *rows[TMR];
  tile t;
#pragma GCC unroll 8
  for (int r = 0; r < TMR; r++) {
    const cv_t eg = cv_set1(w->eG[i0 + r] * x->rk[i0 + r]), b = cv_set1(w->beta[i0 + r]);
    const float *vr = w->Vm + (i0 + r) * ld + j0, *xr = x->X + (i0 + r) * ld + j0;
#pragma GCC unroll 16
    for (int v = 0; v < TNV; v++) {
      cv_t vin;
      if (vrows) { /* bf16 v rows, widened */
        const __m256i vb = _mm256_maskz_loadu_epi16(m->m[v], vrows[i0 + r] + j0 + v * CV_L);
        vin = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(vb), 16));
      } else {
        vin = cv_load(vr + v * CV_L, m->m[v]);
      }
      const cv_t u = cv_fnmadd(eg, cv_load(xr + v * CV_L, m->m[v]), vin);
      t.c[r][v] = Y ? _mm512_fmsub_ps(b, u, cv_load(Y + (i0 + r) * ld + j0 + v * CV_L, m->m[v])) : cv_mul(b, u);
    }
  }
  for (int r = 0; r < TMR; r++) rows[r] = w->A + (i0 + r) * C + p0;
  tile_madd(&t, i0 - p0, rows, w->D + p0 * ld + j0, ld, m, 1, TNV);
#pragma GCC unroll 8
  for (int r = 1; r < TMR; r++) {
#pragma GCC unroll 8
    for (int j = 0; j < r; j++) {
      const cv_t f = cv_set1(w->A[(i0 + r) * C + i0 + j]);
#pragma GCC unroll 16
      for (int v = 0; v < TNV; v++) t.c[r][v] = cv_fnmadd(f, t.c[j][v], t.c[r][v]);
    }
  }
  tile_store(&t, w->D + i0 * ld + j0, ld, TMR, m, TNV);
#pragma GCC unroll 4
  for (int r = 0; r < TMR; r += 2) {
    const int64_t u = (i0 + r) / 2;
#pragma GCC unroll 16
    for (int v = 0; v < TNV; v++) {
      __m512i h, l;
      split_pair(t.c[r][v], t.c[r + 1][v], &h, &l);
      _mm512_storeu_si512(x->Dp + u * ld + j0 + v * CV_L, h);
      _mm512_storeu_si512(x->Dp + (C / 2 + u) * ld + j0 + v * CV_L, l);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < TMR; r += 2) {
    const cv_t e0 = cv_set1(w->eL[i0 + r] * x->rk[i0 + r]), e1 = cv_set1(w->eL[i0 + r + 1] * x->rk[i0 + r + 1]);
    const int64_t u = (i0 + r) / 2;
#pragma GCC unroll 16
    for (int v = 0; v < TNV; v++) {
      __m512i h, l;
      split_pair(cv_mul(e0, t.c[r][v]), cv_mul(e1, t.c[r + 1][v]), &h, &l);
      _mm512_storeu_si512(x->Dv + u * ld + j0 + v * CV_L, h);
      _mm512_storeu_si512(x->Dv + (C / 2 + u) * ld + j0 + v * CV_L, l);
    }
  }
}

/* Rows [i0, i1) of the decayed A and P (gdn.c's chunk_decay_rows), and of P
 * split into bf16 hi and lo parts (zero above the diagonal) for amx_pd. */
static void amx_decay_rows(const amx_ws *x, int64_t i0, int64_t i1) {
  const int64_t C = CHUNK;
  const chunk_ws *w = &x->w;
  /* chunk_decay_rows on the raw products: A_ij = beta_i rk_i rk_j exp(G_i -
   * G_j) k_i . k_j (j < i), P_ij = rq_i rk_j exp(G_i - G_j) q_i . k_j (j <= i),
   * zero above the diagonal inside each row tile. */
  for (int64_t i = i0; i < i1; i++) {
    float *arow = w->A + i * C, *prow = w->P + i * C;
    const float *gk = w->Gk + i * C, *gq = w->Gq + i * C;
    const int64_t lim = (i / TMR + 1) * TMR;
    const __m512 gi = _mm512_set1_ps(w->Gc[i]), b = _mm512_set1_ps(w->beta[i] * x->rk[i]);
    const __m512 fq = _mm512_set1_ps(x->rq[i]);
    for (int64_t j0 = 0; j0 < lim; j0 += 16) {
      const __mmask16 m = cm_of(lim - j0);
      /* exp(G_i - G_j); lanes j > i may overflow and are zeroed. */
      const __m512 e = _mm512_mul_ps(la_exp16(_mm512_sub_ps(gi, _mm512_maskz_loadu_ps(m, w->Gc + j0))),
                                     _mm512_maskz_loadu_ps(m, x->rk + j0));
      const __m512 ak = _mm512_mul_ps(b, _mm512_mul_ps(e, _mm512_maskz_loadu_ps(m, gk + j0)));
      const __m512 pq = _mm512_mul_ps(fq, _mm512_mul_ps(e, _mm512_maskz_loadu_ps(m, gq + j0)));
      _mm512_mask_storeu_ps(arow + j0, m, _mm512_maskz_mov_ps(cm_of(i - j0), ak));
      _mm512_mask_storeu_ps(prow + j0, m, _mm512_maskz_mov_ps(cm_of(i + 1 - j0), pq));
    }
  }
  for (int64_t i = i0; i < i1; i++) {
    for (int64_t j = 0; j < C; j += 16) {
      const __m512 p = _mm512_maskz_loadu_ps(cm_of(i + 1 - j), x->w.P + i * C + j);
      const __m256bh h = _mm512_cvtneps_pbh(p);
      const __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
      _mm256_storeu_si256((__m256i *)(x->Ph + i * C + j), (__m256i)h);
      _mm256_storeu_si256((__m256i *)(x->Pl + i * C + j), (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(p, hf)));
    }
    if (i >= C / 2) { /* the off-diagonal block of A for amx_solve's tile product */
      for (int64_t j = 0; j < C / 2; j += 16) {
        const __m512 p = _mm512_loadu_ps(x->w.A + i * C + j);
        const __m256bh h = _mm512_cvtneps_pbh(p);
        const __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
        _mm256_storeu_si256((__m256i *)(x->Ah + (i - C / 2) * (C / 2) + j), (__m256i)h);
        const __m256i lo = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(p, hf));
        _mm256_storeu_si256((__m256i *)(x->Al + (i - C / 2) * (C / 2) + j), lo);
      }
    }
  }
}

/* D = (I + A)^-1 W in two row halves: the first half solved in registers,
 * then Y = A[C/2.., ..C/2] D[..C/2] on the tiles (A and D split into hi + lo
 * as in amx_pd), then the second half solved against W - Y. */
static void amx_solve(const xk_gdn_args *a, const amx_ws *x, int64_t row, amx_pfw *pf, const uint16_t *const *vrows) {
  const int64_t C = CHUNK, V = x->w.V, Vp = x->Vp, ld = x->ld;
  float *Y = x->w.O; /* rows C/2.. (amx_pd overwrites O later) */
  for (int64_t j0 = 0; j0 < Vp; j0 += TNR) {
    const tmask m = tmask_of(V - j0);
    for (int64_t i0 = 0; i0 < C / 2; i0 += TMR) {
      amx_pf_step(a, row, pf, AMX_PF_TILE);
      if (vrows) {
        amx_solve_tile(x, i0, j0, &m, 0, NULL, vrows);
      } else {
        amx_solve_tile(x, i0, j0, &m, 0, NULL, NULL);
      }
    }
  }
  for (int64_t n0 = 0; n0 < Vp; n0 += 32) {
    const uint32_t *bh = x->Dp + n0, *bl = x->Dp + (C / 2) * ld + n0;
    xk_amx_zero_c2x2();
    _tile_loadd(4, x->Ah, C);
    _tile_loadd(5, x->Ah + 16 * (C / 2), C);
    xk_amx_dp_b2(bh, ld * 4);
    xk_amx_dp_b2(bl, ld * 4);
    _tile_loadd(4, x->Al, C);
    _tile_loadd(5, x->Al + 16 * (C / 2), C);
    xk_amx_dp_b2(bh, ld * 4);
    xk_amx_store_c2x2(Y + (C / 2) * ld + n0, ld);
  }
  for (int64_t j0 = 0; j0 < Vp; j0 += TNR) {
    const tmask m = tmask_of(V - j0);
    for (int64_t i0 = C / 2; i0 < C; i0 += TMR) {
      amx_pf_step(a, row, pf, AMX_PF_TILE);
      if (vrows) {
        amx_solve_tile(x, i0, j0, &m, C / 2, Y, vrows);
      } else {
        amx_solve_tile(x, i0, j0, &m, C / 2, Y, NULL);
      }
    }
  }
}

/* O = P D on the tiles, P and D split into hi + lo: Ph Dh + Ph Dl + Pl Dh
 * (the dropped Pl Dl is below 2^-16 of |P| |D|), in that order for every
 * element. Row blocks of 32 stop at their diagonal block (P is lower
 * triangular). */
static void amx_pd(const amx_ws *x, float *O) {
  const int64_t C = CHUNK, ld = x->ld, Vp = x->Vp;
  for (int64_t m0 = 0; m0 < C; m0 += 32) {
    for (int64_t n0 = 0; n0 < Vp; n0 += 32) {
      xk_amx_zero_c2x2();
/* A tiles 4, 5: rows m0 and m0 + 16 of a split P, key columns 32 s. */
#define AMX_PD_A(P) \
  _tile_loadd(4, (P) + m0 * C + 32 * s, C * 2); \
  _tile_loadd(5, (P) + (m0 + 16) * C + 32 * s, C * 2);
      for (int64_t s = 0; s <= m0 / 32; s++) {
        const uint32_t *bh = x->Dp + 16 * s * ld + n0, *bl = x->Dp + (C / 2 + 16 * s) * ld + n0;
        AMX_PD_A(x->Ph)
        xk_amx_dp_b2(bh, ld * 4);
        xk_amx_dp_b2(bl, ld * 4);
        AMX_PD_A(x->Pl)
        xk_amx_dp_b2(bh, ld * 4);
      }
#undef AMX_PD_A
      xk_amx_store_c2x2(O + m0 * ld + n0, ld);
    }
  }
}

/* chunk_values_load without v: the cumulative log decay, beta (rows past
 * Cn: zero beta, no decay), exp(G) and exp(G_last - G). */
static void amx_gates_load(const xk_gdn_args *a, const chunk_ws *w, gdn_seq seq, int64_t tok0, int64_t Cn, int64_t hv) {
  const int64_t C = CHUNK;
  float gsum = 0.0f;
  for (int64_t i = 0; i < Cn; i++) {
    const int64_t tok = tok0 + i;
    gsum += gdn_scalar(&a->g, seq.row, tok, hv);
    w->Gc[i] = gsum;
    w->beta[i] = a->beta.data ? gdn_scalar(&a->beta, seq.row, tok, hv) : 1.0f;
  }
  for (int64_t i = Cn; i < C; i++) w->Gc[i] = gsum, w->beta[i] = 0.0f;
  for (int64_t i0 = 0; i0 < C; i0 += 16) {
    const __m512 g = _mm512_loadu_ps(w->Gc + i0);
    _mm512_storeu_ps(w->eG + i0, la_exp16(g));
    _mm512_storeu_ps(w->eL + i0, la_exp16(_mm512_sub_ps(_mm512_set1_ps(gsum), g)));
  }
}

/* One value head's chunk: S advances in place, o rows [tok0, tok0 + Cn) are written. */
static void amx_value_head(const xk_gdn_args *a, const amx_ws *x, float *S, uint32_t *Sp, gdn_seq seq, int64_t tok0,
                           int64_t Cn, int64_t hv, chunk_next next, int first, int has_next, float next_decay) {
  const chunk_ws *w = &x->w;
  const int64_t C = CHUNK, V = w->V, Kp = x->Kp, Vp = x->Vp, ld = x->ld;
  /* bf16 v is read by the solve straight from its rows (rows past the
   * chunk: a zero row); other dtypes through w->Vm as f32. */
  const uint16_t *vrows[CHUNK];
  const int vdirect = a->v.dtype == XK_BF16;
  if (vdirect) {
    amx_gates_load(a, w, seq, tok0, Cn, hv);
    if (Cn < C) memset(w->Vm, 0, (size_t)Vp * 2);
    for (int64_t i = 0; i < C; i++)
      vrows[i] = i < Cn ? (const uint16_t *)gdn_ptr(&a->v, seq.row, tok0 + i, hv) : (const uint16_t *)w->Vm;
  } else {
    chunk_values_load(a, w, seq, tok0, Cn, CHUNK, hv); /* A and P: amx_decay_rows */
  }
  const int64_t G = a->num_v_heads / a->num_heads;
  amx_pfw pf = amx_pf_init(a, seq.row, next, next.t0 == tok0 && next.h == hv / G);
  /* Sp holds S split, and S holds exp(G_last) S, from the last chunk's update. */
  if (first) amx_split_state(x, S, Sp, expf(w->Gc[C - 1]), 0, Kp / 2, 0, Vp);
  amx_gemm(x->X, ld, x->AB, Kp, Kp / 32, Sp, ld, 2, 2 * C, Vp, 0, a, seq.row, &pf, NULL, NULL, 0.0f, x, 0);
  amx_solve(a, x, seq.row, &pf, vdirect ? vrows : NULL);
  amx_pd(x, w->O);
  amx_gemm(S, ld, x->KTa, C, C / 32, x->Dv, ld, 2, Kp, Vp, 1, a, seq.row, &pf, x, has_next ? Sp : NULL,
           next_decay, NULL, 0);
  /* o = exp(G) rq (q S) + P D, a row at a time on its way out. */
  for (int64_t i = 0; i < Cn; i++) {
    amx_pf_step(a, seq.row, &pf, 4);
    float *o = w->O + i * ld;
    const float *xq = x->X + (C + i) * ld;
    const __m512 eg = _mm512_set1_ps(w->eG[i] * x->rq[i]);
    char *dst = (char *)a->o + (seq.row * a->o_s_seq + (tok0 + i) * a->o_s_tok + hv * a->o_s_head) * 2;
    if (a->o_dtype == XK_BF16 && V % 32 == 0) {
      /* Rounded as xk_convert_row, from registers: streamed when the row is
       * whole aligned lines, else stored plainly (streaming the middle of
       * a row whose end lines are shared with the next head's row costs
       * more than reading those lines for ownership). */
      const int aligned = ((uintptr_t)dst & 63) == 0;
      for (int64_t j = 0; j < V; j += 32) {
        const __m512 lo = _mm512_fmadd_ps(eg, _mm512_loadu_ps(xq + j), _mm512_loadu_ps(o + j));
        const __m512 hi = _mm512_fmadd_ps(eg, _mm512_loadu_ps(xq + j + 16), _mm512_loadu_ps(o + j + 16));
        const __m512i r = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        if (aligned) {
          _mm512_stream_si512((void *)(dst + 2 * j), r);
        } else {
          _mm512_storeu_si512((void *)(dst + 2 * j), r);
        }
      }
      continue;
    }
    for (int64_t j = 0; j < V; j += 16) _mm512_storeu_ps(o + j, _mm512_fmadd_ps(eg, _mm512_loadu_ps(xq + j), _mm512_loadu_ps(o + j)));
    amx_stream_o(a, seq.row, tok0 + i, hv, o, (char *)x->tmp);
  }
  amx_pf_step(a, seq.row, &pf, 1 << 30);
}

/* As gdn.c's chunk_seq, on the tiles. */
static void amx_seq(const xk_gdn_args *a, const amx_ws *x, int64_t n, int64_t hv0, int64_t hv1) {
  const int64_t ld = x->ld, G = a->num_v_heads / a->num_heads;
  const gdn_seq seq = gdn_seq_of(a, n);
  if (seq.len <= 0) return;
  int64_t slot = n;
  if (a->state_indices) slot = gdn_index(a, n, 0);
  if (a->state && slot < 0) {
    for (int64_t hv = hv0; hv < hv1; hv++) gdn_zero_outputs(a, seq, hv, x->w.O);
    return;
  }
  const int load = a->state && (!a->has_initial_state.data || la_at(&a->has_initial_state, n));
  for (int64_t hv = hv0; hv < hv1; hv++) {
    float *S = x->S + (hv - hv0) * x->sst;
    memset(S, 0, (size_t)x->sst * sizeof(float)); /* padding rows and columns stay zero */
    if (load) chunk_state_io(a, S, ld, a->state + slot * a->state_s_slot + hv * a->state_s_head, 0);
  }
  const int64_t end = seq.bos + seq.len;
  for (int64_t tok0 = seq.bos; tok0 < end; tok0 += CHUNK) {
    const int64_t Cn = end - tok0 < CHUNK ? end - tok0 : CHUNK;
    for (int64_t hv = hv0; hv < hv1; hv++) {
      if (hv == hv0 || hv % G == 0) amx_keys(a, x, seq, tok0, Cn, hv / G);
      const int64_t t1 = tok0 + Cn + CHUNK < end ? tok0 + Cn + CHUNK : end;
      chunk_next next = {tok0, tok0 + Cn, (hv + 1) / G, hv + 1};
      if (hv + 1 == hv1) next = (chunk_next){tok0 + Cn, t1, hv0 / G, hv0};
      /* The next chunk's decay exp(G_last), summed as chunk_values will. */
      const int has_next = tok0 + CHUNK < end;
      float gsum = 0.0f;
      for (int64_t t = tok0 + CHUNK; t < t1; t++) gsum += gdn_scalar(&a->g, seq.row, t, hv);
      amx_value_head(a, x, x->S + (hv - hv0) * x->sst, x->Sp + (hv - hv0) * x->spst, seq, tok0, Cn, hv, next,
                     tok0 == seq.bos, has_next, expf(gsum));
    }
  }
  if (a->state && a->output_final_state) {
    for (int64_t hv = hv0; hv < hv1; hv++)
      chunk_state_io(a, x->S + (hv - hv0) * x->sst, ld, a->state + slot * a->state_s_slot + hv * a->state_s_head, 1);
  }
}

void xk_gdn_chunk_amx_tiles(const xk_gdn_args *a, float *scratch, int64_t block_begin, int64_t block_end) {
  if (a->q.dtype != XK_BF16 || a->k.dtype != XK_BF16) {
    XK_CAT3(xk_gdn_chunk, _, amx_gdn)(a, scratch, block_begin, block_end);
    return;
  }
  const int64_t HV = a->num_v_heads;
  int64_t cap = block_end - block_begin < HV ? block_end - block_begin : HV;
  if (cap > AMX_HEADS) cap = AMX_HEADS;
  amx_ws x;
  amx_layout(a->head_k_dim, a->head_v_dim, cap, (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63), &x);
  xk_amx_config_16x64();
  for (int64_t b = block_begin; b < block_end;) {
    const int64_t n = b / HV, hv = b % HV;
    int64_t hv1 = HV - hv < block_end - b ? HV : hv + (block_end - b);
    if (hv1 - hv > AMX_HEADS) hv1 = hv + AMX_HEADS;
    amx_seq(a, &x, n, hv, hv1);
    b += hv1 - hv;
  }
  _mm_sfence(); /* the streamed o rows, before the caller sees the op done */
  _tile_release();
}

/* The entries of the amx kernel table (xk_amx_table_init). */
void xk_gdn_amx_install(xk_kernel_table *t) {
  t->gdn_chunk = xk_gdn_chunk_amx_tiles;
  t->gdn_scratch_floats = xk_gdn_scratch_floats_amx_tiles;
}
