//! KV-cache ops with vLLM's semantics (`csrc/cache_kernels.cu`):
//! [`reshape_and_cache`], [`reshape_and_cache_flash`], [`copy_blocks`],
//! [`swap_blocks`].
//!
//! Exactness: copies are bit-exact; a conversion rounds once to nearest-even
//! (f32 -> f16/bf16), and fp8 caches store `saturate(x / scale)` rounded once,
//! bit-identical to [`crate::reference::cache`].

use crate::dtype::DType;
use crate::error::{bail, Result};
use crate::ops::check;
use crate::platform;
use crate::sys;
use crate::tensor::{Layout, TensorView, TensorViewMut};
use crate::threading::{grid, Shared};
use crate::trace;

/// What a cache stores, from vLLM's `kv_cache_dtype` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvCacheDtype {
    /// The cache has the key/value dtype.
    Auto,
    Float16,
    BFloat16,
    /// `fp8` and `fp8_e4m3`: OCP e4m3fn.
    Fp8E4M3,
    Fp8E5M2,
}

impl KvCacheDtype {
    pub const NAMES: [&'static str; 6] =
        ["auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"];

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => KvCacheDtype::Auto,
            "float16" => KvCacheDtype::Float16,
            "bfloat16" => KvCacheDtype::BFloat16,
            "fp8" | "fp8_e4m3" => KvCacheDtype::Fp8E4M3,
            "fp8_e5m2" => KvCacheDtype::Fp8E5M2,
            other => bail!(
                InvalidArgument,
                "unknown kv_cache_dtype {other:?}; expected one of {}",
                KvCacheDtype::NAMES.join(", ")
            ),
        })
    }

    /// The dtype stored in a cache whose tensor has `cache` dtype, for sources of `src` dtype.
    pub(crate) fn stored(self, src: DType, cache: DType, name: &str) -> Result<DType> {
        let want = match self {
            KvCacheDtype::Auto => src,
            KvCacheDtype::Float16 => DType::F16,
            KvCacheDtype::BFloat16 => DType::BF16,
            KvCacheDtype::Fp8E4M3 => DType::F8E4M3,
            KvCacheDtype::Fp8E5M2 => DType::F8E5M2,
        };
        // vLLM keeps fp8 caches as uint8 tensors; typed fp8 tensors work too.
        if cache == want || (want.is_fp8() && cache == DType::U8) {
            return Ok(want);
        }
        bail!(DtypeMismatch, "`{name}` has dtype {cache}, but kv_cache_dtype {self:?} with {src} inputs stores {want}")
    }
}

const SOURCE_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// The validated pieces common to both cache layouts.
struct Sources {
    num_tokens: usize,
    num_heads: usize,
    head_size: usize,
    stored: DType,
}

fn check_sources(
    key: &TensorView,
    value: &TensorView,
    key_cache: &Layout,
    value_cache: &Layout,
    slot_mapping: &TensorView,
    kv_cache_dtype: &str,
) -> Result<Sources> {
    let kv_dtype = KvCacheDtype::parse(kv_cache_dtype)?;
    check::on_cpu(&[
        ("key", key.layout()),
        ("value", value.layout()),
        ("key_cache", key_cache),
        ("value_cache", value_cache),
        ("slot_mapping", slot_mapping.layout()),
    ])?;
    let (k, v) = (key.layout(), value.layout());
    check::rank(k, "key", 3, "[num_tokens, num_heads, head_size]")?;
    check::rank(v, "value", 3, "[num_tokens, num_heads, head_size]")?;
    check::dtype_in(k, "key", &SOURCE_DTYPES)?;
    check::same_dtype(k, "key", v, "value")?;
    let (num_heads, head_size) = (k.shape[1], k.shape[2]);
    check::dim(v, "value", 1, num_heads, "num_heads of `key`")?;
    check::dim(v, "value", 2, head_size, "head_size of `key`")?;
    check::inner_contiguous(k, "key")?;
    check::inner_contiguous(v, "value")?;
    check::index_vector(slot_mapping.layout(), "slot_mapping")?;
    let num_tokens = slot_mapping.shape()[0];
    for (t, name) in [(k, "key"), (v, "value")] {
        if t.shape[0] < num_tokens {
            bail!(
                ShapeMismatch,
                "`{name}` has {} tokens but slot_mapping has {num_tokens}",
                t.shape[0]
            );
        }
    }
    check::same_dtype(key_cache, "key_cache", value_cache, "value_cache")?;
    let stored = kv_dtype.stored(k.dtype, key_cache.dtype, "key_cache")?;
    Ok(Sources {
        num_tokens,
        num_heads,
        head_size,
        stored,
    })
}

