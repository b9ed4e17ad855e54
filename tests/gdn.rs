//! Gated DeltaNet ops against the fp64 reference on every ISA tier, thread
//! invariance and bad input. Tolerances are stated next to each test.

mod common;
mod la_common;

use common::{for_each_isa, with_threads, Rng};
use la_common::{assert_close, assert_err, rtol, Buf};
use proptest::prelude::*;
use xpu_ops::reference::gdn as reference;
use xpu_ops::{fused_gdn_gating, l2norm, rms_norm_gated, DType, Status};

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

// ---- fused_gdn_gating ----------------------------------------------------------

fn gating(bufs: &mut [Buf; 6], beta: f32, threshold: f32, use_ref: bool) -> xpu_ops::Result<()> {
    let [a_log, a, b, dt, g, bo] = bufs;
    let (a_log, a, b, dt) = (a_log.view(), a.view(), b.view(), dt.view());
    let (mut g, mut bo) = (g.view_mut(), bo.view_mut());
    if use_ref {
        reference::fused_gdn_gating(&a_log, &a, &b, &dt, beta, threshold, &mut g, &mut bo);
        Ok(())
    } else {
        fused_gdn_gating(&a_log, &a, &b, &dt, beta, threshold, &mut g, &mut bo)
    }
}

fn gating_bufs(
    tokens: usize,
    heads: usize,
    dtypes: [DType; 3],
    three_d: bool,
    seed: u64,
) -> [Buf; 6] {
    let mut rng = Rng(seed);
    let out_shape: Vec<usize> = if three_d {
        vec![1, tokens, heads]
    } else {
        vec![tokens, heads]
    };
    [
        Buf::contiguous(dtypes[0], &[heads]).random(&mut rng, 2.0),
        Buf::with_order(dtypes[0], &[tokens, heads], &[0, 1], 3).random(&mut rng, 30.0),
        Buf::with_order(dtypes[1], &[tokens, heads], &[1, 0], 0).random(&mut rng, 8.0),
        Buf::contiguous(dtypes[0], &[heads]).random(&mut rng, 2.0),
        Buf::contiguous(DType::F32, &out_shape).random(&mut rng, 1.0),
        Buf::contiguous(dtypes[2], &out_shape).random(&mut rng, 1.0),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// g: fp32 libm vs fp64 -> 1e-5 relative + 1e-6; beta_output: one rounding
    /// to its dtype (rtol of the dtype) + 1e-6.
    #[test]
    fn gating_matches_reference(
        tokens in prop::sample::select(vec![0usize, 1, 7, 64]),
        heads in prop::sample::select(vec![1usize, 16, 32]),
        dtypes in prop::array::uniform3(prop::sample::select(FLOATS.to_vec())),
        three_d in any::<bool>(),
        beta in prop::sample::select(vec![1.0f32, 0.5, 2.0]),
        threshold in prop::sample::select(vec![20.0f32, 5.0]),
        seed in any::<u64>(),
    ) {
        let base = gating_bufs(tokens, heads, dtypes, three_d, seed);
        let mut want = base.clone();
        gating(&mut want, beta, threshold, true).unwrap();
        for_each_isa(|isa| {
            let mut got = base.clone();
            gating(&mut got, beta, threshold, false).unwrap();
            assert_close(&got[4].values(), &want[4].values(), 1e-6, 1e-5, &format!("{isa}: g"));
            assert_close(&got[5].values(), &want[5].values(), 1e-6, rtol(dtypes[2]), &format!("{isa}: beta_output"));
        });
    }
}

#[test]
fn gating_rejects_bad_input() {
    let base = gating_bufs(4, 8, [DType::F32, DType::BF16, DType::F32], true, 1);
    let cases: Vec<(Box<dyn Fn(&mut [Buf; 6])>, Status, &str)> = vec![
        (
            Box::new(|b| b[0] = Buf::contiguous(DType::F32, &[7])),
            Status::ShapeMismatch,
            "A_log",
        ),
        (
            Box::new(|b| b[4] = Buf::contiguous(DType::BF16, &[1, 4, 8])),
            Status::DtypeMismatch,
            "`g`",
        ),
        (
            Box::new(|b| b[5] = Buf::contiguous(DType::F32, &[2, 4, 8])),
            Status::ShapeMismatch,
            "beta_output",
        ),
        (
            Box::new(|b| b[2] = Buf::contiguous(DType::F32, &[4, 9])),
            Status::ShapeMismatch,
            "`b`",
        ),
    ];
    for (mutate, status, needle) in cases {
        let mut bufs = base.clone();
        mutate(&mut bufs);
        let before = bufs.clone();
        assert_err(gating(&mut bufs, 1.0, 20.0, false), status, needle);
        assert_eq!(bufs[4].raw(), before[4].raw());
        assert_eq!(bufs[5].raw(), before[5].raw());
    }
    let mut bufs = base.clone();
    assert_err(
        gating(&mut bufs, 0.0, 20.0, false),
        Status::InvalidValue,
        "beta",
    );
    assert_eq!(bufs[4].raw(), base[4].raw());
}

// ---- l2norm and rms_norm_gated ---------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// |y| <= 1; fp32 sum of squares -> 2e-6 absolute, plus one rounding to out's dtype.
    #[test]
    fn l2norm_matches_reference(
        rows in prop::sample::select(vec![0usize, 1, 5, 33]),
        heads in 1usize..4,
        n in prop::sample::select(vec![1usize, 15, 16, 128, 600]),
        dtypes in prop::array::uniform2(prop::sample::select(FLOATS.to_vec())),
        eps in prop::sample::select(vec![1e-6f32, 0.0, 1e-2]),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        let x = Buf::with_order(dtypes[0], &[rows, heads, n], &[0, 1, 2], 5).random(&mut rng, 3.0);
        let out = Buf::contiguous(dtypes[1], &[rows, heads, n]).random(&mut rng, 1.0);
        let mut want = out.clone();
        reference::l2norm(&x.view(), eps, &mut want.view_mut());
        for_each_isa(|isa| {
            let mut got = out.clone();
            l2norm(&x.view(), eps, &mut got.view_mut()).unwrap();
            assert_close(&got.values(), &want.values(), 2e-6, rtol(dtypes[1]), &format!("{isa}: l2norm n={n}"));
        });
    }

    /// Outputs are O(|weight| * sqrt(group)) at most; fp32 -> 1e-5 relative +
    /// 1e-5 absolute, plus one rounding to out's dtype.
    #[test]
    fn rms_norm_gated_matches_reference(
        rows in prop::sample::select(vec![0usize, 1, 6]),
        n_groups in prop::sample::select(vec![(16usize, 1usize), (128, 1), (128, 4), (1030, 2), (96, 3)]),
        dtypes in prop::array::uniform4(prop::sample::select(FLOATS.to_vec())),
        with_z in any::<bool>(),
        with_bias in any::<bool>(),
        norm_before_gate in any::<bool>(),
        grouped in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (n, groups) = n_groups;
        let mut rng = Rng(seed);
        let x = Buf::with_order(dtypes[0], &[rows, n], &[0, 1], 3).random(&mut rng, 2.0);
        let z = Buf::contiguous(dtypes[1], &[rows, n]).random(&mut rng, 4.0);
        let w = Buf::contiguous(dtypes[2], &[n]).random(&mut rng, 1.5);
        let b = Buf::contiguous(dtypes[2], &[n]).random(&mut rng, 0.5);
        let out = Buf::contiguous(dtypes[3], &[rows, n]).random(&mut rng, 1.0);
        let gs = if grouped { Some(n / groups) } else { None };
        let (zv, bv) = (z.view(), b.view());
        let zo = with_z.then_some(&zv);
        let bo = with_bias.then_some(&bv);
        let mut want = out.clone();
        reference::rms_norm_gated(&x.view(), &w.view(), bo, zo, 1e-6, gs, norm_before_gate, &mut want.view_mut());
        for_each_isa(|isa| {
            let mut got = out.clone();
            rms_norm_gated(&x.view(), &w.view(), bo, zo, 1e-6, gs, norm_before_gate, &mut got.view_mut()).unwrap();
            assert_close(&got.values(), &want.values(), 1e-5, rtol(dtypes[3]).max(1e-5), &format!("{isa}: rms_norm_gated n={n} gs={gs:?}"));
        });
    }
}

