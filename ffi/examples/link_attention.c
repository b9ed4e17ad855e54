/*
 * Links libxpu_ops and runs decode attention the way an engine would: writes
 * two sequences' keys and values into a paged cache and a flash cache
 * (xops_reshape_and_cache / _flash, shuffled blocks), then attends one query
 * per sequence with xops_paged_attention_v1, xops_paged_attention_v2 and
 * xops_flash_attn_varlen_func, and merges two halves of a context with
 * xops_merge_attn_states. Checks each against a double-precision C reference
 * and that bad input (a block id outside the cache) returns the named status
 * and leaves the output untouched.
 *
 *   cc -std=c11 -Wall -Werror -I include ffi/examples/link_attention.c \
 *      -L target/release -lxpu_ops -lm -Wl,-rpath,target/release
 *
 * Exit status 0 when every check passes.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "xpu_ops.h"

enum { S = 2, H = 4, HKV = 2, D = 32, BS = 16, NB = 8, MAXB = 4, X = 4 /* f32: 16 bytes */ };

static const int LENS[S] = {20, 45};
static const int32_t TABLE[S][MAXB] = {{5, 2, 0, 0}, {7, 0, 3, 6}};

static int failures = 0;

#define CHECK(cond, ...)                                        \
  do {                                                          \
    if (!(cond)) {                                              \
      fprintf(stderr, "link_attention: FAILED %s: ", #cond);    \
      fprintf(stderr, __VA_ARGS__);                             \
      fprintf(stderr, "\n");                                    \
      failures++;                                               \
    }                                                           \
  } while (0)

static DLTensor tensor(void *data, DLDataTypeCode code, uint8_t bits, int32_t ndim, int64_t *shape) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCPU;
  t.ndim = ndim;
  t.dtype.code = (uint8_t)code;
  t.dtype.bits = bits;
  t.dtype.lanes = 1;
  t.shape = shape;
  return t;
}

static float K[S][64][HKV][D], V[S][64][HKV][D], Q[S][H][D];

static float value(int s, int t, int h, int d, int which) {
  return (float)sin(0.37 * (s + 1) + 0.11 * t + 0.7 * h + 0.013 * d * (which + 2));
}

/* vLLM's softmax (1e-6 in the denominator), f32 has no rounding of p. */
static void reference(double out[S][H][D]) {
  for (int s = 0; s < S; s++) {
    for (int h = 0; h < H; h++) {
      const int kvh = h / (H / HKV), L = LENS[s];
      double logit[64], mx = -1e300, sum = 0.0;
      for (int t = 0; t < L; t++) {
        double dot = 0.0;
        for (int d = 0; d < D; d++) dot += (double)Q[s][h][d] * K[s][t][kvh][d];
        logit[t] = dot / sqrt((double)D);
        if (logit[t] > mx) mx = logit[t];
      }
      for (int t = 0; t < L; t++) sum += exp(logit[t] - mx);
      for (int d = 0; d < D; d++) {
        double acc = 0.0;
        for (int t = 0; t < L; t++) acc += exp(logit[t] - mx) / (sum + 1e-6) * V[s][t][kvh][d];
        out[s][h][d] = acc;
      }
    }
  }
}

static double max_err(const float *got, double want[S][H][D]) {
  double e = 0.0;
  for (int i = 0; i < S * H * D; i++) {
    const double d = fabs(got[i] - ((double *)want)[i]);
    e = d > e || d != d ? d : e;
  }
  return e;
}

