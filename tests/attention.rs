//! Attention ops against the f64 reference, on every ISA tier.
//!
//! Tolerance (the ops' documented contract, `src/ops/attention.rs`):
//! `|got − ref| ≤ atol·max|v| + rtol·|ref|` with (atol, rtol) = (5e-6, 5e-6)
//! for f32, (8e-4, 1e-3) for f16, (6e-3, 8e-3) for bf16 queries; LSEs within
//! 2e-4·(1 + |lse|). `ATTN_WORST=1` prints the worst error / tolerance ratio
//! of each comparison (under 0.4 when this was written).
//!
//! Every cache is poisoned: slots no sequence uses hold NaN (the fp8 NaN
//! code for fp8 caches), block tables are shuffled and their unused entries
//! hold garbage block ids, so any read outside a sequence shows up as NaN.

mod common;

use common::{for_each_isa, with_threads, Rng};
use proptest::prelude::*;
use xpu_ops::dtype::{store_f32, DType};
use xpu_ops::reference::attention as reference;
use xpu_ops::{Status, TensorView, TensorViewMut};

/// Every ISA tier; on AVX-512 the decode fast path (where the CPU has it)
/// and both general bf16 paths (`vdpbf16ps` and fp32 FMA); on AVX2 the
/// decode fast path and the general path.
fn for_each_path(mut f: impl FnMut(&str)) {
    for_each_isa(|isa| {
        if isa == xpu_ops::Isa::Avx512 {
            xpu_ops::with_attention_fast_decode(true, || f("avx512+fast"));
            xpu_ops::with_attention_fast_decode(false, || {
                xpu_ops::with_attention_bf16_dot(true, || f("avx512+dpbf16"));
                xpu_ops::with_attention_bf16_dot(false, || f("avx512+fma"));
            });
        } else if isa == xpu_ops::Isa::Amx {
            // AMX decode kernels (bf16 queries) and the avx512 general paths.
            xpu_ops::with_attention_fast_decode(true, || f("amx+fast"));
            xpu_ops::with_attention_fast_decode(false, || f("amx"));
        } else if isa == xpu_ops::Isa::Avx2 {
            xpu_ops::with_attention_fast_decode(true, || f("avx2+fast"));
            xpu_ops::with_attention_fast_decode(false, || f("avx2"));
        } else {
            xpu_ops::with_attention_fast_decode(false, || f(isa.name()));
        }
    });
}

// ---- buffers -------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Buf {
    data: Vec<u64>,
    dtype: DType,
    shape: Vec<usize>,
    strides: Option<Vec<usize>>,
}

impl Buf {
    fn with_bits(dtype: DType, shape: &[usize], bits: u64) -> Buf {
        let n: usize = shape.iter().product();
        let mut b = Buf {
            data: vec![0; (n * dtype.size()).div_ceil(8).max(1)],
            dtype,
            shape: shape.to_vec(),
            strides: None,
        };
        b.fill_bits(bits);
        b
    }
    fn zeros(dtype: DType, shape: &[usize]) -> Buf {
        Buf::with_bits(dtype, shape, 0)
    }
    /// A strided view over a larger backing buffer (`backing` elements).
    fn strided(dtype: DType, shape: &[usize], strides: &[usize], backing: usize, bits: u64) -> Buf {
        let mut b = Buf::with_bits(dtype, &[backing], bits);
        b.shape = shape.to_vec();
        b.strides = Some(strides.to_vec());
        b
    }
    fn fill_bits(&mut self, bits: u64) {
        let size = self.dtype.size();
        let n = self.data.len() * 8 / size;
        let bytes = self.bytes_mut();
        for i in 0..n {
            bytes[i * size..(i + 1) * size].copy_from_slice(&bits.to_le_bytes()[..size]);
        }
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: plain integers reinterpreted as bytes.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr() as *const u8, self.data.len() * 8) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above.
        unsafe {
            std::slice::from_raw_parts_mut(self.data.as_mut_ptr() as *mut u8, self.data.len() * 8)
        }
    }
    fn view(&self) -> TensorView<'_> {
        TensorView::from_bytes(
            self.bytes(),
            self.dtype,
            &self.shape,
            self.strides.as_deref(),
        )
        .unwrap()
    }
    fn view_mut(&mut self) -> TensorViewMut<'_> {
        let (dtype, shape, strides) = (self.dtype, self.shape.clone(), self.strides.clone());
        TensorViewMut::from_bytes(self.bytes_mut(), dtype, &shape, strides.as_deref()).unwrap()
    }
    fn set(&mut self, idx: &[usize], v: f32) {
        self.view_mut().set_f32(idx, v);
    }
    fn set_bits(&mut self, idx: &[usize], bits: u64) {
        self.view_mut().set_bits(idx, bits);
    }
    fn get(&self, idx: &[usize]) -> f32 {
        self.view().get_f32(idx)
    }
    fn i32s(v: &[i32], shape: &[usize]) -> Buf {
        let mut b = Buf::zeros(DType::I32, shape);
        for (i, &x) in v.iter().enumerate() {
            b.bytes_mut()[4 * i..4 * i + 4].copy_from_slice(&x.to_le_bytes());
        }
        b
    }
    fn f32s(v: &[f32], shape: &[usize]) -> Buf {
        let mut b = Buf::zeros(DType::F32, shape);
        for (i, &x) in v.iter().enumerate() {
            b.bytes_mut()[4 * i..4 * i + 4].copy_from_slice(&x.to_le_bytes());
        }
        b
    }
    /// Every element's bits, in row-major index order.
    fn all_bits(&self) -> Vec<u64> {
        indices(&self.shape)
            .iter()
            .map(|i| self.view().get_bits(i))
            .collect()
    }
}

fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &n in shape {
        out = out
            .into_iter()
            .flat_map(|p| {
                (0..n).map(move |i| {
                    let mut q = p.clone();
                    q.push(i);
                    q
                })
            })
            .collect();
    }
    out
}

fn nan_bits(dtype: DType) -> u64 {
    match dtype {
        DType::F8E4M3 | DType::U8 => 0x7f,
        DType::F8E5M2 => 0x7f,
        d => store_f32(f32::NAN, d) as u64,
    }
}

/// (atol relative to max|v|, rtol) of the module docs.
fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (5e-6, 5e-6),
        DType::F16 => (8e-4, 1e-3),
        _ => (6e-3, 8e-3),
    }
}

/// Compares two [.., D] outputs within the dtype's tolerance; NaN must match NaN.
fn assert_close(got: &Buf, want: &Buf, vmax: f64, what: &str) {
    let (atol, rtol) = tolerance(got.dtype);
    let mut worst = 0.0f64;
    for idx in indices(&got.shape) {
        let (g, w) = (got.get(&idx) as f64, want.get(&idx) as f64);
        if w.is_nan() || g.is_nan() {
            assert!(
                w.is_nan() && g.is_nan(),
                "{what} {idx:?}: got {g}, want {w}"
            );
            continue;
        }
        let err = (g - w).abs();
        let tol = atol * vmax + rtol * w.abs();
        worst = worst.max(err / tol);
        assert!(
            err <= tol,
            "{what} {idx:?}: got {g}, want {w} (|err| {err:e} > {tol:e})"
        );
    }
    if std::env::var_os("ATTN_WORST").is_some() {
        eprintln!("WORST {what}: {worst:.3}");
    }
}

fn assert_lse_close(got: &Buf, want: &Buf, tol: f64, what: &str) {
    for idx in indices(&got.shape) {
        let (g, w) = (got.get(&idx) as f64, want.get(&idx) as f64);
        if w.is_infinite() || w.is_nan() {
            assert!(
                g == w || (g.is_nan() && w.is_nan()),
                "{what} {idx:?}: got {g}, want {w}"
            );
            continue;
        }
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what} {idx:?}: got {g}, want {w}"
        );
    }
}

fn random_value(rng: &mut Rng, stored: DType, scale: f32) -> u64 {
    let x = rng.uniform();
    if stored.is_fp8() {
        store_f32(x / scale, stored) as u64
    } else {
        store_f32(x, stored) as u64
    }
}

fn query_dtypes() -> [DType; 3] {
    [DType::F32, DType::F16, DType::BF16]
}

// ---- paged (vLLM v1/v2) cases --------------------------------------------------

#[derive(Clone, Debug)]
struct PagedCase {
    dtype: DType,
    kv: &'static str,
    stored: DType,
    heads: usize,
    kv_heads: usize,
    d: usize,
    bs: usize,
    lens: Vec<i32>,
    query: Buf,
    key_cache: Buf,
    value_cache: Buf,
    block_tables: Buf,
    seq_lens: Buf,
    alibi: Option<Buf>,
    k_scale: Option<Buf>,
    v_scale: Option<Buf>,
    scale: f32,
    max_seq_len: usize,
}

#[derive(Clone, Copy, Debug)]
struct PagedSpec {
    dtype: DType,
    kv: &'static str,
    heads: usize,
    kv_heads: usize,
    d: usize,
    bs: usize,
    alibi: bool,
    per_head_scale: bool,
    strided_query: bool,
    u8_cache: bool,
    seed: u64,
}

