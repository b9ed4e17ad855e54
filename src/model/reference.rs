//! The same forward through [`crate::reference`]: fp64 (or fp32 where the
//! oracle says so) scalar arithmetic with the kernels' rounding points, so
//! the xpu-ops run can be held against it end to end.

use crate::error::Result;
use crate::ops::sampling::SamplingMetadata;
use crate::reference as r;
use crate::reference::attention::round_to;
use crate::tensor::{TensorView, TensorViewMut};

use super::forward::Backend;

type V<'a> = TensorView<'a>;
type M<'a> = TensorViewMut<'a>;

/// The reference ops. Arguments are the ones the xpu-ops backend validated
/// on the same schedule; the references panic on bad input rather than return errors.
#[derive(Debug, Clone, Default)]
pub struct RefBackend;

impl Backend for RefBackend {
    fn linear(&mut self, _tag: &'static str, x: &V, weight: &V, out: &mut M) -> Result<()> {
        let y = r::linear::linear(x, weight, None);
        let (rows, n) = (out.shape()[0], out.shape()[1]);
        let dt = out.dtype();
        for i in 0..rows {
            for j in 0..n {
                out.set_f32(&[i, j], round_to(y[i * n + j], dt) as f32);
            }
        }
        Ok(())
    }
    fn rms_norm(&mut self, out: &mut M, input: &V, weight: &V, eps: f64) -> Result<()> {
        r::layer::rms_norm(out, input, weight, eps);
        Ok(())
    }
    fn fused_add_rms_norm(
        &mut self,
        input: &mut M,
        residual: &mut M,
        weight: &V,
        eps: f64,
    ) -> Result<()> {
        r::layer::fused_add_rms_norm(input, residual, weight, eps);
        Ok(())
    }
    fn rotary_embedding(
        &mut self,
        positions: &V,
        query: &mut M,
        key: &mut M,
        head_size: usize,
        cos_sin_cache: &V,
    ) -> Result<()> {
        r::layer::rotary_embedding(positions, query, Some(key), head_size, cos_sin_cache, true);
        Ok(())
    }
    fn silu_and_mul(&mut self, out: &mut M, input: &V) -> Result<()> {
        r::layer::silu_and_mul(out, input);
        Ok(())
    }
    fn rms_norm_gated(
        &mut self,
        _tag: &'static str,
        x: &V,
        weight: &V,
        z: Option<&V>,
        eps: f32,
        out: &mut M,
    ) -> Result<()> {
        r::gdn::rms_norm_gated(x, weight, None, z, eps, None, true, out);
        Ok(())
    }
    fn reshape_and_cache_flash(
        &mut self,
        key: &V,
        value: &V,
        key_cache: &mut M,
        value_cache: &mut M,
        slot_mapping: &V,
    ) -> Result<()> {
        r::cache::reshape_and_cache_flash(
            key,
            value,
            key_cache,
            Some(value_cache),
            slot_mapping,
            "auto",
            None,
            None,
        );
        Ok(())
    }
    fn reshape_and_cache(
        &mut self,
        key: &V,
        value: &V,
        key_cache: &mut M,
        value_cache: &mut M,
        slot_mapping: &V,
    ) -> Result<()> {
        r::cache::reshape_and_cache(
            key,
            value,
            key_cache,
            value_cache,
            slot_mapping,
            "auto",
            None,
            None,
        );
        Ok(())
    }
    fn flash_attn_varlen_func(
        &mut self,
        q: &V,
        k: &V,
        v: &V,
        _max_seqlen_q: usize,
        cu_seqlens_q: &V,
        _max_seqlen_k: usize,
        seqused_k: &V,
        softmax_scale: f32,
        block_table: &V,
        out: &mut M,
    ) -> Result<()> {
        r::attention::flash_attn_varlen_func(
            q,
            k,
            v,
            cu_seqlens_q,
            seqused_k,
            softmax_scale,
            true,
            (-1, -1),
            0.0,
            None,
            block_table,
            None,
            out,
            None,
            None,
            None,
        );
        Ok(())
    }
    fn paged_attention_v1(
        &mut self,
        out: &mut M,
        query: &V,
        key_cache: &V,
        value_cache: &V,
        num_kv_heads: usize,
        scale: f32,
        block_tables: &V,
        seq_lens: &V,
        _block_size: usize,
        _max_seq_len: usize,
    ) -> Result<()> {
        r::attention::paged_attention_v1(
            out,
            query,
            key_cache,
            value_cache,
            num_kv_heads,
            scale,
            block_tables,
            seq_lens,
            None,
            "auto",
            None,
            None,
        );
        Ok(())
    }
    fn paged_attention_v2(
        &mut self,
        out: &mut M,
        exp_sums: &mut M,
        max_logits: &mut M,
        tmp_out: &mut M,
        query: &V,
        key_cache: &V,
        value_cache: &V,
        num_kv_heads: usize,
        scale: f32,
        block_tables: &V,
        seq_lens: &V,
        _block_size: usize,
        _max_seq_len: usize,
    ) -> Result<()> {
        r::attention::paged_attention_v2(
            out,
            exp_sums,
            max_logits,
            tmp_out,
            query,
            key_cache,
            value_cache,
            num_kv_heads,
            scale,
            block_tables,
            seq_lens,
            None,
            "auto",
            None,
            None,
        );
        Ok(())
    }
    fn causal_conv1d_fn(
        &mut self,
        x: &mut M,
        weight: &V,
        conv_states: &mut M,
        query_start_loc: &V,
        cache_indices: &V,
        has_initial_state: &V,
    ) -> Result<()> {
        r::conv::causal_conv1d_fn(
            x,
            weight,
            None,
            conv_states,
            query_start_loc,
            Some(cache_indices),
            Some(has_initial_state),
            Some("silu"),
            -1,
            None,
        );
        Ok(())
    }
    fn causal_conv1d_update(
        &mut self,
        x: &mut M,
        conv_state: &mut M,
        weight: &V,
        conv_state_indices: &V,
    ) -> Result<()> {
        r::conv::causal_conv1d_update(
            x,
            conv_state,
            weight,
            None,
            Some("silu"),
            Some(conv_state_indices),
            None,
            None,
            -1,
            None,
        );
        Ok(())
    }
    fn fused_gdn_gating(
        &mut self,
        a_log: &V,
        a: &V,
        b: &V,
        dt_bias: &V,
        g: &mut M,
        beta_output: &mut M,
    ) -> Result<()> {
        r::gdn::fused_gdn_gating(a_log, a, b, dt_bias, 1.0, 20.0, g, beta_output);
        Ok(())
    }
    fn chunk_gated_delta_rule(
        &mut self,
        q: &V,
        k: &V,
        v: &V,
        g: &V,
        beta: &V,
        state_pool: &mut M,
        cu_seqlens: &V,
        ssm_state_indices: &V,
        has_initial_state: &V,
        o: &mut M,
    ) -> Result<()> {
        r::gdn::chunk_gated_delta_rule(
            q,
            k,
            v,
            g,
            Some(beta),
            None,
            Some(state_pool),
            true,
            Some(cu_seqlens),
            Some(ssm_state_indices),
            Some(has_initial_state),
            true,
            o,
        );
        Ok(())
    }
    fn fused_recurrent_gated_delta_rule(
        &mut self,
        q: &V,
        k: &V,
        v: &V,
        g: &V,
        beta: &V,
        state_pool: &mut M,
        ssm_state_indices: &V,
        o: &mut M,
    ) -> Result<()> {
        r::gdn::fused_recurrent_gated_delta_rule(
            q,
            k,
            v,
            g,
            Some(beta),
            None,
            state_pool,
            None,
            Some(ssm_state_indices),
            None,
            true,
            o,
        );
        Ok(())
    }
    fn sampler_forward(
        &mut self,
        logits: &V,
        metadata: &SamplingMetadata,
        out: &mut [i64],
    ) -> Result<()> {
        let s = r::sampling::sampler_forward(logits, metadata);
        out.copy_from_slice(&s.sampled);
        Ok(())
    }
}
