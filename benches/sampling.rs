//! Sampling benchmarks (issue 6): V in {151936, 248320}, B in {1, 8, 64},
//! from f32 logits, one thread (and two for B = 64):
//!
//! * `topk20_topp0.95`, `topk50_topp0.8`: FlashInfer `top_k_top_p_sampling_from_logits`;
//! * `minp0.05`: vLLM sampler, temperature 1, min-p 0.05;
//! * `vllm_t0.7_k50_p0.9`: vLLM sampler, temperature 0.7, top-k 50, top-p 0.9;
//! * `vllm_topp0.9`: vLLM sampler, top-p only (no top-k: the multi-pass path);
//! * `greedy`: vLLM sampler, temperature 0;
//! * `sort_baseline` (B = 1, 8): the sort-based sampler (softmax, full
//!   `sort_unstable_by` of the row, top-k, cumsum top-p, draw) in the same run.
//!
//! Rows are LLM-like: N(0, 2^2) logits with ~10 tokens boosted by 10..16.
//! Cold cache: each iteration takes the next batch of a 256 MiB pool. After
//! criterion's output a table reports us per row, the passes over the row the
//! algorithm makes, GB/s (passes x row bytes / time), the fraction of the
//! one-pass roofline (row bytes / measured DRAM read bandwidth) and the
//! baseline ratio. `SAMPLING_BENCH_QUICK=1` keeps only V = 151936.

use std::time::{Duration, Instant};

use criterion::{black_box, Criterion, Throughput};
use xpu_ops::{
    probe, sampler_forward, top_k_top_p_sampling_from_logits, SamplingMetadata, TensorView,
    TensorViewMut,
};

const POOL_FLOATS: usize = 64 << 20; // 256 MiB of f32

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (a, b) = (self.unit(), self.unit());
        (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
    }
}

fn pool(rng: &mut Rng) -> Vec<f32> {
    let mut p: Vec<f32> = (0..POOL_FLOATS).map(|_| 2.0 * rng.normal()).collect();
    for v in [151_936usize, 248_320] {
        for row in 0..POOL_FLOATS / v {
            for _ in 0..5 {
                let i = row * v + (rng.next() % v as u64) as usize;
                p[i] = 10.0 + 6.0 * rng.unit();
            }
        }
    }
    p
}

/// The sort-based sampler a framework without a fused kernel runs.
fn sort_baseline(row: &[f32], k: usize, top_p: f32, u: f32) -> usize {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|&x| (x - m).exp()).collect();
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    idx.sort_unstable_by(|&a, &b| e[b as usize].total_cmp(&e[a as usize]));
    let top = &idx[..k];
    let s: f32 = top.iter().map(|&i| e[i as usize]).sum();
    let (mut cum, mut n) = (0.0f32, 0);
    for &i in top {
        n += 1;
        cum += e[i as usize] / s;
        if cum >= top_p {
            break;
        }
    }
    let s2: f32 = top[..n].iter().map(|&i| e[i as usize]).sum();
    let mut acc = 0.0;
    for &i in &top[..n] {
        acc += e[i as usize] / s2;
        if acc > u {
            return i as usize;
        }
    }
    top[n - 1] as usize
}

#[derive(Clone, Copy)]
enum Case {
    TopKTopP(i64, f32),
    MinP,
    Vllm,
    VllmTopP,
    Greedy,
    Baseline,
}

impl Case {
    fn name(self) -> String {
        match self {
            Case::TopKTopP(k, p) => format!("topk{k}_topp{p}"),
            Case::MinP => "minp0.05".into(),
            Case::Vllm => "vllm_t0.7_k50_p0.9".into(),
            Case::VllmTopP => "vllm_topp0.9".into(),
            Case::Greedy => "greedy".into(),
            Case::Baseline => "sort_baseline".into(),
        }
    }
    /// Passes over the row the kernel makes on these rows (by construction):
    /// top-k and min-p paths filter candidates in one pass; top-p alone takes
    /// the max + a 512-candidate probe, the weight total, and when the nucleus
    /// is larger than the probe (about half of these rows) a histogram select
    /// (two passes restricted to the candidates) and a draw pass: 2 to 4.5,
    /// counted as 3; greedy is the max plus a scan to the first argmax.
    fn passes(self) -> f64 {
        match self {
            Case::TopKTopP(..) | Case::MinP | Case::Vllm => 1.0,
            Case::VllmTopP => 3.0,
            Case::Greedy => 1.5,
            Case::Baseline => 1.0,
        }
    }
}

