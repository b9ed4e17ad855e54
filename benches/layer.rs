//! Criterion benchmarks of the layer ops: the cases of
//! `xpu_ops::bench::layer` (the same ones `xpu-ops bench layer` runs: Qwen3-Next
//! / Qwen3.5 shapes, bf16, cold), then one table of each case against this
//! machine's measured roofline (t_min = max(bytes / copy bandwidth, flops /
//! FMA peak)). The probe runs before and after the cases and the better
//! figures are used, so one unlucky probe on a shared machine does not
//! inflate every fraction.
//!
//! `cargo bench --bench layer -- rms_norm/` runs a subset (criterion's
//! filter; only matching cases allocate anything). `XPU_OPS_NUM_THREADS=1`
//! pins the thread count. The machine is shared and noisy; the measurement
//! windows are short on purpose.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use xpu_ops::bench::{self, Config, Measured, Timing};
use xpu_ops::probe;

fn layer(c: &mut Criterion) {
    let cfg = Config::default();
    let before = probe::measure(probe::default_probe_bytes());
    let mut group = c.benchmark_group("layer");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(800));
    let mut results = Vec::new();
    for case in bench::layer::cases(&cfg) {
        let info = case.info.clone();
        group.throughput(Throughput::Bytes(info.work.bytes as u64));
        let mut pending = Some(case);
        let mut runner = None;
        let (mut best, mut total, mut calls) = (f64::INFINITY, Duration::ZERO, 0u64);
        group.bench_function(info.name(), |b| {
            // Set up on first use, so cases criterion filters out allocate nothing.
            let run = runner.get_or_insert_with(|| pending.take().expect("set up once").setup().1);
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    run();
                }
                let el = t.elapsed();
                best = best.min(el.as_secs_f64() / iters as f64);
                total += el;
                calls += iters;
                el
            });
        });
        drop(runner);
        if calls > 0 {
            results.push(Measured {
                info,
                timing: Timing {
                    median: total.as_secs_f64() / calls as f64,
                    min: best,
                    calls: calls as usize,
                },
            });
        }
    }
    group.finish();
    let roof = before.best(&probe::measure(probe::default_probe_bytes()));
    println!(
        "\nroofline (best of two probes): {}, isa {}",
        bench::fmt_roofline(&roof),
        xpu_ops::active_isa()
    );
    println!("time = mean per call over criterion's samples, best = fastest sample\n");
    println!("{}", bench::table(&results, &roof));
}

criterion_group!(benches, layer);
criterion_main!(benches);
