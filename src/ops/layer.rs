//! Layer ops with vLLM's `_custom_ops` semantics: [`rms_norm`],
//! [`fused_add_rms_norm`], [`rotary_embedding`] (NeoX and GPT-J styles,
//! partial rotary), [`silu_and_mul`].
//!
//! Numerics: f32, f16 and bf16 tensors are loaded to f32, computed in f32
//! (sums of squares accumulate in f32) and rounded once, to nearest even, when
//! stored. vLLM's CUDA kernels round an extra time in two places (rms_norm
//! rounds `x * rsqrt(...)` to the dtype before multiplying by the weight;
//! silu_and_mul rounds `silu(x)` before multiplying by the gate); these ops
//! keep the product in f32 and round once, so some elements differ from
//! vLLM's by about one output ulp (ours round the f32 result once).
//! vLLM's `fused_add_rms_norm` kernel normalizes the rounded residual, and so
//! does this one. Each op's tolerance against [`crate::reference::layer`] is
//! in its doc comment (and next to its test in `tests/layer.rs`).
//!
//! Every op validates all its arguments before it writes anything.

use crate::dtype::DType;
use crate::error::{bail, Result};
use crate::ops::check;
use crate::platform;
use crate::sys;
use crate::tensor::{Layout, TensorView, TensorViewMut};
use crate::threading::{grid, Shared};
use crate::trace;

const FLOAT_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Aim for about this many bytes of work per grid block, so decode-sized
/// calls stay on the calling thread.
const BLOCK_BYTES: usize = 64 * 1024;

/// Leading dims `0..lead` of `t` collapsed into one: (count, element stride).
/// Fails when they do not form one arithmetic progression (a view a flat
/// index cannot address). Size-1 dims are ignored; an empty tensor has
/// stride 0.
fn collapse(t: &Layout, name: &str, lead: usize) -> Result<(usize, usize)> {
    let count: usize = t.shape[..lead].iter().product();
    if count == 0 {
        return Ok((0, 0));
    }
    let mut stride = None;
    let mut expect = 0;
    for (&n, &s) in t.shape[..lead].iter().zip(&t.strides[..lead]).rev() {
        if n == 1 {
            continue;
        }
        if stride.is_some() && s != expect {
            bail!(
                InvalidStride,
                "`{name}`: dims 0..{lead} of shape {:?} with strides {:?} cannot be flattened into one token dim",
                t.shape,
                t.strides
            );
        }
        stride.get_or_insert(s);
        expect = s * n;
    }
    Ok((count, stride.unwrap_or(0)))
}

/// True when no two indices of `(shape, strides)` reach the same element.
/// Sufficient test: sorted by stride, each dim steps past everything the
/// smaller dims reach.
fn injective(shape: &[usize], strides: &[usize]) -> bool {
    let mut dims: Vec<(usize, usize)> = shape
        .iter()
        .zip(strides)
        .filter(|(&n, _)| n > 1)
        .map(|(&n, &s)| (s, n))
        .collect();
    if shape.contains(&0) {
        return true;
    }
    dims.sort_unstable();
    let mut reach = 1;
    for (s, n) in dims {
        if s < reach {
            return false;
        }
        reach += s * (n - 1);
    }
    true
}

/// An output must not reach one element through two indices.
fn check_injective(name: &str, shape: &[usize], strides: &[usize]) -> Result<()> {
    if !injective(shape, strides) {
        bail!(
            InvalidStride,
            "`{name}` is written in place but shape {shape:?} with strides {strides:?} reaches some elements twice"
        );
    }
    Ok(())
}

/// The bytes a set of rows touches: `rows` rows of `len` bytes, `stride` bytes apart.
#[derive(Clone, Copy)]
struct RowSet {
    start: usize,
    rows: usize,
    stride: usize,
    len: usize,
}

impl RowSet {
    fn new(ptr: *const u8, rows: usize, stride_elems: usize, len_elems: usize, es: usize) -> Self {
        RowSet {
            start: ptr as usize,
            rows,
            stride: stride_elems * es,
            len: len_elems * es,
        }
    }

    fn is_empty(&self) -> bool {
        self.rows == 0 || self.len == 0
    }

