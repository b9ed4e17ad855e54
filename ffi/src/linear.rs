//! FC / GEMM ops: thin C wrappers over `xpu_ops::{linear, wna16_linear,
//! wna16_dequantize, Wna16Weight importers, static/dynamic_scaled_int8_quant,
//! int8_scaled_mm(_azp)}`. The shapes and rules are documented on the Rust
//! functions.

use xops::dlpack::DLTensor;
use xops::{GptqFormat, Result, Wna16Weight};

use crate::call::{ffi_call, opt_tensor, tensor, tensor_mut};
use crate::status::xops_status;

/// `F.linear`: `out = x · weightᵀ + bias`.
///
/// * `x`: `[M, K]` or `[K]` float32/float16/bfloat16, K contiguous.
/// * `weight`: `[N, K]`, `x`'s dtype, K contiguous.
/// * `bias`: `[N]` (`x`'s dtype or float32) or NULL.
/// * `out`: `[M, N]` (or `[N]`), `x`'s dtype or float32; not overlapping an input.
///
/// fp32 accumulation; bit-identical for any thread count.
///
/// # Safety
/// Each pointer is NULL or valid; tensor memory is readable (writable for
/// `out`) for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn xops_linear(
    x: *const DLTensor,
    weight: *const DLTensor,
    bias: *const DLTensor,
    out: *const DLTensor,
) -> xops_status {
    ffi_call("xops_linear", || {
        let x = tensor(x, "x")?;
        let w = tensor(weight, "weight")?;
        let b = opt_tensor(bias, "bias")?;
        let mut o = tensor_mut(out, "out")?;
        xops::linear(&x, &w, b.as_ref(), &mut o)
    })
}

/// Weight-only quantized linear with the canonical int4/int8 layout:
/// `qweight` uint8 `[N, row_bytes]` (see `xops_wna16_row_bytes`), `scales`
/// `[N, K / group_size]` float32/float16/bfloat16, `zeros` like `scales` or
/// NULL (symmetric), `perm` int32 `[K]` (act-order) or NULL, `bits` 4 or 8.
/// Other arguments as `xops_linear`.
///
/// # Safety
/// As `xops_linear`.
#[no_mangle]
pub unsafe extern "C" fn xops_wna16_linear(
    x: *const DLTensor,
    qweight: *const DLTensor,
    scales: *const DLTensor,
    zeros: *const DLTensor,
    perm: *const DLTensor,
    bias: *const DLTensor,
    out: *const DLTensor,
    bits: u32,
) -> xops_status {
    ffi_call("xops_wna16_linear", || {
        let x = tensor(x, "x")?;
        let q = tensor(qweight, "qweight")?;
        let s = tensor(scales, "scales")?;
        let z = opt_tensor(zeros, "zeros")?;
        let p = opt_tensor(perm, "perm")?;
        let b = opt_tensor(bias, "bias")?;
        let mut o = tensor_mut(out, "out")?;
        xops::wna16_linear(&x, &q, &s, z.as_ref(), p.as_ref(), b.as_ref(), &mut o, bits)
    })
}

/// Dequantizes canonical weight tensors into `out` `[N, K]`
/// (float32/float16/bfloat16) in input-channel order. Arguments as
/// `xops_wna16_linear`.
///
/// # Safety
/// As `xops_linear`.
#[no_mangle]
pub unsafe extern "C" fn xops_wna16_dequantize(
    qweight: *const DLTensor,
    scales: *const DLTensor,
    zeros: *const DLTensor,
    perm: *const DLTensor,
    out: *const DLTensor,
    bits: u32,
) -> xops_status {
    ffi_call("xops_wna16_dequantize", || {
        let q = tensor(qweight, "qweight")?;
        let s = tensor(scales, "scales")?;
        let z = opt_tensor(zeros, "zeros")?;
        let p = opt_tensor(perm, "perm")?;
        let mut o = tensor_mut(out, "out")?;
        xops::wna16_dequantize(&q, &s, z.as_ref(), p.as_ref(), &mut o, bits)
    })
}

