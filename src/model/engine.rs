//! The serving loop: requests, a block allocator for the paged KV cache, the
//! GDN conv/state pools, chunked prefill and batched decode, and
//! [`run_demo`], which runs it on xpu-ops, replays it on the reference and
//! builds the [`Report`].

use std::time::Instant;

use half::bf16;

use super::forward::{forward, Backend, Batch, CacheState, Phase, SeqChunk, XpuBackend};
use super::reference::RefBackend;
use super::report::{
    AlignmentReport, DrawMismatch, GreedyMismatch, OpRow, Report, Roofline, StepAlignment,
};
use super::weights::Weights;
use super::{AttentionBackend, DemoOptions, Rng};
use crate::align::{Alignment, Tolerance};
use crate::error::{bail, Result};
use crate::ops::sampling::{PerRow, SamplingMetadata, SAMPLING_EPS};
use crate::tensor::TensorView;

/// One engine step's outputs: which requests were sampled, with what, and the logits.
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// "prefill 2" or "decode 5".
    pub label: String,
    pub phase: Phase,
    /// Request index of each sampled row.
    pub requests: Vec<usize>,
    /// f32 `[requests, vocab]`.
    pub logits: Vec<f32>,
    /// The sampler's tokens, one per row.
    pub sampled: Vec<i64>,
    /// Philox offsets of the rows (tokens the request sampled before).
    pub offsets: Vec<i64>,
}

/// An engine over one backend: weights, caches, block tables, sampling parameters.
pub struct Engine<'w, B: Backend> {
    pub weights: &'w Weights,
    pub backend: B,
    pub cache: CacheState,
    /// Per request, `[max_blocks]` block ids (shuffled, so tables are not contiguous).
    pub block_tables: Vec<Vec<i32>>,
    pub max_blocks: usize,
    pub attention: AttentionBackend,
    pub temperatures: Vec<f32>,
    pub seeds: Vec<i64>,
    pub top_k: i64,
    pub top_p: f32,
}

impl<'w, B: Backend> Engine<'w, B> {
    /// Caches for `capacity[r]` tokens of request `r`; the config's seed shuffles the blocks.
    pub fn new(
        weights: &'w Weights,
        backend: B,
        capacity: &[usize],
        opts: &DemoOptions,
    ) -> Engine<'w, B> {
        let c = &weights.config;
        let bs = c.block_size;
        let per_req: Vec<usize> = capacity.iter().map(|&n| n.div_ceil(bs)).collect();
        let max_blocks = per_req.iter().copied().max().unwrap_or(0).max(1);
        // One spare block that no table uses, so stray writes would show.
        let num_blocks = per_req.iter().sum::<usize>() + 1;
        let mut ids: Vec<i32> = (0..num_blocks as i32).collect();
        let mut rng = Rng(c.seed ^ 0xB10C);
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i + 1));
        }
        let mut next = ids.into_iter();
        let block_tables = per_req
            .iter()
            .map(|&n| {
                let mut row: Vec<i32> = next.by_ref().take(n).collect();
                row.resize(max_blocks, 0);
                row
            })
            .collect();
        let slots = capacity.len();
        let kv_elems = num_blocks * bs * c.num_kv_heads * c.head_dim;
        let cache = CacheState {
            kv: (0..c.num_attention_layers())
                .map(|_| (vec![bf16::ZERO; kv_elems], vec![bf16::ZERO; kv_elems]))
                .collect(),
            num_blocks,
            conv: (0..c.num_gdn_layers())
                .map(|_| vec![bf16::ZERO; slots * c.conv_dim() * (c.conv_kernel - 1)])
                .collect(),
            ssm: (0..c.num_gdn_layers())
                .map(|_| {
                    vec![
                        0f32;
                        slots
                            * c.linear_num_value_heads
                            * c.linear_value_head_dim
                            * c.linear_key_head_dim
                    ]
                })
                .collect(),
            slots,
        };
        Engine {
            weights,
            backend,
            cache,
            block_tables,
            max_blocks,
            attention: opts.attention,
            temperatures: (0..slots)
                .map(|r| opts.temperatures[r % opts.temperatures.len()])
                .collect(),
            seeds: (0..slots)
                .map(|r| opts.sampling_seed.wrapping_add(r as u64) as i64)
                .collect(),
            top_k: opts.top_k,
            top_p: opts.top_p,
        }
    }

    /// Runs one batch: `tokens` are the new tokens of `seqs` back to back;
    /// rows of `sample` (indices into `seqs`) get logits and a sampled token,
    /// `offsets[i]` being the number of tokens that request has sampled before.
    pub fn step(
        &mut self,
        label: String,
        phase: Phase,
        tokens: Vec<i64>,
        seqs: Vec<SeqChunk>,
        sample: Vec<usize>,
        offsets: &[i64],
    ) -> Result<StepRecord> {
        let decode = phase == Phase::Decode;
        let mut block_table = Vec::with_capacity(seqs.len() * self.max_blocks);
        for s in &seqs {
            block_table.extend_from_slice(&self.block_tables[s.slot]);
        }
        let requests: Vec<usize> = sample.iter().map(|&i| seqs[i].slot).collect();
        let batch = Batch {
            tokens,
            seqs,
            decode,
            block_table,
            max_blocks: self.max_blocks,
            logits_for: sample,
        };
        self.backend.set_phase(phase);
        let logits = forward(
            &mut self.backend,
            self.weights,
            &mut self.cache,
            &batch,
            self.attention,
        )?;
        let n = requests.len();
        let mut sampled = vec![0i64; n];
        if n > 0 {
            let temp: Vec<f32> = requests.iter().map(|&r| self.temperatures[r]).collect();
            let seed: Vec<i64> = requests.iter().map(|&r| self.seeds[r]).collect();
            let (temp, seed_t, off_t) = (
                TensorView::new(&temp, &[n])?,
                TensorView::new(&seed, &[n])?,
                TensorView::new(offsets, &[n])?,
            );
            let md = SamplingMetadata {
                temperature: Some(PerRow::Tensor(&temp)),
                top_k: Some(PerRow::Scalar(self.top_k)),
                top_p: Some(PerRow::Scalar(self.top_p)),
                seed: PerRow::Tensor(&seed_t),
                offset: PerRow::Tensor(&off_t),
                ..SamplingMetadata::default()
            };
            let vocab = self.weights.config.vocab_size;
            self.backend.sampler_forward(
                &TensorView::new(&logits, &[n, vocab])?,
                &md,
                &mut sampled,
            )?;
        }
        Ok(StepRecord {
            label,
            phase,
            requests,
            logits,
            sampled,
            offsets: offsets.to_vec(),
        })
    }
}

