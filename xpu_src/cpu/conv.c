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
 */
#include "../common/tier.h"
#include "la_util.h"

#define MAXW 6

/* acc[c] = bias[c] + sum_j w[j][c] * u[j][c] over the tile; silu if asked. */
static void conv_tile_step(float *acc, const float *bias, float *const *w, float *const *u, int64_t width,
                           int64_t n, int silu) {
  int64_t c = 0;
#if XK_F32_LANES == 16
  for (; c + 16 <= n; c += 16) {
    __m512 s = _mm512_loadu_ps(bias + c);
    for (int64_t j = 0; j < width; j++) s = _mm512_fmadd_ps(_mm512_loadu_ps(w[j] + c), _mm512_loadu_ps(u[j] + c), s);
    if (silu) s = la_silu16(s);
    _mm512_storeu_ps(acc + c, s);
  }
#elif XK_F32_LANES == 8
  for (; c + 8 <= n; c += 8) {
    __m256 s = _mm256_loadu_ps(bias + c);
    for (int64_t j = 0; j < width; j++) s = _mm256_fmadd_ps(_mm256_loadu_ps(w[j] + c), _mm256_loadu_ps(u[j] + c), s);
    if (silu) s = la_silu8(s);
    _mm256_storeu_ps(acc + c, s);
  }
#endif
  for (; c < n; c++) {
    float s = bias[c];
    for (int64_t j = 0; j < width; j++) s = fmaf(w[j][c], u[j][c], s);
    acc[c] = silu ? la_silu(s) : s;
  }
}

static void conv_block(const xk_conv1d_args *a, float *scratch, int64_t seq, int64_t tile) {
  const int64_t c0 = tile * a->channel_tile;
  const int64_t nc = (a->dim - c0) < a->channel_tile ? (a->dim - c0) : a->channel_tile;
  if (nc <= 0) return;
  int64_t start = 0, len = a->seqlen;
  if (a->query_start_loc.data) {
    start = la_at(&a->query_start_loc, seq);
    len = la_at(&a->query_start_loc, seq + 1) - start;
  }
  if (len <= 0) return;
  const int64_t line = a->cache_indices.data ? la_at(&a->cache_indices, seq) : seq;
  if (line == a->pad_slot_id) return;
  const int load = a->has_initial_state.data ? (int)la_at(&a->has_initial_state, seq) : a->load_state_default;
  const int spec = a->num_accepted_tokens.data != NULL;
  const int64_t off = spec ? la_at(&a->num_accepted_tokens, seq) - 1 : 0;
  const int64_t width = a->width, hist = width - 1;
  const int64_t keep = spec ? width - 2 + len : hist;

  const int64_t xs = xk_dtype_size(a->x_dtype), os = xk_dtype_size(a->out_dtype);
  const int64_t ss = xk_dtype_size(a->state_dtype), ws = xk_dtype_size(a->weight_dtype);
  const char *xbase = (const char *)a->x + (seq * a->x_stride_seq + start * a->x_stride_tok + c0 * a->x_stride_dim) * xs;
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
    conv_tile_step(acc, bias, wv, u, width, nc, a->silu);
    la_store_row(obase + t * a->out_stride_tok * os, a->out_dtype, acc, nc, a->out_stride_dim);
    head = (head + 1) % width;
  }
}

void XK_FN(causal_conv1d)(const xk_conv1d_args *a, float *scratch, int64_t block_begin, int64_t block_end) {
  for (int64_t b = block_begin; b < block_end; b++) {
    conv_block(a, scratch, b / a->num_channel_tiles, b % a->num_channel_tiles);
  }
}
