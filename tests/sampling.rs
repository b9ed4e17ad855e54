//! Sampling (issue 6): Philox known answers, the exp spec per tier, every op
//! against the reference (exact token ids on every ISA tier and thread
//! count), mask membership, frequency tests, greedy, logprobs and ranks
//! against fp64, penalties, and bad inputs.
//!
//! Tolerances: token ids, ranks, masks, masked logits and the specified exp
//! are exact; raw logprobs are exact after rounding an fp64 value to f32;
//! renormalised probabilities are within 1 ulp of `p / sum` in fp64 (the
//! kernel multiplies by the reciprocal of an fp64 sum taken in another order);
//! frequency tests bound the total-variation distance between empirical and
//! fp64 ideal distributions.

mod common;

use common::{for_each_isa, Rng};
use half::{bf16, f16};
use xpu_ops::ops::sampling::{exp_spec_probe, philox4x32, probs_sum_tolerance};
use xpu_ops::reference::sampling as reference;
use xpu_ops::reference::sampling::RowFilter;
use xpu_ops::*;

// ---- data ---------------------------------------------------------------------

/// Runs `f` on `threads` pool threads with ops forced onto `isa`. The tier
/// override is thread-local, so it is set again inside the pool (ops resolve
/// their kernel table on the thread that calls them).
fn on<R: Send>(isa: Isa, threads: usize, f: impl FnOnce() -> R + Send) -> R {
    common::with_threads(threads, || with_isa(isa, f).expect("supported tier"))
}

/// LLM-like logits: a Gaussian background, a few boosted tokens, some exact
/// ties and optional -inf entries.
fn logits_row(rng: &mut Rng, v: usize, spread: f32, ties: bool, neg_inf: bool) -> Vec<f32> {
    let mut x: Vec<f32> = (0..v).map(|_| rng.uniform() * spread).collect();
    for _ in 0..(v / 50).clamp(1, 20) {
        let i = rng.below(v as u64) as usize;
        x[i] += spread * (1.0 + rng.uniform().abs() * 2.0);
    }
    if ties && v > 4 {
        // copy a few values (including the top ones) elsewhere
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| x[b].total_cmp(&x[a]));
        for j in 0..(v / 10).clamp(1, 30) {
            let src = order[(j * 3) % v.min(40)];
            let dst = rng.below(v as u64) as usize;
            x[dst] = x[src];
        }
    }
    if neg_inf && v > 2 {
        for _ in 0..(v / 8).max(1) {
            let i = rng.below(v as u64) as usize;
            if x.iter().filter(|z| z.is_finite()).count() > 1 {
                x[i] = f32::NEG_INFINITY;
            }
        }
    }
    x
}

