//! Causal depthwise conv1d with a state cache, vLLM semantics
//! (`model_executor/layers/mamba/ops/causal_conv1d.py`): [`causal_conv1d_fn`]
//! for prefill and [`causal_conv1d_update`] for decode and speculative decode.
//!
//! Numerics: each output is `bias + sum_j weight[j] * u[j]` accumulated in fp32
//! (FMA, in window order) from inputs read at their own precision, then silu,
//! then one rounding to the output dtype. Against the fp64 reference
//! ([`crate::reference::conv`]) the error is a few fp32 ulps of
//! `|bias| + sum |weight * u|` before the final rounding (tests: 1e-5 relative
//! to that magnitude, plus one ulp of the output dtype). Two SIMD details
//! stay inside that bound: for bf16 outputs with silu the fp32 weights and bias
//! are stored times -log2(e) (the sum is silu's exponent directly) and silu is
//! evaluated to 1.4e-4 relative on AVX-512 and 7.5e-5 on AVX2 (under 1/28 of a
//! bf16 ulp; the rounded result is within one ulp and differs from the
//! correctly rounded one for 0.5% (AVX-512) and 0.33% (AVX2, 8M sums with
//! |x| <= 30) of the outputs), which makes bf16 prefill about a third
//! (AVX-512) and ~15% (AVX2) faster than an fp32-exact silu; and on AVX-512
//! bf16 rounding returns zero for fp32 results below 2^-126. Every output is computed with the same
//! operations whatever the thread count, tiling or code path. State
//! write-back copies inputs, so the cache is bit-identical to the reference.

use crate::dtype::DType;
use crate::error::{bail, Result};
use crate::ops::check;
use crate::platform;
use crate::sys;
use crate::tensor::{Layout, TensorView, TensorViewMut};
use crate::threading::{grid, Shared};
use crate::trace;

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const INDEX: [DType; 2] = [DType::I32, DType::I64];
const FLAGS: [DType; 4] = [DType::Bool, DType::U8, DType::I32, DType::I64];

/// The activation argument: `None`, `"none"`, `"silu"` or `"swish"`.
pub(crate) fn parse_activation(activation: Option<&str>) -> Result<bool> {
    match activation {
        None | Some("none") => Ok(false),
        Some("silu") | Some("swish") => Ok(true),
        Some(other) => bail!(
            InvalidArgument,
            "activation {other:?} is not supported; expected None, \"silu\" or \"swish\""
        ),
    }
}

/// An index vector for a kernel, or the absent marker.
pub(crate) fn la_index(t: Option<&TensorView>) -> sys::xk_la_index {
    match t {
        None => sys::xk_la_index {
            data: std::ptr::null(),
            stride: 0,
            dtype: 0,
        },
        Some(t) => sys::xk_la_index {
            data: t.as_ptr().cast(),
            stride: t.strides()[0] as i64,
            dtype: match t.dtype() {
                DType::I32 => sys::xk_la_index_dtype_XK_LA_I32,
                DType::I64 => sys::xk_la_index_dtype_XK_LA_I64,
                _ => sys::xk_la_index_dtype_XK_LA_BOOL,
            } as i32,
        },
    }
}

/// A rank-1 tensor of `len` elements with one of `dtypes`.
pub(crate) fn vector_of(
    t: &TensorView,
    name: &str,
    len: usize,
    dtypes: &[DType],
    what: &str,
) -> Result<()> {
    check::on_cpu(&[(name, t.layout())])?;
    check::rank(t.layout(), name, 1, what)?;
    check::dtype_in(t.layout(), name, dtypes)?;
    if t.shape()[0] != len {
        bail!(
            ShapeMismatch,
            "`{name}` has {} elements but {what} needs {len}",
            t.shape()[0]
        );
    }
    Ok(())
}

