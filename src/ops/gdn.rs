//! Gated DeltaNet ops (fla `fla/ops/gated_delta_rule`, vLLM `layers/fla/ops`):
//! [`fused_gdn_gating`], [`l2norm`], [`rms_norm_gated`],
//! [`fused_recurrent_gated_delta_rule`] (decode, spec decode) and
//! [`chunk_gated_delta_rule`] (prefill).

use crate::dtype::DType;
use crate::error::{bail, Result};
use crate::ops::check;
use crate::platform;
use crate::sys;
use crate::tensor::{Layout, TensorView, TensorViewMut};
use crate::threading::{grid, Shared};

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// A tensor seen as rows of `n` contiguous elements: the last dim is
/// contiguous and the leading dims merge into at most two strided levels,
/// row r at `(r / inner) * outer_stride + (r % inner) * row_stride` (so a
/// `[tokens, heads, dim]` slice of a fused projection works).
pub(crate) struct Rows {
    pub rows: usize,
    pub n: usize,
    pub row_stride: usize,
    pub inner: usize,
    pub outer_stride: usize,
}

pub(crate) fn rows_of(t: &Layout, name: &str) -> Result<Rows> {
    if t.ndim() == 0 {
        bail!(ShapeMismatch, "`{name}` must have at least one dimension");
    }
    check::inner_contiguous(t, name)?;
    let n = *t.shape.last().expect("rank >= 1");
    let rows = t.shape[..t.ndim() - 1].iter().product::<usize>();
    // (size, stride) of the leading dims, merged where they are dense.
    let mut levels: Vec<(usize, usize)> = Vec::new();
    for (&d, &s) in t.shape[..t.ndim() - 1].iter().zip(&t.strides) {
        if d == 1 {
            continue;
        }
        match levels.last_mut() {
            Some(last) if last.1 == s * d => *last = (last.0 * d, s),
            _ => levels.push((d, s)),
        }
    }
    if rows > 0 && levels.len() > 2 {
        bail!(
            InvalidStride,
            "`{name}`: the leading dims of shape {:?} with strides {:?} do not merge into two row levels",
            t.shape,
            t.strides
        );
    }
    let (inner, row_stride, outer_stride) = match levels.as_slice() {
        [] => (1, n, 0),
        [(d, s)] => (*d, *s, 0),
        [(_, so), (d, s)] => (*d, *s, *so),
        _ => (1, n, 0),
    };
    Ok(Rows {
        rows,
        n,
        row_stride,
        inner,
        outer_stride,
    })
}

fn rows2(r: &Rows) -> sys::xk_rows {
    sys::xk_rows {
        stride: r.row_stride as i64,
        inner: r.inner.max(1) as i64,
        outer_stride: r.outer_stride as i64,
    }
}

fn same_shape(a: &Layout, an: &str, b: &Layout, bn: &str) -> Result<()> {
    if a.shape != b.shape {
        bail!(
            ShapeMismatch,
            "`{bn}` has shape {:?} but `{an}` has {:?}",
            b.shape,
            a.shape
        );
    }
    Ok(())
}

fn row_grid(rows: usize, n: usize, body: impl Fn(i64, i64) + Sync) {
    let min_chunk = (16 * 1024 / n.max(1)).max(1);
    grid(rows, min_chunk, |r| body(r.start as i64, r.end as i64));
}

