//! FC / GEMM: [`linear`] (`F.linear`: `y = x·Wᵀ + b`) with f32/f16/bf16
//! weights, and [`wna16_linear`] with weight-only int4/int8 weights in this
//! crate's canonical layout (see [`crate::ops::quant`] for the importers from
//! GPTQ, AWQ and compressed-tensors).
//!
//! Two regimes, chosen from the shape alone: decode (`M <= 16`) streams each
//! weight byte once; larger `M` runs packed, cache-blocked microkernels
//! (bf16 × bf16 through `vdpbf16ps` on AVX-512, or on the AMX tile unit on
//! the `amx` tier: see [`crate::ops::linear_amx`]; weights packed once at
//! load for the tile unit: [`crate::ops::linear_packed`]). Both accumulate in fp32, and
//! each output element's summation order depends only on the ISA tier, the
//! regime and `K`: results are bit-identical for any thread count.
//!
//! Tolerance (documented in the tests next to each check): against an fp64
//! reference, `|y - y_ref| <= 4·sqrt(K)·2⁻²⁴·Σ_k |x_k·w_k| + ulp(y_ref)` in the
//! output dtype (one unit in the last place for f16/bf16 outputs, 2⁻²⁴
//! relative for f32). The bf16 dot instructions (`vdpbf16ps`, AMX
//! `TDPBF16PS`) treat bf16 denormal inputs as zero and flush products and sums
//! below 2⁻¹²⁶: on those paths the bound holds plus the flushed products.
//!
//! f32 on the `amx` tier from [`AMX_F32_MIN_M`](crate::ops::linear_amx::AMX_F32_MIN_M)
//! rows runs on the tile unit with an exact three-way bf16 split of
//! every value (see [`crate::ops::linear_amx`]; the weight is split per call
//! in column chunks of at most 64 MiB; weights of at most 64 rows run a
//! narrow kernel that splits x as it reads it): the same bound holds (measured
//! max error within 1.5x of the FMA path's, see there), plus at most
//! `2⁻¹²⁵·(Σ_k |x_k| + Σ_k |w_k|) + 6K·2⁻¹²⁶` absolute from the low parts of
//! values below ~2⁻¹¹⁰, which the tile unit reads as zero.

use crate::dtype::DType;
use crate::error::{bail, Result};
use crate::ops::check;
use crate::platform;
use crate::sys;
use crate::tensor::{Layout, TensorView, TensorViewMut};
use crate::threading::{grid, num_threads, Shared};
use crate::trace;

/// Activation rows up to which the decode (weight-streaming) regime runs.
pub const DECODE_MAX_M: usize = 16;

const FLOAT_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// [`check::inner_contiguous`] for tensors with elements: an empty tensor's
/// strides are never used (numpy gives empty arrays zero strides).
pub(crate) fn inner_contiguous(t: &Layout, name: &str) -> Result<()> {
    if t.numel() == 0 {
        return Ok(());
    }
    check::inner_contiguous(t, name)
}

/// The validated activation / output pair of a linear op.
pub(crate) struct Rows {
    pub m: usize,
    pub k: usize,
    pub x_stride: usize,
    pub out_stride: usize,
}

/// `x` is `[K]` or `[M, K]` (K contiguous, any row stride) and `out` is
/// `[N]` or `[M, N]` of the same rank, N contiguous, rows not overlapping.
pub(crate) fn check_rows(
    x: &TensorView,
    out: &TensorViewMut,
    n: usize,
    k: usize,
    out_dtypes: &[DType],
) -> Result<Rows> {
    let (xl, ol) = (x.layout(), out.layout());
    if xl.ndim() != 1 && xl.ndim() != 2 {
        bail!(
            ShapeMismatch,
            "`x` must be [K] or [M, K], got shape {:?}",
            xl.shape
        );
    }
    check::dtype_in(xl, "x", &FLOAT_DTYPES)?;
    check::dtype_in(ol, "out", out_dtypes)?;
    inner_contiguous(xl, "x")?;
    inner_contiguous(ol, "out")?;
    let xk = *xl.shape.last().expect("rank >= 1");
    if xk != k {
        bail!(
            ShapeMismatch,
            "`x` has K = {xk} (shape {:?}) but the weight has K = {k}",
            xl.shape
        );
    }
    let m = if xl.ndim() == 2 { xl.shape[0] } else { 1 };
    let want: Vec<usize> = if xl.ndim() == 2 { vec![m, n] } else { vec![n] };
    if ol.shape != want {
        bail!(
            ShapeMismatch,
            "`out` must have shape {want:?} (x {:?}, N = {n}), got {:?}",
            xl.shape,
            ol.shape
        );
    }
    let x_stride = if xl.ndim() == 2 { xl.strides[0] } else { k };
    let out_stride = if ol.ndim() == 2 { ol.strides[0] } else { n };
    if m > 1 && n > 0 && out_stride < n {
        bail!(
            InvalidStride,
            "`out` rows overlap: row stride {out_stride} < N = {n}"
        );
    }
    Ok(Rows {
        m,
        k,
        x_stride,
        out_stride,
    })
}

