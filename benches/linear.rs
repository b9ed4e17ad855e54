//! Criterion benchmarks of the FC / GEMM family: the cases of
//! `xpu_ops::bench::linear` (the ones `xpu-ops bench linear` runs: PERF.md
//! shapes, cold weights for decode), each followed by its fraction of this
//! machine's measured roofline (DRAM read bandwidth for decode, fp32 FMA peak
//! for GEMMs) and, for the f32 and bf16 `linear` GEMM cases, OpenBLAS sgemm
//! (numpy) on the same shape measured right after in a subprocess with
//! `OPENBLAS_CORETYPE` / `OPENBLAS_L2_SIZE` unset and `OPENBLAS_NUM_THREADS`
//! equal to our thread count, with the ratio.
//!
//! Runs with 1 and then 2 threads (`XPU_OPS_NUM_THREADS` pins one count).
//! `cargo bench --bench linear -- 'linear/M=16'` runs a subset (criterion's
//! filter; only matching cases allocate anything). On a shared machine
//! absolute times drift: compare the ratios.

use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use xpu_ops::bench::{self, Config, Measured, Timing};
use xpu_ops::probe;

/// numpy sgemm best time for `[M,K] x [K,N]`, or None without numpy.
fn openblas_time(m: usize, k: usize, n: usize, threads: usize) -> Option<f64> {
    let script = format!(
        "import numpy as np, time\n\
         a=np.random.rand({m},{k}).astype(np.float32); b=np.random.rand({n},{k}).astype(np.float32).T\n\
         c=np.empty(({m},{n}),np.float32); np.matmul(a,b,out=c); best=1e9\n\
         for _ in range(7):\n    t=time.perf_counter(); np.matmul(a,b,out=c); best=min(best, time.perf_counter()-t)\n\
         print(best)"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .env("OPENBLAS_NUM_THREADS", threads.to_string())
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// (M, K, N) of a `linear` GEMM case's shape string, None for decode cases.
fn gemm_shape(info: &bench::CaseInfo) -> Option<(usize, usize, usize)> {
    if info.op != "linear" || info.shape.contains("cold") {
        return None;
    }
    let get = |key: &str| -> Option<usize> {
        info.shape
            .split(' ')
            .find_map(|t| t.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    Some((get("M=")?, get("K=")?, get("N=")?))
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800))
        .configure_from_args();
    let pinned = std::env::var("XPU_OPS_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let counts: Vec<usize> = pinned.map_or(vec![1, 2], |n| vec![n]);
    let cfg = Config::default();
    for threads in counts {
        xpu_ops::set_num_threads(threads).expect("thread pool");
        let roof = probe::measure(probe::default_probe_bytes());
        println!(
            "== {threads} thread(s), isa {}, bf16 GEMM microkernel {}: {}",
            xpu_ops::active_isa(),
            if xpu_ops::ops::linear::bf16_dot_preferred() {
                "vdpbf16ps"
            } else {
                "fp32 FMA"
            },
            bench::fmt_roofline(&roof)
        );
        let mut group = c.benchmark_group(format!("linear/{threads}t"));
        group.sample_size(10);
        for case in bench::linear::cases(&cfg) {
            let info = case.info.clone();
            group.throughput(Throughput::Bytes(info.work.bytes as u64));
            let mut pending = Some(case);
            let mut runner = None;
            let (mut total, mut calls, mut best) = (Duration::ZERO, 0u64, f64::INFINITY);
            group.bench_function(info.name(), |b| {
                // Set up on first use, so cases criterion filters out allocate nothing.
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
                    best = best.min(el.as_secs_f64() / iters as f64);
                    el
                });
            });
            drop(runner);
            if calls == 0 {
                continue;
            }
            let mean = total.as_secs_f64() / calls as f64;
            let m = Measured {
                info: info.clone(),
                timing: Timing {
                    median: mean,
                    min: best,
                    calls: calls as usize,
                },
            };
            let (rate, unit) = m.achieved(&roof);
            let mut line = format!(
                "    roofline: {rate:.1} {unit} = {:.0}% of the measured limit (mean {}, best {} per call){}",
                m.fraction(&roof) * 100.0,
                bench::fmt_time(mean),
                bench::fmt_time(best),
                match (m.info.floor, m.meets_floor(&roof)) {
                    (Some(f), Some(ok)) => format!(", floor {f}: {}", if ok { "ok" } else { "MISS" }),
                    _ => String::new(),
                }
            );
            if let Some((mm, k, n)) = gemm_shape(&info).filter(|_| info.dtype != "f16") {
                if let Some(ob) = openblas_time(mm, k, n, threads) {
                    let flops = 2.0 * (mm * n * k) as f64;
                    line += &format!(
                        "\n    OpenBLAS fp32 sgemm: {:.1} GFLOP/s; ours ({}) at best / OpenBLAS = {:.2}x",
                        flops / ob / 1e9,
                        info.dtype,
                        ob / best
                    );
                }
            }
            println!("{line}");
        }
        group.finish();
    }
    c.final_summary();
}
