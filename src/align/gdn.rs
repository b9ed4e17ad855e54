//! Alignment cases of the linear-attention family on Qwen3-Next shapes
//! (conv dim 8192 width 4 cut to 2048 channels to keep the fp64 reference
//! quick; GDN 16 key / 32 value heads x 128, l2norm over the q / k head
//! rows): kernel against the fp64 reference with the tolerances the ops
//! document.

use half::bf16;

use super::{decode, encode, to_bf16, values, widen, AlignCase, Tolerance};
use crate::dtype::DType;
use crate::reference::{conv as conv_ref, gdn as gdn_ref};
use crate::tensor::{TensorView, TensorViewMut};

/// bf16 conv outputs: fp32 accumulation of <= 6 products plus one rounding.
const CONV_BF16: Tolerance = Tolerance {
    atol: 1e-4,
    rtol: 1.25 / 128.0,
};

/// GDN bf16 outputs: fp32 state and accumulation plus one rounding.
const GDN_BF16: Tolerance = Tolerance {
    atol: 3e-5,
    rtol: 1e-4 + 1.25 / 128.0,
};

fn conv_fn_case(dim: usize, lens: &'static [usize]) -> AlignCase {
    let run = move || {
        let (width, lines) = (4, lens.len() + 1);
        let total: usize = lens.iter().sum();
        let x = to_bf16(&values(dim * total, 1, -1.0, 1.0));
        let w = to_bf16(&values(dim * width, 2, -0.5, 0.5));
        let b = to_bf16(&values(dim, 3, -0.5, 0.5));
        let states0 = to_bf16(&values(lines * dim * (width - 1), 4, -1.0, 1.0));
        let mut qsl = vec![0i32];
        for &l in lens {
            qsl.push(qsl.last().copied().unwrap_or(0) + l as i32);
        }
        let idx: Vec<i32> = (0..lens.len() as i32).map(|i| i + 1).collect();
        let hi: Vec<i32> = (0..lens.len() as i32).map(|i| i % 2).collect();
        let (wv, bv) = (
            TensorView::new(&w, &[dim, width]).expect("valid case"),
            TensorView::new(&b, &[dim]).expect("valid case"),
        );
        let (qv, iv, hv) = (
            TensorView::new(&qsl, &[qsl.len()]).expect("valid case"),
            TensorView::new(&idx, &[idx.len()]).expect("valid case"),
            TensorView::new(&hi, &[hi.len()]).expect("valid case"),
        );
        let mut outs = Vec::new();
        for i in 0..2 {
            let mut xs = x.clone();
            let mut st = states0.clone();
            // vLLM's layouts: x channel-contiguous, states dim-contiguous.
            let mut xm = TensorViewMut::strided(&mut xs, &[dim, total], &[1, dim]).expect("valid");
            let mut sm = TensorViewMut::strided(
                &mut st,
                &[lines, dim, width - 1],
                &[dim * (width - 1), 1, dim],
            )
            .expect("valid case");
            if i == 0 {
                crate::causal_conv1d_fn(
                    &mut xm,
                    &wv,
                    Some(&bv),
                    &mut sm,
                    &qv,
                    Some(&iv),
                    Some(&hv),
                    Some("silu"),
                    -1,
                    None,
                )
                .expect("valid case");
            } else {
                conv_ref::causal_conv1d_fn(
                    &mut xm,
                    &wv,
                    Some(&bv),
                    &mut sm,
                    &qv,
                    Some(&iv),
                    Some(&hv),
                    Some("silu"),
                    -1,
                    None,
                );
            }
            let mut all = widen(&xs);
            all.extend(widen(&st));
            outs.push(all);
        }
        let want = outs.pop().expect("two runs");
        (outs.pop().expect("two runs"), want)
    };
    AlignCase {
        op: "causal_conv1d_fn",
        shape: format!("dim={dim} w=4 T={lens:?} bf16"),
        tolerance: CONV_BF16,
        run: Box::new(run),
    }
}