/// `bias` is `[N]`, contiguous, of `x`'s dtype or f32.
pub(crate) fn check_bias(bias: Option<&TensorView>, n: usize, x_dtype: DType) -> Result<()> {
    let Some(b) = bias else { return Ok(()) };
    let l = b.layout();
    check::on_cpu(&[("bias", l)])?;
    if l.ndim() != 1 || l.shape[0] != n {
        bail!(
            ShapeMismatch,
            "`bias` must have shape [N = {n}], got {:?}",
            l.shape
        );
    }
    if l.dtype != x_dtype && l.dtype != DType::F32 {
        bail!(
            DtypeMismatch,
            "`bias` has dtype {} but must be x's dtype {x_dtype} or float32",
            l.dtype
        );
    }
    inner_contiguous(l, "bias")
}

/// `out` may not share memory with any input.
pub(crate) fn check_out_alias(
    out: &TensorViewMut,
    inputs: &[(&str, *const u8, &Layout)],
) -> Result<()> {
    let o = check::byte_range(out.as_ptr(), out.layout());
    if o.0 == o.1 {
        return Ok(());
    }
    for (name, ptr, layout) in inputs {
        let r = check::byte_range(*ptr, layout);
        if r.0 < r.1 && o.0 < r.1 && r.0 < o.1 {
            bail!(Aliasing, "`out` overlaps `{name}`");
        }
    }
    Ok(())
}

/// Fills the activation, bias and output fields of the kernel arguments.
pub(crate) fn base_args(
    x: &TensorView,
    rows: &Rows,
    n: usize,
    bias: Option<&TensorView>,
    out: &mut TensorViewMut,
) -> sys::xk_linear_args {
    sys::xk_linear_args {
        m: rows.m as i64,
        n: n as i64,
        k: rows.k as i64,
        x: x.as_ptr().cast(),
        x_stride: rows.x_stride as i64,
        x_dtype: x.dtype().xk(),
        perm: std::ptr::null(),
        xf: std::ptr::null_mut(),
        xf_stride: 0,
        w: std::ptr::null(),
        w_stride: 0,
        w_dtype: 0,
        w_kind: sys::xk_weight_kind_XK_WEIGHT_DENSE as i32,
        scales: std::ptr::null(),
        zeros: std::ptr::null(),
        sz_stride: 0,
        sz_dtype: 0,
        group_size: 0,
        bias: bias.map_or(std::ptr::null(), |b| b.as_ptr().cast()),
        bias_dtype: bias.map_or(0, |b| b.dtype().xk()),
        out: out.as_mut_ptr().cast(),
        out_stride: rows.out_stride as i64,
        out_dtype: out.dtype().xk(),
        tile_m: 0,
        tile_n: 0,
        bf16_pairs: 0,
        no_prefetch: 0,
        xp: std::ptr::null_mut(),
    }
}

/// Whether bf16 × bf16 GEMMs (M > 16) run the `vdpbf16ps` microkernel
/// (AVX-512 tier only). `vdpbf16ps` doubles the flops of an fp32 FMA on AMD
/// Zen 4/5 but runs at about half an FMA's rate on current Intel cores, so
/// the default follows the CPU vendor: AMD yes, others no (bf16 then goes
/// through the fp32 microkernel, converted while packing). `XPU_OPS_BF16_DOT`
/// = `1` / `0` overrides. The choice is fixed per machine and process, so
/// results stay reproducible; the two paths differ only in rounding.
pub fn bf16_dot_preferred() -> bool {
    if let Some(v) = BF16_DOT_OVERRIDE.with(|c| c.get()) {
        return v;
    }
    static PREF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PREF.get_or_init(|| match std::env::var("XPU_OPS_BF16_DOT").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => cpu_is_amd(),
    })
}

