//! Alignment cases of the sampling family (Qwen3 / Qwen3.5 vocabularies):
//! sampled token ids of top-k + top-p from logits and of vLLM's sampler
//! (exact: the kernel and the reference compute the same function of the
//! same Philox words), raw logprobs against the fp64 log-softmax rounded
//! once to f32 (exact), top-p renormalised probabilities (1 ulp: the kernel
//! multiplies by the reciprocal of a differently ordered fp64 sum) and top-k
//! masked logits (exact).

use super::{AlignCase, Tolerance};
use crate::ops::sampling::{PerRow, SamplingMetadata};
use crate::reference::sampling as reference;
use crate::tensor::{TensorView, TensorViewMut};

/// LLM-like logits: a spread background with a few clear favourites.
fn logits(rows: usize, vocab: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
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

const ULP: Tolerance = Tolerance {
    atol: 1e-30,
    rtol: 1.0 / (1u64 << 23) as f64,
};

fn ids(v: &[i64]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn top_k_top_p_case(rows: usize, vocab: usize, k: i64, p: f32) -> AlignCase {
    let run = move || {
        let x = logits(rows, vocab, 11);
        let xv = TensorView::new(&x, &[rows, vocab]).expect("valid case");
        let seeds: Vec<i64> = (0..rows as i64).map(|r| 1000 + r).collect();
        let st = TensorView::new(&seeds, &[rows]).expect("valid case");
        let (mut got, mut want) = (vec![0i64; rows], vec![0i64; rows]);
        crate::top_k_top_p_sampling_from_logits(
            &xv,
            k.into(),
            p.into(),
            None,
            "top_k_first",
            PerRow::Tensor(&st),
            8u64.into(),
            &mut TensorViewMut::new(&mut got, &[rows]).expect("valid case"),
        )
        .expect("valid case");
        let kk = if (k as usize) < vocab { k } else { 0 };
        reference::flashinfer_sample(
            &xv,
            true,
            Some(&PerRow::Scalar(kk)),
            Some(&PerRow::Scalar(p)),
            None,
            None,
            false,
            &PerRow::Tensor(&st),
            &PerRow::Scalar(8),
            &mut TensorViewMut::new(&mut want, &[rows]).expect("valid case"),
        );
        (ids(&got), ids(&want))
    };
    AlignCase {
        op: "top_k_top_p_sampling_from_logits",
        shape: format!("B={rows} V={vocab} k={k} p={p} ids"),
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

fn renorm_case(rows: usize, vocab: usize, p: f32) -> AlignCase {
    let run = move || {
        let x = logits(rows, vocab, 31);
        let mut probs = Vec::with_capacity(x.len());
        for r in 0..rows {
            let row = &x[r * vocab..(r + 1) * vocab];
            let lp = reference::log_softmax(row);
            probs.extend(lp.iter().map(|v| v.exp() as f32));
        }
        let pv = TensorView::new(&probs, &[rows, vocab]).expect("valid case");
        let (mut got, mut want) = (vec![0f32; probs.len()], vec![0f32; probs.len()]);
        crate::top_p_renorm_probs(
            &pv,
            p.into(),
            &mut TensorViewMut::new(&mut got, &[rows, vocab]).expect("valid case"),
        )
        .expect("valid case");
        reference::renorm_probs(
            &pv,
            None,
            Some(&PerRow::Scalar(p)),
            &mut TensorViewMut::new(&mut want, &[rows, vocab]).expect("valid case"),
        );
        let f = |v: Vec<f32>| v.into_iter().map(|x| x as f64).collect();
        (f(got), f(want))
    };
    AlignCase {
        op: "top_p_renorm_probs",
        shape: format!("B={rows} V={vocab} p={p}"),
        tolerance: ULP,
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
    vec![
        top_k_top_p_case(8, 151_936, 20, 0.95),
        top_k_top_p_case(4, 248_320, 50, 0.8),
        sampler_case(4, 151_936, 20, 0),
        sampler_case(4, 151_936, 20, 1),
        renorm_case(2, 151_936, 0.9),
        mask_case(2, 248_320, 50),
    ]
}
