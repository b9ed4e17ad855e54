//! KV-cache ops against the reference: bit-exact on every ISA tier, every
//! source dtype and kv_cache_dtype, both layouts (and the HND view), padding
//! slots, fused-qkv token strides, per-tensor and per-head fp8 scales; bad
//! input leaves the caches untouched; results do not depend on thread count.

mod common;

use common::{for_each_isa, with_threads, Rng};
use proptest::prelude::*;
use xpu_ops::dtype::store_f32;
use xpu_ops::reference::cache as reference;
use xpu_ops::{DType, Status, TensorView, TensorViewMut};

const SOURCE_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const CACHE_DTYPES: [&str; 6] = ["auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"];

/// How source values are drawn.
#[derive(Debug, Clone, Copy)]
enum Values {
    /// Uniform in [-mag, mag).
    Uniform(f32),
    /// Exact midpoints between neighbouring fp8 e4m3 values (rounding ties at scale 1).
    Fp8Ties,
    /// Zeros, signed zeros, subnormals, huge values, infinities.
    Specials,
}

fn draw(rng: &mut Rng, values: Values) -> f32 {
    match values {
        Values::Uniform(mag) => rng.uniform() * mag,
        Values::Fp8Ties => {
            let b = rng.below(0x7e) as u8;
            let (lo, hi) = (xpu_ops::F8E4M3(b).to_f32(), xpu_ops::F8E4M3(b + 1).to_f32());
            let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
            sign * (lo + hi) / 2.0
        }
        Values::Specials => {
            const S: [f32; 10] = [
                0.0,
                -0.0,
                1e-40,
                -3e-39,
                1e-8,
                6e4,
                -7e4,
                1e30,
                f32::INFINITY,
                f32::NEG_INFINITY,
            ];
            S[rng.below(S.len() as u64) as usize]
        }
    }
}

/// Bytes of `n` values of `dtype`.
fn values_bytes(rng: &mut Rng, n: usize, dtype: DType, values: Values) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * dtype.size());
    for _ in 0..n {
        let bits = store_f32(draw(rng, values), dtype);
        out.extend_from_slice(&bits.to_le_bytes()[..dtype.size()]);
    }
    out
}

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// Distinct slots in `0..num_slots` (favouring block edges), with padding (-1) mixed in.
fn slots(rng: &mut Rng, num_tokens: usize, num_slots: usize, block_size: usize) -> Vec<i64> {
    let mut free: Vec<i64> = (0..num_slots as i64).collect();
    let mut out = Vec::with_capacity(num_tokens);
    for _ in 0..num_tokens {
        if free.is_empty() || rng.below(5) == 0 {
            out.push(-1);
            continue;
        }
        let pick = if rng.below(2) == 0 {
            // A block edge: offset 0 or block_size - 1 of some block, if still free.
            let b = rng.below((num_slots / block_size) as u64) as i64;
            let edge = b * block_size as i64
                + if rng.below(2) == 0 {
                    0
                } else {
                    block_size as i64 - 1
                };
            free.iter()
                .position(|&s| s == edge)
                .unwrap_or(rng.below(free.len() as u64) as usize)
        } else {
            rng.below(free.len() as u64) as usize
        };
        out.push(free.swap_remove(pick));
    }
    out
}

fn stored_dtype(kv: &str, src: DType) -> DType {
    match kv {
        "auto" => src,
        "float16" => DType::F16,
        "bfloat16" => DType::BF16,
        "fp8_e5m2" => DType::F8E5M2,
        _ => DType::F8E4M3,
    }
}

/// A positive scale; powers of two keep the fp8 rounding ties exact.
fn scale_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    const S: [f32; 6] = [1.0, 0.5, 4.0, 0.013, 3.7, 1e-3];
    (0..n)
        .map(|_| S[rng.below(S.len() as u64) as usize])
        .collect()
}

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    num_tokens: usize,
    extra_rows: usize,
    heads: usize,
    head_size: usize,
    block_size: usize,
    num_blocks: usize,
    src: DType,
    kv: &'static str,
    /// fp8 caches as typed fp8 tensors instead of uint8.
    typed_fp8: bool,
    per_head_scale: bool,
    /// key/value are views into one fused [tokens, 3, heads, head_size] buffer.
    fused_qkv: bool,
    /// Flash caches as the permuted HND view.
    hnd: bool,
    values: Values,
}

