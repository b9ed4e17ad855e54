//! Attention benchmark cases (issue #3).
//!
//! * Decode: one query per sequence through `paged_attention_v1`,
//!   `paged_attention_v2` (contexts ≥ 4k, where vLLM picks it) and
//!   `flash_attn_varlen_func` (flash layout, NHD), for B ∈ {1, 8, 32, 256}
//!   and context ∈ {512, 4k, 32k} (B·context ≤ 1M tokens: B = 256 at 32k
//!   would read 17-34 GB per call), heads of Qwen3-Next (16 q / 2 kv, D 256)
//!   and Llama (32 / 8, D 128), bf16 or fp8 e4m3 KV, block size 16.
//! * Cold: the key and value caches fill one arena of [`Config::cold_bytes`]
//!   (≥ 256 MiB and 2x the last-level cache) per cache dtype, shared by all
//!   cases of that dtype and filled once with values like a real cache's
//!   ([`fill_kv`]; zeros would hide data-dependent costs, such as the fp8
//!   subnormal codes that slowed the paged decode before session 13). Block
//!   tables are shuffled; successive calls use disjoint windows of one
//!   permutation of the blocks when the batch fits the arena several times,
//!   else random blocks (with repeats) from the whole arena.
//! * Bytes counted: the K and V bytes each sequence reads (the query and
//!   output are negligible); flops: 4·B·H·context·D. Floor: ≥ 80% of the
//!   measured DRAM read bandwidth at context ≥ 4k.
//! * Prefill: one causal sequence of T ∈ {512, 2048, 8192} tokens through
//!   `flash_attn_varlen_func`, bf16; flops 2·T·(T+1)·H·D against the tier's
//!   measured bf16 peak ([`crate::probe::bf16_peak`]: `vdpbf16ps`, or the
//!   AMX tiles on the amx tier). Floor: ≥ 40% of it at T ≥ 2048.

use std::cell::RefCell;
use std::rc::Rc;

use half::bf16;

use super::{AlignedBuf, Bound, Case, CaseInfo, Config, Floor, Peak, Rng, Runner, Work};
use crate::dtype::DType;
use crate::tensor::{TensorView, TensorViewMut};

const BLOCK_SIZE: usize = 16;

/// Head configuration of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub name: &'static str,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_size: usize,
}

pub const QWEN3_NEXT: Heads = Heads {
    name: "qwen3next",
    heads: 16,
    kv_heads: 2,
    head_size: 256,
};
pub const LLAMA: Heads = Heads {
    name: "llama",
    heads: 32,
    kv_heads: 8,
    head_size: 128,
};

/// Which decode op a case calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeOp {
    V1,
    V2,
    Varlen,
}

impl DecodeOp {
    fn name(self) -> &'static str {
        match self {
            DecodeOp::V1 => "paged_attention_v1",
            DecodeOp::V2 => "paged_attention_v2",
            DecodeOp::Varlen => "flash_attn_varlen_func",
        }
    }
}

/// One decode case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeShape {
    pub op: DecodeOp,
    pub model: Heads,
    pub batch: usize,
    pub context: usize,
    pub fp8: bool,
}

impl DecodeShape {
    fn elem(&self) -> usize {
        if self.fp8 {
            1
        } else {
            2
        }
    }

    /// K and V bytes one call reads.
    pub fn bytes(&self) -> f64 {
        let m = self.model;
        (self.batch * self.context * m.kv_heads * m.head_size * 2 * self.elem()) as f64
    }

    pub fn flops(&self) -> f64 {
        let m = self.model;
        4.0 * (self.batch * m.heads * self.context * m.head_size) as f64
    }
}

/// The decode shapes of issue #3.
pub fn decode_shapes() -> Vec<DecodeShape> {
    let mut v = Vec::new();
    for op in [DecodeOp::V1, DecodeOp::V2, DecodeOp::Varlen] {
        for model in [QWEN3_NEXT, LLAMA] {
            for fp8 in [false, true] {
                for context in [512, 4096, 32768] {
                    for batch in [1, 8, 32, 256] {
                        if batch * context > 1 << 20 || (op == DecodeOp::V2 && context < 4096) {
                            continue;
                        }
                        v.push(DecodeShape {
                            op,
                            model,
                            batch,
                            context,
                            fp8,
                        });
                    }
                }
            }
        }
    }
    v
}

