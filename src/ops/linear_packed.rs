//! Pre-packed linear weights: [`PackedLinearWeight`] packs a `[N, K]` weight
//! once (at model load) into the layout the active ISA tier's GEMM reads,
//! and [`linear_packed`] runs `F.linear` with it, skipping the per-call
//! weight copy the plain [`linear`](crate::linear) does for every tile.
//!
//! Layouts, chosen by the tier active on the thread that packs:
//!
//! * `amx` tier, bf16 weight: AMX tiles (`XK_WEIGHT_PACKED_AMX` in
//!   `xpu_src/include/xops_kernels.h`): K in blocks of 512, N in blocks of 32
//!   rows, each 32-k step two 1 KiB tiles. Every `M` runs the tile GEMM (x is
//!   packed once per call into a per-thread buffer kept between calls);
//!   results are bit-identical to the unpacked amx path for `M > 16`.
//! * `amx` tier, f32 weight: three bf16 panels (`XK_WEIGHT_PACKED_AMX3`),
//!   the weight split exactly as w = b0 + b1 + b2, each part in the bf16
//!   tile layout: 6 bytes an element, 1.5x the f32 weight (N and K padded
//!   to 32). Every `M` runs the split tile GEMM (x split into four parts as
//!   it is packed per call, or, for N <= 64, split inside the narrow
//!   kernel as it is read; numerics in [`crate::ops::linear_amx`]); results
//!   are bit-identical to the unpacked f32 linear where that splits too
//!   (`M >= AMX_F32_MIN_M`). A weight with inf or NaN is packed
//!   plain instead (the FMA path). Decode rows (`M <= 16`) rebuild each
//!   weight exactly in f32 from its parts and run the FMA arithmetic
//!   (`pk3_gemv`): they read 1.5x the f32 bytes, no plain copy being kept
//!   (M = 1, K = 4096, N = 2048, cold: 3.5 ms against 2.1 ms plain; M = 16:
//!   3.2 ms, as plain). A weight used mostly for decode can keep the plain
//!   layout instead (`with_layout(PackedLayout::Plain)`).
//! * otherwise: a plain contiguous copy, run exactly as
//!   [`linear`](crate::linear).
//! * on request ([`PackedLinearWeight::with_layout`]), `avx2` / `avx512` /
//!   `amx` tiers, f32 weight: f32 panels of the tier's microkernel width (32
//!   columns on avx512/amx, 16 on avx2), K in blocks of 256. Every `M` runs
//!   the tiled GEMM (the decode kernel needs plain rows); results are
//!   bit-identical to the unpacked f32 GEMM (`M > 16`). Not the default: it
//!   measured no faster than the plain path (see `with_layout`).
//!
//! On the amx tier `M <= 4` is slower packed than plain (the tile GEMM
//! against the weight-streaming decode kernel, ~0.7x at M = 1 with warm
//! weights); from M = 16 the packed tiles are faster.
//!
//! A packed weight records its layout: a tiled layout used on a thread whose
//! tier cannot read it (e.g. AMX tiles under `avx512`) fails with
//! [`Status::Unsupported`](crate::Status) naming both tiers; the plain
//! layout runs on any tier.
//!
//! Numerics and tolerance: those of [`linear`](crate::linear) (fp32
//! accumulation; see its module docs). Results do not depend on the thread
//! count.

use crate::dtype::DType;
use crate::error::{bail, Result};
use crate::mem::AlignedBytes;
use crate::ops::check;
use crate::ops::linear::{
    base_args, check_bias, check_out_alias, check_rows, gemm_tiles, inner_contiguous,
};
use crate::platform::{self, active_isa, Isa};
use crate::sys;
use crate::tensor::{Layout, TensorView, TensorViewMut};
use crate::threading::{grid, Shared};
use crate::trace;

/// How a [`PackedLinearWeight`] stores its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedLayout {
    /// `[N, K]` row-major, contiguous: runs on every tier.
    Plain,
    /// bf16 AMX tiles (amx tier only).
    AmxTiles,
    /// An f32 weight split into three bf16 parts, each as AMX tiles (amx tier
    /// only; 1.5x the f32 weight's bytes).
    AmxSplit,
    /// f32 panels `nr` columns wide (avx2: 16; avx512 and amx: 32).
    Panels {
        /// Columns per panel.
        nr: usize,
    },
}