fn case_strategy(max_head: usize) -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        0usize..40,
        0usize..3,
        1usize..4,
        prop_oneof![Just(16usize), Just(32), Just(64), Just(128), Just(max_head)],
        prop_oneof![Just(1usize), Just(8), Just(16), Just(32)],
        1usize..5,
        (0usize..3, 0usize..6, any::<bool>(), any::<bool>()),
        (any::<bool>(), any::<bool>(), 0u8..4),
    )
        .prop_map(
            |(seed, t, extra, h, d, bs, nb, (si, ki, typed, per_head), (fused, hnd, vmode))| Case {
                seed,
                num_tokens: t,
                extra_rows: extra,
                heads: h,
                head_size: d,
                block_size: bs,
                num_blocks: nb,
                src: SOURCE_DTYPES[si],
                kv: CACHE_DTYPES[ki],
                typed_fp8: typed,
                per_head_scale: per_head,
                fused_qkv: fused,
                hnd,
                values: match vmode {
                    0 => Values::Uniform(2.0),
                    1 => Values::Uniform(600.0),
                    2 => Values::Fp8Ties,
                    _ => Values::Specials,
                },
            },
        )
}

struct Inputs {
    qkv: Vec<u8>,
    slots: Vec<i64>,
    k_scale: Vec<f32>,
    v_scale: Vec<f32>,
    stored: DType,
    cache_dtype: DType,
}

impl Case {
    fn inputs(&self) -> Inputs {
        let mut rng = Rng(self.seed);
        let rows = self.num_tokens + self.extra_rows;
        let qkv = values_bytes(
            &mut rng,
            rows * 3 * self.heads * self.head_size,
            self.src,
            self.values,
        );
        let slots = slots(
            &mut rng,
            self.num_tokens,
            self.num_blocks * self.block_size,
            self.block_size,
        );
        let n_scale = if self.per_head_scale { self.heads } else { 1 };
        let stored = stored_dtype(self.kv, self.src);
        let cache_dtype = if stored.is_fp8() && !self.typed_fp8 {
            DType::U8
        } else {
            stored
        };
        Inputs {
            qkv,
            slots,
            k_scale: scale_values(&mut rng, n_scale),
            v_scale: scale_values(&mut rng, n_scale),
            stored,
            cache_dtype,
        }
    }

    /// key and value views: either two halves of the fused buffer or, with
    /// `fused_qkv`, strided views into [rows, 3, H, D].
    fn kv_views<'a>(&self, inp: &'a Inputs) -> (TensorView<'a>, TensorView<'a>) {
        let (rows, h, d) = (
            self.num_tokens + self.extra_rows,
            self.heads,
            self.head_size,
        );
        let es = self.src.size();
        if self.fused_qkv {
            let strides = [3 * h * d, d, 1];
            let at = |part: usize| &inp.qkv[(part * h * d * es).min(inp.qkv.len())..];
            let k = TensorView::from_bytes(at(1), self.src, &[rows, h, d], Some(&strides));
            let v = TensorView::from_bytes(at(2), self.src, &[rows, h, d], Some(&strides));
            (k.unwrap(), v.unwrap())
        } else {
            let half = rows * h * d * es;
            let k =
                TensorView::from_bytes(&inp.qkv[..half], self.src, &[rows, h, d], None).unwrap();
            let v = TensorView::from_bytes(&inp.qkv[half..2 * half], self.src, &[rows, h, d], None)
                .unwrap();
            (k, v)
        }
    }

    fn flash_shape_strides(&self) -> ([usize; 4], [usize; 4]) {
        let (nb, bs, h, d) = (self.num_blocks, self.block_size, self.heads, self.head_size);
        if self.hnd {
            // Memory [nb, h, bs, d], seen as [nb, bs, h, d].
            ([nb, bs, h, d], [h * bs * d, d, bs * d, 1])
        } else {
            ([nb, bs, h, d], [bs * h * d, h * d, d, 1])
        }
    }
}

type Cache = Vec<u8>;

