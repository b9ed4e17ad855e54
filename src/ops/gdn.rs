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
use crate::trace;

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

/// `out` may be `input` itself (same memory and layout: row-wise ops read a
/// piece before writing it) but must not otherwise overlap it.
fn check_in_place(
    out: (*const u8, &Layout),
    input: (*const u8, &Layout),
    name: &str,
) -> Result<()> {
    let identical =
        out.0 == input.0 && out.1.shape == input.1.shape && out.1.strides == input.1.strides;
    if !identical && crate::ops::conv::overlaps(out, input) {
        bail!(
            Aliasing,
            "`out` overlaps `{name}` without being the same tensor"
        );
    }
    Ok(())
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
    let _span = trace::op("fused_gdn_gating", &[("a", a.layout()), ("b", b.layout())]);
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
    if crate::ops::conv::overlaps(
        (g.as_ptr(), g.layout()),
        (beta_output.as_ptr(), beta_output.layout()),
    ) {
        bail!(Aliasing, "`g` and `beta_output` overlap");
    }
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
    let _span = trace::op("l2norm", &[("x", x.layout()), ("out", out.layout())]);
    check::on_cpu(&[("x", x.layout()), ("out", out.layout())])?;
    check::dtype_in(x.layout(), "x", &FLOATS)?;
    check::dtype_in(out.layout(), "out", &FLOATS)?;
    same_shape(x.layout(), "x", out.layout(), "out")?;
    let xr = rows_of(x.layout(), "x")?;
    let or = rows_of(out.layout(), "out")?;
    check_in_place((out.as_ptr(), out.layout()), (x.as_ptr(), x.layout()), "x")?;
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
    let _span = trace::op(
        "rms_norm_gated",
        &[("x", x.layout()), ("weight", weight.layout())],
    );
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
    check_in_place((out.as_ptr(), out.layout()), (x.as_ptr(), x.layout()), "x")?;
    if let Some(z) = z {
        check_in_place((out.as_ptr(), out.layout()), (z.as_ptr(), z.layout()), "z")?;
    }
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
        z_rows,
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

// ---- gated delta rule ---------------------------------------------------------

/// Validated shapes of a gated-delta-rule call.
pub(crate) struct Gdn {
    pub batch: usize,
    pub tokens: usize,
    pub h: usize,
    pub hv: usize,
    pub k: usize,
    pub v: usize,
    /// Per sequence: (first token, length) within its batch row.
    pub seqs: Vec<(usize, usize)>,
}

fn gdn_tensor(t: &TensorView) -> sys::xk_gdn_tensor {
    let s = t.strides();
    sys::xk_gdn_tensor {
        data: t.as_ptr().cast(),
        dtype: t.dtype().xk(),
        s_seq: s[0] as i64,
        s_tok: s[1] as i64,
        s_head: s[2] as i64,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn check_gdn_inputs(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    g: &TensorView,
    beta: Option<&TensorView>,
    cu_seqlens: Option<&TensorView>,
    o: &Layout,
    o_ptr: *const u8,
) -> Result<Gdn> {
    check::on_cpu(&[
        ("q", q.layout()),
        ("k", k.layout()),
        ("v", v.layout()),
        ("g", g.layout()),
        ("o", o),
    ])?;
    check::rank(q.layout(), "q", 4, "[B, T, H, K]")?;
    check::rank(v.layout(), "v", 4, "[B, T, HV, V]")?;
    check::rank(g.layout(), "g", 3, "[B, T, HV]")?;
    for (t, name) in [
        (q.layout(), "q"),
        (k.layout(), "k"),
        (v.layout(), "v"),
        (g.layout(), "g"),
    ] {
        check::dtype_in(t, name, &FLOATS)?;
    }
    same_shape(q.layout(), "q", k.layout(), "k")?;
    let [batch, tokens, h, kd] = [q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]];
    check::dim(v.layout(), "v", 0, batch, "B of `q`")?;
    check::dim(v.layout(), "v", 1, tokens, "T of `q`")?;
    let (hv, vd) = (v.shape()[2], v.shape()[3]);
    if kd == 0 || vd == 0 || h == 0 {
        bail!(
            Unsupported,
            "head counts and head dims must be positive, got H {h}, K {kd}, V {vd}"
        );
    }
    if hv % h != 0 {
        bail!(
            ShapeMismatch,
            "HV = {hv} value heads is not a multiple of H = {h} key heads"
        );
    }
    if g.shape() != [batch, tokens, hv] {
        bail!(
            ShapeMismatch,
            "`g` must be [B, T, HV] = [{batch}, {tokens}, {hv}], got {:?}",
            g.shape()
        );
    }
    if let Some(b) = beta {
        check::on_cpu(&[("beta", b.layout())])?;
        check::dtype_in(b.layout(), "beta", &FLOATS)?;
        same_shape(g.layout(), "g", b.layout(), "beta")?;
    }
    if o.shape != v.shape() {
        bail!(
            ShapeMismatch,
            "`o` has shape {:?} but `v` has {:?}",
            o.shape,
            v.shape()
        );
    }
    if o.dtype != v.dtype() {
        bail!(
            DtypeMismatch,
            "`o` has dtype {} but the output has v's dtype {}",
            o.dtype,
            v.dtype()
        );
    }
    for (t, name) in [
        (q.layout(), "q"),
        (k.layout(), "k"),
        (v.layout(), "v"),
        (o, "o"),
    ] {
        check::inner_contiguous(t, name)?;
    }
    let mut inputs = vec![
        (q.as_ptr(), q.layout(), "q"),
        (k.as_ptr(), k.layout(), "k"),
        (v.as_ptr(), v.layout(), "v"),
        (g.as_ptr(), g.layout(), "g"),
    ];
    if let Some(b) = beta {
        inputs.push((b.as_ptr(), b.layout(), "beta"));
    }
    for (p, t, name) in inputs {
        if crate::ops::conv::overlaps((o_ptr, o), (p, t)) {
            bail!(Aliasing, "`o` overlaps `{name}`");
        }
    }
    let seqs = match cu_seqlens {
        Some(cu) => {
            if batch != 1 {
                bail!(
                    ShapeMismatch,
                    "with cu_seqlens the batch size B must be 1 (flatten the sequences), got {batch}"
                );
            }
            let starts = crate::ops::conv::check_seq_starts(cu, "cu_seqlens", tokens)?;
            starts
                .windows(2)
                .map(|w| (w[0] as usize, (w[1] - w[0]) as usize))
                .collect()
        }
        None => vec![(0, tokens); batch],
    };
    Ok(Gdn {
        batch,
        tokens,
        h,
        hv,
        k: kd,
        v: vd,
        seqs,
    })
}

/// The state pool `[slots, HV, V, K]`, fp32, any strides.
fn check_state_pool(t: &Layout, name: &str, d: &Gdn) -> Result<usize> {
    check::on_cpu(&[(name, t)])?;
    check::rank(t, name, 4, "the state pool [slots, HV, V, K]")?;
    if t.dtype != DType::F32 {
        bail!(
            DtypeMismatch,
            "`{name}` has dtype {}; the recurrent state is fp32 whatever the input dtype",
            t.dtype
        );
    }
    check::dim(t, name, 1, d.hv, "HV")?;
    check::dim(t, name, 2, d.v, "V (the value head dim)")?;
    check::dim(t, name, 3, d.k, "K (the key head dim)")?;
    Ok(t.shape[0])
}

/// Slots each sequence reads and writes; checks ranges and cross-sequence conflicts.
struct SlotPlan {
    indices_2d: bool,
    cols: usize,
}

fn check_slots_plan(
    indices: Option<&TensorView>,
    num_accepted: Option<&TensorView>,
    d: &Gdn,
    slots: usize,
    allow_2d: bool,
) -> Result<SlotPlan> {
    let n = d.seqs.len();
    // (read slot, written slots) per live sequence.
    let mut plan: Vec<(usize, i64, Vec<i64>)> = Vec::new();
    let mut cols = 1;
    let indices_2d = indices.is_some_and(|t| t.ndim() == 2);
    match indices {
        None => {
            if num_accepted.is_some() {
                bail!(
                    InvalidArgument,
                    "num_accepted_tokens needs rank-2 ssm_state_indices [N, T] (per-token state slots)"
                );
            }
            if n > slots {
                bail!(
                    ShapeMismatch,
                    "the state pool has {slots} slots but {n} sequences need one each (no ssm_state_indices given)"
                );
            }
            for i in 0..n {
                plan.push((i, i as i64, vec![i as i64]));
            }
        }
        Some(t) => {
            check::on_cpu(&[("ssm_state_indices", t.layout())])?;
            check::dtype_in(t.layout(), "ssm_state_indices", &[DType::I32, DType::I64])?;
            if t.ndim() == 0 || t.ndim() > 2 || (t.ndim() == 2 && !allow_2d) {
                bail!(
                    ShapeMismatch,
                    "`ssm_state_indices` must be [N]{}, got shape {:?}",
                    if allow_2d { " or [N, T]" } else { "" },
                    t.shape()
                );
            }
            check::dim(
                t.layout(),
                "ssm_state_indices",
                0,
                n,
                "the number of sequences",
            )?;
            if indices_2d {
                cols = t.shape()[1];
                let need = d.seqs.iter().map(|s| s.1).max().unwrap_or(0);
                if need > cols {
                    bail!(
                        ShapeMismatch,
                        "`ssm_state_indices` has {cols} columns but a sequence has {need} tokens (one state slot per token)"
                    );
                }
            } else if num_accepted.is_some() {
                bail!(
                    InvalidArgument,
                    "num_accepted_tokens needs rank-2 ssm_state_indices [N, T] (per-token state slots)"
                );
            }
            let acc: Option<Vec<i64>> = match num_accepted {
                Some(a) => {
                    crate::ops::conv::vector_of(
                        a,
                        "num_accepted_tokens",
                        n,
                        &[DType::I32, DType::I64],
                        "one count per sequence",
                    )?;
                    Some(check::vector_values(a).collect())
                }
                None => None,
            };
            let get = |i: usize, c: usize| {
                if indices_2d {
                    t.get_i64(&[i, c])
                } else {
                    t.get_i64(&[i])
                }
            };
            let check_slot = |i: usize, c: usize| -> Result<i64> {
                let s = get(i, c);
                if s >= slots as i64 {
                    let at = if indices_2d {
                        format!("[{i}, {c}]")
                    } else {
                        format!("[{i}]")
                    };
                    bail!(
                        IndexOutOfRange,
                        "ssm_state_indices{at} = {s} is outside the state pool (0..{slots})"
                    );
                }
                Ok(s)
            };
            for (i, &(_, len)) in d.seqs.iter().enumerate() {
                if len == 0 {
                    continue;
                }
                let col = match &acc {
                    Some(a) => {
                        if a[i] < 1 || a[i] as usize > cols {
                            bail!(
                                IndexOutOfRange,
                                "num_accepted_tokens[{i}] = {}: the initial state column must be in 1..={cols}",
                                a[i]
                            );
                        }
                        a[i] as usize - 1
                    }
                    None => 0,
                };
                let read = check_slot(i, col)?;
                if read < 0 {
                    continue; // padding: nothing read or written
                }
                let writes: Vec<i64> = if indices_2d {
                    let mut w = Vec::new();
                    for c in 0..len {
                        let s = check_slot(i, c)?;
                        if s >= 0 {
                            w.push(s);
                        }
                    }
                    w
                } else {
                    vec![read]
                };
                plan.push((i, read, writes));
            }
        }
    }
    let mut owner = std::collections::HashMap::new();
    for (i, _, writes) in &plan {
        for &s in writes {
            if let Some(&j) = owner.get(&s) {
                if j != *i {
                    bail!(Aliasing, "sequences {j} and {i} both write state slot {s}");
                }
            }
            owner.insert(s, *i);
        }
    }
    for (i, read, _) in &plan {
        if let Some(&j) = owner.get(read) {
            if j != *i {
                bail!(
                    Aliasing,
                    "sequence {i} reads state slot {read}, which sequence {j} writes"
                );
            }
        }
    }
    Ok(SlotPlan { indices_2d, cols })
}

fn state_layout_args(st: &Layout) -> [i64; 4] {
    [
        st.strides[0] as i64,
        st.strides[1] as i64,
        st.strides[2] as i64,
        st.strides[3] as i64,
    ]
}

fn default_scale(scale: Option<f32>, k: usize) -> Result<f32> {
    let s = scale.unwrap_or(1.0 / (k as f32).sqrt());
    if !s.is_finite() {
        bail!(InvalidValue, "scale must be finite, got {s}");
    }
    Ok(s)
}

#[allow(clippy::too_many_arguments)]
fn gdn_args(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    g: &TensorView,
    beta: Option<&TensorView>,
    o: &mut TensorViewMut,
    d: &Gdn,
    scale: f32,
    use_qk_l2norm: bool,
    cu_seqlens: Option<&TensorView>,
) -> sys::xk_gdn_args {
    let none = sys::xk_gdn_tensor {
        data: std::ptr::null(),
        dtype: 0,
        s_seq: 0,
        s_tok: 0,
        s_head: 0,
    };
    let os = o.strides().to_vec();
    sys::xk_gdn_args {
        q: gdn_tensor(q),
        k: gdn_tensor(k),
        v: gdn_tensor(v),
        g: gdn_tensor(g),
        beta: beta.map_or(none, gdn_tensor),
        o: o.as_mut_ptr().cast(),
        o_dtype: o.dtype().xk(),
        o_s_seq: os[0] as i64,
        o_s_tok: os[1] as i64,
        o_s_head: os[2] as i64,
        state: std::ptr::null_mut(),
        state_s_slot: 0,
        state_s_head: 0,
        state_s_v: 0,
        state_s_k: 0,
        num_seqs: d.seqs.len() as i64,
        seqlen: d.tokens as i64,
        num_heads: d.h as i64,
        num_v_heads: d.hv as i64,
        head_k_dim: d.k as i64,
        head_v_dim: d.v as i64,
        scale,
        use_qk_l2norm: use_qk_l2norm as i32,
        cu_seqlens: crate::ops::conv::la_index(cu_seqlens),
        state_indices: std::ptr::null(),
        state_indices_dtype: 0,
        idx_s_seq: 0,
        idx_s_tok: 0,
        indices_2d: 0,
        num_accepted_tokens: crate::ops::conv::la_index(None),
        has_initial_state: crate::ops::conv::la_index(None),
        output_final_state: 0,
    }
}

fn set_indices(args: &mut sys::xk_gdn_args, indices: Option<&TensorView>, plan: &SlotPlan) {
    if let Some(t) = indices {
        args.state_indices = t.as_ptr().cast();
        args.state_indices_dtype = if t.dtype() == DType::I64 {
            sys::xk_la_index_dtype_XK_LA_I64
        } else {
            sys::xk_la_index_dtype_XK_LA_I32
        } as i32;
        args.idx_s_seq = t.strides()[0] as i64;
        args.idx_s_tok = if plan.indices_2d {
            t.strides()[1] as i64
        } else {
            0
        };
        args.indices_2d = plan.indices_2d as i32;
    }
    let _ = plan.cols;
}

fn run_gdn(args: sys::xk_gdn_args, d: &Gdn, chunked: bool) {
    let kernels = platform::kernels();
    let scratch_floats = kernels.gdn_scratch_floats.expect("gdn_scratch_floats");
    let kernel = if chunked {
        kernels.gdn_chunk.expect("gdn_chunk")
    } else {
        kernels.gdn_recurrent.expect("gdn_recurrent")
    };
    // Grid units: (sequence, value head) blocks for the recurrence; for the
    // chunked kernel (sequence, key head) groups of HV / H blocks, so the value
    // heads that share a key head (and its q k^T, k k^T) stay in one range.
    let per = if chunked { d.hv / d.h } else { 1 };
    let units = d.seqs.len() * d.hv / per;
    let longest = d.seqs.iter().map(|s| s.1).max().unwrap_or(0).max(1);
    let min_chunk = (1 << 20) / (longest * d.k * d.v * per).max(1);
    let args = Shared(args);
    grid(units, min_chunk.max(1), |r| {
        let (b0, b1) = (r.start * per, r.end * per);
        // The chunked kernel's scratch depends on how many blocks it may hold
        // at once (at most HV).
        let arg = if chunked {
            (b1 - b0).min(d.hv) as i32
        } else {
            0
        };
        // SAFETY: a pure function of its arguments.
        let floats = unsafe { scratch_floats(d.k as i64, d.v as i64, arg) } as usize;
        let mut scratch = vec![0f32; floats];
        // SAFETY: shapes, strides, indices and slot ownership were validated;
        // block (n, hv) writes only outputs of sequence n, head hv, and head hv
        // of the slots sequence n owns; scratch is private to this range.
        unsafe { kernel(args.get(), scratch.as_mut_ptr(), b0 as i64, b1 as i64) }
    });
}

/// Decode / speculative-decode recurrence (vLLM's fla `fused_recurrent`
/// form), token by token, updating the state pool in place.
///
/// * `q`, `k`: `[B, T, H, K]`; `v`: `[B, T, HV, V]`; `g` (log decay), `beta`:
///   `[B, T, HV]` (`beta` None: ones). HV must be a multiple of H; value head
///   hv reads key head `hv / (HV / H)`. f32/f16/bf16, any strides with the
///   head dims contiguous.
/// * `scale`: None = `K^-0.5`. `use_qk_l2norm_in_kernel`: l2-normalise q, k (eps 1e-6).
/// * `initial_state`: the fp32 state pool `[slots, HV, V, K]` (the K-first
///   layout is the permuted view of a `[slots, HV, K, V]` tensor), updated in place.
/// * `cu_seqlens`: `[N + 1]` token offsets with B = 1, else N = B sequences of T.
/// * `ssm_state_indices`: None (sequence n uses slot n); `[N]` (read and
///   written in place); or `[N, T]`: the state is read from column
///   `num_accepted_tokens[n] - 1` (0 without it) and the state after token t
///   is stored at column t (per-token snapshots for spec decode). A negative
///   read slot is padding: the sequence is skipped and its outputs are
///   zeroed; a negative column-t slot skips that snapshot only.
/// * `o`: `[B, T, HV, V]` with v's dtype; tokens outside every sequence are untouched.
///
/// Accumulation and state in fp32; against the fp64 recurrence the output
/// error is a few fp32 ulps per token, growing slowly with T (tests:
/// rmse/rms <= 1e-5 and 2e-5 absolute for fp32, one output rounding on top for
/// bf16/f16).
///
/// ```
/// use xpu_ops::{fused_recurrent_gated_delta_rule, TensorView, TensorViewMut};
/// let (h, k, v) = (1, 4, 2);
/// let q = [0.5f32; 4];
/// let kk = [0.5f32; 4]; // unit norm
/// let vv = [1.0f32, 2.0];
/// let g = [0.0f32]; // no decay
/// let mut pool = vec![0f32; 2 * v * k];
/// let mut o = [0f32; 2];
/// fused_recurrent_gated_delta_rule(
///     &TensorView::new(&q, &[1, 1, h, k])?, &TensorView::new(&kk, &[1, 1, h, k])?,
///     &TensorView::new(&vv, &[1, 1, h, v])?, &TensorView::new(&g, &[1, 1, h])?,
///     None, Some(1.0),
///     &mut TensorViewMut::new(&mut pool, &[2, h, v, k])?,
///     None, Some(&TensorView::new(&[1i32], &[1])?), None, false,
///     &mut TensorViewMut::new(&mut o, &[1, 1, h, v])?,
/// )?;
/// assert_eq!(o, [1.0, 2.0]); // S = v k^T, o = S q = v (k . q)
/// assert_eq!(pool[8..], [0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]); // slot 1
/// # Ok::<(), xpu_ops::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn fused_recurrent_gated_delta_rule(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    g: &TensorView,
    beta: Option<&TensorView>,
    scale: Option<f32>,
    initial_state: &mut TensorViewMut,
    cu_seqlens: Option<&TensorView>,
    ssm_state_indices: Option<&TensorView>,
    num_accepted_tokens: Option<&TensorView>,
    use_qk_l2norm_in_kernel: bool,
    o: &mut TensorViewMut,
) -> Result<()> {
    let _span = trace::op(
        "fused_recurrent_gated_delta_rule",
        &[
            ("q", q.layout()),
            ("v", v.layout()),
            ("initial_state", initial_state.layout()),
        ],
    );
    let d = check_gdn_inputs(q, k, v, g, beta, cu_seqlens, o.layout(), o.as_ptr())?;
    let st = initial_state.layout().clone();
    let slots = check_state_pool(&st, "initial_state", &d)?;
    if crate::ops::conv::overlaps((o.as_ptr(), o.layout()), (initial_state.as_ptr(), &st)) {
        bail!(Aliasing, "`o` overlaps `initial_state`");
    }
    let plan = check_slots_plan(ssm_state_indices, num_accepted_tokens, &d, slots, true)?;
    let scale = default_scale(scale, d.k)?;
    let mut args = gdn_args(
        q,
        k,
        v,
        g,
        beta,
        o,
        &d,
        scale,
        use_qk_l2norm_in_kernel,
        cu_seqlens,
    );
    let s = state_layout_args(&st);
    args.state = initial_state.as_mut_ptr().cast();
    (
        args.state_s_slot,
        args.state_s_head,
        args.state_s_v,
        args.state_s_k,
    ) = (s[0], s[1], s[2], s[3]);
    set_indices(&mut args, ssm_state_indices, &plan);
    args.num_accepted_tokens = crate::ops::conv::la_index(num_accepted_tokens);
    let _ = d.batch;
    run_gdn(args, &d, false);
    Ok(())
}

/// Prefill: the chunked gated delta rule (fla `chunk_gated_delta_rule`,
/// chunks of 64 tokens in the WY/UT form), over varlen sequences, with the
/// initial states gathered from the pool by index and the final states
/// scattered back, all inside the op.
///
/// * `q`, `k`, `v`, `g`, `beta`, `scale`, `cu_seqlens`,
///   `use_qk_l2norm_in_kernel`, `o`: as [`fused_recurrent_gated_delta_rule`].
///   Inputs may be bf16/f16 while the state stays fp32.
/// * `initial_state`: the fp32 state pool `[slots, HV, V, K]` (any strides),
///   or None for zero initial states.
/// * `output_final_state`: write each sequence's final state back to its
///   slot (needs `initial_state`).
/// * `ssm_state_indices`: `[N]` slot per sequence (None: slot n); a
///   negative slot is padding: the sequence is skipped, its outputs zeroed.
/// * `has_initial_state`: `[N]` bool/int; false starts that sequence from
///   zeros without reading its slot (None: all true).
///
/// Within a chunk, with `G` the cumulative log decay, `A = strict_tril(beta
/// k k^T exp(G_i - G_j))`, `D = (I + A)^-1 (beta (v - exp(G) k S))` (fla's
/// `U - W S` without forming `W` and `U`), `o = exp(G) q S + tril(q k^T
/// exp(G_i - G_j)) D`, and `S' = exp(G_last) S + (k exp(G_last - G))^T D`:
/// the recurrence, regrouped. `q k^T` and `k k^T` are computed once for the
/// value heads that share a key head. fp32 throughout. Against the fp64 recurrence (tests): rmse/rms <= 1e-5
/// with fp32 inputs; against the recurrent kernel with bf16 inputs and
/// outputs, rmse/rms <= 2e-3 (fla's metric).
///
/// On the `amx` tier with bf16 `q` and `k`, `[k; q] [k; q]^T`, `[k; q] S`,
/// `k^T D` and `P D` run on the AMX tiles: q and k enter raw (exact in bf16;
/// l2norm and `scale` are applied as fp32 row factors to the products), the
/// fp32 operands S and D as a bf16 hi + lo pair (what that drops is below
/// 2^-17 of each element; `P D` takes hi·hi + hi·lo + lo·hi, the dropped
/// lo·lo is below 2^-16 |P||D|), fp32 accumulation; the triangular solve
/// runs in fp32 on its two 32-row diagonal halves, the block between them
/// (`A[32.., ..32] D[..32]`) on the tiles split as `P D`. Measured in the
/// boundary test (bf16, K = V = 64, T up to 200): rmse/rms 5.5e-5 on `o`
/// and 1.3e-6 on the final states
/// against the recurrent kernel (the fp32 avx512 path: 1.2e-5 and 1.3e-7),
/// inside the same bounds (2e-3 on `o`, 1e-5 on states).
///
/// ```
/// use xpu_ops::{chunk_gated_delta_rule, TensorView, TensorViewMut};
/// let (t, k, v) = (3, 4, 2);
/// let q = vec![0.5f32; t * k];
/// let kk = vec![0.5f32; t * k];
/// let vv = vec![1.0f32; t * v];
/// let g = vec![0.0f32; t];
/// let mut pool = vec![0f32; v * k];
/// let mut o = vec![0f32; t * v];
/// chunk_gated_delta_rule(
///     &TensorView::new(&q, &[1, t, 1, k])?, &TensorView::new(&kk, &[1, t, 1, k])?,
///     &TensorView::new(&vv, &[1, t, 1, v])?, &TensorView::new(&g, &[1, t, 1])?,
///     None, Some(1.0),
///     Some(&mut TensorViewMut::new(&mut pool, &[1, 1, v, k])?), true,
///     None, None, None, false,
///     &mut TensorViewMut::new(&mut o, &[1, t, 1, v])?,
/// )?;
/// // beta = 1 with a unit key stores v exactly on the first token.
/// assert!(o.iter().all(|&x| (x - 1.0).abs() < 1e-6));
/// assert!(pool.iter().all(|&x| (x - 0.5).abs() < 1e-6));
/// # Ok::<(), xpu_ops::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn chunk_gated_delta_rule(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    g: &TensorView,
    beta: Option<&TensorView>,
    scale: Option<f32>,
    initial_state: Option<&mut TensorViewMut>,
    output_final_state: bool,
    cu_seqlens: Option<&TensorView>,
    ssm_state_indices: Option<&TensorView>,
    has_initial_state: Option<&TensorView>,
    use_qk_l2norm_in_kernel: bool,
    o: &mut TensorViewMut,
) -> Result<()> {
    let _span = trace::op(
        "chunk_gated_delta_rule",
        &[("q", q.layout()), ("v", v.layout())],
    );
    let d = check_gdn_inputs(q, k, v, g, beta, cu_seqlens, o.layout(), o.as_ptr())?;
    let scale = default_scale(scale, d.k)?;
    let n = d.seqs.len();
    let mut args = gdn_args(
        q,
        k,
        v,
        g,
        beta,
        o,
        &d,
        scale,
        use_qk_l2norm_in_kernel,
        cu_seqlens,
    );
    match initial_state {
        None => {
            if output_final_state || ssm_state_indices.is_some() || has_initial_state.is_some() {
                bail!(
                    InvalidArgument,
                    "output_final_state, ssm_state_indices and has_initial_state need the state pool `initial_state`"
                );
            }
        }
        Some(st) => {
            let layout = st.layout().clone();
            let slots = check_state_pool(&layout, "initial_state", &d)?;
            if crate::ops::conv::overlaps((o.as_ptr(), o.layout()), (st.as_ptr(), &layout)) {
                bail!(Aliasing, "`o` overlaps `initial_state`");
            }
            let plan = check_slots_plan(ssm_state_indices, None, &d, slots, false)?;
            if let Some(h) = has_initial_state {
                crate::ops::conv::vector_of(
                    h,
                    "has_initial_state",
                    n,
                    &[DType::Bool, DType::U8, DType::I32, DType::I64],
                    "one flag per sequence",
                )?;
            }
            let s = state_layout_args(&layout);
            args.state = st.as_mut_ptr().cast();
            (
                args.state_s_slot,
                args.state_s_head,
                args.state_s_v,
                args.state_s_k,
            ) = (s[0], s[1], s[2], s[3]);
            set_indices(&mut args, ssm_state_indices, &plan);
            args.has_initial_state = crate::ops::conv::la_index(has_initial_state);
            args.output_final_state = output_final_state as i32;
        }
    }
    run_gdn(args, &d, true);
    Ok(())
}