    fn end(&self) -> usize {
        self.start + (self.rows - 1) * self.stride + self.len
    }

    /// True when the two sets share no byte. Interleaved row sets with the
    /// same stride (q and k split from one qkv buffer) are told apart by
    /// their offsets within a stride; anything else must not overlap at all.
    fn disjoint(&self, o: &RowSet) -> bool {
        if self.is_empty() || o.is_empty() {
            return true;
        }
        if self.end() <= o.start || o.end() <= self.start {
            return true;
        }
        let stride = match (self.rows > 1, o.rows > 1) {
            (true, true) if self.stride == o.stride => self.stride,
            (true, false) => self.stride,
            (false, true) => o.stride,
            _ => return false,
        };
        if stride == 0 || self.len > stride || o.len > stride {
            return false;
        }
        // On a circle of circumference `stride`: self at [0, len), o at [d, d + o.len).
        let d = (o.start as i128 - self.start as i128).rem_euclid(stride as i128) as usize;
        d >= self.len && d + o.len <= stride
    }
}

fn check_disjoint(a: RowSet, an: &str, b: RowSet, bn: &str) -> Result<()> {
    if !a.disjoint(&b) {
        bail!(Aliasing, "`{an}` and `{bn}` overlap in memory");
    }
    Ok(())
}

/// A `[..., n]` float tensor as rows: (rows, row stride, n).
fn rows_of(t: &Layout, name: &str) -> Result<(usize, usize, usize)> {
    if t.ndim() == 0 {
        bail!(
            ShapeMismatch,
            "`{name}` must be [..., hidden_size] (rank >= 1), got a scalar"
        );
    }
    check::inner_contiguous(t, name)?;
    let n = t.shape[t.ndim() - 1];
    let (rows, stride) = collapse(t, name, t.ndim() - 1)?;
    Ok((rows, if rows <= 1 { n } else { stride }, n))
}

fn check_epsilon(epsilon: f64) -> Result<f32> {
    let e = epsilon as f32;
    if !epsilon.is_finite() || epsilon < 0.0 || !e.is_finite() {
        bail!(
            InvalidValue,
            "epsilon = {epsilon} must be finite, non-negative and representable in f32"
        );
    }
    Ok(e)
}