/// Runs the flash op through the launcher or the reference on caches
/// pre-filled with the same random bytes. `alias` writes both into one cache.
fn run_flash(case: &Case, alias: bool, use_reference: bool) -> (Status, Cache, Cache) {
    let inp = case.inputs();
    let (key, value) = case.kv_views(&inp);
    let (shape, strides) = case.flash_shape_strides();
    let bytes = shape.iter().product::<usize>() * inp.cache_dtype.size();
    let mut rng = Rng(case.seed ^ 0x5eed);
    let (mut kc, mut vc) = (random_bytes(&mut rng, bytes), random_bytes(&mut rng, bytes));
    let slot_t = TensorView::new(&inp.slots, &[inp.slots.len()]).unwrap();
    let scale_shape = [inp.k_scale.len()];
    let ks = TensorView::new(&inp.k_scale, &scale_shape).unwrap();
    let vs = TensorView::new(&inp.v_scale, &scale_shape).unwrap();
    let mut kv =
        TensorViewMut::from_bytes(&mut kc, inp.cache_dtype, &shape, Some(&strides)).unwrap();
    let mut vv =
        TensorViewMut::from_bytes(&mut vc, inp.cache_dtype, &shape, Some(&strides)).unwrap();
    let vopt = if alias { None } else { Some(&mut vv) };
    let status = if use_reference {
        reference::reshape_and_cache_flash(
            &key,
            &value,
            &mut kv,
            vopt,
            &slot_t,
            case.kv,
            Some(&ks),
            Some(&vs),
        );
        Status::Ok
    } else {
        match xpu_ops::reshape_and_cache_flash(
            &key,
            &value,
            &mut kv,
            vopt,
            &slot_t,
            case.kv,
            Some(&ks),
            Some(&vs),
        ) {
            Ok(()) => Status::Ok,
            Err(e) => e.status,
        }
    };
    (status, kc, vc)
}

fn run_paged(case: &Case, use_reference: bool) -> (Status, Cache, Cache) {
    let inp = case.inputs();
    let (key, value) = case.kv_views(&inp);
    let (nb, bs, h, d) = (case.num_blocks, case.block_size, case.heads, case.head_size);
    let x = 16 / inp.stored.size();
    let bytes = nb * h * d * bs * inp.cache_dtype.size();
    let mut rng = Rng(case.seed ^ 0x5eed);
    let (mut kc, mut vc) = (random_bytes(&mut rng, bytes), random_bytes(&mut rng, bytes));
    let slot_t = TensorView::new(&inp.slots, &[inp.slots.len()]).unwrap();
    let scale_shape = [inp.k_scale.len()];
    let ks = TensorView::new(&inp.k_scale, &scale_shape).unwrap();
    let vs = TensorView::new(&inp.v_scale, &scale_shape).unwrap();
    let mut kv =
        TensorViewMut::from_bytes(&mut kc, inp.cache_dtype, &[nb, h, d / x, bs, x], None).unwrap();
    let mut vv =
        TensorViewMut::from_bytes(&mut vc, inp.cache_dtype, &[nb, h, d, bs], None).unwrap();
    let status = if use_reference {
        reference::reshape_and_cache(
            &key,
            &value,
            &mut kv,
            &mut vv,
            &slot_t,
            case.kv,
            Some(&ks),
            Some(&vs),
        );
        Status::Ok
    } else {
        match xpu_ops::reshape_and_cache(
            &key,
            &value,
            &mut kv,
            &mut vv,
            &slot_t,
            case.kv,
            Some(&ks),
            Some(&vs),
        ) {
            Ok(()) => Status::Ok,
            Err(e) => e.status,
        }
    };
    (status, kc, vc)
}