fn softmax32(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

/// Values stored in `dtype` and read back (so reference and kernel see the same row).
fn rounded(x: &[f32], dtype: DType) -> Vec<f32> {
    x.iter()
        .map(|&v| match dtype {
            DType::F16 => f16::from_f32(v).to_f32(),
            DType::BF16 => bf16::from_f32(v).to_f32(),
            _ => v,
        })
        .collect()
}

/// An owned [rows, vocab] tensor in a dtype, with optional row padding.
struct Owned {
    dtype: DType,
    rows: usize,
    vocab: usize,
    stride: usize,
    f: Vec<f32>,
    h: Vec<f16>,
    b: Vec<bf16>,
}

impl Owned {
    fn new(rows: &[Vec<f32>], dtype: DType, pad: usize) -> Owned {
        let vocab = rows[0].len();
        let stride = vocab + pad;
        let mut f = vec![0f32; rows.len() * stride];
        for (r, row) in rows.iter().enumerate() {
            f[r * stride..r * stride + vocab].copy_from_slice(row);
        }
        let h = f.iter().map(|&v| f16::from_f32(v)).collect();
        let b = f.iter().map(|&v| bf16::from_f32(v)).collect();
        Owned {
            dtype,
            rows: rows.len(),
            vocab,
            stride,
            f,
            h,
            b,
        }
    }
    fn view(&self) -> TensorView<'_> {
        let (shape, strides) = ([self.rows, self.vocab], [self.stride, 1]);
        match self.dtype {
            DType::F16 => TensorView::strided(&self.h, &shape, &strides),
            DType::BF16 => TensorView::strided(&self.b, &shape, &strides),
            _ => TensorView::strided(&self.f, &shape, &strides),
        }
        .unwrap()
    }
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

// ---- Philox ---------------------------------------------------------------------

/// Random123 `kat_vectors`: philox4x32 (rounds, counter, key, expected).
/// (rounds, counter, key, expected output).
type Kat = (u32, [u32; 4], [u32; 2], [u32; 4]);

const PHILOX_KAT: [Kat; 6] = [
    (
        7,
        [0, 0, 0, 0],
        [0, 0],
        [0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48],
    ),
    (
        7,
        [u32::MAX; 4],
        [u32::MAX; 2],
        [0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662],
    ),
    (
        7,
        [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
        [0xa4093822, 0x299f31d0],
        [0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a],
    ),
    (
        10,
        [0, 0, 0, 0],
        [0, 0],
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
    ),
    (
        10,
        [u32::MAX; 4],
        [u32::MAX; 2],
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
    ),
    (
        10,
        [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
        [0xa4093822, 0x299f31d0],
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
    ),
];

#[test]
fn philox_known_answers_reference_and_every_tier() {
    for (rounds, ctr, key, want) in PHILOX_KAT {
        assert_eq!(
            reference::philox4x32(ctr, key, rounds),
            want,
            "reference, {rounds} rounds"
        );
        for_each_isa(|isa| {
            assert_eq!(philox4x32(ctr, key, rounds), want, "{isa}, {rounds} rounds")
        });
    }
}

#[test]
fn uniform_bits_layout() {
    // word offset % 4 of block offset / 4, subsequence in the counter's high half
    let seed = 0x0123_4567_89ab_cdefu64;
    for (sub, off) in [(0u64, 0u64), (3, 5), (1 << 40, (1 << 35) + 2)] {
        let block = off / 4;
        let ctr = [
            block as u32,
            (block >> 32) as u32,
            sub as u32,
            (sub >> 32) as u32,
        ];
        let out = reference::philox4x32(ctr, [seed as u32, (seed >> 32) as u32], 10);
        assert_eq!(
            reference::uniform_bits(seed, sub, off),
            out[(off % 4) as usize]
        );
    }
}

// ---- exp spec -----------------------------------------------------------------

#[test]
fn exp_spec_is_accurate_and_every_tier_matches_it() {
    let mut rng = Rng(5);
    let mut d32: Vec<f32> = (0..4099).map(|_| (rng.uniform() - 1.0) * 13.9).collect();
    d32.extend([0.0, -0.0, -27.8, -1e-30, -0.346_573_6, -0.346_573_7, -27.7]);
    let mut d64: Vec<f64> = (0..4099)
        .map(|_| (rng.uniform() as f64 - 1.0) * 350.0)
        .collect();
    d64.extend([0.0, -700.0, -1e-300, -0.5 * std::f64::consts::LN_2]);
    for &d in &d32 {
        let e = reference::expf_spec(d);
        let want = (d as f64).exp();
        assert!(
            ((e as f64 - want) / want).abs() < 2.5e-7,
            "expf_spec({d}) = {e}, exp = {want}"
        );
    }
    assert_eq!(reference::expf_spec(0.0), 1.0);
    for_each_isa(|isa| {
        let (e32, e64) = exp_spec_probe(&d32, &d64);
        for (i, &d) in d32.iter().enumerate() {
            assert_eq!(
                e32[i].to_bits(),
                reference::expf_spec(d).to_bits(),
                "{isa}: expf_spec({d})"
            );
        }
        for (i, &d) in d64.iter().enumerate() {
            // the f64 exp only needs accuracy (the tiers must agree with each other: below)
            let rel = ((e64[i] - d.exp()) / d.exp()).abs();
            assert!(rel < 1e-15, "{isa}: exp64({d}) = {} vs {}", e64[i], d.exp());
        }
    });
    let per_tier: Vec<Vec<u64>> = common::isas()
        .into_iter()
        .map(|isa| {
            with_isa(isa, || {
                exp_spec_probe(&[], &d64)
                    .1
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            })
            .unwrap()
        })
        .collect();
    assert!(
        per_tier.windows(2).all(|w| w[0] == w[1]),
        "f64 exp differs across tiers"
    );
}

// ---- FlashInfer ops vs the reference ---------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    FromProbs,
    FromLogits,
    TopP,
    TopK,
    MinP,
    TopKTopPProbs(bool),
    TopKTopPLogits(bool),
}

impl Op {
    const ALL: [Op; 9] = [
        Op::FromProbs,
        Op::FromLogits,
        Op::TopP,
        Op::TopK,
        Op::MinP,
        Op::TopKTopPProbs(false),
        Op::TopKTopPProbs(true),
        Op::TopKTopPLogits(false),
        Op::TopKTopPLogits(true),
    ];
    fn logits(self) -> bool {
        matches!(self, Op::FromLogits | Op::TopKTopPLogits(_))
    }
    fn uses_k(self) -> bool {
        matches!(
            self,
            Op::TopK | Op::TopKTopPProbs(_) | Op::TopKTopPLogits(_)
        )
    }
    fn uses_p(self) -> bool {
        matches!(
            self,
            Op::TopP | Op::TopKTopPProbs(_) | Op::TopKTopPLogits(_)
        )
    }
}

struct Params<'a> {
    top_k: PerRow<'a, i64>,
    top_p: PerRow<'a, f32>,
    min_p: PerRow<'a, f32>,
    indices: Option<&'a TensorView<'a>>,
    seed: PerRow<'a, u64>,
    offset: PerRow<'a, u64>,
}

fn run_op(op: Op, x: &TensorView, p: &Params, out: &mut TensorViewMut) -> Result<()> {
    let order = |j: bool| if j { "joint" } else { "top_k_first" };
    match op {
        Op::FromProbs => sampling_from_probs(x, p.indices, p.seed, p.offset, out),
        Op::FromLogits => sampling_from_logits(x, p.indices, p.seed, p.offset, out),
        Op::TopP => top_p_sampling_from_probs(x, p.top_p, p.indices, p.seed, p.offset, out),
        Op::TopK => top_k_sampling_from_probs(x, p.top_k, p.indices, p.seed, p.offset, out),
        Op::MinP => min_p_sampling_from_probs(x, p.min_p, p.indices, p.seed, p.offset, out),
        Op::TopKTopPProbs(j) => top_k_top_p_sampling_from_probs(
            x,
            p.top_k,
            p.top_p,
            p.indices,
            order(j),
            p.seed,
            p.offset,
            out,
        ),
        Op::TopKTopPLogits(j) => top_k_top_p_sampling_from_logits(
            x,
            p.top_k,
            p.top_p,
            p.indices,
            order(j),
            p.seed,
            p.offset,
            out,
        ),
    }
}

fn ref_op(op: Op, x: &TensorView, p: &Params, out: &mut TensorViewMut) {
    let joint = matches!(op, Op::TopKTopPProbs(true) | Op::TopKTopPLogits(true));
    let vocab = x.shape()[1] as i64;
    // the launcher maps top_k >= vocab to "off"
    let k_vals: Vec<i64>;
    let kt;
    let k = if op.uses_k() {
        k_vals = (0..out.shape()[0])
            .map(|b| match &p.top_k {
                PerRow::Scalar(v) => *v,
                PerRow::Tensor(t) => t.get_i64(&[b]),
            })
            .map(|v| if v >= vocab { 0 } else { v })
            .collect();
        kt = TensorView::new(&k_vals, &[k_vals.len()]).unwrap();
        Some(PerRow::Tensor(&kt))
    } else {
        None
    };
    reference::flashinfer_sample(
        x,
        op.logits(),
        k.as_ref(),
        op.uses_p().then_some(&p.top_p),
        (op == Op::MinP).then_some(&p.min_p),
        p.indices,
        joint,
        &p.seed,
        &p.offset,
        out,
    );
}

/// Runs `op` on every tier with 1 and 3 threads; all must equal the reference.
fn check_op(op: Op, x: &TensorView, p: &Params, batch: usize, what: &str) -> Vec<i64> {
    let mut want = vec![-1i64; batch];
    ref_op(
        op,
        x,
        p,
        &mut TensorViewMut::new(&mut want, &[batch]).unwrap(),
    );
    for_each_isa(|isa| {
        for threads in [1, 3] {
            assert_eq!(
                on(isa, threads, active_isa),
                isa,
                "the tier reaches the pool"
            );
            let mut got = vec![-7i32; batch];
            on(isa, threads, || {
                run_op(
                    op,
                    x,
                    p,
                    &mut TensorViewMut::new(&mut got, &[batch]).unwrap(),
                )
            })
            .unwrap_or_else(|e| panic!("{what} {op:?} {isa} x{threads}: {e}"));
            let got: Vec<i64> = got.iter().map(|&v| v as i64).collect();
            assert_eq!(got, want, "{what} {op:?} on {isa} with {threads} threads");
        }
    });
    want
}

fn probs_rows(rng: &mut Rng, rows: usize, v: usize, dtype: DType) -> Vec<Vec<f32>> {
    (0..rows)
        .map(|_| {
            let ties = rng.below(2) == 0;
            let x = logits_row(rng, v, 3.0, ties, false);
            let p = rounded(&softmax32(&x), dtype);
            let s: f32 = p.iter().sum();
            if (s as f64 - 1.0).abs() > probs_sum_tolerance(dtype) * 0.5 {
                softmax32(&vec![0.0; v]) // uniform: always within tolerance
            } else {
                p
            }
        })
        .collect()
}

#[test]
fn flashinfer_samplers_match_reference_on_every_tier_and_thread_count() {
    let sizes = [1usize, 2, 3, 15, 16, 17, 33, 100, 1000, 4097];
    let mut rng = Rng(11);
    let mut case = 0;
    for &v in &sizes {
        for op in Op::ALL {
            let dtype = DTYPES[case % 3];
            case += 1;
            let rows = 1 + rng.below(4) as usize;
            let data: Vec<Vec<f32>> = if op.logits() {
                (0..rows)
                    .map(|_| {
                        let (ties, ninf) = (rng.below(2) == 0, rng.below(3) == 0);
                        rounded(&logits_row(&mut rng, v, 4.0, ties, ninf), dtype)
                    })
                    .collect()
            } else {
                probs_rows(&mut rng, rows, v, dtype)
            };
            let owned = Owned::new(&data, dtype, rng.below(3) as usize * 5);
            let x = owned.view();
            let use_ix = rng.below(2) == 0;
            let ix: Vec<i64> = (0..rows + 2)
                .map(|_| rng.below(rows as u64) as i64)
                .collect();
            let ix_t = TensorView::new(&ix, &[ix.len()]).unwrap();
            let batch = if use_ix { ix.len() } else { rows };
            let ks: Vec<i64> = (0..batch)
                .map(|_| 1 + rng.below(v as u64 + 2) as i64)
                .collect();
            let ps: Vec<f32> = (0..batch)
                .map(|_| 0.05 + 0.95 * rng.uniform().abs())
                .collect();
            let ms: Vec<f32> = (0..batch).map(|_| 0.4 * rng.uniform().abs()).collect();
            let seeds: Vec<i64> = (0..batch).map(|_| rng.next_u64() as i64).collect();
            let (kt, pt, mt, st) = (
                TensorView::new(&ks, &[batch]).unwrap(),
                TensorView::new(&ps, &[batch]).unwrap(),
                TensorView::new(&ms, &[batch]).unwrap(),
                TensorView::new(&seeds, &[batch]).unwrap(),
            );
            let per_row = rng.below(2) == 0;
            let p = Params {
                top_k: if per_row {
                    PerRow::Tensor(&kt)
                } else {
                    PerRow::Scalar(ks[0])
                },
                top_p: if per_row {
                    PerRow::Tensor(&pt)
                } else {
                    PerRow::Scalar(ps[0])
                },
                min_p: if per_row {
                    PerRow::Tensor(&mt)
                } else {
                    PerRow::Scalar(ms[0])
                },
                indices: use_ix.then_some(&ix_t),
                seed: if per_row {
                    PerRow::Tensor(&st)
                } else {
                    PerRow::Scalar(seeds[0] as u64)
                },
                offset: PerRow::Scalar(rng.below(1000)),
            };
            let got = check_op(op, &x, &p, batch, &format!("V={v} {dtype}"));
            // every sample lies in the reference mask
            for (b, &tok) in got.iter().enumerate() {
                let r = if use_ix { ix[b] as usize } else { b };
                let f = RowFilter {
                    top_k: if op.uses_k() && (ks[if per_row { b } else { 0 }] as usize) < v {
                        ks[if per_row { b } else { 0 }] as usize
                    } else {
                        0
                    },
                    top_p: if op.uses_p() {
                        ps[if per_row { b } else { 0 }]
                    } else {
                        1.0
                    },
                    min_p: if op == Op::MinP {
                        ms[if per_row { b } else { 0 }]
                    } else {
                        0.0
                    },
                    joint: matches!(op, Op::TopKTopPProbs(true) | Op::TopKTopPLogits(true)),
                };
                let mask = reference::kept_mask(&data[r], op.logits(), &f);
                assert!(
                    mask[tok as usize],
                    "{op:?} V={v}: sample {tok} outside the mask"
                );
            }
        }
    }
}

/// Rows shaped to reach every path of the kernel: the candidate buffer, its
/// overflow under ties, the radix selects, the mass-pruned top-p pass and its
/// overflow, at vocabulary sizes up to Qwen's.
#[test]
fn every_kernel_path_matches_reference_at_large_vocab() {
    let mut rng = Rng(23);
    let v = 40_000;
    let flat: Vec<f32> = (0..v).map(|_| rng.uniform() * 0.05).collect();
    let peaked = logits_row(&mut rng, v, 3.0, true, false);
    let mut ties = vec![0.5f32; v];
    for i in (0..v).step_by(997) {
        ties[i] = 1.0 + i as f32 * 1e-6;
    }
    let qwen = logits_row(&mut rng, 151_936, 4.0, false, false);
    type Case<'a> = (&'a str, &'a [f32], i64, f32, f32);
    let cases: [Case; 10] = [
        // name, row, top_k (0 off), top_p (1 off), min_p (0 off)
        ("buffer top-k + top-p", &peaked, 50, 0.9, 0.0),
        ("top-k ties overflow", &ties, 20, 1.0, 0.0),
        ("top-k above the buffer", &peaked, 5000, 0.95, 0.0),
        ("top-p mass pass", &peaked, 0, 0.9, 0.0),
        ("top-p flat overflow", &flat, 0, 0.9, 0.0),
        ("min-p flat overflow", &flat, 0, 1.0, 0.05),
        ("min-p + top-p flat", &flat, 0, 0.5, 0.3),
        ("min-p + top-k", &peaked, 3000, 0.8, 0.02),
        ("no filter", &flat, 0, 1.0, 0.0),
        ("qwen vocab top-k + top-p", &qwen, 20, 0.8, 0.0),
    ];
    for (name, row, k, p, minp) in cases {
        let vv = row.len();
        for logits in [true, false] {
            let data = if logits { row.to_vec() } else { softmax32(row) };
            let x = TensorView::new(&data, &[1, vv]).unwrap();
            let kk = if k == 0 || k as usize >= vv {
                0
            } else {
                k as usize
            };
            let f = RowFilter {
                top_k: kk,
                top_p: p,
                min_p: minp,
                joint: false,
            };
            let mask = reference::kept_mask(&data, logits, &f);
            let kept = mask.iter().filter(|&&b| b).count();
            let mut want_all = vec![];
            for off in [0u64, 1, 2, 3, 17] {
                let want =
                    reference::draw(&data, logits, &mask, reference::uniform_bits(99, 0, off))
                        as i64;
                want_all.push(want);
                for_each_isa(|isa| {
                    let mut got = [0i64];
                    // sampler_forward covers min-p for logits; FlashInfer ops the rest
                    let seeds = [99i64];
                    let st = TensorView::new(&seeds, &[1]).unwrap();
                    let r = if logits {
                        let md = SamplingMetadata {
                            temperature: Some(1.0f32.into()),
                            top_k: (k > 0).then_some(k.into()),
                            top_p: (p < 1.0).then_some(p.into()),
                            min_p: (minp > 0.0).then_some(minp.into()),
                            seed: PerRow::Tensor(&st),
                            offset: off.into(),
                            ..Default::default()
                        };
                        sampler_forward(
                            &x,
                            &md,
                            &mut TensorViewMut::new(&mut got, &[1]).unwrap(),
                            None,
                        )
                    } else if minp > 0.0 && k == 0 && p == 1.0 {
                        min_p_sampling_from_probs(
                            &x,
                            minp.into(),
                            None,
                            PerRow::Tensor(&st),
                            off.into(),
                            &mut TensorViewMut::new(&mut got, &[1]).unwrap(),
                        )
                    } else if minp > 0.0 {
                        return; // no FlashInfer op combines min-p with top-k / top-p on probs
                    } else {
                        top_k_top_p_sampling_from_probs(
                            &x,
                            (if k == 0 { vv as i64 } else { k }).into(),
                            p.into(),
                            None,
                            "top_k_first",
                            PerRow::Tensor(&st),
                            off.into(),
                            &mut TensorViewMut::new(&mut got, &[1]).unwrap(),
                        )
                    };
                    r.unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(
                        got[0], want,
                        "{name} (logits: {logits}, kept {kept}) offset {off} on {isa}"
                    );
                });
            }
            assert!(want_all.iter().all(|&t| mask[t as usize]));
        }
    }
}

/// Top-p alone and with a temperature at Qwen's vocab, on rows that send the
/// AVX-512 kernel down each of its top-p routes: the nucleus settled in the
/// one-pass probe from the bounded softmax total (boosted rows), a band
/// around the boundary (a broad nucleus), the cheap bound pass and the exact
/// fallbacks (ascending rows, whose running max rises every block; ties;
/// -inf entries). Exact against the reference on every tier and dtype.
#[test]
fn top_p_routes_match_reference_at_qwen_vocab() {
    let mut rng = Rng(71);
    let v = 151_936;
    let gauss = |rng: &mut Rng, sd: f32| -> f32 {
        // sum of 4 uniforms in [-1, 1]: variance 4/3
        (0..4).map(|_| rng.uniform()).sum::<f32>() * sd * 0.866
    };
    let mut boosted: Vec<f32> = (0..v).map(|_| gauss(&mut rng, 2.0)).collect();
    for _ in 0..5 {
        let i = rng.below(v as u64) as usize;
        boosted[i] = 10.0 + 3.0 * (rng.uniform() + 1.0);
    }
    let broad: Vec<f32> = (0..v).map(|_| gauss(&mut rng, 1.0)).collect();
    let ascending: Vec<f32> = (0..v).map(|i| i as f32 * 2e-4).collect();
    let mut masked = logits_row(&mut rng, v, 4.0, true, true);
    masked[17] = 9.0;
    let rows = [boosted, broad, ascending, masked];
    let b = rows.len();
    let seeds: Vec<i64> = (0..b).map(|_| rng.next_u64() as i64).collect();
    let st = TensorView::new(&seeds, &[b]).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let owned = Owned::new(&rows, dtype, 0);
        let x = owned.view();
        for temp in [1.0f32, 0.7] {
            for top_p in [0.3f32, 0.9, 0.99] {
                for off in [0u64, 5] {
                    let md = SamplingMetadata {
                        temperature: Some(temp.into()),
                        top_p: Some(top_p.into()),
                        seed: PerRow::Tensor(&st),
                        offset: off.into(),
                        ..Default::default()
                    };
                    let want = reference::sampler_forward(&x, &md).sampled;
                    for_each_isa(|isa| {
                        let mut got = vec![0i64; b];
                        sampler_forward(
                            &x,
                            &md,
                            &mut TensorViewMut::new(&mut got, &[b]).unwrap(),
                            None,
                        )
                        .unwrap();
                        assert_eq!(
                            got, want,
                            "{dtype:?} T={temp} top_p={top_p} offset {off} on {isa}"
                        );
                    });
                }
            }
        }
    }
}

