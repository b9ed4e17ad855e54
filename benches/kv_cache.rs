//! Criterion benchmarks of the KV-cache ops: the cases of
//! `xpu_ops::bench::kv_cache` (the same ones `xpu-ops bench kv_cache` runs),
//! each followed by its fraction of this machine's measured roofline.
//!
//! `cargo bench --bench kv_cache -- 'reshape_and_cache_flash/T=8192'` runs a
//! subset (criterion's filter; only matching cases allocate anything).
//! `XPU_OPS_NUM_THREADS=1` pins the thread count.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use xpu_ops::bench::{self, Config, Measured, Timing};
use xpu_ops::probe;

fn kv_cache(c: &mut Criterion) {
    let cfg = Config::default();
    let roof = probe::measure(probe::default_probe_bytes());
    println!("roofline: {}", bench::fmt_roofline(&roof));
    let mut group = c.benchmark_group("kv_cache");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(600));
    for case in bench::kv_cache::cases(&cfg) {
        let info = case.info.clone();
        group.throughput(Throughput::Bytes(info.work.bytes as u64));
        let mut pending = Some(case);
        let mut runner = None;
        let (mut total, mut calls) = (Duration::ZERO, 0u64);
        group.bench_function(info.name(), |b| {
            // Set up on first use, so cases criterion filters out allocate nothing.
            let run = runner.get_or_insert_with(|| pending.take().expect("set up once").setup().1);
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
            let mean = total.as_secs_f64() / calls as f64;
            let m = Measured {
                info,
                timing: Timing {
                    median: mean,
                    min: mean,
                    calls: calls as usize,
                },
            };
            let (rate, unit) = m.achieved(&roof);
            println!(
                "    roofline: {:.1} {unit} = {:.0}% of the measured limit (mean {} per call){}",
                rate,
                m.fraction(&roof) * 100.0,
                bench::fmt_time(mean),
                match (m.info.floor, m.meets_floor(&roof)) {
                    (Some(f), Some(ok)) =>
                        format!(", floor {f}: {}", if ok { "ok" } else { "MISS" }),
                    _ => String::new(),
                }
            );
        }
    }
    group.finish();
}

criterion_group!(benches, kv_cache);
criterion_main!(benches);