/// `weight`: `[hidden_size]`, unit stride, f32/f16/bf16.
fn check_weight(weight: &TensorView, hidden: usize) -> Result<()> {
    let w = weight.layout();
    check::rank(w, "weight", 1, "[hidden_size]")?;
    check::dtype_in(w, "weight", &FLOAT_DTYPES)?;
    check::dim(w, "weight", 0, hidden, "hidden_size of `input`")?;
    check::inner_contiguous(w, "weight")?;
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

fn run_rms_norm(args: sys::xk_rms_norm_args, rows: usize) {
    let kernel = platform::kernels()
        .rms_norm
        .expect("every kernel table has rms_norm");
    let row_bytes = (args.hidden_size as usize * 4).max(1);
    let args = Shared(args);
    grid(rows, (BLOCK_BYTES / row_bytes).max(1), |r| {
        // SAFETY: the launcher validated pointers, shapes, strides and
        // aliasing; each row is written by exactly one block.
        unsafe { kernel(args.get(), r.start as i64, r.end as i64) }
    });
}

/// RMS normalization of each row of `input` (the last dim), as vLLM's
/// `rms_norm`: `out = input / sqrt(mean(input²) + epsilon) * weight`.
///
/// * `out`: same shape and dtype as `input`; written.
/// * `input`: `[..., hidden_size]`, f32/f16/bf16. The last dim must be
///   contiguous; the leading dims may have any stride that flattens them into
///   one row stride (vLLM honours `input.stride(-2)`; `out` may be strided the
///   same way). `out` may be `input` itself (same memory and layout), which
///   normalizes in place; any other overlap is refused.
/// * `weight`: `[hidden_size]`, contiguous, f32/f16/bf16 (need not match
///   `input`).
/// * `epsilon`: finite, ≥ 0; used as an f32 as in vLLM.
///
/// hidden_size 0 and zero rows are valid and write nothing.
///
/// Tolerance against [`crate::reference::layer::rms_norm`] (fp64), per
/// element: `|out − ref| ≤ atol + rtol·|ref|` with (rtol, atol) =
/// f32 (2⁻¹⁹, 1e-30), f16 (1.25·2⁻¹⁰, 2⁻²⁴), bf16 (1.25·2⁻⁷, 1e-30):
/// one rounding of the output plus the f32 sum of squares. Measured on
/// hidden 2048 and 16384: f32 within 5.6e-7 relative, f16/bf16 within one
/// ulp of the correctly rounded value (a few elements per thousand differ).
///
/// ```
/// use xpu_ops::{rms_norm, TensorView, TensorViewMut};
/// let input = [3.0f32, 4.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
/// let weight = [1.0f32, 2.0, 1.0, 1.0];
/// let mut out = [0f32; 8];
/// rms_norm(
///     &mut TensorViewMut::new(&mut out, &[2, 4])?,
///     &TensorView::new(&input, &[2, 4])?,
///     &TensorView::new(&weight, &[4])?,
///     0.0,
/// )?;
/// // Row 0: rms = sqrt(25 / 4) = 2.5.
/// assert_eq!(&out[..4], &[1.2, 3.2, 0.0, 0.0]);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn rms_norm(
    out: &mut TensorViewMut,
    input: &TensorView,
    weight: &TensorView,
    epsilon: f64,
) -> Result<()> {
    let _span = trace::op(
        "rms_norm",
        &[("input", input.layout()), ("weight", weight.layout())],
    );
    let (o, x) = (out.layout().clone(), input.layout());
    check::on_cpu(&[("out", &o), ("input", x), ("weight", weight.layout())])?;
    check::dtype_in(x, "input", &FLOAT_DTYPES)?;
    check::same_dtype(x, "input", &o, "out")?;
    same_shape(x, "input", &o, "out")?;
    let (rows, x_stride, hidden) = rows_of(x, "input")?;
    let (_, o_stride, _) = rows_of(&o, "out")?;
    check_weight(weight, hidden)?;
    let eps = check_epsilon(epsilon)?;
    check_injective("out", &[rows, hidden], &[o_stride, 1])?;
    let es = x.dtype.size();
    let out_rows = RowSet::new(out.as_ptr(), rows, o_stride, hidden, es);
    let in_rows = RowSet::new(input.as_ptr(), rows, x_stride, hidden, es);
    let in_place = out.as_ptr() == input.as_ptr() && (rows <= 1 || o_stride == x_stride);
    if !in_place {
        check_disjoint(out_rows, "out", in_rows, "input")?;
    }
    let w_rows = RowSet::new(weight.as_ptr(), 1, hidden, hidden, weight.dtype().size());
    check_disjoint(out_rows, "out", w_rows, "weight")?;
    if rows == 0 || hidden == 0 {
        return Ok(());
    }
    let args = sys::xk_rms_norm_args {
        out: out.as_mut_ptr().cast(),
        input: input.as_ptr().cast(),
        residual: std::ptr::null_mut(),
        weight: weight.as_ptr().cast(),
        out_stride: o_stride as i64,
        input_stride: x_stride as i64,
        residual_stride: 0,
        hidden_size: hidden as i64,
        dtype: x.dtype.xk(),
        weight_dtype: weight.dtype().xk(),
        epsilon: eps,
    };
    run_rms_norm(args, rows);
    Ok(())
}

