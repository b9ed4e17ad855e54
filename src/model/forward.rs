//! The forward pass, written once over a [`Backend`] (the ops), and the
//! xpu-ops backend that times every op call.

use std::collections::BTreeMap;
use std::time::Instant;

use half::bf16;

use super::weights::{AttentionWeights, GdnWeights, Mixer, Weights};
use super::AttentionBackend;
use crate::error::Result;
use crate::ops::attention::PARTITION_SIZE;
use crate::ops::sampling::SamplingMetadata;
use crate::tensor::{TensorView, TensorViewMut};

type V<'a> = TensorView<'a>;
type M<'a> = TensorViewMut<'a>;

/// The ops the model calls, with the arguments it uses (the rest are the
/// upstream defaults: no bias, `pad_slot_id` -1, `"auto"` cache dtype, causal
/// attention without window/softcap/alibi/sinks, silu conv activation,
/// q/k l2norm inside the delta rule). [`XpuBackend`] calls the xpu-ops
/// kernels; [`super::RefBackend`] the plain-Rust references.
#[allow(clippy::too_many_arguments)]
pub trait Backend {
    /// Which phase the following calls belong to (for timings).
    fn set_phase(&mut self, _phase: Phase) {}
    /// `out = x · weightᵀ`; `tag` names the projection in the timings.
    fn linear(&mut self, tag: &'static str, x: &V, weight: &V, out: &mut M) -> Result<()>;
    fn rms_norm(&mut self, out: &mut M, input: &V, weight: &V, eps: f64) -> Result<()>;
    fn fused_add_rms_norm(
        &mut self,
        input: &mut M,
        residual: &mut M,
        weight: &V,
        eps: f64,
    ) -> Result<()>;
    fn rotary_embedding(
        &mut self,
        positions: &V,
        query: &mut M,
        key: &mut M,
        head_size: usize,
        cos_sin_cache: &V,
    ) -> Result<()>;
    fn silu_and_mul(&mut self, out: &mut M, input: &V) -> Result<()>;
    /// RMSNorm per row of the last dim, gated by `silu(z)` after the norm when `z` is given.
    fn rms_norm_gated(
        &mut self,
        tag: &'static str,
        x: &V,
        weight: &V,
        z: Option<&V>,
        eps: f32,
        out: &mut M,
    ) -> Result<()>;
    fn reshape_and_cache_flash(
        &mut self,
        key: &V,
        value: &V,
        key_cache: &mut M,
        value_cache: &mut M,
        slot_mapping: &V,
    ) -> Result<()>;
    fn reshape_and_cache(
        &mut self,
        key: &V,
        value: &V,
        key_cache: &mut M,
        value_cache: &mut M,
        slot_mapping: &V,
    ) -> Result<()>;
    fn flash_attn_varlen_func(
        &mut self,
        q: &V,
        k: &V,
        v: &V,
        max_seqlen_q: usize,
        cu_seqlens_q: &V,
        max_seqlen_k: usize,
        seqused_k: &V,
        softmax_scale: f32,
        block_table: &V,
        out: &mut M,
    ) -> Result<()>;
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
        block_size: usize,
        max_seq_len: usize,
    ) -> Result<()>;
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
        block_size: usize,
        max_seq_len: usize,
    ) -> Result<()>;
    /// Prefill conv (silu), in place on `x` `(dim, tokens)`.
    fn causal_conv1d_fn(
        &mut self,
        x: &mut M,
        weight: &V,
        conv_states: &mut M,
        query_start_loc: &V,
        cache_indices: &V,
        has_initial_state: &V,
    ) -> Result<()>;
    /// Decode conv (silu), in place on `x` `(batch, dim)`.
    fn causal_conv1d_update(
        &mut self,
        x: &mut M,
        conv_state: &mut M,
        weight: &V,
        conv_state_indices: &V,
    ) -> Result<()>;
    fn fused_gdn_gating(
        &mut self,
        a_log: &V,
        a: &V,
        b: &V,
        dt_bias: &V,
        g: &mut M,
        beta_output: &mut M,
    ) -> Result<()>;
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
    ) -> Result<()>;
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
    ) -> Result<()>;
    /// vLLM's sampler over f32 logits `[batch, vocab]`; token ids into `out`.
    fn sampler_forward(
        &mut self,
        logits: &V,
        metadata: &SamplingMetadata,
        out: &mut [i64],
    ) -> Result<()>;
}

