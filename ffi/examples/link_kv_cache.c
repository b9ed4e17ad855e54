/*
 * Links libxpu_ops and writes keys/values into an fp8 flash-layout KV cache,
 * the way an engine would: DLTensors built by hand over its own buffers.
 * Checks the cache against a tiny C reference, then checks that bad input
 * returns the named status and leaves the cache untouched, and copies blocks.
 *
 *   cc -std=c11 -Wall -Werror -I include ffi/examples/link_kv_cache.c \
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

enum { T = 6, H = 2, D = 16, NB = 3, BS = 4 };

static int failures = 0;

#define CHECK(cond, ...)                                       \
  do {                                                         \
    if (!(cond)) {                                             \
      fprintf(stderr, "link_kv_cache: FAILED %s: ", #cond);    \
      fprintf(stderr, __VA_ARGS__);                            \
      fprintf(stderr, "\n");                                   \
      failures++;                                              \
    }                                                          \
  } while (0)

/* fp8 e4m3fn (bias 7, no infinities, max 448) from its definition. */
static double e4m3_decode(uint8_t b) {
  int e = (b >> 3) & 0xf, m = b & 7;
  double v = e == 0 ? ldexp(m / 8.0, -6) : ldexp(1.0 + m / 8.0, e - 7);
  return (b & 0x80) ? -v : v;
}

/* Nearest finite e4m3fn value, ties to the even code, saturating at 448. */
static uint8_t e4m3_encode(float x) {
  uint8_t sign = signbit(x) ? 0x80 : 0, best = 0;
  double a = fabs((double)x);
  if (isnan(x)) return sign | 0x7f;
  if (a >= 448.0) return sign | 0x7e;
  for (uint8_t c = 1; c <= 0x7e; c++) {
    double dc = fabs(e4m3_decode(c) - a), db = fabs(e4m3_decode(best) - a);
    if (dc < db || (dc == db && (c & 1) == 0)) best = c;
  }
  return sign | best;
}

static DLTensor tensor(void *data, DLDataTypeCode code, uint8_t bits, int32_t ndim,
                       int64_t *shape, int64_t *strides) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCPU;
  t.device.device_id = 0;
  t.ndim = ndim;
  t.dtype.code = (uint8_t)code;
  t.dtype.bits = bits;
  t.dtype.lanes = 1;
  t.shape = shape;
  t.strides = strides; /* in elements; NULL = contiguous */
  t.byte_offset = 0;
  return t;
}

