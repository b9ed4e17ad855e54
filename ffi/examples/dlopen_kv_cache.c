/*
 * Loads libxpu_ops.so at run time with dlopen/dlsym, as a framework plugin
 * loader would (the header supplies only types), and writes bf16 keys/values
 * into an fp8 e5m2 cache seen through the HND view by strides. Runs the op on
 * every ISA tier the machine offers, checks each result against a tiny C
 * reference, then checks that a bad kv_cache_dtype returns the named status
 * and leaves the cache untouched.
 *
 *   cc -std=c11 -Wall -Werror -I include ffi/examples/dlopen_kv_cache.c -ldl -lm
 *   ./a.out target/release/libxpu_ops.so        (or XPU_OPS_LIB=...)
 *
 * Exit status 0 when every check passes.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xpu_ops.h"

enum { T = 7, H = 3, D = 8, NB = 2, BS = 4 };

typedef xops_status (*reshape_fn)(const DLTensor *, const DLTensor *, const DLTensor *,
                                  const DLTensor *, const DLTensor *, const char *,
                                  const DLTensor *, const DLTensor *);
typedef const char *(*string_fn)(void);
typedef xops_status (*set_isa_fn)(const char *);

static int failures = 0;

#define CHECK(cond, ...)                                       \
  do {                                                         \
    if (!(cond)) {                                             \
      fprintf(stderr, "dlopen_kv_cache: FAILED %s: ", #cond);  \
      fprintf(stderr, __VA_ARGS__);                            \
      fprintf(stderr, "\n");                                   \
      failures++;                                              \
    }                                                          \
  } while (0)

static void *must_sym(void *lib, const char *name) {
  void *p = dlsym(lib, name);
  if (!p) {
    fprintf(stderr, "dlopen_kv_cache: missing symbol %s: %s\n", name, dlerror());
    exit(2);
  }
  return p;
}

/* bf16 <-> f32: bf16 is the top half of an f32. */
static float bf16_to_f32(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* fp8 e5m2 (bias 15, IEEE-like, max finite 57344) from its definition. */
static double e5m2_decode(uint8_t b) {
  int e = (b >> 2) & 0x1f, m = b & 3;
  double v = e == 0 ? ldexp(m / 4.0, -14) : ldexp(1.0 + m / 4.0, e - 15);
  return (b & 0x80) ? -v : v;
}

/* Nearest finite e5m2 value, ties to the even code, saturating at 57344. */
static uint8_t e5m2_encode(float x) {
  uint8_t sign = signbit(x) ? 0x80 : 0, best = 0;
  double a = fabs((double)x);
  if (isnan(x)) return sign | 0x7e;
  if (a >= 57344.0) return sign | 0x7b;
  for (uint8_t c = 1; c <= 0x7b; c++) {
    double dc = fabs(e5m2_decode(c) - a), db = fabs(e5m2_decode(best) - a);
    if (dc < db || (dc == db && (c & 1) == 0)) best = c;
  }
  return sign | best;
}

static DLTensor tensor(void *data, uint8_t code, uint8_t bits, int32_t ndim, int64_t *shape,
                       int64_t *strides) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCPU;
  t.ndim = ndim;
  t.dtype.code = code;
  t.dtype.bits = bits;
  t.dtype.lanes = 1;
  t.shape = shape;
  t.strides = strides;
  return t;
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : getenv("XPU_OPS_LIB");
  if (!path) path = "libxpu_ops.so";
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "dlopen_kv_cache: cannot load %s: %s\n", path, dlerror());
    return 2;
  }
  string_fn version = (string_fn)must_sym(lib, "xops_version");
  string_fn last_error = (string_fn)must_sym(lib, "xops_last_error");
  string_fn isa = (string_fn)must_sym(lib, "xops_isa");
  set_isa_fn set_isa = (set_isa_fn)must_sym(lib, "xops_set_isa");
  reshape_fn reshape_and_cache_flash = (reshape_fn)must_sym(lib, "xops_reshape_and_cache_flash");
  CHECK(strcmp(version(), XPU_OPS_VERSION) == 0, "library %s, header %s", version(),
        XPU_OPS_VERSION);

  uint16_t k[T * H * D], v[T * H * D];
  for (int i = 0; i < T * H * D; i++) {
    float kf = 70000.0f * sinf(0.7f * (float)i), vf = 0.01f * (float)(i % 23) - 0.1f;
    uint32_t ku, vu;
    memcpy(&ku, &kf, sizeof ku);
    memcpy(&vu, &vf, sizeof vu);
    k[i] = (uint16_t)(ku >> 16); /* truncation is fine for test data */
    v[i] = (uint16_t)(vu >> 16);
  }
  int64_t kv_shape[3] = {T, H, D};
  DLTensor key = tensor(k, kDLBfloat, 16, 3, kv_shape, NULL);
  DLTensor value = tensor(v, kDLBfloat, 16, 3, kv_shape, NULL);

  /* The cache lives as HND [NB, H, BS, D] and is passed as the NHD shape
   * [NB, BS, H, D] with permuted strides. */
  static uint8_t kc[NB * H * BS * D], vc[NB * H * BS * D];
  static uint8_t want_k[NB * H * BS * D], want_v[NB * H * BS * D];
  int64_t c_shape[4] = {NB, BS, H, D}, c_strides[4] = {H * BS * D, D, BS * D, 1};
  DLTensor key_cache = tensor(kc, kDLFloat8_e5m2, 8, 4, c_shape, c_strides);
  DLTensor value_cache = tensor(vc, kDLFloat8_e5m2, 8, 4, c_shape, c_strides);
  int32_t slots[T] = {7, 0, -1, 2, 5, -1, 4};
  int64_t s_shape[1] = {T};
  DLTensor slot_mapping = tensor(slots, kDLInt, 32, 1, s_shape, NULL);

  memset(want_k, 0x11, sizeof want_k);
  memset(want_v, 0x11, sizeof want_v);
  for (int t = 0; t < T; t++) {
    if (slots[t] < 0) continue;
    int b = slots[t] / BS, o = slots[t] % BS;
    for (int h = 0; h < H; h++)
      for (int d = 0; d < D; d++) {
        int at = ((b * H + h) * BS + o) * D + d; /* HND memory order */
        want_k[at] = e5m2_encode(bf16_to_f32(k[(t * H + h) * D + d]));
        want_v[at] = e5m2_encode(bf16_to_f32(v[(t * H + h) * D + d]));
      }
  }

  static const char *tiers[] = {"generic", "neon", "avx2", "avx512", "amx"};
  int ran = 0;
  for (size_t i = 0; i < sizeof tiers / sizeof tiers[0]; i++) {
    xops_status rc = set_isa(tiers[i]);
    if (rc == XOPS_ERR_UNSUPPORTED) continue;
    CHECK(rc == XOPS_OK, "set_isa(%s): %d %s", tiers[i], (int)rc, last_error());
    CHECK(strcmp(isa(), tiers[i]) == 0, "active tier %s", isa());
    memset(kc, 0x11, sizeof kc);
    memset(vc, 0x11, sizeof vc);
    rc = reshape_and_cache_flash(&key, &value, &key_cache, &value_cache, &slot_mapping,
                                 "fp8_e5m2", NULL, NULL);
    CHECK(rc == XOPS_OK, "%s: status %d: %s", tiers[i], (int)rc, last_error());
    CHECK(memcmp(kc, want_k, sizeof kc) == 0, "%s: key cache differs from the reference",
          tiers[i]);
    CHECK(memcmp(vc, want_v, sizeof vc) == 0, "%s: value cache differs from the reference",
          tiers[i]);
    ran++;
  }
  CHECK(ran >= 1, "no tier ran");
  CHECK(set_isa("auto") == XOPS_OK, "%s", last_error());

  /* Bad input: an unknown kv_cache_dtype. Named status, message, no write. */
  xops_status rc = reshape_and_cache_flash(&key, &value, &key_cache, &value_cache,
                                           &slot_mapping, "fp9", NULL, NULL);
  CHECK(rc == XOPS_ERR_INVALID_ARGUMENT, "status %d", (int)rc);
  CHECK(strstr(last_error(), "\"fp9\"") != NULL, "message: %s", last_error());
  CHECK(memcmp(kc, want_k, sizeof kc) == 0 && memcmp(vc, want_v, sizeof vc) == 0,
        "the caches changed on error");

  if (failures) return 1;
  printf("dlopen_kv_cache: ok (xpu-ops %s from %s, %d tiers)\n", version(), path, ran);
  dlclose(lib);
  return 0;
}
