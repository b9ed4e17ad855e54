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

/// `sat32(round_half_even(v))`, NaN → 0 (vLLM's `float_to_int32_rn`).
pub fn rne_sat_i32(v: f32) -> i32 {
    if v.is_nan() {
        return 0;
    }
    let r = v.round_ties_even();
    if r >= 2_147_483_648.0 {
        i32::MAX
    } else if r <= -2_147_483_648.0 {
        i32::MIN
    } else {
        r as i32
    }
}

fn sat_i8(v: i64) -> i8 {
    v.clamp(-128, 127) as i8
}

/// One row of `scaled_int8_quant`, in f32 exactly as the op defines it.
/// `static_scale`: `Some((scale, azp))` for the static op; `None` for the
/// dynamic op, `asym` choosing the zero-point variant. Returns (q, scale, azp).
pub fn scaled_int8_quant_row(
    x: &[f32],
    static_scale: Option<(f32, Option<i32>)>,
    asym: bool,
) -> (Vec<i8>, f32, i32) {
    let with_azp = |scale: f32, azp: i32| -> Vec<i8> {
        x.iter()
            .map(|&v| sat_i8(rne_sat_i32(v / scale) as i64 + azp as i64))
            .collect()
    };
    match static_scale {
        Some((s, Some(z))) => (with_azp(s, z), s, z),
        Some((s, None)) => (
            x.iter()
                .map(|&v| sat_i8(rne_sat_i32(v / s) as i64))
                .collect(),
            s,
            0,
        ),
        None if !asym => {
            let absmax = x
                .iter()
                .fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m });
            let mul = 127.0f32 / absmax;
            let q = x
                .iter()
                .map(|&v| sat_i8(rne_sat_i32(v * mul) as i64))
                .collect();
            (q, absmax / 127.0, 0)
        }
        None => {
            let lo = x
                .iter()
                .fold(f32::INFINITY, |m, &v| if v < m { v } else { m });
            let hi = x
                .iter()
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            let (lo, scale) = if hi > lo {
                (lo, (hi - lo) / 255.0)
            } else {
                let c = if x.is_empty() { 0.0 } else { hi };
                (c, if c != 0.0 { c.abs() / 127.0 } else { 1.0 })
            };
            let azp = rne_sat_i32(-128.0 - lo / scale);
            (with_azp(scale, azp), scale, azp)
        }
    }
}

/// `int8_scaled_mm(_azp)` in f64: `a_scale[m]·b_scale[n]·(Σ_k a·b − azp[m]·azp_adj[n]) + bias[n]`
/// (`azp` absent: `azp_adj[n]` alone), with `a` `[M, K]` and `bt` the weight `[N, K]`.
#[allow(clippy::too_many_arguments)]
pub fn int8_scaled_mm(
    a: &[i8],
    bt: &[i8],
    m: usize,
    n: usize,
    k: usize,
    a_scales: &[f32],
    b_scales: &[f32],
    azp_adj: Option<&[i32]>,
    azp: Option<&[i32]>,
    bias: Option<&[f32]>,
) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: i64 = (0..k)
                .map(|t| a[i * k + t] as i64 * bt[j * k + t] as i64)
                .sum();
            let corr = match (azp, azp_adj) {
                (Some(z), Some(adj)) => z[i] as i64 * adj[j] as i64,
                (None, Some(adj)) => adj[j] as i64,
                _ => 0,
            };
            let sa = a_scales[if a_scales.len() == 1 { 0 } else { i }] as f64;
            let sb = b_scales[if b_scales.len() == 1 { 0 } else { j }] as f64;
            out[i * n + j] = (dot - corr) as f64 * sa * sb + bias.map_or(0.0, |b| b[j] as f64);
        }
    }
    out
}