/// vLLM's `fused_add_rms_norm`, in place on both tensors:
/// `residual = input + residual` (rounded to the dtype), then
/// `input = rms_norm(residual, weight, epsilon)`. As in vLLM's kernel, the
/// norm reads the rounded residual, so the new `input` equals
/// [`rms_norm`] of the new `residual` bit for bit.
///
/// * `input`, `residual`: `[..., hidden_size]`, same shape and dtype
///   (f32/f16/bf16), last dim contiguous, leading dims flattenable to one row
///   stride each (vLLM honours `input`'s row stride). They must not overlap.
/// * `weight`, `epsilon`: as [`rms_norm`].
///
/// Tolerance: `residual` is exact (the f32 sum rounded once, identical to the
/// reference); `input` as [`rms_norm`].
///
/// ```
/// use xpu_ops::{fused_add_rms_norm, TensorView, TensorViewMut};
/// let mut x = [1.0f32, 2.0, 3.0, 4.0];
/// let mut residual = [2.0f32, 2.0, 1.0, 0.0];
/// fused_add_rms_norm(
///     &mut TensorViewMut::new(&mut x, &[1, 4])?,
///     &mut TensorViewMut::new(&mut residual, &[1, 4])?,
///     &TensorView::new(&[1.0f32; 4], &[4])?,
///     0.0,
/// )?;
/// assert_eq!(residual, [3.0, 4.0, 4.0, 4.0]);
/// let rms = (57.0f32 / 4.0).sqrt();
/// assert!((x[0] - 3.0 / rms).abs() < 1e-6);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn fused_add_rms_norm(
    input: &mut TensorViewMut,
    residual: &mut TensorViewMut,
    weight: &TensorView,
    epsilon: f64,
) -> Result<()> {
    let _span = trace::op(
        "fused_add_rms_norm",
        &[("input", input.layout()), ("weight", weight.layout())],
    );
    let (x, r) = (input.layout().clone(), residual.layout().clone());
    check::on_cpu(&[("input", &x), ("residual", &r), ("weight", weight.layout())])?;
    check::dtype_in(&x, "input", &FLOAT_DTYPES)?;
    check::same_dtype(&x, "input", &r, "residual")?;
    same_shape(&x, "input", &r, "residual")?;
    let (rows, x_stride, hidden) = rows_of(&x, "input")?;
    let (_, r_stride, _) = rows_of(&r, "residual")?;
    check_weight(weight, hidden)?;
    let eps = check_epsilon(epsilon)?;
    check_injective("input", &[rows, hidden], &[x_stride, 1])?;
    check_injective("residual", &[rows, hidden], &[r_stride, 1])?;
    let es = x.dtype.size();
    let x_rows = RowSet::new(input.as_ptr(), rows, x_stride, hidden, es);
    let r_rows = RowSet::new(residual.as_ptr(), rows, r_stride, hidden, es);
    check_disjoint(x_rows, "input", r_rows, "residual")?;
    let w_rows = RowSet::new(weight.as_ptr(), 1, hidden, hidden, weight.dtype().size());
    check_disjoint(x_rows, "input", w_rows, "weight")?;
    check_disjoint(r_rows, "residual", w_rows, "weight")?;
    if rows == 0 || hidden == 0 {
        return Ok(());
    }
    let x_ptr = input.as_mut_ptr();
    let args = sys::xk_rms_norm_args {
        out: x_ptr.cast(),
        input: x_ptr as *const _,
        residual: residual.as_mut_ptr().cast(),
        weight: weight.as_ptr().cast(),
        out_stride: x_stride as i64,
        input_stride: x_stride as i64,
        residual_stride: r_stride as i64,
        hidden_size: hidden as i64,
        dtype: x.dtype.xk(),
        weight_dtype: weight.dtype().xk(),
        epsilon: eps,
    };
    run_rms_norm(args, rows);
    Ok(())
}

/// A query or key tensor of [`rotary_embedding`], validated.
struct Heads {
    heads: usize,
    stride_token: usize,
    stride_head: usize,
}

