//! The benchmark harness shared by `xpu-ops bench` and the criterion benches
//! in `benches/`: case definitions, timing, the roofline and the report.
//!
//! Each op family registers its cases in its own module (`kv_cache.rs`, ...)
//! and one line in [`FAMILIES`]. A [`Case`] carries what it measures (op,
//! shape, dtype), the work one call does ([`Work`]: bytes moved and flops)
//! and a setup closure that allocates the buffers and returns a [`Runner`]
//! (one call of the op per invocation). Cases are set up one at a time, so
//! only one case's buffers are alive at once.
//!
//! The roofline of a call is `t_min = max(bytes / bandwidth, flops / peak)`
//! with the bandwidth and peak measured on this machine by [`crate::probe`];
//! the reported fraction is `t_min / t_measured` (1.0 = at the limit).
//!
//! Cache regime: decode-shaped cases are cold. Their working sets are
//! [`Config::cold_bytes`] (at least 256 MiB and 2x the last-level cache) and
//! successive calls touch different parts of them.

use std::time::{Duration, Instant};

use crate::probe::Roofline;

pub mod attention;
pub mod gdn;
pub mod kv_cache;
pub mod layer;
pub mod linear;
pub mod sampling;

/// Every op family's case list, in report order. A new family adds its
/// module above and one line here.
pub const FAMILIES: &[(&str, CaseList)] = &[
    ("kv_cache", kv_cache::cases),
    ("layer", layer::cases),
    ("attention", attention::cases),
    ("gdn", gdn::cases),
    ("linear", linear::cases),
    ("sampling", sampling::cases),
];

/// A family's case list for a configuration.
pub type CaseList = fn(&Config) -> Vec<Case>;

/// What to run and how long.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shorter timing per case (for smoke runs and CI).
    pub quick: bool,
    /// Keep cases whose op, family or name contains one of these substrings.
    pub filters: Vec<String>,
    /// Last-level cache size used to size cold working sets.
    pub llc_bytes: usize,
    /// Seed for the random data and index patterns.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            quick: false,
            filters: Vec::new(),
            llc_bytes: crate::probe::llc_bytes(),
            seed: 0x5eed,
        }
    }
}

impl Config {
    /// Size of a cold working set (KV cache arena, rotated weights...): 2x
    /// the last-level cache, at least 256 MiB, at most 1 GiB and a quarter of
    /// the available memory.
    pub fn cold_bytes(&self) -> usize {
        let mut b = (2 * self.llc_bytes).clamp(256 << 20, 1 << 30);
        if let Some(avail) = crate::probe::available_memory() {
            b = b.min((avail / 4).max(64 << 20));
        }
        b
    }

    /// Wall time spent timing one case.
    pub fn target_time(&self) -> Duration {
        if self.quick {
            Duration::from_millis(40)
        } else {
            Duration::from_millis(250)
        }
    }

    fn keeps(&self, info: &CaseInfo) -> bool {
        self.filters.is_empty()
            || self.filters.iter().any(|f| {
                info.op.contains(f.as_str())
                    || info.family.contains(f.as_str())
                    || info.name().contains(f.as_str())
            })
    }
}

/// Which measured limit bounds an op's memory traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Mostly reads (GEMV, attention decode): DRAM read bandwidth.
    Read,
    /// Reads and writes about as much (cache writes, copies): DRAM copy bandwidth.
    Copy,
}

/// The compute unit whose peak bounds a case's arithmetic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Peak {
    /// fp32 FMA.
    Fp32,
    /// bf16 multiply-add with fp32 accumulation ([`crate::probe::bf16_peak`]).
    Bf16,
}

impl Peak {
    fn of(self, roof: &Roofline) -> f64 {
        match self {
            Peak::Fp32 => roof.fma_peak,
            Peak::Bf16 => roof.bf16_peak,
        }
    }
}

/// The work one call does, counted as the op's useful traffic and arithmetic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Work {
    /// Bytes read plus bytes written.
    pub bytes: f64,
    /// Floating-point operations (an FMA counts 2).
    pub flops: f64,
    pub bound: Bound,
    /// The peak `flops` are measured against.
    pub peak: Peak,
}

/// A performance goal a case is expected to meet (from the op's issue).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Floor {
    /// At least this fraction of the roofline.
    MinFraction(f64),
    /// At most this many microseconds per call.
    MaxMicros(f64),
}

