/*
 * Links libxpu_ops and runs the FC / GEMM family the way an engine would:
 * an fp32 linear (decode and GEMM sizes) checked against a C reference in
 * double, a named status with the output untouched on bad input, and W8A8:
 * dynamic per-token int8 quantization then the int8 GEMM, checked exactly
 * against integer arithmetic in C.
 *
 *   cc -std=c11 -Wall -Werror -I include ffi/examples/link_linear.c \
 *      -L target/release -lxpu_ops -lm -Wl,-rpath,target/release
 *
 * Exit status 0 when every check passes.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "xpu_ops.h"

enum { K = 75, N = 33, MAXM = 40 };

static int failures = 0;

#define CHECK(cond, ...)                                     \
  do {                                                       \
    if (!(cond)) {                                           \
      fprintf(stderr, "link_linear: FAILED %s: ", #cond);    \
      fprintf(stderr, __VA_ARGS__);                          \
      fprintf(stderr, "\n");                                 \
      failures++;                                            \
    }                                                        \
  } while (0)

static DLTensor tensor(void *data, DLDataTypeCode code, uint8_t bits, int32_t ndim, int64_t *shape,
                       int64_t *strides) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCPU;
  t.ndim = ndim;
  t.dtype.code = (uint8_t)code;
  t.dtype.bits = bits;
  t.dtype.lanes = 1;
  t.shape = shape;
  t.strides = strides;
  return t;
}

static float x[MAXM * K], w[N * K], bias[N], y[MAXM * N];

int main(void) {
  for (int i = 0; i < MAXM * K; i++) x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
  for (int i = 0; i < N * K; i++) w[i] = (float)((i * 53) % 97) / 48.0f - 1.0f;
  for (int i = 0; i < N; i++) bias[i] = 0.25f * (float)(i % 5);

  /* fp32 linear at M = 1 (decode) and M = 40 (tiled GEMM). */
  int64_t w_shape[2] = {N, K}, b_shape[1] = {N};
  DLTensor wt = tensor(w, kDLFloat, 32, 2, w_shape, NULL), bt = tensor(bias, kDLFloat, 32, 1, b_shape, NULL);
  int ms[2] = {1, MAXM};
  for (int c = 0; c < 2; c++) {
    int m = ms[c];
    int64_t x_shape[2] = {m, K}, y_shape[2] = {m, N};
    DLTensor xt = tensor(x, kDLFloat, 32, 2, x_shape, NULL), yt = tensor(y, kDLFloat, 32, 2, y_shape, NULL);
    xops_status rc = xops_linear(&xt, &wt, &bt, &yt);
    CHECK(rc == XOPS_OK, "M=%d status %d: %s", m, (int)rc, xops_last_error());
    for (int i = 0; i < m; i++) {
      for (int j = 0; j < N; j++) {
        double ref = bias[j], mag = 0;
        for (int k = 0; k < K; k++) {
          ref += (double)x[i * K + k] * w[j * K + k];
          mag += fabs((double)x[i * K + k] * w[j * K + k]);
        }
        /* The library's documented bound: 4 sqrt(K) 2^-24 sum|x w| + ulp. */
        double tol = 4.0 * sqrt((double)K) * ldexp(mag, -24) + ldexp(fabs(ref), -23);
        CHECK(fabs(y[i * N + j] - ref) <= tol, "M=%d y[%d][%d] = %g, reference %g", m, i, j, y[i * N + j], ref);
      }
    }
  }

  /* Bad input: weight K != x K. A named status, y untouched. */
  float saved = y[0];
  int64_t bad_shape[2] = {N, K - 1}, x_shape[2] = {2, K}, y_shape[2] = {2, N};
  DLTensor bad = tensor(w, kDLFloat, 32, 2, bad_shape, NULL);
  DLTensor xt = tensor(x, kDLFloat, 32, 2, x_shape, NULL), yt = tensor(y, kDLFloat, 32, 2, y_shape, NULL);
  y[0] = 12345.0f;
  xops_status rc = xops_linear(&xt, &bad, NULL, &yt);
  CHECK(rc == XOPS_ERR_SHAPE_MISMATCH, "status %d", (int)rc);
  CHECK(strstr(xops_last_error(), "K") != NULL, "message: %s", xops_last_error());
  CHECK(y[0] == 12345.0f, "y written on error");
  y[0] = saved;

  /* W8A8: per-token symmetric quantization of x, int8 weights, int8 GEMM. */
  static int8_t xq[4 * K], wq[N * K];
  float xs[4], ws[N];
  int64_t q_shape[2] = {4, K}, s_shape[1] = {4};
  DLTensor x4 = tensor(x, kDLFloat, 32, 2, q_shape, NULL), xqt = tensor(xq, kDLInt, 8, 2, q_shape, NULL);
  DLTensor xst = tensor(xs, kDLFloat, 32, 1, s_shape, NULL);
  rc = xops_dynamic_scaled_int8_quant(&xqt, &x4, &xst, NULL);
  CHECK(rc == XOPS_OK, "quant status %d: %s", (int)rc, xops_last_error());
  for (int i = 0; i < N * K; i++) wq[i] = (int8_t)((i * 29) % 255 - 127);
  for (int j = 0; j < N; j++) ws[j] = 0.01f * (float)(j + 1);
  int64_t b_kn[2] = {K, N}, b_strides[2] = {1, K}, ws_shape[1] = {N}, o_shape[2] = {4, N};
  DLTensor bq = tensor(wq, kDLInt, 8, 2, b_kn, b_strides), wst = tensor(ws, kDLFloat, 32, 1, ws_shape, NULL);
  DLTensor ot = tensor(y, kDLFloat, 32, 2, o_shape, NULL);
  rc = xops_int8_scaled_mm(&ot, &xqt, &bq, &xst, &wst, NULL);
  CHECK(rc == XOPS_OK, "mm status %d: %s", (int)rc, xops_last_error());
  for (int i = 0; i < 4; i++) {
    CHECK(xs[i] > 0.0f, "scale[%d] = %g", i, xs[i]);
    for (int j = 0; j < N; j++) {
      int64_t dot = 0;
      for (int k = 0; k < K; k++) dot += (int64_t)xq[i * K + k] * wq[j * K + k];
      float want = ((float)dot * xs[i]) * ws[j]; /* the op's documented f32 epilogue */
      CHECK(y[i * N + j] == want, "int8 out[%d][%d] = %g, want %g", i, j, y[i * N + j], want);
    }
  }

  if (failures) return 1;
  printf("link_linear: ok (xpu-ops %s, isa %s, %d threads)\n", xops_version(), xops_isa(),
         xops_get_num_threads());
  return 0;
}
