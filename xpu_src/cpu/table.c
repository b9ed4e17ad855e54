/* The kernel table this tier exports; the Rust side selects one at run time. */
#include "../common/tier.h"
#include "../include/xops_kernels.h"

void XK_FN(kv_write)(const xk_kv_write_args *a, int64_t token_begin, int64_t token_end);
void XK_FN(rms_norm)(const xk_rms_norm_args *a, int64_t row_begin, int64_t row_end);
void XK_FN(rotary_embedding)(const xk_rotary_args *a, int64_t token_begin, int64_t token_end);
void XK_FN(silu_and_mul)(const xk_silu_and_mul_args *a, int64_t row_begin, int64_t row_end);
double XK_FN(probe_read)(const float *src, int64_t n);
double XK_FN(probe_fma)(int64_t iters, xk_probe_result *sink);
int64_t XK_FN(attn_workspace)(const xk_attn_args *a);
void XK_FN(attn_paged)(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end);
void XK_FN(attn_paged_reduce)(const xk_attn_args *a, int64_t begin, int64_t end);
void XK_FN(attn_varlen)(const xk_attn_args *a, void *workspace, int64_t begin, int64_t end);
void XK_FN(merge_attn_states)(const xk_merge_args *a, int64_t begin, int64_t end);
void XK_FN(causal_conv1d)(const xk_conv1d_args *a, float *scratch, int64_t block_begin, int64_t block_end);
void XK_FN(gdn_gating)(const xk_gdn_gating_args *a, int64_t row_begin, int64_t row_end);
void XK_FN(l2norm)(const xk_l2norm_args *a, int64_t row_begin, int64_t row_end);
void XK_FN(rms_norm_gated)(const xk_rms_norm_gated_args *a, int64_t row_begin, int64_t row_end);
void XK_FN(gdn_recurrent)(const xk_gdn_args *a, float *scratch, int64_t block_begin, int64_t block_end);
void XK_FN(gdn_chunk)(const xk_gdn_args *a, float *scratch, int64_t block_begin, int64_t block_end);
int64_t XK_FN(gdn_scratch_floats)(int64_t K, int64_t V, int32_t chunked);
void XK_FN(linear_prep)(const xk_linear_args *a, int64_t m_begin, int64_t m_end);
void XK_FN(linear_gemv)(const xk_linear_args *a, int64_t n_begin, int64_t n_end);
int64_t XK_FN(linear_gemm_plan)(xk_linear_args *a, int64_t threads);
void XK_FN(linear_gemm)(const xk_linear_args *a, int64_t tile_begin, int64_t tile_end, void *workspace);
void XK_FN(linear_pack_w)(const xk_linear_args *a, int64_t begin, int64_t end, void *dst);
void XK_FN(linear_pack_x)(const xk_linear_args *a, int64_t begin, int64_t end);
double XK_FN(probe_bf16dot)(int64_t iters, xk_probe_result *sink);
void XK_FN(int8_quant)(const xk_int8_quant_args *a, int64_t m_begin, int64_t m_end);
void XK_FN(int8_mm)(const xk_int8_mm_args *a, int64_t n_begin, int64_t n_end);
void XK_FN(sample_rows)(const xk_sample_args *a, int64_t row_begin, int64_t row_end, void *workspace);
void XK_FN(filter_rows)(const xk_filter_args *a, int64_t row_begin, int64_t row_end, void *workspace);
void XK_FN(filter_apply)(const xk_filter_args *a, int64_t row_begin, int64_t row_end);
void XK_FN(philox4x32)(const uint32_t *ctr, const uint32_t *key, int32_t rounds, uint32_t *out);
void XK_FN(sampling_exp_probe)(const float *d32, float *e32, int64_t n32, const double *d64, double *e64,
                               int64_t n64);

/* The bf16 peak of a tier with vdpbf16ps is its dot-product rate (the amx
 * tier swaps in its tile probe). */
#if defined(__AVX512BF16__)
#define XK_PROBE_BF16 XK_FN(probe_bf16dot)
#else
#define XK_PROBE_BF16 NULL
#endif

#define XK_STR_(x) #x
#define XK_STR(x) XK_STR_(x)

const xk_kernel_table XK_CAT3(xk_kernels, _, XK_TIER) = {
    .name = XK_STR(XK_TIER),
    .kv_write = XK_FN(kv_write),
    .rms_norm = XK_FN(rms_norm),
    .rotary_embedding = XK_FN(rotary_embedding),
    .silu_and_mul = XK_FN(silu_and_mul),
    .probe_read = XK_FN(probe_read),
    .probe_fma = XK_FN(probe_fma),
    .attn_workspace = XK_FN(attn_workspace),
    .attn_paged = XK_FN(attn_paged),
    .attn_paged_reduce = XK_FN(attn_paged_reduce),
    .attn_varlen = XK_FN(attn_varlen),
    .merge_attn_states = XK_FN(merge_attn_states),
    .causal_conv1d = XK_FN(causal_conv1d),
    .gdn_gating = XK_FN(gdn_gating),
    .l2norm = XK_FN(l2norm),
    .rms_norm_gated = XK_FN(rms_norm_gated),
    .gdn_recurrent = XK_FN(gdn_recurrent),
    .gdn_chunk = XK_FN(gdn_chunk),
    .gdn_scratch_floats = XK_FN(gdn_scratch_floats),
    .linear_prep = XK_FN(linear_prep),
    .linear_gemv = XK_FN(linear_gemv),
    .linear_gemm_plan = XK_FN(linear_gemm_plan),
    .linear_gemm = XK_FN(linear_gemm),
    .linear_pack_w = XK_FN(linear_pack_w),
    .linear_pack_x = XK_FN(linear_pack_x),
    .probe_bf16dot = XK_FN(probe_bf16dot),
    .probe_bf16 = XK_PROBE_BF16,
    .int8_quant = XK_FN(int8_quant),
    .int8_mm = XK_FN(int8_mm),
    .sample_rows = XK_FN(sample_rows),
    .filter_rows = XK_FN(filter_rows),
    .filter_apply = XK_FN(filter_apply),
    .philox4x32 = XK_FN(philox4x32),
    .sampling_exp_probe = XK_FN(sampling_exp_probe),
};