/// Index and values of the first differing byte, for a readable failure.
fn first_diff(a: &[u8], b: &[u8]) -> Option<(usize, u8, u8)> {
    a.iter()
        .zip(b)
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| (i, *x, *y))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn flash_matches_reference_on_every_tier(case in case_strategy(512), alias in any::<bool>()) {
        let (_, want_k, want_v) = run_flash(&case, alias, true);
        for_each_isa(|isa| {
            let (status, k, v) = run_flash(&case, alias, false);
            assert_eq!(status, Status::Ok, "{isa}: {case:?}");
            assert_eq!(first_diff(&k, &want_k), None, "{isa}: key cache differs (byte, got, want) {case:?}");
            assert_eq!(first_diff(&v, &want_v), None, "{isa}: value cache differs {case:?}");
        });
    }

    #[test]
    fn paged_matches_reference_on_every_tier(case in case_strategy(256)) {
        let (_, want_k, want_v) = run_paged(&case, true);
        for_each_isa(|isa| {
            let (status, k, v) = run_paged(&case, false);
            assert_eq!(status, Status::Ok, "{isa}: {case:?}");
            assert_eq!(first_diff(&k, &want_k), None, "{isa}: key cache differs {case:?}");
            assert_eq!(first_diff(&v, &want_v), None, "{isa}: value cache differs {case:?}");
        });
    }
}

/// A large flash write (enough tokens to fan out over the grid) gives the
/// same bytes on 1, 2 and 3 threads.
#[test]
fn results_do_not_depend_on_thread_count() {
    let case = Case {
        seed: 7,
        num_tokens: 3000,
        extra_rows: 0,
        heads: 4,
        head_size: 128,
        block_size: 16,
        num_blocks: 200,
        src: DType::BF16,
        kv: "fp8",
        typed_fp8: false,
        per_head_scale: true,
        fused_qkv: true,
        hnd: false,
        values: Values::Uniform(100.0),
    };
    let one = with_threads(1, || run_flash(&case, false, false));
    assert_eq!(one.0, Status::Ok);
    for n in [2, 3] {
        let many = with_threads(n, || run_flash(&case, false, false));
        assert!(
            one.1 == many.1 && one.2 == many.2,
            "{n} threads differ from 1"
        );
    }
    let paged = Case { kv: "auto", ..case };
    let one = with_threads(1, || run_paged(&paged, false));
    let three = with_threads(3, || run_paged(&paged, false));
    assert!(one.0 == Status::Ok && one.1 == three.1 && one.2 == three.2);
}

/// Every value of the fp8 range and every rounding tie through the kernels'
/// vector and scalar paths (head_size 16 + 3 exercises both) on every tier.
#[test]
fn fp8_ties_and_saturation_on_every_tier() {
    for kv in ["fp8_e4m3", "fp8_e5m2"] {
        for values in [Values::Fp8Ties, Values::Specials, Values::Uniform(1e5)] {
            let case = Case {
                seed: 11,
                num_tokens: 64,
                extra_rows: 0,
                heads: 2,
                head_size: 19,
                block_size: 8,
                num_blocks: 8,
                src: DType::F32,
                kv,
                typed_fp8: true,
                per_head_scale: false,
                fused_qkv: false,
                hnd: false,
                values,
            };
            let (_, want_k, want_v) = run_flash(&case, false, true);
            for_each_isa(|isa| {
                let (status, k, v) = run_flash(&case, false, false);
                assert_eq!(status, Status::Ok);
                assert_eq!(first_diff(&k, &want_k), None, "{isa} {kv} {values:?}");
                assert_eq!(first_diff(&v, &want_v), None, "{isa} {kv} {values:?}");
            });
        }
    }
}

/// Base arguments for the bad-input tests: 4 tokens, 2 heads x 16, 4 blocks of 8.
struct Bad {
    key: Vec<f32>,
    value: Vec<f32>,
    slots: Vec<i64>,
    kc: Vec<f32>,
    vc: Vec<f32>,
}

impl Bad {
    fn new() -> Bad {
        let mut rng = Rng(3);
        Bad {
            key: rng.f32_vec(4 * 2 * 16, 1.0),
            value: rng.f32_vec(4 * 2 * 16, 1.0),
            slots: vec![0, 9, -1, 31],
            kc: vec![7.0; 4 * 8 * 2 * 16],
            vc: vec![7.0; 4 * 8 * 2 * 16],
        }
    }

