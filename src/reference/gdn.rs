//! Reference Gated DeltaNet ops in fp64: the gating formula, the norms, and
//! the gated delta rule as the plain per-token recurrence (fla `naive.py`
//! semantics, with vLLM's state pool, indices and spec-decode snapshots).

use crate::tensor::{TensorView, TensorViewMut};

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Multi-indices of every leading position of `shape` (all dims but the last).
fn leading(shape: &[usize]) -> Vec<Vec<usize>> {
    let lead = &shape[..shape.len() - 1];
    let mut out = vec![vec![]];
    for &d in lead {
        out = out
            .into_iter()
            .flat_map(|p: Vec<usize>| {
                (0..d).map(move |i| {
                    let mut q = p.clone();
                    q.push(i);
                    q
                })
            })
            .collect();
    }
    out
}

fn at(prefix: &[usize], i: usize) -> Vec<usize> {
    let mut v = prefix.to_vec();
    v.push(i);
    v
}

/// `fused_gdn_gating` (arguments as [`crate::fused_gdn_gating`]).
#[allow(clippy::too_many_arguments, non_snake_case)]
pub fn fused_gdn_gating(
    A_log: &TensorView,
    a: &TensorView,
    b: &TensorView,
    dt_bias: &TensorView,
    beta: f32,
    threshold: f32,
    g: &mut TensorViewMut,
    beta_output: &mut TensorViewMut,
) {
    let (tokens, heads) = (a.shape()[0], a.shape()[1]);
    let out_idx = |t: &TensorViewMut, i: usize, h: usize| {
        if t.ndim() == 3 {
            vec![0, i, h]
        } else {
            vec![i, h]
        }
    };
    let beta = beta as f64;
    for i in 0..tokens {
        for h in 0..heads {
            let x = a.get_f32(&[i, h]) as f64 + dt_bias.get_f32(&[h]) as f64;
            let sp = if beta * x <= threshold as f64 {
                (beta * x).exp().ln_1p() / beta
            } else {
                x
            };
            let gv = -(A_log.get_f32(&[h]) as f64).exp() * sp;
            let gi = out_idx(g, i, h);
            g.set_f32(&gi, gv as f32);
            let bv = 1.0 / (1.0 + (-(b.get_f32(&[i, h]) as f64)).exp());
            let bi = out_idx(beta_output, i, h);
            beta_output.set_f32(&bi, bv as f32);
        }
    }
}

/// `l2norm` over the last dim.
pub fn l2norm(x: &TensorView, eps: f32, out: &mut TensorViewMut) {
    let n = *x.shape().last().expect("rank >= 1");
    for p in leading(x.shape()) {
        let v: Vec<f64> = (0..n).map(|i| x.get_f32(&at(&p, i)) as f64).collect();
        let inv = 1.0 / (v.iter().map(|a| a * a).sum::<f64>() + eps as f64).sqrt();
        for (i, a) in v.iter().enumerate() {
            out.set_f32(&at(&p, i), (a * inv) as f32);
        }
    }
}

/// `rms_norm_gated` (arguments as [`crate::rms_norm_gated`]).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_gated(
    x: &TensorView,
    weight: &TensorView,
    bias: Option<&TensorView>,
    z: Option<&TensorView>,
    eps: f32,
    group_size: Option<usize>,
    norm_before_gate: bool,
    out: &mut TensorViewMut,
) {
    let n = *x.shape().last().expect("rank >= 1");
    let gs = group_size.unwrap_or(n).max(1);
    for p in leading(x.shape()) {
        let gate: Vec<f64> = (0..n)
            .map(|i| z.map_or(1.0, |z| silu(z.get_f32(&at(&p, i)) as f64)))
            .collect();
        let mut v: Vec<f64> = (0..n).map(|i| x.get_f32(&at(&p, i)) as f64).collect();
        if !norm_before_gate {
            for (a, g) in v.iter_mut().zip(&gate) {
                *a *= g;
            }
        }
        for g0 in (0..n).step_by(gs) {
            let ms = v[g0..g0 + gs].iter().map(|a| a * a).sum::<f64>() / gs as f64;
            let rstd = 1.0 / (ms + eps as f64).sqrt();
            for i in g0..g0 + gs {
                let mut y = v[i] * rstd * weight.get_f32(&[i]) as f64;
                if let Some(b) = bias {
                    y += b.get_f32(&[i]) as f64;
                }
                if norm_before_gate {
                    y *= gate[i];
                }
                out.set_f32(&at(&p, i), y as f32);
            }
        }
    }
}