/// The caches one engine owns: per attention layer a K and a V cache, per
/// GDN layer a conv-state pool (bf16 `[slots, conv_dim, width - 1]`, conv_dim
/// contiguous as in vLLM) and a
/// recurrent-state pool (fp32 `[slots, HV, V, K]`). Slot = request index.
#[derive(Debug)]
pub struct CacheState {
    pub kv: Vec<(Vec<bf16>, Vec<bf16>)>,
    pub num_blocks: usize,
    pub conv: Vec<Vec<bf16>>,
    pub ssm: Vec<Vec<f32>>,
    pub slots: usize,
}

/// One sequence's piece of a batch: `len` new tokens after `context` cached ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqChunk {
    /// Request index: its cache slot and block-table row.
    pub slot: usize,
    pub context: usize,
    pub len: usize,
}

/// A varlen batch: the tokens of every sequence chunk, back to back.
#[derive(Debug, Clone)]
pub struct Batch {
    pub tokens: Vec<i64>,
    pub seqs: Vec<SeqChunk>,
    /// Every sequence has one new token after some context: the decode
    /// kernels (conv update, recurrent delta rule) run instead of the prefill ones.
    pub decode: bool,
    /// Block table rows of the sequences, `[seqs, max_blocks]`.
    pub block_table: Vec<i32>,
    pub max_blocks: usize,
    /// Sequences (indices into `seqs`) whose last token needs logits.
    pub logits_for: Vec<usize>,
}

/// Index tensors derived from a batch, shared by every layer.
struct Meta {
    positions: Vec<i64>,
    slot_mapping: Vec<i64>,
    cu_seqlens: Vec<i32>,
    seqused_k: Vec<i32>,
    state_indices: Vec<i32>,
    has_initial_state: Vec<i32>,
    max_q: usize,
    max_k: usize,
    /// Paged backend: one "sequence" per token (causal prefix of its request).
    tok_block_table: Vec<i32>,
    tok_lens: Vec<i32>,
    /// The sequences' block-table rows, `[seqs, max_blocks]`.
    block_table: Vec<i32>,
    max_blocks: usize,
}

impl Meta {
    fn new(b: &Batch, block_size: usize) -> Meta {
        let mut m = Meta {
            positions: Vec::with_capacity(b.tokens.len()),
            slot_mapping: Vec::with_capacity(b.tokens.len()),
            cu_seqlens: vec![0],
            seqused_k: vec![],
            state_indices: vec![],
            has_initial_state: vec![],
            max_q: 0,
            max_k: 0,
            tok_block_table: Vec::with_capacity(b.tokens.len() * b.max_blocks),
            tok_lens: Vec::with_capacity(b.tokens.len()),
            block_table: b.block_table.clone(),
            max_blocks: b.max_blocks,
        };
        for (i, s) in b.seqs.iter().enumerate() {
            let row = &b.block_table[i * b.max_blocks..(i + 1) * b.max_blocks];
            for p in s.context..s.context + s.len {
                m.positions.push(p as i64);
                let block = row[p / block_size] as i64;
                m.slot_mapping
                    .push(block * block_size as i64 + (p % block_size) as i64);
                m.tok_block_table.extend_from_slice(row);
                m.tok_lens.push(p as i32 + 1);
            }
            m.cu_seqlens
                .push(m.cu_seqlens.last().copied().unwrap_or(0) + s.len as i32);
            m.seqused_k.push((s.context + s.len) as i32);
            m.state_indices.push(s.slot as i32);
            m.has_initial_state.push((s.context > 0) as i32);
            m.max_q = m.max_q.max(s.len);
            m.max_k = m.max_k.max(s.context + s.len);
        }
        m
    }
}

fn v<'a, T: crate::dtype::Element>(data: &'a [T], shape: &[usize]) -> Result<V<'a>> {
    TensorView::new(data, shape)
}
fn vs<'a, T: crate::dtype::Element>(
    data: &'a [T],
    offset: usize,
    shape: &[usize],
    strides: &[usize],
) -> Result<V<'a>> {
    TensorView::strided(&data[offset..], shape, strides)
}
fn m<'a, T: crate::dtype::Element>(data: &'a mut [T], shape: &[usize]) -> Result<M<'a>> {
    TensorViewMut::new(data, shape)
}