    /// Runs the flash op with `kv` and the given slot list; returns the status.
    fn flash(&mut self, kv: &str, slots: &[i64], scale: f32) -> xpu_ops::Result<()> {
        let ks = [scale];
        xpu_ops::reshape_and_cache_flash(
            &TensorView::new(&self.key, &[4, 2, 16]).unwrap(),
            &TensorView::new(&self.value, &[4, 2, 16]).unwrap(),
            &mut TensorViewMut::new(&mut self.kc, &[4, 8, 2, 16]).unwrap(),
            Some(&mut TensorViewMut::new(&mut self.vc, &[4, 8, 2, 16]).unwrap()),
            &TensorView::new(slots, &[slots.len()]).unwrap(),
            kv,
            Some(&TensorView::new(&ks, &[1]).unwrap()),
            Some(&TensorView::new(&ks, &[1]).unwrap()),
        )
    }

    fn untouched(&self) -> bool {
        self.kc.iter().chain(&self.vc).all(|&v| v == 7.0)
    }
}

fn expect_error(r: xpu_ops::Result<()>, status: Status, needle: &str) {
    let e = r.expect_err("must fail");
    assert_eq!(e.status, status, "{e}");
    assert!(
        e.message.contains(needle),
        "message {:?} should mention {needle:?}",
        e.message
    );
}

#[test]
fn bad_slots_and_dtypes_write_nothing() {
    let mut b = Bad::new();
    // The last slot lies past the cache: earlier valid slots must not be written either.
    let slots = [0, 9, -1, 32];
    expect_error(
        b.flash("auto", &slots, 1.0),
        Status::IndexOutOfRange,
        "slot_mapping[3] = 32",
    );
    assert!(b.untouched());
    let slots = b.slots.clone();
    expect_error(b.flash("fp9", &slots, 1.0), Status::InvalidArgument, "fp9");
    // float32 caches cannot hold "bfloat16" or fp8.
    expect_error(
        b.flash("bfloat16", &slots, 1.0),
        Status::DtypeMismatch,
        "key_cache",
    );
    expect_error(
        b.flash("fp8", &slots, 1.0),
        Status::DtypeMismatch,
        "key_cache",
    );
    assert!(b.untouched());
    b.flash("auto", &slots, 1.0).unwrap();
    assert!(!b.untouched());
}

#[test]
fn bad_fp8_scales_write_nothing() {
    for scale in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let key = vec![1.0f32; 2 * 16];
        let mut kc = vec![0u8; 2 * 8 * 2 * 16];
        let mut vc = kc.clone();
        let ks = [scale];
        let r = xpu_ops::reshape_and_cache_flash(
            &TensorView::new(&key, &[1, 2, 16]).unwrap(),
            &TensorView::new(&key, &[1, 2, 16]).unwrap(),
            &mut TensorViewMut::new(&mut kc, &[2, 8, 2, 16]).unwrap(),
            Some(&mut TensorViewMut::new(&mut vc, &[2, 8, 2, 16]).unwrap()),
            &TensorView::new(&[3i32], &[1]).unwrap(),
            "fp8",
            Some(&TensorView::new(&ks, &[1]).unwrap()),
            Some(&TensorView::new(&[1.0f32], &[1]).unwrap()),
        );
        expect_error(r, Status::InvalidValue, "k_scale");
        assert!(kc.iter().chain(&vc).all(|&b| b == 0));
    }
}

