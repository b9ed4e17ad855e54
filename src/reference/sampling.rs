//! Reference sampling: the definitions of [`crate::ops::sampling`] computed
//! the plain way: one row at a time, thresholds by sorting a copy of the row
//! (the oracle may sort; the kernels may not), exact integer weights, and an
//! fp64 softmax where the ops promise fp64 accuracy.
//!
//! The pieces the kernels must match bit for bit are written here
//! independently of the C code: Philox4x32 (checked against Random123's
//! known-answer vectors in the tests), the weight function built on
//! [`expf_spec`], the threshold rules and the inverse-CDF draw.

use crate::ops::sampling::{PerRow, SamplingMetadata, SAMPLING_EPS};
use crate::tensor::{TensorView, TensorViewMut};

// ---- Philox4x32 --------------------------------------------------------------

const PHILOX_M: [u64; 2] = [0xD251_1F53, 0xCD9E_8D57];
const PHILOX_W: [u32; 2] = [0x9E37_79B9, 0xBB67_AE85];

/// Philox4x32 with `rounds` rounds (Salmon et al., SC'11; Random123's
/// `philox4x32_R`): `counter` is the block, `key` the stream.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2], rounds: u32) -> [u32; 4] {
    let mut x = counter;
    let mut k = key;
    for round in 0..rounds {
        let prod0 = PHILOX_M[0] * x[0] as u64;
        let prod1 = PHILOX_M[1] * x[2] as u64;
        x = [
            ((prod1 >> 32) as u32) ^ x[1] ^ k[0],
            prod1 as u32,
            ((prod0 >> 32) as u32) ^ x[3] ^ k[1],
            prod0 as u32,
        ];
        if round + 1 < rounds {
            k = [
                k[0].wrapping_add(PHILOX_W[0]),
                k[1].wrapping_add(PHILOX_W[1]),
            ];
        }
    }
    x
}

/// The 32 random bits a row draws: word `offset % 4` of Philox4x32-10 with
/// key `seed` and counter `(offset / 4, subsequence)` (low words first).
pub fn uniform_bits(seed: u64, subsequence: u64, offset: u64) -> u32 {
    let block = offset / 4;
    let out = philox4x32(
        [
            block as u32,
            (block >> 32) as u32,
            subsequence as u32,
            (subsequence >> 32) as u32,
        ],
        [seed as u32, (seed >> 32) as u32],
        10,
    );
    out[(offset % 4) as usize]
}

// ---- weights -------------------------------------------------------------------

/// The specified `e^d` for `d` in [-27.8, 0]: `n = round(d / ln 2)` by the
/// 1.5 * 2^23 trick, `r = d - n ln2_hi - n ln2_lo`, Taylor to degree 6 in
/// Estrin form `(1 + r) + r^2 ((r/6 + 1/2) + r^2 ((r/120 + 1/24) + r^2/720))`,
/// times 2^n; every operation rounded separately in f32 (relative error
/// below 4e-7).
pub fn expf_spec(d: f32) -> f32 {
    let magic = 12_582_912.0f32;
    let log2e = f32::from_bits(0x3fb8_aa3b);
    let ln2_hi = f32::from_bits(0x3f31_7200);
    let ln2_lo = f32::from_bits(0x35bf_be8e);
    let t = d * log2e + magic;
    let n = t.to_bits().wrapping_sub(magic.to_bits());
    let nf = t - magic;
    let r = (d - nf * ln2_hi) - nf * ln2_lo;
    let r2 = r * r;
    let a = 1.0 + r;
    let b = r * (1.0f32 / 6.0) + 0.5;
    let c = r * (1.0f32 / 120.0) + 1.0 / 24.0;
    let q = r2 * (1.0f32 / 720.0) + c;
    let q = r2 * q + b;
    let p = r2 * q + a;
    f32::from_bits(p.to_bits().wrapping_add(n << 23))
}

/// The order-preserving key of a value (-0 and +0 share one).
pub fn key(y: f32) -> u32 {
    let u = (y + 0.0).to_bits();
    if u >> 31 == 1 {
        !u
    } else {
        u | 0x8000_0000
    }
}

/// A token's integer weight: logits `trunc(expf_spec(y - m) * 2^40)` (0 when
/// `y - m < -27.8`), probs `trunc(clamp(p, 0, 2) * 2^40)` (a row holding a
/// p > 2 fails the sum check anyway).
pub fn weight(is_logits: bool, y: f32, m: f32) -> u64 {
    let scale = (1u64 << 40) as f32;
    if is_logits {
        let d = y - m;
        if d.is_nan() || d < -27.8f32 {
            return 0;
        }
        (expf_spec(d) * scale) as u64
    } else {
        let c = if y > 0.0 { y.min(2.0) } else { 0.0 };
        (c * scale) as u64
    }
}