impl PagedCase {
    fn new(spec: PagedSpec, lens: &[i32]) -> PagedCase {
        let mut rng = Rng(spec.seed);
        let PagedSpec {
            dtype,
            kv,
            heads,
            kv_heads,
            d,
            bs,
            ..
        } = spec;
        let stored = match kv {
            "auto" => dtype,
            "fp8" | "fp8_e4m3" => DType::F8E4M3,
            "fp8_e5m2" => DType::F8E5M2,
            other => panic!("{other}"),
        };
        let cache_dtype = if stored.is_fp8() && spec.u8_cache {
            DType::U8
        } else {
            stored
        };
        let s = lens.len();
        let x = 16 / stored.size();
        let blocks_per: Vec<usize> = lens.iter().map(|&l| (l as usize).div_ceil(bs)).collect();
        let max_blocks = blocks_per.iter().copied().max().unwrap_or(0) + 1;
        let nb = blocks_per.iter().sum::<usize>() + 3;
        // Shuffled block ids; unused table entries hold garbage.
        let mut ids: Vec<i32> = (0..nb as i32).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut table = vec![0i32; s * max_blocks];
        let mut next = 0;
        for (q, &n) in blocks_per.iter().enumerate() {
            for i in 0..max_blocks {
                table[q * max_blocks + i] = if i < n {
                    next += 1;
                    ids[next - 1]
                } else {
                    [-1, 1 << 30, nb as i32][rng.below(3) as usize]
                };
            }
        }
        let scales: Vec<f32> = (0..kv_heads)
            .map(|_| 0.004 + 0.01 * (rng.uniform() + 1.0))
            .collect();
        let (k_scale, v_scale) = if stored.is_fp8() {
            if spec.per_head_scale && kv_heads > 1 {
                let vs: Vec<f32> = scales.iter().map(|x| x * 1.5).collect();
                (
                    Some(Buf::f32s(&scales, &[kv_heads])),
                    Some(Buf::f32s(&vs, &[kv_heads])),
                )
            } else {
                (
                    Some(Buf::f32s(&scales[..1], &[1])),
                    Some(Buf::f32s(&[scales[0] * 1.5], &[1])),
                )
            }
        } else {
            (None, None)
        };
        let kscale_of = |h: usize| match &k_scale {
            Some(b) if b.shape[0] > 1 => b.get(&[h]),
            Some(b) => b.get(&[0]),
            None => 1.0,
        };
        let vscale_of = |h: usize| match &v_scale {
            Some(b) if b.shape[0] > 1 => b.get(&[h]),
            Some(b) => b.get(&[0]),
            None => 1.0,
        };
        let poison = nan_bits(stored);
        let mut key_cache = Buf::with_bits(cache_dtype, &[nb, kv_heads, d / x, bs, x], poison);
        let mut value_cache = Buf::with_bits(cache_dtype, &[nb, kv_heads, d, bs], poison);
        for (q, &len) in lens.iter().enumerate() {
            for t in 0..len as usize {
                let b = table[q * max_blocks + t / bs] as usize;
                for h in 0..kv_heads {
                    for i in 0..d {
                        let kb = random_value(&mut rng, stored, kscale_of(h));
                        key_cache.set_bits(&[b, h, i / x, t % bs, i % x], kb);
                        let vb = random_value(&mut rng, stored, vscale_of(h));
                        value_cache.set_bits(&[b, h, i, t % bs], vb);
                    }
                }
            }
        }
        let mut query = if spec.strided_query {
            // A slice of a fused [s, 3 * heads, d] qkv tensor.
            Buf::strided(
                dtype,
                &[s, heads, d],
                &[3 * heads * d, d, 1],
                (3 * s * heads * d).max(1),
                0,
            )
        } else {
            Buf::zeros(dtype, &[s, heads, d])
        };
        for idx in indices(&[s, heads, d]) {
            let v = rng.uniform() * 2.0;
            query.set(&idx, v);
        }
        let alibi = spec.alibi.then(|| {
            let v: Vec<f32> = (0..heads).map(|h| 0.5f32.powi(h as i32 + 1)).collect();
            Buf::f32s(&v, &[heads])
        });
        let max_seq_len = lens.iter().copied().max().unwrap_or(0) as usize + rng.below(3) as usize;
        PagedCase {
            dtype,
            kv,
            stored,
            heads,
            kv_heads,
            d,
            bs,
            lens: lens.to_vec(),
            query,
            key_cache,
            value_cache,
            block_tables: Buf::i32s(&table, &[s, max_blocks]),
            seq_lens: Buf::i32s(lens, &[s]),
            alibi,
            k_scale,
            v_scale,
            scale: 1.0 / (d as f32).sqrt(),
            max_seq_len,
        }
    }

    fn out_shape(&self) -> Vec<usize> {
        vec![self.lens.len(), self.heads, self.d]
    }

    fn partitions(&self) -> usize {
        self.max_seq_len.div_ceil(512).max(1)
    }

    fn v1(&self, out: &mut Buf) -> xpu_ops::Result<()> {
        xpu_ops::paged_attention_v1(
            &mut out.view_mut(),
            &self.query.view(),
            &self.key_cache.view(),
            &self.value_cache.view(),
            self.kv_heads,
            self.scale,
            &self.block_tables.view(),
            &self.seq_lens.view(),
            self.bs,
            self.max_seq_len,
            self.alibi.as_ref().map(|b| b.view()).as_ref(),
            self.kv,
            self.k_scale.as_ref().map(|b| b.view()).as_ref(),
            self.v_scale.as_ref().map(|b| b.view()).as_ref(),
        )
    }

    fn v2(&self, out: &mut Buf, es: &mut Buf, ml: &mut Buf, tmp: &mut Buf) -> xpu_ops::Result<()> {
        xpu_ops::paged_attention_v2(
            &mut out.view_mut(),
            &mut es.view_mut(),
            &mut ml.view_mut(),
            &mut tmp.view_mut(),
            &self.query.view(),
            &self.key_cache.view(),
            &self.value_cache.view(),
            self.kv_heads,
            self.scale,
            &self.block_tables.view(),
            &self.seq_lens.view(),
            self.bs,
            self.max_seq_len,
            self.alibi.as_ref().map(|b| b.view()).as_ref(),
            self.kv,
            self.k_scale.as_ref().map(|b| b.view()).as_ref(),
            self.v_scale.as_ref().map(|b| b.view()).as_ref(),
        )
    }

    fn v2_buffers(&self) -> (Buf, Buf, Buf) {
        let (s, h, p) = (self.lens.len(), self.heads, self.partitions());
        (
            Buf::with_bits(DType::F32, &[s, h, p], nan_bits(DType::F32)),
            Buf::with_bits(DType::F32, &[s, h, p], nan_bits(DType::F32)),
            Buf::with_bits(self.dtype, &[s, h, p, self.d], nan_bits(self.dtype)),
        )
    }

    fn reference_v1(&self) -> Buf {
        let mut out = Buf::zeros(self.dtype, &self.out_shape());
        reference::paged_attention_v1(
            &mut out.view_mut(),
            &self.query.view(),
            &self.key_cache.view(),
            &self.value_cache.view(),
            self.kv_heads,
            self.scale,
            &self.block_tables.view(),
            &self.seq_lens.view(),
            self.alibi.as_ref().map(|b| b.view()).as_ref(),
            self.kv,
            self.k_scale.as_ref().map(|b| b.view()).as_ref(),
            self.v_scale.as_ref().map(|b| b.view()).as_ref(),
        );
        out
    }

    fn reference_v2(&self) -> (Buf, Buf, Buf, Buf) {
        let mut out = Buf::zeros(self.dtype, &self.out_shape());
        let (mut es, mut ml, mut tmp) = self.v2_buffers();
        reference::paged_attention_v2(
            &mut out.view_mut(),
            &mut es.view_mut(),
            &mut ml.view_mut(),
            &mut tmp.view_mut(),
            &self.query.view(),
            &self.key_cache.view(),
            &self.value_cache.view(),
            self.kv_heads,
            self.scale,
            &self.block_tables.view(),
            &self.seq_lens.view(),
            self.alibi.as_ref().map(|b| b.view()).as_ref(),
            self.kv,
            self.k_scale.as_ref().map(|b| b.view()).as_ref(),
            self.v_scale.as_ref().map(|b| b.view()).as_ref(),
        );
        (out, es, ml, tmp)
    }

    /// Largest |v| any output averages (fp8 values dequantised).
    fn vmax(&self) -> f64 {
        1.0
    }

    /// v1 and v2 on every tier against the reference.
    fn check(&self) {
        let want1 = self.reference_v1();
        let (want2, wes, wml, wtmp) = self.reference_v2();
        for_each_path(|isa| {
            let what = format!("{isa} {self}");
            let mut out = Buf::with_bits(self.dtype, &self.out_shape(), nan_bits(self.dtype));
            self.v1(&mut out).unwrap();
            assert_close(&out, &want1, self.vmax(), &format!("v1 {what}"));
            let mut out = Buf::with_bits(self.dtype, &self.out_shape(), nan_bits(self.dtype));
            let (mut es, mut ml, mut tmp) = self.v2_buffers();
            self.v2(&mut out, &mut es, &mut ml, &mut tmp).unwrap();
            assert_close(&out, &want2, self.vmax(), &format!("v2 {what}"));
            // Partition state: same partitions written, values within tolerance.
            for idx in indices(&es.shape) {
                let (w, g) = (wml.get(&idx), ml.get(&idx));
                assert_eq!(
                    w.is_nan(),
                    g.is_nan(),
                    "max_logits {idx:?} {what}: {g} vs {w}"
                );
                if !w.is_nan() {
                    assert!(
                        (g - w).abs() <= 1e-3 * (1.0 + w.abs()),
                        "max_logits {idx:?} {what}: {g} vs {w}"
                    );
                    let (w, g) = (wes.get(&idx), es.get(&idx));
                    assert!(
                        (g - w).abs() <= 1e-3 * w.abs(),
                        "exp_sums {idx:?} {what}: {g} vs {w}"
                    );
                }
            }
            for idx in indices(&tmp.shape) {
                if wml.get(&idx[..3]).is_nan() {
                    assert_eq!(
                        tmp.view().get_bits(&idx),
                        nan_bits(self.dtype),
                        "tmp_out {idx:?} touched"
                    );
                }
            }
            let _ = &wtmp;
        });
    }
}

impl std::fmt::Display for PagedCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} kv={} ({}) H={}/{} D={} bs={} lens={:?} alibi={}",
            self.dtype,
            self.kv,
            self.stored,
            self.heads,
            self.kv_heads,
            self.d,
            self.bs,
            self.lens,
            self.alibi.is_some()
        )
    }
}

fn spec(
    dtype: DType,
    kv: &'static str,
    heads: usize,
    kv_heads: usize,
    d: usize,
    bs: usize,
    seed: u64,
) -> PagedSpec {
    PagedSpec {
        dtype,
        kv,
        heads,
        kv_heads,
        d,
        bs,
        alibi: false,
        per_head_scale: false,
        strided_query: false,
        u8_cache: false,
        seed,
    }
}

const KV_DTYPES: [&str; 3] = ["auto", "fp8_e4m3", "fp8_e5m2"];

/// Contexts crossing block and partition boundaries, for every block size.
#[test]
fn paged_context_boundaries() {
    for (i, &bs) in [8usize, 16, 32, 64, 128].iter().enumerate() {
        let lens = [1, bs as i32 - 1, bs as i32, bs as i32 + 1, 511, 512, 513];
        let dtype = query_dtypes()[i % 3];
        let kv = KV_DTYPES[i % 3];
        PagedCase::new(spec(dtype, kv, 4, 2, 64, bs, 100 + i as u64), &lens).check();
    }
}

