//! `xpu-ops bench`: measures this machine's roofline with
//! [`xpu_ops::probe`], times every registered case ([`xpu_ops::bench`]),
//! probes again, and prints one table (or JSON) against the better of the
//! two probes (a probe disturbed by other work only underestimates).

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
    let probe_bytes = if args.quick {
        probe::default_probe_bytes().min(512 << 20)
    } else {
        probe::default_probe_bytes()
    };
    let mut err = std::io::stderr();
    let header = format!(
        "xpu-ops {} bench: isa {}, {} threads, last-level cache {}, cold working sets {}",
        xpu_ops::VERSION,
        xpu_ops::active_isa(),
        xpu_ops::num_threads(),
        fmt_bytes(cfg.llc_bytes),
        fmt_bytes(cfg.cold_bytes()),
    );
    let _ = writeln!(err, "{header}");
    let _ = writeln!(
        err,
        "probing the roofline ({} buffers)...",
        fmt_bytes(probe_bytes)
    );
    let before = probe::measure(probe_bytes);
    let _ = writeln!(err, "  before: {}", bench::fmt_roofline(&before));
    let mut done = 0;
    let results = bench::run(&cfg, |m| {
        done += 1;
        let _ = write!(
            err,
            "\r[{done}/{n}] {:<70}",
            format!("{} {} {}", m.info.op, m.info.shape, m.info.dtype)
        );
        let _ = err.flush();
    });
    let _ = writeln!(err, "\rprobing the roofline again...{:<70}", "");
    let after = probe::measure(probe_bytes);
    let _ = writeln!(err, "  after:  {}", bench::fmt_roofline(&after));
    let roof = before.best(&after);
    let floors: Vec<bool> = results
        .iter()
        .filter_map(|m| m.meets_floor(&roof))
        .collect();
    let met = floors.iter().filter(|&&b| b).count();
    if args.json {
        let mut extra = machine_json();
        extra.push(("quick", args.quick.to_string()));
        extra.push(("cold_bytes", cfg.cold_bytes().to_string()));
        extra.push(("probe_bytes", probe_bytes.to_string()));
        extra.push((
            "roofline_probes",
            format!("[{}, {}]", probe_json(&before), probe_json(&after)),
        ));
        println!("{}", bench::json(&results, &roof, &extra));
    } else {
        println!("{header}");
        println!(
            "roofline: {} (best of the probes before and after the cases, {} buffers)",
            bench::fmt_roofline(&roof),
            fmt_bytes(probe_bytes)
        );
        println!(
            "time = median per call, best = fastest sample, roof = roofline time / median time\n"
        );
        println!("{}", bench::table(&results, &roof));
        println!("\nfloors met: {met} of {}", floors.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn probe_json(r: &probe::Roofline) -> String {
    format!(
        "{{\"read_bytes_per_s\": {:e}, \"copy_bytes_per_s\": {:e}, \"fma_flops_per_s\": {:e}, \"bf16_flops_per_s\": {:e}}}",
        r.read_bw, r.copy_bw, r.fma_peak, r.bf16_peak
    )
}
