//! The KV-cache write kernel's fast paths against the reference, bit for bit,
//! on every ISA tier and with 1 and 2 threads: streaming stores (grid blocks
//! writing >= 32 KiB of whole-line rows), the fallback for caches that are
//! not line-aligned, the paged layout's runs of consecutive slots (staged and
//! transposed 16 tokens at a time; partial runs, runs cut by padding, block
//! sizes 8/16/32), and the fp8 power-of-two-scale multiply (vs. the general
//! divide), with special values (NaN, inf, zeros, subnormals, huge) in the
//! sources. Tolerance: none (copies and conversions are bit-exact, see
//! `xpu_ops::ops::cache`).

mod common;

use half::{bf16, f16};
use xpu_ops::bench::AlignedBuf;
use xpu_ops::reference::cache as reference;
use xpu_ops::{DType, TensorView, TensorViewMut};

const H: usize = 2;
const D: usize = 128;
const T: usize = 300;
/// Slots in every cache: 640 = 40 blocks of 16.
const SLOTS: usize = 640;

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
    block_size: usize,
    /// Slots in each cache.
    slots: usize,
}

fn shapes(s: &Setup) -> (Vec<usize>, Vec<usize>) {
    let x = 16 / s.cache.size();
    let (bs, nb) = (s.block_size, s.slots / s.block_size);
    match s.layout {
        Layout::Flash => (vec![nb, bs, H, D], vec![nb, bs, H, D]),
        Layout::Paged => (vec![nb, H, D / x, bs, x], vec![nb, H, D, bs]),
    }
}

/// The paged op (`use_reference` false) or its reference on the same
/// arguments, so a test writes them once for both arms.
#[allow(clippy::too_many_arguments)]
fn reshape_and_cache_either(
    use_reference: bool,
    key: &TensorView,
    value: &TensorView,
    key_cache: &mut TensorViewMut,
    value_cache: &mut TensorViewMut,
    slots: &TensorView,
    kv_cache_dtype: &str,
    k_scale: Option<&TensorView>,
    v_scale: Option<&TensorView>,
) {
    if use_reference {
        reference::reshape_and_cache(
            key,
            value,
            key_cache,
            value_cache,
            slots,
            kv_cache_dtype,
            k_scale,
            v_scale,
        );
    } else {
        xpu_ops::reshape_and_cache(
            key,
            value,
            key_cache,
            value_cache,
            slots,
            kv_cache_dtype,
            k_scale,
            v_scale,
        )
        .unwrap();
    }
}

/// Key and value caches of `bytes` each, `misalign` bytes into 64-byte aligned
/// buffers filled with 0x5a, written by `write`; returns both whole buffers'
/// bytes (key then value), so a write outside the caches shows too.
fn fresh_cache_bytes(
    cache: DType,
    kshape: &[usize],
    vshape: &[usize],
    bytes: usize,
    misalign: usize,
    write: impl FnOnce(&mut TensorViewMut, &mut TensorViewMut),
) -> Vec<u8> {
    let mut kb = AlignedBuf::new(bytes + 64, 64, 0x5a);
    let mut vb = AlignedBuf::new(bytes + 64, 64, 0x5a);
    {
        let range = misalign..misalign + bytes;
        let mut kc =
            TensorViewMut::from_bytes(&mut kb[range.clone()], cache, kshape, None).unwrap();
        let mut vc = TensorViewMut::from_bytes(&mut vb[range], cache, vshape, None).unwrap();
        write(&mut kc, &mut vc);
    }
    let mut out = kb.to_vec();
    out.extend_from_slice(&vb);
    out
}

/// `bytes` copied to `off` bytes past a 64-byte boundary (the copy starts at
/// `off` in the returned buffer): sources at a chosen line offset.
fn at_line_offset(bytes: &[u8], off: usize) -> AlignedBuf {
    let mut b = AlignedBuf::new(off + bytes.len(), 64, 0);
    b[off..].copy_from_slice(bytes);
    b
}

