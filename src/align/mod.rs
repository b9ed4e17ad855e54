//! Node-level alignment: each op's output against the reference on
//! representative shapes, on every ISA tier this machine runs — cosine
//! similarity, RMSE relative to the reference RMS, max abs error, and the
//! share of elements within the op's documented tolerance (the report
//! accelerator vendors publish). `xpu-ops align` prints it and exits non-zero
//! if any case falls outside its tolerance.

mod attention;
mod cache;
mod gdn;
mod layer;
mod linear;
mod quant;
mod sampling;

use half::bf16;

use crate::dtype::{load_f32, store_f32, DType};
use crate::platform::{supported_isas, with_isa, Isa};

/// A deterministic stream of case inputs: 64-bit LCG steps, 24 bits each,
/// uniform in [0, 1).
fn unit(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `n` deterministic values uniform in [lo, hi).
fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut u = unit(seed);
    (0..n).map(|_| lo + (hi - lo) * u()).collect()
}

/// A deterministic shuffle of `0..n` (Fisher-Yates over [`values`]).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..n).collect();
    let r = values(n, seed, 0.0, 1.0);
    for i in (1..n).rev() {
        ids.swap(i, (r[i] * (i + 1) as f32) as usize % (i + 1));
    }
    ids
}

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

fn widen(v: &[bf16]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// `v` rounded once to a floating `dtype`, as little-endian bytes.
fn encode(v: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * dtype.size());
    for &x in v {
        out.extend_from_slice(&store_f32(x, dtype).to_le_bytes()[..dtype.size()]);
    }
    out
}

/// The values of little-endian `dtype` bytes (a floating dtype).
fn decode(bytes: &[u8], dtype: DType) -> Vec<f64> {
    bytes
        .chunks(dtype.size())
        .map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            load_f32(u32::from_le_bytes(b), dtype) as f64
        })
        .collect()
}

/// `|got - want| <= atol + rtol * |want|`, the per-element tolerance an op documents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

impl Tolerance {
    pub const EXACT: Tolerance = Tolerance {
        atol: 0.0,
        rtol: 0.0,
    };

    pub fn holds(&self, got: f64, want: f64) -> bool {
        if got.is_nan() || want.is_nan() {
            return got.is_nan() && want.is_nan();
        }
        if got == want {
            return true; // also equal infinities
        }
        (got - want).abs() <= self.atol + self.rtol * want.abs()
    }
}

/// How closely one output matches the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alignment {
    pub elements: usize,
    pub cosine: f64,
    /// RMSE / RMS of the reference (0 when both are zero).
    pub rel_rmse: f64,
    pub max_abs: f64,
    /// Share of elements within the tolerance, in [0, 1].
    pub within: f64,
}

impl Alignment {
    /// Compares outputs element by element. Non-finite pairs count only toward `within`.
    pub fn compare(got: &[f64], want: &[f64], tol: Tolerance) -> Alignment {
        assert_eq!(
            got.len(),
            want.len(),
            "alignment needs outputs of equal length"
        );
        let (mut dot, mut gg, mut ww, mut se, mut max_abs, mut ok) =
            (0.0, 0.0, 0.0, 0.0, 0.0f64, 0usize);
        for (&g, &w) in got.iter().zip(want) {
            ok += tol.holds(g, w) as usize;
            if g.is_finite() && w.is_finite() {
                dot += g * w;
                gg += g * g;
                ww += w * w;
                se += (g - w) * (g - w);
                max_abs = max_abs.max((g - w).abs());
            }
        }
        let n = got.len().max(1) as f64;
        let cosine = if gg == 0.0 && ww == 0.0 {
            1.0
        } else {
            dot / (gg.sqrt() * ww.sqrt()).max(f64::MIN_POSITIVE)
        };
        let rms = (ww / n).sqrt();
        let rmse = (se / n).sqrt();
        let rel_rmse = if rmse == 0.0 {
            0.0
        } else {
            rmse / rms.max(f64::MIN_POSITIVE)
        };
        Alignment {
            elements: got.len(),
            cosine,
            rel_rmse,
            max_abs,
            within: if got.is_empty() {
                1.0
            } else {
                ok as f64 / got.len() as f64
            },
        }
    }

    pub fn passes(&self) -> bool {
        self.within == 1.0
    }
}