/// Sequence boundaries: `loc` holds B+1 non-decreasing offsets within `0..=total`.
pub(crate) fn check_seq_starts(loc: &TensorView, name: &str, total: usize) -> Result<Vec<i64>> {
    check::on_cpu(&[(name, loc.layout())])?;
    check::rank(loc.layout(), name, 1, "[batch + 1] sequence offsets")?;
    check::dtype_in(loc.layout(), name, &INDEX)?;
    if loc.shape()[0] == 0 {
        bail!(
            ShapeMismatch,
            "`{name}` must hold batch + 1 >= 1 offsets, got 0"
        );
    }
    let v: Vec<i64> = check::vector_values(loc).collect();
    if v[0] < 0 {
        bail!(IndexOutOfRange, "{name}[0] = {} is negative", v[0]);
    }
    for i in 1..v.len() {
        if v[i] < v[i - 1] {
            bail!(
                InvalidValue,
                "`{name}` is not monotone: [{}] = {} < [{}] = {}",
                i,
                v[i],
                i - 1,
                v[i - 1]
            );
        }
    }
    let last = *v.last().expect("non-empty");
    if last > total as i64 {
        bail!(
            IndexOutOfRange,
            "{name}[{}] = {last} is past the {total} tokens of the input",
            v.len() - 1
        );
    }
    Ok(v)
}

/// Cache lines of `batch` sequences: `pad` skips, others must lie in `0..lines`
/// and be distinct (two sequences may not update one line).
pub(crate) fn check_lines(
    indices: Option<&TensorView>,
    name: &str,
    batch: usize,
    lines: usize,
    pad: Option<i64>,
    pool: &str,
) -> Result<Vec<Option<usize>>> {
    let v: Vec<Option<usize>> = match indices {
        None => {
            if batch > lines {
                bail!(
                    ShapeMismatch,
                    "`{pool}` has {lines} entries but {batch} sequences need one each (no `{name}` given)"
                );
            }
            (0..batch).map(Some).collect()
        }
        Some(t) => {
            vector_of(t, name, batch, &INDEX, "one entry per sequence")?;
            let mut out = Vec::with_capacity(batch);
            for (i, x) in check::vector_values(t).enumerate() {
                if Some(x) == pad || (pad.is_none() && x < 0) {
                    out.push(None);
                } else if x < 0 || x >= lines as i64 {
                    bail!(
                        IndexOutOfRange,
                        "{name}[{i}] = {x} is outside `{pool}` (0..{lines})"
                    );
                } else {
                    out.push(Some(x as usize));
                }
            }
            out
        }
    };
    let mut used: Vec<(usize, usize)> = v
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.map(|l| (l, i)))
        .collect();
    used.sort_unstable();
    if let Some(w) = used.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!(
            Aliasing,
            "`{name}`: sequences {} and {} both use entry {} of `{pool}`",
            w[0].1,
            w[1].1,
            w[0].0
        );
    }
    Ok(v)
}

pub(crate) fn overlaps(a: (*const u8, &Layout), b: (*const u8, &Layout)) -> bool {
    let (ra, rb) = (check::byte_range(a.0, a.1), check::byte_range(b.0, b.1));
    ra.0 < rb.1 && rb.0 < ra.1
}

/// How a rank-2/3 x maps onto (sequence, token, channel) strides.
struct XMap {
    batch: usize,
    seqlen: usize,
    dim: usize,
    seq: usize,
    tok: usize,
    ch: usize,
}

struct Conv<'a> {
    weight: &'a TensorView<'a>,
    bias: Option<&'a TensorView<'a>>,
    width: usize,
}

fn check_weight<'a>(
    weight: &'a TensorView<'a>,
    bias: Option<&'a TensorView<'a>>,
    dim: usize,
) -> Result<Conv<'a>> {
    check::on_cpu(&[("weight", weight.layout())])?;
    check::rank(weight.layout(), "weight", 2, "(dim, width)")?;
    check::dtype_in(weight.layout(), "weight", &FLOATS)?;
    check::dim(weight.layout(), "weight", 0, dim, "dim of `x`")?;
    let width = weight.shape()[1];
    if !(2..=6).contains(&width) {
        bail!(
            Unsupported,
            "`weight` has width {width}; causal_conv1d supports widths 2 to 6"
        );
    }
    if let Some(b) = bias {
        check::on_cpu(&[("bias", b.layout())])?;
        check::rank(b.layout(), "bias", 1, "(dim,)")?;
        check::dtype_in(b.layout(), "bias", &FLOATS)?;
        check::dim(b.layout(), "bias", 0, dim, "dim of `x`")?;
    }
    Ok(Conv {
        weight,
        bias,
        width,
    })
}

