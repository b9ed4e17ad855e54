//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod float_buf;

use xpu_ops::Isa;

/// Every ISA tier this machine runs; each parity test loops over them.
pub fn isas() -> Vec<Isa> {
    xpu_ops::supported_isas()
}

/// Runs `f` once per supported tier with ops forced onto that tier.
pub fn for_each_isa(mut f: impl FnMut(Isa)) {
    for isa in isas() {
        xpu_ops::with_isa(isa, || f(isa)).expect("supported tier");
    }
}

/// Runs `f` inside a rayon pool of `n` threads (ops use the enclosing pool),
/// on the caller's ISA tier: the per-thread override of [`for_each_isa`] is
/// re-applied on the pool thread that runs `f`.
pub fn with_threads<R: Send>(n: usize, f: impl FnOnce() -> R + Send) -> R {
    let isa = xpu_ops::active_isa();
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .expect("pool")
        .install(|| {
            xpu_ops::with_isa(isa, || {
                assert_eq!(xpu_ops::active_isa(), isa);
                f()
            })
        })
        .expect("supported tier")
}

/// A small deterministic generator (SplitMix64) for test data.
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
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn f32_vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}
