//! Criterion benchmarks of sampling (issue 6): the cases of
//! `xpu_ops::bench::sampling` (the same ones `xpu-ops bench sampling` runs:
//! V in {151936, 248320}, B in {1, 8, 64}, f32 logits, cold, and hot for
//! B in {1, 8}; see that module for the samplers, the rows, the pool and the
//! hot buffer), on one thread, and B = 64 again on two. `sort_baseline`
//! (B = 1, 8) is the sort-based sampler (softmax, full sort of the row,
//! top-k, cumsum top-p, draw) measured in the same run.
//!
//! After criterion's output a table reports µs per row (mean per call / B),
//! the passes over the row the algorithm makes, GB/s (passes x row bytes /
//! time), the fraction of the one-pass roofline (row bytes / one-thread DRAM
//! read bandwidth) and the ratio to the sort baseline of the same V, B,
//! thread count and cache regime. `SAMPLING_BENCH_QUICK=1` keeps only
//! V = 151936; criterion's filter (`cargo bench --bench sampling -- 'B=1,'`)
//! also selects cases, and only matching cases allocate anything.

use std::time::{Duration, Instant};

use criterion::Criterion;
use xpu_ops::bench::sampling::{cases_with_shapes, Sampler, Shape};
use xpu_ops::bench::Config;
use xpu_ops::probe;

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(600))
        .configure_from_args();
    let quick = std::env::var_os("SAMPLING_BENCH_QUICK").is_some();
    let cfg = Config::default();
    xpu_ops::set_num_threads(1).unwrap();
    let bw1 = probe::read_bandwidth(512 << 20);
    println!(
        "isa {}, one-thread DRAM read {:.1} GB/s",
        xpu_ops::active_isa(),
        bw1 / 1e9
    );
    // (shape, threads, mean seconds per call)
    let mut table: Vec<(Shape, usize, f64)> = Vec::new();
    for threads in [1, 2] {
        xpu_ops::set_num_threads(threads).unwrap();
        let mut g = c.benchmark_group(format!("sampling/t{threads}"));
        for (shape, case) in cases_with_shapes(&cfg) {
            if (quick && shape.vocab != 151_936) || (threads == 2 && shape.batch != 64) {
                continue;
            }
            let name = case.info.name();
            g.throughput(criterion::Throughput::Bytes(case.info.work.bytes as u64));
            let mut pending = Some(case);
            let mut runner = None;
            let (mut total, mut calls) = (Duration::ZERO, 0u64);
            g.bench_function(name, |b| {
                // Set up on first use, so filtered-out cases allocate nothing.
                let run =
                    runner.get_or_insert_with(|| pending.take().expect("set up once").setup().1);
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        run();
                    }
                    let el = t.elapsed();
                    total += el;
                    calls += iters;
                    el
                });
            });
            drop(runner);
            if calls > 0 {
                table.push((shape, threads, total.as_secs_f64() / calls as f64));
            }
        }
        g.finish();
    }
    c.final_summary();
    println!("\ncold: successive batches of one pool of {} MiB; hot: one buffer sampled by every call; one-pass roofline at one-thread read bandwidth", cfg.cold_bytes() >> 20);
    println!(
        "V       B   thr  case                               us/row  passes   GB/s  roofline  vs sort"
    );
    for &(s, threads, t) in &table {
        let per_row = t / s.batch as f64;
        let row_bytes = (s.vocab * 4) as f64;
        let base = table
            .iter()
            .find(|e| {
                e.0.vocab == s.vocab
                    && e.0.batch == s.batch
                    && e.0.hot == s.hot
                    && e.1 == threads
                    && e.0.sampler == Sampler::SortBaseline
            })
            .map(|e| e.2);
        let ratio = match base {
            Some(bt) if s.sampler != Sampler::SortBaseline => format!("{:.0}x", bt / t),
            _ => String::new(),
        };
        let info = s.info();
        let case = info.shape.splitn(3, ' ').nth(2).unwrap_or("");
        println!(
            "{:<7} {:<3} {threads:<4} {:<34} {:>7.1} {:>7.1} {:>6.1} {:>8.2} {:>8}",
            s.vocab,
            s.batch,
            format!(
                "{} {case}",
                match s.sampler {
                    Sampler::TopKTopP(..) => "flashinfer",
                    Sampler::SortBaseline => "sort",
                    _ => "vllm",
                }
            ),
            per_row * 1e6,
            s.sampler.passes(),
            s.sampler.passes() * row_bytes / per_row / 1e9,
            row_bytes / bw1 / per_row,
            ratio
        );
    }
}