fn run(case: Case, x: &TensorView, out: &mut [i64], offset: u64) {
    let b = out.len();
    let mut o = TensorViewMut::new(out, &[b]).unwrap();
    match case {
        Case::TopKTopP(k, p) => top_k_top_p_sampling_from_logits(
            x,
            k.into(),
            p.into(),
            None,
            "top_k_first",
            7u64.into(),
            offset.into(),
            &mut o,
        )
        .unwrap(),
        Case::Baseline => {
            let v = x.shape()[1];
            let data = unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, b * v) };
            for (r, slot) in out.iter_mut().enumerate() {
                *slot = sort_baseline(&data[r * v..(r + 1) * v], 20, 0.95, 0.37) as i64;
            }
        }
        _ => {
            let md = match case {
                Case::MinP => SamplingMetadata {
                    min_p: Some(0.05f32.into()),
                    offset: offset.into(),
                    ..Default::default()
                },
                Case::Vllm => SamplingMetadata {
                    temperature: Some(0.7f32.into()),
                    top_k: Some(50i64.into()),
                    top_p: Some(0.9f32.into()),
                    offset: offset.into(),
                    ..Default::default()
                },
                Case::VllmTopP => SamplingMetadata {
                    top_p: Some(0.9f32.into()),
                    offset: offset.into(),
                    ..Default::default()
                },
                _ => SamplingMetadata {
                    temperature: None,
                    ..Default::default()
                },
            };
            sampler_forward(x, &md, &mut o, None).unwrap();
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(600))
        .configure_from_args();
    let quick = std::env::var_os("SAMPLING_BENCH_QUICK").is_some();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let bw1 = one.install(|| probe::read_bandwidth(512 << 20));
    println!(
        "isa {}, one-thread DRAM read {:.1} GB/s",
        xpu_ops::active_isa(),
        bw1 / 1e9
    );
    let data = pool(&mut Rng(1));
    let mut table = vec![];
    let vocabs: &[usize] = if quick {
        &[151_936]
    } else {
        &[151_936, 248_320]
    };
    for &v in vocabs {
        for b in [1usize, 8, 64] {
            let per = b * v;
            let batches = POOL_FLOATS / per;
            let views: Vec<TensorView> = (0..batches)
                .map(|i| TensorView::new(&data[i * per..(i + 1) * per], &[b, v]).unwrap())
                .collect();
            let mut cases = vec![
                Case::TopKTopP(20, 0.95),
                Case::TopKTopP(50, 0.8),
                Case::MinP,
                Case::Vllm,
                Case::VllmTopP,
                Case::Greedy,
            ];
            if b <= 8 {
                cases.push(Case::Baseline);
            }
            let pools: Vec<(usize, &rayon::ThreadPool)> = if b == 64 {
                vec![(1, &one), (2, &two)]
            } else {
                vec![(1, &one)]
            };
            for (threads, tp) in pools {
                let mut g = c.benchmark_group(format!("sampling/V{v}/B{b}/t{threads}"));
                g.throughput(Throughput::Bytes((per * 4) as u64));
                for &case in &cases {
                    let mut out = vec![0i64; b];
                    let mut i = 0usize;
                    g.bench_function(case.name(), |bench| {
                        bench.iter(|| {
                            tp.install(|| run(case, &views[i % batches], &mut out, i as u64));
                            i += 1;
                            black_box(&out);
                        })
                    });
                    // Own timing for the table: medians over rotating batches
                    // (cold) and over one batch reused (warm: cache-resident when it fits).
                    let reps = if matches!(case, Case::Baseline) {
                        5
                    } else {
                        41
                    };
                    let mut median = |warm: bool| {
                        let mut ts: Vec<f64> = (0..reps)
                            .map(|j| {
                                let x = &views[if warm { 0 } else { (i + j) % batches }];
                                let t = Instant::now();
                                tp.install(|| run(case, x, &mut out, j as u64));
                                t.elapsed().as_secs_f64()
                            })
                            .collect();
                        ts.sort_by(f64::total_cmp);
                        ts[reps / 2] / b as f64
                    };
                    let cold = median(false);
                    let warm = median(true);
                    table.push((v, b, threads, case, cold, warm));
                }
                g.finish();
            }
        }
    }
    c.final_summary();
    println!("\ncold: rotating batches over a 256 MiB pool; warm: one batch reused");
    println!("V       B   thr  case                  cold us/row  passes   GB/s  roofline  vs sort   warm us/row  vs sort");
    for &(v, b, threads, case, t, tw) in &table {
        let row_bytes = (v * 4) as f64;
        let base = table
            .iter()
            .find(|e| e.0 == v && e.1 == b && e.2 == threads && matches!(e.3, Case::Baseline))
            .map(|e| (e.4, e.5));
        let (ratio, ratio_w) = match (base, case) {
            (_, Case::Baseline) | (None, _) => (String::new(), String::new()),
            (Some((bt, bw)), _) => (format!("{:.0}x", bt / t), format!("{:.0}x", bw / tw)),
        };
        println!(
            "{v:<7} {b:<3} {threads:<4} {:<20} {:>12.1} {:>7.1} {:>6.1} {:>8.2} {:>8} {:>13.1} {:>8}",
            case.name(),
            t * 1e6,
            case.passes(),
            case.passes() * row_bytes / t / 1e9,
            row_bytes / bw1 / t,
            ratio,
            tw * 1e6,
            ratio_w
        );
    }
}
