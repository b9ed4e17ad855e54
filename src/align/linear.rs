//! Alignment cases of the FC/GEMM family: `linear` in both regimes (decode
//! M <= 16 and packed GEMM) on PERF.md shapes, bf16 and f32, against the fp64
//! reference. Tolerance: the op's documented bound for inputs uniform in
//! [-1, 1) — `4·sqrt(K)·2⁻²⁴·Σ|x·w|` (Σ|x·w| ≈ K/4) plus one output ulp.

use super::{AlignCase, Tolerance};
use crate::dtype::{store_f32, DType};
use crate::reference::linear as reference;
use crate::tensor::{TensorView, TensorViewMut};

fn values(n: usize, seed: u64, dtype: DType) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(n * dtype.size());
    for _ in 0..n {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let x = (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        out.extend_from_slice(&store_f32(x, dtype).to_le_bytes()[..dtype.size()]);
    }
    out
}

fn case(m: usize, k: usize, n: usize, dtype: DType) -> AlignCase {
    let run = move || {
        let x = values(m * k, 1, dtype);
        let w = values(n * k, 2, dtype);
        let xv = TensorView::from_bytes(&x, dtype, &[m, k], None).expect("valid case");
        let wv = TensorView::from_bytes(&w, dtype, &[n, k], None).expect("valid case");
        let mut y = vec![0u8; m * n * dtype.size()];
        let mut yv = TensorViewMut::from_bytes(&mut y, dtype, &[m, n], None).expect("valid case");
        crate::linear(&xv, &wv, None, &mut yv).expect("valid case");
        let got = (0..m * n)
            .map(|i| yv.get_f32(&[i / n, i % n]) as f64)
            .collect();
        (got, reference::linear(&xv, &wv, None))
    };
    let ulp = if dtype == DType::F32 {
        2f64.powi(-23)
    } else {
        2f64.powi(-8)
    };
    AlignCase {
        op: "linear",
        shape: format!("M={m} K={k} N={n} {dtype}"),
        tolerance: Tolerance {
            atol: 4.0 * (k as f64).sqrt() * 2f64.powi(-24) * k as f64 / 4.0,
            rtol: ulp,
        },
        run: Box::new(run),
    }
}

pub(super) fn cases() -> Vec<AlignCase> {
    vec![
        case(1, 2048, 512, DType::BF16),
        case(16, 2048, 64, DType::BF16),
        case(64, 2048, 512, DType::BF16),
        case(4, 4096, 256, DType::F32),
        case(64, 2048, 128, DType::F32),
    ]
}
