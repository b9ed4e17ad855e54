//! Probes of this machine's limits (DRAM read and copy bandwidth, fp32 FMA
//! and bf16 peaks),
//! measured the same way on every machine so benchmarks report fractions of a
//! roofline that was measured, not assumed.
//!
//! The bandwidth probes stream over buffers several times the last-level
//! cache (see [`default_probe_bytes`]), touch them once before timing and
//! report the best of a few passes on the library's thread pool. Each thread
//! reads or copies its chunk as 8 streams in lockstep: one sequential stream
//! leaves a core's bandwidth unused (here 13.9 vs 16.4 GB/s read, 18.5 vs
//! 24.4 GB/s copy), and kernels that walk several rows at once reach the
//! multi-stream figure, so the single-stream one was no roof.

use std::time::Instant;

use crate::platform;
use crate::sys;
use crate::threading::{grid, num_threads, Shared};

/// Measured limits of this machine (with the current thread count).
#[derive(Debug, Clone, Copy)]
pub struct Roofline {
    /// DRAM read bandwidth, bytes/s.
    pub read_bw: f64,
    /// DRAM copy bandwidth with non-temporal stores (bytes read + bytes
    /// written per second): the limit of an op that streams data to memory.
    pub copy_bw: f64,
    /// fp32 FMA peak, FLOP/s, on the active ISA tier.
    pub fma_peak: f64,
    /// bf16 peak (fp32 accumulation), FLOP/s, on the active ISA tier: see [`bf16_peak`].
    pub bf16_peak: f64,
    pub threads: usize,
}

impl Roofline {
    /// The better of two measurements of each limit (on a shared machine a
    /// probe only underestimates: take the best one seen).
    pub fn best(&self, other: &Roofline) -> Roofline {
        Roofline {
            read_bw: self.read_bw.max(other.read_bw),
            copy_bw: self.copy_bw.max(other.copy_bw),
            fma_peak: self.fma_peak.max(other.fma_peak),
            bf16_peak: self.bf16_peak.max(other.bf16_peak),
            threads: self.threads,
        }
    }
}

/// One CPU cache as the kernel describes it under `/sys/devices/system/cpu/cpu0/cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLevel {
    pub level: u32,
    /// `Data`, `Instruction` or `Unified`.
    pub kind: String,
    pub bytes: usize,
    /// The CPUs sharing this cache, as the kernel lists them (e.g. `0-1`).
    pub shared_cpus: String,
}

/// The caches of CPU 0, lowest level first; empty where sysfs is absent.
pub fn cache_levels() -> Vec<CacheLevel> {
    let base = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let Ok(dir) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    let read = |p: &std::path::Path, f: &str| {
        std::fs::read_to_string(p.join(f)).map(|s| s.trim().to_string())
    };
    let mut out: Vec<CacheLevel> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("index"))
        })
        .filter_map(|p| {
            Some(CacheLevel {
                level: read(&p, "level").ok()?.parse().ok()?,
                kind: read(&p, "type").ok()?,
                bytes: parse_size(&read(&p, "size").ok()?)?,
                shared_cpus: read(&p, "shared_cpu_list").unwrap_or_default(),
            })
        })
        .collect();
    out.sort_by(|a, b| (a.level, &a.kind).cmp(&(b.level, &b.kind)));
    out
}

/// "48K", "2048K", "32M" -> bytes.
fn parse_size(s: &str) -> Option<usize> {
    let (num, mul) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<usize>().ok().map(|n| n * mul)
}

/// The last-level cache size in bytes (32 MiB where it cannot be read).
///
/// On virtual machines this is often the host socket's whole L3, of which a
/// guest sees only a share; sizes derived from it err on the cold side.
pub fn llc_bytes() -> usize {
    cache_levels()
        .iter()
        .filter(|c| c.kind != "Instruction")
        .map(|c| c.bytes)
        .max()
        .unwrap_or(32 << 20)
}

/// Memory the kernel says is available, bytes (`MemAvailable`), if known.
pub fn available_memory() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb << 10)
}