/// Every supported head size, block size and GQA grouping, short contexts.
#[test]
fn paged_head_sizes() {
    for (i, &d) in xpu_ops::ops::attention::PAGED_HEAD_SIZES.iter().enumerate() {
        let dtype = query_dtypes()[i % 3];
        let mut kv = KV_DTYPES[(i / 3) % 3];
        if d % 16 != 0 && kv != "auto" {
            kv = "auto"; // fp8 packs 16 elements per key chunk
        }
        let bs = [8, 16, 32, 64, 128][i % 5];
        let (h, hkv) = [(1, 1), (2, 1), (8, 2), (6, 3)][i % 4];
        let mut sp = spec(dtype, kv, h, hkv, d, bs, 200 + i as u64);
        sp.alibi = i % 2 == 1;
        PagedCase::new(sp, &[37, 1, 130]).check();
    }
}

/// Contexts past several partitions, alibi, per-head fp8 scales, a strided query.
#[test]
fn paged_long_contexts() {
    for (i, kv) in KV_DTYPES.iter().enumerate() {
        let mut sp = spec(DType::BF16, kv, 8, 2, 128, 16, 300 + i as u64);
        sp.alibi = true;
        sp.per_head_scale = true;
        sp.strided_query = true;
        sp.u8_cache = i == 1;
        PagedCase::new(sp, &[1500, 700]).check();
    }
    let sp = spec(DType::F16, "auto", 16, 2, 256, 32, 310);
    PagedCase::new(sp, &[1100]).check();
}

/// bf16 queries on a bf16 cache: the AMX decode kernel computes Q.K for a
/// pack of 16 / Gp kv heads at once (Gp = G rounded up to a power of two).
/// Several packs per sequence (32/8: packs of 4), a partial last pack (24/3:
/// packs of 2, then 1; 10/5: one pack of 8 holding 5), padded query heads
/// (9/3: G = 3 in Gp = 4), with ALiBi and v2 partitions (unused ones too).
#[test]
fn paged_kv_head_packs() {
    for (i, &(h, hkv, d)) in [(32, 8, 128), (24, 3, 64), (10, 5, 32), (9, 3, 96)]
        .iter()
        .enumerate()
    {
        let mut sp = spec(DType::BF16, "auto", h, hkv, d, 16, 320 + i as u64);
        sp.alibi = i % 2 == 0;
        sp.strided_query = i == 1;
        PagedCase::new(sp, &[1100, 37, 1]).check();
    }
}

/// A sequence of length 0 gives zeros.
#[test]
fn paged_empty_sequence() {
    let c = PagedCase::new(spec(DType::F32, "auto", 2, 1, 32, 16, 7), &[0, 20, 0]);
    c.check();
    let mut out = Buf::with_bits(DType::F32, &c.out_shape(), nan_bits(DType::F32));
    c.v1(&mut out).unwrap();
    assert!((0..32).all(|i| out.get(&[0, 1, i]) == 0.0 && out.get(&[2, 0, i]) == 0.0));
}

/// Every fp8 code decodes as the reference does: a one-token context whose
/// value row holds all 256 codes.
#[test]
fn paged_fp8_every_code() {
    for kv in ["fp8_e4m3", "fp8_e5m2"] {
        let mut c = PagedCase::new(spec(DType::F32, kv, 1, 1, 256, 16, 9), &[1]);
        let b = c.block_tables.view().get_i64(&[0, 0]) as usize;
        for i in 0..256 {
            c.value_cache.set_bits(&[b, 0, i, 0], i as u64);
        }
        let want = c.reference_v1();
        for_each_path(|isa| {
            let mut out = Buf::zeros(DType::F32, &c.out_shape());
            c.v1(&mut out).unwrap();
            for i in 0..256 {
                let (g, w) = (out.get(&[0, 0, i]), want.get(&[0, 0, i]));
                // Two roundings (p·v, then ·scale) against one: a few f32 ulps.
                let ok = g == w
                    || (g - w).abs() <= 4.0 * f32::EPSILON * w.abs()
                    || (g.is_nan() && w.is_nan());
                assert!(ok, "{isa} {kv} code {i:#x}: {g} vs {w}");
            }
        });
    }
}

