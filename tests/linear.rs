//! Parity, bad-input and thread-invariance tests for the FC / GEMM family:
//! `linear` (dense), `wna16_linear` with the GPTQ / AWQ / compressed-tensors
//! importers, and W8A8 int8 (`scaled_int8_quant`, `int8_scaled_mm(_azp)`).
//!
//! Tolerance of every floating result against the fp64 reference (the op
//! docs say the same): `|y - ref| <= 4·sqrt(K)·2⁻²⁴·Σ|x·w| + ulp_out(ref)`,
//! with `ulp_out` one unit in the last place of the output dtype.

mod common;

use common::float_buf::{
    assert_linear_close, assert_padding_untouched, linear_reference, ulp, Buf,
};
use common::{for_each_isa, with_threads, Rng};
use half::{bf16, f16};
use xpu_ops::reference::linear as rl;
use xpu_ops::{linear, DType, Status, TensorView, TensorViewMut};

/// Random values exactly representable in `dtype`.
fn rand_vals(rng: &mut Rng, n: usize, scale: f32, dtype: DType) -> Vec<f32> {
    let b = Buf::from_f32(dtype, &rng.f32_vec(n, scale));
    let v = b.view(&[n], &[1]);
    (0..n).map(|i| v.get_f32(&[i])).collect()
}

/// A dense linear case: shapes, dtypes, padding, bias.
#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    dtype: DType,
    out_dtype: DType,
    bias: bool,
    bias_f32: bool,
    x_pad: usize,
    w_pad: usize,
    out_pad: usize,
}

impl Case {
    fn new(m: usize, n: usize, k: usize, dtype: DType) -> Case {
        Case {
            m,
            n,
            k,
            dtype,
            out_dtype: dtype,
            bias: true,
            bias_f32: false,
            x_pad: 0,
            w_pad: 0,
            out_pad: 0,
        }
    }
}

struct Data {
    x: Buf,
    w: Buf,
    b: Option<Buf>,
}

fn make_data(c: &Case, seed: u64) -> Data {
    let mut rng = Rng(seed);
    let xs = c.k + c.x_pad;
    let ws = c.k + c.w_pad;
    let x = Buf::from_f32(c.dtype, &rand_vals(&mut rng, c.m * xs, 1.0, c.dtype));
    let w = Buf::from_f32(c.dtype, &rand_vals(&mut rng, c.n * ws, 1.0, c.dtype));
    let bd = if c.bias_f32 { DType::F32 } else { c.dtype };
    let b = c
        .bias
        .then(|| Buf::from_f32(bd, &rand_vals(&mut rng, c.n, 1.0, bd)));
    Data { x, w, b }
}

/// Runs the op on the active tier; returns the output buffer.
fn run_case(c: &Case, d: &Data) -> Buf {
    let (xs, ws, os) = (c.k + c.x_pad, c.k + c.w_pad, c.n + c.out_pad);
    let mut out = Buf::filled(c.out_dtype, c.m * os, -7.0);
    let x = d.x.view(&[c.m, c.k], &[xs, 1]);
    let w = d.w.view(&[c.n, c.k], &[ws, 1]);
    let b = d.b.as_ref().map(|b| b.view(&[c.n], &[1]));
    linear(&x, &w, b.as_ref(), &mut out.view_mut(&[c.m, c.n], &[os, 1])).expect("valid linear");
    out
}

/// Runs the op on the active tier and checks it against the fp64 reference
/// (tolerance and untouched padding); returns the output buffer with the
/// reference and its Σ|x·w| per output.
fn run_checked(c: &Case, d: &Data, what: &str) -> (Buf, Vec<f64>, Vec<f64>) {
    let (xs, ws, os) = (c.k + c.x_pad, c.k + c.w_pad, c.n + c.out_pad);
    let x = d.x.view(&[c.m, c.k], &[xs, 1]);
    let w = d.w.view(&[c.n, c.k], &[ws, 1]);
    let b = d.b.as_ref().map(|b| b.view(&[c.n], &[1]));
    let (r, absd) = linear_reference(&x, &w, b.as_ref());
    let out = run_case(c, d);
    let ov = out.view(&[c.m, c.n], &[os, 1]);
    assert_linear_close(&ov, &r, &absd, c.m, c.n, c.k, what);
    assert_padding_untouched(&out, c.m, c.n, os, -7.0, what);
    (out, r, absd)
}