/// Every slot must address the cache; negative slots are padding.
fn check_slots(
    slot_mapping: &TensorView,
    num_slots: usize,
    num_blocks: usize,
    block_size: usize,
) -> Result<()> {
    for (i, s) in check::vector_values(slot_mapping).enumerate() {
        if s >= num_slots as i64 {
            bail!(
                IndexOutOfRange,
                "slot_mapping[{i}] = {s} is outside the cache ({num_blocks} blocks x block_size {block_size} = {num_slots} slots)"
            );
        }
    }
    Ok(())
}

/// A scale as the kernel reads it: (pointer, element stride per head); NULL means 1.0.
type ScaleArg = (*const f32, i64);

/// Checks an fp8 scale tensor; `None` means 1.0.
fn check_scale(scale: Option<&TensorView>, name: &str, num_heads: usize) -> Result<ScaleArg> {
    let Some(s) = scale else {
        return Ok((std::ptr::null(), 0));
    };
    check::on_cpu(&[(name, s.layout())])?;
    check::dtype_in(s.layout(), name, &[DType::F32])?;
    let per_head = s.ndim() == 1 && s.shape()[0] == num_heads && num_heads != 1;
    let per_tensor = s.numel() == 1 && s.ndim() <= 1;
    if !per_tensor && !per_head {
        bail!(
            ShapeMismatch,
            "`{name}` must have shape [1] or [num_heads = {num_heads}], got {:?}",
            s.shape()
        );
    }
    for h in 0..s.numel() {
        let idx: &[usize] = if s.ndim() == 0 { &[] } else { &[h] };
        let x = s.get_f32(idx);
        if !x.is_finite() || x <= 0.0 {
            bail!(
                InvalidValue,
                "`{name}`[{h}] = {x}: fp8 scales must be finite and positive"
            );
        }
    }
    Ok((
        s.as_ptr() as *const f32,
        if per_head { s.strides()[0] as i64 } else { 0 },
    ))
}

fn check_no_partial_overlap(
    a: (*const u8, &Layout),
    b: (*const u8, &Layout),
    names: (&str, &str),
) -> Result<()> {
    let (ra, rb) = (check::byte_range(a.0, a.1), check::byte_range(b.0, b.1));
    let identical = a.0 == b.0 && a.1 == b.1;
    if !identical && ra.0 < rb.1 && rb.0 < ra.1 {
        bail!(
            Aliasing,
            "`{}` and `{}` overlap without being the same tensor",
            names.0,
            names.1
        );
    }
    Ok(())
}

fn strides5(t: &Layout) -> [i64; 5] {
    let mut s = [0i64; 5];
    for (d, &x) in s.iter_mut().zip(&t.strides) {
        *d = x as i64;
    }
    s
}

fn run_kv_write(args: sys::xk_kv_write_args, num_tokens: usize) {
    let kernels = platform::kernels();
    let kv_write = kernels.kv_write.expect("every kernel table has kv_write");
    // Aim for ~64 KiB of source per block so tiny batches stay on the caller.
    let bytes_per_token =
        (2 * args.num_heads * args.head_size * DType::F32.size() as i64).max(1) as usize;
    let min_chunk = (64 * 1024 / bytes_per_token).max(1);
    let args = Shared(args);
    grid(num_tokens, min_chunk, |r| {
        // SAFETY: the launcher validated every pointer, shape, stride and slot;
        // distinct tokens write distinct slots or identical values (repeated slots
        // are the caller's race, as upstream).
        unsafe { kv_write(args.get(), r.start as i64, r.end as i64) }
    });
}