/// `t` is `[*positions.shape, num_heads * head_size]` (flat) or
/// `[*positions.shape, num_heads, head_size]`.
fn check_heads(t: &Layout, name: &str, pos_shape: &[usize], head_size: usize) -> Result<Heads> {
    let p = pos_shape.len();
    if t.ndim() != p + 1 && t.ndim() != p + 2 {
        bail!(
            ShapeMismatch,
            "`{name}` must be [{}num_heads * head_size] or [{}num_heads, head_size] for positions of shape {pos_shape:?}, got shape {:?}",
            "tokens.., ",
            "tokens.., ",
            t.shape
        );
    }
    if t.shape[..p] != *pos_shape {
        bail!(
            ShapeMismatch,
            "`{name}` has token dims {:?} but positions has shape {pos_shape:?}",
            &t.shape[..p]
        );
    }
    check::inner_contiguous(t, name)?;
    let (tokens, stride_token) = collapse(t, name, p)?;
    let (heads, stride_head) = if t.ndim() == p + 1 {
        let width = t.shape[p];
        if width % head_size != 0 {
            bail!(
                ShapeMismatch,
                "`{name}` last dim {width} is not a multiple of head_size {head_size}"
            );
        }
        (width / head_size, head_size)
    } else {
        if t.shape[p + 1] != head_size {
            bail!(
                ShapeMismatch,
                "`{name}` last dim is {} but head_size is {head_size}",
                t.shape[p + 1]
            );
        }
        (t.shape[p], t.strides[p])
    };
    check_injective(
        name,
        &[tokens, heads, head_size],
        &[stride_token, stride_head, 1],
    )?;
    Ok(Heads {
        heads,
        stride_token,
        stride_head,
    })
}

fn head_rows(ptr: *const u8, tokens: usize, h: &Heads, head_size: usize, es: usize) -> RowSet {
    let len = if h.heads == 0 {
        0
    } else {
        (h.heads - 1) * h.stride_head + head_size
    };
    RowSet::new(ptr, tokens, h.stride_token, len, es)
}

