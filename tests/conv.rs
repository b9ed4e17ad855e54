//! causal_conv1d_fn / causal_conv1d_update against the fp64 reference on every
//! ISA tier, plus self-consistency (prefill + decode == longer prefill; spec
//! decode acceptance == plain decode), thread invariance and bad input.
//!
//! Tolerance (outputs): |kernel - ref| <= 1e-4 + rtol(out dtype) * |ref| with
//! rtol = 2e-6 (f32), 2^-10 (f16), 2^-7 (bf16): fp32 accumulation of at most
//! six products of values in [-1, 1] plus one rounding to the output dtype,
//! where kernel and reference may land on adjacent representable values.
//! The cache is compared bit for bit (it holds copies of inputs).

mod common;
mod la_common;

use common::{for_each_isa, with_threads, Rng};
use la_common::{assert_close, assert_err, rtol, Buf};
use proptest::prelude::*;
use xpu_ops::reference::conv as reference;
use xpu_ops::{causal_conv1d_fn, causal_conv1d_update, DType, Status, TensorView};

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn i32_view(v: &[i32]) -> TensorView<'_> {
    TensorView::new(v, &[v.len()]).unwrap()
}

/// A flag vector as bool bytes or int32.
struct Flags {
    bytes: Vec<u8>,
    ints: Vec<i32>,
    as_bool: bool,
}

impl Flags {
    fn new(v: &[bool], as_bool: bool) -> Flags {
        Flags {
            bytes: v.iter().map(|&b| b as u8).collect(),
            ints: v.iter().map(|&b| b as i32).collect(),
            as_bool,
        }
    }
    fn view(&self) -> TensorView<'_> {
        if self.as_bool {
            TensorView::from_bytes(&self.bytes, DType::Bool, &[self.bytes.len()], None).unwrap()
        } else {
            i32_view(&self.ints)
        }
    }
}

#[derive(Debug, Clone)]
struct FnCase {
    dim: usize,
    width: usize,
    lens: Vec<usize>,
    pad: Vec<bool>,
    init: Vec<bool>,
    extra_state: usize,
    dtypes: [DType; 4], // x, states, weight, out
    separate_out: bool,
    bias: bool,
    silu: bool,
    x_channel_contiguous: bool,
    state_dim_contiguous: bool,
    pad_slot_id: i32,
    flags_as_bool: bool,
}

struct FnData {
    x: Buf,
    w: Buf,
    b: Option<Buf>,
    states: Buf,
    out: Option<Buf>,
    qsl: Vec<i32>,
    idx: Vec<i32>,
    flags: Flags,
}

fn make_fn(c: &FnCase, rng: &mut Rng) -> FnData {
    let total: usize = c.lens.iter().sum::<usize>() + 2; // two trailing tokens outside every sequence
    let x_order: &[usize] = if c.x_channel_contiguous {
        &[1, 0]
    } else {
        &[0, 1]
    };
    let x = Buf::with_order(c.dtypes[0], &[c.dim, total], x_order, 1).random(rng, 1.0);
    let w = Buf::contiguous(c.dtypes[2], &[c.dim, c.width]).random(rng, 1.0);
    let b = c
        .bias
        .then(|| Buf::contiguous(c.dtypes[2], &[c.dim]).random(rng, 1.0));
    let batch = c.lens.len();
    let lines = batch + 3;
    let state_len = c.width - 1 + c.extra_state;
    let s_order: &[usize] = if c.state_dim_contiguous {
        &[0, 2, 1]
    } else {
        &[0, 1, 2]
    };
    let states =
        Buf::with_order(c.dtypes[1], &[lines, c.dim, state_len], s_order, 0).random(rng, 1.0);
    let out = c
        .separate_out
        .then(|| Buf::with_order(c.dtypes[3], &[c.dim, total], &[1, 0], 0).random(rng, 1.0));
    let mut qsl = vec![0i32];
    for &l in &c.lens {
        qsl.push(qsl.last().unwrap() + l as i32);
    }
    // Distinct lines, shuffled, avoiding the pad id.
    let mut free: Vec<i32> = (0..lines as i32).filter(|&l| l != c.pad_slot_id).collect();
    let mut idx = Vec::new();
    for n in 0..batch {
        if c.pad[n] {
            idx.push(c.pad_slot_id);
        } else {
            let k = rng.below(free.len() as u64) as usize;
            idx.push(free.swap_remove(k));
        }
    }
    FnData {
        x,
        w,
        b,
        states,
        out,
        qsl,
        idx,
        flags: Flags::new(&c.init, c.flags_as_bool),
    }
}

fn run_fn(c: &FnCase, d: &mut FnData, use_ref: bool) -> xpu_ops::Result<()> {
    let act = if c.silu { Some("silu") } else { None };
    let (w, b, qsl, idx, flags) = (
        d.w.view(),
        d.b.as_ref().map(|b| b.view()),
        i32_view(&d.qsl),
        i32_view(&d.idx),
        d.flags.view(),
    );
    let mut x = d.x.view_mut();
    let mut st = d.states.view_mut();
    let mut out = d.out.as_mut().map(|o| o.view_mut());
    if use_ref {
        reference::causal_conv1d_fn(
            &mut x,
            &w,
            b.as_ref(),
            &mut st,
            &qsl,
            Some(&idx),
            Some(&flags),
            act,
            c.pad_slot_id as i64,
            out.as_mut(),
        );
        Ok(())
    } else {
        causal_conv1d_fn(
            &mut x,
            &w,
            b.as_ref(),
            &mut st,
            &qsl,
            Some(&idx),
            Some(&flags),
            act,
            c.pad_slot_id as i64,
            out.as_mut(),
        )
    }
}