/// `g = -exp(A_log) * softplus(a + dt_bias)` and `beta_output = sigmoid(b)`
/// (vLLM `fused_gdn_gating`), softplus as torch's: `log(1 + exp(beta x)) / beta`,
/// or `x` where `beta * x > threshold`.
///
/// * `A_log`, `dt_bias`: `[num_heads]`; `a`, `b`: `[num_tokens, num_heads]`
///   (any strides); f32/f16/bf16.
/// * `g`: f32 `[1, num_tokens, num_heads]` or `[num_tokens, num_heads]`;
///   `beta_output`: same shape, f32/f16/bf16 (vLLM allocates b's dtype).
///
/// Computed in fp32 with libm `expf`/`log1pf`: within a few fp32 ulps of the
/// fp64 reference (tests: 1e-5 relative + 1e-6), then rounded to `beta_output`'s dtype.
///
/// ```
/// use xpu_ops::{fused_gdn_gating, TensorView, TensorViewMut};
/// let (a_log, dt_bias) = ([0.0f32; 2], [0.0f32; 2]);
/// let (a, b) = ([0.0f32; 2], [0.0f32; 2]);
/// let (mut g, mut beta) = (vec![0f32; 2], vec![0f32; 2]);
/// fused_gdn_gating(
///     &TensorView::new(&a_log, &[2])?, &TensorView::new(&a, &[1, 2])?,
///     &TensorView::new(&b, &[1, 2])?, &TensorView::new(&dt_bias, &[2])?,
///     1.0, 20.0,
///     &mut TensorViewMut::new(&mut g, &[1, 1, 2])?,
///     &mut TensorViewMut::new(&mut beta, &[1, 1, 2])?,
/// )?;
/// assert!((g[0] + std::f32::consts::LN_2).abs() < 1e-6); // -softplus(0)
/// assert_eq!(beta[0], 0.5);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
#[allow(clippy::too_many_arguments, non_snake_case)]
pub fn fused_gdn_gating(
    A_log: &TensorView,
    a: &TensorView,
    b: &TensorView,
    dt_bias: &TensorView,
    beta: f32,
    threshold: f32,
    g: &mut TensorViewMut,
    beta_output: &mut TensorViewMut,
) -> Result<()> {
    check::on_cpu(&[
        ("A_log", A_log.layout()),
        ("a", a.layout()),
        ("b", b.layout()),
        ("dt_bias", dt_bias.layout()),
        ("g", g.layout()),
        ("beta_output", beta_output.layout()),
    ])?;
    check::rank(a.layout(), "a", 2, "[num_tokens, num_heads]")?;
    let (tokens, heads) = (a.shape()[0], a.shape()[1]);
    check::dtype_in(a.layout(), "a", &FLOATS)?;
    check::dtype_in(b.layout(), "b", &FLOATS)?;
    same_shape(a.layout(), "a", b.layout(), "b")?;
    for (t, name) in [(A_log, "A_log"), (dt_bias, "dt_bias")] {
        check::rank(t.layout(), name, 1, "[num_heads]")?;
        check::dtype_in(t.layout(), name, &FLOATS)?;
        check::dim(t.layout(), name, 0, heads, "num_heads of `a`")?;
    }
    check::dtype_in(g.layout(), "g", &[DType::F32])?;
    check::dtype_in(beta_output.layout(), "beta_output", &FLOATS)?;
    let out_strides = |t: &Layout, name: &str| -> Result<(usize, usize)> {
        let ok = match t.ndim() {
            2 => t.shape == [tokens, heads],
            3 => t.shape == [1, tokens, heads],
            _ => false,
        };
        if !ok {
            bail!(
                ShapeMismatch,
                "`{name}` must be [1, {tokens}, {heads}] or [{tokens}, {heads}], got {:?}",
                t.shape
            );
        }
        let n = t.ndim();
        Ok((t.strides[n - 2], t.strides[n - 1]))
    };
    let gs = out_strides(g.layout(), "g")?;
    let bs = out_strides(beta_output.layout(), "beta_output")?;
    if !(beta.is_finite() && beta > 0.0) || threshold.is_nan() {
        bail!(
            InvalidValue,
            "softplus beta must be finite and positive and threshold not NaN, got beta {beta}, threshold {threshold}"
        );
    }
    let args = sys::xk_gdn_gating_args {
        a_log: A_log.as_ptr().cast(),
        a_log_dtype: A_log.dtype().xk(),
        a_log_stride: A_log.strides()[0] as i64,
        a: a.as_ptr().cast(),
        a_dtype: a.dtype().xk(),
        a_stride_row: a.strides()[0] as i64,
        a_stride_head: a.strides()[1] as i64,
        b: b.as_ptr().cast(),
        b_dtype: b.dtype().xk(),
        b_stride_row: b.strides()[0] as i64,
        b_stride_head: b.strides()[1] as i64,
        dt_bias: dt_bias.as_ptr().cast(),
        dt_bias_dtype: dt_bias.dtype().xk(),
        dt_bias_stride: dt_bias.strides()[0] as i64,
        g: g.as_mut_ptr().cast(),
        g_dtype: DType::F32.xk(),
        g_stride_row: gs.0 as i64,
        g_stride_head: gs.1 as i64,
        beta_output: beta_output.as_mut_ptr().cast(),
        beta_dtype: beta_output.dtype().xk(),
        beta_stride_row: bs.0 as i64,
        beta_stride_head: bs.1 as i64,
        num_heads: heads as i64,
        softplus_beta: beta,
        threshold,
    };
    let kernel = platform::kernels().gdn_gating.expect("gdn_gating");
    let args = Shared(args);
    row_grid(tokens, heads * 8, |r0, r1| {
        // SAFETY: shapes, dtypes and strides validated above; rows are disjoint.
        unsafe { kernel(args.get(), r0, r1) }
    });
    Ok(())
}

