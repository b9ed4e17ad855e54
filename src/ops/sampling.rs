//! Sampling with FlashInfer's and vLLM's semantics (`flashinfer/sampling.py`,
//! vLLM `v1/sample/`): sorting-free samplers and filters over probabilities
//! or logits, vLLM's penalties, and a fused sampler that returns token ids,
//! logprobs and ranks.
//!
//! # What is drawn, exactly
//!
//! Every filter keeps an upper set of a row's values, so a row's kept set is
//! one threshold; the kernels find it without sorting (a one-pass candidate
//! filter with a rising bound, quickselect on the candidates, a weighted
//! quickselect for top-p, a radix select over the row as the fallback). For a
//! row `y` (probs, or logits divided by the temperature in f32) with max `m`:
//!
//! * weights are integers: logits `W = trunc(exp_spec(y - m) * 2^40)` (0 below
//!   `y - m = -27.8`), probs `W = trunc(p * 2^40)`; `exp_spec` is a fixed
//!   degree-6 polynomial evaluated without FMA ([`crate::reference::sampling::expf_spec`]).
//!   Sums of `W` are exact, so nothing depends on summation order, ISA tier or
//!   thread count;
//! * top-k keeps values `>=` the k-th largest (ties at the k-th value kept);
//! * min-p keeps `p >= min_p * p_max`, in the log form `fl(y - m) >= fl32(ln min_p)`
//!   for logits;
//! * top-p keeps token `i` of the set `S1` left by top-k and min-p iff the
//!   weight of `S1`'s strictly larger values is below `ceil(top_p * 2^32) / 2^32`
//!   of `S1`'s total (of the whole row for FlashInfer's `"joint"` order); the
//!   largest value always stays;
//! * the draw takes one 32-bit word `u` of Philox4x32-10 keyed by the row's
//!   `seed`, counter `(offset / 4, subsequence)`, word `offset % 4`, and
//!   returns the first index (in index order) whose running weight over the
//!   kept set exceeds `floor(u * Z / 2^32)`: the inverse CDF of the
//!   renormalised, masked distribution. [`crate::reference::sampling`] computes
//!   the same function by sorting, and the tests hold every tier to it exactly.
//!
//! Randomness: with a scalar `seed` the subsequence is the output row, so rows
//! differ; with a per-row `seed` tensor the subsequence is 0 and a request's
//! sample depends only on its own (seed, offset, row), whatever the batch,
//! the thread count or the ISA tier. The caller advances `offset` between
//! calls (each row uses one 32-bit word; FlashInfer advances by multiples of 4).
//!
//! Differences from upstream, on purpose: a NaN anywhere in a row, `+inf`, an
//! all `-inf` logits row, a negative probability, or a probs row whose sum is
//! off 1 by more than [`probs_sum_tolerance`] is an error (upstream samples
//! garbage); ranks count raw logits `>=` the sampled one (vLLM compares fp32
//! logprobs, which can merge distinct logits); tokens whose weight truncates to
//! 0 (probability below 2^-40 of the row max) are never drawn.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use crate::dtype::DType;
use crate::error::{bail, Error, Result, Status};
use crate::ops::check;
use crate::platform;
use crate::sys;
use crate::tensor::{Layout, TensorView, TensorViewMut};
use crate::threading::{grid, Shared};
use crate::trace;

/// A sampling parameter given once for the batch or per output row, like
/// FlashInfer's `Union[torch.Tensor, float]` arguments.
#[derive(Debug, Clone, Copy)]
pub enum PerRow<'a, T> {
    Scalar(T),
    /// A `[batch]` tensor (seeds and offsets: `[1]` or `[batch]`).
    Tensor(&'a TensorView<'a>),
}

impl<T> From<T> for PerRow<'_, T> {
    fn from(v: T) -> Self {
        PerRow::Scalar(v)
    }
}

/// FlashInfer's `filter_apply_order` for top-k + top-p.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterApplyOrder {
    /// Top-k, renormalise, then top-p over the survivors.
    TopKFirst,
    /// Top-k and top-p both against the whole row's distribution.
    Joint,
}

impl FilterApplyOrder {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "top_k_first" => Ok(FilterApplyOrder::TopKFirst),
            "joint" => Ok(FilterApplyOrder::Joint),
            other => bail!(
                InvalidArgument,
                "unknown filter_apply_order {other:?}; expected \"top_k_first\" or \"joint\""
            ),
        }
    }
}

/// vLLM's `_SAMPLING_EPS`: rows with a temperature below it are greedy.
pub const SAMPLING_EPS: f32 = 1e-5;

/// The largest `max_num_logprobs` the fused sampler returns.
pub const MAX_NUM_LOGPROBS: usize = 1024;

/// Candidates kept per row before a kernel falls back to a radix select over
/// the whole row.
const CANDIDATE_CAP: i64 = 8192;

/// How far a probs row's sum may be from 1: 1e-3 for f32 rows, 1e-2 for f16
/// and bf16 rows (each element carries up to 2^-8 relative rounding).
pub fn probs_sum_tolerance(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        1e-3
    } else {
        1e-2
    }
}

const VALUE_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// `[rows, vocab]` input: (rows, vocab, row stride).
fn check_rows(x: &TensorView, name: &str) -> Result<(usize, usize, usize)> {
    check::on_cpu(&[(name, x.layout())])?;
    check::rank(x.layout(), name, 2, "[batch_size, vocab_size]")?;
    check::dtype_in(x.layout(), name, &VALUE_DTYPES)?;
    check::inner_contiguous(x.layout(), name)?;
    let (rows, vocab) = (x.shape()[0], x.shape()[1]);
    if vocab == 0 {
        bail!(ShapeMismatch, "`{name}` has vocab_size 0");
    }
    if vocab >= 1 << 24 {
        bail!(
            Unsupported,
            "`{name}` has vocab_size {vocab}; sampling supports vocab_size < 2^24"
        );
    }
    Ok((rows, vocab, x.strides()[0]))
}

/// The input row of every output row: `indices`, or the identity.
fn row_map(indices: Option<&TensorView>, rows: usize) -> Result<Vec<i64>> {
    let Some(ix) = indices else {
        return Ok((0..rows as i64).collect());
    };
    check::on_cpu(&[("indices", ix.layout())])?;
    check::index_vector(ix.layout(), "indices")?;
    let v: Vec<i64> = check::vector_values(ix).collect();
    if let Some((b, &r)) = v
        .iter()
        .enumerate()
        .find(|(_, &r)| r < 0 || r >= rows as i64)
    {
        bail!(
            IndexOutOfRange,
            "indices[{b}] = {r} is outside the {rows} input rows"
        );
    }
    Ok(v)
}

fn per_row_tensor(t: &TensorView, name: &str, batch: usize, allow_one: bool) -> Result<()> {
    check::on_cpu(&[(name, t.layout())])?;
    let ok = t.ndim() == 1 && (t.shape()[0] == batch || (allow_one && t.shape()[0] == 1));
    if !ok {
        let want = if allow_one {
            format!("[1] or [batch_size = {batch}]")
        } else {
            format!("[batch_size = {batch}]")
        };
        bail!(
            ShapeMismatch,
            "`{name}` must have shape {want}, got {:?}",
            t.shape()
        );
    }
    Ok(())
}