#[test]
fn bad_shapes_write_nothing() {
    let key = vec![1.0f32; 3 * 2 * 16];
    let mut kc = vec![7.0f32; 4 * 2 * 4 * 8 * 4];
    let mut vc = vec![7.0f32; 4 * 2 * 16 * 8];
    let slots = [0i64, 1, 2];
    let run =
        |kc: &mut Vec<f32>, vc: &mut Vec<f32>, kshape: &[usize], vshape: &[usize], heads: usize| {
            let d = 16 * 2 / heads;
            xpu_ops::reshape_and_cache(
                &TensorView::new(&key, &[3, heads, d]).unwrap(),
                &TensorView::new(&key, &[3, heads, d]).unwrap(),
                &mut TensorViewMut::new(kc, kshape).unwrap(),
                &mut TensorViewMut::new(vc, vshape).unwrap(),
                &TensorView::new(&slots, &[3]).unwrap(),
                "auto",
                None,
                None,
            )
        };
    // x must be 16 bytes / 4 = 4 for an f32 cache.
    expect_error(
        run(&mut kc, &mut vc, &[4, 2, 2, 8, 8], &[4, 2, 16, 8], 2),
        Status::ShapeMismatch,
        "x",
    );
    // head count disagrees with the key.
    expect_error(
        run(&mut kc, &mut vc, &[4, 2, 4, 8, 4], &[4, 2, 16, 8], 1),
        Status::ShapeMismatch,
        "num_heads",
    );
    // value cache block_size disagrees.
    expect_error(
        run(&mut kc, &mut vc, &[4, 2, 4, 8, 4], &[8, 2, 16, 4], 2),
        Status::ShapeMismatch,
        "value_cache",
    );
    assert!(kc.iter().chain(&vc).all(|&v| v == 7.0));
    run(&mut kc, &mut vc, &[4, 2, 4, 8, 4], &[4, 2, 16, 8], 2).unwrap();

    // Head size 18 is not a multiple of x = 4 (bf16 cache: x = 8; f32: 4).
    let key18 = vec![1.0f32; 18];
    let mut kc18 = vec![0f32; 18 * 8];
    let mut vc18 = vec![0f32; 18 * 8];
    let r = xpu_ops::reshape_and_cache(
        &TensorView::new(&key18, &[1, 1, 18]).unwrap(),
        &TensorView::new(&key18, &[1, 1, 18]).unwrap(),
        &mut TensorViewMut::new(&mut kc18, &[1, 1, 4, 8, 4]).unwrap(),
        &mut TensorViewMut::new(&mut vc18, &[1, 1, 18, 8]).unwrap(),
        &TensorView::new(&[0i64], &[1]).unwrap(),
        "auto",
        None,
        None,
    );
    expect_error(r, Status::ShapeMismatch, "not divisible by x");
    assert!(kc18.iter().chain(&vc18).all(|&v| v == 0.0));
}

#[test]
fn source_strides_and_devices_are_checked() {
    let key = vec![1.0f32; 2 * 2 * 16 * 2];
    let mut kc = vec![0f32; 2 * 8 * 2 * 16];
    // head_size not contiguous in the source.
    let strided = TensorView::strided(&key, &[2, 2, 16], &[64, 32, 2]).unwrap();
    let r = xpu_ops::reshape_and_cache_flash(
        &strided,
        &strided,
        &mut TensorViewMut::new(&mut kc, &[2, 8, 2, 16]).unwrap(),
        None,
        &TensorView::new(&[0i64, 1], &[2]).unwrap(),
        "auto",
        None,
        None,
    );
    expect_error(r, Status::InvalidStride, "key");
    // A CUDA tensor reaches the dummy backend's error.
    let dense = TensorView::new(&key[..64], &[2, 2, 16]).unwrap();
    let mut layout = dense.layout().clone();
    layout.device = xpu_ops::Device::Cuda(0);
    let cuda = unsafe { TensorView::from_raw(dense.as_ptr(), layout) };
    let r = xpu_ops::reshape_and_cache_flash(
        &cuda,
        &dense,
        &mut TensorViewMut::new(&mut kc, &[2, 8, 2, 16]).unwrap(),
        None,
        &TensorView::new(&[0i64, 1], &[2]).unwrap(),
        "auto",
        None,
        None,
    );
    expect_error(r, Status::DeviceUnavailable, "CUDA");
    assert!(kc.iter().all(|&v| v == 0.0));
}

fn block_caches(rng: &mut Rng, layers: usize, blocks: usize, per_block: usize) -> Vec<Vec<u16>> {
    (0..layers)
        .map(|_| {
            (0..blocks * per_block)
                .map(|_| rng.next_u64() as u16)
                .collect()
        })
        .collect()
}

