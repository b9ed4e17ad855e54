//! Alignment cases of the sampling family (Qwen3 / Qwen3.5 vocabularies,
//! PERF.md batch, top-k, top-p and min-p): sampled token ids of every
//! FlashInfer sampler, from logits or from probabilities, and of vLLM's
//! sampler (exact: the kernel and the reference compute the same function
//! of the same Philox words), raw logprobs against the fp64 log-softmax
//! rounded once to f32 (exact), top-k / top-p renormalised probabilities
//! (1 ulp: the kernel multiplies by the reciprocal of a differently ordered
//! fp64 sum), top-k masked logits and penalised logits (exact: vLLM's f32
//! arithmetic).

use super::{unit, values, AlignCase, Tolerance};
use crate::ops::sampling::{PerRow, SamplingMetadata};
use crate::reference::sampling as reference;
use crate::tensor::{TensorView, TensorViewMut};

/// LLM-like logits: a spread background with a few clear favourites.
fn logits(rows: usize, vocab: usize, seed: u64) -> Vec<f32> {
    let mut next = unit(seed);
    let mut x: Vec<f32> = (0..rows * vocab)
        .map(|_| (next() * 2.0 - 1.0) * 6.0)
        .collect();
    for r in 0..rows {
        for _ in 0..6 {
            let i = (next() * vocab as f32) as usize % vocab;
            x[r * vocab + i] = 10.0 + 6.0 * next();
        }
    }
    x
}

/// The softmax of [`logits`], each row from its fp64 log-softmax rounded
/// once to f32 (rows sum to 1 well within the samplers' check).
fn probs(rows: usize, vocab: usize, seed: u64) -> Vec<f32> {
    let x = logits(rows, vocab, seed);
    x.chunks(vocab)
        .flat_map(|row| {
            reference::log_softmax(row)
                .into_iter()
                .map(|v| v.exp() as f32)
        })
        .collect()
}

const ULP: Tolerance = Tolerance {
    atol: 1e-30,
    rtol: 1.0 / (1u64 << 23) as f64,
};

