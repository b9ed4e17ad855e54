//! Probes of this machine's limits (DRAM bandwidth, FMA peak), measured the
//! same way on every machine so benchmarks report fractions of a roofline that
//! was measured, not assumed.

use std::time::Instant;

use crate::platform;
use crate::sys;
use crate::threading::{grid, num_threads};

/// Measured limits of this machine (with the current thread count).
#[derive(Debug, Clone, Copy)]
pub struct Roofline {
    /// DRAM read bandwidth, bytes/s.
    pub read_bw: f64,
    /// DRAM copy bandwidth (bytes read + bytes written per second).
    pub copy_bw: f64,
    /// fp32 FMA peak, FLOP/s, on the active ISA tier.
    pub fma_peak: f64,
    pub threads: usize,
}

/// Best of `reps` runs of `f`, in seconds.
pub fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Reads a buffer far larger than the last-level cache, on all threads.
pub fn read_bandwidth(bytes: usize) -> f64 {
    let buf = vec![1.0f32; bytes / 4];
    let probe = platform::kernels().probe_read.expect("probe_read");
    let chunk = 1 << 20;
    let secs = best_of(5, || {
        let sum = std::sync::atomic::AtomicU64::new(0);
        grid(buf.len().div_ceil(chunk), 1, |r| {
            for c in r {
                let s = &buf[c * chunk..((c + 1) * chunk).min(buf.len())];
                // SAFETY: s is a valid slice of floats.
                let v = unsafe { probe(s.as_ptr(), s.len() as i64) };
                sum.fetch_add(v as u64, std::sync::atomic::Ordering::Relaxed);
            }
        });
        std::hint::black_box(sum.into_inner());
    });
    (buf.len() * 4) as f64 / secs
}

/// memcpy between two buffers far larger than the last-level cache; counts
/// bytes read plus bytes written.
pub fn copy_bandwidth(bytes: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let chunk = 1 << 22;
    let d = crate::threading::Shared(dst.as_mut_ptr());
    let secs = best_of(5, || {
        grid(bytes.div_ceil(chunk), 1, |r| {
            for c in r {
                let (a, b) = (c * chunk, ((c + 1) * chunk).min(bytes));
                // SAFETY: chunks are disjoint ranges of dst.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr().add(a), d.get().add(a), b - a)
                };
            }
        });
    });
    std::hint::black_box(&dst);
    (2 * bytes) as f64 / secs
}

/// fp32 FMA throughput on all threads with the active tier's widest vectors.
pub fn fma_peak() -> f64 {
    let probe = platform::kernels().probe_fma.expect("probe_fma");
    let threads = num_threads();
    let iters = 20_000_000;
    let mut flops = 0.0;
    let secs = best_of(3, || {
        let total = std::sync::Mutex::new(0.0);
        grid(threads, 1, |r| {
            for _ in r {
                let mut sink = sys::xk_probe_result { value: 0.0 };
                // SAFETY: sink is a valid out-pointer.
                let f = unsafe { probe(iters, &mut sink) };
                std::hint::black_box(sink.value);
                *total.lock().unwrap() += f;
            }
        });
        flops = total.into_inner().unwrap();
    });
    flops / secs
}

/// All probes, with buffers of `bytes` (use several times the L3 size).
pub fn measure(bytes: usize) -> Roofline {
    Roofline {
        read_bw: read_bandwidth(bytes),
        copy_bw: copy_bandwidth(bytes / 2),
        fma_peak: fma_peak(),
        threads: num_threads(),
    }
}