#[test]
fn norms_reject_bad_input() {
    let mut rng = Rng(4);
    let x = Buf::contiguous(DType::F32, &[3, 8]).random(&mut rng, 1.0);
    let w = Buf::contiguous(DType::F32, &[8]).random(&mut rng, 1.0);
    let mut out = Buf::contiguous(DType::F32, &[3, 8]).random(&mut rng, 1.0);
    let before = out.clone();
    assert_err(
        rms_norm_gated(
            &x.view(),
            &w.view(),
            None,
            None,
            1e-6,
            Some(3),
            true,
            &mut out.view_mut(),
        ),
        Status::InvalidArgument,
        "group_size 3",
    );
    let w7 = Buf::contiguous(DType::F32, &[7]);
    assert_err(
        rms_norm_gated(
            &x.view(),
            &w7.view(),
            None,
            None,
            1e-6,
            None,
            true,
            &mut out.view_mut(),
        ),
        Status::ShapeMismatch,
        "weight",
    );
    let z = Buf::contiguous(DType::F32, &[3, 9]);
    assert_err(
        rms_norm_gated(
            &x.view(),
            &w.view(),
            None,
            Some(&z.view()),
            1e-6,
            None,
            true,
            &mut out.view_mut(),
        ),
        Status::ShapeMismatch,
        "`z`",
    );
    let mut out2 = Buf::contiguous(DType::F32, &[3, 9]);
    assert_err(
        l2norm(&x.view(), 1e-6, &mut out2.view_mut()),
        Status::ShapeMismatch,
        "out",
    );
    // A view whose last dim is strided is refused.
    let xs = Buf::with_order(DType::F32, &[3, 8], &[1, 0], 0);
    assert_err(
        l2norm(&xs.view(), 1e-6, &mut out.view_mut()),
        Status::InvalidStride,
        "`x`",
    );
    assert_eq!(out.raw(), before.raw());
}

#[test]
fn norms_are_thread_invariant() {
    let mut rng = Rng(9);
    let x = Buf::contiguous(DType::BF16, &[300, 128]).random(&mut rng, 2.0);
    let z = Buf::contiguous(DType::BF16, &[300, 128]).random(&mut rng, 2.0);
    let w = Buf::contiguous(DType::F32, &[128]).random(&mut rng, 1.0);
    let run = |threads: usize| {
        let mut out = Buf::contiguous(DType::BF16, &[300, 128]);
        let mut out2 = Buf::contiguous(DType::F32, &[300, 128]);
        with_threads(threads, || {
            rms_norm_gated(
                &x.view(),
                &w.view(),
                None,
                Some(&z.view()),
                1e-6,
                None,
                true,
                &mut out.view_mut(),
            )
            .unwrap();
            l2norm(&x.view(), 1e-6, &mut out2.view_mut()).unwrap();
        });
        (out, out2)
    };
    let one = run(1);
    for threads in [2, 3] {
        let other = run(threads);
        assert_eq!(one.0.raw(), other.0.raw());
        assert_eq!(one.1.raw(), other.1.raw());
    }
}
