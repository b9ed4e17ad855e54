//! Alignment cases of the attention family on Qwen3-Next heads (16 q / 2 kv,
//! head_size 256) and Llama heads (32 / 8, 128): paged decode v1 (bf16) and
//! v2 (fp8 e4m3, several partitions), varlen prefill + decode over a flash
//! cache, merge_attn_states; kernel against the f64 reference with the
//! tolerances the ops document (values in [-1, 1], so the documented
//! `atol · max|v|` is `atol`).

use half::bf16;

use super::{shuffled, to_bf16, values, widen, AlignCase, Tolerance};
use crate::dtype::F8E4M3;
use crate::reference::attention as reference;
use crate::tensor::{TensorView, TensorViewMut};

/// bf16 outputs of attention (src/ops/attention.rs).
const BF16: Tolerance = Tolerance {
    atol: 6e-3,
    rtol: 8e-3,
};

/// A shuffled block table: sequence s uses `blocks[s][..]`, distinct ids.
fn tables(lens: &[usize], bs: usize, seed: u64) -> (Vec<i32>, usize, usize) {
    let per: Vec<usize> = lens.iter().map(|l| l.div_ceil(bs)).collect();
    let width = per.iter().copied().max().unwrap_or(0).max(1);
    let nb: usize = per.iter().sum::<usize>().max(1);
    let ids: Vec<i32> = shuffled(nb, seed).into_iter().map(|i| i as i32).collect();
    let mut t = vec![0i32; lens.len() * width];
    let mut next = 0;
    for (s, &n) in per.iter().enumerate() {
        t[s * width..s * width + n].copy_from_slice(&ids[next..next + n]);
        next += n;
    }
    (t, width, nb)
}

fn paged_case(v2: bool) -> AlignCase {
    let (h, hkv, d, bs) = (16usize, 2usize, 256usize, 16usize);
    let lens: Vec<usize> = if v2 { vec![1100, 37] } else { vec![300, 77] };
    let run = move || {
        let (table, width, nb) = tables(&lens, bs, 11);
        let q = to_bf16(&values(lens.len() * h * d, 1, -2.0, 2.0));
        let lens32: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        let max_len = lens.iter().copied().max().unwrap_or(0);
        let np = max_len.div_ceil(512);
        let s = lens.len();
        let mut out = [vec![bf16::ZERO; s * h * d], vec![bf16::ZERO; s * h * d]];
        let qv = TensorView::new(&q, &[s, h, d]).expect("valid case");
        let bt = TensorView::new(&table, &[s, width]).expect("valid case");
        let lv = TensorView::new(&lens32, &[s]).expect("valid case");
        let n = nb * hkv * d * bs;
        if v2 {
            // fp8 e4m3 cache, values / scale stored, dequantised as fp8 * scale.
            let scale = [0.01f32];
            let kc: Vec<F8E4M3> = values(n, 2, -100.0, 100.0)
                .iter()
                .map(|&x| F8E4M3::from_f32(x))
                .collect();
            let vc: Vec<F8E4M3> = values(n, 3, -100.0, 100.0)
                .iter()
                .map(|&x| F8E4M3::from_f32(x))
                .collect();
            let kv = TensorView::new(&kc, &[nb, hkv, d / 16, bs, 16]).expect("valid case");
            let vv = TensorView::new(&vc, &[nb, hkv, d, bs]).expect("valid case");
            let sv = TensorView::new(&scale, &[1]).expect("valid case");
            for (i, o) in out.iter_mut().enumerate() {
                let mut es = vec![0f32; s * h * np];
                let mut ml = vec![0f32; s * h * np];
                let mut tmp = vec![bf16::ZERO; s * h * np * d];
                let mut ov = TensorViewMut::new(o, &[s, h, d]).expect("valid case");
                let mut ev = TensorViewMut::new(&mut es, &[s, h, np]).expect("valid case");
                let mut mv = TensorViewMut::new(&mut ml, &[s, h, np]).expect("valid case");
                let mut tv = TensorViewMut::new(&mut tmp, &[s, h, np, d]).expect("valid case");
                let scale = 1.0 / (d as f32).sqrt();
                if i == 0 {
                    crate::paged_attention_v2(
                        &mut ov,
                        &mut ev,
                        &mut mv,
                        &mut tv,
                        &qv,
                        &kv,
                        &vv,
                        hkv,
                        scale,
                        &bt,
                        &lv,
                        bs,
                        max_len,
                        None,
                        "fp8",
                        Some(&sv),
                        Some(&sv),
                    )
                    .expect("valid case");
                } else {
                    reference::paged_attention_v2(
                        &mut ov,
                        &mut ev,
                        &mut mv,
                        &mut tv,
                        &qv,
                        &kv,
                        &vv,
                        hkv,
                        scale,
                        &bt,
                        &lv,
                        None,
                        "fp8",
                        Some(&sv),
                        Some(&sv),
                    );
                }
            }
        } else {
            let kc = to_bf16(&values(n, 2, -1.0, 1.0));
            let vc = to_bf16(&values(n, 3, -1.0, 1.0));
            let kv = TensorView::new(&kc, &[nb, hkv, d / 8, bs, 8]).expect("valid case");
            let vv = TensorView::new(&vc, &[nb, hkv, d, bs]).expect("valid case");
            for (i, o) in out.iter_mut().enumerate() {
                let mut ov = TensorViewMut::new(o, &[s, h, d]).expect("valid case");
                let scale = 1.0 / (d as f32).sqrt();
                if i == 0 {
                    crate::paged_attention_v1(
                        &mut ov, &qv, &kv, &vv, hkv, scale, &bt, &lv, bs, max_len, None, "auto",
                        None, None,
                    )
                    .expect("valid case");
                } else {
                    reference::paged_attention_v1(
                        &mut ov, &qv, &kv, &vv, hkv, scale, &bt, &lv, None, "auto", None, None,
                    );
                }
            }
        }
        (widen(&out[0]), widen(&out[1]))
    };
    AlignCase {
        op: if v2 {
            "paged_attention_v2"
        } else {
            "paged_attention_v1"
        },
        shape: if v2 {
            "H=16/2 D=256 len=1100,37 fp8".into()
        } else {
            "H=16/2 D=256 len=300,77 bf16".into()
        },
        tolerance: BF16,
        run: Box::new(run),
    }
}

