//! Attention ops with the semantics of vLLM 0.8–0.10 and vllm-flash-attn:
//! [`paged_attention_v1`], [`paged_attention_v2`] (vLLM's paged decode over
//! the cache layout of [`reshape_and_cache`]), [`flash_attn_varlen_func`]
//! (varlen attention over the flash cache layout with a `block_table`:
//! prefill, decode and mixed batches) and [`merge_attn_states`].
//!
//! Numerics, shared by every op and ISA tier: logits and softmax in fp32, fp8
//! keys and values dequantised as `fp8 · scale` (the scale multiplies the
//! fp32 dot product and the fp32 accumulator), probabilities rounded to the
//! query dtype before P·V, fp32 accumulation, the output rounded once to the
//! query dtype. vLLM rounds a dequantised fp8 key or value to the query dtype
//! first; here it is not rounded (the difference is at most half an ulp of the
//! query dtype per element).
//!
//! Tolerance against [`crate::reference::attention`] (f64, same rounding
//! points), for outputs `o` of a softmax over values `v`:
//! `|o − ref| ≤ atol·max|v| + rtol·|ref|` with (atol, rtol) = (5e-6, 5e-6)
//! for f32, (8e-4, 1e-3) for f16 and (6e-3, 8e-3) for bf16 queries, fp8
//! caches included; LSEs within 2e-4·(1 + |lse|). Measured worst cases over
//! the test suite (every tier, both bf16 paths) stay under 0.4 of these
//! bounds; the varlen op is the loosest, because it rounds each probability
//! against a running maximum (as flash-attention does) while the reference
//! rounds against the row's final maximum. A probability may also round to
//! the other neighbour than the reference's (fp32 versus f64 logits).
//!
//! Two paths compute bf16 attention on AVX-512 (see [`attention_bf16_dot`]);
//! both are held to the same tolerance and tested.
//!
//! Decode fast path (AVX-512 with AVX512-VBMI; bf16 or fp8 caches, block size
//! a multiple of 16, head size a multiple of 16 (paged) or 32/64 (varlen,
//! bf16/fp8), any query dtype): K and V are widened to fp32 in registers
//! (fp8 through exact byte tables) and multiplied with fp32 FMA, so products
//! are exact for bf16 queries and only the fp32 summation order differs from
//! the general paths; it runs with denormals flushed to zero (MXCSR FTZ/DAZ,
//! restored on return), as `vdpbf16ps` does: probabilities below 2^-126 of
//! the maximum count as 0 (effect below 1e-38 relative). v1/v2 keep their
//! two-pass softmax and varlen its steps, so the documented tolerance holds
//! unchanged (worst measured case 0.39 of it). See `XPU_OPS_ATTN_FAST`.
//!
//! AVX2 decode fast path ([`paged_attention_v1`] / [`paged_attention_v2`]
//! on the avx2 tier; bf16 or fp8 caches, block size a multiple of 16, head
//! size a multiple of 16, at most 16 query heads per KV head, any query
//! dtype): K and V are widened to fp32 in registers (bf16 by a shift or a
//! mask, fp8 e4m3/e5m2 by shifts, a mask and a power-of-two multiply: exact
//! for every code, subnormals included; Inf/NaN codes on a rare exact path)
//! and multiplied with fp32 FMA, all query heads of a KV head sharing each
//! load. Same rounding points as the general path (fp32 logits and softmax,
//! probabilities rounded to the query dtype, one rounding of the output);
//! only the fp32 summation order differs, within the tolerance. It runs with
//! MXCSR flush-to-zero (not DAZ; restored on return): products and
//! probabilities below 2^-126 count as 0. Results do not depend on the thread
//! count. `XPU_OPS_ATTN_FAST=0` (or [`with_attention_fast_decode`]) selects
//! the general path. See `xpu_src/cpu/attention.c` (`xe_paged`).
//! [`flash_attn_varlen_func`] calls whose work items are one query each
//! (decode rows; bf16 or fp8 caches, head size a multiple of 16 (32 for
//! fp8), at most 16 query heads per KV head, any block size) take the same
//! scheme over the flash layout (`xf_varlen`): attn_varlen's online softmax
//! in steps of 64 keys, masks, softcap, ALiBi, sinks, scales and LSE, with
//! the same rounding points and tolerance; thread-count independent.
//!
//! AMX prefill ([`flash_attn_varlen_func`] on the amx tier: bf16 queries and
//! cache, no softcap or ALiBi, head size a multiple of 64, work items of two
//! or more queries): FlashAttention-2 on the tile unit (`TDPBF16PS`, exact
//! bf16 products, fp32 accumulation, FTZ/DAZ), 256-key blocks aligned to key
//! 0, exp in fp32 to ~2.5e-6 relative (below the bf16 rounding of P), lazy
//! rescaling as in FlashAttention-4 (a block whose P, against the current
//! reference maximum, sum to at most 2^16 per row is taken in one pass
//! without moving it; otherwise the reference moves only when the block's
//! logits exceed it by more than 8 in log2 units; so P ≤ 2^16 before the
//! final 1/l; each P keeps the same relative rounding).
//! Same tolerance; results independent of threads and of how prefill is chunked,
//! except that a single-query chunk takes the decode path (another summation
//! order, within the tolerance).
//!
//! AVX2 prefill ([`flash_attn_varlen_func`] on the avx2 tier, calls with
//! work items of two or more queries): the query rows of a work item (64 on
//! this tier) lie across vector lanes, K and V rows are converted to f32 once
//! per item and kv head, Q·Kᵀ and P·V are register-blocked fp32 FMA products
//! and the online softmax runs down the columns; bit-identical to the general
//! loop over the same work items (same FMA chains, steps, exp and summation
//! order; with a left window the steps start at an item's first key, so the
//! item size moves them, within the tolerance). See `xpu_src/cpu/attention.c`.
//!
//! AMX decode path (the `amx` tier with the fast path allowed; v1/v2 with
//! bf16 queries over bf16 or fp8 caches (fp8 widened to bf16 exactly),
//! block size a multiple of 16, head size a
//! multiple of 16, at most 16 query heads per KV head): Q·Kᵀ and P·V run on
//! `TDPBF16PS` (exact bf16 products, fp32 sums in tile order) with the same
//! rounding points (fp32 logits and softmax, probabilities rounded to bf16,
//! one rounding of the output); results stay within the tolerance above and
//! do not depend on the thread count. See `xpu_src/cpu/amx/attn_decode.c`.
//! One difference in non-finite handling: Q·Kᵀ of up to 16 query heads runs
//! as one tile product over a pack of KV heads, so an Inf or NaN key element
//! inside one KV head's context (fp8 NaN codes, or a bf16 Inf/NaN) makes that
//! token's logits NaN for the pack's other KV heads too, where the general
//! paths keep it to its own heads. Likewise P·V of a bf16 cache runs two
//! (KV head, 64-dimension) pieces as one tile product, so an Inf or NaN
//! value element inside the context also makes one other output element NaN
//! (64 dimensions away, or in the neighbouring KV head). Slots past a sequence's length are never
//! read, so poisoned padding does not reach any output.
//! [`flash_attn_varlen_func`] work items of one query (decode rows; bf16
//! queries over bf16 or fp8 caches, head size a multiple of 32, at most 8
//! query heads per KV head) run on the same unit over the flash layout: K and
//! V rows are tile operands straight from the cache (fp8 widened to bf16
//! first), with attn_varlen's online softmax (steps of 64 keys for fp8
//! caches and of up to 128 keys, at most 128 KiB of key rows, for bf16; a
//! step's sum of probabilities is added as a tree, not token by token),
//! masks, softcap, ALiBi, sinks and LSE; same tolerance, thread-count
//! independent (the step depends on the call's shape only).
//!
//! [`reshape_and_cache`]: crate::reshape_and_cache