fn check_states(states: &Layout, dim: usize, width: usize, need: usize) -> Result<usize> {
    check::on_cpu(&[("conv_states", states)])?;
    check::rank(states, "conv_states", 3, "(cache_lines, dim, state_len)")?;
    check::dtype_in(states, "conv_states", &FLOATS)?;
    check::dim(states, "conv_states", 1, dim, "dim of `x`")?;
    let state_len = states.shape[2];
    if state_len < need {
        bail!(
            ShapeMismatch,
            "`conv_states` holds state_len {state_len} columns, but width {width} needs at least {need}"
        );
    }
    Ok(states.shape[0])
}

/// The output view (x itself when `out` is None), checked against x.
fn check_out(x: &TensorViewMut, out: Option<&TensorViewMut>) -> Result<()> {
    if let Some(o) = out {
        check::on_cpu(&[("out", o.layout())])?;
        check::dtype_in(o.layout(), "out", &FLOATS)?;
        if o.shape() != x.shape() {
            bail!(
                ShapeMismatch,
                "`out` has shape {:?} but `x` has {:?}",
                o.shape(),
                x.shape()
            );
        }
        if overlaps((o.as_ptr(), o.layout()), (x.as_ptr(), x.layout())) {
            bail!(
                Aliasing,
                "`out` overlaps `x`; pass out = None to write in place"
            );
        }
    }
    Ok(())
}

struct Launch {
    map: XMap,
    out_strides: (usize, usize, usize),
    x_ptr: *const u8,
    x_dtype: DType,
    out_ptr: *mut u8,
    out_dtype: DType,
    states_ptr: *mut u8,
    states: Layout,
    silu: bool,
    pad_slot_id: i64,
    load_default: bool,
}

