//! Alignment cases of the KV-cache family: the cache contents after a write,
//! decoded to values (fp8 as fp8 · scale), kernel against reference.

use super::{AlignCase, Tolerance};
use crate::dtype::{load_f32, store_f32, DType};
use crate::reference::cache as reference;
use crate::tensor::{TensorView, TensorViewMut};

/// A deterministic value stream for case inputs.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        })
        .collect()
}

fn flash_case(
    tokens: usize,
    heads: usize,
    head_size: usize,
    kv: &'static str,
    stored: DType,
) -> AlignCase {
    let run = move || {
        let block_size = 16;
        let blocks = (2 * tokens).div_ceil(block_size);
        let src: Vec<u16> = values(tokens * heads * head_size, 1)
            .iter()
            .map(|&x| store_f32(x, DType::BF16) as u16)
            .collect();
        let src =
            TensorView::from_bytes(bytes(&src), DType::BF16, &[tokens, heads, head_size], None)
                .expect("valid case");
        // Odd slots only: every block is half written, the rest stays zero.
        let slots: Vec<i64> = (0..tokens as i64).map(|t| t * 2 + 1).collect();
        let slots = TensorView::new(&slots, &[tokens]).expect("valid case");
        let scale = [0.02f32];
        let scale = TensorView::new(&scale, &[1]).expect("valid case");
        let shape = [blocks, block_size, heads, head_size];
        let n = shape.iter().product::<usize>() * stored.size();
        let decode = |cache: &[u8]| -> Vec<f64> {
            cache
                .chunks(stored.size())
                .map(|c| {
                    let mut b = [0u8; 4];
                    b[..c.len()].copy_from_slice(c);
                    let v = load_f32(u32::from_le_bytes(b), stored) as f64;
                    if stored.is_fp8() {
                        v * 0.02
                    } else {
                        v
                    }
                })
                .collect()
        };
        let mut out = [vec![0u8; n], vec![0u8; n]];
        for (i, buf) in out.iter_mut().enumerate() {
            let mut cache =
                TensorViewMut::from_bytes(buf, stored, &shape, None).expect("valid case");
            if i == 0 {
                crate::reshape_and_cache_flash(
                    &src,
                    &src,
                    &mut cache,
                    None,
                    &slots,
                    kv,
                    Some(&scale),
                    Some(&scale),
                )
                .expect("valid case");
            } else {
                reference::reshape_and_cache_flash(
                    &src,
                    &src,
                    &mut cache,
                    None,
                    &slots,
                    kv,
                    Some(&scale),
                    Some(&scale),
                );
            }
        }
        (decode(&out[0]), decode(&out[1]))
    };
    AlignCase {
        op: "reshape_and_cache_flash",
        shape: format!("T={tokens} H={heads} D={head_size} {kv}"),
        tolerance: Tolerance::EXACT,
        run: Box::new(run),
    }
}

fn bytes(v: &[u16]) -> &[u8] {
    // SAFETY: u16 has no padding; the slice covers the same memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 2) }
}

pub(super) fn cases() -> Vec<AlignCase> {
    vec![
        flash_case(512, 2, 256, "auto", DType::BF16),
        flash_case(512, 8, 128, "fp8", DType::F8E4M3),
        flash_case(64, 8, 128, "fp8_e5m2", DType::F8E5M2),
    ]
}