/// bf16 queries decode fp8 on their own path (exact widening to bf16): every
/// value code through P·V with a one-token context, and every key code
/// through v2's `max_logits` of 256 one-token sequences sharing one block,
/// query `s` one-hot at head-dim `s`.
#[test]
fn paged_fp8_every_code_bf16_queries() {
    for kv in ["fp8_e4m3", "fp8_e5m2"] {
        let mut c = PagedCase::new(spec(DType::BF16, kv, 1, 1, 256, 16, 11), &[1]);
        let b = c.block_tables.view().get_i64(&[0, 0]) as usize;
        for i in 0..256 {
            c.value_cache.set_bits(&[b, 0, i, 0], i as u64);
        }
        let want = c.reference_v1();
        let vmax = (0..256)
            .map(|i| want.get(&[0, 0, i]).abs() as f64)
            .filter(|x| x.is_finite())
            .fold(0.0, f64::max);
        for_each_path(|isa| {
            let mut out = Buf::zeros(DType::BF16, &c.out_shape());
            c.v1(&mut out).unwrap();
            for i in 0..256 {
                let (g, w) = (out.get(&[0, 0, i]), want.get(&[0, 0, i]));
                let ok = g == w
                    || (g.is_nan() && w.is_nan())
                    || ((g - w).abs() as f64) <= 8e-3 * (w.abs() as f64) + 1e-6 * vmax;
                assert!(ok, "{isa} {kv} value code {i:#x}: {g} vs {w}");
            }
        });

        // One-hot 1 and 256: the AVX2 paged path widens fp8 keys raw (the q
        // planes carry 2^120 / 2^112) only while every |q| < 2^7.
        for qv in [1.0f32, 256.0] {
            let mut c = PagedCase::new(spec(DType::BF16, kv, 1, 1, 256, 16, 12), &[1; 256]);
            let b = c.block_tables.view().get_i64(&[0, 0]) as usize;
            let cols = c.block_tables.shape[1];
            for sq in 0..256 {
                for j in 0..cols {
                    c.block_tables.set_bits(&[sq, j], b as u64);
                }
                for i in 0..256 {
                    c.query.set(&[sq, 0, i], if i == sq { qv } else { 0.0 });
                }
            }
            for i in 0..256 {
                c.key_cache.set_bits(&[b, 0, i / 16, 0, i % 16], i as u64);
            }
            let (_, _, want_ml, _) = c.reference_v2();
            for_each_path(|isa| {
                let mut out = Buf::zeros(DType::BF16, &c.out_shape());
                let (mut es, mut ml, mut tmp) = c.v2_buffers();
                c.v2(&mut out, &mut es, &mut ml, &mut tmp).unwrap();
                for i in 0..256 {
                    let (g, w) = (ml.get(&[i, 0, 0]), want_ml.get(&[i, 0, 0]));
                    let ok =
                        g == w || (g.is_nan() && w.is_nan()) || (g - w).abs() <= 1e-6 * w.abs();
                    assert!(ok, "{isa} {kv} q {qv} key code {i:#x}: {g} vs {w}");
                }
            });
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn paged_parity(
        dt in 0usize..3, kv in 0usize..3, d in prop::sample::select(vec![32usize, 64, 96, 128]),
        bs in prop::sample::select(vec![8usize, 16, 32, 64, 128]),
        group in prop::sample::select(vec![(1usize, 1usize), (4, 1), (4, 2), (8, 1), (3, 3), (16, 2)]),
        lens in prop::collection::vec(0i32..600, 1..4),
        alibi in any::<bool>(), per_head in any::<bool>(), strided in any::<bool>(), seed in any::<u64>(),
    ) {
        let mut sp = spec(query_dtypes()[dt], KV_DTYPES[kv], group.0, group.1, d, bs, seed);
        sp.alibi = alibi;
        sp.per_head_scale = per_head;
        sp.strided_query = strided;
        sp.u8_cache = seed % 2 == 0;
        PagedCase::new(sp, &lens).check();
    }
}

/// A decode batch of 1024 sequences (an upstream implementation fails there).
#[test]
fn paged_batch_1024() {
    let mut rng = Rng(77);
    let lens: Vec<i32> = (0..1024).map(|_| 1 + rng.below(40) as i32).collect();
    let c = PagedCase::new(spec(DType::BF16, "auto", 4, 2, 32, 16, 78), &lens);
    let want = c.reference_v1();
    let (want2, ..) = c.reference_v2();
    let isa = *common::isas().last().unwrap();
    xpu_ops::with_isa(isa, || {
        let mut out = Buf::zeros(c.dtype, &c.out_shape());
        c.v1(&mut out).unwrap();
        assert_close(&out, &want, 1.0, "v1 batch 1024");
        let (mut es, mut ml, mut tmp) = c.v2_buffers();
        c.v2(&mut out, &mut es, &mut ml, &mut tmp).unwrap();
        assert_close(&out, &want2, 1.0, "v2 batch 1024");
    })
    .unwrap();
}

#[test]
fn paged_thread_invariance() {
    let c = PagedCase::new(
        spec(DType::BF16, "fp8_e4m3", 8, 2, 128, 16, 55),
        &[900, 1300, 40, 2000],
    );
    for (isa, dot, fast) in common::isas()
        .into_iter()
        .flat_map(|i| [(i, true, true), (i, true, false), (i, false, false)])
    {
        let run = |threads: usize| {
            with_threads(threads, || {
                xpu_ops::with_isa(isa, || {
                    xpu_ops::with_attention_fast_decode(fast, || {
                        xpu_ops::with_attention_bf16_dot(dot, || {
                            let mut out = Buf::zeros(c.dtype, &c.out_shape());
                            c.v1(&mut out).unwrap();
                            let mut out2 = Buf::zeros(c.dtype, &c.out_shape());
                            let (mut es, mut ml, mut tmp) = c.v2_buffers();
                            c.v2(&mut out2, &mut es, &mut ml, &mut tmp).unwrap();
                            (
                                out.all_bits(),
                                out2.all_bits(),
                                tmp.all_bits(),
                                es.all_bits(),
                            )
                        })
                    })
                })
                .unwrap()
            })
        };
        let one = run(1);
        let what = format!("{isa} dot={dot} fast={fast}");
        assert!(one == run(2), "{what}: 2 threads differ from 1");
        assert!(one == run(3), "{what}: 3 threads differ from 1");
    }
}

// ---- paged bad input --------------------------------------------------------------

fn expect_err(r: xpu_ops::Result<()>, status: Status, needle: &str) {
    let e = r.expect_err("the op should fail");
    assert_eq!(e.status, status, "{e}");
    assert!(
        e.message.contains(needle),
        "message {:?} lacks {needle:?}",
        e.message
    );
}

#[test]
fn paged_bad_inputs() {
    let base = PagedCase::new(spec(DType::BF16, "auto", 4, 2, 64, 16, 5), &[20, 33]);
    let poisoned = Buf::with_bits(DType::BF16, &base.out_shape(), 0x7fc1);
    let check = |c: &PagedCase, status: Status, needle: &str| {
        let mut out = poisoned.clone();
        expect_err(c.v1(&mut out), status, needle);
        assert_eq!(out.data, poisoned.data, "v1 wrote its output on error");
        let (mut es, mut ml, mut tmp) = c.v2_buffers();
        let (es0, tmp0) = (es.data.clone(), tmp.data.clone());
        let mut out = poisoned.clone();
        expect_err(c.v2(&mut out, &mut es, &mut ml, &mut tmp), status, needle);
        assert_eq!(out.data, poisoned.data, "v2 wrote its output on error");
        assert_eq!(
            (es.data, tmp.data),
            (es0, tmp0),
            "v2 wrote its buffers on error"
        );
    };
    // A block id outside the cache.
    let mut c = base.clone();
    c.block_tables.set_bits(&[1, 2], 1000);
    check(&c, Status::IndexOutOfRange, "block_tables");
    let mut c = base.clone();
    c.block_tables.set_bits(&[0, 0], (-3i32) as u32 as u64);
    check(&c, Status::IndexOutOfRange, "-3");
    // seq_len beyond the block table.
    let mut c = base.clone();
    let cols = c.block_tables.shape[1] as i32;
    c.seq_lens = Buf::i32s(&[20, cols * 16 + 1], &[2]);
    c.max_seq_len = 4096;
    check(&c, Status::IndexOutOfRange, "columns");
    // seq_len beyond max_seq_len, negative.
    let mut c = base.clone();
    c.max_seq_len = 25;
    check(&c, Status::InvalidValue, "max_seq_len");
    let mut c = base.clone();
    c.seq_lens = Buf::i32s(&[-1, 3], &[2]);
    check(&c, Status::InvalidValue, "negative");
    // H not divisible by Hkv.
    let mut c = base.clone();
    c.kv_heads = 3;
    check(&c, Status::ShapeMismatch, "num_kv_heads");
    // Unsupported head size and block size.
    let c = PagedCase::new(spec(DType::BF16, "auto", 2, 2, 48, 16, 5), &[3]);
    let mut out = Buf::zeros(DType::BF16, &c.out_shape());
    expect_err(c.v1(&mut out), Status::Unsupported, "head_size 48");
    let mut c = base.clone();
    c.bs = 24;
    check(&c, Status::Unsupported, "block_size 24");
    let mut c = base.clone();
    c.bs = 32; // supported, but not the cache's
    check(&c, Status::ShapeMismatch, "block_size");
    // Mismatched dtypes: cache of another dtype, fp8 cache with "auto".
    let mut c = base.clone();
    c.kv = "float16";
    check(&c, Status::DtypeMismatch, "key_cache");
    let f8 = PagedCase::new(spec(DType::BF16, "fp8_e4m3", 4, 2, 64, 16, 5), &[20, 33]);
    let mut c = f8.clone();
    c.kv = "fp8_e5m2";
    c.key_cache.dtype = DType::F8E4M3;
    c.value_cache.dtype = DType::F8E4M3;
    check(&c, Status::DtypeMismatch, "key_cache");
    let mut c = base.clone();
    c.kv = "fp9";
    check(&c, Status::InvalidArgument, "fp9");
    // Bad fp8 scale.
    let mut c = f8.clone();
    c.k_scale = Some(Buf::f32s(&[0.0], &[1]));
    check(&c, Status::InvalidValue, "k_scale");
    let mut c = f8.clone();
    c.v_scale = Some(Buf::f32s(&[1.0, 1.0, 1.0], &[3]));
    check(&c, Status::ShapeMismatch, "v_scale");
    // Alibi of the wrong length.
    let mut c = base.clone();
    c.alibi = Some(Buf::f32s(&[0.5; 3], &[3]));
    check(&c, Status::ShapeMismatch, "alibi_slopes");
    // Non-finite scale.
    let mut c = base.clone();
    c.scale = f32::NAN;
    check(&c, Status::InvalidValue, "scale");

    // v2 buffers of the wrong shape, dtype, or too few partitions.
    let mut c = base.clone();
    c.max_seq_len = 600; // two partitions needed
    let mut out = poisoned.clone();
    let (mut es, mut ml, mut tmp) = base.v2_buffers();
    expect_err(
        c.v2(&mut out, &mut es, &mut ml, &mut tmp),
        Status::ShapeMismatch,
        "partitions",
    );
    assert_eq!(out.data, poisoned.data);
    let (_, mut ml, mut tmp) = base.v2_buffers();
    let mut es = Buf::zeros(DType::F32, &[2, 3, 1]);
    expect_err(
        base.v2(&mut out, &mut es, &mut ml, &mut tmp),
        Status::ShapeMismatch,
        "exp_sums",
    );
    let (mut es, _, mut tmp) = base.v2_buffers();
    let mut ml = Buf::zeros(DType::F16, &[2, 4, 1]);
    expect_err(
        base.v2(&mut out, &mut es, &mut ml, &mut tmp),
        Status::DtypeMismatch,
        "max_logits",
    );
    let (mut es, mut ml, _) = base.v2_buffers();
    let mut tmp = Buf::zeros(DType::F32, &[2, 4, 1, 64]);
    expect_err(
        base.v2(&mut out, &mut es, &mut ml, &mut tmp),
        Status::DtypeMismatch,
        "tmp_out",
    );
    let mut tmp = Buf::zeros(DType::BF16, &[2, 4, 1, 32]);
    expect_err(
        base.v2(&mut out, &mut es, &mut ml, &mut tmp),
        Status::ShapeMismatch,
        "tmp_out",
    );
    assert_eq!(out.data, poisoned.data);

    // Output of another shape or dtype.
    let mut out = Buf::zeros(DType::F32, &base.out_shape());
    expect_err(base.v1(&mut out), Status::DtypeMismatch, "out");
    let mut out = Buf::zeros(DType::BF16, &[2, 4, 32]);
    expect_err(base.v1(&mut out), Status::ShapeMismatch, "out");
}

/// An output that overlaps an input is refused.
#[test]
fn paged_aliasing() {
    let c = PagedCase::new(spec(DType::F32, "auto", 2, 2, 32, 16, 3), &[5]);
    let mut q = c.query.clone();
    let qv = q.view_mut();
    // SAFETY: the test deliberately aliases the query with the output.
    let alias =
        unsafe { TensorViewMut::from_raw(qv.view().as_ptr() as *mut u8, qv.layout().clone()) };
    let r = xpu_ops::paged_attention_v1(
        &mut { alias },
        &qv.view(),
        &c.key_cache.view(),
        &c.value_cache.view(),
        2,
        0.1,
        &c.block_tables.view(),
        &c.seq_lens.view(),
        16,
        5,
        None,
        "auto",
        None,
        None,
    );
    expect_err(r, Status::Aliasing, "query");
}

// ---- varlen (flash layout) ------------------------------------------------------

#[derive(Clone, Debug)]
struct VarlenCase {
    dtype: DType,
    stored: DType,
    heads: usize,
    kv_heads: usize,
    d: usize,
    bs: usize,
    q_lens: Vec<usize>,
    k_lens: Vec<usize>,
    q: Buf,
    k: Buf,
    v: Buf,
    cu: Buf,
    used: Buf,
    table: Buf,
    scale: Option<f32>,
    causal: bool,
    window: (i64, i64),
    softcap: f32,
    alibi: Option<Buf>,
    k_descale: Option<Buf>,
    v_descale: Option<Buf>,
    s_aux: Option<Buf>,
    max_q: usize,
    max_k: usize,
}

#[derive(Clone, Copy, Debug)]
struct VarlenSpec {
    dtype: DType,
    stored: DType,
    heads: usize,
    kv_heads: usize,
    d: usize,
    bs: usize,
    causal: bool,
    window: (i64, i64),
    softcap: f32,
    alibi: u8,   // 0 none, 1 [H], 2 [B, H]
    descale: u8, // 0 [1], 1 [Hkv], 2 [B, Hkv]
    sinks: bool,
    hnd: bool,
    seed: u64,
}

fn vspec(
    dtype: DType,
    stored: DType,
    heads: usize,
    kv_heads: usize,
    d: usize,
    bs: usize,
    seed: u64,
) -> VarlenSpec {
    VarlenSpec {
        dtype,
        stored,
        heads,
        kv_heads,
        d,
        bs,
        causal: true,
        window: (-1, -1),
        softcap: 0.0,
        alibi: 0,
        descale: 0,
        sinks: false,
        hnd: false,
        seed,
    }
}

impl VarlenCase {
    fn new(sp: VarlenSpec, seqs: &[(usize, usize)]) -> VarlenCase {
        let mut rng = Rng(sp.seed);
        let (h, hkv, d, bs, stored) = (sp.heads, sp.kv_heads, sp.d, sp.bs, sp.stored);
        let b = seqs.len();
        let q_lens: Vec<usize> = seqs.iter().map(|s| s.0).collect();
        let k_lens: Vec<usize> = seqs.iter().map(|s| s.1).collect();
        let blocks_per: Vec<usize> = k_lens.iter().map(|&l| l.div_ceil(bs)).collect();
        let max_blocks = blocks_per.iter().copied().max().unwrap_or(0) + 1;
        let nb = blocks_per.iter().sum::<usize>() + 2;
        let mut ids: Vec<i32> = (0..nb as i32).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut table = vec![-5i32; b * max_blocks];
        let mut next = 0;
        for (s, &n) in blocks_per.iter().enumerate() {
            for i in 0..n {
                table[s * max_blocks + i] = ids[next];
                next += 1;
            }
        }
        let (k_descale, v_descale) = if stored.is_fp8() {
            let mk = |rng: &mut Rng, n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| 0.004 + 0.01 * (rng.uniform() + 1.0))
                    .collect()
            };
            match sp.descale {
                0 => (
                    Some(Buf::f32s(&mk(&mut rng, 1), &[1])),
                    Some(Buf::f32s(&mk(&mut rng, 1), &[1])),
                ),
                1 => (
                    Some(Buf::f32s(&mk(&mut rng, hkv), &[hkv])),
                    Some(Buf::f32s(&mk(&mut rng, hkv), &[hkv])),
                ),
                _ => (
                    Some(Buf::f32s(&mk(&mut rng, b * hkv), &[b, hkv])),
                    Some(Buf::f32s(&mk(&mut rng, 1), &[1])),
                ),
            }
        } else {
            (None, None)
        };
        let desc = |t: &Option<Buf>, s: usize, kvh: usize| -> f32 {
            match t {
                None => 1.0,
                Some(x) if x.shape.len() == 2 => x.get(&[s, kvh]),
                Some(x) if x.shape[0] == 1 => x.get(&[0]),
                Some(x) => x.get(&[kvh]),
            }
        };
        let poison = nan_bits(stored);
        let shape = [nb, bs, hkv, d];
        let (mut k, mut v) = if sp.hnd {
            // Storage [nb, hkv, bs, d] viewed as [nb, bs, hkv, d].
            let st = [hkv * bs * d, d, bs * d, 1];
            (
                Buf::strided(stored, &shape, &st, nb * bs * hkv * d, poison),
                Buf::strided(stored, &shape, &st, nb * bs * hkv * d, poison),
            )
        } else {
            (
                Buf::with_bits(stored, &shape, poison),
                Buf::with_bits(stored, &shape, poison),
            )
        };
        for (s, &kl) in k_lens.iter().enumerate() {
            for t in 0..kl {
                let blk = table[s * max_blocks + t / bs] as usize;
                for kvh in 0..hkv {
                    for i in 0..d {
                        k.set_bits(
                            &[blk, t % bs, kvh, i],
                            random_value(&mut rng, stored, desc(&k_descale, s, kvh)),
                        );
                        v.set_bits(
                            &[blk, t % bs, kvh, i],
                            random_value(&mut rng, stored, desc(&v_descale, s, kvh)),
                        );
                    }
                }
            }
        }
        let total_q: usize = q_lens.iter().sum::<usize>() + 1; // one trailing padding row
        let mut q = Buf::zeros(sp.dtype, &[total_q, h, d]);
        for idx in indices(&[total_q, h, d]) {
            let x = rng.uniform() * 2.0;
            q.set(&idx, x);
        }
        let mut cu = vec![0i32];
        for &l in &q_lens {
            cu.push(cu.last().unwrap() + l as i32);
        }
        let alibi = match sp.alibi {
            0 => None,
            1 => Some(Buf::f32s(
                &(0..h)
                    .map(|i| 0.5f32.powi(i as i32 + 1))
                    .collect::<Vec<_>>(),
                &[h],
            )),
            _ => Some(Buf::f32s(
                &(0..b * h)
                    .map(|i| 0.3f32.powi((i % 5) as i32 + 1))
                    .collect::<Vec<_>>(),
                &[b, h],
            )),
        };
        let s_aux = sp.sinks.then(|| {
            let mut t = Buf::zeros(sp.dtype, &[h]);
            for i in 0..h {
                t.set(&[i], rng.uniform() * 3.0);
            }
            t
        });
        VarlenCase {
            dtype: sp.dtype,
            stored,
            heads: h,
            kv_heads: hkv,
            d,
            bs,
            max_q: q_lens.iter().copied().max().unwrap_or(0),
            max_k: k_lens.iter().copied().max().unwrap_or(0),
            q_lens,
            k_lens,
            q,
            k,
            v,
            cu: Buf::i32s(&cu, &[b + 1]),
            used: Buf::i32s(&seqs.iter().map(|s| s.1 as i32).collect::<Vec<_>>(), &[b]),
            table: Buf::i32s(&table, &[b, max_blocks]),
            scale: if sp.seed % 3 == 0 {
                None
            } else {
                Some(0.7 / (d as f32).sqrt())
            },
            causal: sp.causal,
            window: sp.window,
            softcap: sp.softcap,
            alibi,
            k_descale,
            v_descale,
            s_aux,
        }
    }

    fn out_shape(&self) -> Vec<usize> {
        self.q.shape.clone()
    }

    /// One call's output and LSE words, for bit comparisons across runs.
    fn output_words(&self) -> (Vec<u64>, Vec<u64>) {
        let mut out = Buf::zeros(self.dtype, &self.out_shape());
        let mut lse = Buf::zeros(DType::F32, &[self.q.shape[1], self.q.shape[0]]);
        self.run(&mut out, Some(&mut lse)).unwrap();
        (out.data, lse.data)
    }

    /// 1, 2 and 3 threads give the same bits on every tier.
    fn assert_thread_invariant(&self, what: &str) {
        for isa in common::isas() {
            let run = |threads: usize| {
                with_threads(threads, || {
                    xpu_ops::with_isa(isa, || self.output_words()).unwrap()
                })
            };
            let one = run(1);
            assert!(one == run(2), "{isa} {what}: 2 threads differ");
            assert!(one == run(3), "{isa} {what}: 3 threads differ");
        }
    }

    fn run(&self, out: &mut Buf, lse: Option<&mut Buf>) -> xpu_ops::Result<()> {
        let mut lse_view = lse.map(|l| l.view_mut());
        xpu_ops::flash_attn_varlen_func(
            &self.q.view(),
            &self.k.view(),
            &self.v.view(),
            self.max_q,
            &self.cu.view(),
            self.max_k,
            &self.used.view(),
            self.scale,
            self.causal,
            self.window,
            self.softcap,
            self.alibi.as_ref().map(|b| b.view()).as_ref(),
            &self.table.view(),
            lse_view.as_mut(),
            &mut out.view_mut(),
            self.k_descale.as_ref().map(|b| b.view()).as_ref(),
            self.v_descale.as_ref().map(|b| b.view()).as_ref(),
            self.s_aux.as_ref().map(|b| b.view()).as_ref(),
        )
    }

    fn reference(&self) -> (Buf, Buf) {
        let mut out = Buf::with_bits(self.dtype, &self.out_shape(), nan_bits(self.dtype));
        let mut lse = Buf::with_bits(
            DType::F32,
            &[self.heads, self.q.shape[0]],
            nan_bits(DType::F32),
        );
        reference::flash_attn_varlen_func(
            &self.q.view(),
            &self.k.view(),
            &self.v.view(),
            &self.cu.view(),
            &self.used.view(),
            self.scale.unwrap_or(1.0 / (self.d as f32).sqrt()),
            self.causal,
            self.window,
            self.softcap,
            self.alibi.as_ref().map(|b| b.view()).as_ref(),
            &self.table.view(),
            Some(&mut lse.view_mut()),
            &mut out.view_mut(),
            self.k_descale.as_ref().map(|b| b.view()).as_ref(),
            self.v_descale.as_ref().map(|b| b.view()).as_ref(),
            self.s_aux.as_ref().map(|b| b.view()).as_ref(),
        );
        (out, lse)
    }

    fn check(&self) {
        let (want, want_lse) = self.reference();
        for_each_path(|isa| {
            let what = format!("{isa} {self}");
            let mut out = Buf::with_bits(self.dtype, &self.out_shape(), nan_bits(self.dtype));
            let mut lse = Buf::with_bits(
                DType::F32,
                &[self.heads, self.q.shape[0]],
                nan_bits(DType::F32),
            );
            self.run(&mut out, Some(&mut lse)).unwrap();
            assert_close(&out, &want, 1.0, &format!("varlen {what}"));
            assert_lse_close(&lse, &want_lse, 2e-4, &format!("lse {what}"));
            // Without LSE the output is the same, bit for bit.
            let mut out2 = Buf::with_bits(self.dtype, &self.out_shape(), nan_bits(self.dtype));
            self.run(&mut out2, None).unwrap();
            assert!(
                out2.data == out.data,
                "{what}: output depends on whether LSE is asked for"
            );
        });
    }
}