/// Buffer size for the bandwidth probes: 4x the last-level cache, at least
/// 256 MiB, at most 2 GiB and a quarter of the available memory.
pub fn default_probe_bytes() -> usize {
    let mut b = (4 * llc_bytes()).clamp(256 << 20, 2 << 30);
    if let Some(avail) = available_memory() {
        b = b.min((avail / 4).max(64 << 20));
    }
    b
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

/// Reads a buffer of `bytes` (use several times the last-level cache) on
/// all threads; bytes/s.
pub fn read_bandwidth(bytes: usize) -> f64 {
    // On a cache line, so vector loads never split (large allocations come
    // 16 bytes past a page).
    let n = (bytes / 4).max(1);
    let alloc = vec![1.0f32; n + 16];
    let buf = &alloc[alloc.as_ptr().align_offset(64)..][..n];
    let probe = platform::kernels().probe_read.expect("probe_read");
    let chunk = 1 << 20;
    let pass = || {
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
    };
    pass(); // warm-up: page tables, clock ramp
    (buf.len() * 4) as f64 / best_of(5, pass)
}

/// Streams a chunk is copied as, in lockstep, and the bytes each copies per
/// step: one core moves data fastest with several streams in flight (quiet,
/// in C: one stream 18.5 GB/s, 8 streams of 512 B steps 25.3), and kernels
/// that walk several rows at once (conv prefill, KV writes) reach the faster
/// figure.
const COPY_STREAMS: usize = 8;
const COPY_STEP: usize = 512;

/// Copies a buffer of `bytes` into another on all threads with streaming
/// stores, each chunk as [`COPY_STREAMS`] streams in lockstep; counts bytes
/// read plus bytes written per second.
pub fn copy_bandwidth(bytes: usize) -> f64 {
    let bytes = bytes.max(64);
    // Both start on cache lines (allocations of this size come 16 bytes past
    // a page): a line written partly by streaming and partly by plain stores
    // costs a read-modify-write, and loads split over two lines cost two.
    let src = vec![1u8; bytes + 64];
    let src = &src[src.as_ptr().align_offset(64)..];
    let mut dst = vec![2u8; bytes + 64]; // written, so its pages exist before timing
    let skew = dst.as_ptr().align_offset(64);
    let chunk = 1 << 22;
    let d = Shared(dst[skew..].as_mut_ptr());
    let pass = || {
        grid(bytes.div_ceil(chunk), 1, |r| {
            for c in r {
                let (a, b) = (c * chunk, ((c + 1) * chunk).min(bytes));
                let part = (b - a) / COPY_STREAMS / COPY_STEP * COPY_STEP;
                let rest = a + COPY_STREAMS * part;
                // SAFETY: both copies stay in [a, b), a range of dst (a live
                // buffer of `bytes`) no other chunk touches, and the same
                // range of src, a different buffer of `bytes`.
                unsafe {
                    let (s, d) = (src.as_ptr(), d.get());
                    crate::mem::stream_copy_lockstep(
                        s.add(a),
                        d.add(a),
                        part,
                        COPY_STREAMS,
                        COPY_STEP,
                    );
                    crate::mem::stream_copy(s.add(rest), d.add(rest), b - rest);
                }
            }
            crate::mem::store_fence();
        });
    };
    pass();
    let secs = best_of(5, pass);
    std::hint::black_box(&dst);
    (2 * bytes) as f64 / secs
}

/// fp32 FMA throughput on all threads with the active tier's widest vectors.
pub fn fma_peak() -> f64 {
    compute_rate(platform::kernels().probe_fma.expect("probe_fma"))
}

/// bf16 multiply-add throughput (fp32 accumulation) on all threads: the
/// tier's bf16 unit — `vdpbf16ps` on avx512, the AMX tiles on amx — or the
/// fp32 FMA peak on tiers without one, where bf16 work runs on the FMA units.
pub fn bf16_peak() -> f64 {
    match platform::kernels().probe_bf16 {
        Some(probe) => compute_rate(probe),
        None => fma_peak(),
    }
}

type ComputeProbe = unsafe extern "C" fn(i64, *mut sys::xk_probe_result) -> f64;

/// FLOP/s of a compute probe run on every thread: a warm-up (clock ramp, wake
/// the pool), then the best of three timed runs.
fn compute_rate(probe: ComputeProbe) -> f64 {
    let threads = num_threads();
    let run = |iters: i64| {
        let total = std::sync::Mutex::new(0.0);
        let t = Instant::now();
        grid(threads, 1, |r| {
            for _ in r {
                let mut sink = sys::xk_probe_result { value: 0.0 };
                // SAFETY: sink is a valid out-pointer.
                let f = unsafe { probe(iters, &mut sink) };
                std::hint::black_box(sink.value);
                *total.lock().unwrap() += f;
            }
        });
        (total.into_inner().unwrap(), t.elapsed().as_secs_f64())
    };
    run(2_000_000);
    (0..3)
        .map(|_| {
            let (flops, secs) = run(20_000_000);
            flops / secs
        })
        .fold(0.0, f64::max)
}

/// All probes, with buffers of `bytes` in total (use [`default_probe_bytes`]).
pub fn measure(bytes: usize) -> Roofline {
    Roofline {
        read_bw: read_bandwidth(bytes),
        copy_bw: copy_bandwidth(bytes / 2),
        fma_peak: fma_peak(),
        bf16_peak: bf16_peak(),
        threads: num_threads(),
    }
}
