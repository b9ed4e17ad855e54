//! Layer ops on Qwen3-Next / Qwen3.5 shapes (PERF.md): time per call, bytes
//! moved, and the fraction of this machine's measured bandwidth roofline
//! (`xpu_ops::probe`: t_min = max(bytes / copy bandwidth, flops / FMA peak)).
//!
//! Cache regime: cold. Every call uses the next slot of an arena of at least
//! 256 MiB (inputs, outputs and the weight of one "layer" per slot), so the
//! working set is far past the L3 and each call streams from DRAM, as in
//! decode where each layer's weights and activations are touched once.
//!
//! Run a subset: `cargo bench --bench layer -- rms_norm/`. The machine is
//! shared and noisy; the measurement windows are short on purpose.

use std::cell::Cell;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use xpu_ops::probe::Roofline;
use xpu_ops::{DType, Layout, TensorView, TensorViewMut};

const ARENA_BYTES: usize = 256 << 20;

/// `n` slots of `per_slot` bf16 elements, enough to cover the arena.
struct Arena {
    data: Vec<bf16>,
    per_slot: usize,
    slots: usize,
    next: Cell<usize>,
}

impl Arena {
    fn new(per_slot: usize) -> Arena {
        let slots = (ARENA_BYTES / (per_slot * 2).max(1)).clamp(2, 1 << 16);
        let data = (0..per_slot * slots)
            .map(|i| bf16::from_f32(((i * 7919) % 2003) as f32 / 1001.0 - 1.0))
            .collect();
        Arena {
            data,
            per_slot,
            slots,
            next: Cell::new(0),
        }
    }

    /// The next slot, round robin.
    fn slot(&mut self) -> &mut [bf16] {
        let s = self.next.get();
        self.next.set((s + 1) % self.slots);
        &mut self.data[s * self.per_slot..(s + 1) * self.per_slot]
    }
}

struct Case {
    bytes: f64,
    flops: f64,
}

/// A measured case: (name, best seconds per call, bytes, flops).
type Row = (String, f64, f64, f64);

/// Runs `f` under criterion with a rotating arena and records its best time.
fn bench_case(
    c: &mut Criterion,
    rows: &mut Vec<Row>,
    group: &str,
    id: String,
    per_slot: usize,
    case: Case,
    mut f: impl FnMut(&mut [bf16]),
) {
    let mut arena = Arena::new(per_slot);
    let best = Cell::new(f64::INFINITY);
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes(case.bytes as u64));
    g.bench_function(BenchmarkId::from_parameter(&id), |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                f(arena.slot());
            }
            let el = t.elapsed();
            best.set(best.get().min(el.as_secs_f64() / iters as f64));
            el
        })
    });
    g.finish();
    if best.get().is_infinite() {
        return; // filtered out
    }
    rows.push((format!("{group}/{id}"), best.get(), case.bytes, case.flops));
}

fn probe() -> Roofline {
    xpu_ops::probe::measure(512 << 20)
}

/// Prints each case against the roofline. The probe runs before and after
/// the cases and the better figures are used, so one unlucky probe on a
/// shared machine does not inflate every fraction.
fn report(rows: &[Row], before: Roofline, after: Roofline) {
    let roof = Roofline {
        read_bw: before.read_bw.max(after.read_bw),
        copy_bw: before.copy_bw.max(after.copy_bw),
        fma_peak: before.fma_peak.max(after.fma_peak),
        threads: before.threads,
    };
    println!(
        "\nmachine (best of two probes): read {:.1} GB/s, copy {:.1} GB/s, fma {:.0} GFLOP/s, {} threads, isa {}",
        roof.read_bw / 1e9,
        roof.copy_bw / 1e9,
        roof.fma_peak / 1e9,
        roof.threads,
        xpu_ops::active_isa()
    );
    for (name, t, bytes, flops) in rows {
        let t_min = (bytes / roof.copy_bw).max(flops / roof.fma_peak);
        println!(
            "{name}: best {:.2} us, {:.1} GB/s, roofline {:.2} us -> {:.0}% of roofline",
            t * 1e6,
            bytes / t / 1e9,
            t_min * 1e6,
            100.0 * t_min / t
        );
    }
}