/// A float parameter per output row, each checked by `valid` (whose message
/// describes the domain).
fn resolve_f32(
    p: &PerRow<f32>,
    name: &str,
    batch: usize,
    valid: impl Fn(f32) -> bool,
    domain: &str,
) -> Result<Vec<f32>> {
    let vals = match p {
        PerRow::Scalar(v) => vec![*v; batch],
        PerRow::Tensor(t) => {
            per_row_tensor(t, name, batch, false)?;
            if !t.dtype().is_float() || t.dtype().is_fp8() {
                bail!(
                    DtypeMismatch,
                    "`{name}` has dtype {}, expected float32, float16 or bfloat16",
                    t.dtype()
                );
            }
            (0..batch).map(|b| t.get_f32(&[b])).collect()
        }
    };
    if let Some((b, v)) = vals.iter().enumerate().find(|(_, &v)| !valid(v)) {
        bail!(InvalidValue, "{name}[{b}] = {v}: {name} must be {domain}");
    }
    Ok(vals)
}

fn resolve_i64(p: &PerRow<i64>, name: &str, batch: usize) -> Result<Vec<i64>> {
    Ok(match p {
        PerRow::Scalar(v) => vec![*v; batch],
        PerRow::Tensor(t) => {
            per_row_tensor(t, name, batch, false)?;
            check::dtype_in(t.layout(), name, &[DType::I32, DType::I64])?;
            check::vector_values(t).collect()
        }
    })
}

/// Seeds, offsets and Philox subsequences per output row.
fn resolve_rng(
    seed: &PerRow<u64>,
    offset: &PerRow<u64>,
    batch: usize,
) -> Result<(Vec<u64>, Vec<u64>, Vec<u64>)> {
    let words = |p: &PerRow<u64>, name: &str| -> Result<(Vec<u64>, bool)> {
        Ok(match p {
            PerRow::Scalar(v) => (vec![*v; batch], false),
            PerRow::Tensor(t) => {
                per_row_tensor(t, name, batch, true)?;
                check::dtype_in(t.layout(), name, &[DType::I64])?;
                let v: Vec<u64> = (0..t.shape()[0]).map(|i| t.get_bits(&[i])).collect();
                if v.len() == 1 {
                    (vec![v[0]; batch], false)
                } else {
                    (v, true)
                }
            }
        })
    };
    let (seeds, seed_per_row) = words(seed, "seed")?;
    let (offsets, _) = words(offset, "offset")?;
    let subseq = if seed_per_row {
        vec![0; batch]
    } else {
        (0..batch as u64).collect()
    };
    Ok((seeds, offsets, subseq))
}

/// FlashInfer's top-k: at least 1; `>= vocab` keeps everything (0 to the kernel).
fn flashinfer_top_k(p: &PerRow<i64>, batch: usize, vocab: usize) -> Result<Vec<i32>> {
    let k = resolve_i64(p, "top_k", batch)?;
    if let Some((b, v)) = k.iter().enumerate().find(|(_, &v)| v < 1) {
        bail!(InvalidValue, "top_k[{b}] = {v}: top_k must be at least 1");
    }
    Ok(k.iter()
        .map(|&v| if v >= vocab as i64 { 0 } else { v as i32 })
        .collect())
}

fn top_p_values(p: &PerRow<f32>, batch: usize) -> Result<Vec<f32>> {
    resolve_f32(p, "top_p", batch, |v| v > 0.0 && v <= 1.0, "in (0, 1]")
}

fn min_p_values(p: &PerRow<f32>, batch: usize) -> Result<Vec<f32>> {
    resolve_f32(p, "min_p", batch, |v| (0.0..=1.0).contains(&v), "in [0, 1]")
}

/// An output vector of token ids: `[batch]` (or `[batch, 1]`), int32 or int64.
fn check_ids_out(t: &Layout, name: &str, batch: usize) -> Result<()> {
    check::on_cpu(&[(name, t)])?;
    check::dtype_in(t, name, &[DType::I32, DType::I64])?;
    let ok = (t.ndim() == 1 && t.shape[0] == batch)
        || (t.ndim() == 2 && t.shape[0] == batch && t.shape[1] == 1);
    if !ok {
        bail!(
            ShapeMismatch,
            "`{name}` must have shape [batch_size = {batch}] (or [{batch}, 1]), got {:?}",
            t.shape
        );
    }
    Ok(())
}

/// An output must not share memory with any input.
fn check_disjoint(
    out: (*const u8, &Layout, &str),
    inputs: &[(*const u8, &Layout, &str)],
) -> Result<()> {
    let (o0, o1) = check::byte_range(out.0, out.1);
    for (p, l, name) in inputs {
        let (i0, i1) = check::byte_range(*p, l);
        if o0 < i1 && i0 < o1 {
            bail!(Aliasing, "`{}` overlaps the input `{name}`", out.2);
        }
    }
    Ok(())
}

fn write_ids(out: &mut TensorViewMut, vals: &[i64]) {
    let two_d = out.ndim() == 2;
    for (b, &v) in vals.iter().enumerate() {
        let bits = if out.dtype() == DType::I32 {
            v as i32 as u32 as u64
        } else {
            v as u64
        };
        if two_d {
            out.set_bits(&[b, 0], bits)
        } else {
            out.set_bits(&[b], bits)
        }
    }
}

thread_local! {
    static WORKSPACE: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's sampling workspace of at least `bytes` bytes.
fn with_workspace<R>(bytes: usize, f: impl FnOnce(*mut std::ffi::c_void) -> R) -> R {
    WORKSPACE.with(|w| {
        let mut w = w.borrow_mut();
        let words = bytes.div_ceil(8);
        if w.len() < words {
            w.resize(words, 0);
        }
        f(w.as_mut_ptr().cast())
    })
}

fn workspace_bytes() -> usize {
    // SAFETY: a pure function of its argument.
    unsafe { sys::xk_sampling_workspace_bytes(CANDIDATE_CAP) as usize }
}

/// Everything the sample kernel needs, resolved to per-output-row arrays.
struct SampleJob<'v> {
    x: &'v TensorView<'v>,
    x_name: &'static str,
    is_logits: bool,
    row_index: Vec<i64>,
    penalized: Option<(Vec<f32>, Vec<u8>)>,
    temperature: Option<Vec<f32>>,
    greedy: Option<Vec<u8>>,
    top_k: Option<Vec<i32>>,
    top_p: Option<Vec<f32>>,
    min_p: Option<Vec<f32>>,
    joint: bool,
    seed: Vec<u64>,
    offset: Vec<u64>,
    subsequence: Vec<u64>,
    num_logprobs: i32,
}

struct SampleOut {
    samples: Vec<i64>,
    logprob_ids: Vec<i64>,
    logprobs: Vec<f32>,
    ranks: Vec<i64>,
}

fn row_error(status: i32, name: &str, row: i64, kind: &str) -> Error {
    let what = match status {
        1 => "contains NaN",
        2 if kind == "probs" => "contains inf",
        2 => "contains +inf (after the temperature, if any)",
        3 => "contains a negative probability",
        4 => "has no finite logit (every value is -inf)",
        _ => "is invalid",
    };
    Error::new(Status::InvalidValue, format!("`{name}` row {row} {what}"))
}

fn check_mass(dtype: DType, name: &str, rows: &[i64], mass: &[f64]) -> Result<()> {
    let tol = probs_sum_tolerance(dtype);
    for (b, &s) in mass.iter().enumerate() {
        if (s - 1.0).abs() > tol {
            bail!(
                InvalidValue,
                "`{name}` row {} sums to {s:.6}, not 1 within {tol}",
                rows[b]
            );
        }
    }
    Ok(())
}