/// The cold arenas the decode cases' caches live in, one per cache dtype
/// (bf16, fp8), each allocated and filled by the first case that uses it.
type Arena = Rc<RefCell<[Option<AlignedBuf>; 2]>>;

fn arena_buf(
    arena: &Arena,
    bytes: usize,
    fp8: bool,
    seed: u64,
) -> std::cell::RefMut<'_, AlignedBuf> {
    std::cell::RefMut::map(arena.borrow_mut(), |a| {
        a[fp8 as usize].get_or_insert_with(|| {
            let mut buf = AlignedBuf::new(bytes, 4096, 0u8);
            fill_kv(&mut buf, fp8, seed);
            buf
        })
    })
}

/// Fills a KV arena with samples of a unit normal, as bf16 or as fp8 e4m3
/// codes quantised with the scale the cases pass (1.0): like the keys and
/// values of a real cache, with about 1% subnormal fp8 codes (|x| < 2^-6)
/// and a few zeros. The samples come from a table of 4096 drawn once, picked
/// by 12 random bits each: about 0.35 s of one core for 256 MiB.
pub fn fill_kv(buf: &mut [u8], fp8: bool, seed: u64) {
    const N: usize = 4096;
    let mut rng = Rng(seed);
    let unit = |rng: &mut Rng| ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64; // (0, 1]
    let table: Vec<u64> = (0..N)
        .map(|_| {
            let (u, v) = (unit(&mut rng), unit(&mut rng));
            let x = ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32;
            if fp8 {
                crate::dtype::F8E4M3::from_f32(x).0 as u64
            } else {
                bf16::from_f32(x).to_bits() as u64
            }
        })
        .collect();
    let pick = |r: u64, k: usize| table[(r >> (16 * k)) as usize % N];
    for chunk in buf.chunks_mut(8) {
        let w = if fp8 {
            let (r0, r1) = (rng.next_u64(), rng.next_u64());
            (0..8).fold(0, |w, k| {
                w | (pick(if k < 4 { r0 } else { r1 }, k % 4) << (8 * k))
            })
        } else {
            let r = rng.next_u64();
            (0..4).fold(0, |w, k| w | (pick(r, k) << (16 * k)))
        };
        chunk.copy_from_slice(&w.to_le_bytes()[..chunk.len()]);
    }
}

fn decode_case(shape: DecodeShape, cfg: &Config, arena: Arena) -> Case {
    let m = shape.model;
    let info = CaseInfo {
        family: "attention",
        op: shape.op.name(),
        shape: format!(
            "B={} ctx={} H={}/{} D={} bs={BLOCK_SIZE}",
            shape.batch, shape.context, m.heads, m.kv_heads, m.head_size
        ),
        dtype: if shape.fp8 { "bf16/fp8e4m3" } else { "bf16" }.into(),
        work: Work {
            bytes: shape.bytes(),
            flops: shape.flops(),
            bound: Bound::Read,
            peak: Peak::Fp32,
        },
        floor: (shape.context >= 4096).then_some(Floor::MinFraction(0.8)),
    };
    let arena_bytes = cfg.cold_bytes();
    let seed = cfg.seed ^ (shape.batch * 977 + shape.context * 31 + m.heads) as u64;
    let arena_seed = cfg.seed;
    Case::new(info, move || {
        decode_runner(shape, arena, arena_bytes, seed, arena_seed)
    })
}

