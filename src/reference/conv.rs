//! Reference causal conv1d: a naive per-channel, per-token loop in fp64 over
//! the views' accessors, with vLLM's cache semantics written out plainly.

use crate::tensor::{TensorView, TensorViewMut};

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn index_or(t: Option<&TensorView>, i: usize, default: i64) -> i64 {
    t.map_or(default, |t| t.get_i64(&[i]))
}

/// One sequence: where its tokens live in x (multi-indices per token and channel).
struct Seq {
    /// Token t, channel c -> multi-index into x / out.
    tokens: Vec<Box<dyn Fn(usize) -> Vec<usize>>>,
    line: usize,
    load: bool,
    offset: usize,
    keep: usize,
}

#[allow(clippy::too_many_arguments)]
fn run(
    x: &mut TensorViewMut,
    mut out: Option<&mut TensorViewMut>,
    weight: &TensorView,
    bias: Option<&TensorView>,
    states: &mut TensorViewMut,
    seqs: Vec<Seq>,
    silu_on: bool,
) {
    let (dim, width) = (weight.shape()[0], weight.shape()[1]);
    let hist = width - 1;
    let mut writes: Vec<(Vec<usize>, f64)> = Vec::new();
    for s in seqs {
        let len = s.tokens.len();
        for c in 0..dim {
            // u = window ++ x, in fp64.
            let mut u: Vec<f64> = (0..hist)
                .map(|j| {
                    if s.load {
                        states.get_f32(&[s.line, c, s.offset + j]) as f64
                    } else {
                        0.0
                    }
                })
                .collect();
            for tok in &s.tokens {
                u.push(x.get_f32(&tok(c)) as f64);
            }
            for t in 0..len {
                let mut y = bias.map_or(0.0, |b| b.get_f32(&[c]) as f64);
                for j in 0..width {
                    y += weight.get_f32(&[c, j]) as f64 * u[t + j];
                }
                writes.push((s.tokens[t](c), if silu_on { silu(y) } else { y }));
            }
            for i in 0..s.keep {
                let v = u[hist + len - s.keep + i];
                states.set_f32(&[s.line, c, i], v as f32);
            }
        }
    }
    for (idx, y) in writes {
        match out.as_deref_mut() {
            Some(o) => o.set_f32(&idx, y as f32),
            None => x.set_f32(&idx, y as f32),
        }
    }
}

/// `causal_conv1d_fn` (arguments as [`crate::causal_conv1d_fn`]).
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d_fn(
    x: &mut TensorViewMut,
    weight: &TensorView,
    bias: Option<&TensorView>,
    conv_states: &mut TensorViewMut,
    query_start_loc: &TensorView,
    cache_indices: Option<&TensorView>,
    has_initial_state: Option<&TensorView>,
    activation: Option<&str>,
    pad_slot_id: i64,
    out: Option<&mut TensorViewMut>,
) {
    let hist = weight.shape()[1] - 1;
    let mut seqs = Vec::new();
    for n in 0..query_start_loc.shape()[0] - 1 {
        let (a, b) = (
            query_start_loc.get_i64(&[n]) as usize,
            query_start_loc.get_i64(&[n + 1]) as usize,
        );
        let line = index_or(cache_indices, n, n as i64);
        if line == pad_slot_id || a == b {
            continue;
        }
        seqs.push(Seq {
            tokens: (a..b)
                .map(|t| Box::new(move |c| vec![c, t]) as Box<dyn Fn(usize) -> Vec<usize>>)
                .collect(),
            line: line as usize,
            load: index_or(has_initial_state, n, 0) != 0,
            offset: 0,
            keep: hist,
        });
    }
    let silu_on = matches!(activation, Some("silu") | Some("swish"));
    run(x, out, weight, bias, conv_states, seqs, silu_on);
}

/// `causal_conv1d_update` (arguments as [`crate::causal_conv1d_update`]).
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d_update(
    x: &mut TensorViewMut,
    conv_state: &mut TensorViewMut,
    weight: &TensorView,
    bias: Option<&TensorView>,
    activation: Option<&str>,
    conv_state_indices: Option<&TensorView>,
    num_accepted_tokens: Option<&TensorView>,
    query_start_loc: Option<&TensorView>,
    pad_slot_id: i64,
    out: Option<&mut TensorViewMut>,
) {
    let width = weight.shape()[1];
    type Tok = Box<dyn Fn(usize) -> Vec<usize>>;
    let per_seq: Vec<Vec<Tok>> = match query_start_loc {
        Some(loc) => (0..loc.shape()[0] - 1)
            .map(|n| {
                let (a, b) = (loc.get_i64(&[n]) as usize, loc.get_i64(&[n + 1]) as usize);
                (a..b)
                    .map(|t| Box::new(move |c| vec![t, c]) as Tok)
                    .collect()
            })
            .collect(),
        None if x.ndim() == 2 => (0..x.shape()[0])
            .map(|n| vec![Box::new(move |c| vec![n, c]) as Tok])
            .collect(),
        None => (0..x.shape()[0])
            .map(|n| {
                (0..x.shape()[2])
                    .map(|t| Box::new(move |c| vec![n, c, t]) as Tok)
                    .collect()
            })
            .collect(),
    };
    let mut seqs = Vec::new();
    for (n, tokens) in per_seq.into_iter().enumerate() {
        let line = index_or(conv_state_indices, n, n as i64);
        if line == pad_slot_id || tokens.is_empty() {
            continue;
        }
        let len = tokens.len();
        let (offset, keep) = match num_accepted_tokens {
            Some(na) => (na.get_i64(&[n]) as usize - 1, width - 2 + len),
            None => (0, width - 1),
        };
        seqs.push(Seq {
            tokens,
            line: line as usize,
            load: true,
            offset,
            keep,
        });
    }
    let silu_on = matches!(activation, Some("silu") | Some("swish"));
    run(x, out, weight, bias, conv_state, seqs, silu_on);
}
