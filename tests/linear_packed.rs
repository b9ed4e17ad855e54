//! Pre-packed linear weights (`PackedLinearWeight` + `linear_packed`, issue
//! #5): parity against the fp64 reference on every tier, dtype and layout;
//! bit-identity with the unpacked `linear` where both run the same tiled
//! GEMM; thread invariance; bad inputs (named error, output untouched).
//!
//! Tolerance (that of `linear`): |y - y_ref| <= 4·sqrt(K)·2⁻²⁴·Σ|x·w| +
//! ulp_out(y_ref); the test data has no bf16 denormals, so the AMX and
//! `vdpbf16ps` flush rules do not apply.

mod common;

use common::float_buf::{
    assert_linear_close, assert_padding_untouched, linear_reference, linear_tol, Buf,
};
use common::{for_each_isa, with_threads, Rng};
use half::bf16;
use xpu_ops::{
    linear, linear_packed, DType, Isa, PackedLayout, PackedLinearWeight, Status, TensorView,
    TensorViewMut,
};

#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    dtype: DType,
    out_f32: bool,
    bias: Option<DType>,
    x_pad: usize,
    w_pad: usize,
    out_pad: usize,
}

struct Data {
    x: Buf,
    w: Buf,
    b: Option<Buf>,
}

fn rand_vals(rng: &mut Rng, n: usize, dtype: DType) -> Vec<f32> {
    let b = Buf::from_f32(dtype, &rng.f32_vec(n, 1.0));
    let v = b.view(&[n], &[1]);
    (0..n).map(|i| v.get_f32(&[i])).collect()
}

fn make(c: &Case, seed: u64) -> Data {
    let mut rng = Rng(seed);
    let x = Buf::from_f32(
        c.dtype,
        &rand_vals(&mut rng, c.m * (c.k + c.x_pad), c.dtype),
    );
    let w = Buf::from_f32(
        c.dtype,
        &rand_vals(&mut rng, c.n * (c.k + c.w_pad), c.dtype),
    );
    let b = c
        .bias
        .map(|bd| Buf::from_f32(bd, &rand_vals(&mut rng, c.n, bd)));
    Data { x, w, b }
}

fn out_dtype(c: &Case) -> DType {
    if c.out_f32 {
        DType::F32
    } else {
        c.dtype
    }
}

/// Packs on the active tier and runs; `unpacked` runs plain `linear` instead.
fn run(c: &Case, d: &Data, unpacked: bool) -> Buf {
    run_layout(c, d, unpacked, None)
}

fn run_layout(c: &Case, d: &Data, unpacked: bool, layout: Option<PackedLayout>) -> Buf {
    let os = c.n + c.out_pad;
    let mut out = Buf::from_f32(out_dtype(c), &vec![-7.0; c.m * os]);
    let x = d.x.view(&[c.m, c.k], &[c.k + c.x_pad, 1]);
    let w = d.w.view(&[c.n, c.k], &[c.k + c.w_pad, 1]);
    let b = d.b.as_ref().map(|b| b.view(&[c.n], &[1]));
    let mut o = out.view_mut(&[c.m, c.n], &[os, 1]);
    if unpacked {
        linear(&x, &w, b.as_ref(), &mut o).expect("valid linear");
    } else {
        let p = match layout {
            Some(l) => PackedLinearWeight::with_layout(&w, l),
            None => PackedLinearWeight::new(&w),
        }
        .expect("valid weight");
        linear_packed(&x, &p, b.as_ref(), &mut o).expect("valid linear_packed");
    }
    out
}

fn check(c: &Case, seed: u64, what: &str) {
    check_layout(c, seed, what, None)
}

fn check_layout(c: &Case, seed: u64, what: &str, layout: Option<PackedLayout>) {
    let d = make(c, seed);
    let x = d.x.view(&[c.m, c.k], &[c.k + c.x_pad, 1]);
    let w = d.w.view(&[c.n, c.k], &[c.k + c.w_pad, 1]);
    let b = d.b.as_ref().map(|b| b.view(&[c.n], &[1]));
    let (r, absd) = linear_reference(&x, &w, b.as_ref());
    let out = run_layout(c, &d, false, layout);
    let os = c.n + c.out_pad;
    assert_linear_close(
        &out.view(&[c.m, c.n], &[os, 1]),
        &r,
        &absd,
        c.m,
        c.n,
        c.k,
        what,
    );
    assert_padding_untouched(&out, c.m, c.n, os, -7.0, what);
}