fn decode_runner(
    s: DecodeShape,
    arena: Arena,
    arena_bytes: usize,
    seed: u64,
    arena_seed: u64,
) -> Runner {
    let m = s.model;
    let (b, h, hkv, d, es) = (s.batch, m.heads, m.kv_heads, m.head_size, s.elem());
    let half = arena_bytes / 2;
    let block_bytes = BLOCK_SIZE * hkv * d * es;
    let nb = half / block_bytes;
    let cache_bytes = nb * block_bytes;
    drop(arena_buf(&arena, arena_bytes, s.fp8, arena_seed));
    let per_seq = s.context.div_ceil(BLOCK_SIZE);
    let need = b * per_seq;
    let mut rng = Rng(seed);
    let mut ids: Vec<i32> = (0..nb as i32).collect();
    rng.shuffle(&mut ids);
    let tables: Vec<Vec<i32>> = if need <= nb / 2 {
        ids.chunks_exact(need)
            .take(64)
            .map(|c| c.to_vec())
            .collect()
    } else {
        (0..4)
            .map(|_| (0..need).map(|_| ids[rng.below(nb)]).collect())
            .collect()
    };
    let q: Vec<bf16> = (0..b * h * d)
        .map(|_| bf16::from_f32(rng.uniform()))
        .collect();
    let mut out = vec![bf16::ZERO; b * h * d];
    let lens = vec![s.context as i32; b];
    let cu: Vec<i32> = (0..=b as i32).collect();
    let np = s.context.div_ceil(crate::ops::attention::PARTITION_SIZE);
    let (mut es_buf, mut ml_buf) = (vec![0f32; b * h * np], vec![0f32; b * h * np]);
    let mut tmp = if s.op == DecodeOp::V2 {
        vec![bf16::ZERO; b * h * np * d]
    } else {
        Vec::new()
    };
    let scale_one = [1.0f32];
    let (dtype, kv_name) = if s.fp8 {
        (DType::F8E4M3, "fp8_e4m3")
    } else {
        (DType::BF16, "auto")
    };
    let x = 16 / es;
    let (kshape, vshape): (Vec<usize>, Vec<usize>) = match s.op {
        DecodeOp::Varlen => (vec![nb, BLOCK_SIZE, hkv, d], vec![nb, BLOCK_SIZE, hkv, d]),
        _ => (
            vec![nb, hkv, d / x, BLOCK_SIZE, x],
            vec![nb, hkv, d, BLOCK_SIZE],
        ),
    };
    let scale = 1.0 / (d as f32).sqrt();
    let mut call = 0usize;
    Box::new(move || {
        let a = arena_buf(&arena, arena_bytes, s.fp8, arena_seed);
        let (kb, vb) = a[..].split_at(half);
        let kc = TensorView::from_bytes(&kb[..cache_bytes], dtype, &kshape, None).unwrap();
        let vc = TensorView::from_bytes(&vb[..cache_bytes], dtype, &vshape, None).unwrap();
        let bt = TensorView::new(&tables[call % tables.len()], &[b, per_seq]).unwrap();
        call += 1;
        let qv = TensorView::new(&q, &[b, h, d]).unwrap();
        let lv = TensorView::new(&lens, &[b]).unwrap();
        let sv = TensorView::new(&scale_one, &[1]).unwrap();
        let mut ov = TensorViewMut::new(&mut out, &[b, h, d]).unwrap();
        let r = match s.op {
            DecodeOp::V1 => crate::paged_attention_v1(
                &mut ov,
                &qv,
                &kc,
                &vc,
                hkv,
                scale,
                &bt,
                &lv,
                BLOCK_SIZE,
                s.context,
                None,
                kv_name,
                Some(&sv),
                Some(&sv),
            ),
            DecodeOp::V2 => crate::paged_attention_v2(
                &mut ov,
                &mut TensorViewMut::new(&mut es_buf, &[b, h, np]).unwrap(),
                &mut TensorViewMut::new(&mut ml_buf, &[b, h, np]).unwrap(),
                &mut TensorViewMut::new(&mut tmp, &[b, h, np, d]).unwrap(),
                &qv,
                &kc,
                &vc,
                hkv,
                scale,
                &bt,
                &lv,
                BLOCK_SIZE,
                s.context,
                None,
                kv_name,
                Some(&sv),
                Some(&sv),
            ),
            DecodeOp::Varlen => crate::flash_attn_varlen_func(
                &qv,
                &kc,
                &vc,
                1,
                &TensorView::new(&cu, &[b + 1]).unwrap(),
                s.context,
                &lv,
                Some(scale),
                true,
                (-1, -1),
                0.0,
                None,
                &bt,
                None,
                &mut ov,
                Some(&sv),
                Some(&sv),
                None,
            ),
        };
        r.expect("benchmark arguments are valid");
    })
}

/// One causal prefill case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillShape {
    pub model: Heads,
    pub tokens: usize,
}

impl PrefillShape {
    pub fn flops(&self) -> f64 {
        let t = self.tokens as f64;
        2.0 * t * (t + 1.0) * (self.model.heads * self.model.head_size) as f64
    }

    /// Q, K, V read and the output written, once.
    pub fn bytes(&self) -> f64 {
        let m = self.model;
        (self.tokens * (2 * m.heads + 2 * m.kv_heads) * m.head_size * 2) as f64
    }
}

