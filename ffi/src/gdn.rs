//! Linear-attention ops (vLLM `mamba/ops/causal_conv1d.py`, fla
//! `ops/gated_delta_rule`): thin C wrappers over `xpu_ops::{causal_conv1d_fn,
//! causal_conv1d_update, fused_gdn_gating, l2norm, rms_norm_gated,
//! fused_recurrent_gated_delta_rule, chunk_gated_delta_rule}`. Shapes, rules
//! and tolerances are documented on the Rust functions.

use std::ffi::c_char;

use xops::dlpack::DLTensor;

use crate::call::{c_str, ffi_call, opt_tensor, same_tensor, tensor, tensor_mut};
use crate::status::xops_status;

/// NULL activation = none; otherwise "none", "silu" or "swish".
unsafe fn activation_arg<'a>(s: *const c_char) -> xops::Result<Option<&'a str>> {
    if s.is_null() {
        Ok(None)
    } else {
        c_str(s, "activation").map(Some)
    }
}

/// The optional output of an op that otherwise writes into `x`: NULL, or the
/// very tensor `x`, means in place.
unsafe fn out_or_in_place<'a>(
    out: *const DLTensor,
    x: *const DLTensor,
) -> xops::Result<Option<xops::TensorViewMut<'a>>> {
    if out.is_null() || (!x.is_null() && same_tensor(out, x)) {
        Ok(None)
    } else {
        tensor_mut(out, "out").map(Some)
    }
}

/// `scale` 0 means the default `K^-0.5`.
fn scale_arg(scale: f64) -> Option<f32> {
    (scale != 0.0).then_some(scale as f32)
}

/// vLLM's `causal_conv1d_fn` (prefill): causal depthwise conv over each
/// sequence of a varlen batch, starting from its cached history, writing the
/// last `width - 1` inputs back to the cache line.
///
/// * `x`: `(dim, total_tokens)` float32/float16/bfloat16, any strides; the
///   output goes to `out`, or into `x` when `out` is NULL (or `x` itself).
/// * `weight`: `(dim, width)`, width 2..6; `bias`: `(dim,)` or NULL.
/// * `conv_states`: `(cache_lines, dim, state_len >= width - 1)`, any strides.
/// * `query_start_loc`: int32/int64 `[B + 1]`; `cache_indices`: `[B]` or NULL
///   (line = sequence); `has_initial_state`: bool/int `[B]` or NULL (all false).
/// * `activation`: NULL/"none" or "silu"/"swish"; `pad_slot_id`: cache index
///   of skipped sequences (vLLM: -1).
///
/// # Safety
/// Each pointer is NULL or valid; `conv_states` and the output are writable
/// for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn xops_causal_conv1d_fn(
    x: *const DLTensor,
    weight: *const DLTensor,
    bias: *const DLTensor,
    conv_states: *const DLTensor,
    query_start_loc: *const DLTensor,
    cache_indices: *const DLTensor,
    has_initial_state: *const DLTensor,
    activation: *const c_char,
    pad_slot_id: i64,
    out: *const DLTensor,
) -> xops_status {
    ffi_call("xops_causal_conv1d_fn", || {
        let mut xv = tensor_mut(x, "x")?;
        let w = tensor(weight, "weight")?;
        let b = opt_tensor(bias, "bias")?;
        let mut st = tensor_mut(conv_states, "conv_states")?;
        let qsl = tensor(query_start_loc, "query_start_loc")?;
        let ci = opt_tensor(cache_indices, "cache_indices")?;
        let hi = opt_tensor(has_initial_state, "has_initial_state")?;
        let act = activation_arg(activation)?;
        let mut o = out_or_in_place(out, x)?;
        xops::causal_conv1d_fn(
            &mut xv,
            &w,
            b.as_ref(),
            &mut st,
            &qsl,
            ci.as_ref(),
            hi.as_ref(),
            act,
            pad_slot_id,
            o.as_mut(),
        )
    })
}