#[allow(clippy::too_many_arguments)]
fn launch(
    l: &Launch,
    conv: &Conv,
    query_start_loc: Option<&TensorView>,
    cache_indices: Option<&TensorView>,
    has_initial_state: Option<&TensorView>,
    num_accepted_tokens: Option<&TensorView>,
    work_per_seq: usize,
) {
    let dim = l.map.dim;
    // Whole token rows per block where possible: the hardware prefetchers
    // then follow x row after row (half rows measured ~15% slower on a
    // prefill), the kernel converts the weights once per grid chunk, and the
    // AVX-512 decode path prefetches the next sequence's state. With fewer
    // sequences than threads, channels are split so every thread gets a block. Tiles
    // are multiples of 32 channels (one kernel unit), and every channel takes
    // the same vector arithmetic whatever the tiling: results do not depend
    // on the thread count.
    let threads = crate::threading::num_threads();
    let tiles_wanted = threads.div_ceil(l.map.batch.max(1)).max(1);
    let tile = dim
        .div_ceil(tiles_wanted)
        .next_multiple_of(32)
        .clamp(64, 16384)
        .min(dim)
        .max(1);
    let tiles = dim.div_ceil(tile);
    let (w, st) = (conv.weight, &l.states);
    let args = sys::xk_conv1d_args {
        x: l.x_ptr.cast(),
        x_dtype: l.x_dtype.xk(),
        x_stride_seq: l.map.seq as i64,
        x_stride_tok: l.map.tok as i64,
        x_stride_dim: l.map.ch as i64,
        out: l.out_ptr.cast(),
        out_dtype: l.out_dtype.xk(),
        out_stride_seq: l.out_strides.0 as i64,
        out_stride_tok: l.out_strides.1 as i64,
        out_stride_dim: l.out_strides.2 as i64,
        weight: w.as_ptr().cast(),
        weight_dtype: w.dtype().xk(),
        weight_stride_dim: w.strides()[0] as i64,
        weight_stride_width: w.strides()[1] as i64,
        bias: conv.bias.map_or(std::ptr::null(), |b| b.as_ptr().cast()),
        bias_dtype: conv.bias.map_or(0, |b| b.dtype().xk()),
        bias_stride: conv.bias.map_or(0, |b| b.strides()[0] as i64),
        conv_states: l.states_ptr.cast(),
        state_dtype: st.dtype.xk(),
        state_stride_line: st.strides[0] as i64,
        state_stride_dim: st.strides[1] as i64,
        state_stride_tok: st.strides[2] as i64,
        dim: dim as i64,
        width: conv.width as i64,
        seqlen: l.map.seqlen as i64,
        query_start_loc: la_index(query_start_loc),
        cache_indices: la_index(cache_indices),
        has_initial_state: la_index(has_initial_state),
        num_accepted_tokens: la_index(num_accepted_tokens),
        load_state_default: l.load_default as i32,
        silu: l.silu as i32,
        pad_slot_id: l.pad_slot_id,
        channel_tile: tile as i64,
        num_channel_tiles: tiles as i64,
    };
    let kernel = platform::kernels()
        .causal_conv1d
        .expect("every kernel table has causal_conv1d");
    let blocks = l.map.batch * tiles;
    // ~32k channel-tokens per grid chunk keeps decode batches on few tasks.
    let per_block = (work_per_seq.max(1) * tile).max(1);
    let min_chunk = (32 * 1024 / per_block).max(1);
    let args = Shared(args);
    // + 16: the kernel aligns its scratch rows to the output's cache lines.
    let scratch_floats = (2 * conv.width + 3) * tile.next_multiple_of(32) + 16;
    grid(blocks, min_chunk, |r| {
        with_scratch(scratch_floats, |scratch| {
            // SAFETY: every pointer, stride, index and length was validated;
            // each block writes only its own channels of its own tokens and
            // cache line (cache lines are distinct per sequence); scratch is
            // private to this thread and as large as the kernel needs.
            unsafe { kernel(args.get(), scratch, r.start as i64, r.end as i64) }
        })
    });
}

/// Runs `f` with a scratch buffer of at least `floats` floats, kept per thread
/// between calls (a fresh buffer per call costs an allocation and page
/// faults, which decode-sized calls notice). Contents are unspecified: the
/// kernel writes what it reads.
fn with_scratch<R>(floats: usize, f: impl FnOnce(*mut f32) -> R) -> R {
    use std::cell::RefCell;
    const KEEP: usize = 16 << 20;
    thread_local!(static WS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) });
    if floats * 4 > KEEP {
        let mut v = vec![0f32; floats];
        return f(v.as_mut_ptr());
    }
    WS.with(|ws| {
        let mut v = ws.borrow_mut();
        if v.len() < floats {
            v.resize(floats, 0.0);
        }
        f(v.as_mut_ptr())
    })
}