// ---- thread and batch invariance -------------------------------------------------

#[test]
fn per_row_seeds_make_samples_independent_of_batch_and_threads() {
    let mut rng = Rng(31);
    let v = 5000;
    let rows: Vec<Vec<f32>> = (0..6)
        .map(|_| logits_row(&mut rng, v, 3.0, false, false))
        .collect();
    let seeds: Vec<i64> = (0..6).map(|_| rng.next_u64() as i64).collect();
    let offsets: Vec<i64> = (0..6).map(|i| 4 * i).collect();
    let sample = |order: &[usize], threads: usize, isa: Isa| -> Vec<i64> {
        let data: Vec<Vec<f32>> = order.iter().map(|&i| rows[i].clone()).collect();
        let owned = Owned::new(&data, DType::F32, 0);
        let s: Vec<i64> = order.iter().map(|&i| seeds[i]).collect();
        let o: Vec<i64> = order.iter().map(|&i| offsets[i]).collect();
        let (st, ot) = (
            TensorView::new(&s, &[s.len()]).unwrap(),
            TensorView::new(&o, &[o.len()]).unwrap(),
        );
        let mut out = vec![0i64; order.len()];
        on(isa, threads, || {
            top_k_top_p_sampling_from_logits(
                &owned.view(),
                40i64.into(),
                0.9f32.into(),
                None,
                "top_k_first",
                PerRow::Tensor(&st),
                PerRow::Tensor(&ot),
                &mut TensorViewMut::new(&mut out, &[order.len()]).unwrap(),
            )
        })
        .unwrap();
        out
    };
    let base = sample(&[0, 1, 2, 3, 4, 5], 1, Isa::Generic);
    for_each_isa(|isa| {
        for threads in [1, 2, 3] {
            let perm = [4usize, 0, 5, 2, 1, 3];
            let got = sample(&perm, threads, isa);
            for (j, &i) in perm.iter().enumerate() {
                assert_eq!(
                    got[j], base[i],
                    "request {i} at row {j}, {threads} threads, {isa}"
                );
            }
            assert_eq!(
                sample(&[3], threads, isa)[0],
                base[3],
                "request 3 alone, {isa}"
            );
        }
    });
}