fn run_sample(job: &SampleJob) -> Result<SampleOut> {
    let batch = job.row_index.len();
    let nlp = job.num_logprobs.max(0) as usize;
    let mut out = SampleOut {
        samples: vec![0; batch],
        logprob_ids: vec![
            0;
            if job.num_logprobs >= 0 {
                batch * (nlp + 1)
            } else {
                0
            }
        ],
        logprobs: vec![
            0.0;
            if job.num_logprobs >= 0 {
                batch * (nlp + 1)
            } else {
                0
            }
        ],
        ranks: vec![0; if job.num_logprobs >= 0 { batch } else { 0 }],
    };
    let mut status = vec![0i32; batch];
    let mut mass = vec![0f64; batch];
    let opt = |v: &Option<Vec<f32>>| v.as_ref().map_or(std::ptr::null(), |v| v.as_ptr());
    let args = sys::xk_sample_args {
        x: job.x.as_ptr().cast(),
        x_row_stride: job.x.strides()[0] as i64,
        x_dtype: job.x.dtype().xk(),
        is_logits: job.is_logits as i32,
        vocab: job.x.shape()[1] as i64,
        row_index: job.row_index.as_ptr(),
        penalized: job
            .penalized
            .as_ref()
            .map_or(std::ptr::null(), |p| p.0.as_ptr()),
        row_penalized: job
            .penalized
            .as_ref()
            .map_or(std::ptr::null(), |p| p.1.as_ptr()),
        temperature: opt(&job.temperature),
        greedy: job.greedy.as_ref().map_or(std::ptr::null(), |g| g.as_ptr()),
        top_k: job.top_k.as_ref().map_or(std::ptr::null(), |k| k.as_ptr()),
        top_p: opt(&job.top_p),
        min_p: opt(&job.min_p),
        joint: job.joint as i32,
        seed: job.seed.as_ptr(),
        offset: job.offset.as_ptr(),
        subsequence: job.subsequence.as_ptr(),
        samples: out.samples.as_mut_ptr(),
        status: status.as_mut_ptr(),
        mass: mass.as_mut_ptr(),
        num_logprobs: job.num_logprobs,
        logprob_ids: out.logprob_ids.as_mut_ptr(),
        logprobs: out.logprobs.as_mut_ptr(),
        ranks: out.ranks.as_mut_ptr(),
        cap: CANDIDATE_CAP,
    };
    let f = platform::kernels()
        .sample_rows
        .expect("every kernel table has sample_rows");
    let bytes = workspace_bytes();
    let args = Shared(args);
    grid(batch, 1, |r| {
        with_workspace(bytes, |ws| {
            // SAFETY: every pointer and size was validated; rows write disjoint
            // elements of the launcher-owned output arrays.
            unsafe { f(args.get(), r.start as i64, r.end as i64, ws) }
        })
    });
    let kind = if job.is_logits { "logits" } else { "probs" };
    if let Some(b) = status.iter().position(|&s| s != 0) {
        return Err(row_error(status[b], job.x_name, job.row_index[b], kind));
    }
    if !job.is_logits {
        check_mass(job.x.dtype(), job.x_name, &job.row_index, &mass)?;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn flashinfer_sample(
    op: &'static str,
    x: &TensorView,
    x_name: &'static str,
    is_logits: bool,
    top_k: Option<&PerRow<i64>>,
    top_p: Option<&PerRow<f32>>,
    min_p: Option<&PerRow<f32>>,
    indices: Option<&TensorView>,
    joint: bool,
    seed: &PerRow<u64>,
    offset: &PerRow<u64>,
    samples: &mut TensorViewMut,
) -> Result<()> {
    let _span = trace::op(op, &[(x_name, x.layout()), ("samples", samples.layout())]);
    let (rows, vocab, _) = check_rows(x, x_name)?;
    let row_index = row_map(indices, rows)?;
    let batch = row_index.len();
    check_ids_out(samples.layout(), "samples", batch)?;
    let mut inputs = vec![(x.as_ptr(), x.layout(), x_name)];
    if let Some(ix) = indices {
        inputs.push((ix.as_ptr(), ix.layout(), "indices"));
    }
    check_disjoint((samples.as_ptr(), samples.layout(), "samples"), &inputs)?;
    let top_k = top_k
        .map(|k| flashinfer_top_k(k, batch, vocab))
        .transpose()?;
    let top_p = top_p.map(|p| top_p_values(p, batch)).transpose()?;
    let min_p = min_p.map(|p| min_p_values(p, batch)).transpose()?;
    let (seed, offset, subsequence) = resolve_rng(seed, offset, batch)?;
    let job = SampleJob {
        x,
        x_name,
        is_logits,
        row_index,
        penalized: None,
        temperature: None,
        greedy: None,
        top_k,
        top_p,
        min_p,
        joint,
        seed,
        offset,
        subsequence,
        num_logprobs: -1,
    };
    let out = run_sample(&job)?;
    write_ids(samples, &out.samples);
    Ok(())
}

/// FlashInfer `sampling_from_probs`: one category per output row drawn from
/// `probs` `[batch_size, vocab_size]` (f32/f16/bf16, rows summing to 1 within
/// [`probs_sum_tolerance`]).
///
/// * `indices`: optional int32/int64 `[batch]` mapping each output row to a
///   row of `probs` (without it, output row `i` samples row `i`).
/// * `seed`, `offset`: the Philox stream (scalar, or int64 `[1]` / `[batch]`);
///   see the module docs. FlashInfer's `generator`, `deterministic` and
///   `check_nan` are implied: this is always deterministic and always checks.
/// * `samples`: int32/int64 `[batch]` output.
///
/// ```
/// use xpu_ops::{sampling_from_probs, TensorView, TensorViewMut};
/// let probs = [0.0f32, 0.0, 1.0, 0.0, 0.25, 0.75, 0.0, 0.0];
/// let mut out = [0i32; 2];
/// sampling_from_probs(
///     &TensorView::new(&probs, &[2, 4])?, None, 42u64.into(), 0u64.into(),
///     &mut TensorViewMut::new(&mut out, &[2])?,
/// )?;
/// assert_eq!(out[0], 2);
/// assert!(out[1] == 0 || out[1] == 1);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn sampling_from_probs(
    probs: &TensorView,
    indices: Option<&TensorView>,
    seed: PerRow<u64>,
    offset: PerRow<u64>,
    samples: &mut TensorViewMut,
) -> Result<()> {
    flashinfer_sample(
        "sampling_from_probs",
        probs,
        "probs",
        false,
        None,
        None,
        None,
        indices,
        false,
        &seed,
        &offset,
        samples,
    )
}

/// FlashInfer `sampling_from_logits`: samples `softmax(logits)` per row.
/// Arguments as [`sampling_from_probs`].
///
/// ```
/// use xpu_ops::{sampling_from_logits, TensorView, TensorViewMut};
/// let logits = [0.0f32, 50.0, 0.0];
/// let mut out = [0i64; 1];
/// sampling_from_logits(
///     &TensorView::new(&logits, &[1, 3])?, None, 7u64.into(), 0u64.into(),
///     &mut TensorViewMut::new(&mut out, &[1])?,
/// )?;
/// assert_eq!(out[0], 1);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn sampling_from_logits(
    logits: &TensorView,
    indices: Option<&TensorView>,
    seed: PerRow<u64>,
    offset: PerRow<u64>,
    samples: &mut TensorViewMut,
) -> Result<()> {
    flashinfer_sample(
        "sampling_from_logits",
        logits,
        "logits",
        true,
        None,
        None,
        None,
        indices,
        false,
        &seed,
        &offset,
        samples,
    )
}