/// One op on one shape: produces (kernel output, reference output), both as f64.
pub struct AlignCase {
    pub op: &'static str,
    pub shape: String,
    pub tolerance: Tolerance,
    pub run: Box<dyn Fn() -> (Vec<f64>, Vec<f64>) + Send + Sync>,
}

/// A case's result on one tier.
#[derive(Debug, Clone)]
pub struct AlignRow {
    pub op: &'static str,
    pub shape: String,
    pub isa: Isa,
    pub tolerance: Tolerance,
    pub alignment: Alignment,
}

/// Every registered case. Each op family adds its cases here.
pub fn cases() -> Vec<AlignCase> {
    let mut all = Vec::new();
    all.extend(cache::cases());
    all.extend(gdn::cases());
    all.extend(layer::cases());
    all.extend(attention::cases());
    all.extend(sampling::cases());
    all.extend(linear::cases());
    all.extend(quant::cases());
    all
}

/// Runs the cases whose op name contains `filter` on every supported tier.
pub fn run(filter: &str) -> Vec<AlignRow> {
    let mut rows = Vec::new();
    for case in cases().into_iter().filter(|c| c.op.contains(filter)) {
        for isa in supported_isas() {
            let (got, want) = with_isa(isa, || (case.run)()).expect("supported tier");
            rows.push(AlignRow {
                op: case.op,
                shape: case.shape.clone(),
                isa,
                tolerance: case.tolerance,
                alignment: Alignment::compare(&got, &want, case.tolerance),
            });
        }
    }
    rows
}

/// The report as a text table.
pub fn format_table(rows: &[AlignRow]) -> String {
    let mut s = format!(
        "{:<28} {:<34} {:<8} {:>10} {:>10} {:>10} {:>9} {:>16}  {}\n",
        "op", "shape", "isa", "cosine", "rmse/rms", "max_abs", "within", "tolerance", "ok"
    );
    for r in rows {
        let a = &r.alignment;
        s.push_str(&format!(
            "{:<28} {:<34} {:<8} {:>10.7} {:>10.2e} {:>10.2e} {:>8.4}% {:>16}  {}\n",
            r.op,
            r.shape,
            r.isa.name(),
            a.cosine,
            a.rel_rmse,
            a.max_abs,
            100.0 * a.within,
            format!("{:.0e}+{:.0e}|x|", r.tolerance.atol, r.tolerance.rtol),
            if a.passes() { "yes" } else { "NO" }
        ));
    }
    s
}

/// The report as JSON (an array of rows).
pub fn format_json(rows: &[AlignRow]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            let a = &r.alignment;
            format!(
                "{{\"op\":\"{}\",\"shape\":\"{}\",\"isa\":\"{}\",\"elements\":{},\"cosine\":{},\"rel_rmse\":{},\"max_abs\":{},\"within\":{},\"atol\":{},\"rtol\":{},\"pass\":{}}}",
                r.op, r.shape, r.isa, a.elements, json_num(a.cosine), json_num(a.rel_rmse), json_num(a.max_abs),
                json_num(a.within), r.tolerance.atol, r.tolerance.rtol, a.passes()
            )
        })
        .collect();
    format!("[{}]", items.join(",\n"))
}

fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_known_vectors() {
        let a = Alignment::compare(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], Tolerance::EXACT);
        assert_eq!(
            (a.cosine, a.rel_rmse, a.max_abs, a.within),
            (1.0, 0.0, 0.0, 1.0)
        );
        let b = Alignment::compare(
            &[1.0, 0.0],
            &[0.0, 1.0],
            Tolerance {
                atol: 0.5,
                rtol: 0.0,
            },
        );
        assert_eq!((b.cosine, b.max_abs, b.within), (0.0, 1.0, 0.0));
        let c = Alignment::compare(
            &[1.1, 2.0],
            &[1.0, 2.0],
            Tolerance {
                atol: 0.0,
                rtol: 0.05,
            },
        );
        assert_eq!(c.within, 0.5);
        assert!((c.rel_rmse - (0.005f64).sqrt() / (2.5f64).sqrt()).abs() < 1e-12);
        assert!(
            Tolerance::EXACT.holds(f64::NAN, f64::NAN) && !Tolerance::EXACT.holds(1.0, f64::NAN)
        );
    }
}