/// Bytes per row of canonical `qweight` for `bits` (4 or 8) and `k` input
/// channels: `64 * ceil(k / 128)` for 4 bits, `k` for 8.
#[no_mangle]
pub extern "C" fn xops_wna16_row_bytes(bits: u32, k: u64) -> u64 {
    xops::ops::quant::wna16_row_bytes(bits, k as usize) as u64
}

/// Writes an imported weight into the caller's canonical outputs.
unsafe fn write_out(
    w: Wna16Weight,
    out_qweight: *const DLTensor,
    out_scales: *const DLTensor,
    out_zeros: *const DLTensor,
    out_perm: *const DLTensor,
    is_act_order: *mut i32,
) -> Result<()> {
    let mut q = tensor_mut(out_qweight, "out_qweight")?;
    let mut s = tensor_mut(out_scales, "out_scales")?;
    let mut z = if out_zeros.is_null() {
        None
    } else {
        Some(tensor_mut(out_zeros, "out_zeros")?)
    };
    let mut p = if out_perm.is_null() {
        None
    } else {
        Some(tensor_mut(out_perm, "out_perm")?)
    };
    let act = w.write_to(&mut q, &mut s, z.as_mut(), p.as_mut())?;
    if let Some(flag) = is_act_order.as_mut() {
        *flag = act as i32;
    }
    Ok(())
}

/// Imports an AutoGPTQ / GPTQModel checkpoint into the canonical layout.
///
/// * `qweight` int32 `[K / (32 / bits), N]`, `qzeros` int32 `[G, N / (32 / bits)]`,
///   `scales` `[G, N]`, `g_idx` int32 `[K]` or NULL; `bits` 4 or 8;
///   `use_v2_format` 0 for `gptq` (stored zero + 1), 1 for `gptq_v2`.
/// * Outputs: `out_qweight` uint8 `[N, row_bytes]`, `out_scales` and
///   `out_zeros` `[N, G]` of `scales`' dtype, `out_perm` int32 `[K]`
///   (NULL allowed unless `g_idx` is act-order); `*is_act_order` (may be
///   NULL) is set to 1 when `out_perm` must be passed to the ops.
///
/// # Safety
/// As `xops_linear`; `is_act_order` is NULL or writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn xops_gptq_to_wna16(
    qweight: *const DLTensor,
    qzeros: *const DLTensor,
    scales: *const DLTensor,
    g_idx: *const DLTensor,
    bits: u32,
    use_v2_format: i32,
    out_qweight: *const DLTensor,
    out_scales: *const DLTensor,
    out_zeros: *const DLTensor,
    out_perm: *const DLTensor,
    is_act_order: *mut i32,
) -> xops_status {
    ffi_call("xops_gptq_to_wna16", || {
        let q = tensor(qweight, "qweight")?;
        let z = tensor(qzeros, "qzeros")?;
        let s = tensor(scales, "scales")?;
        let g = opt_tensor(g_idx, "g_idx")?;
        let format = if use_v2_format != 0 {
            GptqFormat::V2
        } else {
            GptqFormat::V1
        };
        let w = Wna16Weight::from_gptq(&q, &z, &s, g.as_ref(), bits, format)?;
        write_out(
            w,
            out_qweight,
            out_scales,
            out_zeros,
            out_perm,
            is_act_order,
        )
    })
}

/// Imports an AutoAWQ (GEMM layout, 4-bit) checkpoint: `qweight` int32
/// `[K, N / 8]`, `qzeros` int32 `[G, N / 8]`, `scales` `[G, N]`. Outputs as
/// `xops_gptq_to_wna16` (no permutation).
///
/// # Safety
/// As `xops_linear`.
#[no_mangle]
pub unsafe extern "C" fn xops_awq_to_wna16(
    qweight: *const DLTensor,
    qzeros: *const DLTensor,
    scales: *const DLTensor,
    out_qweight: *const DLTensor,
    out_scales: *const DLTensor,
    out_zeros: *const DLTensor,
) -> xops_status {
    ffi_call("xops_awq_to_wna16", || {
        let q = tensor(qweight, "qweight")?;
        let z = tensor(qzeros, "qzeros")?;
        let s = tensor(scales, "scales")?;
        let w = Wna16Weight::from_awq(&q, &z, &s)?;
        write_out(
            w,
            out_qweight,
            out_scales,
            out_zeros,
            std::ptr::null(),
            std::ptr::null_mut(),
        )
    })
}

