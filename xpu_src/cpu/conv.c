/*
 * causal_conv1d_fn (prefill) and causal_conv1d_update (decode, spec decode),
 * vLLM semantics. One grid block = one tile of channels of one sequence.
 *
 * For sequence n of length L, the window W holds the width-1 inputs before its
 * first token: state columns [off, off + width - 1) of its cache line when the
 * state is loaded (off = num_accepted_tokens[n] - 1 in spec decode, else 0),
 * zeros otherwise. Output token t, channel c:
 *   y = bias[c] + sum_j weight[c, j] * u[t + j],  u = W ++ x  (fp32)
 * then silu if asked. The cache line's first `keep` columns become the last
 * `keep` entries of W ++ x: keep = width - 1, or width - 2 + L in spec decode
 * (the state then holds the window minus its oldest column, then every draft).
 * The state is written before any output, so out may alias x.
 *
 * Paths. Within a tier every path computes each output with the same fp32
 * operations in the same order, so neither the thread count nor the tiling
 * nor the path changes a result bit (except bf16 outputs below 2^-126, which
 * the AVX-512 fast paths' conversion flushes to zero):
 * - generic: token rows converted to an fp32 ring through la_load_row /
 *   la_store_row; any strides and dtypes (and the only path of the generic
 *   tier).
 * - AVX2: the stream and decode paths below in 16-channel units (see the
 *   AVX2 section), plain stores; for bf16 outputs with silu the weights
 *   and bias prescaled as on AVX-512 and silu8_bf16_y_n (generic path
 *   included).
 * - AVX-512, channel-contiguous x and out of one dtype (f32/f16/bf16):
 *   * stream (prefill): the window of every 32-channel unit lives in
 *     registers while the unit walks a block of tokens; rows are converted
 *     in registers, never staged. Units start on output cache lines (partial
 *     units are masked) and large outputs go to memory with streaming stores
 *     (no read-for-ownership of lines written whole).
 *   * decode (at most DEC_MAX tokens, state in x's dtype with dim contiguous,
 *     vLLM's layout): per unit, the window is read from the cache line, the
 *     new state written from the same registers (raw copies) and the outputs
 *     computed; the next sequence's state is prefetched.
 *   Weights and bias are converted once per tile (and grid call) into fp32
 *   scratch. silu: silu16, or silu16_bf16_y for bf16 outputs (see there;
 *   then the scratch weights and bias are prescaled).
 */
#include "../common/tier.h"
#include "la_util.h"

#define MAXW 6

#define XK_INLINE static inline __attribute__((always_inline))

#if XK_F32_LANES == 16
/*
 * silu(x) = x / (1 + e^-x). e^-x = 2^y, y = -x log2(e) = n + f with
 * n = floor(y) and f = y - n in [0, 1) (vreduceps, exact); 2^f by a degree-5
 * minimax polynomial (relative error 7.5e-8, ~1.5e-7 in fp32), scaled by 2^n
 * (vscalefps floors y itself). The rounding of y costs at most 2^-24 |x|
 * relative in e^-x, i.e. under an fp32 ulp of |x| in silu(x). The
 * reciprocal: an estimate plus one Newton step (~1 ulp). y is capped at 127
 * so 1 + e^-x stays finite: below x = -88 the result is a tiny negative
 * number (|silu| < 1e-35) rather than the exact, tinier one. y = -inf
 * (x = +inf) gives f = 0, 2^-inf = 0 and silu = x. NaN stays NaN.
 */
XK_INLINE __m512 silu16(__m512 x) {
  __m512 y = _mm512_mul_ps(x, _mm512_set1_ps(-1.44269504f));
  y = _mm512_min_ps(_mm512_set1_ps(127.0f), y);
  const __m512 f = _mm512_reduce_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.8775767e-3f), f, _mm512_set1_ps(8.9893397e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5826318e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4015361e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9315308e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.9999994e-1f));
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), _mm512_scalef_ps(p, y));
  __m512 r = _mm512_rcp14_ps(d);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
  return _mm512_mul_ps(x, r);
}

/*
 * silu for bf16 outputs, from y = -x log2(e) rather than x: with silu on and
 * bf16 outputs the AVX-512 paths store their fp32 weights and bias times
 * -log2(e) (silu_prescale), so the conv sum already is y. Then
 *   silu(x) = x / (1 + 2^y) = y / (-log2(e) (1 + 2^y)),
 * with 2^f (f = y - floor(y), vreduceps) by a degree-3 minimax polynomial
 * whose coefficients carry the -log2(e) (relative error 7.5e-5), and the
 * reciprocal estimate alone (2^-14): silu to within 1.4e-4 relative, under
 * 1/28 of a bf16 ulp, so the rounded bf16 result stays within one ulp of the
 * exact one (it differs from the correctly rounded value for ~0.5% of
 * inputs of a few units; silu16: 0.001%). The prescaled weights move the
 * conv sum by a few fp32 ulps of |bias| + sum |w u|, inside the documented
 * bound. Large y makes the denominator -inf and silu -0, as the division
 * gives. This is about 40% cheaper than silu16, and silu is the bulk of a
 * bf16 prefill's arithmetic.
 */
#define SILU_Y_SCALE (-1.44269504f)
XK_INLINE __m512 silu16_bf16_y(__m512 y) {
  const __m512 f = _mm512_reduce_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(-1.12564899e-01f), f, _mm512_set1_ps(-3.26145858e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.00387621e+00f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.44258702e+00f));
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(SILU_Y_SCALE), _mm512_scalef_ps(p, y));
  return _mm512_mul_ps(y, _mm512_rcp14_ps(d));
}

/* The silu every AVX-512 path applies to a conv sum s for outputs of
 * `out_dtype` (bf16: s is prescaled, see silu16_bf16_y). */
XK_INLINE __m512 silu_for(__m512 s, int out_dtype) {
  return out_dtype == XK_BF16 ? silu16_bf16_y(s) : silu16(s);
}

#elif XK_F32_LANES == 8
/*
 * AVX2 silu for bf16 outputs, on n <= 8 vectors in place, each operation
 * across the vectors before the next (as la_silu8_n). As silu16_bf16_y, the
 * input is the conv sum of prescaled weights and bias, y = -x log2(e), and
 *   silu(x) = y / (-log2(e) (1 + 2^y)).
 * 2^y = 2^k 2^f with k = round(y) (vroundps, to nearest even; k << 23 from
 * vcvtps2dq is the exponent increment), f = y - k in [-0.5, 0.5], -log2(e)
 * 2^f by a degree-3 minimax polynomial (relative error
 * 7.5e-5), then the reciprocal estimate (1.5 * 2^-12) and one Newton step.
 * Over 8M conv sums (|x| <= 30) the bf16 result is within one ulp of the
 * correctly rounded silu and differs from it for 0.33% of them (la_silu8:
 * 0.0007%); the relative error is at most 7.5e-5 (1/50 of a bf16 ulp).
 * The exponent only sees y clamped to [-125, 126], so 2^k 2^f stays a
 * normal number; the numerator is the unclamped y (x > 86: silu = x up to
 * the reciprocal's error; x < -87: a tiny number instead of a tinier one).
 * NaN stays NaN (the clamps put the variable second). Measured (harness,
 * bf16 dim 8192 w=4, T = 2048, CPU time): see stream_unit.
 * Not kept: the estimate without the Newton step (2 FMA-pipe ops less per
 * vector) rounds 1.2% of the outputs differently; degree 4 with the Newton
 * step 0.012% for one more FMA. The Newton step is y r + y r (1 - d r)
 * (session 17; before: y (r (2 - d r))): the same ops, 2 cycles less
 * latency (fnmadd and y r side by side). Over 64M conv sums (|x| <= 30)
 * 403 bf16 results differ from the old form's, the share that differs from
 * the correctly rounded silu stays 0.435% and the relative error 7.5e-5.
 * Two stages, as la_silu8_den_n / la_silu8_div_n: d = -log2(e) (1 + 2^y),
 * then y / d; a caller may run them in separate passes over many vectors
 * (the same operations, so the same bits). Session 16: k by vroundps and
 * vcvtps2dq instead of the 1.5 * 2^23 shifter (t = y + shifter, k = t -
 * shifter, exponent bits t << 23): the same k, f and exponent bits (|y| <=
 * 126 < 2^22; NaN: NaN in d either way, and the result is y's NaN), one op
 * less on the chain (9 -> 6 cycles before the polynomial).
 */
#define SILU_Y_SCALE (-1.44269504f)
XK_INLINE void silu8_bf16_den_n(const __m256 *v, __m256 *d, const int n) {
  __m256 k[8], f[8];
  __m256i e[8];
  for (int i = 0; i < n; i++) f[i] = _mm256_max_ps(_mm256_set1_ps(-125.0f), v[i]);
  for (int i = 0; i < n; i++) f[i] = _mm256_min_ps(_mm256_set1_ps(126.0f), f[i]);
  for (int i = 0; i < n; i++) k[i] = _mm256_round_ps(f[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  for (int i = 0; i < n; i++) e[i] = _mm256_slli_epi32(_mm256_cvtps_epi32(k[i]), 23);
  for (int i = 0; i < n; i++) f[i] = _mm256_sub_ps(f[i], k[i]);
  for (int i = 0; i < n; i++)
    d[i] = _mm256_fmadd_ps(_mm256_set1_ps(-7.95958936e-02f), f[i], _mm256_set1_ps(-3.50013882e-01f));
  for (int i = 0; i < n; i++) d[i] = _mm256_fmadd_ps(d[i], f[i], _mm256_set1_ps(-1.00016415e+00f));
  for (int i = 0; i < n; i++) d[i] = _mm256_fmadd_ps(d[i], f[i], _mm256_set1_ps(-1.44259131e+00f));
  for (int i = 0; i < n; i++) d[i] = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(d[i]), e[i]));
  for (int i = 0; i < n; i++) d[i] = _mm256_add_ps(_mm256_set1_ps(SILU_Y_SCALE), d[i]);
}
XK_INLINE void silu8_bf16_div_n(__m256 *v, const __m256 *d, const int n) {
  __m256 t[8], e[8];
  for (int i = 0; i < n; i++) t[i] = _mm256_rcp_ps(d[i]);
  for (int i = 0; i < n; i++) e[i] = _mm256_fnmadd_ps(d[i], t[i], _mm256_set1_ps(1.0f));
  for (int i = 0; i < n; i++) t[i] = _mm256_mul_ps(v[i], t[i]);
  for (int i = 0; i < n; i++) v[i] = _mm256_fmadd_ps(t[i], e[i], t[i]);
}
XK_INLINE void silu8_bf16_y_n(__m256 *v, const int n) {
  __m256 d[8];
  silu8_bf16_den_n(v, d, n);
  silu8_bf16_div_n(v, d, n);
}
#endif

#if XK_F32_LANES >= 8
/* Whether the fp32 weights and bias of a call are stored times -log2(e). */
static inline int silu_prescale(const xk_conv1d_args *a) { return a->silu && a->out_dtype == XK_BF16; }

static void scale_row(float *row, int64_t n) {
  for (int64_t i = 0; i < n; i++) row[i] *= SILU_Y_SCALE;
}
#endif

/* ---- generic path ---------------------------------------------------------- */

/* acc[c] = bias[c] + sum_j w[j][c] * u[j][c] over the tile; silu if asked. */
static void conv_tile_step(float *acc, const float *bias, float *const *w, float *const *u, int64_t width,
                           int64_t n, int silu, int out_dtype) {
  (void)out_dtype; /* AVX-512 picks its silu by the output dtype */
  int64_t c = 0;
#if XK_F32_LANES == 16
  /* Masked tail: every channel takes the same vector arithmetic. */
  for (; c < n; c += 16) {
    const __mmask16 m = n - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - c)) - 1u);
    __m512 s = _mm512_maskz_loadu_ps(m, bias + c);
    for (int64_t j = 0; j < width; j++)
      s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w[j] + c), _mm512_maskz_loadu_ps(m, u[j] + c), s);
    if (silu) s = silu_for(s, out_dtype);
    _mm512_mask_storeu_ps(acc + c, m, s);
  }
