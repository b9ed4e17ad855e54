/*
 * Tier naming. build.rs compiles every file of xpu_src/cpu once per ISA tier
 * with -DXK_TIER=<name> and that tier's -m flags only; XK_FN gives each
 * tier's copy of a function its own symbol (kv_write -> xk_kv_write_avx512).
 */
#ifndef XK_TIER_H
#define XK_TIER_H

#ifndef XK_TIER
#error "XK_TIER must be defined by the build (generic, avx2, avx512, neon)"
#endif

#define XK_CAT3_(a, b, c) a##b##c
#define XK_CAT3(a, b, c) XK_CAT3_(a, b, c)
#define XK_FN(name) XK_CAT3(xk_##name, _, XK_TIER)

#endif
