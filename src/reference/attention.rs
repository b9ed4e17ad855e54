//! Reference attention: for each sequence, gather its keys and values out of
//! the cache (fp8 dequantised as `fp8 · scale`, exactly, in f64), then a
//! masked softmax in f64. The reference rounds where the kernels round: the
//! probabilities to the query dtype before P·V, v2's `tmp_out` to the query
//! dtype and its `exp_sums` / `max_logits` to f32, and the output once.
//!
//! Arguments are assumed valid (the launchers in [`crate::ops::attention`]
//! validate); these functions panic on bad input.

use crate::dtype::{load_f32, store_f32, DType};
use crate::ops::attention::PARTITION_SIZE;
use crate::ops::cache::KvCacheDtype;
use crate::tensor::{TensorView, TensorViewMut};

/// `x` rounded to `dtype` (through f32), as a kernel stores it.
pub fn round_to(x: f64, dtype: DType) -> f64 {
    load_f32(store_f32(x as f32, dtype), dtype) as f64
}

/// Reads K/V rows of one sequence out of a paged (vLLM) or flash cache.
struct Cache<'a> {
    key: &'a TensorView<'a>,
    value: &'a TensorView<'a>,
    flash: bool,
    stored: DType,
    block_size: usize,
}

impl Cache<'_> {
    fn element(&self, t: &TensorView, idx: &[usize]) -> f64 {
        load_f32(t.get_bits(idx) as u32, self.stored) as f64
    }

    /// Key row of token `tok` of a sequence whose block table row is `blocks`.
    fn key_row(&self, blocks: &[usize], tok: usize, kvh: usize, d: usize, scale: f64) -> Vec<f64> {
        let (b, o) = (blocks[tok / self.block_size], tok % self.block_size);
        (0..d)
            .map(|i| {
                let v = if self.flash {
                    self.element(self.key, &[b, o, kvh, i])
                } else {
                    let x = self.key.shape()[4];
                    self.element(self.key, &[b, kvh, i / x, o, i % x])
                };
                v * scale
            })
            .collect()
    }

    fn value_row(
        &self,
        blocks: &[usize],
        tok: usize,
        kvh: usize,
        d: usize,
        scale: f64,
    ) -> Vec<f64> {
        let (b, o) = (blocks[tok / self.block_size], tok % self.block_size);
        (0..d)
            .map(|i| {
                let v = if self.flash {
                    self.element(self.value, &[b, o, kvh, i])
                } else {
                    self.element(self.value, &[b, kvh, i, o])
                };
                v * scale
            })
            .collect()
    }
}

fn stored_dtype(kv_cache_dtype: &str, query: DType) -> DType {
    match KvCacheDtype::parse(kv_cache_dtype).expect("valid kv_cache_dtype") {
        KvCacheDtype::Auto => query,
        KvCacheDtype::Float16 => DType::F16,
        KvCacheDtype::BFloat16 => DType::BF16,
        KvCacheDtype::Fp8E4M3 => DType::F8E4M3,
        KvCacheDtype::Fp8E5M2 => DType::F8E5M2,
    }
}

/// An fp8 scale for kv head `kvh` of sequence `seq`: shape `[1]`, `[Hkv]` or `[B, Hkv]`.
fn scale_of(s: Option<&TensorView>, seq: usize, kvh: usize, stored: DType) -> f64 {
    match s {
        Some(s) if stored.is_fp8() => {
            let v = match s.ndim() {
                0 => s.get_f32(&[]),
                1 if s.shape()[0] == 1 => s.get_f32(&[0]),
                1 => s.get_f32(&[kvh]),
                _ => s.get_f32(&[seq, kvh]),
            };
            v as f64
        }
        _ => 1.0,
    }
}

fn slope_of(s: Option<&TensorView>, seq: usize, h: usize) -> f64 {
    match s {
        None => 0.0,
        Some(s) if s.ndim() == 1 => s.get_f32(&[h]) as f64,
        Some(s) => s.get_f32(&[seq, h]) as f64,
    }
}

