//! FC / GEMM benchmarks (PERF.md shapes), one and two threads.
//!
//! * `decode/...`: M = 1 (and 4, 16) with bf16/f16/f32, int8 and int4 weights,
//!   cold: at least 1 GiB of weight copies rotated so every call streams its
//!   weights from DRAM. Reported as weight GB/s and the fraction of the
//!   measured DRAM read bandwidth (`xpu_ops::probe::read_bandwidth`), counted
//!   in weight bytes (codes; scales and zeros are listed separately).
//! * `gemm/...`: M = 4 .. 4096, f32/bf16/f16 (+ int4 prefill), GFLOP/s and the
//!   fraction of the measured fp32 FMA peak (`probe::fma_peak`) and of the
//!   bf16 dot peak (`bf16_dot_peak`: `vdpbf16ps`).
//! * OpenBLAS: after each f32 GEMM shape, numpy's sgemm on the same shape runs
//!   in a subprocess with `OPENBLAS_CORETYPE` / `OPENBLAS_L2_SIZE` unset (they
//!   force the AVX2 kernels on these machines) and `OPENBLAS_NUM_THREADS` set
//!   to the thread count; the ratio is printed. Skipped without numpy.
//!
//! Filter like any criterion bench: `cargo bench --bench linear -- decode/1t`.
//! `XPU_OPS_BENCH_QUICK=1` runs one shape per group.

use std::cell::Cell;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use half::{bf16, f16};
use xpu_ops::ops::linear::bf16_dot_peak;
use xpu_ops::{
    linear, set_num_threads, wna16_linear, DType, TensorView, TensorViewMut, Wna16Weight,
};

/// PERF.md K → N.
const KN: [(usize, usize); 7] = [
    (2048, 12288),
    (2048, 64),
    (4096, 2048),
    (2048, 8192),
    (2048, 512),
    (2048, 151_936),
    (4096, 248_320),
];

const COLD_BYTES: usize = 1 << 30;

struct Roof {
    read_bw: f64,
    fma: f64,
    bf16: f64,
}

/// The positional filter criterion will apply (`cargo bench --bench linear -- FILTER`),
/// checked before allocating a case's cold weights.
fn wanted(id: &str) -> bool {
    filter().map_or(true, |f| id.contains(&f))
}

fn filter() -> Option<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filter = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--bench" || a == "--test" || a == "--nocapture" || a == "--exact" {
        } else if a.starts_with("--") {
            i += 1; // an option with a value
        } else {
            filter = Some(a.clone());
        }
        i += 1;
    }
    filter
}

