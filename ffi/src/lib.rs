//! C ABI of xpu-ops.
