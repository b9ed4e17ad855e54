//! The KV-cache write kernel's fast paths against the reference, bit for bit,
//! on every ISA tier: streaming stores (grid blocks writing >= 32 KiB of
//! whole-line rows), the fallback for rows that are not line-aligned, and the
//! fp8 power-of-two-scale multiply (vs. the general divide), with special
//! values (NaN, inf, zeros, subnormals, huge) in the sources. Tolerance: none
//! (copies and conversions are bit-exact, see `xpu_ops::ops::cache`).

mod common;

use half::{bf16, f16};
use xpu_ops::bench::AlignedBuf;
use xpu_ops::reference::cache as reference;
use xpu_ops::{DType, TensorView, TensorViewMut};

const H: usize = 2;
const D: usize = 128;
const BS: usize = 16;
const NB: usize = 40;
const T: usize = 300;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    Flash,
    Paged,
}

fn source_values(rng: &mut common::Rng) -> Vec<f32> {
    let specials = [
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e-40,
        -3e-39,
        1e30,
        -7e4,
        448.0,
        464.0,
        0.013 * 448.0,
        2f32.powi(-9),
        2f32.powi(-10),
    ];
    (0..T * H * D)
        .map(|i| {
            if i % 37 == 0 {
                specials[(i / 37) % specials.len()]
            } else {
                rng.uniform() * 8.0
            }
        })
        .collect()
}

/// Key and value data in `dtype`, as bytes.
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

struct Setup {
    layout: Layout,
    src: DType,
    kv_cache_dtype: &'static str,
    cache: DType,
    k_scale: Vec<f32>,
    v_scale: Vec<f32>,
    /// Byte offset of the caches from a 64-byte boundary.
    misalign: usize,
}

fn shapes(s: &Setup) -> (Vec<usize>, Vec<usize>) {
    let x = 16 / s.cache.size();
    match s.layout {
        Layout::Flash => (vec![NB, BS, H, D], vec![NB, BS, H, D]),
        Layout::Paged => (vec![NB, H, D / x, BS, x], vec![NB, H, D, BS]),
    }
}

/// Runs the op (or the reference) into caches filled with 0x5a; returns the
/// key and value cache bytes.
fn run(s: &Setup, key: &[u8], value: &[u8], slots: &[i64], use_reference: bool) -> Vec<u8> {
    let bytes = NB * BS * H * D * s.cache.size();
    let mut kb = AlignedBuf::new(bytes + 64, 64, 0x5a);
    let mut vb = AlignedBuf::new(bytes + 64, 64, 0x5a);
    let (ks, vs) = shapes(s);
    {
        let k = TensorView::from_bytes(key, s.src, &[T, H, D], None).unwrap();
        let v = TensorView::from_bytes(value, s.src, &[T, H, D], None).unwrap();
        let sm = TensorView::new(slots, &[T]).unwrap();
        let kscale = TensorView::new(&s.k_scale, &[s.k_scale.len()]).unwrap();
        let vscale = TensorView::new(&s.v_scale, &[s.v_scale.len()]).unwrap();
        let range = s.misalign..s.misalign + bytes;
        let mut kc =
            TensorViewMut::from_bytes(&mut kb.as_mut_slice()[range.clone()], s.cache, &ks, None)
                .unwrap();
        let mut vc =
            TensorViewMut::from_bytes(&mut vb.as_mut_slice()[range], s.cache, &vs, None).unwrap();
        let scales = (Some(&kscale), Some(&vscale));
        match (s.layout, use_reference) {
            (Layout::Flash, false) => xpu_ops::reshape_and_cache_flash(
                &k,
                &v,
                &mut kc,
                Some(&mut vc),
                &sm,
                s.kv_cache_dtype,
                scales.0,
                scales.1,
            )
            .unwrap(),
            (Layout::Flash, true) => reference::reshape_and_cache_flash(
                &k,
                &v,
                &mut kc,
                Some(&mut vc),
                &sm,
                s.kv_cache_dtype,
                scales.0,
                scales.1,
            ),
            (Layout::Paged, false) => xpu_ops::reshape_and_cache(
                &k,
                &v,
                &mut kc,
                &mut vc,
                &sm,
                s.kv_cache_dtype,
                scales.0,
                scales.1,
            )
            .unwrap(),
            (Layout::Paged, true) => reference::reshape_and_cache(
                &k,
                &v,
                &mut kc,
                &mut vc,
                &sm,
                s.kv_cache_dtype,
                scales.0,
                scales.1,
            ),
        }
    }
    let mut out = kb.as_slice().to_vec();
    out.extend_from_slice(vb.as_slice());
    out
}

#[test]
fn fast_paths_match_reference_on_every_tier() {
    let mut rng = common::Rng(11);
    let kvals = source_values(&mut rng);
    let vvals = source_values(&mut rng);
    let mut slots: Vec<i64> = (0..(NB * BS) as i64).collect();
    for i in (1..slots.len()).rev() {
        slots.swap(i, rng.below(i as u64 + 1) as usize);
    }
    slots.truncate(T);
    slots[7] = -1; // padding

    let caches: [(&str, DType, &[DType]); 4] = [
        ("auto", DType::F32, &[DType::F32]),
        ("bfloat16", DType::BF16, &[DType::F32, DType::BF16]),
        ("fp8", DType::U8, &[DType::F32, DType::F16, DType::BF16]),
        ("fp8_e5m2", DType::F8E5M2, &[DType::BF16]),
    ];
    // Power-of-two scales take the multiply path, others divide.
    let scales: [(Vec<f32>, Vec<f32>); 4] = [
        (vec![1.0], vec![1.0]),
        (vec![0.25, 4.0], vec![2f32.powi(-20), 0.5]),
        (vec![0.013], vec![3.0]),
        (vec![0.5, 0.3], vec![1.0, 1e-3]),
    ];
    let mut checked = 0;
    for layout in [Layout::Flash, Layout::Paged] {
        for (kv_cache_dtype, cache, srcs) in caches {
            for &src in srcs {
                let fp8 = kv_cache_dtype.starts_with("fp8");
                for (ks, vs) in scales.iter().take(if fp8 { 4 } else { 1 }) {
                    for misalign in [0, 16] {
                        let s = Setup {
                            layout,
                            src,
                            kv_cache_dtype,
                            cache,
                            k_scale: ks.clone(),
                            v_scale: vs.clone(),
                            misalign,
                        };
                        let (key, value) = (encode(&kvals, src), encode(&vvals, src));
                        let want = run(&s, &key, &value, &slots, true);
                        common::for_each_isa(|isa| {
                            for threads in [1, 2] {
                                // The tier override is per thread: set it again on the pool's thread.
                                let got = common::with_threads(threads, || {
                                    xpu_ops::with_isa(isa, || run(&s, &key, &value, &slots, false))
                                        .unwrap()
                                });
                                if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                                    panic!(
                                        "{layout:?} {src}->{kv_cache_dtype} scales {ks:?}/{vs:?} misalign {misalign} on {isa} with {threads} threads: byte {i} is {:#x}, reference {:#x}",
                                        got[i], want[i]
                                    );
                                }
                            }
                        });
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 2 * (1 + 2 + 3 * 4 + 4) * 2);
}