// ---- frequency ------------------------------------------------------------------

/// Draws `n` samples of one row (indices repeat the row; a scalar seed gives
/// each output row its own subsequence) and returns the empirical distribution.
fn empirical(op: Op, row: &[f32], k: i64, p: f32, minp: f32, n: usize) -> Vec<f64> {
    let x = TensorView::new(row, &[1, row.len()]).unwrap();
    let ix = vec![0i32; n];
    let ixt = TensorView::new(&ix, &[n]).unwrap();
    let params = Params {
        top_k: k.into(),
        top_p: p.into(),
        min_p: minp.into(),
        indices: Some(&ixt),
        seed: 2024u64.into(),
        offset: 8u64.into(),
    };
    let mut out = vec![0i32; n];
    run_op(
        op,
        &x,
        &params,
        &mut TensorViewMut::new(&mut out, &[n]).unwrap(),
    )
    .unwrap();
    let mut counts = vec![0f64; row.len()];
    for &t in &out {
        counts[t as usize] += 1.0;
    }
    counts.iter().map(|c| c / n as f64).collect()
}

#[test]
fn sample_frequencies_follow_the_masked_renormalised_distribution() {
    let mut rng = Rng(41);
    let logits: Vec<f32> = (0..24).map(|_| rng.uniform() * 2.5).collect();
    let probs = softmax32(&logits);
    let n = 60_000;
    for (op, k, p, minp) in [
        (Op::FromLogits, 0, 1.0, 0.0),
        (Op::FromProbs, 0, 1.0, 0.0),
        (Op::TopK, 7, 1.0, 0.0),
        (Op::TopP, 0, 0.7, 0.0),
        (Op::MinP, 0, 1.0, 0.2),
        (Op::TopKTopPLogits(false), 10, 0.8, 0.0),
        (Op::TopKTopPLogits(true), 10, 0.6, 0.0),
        (Op::TopKTopPProbs(false), 12, 0.75, 0.0),
    ] {
        let row = if op.logits() { &logits } else { &probs };
        let f = RowFilter {
            top_k: k as usize,
            top_p: p,
            min_p: minp,
            joint: matches!(op, Op::TopKTopPLogits(true) | Op::TopKTopPProbs(true)),
        };
        let mask = reference::kept_mask(row, op.logits(), &f);
        let ideal = reference::ideal_distribution(row, op.logits(), &mask);
        let emp = empirical(op, row, k, p, minp, n);
        let tv: f64 = emp
            .iter()
            .zip(&ideal)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>()
            / 2.0;
        let chi2: f64 = emp
            .iter()
            .zip(&ideal)
            .filter(|(_, &q)| q > 0.0)
            .map(|(a, q)| n as f64 * (a - q).powi(2) / q)
            .sum();
        let df = mask.iter().filter(|&&b| b).count().max(2) as f64 - 1.0;
        for (i, &e) in emp.iter().enumerate() {
            assert!(
                mask[i] || e == 0.0,
                "{op:?}: token {i} outside the mask drawn"
            );
        }
        // fixed seeds: deterministic; bounds are ~5 sigma for chi2 and ~4x the expected TV
        assert!(tv < 0.015, "{op:?}: total variation {tv}");
        assert!(
            chi2 < df + 5.0 * (2.0 * df).sqrt(),
            "{op:?}: chi2 {chi2} with {df} degrees of freedom"
        );
    }
}

// ---- vLLM: fused sampler, logprobs, penalties -------------------------------------

struct Batch {
    logits: Vec<Vec<f32>>,
    temp: Vec<f32>,
    top_k: Vec<i64>,
    top_p: Vec<f32>,
    min_p: Vec<f32>,
    seeds: Vec<i64>,
    prompt: Vec<i64>,
    output: Vec<i64>,
    lp: usize,
    lo: usize,
    pres: Vec<f32>,
    freq: Vec<f32>,
    rep: Vec<f32>,
}

fn vllm_batch(rng: &mut Rng, batch: usize, v: usize) -> Batch {
    let pad = v as i64; // vLLM pads with vocab_size
    let (lp, lo) = (1 + rng.below(6) as usize, 1 + rng.below(9) as usize);
    let ids = |rng: &mut Rng, n: usize| -> Vec<i64> {
        (0..batch * n)
            .map(|_| {
                if rng.below(4) == 0 {
                    pad
                } else {
                    rng.below(v as u64) as i64
                }
            })
            .collect()
    };
    Batch {
        logits: (0..batch)
            .map(|_| {
                let ties = rng.below(2) == 0;
                logits_row(rng, v, 3.0, ties, false)
            })
            .collect(),
        temp: (0..batch)
            .map(|b| {
                if b % 4 == 0 {
                    0.0
                } else {
                    0.3 + rng.uniform().abs() * 1.2
                }
            })
            .collect(),
        top_k: (0..batch)
            .map(|_| [-1i64, 0, 1, 5, 40, v as i64 + 3][rng.below(6) as usize])
            .collect(),
        top_p: (0..batch)
            .map(|_| 0.3 + 0.7 * rng.uniform().abs())
            .collect(),
        min_p: (0..batch)
            .map(|_| [0.0f32, 0.05, 0.2][rng.below(3) as usize])
            .collect(),
        seeds: (0..batch).map(|_| rng.next_u64() as i64).collect(),
        prompt: ids(rng, lp),
        output: ids(rng, lo),
        lp,
        lo,
        pres: (0..batch).map(|_| rng.uniform()).collect(),
        freq: (0..batch).map(|_| rng.uniform() * 0.5).collect(),
        rep: (0..batch).map(|_| 1.0 + rng.uniform() * 0.5).collect(),
    }
}

