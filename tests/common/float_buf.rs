//! Float buffers of any dtype for the linear tests, and the ulp of a value.

use half::{bf16, f16};
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
