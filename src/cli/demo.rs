//! `xpu-ops demo` (the default command): the hybrid decoder of
//! `xpu_ops::model` built only from xpu-ops ops, with its report (throughput,
//! per-op breakdown, decode roofline, alignment with the reference forward).
//! The flags are `DemoOptions::from_args`'s (`xpu-ops demo --help`).

use std::process::ExitCode;

use xpu_ops::model::{run_demo, DemoOptions};

pub fn run(args: impl Iterator<Item = String>) -> ExitCode {
    let args: Vec<String> = args.collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", DEMO_USAGE);
        return ExitCode::SUCCESS;
    }
    match DemoOptions::from_args(args).and_then(run_demo) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xpu-ops demo: {e}");
            ExitCode::FAILURE
        }
    }
}

const DEMO_USAGE: &str = "\
usage: xpu-ops demo [--config small|tiny|qwen3_next] [--layers N] [--prompts 37,100,13]
                    [--decode N] [--chunk N] [--attention flash|paged] [--temperatures 0,0.8]
                    [--top-k N] [--top-p P] [--seed N] [--sampling-seed N] [--repeats N]
                    [--threads N] [--isa TIER] [--reference | --no-reference] [--no-bandwidth]

A Qwen3.5-style hybrid decoder (3 Gated DeltaNet layers : 1 attention layer) with
random weights from a fixed seed: chunked prefill of several prompts, then batched
decode with a paged KV cache and a GDN state pool, sampled per request. Prints
prefill/decode tokens/s, a per-op time breakdown, the decode step's roofline
fraction, and the alignment of logits and tokens with the reference forward.
`--config qwen3_next` uses the real Qwen3-Next layer shapes (a few layers).
";
