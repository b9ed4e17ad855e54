//! DLPack's C structs (v0.8+/1.x ABI of `DLTensor`), so tensors cross the C
//! ABI without copies. Layouts must match `dlpack.h`; the header in
//! `include/` declares the same structs unless the caller's `dlpack.h` did.

use std::ffi::c_void;

/// `DLDeviceType` values this library knows.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DLDeviceType {
    Cpu = 1,
    Cuda = 2,
    CudaHost = 3,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLDevice {
    pub device_type: i32,
    pub device_id: i32,
}

/// `DLDataTypeCode` values this library knows (DLPack 1.1 numbering).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DLDataTypeCode {
    Int = 0,
    UInt = 1,
    Float = 2,
    Bfloat = 4,
    Bool = 6,
    Float8E4M3FN = 10,
    Float8E5M2 = 12,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLDataType {
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
}

/// A borrowed tensor: `strides` (in elements) may be NULL for a contiguous
/// row-major tensor; `byte_offset` is added to `data`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DLTensor {
    pub data: *mut c_void,
    pub device: DLDevice,
    pub ndim: i32,
    pub dtype: DLDataType,
    pub shape: *mut i64,
    pub strides: *mut i64,
    pub byte_offset: u64,
}
