//! Attention ops (vLLM `paged_attention_v1/v2`, `merge_attn_states`;
//! vllm-flash-attn `flash_attn_varlen_func` with a block table): thin C
//! wrappers over the Rust functions of the same names, which document the
//! shapes, rules and tolerances.

use std::ffi::c_char;

use xops::dlpack::DLTensor;

use crate::call::{c_str, ffi_call, opt_tensor, tensor, tensor_mut};
use crate::status::xops_status;

fn non_negative(v: i64, name: &str) -> xops::Result<usize> {
    if v < 0 {
        return Err(xops::Error::new(
            xops::Status::InvalidArgument,
            format!("`{name}` must be >= 0, got {v}"),
        ));
    }
    Ok(v as usize)
}

/// vLLM's `paged_attention_v1`: one query token per sequence over the paged
/// KV cache written by `xops_reshape_and_cache`.
///
/// * `out`, `query`: `[num_seqs, num_heads, head_size]` float32/float16/bfloat16,
///   head_size contiguous (token and head strides free), head_size one of
///   32, 64, 80, 96, 112, 120, 128, 192, 256, 512.
/// * `key_cache`: `[num_blocks, num_kv_heads, head_size / x, block_size, x]`,
///   `value_cache`: `[num_blocks, num_kv_heads, head_size, block_size]`;
///   block_size 8, 16, 32, 64 or 128.
/// * `block_tables`: int32 `[num_seqs, max_blocks]`; `seq_lens`: int32
///   `[num_seqs]`, each <= `max_seq_len`. Slots past a sequence's length are
///   never read.
/// * `alibi_slopes`: NULL or float32 `[num_heads]`.
/// * `kv_cache_dtype`: "auto", "float16", "bfloat16", "fp8" (= "fp8_e4m3"),
///   "fp8_e5m2"; `k_scale`, `v_scale`: NULL (1) or float32 `[1]` / `[num_kv_heads]`,
///   fp8 dequantised as fp8 * scale.
///
/// Nothing is written unless every argument is valid.
///
/// # Safety
/// Each pointer is NULL or valid; tensor memory is readable (writable for
/// `out`) for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn xops_paged_attention_v1(
    out: *const DLTensor,
    query: *const DLTensor,
    key_cache: *const DLTensor,
    value_cache: *const DLTensor,
    num_kv_heads: i64,
    scale: f64,
    block_tables: *const DLTensor,
    seq_lens: *const DLTensor,
    block_size: i64,
    max_seq_len: i64,
    alibi_slopes: *const DLTensor,
    kv_cache_dtype: *const c_char,
    k_scale: *const DLTensor,
    v_scale: *const DLTensor,
) -> xops_status {
    ffi_call("xops_paged_attention_v1", || {
        let mut o = tensor_mut(out, "out")?;
        let q = tensor(query, "query")?;
        let kc = tensor(key_cache, "key_cache")?;
        let vc = tensor(value_cache, "value_cache")?;
        let bt = tensor(block_tables, "block_tables")?;
        let sl = tensor(seq_lens, "seq_lens")?;
        let al = opt_tensor(alibi_slopes, "alibi_slopes")?;
        let dt = c_str(kv_cache_dtype, "kv_cache_dtype")?;
        let ks = opt_tensor(k_scale, "k_scale")?;
        let vs = opt_tensor(v_scale, "v_scale")?;
        xops::paged_attention_v1(
            &mut o,
            &q,
            &kc,
            &vc,
            non_negative(num_kv_heads, "num_kv_heads")?,
            scale as f32,
            &bt,
            &sl,
            non_negative(block_size, "block_size")?,
            non_negative(max_seq_len, "max_seq_len")?,
            al.as_ref(),
            dt,
            ks.as_ref(),
            vs.as_ref(),
        )
    })
}