/// Imports a compressed-tensors `pack-quantized` weight: `weight_packed`
/// int32 `[N, ceil(K / (32 / num_bits))]`, `weight_scale` `[N, G]`,
/// `weight_zero_point` int32 `[ceil(N / (32 / num_bits)), G]` or NULL,
/// `weight_g_idx` int32 `[K]` or NULL, the checkpoint's `weight_shape` as
/// `n`, `k`. Outputs as `xops_gptq_to_wna16` (`out_zeros` may be NULL for a
/// symmetric weight).
///
/// # Safety
/// As `xops_gptq_to_wna16`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn xops_compressed_tensors_to_wna16(
    weight_packed: *const DLTensor,
    weight_scale: *const DLTensor,
    weight_zero_point: *const DLTensor,
    weight_g_idx: *const DLTensor,
    n: u64,
    k: u64,
    num_bits: u32,
    out_qweight: *const DLTensor,
    out_scales: *const DLTensor,
    out_zeros: *const DLTensor,
    out_perm: *const DLTensor,
    is_act_order: *mut i32,
) -> xops_status {
    ffi_call("xops_compressed_tensors_to_wna16", || {
        let wp = tensor(weight_packed, "weight_packed")?;
        let ws = tensor(weight_scale, "weight_scale")?;
        let zp = opt_tensor(weight_zero_point, "weight_zero_point")?;
        let g = opt_tensor(weight_g_idx, "weight_g_idx")?;
        let w = Wna16Weight::from_compressed_tensors(
            &wp,
            &ws,
            zp.as_ref(),
            g.as_ref(),
            [n as usize, k as usize],
            num_bits,
        )?;
        write_out(
            w,
            out_qweight,
            out_scales,
            out_zeros,
            out_perm,
            is_act_order,
        )
    })
}

/// vLLM `static_scaled_int8_quant`: `out` int8 = sat8(round_even(input /
/// scale) (+ azp)); `input` `[num_tokens, hidden]` float32/float16/bfloat16;
/// `scale` one float32; `azp` one int32 or NULL.
///
/// # Safety
/// As `xops_linear`.
#[no_mangle]
pub unsafe extern "C" fn xops_static_scaled_int8_quant(
    out: *const DLTensor,
    input: *const DLTensor,
    scale: *const DLTensor,
    azp: *const DLTensor,
) -> xops_status {
    ffi_call("xops_static_scaled_int8_quant", || {
        let mut o = tensor_mut(out, "out")?;
        let i = tensor(input, "input")?;
        let s = tensor(scale, "scale")?;
        let z = opt_tensor(azp, "azp")?;
        xops::static_scaled_int8_quant(&mut o, &i, &s, z.as_ref())
    })
}

/// vLLM `dynamic_scaled_int8_quant`: per-token `scales` (float32, one per
/// token) written, and per-token zero points `azp` (int32) when not NULL
/// (asymmetric). Other arguments as `xops_static_scaled_int8_quant`.
///
/// # Safety
/// As `xops_linear`; `scales` and `azp` are written.
#[no_mangle]
pub unsafe extern "C" fn xops_dynamic_scaled_int8_quant(
    out: *const DLTensor,
    input: *const DLTensor,
    scales: *const DLTensor,
    azp: *const DLTensor,
) -> xops_status {
    ffi_call("xops_dynamic_scaled_int8_quant", || {
        let mut o = tensor_mut(out, "out")?;
        let i = tensor(input, "input")?;
        let mut s = tensor_mut(scales, "scales")?;
        let mut z = if azp.is_null() {
            None
        } else {
            Some(tensor_mut(azp, "azp")?)
        };
        xops::dynamic_scaled_int8_quant(&mut o, &i, &mut s, z.as_mut())
    })
}

