//! Random weights from a fixed seed, in the layouts the ops take.

use half::bf16;
use rayon::prelude::*;

use super::{LayerKind, ModelConfig, Rng};

/// A bf16 weight matrix `[rows, cols]`, row-major (a `linear` weight is `[N, K]`).
#[derive(Debug, Clone)]
pub struct Matrix {
    pub data: Vec<bf16>,
    pub rows: usize,
    pub cols: usize,
}

impl Matrix {
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }
}

/// The Gated DeltaNet mixer of one layer.
#[derive(Debug, Clone)]
pub struct GdnWeights {
    /// `[q | k | v | z | b | a]` × hidden: one fused in-projection.
    pub in_proj: Matrix,
    /// `[conv_dim, conv_kernel]`: the depthwise causal conv over q, k, v.
    pub conv_weight: Matrix,
    /// `[num_value_heads]` f32: `A = -exp(A_log)`.
    pub a_log: Vec<f32>,
    /// `[num_value_heads]` f32.
    pub dt_bias: Vec<f32>,
    /// `[head_v_dim]`: the gated RMSNorm's weight (shared by every head).
    pub norm: Vec<bf16>,
    /// hidden × value_dim.
    pub out_proj: Matrix,
}

/// The attention mixer of one layer.
#[derive(Debug, Clone)]
pub struct AttentionWeights {
    /// `[q | k | v]` × hidden.
    pub qkv_proj: Matrix,
    /// `[head_dim]` per-head RMSNorm weights of q and k (Qwen3 q_norm / k_norm).
    pub q_norm: Vec<bf16>,
    pub k_norm: Vec<bf16>,
    /// hidden × (heads × head_dim).
    pub o_proj: Matrix,
}

#[derive(Debug, Clone)]
pub enum Mixer {
    Gdn(GdnWeights),
    Attention(AttentionWeights),
}

#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub input_norm: Vec<bf16>,
    pub post_attention_norm: Vec<bf16>,
    pub mixer: Mixer,
    /// `[gate | up]` × hidden (SwiGLU, consumed by `silu_and_mul`).
    pub gate_up_proj: Matrix,
    /// hidden × intermediate.
    pub down_proj: Matrix,
}

/// The whole model.
#[derive(Debug, Clone)]
pub struct Weights {
    pub config: ModelConfig,
    /// `[vocab, hidden]`: rows are copied (there is no embedding op).
    pub embed_tokens: Matrix,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<bf16>,
    /// `[vocab, hidden]` (not tied to the embedding, as Qwen3-Next).
    pub lm_head: Matrix,
    /// f32 `[max_position, rotary_dim]`: cos in the first half, sin in the second.
    pub cos_sin_cache: Vec<f32>,
    pub max_position: usize,
}

/// Fills `n` values uniform in `[-scale, scale)` from `seed`, in parallel
/// chunks that each have their own stream (the same values for any thread count).
fn uniform(n: usize, scale: f32, seed: u64) -> Vec<bf16> {
    const CHUNK: usize = 1 << 16;
    let mut v = vec![bf16::ZERO; n];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let mut r = Rng(seed ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        for x in out {
            *x = bf16::from_f32(r.symmetric() * scale);
        }
    });
    v
}

/// A `[rows, cols]` matrix with variance `gain² / cols` (unit-variance outputs
/// for unit-variance inputs).
fn matrix(rows: usize, cols: usize, gain: f32, seed: u64) -> Matrix {
    let scale = gain * (3.0 / cols as f32).sqrt();
    Matrix {
        data: uniform(rows * cols, scale, seed),
        rows,
        cols,
    }
}

/// Norm weights around 1.
fn norm(n: usize, seed: u64) -> Vec<bf16> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| bf16::from_f32(1.0 + 0.1 * r.symmetric()))
        .collect()
}

