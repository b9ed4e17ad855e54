//! `xpu-ops align`: the node-level alignment report (see `xpu_ops::align`).

use std::process::ExitCode;

use crate::Args;

pub fn run(args: &Args) -> Result<ExitCode, String> {
    let filters: Vec<&str> = if args.filters.is_empty() {
        vec![""]
    } else {
        args.filters.iter().map(String::as_str).collect()
    };
    let mut rows: Vec<xpu_ops::align::AlignRow> = Vec::new();
    for f in filters {
        for r in xpu_ops::align::run(f) {
            if !rows_contain(&rows, &r) {
                rows.push(r);
            }
        }
    }
    if rows.is_empty() {
        return Err(format!("no alignment case matches {:?}", args.filters));
    }
    if args.json {
        println!("{}", xpu_ops::align::format_json(&rows));
    } else {
        print!("{}", xpu_ops::align::format_table(&rows));
    }
    let failing = rows.iter().filter(|r| !r.alignment.passes()).count();
    if failing > 0 {
        eprintln!(
            "xpu-ops align: {failing} of {} rows outside their tolerance",
            rows.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("xpu-ops align: all {} rows within tolerance", rows.len());
    Ok(ExitCode::SUCCESS)
}

fn rows_contain(rows: &[xpu_ops::align::AlignRow], r: &xpu_ops::align::AlignRow) -> bool {
    rows.iter()
        .any(|x| x.op == r.op && x.shape == r.shape && x.isa == r.isa)
}