/// Runs the op (or the reference) into caches filled with 0x5a; returns the
/// key and value cache bytes.
fn run(s: &Setup, key: &[u8], value: &[u8], slots: &[i64], use_reference: bool) -> Vec<u8> {
    let bytes = s.slots * H * D * s.cache.size();
    let (ks, vs) = shapes(s);
    fresh_cache_bytes(s.cache, &ks, &vs, bytes, s.misalign, |kc, vc| {
        let t = slots.len();
        let k = TensorView::from_bytes(key, s.src, &[t, H, D], None).unwrap();
        let v = TensorView::from_bytes(value, s.src, &[t, H, D], None).unwrap();
        let sm = TensorView::new(slots, &[t]).unwrap();
        let kscale = TensorView::new(&s.k_scale, &[s.k_scale.len()]).unwrap();
        let vscale = TensorView::new(&s.v_scale, &[s.v_scale.len()]).unwrap();
        let scales = (Some(&kscale), Some(&vscale));
        match (s.layout, use_reference) {
            (Layout::Flash, false) => xpu_ops::reshape_and_cache_flash(
                &k,
                &v,
                kc,
                Some(vc),
                &sm,
                s.kv_cache_dtype,
                scales.0,
                scales.1,
            )
            .unwrap(),
            (Layout::Flash, true) => reference::reshape_and_cache_flash(
                &k,
                &v,
                kc,
                Some(vc),
                &sm,
                s.kv_cache_dtype,
                scales.0,
                scales.1,
            ),
            (Layout::Paged, r) => reshape_and_cache_either(
                r,
                &k,
                &v,
                kc,
                vc,
                &sm,
                s.kv_cache_dtype,
                scales.0,
                scales.1,
            ),
        }
    })
}

fn shuffled(n: usize, rng: &mut common::Rng) -> Vec<i64> {
    let mut v: Vec<i64> = (0..n as i64).collect();
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v
}

/// The first `t` slots of whole blocks of 16 taken in shuffled order, each
/// filled in order (prefill into freshly allocated blocks).
fn shuffled_block_slots(t: usize, slots_per_cache: usize, rng: &mut common::Rng) -> Vec<i64> {
    let mut slots: Vec<i64> = shuffled(slots_per_cache / 16, rng)
        .iter()
        .flat_map(|&b| (0..16).map(move |o| b * 16 + o))
        .collect();
    slots.truncate(t);
    slots
}

/// Every tier, with each thread count, writes exactly the bytes of
/// `run(true)` (the reference); a mismatch names the first differing byte.
fn assert_tiers_match_reference(
    run: impl Fn(bool) -> Vec<u8> + Sync,
    threads: &[usize],
    what: &str,
) {
    let want = run(true);
    common::for_each_isa(|isa| {
        for &n in threads {
            // The tier override is per thread: set it again on the pool's thread.
            let got = common::with_threads(n, || xpu_ops::with_isa(isa, || run(false)).unwrap());
            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!(
                    "{what} on {isa} with {n} threads: byte {i} is {:#x}, reference {:#x}",
                    got[i], want[i]
                );
            }
        }
    });
}

/// [`assert_tiers_match_reference`] for the op on a [`Setup`].
fn assert_every_tier_matches_reference(
    s: &Setup,
    key: &[u8],
    value: &[u8],
    slots: &[i64],
    threads: &[usize],
    what: &str,
) {
    assert_tiers_match_reference(|r| run(s, key, value, slots, r), threads, what);
}

/// Distinct random slots, one padding token.
fn random_slots(rng: &mut common::Rng) -> Vec<i64> {
    let mut slots = shuffled(SLOTS, rng);
    slots.truncate(T);
    slots[7] = -1;
    slots
}

/// Sequences filling shuffled blocks in order, as prefill does: some start
/// mid-block (a continued chunk), some end mid-block, a few tokens are padding.
fn prefill_slots(rng: &mut common::Rng, block_size: usize) -> Vec<i64> {
    let mut blocks = shuffled(SLOTS / block_size, rng).into_iter();
    let mut slots = Vec::new();
    for (i, len) in [1usize, 5, 16, 17, 40, 3, 64, 33, 121]
        .into_iter()
        .enumerate()
    {
        let mut pos = if i % 3 == 1 { 5 } else { 0 };
        let mut block = blocks.next().unwrap();
        for _ in 0..len {
            if pos == block_size {
                block = blocks.next().unwrap();
                pos = 0;
            }
            slots.push(block * block_size as i64 + pos as i64);
            pos += 1;
        }
    }
    slots.truncate(T);
    slots.resize(T, -1);
    slots[20] = -1;
    slots
}

