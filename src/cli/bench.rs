//! `xpu-ops bench`: measures this machine's roofline with
//! [`xpu_ops::probe`], then times every registered case
//! ([`xpu_ops::bench`]) and prints one table (or JSON).

use std::io::Write;
use std::process::ExitCode;

use xpu_ops::bench::{self, Config};
use xpu_ops::probe;

use super::{fmt_bytes, machine_json};
use crate::Args;

pub fn run(args: &Args) -> Result<ExitCode, String> {
    let cfg = Config {
        quick: args.quick,
        filters: args.filters.clone(),
        ..Config::default()
    };
    if args.list {
        for c in bench::cases(&cfg) {
            println!("{:<24} {:<38} {}", c.info.op, c.info.shape, c.info.dtype);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let n = bench::cases(&cfg).len();
    if n == 0 {
        return Err(format!("no benchmark case matches {:?}", args.filters));
    }
    // Progress goes to stderr in JSON mode so stdout stays one document.
    let mut log: Box<dyn Write> = if args.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let probe_bytes = if args.quick {
        probe::default_probe_bytes().min(512 << 20)
    } else {
        probe::default_probe_bytes()
    };
    let _ = writeln!(
        log,
        "xpu-ops {} bench: isa {}, {} threads, last-level cache {}, cold working sets {}",
        xpu_ops::VERSION,
        xpu_ops::active_isa(),
        xpu_ops::num_threads(),
        fmt_bytes(cfg.llc_bytes),
        fmt_bytes(cfg.cold_bytes()),
    );
    let _ = writeln!(
        log,
        "probing the roofline ({} buffers)...",
        fmt_bytes(probe_bytes)
    );
    let roof = probe::measure(probe_bytes);
    let _ = writeln!(log, "roofline: {}", bench::fmt_roofline(&roof));
    let _ = writeln!(
        log,
        "{n} cases; time = median per call, best = fastest sample, roof = roofline time / median\n"
    );
    let _ = writeln!(log, "{}", bench::table_header());
    let results = bench::run(&cfg, |m| {
        let _ = writeln!(log, "{}", bench::table_row(m, &roof));
        let _ = log.flush();
    });
    let floors: Vec<bool> = results
        .iter()
        .filter_map(|m| m.meets_floor(&roof))
        .collect();
    let _ = writeln!(
        log,
        "\nfloors met: {} of {}",
        floors.iter().filter(|&&b| b).count(),
        floors.len()
    );
    if args.json {
        let mut extra = machine_json();
        extra.push(("quick", args.quick.to_string()));
        extra.push(("cold_bytes", cfg.cold_bytes().to_string()));
        println!("{}", bench::json(&results, &roof, &extra));
    }
    Ok(ExitCode::SUCCESS)
}