impl PackedLayout {
    /// A short name: `plain`, `amx`, `amx3`, `panels32`, `panels16`.
    pub fn name(self) -> &'static str {
        match self {
            PackedLayout::Plain => "plain",
            PackedLayout::AmxTiles => "amx",
            PackedLayout::AmxSplit => "amx3",
            PackedLayout::Panels { nr: 32 } => "panels32",
            PackedLayout::Panels { .. } => "panels16",
        }
    }

    /// Whether a thread running `isa` reads this layout.
    pub fn runs_on(self, isa: Isa) -> bool {
        match self {
            PackedLayout::Plain => true,
            PackedLayout::AmxTiles | PackedLayout::AmxSplit => isa == Isa::Amx,
            PackedLayout::Panels { nr } => nr == panel_width(isa),
        }
    }
}

/// The f32 panel width of a tier's GEMM microkernel (0: no panel layout).
fn panel_width(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 | Isa::Amx => 32,
        Isa::Avx2 => 16,
        _ => 0,
    }
}

/// A `[N, K]` linear weight packed once for the active tier's GEMM; run it
/// with [`linear_packed`]. See the [module docs](self) for the layouts.
///
/// ```
/// use xpu_ops::{linear_packed, PackedLinearWeight, TensorView, TensorViewMut};
/// let w = [1.0f32, 0.0, 0.0, 0.0, 1.0, 1.0]; // [2, 3]
/// let packed = PackedLinearWeight::new(&TensorView::new(&w, &[2, 3])?)?;
/// let x = [1.0f32, 2.0, 3.0]; // [1, 3]
/// let mut y = [0f32; 2];
/// linear_packed(
///     &TensorView::new(&x, &[1, 3])?,
///     &packed,
///     None,
///     &mut TensorViewMut::new(&mut y, &[1, 2])?,
/// )?;
/// assert_eq!(y, [1.0, 5.0]);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub struct PackedLinearWeight {
    n: usize,
    k: usize,
    dtype: DType,
    isa: Isa,
    layout: PackedLayout,
    buf: AlignedBytes,
}

impl std::fmt::Debug for PackedLinearWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLinearWeight")
            .field("n", &self.n)
            .field("k", &self.k)
            .field("dtype", &self.dtype)
            .field("isa", &self.isa)
            .field("layout", &self.layout)
            .finish()
    }
}

impl PackedLinearWeight {
    /// Packs `weight` (`[N, K]`, f32/f16/bf16, K contiguous, any row stride)
    /// for the ISA tier active on this thread.
    pub fn new(weight: &TensorView) -> Result<Self> {
        let layout = match (active_isa(), weight.dtype()) {
            (Isa::Amx, DType::BF16) => PackedLayout::AmxTiles,
            (Isa::Amx, DType::F32) => PackedLayout::AmxSplit,
            _ => PackedLayout::Plain,
        };
        match Self::with_layout(weight, layout) {
            // A weight with inf or NaN is not split (see `with_layout`): plain.
            Err(e)
                if layout == PackedLayout::AmxSplit && e.status == crate::Status::InvalidValue =>
            {
                Self::with_layout(weight, PackedLayout::Plain)
            }
            r => r,
        }
    }