#elif XK_F32_LANES == 8
  const int cheap = silu && out_dtype == XK_BF16; /* prescaled sums, silu8_bf16_y_n */
  for (; c + 8 <= n; c += 8) {
    __m256 s = _mm256_loadu_ps(bias + c);
    for (int64_t j = 0; j < width; j++) s = _mm256_fmadd_ps(_mm256_loadu_ps(w[j] + c), _mm256_loadu_ps(u[j] + c), s);
    if (cheap) {
      silu8_bf16_y_n(&s, 1);
    } else if (silu) {
      s = la_silu8(s);
    }
    _mm256_storeu_ps(acc + c, s);
  }
  if (cheap && c < n) {
    /* The tail through zero-padded vectors: the fast paths' arithmetic. */
    float v[MAXW + 1][8] = {{0}};
    for (int64_t i = c; i < n; i++) {
      v[0][i - c] = bias[i];
      for (int64_t j = 0; j < width; j++) {
        v[1 + j][i - c] = w[j][i]; /* weights in v[1..width], inputs below */
      }
    }
    __m256 s = _mm256_loadu_ps(v[0]);
    for (int64_t j = 0; j < width; j++) {
      float uj[8] = {0};
      for (int64_t i = c; i < n; i++) uj[i - c] = u[j][i];
      s = _mm256_fmadd_ps(_mm256_loadu_ps(v[1 + j]), _mm256_loadu_ps(uj), s);
    }
    silu8_bf16_y_n(&s, 1);
    _mm256_storeu_ps(v[0], s);
    for (int64_t i = c; i < n; i++) acc[i] = v[0][i - c];
    return;
  }
#endif
  for (; c < n; c++) {
    float s = bias[c];
    for (int64_t j = 0; j < width; j++) s = fmaf(w[j][c], u[j][c], s);
    acc[c] = silu ? la_silu(s) : s;
  }
}

/* Where sequence `seq` lives: its tokens, cache line and window offset. */
typedef struct seq_info {
  int64_t start, len, line, off;
  int load, skip;
} seq_info;

static seq_info seq_of(const xk_conv1d_args *a, int64_t seq) {
  seq_info s = {0, a->seqlen, seq, 0, 0, 0};
  if (a->query_start_loc.data) {
    s.start = la_at(&a->query_start_loc, seq);
    s.len = la_at(&a->query_start_loc, seq + 1) - s.start;
  }
  if (a->cache_indices.data) s.line = la_at(&a->cache_indices, seq);
  s.skip = s.len <= 0 || s.line == a->pad_slot_id;
  s.load = a->has_initial_state.data ? (int)la_at(&a->has_initial_state, seq) : a->load_state_default;
  if (a->num_accepted_tokens.data && !s.skip) s.off = la_at(&a->num_accepted_tokens, seq) - 1;
  return s;
}

static void conv_block_generic(const xk_conv1d_args *a, float *scratch, int64_t seq, int64_t tile) {
  const int64_t c0 = tile * a->channel_tile;
  const int64_t nc = (a->dim - c0) < a->channel_tile ? (a->dim - c0) : a->channel_tile;
  if (nc <= 0) return;
  const seq_info s = seq_of(a, seq);
  if (s.skip) return;
  const int load = s.load;
  const int spec = a->num_accepted_tokens.data != NULL;
  const int64_t start = s.start, len = s.len, line = s.line, off = s.off;
  const int64_t width = a->width, hist = width - 1;
  const int64_t keep = spec ? width - 2 + len : hist;

  const int64_t xs = xk_dtype_size(a->x_dtype), os = xk_dtype_size(a->out_dtype);
  const int64_t ss = xk_dtype_size(a->state_dtype), ws = xk_dtype_size(a->weight_dtype);
  const char *xbase =
      (const char *)a->x + (seq * a->x_stride_seq + start * a->x_stride_tok + c0 * a->x_stride_dim) * xs;
  char *obase = (char *)a->out + (seq * a->out_stride_seq + start * a->out_stride_tok + c0 * a->out_stride_dim) * os;
  char *sbase = (char *)a->conv_states + (line * a->state_stride_line + c0 * a->state_stride_dim) * ss;

  /* Ring of `width` rows: the window's width-1 rows and the incoming token;
   * then the weights, bias, accumulator and a staging row. */
  const int64_t ct = a->channel_tile;
  float *ring[MAXW], *wv[MAXW];
  for (int64_t j = 0; j < width; j++) {
    ring[j] = scratch + j * ct;
    wv[j] = scratch + (width + j) * ct;
  }
  float *bias = scratch + 2 * width * ct, *acc = bias + ct, *tmp = acc + ct;

  for (int64_t j = 0; j < hist; j++) {
    if (load) {
      la_load_row(ring[j], sbase + (off + j) * a->state_stride_tok * ss, a->state_dtype, nc, a->state_stride_dim);
    } else {
      memset(ring[j], 0, (size_t)nc * sizeof(float));
    }
  }

  /* New state: the last `keep` entries of W ++ x, written before any output. */
  for (int64_t i = 0; i < keep; i++) {
    const int64_t u = hist + len - keep + i; /* index into W ++ x */
    char *dst = sbase + i * a->state_stride_tok * ss;
    if (u < hist) {
      la_store_row(dst, a->state_dtype, ring[u], nc, a->state_stride_dim);
    } else {
      la_load_row(tmp, xbase + (u - hist) * a->x_stride_tok * xs, a->x_dtype, nc, a->x_stride_dim);
      la_store_row(dst, a->state_dtype, tmp, nc, a->state_stride_dim);
    }
  }

  for (int64_t j = 0; j < width; j++) {
    la_load_row(wv[j], (const char *)a->weight + (c0 * a->weight_stride_dim + j * a->weight_stride_width) * ws,
                a->weight_dtype, nc, a->weight_stride_dim);
  }
  if (a->bias) {
    la_load_row(bias, (const char *)a->bias + c0 * a->bias_stride * xk_dtype_size(a->bias_dtype), a->bias_dtype, nc,
                a->bias_stride);
  } else {
    memset(bias, 0, (size_t)nc * sizeof(float));
  }
#if XK_F32_LANES >= 8
  if (silu_prescale(a)) {
    for (int64_t j = 0; j <= width; j++) scale_row(j < width ? wv[j] : bias, nc);
  }
#endif

  float *u[MAXW];
  int64_t head = 0; /* ring row holding the oldest window entry */
  /* Token rows are a token-stride apart (one page or more for large dims):
   * prefetch a few tokens ahead, the hardware prefetchers do not follow. */
  const int64_t pf = 8, xrow = nc * xs * (a->x_stride_dim == 1), orow = nc * os * (a->out_stride_dim == 1);
  for (int64_t t = 0; t < len; t++) {
    if (t + pf < len) {
      const char *xp = xbase + (t + pf) * a->x_stride_tok * xs;
      char *op = obase + (t + pf) * a->out_stride_tok * os;
      for (int64_t i = 0; i < xrow; i += 64) __builtin_prefetch(xp + i, 0, 3);
      for (int64_t i = 0; i < orow; i += 64) __builtin_prefetch(op + i, 1, 3);
    }
    for (int64_t j = 0; j < width; j++) u[j] = ring[(head + j) % width];
    la_load_row(u[width - 1], xbase + t * a->x_stride_tok * xs, a->x_dtype, nc, a->x_stride_dim);
    conv_tile_step(acc, bias, wv, u, width, nc, a->silu, a->out_dtype);
    la_store_row(obase + t * a->out_stride_tok * os, a->out_dtype, acc, nc, a->out_stride_dim);
    head = (head + 1) % width;
  }
}

/* ---- AVX-512 fast paths ---------------------------------------------------- */

#if XK_F32_LANES == 16

#define UNIT 32 /* channels per unit: two vectors of fp32 */
#define DEC_MAX 8 /* the decode path takes sequences up to this long */
/* Tunables (overridable for experiments), measured on a bf16 prefill of
 * whole 16 KiB rows: tokens a unit walks before the next unit on the stream
 * path (4 to 8 best: few concurrent row streams for the prefetchers, the
 * carried window reloaded rarely; 16 was ~5% slower, 1 ~40%); bytes ahead in each x row it prefetches (128 to
 * 512 alike, none ~5% slower, 1 KiB+ slower); the output size of a grid
 * block from which it streams stores (streaming measured ~15% faster on cold
 * prefill than cached stores).
 * Session 9 (bf16, dim 8192, width 4, silu; harness, old and new
 * interleaved): the cold prefill is bound by compute and memory together.
 * The same walk as a plain copy (no arithmetic) runs at the copy probe
 * (24.4 GB/s, T = 2048 in 2.75 ms); the kernel on data in L2 (no DRAM
 * traffic) needs ~3.1-3.3 ms for the same tokens; cold it takes 3.6-3.9 ms.
 * silu is ~40% of the arithmetic: without it the cold run takes 3.07 ms
 * (21.9 GB/s). The loop runs 30 vector ops per unit and token (a qword
 * permute and 2 word unpacks, 8 FMAs, 2 x 8 for silu, a cvtne2ps, the
 * store) on the two 512-bit ports. Measured and not kept: x as one 64-byte load split by
 * word unpacks, or into even/odd channels by a shift and a mask (weights
 * permuted to match, the result re-interleaved by a qword or word
 * permute): 3% and 5% slower on data in L2 (the permute costs more than
 * the widening it saves); prefetch 128/384/512/768 bytes ahead, with T1 or
 * NTA hints (NTA ~2x slower), TOK_BLOCK 4/6/12: within the noise or
 * slower.
 * Session 10 (thread CPU time): the loop is bound by the issue rate of the
 * two vector ports, not by latency: Estrin's polynomial (one op more, 4
 * cycles less latency) and silu issued stage by stage over 2-4 tokens
 * were 2-12% slower. vrcp14ps zmm is two port-0 uops (the two reciprocals
 * cost ~3.7 of ~20 cycles per unit and token), vcvtne2ps2bf16 three;
 * exponent-trick reciprocals with Newton steps cost more. A degree-2
 * exp2 would save two ops but errs 1.7e-3 (near half a bf16 ulp). Also
 * neutral or slower cold: prefetching the next block's row heads, a
 * second prefetch into L2 1-2 KiB ahead (~8% slower). */
#ifndef TOK_BLOCK
#define TOK_BLOCK 8
#endif
#ifndef X_PREFETCH
#define X_PREFETCH 256
#endif
#ifndef STREAM_MIN_BYTES
#define STREAM_MIN_BYTES (256 * 1024)
#endif

/* Scratch rows are this many floats apart (whole units, so a tail unit may
 * load past the tile's last channel without leaving the row). */
static inline int64_t row_floats(int64_t channel_tile) { return (channel_tile + UNIT - 1) / UNIT * UNIT; }

typedef struct v32 {
  __m512 lo, hi; /* channels 0..15, 16..31 of a unit */
} v32;

typedef struct raw32 {
  __m512i a, b; /* a unit in its storage format (b used by f32 only) */
} raw32;

XK_INLINE raw32 raw_load(const char *p, int dt, __mmask32 m, int full) {
  raw32 r;
  if (dt == XK_F32) {
    r.a = full ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32((__mmask16)m, p);
    r.b = full ? _mm512_loadu_si512(p + 64) : _mm512_maskz_loadu_epi32((__mmask16)(m >> 16), p + 64);
  } else {
    r.a = full ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(m, p);
    r.b = r.a;
  }
  return r;
}

XK_INLINE void raw_store(char *p, int dt, raw32 r, __mmask32 m, int full) {
  if (dt == XK_F32) {
    if (full) {
      _mm512_storeu_si512(p, r.a);
      _mm512_storeu_si512(p + 64, r.b);
    } else {
      _mm512_mask_storeu_epi32(p, (__mmask16)m, r.a);
      _mm512_mask_storeu_epi32(p + 64, (__mmask16)(m >> 16), r.b);
    }
  } else if (full) {
    _mm512_storeu_si512(p, r.a);
  } else {
    _mm512_mask_storeu_epi16(p, m, r.a);
  }
}

XK_INLINE v32 raw_f32(raw32 r, int dt) {
  v32 v;
  if (dt == XK_F32) {
    v.lo = _mm512_castsi512_ps(r.a);
    v.hi = _mm512_castsi512_ps(r.b);
  } else if (dt == XK_BF16) {
    v.lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(r.a)), 16));
    v.hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(r.a, 1)), 16));
  } else {
    v.lo = _mm512_cvtph_ps(_mm512_castsi512_si256(r.a));
    v.hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(r.a, 1));
  }
  return v;
}