#[test]
fn sampler_forward_matches_reference_with_penalties_greedy_and_logprobs() {
    let mut rng = Rng(53);
    for (batch, v, nlp) in [
        (1usize, 7usize, 3usize),
        (5, 64, 0),
        (7, 1000, 5),
        (4, 20_000, 20),
        (3, 33, 33),
    ] {
        let bt = vllm_batch(&mut rng, batch, v);
        let owned = Owned::new(&bt.logits, DType::F32, 3);
        let x = owned.view();
        let (tt, pt, mt, prs, frq, rpt) = (
            t(&bt.temp),
            t(&bt.top_p),
            t(&bt.min_p),
            t(&bt.pres),
            t(&bt.freq),
            t(&bt.rep),
        );
        let kt = TensorView::new(&bt.top_k, &[batch]).unwrap();
        let st = TensorView::new(&bt.seeds, &[batch]).unwrap();
        let prompt = TensorView::new(&bt.prompt, &[batch, bt.lp]).unwrap();
        let output = TensorView::new(&bt.output, &[batch, bt.lo]).unwrap();
        let md = SamplingMetadata {
            temperature: Some(PerRow::Tensor(&tt)),
            top_k: Some(PerRow::Tensor(&kt)),
            top_p: Some(PerRow::Tensor(&pt)),
            min_p: Some(PerRow::Tensor(&mt)),
            seed: PerRow::Tensor(&st),
            offset: 12u64.into(),
            prompt_token_ids: Some(&prompt),
            output_token_ids: Some(&output),
            presence_penalties: Some(PerRow::Tensor(&prs)),
            frequency_penalties: Some(PerRow::Tensor(&frq)),
            repetition_penalties: Some(PerRow::Tensor(&rpt)),
            pad_token_id: v as i64,
            max_num_logprobs: Some(nlp),
        };
        let want = reference::sampler_forward(&x, &md);
        for_each_isa(|isa| {
            for threads in [1, 3] {
                let (mut ids, mut lpi, mut lps, mut ranks) = (
                    vec![0i64; batch],
                    vec![0i32; batch * (nlp + 1)],
                    vec![0f32; batch * (nlp + 1)],
                    vec![0i32; batch],
                );
                on(isa, threads, || {
                    sampler_forward(
                        &x,
                        &md,
                        &mut TensorViewMut::new(&mut ids, &[batch, 1]).unwrap(),
                        Some(LogprobsTensorsMut {
                            logprob_token_ids: &mut TensorViewMut::new(&mut lpi, &[batch, nlp + 1])
                                .unwrap(),
                            logprobs: &mut TensorViewMut::new(&mut lps, &[batch, nlp + 1]).unwrap(),
                            selected_token_ranks: &mut TensorViewMut::new(&mut ranks, &[batch])
                                .unwrap(),
                        }),
                    )
                })
                .unwrap();
                let what = format!("B={batch} V={v} on {isa} x{threads}");
                assert_eq!(ids, want.sampled, "{what}: tokens");
                for b in 0..batch {
                    let row = &lpi[b * (nlp + 1)..(b + 1) * (nlp + 1)];
                    assert_eq!(
                        row.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                        want.logprob_token_ids[b],
                        "{what}: ids"
                    );
                    let got: Vec<u32> = lps[b * (nlp + 1)..(b + 1) * (nlp + 1)]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect();
                    let exp: Vec<u32> = want.logprobs[b].iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, exp, "{what}: logprobs of row {b} (fp64 rounded once)");
                    assert_eq!(ranks[b] as i64, want.ranks[b], "{what}: rank of row {b}");
                }
            }
        });
    }
}

#[test]
fn greedy_rows_take_the_first_argmax() {
    let logits = [
        1.0f32, 3.0, 3.0, -2.0, /* */ 0.0, 0.0, 0.0, 0.0, /* */ -5.0, -1.0, -1.0, -9.0,
    ];
    let x = TensorView::new(&logits, &[3, 4]).unwrap();
    for_each_isa(|isa| {
        for md in [
            SamplingMetadata {
                temperature: None,
                ..Default::default()
            },
            SamplingMetadata {
                temperature: Some(0.0f32.into()),
                top_k: Some(1i64.into()),
                ..Default::default()
            },
            SamplingMetadata {
                temperature: Some(9e-6f32.into()),
                top_p: Some(0.1f32.into()),
                ..Default::default()
            },
        ] {
            let mut out = [9i32; 3];
            sampler_forward(
                &x,
                &md,
                &mut TensorViewMut::new(&mut out, &[3]).unwrap(),
                None,
            )
            .unwrap();
            assert_eq!(out, [1, 0, 1], "{isa}");
        }
    });
    // a penalty moves the argmax
    let prompt = [1i64];
    let pt = TensorView::new(&prompt, &[1, 1]).unwrap();
    let md = SamplingMetadata {
        temperature: None,
        prompt_token_ids: Some(&pt),
        repetition_penalties: Some(2.0f32.into()),
        ..Default::default()
    };
    let mut out = [0i64];
    sampler_forward(
        &TensorView::new(&logits[..4], &[1, 4]).unwrap(),
        &md,
        &mut TensorViewMut::new(&mut out, &[1]).unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(out[0], 2);
}

#[test]
fn apply_penalties_matches_vllm_formulas() {
    let mut rng = Rng(61);
    for dtype in DTYPES {
        let (batch, v) = (4usize, 300usize);
        let bt = vllm_batch(&mut rng, batch, v);
        let mut want: Vec<Vec<f32>> = bt.logits.iter().map(|r| rounded(r, dtype)).collect();
        for (b, row) in want.iter_mut().enumerate() {
            let list = |ids: &[i64], n: usize| -> Vec<usize> {
                ids[b * n..(b + 1) * n]
                    .iter()
                    .filter(|&&t| t != v as i64)
                    .map(|&t| t as usize)
                    .collect()
            };
            reference::penalize(
                row,
                &list(&bt.prompt, bt.lp),
                &list(&bt.output, bt.lo),
                bt.pres[b],
                bt.freq[b],
                bt.rep[b],
            );
        }
        let mut owned = Owned::new(&bt.logits, dtype, 0);
        let (ptn, otn) = (
            TensorView::new(&bt.prompt, &[batch, bt.lp]).unwrap(),
            TensorView::new(&bt.output, &[batch, bt.lo]).unwrap(),
        );
        let shape = [batch, v];
        let mut view = match dtype {
            DType::F16 => TensorViewMut::new(&mut owned.h, &shape),
            DType::BF16 => TensorViewMut::new(&mut owned.b, &shape),
            _ => TensorViewMut::new(&mut owned.f, &shape),
        }
        .unwrap();
        apply_penalties(
            &mut view,
            &ptn,
            &otn,
            &t(&bt.pres),
            &t(&bt.freq),
            &t(&bt.rep),
            v as i64,
        )
        .unwrap();
        for (b, row) in want.iter().enumerate() {
            for (i, &w) in row.iter().enumerate() {
                let got = view.get_f32(&[b, i]);
                assert_eq!(
                    got.to_bits(),
                    rounded(&[w], dtype)[0].to_bits(),
                    "{dtype} [{b}, {i}]"
                );
            }
        }
    }
}

// ---- renorm and mask ------------------------------------------------------------

fn t(v: &[f32]) -> TensorView<'_> {
    TensorView::new(v, &[v.len()]).unwrap()
}

fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