int main(void) {
  static float kc[NB][HKV][D / X][BS][X], vc[NB][HKV][D][BS], fk[NB][BS][HKV][D], fv[NB][BS][HKV][D];
  static float out[S][H][D];
  static double want[S][H][D];
  for (int s = 0; s < S; s++) {
    for (int t = 0; t < LENS[s]; t++)
      for (int h = 0; h < HKV; h++)
        for (int d = 0; d < D; d++) {
          K[s][t][h][d] = value(s, t, h, d, 0);
          V[s][t][h][d] = value(s, t, h, d, 1);
        }
    for (int h = 0; h < H; h++)
      for (int d = 0; d < D; d++) Q[s][h][d] = value(s, 99, h, d, 2);
  }
  /* Unused cache slots hold NaN: they must never reach the output. */
  for (size_t i = 0; i < sizeof kc / sizeof(float); i++) ((float *)kc)[i] = NAN;
  for (size_t i = 0; i < sizeof vc / sizeof(float); i++) ((float *)vc)[i] = NAN;
  for (size_t i = 0; i < sizeof fk / sizeof(float); i++) ((float *)fk)[i] = ((float *)fv)[i] = NAN;

  int64_t kv_shape[3] = {64, HKV, D}, slot_shape[1] = {64};
  int64_t kc_shape[5] = {NB, HKV, D / X, BS, X}, vc_shape[4] = {NB, HKV, D, BS};
  int64_t flash_shape[4] = {NB, BS, HKV, D};
  for (int s = 0; s < S; s++) {
    int64_t slots[64];
    for (int t = 0; t < 64; t++) slots[t] = t < LENS[s] ? TABLE[s][t / BS] * BS + t % BS : -1;
    DLTensor k = tensor(K[s], kDLFloat, 32, 3, kv_shape), v = tensor(V[s], kDLFloat, 32, 3, kv_shape);
    DLTensor sm = tensor(slots, kDLInt, 64, 1, slot_shape);
    DLTensor kct = tensor(kc, kDLFloat, 32, 5, kc_shape), vct = tensor(vc, kDLFloat, 32, 4, vc_shape);
    DLTensor fkt = tensor(fk, kDLFloat, 32, 4, flash_shape), fvt = tensor(fv, kDLFloat, 32, 4, flash_shape);
    CHECK(xops_reshape_and_cache(&k, &v, &kct, &vct, &sm, "auto", NULL, NULL) == XOPS_OK, "%s", xops_last_error());
    CHECK(xops_reshape_and_cache_flash(&k, &v, &fkt, &fvt, &sm, "auto", NULL, NULL) == XOPS_OK, "%s",
          xops_last_error());
  }
  reference(want);

  int64_t q_shape[3] = {S, H, D}, table_shape[2] = {S, MAXB}, lens_shape[1] = {S};
  int32_t lens32[S] = {LENS[0], LENS[1]};
  DLTensor q = tensor(Q, kDLFloat, 32, 3, q_shape), o = tensor(out, kDLFloat, 32, 3, q_shape);
  DLTensor bt = tensor((void *)TABLE, kDLInt, 32, 2, table_shape), sl = tensor(lens32, kDLInt, 32, 1, lens_shape);
  DLTensor kct = tensor(kc, kDLFloat, 32, 5, kc_shape), vct = tensor(vc, kDLFloat, 32, 4, vc_shape);
  const double scale = 1.0 / sqrt((double)D), tol = 2e-5;

  CHECK(xops_paged_attention_v1(&o, &q, &kct, &vct, HKV, scale, &bt, &sl, BS, 64, NULL, "auto", NULL, NULL) ==
            XOPS_OK,
        "%s", xops_last_error());
  CHECK(max_err(&out[0][0][0], want) < tol, "v1 error %g", max_err(&out[0][0][0], want));

  static float es[S][H][1], ml[S][H][1], tmp[S][H][1][D];
  int64_t part_shape[3] = {S, H, 1}, tmp_shape[4] = {S, H, 1, D};
  DLTensor est = tensor(es, kDLFloat, 32, 3, part_shape), mlt = tensor(ml, kDLFloat, 32, 3, part_shape);
  DLTensor tmpt = tensor(tmp, kDLFloat, 32, 4, tmp_shape);
  memset(out, 0, sizeof out);
  CHECK(xops_paged_attention_v2(&o, &est, &mlt, &tmpt, &q, &kct, &vct, HKV, scale, &bt, &sl, BS, 64, NULL, "auto",
                                NULL, NULL) == XOPS_OK,
        "%s", xops_last_error());
  CHECK(max_err(&out[0][0][0], want) < tol, "v2 error %g", max_err(&out[0][0][0], want));

  /* The same decode through the varlen op over the flash cache; the LSE of
   * each row then merges two halves of a context back into the whole. */
  int32_t cu[S + 1] = {0, 1, 2};
  int64_t cu_shape[1] = {S + 1}, lse_shape[2] = {H, S};
  static float lse[H][S];
  DLTensor cut = tensor(cu, kDLInt, 32, 1, cu_shape), lset = tensor(lse, kDLFloat, 32, 2, lse_shape);
  DLTensor fkt = tensor(fk, kDLFloat, 32, 4, flash_shape), fvt = tensor(fv, kDLFloat, 32, 4, flash_shape);
  memset(out, 0, sizeof out);
  CHECK(xops_flash_attn_varlen_func(&q, &fkt, &fvt, 1, &cut, 64, &sl, scale, 1, -1, -1, 0.0, NULL, &bt, &lset, &o,
                                    NULL, NULL, NULL) == XOPS_OK,
        "%s", xops_last_error());
  CHECK(max_err(&out[0][0][0], want) < tol, "varlen error %g", max_err(&out[0][0][0], want));

  /* Bad input: a block id outside the cache. Nothing is written. */
  int32_t bad[S][MAXB];
  memcpy(bad, TABLE, sizeof bad);
  bad[1][2] = NB;
  DLTensor badt = tensor(bad, kDLInt, 32, 2, table_shape);
  for (int i = 0; i < S * H * D; i++) (&out[0][0][0])[i] = 7.0f;
  enum xops_status st =
      xops_paged_attention_v1(&o, &q, &kct, &vct, HKV, scale, &badt, &sl, BS, 64, NULL, "auto", NULL, NULL);
  CHECK(st == XOPS_ERR_INDEX_OUT_OF_RANGE, "status %d", (int)st);
  CHECK(strstr(xops_last_error(), "block_tables") != NULL, "message %s", xops_last_error());
  int untouched = 1;
  for (int i = 0; i < S * H * D; i++) untouched &= (&out[0][0][0])[i] == 7.0f;
  CHECK(untouched, "output written on error");

  /* merge_attn_states: a state merged with an empty one (-inf) is itself. */
  static float merged[S][H][D], empty_lse[H][S], mlse[H][S];
  for (int h = 0; h < H; h++)
    for (int s = 0; s < S; s++) empty_lse[h][s] = -INFINITY;
  CHECK(xops_flash_attn_varlen_func(&q, &fkt, &fvt, 1, &cut, 64, &sl, scale, 1, -1, -1, 0.0, NULL, &bt, &lset, &o,
                                    NULL, NULL, NULL) == XOPS_OK,
        "%s", xops_last_error());
  DLTensor mt = tensor(merged, kDLFloat, 32, 3, q_shape), et = tensor(empty_lse, kDLFloat, 32, 2, lse_shape);
  DLTensor mlt2 = tensor(mlse, kDLFloat, 32, 2, lse_shape);
  CHECK(xops_merge_attn_states(&mt, &o, &lset, &o, &et, &mlt2) == XOPS_OK, "%s", xops_last_error());
  CHECK(memcmp(merged, out, sizeof out) == 0, "merge with an empty state changed the output");
  CHECK(memcmp(mlse, lse, sizeof lse) == 0, "merge with an empty state changed the LSE");

  if (failures) return 1;
  printf("link_attention: ok (xpu-ops %s, isa %s, %d threads)\n", xops_version(), xops_isa(), xops_get_num_threads());
  return 0;
}