fn conv_update_case(batch: usize, dim: usize, drafts: usize) -> AlignCase {
    let run = move || {
        let (width, n) = (4, drafts + 1);
        let state_len = width - 2 + n;
        let x = to_bf16(&values(batch * dim * n, 5, -1.0, 1.0));
        let w = to_bf16(&values(dim * width, 6, -0.5, 0.5));
        let states0 = to_bf16(&values(batch * dim * state_len, 7, -1.0, 1.0));
        let acc: Vec<i32> = (0..batch).map(|b| 1 + (b % n) as i32).collect();
        let wv = TensorView::new(&w, &[dim, width]).expect("valid case");
        let av = TensorView::new(&acc, &[batch]).expect("valid case");
        let mut outs = Vec::new();
        for i in 0..2 {
            let (mut xs, mut st) = (x.clone(), states0.clone());
            let mut xm = TensorViewMut::new(&mut xs, &[batch, dim, n]).expect("valid case");
            let mut sm = TensorViewMut::new(&mut st, &[batch, dim, state_len]).expect("valid case");
            if i == 0 {
                crate::causal_conv1d_update(
                    &mut xm,
                    &mut sm,
                    &wv,
                    None,
                    Some("silu"),
                    None,
                    Some(&av),
                    None,
                    -1,
                    -1,
                    None,
                )
                .expect("valid case");
            } else {
                conv_ref::causal_conv1d_update(
                    &mut xm,
                    &mut sm,
                    &wv,
                    None,
                    Some("silu"),
                    None,
                    Some(&av),
                    None,
                    -1,
                    None,
                );
            }
            let mut all = widen(&xs);
            all.extend(widen(&st));
            outs.push(all);
        }
        let want = outs.pop().expect("two runs");
        (outs.pop().expect("two runs"), want)
    };
    AlignCase {
        op: "causal_conv1d_update",
        shape: format!("B={batch} dim={dim} w=4 spec+{drafts} bf16"),
        tolerance: CONV_BF16,
        run: Box::new(run),
    }
}

fn gating_case(tokens: usize, heads: usize) -> AlignCase {
    let run = move || {
        let a_log = values(heads, 8, -1.0, 2.0);
        let dt = values(heads, 9, -1.0, 1.0);
        let a = to_bf16(&values(tokens * heads, 10, -25.0, 25.0));
        let b = to_bf16(&values(tokens * heads, 11, -6.0, 6.0));
        let views = (
            TensorView::new(&a_log, &[heads]).expect("valid case"),
            TensorView::new(&a, &[tokens, heads]).expect("valid case"),
            TensorView::new(&b, &[tokens, heads]).expect("valid case"),
            TensorView::new(&dt, &[heads]).expect("valid case"),
        );
        let mut outs = Vec::new();
        for i in 0..2 {
            let (mut g, mut bo) = (vec![0f32; tokens * heads], vec![0f32; tokens * heads]);
            let mut gv = TensorViewMut::new(&mut g, &[1, tokens, heads]).expect("valid case");
            let mut bv = TensorViewMut::new(&mut bo, &[1, tokens, heads]).expect("valid case");
            let (al, av, bb, dv) = &views;
            if i == 0 {
                crate::fused_gdn_gating(al, av, bb, dv, 1.0, 20.0, &mut gv, &mut bv)
                    .expect("valid case");
            } else {
                gdn_ref::fused_gdn_gating(al, av, bb, dv, 1.0, 20.0, &mut gv, &mut bv);
            }
            outs.push(g.iter().chain(&bo).map(|&x| x as f64).collect::<Vec<_>>());
        }
        let want = outs.pop().expect("two runs");
        (outs.pop().expect("two runs"), want)
    };
    AlignCase {
        op: "fused_gdn_gating",
        shape: format!("T={tokens} HV={heads} bf16->f32"),
        tolerance: Tolerance {
            atol: 1e-6,
            rtol: 1e-5,
        },
        run: Box::new(run),
    }
}

