//! Tensor views: a dtype, a shape, strides in elements, a device, and borrowed
//! memory. Views never own data. The safe constructors check that every
//! element the shape and strides reach lies inside the borrowed slice, so ops
//! called on safe views cannot touch memory outside it.

use std::marker::PhantomData;

use crate::dlpack::{DLDevice, DLDeviceType, DLTensor};
use crate::dtype::{load_f32, store_f32, DType, Element};
use crate::error::{bail, Result};

/// Where a tensor's memory lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The metadata shared by shared and mutable views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// In elements; never negative.
    pub strides: Vec<usize>,
    pub device: Device,
}

impl Layout {
    pub fn contiguous(dtype: DType, shape: &[usize]) -> Layout {
        let mut strides = vec![0; shape.len()];
        let mut s = 1;
        for i in (0..shape.len()).rev() {
            strides[i] = s;
            s *= shape[i];
        }
        Layout {
            dtype,
            shape: shape.to_vec(),
            strides,
            device: Device::Cpu,
        }
    }

    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements spanned from the first to one past the last reachable element
    /// (0 for an empty tensor).
    pub fn span(&self) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        1 + self
            .shape
            .iter()
            .zip(&self.strides)
            .map(|(n, s)| (n - 1) * s)
            .sum::<usize>()
    }

    pub fn is_contiguous(&self) -> bool {
        *self
            == Layout {
                device: self.device,
                ..Layout::contiguous(self.dtype, &self.shape)
            }
    }

    /// Element offset of a multi-index. Panics if the index is out of bounds.
    pub fn offset(&self, index: &[usize]) -> usize {
        assert_eq!(index.len(), self.ndim(), "index rank");
        index
            .iter()
            .zip(&self.shape)
            .zip(&self.strides)
            .map(|((&i, &n), &s)| {
                assert!(i < n, "index {i} out of bounds for dim of size {n}");
                i * s
            })
            .sum()
    }

    /// True when the elements of dims `from..` cover one dense range, in any
    /// stride order (a permuted view of a contiguous block is dense).
    pub fn is_dense_from(&self, from: usize) -> bool {
        let mut dims: Vec<(usize, usize)> = self.shape[from..]
            .iter()
            .zip(&self.strides[from..])
            .filter(|(n, _)| **n != 1)
            .map(|(&n, &s)| (s, n))
            .collect();
        dims.sort_unstable();
        let mut expect = 1;
        for (s, n) in dims {
            if s != expect {
                return false;
            }
            expect *= n;
        }
        true
    }

    fn checked(dtype: DType, shape: &[usize], strides: &[usize], len: usize) -> Result<Layout> {
        if shape.len() != strides.len() {
            bail!(
                ShapeMismatch,
                "shape has {} dims but strides has {}",
                shape.len(),
                strides.len()
            );
        }
        Layout {
            dtype,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
            device: Device::Cpu,
        }
        .within(len)
    }

    /// `self` when every reachable element lies below `len`.
    fn within(self, len: usize) -> Result<Layout> {
        let layout = self;
        let (shape, strides) = (&layout.shape, &layout.strides);
        if layout.span() > len {
            bail!(
                ShapeMismatch,
                "shape {shape:?} with strides {strides:?} reaches element {} but the buffer holds {len}",
                layout.span() - 1
            );
        }
        Ok(layout)
    }

    /// Reads a DLPack tensor's metadata.
    ///
    /// # Safety
    /// `shape` (and `strides` unless NULL) must point to `ndim` readable values.
    unsafe fn from_dlpack(t: &DLTensor) -> Result<Layout> {
        let Some(dtype) = DType::from_dlpack(t.dtype) else {
            bail!(
                DtypeMismatch,
                "DLPack dtype (code {}, bits {}, lanes {}) is not supported",
                t.dtype.code,
                t.dtype.bits,
                t.dtype.lanes
            );
        };
        if t.ndim < 0 {
            bail!(ShapeMismatch, "DLPack ndim {} is negative", t.ndim);
        }
        let n = t.ndim as usize;
        if n > 0 && t.shape.is_null() {
            bail!(NullPointer, "DLPack shape is NULL with ndim {n}");
        }
        let raw_shape: &[i64] = if n == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(t.shape, n)
        };
        let mut shape = Vec::with_capacity(n);
        for &d in raw_shape {
            if d < 0 {
                bail!(
                    ShapeMismatch,
                    "DLPack shape {raw_shape:?} has a negative dimension"
                );
            }
            shape.push(d as usize);
        }
        let mut layout = Layout::contiguous(dtype, &shape);
        if !t.strides.is_null() && n > 0 {
            let raw = std::slice::from_raw_parts(t.strides, n);
            for (i, &s) in raw.iter().enumerate() {
                if s < 0 {
                    bail!(
                        InvalidStride,
                        "DLPack strides {raw:?}: negative stride in dim {i}"
                    );
                }
                layout.strides[i] = s as usize;
            }
        }
        layout.device = match t.device.device_type {
            x if x == DLDeviceType::Cpu as i32 || x == DLDeviceType::CudaHost as i32 => Device::Cpu,
            x if x == DLDeviceType::Cuda as i32 => Device::Cuda(t.device.device_id),
            other => bail!(
                DeviceUnavailable,
                "DLPack device type {other} is not supported"
            ),
        };
        Ok(layout)
    }
}

