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

/// A write of `tokens` bf16 rows into a flash-layout cache, or with `paged`
/// into the paged layout (key `[nb, H, D/x, bs, x]`, value `[nb, H, D, bs]`).
fn write_case(
    paged: bool,
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
        let x = 16 / stored.size();
        let (key_shape, value_shape) = if paged {
            (
                vec![blocks, heads, head_size / x, block_size, x],
                vec![blocks, heads, head_size, block_size],
            )
        } else {
            let flash = vec![blocks, block_size, heads, head_size];
            (flash.clone(), flash)
        };
        let n = key_shape.iter().product::<usize>() * stored.size();
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
        // [kernel key, kernel value, reference key, reference value]
        let mut out = [vec![0u8; n], vec![0u8; n], vec![0u8; n], vec![0u8; n]];
        let [kk, kvv, rk, rv] = &mut out;
        let (s, sc) = (Some(&scale), Some(&scale));
        let (mut k1, mut v1) = (
            view(kk, stored, &key_shape),
            view(kvv, stored, &value_shape),
        );
        let (mut k2, mut v2) = (view(rk, stored, &key_shape), view(rv, stored, &value_shape));
        if paged {
            crate::reshape_and_cache(&src, &src, &mut k1, &mut v1, &slots, kv, s, sc)
                .expect("valid case");
            reference::reshape_and_cache(&src, &src, &mut k2, &mut v2, &slots, kv, s, sc);
        } else {
            crate::reshape_and_cache_flash(&src, &src, &mut k1, Some(&mut v1), &slots, kv, s, sc)
                .expect("valid case");
            reference::reshape_and_cache_flash(
                &src,
                &src,
                &mut k2,
                Some(&mut v2),
                &slots,
                kv,
                s,
                sc,
            );
        }
        drop((k1, v1, k2, v2));
        let joined = |a: &[u8], b: &[u8]| [decode(a), decode(b)].concat();
        (joined(&out[0], &out[1]), joined(&out[2], &out[3]))
    };
    AlignCase {
        op: if paged {
            "reshape_and_cache"
        } else {
            "reshape_and_cache_flash"
        },
        shape: format!("T={tokens} H={heads} D={head_size} {kv}"),
        tolerance: Tolerance::EXACT,
        run: Box::new(run),
    }
}

fn view<'a>(buf: &'a mut [u8], stored: DType, shape: &[usize]) -> TensorViewMut<'a> {
    TensorViewMut::from_bytes(buf, stored, shape, None).expect("valid case")
}

fn bytes(v: &[u16]) -> &[u8] {
    // SAFETY: u16 has no padding; the slice covers the same memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 2) }
}

pub(super) fn cases() -> Vec<AlignCase> {
    vec![
        write_case(false, 512, 2, 256, "auto", DType::BF16),
        write_case(false, 512, 8, 128, "fp8", DType::F8E4M3),
        write_case(false, 64, 8, 128, "fp8_e5m2", DType::F8E5M2),
        write_case(true, 512, 2, 256, "auto", DType::BF16),
        write_case(true, 256, 8, 128, "fp8", DType::F8E4M3),
    ]
}