/// vLLM CPU `int8_scaled_mm`: `out = a_scales · b_scales · (a · b) + bias`;
/// `a` int8 `[M, K]`, `b` int8 `[K, N]` column-major, `a_scales` float32 1 or
/// M values, `b_scales` 1 or N, `bias` `[N]` or NULL, `out` `[M, N]`
/// float32/float16/bfloat16.
///
/// # Safety
/// As `xops_linear`.
#[no_mangle]
pub unsafe extern "C" fn xops_int8_scaled_mm(
    out: *const DLTensor,
    a: *const DLTensor,
    b: *const DLTensor,
    a_scales: *const DLTensor,
    b_scales: *const DLTensor,
    bias: *const DLTensor,
) -> xops_status {
    ffi_call("xops_int8_scaled_mm", || {
        let mut o = tensor_mut(out, "out")?;
        let a = tensor(a, "a")?;
        let b = tensor(b, "b")?;
        let sa = tensor(a_scales, "a_scales")?;
        let sb = tensor(b_scales, "b_scales")?;
        let bias = opt_tensor(bias, "bias")?;
        xops::int8_scaled_mm(&mut o, &a, &b, &sa, &sb, bias.as_ref())
    })
}

/// vLLM CPU `int8_scaled_mm_azp`: as `xops_int8_scaled_mm` minus
/// `azp[m] · azp_adj[n]` (`azp` int32 M values, or NULL: `azp_adj` alone)
/// before scaling; `azp_adj` int32 N values.
///
/// # Safety
/// As `xops_linear`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn xops_int8_scaled_mm_azp(
    out: *const DLTensor,
    a: *const DLTensor,
    b: *const DLTensor,
    a_scales: *const DLTensor,
    b_scales: *const DLTensor,
    azp_adj: *const DLTensor,
    azp: *const DLTensor,
    bias: *const DLTensor,
) -> xops_status {
    ffi_call("xops_int8_scaled_mm_azp", || {
        let mut o = tensor_mut(out, "out")?;
        let a = tensor(a, "a")?;
        let b = tensor(b, "b")?;
        let sa = tensor(a_scales, "a_scales")?;
        let sb = tensor(b_scales, "b_scales")?;
        let adj = tensor(azp_adj, "azp_adj")?;
        let z = opt_tensor(azp, "azp")?;
        let bias = opt_tensor(bias, "bias")?;
        xops::int8_scaled_mm_azp(&mut o, &a, &b, &sa, &sb, &adj, z.as_ref(), bias.as_ref())
    })
}

/// An opaque pre-packed linear weight (`xpu_ops::PackedLinearWeight`):
/// create with `xops_packed_linear_weight_create`, run with
/// `xops_linear_packed`, free with `xops_packed_linear_weight_destroy`.
pub struct xops_packed_linear_weight {
    inner: xops::PackedLinearWeight,
}

/// Packs `weight` (`[N, K]` float32/float16/bfloat16, K contiguous) once
/// for the calling thread's ISA tier and stores a new handle in `*out`
/// (set to NULL on error). The weight memory is not referenced afterwards.
///
/// # Safety
/// `weight` is NULL or a valid DLTensor whose memory is readable for the
/// call; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn xops_packed_linear_weight_create(
    weight: *const DLTensor,
    out: *mut *mut xops_packed_linear_weight,
) -> xops_status {
    ffi_call("xops_packed_linear_weight_create", || {
        let Some(slot) = out.as_mut() else {
            return Err(xops::Error::new(xops::Status::NullPointer, "`out` is NULL"));
        };
        *slot = std::ptr::null_mut();
        let w = tensor(weight, "weight")?;
        let inner = xops::PackedLinearWeight::new(&w)?;
        *slot = Box::into_raw(Box::new(xops_packed_linear_weight { inner }));
        Ok(())
    })
}

/// Frees a handle from `xops_packed_linear_weight_create` (NULL: no-op).
///
/// # Safety
/// `w` is NULL or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn xops_packed_linear_weight_destroy(w: *mut xops_packed_linear_weight) {
    crate::call::ffi_value("xops_packed_linear_weight_destroy", (), || {
        if !w.is_null() {
            drop(Box::from_raw(w));
        }
    })
}

/// The handle behind `w`, or the NULL-pointer error naming `weight`.
///
/// # Safety
/// `w` is a live handle or NULL.
unsafe fn packed_handle<'a>(
    w: *const xops_packed_linear_weight,
) -> xops::Result<&'a xops_packed_linear_weight> {
    w.as_ref()
        .ok_or_else(|| xops::Error::new(xops::Status::NullPointer, "`weight` is NULL"))
}