/// vLLM's `paged_attention_v2`: `xops_paged_attention_v1` in partitions of
/// 512 tokens, reduced as vLLM does.
///
/// * `exp_sums`, `max_logits`: float32 `[num_seqs, num_heads, max_num_partitions]`;
///   `tmp_out`: `[num_seqs, num_heads, max_num_partitions, head_size]` of the
///   query dtype; `max_num_partitions >= ceil(max_seq_len / 512)`.
///
/// Other arguments as `xops_paged_attention_v1`.
///
/// # Safety
/// As `xops_paged_attention_v1`; `exp_sums`, `max_logits` and `tmp_out` are
/// writable too.
#[no_mangle]
pub unsafe extern "C" fn xops_paged_attention_v2(
    out: *const DLTensor,
    exp_sums: *const DLTensor,
    max_logits: *const DLTensor,
    tmp_out: *const DLTensor,
    query: *const DLTensor,
    key_cache: *const DLTensor,
    value_cache: *const DLTensor,
    num_kv_heads: i64,
    scale: f64,
    block_tables: *const DLTensor,
    seq_lens: *const DLTensor,
    block_size: i64,
    max_seq_len: i64,
    alibi_slopes: *const DLTensor,
    kv_cache_dtype: *const c_char,
    k_scale: *const DLTensor,
    v_scale: *const DLTensor,
) -> xops_status {
    ffi_call("xops_paged_attention_v2", || {
        let mut o = tensor_mut(out, "out")?;
        let mut es = tensor_mut(exp_sums, "exp_sums")?;
        let mut ml = tensor_mut(max_logits, "max_logits")?;
        let mut tmp = tensor_mut(tmp_out, "tmp_out")?;
        let q = tensor(query, "query")?;
        let kc = tensor(key_cache, "key_cache")?;
        let vc = tensor(value_cache, "value_cache")?;
        let bt = tensor(block_tables, "block_tables")?;
        let sl = tensor(seq_lens, "seq_lens")?;
        let al = opt_tensor(alibi_slopes, "alibi_slopes")?;
        let dt = c_str(kv_cache_dtype, "kv_cache_dtype")?;
        let ks = opt_tensor(k_scale, "k_scale")?;
        let vs = opt_tensor(v_scale, "v_scale")?;
        xops::paged_attention_v2(
            &mut o,
            &mut es,
            &mut ml,
            &mut tmp,
            &q,
            &kc,
            &vc,
            non_negative(num_kv_heads, "num_kv_heads")?,
            scale as f32,
            &bt,
            &sl,
            non_negative(block_size, "block_size")?,
            non_negative(max_seq_len, "max_seq_len")?,
            al.as_ref(),
            dt,
            ks.as_ref(),
            vs.as_ref(),
        )
    })
}

/// vllm-flash-attn's `flash_attn_varlen_func` over a paged cache
/// (`block_table` given): prefill, decode and mixed batches.
///
/// * `q`, `out`: `[total_q, num_heads, head_size]` float32/float16/bfloat16,
///   head_size a multiple of 8 up to 512, contiguous; sequence b owns rows
///   `cu_seqlens_q[b] .. cu_seqlens_q[b + 1]`.
/// * `k`, `v`: `[num_blocks, block_size, num_kv_heads, head_size]` caches (any
///   stride order, head_size contiguous), of the query dtype or
///   float8_e4m3fn / float8_e5m2.
/// * `cu_seqlens_q`: int32 `[batch + 1]`; `seqused_k`: int32 `[batch]` keys
///   per sequence; `block_table`: int32 `[batch, max_blocks]`.
/// * `softmax_scale`: 0 means `1 / sqrt(head_size)`. `causal`: nonzero aligns
///   the queries to the end of their keys. `window_left`, `window_right`:
///   -1 unbounded. `softcap`: 0 off. `alibi_slopes`: NULL or float32
///   `[num_heads]` / `[batch, num_heads]`.
/// * `softmax_lse`: NULL, or float32 `[num_heads, total_q]` written with each
///   row's log-sum-exp (-inf for a row with no keys).
/// * `k_descale`, `v_descale`: NULL or float32 `[1]`, `[num_kv_heads]` or
///   `[batch, num_kv_heads]` (fp8 caches). `s_aux`: NULL or `[num_heads]`
///   sink logits.
///
/// # Safety
/// Each pointer is NULL or valid; tensor memory is readable (writable for
/// `out` and `softmax_lse`) for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn xops_flash_attn_varlen_func(
    q: *const DLTensor,
    k: *const DLTensor,
    v: *const DLTensor,
    max_seqlen_q: i64,
    cu_seqlens_q: *const DLTensor,
    max_seqlen_k: i64,
    seqused_k: *const DLTensor,
    softmax_scale: f64,
    causal: i32,
    window_left: i64,
    window_right: i64,
    softcap: f64,
    alibi_slopes: *const DLTensor,
    block_table: *const DLTensor,
    softmax_lse: *const DLTensor,
    out: *const DLTensor,
    k_descale: *const DLTensor,
    v_descale: *const DLTensor,
    s_aux: *const DLTensor,
) -> xops_status {
    ffi_call("xops_flash_attn_varlen_func", || {
        let q = tensor(q, "q")?;
        let k = tensor(k, "k")?;
        let v = tensor(v, "v")?;
        let cu = tensor(cu_seqlens_q, "cu_seqlens_q")?;
        let used = tensor(seqused_k, "seqused_k")?;
        let al = opt_tensor(alibi_slopes, "alibi_slopes")?;
        let bt = tensor(block_table, "block_table")?;
        let mut lse = if softmax_lse.is_null() {
            None
        } else {
            Some(tensor_mut(softmax_lse, "softmax_lse")?)
        };
        let mut o = tensor_mut(out, "out")?;
        let kd = opt_tensor(k_descale, "k_descale")?;
        let vd = opt_tensor(v_descale, "v_descale")?;
        let sa = opt_tensor(s_aux, "s_aux")?;
        let scale = if softmax_scale == 0.0 {
            None
        } else {
            Some(softmax_scale as f32)
        };
        xops::flash_attn_varlen_func(
            &q,
            &k,
            &v,
            non_negative(max_seqlen_q, "max_seqlen_q")?,
            &cu,
            non_negative(max_seqlen_k, "max_seqlen_k")?,
            &used,
            scale,
            causal != 0,
            (window_left, window_right),
            softcap as f32,
            al.as_ref(),
            &bt,
            lse.as_mut(),
            &mut o,
            kd.as_ref(),
            vd.as_ref(),
            sa.as_ref(),
        )
    })
}