/// Shapes around the packed layouts' blocks: 32-row AMX blocks and 512-k
/// blocks, 16/32-column panels and 256-k blocks, decode M, tile boundaries;
/// f32 on amx with N <= 64 and M > 16 runs the narrow split kernel.
const SHAPES: [(usize, usize, usize); 20] = [
    (0, 5, 7),
    (3, 0, 9),
    (2, 6, 0),
    (40, 70, 0),
    (1, 1, 1),
    (1, 37, 53),
    (3, 33, 64),
    (5, 64, 511),
    (16, 31, 512),
    (17, 65, 513),
    (32, 32, 32),
    (33, 97, 255),
    (47, 130, 1055),
    (64, 33, 257),
    (65, 200, 96),
    (71, 541, 29),
    (100, 3, 1025),
    (130, 300, 600),
    (17, 64, 97),
    (50, 17, 600),
];

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn layout_for(isa: Isa, dtype: DType) -> PackedLayout {
    match (isa, dtype) {
        (Isa::Amx, DType::BF16) => PackedLayout::AmxTiles,
        (Isa::Amx, DType::F32) => PackedLayout::AmxSplit,
        _ => PackedLayout::Plain,
    }
}

/// The f32 panel layout of a tier, where it has one.
fn panels_for(isa: Isa) -> Option<PackedLayout> {
    match isa {
        Isa::Amx | Isa::Avx512 => Some(PackedLayout::Panels { nr: 32 }),
        Isa::Avx2 => Some(PackedLayout::Panels { nr: 16 }),
        _ => None,
    }
}

#[test]
fn packed_parity_every_tier_dtype_shape() {
    for_each_isa(|isa| {
        for (si, &(m, n, k)) in SHAPES.iter().enumerate() {
            for (di, &dtype) in DTYPES.iter().enumerate() {
                let c = Case {
                    m,
                    n,
                    k,
                    dtype,
                    out_f32: (si + di) % 3 == 0,
                    bias: match (si + di) % 3 {
                        0 => None,
                        1 => Some(dtype),
                        _ => Some(DType::F32),
                    },
                    x_pad: si % 2 * 3,
                    w_pad: (si + 1) % 2 * 5,
                    out_pad: si % 3,
                };
                check(&c, 100 + si as u64, &format!("{isa} {c:?}"));
                if let (DType::F32, Some(l)) = (dtype, panels_for(isa)) {
                    check_layout(&c, 100 + si as u64, &format!("{isa} {l:?} {c:?}"), Some(l));
                }
            }
        }
        for dtype in DTYPES {
            let p =
                PackedLinearWeight::new(&Buf::from_f32(dtype, &[1.0; 6]).view(&[2, 3], &[3, 1]))
                    .expect("valid weight");
            assert_eq!(p.layout(), layout_for(isa, dtype), "{isa} {dtype}");
            assert_eq!(p.isa(), isa);
            assert_eq!((p.n(), p.k(), p.dtype()), (2, 3, dtype));
        }
    });
}