/* A unit of `dt` values as fp32 (masked lanes read as zero). */
XK_INLINE v32 load_f32(const char *p, int dt, __mmask32 m, int full) {
  if (full && dt == XK_BF16) {
    /* Word unpacks with zero put each bf16 in the high half of its fp32
     * lane (its fp32 value) but work within 128-bit lanes: the qword
     * permute first brings channels 4k..4k+3 and 16+4k..16+4k+3 into lane
     * k. Three shuffles instead of two widening shuffles and two shifts. */
    const __m512i r = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 4, 1, 5, 2, 6, 3, 7), _mm512_loadu_si512(p));
    v32 v;
    v.lo = _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), r));
    v.hi = _mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), r));
    return v;
  }
  if (full && dt == XK_F16) {
    v32 v;
    v.lo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    v.hi = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 32)));
    return v;
  }
  return raw_f32(raw_load(p, dt, m, full), dt);
}

/* Rounds a unit to `dt` and stores it: streamed when `stream` (full units
 * at 64-byte aligned addresses only). bf16 rounds to nearest even in one
 * instruction, which returns zero for fp32 results below 2^-126. */
XK_INLINE void store_f32(char *p, int dt, v32 v, __mmask32 m, int full, int stream) {
  if (dt == XK_F32) {
    if (!full) {
      _mm512_mask_storeu_ps(p, (__mmask16)m, v.lo);
      _mm512_mask_storeu_ps(p + 64, (__mmask16)(m >> 16), v.hi);
    } else if (stream) {
      _mm512_stream_ps((float *)p, v.lo);
      _mm512_stream_ps((float *)(p + 64), v.hi);
    } else {
      _mm512_storeu_ps(p, v.lo);
      _mm512_storeu_ps(p + 64, v.hi);
    }
    return;
  }
  __m512i r;
  if (dt == XK_BF16) {
    r = (__m512i)_mm512_cvtne2ps_pbh(v.hi, v.lo);
  } else {
    r = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm512_cvtps_ph(v.lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)),
        _mm512_cvtps_ph(v.hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), 1);
  }
  if (!full) {
    _mm512_mask_storeu_epi16(p, m, r);
  } else if (stream) {
    _mm512_stream_si512((void *)p, r);
  } else {
    _mm512_storeu_si512(p, r);
  }
}

XK_INLINE v32 load_row_f32(const float *row) {
  v32 v = {_mm512_loadu_ps(row), _mm512_loadu_ps(row + 16)};
  return v;
}

XK_INLINE v32 zero32(void) {
  v32 v = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  return v;
}

/* bias + sum_j w[j] * u[j] (fp32 FMAs in window order), then silu if asked. */
XK_INLINE v32 conv_unit(const v32 *w, const v32 *u, v32 bias, const int W, const int DT, int silu) {
  v32 s = bias;
  for (int j = 0; j < W; j++) {
    s.lo = _mm512_fmadd_ps(w[j].lo, u[j].lo, s.lo);
    s.hi = _mm512_fmadd_ps(w[j].hi, u[j].hi, s.hi);
  }
  if (silu) {
    s.lo = silu_for(s.lo, DT);
    s.hi = silu_for(s.hi, DT);
  }
  return s;
}

/* What the fast paths of one grid block share. */
typedef struct fast_ctx {
  const xk_conv1d_args *a;
  const float *wf, *bias; /* fp32 weights [width][rf] and bias [rf] of the tile */
  int has_bias;           /* else bias is zero and not read */
  float *carry;           /* [width - 1][rf] fp32 window carried between token blocks */
  int64_t rf;             /* scratch row stride (floats) */
  int64_t nc;             /* channels in the tile */
  const char *xbase;      /* x at the tile's first channel, the sequence's first token */
  char *obase;
  int64_t xtok, otok; /* token strides in bytes */
} fast_ctx;

/* Stream path: units [u0, u1) of the tile (u1 - u0 <= UNIT channels from
 * channel c), tokens [t0, t0 + tb). */
XK_INLINE void stream_unit(const fast_ctx *k, int64_t c, int64_t n, int64_t t0, int64_t tb, const int W,
                           const int DT, const int silu, const int stream, const int has_bias) {
  const int full = n == UNIT;
  const __mmask32 m = full ? 0xffffffffu : (__mmask32)((1u << n) - 1u);
  const int64_t es = DT == XK_F32 ? 4 : 2;
  v32 w[MAXW], u[MAXW];
  for (int j = 0; j < W; j++) w[j] = load_row_f32(k->wf + j * k->rf + c);
  for (int j = 0; j < W - 1; j++) u[j] = load_row_f32(k->carry + j * k->rf + c);
  const v32 bias = has_bias ? load_row_f32(k->bias + c) : zero32();
  const char *xp = k->xbase + t0 * k->xtok + c * es;
  char *op = k->obase + t0 * k->otok + c * es;
  int64_t t = 0;
  /* Groups of W tokens index u as a ring (slot of window entry j at step s:
   * (s + j) % W), so no register moves; after a group the ring is back in
   * order. The rest shifts u. */
  for (; t + W <= tb; t += W) {
    for (int st = 0; st < W; st++) {
      if (X_PREFETCH) _mm_prefetch(xp + X_PREFETCH, _MM_HINT_T0);
      u[(st + W - 1) % W] = load_f32(xp, DT, m, full);
      v32 s = bias;
      for (int j = 0; j < W; j++) {
        s.lo = _mm512_fmadd_ps(w[j].lo, u[(st + j) % W].lo, s.lo);
        s.hi = _mm512_fmadd_ps(w[j].hi, u[(st + j) % W].hi, s.hi);
      }
      if (silu) {
        s.lo = silu_for(s.lo, DT);
        s.hi = silu_for(s.hi, DT);
      }
      store_f32(op, DT, s, m, full, stream);
      xp += k->xtok;
      op += k->otok;
    }
  }
  for (; t < tb; t++) {
    if (X_PREFETCH) _mm_prefetch(xp + X_PREFETCH, _MM_HINT_T0);
    u[W - 1] = load_f32(xp, DT, m, full);
    const v32 y = conv_unit(w, u, bias, W, DT, silu);
    store_f32(op, DT, y, m, full, stream);
    for (int j = 0; j < W - 1; j++) u[j] = u[j + 1];
    xp += k->xtok;
    op += k->otok;
  }
  /* Masked: a partial unit must not touch the next unit's carry. */
  for (int j = 0; j < W - 1; j++) {
    _mm512_mask_storeu_ps(k->carry + j * k->rf + c, (__mmask16)m, u[j].lo);
    _mm512_mask_storeu_ps(k->carry + j * k->rf + c + 16, (__mmask16)(m >> 16), u[j].hi);
  }
}

XK_INLINE void stream_tokens_as(const fast_ctx *k, int64_t len, int64_t head, const int W, const int DT,
                                const int silu, const int stream, const int has_bias) {
  for (int64_t t0 = 0; t0 < len; t0 += TOK_BLOCK) {
    const int64_t tb = len - t0 < TOK_BLOCK ? len - t0 : TOK_BLOCK;
    int64_t c = 0;
    if (head > 0) {
      stream_unit(k, 0, head, t0, tb, W, DT, silu, stream, has_bias);
      c = head;
    }
    for (; c + UNIT <= k->nc; c += UNIT) stream_unit(k, c, UNIT, t0, tb, W, DT, silu, stream, has_bias);
    if (c < k->nc) stream_unit(k, c, k->nc - c, t0, tb, W, DT, silu, stream, has_bias);
  }
}

/* silu, streaming stores and the bias as constants of the token loop: as
 * run-time flags they cost a test and branch per store and, through the
 * registers the branches pin, spilled constants and register copies. */
XK_INLINE void stream_tokens(const fast_ctx *k, int64_t len, int64_t head, const int W, const int DT, int silu,
                             int stream) {
  if (silu && stream && !k->has_bias) {
    stream_tokens_as(k, len, head, W, DT, 1, 1, 0);
  } else if (silu && !k->has_bias) {
    stream_tokens_as(k, len, head, W, DT, 1, 0, 0);
  } else {
    stream_tokens_as(k, len, head, W, DT, silu, stream, k->has_bias);
  }
}

#define DISPATCH_W(FN, ...)                      \
  switch (W) {                                   \
    case 2: FN(__VA_ARGS__, 2, DT); break;       \
    case 3: FN(__VA_ARGS__, 3, DT); break;       \
    case 4: FN(__VA_ARGS__, 4, DT); break;       \
    case 5: FN(__VA_ARGS__, 5, DT); break;       \
    default: FN(__VA_ARGS__, 6, DT); break;      \
  }

#define STREAM_CALL(k, len, head, silu, stream, W_, DT_) stream_tokens(k, len, head, W_, DT_, silu, stream)

static void stream_bf16(const fast_ctx *k, int64_t len, int64_t head, int silu, int stream, int W) {
  const int DT = XK_BF16;
  DISPATCH_W(STREAM_CALL, k, len, head, silu, stream)
}
static void stream_f16(const fast_ctx *k, int64_t len, int64_t head, int silu, int stream, int W) {
  const int DT = XK_F16;
  DISPATCH_W(STREAM_CALL, k, len, head, silu, stream)
}
static void stream_f32(const fast_ctx *k, int64_t len, int64_t head, int silu, int stream, int W) {
  const int DT = XK_F32;
  DISPATCH_W(STREAM_CALL, k, len, head, silu, stream)
}

/* Decode path, one unit: the window from the cache line (columns off..), the
 * new state written from the same registers, then the outputs. */
XK_INLINE void decode_unit(const fast_ctx *k, char *sbase, int64_t stok, const char *next_state, int64_t c, int64_t n,
                           int64_t len, int64_t off, int64_t keep, const int W, const int DT, int silu) {
  const int full = n == UNIT;
  const __mmask32 m = full ? 0xffffffffu : (__mmask32)((1u << n) - 1u);
  const int64_t es = DT == XK_F32 ? 4 : 2, hist = W - 1;
  raw32 r[MAXW - 1 + DEC_MAX];
  for (int j = 0; j < W - 1; j++) r[j] = raw_load(sbase + (off + j) * stok + c * es, DT, m, full);
  for (int64_t t = 0; t < len; t++) r[hist + t] = raw_load(k->xbase + t * k->xtok + c * es, DT, m, full);
  if (next_state) {
    for (int j = 0; j < W - 1; j++) {
      _mm_prefetch(next_state + j * stok + c * es, _MM_HINT_T0);
      if (DT == XK_F32) _mm_prefetch(next_state + j * stok + c * es + 64, _MM_HINT_T0);
    }
  }
  for (int64_t i = 0; i < keep; i++) raw_store(sbase + i * stok + c * es, DT, r[hist + len - keep + i], m, full);
  v32 w[MAXW], u[MAXW];
  for (int j = 0; j < W; j++) w[j] = load_row_f32(k->wf + j * k->rf + c);
  const v32 bias = k->has_bias ? load_row_f32(k->bias + c) : zero32();
  for (int j = 0; j < W - 1; j++) u[j] = raw_f32(r[j], DT);
  for (int64_t t = 0; t < len; t++) {
    u[W - 1] = raw_f32(r[hist + t], DT);
    store_f32(k->obase + t * k->otok + c * es, DT, conv_unit(w, u, bias, W, DT, silu), m, full, 0);
    for (int j = 0; j < W - 1; j++) u[j] = u[j + 1];
  }
}

/* decode_unit for one token (plain decode, or spec decode with one token):
 * everything in registers. keep = width - 1: state column i <- (W ++ x)[1 + i]. */
XK_INLINE void decode_unit1(const fast_ctx *k, char *sbase, int64_t stok, const char *next_state, int64_t c,
                            int64_t n, int64_t off, const int W, const int DT, int silu) {
  const int full = n == UNIT;
  const __mmask32 m = full ? 0xffffffffu : (__mmask32)((1u << n) - 1u);
  const int64_t es = DT == XK_F32 ? 4 : 2;
  raw32 r[MAXW];
  for (int j = 0; j < W - 1; j++) r[j] = raw_load(sbase + (off + j) * stok + c * es, DT, m, full);
  r[W - 1] = raw_load(k->xbase + c * es, DT, m, full);
  if (next_state) {
    for (int j = 0; j < W - 1; j++) {
      _mm_prefetch(next_state + j * stok + c * es, _MM_HINT_T0);
      if (DT == XK_F32) _mm_prefetch(next_state + j * stok + c * es + 64, _MM_HINT_T0);
    }
  }
  for (int i = 0; i < W - 1; i++) raw_store(sbase + i * stok + c * es, DT, r[i + 1], m, full);
  v32 w[MAXW], u[MAXW];
  for (int j = 0; j < W; j++) {
    w[j] = load_row_f32(k->wf + j * k->rf + c);
    u[j] = raw_f32(r[j], DT);
  }
  const v32 bias = k->has_bias ? load_row_f32(k->bias + c) : zero32();
  store_f32(k->obase + c * es, DT, conv_unit(w, u, bias, W, DT, silu), m, full, 0);
}