#[test]
fn renorm_and_mask_match_reference() {
    let mut rng = Rng(71);
    for (v, case) in [(1usize, 0), (17, 1), (1000, 2), (9000, 3), (40_000, 4)] {
        for dtype in DTYPES {
            let rows = probs_rows(&mut rng, 3, v, dtype);
            let logits: Vec<Vec<f32>> = (0..3)
                .map(|_| rounded(&logits_row(&mut rng, v, 2.0, true, case % 2 == 1), dtype))
                .collect();
            let ks: Vec<i64> = vec![
                1,
                (v as i64 / 3).max(1),
                if case == 4 { 4000 } else { v as i64 + 1 },
            ];
            let ps: Vec<f32> = vec![0.3, 0.9, 1.0];
            let (kt, pt) = (
                TensorView::new(&ks, &[3]).unwrap(),
                TensorView::new(&ps, &[3]).unwrap(),
            );
            let po = Owned::new(&rows, dtype, 2);
            let lo = Owned::new(&logits, dtype, 0);
            for which in 0..3 {
                let src = if which == 2 { &lo } else { &po };
                let mut want = Owned::new(&vec![vec![0.0; v]; 3], dtype, 0);
                {
                    let mut w = match dtype {
                        DType::F16 => TensorViewMut::new(&mut want.h, &[3, v]),
                        DType::BF16 => TensorViewMut::new(&mut want.b, &[3, v]),
                        _ => TensorViewMut::new(&mut want.f, &[3, v]),
                    }
                    .unwrap();
                    let kk: Vec<i64> = ks
                        .iter()
                        .map(|&k| if k >= v as i64 { 0 } else { k })
                        .collect();
                    let kkt = TensorView::new(&kk, &[3]).unwrap();
                    match which {
                        0 => reference::renorm_probs(
                            &src.view(),
                            Some(&PerRow::Tensor(&kkt)),
                            None,
                            &mut w,
                        ),
                        1 => reference::renorm_probs(
                            &src.view(),
                            None,
                            Some(&PerRow::Tensor(&pt)),
                            &mut w,
                        ),
                        _ => {
                            reference::top_k_mask_logits(&src.view(), &PerRow::Tensor(&kkt), &mut w)
                        }
                    }
                }
                let want_v = want.view();
                for_each_isa(|isa| {
                    for threads in [1, 3] {
                        let mut got = Owned::new(&vec![vec![7.0; v]; 3], dtype, 0);
                        let mut g = match dtype {
                            DType::F16 => TensorViewMut::new(&mut got.h, &[3, v]),
                            DType::BF16 => TensorViewMut::new(&mut got.b, &[3, v]),
                            _ => TensorViewMut::new(&mut got.f, &[3, v]),
                        }
                        .unwrap();
                        on(isa, threads, || match which {
                            0 => top_k_renorm_probs(&src.view(), PerRow::Tensor(&kt), &mut g),
                            1 => top_p_renorm_probs(&src.view(), PerRow::Tensor(&pt), &mut g),
                            _ => top_k_mask_logits(&src.view(), PerRow::Tensor(&kt), &mut g),
                        })
                        .unwrap();
                        for r in 0..3 {
                            for i in 0..v {
                                let (a, b) = (g.get_f32(&[r, i]), want_v.get_f32(&[r, i]));
                                let ok = if which == 2 || b == 0.0 {
                                    a.to_bits() == b.to_bits()
                                } else {
                                    ulps(a, b) <= 1
                                };
                                assert!(ok, "op {which} {dtype} V={v} on {isa}: [{r}, {i}] = {a}, reference {b}");
                            }
                        }
                    }
                });
            }
        }
    }
}

// ---- bad input: a named error, outputs untouched ---------------------------------

fn expect_err(r: Result<()>, status: Status, needle: &str) {
    match r {
        Ok(()) => panic!("expected {status:?} ({needle}), got Ok"),
        Err(e) => {
            assert_eq!(e.status, status, "{e}");
            assert!(
                e.message.contains(needle),
                "message {:?} should mention {needle:?}",
                e.message
            );
        }
    }
}

#[test]
fn bad_flashinfer_inputs_are_named_errors_and_leave_outputs_untouched() {
    let good = [0.25f32, 0.25, 0.5, 0.0, 0.1, 0.2, 0.3, 0.4];
    let x = TensorView::new(&good, &[2, 4]).unwrap();
    let sentinel = [-5i32; 2];
    let run = |f: &dyn Fn(&mut TensorViewMut) -> Result<()>, status, needle| {
        let mut out = sentinel;
        expect_err(
            f(&mut TensorViewMut::new(&mut out, &[2]).unwrap()),
            status,
            needle,
        );
        assert_eq!(out, sentinel, "output written on error ({needle})");
    };
    let s = || PerRow::Scalar(1u64);
    // NaN / inf / negative / sum rows
    let mut nan = good;
    nan[5] = f32::NAN;
    let xn = TensorView::new(&nan, &[2, 4]).unwrap();
    run(
        &|o| sampling_from_probs(&xn, None, s(), s(), o),
        Status::InvalidValue,
        "row 1 contains NaN",
    );
    run(
        &|o| top_k_sampling_from_probs(&xn, 2i64.into(), None, s(), s(), o),
        Status::InvalidValue,
        "NaN",
    );
    let mut neg = good;
    neg[0] = -0.25;
    neg[1] = 0.75;
    let xg = TensorView::new(&neg, &[2, 4]).unwrap();
    run(
        &|o| top_p_sampling_from_probs(&xg, 0.9f32.into(), None, s(), s(), o),
        Status::InvalidValue,
        "negative",
    );
    let mut half = good;
    half[2] = 0.0; // row 0 sums to 0.5
    let xh = TensorView::new(&half, &[2, 4]).unwrap();
    run(
        &|o| min_p_sampling_from_probs(&xh, 0.1f32.into(), None, s(), s(), o),
        Status::InvalidValue,
        "row 0 sums to 0.5",
    );
    let mut off = good;
    off[7] = 0.405; // f32 row summing to 1.005: outside 1e-3
    let xo = TensorView::new(&off, &[2, 4]).unwrap();
    run(
        &|o| sampling_from_probs(&xo, None, s(), s(), o),
        Status::InvalidValue,
        "sums to 1.005",
    );
    let offb: Vec<bf16> = off.iter().map(|&v| bf16::from_f32(v)).collect();
    let mut ok = [0i32; 2];
    sampling_from_probs(
        &TensorView::new(&offb, &[2, 4]).unwrap(),
        None,
        s(),
        s(),
        &mut TensorViewMut::new(&mut ok, &[2]).unwrap(),
    )
    .expect("a bf16 row 0.005 off 1 is within the bf16 tolerance");
    let inf_logits = [0.0f32, f32::INFINITY, 1.0, 2.0];
    let xi = TensorView::new(&inf_logits, &[1, 4]).unwrap();
    let mut o1 = [-5i32];
    expect_err(
        sampling_from_logits(
            &xi,
            None,
            s(),
            s(),
            &mut TensorViewMut::new(&mut o1, &[1]).unwrap(),
        ),
        Status::InvalidValue,
        "+inf",
    );
    let ninf = [f32::NEG_INFINITY; 4];
    let xni = TensorView::new(&ninf, &[1, 4]).unwrap();
    expect_err(
        sampling_from_logits(
            &xni,
            None,
            s(),
            s(),
            &mut TensorViewMut::new(&mut o1, &[1]).unwrap(),
        ),
        Status::InvalidValue,
        "no finite logit",
    );
    assert_eq!(o1, [-5]);
    // parameters
    run(
        &|o| top_k_sampling_from_probs(&x, 0i64.into(), None, s(), s(), o),
        Status::InvalidValue,
        "top_k[0] = 0",
    );
    run(
        &|o| top_k_sampling_from_probs(&x, (-1i64).into(), None, s(), s(), o),
        Status::InvalidValue,
        "top_k",
    );
    for p in [0.0f32, 1.5, -0.1, f32::NAN] {
        run(
            &|o| top_p_sampling_from_probs(&x, p.into(), None, s(), s(), o),
            Status::InvalidValue,
            "top_p must be in (0, 1]",
        );
    }
    run(
        &|o| min_p_sampling_from_probs(&x, 1.5f32.into(), None, s(), s(), o),
        Status::InvalidValue,
        "min_p",
    );
    run(
        &|o| {
            top_k_top_p_sampling_from_probs(
                &x,
                2i64.into(),
                0.5f32.into(),
                None,
                "bogus",
                s(),
                s(),
                o,
            )
        },
        Status::InvalidArgument,
        "filter_apply_order",
    );
    let ks = [1i64, 2, 3];
    let kt = TensorView::new(&ks, &[3]).unwrap();
    run(
        &|o| top_k_sampling_from_probs(&x, PerRow::Tensor(&kt), None, s(), s(), o),
        Status::ShapeMismatch,
        "top_k",
    );
    let seeds = [1i32, 2];
    let st = TensorView::new(&seeds, &[2]).unwrap();
    run(
        &|o| sampling_from_probs(&x, None, PerRow::Tensor(&st), s(), o),
        Status::DtypeMismatch,
        "seed",
    );
    // indices, shapes, dtypes
    let ix = [0i64, 2];
    let ixt = TensorView::new(&ix, &[2]).unwrap();
    run(
        &|o| sampling_from_probs(&x, Some(&ixt), s(), s(), o),
        Status::IndexOutOfRange,
        "indices[1] = 2",
    );
    let flat = TensorView::new(&good, &[8]).unwrap();
    run(
        &|o| sampling_from_probs(&flat, None, s(), s(), o),
        Status::ShapeMismatch,
        "probs",
    );
    let ints = [1i32; 8];
    let xint = TensorView::new(&ints, &[2, 4]).unwrap();
    run(
        &|o| sampling_from_probs(&xint, None, s(), s(), o),
        Status::DtypeMismatch,
        "probs",
    );
    let empty: [f32; 0] = [];
    let xe = TensorView::new(&empty, &[2, 0]).unwrap();
    run(
        &|o| sampling_from_probs(&xe, None, s(), s(), o),
        Status::ShapeMismatch,
        "vocab_size 0",
    );
    let mut wrong = [0i32; 3];
    expect_err(
        sampling_from_probs(
            &x,
            None,
            s(),
            s(),
            &mut TensorViewMut::new(&mut wrong, &[3]).unwrap(),
        ),
        Status::ShapeMismatch,
        "samples",
    );
    let mut wrongf = [0f32; 2];
    expect_err(
        sampling_from_probs(
            &x,
            None,
            s(),
            s(),
            &mut TensorViewMut::new(&mut wrongf, &[2]).unwrap(),
        ),
        Status::DtypeMismatch,
        "samples",
    );
    // an output that overlaps the input
    let mut buf = [0.25f32, 0.25, 0.25, 0.25, 0.0, 0.0];
    let p = buf.as_mut_ptr() as *mut u8;
    // SAFETY: deliberately aliased views; the op must refuse them before any access.
    let (xa, mut oa) = unsafe {
        (
            TensorView::from_raw(p, Layout::contiguous(DType::F32, &[1, 4])),
            TensorViewMut::from_raw(p.add(12), Layout::contiguous(DType::I32, &[1])),
        )
    };
    expect_err(
        sampling_from_probs(&xa, None, s(), s(), &mut oa),
        Status::Aliasing,
        "samples",
    );
    assert_eq!(buf[3], 0.25);
}