#[test]
fn fast_paths_match_reference_on_every_tier() {
    let mut rng = common::Rng(11);
    let kvals = source_values(&mut rng);
    let vvals = source_values(&mut rng);
    for (block_size, prefill) in [(16, false), (16, true), (32, true), (8, true)] {
        let slots = if prefill {
            prefill_slots(&mut rng, block_size)
        } else {
            random_slots(&mut rng)
        };
        check_all(&kvals, &vvals, &slots, block_size);
    }
}

/// fp8 rows of big batches stream (from 32 KiB per grid block; once from
/// 1 MiB): 16384 tokens of 2 x 128 fp8 keys and values (8 MiB; 16 MiB of
/// bf16 sources, from which the AVX2 flash rows with one thread ask for the
/// next token's row), flash and paged (prefill-shaped slots), pow2, other
/// and per-head scales; and the same batch into bf16 caches (sources over
/// 1 MiB: the paged runs read them in place).
#[test]
fn fp8_streaming_matches_reference() {
    let (t, slots_per_cache) = (16384, 16384 + 512);
    let mut rng = common::Rng(23);
    let vals: Vec<f32> = (0..t * H * D).map(|_| rng.uniform() * 6.0).collect();
    let key = encode(&vals, DType::BF16);
    let value: Vec<u8> = key.iter().rev().copied().collect();
    // bf16 caches copy bits, the reference goes through f32 (quieting the
    // signalling NaNs the byte-reversed values hold): values for them.
    let value_f: Vec<f32> = vals.iter().rev().map(|v| v * 0.5 - 1.0).collect();
    let value_bf16 = encode(&value_f, DType::BF16);
    // 16 slots padding at the start.
    let mut slots = shuffled_block_slots(t, slots_per_cache, &mut rng);
    slots[..16].fill(-1);
    for layout in [Layout::Flash, Layout::Paged] {
        for (kv, cache, ks, vs) in [
            ("fp8", DType::U8, vec![1.0f32], vec![0.25f32]),
            ("fp8", DType::U8, vec![0.013], vec![0.3]),
            ("fp8", DType::U8, vec![0.013, 0.5], vec![0.3, 1.0 / 448.0]),
            ("auto", DType::BF16, vec![1.0], vec![1.0]),
        ] {
            let s = Setup {
                layout,
                src: DType::BF16,
                kv_cache_dtype: kv,
                cache,
                k_scale: ks,
                v_scale: vs,
                misalign: 0,
                block_size: 16,
                slots: slots_per_cache,
            };
            let what = format!("{layout:?} {kv} {t} tokens");
            let v = if kv == "auto" { &value_bf16 } else { &value };
            assert_every_tier_matches_reference(&s, &key, v, &slots, &[1, 2], &what);
        }
    }
}

fn check_all(kvals: &[f32], vvals: &[f32], slots: &[i64], block_size: usize) {
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
                            block_size,
                            slots: SLOTS,
                        };
                        let (key, value) = (encode(kvals, src), encode(vvals, src));
                        assert_every_tier_matches_reference(
                            &s,
                            &key,
                            &value,
                            slots,
                            &[1, 2],
                            &format!("{layout:?} bs {block_size} {src}->{kv_cache_dtype} scales {ks:?}/{vs:?} misalign {misalign}"),
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 2 * (1 + 2 + 3 * 4 + 4) * 2);
}