/// Vector x ([K] -> [N]) and the 248k-vocab lm_head row on the packed path.
#[test]
fn packed_vector_and_wide_n() {
    for_each_isa(|isa| {
        for dtype in [DType::BF16, DType::F32] {
            let (n, k) = (1000, 72);
            let mut rng = Rng(7);
            let w = Buf::from_f32(dtype, &rand_vals(&mut rng, n * k, dtype));
            let x = Buf::from_f32(dtype, &rand_vals(&mut rng, k, dtype));
            let p = PackedLinearWeight::new(&w.view(&[n, k], &[k, 1])).unwrap();
            let mut y = Buf::from_f32(dtype, &vec![0.0; n]);
            let mut y2 = Buf::from_f32(dtype, &vec![0.0; n]);
            linear_packed(&x.view(&[k], &[1]), &p, None, &mut y.view_mut(&[n], &[1])).unwrap();
            linear_packed(
                &x.view(&[1, k], &[k, 1]),
                &p,
                None,
                &mut y2.view_mut(&[1, n], &[n, 1]),
            )
            .unwrap();
            assert_eq!(y.bits(), y2.bits(), "{isa} {dtype}: [K] vs [1, K]");
        }
    });
    // M = 1, N = 248,320, bf16 (an upstream kernel returns wrong logits there).
    let c = Case {
        m: 1,
        n: 248_320,
        k: 64,
        dtype: DType::BF16,
        out_f32: false,
        bias: None,
        x_pad: 0,
        w_pad: 0,
        out_pad: 0,
    };
    check(&c, 5, "lm_head 248320");
}

/// Where the packed and plain weights run the same tiled GEMM (amx bf16 and
/// f32 panels for M > 16; the split f32 amx3 layout where plain linear
/// splits too: M >= AMX_F32_MIN_M, the narrow split kernel for N <= 64),
/// the results are bit-identical.
#[test]
fn packed_matches_unpacked_bits() {
    for_each_isa(|isa| {
        for (dtype, split) in [
            (DType::F32, false),
            (DType::F32, true),
            (DType::BF16, false),
        ] {
            let layout = match (dtype, split) {
                (DType::F32, false) => panels_for(isa),
                (DType::F32, true) => Some(PackedLayout::AmxSplit).filter(|_| isa == Isa::Amx),
                _ => Some(layout_for(isa, dtype)).filter(|l| *l != PackedLayout::Plain),
            };
            let Some(layout) = layout else { continue };
            let shapes: &[(usize, usize, usize)] = if split {
                let m = xpu_ops::ops::linear_amx::AMX_F32_MIN_M;
                &[
                    (m, 65, 513),
                    (m + 1, 96, 1100),
                    (200, 70, 31),
                    (300, 129, 2049),
                    (m, 64, 513),
                    (m + 3, 17, 1100),
                    (200, 1, 31),
                    (300, 40, 2049),
                    (m + 9, 64, 2800),
                ]
            } else {
                // M under AMX_F32_MIN_M: plain f32 runs the FMA GEMM on amx.
                &[(17, 65, 513), (64, 96, 1100), (120, 70, 300)]
            };
            for &(m, n, k) in shapes {
                let c = Case {
                    m,
                    n,
                    k,
                    dtype,
                    out_f32: false,
                    bias: Some(DType::F32),
                    x_pad: 1,
                    w_pad: 2,
                    out_pad: 0,
                };
                let d = make(&c, 9);
                let a = xpu_ops::ops::linear::with_bf16_dot(false, || run(&c, &d, true));
                let b = run_layout(&c, &d, false, Some(layout));
                assert_eq!(a.bits(), b.bits(), "{isa} {layout:?} {c:?}");
            }
        }
    });
}

#[test]
fn packed_thread_invariance() {
    for_each_isa(|isa| {
        for dtype in DTYPES {
            for &(m, n, k) in &[(1, 300, 200), (40, 257, 700), (150, 130, 1030)] {
                let c = Case {
                    m,
                    n,
                    k,
                    dtype,
                    out_f32: false,
                    bias: Some(dtype),
                    x_pad: 0,
                    w_pad: 0,
                    out_pad: 0,
                };
                let d = make(&c, 3);
                let go = |threads: usize| with_threads(threads, || run(&c, &d, false).bits());
                let one = go(1);
                assert_eq!(one, go(2), "{isa} {dtype} {m}x{n}x{k}: 1 vs 2 threads");
                assert_eq!(one, go(3), "{isa} {dtype} {m}x{n}x{k}: 1 vs 3 threads");
            }
        }
    });
}

fn expect_err(r: xpu_ops::Result<()>, status: Status, what: &str) {
    match r {
        Ok(()) => panic!("{what}: expected {status:?}, got Ok"),
        Err(e) => assert_eq!(e.status, status, "{what}: {e}"),
    }
}

