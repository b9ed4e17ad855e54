//! What [`super::run_demo`] measured, and how it prints.

use std::fmt;

use super::{AttentionBackend, ModelConfig};
use crate::align::{Alignment, Tolerance};

/// One op (or one `linear` projection): calls and seconds, `[prefill, decode]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpRow {
    pub name: String,
    pub calls: [usize; 2],
    pub seconds: [f64; 2],
}

/// The decode step against the read-bandwidth roofline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roofline {
    /// Measured by [`crate::probe::read_bandwidth`], bytes/s.
    pub read_bandwidth: f64,
    pub bytes_per_step: f64,
    pub weight_bytes_per_step: f64,
    pub kv_bytes_per_step: f64,
    pub state_bytes_per_step: f64,
    pub step_seconds: f64,
    /// (bytes / bandwidth) / measured time: 1.0 = at the bandwidth limit.
    pub fraction: f64,
}

/// Logits of one step, xpu-ops against the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct StepAlignment {
    pub label: String,
    pub rows: usize,
    /// Over every row of the step.
    pub alignment: Alignment,
    pub min_row_cosine: f64,
    pub tokens_matched: usize,
}

/// The whole run against the reference forward (teacher-forced).
#[derive(Debug, Clone, PartialEq)]
pub struct AlignmentReport {
    pub steps: Vec<StepAlignment>,
    pub greedy_matched: usize,
    pub greedy_total: usize,
    /// Every greedy row whose token differs from the reference model's.
    pub greedy_mismatches: Vec<GreedyMismatch>,
    /// Random draws (temperature > 0) equal to the reference model's. The
    /// draw inverts the CDF in token-id order, so a small logit difference
    /// moves it when the draw lands near the edge of a token's interval.
    pub sampled_matched: usize,
    pub sampled_total: usize,
    /// Every random draw whose token differs from the reference model's.
    pub draw_mismatches: Vec<DrawMismatch>,
    /// Rows where the xpu-ops sampler's token equals the reference
    /// sampler's on the same (xpu-ops) logits: must be all of them.
    pub sampler_parity: usize,
    pub sampler_rows: usize,
    pub tolerance: Tolerance,
    pub reference_seconds: f64,
}

/// A greedy row where xpu-ops and the reference model picked different tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GreedyMismatch {
    pub label: String,
    pub request: usize,
    /// The reference's top-1 minus top-2 logit.
    pub top2_gap: f64,
    /// The row's largest |xpu-ops − reference| logit difference.
    pub row_max_abs: f64,
}

impl GreedyMismatch {
    /// The reference's top two are further apart than twice the row's
    /// largest error: a real disagreement, not a near tie.
    pub fn decisive(&self) -> bool {
        self.top2_gap > 2.0 * self.row_max_abs
    }
}

/// A random draw where xpu-ops and the reference model picked different
/// tokens. Both invert the CDF at the same point `f` (the row's 32 random
/// bits over 2^32); `margin` is how far `f` lies inside the reference token's
/// interval of the reference CDF, `bound` how far the row's logit error can
/// move any point of that CDF.
#[derive(Debug, Clone, PartialEq)]
pub struct DrawMismatch {
    pub label: String,
    pub request: usize,
    pub margin: f64,
    pub bound: f64,
}

impl DrawMismatch {
    /// The draw lies deeper inside the reference token's interval than the
    /// logit error can move its edges: a real disagreement, not a near tie.
    pub fn decisive(&self) -> bool {
        self.margin > self.bound
    }
}

impl AlignmentReport {
    pub fn decisive_greedy_mismatches(&self) -> usize {
        self.greedy_mismatches
            .iter()
            .filter(|m| m.decisive())
            .count()
    }
    pub fn decisive_draw_mismatches(&self) -> usize {
        self.draw_mismatches.iter().filter(|m| m.decisive()).count()
    }
    pub fn min_cosine(&self) -> f64 {
        self.steps
            .iter()
            .map(|s| s.min_row_cosine)
            .fold(1.0, f64::min)
    }
    pub fn max_abs(&self) -> f64 {
        self.steps
            .iter()
            .map(|s| s.alignment.max_abs)
            .fold(0.0, f64::max)
    }
    /// Greedy tokens and random draws differ from the reference model's
    /// only on near ties (see [`GreedyMismatch`] and [`DrawMismatch`]).
    pub fn tokens_agree(&self) -> bool {
        self.decisive_greedy_mismatches() == 0 && self.decisive_draw_mismatches() == 0
    }
}