impl std::fmt::Display for Floor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Floor::MinFraction(x) => write!(f, ">={:.0}%", x * 100.0),
            Floor::MaxMicros(us) => write!(f, "<={us}us"),
        }
    }
}

/// What a case measures.
#[derive(Debug, Clone)]
pub struct CaseInfo {
    pub family: &'static str,
    pub op: &'static str,
    /// Shape and index pattern, e.g. `T=512 H=8 D=128 bs=16 slots=random`.
    pub shape: String,
    /// Data types, e.g. `bf16` or `bf16->fp8e4m3`.
    pub dtype: String,
    pub work: Work,
    pub floor: Option<Floor>,
}

impl CaseInfo {
    /// `op/shape/dtype` with spaces replaced, usable as a criterion id.
    pub fn name(&self) -> String {
        format!("{}/{}/{}", self.op, self.shape, self.dtype).replace(' ', ",")
    }
}

/// One call of the op; the closure owns (or shares) its buffers.
pub type Runner = Box<dyn FnMut()>;

/// A benchmark case: what it measures and how to set it up.
pub struct Case {
    pub info: CaseInfo,
    setup: Box<dyn FnOnce() -> Runner>,
}

impl Case {
    pub fn new(info: CaseInfo, setup: impl FnOnce() -> Runner + 'static) -> Case {
        Case {
            info,
            setup: Box::new(setup),
        }
    }

    /// Allocates the case's buffers and returns the runner.
    pub fn setup(self) -> (CaseInfo, Runner) {
        (self.info, (self.setup)())
    }
}

/// Every registered case that `cfg`'s filters keep.
pub fn cases(cfg: &Config) -> Vec<Case> {
    FAMILIES
        .iter()
        .flat_map(|(_, f)| f(cfg))
        .filter(|c| cfg.keeps(&c.info))
        .collect()
}

/// Per-call times of a case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Median over samples, seconds per call.
    pub median: f64,
    /// Fastest sample, seconds per call.
    pub min: f64,
    /// Calls timed (after warm-up).
    pub calls: usize,
}

/// Times `run` for about `target`: a warm-up, then samples of enough calls
/// to last >= 50 µs each; reports the median and fastest per-call time.
pub fn time(run: &mut dyn FnMut(), target: Duration) -> Timing {
    // Warm-up: at least one call and ~5% of the budget.
    let warm = Instant::now();
    let mut n = 0usize;
    while n == 0 || warm.elapsed() < target / 20 {
        run();
        n += 1;
    }
    let per_call = warm.elapsed().as_secs_f64() / n as f64;
    let batch = ((50e-6 / per_call.max(1e-9)).ceil() as usize).clamp(1, 1 << 20);
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 5 || (start.elapsed() < target && samples.len() < 100_000) {
        let t = Instant::now();
        for _ in 0..batch {
            run();
        }
        samples.push(t.elapsed().as_secs_f64() / batch as f64);
    }
    samples.sort_by(f64::total_cmp);
    Timing {
        median: samples[samples.len() / 2],
        min: samples[0],
        calls: samples.len() * batch,
    }
}

/// A case's measured time against the roofline.
#[derive(Debug, Clone)]
pub struct Measured {
    pub info: CaseInfo,
    pub timing: Timing,
}

impl Measured {
    /// The roofline time of one call on `roof`, seconds.
    pub fn roofline_time(&self, roof: &Roofline) -> f64 {
        let w = &self.info.work;
        let bw = match w.bound {
            Bound::Read => roof.read_bw,
            Bound::Copy => roof.copy_bw,
        };
        (w.bytes / bw).max(w.flops / w.peak.of(roof))
    }

    /// Roofline time over the median time (1.0 = at the limit).
    pub fn fraction(&self, roof: &Roofline) -> f64 {
        self.roofline_time(roof) / self.timing.median
    }

    /// Achieved rate at the median time: GB/s for memory-bound cases,
    /// GFLOP/s where flops bind the roofline.
    pub fn achieved(&self, roof: &Roofline) -> (f64, &'static str) {
        let w = &self.info.work;
        let bw = match w.bound {
            Bound::Read => roof.read_bw,
            Bound::Copy => roof.copy_bw,
        };
        if w.flops / w.peak.of(roof) > w.bytes / bw {
            (w.flops / self.timing.median / 1e9, "GFLOP/s")
        } else {
            (w.bytes / self.timing.median / 1e9, "GB/s")
        }
    }