#[allow(clippy::too_many_arguments)]
fn kv_args(
    key: &TensorView,
    value: &TensorView,
    src: &Sources,
    slot_mapping: &TensorView,
    layout: sys::xk_cache_layout,
    key_cache: *mut u8,
    value_cache: *mut u8,
    block_size: usize,
    x: usize,
    strides: ([i64; 5], [i64; 5]),
    scales: (ScaleArg, ScaleArg),
) -> sys::xk_kv_write_args {
    let (k, v) = (key.layout(), value.layout());
    sys::xk_kv_write_args {
        key: key.as_ptr().cast(),
        value: value.as_ptr().cast(),
        key_stride_token: k.strides[0] as i64,
        key_stride_head: k.strides[1] as i64,
        value_stride_token: v.strides[0] as i64,
        value_stride_head: v.strides[1] as i64,
        src_dtype: k.dtype.xk(),
        cache_dtype: src.stored.xk(),
        num_heads: src.num_heads as i64,
        head_size: src.head_size as i64,
        slot_mapping: slot_mapping.as_ptr().cast(),
        slot_mapping_is_i64: (slot_mapping.dtype() == DType::I64) as i32,
        layout: layout as i32,
        key_cache: key_cache.cast(),
        value_cache: value_cache.cast(),
        block_size: block_size as i64,
        x: x as i64,
        key_cache_strides: strides.0,
        value_cache_strides: strides.1,
        k_scale: scales.0 .0,
        v_scale: scales.1 .0,
        k_scale_stride: scales.0 .1,
        v_scale_stride: scales.1 .1,
    }
}

fn scales_for(
    stored: DType,
    k_scale: Option<&TensorView>,
    v_scale: Option<&TensorView>,
    num_heads: usize,
) -> Result<(ScaleArg, ScaleArg)> {
    if !stored.is_fp8() {
        // Scales only apply to fp8 caches; vLLM passes them regardless.
        return Ok(((std::ptr::null(), 0), (std::ptr::null(), 0)));
    }
    Ok((
        check_scale(k_scale, "k_scale", num_heads)?,
        check_scale(v_scale, "v_scale", num_heads)?,
    ))
}

