//! Runs the xpu-ops demo model: `cargo run --release --example demo -- [flags]`.
//!
//! Flags (see `DemoOptions::from_args`): `--config small|tiny|qwen3_next`,
//! `--layers N`, `--prompts 37,100,13`, `--decode N`, `--chunk N`,
//! `--attention flash|paged`, `--temperatures 0,0.8`, `--top-k N`, `--top-p P`,
//! `--seed N`, `--sampling-seed N`, `--repeats N`, `--threads N`, `--isa TIER`,
//! `--reference` / `--no-reference`, `--no-bandwidth`.

use xpu_ops::model::{run_demo, DemoOptions};

fn main() {
    let result = DemoOptions::from_args(std::env::args().skip(1)).and_then(run_demo);
    match result {
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("xpu-ops demo: {e}");
            std::process::exit(2);
        }
    }
}
