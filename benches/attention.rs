//! Attention benchmarks with their rooflines (PERF.md "Method").
//!
//! Decode (`decode/<op>/<model>/<kv>/B=../ctx=..`): one query per sequence
//! over a paged cache, B ∈ {1, 8, 32, 256}, context ∈ {512, 4k, 32k}, heads
//! of Qwen3-Next (16 q / 2 kv, D 256) and Llama (32 / 8, D 128), bf16 and
//! fp8 KV, block size 16, shuffled block tables. The cache pool is 1 GiB
//! (more than any L3 this runs on, 480 MiB included) and iterations rotate
//! through disjoint parts of it (or, for batches larger than the pool,
//! sample it at random), so K/V bytes come from DRAM. Roofline: the K/V bytes read over the
//! measured DRAM read bandwidth (`xpu_ops::probe`).
//!
//! Prefill (`prefill/<model>/T=..`): one causal sequence of T tokens through
//! `flash_attn_varlen_func`, bf16; 2·T·(T+1)·H·D flops. Reported against the
//! measured fp32 FMA peak and the measured bf16 dot-product (`vdpbf16ps`)
//! peak (`xpu_ops::ops::attention::bf16_dot_peak`): the ratio between the
//! two depends on the core (2 on AMD Zen 5, 0.5 on a current Intel Xeon).
//!
//! Each line printed after a benchmark gives the best time of its samples and
//! the achieved fraction of the roofline. Filter with criterion's usual
//! argument: `cargo bench --bench attention -- decode/v2/qwen`.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use xpu_ops::{DType, TensorView, TensorViewMut};

struct Limits {
    read_bw: f64,
    fma_peak: f64,
    bf16_peak: f64,
}

fn limits() -> &'static Limits {
    static L: std::sync::OnceLock<Limits> = std::sync::OnceLock::new();
    L.get_or_init(|| {
        let read_bw = xpu_ops::probe::read_bandwidth(512 << 20);
        let fma_peak = xpu_ops::probe::fma_peak();
        let bf16_peak = xpu_ops::ops::attention::bf16_dot_peak();
        eprintln!(
            "limits: DRAM read {:.1} GB/s, fp32 FMA {:.0} GFLOP/s, bf16 dot {:.0} GFLOP/s ({} threads, {}, bf16 path: {})",
            read_bw / 1e9,
            fma_peak / 1e9,
            bf16_peak / 1e9,
            xpu_ops::num_threads(),
            xpu_ops::active_isa(),
            if xpu_ops::attention_bf16_dot() { "vdpbf16ps" } else { "fp32 FMA" }
        );
        Limits { read_bw, fma_peak, bf16_peak }
    })
}

/// A small deterministic generator for bench data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy)]
struct Model {
    name: &'static str,
    heads: usize,
    kv_heads: usize,
    d: usize,
}

const MODELS: [Model; 2] = [
    Model {
        name: "qwen3next",
        heads: 16,
        kv_heads: 2,
        d: 256,
    },
    Model {
        name: "llama",
        heads: 32,
        kv_heads: 8,
        d: 128,
    },
];
const BS: usize = 16;
const POOL_BYTES: usize = 1 << 30;

/// Times `f` with criterion and remembers the best iteration.
fn bench_best(c: &mut Criterion, name: &str, bytes: u64, mut f: impl FnMut()) -> f64 {
    let best = RefCell::new(f64::INFINITY);
    let mut g = c.benchmark_group("attention");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    if bytes > 0 {
        g.throughput(Throughput::Bytes(bytes));
    }
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                f();
                let e = t.elapsed();
                total += e;
                let mut bst = best.borrow_mut();
                *bst = bst.min(e.as_secs_f64());
            }
            total
        })
    });
    g.finish();
    best.into_inner()
}

/// Decode over a rotating pool of cache blocks larger than L3.
fn decode(c: &mut Criterion) {
    let lim = limits();
    for m in MODELS {
        for kv in ["bf16", "fp8"] {
            for &ctx in &[512usize, 4096, 32768] {
                for &b in &[1usize, 8, 32, 256] {
                    decode_case(c, lim, m, kv, b, ctx);
                }
            }
        }
    }
}