    /// Packs `weight` into an explicit `layout`, which the active tier must
    /// read ([`PackedLayout::runs_on`]): AMX tiles need a bf16 weight on the
    /// amx tier, the split `amx3` an f32 weight on the amx tier, panels an
    /// f32 weight and the tier's panel width (`Unsupported` otherwise; `amx3`
    /// of a weight with inf or NaN: `InvalidValue`). [`new`](Self::new) picks the layout
    /// measured fastest: AMX tiles for bf16 on amx, the split `amx3` for f32
    /// on amx, else plain (f32 panels
    /// measured 0.9-0.96x of the plain path at M = 512 and 0.8x at M = 1:
    /// the per-tile panel copy they save is not the fp32 GEMM's bottleneck).
    pub fn with_layout(weight: &TensorView, layout: PackedLayout) -> Result<Self> {
        let wl = weight.layout();
        check::on_cpu(&[("weight", wl)])?;
        check::rank(wl, "weight", 2, "[N, K]")?;
        check::dtype_in(wl, "weight", &[DType::F32, DType::F16, DType::BF16])?;
        inner_contiguous(wl, "weight")?;
        let (n, k) = (wl.shape[0], wl.shape[1]);
        let isa = active_isa();
        let ok = layout.runs_on(isa)
            && match layout {
                PackedLayout::Plain => true,
                PackedLayout::AmxTiles => wl.dtype == DType::BF16,
                PackedLayout::AmxSplit | PackedLayout::Panels { .. } => wl.dtype == DType::F32,
            };
        if !ok {
            bail!(
                Unsupported,
                "layout `{}` is not available for a {} weight on ISA tier {isa}",
                layout.name(),
                wl.dtype
            );
        }
        let es = wl.dtype.size();
        let bytes = match layout {
            PackedLayout::Plain => n * k * es,
            PackedLayout::AmxTiles => n.div_ceil(32) * 32 * k.div_ceil(32) * 32 * 2,
            PackedLayout::AmxSplit => crate::ops::linear_amx::w3_bytes(n, k),
            PackedLayout::Panels { nr } => n.div_ceil(nr) * nr * k * 4,
        };
        let mut buf = AlignedBytes::streamed(bytes);
        let dst = buf.as_mut_ptr();
        let w_stride = if n > 1 { wl.strides[0] } else { k };
        match layout {
            PackedLayout::Plain => {
                for r in 0..n {
                    // SAFETY: row r of the validated weight holds k elements;
                    // dst holds n * k elements.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            weight.as_ptr().add(r * w_stride * es),
                            dst.add(r * k * es),
                            k * es,
                        )
                    };
                }
            }
            PackedLayout::AmxSplit => {
                let mut args = pack_args(n, k, wl.dtype);
                args.w = weight.as_ptr().cast();
                args.w_stride = w_stride as i64;
                let bad = crate::ops::linear_amx::pack_w3(&args, dst);
                if bad != 0 {
                    bail!(
                        InvalidValue,
                        "`weight` has {bad} non-finite values: layout `amx3` cannot split them"
                    );
                }
            }
            _ => {
                let mut args = pack_args(n, k, wl.dtype);
                args.w = weight.as_ptr().cast();
                args.w_stride = w_stride as i64;
                args.w_kind = match layout {
                    PackedLayout::AmxTiles => sys::xk_weight_kind_XK_WEIGHT_PACKED_AMX,
                    _ => sys::xk_weight_kind_XK_WEIGHT_PACKED_PANEL,
                } as i32;
                let blocks = match layout {
                    PackedLayout::Panels { nr } => n.div_ceil(nr),
                    _ => n.div_ceil(32),
                };
                let pack = platform::kernels().linear_pack_w.expect("linear_pack_w");
                let (a, d) = (Shared(args), Shared(dst as usize));
                grid(blocks, 8, |r| {
                    // SAFETY: validated weight; blocks write disjoint parts of dst.
                    unsafe {
                        pack(
                            a.get(),
                            r.start as i64,
                            r.end as i64,
                            *d.get() as *mut std::ffi::c_void,
                        )
                    }
                });
            }
        }
        Ok(PackedLinearWeight {
            n,
            k,
            dtype: wl.dtype,
            isa,
            layout,
            buf,
        })
    }

    /// Output features N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features K.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The weight's dtype (x must have it).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The tier active when it was packed.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The stored layout.
    pub fn layout(&self) -> PackedLayout {
        self.layout
    }

    /// Bytes of packed data.
    pub fn packed_bytes(&self) -> usize {
        self.buf.len()
    }

    fn data(&self) -> *const u8 {
        self.buf.as_ptr()
    }
}

fn pack_args(n: usize, k: usize, dtype: DType) -> sys::xk_linear_args {
    sys::xk_linear_args {
        m: 0,
        n: n as i64,
        k: k as i64,
        x: std::ptr::null(),
        x_stride: 0,
        x_dtype: dtype.xk(),
        perm: std::ptr::null(),
        xf: std::ptr::null_mut(),
        xf_stride: 0,
        w: std::ptr::null(),
        w_stride: 0,
        w_dtype: dtype.xk(),
        w_kind: sys::xk_weight_kind_XK_WEIGHT_DENSE as i32,
        scales: std::ptr::null(),
        zeros: std::ptr::null(),
        sz_stride: 0,
        sz_dtype: 0,
        group_size: 0,
        bias: std::ptr::null(),
        bias_dtype: 0,
        out: std::ptr::null_mut(),
        out_stride: 0,
        out_dtype: dtype.xk(),
        tile_m: 0,
        tile_n: 0,
        bf16_pairs: 0,
        no_prefetch: 0,
        xp: std::ptr::null_mut(),
    }
}