use crate::dtype::DType;
use crate::error::{bail, Result};
use crate::ops::cache::KvCacheDtype;
use crate::ops::check;
use crate::platform;
use crate::sys;
use crate::tensor::{Layout, TensorView, TensorViewMut};
use crate::threading::{grid, Shared};
use crate::trace;

/// Tokens per partition of [`paged_attention_v2`] (vLLM's `PARTITION_SIZE`).
pub const PARTITION_SIZE: usize = 512;
/// Head sizes the paged ops support (vLLM's list, plus 512).
pub const PAGED_HEAD_SIZES: [usize; 10] = [32, 64, 80, 96, 112, 120, 128, 192, 256, 512];
/// Block sizes the paged ops support.
pub const PAGED_BLOCK_SIZES: [usize; 5] = [8, 16, 32, 64, 128];
/// Largest head size of [`flash_attn_varlen_func`] (any multiple of 8 up to it).
pub const VARLEN_MAX_HEAD_SIZE: usize = 512;

const QUERY_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
/// Query rows (queries x heads of one KV head) a varlen work item aims for.
const VARLEN_TARGET_ROWS: usize = 32;
/// The same on the AMX tier's tile kernel (bf16 queries and cache, no softcap
/// or ALiBi, head size a multiple of 64), which repacks each K/V block once
/// per item and reuses it across all the item's rows (half for head sizes
/// over 256).
const VARLEN_AMX_ROWS: usize = 512;
/// The same on the avx2 tier, whose prefill kernel converts each K/V row to
/// f32 once per item and kv head for all the item's rows: 64 rows halve that
/// cost per FLOP (measured 5-10% faster than 32 at T=1024; 128 was slower).
const VARLEN_AVX2_ROWS: usize = 64;

fn empty_args() -> sys::xk_attn_args {
    // SAFETY: the struct is plain data (integers, floats, raw pointers); all
    // zeros is a valid value (NULL pointers, zero sizes).
    let mut a: sys::xk_attn_args = unsafe { std::mem::zeroed() };
    a.bf16_dot = bf16_dot() as i32;
    a.fast = fast_decode() as i32;
    a
}

