//! The error type every op returns, and the status codes the C ABI carries.

use std::fmt;

/// What went wrong, as a stable code. The C ABI returns these numbers
/// (`xops_status`); 0 is success and every error lies above [`Status::BASE`].
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Ok = 0,
    /// An argument is malformed in a way no other code describes.
    InvalidArgument = 1001,
    /// A required pointer or tensor is NULL (C ABI).
    NullPointer = 1002,
    /// A dtype is unsupported for this argument or disagrees with another.
    DtypeMismatch = 1003,
    /// A rank or dimension disagrees with the op's contract.
    ShapeMismatch = 1004,
    /// An index (slot, block id, cache line, token id) lies outside its range.
    IndexOutOfRange = 1005,
    /// A valid request this build does not implement (head size, block size, ...).
    Unsupported = 1006,
    /// A stride pattern the op cannot handle.
    InvalidStride = 1007,
    /// Two arguments share memory in a way the op cannot handle.
    Aliasing = 1008,
    /// A scalar argument or value out of its domain (non-finite scale, NaN row...).
    InvalidValue = 1009,
    /// The tensor lives on a device this build was compiled without.
    DeviceUnavailable = 1010,
    /// An internal invariant broke (a panic caught at the C boundary).
    Internal = 1011,
}

impl Status {
    /// Every error code is greater than this.
    pub const BASE: i32 = 1000;

    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::InvalidArgument => "invalid argument",
            Status::NullPointer => "null pointer",
            Status::DtypeMismatch => "dtype mismatch",
            Status::ShapeMismatch => "shape mismatch",
            Status::IndexOutOfRange => "index out of range",
            Status::Unsupported => "unsupported",
            Status::InvalidStride => "invalid stride",
            Status::Aliasing => "aliasing",
            Status::InvalidValue => "invalid value",
            Status::DeviceUnavailable => "device unavailable",
            Status::Internal => "internal error",
        }
    }
}

/// An op's failure: a [`Status`] and a message naming the argument and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: Status,
    pub message: String,
}

impl Error {
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Error {
            status,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status.name(), self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Returns early with an [`Error`] of the given status and formatted message.
macro_rules! bail {
    ($status:ident, $($fmt:tt)+) => {
        return Err($crate::error::Error::new($crate::error::Status::$status, format!($($fmt)+)))
    };
}
pub(crate) use bail;
