//! Run-time ISA detection and the kernel table of the chosen tier.
//!
//! The tier is detected once. `XPU_OPS_ISA` (read at first use) or
//! [`set_isa`] force a lower tier for the whole process; [`with_isa`] forces
//! one for the calling thread only, which is how the tests run every tier this
//! machine supports side by side. Launchers resolve the table on the calling
//! thread before they fan work out, so the override reaches every worker.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::error::{bail, Result};
use crate::sys;

/// A kernel tier. Ordered: a machine that runs a tier runs every lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable C, no SIMD beyond the architecture's baseline.
    Generic = 0,
    /// aarch64 Advanced SIMD.
    Neon = 1,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2 = 2,
    /// x86-64 AVX-512 F/BW/DQ/VL + BF16 + VNNI.
    Avx512 = 3,
    /// x86-64 AVX-512 plus AMX tiles (AMX-TILE + AMX-BF16): the avx512
    /// kernels with bf16 GEMMs on the tile unit. Linux only: the OS must
    /// enable the tile state and grant it to the process.
    Amx = 4,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Neon => "neon",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
        }
    }

    pub fn parse(s: &str) -> Option<Isa> {
        [Isa::Generic, Isa::Neon, Isa::Avx2, Isa::Avx512, Isa::Amx]
            .into_iter()
            .find(|i| i.name() == s)
    }

    fn from_u8(v: u8) -> Isa {
        match v {
            1 => Isa::Neon,
            2 => Isa::Avx2,
            3 => Isa::Avx512,
            4 => Isa::Amx,
            _ => Isa::Generic,
        }
    }

    pub(crate) fn kernels(self) -> &'static sys::xk_kernel_table {
        match self {
            #[cfg(xops_tier_amx)]
            Isa::Amx => amx_table(),
            #[cfg(xops_tier_avx512)]
            Isa::Avx512 => unsafe { &sys::xk_kernels_avx512 },
            #[cfg(xops_tier_avx2)]
            Isa::Avx2 => unsafe { &sys::xk_kernels_avx2 },
            #[cfg(xops_tier_neon)]
            Isa::Neon => unsafe { &sys::xk_kernels_neon },
            // SAFETY (all arms): the tables are immutable C statics.
            _ => unsafe { &sys::xk_kernels_generic },
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The tiers this build contains and this CPU can run, lowest first.
pub fn supported_isas() -> Vec<Isa> {
    let mut v = vec![Isa::Generic];
    #[cfg(all(target_arch = "aarch64", xops_tier_neon))]
    if std::arch::is_aarch64_feature_detected!("neon") {
        v.push(Isa::Neon);
    }
    #[cfg(all(target_arch = "x86_64", xops_tier_avx2))]
    if ["avx2", "fma", "f16c", "bmi2"].iter().all(|f| x86_has(f)) {
        v.push(Isa::Avx2);
        #[cfg(xops_tier_avx512)]
        if [
            "avx512f",
            "avx512bw",
            "avx512dq",
            "avx512vl",
            "avx512bf16",
            "avx512vnni",
        ]
        .iter()
        .all(|f| x86_has(f))
        {
            v.push(Isa::Avx512);
            #[cfg(xops_tier_amx)]
            if amx_usable() {
                v.push(Isa::Amx);
            }
        }
    }
    v
}

#[cfg(target_arch = "x86_64")]
fn x86_has(feature: &str) -> bool {
    match feature {
        "avx2" => std::arch::is_x86_feature_detected!("avx2"),
        "fma" => std::arch::is_x86_feature_detected!("fma"),
        "f16c" => std::arch::is_x86_feature_detected!("f16c"),
        "bmi2" => std::arch::is_x86_feature_detected!("bmi2"),
        "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
        "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
        "avx512dq" => std::arch::is_x86_feature_detected!("avx512dq"),
        "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
        "avx512bf16" => std::arch::is_x86_feature_detected!("avx512bf16"),
        "avx512vnni" => std::arch::is_x86_feature_detected!("avx512vnni"),
        _ => false,
    }
}

/// Whether AMX tiles work here: CPUID leaf 7 says AMX-TILE (EDX bit 24) and
/// AMX-BF16 (bit 22), and the C side finds the tile state enabled in XCR0 and
/// obtains the process's XTILEDATA permission (Linux `arch_prctl`). Asked
/// once per process.
#[cfg(all(target_arch = "x86_64", xops_tier_amx))]
fn amx_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // SAFETY (cpuid): leaf 0 exists on every x86-64 CPU and reports the
        // highest leaf; leaf 7 is read only when it exists. (The intrinsics
        // are safe on newer toolchains, unsafe on the crate's minimum one.)
        #[allow(unused_unsafe)]
        let max_leaf = unsafe { __cpuid(0) }.eax;
        if max_leaf < 7 {
            return false;
        }
        #[allow(unused_unsafe)]
        let edx = unsafe { __cpuid_count(7, 0) }.edx;
        let (tile, bf16) = (edx >> 24 & 1 == 1, edx >> 22 & 1 == 1);
        // SAFETY: plain C, no arguments; it checks XCR0 before using anything.
        tile && bf16 && unsafe { sys::xk_amx_request_permission() } == 0
    })
}

