/* Scalar fp8 conversions exported once (not per tier) so the Rust tests can
 * hold the kernels' conversion to the reference bit for bit. */
#include "convert.h"

float xk_fp8_to_f32(uint8_t v, int32_t fp8_dtype) { return xk_fp8_to_f32_scalar(v, xk_fp8_format_of(fp8_dtype)); }

uint8_t xk_f32_to_fp8(float v, int32_t fp8_dtype) { return xk_f32_to_fp8_scalar(v, xk_fp8_format_of(fp8_dtype)); }

/* Sampling workspace: 2 x u64 + 4 x u32 per candidate slot, plus the radix histograms
 * (layout in xpu_src/cpu/sampling.c, xs_ws_init). */
int64_t xk_sampling_workspace_bytes(int64_t cap) { return (cap + 64) * 32 + 2048 * 12 + 64; }
