//! Alignment cases of the KV-cache family: the cache contents after a write
//! or a block copy, decoded to values (written fp8 as fp8 · scale), kernel
//! against reference. Exact: copies move bytes and a write rounds once, the
//! same way in both (src/ops/cache.rs).

use super::{decode, encode, shuffled, values, AlignCase, Tolerance};
use crate::dtype::DType;
use crate::reference::cache as reference;
use crate::tensor::{TensorView, TensorViewMut};

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
        let src = encode(
            &values(tokens * heads * head_size, 1, -4.0, 4.0),
            DType::BF16,
        );
        let src = TensorView::from_bytes(&src, DType::BF16, &[tokens, heads, head_size], None)
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
        let dequant = if stored.is_fp8() { 0.02 } else { 1.0 };
        let joined = |a: &[u8], b: &[u8]| -> Vec<f64> {
            [decode(a, stored), decode(b, stored)]
                .concat()
                .into_iter()
                .map(|v| v * dequant)
                .collect()
        };
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

/// Block copies on Qwen3-Next attention caches: within each layer's key and
/// value cache (`copy_blocks`, all layers in one call) or from a "device"
/// cache to a "host" cache (`swap_blocks`, one call per layer and cache),
/// `pairs` shuffled (source, destination) blocks. Flash bf16 blocks
/// `[16, 2, 256]` (16 KiB), or paged fp8 e4m3 blocks (key `[2, 16, 16, 16]`,
/// value `[2, 256, 16]`, 8 KiB). A call moving >= 1 MiB takes the
/// streaming-store path, smaller ones plain copies.
fn block_copy_case(swap: bool, layers: usize, pairs: usize, stored: DType) -> AlignCase {
    let run = move || {
        let (bs, heads, d) = (16usize, 2usize, 256usize);
        let (key_block, value_block) = if stored.is_fp8() {
            let x = 16 / stored.size();
            (vec![heads, d / x, bs, x], vec![heads, d, bs])
        } else {
            (vec![bs, heads, d], vec![bs, heads, d])
        };
        let per_block = bs * heads * d;
        // Destination caches hold 2·pairs + 3 blocks; swap sources 3·pairs.
        let dst_blocks = 2 * pairs + 3;
        let src_blocks = if swap { 3 * pairs } else { dst_blocks };
        let (from, to) = (shuffled(src_blocks, 7), shuffled(dst_blocks, 8));
        // copy_blocks: sources and destinations disjoint within one cache.
        let mapping: Vec<i64> = (0..pairs)
            .flat_map(|i| {
                let (s, d) = if swap {
                    (from[i], to[i])
                } else {
                    (to[i], to[pairs + i])
                };
                [s as i64, d as i64]
            })
            .collect();
        let map = TensorView::new(&mapping, &[pairs, 2]).expect("valid case");
        // Per layer: key then value, each the destination cache's bytes.
        let cache = |blocks: usize, seed: u64| -> Vec<u8> {
            encode(&values(blocks * per_block, seed, -4.0, 4.0), stored)
        };
        let dst0: Vec<Vec<u8>> = (0..2 * layers)
            .map(|c| cache(dst_blocks, 10 + c as u64))
            .collect();
        let src: Vec<Vec<u8>> = (0..2 * layers)
            .map(|c| cache(src_blocks, 50 + c as u64))
            .collect();
        let shape = |c: usize, blocks: usize| -> Vec<usize> {
            let block = if c % 2 == 0 { &key_block } else { &value_block };
            [&[blocks][..], block].concat()
        };
        let mut outs = Vec::new();
        for use_ref in [false, true] {
            let mut dst = dst0.clone();
            if swap {
                for (c, (s, t)) in src.iter().zip(dst.iter_mut()).enumerate() {
                    let sv = TensorView::from_bytes(s, stored, &shape(c, src_blocks), None)
                        .expect("valid case");
                    let mut tv = view(t, stored, &shape(c, dst_blocks));
                    if use_ref {
                        reference::swap_blocks(&sv, &mut tv, &map);
                    } else {
                        crate::swap_blocks(&sv, &mut tv, &map).expect("valid case");
                    }
                }
            } else {
                let (mut keys, mut vals) = (Vec::new(), Vec::new());
                for (c, t) in dst.iter_mut().enumerate() {
                    let tv = view(t, stored, &shape(c, dst_blocks));
                    if c % 2 == 0 {
                        keys.push(tv);
                    } else {
                        vals.push(tv);
                    }
                }
                if use_ref {
                    reference::copy_blocks(&mut keys, &mut vals, &map);
                } else {
                    crate::copy_blocks(&mut keys, &mut vals, &map).expect("valid case");
                }
            }
            outs.push(dst.iter().flat_map(|c| decode(c, stored)).collect());
        }
        let want = outs.pop().expect("two runs");
        (outs.pop().expect("two runs"), want)
    };
    let moved = layers * 2 * pairs * 16 * 2 * 256 * stored.size();
    AlignCase {
        op: if swap { "swap_blocks" } else { "copy_blocks" },
        shape: format!(
            "L={layers} pairs={pairs} {} {stored} {} KiB",
            if stored.is_fp8() { "paged" } else { "flash" },
            moved / 1024
        ),
        tolerance: Tolerance::EXACT,
        run: Box::new(run),
    }
}

fn view<'a>(buf: &'a mut [u8], stored: DType, shape: &[usize]) -> TensorViewMut<'a> {
    TensorViewMut::from_bytes(buf, stored, shape, None).expect("valid case")
}

pub(super) fn cases() -> Vec<AlignCase> {
    vec![
        write_case(false, 512, 2, 256, "auto", DType::BF16),
        write_case(false, 512, 8, 128, "fp8", DType::F8E4M3),
        write_case(false, 64, 8, 128, "fp8_e5m2", DType::F8E5M2),
        write_case(true, 512, 2, 256, "auto", DType::BF16),
        write_case(true, 256, 8, 128, "fp8", DType::F8E4M3),
        block_copy_case(false, 2, 16, DType::BF16),
        block_copy_case(false, 2, 4, DType::F8E4M3),
        block_copy_case(true, 1, 64, DType::BF16),
        block_copy_case(true, 2, 8, DType::F8E4M3),
    ]
}