/// `y = x / sqrt(sum(x^2) + eps)` over the last dim (fla `l2norm_fwd`,
/// default eps 1e-6). `x`: any shape with a contiguous last dim and leading
/// dims that collapse into rows; `out`: same shape, any float dtype.
///
/// fp32 sum of squares: within ~1e-6 relative of the fp64 reference before
/// the rounding to `out`'s dtype.
///
/// ```
/// use xpu_ops::{l2norm, TensorView, TensorViewMut};
/// let x = [3.0f32, 4.0];
/// let mut y = [0f32; 2];
/// l2norm(&TensorView::new(&x, &[1, 2])?, 0.0, &mut TensorViewMut::new(&mut y, &[1, 2])?)?;
/// assert_eq!(y, [0.6, 0.8]);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn l2norm(x: &TensorView, eps: f32, out: &mut TensorViewMut) -> Result<()> {
    check::on_cpu(&[("x", x.layout()), ("out", out.layout())])?;
    check::dtype_in(x.layout(), "x", &FLOATS)?;
    check::dtype_in(out.layout(), "out", &FLOATS)?;
    same_shape(x.layout(), "x", out.layout(), "out")?;
    let xr = rows_of(x.layout(), "x")?;
    let or = rows_of(out.layout(), "out")?;
    if !(eps >= 0.0 && eps.is_finite()) {
        bail!(InvalidValue, "eps must be finite and >= 0, got {eps}");
    }
    let args = sys::xk_l2norm_args {
        x: x.as_ptr().cast(),
        x_dtype: x.dtype().xk(),
        x_rows: rows2(&xr),
        out: out.as_mut_ptr().cast(),
        out_dtype: out.dtype().xk(),
        out_rows: rows2(&or),
        n: xr.n as i64,
        eps,
    };
    let kernel = platform::kernels().l2norm.expect("l2norm");
    let args = Shared(args);
    row_grid(xr.rows, xr.n, |r0, r1| {
        // SAFETY: validated views; each row is written by one block.
        unsafe { kernel(args.get(), r0, r1) }
    });
    Ok(())
}