fn rms_norm_gated_case(rows: usize, n: usize) -> AlignCase {
    let run = move || {
        let x = to_bf16(&values(rows * n, 12, -2.0, 2.0));
        let z = to_bf16(&values(rows * n, 13, -4.0, 4.0));
        let w = to_bf16(&values(n, 14, 0.5, 1.5));
        let (xv, zv, wv) = (
            TensorView::new(&x, &[rows, n]).expect("valid case"),
            TensorView::new(&z, &[rows, n]).expect("valid case"),
            TensorView::new(&w, &[n]).expect("valid case"),
        );
        let mut outs = Vec::new();
        for i in 0..2 {
            let mut o = vec![bf16::ZERO; rows * n];
            let mut ov = TensorViewMut::new(&mut o, &[rows, n]).expect("valid case");
            if i == 0 {
                crate::rms_norm_gated(&xv, &wv, None, Some(&zv), 1e-6, None, true, &mut ov)
                    .expect("valid case");
            } else {
                gdn_ref::rms_norm_gated(&xv, &wv, None, Some(&zv), 1e-6, None, true, &mut ov);
            }
            outs.push(widen(&o));
        }
        let want = outs.pop().expect("two runs");
        (outs.pop().expect("two runs"), want)
    };
    AlignCase {
        op: "rms_norm_gated",
        shape: format!("rows={rows} n={n} bf16"),
        tolerance: Tolerance {
            atol: 1e-5,
            rtol: 1.25 / 128.0,
        },
        run: Box::new(run),
    }
}

/// l2norm over `tokens` x 16 key heads x 128 in `dtype` (in and out): the
/// tolerance of tests/gdn.rs, 2e-6 absolute (|y| <= 1, fp32 sum of squares)
/// plus one rounding to the output dtype (2e-6 relative for f32, 2⁻⁷ for
/// bf16).
fn l2norm_case(tokens: usize, dtype: DType) -> AlignCase {
    let run = move || {
        let shape = [tokens, H, D];
        let x = encode(&values(tokens * H * D, 15, -2.0, 2.0), dtype);
        let xv = TensorView::from_bytes(&x, dtype, &shape, None).expect("valid case");
        let mut outs = Vec::new();
        for i in 0..2 {
            let mut o = vec![0u8; x.len()];
            let mut ov = TensorViewMut::from_bytes(&mut o, dtype, &shape, None).expect("valid");
            if i == 0 {
                crate::l2norm(&xv, 1e-6, &mut ov).expect("valid case");
            } else {
                gdn_ref::l2norm(&xv, 1e-6, &mut ov);
            }
            outs.push(decode(&o, dtype));
        }
        let want = outs.pop().expect("two runs");
        (outs.pop().expect("two runs"), want)
    };
    AlignCase {
        op: "l2norm",
        shape: format!("T={tokens} H=16 D=128 {dtype}"),
        tolerance: Tolerance {
            atol: 2e-6,
            rtol: if dtype == DType::F32 {
                2e-6
            } else {
                1.0 / 128.0
            },
        },
        run: Box::new(run),
    }
}

/// Qwen3-Next GDN heads: q, k [1, T, 16, 128], v [1, T, 32, 128], bf16.
struct GdnData {
    q: Vec<bf16>,
    k: Vec<bf16>,
    v: Vec<bf16>,
    g: Vec<f32>,
    beta: Vec<bf16>,
    pool: Vec<f32>,
}

const H: usize = 16;
const HV: usize = 32;
const D: usize = 128;

fn gdn_data(tokens: usize, slots: usize, seed: u64) -> GdnData {
    GdnData {
        q: to_bf16(&values(tokens * H * D, seed, -1.0, 1.0)),
        k: to_bf16(&values(tokens * H * D, seed + 1, -1.0, 1.0)),
        v: to_bf16(&values(tokens * HV * D, seed + 2, -1.0, 1.0)),
        g: values(tokens * HV, seed + 3, -0.3, -0.001),
        beta: to_bf16(&values(tokens * HV, seed + 4, 0.1, 0.9)),
        pool: values(slots * HV * D * D, seed + 5, -0.2, 0.2),
    }
}