impl std::fmt::Display for VarlenCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cache={} H={}/{} D={} bs={} q={:?} k={:?} causal={} window={:?} softcap={} alibi={} sinks={}",
            self.dtype,
            self.stored,
            self.heads,
            self.kv_heads,
            self.d,
            self.bs,
            self.q_lens,
            self.k_lens,
            self.causal,
            self.window,
            self.softcap,
            self.alibi.is_some(),
            self.s_aux.is_some()
        )
    }
}

const CACHE_KINDS: [Option<DType>; 3] = [None, Some(DType::F8E4M3), Some(DType::F8E5M2)];

fn stored_for(dtype: DType, kind: usize) -> DType {
    CACHE_KINDS[kind].unwrap_or(dtype)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 28, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn varlen_parity(
        dt in 0usize..3, kind in 0usize..3, d in prop::sample::select(vec![8usize, 32, 64, 72, 128]),
        bs in prop::sample::select(vec![1usize, 5, 16, 32]),
        group in prop::sample::select(vec![(1usize, 1usize), (4, 1), (4, 2), (8, 2), (3, 3)]),
        seqs in prop::collection::vec((0usize..40, 0usize..90), 1..4),
        causal in any::<bool>(), left in -1i64..50, right in -1i64..8,
        softcap in prop::sample::select(vec![0.0f32, 0.0, 5.0, 30.0]),
        alibi in 0u8..3, descale in 0u8..3, sinks in any::<bool>(), hnd in any::<bool>(), seed in any::<u64>(),
    ) {
        let mut sp = vspec(query_dtypes()[dt], stored_for(query_dtypes()[dt], kind), group.0, group.1, d, bs, seed);
        sp.causal = causal;
        sp.window = (left, if causal { -1 } else { right });
        sp.softcap = softcap;
        sp.alibi = alibi;
        sp.descale = descale;
        sp.sinks = sinks;
        sp.hnd = hnd;
        // Mostly k_len >= q_len, as in serving; sometimes fewer keys than queries.
        let seqs: Vec<(usize, usize)> = seqs.iter().map(|&(q, k)| if seed % 4 == 0 { (q, k) } else { (q, k.max(q)) }).collect();
        VarlenCase::new(sp, &seqs).check();
    }
}

/// Decode rows (one query per sequence), prefill and mixed, longer contexts.
#[test]
fn varlen_decode_and_mixed() {
    let sp = vspec(DType::BF16, DType::BF16, 8, 2, 128, 16, 41);
    VarlenCase::new(sp, &[(1, 700), (1, 1), (1, 64), (1, 65), (1, 513)]).check();
    let sp = vspec(DType::BF16, DType::F8E4M3, 16, 2, 256, 32, 42);
    VarlenCase::new(sp, &[(1, 300), (97, 97), (5, 200), (0, 10)]).check();
    let mut sp = vspec(DType::F16, DType::F16, 4, 4, 64, 16, 43);
    sp.window = (100, -1);
    sp.sinks = true;
    VarlenCase::new(sp, &[(200, 450), (1, 450)]).check();
}