thread_local! {
    static BF16_DOT_OVERRIDE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with bf16 GEMMs called from this thread forced onto (`true`) or
/// off (`false`) the `vdpbf16ps` microkernel; how the tests cover both paths
/// on any machine.
pub fn with_bf16_dot<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    let prev = BF16_DOT_OVERRIDE.with(|c| c.replace(Some(enabled)));
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BF16_DOT_OVERRIDE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(prev);
    f()
}

#[cfg(target_arch = "x86_64")]
fn cpu_is_amd() -> bool {
    // SAFETY: cpuid leaf 0 exists on every x86-64 CPU (the intrinsic is safe
    // on newer toolchains, unsafe on the crate's minimum one).
    #[allow(unused_unsafe)]
    let r = unsafe { std::arch::x86_64::__cpuid(0) };
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&r.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&r.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&r.ecx.to_le_bytes());
    &vendor == b"AuthenticAMD"
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_is_amd() -> bool {
    false
}

/// Runs a validated linear: decode or tiled GEMM by M.
pub(crate) fn run(mut args: sys::xk_linear_args, weight_bytes_per_row: usize) {
    let (m, n, k) = (args.m as usize, args.n as usize, args.k as usize);
    if m == 0 || n == 0 {
        return;
    }
    if crate::ops::linear_packed::repack_applies(&args)
        && crate::ops::linear_packed::run_repacked(args)
    {
        return;
    }
    let kernels = platform::kernels();
    if m <= DECODE_MAX_M && !crate::ops::linear_amx::takes_decode(&args) {
        let mut xf: Vec<f32> = Vec::new();
        if args.x_dtype == DType::F32.xk() && args.perm.is_null() && m <= 4 {
            args.xf = args.x as *mut f32;
            args.xf_stride = args.x_stride;
        } else {
            // Rows a power of two apart would share L1 sets in the kernel's
            // 8-row tiles: pad the stride by one cache line. The AVX2 kernel
            // keeps a chunk of every row in L1 (gv_blocked in gemm.c): rows
            // 1 KiB apart modulo 4 KiB fill the sets as evenly as one block
            // would (M = 16, K = 4096, N = 96 in L2/L3: +10%).
            let stride = if platform::active_isa() == platform::Isa::Avx2 && k >= 1024 {
                k.next_multiple_of(1024) + 256
            } else {
                k.next_multiple_of(16) + 16
            };
            xf = vec![0f32; m * stride];
            args.xf = xf.as_mut_ptr();
            args.xf_stride = stride as i64;
            let prep = kernels.linear_prep.expect("linear_prep");
            // SAFETY: xf holds m rows of k floats; x and perm were validated.
            unsafe { prep(&args, 0, m as i64) };
        }
        let gemv = kernels.linear_gemv.expect("linear_gemv");
        // ~256 KiB of weights per block, a multiple of the kernel's 4 rows.
        let min_chunk = ((256 * 1024) / weight_bytes_per_row.max(1)).clamp(4, 4096) & !3;
        let a = Shared(args);
        grid(n, min_chunk, |r| {
            // SAFETY: validated arguments; blocks write disjoint output columns.
            unsafe { gemv(a.get(), r.start as i64, r.end as i64) }
        });
        drop(xf);
        return;
    }
    if !bf16_dot_preferred() {
        args.bf16_pairs = -1;
    }
    gemm_tiles(args);
}

/// The tiled GEMM of validated `args` (plain or packed weights): the kernel
/// plans the tiles, then the grid runs them, each thread with its workspace.
pub(crate) fn gemm_tiles(mut args: sys::xk_linear_args) {
    let (m, n) = (args.m as usize, args.n as usize);
    let kernels = platform::kernels();
    let plan = kernels.linear_gemm_plan.expect("linear_gemm_plan");
    // SAFETY: plan only reads the shape and dtypes and writes the tile fields.
    let ws_bytes = unsafe { plan(&mut args, num_threads() as i64) } as usize;
    let tiles = m.div_ceil(args.tile_m as usize) * n.div_ceil(args.tile_n as usize);
    let gemm = kernels.linear_gemm.expect("linear_gemm");
    let a = Shared(args);
    grid(tiles, 1, |r| {
        with_workspace(ws_bytes, |ws| {
            // SAFETY: validated arguments; tiles write disjoint output blocks;
            // ws has the bytes the plan asked for (the kernel writes before it reads).
            unsafe { gemm(a.get(), r.start as i64, r.end as i64, ws.cast()) }
        })
    });
}