/// Prefill steps: each takes at most `budget` prompt tokens, walking the
/// requests in order and splitting prompts where the budget runs out.
pub fn prefill_schedule(prompt_lens: &[usize], budget: usize) -> Vec<Vec<SeqChunk>> {
    let mut done = vec![0usize; prompt_lens.len()];
    let mut steps = Vec::new();
    while done.iter().zip(prompt_lens).any(|(d, l)| d < l) {
        let mut left = budget;
        let mut step = Vec::new();
        for (r, &len) in prompt_lens.iter().enumerate() {
            if left == 0 {
                break;
            }
            let take = (len - done[r]).min(left);
            if take == 0 {
                continue;
            }
            step.push(SeqChunk {
                slot: r,
                context: done[r],
                len: take,
            });
            done[r] += take;
            left -= take;
        }
        steps.push(step);
    }
    steps
}

/// What one run of the schedule produced.
pub struct Run {
    pub steps: Vec<StepRecord>,
    /// Per request: the tokens fed after the prompt (the generated ones).
    pub generated: Vec<Vec<i64>>,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// Bytes the decode steps read (weights, KV, state), summed over steps.
    pub decode_bytes: DecodeBytes,
}

/// Bytes read by the decode steps, by kind, summed over every step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DecodeBytes {
    pub weights: f64,
    pub kv: f64,
    pub state: f64,
}