macro_rules! view_accessors {
    () => {
        pub fn layout(&self) -> &Layout {
            &self.layout
        }
        pub fn dtype(&self) -> DType {
            self.layout.dtype
        }
        pub fn shape(&self) -> &[usize] {
            &self.layout.shape
        }
        pub fn strides(&self) -> &[usize] {
            &self.layout.strides
        }
        pub fn ndim(&self) -> usize {
            self.layout.ndim()
        }
        pub fn numel(&self) -> usize {
            self.layout.numel()
        }
        pub fn device(&self) -> Device {
            self.layout.device
        }
        pub fn is_contiguous(&self) -> bool {
            self.layout.is_contiguous()
        }
        /// Address of element 0.
        pub fn as_ptr(&self) -> *const u8 {
            self.ptr as *const u8
        }
        /// Bits of the element at `index` (low `dtype.size()` bytes). Panics out of bounds.
        pub fn get_bits(&self, index: &[usize]) -> u64 {
            let size = self.dtype().size();
            let off = self.layout.offset(index) * size;
            let mut buf = [0u8; 8];
            // SAFETY: the constructor checked that every in-bounds index lies inside the buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (self.ptr as *const u8).add(off),
                    buf.as_mut_ptr(),
                    size,
                )
            };
            u64::from_le_bytes(buf)
        }
        /// Value at `index` of a floating tensor, as f32.
        pub fn get_f32(&self, index: &[usize]) -> f32 {
            load_f32(self.get_bits(index) as u32, self.dtype())
        }
        /// Value at `index` of an integer or bool tensor, sign-extended.
        pub fn get_i64(&self, index: &[usize]) -> i64 {
            let b = self.get_bits(index);
            match self.dtype() {
                DType::I8 => b as u8 as i8 as i64,
                DType::I32 => b as u32 as i32 as i64,
                DType::I64 => b as i64,
                DType::U8 | DType::Bool => b as i64,
                other => panic!("get_i64 on a {other} tensor"),
            }
        }
    };
}

/// A shared view of tensor memory.
#[derive(Debug, Clone)]
pub struct TensorView<'a> {
    ptr: *const u8,
    layout: Layout,
    _borrow: PhantomData<&'a [u8]>,
}

/// An exclusive view of tensor memory, for outputs and in-place arguments.
#[derive(Debug)]
pub struct TensorViewMut<'a> {
    ptr: *mut u8,
    layout: Layout,
    _borrow: PhantomData<&'a mut [u8]>,
}

// SAFETY: views are plain borrows of memory; the borrow rules of the slices
// they were made from (or the caller of the unsafe constructors) govern access.
unsafe impl Send for TensorView<'_> {}
unsafe impl Sync for TensorView<'_> {}
unsafe impl Send for TensorViewMut<'_> {}

impl<'a> TensorView<'a> {
    /// A contiguous row-major view of `data`.
    pub fn new<T: Element>(data: &'a [T], shape: &[usize]) -> Result<Self> {
        // One layout built and checked (a decode-sized op call makes several
        // views: their allocations were a visible part of it).
        let layout = Layout::contiguous(T::DTYPE, shape).within(data.len())?;
        Ok(TensorView {
            ptr: data.as_ptr() as *const u8,
            layout,
            _borrow: PhantomData,
        })
    }

