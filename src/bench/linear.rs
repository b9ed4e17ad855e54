//! FC / GEMM benchmark cases (issue #5): `linear` (f32/f16/bf16),
//! `wna16_linear` (int8 per channel; int4 group 128 with zeros, and at
//! K=4096 N=2048 also group 32 and 64, symmetric group 128, and M = 4 and 16),
//! `dynamic_scaled_int8_quant` and `int8_scaled_mm`, on the PERF.md shapes
//! (K → N: 2048→12288, 2048→64, 4096→2048, 2048→8192, 2048→512,
//! 2048→151936, 4096→248320).
//!
//! * Decode (M ≤ 16, `cold`): the weights are cold. Enough copies to fill
//!   [`Config::cold_bytes`] (≥ 256 MiB and 2x the last-level cache) are
//!   rotated, one per call; a weight larger than that is its own cold set.
//!   Bytes counted: the weights (codes, scales and zeros for quantized ones),
//!   read once per call; activations and outputs are negligible at M ≤ 16.
//!   Floors: M = 1 with bf16, int8 and int4 weights ≥ 80% of the measured
//!   DRAM read bandwidth.
//! * GEMM (M ≥ 16, warm weights): flops `2·M·N·K` against the measured fp32
//!   FMA peak. Floors: fp32 at M ≥ 512 ≥ 85%; bf16 at M ≥ 256 ≥ 75% of the
//!   tier's measured bf16 peak (`vdpbf16ps`, or the AMX tiles on the amx
//!   tier; bf16 cases are counted against it).
//! * W8A8: quantization is a pass over the activations (bytes); the int8 GEMM
//!   is counted in int8 ops against the fp32 FMA peak (no floor).

use half::{bf16, f16};

use super::{AlignedBuf, Bound, Case, CaseInfo, Config, Floor, Peak, Rng, Runner, Work, LINE};
use crate::dtype::DType;
use crate::ops::quant::Wna16Weight;
use crate::tensor::{TensorView, TensorViewMut};

/// PERF.md K → N.
pub const KN: [(usize, usize); 7] = [
    (2048, 12288),
    (2048, 64),
    (4096, 2048),
    (2048, 8192),
    (2048, 512),
    (2048, 151_936),
    (4096, 248_320),
];

fn dtype_label(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "?",
    }
}

/// Pseudo-random weight bits of a 16-bit float: small finite values.
fn half_bits(rng: &mut Rng, n: usize, dtype: DType) -> AlignedBuf<u16> {
    AlignedBuf::from_vec(
        (0..n)
            .map(|_| match dtype {
                DType::BF16 => bf16::from_f32(rng.uniform() * 0.1).to_bits(),
                _ => f16::from_f32(rng.uniform() * 0.1).to_bits(),
            })
            .collect(),
        LINE,
    )
}

/// Owned dense weights of one dtype.
enum Dense {
    F32(AlignedBuf<f32>),
    Half(AlignedBuf<u16>, DType),
}

impl Dense {
    fn new(rng: &mut Rng, n: usize, dtype: DType) -> Dense {
        match dtype {
            DType::F32 => Dense::F32(AlignedBuf::from_vec(
                (0..n).map(|_| rng.uniform() * 0.1).collect(),
                LINE,
            )),
            d => Dense::Half(half_bits(rng, n, d), d),
        }
    }
    fn view(&self, shape: &[usize]) -> TensorView<'_> {
        match self {
            Dense::F32(v) => TensorView::new(v, shape).unwrap(),
            Dense::Half(v, d) => {
                // SAFETY: a u16 buffer viewed as bytes of a 2-byte float dtype.
                let bytes =
                    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 2) };
                TensorView::from_bytes(bytes, *d, shape, None).unwrap()
            }
        }
    }
}

/// An output buffer of `dtype` (as 4-byte words, enough for any dtype).
fn out_view<'a>(buf: &'a mut [u32], dtype: DType, shape: &[usize]) -> TensorViewMut<'a> {
    let n: usize = shape.iter().product();
    let bytes = n * dtype.size();
    assert!(bytes <= buf.len() * 4);
    // SAFETY: the view covers `bytes` of the buffer it borrows exclusively.
    unsafe {
        TensorViewMut::from_raw(
            buf.as_mut_ptr() as *mut u8,
            crate::tensor::Layout::contiguous(dtype, shape),
        )
    }
}