/// copy_blocks and swap_blocks stream when a call moves >= 1 MiB: check big
/// and small calls, aligned and misaligned caches, against the reference.
#[test]
fn block_copies_match_reference() {
    let mut rng = common::Rng(5);
    let (nb, block) = (200usize, [16usize, 2, 256]); // 8 KiB fp8 blocks
    let per_block: usize = block.iter().product();
    let shape = [nb, block[0], block[1], block[2]];
    let fill = |rng: &mut common::Rng| -> Vec<u8> {
        (0..nb * per_block + 64)
            .map(|_| rng.next_u64() as u8)
            .collect()
    };
    let blocks = shuffled(nb, &mut rng);
    for (pairs, misalign) in [(70usize, 0usize), (70, 3), (3, 0)] {
        let mapping: Vec<i64> = (0..pairs)
            .flat_map(|i| [blocks[i], blocks[pairs + i]])
            .collect();
        let bm = TensorView::new(&mapping, &[pairs, 2]).unwrap();
        let init: Vec<Vec<u8>> = (0..4).map(|_| fill(&mut rng)).collect();
        let range = misalign..misalign + nb * per_block;
        let run = |use_reference: bool| {
            let mut bufs = init.clone();
            let (a, b) = bufs.split_at_mut(2);
            let (k0, k1) = a.split_at_mut(1);
            let (v0, v1) = b.split_at_mut(1);
            fn view<'a>(buf: &'a mut [u8], shape: &[usize]) -> TensorViewMut<'a> {
                TensorViewMut::from_bytes(buf, DType::U8, shape, None).unwrap()
            }
            let r = range.clone();
            let mut ks = vec![
                view(&mut k0[0][r.clone()], &shape),
                view(&mut k1[0][r.clone()], &shape),
            ];
            let mut vs = vec![
                view(&mut v0[0][r.clone()], &shape),
                view(&mut v1[0][r], &shape),
            ];
            if use_reference {
                reference::copy_blocks(&mut ks, &mut vs, &bm);
            } else {
                xpu_ops::copy_blocks(&mut ks, &mut vs, &bm).unwrap();
            }
            drop((ks, vs));
            bufs
        };
        let want = run(true);
        for threads in [1, 2] {
            let got = common::with_threads(threads, || run(false));
            assert!(
                got == want,
                "copy_blocks: {pairs} pairs, misalign {misalign}, {threads} threads"
            );
        }
        // swap_blocks: from one cache into another.
        let swap = |use_reference: bool| {
            let mut dst = init[1].clone();
            let src =
                TensorView::from_bytes(&init[0][range.clone()], DType::U8, &shape, None).unwrap();
            let mut d = TensorViewMut::from_bytes(&mut dst[range.clone()], DType::U8, &shape, None)
                .unwrap();
            if use_reference {
                reference::swap_blocks(&src, &mut d, &bm);
            } else {
                xpu_ops::swap_blocks(&src, &mut d, &bm).unwrap();
            }
            dst
        };
        assert!(
            swap(false) == swap(true),
            "swap_blocks: {pairs} pairs, misalign {misalign}"
        );
    }
}

/// Key and value rows converted in one pass with different exact scales:
/// each keeps its own bound of the normal fp8 range (bf16 sources whose 64
/// lanes all quantise to normal codes skip the subnormal term; the bound
/// depends on the scale). Keys lie in [1, 4) x the smallest normal code x
/// k_scale, so whole key blocks take that branch, while values divided by a
/// larger v_scale fall partly in the subnormal codes. 512 tokens (256 KiB)
/// stream: flash rows and paged prefill runs.
#[test]
fn fp8_key_and_value_scales_keep_their_own_normal_bounds() {
    let (t, slots_per_cache) = (512, 1024);
    let mut rng = common::Rng(29);
    let slots = shuffled_block_slots(t, slots_per_cache, &mut rng);
    for layout in [Layout::Flash, Layout::Paged] {
        for (kv_cache_dtype, cache, min_normal) in [
            ("fp8", DType::U8, 2f32.powi(-6)),
            ("fp8_e5m2", DType::F8E5M2, 2f32.powi(-14)),
        ] {
            for (ks, vs) in [(0.5f32, 1.0f32), (0.25, 2.0), (1.0, 0.5)] {
                let vals: Vec<f32> = (0..t * H * D)
                    .map(|i| {
                        let m = min_normal * ks * 4f32.powf(0.5 + 0.5 * rng.uniform());
                        if i % 3 == 0 {
                            -m
                        } else {
                            m
                        }
                    })
                    .collect();
                let key = encode(&vals, DType::BF16);
                let value = key.clone();
                let s = Setup {
                    layout,
                    src: DType::BF16,
                    kv_cache_dtype,
                    cache,
                    k_scale: vec![ks],
                    v_scale: vec![vs],
                    misalign: 0,
                    block_size: 16,
                    slots: slots_per_cache,
                };
                let what = format!("{layout:?} {kv_cache_dtype} k_scale {ks} v_scale {vs}");
                assert_every_tier_matches_reference(&s, &key, &value, &slots, &[1], &what);
            }
        }
    }
}