/// Writes each token's key and value rows into the paged cache at its slot
/// (`block = slot / block_size`, `offset = slot % block_size`).
///
/// * `key`, `value`: `[num_tokens, num_heads, head_size]`, f32/f16/bf16, any
///   token and head strides, head_size contiguous. Only the first
///   `slot_mapping.len()` tokens are written.
/// * `key_cache`: `[num_blocks, num_heads, head_size / x, block_size, x]` with
///   `x = 16 / element size`; `value_cache`: `[num_blocks, num_heads, head_size, block_size]`.
/// * `slot_mapping`: int32/int64 `[num_tokens]`; negative slots are skipped.
/// * `kv_cache_dtype`: `auto`, `float16`, `bfloat16`, `fp8` (= `fp8_e4m3`), `fp8_e5m2`;
///   fp8 caches are uint8 or typed fp8 tensors and store `saturate(x / scale)`.
/// * `k_scale`, `v_scale`: f32 `[1]` or `[num_heads]`, used for fp8 only (None = 1).
///
/// Nothing is written unless every argument is valid.
///
/// ```
/// use xpu_ops::{reshape_and_cache, TensorView, TensorViewMut};
/// let (heads, head_size, block_size, blocks) = (2, 8, 4, 3);
/// let key = vec![1.0f32; 2 * heads * head_size];
/// let value = vec![2.0f32; 2 * heads * head_size];
/// let x = 16 / 4; // f32 cache: 4 elements per 16-byte chunk
/// let mut kc = vec![0f32; blocks * heads * head_size * block_size];
/// let mut vc = vec![0f32; blocks * heads * head_size * block_size];
/// let slots = [5i64, -1]; // second token is padding
/// reshape_and_cache(
///     &TensorView::new(&key, &[2, heads, head_size])?,
///     &TensorView::new(&value, &[2, heads, head_size])?,
///     &mut TensorViewMut::new(&mut kc, &[blocks, heads, head_size / x, block_size, x])?,
///     &mut TensorViewMut::new(&mut vc, &[blocks, heads, head_size, block_size])?,
///     &TensorView::new(&slots, &[2])?,
///     "auto", None, None,
/// )?;
/// assert_eq!(kc.iter().filter(|&&v| v == 1.0).count(), heads * head_size);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn reshape_and_cache(
    key: &TensorView,
    value: &TensorView,
    key_cache: &mut TensorViewMut,
    value_cache: &mut TensorViewMut,
    slot_mapping: &TensorView,
    kv_cache_dtype: &str,
    k_scale: Option<&TensorView>,
    v_scale: Option<&TensorView>,
) -> Result<()> {
    let _span = trace::op(
        "reshape_and_cache",
        &[("key", key.layout()), ("key_cache", key_cache.layout())],
    );
    // Pointers first, then borrowed layouts: no per-call copies of shapes.
    let (kp, vp) = (key_cache.as_mut_ptr(), value_cache.as_mut_ptr());
    let (kc, vc) = (key_cache.layout(), value_cache.layout());
    let src = check_sources(key, value, kc, vc, slot_mapping, kv_cache_dtype)?;
    check::rank(
        kc,
        "key_cache",
        5,
        "[num_blocks, num_heads, head_size/x, block_size, x]",
    )?;
    check::rank(
        vc,
        "value_cache",
        4,
        "[num_blocks, num_heads, head_size, block_size]",
    )?;
    let (num_blocks, block_size, x) = (kc.shape[0], kc.shape[3], kc.shape[4]);
    let want_x = 16 / src.stored.size();
    if x != want_x {
        bail!(
            ShapeMismatch,
            "`key_cache` dim 4 (x) is {x}, expected 16 bytes / {}-byte {} = {want_x}",
            src.stored.size(),
            src.stored
        );
    }
    if src.head_size % x != 0 {
        bail!(
            ShapeMismatch,
            "head_size {} is not divisible by x = {x} (key_cache packs x elements per 16 bytes)",
            src.head_size
        );
    }
    check::dim(kc, "key_cache", 1, src.num_heads, "num_heads")?;
    check::dim(kc, "key_cache", 2, src.head_size / x, "head_size / x")?;
    check::inner_contiguous(kc, "key_cache")?;
    check::dim(
        vc,
        "value_cache",
        0,
        num_blocks,
        "num_blocks of `key_cache`",
    )?;
    check::dim(vc, "value_cache", 1, src.num_heads, "num_heads")?;
    check::dim(vc, "value_cache", 2, src.head_size, "head_size")?;
    check::dim(
        vc,
        "value_cache",
        3,
        block_size,
        "block_size of `key_cache`",
    )?;
    check_no_partial_overlap((kp, kc), (vp, vc), ("key_cache", "value_cache"))?;
    if kc.numel() > 0 && kp == vp {
        bail!(
            Aliasing,
            "`key_cache` and `value_cache` are the same memory but have different layouts"
        );
    }
    check_slots(
        slot_mapping,
        num_blocks * block_size,
        num_blocks,
        block_size,
    )?;
    let scales = scales_for(src.stored, k_scale, v_scale, src.num_heads)?;

    let args = kv_args(
        key,
        value,
        &src,
        slot_mapping,
        sys::xk_cache_layout_XK_LAYOUT_PAGED,
        kp,
        vp,
        block_size,
        x,
        (strides5(kc), strides5(vc)),
        scales,
    );
    run_kv_write(args, src.num_tokens);
    Ok(())
}

