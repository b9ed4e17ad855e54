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

/// Where a sequence's state comes from and goes to.
struct SeqPlan {
    /// Batch row and first token.
    row: usize,
    bos: usize,
    len: usize,
    /// Slot read (None: zeros), or padding.
    read: Option<usize>,
    pad: bool,
    /// Per-token snapshot slots (rank-2 indices).
    snapshots: Option<Vec<i64>>,
    /// Slot the final state goes to.
    final_slot: Option<usize>,
}

fn get_f64(t: &TensorView, idx: &[usize]) -> f64 {
    t.get_f32(idx) as f64
}

#[allow(clippy::too_many_arguments)]
fn recurrence(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    g: &TensorView,
    beta: Option<&TensorView>,
    scale: Option<f32>,
    mut state: Option<&mut TensorViewMut>,
    plans: &[SeqPlan],
    use_qk_l2norm: bool,
    o: &mut TensorViewMut,
) {
    let (h, kd) = (q.shape()[2], q.shape()[3]);
    let (hv_n, vd) = (v.shape()[2], v.shape()[3]);
    let scale = scale.unwrap_or(1.0 / (kd as f32).sqrt()) as f64;
    for p in plans {
        for hv in 0..hv_n {
            let hk = hv / (hv_n / h);
            if p.pad {
                for t in 0..p.len {
                    for i in 0..vd {
                        o.set_f32(&[p.row, p.bos + t, hv, i], 0.0);
                    }
                }
                continue;
            }
            // S[v][k] in fp64.
            let mut s = vec![vec![0f64; kd]; vd];
            if let (Some(slot), Some(st)) = (p.read, state.as_deref_mut()) {
                for (i, row) in s.iter_mut().enumerate() {
                    for (j, x) in row.iter_mut().enumerate() {
                        *x = st.get_f32(&[slot, hv, i, j]) as f64;
                    }
                }
            }
            for t in 0..p.len {
                let tok = p.bos + t;
                let mut qv: Vec<f64> = (0..kd).map(|j| get_f64(q, &[p.row, tok, hk, j])).collect();
                let mut kv: Vec<f64> = (0..kd).map(|j| get_f64(k, &[p.row, tok, hk, j])).collect();
                if use_qk_l2norm {
                    for x in [&mut qv, &mut kv] {
                        let inv = 1.0 / (x.iter().map(|a| a * a).sum::<f64>() + 1e-6).sqrt();
                        x.iter_mut().for_each(|a| *a *= inv);
                    }
                }
                qv.iter_mut().for_each(|a| *a *= scale);
                let decay = get_f64(g, &[p.row, tok, hv]).exp();
                let b = beta.map_or(1.0, |b| get_f64(b, &[p.row, tok, hv]));
                for (i, row) in s.iter_mut().enumerate() {
                    row.iter_mut().for_each(|x| *x *= decay);
                    let kh: f64 = row.iter().zip(&kv).map(|(a, b)| a * b).sum();
                    let d = b * (get_f64(v, &[p.row, tok, hv, i]) - kh);
                    row.iter_mut().zip(&kv).for_each(|(x, kk)| *x += d * kk);
                    let out: f64 = row.iter().zip(&qv).map(|(a, b)| a * b).sum();
                    o.set_f32(&[p.row, tok, hv, i], out as f32);
                }
                if let (Some(snaps), Some(st)) = (&p.snapshots, state.as_deref_mut()) {
                    if snaps[t] >= 0 {
                        write_state(st, snaps[t] as usize, hv, &s);
                    }
                }
            }
            if let (Some(slot), Some(st)) = (p.final_slot, state.as_deref_mut()) {
                write_state(st, slot, hv, &s);
            }
        }
    }
}

fn write_state(st: &mut TensorViewMut, slot: usize, hv: usize, s: &[Vec<f64>]) {
    for (i, row) in s.iter().enumerate() {
        for (j, &x) in row.iter().enumerate() {
            st.set_f32(&[slot, hv, i, j], x as f32);
        }
    }
}