int main(void) {
  CHECK(strcmp(xops_version(), XPU_OPS_VERSION) == 0, "library %s, header %s",
        xops_version(), XPU_OPS_VERSION);

  /* A fused qkv buffer [T, 3, H, D]: key and value are views with token
   * stride 3*H*D, as an engine slices them out of its qkv projection. */
  static float qkv[T * 3 * H * D];
  for (int i = 0; i < T * 3 * H * D; i++) qkv[i] = 300.0f * sinf(0.37f * (float)i);
  int64_t kv_shape[3] = {T, H, D}, kv_strides[3] = {3 * H * D, D, 1};
  DLTensor key = tensor(qkv + H * D, kDLFloat, 32, 3, kv_shape, kv_strides);
  DLTensor value = tensor(qkv + 2 * H * D, kDLFloat, 32, 3, kv_shape, kv_strides);

  /* Flash-layout caches [NB, BS, H, D] of fp8 kept as uint8, as vLLM does
   * (kv_cache_dtype says which format; typed float8 DLTensors work too). */
  static uint8_t kc[NB * BS * H * D], vc[NB * BS * H * D];
  static uint8_t want_k[NB * BS * H * D], want_v[NB * BS * H * D];
  memset(kc, 0xAA, sizeof kc);
  memset(vc, 0xAA, sizeof vc);
  int64_t c_shape[4] = {NB, BS, H, D};
  DLTensor key_cache = tensor(kc, kDLUInt, 8, 4, c_shape, NULL);
  DLTensor value_cache = tensor(vc, kDLUInt, 8, 4, c_shape, NULL);

  int64_t slots[T] = {5, -1, 0, 11, 6, 4}; /* -1 is padding */
  int64_t s_shape[1] = {T};
  DLTensor slot_mapping = tensor(slots, kDLInt, 64, 1, s_shape, NULL);
  float k_scale_v[1] = {0.5f}, v_scale_v[H] = {0.25f, 2.0f};
  int64_t ks_shape[1] = {1}, vs_shape[1] = {H};
  DLTensor k_scale = tensor(k_scale_v, kDLFloat, 32, 1, ks_shape, NULL);
  DLTensor v_scale = tensor(v_scale_v, kDLFloat, 32, 1, vs_shape, NULL);

  xops_status rc = xops_reshape_and_cache_flash(&key, &value, &key_cache, &value_cache,
                                                &slot_mapping, "fp8", &k_scale, &v_scale);
  CHECK(rc == XOPS_OK, "status %d: %s", (int)rc, xops_last_error());

  /* The reference: fp8 stores saturate(x / scale), padding slots are skipped. */
  memset(want_k, 0xAA, sizeof want_k);
  memset(want_v, 0xAA, sizeof want_v);
  for (int t = 0; t < T; t++) {
    if (slots[t] < 0) continue;
    int64_t b = slots[t] / BS, o = slots[t] % BS;
    for (int h = 0; h < H; h++)
      for (int d = 0; d < D; d++) {
        int64_t at = ((b * BS + o) * H + h) * D + d;
        const float *row = qkv + t * 3 * H * D + h * D + d;
        want_k[at] = e4m3_encode(row[H * D] / k_scale_v[0]);
        want_v[at] = e4m3_encode(row[2 * H * D] / v_scale_v[h]);
      }
  }
  CHECK(memcmp(kc, want_k, sizeof kc) == 0, "key cache differs from the C reference");
  CHECK(memcmp(vc, want_v, sizeof vc) == 0, "value cache differs from the C reference");
  int saturated = 0;
  for (size_t i = 0; i < sizeof kc; i++) saturated += (kc[i] & 0x7f) == 0x7e;
  CHECK(saturated > 0, "no key reached the e4m3 saturation value");

  /* Bad input: a slot past the cache. Named status, message, no write. */
  slots[3] = NB * BS;
  rc = xops_reshape_and_cache_flash(&key, &value, &key_cache, &value_cache, &slot_mapping,
                                    "fp8", &k_scale, &v_scale);
  CHECK(rc == XOPS_ERR_INDEX_OUT_OF_RANGE, "status %d", (int)rc);
  CHECK(strstr(xops_last_error(), "slot_mapping[3] = 12") != NULL, "message: %s",
        xops_last_error());
  CHECK(memcmp(kc, want_k, sizeof kc) == 0 && memcmp(vc, want_v, sizeof vc) == 0,
        "the caches changed on error");
  slots[3] = 11;

  /* A NULL required tensor is named. */
  rc = xops_reshape_and_cache_flash(NULL, &value, &key_cache, &value_cache, &slot_mapping,
                                    "fp8", NULL, NULL);
  CHECK(rc == XOPS_ERR_NULL_POINTER, "status %d", (int)rc);
  CHECK(strstr(xops_last_error(), "`key` is NULL") != NULL, "message: %s", xops_last_error());

  /* copy_blocks over one layer: block 1 -> block 2 in both caches. */
  const DLTensor *key_caches[1] = {&key_cache}, *value_caches[1] = {&value_cache};
  int64_t mapping[2] = {1, 2}, m_shape[2] = {1, 2};
  DLTensor block_mapping = tensor(mapping, kDLInt, 64, 2, m_shape, NULL);
  rc = xops_copy_blocks(key_caches, value_caches, 1, &block_mapping);
  CHECK(rc == XOPS_OK, "status %d: %s", (int)rc, xops_last_error());
  size_t block = (size_t)BS * H * D;
  CHECK(memcmp(kc + 2 * block, want_k + block, block) == 0, "key block 2 != old block 1");
  CHECK(memcmp(vc + 2 * block, want_v + block, block) == 0, "value block 2 != old block 1");
  CHECK(memcmp(kc, want_k, 2 * block) == 0, "key blocks 0-1 changed");

  if (failures) return 1;
  printf("link_kv_cache: ok (xpu-ops %s, isa %s, %d threads)\n", xops_version(), xops_isa(),
         xops_get_num_threads());
  return 0;
}