/// Runs the model on a batch, updating the caches, and returns the f32
/// logits `[batch.logits_for.len(), vocab]` of the requested sequences' last tokens.
pub fn forward<B: Backend>(
    be: &mut B,
    w: &Weights,
    st: &mut CacheState,
    batch: &Batch,
    attention: AttentionBackend,
) -> Result<Vec<f32>> {
    let c = &w.config;
    let (t, h) = (batch.tokens.len(), c.hidden_size);
    let meta = Meta::new(batch, c.block_size);
    let eps = c.rms_norm_eps;

    // Embedding: a row copy (no op needed).
    let mut hidden = vec![bf16::ZERO; t * h];
    for (i, &tok) in batch.tokens.iter().enumerate() {
        let tok = tok as usize;
        hidden[i * h..(i + 1) * h].copy_from_slice(&w.embed_tokens.data[tok * h..(tok + 1) * h]);
    }
    let mut residual = vec![bf16::ZERO; t * h];
    let mut mixed = vec![bf16::ZERO; t * h];
    let inter = c.intermediate_size;
    let mut gate_up = vec![bf16::ZERO; t * 2 * inter];
    let mut act = vec![bf16::ZERO; t * inter];
    let (mut gi, mut ai) = (0, 0);
    for (li, layer) in w.layers.iter().enumerate() {
        if li == 0 {
            residual.copy_from_slice(&hidden);
            be.rms_norm(
                &mut m(&mut hidden, &[t, h])?,
                &v(&residual, &[t, h])?,
                &v(&layer.input_norm, &[h])?,
                eps,
            )?;
        } else {
            be.fused_add_rms_norm(
                &mut m(&mut hidden, &[t, h])?,
                &mut m(&mut residual, &[t, h])?,
                &v(&layer.input_norm, &[h])?,
                eps,
            )?;
        }
        match &layer.mixer {
            Mixer::Gdn(g) => {
                gdn_layer(be, w, g, st, gi, batch, &meta, &hidden, &mut mixed)?;
                gi += 1;
            }
            Mixer::Attention(a) => {
                attention_layer(be, w, a, st, ai, &meta, attention, &hidden, &mut mixed)?;
                ai += 1;
            }
        }
        be.fused_add_rms_norm(
            &mut m(&mut mixed, &[t, h])?,
            &mut m(&mut residual, &[t, h])?,
            &v(&layer.post_attention_norm, &[h])?,
            eps,
        )?;
        be.linear(
            "mlp gate_up_proj",
            &v(&mixed, &[t, h])?,
            &v(&layer.gate_up_proj.data, &[2 * inter, h])?,
            &mut m(&mut gate_up, &[t, 2 * inter])?,
        )?;
        be.silu_and_mul(
            &mut m(&mut act, &[t, inter])?,
            &v(&gate_up, &[t, 2 * inter])?,
        )?;
        be.linear(
            "mlp down_proj",
            &v(&act, &[t, inter])?,
            &v(&layer.down_proj.data, &[h, inter])?,
            &mut m(&mut hidden, &[t, h])?,
        )?;
    }
    be.fused_add_rms_norm(
        &mut m(&mut hidden, &[t, h])?,
        &mut m(&mut residual, &[t, h])?,
        &v(&w.final_norm, &[h])?,
        eps,
    )?;
    // Logits only where a token is sampled.
    let n = batch.logits_for.len();
    let mut rows = vec![bf16::ZERO; n * h];
    for (r, &s) in batch.logits_for.iter().enumerate() {
        let last = meta.cu_seqlens[s + 1] as usize - 1;
        rows[r * h..(r + 1) * h].copy_from_slice(&hidden[last * h..(last + 1) * h]);
    }
    let vocab = c.vocab_size;
    let mut logits = vec![0f32; n * vocab];
    be.linear(
        "lm_head",
        &v(&rows, &[n, h])?,
        &v(&w.lm_head.data, &[vocab, h])?,
        &mut m(&mut logits, &[n, vocab])?,
    )?;
    Ok(logits)
}