/// Shape of a packed weight: writes N and K (either pointer may be NULL).
///
/// # Safety
/// `w` is a live handle or NULL; `n` and `k` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn xops_packed_linear_weight_shape(
    w: *const xops_packed_linear_weight,
    n: *mut u64,
    k: *mut u64,
) -> xops_status {
    ffi_call("xops_packed_linear_weight_shape", || {
        let w = packed_handle(w)?;
        if let Some(n) = n.as_mut() {
            *n = w.inner.n() as u64;
        }
        if let Some(k) = k.as_mut() {
            *k = w.inner.k() as u64;
        }
        Ok(())
    })
}

/// `F.linear` with a packed weight: as `xops_linear` with `weight` a handle
/// from `xops_packed_linear_weight_create`. `XOPS_ERR_UNSUPPORTED` when the
/// calling thread's tier cannot read the packed layout.
///
/// # Safety
/// As `xops_linear`; `weight` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn xops_linear_packed(
    x: *const DLTensor,
    weight: *const xops_packed_linear_weight,
    bias: *const DLTensor,
    out: *const DLTensor,
) -> xops_status {
    ffi_call("xops_linear_packed", || {
        let w = packed_handle(weight)?;
        let x = tensor(x, "x")?;
        let b = opt_tensor(bias, "bias")?;
        let mut o = tensor_mut(out, "out")?;
        xops::linear_packed(&x, &w.inner, b.as_ref(), &mut o)
    })
}

#[cfg(test)]
mod tests {
    //! Each export reaches the Rust op (bit-identical results), names NULL
    //! arguments, and returns the Rust status on bad input.
    use std::ffi::CStr;

    use half::bf16;
    use xops::dlpack::{DLDevice, DLTensor};
    use xops::{DType, TensorView, TensorViewMut};

    use super::*;
    use crate::status::xops_status::{self, *};
    use crate::xops_last_error;

    struct Dl {
        t: DLTensor,
        _shape: Box<[i64]>,
        _strides: Box<[i64]>,
    }

    impl Dl {
        fn new<T>(data: &mut [T], dtype: DType, shape: &[usize], strides: Option<&[usize]>) -> Dl {
            let mut shape: Box<[i64]> = shape.iter().map(|&d| d as i64).collect();
            let mut st: Box<[i64]> = match strides {
                Some(s) => s.iter().map(|&d| d as i64).collect(),
                None => {
                    let mut s = vec![1i64; shape.len()];
                    for i in (0..shape.len().saturating_sub(1)).rev() {
                        s[i] = s[i + 1] * shape[i + 1];
                    }
                    s.into()
                }
            };
            let t = DLTensor {
                data: data.as_mut_ptr().cast(),
                device: DLDevice {
                    device_type: 1,
                    device_id: 0,
                },
                ndim: shape.len() as i32,
                dtype: dtype.to_dlpack(),
                shape: shape.as_mut_ptr(),
                strides: st.as_mut_ptr(),
                byte_offset: 0,
            };
            Dl {
                t,
                _shape: shape,
                _strides: st,
            }
        }
        fn p(&self) -> *const DLTensor {
            &self.t
        }
    }

