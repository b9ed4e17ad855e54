//! Library-wide calls: version, last error, ISA tier, thread count.

use std::ffi::{c_char, c_int, CStr};

use xops::{Error, Isa, Status};

use crate::call::{c_str, ffi_call, ffi_value, last_error_ptr};
use crate::status::xops_status;

/// The message of the last failed xpu-ops call on the calling thread ("" if
/// the last call succeeded or none was made). The pointer stays valid until
/// the next xpu-ops call on this thread; copy the text to keep it.
#[no_mangle]
pub extern "C" fn xops_last_error() -> *const c_char {
    last_error_ptr()
}

/// The library's version, "MAJOR.MINOR.PATCH" (static storage). Compare with
/// `XPU_OPS_VERSION` to detect a header/library mismatch.
#[no_mangle]
pub extern "C" fn xops_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

fn isa_c_name(isa: Isa) -> &'static CStr {
    match isa {
        Isa::Generic => c"generic",
        Isa::Neon => c"neon",
        Isa::Avx2 => c"avx2",
        Isa::Avx512 => c"avx512",
        Isa::Amx => c"amx",
    }
}

/// The name of the kernel tier calls from this process run: "amx",
/// "avx512", "avx2", "neon" or "generic" (static storage).
#[no_mangle]
pub extern "C" fn xops_isa() -> *const c_char {
    ffi_value("xops_isa", c"unknown".as_ptr(), || {
        isa_c_name(xops::active_isa()).as_ptr()
    })
}

/// Forces the kernel tier for the whole process: "generic", "neon", "avx2",
/// "avx512", "amx", or "auto" for the best this machine runs (the default, unless the
/// `XPU_OPS_ISA` environment variable chose another at first use).
/// `XOPS_ERR_INVALID_ARGUMENT` for an unknown name, `XOPS_ERR_UNSUPPORTED`
/// for a tier this machine or build cannot run.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn xops_set_isa(name: *const c_char) -> xops_status {
    ffi_call("xops_set_isa", || {
        let name = c_str(name, "name")?;
        let isa = match name {
            "auto" => xops::detected_isa(),
            other => Isa::parse(other).ok_or_else(|| {
                Error::new(
                    Status::InvalidArgument,
                    format!("`name`: unknown ISA tier {other:?}; expected auto, generic, neon, avx2, avx512 or amx"),
                )
            })?,
        };
        xops::set_isa(isa)
    })
}

/// Sets the number of worker threads ops use (default: the
/// `XPU_OPS_NUM_THREADS` environment variable, else the number of CPUs).
/// `XOPS_ERR_INVALID_ARGUMENT` unless `n >= 1`.
#[no_mangle]
pub extern "C" fn xops_set_num_threads(n: c_int) -> xops_status {
    ffi_call("xops_set_num_threads", || {
        if n < 1 {
            return Err(Error::new(
                Status::InvalidArgument,
                format!("`n`: num_threads must be at least 1, got {n}"),
            ));
        }
        xops::set_num_threads(n as usize)
    })
}

/// The number of worker threads ops use (0 if the pool could not start;
/// see `xops_last_error()`).
#[no_mangle]
pub extern "C" fn xops_get_num_threads() -> c_int {
    ffi_value("xops_get_num_threads", 0, || {
        c_int::try_from(xops::num_threads()).unwrap_or(c_int::MAX)
    })
}

/// Runs the node-level alignment report (every op against the reference on
/// every ISA tier, cases whose op name contains `filter`; NULL or "" for all)
/// and writes it as a NUL-terminated JSON array into `buf` when it fits
/// `buf_len` bytes. `*needed` receives the size the report needs (with its
/// NUL); `*failures` the number of rows outside their tolerance. Call with
/// `buf_len = 0` to learn the size. The report is computed on every call.
///
/// # Safety
/// `filter` is NULL or NUL-terminated; `buf` has `buf_len` writable bytes
/// (may be NULL when `buf_len` is 0); `needed` and `failures` are writable.
#[no_mangle]
pub unsafe extern "C" fn xops_align(
    filter: *const c_char,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
    failures: *mut usize,
) -> xops_status {
    ffi_call("xops_align", || {
        let filter = if filter.is_null() {
            ""
        } else {
            c_str(filter, "filter")?
        };
        if needed.is_null() || failures.is_null() || (buf.is_null() && buf_len > 0) {
            return Err(Error::new(
                Status::NullPointer,
                "`needed`, `failures` and (when buf_len > 0) `buf` must not be NULL",
            ));
        }
        let rows = xops::align::run(filter);
        let json = xops::align::format_json(&rows);
        *needed = json.len() + 1;
        *failures = rows.iter().filter(|r| !r.alignment.passes()).count();
        if buf_len > json.len() {
            std::ptr::copy_nonoverlapping(json.as_ptr(), buf as *mut u8, json.len());
            *buf.add(json.len()) = 0;
        }
        Ok(())
    })
}
