//! The wrapper every export runs in, the thread's last error, and the
//! conversions from C arguments (DLTensor pointers, C strings) to the Rust API.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use xops::dlpack::DLTensor;
use xops::{Error, Result, Status, TensorView, TensorViewMut};

use crate::status::xops_status;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // Interior NULs would truncate the C string; show them instead.
    let c = CString::new(message.replace('\0', "\\0")).expect("NULs were replaced");
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The calling thread's last error message as a C string ("" after a success).
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

/// Runs `body` for the export `name`, catching a panic: the one wrapper every
/// export goes through. A panic becomes an `Internal` error.
fn guard<T>(name: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(payload) => Err(Error::new(
            Status::Internal,
            format!(
                "{name} panicked: {} (please report this as a bug)",
                panic_message(payload.as_ref())
            ),
        )),
    }
}

/// Runs the body of the status-returning export `name`: a panic becomes
/// `XOPS_ERR_INTERNAL`, an error its status, and the thread's last error is
/// set to the message (cleared on success).
pub fn ffi_call(name: &str, body: impl FnOnce() -> Result<()>) -> xops_status {
    match guard(name, body) {
        Ok(()) => {
            set_last_error("");
            xops_status::XOPS_OK
        }
        Err(e) => {
            set_last_error(&e.to_string());
            e.status.into()
        }
    }
}

/// Runs the body of a value-returning export `name` (a getter that cannot
/// fail): a panic sets the last error and returns `fallback`. The last error
/// is otherwise left alone.
pub fn ffi_value<T>(name: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    guard(name, || Ok(body())).unwrap_or_else(|e| {
        set_last_error(&e.to_string());
        fallback
    })
}

/// Prefixes an error's message with the argument it concerns.
fn about(name: &str) -> impl FnOnce(Error) -> Error + '_ {
    move |e| Error::new(e.status, format!("`{name}`: {}", e.message))
}

fn null(name: &str) -> Error {
    Error::new(Status::NullPointer, format!("`{name}` is NULL"))
}

/// A required input tensor.
///
/// # Safety
/// `t` is NULL or points to a valid `DLTensor` whose memory stays readable for `'a`.
pub(crate) unsafe fn tensor<'a>(t: *const DLTensor, name: &str) -> Result<TensorView<'a>> {
    let t = t.as_ref().ok_or_else(|| null(name))?;
    TensorView::from_dlpack(t).map_err(about(name))
}

/// An optional input tensor: NULL is `None`.
///
/// # Safety
/// As [`tensor`].
pub(crate) unsafe fn opt_tensor<'a>(
    t: *const DLTensor,
    name: &str,
) -> Result<Option<TensorView<'a>>> {
    if t.is_null() {
        return Ok(None);
    }
    tensor(t, name).map(Some)
}

/// A required output (or in-place) tensor.
///
/// # Safety
/// `t` is NULL or points to a valid `DLTensor` whose memory stays writable for
/// `'a` and is not accessed elsewhere meanwhile.
pub(crate) unsafe fn tensor_mut<'a>(t: *const DLTensor, name: &str) -> Result<TensorViewMut<'a>> {
    let t = t.as_ref().ok_or_else(|| null(name))?;
    TensorViewMut::from_dlpack(t).map_err(about(name))
}

/// A C array of `n` tensor pointers, each required and writable; elements are
/// named `name[i]`.
///
/// # Safety
/// `ts` is NULL or points to `n` readable pointers, each as in [`tensor_mut`].
pub(crate) unsafe fn tensors_mut<'a>(
    ts: *const *const DLTensor,
    n: usize,
    name: &str,
) -> Result<Vec<TensorViewMut<'a>>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if ts.is_null() {
        return Err(null(name));
    }
    std::slice::from_raw_parts(ts, n)
        .iter()
        .enumerate()
        .map(|(i, &t)| tensor_mut(t, &format!("{name}[{i}]")))
        .collect()
}

/// A required NUL-terminated UTF-8 string.
///
/// # Safety
/// `s` is NULL or points to a NUL-terminated string readable for `'a`.
pub(crate) unsafe fn c_str<'a>(s: *const c_char, name: &str) -> Result<&'a str> {
    if s.is_null() {
        return Err(null(name));
    }
    CStr::from_ptr(s).to_str().map_err(|_| {
        Error::new(
            Status::InvalidArgument,
            format!("`{name}` is not valid UTF-8"),
        )
    })
}

/// True when two DLTensors describe the same memory with the same layout
/// (the same tensor passed twice).
///
/// # Safety
/// Both point to valid `DLTensor`s.
pub(crate) unsafe fn same_tensor(a: *const DLTensor, b: *const DLTensor) -> bool {
    if a == b {
        return true;
    }
    match (TensorView::from_dlpack(&*a), TensorView::from_dlpack(&*b)) {
        (Ok(x), Ok(y)) => x.as_ptr() == y.as_ptr() && x.layout() == y.layout(),
        _ => false,
    }
}
