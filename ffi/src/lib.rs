//! C ABI of xpu-ops: `libxpu_ops.so` / `libxpu_ops.a` and the generated
//! header `include/xpu_ops.h` (cbindgen, see `ffi/cbindgen.toml`).
//!
//! Conventions (../shared/API.md, "C ABI rules"):
//! * every op returns an [`xops_status`]: `XOPS_OK` (0) or an error code above
//!   1000; [`xops_last_error`] gives the calling thread's message;
//! * tensors are DLPack `DLTensor`s (strides in elements, NULL strides =
//!   contiguous, `byte_offset` honoured); optional tensors may be NULL;
//! * no panic crosses the boundary: every export runs inside `call::ffi_call`
//!   (`catch_unwind`, NULL checks naming the argument, the last error).
//!
//! Layout: `status.rs` (codes), `call.rs` (the wrapper and argument
//! conversion), `runtime.rs` (version, ISA, threads), then one file per op
//! family (`cache.rs`, ...), each export a thin call into the Rust API.
//!
//! Adding an op family (see `cache.rs` for the pattern):
//! 1. `ffi/src/<family>.rs`: one `#[no_mangle] pub unsafe extern "C" fn
//!    xops_<op>(...) -> xops_status` per op, with the upstream argument names
//!    and order, its body `ffi_call("xops_<op>", || { ... })` converting each
//!    argument with `call::{tensor, tensor_mut, opt_tensor, tensors_mut,
//!    c_str}` (which name the argument in NULL/conversion errors) and calling
//!    the safe Rust function; a doc comment, which becomes the header's.
//! 2. `pub mod <family>;` below, then `.ci/gen-bindings` to regenerate
//!    `include/xpu_ops.h` (checked in; CI fails on drift).
//! 3. `python/xpu_ops/<family>.py` declaring the functions with
//!    `_lib.function` and converting arrays with `_lib.tensor*`; export it
//!    from `python/xpu_ops/__init__.py`; tests in `python/tests/test_<family>.py`.

#![allow(non_camel_case_types)]

// cbindgen emits items in module order; blank lines keep rustfmt from
// sorting these groups together, so the header reads: status, library-wide
// calls, then the op families.
mod call;
pub mod status;

pub mod runtime;

// One module per op family; add new families here.
pub mod attention;
pub mod cache;
pub mod gdn;
pub mod layer;
pub mod linear;
pub mod sampling;

pub use runtime::*;
pub use status::xops_status;

/// Major version of the library this header belongs to.
pub const XPU_OPS_VERSION_MAJOR: u32 = 0;
/// Minor version of the library this header belongs to.
pub const XPU_OPS_VERSION_MINOR: u32 = 1;
/// Patch version of the library this header belongs to.
pub const XPU_OPS_VERSION_PATCH: u32 = 0;
// The header's `XPU_OPS_VERSION` string macro is built from these three
// (cbindgen cannot export string constants); see ffi/cbindgen.toml.

#[cfg(test)]
mod tests;
