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

/// Fewest activation rows for which an f32 × f32 [`linear`](crate::linear)
/// runs the split AMX GEMM (see [`takes_f32`]) instead of the fp32 FMA path,
/// any N. Narrow weights (N <= [`AMX_F32_NARROW_N`]) run their own split
/// kernel; measured there (one thread, K = 2048, N = 64, the per-call weight
/// split included, FMA and split alternated in one process, load ~5): M = 17
/// 0.57x, M = 32 0.71x, M = 48 0.80x, M = 64 1.04x, M = 128 1.09-1.17x,
/// M = 256 1.13-1.21x, M = 1024 1.21-1.28x; narrower weights at M = 128,
/// 256, 1024: N = 1 1.19-1.22x, N = 16 1.04-1.11x, N = 32 1.01-1.05x, N = 33
/// 1.21-1.34x (both paths are far from peak there: the split of x, not the
/// products, is most of the time).
pub const AMX_F32_MIN_M: usize = 128;

/// Widest weights (N) whose f32 split runs the narrow kernel (`nw3_tile` in
/// `xpu_src/cpu/amx/amx.c`): x is split into its bf16 parts inside the
/// kernel, a 16-row block a k step at a time in registers, instead of being
/// packed whole into four parts per call (8 bytes an element, read back six
/// times), which for a narrow weight costs more than the GEMM itself
/// (M = 1024, K = 2048, N = 64: 8.6 ms against the FMA path's 1.6 ms).
pub const AMX_F32_NARROW_N: usize = 64;

/// Whether a split f32 GEMM (`w_kind` `XK_WEIGHT_PACKED_AMX3`, `M > 16`)
/// runs the narrow kernel, which reads x as it is: no packed x (`xp`) is
/// needed. Mirrors `pk_plan` in amx.c.
pub(crate) fn split_narrow(a: &sys::xk_linear_args) -> bool {
    a.w_kind == sys::xk_weight_kind_XK_WEIGHT_PACKED_AMX3 as i32
        && a.n as usize <= AMX_F32_NARROW_N
        && a.m as usize > crate::ops::linear::DECODE_MAX_M
}

/// Whether this validated f32 linear runs on the tile unit with the bf16x3
/// split (`XK_WEIGHT_PACKED_AMX3`, `xpu_src/cpu/amx/amx.c`): amx tier, f32
/// x and dense f32 weight with no permutation, `M >= AMX_F32_MIN_M`, `K > 0`
/// (any N: N <= [`AMX_F32_NARROW_N`] runs the narrow kernel, see
/// [`split_narrow`]).
///
/// Numerics: each f32 value is split exactly into three bf16 parts and the
/// six products of parts whose orders sum to at most 2 accumulate in fp32
/// (every bf16 product is exact), the five small ones first over the whole
/// K and the main one last, so the large terms round as on the FMA path;
/// the dropped terms are ~2⁻²³ relative. Measured (uniform [-1, 1) data,
/// M = 128, N = 80, no bias), max over outputs of `|y - y_ref| / Σ_k
/// |x_k·w_k|` against fp64, FMA path (avx512) → split path: K = 31
/// 1.4e-7 → 6.5e-8, K = 97 1.7e-7 → 4.8e-8, K = 1000 6.1e-8 → 3.3e-8,
/// K = 2047 4.2e-8 → 3.5e-8, K = 4096 2.6e-8 → 3.7e-8 (means 1.7e-8 → 5.9e-9
/// at K = 31, 4.9e-9 → 3.1e-9 at K = 4096); `tests/linear.rs::
/// f32_split_error_class` keeps the split within 4x of the FMA path. (Running
/// the six products k block by k block instead doubled the split's error at
/// K = 4096, 8.8e-8: its small terms then round against the whole sum.)
/// Values below ~2⁻¹¹⁰ lose their bf16-denormal parts (absolute error at
/// most `2⁻¹²⁵·(Σ|x_k| + Σ|w_k|) + 6K·2⁻¹²⁶`); inf/NaN in x give the FMA
/// path's result class; a weight with a non-finite value runs the FMA path.
pub(crate) fn takes_f32(a: &sys::xk_linear_args) -> bool {
    active_isa() == Isa::Amx
        && a.m as usize >= AMX_F32_MIN_M
        && a.k > 0
        && a.x_dtype == DType::F32.xk()
        && a.w_dtype == DType::F32.xk()
        && a.w_kind == sys::xk_weight_kind_XK_WEIGHT_DENSE as i32
        && a.perm.is_null()
        && crate::platform::kernels().linear_pack_w3.is_some()
}

/// Bytes of an `[N, K]` f32 weight split into three packed bf16 parts (1.5x
/// the f32 weight, N and K padded to 32).
pub(crate) fn w3_bytes(n: usize, k: usize) -> usize {
    3 * n.div_ceil(32) * k.div_ceil(32) * 2048
}

/// Splits and packs the dense f32 weight of `args` (`w`, `w_stride`, `n`,
/// `k` set) into `dst` (at least [`w3_bytes`]); returns how many weights are
/// not finite (then `dst` must not be used).
pub(crate) fn pack_w3(args: &sys::xk_linear_args, dst: *mut u8) -> i64 {
    use crate::threading::{grid, Shared};
    use std::sync::atomic::{AtomicI64, Ordering};
    let pack = crate::platform::kernels()
        .linear_pack_w3
        .expect("linear_pack_w3");
    let blocks = (args.n as usize).div_ceil(32);
    let bad = AtomicI64::new(0);
    let (a, d) = (Shared(*args), Shared(dst as usize));
    grid(blocks, 8, |r| {
        // SAFETY: validated weight; blocks write disjoint parts of dst, which
        // holds w3_bytes(n, k).
        let c = unsafe {
            pack(
                a.get(),
                r.start as i64,
                r.end as i64,
                *d.get() as *mut std::ffi::c_void,
            )
        };
        bad.fetch_add(c, Ordering::Relaxed);
    });
    bad.into_inner()
}