#[test]
fn packed_bad_inputs() {
    let (m, n, k) = (3, 4, 5);
    let w = vec![0.5f32; n * k];
    let wv = TensorView::new(&w, &[n, k]).unwrap();
    let p = PackedLinearWeight::new(&wv).unwrap();
    let x = vec![1.0f32; m * k];
    let xb = vec![bf16::from_f32(1.0); m * k];
    let bias = vec![0.0f32; n];
    let bias_bad = vec![0.0f32; n + 1];
    let mut out = vec![-3.0f32; m * n];
    let xv = TensorView::new(&x, &[m, k]).unwrap();
    let untouched = |out: &[f32], what: &str| {
        assert!(out.iter().all(|&v| v == -3.0), "{what}: out written");
    };
    // Packing: rank, dtype, inner stride.
    let w1 = TensorView::new(&w, &[n * k]).unwrap();
    assert_eq!(
        PackedLinearWeight::new(&w1).unwrap_err().status,
        Status::ShapeMismatch
    );
    let wi = vec![1i32; n * k];
    assert_eq!(
        PackedLinearWeight::new(&TensorView::new(&wi, &[n, k]).unwrap())
            .unwrap_err()
            .status,
        Status::DtypeMismatch
    );
    let ws = TensorView::strided(&w, &[n, 2], &[5, 2]).unwrap();
    assert_eq!(
        PackedLinearWeight::new(&ws).unwrap_err().status,
        Status::InvalidStride
    );
    // K mismatch.
    let xk = TensorView::new(&x[..m * 4], &[m, 4]).unwrap();
    expect_err(
        linear_packed(
            &xk,
            &p,
            None,
            &mut TensorViewMut::new(&mut out, &[m, n]).unwrap(),
        ),
        Status::ShapeMismatch,
        "K mismatch",
    );
    untouched(&out, "K mismatch");
    // x dtype differs from the weight's.
    let mut outb = vec![bf16::from_f32(-3.0); m * n];
    expect_err(
        linear_packed(
            &TensorView::new(&xb, &[m, k]).unwrap(),
            &p,
            None,
            &mut TensorViewMut::new(&mut outb, &[m, n]).unwrap(),
        ),
        Status::DtypeMismatch,
        "x dtype",
    );
    assert!(outb.iter().all(|v| v.to_f32() == -3.0));
    // out shape, bias shape.
    expect_err(
        linear_packed(
            &xv,
            &p,
            None,
            &mut TensorViewMut::new(&mut out[..m * 3], &[m, 3]).unwrap(),
        ),
        Status::ShapeMismatch,
        "out shape",
    );
    untouched(&out, "out shape");
    expect_err(
        linear_packed(
            &xv,
            &p,
            Some(&TensorView::new(&bias_bad, &[n + 1]).unwrap()),
            &mut TensorViewMut::new(&mut out, &[m, n]).unwrap(),
        ),
        Status::ShapeMismatch,
        "bias shape",
    );
    untouched(&out, "bias shape");
    // out overlapping x.
    let mut shared = vec![1.0f32; m * k + m * n];
    let before = shared.clone();
    {
        let (xs, _) = shared.split_at(m * k);
        let xs = xs.to_vec();
        let _ = xs;
    }
    let ptr = shared.as_mut_ptr();
    // SAFETY (test): two views of one buffer to provoke the aliasing check.
    let (xa, oa) = unsafe {
        (
            std::slice::from_raw_parts(ptr, m * k),
            std::slice::from_raw_parts_mut(ptr.add(2), m * n),
        )
    };
    expect_err(
        linear_packed(
            &TensorView::new(xa, &[m, k]).unwrap(),
            &p,
            Some(&TensorView::new(&bias, &[n]).unwrap()),
            &mut TensorViewMut::new(oa, &[m, n]).unwrap(),
        ),
        Status::Aliasing,
        "alias",
    );
    assert_eq!(shared, before, "alias: out written");
}