    /// Whether the case meets its floor (None if it has none).
    pub fn meets_floor(&self, roof: &Roofline) -> Option<bool> {
        self.info.floor.map(|f| match f {
            Floor::MinFraction(x) => self.fraction(roof) >= x,
            Floor::MaxMicros(us) => self.timing.median * 1e6 <= us,
        })
    }
}

/// Sets up and times every case in turn, calling `each` after each one.
pub fn run(cfg: &Config, mut each: impl FnMut(&Measured)) -> Vec<Measured> {
    let mut out = Vec::new();
    for case in cases(cfg) {
        let (info, mut runner) = case.setup();
        let timing = time(&mut runner, cfg.target_time());
        drop(runner);
        let m = Measured { info, timing };
        each(&m);
        out.push(m);
    }
    out
}

/// Human-readable time: ns, µs, ms or s.
pub fn fmt_time(secs: f64) -> String {
    if secs < 1e-6 {
        format!("{:.0} ns", secs * 1e9)
    } else if secs < 1e-3 {
        format!("{:.2} us", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.2} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

/// The roofline as one line of text.
pub fn fmt_roofline(roof: &Roofline) -> String {
    format!(
        "DRAM read {:.1} GB/s, DRAM copy (streaming stores, read+write) {:.1} GB/s, fp32 FMA {:.1} GFLOP/s, bf16 {:.1} GFLOP/s ({} threads)",
        roof.read_bw / 1e9,
        roof.copy_bw / 1e9,
        roof.fma_peak / 1e9,
        roof.bf16_peak / 1e9,
        roof.threads,
    )
}

/// The table header line(s) for [`table_row`].
pub fn table_header() -> String {
    let h = format!(
        "{:<24} {:<38} {:<14} {:>10} {:>10} {:>14} {:>7} {:>12}",
        "op", "shape", "dtype", "time", "best", "achieved", "roof", "floor"
    );
    let rule = "-".repeat(h.len());
    format!("{h}\n{rule}")
}

/// One case as a table row: median and best time per call, the achieved
/// rate, the fraction of the roofline and the floor with its verdict.
pub fn table_row(m: &Measured, roof: &Roofline) -> String {
    let (rate, unit) = m.achieved(roof);
    let floor = match (m.info.floor, m.meets_floor(roof)) {
        (Some(f), Some(true)) => format!("{f} ok"),
        (Some(f), _) => format!("{f} MISS"),
        _ => String::new(),
    };
    format!(
        "{:<24} {:<38} {:<14} {:>10} {:>10} {:>14} {:>6.0}% {:>12}",
        m.info.op,
        m.info.shape,
        m.info.dtype,
        fmt_time(m.timing.median),
        fmt_time(m.timing.min),
        format!("{rate:.1} {unit}"),
        m.fraction(roof) * 100.0,
        floor
    )
}

/// The whole table.
pub fn table(results: &[Measured], roof: &Roofline) -> String {
    let mut s = table_header();
    for m in results {
        s.push('\n');
        s.push_str(&table_row(m, roof));
    }
    s
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:e}")
    } else {
        "null".into()
    }
}

