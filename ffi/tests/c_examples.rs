//! Builds the C examples in `ffi/examples/` with the system C compiler
//! (`$CC` or `cc`, `-Wall -Wextra -Werror`) against `include/xpu_ops.h` and
//! the library cargo built for this test run, and runs them:
//!
//! * `link_kv_cache.c` linked to `libxpu_ops.so` (run once per ISA tier via
//!   `XPU_OPS_ISA` and with 1 and 3 threads) and to `libxpu_ops.a`;
//! * `dlopen_kv_cache.c`, which loads `libxpu_ops.so` with `dlopen`;
//! * `link_attention.c` (paged / varlen decode, merge) linked like
//!   `link_kv_cache.c`, on every tier with 1 and 3 threads;
//! * the header compiled after a user's own `dlpack.h` definitions.
//!
//! Cargo does not build a cdylib/staticlib-only crate for its integration
//! tests, so the first test to need the library runs `cargo build -p
//! xpu-ops-ffi` for this test's profile (a no-op when it is fresh) and uses
//! the copy in `<target>/<profile>/`, next to this executable. Should that
//! cargo wait on a lock held by the cargo running the tests, it is stopped
//! and the library is built into a separate target dir instead.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ffi/ has a parent")
        .to_path_buf()
}

/// `<target>/<profile>`: this executable lives in `<target>/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable in <target>/<profile>/deps")
        .to_path_buf()
}

fn lib_names() -> (&'static str, &'static str) {
    if cfg!(target_os = "macos") {
        ("libxpu_ops.dylib", "libxpu_ops.a")
    } else {
        ("libxpu_ops.so", "libxpu_ops.a")
    }
}

/// Runs `cargo build -p xpu-ops-ffi` for `profile` with `target_dir`.
/// Returns false if it was stopped because it blocked on a lock.
fn cargo_build_ffi(profile: &str, target_dir: Option<&Path>) -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "xpu-ops-ffi"])
        .current_dir(repo_root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(t) = target_dir {
        cmd.env("CARGO_TARGET_DIR", t);
    }
    eprintln!("building the C ABI library: {cmd:?}");
    let mut child = cmd.spawn().expect("run cargo");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Blocking waiting for file lock") {
                let _ = tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    loop {
        if let Some(status) = child.try_wait().expect("wait for cargo") {
            let log = reader.join().expect("stderr reader");
            assert!(
                status.success(),
                "cargo build -p xpu-ops-ffi failed:\n{log}"
            );
            return true;
        }
        if rx.try_recv().is_ok() {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The directory holding a fresh `libxpu_ops.so` and `libxpu_ops.a`.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = profile_dir();
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile dir name")
            .to_owned();
        let built = if cargo_build_ffi(&profile, None) {
            dir
        } else {
            let target = dir.join("c-examples-target");
            assert!(
                cargo_build_ffi(&profile, Some(&target)),
                "cargo blocked on a lock"
            );
            target.join(&profile)
        };
        let (so, a) = lib_names();
        for f in [so, a] {
            assert!(
                built.join(f).is_file(),
                "{f} missing from {}",
                built.display()
            );
        }
        built
    })
}