/// `F.linear` with a pre-packed weight: `out = x · weightᵀ + bias`, the same
/// contract as [`linear`](crate::linear) with `weight` packed by
/// [`PackedLinearWeight::new`].
///
/// * `x`: `[M, K]` or `[K]`, the packed weight's dtype, K contiguous, any row stride.
/// * `bias`: `[N]`, `x`'s dtype or f32, or `None`.
/// * `out`: `[M, N]` (or `[N]`), `x`'s dtype or f32, N contiguous, not
///   overlapping any input.
///
/// Errors as [`linear`](crate::linear), plus [`Status::Unsupported`](crate::Status)
/// when the weight's layout is not readable by this thread's tier (see the
/// [module docs](self)). Outputs are untouched on error. Tolerance: that of
/// [`linear`](crate::linear).
pub fn linear_packed(
    x: &TensorView,
    weight: &PackedLinearWeight,
    bias: Option<&TensorView>,
    out: &mut TensorViewMut,
) -> Result<()> {
    let _span = trace::op("linear_packed", &[("x", x.layout())]);
    check::on_cpu(&[("x", x.layout()), ("out", out.layout())])?;
    let (n, k) = (weight.n, weight.k);
    let rows = check_rows(x, out, n, k, &[x.dtype(), DType::F32])?;
    if x.dtype() != weight.dtype {
        bail!(
            DtypeMismatch,
            "`x` has dtype {} but the packed weight is {}",
            x.dtype(),
            weight.dtype
        );
    }
    check_bias(bias, n, x.dtype())?;
    let isa = active_isa();
    if !weight.layout.runs_on(isa) {
        bail!(
            Unsupported,
            "the weight was packed as `{}` for ISA tier {} and tier {isa} cannot read it: \
             pack it again under this tier",
            weight.layout.name(),
            weight.isa
        );
    }
    let wlayout = Layout::contiguous(DType::U8, &[weight.buf.len()]);
    let mut inputs: Vec<(&str, *const u8, &Layout)> = vec![
        ("x", x.as_ptr(), x.layout()),
        ("weight", weight.data(), &wlayout),
    ];
    if let Some(b) = bias {
        inputs.push(("bias", b.as_ptr(), b.layout()));
    }
    check_out_alias(out, &inputs)?;

    let mut args = base_args(x, &rows, n, bias, out);
    args.w = weight.data().cast();
    args.w_dtype = weight.dtype.xk();
    match weight.layout {
        PackedLayout::Plain => {
            args.w_stride = k as i64;
            crate::ops::linear::run(args, k * weight.dtype.size());
        }
        PackedLayout::AmxTiles => {
            args.w_kind = sys::xk_weight_kind_XK_WEIGHT_PACKED_AMX as i32;
            run_tiled(args, true);
        }
        PackedLayout::AmxSplit => {
            args.w_kind = sys::xk_weight_kind_XK_WEIGHT_PACKED_AMX3 as i32;
            run_tiled(args, true);
        }
        PackedLayout::Panels { .. } => {
            args.w_kind = sys::xk_weight_kind_XK_WEIGHT_PACKED_PANEL as i32;
            args.bf16_pairs = -1;
            run_tiled(args, false);
        }
    }
    Ok(())
}

/// The tiled GEMM over a packed weight, any M (x packed first on AMX: four
/// split parts for `XK_WEIGHT_PACKED_AMX3`).
fn run_tiled(args: sys::xk_linear_args, amx: bool) {
    let (m, n, k) = (args.m as usize, args.n as usize, args.k as usize);
    if m == 0 || n == 0 {
        return;
    }
    // The split f32 layout's decode rows read x as it is (pk3_gemv in amx.c).
    let split_decode = args.w_kind == sys::xk_weight_kind_XK_WEIGHT_PACKED_AMX3 as i32
        && m <= crate::ops::linear::DECODE_MAX_M;
    if amx && k > 0 && !split_decode && !crate::ops::linear_amx::split_narrow(&args) {
        return with_packed_x(args, gemm_tiles);
    }
    gemm_tiles(args);
}