fn linear_case(cfg: &Config, m: usize, k: usize, n: usize, dtype: DType, cold: bool) -> Case {
    dense_case(cfg, m, k, n, dtype, cold, false)
}

/// `linear_packed`: the weight packed once at setup ([`crate::PackedLinearWeight`]).
fn packed_case(cfg: &Config, m: usize, k: usize, n: usize, dtype: DType, cold: bool) -> Case {
    dense_case(cfg, m, k, n, dtype, cold, true)
}

fn dense_case(
    cfg: &Config,
    m: usize,
    k: usize,
    n: usize,
    dtype: DType,
    cold: bool,
    packed: bool,
) -> Case {
    let flops = 2.0 * (m * n * k) as f64;
    let wbytes = (n * k * dtype.size()) as f64;
    let floor = if cold && m == 1 && dtype == DType::BF16 {
        Some(Floor::MinFraction(0.8))
    } else if !cold && dtype == DType::F32 && m >= 512 {
        Some(Floor::MinFraction(0.85))
    } else if !cold && dtype == DType::BF16 && m >= 256 {
        Some(Floor::MinFraction(0.75))
    } else {
        None
    };
    let info = CaseInfo {
        family: "linear",
        op: if packed { "linear_packed" } else { "linear" },
        shape: format!("M={m} K={k} N={n}{}", if cold { " cold" } else { "" }),
        dtype: dtype_label(dtype).into(),
        work: Work {
            bytes: if cold {
                wbytes
            } else {
                wbytes + ((m * k + m * n) * dtype.size()) as f64
            },
            flops,
            bound: Bound::Read,
            // bf16 x bf16 runs on the bf16 unit (vdpbf16ps or AMX) where the tier has one.
            peak: if dtype == DType::BF16 {
                Peak::Bf16
            } else {
                Peak::Fp32
            },
        },
        floor,
    };
    let cold_bytes = cfg.cold_bytes();
    let seed = cfg.seed ^ (m * 131 + k * 7 + n) as u64;
    Case::new(info, move || {
        let mut rng = Rng(seed);
        let copies = if cold {
            cold_bytes.div_ceil(wbytes as usize).clamp(1, 64)
        } else {
            1
        };
        let ws: Vec<Dense> = (0..copies)
            .map(|_| Dense::new(&mut rng, n * k, dtype))
            .collect();
        let x = Dense::new(&mut rng, m * k, dtype);
        let mut out = AlignedBuf::new(m * n, LINE, 0u32);
        let mut i = 0usize;
        if packed {
            let ps: Vec<crate::PackedLinearWeight> = ws
                .iter()
                .map(|w| crate::PackedLinearWeight::new(&w.view(&[n, k])).expect("valid weight"))
                .collect();
            drop(ws);
            return Box::new(move || {
                let w = &ps[i % ps.len()];
                i += 1;
                let mut o = out_view(&mut out, dtype, &[m, n]);
                crate::linear_packed(&x.view(&[m, k]), w, None, &mut o)
                    .expect("valid linear_packed");
            }) as Runner;
        }
        Box::new(move || {
            let w = &ws[i % ws.len()];
            i += 1;
            let mut o = out_view(&mut out, dtype, &[m, n]);
            crate::linear(&x.view(&[m, k]), &w.view(&[n, k]), None, &mut o).expect("valid linear");
        }) as Runner
    })
}

