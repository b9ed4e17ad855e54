//! Alignment cases of the layer family (Qwen3-Next shapes): rms_norm,
//! fused_add_rms_norm (the normalized output; the residual is exact),
//! rotary_embedding (q and k of one qkv buffer) and silu_and_mul, kernel
//! against the fp64 reference, with the tolerances the ops document.

use half::bf16;

use super::{to_bf16, values, widen, AlignCase, Tolerance};
use crate::reference::layer as reference;
use crate::tensor::{TensorView, TensorViewMut};

/// bf16 outputs: one rounding (≤ 1 ulp = 2⁻⁷ relative) plus f32 arithmetic.
const BF16: Tolerance = Tolerance {
    atol: 1e-30,
    rtol: 1.25 / 128.0,
};

fn rms_norm_case(tokens: usize, hidden: usize) -> AlignCase {
    let run = move || {
        let x = to_bf16(&values(tokens * hidden, 3, -4.0, 4.0));
        let w = to_bf16(&values(hidden, 4, -2.0, 2.0));
        let (xv, wv) = (
            TensorView::new(&x, &[tokens, hidden]).expect("valid case"),
            TensorView::new(&w, &[hidden]).expect("valid case"),
        );
        let mut out = [
            vec![bf16::ZERO; tokens * hidden],
            vec![bf16::ZERO; tokens * hidden],
        ];
        for (i, o) in out.iter_mut().enumerate() {
            let mut ov = TensorViewMut::new(o, &[tokens, hidden]).expect("valid case");
            if i == 0 {
                crate::rms_norm(&mut ov, &xv, &wv, 1e-6).expect("valid case");
            } else {
                reference::rms_norm(&mut ov, &xv, &wv, 1e-6);
            }
        }
        (widen(&out[0]), widen(&out[1]))
    };
    AlignCase {
        op: "rms_norm",
        shape: format!("T={tokens} H={hidden} bf16"),
        tolerance: BF16,
        run: Box::new(run),
    }
}

fn fused_add_rms_norm_case(tokens: usize, hidden: usize) -> AlignCase {
    let run = move || {
        let w = to_bf16(&values(hidden, 5, -2.0, 2.0));
        let wv = TensorView::new(&w, &[hidden]).expect("valid case");
        let mut out = Vec::new();
        for i in 0..2 {
            let mut x = to_bf16(&values(tokens * hidden, 6, -4.0, 4.0));
            let mut r = to_bf16(&values(tokens * hidden, 7, -4.0, 4.0));
            let mut xv = TensorViewMut::new(&mut x, &[tokens, hidden]).expect("valid case");
            let mut rv = TensorViewMut::new(&mut r, &[tokens, hidden]).expect("valid case");
            if i == 0 {
                crate::fused_add_rms_norm(&mut xv, &mut rv, &wv, 1e-6).expect("valid case");
            } else {
                reference::fused_add_rms_norm(&mut xv, &mut rv, &wv, 1e-6);
            }
            out.push(widen(&x));
        }
        let want = out.pop().expect("two runs");
        (out.pop().expect("two runs"), want)
    };
    AlignCase {
        op: "fused_add_rms_norm",
        shape: format!("T={tokens} H={hidden} bf16"),
        tolerance: BF16,
        run: Box::new(run),
    }
}

/// Qwen3-Next attention: 16 q heads, 2 kv heads, head_dim 256, rotary 64.
fn rotary_case(tokens: usize, is_neox: bool) -> AlignCase {
    let (nq, nk, hs, rot, max_pos) = (16usize, 2usize, 256usize, 64usize, 4096usize);
    let run = move || {
        let row = (nq + 2 * nk) * hs;
        let mut cache = vec![0f32; max_pos * rot];
        for p in 0..max_pos {
            for i in 0..rot / 2 {
                let a = p as f64 * 10_000_000f64.powf(-2.0 * i as f64 / rot as f64);
                cache[p * rot + i] = a.cos() as f32;
                cache[p * rot + rot / 2 + i] = a.sin() as f32;
            }
        }
        let cv = TensorView::new(&cache, &[max_pos, rot]).expect("valid case");
        let pos: Vec<i64> = (0..tokens).map(|t| ((t * 577) % max_pos) as i64).collect();
        let pv = TensorView::new(&pos, &[tokens]).expect("valid case");
        let mut out = Vec::new();
        for i in 0..2 {
            let mut qkv = to_bf16(&values(tokens * row, 8, -4.0, 4.0));
            let p = qkv.as_mut_ptr() as *mut u8;
            // q [T, nq*hs] and k [T, nk*hs] with the qkv row stride, as
            // views with disjoint elements of one buffer.
            let layout = |cols: usize| crate::tensor::Layout {
                strides: vec![row, 1],
                ..crate::tensor::Layout::contiguous(crate::DType::BF16, &[tokens, cols])
            };
            // SAFETY: both views lie inside `qkv` (the last row ends at
            // (T - 1)·row + (nq + nk)·hs ≤ T·row), share no element, and
            // outlive nothing but this iteration.
            let (mut qv, mut kv) = unsafe {
                (
                    TensorViewMut::from_raw(p, layout(nq * hs)),
                    TensorViewMut::from_raw(p.add(nq * hs * 2), layout(nk * hs)),
                )
            };
            if i == 0 {
                crate::rotary_embedding(&pv, &mut qv, Some(&mut kv), hs, &cv, is_neox)
                    .expect("valid case");
            } else {
                reference::rotary_embedding(&pv, &mut qv, Some(&mut kv), hs, &cv, is_neox);
            }
            out.push(widen(&qkv));
        }
        let want = out.pop().expect("two runs");
        (out.pop().expect("two runs"), want)
    };
    AlignCase {
        op: "rotary_embedding",
        shape: format!(
            "T={tokens} q{nq}k{nk}x{hs} rot{rot} {} bf16",
            if is_neox { "neox" } else { "gptj" }
        ),
        // The documented 2⁻²¹·hypot(x, y) term with |x|, |y| ≤ 4.
        tolerance: Tolerance {
            atol: 2f64.powi(-21) * 4.0 * std::f64::consts::SQRT_2,
            rtol: BF16.rtol,
        },
        run: Box::new(run),
    }
}

fn silu_and_mul_case(tokens: usize, d: usize) -> AlignCase {
    let run = move || {
        let x = to_bf16(&values(tokens * 2 * d, 9, -8.0, 8.0));
        let xv = TensorView::new(&x, &[tokens, 2 * d]).expect("valid case");
        let mut out = [vec![bf16::ZERO; tokens * d], vec![bf16::ZERO; tokens * d]];
        for (i, o) in out.iter_mut().enumerate() {
            let mut ov = TensorViewMut::new(o, &[tokens, d]).expect("valid case");
            if i == 0 {
                crate::silu_and_mul(&mut ov, &xv).expect("valid case");
            } else {
                reference::silu_and_mul(&mut ov, &xv);
            }
        }
        (widen(&out[0]), widen(&out[1]))
    };
    AlignCase {
        op: "silu_and_mul",
        shape: format!("T={tokens} D={d} bf16"),
        tolerance: BF16,
        run: Box::new(run),
    }
}

pub(super) fn cases() -> Vec<AlignCase> {
    vec![
        rms_norm_case(64, 2048),
        rms_norm_case(4, 4096),
        fused_add_rms_norm_case(64, 2048),
        rotary_case(64, true),
        rotary_case(16, false),
        silu_and_mul_case(64, 512),
        silu_and_mul_case(4, 5120),
    ]
}
