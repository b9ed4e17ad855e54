//! `xpu-ops`: machine info, benchmarks against this machine's measured
//! roofline, and the end-to-end demo (`cargo run --release` runs `demo`).

mod cli;

use std::process::ExitCode;

const USAGE: &str = "\
xpu-ops: CPU operator library for LLM inference engines

usage: xpu-ops [COMMAND] [OPTIONS]

commands:
  demo [FLAGS]      the hybrid-model demo built from xpu-ops ops, aligned against
                    the reference forward (default; `xpu-ops demo --help` for FLAGS)
  kv-demo           KV-cache demo: prompts into bf16 and fp8 paged caches larger
                    than L3, fork, decode, verified against the reference
  info              version, ISA tiers, threads, CPU caches
  bench [FILTER..]  measure this machine's roofline, then time every op case whose
                    op, family or name contains one of the FILTERs (all if none)
  align [FILTER..]  every op against the reference on every ISA tier: cosine,
                    rmse/rms, max abs error, share within tolerance; exits 1 if
                    any case falls outside its documented tolerance
  help              this text

options:
  --threads N       worker threads (default: XPU_OPS_NUM_THREADS, else all CPUs)
  --isa TIER        force a lower ISA tier: generic, avx2, avx512, amx, neon
  --json            bench/info/align: machine-readable output on stdout
  --quick           bench: shorter timing per case and smaller probes
  --list            bench: list the cases that would run, without running them
  --version         print the version
";

/// Parsed command line.
#[derive(Debug, Default)]
pub struct Args {
    pub command: String,
    pub threads: Option<usize>,
    pub isa: Option<xpu_ops::Isa>,
    pub json: bool,
    pub quick: bool,
    pub list: bool,
    pub filters: Vec<String>,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args::default();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--threads" | "-t" => {
                let v = value("--threads")?;
                match v.parse::<usize>() {
                    Ok(n) if n > 0 => a.threads = Some(n),
                    _ => return Err(format!("--threads wants a positive integer, got {v:?}")),
                }
            }
            "--isa" => {
                let v = value("--isa")?;
                a.isa = Some(xpu_ops::Isa::parse(&v).ok_or_else(|| {
                    format!("unknown ISA tier {v:?}; expected generic, avx2, avx512, amx or neon")
                })?);
            }
            "--json" => a.json = true,
            "--quick" => a.quick = true,
            "--list" => a.list = true,
            "--help" | "-h" => a.command = "help".into(),
            "--version" | "-V" => a.command = "version".into(),
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}")),
            _ if a.command.is_empty() => a.command = arg,
            _ => a.filters.push(arg),
        }
    }
    if a.command.is_empty() {
        a.command = "help".into();
    }
    Ok(a)
}

fn run(args: &Args) -> Result<ExitCode, String> {
    if let Some(n) = args.threads {
        xpu_ops::set_num_threads(n).map_err(|e| e.to_string())?;
    }
    if let Some(isa) = args.isa {
        xpu_ops::set_isa(isa).map_err(|e| e.to_string())?;
    }
    let extra_args = |cmd: &str| {
        if args.filters.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "`{cmd}` takes no arguments, got {:?}",
                args.filters
            ))
        }
    };
    match args.command.as_str() {
        "kv-demo" => {
            extra_args("kv-demo")?;
            cli::kv_demo::run()
        }
        "info" => {
            extra_args("info")?;
            cli::info::run(args.json);
            Ok(ExitCode::SUCCESS)
        }
        "bench" => cli::bench::run(args),
        "align" => cli::align::run(args),
        "help" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        "version" => {
            println!("xpu-ops {}", xpu_ops::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    }
}

fn main() -> ExitCode {
    // The demo has its own flags (the model's); everything else parses here.
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map_or(true, |c| c == "demo") {
        return cli::demo::run(raw.into_iter().skip(1));
    }
    let args = match parse(raw.into_iter()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("xpu-ops: {e}\n(run `xpu-ops help` for usage)");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xpu-ops: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn parses_commands_and_options() {
        assert_eq!(p("--threads 2").unwrap().command, "help");
        let a = p("bench --threads 1 --quick reshape copy_blocks --json").unwrap();
        assert_eq!(a.command, "bench");
        assert_eq!(a.threads, Some(1));
        assert!(a.quick && a.json);
        assert_eq!(a.filters, ["reshape", "copy_blocks"]);
        assert_eq!(p("info --threads=3").unwrap().threads, Some(3));
        assert_eq!(
            p("--isa generic bench").unwrap().isa,
            Some(xpu_ops::Isa::Generic)
        );
        assert_eq!(p("--help").unwrap().command, "help");
    }

    #[test]
    fn rejects_bad_options() {
        assert!(p("bench --threads 0").is_err());
        assert!(p("bench --threads").is_err());
        assert!(p("bench --isa sse9").is_err());
        assert!(p("bench --frobnicate").is_err());
    }
}
