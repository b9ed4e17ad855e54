//! fp8 cache writes (`saturate(x / scale)`) against the reference, bit for
//! bit, on every ISA tier, near-exhaustively: every bf16 and every f16 bit
//! pattern as a source, and for f32 sources every fp8 value and every fp8
//! rounding midpoint times the scale, +- 12 ulps, plus random bit patterns
//! and specials (NaN, inf, zeros, subnormals, FLT_MAX). Scales cover the
//! AVX-512 quantiser's modes (see `xpu_src/cpu/cache.c`): powers of two,
//! short reciprocals with |1 - r s| < 2^-25 (0.01), short reciprocals
//! without it (1/448), full-mantissa scales, and scales outside its range
//! (subnormal, huge), which divide. Both fp8 formats, flash rows written
//! whole (per-tensor scale) and per head (per-head scales), head sizes with
//! and without a tail of < 64 elements, streaming and cached stores.
//! Tolerance: none (bit-exact).

mod common;

use half::{bf16, f16};
use xpu_ops::reference::cache as reference;
use xpu_ops::{DType, TensorView, TensorViewMut};

const H: usize = 2;

/// Every scale class of the quantiser.
fn scales() -> Vec<f32> {
    vec![
        1.0,
        0.25,
        2f32.powi(-20),
        2f32.powi(20),
        2f32.powi(-125),
        2f32.powi(123),
        2f32.powi(125),  // out of the multiply path's range: divides
        2f32.powi(-127), // subnormal scale: divides
        0.01,            // r = 100: exact mode
        0.1,
        1e-3,
        1.0 / 448.0, // r = 448, |1 - r s| > 2^-25: window mode
        1.0 / 7.0,
        0.013,
        0.3,
        3.0,
        5.123 / 448.0,
        f32::from_bits(0x3f7f_ffff),
        f32::from_bits(0x3f80_0001),
        1e-6,
        1e6,
        1e30,
        1e-30,
        1e-40,
        f32::MAX,
    ]
}

/// Values in `dtype` as bytes.
fn encode(vals: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => vals
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        DType::BF16 => vals
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        _ => unreachable!(),
    }
}

/// Every 16-bit pattern, as bytes.
fn all_u16() -> Vec<u8> {
    (0..=u16::MAX).flat_map(|v| v.to_le_bytes()).collect()
}

/// f32 sources for one scale: every finite fp8 value and rounding midpoint
/// of `format` times `scale`, +- 12 ulps, both signs; random bit patterns;
/// specials.
fn f32_sources(format: DType, scale: f32, rng: &mut common::Rng) -> Vec<f32> {
    let decode = |code: u8| -> f32 {
        let t = [code];
        TensorView::from_bytes(&t, format, &[1], None)
            .unwrap()
            .get_f32(&[0])
    };
    let mut v = Vec::new();
    for code in 0u8..0x7f {
        let (a, b) = (decode(code), decode(code + 1));
        if !a.is_finite() {
            continue;
        }
        let b = if b.is_finite() { b } else { a * 1.125 };
        for p in [a, (a + b) / 2.0] {
            let base = (p as f64 * scale as f64) as f32;
            for d in -12i32..=12 {
                let x = f32::from_bits(base.to_bits().wrapping_add_signed(d));
                v.push(x);
                v.push(-x);
            }
        }
    }
    v.extend((0..4000).map(|_| f32::from_bits(rng.next_u64() as u32)));
    v.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::MAX,
        -f32::MAX,
        1e-45,
        1e-40,
        -1e-38,
    ]);
    v
}

/// One `reshape_and_cache_flash` call through the reference or the op.
#[allow(clippy::too_many_arguments)]
fn flash_write(
    use_reference: bool,
    k: &TensorView,
    v: &TensorView,
    kc: &mut TensorViewMut,
    vc: &mut TensorViewMut,
    slots: &TensorView,
    kv: &str,
    k_scale: &TensorView,
    v_scale: &TensorView,
) {
    if use_reference {
        reference::reshape_and_cache_flash(
            k,
            v,
            kc,
            Some(vc),
            slots,
            kv,
            Some(k_scale),
            Some(v_scale),
        );
    } else {
        xpu_ops::reshape_and_cache_flash(
            k,
            v,
            kc,
            Some(vc),
            slots,
            kv,
            Some(k_scale),
            Some(v_scale),
        )
        .unwrap();
    }
}

