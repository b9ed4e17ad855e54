//! Compiles the C kernels in `xpu_src/`: the sources under `xpu_src/cpu` once
//! per ISA tier, each build with only that tier's flags (never
//! `-march=native`), so one binary runs everywhere and picks a tier at run time.

use std::env;

/// (tier name, compiler flags) for the target architecture.
fn tiers(arch: &str) -> Vec<(&'static str, &'static [&'static str])> {
    match arch {
        "x86_64" => vec![
            ("generic", &[][..]),
            ("avx2", &["-mavx2", "-mfma", "-mf16c", "-mbmi2"][..]),
            (
                "avx512",
                &[
                    "-mavx2",
                    "-mfma",
                    "-mf16c",
                    "-mbmi2",
                    "-mavx512f",
                    "-mavx512bw",
                    "-mavx512dq",
                    "-mavx512vl",
                    "-mavx512bf16",
                    "-mavx512vnni",
                ][..],
            ),
        ],
        "aarch64" => vec![("generic", &[][..]), ("neon", &[][..])],
        _ => vec![("generic", &[][..])],
    }
}

fn kernel_sources() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir("xpu_src/cpu")
        .expect("xpu_src/cpu exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}

/// The AMX tier's sources (compiled once, as their own unit).
fn amx_sources() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir("xpu_src/cpu/amx")
        .expect("xpu_src/cpu/amx exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}

fn base_build() -> cc::Build {
    let mut b = cc::Build::new();
    b.std("c11")
        .opt_level(3)
        .flag_if_supported("-fno-strict-aliasing")
        .warnings(true)
        .extra_warnings(true)
        // CI builds with warnings as errors; local builds only warn.
        .warnings_into_errors(env::var_os("CI").is_some_and(|v| !v.is_empty()));
    b
}

fn main() {
    println!("cargo:rerun-if-changed=xpu_src");
    println!("cargo:rerun-if-env-changed=CI");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");

    // The AMX tier: its own unit (xpu_src/cpu/amx), the avx512 flags plus the
    // tile extensions, built only where the compiler knows them. Compiled
    // first: it calls into the avx512 library that follows it on the link line.
    if arch == "x86_64" {
        let mut b = base_build();
        b.define("XK_TIER", "amx");
        let avx512 = tiers(&arch)
            .into_iter()
            .find(|(t, _)| *t == "avx512")
            .map(|(_, f)| f)
            .unwrap_or_default();
        let amx = ["-mamx-tile", "-mamx-bf16"];
        if amx.iter().all(|f| b.is_flag_supported(f).unwrap_or(false)) {
            for f in avx512.iter().chain(amx.iter()) {
                b.flag(f);
            }
            b.files(amx_sources());
            b.compile("xops_kernels_amx");
            println!("cargo:rustc-cfg=xops_tier_amx");
        } else {
            println!("cargo:warning=the C compiler lacks -mamx-tile/-mamx-bf16: no AMX tier");
        }
    }

    let sources = kernel_sources();
    for (tier, flags) in tiers(&arch) {
        let mut b = base_build();
        b.define("XK_TIER", tier);
        for f in flags {
            b.flag(f);
        }
        b.files(&sources);
        b.compile(&format!("xops_kernels_{tier}"));
    }

    let mut common = base_build();
    common.file("xpu_src/common/scalar.c");
    common.compile("xops_common");

    for (tier, _) in tiers(&arch) {
        println!("cargo:rustc-cfg=xops_tier_{tier}");
    }
    for tier in ["generic", "avx2", "avx512", "amx", "neon"] {
        println!("cargo::rustc-check-cfg=cfg(xops_tier_{tier})");
    }
}