/// Runs `f` with a per-thread scratch buffer of at least `bytes` bytes, kept
/// between calls so the GEMM's packing buffers are not faulted in each time.
pub(crate) fn with_workspace<R>(bytes: usize, f: impl FnOnce(*mut u8) -> R) -> R {
    thread_local! {
        static WS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    WS.with(|ws| match ws.try_borrow_mut() {
        Ok(mut v) => {
            let words = bytes.div_ceil(8);
            if v.len() < words {
                *v = vec![0u64; words];
            }
            f(v.as_mut_ptr().cast())
        }
        // Re-entered on this thread (a nested grid): use a fresh buffer.
        Err(_) => f(vec![0u64; bytes.div_ceil(8)].as_mut_ptr().cast()),
    })
}

/// `F.linear`: `out = x · weightᵀ + bias`.
///
/// * `x`: `[M, K]` or `[K]`, f32/f16/bf16, K contiguous, any row stride.
/// * `weight`: `[N, K]`, same dtype as `x`, K contiguous, any row stride.
/// * `bias`: `[N]`, `x`'s dtype or f32, or `None`.
/// * `out`: `[M, N]` (or `[N]` for a vector `x`), `x`'s dtype or f32, N
///   contiguous; it may not overlap any input.
///
/// fp32 accumulation; the bias is added in fp32 before the one rounding to
/// the output dtype. `M = 0`, `N = 0` and `K = 0` (out = bias) are valid.
/// Results are identical for any thread count. Tolerance against an fp64
/// reference: see the [module docs](self).
///
/// ```
/// use xpu_ops::{linear, TensorView, TensorViewMut};
/// let x = [1.0f32, 2.0, 3.0]; // [1, 3]
/// let w = [1.0f32, 0.0, 0.0, 0.0, 1.0, 1.0]; // [2, 3]
/// let b = [0.5f32, -0.5];
/// let mut y = [0f32; 2];
/// linear(
///     &TensorView::new(&x, &[1, 3])?,
///     &TensorView::new(&w, &[2, 3])?,
///     Some(&TensorView::new(&b, &[2])?),
///     &mut TensorViewMut::new(&mut y, &[1, 2])?,
/// )?;
/// assert_eq!(y, [1.5, 4.5]);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn linear(
    x: &TensorView,
    weight: &TensorView,
    bias: Option<&TensorView>,
    out: &mut TensorViewMut,
) -> Result<()> {
    let _span = trace::op("linear", &[("x", x.layout()), ("weight", weight.layout())]);
    check::on_cpu(&[
        ("x", x.layout()),
        ("weight", weight.layout()),
        ("out", out.layout()),
    ])?;
    let wl = weight.layout();
    check::rank(wl, "weight", 2, "[N, K]")?;
    check::dtype_in(wl, "weight", &FLOAT_DTYPES)?;
    let (n, k) = (wl.shape[0], wl.shape[1]);
    let rows = check_rows(x, out, n, k, &[x.dtype(), DType::F32])?;
    check::same_dtype(x.layout(), "x", wl, "weight")?;
    inner_contiguous(wl, "weight")?;
    check_bias(bias, n, x.dtype())?;
    let mut inputs: Vec<(&str, *const u8, &Layout)> = vec![
        ("x", x.as_ptr(), x.layout()),
        ("weight", weight.as_ptr(), wl),
    ];
    if let Some(b) = bias {
        inputs.push(("bias", b.as_ptr(), b.layout()));
    }
    check_out_alias(out, &inputs)?;

    let mut args = base_args(x, &rows, n, bias, out);
    args.w = weight.as_ptr().cast();
    args.w_stride = if n > 1 {
        wl.strides[0] as i64
    } else {
        k as i64
    };
    args.w_dtype = wl.dtype.xk();
    run(args, k * wl.dtype.size());
    Ok(())
}