/// One flash write of `src` (a multiple of H * d elements) into a cache of
/// exactly its size, slots in reverse order; returns (reference, op on each
/// tier) key and value cache bytes.
fn check(src: &[u8], src_dtype: DType, d: usize, kv: &str, k_scale: &[f32], what: &str) {
    let es = src_dtype.size();
    let n = src.len() / es;
    let t = n / (H * d);
    assert_eq!(t * H * d, n);
    let key = src;
    // Value: the same elements rotated, so both caches see every element.
    let mut value = src[(n / 2) * es..].to_vec();
    value.extend_from_slice(&src[..(n / 2) * es]);
    let v_scale: Vec<f32> = k_scale.iter().rev().copied().collect();
    let nb = t.div_ceil(16);
    let slots: Vec<i64> = (0..t as i64).rev().collect();
    let cache = if kv == "fp8_e5m2" {
        DType::F8E5M2
    } else {
        DType::U8
    };
    let run = |use_reference: bool| -> Vec<u8> {
        let mut kb = vec![0x5au8; nb * 16 * H * d];
        let mut vb = vec![0x5au8; nb * 16 * H * d];
        {
            let k = TensorView::from_bytes(key, src_dtype, &[t, H, d], None).unwrap();
            let v = TensorView::from_bytes(&value, src_dtype, &[t, H, d], None).unwrap();
            let sm = TensorView::new(&slots, &[t]).unwrap();
            let ks = TensorView::new(k_scale, &[k_scale.len()]).unwrap();
            let vs = TensorView::new(&v_scale, &[v_scale.len()]).unwrap();
            let shape = [nb, 16, H, d];
            let mut kc = TensorViewMut::from_bytes(&mut kb, cache, &shape, None).unwrap();
            let mut vc = TensorViewMut::from_bytes(&mut vb, cache, &shape, None).unwrap();
            flash_write(use_reference, &k, &v, &mut kc, &mut vc, &sm, kv, &ks, &vs);
        }
        kb.extend_from_slice(&vb);
        kb
    };
    let want = run(true);
    common::for_each_isa(|isa| {
        let got = common::with_threads(1, || xpu_ops::with_isa(isa, || run(false)).unwrap());
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            let (tensor, j) = if i < want.len() / 2 {
                ("key", i)
            } else {
                ("value", i - want.len() / 2)
            };
            panic!(
                "{what}: {src_dtype}->{kv} scales {k_scale:?} d {d} on {isa}: {tensor} cache byte {j} is {:#04x}, reference {:#04x}",
                got[i], want[i]
            );
        }
    });
}

/// Pads `src` (es-byte elements) with zeros to a multiple of H * d.
fn padded(src: &[u8], es: usize, d: usize) -> Vec<u8> {
    let row = H * d * es;
    let mut v = src.to_vec();
    v.resize(src.len().div_ceil(row) * row, 0);
    v
}

#[test]
fn every_bf16_and_f16_source_matches_reference() {
    let all = all_u16();
    for kv in ["fp8", "fp8_e5m2"] {
        for s in scales() {
            for src_dtype in [DType::BF16, DType::F16] {
                // d = 128: whole 64-element blocks, one row per token (per-tensor
                // scale), streamed (a call writes >= 32 KiB) ...
                check(&all, src_dtype, 128, kv, &[s], "every 16-bit pattern");
                // ... and in calls of 16 tokens (8 KiB: cached stores).
                for part in all.chunks(16 * H * 128 * 2) {
                    check(part, src_dtype, 128, kv, &[s], "16-token calls");
                }
            }
        }
        // Per-head scales (rows per head), and a 16-element tail per row.
        for (a, b) in [
            (0.01f32, 1.0f32),
            (0.013, 1.0 / 448.0),
            (2f32.powi(125), 0.3),
        ] {
            for src_dtype in [DType::BF16, DType::F16] {
                check(&all, src_dtype, 128, kv, &[a, b], "per-head scales");
                check(&padded(&all, 2, 80), src_dtype, 80, kv, &[a], "d = 80");
                check(
                    &padded(&all, 2, 80),
                    src_dtype,
                    80,
                    kv,
                    &[a, b],
                    "d = 80, per head",
                );
            }
        }
    }
}

