//! KV-cache ops (vLLM `csrc/cache_kernels.cu` semantics): thin C wrappers
//! over `xpu_ops::{reshape_and_cache, reshape_and_cache_flash, copy_blocks,
//! swap_blocks}`. The shapes and rules are documented on the Rust functions.

use std::ffi::c_char;

use xops::dlpack::DLTensor;

use crate::call::{c_str, ffi_call, opt_tensor, same_tensor, tensor, tensor_mut, tensors_mut};
use crate::status::xops_status;

/// Writes each token's key and value into a paged cache.
///
/// * `key`, `value`: `[num_tokens, num_heads, head_size]` float32/float16/bfloat16,
///   head_size contiguous, any token/head strides; the first
///   `slot_mapping` length tokens are written.
/// * `key_cache`: `[num_blocks, num_heads, head_size / x, block_size, x]`,
///   `x = 16 / element size`; `value_cache`: `[num_blocks, num_heads, head_size, block_size]`.
/// * `slot_mapping`: int32/int64 `[num_tokens]`; negative slots are skipped.
/// * `kv_cache_dtype`: "auto", "float16", "bfloat16", "fp8" (= "fp8_e4m3"),
///   "fp8_e5m2"; fp8 caches are uint8 or float8 tensors and store
///   saturate(x / scale).
/// * `k_scale`, `v_scale`: float32 `[1]` or `[num_heads]`, fp8 only; NULL = 1.
///
/// Nothing is written unless every argument is valid.
///
/// # Safety
/// Each pointer is NULL or valid; tensor memory is readable (writable for
/// the caches) for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn xops_reshape_and_cache(
    key: *const DLTensor,
    value: *const DLTensor,
    key_cache: *const DLTensor,
    value_cache: *const DLTensor,
    slot_mapping: *const DLTensor,
    kv_cache_dtype: *const c_char,
    k_scale: *const DLTensor,
    v_scale: *const DLTensor,
) -> xops_status {
    ffi_call("xops_reshape_and_cache", || {
        let key = tensor(key, "key")?;
        let value = tensor(value, "value")?;
        let mut kc = tensor_mut(key_cache, "key_cache")?;
        let mut vc = tensor_mut(value_cache, "value_cache")?;
        let slots = tensor(slot_mapping, "slot_mapping")?;
        let dt = c_str(kv_cache_dtype, "kv_cache_dtype")?;
        let ks = opt_tensor(k_scale, "k_scale")?;
        let vs = opt_tensor(v_scale, "v_scale")?;
        xops::reshape_and_cache(
            &key,
            &value,
            &mut kc,
            &mut vc,
            &slots,
            dt,
            ks.as_ref(),
            vs.as_ref(),
        )
    })
}

/// Writes each token's key and value into a flash-layout cache
/// `[num_blocks, block_size, num_heads, head_size]` (any stride order with
/// head_size contiguous, so the HND view `[num_blocks, num_heads, block_size,
/// head_size]` passed with permuted strides works). `key_cache` and
/// `value_cache` may be the same tensor (same memory and layout): values are
/// then written into it too. Other arguments as `xops_reshape_and_cache`.
///
/// # Safety
/// As `xops_reshape_and_cache`.
#[no_mangle]
pub unsafe extern "C" fn xops_reshape_and_cache_flash(
    key: *const DLTensor,
    value: *const DLTensor,
    key_cache: *const DLTensor,
    value_cache: *const DLTensor,
    slot_mapping: *const DLTensor,
    kv_cache_dtype: *const c_char,
    k_scale: *const DLTensor,
    v_scale: *const DLTensor,
) -> xops_status {
    ffi_call("xops_reshape_and_cache_flash", || {
        let key = tensor(key, "key")?;
        let value = tensor(value, "value")?;
        let mut kc = tensor_mut(key_cache, "key_cache")?;
        let mut vc = if value_cache.is_null() || !same_tensor(key_cache, value_cache) {
            Some(tensor_mut(value_cache, "value_cache")?)
        } else {
            None // one tensor passed as both caches
        };
        let slots = tensor(slot_mapping, "slot_mapping")?;
        let dt = c_str(kv_cache_dtype, "kv_cache_dtype")?;
        let ks = opt_tensor(k_scale, "k_scale")?;
        let vs = opt_tensor(v_scale, "v_scale")?;
        xops::reshape_and_cache_flash(
            &key,
            &value,
            &mut kc,
            vc.as_mut(),
            &slots,
            dt,
            ks.as_ref(),
            vs.as_ref(),
        )
    })
}

/// Copies blocks within every layer's key and value cache: `key_caches` and
/// `value_caches` are arrays of `num_layers` tensors `[num_blocks, ...]`
/// (each block one dense range); `block_mapping` is int64/int32 `[n, 2]` rows
/// of (source block, destination block). No destination may appear twice or
/// also be a source.
///
/// # Safety
/// `key_caches` and `value_caches` are NULL or hold `num_layers` pointers,
/// each NULL or valid and writable; `block_mapping` is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn xops_copy_blocks(
    key_caches: *const *const DLTensor,
    value_caches: *const *const DLTensor,
    num_layers: usize,
    block_mapping: *const DLTensor,
) -> xops_status {
    ffi_call("xops_copy_blocks", || {
        let mut kcs = tensors_mut(key_caches, num_layers, "key_caches")?;
        let mut vcs = tensors_mut(value_caches, num_layers, "value_caches")?;
        let mapping = tensor(block_mapping, "block_mapping")?;
        xops::copy_blocks(&mut kcs, &mut vcs, &mapping)
    })
}

/// Copies blocks from `src` to `dst`, two caches of one layer with the same
/// dtype and per-block shape (host swap space): `block_mapping` is
/// int64/int32 `[n, 2]` rows of (source block, destination block).
///
/// # Safety
/// Each pointer is NULL or valid; `dst` is writable.
#[no_mangle]
pub unsafe extern "C" fn xops_swap_blocks(
    src: *const DLTensor,
    dst: *const DLTensor,
    block_mapping: *const DLTensor,
) -> xops_status {
    ffi_call("xops_swap_blocks", || {
        let src = tensor(src, "src")?;
        let mut dst = tensor_mut(dst, "dst")?;
        let mapping = tensor(block_mapping, "block_mapping")?;
        xops::swap_blocks(&src, &mut dst, &mapping)
    })
}