/// Paged prefill runs whose source rows lie a multiple of 4 KiB apart (H * D
/// = 2048 bf16, or the token stride of a fused qkv buffer), where the AVX2
/// runs read each source line once: key chunks four at a time from two rows,
/// value rows transposed two 16-element halves per line. Same-dtype caches
/// (bf16, f16, f32 with x = 4), head sizes with a tail (40: five key chunks
/// and eight value elements past the pairs; 44 f32: eleven chunks), block
/// sizes 16/32/8, prefill slots with partial, odd and padded runs, aligned
/// (streamed) and misaligned caches, 1 and 2 threads, every tier; rows 4, 2
/// and 1 KiB apart (the AVX2 line-at-a-time forms apply at every stride;
/// rows not a multiple of 4 KiB apart also ask for each row's line two ahead).
/// Sources 16, 32 and 48 bytes past a line: with rows 4 KiB apart, AVX2 takes
/// the key chunks and value elements before the first line boundary and
/// after the last whole line apart (D 72, 128, 256: each lead and tail form).
#[test]
fn paged_runs_with_rows_4kib_apart_match_reference() {
    let t = T;
    let mut rng = common::Rng(31);
    let cases: [(DType, &str, usize, usize, usize); 6] = [
        (DType::BF16, "auto", 8, 256, 2048),
        (DType::BF16, "auto", 3, 72, 2048),
        (DType::BF16, "bfloat16", 2, 40, 2048),
        (DType::F16, "float16", 2, 128, 4096),
        (DType::F32, "auto", 2, 44, 1024),
        (DType::BF16, "auto", 4, 256, 1024),
    ];
    for (src, kv_cache_dtype, heads, d, tok_stride) in cases {
        let vals: Vec<f32> = (0..t * tok_stride)
            .map(|i| {
                if i % 41 == 0 {
                    [0.0, -0.0, f32::INFINITY, -1e30, 1e-40][(i / 41) % 5]
                } else {
                    rng.uniform() * 8.0 - 4.0
                }
            })
            .collect();
        let key = encode(&vals, src);
        let value: Vec<u8> = encode(&vals.iter().map(|v| v * 0.5 + 1.0).collect::<Vec<_>>(), src);
        let es = src.size();
        let x = 16 / es;
        for block_size in [16usize, 32, 8] {
            let slots = prefill_slots(&mut rng, block_size);
            let nb = SLOTS / block_size;
            let kshape = [nb, heads, d / x, block_size, x];
            let vshape = [nb, heads, d, block_size];
            let bytes = SLOTS * heads * d * es;
            // (cache misalignment, source bytes past a 64-byte boundary): the
            // AVX2 forms for source rows 4 KiB apart and 16-48 bytes off a line.
            for (misalign, src_off) in [(0usize, 0usize), (16, 0), (0, 16), (16, 48), (0, 32)] {
                let (kbuf, vbuf) = (
                    at_line_offset(&key, src_off),
                    at_line_offset(&value, src_off),
                );
                let (key, value) = (&kbuf[src_off..], &vbuf[src_off..]);
                let run = |use_reference: bool| {
                    fresh_cache_bytes(src, &kshape, &vshape, bytes, misalign, |kc, vc| {
                        let strides = [tok_stride, d, 1];
                        let len = ((t - 1) * tok_stride + heads * d) * es;
                        let k = TensorView::from_bytes(
                            &key[..len],
                            src,
                            &[t, heads, d],
                            Some(&strides),
                        )
                        .unwrap();
                        let v = TensorView::from_bytes(
                            &value[..len],
                            src,
                            &[t, heads, d],
                            Some(&strides),
                        )
                        .unwrap();
                        let sm = TensorView::new(&slots, &[t]).unwrap();
                        reshape_and_cache_either(
                            use_reference,
                            &k,
                            &v,
                            kc,
                            vc,
                            &sm,
                            kv_cache_dtype,
                            None,
                            None,
                        );
                    })
                };
                let what = format!(
                    "{src}->{kv_cache_dtype} H {heads} D {d} token stride {tok_stride} bs {block_size} \
                     misalign {misalign} source {src_off} bytes off a line"
                );
                assert_tiers_match_reference(run, &[1, 2], &what);
            }
        }
    }
}

