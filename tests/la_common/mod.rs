//! Test helpers for the linear-attention families (conv, GDN): dtype-erased
//! strided buffers and tolerance checks.
#![allow(dead_code)]

use xpu_ops::{DType, Status, TensorView, TensorViewMut};

use crate::common::Rng;

/// A tensor of any dtype in 8-byte-aligned storage with explicit strides.
#[derive(Clone, Debug)]
pub struct Buf {
    words: Vec<u64>,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

/// Calls `f` with every multi-index of `shape`, row-major.
pub fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    let n: usize = shape.iter().product();
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        f(&idx);
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

/// Row-major multi-indices of a shape.
pub fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        out.push(idx.clone());
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

impl Buf {
    /// `order` lists the dims from outermost to innermost in memory; `pad`
    /// extra elements are left between consecutive entries of the outermost dim.
    pub fn with_order(dtype: DType, shape: &[usize], order: &[usize], pad: usize) -> Buf {
        assert_eq!(order.len(), shape.len());
        let mut strides = vec![0; shape.len()];
        let mut s = 1;
        for (i, &d) in order.iter().enumerate().rev() {
            strides[d] = s;
            s *= shape[d].max(1);
            if i == 1 {
                s += pad;
            }
        }
        let span = if shape.iter().product::<usize>() == 0 {
            0
        } else {
            1 + shape
                .iter()
                .zip(&strides)
                .map(|(n, s)| (n - 1) * s)
                .sum::<usize>()
        };
        let bytes = span * dtype.size();
        Buf {
            words: vec![0; bytes.div_ceil(8) + 1],
            dtype,
            shape: shape.to_vec(),
            strides,
        }
    }

    pub fn contiguous(dtype: DType, shape: &[usize]) -> Buf {
        let order: Vec<usize> = (0..shape.len()).collect();
        Buf::with_order(dtype, shape, &order, 0)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: u64 storage reinterpreted as bytes.
        unsafe {
            std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.words.len() * 8)
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above.
        unsafe {
            std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, self.words.len() * 8)
        }
    }

    pub fn view(&self) -> TensorView<'_> {
        let (dtype, shape, strides) = (self.dtype, self.shape.clone(), self.strides.clone());
        TensorView::from_bytes(self.bytes(), dtype, &shape, Some(&strides)).expect("valid view")
    }

    pub fn view_mut(&mut self) -> TensorViewMut<'_> {
        let (dtype, shape, strides) = (self.dtype, self.shape.clone(), self.strides.clone());
        TensorViewMut::from_bytes(self.bytes_mut(), dtype, &shape, Some(&strides))
            .expect("valid view")
    }

    /// Uniform values in [-scale, scale), rounded to the dtype; the whole
    /// storage (gaps included) is first filled with a recognisable pattern.
    pub fn random(mut self, rng: &mut Rng, scale: f32) -> Buf {
        for w in self.words.iter_mut() {
            *w = 0x7a7a_7a7a_7a7a_7a7a ^ rng.next_u64() & 0x0101_0101_0101_0101;
        }
        let shape = self.shape.clone();
        let mut v = self.view_mut();
        for_each_index(&shape, |i| v.set_f32(i, rng.uniform() * scale));
        self
    }

    pub fn fill_with(mut self, f: impl Fn(&[usize]) -> f32) -> Buf {
        let shape = self.shape.clone();
        let mut v = self.view_mut();
        for_each_index(&shape, |i| v.set_f32(i, f(i)));
        self
    }

    pub fn get(&self, i: &[usize]) -> f32 {
        self.view().get_f32(i)
    }

    pub fn values(&self) -> Vec<f32> {
        let v = self.view();
        let mut out = Vec::with_capacity(self.shape.iter().product());
        for_each_index(&self.shape, |i| out.push(v.get_f32(i)));
        out
    }

    /// Raw storage, for bit-exact comparisons (gaps included).
    pub fn raw(&self) -> &[u64] {
        &self.words
    }
}

/// An int32 vector.
pub fn ivec(v: &[i32]) -> Vec<i32> {
    v.to_vec()
}

/// One ulp-ish relative tolerance of a dtype's rounding.
pub fn rtol(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 2e-6,
        DType::F16 => 1.0 / 1024.0,
        _ => 1.0 / 128.0,
    }
}

/// Asserts |got - want| <= atol + rtol * |want| elementwise.
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || (g - w).abs() <= atol + rtol * w.abs();
        assert!(
            ok,
            "{what}[{i}]: got {g}, want {w} (atol {atol}, rtol {rtol})"
        );
    }
}

/// fla's alignment metric: rmse(a - b) / rms(b).
pub fn rel_rmse(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

/// Asserts an op failed with `status` and a message mentioning `needle`.
pub fn assert_err(r: xpu_ops::Result<()>, status: Status, needle: &str) {
    match r {
        Ok(()) => panic!("expected {status:?} mentioning {needle:?}, got Ok"),
        Err(e) => {
            assert_eq!(e.status, status, "wrong status; message: {}", e.message);
            assert!(
                e.message.contains(needle),
                "message {:?} does not mention {needle:?}",
                e.message
            );
        }
    }
}