#[test]
fn f32_sources_around_every_fp8_midpoint_match_reference() {
    let mut rng = common::Rng(77);
    for (kv, format) in [("fp8", DType::F8E4M3), ("fp8_e5m2", DType::F8E5M2)] {
        for s in scales() {
            let vals = f32_sources(format, s, &mut rng);
            let bytes = encode(&vals, DType::F32);
            check(
                &padded(&bytes, 4, 128),
                DType::F32,
                128,
                kv,
                &[s],
                "f32 near midpoints",
            );
            check(
                &padded(&bytes, 4, 72),
                DType::F32,
                72,
                kv,
                &[s, 0.3],
                "f32, d = 72, per head",
            );
            // The same values through the 16-bit formats (rounded): midpoints of bf16 / f16 data.
            for src_dtype in [DType::BF16, DType::F16] {
                let b = encode(&vals, src_dtype);
                check(
                    &padded(&b, 2, 128),
                    src_dtype,
                    128,
                    kv,
                    &[s],
                    "rounded midpoints",
                );
            }
        }
    }
}

/// Whole flash rows of bf16 sources converted a group of tokens at a time
/// (AVX2: one call per 16 tokens, key and value rows in turn when their
/// scales share the byte tables, else all keys, then all values), with
/// padding slots between the tokens: every bf16 pattern, key and value
/// scales equal and different (non-powers of two, many lanes on fp8
/// rounding ties), odd H, head sizes 16, 32 and 48 (rows of 48 and 96: the
/// 32- and 64-element steps and a tail), block sizes 1 and 16, both
/// fp8 formats; all tokens in one call (streamed), and calls of 16 tokens
/// (cached; at H x D = 48 below the byte tables' 1024 elements) and of 35
/// tokens from token 5 (cached, with tables).
#[test]
fn grouped_flash_rows_with_padding_match_reference() {
    let all = all_u16();
    for kv in ["fp8", "fp8_e5m2"] {
        let cache = if kv == "fp8" {
            DType::U8
        } else {
            DType::F8E5M2
        };
        for (h, d) in [(3usize, 16usize), (1, 48), (3, 32)] {
            let row = h * d;
            let mut key = all.clone();
            key.resize(all.len().div_ceil(row * 2) * row * 2, 0);
            let t = key.len() / (row * 2);
            // Value: the patterns in the opposite order.
            let value: Vec<u8> = key
                .chunks(2)
                .rev()
                .flat_map(|c| c.iter().copied())
                .collect();
            // Every fifth token is padding; the others take distinct slots.
            let slots: Vec<i64> = (0..t as i64)
                .map(|i| if i % 5 == 3 { -1 } else { t as i64 - 1 - i })
                .collect();
            for bs in [1usize, 16] {
                let nb = t.div_ceil(bs);
                for (ks, vs) in [(0.013f32, 0.013f32), (0.013, 1.0 / 448.0), (3.0, 0.1)] {
                    let run = |part: std::ops::Range<usize>, use_reference: bool| -> Vec<u8> {
                        let mut kb = vec![0x5au8; nb * bs * row];
                        let mut vb = vec![0x5au8; nb * bs * row];
                        let n = part.len();
                        let kbytes = &key[part.start * row * 2..part.end * row * 2];
                        let vbytes = &value[part.start * row * 2..part.end * row * 2];
                        let k =
                            TensorView::from_bytes(kbytes, DType::BF16, &[n, h, d], None).unwrap();
                        let v =
                            TensorView::from_bytes(vbytes, DType::BF16, &[n, h, d], None).unwrap();
                        let sm = TensorView::new(&slots[part], &[n]).unwrap();
                        let (ksv, vsv) = ([ks], [vs]);
                        let kst = TensorView::new(&ksv, &[1]).unwrap();
                        let vst = TensorView::new(&vsv, &[1]).unwrap();
                        let shape = [nb, bs, h, d];
                        {
                            let mut kc =
                                TensorViewMut::from_bytes(&mut kb, cache, &shape, None).unwrap();
                            let mut vc =
                                TensorViewMut::from_bytes(&mut vb, cache, &shape, None).unwrap();
                            flash_write(
                                use_reference,
                                &k,
                                &v,
                                &mut kc,
                                &mut vc,
                                &sm,
                                kv,
                                &kst,
                                &vst,
                            );
                        }
                        kb.extend_from_slice(&vb);
                        kb
                    };
                    for part in [0..t, 0..16.min(t), 5..t.min(40)] {
                        let want = run(part.clone(), true);
                        common::for_each_isa(|isa| {
                            let got = common::with_threads(1, || {
                                xpu_ops::with_isa(isa, || run(part.clone(), false)).unwrap()
                            });
                            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                                panic!(
                                    "{kv} h {h} d {d} bs {bs} scales {ks}/{vs} tokens {part:?} on {isa}: cache byte {i} is {:#04x}, reference {:#04x}",
                                    got[i], want[i]
                                );
                            }
                        });
                    }
                }
            }
        }
    }
}