thread_local! {
    static FAST: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether the decode fast path may run on the active tier: on AVX-512 (and
/// AMX) it needs AVX512-VBMI (fp8 codes are decoded by byte-table lookups);
/// on AVX2 it needs nothing more. On unless `XPU_OPS_ATTN_FAST=0`. It
/// computes the same exact products as the general paths, summed in another
/// order (results differ within the tolerance).
fn fast_decode() -> bool {
    static HW: std::sync::OnceLock<(bool, bool)> = std::sync::OnceLock::new();
    let (env, vbmi) = *HW.get_or_init(|| {
        let env = std::env::var("XPU_OPS_ATTN_FAST").as_deref() != Ok("0");
        #[cfg(target_arch = "x86_64")]
        {
            (env, std::arch::is_x86_feature_detected!("avx512vbmi"))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            (env, false)
        }
    });
    let tier = match platform::active_isa() {
        platform::Isa::Avx512 | platform::Isa::Amx => vbmi,
        platform::Isa::Avx2 => true,
        _ => false,
    };
    env && tier && FAST.with(|c| c.get()).unwrap_or(true)
}

/// Runs `f` with the decode fast path of attention ops called from this
/// thread allowed (`true`, the default on AVX2 and where an AVX-512 CPU has AVX512-VBMI) or
/// disabled (`false`, so the general paths run); the tests run both.
#[doc(hidden)]
pub fn with_attention_fast_decode<R>(on: bool, f: impl FnOnce() -> R) -> R {
    let prev = FAST.with(|c| c.replace(Some(on)));
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FAST.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(prev);
    f()
}

thread_local! {
    static BF16_DOT: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether the AVX-512 tier computes bf16 attention (bf16 queries over bf16
/// or fp8 caches) with `vdpbf16ps` on bf16 data (default), or widens K and V
/// to fp32 and uses FMA. The bf16 path stages half the bytes, which decides
/// decode; on cores where `vdpbf16ps` issues slowly (measured on an Intel
/// Xeon: a quarter of the FMA rate) prefill runs about even. Set
/// `XPU_OPS_ATTN_BF16_DOT=0` to use the fp32 path. The two paths form the
/// same exact products but sum in different orders: results differ within
/// the tolerance.
pub fn attention_bf16_dot() -> bool {
    bf16_dot()
}

fn bf16_dot() -> bool {
    static DEFAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    BF16_DOT.with(|c| c.get()).unwrap_or_else(|| {
        *DEFAULT.get_or_init(|| std::env::var("XPU_OPS_ATTN_BF16_DOT").as_deref() != Ok("0"))
    })
}

/// Runs `f` with attention ops called from this thread forced onto the
/// `vdpbf16ps` path (`true`) or the fp32 FMA path (`false`), whatever the
/// default (see [`attention_bf16_dot`]); the tests run both.
pub fn with_attention_bf16_dot<R>(on: bool, f: impl FnOnce() -> R) -> R {
    let prev = BF16_DOT.with(|c| c.replace(Some(on)));
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BF16_DOT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(prev);
    f()
}

fn strides_of<const N: usize>(t: &Layout) -> [i64; N] {
    let mut s = [0i64; N];
    for (d, &x) in s.iter_mut().zip(&t.strides) {
        *d = x as i64;
    }
    s
}

/// `[S, H, D]` query and output of the query dtype, head_size contiguous.
fn check_query_out(
    query: &Layout,
    out: &Layout,
    qn: &str,
    on: &str,
) -> Result<(usize, usize, usize)> {
    check::rank(query, qn, 3, "[num_tokens, num_heads, head_size]")?;
    check::dtype_in(query, qn, &QUERY_DTYPES)?;
    check::inner_contiguous(query, qn)?;
    check::rank(out, on, 3, "[num_tokens, num_heads, head_size]")?;
    check::same_dtype(query, qn, out, on)?;
    for d in 0..3 {
        check::dim(out, on, d, query.shape[d], &format!("dim {d} of `{qn}`"))?;
    }
    check::inner_contiguous(out, on)?;
    Ok((query.shape[0], query.shape[1], query.shape[2]))
}

fn check_heads(num_heads: usize, num_kv_heads: usize) -> Result<()> {
    if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        bail!(
            ShapeMismatch,
            "num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}"
        );
    }
    Ok(())
}

/// The values of an int32 vector of `len` elements.
fn i32_vector(t: &TensorView, name: &str, len: usize) -> Result<Vec<i32>> {
    check::rank(t.layout(), name, 1, "a vector")?;
    check::dtype_in(t.layout(), name, &[DType::I32])?;
    check::dim(t.layout(), name, 0, len, "the number of sequences")?;
    Ok((0..len).map(|i| t.get_i64(&[i]) as i32).collect())
}

/// Every sequence's blocks lie in the table and in the cache.
fn check_block_table(
    bt: &TensorView,
    name: &str,
    lens: &[i32],
    block_size: usize,
    num_blocks: usize,
) -> Result<()> {
    check::rank(bt.layout(), name, 2, "[num_seqs, max_num_blocks_per_seq]")?;
    check::dtype_in(bt.layout(), name, &[DType::I32])?;
    check::dim(bt.layout(), name, 0, lens.len(), "the number of sequences")?;
    let cols = bt.shape()[1];
    for (s, &len) in lens.iter().enumerate() {
        let need = (len as usize).div_ceil(block_size);
        if need > cols {
            bail!(
                IndexOutOfRange,
                "sequence {s} has {len} tokens = {need} blocks of {block_size}, but `{name}` has {cols} columns"
            );
        }
        for i in 0..need {
            let b = bt.get_i64(&[s, i]);
            if b < 0 || b as usize >= num_blocks {
                bail!(
                    IndexOutOfRange,
                    "`{name}`[{s}, {i}] = {b} is outside the cache's {num_blocks} blocks"
                );
            }
        }
    }
    Ok(())
}

fn check_lens(lens: &[i32], name: &str, max: usize, max_name: &str) -> Result<()> {
    for (i, &l) in lens.iter().enumerate() {
        if l < 0 {
            bail!(InvalidValue, "`{name}`[{i}] = {l} is negative");
        }
        if l as usize > max {
            bail!(
                InvalidValue,
                "`{name}`[{i}] = {l} exceeds {max_name} = {max}"
            );
        }
    }
    Ok(())
}

fn check_finite(x: f32, name: &str) -> Result<()> {
    if !x.is_finite() {
        bail!(InvalidValue, "`{name}` = {x} must be finite");
    }
    Ok(())
}

/// A per-head f32 table: `[H]` or, with `batch`, `[B, H]`; returned as a
/// contiguous copy and its sequence stride (0 when shared).
fn head_table(
    t: Option<&TensorView>,
    name: &str,
    heads: usize,
    batch: Option<usize>,
) -> Result<(Vec<f32>, i64)> {
    let Some(t) = t else {
        return Ok((Vec::new(), 0));
    };
    check::on_cpu(&[(name, t.layout())])?;
    check::dtype_in(t.layout(), name, &[DType::F32])?;
    match (t.shape(), batch) {
        ([n], _) if *n == heads => Ok(((0..heads).map(|i| t.get_f32(&[i])).collect(), 0)),
        ([b, n], Some(bb)) if *b == bb && *n == heads => {
            let v = (0..bb)
                .flat_map(|s| (0..heads).map(move |i| (s, i)))
                .map(|(s, i)| t.get_f32(&[s, i]))
                .collect();
            Ok((v, heads as i64))
        }
        (shape, _) => {
            let want = match batch {
                Some(b) => format!("[{heads}] or [{b}, {heads}]"),
                None => format!("[{heads}]"),
            };
            bail!(
                ShapeMismatch,
                "`{name}` must have shape {want}, got {shape:?}"
            )
        }
    }
}

/// An fp8 dequantisation scale: `[1]`, `[Hkv]` or (varlen) `[B, Hkv]`,
/// finite and positive; returned as a `[1 or B][Hkv]` table.
fn scale_table(
    t: Option<&TensorView>,
    name: &str,
    kv_heads: usize,
    batch: Option<usize>,
) -> Result<(Vec<f32>, i64)> {
    let Some(s) = t else {
        return Ok((Vec::new(), 0));
    };
    check::on_cpu(&[(name, s.layout())])?;
    check::dtype_in(s.layout(), name, &[DType::F32])?;
    let (v, stride) = if s.numel() == 1 && s.ndim() <= 1 {
        let x = s.get_f32(&vec![0; s.ndim()]);
        (vec![x; kv_heads], 0)
    } else {
        head_table(Some(s), name, kv_heads, batch).map_err(|mut e| {
            e.message = format!("{} (or [1])", e.message);
            e
        })?
    };
    if let Some((i, x)) = v
        .iter()
        .enumerate()
        .find(|(_, x)| !x.is_finite() || **x <= 0.0)
    {
        bail!(
            InvalidValue,
            "`{name}` element {i} = {x}: fp8 scales must be finite and positive"
        );
    }
    Ok((v, stride))
}

fn ptr_or_null(v: &[f32]) -> *const f32 {
    if v.is_empty() {
        std::ptr::null()
    } else {
        v.as_ptr()
    }
}

/// Outputs must not overlap each other or any input.
fn check_disjoint(
    outputs: &[(&str, *const u8, &Layout)],
    inputs: &[(&str, *const u8, &Layout)],
) -> Result<()> {
    let overlap = |a: &(&str, *const u8, &Layout), b: &(&str, *const u8, &Layout)| {
        let (ra, rb) = (check::byte_range(a.1, a.2), check::byte_range(b.1, b.2));
        ra.0 < ra.1 && rb.0 < rb.1 && ra.0 < rb.1 && rb.0 < ra.1
    };
    for (i, o) in outputs.iter().enumerate() {
        for other in outputs[i + 1..].iter().chain(inputs) {
            if overlap(o, other) {
                bail!(Aliasing, "`{}` overlaps `{}`", o.0, other.0);
            }
        }
    }
    Ok(())
}

/// Runs an attention kernel over `n` grid blocks, each grid chunk with its own workspace.
fn run_attn(
    args: &sys::xk_attn_args,
    n: usize,
    cost_per_block: usize,
    kernel: unsafe extern "C" fn(*const sys::xk_attn_args, *mut std::ffi::c_void, i64, i64),
) {
    let kernels = platform::kernels();
    let ws_fn = kernels
        .attn_workspace
        .expect("every kernel table has attn_workspace");
    // SAFETY: args is fully initialised; the function only reads sizes.
    let ws_bytes = unsafe { ws_fn(args) } as usize;
    let min_chunk = (1usize << 18) / cost_per_block.max(1);
    let args = Shared(*args);
    grid(n, min_chunk.max(1), |r| {
        with_workspace(ws_bytes, |ws| {
            // SAFETY: the launcher validated every pointer, shape, stride and
            // index the args reach; blocks write disjoint outputs; the
            // workspace has the size the kernel asked for (its contents are
            // scratch: the kernel initialises what it reads).
            unsafe { kernel(args.get(), ws.cast(), r.start as i64, r.end as i64) }
        })
    });
}

/// Runs `f` with a 64-byte aligned scratch buffer of `bytes`, kept per thread
/// between calls (fresh pages would cost a page fault per call).
fn with_workspace<R>(bytes: usize, f: impl FnOnce(*mut u8) -> R) -> R {
    use std::cell::RefCell;
    const KEEP: usize = 64 << 20;
    thread_local!(static WS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) });
    let words = bytes.div_ceil(8) + 8;
    if bytes > KEEP {
        let mut v = vec![0u64; words];
        let off = v.as_ptr().align_offset(64);
        // SAFETY: off < 64 bytes and the buffer has 64 spare bytes.
        return f(unsafe { (v.as_mut_ptr() as *mut u8).add(off) });
    }
    WS.with(|ws| {
        let mut v = ws.borrow_mut();
        if v.len() < words {
            v.resize(words, 0);
        }
        let off = v.as_ptr().align_offset(64);
        // SAFETY: as above.
        f(unsafe { (v.as_mut_ptr() as *mut u8).add(off) })
    })
}

/// Everything the two paged ops validate alike.
struct Paged {
    args: sys::xk_attn_args,
    seq_lens: Vec<i32>,
    alibi: Vec<f32>,
    k_scale: Vec<f32>,
    v_scale: Vec<f32>,
    num_seqs: usize,
    num_heads: usize,
    head_size: usize,
    cost: usize,
}

impl Paged {
    /// The kernel args, pointing into `self`'s tables.
    fn args(&self) -> sys::xk_attn_args {
        let mut a = self.args;
        a.seq_lens = self.seq_lens.as_ptr();
        a.alibi_slopes = ptr_or_null(&self.alibi);
        a.k_scale = ptr_or_null(&self.k_scale);
        a.v_scale = ptr_or_null(&self.v_scale);
        a
    }
}

#[allow(clippy::too_many_arguments)]
fn check_paged(
    out: &Layout,
    query: &TensorView,
    key_cache: &TensorView,
    value_cache: &TensorView,
    num_kv_heads: usize,
    scale: f32,
    block_tables: &TensorView,
    seq_lens: &TensorView,
    block_size: usize,
    max_seq_len: usize,
    alibi_slopes: Option<&TensorView>,
    kv_cache_dtype: &str,
    k_scale: Option<&TensorView>,
    v_scale: Option<&TensorView>,
) -> Result<Paged> {
    let kv_dtype = KvCacheDtype::parse(kv_cache_dtype)?;
    check::on_cpu(&[
        ("out", out),
        ("query", query.layout()),
        ("key_cache", key_cache.layout()),
        ("value_cache", value_cache.layout()),
        ("block_tables", block_tables.layout()),
        ("seq_lens", seq_lens.layout()),
    ])?;
    let (s, h, d) = check_query_out(query.layout(), out, "query", "out")?;
    check_heads(h, num_kv_heads)?;
    if !PAGED_HEAD_SIZES.contains(&d) {
        bail!(
            Unsupported,
            "head_size {d} is not supported; supported: {PAGED_HEAD_SIZES:?}"
        );
    }
    if !PAGED_BLOCK_SIZES.contains(&block_size) {
        bail!(
            Unsupported,
            "block_size {block_size} is not supported; supported: {PAGED_BLOCK_SIZES:?}"
        );
    }
    check_finite(scale, "scale")?;
    let (kc, vc) = (key_cache.layout(), value_cache.layout());
    check::same_dtype(kc, "key_cache", vc, "value_cache")?;
    let stored = kv_dtype.stored(query.dtype(), kc.dtype, "key_cache")?;
    check::rank(
        kc,
        "key_cache",
        5,
        "[num_blocks, num_kv_heads, head_size/x, block_size, x]",
    )?;
    check::rank(
        vc,
        "value_cache",
        4,
        "[num_blocks, num_kv_heads, head_size, block_size]",
    )?;
    let x = 16 / stored.size();
    let nb = kc.shape[0];
    check::dim(kc, "key_cache", 1, num_kv_heads, "num_kv_heads")?;
    if d % x != 0 {
        bail!(
            ShapeMismatch,
            "head_size {d} is not divisible by x = {x} ({stored} key_cache packs 16 bytes)"
        );
    }
    check::dim(kc, "key_cache", 2, d / x, "head_size / x")?;
    check::dim(kc, "key_cache", 3, block_size, "block_size")?;
    check::dim(kc, "key_cache", 4, x, "x = 16 bytes / element size")?;
    check::dim(vc, "value_cache", 0, nb, "num_blocks of `key_cache`")?;
    check::dim(vc, "value_cache", 1, num_kv_heads, "num_kv_heads")?;
    check::dim(vc, "value_cache", 2, d, "head_size")?;
    check::dim(vc, "value_cache", 3, block_size, "block_size")?;
    check::inner_contiguous(kc, "key_cache")?;
    check::inner_contiguous(vc, "value_cache")?;
    let lens = i32_vector(seq_lens, "seq_lens", s)?;
    check_lens(&lens, "seq_lens", max_seq_len, "max_seq_len")?;
    check_block_table(block_tables, "block_tables", &lens, block_size, nb)?;
    let (alibi, alibi_stride) = head_table(alibi_slopes, "alibi_slopes", h, None)?;
    let fp8 = stored.is_fp8();
    let (ks, kss) = if fp8 {
        scale_table(k_scale, "k_scale", num_kv_heads, None)?
    } else {
        (Vec::new(), 0)
    };
    let (vs, _) = if fp8 {
        scale_table(v_scale, "v_scale", num_kv_heads, None)?
    } else {
        (Vec::new(), 0)
    };
    let bts = block_tables.strides();
    let mut a = empty_args();
    a.kind = sys::xk_attn_kind_XK_ATTN_PAGED as i32;
    a.dtype = query.dtype().xk();
    a.cache_dtype = stored.xk();
    a.layout = sys::xk_cache_layout_XK_LAYOUT_PAGED as i32;
    a.num_seqs = s as i64;
    a.num_heads = h as i64;
    a.num_kv_heads = num_kv_heads as i64;
    a.head_size = d as i64;
    a.block_size = block_size as i64;
    a.query = query.as_ptr().cast();
    a.q_stride_token = query.strides()[0] as i64;
    a.q_stride_head = query.strides()[1] as i64;
    a.out_stride_token = out.strides[0] as i64;
    a.out_stride_head = out.strides[1] as i64;
    a.key_cache = key_cache.as_ptr().cast();
    a.value_cache = value_cache.as_ptr().cast();
    a.key_cache_strides = strides_of(kc);
    a.value_cache_strides = strides_of(vc);
    a.x = x as i64;
    a.block_tables = block_tables.as_ptr().cast();
    a.block_tables_stride_seq = bts[0] as i64;
    a.block_tables_stride_block = bts[1] as i64;
    a.scale = scale;
    a.alibi_stride_seq = alibi_stride;
    a.scale_stride_seq = kss;
    a.max_context = lens.iter().copied().max().unwrap_or(0) as i64;
    let total: usize = lens.iter().map(|&l| l as usize).sum();
    Ok(Paged {
        args: a,
        cost: (total / s.max(1)).max(1) * (h / num_kv_heads) * d,
        seq_lens: lens,
        alibi,
        k_scale: ks,
        v_scale: vs,
        num_seqs: s,
        num_heads: h,
        head_size: d,
    })
}

fn inputs<'a>(
    query: &'a TensorView,
    key_cache: &'a TensorView,
    value_cache: &'a TensorView,
    block_tables: &'a TensorView,
) -> [(&'static str, *const u8, &'a Layout); 4] {
    [
        ("query", query.as_ptr(), query.layout()),
        ("key_cache", key_cache.as_ptr(), key_cache.layout()),
        ("value_cache", value_cache.as_ptr(), value_cache.layout()),
        ("block_tables", block_tables.as_ptr(), block_tables.layout()),
    ]
}

