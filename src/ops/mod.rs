//! Launchers: validate every argument, pick the kernel tier, run the grid.
//! Each family's public functions are re-exported at the crate root.

pub mod attention;
pub mod cache;
pub(crate) mod check;
pub mod conv;
pub mod gdn;
pub mod layer;
pub mod linear;
pub mod linear_amx;
pub mod linear_packed;
pub mod quant;
pub mod sampling;