/// Many decode-like work items over an NHD cache with small head rows: the
/// launcher then lets one grid block take several adjacent kv heads; results
/// must not change.
#[test]
fn varlen_grouped_kv_heads() {
    for (i, (dt, stored)) in [
        (DType::BF16, DType::BF16),
        (DType::F16, DType::F8E4M3),
        (DType::F32, DType::F32),
    ]
    .into_iter()
    .enumerate()
    {
        let mut sp = vspec(dt, stored, 8, 4, 64, 16, 900 + i as u64);
        sp.sinks = true;
        sp.alibi = 2;
        sp.descale = 2;
        sp.window = (40, -1);
        // Decode-like items (one or two queries): the launcher groups only those.
        let seqs: Vec<(usize, usize)> = (0..10).map(|k| (1 + k % 2, 30 + 11 * k)).collect();
        VarlenCase::new(sp, &seqs).check();
    }
}

/// Every head size of the paged ops through the varlen op too.
#[test]
fn varlen_head_sizes() {
    for (i, &d) in xpu_ops::ops::attention::PAGED_HEAD_SIZES.iter().enumerate() {
        let dt = query_dtypes()[i % 3];
        let sp = vspec(dt, stored_for(dt, i % 3), 4, 2, d, 16, 500 + i as u64);
        VarlenCase::new(sp, &[(3, 40), (1, 17)]).check();
    }
}

/// bf16 prefill over a bf16 cache with head sizes 192/256/512 and work items of
/// many 16-row tiles (on the amx tier: the tile kernel's multi-block, causal
/// diagonal, window and sink paths, several work items per sequence).
#[test]
fn varlen_bf16_prefill_tiles() {
    let sp = vspec(DType::BF16, DType::BF16, 8, 2, 256, 16, 301);
    VarlenCase::new(sp, &[(150, 150), (1, 90), (70, 200)]).check();
    let mut sp = vspec(DType::BF16, DType::BF16, 4, 1, 192, 32, 302);
    sp.window = (77, -1);
    sp.sinks = true;
    sp.hnd = true;
    VarlenCase::new(sp, &[(130, 260), (33, 33)]).check();
    let mut sp = vspec(DType::BF16, DType::BF16, 2, 2, 512, 16, 303);
    sp.causal = false;
    sp.window = (40, 20);
    sp.descale = 1;
    VarlenCase::new(sp, &[(100, 180)]).check();
    // Thread invariance of these paths (several work items and kv heads per call).
    let mut sp = vspec(DType::BF16, DType::BF16, 8, 2, 128, 16, 304);
    sp.sinks = true;
    VarlenCase::new(sp, &[(200, 260), (1, 50), (90, 90)]).assert_thread_invariant("prefill");
}

/// Prefill work items whose rows (queries x query heads of a kv head) do not
/// fill whole vectors (3 and 6 query heads per kv head, short last items), head
/// sizes that are not a multiple of the micro-kernel blocks (40, 136), contexts
/// that end inside a 64-key step, and masks inside the steps (windows, causal
/// diagonal) with softcap, ALiBi, sinks and fp8 scales (the avx2 tier's
/// row-vector kernel: padding lanes, block remainders and the unmasked-step
/// shortcut); then thread invariance.
#[test]
fn varlen_prefill_row_tiles() {
    let mut sp = vspec(DType::BF16, DType::BF16, 12, 4, 40, 5, 311);
    sp.window = (50, -1);
    sp.alibi = 1;
    sp.softcap = 30.0;
    VarlenCase::new(sp, &[(70, 200), (9, 9), (2, 130)]).check();
    let mut sp = vspec(DType::F32, DType::F32, 6, 1, 136, 16, 312);
    sp.causal = false;
    sp.window = (30, 10);
    sp.sinks = true;
    VarlenCase::new(sp, &[(45, 131), (23, 64)]).check();
    let mut sp = vspec(DType::F16, DType::F8E5M2, 16, 2, 256, 32, 313);
    sp.descale = 2;
    VarlenCase::new(sp, &[(130, 300), (5, 65)]).check();
    let mut sp = vspec(DType::BF16, DType::F8E4M3, 12, 2, 72, 16, 314);
    sp.alibi = 2;
    sp.window = (90, -1);
    VarlenCase::new(sp, &[(150, 260), (33, 40)]).assert_thread_invariant("prefill rows");
}

/// A context longer than the amx tile kernel's packed K/V buffer (32 MiB:
/// 16500 keys x head size 512 x 4 bytes): the kernel then packs each work
/// item's keys chunk by chunk (two chunks here) instead of keeping them for
/// the next items; the other tiers take it as any context.
#[test]
fn varlen_bf16_prefill_long_context() {
    let sp = vspec(DType::BF16, DType::BF16, 2, 1, 512, 16, 305);
    VarlenCase::new(sp, &[(3, 16500), (2, 40)]).check();
}

/// Chunked prefill gives the one-shot result bit for bit: each query row's
/// computation depends only on its keys, which tiles walk from key 0 the same way.
/// One exception: a chunk of a single query runs the decode path (on the amx
/// tier with bf16, on avx2 with the fast path over a bf16 or fp8 cache) instead
/// of the prefill kernel, so it matches within the tolerance.
#[test]
fn varlen_chunked_prefill_equals_one_shot() {
    for (dt, stored) in [
        (DType::BF16, DType::BF16),
        (DType::F16, DType::F8E5M2),
        (DType::F32, DType::F32),
    ] {
        let sp = vspec(dt, stored, 8, 2, 64, 16, 61);
        let whole = VarlenCase::new(sp, &[(300, 300)]);
        for_each_path(|isa| {
            let mut one = Buf::zeros(dt, &whole.out_shape());
            let mut lse1 = Buf::zeros(DType::F32, &[8, whole.q.shape[0]]);
            whole.run(&mut one, Some(&mut lse1)).unwrap();
            for chunks in [vec![0usize, 100, 220, 300], vec![0, 1, 2, 150, 299, 300]] {
                for w in chunks.windows(2) {
                    let (a, b) = (w[0], w[1]);
                    let mut c = whole.clone();
                    c.cu = Buf::i32s(&[0, (b - a) as i32], &[2]);
                    c.used = Buf::i32s(&[b as i32], &[1]);
                    c.max_q = b - a;
                    let mut q = Buf::zeros(dt, &[b - a, 8, 64]);
                    for idx in indices(&q.shape.clone()) {
                        q.set_bits(&idx, whole.q.view().get_bits(&[a + idx[0], idx[1], idx[2]]));
                    }
                    c.q = q;
                    let mut out = Buf::zeros(dt, &c.out_shape());
                    let mut lse = Buf::zeros(DType::F32, &[8, b - a]);
                    c.run(&mut out, Some(&mut lse)).unwrap();
                    let decode = (isa.starts_with("amx") && dt == DType::BF16)
                        || (isa == "avx2+fast" && stored != DType::F32);
                    let exact = !(decode && b - a == 1);
                    let (atol, rtol) = tolerance(dt);
                    for idx in indices(&out.shape) {
                        let want_idx = [a + idx[0], idx[1], idx[2]];
                        if exact {
                            assert_eq!(
                                out.view().get_bits(&idx),
                                one.view().get_bits(&want_idx),
                                "{isa} {dt} chunk {a}..{b} {idx:?}"
                            );
                        } else {
                            let (g, w) = (out.get(&idx) as f64, one.get(&want_idx) as f64);
                            assert!(
                                (g - w).abs() <= 2.0 * (atol + rtol * w.abs()),
                                "{isa} {dt} chunk {a}..{b} {idx:?}: {g} vs {w}"
                            );
                        }
                    }
                    for idx in indices(&lse.shape) {
                        let (g, w) = (lse.get(&idx), lse1.get(&[idx[0], a + idx[1]]));
                        if exact {
                            assert_eq!(g.to_bits(), w.to_bits());
                        } else {
                            assert!((g - w).abs() <= 4e-4 * (1.0 + w.abs()), "lse {g} vs {w}");
                        }
                    }
                }
            }
        });
    }
}

/// Decode-only batches (one query per sequence). On the amx tier (bf16 queries,
/// bf16/fp8 caches, at most 8 query heads per kv head, head size a multiple of
/// 32) they run the tile decode kernel: every head size it takes, fp8 e4m3 and
/// e5m2, NHD and HND caches, contexts on both sides of its 16-key groups and
/// its steps (64 keys for fp8, up to 128 for bf16), window, softcap, ALiBi,
/// sinks and scales over poisoned caches;
/// 16 query heads per kv head take the fallback.
/// Tolerance: the module's.
#[test]
fn varlen_decode_only() {
    let lens = [1usize, 15, 16, 17, 63, 64, 65, 127, 129, 200, 513];
    let heads = [(16, 2), (32, 8), (8, 8), (16, 1)];
    for (i, &d) in [32usize, 64, 96, 128, 192, 256, 512].iter().enumerate() {
        for (k, stored) in [DType::BF16, DType::F8E4M3, DType::F8E5M2]
            .into_iter()
            .enumerate()
        {
            let (h, hkv) = heads[(i + k) % heads.len()];
            let bs = [16, 32, 64][(i + 2 * k) % 3];
            let mut sp = vspec(
                DType::BF16,
                stored,
                h,
                hkv,
                d,
                bs,
                700 + (10 * i + k) as u64,
            );
            match (i + k) % 4 {
                0 => {}
                1 => {
                    sp.window = (40, -1);
                    sp.sinks = true;
                }
                2 => {
                    sp.softcap = 30.0;
                    sp.alibi = 2;
                    sp.hnd = true;
                }
                _ => {
                    sp.descale = 2;
                    sp.causal = false;
                    sp.window = (100, 3);
                }
            }
            let seqs: Vec<(usize, usize)> = lens.iter().map(|&l| (1, l)).collect();
            VarlenCase::new(sp, &seqs).check();
        }
    }
}

