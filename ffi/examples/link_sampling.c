/*
 * Links libxpu_ops and samples the way an engine would after its lm_head:
 * top-k + top-p from logits with per-request seeds, then vLLM's fused sampler
 * with greedy rows, penalties and raw logprobs. Checks each sample against a
 * tiny C reference of the mask (no sort: counts), the greedy argmax, ranks
 * and logprobs against a double log-softmax, that a request's draw does not
 * depend on its batch, and that bad input returns the named status and
 * leaves the outputs untouched.
 *
 *   cc -std=c11 -Wall -Werror -I include ffi/examples/link_sampling.c \
 *      -L target/release -lxpu_ops -lm -Wl,-rpath,target/release
 *
 * Exit status 0 when every check passes.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xpu_ops.h"

enum { B = 4, V = 1000, K = 20 };

static int failures = 0;

#define CHECK(cond, ...)                                       \
  do {                                                         \
    if (!(cond)) {                                             \
      fprintf(stderr, "link_sampling: FAILED %s: ", #cond);    \
      fprintf(stderr, __VA_ARGS__);                            \
      fprintf(stderr, "\n");                                   \
      failures++;                                              \
    }                                                          \
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
  t.strides = NULL;
  return t;
}

/* Is token `i` of `row` inside top-k then top-p (ties kept, renormalised)? */
static int in_top_k_top_p(const float *row, int i, int k, double top_p) {
  int above = 0;
  for (int j = 0; j < V; j++) above += row[j] > row[i];
  if (above >= k) return 0;
  /* the k-th largest value, by counting */
  float kth = -INFINITY;
  for (int j = 0; j < V; j++) {
    int a = 0;
    for (int l = 0; l < V; l++) a += row[l] > row[j];
    if (a < k && (kth == -INFINITY || row[j] < kth)) kth = row[j];
  }
  double m = -INFINITY, z = 0.0, g = 0.0;
  for (int j = 0; j < V; j++) m = row[j] > m ? row[j] : m;
  for (int j = 0; j < V; j++)
    if (row[j] >= kth) z += exp((double)row[j] - m);
  for (int j = 0; j < V; j++)
    if (row[j] >= kth && row[j] > row[i]) g += exp((double)row[j] - m);
  return g < top_p * z * (1 + 1e-6);
}

