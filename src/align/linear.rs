//! Alignment cases of the FC/GEMM family: `linear` in both regimes (decode
//! M <= 16 and packed GEMM) and `linear_packed` on PERF.md shapes, bf16 and f32, against the fp64
//! reference. Tolerance: the op's documented bound for inputs uniform in
//! [-1, 1) — `4·sqrt(K)·2⁻²⁴·Σ|x·w|` (Σ|x·w| ≈ K/4) plus one output ulp.

use super::{encode, values, AlignCase, Tolerance};
use crate::dtype::DType;
use crate::reference::linear as reference;
use crate::tensor::{TensorView, TensorViewMut};

fn case(m: usize, k: usize, n: usize, dtype: DType) -> AlignCase {
    dense_case(m, k, n, dtype, false)
}

/// `linear_packed`: the weight packed (for the active tier) inside the case.
fn packed_case(m: usize, k: usize, n: usize, dtype: DType) -> AlignCase {
    dense_case(m, k, n, dtype, true)
}

fn dense_case(m: usize, k: usize, n: usize, dtype: DType, packed: bool) -> AlignCase {
    let run = move || {
        let x = encode(&values(m * k, 1, -1.0, 1.0), dtype);
        let w = encode(&values(n * k, 2, -1.0, 1.0), dtype);
        let xv = TensorView::from_bytes(&x, dtype, &[m, k], None).expect("valid case");
        let wv = TensorView::from_bytes(&w, dtype, &[n, k], None).expect("valid case");
        let mut y = vec![0u8; m * n * dtype.size()];
        let mut yv = TensorViewMut::from_bytes(&mut y, dtype, &[m, n], None).expect("valid case");
        if packed {
            let p = crate::PackedLinearWeight::new(&wv).expect("valid case");
            crate::linear_packed(&xv, &p, None, &mut yv).expect("valid case");
        } else {
            crate::linear(&xv, &wv, None, &mut yv).expect("valid case");
        }
        let got = (0..m * n)
            .map(|i| yv.get_f32(&[i / n, i % n]) as f64)
            .collect();
        (got, reference::linear(&xv, &wv, None))
    };
    AlignCase {
        op: if packed { "linear_packed" } else { "linear" },
        shape: format!("M={m} K={k} N={n} {dtype}"),
        tolerance: tolerance(k, dtype),
        run: Box::new(run),
    }
}

/// The rounding of one output in `dtype`, relative (f32: 2⁻²³; half
/// precision: 2⁻⁸, half an ulp at the top of a binade).
pub(super) fn out_ulp(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        2f64.powi(-23)
    } else {
        2f64.powi(-8)
    }
}

/// The FC family's bound for inputs whose `Σ_k |x·w|` is about `K/4`
/// (uniform in [-1, 1), or E|w| = 1/2): `4·sqrt(K)·2⁻²⁴·K/4` plus one
/// output rounding.
pub(super) fn tolerance(k: usize, out: DType) -> Tolerance {
    Tolerance {
        atol: 4.0 * (k as f64).sqrt() * 2f64.powi(-24) * k as f64 / 4.0,
        rtol: out_ulp(out),
    }
}

pub(super) fn cases() -> Vec<AlignCase> {
    vec![
        case(1, 2048, 512, DType::BF16),
        case(16, 2048, 64, DType::BF16),
        case(64, 2048, 512, DType::BF16),
        case(4, 4096, 256, DType::F32),
        case(64, 2048, 128, DType::F32),
        packed_case(1, 2048, 512, DType::BF16),
        packed_case(64, 2048, 512, DType::BF16),
        packed_case(64, 2048, 128, DType::F32),
    ]
}
