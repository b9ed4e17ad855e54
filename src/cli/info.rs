//! `xpu-ops info`: version, ISA tiers, threads and CPU caches.

use super::{cpu_model, fmt_bytes, machine_json};

pub fn run(json: bool) {
    if json {
        let fields: Vec<String> = machine_json()
            .into_iter()
            .map(|(k, v)| format!("  \"{k}\": {v}"))
            .collect();
        println!("{{\n{}\n}}", fields.join(",\n"));
        return;
    }
    println!("xpu-ops {}", xpu_ops::VERSION);
    if let Some(m) = cpu_model() {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!("cpu:       {m} ({cpus} CPUs available)");
    }
    let supported: Vec<&str> = xpu_ops::supported_isas().iter().map(|i| i.name()).collect();
    println!(
        "isa:       {} active, {} detected; supported: {}{}",
        xpu_ops::active_isa(),
        xpu_ops::detected_isa(),
        supported.join(", "),
        match std::env::var("XPU_OPS_ISA") {
            Ok(v) => format!(" (XPU_OPS_ISA={v})"),
            Err(_) => String::new(),
        }
    );
    println!(
        "threads:   {}{}",
        xpu_ops::num_threads(),
        match std::env::var("XPU_OPS_NUM_THREADS") {
            Ok(v) => format!(" (XPU_OPS_NUM_THREADS={v})"),
            Err(_) => String::new(),
        }
    );
    let caches = xpu_ops::probe::cache_levels();
    if caches.is_empty() {
        println!("caches:    unknown (no /sys/devices/system/cpu/cpu0/cache)");
    }
    for (i, c) in caches.iter().enumerate() {
        println!(
            "{:<10} L{} {:<12} {:>9}  shared by CPUs {}",
            if i == 0 { "caches:" } else { "" },
            c.level,
            c.kind,
            fmt_bytes(c.bytes),
            c.shared_cpus
        );
    }
    if let Some(m) = xpu_ops::probe::available_memory() {
        println!("memory:    {} available", fmt_bytes(m));
    }
}
