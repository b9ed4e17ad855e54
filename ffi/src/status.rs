//! `xops_status`: the result of every C ABI call.

use xops::Status;

/// The result of an xpu-ops call: `XOPS_OK` (0) or an error code above 1000
/// (the same numbers as the Rust `xpu_ops::Status`). On error,
/// `xops_last_error()` returns a message naming the argument and the value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum xops_status {
    /// Success.
    XOPS_OK = 0,
    /// An argument is malformed in a way no other code describes
    /// (unknown `kv_cache_dtype`, unknown ISA name, ...).
    XOPS_ERR_INVALID_ARGUMENT = 1001,
    /// A required pointer or tensor is NULL.
    XOPS_ERR_NULL_POINTER = 1002,
    /// A dtype is unsupported for this argument or disagrees with another.
    XOPS_ERR_DTYPE_MISMATCH = 1003,
    /// A rank or dimension disagrees with the op's contract.
    XOPS_ERR_SHAPE_MISMATCH = 1004,
    /// An index (slot, block id, ...) lies outside its range.
    XOPS_ERR_INDEX_OUT_OF_RANGE = 1005,
    /// A valid request this build does not implement (or an ISA tier this
    /// machine cannot run).
    XOPS_ERR_UNSUPPORTED = 1006,
    /// A stride pattern the op cannot handle.
    XOPS_ERR_INVALID_STRIDE = 1007,
    /// Two arguments share memory in a way the op cannot handle.
    XOPS_ERR_ALIASING = 1008,
    /// A scalar argument or value out of its domain (non-finite fp8 scale, ...).
    XOPS_ERR_INVALID_VALUE = 1009,
    /// The tensor lives on a device this build was compiled without.
    XOPS_ERR_DEVICE_UNAVAILABLE = 1010,
    /// An internal invariant broke (a panic caught at the C boundary).
    XOPS_ERR_INTERNAL = 1011,
}

impl From<Status> for xops_status {
    /// Exhaustive on purpose: a new `Status` fails to compile until it has a code here.
    fn from(s: Status) -> Self {
        use xops_status::*;
        match s {
            Status::Ok => XOPS_OK,
            Status::InvalidArgument => XOPS_ERR_INVALID_ARGUMENT,
            Status::NullPointer => XOPS_ERR_NULL_POINTER,
            Status::DtypeMismatch => XOPS_ERR_DTYPE_MISMATCH,
            Status::ShapeMismatch => XOPS_ERR_SHAPE_MISMATCH,
            Status::IndexOutOfRange => XOPS_ERR_INDEX_OUT_OF_RANGE,
            Status::Unsupported => XOPS_ERR_UNSUPPORTED,
            Status::InvalidStride => XOPS_ERR_INVALID_STRIDE,
            Status::Aliasing => XOPS_ERR_ALIASING,
            Status::InvalidValue => XOPS_ERR_INVALID_VALUE,
            Status::DeviceUnavailable => XOPS_ERR_DEVICE_UNAVAILABLE,
            Status::Internal => XOPS_ERR_INTERNAL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Status; 12] = [
        Status::Ok,
        Status::InvalidArgument,
        Status::NullPointer,
        Status::DtypeMismatch,
        Status::ShapeMismatch,
        Status::IndexOutOfRange,
        Status::Unsupported,
        Status::InvalidStride,
        Status::Aliasing,
        Status::InvalidValue,
        Status::DeviceUnavailable,
        Status::Internal,
    ];

    #[test]
    fn codes_equal_the_rust_status_numbers() {
        for s in ALL {
            assert_eq!(xops_status::from(s) as i32, s as i32, "{s:?}");
            if s != Status::Ok {
                assert!(s as i32 > Status::BASE);
            }
        }
        assert_eq!(xops_status::XOPS_OK as i32, 0);
    }

    #[test]
    fn codes_are_distinct() {
        let mut codes: Vec<i32> = ALL.iter().map(|&s| xops_status::from(s) as i32).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ALL.len());
    }
}