/// Writes each token's key and value rows into a flash-layout cache
/// `[num_blocks, block_size, num_heads, head_size]`. The caches may be any
/// stride order with head_size contiguous, so the HND view
/// `[num_blocks, num_heads, block_size, head_size]` permuted back to this
/// shape works. `value_cache = None` writes values into `key_cache` too: the
/// case of one tensor passed as both caches (GDN state write-back with
/// block_size 1), where the value row lands after the key row.
///
/// Other arguments as [`reshape_and_cache`].
///
/// ```
/// use xpu_ops::{reshape_and_cache_flash, TensorView, TensorViewMut};
/// use half::bf16;
/// let (heads, head_size, block_size, blocks) = (2, 4, 16, 2);
/// let kv: Vec<bf16> = (0..heads * head_size).map(|i| bf16::from_f32(i as f32)).collect();
/// let mut kc = vec![bf16::ZERO; blocks * block_size * heads * head_size];
/// let mut vc = kc.clone();
/// let shape = [blocks, block_size, heads, head_size];
/// reshape_and_cache_flash(
///     &TensorView::new(&kv, &[1, heads, head_size])?,
///     &TensorView::new(&kv, &[1, heads, head_size])?,
///     &mut TensorViewMut::new(&mut kc, &shape)?,
///     Some(&mut TensorViewMut::new(&mut vc, &shape)?),
///     &TensorView::new(&[17i32], &[1])?, // block 1, offset 1
///     "auto", None, None,
/// )?;
/// let row = (block_size + 1) * heads * head_size;
/// assert_eq!(&kc[row..row + heads * head_size], &kv[..]);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn reshape_and_cache_flash(
    key: &TensorView,
    value: &TensorView,
    key_cache: &mut TensorViewMut,
    value_cache: Option<&mut TensorViewMut>,
    slot_mapping: &TensorView,
    kv_cache_dtype: &str,
    k_scale: Option<&TensorView>,
    v_scale: Option<&TensorView>,
) -> Result<()> {
    let _span = trace::op(
        "reshape_and_cache_flash",
        &[("key", key.layout()), ("key_cache", key_cache.layout())],
    );
    // Pointers first, then borrowed layouts: no per-call copies of shapes.
    let kp = key_cache.as_mut_ptr();
    let kc = key_cache.layout();
    let (vc, value_ptr) = match &value_cache {
        Some(v) => (v.layout(), v.as_ptr() as *mut u8),
        None => (kc, kp),
    };
    let src = check_sources(key, value, kc, vc, slot_mapping, kv_cache_dtype)?;
    let what = "[num_blocks, block_size, num_heads, head_size]";
    check::rank(kc, "key_cache", 4, what)?;
    check::rank(vc, "value_cache", 4, what)?;
    let (num_blocks, block_size) = (kc.shape[0], kc.shape[1]);
    for (t, name) in [(kc, "key_cache"), (vc, "value_cache")] {
        check::dim(t, name, 0, num_blocks, "num_blocks of `key_cache`")?;
        check::dim(t, name, 1, block_size, "block_size of `key_cache`")?;
        check::dim(t, name, 2, src.num_heads, "num_heads")?;
        check::dim(t, name, 3, src.head_size, "head_size")?;
        check::inner_contiguous(t, name)?;
    }
    check_no_partial_overlap((kp, kc), (value_ptr, vc), ("key_cache", "value_cache"))?;
    check_slots(
        slot_mapping,
        num_blocks * block_size,
        num_blocks,
        block_size,
    )?;
    let scales = scales_for(src.stored, k_scale, v_scale, src.num_heads)?;

    let args = kv_args(
        key,
        value,
        &src,
        slot_mapping,
        sys::xk_cache_layout_XK_LAYOUT_FLASH,
        kp,
        value_ptr,
        block_size,
        0,
        (strides5(kc), strides5(vc)),
        scales,
    );
    run_kv_write(args, src.num_tokens);
    Ok(())
}

/// A cache whose blocks (dim 0) are each one dense range of memory.
fn check_block_cache(t: &Layout, name: &str) -> Result<usize> {
    if t.ndim() < 2 {
        bail!(
            ShapeMismatch,
            "`{name}` must be [num_blocks, ...] (rank >= 2), got shape {:?}",
            t.shape
        );
    }
    if !t.is_dense_from(1) {
        bail!(
            InvalidStride,
            "`{name}`: each block must be one dense range of memory, got strides {:?}",
            t.strides
        );
    }
    let per_block = t.shape[1..].iter().product::<usize>();
    if t.shape[0] > 1 && t.strides[0] < per_block {
        bail!(
            InvalidStride,
            "`{name}`: block stride {} is smaller than a block ({per_block} elements)",
            t.strides[0]
        );
    }
    Ok(t.shape[0])
}