/// vLLM's `rotary_embedding`: rotates the first `rot_dim` dims of every head
/// of `query` (and `key`) in place by the angle of the token's position,
/// where `rot_dim = cos_sin_cache.shape[1]` (partial rotary when
/// `rot_dim < head_size`; later dims are left alone).
///
/// Row `p` of `cos_sin_cache` holds `cos` in `[0, rot_dim/2)` and `sin` in
/// `[rot_dim/2, rot_dim)`. Pair `i` of a head (`x`, `y`) becomes
/// `(x·cos_i − y·sin_i, y·cos_i + x·sin_i)`; the pair is `(i, i + rot_dim/2)`
/// when `is_neox`, else `(2i, 2i + 1)` (GPT-J).
///
/// * `positions`: int64 or int32, `[num_tokens]` or `[batch, seq_len]`; every
///   value in `0..max_position` (else `IndexOutOfRange`).
/// * `query`: `[*positions.shape, num_heads * head_size]` or
///   `[*positions.shape, num_heads, head_size]`, f32/f16/bf16, head_size
///   contiguous, token dims flattenable to one stride (any token and head
///   strides otherwise: q and k split from one qkv buffer work).
/// * `key`: `None`, or like `query` with `num_kv_heads` dividing `num_heads`;
///   same dtype as `query`, not overlapping it.
/// * `cos_sin_cache`: `[max_position, rot_dim]`, f32/f16/bf16 (need not match
///   `query`), rot_dim even and ≤ head_size, last dim contiguous.
///
/// Tolerance against [`crate::reference::layer::rotary_embedding`], per
/// output of a pair with magnitude `m = hypot(x, y)`:
/// `|out − ref| ≤ rtol·|ref| + 2⁻²¹·m + atol` with (rtol, atol) = f32 (2⁻²², 0),
/// f16 (1.25·2⁻¹⁰, 2⁻²⁴), bf16 (1.25·2⁻⁷, 0).
///
/// ```
/// use xpu_ops::{rotary_embedding, TensorView, TensorViewMut};
/// // One token at position 1, one head of size 4, full rotary (rot_dim 4).
/// let (c, s) = (0.6f32, 0.8f32);
/// let cache = [1.0f32, 1.0, 0.0, 0.0, c, c, s, s]; // rows: [cos, cos, sin, sin]
/// let mut q = [1.0f32, 0.0, 0.0, 1.0];
/// rotary_embedding(
///     &TensorView::new(&[1i64], &[1])?,
///     &mut TensorViewMut::new(&mut q, &[1, 4])?,
///     None,
///     4,
///     &TensorView::new(&cache, &[2, 4])?,
///     true, // NeoX: pairs (0, 2) and (1, 3)
/// )?;
/// assert_eq!(q, [c, -s, s, c]);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn rotary_embedding(
    positions: &TensorView,
    query: &mut TensorViewMut,
    key: Option<&mut TensorViewMut>,
    head_size: usize,
    cos_sin_cache: &TensorView,
    is_neox: bool,
) -> Result<()> {
    let _span = trace::op(
        "rotary_embedding",
        &[
            ("positions", positions.layout()),
            ("query", query.layout()),
            ("cos_sin_cache", cos_sin_cache.layout()),
        ],
    );
    let q = query.layout().clone();
    let (p, c) = (positions.layout(), cos_sin_cache.layout());
    check::on_cpu(&[("positions", p), ("query", &q), ("cos_sin_cache", c)])?;
    if let Some(k) = &key {
        check::on_cpu(&[("key", k.layout())])?;
    }
    if p.ndim() != 1 && p.ndim() != 2 {
        bail!(
            ShapeMismatch,
            "`positions` must be [num_tokens] or [batch_size, seq_len], got shape {:?}",
            p.shape
        );
    }
    check::dtype_in(p, "positions", &[DType::I32, DType::I64])?;
    check::dtype_in(&q, "query", &FLOAT_DTYPES)?;
    if head_size == 0 {
        bail!(InvalidArgument, "head_size must be positive, got 0");
    }
    check::rank(c, "cos_sin_cache", 2, "[max_position, rot_dim]")?;
    check::dtype_in(c, "cos_sin_cache", &FLOAT_DTYPES)?;
    check::inner_contiguous(c, "cos_sin_cache")?;
    let (max_position, rot_dim) = (c.shape[0], c.shape[1]);
    if rot_dim % 2 != 0 {
        bail!(
            ShapeMismatch,
            "`cos_sin_cache` dim 1 (rot_dim) is {rot_dim}; it must be even (cos half, sin half)"
        );
    }
    if rot_dim > head_size {
        bail!(
            ShapeMismatch,
            "`cos_sin_cache` dim 1 (rot_dim) is {rot_dim}, larger than head_size {head_size}"
        );
    }
    let (tokens, p_stride) = collapse(p, "positions", p.ndim())?;
    let qh = check_heads(&q, "query", &p.shape, head_size)?;
    let es = q.dtype.size();
    let q_rows = head_rows(query.as_ptr(), tokens, &qh, head_size, es);
    let kh = match &key {
        None => None,
        Some(k) => {
            let kl = k.layout();
            check::same_dtype(&q, "query", kl, "key")?;
            let kh = check_heads(kl, "key", &p.shape, head_size)?;
            if (kh.heads == 0 && qh.heads != 0) || (kh.heads != 0 && qh.heads % kh.heads != 0) {
                bail!(
                    ShapeMismatch,
                    "num_heads {} of `query` is not a multiple of num_kv_heads {} of `key`",
                    qh.heads,
                    kh.heads
                );
            }
            let k_rows = head_rows(k.as_ptr(), tokens, &kh, head_size, es);
            check_disjoint(q_rows, "query", k_rows, "key")?;
            Some((kh, k_rows))
        }
    };
    // The read-only inputs must not sit under the outputs.
    let cache_rows = RowSet::new(
        cos_sin_cache.as_ptr(),
        max_position,
        if max_position <= 1 {
            rot_dim
        } else {
            c.strides[0]
        },
        rot_dim,
        c.dtype.size(),
    );
    let pos_rows = RowSet::new(positions.as_ptr(), 1, 0, p.span(), p.dtype.size());
    for (rows, name) in std::iter::once((q_rows, "query")).chain(kh.as_ref().map(|k| (k.1, "key")))
    {
        check_disjoint(rows, name, cache_rows, "cos_sin_cache")?;
        check_disjoint(rows, name, pos_rows, "positions")?;
    }
    for (i, pos) in positions_values(positions).enumerate() {
        if pos < 0 || pos >= max_position as i64 {
            bail!(
                IndexOutOfRange,
                "positions[{i}] = {pos} is outside the cos_sin_cache (max_position {max_position})"
            );
        }
    }
    if tokens == 0 || rot_dim == 0 {
        return Ok(());
    }
    let (key_ptr, kh) = match (key, kh) {
        (Some(k), Some((kh, _))) => (k.as_mut_ptr(), kh),
        _ => (
            std::ptr::null_mut(),
            Heads {
                heads: 0,
                stride_token: 0,
                stride_head: 0,
            },
        ),
    };
    let args = sys::xk_rotary_args {
        positions: positions.as_ptr().cast(),
        positions_stride: p_stride as i64,
        positions_is_i64: (p.dtype == DType::I64) as i32,
        is_neox: is_neox as i32,
        query: query.as_mut_ptr().cast(),
        query_stride_token: qh.stride_token as i64,
        query_stride_head: qh.stride_head as i64,
        num_heads: qh.heads as i64,
        key: key_ptr.cast(),
        key_stride_token: kh.stride_token as i64,
        key_stride_head: kh.stride_head as i64,
        num_kv_heads: kh.heads as i64,
        dtype: q.dtype.xk(),
        cache_dtype: c.dtype.xk(),
        cos_sin_cache: cos_sin_cache.as_ptr().cast(),
        cache_stride: c.strides[0] as i64,
        rot_dim: rot_dim as i64,
    };
    let kernel = platform::kernels()
        .rotary_embedding
        .expect("every kernel table has rotary_embedding");
    let token_bytes = ((qh.heads + kh.heads) * rot_dim * es).max(1);
    let args = Shared(args);
    grid(tokens, (BLOCK_BYTES / token_bytes).max(1), |r| {
        // SAFETY: positions are in range, views are injective and q/k disjoint;
        // each token's rows are written by exactly one block.
        unsafe { kernel(args.get(), r.start as i64, r.end as i64) }
    });
    Ok(())
}