XK_INLINE void decode_tokens(const fast_ctx *k, char *sbase, int64_t stok, const char *next_state, int64_t len,
                             int64_t off, int64_t keep, int silu, const int W, const int DT) {
  int64_t c = 0;
  if (len == 1) {
    for (; c + UNIT <= k->nc; c += UNIT) decode_unit1(k, sbase, stok, next_state, c, UNIT, off, W, DT, silu);
    if (c < k->nc) decode_unit1(k, sbase, stok, next_state, c, k->nc - c, off, W, DT, silu);
    return;
  }
  for (; c + UNIT <= k->nc; c += UNIT) decode_unit(k, sbase, stok, next_state, c, UNIT, len, off, keep, W, DT, silu);
  if (c < k->nc) decode_unit(k, sbase, stok, next_state, c, k->nc - c, len, off, keep, W, DT, silu);
}

#define DECODE_CALL(k, sbase, stok, next, len, off, keep, silu, W_, DT_) \
  decode_tokens(k, sbase, stok, next, len, off, keep, silu, W_, DT_)

static void decode_any(const fast_ctx *k, char *sbase, int64_t stok, const char *next, int64_t len, int64_t off,
                       int64_t keep, int silu, int W, int dt) {
  if (dt == XK_BF16) {
    const int DT = XK_BF16;
    DISPATCH_W(DECODE_CALL, k, sbase, stok, next, len, off, keep, silu)
  } else if (dt == XK_F16) {
    const int DT = XK_F16;
    DISPATCH_W(DECODE_CALL, k, sbase, stok, next, len, off, keep, silu)
  } else {
    const int DT = XK_F32;
    DISPATCH_W(DECODE_CALL, k, sbase, stok, next, len, off, keep, silu)
  }
}

/* Gathers row j of the weights as fp32: dst[c] = weight[c0 + c, j], c < nc. */
static void weight_row_f32(float *dst, const xk_conv1d_args *a, int64_t c0, int64_t nc, int64_t j) {
  const int64_t ws = xk_dtype_size(a->weight_dtype), sd = a->weight_stride_dim;
  const char *base = (const char *)a->weight + (c0 * sd + j * a->weight_stride_width) * ws;
  int64_t c = 0;
  if (sd == 1) {
    xk_convert_row(dst, XK_F32, base, a->weight_dtype, nc, 1.0f);
    return;
  }
  /* 32-bit gathers, 16 channels at a time. A 16-bit element is read with the
   * two bytes after it: inside the tensor for every channel before the last
   * (strides are non-negative, so channel dim - 1 holds the last element);
   * the group holding channel dim - 1 goes through the scalar loop. */
  int64_t vec_end = nc;
  if (ws == 2 && a->dim - 1 - c0 < nc) vec_end = a->dim - 1 - c0;
  if (sd > 0 && sd * ws <= INT32_MAX / 16) {
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)(sd * ws)));
    for (; c + 16 <= vec_end; c += 16) {
      const __m512i g = _mm512_i32gather_epi32(idx, base + c * sd * ws, 1);
      __m512 v;
      if (a->weight_dtype == XK_F32) {
        v = _mm512_castsi512_ps(g);
      } else if (a->weight_dtype == XK_BF16) {
        v = _mm512_castsi512_ps(_mm512_slli_epi32(g, 16));
      } else {
        v = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
      }
      _mm512_storeu_ps(dst + c, v);
    }
  }
  for (; c < nc; c++) dst[c] = xk_load_scalar(base, a->weight_dtype, c * sd);
}

/*
 * (dim, width) contiguous 16-bit weights, all rows at once: 16 channels are
 * 16 * width consecutive elements (at most 96, three vectors), and lane i of
 * row j is element i * width + j, picked by word permutes: into the high half
 * of each 32-bit lane for bf16 (that is its fp32 value), into the low 16
 * words for f16 (then converted). Channels 0..7 lie in the first two
 * vectors, 8..15 in the last two (width <= 6). Returns the channels done.
 */
static int64_t weights_packed16(float *scratch, int64_t rf, const xk_conv1d_args *a, int64_t c0, int64_t nc) {
  const int64_t width = a->width, words = 16 * width;
  const char *p0 = (const char *)a->weight + c0 * width * 2;
  const int bf = a->weight_dtype == XK_BF16;
  __m512i va[MAXW], vb[MAXW];
  for (int64_t j = 0; j < width; j++) {
    uint16_t ia[32], ib[32];
    for (int i = 0; i < 32; i++) {
      const int lane = bf ? i / 2 : i; /* fp32 lane (bf16: its odd word) or word (f16) */
      const int e = (int)(lane * width + j);
      ia[i] = (uint16_t)(e & 63);
      ib[i] = (uint16_t)((e - 32) & 63);
    }
    va[j] = _mm512_loadu_si512(ia);
    vb[j] = _mm512_loadu_si512(ib);
  }
  const __mmask32 all = bf ? 0xaaaaaaaau : 0x0000ffffu;
  const __mmask32 ka = bf ? 0x0000aaaau : 0x000000ffu, kb = bf ? 0xaaaa0000u : 0x0000ff00u;
  const __mmask32 k1 = words >= 64 ? 0xffffffffu : (__mmask32)((1ull << (words - 32)) - 1);
  const __mmask32 k2 = words > 64 ? (__mmask32)((1ull << (words - 64)) - 1) : 0;
  int64_t c = 0;
  for (; c + 16 <= nc; c += 16) {
    const char *p = p0 + c * width * 2;
    const __m512i z0 = _mm512_loadu_si512(p), z1 = _mm512_maskz_loadu_epi16(k1, p + 64);
    const __m512i z2 = _mm512_maskz_loadu_epi16(k2, p + 128);
    for (int64_t j = 0; j < width; j++) {
      __m512i r;
      if (words <= 64) {
        r = _mm512_maskz_permutex2var_epi16(all, z0, va[j], z1);
      } else {
        r = _mm512_maskz_permutex2var_epi16(ka, z0, va[j], z1);
        r = _mm512_or_si512(r, _mm512_maskz_permutex2var_epi16(kb, z1, vb[j], z2));
      }
      const __m512 v = bf ? _mm512_castsi512_ps(r) : _mm512_cvtph_ps(_mm512_castsi512_si256(r));
      _mm512_storeu_ps(scratch + j * rf + c, v);
    }
  }
  return c;
}

/* Fills the tile's fp32 weights and bias in scratch. */
static void prepare_tile(const xk_conv1d_args *a, float *scratch, int64_t rf, int64_t c0, int64_t nc) {
  const int64_t ws = xk_dtype_size(a->weight_dtype);
  int64_t done = 0;
  if (ws == 2 && a->weight_stride_dim == a->width && a->weight_stride_width == 1) {
    done = weights_packed16(scratch, rf, a, c0, nc);
  }
  if (done < nc) {
    for (int64_t j = 0; j < a->width; j++) weight_row_f32(scratch + j * rf + done, a, c0 + done, nc - done, j);
  }
  if (a->bias) {
    la_load_row(scratch + a->width * rf, (const char *)a->bias + c0 * a->bias_stride * xk_dtype_size(a->bias_dtype),
                a->bias_dtype, nc, a->bias_stride);
  }
  if (silu_prescale(a)) {
    for (int64_t j = 0; j < a->width + (a->bias != NULL); j++) scale_row(scratch + j * rf, nc);
  }
}

static int fast_eligible(const xk_conv1d_args *a) {
#ifdef XK_CONV_FORCE_GENERIC
  return 0;
#endif
  return a->x_stride_dim == 1 && a->out_stride_dim == 1 && a->x_dtype == a->out_dtype &&
         (a->x_dtype == XK_F32 || a->x_dtype == XK_F16 || a->x_dtype == XK_BF16);
}

/* One block on the fast paths; the tile's weights are already in scratch. */
static void conv_block_fast(const xk_conv1d_args *a, float *scratch, int64_t rf, int64_t seq, int64_t tile,
                            const seq_info *s, const seq_info *next) {
  const int64_t c0 = tile * a->channel_tile;
  const int64_t nc = (a->dim - c0) < a->channel_tile ? (a->dim - c0) : a->channel_tile;
  const int spec = a->num_accepted_tokens.data != NULL;
  const int64_t width = a->width, hist = width - 1, len = s->len, off = s->off;
  const int64_t keep = spec ? width - 2 + len : hist;
  const int dt = a->x_dtype;
  const int64_t es = xk_dtype_size(dt), ss = xk_dtype_size(a->state_dtype);

  fast_ctx k;
  k.a = a;
  k.rf = rf;
  k.nc = nc;
  k.wf = scratch;
  k.bias = scratch + width * rf;
  k.has_bias = a->bias != NULL;
  k.carry = scratch + (width + 1) * rf;
  k.xbase = (const char *)a->x + (seq * a->x_stride_seq + s->start * a->x_stride_tok + c0) * es;
  k.obase = (char *)a->out + (seq * a->out_stride_seq + s->start * a->out_stride_tok + c0) * es;
  k.xtok = a->x_stride_tok * es;
  k.otok = a->out_stride_tok * es;
  char *sbase = (char *)a->conv_states + (s->line * a->state_stride_line + c0 * a->state_stride_dim) * ss;
  const int64_t stok = a->state_stride_tok * ss;

  if (len <= DEC_MAX && s->load && a->state_dtype == dt && a->state_stride_dim == 1) {
    const char *next_state = NULL;
    if (next && !next->skip && next->load) {
      next_state = (const char *)a->conv_states + (next->line * a->state_stride_line + c0) * ss + next->off * stok;
    }
    decode_any(&k, sbase, stok, next_state, len, off, keep, a->silu, (int)width, dt);
    return;
  }

  /* Stream path. The window into carry, then the new state (before any output). */
  float *tmp = k.carry + hist * rf;
  for (int64_t j = 0; j < hist; j++) {
    if (s->load) {
      la_load_row(k.carry + j * rf, sbase + (off + j) * stok, a->state_dtype, nc, a->state_stride_dim);
    } else {
      memset(k.carry + j * rf, 0, (size_t)nc * sizeof(float));
    }
  }
  for (int64_t i = 0; i < keep; i++) {
    const int64_t u = hist + len - keep + i; /* index into W ++ x */
    char *dst = sbase + i * stok;
    if (u < hist) {
      la_store_row(dst, a->state_dtype, k.carry + u * rf, nc, a->state_stride_dim);
    } else if (a->state_dtype == dt && a->state_stride_dim == 1) {
      memcpy(dst, k.xbase + (u - hist) * k.xtok, (size_t)(nc * es));
    } else {
      la_load_row(tmp, k.xbase + (u - hist) * k.xtok, dt, nc, 1);
      la_store_row(dst, a->state_dtype, tmp, nc, a->state_stride_dim);
    }
  }

  /* Units start on output cache lines when every row shares one alignment
   * (a store split over two lines costs two); then large outputs are
   * streamed. */
  int stream = 0;
  int64_t head = 0;
  const int64_t mis = (int64_t)((uintptr_t)k.obase & 63);
  if ((k.otok & 63) == 0 && mis % es == 0) {
    head = ((64 - mis) & 63) / es;
    if (head > nc) head = nc;
    stream = len * nc * es >= STREAM_MIN_BYTES;
  }
  if (dt == XK_BF16) {
    stream_bf16(&k, len, head, a->silu, stream, (int)width);
  } else if (dt == XK_F16) {
    stream_f16(&k, len, head, a->silu, stream, (int)width);
  } else {
    stream_f32(&k, len, head, a->silu, stream, (int)width);
  }
  if (stream) _mm_sfence();
}