fn check_outputs(got: &FnData, want: &FnData, out_dtype: DType, what: &str) {
    let (g, w) = match (&got.out, &want.out) {
        (Some(g), Some(w)) => (g, w),
        _ => (&got.x, &want.x),
    };
    assert_close(
        &g.values(),
        &w.values(),
        1e-4,
        rtol(out_dtype),
        &format!("{what}: output"),
    );
    assert_eq!(got.states.raw(), want.states.raw(), "{what}: conv_states");
    if got.out.is_some() {
        assert_eq!(got.x.raw(), want.x.raw(), "{what}: x must be untouched");
    }
}

fn fn_case() -> impl Strategy<Value = FnCase> {
    let lens = prop::collection::vec(
        prop::sample::select(vec![0usize, 1, 2, 3, 5, 17, 63, 64, 65]),
        1..5,
    );
    (
        lens,
        prop::sample::select(vec![1usize, 5, 16, 17, 40, 300]),
        2usize..=6,
        any::<u64>(),
        prop::array::uniform4(prop::sample::select(FLOATS.to_vec())),
        0usize..3,
    )
        .prop_map(|(lens, dim, width, bits, dtypes, extra_state)| {
            let n = lens.len();
            let bit = |k: u32| bits >> k & 1 == 1;
            FnCase {
                dim,
                width,
                pad: (0..n).map(|i| bits >> (8 + i) & 3 == 0).collect(),
                init: (0..n).map(|i| bit(20 + i as u32)).collect(),
                lens,
                extra_state,
                dtypes,
                separate_out: bit(0),
                bias: bit(1),
                silu: bit(2),
                x_channel_contiguous: !bit(3) || bit(4),
                state_dim_contiguous: bit(5),
                pad_slot_id: if bit(6) { 0 } else { -1 },
                flags_as_bool: bit(7),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn conv_fn_matches_reference(c in fn_case(), seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let base = make_fn(&c, &mut rng);
        let mut want = clone_data(&base);
        run_fn(&c, &mut want, true).unwrap();
        for_each_isa(|isa| {
            let mut got = clone_data(&base);
            run_fn(&c, &mut got, false).unwrap();
            check_outputs(&got, &want, if c.separate_out { c.dtypes[3] } else { c.dtypes[0] }, &format!("{isa} {c:?}"));
        });
    }
}

fn clone_data(d: &FnData) -> FnData {
    FnData {
        x: d.x.clone(),
        w: d.w.clone(),
        b: d.b.clone(),
        states: d.states.clone(),
        out: d.out.clone(),
        qsl: d.qsl.clone(),
        idx: d.idx.clone(),
        flags: Flags::new(
            &d.flags.ints.iter().map(|&v| v != 0).collect::<Vec<_>>(),
            d.flags.as_bool,
        ),
    }
}

// ---- causal_conv1d_update --------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum XShape {
    Single,  // (B, dim)
    Batched, // (B, dim, seqlen)
    Varlen,  // (tokens, dim) + query_start_loc
}

#[derive(Debug, Clone)]
struct UpdCase {
    dim: usize,
    width: usize,
    shape: XShape,
    lens: Vec<usize>, // per sequence (all equal unless varlen)
    pad: Vec<bool>,
    spec: bool,
    accepted: Vec<usize>,
    extra_state: usize,
    dtypes: [DType; 4], // x, state, weight, out
    separate_out: bool,
    bias: bool,
    silu: bool,
    state_dim_contiguous: bool,
    with_indices: bool,
}

struct UpdData {
    x: Buf,
    w: Buf,
    b: Option<Buf>,
    state: Buf,
    out: Option<Buf>,
    qsl: Vec<i32>,
    idx: Vec<i32>,
    acc: Vec<i32>,
}

fn make_upd(c: &UpdCase, rng: &mut Rng) -> UpdData {
    let batch = c.lens.len();
    let x = match c.shape {
        XShape::Single => Buf::with_order(c.dtypes[0], &[batch, c.dim], &[0, 1], 3),
        XShape::Batched => Buf::with_order(c.dtypes[0], &[batch, c.dim, c.lens[0]], &[0, 2, 1], 0),
        XShape::Varlen => Buf::with_order(c.dtypes[0], &[c.lens.iter().sum(), c.dim], &[0, 1], 0),
    }
    .random(rng, 1.0);
    let out = c.separate_out.then(|| {
        let o: Vec<usize> = (0..x.shape.len()).collect();
        Buf::with_order(c.dtypes[3], &x.shape, &o, 0).random(rng, 1.0)
    });
    let max_len = c.lens.iter().copied().max().unwrap_or(1);
    let state_len =
        c.width - 1 + c.extra_state + if c.spec { max_len.saturating_sub(1) } else { 0 };
    let lines = if c.with_indices { batch + 2 } else { batch };
    let order: &[usize] = if c.state_dim_contiguous {
        &[0, 2, 1]
    } else {
        &[0, 1, 2]
    };
    let state = Buf::with_order(c.dtypes[1], &[lines, c.dim, state_len], order, 0).random(rng, 1.0);
    let mut qsl = vec![0i32];
    for &l in &c.lens {
        qsl.push(qsl.last().unwrap() + l as i32);
    }
    let mut free: Vec<i32> = (0..lines as i32).collect();
    let idx = (0..batch)
        .map(|n| {
            if c.pad[n] {
                -1
            } else {
                let k = if c.with_indices {
                    rng.below(free.len() as u64) as usize
                } else {
                    0
                };
                free.remove(k)
            }
        })
        .collect();
    UpdData {
        x,
        w: Buf::contiguous(c.dtypes[2], &[c.dim, c.width]).random(rng, 1.0),
        b: c.bias
            .then(|| Buf::contiguous(c.dtypes[2], &[c.dim]).random(rng, 1.0)),
        state,
        out,
        qsl,
        idx,
        acc: c.accepted.iter().map(|&a| a as i32).collect(),
    }
}

fn run_upd(c: &UpdCase, d: &mut UpdData, use_ref: bool) -> xpu_ops::Result<()> {
    let act = if c.silu { Some("swish") } else { None };
    let w = d.w.view();
    let b = d.b.as_ref().map(|b| b.view());
    let qsl = (c.shape == XShape::Varlen).then(|| i32_view(&d.qsl));
    let idx = c.with_indices.then(|| i32_view(&d.idx));
    let acc = c.spec.then(|| i32_view(&d.acc));
    let mut x = d.x.view_mut();
    let mut st = d.state.view_mut();
    let mut out = d.out.as_mut().map(|o| o.view_mut());
    if use_ref {
        reference::causal_conv1d_update(
            &mut x,
            &mut st,
            &w,
            b.as_ref(),
            act,
            idx.as_ref(),
            acc.as_ref(),
            qsl.as_ref(),
            -1,
            out.as_mut(),
        );
        Ok(())
    } else {
        causal_conv1d_update(
            &mut x,
            &mut st,
            &w,
            b.as_ref(),
            act,
            idx.as_ref(),
            acc.as_ref(),
            qsl.as_ref(),
            -1,
            -1,
            out.as_mut(),
        )
    }
}

fn clone_upd(d: &UpdData) -> UpdData {
    UpdData {
        x: d.x.clone(),
        w: d.w.clone(),
        b: d.b.clone(),
        state: d.state.clone(),
        out: d.out.clone(),
        qsl: d.qsl.clone(),
        idx: d.idx.clone(),
        acc: d.acc.clone(),
    }
}

fn upd_case() -> impl Strategy<Value = UpdCase> {
    (
        prop::sample::select(vec![XShape::Single, XShape::Batched, XShape::Varlen]),
        1usize..6,
        prop::sample::select(vec![1usize, 7, 16, 33, 260]),
        2usize..=6,
        any::<u64>(),
        prop::array::uniform4(prop::sample::select(FLOATS.to_vec())),
        prop::collection::vec(1usize..5, 6),
    )
        .prop_map(|(shape, batch, dim, width, bits, dtypes, raw_lens)| {
            let bit = |k: u32| bits >> k & 1 == 1;
            let spec = bit(0);
            let lens: Vec<usize> = match shape {
                XShape::Single => vec![1; batch],
                XShape::Batched => vec![raw_lens[0]; batch],
                XShape::Varlen => (0..batch)
                    .map(|i| if bit(10 + i as u32) { 0 } else { raw_lens[i] })
                    .collect(),
            };
            let with_indices = shape == XShape::Varlen || bit(1);
            let max_len = lens.iter().copied().max().unwrap_or(1).max(1);
            let extra_state = (bits >> 20 & 1) as usize;
            let accepted = lens
                .iter()
                .enumerate()
                // any window start inside the state: 1 ..= state_len - width + 2
                .map(|(i, _)| 1 + (bits >> (24 + 3 * i)) as usize % (max_len + extra_state))
                .collect();
            UpdCase {
                dim,
                width,
                shape,
                pad: (0..batch)
                    .map(|i| with_indices && bits >> (40 + i) & 3 == 0)
                    .collect(),
                lens,
                spec,
                accepted,
                extra_state,
                dtypes,
                separate_out: bit(2),
                bias: bit(3),
                silu: bit(4),
                state_dim_contiguous: bit(5),
                with_indices,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn conv_update_matches_reference(c in upd_case(), seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let base = make_upd(&c, &mut rng);
        let mut want = clone_upd(&base);
        run_upd(&c, &mut want, true).unwrap();
        for_each_isa(|isa| {
            let mut got = clone_upd(&base);
            run_upd(&c, &mut got, false).unwrap();
            let (g, w) = match (&got.out, &want.out) {
                (Some(g), Some(w)) => (g, w),
                _ => (&got.x, &want.x),
            };
            let od = if c.separate_out { c.dtypes[3] } else { c.dtypes[0] };
            assert_close(&g.values(), &w.values(), 1e-4, rtol(od), &format!("{isa} {c:?}: output"));
            assert_eq!(got.state.raw(), want.state.raw(), "{isa} {c:?}: conv_state");
        });
    }
}

/// Prefill of T1 tokens then decode of the remaining ones, token by token and
/// as one multi-token update, must equal one prefill over all tokens — for
/// every width, fp32, so the comparison is tight.
#[test]
fn prefill_then_decode_equals_longer_prefill() {
    let mut rng = Rng(7);
    for width in 2..=6 {
        for_each_isa(|isa| {
            let (dim, t1, t2) = (19, 5usize, 4usize);
            let total = t1 + t2;
            let x = Buf::with_order(DType::F32, &[dim, total], &[1, 0], 0).random(&mut rng, 1.0);
            let w = Buf::contiguous(DType::F32, &[dim, width]).random(&mut rng, 1.0);
            let state0 = Buf::with_order(DType::F32, &[1, dim, width - 1], &[0, 2, 1], 0)
                .random(&mut rng, 1.0);
            // One prefill over everything.
            let (mut xa, mut sa) = (x.clone(), state0.clone());
            causal_conv1d_fn(
                &mut xa.view_mut(),
                &w.view(),
                None,
                &mut sa.view_mut(),
                &i32_view(&[0, total as i32]),
                None,
                Some(&i32_view(&[1])),
                Some("silu"),
                -1,
                None,
            )
            .unwrap();
            // Prefill of t1, then t2 single-token updates.
            let (mut xb, mut sb) = (x.clone(), state0.clone());
            causal_conv1d_fn(
                &mut xb.view_mut(),
                &w.view(),
                None,
                &mut sb.view_mut(),
                &i32_view(&[0, t1 as i32]),
                None,
                Some(&i32_view(&[1])),
                Some("silu"),
                -1,
                None,
            )
            .unwrap();
            for t in t1..total {
                let mut tok =
                    Buf::contiguous(DType::F32, &[1, dim]).fill_with(|i| x.get(&[i[1], t]));
                causal_conv1d_update(
                    &mut tok.view_mut(),
                    &mut sb.view_mut(),
                    &w.view(),
                    None,
                    Some("silu"),
                    None,
                    None,
                    None,
                    -1,
                    -1,
                    None,
                )
                .unwrap();
                for c in 0..dim {
                    let want = xa.get(&[c, t]);
                    assert!(
                        (tok.get(&[0, c]) - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{isa} width {width} token {t} channel {c}"
                    );
                }
            }
            assert_eq!(
                sa.values(),
                sb.values(),
                "{isa} width {width}: state after single-token updates"
            );
            // Prefill of t1, then one (1, dim, t2) update.
            let (mut xc, mut sc) = (x.clone(), state0.clone());
            causal_conv1d_fn(
                &mut xc.view_mut(),
                &w.view(),
                None,
                &mut sc.view_mut(),
                &i32_view(&[0, t1 as i32]),
                None,
                Some(&i32_view(&[1])),
                Some("silu"),
                -1,
                None,
            )
            .unwrap();
            let mut toks =
                Buf::contiguous(DType::F32, &[1, dim, t2]).fill_with(|i| x.get(&[i[1], t1 + i[2]]));
            causal_conv1d_update(
                &mut toks.view_mut(),
                &mut sc.view_mut(),
                &w.view(),
                None,
                Some("silu"),
                None,
                None,
                None,
                -1,
                -1,
                None,
            )
            .unwrap();
            for c in 0..dim {
                for t in 0..t2 {
                    let want = xa.get(&[c, t1 + t]);
                    assert!((toks.get(&[0, c, t]) - want).abs() <= 1e-6 * want.abs().max(1.0));
                }
            }
            assert_eq!(
                sa.values(),
                sc.values(),
                "{isa} width {width}: state after multi-token update"
            );
        });
    }
}

/// Spec decode for every width: a step with 1 + d draft tokens, then `a`
/// accepted; the next step reading the window at `a - 1` must produce what a
/// plain decode of the accepted tokens followed by the next token produces.
#[test]
fn spec_decode_acceptance_matches_plain_decode() {
    let mut rng = Rng(11);
    for width in 2..=6 {
        for drafts in [1usize, 2, 3] {
            for accepted in 1..=drafts + 1 {
                for_each_isa(|isa| {
                    let dim = 21;
                    let n = drafts + 1;
                    let state_len = width - 2 + n;
                    let w = Buf::contiguous(DType::F32, &[dim, width]).random(&mut rng, 1.0);
                    let hist = Buf::contiguous(DType::F32, &[dim, width - 1]).random(&mut rng, 1.0);
                    let step1 = Buf::contiguous(DType::F32, &[1, dim, n]).random(&mut rng, 1.0);
                    let step2 = Buf::contiguous(DType::F32, &[1, dim, 1]).random(&mut rng, 1.0);
                    // Spec path: state_len columns; history in the first width-1.
                    let mut spec_state = Buf::contiguous(DType::F32, &[1, dim, state_len])
                        .fill_with(|i| {
                            if i[2] < width - 1 {
                                hist.get(&[i[1], i[2]])
                            } else {
                                0.0
                            }
                        });
                    let mut s1 = step1.clone();
                    causal_conv1d_update(
                        &mut s1.view_mut(),
                        &mut spec_state.view_mut(),
                        &w.view(),
                        None,
                        None,
                        None,
                        Some(&i32_view(&[1])),
                        None,
                        -1,
                        -1,
                        None,
                    )
                    .unwrap();
                    let mut s2 = step2.clone();
                    causal_conv1d_update(
                        &mut s2.view_mut(),
                        &mut spec_state.view_mut(),
                        &w.view(),
                        None,
                        None,
                        None,
                        Some(&i32_view(&[accepted as i32])),
                        None,
                        -1,
                        -1,
                        None,
                    )
                    .unwrap();
                    // Plain path: decode the accepted tokens one by one, then step 2.
                    let mut plain = Buf::contiguous(DType::F32, &[1, dim, width - 1])
                        .fill_with(|i| hist.get(&[i[1], i[2]]));
                    for t in 0..accepted {
                        let mut tok = Buf::contiguous(DType::F32, &[1, dim])
                            .fill_with(|i| step1.get(&[0, i[1], t]));
                        causal_conv1d_update(
                            &mut tok.view_mut(),
                            &mut plain.view_mut(),
                            &w.view(),
                            None,
                            None,
                            None,
                            None,
                            None,
                            -1,
                            -1,
                            None,
                        )
                        .unwrap();
                        for c in 0..dim {
                            assert!(
                                (tok.get(&[0, c]) - s1.get(&[0, c, t])).abs() <= 1e-6,
                                "{isa} w{width} d{drafts} a{accepted}: draft {t}"
                            );
                        }
                    }
                    let mut p2 = step2.clone();
                    causal_conv1d_update(
                        &mut p2.view_mut(),
                        &mut plain.view_mut(),
                        &w.view(),
                        None,
                        None,
                        None,
                        None,
                        None,
                        -1,
                        -1,
                        None,
                    )
                    .unwrap();
                    for c in 0..dim {
                        assert!(
                            (p2.get(&[0, c, 0]) - s2.get(&[0, c, 0])).abs() <= 1e-6,
                            "{isa} w{width} d{drafts} a{accepted}: next token channel {c}"
                        );
                    }
                });
            }
        }
    }
}

/// Prefills large enough that the AVX-512 kernel streams its stores (grid
/// blocks writing >= 256 KiB; output rows a multiple of 64 bytes), with
/// partial 32-channel units at both row ends whenever the buffer is not
/// 64-byte aligned (the usual 16-byte aligned allocation): reference parity
/// on every tier, and the same bits with 1, 2 and 3 threads (which tile the
/// channels differently, some tiles below the streaming size).
#[test]
fn large_prefill_matches_reference_and_thread_counts() {
    for (dtype, extra) in [(DType::BF16, false), (DType::F32, true)] {
        let c = FnCase {
            dim: 1120,
            width: 4,
            lens: vec![300, 3, 0],
            pad: vec![false, false, false],
            init: vec![true, false, true],
            extra_state: 0,
            dtypes: [dtype, dtype, DType::BF16, dtype],
            separate_out: true,
            bias: extra,
            silu: true,
            x_channel_contiguous: true,
            state_dim_contiguous: !extra,
            pad_slot_id: -1,
            flags_as_bool: false,
        };
        let base = make_fn(&c, &mut Rng(11));
        let mut want = clone_data(&base);
        run_fn(&c, &mut want, true).unwrap();
        for_each_isa(|isa| {
            let run = |threads: usize| {
                let mut d = clone_data(&base);
                with_threads(threads, || run_fn(&c, &mut d, false)).unwrap();
                d
            };
            let one = run(1);
            check_outputs(&one, &want, dtype, &format!("{isa} {dtype:?}"));
            for threads in [2, 3] {
                let other = run(threads);
                let (a, b) = (one.out.as_ref().unwrap(), other.out.as_ref().unwrap());
                assert_eq!(a.raw(), b.raw(), "{isa} {dtype:?} {threads} threads: out");
                assert_eq!(
                    one.states.raw(),
                    other.states.raw(),
                    "{isa} {threads} threads: states"
                );
            }
        });
    }
}

#[test]
fn thread_count_does_not_change_results() {
    let c = FnCase {
        dim: 700,
        width: 4,
        lens: vec![65, 1, 200, 0, 64],
        pad: vec![false, false, false, false, true],
        init: vec![true, false, true, true, false],
        extra_state: 0,
        dtypes: [DType::BF16, DType::BF16, DType::F32, DType::BF16],
        separate_out: false,
        bias: true,
        silu: true,
        x_channel_contiguous: true,
        state_dim_contiguous: true,
        pad_slot_id: -1,
        flags_as_bool: true,
    };
    let base = make_fn(&c, &mut Rng(3));
    let run = |threads: usize| {
        let mut d = clone_data(&base);
        with_threads(threads, || run_fn(&c, &mut d, false)).unwrap();
        d
    };
    let one = run(1);
    for threads in [2, 3] {
        let other = run(threads);
        assert_eq!(one.x.raw(), other.x.raw(), "{threads} threads: x");
        assert_eq!(
            one.states.raw(),
            other.states.raw(),
            "{threads} threads: states"
        );
    }
    let spec = UpdCase {
        dim: 1000,
        width: 4,
        shape: XShape::Varlen,
        lens: vec![1, 3, 2, 4, 1, 1, 2],
        pad: vec![false, true, false, false, false, false, false],
        spec: true,
        accepted: vec![1, 1, 2, 3, 1, 2, 1],
        extra_state: 1,
        dtypes: [DType::BF16, DType::F32, DType::BF16, DType::BF16],
        separate_out: true,
        bias: false,
        silu: true,
        state_dim_contiguous: true,
        with_indices: true,
    };
    // Plain decode with the state in x's dtype (the fast decode path's
    // groups of unit pairs, then pairs, a unit and a partial unit), two
    // sequences: 2 and 3 threads split their channels into tiles.
    let plain = UpdCase {
        dim: 1000,
        width: 4,
        shape: XShape::Single,
        lens: vec![1, 1],
        pad: vec![false, false],
        spec: false,
        accepted: vec![1, 1],
        extra_state: 0,
        dtypes: [DType::BF16, DType::BF16, DType::BF16, DType::BF16],
        separate_out: true,
        bias: true,
        silu: true,
        state_dim_contiguous: true,
        with_indices: true,
    };
    for u in [spec, plain] {
        let base = make_upd(&u, &mut Rng(5));
        let run = |threads: usize| {
            let mut d = clone_upd(&base);
            with_threads(threads, || run_upd(&u, &mut d, false)).unwrap();
            d
        };
        let one = run(1);
        for threads in [2, 3] {
            let other = run(threads);
            assert_eq!(
                one.out.as_ref().unwrap().raw(),
                other.out.as_ref().unwrap().raw(),
                "{threads} threads: out"
            );
            assert_eq!(
                one.state.raw(),
                other.state.raw(),
                "{threads} threads: state"
            );
        }
    }
}

/// bf16 outputs with silu take a cheaper silu than fp32/f16 outputs on the
/// SIMD tiers (prescaled weights, a short exp2, a reciprocal with one Newton
/// step): the fast paths (channel-contiguous x: stream, decode, grouped
/// single-token decode) and the generic path (channel-strided x) must
/// compute every channel with the same operations, tails of partial 8- and
/// 16-channel units included, so they give the same bits; both within the
/// tolerance of the reference. Widths 2-6, odd dims, sequences of 1 token
/// (decode path, grouped from 256 channels), 5 (decode path, several
/// tokens), 20 and 23 (stream path, partial token blocks of 4 and 7: the
/// silu's first pass in groups of 4 and single vectors) and a padding slot.
#[test]
fn bf16_silu_fast_and_generic_paths_agree() {
    let mut rng = Rng(21);
    for width in 2..=6 {
        for dim in [19, 45, 300] {
            let c = FnCase {
                dim,
                width,
                lens: vec![1, 5, 20, 1, 3, 23],
                pad: vec![false, false, false, false, true, false],
                init: vec![true, true, false, true, true, true],
                extra_state: 0,
                dtypes: [DType::BF16; 4],
                separate_out: true,
                bias: width % 2 == 0,
                silu: true,
                x_channel_contiguous: true,
                state_dim_contiguous: true,
                pad_slot_id: -1,
                flags_as_bool: false,
            };
            let base = make_fn(&c, &mut rng);
            let mut want = clone_data(&base);
            run_fn(&c, &mut want, true).unwrap();
            // The same values with x's channels strided: the generic path.
            let shape = [dim, base.x.shape[1]];
            let strided =
                Buf::with_order(DType::BF16, &shape, &[0, 1], 1).fill_with(|i| base.x.get(i));
            for_each_isa(|isa| {
                let what = format!("{isa} width {width} dim {dim}");
                let mut fast = clone_data(&base);
                run_fn(&c, &mut fast, false).unwrap();
                check_outputs(&fast, &want, DType::BF16, &format!("{what} fast"));
                let mut generic = clone_data(&base);
                generic.x = strided.clone();
                run_fn(&c, &mut generic, false).unwrap();
                assert_eq!(
                    fast.out.as_ref().unwrap().raw(),
                    generic.out.as_ref().unwrap().raw(),
                    "{what}: fast and generic outputs"
                );
                assert_eq!(fast.states.raw(), generic.states.raw(), "{what}: states");
            });
        }
    }
}

/// NaN weights and bias with payload bits below the top 16 (f32, some
/// signalling), and f32 / f16 conv states holding NaNs whose high half is
/// 0x7fff (rounding up would carry into the sign), for bf16 x and outputs:
/// the fast paths' bf16 rounding has no NaN test and relies on the prepared
/// weights' and the loaded history's NaNs having their low half cleared;
/// every output of a NaN channel must be NaN, with the generic path's bits
/// (stream and decode paths, silu on and off, whole and partial units).
#[test]
fn bf16_outputs_keep_nan_from_f32_weights_and_states() {
    let mut rng = Rng(33);
    let nans = [0x7f80_0001u32, 0xffc0_1234, 0x7fff_ffff, 0xff80_8001];
    let state_nan_channel = 20;
    for (silu, state_dtype) in [
        (false, DType::BF16),
        (true, DType::BF16),
        (true, DType::F32),
        (false, DType::F16),
        (true, DType::F16),
    ] {
        for dim in [40, 300] {
            let c = FnCase {
                dim,
                width: 4,
                lens: vec![1, 5, 20],
                pad: vec![false; 3],
                init: vec![true, true, true],
                extra_state: 0,
                dtypes: [DType::BF16, state_dtype, DType::F32, DType::BF16],
                separate_out: true,
                bias: true,
                silu,
                x_channel_contiguous: true,
                state_dim_contiguous: true,
                pad_slot_id: -1,
                flags_as_bool: false,
            };
            let mut base = make_fn(&c, &mut rng);
            // (channel, tap or 4 for the bias, NaN bits)
            let spots = [
                (3, 0, nans[0]),
                (17, 1, nans[1]),
                (33, 3, nans[2]),
                (38, 4, nans[3]),
            ];
            let w = base.w.clone();
            base.w = Buf::contiguous(DType::F32, &[dim, 4]).fill_with(|i| {
                match spots.iter().find(|s| s.0 == i[0] && s.1 == i[1]) {
                    Some(s) => f32::from_bits(s.2),
                    None => w.get(i),
                }
            });
            let b = base.b.clone().unwrap();
            base.b = Some(Buf::contiguous(DType::F32, &[dim]).fill_with(|i| {
                match spots.iter().find(|s| s.0 == i[0] && s.1 == 4) {
                    Some(s) => f32::from_bits(s.2),
                    None => b.get(i),
                }
            }));
            if state_dtype != DType::BF16 {
                // Every line's history of one channel: 0x7fff_ffff as f32,
                // 0x7fff as f16 (0x7fff_e000 once widened).
                let states = base.states.clone();
                base.states = states.clone().fill_with(|i| {
                    if i[1] == state_nan_channel {
                        f32::from_bits(nans[2])
                    } else {
                        states.get(i)
                    }
                });
            }
            let shape = [dim, base.x.shape[1]];
            let strided =
                Buf::with_order(DType::BF16, &shape, &[0, 1], 1).fill_with(|i| base.x.get(i));
            for_each_isa(|isa| {
                let what = format!("{isa} silu {silu} dim {dim} states {state_dtype:?}");
                let mut fast = clone_data(&base);
                run_fn(&c, &mut fast, false).unwrap();
                let mut generic = clone_data(&base);
                generic.x = strided.clone();
                run_fn(&c, &mut generic, false).unwrap();
                let out = fast.out.as_ref().unwrap();
                for &(ch, _, _) in &spots {
                    for t in 0..26 {
                        assert!(out.get(&[ch, t]).is_nan(), "{what}: channel {ch} token {t}");
                    }
                }
                if state_dtype != DType::BF16 {
                    // Each sequence's first output reads its line's history.
                    for &start in &base.qsl[..3] {
                        let t = start as usize;
                        let ch = state_nan_channel;
                        assert!(
                            out.get(&[ch, t]).is_nan(),
                            "{what}: state channel {ch} token {t}"
                        );
                    }
                }
                assert!(!out.get(&[0, 0]).is_nan(), "{what}: channel 0");
                assert_eq!(
                    out.raw(),
                    generic.out.as_ref().unwrap().raw(),
                    "{what}: fast and generic outputs"
                );
            });
        }
    }
}

// ---- bad input ---------------------------------------------------------------

fn fn_base() -> (FnCase, FnData) {
    let c = FnCase {
        dim: 8,
        width: 4,
        lens: vec![3, 2],
        pad: vec![false, false],
        init: vec![true, false],
        extra_state: 0,
        dtypes: [DType::F32; 4],
        separate_out: false,
        bias: true,
        silu: false,
        x_channel_contiguous: true,
        state_dim_contiguous: false,
        pad_slot_id: -1,
        flags_as_bool: false,
    };
    let d = make_fn(&c, &mut Rng(1));
    (c, d)
}

/// Runs `f` on a fresh copy and asserts the error and that nothing changed.
fn expect_fn_error(mutate: impl Fn(&mut FnCase, &mut FnData), status: Status, needle: &str) {
    let (mut c, mut d) = fn_base();
    mutate(&mut c, &mut d);
    let before = clone_data(&d);
    assert_err(run_fn(&c, &mut d, false), status, needle);
    assert_eq!(d.x.raw(), before.x.raw(), "x touched on error ({needle})");
    assert_eq!(
        d.states.raw(),
        before.states.raw(),
        "states touched on error ({needle})"
    );
}

#[test]
fn conv_fn_rejects_bad_input() {
    for width in [1usize, 7] {
        expect_fn_error(
            |c, d| {
                c.width = width;
                d.w = Buf::contiguous(DType::F32, &[c.dim, width]);
            },
            Status::Unsupported,
            "width",
        );
    }
    expect_fn_error(
        |_, d| d.idx[1] = 99,
        Status::IndexOutOfRange,
        "cache_indices[1] = 99",
    );
    expect_fn_error(
        |_, d| d.idx[1] = -2,
        Status::IndexOutOfRange,
        "cache_indices[1] = -2",
    );
    expect_fn_error(
        |_, d| d.idx[1] = d.idx[0],
        Status::Aliasing,
        "cache_indices",
    );
    expect_fn_error(
        |_, d| d.qsl = vec![0, 4, 3],
        Status::InvalidValue,
        "not monotone",
    );
    expect_fn_error(
        |_, d| d.qsl = vec![0, 3, 99],
        Status::IndexOutOfRange,
        "query_start_loc[2] = 99",
    );
    expect_fn_error(
        |_, d| d.qsl = vec![0, 3, 5, 6],
        Status::ShapeMismatch,
        "cache_indices",
    );
    expect_fn_error(
        |_, d| d.b = Some(Buf::contiguous(DType::F32, &[5])),
        Status::ShapeMismatch,
        "bias",
    );
    expect_fn_error(
        |c, d| d.states = Buf::contiguous(DType::F32, &[5, c.dim, c.width - 2]),
        Status::ShapeMismatch,
        "state_len",
    );
    expect_fn_error(
        |c, d| d.states = Buf::contiguous(DType::F32, &[5, c.dim + 1, c.width - 1]),
        Status::ShapeMismatch,
        "conv_states",
    );
    expect_fn_error(
        |c, d| d.out = Some(Buf::contiguous(DType::F32, &[c.dim, 3])),
        Status::ShapeMismatch,
        "out",
    );
    expect_fn_error(
        |c, d| d.x = Buf::contiguous(DType::I32, &[c.dim, 7]),
        Status::DtypeMismatch,
        "`x`",
    );
}

fn upd_base() -> (UpdCase, UpdData) {
    let c = UpdCase {
        dim: 8,
        width: 3,
        shape: XShape::Varlen,
        lens: vec![2, 3],
        pad: vec![false, false],
        spec: true,
        accepted: vec![1, 2],
        extra_state: 0,
        dtypes: [DType::F32; 4],
        separate_out: true,
        bias: false,
        silu: false,
        state_dim_contiguous: true,
        with_indices: true,
    };
    let d = make_upd(&c, &mut Rng(2));
    (c, d)
}

fn expect_upd_error(mutate: impl Fn(&mut UpdCase, &mut UpdData), status: Status, needle: &str) {
    let (mut c, mut d) = upd_base();
    mutate(&mut c, &mut d);
    let before = clone_upd(&d);
    assert_err(run_upd(&c, &mut d, false), status, needle);
    assert_eq!(d.x.raw(), before.x.raw(), "x touched on error ({needle})");
    assert_eq!(
        d.state.raw(),
        before.state.raw(),
        "state touched on error ({needle})"
    );
    assert_eq!(
        d.out.as_ref().unwrap().raw(),
        before.out.as_ref().unwrap().raw(),
        "out touched on error ({needle})"
    );
}

#[test]
fn conv_update_rejects_bad_input() {
    // state_len = width - 2 + max_len = 4: accepted may be 1..=3.
    expect_upd_error(
        |_, d| d.acc[1] = 4,
        Status::IndexOutOfRange,
        "num_accepted_tokens[1] = 4",
    );
    expect_upd_error(
        |_, d| d.acc[0] = 0,
        Status::IndexOutOfRange,
        "num_accepted_tokens[0] = 0",
    );
    expect_upd_error(
        |_, d| d.idx[0] = 4,
        Status::IndexOutOfRange,
        "conv_state_indices[0] = 4",
    );
    expect_upd_error(
        |_, d| d.qsl = vec![0, 2, 9],
        Status::IndexOutOfRange,
        "query_start_loc[2] = 9",
    );
    expect_upd_error(
        |c, d| d.state = Buf::contiguous(DType::F32, &[4, c.dim, 3]),
        Status::ShapeMismatch,
        "spec decode",
    );
    expect_upd_error(
        |c, d| d.w = Buf::contiguous(DType::F32, &[c.dim + 1, c.width]),
        Status::ShapeMismatch,
        "weight",
    );
    expect_upd_error(
        |_, d| d.acc = vec![1],
        Status::ShapeMismatch,
        "num_accepted_tokens",
    );
    // The same case with valid arguments succeeds (the errors above are specific).
    let (c, mut d) = upd_base();
    run_upd(&c, &mut d, false).unwrap();
}

#[test]
fn conv_rejects_unknown_activation() {
    let (c, mut d) = fn_base();
    let before = clone_data(&d);
    let mut x = d.x.view_mut();
    let r = causal_conv1d_fn(
        &mut x,
        &d.w.view(),
        None,
        &mut d.states.view_mut(),
        &i32_view(&d.qsl),
        Some(&i32_view(&d.idx)),
        None,
        Some("gelu"),
        -1,
        None,
    );
    assert_err(r, Status::InvalidArgument, "gelu");
    drop(x);
    assert_eq!(d.x.raw(), before.x.raw());
    let _ = c;
}
