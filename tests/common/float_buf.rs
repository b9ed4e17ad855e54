//! Float buffers of any dtype for the linear tests, the ulp of a value, and
//! the linear tests' reference and tolerance.

use half::{bf16, f16};
use xpu_ops::reference::linear as rl;
use xpu_ops::{DType, TensorView, TensorViewMut};

/// A buffer of f32, f16 or bf16 values.
#[derive(Clone, Debug)]
pub enum Buf {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Buf {
    pub fn from_f32(dtype: DType, v: &[f32]) -> Buf {
        match dtype {
            DType::F32 => Buf::F32(v.to_vec()),
            DType::F16 => Buf::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => Buf::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            other => panic!("no float buffer of {other}"),
        }
    }
    pub fn zeros(dtype: DType, n: usize) -> Buf {
        Buf::from_f32(dtype, &vec![0.0; n])
    }
    pub fn filled(dtype: DType, n: usize, v: f32) -> Buf {
        Buf::from_f32(dtype, &vec![v; n])
    }
    pub fn view(&self, shape: &[usize], strides: &[usize]) -> TensorView<'_> {
        match self {
            Buf::F32(v) => TensorView::strided(v, shape, strides),
            Buf::F16(v) => TensorView::strided(v, shape, strides),
            Buf::BF16(v) => TensorView::strided(v, shape, strides),
        }
        .expect("valid test view")
    }
    pub fn view_mut(&mut self, shape: &[usize], strides: &[usize]) -> TensorViewMut<'_> {
        match self {
            Buf::F32(v) => TensorViewMut::strided(v, shape, strides),
            Buf::F16(v) => TensorViewMut::strided(v, shape, strides),
            Buf::BF16(v) => TensorViewMut::strided(v, shape, strides),
        }
        .expect("valid test view")
    }
    /// Elements `r` as a buffer of their own.
    pub fn slice(&self, r: std::ops::Range<usize>) -> Buf {
        match self {
            Buf::F32(v) => Buf::F32(v[r].to_vec()),
            Buf::F16(v) => Buf::F16(v[r].to_vec()),
            Buf::BF16(v) => Buf::BF16(v[r].to_vec()),
        }
    }
    pub fn bits(&self) -> Vec<u32> {
        match self {
            Buf::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            Buf::F16(v) => v.iter().map(|x| x.to_bits() as u32).collect(),
            Buf::BF16(v) => v.iter().map(|x| x.to_bits() as u32).collect(),
        }
    }
}

/// One unit in the last place of `v` in `dtype` (with the subnormal floor).
pub fn ulp(dtype: DType, v: f64) -> f64 {
    let (mant, min_exp) = match dtype {
        DType::F32 => (23, -126),
        DType::F16 => (10, -14),
        DType::BF16 => (7, -126),
        _ => unreachable!(),
    };
    let e = if v == 0.0 {
        min_exp
    } else {
        (v.abs().log2().floor() as i32).max(min_exp)
    };
    2f64.powi(e - mant)
}

/// F.linear of 2-D `x` in fp64 (`reference::linear`) and, per output,
/// sum_k |x w|: the scale of an fp32 accumulation's rounding error.
pub fn linear_reference(
    x: &TensorView,
    w: &TensorView,
    b: Option<&TensorView>,
) -> (Vec<f64>, Vec<f64>) {
    let (m, k, n) = (x.shape()[0], x.shape()[1], w.shape()[0]);
    let r = rl::linear(x, w, b);
    let absd = rl::abs_dot(
        m,
        n,
        k,
        |i, kk| x.get_f32(&[i, kk]) as f64,
        |j, kk| w.get_f32(&[j, kk]) as f64,
    );
    (r, absd)
}

/// The linear tests' tolerance for an output with reference `r` and
/// sum_k |x w| = `absd`: 4 sqrt(k) fp32 roundings of the products' scale
/// plus one ulp of the output dtype.
pub fn linear_tol(k: usize, absd: f64, dtype: DType, r: f64) -> f64 {
    4.0 * (k as f64).sqrt() * 2f64.powi(-24) * absd + ulp(dtype, r)
}

/// Every out[i][j] (a 2-D view, or 1-D for m = 1) within [`linear_tol`] of
/// the reference.
pub fn assert_linear_close(
    out: &TensorView,
    ref_: &[f64],
    absd: &[f64],
    m: usize,
    n: usize,
    k: usize,
    what: &str,
) {
    for i in 0..m {
        for j in 0..n {
            let y = if out.ndim() == 2 {
                out.get_f32(&[i, j])
            } else {
                out.get_f32(&[j])
            } as f64;
            let r = ref_[i * n + j];
            let tol = linear_tol(k, absd[i * n + j], out.dtype(), r);
            assert!(
                (y - r).abs() <= tol,
                "{what}: out[{i}][{j}] = {y}, reference {r}, |diff| {} > tol {tol}",
                (y - r).abs()
            );
        }
    }
}

/// The row padding of an m x n output with row stride `os` (columns n..os)
/// still holds `fill`, the value the test wrote before the call.
pub fn assert_padding_untouched(out: &Buf, m: usize, n: usize, os: usize, fill: f32, what: &str) {
    let flat = out.view(&[m * os], &[1]);
    for i in 0..m {
        for p in n..os {
            let v = flat.get_f32(&[i * os + p]);
            assert_eq!(v, fill, "{what}: out padding [{i}][{p}] written");
        }
    }
}