/// Decode rows over the flash layout as the avx2 decode path (`xf_varlen`)
/// blocks them: 1-16 query heads per kv head (its 4-, 2- and 1-row
/// micro-kernels and their mixes), head sizes whose P·V chunks leave
/// remainders, block sizes that do not divide its 16-key groups, contexts on
/// both sides of the groups and of its 64-key steps, every feature, bf16 and
/// fp8 caches (unused slots poisoned), NHD and HND; some shapes (fp8 with a
/// head size not a multiple of 32) take the general path.
#[test]
fn varlen_decode_shapes() {
    let cases = [
        (2, 1, 16, 16, DType::BF16),
        (3, 1, 48, 5, DType::BF16),
        (10, 2, 96, 1, DType::F8E4M3),
        (12, 2, 80, 48, DType::BF16),
        (7, 1, 160, 16, DType::F8E5M2),
        (24, 2, 256, 32, DType::BF16),
        (16, 1, 512, 16, DType::F8E4M3),
        (16, 1, 512, 7, DType::BF16),
        (8, 8, 128, 16, DType::F8E5M2),
        (32, 8, 64, 3, DType::BF16),
        (6, 2, 48, 16, DType::F8E4M3),
    ];
    let lens = [1usize, 16, 17, 64, 65, 129, 300];
    for (i, &(h, hkv, d, bs, stored)) in cases.iter().enumerate() {
        // (a bf16 cache takes bf16 queries; fp8 caches any query dtype)
        let dt = if stored.is_fp8() {
            query_dtypes()[i % 3]
        } else {
            DType::BF16
        };
        let mut sp = vspec(dt, stored, h, hkv, d, bs, 1200 + i as u64);
        match i % 4 {
            0 => {}
            1 => {
                sp.window = (70, -1);
                sp.sinks = true;
                sp.descale = 1;
            }
            2 => {
                sp.softcap = 20.0;
                sp.alibi = 1;
                sp.hnd = true;
            }
            _ => {
                sp.descale = 2;
                sp.alibi = 2;
                sp.causal = false;
                sp.window = (100, 5);
            }
        }
        let seqs: Vec<(usize, usize)> = lens.iter().map(|&l| (1, l)).collect();
        VarlenCase::new(sp, &seqs).check();
    }
}

/// Every fp8 code through varlen decode rows: a one-token context whose value
/// row holds all 256 codes, and 256 one-token sequences sharing one key row
/// of all codes (query `s` one-hot at head-dim `s`: the LSE is that key's
/// scaled logit).
#[test]
fn varlen_decode_fp8_every_code() {
    for stored in [DType::F8E4M3, DType::F8E5M2] {
        let mut c = VarlenCase::new(vspec(DType::BF16, stored, 1, 1, 256, 16, 31), &[(1, 1)]);
        let b = c.table.view().get_i64(&[0, 0]) as usize;
        for i in 0..256 {
            c.v.set_bits(&[b, 0, 0, i], i as u64);
        }
        let (want, _) = c.reference();
        let vmax = (0..256)
            .map(|i| want.get(&[0, 0, i]).abs() as f64)
            .filter(|x| x.is_finite())
            .fold(0.0, f64::max);
        for_each_path(|isa| {
            let mut out = Buf::zeros(DType::BF16, &c.out_shape());
            c.run(&mut out, None).unwrap();
            for i in 0..256 {
                let (g, w) = (out.get(&[0, 0, i]), want.get(&[0, 0, i]));
                let ok = g == w
                    || (g.is_nan() && w.is_nan())
                    || ((g - w).abs() as f64) <= 8e-3 * (w.abs() as f64) + 1e-6 * vmax;
                assert!(ok, "{isa} {stored} value code {i:#x}: {g} vs {w}");
            }
        });

        let mut c = VarlenCase::new(
            vspec(DType::BF16, stored, 1, 1, 256, 16, 32),
            &[(1, 1); 256],
        );
        let b = c.table.view().get_i64(&[0, 0]) as usize;
        for s in 0..256 {
            for j in 0..c.table.shape[1] {
                c.table.set_bits(&[s, j], b as u64);
            }
            for i in 0..256 {
                c.q.set(&[s, 0, i], if i == s { 1.0 } else { 0.0 });
            }
        }
        for i in 0..256 {
            c.k.set_bits(&[b, 0, 0, i], i as u64);
        }
        let (_, want_lse) = c.reference();
        for_each_path(|isa| {
            let mut out = Buf::zeros(DType::BF16, &c.out_shape());
            let mut lse = Buf::zeros(DType::F32, &[1, c.q.shape[0]]);
            c.run(&mut out, Some(&mut lse)).unwrap();
            for s in 0..256 {
                let (g, w) = (lse.get(&[0, s]), want_lse.get(&[0, s]));
                let ok = g == w || (g.is_nan() && w.is_nan()) || (g - w).abs() <= 1e-6 * w.abs();
                assert!(ok, "{isa} {stored} key code {s:#x}: {g} vs {w}");
            }
        });
    }
}

/// fp8 decode rows whose queries reach 2^7 and beyond: the avx2 decode path
/// (`xf_varlen`) then widens the keys with their 2^120 / 2^112 factor
/// instead of moving it onto q (which could overflow). Sequences with small
/// and large queries share one call, so kv-head groups of both kinds run
/// side by side; f32 and bf16 queries, e4m3 and e5m2, odd lengths, 1 and 2
/// threads.
#[test]
fn varlen_decode_fp8_large_queries() {
    let lens = [1usize, 17, 64, 65, 130];
    for (n, (dt, stored, h, hkv, d)) in [
        (DType::F32, DType::F8E4M3, 16, 2, 256),
        (DType::BF16, DType::F8E5M2, 32, 8, 128),
        (DType::F32, DType::F8E5M2, 6, 2, 96),
        (DType::BF16, DType::F8E4M3, 8, 8, 64),
    ]
    .into_iter()
    .enumerate()
    {
        let sp = vspec(dt, stored, h, hkv, d, 16, 1500 + n as u64);
        let seqs: Vec<(usize, usize)> = lens.iter().map(|&l| (1, l)).collect();
        let mut c = VarlenCase::new(sp, &seqs);
        // Sequence s: one element of head s % h at +-(64 << s % 3): 64 keeps the factor on q, 128 and
        // 256 (|q| >= 2^7) put it on the keys; the last sequence keeps its small queries.
        for s in 0..lens.len() - 1 {
            let v = (64 << (s % 3)) as f32 * if s % 2 == 0 { 1.0 } else { -1.0 };
            c.q.set(&[s, s % h, (7 * s + 3) % d], v);
        }
        c.check();
        c.assert_thread_invariant(&format!("{stored} large queries"));
    }
}

/// Decode-only batches give the same bits on 1, 2 and 3 threads (the launcher
/// groups kv heads per grid block differently) on every tier, bf16 and fp8.
#[test]
fn varlen_decode_only_thread_invariance() {
    // (fp8 with 4 and 8 query heads per kv head: both on the amx tile path)
    for (n, (stored, h, hkv)) in [
        (DType::BF16, 32, 8),
        (DType::F8E4M3, 16, 2),
        (DType::F8E5M2, 32, 8),
    ]
    .into_iter()
    .enumerate()
    {
        let mut sp = vspec(DType::BF16, stored, h, hkv, 64, 16, 800 + n as u64);
        sp.sinks = true;
        sp.window = (300, -1);
        let seqs: Vec<(usize, usize)> = (0..5).map(|k| (1, 100 + 97 * k)).collect();
        VarlenCase::new(sp, &seqs).assert_thread_invariant(&format!("{stored}"));
    }
}