/// vLLM's `paged_attention_v1`: decode attention of one query token per
/// sequence over the paged KV cache, one pass over each sequence.
///
/// * `out`, `query`: `[num_seqs, num_heads, head_size]`, f32/f16/bf16, any
///   token and head strides (a slice of a fused qkv tensor works), head_size
///   contiguous. Head sizes [`PAGED_HEAD_SIZES`].
/// * `key_cache` `[num_blocks, num_kv_heads, head_size/x, block_size, x]` and
///   `value_cache` `[num_blocks, num_kv_heads, head_size, block_size]` as
///   written by [`reshape_and_cache`](crate::reshape_and_cache);
///   `block_size` ∈ [`PAGED_BLOCK_SIZES`].
/// * `num_kv_heads`: query head `h` reads kv head `h / (num_heads / num_kv_heads)`.
/// * `block_tables`: int32 `[num_seqs, max_num_blocks_per_seq]`; `seq_lens`:
///   int32 `[num_seqs]`, each at most `max_seq_len`. Only the blocks a
///   sequence uses are read (and checked); slots past its length in its last
///   block are never read, whatever they hold.
/// * `alibi_slopes`: optional f32 `[num_heads]`: logit += slope·(t − len + 1).
/// * `kv_cache_dtype`, `k_scale`, `v_scale`: as `reshape_and_cache`; fp8
///   values are dequantised as `fp8 · scale` (scales `[1]` or `[num_kv_heads]`).
///
/// Softmax as vLLM: `p = e^{s − max} / (Σ e^{s − max} + 1e-6)` rounded to the
/// query dtype; a sequence of length 0 gives zeros. Tolerance: see the
/// [module docs](self).
///
/// ```
/// use xpu_ops::{paged_attention_v1, TensorView, TensorViewMut};
/// let (heads, d, bs, blocks) = (2, 32, 8, 2);
/// let x = 4; // f32 cache: 4 elements per 16 bytes
/// let q = vec![0.1f32; heads * d];
/// let kc = vec![0.5f32; blocks * heads * d * bs];
/// let vc = vec![2.0f32; blocks * heads * d * bs];
/// let mut out = vec![0f32; heads * d];
/// paged_attention_v1(
///     &mut TensorViewMut::new(&mut out, &[1, heads, d])?,
///     &TensorView::new(&q, &[1, heads, d])?,
///     &TensorView::new(&kc, &[blocks, heads, d / x, bs, x])?,
///     &TensorView::new(&vc, &[blocks, heads, d, bs])?,
///     heads, 0.125,
///     &TensorView::new(&[1i32, 0], &[1, 2])?,
///     &TensorView::new(&[11i32], &[1])?,
///     bs, 11, None, "auto", None, None,
/// )?;
/// assert!(out.iter().all(|&o| (o - 2.0).abs() < 1e-5)); // every value is 2
/// # Ok::<(), xpu_ops::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_v1(
    out: &mut TensorViewMut,
    query: &TensorView,
    key_cache: &TensorView,
    value_cache: &TensorView,
    num_kv_heads: usize,
    scale: f32,
    block_tables: &TensorView,
    seq_lens: &TensorView,
    block_size: usize,
    max_seq_len: usize,
    alibi_slopes: Option<&TensorView>,
    kv_cache_dtype: &str,
    k_scale: Option<&TensorView>,
    v_scale: Option<&TensorView>,
) -> Result<()> {
    let _span = trace::op(
        "paged_attention_v1",
        &[("query", query.layout()), ("key_cache", key_cache.layout())],
    );
    let p = check_paged(
        out.layout(),
        query,
        key_cache,
        value_cache,
        num_kv_heads,
        scale,
        block_tables,
        seq_lens,
        block_size,
        max_seq_len,
        alibi_slopes,
        kv_cache_dtype,
        k_scale,
        v_scale,
    )?;
    check_disjoint(
        &[("out", out.as_ptr(), out.layout())],
        &inputs(query, key_cache, value_cache, block_tables),
    )?;
    let mut a = p.args();
    a.out = out.as_mut_ptr().cast();
    let kernel = platform::kernels().attn_paged.expect("attn_paged");
    run_attn(&a, p.num_seqs * num_kv_heads, p.cost, kernel);
    Ok(())
}

