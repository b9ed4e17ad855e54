//! Reference linear ops in fp64: every product and sum in f64, one rounding
//! at the end (done by the caller's comparison, so the oracle itself returns
//! f64 values).

use crate::tensor::TensorView;

/// `x · weightᵀ + bias` for `x` `[M, K]` (or `[K]`) and `weight` `[N, K]` of
/// any floating dtype, as `M·N` row-major f64 values.
pub fn linear(x: &TensorView, weight: &TensorView, bias: Option<&TensorView>) -> Vec<f64> {
    let (n, k) = (weight.shape()[0], weight.shape()[1]);
    let m = if x.ndim() == 2 { x.shape()[0] } else { 1 };
    let xv = |i: usize, kk: usize| -> f64 {
        if x.ndim() == 2 {
            x.get_f32(&[i, kk]) as f64
        } else {
            x.get_f32(&[kk]) as f64
        }
    };
    let w: Vec<f64> = (0..n * k)
        .map(|i| weight.get_f32(&[i / k, i % k]) as f64)
        .collect();
    linear_f64(m, n, k, xv, |nn, kk| w[nn * k + kk], bias)
}

/// `Σ_k x(m, k) · w(n, k) + bias[n]` in f64 for value accessors.
pub fn linear_f64(
    m: usize,
    n: usize,
    k: usize,
    x: impl Fn(usize, usize) -> f64,
    w: impl Fn(usize, usize) -> f64,
    bias: Option<&TensorView>,
) -> Vec<f64> {
    let xs: Vec<f64> = (0..m * k).map(|i| x(i / k, i % k)).collect();
    let mut out = vec![0f64; m * n];
    for j in 0..n {
        let wr: Vec<f64> = (0..k).map(|kk| w(j, kk)).collect();
        let b = bias.map_or(0.0, |b| b.get_f32(&[j]) as f64);
        for i in 0..m {
            let xr = &xs[i * k..(i + 1) * k];
            out[i * n + j] = xr.iter().zip(&wr).map(|(a, b)| a * b).sum::<f64>() + b;
        }
    }
    out
}

/// `Σ_k |x(m, k) · w(n, k)|`: the scale of the rounding error bound.
pub fn abs_dot(
    m: usize,
    n: usize,
    k: usize,
    x: impl Fn(usize, usize) -> f64,
    w: impl Fn(usize, usize) -> f64,
) -> Vec<f64> {
    let xs: Vec<f64> = (0..m * k).map(|i| x(i / k, i % k).abs()).collect();
    let mut out = vec![0f64; m * n];
    for j in 0..n {
        let wr: Vec<f64> = (0..k).map(|kk| w(j, kk).abs()).collect();
        for i in 0..m {
            out[i * n + j] = xs[i * k..(i + 1) * k]
                .iter()
                .zip(&wr)
                .map(|(a, b)| a * b)
                .sum();
        }
    }
    out
}

/// The weights `[N, K]` (input-channel order, f64) of canonical weight-only
/// tensors, read straight from the layout description in
/// [`crate::ops::quant`]: `w[n][perm[j]] = (code(n, j) - zero) · scale`.
pub fn wna16_weights(
    qweight: &TensorView,
    scales: &TensorView,
    zeros: Option<&TensorView>,
    perm: Option<&TensorView>,
    k: usize,
    bits: u32,
) -> Vec<f64> {
    let n = qweight.shape()[0];
    let groups = scales.shape()[1];
    let gs = k / groups;
    let mut w = vec![0f64; n * k];
    for r in 0..n {
        for j in 0..k {
            let code = if bits == 8 {
                qweight.get_i64(&[r, j]) as u8 as u32
            } else {
                // Block j / 128, word (j % 16), nibble (j % 128) / 16.
                let (b, i, l) = (j / 128, (j % 128) / 16, j % 16);
                let byte = qweight.get_i64(&[r, b * 64 + l * 4 + i / 2]) as u8 as u32;
                (byte >> (4 * (i % 2))) & 0xF
            };
            let g = j / gs;
            let z = zeros.map_or(2f64.powi(bits as i32 - 1), |z| z.get_f32(&[r, g]) as f64);
            let col = perm.map_or(j, |p| p.get_i64(&[j]) as usize);
            w[r * k + col] = (code as f64 - z) * scales.get_f32(&[r, g]) as f64;
        }
    }
    w
}
