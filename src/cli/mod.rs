//! The subcommands of the `xpu-ops` binary.

pub mod align;
pub mod bench;
pub mod demo;
pub mod info;
pub mod kv_demo;

/// "48 KiB", "2 MiB", "1.5 GiB".
pub fn fmt_bytes(b: usize) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1 << 20) as f64 {
        format!("{:.0} MiB", b / (1 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.0} KiB", b / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// The CPU model from /proc/cpuinfo, if readable.
pub fn cpu_model() -> Option<String> {
    let s = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    s.lines()
        .find(|l| l.starts_with("model name") || l.starts_with("Model"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
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

/// The machine description shared by `info --json` and `bench --json`, as
/// (key, JSON value) pairs.
pub fn machine_json() -> Vec<(&'static str, String)> {
    let isas: Vec<String> = xpu_ops::supported_isas()
        .iter()
        .map(|i| json_str(i.name()))
        .collect();
    let caches: Vec<String> = xpu_ops::probe::cache_levels()
        .iter()
        .map(|c| {
            format!(
                "{{\"level\": {}, \"type\": {}, \"bytes\": {}, \"shared_cpus\": {}}}",
                c.level,
                json_str(&c.kind),
                c.bytes,
                json_str(&c.shared_cpus)
            )
        })
        .collect();
    vec![
        ("version", json_str(xpu_ops::VERSION)),
        ("cpu", json_str(&cpu_model().unwrap_or_default())),
        ("detected_isa", json_str(xpu_ops::detected_isa().name())),
        ("active_isa", json_str(xpu_ops::active_isa().name())),
        ("supported_isas", format!("[{}]", isas.join(", "))),
        ("threads", xpu_ops::num_threads().to_string()),
        ("caches", format!("[{}]", caches.join(", "))),
    ]
}
