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
    for tier in ["generic", "avx2", "avx512", "neon"] {
        println!("cargo::rustc-check-cfg=cfg(xops_tier_{tier})");
    }
}