/* The stream path starts its units on output cache lines (`head` channels
 * in), and reads the tile's fp32 weights, bias and carried window at the
 * same channel offsets: the scratch rows start where those unit loads and
 * stores are 64-byte aligned too (split loads measured ~5% slower on a
 * misaligned bf16 prefill). The shift is under 16 floats, within the slack
 * the launcher adds; any shift is correct, this one is fast. */
static float *scratch_for_tile(const xk_conv1d_args *a, float *scratch, int64_t c0) {
  const int64_t es = xk_dtype_size(a->out_dtype);
  const int64_t mis = (int64_t)(((uintptr_t)a->out + (uintptr_t)(c0 * es)) & 63);
  const int64_t head = mis % es == 0 ? ((64 - mis) & 63) / es : 0;
  const uintptr_t first = (uintptr_t)(scratch + head);
  return (float *)((first + 63) & ~(uintptr_t)63) - head;
}

void XK_FN(causal_conv1d)(const xk_conv1d_args *a, float *scratch, int64_t block_begin, int64_t block_end) {
  if (!fast_eligible(a)) {
    for (int64_t b = block_begin; b < block_end; b++) {
      conv_block_generic(a, scratch, b / a->num_channel_tiles, b % a->num_channel_tiles);
    }
    return;
  }
  const int64_t rf = row_floats(a->channel_tile), tiles = a->num_channel_tiles;
  int64_t prepared = -1, cur_seq = -1;
  seq_info cur = {0, 0, 0, 0, 0, 1}, next = cur;
  int have_next = 0;
  for (int64_t b = block_begin; b < block_end; b++) {
    const int64_t seq = b / tiles, tile = b % tiles;
    if (seq != cur_seq) {
      cur = have_next ? next : seq_of(a, seq);
      cur_seq = seq;
    }
    /* With one tile per sequence, the next block is the next sequence:
     * the decode path prefetches its state. */
    have_next = tiles == 1 && b + 1 < block_end;
    if (have_next) next = seq_of(a, seq + 1);
    const int64_t c0 = tile * a->channel_tile;
    if (cur.skip || c0 >= a->dim) continue;
    float *tile_scratch = scratch_for_tile(a, scratch, c0);
    if (tile != prepared) {
      const int64_t nc = (a->dim - c0) < a->channel_tile ? (a->dim - c0) : a->channel_tile;
      prepare_tile(a, tile_scratch, rf, c0, nc);
      prepared = tile;
    }
    conv_block_fast(a, tile_scratch, rf, seq, tile, &cur, have_next ? &next : NULL);
  }
}

/* ---- AVX2 fast paths ------------------------------------------------------- */

#elif XK_F32_LANES == 8

/*
 * The AVX-512 paths' structure with 16-channel units of two 8-lane vectors
 * (a and b), taken two units (a 64-byte line of bf16) at a time. bf16
 * units hold their even channels in the first vector and the odd ones in
 * the second: one 32-byte load gives both by a shift and a mask, and the
 * rounded results interleave back by a shift and a word blend (widening
 * and packing in channel order cost two more shuffles per 16 channels, on
 * the same ports as the arithmetic). The tile's fp32 weights, bias and
 * carried window are stored in that order (to_unit_order); units start at
 * the tile's first channel. Every channel takes the generic path's
 * arithmetic (the same FMAs, the same rounding; partial units go through
 * zero-padded copies; silu: silu8_bf16_y_n on prescaled sums for bf16
 * outputs, as the generic path of this tier, else la_silu8 or, past the
 * last whole 8 channels, la_silu), so results do not depend on the path:
 * they are the generic path's bits,
 * except NaN payloads, which the state copies keep as they are where the
 * generic path's round trip through fp32 quiets them.
 */
#define UNIT 16
#define DEC_MAX 8 /* the decode path takes sequences up to this long */
#define TOK_BLOCK 8
#define X_PREFETCH 256

static inline int64_t row_floats(int64_t channel_tile) { return (channel_tile + UNIT - 1) / UNIT * UNIT; }

typedef struct v16 {
  __m256 a, b; /* bf16: channels 0, 2, .., 14 and 1, 3, .., 15; else 0..7 and 8..15 */
} v16;

typedef struct raw16 {
  __m256i a, b; /* a unit in its storage format (b used by f32 only) */
} raw16;

XK_INLINE raw16 raw_load(const char *p, const int DT) {
  raw16 r;
  r.a = _mm256_loadu_si256((const __m256i *)p);
  r.b = DT == XK_F32 ? _mm256_loadu_si256((const __m256i *)(p + 32)) : r.a;
  return r;
}

XK_INLINE void raw_store(char *p, const int DT, raw16 r) {
  _mm256_storeu_si256((__m256i *)p, r.a);
  if (DT == XK_F32) _mm256_storeu_si256((__m256i *)(p + 32), r.b);
}

XK_INLINE v16 raw_f32(raw16 r, const int DT) {
  v16 v;
  if (DT == XK_BF16) {
    v.a = _mm256_castsi256_ps(_mm256_slli_epi32(r.a, 16));
    v.b = _mm256_castsi256_ps(_mm256_and_si256(r.a, _mm256_set1_epi32((int)0xffff0000u)));
  } else if (DT == XK_F16) {
    v.a = _mm256_cvtph_ps(_mm256_castsi256_si128(r.a));
    v.b = _mm256_cvtph_ps(_mm256_extracti128_si256(r.a, 1));
  } else {
    v.a = _mm256_castsi256_ps(r.a);
    v.b = _mm256_castsi256_ps(r.b);
  }
  return v;
}

/* A unit of n <= UNIT `dt` values: zero-padded when partial. */
XK_INLINE raw16 raw_load_n(const char *p, const int DT, int64_t n) {
  if (n == UNIT) return raw_load(p, DT);
  char buf[64] = {0};
  memcpy(buf, p, (size_t)(n * (DT == XK_F32 ? 4 : 2)));
  return raw_load(buf, DT);
}

XK_INLINE void raw_store_n(char *p, const int DT, raw16 r, int64_t n) {
  if (n == UNIT) {
    raw_store(p, DT, r);
    return;
  }
  char buf[64];
  raw_store(buf, DT, r);
  memcpy(p, buf, (size_t)(n * (DT == XK_F32 ? 4 : 2)));
}

/*
 * fp32 bits with the bf16 value rounded to nearest even in the high half, as
 * xk_store8 rounds (NaN keeps its sign and top payload bits, made quiet).
 * Only for the results of fp32 arithmetic (conv sums, silu) on bf16 x and
 * on scratch weights, bias and history whose NaNs have their low 16 bits
 * clear (bf16 or canon_nan_rows): every NaN such arithmetic yields is one of those
 * made quiet or the default NaN, so its low half is 0 and the increment
 * (at most 0x8000) cannot carry into the high half, which keeps the NaN's
 * sign and top payload bits as xk_store8 does. No NaN test (session 16's
 * cmp + and-not masked the increment); the same bits.
 */
XK_INLINE void bf16_hi_n(const __m256 *v, __m256i *h, const int n) {
  __m256i inc[8];
  for (int i = 0; i < n; i++) inc[i] = _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(v[i]), 16),
                                                      _mm256_set1_epi32(1));
  for (int i = 0; i < n; i++) inc[i] = _mm256_add_epi32(inc[i], _mm256_set1_epi32(0x7fff));
  for (int i = 0; i < n; i++) h[i] = _mm256_add_epi32(_mm256_castps_si256(v[i]), inc[i]);
}

/* NaNs of n floats made quiet with their low 16 bits cleared (bf16_hi_n's
 * precondition): the sign and top payload bits, all a bf16 result keeps of
 * them, stay. Only rows converted from f16 / f32 (weights, bias, history
 * from f32 / f16 states) can hold such NaNs. */
static void canon_nan_rows(float *row, int64_t n) {
  for (int64_t c = 0; c < n; c += 8) {
    const __m256 v = _mm256_loadu_ps(row + c);
    const __m256 q = _mm256_castsi256_ps(_mm256_and_si256(
        _mm256_or_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x400000)), _mm256_set1_epi32((int)0xffff0000u)));
    _mm256_storeu_ps(row + c, _mm256_blendv_ps(v, q, _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  }
}

/* Rounds a unit of f16 or f32 to its storage format (f16: round to nearest
 * even, as xk_store8; bf16 units go through bf16_hi_n). */
XK_INLINE raw16 f32_raw(v16 v, const int DT) {
  raw16 r;
  if (DT == XK_F16) {
    r.a = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm256_cvtps_ph(v.a, _MM_FROUND_TO_NEAREST_INT)),
                                  _mm256_cvtps_ph(v.b, _MM_FROUND_TO_NEAREST_INT), 1);
  } else {
    r.a = _mm256_castps_si256(v.a);
    r.b = _mm256_castps_si256(v.b);
  }
  r.b = DT == XK_F32 ? r.b : r.a;
  return r;
}


XK_INLINE v16 load_row_f32(const float *row) {
  v16 v = {_mm256_loadu_ps(row), _mm256_loadu_ps(row + 8)};
  return v;
}

XK_INLINE void store_row_f32(float *row, v16 v) {
  _mm256_storeu_ps(row, v.a);
  _mm256_storeu_ps(row + 8, v.b);
}

/* Reorders fp32 rows of n channels (whole units: the row holds
 * row_floats(n) floats) from channel order to the units' lane order. */
static void to_unit_order(float *row, int64_t n, int dt) {
  if (dt != XK_BF16) return;
  for (int64_t c = 0; c < n; c += UNIT) {
    const __m256 lo = _mm256_loadu_ps(row + c), hi = _mm256_loadu_ps(row + c + 8);
    /* shuffle_ps picks within 128-bit lanes; the qword permute joins them. */
    const __m256 ev = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 od = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    _mm256_storeu_ps(row + c, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), 0xd8)));
    _mm256_storeu_ps(row + c + 8, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(od), 0xd8)));
  }
}

/*
 * silu of the conv sums of nv / 2 units (vectors a, b of each in turn) in
 * place, as the generic path computes it: bf16 silu8_bf16_y_n (prescaled
 * sums, every channel alike); else la_silu8, except the channels
 * past the tile's last whole 8 (from n & ~7 on in a partial unit of n
 * channels: units start at the tile's first channel), which take la_silu.
 * d: the vectors' first-stage results (la_silu8_den_n, or silu8_bf16_den_n
 * for bf16) when a pass before computed them, else NULL.
 */
XK_INLINE void silu_units(__m256 *v, const __m256 *d, const int nv, const int DT, int64_t n) {
  if (DT == XK_BF16) { /* prescaled sums; every channel the same, tails included */
    if (d) {
      silu8_bf16_div_n(v, d, nv);
    } else {
      silu8_bf16_y_n(v, nv);
    }
    return;
  }
  const int tail = n < UNIT && (n & 7) != 0;
  float x[8][8];
  if (tail) {
    for (int i = 0; i < nv; i++) _mm256_storeu_ps(x[i], v[i]);
  }
  if (d) {
    la_silu8_div_n(v, d, nv);
  } else {
    la_silu8_n(v, nv);
  }
  if (tail) {
    float y[8][8];
    for (int i = 0; i < nv; i++) _mm256_storeu_ps(y[i], v[i]);
    for (int i = 0; i < nv; i += 2) {
      for (int64_t ch = n & ~7; ch < n; ch++) {
        /* bf16 units: even channels in a, odd in b (v16) */
        const int vi = i + (int)(DT == XK_BF16 ? ch & 1 : ch >> 3), lane = (int)(DT == XK_BF16 ? ch >> 1 : ch & 7);
        y[vi][lane] = la_silu(x[vi][lane]);
      }
    }
    for (int i = 0; i < nv; i++) v[i] = _mm256_loadu_ps(y[i]);
  }
}

/* bias + sum_j w[j] * u[j] (fp32 FMAs in window order). */
XK_INLINE v16 conv_unit(const v16 *w, const v16 *u, v16 bias, const int W) {
  v16 s = bias;
  for (int j = 0; j < W; j++) {
    s.a = _mm256_fmadd_ps(w[j].a, u[j].a, s.a);
    s.b = _mm256_fmadd_ps(w[j].b, u[j].b, s.b);
  }
  return s;
}