fn layer_benches(c: &mut Criterion) {
    let before = probe();
    let mut rows = Vec::new();
    let tokens = [1usize, 16, 256, 4096];

    for hidden in [2048usize, 4096] {
        for &t in &tokens {
            let n = t * hidden;
            // slot: input, out, weight
            let bytes = (2 * n + hidden) as f64 * 2.0;
            bench_case(
                c,
                &mut rows,
                "rms_norm",
                format!("bf16/T{t}xH{hidden}"),
                2 * n + hidden,
                Case {
                    bytes,
                    flops: 4.0 * n as f64,
                },
                |s| {
                    let (x, rest) = s.split_at_mut(n);
                    let (o, w) = rest.split_at_mut(n);
                    xpu_ops::rms_norm(
                        &mut TensorViewMut::new(o, &[t, hidden]).unwrap(),
                        &TensorView::new(x, &[t, hidden]).unwrap(),
                        &TensorView::new(w, &[hidden]).unwrap(),
                        1e-6,
                    )
                    .unwrap()
                },
            );
            // slot: input, residual, weight; both rows read and written.
            bench_case(
                c,
                &mut rows,
                "fused_add_rms_norm",
                format!("bf16/T{t}xH{hidden}"),
                2 * n + hidden,
                Case {
                    bytes: (4 * n + hidden) as f64 * 2.0,
                    flops: 5.0 * n as f64,
                },
                |s| {
                    let (x, rest) = s.split_at_mut(n);
                    let (r, w) = rest.split_at_mut(n);
                    xpu_ops::fused_add_rms_norm(
                        &mut TensorViewMut::new(x, &[t, hidden]).unwrap(),
                        &mut TensorViewMut::new(r, &[t, hidden]).unwrap(),
                        &TensorView::new(w, &[hidden]).unwrap(),
                        1e-6,
                    )
                    .unwrap()
                },
            );
        }
    }

    // Qwen3-Next attention: 16 q heads, 2 kv heads, head_dim 256, rotary 64
    // (partial_rotary_factor 0.25), NeoX style; q and k from one qkv row.
    let (nq, nkv, hs, rot, max_pos) = (16usize, 2usize, 256usize, 64usize, 4096usize);
    let mut cache = vec![bf16::ZERO; max_pos * rot];
    for p in 0..max_pos {
        for i in 0..rot / 2 {
            let a = p as f64 * 10_000_000f64.powf(-2.0 * i as f64 / rot as f64);
            cache[p * rot + i] = bf16::from_f64(a.cos());
            cache[p * rot + rot / 2 + i] = bf16::from_f64(a.sin());
        }
    }
    for &t in &tokens {
        let row = (nq + 2 * nkv) * hs;
        let positions: Vec<i64> = (0..t).map(|i| ((i * 131) % max_pos) as i64).collect();
        // Touched: the rotary dims of every q/k head (read + write), cos/sin rows.
        let bytes = (2 * t * (nq + nkv) * rot * 2 + t * rot * 2 + t * 8) as f64;
        bench_case(
            c,
            &mut rows,
            "rotary_embedding",
            format!("bf16/neox/T{t}/q{nq}k{nkv}x{hs}/rot{rot}"),
            t * row,
            Case {
                bytes,
                flops: 3.0 * (t * (nq + nkv) * rot) as f64,
            },
            |s| {
                // q: [t, nq*hs] and k: [t, nkv*hs], both with row stride `row`,
                // interleaved in the slot as vLLM's q/k views of one qkv tensor.
                let p = s.as_mut_ptr() as *mut u8;
                let view = |cols: usize| Layout {
                    strides: vec![row, 1],
                    ..Layout::contiguous(DType::BF16, &[t, cols])
                };
                // SAFETY: both views lie inside the slot (the last row ends at
                // (t - 1) * row + (nq + nkv) * hs <= t * row) and share no element.
                let (mut q, mut k) = unsafe {
                    (
                        TensorViewMut::from_raw(p, view(nq * hs)),
                        TensorViewMut::from_raw(p.add(nq * hs * 2), view(nkv * hs)),
                    )
                };
                xpu_ops::rotary_embedding(
                    &TensorView::new(&positions, &[t]).unwrap(),
                    &mut q,
                    Some(&mut k),
                    hs,
                    &TensorView::new(&cache, &[max_pos, rot]).unwrap(),
                    true,
                )
                .unwrap()
            },
        );
    }

    // SwiGLU: Qwen3-Next expert / shared-expert intermediate 512, a dense 6144.
    for d in [512usize, 6144] {
        for &t in &tokens {
            let n = t * d;
            bench_case(
                c,
                &mut rows,
                "silu_and_mul",
                format!("bf16/T{t}xD{d}"),
                3 * n,
                Case {
                    bytes: (3 * n) as f64 * 2.0,
                    flops: 25.0 * n as f64,
                },
                |s| {
                    let (x, o) = s.split_at_mut(2 * n);
                    xpu_ops::silu_and_mul(
                        &mut TensorViewMut::new(o, &[t, d]).unwrap(),
                        &TensorView::new(x, &[t, 2 * d]).unwrap(),
                    )
                    .unwrap()
                },
            );
        }
    }
    report(&rows, before, probe());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(800));
    targets = layer_benches
}
criterion_main!(benches);