// ---- one row ---------------------------------------------------------------------

/// A row's filters: 0 / >= 1 / <= 0 switch each off.
#[derive(Debug, Clone, Copy)]
pub struct RowFilter {
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    /// FlashInfer "joint": top-p mass against the whole row.
    pub joint: bool,
}

impl RowFilter {
    pub const NONE: RowFilter = RowFilter {
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        joint: false,
    };
}

fn row_max(y: &[f32]) -> f32 {
    y.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Which tokens a row keeps (the mask of [`crate::ops::sampling`]).
pub fn kept_mask(y: &[f32], is_logits: bool, f: &RowFilter) -> Vec<bool> {
    let n = y.len();
    let m = row_max(y);
    let keys: Vec<u32> = y.iter().map(|&v| key(v)).collect();
    let mut desc: Vec<usize> = (0..n).collect();
    desc.sort_by(|&a, &b| keys[b].cmp(&keys[a]));
    let kth = if f.top_k > 0 && f.top_k < n {
        keys[desc[f.top_k - 1]]
    } else {
        0
    };
    let lnmp = (f.min_p as f64).ln() as f32;
    let mut kept: Vec<bool> = (0..n)
        .map(|i| {
            let minp_ok = if f.min_p <= 0.0 {
                true
            } else if is_logits {
                y[i] - m >= lnmp
            } else {
                y[i] >= f.min_p * m
            };
            keys[i] >= kth && minp_ok
        })
        .collect();
    if f.top_p < 1.0 {
        let w: Vec<u64> = y.iter().map(|&v| weight(is_logits, v, m)).collect();
        let z: u64 = if f.joint {
            w.iter().sum()
        } else {
            (0..n).filter(|&i| kept[i]).map(|i| w[i]).sum()
        };
        let q = ((f.top_p as f64) * 2f64.powi(32))
            .ceil()
            .clamp(1.0, 2f64.powi(32)) as u128;
        let limit = q * z as u128;
        // Walk the kept values from the largest down, one group of equal keys at a time.
        let order: Vec<usize> = desc.iter().copied().filter(|&i| kept[i]).collect();
        let mut above: u64 = 0;
        let mut g = 0;
        while g < order.len() {
            let mut h = g;
            let mut group = 0u64;
            while h < order.len() && keys[order[h]] == keys[order[g]] {
                group += w[order[h]];
                h += 1;
            }
            let keep = ((above as u128) << 32) < limit;
            for &i in &order[g..h] {
                kept[i] = keep;
            }
            above += group;
            g = h;
        }
    }
    kept
}

/// The inverse-CDF draw over the kept tokens with 32 random bits `u`.
pub fn draw(y: &[f32], is_logits: bool, kept: &[bool], u: u32) -> usize {
    let m = row_max(y);
    let w: Vec<u64> = (0..y.len())
        .map(|i| {
            if kept[i] {
                weight(is_logits, y[i], m)
            } else {
                0
            }
        })
        .collect();
    let z: u64 = w.iter().sum();
    let t = ((u as u128 * z as u128) >> 32) as u64;
    let mut acc = 0u64;
    for (i, &wi) in w.iter().enumerate() {
        acc += wi;
        if acc > t {
            return i;
        }
    }
    unreachable!("the draw target lies below the kept total")
}

/// The fp64 distribution the draw follows: softmax (or probs) renormalised
/// over the kept tokens.
pub fn ideal_distribution(y: &[f32], is_logits: bool, kept: &[bool]) -> Vec<f64> {
    let m = row_max(y) as f64;
    let raw: Vec<f64> = (0..y.len())
        .map(|i| match (kept[i], is_logits) {
            (false, _) => 0.0,
            (true, true) => (y[i] as f64 - m).exp(),
            (true, false) => y[i].max(0.0) as f64,
        })
        .collect();
    let s: f64 = raw.iter().sum();
    raw.iter().map(|r| r / s).collect()
}

/// Raw logprobs of a row in fp64: `(y - m) - ln(sum exp(y - m))`.
pub fn log_softmax(y: &[f32]) -> Vec<f64> {
    let m = row_max(y) as f64;
    let s: f64 = y.iter().map(|&v| (v as f64 - m).exp()).sum();
    let lse = s.ln();
    y.iter().map(|&v| (v as f64 - m) - lse).collect()
}

// ---- ops --------------------------------------------------------------------------

fn rows_of(x: &TensorView) -> Vec<Vec<f32>> {
    (0..x.shape()[0])
        .map(|r| (0..x.shape()[1]).map(|v| x.get_f32(&[r, v])).collect())
        .collect()
}

fn per_row<T: Copy>(p: &PerRow<T>, b: usize, get: impl Fn(&TensorView, usize) -> T) -> T {
    match p {
        PerRow::Scalar(v) => *v,
        PerRow::Tensor(t) => get(t, b),
    }
}

fn f32_at(p: &PerRow<f32>, b: usize) -> f32 {
    per_row(p, b, |t, i| t.get_f32(&[i]))
}

fn i64_at(p: &PerRow<i64>, b: usize) -> i64 {
    per_row(p, b, |t, i| t.get_i64(&[i]))
}

/// (seed, subsequence, offset) of output row `b` (see [`crate::ops::sampling`]).
pub fn rng_of(seed: &PerRow<u64>, offset: &PerRow<u64>, b: usize) -> (u64, u64, u64) {
    let word = |p: &PerRow<u64>| match p {
        PerRow::Scalar(v) => (*v, false),
        PerRow::Tensor(t) if t.shape()[0] == 1 => (t.get_bits(&[0]), false),
        PerRow::Tensor(t) => (t.get_bits(&[b]), true),
    };
    let (s, per) = word(seed);
    let (o, _) = word(offset);
    (s, if per { 0 } else { b as u64 }, o)
}

fn write_id(out: &mut TensorViewMut, b: usize, v: i64) {
    if out.ndim() == 2 {
        out.set_bits(&[b, 0], v as u64 & mask_of(out))
    } else {
        out.set_bits(&[b], v as u64 & mask_of(out))
    }
}

fn mask_of(t: &TensorViewMut) -> u64 {
    if t.dtype().size() == 4 {
        0xffff_ffff
    } else {
        u64::MAX
    }
}

/// The FlashInfer samplers: `top_k` 0 / `top_p` 1 / `min_p` 0 mean off.
#[allow(clippy::too_many_arguments)]
pub fn flashinfer_sample(
    x: &TensorView,
    is_logits: bool,
    top_k: Option<&PerRow<i64>>,
    top_p: Option<&PerRow<f32>>,
    min_p: Option<&PerRow<f32>>,
    indices: Option<&TensorView>,
    joint: bool,
    seed: &PerRow<u64>,
    offset: &PerRow<u64>,
    samples: &mut TensorViewMut,
) {
    let rows = rows_of(x);
    let batch = indices.map_or(rows.len(), |ix| ix.shape()[0]);
    for b in 0..batch {
        let r = indices.map_or(b, |ix| ix.get_i64(&[b]) as usize);
        let f = RowFilter {
            top_k: top_k.map_or(0, |k| i64_at(k, b).max(0) as usize),
            top_p: top_p.map_or(1.0, |p| f32_at(p, b)),
            min_p: min_p.map_or(0.0, |p| f32_at(p, b)),
            joint,
        };
        let kept = kept_mask(&rows[r], is_logits, &f);
        let (s, sub, o) = rng_of(seed, offset, b);
        let tok = draw(&rows[r], is_logits, &kept, uniform_bits(s, sub, o));
        write_id(samples, b, tok as i64);
    }
}

/// `top_k_renorm_probs` / `top_p_renorm_probs`: kept probs over their fp64 sum.
pub fn renorm_probs(
    probs: &TensorView,
    top_k: Option<&PerRow<i64>>,
    top_p: Option<&PerRow<f32>>,
    out: &mut TensorViewMut,
) {
    for (b, row) in rows_of(probs).iter().enumerate() {
        let f = RowFilter {
            top_k: top_k.map_or(0, |k| i64_at(k, b) as usize),
            top_p: top_p.map_or(1.0, |p| f32_at(p, b)),
            ..RowFilter::NONE
        };
        let kept = kept_mask(row, false, &f);
        let s: f64 = (0..row.len())
            .filter(|&i| kept[i])
            .map(|i| row[i] as f64)
            .sum();
        for (i, &p) in row.iter().enumerate() {
            let v = if kept[i] { (p as f64 / s) as f32 } else { 0.0 };
            out.set_f32(&[b, i], v);
        }
    }
}

/// `top_k_mask_logits`.
pub fn top_k_mask_logits(logits: &TensorView, top_k: &PerRow<i64>, out: &mut TensorViewMut) {
    for (b, row) in rows_of(logits).iter().enumerate() {
        let f = RowFilter {
            top_k: i64_at(top_k, b) as usize,
            ..RowFilter::NONE
        };
        let kept = kept_mask(row, true, &f);
        for (i, &x) in row.iter().enumerate() {
            out.set_f32(&[b, i], if kept[i] { x } else { f32::NEG_INFINITY });
        }
    }
}

fn token_list(t: Option<&TensorView>, b: usize, pad: i64) -> Vec<usize> {
    t.map_or(Vec::new(), |t| {
        (0..t.shape()[1])
            .map(|j| t.get_i64(&[b, j]))
            .filter(|&v| v != pad)
            .map(|v| v as usize)
            .collect()
    })
}

/// vLLM's penalties on one f32 row, token by token over the whole vocabulary
/// (the dense form of vLLM's tensor expressions).
pub fn penalize(
    row: &mut [f32],
    prompt: &[usize],
    output: &[usize],
    pres: f32,
    freq: f32,
    rep: f32,
) {
    let mut count = vec![0u32; row.len()];
    let mut in_prompt = vec![false; row.len()];
    for &t in output {
        count[t] += 1;
    }
    for &t in prompt {
        in_prompt[t] = true;
    }
    for (i, x) in row.iter_mut().enumerate() {
        if in_prompt[i] || count[i] > 0 {
            *x = if *x > 0.0 { *x / rep } else { *x * rep };
        }
        if count[i] > 0 {
            *x -= freq * count[i] as f32;
            *x -= pres;
        }
    }
}

/// What [`crate::ops::sampling::sampler_forward`] returns for one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerOutput {
    pub sampled: Vec<i64>,
    /// Per row: the sampled token then the top-n (empty without logprobs).
    pub logprob_token_ids: Vec<Vec<i64>>,
    pub logprobs: Vec<Vec<f32>>,
    pub ranks: Vec<i64>,
}

