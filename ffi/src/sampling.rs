//! Sampling ops (FlashInfer `flashinfer/sampling.py`, vLLM `v1/sample`):
//! thin C wrappers over `xpu_ops::{sampling_from_probs, ..., sampler_forward}`.
//! The definitions (what is kept, how a draw maps to a token, the Philox
//! stream) are documented on the Rust functions (`xpu_ops::ops::sampling`).
//!
//! Per-row parameters follow FlashInfer's kernel arguments: a tensor
//! `maybe_<p>_arr` (`[batch]`, NULL = use the scalar) and a scalar `<p>_val`.
//! Seeds and offsets are int64 tensors `[1]` or `[batch]` or scalars; with a
//! scalar (or `[1]`) seed the Philox subsequence is the output row, with a
//! per-row seed it is 0, so a request's draw does not depend on its batch.
//! Samples are written to `samples` (int32/int64 `[batch]`); nothing is
//! written unless every argument is valid.

use std::ffi::c_char;

use xops::dlpack::DLTensor;
use xops::{LogprobsTensorsMut, PerRow, SamplingMetadata, TensorView};

use crate::call::{c_str, ffi_call, opt_tensor, tensor, tensor_mut};
use crate::status::xops_status;

fn per_row<'a, T>(arr: &'a Option<TensorView<'a>>, val: T) -> PerRow<'a, T> {
    arr.as_ref().map_or(PerRow::Scalar(val), PerRow::Tensor)
}

/// FlashInfer `sampling_from_probs`: one category per output row from
/// `probs` `[batch, vocab]` (float32/float16/bfloat16; rows sum to 1 within
/// 1e-3 for float32, 1e-2 for 16-bit). `indices`: NULL or int32/int64
/// `[batch]` mapping output rows to rows of `probs`.
///
/// # Safety
/// Each pointer is NULL or valid; tensor memory is readable (writable for
/// `samples`) for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn xops_sampling_from_probs(
    probs: *const DLTensor,
    indices: *const DLTensor,
    maybe_seed_arr: *const DLTensor,
    seed_val: u64,
    maybe_offset_arr: *const DLTensor,
    offset_val: u64,
    samples: *const DLTensor,
) -> xops_status {
    ffi_call("xops_sampling_from_probs", || {
        let x = tensor(probs, "probs")?;
        let ix = opt_tensor(indices, "indices")?;
        let sa = opt_tensor(maybe_seed_arr, "maybe_seed_arr")?;
        let oa = opt_tensor(maybe_offset_arr, "maybe_offset_arr")?;
        let mut out = tensor_mut(samples, "samples")?;
        xops::sampling_from_probs(
            &x,
            ix.as_ref(),
            per_row(&sa, seed_val),
            per_row(&oa, offset_val),
            &mut out,
        )
    })
}

/// FlashInfer `sampling_from_logits`: samples softmax(`logits`) per row.
/// Arguments as `xops_sampling_from_probs`.
///
/// # Safety
/// As `xops_sampling_from_probs`.
#[no_mangle]
pub unsafe extern "C" fn xops_sampling_from_logits(
    logits: *const DLTensor,
    indices: *const DLTensor,
    maybe_seed_arr: *const DLTensor,
    seed_val: u64,
    maybe_offset_arr: *const DLTensor,
    offset_val: u64,
    samples: *const DLTensor,
) -> xops_status {
    ffi_call("xops_sampling_from_logits", || {
        let x = tensor(logits, "logits")?;
        let ix = opt_tensor(indices, "indices")?;
        let sa = opt_tensor(maybe_seed_arr, "maybe_seed_arr")?;
        let oa = opt_tensor(maybe_offset_arr, "maybe_offset_arr")?;
        let mut out = tensor_mut(samples, "samples")?;
        xops::sampling_from_logits(
            &x,
            ix.as_ref(),
            per_row(&sa, seed_val),
            per_row(&oa, offset_val),
            &mut out,
        )
    })
}