/// `zeros`: int4 with a zeros tensor (GPTQ/AWQ style) or symmetric (`sym`).
fn wna16_case(
    cfg: &Config,
    m: usize,
    k: usize,
    n: usize,
    bits: u32,
    group: usize,
    zeros: bool,
) -> Case {
    let zeros = zeros && bits == 4;
    let g = if group == 0 { k } else { group };
    let sz = n * (k / g) * 2 * if zeros { 2 } else { 1 }; // bf16 scales (+ zeros)
    let wbytes = (crate::ops::quant::wna16_row_bytes(bits, k) * n + sz) as f64;
    let cold = m <= 16;
    let info = CaseInfo {
        family: "linear",
        op: "wna16_linear",
        shape: format!("M={m} K={k} N={n}{}", if cold { " cold" } else { "" }),
        dtype: format!(
            "bf16 x int{bits}/{}{}",
            if group == 0 {
                "ch".to_string()
            } else {
                format!("g{group}")
            },
            if bits == 4 && !zeros { " sym" } else { "" }
        ),
        work: Work {
            bytes: wbytes,
            flops: 2.0 * (m * n * k) as f64,
            bound: Bound::Read,
            peak: Peak::Fp32,
        },
        floor: (m == 1).then_some(Floor::MinFraction(0.8)),
    };
    let cold_bytes = cfg.cold_bytes();
    let seed = cfg.seed ^ (bits as usize * 1000 + k + n) as u64;
    Case::new(info, move || {
        let mut rng = Rng(seed);
        let copies = if cold {
            cold_bytes.div_ceil(wbytes as usize).clamp(1, 64)
        } else {
            1
        };
        let groups = k / g;
        let ws: Vec<Wna16Weight> = (0..copies)
            .map(|_| {
                let codes: Vec<u8> = (0..n * k).map(|_| rng.below(1 << bits) as u8).collect();
                let s: Vec<bf16> = (0..n * groups)
                    .map(|_| bf16::from_f32(0.01 + rng.uniform().abs() * 0.01))
                    .collect();
                let z: Vec<bf16> = (0..n * groups)
                    .map(|_| bf16::from_f32(rng.below(16) as f32))
                    .collect();
                let sv = TensorView::new(&s, &[n, groups]).unwrap();
                let zv = TensorView::new(&z, &[n, groups]).unwrap();
                Wna16Weight::from_codes(n, k, bits, &codes, &sv, zeros.then_some(&zv), None)
                    .unwrap()
            })
            .collect();
        let x = AlignedBuf::from_vec(
            (0..m * k).map(|_| bf16::from_f32(rng.uniform())).collect(),
            LINE,
        );
        let mut out = AlignedBuf::new(m * n, LINE, bf16::ZERO);
        let mut i = 0usize;
        Box::new(move || {
            let w = &ws[i % ws.len()];
            i += 1;
            let z = w.zeros();
            crate::wna16_linear(
                &TensorView::new(&x, &[m, k]).unwrap(),
                &w.qweight(),
                &w.scales(),
                z.as_ref(),
                None,
                None,
                &mut TensorViewMut::new(&mut out, &[m, n]).unwrap(),
                bits,
            )
            .expect("valid wna16_linear");
        }) as Runner
    })
}

fn int8_quant_case(cfg: &Config, m: usize, k: usize) -> Case {
    let info = CaseInfo {
        family: "linear",
        op: "dynamic_scaled_int8_quant",
        shape: format!("M={m} K={k} asym"),
        dtype: "bf16->int8".into(),
        work: Work {
            bytes: (m * k * 3) as f64,
            flops: 0.0,
            bound: Bound::Copy,
            peak: Peak::Fp32,
        },
        floor: None,
    };
    let seed = cfg.seed ^ (m + k) as u64;
    Case::new(info, move || {
        let mut rng = Rng(seed);
        let x: Vec<bf16> = (0..m * k)
            .map(|_| bf16::from_f32(rng.uniform() * 4.0))
            .collect();
        let (mut q, mut s, mut z) = (vec![0i8; m * k], vec![0f32; m], vec![0i32; m]);
        Box::new(move || {
            crate::dynamic_scaled_int8_quant(
                &mut TensorViewMut::new(&mut q, &[m, k]).unwrap(),
                &TensorView::new(&x, &[m, k]).unwrap(),
                &mut TensorViewMut::new(&mut s, &[m]).unwrap(),
                Some(&mut TensorViewMut::new(&mut z, &[m]).unwrap()),
            )
            .expect("valid quant");
        }) as Runner
    })
}

fn int8_mm_case(cfg: &Config, m: usize, k: usize, n: usize) -> Case {
    let cold = m <= 16;
    let info = CaseInfo {
        family: "linear",
        op: "int8_scaled_mm",
        shape: format!("M={m} K={k} N={n}{}", if cold { " cold" } else { "" }),
        dtype: "int8->bf16".into(),
        work: Work {
            bytes: (n * k) as f64,
            flops: 2.0 * (m * n * k) as f64,
            bound: Bound::Read,
            peak: Peak::Fp32,
        },
        floor: None,
    };
    let cold_bytes = cfg.cold_bytes();
    let seed = cfg.seed ^ (m * 7 + n) as u64;
    Case::new(info, move || {
        let mut rng = Rng(seed);
        let copies = if cold {
            cold_bytes.div_ceil(n * k).clamp(1, 64)
        } else {
            1
        };
        let ws: Vec<Vec<i8>> = (0..copies)
            .map(|_| {
                (0..n * k)
                    .map(|_| (rng.below(256) as i32 - 128) as i8)
                    .collect()
            })
            .collect();
        let a: Vec<i8> = (0..m * k)
            .map(|_| (rng.below(256) as i32 - 128) as i8)
            .collect();
        let (sa, sb) = (vec![0.01f32; m], vec![0.02f32; n]);
        let mut out = vec![bf16::ZERO; m * n];
        let mut i = 0usize;
        Box::new(move || {
            let w = &ws[i % ws.len()];
            i += 1;
            crate::int8_scaled_mm(
                &mut TensorViewMut::new(&mut out, &[m, n]).unwrap(),
                &TensorView::new(&a, &[m, k]).unwrap(),
                &TensorView::strided(w, &[k, n], &[1, k]).unwrap(),
                &TensorView::new(&sa, &[m]).unwrap(),
                &TensorView::new(&sb, &[n]).unwrap(),
                None,
            )
            .expect("valid int8_scaled_mm");
        }) as Runner
    })
}