/* What the fast paths of one grid block share. */
typedef struct fast_ctx {
  const float *wf, *bias; /* fp32 weights [width][rf] and bias [rf] of the tile, in unit order */
  int has_bias;           /* else bias is zero and not read */
  float *carry;           /* [width - 1][rf] fp32 window carried between token blocks, in unit order */
  int64_t rf;             /* scratch row stride (floats) */
  int64_t nc;             /* channels in the tile */
  const char *xbase;      /* x at the tile's first channel, the sequence's first token */
  char *obase;
  int64_t xtok, otok; /* token strides in bytes */
} fast_ctx;

XK_INLINE v16 bias_of(const fast_ctx *k, int64_t c, const int has_bias) {
  if (has_bias) return load_row_f32(k->bias + c);
  v16 v = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  return v;
}

/* silu (if asked) and the stores of nt tokens' sums (vectors ya[i], yb[i]
 * of token i), the ops of all their vectors interleaved stage by stage.
 * da, db: their la_silu8_den_n results (see silu_units), or NULL. */
XK_INLINE void finish_tokens(const __m256 *ya, const __m256 *yb, const __m256 *da, const __m256 *db, const int nt,
                             char *op, int64_t otok, const int DT, int64_t n, const int silu) {
  __m256 v[8], d[8];
  for (int i = 0; i < nt; i++) {
    v[2 * i] = ya[i];
    v[2 * i + 1] = yb[i];
    if (da) {
      d[2 * i] = da[i];
      d[2 * i + 1] = db[i];
    }
  }
  if (silu) silu_units(v, da ? d : NULL, 2 * nt, DT, n);
  if (DT == XK_BF16) {
    __m256i h[8];
    bf16_hi_n(v, h, 2 * nt);
    for (int i = 0; i < nt; i++) {
      raw16 r;
      r.a = _mm256_blend_epi16(_mm256_srli_epi32(h[2 * i], 16), h[2 * i + 1], 0xaa);
      r.b = r.a;
      raw_store_n(op + i * otok, DT, r, n);
    }
    return;
  }
  for (int i = 0; i < nt; i++) {
    const v16 t = {v[2 * i], v[2 * i + 1]};
    raw_store_n(op + i * otok, DT, f32_raw(t, DT), n);
  }
}

/* Vector h (0: a, 1: b) of a unit of `DT` values at p as fp32, in v16's lane
 * order; a partial unit (n < UNIT) through a zero-padded copy. */
XK_INLINE __m256 load_half(const char *p, const int DT, const int h, int64_t n) {
  if (n < UNIT) {
    const v16 v = raw_f32(raw_load_n(p, DT, n), DT);
    return h ? v.b : v.a;
  }
  if (DT == XK_BF16) {
    const __m256i r = _mm256_loadu_si256((const __m256i *)p);
    return _mm256_castsi256_ps(h ? _mm256_and_si256(r, _mm256_set1_epi32((int)0xffff0000u)) : _mm256_slli_epi32(r, 16));
  }
  if (DT == XK_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16 * h)));
  return _mm256_loadu_ps((const float *)(p + 32 * h));
}

/* The conv sums of vector h of a unit (n <= UNIT channels from channel c)
 * for tokens [t0, t0 + tb) into y[0..tb), and its carried window. One
 * vector at a time: its weights and window take 2W - 1 registers (both
 * vectors' would spill), and x rows are read once per vector from L1. */
XK_INLINE void stream_half(const fast_ctx *k, int64_t c, int64_t n, int64_t t0, int64_t tb, __m256 *y, const int h,
                           const int W, const int DT, const int has_bias) {
  const int64_t es = DT == XK_F32 ? 4 : 2;
  __m256 w[MAXW], u[MAXW];
  for (int j = 0; j < W; j++) w[j] = _mm256_loadu_ps(k->wf + j * k->rf + c + 8 * h);
  for (int j = 0; j < W - 1; j++) u[j] = _mm256_loadu_ps(k->carry + j * k->rf + c + 8 * h);
  const __m256 bias = has_bias ? _mm256_loadu_ps(k->bias + c + 8 * h) : _mm256_setzero_ps();
  const char *xp = k->xbase + t0 * k->xtok + c * es;
  int64_t t = 0;
  /* Groups of W tokens index u as a ring (slot of window entry j at step s:
   * (s + j) % W), so no register moves; after a group the ring is back in
   * order. The rest shifts u. */
  for (; t + W <= tb; t += W) {
    for (int st = 0; st < W; st++) {
      if (X_PREFETCH && h == 0) _mm_prefetch(xp + X_PREFETCH, _MM_HINT_T0);
      u[(st + W - 1) % W] = load_half(xp, DT, h, n);
      __m256 s = bias;
      for (int j = 0; j < W; j++) s = _mm256_fmadd_ps(w[j], u[(st + j) % W], s);
      y[t + st] = s;
      xp += k->xtok;
    }
  }
  for (; t < tb; t++) {
    if (X_PREFETCH && h == 0) _mm_prefetch(xp + X_PREFETCH, _MM_HINT_T0);
    u[W - 1] = load_half(xp, DT, h, n);
    __m256 s = bias;
    for (int j = 0; j < W; j++) s = _mm256_fmadd_ps(w[j], u[j], s);
    y[t] = s;
    for (int j = 0; j < W - 1; j++) u[j] = u[j + 1];
    xp += k->xtok;
  }
  /* Whole units: the rows hold row_floats(nc) floats. */
  for (int j = 0; j < W - 1; j++) _mm256_storeu_ps(k->carry + j * k->rf + c + 8 * h, u[j]);
}

/*
 * Stream path: nu units (n <= UNIT channels from channel c, nu = 2 only
 * for whole units), tokens [t0, t0 + tb): the sums of every vector, then
 * silu and rounding two tokens (four vectors) at a time. The exact silu is
 * most of the work: ~24 vector ops per 8 outputs, 15 of them on the two
 * FMA/mul pipes (vrcpps, vpblendvb and the shifts share those pipes on Zen 3,
 * measured), and a ~70-cycle dependency chain per vector; issued a vector
 * at a time next to the conv, spills and the chains stalled the FP
 * scheduler. Harness, bf16 dim 8192 w=4 silu, thread CPU time (Zen 3, 2
 * shared vCPUs): T = 2048 cold 19.2 ms with the sums and silu of both
 * vectors in one pass (the first re-land), 16.4 with la_silu8_n staged over
 * four vectors, 15.0 with one vector per pass over x (stream_half), 14.7
 * with two units per line. Tried and not kept: silu over one token (2
 * vectors) or four tokens (8 vectors) at a time, +8% / within noise;
 * TOK_BLOCK 4 or 16, within noise or slower; one unit per pass, ~25%
 * slower on rows in L2 without silu (each 64-byte line of x and out is
 * touched twice, TOK_BLOCK rows 16 KiB apart sharing one L1 set).
 * Session 13, not kept (T = 2048, loaded machine, base 12.3-17.2 ms):
 * streaming stores of the now whole 64-byte output lines 20.8-26.8 ms; x
 * prefetched 1024 bytes ahead 13.3-16.8; prefetchw of the output rows
 * 12.7 (without silu the walk alone takes ~7.7 ms, ~13 GB/s with the
 * output's read-for-ownership: the memory side, not overlapped with silu).
 * Session 13: silu in two passes over the block (la_silu8_den_n for every
 * vector, then la_silu8_div_n with the rounding and stores), each half of
 * the chain, so more vectors are in flight in the OoO window: T = 2048
 * 13.3 -> 11.8 ms (harness, CPU time; stage microbenchmark 14.2 -> 11.2
 * cycles per 8 outputs, groups of 4 in both passes best: 2 or 8 in either
 * pass 11.5-12.2).
 * Session 14, bf16 outputs: silu8_bf16_y_n in one pass over 2 tokens (4
 * vectors) in finish_tokens (no first stage here). Harness CPU time, T =
 * 2048 cold: 11.6 -> 9.7-10.3 ms; rows in L2 (dim 512): 0.041 -> 0.033 ms
 * per 64K outputs, ~12.7 cycles per 8 outputs (6.5 of them without silu)
 * against ~6.8 for the ~27 vector ops (taps 4, silu 15, rounding 7, load 1)
 * on four pipes, 5.5 on the two FMA pipes. Cold runs now take ~1.2x the
 * L2 time: the memory walk mostly overlaps; the rest is issue efficiency.
 * Not kept: silu over 4 tokens (8 vectors, spills) 0.033 -> 0.040 ms in
 * L2, 9.8 -> 13.4-16.6 ms cold; no x prefetch, within noise; TOK_BLOCK 16,
 * within noise; no Newton step ~9% faster in L2 but 1.2% of the outputs
 * rounded off by one ulp (vs 0.33%); Estrin's scheme for the polynomial,
 * within noise on a loaded machine.
 * Session 16 (harness, rdtsc, best of many calls; core cycles per 8
 * outputs at ~3.15 GHz): bf16 also in two passes (silu8_bf16_den_n for
 * every vector, then the division, rounding and stores) with k by
 * vroundps: same bits; rows in L1 (dim 512, T = 16, a copy of this
 * loop) 11.3 -> 10.2, in L2 (the kernel, T = 128) 12.8 -> 11.7, cold
 * T = 2048 dim 8192 within 1% (14.4: the memory walk bounds it there).
 * The loop is not port-bound: ~27 vector ops per 8 outputs would take
 * ~6.8 cycles on the four pipes (measured on Zen 3: FMA, mul, rcp on pipes
 * 0-1; add, max, min, round, cmp, cvt on 2-3; shifts on 1-2; integer
 * and/add/blend on any), but it retires ~41 instructions per 8 outputs
 * (callgrind: the conv pass alone ~18 for 6 vector ops: loads, stores,
 * prefetches, ring copies). Not kept (L1): den
 * inside the conv pass 11.6; three passes (den, div, rounding) 10.7;
 * groups of 2 or 8 in the den pass 10.5 / 10.7. Promising, not done: the
 * rounding without the NaN test (2 ops; needs NaN weights and bias with
 * clear low 16 bits) and the Newton step as y r + y r (1 - d r) (2 cycles
 * less latency, other bits): together 10.2 -> 9.5 in L1 (done in session 17).
 * Session 17 (harness, TSC ticks per 8 outputs, best of many calls; ~1.29
 * core cycles per tick): the rounding without the NaN test (bf16_hi_n,
 * canon_nan_rows; same bits) and the Newton step as y r + y r (1 - d r)
 * (silu8_bf16_div_n) in L1 (dim 512, T = 16 through a volatile) 8.28 ->
 * 7.90; whole token blocks with tb a constant (stream_tokens_as: loops
 * unrolled, y/d offsets fixed; the callgrind count of this loop was ~44
 * instructions per 8 outputs with tb a variable, ~37 with it constant)
 * 7.90 -> 7.45; the kernel in L2 (dim 512, T = 128) 8.66 -> 7.90. Not
 * kept: one x prefetch per 64-byte line (q == 0 only) instead of one per
 * unit, L1 equal, L2 7.90 -> 8.22; the exponent bits (cvt, shift) after
 * the polynomial instead of before it, L1 7.45 -> 7.35 but L2 7.87 -> 8.31.
 * Bench (6 alternated rounds, best of each binary, loaded host): T = 128
 * 572 -> 567 us, T = 2048 9.55 -> 9.35 ms, T = 8192 38.2 -> 37.4 ms (the
 * cold runs' medians within noise: the memory walk still bounds them).
 */
XK_INLINE void stream_unit(const fast_ctx *k, int64_t c, int64_t n, const int nu, int64_t t0, int64_t tb, const int W,
                           const int DT, const int silu, const int has_bias) {
  const int64_t es = DT == XK_F32 ? 4 : 2;
  __m256 y[2][2][TOK_BLOCK + MAXW], d[2][2][TOK_BLOCK];
  for (int q = 0; q < nu; q++) {
    stream_half(k, c + q * UNIT, n, t0, tb, y[q][0], 0, W, DT, has_bias);
    stream_half(k, c + q * UNIT, n, t0, tb, y[q][1], 1, W, DT, has_bias);
  }
  /* silu's first stage for every vector of the block, four at a time. */
  for (int q = 0; silu && q < nu; q++) {
    for (int h = 0; h < 2; h++) {
      int64_t t = 0;
      if (DT == XK_BF16) {
        for (; t + 4 <= tb; t += 4) silu8_bf16_den_n(y[q][h] + t, d[q][h] + t, 4);
        for (; t < tb; t++) silu8_bf16_den_n(y[q][h] + t, d[q][h] + t, 1);
      } else {
        for (; t + 4 <= tb; t += 4) la_silu8_den_n(y[q][h] + t, d[q][h] + t, 4);
        for (; t < tb; t++) la_silu8_den_n(y[q][h] + t, d[q][h] + t, 1);
      }
    }
  }
  char *op = k->obase + t0 * k->otok + c * es;
  const int two = silu; /* the first stage ran above */
  int64_t t = 0;
  for (; t + 2 <= tb; t += 2) {
    for (int q = 0; q < nu; q++) {
      finish_tokens(y[q][0] + t, y[q][1] + t, two ? d[q][0] + t : NULL, two ? d[q][1] + t : NULL, 2,
                    op + t * k->otok + q * UNIT * es, k->otok, DT, n, silu);
    }
  }
  for (; t < tb; t++) {
    for (int q = 0; q < nu; q++) {
      finish_tokens(y[q][0] + t, y[q][1] + t, two ? d[q][0] + t : NULL, two ? d[q][1] + t : NULL, 1,
                    op + t * k->otok + q * UNIT * es, k->otok, DT, n, silu);
    }
  }
}