/// Block pairs must address both caches, and no destination may be written twice or also be read.
fn check_block_mapping(
    pairs: &[(i64, i64)],
    src_blocks: usize,
    dst_blocks: usize,
    same_cache: bool,
) -> Result<()> {
    for (i, &(s, d)) in pairs.iter().enumerate() {
        if s < 0 || s >= src_blocks as i64 {
            bail!(
                IndexOutOfRange,
                "block_mapping[{i}] source block {s} is outside 0..{src_blocks}"
            );
        }
        if d < 0 || d >= dst_blocks as i64 {
            bail!(
                IndexOutOfRange,
                "block_mapping[{i}] destination block {d} is outside 0..{dst_blocks}"
            );
        }
    }
    let mut dsts: Vec<i64> = pairs.iter().map(|p| p.1).collect();
    dsts.sort_unstable();
    if let Some(w) = dsts.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            Aliasing,
            "block_mapping writes destination block {} more than once",
            w[0]
        );
    }
    if same_cache {
        if let Some((i, p)) = pairs
            .iter()
            .enumerate()
            .find(|(_, p)| p.0 != p.1 && dsts.binary_search(&p.0).is_ok())
        {
            bail!(
                Aliasing,
                "block_mapping[{i}] reads block {} which another pair overwrites",
                p.0
            );
        }
    }
    Ok(())
}

struct BlockCopy {
    src: *const u8,
    dst: *mut u8,
    src_block_stride: usize,
    dst_block_stride: usize,
    block_bytes: usize,
}

/// Calls that copy at least this many bytes write with streaming stores (the
/// destination lines are overwritten whole and not read again soon).
const STREAM_COPY_MIN_BYTES: usize = 1 << 20;

fn run_block_copies(copies: &[BlockCopy], pairs: &[(i64, i64)]) {
    let work = Shared((copies, pairs));
    let n = copies.len() * pairs.len();
    let min_chunk = copies
        .first()
        .map_or(1, |c| (256 * 1024 / c.block_bytes.max(1)).max(1));
    let total: usize = copies.iter().map(|c| c.block_bytes).sum::<usize>() * pairs.len();
    let stream = total >= STREAM_COPY_MIN_BYTES;
    grid(n, min_chunk, |r| {
        let (copies, pairs) = *work.get();
        for i in r {
            let (c, (s, d)) = (&copies[i / pairs.len()], pairs[i % pairs.len()]);
            if s == d && std::ptr::eq(c.src, c.dst) {
                continue;
            }
            // SAFETY: block ids were checked against both caches, blocks are
            // dense, and distinct pairs write distinct destination blocks.
            unsafe {
                let (from, to) = (
                    c.src.add(s as usize * c.src_block_stride),
                    c.dst.add(d as usize * c.dst_block_stride),
                );
                if stream {
                    crate::mem::stream_copy(from, to, c.block_bytes);
                } else {
                    std::ptr::copy_nonoverlapping(from, to, c.block_bytes);
                }
            }
        }
        if stream {
            crate::mem::store_fence();
        }
    });
}