fn recurrent_case(batch: usize) -> AlignCase {
    let run = move || {
        let slots = batch + 2;
        let d = gdn_data(batch, slots, 20);
        let idx: Vec<i32> = (0..batch as i32).map(|i| i + 2).collect();
        let iv = TensorView::new(&idx, &[batch]).expect("valid case");
        let mut outs = Vec::new();
        for i in 0..2 {
            let mut pool = d.pool.clone();
            let mut o = vec![bf16::ZERO; batch * HV * D];
            let (q, k, v, g, b) = (
                TensorView::new(&d.q, &[batch, 1, H, D]).expect("valid case"),
                TensorView::new(&d.k, &[batch, 1, H, D]).expect("valid case"),
                TensorView::new(&d.v, &[batch, 1, HV, D]).expect("valid case"),
                TensorView::new(&d.g, &[batch, 1, HV]).expect("valid case"),
                TensorView::new(&d.beta, &[batch, 1, HV]).expect("valid case"),
            );
            let mut pv = TensorViewMut::new(&mut pool, &[slots, HV, D, D]).expect("valid case");
            let mut ov = TensorViewMut::new(&mut o, &[batch, 1, HV, D]).expect("valid case");
            if i == 0 {
                crate::fused_recurrent_gated_delta_rule(
                    &q,
                    &k,
                    &v,
                    &g,
                    Some(&b),
                    None,
                    &mut pv,
                    None,
                    Some(&iv),
                    None,
                    true,
                    &mut ov,
                )
                .expect("valid case");
            } else {
                gdn_ref::fused_recurrent_gated_delta_rule(
                    &q,
                    &k,
                    &v,
                    &g,
                    Some(&b),
                    None,
                    &mut pv,
                    None,
                    Some(&iv),
                    None,
                    true,
                    &mut ov,
                );
            }
            let mut all = widen(&o);
            all.extend(pool.iter().map(|&x| x as f64));
            outs.push(all);
        }
        let want = outs.pop().expect("two runs");
        (outs.pop().expect("two runs"), want)
    };
    AlignCase {
        op: "fused_recurrent_gated_delta_rule",
        shape: format!("decode B={batch} H=16 HV=32 K=V=128 bf16"),
        tolerance: GDN_BF16,
        run: Box::new(run),
    }
}

fn chunk_case(tokens: usize) -> AlignCase {
    let run = move || {
        let d = gdn_data(tokens, 1, 40);
        let mut outs = Vec::new();
        for i in 0..2 {
            let mut pool = d.pool.clone();
            let mut o = vec![bf16::ZERO; tokens * HV * D];
            let (q, k, v, g, b) = (
                TensorView::new(&d.q, &[1, tokens, H, D]).expect("valid case"),
                TensorView::new(&d.k, &[1, tokens, H, D]).expect("valid case"),
                TensorView::new(&d.v, &[1, tokens, HV, D]).expect("valid case"),
                TensorView::new(&d.g, &[1, tokens, HV]).expect("valid case"),
                TensorView::new(&d.beta, &[1, tokens, HV]).expect("valid case"),
            );
            let mut pv = TensorViewMut::new(&mut pool, &[1, HV, D, D]).expect("valid case");
            let mut ov = TensorViewMut::new(&mut o, &[1, tokens, HV, D]).expect("valid case");
            if i == 0 {
                crate::chunk_gated_delta_rule(
                    &q,
                    &k,
                    &v,
                    &g,
                    Some(&b),
                    None,
                    Some(&mut pv),
                    true,
                    None,
                    None,
                    None,
                    true,
                    &mut ov,
                )
                .expect("valid case");
            } else {
                gdn_ref::chunk_gated_delta_rule(
                    &q,
                    &k,
                    &v,
                    &g,
                    Some(&b),
                    None,
                    Some(&mut pv),
                    true,
                    None,
                    None,
                    None,
                    true,
                    &mut ov,
                );
            }
            let mut all = widen(&o);
            all.extend(pool.iter().map(|&x| x as f64));
            outs.push(all);
        }
        let want = outs.pop().expect("two runs");
        (outs.pop().expect("two runs"), want)
    };
    AlignCase {
        op: "chunk_gated_delta_rule",
        shape: format!("prefill T={tokens} H=16 HV=32 K=V=128 bf16"),
        tolerance: GDN_BF16,
        run: Box::new(run),
    }
}

pub(super) fn cases() -> Vec<AlignCase> {
    vec![
        conv_fn_case(2048, &[1, 63, 130]),
        conv_update_case(16, 2048, 3),
        gating_case(64, 32),
        rms_norm_gated_case(64, 128),
        l2norm_case(512, DType::BF16),
        l2norm_case(64, DType::F32),
        recurrent_case(4),
        chunk_case(130),
    ]
}