/// Runs prefill then `decode_steps` decode steps. With `forced`, the tokens
/// fed back are those of the forced run (teacher forcing), while the records
/// keep this run's own logits and samples.
pub fn run_schedule<B: Backend>(
    eng: &mut Engine<B>,
    prompts: &[Vec<i64>],
    chunk: usize,
    decode_steps: usize,
    forced: Option<&Run>,
) -> Result<Run> {
    let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
    let mut generated: Vec<Vec<i64>> = vec![Vec::new(); prompts.len()];
    let mut steps = Vec::new();
    let t0 = Instant::now();
    for (i, chunks) in prefill_schedule(&lens, chunk).into_iter().enumerate() {
        let mut tokens = Vec::new();
        let mut sample = Vec::new();
        for (j, s) in chunks.iter().enumerate() {
            tokens.extend_from_slice(&prompts[s.slot][s.context..s.context + s.len]);
            if s.context + s.len == lens[s.slot] {
                sample.push(j);
            }
        }
        let offsets = vec![0i64; sample.len()];
        let rec = eng.step(
            format!("prefill {}", i + 1),
            Phase::Prefill,
            tokens,
            chunks,
            sample,
            &offsets,
        )?;
        feed(&mut generated, &rec, forced, steps.len());
        steps.push(rec);
    }
    let prefill_seconds = t0.elapsed().as_secs_f64();
    let c = &eng.weights.config;
    let mut bytes = DecodeBytes::default();
    let t1 = Instant::now();
    for d in 0..decode_steps {
        let n = prompts.len();
        let tokens: Vec<i64> = generated
            .iter()
            .map(|g| *g.last().expect("prefilled"))
            .collect();
        let seqs: Vec<SeqChunk> = (0..n)
            .map(|r| SeqChunk {
                slot: r,
                context: lens[r] + generated[r].len() - 1,
                len: 1,
            })
            .collect();
        let kv_tokens: usize = seqs.iter().map(|s| s.context + 1).sum();
        bytes.weights += (eng.weights.decode_weight_bytes() + n * c.hidden_size * 2) as f64;
        bytes.kv +=
            (c.num_attention_layers() * kv_tokens * 2 * c.num_kv_heads * c.head_dim * 2) as f64;
        let ssm = c.linear_num_value_heads * c.linear_value_head_dim * c.linear_key_head_dim * 4;
        let conv = c.conv_dim() * (c.conv_kernel - 1) * 2;
        bytes.state += (c.num_gdn_layers() * n * 2 * (ssm + conv)) as f64; // read + write
        let offsets: Vec<i64> = generated.iter().map(|g| g.len() as i64).collect();
        let rec = eng.step(
            format!("decode {}", d + 1),
            Phase::Decode,
            tokens,
            seqs,
            (0..n).collect(),
            &offsets,
        )?;
        feed(&mut generated, &rec, forced, steps.len());
        steps.push(rec);
    }
    let decode_seconds = t1.elapsed().as_secs_f64();
    Ok(Run {
        steps,
        generated,
        prefill_seconds,
        decode_seconds,
        decode_bytes: bytes,
    })
}

fn feed(generated: &mut [Vec<i64>], rec: &StepRecord, forced: Option<&Run>, index: usize) {
    let tokens = match forced {
        Some(f) => &f.steps[index].sampled,
        None => &rec.sampled,
    };
    for (&r, &t) in rec.requests.iter().zip(tokens) {
        generated[r].push(t);
    }
}

/// The logits tolerance of the alignment's `within` share: the model's
/// activations are bf16 (2⁻⁸ relative per rounding), so a logit may move by
/// a few bf16 ulps of the hidden state times the lm_head's gain.
pub const LOGITS_TOLERANCE: Tolerance = Tolerance {
    atol: 0.05,
    rtol: 0.02,
};