/// FlashInfer `top_p_sampling_from_probs`: nucleus sampling; `top_p` in
/// (0, 1], scalar or per row (1 keeps everything).
///
/// ```
/// use xpu_ops::{top_p_sampling_from_probs, TensorView, TensorViewMut};
/// let probs = [0.5f32, 0.3, 0.2];
/// let mut out = [0i32; 1];
/// top_p_sampling_from_probs(
///     &TensorView::new(&probs, &[1, 3])?, 0.4f32.into(), None, 1u64.into(), 0u64.into(),
///     &mut TensorViewMut::new(&mut out, &[1])?,
/// )?;
/// assert_eq!(out[0], 0); // only the largest lies inside p = 0.4
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn top_p_sampling_from_probs(
    probs: &TensorView,
    top_p: PerRow<f32>,
    indices: Option<&TensorView>,
    seed: PerRow<u64>,
    offset: PerRow<u64>,
    samples: &mut TensorViewMut,
) -> Result<()> {
    flashinfer_sample(
        "top_p_sampling_from_probs",
        probs,
        "probs",
        false,
        None,
        Some(&top_p),
        None,
        indices,
        false,
        &seed,
        &offset,
        samples,
    )
}

/// FlashInfer `top_k_sampling_from_probs`: `top_k >= 1`, scalar or per row
/// (ties at the k-th value are kept; `>= vocab_size` keeps everything).
///
/// ```
/// use xpu_ops::{top_k_sampling_from_probs, TensorView, TensorViewMut};
/// let probs = [0.1f32, 0.6, 0.3];
/// let mut out = [0i32; 1];
/// top_k_sampling_from_probs(
///     &TensorView::new(&probs, &[1, 3])?, 1i64.into(), None, 3u64.into(), 0u64.into(),
///     &mut TensorViewMut::new(&mut out, &[1])?,
/// )?;
/// assert_eq!(out[0], 1);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn top_k_sampling_from_probs(
    probs: &TensorView,
    top_k: PerRow<i64>,
    indices: Option<&TensorView>,
    seed: PerRow<u64>,
    offset: PerRow<u64>,
    samples: &mut TensorViewMut,
) -> Result<()> {
    flashinfer_sample(
        "top_k_sampling_from_probs",
        probs,
        "probs",
        false,
        Some(&top_k),
        None,
        None,
        indices,
        false,
        &seed,
        &offset,
        samples,
    )
}

/// FlashInfer `min_p_sampling_from_probs`: keeps `p >= min_p * max(p)`;
/// `min_p` in [0, 1], scalar or per row.
///
/// ```
/// use xpu_ops::{min_p_sampling_from_probs, TensorView, TensorViewMut};
/// let probs = [0.05f32, 0.9, 0.05];
/// let mut out = [0i32; 1];
/// min_p_sampling_from_probs(
///     &TensorView::new(&probs, &[1, 3])?, 0.1f32.into(), None, 9u64.into(), 0u64.into(),
///     &mut TensorViewMut::new(&mut out, &[1])?,
/// )?;
/// assert_eq!(out[0], 1);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn min_p_sampling_from_probs(
    probs: &TensorView,
    min_p: PerRow<f32>,
    indices: Option<&TensorView>,
    seed: PerRow<u64>,
    offset: PerRow<u64>,
    samples: &mut TensorViewMut,
) -> Result<()> {
    flashinfer_sample(
        "min_p_sampling_from_probs",
        probs,
        "probs",
        false,
        None,
        None,
        Some(&min_p),
        indices,
        false,
        &seed,
        &offset,
        samples,
    )
}

/// FlashInfer `top_k_top_p_sampling_from_probs`. `filter_apply_order`:
/// `"top_k_first"` (top-k, renormalise, then top-p) or `"joint"` (top-p mass
/// measured against the whole row).
///
/// ```
/// use xpu_ops::{top_k_top_p_sampling_from_probs, TensorView, TensorViewMut};
/// let probs = [0.4f32, 0.3, 0.2, 0.1];
/// let mut out = [0i32; 1];
/// top_k_top_p_sampling_from_probs(
///     &TensorView::new(&probs, &[1, 4])?, 2i64.into(), 0.5f32.into(), None, "top_k_first",
///     5u64.into(), 0u64.into(), &mut TensorViewMut::new(&mut out, &[1])?,
/// )?;
/// assert!(out[0] == 0 || out[0] == 1);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn top_k_top_p_sampling_from_probs(
    probs: &TensorView,
    top_k: PerRow<i64>,
    top_p: PerRow<f32>,
    indices: Option<&TensorView>,
    filter_apply_order: &str,
    seed: PerRow<u64>,
    offset: PerRow<u64>,
    samples: &mut TensorViewMut,
) -> Result<()> {
    let joint = FilterApplyOrder::parse(filter_apply_order)? == FilterApplyOrder::Joint;
    flashinfer_sample(
        "top_k_top_p_sampling_from_probs",
        probs,
        "probs",
        false,
        Some(&top_k),
        Some(&top_p),
        None,
        indices,
        joint,
        &seed,
        &offset,
        samples,
    )
}

/// FlashInfer `top_k_top_p_sampling_from_logits`: as
/// [`top_k_top_p_sampling_from_probs`] over `softmax(logits)`.
///
/// ```
/// use xpu_ops::{top_k_top_p_sampling_from_logits, TensorView, TensorViewMut};
/// let logits = [1.0f32, 3.0, 2.0, -1.0];
/// let mut out = [0i32; 1];
/// top_k_top_p_sampling_from_logits(
///     &TensorView::new(&logits, &[1, 4])?, 2i64.into(), 0.9f32.into(), None, "top_k_first",
///     11u64.into(), 0u64.into(), &mut TensorViewMut::new(&mut out, &[1])?,
/// )?;
/// assert!(out[0] == 1 || out[0] == 2);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn top_k_top_p_sampling_from_logits(
    logits: &TensorView,
    top_k: PerRow<i64>,
    top_p: PerRow<f32>,
    indices: Option<&TensorView>,
    filter_apply_order: &str,
    seed: PerRow<u64>,
    offset: PerRow<u64>,
    samples: &mut TensorViewMut,
) -> Result<()> {
    let joint = FilterApplyOrder::parse(filter_apply_order)? == FilterApplyOrder::Joint;
    flashinfer_sample(
        "top_k_top_p_sampling_from_logits",
        logits,
        "logits",
        true,
        Some(&top_k),
        Some(&top_p),
        None,
        indices,
        joint,
        &seed,
        &offset,
        samples,
    )
}