XK_INLINE void stream_tokens_as(const fast_ctx *k, int64_t len, const int W, const int DT, const int silu,
                                const int has_bias) {
  for (int64_t t0 = 0; t0 < len; t0 += TOK_BLOCK) {
    const int64_t tb = len - t0 < TOK_BLOCK ? len - t0 : TOK_BLOCK;
    int64_t c = 0;
    if (tb == TOK_BLOCK) { /* whole blocks with tb a constant: unrolled loops, fixed offsets */
      for (; c + 2 * UNIT <= k->nc; c += 2 * UNIT) stream_unit(k, c, UNIT, 2, t0, TOK_BLOCK, W, DT, silu, has_bias);
    }
    for (; c + 2 * UNIT <= k->nc; c += 2 * UNIT) stream_unit(k, c, UNIT, 2, t0, tb, W, DT, silu, has_bias);
    for (; c + UNIT <= k->nc; c += UNIT) stream_unit(k, c, UNIT, 1, t0, tb, W, DT, silu, has_bias);
    if (c < k->nc) stream_unit(k, c, k->nc - c, 1, t0, tb, W, DT, silu, has_bias);
  }
}

/* silu and the bias as constants of the token loop (as run-time flags they
 * cost a test and branch per store). */
XK_INLINE void stream_tokens(const fast_ctx *k, int64_t len, const int W, const int DT, int silu, int has_bias) {
  if (silu && !has_bias) {
    stream_tokens_as(k, len, W, DT, 1, 0);
  } else {
    stream_tokens_as(k, len, W, DT, silu, has_bias);
  }
}

#define DISPATCH_W(FN, ...)                 \
  switch (W) {                              \
    case 2: FN(__VA_ARGS__, 2, DT); break;  \
    case 3: FN(__VA_ARGS__, 3, DT); break;  \
    case 4: FN(__VA_ARGS__, 4, DT); break;  \
    case 5: FN(__VA_ARGS__, 5, DT); break;  \
    default: FN(__VA_ARGS__, 6, DT); break; \
  }

#define STREAM_CALL(k, len, silu, has_bias, W_, DT_) stream_tokens(k, len, W_, DT_, silu, has_bias)

static void stream_any(const fast_ctx *k, int64_t len, int silu, int W, int dt) {
  if (dt == XK_BF16) {
    const int DT = XK_BF16;
    DISPATCH_W(STREAM_CALL, k, len, silu, k->has_bias)
  } else if (dt == XK_F16) {
    const int DT = XK_F16;
    DISPATCH_W(STREAM_CALL, k, len, silu, k->has_bias)
  } else {
    const int DT = XK_F32;
    DISPATCH_W(STREAM_CALL, k, len, silu, k->has_bias)
  }
}

/* Decode path, nu units (n <= UNIT channels from channel c, nu = 2 only for
 * whole units): per unit the window from the cache line (columns off..),
 * the new state written from the same registers (all of x is read first:
 * out may alias it) and the sums; then silu and rounding of the units'
 * vectors side by side, token by token. */
XK_INLINE void decode_sums(const fast_ctx *k, char *sbase, int64_t stok, int64_t c, int64_t n, const int nu,
                           int64_t len, int64_t off, int64_t keep, const int W, const int DT, __m256 *ya, __m256 *yb) {
  const int64_t es = DT == XK_F32 ? 4 : 2, hist = W - 1;
  for (int q = 0; q < nu; q++) {
    const int64_t cq = c + q * UNIT;
    raw16 r[MAXW - 1 + DEC_MAX];
    for (int j = 0; j < W - 1; j++) r[j] = raw_load_n(sbase + (off + j) * stok + cq * es, DT, n);
    for (int64_t t = 0; t < len; t++) r[hist + t] = raw_load_n(k->xbase + t * k->xtok + cq * es, DT, n);
    for (int64_t i = 0; i < keep; i++) raw_store_n(sbase + i * stok + cq * es, DT, r[hist + len - keep + i], n);
    v16 w[MAXW], u[MAXW];
    for (int j = 0; j < W; j++) w[j] = load_row_f32(k->wf + j * k->rf + cq);
    const v16 bias = bias_of(k, cq, k->has_bias);
    for (int j = 0; j < W - 1; j++) u[j] = raw_f32(r[j], DT);
    for (int64_t t = 0; t < len; t++) {
      u[W - 1] = raw_f32(r[hist + t], DT);
      const v16 s = conv_unit(w, u, bias, W);
      ya[t * nu + q] = s.a;
      yb[t * nu + q] = s.b;
      for (int j = 0; j < W - 1; j++) u[j] = u[j + 1];
    }
  }
}

XK_INLINE void decode_unit(const fast_ctx *k, char *sbase, int64_t stok, int64_t c, int64_t n,
                           const int nu, int64_t len, int64_t off, int64_t keep, const int W, const int DT, int silu) {
  const int64_t es = DT == XK_F32 ? 4 : 2;
  __m256 ya[2 * DEC_MAX], yb[2 * DEC_MAX]; /* token t, unit q: [t * nu + q] */
  decode_sums(k, sbase, stok, c, n, nu, len, off, keep, W, DT, ya, yb);
  for (int64_t t = 0; t < len; t++) {
    finish_tokens(ya + t * nu, yb + t * nu, NULL, NULL, nu, k->obase + t * k->otok + c * es, UNIT * es, DT, n, silu);
  }
}

/*
 * One token, DEC_GROUP whole unit pairs from channel c: their sums, then
 * silu in two passes over all of them (as the stream path: la_silu8_den_n
 * four vectors at a time, then the division, rounding and stores). Harness,
 * bf16 dim 8192 w=4 silu, CPU time: B = 64 680-693 -> 507-509 us with 4
 * pairs; 2 pairs 519-711 us (noisy, loaded machine). Session 15 (harness,
 * state pool 256 MiB, best of each round, old and new in one process):
 * without the next sequence's state prefetch (below) 8 pairs 444-459 us,
 * 4 pairs 483-493, 2 pairs 458-464 (one 634), 1 pair 519-525, 16 pairs
 * 491-510.
 *
 * No software prefetch of the state: prefetching the next sequence's state
 * lines while the current one ran (one line per unit, a whole sequence
 * ahead) cost 5-7% at B = 64, with consecutive pool indices (the bench) and
 * with random ones alike (503-511 vs 464-477 us; 522-527 vs 499-503): the
 * lines come back into L1 ~100 KiB of traffic before their use and are
 * evicted again, and the hardware prefetchers follow the 16 KiB state rows
 * from their first lines. Also not kept: a sequence per 512-channel chunk
 * (all sequences of the call through one chunk, its weights in L1, then
 * the next chunk, the next sequence's chunk prefetched): 1 KiB runs per
 * row, ~10% slower cold; with the call's data in L2 it was no faster, so
 * the L2 weight reads do not bound this loop. The bound is silu: all in L2,
 * B = 64 takes ~245 us without silu and ~420 us with it, cold ~300 / ~470.
 * Session 16: bf16 in two passes too (silu8_bf16_den_n over the group):
 * harness B = 64 cold 0.96-1.04x (median 0.97), in L2 0.95-0.97x of one
 * pass; with k by vroundps (both) 0.90-0.95x of session 15.
 */
#define DEC_GROUP 8
XK_INLINE void decode_group1(const fast_ctx *k, char *sbase, int64_t stok, int64_t c, int64_t off, const int W,
                             const int DT, int silu) {
  const int64_t es = DT == XK_F32 ? 4 : 2;
  __m256 y[DEC_GROUP][4], d[DEC_GROUP][4]; /* a of units 0, 1, then b */
  for (int g = 0; g < DEC_GROUP; g++) {
    decode_sums(k, sbase, stok, c + g * 2 * UNIT, UNIT, 2, 1, off, W - 1, W, DT, y[g], y[g] + 2);
  }
  const int two = silu;
  for (int g = 0; two && g < DEC_GROUP; g++) {
    if (DT == XK_BF16) {
      silu8_bf16_den_n(y[g], d[g], 4);
    } else {
      la_silu8_den_n(y[g], d[g], 4);
    }
  }
  for (int g = 0; g < DEC_GROUP; g++) {
    finish_tokens(y[g], y[g] + 2, two ? d[g] : NULL, two ? d[g] + 2 : NULL, 2, k->obase + (c + g * 2 * UNIT) * es,
                  UNIT * es, DT, UNIT, silu);
  }
}

XK_INLINE void decode_tokens(const fast_ctx *k, char *sbase, int64_t stok, int64_t len, int64_t off, int64_t keep,
                             int silu, const int W, const int DT) {
  int64_t c = 0;
  for (; len == 1 && c + 2 * UNIT * DEC_GROUP <= k->nc; c += 2 * UNIT * DEC_GROUP) {
    decode_group1(k, sbase, stok, c, off, W, DT, silu);
  }
  for (; c + 2 * UNIT <= k->nc; c += 2 * UNIT) {
    decode_unit(k, sbase, stok, c, UNIT, 2, len, off, keep, W, DT, silu);
  }
  for (; c + UNIT <= k->nc; c += UNIT) decode_unit(k, sbase, stok, c, UNIT, 1, len, off, keep, W, DT, silu);
  if (c < k->nc) decode_unit(k, sbase, stok, c, k->nc - c, 1, len, off, keep, W, DT, silu);
}

#define DECODE_CALL(k, sbase, stok, len, off, keep, silu, W_, DT_) \
  decode_tokens(k, sbase, stok, len, off, keep, silu, W_, DT_)

static void decode_any(const fast_ctx *k, char *sbase, int64_t stok, int64_t len, int64_t off,
                       int64_t keep, int silu, int W, int dt) {
  if (dt == XK_BF16) {
    const int DT = XK_BF16;
    DISPATCH_W(DECODE_CALL, k, sbase, stok, len, off, keep, silu)
  } else if (dt == XK_F16) {
    const int DT = XK_F16;
    DISPATCH_W(DECODE_CALL, k, sbase, stok, len, off, keep, silu)
  } else {
    const int DT = XK_F32;
    DISPATCH_W(DECODE_CALL, k, sbase, stok, len, off, keep, silu)
  }
}

/* Fills the tile's fp32 weights and bias in scratch, zero past nc, in unit
 * order. */