#[allow(clippy::too_many_arguments)]
fn gdn_layer<B: Backend>(
    be: &mut B,
    w: &Weights,
    g: &GdnWeights,
    st: &mut CacheState,
    gi: usize,
    batch: &Batch,
    meta: &Meta,
    x: &[bf16],
    out: &mut [bf16],
) -> Result<()> {
    let c = &w.config;
    let t = batch.tokens.len();
    let n = batch.seqs.len();
    let h = c.hidden_size;
    let (hk, hv) = (c.linear_num_key_heads, c.linear_num_value_heads);
    let (dk, dv) = (c.linear_key_head_dim, c.linear_value_head_dim);
    let (kd, vd, cd, p) = (c.key_dim(), c.value_dim(), c.conv_dim(), c.gdn_proj_dim());
    let width = c.conv_kernel;
    let slots = st.slots;

    // [q | k | v | z | b | a] for every token.
    let mut proj = vec![bf16::ZERO; t * p];
    be.linear(
        "gdn in_proj",
        &v(x, &[t, h])?,
        &v(&g.in_proj.data, &[p, h])?,
        &mut m(&mut proj, &[t, p])?,
    )?;
    // Causal conv + silu over the q, k, v channels, in place.
    let conv_w = v(&g.conv_weight.data, &[cd, width])?;
    // vLLM's layout: `[slots, dim, width - 1]` with dim contiguous (stored
    // as `[slots, width - 1, dim]`), the faster one for the conv kernels.
    let mut conv_state = TensorViewMut::strided(
        &mut st.conv[gi],
        &[slots, cd, width - 1],
        &[cd * (width - 1), 1, cd],
    )?;
    let idx = v(&meta.state_indices, &[n])?;
    if batch.decode {
        be.causal_conv1d_update(
            &mut TensorViewMut::strided(&mut proj, &[t, cd], &[p, 1])?,
            &mut conv_state,
            &conv_w,
            &idx,
        )?;
    } else {
        be.causal_conv1d_fn(
            &mut TensorViewMut::strided(&mut proj, &[cd, t], &[1, p])?,
            &conv_w,
            &mut conv_state,
            &v(&meta.cu_seqlens, &[n + 1])?,
            &idx,
            &v(&meta.has_initial_state, &[n])?,
        )?;
    }
    // g = -exp(A_log) softplus(a + dt_bias), beta = sigmoid(b).
    let (b_off, a_off) = (cd + vd, cd + vd + hv);
    let mut gate = vec![0f32; t * hv];
    let mut beta = vec![0f32; t * hv];
    be.fused_gdn_gating(
        &v(&g.a_log, &[hv])?,
        &vs(&proj, a_off, &[t, hv], &[p, 1])?,
        &vs(&proj, b_off, &[t, hv], &[p, 1])?,
        &v(&g.dt_bias, &[hv])?,
        &mut m(&mut gate, &[t, hv])?,
        &mut m(&mut beta, &[t, hv])?,
    )?;
    // The gated delta rule over the state pool.
    let mut core = vec![bf16::ZERO; t * vd];
    let mut pool = m(&mut st.ssm[gi], &[slots, hv, dv, dk])?;
    // Decode: [B, 1, heads, dim]; prefill: [1, T, heads, dim] with cu_seqlens.
    let (bdim, tdim) = if batch.decode { (t, 1) } else { (1, t) };
    let q = vs(&proj, 0, &[bdim, tdim, hk, dk], &[tdim * p, p, dk, 1])?;
    let k = vs(&proj, kd, &[bdim, tdim, hk, dk], &[tdim * p, p, dk, 1])?;
    let vv = vs(&proj, 2 * kd, &[bdim, tdim, hv, dv], &[tdim * p, p, dv, 1])?;
    let gv = v(&gate, &[bdim, tdim, hv])?;
    let bv = v(&beta, &[bdim, tdim, hv])?;
    let mut o = m(&mut core, &[bdim, tdim, hv, dv])?;
    if batch.decode {
        be.fused_recurrent_gated_delta_rule(&q, &k, &vv, &gv, &bv, &mut pool, &idx, &mut o)?;
    } else {
        be.chunk_gated_delta_rule(
            &q,
            &k,
            &vv,
            &gv,
            &bv,
            &mut pool,
            &v(&meta.cu_seqlens, &[n + 1])?,
            &idx,
            &v(&meta.has_initial_state, &[n])?,
            &mut o,
        )?;
    }
    // Per-head RMSNorm gated by silu(z), then the out-projection.
    let mut normed = vec![bf16::ZERO; t * vd];
    be.rms_norm_gated(
        "gdn norm (gated)",
        &v(&core, &[t, hv, dv])?,
        &v(&g.norm, &[dv])?,
        Some(&vs(&proj, cd, &[t, hv, dv], &[p, dv, 1])?),
        c.rms_norm_eps as f32,
        &mut m(&mut normed, &[t, hv, dv])?,
    )?;
    be.linear(
        "gdn out_proj",
        &v(&normed, &[t, vd])?,
        &v(&g.out_proj.data, &[h, vd])?,
        &mut m(out, &[t, h])?,
    )
}

