//! The alignment report covers every registered op on every tier and every
//! case lies within its documented tolerance.

#[test]
fn every_case_aligns_on_every_tier() {
    let rows = xpu_ops::align::run("");
    let cases = xpu_ops::align::cases().len();
    assert_eq!(rows.len(), cases * xpu_ops::supported_isas().len());
    let failing: Vec<String> = rows
        .iter()
        .filter(|r| !r.alignment.passes())
        .map(|r| format!("{} {} {}: {:?}", r.op, r.shape, r.isa, r.alignment))
        .collect();
    assert!(
        failing.is_empty(),
        "outside tolerance:\n{}",
        failing.join("\n")
    );
    assert!(rows
        .iter()
        .all(|r| r.alignment.elements > 0 && r.alignment.cosine > 0.999));
}

/// Every public op of the crate (src/lib.rs) has at least one case, and no
/// case names an op outside that list. A new op adds its name here and its
/// cases in src/align/.
#[test]
fn every_public_op_has_a_case() {
    let ops = [
        "reshape_and_cache",
        "reshape_and_cache_flash",
        "copy_blocks",
        "swap_blocks",
        "causal_conv1d_fn",
        "causal_conv1d_update",
        "fused_gdn_gating",
        "l2norm",
        "rms_norm_gated",
        "fused_recurrent_gated_delta_rule",
        "chunk_gated_delta_rule",
        "rms_norm",
        "fused_add_rms_norm",
        "rotary_embedding",
        "silu_and_mul",
        "paged_attention_v1",
        "paged_attention_v2",
        "flash_attn_varlen_func",
        "merge_attn_states",
        "linear",
        "linear_packed",
        "wna16_linear",
        "wna16_dequantize",
        "int8_scaled_mm",
        "int8_scaled_mm_azp",
        "dynamic_scaled_int8_quant",
        "static_scaled_int8_quant",
        "apply_penalties",
        "sampler_forward",
        "sampling_from_logits",
        "sampling_from_probs",
        "top_k_sampling_from_probs",
        "top_p_sampling_from_probs",
        "min_p_sampling_from_probs",
        "top_k_top_p_sampling_from_probs",
        "top_k_top_p_sampling_from_logits",
        "top_k_renorm_probs",
        "top_p_renorm_probs",
        "top_k_mask_logits",
    ];
    let cases: std::collections::BTreeSet<&str> =
        xpu_ops::align::cases().iter().map(|c| c.op).collect();
    let listed: std::collections::BTreeSet<&str> = ops.into_iter().collect();
    assert_eq!(cases, listed, "align cases vs the public ops");
}