static void prepare_tile(const xk_conv1d_args *a, float *scratch, int64_t rf, int64_t c0, int64_t nc) {
  const int64_t ws = xk_dtype_size(a->weight_dtype);
  const int rows = (int)a->width + (a->bias != NULL);
  int64_t done = 0;
  const int bf16_order = a->x_dtype == XK_BF16; /* weight rows in bf16 units' lane order (to_unit_order) */
  const int pre = silu_prescale(a);
  if (a->width == 4 && a->weight_stride_dim == 4 && a->weight_stride_width == 1) {
    /* (dim, 4) contiguous weights, 16 channels (64 values) at a time: a
     * transpose within 128-bit lanes gives tap j of channels 0, 2, 4, 6 and
     * 1, 3, 5, 7 of each 8; joining the halves of two such blocks gives the
     * even and odd channels (bf16 unit order, no to_unit_order pass), the
     * permute puts each 8 in channel order for the other dtypes. The strided
     * scalar rows below cost most of a small decode call. */
    const char *base = (const char *)a->weight + c0 * 4 * ws;
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    /* bf16 weights for bf16 units: the transpose on the raw 16-bit pairs.
     * A 32-bit lane holds taps (0, 1) or (2, 3) of one channel: two dword
     * shuffles pick the (0, 1) and the (2, 3) lanes of the even and of the
     * odd channels, the permute puts them in channel order, and each such
     * vector gives two taps as fp32 (tap 0 / 2 shifted up, tap 1 / 3
     * masked). 26 vector ops per 16 channels instead of 56 (xk_load8
     * widens every 8 values); the same bits. Decode B = 1, dim 8192 (C
     * harness, data in L2, best of many calls): 11.1 -> 8.3 us; this
     * preparation was ~5.3 us of it. Smaller channel tiles for B = 1 (so
     * the prepared rows stay in L1) were no faster: 1024 / 512 / 256
     * channels 11.3 / 11.5 / 12.3 us against 11.0 for one 8192 tile. */
    for (; a->weight_dtype == XK_BF16 && bf16_order && done + 16 <= nc; done += 16) {
      const float *p = (const float *)(base + done * 8);
      const __m256 l0 = _mm256_loadu_ps(p), l1 = _mm256_loadu_ps(p + 8);
      const __m256 l2 = _mm256_loadu_ps(p + 16), l3 = _mm256_loadu_ps(p + 24);
      /* lane 0 of x01: taps (0, 1) of channels 0, 1, 4, 5; lane 1: 2, 3, 6, 7 */
      const __m256 x01 = _mm256_shuffle_ps(l0, l1, _MM_SHUFFLE(2, 0, 2, 0));
      const __m256 x23 = _mm256_shuffle_ps(l0, l1, _MM_SHUFFLE(3, 1, 3, 1));
      const __m256 y01 = _mm256_shuffle_ps(l2, l3, _MM_SHUFFLE(2, 0, 2, 0));
      const __m256 y23 = _mm256_shuffle_ps(l2, l3, _MM_SHUFFLE(3, 1, 3, 1));
      __m256i pair[4]; /* taps (0, 1) even channels, (0, 1) odd, (2, 3) even, (2, 3) odd */
      pair[0] = _mm256_castps_si256(_mm256_shuffle_ps(x01, y01, _MM_SHUFFLE(2, 0, 2, 0)));
      pair[1] = _mm256_castps_si256(_mm256_shuffle_ps(x01, y01, _MM_SHUFFLE(3, 1, 3, 1)));
      pair[2] = _mm256_castps_si256(_mm256_shuffle_ps(x23, y23, _MM_SHUFFLE(2, 0, 2, 0)));
      pair[3] = _mm256_castps_si256(_mm256_shuffle_ps(x23, y23, _MM_SHUFFLE(3, 1, 3, 1)));
      for (int i = 0; i < 4; i++) {
        const __m256i v = _mm256_permutevar8x32_epi32(pair[i], order);
        __m256 lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        __m256 hi = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u)));
        if (pre) {
          lo = _mm256_mul_ps(lo, _mm256_set1_ps(SILU_Y_SCALE));
          hi = _mm256_mul_ps(hi, _mm256_set1_ps(SILU_Y_SCALE));
        }
        const int tap = 2 * (i >> 1), odd = i & 1; /* rows tap and tap + 1, even or odd half */
        _mm256_storeu_ps(scratch + tap * rf + done + 8 * odd, lo);
        _mm256_storeu_ps(scratch + (tap + 1) * rf + done + 8 * odd, hi);
      }
    }
    for (; done + 16 <= nc; done += 16) {
      __m256 tap[2][4];
      for (int h = 0; h < 2; h++) {
        const char *p = base + (done + 8 * h) * 4 * ws;
        const __m256 m0 = xk_load8(p, a->weight_dtype), m1 = xk_load8(p + 8 * ws, a->weight_dtype);
        const __m256 m2 = xk_load8(p + 16 * ws, a->weight_dtype), m3 = xk_load8(p + 24 * ws, a->weight_dtype);
        const __m256d t0 = _mm256_castps_pd(_mm256_unpacklo_ps(m0, m1));
        const __m256d t1 = _mm256_castps_pd(_mm256_unpackhi_ps(m0, m1));
        const __m256d t2 = _mm256_castps_pd(_mm256_unpacklo_ps(m2, m3));
        const __m256d t3 = _mm256_castps_pd(_mm256_unpackhi_ps(m2, m3));
        tap[h][0] = _mm256_castpd_ps(_mm256_unpacklo_pd(t0, t2));
        tap[h][1] = _mm256_castpd_ps(_mm256_unpackhi_pd(t0, t2));
        tap[h][2] = _mm256_castpd_ps(_mm256_unpacklo_pd(t1, t3));
        tap[h][3] = _mm256_castpd_ps(_mm256_unpackhi_pd(t1, t3));
      }
      for (int j = 0; j < 4; j++) {
        float *row = scratch + j * rf + done;
        if (pre) { /* scaled here, not in a second pass over the row: B=1 decode pays every pass */
          tap[0][j] = _mm256_mul_ps(tap[0][j], _mm256_set1_ps(SILU_Y_SCALE));
          tap[1][j] = _mm256_mul_ps(tap[1][j], _mm256_set1_ps(SILU_Y_SCALE));
        }
        if (bf16_order) {
          _mm256_storeu_ps(row, _mm256_permute2f128_ps(tap[0][j], tap[1][j], 0x20));
          _mm256_storeu_ps(row + 8, _mm256_permute2f128_ps(tap[0][j], tap[1][j], 0x31));
        } else {
          _mm256_storeu_ps(row, _mm256_permutevar8x32_ps(tap[0][j], order));
          _mm256_storeu_ps(row + 8, _mm256_permutevar8x32_ps(tap[1][j], order));
        }
      }
    }
  }
  for (int64_t j = 0; j < rows; j++) {
    float *row = scratch + j * rf;
    if (j < a->width) {
      la_load_row(row + done,
                  (const char *)a->weight + ((c0 + done) * a->weight_stride_dim + j * a->weight_stride_width) * ws,
                  a->weight_dtype, nc - done, a->weight_stride_dim);
    } else {
      la_load_row(row, (const char *)a->bias + c0 * a->bias_stride * xk_dtype_size(a->bias_dtype), a->bias_dtype,
                  nc, a->bias_stride);
    }
    memset(row + nc, 0, (size_t)(row_floats(nc) - nc) * sizeof(float));
    const int64_t from = j < a->width ? done : 0; /* channels before `from` are in order already */
    to_unit_order(row + from, nc - from, a->x_dtype);
    if (pre) scale_row(row + from, row_floats(nc) - from); /* unit order: a partial unit spans its 16 slots */
    if (bf16_order && (j < a->width ? a->weight_dtype : a->bias_dtype) != XK_BF16) canon_nan_rows(row, row_floats(nc));
  }
}

static int fast_eligible(const xk_conv1d_args *a) {
  return a->x_stride_dim == 1 && a->out_stride_dim == 1 && a->x_dtype == a->out_dtype &&
         (a->x_dtype == XK_F32 || a->x_dtype == XK_F16 || a->x_dtype == XK_BF16);
}

/* One block on the fast paths; the tile's weights are already in scratch. */
static void conv_block_fast(const xk_conv1d_args *a, float *scratch, int64_t rf, int64_t seq, int64_t tile,
                            const seq_info *s) {
  const int64_t c0 = tile * a->channel_tile;
  const int64_t nc = (a->dim - c0) < a->channel_tile ? (a->dim - c0) : a->channel_tile;
  const int spec = a->num_accepted_tokens.data != NULL;
  const int64_t width = a->width, hist = width - 1, len = s->len, off = s->off;
  const int64_t keep = spec ? width - 2 + len : hist;
  const int dt = a->x_dtype;
  const int64_t es = xk_dtype_size(dt), ss = xk_dtype_size(a->state_dtype);

  fast_ctx k;
  k.rf = rf;
  k.nc = nc;
  k.wf = scratch;
  k.bias = scratch + width * rf;
  k.has_bias = a->bias != NULL;
  k.carry = scratch + (width + 1) * rf;
  k.xbase = (const char *)a->x + (seq * a->x_stride_seq + s->start * a->x_stride_tok + c0) * es;
  k.obase = (char *)a->out + (seq * a->out_stride_seq + s->start * a->out_stride_tok + c0) * es;
  k.xtok = a->x_stride_tok * es;
  k.otok = a->out_stride_tok * es;
  char *sbase = (char *)a->conv_states + (s->line * a->state_stride_line + c0 * a->state_stride_dim) * ss;
  const int64_t stok = a->state_stride_tok * ss;

  if (len <= DEC_MAX && s->load && a->state_dtype == dt && a->state_stride_dim == 1) {
    decode_any(&k, sbase, stok, len, off, keep, a->silu, (int)width, dt);
    return;
  }

  /* Stream path. The window into carry, then the new state (before any
   * output), then the carry in unit order. */
  float *tmp = k.carry + hist * rf;
  for (int64_t j = 0; j < hist; j++) {
    float *row = k.carry + j * rf;
    if (s->load) {
      la_load_row(row, sbase + (off + j) * stok, a->state_dtype, nc, a->state_stride_dim);
    } else {
      memset(row, 0, (size_t)nc * sizeof(float));
    }
    memset(row + nc, 0, (size_t)(row_floats(nc) - nc) * sizeof(float));
  }
  for (int64_t i = 0; i < keep; i++) {
    const int64_t u = hist + len - keep + i; /* index into W ++ x */
    char *dst = sbase + i * stok;
    if (u < hist) {
      la_store_row(dst, a->state_dtype, k.carry + u * rf, nc, a->state_stride_dim);
    } else if (a->state_dtype == dt && a->state_stride_dim == 1) {
      memcpy(dst, k.xbase + (u - hist) * k.xtok, (size_t)(nc * es));
    } else {
      la_load_row(tmp, k.xbase + (u - hist) * k.xtok, dt, nc, 1);
      la_store_row(dst, a->state_dtype, tmp, nc, a->state_stride_dim);
    }
  }
  for (int64_t j = 0; j < hist; j++) {
    to_unit_order(k.carry + j * rf, nc, dt);
    /* History widened from f32 / f16 states: bf16_hi_n's NaN precondition
     * (the state rows themselves were stored above with their own bits). */
    if (dt == XK_BF16 && a->state_dtype != XK_BF16) canon_nan_rows(k.carry + j * rf, row_floats(nc));
  }

  /* Plain stores: a unit writes half a 64-byte line of bf16, and streaming
   * those halves (the other half follows TOK_BLOCK tokens later) measured
   * ~2x slower on a cold bf16 prefill (partial write-combining flushes). */
  stream_any(&k, len, a->silu, (int)width, dt);
}

void XK_FN(causal_conv1d)(const xk_conv1d_args *a, float *scratch, int64_t block_begin, int64_t block_end) {
  if (!fast_eligible(a)) {
    for (int64_t b = block_begin; b < block_end; b++) {
      conv_block_generic(a, scratch, b / a->num_channel_tiles, b % a->num_channel_tiles);
    }
    return;
  }
  /* Scratch rows 64-byte aligned (the launcher's 16 floats of slack). */
  float *rows = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
  const int64_t rf = row_floats(a->channel_tile), tiles = a->num_channel_tiles;
  int64_t prepared = -1, cur_seq = -1;
  seq_info cur = {0, 0, 0, 0, 0, 1};
  for (int64_t b = block_begin; b < block_end; b++) {
    const int64_t seq = b / tiles, tile = b % tiles;
    if (seq != cur_seq) {
      cur = seq_of(a, seq);
      cur_seq = seq;
    }
    const int64_t c0 = tile * a->channel_tile;
    if (cur.skip || c0 >= a->dim) continue;
    if (tile != prepared) {
      const int64_t nc = (a->dim - c0) < a->channel_tile ? (a->dim - c0) : a->channel_tile;
      prepare_tile(a, rows, rf, c0, nc);
      prepared = tile;
    }
    conv_block_fast(a, rows, rf, seq, tile, &cur);
  }
}

#else

void XK_FN(causal_conv1d)(const xk_conv1d_args *a, float *scratch, int64_t block_begin, int64_t block_end) {
  for (int64_t b = block_begin; b < block_end; b++) {
    conv_block_generic(a, scratch, b / a->num_channel_tiles, b % a->num_channel_tiles);
  }
}

#endif