/// FlashInfer `top_p_sampling_from_probs`: top_p in (0, 1] (1 keeps all),
/// float `[batch]` tensor or scalar.
///
/// # Safety
/// As `xops_sampling_from_probs`.
#[no_mangle]
pub unsafe extern "C" fn xops_top_p_sampling_from_probs(
    probs: *const DLTensor,
    maybe_top_p_arr: *const DLTensor,
    top_p_val: f64,
    indices: *const DLTensor,
    maybe_seed_arr: *const DLTensor,
    seed_val: u64,
    maybe_offset_arr: *const DLTensor,
    offset_val: u64,
    samples: *const DLTensor,
) -> xops_status {
    ffi_call("xops_top_p_sampling_from_probs", || {
        let x = tensor(probs, "probs")?;
        let pa = opt_tensor(maybe_top_p_arr, "maybe_top_p_arr")?;
        let ix = opt_tensor(indices, "indices")?;
        let sa = opt_tensor(maybe_seed_arr, "maybe_seed_arr")?;
        let oa = opt_tensor(maybe_offset_arr, "maybe_offset_arr")?;
        let mut out = tensor_mut(samples, "samples")?;
        xops::top_p_sampling_from_probs(
            &x,
            per_row(&pa, top_p_val as f32),
            ix.as_ref(),
            per_row(&sa, seed_val),
            per_row(&oa, offset_val),
            &mut out,
        )
    })
}

/// FlashInfer `top_k_sampling_from_probs`: top_k >= 1 (ties at the k-th
/// value kept; >= vocab keeps all), int32/int64 `[batch]` tensor or scalar.
///
/// # Safety
/// As `xops_sampling_from_probs`.
#[no_mangle]
pub unsafe extern "C" fn xops_top_k_sampling_from_probs(
    probs: *const DLTensor,
    maybe_top_k_arr: *const DLTensor,
    top_k_val: i64,
    indices: *const DLTensor,
    maybe_seed_arr: *const DLTensor,
    seed_val: u64,
    maybe_offset_arr: *const DLTensor,
    offset_val: u64,
    samples: *const DLTensor,
) -> xops_status {
    ffi_call("xops_top_k_sampling_from_probs", || {
        let x = tensor(probs, "probs")?;
        let ka = opt_tensor(maybe_top_k_arr, "maybe_top_k_arr")?;
        let ix = opt_tensor(indices, "indices")?;
        let sa = opt_tensor(maybe_seed_arr, "maybe_seed_arr")?;
        let oa = opt_tensor(maybe_offset_arr, "maybe_offset_arr")?;
        let mut out = tensor_mut(samples, "samples")?;
        xops::top_k_sampling_from_probs(
            &x,
            per_row(&ka, top_k_val),
            ix.as_ref(),
            per_row(&sa, seed_val),
            per_row(&oa, offset_val),
            &mut out,
        )
    })
}

/// FlashInfer `min_p_sampling_from_probs`: keeps p >= min_p * max(p);
/// min_p in [0, 1], float `[batch]` tensor or scalar.
///
/// # Safety
/// As `xops_sampling_from_probs`.
#[no_mangle]
pub unsafe extern "C" fn xops_min_p_sampling_from_probs(
    probs: *const DLTensor,
    maybe_min_p_arr: *const DLTensor,
    min_p_val: f64,
    indices: *const DLTensor,
    maybe_seed_arr: *const DLTensor,
    seed_val: u64,
    maybe_offset_arr: *const DLTensor,
    offset_val: u64,
    samples: *const DLTensor,
) -> xops_status {
    ffi_call("xops_min_p_sampling_from_probs", || {
        let x = tensor(probs, "probs")?;
        let ma = opt_tensor(maybe_min_p_arr, "maybe_min_p_arr")?;
        let ix = opt_tensor(indices, "indices")?;
        let sa = opt_tensor(maybe_seed_arr, "maybe_seed_arr")?;
        let oa = opt_tensor(maybe_offset_arr, "maybe_offset_arr")?;
        let mut out = tensor_mut(samples, "samples")?;
        xops::min_p_sampling_from_probs(
            &x,
            per_row(&ma, min_p_val as f32),
            ix.as_ref(),
            per_row(&sa, seed_val),
            per_row(&oa, offset_val),
            &mut out,
        )
    })
}