fn block_row(block_tables: &TensorView, seq: usize) -> Vec<usize> {
    (0..block_tables.shape()[1])
        .map(|i| block_tables.get_i64(&[seq, i]).max(0) as usize)
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_ignoring_nan(xs: impl Iterator<Item = f64>, init: f64) -> f64 {
    xs.fold(init, f64::max)
}

/// One head of one sequence over tokens `range`, vLLM's way: normalised
/// probabilities `e / (sum + 1e-6)` rounded to `dtype`; returns
/// (unrounded output, max logit, exp sum).
#[allow(clippy::too_many_arguments)]
fn paged_part(
    q: &[f64],
    cache: &Cache,
    blocks: &[usize],
    kvh: usize,
    range: std::ops::Range<usize>,
    seq_len: usize,
    scale: f64,
    slope: f64,
    ks: f64,
    vs: f64,
    dtype: DType,
) -> (Vec<f64>, f64, f64) {
    let d = q.len();
    let logits: Vec<f64> = range
        .clone()
        .map(|t| {
            let k = cache.key_row(blocks, t, kvh, d, ks);
            scale * dot(q, &k) + slope * (t as f64 - seq_len as f64 + 1.0)
        })
        .collect();
    let mx = max_ignoring_nan(logits.iter().copied(), -(f32::MAX as f64));
    let e: Vec<f64> = logits.iter().map(|s| (s - mx).exp()).collect();
    let sum: f64 = e.iter().sum();
    let mut o = vec![0.0; d];
    for (i, t) in range.enumerate() {
        let p = round_to(e[i] / (sum + 1e-6), dtype);
        let v = cache.value_row(blocks, t, kvh, d, vs);
        for (acc, x) in o.iter_mut().zip(&v) {
            *acc += p * x;
        }
    }
    (o, mx, sum)
}

fn query_row(query: &TensorView, tok: usize, h: usize) -> Vec<f64> {
    (0..query.shape()[2])
        .map(|i| query.get_f32(&[tok, h, i]) as f64)
        .collect()
}

fn write_row(out: &mut TensorViewMut, tok: usize, h: usize, row: &[f64]) {
    for (i, &v) in row.iter().enumerate() {
        out.set_f32(&[tok, h, i], v as f32);
    }
}

/// `paged_attention_v1`: out `[S, H, D]`, paged cache, see the launcher.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_v1(
    out: &mut TensorViewMut,
    query: &TensorView,
    key_cache: &TensorView,
    value_cache: &TensorView,
    num_kv_heads: usize,
    scale: f32,
    block_tables: &TensorView,
    seq_lens: &TensorView,
    alibi_slopes: Option<&TensorView>,
    kv_cache_dtype: &str,
    k_scale: Option<&TensorView>,
    v_scale: Option<&TensorView>,
) {
    let (s, h, _) = (query.shape()[0], query.shape()[1], query.shape()[2]);
    let stored = stored_dtype(kv_cache_dtype, query.dtype());
    let cache = Cache {
        key: key_cache,
        value: value_cache,
        flash: false,
        stored,
        block_size: key_cache.shape()[3],
    };
    let g = h / num_kv_heads;
    for seq in 0..s {
        let len = seq_lens.get_i64(&[seq]) as usize;
        let blocks = block_row(block_tables, seq);
        for head in 0..h {
            let kvh = head / g;
            let (o, _, _) = paged_part(
                &query_row(query, seq, head),
                &cache,
                &blocks,
                kvh,
                0..len,
                len,
                scale as f64,
                slope_of(alibi_slopes, seq, head),
                scale_of(k_scale, seq, kvh, stored),
                scale_of(v_scale, seq, kvh, stored),
                query.dtype(),
            );
            write_row(out, seq, head, &o);
        }
    }
}