/// Copies blocks within every layer's key and value cache:
/// `block_mapping` `[n, 2]` int64 rows of (source block, destination block),
/// applied to each of `key_caches[l]` and `value_caches[l]`. Caches are
/// `[num_blocks, ...]` with each block one dense range (any layout of #2).
/// No destination may appear twice or also serve as a source.
///
/// ```
/// use xpu_ops::{copy_blocks, TensorView, TensorViewMut};
/// let (blocks, per_block) = (4, 6);
/// let mut k: Vec<f32> = (0..blocks * per_block).map(|i| i as f32).collect();
/// let mut v = k.clone();
/// let mapping = [1i64, 3]; // fork: block 1 -> block 3
/// copy_blocks(
///     &mut [TensorViewMut::new(&mut k, &[blocks, per_block])?],
///     &mut [TensorViewMut::new(&mut v, &[blocks, per_block])?],
///     &TensorView::new(&mapping, &[1, 2])?,
/// )?;
/// assert_eq!(k[3 * per_block..], k[per_block..2 * per_block]);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn copy_blocks<'a>(
    key_caches: &mut [TensorViewMut<'a>],
    value_caches: &mut [TensorViewMut<'a>],
    block_mapping: &TensorView,
) -> Result<()> {
    let _span = trace::op("copy_blocks", &[("block_mapping", block_mapping.layout())]);
    if key_caches.len() != value_caches.len() {
        bail!(
            ShapeMismatch,
            "key_caches has {} layers but value_caches has {}",
            key_caches.len(),
            value_caches.len()
        );
    }
    check::on_cpu(&[("block_mapping", block_mapping.layout())])?;
    let pairs = check::pairs(block_mapping, "block_mapping")?;
    let mut copies = Vec::with_capacity(2 * key_caches.len());
    for (l, (k, v)) in key_caches
        .iter_mut()
        .zip(value_caches.iter_mut())
        .enumerate()
    {
        for (t, kind) in [(k, "key_caches"), (v, "value_caches")] {
            let name = format!("{kind}[{l}]");
            check::on_cpu(&[(&name, t.layout())])?;
            let blocks = check_block_cache(t.layout(), &name)?;
            check_block_mapping(&pairs, blocks, blocks, true).map_err(|mut e| {
                e.message = format!("{name}: {}", e.message);
                e
            })?;
            let stride = t.strides()[0] * t.dtype().size();
            let block_bytes = t.layout().numel() / blocks.max(1) * t.dtype().size();
            let p = t.as_mut_ptr();
            copies.push(BlockCopy {
                src: p,
                dst: p,
                src_block_stride: stride,
                dst_block_stride: stride,
                block_bytes,
            });
        }
    }
    run_block_copies(&copies, &pairs);
    Ok(())
}

/// Copies blocks from `src` to `dst` (two host caches of one layer, e.g. GPU
/// and CPU swap space in upstream; here both live in host memory):
/// `block_mapping` `[n, 2]` of (source block, destination block). The caches
/// must have the same dtype and per-block shape.
///
/// ```
/// use xpu_ops::{swap_blocks, TensorView, TensorViewMut};
/// let device_cache = vec![1.0f32; 8 * 32];
/// let mut host_cache = vec![0.0f32; 2 * 32];
/// let mapping = [5i64, 1]; // block 5 -> host block 1
/// swap_blocks(
///     &TensorView::new(&device_cache, &[8, 32])?,
///     &mut TensorViewMut::new(&mut host_cache, &[2, 32])?,
///     &TensorView::new(&mapping, &[1, 2])?,
/// )?;
/// assert!(host_cache[32..].iter().all(|&x| x == 1.0) && host_cache[..32].iter().all(|&x| x == 0.0));
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn swap_blocks(
    src: &TensorView,
    dst: &mut TensorViewMut,
    block_mapping: &TensorView,
) -> Result<()> {
    let _span = trace::op(
        "swap_blocks",
        &[("src", src.layout()), ("dst", dst.layout())],
    );
    check::on_cpu(&[
        ("src", src.layout()),
        ("dst", dst.layout()),
        ("block_mapping", block_mapping.layout()),
    ])?;
    let src_blocks = check_block_cache(src.layout(), "src")?;
    let dst_blocks = check_block_cache(dst.layout(), "dst")?;
    check::same_dtype(src.layout(), "src", dst.layout(), "dst")?;
    if src.shape()[1..] != dst.shape()[1..] {
        bail!(
            ShapeMismatch,
            "`src` blocks are {:?} but `dst` blocks are {:?}",
            &src.shape()[1..],
            &dst.shape()[1..]
        );
    }
    let (rs, rd) = (
        check::byte_range(src.as_ptr(), src.layout()),
        check::byte_range(dst.as_ptr(), dst.layout()),
    );
    if rs.0 < rd.1 && rd.0 < rs.1 {
        bail!(
            Aliasing,
            "`src` and `dst` overlap; use copy_blocks within one cache"
        );
    }
    let pairs = check::pairs(block_mapping, "block_mapping")?;
    check_block_mapping(&pairs, src_blocks, dst_blocks, false)?;
    let es = src.dtype().size();
    let copy = BlockCopy {
        src: src.as_ptr(),
        dst: dst.as_mut_ptr(),
        src_block_stride: src.strides()[0] * es,
        dst_block_stride: dst.strides()[0] * es,
        block_bytes: src.layout().numel() / src_blocks.max(1) * es,
    };
    run_block_copies(&[copy], &pairs);
    Ok(())
}