/// bf16 -> fp8 paged runs stage whole token rows on AVX2 (up to 2048 fp8
/// bytes a row, packed 64-byte aligned) and ask for the next token's row
/// while a row converts: rows of exactly 2048 (H 8 x D 256), two head groups
/// (H 16 x D 256), a head wider than a staged row (D 2080: 2048 + a 32-element
/// group), per-head scales over an odd number of heads with D 48 (rows
/// padded to 64 bytes), and heads apart in the source (fused-qkv head
/// stride, one staging call per head); e4m3 and e5m2, special values (the
/// byte tables' exact-path lanes), block sizes 16/32/8, prefill slots with
/// partial, odd and padded runs, aligned (streamed) and misaligned caches,
/// 1 and 2 threads, every tier.
#[test]
fn paged_fp8_runs_stage_whole_token_rows_match_reference() {
    let t = T;
    let mut rng = common::Rng(47);
    type Case = (
        usize,
        usize,
        usize,
        usize,
        &'static str,
        DType,
        Vec<f32>,
        Vec<f32>,
    );
    let cases: [Case; 5] = [
        (8, 256, 2048, 256, "fp8", DType::U8, vec![0.013], vec![0.3]),
        (
            16,
            256,
            4096,
            256,
            "fp8_e5m2",
            DType::F8E5M2,
            vec![0.5],
            vec![0.013],
        ),
        (
            1,
            2080,
            2080,
            2080,
            "fp8",
            DType::U8,
            vec![0.013],
            vec![0.013],
        ),
        (
            3,
            48,
            200,
            48,
            "fp8",
            DType::U8,
            vec![0.013, 0.5, 3.0],
            vec![0.3, 1.0, 0.02],
        ),
        (4, 128, 1536, 384, "fp8", DType::U8, vec![0.013], vec![0.3]),
    ];
    let specials = [
        f32::NAN,
        f32::INFINITY,
        -0.0,
        1e-40,
        -7e4,
        1e-3,
        448.0 * 0.013,
    ];
    for (heads, d, tok_stride, head_stride, kv_cache_dtype, cache, k_scale, v_scale) in cases {
        let n = (t - 1) * tok_stride + (heads - 1) * head_stride + d;
        let vals: Vec<f32> = (0..n)
            .map(|i| {
                if i % 29 == 0 {
                    specials[(i / 29) % specials.len()]
                } else {
                    rng.uniform() * 8.0 - 4.0
                }
            })
            .collect();
        let key = encode(&vals, DType::BF16);
        let value = encode(
            &vals.iter().map(|v| v * 0.25 + 0.5).collect::<Vec<_>>(),
            DType::BF16,
        );
        for block_size in [16usize, 32, 8] {
            let slots = prefill_slots(&mut rng, block_size);
            let nb = SLOTS / block_size;
            let kshape = [nb, heads, d / 16, block_size, 16];
            let vshape = [nb, heads, d, block_size];
            let bytes = SLOTS * heads * d;
            for misalign in [0usize, 16] {
                let run = |use_reference: bool| {
                    fresh_cache_bytes(cache, &kshape, &vshape, bytes, misalign, |kc, vc| {
                        let strides = [tok_stride, head_stride, 1];
                        let src = DType::BF16;
                        let k = TensorView::from_bytes(&key, src, &[t, heads, d], Some(&strides))
                            .unwrap();
                        let v = TensorView::from_bytes(&value, src, &[t, heads, d], Some(&strides))
                            .unwrap();
                        let sm = TensorView::new(&slots, &[t]).unwrap();
                        let ks = TensorView::new(&k_scale, &[k_scale.len()]).unwrap();
                        let vs = TensorView::new(&v_scale, &[v_scale.len()]).unwrap();
                        reshape_and_cache_either(
                            use_reference,
                            &k,
                            &v,
                            kc,
                            vc,
                            &sm,
                            kv_cache_dtype,
                            Some(&ks),
                            Some(&vs),
                        );
                    })
                };
                let what = format!(
                    "bf16->{kv_cache_dtype} H {heads} D {d} strides {tok_stride}/{head_stride} \
                     bs {block_size} misalign {misalign}"
                );
                assert_tiers_match_reference(run, &[1, 2], &what);
            }
        }
    }
}