/// 1024 decode sequences through the varlen op.
#[test]
fn varlen_batch_1024() {
    let mut rng = Rng(88);
    let seqs: Vec<(usize, usize)> = (0..1024).map(|_| (1, 1 + rng.below(40) as usize)).collect();
    let c = VarlenCase::new(vspec(DType::BF16, DType::BF16, 4, 2, 32, 16, 89), &seqs);
    let (want, want_lse) = c.reference();
    let mut out = Buf::zeros(c.dtype, &c.out_shape());
    let mut lse = Buf::zeros(DType::F32, &[4, c.q.shape[0]]);
    c.run(&mut out, Some(&mut lse)).unwrap();
    // The trailing padding row is not written.
    let pad = c.q.shape[0] - 1;
    for hh in 0..4 {
        for i in 0..32 {
            assert_eq!(out.get(&[pad, hh, i]), 0.0);
        }
    }
    let mut want = want;
    for hh in 0..4 {
        for i in 0..32 {
            want.set(&[pad, hh, i], 0.0);
        }
    }
    assert_close(&out, &want, 1.0, "varlen batch 1024");
    for idx in indices(&lse.shape) {
        if idx[1] != pad {
            let (g, w) = (lse.get(&idx), want_lse.get(&idx));
            assert!(
                (g - w).abs() <= 2e-4 * (1.0 + w.abs()),
                "lse {idx:?}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn varlen_thread_invariance() {
    let mut sp = vspec(DType::BF16, DType::F8E4M3, 8, 2, 128, 16, 71);
    sp.sinks = true;
    let c = VarlenCase::new(sp, &[(1, 900), (120, 700), (1, 30), (64, 64)]);
    for (isa, dot, fast) in common::isas()
        .into_iter()
        .flat_map(|i| [(i, true, true), (i, true, false), (i, false, false)])
    {
        let run = |threads: usize| {
            with_threads(threads, || {
                xpu_ops::with_isa(isa, || {
                    xpu_ops::with_attention_fast_decode(fast, || {
                        xpu_ops::with_attention_bf16_dot(dot, || c.output_words())
                    })
                })
                .unwrap()
            })
        };
        let one = run(1);
        assert!(
            one == run(2),
            "{isa} dot={dot} fast={fast}: 2 threads differ"
        );
        assert!(
            one == run(3),
            "{isa} dot={dot} fast={fast}: 3 threads differ"
        );
    }
}

#[test]
fn varlen_bad_inputs() {
    let base = VarlenCase::new(
        vspec(DType::BF16, DType::BF16, 4, 2, 64, 16, 9),
        &[(3, 20), (1, 33)],
    );
    let poisoned = Buf::with_bits(DType::BF16, &base.out_shape(), 0x7fc1);
    let check = |c: &VarlenCase, status: Status, needle: &str| {
        let poisoned = Buf::with_bits(c.dtype, &c.out_shape(), 0x7fc1);
        let mut out = poisoned.clone();
        let mut lse = Buf::with_bits(DType::F32, &[c.heads, c.q.shape[0]], 7);
        let lse0 = lse.data.clone();
        expect_err(c.run(&mut out, Some(&mut lse)), status, needle);
        assert_eq!(out.data, poisoned.data, "output written on error");
        assert_eq!(lse.data, lse0, "lse written on error");
    };
    let mut c = base.clone();
    c.table.set_bits(&[1, 2], 99);
    check(&c, Status::IndexOutOfRange, "block_table");
    let mut c = base.clone();
    c.used = Buf::i32s(&[20, 100], &[2]);
    c.max_k = 100;
    check(&c, Status::IndexOutOfRange, "columns");
    let mut c = base.clone();
    c.max_k = 30;
    check(&c, Status::InvalidValue, "max_seqlen_k");
    let mut c = base.clone();
    c.max_q = 2;
    check(&c, Status::InvalidValue, "max_seqlen_q");
    let mut c = base.clone();
    c.cu = Buf::i32s(&[0, 3, 2], &[3]);
    check(&c, Status::InvalidValue, "cu_seqlens_q");
    let mut c = base.clone();
    c.cu = Buf::i32s(&[0, 3, 9], &[3]);
    c.max_q = 9;
    check(&c, Status::ShapeMismatch, "cu_seqlens_q");
    let mut c = base.clone();
    c.cu = Buf::i32s(&[0, 3], &[2]);
    check(&c, Status::ShapeMismatch, "cu_seqlens_q");
    let c = VarlenCase::new(vspec(DType::BF16, DType::BF16, 3, 2, 64, 16, 9), &[(1, 5)]);
    check(&c, Status::ShapeMismatch, "num_kv_heads");
    let c = VarlenCase::new(vspec(DType::BF16, DType::BF16, 2, 2, 36, 16, 9), &[(1, 5)]);
    check(&c, Status::Unsupported, "head_size 36");
    let c = VarlenCase::new(vspec(DType::BF16, DType::BF16, 2, 2, 520, 16, 9), &[(1, 5)]);
    check(&c, Status::Unsupported, "head_size 520");
    let c = VarlenCase::new(vspec(DType::BF16, DType::F16, 2, 2, 64, 16, 9), &[(1, 5)]);
    check(&c, Status::DtypeMismatch, "`k`");
    let mut c = base.clone();
    c.softcap = -1.0;
    check(&c, Status::InvalidValue, "softcap");
    let mut c = base.clone();
    c.window = (-2, 0);
    check(&c, Status::InvalidValue, "window_size");
    let mut c = base.clone();
    c.alibi = Some(Buf::f32s(&[0.1; 6], &[3, 2]));
    check(&c, Status::ShapeMismatch, "alibi_slopes");
    let mut c = base.clone();
    c.s_aux = Some(Buf::f32s(&[0.1; 3], &[3]));
    check(&c, Status::ShapeMismatch, "s_aux");
    let mut c = VarlenCase::new(
        vspec(DType::BF16, DType::F8E4M3, 4, 2, 64, 16, 9),
        &[(3, 20), (1, 33)],
    );
    c.k_descale = Some(Buf::f32s(&[1.0; 3], &[3]));
    check(&c, Status::ShapeMismatch, "k_descale");
    c.k_descale = Some(Buf::f32s(&[f32::INFINITY], &[1]));
    check(&c, Status::InvalidValue, "k_descale");
    // LSE of the wrong shape.
    let mut out = poisoned.clone();
    let mut lse = Buf::zeros(DType::F32, &[4, 2]);
    expect_err(
        base.run(&mut out, Some(&mut lse)),
        Status::ShapeMismatch,
        "softmax_lse",
    );
    assert_eq!(out.data, poisoned.data);
}

// ---- merge_attn_states -------------------------------------------------------------

fn merge_case(dtype: DType, n: usize, h: usize, d: usize, seed: u64) -> (Buf, Buf, Buf, Buf) {
    let mut rng = Rng(seed);
    let mut p = Buf::zeros(dtype, &[n, h, d]);
    let mut s = Buf::zeros(dtype, &[n, h, d]);
    for idx in indices(&[n, h, d]) {
        let (a, b) = (rng.uniform(), rng.uniform());
        p.set(&idx, a);
        s.set(&idx, b);
    }
    let specials = [f32::NEG_INFINITY, f32::INFINITY, 0.0, 80.0, -80.0];
    let mut pl = Buf::zeros(DType::F32, &[h, n]);
    let mut sl = Buf::zeros(DType::F32, &[h, n]);
    for hh in 0..h {
        for t in 0..n {
            let pick = |rng: &mut Rng| {
                if rng.below(4) == 0 {
                    specials[rng.below(specials.len() as u64) as usize]
                } else {
                    rng.uniform() * 10.0
                }
            };
            let (a, b) = (pick(&mut rng), pick(&mut rng));
            pl.set(&[hh, t], a);
            sl.set(&[hh, t], b);
        }
    }
    (p, pl, s, sl)
}

fn merge(
    out: &mut Buf,
    p: &Buf,
    pl: &Buf,
    s: &Buf,
    sl: &Buf,
    lse: Option<&mut Buf>,
) -> xpu_ops::Result<()> {
    let mut lv = lse.map(|l| l.view_mut());
    xpu_ops::merge_attn_states(
        &mut out.view_mut(),
        &p.view(),
        &pl.view(),
        &s.view(),
        &sl.view(),
        lv.as_mut(),
    )
}

#[test]
fn merge_parity() {
    for (i, dtype) in query_dtypes().into_iter().enumerate() {
        for (n, h, d) in [(1, 1, 8), (7, 3, 64), (33, 4, 100), (2, 2, 520)] {
            let (mut p, pl, s, sl) = merge_case(dtype, n, h, d, 1000 + i as u64 + n as u64);
            // An empty state's output may be garbage: it must not leak.
            for t in 0..n {
                for hh in 0..h {
                    if pl.get(&[hh, t]).is_infinite() {
                        p.set(&[t, hh, 0], f32::NAN);
                    }
                }
            }
            let mut want = Buf::zeros(dtype, &[n, h, d]);
            let mut want_lse = Buf::zeros(DType::F32, &[h, n]);
            reference::merge_attn_states(
                &mut want.view_mut(),
                &p.view(),
                &pl.view(),
                &s.view(),
                &sl.view(),
                Some(&mut want_lse.view_mut()),
            );
            for_each_path(|isa| {
                let mut out = Buf::with_bits(dtype, &[n, h, d], nan_bits(dtype));
                let mut lse = Buf::zeros(DType::F32, &[h, n]);
                merge(&mut out, &p, &pl, &s, &sl, Some(&mut lse)).unwrap();
                // One rounding of the output: within one ulp.
                let ulp = match dtype {
                    DType::F32 => 2f64.powi(-23),
                    DType::F16 => 2f64.powi(-10),
                    _ => 2f64.powi(-7),
                };
                for idx in indices(&out.shape) {
                    let (g, w) = (out.get(&idx) as f64, want.get(&idx) as f64);
                    assert!(
                        (g - w).abs() <= ulp * w.abs().max(1e-30) * 1.01 + 1e-7,
                        "{isa} {dtype} {idx:?}: {g} vs {w}"
                    );
                }
                assert_lse_close(&lse, &want_lse, 1e-6, &format!("{isa} merge lse"));
            });
        }
    }
}

#[test]
fn merge_both_empty_and_nan() {
    let p = Buf::f32s(&[f32::NAN; 4], &[1, 1, 4]);
    let s = Buf::f32s(&[1.0; 4], &[1, 1, 4]);
    for (a, b, want, want_lse) in [
        (f32::NEG_INFINITY, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY),
        (f32::INFINITY, f32::INFINITY, 0.0, f32::NEG_INFINITY),
        (f32::INFINITY, 2.0, 1.0, 2.0),
        (f32::NAN, 2.0, f32::NAN, f32::NAN),
    ] {
        let mut out = Buf::zeros(DType::F32, &[1, 1, 4]);
        let mut lse = Buf::zeros(DType::F32, &[1, 1]);
        merge(
            &mut out,
            &p,
            &Buf::f32s(&[a], &[1, 1]),
            &s,
            &Buf::f32s(&[b], &[1, 1]),
            Some(&mut lse),
        )
        .unwrap();
        let g = out.get(&[0, 0, 0]);
        assert!(g == want || (g.is_nan() && want.is_nan()), "{a} {b}: {g}");
        let l = lse.get(&[0, 0]);
        assert!(
            l == want_lse || (l.is_nan() && want_lse.is_nan()),
            "{a} {b}: lse {l}"
        );
    }
}

#[test]
fn merge_in_place_and_bad_inputs() {
    let (p, pl, s, sl) = merge_case(DType::BF16, 5, 2, 16, 3);
    let mut want = Buf::zeros(DType::BF16, &[5, 2, 16]);
    merge(&mut want, &p, &pl, &s, &sl, None).unwrap();
    // In place over the prefix output.
    let mut inplace = p.clone();
    let v = inplace.view_mut();
    // SAFETY: output and prefix_output are the same view, which the op allows.
    let mut alias =
        unsafe { TensorViewMut::from_raw(v.view().as_ptr() as *mut u8, v.layout().clone()) };
    xpu_ops::merge_attn_states(
        &mut alias,
        &v.view(),
        &pl.view(),
        &s.view(),
        &sl.view(),
        None,
    )
    .unwrap();
    drop(v);
    assert_eq!(inplace.data, want.data);

    let mut out = Buf::with_bits(DType::BF16, &[5, 2, 16], 0x1234);
    let out0 = out.data.clone();
    let bad_lse = Buf::zeros(DType::F32, &[5, 2]);
    expect_err(
        merge(&mut out, &p, &bad_lse, &s, &sl, None),
        Status::ShapeMismatch,
        "prefix_lse",
    );
    let f16 = Buf::zeros(DType::F16, &[5, 2, 16]);
    expect_err(
        merge(&mut out, &p, &pl, &f16, &sl, None),
        Status::DtypeMismatch,
        "suffix_output",
    );
    let small = Buf::zeros(DType::BF16, &[5, 2, 8]);
    expect_err(
        merge(&mut out, &p, &pl, &small, &sl, None),
        Status::ShapeMismatch,
        "suffix_output",
    );
    let mut lse = Buf::zeros(DType::F16, &[2, 5]);
    expect_err(
        merge(&mut out, &p, &pl, &s, &sl, Some(&mut lse)),
        Status::DtypeMismatch,
        "output_lse",
    );
    assert_eq!(out.data, out0);
}

#[test]
fn merge_thread_invariance() {
    let (p, pl, s, sl) = merge_case(DType::F16, 300, 8, 128, 4);
    let run = |t: usize| {
        with_threads(t, || {
            let mut out = Buf::zeros(DType::F16, &[300, 8, 128]);
            merge(&mut out, &p, &pl, &s, &sl, None).unwrap();
            out.data
        })
    };
    assert!(run(1) == run(3));
}
