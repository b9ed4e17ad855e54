//! Layer ops (vLLM `_custom_ops` semantics): thin C wrappers over
//! `xpu_ops::{rms_norm, fused_add_rms_norm, rotary_embedding, silu_and_mul}`.
//! The shapes, rules and tolerances are documented on the Rust functions.

use xops::dlpack::DLTensor;

use crate::call::{ffi_call, tensor, tensor_mut};
use crate::status::xops_status;

/// RMS normalization of each row (last dim) of `input`:
/// `out = input / sqrt(mean(input^2) + epsilon) * weight`, as vLLM's `rms_norm`.
///
/// * `out`: same shape and dtype as `input`; may be `input` itself (same
///   memory and layout) to normalize in place.
/// * `input`: `[..., hidden_size]` float32/float16/bfloat16, last dim
///   contiguous, leading dims flattenable to one row stride.
/// * `weight`: `[hidden_size]` float32/float16/bfloat16, contiguous.
/// * `epsilon`: finite and >= 0 (used as a float, as upstream).
///
/// f32 accumulation, one rounding per output. Nothing is written unless every
/// argument is valid.
///
/// # Safety
/// Each pointer is NULL or valid; tensor memory is readable (writable for
/// `out`) for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn xops_rms_norm(
    out: *const DLTensor,
    input: *const DLTensor,
    weight: *const DLTensor,
    epsilon: f64,
) -> xops_status {
    ffi_call("xops_rms_norm", || {
        let mut o = tensor_mut(out, "out")?;
        let x = tensor(input, "input")?;
        let w = tensor(weight, "weight")?;
        xops::rms_norm(&mut o, &x, &w, epsilon)
    })
}

/// vLLM's `fused_add_rms_norm`, in place on both tensors:
/// `residual = input + residual` (rounded to the dtype), then
/// `input = rms_norm(residual, weight, epsilon)`.
///
/// * `input`, `residual`: `[..., hidden_size]`, same shape and dtype
///   (float32/float16/bfloat16), last dim contiguous, not overlapping.
/// * `weight`, `epsilon`: as `xops_rms_norm`.
///
/// # Safety
/// Each pointer is NULL or valid; `input` and `residual` are writable for the
/// duration of the call.
#[no_mangle]
pub unsafe extern "C" fn xops_fused_add_rms_norm(
    input: *const DLTensor,
    residual: *const DLTensor,
    weight: *const DLTensor,
    epsilon: f64,
) -> xops_status {
    ffi_call("xops_fused_add_rms_norm", || {
        let mut x = tensor_mut(input, "input")?;
        let mut r = tensor_mut(residual, "residual")?;
        let w = tensor(weight, "weight")?;
        xops::fused_add_rms_norm(&mut x, &mut r, &w, epsilon)
    })
}

/// vLLM's `rotary_embedding`, in place on `query` and `key`: the first
/// `rot_dim = cos_sin_cache.shape[1]` dims of every head are rotated by the
/// angle of the token's position (`cos_sin_cache` row: cos in
/// `[0, rot_dim/2)`, sin after). `is_neox` nonzero pairs `(i, i + rot_dim/2)`,
/// zero (GPT-J) pairs `(2i, 2i + 1)`.
///
/// * `positions`: int64/int32 `[num_tokens]` or `[batch, seq_len]`, each in
///   `[0, max_position)`.
/// * `query`: `[*positions.shape, num_heads * head_size]` or
///   `[*positions.shape, num_heads, head_size]` float32/float16/bfloat16,
///   head_size contiguous (q/k views of one qkv tensor work).
/// * `key`: NULL, or like `query` with num_kv_heads dividing num_heads.
/// * `head_size`: > 0; `cos_sin_cache`: `[max_position, rot_dim]`
///   float32/float16/bfloat16, rot_dim even and <= head_size.
///
/// # Safety
/// Each pointer is NULL or valid; `query` and `key` are writable for the
/// duration of the call.
#[no_mangle]
pub unsafe extern "C" fn xops_rotary_embedding(
    positions: *const DLTensor,
    query: *const DLTensor,
    key: *const DLTensor,
    head_size: i64,
    cos_sin_cache: *const DLTensor,
    is_neox: i32,
) -> xops_status {
    ffi_call("xops_rotary_embedding", || {
        let p = tensor(positions, "positions")?;
        let mut q = tensor_mut(query, "query")?;
        let mut k = if key.is_null() {
            None
        } else {
            Some(tensor_mut(key, "key")?)
        };
        let c = tensor(cos_sin_cache, "cos_sin_cache")?;
        if head_size <= 0 {
            return Err(xops::Error::new(
                xops::Status::InvalidArgument,
                format!("head_size must be positive, got {head_size}"),
            ));
        }
        xops::rotary_embedding(&p, &mut q, k.as_mut(), head_size as usize, &c, is_neox != 0)
    })
}