/// Runs the two filter phases; `out` is written only if every row is valid.
#[allow(clippy::too_many_arguments)]
fn run_filter(
    op: &'static str,
    x: &TensorView,
    x_name: &str,
    is_logits: bool,
    top_k: Option<Vec<i32>>,
    top_p: Option<Vec<f32>>,
    out: &mut TensorViewMut,
    out_name: &str,
) -> Result<()> {
    let _span = trace::op(op, &[(x_name, x.layout()), (out_name, out.layout())]);
    let (rows, vocab, stride) = check_rows(x, x_name)?;
    check::on_cpu(&[(out_name, out.layout())])?;
    check::rank(out.layout(), out_name, 2, "[batch_size, vocab_size]")?;
    check::dim(out.layout(), out_name, 0, rows, "batch_size")?;
    check::dim(out.layout(), out_name, 1, vocab, "vocab_size")?;
    check::same_dtype(x.layout(), x_name, out.layout(), out_name)?;
    check::inner_contiguous(out.layout(), out_name)?;
    let (o, i) = (
        check::byte_range(out.as_ptr(), out.layout()),
        check::byte_range(x.as_ptr(), x.layout()),
    );
    let identical = out.as_ptr() == x.as_ptr() && out.layout() == x.layout();
    if !identical && o.0 < i.1 && i.0 < o.1 {
        bail!(
            Aliasing,
            "`{out_name}` partially overlaps `{x_name}` (in place is fine)"
        );
    }
    let mut threshold = vec![0u32; rows];
    let mut kept_sum = vec![0f64; rows];
    let mut status = vec![0i32; rows];
    let mut mass = vec![0f64; rows];
    let args = sys::xk_filter_args {
        x: x.as_ptr().cast(),
        x_row_stride: stride as i64,
        x_dtype: x.dtype().xk(),
        is_logits: is_logits as i32,
        vocab: vocab as i64,
        top_k: top_k.as_ref().map_or(std::ptr::null(), |k| k.as_ptr()),
        top_p: top_p.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
        threshold: threshold.as_mut_ptr(),
        kept_sum: kept_sum.as_mut_ptr(),
        status: status.as_mut_ptr(),
        mass: mass.as_mut_ptr(),
        out: out.as_mut_ptr().cast(),
        out_row_stride: out.strides()[0] as i64,
        out_dtype: out.dtype().xk(),
        cap: CANDIDATE_CAP,
    };
    let kernels = platform::kernels();
    let phase1 = kernels.filter_rows.expect("filter_rows");
    let phase2 = kernels.filter_apply.expect("filter_apply");
    let bytes = workspace_bytes();
    let args = Shared(args);
    grid(rows, 1, |r| {
        with_workspace(bytes, |ws| {
            // SAFETY: validated views; phase 1 only reads `x` and writes its own rows of the arrays.
            unsafe { phase1(args.get(), r.start as i64, r.end as i64, ws) }
        })
    });
    let kind = if is_logits { "logits" } else { "probs" };
    if let Some(b) = status.iter().position(|&s| s != 0) {
        return Err(row_error(status[b], x_name, b as i64, kind));
    }
    if !is_logits {
        let rows_ix: Vec<i64> = (0..rows as i64).collect();
        check_mass(x.dtype(), x_name, &rows_ix, &mass)?;
    }
    grid(rows, 1, |r| {
        // SAFETY: rows write disjoint output rows; an in-place output row is
        // read element by element before it is written.
        unsafe { phase2(args.get(), r.start as i64, r.end as i64) }
    });
    Ok(())
}

/// FlashInfer `top_k_renorm_probs`: keeps the top-k probabilities of each
/// row (ties kept), zeroes the rest and renormalises, into `renorm_probs`
/// (same shape and dtype as `probs`; may be `probs` itself). The kept sum is
/// accumulated in fp64; outputs are within 1 ulp of `p / sum` in fp64.
///
/// ```
/// use xpu_ops::{top_k_renorm_probs, TensorView, TensorViewMut};
/// let probs = [0.1f32, 0.6, 0.3];
/// let mut out = [0f32; 3];
/// top_k_renorm_probs(&TensorView::new(&probs, &[1, 3])?, 2i64.into(),
///                    &mut TensorViewMut::new(&mut out, &[1, 3])?)?;
/// assert_eq!(out[0], 0.0);
/// assert!((out[1] - 2.0 / 3.0).abs() < 1e-6);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn top_k_renorm_probs(
    probs: &TensorView,
    top_k: PerRow<i64>,
    renorm_probs: &mut TensorViewMut,
) -> Result<()> {
    let (rows, vocab, _) = check_rows(probs, "probs")?;
    let k = flashinfer_top_k(&top_k, rows, vocab)?;
    run_filter(
        "top_k_renorm_probs",
        probs,
        "probs",
        false,
        Some(k),
        None,
        renorm_probs,
        "renorm_probs",
    )
}

/// FlashInfer `top_p_renorm_probs`: keeps each row's top-p nucleus (as the
/// module docs define it), zeroes the rest and renormalises.
///
/// ```
/// use xpu_ops::{top_p_renorm_probs, TensorView, TensorViewMut};
/// let probs = [0.2f32, 0.5, 0.3];
/// let mut out = [0f32; 3];
/// top_p_renorm_probs(&TensorView::new(&probs, &[1, 3])?, 0.6f32.into(),
///                    &mut TensorViewMut::new(&mut out, &[1, 3])?)?;
/// assert_eq!(out[0], 0.0);
/// assert!((out[1] - 0.625).abs() < 1e-6 && (out[2] - 0.375).abs() < 1e-6);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn top_p_renorm_probs(
    probs: &TensorView,
    top_p: PerRow<f32>,
    renorm_probs: &mut TensorViewMut,
) -> Result<()> {
    let (rows, _, _) = check_rows(probs, "probs")?;
    let p = top_p_values(&top_p, rows)?;
    run_filter(
        "top_p_renorm_probs",
        probs,
        "probs",
        false,
        None,
        Some(p),
        renorm_probs,
        "renorm_probs",
    )
}

/// FlashInfer `top_k_mask_logits`: keeps the top-k logits of each row (ties
/// kept) and sets the rest to `-inf`, into `masked_logits` (same shape and
/// dtype; may be `logits` itself).
///
/// ```
/// use xpu_ops::{top_k_mask_logits, TensorView, TensorViewMut};
/// let logits = [1.0f32, 3.0, 2.0];
/// let mut out = [0f32; 3];
/// top_k_mask_logits(&TensorView::new(&logits, &[1, 3])?, 2i64.into(),
///                   &mut TensorViewMut::new(&mut out, &[1, 3])?)?;
/// assert_eq!(out, [f32::NEG_INFINITY, 3.0, 2.0]);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn top_k_mask_logits(
    logits: &TensorView,
    top_k: PerRow<i64>,
    masked_logits: &mut TensorViewMut,
) -> Result<()> {
    let (rows, vocab, _) = check_rows(logits, "logits")?;
    let k = flashinfer_top_k(&top_k, rows, vocab)?;
    run_filter(
        "top_k_mask_logits",
        logits,
        "logits",
        true,
        Some(k),
        None,
        masked_logits,
        "masked_logits",
    )
}

// ---- vLLM -----------------------------------------------------------------

/// Token lists of one request, as vLLM's padded `[batch, max_len]` tensors.
fn token_lists(
    t: Option<&TensorView>,
    name: &str,
    batch: usize,
    vocab: usize,
    pad: i64,
) -> Result<Vec<Vec<i64>>> {
    let Some(t) = t else {
        return Ok(vec![Vec::new(); batch]);
    };
    check::on_cpu(&[(name, t.layout())])?;
    check::rank(t.layout(), name, 2, "[batch_size, max_len]")?;
    check::dtype_in(t.layout(), name, &[DType::I32, DType::I64])?;
    check::dim(t.layout(), name, 0, batch, "batch_size")?;
    let mut lists = Vec::with_capacity(batch);
    for b in 0..batch {
        let mut l = Vec::new();
        for j in 0..t.shape()[1] {
            let id = t.get_i64(&[b, j]);
            if id == pad {
                continue;
            }
            if id < 0 || id >= vocab as i64 {
                bail!(
                    IndexOutOfRange,
                    "{name}[{b}, {j}] = {id} is outside the vocabulary [0, {vocab}) (padding is {pad})"
                );
            }
            l.push(id);
        }
        lists.push(l);
    }
    Ok(lists)
}