int main(void) {
  static float logits[B * V];
  for (int b = 0; b < B; b++)
    for (int v = 0; v < V; v++) logits[b * V + v] = 2.0f * sinf(0.7f * (float)(v * (b + 3)) + (float)b);
  for (int b = 0; b < B; b++) logits[b * V + 17 * (b + 1)] = 9.0f; /* a clear favourite */
  int64_t l_shape[2] = {B, V}, v_shape[1] = {B};
  DLTensor x = tensor(logits, kDLFloat, 32, 2, l_shape);

  /* top-k + top-p from logits, one seed per request */
  int64_t seeds[B] = {11, 22, 33, 44};
  int32_t samples[B];
  DLTensor seed_t = tensor(seeds, kDLInt, 64, 1, v_shape), out = tensor(samples, kDLInt, 32, 1, v_shape);
  for (uint64_t step = 0; step < 8; step++) {
    xops_status rc = xops_top_k_top_p_sampling_from_logits(&x, NULL, K, NULL, 0.9, NULL, "top_k_first", &seed_t,
                                                            0, NULL, step * 4, &out);
    CHECK(rc == XOPS_OK, "status %d: %s", (int)rc, xops_last_error());
    for (int b = 0; b < B; b++)
      CHECK(samples[b] >= 0 && samples[b] < V && in_top_k_top_p(logits + b * V, samples[b], K, 0.9),
            "row %d sampled %d outside top-k/top-p", b, samples[b]);
  }

  /* the same request alone in a batch of one draws the same token */
  int64_t one_shape[2] = {1, V}, one[1] = {1};
  int32_t alone;
  DLTensor x1 = tensor(logits + 2 * V, kDLFloat, 32, 2, one_shape);
  DLTensor s1 = tensor(seeds + 2, kDLInt, 64, 1, one), o1 = tensor(&alone, kDLInt, 32, 1, one);
  xops_status rc = xops_top_k_top_p_sampling_from_logits(&x1, NULL, K, NULL, 0.9, NULL, "top_k_first", &s1, 0,
                                                          NULL, 28, &o1);
  CHECK(rc == XOPS_OK && alone == samples[2], "alone %d, in the batch %d (%s)", alone, samples[2],
        xops_last_error());

  /* vLLM's sampler: rows 0 and 2 greedy, penalties on row 1, raw logprobs */
  float temp[B] = {0.0f, 0.8f, 0.0f, 1.2f}, rep[B] = {1.0f, 1.5f, 1.0f, 1.0f};
  int64_t prompt[B * 2] = {17 * 2, V, V, V, V, V, V, V}, p_shape[2] = {B, 2};
  DLTensor temp_t = tensor(temp, kDLFloat, 32, 1, v_shape), rep_t = tensor(rep, kDLFloat, 32, 1, v_shape);
  DLTensor prompt_t = tensor(prompt, kDLInt, 64, 2, p_shape);
  xops_sampling_metadata md;
  memset(&md, 0, sizeof md);
  md.temperature = &temp_t;
  md.maybe_seed_arr = &seed_t;
  md.prompt_token_ids = &prompt_t;
  md.repetition_penalties = &rep_t;
  md.pad_token_id = V;
  md.max_num_logprobs = 2;
  int64_t ids[B], lp_ids[B * 3], ranks[B], lp_shape[2] = {B, 3};
  float lps[B * 3];
  DLTensor ids_t = tensor(ids, kDLInt, 64, 1, v_shape), lpi_t = tensor(lp_ids, kDLInt, 64, 2, lp_shape);
  DLTensor lpv_t = tensor(lps, kDLFloat, 32, 2, lp_shape), rk_t = tensor(ranks, kDLInt, 64, 1, v_shape);
  rc = xops_sampler_forward(&x, &md, &ids_t, &lpi_t, &lpv_t, &rk_t);
  CHECK(rc == XOPS_OK, "status %d: %s", (int)rc, xops_last_error());
  for (int b = 0; b < B; b += 2) CHECK(ids[b] == 17 * (b + 1), "greedy row %d gave %lld", b, (long long)ids[b]);
  for (int b = 0; b < B; b++) {
    const float *row = logits + b * V;
    double m = -INFINITY, s = 0.0;
    for (int v = 0; v < V; v++) m = row[v] > m ? row[v] : m;
    for (int v = 0; v < V; v++) s += exp((double)row[v] - m);
    long long rank = 0;
    for (int v = 0; v < V; v++) rank += row[v] >= row[ids[b]];
    CHECK(ranks[b] == rank, "row %d rank %lld, want %lld", b, (long long)ranks[b], rank);
    CHECK(lp_ids[b * 3] == ids[b] && lp_ids[b * 3 + 1] == 17 * (b + 1), "row %d logprob ids", b);
    double want = ((double)row[ids[b]] - m) - log(s);
    CHECK(fabs(lps[b * 3] - want) < 1e-6, "row %d logprob %g, want %g", b, lps[b * 3], want);
  }

  /* bad input: a named status, outputs untouched */
  int32_t before[B];
  memcpy(before, samples, sizeof before);
  rc = xops_top_k_top_p_sampling_from_logits(&x, NULL, K, NULL, 1.5, NULL, "top_k_first", NULL, 1, NULL, 0, &out);
  CHECK(rc == XOPS_ERR_INVALID_VALUE, "status %d", (int)rc);
  CHECK(strstr(xops_last_error(), "top_p") != NULL, "message: %s", xops_last_error());
  CHECK(memcmp(before, samples, sizeof before) == 0, "samples changed on error");
  prompt[1] = V + 5; /* neither a token nor the padding */
  rc = xops_sampler_forward(&x, &md, &ids_t, &lpi_t, &lpv_t, &rk_t);
  CHECK(rc == XOPS_ERR_INDEX_OUT_OF_RANGE, "status %d", (int)rc);
  CHECK(strstr(xops_last_error(), "prompt_token_ids[0, 1] = 1005") != NULL, "message: %s", xops_last_error());

  if (failures) return 1;
  printf("link_sampling: ok (xpu-ops %s, isa %s, %d threads)\n", xops_version(), xops_isa(),
         xops_get_num_threads());
  return 0;
}