/// A tiled layout used under a tier that cannot read it fails with a named
/// error (output untouched); the plain layout runs anywhere.
#[test]
fn packed_wrong_tier() {
    let isas = xpu_ops::supported_isas();
    let (m, n, k) = (2, 3, 4);
    for dtype in [DType::F32, DType::BF16] {
        let w = Buf::from_f32(dtype, &[0.25; 12]);
        let x = Buf::from_f32(dtype, &[1.0; 8]);
        for &pack_isa in &isas {
            let p = xpu_ops::with_isa(pack_isa, || {
                let wv = w.view(&[n, k], &[k, 1]);
                match (dtype, panels_for(pack_isa)) {
                    (DType::F32, Some(l)) => PackedLinearWeight::with_layout(&wv, l),
                    _ => PackedLinearWeight::new(&wv),
                }
                .unwrap()
            })
            .unwrap();
            for &run_isa in &isas {
                let mut out = Buf::from_f32(dtype, &[-3.0; 6]);
                let r = xpu_ops::with_isa(run_isa, || {
                    linear_packed(
                        &x.view(&[m, k], &[k, 1]),
                        &p,
                        None,
                        &mut out.view_mut(&[m, n], &[n, 1]),
                    )
                })
                .unwrap();
                if p.layout().runs_on(run_isa) {
                    r.unwrap_or_else(|e| panic!("{dtype} packed {pack_isa} run {run_isa}: {e}"));
                    let o = out.view(&[6], &[1]);
                    assert!((0..6).all(|i| o.get_f32(&[i]) == 1.0));
                } else {
                    let e = r.expect_err("wrong tier");
                    assert_eq!(e.status, Status::Unsupported);
                    assert!(e.to_string().contains(pack_isa.name()), "{e}");
                    let o = out.view(&[6], &[1]);
                    assert!((0..6).all(|i| o.get_f32(&[i]) == -3.0));
                }
            }
        }
    }
}

/// `with_layout` refuses a layout the tier or dtype cannot use (Unsupported)
/// and a forced f32 panel layout is thread-count invariant.
#[test]
fn packed_explicit_layouts() {
    for_each_isa(|isa| {
        let w32 = Buf::from_f32(DType::F32, &[0.5; 12]);
        let w16 = Buf::from_f32(DType::BF16, &[0.5; 12]);
        let (v32, v16) = (w32.view(&[3, 4], &[4, 1]), w16.view(&[3, 4], &[4, 1]));
        let err = |r: xpu_ops::Result<PackedLinearWeight>| r.expect_err("bad layout").status;
        assert_eq!(
            err(PackedLinearWeight::with_layout(
                &v32,
                PackedLayout::AmxTiles
            )),
            Status::Unsupported
        );
        assert_eq!(
            err(PackedLinearWeight::with_layout(
                &v16,
                PackedLayout::Panels { nr: 32 }
            )),
            Status::Unsupported
        );
        assert_eq!(
            err(PackedLinearWeight::with_layout(
                &v32,
                PackedLayout::Panels { nr: 8 }
            )),
            Status::Unsupported
        );
        if isa != Isa::Amx {
            assert_eq!(
                err(PackedLinearWeight::with_layout(
                    &v16,
                    PackedLayout::AmxTiles
                )),
                Status::Unsupported
            );
        }
        assert!(PackedLinearWeight::with_layout(&v16, PackedLayout::Plain).is_ok());
        assert_eq!(
            err(PackedLinearWeight::with_layout(
                &v16,
                PackedLayout::AmxSplit
            )),
            Status::Unsupported
        );
        if isa == Isa::Amx {
            // A weight with inf or NaN is not split: with_layout refuses it,
            // new() falls back to the plain layout (the FMA path).
            for bad in [f32::INFINITY, f32::NAN] {
                let mut wv = vec![0.5f32; 12];
                wv[5] = bad;
                let wb = Buf::from_f32(DType::F32, &wv);
                let v = wb.view(&[3, 4], &[4, 1]);
                assert_eq!(
                    err(PackedLinearWeight::with_layout(&v, PackedLayout::AmxSplit)),
                    Status::InvalidValue
                );
                let p = PackedLinearWeight::new(&v).unwrap();
                assert_eq!(p.layout(), PackedLayout::Plain);
                let x = Buf::from_f32(DType::F32, &[1.0; 4]);
                let mut y = Buf::from_f32(DType::F32, &[0.0; 3]);
                linear_packed(
                    &x.view(&[1, 4], &[4, 1]),
                    &p,
                    None,
                    &mut y.view_mut(&[1, 3], &[3, 1]),
                )
                .unwrap();
                let yv = y.view(&[3], &[1]);
                assert_eq!(yv.get_f32(&[0]), 2.0);
                let y1 = yv.get_f32(&[1]);
                assert!(
                    if bad.is_nan() { y1.is_nan() } else { y1 == bad },
                    "{bad}: {y1}"
                );
            }
        } else {
            assert_eq!(
                err(PackedLinearWeight::with_layout(
                    &v32,
                    PackedLayout::AmxSplit
                )),
                Status::Unsupported
            );
        }
        let Some(l) = panels_for(isa) else { return };
        let (m, n, k) = (40, 257, 700);
        let c = Case {
            m,
            n,
            k,
            dtype: DType::F32,
            out_f32: false,
            bias: Some(DType::F32),
            x_pad: 0,
            w_pad: 0,
            out_pad: 0,
        };
        let d = make(&c, 11);
        let p = PackedLinearWeight::with_layout(&d.w.view(&[n, k], &[k, 1]), l).unwrap();
        assert_eq!(p.layout(), l);
        let go =
            |threads: usize| with_threads(threads, || run_layout(&c, &d, false, Some(l)).bits());
        assert_eq!(go(1), go(3), "{isa} panels: 1 vs 3 threads");
    });
}

