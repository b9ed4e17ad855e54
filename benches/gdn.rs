//! Linear-attention benchmarks on Qwen3-Next shapes (PERF.md): causal conv1d
//! prefill and decode (dim 8192, width 4), recurrent GDN decode over a cold
//! state pool (32 value heads x 128 x 128 fp32), chunked vs recurrent GDN
//! prefill (16 key / 32 value heads x 128).
//!
//! Criterion times every case; at the end each is printed against its
//! roofline, t_min = max(bytes / bandwidth, flops / peak), with bandwidth and
//! peak measured here by `xpu_ops::probe` (the better of a probe before and
//! one after the cases), and the chunked-vs-recurrent prefill speedup.
//! Cache regime: cold. Prefill inputs rotate over >= 256 MB of copies;
//! decode cases walk a >= 256 MB state pool, so every call reads DRAM.
//!
//! `XPU_OPS_BENCH_QUICK=1` runs one size per group; `XPU_OPS_BENCH_ONLY=name`
//! runs only the groups whose function name contains `name` (e.g. `prefill`).

use std::cell::Cell;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use xpu_ops::probe::{self, Roofline};
use xpu_ops::{
    causal_conv1d_fn, causal_conv1d_update, chunk_gated_delta_rule,
    fused_recurrent_gated_delta_rule, TensorView, TensorViewMut,
};

const COLD_BYTES: usize = 256 << 20;

/// A measured case: name, best seconds per call, bytes read, bytes written, flops.
type Row = (String, f64, f64, f64, f64);

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

fn probe_before() -> &'static Roofline {
    static R: OnceLock<Roofline> = OnceLock::new();
    R.get_or_init(|| probe::measure(512 << 20))
}

fn skip(group: &str) -> bool {
    std::env::var("XPU_OPS_BENCH_ONLY").is_ok_and(|only| !group.contains(only.as_str()))
}

fn quick() -> bool {
    std::env::var_os("XPU_OPS_BENCH_QUICK").is_some()
}

/// Times `f` under criterion (best per-call time kept for the report).
/// `read` and `written` are bytes of DRAM traffic, `flops` the op's work.
#[allow(clippy::too_many_arguments)]
fn record(
    c: &mut Criterion,
    group: &str,
    id: &str,
    read: f64,
    written: f64,
    flops: f64,
    measure: Duration,
    mut f: impl FnMut(),
) {
    probe_before();
    let best = Cell::new(f64::INFINITY);
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .measurement_time(measure)
        .warm_up_time(Duration::from_millis(300))
        .throughput(Throughput::Bytes((read + written) as u64));
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            let el = t.elapsed();
            best.set(best.get().min(el.as_secs_f64() / iters as f64));
            el
        })
    });
    g.finish();
    if best.get().is_finite() {
        let row = (format!("{group}/{id}"), best.get(), read, written, flops);
        ROWS.lock().unwrap().push(row);
    }
}

/// Prints every case against the roofline, with the better of the probes
/// taken before and after the cases (one unlucky probe on a shared machine
/// would otherwise skew every fraction). Read+write traffic is held to the
/// copy bandwidth, pure reads to the read bandwidth.
fn final_report(_c: &mut Criterion) {
    let rows = ROWS.lock().unwrap().clone();
    if rows.is_empty() {
        return;
    }
    let (a, b) = (*probe_before(), probe::measure(512 << 20));
    let roof = Roofline {
        read_bw: a.read_bw.max(b.read_bw),
        copy_bw: a.copy_bw.max(b.copy_bw),
        fma_peak: a.fma_peak.max(b.fma_peak),
        threads: a.threads,
    };
    println!(
        "\nmachine (best of two probes): read {:.1} GB/s, copy {:.1} GB/s, fma {:.0} GFLOP/s, {} threads, isa {}",
        roof.read_bw / 1e9,
        roof.copy_bw / 1e9,
        roof.fma_peak / 1e9,
        roof.threads,
        xpu_ops::active_isa()
    );
    for (name, t, read, written, flops) in &rows {
        let bw = if *written > 0.0 {
            roof.copy_bw
        } else {
            roof.read_bw
        };
        let t_min = ((read + written) / bw).max(flops / roof.fma_peak);
        println!(
            "{name:<48} best {:>10.1} us  {:>6.1} GB/s  {:>7.1} GFLOP/s  roofline {:>8.1} us -> {:>5.1}%",
            t * 1e6,
            (read + written) / t / 1e9,
            flops / t / 1e9,
            t_min * 1e6,
            100.0 * t_min / t
        );
    }
    for (name, t, ..) in &rows {
        if let Some(tokens) = name.strip_prefix("gdn_prefill/chunk_T") {
            let rec = format!("gdn_prefill/recurrent_T{tokens}");
            if let Some((_, tr, ..)) = rows.iter().find(|r| r.0 == rec) {
                println!(
                    "chunked vs recurrent prefill at T={tokens}: {:.2}x faster",
                    tr / t
                );
            }
        }
    }
}