/// vLLM's `paged_attention_v2`: [`paged_attention_v1`] split into partitions
/// of [`PARTITION_SIZE`] tokens that run in parallel, then reduced.
///
/// * `exp_sums`, `max_logits`: f32 `[num_seqs, num_heads, max_num_partitions]`;
///   `tmp_out`: `[num_seqs, num_heads, max_num_partitions, head_size]` of the
///   query dtype, with `max_num_partitions ≥ ⌈max_seq_len / 512⌉`.
///   Partition `p` of a sequence gets its max logit, its `Σ e^{s − max}` and
///   its normalised partial output (rounded to the query dtype); partitions
///   past a sequence's length are not written. `exp_sums` and `max_logits`
///   must have the same strides (vLLM allocates both alike).
/// * The reduction, as vLLM: one partition is copied; otherwise
///   `out = Σ_p tmp_out_p · w_p / (Σ_p w_p + 1e-6)` with
///   `w_p = exp_sums_p · e^{max_logits_p − max}`.
///
/// Other arguments and tolerance as [`paged_attention_v1`].
///
/// ```
/// use xpu_ops::{paged_attention_v2, TensorView, TensorViewMut};
/// let (heads, d, bs) = (1, 64, 16);
/// let len = 700; // two partitions
/// let blocks = (len + bs - 1) / bs;
/// let q = vec![0.0f32; heads * d]; // uniform attention
/// let kc = vec![1.0f32; blocks * heads * d * bs];
/// let vc: Vec<f32> = (0..blocks * d * bs).map(|i| (i % bs) as f32).collect();
/// let table: Vec<i32> = (0..blocks as i32).collect();
/// let (mut es, mut ml) = (vec![0f32; 2], vec![0f32; 2]);
/// let mut tmp = vec![0f32; 2 * d];
/// let mut out = vec![0f32; d];
/// xpu_ops::paged_attention_v2(
///     &mut TensorViewMut::new(&mut out, &[1, heads, d])?,
///     &mut TensorViewMut::new(&mut es, &[1, heads, 2])?,
///     &mut TensorViewMut::new(&mut ml, &[1, heads, 2])?,
///     &mut TensorViewMut::new(&mut tmp, &[1, heads, 2, d])?,
///     &TensorView::new(&q, &[1, heads, d])?,
///     &TensorView::new(&kc, &[blocks, heads, d / 4, bs, 4])?,
///     &TensorView::new(&vc, &[blocks, heads, d, bs])?,
///     heads, 0.125,
///     &TensorView::new(&table, &[1, blocks])?,
///     &TensorView::new(&[len as i32], &[1])?,
///     bs, len, None, "auto", None, None,
/// )?;
/// // The mean of the token offsets 0..16 over 700 tokens (43 full blocks + 12).
/// let want = (43.0 * 120.0 + 66.0) / 700.0;
/// assert!((out[0] - want).abs() < 1e-3, "{}", out[0]);
/// assert_eq!(es, [512.0, 188.0]);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_v2(
    out: &mut TensorViewMut,
    exp_sums: &mut TensorViewMut,
    max_logits: &mut TensorViewMut,
    tmp_out: &mut TensorViewMut,
    query: &TensorView,
    key_cache: &TensorView,
    value_cache: &TensorView,
    num_kv_heads: usize,
    scale: f32,
    block_tables: &TensorView,
    seq_lens: &TensorView,
    block_size: usize,
    max_seq_len: usize,
    alibi_slopes: Option<&TensorView>,
    kv_cache_dtype: &str,
    k_scale: Option<&TensorView>,
    v_scale: Option<&TensorView>,
) -> Result<()> {
    let _span = trace::op(
        "paged_attention_v2",
        &[
            ("query", query.layout()),
            ("key_cache", key_cache.layout()),
            ("tmp_out", tmp_out.layout()),
        ],
    );
    let p = check_paged(
        out.layout(),
        query,
        key_cache,
        value_cache,
        num_kv_heads,
        scale,
        block_tables,
        seq_lens,
        block_size,
        max_seq_len,
        alibi_slopes,
        kv_cache_dtype,
        k_scale,
        v_scale,
    )?;
    check::on_cpu(&[
        ("exp_sums", exp_sums.layout()),
        ("max_logits", max_logits.layout()),
        ("tmp_out", tmp_out.layout()),
    ])?;
    let (s, h, d) = (p.num_seqs, p.num_heads, p.head_size);
    let need = max_seq_len.div_ceil(PARTITION_SIZE);
    let what = "[num_seqs, num_heads, max_num_partitions]";
    for (t, name) in [
        (exp_sums.layout(), "exp_sums"),
        (max_logits.layout(), "max_logits"),
    ] {
        check::rank(t, name, 3, what)?;
        check::dtype_in(t, name, &[DType::F32])?;
        check::dim(t, name, 0, s, "num_seqs")?;
        check::dim(t, name, 1, h, "num_heads")?;
    }
    let np = exp_sums.shape()[2];
    check::dim(
        max_logits.layout(),
        "max_logits",
        2,
        np,
        "max_num_partitions of `exp_sums`",
    )?;
    if np < need {
        bail!(
            ShapeMismatch,
            "`exp_sums` has {np} partitions but max_seq_len {max_seq_len} needs ⌈{max_seq_len}/{PARTITION_SIZE}⌉ = {need}"
        );
    }
    if exp_sums.strides() != max_logits.strides() {
        bail!(
            InvalidStride,
            "`exp_sums` strides {:?} differ from `max_logits` strides {:?}",
            exp_sums.strides(),
            max_logits.strides()
        );
    }
    let tl = tmp_out.layout();
    check::rank(
        tl,
        "tmp_out",
        4,
        "[num_seqs, num_heads, max_num_partitions, head_size]",
    )?;
    check::same_dtype(query.layout(), "query", tl, "tmp_out")?;
    check::dim(tl, "tmp_out", 0, s, "num_seqs")?;
    check::dim(tl, "tmp_out", 1, h, "num_heads")?;
    check::dim(tl, "tmp_out", 2, np, "max_num_partitions of `exp_sums`")?;
    check::dim(tl, "tmp_out", 3, d, "head_size")?;
    check::inner_contiguous(tl, "tmp_out")?;
    check_disjoint(
        &[
            ("out", out.as_ptr(), out.layout()),
            ("exp_sums", exp_sums.as_ptr(), exp_sums.layout()),
            ("max_logits", max_logits.as_ptr(), max_logits.layout()),
            ("tmp_out", tmp_out.as_ptr(), tmp_out.layout()),
        ],
        &inputs(query, key_cache, value_cache, block_tables),
    )?;
    let mut a = p.args();
    a.out = out.as_mut_ptr().cast();
    a.partition_size = PARTITION_SIZE as i64;
    let used = (a.max_context as usize).div_ceil(PARTITION_SIZE);
    a.max_partitions = used as i64;
    a.exp_sums = exp_sums.as_mut_ptr().cast();
    a.max_logits = max_logits.as_mut_ptr().cast();
    a.part_strides = strides_of(exp_sums.layout());
    a.tmp_out = tmp_out.as_mut_ptr().cast();
    a.tmp_out_strides = strides_of(tmp_out.layout());
    let kernels = platform::kernels();
    let kernel = kernels.attn_paged.expect("attn_paged");
    let per_part = p.cost.min(PARTITION_SIZE * h / num_kv_heads * d);
    run_attn(&a, s * num_kv_heads * used, per_part, kernel);
    let reduce = kernels.attn_paged_reduce.expect("attn_paged_reduce");
    let a = Shared(a);
    grid(s * h, (1 << 14) / (d * used.max(1)).max(1), |r| {
        // SAFETY: validated as above; each (sequence, head) block writes its own out row.
        unsafe { reduce(a.get(), r.start as i64, r.end as i64) }
    });
    Ok(())
}

