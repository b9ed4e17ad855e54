//! # xpu-ops
//!
//! Operator library for LLM inference engines: the kernels a vLLM-style
//! engine needs for hybrid models, with vLLM / FlashInfer / fla names,
//! arguments and layouts. Every op validates its arguments before it writes
//! anything, accumulates in fp32, documents its tolerance, and gives the same
//! result for any thread count.
//!
//! Layers: C kernels (`xpu_src/`, one build per ISA tier) → Rust launchers
//! ([`ops`]) → this safe API, the C ABI (`xpu-ops-ffi`) and Python. The
//! [`mod@reference`] module is the oracle the tests compare every tier against.
//!
//! ```
//! use xpu_ops::{TensorView, TensorViewMut, reshape_and_cache_flash};
//! let key = vec![0.5f32; 4 * 2 * 8];
//! let mut cache = vec![0f32; 3 * 4 * 2 * 8];
//! let slots = [0i64, 5, -1, 11];
//! reshape_and_cache_flash(
//!     &TensorView::new(&key, &[4, 2, 8])?,
//!     &TensorView::new(&key, &[4, 2, 8])?,
//!     &mut TensorViewMut::new(&mut cache, &[3, 4, 2, 8])?,
//!     None,
//!     &TensorView::new(&slots, &[4])?,
//!     "auto", None, None,
//! )?;
//! assert_eq!(cache.iter().filter(|&&v| v == 0.5).count(), 3 * 2 * 8);
//! # Ok::<(), xpu_ops::Error>(())
//! ```

pub mod align;
pub mod bench;
pub mod dlpack;
pub mod dtype;
pub mod error;
mod mem;
pub mod model;
pub mod ops;
pub mod platform;
pub mod probe;
pub mod reference;
#[allow(clippy::all)]
mod sys;
pub mod tensor;
pub mod threading;
pub mod trace;

pub use dtype::{DType, F8E4M3, F8E5M2};
pub use error::{Error, Result, Status};
pub use ops::attention::{
    attention_bf16_dot, flash_attn_varlen_func, merge_attn_states, paged_attention_v1,
    paged_attention_v2, with_attention_bf16_dot, with_attention_fast_decode,
};
pub use ops::cache::{
    copy_blocks, reshape_and_cache, reshape_and_cache_flash, swap_blocks, KvCacheDtype,
};
pub use ops::conv::{causal_conv1d_fn, causal_conv1d_update};
pub use ops::gdn::{
    chunk_gated_delta_rule, fused_gdn_gating, fused_recurrent_gated_delta_rule, l2norm,
    rms_norm_gated,
};
pub use ops::layer::{fused_add_rms_norm, rms_norm, rotary_embedding, silu_and_mul};
pub use ops::linear::{linear, wna16_linear};
pub use ops::linear_packed::{linear_packed, PackedLayout, PackedLinearWeight};
pub use ops::quant::{
    dynamic_scaled_int8_quant, int8_scaled_mm, int8_scaled_mm_azp, static_scaled_int8_quant,
    wna16_dequantize, GptqFormat, Wna16Weight,
};
pub use ops::sampling::{
    apply_penalties, min_p_sampling_from_probs, sampler_forward, sampling_from_logits,
    sampling_from_probs, top_k_mask_logits, top_k_renorm_probs, top_k_sampling_from_probs,
    top_k_top_p_sampling_from_logits, top_k_top_p_sampling_from_probs, top_p_renorm_probs,
    top_p_sampling_from_probs, FilterApplyOrder, LogprobsTensorsMut, PerRow, SamplingMetadata,
};
pub use platform::{active_isa, detected_isa, set_isa, supported_isas, with_isa, Isa};
pub use tensor::{Device, Layout, TensorView, TensorViewMut};
pub use threading::{num_threads, set_num_threads};

/// The crate version, as in Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The README's Rust example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