fn rand_bf16(n: usize, seed: u64, scale: f32) -> Vec<bf16> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            bf16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale)
        })
        .collect()
}

// ---- causal_conv1d ----------------------------------------------------------

const DIM: usize = 8192;
const WIDTH: usize = 4;

fn conv_prefill(c: &mut Criterion) {
    if skip("conv_prefill") {
        return;
    }
    let measure = Duration::from_secs(2);
    let sizes: &[usize] = if quick() { &[2048] } else { &[128, 2048, 8192] };
    let w = rand_bf16(DIM * WIDTH, 1, 0.5);
    for &t in sizes {
        let per = 2 * DIM * t * 2; // x + out, bf16
        let copies = COLD_BYTES.div_ceil(per).max(1);
        let xs: Vec<Vec<bf16>> = (0..copies)
            .map(|i| rand_bf16(DIM * t, 10 + i as u64, 1.0))
            .collect();
        let mut outs: Vec<Vec<bf16>> = (0..copies).map(|_| vec![bf16::ZERO; DIM * t]).collect();
        let lines = copies;
        let mut states = rand_bf16(lines * DIM * (WIDTH - 1), 3, 1.0);
        let qsl = [0i32, t as i32];
        let hi = [1i32];
        let mut i = 0;
        let run = || {
            let k = i % copies;
            i += 1;
            let mut x = x_view(&xs[k], &[DIM, t], &[1, DIM]);
            let idx = [k as i32];
            causal_conv1d_fn(
                &mut x,
                &TensorView::new(&w, &[DIM, WIDTH]).unwrap(),
                None,
                // vLLM layout: (lines, dim, width-1) with dim contiguous.
                &mut TensorViewMut::strided(
                    &mut states,
                    &[lines, DIM, WIDTH - 1],
                    &[DIM * (WIDTH - 1), 1, DIM],
                )
                .unwrap(),
                &TensorView::new(&qsl, &[2]).unwrap(),
                Some(&TensorView::new(&idx, &[1]).unwrap()),
                Some(&TensorView::new(&hi, &[1]).unwrap()),
                Some("silu"),
                -1,
                Some(&mut TensorViewMut::strided(&mut outs[k], &[DIM, t], &[1, DIM]).unwrap()),
            )
            .unwrap();
        };
        let read = (DIM * t * 2 + DIM * WIDTH * 2 + DIM * (WIDTH - 1) * 2) as f64;
        let written = (DIM * t * 2 + DIM * (WIDTH - 1) * 2) as f64;
        let flops = (2 * WIDTH * DIM * t) as f64;
        record(
            c,
            "causal_conv1d_fn",
            &format!("T{t}"),
            read,
            written,
            flops,
            measure,
            run,
        );
    }
}

/// `data` as the `&mut` x the conv ops take. Only used with `out` given, in
/// which case the ops never write x.
fn x_view(data: &[bf16], shape: &[usize], strides: &[usize]) -> TensorViewMut<'static> {
    let layout = xpu_ops::Layout {
        dtype: xpu_ops::DType::BF16,
        shape: shape.to_vec(),
        strides: strides.to_vec(),
        device: xpu_ops::Device::Cpu,
    };
    // SAFETY: the buffers live until the end of the benchmark and are only read.
    unsafe { TensorViewMut::from_raw(data.as_ptr() as *mut u8, layout) }
}