fn sequences(q: &TensorView, cu_seqlens: Option<&TensorView>) -> Vec<(usize, usize, usize)> {
    match cu_seqlens {
        Some(cu) => (0..cu.shape()[0] - 1)
            .map(|n| {
                let (a, b) = (cu.get_i64(&[n]) as usize, cu.get_i64(&[n + 1]) as usize);
                (0, a, b - a)
            })
            .collect(),
        None => (0..q.shape()[0]).map(|n| (n, 0, q.shape()[1])).collect(),
    }
}

/// `fused_recurrent_gated_delta_rule` (arguments as
/// [`crate::fused_recurrent_gated_delta_rule`]): the per-token recurrence in fp64.
#[allow(clippy::too_many_arguments)]
pub fn fused_recurrent_gated_delta_rule(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    g: &TensorView,
    beta: Option<&TensorView>,
    scale: Option<f32>,
    initial_state: &mut TensorViewMut,
    cu_seqlens: Option<&TensorView>,
    ssm_state_indices: Option<&TensorView>,
    num_accepted_tokens: Option<&TensorView>,
    use_qk_l2norm_in_kernel: bool,
    o: &mut TensorViewMut,
) {
    let mut plans = Vec::new();
    for (n, (row, bos, len)) in sequences(q, cu_seqlens).into_iter().enumerate() {
        if len == 0 {
            continue;
        }
        let (read, snapshots) = match ssm_state_indices {
            None => (n as i64, None),
            Some(ix) if ix.ndim() == 1 => (ix.get_i64(&[n]), None),
            Some(ix) => {
                let col = num_accepted_tokens.map_or(0, |a| a.get_i64(&[n]) as usize - 1);
                let snaps = (0..len).map(|t| ix.get_i64(&[n, t])).collect();
                (ix.get_i64(&[n, col]), Some(snaps))
            }
        };
        let pad = read < 0;
        plans.push(SeqPlan {
            row,
            bos,
            len,
            read: (!pad).then_some(read as usize),
            pad,
            final_slot: (!pad && snapshots.is_none()).then_some(read as usize),
            snapshots,
        });
    }
    recurrence(
        q,
        k,
        v,
        g,
        beta,
        scale,
        Some(initial_state),
        &plans,
        use_qk_l2norm_in_kernel,
        o,
    );
}

/// `chunk_gated_delta_rule` (arguments as [`crate::chunk_gated_delta_rule`]):
/// the same per-token fp64 recurrence (the chunked form is an exact regrouping).
#[allow(clippy::too_many_arguments)]
pub fn chunk_gated_delta_rule(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    g: &TensorView,
    beta: Option<&TensorView>,
    scale: Option<f32>,
    initial_state: Option<&mut TensorViewMut>,
    output_final_state: bool,
    cu_seqlens: Option<&TensorView>,
    ssm_state_indices: Option<&TensorView>,
    has_initial_state: Option<&TensorView>,
    use_qk_l2norm_in_kernel: bool,
    o: &mut TensorViewMut,
) {
    let pool = initial_state.is_some();
    let mut plans = Vec::new();
    for (n, (row, bos, len)) in sequences(q, cu_seqlens).into_iter().enumerate() {
        if len == 0 {
            continue;
        }
        let slot = ssm_state_indices.map_or(n as i64, |ix| ix.get_i64(&[n]));
        let pad = pool && slot < 0;
        let init = has_initial_state.map_or(true, |h| h.get_i64(&[n]) != 0);
        plans.push(SeqPlan {
            row,
            bos,
            len,
            read: (pool && !pad && init).then_some(slot as usize),
            pad,
            snapshots: None,
            final_slot: (pool && !pad && output_final_state).then_some(slot as usize),
        });
    }
    recurrence(
        q,
        k,
        v,
        g,
        beta,
        scale,
        initial_state,
        &plans,
        use_qk_l2norm_in_kernel,
        o,
    );
}