/// vLLM's `merge_attn_states`: merges two partial attention results by their
/// log-sum-exps. `output`, `prefix_output`, `suffix_output`:
/// `[num_tokens, num_heads, head_size]` of one dtype (float32/float16/bfloat16);
/// `prefix_lse`, `suffix_lse`, `output_lse` (NULL to skip): float32
/// `[num_heads, num_tokens]`. An LSE of -inf (or +inf, FA2's empty row) marks
/// an empty state; two empty states give 0 and -inf. `output` may be one of
/// the inputs (in place).
///
/// # Safety
/// Each pointer is NULL or valid; `output` and `output_lse` are writable for
/// the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn xops_merge_attn_states(
    output: *const DLTensor,
    prefix_output: *const DLTensor,
    prefix_lse: *const DLTensor,
    suffix_output: *const DLTensor,
    suffix_lse: *const DLTensor,
    output_lse: *const DLTensor,
) -> xops_status {
    ffi_call("xops_merge_attn_states", || {
        let mut o = tensor_mut(output, "output")?;
        let p = tensor(prefix_output, "prefix_output")?;
        let pl = tensor(prefix_lse, "prefix_lse")?;
        let s = tensor(suffix_output, "suffix_output")?;
        let sl = tensor(suffix_lse, "suffix_lse")?;
        let mut ol = if output_lse.is_null() {
            None
        } else {
            Some(tensor_mut(output_lse, "output_lse")?)
        };
        xops::merge_attn_states(&mut o, &p, &pl, &s, &sl, ol.as_mut())
    })
}

#[cfg(test)]
mod tests {
    //! The exports reach the Rust ops: same bits as a direct call, named NULL
    //! arguments, statuses of bad input.
    use super::*;
    use xops::{Status, TensorView, TensorViewMut};

    fn err(s: xops_status) -> (i32, String) {
        let msg = unsafe { std::ffi::CStr::from_ptr(crate::xops_last_error()) }
            .to_string_lossy()
            .into_owned();
        (s as i32, msg)
    }