/// Prefill: runs the causal conv over every sequence of a varlen batch,
/// starting from its cached state, and writes the last `width - 1` inputs back.
///
/// * `x`: `(dim, total_tokens)`, any strides (channel-contiguous is fastest);
///   receives the output unless `out` is given.
/// * `weight`: `(dim, width)`, width 2 to 6; `bias`: `(dim,)` or None.
/// * `conv_states`: `(cache_lines, dim, state_len >= width - 1)`, any stride
///   order (vLLM's dim-contiguous layout included). Columns `0..width-1` of a
///   line hold the history, oldest first.
/// * `query_start_loc`: int32/int64 `[B + 1]` token offsets (non-decreasing).
/// * `cache_indices`: `[B]` cache line per sequence (None: line = sequence).
/// * `has_initial_state`: `[B]` bool/int: start from the line's history, else
///   from zeros (None: all false).
/// * `activation`: None/`"none"` or `"silu"`/`"swish"`.
/// * `pad_slot_id`: sequences whose cache index equals it are skipped: their
///   outputs and cache line are left untouched (vLLM uses -1).
///
/// Sequences shorter than `width - 1` shift their history (or zeros) left.
/// Unlike upstream, `x` is not first rounded to the state dtype.
///
/// ```
/// use xpu_ops::{causal_conv1d_fn, TensorView, TensorViewMut};
/// let (dim, width) = (4, 4);
/// let mut x: Vec<f32> = (0..dim * 3).map(|i| i as f32).collect(); // 3 tokens
/// let weight = vec![0.25f32; dim * width];
/// let mut states = vec![0f32; 2 * dim * (width - 1)];
/// causal_conv1d_fn(
///     &mut TensorViewMut::strided(&mut x, &[dim, 3], &[1, dim])?,
///     &TensorView::new(&weight, &[dim, width])?,
///     None,
///     &mut TensorViewMut::new(&mut states, &[2, dim, width - 1])?,
///     &TensorView::new(&[0i32, 3], &[2])?,
///     Some(&TensorView::new(&[1i32], &[1])?),
///     None,
///     None,
///     -1,
///     None,
/// )?;
/// assert_eq!(x[2 * dim], 0.25 * (0.0 + 4.0 + 8.0)); // channel 0, token 2
/// assert_eq!(states[3 * dim..3 * dim + 3], [0.0, 4.0, 8.0]); // line 1, channel 0
/// # Ok::<(), xpu_ops::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d_fn(
    x: &mut TensorViewMut,
    weight: &TensorView,
    bias: Option<&TensorView>,
    conv_states: &mut TensorViewMut,
    query_start_loc: &TensorView,
    cache_indices: Option<&TensorView>,
    has_initial_state: Option<&TensorView>,
    activation: Option<&str>,
    pad_slot_id: i64,
    out: Option<&mut TensorViewMut>,
) -> Result<()> {
    let _span = trace::op(
        "causal_conv1d_fn",
        &[
            ("x", x.layout()),
            ("weight", weight.layout()),
            ("conv_states", conv_states.layout()),
            ("query_start_loc", query_start_loc.layout()),
        ],
    );
    let silu = parse_activation(activation)?;
    check::on_cpu(&[("x", x.layout())])?;
    check::rank(x.layout(), "x", 2, "(dim, total_tokens)")?;
    check::dtype_in(x.layout(), "x", &FLOATS)?;
    let (dim, total) = (x.shape()[0], x.shape()[1]);
    let conv = check_weight(weight, bias, dim)?;
    let states = conv_states.layout().clone();
    let lines = check_states(&states, dim, conv.width, conv.width - 1)?;
    let starts = check_seq_starts(query_start_loc, "query_start_loc", total)?;
    let batch = starts.len() - 1;
    check_lines(
        cache_indices,
        "cache_indices",
        batch,
        lines,
        Some(pad_slot_id),
        "conv_states",
    )?;
    if let Some(h) = has_initial_state {
        vector_of(
            h,
            "has_initial_state",
            batch,
            &FLAGS,
            "one flag per sequence",
        )?;
    }
    let out_ref = out.as_deref();
    check_out(x, out_ref)?;
    let out_l = out_ref.map_or(x.layout().clone(), |o| o.layout().clone());
    let out_p = out_ref.map_or(x.as_ptr(), |o| o.as_ptr());
    if overlaps((x.as_ptr(), x.layout()), (conv_states.as_ptr(), &states))
        || overlaps((out_p, &out_l), (conv_states.as_ptr(), &states))
    {
        bail!(Aliasing, "`x` or `out` overlaps `conv_states`");
    }
    let (out_ptr, out_dtype) = match out {
        Some(o) => (o.as_mut_ptr(), o.dtype()),
        None => (x.as_mut_ptr(), x.dtype()),
    };
    let max_len = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) as usize)
        .max()
        .unwrap_or(0);
    let l = Launch {
        map: XMap {
            batch,
            seqlen: 0,
            dim,
            seq: 0,
            tok: x.strides()[1],
            ch: x.strides()[0],
        },
        out_strides: (0, out_l.strides[1], out_l.strides[0]),
        x_ptr: x.as_ptr(),
        x_dtype: x.dtype(),
        out_ptr,
        out_dtype,
        states_ptr: conv_states.as_mut_ptr(),
        states,
        silu,
        pad_slot_id,
        load_default: false,
    };
    launch(
        &l,
        &conv,
        Some(query_start_loc),
        cache_indices,
        has_initial_state,
        None,
        max_len.max(1),
    );
    Ok(())
}