/// vLLM's penalties for one row, applied to `row` in f32 in vLLM's order:
/// repetition over prompt ∪ output tokens (`x > 0 ? x / r : x * r`), then
/// `x -= frequency * count` and `x -= presence` over output tokens.
fn penalize_row(row: &mut [f32], prompt: &[i64], output: &[i64], pres: f32, freq: f32, rep: f32) {
    let mut counts: HashMap<i64, u32> = HashMap::new();
    for &t in output {
        *counts.entry(t).or_insert(0) += 1;
    }
    let seen: HashSet<i64> = prompt.iter().chain(output).copied().collect();
    for &t in &seen {
        let x = &mut row[t as usize];
        *x = if *x > 0.0 { *x / rep } else { *x * rep };
    }
    for (&t, &c) in &counts {
        let x = &mut row[t as usize];
        *x -= freq * c as f32;
        *x -= pres;
    }
}

struct Penalties {
    prompt: Vec<Vec<i64>>,
    output: Vec<Vec<i64>>,
    presence: Vec<f32>,
    frequency: Vec<f32>,
    repetition: Vec<f32>,
}

impl Penalties {
    fn active(&self, b: usize) -> bool {
        let any_tokens = !self.prompt[b].is_empty() || !self.output[b].is_empty();
        any_tokens
            && (self.repetition[b] != 1.0 || self.frequency[b] != 0.0 || self.presence[b] != 0.0)
    }
}

#[allow(clippy::too_many_arguments)]
fn resolve_penalties(
    batch: usize,
    vocab: usize,
    prompt_token_ids: Option<&TensorView>,
    output_token_ids: Option<&TensorView>,
    presence: Option<&PerRow<f32>>,
    frequency: Option<&PerRow<f32>>,
    repetition: Option<&PerRow<f32>>,
    pad: i64,
) -> Result<Penalties> {
    let finite = |v: f32| v.is_finite();
    let or = |p: Option<&PerRow<f32>>, name, dflt: f32, valid: &dyn Fn(f32) -> bool, dom| {
        p.map_or(Ok(vec![dflt; batch]), |p| {
            resolve_f32(p, name, batch, valid, dom)
        })
    };
    Ok(Penalties {
        presence: or(presence, "presence_penalties", 0.0, &finite, "finite")?,
        frequency: or(frequency, "frequency_penalties", 0.0, &finite, "finite")?,
        repetition: or(
            repetition,
            "repetition_penalties",
            1.0,
            &|v: f32| v.is_finite() && v > 0.0,
            "finite and > 0",
        )?,
        prompt: token_lists(prompt_token_ids, "prompt_token_ids", batch, vocab, pad)?,
        output: token_lists(output_token_ids, "output_token_ids", batch, vocab, pad)?,
    })
}

/// vLLM `apply_penalties`, in place on `logits` `[batch, vocab]` (f32, f16 or
/// bf16; arithmetic in f32): repetition penalties over prompt ∪ output tokens,
/// then frequency and presence penalties over output tokens (OpenAI's
/// definitions, as vLLM). Token tensors are int32/int64 `[batch, max_len]`
/// padded with `pad_token_id` (vLLM pads with `vocab_size`; pass that).
/// Penalty tensors are `[batch]`. Results equal vLLM's f32 arithmetic exactly.
///
/// ```
/// use xpu_ops::{apply_penalties, TensorView, TensorViewMut};
/// let mut logits = [2.0f32, -1.0, 0.5];
/// let prompt = [0i64, 3]; // 3 = vocab_size = padding
/// let output = [1i64, 1];
/// apply_penalties(
///     &mut TensorViewMut::new(&mut logits, &[1, 3])?,
///     &TensorView::new(&prompt, &[1, 2])?, &TensorView::new(&output, &[1, 2])?,
///     &TensorView::new(&[0.5f32], &[1])?, &TensorView::new(&[0.25f32], &[1])?,
///     &TensorView::new(&[2.0f32], &[1])?, 3,
/// )?;
/// assert_eq!(logits, [1.0, -1.0 * 2.0 - 0.25 * 2.0 - 0.5, 0.5]);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn apply_penalties(
    logits: &mut TensorViewMut,
    prompt_token_ids: &TensorView,
    output_token_ids: &TensorView,
    presence_penalties: &TensorView,
    frequency_penalties: &TensorView,
    repetition_penalties: &TensorView,
    pad_token_id: i64,
) -> Result<()> {
    let _span = trace::op(
        "apply_penalties",
        &[
            ("logits", logits.layout()),
            ("prompt_token_ids", prompt_token_ids.layout()),
            ("output_token_ids", output_token_ids.layout()),
        ],
    );
    check::on_cpu(&[("logits", logits.layout())])?;
    check::rank(logits.layout(), "logits", 2, "[batch_size, vocab_size]")?;
    check::dtype_in(logits.layout(), "logits", &VALUE_DTYPES)?;
    let (batch, vocab) = (logits.shape()[0], logits.shape()[1]);
    let pen = resolve_penalties(
        batch,
        vocab,
        Some(prompt_token_ids),
        Some(output_token_ids),
        Some(&PerRow::Tensor(presence_penalties)),
        Some(&PerRow::Tensor(frequency_penalties)),
        Some(&PerRow::Tensor(repetition_penalties)),
        pad_token_id,
    )?;
    let lay = logits.layout().clone();
    for (name, t) in [
        ("prompt_token_ids", prompt_token_ids),
        ("output_token_ids", output_token_ids),
        ("presence_penalties", presence_penalties),
        ("frequency_penalties", frequency_penalties),
        ("repetition_penalties", repetition_penalties),
    ] {
        check_disjoint(
            (logits.as_ptr(), &lay, "logits"),
            &[(t.as_ptr(), t.layout(), name)],
        )?;
    }
    for b in 0..batch {
        let touched: HashSet<i64> = pen.prompt[b]
            .iter()
            .chain(&pen.output[b])
            .copied()
            .collect();
        if touched.is_empty() {
            continue;
        }
        // Only the touched tokens change: gather them, penalise, scatter.
        let ids: Vec<i64> = touched.into_iter().collect();
        let mut dense: HashMap<i64, usize> = HashMap::new();
        let mut vals: Vec<f32> = Vec::with_capacity(ids.len());
        for (j, &t) in ids.iter().enumerate() {
            dense.insert(t, j);
            vals.push(logits.get_f32(&[b, t as usize]));
        }
        let remap = |l: &[i64]| -> Vec<i64> { l.iter().map(|t| dense[t] as i64).collect() };
        penalize_row(
            &mut vals,
            &remap(&pen.prompt[b]),
            &remap(&pen.output[b]),
            pen.presence[b],
            pen.frequency[b],
            pen.repetition[b],
        );
        for (j, &t) in ids.iter().enumerate() {
            logits.set_f32(&[b, t as usize], vals[j]);
        }
    }
    Ok(())
}

