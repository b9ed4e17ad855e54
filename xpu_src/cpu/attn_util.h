/*
 * Scalar pieces every attention kernel (avx512 and AMX, paged and varlen)
 * shares, so their outputs agree bit for bit.
 */
#ifndef XK_ATTN_UTIL_H
#define XK_ATTN_UTIL_H

#include <math.h>

#include "../include/xops_kernels.h"

/* The end of a query row's online softmax (head h, running max *m and sum
 * *l): folds the head's attention sink (one logit, s_aux) into *m and *l and
 * returns the factor on the row's P.V accumulator, alpha / l (0 for a row
 * that attended nothing). *m and *l are left as xk_attn_lse wants them. */
static inline float xk_attn_row_factor(const xk_attn_args *a, int64_t h, float *m, float *l) {
  float f = 1.0f;
  if (a->s_aux) {
    const float sink = a->s_aux[h], ms = fmaxf(*m, sink);
    const float alpha = *m == -INFINITY ? 0.0f : expf(*m - ms);
    *l = *l * alpha + expf(sink - ms);
    f = alpha;
    *m = ms;
  }
  return *l == 0.0f ? 0.0f : f / *l;
}

/* The keys [*lo, *hi) a query at context position pos may attend among
 * k_len: causal (queries aligned to the end of their context) and the
 * sliding window (left, right; < 0: unbounded). Empty when *lo >= *hi. */
static inline void xk_attn_key_range(const xk_attn_args *a, int64_t pos, int64_t k_len, int64_t *lo, int64_t *hi) {
  int64_t h = k_len, l = 0;
  if (a->causal && pos + 1 < h) h = pos + 1;
  if (a->window_right >= 0 && pos + a->window_right + 1 < h) h = pos + a->window_right + 1;
  if (a->window_left >= 0 && pos - a->window_left > l) l = pos - a->window_left;
  *lo = l;
  *hi = h;
}

/* log-sum-exp of a finished row: -inf when it attended nothing. */
static inline float xk_attn_lse(float m, float l) { return l == 0.0f ? -INFINITY : m + logf(l); }

#endif