    fn last_error() -> String {
        unsafe { CStr::from_ptr(xops_last_error()) }
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn linear_matches_the_rust_op_and_names_null_arguments() {
        let (m, n, k) = (3usize, 37usize, 70usize);
        let mut x: Vec<bf16> = vals(m * k, 1).into_iter().map(bf16::from_f32).collect();
        let mut w: Vec<bf16> = vals(n * k, 2).into_iter().map(bf16::from_f32).collect();
        let mut b: Vec<f32> = vals(n, 3);
        let mut out = vec![0f32; m * n];
        let (dx, dw, db) = (
            Dl::new(&mut x, DType::BF16, &[m, k], None),
            Dl::new(&mut w, DType::BF16, &[n, k], None),
            Dl::new(&mut b, DType::F32, &[n], None),
        );
        let dout = Dl::new(&mut out, DType::F32, &[m, n], None);
        assert_eq!(
            unsafe { xops_linear(dx.p(), dw.p(), db.p(), dout.p()) },
            XOPS_OK,
            "{}",
            last_error()
        );
        let mut want = vec![0f32; m * n];
        xops::linear(
            &TensorView::new(&x, &[m, k]).unwrap(),
            &TensorView::new(&w, &[n, k]).unwrap(),
            Some(&TensorView::new(&b, &[n]).unwrap()),
            &mut TensorViewMut::new(&mut want, &[m, n]).unwrap(),
        )
        .unwrap();
        assert_eq!(out, want);
        let st = unsafe { xops_linear(std::ptr::null(), dw.p(), db.p(), dout.p()) };
        assert_eq!(st, XOPS_ERR_NULL_POINTER);
        assert!(last_error().contains("`x` is NULL"), "{}", last_error());
        // K mismatch: the Rust status, nothing written.
        let before = out.clone();
        let mut w2: Vec<bf16> = vec![bf16::ONE; n * (k - 1)];
        let dw2 = Dl::new(&mut w2, DType::BF16, &[n, k - 1], None);
        let dout = Dl::new(&mut out, DType::F32, &[m, n], None);
        let st = unsafe { xops_linear(dx.p(), dw2.p(), std::ptr::null(), dout.p()) };
        assert_eq!(st, XOPS_ERR_SHAPE_MISMATCH, "{}", last_error());
        assert_eq!(out, before);
    }

    #[test]
    fn gptq_import_then_wna16_linear_matches_rust() {
        let (k, n, g, bits) = (128usize, 16usize, 32usize, 4u32);
        let groups = k / g;
        let mut qweight: Vec<i32> = (0..k / 8 * n)
            .map(|i| (i as u32).wrapping_mul(0x9E37_79B9) as i32)
            .collect();
        let mut qzeros: Vec<i32> = (0..groups * n / 8)
            .map(|i| (i as u32).wrapping_mul(0x85EB_CA6B) as i32)
            .collect();
        let mut scales: Vec<bf16> = vals(groups * n, 9)
            .into_iter()
            .map(|v| bf16::from_f32(v * 0.1))
            .collect();
        let rb = xops_wna16_row_bytes(bits, k as u64) as usize;
        let mut oq = vec![0u8; n * rb];
        let mut os = vec![bf16::ZERO; n * groups];
        let mut oz = vec![bf16::ZERO; n * groups];
        let mut act = -1i32;
        let (dq, dz, ds) = (
            Dl::new(&mut qweight, DType::I32, &[k / 8, n], None),
            Dl::new(&mut qzeros, DType::I32, &[groups, n / 8], None),
            Dl::new(&mut scales, DType::BF16, &[groups, n], None),
        );
        let (doq, dos, doz) = (
            Dl::new(&mut oq, DType::U8, &[n, rb], None),
            Dl::new(&mut os, DType::BF16, &[n, groups], None),
            Dl::new(&mut oz, DType::BF16, &[n, groups], None),
        );
        let st = unsafe {
            xops_gptq_to_wna16(
                dq.p(),
                dz.p(),
                ds.p(),
                std::ptr::null(),
                bits,
                0,
                doq.p(),
                dos.p(),
                doz.p(),
                std::ptr::null(),
                &mut act,
            )
        };
        assert_eq!(st, XOPS_OK, "{}", last_error());
        assert_eq!(act, 0);
        let rust = Wna16Weight::from_gptq(
            &TensorView::new(&qweight, &[k / 8, n]).unwrap(),
            &TensorView::new(&qzeros, &[groups, n / 8]).unwrap(),
            &TensorView::new(&scales, &[groups, n]).unwrap(),
            None,
            bits,
            GptqFormat::V1,
        )
        .unwrap();
        assert_eq!(
            oq,
            (0..n * rb)
                .map(|i| rust.qweight().get_bits(&[i / rb, i % rb]) as u8)
                .collect::<Vec<_>>()
        );
        let mut x: Vec<f32> = vals(2 * k, 4);
        let mut out = vec![0f32; 2 * n];
        let (dx, dout) = (
            Dl::new(&mut x, DType::F32, &[2, k], None),
            Dl::new(&mut out, DType::F32, &[2, n], None),
        );
        let st = unsafe {
            xops_wna16_linear(
                dx.p(),
                doq.p(),
                dos.p(),
                doz.p(),
                std::ptr::null(),
                std::ptr::null(),
                dout.p(),
                bits,
            )
        };
        assert_eq!(st, XOPS_OK, "{}", last_error());
        let mut want = vec![0f32; 2 * n];
        let z = rust.zeros();
        xops::wna16_linear(
            &TensorView::new(&x, &[2, k]).unwrap(),
            &rust.qweight(),
            &rust.scales(),
            z.as_ref(),
            None,
            None,
            &mut TensorViewMut::new(&mut want, &[2, n]).unwrap(),
            bits,
        )
        .unwrap();
        assert_eq!(out, want);
        // Missing zeros output for a weight with zero points: named error.
        let st = unsafe {
            xops_gptq_to_wna16(
                dq.p(),
                dz.p(),
                ds.p(),
                std::ptr::null(),
                bits,
                1,
                doq.p(),
                dos.p(),
                std::ptr::null(),
                std::ptr::null(),
                &mut act,
            )
        };
        assert_eq!(st, XOPS_ERR_INVALID_ARGUMENT, "{}", last_error());
        assert!(last_error().contains("`zeros`"), "{}", last_error());
    }

    #[test]
    fn int8_quant_and_mm_match_rust() {
        let (m, n, k) = (4usize, 24usize, 96usize);
        let mut x = vals(m * k, 5);
        let mut q = vec![0i8; m * k];
        let mut s = vec![0f32; m];
        let mut z = vec![0i32; m];
        let (dx, dq, ds, dz) = (
            Dl::new(&mut x, DType::F32, &[m, k], None),
            Dl::new(&mut q, DType::I8, &[m, k], None),
            Dl::new(&mut s, DType::F32, &[m, 1], None),
            Dl::new(&mut z, DType::I32, &[m, 1], None),
        );
        assert_eq!(
            unsafe { xops_dynamic_scaled_int8_quant(dq.p(), dx.p(), ds.p(), dz.p()) },
            XOPS_OK,
            "{}",
            last_error()
        );
        let mut bt: Vec<i8> = (0..n * k).map(|i| (i * 37 % 255) as i32 as i8).collect();
        let mut sb: Vec<f32> = (0..n).map(|i| 0.01 + i as f32 * 1e-4).collect();
        let mut adj: Vec<i32> = (0..n)
            .map(|j| bt[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum())
            .collect();
        let mut out = vec![0f32; m * n];
        let (db, dsb, dadj, dout) = (
            Dl::new(&mut bt, DType::I8, &[k, n], Some(&[1, k])),
            Dl::new(&mut sb, DType::F32, &[n], None),
            Dl::new(&mut adj, DType::I32, &[n], None),
            Dl::new(&mut out, DType::F32, &[m, n], None),
        );
        let st = unsafe {
            xops_int8_scaled_mm_azp(
                dout.p(),
                dq.p(),
                db.p(),
                ds.p(),
                dsb.p(),
                dadj.p(),
                dz.p(),
                std::ptr::null(),
            )
        };
        assert_eq!(st, XOPS_OK, "{}", last_error());
        let mut want = vec![0f32; m * n];
        xops::int8_scaled_mm_azp(
            &mut TensorViewMut::new(&mut want, &[m, n]).unwrap(),
            &TensorView::new(&q, &[m, k]).unwrap(),
            &TensorView::strided(&bt, &[k, n], &[1, k]).unwrap(),
            &TensorView::new(&s, &[m]).unwrap(),
            &TensorView::new(&sb, &[n]).unwrap(),
            &TensorView::new(&adj, &[n]).unwrap(),
            Some(&TensorView::new(&z, &[m]).unwrap()),
            None,
        )
        .unwrap();
        assert_eq!(out, want);
        let st: xops_status = unsafe {
            xops_int8_scaled_mm(dout.p(), dq.p(), dx.p(), ds.p(), dsb.p(), std::ptr::null())
        };
        assert_eq!(st, XOPS_ERR_DTYPE_MISMATCH, "{}", last_error());
    }
}