fn decode_case(c: &mut Criterion, lim: &Limits, m: Model, kv: &str, b: usize, ctx: usize) {
    let ops = ["v1", "v2", "varlen"];
    let names: Vec<String> = ops
        .iter()
        .map(|op| format!("decode/{op}/{}/{kv}/B={b}/ctx={ctx}", m.name))
        .collect();
    if !names.iter().any(|n| selected(n)) {
        return;
    }
    let fp8 = kv == "fp8";
    let es = if fp8 { 1 } else { 2 };
    let block_bytes = BS * m.kv_heads * m.d * es; // one of K or V
    let nb = POOL_BYTES / (2 * block_bytes);
    let per_seq = ctx.div_ceil(BS);
    let logical = (b * ctx * m.kv_heads * m.d * es * 2) as u64;
    // Rotations of disjoint blocks when the batch fits the pool several
    // times; otherwise tables sample the whole pool.
    let rotations = (nb / (b * per_seq)).clamp(1, 16);
    let mut rng = Rng(ctx as u64 * 31 + b as u64);
    let mut tables: Vec<Vec<i32>> = Vec::new();
    for r in 0..rotations {
        let t: Vec<i32> = if rotations > 1 {
            let mut ids: Vec<i32> = (0..(b * per_seq) as i32)
                .map(|i| i + (r * b * per_seq) as i32)
                .collect();
            for i in (1..ids.len()).rev() {
                ids.swap(i, rng.below(i + 1));
            }
            ids
        } else {
            (0..b * per_seq).map(|_| rng.below(nb) as i32).collect()
        };
        tables.push(t);
    }
    // The pool, filled with small values (content does not change the work).
    let (h, hkv, d) = (m.heads, m.kv_heads, m.d);
    let pool_elems = nb * BS * hkv * d;
    let (kb, vb): (Vec<u16>, Vec<u16>) = if fp8 {
        (vec![0x3838; pool_elems / 2], vec![0x3838; pool_elems / 2])
    } else {
        let one = bf16::from_f32(0.01).to_bits();
        (vec![one; pool_elems], vec![one; pool_elems])
    };
    let cache_dtype = if fp8 { DType::F8E4M3 } else { DType::BF16 };
    let kbytes = bytes_of(&kb);
    let vbytes = bytes_of(&vb);
    let q: Vec<bf16> = (0..b * h * d)
        .map(|i| bf16::from_f32(((i % 7) as f32 - 3.0) * 0.1))
        .collect();
    let mut out = vec![bf16::ZERO; b * h * d];
    let lens = vec![ctx as i32; b];
    let scale_one = [1.0f32];
    let kvname = if fp8 { "fp8_e4m3" } else { "auto" };
    let np = ctx.div_ceil(512);
    let mut es_buf = vec![0f32; b * h * np];
    let mut ml_buf = vec![0f32; b * h * np];
    let mut tmp = vec![bf16::ZERO; b * h * np * d];
    let x = 16 / es;
    let paged_k =
        TensorView::from_bytes(kbytes, cache_dtype, &[nb, hkv, d / x, BS, x], None).unwrap();
    let paged_v = TensorView::from_bytes(vbytes, cache_dtype, &[nb, hkv, d, BS], None).unwrap();
    let flash_k = TensorView::from_bytes(kbytes, cache_dtype, &[nb, BS, hkv, d], None).unwrap();
    let flash_v = TensorView::from_bytes(vbytes, cache_dtype, &[nb, BS, hkv, d], None).unwrap();
    let qv = TensorView::new(&q, &[b, h, d]).unwrap();
    let lv = TensorView::new(&lens, &[b]).unwrap();
    let sv = TensorView::new(&scale_one, &[1]).unwrap();
    let cu: Vec<i32> = (0..=b as i32).collect();
    let cuv = TensorView::new(&cu, &[b + 1]).unwrap();
    let scale = 1.0 / (d as f32).sqrt();
    for (op, name) in ops.iter().zip(&names) {
        let (op, name) = (*op, name.as_str());
        if !selected(name) {
            continue;
        }
        let mut r = 0;
        let best = bench_best(c, name, logical, || {
            let t = &tables[r % rotations];
            r += 1;
            let bt = TensorView::new(t, &[b, per_seq]).unwrap();
            let mut ov = TensorViewMut::new(&mut out, &[b, h, d]).unwrap();
            let res = match op {
                "v1" => xpu_ops::paged_attention_v1(
                    &mut ov,
                    &qv,
                    &paged_k,
                    &paged_v,
                    hkv,
                    scale,
                    &bt,
                    &lv,
                    BS,
                    ctx,
                    None,
                    kvname,
                    Some(&sv),
                    Some(&sv),
                ),
                "v2" => xpu_ops::paged_attention_v2(
                    &mut ov,
                    &mut TensorViewMut::new(&mut es_buf, &[b, h, np]).unwrap(),
                    &mut TensorViewMut::new(&mut ml_buf, &[b, h, np]).unwrap(),
                    &mut TensorViewMut::new(&mut tmp, &[b, h, np, d]).unwrap(),
                    &qv,
                    &paged_k,
                    &paged_v,
                    hkv,
                    scale,
                    &bt,
                    &lv,
                    BS,
                    ctx,
                    None,
                    kvname,
                    Some(&sv),
                    Some(&sv),
                ),
                _ => xpu_ops::flash_attn_varlen_func(
                    &qv,
                    &flash_k,
                    &flash_v,
                    1,
                    &cuv,
                    ctx,
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
            res.unwrap();
        });
        let bw = logical as f64 / best;
        eprintln!(
            "ROOFLINE {name}: {:.3} ms, {:.1} GB/s = {:.0}% of DRAM read ({:.1} GB/s)",
            best * 1e3,
            bw / 1e9,
            100.0 * bw / lim.read_bw,
            lim.read_bw / 1e9
        );
    }
}

fn bytes_of(v: &[u16]) -> &[u8] {
    // SAFETY: u16 reinterpreted as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 2) }
}

fn selected(name: &str) -> bool {
    // criterion's positional filter; checked here too so skipped cases do not build data.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    args.is_empty()
        || args
            .iter()
            .any(|a| name.contains(a.as_str()) || format!("attention/{name}").contains(a.as_str()))
}

/// Causal prefill of one sequence of T tokens.
fn prefill(c: &mut Criterion) {
    let lim = limits();
    for m in MODELS {
        for &t in &[512usize, 2048, 8192] {
            let name = format!("prefill/{}/T={t}", m.name);
            if !selected(&name) {
                continue;
            }
            let (h, hkv, d) = (m.heads, m.kv_heads, m.d);
            let nb = t.div_ceil(BS);
            let k: Vec<bf16> = (0..nb * BS * hkv * d)
                .map(|i| bf16::from_f32(((i % 13) as f32 - 6.0) * 0.05))
                .collect();
            let v = k.clone();
            let q: Vec<bf16> = (0..t * h * d)
                .map(|i| bf16::from_f32(((i % 11) as f32 - 5.0) * 0.05))
                .collect();
            let mut out = vec![bf16::ZERO; t * h * d];
            let table: Vec<i32> = (0..nb as i32).collect();
            let kv = TensorView::new(&k, &[nb, BS, hkv, d]).unwrap();
            let vv = TensorView::new(&v, &[nb, BS, hkv, d]).unwrap();
            let qv = TensorView::new(&q, &[t, h, d]).unwrap();
            let cu = [0i32, t as i32];
            let used = [t as i32];
            let bt = TensorView::new(&table, &[1, nb]).unwrap();
            let cuv = TensorView::new(&cu, &[2]).unwrap();
            let uv = TensorView::new(&used, &[1]).unwrap();
            let flops = 2.0 * (t * (t + 1)) as f64 * (h * d) as f64;
            let best = bench_best(c, &name, 0, || {
                let mut ov = TensorViewMut::new(&mut out, &[t, h, d]).unwrap();
                xpu_ops::flash_attn_varlen_func(
                    &qv,
                    &kv,
                    &vv,
                    t,
                    &cuv,
                    t,
                    &uv,
                    None,
                    true,
                    (-1, -1),
                    0.0,
                    None,
                    &bt,
                    None,
                    &mut ov,
                    None,
                    None,
                    None,
                )
                .unwrap();
            });
            let rate = flops / best;
            eprintln!(
                "ROOFLINE {name}: {:.1} ms, {:.0} GFLOP/s = {:.0}% of fp32 FMA peak ({:.0}), {:.0}% of bf16 dot peak ({:.0})",
                best * 1e3,
                rate / 1e9,
                100.0 * rate / lim.fma_peak,
                lim.fma_peak / 1e9,
                100.0 * rate / lim.bf16_peak,
                lim.bf16_peak / 1e9
            );
        }
    }
}

criterion_group!(benches, decode, prefill);
criterion_main!(benches);