impl Weights {
    /// Random weights from `config.seed`; rotary tables for positions `0..max_position`.
    pub fn random(config: &ModelConfig, max_position: usize) -> Weights {
        let c = config;
        let mut seeds = Rng(c.seed);
        let mut next = || seeds.next_u64();
        let h = c.hidden_size;
        let embed_tokens = Matrix {
            data: uniform(c.vocab_size * h, 1.0, next()),
            rows: c.vocab_size,
            cols: h,
        };
        let mut layers = Vec::with_capacity(c.layers.len());
        for &kind in &c.layers {
            let input_norm = norm(h, next());
            let post_attention_norm = norm(h, next());
            let mixer = match kind {
                LayerKind::Gdn => {
                    let hv = c.linear_num_value_heads;
                    let mut r = Rng(next());
                    Mixer::Gdn(GdnWeights {
                        in_proj: matrix(c.gdn_proj_dim(), h, 1.0, next()),
                        conv_weight: matrix(c.conv_dim(), c.conv_kernel, 1.0, next()),
                        // A in [1, 16], dt = softplus(dt_bias) in about [1e-3, 0.1].
                        a_log: (0..hv)
                            .map(|_| (1.0 + 15.0 * (0.5 + 0.5 * r.symmetric())).ln())
                            .collect(),
                        dt_bias: (0..hv)
                            .map(|_| {
                                let dt = (1e-3f32.ln()
                                    + (0.1f32.ln() - 1e-3f32.ln()) * (0.5 + 0.5 * r.symmetric()))
                                .exp();
                                dt + (-(-dt).exp_m1()).ln() // softplus⁻¹(dt)
                            })
                            .collect(),
                        norm: norm(c.linear_value_head_dim, next()),
                        out_proj: matrix(h, c.value_dim(), 1.0, next()),
                    })
                }
                LayerKind::Attention => Mixer::Attention(AttentionWeights {
                    qkv_proj: matrix(c.qkv_dim(), h, 1.0, next()),
                    q_norm: norm(c.head_dim, next()),
                    k_norm: norm(c.head_dim, next()),
                    o_proj: matrix(h, c.num_attention_heads * c.head_dim, 1.0, next()),
                }),
            };
            layers.push(LayerWeights {
                input_norm,
                post_attention_norm,
                mixer,
                gate_up_proj: matrix(2 * c.intermediate_size, h, 1.0, next()),
                down_proj: matrix(h, c.intermediate_size, 1.0, next()),
            });
        }
        let final_norm = norm(h, next());
        // Logits with a standard deviation of about 3: a peaked but not
        // degenerate next-token distribution.
        let lm_head = matrix(c.vocab_size, h, 3.0, next());
        Weights {
            config: c.clone(),
            embed_tokens,
            layers,
            final_norm,
            lm_head,
            cos_sin_cache: cos_sin_cache(c, max_position),
            max_position,
        }
    }

    /// Bytes one decode step reads of the weights: every layer, the final
    /// norm and the lm_head (the embedding contributes only the rows looked up).
    pub fn decode_weight_bytes(&self) -> usize {
        let v = |x: &Vec<bf16>| x.len() * 2;
        let mut b = v(&self.final_norm) + self.lm_head.bytes();
        for l in &self.layers {
            b += v(&l.input_norm)
                + v(&l.post_attention_norm)
                + l.gate_up_proj.bytes()
                + l.down_proj.bytes();
            b += match &l.mixer {
                Mixer::Gdn(g) => {
                    g.in_proj.bytes()
                        + g.conv_weight.bytes()
                        + 4 * (g.a_log.len() + g.dt_bias.len())
                        + v(&g.norm)
                        + g.out_proj.bytes()
                }
                Mixer::Attention(a) => {
                    a.qkv_proj.bytes() + v(&a.q_norm) + v(&a.k_norm) + a.o_proj.bytes()
                }
            };
        }
        b
    }

    /// Parameters, embedding included.
    pub fn parameters(&self) -> usize {
        self.decode_weight_bytes() / 2 + self.embed_tokens.data.len()
    }
}

/// NeoX rotary table: `inv_freq_i = theta^(-2i / rot_dim)`, cos then sin.
fn cos_sin_cache(c: &ModelConfig, max_position: usize) -> Vec<f32> {
    let rot = c.rotary_dim();
    let half = rot / 2;
    let mut t = vec![0f32; max_position * rot];
    for p in 0..max_position {
        for i in 0..half {
            let inv = c.rope_theta.powf(-(2.0 * i as f64) / rot as f64);
            let a = p as f64 * inv;
            t[p * rot + i] = a.cos() as f32;
            t[p * rot + half + i] = a.sin() as f32;
        }
    }
    t
}