#[allow(clippy::too_many_arguments)]
fn attention_layer<B: Backend>(
    be: &mut B,
    w: &Weights,
    a: &AttentionWeights,
    st: &mut CacheState,
    ai: usize,
    meta: &Meta,
    backend: AttentionBackend,
    x: &[bf16],
    out: &mut [bf16],
) -> Result<()> {
    let c = &w.config;
    let t = meta.positions.len();
    let n = meta.seqused_k.len();
    let h = c.hidden_size;
    let (hq, hkv, d) = (c.num_attention_heads, c.num_kv_heads, c.head_dim);
    let (qd, kvd, wq) = (hq * d, hkv * d, c.qkv_dim());
    let bs = c.block_size;
    let nb = st.num_blocks;
    let mut qkv = vec![bf16::ZERO; t * wq];
    be.linear(
        "attn qkv_proj",
        &v(x, &[t, h])?,
        &v(&a.qkv_proj.data, &[wq, h])?,
        &mut m(&mut qkv, &[t, wq])?,
    )?;
    // Per-head q/k RMSNorm (into contiguous q and k), then partial NeoX RoPE.
    let mut q = vec![bf16::ZERO; t * qd];
    let mut k = vec![bf16::ZERO; t * kvd];
    let eps = c.rms_norm_eps as f32;
    be.rms_norm_gated(
        "attn q_norm/k_norm",
        &vs(&qkv, 0, &[t, hq, d], &[wq, d, 1])?,
        &v(&a.q_norm, &[d])?,
        None,
        eps,
        &mut m(&mut q, &[t, hq, d])?,
    )?;
    be.rms_norm_gated(
        "attn q_norm/k_norm",
        &vs(&qkv, qd, &[t, hkv, d], &[wq, d, 1])?,
        &v(&a.k_norm, &[d])?,
        None,
        eps,
        &mut m(&mut k, &[t, hkv, d])?,
    )?;
    be.rotary_embedding(
        &v(&meta.positions, &[t])?,
        &mut m(&mut q, &[t, hq, d])?,
        &mut m(&mut k, &[t, hkv, d])?,
        d,
        &v(&w.cos_sin_cache, &[w.max_position, c.rotary_dim()])?,
    )?;
    let value = vs(&qkv, qd + kvd, &[t, hkv, d], &[wq, d, 1])?;
    let scale = 1.0 / (d as f32).sqrt();
    let mut attn = vec![bf16::ZERO; t * qd];
    let (kc, vc) = &mut st.kv[ai];
    match backend {
        AttentionBackend::Flash => {
            let shape = [nb, bs, hkv, d];
            be.reshape_and_cache_flash(
                &v(&k, &[t, hkv, d])?,
                &value,
                &mut m(kc, &shape)?,
                &mut m(vc, &shape)?,
                &v(&meta.slot_mapping, &[t])?,
            )?;
            be.flash_attn_varlen_func(
                &v(&q, &[t, hq, d])?,
                &v(kc, &shape)?,
                &v(vc, &shape)?,
                meta.max_q,
                &v(&meta.cu_seqlens, &[n + 1])?,
                meta.max_k,
                &v(&meta.seqused_k, &[n])?,
                scale,
                &v(&meta.block_table, &[n, meta.max_blocks])?,
                &mut m(&mut attn, &[t, hq, d])?,
            )?;
        }
        AttentionBackend::Paged => {
            let x = 16 / 2; // bf16: 8 elements per 16-byte key chunk
            let kshape = [nb, hkv, d / x, bs, x];
            let vshape = [nb, hkv, d, bs];
            be.reshape_and_cache(
                &v(&k, &[t, hkv, d])?,
                &value,
                &mut m(kc, &kshape)?,
                &mut m(vc, &vshape)?,
                &v(&meta.slot_mapping, &[t])?,
            )?;
            // Every query row is its own "sequence": its causal prefix.
            let table = v(&meta.tok_block_table, &[t, meta.max_blocks])?;
            let lens = v(&meta.tok_lens, &[t])?;
            let max_len = meta.max_k;
            let parts = max_len.div_ceil(PARTITION_SIZE);
            // vLLM's choice: v1 unless several partitions and a small batch.
            if parts <= 1 || t * hq > 512 {
                be.paged_attention_v1(
                    &mut m(&mut attn, &[t, hq, d])?,
                    &v(&q, &[t, hq, d])?,
                    &v(kc, &kshape)?,
                    &v(vc, &vshape)?,
                    hkv,
                    scale,
                    &table,
                    &lens,
                    bs,
                    max_len,
                )?;
            } else {
                let mut exp_sums = vec![0f32; t * hq * parts];
                let mut max_logits = vec![0f32; t * hq * parts];
                let mut tmp = vec![bf16::ZERO; t * hq * parts * d];
                be.paged_attention_v2(
                    &mut m(&mut attn, &[t, hq, d])?,
                    &mut m(&mut exp_sums, &[t, hq, parts])?,
                    &mut m(&mut max_logits, &[t, hq, parts])?,
                    &mut m(&mut tmp, &[t, hq, parts, d])?,
                    &v(&q, &[t, hq, d])?,
                    &v(kc, &kshape)?,
                    &v(vc, &vshape)?,
                    hkv,
                    scale,
                    &table,
                    &lens,
                    bs,
                    max_len,
                )?;
            }
        }
    }
    be.linear(
        "attn o_proj",
        &v(&attn, &[t, qd])?,
        &v(&a.o_proj.data, &[h, qd])?,
        &mut m(out, &[t, h])?,
    )
}