/// Gated RMS norm (vLLM `rms_norm_gated`, fla `RMSNormGated`): per group of
/// `group_size` elements of the last dim (None: the whole dim),
/// `norm_before_gate`: `y = x * rstd(x) * weight (+ bias)`, then `y *= silu(z)`;
/// otherwise `x' = x * silu(z)`, `y = x' * rstd(x') * weight (+ bias)`, with
/// `rstd(v) = 1 / sqrt(mean(v^2) + eps)`. `z = None`: no gate. All in fp32
/// (upstream's `upcast`), one rounding to `out`'s dtype; within ~1e-6
/// relative of the fp64 reference before that rounding.
///
/// * `x`, `z`, `out`: same shape `[..., n]`, contiguous last dim; `out` any float dtype.
/// * `weight`, `bias`: `[n]`.
///
/// ```
/// use xpu_ops::{rms_norm_gated, TensorView, TensorViewMut};
/// let x = [1.0f32, -1.0, 1.0, -1.0];
/// let w = [2.0f32; 4];
/// let mut y = [0f32; 4];
/// rms_norm_gated(&TensorView::new(&x, &[1, 4])?, &TensorView::new(&w, &[4])?, None, None,
///                1e-6, None, true, &mut TensorViewMut::new(&mut y, &[1, 4])?)?;
/// assert!((y[1] + 2.0).abs() < 1e-5);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_gated(
    x: &TensorView,
    weight: &TensorView,
    bias: Option<&TensorView>,
    z: Option<&TensorView>,
    eps: f32,
    group_size: Option<usize>,
    norm_before_gate: bool,
    out: &mut TensorViewMut,
) -> Result<()> {
    check::on_cpu(&[
        ("x", x.layout()),
        ("weight", weight.layout()),
        ("out", out.layout()),
    ])?;
    check::dtype_in(x.layout(), "x", &FLOATS)?;
    check::dtype_in(out.layout(), "out", &FLOATS)?;
    let xr = rows_of(x.layout(), "x")?;
    same_shape(x.layout(), "x", out.layout(), "out")?;
    let or = rows_of(out.layout(), "out")?;
    let n = xr.n;
    let (z_ptr, z_dtype, z_rows) = match z {
        Some(z) => {
            check::on_cpu(&[("z", z.layout())])?;
            check::dtype_in(z.layout(), "z", &FLOATS)?;
            same_shape(x.layout(), "x", z.layout(), "z")?;
            let zr = rows_of(z.layout(), "z")?;
            (z.as_ptr(), z.dtype().xk(), rows2(&zr))
        }
        None => (std::ptr::null(), 0, rows2(&xr)),
    };
    check::rank(weight.layout(), "weight", 1, "[n]")?;
    check::dtype_in(weight.layout(), "weight", &FLOATS)?;
    check::dim(weight.layout(), "weight", 0, n, "the last dim of `x`")?;
    let (b_ptr, b_dtype, b_stride) = match bias {
        Some(b) => {
            check::on_cpu(&[("bias", b.layout())])?;
            check::rank(b.layout(), "bias", 1, "[n]")?;
            check::dtype_in(b.layout(), "bias", &FLOATS)?;
            check::dim(b.layout(), "bias", 0, n, "the last dim of `x`")?;
            (b.as_ptr(), b.dtype().xk(), b.strides()[0] as i64)
        }
        None => (std::ptr::null(), 0, 0),
    };
    let group = group_size.unwrap_or(n);
    if n > 0 && (group == 0 || n % group != 0) {
        bail!(
            InvalidArgument,
            "group_size {group} does not divide the last dim {n}"
        );
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        bail!(InvalidValue, "eps must be finite and >= 0, got {eps}");
    }
    let args = sys::xk_rms_norm_gated_args {
        x: x.as_ptr().cast(),
        x_dtype: x.dtype().xk(),
        x_rows: rows2(&xr),
        z: z_ptr.cast(),
        z_dtype,
        z_rows: z_rows,
        weight: weight.as_ptr().cast(),
        weight_dtype: weight.dtype().xk(),
        weight_stride: weight.strides()[0] as i64,
        bias: b_ptr.cast(),
        bias_dtype: b_dtype,
        bias_stride: b_stride,
        out: out.as_mut_ptr().cast(),
        out_dtype: out.dtype().xk(),
        out_rows: rows2(&or),
        n: n as i64,
        group_size: group.max(1) as i64,
        eps,
        norm_before_gate: norm_before_gate as i32,
    };
    let kernel = platform::kernels().rms_norm_gated.expect("rms_norm_gated");
    let args = Shared(args);
    row_grid(xr.rows, n, |r0, r1| {
        // SAFETY: validated views; each row is written by one block.
        unsafe { kernel(args.get(), r0, r1) }
    });
    Ok(())
}