/// Runs the demo: random model, chunked prefill, decode, timings, roofline,
/// and (if `opts.reference`) the alignment against the reference forward.
pub fn run_demo(opts: DemoOptions) -> Result<Report> {
    opts.validate()?;
    let c = opts.config.clone();
    let max_prompt = opts.prompt_lens.iter().copied().max().unwrap_or(0);
    let max_position = max_prompt + opts.decode_steps + 1;
    let t_init = Instant::now();
    let weights = Weights::random(&c, max_position);
    let init_seconds = t_init.elapsed().as_secs_f64();
    let mut rng = Rng(c.seed ^ 0x9E0_9E0);
    let prompts: Vec<Vec<i64>> = opts
        .prompt_lens
        .iter()
        .map(|&n| (0..n).map(|_| rng.below(c.vocab_size) as i64).collect())
        .collect();
    let capacity: Vec<usize> = opts
        .prompt_lens
        .iter()
        .map(|&n| n + opts.decode_steps + 1)
        .collect();

    // The whole schedule `repeats` times on fresh caches; the fastest run's
    // timings are reported, and every run must produce the same tokens.
    let mut best: Option<(Run, Engine<XpuBackend>)> = None;
    for _ in 0..opts.repeats.max(1) {
        let mut eng = Engine::new(&weights, XpuBackend::default(), &capacity, &opts);
        let run = run_schedule(
            &mut eng,
            &prompts,
            opts.prefill_chunk,
            opts.decode_steps,
            None,
        )?;
        if let Some((b, _)) = &best {
            if b.generated != run.generated {
                bail!(
                    Internal,
                    "two runs of the same schedule generated different tokens"
                );
            }
            if b.prefill_seconds + b.decode_seconds <= run.prefill_seconds + run.decode_seconds {
                continue;
            }
        }
        best = Some((run, eng));
    }
    let (run, eng) = best.expect("at least one run");
    let times = eng.backend.times.clone();

    let read_bw = if opts.measure_bandwidth && opts.decode_steps > 0 {
        Some(crate::probe::read_bandwidth(opts.bandwidth_probe_bytes))
    } else {
        None
    };

    let alignment = if opts.reference {
        let t_ref = Instant::now();
        let mut reng = Engine::new(&weights, RefBackend, &capacity, &opts);
        let rrun = run_schedule(
            &mut reng,
            &prompts,
            opts.prefill_chunk,
            opts.decode_steps,
            Some(&run),
        )?;
        let seconds = t_ref.elapsed().as_secs_f64();
        Some(compare_runs(&run, &rrun, &eng, seconds)?)
    } else {
        None
    };

    let ops = times
        .iter()
        .map(|(name, t)| OpRow {
            name: name.to_string(),
            calls: t.calls,
            seconds: t.seconds,
        })
        .collect();
    let batch = opts.prompt_lens.len();
    let roofline = read_bw.map(|bw| {
        let b = run.decode_bytes;
        let total = b.weights + b.kv + b.state;
        let steps = opts.decode_steps as f64;
        Roofline {
            read_bandwidth: bw,
            bytes_per_step: total / steps,
            weight_bytes_per_step: b.weights / steps,
            kv_bytes_per_step: b.kv / steps,
            state_bytes_per_step: b.state / steps,
            step_seconds: run.decode_seconds / steps,
            fraction: (total / bw) / run.decode_seconds,
        }
    });
    Ok(Report {
        config: c.clone(),
        parameters: weights.parameters(),
        weight_bytes: weights.decode_weight_bytes(),
        attention: opts.attention,
        isa: crate::active_isa().to_string(),
        threads: crate::num_threads(),
        prompt_lens: opts.prompt_lens.clone(),
        prefill_chunk: opts.prefill_chunk,
        prefill_steps: run
            .steps
            .iter()
            .filter(|s| s.phase == Phase::Prefill)
            .count(),
        decode_steps: opts.decode_steps,
        batch,
        init_seconds,
        repeats: opts.repeats.max(1),
        prefill_tokens: opts.prompt_lens.iter().sum(),
        prefill_seconds: run.prefill_seconds,
        decode_tokens: batch * opts.decode_steps,
        decode_seconds: run.decode_seconds,
        ops,
        roofline,
        alignment,
        generated: run.generated.clone(),
        temperatures: eng.temperatures.clone(),
    })
}

/// The reference sampler on one row of logits with an engine's parameters.
fn reference_sample<B: Backend>(
    eng: &Engine<B>,
    logits: &[f32],
    request: usize,
    offset: i64,
) -> Result<i64> {
    let (temp, seed, off) = ([eng.temperatures[request]], [eng.seeds[request]], [offset]);
    let (temp, seed, off) = (
        TensorView::new(&temp, &[1])?,
        TensorView::new(&seed, &[1])?,
        TensorView::new(&off, &[1])?,
    );
    let md = SamplingMetadata {
        temperature: Some(PerRow::Tensor(&temp)),
        top_k: Some(PerRow::Scalar(eng.top_k)),
        top_p: Some(PerRow::Scalar(eng.top_p)),
        seed: PerRow::Tensor(&seed),
        offset: PerRow::Tensor(&off),
        ..SamplingMetadata::default()
    };
    let v = TensorView::new(logits, &[1, logits.len()])?;
    Ok(crate::reference::sampling::sampler_forward(&v, &md).sampled[0])
}

/// What a request's random draw depends on besides its logits.
#[derive(Debug, Clone, Copy)]
struct DrawSetting {
    temperature: f32,
    top_k: i64,
    top_p: f32,
    seed: i64,
    /// Philox offset: tokens the request sampled before.
    offset: i64,
}

