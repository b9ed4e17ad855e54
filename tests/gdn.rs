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

type Mutation = Box<dyn Fn(&mut [Buf; 6])>;

#[test]
fn gating_rejects_bad_input() {
    let base = gating_bufs(4, 8, [DType::F32, DType::BF16, DType::F32], true, 1);
    let cases: Vec<(Mutation, Status, &str)> = vec![
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

// ---- gated delta rule: shared case builder ----------------------------------------

use xpu_ops::{fused_recurrent_gated_delta_rule, TensorView};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Idx {
    Identity,
    Rank1,
    Rank2,
}

#[derive(Debug, Clone)]
struct GdnCase {
    h: usize,
    groups: usize, // HV / H
    k: usize,
    v: usize,
    lens: Vec<usize>,
    varlen: bool,
    in_dtype: DType,
    g_dtype: DType,
    l2norm: bool,
    with_beta: bool,
    scale: Option<f32>,
    idx: Idx,
    pad: Vec<bool>,
    spec: bool,
    snapshot_holes: bool,
    k_contiguous_state: bool,
    heads_outer: bool,
    weak_decay: bool,
    seed: u64,
}

struct GdnData {
    q: Buf,
    k: Buf,
    v: Buf,
    g: Buf,
    beta: Buf,
    state: Buf,
    o: Buf,
    cu: Vec<i32>,
    idx1: Vec<i32>,
    idx2: Vec<i32>, // [N, cols] row-major
    cols: usize,
    acc: Vec<i32>,
    has_init: Vec<u8>,
}

impl GdnCase {
    fn hv(&self) -> usize {
        self.h * self.groups
    }
    fn shape_bt(&self) -> (usize, usize) {
        if self.varlen {
            (1, self.lens.iter().sum::<usize>() + 2)
        } else {
            (self.lens.len(), self.lens[0])
        }
    }
}

fn make_gdn(c: &GdnCase) -> GdnData {
    let mut rng = Rng(c.seed);
    let (b, t) = c.shape_bt();
    let hv = c.hv();
    let order: &[usize] = if c.heads_outer {
        &[0, 2, 1, 3]
    } else {
        &[0, 1, 2, 3]
    };
    let q = Buf::with_order(c.in_dtype, &[b, t, c.h, c.k], order, 3).random(&mut rng, 1.0);
    // Without in-kernel l2norm the keys are unit vectors (as fla's tests feed them).
    let mut k = Buf::with_order(c.in_dtype, &[b, t, c.h, c.k], order, 1).random(&mut rng, 1.0);
    if !c.l2norm {
        let norms: Vec<f64> = la_common::indices(&[b, t, c.h])
            .iter()
            .map(|p| {
                (0..c.k)
                    .map(|j| (k.get(&[p[0], p[1], p[2], j]) as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
                    .max(1e-3)
            })
            .collect();
        let kk = k.clone();
        k = k.fill_with(|i| {
            let n = norms[(i[0] * t + i[1]) * c.h + i[2]];
            (kk.get(i) as f64 / n) as f32
        });
    }
    let v = Buf::with_order(c.in_dtype, &[b, t, hv, c.v], order, 2).random(&mut rng, 1.0);
    let g = Buf::contiguous(c.g_dtype, &[b, t, hv]).random(&mut rng, 1.0);
    // Log decays in (-2.4, 0) or, for long memory, (-0.05, 0).
    let range = if c.weak_decay { 0.05 } else { 2.4 };
    let g = g
        .clone()
        .fill_with(|i| -0.001 - range * 0.5 * (g.get(i) + 1.0));
    let beta = Buf::with_order(c.in_dtype, &[b, t, hv], &[0, 2, 1], 0).random(&mut rng, 1.0);
    let beta = beta.clone().fill_with(|i| 0.5 + 0.45 * beta.get(i));
    let n = c.lens.len();
    let max_len = c.lens.iter().copied().max().unwrap_or(0);
    let cols = max_len + 1;
    let slots = if c.idx == Idx::Rank2 {
        n * cols + 3
    } else {
        n + 3
    };
    let s_order: &[usize] = if c.k_contiguous_state {
        &[0, 1, 2, 3]
    } else {
        &[0, 1, 3, 2]
    };
    let state =
        Buf::with_order(DType::F32, &[slots, hv, c.v, c.k], s_order, 0).random(&mut rng, 0.5);
    let o = Buf::contiguous(c.in_dtype, &[b, t, hv, c.v]).random(&mut rng, 1.0);
    let mut cu = vec![0i32];
    for &l in &c.lens {
        cu.push(cu.last().unwrap() + l as i32);
    }
    // Distinct slots for every (sequence, column), shuffled.
    let mut free: Vec<i32> = (0..slots as i32).collect();
    let mut take = |rng: &mut Rng| free.swap_remove(rng.below(free.len() as u64) as usize);
    let mut idx1 = Vec::new();
    let mut idx2 = Vec::new();
    let mut acc = Vec::new();
    for s in 0..n {
        let a = 1 + rng.below((c.lens[s].max(1)) as u64) as usize;
        acc.push(if c.spec { a as i32 } else { 1 });
        idx1.push(if c.pad[s] { -1 } else { take(&mut rng) });
        for col in 0..cols {
            let read_col = if c.spec { a - 1 } else { 0 };
            let hole = c.snapshot_holes && col != read_col && rng.below(3) == 0;
            let skip = c.idx != Idx::Rank2 || (c.pad[s] && col == read_col) || hole;
            idx2.push(if skip { -1 } else { take(&mut rng) });
        }
    }
    let has_init = (0..n).map(|_| (rng.below(3) != 0) as u8).collect();
    GdnData {
        q,
        k,
        v,
        g,
        beta,
        state,
        o,
        cu,
        idx1,
        idx2,
        cols,
        acc,
        has_init,
    }
}

fn clone_gdn(d: &GdnData) -> GdnData {
    GdnData {
        q: d.q.clone(),
        k: d.k.clone(),
        v: d.v.clone(),
        g: d.g.clone(),
        beta: d.beta.clone(),
        state: d.state.clone(),
        o: d.o.clone(),
        cu: d.cu.clone(),
        idx1: d.idx1.clone(),
        idx2: d.idx2.clone(),
        cols: d.cols,
        acc: d.acc.clone(),
        has_init: d.has_init.clone(),
    }
}

fn run_recurrent(c: &GdnCase, d: &mut GdnData, use_ref: bool) -> xpu_ops::Result<()> {
    let n = c.lens.len();
    let cu = TensorView::new(&d.cu, &[d.cu.len()]).unwrap();
    let idx1 = TensorView::new(&d.idx1, &[n]).unwrap();
    let idx2 = TensorView::new(&d.idx2, &[n, d.cols]).unwrap();
    let acc = TensorView::new(&d.acc, &[n]).unwrap();
    let idx = match c.idx {
        Idx::Identity => None,
        Idx::Rank1 => Some(&idx1),
        Idx::Rank2 => Some(&idx2),
    };
    let acc = c.spec.then_some(&acc);
    let cu = c.varlen.then_some(&cu);
    let (q, k, v, g, beta) = (
        d.q.view(),
        d.k.view(),
        d.v.view(),
        d.g.view(),
        d.beta.view(),
    );
    let beta = c.with_beta.then_some(&beta);
    let (mut st, mut o) = (d.state.view_mut(), d.o.view_mut());
    if use_ref {
        reference::fused_recurrent_gated_delta_rule(
            &q, &k, &v, &g, beta, c.scale, &mut st, cu, idx, acc, c.l2norm, &mut o,
        );
        Ok(())
    } else {
        fused_recurrent_gated_delta_rule(
            &q, &k, &v, &g, beta, c.scale, &mut st, cu, idx, acc, c.l2norm, &mut o,
        )
    }
}

/// Outputs: fp32 state and accumulation against the fp64 recurrence ->
/// 3e-5 absolute + 1e-4 relative, plus one rounding to the output dtype.
/// State: fp32 -> 3e-5 absolute + 1e-4 relative.
fn check_gdn(got: &GdnData, want: &GdnData, out_dtype: DType, what: &str) {
    assert_close(
        &got.o.values(),
        &want.o.values(),
        3e-5,
        1e-4 + rtol(out_dtype),
        &format!("{what}: o"),
    );
    assert_close(
        &got.state.values(),
        &want.state.values(),
        3e-5,
        1e-4,
        &format!("{what}: state"),
    );
}

fn gdn_case(max_t: usize) -> impl Strategy<Value = GdnCase> {
    (
        prop::sample::select(vec![(1usize, 1usize), (1, 2), (2, 2), (2, 1)]),
        // (24, 19): the AVX2 row groups of 4 with 3 rows left over.
        prop::sample::select(vec![
            (16usize, 16usize),
            (5, 17),
            (24, 19),
            (32, 64),
            (64, 32),
            (128, 128),
        ]),
        prop::collection::vec(0..=max_t, 1..4),
        any::<u64>(),
        prop::sample::select(FLOATS.to_vec()),
        prop::sample::select(vec![Idx::Identity, Idx::Rank1, Idx::Rank2]),
        any::<u64>(),
    )
        .prop_map(|((h, groups), (k, v), lens, bits, in_dtype, idx, seed)| {
            let bit = |i: u32| bits >> i & 1 == 1;
            let varlen = bit(0);
            let lens = if varlen {
                lens
            } else {
                vec![lens[0]; lens.len()]
            };
            let n = lens.len();
            GdnCase {
                h,
                groups,
                k,
                v,
                varlen,
                in_dtype,
                g_dtype: if bit(1) { DType::F32 } else { in_dtype },
                l2norm: bit(2),
                with_beta: !bit(3) || bit(4),
                scale: if bit(5) { Some(0.3) } else { None },
                idx,
                pad: (0..n)
                    .map(|i| idx != Idx::Identity && bits >> (8 + 2 * i) & 3 == 0)
                    .collect(),
                spec: bit(6) && idx == Idx::Rank2,
                snapshot_holes: bit(7),
                k_contiguous_state: !bit(20),
                heads_outer: bit(21),
                weak_decay: bit(22),
                lens,
                seed,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn recurrent_matches_reference(c in gdn_case(9)) {
        let base = make_gdn(&c);
        let mut want = clone_gdn(&base);
        run_recurrent(&c, &mut want, true).unwrap();
        for_each_isa(|isa| {
            let mut got = clone_gdn(&base);
            run_recurrent(&c, &mut got, false).unwrap();
            check_gdn(&got, &want, c.in_dtype, &format!("{isa} {c:?}"));
        });
    }
}

fn base_case() -> GdnCase {
    GdnCase {
        h: 2,
        groups: 2,
        k: 16,
        v: 8,
        lens: vec![3, 2, 4],
        varlen: true,
        in_dtype: DType::F32,
        g_dtype: DType::F32,
        l2norm: true,
        with_beta: true,
        scale: None,
        idx: Idx::Rank2,
        pad: vec![false, false, false],
        spec: true,
        snapshot_holes: false,
        k_contiguous_state: true,
        heads_outer: false,
        weak_decay: false,
        seed: 5,
    }
}

/// A T-token call with per-token snapshots equals T one-token calls chained
/// through the snapshot slots, bit for bit (same fp32 arithmetic per token).
#[test]
fn recurrent_multi_token_equals_chained_single_tokens() {
    for k_contiguous_state in [true, false] {
        for_each_isa(|isa| {
            let c = GdnCase {
                lens: vec![5],
                k_contiguous_state,
                spec: false,
                ..base_case()
            };
            let base = make_gdn(&c);
            let mut whole = clone_gdn(&base);
            run_recurrent(&c, &mut whole, false).unwrap();
            let mut step = clone_gdn(&base);
            let hv = c.hv();
            for t in 0..5 {
                // One token at a time: read the previous snapshot, write this one.
                let read = step.idx2[if t == 0 { 0 } else { t - 1 }];
                let write = step.idx2[t];
                let one = |b: &Buf, dims: usize| {
                    let mut shape = b.shape.clone();
                    shape[1] = 1;
                    Buf::contiguous(b.dtype, &shape).fill_with(|i| {
                        let mut j = i.to_vec();
                        j[1] = t;
                        let _ = dims;
                        b.get(&j)
                    })
                };
                let (q, k, v, g, beta) = (
                    one(&step.q, 4),
                    one(&step.k, 4),
                    one(&step.v, 4),
                    one(&step.g, 3),
                    one(&step.beta, 3),
                );
                let mut o = Buf::contiguous(c.in_dtype, &[1, 1, hv, c.v]);
                // Read at column 1 (num_accepted 2), the token's snapshot at column 0.
                let idx = [write, read];
                let acc = [2i32];
                fused_recurrent_gated_delta_rule(
                    &q.view(),
                    &k.view(),
                    &v.view(),
                    &g.view(),
                    Some(&beta.view()),
                    None,
                    &mut step.state.view_mut(),
                    None,
                    Some(&TensorView::new(&idx, &[1, 2]).unwrap()),
                    Some(&TensorView::new(&acc, &[1]).unwrap()),
                    true,
                    &mut o.view_mut(),
                )
                .unwrap();
                for hh in 0..hv {
                    for i in 0..c.v {
                        assert_eq!(
                            o.get(&[0, 0, hh, i]).to_bits(),
                            whole.o.get(&[0, t, hh, i]).to_bits(),
                            "{isa} token {t}"
                        );
                    }
                }
            }
            assert_eq!(step.state.raw(), whole.state.raw(), "{isa}: snapshots");
        });
    }
}

#[test]
fn recurrent_is_thread_invariant() {
    let c = GdnCase {
        lens: vec![1, 3, 1, 2, 1, 1, 4, 1, 1, 2],
        pad: vec![
            false, false, true, false, false, false, false, false, true, false,
        ],
        idx: Idx::Rank2,
        in_dtype: DType::BF16,
        k: 64,
        v: 64,
        snapshot_holes: true,
        ..base_case()
    };
    let base = make_gdn(&c);
    let run = |threads: usize| {
        let mut d = clone_gdn(&base);
        with_threads(threads, || run_recurrent(&c, &mut d, false)).unwrap();
        d
    };
    let one = run(1);
    for threads in [2, 3] {
        let other = run(threads);
        assert_eq!(one.o.raw(), other.o.raw(), "{threads} threads: o");
        assert_eq!(
            one.state.raw(),
            other.state.raw(),
            "{threads} threads: state"
        );
    }
}

fn expect_recurrent_error(
    mutate: impl Fn(&mut GdnCase, &mut GdnData),
    status: Status,
    needle: &str,
) {
    let mut c = base_case();
    let mut d = make_gdn(&c);
    mutate(&mut c, &mut d);
    let before = clone_gdn(&d);
    assert_err(run_recurrent(&c, &mut d, false), status, needle);
    assert_eq!(d.o.raw(), before.o.raw(), "o touched on error ({needle})");
    assert_eq!(
        d.state.raw(),
        before.state.raw(),
        "state touched on error ({needle})"
    );
}

#[test]
fn recurrent_rejects_bad_input() {
    expect_recurrent_error(
        |c, d| {
            d.v = Buf::contiguous(DType::F32, &[1, 11, 3, c.v]);
            d.g = Buf::contiguous(DType::F32, &[1, 11, 3]);
            d.beta = Buf::contiguous(DType::F32, &[1, 11, 3]);
            d.o = Buf::contiguous(DType::F32, &[1, 11, 3, c.v]);
        },
        Status::ShapeMismatch,
        "multiple of H",
    );
    expect_recurrent_error(
        |_, d| d.state = Buf::contiguous(DType::BF16, &d.state.shape.clone()),
        Status::DtypeMismatch,
        "fp32",
    );
    expect_recurrent_error(
        |_, d| d.idx2[d.cols] = 10_000,
        Status::IndexOutOfRange,
        "ssm_state_indices[1, 0] = 10000",
    );
    expect_recurrent_error(
        |_, d| d.acc[2] = 6,
        Status::IndexOutOfRange,
        "num_accepted_tokens[2] = 6",
    );
    expect_recurrent_error(
        |_, d| d.acc[0] = 0,
        Status::IndexOutOfRange,
        "num_accepted_tokens[0] = 0",
    );
    expect_recurrent_error(
        |_, d| d.idx2[d.cols + 1] = d.idx2[0],
        Status::Aliasing,
        "state slot",
    );
    expect_recurrent_error(
        |_, d| d.cu = vec![0, 3, 2, 9],
        Status::InvalidValue,
        "not monotone",
    );
    expect_recurrent_error(
        |_, d| d.cu = vec![0, 3, 5, 99],
        Status::IndexOutOfRange,
        "cu_seqlens[3] = 99",
    );
    expect_recurrent_error(|c, _| c.idx = Idx::Rank1, Status::InvalidArgument, "rank-2");
    expect_recurrent_error(
        |c, d| d.o = Buf::contiguous(DType::BF16, &[1, 11, c.hv(), c.v]),
        Status::DtypeMismatch,
        "v's dtype",
    );
    expect_recurrent_error(
        |c, d| d.state = Buf::contiguous(DType::F32, &[40, c.hv(), c.k, c.v]),
        Status::ShapeMismatch,
        "initial_state",
    );
    expect_recurrent_error(
        |c, d| {
            c.varlen = true;
            d.q = Buf::contiguous(DType::F32, &[2, 11, c.h, c.k]);
            d.k = Buf::contiguous(DType::F32, &[2, 11, c.h, c.k]);
            d.v = Buf::contiguous(DType::F32, &[2, 11, c.hv(), c.v]);
            d.g = Buf::contiguous(DType::F32, &[2, 11, c.hv()]);
            d.beta = Buf::contiguous(DType::F32, &[2, 11, c.hv()]);
            d.o = Buf::contiguous(DType::F32, &[2, 11, c.hv(), c.v]);
        },
        Status::ShapeMismatch,
        "must be 1",
    );
}

// ---- chunk_gated_delta_rule ------------------------------------------------------

use xpu_ops::chunk_gated_delta_rule;

#[derive(Debug, Clone, Copy)]
struct ChunkOpts {
    pool: bool,
    output_final_state: bool,
    with_has_init: bool,
}

fn run_chunk(c: &GdnCase, co: ChunkOpts, d: &mut GdnData, use_ref: bool) -> xpu_ops::Result<()> {
    let n = c.lens.len();
    let cu = TensorView::new(&d.cu, &[d.cu.len()]).unwrap();
    let idx1 = TensorView::new(&d.idx1, &[n]).unwrap();
    let hi = TensorView::from_bytes(&d.has_init, DType::Bool, &[d.has_init.len()], None).unwrap();
    let idx = match c.idx {
        Idx::Identity => None,
        _ => Some(&idx1),
    };
    let cu = c.varlen.then_some(&cu);
    let hi = co.with_has_init.then_some(&hi);
    let (q, k, v, g, beta) = (
        d.q.view(),
        d.k.view(),
        d.v.view(),
        d.g.view(),
        d.beta.view(),
    );
    let beta = c.with_beta.then_some(&beta);
    let mut st = d.state.view_mut();
    let st = co.pool.then_some(&mut st);
    let mut o = d.o.view_mut();
    if use_ref {
        reference::chunk_gated_delta_rule(
            &q,
            &k,
            &v,
            &g,
            beta,
            c.scale,
            st,
            co.output_final_state,
            cu,
            idx,
            hi,
            c.l2norm,
            &mut o,
        );
        Ok(())
    } else {
        chunk_gated_delta_rule(
            &q,
            &k,
            &v,
            &g,
            beta,
            c.scale,
            st,
            co.output_final_state,
            cu,
            idx,
            hi,
            c.l2norm,
            &mut o,
        )
    }
}

fn chunk_opts() -> impl Strategy<Value = ChunkOpts> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(pool, out, hi)| ChunkOpts {
        pool: pool || out || hi,
        output_final_state: out,
        with_has_init: hi,
    })
}

fn chunk_gdn_case() -> impl Strategy<Value = GdnCase> {
    (
        gdn_case(1),
        prop::collection::vec(
            prop::sample::select(vec![0usize, 1, 5, 63, 64, 65, 130]),
            1..4,
        ),
    )
        .prop_map(|(mut c, lens)| {
            c.lens = if c.varlen {
                lens
            } else {
                vec![lens[0]; lens.len()]
            };
            c.idx = if c.idx == Idx::Rank2 {
                Idx::Rank1
            } else {
                c.idx
            };
            c.spec = false;
            c.pad = (0..c.lens.len())
                .map(|i| c.idx == Idx::Rank1 && c.seed >> i & 7 == 0)
                .collect();
            c
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Against the fp64 recurrence, the same bounds as the recurrent kernel
    /// (3e-5 absolute + 1e-4 relative, plus one output rounding), and fla's
    /// metric rmse/rms <= 1e-5 for fp32 inputs (measured ~1e-7).
    #[test]
    fn chunk_matches_reference(c in chunk_gdn_case(), co in chunk_opts()) {
        // Indices need the pool.
        let co = ChunkOpts { pool: co.pool || c.idx != Idx::Identity, ..co };
        let base = make_gdn(&c);
        let mut want = clone_gdn(&base);
        run_chunk(&c, co, &mut want, true).unwrap();
        for_each_isa(|isa| {
            let mut got = clone_gdn(&base);
            run_chunk(&c, co, &mut got, false).unwrap();
            let what = format!("{isa} {c:?} {co:?}");
            check_gdn(&got, &want, c.in_dtype, &what);
            if c.in_dtype == DType::F32 {
                let r = la_common::rel_rmse(&got.o.values(), &want.o.values());
                assert!(r <= 1e-5, "{what}: rmse/rms {r}");
            }
        });
    }
}

/// T in {1, 63, 64, 65, 200} in one varlen batch with a padded sequence and
/// mixed has_initial_state, on every tier: against the fp64 recurrence, and
/// against the recurrent kernel with fla's metric rmse/rms: <= 2e-3 for bf16
/// inputs and outputs, <= 1e-5 for fp32 (measured: ~1e-5 and ~1e-7); final
/// states <= 1e-5 (measured ~1.3e-7; on the amx tier, whose bf16 path splits
/// the fp32 operands of its tile products into bf16 hi + lo: o 5.7e-5,
/// states 1.3e-6). `--nocapture` prints the measured values.
#[test]
fn chunk_boundaries_against_reference_and_recurrent() {
    for (in_dtype, bound) in [(DType::BF16, 2e-3), (DType::F32, 1e-5)] {
        for k_contiguous_state in [true, false] {
            let c = GdnCase {
                h: 2,
                groups: 2,
                k: 64,
                v: 64,
                lens: vec![1, 63, 64, 65, 200, 7],
                pad: vec![false, false, false, false, false, true],
                varlen: true,
                in_dtype,
                g_dtype: DType::F32,
                idx: Idx::Rank1,
                spec: false,
                k_contiguous_state,
                weak_decay: true,
                ..base_case()
            };
            let co = ChunkOpts {
                pool: true,
                output_final_state: true,
                with_has_init: true,
            };
            let mut base = make_gdn(&c);
            base.has_init = vec![1, 0, 1, 0, 1, 1];
            let mut want = clone_gdn(&base);
            run_chunk(&c, co, &mut want, true).unwrap();
            // The recurrent kernel has no has_initial_state: zero those slots first.
            let mut rec_base = clone_gdn(&base);
            for (s, &init) in base.has_init.iter().enumerate() {
                if init == 0 && !c.pad[s] {
                    let slot = base.idx1[s] as usize;
                    let old = rec_base.state.clone();
                    rec_base.state = rec_base.state.clone().fill_with(|i| {
                        if i[0] == slot {
                            0.0
                        } else {
                            old.get(i)
                        }
                    });
                }
            }
            for_each_isa(|isa| {
                let mut got = clone_gdn(&base);
                run_chunk(&c, co, &mut got, false).unwrap();
                let what = format!("{isa} {in_dtype} k_contiguous {k_contiguous_state}");
                check_gdn(&got, &want, in_dtype, &what);
                let mut rec = clone_gdn(&rec_base);
                run_recurrent(&c, &mut rec, false).unwrap();
                let r = la_common::rel_rmse(&got.o.values(), &rec.o.values());
                assert!(
                    r <= bound,
                    "{what}: chunk vs recurrent rmse/rms {r} > {bound}"
                );
                let rs = la_common::rel_rmse(&got.state.values(), &rec.state.values());
                eprintln!("{what}: chunk vs recurrent rmse/rms o {r:.3e}, final states {rs:.3e}");
                assert!(rs <= 1e-5, "{what}: final states rmse/rms {rs}");
                // Padded sequence: zero outputs.
                let (b0, b1) = (base.cu[5] as usize, base.cu[6] as usize);
                for t in b0..b1 {
                    for hh in 0..c.hv() {
                        for i in 0..c.v {
                            assert_eq!(got.o.get(&[0, t, hh, i]), 0.0, "{what}: padded output");
                        }
                    }
                }
            });
        }
    }
}

#[test]
fn chunk_is_thread_invariant() {
    let c = GdnCase {
        lens: vec![130, 1, 64, 0, 65],
        pad: vec![false, false, true, false, false],
        idx: Idx::Rank1,
        spec: false,
        in_dtype: DType::BF16,
        k: 32,
        v: 48,
        ..base_case()
    };
    let co = ChunkOpts {
        pool: true,
        output_final_state: true,
        with_has_init: true,
    };
    let base = make_gdn(&c);
    let run = |threads: usize| {
        let mut d = clone_gdn(&base);
        with_threads(threads, || run_chunk(&c, co, &mut d, false)).unwrap();
        d
    };
    let one = run(1);
    for threads in [2, 3] {
        let other = run(threads);
        assert_eq!(one.o.raw(), other.o.raw(), "{threads} threads: o");
        assert_eq!(
            one.state.raw(),
            other.state.raw(),
            "{threads} threads: state"
        );
    }
}

/// More value heads than the kernel runs together (8) and key heads shared by
/// 4 value heads, so head batches and key-head groups split differently with
/// each thread count: against the fp64 recurrence (as `chunk_matches_reference`)
/// on every tier, and bit-identical for 1, 2, 3 and 5 threads; fp32 and bf16
/// inputs (bf16 q/k take the AMX tile path on the amx tier).
#[test]
fn chunk_many_heads_matches_reference_and_is_thread_invariant() {
    for in_dtype in [DType::F32, DType::BF16] {
        chunk_many_heads(in_dtype);
    }
}

fn chunk_many_heads(in_dtype: DType) {
    let c = GdnCase {
        h: 3,
        groups: 4,
        k: 24,
        v: 40,
        lens: vec![70, 3, 129],
        pad: vec![false, false, false],
        idx: Idx::Rank1,
        spec: false,
        in_dtype,
        ..base_case()
    };
    let co = ChunkOpts {
        pool: true,
        output_final_state: true,
        with_has_init: true,
    };
    let base = make_gdn(&c);
    let mut want = clone_gdn(&base);
    run_chunk(&c, co, &mut want, true).unwrap();
    for_each_isa(|isa| {
        let run = |threads: usize| {
            let mut d = clone_gdn(&base);
            with_threads(threads, || run_chunk(&c, co, &mut d, false)).unwrap();
            d
        };
        let one = run(1);
        check_gdn(
            &one,
            &want,
            c.in_dtype,
            &format!("{isa} {in_dtype} many heads"),
        );
        for threads in [2, 3, 5] {
            let other = run(threads);
            assert_eq!(one.o.raw(), other.o.raw(), "{isa} {threads} threads: o");
            assert_eq!(
                one.state.raw(),
                other.state.raw(),
                "{isa} {threads} threads: state"
            );
        }
    });
}

/// A state pool with no unit stride (every other float of a [V, K] block)
/// gives the same outputs and final states, bit for bit, as the same values
/// in a contiguous pool (only the state's gather and scatter differ).
#[test]
fn chunk_state_without_unit_stride_equals_contiguous() {
    use xpu_ops::TensorViewMut as TVM;
    let (t, h, hv, k, v) = (70, 1, 2, 5, 17);
    let mut rng = Rng(11);
    let mut vals = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| s * rng.uniform()).collect() };
    let q = vals(t * h * k, 1.0);
    let kk = vals(t * h * k, 1.0);
    let vv = vals(t * hv * v, 1.0);
    let g: Vec<f32> = vals(t * hv, 1.0)
        .iter()
        .map(|x| -0.05 - 0.05 * x.abs())
        .collect();
    let state = vals(hv * v * k, 0.5);
    let call = |st: &mut TVM, o: &mut [f32]| {
        xpu_ops::chunk_gated_delta_rule(
            &TensorView::new(&q, &[1, t, h, k]).unwrap(),
            &TensorView::new(&kk, &[1, t, h, k]).unwrap(),
            &TensorView::new(&vv, &[1, t, hv, v]).unwrap(),
            &TensorView::new(&g, &[1, t, hv]).unwrap(),
            None,
            None,
            Some(st),
            true,
            None,
            None,
            None,
            true,
            &mut TVM::new(o, &[1, t, hv, v]).unwrap(),
        )
        .unwrap();
    };
    // (o, final state) with the pool contiguous or every other float.
    let run = |strided: bool| -> (Vec<f32>, Vec<f32>) {
        let mut o = vec![0f32; t * hv * v];
        if strided {
            let mut pool = vec![0f32; 2 * hv * v * k];
            for (i, &x) in state.iter().enumerate() {
                pool[2 * i] = x;
            }
            let strides = [2 * hv * v * k, 2 * v * k, 2 * k, 2];
            call(
                &mut TVM::strided(&mut pool, &[1, hv, v, k], &strides).unwrap(),
                &mut o,
            );
            (o, pool.iter().step_by(2).copied().collect())
        } else {
            let mut pool = state.clone();
            call(&mut TVM::new(&mut pool, &[1, hv, v, k]).unwrap(), &mut o);
            (o, pool)
        }
    };
    for_each_isa(|isa| {
        let (o1, s1) = run(false);
        let (o2, s2) = run(true);
        assert_eq!(o1, o2, "{isa}: o");
        assert_eq!(s1, s2, "{isa}: final state");
        assert!(s1 != state, "{isa}: the state was updated");
    });
}

#[test]
fn chunk_rejects_bad_input() {
    let c = GdnCase {
        idx: Idx::Rank1,
        spec: false,
        ..base_case()
    };
    let co = ChunkOpts {
        pool: true,
        output_final_state: true,
        with_has_init: true,
    };
    let check = |c: &GdnCase,
                 co: ChunkOpts,
                 mutate: &dyn Fn(&mut GdnData),
                 status: Status,
                 needle: &str| {
        let mut d = make_gdn(c);
        mutate(&mut d);
        let before = clone_gdn(&d);
        assert_err(run_chunk(c, co, &mut d, false), status, needle);
        assert_eq!(d.o.raw(), before.o.raw(), "o touched ({needle})");
        assert_eq!(
            d.state.raw(),
            before.state.raw(),
            "state touched ({needle})"
        );
    };
    let no_pool = ChunkOpts {
        pool: false,
        output_final_state: true,
        with_has_init: false,
    };
    check(
        &c,
        no_pool,
        &|_| {},
        Status::InvalidArgument,
        "initial_state",
    );
    check(
        &c,
        co,
        &|d| d.idx1[1] = 99,
        Status::IndexOutOfRange,
        "ssm_state_indices[1] = 99",
    );
    check(
        &c,
        co,
        &|d| d.idx1[1] = d.idx1[0],
        Status::Aliasing,
        "state slot",
    );
    check(
        &c,
        co,
        &|d| d.has_init = vec![1, 0],
        Status::ShapeMismatch,
        "has_initial_state",
    );
    check(
        &c,
        co,
        &|d| d.state = Buf::contiguous(DType::BF16, &d.state.shape.clone()),
        Status::DtypeMismatch,
        "fp32",
    );
    check(
        &c,
        co,
        &|d| d.cu = vec![0, 3, 1, 9],
        Status::InvalidValue,
        "not monotone",
    );
    let c2 = GdnCase {
        idx: Idx::Rank2,
        ..c.clone()
    };
    let mut d = make_gdn(&c2);
    let before = clone_gdn(&d);
    let n = c2.lens.len();
    let r = {
        let idx2 = TensorView::new(&d.idx2, &[n, d.cols]).unwrap();
        let (q, k, v, g) = (d.q.view(), d.k.view(), d.v.view(), d.g.view());
        let cu = TensorView::new(&d.cu, &[n + 1]).unwrap();
        let mut st = d.state.view_mut();
        chunk_gated_delta_rule(
            &q,
            &k,
            &v,
            &g,
            None,
            None,
            Some(&mut st),
            true,
            Some(&cu),
            Some(&idx2),
            None,
            true,
            &mut d.o.view_mut(),
        )
    };
    assert_err(r, Status::ShapeMismatch, "ssm_state_indices");
    assert_eq!(d.o.raw(), before.o.raw());
}

/// Views of one buffer that overlap: in place (same layout) works for the
/// row ops; a shifted overlap, or o over the state pool, is refused.
#[test]
fn overlapping_outputs_are_refused() {
    use xpu_ops::{Layout, TensorViewMut};
    let (rows, n) = (4usize, 32usize);
    let mut buf: Vec<f32> = (0..(rows + 1) * n)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let mut want = vec![0f32; rows * n];
    l2norm(
        &TensorView::new(&buf[..rows * n], &[rows, n]).unwrap(),
        1e-6,
        &mut TensorViewMut::new(&mut want, &[rows, n]).unwrap(),
    )
    .unwrap();
    let layout = Layout::contiguous(DType::F32, &[rows, n]);
    let before = buf.clone();
    // SAFETY (test): both views cover `buf`; the op either refuses them or
    // reads each piece before writing it.
    let (x, mut shifted) = unsafe {
        (
            TensorView::from_raw(buf.as_ptr() as *const u8, layout.clone()),
            TensorViewMut::from_raw(buf.as_mut_ptr().add(n) as *mut u8, layout.clone()),
        )
    };
    assert_err(
        l2norm(&x, 1e-6, &mut shifted),
        Status::Aliasing,
        "overlaps `x`",
    );
    assert_eq!(buf, before);
    let (x, mut same) = unsafe {
        (
            TensorView::from_raw(buf.as_ptr() as *const u8, layout.clone()),
            TensorViewMut::from_raw(buf.as_mut_ptr() as *mut u8, layout),
        )
    };
    l2norm(&x, 1e-6, &mut same).unwrap();
    assert_eq!(&buf[..rows * n], &want[..], "in place equals out of place");

    let c = GdnCase {
        idx: Idx::Identity,
        spec: false,
        varlen: false,
        lens: vec![2, 2, 2],
        ..base_case()
    };
    let mut d = make_gdn(&c);
    let before = d.state.raw().to_vec();
    let o_layout = d.o.view().layout().clone();
    let (q, k, v, g) = (d.q.view(), d.k.view(), d.v.view(), d.g.view());
    let mut st = d.state.view_mut();
    // SAFETY (test): o placed over the state pool; the op must refuse it.
    let mut o = unsafe {
        TensorViewMut::from_raw(
            st.as_mut_ptr(),
            Layout {
                dtype: DType::F32,
                ..o_layout
            },
        )
    };
    assert_err(
        fused_recurrent_gated_delta_rule(
            &q, &k, &v, &g, None, None, &mut st, None, None, None, true, &mut o,
        ),
        Status::Aliasing,
        "initial_state",
    );
    drop(o);
    assert_eq!(d.state.raw(), &before[..]);
}