fn conv_decode(c: &mut Criterion) {
    if skip("conv_decode") {
        return;
    }
    let measure = Duration::from_secs(2);
    let sizes: &[usize] = if quick() { &[64] } else { &[1, 64, 256] };
    let line_bytes = DIM * (WIDTH - 1) * 2;
    let lines = COLD_BYTES / line_bytes; // >= 256 MB of bf16 conv state
    let mut states = rand_bf16(lines * DIM * (WIDTH - 1), 5, 1.0);
    let w = rand_bf16(DIM * WIDTH, 6, 0.5);
    for &batch in sizes {
        let x = rand_bf16(batch * DIM, 7, 1.0);
        let mut out = vec![bf16::ZERO; batch * DIM];
        let mut step = 0usize;
        let run = || {
            // A fresh window of lines every call: cold state.
            let base = (step * batch) % (lines - batch);
            step += 1;
            let idx: Vec<i32> = (0..batch).map(|b| (base + b) as i32).collect();
            let mut xv = x_view(&x, &[batch, DIM], &[DIM, 1]);
            causal_conv1d_update(
                &mut xv,
                &mut TensorViewMut::strided(
                    &mut states,
                    &[lines, DIM, WIDTH - 1],
                    &[DIM * (WIDTH - 1), 1, DIM],
                )
                .unwrap(),
                &TensorView::new(&w, &[DIM, WIDTH]).unwrap(),
                None,
                Some("silu"),
                Some(&TensorView::new(&idx, &[batch]).unwrap()),
                None,
                None,
                -1,
                -1,
                Some(&mut TensorViewMut::new(&mut out, &[batch, DIM]).unwrap()),
            )
            .unwrap();
        };
        let read = (batch * (DIM * 2 + line_bytes) + DIM * WIDTH * 2) as f64;
        let written = (batch * (DIM * 2 + line_bytes)) as f64;
        let flops = (2 * WIDTH * DIM * batch) as f64;
        record(
            c,
            "causal_conv1d_update",
            &format!("B{batch}"),
            read,
            written,
            flops,
            measure,
            run,
        );
    }
}

// ---- gated delta rule --------------------------------------------------------

const H: usize = 16;
const HV: usize = 32;
const KD: usize = 128;
const VD: usize = 128;

struct GdnInputs {
    q: Vec<bf16>,
    k: Vec<bf16>,
    v: Vec<bf16>,
    g: Vec<f32>,
    beta: Vec<bf16>,
}

fn gdn_inputs(t: usize) -> GdnInputs {
    GdnInputs {
        q: rand_bf16(t * H * KD, 11, 1.0),
        k: rand_bf16(t * H * KD, 12, 1.0),
        v: rand_bf16(t * HV * VD, 13, 1.0),
        g: rand_bf16(t * HV, 14, 1.0)
            .iter()
            .map(|x| -0.05 - 0.05 * x.to_f32())
            .collect(),
        beta: rand_bf16(t * HV, 15, 0.4)
            .iter()
            .map(|x| bf16::from_f32(0.5 + x.to_f32()))
            .collect(),
    }
}

/// Views of `inputs` as `batch` sequences of `t` tokens.
fn qkvgb(i: &GdnInputs, batch: usize, t: usize) -> [TensorView<'_>; 5] {
    [
        TensorView::new(&i.q, &[batch, t, H, KD]).unwrap(),
        TensorView::new(&i.k, &[batch, t, H, KD]).unwrap(),
        TensorView::new(&i.v, &[batch, t, HV, VD]).unwrap(),
        TensorView::new(&i.g, &[batch, t, HV]).unwrap(),
        TensorView::new(&i.beta, &[batch, t, HV]).unwrap(),
    ]
}