/// vLLM's sampler, step by step on f32 rows.
pub fn sampler_forward(logits: &TensorView, md: &SamplingMetadata) -> SamplerOutput {
    let rows = rows_of(logits);
    let vocab = logits.shape()[1];
    let mut out = SamplerOutput {
        sampled: vec![],
        logprob_token_ids: vec![],
        logprobs: vec![],
        ranks: vec![],
    };
    for (b, raw) in rows.iter().enumerate() {
        let mut row = raw.clone();
        let (pres, freq, rep) = (
            md.presence_penalties.as_ref().map_or(0.0, |p| f32_at(p, b)),
            md.frequency_penalties
                .as_ref()
                .map_or(0.0, |p| f32_at(p, b)),
            md.repetition_penalties
                .as_ref()
                .map_or(1.0, |p| f32_at(p, b)),
        );
        let prompt = token_list(md.prompt_token_ids, b, md.pad_token_id);
        let output = token_list(md.output_token_ids, b, md.pad_token_id);
        penalize(&mut row, &prompt, &output, pres, freq, rep);
        let temp = md.temperature.as_ref().map(|t| f32_at(t, b));
        let tok = match temp {
            Some(t) if t >= SAMPLING_EPS => {
                let y: Vec<f32> = row.iter().map(|&x| x / t).collect();
                let k = md.top_k.as_ref().map_or(0, |k| i64_at(k, b));
                let f = RowFilter {
                    top_k: if k <= 0 || k as usize >= vocab {
                        0
                    } else {
                        k as usize
                    },
                    top_p: md.top_p.as_ref().map_or(1.0, |p| f32_at(p, b)),
                    min_p: md.min_p.as_ref().map_or(0.0, |p| f32_at(p, b)),
                    joint: false,
                };
                let kept = kept_mask(&y, true, &f);
                let (s, sub, o) = rng_of(&md.seed, &md.offset, b);
                draw(&y, true, &kept, uniform_bits(s, sub, o))
            }
            _ => {
                let m = row_max(&row);
                row.iter().position(|&x| x == m).expect("a finite max")
            }
        };
        out.sampled.push(tok as i64);
        if let Some(n) = md.max_num_logprobs {
            let lp = log_softmax(raw);
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &c| key(raw[c]).cmp(&key(raw[a])).then(a.cmp(&c)));
            let mut ids = vec![tok as i64];
            ids.extend(order[..n].iter().map(|&i| i as i64));
            out.logprobs
                .push(ids.iter().map(|&i| lp[i as usize] as f32).collect());
            out.logprob_token_ids.push(ids);
            out.ranks
                .push(raw.iter().filter(|&&v| v >= raw[tok]).count() as i64);
        }
    }
    out
}