/// Everything the demo measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub config: ModelConfig,
    pub parameters: usize,
    /// Weight bytes a decode step reads (all but the embedding table).
    pub weight_bytes: usize,
    pub attention: AttentionBackend,
    pub isa: String,
    pub threads: usize,
    pub prompt_lens: Vec<usize>,
    pub prefill_chunk: usize,
    pub prefill_steps: usize,
    pub decode_steps: usize,
    pub batch: usize,
    pub init_seconds: f64,
    /// Runs of the schedule; the timings are the fastest run's.
    pub repeats: usize,
    pub prefill_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_tokens: usize,
    pub decode_seconds: f64,
    pub ops: Vec<OpRow>,
    pub roofline: Option<Roofline>,
    pub alignment: Option<AlignmentReport>,
    /// Per request: every generated token (the first from prefill).
    pub generated: Vec<Vec<i64>>,
    pub temperatures: Vec<f32>,
}

impl Report {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill_seconds.max(1e-12)
    }
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.decode_tokens as f64 / self.decode_seconds.max(1e-12)
    }
}

fn mb(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "xpu-ops demo: model {} (random weights, seed {:#x})",
            c.name, c.seed
        )?;
        writeln!(
            f,
            "  hidden {}, {} layers ({} GDN + {} attention), vocab {}, MLP {}, {:.1}M parameters",
            c.hidden_size,
            c.layers.len(),
            c.num_gdn_layers(),
            c.num_attention_layers(),
            c.vocab_size,
            c.intermediate_size,
            self.parameters as f64 / 1e6
        )?;
        writeln!(
            f,
            "  attention {} q / {} kv heads x {} (rotary {}), GDN {} key / {} value heads x {}/{}, conv {}",
            c.num_attention_heads,
            c.num_kv_heads,
            c.head_dim,
            c.rotary_dim(),
            c.linear_num_key_heads,
            c.linear_num_value_heads,
            c.linear_key_head_dim,
            c.linear_value_head_dim,
            c.conv_kernel
        )?;
        writeln!(
            f,
            "  bf16 weights and activations, fp32 GDN state; KV block size {}; {}",
            c.block_size,
            self.attention.name()
        )?;
        writeln!(
            f,
            "  ISA {}, {} threads; weights generated in {:.2} s",
            self.isa, self.threads, self.init_seconds
        )?;
        writeln!(
            f,
            "  {} requests, prompts {:?} in {} prefill steps of <= {} tokens, then {} decode steps",
            self.batch, self.prompt_lens, self.prefill_steps, self.prefill_chunk, self.decode_steps
        )?;
        writeln!(f)?;
        if self.repeats > 1 {
            writeln!(
                f,
                "throughput (fastest of {} runs on fresh caches; timings on a shared machine are noisy)",
                self.repeats
            )?;
        } else {
            writeln!(
                f,
                "throughput (one run; timings on a shared machine are noisy)"
            )?;
        }
        writeln!(
            f,
            "  prefill {:>7} tokens  {:>9.2} ms  {:>10.1} tokens/s",
            self.prefill_tokens,
            self.prefill_seconds * 1e3,
            self.prefill_tokens_per_second()
        )?;
        writeln!(
            f,
            "  decode  {:>7} tokens  {:>9.2} ms  {:>10.1} tokens/s  ({:.3} ms per step, batch {})",
            self.decode_tokens,
            self.decode_seconds * 1e3,
            self.decode_tokens_per_second(),
            self.decode_seconds * 1e3 / self.decode_steps.max(1) as f64,
            self.batch
        )?;
        if let Some(r) = &self.roofline {
            writeln!(f)?;
            writeln!(
                f,
                "decode roofline: {} per step = {} weights + {} KV + {} GDN/conv state (read + write)",
                mb(r.bytes_per_step),
                mb(r.weight_bytes_per_step),
                mb(r.kv_bytes_per_step),
                mb(r.state_bytes_per_step)
            )?;
            writeln!(
                f,
                "  at the measured read bandwidth {:.1} GB/s: {:.3} ms; measured {:.3} ms per step -> {:.1}% of the roofline",
                r.read_bandwidth / 1e9,
                r.bytes_per_step / r.read_bandwidth * 1e3,
                r.step_seconds * 1e3,
                r.fraction * 100.0
            )?;
            if r.bytes_per_step < 32e6 {
                writeln!(
                    f,
                    "  (the step's bytes fit in a 32 MiB L3, so they are read from cache, not DRAM: above 100% is possible)"
                )?;
            }
        }
        writeln!(f)?;
        let total: [f64; 2] = [self.prefill_seconds, self.decode_seconds];
        let in_ops: [f64; 2] = [
            self.ops.iter().map(|o| o.seconds[0]).sum(),
            self.ops.iter().map(|o| o.seconds[1]).sum(),
        ];
        writeln!(
            f,
            "per-op time            {:>14} {:>10} {:>7}   {:>14} {:>10} {:>7} {:>12}",
            "prefill calls", "ms", "share", "decode calls", "ms", "share", "us/step"
        )?;
        let mut ops = self.ops.clone();
        ops.sort_by(|a, b| {
            (b.seconds[0] + b.seconds[1])
                .partial_cmp(&(a.seconds[0] + a.seconds[1]))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let steps = self.decode_steps.max(1) as f64;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, calls: [usize; 2], s: [f64; 2]| {
            writeln!(
                f,
                "  {:<32} {:>5} {:>10.3} {:>6.1}%   {:>14} {:>10.3} {:>6.1}% {:>12.1}",
                name,
                calls[0],
                s[0] * 1e3,
                100.0 * s[0] / total[0].max(1e-12),
                calls[1],
                s[1] * 1e3,
                100.0 * s[1] / total[1].max(1e-12),
                s[1] * 1e6 / steps
            )
        };
        for o in &ops {
            row(f, &o.name, o.calls, o.seconds)?;
        }
        row(
            f,
            "(outside ops: embedding, buffers)",
            [0, 0],
            [
                (total[0] - in_ops[0]).max(0.0),
                (total[1] - in_ops[1]).max(0.0),
            ],
        )?;
        if let Some(a) = &self.alignment {
            writeln!(f)?;
            writeln!(
                f,
                "alignment against the reference forward (fp64 oracles, same bf16 rounding points, teacher-forced; {:.2} s)",
                a.reference_seconds
            )?;
            writeln!(
                f,
                "  {:<12} {:>4} {:>12} {:>14} {:>10} {:>10} {:>8} {:>8}",
                "logits at",
                "rows",
                "cosine",
                "min row cos",
                "max abs",
                "rmse/rms",
                "within",
                "tokens"
            )?;
            for s in &a.steps {
                writeln!(
                    f,
                    "  {:<12} {:>4} {:>12.8} {:>14.8} {:>10.5} {:>10.2e} {:>7.2}% {:>5}/{}",
                    s.label,
                    s.rows,
                    s.alignment.cosine,
                    s.min_row_cosine,
                    s.alignment.max_abs,
                    s.alignment.rel_rmse,
                    s.alignment.within * 100.0,
                    s.tokens_matched,
                    s.rows
                )?;
            }
            writeln!(
                f,
                "  min cosine {:.8}, max abs error {:.5} (logits std ~3; 'within': |d| <= {} + {}|ref|)",
                a.min_cosine(),
                a.max_abs(),
                a.tolerance.atol,
                a.tolerance.rtol
            )?;
            writeln!(
                f,
                "  tokens vs the reference model: greedy {}/{} match{}, sampled (T > 0) {}/{} match{}",
                a.greedy_matched,
                a.greedy_total,
                if a.decisive_greedy_mismatches() > 0 {
                    format!(" ({} DECISIVE MISMATCHES)", a.decisive_greedy_mismatches())
                } else {
                    String::new()
                },
                a.sampled_matched,
                a.sampled_total,
                if a.decisive_draw_mismatches() > 0 {
                    format!(" ({} DECISIVE MISMATCHES)", a.decisive_draw_mismatches())
                } else {
                    String::new()
                }
            )?;
            for m in &a.greedy_mismatches {
                writeln!(
                    f,
                    "    greedy mismatch at {} request {}: reference top-2 gap {:.4} vs row max error {:.4} ({})",
                    m.label,
                    m.request,
                    m.top2_gap,
                    m.row_max_abs,
                    if m.decisive() { "DECISIVE" } else { "a near tie" }
                )?;
            }
            for m in &a.draw_mismatches {
                writeln!(
                    f,
                    "    draw mismatch at {} request {}: draw {:.2e} inside the reference token's CDF interval vs \
                     {:.2e} that the row's logit error can move it ({})",
                    m.label,
                    m.request,
                    m.margin,
                    m.bound,
                    if m.decisive() { "DECISIVE" } else { "a near tie" }
                )?;
            }
            writeln!(
                f,
                "  sampler_forward vs reference sampler on the same logits: {}/{} rows identical",
                a.sampler_parity, a.sampler_rows
            )?;
        }
        writeln!(f)?;
        writeln!(f, "generated tokens")?;
        for (r, g) in self.generated.iter().enumerate() {
            let t = self.temperatures[r];
            let mode = if t < crate::ops::sampling::SAMPLING_EPS {
                "greedy".to_string()
            } else {
                format!("T={t}")
            };
            writeln!(f, "  request {r} ({mode}): {g:?}")?;
        }
        Ok(())
    }
}
