/*
 * The KV-cache writes (../cache.c) built again with AVX512-VBMI, which every
 * AMX processor has: bf16 -> fp8 caches convert by byte tables (fqv_make,
 * fqv64 in cache.c) instead of the multiply path. The amx tier takes this
 * kv_write when the CPU reports VBMI (xk_kv_amx_install); the avx512 tier
 * keeps the build of cache.c without it.
 */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512vbmi"))), apply_to = function)
#else
#pragma GCC target("avx512vbmi")
#endif
#define XK_KV_VBMI 1
#include "../cache.c"

void xk_kv_amx_install(xk_kernel_table *t);
void xk_kv_amx_install(xk_kernel_table *t) {
  if (__builtin_cpu_supports("avx512vbmi")) t->kv_write = XK_FN(kv_write);
}
#if defined(__clang__)
#pragma clang attribute pop
#endif
