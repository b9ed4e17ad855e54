//! Criterion benchmarks of the attention ops: the cases of
//! `xpu_ops::bench::attention` (the same ones `xpu-ops bench attention`
//! runs: decode over a cold 1 GiB-class cache arena, causal prefill), each
//! followed by its fraction of this machine's measured roofline (prefill
//! against the tier's measured bf16 peak, the reference for it).
//!
//! `cargo bench --bench attention -- 'paged_attention_v2/B=8,ctx=4096'` runs a
//! subset (criterion's filter; only matching cases allocate anything).
//! `XPU_OPS_NUM_THREADS=1` pins the thread count.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use xpu_ops::bench::{self, Config, Measured, Timing};
use xpu_ops::probe;

fn attention(c: &mut Criterion) {
    let cfg = Config::default();
    let roof = probe::measure(probe::default_probe_bytes());
    println!(
        "roofline: {}; bf16 path: {}",
        bench::fmt_roofline(&roof),
        if xpu_ops::attention_bf16_dot() {
            "vdpbf16ps"
        } else {
            "fp32 FMA"
        }
    );
    let mut group = c.benchmark_group("attention");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800));
    for case in bench::attention::cases(&cfg) {
        let info = case.info.clone();
        if info.work.flops > info.work.bytes * 100.0 {
            group.throughput(Throughput::Elements(info.work.flops as u64));
        } else {
            group.throughput(Throughput::Bytes(info.work.bytes as u64));
        }
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

criterion_group!(benches, attention);
criterion_main!(benches);