    /// A view of `data` with explicit element strides.
    pub fn strided<T: Element>(data: &'a [T], shape: &[usize], strides: &[usize]) -> Result<Self> {
        let layout = Layout::checked(T::DTYPE, shape, strides, data.len())?;
        Ok(TensorView {
            ptr: data.as_ptr() as *const u8,
            layout,
            _borrow: PhantomData,
        })
    }

    /// A view of raw bytes as `dtype` (fp8 caches stored as `u8`, bool masks...).
    pub fn from_bytes(
        data: &'a [u8],
        dtype: DType,
        shape: &[usize],
        strides: Option<&[usize]>,
    ) -> Result<Self> {
        if data.as_ptr() as usize % dtype.size() != 0 && shape.iter().product::<usize>() > 0 {
            bail!(InvalidArgument, "buffer is not aligned for {dtype}");
        }
        let len = data.len() / dtype.size();
        let layout = match strides {
            Some(strides) => Layout::checked(dtype, shape, strides, len)?,
            None => Layout::contiguous(dtype, shape).within(len)?,
        };
        Ok(TensorView {
            ptr: data.as_ptr(),
            layout,
            _borrow: PhantomData,
        })
    }

    /// A view of raw memory.
    ///
    /// # Safety
    /// Every element reachable through `layout` must be readable for `'a`.
    pub unsafe fn from_raw(ptr: *const u8, layout: Layout) -> Self {
        TensorView {
            ptr,
            layout,
            _borrow: PhantomData,
        }
    }

    /// A view of a DLPack tensor.
    ///
    /// # Safety
    /// `t` must describe memory readable for `'a`, with valid shape/strides arrays.
    pub unsafe fn from_dlpack(t: &DLTensor) -> Result<Self> {
        let layout = Layout::from_dlpack(t)?;
        if t.data.is_null() && layout.numel() > 0 {
            bail!(
                NullPointer,
                "DLPack data is NULL for a tensor of {} elements",
                layout.numel()
            );
        }
        let ptr = (t.data as *const u8).wrapping_add(t.byte_offset as usize);
        Ok(TensorView {
            ptr,
            layout,
            _borrow: PhantomData,
        })
    }

    /// This view as a DLPack tensor borrowing the view's metadata.
    pub fn to_dlpack(&self) -> DLPackTensor<'_> {
        DLPackTensor::new(self.ptr as *mut u8, &self.layout)
    }

    view_accessors!();
}

impl<'a> TensorViewMut<'a> {
    /// A contiguous row-major mutable view of `data`.
    pub fn new<T: Element>(data: &'a mut [T], shape: &[usize]) -> Result<Self> {
        let layout = Layout::contiguous(T::DTYPE, shape).within(data.len())?;
        Ok(TensorViewMut {
            ptr: data.as_mut_ptr() as *mut u8,
            layout,
            _borrow: PhantomData,
        })
    }

    /// A mutable view of `data` with explicit element strides.
    pub fn strided<T: Element>(
        data: &'a mut [T],
        shape: &[usize],
        strides: &[usize],
    ) -> Result<Self> {
        let layout = Layout::checked(T::DTYPE, shape, strides, data.len())?;
        Ok(TensorViewMut {
            ptr: data.as_mut_ptr() as *mut u8,
            layout,
            _borrow: PhantomData,
        })
    }

    /// A mutable view of raw bytes as `dtype`.
    pub fn from_bytes(
        data: &'a mut [u8],
        dtype: DType,
        shape: &[usize],
        strides: Option<&[usize]>,
    ) -> Result<Self> {
        if data.as_ptr() as usize % dtype.size() != 0 && shape.iter().product::<usize>() > 0 {
            bail!(InvalidArgument, "buffer is not aligned for {dtype}");
        }
        let len = data.len() / dtype.size();
        let layout = match strides {
            Some(strides) => Layout::checked(dtype, shape, strides, len)?,
            None => Layout::contiguous(dtype, shape).within(len)?,
        };
        Ok(TensorViewMut {
            ptr: data.as_mut_ptr(),
            layout,
            _borrow: PhantomData,
        })
    }

    /// A mutable view of raw memory.
    ///
    /// # Safety
    /// Every element reachable through `layout` must be writable for `'a`, and
    /// not accessed through other references while the view is used.
    pub unsafe fn from_raw(ptr: *mut u8, layout: Layout) -> Self {
        TensorViewMut {
            ptr,
            layout,
            _borrow: PhantomData,
        }
    }