/// Runs `linear` (`unpacked`) or `linear_packed` into an out buffer whose
/// data starts at a 64-byte boundary; the values as f64.
fn run_aligned<T: xpu_ops::dtype::Element + Default>(
    c: &Case,
    d: &Data,
    unpacked: bool,
    get: fn(T) -> f64,
) -> Vec<f64> {
    let (m, n, k) = (c.m, c.n, c.k);
    let x = d.x.view(&[m, k], &[k, 1]);
    let w = d.w.view(&[n, k], &[k, 1]);
    let b = d.b.as_ref().map(|b| b.view(&[n], &[1]));
    let es = std::mem::size_of::<T>();
    let mut v = vec![T::default(); m * n + 64 / es];
    let off = ((64 - v.as_ptr() as usize % 64) % 64) / es;
    {
        let mut o = TensorViewMut::strided(&mut v[off..off + m * n], &[m, n], &[n, 1]).unwrap();
        if unpacked {
            linear(&x, &w, b.as_ref(), &mut o).expect("valid linear");
        } else {
            let p = PackedLinearWeight::new(&w).expect("valid weight");
            linear_packed(&x, &p, b.as_ref(), &mut o).expect("valid linear_packed");
        }
    }
    v[off..off + m * n].iter().map(|&y| get(y)).collect()
}

/// Outputs of 4 MiB or more with whole, 64-byte aligned rows: the amx
/// epilogues (packed and plain paths) write them with streaming stores.
/// Parity with the reference (tolerance as above) for bf16 and f32 out,
/// and the packed and plain paths bit-identical.
#[test]
fn large_aligned_out() {
    let (m, n, k) = (512, 4096, 64);
    for out_f32 in [false, true] {
        let c = Case {
            m,
            n,
            k,
            dtype: DType::BF16,
            out_f32,
            bias: Some(DType::BF16),
            x_pad: 0,
            w_pad: 0,
            out_pad: 0,
        };
        let d = make(&c, 21);
        let x = d.x.view(&[m, k], &[k, 1]);
        let w = d.w.view(&[n, k], &[k, 1]);
        let b = d.b.as_ref().map(|b| b.view(&[n], &[1]));
        let (r, absd) = linear_reference(&x, &w, b.as_ref());
        for_each_isa(|isa| {
            let go = |unpacked: bool| {
                if out_f32 {
                    run_aligned::<f32>(&c, &d, unpacked, |y| y as f64)
                } else {
                    run_aligned::<bf16>(&c, &d, unpacked, |y| y.to_f64())
                }
            };
            let (p, u) = (go(false), go(true));
            for i in 0..m * n {
                let tol = linear_tol(k, absd[i], out_dtype(&c), r[i]);
                assert!(
                    (p[i] - r[i]).abs() <= tol,
                    "{isa} out_f32={out_f32}: out[{}][{}] = {}, reference {}, tol {tol}",
                    i / n,
                    i % n,
                    p[i],
                    r[i]
                );
                if isa == Isa::Amx {
                    assert_eq!(
                        p[i].to_bits(),
                        u[i].to_bits(),
                        "{isa}: packed vs plain at {i}"
                    );
                }
            }
        });
    }
}