/// Every FC / GEMM case (fewer with `cfg.quick`).
pub fn cases(cfg: &Config) -> Vec<Case> {
    let mut v = Vec::new();
    let q = cfg.quick;
    // Decode, cold weights.
    for &(k, n) in KN.iter() {
        if q && (k, n) != (4096, 2048) {
            continue;
        }
        v.push(linear_case(cfg, 1, k, n, DType::BF16, true));
    }
    for &(k, n) in &[(4096, 2048), (2048, 12288)] {
        if q && (k, n) != (4096, 2048) {
            continue;
        }
        v.push(linear_case(cfg, 1, k, n, DType::F32, true));
        v.push(linear_case(cfg, 1, k, n, DType::F16, true));
    }
    for m in [4, 16] {
        v.push(linear_case(cfg, m, 4096, 2048, DType::BF16, true));
    }
    for &(k, n) in &[
        (2048, 12288),
        (4096, 2048),
        (2048, 151_936),
        (4096, 248_320),
    ] {
        if q && (k, n) != (4096, 2048) {
            continue;
        }
        v.push(wna16_case(cfg, 1, k, n, 8, 0, false));
        v.push(wna16_case(cfg, 1, k, n, 4, 128, true));
        if (k, n) == (4096, 2048) {
            // The other int4 group sizes and the symmetric (no zeros) form.
            v.push(wna16_case(cfg, 1, k, n, 4, 128, false));
            v.push(wna16_case(cfg, 1, k, n, 4, 64, true));
            v.push(wna16_case(cfg, 1, k, n, 4, 32, true));
        }
    }
    // Small decode batches of codes (no floor): the M = 2..16 tiles.
    for m in [4, 16] {
        v.push(wna16_case(cfg, m, 4096, 2048, 8, 0, false));
        v.push(wna16_case(cfg, m, 4096, 2048, 4, 128, true));
    }
    // GEMM, warm weights.
    let ms: &[usize] = if q {
        &[16, 512]
    } else {
        &[16, 64, 256, 1024, 4096]
    };
    for &m in ms {
        let mut kns = vec![(4096, 2048)];
        if !q && m <= 256 {
            kns.extend([(2048, 12288), (2048, 512)]);
        }
        if !q && m >= 256 {
            kns.push((2048, 64));
        }
        for (k, n) in kns {
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                if dtype == DType::F16 && m >= 1024 {
                    continue;
                }
                v.push(linear_case(cfg, m, k, n, dtype, false));
                if (k, n) == (4096, 2048) && dtype != DType::F16 {
                    v.push(packed_case(cfg, m, k, n, dtype, false));
                }
            }
        }
    }
    for dtype in [DType::F32, DType::BF16] {
        v.push(linear_case(cfg, 512, 4096, 4096, dtype, false)); // PERF.md's OpenBLAS baseline shape
        v.push(packed_case(cfg, 512, 4096, 4096, dtype, false));
    }
    // Packed weights at decode (cold): the AMX tiles and f32 panels run the tiled GEMM.
    for dtype in [DType::BF16, DType::F32] {
        v.push(packed_case(cfg, 1, 4096, 2048, dtype, true));
    }
    if !q {
        v.push(wna16_case(cfg, 256, 4096, 2048, 4, 128, true));
        v.push(int8_quant_case(cfg, 256, 4096));
        for m in [1, 16, 256] {
            v.push(int8_mm_case(cfg, m, 4096, 2048));
        }
    }
    v
}