fn gdn_decode(c: &mut Criterion) {
    if skip("gdn_decode") {
        return;
    }
    let measure = Duration::from_secs(2);
    let slot_bytes = HV * VD * KD * 4; // 2 MiB
    let slots = (2 * COLD_BYTES) / slot_bytes; // 512 MB pool
    let mut pool = vec![0.01f32; slots * HV * VD * KD];
    let sizes: &[usize] = if quick() { &[64] } else { &[1, 64, 256] };
    for &batch in sizes {
        let batch = batch.min(slots / 2);
        let inp = gdn_inputs(batch);
        let mut o = vec![bf16::ZERO; batch * HV * VD];
        let mut step = 0usize;
        let run = || {
            let base = (step * batch) % (slots - batch);
            step += 1;
            let idx: Vec<i32> = (0..batch).map(|b| (base + b) as i32).collect();
            let [q, k, v, g, beta] = qkvgb(&inp, batch, 1);
            fused_recurrent_gated_delta_rule(
                &q,
                &k,
                &v,
                &g,
                Some(&beta),
                None,
                &mut TensorViewMut::new(&mut pool, &[slots, HV, VD, KD]).unwrap(),
                None,
                Some(&TensorView::new(&idx, &[batch]).unwrap()),
                None,
                true,
                &mut TensorViewMut::new(&mut o, &[batch, 1, HV, VD]).unwrap(),
            )
            .unwrap();
        };
        let state = (batch * slot_bytes) as f64;
        let flops = (batch * HV * 8 * KD * VD) as f64;
        record(
            c,
            "fused_recurrent_gated_delta_rule",
            &format!("B{batch}"),
            state,
            state,
            flops,
            measure,
            run,
        );
    }
}

/// Chunked vs recurrent prefill over the same tokens (one sequence).
fn gdn_prefill(c: &mut Criterion) {
    if skip("gdn_prefill") {
        return;
    }
    let measure = Duration::from_secs(3);
    let sizes: &[usize] = if quick() { &[4096] } else { &[512, 4096] };
    for &t in sizes {
        let inp = gdn_inputs(t);
        let mut pool = vec![0.01f32; HV * VD * KD];
        let mut o = vec![bf16::ZERO; t * HV * VD];
        let run_chunk = || {
            let [q, k, v, g, beta] = qkvgb(&inp, 1, t);
            chunk_gated_delta_rule(
                &q,
                &k,
                &v,
                &g,
                Some(&beta),
                None,
                Some(&mut TensorViewMut::new(&mut pool, &[1, HV, VD, KD]).unwrap()),
                false,
                None,
                None,
                None,
                true,
                &mut TensorViewMut::new(&mut o, &[1, t, HV, VD]).unwrap(),
            )
            .unwrap();
        };
        let mut pool2 = vec![0.01f32; HV * VD * KD];
        let mut o2 = vec![bf16::ZERO; t * HV * VD];
        let run_rec = || {
            let [q, k, v, g, beta] = qkvgb(&inp, 1, t);
            fused_recurrent_gated_delta_rule(
                &q,
                &k,
                &v,
                &g,
                Some(&beta),
                None,
                &mut TensorViewMut::new(&mut pool2, &[1, HV, VD, KD]).unwrap(),
                None,
                None,
                None,
                true,
                &mut TensorViewMut::new(&mut o2, &[1, t, HV, VD]).unwrap(),
            )
            .unwrap();
        };
        let bytes_in = (t * (2 * H * KD + HV * VD + 2 * HV) * 2) as f64;
        let bytes_out = (t * HV * VD * 2) as f64;
        // Chunk algorithm flops per 64-token chunk and head: 2 (C^2 K + C^2 (K+V)/2 + C^2 V/2 + 3 C K V).
        let cc = 64f64;
        let (kd, vd) = (KD as f64, VD as f64);
        let per_chunk = 2.0
            * (cc * cc * kd + cc * cc * (kd + vd) / 2.0 + cc * cc * vd / 2.0 + 3.0 * cc * kd * vd);
        let chunk_flops = per_chunk * (t as f64 / cc).ceil() * HV as f64;
        let rec_flops = (t * HV * 8 * KD * VD) as f64;
        record(
            c,
            "gdn_prefill",
            &format!("chunk_T{t}"),
            bytes_in,
            bytes_out,
            chunk_flops,
            measure,
            run_chunk,
        );
        record(
            c,
            "gdn_prefill",
            &format!("recurrent_T{t}"),
            bytes_in,
            bytes_out,
            rec_flops,
            measure,
            run_rec,
        );
    }
}

criterion_group!(
    benches,
    conv_prefill,
    conv_decode,
    gdn_decode,
    gdn_prefill,
    final_report
);
criterion_main!(benches);
