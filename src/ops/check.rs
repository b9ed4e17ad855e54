//! Argument checks shared by the launchers. Each returns an [`Error`] whose
//! message names the argument and the offending value.
//!
//! [`Error`]: crate::Error

use crate::dtype::DType;
use crate::error::{bail, Result};
use crate::tensor::{Device, Layout, TensorView};

/// Every tensor must live on a device this build has a backend for. Today
/// that is the CPU; CUDA tensors are refused with the dummy backend's error.
pub(crate) fn on_cpu(tensors: &[(&str, &Layout)]) -> Result<()> {
    for (name, t) in tensors {
        if let Device::Cuda(i) = t.device {
            bail!(
                DeviceUnavailable,
                "`{name}` is on cuda:{i}, but this build of xpu-ops has no CUDA backend"
            );
        }
    }
    Ok(())
}

pub(crate) fn rank(t: &Layout, name: &str, want: usize, what: &str) -> Result<()> {
    if t.ndim() != want {
        bail!(
            ShapeMismatch,
            "`{name}` must be {what} (rank {want}), got shape {:?}",
            t.shape
        );
    }
    Ok(())
}

pub(crate) fn dtype_in(t: &Layout, name: &str, allowed: &[DType]) -> Result<()> {
    if !allowed.contains(&t.dtype) {
        let names: Vec<&str> = allowed.iter().map(|d| d.name()).collect();
        bail!(
            DtypeMismatch,
            "`{name}` has dtype {}, expected one of {}",
            t.dtype,
            names.join(", ")
        );
    }
    Ok(())
}

pub(crate) fn same_dtype(a: &Layout, an: &str, b: &Layout, bn: &str) -> Result<()> {
    if a.dtype != b.dtype {
        bail!(
            DtypeMismatch,
            "`{bn}` has dtype {} but `{an}` has {}",
            b.dtype,
            a.dtype
        );
    }
    Ok(())
}

/// `t.shape[dim] == want`, where `what` names the quantity (e.g. "num_heads").
pub(crate) fn dim(t: &Layout, name: &str, dim: usize, want: usize, what: &str) -> Result<()> {
    if t.shape[dim] != want {
        bail!(
            ShapeMismatch,
            "`{name}` dim {dim} is {} but {what} is {want} (shape {:?})",
            t.shape[dim],
            t.shape
        );
    }
    Ok(())
}

/// The last dimension must have unit stride (size-1 dims are exempt).
pub(crate) fn inner_contiguous(t: &Layout, name: &str) -> Result<()> {
    if let (Some(&n), Some(&s)) = (t.shape.last(), t.strides.last()) {
        if n > 1 && s != 1 {
            bail!(
                InvalidStride,
                "`{name}` must be contiguous in its last dim, got strides {:?}",
                t.strides
            );
        }
    }
    Ok(())
}

/// A rank-1 int32 or int64 index tensor.
pub(crate) fn index_vector(t: &Layout, name: &str) -> Result<()> {
    rank(t, name, 1, "a vector")?;
    dtype_in(t, name, &[DType::I32, DType::I64])
}

/// Byte range `[start, end)` a view reaches.
pub(crate) fn byte_range(ptr: *const u8, t: &Layout) -> (usize, usize) {
    let start = ptr as usize;
    (start, start + t.span() * t.dtype.size())
}

/// The values of a rank-1 integer tensor (checked by [`index_vector`]).
pub(crate) fn vector_values<'t>(t: &'t TensorView) -> impl Iterator<Item = i64> + 't {
    (0..t.shape()[0]).map(move |i| t.get_i64(&[i]))
}

/// The rows of an `[n, 2]` int64/int32 mapping such as `block_mapping`.
pub(crate) fn pairs(t: &TensorView, name: &str) -> Result<Vec<(i64, i64)>> {
    if t.ndim() != 2 || t.shape()[1] != 2 {
        bail!(
            ShapeMismatch,
            "`{name}` must have shape [n, 2], got {:?}",
            t.shape()
        );
    }
    dtype_in(t.layout(), name, &[DType::I32, DType::I64])?;
    Ok((0..t.shape()[0])
        .map(|i| (t.get_i64(&[i, 0]), t.get_i64(&[i, 1])))
        .collect())
}