fn quick() -> bool {
    std::env::var("XPU_OPS_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// Pseudo-random bits without an RNG crate.
fn fill_u16(v: &mut [u16], seed: u64) {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for x in v.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        // Small finite values: exponent 0x3c..0x3f (bf16) / 0x34..0x3b (f16) ranges.
        *x = (s as u16 & 0x807f) | 0x3c00;
    }
}

/// Weight copies of `bytes_each`, enough of them to exceed the cold budget.
fn copies(bytes_each: usize) -> usize {
    COLD_BYTES.div_ceil(bytes_each.max(1)).clamp(1, 64)
}

/// Runs one criterion case, recording the best time per call.
fn case(c: &mut Criterion, id: &str, mut f: impl FnMut(u64)) -> Option<f64> {
    let best = Cell::new(f64::INFINITY);
    let mut ran = false;
    c.bench_function(id, |b| {
        ran = true;
        b.iter_custom(|iters| {
            let t = Instant::now();
            for i in 0..iters {
                f(i);
            }
            let d = t.elapsed();
            best.set(best.get().min(d.as_secs_f64() / iters as f64));
            d
        })
    });
    ran.then(|| best.get())
}

/// numpy sgemm (OpenBLAS) best time for [M,K] x [K,N], or None without numpy.
fn openblas_time(m: usize, k: usize, n: usize, threads: usize) -> Option<f64> {
    let script = format!(
        "import numpy as np, time\n\
         a=np.random.rand({m},{k}).astype(np.float32); b=np.random.rand({n},{k}).astype(np.float32).T\n\
         a@b; best=1e9\n\
         for _ in range(7):\n    t=time.perf_counter(); a@b; best=min(best, time.perf_counter()-t)\n\
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

fn decode(c: &mut Criterion, roof: &Roof, threads: usize) {
    let shapes: Vec<(usize, usize)> = if quick() {
        vec![(4096, 2048)]
    } else {
        KN.to_vec()
    };
    for &(k, n) in &shapes {
        // bf16 (all shapes), f16 / f32 on two.
        let dtypes: &[DType] = if k == 4096 && n == 2048 || k == 2048 && n == 12288 {
            &[DType::BF16, DType::F16, DType::F32]
        } else {
            &[DType::BF16]
        };
        for &dt in dtypes {
            let bytes = n * k * dt.size();
            if bytes > (3 << 30)
                || ![1, 4, 16]
                    .iter()
                    .any(|m| wanted(&format!("decode/{threads}t/{dt}/M{m}/K{k}/N{n}")))
            {
                continue;
            }
            let nc = copies(bytes);
            let mut ws: Vec<Vec<u16>> = Vec::new();
            let mut wf: Vec<Vec<f32>> = Vec::new();
            for i in 0..nc {
                if dt == DType::F32 {
                    wf.push(
                        (0..n * k)
                            .map(|j| ((j * 7 + i) % 13) as f32 * 0.01)
                            .collect(),
                    );
                } else {
                    let mut v = vec![0u16; n * k];
                    fill_u16(&mut v, i as u64 + 1);
                    ws.push(v);
                }
            }
            for m in [1usize, 4, 16] {
                if m > 1 && !(k == 4096 && n == 2048) {
                    continue;
                }
                let x = vec![0.5f32; m * k];
                let xh: Vec<u16> = x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
                let xf: Vec<u16> = x.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
                let mut out = vec![0f32; m * n];
                let id = format!("decode/{threads}t/{dt}/M{m}/K{k}/N{n}");
                let t = case(c, &id, |i| {
                    let j = i as usize % nc;
                    let mut o = TensorViewMut::new(&mut out, &[m, n]).unwrap();
                    match dt {
                        DType::F32 => linear(
                            &TensorView::new(&x, &[m, k]).unwrap(),
                            &TensorView::new(&wf[j], &[n, k]).unwrap(),
                            None,
                            &mut o,
                        ),
                        DType::BF16 => {
                            let (xv, wv): (&[bf16], &[bf16]) = (cast(&xh), cast(&ws[j]));
                            linear(
                                &TensorView::new(xv, &[m, k]).unwrap(),
                                &TensorView::new(wv, &[n, k]).unwrap(),
                                None,
                                &mut o,
                            )
                        }
                        _ => {
                            let (xv, wv): (&[f16], &[f16]) = (cast(&xf), cast(&ws[j]));
                            linear(
                                &TensorView::new(xv, &[m, k]).unwrap(),
                                &TensorView::new(wv, &[n, k]).unwrap(),
                                None,
                                &mut o,
                            )
                        }
                    }
                    .unwrap();
                    black_box(&out);
                });
                if let Some(t) = t {
                    let gbs = bytes as f64 / t / 1e9;
                    println!(
                        "  {id}: {:.3} ms, {gbs:.1} GB/s of weights = {:.0}% of DRAM read bw ({:.1} GB/s), {:.1} GFLOP/s",
                        t * 1e3,
                        100.0 * gbs * 1e9 / roof.read_bw,
                        roof.read_bw / 1e9,
                        2.0 * (m * n * k) as f64 / t / 1e9
                    );
                }
            }
        }
    }
    // Quantized weights: int8 per channel and int4 group 128 with zeros.
    let qshapes: Vec<(usize, usize)> = if quick() {
        vec![(4096, 2048)]
    } else {
        vec![
            (2048, 12288),
            (4096, 2048),
            (2048, 151_936),
            (4096, 248_320),
        ]
    };
    for &(k, n) in &qshapes {
        for (bits, g) in [(8u32, k), (4u32, 128usize)] {
            let gname = if g == k {
                "ch".to_string()
            } else {
                g.to_string()
            };
            if !wanted(&format!(
                "decode/{threads}t/int{bits}-g{gname}/M1/K{k}/N{n}"
            )) {
                continue;
            }
            let codes_bytes = n * k * bits as usize / 8;
            let nc = copies(codes_bytes);
            let mut ws = Vec::new();
            for i in 0..nc {
                let codes: Vec<u8> = (0..n * k)
                    .map(|j| ((j * 31 + i * 7) % (1 << bits)) as u8)
                    .collect();
                let s = vec![bf16::from_f32(0.01); n * (k / g)];
                let z = vec![bf16::from_f32(if bits == 4 { 8.0 } else { 128.0 }); n * (k / g)];
                let (sv, zv) = (
                    TensorView::new(&s, &[n, k / g]).unwrap(),
                    TensorView::new(&z, &[n, k / g]).unwrap(),
                );
                ws.push(
                    Wna16Weight::from_codes(
                        n,
                        k,
                        bits,
                        &codes,
                        &sv,
                        (bits == 4).then_some(&zv),
                        None,
                    )
                    .unwrap(),
                );
            }
            let sz_bytes = n * (k / g) * 2 * if bits == 4 { 2 } else { 1 };
            let x = vec![bf16::from_f32(0.5); k];
            let mut out = vec![bf16::ZERO; n];
            let id = format!("decode/{threads}t/int{bits}-g{gname}/M1/K{k}/N{n}");
            let t = case(c, &id, |i| {
                let w = &ws[i as usize % nc];
                let z = w.zeros();
                wna16_linear(
                    &TensorView::new(&x, &[1, k]).unwrap(),
                    &w.qweight(),
                    &w.scales(),
                    z.as_ref(),
                    None,
                    None,
                    &mut TensorViewMut::new(&mut out, &[1, n]).unwrap(),
                    bits,
                )
                .unwrap();
                black_box(&out);
            });
            if let Some(t) = t {
                let gbs = codes_bytes as f64 / t / 1e9;
                println!(
                    "  {id}: {:.3} ms, {gbs:.1} GB/s of weight codes = {:.0}% of DRAM read bw (+{:.1}% scale/zero bytes), {:.2}x the bf16 weight rate",
                    t * 1e3,
                    100.0 * gbs * 1e9 / roof.read_bw,
                    100.0 * sz_bytes as f64 / codes_bytes as f64,
                    (n * k * 2) as f64 / t / roof.read_bw
                );
            }
        }
    }
}

fn cast<T>(v: &[u16]) -> &[T] {
    assert_eq!(std::mem::size_of::<T>(), 2);
    // SAFETY: half::f16 / bf16 are repr(transparent) u16.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const T, v.len()) }
}

fn gemm(c: &mut Criterion, roof: &Roof, threads: usize) {
    let mut shapes: Vec<(usize, usize, usize)> = Vec::new();
    let ms: &[usize] = if quick() {
        &[16, 512]
    } else {
        &[4, 16, 64, 256, 1024, 4096]
    };
    for &m in ms {
        shapes.push((m, 4096, 2048));
        if m <= 256 && !quick() {
            shapes.push((m, 2048, 12288));
            shapes.push((m, 2048, 512));
        }
        if m >= 256 && !quick() {
            shapes.push((m, 2048, 64));
        }
    }
    shapes.push((512, 4096, 4096)); // PERF.md's OpenBLAS baseline shape
    for &(m, k, n) in &shapes {
        let flops = 2.0 * (m * n * k) as f64;
        let dtypes: &[DType] = if m >= 1024 {
            &[DType::F32, DType::BF16]
        } else {
            &[DType::F32, DType::BF16, DType::F16]
        };
        for &dt in dtypes {
            if !wanted(&format!("gemm/{threads}t/{dt}/M{m}/K{k}/N{n}")) {
                continue;
            }
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7) % 13) as f32 * 0.01 - 0.06)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5) % 11) as f32 * 0.01 - 0.05)
                .collect();
            let id = format!("gemm/{threads}t/{dt}/M{m}/K{k}/N{n}");
            let t = match dt {
                DType::F32 => {
                    let mut o = vec![0f32; m * n];
                    let (xv, wv) = (
                        TensorView::new(&x, &[m, k]).unwrap(),
                        TensorView::new(&w, &[n, k]).unwrap(),
                    );
                    case(c, &id, |_| {
                        linear(
                            &xv,
                            &wv,
                            None,
                            &mut TensorViewMut::new(&mut o, &[m, n]).unwrap(),
                        )
                        .unwrap()
                    })
                }
                DType::BF16 => {
                    let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
                    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
                    let mut o = vec![bf16::ZERO; m * n];
                    let (xv, wv) = (
                        TensorView::new(&xb, &[m, k]).unwrap(),
                        TensorView::new(&wb, &[n, k]).unwrap(),
                    );
                    case(c, &id, |_| {
                        linear(
                            &xv,
                            &wv,
                            None,
                            &mut TensorViewMut::new(&mut o, &[m, n]).unwrap(),
                        )
                        .unwrap()
                    })
                }
                _ => {
                    let xb: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
                    let wb: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
                    let mut o = vec![f16::ZERO; m * n];
                    let (xv, wv) = (
                        TensorView::new(&xb, &[m, k]).unwrap(),
                        TensorView::new(&wb, &[n, k]).unwrap(),
                    );
                    case(c, &id, |_| {
                        linear(
                            &xv,
                            &wv,
                            None,
                            &mut TensorViewMut::new(&mut o, &[m, n]).unwrap(),
                        )
                        .unwrap()
                    })
                }
            };
            let Some(t) = t else { continue };
            let gf = flops / t;
            let mut line = format!(
                "  {id}: {:.3} ms, {:.1} GFLOP/s = {:.0}% of fp32 FMA peak",
                t * 1e3,
                gf / 1e9,
                100.0 * gf / roof.fma
            );
            if dt == DType::BF16 {
                line += &format!(" / {:.0}% of bf16 dot peak", 100.0 * gf / roof.bf16);
            }
            if let Some(ob) = (dt != DType::F16)
                .then(|| openblas_time(m, k, n, threads))
                .flatten()
            {
                let obf = flops / ob;
                line += &format!(
                    ", {:.2}x OpenBLAS fp32 ({:.1} GFLOP/s)",
                    gf / obf,
                    obf / 1e9
                );
            }
            println!("{line}");
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();
    for threads in [1usize, 2] {
        set_num_threads(threads).expect("thread pool");
        let other = if threads == 1 { "/2t/" } else { "/1t/" };
        if filter().is_some_and(|f| f.contains(other)) {
            continue;
        }
        let roof = Roof {
            read_bw: xpu_ops::probe::read_bandwidth(COLD_BYTES),
            fma: xpu_ops::probe::fma_peak(),
            bf16: bf16_dot_peak(),
        };
        println!(
            "== {threads} thread(s), tier {}: DRAM read {:.1} GB/s, fp32 FMA {:.1} GFLOP/s, bf16 dot {:.1} GFLOP/s (bf16 microkernel: {})",
            xpu_ops::active_isa(),
            roof.read_bw / 1e9,
            roof.fma / 1e9,
            roof.bf16 / 1e9,
            if xpu_ops::ops::linear::bf16_dot_preferred() { "vdpbf16ps" } else { "fp32 FMA" }
        );
        decode(&mut c, &roof, threads);
        gemm(&mut c, &roof, threads);
    }
    c.final_summary();
}