/// For a random draw where the two models disagree: how deep the draw point
/// lies inside the reference token's interval of the reference CDF (in
/// probability), and how far the row's largest logit error `max_abs` can move
/// any point of that CDF. Scaling every kept weight by a factor within
/// e^(+-max_abs / T) moves a CDF value C by at most C (1 - C) (e^(2 max_abs / T) - 1)
/// <= (e^(2 max_abs / T) - 1) / 4; tokens that one row keeps and the other
/// drops (top-k / top-p edges) add their reference mass; 1e-6 covers the
/// sampler's own weight rounding.
fn draw_margin(
    (reference, xpu): (&[f32], &[f32]),
    d: DrawSetting,
    token: usize,
    max_abs: f64,
) -> (f64, f64) {
    use crate::reference::sampling::{kept_mask, uniform_bits, weight, RowFilter};
    let vocab = reference.len();
    let filter = RowFilter {
        top_k: match d.top_k {
            k if k <= 0 || k as usize >= vocab => 0,
            k => k as usize,
        },
        top_p: d.top_p,
        ..RowFilter::NONE
    };
    let scaled = |row: &[f32]| row.iter().map(|&x| x / d.temperature).collect::<Vec<f32>>();
    let (y, y_xpu) = (scaled(reference), scaled(xpu));
    let (kept, kept_xpu) = (
        kept_mask(&y, true, &filter),
        kept_mask(&y_xpu, true, &filter),
    );
    let m = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = y.iter().map(|&v| weight(true, v, m) as f64).collect();
    let z: f64 = (0..vocab).filter(|&i| kept[i]).map(|i| w[i]).sum();
    let below: f64 = (0..token).filter(|&i| kept[i]).map(|i| w[i]).sum();
    let (lo, hi) = (below / z, (below + w[token]) / z);
    let f = uniform_bits(d.seed as u64, 0, d.offset as u64) as f64 / 2f64.powi(32);
    let swapped: f64 = (0..vocab)
        .filter(|&i| kept[i] != kept_xpu[i])
        .map(|i| w[i] / z)
        .sum();
    let bound = (2.0 * max_abs / d.temperature as f64).exp_m1() / 4.0 + swapped + 1e-6;
    ((f - lo).min(hi - f), bound)
}