/// Decode: advances each sequence's conv state by its new tokens and writes
/// the conv outputs (into `x` unless `out` is given).
///
/// * `x`: `(B, dim)` (one token each), `(B, dim, seqlen)`, or varlen
///   `(num_tokens, dim)` with `query_start_loc` `[B + 1]`.
/// * `conv_state`: `(cache_lines, dim, state_len)`, any stride order.
/// * `conv_state_indices`: `[B]` line per sequence (None: line = sequence);
///   entries equal to `pad_slot_id` skip the sequence (outputs and line untouched).
/// * `num_accepted_tokens`: `[B]`, speculative decoding (any width 2 to 6):
///   the window is read from columns `num_accepted - 1 ..` and the line becomes
///   the window minus its oldest column followed by every new token, so
///   `state_len >= width - 2 + seqlen` and `1 <= num_accepted <= state_len - width + 2`.
///   Without it, the line shifts left by the sequence length (columns
///   `0..width-1`).
/// * `max_query_len`: varlen only, an upper bound on sequence lengths (-1: not given).
///
/// ```
/// use xpu_ops::{causal_conv1d_update, TensorView, TensorViewMut};
/// let (batch, dim, width) = (2, 3, 2);
/// let mut x = vec![1.0f32; batch * dim];
/// let weight = vec![1.0f32; dim * width];
/// let mut state = vec![5.0f32; batch * dim * (width - 1)];
/// causal_conv1d_update(
///     &mut TensorViewMut::new(&mut x, &[batch, dim])?,
///     &mut TensorViewMut::new(&mut state, &[batch, dim, width - 1])?,
///     &TensorView::new(&weight, &[dim, width])?,
///     None, None, None, None, None, -1, -1, None,
/// )?;
/// assert_eq!(x, vec![6.0; batch * dim]);
/// assert_eq!(state, vec![1.0; batch * dim]);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d_update(
    x: &mut TensorViewMut,
    conv_state: &mut TensorViewMut,
    weight: &TensorView,
    bias: Option<&TensorView>,
    activation: Option<&str>,
    conv_state_indices: Option<&TensorView>,
    num_accepted_tokens: Option<&TensorView>,
    query_start_loc: Option<&TensorView>,
    max_query_len: i64,
    pad_slot_id: i64,
    out: Option<&mut TensorViewMut>,
) -> Result<()> {
    let _span = trace::op(
        "causal_conv1d_update",
        &[
            ("x", x.layout()),
            ("conv_state", conv_state.layout()),
            ("weight", weight.layout()),
        ],
    );
    let silu = parse_activation(activation)?;
    check::on_cpu(&[("x", x.layout())])?;
    check::dtype_in(x.layout(), "x", &FLOATS)?;
    let xs = x.strides().to_vec();
    let (map, lens): (XMap, Vec<usize>) = match (query_start_loc, x.ndim()) {
        (Some(loc), 2) => {
            let (total, dim) = (x.shape()[0], x.shape()[1]);
            let starts = check_seq_starts(loc, "query_start_loc", total)?;
            let lens: Vec<usize> = starts.windows(2).map(|w| (w[1] - w[0]) as usize).collect();
            if max_query_len >= 0 {
                if let Some((i, &n)) = lens
                    .iter()
                    .enumerate()
                    .find(|(_, &n)| n as i64 > max_query_len)
                {
                    bail!(
                        InvalidValue,
                        "sequence {i} has {n} tokens, more than max_query_len = {max_query_len}"
                    );
                }
            }
            let map = XMap {
                batch: lens.len(),
                seqlen: 0,
                dim,
                seq: 0,
                tok: xs[0],
                ch: xs[1],
            };
            (map, lens)
        }
        (Some(_), n) => bail!(
            ShapeMismatch,
            "with query_start_loc, `x` must be (num_tokens, dim) (rank 2), got rank {n} shape {:?}",
            x.shape()
        ),
        (None, 2) => {
            let (batch, dim) = (x.shape()[0], x.shape()[1]);
            let map = XMap {
                batch,
                seqlen: 1,
                dim,
                seq: xs[0],
                tok: 0,
                ch: xs[1],
            };
            (map, vec![1; batch])
        }
        (None, 3) => {
            let (batch, dim, seqlen) = (x.shape()[0], x.shape()[1], x.shape()[2]);
            let map = XMap {
                batch,
                seqlen,
                dim,
                seq: xs[0],
                tok: xs[2],
                ch: xs[1],
            };
            (map, vec![seqlen; batch])
        }
        (None, n) => bail!(
            ShapeMismatch,
            "`x` must be (batch, dim) or (batch, dim, seqlen), got rank {n} shape {:?}",
            x.shape()
        ),
    };
    let conv = check_weight(weight, bias, map.dim)?;
    let width = conv.width;
    let max_len = lens.iter().copied().max().unwrap_or(0);
    let spec = num_accepted_tokens.is_some();
    let need = if spec {
        (width - 1).max(width - 2 + max_len)
    } else {
        width - 1
    };
    let states = conv_state.layout().clone();
    let state_len = states.shape.get(2).copied().unwrap_or(0);
    let lines = check_states(&states, map.dim, width, need).map_err(|mut e| {
        if spec {
            e.message
                .push_str(&format!(" (spec decode: width - 2 + {max_len} new tokens)"));
        }
        e
    })?;
    let line_of = check_lines(
        conv_state_indices,
        "conv_state_indices",
        map.batch,
        lines,
        Some(pad_slot_id),
        "conv_state",
    )?;
    if let Some(na) = num_accepted_tokens {
        vector_of(
            na,
            "num_accepted_tokens",
            map.batch,
            &INDEX,
            "one count per sequence",
        )?;
        let hi = state_len + 2 - width;
        for (i, a) in check::vector_values(na).enumerate() {
            if line_of[i].is_some() && lens[i] > 0 && (a < 1 || a as usize > hi) {
                bail!(
                    IndexOutOfRange,
                    "num_accepted_tokens[{i}] = {a}: the window must start inside conv_state (1..={hi} for state_len {state_len}, width {width})"
                );
            }
        }
    }
    let out_ref = out.as_deref();
    check_out(x, out_ref)?;
    let out_l = out_ref.map_or(x.layout().clone(), |o| o.layout().clone());
    let out_p = out_ref.map_or(x.as_ptr(), |o| o.as_ptr());
    if overlaps((x.as_ptr(), x.layout()), (conv_state.as_ptr(), &states))
        || overlaps((out_p, &out_l), (conv_state.as_ptr(), &states))
    {
        bail!(Aliasing, "`x` or `out` overlaps `conv_state`");
    }
    let os = &out_l.strides;
    let out_strides = match (query_start_loc.is_some(), out_l.ndim()) {
        (true, _) => (0, os[0], os[1]),
        (false, 2) => (os[0], 0, os[1]),
        _ => (os[0], os[2], os[1]),
    };
    let (out_ptr, out_dtype) = match out {
        Some(o) => (o.as_mut_ptr(), o.dtype()),
        None => (x.as_mut_ptr(), x.dtype()),
    };
    let l = Launch {
        map,
        out_strides,
        x_ptr: x.as_ptr(),
        x_dtype: x.dtype(),
        out_ptr,
        out_dtype,
        states_ptr: conv_state.as_mut_ptr(),
        states,
        silu,
        pad_slot_id,
        load_default: true,
    };
    launch(
        &l,
        &conv,
        query_start_loc,
        conv_state_indices,
        None,
        num_accepted_tokens,
        max_len.max(1) + width,
    );
    Ok(())
}