/// `paged_attention_v2`: as v1 with partitions of [`PARTITION_SIZE`] tokens;
/// writes `exp_sums`, `max_logits` and `tmp_out` of each used partition
/// (others untouched), then reduces them into `out`.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_v2(
    out: &mut TensorViewMut,
    exp_sums: &mut TensorViewMut,
    max_logits: &mut TensorViewMut,
    tmp_out: &mut TensorViewMut,
    query: &TensorView,
    key_cache: &TensorView,
    value_cache: &TensorView,
    num_kv_heads: usize,
    scale: f32,
    block_tables: &TensorView,
    seq_lens: &TensorView,
    alibi_slopes: Option<&TensorView>,
    kv_cache_dtype: &str,
    k_scale: Option<&TensorView>,
    v_scale: Option<&TensorView>,
) {
    let (s, h, d) = (query.shape()[0], query.shape()[1], query.shape()[2]);
    let dtype = query.dtype();
    let stored = stored_dtype(kv_cache_dtype, dtype);
    let cache = Cache {
        key: key_cache,
        value: value_cache,
        flash: false,
        stored,
        block_size: key_cache.shape()[3],
    };
    let g = h / num_kv_heads;
    for seq in 0..s {
        let len = seq_lens.get_i64(&[seq]) as usize;
        let blocks = block_row(block_tables, seq);
        let np = len.div_ceil(PARTITION_SIZE);
        for head in 0..h {
            let kvh = head / g;
            let q = query_row(query, seq, head);
            for part in 0..np {
                let range = part * PARTITION_SIZE..((part + 1) * PARTITION_SIZE).min(len);
                let (o, mx, sum) = paged_part(
                    &q,
                    &cache,
                    &blocks,
                    kvh,
                    range,
                    len,
                    scale as f64,
                    slope_of(alibi_slopes, seq, head),
                    scale_of(k_scale, seq, kvh, stored),
                    scale_of(v_scale, seq, kvh, stored),
                    dtype,
                );
                exp_sums.set_f32(&[seq, head, part], sum as f32);
                max_logits.set_f32(&[seq, head, part], mx as f32);
                for (i, &v) in o.iter().enumerate() {
                    tmp_out.set_f32(&[seq, head, part, i], v as f32);
                }
            }
            // The reduction reads back what was stored (f32 sums and maxima,
            // tmp_out in the query dtype).
            if np == 1 {
                for i in 0..d {
                    let bits = tmp_out.view().get_bits(&[seq, head, 0, i]);
                    out.set_bits(&[seq, head, i], bits);
                }
                continue;
            }
            let ml: Vec<f64> = (0..np)
                .map(|p| max_logits.view().get_f32(&[seq, head, p]) as f64)
                .collect();
            let es: Vec<f64> = (0..np)
                .map(|p| exp_sums.view().get_f32(&[seq, head, p]) as f64)
                .collect();
            let mx = max_ignoring_nan(ml.iter().copied(), -(f32::MAX as f64));
            let w: Vec<f64> = (0..np).map(|p| es[p] * (ml[p] - mx).exp()).collect();
            let total: f64 = w.iter().sum();
            let row: Vec<f64> = (0..d)
                .map(|i| {
                    (0..np)
                        .map(|p| tmp_out.view().get_f32(&[seq, head, p, i]) as f64 * w[p])
                        .sum::<f64>()
                        / (total + 1e-6)
                })
                .collect();
            write_row(out, seq, head, &row);
        }
    }
}