/// Packs x of `args` (one bf16 part, or four split parts when `w_kind` is
/// `XK_WEIGHT_PACKED_AMX3`) into the calling thread's packed-x buffer, in
/// parallel, and runs `f` with `xp` pointing at it.
fn with_packed_x<R>(mut args: sys::xk_linear_args, f: impl FnOnce(sys::xk_linear_args) -> R) -> R {
    let (m, k) = (args.m as usize, args.k as usize);
    let parts = if args.w_kind == sys::xk_weight_kind_XK_WEIGHT_PACKED_AMX3 as i32 {
        4
    } else {
        1
    };
    let bytes = parts * m.div_ceil(32) * 32 * k.div_ceil(32) * 64;
    with_thread_buffer(&PACKED_X, bytes, |xp| {
        args.xp = xp.cast();
        let pack = platform::kernels().linear_pack_x.expect("linear_pack_x");
        let a = Shared(args);
        // ~256 KiB of packed x per block.
        let min_chunk = ((256 * 1024) / (parts * k.div_ceil(32) * 2048)).max(1);
        grid(m.div_ceil(32), min_chunk, |r| {
            // SAFETY: validated x; blocks write disjoint parts of xp.
            unsafe { pack(a.get(), r.start as i64, r.end as i64) }
        });
        f(args)
    })
}

type ThreadBuffer = std::thread::LocalKey<std::cell::RefCell<Option<AlignedBytes>>>;

thread_local! {
    /// The calling thread's packed x, kept between calls: a fresh buffer per
    /// call would page-fault its memory in every time (a large share of a
    /// decode call).
    static PACKED_X: std::cell::RefCell<Option<AlignedBytes>> = const { std::cell::RefCell::new(None) };
    /// The calling thread's chunk of weight columns packed per call by
    /// [`run_repacked`], kept between calls.
    static PACKED_W: std::cell::RefCell<Option<AlignedBytes>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `key`'s buffer grown to at least `bytes` bytes (64-byte
/// aligned; huge pages from 2 MiB, see [`AlignedBytes::streamed`]).
fn with_thread_buffer<R>(
    key: &'static ThreadBuffer,
    bytes: usize,
    f: impl FnOnce(*mut u8) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut b) => {
            if !b.as_ref().is_some_and(|b| b.len() >= bytes) {
                *b = Some(AlignedBytes::streamed(bytes));
            }
            f(b.as_mut().expect("filled above").as_mut_ptr())
        }
        // Re-entered on this thread (a nested grid): a fresh buffer.
        Err(_) => f(AlignedBytes::streamed(bytes).as_mut_ptr()),
    })
}

/// Fewest activation rows for which [`linear`](crate::linear) with bf16 x and
/// weight on the `amx` tier packs the weight into AMX tiles for the call and
/// runs the pre-packed tile GEMM (`N > 64`: narrower weights have their own
/// kernel). The unpacked tile GEMM repacks x into B tiles for every k block
/// of every column tile and transposes C in its epilogue; the pack is one
/// pass over W (read and write, ~1.4 ms at K = 4096, N = 2048), which pays
/// from here on. Measured (one thread, old and new path alternated in one
/// process, best of 6-30 calls, load ~3): M = 1024 K = 4096 N = 2048 1.1-1.25x,
/// M = 4096 1.85x, M = 512 K = N = 4096 1.09x; at M = 256 a tie or a loss
/// (K = 4096 N = 2048 1.0-1.1x, K = 2048 N = 12288 0.92x), at M = 128 0.93x.
pub const REPACK_MIN_M: usize = 512;

/// Packed weight bytes per chunk of columns when `linear` packs a bf16
/// weight per call: a chunk is packed just before its GEMM, so it is still
/// in cache.
const REPACK_CHUNK_BYTES: usize = 8 << 20;

/// The same for an f32 weight split into three bf16 parts: larger, because
/// each chunk's GEMM streams all of packed x, four parts (8 bytes an element)
/// here; 64 MiB keeps N ≤ 2720 at K = 4096 in one chunk. The chunks bound the
/// per-thread buffer (a 248k-row lm_head would need 6 GiB whole).
const SPLIT_CHUNK_BYTES: usize = 64 << 20;

/// Whether this validated `linear` runs [`run_repacked`]: bf16 with
/// `M >= REPACK_MIN_M` (same products in the same k order as the unpacked
/// tile GEMM, so results are bit-identical to it), or f32 on the split path
/// ([`takes_f32`](crate::ops::linear_amx::takes_f32)).
pub(crate) fn repack_applies(a: &sys::xk_linear_args) -> bool {
    let bf16 = active_isa() == Isa::Amx
        && a.m as usize >= REPACK_MIN_M
        && a.n > 64
        && a.k > 0
        && a.x_dtype == DType::BF16.xk()
        && a.w_dtype == DType::BF16.xk()
        && a.w_kind == sys::xk_weight_kind_XK_WEIGHT_DENSE as i32
        && a.perm.is_null();
    bf16 || crate::ops::linear_amx::takes_f32(a)
}