fn check_case(c: &Case, seed: u64, what: &str) {
    run_checked(c, &make_data(c, seed), what);
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Runs `f` on a pool of `n` threads with ops forced onto `isa` (the ISA
/// override is per thread, so it must be set again inside the pool).
fn on_threads<R: Send>(isa: xpu_ops::Isa, n: usize, f: impl FnOnce() -> R + Send) -> R {
    with_threads(n, || xpu_ops::with_isa(isa, f).expect("supported tier"))
}

/// Asserts that `run(t)` (the output bits of a call on `t` threads) is the
/// same for 2 and 3 threads as for 1.
fn assert_thread_invariant(what: &str, run: impl Fn(usize) -> Vec<u32>) {
    let one = run(1);
    for t in [2, 3] {
        assert_eq!(one, run(t), "{what}: 1 vs {t} threads");
    }
}

/// Shapes around the kernels' blocks: decode tiles (4 rows x 4 cols, 16
/// lanes), microkernel MR = 14 / NR = 32 (avx2: 6 / 16, A blocks of 48
/// rows), K blocks of 256 (512 for bf16 pairs), weight rows packed a 64-byte
/// line at a time, tile_n 512, A read as rows when N <= 64 (f16/bf16 x
/// converted per block); zeros, ones and primes.
const SHAPES: [(usize, usize, usize); 24] = [
    (0, 5, 7),
    (3, 0, 9),
    (2, 6, 0),
    (1, 1, 1),
    (1, 7, 3),
    (1, 37, 53),
    (2, 31, 17),
    (3, 5, 16),
    (4, 4, 33),
    (5, 64, 128),
    (7, 13, 600),
    (16, 33, 129),
    (17, 67, 131),
    (19, 35, 257),
    (29, 32, 16),
    (31, 61, 513),
    (47, 97, 1031),
    (64, 130, 300),
    (71, 541, 29),
    (1, 600, 37),
    (15, 3, 1025),
    (33, 1, 2),
    (101, 50, 530),
    (59, 70, 301),
];

#[test]
fn dense_parity_every_tier_dtype_shape() {
    for_each_isa(|isa| {
        for (si, &(m, n, k)) in SHAPES.iter().enumerate() {
            for dtype in DTYPES {
                let mut c = Case::new(m, n, k, dtype);
                // Vary the extras deterministically over the shape list.
                c.bias = si % 3 != 0;
                c.bias_f32 = si % 3 == 2 && dtype != DType::F32;
                c.out_dtype = if si % 2 == 1 { DType::F32 } else { dtype };
                c.x_pad = si % 4;
                c.w_pad = (si / 2) % 3;
                c.out_pad = si % 5;
                if dtype == DType::BF16 {
                    // Both bf16 GEMM microkernels (vdpbf16ps pairs and fp32), whatever the machine prefers.
                    for dot in [false, true] {
                        xpu_ops::ops::linear::with_bf16_dot(dot, || {
                            check_case(&c, 1000 + si as u64, &format!("{isa} bf16_dot={dot} {c:?}"))
                        });
                    }
                } else {
                    check_case(&c, 1000 + si as u64, &format!("{isa} {c:?}"));
                }
            }
        }
    });
}

#[test]
fn dense_vector_input() {
    for_each_isa(|isa| {
        for dtype in DTYPES {
            let (n, k) = (23, 45);
            let mut rng = Rng(5);
            let x = Buf::from_f32(dtype, &rand_vals(&mut rng, k, 1.0, dtype));
            let w = Buf::from_f32(dtype, &rand_vals(&mut rng, n * k, 1.0, dtype));
            let mut out = Buf::zeros(dtype, n);
            let (xv, wv) = (x.view(&[k], &[1]), w.view(&[n, k], &[k, 1]));
            linear(&xv, &wv, None, &mut out.view_mut(&[n], &[1])).unwrap();
            let r = rl::linear(&xv, &wv, None);
            let absd = rl::abs_dot(
                1,
                n,
                k,
                |_, kk| xv.get_f32(&[kk]) as f64,
                |j, kk| wv.get_f32(&[j, kk]) as f64,
            );
            assert_linear_close(
                &out.view(&[n], &[1]),
                &r,
                &absd,
                1,
                n,
                k,
                &format!("{isa} {dtype} [K]"),
            );
        }
    });
}

/// PERF.md GEMM shapes at small M (the decode regime and the first GEMM
/// tiles), on the best tier; K→N from the Qwen3-Next / Qwen3.5 list.
#[test]
fn dense_perf_shapes_small_m() {
    let shapes = [(2048, 64), (2048, 512), (4096, 2048), (2048, 12288)];
    for (i, &(k, n)) in shapes.iter().enumerate() {
        for &m in &[1usize, 4, 16] {
            let dtype = DTYPES[(i + m) % 3];
            // Keep the fp64 reference affordable: the big N shapes run at M = 1.
            if n * m * k > 40_000_000 && m > 1 {
                continue;
            }
            let c = Case::new(m, n, k, dtype);
            check_case(&c, 77 + i as u64, &format!("perf shape {c:?}"));
        }
    }
    // One GEMM-regime PERF shape at M = 64 (K = 2048 -> N = 512).
    check_case(
        &Case::new(64, 512, 2048, DType::BF16),
        78,
        "perf 64x2048->512 bf16",
    );
}

/// The decode regime at every M = 2..16. On AVX2 it runs blocks of 12
/// weight rows over K chunks of 16 KiB of x from M = 5 (so 4096 / M k,
/// rounded down to 128; M <= 4 in one chunk), register tiles of 4 x 3,
/// 3 x 4 and 2 x 6 (rows x weight rows),
/// f16/bf16 weight rows converted once when several row tiles share them,
/// and an x copy 1 KiB apart per row from K = 1024. K here crosses a chunk
/// boundary and is no multiple of 8, N leaves a tail after whole blocks, x
/// is strided. Decode arithmetic does not depend on M (one regime): each
/// row's bits equal the same row run alone.
#[test]
fn dense_small_m_every_m() {
    for_each_isa(|isa| {
        for m in 2..=16usize {
            let kc = (16384 / (4 * m)) & !127;
            for (i, &k) in [kc + 5, 2 * kc + 131].iter().enumerate() {
                for dtype in DTYPES {
                    // The second K only for one dtype per M (fp64 reference cost).
                    if i == 1 && dtype != DTYPES[m % 3] {
                        continue;
                    }
                    let mut c = Case::new(m, 24 + (m + i) % 12, k, dtype);
                    c.out_dtype = DType::F32;
                    c.x_pad = 3 * (m % 2);
                    c.bias = m % 3 != 0;
                    let what = format!("{isa} {c:?}");
                    let d = make_data(&c, 300 + m as u64);
                    let (out, _, _) = run_checked(&c, &d, &what);
                    let xs = c.k + c.x_pad;
                    for r in 0..m {
                        let one = Case {
                            m: 1,
                            x_pad: 0,
                            ..c
                        };
                        let row = Data {
                            x: d.x.slice(r * xs..r * xs + k),
                            w: d.w.clone(),
                            b: d.b.clone(),
                        };
                        let alone = run_case(&one, &row).bits();
                        assert_eq!(
                            out.bits()[r * c.n..(r + 1) * c.n],
                            alone[..],
                            "{what}: row {r} vs the row alone"
                        );
                    }
                }
            }
        }
    });
}

/// The 248k-vocab lm_head at M = 1 in half precision (an upstream kernel
/// returns wrong logits there), K reduced to keep the test's memory small.
#[test]
fn lm_head_248320_half_precision() {
    for dtype in [DType::F16, DType::BF16] {
        let (n, k) = (248_320, 128);
        let mut c = Case::new(1, n, k, dtype);
        c.bias = false;
        check_case(&c, 4242, &format!("lm_head N=248320 {dtype}"));
        c.out_dtype = DType::F32;
        check_case(&c, 4243, &format!("lm_head N=248320 {dtype} -> f32"));
    }
}

#[test]
fn dense_thread_invariance() {
    // M = 3 and 16 at K >= 1024: the AVX2 decode blocks with several K chunks.
    // M = 97: three A blocks (the last of one row) over weight panels packed
    // as the first block reaches them (AVX2), K blocks ending in a partial 8 k.
    let shapes = [
        (1, 300, 1000),
        (9, 77, 513),
        (3, 61, 1283),
        (16, 50, 1100),
        (40, 700, 300),
        (130, 64, 257),
        (97, 300, 517),
    ];
    for_each_isa(|isa| {
        for (i, &(m, n, k)) in shapes.iter().enumerate() {
            for (dtype, dot) in [
                (DType::F32, false),
                (DType::F16, false),
                (DType::BF16, false),
                (DType::BF16, true),
            ] {
                let c = Case::new(m, n, k, dtype);
                let d = make_data(&c, 9 + i as u64);
                assert_thread_invariant(&format!("{isa} bf16_dot={dot} {c:?}"), |t| {
                    on_threads(isa, t, || {
                        xpu_ops::ops::linear::with_bf16_dot(dot, || run_case(&c, &d))
                    })
                    .bits()
                });
            }
        }
    });
}

#[test]
fn dense_nan_and_inf_flow_through() {
    for_each_isa(|isa| {
        for m in [1usize, 40] {
            let (n, k) = (9, 20);
            let mut x = vec![0.5f32; m * k];
            x[3] = f32::NAN; // row 0
            if m > 1 {
                x[k + 4] = f32::INFINITY;
            }
            let w = vec![0.25f32; n * k];
            let mut out = vec![0f32; m * n];
            linear(
                &TensorView::new(&x, &[m, k]).unwrap(),
                &TensorView::new(&w, &[n, k]).unwrap(),
                None,
                &mut TensorViewMut::new(&mut out, &[m, n]).unwrap(),
            )
            .unwrap();
            assert!(out[..n].iter().all(|v| v.is_nan()), "{isa}: NaN row");
            if m > 1 {
                assert!(
                    out[n..2 * n].iter().all(|&v| v == f32::INFINITY),
                    "{isa}: inf row"
                );
                assert!(
                    out[2 * n..].iter().all(|&v| v == 0.5 * 0.25 * k as f32),
                    "{isa}: finite rows"
                );
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Bad input: a named status, and the output untouched.

fn expect_err(
    status: Status,
    what: &str,
    f: impl FnOnce(&mut TensorViewMut) -> xpu_ops::Result<()>,
    out: &mut [f32],
    shape: &[usize],
) {
    let before = out.to_vec();
    let err = f(&mut TensorViewMut::new(out, shape).unwrap()).expect_err(what);
    assert_eq!(err.status, status, "{what}: {err}");
    assert!(!err.message.is_empty());
    assert_eq!(out, &before[..], "{what}: output written on error");
}

#[test]
fn dense_bad_inputs() {
    let x = vec![1f32; 4 * 8];
    let w = vec![1f32; 6 * 8];
    let wb: Vec<bf16> = vec![bf16::ONE; 6 * 8];
    let b = [1f32; 6];
    let mut out = vec![3f32; 4 * 6];
    let xv = TensorView::new(&x, &[4, 8]).unwrap();
    let wv = TensorView::new(&w, &[6, 8]).unwrap();
    expect_err(
        Status::ShapeMismatch,
        "K mismatch",
        |o| linear(&xv, &TensorView::new(&w[..42], &[6, 7]).unwrap(), None, o),
        &mut out,
        &[4, 6],
    );
    expect_err(
        Status::ShapeMismatch,
        "out shape",
        |o| linear(&xv, &wv, None, o),
        &mut out[..20],
        &[4, 5],
    );
    expect_err(
        Status::ShapeMismatch,
        "weight rank",
        |o| linear(&xv, &TensorView::new(&w, &[48]).unwrap(), None, o),
        &mut out,
        &[4, 6],
    );
    expect_err(
        Status::DtypeMismatch,
        "x/weight dtype",
        |o| linear(&xv, &TensorView::new(&wb, &[6, 8]).unwrap(), None, o),
        &mut out,
        &[4, 6],
    );
    expect_err(
        Status::ShapeMismatch,
        "bias shape",
        |o| linear(&xv, &wv, Some(&TensorView::new(&b[..5], &[5]).unwrap()), o),
        &mut out,
        &[4, 6],
    );
    expect_err(
        Status::InvalidStride,
        "x inner stride",
        |o| {
            linear(
                &TensorView::strided(&x, &[4, 4], &[8, 2]).unwrap(),
                &TensorView::new(&w[..24], &[6, 4]).unwrap(),
                None,
                o,
            )
        },
        &mut out,
        &[4, 6],
    );
    {
        let mut o = vec![3f32; 24];
        let err = linear(
            &xv,
            &wv,
            None,
            &mut TensorViewMut::strided(&mut o, &[4, 6], &[3, 1]).unwrap(),
        )
        .unwrap_err();
        assert_eq!(err.status, Status::InvalidStride, "{err}");
        assert!(
            o.iter().all(|&v| v == 3.0),
            "out rows overlap: output written"
        );
    }
    // Unsupported dtype pair: bf16 activations into an f16 output.
    let xb: Vec<bf16> = vec![bf16::ONE; 32];
    let mut o16 = vec![f16::ZERO; 24];
    let err = linear(
        &TensorView::new(&xb, &[4, 8]).unwrap(),
        &TensorView::new(&wb, &[6, 8]).unwrap(),
        None,
        &mut TensorViewMut::new(&mut o16, &[4, 6]).unwrap(),
    )
    .unwrap_err();
    assert_eq!(err.status, Status::DtypeMismatch, "{err}");
    assert!(o16.iter().all(|v| *v == f16::ZERO));
    // Integer activations.
    let xi = vec![1i32; 32];
    let err = linear(
        &TensorView::new(&xi, &[4, 8]).unwrap(),
        &wv,
        None,
        &mut TensorViewMut::new(&mut out, &[4, 6]).unwrap(),
    )
    .unwrap_err();
    assert_eq!(err.status, Status::DtypeMismatch, "{err}");
    // out aliasing x.
    let mut buf = vec![1f32; 64];
    let p = buf.as_mut_ptr();
    let xa = unsafe {
        TensorView::from_raw(
            p as *const u8,
            xpu_ops::Layout::contiguous(DType::F32, &[2, 8]),
        )
    };
    let mut oa = unsafe {
        TensorViewMut::from_raw(
            p.add(4) as *mut u8,
            xpu_ops::Layout::contiguous(DType::F32, &[2, 6]),
        )
    };
    let err = linear(&xa, &wv, None, &mut oa).unwrap_err();
    assert_eq!(err.status, Status::Aliasing, "{err}");
    assert!(buf.iter().all(|&v| v == 1.0));
}

// ---------------------------------------------------------------------------
// Weight-only int4 / int8 (canonical layout).

use xpu_ops::{wna16_dequantize, wna16_linear, GptqFormat, Wna16Weight};

#[derive(Clone, Copy, Debug)]
struct QCase {
    m: usize,
    n: usize,
    k: usize,
    bits: u32,
    /// 0: one group per channel (G = K).
    group: usize,
    zeros: bool,
    perm: bool,
    sdtype: DType,
    xdtype: DType,
    out_f32: bool,
    bias: bool,
}

struct QData {
    w: Wna16Weight,
    x: Buf,
    b: Option<Buf>,
    /// Reference weights [N, K] in input-channel order, from the test's own codes.
    wref: Vec<f64>,
}

fn shuffled(rng: &mut Rng, k: usize) -> Vec<i32> {
    let mut p: Vec<i32> = (0..k as i32).collect();
    for i in (1..k).rev() {
        p.swap(i, rng.below(i as u64 + 1) as usize);
    }
    p
}

fn make_q(c: &QCase, seed: u64) -> QData {
    let mut rng = Rng(seed);
    let gs = if c.group == 0 { c.k } else { c.group };
    let groups = c.k / gs;
    let max = 1u64 << c.bits;
    let codes: Vec<u8> = (0..c.n * c.k).map(|_| rng.below(max) as u8).collect();
    let svals: Vec<f32> = rand_vals(&mut rng, c.n * groups, 0.05, c.sdtype);
    let zvals: Vec<f32> = (0..c.n * groups)
        .map(|_| rng.below(max + 1) as f32)
        .collect();
    let s = Buf::from_f32(c.sdtype, &svals);
    let z = Buf::from_f32(c.sdtype, &zvals);
    let perm = c.perm.then(|| shuffled(&mut rng, c.k));
    let sv = s.view(&[c.n, groups], &[groups, 1]);
    let zv = z.view(&[c.n, groups], &[groups, 1]);
    let w = Wna16Weight::from_codes(
        c.n,
        c.k,
        c.bits,
        &codes,
        &sv,
        c.zeros.then_some(&zv),
        perm.clone(),
    )
    .expect("valid canonical weight");
    let mut wref = vec![0f64; c.n * c.k];
    let zero0 = 2f64.powi(c.bits as i32 - 1);
    for r in 0..c.n {
        for j in 0..c.k {
            let g = r * groups + j / gs;
            let zz = if c.zeros { zvals[g] as f64 } else { zero0 };
            let col = perm.as_ref().map_or(j, |p| p[j] as usize);
            wref[r * c.k + col] = (codes[r * c.k + j] as f64 - zz) * svals[g] as f64;
        }
    }
    let x = Buf::from_f32(c.xdtype, &rand_vals(&mut rng, c.m * c.k, 1.0, c.xdtype));
    let b = c
        .bias
        .then(|| Buf::from_f32(c.xdtype, &rand_vals(&mut rng, c.n, 1.0, c.xdtype)));
    QData { w, x, b, wref }
}

fn run_q(c: &QCase, d: &QData) -> Buf {
    let od = if c.out_f32 { DType::F32 } else { c.xdtype };
    let mut out = Buf::filled(od, c.m * c.n, -7.0);
    let x = d.x.view(&[c.m, c.k], &[c.k, 1]);
    let b = d.b.as_ref().map(|b| b.view(&[c.n], &[1]));
    let (z, p) = (d.w.zeros(), d.w.perm());
    wna16_linear(
        &x,
        &d.w.qweight(),
        &d.w.scales(),
        z.as_ref(),
        p.as_ref(),
        b.as_ref(),
        &mut out.view_mut(&[c.m, c.n], &[c.n, 1]),
        c.bits,
    )
    .expect("valid wna16_linear");
    out
}

/// The op against the fp64 reference of the test's own weights, with the
/// tolerance of `linear` (4·sqrt(K)·2⁻²⁴·Σ|x·w| + ulp_out).
fn check_q_against(c: &QCase, d: &QData, wref: &[f64], what: &str) {
    let x = d.x.view(&[c.m, c.k], &[c.k, 1]);
    let b = d.b.as_ref().map(|b| b.view(&[c.n], &[1]));
    let xv = |i: usize, kk: usize| x.get_f32(&[i, kk]) as f64;
    let wv = |j: usize, kk: usize| wref[j * c.k + kk];
    let r = rl::linear_f64(c.m, c.n, c.k, xv, wv, b.as_ref());
    let absd = rl::abs_dot(c.m, c.n, c.k, xv, wv);
    let out = run_q(c, d);
    assert_linear_close(
        &out.view(&[c.m, c.n], &[c.n, 1]),
        &r,
        &absd,
        c.m,
        c.n,
        c.k,
        what,
    );
}

fn check_q(c: &QCase, seed: u64, what: &str) {
    let d = make_q(c, seed);
    // The library's reference reading of the canonical layout agrees with the
    // test's own weights exactly, and so does wna16_dequantize.
    let (z, p) = (d.w.zeros(), d.w.perm());
    let lib_ref = rl::wna16_weights(
        &d.w.qweight(),
        &d.w.scales(),
        z.as_ref(),
        p.as_ref(),
        c.k,
        c.bits,
    );
    assert_eq!(lib_ref, d.wref, "{what}: reference layout reading");
    let deq = d.w.dequantize();
    assert!(
        deq.iter().zip(&d.wref).all(|(a, b)| *a == *b as f32),
        "{what}: dequantize differs from (q - z) * s rounded once to f32"
    );
    check_q_against(c, &d, &d.wref, what);
}

#[test]
fn wna16_parity_every_tier() {
    // (m, n, k, bits, group)
    let shapes: [(usize, usize, usize, u32, usize); 16] = [
        (1, 13, 128, 4, 32),
        (1, 37, 416, 4, 32),
        (3, 8, 256, 4, 64),
        (16, 21, 384, 4, 128),
        (17, 40, 128, 4, 0),
        (45, 35, 320, 4, 64),
        (2, 1, 96, 4, 32),
        (1, 19, 33, 8, 0),
        (4, 23, 256, 8, 32),
        (16, 9, 640, 8, 128),
        (20, 31, 77, 8, 0),
        (33, 64, 192, 8, 64),
        (0, 5, 64, 4, 32),
        (3, 0, 64, 8, 0),
        // int8 at M = 1: 8-row tiles in super-tiles of 8R rows (R = 4, 1), then the tails
        (1, 41, 1000, 8, 0),
        (1, 21, 4160, 8, 64),
    ];
    for_each_isa(|isa| {
        for (si, &(m, n, k, bits, group)) in shapes.iter().enumerate() {
            let c = QCase {
                m,
                n,
                k,
                bits,
                group,
                zeros: si % 2 == 0,
                perm: si % 3 == 1,
                sdtype: DTYPES[si % 3],
                xdtype: DTYPES[(si + 1) % 3],
                out_f32: si % 4 == 3,
                bias: si % 5 != 2,
            };
            check_q(&c, 500 + si as u64, &format!("{isa} {c:?}"));
        }
    });
}

/// The int4 decode tiles (M <= 16): group sizes 32, 64, 128 and others
/// (96, 160, K itself), a last partial 128-code block (K % 128 = 32, 64, 96),
/// fewer than 4 weight rows left, 1, 2 or 3 activation rows per tile pass,
/// K chunks that split a group (M > 2, G = 1024), and scale chunks that a
/// group spans (G = K = 4608), and the 8-row tiles of M = 1 with groups of
/// a multiple of 128 (super-tiles of 8R rows, R = 4, 3 and 1 rows per page,
/// with 4-row and 1-row tails). Same tolerance as `linear`.
#[test]
fn wna16_int4_decode_tiles() {
    // (m, n, k, group)
    let shapes: [(usize, usize, usize, usize); 17] = [
        (1, 9, 4096, 32),
        (1, 6, 4608, 0),
        (2, 7, 352, 32),
        (3, 5, 320, 64),
        (1, 4, 480, 96),
        (4, 11, 288, 96),
        (1, 3, 320, 160),
        (5, 6, 3072, 1024),
        (16, 5, 640, 128),
        (7, 4, 1536, 512),
        (1, 13, 96, 0),
        (2, 2, 160, 32),
        (1, 17, 2176, 64),
        (3, 8, 4096, 4096),
        (1, 37, 1024, 128),
        (1, 27, 2176, 128),
        (1, 19, 8320, 0),
    ];
    for_each_isa(|isa| {
        for (si, &(m, n, k, group)) in shapes.iter().enumerate() {
            let c = QCase {
                m,
                n,
                k,
                bits: 4,
                group,
                zeros: si % 3 != 1,
                perm: si % 5 == 3,
                sdtype: DTYPES[si % 3],
                xdtype: DTYPES[(si + 2) % 3],
                out_f32: si % 2 == 0,
                bias: si % 4 == 1,
            };
            check_q(&c, 900 + si as u64, &format!("{isa} {c:?}"));
        }
    });
}

/// M = 1 with int4 / int8 codes (the AVX2 kernel sums codes against x per
/// group and applies scale and zero once a group): activations prepared in
/// chunks of 4096 k, so K past a chunk, groups that span a chunk's end
/// (G = 96, G = K), more than the 64 rows whose partial sums outlive a
/// chunk, tiles of 8, 4 and 1 rows, K not a multiple of 8 (int8, G = K) or of 128 (int4), int8
/// tiles over 8 runs of rows (with a per-channel group carried across chunks), int8
/// groups of 128 k or more (x read per row; G = 384 spans a chunk's end), and
/// the same shapes on 1, 2 and 3 threads (bit-identical). Same tolerance
/// as `linear`.
#[test]
fn wna16_m1_chunks() {
    // (n, k, bits, group)
    let shapes: [(usize, usize, u32, usize); 13] = [
        (13, 4800, 4, 96),
        (300, 4224, 4, 128),
        (9, 8320, 4, 0),
        (5, 12288, 4, 32),
        (12, 4099, 8, 0),
        (200, 4160, 8, 64),
        (13, 8448, 8, 96),
        (3, 4128, 4, 0),
        (11, 61, 8, 0),
        (21, 160, 4, 0),
        (43, 8260, 8, 0),
        (19, 4608, 8, 384),
        (6, 640, 8, 128),
    ];
    for_each_isa(|isa| {
        for (si, &(n, k, bits, group)) in shapes.iter().enumerate() {
            let c = QCase {
                m: 1,
                n,
                k,
                bits,
                group,
                zeros: si % 2 == 0,
                perm: si % 4 == 3,
                sdtype: DTYPES[si % 3],
                xdtype: DTYPES[(si + 1) % 3],
                out_f32: si % 3 == 0,
                bias: si % 5 != 1,
            };
            let what = format!("{isa} {c:?}");
            check_q(&c, 1300 + si as u64, &what);
            let d = make_q(&c, 1300 + si as u64);
            assert_thread_invariant(&what, |t| on_threads(isa, t, || run_q(&c, &d)).bits());
        }
    });
}

/// M = 1 with int4 / int8 codes on AVX2 feeds the codes' bit patterns to the
/// FMAs as denormals against activations scaled by a power of 2 chosen from
/// their largest magnitude: activations near 2^±90 (f32, bf16) or 2^-12
/// (f16), an outlier channel 2^10 above the rest, and all-zero activations
/// stay within the tolerance, on every tier; and DAZ set by the caller
/// (MXCSR bit 6) changes no output bit and is still set after the call.
/// (Outliers far larger break the tolerance where their weight is zero:
/// t = sum x q - z sum x carries z x_k, and the rest of the group rounds
/// away against it. That holds for the zero-point fold as it was, too.)
#[test]
fn wna16_m1_activation_range_and_daz() {
    // (n, k, bits, group, zeros)
    let shapes: [(usize, usize, u32, usize, bool); 4] = [
        (19, 4224, 4, 128, true),
        (9, 160, 4, 32, false),
        (13, 1000, 8, 0, false),
        (21, 4160, 8, 64, true),
    ];
    for_each_isa(|isa| {
        for (si, &(n, k, bits, group, zeros)) in shapes.iter().enumerate() {
            for (xi, xdtype) in DTYPES.iter().enumerate() {
                let c = QCase {
                    m: 1,
                    n,
                    k,
                    bits,
                    group,
                    zeros,
                    perm: false,
                    sdtype: DTYPES[(si + xi) % 3],
                    xdtype: *xdtype,
                    out_f32: true,
                    bias: si % 2 == 0,
                };
                let base = make_q(&c, 1700 + si as u64);
                let x0: Vec<f32> = {
                    let v = base.x.view(&[k], &[1]);
                    (0..k).map(|i| v.get_f32(&[i])).collect()
                };
                let scales: &[f32] = if *xdtype == DType::F16 {
                    &[4096.0f32.recip(), 0.0]
                } else {
                    &[2f32.powi(90), 2f32.powi(-90), 0.0]
                };
                let mut xs: Vec<(String, Vec<f32>)> = scales
                    .iter()
                    .map(|&f| (format!("x * {f:e}"), x0.iter().map(|v| v * f).collect()))
                    .collect();
                if *xdtype != DType::F16 {
                    let mut spike = x0.clone();
                    spike[k / 3] = 1024.0;
                    xs.push(("one x_k = 2^10".into(), spike));
                }
                for (name, xv) in xs {
                    let d = QData {
                        w: base.w.clone(),
                        x: Buf::from_f32(c.xdtype, &xv),
                        b: base.b.clone(),
                        wref: base.wref.clone(),
                    };
                    check_q_against(&c, &d, &d.wref, &format!("{isa} {c:?} {name}"));
                }
                #[cfg(target_arch = "x86_64")]
                if *xdtype == DType::BF16 {
                    let plain = on_threads(isa, 1, || run_q(&c, &base).bits());
                    let (daz, csr) = on_threads(isa, 1, || {
                        with_daz(|| {
                            let out = run_q(&c, &base).bits();
                            (out, mxcsr())
                        })
                    });
                    assert_eq!(plain, daz, "{isa} {c:?}: DAZ set by the caller");
                    assert_ne!(csr & 0x40, 0, "{isa} {c:?}: DAZ restored after the call");
                }
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
fn mxcsr() -> u32 {
    let mut csr = 0u32;
    // SAFETY: stmxcsr stores the 4-byte MXCSR to a valid, writable u32.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack)) };
    csr
}

/// Runs `f` with MXCSR.DAZ (denormals are zero) set on this thread.
#[cfg(target_arch = "x86_64")]
fn with_daz<R>(f: impl FnOnce() -> R) -> R {
    let old = mxcsr();
    let daz = old | 0x40;
    // SAFETY: ldmxcsr loads a valid MXCSR value (the current one with DAZ set, then the saved one).
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &daz, options(nostack)) };
    let r = f();
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &old, options(nostack)) };
    r
}

#[test]
fn wna16_thread_invariance() {
    for_each_isa(|isa| {
        // (m, n, bits, group): decode blocks hold ~256 KiB of weights, so
        // N = 2051 int4 rows of K = 512 split over threads (with a ragged end);
        // int8 rows of K = 512 run in super-tiles of 16 rows (4 per page), so
        // N = 2051 cuts them at block ends too.
        for (i, &(m, n, bits, group)) in [
            (1, 150, 4, 32),
            (9, 150, 8, 0),
            (40, 150, 4, 128),
            (40, 150, 8, 64),
            (1, 2051, 4, 64),
            (1, 2051, 4, 128),
            (3, 2051, 4, 128),
            (1, 2051, 8, 0),
            (4, 2051, 8, 128),
        ]
        .iter()
        .enumerate()
        {
            let c = QCase {
                m,
                n,
                k: 512,
                bits,
                group,
                zeros: true,
                perm: i == 2,
                sdtype: DType::F16,
                xdtype: DType::BF16,
                out_f32: false,
                bias: true,
            };
            let d = make_q(&c, 31 + i as u64);
            assert_thread_invariant(&format!("{isa} {c:?}"), |t| {
                on_threads(isa, t, || run_q(&c, &d)).bits()
            });
        }
    });
}

// ---- upstream formats: test-side packers and independent dequantisation.

fn i32_view<'a>(v: &'a [i32], shape: &[usize]) -> TensorView<'a> {
    TensorView::new(v, shape).unwrap()
}

/// Packs `vals[r][c]` (rows x cols, each < 2^bits) along dim 0 or 1 into int32.
fn pack_i32(vals: &[u32], rows: usize, cols: usize, bits: u32, along_rows: bool) -> Vec<i32> {
    let pack = (32 / bits) as usize;
    let (pr, pc) = if along_rows {
        (rows.div_ceil(pack), cols)
    } else {
        (rows, cols.div_ceil(pack))
    };
    let mut out = vec![0u32; pr * pc];
    for r in 0..rows {
        for c in 0..cols {
            let (dr, dc, slot) = if along_rows {
                (r / pack, c, r % pack)
            } else {
                (r, c / pack, c % pack)
            };
            out[dr * pc + dc] |= vals[r * cols + c] << (bits as usize * slot);
        }
    }
    out.into_iter().map(|w| w as i32).collect()
}

/// Field `slot` of an int32 word.
fn field(w: i32, bits: u32, slot: usize) -> u32 {
    ((w as u32) >> (bits as usize * slot)) & ((1u32 << bits) - 1)
}

/// Asserts the imported weight dequantizes to `wref` exactly, then runs the
/// op against the fp64 reference of `wref`.
fn check_import(w: Wna16Weight, wref: &[f64], xdtype: DType, what: &str) {
    let (n, k) = (w.n(), w.k());
    let deq = w.dequantize();
    for (i, (a, b)) in deq.iter().zip(wref).enumerate() {
        assert_eq!(*a, *b as f32, "{what}: dequantized w[{}][{}]", i / k, i % k);
    }
    for m in [1usize, 24] {
        let mut rng = Rng(99 + m as u64);
        let d = QData {
            x: Buf::from_f32(xdtype, &rand_vals(&mut rng, m * k, 1.0, xdtype)),
            b: None,
            wref: wref.to_vec(),
            w: w.clone(),
        };
        let c = QCase {
            m,
            n,
            k,
            bits: w.bits(),
            group: w.group_size(),
            zeros: true,
            perm: false,
            sdtype: DType::F32,
            xdtype,
            out_f32: true,
            bias: false,
        };
        check_q_against(&c, &d, wref, &format!("{what} M={m}"));
    }
}

#[test]
fn gptq_import_v1_v2_act_order() {
    let mut rng = Rng(2024);
    for bits in [4u32, 8] {
        for format in [GptqFormat::V1, GptqFormat::V2] {
            for act_order in [false, true] {
                let (k, n, gs) = (256usize, 24usize, 64usize);
                let groups = k / gs;
                let max = 1u32 << bits;
                // Logical codes q[k][n], stored zeros, scales [groups, n] f16.
                let q: Vec<u32> = (0..k * n).map(|_| rng.below(max as u64) as u32).collect();
                let mut zs: Vec<u32> = (0..groups * n)
                    .map(|_| rng.below(max as u64) as u32)
                    .collect();
                zs[0] = max - 1; // v1: stored 15 (255) means zero 16 (256)
                let s = Buf::from_f32(
                    DType::F16,
                    &rand_vals(&mut rng, groups * n, 0.05, DType::F16),
                );
                let g_idx: Vec<i32> = if act_order {
                    let p = shuffled(&mut rng, k);
                    let mut g = vec![0i32; k];
                    for (pos, &ch) in p.iter().enumerate() {
                        g[ch as usize] = (pos / gs) as i32;
                    }
                    g
                } else {
                    (0..k).map(|i| (i / gs) as i32).collect()
                };
                let qweight = pack_i32(&q, k, n, bits, true);
                let qzeros = pack_i32(&zs, groups, n, bits, false);
                let pack = (32 / bits) as usize;
                let (qwv, qzv) = (
                    i32_view(&qweight, &[k / pack, n]),
                    i32_view(&qzeros, &[groups, n / pack]),
                );
                let sv = s.view(&[groups, n], &[n, 1]);
                // Independent dequantisation of the packed checkpoint.
                let mut wref = vec![0f64; n * k];
                for kk in 0..k {
                    let g = g_idx[kk] as usize;
                    for c in 0..n {
                        let qv = field(qweight[(kk / pack) * n + c], bits, kk % pack) as f64;
                        let mut zv =
                            field(qzeros[g * (n / pack) + c / pack], bits, c % pack) as f64;
                        if format == GptqFormat::V1 {
                            zv += 1.0;
                        }
                        wref[c * k + kk] = (qv - zv) * sv.get_f32(&[g, c]) as f64;
                    }
                }
                let gv = i32_view(&g_idx, &[k]);
                let w = Wna16Weight::from_gptq(&qwv, &qzv, &sv, Some(&gv), bits, format).unwrap();
                assert_eq!(w.perm().is_some(), act_order, "act-order becomes a perm");
                let what = format!("gptq {bits}-bit {format:?} act_order={act_order}");
                check_import(w, &wref, DType::F16, &what);
                if !act_order {
                    // Without g_idx: the same weight.
                    let w2 = Wna16Weight::from_gptq(&qwv, &qzv, &sv, None, bits, format).unwrap();
                    check_import(w2, &wref, DType::BF16, &format!("{what} no g_idx"));
                }
            }
        }
    }
}

#[test]
fn awq_import_interleaved() {
    const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
    let mut rng = Rng(7);
    let (k, n, gs) = (256usize, 32usize, 128usize);
    let groups = k / gs;
    let q: Vec<u32> = (0..k * n).map(|_| rng.below(16) as u32).collect();
    let z: Vec<u32> = (0..groups * n).map(|_| rng.below(16) as u32).collect();
    // AutoAWQ packs column 8w + ORDER[i] into nibble i of word w.
    let pack = |vals: &[u32], rows: usize| -> Vec<i32> {
        let mut out = vec![0u32; rows * n / 8];
        for r in 0..rows {
            for w in 0..n / 8 {
                for (i, &o) in ORDER.iter().enumerate() {
                    out[r * (n / 8) + w] |= vals[r * n + 8 * w + o] << (4 * i);
                }
            }
        }
        out.into_iter().map(|v| v as i32).collect()
    };
    let (qweight, qzeros) = (pack(&q, k), pack(&z, groups));
    let s = Buf::from_f32(
        DType::F16,
        &rand_vals(&mut rng, groups * n, 0.05, DType::F16),
    );
    let sv = s.view(&[groups, n], &[n, 1]);
    // Independent dequantisation: nibble i of word w is column 8w + ORDER[i].
    let mut wref = vec![0f64; n * k];
    for kk in 0..k {
        for w in 0..n / 8 {
            for (i, &o) in ORDER.iter().enumerate() {
                let c = 8 * w + o;
                let g = kk / gs;
                let qv = field(qweight[kk * (n / 8) + w], 4, i) as f64;
                let zv = field(qzeros[g * (n / 8) + w], 4, i) as f64;
                wref[c * k + kk] = (qv - zv) * sv.get_f32(&[g, c]) as f64;
            }
        }
    }
    let w = Wna16Weight::from_awq(
        &i32_view(&qweight, &[k, n / 8]),
        &i32_view(&qzeros, &[groups, n / 8]),
        &sv,
    )
    .unwrap();
    check_import(w, &wref, DType::F16, "awq");
}

#[test]
fn compressed_tensors_import() {
    let mut rng = Rng(11);
    // (bits, k, group (0 = channel), asymmetric, act-order)
    for &(bits, k, group, asym, act) in &[
        (4u32, 256usize, 128usize, false, false),
        (4, 256, 32, true, false),
        (4, 192, 64, false, true),
        (8, 50, 0, false, false),
        (8, 128, 0, true, false),
        (8, 256, 64, true, true),
    ] {
        let n = 20usize;
        let gs = if group == 0 { k } else { group };
        let groups = k / gs;
        let half = 1i32 << (bits - 1);
        // Signed values in [-2^(b-1), 2^(b-1)) stored with the +2^(b-1) offset.
        let qs: Vec<i32> = (0..n * k)
            .map(|_| rng.below(1 << bits) as i32 - half)
            .collect();
        let zs: Vec<i32> = (0..n * groups)
            .map(|_| rng.below(1 << bits) as i32 - half)
            .collect();
        let stored = |v: &[i32]| -> Vec<u32> { v.iter().map(|&x| (x + half) as u32).collect() };
        let weight_packed = pack_i32(&stored(&qs), n, k, bits, false);
        let zero_point = pack_i32(&stored(&zs), n, groups, bits, true);
        let s = Buf::from_f32(
            DType::BF16,
            &rand_vals(&mut rng, n * groups, 0.05, DType::BF16),
        );
        let sv = s.view(&[n, groups], &[groups, 1]);
        let g_idx: Option<Vec<i32>> = act.then(|| {
            let p = shuffled(&mut rng, k);
            let mut g = vec![0i32; k];
            for (pos, &ch) in p.iter().enumerate() {
                g[ch as usize] = (pos / gs) as i32;
            }
            g
        });
        let pack = (32 / bits) as usize;
        // Independent dequantisation: unpack, subtract the offset, (q - zp) * s.
        let mut wref = vec![0f64; n * k];
        for r in 0..n {
            for kk in 0..k {
                let g = g_idx.as_ref().map_or(kk / gs, |g| g[kk] as usize);
                let qv = field(
                    weight_packed[r * k.div_ceil(pack) + kk / pack],
                    bits,
                    kk % pack,
                ) as i32
                    - half;
                let zv = if asym {
                    field(zero_point[(r / pack) * groups + g], bits, r % pack) as i32 - half
                } else {
                    0
                };
                wref[r * k + kk] = (qv - zv) as f64 * sv.get_f32(&[r, g]) as f64;
            }
        }
        let wpv = i32_view(&weight_packed, &[n, k.div_ceil(pack)]);
        let zpv = i32_view(&zero_point, &[n.div_ceil(pack), groups]);
        let gv = g_idx.as_ref().map(|g| i32_view(g, &[k]));
        let w = Wna16Weight::from_compressed_tensors(
            &wpv,
            &sv,
            asym.then_some(&zpv),
            gv.as_ref(),
            [n, k],
            bits,
        )
        .unwrap();
        check_import(
            w,
            &wref,
            DType::BF16,
            &format!("compressed-tensors {bits}-bit k={k} g={group} asym={asym} act={act}"),
        );
    }
}

#[test]
fn wna16_bad_inputs() {
    let (n, k) = (4usize, 64usize);
    let codes = vec![3u8; n * k];
    let s = vec![0.5f32; n * 2];
    let sv = TensorView::new(&s, &[n, 2]).unwrap();
    let w = Wna16Weight::from_codes(n, k, 4, &codes, &sv, None, None).unwrap();
    let x = vec![1f32; 2 * k];
    let xv = TensorView::new(&x, &[2, k]).unwrap();
    let mut out = vec![5f32; 2 * n];
    let call = |x: &TensorView,
                qw: &TensorView,
                sc: &TensorView,
                z: Option<&TensorView>,
                p: Option<&TensorView>,
                bits: u32,
                out: &mut [f32]| {
        wna16_linear(
            x,
            qw,
            sc,
            z,
            p,
            None,
            &mut TensorViewMut::new(out, &[2, n]).unwrap(),
            bits,
        )
    };
    let expect = |r: xpu_ops::Result<()>, st: Status, what: &str, out: &[f32]| {
        let e = r.expect_err(what);
        assert_eq!(e.status, st, "{what}: {e}");
        assert!(out.iter().all(|&v| v == 5.0), "{what}: output written");
    };
    // K not a multiple of the group size (3 groups over K = 64).
    let s3 = vec![0.5f32; n * 3];
    expect(
        call(
            &xv,
            &w.qweight(),
            &TensorView::new(&s3, &[n, 3]).unwrap(),
            None,
            None,
            4,
            &mut out,
        ),
        Status::ShapeMismatch,
        "groups",
        &out,
    );
    // Wrong packed size (two codes per byte is not the canonical 4-bit row).
    let q8 = vec![0u8; n * k / 2];
    expect(
        call(
            &xv,
            &TensorView::new(&q8, &[n, k / 2]).unwrap(),
            &sv,
            None,
            None,
            4,
            &mut out,
        ),
        Status::ShapeMismatch,
        "packed size",
        &out,
    );
    // Zero-point shape mismatch.
    let z = vec![8f32; n];
    expect(
        call(
            &xv,
            &w.qweight(),
            &sv,
            Some(&TensorView::new(&z, &[n, 1]).unwrap()),
            None,
            4,
            &mut out,
        ),
        Status::ShapeMismatch,
        "zeros shape",
        &out,
    );
    // Zero-point dtype differs from the scales'.
    let zb = vec![bf16::from_f32(8.0); n * 2];
    expect(
        call(
            &xv,
            &w.qweight(),
            &sv,
            Some(&TensorView::new(&zb, &[n, 2]).unwrap()),
            None,
            4,
            &mut out,
        ),
        Status::DtypeMismatch,
        "zeros dtype",
        &out,
    );
    // Scale shape mismatch (N).
    expect(
        call(
            &xv,
            &w.qweight(),
            &TensorView::new(&s[..6], &[3, 2]).unwrap(),
            None,
            None,
            4,
            &mut out,
        ),
        Status::ShapeMismatch,
        "scales N",
        &out,
    );
    // Unsupported bit width / dtype pair.
    expect(
        call(&xv, &w.qweight(), &sv, None, None, 3, &mut out),
        Status::Unsupported,
        "bits",
        &out,
    );
    let si = vec![1i32; n * 2];
    expect(
        call(
            &xv,
            &w.qweight(),
            &TensorView::new(&si, &[n, 2]).unwrap(),
            None,
            None,
            4,
            &mut out,
        ),
        Status::DtypeMismatch,
        "int scales",
        &out,
    );
    // Bad permutation.
    let mut p: Vec<i32> = (0..k as i32).collect();
    p[5] = 4;
    expect(
        call(
            &xv,
            &w.qweight(),
            &sv,
            None,
            Some(&TensorView::new(&p, &[k]).unwrap()),
            4,
            &mut out,
        ),
        Status::InvalidValue,
        "perm repeat",
        &out,
    );
    p[5] = 64;
    expect(
        call(
            &xv,
            &w.qweight(),
            &sv,
            None,
            Some(&TensorView::new(&p, &[k]).unwrap()),
            4,
            &mut out,
        ),
        Status::IndexOutOfRange,
        "perm range",
        &out,
    );
    // x K mismatch.
    expect(
        call(
            &TensorView::new(&x[..2 * 32], &[2, 32]).unwrap(),
            &w.qweight(),
            &sv,
            None,
            None,
            4,
            &mut out,
        ),
        Status::ShapeMismatch,
        "x K",
        &out,
    );
    // Importers: K not a multiple of the group size, unequal act-order groups.
    let qw = vec![0i32; 8 * 16];
    let qz = vec![0i32; 3 * 2];
    let sc = vec![f16::ONE; 3 * 16];
    let e = Wna16Weight::from_gptq(
        &i32_view(&qw, &[8, 16]),
        &i32_view(&qz, &[3, 2]),
        &TensorView::new(&sc, &[3, 16]).unwrap(),
        None,
        4,
        GptqFormat::V1,
    )
    .unwrap_err();
    assert_eq!(e.status, Status::ShapeMismatch, "{e}");
    let sc2 = vec![f16::ONE; 2 * 16];
    let qz2 = vec![0i32; 2 * 2];
    let mut g: Vec<i32> = (0..64).map(|i| i / 32).collect();
    g[0] = 1;
    let e = Wna16Weight::from_gptq(
        &i32_view(&qw, &[8, 16]),
        &i32_view(&qz2, &[2, 2]),
        &TensorView::new(&sc2, &[2, 16]).unwrap(),
        Some(&i32_view(&g, &[64])),
        4,
        GptqFormat::V2,
    )
    .unwrap_err();
    assert_eq!(e.status, Status::Unsupported, "{e}");
    // Wrong packed size for AWQ and compressed-tensors.
    let e = Wna16Weight::from_awq(
        &i32_view(&qw, &[64, 2]),
        &i32_view(&qz2, &[2, 2]),
        &TensorView::new(&sc2, &[2, 15]).unwrap(),
    )
    .unwrap_err();
    assert_eq!(e.status, Status::ShapeMismatch, "{e}");
    let e = Wna16Weight::from_compressed_tensors(
        &i32_view(&qw, &[16, 8]),
        &TensorView::new(&sc2, &[16, 2]).unwrap(),
        None,
        None,
        [16, 72],
        4,
    )
    .unwrap_err();
    assert_eq!(e.status, Status::ShapeMismatch, "{e}");
    // wna16_dequantize validates too.
    let mut d = vec![0f32; n * 32];
    let e = wna16_dequantize(
        &w.qweight(),
        &sv,
        None,
        None,
        &mut TensorViewMut::new(&mut d, &[n, 32]).unwrap(),
        4,
    )
    .unwrap_err();
    assert_eq!(e.status, Status::ShapeMismatch, "{e}");
}

// ---------------------------------------------------------------------------
// W8A8 int8.

use xpu_ops::{
    dynamic_scaled_int8_quant, int8_scaled_mm, int8_scaled_mm_azp, static_scaled_int8_quant,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum QMode {
    DynSym,
    DynAsym,
    Static(f32, Option<i32>),
}

/// Input rows: random * 1000 - 300 (upstream's test range), plus special
/// rows: zeros, a constant, negatives only, a NaN, saturating values.
fn quant_input(m: usize, k: usize, dtype: DType, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    let mut v: Vec<f32> = (0..m * k)
        .map(|_| (rng.uniform() + 1.0) * 500.0 - 300.0)
        .collect();
    for (r, row) in v.chunks_mut(k.max(1)).enumerate().take(m) {
        match r {
            1 => row.iter_mut().for_each(|x| *x = 0.0),
            2 => row.iter_mut().for_each(|x| *x = 3.5),
            3 => row.iter_mut().for_each(|x| *x = -x.abs() - 1.0),
            4 => row[k / 2] = f32::NAN,
            5 => row[0] = 1e30,
            _ => {}
        }
    }
    rand_vals_exact(&v, dtype)
}

fn rand_vals_exact(v: &[f32], dtype: DType) -> Vec<f32> {
    let b = Buf::from_f32(dtype, v);
    let view = b.view(&[v.len()], &[1]);
    (0..v.len()).map(|i| view.get_f32(&[i])).collect()
}

fn run_quant(x: &Buf, m: usize, k: usize, mode: QMode) -> (Vec<i8>, Vec<f32>, Vec<i32>) {
    let mut q = vec![99i8; m * k];
    let mut s = vec![-1f32; m];
    let mut z = vec![-7i32; m];
    let xv = x.view(&[m, k], &[k, 1]);
    let mut qv = TensorViewMut::new(&mut q, &[m, k]).unwrap();
    match mode {
        QMode::Static(scale, azp) => {
            let sc = [scale];
            let zp = azp.map(|a| [a]);
            let zv = zp.as_ref().map(|a| TensorView::new(a, &[1]).unwrap());
            static_scaled_int8_quant(
                &mut qv,
                &xv,
                &TensorView::new(&sc, &[1]).unwrap(),
                zv.as_ref(),
            )
            .unwrap();
        }
        QMode::DynSym => dynamic_scaled_int8_quant(
            &mut qv,
            &xv,
            &mut TensorViewMut::new(&mut s, &[m, 1]).unwrap(),
            None,
        )
        .unwrap(),
        QMode::DynAsym => dynamic_scaled_int8_quant(
            &mut qv,
            &xv,
            &mut TensorViewMut::new(&mut s, &[m, 1]).unwrap(),
            Some(&mut TensorViewMut::new(&mut z, &[m]).unwrap()),
        )
        .unwrap(),
    }
    (q, s, z)
}

/// Quantization is exact: the kernels' bits equal the reference's on every tier.
#[test]
fn scaled_int8_quant_bit_exact_every_tier() {
    let modes = [
        QMode::DynSym,
        QMode::DynAsym,
        QMode::Static(0.1, None),
        QMode::Static(2.1, None),
        QMode::Static(0.1, Some(-255)),
        QMode::Static(2.1, Some(54)),
    ];
    for_each_isa(|isa| {
        for (si, &(m, k)) in [
            (1usize, 1usize),
            (6, 17),
            (7, 64),
            (6, 1025),
            (9, 100),
            (0, 5),
        ]
        .iter()
        .enumerate()
        {
            for dtype in DTYPES {
                let xs = quant_input(m, k, dtype, 300 + si as u64);
                let x = Buf::from_f32(dtype, &xs);
                for mode in modes {
                    let (q, s, z) = run_quant(&x, m, k, mode);
                    for r in 0..m {
                        let row = &xs[r * k..(r + 1) * k];
                        let (sref, asym) = match mode {
                            QMode::Static(sc, zp) => (Some((sc, zp)), false),
                            QMode::DynSym => (None, false),
                            QMode::DynAsym => (None, true),
                        };
                        let (qr, scr, zr) = rl::scaled_int8_quant_row(row, sref, asym);
                        let what = format!("{isa} {dtype} m={m} k={k} {mode:?} row {r}");
                        assert_eq!(&q[r * k..(r + 1) * k], &qr[..], "{what}: q");
                        if !matches!(mode, QMode::Static(..)) {
                            assert_eq!(s[r].to_bits(), scr.to_bits(), "{what}: scale");
                        }
                        if mode == QMode::DynAsym {
                            assert_eq!(z[r], zr, "{what}: azp");
                        }
                    }
                }
            }
        }
    });
    // Known values: the constant and zero rows dequantize to themselves.
    let x = Buf::from_f32(DType::F32, &[3.5, 3.5, 0.0, 0.0]);
    let (q, s, z) = run_quant(&x, 2, 2, QMode::DynAsym);
    assert_eq!(((q[0] as i32 - z[0]) as f32 * s[0]), 3.5);
    assert_eq!(((q[2] as i32 - z[1]) as f32 * s[1]), 0.0);
}

struct MmCase {
    m: usize,
    n: usize,
    k: usize,
    per_token: bool,
    per_channel: bool,
    azp: u8, // 0: none, 1: per-token azp + adj, 2: adj only (per-tensor folded)
    bias: bool,
    out: DType,
    b_pad: usize,
}

struct MmData {
    a: Vec<i8>,
    bt: Vec<i8>, // [N, K + b_pad] storage of the column-major b
    sa: Vec<f32>,
    sb: Vec<f32>,
    adj: Vec<i32>,
    zp: Vec<i32>,
    bias: Vec<f32>,
}

fn mm_data(c: &MmCase, seed: u64) -> MmData {
    let mut rng = Rng(seed);
    let bs = c.k + c.b_pad;
    let a: Vec<i8> = (0..c.m * c.k)
        .map(|_| rng.below(256) as i32 as i8)
        .map(|v| v.wrapping_sub(0))
        .collect();
    let bt: Vec<i8> = (0..c.n * bs)
        .map(|_| (rng.below(256) as i64 - 128) as i8)
        .collect();
    let sa: Vec<f32> = (0..if c.per_token { c.m } else { 1 })
        .map(|_| rng.uniform().abs() * 0.01 + 1e-4)
        .collect();
    let sb: Vec<f32> = (0..if c.per_channel { c.n } else { 1 })
        .map(|_| rng.uniform().abs() * 0.01 + 1e-4)
        .collect();
    let adj: Vec<i32> = (0..c.n).map(|_| rng.below(20000) as i32 - 10000).collect();
    let zp: Vec<i32> = (0..c.m).map(|_| rng.below(256) as i32 - 128).collect();
    let bias = rand_vals(&mut rng, c.n, 1.0, c.out);
    MmData {
        a,
        bt,
        sa,
        sb,
        adj,
        zp,
        bias,
    }
}

fn run_mm(c: &MmCase, d: &MmData) -> Buf {
    let mut out = Buf::filled(c.out, c.m * c.n, -7.0);
    let bs = c.k + c.b_pad;
    let a = TensorView::new(&d.a, &[c.m, c.k]).unwrap();
    let b = TensorView::strided(&d.bt, &[c.k, c.n], &[1, bs]).unwrap();
    let sa = TensorView::new(&d.sa, &[d.sa.len(), 1]).unwrap();
    let sb = TensorView::new(&d.sb, &[1, d.sb.len()]).unwrap();
    let bias_buf = Buf::from_f32(c.out, &d.bias);
    let bias = c.bias.then(|| bias_buf.view(&[c.n], &[1]));
    let mut ov = out.view_mut(&[c.m, c.n], &[c.n, 1]);
    match c.azp {
        0 => int8_scaled_mm(&mut ov, &a, &b, &sa, &sb, bias.as_ref()).unwrap(),
        _ => {
            let adj = TensorView::new(&d.adj, &[c.n]).unwrap();
            let zp = TensorView::new(&d.zp, &[c.m]).unwrap();
            int8_scaled_mm_azp(
                &mut ov,
                &a,
                &b,
                &sa,
                &sb,
                &adj,
                (c.azp == 1).then_some(&zp),
                bias.as_ref(),
            )
            .unwrap()
        }
    }
    out
}

fn mm_reference(c: &MmCase, d: &MmData) -> (Vec<f64>, Vec<f64>) {
    let bs = c.k + c.b_pad;
    let bt: Vec<i8> = (0..c.n * c.k)
        .map(|i| d.bt[(i / c.k.max(1)) * bs + i % c.k.max(1)])
        .collect();
    let bias = c.bias.then_some(&d.bias[..]);
    let adj = (c.azp != 0).then_some(&d.adj[..]);
    let zp = (c.azp == 1).then_some(&d.zp[..]);
    let r = rl::int8_scaled_mm(&d.a, &bt, c.m, c.n, c.k, &d.sa, &d.sb, adj, zp, bias);
    let nb = rl::int8_scaled_mm(&d.a, &bt, c.m, c.n, c.k, &d.sa, &d.sb, adj, zp, None);
    (r, nb)
}

#[test]
fn int8_scaled_mm_parity_every_tier() {
    let shapes = [
        (1, 1, 1),
        (1, 70, 63),
        (3, 5, 64),
        (4, 64, 65),
        (9, 67, 200),
        (5, 130, 1),
        (0, 3, 4),
        (2, 0, 4),
        (2, 3, 0),
        (17, 9, 129),
    ];
    let mut first: Vec<Vec<u32>> = Vec::new();
    for_each_isa(|isa| {
        let mut bits = Vec::new();
        for (si, &(m, n, k)) in shapes.iter().enumerate() {
            let c = MmCase {
                m,
                n,
                k,
                per_token: si % 2 == 0,
                per_channel: si % 3 != 0,
                azp: (si % 3) as u8,
                bias: si % 4 != 1,
                out: DTYPES[si % 3],
                b_pad: si % 2 * 3,
            };
            let d = mm_data(&c, 700 + si as u64);
            let out = run_mm(&c, &d);
            let (r, nb) = mm_reference(&c, &d);
            let ov = out.view(&[m, n], &[n, 1]);
            for i in 0..m {
                for j in 0..n {
                    let y = ov.get_f32(&[i, j]) as f64;
                    // Three f32 roundings of the scaled dot, one of the bias add, one to the output dtype.
                    let tol = 2f64.powi(-22) * nb[i * n + j].abs()
                        + 2f64.powi(-23) * r[i * n + j].abs()
                        + ulp(c.out, r[i * n + j]);
                    assert!(
                        (y - r[i * n + j]).abs() <= tol,
                        "{isa} case {si}: out[{i}][{j}] = {y}, ref {}",
                        r[i * n + j]
                    );
                }
            }
            bits.push(out.bits());
            // Thread invariance.
            let many = on_threads(isa, 3, || run_mm(&c, &d)).bits();
            assert_eq!(bits.last().unwrap(), &many, "{isa} case {si}: threads");
        }
        // Every tier computes the same integer dot and the same f32 epilogue.
        if first.is_empty() {
            first = bits;
        } else {
            assert_eq!(first, bits, "{isa}: differs from the generic tier");
        }
    });
}

#[test]
fn int8_scaled_mm_extreme_values_no_overflow() {
    let k = 70_000;
    for_each_isa(|isa| {
        for (av, bv) in [(-128i8, -128i8), (-128, 127), (127, -128)] {
            let a = vec![av; k];
            let bt = vec![bv; 2 * k];
            let mut out = [0f32; 2];
            int8_scaled_mm(
                &mut TensorViewMut::new(&mut out, &[1, 2]).unwrap(),
                &TensorView::new(&a, &[1, k]).unwrap(),
                &TensorView::strided(&bt, &[k, 2], &[1, k]).unwrap(),
                &TensorView::new(&[1.0f32], &[1]).unwrap(),
                &TensorView::new(&[1.0f32], &[1]).unwrap(),
                None,
            )
            .unwrap();
            let exact = (av as i64 * bv as i64 * k as i64) as f32;
            assert_eq!(out, [exact, exact], "{isa} a={av} b={bv}");
        }
    });
}

/// End to end: quantize activations (symmetric and with zero points) and
/// per-channel weights, run the int8 GEMM, land within quantization error
/// of the float linear.
#[test]
fn w8a8_end_to_end() {
    let (m, n, k) = (5usize, 48usize, 256usize);
    let mut rng = Rng(8);
    let x: Vec<f32> = (0..m * k).map(|_| rng.uniform() + 0.3).collect();
    let w: Vec<f32> = rng.f32_vec(n * k, 0.5);
    // Per-channel symmetric weights.
    let mut wq = vec![0i8; n * k];
    let mut ws = vec![0f32; n];
    for j in 0..n {
        let (q, s, _) = rl::scaled_int8_quant_row(&w[j * k..(j + 1) * k], None, false);
        wq[j * k..(j + 1) * k].copy_from_slice(&q);
        ws[j] = s;
    }
    let adj: Vec<i32> = (0..n)
        .map(|j| wq[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum())
        .collect();
    let exact = rl::linear_f64(
        m,
        n,
        k,
        |i, t| x[i * k + t] as f64,
        |j, t| w[j * k + t] as f64,
        None,
    );
    for asym in [false, true] {
        let xb = Buf::from_f32(DType::F32, &x);
        let (xq, xs, xz) = run_quant(&xb, m, k, if asym { QMode::DynAsym } else { QMode::DynSym });
        let mut out = vec![0f32; m * n];
        let a = TensorView::new(&xq, &[m, k]).unwrap();
        let b = TensorView::strided(&wq, &[k, n], &[1, k]).unwrap();
        let (sa, sb) = (
            TensorView::new(&xs, &[m]).unwrap(),
            TensorView::new(&ws, &[n]).unwrap(),
        );
        let mut ov = TensorViewMut::new(&mut out, &[m, n]).unwrap();
        if asym {
            let (adjv, zv) = (
                TensorView::new(&adj, &[n]).unwrap(),
                TensorView::new(&xz, &[m]).unwrap(),
            );
            int8_scaled_mm_azp(&mut ov, &a, &b, &sa, &sb, &adjv, Some(&zv), None).unwrap();
        } else {
            int8_scaled_mm(&mut ov, &a, &b, &sa, &sb, None).unwrap();
        }
        for (i, (y, e)) in out.iter().zip(&exact).enumerate() {
            let scale = (0..k)
                .map(|t| (x[(i / n) * k + t] * w[(i % n) * k + t]).abs() as f64)
                .sum::<f64>();
            assert!(
                (*y as f64 - e).abs() <= 0.02 * scale,
                "asym={asym} [{i}]: {y} vs {e}"
            );
        }
    }
}

#[test]
fn w8a8_bad_inputs() {
    let x = vec![1f32; 2 * 8];
    let xv = TensorView::new(&x, &[2, 8]).unwrap();
    let mut q = vec![9i8; 16];
    let one = [0.5f32];
    let check = |r: xpu_ops::Result<()>, st: Status, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.status, st, "{what}: {e}");
    };
    let sv = TensorView::new(&one, &[1]).unwrap();
    check(
        static_scaled_int8_quant(
            &mut TensorViewMut::new(&mut q[..14], &[2, 7]).unwrap(),
            &xv,
            &sv,
            None,
        ),
        Status::ShapeMismatch,
        "out shape",
    );
    let zero = [0f32];
    check(
        static_scaled_int8_quant(
            &mut TensorViewMut::new(&mut q, &[2, 8]).unwrap(),
            &xv,
            &TensorView::new(&zero, &[1]).unwrap(),
            None,
        ),
        Status::InvalidValue,
        "zero scale",
    );
    let two = [0.5f32, 0.5];
    check(
        static_scaled_int8_quant(
            &mut TensorViewMut::new(&mut q, &[2, 8]).unwrap(),
            &xv,
            &TensorView::new(&two, &[2]).unwrap(),
            None,
        ),
        Status::ShapeMismatch,
        "static scale count",
    );
    let azf = [1f32];
    check(
        static_scaled_int8_quant(
            &mut TensorViewMut::new(&mut q, &[2, 8]).unwrap(),
            &xv,
            &sv,
            Some(&TensorView::new(&azf, &[1]).unwrap()),
        ),
        Status::DtypeMismatch,
        "azp dtype",
    );
    let mut s3 = [0f32; 3];
    check(
        dynamic_scaled_int8_quant(
            &mut TensorViewMut::new(&mut q, &[2, 8]).unwrap(),
            &xv,
            &mut TensorViewMut::new(&mut s3, &[3]).unwrap(),
            None,
        ),
        Status::ShapeMismatch,
        "scales count",
    );
    let mut qu = vec![9u8; 16];
    let mut s2 = [0f32; 2];
    check(
        dynamic_scaled_int8_quant(
            &mut TensorViewMut::new(&mut qu, &[2, 8]).unwrap(),
            &xv,
            &mut TensorViewMut::new(&mut s2, &[2]).unwrap(),
            None,
        ),
        Status::DtypeMismatch,
        "out uint8",
    );
    assert!(
        q.iter().all(|&v| v == 9) && s3 == [0.0; 3] && s2 == [0.0; 2],
        "outputs untouched"
    );

    let a = vec![1i8; 2 * 8];
    let bt = vec![1i8; 3 * 8];
    let av = TensorView::new(&a, &[2, 8]).unwrap();
    let bcol = TensorView::strided(&bt, &[8, 3], &[1, 8]).unwrap();
    let sb = TensorView::new(&[1f32; 3], &[3]).unwrap();
    let mut out = vec![5f32; 6];
    let mm = |a: &TensorView,
              b: &TensorView,
              sa: &TensorView,
              sb: &TensorView,
              st: Status,
              what: &str,
              out: &mut [f32]| {
        let e = int8_scaled_mm(
            &mut TensorViewMut::new(out, &[2, 3]).unwrap(),
            a,
            b,
            sa,
            sb,
            None,
        )
        .expect_err(what);
        assert_eq!(e.status, st, "{what}: {e}");
    };
    let brow = TensorView::new(&bt[..24], &[8, 3]).unwrap();
    mm(
        &av,
        &brow,
        &sv,
        &sb,
        Status::InvalidStride,
        "b row-major",
        &mut out,
    );
    mm(
        &av,
        &TensorView::strided(&bt[..21], &[7, 3], &[1, 7]).unwrap(),
        &sv,
        &sb,
        Status::ShapeMismatch,
        "K mismatch",
        &mut out,
    );
    mm(
        &av,
        &bcol,
        &TensorView::new(&[1f32; 3], &[3]).unwrap(),
        &sb,
        Status::ShapeMismatch,
        "a_scales count",
        &mut out,
    );
    mm(
        &av,
        &bcol,
        &sv,
        &TensorView::new(&[1f32; 2], &[2]).unwrap(),
        Status::ShapeMismatch,
        "b_scales count",
        &mut out,
    );
    let af = vec![1f32; 16];
    mm(
        &TensorView::new(&af, &[2, 8]).unwrap(),
        &bcol,
        &sv,
        &sb,
        Status::DtypeMismatch,
        "a float",
        &mut out,
    );
    let adj = [0i32; 2];
    let e = int8_scaled_mm_azp(
        &mut TensorViewMut::new(&mut out, &[2, 3]).unwrap(),
        &av,
        &bcol,
        &sv,
        &sb,
        &TensorView::new(&adj, &[2]).unwrap(),
        None,
        None,
    )
    .unwrap_err();
    assert_eq!(e.status, Status::ShapeMismatch, "{e}");
    let bias16 = [f16::ONE; 3];
    let e = int8_scaled_mm(
        &mut TensorViewMut::new(&mut out, &[2, 3]).unwrap(),
        &av,
        &bcol,
        &sv,
        &sb,
        Some(&TensorView::new(&bias16, &[3]).unwrap()),
    )
    .unwrap_err();
    assert_eq!(e.status, Status::DtypeMismatch, "{e}");
    assert!(out.iter().all(|&v| v == 5.0), "out untouched");
    // K beyond the int32-exact range.
    let big = xpu_ops::ops::quant::INT8_MM_MAX_K + 1;
    let (ab, bb) = (vec![0i8; big], vec![0i8; big]);
    let mut o1 = [0f32; 1];
    let e = int8_scaled_mm(
        &mut TensorViewMut::new(&mut o1, &[1, 1]).unwrap(),
        &TensorView::new(&ab, &[1, big]).unwrap(),
        &TensorView::new(&bb, &[big, 1]).unwrap(),
        &sv,
        &sv,
        None,
    )
    .unwrap_err();
    assert_eq!(e.status, Status::Unsupported, "{e}");
}

// ---------------------------------------------------------------------------
// bf16 × bf16 on the AMX tile GEMM (the `amx` tier takes every such linear
// with M >= 5; the other tiers run the same shapes as a cross-check). Edges:
// 16-row x tiles, 32-k steps, 32-row weight blocks (64 in the M <= 16 decode
// blocks), 256-k blocks, grid tiles.

/// Checks `c` on every tier against one fp64 reference; returns nothing,
/// panics with `what` on a mismatch. Tolerance: the module's.
fn check_case_every_tier(c: &Case, seed: u64, what: &str) {
    let d = make_data(c, seed);
    let (xs, ws, os) = (c.k + c.x_pad, c.k + c.w_pad, c.n + c.out_pad);
    let x = d.x.view(&[c.m, c.k], &[xs, 1]);
    let w = d.w.view(&[c.n, c.k], &[ws, 1]);
    let b = d.b.as_ref().map(|b| b.view(&[c.n], &[1]));
    let (r, absd) = linear_reference(&x, &w, b.as_ref());
    for_each_isa(|isa| {
        let out = run_case(c, &d);
        let what = format!("{isa} {what} {c:?}");
        assert_linear_close(
            &out.view(&[c.m, c.n], &[os, 1]),
            &r,
            &absd,
            c.m,
            c.n,
            c.k,
            &what,
        );
        assert_padding_untouched(&out, c.m, c.n, os, -7.0, &what);
    });
}

#[test]
fn bf16_amx_tile_edges_every_tier() {
    // Every (M, N, K) over the tile edges, with the extras varied.
    const E: [usize; 8] = [1, 15, 16, 17, 31, 32, 33, 65];
    let mut idx = 0usize;
    for &m in &E {
        for &n in &E {
            for &k in &E {
                let mut c = Case::new(m, n, k, DType::BF16);
                c.bias = idx % 3 != 0;
                c.bias_f32 = idx % 3 == 2;
                c.out_dtype = if idx % 2 == 1 {
                    DType::F32
                } else {
                    DType::BF16
                };
                c.x_pad = idx % 5;
                c.w_pad = idx % 3;
                c.out_pad = idx % 4;
                check_case_every_tier(&c, 5000 + idx as u64, "tile edge");
                idx += 1;
            }
        }
    }
}

#[test]
fn bf16_amx_k_blocks_and_decode_rows() {
    // K around the 256-k blocks (C tiles spilled between blocks), M around
    // the decode threshold (AMX from 5 rows), K past one block at M <= 16
    // (decode blocks keep the whole K), a multi-tile grid.
    let shapes = [
        (40, 70, 255),
        (40, 70, 256),
        (40, 70, 257),
        (33, 65, 511),
        (64, 96, 513),
        (3, 100, 100),
        (4, 100, 100),
        (5, 64, 700),
        (16, 80, 1000),
        (16, 130, 64),
        (100, 1100, 96),
        (700, 40, 70),
        // x of a tile over 1 MiB: N <= 64 runs the narrow-weight kernel's
        // blocks over the whole K; wider N packs x in 256-k blocks, C
        // spilled between them.
        (700, 40, 1800),
        (700, 80, 1800),
        // K = 0: out = bias, in both AMX paths.
        (16, 20, 0),
        (40, 20, 0),
        // N <= 64 (the narrow-weight kernel: x rows as A tiles straight from
        // x): partial 16-row blocks, K tails, 256-k blocks, N = 1.
        (100, 64, 600),
        (17, 1, 300),
    ];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        let mut c = Case::new(m, n, k, DType::BF16);
        c.bias_f32 = i % 2 == 1;
        c.out_dtype = if i % 3 == 1 { DType::F32 } else { DType::BF16 };
        c.x_pad = i % 3;
        c.out_pad = i % 2;
        check_case_every_tier(&c, 6000 + i as u64, "k blocks");
    }
}

/// The 248k-vocab lm_head at M = 16 (the AMX decode blocks), K reduced, on
/// the best tier and on avx512 (the decode kernel) where that differs.
#[test]
fn lm_head_248320_bf16_m16() {
    let best = xpu_ops::detected_isa();
    for isa in [best, xpu_ops::Isa::Avx512] {
        if !common::isas().contains(&isa) {
            continue;
        }
        xpu_ops::with_isa(isa, || {
            let mut c = Case::new(16, 248_320, 64, DType::BF16);
            c.bias = false;
            check_case(&c, 4244, &format!("{isa} lm_head M=16 N=248320 bf16"));
            c.out_dtype = DType::F32;
            c.bias = true;
            check_case(
                &c,
                4245,
                &format!("{isa} lm_head M=16 N=248320 bf16 -> f32"),
            );
        })
        .unwrap();
        if isa == xpu_ops::Isa::Avx512 {
            break;
        }
    }
}

/// bf16 dot instructions (`vdpbf16ps`, `TDPBF16PS`) treat bf16 denormal
/// inputs as zero and flush denormal products and sums. The documented
/// tolerance then holds with those products added to the bound: checked on
/// every tier with x full of denormals and products below 2⁻¹²⁶.
#[test]
fn bf16_denormals_within_tolerance_every_tier() {
    for &(m, n, k) in &[(16usize, 40usize, 96usize), (40, 48, 300)] {
        let mut rng = Rng(77);
        // x: a third denormal (exponent 0), a third tiny normals, a third O(1).
        let xv: Vec<bf16> = (0..m * k)
            .map(|i| match i % 3 {
                0 => bf16::from_bits(
                    (rng.below(127) + 1) as u16 | if rng.below(2) == 1 { 0x8000 } else { 0 },
                ),
                1 => bf16::from_f32(rng.uniform() * 1e-30),
                _ => bf16::from_f32(rng.uniform()),
            })
            .collect();
        let wv: Vec<bf16> = (0..n * k)
            .map(|i| bf16::from_f32(rng.uniform() * if i % 2 == 0 { 1e-10 } else { 1.0 }))
            .collect();
        let x = TensorView::new(&xv, &[m, k]).unwrap();
        let w = TensorView::new(&wv, &[n, k]).unwrap();
        let r = rl::linear(&x, &w, None);
        let absd = rl::abs_dot(
            m,
            n,
            k,
            |i, kk| xv[i * k + kk].to_f64(),
            |j, kk| wv[j * k + kk].to_f64(),
        );
        let tiny = 2f64.powi(-126);
        // The flushed share: products with a denormal operand or below 2^-126.
        let flushed: Vec<f64> = (0..m * n)
            .map(|o| {
                let (i, j) = (o / n, o % n);
                (0..k)
                    .map(|kk| (xv[i * k + kk].to_f64(), wv[j * k + kk].to_f64()))
                    .filter(|(a, b)| a.abs() < tiny || b.abs() < tiny || (a * b).abs() < tiny)
                    .map(|(a, b)| (a * b).abs())
                    .sum()
            })
            .collect();
        assert!(
            flushed.iter().any(|&f| f > 0.0),
            "the data has flushed products"
        );
        for_each_isa(|isa| {
            for out_dtype in [DType::F32, DType::BF16] {
                let mut out = Buf::zeros(out_dtype, m * n);
                linear(&x, &w, None, &mut out.view_mut(&[m, n], &[n, 1])).unwrap();
                let ov = out.view(&[m, n], &[n, 1]);
                let gamma = 4.0 * (k as f64).sqrt() * 2f64.powi(-24);
                for o in 0..m * n {
                    let y = ov.get_f32(&[o / n, o % n]) as f64;
                    let tol = gamma * absd[o] + ulp(out_dtype, r[o]) + flushed[o];
                    assert!(
                        (y - r[o]).abs() <= tol,
                        "{isa} {out_dtype} M={m}: out[{o}] = {y}, reference {}, tol {tol}",
                        r[o]
                    );
                }
            }
        });
    }
}

#[test]
fn bf16_nan_and_inf_flow_through_every_tier() {
    for_each_isa(|isa| {
        for m in [4usize, 16, 40] {
            let (n, k) = (37, 70);
            let mut x = vec![bf16::from_f32(0.5); m * k];
            x[3] = bf16::NAN; // row 0
            x[k + 65] = bf16::INFINITY; // row 1, in the K tail step
            let w = vec![bf16::from_f32(0.25); n * k];
            let mut out = vec![bf16::ZERO; m * n];
            linear(
                &TensorView::new(&x, &[m, k]).unwrap(),
                &TensorView::new(&w, &[n, k]).unwrap(),
                None,
                &mut TensorViewMut::new(&mut out, &[m, n]).unwrap(),
            )
            .unwrap();
            assert!(out[..n].iter().all(|v| v.is_nan()), "{isa} M={m}: NaN row");
            assert!(
                out[n..2 * n].iter().all(|&v| v == bf16::INFINITY),
                "{isa} M={m}: inf row"
            );
            let want = bf16::from_f32(0.5 * 0.25 * k as f32);
            assert!(
                out[2 * n..].iter().all(|&v| v == want),
                "{isa} M={m}: finite rows"
            );
        }
    });
}

#[test]
fn bf16_thread_invariance_amx_shapes() {
    // Grid tiles change with the thread count (decode tile_n, GEMM tile_m/n,
    // and with them whether K runs in 256-k blocks: (700, 40, 1800) does on
    // one thread, not on two); the arithmetic must not.
    let shapes = [
        (16, 1000, 300),
        (300, 600, 520),
        (7, 2000, 64),
        (700, 40, 1800),
    ];
    for_each_isa(|isa| {
        for (i, &(m, n, k)) in shapes.iter().enumerate() {
            let c = Case::new(m, n, k, DType::BF16);
            let d = make_data(&c, 90 + i as u64);
            assert_thread_invariant(&format!("{isa} {c:?}"), |t| {
                on_threads(isa, t, || run_case(&c, &d)).bits()
            });
        }
    });
}

// ---------------------------------------------------------------------------
// f32 on the AMX tile unit (bf16x3 split, `linear_amx::takes_f32`).

/// max and mean over outputs of |y - ref| / sum_k |x w| for `c` on `isa`
/// (the FMA path on avx512, the split tile path on amx from
/// `AMX_F32_MIN_M` rows), after checking the module's tolerance.
fn f32_rel_err(isa: xpu_ops::Isa, c: &Case, seed: u64) -> (f64, f64) {
    let d = make_data(c, seed);
    let what = format!("{isa} {c:?}");
    let (out, r, absd) = xpu_ops::with_isa(isa, || run_checked(c, &d, &what)).expect("tier");
    let ov = out.view(&[c.m, c.n], &[c.n + c.out_pad, 1]);
    let (mut mx, mut sum) = (0f64, 0f64);
    for i in 0..c.m {
        for j in 0..c.n {
            let e = (ov.get_f32(&[i, j]) as f64 - r[i * c.n + j]).abs() / absd[i * c.n + j];
            mx = mx.max(e);
            sum += e;
        }
    }
    (mx, sum / (c.m * c.n) as f64)
}

fn has_amx() -> bool {
    xpu_ops::supported_isas().contains(&xpu_ops::Isa::Amx)
}

#[test]
fn f32_split_error_class() {
    // The split path must stay in the FMA path's error class: its largest
    // |y - ref| / sum|x w| within 4x of the FMA path's (and inside the
    // module tolerance, checked in f32_rel_err). Measured figures are in
    // src/ops/linear_amx.rs.
    if !has_amx() {
        eprintln!("no amx tier here: split path not run");
        return;
    }
    // N = 80 runs the packed split GEMM, N = 64 and 17 the narrow split
    // kernel (x split inside it).
    let m = xpu_ops::ops::linear_amx::AMX_F32_MIN_M;
    for (i, (n, k)) in [80usize, 64, 17]
        .into_iter()
        .flat_map(|n| [1usize, 31, 97, 1000, 2047, 4096].map(|k| (n, k)))
        .enumerate()
    {
        let mut c = Case::new(m, n, k, DType::F32);
        c.bias = false;
        let fma = f32_rel_err(xpu_ops::Isa::Avx512, &c, 700 + i as u64);
        let amx = f32_rel_err(xpu_ops::Isa::Amx, &c, 700 + i as u64);
        eprintln!(
            "N={n} K={k}: max rel err fma {:.3e} amx3 {:.3e} (ratio {:.2}); mean fma {:.3e} amx3 {:.3e}",
            fma.0,
            amx.0,
            amx.0 / fma.0,
            fma.1,
            amx.1
        );
        assert!(
            amx.0 <= 4.0 * fma.0.max(2f64.powi(-24)),
            "N={n} K={k}: split max rel err {:.3e} vs FMA {:.3e}",
            amx.0,
            fma.0
        );
    }
}

#[test]
fn f32_split_shape_classes_every_tier() {
    // M at and around the split path's threshold, K not a multiple of 32
    // (and of 512, the packed k block), N not a multiple of 16 or 32, N = 64
    // and below (the narrow split kernel: one or two 32-column weight
    // blocks, 32-row grid tiles of 16-row x blocks, rows past M in the last
    // block, one k step or many; weights past 1 MiB of split parts in 32-row
    // tiles of k blocks, smaller ones in 16-row whole-K tiles) and 65,
    // padding, f32 bias: every tier (the
    // split path runs on amx, the others run the FMA path).
    let t = xpu_ops::ops::linear_amx::AMX_F32_MIN_M;
    let shapes = [
        (t - 1, 97, 300),
        (t, 65, 31),
        (t, 64, 1031),
        (t + 1, 130, 513),
        (t + 31, 33, 1),
        (200, 257, 97),
        (257, 100, 1055),
        (300, 64, 700),
        (t - 1, 64, 200),
        (t, 1, 97),
        (t + 5, 17, 33),
        (t + 17, 33, 1055),
        (131, 64, 1),
        (147, 32, 600),
        (t, 16, 31),
        (161, 63, 64),
        (t + 9, 64, 2800),
    ];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        let mut c = Case::new(m, n, k, DType::F32);
        c.bias = i % 3 != 0;
        c.bias_f32 = i % 2 == 0;
        c.x_pad = i % 3;
        c.w_pad = (i + 1) % 4;
        c.out_pad = i % 2 * 5;
        check_case_every_tier(&c, 8100 + i as u64, "f32 split shapes");
    }
}

#[test]
fn f32_split_thread_invariance() {
    // Grid tiles and x-pack blocks change with the thread count; the split
    // path's arithmetic must not (nor must the per-call weight split).
    let t = xpu_ops::ops::linear_amx::AMX_F32_MIN_M;
    for (i, &(m, n, k)) in [
        (t, 600, 520),
        (300, 97, 1031),
        (700, 257, 64),
        (t + 5, 64, 1031),
        (300, 17, 520),
        (517, 1, 100),
        (t + 40, 64, 3000),
    ]
    .iter()
    .enumerate()
    {
        let c = Case::new(m, n, k, DType::F32);
        let d = make_data(&c, 130 + i as u64);
        for_each_isa(|isa| {
            assert_thread_invariant(&format!("{isa} {c:?}"), |t| {
                on_threads(isa, t, || run_case(&c, &d)).bits()
            });
        });
    }
}

/// One f32 linear of `x` [m, k] and `w` [n, k] (no bias) on the active tier.
fn f32_linear(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    linear(
        &TensorView::new(x, &[m, k]).unwrap(),
        &TensorView::new(w, &[n, k]).unwrap(),
        None,
        &mut TensorViewMut::new(&mut out, &[m, n]).unwrap(),
    )
    .unwrap();
    out
}

#[test]
fn f32_split_non_finite_and_extremes_every_tier() {
    // inf / NaN in x: the same result class as the FMA path (an x inf meets
    // weights that are exact bf16, so their low parts are zero: inf * 0 must
    // not turn the row into NaN). A weight with inf / NaN runs the FMA path.
    // Values near FLT_MAX (bf16 rounding would overflow) split exactly.
    // N = 70 runs the packed split GEMM, 64 and 17 the narrow split kernel;
    // the last row (alone in its x block) has an inf in its last k step.
    for n in [70, 64, 17] {
        non_finite_and_extremes(n);
    }
}

fn non_finite_and_extremes(n: usize) {
    let (m, k) = (xpu_ops::ops::linear_amx::AMX_F32_MIN_M + 3, 45);
    for_each_isa(|isa| {
        let mut x = vec![0.5f32; m * k];
        x[3] = f32::NAN; // row 0
        x[k + 40] = f32::INFINITY; // row 1
        x[2 * k + 7] = f32::NEG_INFINITY; // row 2
        x[3 * k + 1] = f32::MAX; // row 3: near FLT_MAX
        x[(m - 1) * k + k - 1] = f32::INFINITY; // the last row
        let mut w = vec![0.25f32; n * k];
        for v in &mut w[5 * k..6 * k] {
            *v = 0.1; // row 5: not a bf16 value (non-zero low parts)
        }
        let y = f32_linear(&x, &w, m, n, k);
        assert!(y[..n].iter().all(|v| v.is_nan()), "{isa}: NaN row");
        assert!(
            y[n..2 * n].iter().all(|&v| v == f32::INFINITY),
            "{isa}: inf row"
        );
        assert!(
            y[2 * n..3 * n].iter().all(|&v| v == f32::NEG_INFINITY),
            "{isa}: -inf row"
        );
        for j in 0..n {
            let wj = w[j * k] as f64;
            let want = f32::MAX as f64 * wj + 0.5 * wj * (k - 1) as f64;
            let got = y[3 * n + j] as f64;
            assert!(
                (got - want).abs() <= want.abs() * 2f64.powi(-22),
                "{isa}: FLT_MAX row col {j}: {got} vs {want}"
            );
        }
        assert!(
            y[(m - 1) * n..].iter().all(|&v| v == f32::INFINITY),
            "{isa}: last row inf"
        );
        let finite = 0.5 * 0.25 * k as f32;
        assert!(
            (4..m - 1).all(|i| y[i * n..(i + 1) * n]
                .iter()
                .enumerate()
                .all(|(j, &v)| if j == 5 {
                    (v - 0.5 * 0.1 * k as f32).abs() < 1e-5
                } else {
                    v == finite
                })),
            "{isa} N={n}: finite rows"
        );
        // inf / NaN in the weight: those columns inf / NaN, the rest exact.
        let x2 = vec![0.5f32; m * k];
        let mut w2 = vec![0.25f32; n * k];
        w2[2 * k + 9] = f32::INFINITY;
        w2[4 * k] = f32::NAN;
        let y2 = f32_linear(&x2, &w2, m, n, k);
        for i in 0..m {
            for j in 0..n {
                let v = y2[i * n + j];
                match j {
                    2 => assert_eq!(v, f32::INFINITY, "{isa}: w inf col"),
                    4 => assert!(v.is_nan(), "{isa}: w NaN col"),
                    _ => assert_eq!(v, finite, "{isa}: [{i}][{j}]"),
                }
            }
        }
    });
}

#[test]
fn f32_split_tiny_values_every_tier() {
    // Values whose low bf16 parts are denormal (TDPBF16PS reads them as
    // zero): the split path stays within the module tolerance plus the
    // documented absolute bound 2^-125 (sum|x| + sum|w|) + 6K 2^-126.
    for n in [72, 40] {
        tiny_values(n);
    }
}

fn tiny_values(n: usize) {
    let (m, k) = (xpu_ops::ops::linear_amx::AMX_F32_MIN_M, 100);
    let mut rng = Rng(77);
    for scale in [
        2f32.powi(-100),
        2f32.powi(-118),
        2f32.powi(-126),
        2f32.powi(-140),
    ] {
        let x: Vec<f32> = rng.f32_vec(m * k, 1.0).iter().map(|v| v * scale).collect();
        let w = rng.f32_vec(n * k, 1.0);
        let c = Case::new(m, n, k, DType::F32);
        let xb = Buf::from_f32(DType::F32, &x);
        let wb = Buf::from_f32(DType::F32, &w);
        let (r, absd) =
            linear_reference(&xb.view(&[m, k], &[k, 1]), &wb.view(&[n, k], &[k, 1]), None);
        for_each_isa(|isa| {
            let y = f32_linear(&x, &w, m, n, k);
            for i in 0..m {
                let sx: f64 = x[i * k..(i + 1) * k].iter().map(|v| v.abs() as f64).sum();
                for j in 0..n {
                    let sw: f64 = w[j * k..(j + 1) * k].iter().map(|v| v.abs() as f64).sum();
                    let rr = r[i * n + j];
                    let tol = common::float_buf::linear_tol(k, absd[i * n + j], DType::F32, rr)
                        + 2f64.powi(-125) * (sx + sw)
                        + 6.0 * k as f64 * 2f64.powi(-126);
                    let e = (y[i * n + j] as f64 - rr).abs();
                    assert!(
                        e <= tol,
                        "{isa} scale {scale:e} {c:?} [{i}][{j}]: {e:e} > {tol:e}"
                    );
                }
            }
        });
    }
}