    /// A mutable view of a DLPack tensor.
    ///
    /// # Safety
    /// As [`TensorView::from_dlpack`], and the memory must be writable.
    pub unsafe fn from_dlpack(t: &DLTensor) -> Result<Self> {
        let v = TensorView::from_dlpack(t)?;
        Ok(TensorViewMut {
            ptr: v.ptr as *mut u8,
            layout: v.layout,
            _borrow: PhantomData,
        })
    }

    /// A shared view of the same memory, for as long as this borrow lasts.
    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            ptr: self.ptr,
            layout: self.layout.clone(),
            _borrow: PhantomData,
        }
    }

    /// A shorter-lived mutable view of the same memory.
    pub fn reborrow(&mut self) -> TensorViewMut<'_> {
        TensorViewMut {
            ptr: self.ptr,
            layout: self.layout.clone(),
            _borrow: PhantomData,
        }
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    /// This view as a DLPack tensor borrowing the view's metadata.
    pub fn to_dlpack(&mut self) -> DLPackTensor<'_> {
        DLPackTensor::new(self.ptr, &self.layout)
    }

    /// Writes raw bits (low `dtype.size()` bytes) at `index`. Panics out of bounds.
    pub fn set_bits(&mut self, index: &[usize], bits: u64) {
        let size = self.dtype().size();
        let off = self.layout.offset(index) * size;
        // SAFETY: the constructor checked that every in-bounds index lies inside the buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(bits.to_le_bytes().as_ptr(), self.ptr.add(off), size)
        };
    }

    /// Stores `v` at `index`, rounded to the tensor's floating dtype.
    pub fn set_f32(&mut self, index: &[usize], v: f32) {
        self.set_bits(index, store_f32(v, self.dtype()) as u64);
    }

    view_accessors!();
}

/// A `DLTensor` whose shape and strides arrays live as long as this value.
pub struct DLPackTensor<'a> {
    tensor: DLTensor,
    _shape: Box<[i64]>,
    _strides: Box<[i64]>,
    _borrow: PhantomData<&'a ()>,
}

impl DLPackTensor<'_> {
    fn new(ptr: *mut u8, layout: &Layout) -> Self {
        let mut shape: Box<[i64]> = layout.shape.iter().map(|&d| d as i64).collect();
        let mut strides: Box<[i64]> = layout.strides.iter().map(|&s| s as i64).collect();
        let device = match layout.device {
            Device::Cpu => DLDevice {
                device_type: DLDeviceType::Cpu as i32,
                device_id: 0,
            },
            Device::Cuda(i) => DLDevice {
                device_type: DLDeviceType::Cuda as i32,
                device_id: i,
            },
        };
        let tensor = DLTensor {
            data: ptr as *mut std::ffi::c_void,
            device,
            ndim: layout.ndim() as i32,
            dtype: layout.dtype.to_dlpack(),
            shape: shape.as_mut_ptr(),
            strides: strides.as_mut_ptr(),
            byte_offset: 0,
        };
        DLPackTensor {
            tensor,
            _shape: shape,
            _strides: strides,
            _borrow: PhantomData,
        }
    }

    pub fn as_dltensor(&self) -> &DLTensor {
        &self.tensor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_views_are_bounds_checked() {
        let data = [0f32; 12];
        assert!(TensorView::strided(&data, &[3, 4], &[4, 1]).is_ok());
        assert!(TensorView::strided(&data, &[3, 4], &[5, 1]).is_err());
        assert!(TensorView::strided(&data, &[0, 4], &[100, 1]).is_ok());
    }

    #[test]
    fn dlpack_round_trip() {
        let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let v = TensorView::strided(&data, &[2, 3, 4], &[1, 8, 2]).unwrap();
        let dl = v.to_dlpack();
        let back = unsafe { TensorView::from_dlpack(dl.as_dltensor()) }.unwrap();
        assert_eq!(back.layout(), v.layout());
        assert_eq!(back.get_f32(&[1, 2, 3]), v.get_f32(&[1, 2, 3]));
    }

    #[test]
    fn dense_detection_accepts_permutations() {
        let l = Layout {
            strides: vec![64, 4, 16, 1],
            ..Layout::contiguous(DType::F32, &[3, 4, 4, 4])
        };
        assert!(l.is_dense_from(1));
        let gap = Layout {
            strides: vec![64, 8, 32, 1],
            ..Layout::contiguous(DType::F32, &[3, 4, 4, 4])
        };
        assert!(!gap.is_dense_from(1));
    }
}