/// vLLM's `causal_conv1d_update` (decode and speculative decode, widths 2..6).
///
/// * `x`: `(B, dim)`, `(B, dim, seqlen)`, or `(num_tokens, dim)` with
///   `query_start_loc`; output into `x` unless `out` (same shape) is given.
/// * `conv_state`: `(cache_lines, dim, state_len)`; `conv_state_indices`:
///   `[B]` or NULL; `pad_slot_id` skips a sequence.
/// * `num_accepted_tokens`: `[B]` or NULL: the window starts at column
///   `num_accepted - 1` and the line keeps it minus its oldest column followed
///   by every new token (`state_len >= width - 2 + seqlen`).
/// * `max_query_len`: varlen bound on sequence lengths, or -1.
///
/// # Safety
/// As `xops_causal_conv1d_fn`.
#[no_mangle]
pub unsafe extern "C" fn xops_causal_conv1d_update(
    x: *const DLTensor,
    conv_state: *const DLTensor,
    weight: *const DLTensor,
    bias: *const DLTensor,
    activation: *const c_char,
    conv_state_indices: *const DLTensor,
    num_accepted_tokens: *const DLTensor,
    query_start_loc: *const DLTensor,
    max_query_len: i64,
    pad_slot_id: i64,
    out: *const DLTensor,
) -> xops_status {
    ffi_call("xops_causal_conv1d_update", || {
        let mut xv = tensor_mut(x, "x")?;
        let mut st = tensor_mut(conv_state, "conv_state")?;
        let w = tensor(weight, "weight")?;
        let b = opt_tensor(bias, "bias")?;
        let act = activation_arg(activation)?;
        let ci = opt_tensor(conv_state_indices, "conv_state_indices")?;
        let na = opt_tensor(num_accepted_tokens, "num_accepted_tokens")?;
        let qsl = opt_tensor(query_start_loc, "query_start_loc")?;
        let mut o = out_or_in_place(out, x)?;
        xops::causal_conv1d_update(
            &mut xv,
            &mut st,
            &w,
            b.as_ref(),
            act,
            ci.as_ref(),
            na.as_ref(),
            qsl.as_ref(),
            max_query_len,
            pad_slot_id,
            o.as_mut(),
        )
    })
}

/// vLLM's `fused_gdn_gating`: `g = -exp(A_log) * softplus(a + dt_bias)`
/// (softplus with `beta` and `threshold` as torch), `beta_output = sigmoid(b)`.
///
/// * `A_log`, `dt_bias`: `[num_heads]`; `a`, `b`: `[num_tokens, num_heads]`.
/// * `g`: float32 `[1, num_tokens, num_heads]` or `[num_tokens, num_heads]`;
///   `beta_output`: the same shape, float32/float16/bfloat16.
///
/// # Safety
/// Each pointer is NULL or valid; `g` and `beta_output` are writable.
#[no_mangle]
#[allow(non_snake_case)]
pub unsafe extern "C" fn xops_fused_gdn_gating(
    A_log: *const DLTensor,
    a: *const DLTensor,
    b: *const DLTensor,
    dt_bias: *const DLTensor,
    beta: f64,
    threshold: f64,
    g: *const DLTensor,
    beta_output: *const DLTensor,
) -> xops_status {
    ffi_call("xops_fused_gdn_gating", || {
        let al = tensor(A_log, "A_log")?;
        let av = tensor(a, "a")?;
        let bv = tensor(b, "b")?;
        let dt = tensor(dt_bias, "dt_bias")?;
        let mut gv = tensor_mut(g, "g")?;
        let mut bo = tensor_mut(beta_output, "beta_output")?;
        xops::fused_gdn_gating(
            &al,
            &av,
            &bv,
            &dt,
            beta as f32,
            threshold as f32,
            &mut gv,
            &mut bo,
        )
    })
}

/// fla's `l2norm`: `out = x / sqrt(sum(x^2, -1) + eps)`; `out` has x's shape,
/// any float dtype.
///
/// # Safety
/// Each pointer is NULL or valid; `out` is writable and does not overlap `x`.
#[no_mangle]
pub unsafe extern "C" fn xops_l2norm(
    x: *const DLTensor,
    eps: f64,
    out: *const DLTensor,
) -> xops_status {
    ffi_call("xops_l2norm", || {
        let xv = tensor(x, "x")?;
        let mut o = tensor_mut(out, "out")?;
        xops::l2norm(&xv, eps as f32, &mut o)
    })
}