/// vLLM's per-request sampling parameters for [`sampler_forward`]. Every
/// per-row tensor is `[batch]`.
#[derive(Debug, Clone)]
pub struct SamplingMetadata<'a> {
    /// `None` = every row greedy (vLLM's `all_greedy`). Rows below
    /// [`SAMPLING_EPS`] are greedy; negative or non-finite values are errors.
    pub temperature: Option<PerRow<'a, f32>>,
    /// `None` = off; per row `0` or `-1` = off, `>= vocab_size` = off, other
    /// negatives are errors.
    pub top_k: Option<PerRow<'a, i64>>,
    /// `None` = off; (0, 1].
    pub top_p: Option<PerRow<'a, f32>>,
    /// `None` = off; [0, 1].
    pub min_p: Option<PerRow<'a, f32>>,
    /// Philox stream (see the module docs); per-row seeds make each request
    /// independent of its batch.
    pub seed: PerRow<'a, u64>,
    pub offset: PerRow<'a, u64>,
    /// int32/int64 `[batch, max_prompt_len]`, padded with `pad_token_id`.
    pub prompt_token_ids: Option<&'a TensorView<'a>>,
    /// int32/int64 `[batch, max_output_len]`, padded with `pad_token_id`.
    pub output_token_ids: Option<&'a TensorView<'a>>,
    pub presence_penalties: Option<PerRow<'a, f32>>,
    pub frequency_penalties: Option<PerRow<'a, f32>>,
    pub repetition_penalties: Option<PerRow<'a, f32>>,
    /// The padding value in token lists (vLLM pads with `vocab_size`).
    pub pad_token_id: i64,
    /// Top-n raw logprobs to return (`None` = no logprobs).
    pub max_num_logprobs: Option<usize>,
}

impl Default for SamplingMetadata<'_> {
    fn default() -> Self {
        SamplingMetadata {
            temperature: Some(PerRow::Scalar(1.0)),
            top_k: None,
            top_p: None,
            min_p: None,
            seed: PerRow::Scalar(0),
            offset: PerRow::Scalar(0),
            prompt_token_ids: None,
            output_token_ids: None,
            presence_penalties: None,
            frequency_penalties: None,
            repetition_penalties: None,
            pad_token_id: -1,
            max_num_logprobs: None,
        }
    }
}

/// vLLM's `LogprobsTensors`, as outputs: `logprob_token_ids` int32/int64 and
/// `logprobs` f32, both `[batch, max_num_logprobs + 1]` (column 0 is the
/// sampled token, then the top-n by raw logit, ties by lower id), and
/// `selected_token_ranks` int32/int64 `[batch]`.
pub struct LogprobsTensorsMut<'s, 'a> {
    pub logprob_token_ids: &'s mut TensorViewMut<'a>,
    pub logprobs: &'s mut TensorViewMut<'a>,
    pub selected_token_ranks: &'s mut TensorViewMut<'a>,
}