pub fn prefill_shapes() -> Vec<PrefillShape> {
    let mut v = Vec::new();
    for model in [QWEN3_NEXT, LLAMA] {
        for tokens in [512, 2048, 8192] {
            v.push(PrefillShape { model, tokens });
        }
    }
    v
}

fn prefill_case(shape: PrefillShape, cfg: &Config) -> Case {
    let m = shape.model;
    let info = CaseInfo {
        family: "attention",
        op: "flash_attn_varlen_func",
        shape: format!(
            "prefill T={} H={}/{} D={} causal",
            shape.tokens, m.heads, m.kv_heads, m.head_size
        ),
        dtype: "bf16".into(),
        work: Work {
            bytes: shape.bytes(),
            flops: shape.flops(),
            bound: Bound::Read,
            peak: Peak::Bf16,
        },
        floor: (shape.tokens >= 2048).then_some(Floor::MinFraction(0.4)),
    };
    let seed = cfg.seed ^ (shape.tokens * 7 + m.heads) as u64;
    Case::new(info, move || {
        let (t, h, hkv, d) = (shape.tokens, m.heads, m.kv_heads, m.head_size);
        let nb = t.div_ceil(BLOCK_SIZE);
        let mut rng = Rng(seed);
        let mut gen =
            |n: usize| -> Vec<bf16> { (0..n).map(|_| bf16::from_f32(rng.uniform())).collect() };
        let kc = gen(nb * BLOCK_SIZE * hkv * d);
        let vc = gen(nb * BLOCK_SIZE * hkv * d);
        let q = gen(t * h * d);
        let mut out = vec![bf16::ZERO; t * h * d];
        let table: Vec<i32> = (0..nb as i32).collect();
        let (cu, used) = ([0i32, t as i32], [t as i32]);
        Box::new(move || {
            crate::flash_attn_varlen_func(
                &TensorView::new(&q, &[t, h, d]).unwrap(),
                &TensorView::new(&kc, &[nb, BLOCK_SIZE, hkv, d]).unwrap(),
                &TensorView::new(&vc, &[nb, BLOCK_SIZE, hkv, d]).unwrap(),
                t,
                &TensorView::new(&cu, &[2]).unwrap(),
                t,
                &TensorView::new(&used, &[1]).unwrap(),
                None,
                true,
                (-1, -1),
                0.0,
                None,
                &TensorView::new(&table, &[1, nb]).unwrap(),
                None,
                &mut TensorViewMut::new(&mut out, &[t, h, d]).unwrap(),
                None,
                None,
                None,
            )
            .expect("benchmark arguments are valid");
        })
    })
}

/// Every attention case: decode cases share one cold arena per cache dtype.
pub fn cases(cfg: &Config) -> Vec<Case> {
    let arena: Arena = Rc::new(RefCell::new([None, None]));
    let mut v: Vec<Case> = decode_shapes()
        .into_iter()
        .map(|s| decode_case(s, cfg, arena.clone()))
        .collect();
    v.extend(prefill_shapes().into_iter().map(|s| prefill_case(s, cfg)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::F8E4M3;

    /// The arena fill looks like a unit normal in both dtypes, and the fp8
    /// one has the subnormal codes (and no NaN codes) a real cache has.
    #[test]
    fn fill_kv_is_unit_normal_with_subnormal_fp8_codes() {
        let mut buf = vec![0u8; 1 << 20];
        fill_kv(&mut buf, true, 7);
        let (mut sub, mut sum2) = (0usize, 0f64);
        for &c in &buf {
            assert!(c & 0x7f != 0x7f, "NaN code");
            sub += (c & 0x78 == 0 && c & 7 != 0) as usize;
            sum2 += (F8E4M3(c).to_f32() as f64).powi(2);
        }
        let n = buf.len() as f64;
        assert!(
            (0.004..0.03).contains(&(sub as f64 / n)),
            "subnormals {sub}"
        );
        assert!((0.85..1.15).contains(&(sum2 / n)), "variance {}", sum2 / n);

        fill_kv(&mut buf, false, 7);
        let x: Vec<f32> = buf
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert!(x.iter().all(|v| v.is_finite()));
        let var = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64;
        assert!((0.85..1.15).contains(&var), "variance {var}");
        let mut other = vec![0u8; 1 << 20];
        fill_kv(&mut other, false, 8);
        assert!(other != buf, "the seed picks the values");
    }
}