/// vLLM's `silu_and_mul`: with `input = [x, y]` split in halves along the
/// last dim, `out = silu(x) * y`, `silu(x) = x / (1 + exp(-x))`.
///
/// * `input`: `[..., 2 * d]` float32/float16/bfloat16, last dim contiguous.
/// * `out`: `[..., d]`, same dtype, not overlapping `input`.
///
/// # Safety
/// Each pointer is NULL or valid; `out` is writable for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn xops_silu_and_mul(
    out: *const DLTensor,
    input: *const DLTensor,
) -> xops_status {
    ffi_call("xops_silu_and_mul", || {
        let mut o = tensor_mut(out, "out")?;
        let x = tensor(input, "input")?;
        xops::silu_and_mul(&mut o, &x)
    })
}

#[cfg(test)]
mod tests {
    //! Each export reaches the Rust API's result bit for bit, and errors come
    //! back as the status with the message, nothing written.

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
        (0..n).map(|i| (i as f32 * seed).sin() * 2.0).collect()
    }

    #[test]
    fn rms_norm_and_fused_match_the_rust_api() {
        let (t, h) = (3, 40);
        let x = data(t * h, 0.37);
        let w = data(h, 0.11);
        let mut want = vec![0f32; t * h];
        xops::rms_norm(
            &mut TensorViewMut::new(&mut want, &[t, h]).unwrap(),
            &TensorView::new(&x, &[t, h]).unwrap(),
            &TensorView::new(&w, &[h]).unwrap(),
            1e-5,
        )
        .unwrap();
        let mut out = vec![0f32; t * h];
        let xv = TensorView::new(&x, &[t, h]).unwrap();
        let wv = TensorView::new(&w, &[h]).unwrap();
        let (dx, dw) = (xv.to_dlpack(), wv.to_dlpack());
        {
            let mut ov = TensorViewMut::new(&mut out, &[t, h]).unwrap();
            let dout = ov.to_dlpack();
            let rc = unsafe {
                xops_rms_norm(dout.as_dltensor(), dx.as_dltensor(), dw.as_dltensor(), 1e-5)
            };
            assert_eq!(rc, XOPS_OK, "{}", last_error());
        }
        assert_eq!(out, want);

        // A bad epsilon: a named status and message, out untouched.
        let mut ov = TensorViewMut::new(&mut out, &[t, h]).unwrap();
        let dout = ov.to_dlpack();
        let rc =
            unsafe { xops_rms_norm(dout.as_dltensor(), dx.as_dltensor(), dw.as_dltensor(), -1.0) };
        assert_eq!(rc, XOPS_ERR_INVALID_VALUE);
        assert!(last_error().contains("epsilon"), "{}", last_error());
        let rc =
            unsafe { xops_rms_norm(std::ptr::null(), dx.as_dltensor(), dw.as_dltensor(), 0.0) };
        assert_eq!(rc, XOPS_ERR_NULL_POINTER);
        assert!(last_error().contains("`out` is NULL"));
        drop(dout);
        assert_eq!(out, want);

        // fused_add_rms_norm
        let (mut xi, mut r) = (x.clone(), data(t * h, 0.23));
        let (mut wx, mut wr) = (xi.clone(), r.clone());
        xops::fused_add_rms_norm(
            &mut TensorViewMut::new(&mut wx, &[t, h]).unwrap(),
            &mut TensorViewMut::new(&mut wr, &[t, h]).unwrap(),
            &wv,
            1e-6,
        )
        .unwrap();
        {
            let mut a = TensorViewMut::new(&mut xi, &[t, h]).unwrap();
            let mut b = TensorViewMut::new(&mut r, &[t, h]).unwrap();
            let (da, db) = (a.to_dlpack(), b.to_dlpack());
            let rc = unsafe {
                xops_fused_add_rms_norm(da.as_dltensor(), db.as_dltensor(), dw.as_dltensor(), 1e-6)
            };
            assert_eq!(rc, XOPS_OK, "{}", last_error());
        }
        assert_eq!((xi, r), (wx, wr));
    }

    #[test]
    fn rotary_embedding_matches_the_rust_api() {
        let (t, nq, nk, hs, rot, max_pos) = (4, 2, 1, 8, 4, 16);
        let cache = data(max_pos * rot, 0.5);
        let pos = [3i64, 0, 15, 7];
        let (q0, k0) = (data(t * nq * hs, 0.3), data(t * nk * hs, 0.7));
        let pv = TensorView::new(&pos, &[t]).unwrap();
        let cv = TensorView::new(&cache, &[max_pos, rot]).unwrap();
        for neox in [0, 1] {
            let (mut wq, mut wk) = (q0.clone(), k0.clone());
            xops::rotary_embedding(
                &pv,
                &mut TensorViewMut::new(&mut wq, &[t, nq * hs]).unwrap(),
                Some(&mut TensorViewMut::new(&mut wk, &[t, nk, hs]).unwrap()),
                hs,
                &cv,
                neox == 1,
            )
            .unwrap();
            let (mut q, mut k) = (q0.clone(), k0.clone());
            {
                let mut qv = TensorViewMut::new(&mut q, &[t, nq * hs]).unwrap();
                let mut kv = TensorViewMut::new(&mut k, &[t, nk, hs]).unwrap();
                let (dq, dk) = (qv.to_dlpack(), kv.to_dlpack());
                let (dp, dc) = (pv.to_dlpack(), cv.to_dlpack());
                let rc = unsafe {
                    xops_rotary_embedding(
                        dp.as_dltensor(),
                        dq.as_dltensor(),
                        dk.as_dltensor(),
                        hs as i64,
                        dc.as_dltensor(),
                        neox,
                    )
                };
                assert_eq!(rc, XOPS_OK, "{}", last_error());
                // key NULL, bad head_size, position out of range
                let rc = unsafe {
                    xops_rotary_embedding(
                        dp.as_dltensor(),
                        dq.as_dltensor(),
                        std::ptr::null(),
                        -8,
                        dc.as_dltensor(),
                        neox,
                    )
                };
                assert_eq!(rc, XOPS_ERR_INVALID_ARGUMENT);
                assert!(last_error().contains("head_size"), "{}", last_error());
                let bad = [3i64, 0, 16, 7];
                let bv = TensorView::new(&bad, &[t]).unwrap();
                let db = bv.to_dlpack();
                let rc = unsafe {
                    xops_rotary_embedding(
                        db.as_dltensor(),
                        dq.as_dltensor(),
                        dk.as_dltensor(),
                        hs as i64,
                        dc.as_dltensor(),
                        neox,
                    )
                };
                assert_eq!(rc, XOPS_ERR_INDEX_OUT_OF_RANGE);
                assert!(
                    last_error().contains("positions[2] = 16"),
                    "{}",
                    last_error()
                );
            }
            assert_eq!((q, k), (wq, wk), "neox={neox}");
        }
    }

    #[test]
    fn silu_and_mul_matches_the_rust_api() {
        let (t, d) = (5, 37);
        let x = data(t * 2 * d, 0.9);
        let xv = TensorView::new(&x, &[t, 2 * d]).unwrap();
        let mut want = vec![0f32; t * d];
        xops::silu_and_mul(&mut TensorViewMut::new(&mut want, &[t, d]).unwrap(), &xv).unwrap();
        let mut out = vec![0f32; t * d];
        let dx = xv.to_dlpack();
        {
            let mut ov = TensorViewMut::new(&mut out, &[t, d]).unwrap();
            let dout = ov.to_dlpack();
            let rc = unsafe { xops_silu_and_mul(dout.as_dltensor(), dx.as_dltensor()) };
            assert_eq!(rc, XOPS_OK, "{}", last_error());
        }
        assert_eq!(out, want);
        let mut odd = vec![7f32; t * d];
        let mut ov = TensorViewMut::new(&mut odd, &[t, d]).unwrap();
        let dout = ov.to_dlpack();
        let xo = TensorView::new(&x[..t * (2 * d - 1)], &[t, 2 * d - 1]).unwrap();
        let dxo = xo.to_dlpack();
        let rc = unsafe { xops_silu_and_mul(dout.as_dltensor(), dxo.as_dltensor()) };
        assert_eq!(rc, XOPS_ERR_SHAPE_MISMATCH);
        assert!(last_error().contains("even"), "{}", last_error());
        drop(dout);
        assert!(odd.iter().all(|&v| v == 7.0));
    }
}
