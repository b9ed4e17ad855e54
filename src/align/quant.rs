//! Alignment cases of the quantized FC family on PERF.md shapes (K = 2048 /
//! 4096; N cut to 512 to keep the fp64 references quick): `wna16_linear`
//! (int8 per-channel and int4 group-wise, symmetric and with zero points,
//! act-order, one GPTQ import) in both regimes, `wna16_dequantize`, W8A8
//! `int8_scaled_mm(_azp)` and `dynamic_` / `static_scaled_int8_quant`.
//! The reference weights come from the cases' own codes, not from the
//! canonical layout, so the packing is checked too.
//!
//! Tolerances, as the ops document them (src/ops/quant.rs, src/ops/linear.rs,
//! tests/linear.rs): `wna16_linear` that of `linear` (scales chosen so E|w| =
//! 1/2, as for uniform weights, hence Σ|x·w| ≈ K/4); `wna16_dequantize` and
//! the quantizers exact; `int8_scaled_mm(_azp)` three f32 roundings of the
//! scaled dot (2⁻²²·|y - bias|, with |y - bias| <= |y| + max|bias|), one of
//! the bias add (2⁻²³·|y|) and the rounding to the output dtype, taken as
//! [`out_ulp`] like the `linear` cases (for bf16 half the tests' 1 ulp, so
//! a pass here implies the documented bound).

use half::bf16;

use super::linear::{out_ulp, tolerance};
use super::{decode, encode, shuffled, to_bf16, values, AlignCase, Tolerance};
use crate::dtype::{load_f32, store_f32, DType};
use crate::ops::quant::{GptqFormat, Wna16Weight};
use crate::reference::linear as reference;
use crate::tensor::{TensorView, TensorViewMut};

/// A weight-only quantized weight `[N, K]`: `bits`, group size (`K`: one
/// group per channel), explicit zero points or the implicit `2^(bits-1)`,
/// act-order, or imported from GPTQ (v1, no act-order).
#[derive(Clone, Copy)]
struct QSpec {
    n: usize,
    k: usize,
    bits: u32,
    group: usize,
    zeros: bool,
    perm: bool,
    gptq: bool,
}

impl QSpec {
    fn describe(&self) -> String {
        format!(
            "int{} {}{}{}{}",
            self.bits,
            if self.group == self.k {
                "per-channel".to_string()
            } else {
                format!("g{}", self.group)
            },
            if self.zeros { " zp" } else { " sym" },
            if self.perm { " act-order" } else { "" },
            if self.gptq { " gptq-v1" } else { "" }
        )
    }

    /// The weight and its values `[N, K]` in input-channel order, in f64.
    fn build(&self, seed: u64) -> (Wna16Weight, Vec<f64>) {
        let (n, k, groups) = (self.n, self.k, self.k / self.group);
        let max = (1u32 << self.bits) as f32;
        let codes: Vec<u8> = values(n * k, seed, 0.0, max)
            .iter()
            .map(|&c| c.min(max - 1.0) as u8)
            .collect();
        // E|code - zero|·E[scale] = 2^(bits-2) · 2^(1-bits) = 1/2.
        let half = (1u32 << (self.bits - 1)) as f32;
        let scales = to_bf16(&values(n * groups, seed + 1, 0.75 / half, 1.25 / half));
        let zeros: Vec<f32> = if self.zeros {
            values(n * groups, seed + 2, -1.0, 2.0)
                .iter()
                .map(|&z| half + z.floor())
                .collect()
        } else {
            vec![half; n * groups]
        };
        let perm: Option<Vec<i32>> = self.perm.then(|| {
            shuffled(k, seed + 3)
                .into_iter()
                .map(|i| i as i32)
                .collect()
        });
        let mut w = vec![0f64; n * k];
        for r in 0..n {
            for j in 0..k {
                let g = r * groups + j / self.group;
                let col = perm.as_ref().map_or(j, |p| p[j] as usize);
                w[r * k + col] = (codes[r * k + j] as f64 - zeros[g] as f64) * scales[g].to_f64();
            }
        }
        let weight = if self.gptq {
            // AutoGPTQ: qweight [K/pack, N] packed along K, qzeros
            // [groups, N/pack] packed along N holding zero - 1, scales [groups, N].
            let t = |v: &[u32], rows: usize, cols: usize| -> Vec<u32> {
                (0..rows * cols)
                    .map(|i| v[(i % rows) * cols + i / rows])
                    .collect()
            };
            let codes: Vec<u32> = codes.iter().map(|&c| c as u32).collect();
            let qw = pack_i32(&t(&codes, n, k), k, n, self.bits, true);
            let zq: Vec<u32> = zeros.iter().map(|&z| z as u32 - 1).collect();
            let qz = pack_i32(&t(&zq, n, groups), groups, n, self.bits, false);
            let st: Vec<bf16> = (0..groups * n)
                .map(|i| scales[(i % n) * groups + i / n])
                .collect();
            let pack = (32 / self.bits) as usize;
            Wna16Weight::from_gptq(
                &TensorView::new(&qw, &[k / pack, n]).expect("valid case"),
                &TensorView::new(&qz, &[groups, n / pack]).expect("valid case"),
                &TensorView::new(&st, &[groups, n]).expect("valid case"),
                None,
                self.bits,
                GptqFormat::V1,
            )
            .expect("valid case")
        } else {
            let zb = to_bf16(&zeros);
            let sv = TensorView::new(&scales, &[n, groups]).expect("valid case");
            let zv = TensorView::new(&zb, &[n, groups]).expect("valid case");
            Wna16Weight::from_codes(
                n,
                k,
                self.bits,
                &codes,
                &sv,
                self.zeros.then_some(&zv),
                perm,
            )
            .expect("valid case")
        };
        (weight, w)
    }
}

