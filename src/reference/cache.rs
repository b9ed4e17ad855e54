//! Reference KV-cache writes, element by element through the views' accessors.

use crate::dtype::DType;
use crate::ops::cache::KvCacheDtype;
use crate::tensor::{TensorView, TensorViewMut};

fn scale_of(scale: Option<&TensorView>, head: usize) -> f32 {
    match scale {
        None => 1.0,
        Some(s) if s.numel() == 1 => s.get_f32(&vec![0; s.ndim()]),
        Some(s) => s.get_f32(&[head]),
    }
}

/// The value a cache element holds after storing `x`: fp8 caches store
/// `saturate(x / scale)`, other caches `x` rounded to their dtype.
fn stored_bits(x: f32, stored: DType, scale: f32) -> u64 {
    let x = if stored.is_fp8() { x / scale } else { x };
    crate::dtype::store_f32(x, stored) as u64
}

fn stored_dtype(kv_cache_dtype: &str, src: DType) -> DType {
    match KvCacheDtype::parse(kv_cache_dtype).expect("reference is called with valid arguments") {
        KvCacheDtype::Auto => src,
        KvCacheDtype::Float16 => DType::F16,
        KvCacheDtype::BFloat16 => DType::BF16,
        KvCacheDtype::Fp8E4M3 => DType::F8E4M3,
        KvCacheDtype::Fp8E5M2 => DType::F8E5M2,
    }
}

/// `reshape_and_cache` for the paged layout (key `[nb, H, D/x, bs, x]`, value `[nb, H, D, bs]`).
#[allow(clippy::too_many_arguments)]
pub fn reshape_and_cache(
    key: &TensorView,
    value: &TensorView,
    key_cache: &mut TensorViewMut,
    value_cache: &mut TensorViewMut,
    slot_mapping: &TensorView,
    kv_cache_dtype: &str,
    k_scale: Option<&TensorView>,
    v_scale: Option<&TensorView>,
) {
    let stored = stored_dtype(kv_cache_dtype, key.dtype());
    let (heads, head_size) = (key.shape()[1], key.shape()[2]);
    let (block_size, x) = (key_cache.shape()[3], key_cache.shape()[4]);
    for t in 0..slot_mapping.shape()[0] {
        let slot = slot_mapping.get_i64(&[t]);
        if slot < 0 {
            continue;
        }
        let (b, o) = (slot as usize / block_size, slot as usize % block_size);
        for h in 0..heads {
            for d in 0..head_size {
                let kb = stored_bits(key.get_f32(&[t, h, d]), stored, scale_of(k_scale, h));
                key_cache.set_bits(&[b, h, d / x, o, d % x], kb);
                let vb = stored_bits(value.get_f32(&[t, h, d]), stored, scale_of(v_scale, h));
                value_cache.set_bits(&[b, h, d, o], vb);
            }
        }
    }
}

/// `reshape_and_cache_flash` (caches `[nb, bs, H, D]`); `value_cache = None`
/// writes values into `key_cache` after the keys, token by token.
#[allow(clippy::too_many_arguments)]
pub fn reshape_and_cache_flash(
    key: &TensorView,
    value: &TensorView,
    key_cache: &mut TensorViewMut,
    mut value_cache: Option<&mut TensorViewMut>,
    slot_mapping: &TensorView,
    kv_cache_dtype: &str,
    k_scale: Option<&TensorView>,
    v_scale: Option<&TensorView>,
) {
    let stored = stored_dtype(kv_cache_dtype, key.dtype());
    let (heads, head_size) = (key.shape()[1], key.shape()[2]);
    let block_size = key_cache.shape()[1];
    for t in 0..slot_mapping.shape()[0] {
        let slot = slot_mapping.get_i64(&[t]);
        if slot < 0 {
            continue;
        }
        let (b, o) = (slot as usize / block_size, slot as usize % block_size);
        for h in 0..heads {
            for d in 0..head_size {
                let kb = stored_bits(key.get_f32(&[t, h, d]), stored, scale_of(k_scale, h));
                key_cache.set_bits(&[b, o, h, d], kb);
            }
            for d in 0..head_size {
                let vb = stored_bits(value.get_f32(&[t, h, d]), stored, scale_of(v_scale, h));
                match value_cache.as_deref_mut() {
                    Some(v) => v.set_bits(&[b, o, h, d], vb),
                    None => key_cache.set_bits(&[b, o, h, d], vb),
                }
            }
        }
    }
}

/// Multi-indices of one block's elements, in row-major order.
fn block_indices(shape: &[usize], block: usize) -> Vec<Vec<usize>> {
    let inner = &shape[1..];
    let mut out = Vec::new();
    let mut idx = vec![0usize; inner.len()];
    for _ in 0..inner.iter().product::<usize>() {
        let mut full = vec![block];
        full.extend_from_slice(&idx);
        out.push(full);
        for k in (0..inner.len()).rev() {
            idx[k] += 1;
            if idx[k] < inner[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

fn read_block(from: &TensorView, block: usize) -> Vec<u64> {
    block_indices(from.shape(), block)
        .iter()
        .map(|i| from.get_bits(i))
        .collect()
}

fn write_block(to: &mut TensorViewMut, block: usize, bits: &[u64]) {
    for (i, &b) in block_indices(to.shape(), block).iter().zip(bits) {
        to.set_bits(i, b);
    }
}

/// `copy_blocks`: every (src, dst) pair of `block_mapping`, in every layer.
pub fn copy_blocks<'a>(
    key_caches: &mut [TensorViewMut<'a>],
    value_caches: &mut [TensorViewMut<'a>],
    block_mapping: &TensorView,
) {
    for cache in key_caches.iter_mut().chain(value_caches.iter_mut()) {
        for i in 0..block_mapping.shape()[0] {
            let (s, d) = (
                block_mapping.get_i64(&[i, 0]) as usize,
                block_mapping.get_i64(&[i, 1]) as usize,
            );
            let bits = read_block(&cache.view(), s);
            write_block(cache, d, &bits);
        }
    }
}

/// `swap_blocks`: copies blocks from `src` to `dst`.
pub fn swap_blocks(src: &TensorView, dst: &mut TensorViewMut, block_mapping: &TensorView) {
    for i in 0..block_mapping.shape()[0] {
        let (s, d) = (
            block_mapping.get_i64(&[i, 0]) as usize,
            block_mapping.get_i64(&[i, 1]) as usize,
        );
        write_block(dst, d, &read_block(src, s));
    }
}