/// The amx tier's table: the avx512 table with the AMX kernels swapped in
/// (built once, only after [`amx_usable`] granted the tiles).
#[cfg(xops_tier_amx)]
fn amx_table() -> &'static sys::xk_kernel_table {
    struct Table(sys::xk_kernel_table);
    // SAFETY: the table holds function pointers and a static string, never written after init.
    unsafe impl Sync for Table {}
    unsafe impl Send for Table {}
    static TABLE: OnceLock<Table> = OnceLock::new();
    &TABLE
        .get_or_init(|| {
            // SAFETY: the avx512 table is an immutable C static; init fills a plain struct.
            let mut t = unsafe { sys::xk_kernels_avx512 };
            unsafe { sys::xk_amx_table_init(&mut t) };
            Table(t)
        })
        .0
}

/// The best tier this machine runs.
pub fn detected_isa() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        *supported_isas()
            .last()
            .expect("generic is always supported")
    })
}

const UNSET: u8 = u8::MAX;
static PROCESS_ISA: AtomicU8 = AtomicU8::new(UNSET);

thread_local! {
    static THREAD_ISA: Cell<Option<Isa>> = const { Cell::new(None) };
}

fn process_isa() -> Isa {
    let v = PROCESS_ISA.load(Ordering::Relaxed);
    if v != UNSET {
        return Isa::from_u8(v);
    }
    // First use: honour XPU_OPS_ISA, clamped to what the machine runs.
    let detected = detected_isa();
    let chosen = match std::env::var("XPU_OPS_ISA")
        .ok()
        .as_deref()
        .and_then(Isa::parse)
    {
        Some(want) if supported_isas().contains(&want) => want,
        _ => detected,
    };
    let _ = PROCESS_ISA.compare_exchange(UNSET, chosen as u8, Ordering::Relaxed, Ordering::Relaxed);
    Isa::from_u8(PROCESS_ISA.load(Ordering::Relaxed))
}

/// The tier ops called from this thread run.
pub fn active_isa() -> Isa {
    THREAD_ISA.with(|t| t.get()).unwrap_or_else(process_isa)
}

/// Forces a tier for the whole process. Fails if this machine cannot run it.
pub fn set_isa(isa: Isa) -> Result<()> {
    if !supported_isas().contains(&isa) {
        bail!(
            Unsupported,
            "ISA tier {isa} is not available on this machine (best: {})",
            detected_isa()
        );
    }
    PROCESS_ISA.store(isa as u8, Ordering::Relaxed);
    Ok(())
}

/// Runs `f` with ops called from this thread forced onto `isa`.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> Result<R> {
    if !supported_isas().contains(&isa) {
        bail!(
            Unsupported,
            "ISA tier {isa} is not available on this machine (best: {})",
            detected_isa()
        );
    }
    let prev = THREAD_ISA.with(|t| t.replace(Some(isa)));
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_ISA.with(|t| t.set(self.0));
        }
    }
    let _restore = Restore(prev);
    Ok(f())
}

/// The kernel table for the calling thread's tier.
pub(crate) fn kernels() -> &'static sys::xk_kernel_table {
    active_isa().kernels()
}