/// Which part of the run an op call belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Prefill = 0,
    Decode = 1,
}

/// Calls and seconds of one op (or one projection of `linear`), per phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpTime {
    pub calls: [usize; 2],
    pub seconds: [f64; 2],
}

/// The xpu-ops kernels, each call timed under its op name.
#[derive(Debug, Clone)]
pub struct XpuBackend {
    pub phase: Phase,
    pub times: BTreeMap<&'static str, OpTime>,
}

impl Default for XpuBackend {
    fn default() -> Self {
        XpuBackend {
            phase: Phase::Prefill,
            times: BTreeMap::new(),
        }
    }
}

impl XpuBackend {
    fn timed<R>(&mut self, name: &'static str, f: impl FnOnce() -> R) -> R {
        let t0 = Instant::now();
        let r = f();
        let dt = t0.elapsed().as_secs_f64();
        let e = self.times.entry(name).or_default();
        e.calls[self.phase as usize] += 1;
        e.seconds[self.phase as usize] += dt;
        r
    }
}

impl Backend for XpuBackend {
    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
    }
    fn linear(&mut self, tag: &'static str, x: &V, weight: &V, out: &mut M) -> Result<()> {
        self.timed(tag, || crate::linear(x, weight, None, out))
    }
    fn rms_norm(&mut self, out: &mut M, input: &V, weight: &V, eps: f64) -> Result<()> {
        self.timed("rms_norm", || crate::rms_norm(out, input, weight, eps))
    }
    fn fused_add_rms_norm(
        &mut self,
        input: &mut M,
        residual: &mut M,
        weight: &V,
        eps: f64,
    ) -> Result<()> {
        self.timed("fused_add_rms_norm", || {
            crate::fused_add_rms_norm(input, residual, weight, eps)
        })
    }
    fn rotary_embedding(
        &mut self,
        positions: &V,
        query: &mut M,
        key: &mut M,
        head_size: usize,
        cos_sin_cache: &V,
    ) -> Result<()> {
        self.timed("rotary_embedding", || {
            crate::rotary_embedding(positions, query, Some(key), head_size, cos_sin_cache, true)
        })
    }
    fn silu_and_mul(&mut self, out: &mut M, input: &V) -> Result<()> {
        self.timed("silu_and_mul", || crate::silu_and_mul(out, input))
    }
    fn rms_norm_gated(
        &mut self,
        tag: &'static str,
        x: &V,
        weight: &V,
        z: Option<&V>,
        eps: f32,
        out: &mut M,
    ) -> Result<()> {
        self.timed(tag, || {
            crate::rms_norm_gated(x, weight, None, z, eps, None, true, out)
        })
    }
    fn reshape_and_cache_flash(
        &mut self,
        key: &V,
        value: &V,
        key_cache: &mut M,
        value_cache: &mut M,
        slot_mapping: &V,
    ) -> Result<()> {
        self.timed("reshape_and_cache_flash", || {
            crate::reshape_and_cache_flash(
                key,
                value,
                key_cache,
                Some(value_cache),
                slot_mapping,
                "auto",
                None,
                None,
            )
        })
    }
    fn reshape_and_cache(
        &mut self,
        key: &V,
        value: &V,
        key_cache: &mut M,
        value_cache: &mut M,
        slot_mapping: &V,
    ) -> Result<()> {
        self.timed("reshape_and_cache", || {
            crate::reshape_and_cache(
                key,
                value,
                key_cache,
                value_cache,
                slot_mapping,
                "auto",
                None,
                None,
            )
        })
    }
    fn flash_attn_varlen_func(
        &mut self,
        q: &V,
        k: &V,
        v: &V,
        max_seqlen_q: usize,
        cu_seqlens_q: &V,
        max_seqlen_k: usize,
        seqused_k: &V,
        softmax_scale: f32,
        block_table: &V,
        out: &mut M,
    ) -> Result<()> {
        self.timed("flash_attn_varlen_func", || {
            crate::flash_attn_varlen_func(
                q,
                k,
                v,
                max_seqlen_q,
                cu_seqlens_q,
                max_seqlen_k,
                seqused_k,
                Some(softmax_scale),
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
            )
        })
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
        block_size: usize,
        max_seq_len: usize,
    ) -> Result<()> {
        self.timed("paged_attention_v1", || {
            crate::paged_attention_v1(
                out,
                query,
                key_cache,
                value_cache,
                num_kv_heads,
                scale,
                block_tables,
                seq_lens,
                block_size,
                max_seq_len,
                None,
                "auto",
                None,
                None,
            )
        })
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
        block_size: usize,
        max_seq_len: usize,
    ) -> Result<()> {
        self.timed("paged_attention_v2", || {
            crate::paged_attention_v2(
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
                block_size,
                max_seq_len,
                None,
                "auto",
                None,
                None,
            )
        })
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
        self.timed("causal_conv1d_fn", || {
            crate::causal_conv1d_fn(
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
            )
        })
    }
    fn causal_conv1d_update(
        &mut self,
        x: &mut M,
        conv_state: &mut M,
        weight: &V,
        conv_state_indices: &V,
    ) -> Result<()> {
        self.timed("causal_conv1d_update", || {
            crate::causal_conv1d_update(
                x,
                conv_state,
                weight,
                None,
                Some("silu"),
                Some(conv_state_indices),
                None,
                None,
                -1,
                -1,
                None,
            )
        })
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
        self.timed("fused_gdn_gating", || {
            crate::fused_gdn_gating(a_log, a, b, dt_bias, 1.0, 20.0, g, beta_output)
        })
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
        self.timed("chunk_gated_delta_rule", || {
            crate::chunk_gated_delta_rule(
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
            )
        })
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
        self.timed("fused_recurrent_gated_delta_rule", || {
            crate::fused_recurrent_gated_delta_rule(
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
            )
        })
    }
    fn sampler_forward(
        &mut self,
        logits: &V,
        metadata: &SamplingMetadata,
        out: &mut [i64],
    ) -> Result<()> {
        let n = out.len();
        self.timed("sampler_forward", || {
            crate::sampler_forward(logits, metadata, &mut TensorViewMut::new(out, &[n])?, None)
        })
    }
}