/// Step by step: logits alignment, token agreement with the reference
/// model, and the xpu sampler against the reference sampler on the same logits.
fn compare_runs<B: Backend>(
    run: &Run,
    reference: &Run,
    eng: &Engine<B>,
    seconds: f64,
) -> Result<AlignmentReport> {
    let vocab = eng.weights.config.vocab_size;
    let mut steps = Vec::new();
    let (mut greedy, mut sampled, mut parity) = ([0usize; 2], [0usize; 2], [0usize; 2]);
    let (mut greedy_mismatches, mut draw_mismatches) = (Vec::new(), Vec::new());
    for (a, b) in run.steps.iter().zip(&reference.steps) {
        if a.requests.is_empty() {
            continue;
        }
        let got: Vec<f64> = a.logits.iter().map(|&x| x as f64).collect();
        let want: Vec<f64> = b.logits.iter().map(|&x| x as f64).collect();
        let all = Alignment::compare(&got, &want, LOGITS_TOLERANCE);
        let mut worst_row = f64::INFINITY;
        let mut matched = 0;
        for (i, &r) in a.requests.iter().enumerate() {
            let rows = i * vocab..(i + 1) * vocab;
            let row = Alignment::compare(&got[rows.clone()], &want[rows.clone()], LOGITS_TOLERANCE);
            worst_row = worst_row.min(row.cosine);
            let ok = a.sampled[i] == b.sampled[i];
            matched += ok as usize;
            if eng.temperatures[r] < SAMPLING_EPS {
                greedy[0] += ok as usize;
                greedy[1] += 1;
                // A mismatch is decisive when the reference's top two logits
                // are further apart than twice the row's largest error.
                let mut top = [f64::NEG_INFINITY; 2];
                for &x in &want[rows.clone()] {
                    if x > top[0] {
                        top = [x, top[0]];
                    } else if x > top[1] {
                        top[1] = x;
                    }
                }
                if !ok {
                    greedy_mismatches.push(GreedyMismatch {
                        label: a.label.clone(),
                        request: r,
                        top2_gap: top[0] - top[1],
                        row_max_abs: row.max_abs,
                    });
                }
            } else {
                sampled[0] += ok as usize;
                sampled[1] += 1;
                if !ok {
                    let setting = DrawSetting {
                        temperature: eng.temperatures[r],
                        top_k: eng.top_k,
                        top_p: eng.top_p,
                        seed: eng.seeds[r],
                        offset: b.offsets[i],
                    };
                    let (margin, bound) = draw_margin(
                        (&b.logits[rows.clone()], &a.logits[rows.clone()]),
                        setting,
                        b.sampled[i] as usize,
                        row.max_abs,
                    );
                    draw_mismatches.push(DrawMismatch {
                        label: a.label.clone(),
                        request: r,
                        margin,
                        bound,
                    });
                }
            }
            let s = reference_sample(eng, &a.logits[rows], r, a.offsets[i])?;
            parity[0] += (s == a.sampled[i]) as usize;
            parity[1] += 1;
        }
        steps.push(StepAlignment {
            label: a.label.clone(),
            rows: a.requests.len(),
            alignment: all,
            min_row_cosine: worst_row,
            tokens_matched: matched,
        });
    }
    Ok(AlignmentReport {
        steps,
        greedy_matched: greedy[0],
        greedy_total: greedy[1],
        greedy_mismatches,
        sampled_matched: sampled[0],
        sampled_total: sampled[1],
        draw_mismatches,
        sampler_parity: parity[0],
        sampler_rows: parity[1],
        tolerance: LOGITS_TOLERANCE,
        reference_seconds: seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(row: &[f32], d: DrawSetting) -> usize {
        let (temp, seed, off) = ([d.temperature], [d.seed], [d.offset]);
        let md = SamplingMetadata {
            temperature: Some(PerRow::Tensor(&TensorView::new(&temp, &[1]).unwrap())),
            top_k: Some(PerRow::Scalar(d.top_k)),
            top_p: Some(PerRow::Scalar(d.top_p)),
            seed: PerRow::Tensor(&TensorView::new(&seed, &[1]).unwrap()),
            offset: PerRow::Tensor(&TensorView::new(&off, &[1]).unwrap()),
            ..SamplingMetadata::default()
        };
        let v = TensorView::new(row, &[1, row.len()]).unwrap();
        crate::reference::sampling::sampler_forward(&v, &md).sampled[0] as usize
    }

    /// Rows perturbed by up to `err`: every draw that flips must be judged a
    /// near tie when the true error is passed, and some must be judged
    /// decisive when a hundredth of it is claimed (the check can fail).
    #[test]
    fn draw_margin_bounds_every_flip_its_logit_error_can_cause() {
        let mut rng = Rng(7);
        let (vocab, err) = (48, 0.05f32);
        let (mut flips, mut caught) = (0, 0);
        for (temperature, top_k, top_p) in [(1.0, 0, 1.0), (0.8, 20, 1.0), (0.7, 0, 0.9)] {
            for row_seed in 0..40 {
                let reference: Vec<f32> = (0..vocab).map(|_| 3.0 * rng.symmetric()).collect();
                let xpu: Vec<f32> = reference
                    .iter()
                    .map(|&x| x + err * rng.symmetric())
                    .collect();
                let max_abs = reference
                    .iter()
                    .zip(&xpu)
                    .map(|(a, b)| (a - b).abs() as f64)
                    .fold(0.0, f64::max);
                for offset in 0..50 {
                    let d = DrawSetting {
                        temperature,
                        top_k,
                        top_p,
                        seed: row_seed,
                        offset,
                    };
                    let want = sample(&reference, d);
                    if sample(&xpu, d) == want {
                        continue;
                    }
                    flips += 1;
                    let (margin, bound) = draw_margin((&reference, &xpu), d, want, max_abs);
                    assert!(margin <= bound, "{d:?}: margin {margin} > bound {bound}");
                    let (margin, bound) = draw_margin((&reference, &xpu), d, want, max_abs / 100.0);
                    caught += (margin > bound) as usize;
                }
            }
        }
        assert!(
            flips >= 100,
            "only {flips} flips: the test does not exercise the bound"
        );
        assert!(
            caught > 0,
            "no flip judged decisive with the error understated"
        );
    }
}
