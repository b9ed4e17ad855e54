/* The kernel table this tier exports; the Rust side selects one at run time. */
#include "../common/tier.h"
#include "../include/xops_kernels.h"

void XK_FN(kv_write)(const xk_kv_write_args *a, int64_t token_begin, int64_t token_end);
double XK_FN(probe_read)(const float *src, int64_t n);
double XK_FN(probe_fma)(int64_t iters, xk_probe_result *sink);
void XK_FN(linear_prep)(const xk_linear_args *a, int64_t m_begin, int64_t m_end);
void XK_FN(linear_gemv)(const xk_linear_args *a, int64_t n_begin, int64_t n_end);
int64_t XK_FN(linear_gemm_plan)(xk_linear_args *a, int64_t threads);
void XK_FN(linear_gemm)(const xk_linear_args *a, int64_t tile_begin, int64_t tile_end, void *workspace);
double XK_FN(probe_bf16dot)(int64_t iters, xk_probe_result *sink);
void XK_FN(int8_quant)(const xk_int8_quant_args *a, int64_t m_begin, int64_t m_end);
void XK_FN(int8_mm)(const xk_int8_mm_args *a, int64_t n_begin, int64_t n_end);

#define XK_STR_(x) #x
#define XK_STR(x) XK_STR_(x)

const xk_kernel_table XK_CAT3(xk_kernels, _, XK_TIER) = {
    .name = XK_STR(XK_TIER),
    .kv_write = XK_FN(kv_write),
    .probe_read = XK_FN(probe_read),
    .probe_fma = XK_FN(probe_fma),
    .linear_prep = XK_FN(linear_prep),
    .linear_gemv = XK_FN(linear_gemv),
    .linear_gemm_plan = XK_FN(linear_gemm_plan),
    .linear_gemm = XK_FN(linear_gemm),
    .probe_bf16dot = XK_FN(probe_bf16dot),
    .int8_quant = XK_FN(int8_quant),
    .int8_mm = XK_FN(int8_mm),
};