#[test]
fn bad_filter_and_vllm_inputs_are_named_errors_and_leave_outputs_untouched() {
    // renorm / mask: a NaN row leaves the whole output untouched
    let mut probs = [0.5f32, 0.5, 0.25, 0.75];
    probs[3] = f32::NAN;
    let mut out = [9f32; 4];
    expect_err(
        top_k_renorm_probs(
            &TensorView::new(&probs, &[2, 2]).unwrap(),
            1i64.into(),
            &mut TensorViewMut::new(&mut out, &[2, 2]).unwrap(),
        ),
        Status::InvalidValue,
        "row 1 contains NaN",
    );
    assert_eq!(out, [9.0; 4]);
    expect_err(
        top_p_renorm_probs(
            &TensorView::new(&[0.5f32, 0.5], &[1, 2]).unwrap(),
            0.0f32.into(),
            &mut TensorViewMut::new(&mut out[..2], &[1, 2]).unwrap(),
        ),
        Status::InvalidValue,
        "top_p",
    );
    let mut outh = [f16::ZERO; 4];
    expect_err(
        top_k_mask_logits(
            &TensorView::new(&[1.0f32; 4], &[2, 2]).unwrap(),
            1i64.into(),
            &mut TensorViewMut::new(&mut outh, &[2, 2]).unwrap(),
        ),
        Status::DtypeMismatch,
        "masked_logits",
    );
    // in place is allowed
    let mut inplace = [1.0f32, 3.0, 2.0, 0.0];
    let ptr = inplace.as_mut_ptr() as *mut u8;
    // SAFETY: the op allows an identical input and output view.
    let (xi, mut oi) = unsafe {
        (
            TensorView::from_raw(ptr, Layout::contiguous(DType::F32, &[1, 4])),
            TensorViewMut::from_raw(ptr, Layout::contiguous(DType::F32, &[1, 4])),
        )
    };
    top_k_mask_logits(&xi, 2i64.into(), &mut oi).unwrap();
    assert_eq!(inplace, [f32::NEG_INFINITY, 3.0, 2.0, f32::NEG_INFINITY]);

    // vLLM sampler
    let logits = [0.5f32, 1.0, 2.0, 0.0, 1.0, -1.0];
    let x = TensorView::new(&logits, &[2, 3]).unwrap();
    let sentinel = [-3i64; 2];
    let run = |md: &SamplingMetadata, status, needle: &str| {
        let mut o = sentinel;
        expect_err(
            sampler_forward(&x, md, &mut TensorViewMut::new(&mut o, &[2]).unwrap(), None),
            status,
            needle,
        );
        assert_eq!(o, sentinel, "output written on error ({needle})");
    };
    run(
        &SamplingMetadata {
            temperature: Some((-0.5f32).into()),
            ..Default::default()
        },
        Status::InvalidValue,
        "temperature",
    );
    run(
        &SamplingMetadata {
            temperature: Some(f32::NAN.into()),
            ..Default::default()
        },
        Status::InvalidValue,
        "temperature",
    );
    run(
        &SamplingMetadata {
            top_k: Some((-2i64).into()),
            ..Default::default()
        },
        Status::InvalidValue,
        "top_k[0] = -2",
    );
    run(
        &SamplingMetadata {
            top_p: Some(1.01f32.into()),
            ..Default::default()
        },
        Status::InvalidValue,
        "top_p",
    );
    run(
        &SamplingMetadata {
            min_p: Some((-0.1f32).into()),
            ..Default::default()
        },
        Status::InvalidValue,
        "min_p",
    );
    run(
        &SamplingMetadata {
            repetition_penalties: Some(0.0f32.into()),
            ..Default::default()
        },
        Status::InvalidValue,
        "repetition_penalties",
    );
    run(
        &SamplingMetadata {
            max_num_logprobs: Some(4),
            ..Default::default()
        },
        Status::Unsupported,
        "max_num_logprobs",
    );
    let bad_ids = [0i64, 3, 1, -1];
    let bt = TensorView::new(&bad_ids, &[2, 2]).unwrap();
    run(
        &SamplingMetadata {
            output_token_ids: Some(&bt),
            ..Default::default()
        },
        Status::IndexOutOfRange,
        "output_token_ids[0, 1] = 3",
    );
    run(
        &SamplingMetadata {
            prompt_token_ids: Some(&bt),
            pad_token_id: 3,
            ..Default::default()
        },
        Status::IndexOutOfRange,
        "prompt_token_ids[1, 1] = -1",
    );
    // vLLM's padding (vocab_size) is accepted when named
    let padded = [0i64, 3, 1, 3];
    let pt = TensorView::new(&padded, &[2, 2]).unwrap();
    let mut o = [0i64; 2];
    sampler_forward(
        &x,
        &SamplingMetadata {
            prompt_token_ids: Some(&pt),
            pad_token_id: 3,
            ..Default::default()
        },
        &mut TensorViewMut::new(&mut o, &[2]).unwrap(),
        None,
    )
    .unwrap();
    let mut nan = logits;
    nan[4] = f32::NAN;
    let mut o2 = sentinel;
    expect_err(
        sampler_forward(
            &TensorView::new(&nan, &[2, 3]).unwrap(),
            &SamplingMetadata::default(),
            &mut TensorViewMut::new(&mut o2, &[2]).unwrap(),
            None,
        ),
        Status::InvalidValue,
        "row 1 contains NaN",
    );
    assert_eq!(o2, sentinel);
    // logprob outputs with the wrong width
    let (mut a, mut b, mut c) = ([0i32; 4], [0f32; 4], [0i32; 2]);
    let mut o3 = sentinel;
    expect_err(
        sampler_forward(
            &x,
            &SamplingMetadata {
                max_num_logprobs: Some(2),
                ..Default::default()
            },
            &mut TensorViewMut::new(&mut o3, &[2]).unwrap(),
            Some(LogprobsTensorsMut {
                logprob_token_ids: &mut TensorViewMut::new(&mut a, &[2, 2]).unwrap(),
                logprobs: &mut TensorViewMut::new(&mut b, &[2, 2]).unwrap(),
                selected_token_ranks: &mut TensorViewMut::new(&mut c, &[2]).unwrap(),
            }),
        ),
        Status::ShapeMismatch,
        "logprob_token_ids",
    );
    assert_eq!(o3, sentinel);
}