/// Runs a validated `linear` for which [`repack_applies`] holds: x packed
/// once, then per chunk of weight columns the chunk packed (bf16 as AMX
/// tiles, f32 split into three bf16 parts) and the packed tile GEMM run on
/// it. Column chunks do not change any output's arithmetic, so results equal
/// [`PackedLinearWeight`]'s for the same layout. Returns false when an f32
/// weight has a non-finite value, which the split cannot carry: earlier
/// chunks' outputs may then be written, and the caller's FMA path writes
/// every output again.
pub(crate) fn run_repacked(mut args: sys::xk_linear_args) -> bool {
    let (n, k) = (args.n as usize, args.k as usize);
    let kernels = platform::kernels();
    let split = args.w_dtype == DType::F32.xk();
    let kpad = k.div_ceil(32) * 32;
    let (kind, col_bytes, chunk_bytes) = if split {
        let kind = sys::xk_weight_kind_XK_WEIGHT_PACKED_AMX3;
        (kind, 3 * kpad * 2, SPLIT_CHUNK_BYTES)
    } else {
        let kind = sys::xk_weight_kind_XK_WEIGHT_PACKED_AMX;
        (kind, kpad * 2, REPACK_CHUNK_BYTES)
    };
    let cols = ((chunk_bytes / col_bytes) / 32 * 32).max(32);
    // A last chunk of at most 64 columns joins the one before: a chunk that
    // narrow would run the narrow split kernel (`split_narrow`), whose
    // arithmetic differs in the last bit from the packed weight's GEMM.
    let narrow = crate::ops::linear_amx::AMX_F32_NARROW_N;
    let wbytes = (cols + narrow).min(n.div_ceil(32) * 32) * col_bytes;
    let f32_bytes = |dtype: i32| if dtype == DType::F32.xk() { 4 } else { 2 };
    let (out_es, bias_es) = (f32_bytes(args.out_dtype), f32_bytes(args.bias_dtype));
    let w_es = if split { 4 } else { 2 };
    // pack_x reads the weight kind to know how many parts of x to pack.
    args.w_kind = kind as i32;
    let body = |args: sys::xk_linear_args| {
        with_thread_buffer(&PACKED_W, wbytes, |wp| {
            let mut n0 = 0;
            while n0 < n {
                let nc = if n - n0 <= cols + narrow {
                    n - n0
                } else {
                    cols
                };
                let mut pa = pack_args(nc, k, if split { DType::F32 } else { DType::BF16 });
                // SAFETY (pointer offsets): row n0 and bias/out column n0
                // exist in the validated tensors.
                pa.w =
                    unsafe { args.w.cast::<u8>().add(n0 * args.w_stride as usize * w_es) }.cast();
                pa.w_stride = args.w_stride;
                if split {
                    if crate::ops::linear_amx::pack_w3(&pa, wp) != 0 {
                        return false;
                    }
                } else {
                    pa.w_kind = kind as i32;
                    let pack_w = kernels.linear_pack_w.expect("linear_pack_w");
                    let (pa, d) = (Shared(pa), Shared(wp as usize));
                    grid(nc.div_ceil(32), 8, |r| {
                        // SAFETY: validated weight rows; blocks write disjoint parts of wp,
                        // which holds the chunk's packed bytes.
                        unsafe {
                            pack_w(
                                pa.get(),
                                r.start as i64,
                                r.end as i64,
                                *d.get() as *mut std::ffi::c_void,
                            )
                        }
                    });
                }
                let mut c = args;
                c.n = nc as i64;
                c.w = wp.cast_const().cast();
                c.w_stride = 0;
                // SAFETY: column n0 < N of the validated out and bias.
                c.out = unsafe { args.out.cast::<u8>().add(n0 * out_es) }.cast();
                if !args.bias.is_null() {
                    // SAFETY: as above.
                    c.bias = unsafe { args.bias.cast::<u8>().add(n0 * bias_es) }.cast();
                }
                gemm_tiles(c);
                n0 += nc;
            }
            true
        })
    };
    if crate::ops::linear_amx::split_narrow(&args) {
        // The narrow split kernel splits x itself: nothing to pack.
        body(args)
    } else {
        with_packed_x(args, body)
    }
}
