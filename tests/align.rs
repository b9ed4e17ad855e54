//! The alignment report covers every registered op on every tier and every
//! case lies within its documented tolerance.

#[test]
fn every_case_aligns_on_every_tier() {
    let rows = xpu_ops::align::run("");
    let cases = xpu_ops::align::cases().len();
    assert_eq!(rows.len(), cases * xpu_ops::supported_isas().len());
    let failing: Vec<String> = rows
        .iter()
        .filter(|r| !r.alignment.passes())
        .map(|r| format!("{} {} {}: {:?}", r.op, r.shape, r.isa, r.alignment))
        .collect();
    assert!(
        failing.is_empty(),
        "outside tolerance:\n{}",
        failing.join("\n")
    );
    assert!(rows
        .iter()
        .all(|r| r.alignment.elements > 0 && r.alignment.cosine > 0.999));
}