#[test]
fn copy_blocks_matches_reference() {
    let (layers, blocks, bs, h, d) = (3, 12, 16, 2, 8);
    let per_block = bs * h * d;
    let mapping: Vec<i64> = vec![0, 5, 3, 4, 3, 7, 11, 1, 9, 9];
    let map = TensorView::new(&mapping, &[5, 2]).unwrap();
    let mut rng = Rng(5);
    let (k0, v0) = (
        block_caches(&mut rng, layers, blocks, per_block),
        block_caches(&mut rng, layers, blocks, per_block),
    );
    let run = |use_ref: bool| {
        let (mut k, mut v) = (k0.clone(), v0.clone());
        {
            let shape = [blocks, bs, h, d];
            let mut kv: Vec<TensorViewMut> = k
                .iter_mut()
                .map(|c| TensorViewMut::from_bytes(bytes_of(c), DType::BF16, &shape, None).unwrap())
                .collect();
            let mut vv: Vec<TensorViewMut> = v
                .iter_mut()
                .map(|c| TensorViewMut::from_bytes(bytes_of(c), DType::BF16, &shape, None).unwrap())
                .collect();
            if use_ref {
                reference::copy_blocks(&mut kv, &mut vv, &map);
            } else {
                xpu_ops::copy_blocks(&mut kv, &mut vv, &map).unwrap();
            }
        }
        (k, v)
    };
    let want = run(true);
    assert_ne!(want.0, k0, "the mapping must change something");
    for_each_isa(|_| assert!(run(false) == want));

    // A destination written twice, or read after being overwritten, is refused.
    for bad in [vec![0i64, 5, 1, 5], vec![0, 5, 5, 6]] {
        let mut k = k0.clone();
        let mut kv = vec![TensorViewMut::from_bytes(
            bytes_of(&mut k[0]),
            DType::BF16,
            &[blocks, per_block],
            None,
        )
        .unwrap()];
        let mut k2 = k0.clone();
        let mut vv = vec![TensorViewMut::from_bytes(
            bytes_of(&mut k2[0]),
            DType::BF16,
            &[blocks, per_block],
            None,
        )
        .unwrap()];
        let r = xpu_ops::copy_blocks(&mut kv, &mut vv, &TensorView::new(&bad, &[2, 2]).unwrap());
        expect_error(r, Status::Aliasing, "block");
        drop((kv, vv));
        assert!(k == k0 && k2 == k0);
    }
}

fn bytes_of(v: &mut [u16]) -> &mut [u8] {
    // SAFETY: u16 has no padding and any byte pattern is a valid u16.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 2) }
}

#[test]
fn swap_blocks_matches_reference_and_checks_ids() {
    let (blocks_src, blocks_dst, per_block) = (6, 9, 40);
    let mut rng = Rng(9);
    let src: Vec<f32> = rng.f32_vec(blocks_src * per_block, 1.0);
    let dst0: Vec<f32> = rng.f32_vec(blocks_dst * per_block, 1.0);
    let mapping = [0i64, 8, 5, 0, 2, 3];
    let map = TensorView::new(&mapping, &[3, 2]).unwrap();
    let src_t = TensorView::new(&src, &[blocks_src, 4, 10]).unwrap();
    let (mut got, mut want) = (dst0.clone(), dst0.clone());
    xpu_ops::swap_blocks(
        &src_t,
        &mut TensorViewMut::new(&mut got, &[blocks_dst, 4, 10]).unwrap(),
        &map,
    )
    .unwrap();
    reference::swap_blocks(
        &src_t,
        &mut TensorViewMut::new(&mut want, &[blocks_dst, 4, 10]).unwrap(),
        &map,
    );
    assert_eq!(got, want);
    assert_eq!(&got[8 * per_block..9 * per_block], &src[..per_block]);

    let mut dst = dst0.clone();
    let bad = [0i64, 9];
    let r = xpu_ops::swap_blocks(
        &src_t,
        &mut TensorViewMut::new(&mut dst, &[blocks_dst, 4, 10]).unwrap(),
        &TensorView::new(&bad, &[1, 2]).unwrap(),
    );
    expect_error(r, Status::IndexOutOfRange, "destination block 9");
    let bad = [6i64, 0];
    let r = xpu_ops::swap_blocks(
        &src_t,
        &mut TensorViewMut::new(&mut dst, &[blocks_dst, 4, 10]).unwrap(),
        &TensorView::new(&bad, &[1, 2]).unwrap(),
    );
    expect_error(r, Status::IndexOutOfRange, "source block 6");
    let r = xpu_ops::swap_blocks(
        &src_t,
        &mut TensorViewMut::new(&mut dst, &[blocks_dst, 40]).unwrap(),
        &map,
    );
    expect_error(r, Status::ShapeMismatch, "blocks");
    assert_eq!(dst, dst0);
}