/// Each sampling op call becomes one trace event (XPU_OPS_TRACE).
#[test]
fn sampling_ops_are_traced() {
    let path = std::env::temp_dir().join(format!(
        "xpu_ops_sampling_trace_{}.json",
        std::process::id()
    ));
    // A vocabulary no other test uses, so events of concurrent tests are told apart.
    let v = 37usize;
    let probs = vec![1.0f32 / v as f32; 2 * v];
    let logits = vec![0.5f32; 2 * v];
    let x = TensorView::new(&probs, &[2, v]).unwrap();
    let l = TensorView::new(&logits, &[2, v]).unwrap();
    let mut out = [0i32; 2];
    let mut o2 = vec![0f32; 2 * v];
    let mut pen = logits.clone();
    let ids = [0i64, 1];
    let idt = TensorView::new(&ids, &[2, 1]).unwrap();
    let one = [1.0f32; 2];
    let onet = TensorView::new(&one, &[2]).unwrap();
    let s = || PerRow::Scalar(3u64);
    xpu_ops::trace::set_trace_file(Some(&path)).unwrap();
    sampling_from_probs(
        &x,
        None,
        s(),
        s(),
        &mut TensorViewMut::new(&mut out, &[2]).unwrap(),
    )
    .unwrap();
    sampling_from_logits(
        &l,
        None,
        s(),
        s(),
        &mut TensorViewMut::new(&mut out, &[2]).unwrap(),
    )
    .unwrap();
    top_p_sampling_from_probs(
        &x,
        0.5f32.into(),
        None,
        s(),
        s(),
        &mut TensorViewMut::new(&mut out, &[2]).unwrap(),
    )
    .unwrap();
    top_k_sampling_from_probs(
        &x,
        3i64.into(),
        None,
        s(),
        s(),
        &mut TensorViewMut::new(&mut out, &[2]).unwrap(),
    )
    .unwrap();
    min_p_sampling_from_probs(
        &x,
        0.1f32.into(),
        None,
        s(),
        s(),
        &mut TensorViewMut::new(&mut out, &[2]).unwrap(),
    )
    .unwrap();
    top_k_top_p_sampling_from_probs(
        &x,
        3i64.into(),
        0.5f32.into(),
        None,
        "joint",
        s(),
        s(),
        &mut TensorViewMut::new(&mut out, &[2]).unwrap(),
    )
    .unwrap();
    top_k_top_p_sampling_from_logits(
        &l,
        3i64.into(),
        0.5f32.into(),
        None,
        "top_k_first",
        s(),
        s(),
        &mut TensorViewMut::new(&mut out, &[2]).unwrap(),
    )
    .unwrap();
    top_k_renorm_probs(
        &x,
        3i64.into(),
        &mut TensorViewMut::new(&mut o2, &[2, v]).unwrap(),
    )
    .unwrap();
    top_p_renorm_probs(
        &x,
        0.5f32.into(),
        &mut TensorViewMut::new(&mut o2, &[2, v]).unwrap(),
    )
    .unwrap();
    top_k_mask_logits(
        &l,
        3i64.into(),
        &mut TensorViewMut::new(&mut o2, &[2, v]).unwrap(),
    )
    .unwrap();
    apply_penalties(
        &mut TensorViewMut::new(&mut pen, &[2, v]).unwrap(),
        &idt,
        &idt,
        &onet,
        &onet,
        &onet,
        -1,
    )
    .unwrap();
    sampler_forward(
        &l,
        &SamplingMetadata::default(),
        &mut TensorViewMut::new(&mut out, &[2]).unwrap(),
        None,
    )
    .unwrap();
    xpu_ops::trace::set_trace_file(None).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    for name in [
        "sampling_from_probs",
        "sampling_from_logits",
        "top_p_sampling_from_probs",
        "top_k_sampling_from_probs",
        "min_p_sampling_from_probs",
        "top_k_top_p_sampling_from_probs",
        "top_k_top_p_sampling_from_logits",
        "top_k_renorm_probs",
        "top_p_renorm_probs",
        "top_k_mask_logits",
        "apply_penalties",
        "sampler_forward",
    ] {
        let n = text
            .lines()
            .filter(|l| l.contains(&format!("\"name\":\"{name}\"")) && l.contains("float32[2, 37]"))
            .count();
        assert_eq!(n, 1, "{name}: {text}");
    }
}

// ---- proptest: tie-heavy rows, every op, every tier ----------------------------

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// Values drawn from a handful of levels (many exact ties, -inf in logits),
        /// random filters: every op on every tier equals the reference.
        #[test]
        fn ops_match_reference_on_tie_heavy_rows(
            vocab in 1usize..300,
            rows in 1usize..4,
            levels in proptest::collection::vec(-4.0f32..4.0, 1..6),
            picks in proptest::collection::vec(0usize..64, 1200),
            op_ix in 0usize..9,
            k in 1i64..320,
            p in 0.01f32..1.0,
            minp in 0.0f32..0.9,
            seed in any::<u64>(),
            offset in 0u64..64,
            dtype_ix in 0usize..3,
        ) {
            let op = Op::ALL[op_ix];
            let dtype = DTYPES[dtype_ix];
            let data: Vec<Vec<f32>> = (0..rows)
                .map(|r| {
                    let x: Vec<f32> = (0..vocab)
                        .map(|i| {
                            let l = picks[(r * vocab + i) % picks.len()] % (levels.len() + 1);
                            if l == levels.len() { f32::NEG_INFINITY } else { levels[l] }
                        })
                        .collect();
                    let x = if x.iter().all(|v| !v.is_finite()) { vec![0.0; vocab] } else { x };
                    if op.logits() { rounded(&x, dtype) } else { rounded(&softmax32(&x), dtype) }
                })
                .collect();
            let ok = op.logits() || data.iter().all(|r| {
                (r.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() <= probs_sum_tolerance(dtype) * 0.5
            });
            prop_assume!(ok);
            let owned = Owned::new(&data, dtype, 1);
            let x = owned.view();
            let params = Params {
                top_k: k.into(),
                top_p: p.into(),
                min_p: minp.into(),
                indices: None,
                seed: seed.into(),
                offset: offset.into(),
            };
            check_op(op, &x, &params, rows, "proptest");
        }
    }
}

#[test]
fn empty_batches_are_fine() {
    let probs: [f32; 0] = [];
    let x = TensorView::new(&probs, &[0, 5]).unwrap();
    let mut out: [i32; 0] = [];
    for_each_isa(|_| {
        top_k_top_p_sampling_from_probs(
            &x,
            2i64.into(),
            0.5f32.into(),
            None,
            "top_k_first",
            1u64.into(),
            0u64.into(),
            &mut TensorViewMut::new(&mut out, &[0]).unwrap(),
        )
        .unwrap();
        let md = SamplingMetadata::default();
        sampler_forward(
            &x,
            &md,
            &mut TensorViewMut::new(&mut out, &[0]).unwrap(),
            None,
        )
        .unwrap();
    });
}