/// Packs `vals` `[rows, cols]` (each < 2^bits) into int32 words along rows
/// (dim 0) or columns, value `i` of a word at bits `bits·i`.
fn pack_i32(vals: &[u32], rows: usize, cols: usize, bits: u32, along_rows: bool) -> Vec<i32> {
    let pack = (32 / bits) as usize;
    let (pr, pc) = if along_rows {
        (rows / pack, cols)
    } else {
        (rows, cols / pack)
    };
    let mut out = vec![0u32; pr * pc];
    for r in 0..rows {
        for c in 0..cols {
            let (i, slot) = if along_rows {
                ((r / pack) * pc + c, r % pack)
            } else {
                (r * pc + c / pack, c % pack)
            };
            out[i] |= vals[r * cols + c] << (bits as usize * slot);
        }
    }
    out.into_iter().map(|w| w as i32).collect()
}

/// `wna16_linear` with `m` rows of `x` in `dtype` (out in `dtype`).
fn wna16_case(m: usize, q: QSpec, dtype: DType) -> AlignCase {
    let run = move || {
        let (w, wref) = q.build(100);
        let x = encode(&values(m * q.k, 1, -1.0, 1.0), dtype);
        let xv = TensorView::from_bytes(&x, dtype, &[m, q.k], None).expect("valid case");
        let mut y = vec![0u8; m * q.n * dtype.size()];
        let mut yv = TensorViewMut::from_bytes(&mut y, dtype, &[m, q.n], None).expect("valid");
        let (z, p) = (w.zeros(), w.perm());
        crate::wna16_linear(
            &xv,
            &w.qweight(),
            &w.scales(),
            z.as_ref(),
            p.as_ref(),
            None,
            &mut yv,
            q.bits,
        )
        .expect("valid case");
        let xf = |i: usize, kk: usize| xv.get_f32(&[i, kk]) as f64;
        let want = reference::linear_f64(m, q.n, q.k, xf, |j, kk| wref[j * q.k + kk], None);
        (decode(&y, dtype), want)
    };
    AlignCase {
        op: "wna16_linear",
        shape: format!("M={m} K={} N={} {} {dtype}", q.k, q.n, q.describe()),
        tolerance: tolerance(q.k, dtype),
        run: Box::new(run),
    }
}

/// `wna16_dequantize` into `dtype`: exact, `(code - zero)·scale` in f32
/// (exact for bf16 scales) rounded once to `dtype`.
fn dequantize_case(q: QSpec, dtype: DType) -> AlignCase {
    let run = move || {
        let (w, wref) = q.build(200);
        let mut out = vec![0u8; q.n * q.k * dtype.size()];
        let mut ov = TensorViewMut::from_bytes(&mut out, dtype, &[q.n, q.k], None).expect("valid");
        let (z, p) = (w.zeros(), w.perm());
        crate::wna16_dequantize(
            &w.qweight(),
            &w.scales(),
            z.as_ref(),
            p.as_ref(),
            &mut ov,
            q.bits,
        )
        .expect("valid case");
        let want = wref
            .iter()
            .map(|&v| load_f32(store_f32(v as f32, dtype), dtype) as f64)
            .collect();
        (decode(&out, dtype), want)
    };
    AlignCase {
        op: "wna16_dequantize",
        shape: format!("N={} K={} {} -> {dtype}", q.n, q.k, q.describe()),
        tolerance: Tolerance::EXACT,
        run: Box::new(run),
    }
}