/// vllm-flash-attn's `flash_attn_varlen_func` over a paged flash-layout cache
/// (`block_table` given): one op for prefill, decode and mixed batches.
///
/// Arguments keep upstream's names and order; upstream options without a
/// meaning here are left out (`cu_seqlens_k` — the cache is always paged —,
/// `q_v`, `dropout_p`, `deterministic`, `return_attn_probs`,
/// `scheduler_metadata`, `q_descale`, `num_splits`, `fa_version`), and
/// `return_softmax_lse` is the optional `softmax_lse` output.
///
/// * `q`, `out`: `[total_q, num_heads, head_size]`, f32/f16/bf16, head_size a
///   multiple of 8 up to [`VARLEN_MAX_HEAD_SIZE`], contiguous; rows of
///   sequence `b` are `cu_seqlens_q[b] .. cu_seqlens_q[b + 1]` (rows past
///   `cu_seqlens_q[B]` are not written).
/// * `k`, `v`: caches `[num_blocks, block_size, num_kv_heads, head_size]`
///   (any stride order, head_size contiguous, so HND views work), of the
///   query dtype or fp8 (`float8_e4m3fn` / `float8_e5m2` tensors) dequantised
///   as `fp8 · k_descale` / `fp8 · v_descale` (f32 `[1]`, `[num_kv_heads]` or
///   `[B, num_kv_heads]`; ignored for other caches). Any block size.
/// * `cu_seqlens_q`: int32 `[B + 1]`, non-decreasing; each query length at
///   most `max_seqlen_q`. `seqused_k`: int32 `[B]`, keys per sequence (the
///   queries are the last ones), each at most `max_seqlen_k`.
/// * `block_table`: int32 `[B, max_blocks]`.
/// * `softmax_scale`: default `1/√head_size`. `causal`: query `i` of a
///   sequence sees keys `j ≤ i + k_len − q_len` (aligned to the end, so
///   chunked prefill works). `window_size` `(left, right)`: keys in
///   `[pos − left, pos + right]`, −1 unbounded. `softcap > 0`: logits
///   `softcap·tanh(s / softcap)`. `alibi_slopes`: f32 `[H]` or `[B, H]`,
///   logit −= `slope·|pos − j|`. `s_aux`: `[H]` sink logits (f32/f16/bf16)
///   that join the softmax denominator only.
/// * `softmax_lse`: optional f32 `[num_heads, total_q]`: the natural-log
///   sum of `e^{logit}` of each row (the sink included); −∞ for a row with
///   no keys (and no sink), whose output is 0.
///
/// Probabilities `e^{s − m}` (m a running maximum) are rounded to the query
/// dtype before P·V; the output divides by their unrounded fp32 sum.
/// Tolerance: see the [module docs](self).
///
/// ```
/// use xpu_ops::{flash_attn_varlen_func, TensorView, TensorViewMut};
/// let (h, d, bs) = (1, 8, 4);
/// // One sequence: 2 new queries over 3 keys (the last two are the queries').
/// let q = vec![0.0f32; 2 * h * d];
/// let kc = vec![0.0f32; 2 * bs * h * d];
/// let vc: Vec<f32> = (0..2 * bs * h * d).map(|i| (i / d) as f32).collect(); // value = token
/// let mut out = vec![0f32; 2 * h * d];
/// let mut lse = vec![0f32; 2];
/// flash_attn_varlen_func(
///     &TensorView::new(&q, &[2, h, d])?,
///     &TensorView::new(&kc, &[2, bs, h, d])?,
///     &TensorView::new(&vc, &[2, bs, h, d])?,
///     2, &TensorView::new(&[0i32, 2], &[2])?,
///     3, &TensorView::new(&[3i32], &[1])?,
///     None, true, (-1, -1), 0.0, None,
///     &TensorView::new(&[0i32, 1], &[1, 2])?,
///     Some(&mut TensorViewMut::new(&mut lse, &[h, 2])?),
///     &mut TensorViewMut::new(&mut out, &[2, h, d])?,
///     None, None, None,
/// )?;
/// assert_eq!(out[0], 0.5); // query 0 sees keys 0, 1
/// assert_eq!(out[d], 1.0); // query 1 sees keys 0, 1, 2
/// assert!((lse[1] - 3f32.ln()).abs() < 1e-6);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_varlen_func(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    max_seqlen_q: usize,
    cu_seqlens_q: &TensorView,
    max_seqlen_k: usize,
    seqused_k: &TensorView,
    softmax_scale: Option<f32>,
    causal: bool,
    window_size: (i64, i64),
    softcap: f32,
    alibi_slopes: Option<&TensorView>,
    block_table: &TensorView,
    softmax_lse: Option<&mut TensorViewMut>,
    out: &mut TensorViewMut,
    k_descale: Option<&TensorView>,
    v_descale: Option<&TensorView>,
    s_aux: Option<&TensorView>,
) -> Result<()> {
    let _span = trace::op(
        "flash_attn_varlen_func",
        &[
            ("q", q.layout()),
            ("k", k.layout()),
            ("block_table", block_table.layout()),
        ],
    );
    check::on_cpu(&[
        ("q", q.layout()),
        ("k", k.layout()),
        ("v", v.layout()),
        ("cu_seqlens_q", cu_seqlens_q.layout()),
        ("seqused_k", seqused_k.layout()),
        ("block_table", block_table.layout()),
        ("out", out.layout()),
    ])?;
    let (total_q, h, d) = check_query_out(q.layout(), out.layout(), "q", "out")?;
    let (kl, vl) = (k.layout(), v.layout());
    let what = "[num_blocks, block_size, num_kv_heads, head_size]";
    check::rank(kl, "k", 4, what)?;
    check::rank(vl, "v", 4, what)?;
    check::same_dtype(kl, "k", vl, "v")?;
    let stored = kl.dtype;
    if stored != q.dtype() && !stored.is_fp8() {
        bail!(
            DtypeMismatch,
            "`k` has dtype {stored}; expected the query dtype {} or an fp8 dtype",
            q.dtype()
        );
    }
    let (nb, bs, hkv) = (kl.shape[0], kl.shape[1], kl.shape[2]);
    for d_ in 0..4 {
        check::dim(vl, "v", d_, kl.shape[d_], &format!("dim {d_} of `k`"))?;
    }
    check::dim(kl, "k", 3, d, "head_size of `q`")?;
    check::inner_contiguous(kl, "k")?;
    check::inner_contiguous(vl, "v")?;
    check_heads(h, hkv)?;
    if d == 0 || d % 8 != 0 || d > VARLEN_MAX_HEAD_SIZE {
        bail!(
            Unsupported,
            "head_size {d} is not supported; it must be a multiple of 8 up to {VARLEN_MAX_HEAD_SIZE}"
        );
    }
    if bs == 0 {
        bail!(ShapeMismatch, "`k` has block_size 0");
    }
    let scale = softmax_scale.unwrap_or(1.0 / (d as f32).sqrt());
    check_finite(scale, "softmax_scale")?;
    if !softcap.is_finite() || softcap < 0.0 {
        bail!(
            InvalidValue,
            "`softcap` = {softcap} must be finite and >= 0"
        );
    }
    if window_size.0 < -1 || window_size.1 < -1 {
        bail!(
            InvalidValue,
            "`window_size` = {window_size:?}: each side must be >= 0 or -1 (unbounded)"
        );
    }
    check::rank(seqused_k.layout(), "seqused_k", 1, "[batch]")?;
    let batch = seqused_k.shape()[0];
    let cu = i32_vector(cu_seqlens_q, "cu_seqlens_q", batch + 1).map_err(|mut e| {
        e.message = e.message.replace("the number of sequences", "batch + 1");
        e
    })?;
    let used = i32_vector(seqused_k, "seqused_k", batch)?;
    if cu[0] < 0 {
        bail!(InvalidValue, "`cu_seqlens_q`[0] = {} is negative", cu[0]);
    }
    for b in 0..batch {
        let ql = cu[b + 1] as i64 - cu[b] as i64;
        if ql < 0 {
            bail!(
                InvalidValue,
                "`cu_seqlens_q` decreases at {}: {} > {}",
                b + 1,
                cu[b],
                cu[b + 1]
            );
        }
        if ql as usize > max_seqlen_q {
            bail!(
                InvalidValue,
                "sequence {b} has {ql} queries, more than max_seqlen_q = {max_seqlen_q}"
            );
        }
    }
    if cu[batch] as usize > total_q {
        bail!(
            ShapeMismatch,
            "`cu_seqlens_q`[{batch}] = {} exceeds the {total_q} rows of `q`",
            cu[batch]
        );
    }
    check_lens(&used, "seqused_k", max_seqlen_k, "max_seqlen_k")?;
    check_block_table(block_table, "block_table", &used, bs, nb)?;
    let (alibi, alibi_stride) = head_table(alibi_slopes, "alibi_slopes", h, Some(batch))?;
    let (ks, kss, vs) = if stored.is_fp8() {
        let (ks, kss) = scale_table(k_descale, "k_descale", hkv, Some(batch))?;
        let (vs, vss) = scale_table(v_descale, "v_descale", hkv, Some(batch))?;
        // One stride serves both tables: widen a shared one to [B, Hkv].
        let widen = |t: Vec<f32>, s: i64| -> Vec<f32> {
            if t.is_empty() || s != 0 {
                t
            } else {
                t.iter().copied().cycle().take(batch * hkv).collect()
            }
        };
        if kss != vss {
            (widen(ks, kss), hkv as i64, widen(vs, vss))
        } else {
            (ks, kss, vs)
        }
    } else {
        (Vec::new(), 0, Vec::new())
    };
    let sinks: Vec<f32> = match s_aux {
        None => Vec::new(),
        Some(t) => {
            check::on_cpu(&[("s_aux", t.layout())])?;
            check::rank(t.layout(), "s_aux", 1, "[num_heads]")?;
            check::dtype_in(t.layout(), "s_aux", &QUERY_DTYPES)?;
            check::dim(t.layout(), "s_aux", 0, h, "num_heads")?;
            (0..h).map(|i| t.get_f32(&[i])).collect()
        }
    };
    let mut lse_ptr: *mut f32 = std::ptr::null_mut();
    let mut lse_strides = [0i64; 2];
    let mut outputs = vec![("out", out.as_ptr(), out.layout().clone())];
    if let Some(l) = softmax_lse {
        check::on_cpu(&[("softmax_lse", l.layout())])?;
        check::rank(l.layout(), "softmax_lse", 2, "[num_heads, total_q]")?;
        check::dtype_in(l.layout(), "softmax_lse", &[DType::F32])?;
        check::dim(l.layout(), "softmax_lse", 0, h, "num_heads")?;
        check::dim(l.layout(), "softmax_lse", 1, total_q, "total_q")?;
        lse_strides = strides_of(l.layout());
        lse_ptr = l.as_mut_ptr().cast();
        outputs.push(("softmax_lse", l.as_ptr(), l.layout().clone()));
    }
    let outs: Vec<(&str, *const u8, &Layout)> =
        outputs.iter().map(|(n, p, l)| (*n, *p, l)).collect();
    check_disjoint(
        &outs,
        &[
            ("q", q.as_ptr(), q.layout()),
            ("k", k.as_ptr(), k.layout()),
            ("v", v.as_ptr(), v.layout()),
            ("block_table", block_table.as_ptr(), block_table.layout()),
        ],
    )?;

    // Work items: tiles of up to qt queries of one sequence.
    let g = h / hkv;
    let amx = platform::active_isa() == platform::Isa::Amx
        && q.dtype() == DType::BF16
        && stored == DType::BF16
        && softcap == 0.0
        && alibi_slopes.is_none()
        && d % 64 == 0;
    let target = match (amx, d <= 256) {
        (true, true) => VARLEN_AMX_ROWS,
        (true, false) => VARLEN_AMX_ROWS / 2, // O and Q of an item stay in L2
        _ if platform::active_isa() == platform::Isa::Avx2 => VARLEN_AVX2_ROWS,
        _ => VARLEN_TARGET_ROWS,
    };
    let qt = (target / g).max(1);
    let mut work: Vec<i32> = Vec::new();
    let mut max_rows = 0;
    let mut cost = 0usize;
    for b in 0..batch {
        let ql = (cu[b + 1] - cu[b]) as usize;
        let mut i = 0;
        while i < ql {
            let e = (i + qt).min(ql);
            work.extend_from_slice(&[b as i32, i as i32, e as i32]);
            max_rows = max_rows.max((e - i) * g);
            cost += (e - i) * g * d * (used[b] as usize).max(1);
            i = e;
        }
    }
    let items = work.len() / 3;
    if items == 0 || hkv == 0 {
        return Ok(());
    }
    // In an NHD cache the kv heads of a token sit side by side: for
    // decode-like work (few query rows, so K/V are read about once) a grid
    // block takes a group of adjacent heads (up to 4 KiB of each token row)
    // so it streams long contiguous spans (shuffled short spans read at a
    // fraction of the sequential bandwidth), keeping at least 8 blocks for
    // several threads (one thread takes whole rows).
    // Prefill tiles reuse K/V across their rows and keep one head per block.
    // Results do not depend on the grouping (each row's arithmetic is fixed;
    // the thread-invariance tests vary it).
    let row_bytes = d * stored.size();
    let threads = crate::threading::num_threads();
    let min_blocks = if threads == 1 {
        1
    } else {
        (2 * threads).min(8)
    };
    let mut kv_group = 1;
    if kl.strides[2] == d && vl.strides[2] == d && max_rows <= 2 * g {
        for gsz in (1..=hkv).rev() {
            if hkv % gsz == 0 && gsz * row_bytes <= 4096 && items * (hkv / gsz) >= min_blocks {
                kv_group = gsz;
                break;
            }
        }
    }
    let max_rows = max_rows * kv_group;
    let bts = block_table.strides();
    let mut a = empty_args();
    a.kind = sys::xk_attn_kind_XK_ATTN_VARLEN as i32;
    a.dtype = q.dtype().xk();
    a.cache_dtype = stored.xk();
    a.layout = sys::xk_cache_layout_XK_LAYOUT_FLASH as i32;
    a.num_seqs = batch as i64;
    a.num_heads = h as i64;
    a.num_kv_heads = hkv as i64;
    a.head_size = d as i64;
    a.block_size = bs as i64;
    a.query = q.as_ptr().cast();
    a.q_stride_token = q.strides()[0] as i64;
    a.q_stride_head = q.strides()[1] as i64;
    a.out = out.as_mut_ptr().cast();
    a.out_stride_token = out.strides()[0] as i64;
    a.out_stride_head = out.strides()[1] as i64;
    a.key_cache = k.as_ptr().cast();
    a.value_cache = v.as_ptr().cast();
    a.key_cache_strides = strides_of(kl);
    a.value_cache_strides = strides_of(vl);
    a.block_tables = block_table.as_ptr().cast();
    a.block_tables_stride_seq = bts[0] as i64;
    a.block_tables_stride_block = bts[1] as i64;
    a.seq_lens = used.as_ptr();
    a.scale = scale;
    a.softcap = softcap;
    a.alibi_slopes = ptr_or_null(&alibi);
    a.alibi_stride_seq = alibi_stride;
    a.k_scale = ptr_or_null(&ks);
    a.v_scale = ptr_or_null(&vs);
    a.scale_stride_seq = kss;
    a.cu_seqlens_q = cu.as_ptr();
    a.work = work.as_ptr();
    a.causal = causal as i32;
    a.has_lse = (!lse_ptr.is_null()) as i32;
    a.window_left = window_size.0;
    a.window_right = window_size.1;
    a.s_aux = ptr_or_null(&sinks);
    a.lse = lse_ptr;
    a.lse_stride_head = lse_strides[0];
    a.lse_stride_token = lse_strides[1];
    a.max_rows = max_rows as i64;
    a.kv_group = kv_group as i64;
    let kernel = platform::kernels().attn_varlen.expect("attn_varlen");
    run_attn(
        &a,
        items * (hkv / kv_group),
        cost * kv_group / items.max(1),
        kernel,
    );
    Ok(())
}

