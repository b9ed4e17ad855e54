//! The oracle: one plain, safe, single-threaded function per op, written from
//! the upstream definitions without SIMD. Tests hold every kernel tier to it.

pub mod attention;
pub mod cache;
pub mod conv;
pub mod gdn;
pub mod layer;
pub mod linear;
pub mod sampling;