/// Weight-only quantized linear: `out = x · dequant(qweight)ᵀ + bias`, with
/// the weight in the canonical layout of [`crate::ops::quant`] (build it with
/// [`Wna16Weight`](crate::Wna16Weight) or its importers from GPTQ, AWQ and
/// compressed-tensors).
///
/// * `x`: `[M, K]` or `[K]`, f32/f16/bf16, K contiguous, any row stride.
/// * `qweight`: uint8 `[N, row_bytes]` codes (`bits` = 4 or 8); `scales`
///   `[N, K/G]` f32/f16/bf16 with `G` a multiple of 32 dividing K (or K);
///   `zeros` like `scales` or `None` (symmetric: `2^(bits-1)`); `perm` int32
///   `[K]` (act-order) or `None`.
/// * `bias`: `[N]`, `x`'s dtype or f32; `out`: `[M, N]`, `x`'s dtype or f32.
///
/// Weights dequantize exactly as [`wna16_dequantize`](crate::wna16_dequantize)
/// (in f32); the products accumulate in fp32 with the tolerance of
/// [`linear`] (see the [module docs](self)). The AVX-512 int4 decode path
/// (`M <= 16`) looks each weight up in a per-group table of `(q - z)·s`
/// (built as `fma(q, s, -z·s)` like the other vector paths: exact for f16/bf16
/// scales). The AVX2 path at `M = 1` does not dequantize each weight: per
/// group it sums the codes against x, `t = Σ x·q - z·Σ x` (lane-wise, in
/// fp32), and adds `s·t` (one FMA per 8 codes instead of two): the same
/// tolerance holds (measured errors well inside it), but an infinite
/// activation gives NaN there where the reference gives ±inf, and
/// activations below 2⁻¹⁰² (int4) lose low bits. Thread-count invariant.
///
/// Decode (`M <= 16`) streams `qweight` rows as 64-byte blocks: rows that
/// start 64-byte aligned (page-aligned storage, as [`Wna16Weight`](crate::Wna16Weight)
/// keeps) read measurably faster than rows off a cache-line boundary.
///
/// ```
/// use xpu_ops::{wna16_linear, TensorView, TensorViewMut, Wna16Weight};
/// let (n, k) = (3, 64);
/// let codes = vec![9u8; n * k]; // (9 - 8) * scale
/// let scales = [1.0f32, 0.5, 0.25];
/// let w = Wna16Weight::from_codes(n, k, 4, &codes, &TensorView::new(&scales, &[3, 1])?, None, None)?;
/// let x = vec![1.0f32; k];
/// let mut y = [0f32; 3];
/// wna16_linear(&TensorView::new(&x, &[1, k])?, &w.qweight(), &w.scales(), None, None, None,
///     &mut TensorViewMut::new(&mut y, &[1, n])?, 4)?;
/// assert_eq!(y, [64.0, 32.0, 16.0]);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn wna16_linear(
    x: &TensorView,
    qweight: &TensorView,
    scales: &TensorView,
    zeros: Option<&TensorView>,
    perm: Option<&TensorView>,
    bias: Option<&TensorView>,
    out: &mut TensorViewMut,
    bits: u32,
) -> Result<()> {
    let _span = trace::op(
        "wna16_linear",
        &[("x", x.layout()), ("qweight", qweight.layout())],
    );
    check::on_cpu(&[("x", x.layout()), ("out", out.layout())])?;
    if x.ndim() != 1 && x.ndim() != 2 {
        bail!(
            ShapeMismatch,
            "`x` must be [K] or [M, K], got shape {:?}",
            x.shape()
        );
    }
    let k = *x.shape().last().expect("rank >= 1");
    let (n, gs) = crate::ops::quant::check_canonical(qweight, scales, zeros, perm, k, bits)?;
    let rows = check_rows(x, out, n, k, &[x.dtype(), DType::F32])?;
    check_bias(bias, n, x.dtype())?;
    let mut inputs: Vec<(&str, *const u8, &Layout)> = vec![
        ("x", x.as_ptr(), x.layout()),
        ("qweight", qweight.as_ptr(), qweight.layout()),
        ("scales", scales.as_ptr(), scales.layout()),
    ];
    for (name, t) in [("zeros", zeros), ("perm", perm), ("bias", bias)] {
        if let Some(t) = t {
            inputs.push((name, t.as_ptr(), t.layout()));
        }
    }
    check_out_alias(out, &inputs)?;

    let row_bytes = crate::ops::quant::wna16_row_bytes(bits, k);
    let mut args = base_args(x, &rows, n, bias, out);
    args.w = qweight.as_ptr().cast();
    args.w_stride = if n > 1 {
        qweight.strides()[0] as i64
    } else {
        row_bytes as i64
    };
    args.w_kind = if bits == 4 {
        sys::xk_weight_kind_XK_WEIGHT_INT4
    } else {
        sys::xk_weight_kind_XK_WEIGHT_INT8
    } as i32;
    args.scales = scales.as_ptr().cast();
    args.zeros = zeros.map_or(std::ptr::null(), |z| z.as_ptr().cast());
    args.sz_stride = if n > 1 {
        scales.strides()[0] as i64
    } else {
        (k / gs) as i64
    };
    args.sz_dtype = scales.dtype().xk();
    args.group_size = gs as i64;
    args.perm = perm.map_or(std::ptr::null(), |p| p.as_ptr().cast());
    run(args, row_bytes);
    Ok(())
}