/// The values of a rank-1 or rank-2 integer tensor, row-major.
fn positions_values<'t>(t: &'t TensorView) -> impl Iterator<Item = i64> + 't {
    let shape = t.shape().to_vec();
    let (rows, cols) = if shape.len() == 1 {
        (1, shape[0])
    } else {
        (shape[0], shape[1])
    };
    (0..rows * cols).map(move |i| {
        if shape.len() == 1 {
            t.get_i64(&[i])
        } else {
            t.get_i64(&[i / cols, i % cols])
        }
    })
}

/// vLLM's `silu_and_mul`: with `input = [x, y]` split in halves along the
/// last dim, `out = silu(x) · y` where `silu(x) = x / (1 + e^(−x))`.
///
/// * `input`: `[..., 2·d]`, f32/f16/bf16, last dim contiguous and even, leading
///   dims flattenable to one row stride.
/// * `out`: `[..., d]`, same leading shape and dtype; must not overlap `input`.
///
/// `e^(−x)` is a polynomial exp (at most 2 f32 ulp, see the kernel); the
/// tolerance against [`crate::reference::layer::silu_and_mul`] (fp64) is
/// `|out − ref| ≤ atol + rtol·|ref|` with (rtol, atol) = f32 (2⁻²⁰, 1e-37),
/// f16 (1.25·2⁻¹⁰, 2⁻²⁴), bf16 (1.25·2⁻⁷, 1e-37).
///
/// ```
/// use xpu_ops::{silu_and_mul, TensorView, TensorViewMut};
/// let input = [0.0f32, 2.0, 5.0, 3.0]; // x = [0, 2], y = [5, 3]
/// let mut out = [1f32; 2];
/// silu_and_mul(
///     &mut TensorViewMut::new(&mut out, &[1, 2])?,
///     &TensorView::new(&input, &[1, 4])?,
/// )?;
/// let silu2 = 2.0 / (1.0 + (-2.0f32).exp());
/// assert_eq!(out[0], 0.0);
/// assert!((out[1] - 3.0 * silu2).abs() < 1e-6);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn silu_and_mul(out: &mut TensorViewMut, input: &TensorView) -> Result<()> {
    let _span = trace::op("silu_and_mul", &[("input", input.layout())]);
    let (o, x) = (out.layout().clone(), input.layout());
    check::on_cpu(&[("out", &o), ("input", x)])?;
    check::dtype_in(x, "input", &FLOAT_DTYPES)?;
    check::same_dtype(x, "input", &o, "out")?;
    let (rows, x_stride, width) = rows_of(x, "input")?;
    if width % 2 != 0 {
        bail!(
            ShapeMismatch,
            "`input` last dim is {width}; it must be even (gate half, up half)"
        );
    }
    let d = width / 2;
    let mut want = x.shape.clone();
    *want.last_mut().expect("rank >= 1") = d;
    if o.shape != want {
        bail!(
            ShapeMismatch,
            "`out` must have shape {want:?} (input {:?} with the last dim halved), got {:?}",
            x.shape,
            o.shape
        );
    }
    let (_, o_stride, _) = rows_of(&o, "out")?;
    check_injective("out", &[rows, d], &[o_stride, 1])?;
    let es = x.dtype.size();
    check_disjoint(
        RowSet::new(out.as_ptr(), rows, o_stride, d, es),
        "out",
        RowSet::new(input.as_ptr(), rows, x_stride, width, es),
        "input",
    )?;
    if rows == 0 || d == 0 {
        return Ok(());
    }
    let args = sys::xk_silu_and_mul_args {
        out: out.as_mut_ptr().cast(),
        input: input.as_ptr().cast(),
        out_stride: o_stride as i64,
        input_stride: x_stride as i64,
        d: d as i64,
        dtype: x.dtype.xk(),
    };
    let kernel = platform::kernels()
        .silu_and_mul
        .expect("every kernel table has silu_and_mul");
    let args = Shared(args);
    grid(rows, (BLOCK_BYTES / (d * 12)).max(1), |r| {
        // SAFETY: validated shapes and strides; out rows are disjoint from
        // each other and from input; each row is written by one block.
        unsafe { kernel(args.get(), r.start as i64, r.end as i64) }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_flattens_progressions_only() {
        let l = Layout::contiguous(DType::F32, &[2, 3, 4]);
        assert_eq!(collapse(&l, "t", 2).unwrap(), (6, 4));
        let gap = Layout {
            strides: vec![20, 4, 1],
            ..l.clone()
        };
        assert!(collapse(&gap, "t", 2).is_err());
        let padded_rows = Layout {
            strides: vec![30, 10, 1],
            ..l.clone()
        };
        assert_eq!(collapse(&padded_rows, "t", 2).unwrap(), (6, 10));
        let ones = Layout {
            shape: vec![1, 3, 1, 4],
            strides: vec![999, 7, 5, 1],
            ..l
        };
        assert_eq!(collapse(&ones, "t", 3).unwrap(), (3, 7));
    }

    #[test]
    fn injective_detects_overlap() {
        assert!(injective(&[4, 8], &[8, 1]));
        assert!(injective(&[4, 8], &[100, 1]));
        assert!(!injective(&[4, 8], &[4, 1]));
        assert!(!injective(&[4, 8], &[0, 1]));
        assert!(injective(&[1, 8], &[0, 1]));
        assert!(injective(&[0, 8], &[0, 1]));
        // heads interleaved inside tokens
        assert!(injective(&[3, 2, 4], &[16, 4, 1]));
        assert!(!injective(&[3, 2, 4], &[8, 3, 1]));
    }

    #[test]
    fn rowsets_split_from_one_buffer_are_disjoint() {
        // A [T, 48] qkv buffer of f32: q = cols 0..32, k = cols 32..40, v = 40..48.
        let q = RowSet::new(1000 as *const u8, 5, 48, 32, 4);
        let k = RowSet::new((1000 + 32 * 4) as *const u8, 5, 48, 8, 4);
        assert!(q.disjoint(&k) && k.disjoint(&q));
        let k_bad = RowSet::new((1000 + 30 * 4) as *const u8, 5, 48, 8, 4);
        assert!(!q.disjoint(&k_bad) && !k_bad.disjoint(&q));
        let single = RowSet::new((1000 + 48 * 4 * 2 + 40 * 4) as *const u8, 1, 0, 8, 4);
        assert!(q.disjoint(&single));
        let single_bad = RowSet::new((1000 + 48 * 4 * 2 + 4) as *const u8, 1, 0, 8, 4);
        assert!(!q.disjoint(&single_bad));
        let far = RowSet::new(100_000 as *const u8, 5, 48, 32, 4);
        assert!(q.disjoint(&far));
    }
}