fn varlen_case() -> AlignCase {
    let (h, hkv, d, bs) = (32usize, 8usize, 128usize, 16usize);
    // One decode row, one 96-token prefill chunk over 160 keys.
    let seqs = [(1usize, 257usize), (96, 160)];
    let run = move || {
        let k_lens: Vec<usize> = seqs.iter().map(|s| s.1).collect();
        let (table, width, nb) = tables(&k_lens, bs, 21);
        let total: usize = seqs.iter().map(|s| s.0).sum();
        let q = to_bf16(&values(total * h * d, 4, -2.0, 2.0));
        let n = nb * bs * hkv * d;
        let kc = to_bf16(&values(n, 5, -1.0, 1.0));
        let vc = to_bf16(&values(n, 6, -1.0, 1.0));
        let cu = [0i32, seqs[0].0 as i32, total as i32];
        let used: Vec<i32> = k_lens.iter().map(|&l| l as i32).collect();
        let qv = TensorView::new(&q, &[total, h, d]).expect("valid case");
        let kv = TensorView::new(&kc, &[nb, bs, hkv, d]).expect("valid case");
        let vv = TensorView::new(&vc, &[nb, bs, hkv, d]).expect("valid case");
        let cv = TensorView::new(&cu, &[3]).expect("valid case");
        let uv = TensorView::new(&used, &[2]).expect("valid case");
        let bt = TensorView::new(&table, &[2, width]).expect("valid case");
        let mut out = [
            vec![bf16::ZERO; total * h * d],
            vec![bf16::ZERO; total * h * d],
        ];
        for (i, o) in out.iter_mut().enumerate() {
            let mut ov = TensorViewMut::new(o, &[total, h, d]).expect("valid case");
            let scale = 1.0 / (d as f32).sqrt();
            if i == 0 {
                crate::flash_attn_varlen_func(
                    &qv,
                    &kv,
                    &vv,
                    96,
                    &cv,
                    257,
                    &uv,
                    Some(scale),
                    true,
                    (-1, -1),
                    0.0,
                    None,
                    &bt,
                    None,
                    &mut ov,
                    None,
                    None,
                    None,
                )
                .expect("valid case");
            } else {
                reference::flash_attn_varlen_func(
                    &qv,
                    &kv,
                    &vv,
                    &cv,
                    &uv,
                    scale,
                    true,
                    (-1, -1),
                    0.0,
                    None,
                    &bt,
                    None,
                    &mut ov,
                    None,
                    None,
                    None,
                );
            }
        }
        (widen(&out[0]), widen(&out[1]))
    };
    AlignCase {
        op: "flash_attn_varlen_func",
        shape: "H=32/8 D=128 q=1,96 k=257,160 bf16".into(),
        tolerance: BF16,
        run: Box::new(run),
    }
}

fn merge_case() -> AlignCase {
    let (n, h, d) = (64usize, 16usize, 256usize);
    let run = move || {
        let p = to_bf16(&values(n * h * d, 7, -1.0, 1.0));
        let s = to_bf16(&values(n * h * d, 8, -1.0, 1.0));
        let pl = values(h * n, 9, -6.0, 6.0);
        let sl = values(h * n, 10, -6.0, 6.0);
        let views = (
            TensorView::new(&p, &[n, h, d]).expect("valid case"),
            TensorView::new(&pl, &[h, n]).expect("valid case"),
            TensorView::new(&s, &[n, h, d]).expect("valid case"),
            TensorView::new(&sl, &[h, n]).expect("valid case"),
        );
        let mut out = [vec![bf16::ZERO; n * h * d], vec![bf16::ZERO; n * h * d]];
        for (i, o) in out.iter_mut().enumerate() {
            let mut ov = TensorViewMut::new(o, &[n, h, d]).expect("valid case");
            if i == 0 {
                crate::merge_attn_states(&mut ov, &views.0, &views.1, &views.2, &views.3, None)
                    .expect("valid case");
            } else {
                reference::merge_attn_states(&mut ov, &views.0, &views.1, &views.2, &views.3, None);
            }
        }
        (widen(&out[0]), widen(&out[1]))
    };
    AlignCase {
        op: "merge_attn_states",
        shape: format!("T={n} H={h} D={d} bf16"),
        // One rounding of the output.
        tolerance: Tolerance {
            atol: 1e-30,
            rtol: 1.0 / 128.0,
        },
        run: Box::new(run),
    }
}

pub(super) fn cases() -> Vec<AlignCase> {
    vec![
        paged_case(false),
        paged_case(true),
        varlen_case(),
        merge_case(),
    ]
}