/// Machine-readable report: the machine (`extra` key/value pairs, values
/// already JSON), the roofline and every case.
pub fn json(results: &[Measured], roof: &Roofline, extra: &[(&str, String)]) -> String {
    let mut s = String::from("{\n");
    for (k, v) in extra {
        s.push_str(&format!("  {}: {v},\n", json_str(k)));
    }
    s.push_str(&format!(
        "  \"roofline\": {{\"read_bytes_per_s\": {}, \"copy_bytes_per_s\": {}, \"fma_flops_per_s\": {}, \"bf16_flops_per_s\": {}, \"threads\": {}}},\n",
        json_num(roof.read_bw),
        json_num(roof.copy_bw),
        json_num(roof.fma_peak),
        json_num(roof.bf16_peak),
        roof.threads,
    ));
    s.push_str("  \"cases\": [");
    for (i, m) in results.iter().enumerate() {
        let w = &m.info.work;
        let floor = match m.info.floor {
            None => "null".to_string(),
            Some(Floor::MinFraction(x)) => format!("{{\"min_fraction\": {}}}", json_num(x)),
            Some(Floor::MaxMicros(x)) => format!("{{\"max_us\": {}}}", json_num(x)),
        };
        let meets = match m.meets_floor(roof) {
            None => "null".to_string(),
            Some(b) => b.to_string(),
        };
        s.push_str(if i == 0 { "\n" } else { ",\n" });
        s.push_str(&format!(
            "    {{\"family\": {}, \"op\": {}, \"shape\": {}, \"dtype\": {}, \"bytes\": {}, \"flops\": {}, \"bound\": {}, \"peak\": {}, \"median_s\": {}, \"min_s\": {}, \"calls\": {}, \"roofline_s\": {}, \"fraction\": {}, \"floor\": {floor}, \"meets_floor\": {meets}}}",
            json_str(m.info.family),
            json_str(m.info.op),
            json_str(&m.info.shape),
            json_str(&m.info.dtype),
            json_num(w.bytes),
            json_num(w.flops),
            json_str(match w.bound {
                Bound::Read => "read",
                Bound::Copy => "copy",
            }),
            json_str(match w.peak {
                Peak::Fp32 => "fp32",
                Peak::Bf16 => "bf16",
            }),
            json_num(m.timing.median),
            json_num(m.timing.min),
            m.timing.calls,
            json_num(m.roofline_time(roof)),
            json_num(m.fraction(roof)),
        ));
    }
    s.push_str("\n  ]\n}");
    s
}

/// A small deterministic generator (SplitMix64) for benchmark data.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// `len` elements whose start is aligned to `align` bytes. Large allocations
/// start 16 bytes past a page, which splits every 64-byte access of a row
/// across two lines; PyTorch's CPU allocator (what a vLLM-style engine hands
/// us) aligns tensors to 64 bytes ([`LINE`]), and arenas want a page.
/// Every element is written on creation, so timing never pays first-touch
/// page faults.
pub struct AlignedBuf<T = u8> {
    buf: Vec<T>,
    off: usize,
    len: usize,
}

/// Bytes in a cache line: the alignment of a torch tensor.
pub const LINE: usize = 64;

impl<T: Copy> AlignedBuf<T> {
    /// `len` copies of `fill`.
    pub fn new(len: usize, align: usize, fill: T) -> AlignedBuf<T> {
        let es = std::mem::size_of::<T>();
        assert!(align.is_power_of_two() && es > 0 && align % es == 0);
        // Not vec![fill; n]: for fill = 0 that maps lazily-zeroed pages.
        let mut buf = Vec::with_capacity(len + align / es);
        let off = (buf.as_ptr() as usize).wrapping_neg() % align / es;
        buf.resize(off + len, fill);
        AlignedBuf { buf, off, len }
    }

    /// `v`'s elements, moved onto an `align`-byte boundary.
    pub fn from_vec(v: Vec<T>, align: usize) -> AlignedBuf<T> {
        let Some(&first) = v.first() else {
            return AlignedBuf {
                buf: v,
                off: 0,
                len: 0,
            };
        };
        let mut a = AlignedBuf::new(v.len(), align, first);
        a.copy_from_slice(&v);
        a
    }
}

impl<T> std::ops::Deref for AlignedBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl<T> std::ops::DerefMut for AlignedBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::{AlignedBuf, LINE};

    #[test]
    fn aligned_buf_starts_on_its_boundary_and_keeps_the_elements() {
        for len in [0usize, 1, 15, 16, 17, 1000] {
            let v: Vec<u16> = (0..len as u16).collect();
            let a = AlignedBuf::from_vec(v.clone(), LINE);
            assert_eq!(&a[..], &v[..]);
            if len > 0 {
                assert_eq!(a.as_ptr() as usize % LINE, 0, "len {len}");
            }
            for align in [LINE, 4096] {
                let f = AlignedBuf::new(len, align, 2.5f32);
                assert_eq!(f.len(), len);
                assert!(f.iter().all(|&x| x == 2.5));
                if len > 0 {
                    assert_eq!(f.as_ptr() as usize % align, 0, "len {len} align {align}");
                }
            }
        }
    }
}