/// vLLM's `rms_norm_gated` (RMSNormGated): per group of `group_size`
/// elements (<= 0: the whole last dim), norm before gate: `out = x * rstd *
/// weight (+ bias)` then `* silu(z)`; otherwise the gate first. `z`, `bias`:
/// NULL for none.
///
/// # Safety
/// Each pointer is NULL or valid; `out` is writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn xops_rms_norm_gated(
    x: *const DLTensor,
    weight: *const DLTensor,
    bias: *const DLTensor,
    z: *const DLTensor,
    eps: f64,
    group_size: i64,
    norm_before_gate: i32,
    out: *const DLTensor,
) -> xops_status {
    ffi_call("xops_rms_norm_gated", || {
        let xv = tensor(x, "x")?;
        let w = tensor(weight, "weight")?;
        let b = opt_tensor(bias, "bias")?;
        let zv = opt_tensor(z, "z")?;
        let mut o = tensor_mut(out, "out")?;
        let gs = (group_size > 0).then_some(group_size as usize);
        xops::rms_norm_gated(
            &xv,
            &w,
            b.as_ref(),
            zv.as_ref(),
            eps as f32,
            gs,
            norm_before_gate != 0,
            &mut o,
        )
    })
}

/// vLLM's `fused_recurrent_gated_delta_rule` (decode / spec decode), the
/// fp32 state pool `initial_state` `[slots, HV, V, K]` updated in place.
///
/// * `q`, `k`: `[B, T, H, K]`; `v`, `o`: `[B, T, HV, V]` (o has v's dtype);
///   `g`, `beta` (NULL = ones): `[B, T, HV]`.
/// * `scale`: 0 = `K^-0.5`.
/// * `cu_seqlens`: `[N + 1]` (B = 1) or NULL; `ssm_state_indices`: NULL,
///   `[N]` or `[N, T]` (per-token snapshots, read at `num_accepted_tokens - 1`);
///   negative read slots skip the sequence (zero outputs).
///
/// # Safety
/// Each pointer is NULL or valid; `initial_state` and `o` are writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn xops_fused_recurrent_gated_delta_rule(
    q: *const DLTensor,
    k: *const DLTensor,
    v: *const DLTensor,
    g: *const DLTensor,
    beta: *const DLTensor,
    scale: f64,
    initial_state: *const DLTensor,
    cu_seqlens: *const DLTensor,
    ssm_state_indices: *const DLTensor,
    num_accepted_tokens: *const DLTensor,
    use_qk_l2norm_in_kernel: i32,
    o: *const DLTensor,
) -> xops_status {
    ffi_call("xops_fused_recurrent_gated_delta_rule", || {
        let (qv, kv, vv, gv) = (
            tensor(q, "q")?,
            tensor(k, "k")?,
            tensor(v, "v")?,
            tensor(g, "g")?,
        );
        let bv = opt_tensor(beta, "beta")?;
        let mut st = tensor_mut(initial_state, "initial_state")?;
        let cu = opt_tensor(cu_seqlens, "cu_seqlens")?;
        let idx = opt_tensor(ssm_state_indices, "ssm_state_indices")?;
        let na = opt_tensor(num_accepted_tokens, "num_accepted_tokens")?;
        let mut ov = tensor_mut(o, "o")?;
        xops::fused_recurrent_gated_delta_rule(
            &qv,
            &kv,
            &vv,
            &gv,
            bv.as_ref(),
            scale_arg(scale),
            &mut st,
            cu.as_ref(),
            idx.as_ref(),
            na.as_ref(),
            use_qk_l2norm_in_kernel != 0,
            &mut ov,
        )
    })
}

/// fla's `chunk_gated_delta_rule` (prefill, 64-token chunks), with the
/// initial states gathered from the fp32 pool `initial_state` (NULL: zeros)
/// by `ssm_state_indices` (`[N]` or NULL = slot n; negative = padding) unless
/// `has_initial_state[n]` is false, and the final states written back when
/// `output_final_state`. Other arguments as
/// `xops_fused_recurrent_gated_delta_rule`.
///
/// # Safety
/// Each pointer is NULL or valid; `initial_state` and `o` are writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn xops_chunk_gated_delta_rule(
    q: *const DLTensor,
    k: *const DLTensor,
    v: *const DLTensor,
    g: *const DLTensor,
    beta: *const DLTensor,
    scale: f64,
    initial_state: *const DLTensor,
    output_final_state: i32,
    cu_seqlens: *const DLTensor,
    ssm_state_indices: *const DLTensor,
    has_initial_state: *const DLTensor,
    use_qk_l2norm_in_kernel: i32,
    o: *const DLTensor,
) -> xops_status {
    ffi_call("xops_chunk_gated_delta_rule", || {
        let (qv, kv, vv, gv) = (
            tensor(q, "q")?,
            tensor(k, "k")?,
            tensor(v, "v")?,
            tensor(g, "g")?,
        );
        let bv = opt_tensor(beta, "beta")?;
        let mut st = if initial_state.is_null() {
            None
        } else {
            Some(tensor_mut(initial_state, "initial_state")?)
        };
        let cu = opt_tensor(cu_seqlens, "cu_seqlens")?;
        let idx = opt_tensor(ssm_state_indices, "ssm_state_indices")?;
        let hi = opt_tensor(has_initial_state, "has_initial_state")?;
        let mut ov = tensor_mut(o, "o")?;
        xops::chunk_gated_delta_rule(
            &qv,
            &kv,
            &vv,
            &gv,
            bv.as_ref(),
            scale_arg(scale),
            st.as_mut(),
            output_final_state != 0,
            cu.as_ref(),
            idx.as_ref(),
            hi.as_ref(),
            use_qk_l2norm_in_kernel != 0,
            &mut ov,
        )
    })
}