/// FlashInfer `top_k_top_p_sampling_from_probs`; `filter_apply_order` is
/// "top_k_first" (top-k, renormalise, then top-p) or "joint" (top-p mass
/// against the whole row).
///
/// # Safety
/// As `xops_sampling_from_probs`; `filter_apply_order` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn xops_top_k_top_p_sampling_from_probs(
    probs: *const DLTensor,
    maybe_top_k_arr: *const DLTensor,
    top_k_val: i64,
    maybe_top_p_arr: *const DLTensor,
    top_p_val: f64,
    indices: *const DLTensor,
    filter_apply_order: *const c_char,
    maybe_seed_arr: *const DLTensor,
    seed_val: u64,
    maybe_offset_arr: *const DLTensor,
    offset_val: u64,
    samples: *const DLTensor,
) -> xops_status {
    ffi_call("xops_top_k_top_p_sampling_from_probs", || {
        let x = tensor(probs, "probs")?;
        let ka = opt_tensor(maybe_top_k_arr, "maybe_top_k_arr")?;
        let pa = opt_tensor(maybe_top_p_arr, "maybe_top_p_arr")?;
        let ix = opt_tensor(indices, "indices")?;
        let order = c_str(filter_apply_order, "filter_apply_order")?;
        let sa = opt_tensor(maybe_seed_arr, "maybe_seed_arr")?;
        let oa = opt_tensor(maybe_offset_arr, "maybe_offset_arr")?;
        let mut out = tensor_mut(samples, "samples")?;
        xops::top_k_top_p_sampling_from_probs(
            &x,
            per_row(&ka, top_k_val),
            per_row(&pa, top_p_val as f32),
            ix.as_ref(),
            order,
            per_row(&sa, seed_val),
            per_row(&oa, offset_val),
            &mut out,
        )
    })
}

/// FlashInfer `top_k_top_p_sampling_from_logits`: as
/// `xops_top_k_top_p_sampling_from_probs` over softmax(`logits`).
///
/// # Safety
/// As `xops_top_k_top_p_sampling_from_probs`.
#[no_mangle]
pub unsafe extern "C" fn xops_top_k_top_p_sampling_from_logits(
    logits: *const DLTensor,
    maybe_top_k_arr: *const DLTensor,
    top_k_val: i64,
    maybe_top_p_arr: *const DLTensor,
    top_p_val: f64,
    indices: *const DLTensor,
    filter_apply_order: *const c_char,
    maybe_seed_arr: *const DLTensor,
    seed_val: u64,
    maybe_offset_arr: *const DLTensor,
    offset_val: u64,
    samples: *const DLTensor,
) -> xops_status {
    ffi_call("xops_top_k_top_p_sampling_from_logits", || {
        let x = tensor(logits, "logits")?;
        let ka = opt_tensor(maybe_top_k_arr, "maybe_top_k_arr")?;
        let pa = opt_tensor(maybe_top_p_arr, "maybe_top_p_arr")?;
        let ix = opt_tensor(indices, "indices")?;
        let order = c_str(filter_apply_order, "filter_apply_order")?;
        let sa = opt_tensor(maybe_seed_arr, "maybe_seed_arr")?;
        let oa = opt_tensor(maybe_offset_arr, "maybe_offset_arr")?;
        let mut out = tensor_mut(samples, "samples")?;
        xops::top_k_top_p_sampling_from_logits(
            &x,
            per_row(&ka, top_k_val),
            per_row(&pa, top_p_val as f32),
            ix.as_ref(),
            order,
            per_row(&sa, seed_val),
            per_row(&oa, offset_val),
            &mut out,
        )
    })
}

/// FlashInfer `top_k_renorm_probs`: keeps each row's top-k probabilities
/// (ties kept), zeroes the rest, renormalises (fp64 sum) into `renorm_probs`
/// (same shape and dtype as `probs`; may be `probs` itself).
///
/// # Safety
/// Each pointer is NULL or valid; `renorm_probs` is writable.
#[no_mangle]
pub unsafe extern "C" fn xops_top_k_renorm_probs(
    probs: *const DLTensor,
    maybe_top_k_arr: *const DLTensor,
    top_k_val: i64,
    renorm_probs: *const DLTensor,
) -> xops_status {
    ffi_call("xops_top_k_renorm_probs", || {
        let x = tensor(probs, "probs")?;
        let ka = opt_tensor(maybe_top_k_arr, "maybe_top_k_arr")?;
        let mut out = tensor_mut(renorm_probs, "renorm_probs")?;
        xops::top_k_renorm_probs(&x, per_row(&ka, top_k_val), &mut out)
    })
}