/// `linear` on the amx tier with bf16 x and weight at M >= `REPACK_MIN_M`,
/// or f32 at M >= `AMX_F32_MIN_M`, packs the weight per call in column
/// chunks (bf16: 8 MiB of packed tiles, 992 columns at K = 4100; f32: the
/// three-part split in 64 MiB, 2688 columns; a ragged last chunk of at most
/// 64 columns joins the one before): bit-identical to
/// `linear_packed` with the same weight packed once (the same tile GEMM on
/// the same products), and within `linear`'s tolerance of the fp64 reference
/// on the first, middle and last rows (a strided view of them). Row strides,
/// a bias (bf16 into a bf16 out, f32 into an f32 out) and a second chunk
/// with a ragged end.
#[test]
fn repacked_linear_matches_packed_bits() {
    if !xpu_ops::supported_isas().contains(&Isa::Amx) {
        return;
    }
    let bf16_m = xpu_ops::ops::linear_packed::REPACK_MIN_M + 8;
    let f32_m = xpu_ops::ops::linear_amx::AMX_F32_MIN_M + 8;
    // f32: 2800 columns of the three-part split at K = 4100 take two of its
    // 64 MiB chunks (2688 columns each); 2700 one (its last 12 columns join
    // the first chunk: a chunk that narrow would run the narrow kernel).
    for (dtype, m, n, out_f32, bias) in [
        (DType::BF16, bf16_m, 1000, false, DType::BF16),
        (DType::BF16, bf16_m, 1000, true, DType::F32),
        (DType::F32, f32_m, 2800, true, DType::F32),
        (DType::F32, f32_m, 2700, true, DType::F32),
    ] {
        let c = Case {
            m,
            n,
            k: 4100,
            dtype,
            out_f32,
            bias: Some(bias),
            x_pad: 3,
            w_pad: 5,
            out_pad: 2,
        };
        let d = make(&c, 21);
        xpu_ops::with_isa(Isa::Amx, || {
            let plain = with_threads(1, || run(&c, &d, true));
            let packed = with_threads(1, || run(&c, &d, false));
            assert_eq!(plain.bits(), packed.bits(), "{c:?}: repacked vs packed");
            let two = with_threads(2, || run(&c, &d, true));
            assert_eq!(plain.bits(), two.bits(), "{c:?}: 1 vs 2 threads");
            let (xs, os, step) = (c.k + c.x_pad, c.n + c.out_pad, (c.m - 1) / 2);
            let x = d.x.view(&[3, c.k], &[step * xs, 1]);
            let w = d.w.view(&[c.n, c.k], &[c.k + c.w_pad, 1]);
            let b = d.b.as_ref().map(|b| b.view(&[c.n], &[1]));
            let (r, absd) = linear_reference(&x, &w, b.as_ref());
            let out = plain.view(&[3, c.n], &[step * os, 1]);
            assert_linear_close(
                &out,
                &r,
                &absd,
                3,
                c.n,
                c.k,
                "repacked first/middle/last rows",
            );
            assert_padding_untouched(&plain, c.m, c.n, os, -7.0, "repacked");
        })
        .expect("amx tier");
    }
}