    #[test]
    fn paged_v1_and_merge_match_the_rust_api() {
        let (h, d, bs) = (4usize, 32usize, 16usize);
        let kc: Vec<f32> = (0..2 * 2 * d * bs)
            .map(|i| ((i * 7) % 11) as f32 * 0.1)
            .collect();
        let vc: Vec<f32> = (0..2 * 2 * d * bs)
            .map(|i| ((i * 5) % 13) as f32 * 0.1)
            .collect();
        let q: Vec<f32> = (0..h * d).map(|i| (i % 5) as f32 * 0.2).collect();
        let table = [1i32, 0];
        let lens = [20i32];
        let views = (
            TensorView::new(&q, &[1, h, d]).unwrap(),
            TensorView::new(&kc, &[2, 2, d / 4, bs, 4]).unwrap(),
            TensorView::new(&vc, &[2, 2, d, bs]).unwrap(),
            TensorView::new(&table, &[1, 2]).unwrap(),
            TensorView::new(&lens, &[1]).unwrap(),
        );
        let mut want = vec![0f32; h * d];
        xops::paged_attention_v1(
            &mut TensorViewMut::new(&mut want, &[1, h, d]).unwrap(),
            &views.0,
            &views.1,
            &views.2,
            2,
            0.2,
            &views.3,
            &views.4,
            bs,
            20,
            None,
            "auto",
            None,
            None,
        )
        .unwrap();
        let mut got = vec![0f32; h * d];
        let mut ov = TensorViewMut::new(&mut got, &[1, h, d]).unwrap();
        let od = ov.to_dlpack();
        let dl = [&views.0, &views.1, &views.2, &views.3, &views.4].map(|v| v.to_dlpack());
        let auto = std::ffi::CString::new("auto").unwrap();
        let s = unsafe {
            xops_paged_attention_v1(
                od.as_dltensor(),
                dl[0].as_dltensor(),
                dl[1].as_dltensor(),
                dl[2].as_dltensor(),
                2,
                0.2,
                dl[3].as_dltensor(),
                dl[4].as_dltensor(),
                bs as i64,
                20,
                std::ptr::null(),
                auto.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(s, xops_status::XOPS_OK, "{:?}", err(s));
        drop(od);
        assert_eq!(got, want);

        // NULL query is named; a bad head count keeps its Rust status.
        let mut ov = TensorViewMut::new(&mut got, &[1, h, d]).unwrap();
        let od = ov.to_dlpack();
        let s = unsafe {
            xops_paged_attention_v1(
                od.as_dltensor(),
                std::ptr::null(),
                dl[1].as_dltensor(),
                dl[2].as_dltensor(),
                2,
                0.2,
                dl[3].as_dltensor(),
                dl[4].as_dltensor(),
                bs as i64,
                20,
                std::ptr::null(),
                auto.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        let (code, msg) = err(s);
        assert_eq!(code, Status::NullPointer as i32);
        assert!(msg.contains("`query`"), "{msg}");
        let s = unsafe {
            xops_paged_attention_v1(
                od.as_dltensor(),
                dl[0].as_dltensor(),
                dl[1].as_dltensor(),
                dl[2].as_dltensor(),
                3,
                0.2,
                dl[3].as_dltensor(),
                dl[4].as_dltensor(),
                bs as i64,
                20,
                std::ptr::null(),
                auto.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(err(s).0, Status::ShapeMismatch as i32);

        // merge: equal LSEs average the two outputs.
        let (p, sfx, lse) = ([1.0f32; 8], [3.0f32; 8], [0.5f32; 2]);
        let mut m = [0f32; 8];
        let mut mv = TensorViewMut::new(&mut m, &[1, 2, 4]).unwrap();
        let md = mv.to_dlpack();
        let pv = TensorView::new(&p, &[1, 2, 4]).unwrap();
        let sv = TensorView::new(&sfx, &[1, 2, 4]).unwrap();
        let lv = TensorView::new(&lse, &[2, 1]).unwrap();
        let (pd, sd, ld) = (pv.to_dlpack(), sv.to_dlpack(), lv.to_dlpack());
        let s = unsafe {
            xops_merge_attn_states(
                md.as_dltensor(),
                pd.as_dltensor(),
                ld.as_dltensor(),
                sd.as_dltensor(),
                ld.as_dltensor(),
                std::ptr::null(),
            )
        };
        assert_eq!(s, xops_status::XOPS_OK, "{:?}", err(s));
        drop(md);
        assert_eq!(m, [2.0; 8]);
    }
}