fn out_dir() -> PathBuf {
    let d = profile_dir().join("c-examples");
    std::fs::create_dir_all(&d).expect("create the output dir");
    d
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

/// Compiles `sources` into `out` with warnings as errors, then `extra` link args.
fn compile(sources: &[PathBuf], out: &Path, extra: &[String]) {
    let mut cmd = Command::new(cc());
    cmd.args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(repo_root().join("include"))
        .args(sources)
        .arg("-o")
        .arg(out)
        .args(extra);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {:?}: {e}", cc()));
    assert!(
        output.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs a built example and asserts it exits 0.
fn run(exe: &Path, args: &[&Path], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd.output().expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{cmd:?} exited with {}:\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn example(name: &str) -> PathBuf {
    repo_root().join("ffi/examples").join(name)
}

#[test]
fn link_kv_cache_shared_on_every_tier() {
    let dir = lib_dir();
    let exe = out_dir().join("link_kv_cache");
    compile(
        &[example("link_kv_cache.c")],
        &exe,
        &[
            format!("-L{}", dir.display()),
            "-lxpu_ops".into(),
            format!("-Wl,-rpath,{}", dir.display()),
            "-lm".into(),
        ],
    );
    for isa in xops::supported_isas() {
        for threads in ["1", "3"] {
            let out = run(
                &exe,
                &[],
                &[
                    ("XPU_OPS_ISA", isa.name()),
                    ("XPU_OPS_NUM_THREADS", threads),
                ],
            );
            assert!(
                out.contains(&format!("isa {}, {threads} threads", isa.name())),
                "{out}"
            );
        }
    }
}

#[test]
fn link_kv_cache_static() {
    let dir = lib_dir();
    let exe = out_dir().join("link_kv_cache_static");
    let mut extra = vec![dir.join(lib_names().1).display().to_string()];
    extra.extend(["-lpthread", "-ldl", "-lm"].map(String::from));
    compile(&[example("link_kv_cache.c")], &exe, &extra);
    let out = run(&exe, &[], &[]);
    assert!(out.starts_with("link_kv_cache: ok"), "{out}");
}

#[test]
fn dlopen_kv_cache() {
    let so = lib_dir().join(lib_names().0);
    let exe = out_dir().join("dlopen_kv_cache");
    compile(
        &[example("dlopen_kv_cache.c")],
        &exe,
        &["-ldl".into(), "-lm".into()],
    );
    let out = run(&exe, &[&so], &[]);
    let tiers = xops::supported_isas().len();
    assert!(out.contains(&format!("{tiers} tiers")), "{out}");
}

/// A program that brings its own DLPack definitions (as `dlpack.h` 1.x
/// would, include guard and version macro) compiles against the header
/// without redefinitions, and the version macro expands to the library's.
#[test]
fn header_defers_to_a_users_dlpack_h() {
    let src = out_dir().join("own_dlpack.c");
    std::fs::write(
        &src,
        r#"#define DLPACK_DLPACK_H_
#define DLPACK_MAJOR_VERSION 1
#include <stdint.h>
typedef enum { kDLCPU = 1, kDLCUDA = 2 } DLDeviceType;
typedef struct { DLDeviceType device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
  void *data; DLDevice device; int32_t ndim; DLDataType dtype;
  int64_t *shape; int64_t *strides; uint64_t byte_offset;
} DLTensor;
#include "xpu_ops.h"
#include "xpu_ops.h" /* the include guard holds */
#include <string.h>
int main(void) {
  return strcmp(xops_version(), XPU_OPS_VERSION) == 0 ? 0 : 1;
}
"#,
    )
    .expect("write the test program");
    let dir = lib_dir();
    let exe = out_dir().join("own_dlpack");
    compile(
        &[src],
        &exe,
        &[
            format!("-L{}", dir.display()),
            "-lxpu_ops".into(),
            format!("-Wl,-rpath,{}", dir.display()),
        ],
    );
    run(&exe, &[], &[]);
}

#[test]
fn link_linear_shared_on_every_tier() {
    let dir = lib_dir();
    let exe = out_dir().join("link_linear");
    compile(
        &[example("link_linear.c")],
        &exe,
        &[
            format!("-L{}", dir.display()),
            "-lxpu_ops".into(),
            format!("-Wl,-rpath,{}", dir.display()),
            "-lm".into(),
        ],
    );
    for isa in xops::supported_isas() {
        for threads in ["1", "3"] {
            let out = run(
                &exe,
                &[],
                &[
                    ("XPU_OPS_ISA", isa.name()),
                    ("XPU_OPS_NUM_THREADS", threads),
                ],
            );
            assert!(
                out.contains(&format!("isa {}, {threads} threads", isa.name())),
                "{out}"
            );
        }
    }
}

#[test]
fn link_sampling_shared_on_every_tier() {
    let dir = lib_dir();
    let exe = out_dir().join("link_sampling");
    compile(
        &[example("link_sampling.c")],
        &exe,
        &[
            format!("-L{}", dir.display()),
            "-lxpu_ops".into(),
            format!("-Wl,-rpath,{}", dir.display()),
            "-lm".into(),
        ],
    );
    for isa in xops::supported_isas() {
        for threads in ["1", "3"] {
            let out = run(
                &exe,
                &[],
                &[
                    ("XPU_OPS_ISA", isa.name()),
                    ("XPU_OPS_NUM_THREADS", threads),
                ],
            );
            assert!(
                out.contains(&format!("isa {}, {threads} threads", isa.name())),
                "{out}"
            );
        }
    }
}

#[test]
fn link_attention_shared_on_every_tier() {
    let dir = lib_dir();
    let exe = out_dir().join("link_attention");
    compile(
        &[example("link_attention.c")],
        &exe,
        &[
            format!("-L{}", dir.display()),
            "-lxpu_ops".into(),
            format!("-Wl,-rpath,{}", dir.display()),
            "-lm".into(),
        ],
    );
    for isa in xops::supported_isas() {
        for threads in ["1", "3"] {
            let out = run(
                &exe,
                &[],
                &[
                    ("XPU_OPS_ISA", isa.name()),
                    ("XPU_OPS_NUM_THREADS", threads),
                ],
            );
            assert!(
                out.contains(&format!("isa {}, {threads} threads", isa.name())),
                "{out}"
            );
        }
    }
}