/// FlashInfer `top_p_renorm_probs`: keeps each row's top-p nucleus, zeroes
/// the rest, renormalises into `renorm_probs` (may be `probs` itself).
///
/// # Safety
/// As `xops_top_k_renorm_probs`.
#[no_mangle]
pub unsafe extern "C" fn xops_top_p_renorm_probs(
    probs: *const DLTensor,
    maybe_top_p_arr: *const DLTensor,
    top_p_val: f64,
    renorm_probs: *const DLTensor,
) -> xops_status {
    ffi_call("xops_top_p_renorm_probs", || {
        let x = tensor(probs, "probs")?;
        let pa = opt_tensor(maybe_top_p_arr, "maybe_top_p_arr")?;
        let mut out = tensor_mut(renorm_probs, "renorm_probs")?;
        xops::top_p_renorm_probs(&x, per_row(&pa, top_p_val as f32), &mut out)
    })
}

/// FlashInfer `top_k_mask_logits`: keeps each row's top-k logits (ties kept)
/// and sets the rest to -inf, into `mask_logits` (may be `logits` itself).
///
/// # Safety
/// As `xops_top_k_renorm_probs`.
#[no_mangle]
pub unsafe extern "C" fn xops_top_k_mask_logits(
    logits: *const DLTensor,
    maybe_top_k_arr: *const DLTensor,
    top_k_val: i64,
    mask_logits: *const DLTensor,
) -> xops_status {
    ffi_call("xops_top_k_mask_logits", || {
        let x = tensor(logits, "logits")?;
        let ka = opt_tensor(maybe_top_k_arr, "maybe_top_k_arr")?;
        let mut out = tensor_mut(mask_logits, "mask_logits")?;
        xops::top_k_mask_logits(&x, per_row(&ka, top_k_val), &mut out)
    })
}

/// vLLM `apply_penalties`, in place on `logits` `[batch, vocab]`: repetition
/// penalties over prompt and output tokens, then frequency and presence
/// penalties over output tokens (f32 arithmetic, vLLM's order). Token tensors
/// are int32/int64 `[batch, max_len]` padded with `pad_token_id` (vLLM pads
/// with vocab_size); penalty tensors are float `[batch]`. Other ids outside
/// [0, vocab) are an error.
///
/// # Safety
/// Each pointer is NULL or valid; `logits` is writable.
#[no_mangle]
pub unsafe extern "C" fn xops_apply_penalties(
    logits: *const DLTensor,
    prompt_token_ids: *const DLTensor,
    output_token_ids: *const DLTensor,
    presence_penalties: *const DLTensor,
    frequency_penalties: *const DLTensor,
    repetition_penalties: *const DLTensor,
    pad_token_id: i64,
) -> xops_status {
    ffi_call("xops_apply_penalties", || {
        let mut l = tensor_mut(logits, "logits")?;
        let p = tensor(prompt_token_ids, "prompt_token_ids")?;
        let o = tensor(output_token_ids, "output_token_ids")?;
        let pp = tensor(presence_penalties, "presence_penalties")?;
        let fp = tensor(frequency_penalties, "frequency_penalties")?;
        let rp = tensor(repetition_penalties, "repetition_penalties")?;
        xops::apply_penalties(&mut l, &p, &o, &pp, &fp, &rp, pad_token_id)
    })
}

/// vLLM's per-request sampling parameters for `xops_sampler_forward`. Every
/// tensor is `[batch]` unless noted; NULL means "not given".
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct xops_sampling_metadata {
    /// float; NULL = every row greedy (vLLM `all_greedy`). Rows below 1e-5
    /// are greedy; negative or non-finite values are errors.
    pub temperature: *const DLTensor,
    /// int32/int64; NULL = off. Per row 0 or -1 = off, >= vocab = off.
    pub top_k: *const DLTensor,
    /// float in (0, 1]; NULL = off.
    pub top_p: *const DLTensor,
    /// float in [0, 1]; NULL = off.
    pub min_p: *const DLTensor,
    /// int64 `[1]` or `[batch]`; NULL = use `seed_val`.
    pub maybe_seed_arr: *const DLTensor,
    pub seed_val: u64,
    /// int64 `[1]` or `[batch]`; NULL = use `offset_val`.
    pub maybe_offset_arr: *const DLTensor,
    pub offset_val: u64,
    /// int32/int64 `[batch, max_prompt_len]`, padded with `pad_token_id`.
    pub prompt_token_ids: *const DLTensor,
    /// int32/int64 `[batch, max_output_len]`, padded with `pad_token_id`.
    pub output_token_ids: *const DLTensor,
    /// float; NULL = 0.
    pub presence_penalties: *const DLTensor,
    /// float; NULL = 0.
    pub frequency_penalties: *const DLTensor,
    /// float > 0; NULL = 1.
    pub repetition_penalties: *const DLTensor,
    /// The padding id of the token tensors (vLLM: vocab_size).
    pub pad_token_id: i64,
    /// Top-n raw logprobs to return; < 0 = none (then the logprob outputs
    /// must be NULL).
    pub max_num_logprobs: i64,
}