/// Zero points of a W8A8 GEMM: none, per token (`azp` `[M]` with `azp_adj`
/// = Σ_k b), or per tensor (folded: `azp_adj` = 3·Σ_k b, no `azp`).
#[derive(Clone, Copy, PartialEq)]
enum Azp {
    None,
    PerToken,
    Folded,
}

/// `int8_scaled_mm(_azp)`: per-token activation and per-channel weight
/// scales, an f32 bias in [-1, 1) with `bias`, out in `dtype`.
fn int8_mm_case(m: usize, k: usize, n: usize, azp: Azp, bias: bool, dtype: DType) -> AlignCase {
    let run = move || {
        let int8 = |count: usize, seed: u64| -> Vec<i8> {
            values(count, seed, -128.0, 128.0)
                .iter()
                .map(|&v| v.floor().min(127.0) as i8)
                .collect()
        };
        let (a, bt) = (int8(m * k, 1), int8(n * k, 2));
        let sa = values(m, 3, 1e-3, 1e-2);
        let sb = values(n, 4, 1e-3, 1e-2);
        let colsum: Vec<i32> = (0..n)
            .map(|j| bt[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum())
            .collect();
        let adj: Vec<i32> = match azp {
            Azp::Folded => colsum.iter().map(|&s| 3 * s).collect(),
            _ => colsum,
        };
        let zp: Vec<i32> = values(m, 5, -128.0, 128.0)
            .iter()
            .map(|&v| v.floor() as i32)
            .collect();
        let bias_v = values(n, 6, -1.0, 1.0);
        let views = (
            TensorView::new(&a, &[m, k]).expect("valid case"),
            TensorView::strided(&bt, &[k, n], &[1, k]).expect("valid case"),
            TensorView::new(&sa, &[m, 1]).expect("valid case"),
            TensorView::new(&sb, &[1, n]).expect("valid case"),
            TensorView::new(&adj, &[n]).expect("valid case"),
            TensorView::new(&zp, &[m]).expect("valid case"),
            TensorView::new(&bias_v, &[n]).expect("valid case"),
        );
        let (av, bv, sav, sbv, adjv, zpv, biasv) = &views;
        let bias_t = bias.then_some(biasv);
        let mut y = vec![0u8; m * n * dtype.size()];
        let mut yv = TensorViewMut::from_bytes(&mut y, dtype, &[m, n], None).expect("valid");
        if azp == Azp::None {
            crate::int8_scaled_mm(&mut yv, av, bv, sav, sbv, bias_t).expect("valid case");
        } else {
            let z = (azp == Azp::PerToken).then_some(zpv);
            crate::int8_scaled_mm_azp(&mut yv, av, bv, sav, sbv, adjv, z, bias_t)
                .expect("valid case");
        }
        let want = reference::int8_scaled_mm(
            &a,
            &bt,
            m,
            n,
            k,
            &sa,
            &sb,
            (azp != Azp::None).then_some(&adj[..]),
            (azp == Azp::PerToken).then_some(&zp[..]),
            bias.then_some(&bias_v[..]),
        );
        (decode(&y, dtype), want)
    };
    let f32_rounding = 2f64.powi(-22);
    AlignCase {
        op: if azp == Azp::None {
            "int8_scaled_mm"
        } else {
            "int8_scaled_mm_azp"
        },
        shape: format!(
            "M={m} K={k} N={n}{}{} {dtype}",
            match azp {
                Azp::None => "",
                Azp::PerToken => " azp/token",
                Azp::Folded => " azp/tensor",
            },
            if bias { " bias" } else { "" }
        ),
        tolerance: Tolerance {
            atol: if bias { f32_rounding } else { 1e-30 },
            rtol: f32_rounding + 2f64.powi(-23) + out_ulp(dtype),
        },
        run: Box::new(run),
    }
}

/// `static_scaled_int8_quant` (scale 2.1, optional zero point 54) or
/// `dynamic_scaled_int8_quant` (per-token scales, optional zero points) of
/// `[t, h]` activations in `dtype` drawn from [-300, 700) (upstream's test
/// range): the int8 codes, then the scales and zero points written.
fn quant_case(dynamic: bool, azp: bool, t: usize, h: usize, dtype: DType) -> AlignCase {
    let run = move || {
        let x = encode(&values(t * h, 7, -300.0, 700.0), dtype);
        let xv = TensorView::from_bytes(&x, dtype, &[t, h], None).expect("valid case");
        let (mut q, mut s, mut z) = (vec![0i8; t * h], vec![0f32; t], vec![0i32; t]);
        let mut qv = TensorViewMut::new(&mut q, &[t, h]).expect("valid case");
        if dynamic {
            let mut sv = TensorViewMut::new(&mut s, &[t, 1]).expect("valid case");
            let mut zv = TensorViewMut::new(&mut z, &[t, 1]).expect("valid case");
            crate::dynamic_scaled_int8_quant(&mut qv, &xv, &mut sv, azp.then_some(&mut zv))
                .expect("valid case");
        } else {
            let zp = [54i32];
            let zv = TensorView::new(&zp, &[1]).expect("valid case");
            let sc = TensorView::new(&[2.1f32], &[1]).expect("valid case");
            crate::static_scaled_int8_quant(&mut qv, &xv, &sc, azp.then_some(&zv))
                .expect("valid case");
        }
        let xs: Vec<f32> = decode(&x, dtype).iter().map(|&v| v as f32).collect();
        let (mut wq, mut ws, mut wz) = (Vec::new(), Vec::new(), Vec::new());
        for row in xs.chunks(h) {
            let fixed = (!dynamic).then_some((2.1f32, azp.then_some(54)));
            let (rq, rs, rz) = reference::scaled_int8_quant_row(row, fixed, azp);
            wq.extend(rq.iter().map(|&v| v as f64));
            ws.push(rs as f64);
            wz.push(rz as f64);
        }
        let mut got: Vec<f64> = q.iter().map(|&v| v as f64).collect();
        if dynamic {
            got.extend(s.iter().map(|&v| v as f64));
            wq.extend(ws);
            if azp {
                got.extend(z.iter().map(|&v| v as f64));
                wq.extend(wz);
            }
        }
        (got, wq)
    };
    AlignCase {
        op: if dynamic {
            "dynamic_scaled_int8_quant"
        } else {
            "static_scaled_int8_quant"
        },
        shape: format!(
            "T={t} H={h} {dtype}{}",
            match (dynamic, azp) {
                (_, false) => "",
                (true, true) => " azp",
                (false, true) => " azp=54",
            }
        ),
        tolerance: Tolerance::EXACT,
        run: Box::new(run),
    }
}

pub(super) fn cases() -> Vec<AlignCase> {
    let q = |k: usize, bits: u32, group: usize, zeros: bool, perm: bool, gptq: bool| QSpec {
        n: 512,
        k,
        bits,
        group,
        zeros,
        perm,
        gptq,
    };
    vec![
        wna16_case(1, q(2048, 8, 2048, false, false, false), DType::BF16),
        wna16_case(64, q(2048, 8, 2048, true, false, false), DType::BF16),
        wna16_case(1, q(2048, 4, 128, false, false, false), DType::BF16),
        wna16_case(4, q(4096, 4, 128, true, false, false), DType::F32),
        wna16_case(64, q(2048, 4, 128, true, true, false), DType::BF16),
        wna16_case(16, q(2048, 4, 128, true, false, true), DType::BF16),
        dequantize_case(q(2048, 4, 128, true, true, false), DType::BF16),
        dequantize_case(q(2048, 8, 2048, false, false, false), DType::F32),
        int8_mm_case(16, 2048, 512, Azp::None, false, DType::BF16),
        int8_mm_case(64, 2048, 512, Azp::None, true, DType::F32),
        int8_mm_case(16, 2048, 512, Azp::PerToken, true, DType::BF16),
        int8_mm_case(64, 4096, 256, Azp::Folded, false, DType::F32),
        quant_case(true, false, 64, 2048, DType::BF16),
        quant_case(true, true, 16, 4096, DType::F32),
        quant_case(false, false, 64, 2048, DType::BF16),
        quant_case(false, true, 16, 4096, DType::F32),
    ]
}