/// `flash_attn_varlen_func` over a flash-layout paged cache (see the
/// launcher for the arguments). Each query row attends the keys its causal
/// and window limits allow; logits are `scale·q·k`, soft-capped, then biased
/// by `-slope·|pos − j|`. With `M` the row's maximum logit (the sink
/// included), probabilities `exp(s − M)` are rounded to the query dtype
/// before P·V and the output divides by the unrounded sum (sink included).
/// Empty rows give 0 and LSE −∞ (the sink's logit with a sink).
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_varlen_func(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    cu_seqlens_q: &TensorView,
    seqused_k: &TensorView,
    softmax_scale: f32,
    causal: bool,
    window_size: (i64, i64),
    softcap: f32,
    alibi_slopes: Option<&TensorView>,
    block_table: &TensorView,
    mut softmax_lse: Option<&mut TensorViewMut>,
    out: &mut TensorViewMut,
    k_descale: Option<&TensorView>,
    v_descale: Option<&TensorView>,
    s_aux: Option<&TensorView>,
) {
    let (h, d) = (q.shape()[1], q.shape()[2]);
    let hkv = k.shape()[2];
    let g = h / hkv;
    let dtype = q.dtype();
    let cache = Cache {
        key: k,
        value: v,
        flash: true,
        stored: k.dtype(),
        block_size: k.shape()[1],
    };
    let batch = seqused_k.shape()[0];
    for seq in 0..batch {
        let q0 = cu_seqlens_q.get_i64(&[seq]) as usize;
        let q_len = cu_seqlens_q.get_i64(&[seq + 1]) as usize - q0;
        let k_len = seqused_k.get_i64(&[seq]) as usize;
        let blocks = block_row(block_table, seq);
        for kvh in 0..hkv {
            let ks = scale_of(k_descale, seq, kvh, cache.stored);
            let vs = scale_of(v_descale, seq, kvh, cache.stored);
            let keys: Vec<Vec<f64>> = (0..k_len)
                .map(|t| cache.key_row(&blocks, t, kvh, d, ks))
                .collect();
            let values: Vec<Vec<f64>> = (0..k_len)
                .map(|t| cache.value_row(&blocks, t, kvh, d, vs))
                .collect();
            for i in 0..q_len {
                let pos = i as i64 + k_len as i64 - q_len as i64;
                let mut hi = k_len as i64;
                let mut lo = 0i64;
                if causal {
                    hi = hi.min(pos + 1);
                }
                if window_size.1 >= 0 {
                    hi = hi.min(pos + window_size.1 + 1);
                }
                if window_size.0 >= 0 {
                    lo = lo.max(pos - window_size.0);
                }
                let range = if lo < hi {
                    lo as usize..hi as usize
                } else {
                    0..0
                };
                for gi in 0..g {
                    let head = kvh * g + gi;
                    let qr = query_row(q, q0 + i, head);
                    let slope = slope_of(alibi_slopes, seq, head);
                    let logits: Vec<f64> = range
                        .clone()
                        .map(|j| {
                            let mut s = softmax_scale as f64 * dot(&qr, &keys[j]);
                            if softcap > 0.0 {
                                s = softcap as f64 * (s / softcap as f64).tanh();
                            }
                            s - slope * (pos - j as i64).abs() as f64
                        })
                        .collect();
                    let sink = s_aux.map(|s| s.get_f32(&[head]) as f64);
                    let mx =
                        max_ignoring_nan(logits.iter().copied().chain(sink), f64::NEG_INFINITY);
                    let mut o = vec![0.0; d];
                    let mut sum = 0.0;
                    if mx != f64::NEG_INFINITY {
                        for (s, j) in logits.iter().zip(range.clone()) {
                            let e = (s - mx).exp();
                            sum += e;
                            let p = round_to(e, dtype);
                            for (acc, x) in o.iter_mut().zip(&values[j]) {
                                *acc += p * x;
                            }
                        }
                        if let Some(sk) = sink {
                            sum += (sk - mx).exp();
                        }
                    }
                    let (row, lse): (Vec<f64>, f64) = if sum == 0.0 {
                        (vec![0.0; d], f64::NEG_INFINITY)
                    } else {
                        (o.iter().map(|x| x / sum).collect(), mx + sum.ln())
                    };
                    write_row(out, q0 + i, head, &row);
                    if let Some(l) = softmax_lse.as_deref_mut() {
                        l.set_f32(&[head, q0 + i], lse as f32);
                    }
                }
            }
        }
    }
}

/// `merge_attn_states`: out = (p_out·e^{p_lse} + s_out·e^{s_lse}) / (e^{p_lse} + e^{s_lse});
/// +∞ LSEs read as −∞ (an empty state, FA2's convention); a state of weight 0
/// contributes nothing (its output is not read); two empty states give 0 and
/// LSE −∞.
pub fn merge_attn_states(
    output: &mut TensorViewMut,
    prefix_output: &TensorView,
    prefix_lse: &TensorView,
    suffix_output: &TensorView,
    suffix_lse: &TensorView,
    mut output_lse: Option<&mut TensorViewMut>,
) {
    let (n, h, d) = (output.shape()[0], output.shape()[1], output.shape()[2]);
    let fix = |x: f64| {
        if x == f64::INFINITY {
            f64::NEG_INFINITY
        } else {
            x
        }
    };
    for t in 0..n {
        for head in 0..h {
            let pl = fix(prefix_lse.get_f32(&[head, t]) as f64);
            let sl = fix(suffix_lse.get_f32(&[head, t]) as f64);
            let mx = pl.max(sl);
            let (ps, ss, lse) = if mx == f64::NEG_INFINITY {
                (0.0, 0.0, f64::NEG_INFINITY)
            } else {
                let (pe, se) = ((pl - mx).exp(), (sl - mx).exp());
                (pe / (pe + se), se / (pe + se), (pe + se).ln() + mx)
            };
            if let Some(l) = output_lse.as_deref_mut() {
                l.set_f32(&[head, t], lse as f32);
            }
            for i in 0..d {
                let mut v = 0.0;
                if ps != 0.0 {
                    v += prefix_output.get_f32(&[t, head, i]) as f64 * ps;
                }
                if ss != 0.0 {
                    v += suffix_output.get_f32(&[t, head, i]) as f64 * ss;
                }
                output.set_f32(&[t, head, i], v as f32);
            }
        }
    }
}
