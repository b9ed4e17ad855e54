//! Reference layer ops: element by element through the views' accessors, in
//! f64, rounding once when an output is stored (f64 → f32 → dtype; both
//! steps round to nearest even). Arguments are assumed valid (the launchers
//! in [`crate::ops::layer`] validate them).

use crate::tensor::{TensorView, TensorViewMut};

/// Every multi-index of the leading dims `shape[..lead]`, row-major.
fn leading(shape: &[usize], lead: usize) -> Vec<Vec<usize>> {
    let dims = &shape[..lead];
    let count: usize = dims.iter().product();
    let mut out = Vec::with_capacity(count);
    let mut idx = vec![0usize; lead];
    for _ in 0..count {
        out.push(idx.clone());
        for k in (0..lead).rev() {
            idx[k] += 1;
            if idx[k] < dims[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

fn with_last(prefix: &[usize], i: usize) -> Vec<usize> {
    let mut v = prefix.to_vec();
    v.push(i);
    v
}

fn get(t: &TensorView, idx: &[usize]) -> f64 {
    t.get_f32(idx) as f64
}

fn set(t: &mut TensorViewMut, idx: &[usize], v: f64) {
    t.set_f32(idx, v as f32);
}

/// `out = x / sqrt(mean(x²) + eps) · weight` per row, all in f64.
fn normalize_row(x: &[f64], weight: &TensorView, epsilon: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let ss: f64 = x.iter().map(|v| v * v).sum();
    let scale = 1.0 / (ss / n + epsilon).sqrt();
    x.iter()
        .enumerate()
        .map(|(i, v)| v * scale * get(weight, &[i]))
        .collect()
}

/// `rms_norm` (see [`crate::rms_norm`]). `epsilon` is used as an f32, as the kernels do.
pub fn rms_norm(out: &mut TensorViewMut, input: &TensorView, weight: &TensorView, epsilon: f64) {
    let nd = input.ndim();
    let hidden = input.shape()[nd - 1];
    let eps = epsilon as f32 as f64;
    for row in leading(input.shape(), nd - 1) {
        let x: Vec<f64> = (0..hidden)
            .map(|i| get(input, &with_last(&row, i)))
            .collect();
        for (i, v) in normalize_row(&x, weight, eps).into_iter().enumerate() {
            set(out, &with_last(&row, i), v);
        }
    }
}

/// `fused_add_rms_norm` (see [`crate::fused_add_rms_norm`]): the residual is
/// `input + residual` rounded once to the dtype, and the norm reads that
/// rounded residual.
pub fn fused_add_rms_norm(
    input: &mut TensorViewMut,
    residual: &mut TensorViewMut,
    weight: &TensorView,
    epsilon: f64,
) {
    let nd = input.ndim();
    let hidden = input.shape()[nd - 1];
    let eps = epsilon as f32 as f64;
    let rows = leading(input.shape(), nd - 1);
    for row in rows {
        let mut z = Vec::with_capacity(hidden);
        for i in 0..hidden {
            let idx = with_last(&row, i);
            let sum = get(&input.view(), &idx) + get(&residual.view(), &idx);
            set(residual, &idx, sum);
            z.push(get(&residual.view(), &idx));
        }
        for (i, v) in normalize_row(&z, weight, eps).into_iter().enumerate() {
            set(input, &with_last(&row, i), v);
        }
    }
}

/// Rotates one head's rotary dims in place.
fn rotate_head(
    t: &mut TensorViewMut,
    head: &dyn Fn(usize) -> Vec<usize>,
    cos: &[f64],
    sin: &[f64],
    is_neox: bool,
) {
    let half = cos.len();
    for i in 0..half {
        let (ix, iy) = if is_neox {
            (i, half + i)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x, y) = (get(&t.view(), &head(ix)), get(&t.view(), &head(iy)));
        set(t, &head(ix), x * cos[i] - y * sin[i]);
        set(t, &head(iy), y * cos[i] + x * sin[i]);
    }
}

fn rotate_all(
    t: &mut TensorViewMut,
    tok: &[usize],
    head_size: usize,
    cos: &[f64],
    sin: &[f64],
    is_neox: bool,
) {
    let p = tok.len();
    let flat = t.ndim() == p + 1;
    let heads = if flat {
        t.shape()[p] / head_size
    } else {
        t.shape()[p]
    };
    for h in 0..heads {
        let index = |d: usize| -> Vec<usize> {
            let mut v = tok.to_vec();
            if flat {
                v.push(h * head_size + d);
            } else {
                v.push(h);
                v.push(d);
            }
            v
        };
        rotate_head(t, &index, cos, sin, is_neox);
    }
}

/// `rotary_embedding` (see [`crate::rotary_embedding`]).
pub fn rotary_embedding(
    positions: &TensorView,
    query: &mut TensorViewMut,
    mut key: Option<&mut TensorViewMut>,
    head_size: usize,
    cos_sin_cache: &TensorView,
    is_neox: bool,
) {
    let half = cos_sin_cache.shape()[1] / 2;
    for tok in leading(positions.shape(), positions.ndim()) {
        let pos = positions.get_i64(&tok) as usize;
        let cos: Vec<f64> = (0..half).map(|i| get(cos_sin_cache, &[pos, i])).collect();
        let sin: Vec<f64> = (0..half)
            .map(|i| get(cos_sin_cache, &[pos, half + i]))
            .collect();
        rotate_all(query, &tok, head_size, &cos, &sin, is_neox);
        if let Some(k) = key.as_deref_mut() {
            rotate_all(k, &tok, head_size, &cos, &sin, is_neox);
        }
    }
}

/// `silu(x) = x / (1 + e^(−x))` in f64.
pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// `silu_and_mul` (see [`crate::silu_and_mul`]).
pub fn silu_and_mul(out: &mut TensorViewMut, input: &TensorView) {
    let nd = input.ndim();
    let d = input.shape()[nd - 1] / 2;
    for row in leading(input.shape(), nd - 1) {
        for i in 0..d {
            let x = get(input, &with_last(&row, i));
            let y = get(input, &with_last(&row, d + i));
            set(out, &with_last(&row, i), silu(x) * y);
        }
    }
}