fn ids(v: &[i64]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// A FlashInfer sampler's filters: top-k 0, top-p 1 and min-p 0 are off.
#[derive(Clone, Copy)]
struct Filters {
    top_k: i64,
    top_p: f32,
    min_p: f32,
    joint: bool,
}

const NO_FILTER: Filters = Filters {
    top_k: 0,
    top_p: 1.0,
    min_p: 0.0,
    joint: false,
};

/// Token ids of the FlashInfer sampler `op` (from logits when its name says
/// so, else from probabilities) with per-row seeds.
fn sample_case(op: &'static str, rows: usize, vocab: usize, f: Filters) -> AlignCase {
    let from_logits = op.ends_with("logits");
    let run = move || {
        let x = if from_logits {
            logits(rows, vocab, 11)
        } else {
            probs(rows, vocab, 11)
        };
        let xv = TensorView::new(&x, &[rows, vocab]).expect("valid case");
        let seeds: Vec<i64> = (0..rows as i64).map(|r| 1000 + r).collect();
        let st = TensorView::new(&seeds, &[rows]).expect("valid case");
        let (seed, offset) = (PerRow::Tensor(&st), PerRow::Scalar(8u64));
        let (mut got, mut want) = (vec![0i64; rows], vec![0i64; rows]);
        let mut out = TensorViewMut::new(&mut got, &[rows]).expect("valid case");
        let (k, p, mp) = (f.top_k.into(), f.top_p.into(), f.min_p.into());
        let order = if f.joint { "joint" } else { "top_k_first" };
        match op {
            "sampling_from_logits" => {
                crate::sampling_from_logits(&xv, None, seed, offset, &mut out)
            }
            "sampling_from_probs" => crate::sampling_from_probs(&xv, None, seed, offset, &mut out),
            "top_k_sampling_from_probs" => {
                crate::top_k_sampling_from_probs(&xv, k, None, seed, offset, &mut out)
            }
            "top_p_sampling_from_probs" => {
                crate::top_p_sampling_from_probs(&xv, p, None, seed, offset, &mut out)
            }
            "min_p_sampling_from_probs" => {
                crate::min_p_sampling_from_probs(&xv, mp, None, seed, offset, &mut out)
            }
            "top_k_top_p_sampling_from_probs" => crate::top_k_top_p_sampling_from_probs(
                &xv, k, p, None, order, seed, offset, &mut out,
            ),
            "top_k_top_p_sampling_from_logits" => crate::top_k_top_p_sampling_from_logits(
                &xv, k, p, None, order, seed, offset, &mut out,
            ),
            other => unreachable!("no sampler {other}"),
        }
        .expect("valid case");
        // The launchers map top_k >= vocab to "off".
        let kk = if (f.top_k as usize) < vocab {
            f.top_k
        } else {
            0
        };
        reference::flashinfer_sample(
            &xv,
            from_logits,
            Some(&PerRow::Scalar(kk)),
            Some(&PerRow::Scalar(f.top_p)),
            Some(&PerRow::Scalar(f.min_p)),
            None,
            f.joint,
            &seed,
            &offset,
            &mut TensorViewMut::new(&mut want, &[rows]).expect("valid case"),
        );
        (ids(&got), ids(&want))
    };
    let mut shape = format!("B={rows} V={vocab}");
    if f.top_k > 0 {
        shape += &format!(" k={}", f.top_k);
    }
    if f.top_p < 1.0 {
        shape += &format!(" p={}", f.top_p);
    }
    if f.min_p > 0.0 {
        shape += &format!(" min_p={}", f.min_p);
    }
    if f.joint {
        shape += " joint";
    }
    AlignCase {
        op,
        shape: shape + " ids",
        tolerance: Tolerance::EXACT,
        run: Box::new(run),
    }
}

/// vLLM's sampler with raw logprobs: `which` 0 = token ids, 1 = logprobs.
fn sampler_case(rows: usize, vocab: usize, n: usize, which: usize) -> AlignCase {
    let run = move || {
        let x = logits(rows, vocab, 21);
        let xv = TensorView::new(&x, &[rows, vocab]).expect("valid case");
        let temp: Vec<f32> = (0..rows).map(|r| [0.0, 0.7, 1.0, 1.3][r % 4]).collect();
        let tt = TensorView::new(&temp, &[rows]).expect("valid case");
        let md = SamplingMetadata {
            temperature: Some(PerRow::Tensor(&tt)),
            top_k: Some(50i64.into()),
            top_p: Some(0.9f32.into()),
            min_p: Some(0.02f32.into()),
            seed: 5u64.into(),
            offset: 4u64.into(),
            max_num_logprobs: Some(n),
            ..Default::default()
        };
        let (mut tok, mut lpi, mut lps, mut rk) = (
            vec![0i64; rows],
            vec![0i64; rows * (n + 1)],
            vec![0f32; rows * (n + 1)],
            vec![0i64; rows],
        );
        crate::sampler_forward(
            &xv,
            &md,
            &mut TensorViewMut::new(&mut tok, &[rows]).expect("valid case"),
            Some(crate::LogprobsTensorsMut {
                logprob_token_ids: &mut TensorViewMut::new(&mut lpi, &[rows, n + 1])
                    .expect("valid case"),
                logprobs: &mut TensorViewMut::new(&mut lps, &[rows, n + 1]).expect("valid case"),
                selected_token_ranks: &mut TensorViewMut::new(&mut rk, &[rows])
                    .expect("valid case"),
            }),
        )
        .expect("valid case");
        let want = reference::sampler_forward(&xv, &md);
        if which == 0 {
            let mut g = ids(&tok);
            g.extend(ids(&rk));
            let mut w = ids(&want.sampled);
            w.extend(ids(&want.ranks));
            (g, w)
        } else {
            // the fp64 log-softmax of the returned ids, rounded once to f32 (the ids: the other case)
            let got: Vec<f64> = lps.iter().map(|&v| v as f64).collect();
            let mut w = Vec::with_capacity(got.len());
            for r in 0..rows {
                let lp = reference::log_softmax(&x[r * vocab..(r + 1) * vocab]);
                for j in 0..=n {
                    w.push(lp[lpi[r * (n + 1) + j] as usize] as f32 as f64);
                }
            }
            (got, w)
        }
    };
    AlignCase {
        op: "sampler_forward",
        shape: format!(
            "B={rows} V={vocab} {}",
            if which == 0 { "ids+ranks" } else { "logprobs" }
        ),
        tolerance: Tolerance::EXACT,
        run: Box::new(run),
    }
}

/// `top_k_renorm_probs` (with `top_k` > 0) or `top_p_renorm_probs`.
fn renorm_case(rows: usize, vocab: usize, top_k: i64, top_p: f32) -> AlignCase {
    let run = move || {
        let probs = probs(rows, vocab, 31);
        let pv = TensorView::new(&probs, &[rows, vocab]).expect("valid case");
        let (mut got, mut want) = (vec![0f32; probs.len()], vec![0f32; probs.len()]);
        let mut out = TensorViewMut::new(&mut got, &[rows, vocab]).expect("valid case");
        if top_k > 0 {
            crate::top_k_renorm_probs(&pv, top_k.into(), &mut out)
        } else {
            crate::top_p_renorm_probs(&pv, top_p.into(), &mut out)
        }
        .expect("valid case");
        reference::renorm_probs(
            &pv,
            (top_k > 0).then_some(&PerRow::Scalar(top_k)),
            (top_k == 0).then_some(&PerRow::Scalar(top_p)),
            &mut TensorViewMut::new(&mut want, &[rows, vocab]).expect("valid case"),
        );
        let f = |v: Vec<f32>| v.into_iter().map(|x| x as f64).collect();
        (f(got), f(want))
    };
    AlignCase {
        op: if top_k > 0 {
            "top_k_renorm_probs"
        } else {
            "top_p_renorm_probs"
        },
        shape: if top_k > 0 {
            format!("B={rows} V={vocab} k={top_k}")
        } else {
            format!("B={rows} V={vocab} p={top_p}")
        },
        tolerance: ULP,
        run: Box::new(run),
    }
}

/// vLLM's penalties on f32 logits: `prompt` / `output` token lists per row
/// (padded with `vocab`, row `b` shorter by 16·b), output ids drawn from
/// the first 4096 so tokens repeat (frequency counts > 1).
fn penalties_case(rows: usize, vocab: usize, prompt: usize, output: usize) -> AlignCase {
    let run = move || {
        let x = logits(rows, vocab, 51);
        let tokens = |len: usize, hi: usize, seed: u64| -> Vec<i64> {
            let ids = values(rows * len, seed, 0.0, hi as f32);
            (0..rows * len)
                .map(|i| {
                    if i % len < len.saturating_sub(16 * (i / len)) {
                        (ids[i] as usize).min(hi - 1) as i64
                    } else {
                        vocab as i64
                    }
                })
                .collect()
        };
        let (pt, ot) = (tokens(prompt, vocab, 52), tokens(output, 4096, 53));
        let pres = values(rows, 54, 0.0, 1.0);
        let freq = values(rows, 55, 0.0, 1.0);
        let rep = values(rows, 56, 1.0, 2.0);
        let mut got = x.clone();
        crate::apply_penalties(
            &mut TensorViewMut::new(&mut got, &[rows, vocab]).expect("valid case"),
            &TensorView::new(&pt, &[rows, prompt]).expect("valid case"),
            &TensorView::new(&ot, &[rows, output]).expect("valid case"),
            &TensorView::new(&pres, &[rows]).expect("valid case"),
            &TensorView::new(&freq, &[rows]).expect("valid case"),
            &TensorView::new(&rep, &[rows]).expect("valid case"),
            vocab as i64,
        )
        .expect("valid case");
        let mut want = x;
        for (b, row) in want.chunks_mut(vocab).enumerate() {
            let list = |t: &[i64], len: usize| -> Vec<usize> {
                t[b * len..(b + 1) * len]
                    .iter()
                    .filter(|&&id| id != vocab as i64)
                    .map(|&id| id as usize)
                    .collect()
            };
            let (p, o) = (list(&pt, prompt), list(&ot, output));
            reference::penalize(row, &p, &o, pres[b], freq[b], rep[b]);
        }
        let f = |v: Vec<f32>| v.into_iter().map(|x| x as f64).collect();
        (f(got), f(want))
    };
    AlignCase {
        op: "apply_penalties",
        shape: format!("B={rows} V={vocab} prompt={prompt} out={output} f32"),
        tolerance: Tolerance::EXACT,
        run: Box::new(run),
    }
}

fn mask_case(rows: usize, vocab: usize, k: i64) -> AlignCase {
    let run = move || {
        let x = logits(rows, vocab, 41);
        let xv = TensorView::new(&x, &[rows, vocab]).expect("valid case");
        let (mut got, mut want) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        crate::top_k_mask_logits(
            &xv,
            k.into(),
            &mut TensorViewMut::new(&mut got, &[rows, vocab]).expect("valid case"),
        )
        .expect("valid case");
        reference::top_k_mask_logits(
            &xv,
            &PerRow::Scalar(k),
            &mut TensorViewMut::new(&mut want, &[rows, vocab]).expect("valid case"),
        );
        let f = |v: Vec<f32>| v.into_iter().map(|x| x as f64).collect();
        (f(got), f(want))
    };
    AlignCase {
        op: "top_k_mask_logits",
        shape: format!("B={rows} V={vocab} k={k}"),
        tolerance: Tolerance::EXACT,
        run: Box::new(run),
    }
}

pub(super) fn cases() -> Vec<AlignCase> {
    let f = |top_k: i64, top_p: f32, min_p: f32, joint: bool| Filters {
        top_k,
        top_p,
        min_p,
        joint,
    };
    vec![
        sample_case("sampling_from_logits", 8, 151_936, NO_FILTER),
        sample_case("sampling_from_probs", 8, 248_320, NO_FILTER),
        sample_case(
            "top_k_sampling_from_probs",
            8,
            151_936,
            f(20, 1.0, 0.0, false),
        ),
        sample_case(
            "top_p_sampling_from_probs",
            8,
            151_936,
            f(0, 0.95, 0.0, false),
        ),
        sample_case(
            "min_p_sampling_from_probs",
            8,
            248_320,
            f(0, 1.0, 0.05, false),
        ),
        sample_case(
            "top_k_top_p_sampling_from_probs",
            8,
            151_936,
            f(50, 0.8, 0.0, false),
        ),
        sample_case(
            "top_k_top_p_sampling_from_probs",
            4,
            248_320,
            f(20, 0.9, 0.0, true),
        ),
        sample_case(
            "top_k_top_p_sampling_from_logits",
            8,
            151_936,
            f(20, 0.95, 0.0, false),
        ),
        sample_case(
            "top_k_top_p_sampling_from_logits",
            4,
            248_320,
            f(50, 0.8, 0.0, false),
        ),
        sampler_case(4, 151_936, 20, 0),
        sampler_case(4, 151_936, 20, 1),
        renorm_case(2, 151_936, 0, 0.9),
        renorm_case(2, 248_320, 50, 1.0),
        mask_case(2, 248_320, 50),
        penalties_case(8, 151_936, 512, 256),
    ]
}