/// vLLM's `Sampler.forward` as one fused op over `logits` `[batch, vocab]`
/// (f32/f16/bf16, not modified): raw logprobs if asked → repetition,
/// frequency and presence penalties → greedy rows (temperature <
/// [`SAMPLING_EPS`]: argmax, lowest id on ties) → temperature (`y = x / t` in
/// f32) → min-p → top-k → top-p → one Philox draw per row (module docs).
/// Writes `sampled_token_ids` (int32/int64 `[batch]` or `[batch, 1]`) and,
/// when `metadata.max_num_logprobs` is set, the raw logprobs: the sampled
/// token's logprob and rank (`#{j : logit_j >= logit_sampled}`) and the top-n.
/// Logprobs are `((double)x - max) - ln(sum exp)` in fp64 rounded once to f32
/// (the normaliser sums a fixed degree-13 exp in a fixed order, the same on
/// every tier): they equal an fp64 log-softmax rounded to f32 (the tests and
/// the `align` cases check it bit for bit), except where that fp64 value lies
/// within about 1e-11 of an f32 rounding boundary, where two fp64 sums in
/// different orders may round 1 ulp apart.
///
/// ```
/// use xpu_ops::{sampler_forward, PerRow, SamplingMetadata, TensorView, TensorViewMut};
/// let logits = [0.0f32, 2.0, 1.0, /* row 1 */ 5.0, 1.0, 0.0];
/// let temp = [0.0f32, 0.7];
/// let t = TensorView::new(&temp, &[2])?;
/// let meta = SamplingMetadata {
///     temperature: Some(PerRow::Tensor(&t)),
///     top_k: Some(2i64.into()),
///     max_num_logprobs: Some(1),
///     ..Default::default()
/// };
/// let (mut ids, mut lp_ids, mut lps, mut ranks) = ([0i32; 2], [0i32; 4], [0f32; 4], [0i64; 2]);
/// sampler_forward(
///     &TensorView::new(&logits, &[2, 3])?, &meta,
///     &mut TensorViewMut::new(&mut ids, &[2])?,
///     Some(xpu_ops::LogprobsTensorsMut {
///         logprob_token_ids: &mut TensorViewMut::new(&mut lp_ids, &[2, 2])?,
///         logprobs: &mut TensorViewMut::new(&mut lps, &[2, 2])?,
///         selected_token_ranks: &mut TensorViewMut::new(&mut ranks, &[2])?,
///     }),
/// )?;
/// assert_eq!(ids[0], 1); // greedy
/// assert!(ids[1] == 0 || ids[1] == 1); // top-2
/// assert_eq!((lp_ids[0], ranks[0], lp_ids[1]), (1, 1, 1));
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn sampler_forward(
    logits: &TensorView,
    metadata: &SamplingMetadata,
    sampled_token_ids: &mut TensorViewMut,
    logprobs: Option<LogprobsTensorsMut>,
) -> Result<()> {
    let _span = trace::op(
        "sampler_forward",
        &[
            ("logits", logits.layout()),
            ("sampled_token_ids", sampled_token_ids.layout()),
        ],
    );
    let (batch, vocab, _) = check_rows(logits, "logits")?;
    check_ids_out(sampled_token_ids.layout(), "sampled_token_ids", batch)?;
    let md = metadata;
    // Parameters.
    let temperature = md
        .temperature
        .as_ref()
        .map(|t| {
            resolve_f32(
                t,
                "temperature",
                batch,
                |v| v.is_finite() && v >= 0.0,
                "finite and >= 0",
            )
        })
        .transpose()?;
    let greedy: Vec<u8> = match &temperature {
        None => vec![1; batch],
        Some(t) => t.iter().map(|&v| (v < SAMPLING_EPS) as u8).collect(),
    };
    let top_k = md
        .top_k
        .as_ref()
        .map(|k| -> Result<Vec<i32>> {
            let k = resolve_i64(k, "top_k", batch)?;
            if let Some((b, v)) = k.iter().enumerate().find(|(_, &v)| v < -1) {
                bail!(
                    InvalidValue,
                    "top_k[{b}] = {v}: top_k must be >= 1, or 0 / -1 for off"
                );
            }
            Ok(k.iter()
                .map(|&v| {
                    if v <= 0 || v >= vocab as i64 {
                        0
                    } else {
                        v as i32
                    }
                })
                .collect())
        })
        .transpose()?;
    let top_p = md
        .top_p
        .as_ref()
        .map(|p| top_p_values(p, batch))
        .transpose()?;
    let min_p = md
        .min_p
        .as_ref()
        .map(|p| min_p_values(p, batch))
        .transpose()?;
    let (seed, offset, subsequence) = resolve_rng(&md.seed, &md.offset, batch)?;
    let pen = resolve_penalties(
        batch,
        vocab,
        md.prompt_token_ids,
        md.output_token_ids,
        md.presence_penalties.as_ref(),
        md.frequency_penalties.as_ref(),
        md.repetition_penalties.as_ref(),
        md.pad_token_id,
    )?;
    let num_logprobs = match md.max_num_logprobs {
        None => -1,
        Some(n) if n > MAX_NUM_LOGPROBS.min(vocab) => bail!(
            Unsupported,
            "max_num_logprobs = {n} exceeds min(vocab_size, {MAX_NUM_LOGPROBS}) = {}",
            MAX_NUM_LOGPROBS.min(vocab)
        ),
        Some(n) => n as i32,
    };
    // Outputs.
    let mut inputs: Vec<(*const u8, &Layout, &str)> =
        vec![(logits.as_ptr(), logits.layout(), "logits")];
    for (t, name) in [
        (md.prompt_token_ids, "prompt_token_ids"),
        (md.output_token_ids, "output_token_ids"),
    ] {
        if let Some(t) = t {
            inputs.push((t.as_ptr(), t.layout(), name));
        }
    }
    for (p, name) in [
        (&md.temperature, "temperature"),
        (&md.top_p, "top_p"),
        (&md.min_p, "min_p"),
        (&md.presence_penalties, "presence_penalties"),
        (&md.frequency_penalties, "frequency_penalties"),
        (&md.repetition_penalties, "repetition_penalties"),
    ] {
        if let Some(PerRow::Tensor(t)) = p {
            inputs.push((t.as_ptr(), t.layout(), name));
        }
    }
    for (p, name) in [(&md.seed, "seed"), (&md.offset, "offset")] {
        if let PerRow::Tensor(t) = p {
            inputs.push((t.as_ptr(), t.layout(), name));
        }
    }
    if let Some(PerRow::Tensor(t)) = &md.top_k {
        inputs.push((t.as_ptr(), t.layout(), "top_k"));
    }
    check_disjoint(
        (
            sampled_token_ids.as_ptr(),
            sampled_token_ids.layout(),
            "sampled_token_ids",
        ),
        &inputs,
    )?;
    if let Some(lp) = &logprobs {
        let n1 = num_logprobs.max(0) as usize + 1;
        if num_logprobs < 0 {
            bail!(
                InvalidArgument,
                "logprobs outputs were given but metadata.max_num_logprobs is None"
            );
        }
        for (t, name, dtypes) in [
            (
                &*lp.logprob_token_ids,
                "logprob_token_ids",
                &[DType::I32, DType::I64][..],
            ),
            (&*lp.logprobs, "logprobs", &[DType::F32][..]),
        ] {
            check::on_cpu(&[(name, t.layout())])?;
            check::dtype_in(t.layout(), name, dtypes)?;
            check::rank(t.layout(), name, 2, "[batch_size, max_num_logprobs + 1]")?;
            check::dim(t.layout(), name, 0, batch, "batch_size")?;
            check::dim(t.layout(), name, 1, n1, "max_num_logprobs + 1")?;
            check_disjoint((t.as_ptr(), t.layout(), name), &inputs)?;
        }
        let r = &*lp.selected_token_ranks;
        check::on_cpu(&[("selected_token_ranks", r.layout())])?;
        check::dtype_in(
            r.layout(),
            "selected_token_ranks",
            &[DType::I32, DType::I64],
        )?;
        check::rank(r.layout(), "selected_token_ranks", 1, "[batch_size]")?;
        check::dim(r.layout(), "selected_token_ranks", 0, batch, "batch_size")?;
        check_disjoint((r.as_ptr(), r.layout(), "selected_token_ranks"), &inputs)?;
        let outs = [
            (
                sampled_token_ids.as_ptr(),
                sampled_token_ids.layout(),
                "sampled_token_ids",
            ),
            (
                lp.logprob_token_ids.as_ptr(),
                lp.logprob_token_ids.layout(),
                "logprob_token_ids",
            ),
            (lp.logprobs.as_ptr(), lp.logprobs.layout(), "logprobs"),
            (r.as_ptr(), r.layout(), "selected_token_ranks"),
        ];
        for i in 0..outs.len() {
            for j in i + 1..outs.len() {
                check_disjoint(outs[i], &[outs[j]])?;
            }
        }
    }
    // Penalised rows are copied to f32 and patched; other rows are read in place.
    let penalized = if (0..batch).any(|b| pen.active(b)) {
        let mut data = vec![0f32; batch * vocab];
        let mut flags = vec![0u8; batch];
        for b in (0..batch).filter(|&b| pen.active(b)) {
            let row = &mut data[b * vocab..(b + 1) * vocab];
            for (v, x) in row.iter_mut().enumerate() {
                *x = logits.get_f32(&[b, v]);
            }
            penalize_row(
                row,
                &pen.prompt[b],
                &pen.output[b],
                pen.presence[b],
                pen.frequency[b],
                pen.repetition[b],
            );
            flags[b] = 1;
        }
        Some((data, flags))
    } else {
        None
    };
    let job = SampleJob {
        x: logits,
        x_name: "logits",
        is_logits: true,
        row_index: (0..batch as i64).collect(),
        penalized,
        temperature: temperature.map(|t| {
            t.iter()
                .map(|&v| if v < SAMPLING_EPS { 1.0 } else { v })
                .collect()
        }),
        greedy: Some(greedy),
        top_k,
        top_p,
        min_p,
        joint: false,
        seed,
        offset,
        subsequence,
        num_logprobs,
    };
    let out = run_sample(&job)?;
    write_ids(sampled_token_ids, &out.samples);
    if let Some(lp) = logprobs {
        let n1 = num_logprobs as usize + 1;
        for b in 0..batch {
            for j in 0..n1 {
                let id = out.logprob_ids[b * n1 + j];
                let bits = if lp.logprob_token_ids.dtype() == DType::I32 {
                    id as i32 as u32 as u64
                } else {
                    id as u64
                };
                lp.logprob_token_ids.set_bits(&[b, j], bits);
                lp.logprobs.set_f32(&[b, j], out.logprobs[b * n1 + j]);
            }
        }
        write_ids(lp.selected_token_ranks, &out.ranks);
    }
    Ok(())
}

/// Philox4x32 with `rounds` rounds on the active tier's kernel (10 rounds is
/// Philox4x32-10, the generator every sampler draws from).
pub fn philox4x32(counter: [u32; 4], key: [u32; 2], rounds: u32) -> [u32; 4] {
    let f = platform::kernels().philox4x32.expect("philox4x32");
    let mut out = [0u32; 4];
    // SAFETY: fixed-size arrays of the sizes the kernel reads and writes.
    unsafe {
        f(
            counter.as_ptr(),
            key.as_ptr(),
            rounds as i32,
            out.as_mut_ptr(),
        )
    };
    out
}

/// The active tier's vectorised `exp_spec` kernels on arrays (f32 on
/// [-27.8, 0], f64 on [-700, 0]); the tests hold them to the scalar spec.
#[doc(hidden)]
pub fn exp_spec_probe(d32: &[f32], d64: &[f64]) -> (Vec<f32>, Vec<f64>) {
    let f = platform::kernels()
        .sampling_exp_probe
        .expect("sampling_exp_probe");
    let (mut e32, mut e64) = (vec![0f32; d32.len()], vec![0f64; d64.len()]);
    // SAFETY: every array holds the length passed with it.
    unsafe {
        f(
            d32.as_ptr(),
            e32.as_mut_ptr(),
            d32.len() as i64,
            d64.as_ptr(),
            e64.as_mut_ptr(),
            d64.len() as i64,
        )
    };
    (e32, e64)
}