/// vLLM's `merge_attn_states`: combines two partial attention results over
/// disjoint key sets (e.g. a cached prefix and the new suffix) by their
/// log-sum-exps:
/// `output = (prefix_output·e^{prefix_lse} + suffix_output·e^{suffix_lse}) /
/// (e^{prefix_lse} + e^{suffix_lse})`, computed stably in fp32, and
/// `output_lse = log(e^{prefix_lse} + e^{suffix_lse})`.
///
/// * `output`, `prefix_output`, `suffix_output`: `[num_tokens, num_heads,
///   head_size]`, one dtype of f32/f16/bf16, head_size contiguous.
///   `output` may be the same view as one of the inputs (in place).
/// * `prefix_lse`, `suffix_lse`, `output_lse` (optional): f32 `[num_heads, num_tokens]`.
/// * An LSE of −∞ (or +∞, FA2's mark of an empty row) is an empty state: its
///   output is not read. Two empty states give 0 and LSE −∞ (upstream gives NaN).
///
/// Exactness: the output is rounded once; tolerance 1 ulp of the dtype.
///
/// ```
/// use xpu_ops::{merge_attn_states, TensorView, TensorViewMut};
/// let p = [1.0f32; 4];
/// let s = [3.0f32; 4];
/// let lse = [0.0f32]; // equal weights
/// let mut out = [0f32; 4];
/// merge_attn_states(
///     &mut TensorViewMut::new(&mut out, &[1, 1, 4])?,
///     &TensorView::new(&p, &[1, 1, 4])?,
///     &TensorView::new(&lse, &[1, 1])?,
///     &TensorView::new(&s, &[1, 1, 4])?,
///     &TensorView::new(&lse, &[1, 1])?,
///     None,
/// )?;
/// assert_eq!(out, [2.0; 4]);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn merge_attn_states(
    output: &mut TensorViewMut,
    prefix_output: &TensorView,
    prefix_lse: &TensorView,
    suffix_output: &TensorView,
    suffix_lse: &TensorView,
    output_lse: Option<&mut TensorViewMut>,
) -> Result<()> {
    let _span = trace::op(
        "merge_attn_states",
        &[
            ("output", output.layout()),
            ("prefix_lse", prefix_lse.layout()),
        ],
    );
    check::on_cpu(&[
        ("output", output.layout()),
        ("prefix_output", prefix_output.layout()),
        ("prefix_lse", prefix_lse.layout()),
        ("suffix_output", suffix_output.layout()),
        ("suffix_lse", suffix_lse.layout()),
    ])?;
    let ol = output.layout().clone();
    let (n, h, d) = check_query_out(prefix_output.layout(), &ol, "prefix_output", "output")?;
    let (pl, sl) = (prefix_output.layout(), suffix_output.layout());
    check::rank(sl, "suffix_output", 3, "[num_tokens, num_heads, head_size]")?;
    check::same_dtype(pl, "prefix_output", sl, "suffix_output")?;
    for i in 0..3 {
        check::dim(
            sl,
            "suffix_output",
            i,
            pl.shape[i],
            &format!("dim {i} of `prefix_output`"),
        )?;
    }
    check::inner_contiguous(sl, "suffix_output")?;
    for (t, name) in [
        (prefix_lse.layout(), "prefix_lse"),
        (suffix_lse.layout(), "suffix_lse"),
    ] {
        check::rank(t, name, 2, "[num_heads, num_tokens]")?;
        check::dtype_in(t, name, &[DType::F32])?;
        check::dim(t, name, 0, h, "num_heads")?;
        check::dim(t, name, 1, n, "num_tokens")?;
    }
    let mut out_lse: (*mut f32, [i64; 2]) = (std::ptr::null_mut(), [0; 2]);
    let lse_layout = output_lse
        .as_ref()
        .map(|l| (l.as_ptr(), l.layout().clone()));
    if let Some(l) = output_lse {
        check::on_cpu(&[("output_lse", l.layout())])?;
        check::rank(l.layout(), "output_lse", 2, "[num_heads, num_tokens]")?;
        check::dtype_in(l.layout(), "output_lse", &[DType::F32])?;
        check::dim(l.layout(), "output_lse", 0, h, "num_heads")?;
        check::dim(l.layout(), "output_lse", 1, n, "num_tokens")?;
        out_lse = (l.as_mut_ptr().cast(), strides_of(l.layout()));
    }
    // An output may be exactly one of the inputs (element-wise, in place);
    // any other overlap is refused.
    let inputs_all = [
        ("prefix_output", prefix_output.as_ptr(), pl),
        ("suffix_output", suffix_output.as_ptr(), sl),
        ("prefix_lse", prefix_lse.as_ptr(), prefix_lse.layout()),
        ("suffix_lse", suffix_lse.as_ptr(), suffix_lse.layout()),
    ];
    let mut outs = vec![("output", output.as_ptr(), &ol)];
    if let Some((p, l)) = &lse_layout {
        outs.push(("output_lse", *p, l));
    }
    check_disjoint(&outs, &[])?;
    for o in &outs {
        let others: Vec<_> = inputs_all
            .iter()
            .filter(|i| !(i.1 == o.1 && i.2 == o.2))
            .copied()
            .collect();
        check_disjoint(&[*o], &others)?;
    }
    let a = sys::xk_merge_args {
        dtype: ol.dtype.xk(),
        pad_: 0,
        num_tokens: n as i64,
        num_heads: h as i64,
        head_size: d as i64,
        output: output.as_mut_ptr().cast(),
        out_strides: strides_of(&ol),
        prefix_output: prefix_output.as_ptr().cast(),
        prefix_strides: strides_of(pl),
        suffix_output: suffix_output.as_ptr().cast(),
        suffix_strides: strides_of(sl),
        prefix_lse: prefix_lse.as_ptr().cast(),
        prefix_lse_strides: strides_of(prefix_lse.layout()),
        suffix_lse: suffix_lse.as_ptr().cast(),
        suffix_lse_strides: strides_of(suffix_lse.layout()),
        output_lse: out_lse.0,
        output_lse_strides: out_lse.1,
    };
    let kernel = platform::kernels()
        .merge_attn_states
        .expect("merge_attn_states");
    let a = Shared(a);
    grid(n * h, (1 << 15) / d.max(1), |r| {
        // SAFETY: validated above; each (token, head) block reads then writes its own row and LSE.
        unsafe { kernel(a.get(), r.start as i64, r.end as i64) }
    });
    Ok(())
}
