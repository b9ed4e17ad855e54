//! Routing of [`linear`](crate::linear) onto the AMX tile GEMM
//! (`xpu_src/cpu/amx/amx.c`) on the `amx` tier.
//!
//! On that tier every bf16 × bf16 dense linear (no act-order permutation)
//! with `M > 16` runs on the tile unit (`TDPBF16PS`, fp32 accumulation): the
//! tier's `linear_gemm_plan` takes it. This module decides the decode regime
//! (`M <= 16`), where the tile GEMM also wins from [`AMX_MIN_M`] rows: one
//! 16-row tile of activations against the weights streamed once.
//!
//! Numerics: `TDPBF16PS` treats bf16 denormal inputs as zero, flushes
//! denormal results and rounds to nearest even whatever MXCSR says; each
//! output sums its products in 32-k steps in k order, so results stay within
//! linear's documented tolerance and do not depend on the thread count.

use crate::dtype::DType;
use crate::platform::{active_isa, Isa};
use crate::sys;

/// Fewest activation rows for which a bf16 × bf16 decode-regime linear runs
/// the AMX tile GEMM instead of the weight-streaming decode kernel. Measured
/// (one thread, K = 4096, N = 2048, warm and L3-cold weights): the two tie
/// at M = 4 (0.97-0.99x), the tile GEMM is 1.7-2.1x faster at M = 6 and
/// 2.7-3.5x at M = 16, the decode kernel 10-25% faster at M = 1-2.
pub const AMX_MIN_M: usize = 5;

/// Whether this validated decode-regime linear (`M <= 16`) runs the AMX
/// GEMM: the calling thread's tier is `amx`, x and the dense weight are bf16
/// with no permutation, and `M >= AMX_MIN_M`.
pub(crate) fn takes_decode(a: &sys::xk_linear_args) -> bool {
    active_isa() == Isa::Amx
        && a.m as usize >= AMX_MIN_M
        && a.x_dtype == DType::BF16.xk()
        && a.w_dtype == DType::BF16.xk()
        && a.w_kind == sys::xk_weight_kind_XK_WEIGHT_DENSE as i32
        && a.perm.is_null()
}