#[cfg(test)]
mod tests {
    //! Each export reaches the Rust API's result bit for bit; errors come back
    //! as the status with the message, nothing written.

    use std::ffi::CStr;

    use xops::{TensorView, TensorViewMut};

    use super::*;
    use crate::runtime::xops_last_error;
    use crate::status::xops_status::*;

    fn last_error() -> String {
        unsafe { CStr::from_ptr(xops_last_error()) }
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn data(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * seed).sin()).collect()
    }

    #[test]
    fn conv_update_in_place_and_spec_decode_match_the_rust_api() {
        let (batch, dim, width, seqlen) = (2, 12, 4, 3);
        let state_len = width - 2 + seqlen;
        let x0 = data(batch * dim * seqlen, 0.3);
        let w = data(dim * width, 0.7);
        let s0 = data(batch * dim * state_len, 0.11);
        let acc = [1i32, 2];
        let (mut wx, mut ws) = (x0.clone(), s0.clone());
        let wv = TensorView::new(&w, &[dim, width]).unwrap();
        let av = TensorView::new(&acc, &[batch]).unwrap();
        xops::causal_conv1d_update(
            &mut TensorViewMut::new(&mut wx, &[batch, dim, seqlen]).unwrap(),
            &mut TensorViewMut::new(&mut ws, &[batch, dim, state_len]).unwrap(),
            &wv,
            None,
            Some("silu"),
            None,
            Some(&av),
            None,
            -1,
            -1,
            None,
        )
        .unwrap();
        let (mut x, mut s) = (x0.clone(), s0.clone());
        {
            let mut xv = TensorViewMut::new(&mut x, &[batch, dim, seqlen]).unwrap();
            let mut sv = TensorViewMut::new(&mut s, &[batch, dim, state_len]).unwrap();
            let (dx, ds, dw, da) = (
                xv.to_dlpack(),
                sv.to_dlpack(),
                wv.to_dlpack(),
                av.to_dlpack(),
            );
            let act = c"silu";
            // out = x itself: in place.
            let rc = unsafe {
                xops_causal_conv1d_update(
                    dx.as_dltensor(),
                    ds.as_dltensor(),
                    dw.as_dltensor(),
                    std::ptr::null(),
                    act.as_ptr(),
                    std::ptr::null(),
                    da.as_dltensor(),
                    std::ptr::null(),
                    -1,
                    -1,
                    dx.as_dltensor(),
                )
            };
            assert_eq!(rc, XOPS_OK, "{}", last_error());
            // A bad accepted count: named, nothing written.
            let bad = [1i32, 5];
            let bv = TensorView::new(&bad, &[batch]).unwrap();
            let db = bv.to_dlpack();
            let rc = unsafe {
                xops_causal_conv1d_update(
                    dx.as_dltensor(),
                    ds.as_dltensor(),
                    dw.as_dltensor(),
                    std::ptr::null(),
                    act.as_ptr(),
                    std::ptr::null(),
                    db.as_dltensor(),
                    std::ptr::null(),
                    -1,
                    -1,
                    std::ptr::null(),
                )
            };
            assert_eq!(rc, XOPS_ERR_INDEX_OUT_OF_RANGE);
            assert!(
                last_error().contains("num_accepted_tokens[1] = 5"),
                "{}",
                last_error()
            );
        }
        assert_eq!((x, s), (wx, ws));
    }

    #[test]
    fn gdn_recurrent_and_chunk_match_the_rust_api() {
        let (t, h, hv, kd, vd) = (70, 1, 2, 8, 4);
        let q = data(t * h * kd, 0.37);
        let k = data(t * h * kd, 0.53);
        let v = data(t * hv * vd, 0.71);
        let g: Vec<f32> = data(t * hv, 0.13)
            .iter()
            .map(|x| -0.1 - 0.1 * x.abs())
            .collect();
        let pool0 = data(3 * hv * vd * kd, 0.05);
        let idx = [2i32];
        let qv = TensorView::new(&q, &[1, t, h, kd]).unwrap();
        let kv = TensorView::new(&k, &[1, t, h, kd]).unwrap();
        let vv = TensorView::new(&v, &[1, t, hv, vd]).unwrap();
        let gv = TensorView::new(&g, &[1, t, hv]).unwrap();
        let iv = TensorView::new(&idx, &[1]).unwrap();
        for chunked in [false, true] {
            let (mut wp, mut wo) = (pool0.clone(), vec![0f32; t * hv * vd]);
            {
                let mut pv = TensorViewMut::new(&mut wp, &[3, hv, vd, kd]).unwrap();
                let mut ov = TensorViewMut::new(&mut wo, &[1, t, hv, vd]).unwrap();
                if chunked {
                    xops::chunk_gated_delta_rule(
                        &qv,
                        &kv,
                        &vv,
                        &gv,
                        None,
                        None,
                        Some(&mut pv),
                        true,
                        None,
                        Some(&iv),
                        None,
                        true,
                        &mut ov,
                    )
                } else {
                    xops::fused_recurrent_gated_delta_rule(
                        &qv,
                        &kv,
                        &vv,
                        &gv,
                        None,
                        None,
                        &mut pv,
                        None,
                        Some(&iv),
                        None,
                        true,
                        &mut ov,
                    )
                }
                .unwrap();
            }
            let (mut p, mut o) = (pool0.clone(), vec![0f32; t * hv * vd]);
            {
                let mut pv = TensorViewMut::new(&mut p, &[3, hv, vd, kd]).unwrap();
                let mut ov = TensorViewMut::new(&mut o, &[1, t, hv, vd]).unwrap();
                let (dq, dk, dv, dg, di) = (
                    qv.to_dlpack(),
                    kv.to_dlpack(),
                    vv.to_dlpack(),
                    gv.to_dlpack(),
                    iv.to_dlpack(),
                );
                let (dp, dout) = (pv.to_dlpack(), ov.to_dlpack());
                let n = std::ptr::null();
                let rc = unsafe {
                    if chunked {
                        xops_chunk_gated_delta_rule(
                            dq.as_dltensor(),
                            dk.as_dltensor(),
                            dv.as_dltensor(),
                            dg.as_dltensor(),
                            n,
                            0.0,
                            dp.as_dltensor(),
                            1,
                            n,
                            di.as_dltensor(),
                            n,
                            1,
                            dout.as_dltensor(),
                        )
                    } else {
                        xops_fused_recurrent_gated_delta_rule(
                            dq.as_dltensor(),
                            dk.as_dltensor(),
                            dv.as_dltensor(),
                            dg.as_dltensor(),
                            n,
                            0.0,
                            dp.as_dltensor(),
                            n,
                            di.as_dltensor(),
                            n,
                            1,
                            dout.as_dltensor(),
                        )
                    }
                };
                assert_eq!(rc, XOPS_OK, "{}", last_error());
                // A slot outside the pool: named, nothing written.
                let bad = [3i32];
                let bv = TensorView::new(&bad, &[1]).unwrap();
                let db = bv.to_dlpack();
                let rc = unsafe {
                    xops_fused_recurrent_gated_delta_rule(
                        dq.as_dltensor(),
                        dk.as_dltensor(),
                        dv.as_dltensor(),
                        dg.as_dltensor(),
                        n,
                        0.0,
                        dp.as_dltensor(),
                        n,
                        db.as_dltensor(),
                        n,
                        1,
                        dout.as_dltensor(),
                    )
                };
                assert_eq!(rc, XOPS_ERR_INDEX_OUT_OF_RANGE);
                assert!(
                    last_error().contains("ssm_state_indices[0] = 3"),
                    "{}",
                    last_error()
                );
            }
            assert_eq!((p, o), (wp, wo), "chunked = {chunked}");
        }
    }
}