/// vLLM's `Sampler.forward` fused over `logits` `[batch, vocab]`
/// (float32/float16/bfloat16, not modified): penalties, greedy rows,
/// temperature, min-p, top-k, top-p and one Philox draw per row. Writes
/// `sampled_token_ids` (int32/int64 `[batch]` or `[batch, 1]`) and, when
/// `metadata->max_num_logprobs >= 0`, the raw logprobs:
/// `logprob_token_ids` (int32/int64) and `logprobs` (float32), both
/// `[batch, max_num_logprobs + 1]` (column 0 the sampled token, then the
/// top-n), and `selected_token_ranks` (int32/int64 `[batch]`).
///
/// # Safety
/// `metadata` is valid; each tensor pointer (in it too) is NULL or valid;
/// outputs are writable.
#[no_mangle]
pub unsafe extern "C" fn xops_sampler_forward(
    logits: *const DLTensor,
    metadata: *const xops_sampling_metadata,
    sampled_token_ids: *const DLTensor,
    logprob_token_ids: *const DLTensor,
    logprobs: *const DLTensor,
    selected_token_ranks: *const DLTensor,
) -> xops_status {
    ffi_call("xops_sampler_forward", || {
        let md = metadata
            .as_ref()
            .ok_or_else(|| xops::Error::new(xops::Status::NullPointer, "`metadata` is NULL"))?;
        let x = tensor(logits, "logits")?;
        let t = opt_tensor(md.temperature, "metadata.temperature")?;
        let k = opt_tensor(md.top_k, "metadata.top_k")?;
        let p = opt_tensor(md.top_p, "metadata.top_p")?;
        let mp = opt_tensor(md.min_p, "metadata.min_p")?;
        let sa = opt_tensor(md.maybe_seed_arr, "metadata.maybe_seed_arr")?;
        let oa = opt_tensor(md.maybe_offset_arr, "metadata.maybe_offset_arr")?;
        let pt = opt_tensor(md.prompt_token_ids, "metadata.prompt_token_ids")?;
        let ot = opt_tensor(md.output_token_ids, "metadata.output_token_ids")?;
        let pp = opt_tensor(md.presence_penalties, "metadata.presence_penalties")?;
        let fp = opt_tensor(md.frequency_penalties, "metadata.frequency_penalties")?;
        let rp = opt_tensor(md.repetition_penalties, "metadata.repetition_penalties")?;
        let meta = SamplingMetadata {
            temperature: t.as_ref().map(PerRow::Tensor),
            top_k: k.as_ref().map(PerRow::Tensor),
            top_p: p.as_ref().map(PerRow::Tensor),
            min_p: mp.as_ref().map(PerRow::Tensor),
            seed: per_row(&sa, md.seed_val),
            offset: per_row(&oa, md.offset_val),
            prompt_token_ids: pt.as_ref(),
            output_token_ids: ot.as_ref(),
            presence_penalties: pp.as_ref().map(PerRow::Tensor),
            frequency_penalties: fp.as_ref().map(PerRow::Tensor),
            repetition_penalties: rp.as_ref().map(PerRow::Tensor),
            pad_token_id: md.pad_token_id,
            max_num_logprobs: (md.max_num_logprobs >= 0).then_some(md.max_num_logprobs as usize),
        };
        let mut ids = tensor_mut(sampled_token_ids, "sampled_token_ids")?;
        let wanted = [logprob_token_ids, logprobs, selected_token_ranks];
        if wanted.iter().all(|p| p.is_null()) {
            return xops::sampler_forward(&x, &meta, &mut ids, None);
        }
        let mut li = tensor_mut(logprob_token_ids, "logprob_token_ids")?;
        let mut lv = tensor_mut(logprobs, "logprobs")?;
        let mut rk = tensor_mut(selected_token_ranks, "selected_token_ranks")?;
        xops::sampler_forward(
            &x,
            &meta,
            &mut ids,
            Some(LogprobsTensorsMut {
                logprob_token_ids: &mut li,
                logprobs: &mut lv,
                selected_token_ranks: &mut rk,
            }),
        )
    })
}
