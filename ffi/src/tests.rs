//! Tests of the C ABI itself, calling the exports as C would: status codes,
//! NULL pointers, the last-error text, panics, DLTensor conversion, version.
//! (The ops' numerics are tested against the reference in the main crate;
//! here each export is checked to reach the same result.)

use std::ffi::{c_char, CStr};

use xops::dlpack::{DLDataType, DLDevice, DLTensor};
use xops::{DType, TensorView, TensorViewMut};

use crate::cache::*;
use crate::call::{ffi_call, ffi_value};
use crate::status::xops_status::{self, *};
use crate::*;

/// A DLTensor over a Rust buffer, owning its shape and strides arrays.
struct Dl {
    t: DLTensor,
    _shape: Box<[i64]>,
    _strides: Option<Box<[i64]>>,
}

impl Dl {
    fn new<T>(data: &mut [T], dtype: DType, shape: &[i64], strides: Option<&[i64]>) -> Dl {
        Self::raw(
            data.as_mut_ptr() as *mut u8,
            dtype.to_dlpack(),
            shape,
            strides,
            0,
        )
    }

    fn raw(
        data: *mut u8,
        dtype: DLDataType,
        shape: &[i64],
        strides: Option<&[i64]>,
        byte_offset: u64,
    ) -> Dl {
        let mut shape: Box<[i64]> = shape.into();
        let mut strides: Option<Box<[i64]>> = strides.map(Into::into);
        let t = DLTensor {
            data: data as *mut std::ffi::c_void,
            device: DLDevice {
                device_type: 1,
                device_id: 0,
            },
            ndim: shape.len() as i32,
            dtype,
            shape: shape.as_mut_ptr(),
            strides: strides
                .as_mut()
                .map_or(std::ptr::null_mut(), |s| s.as_mut_ptr()),
            byte_offset,
        };
        Dl {
            t,
            _shape: shape,
            _strides: strides,
        }
    }

    fn p(&self) -> *const DLTensor {
        &self.t
    }
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(xops_last_error()) }
        .to_str()
        .expect("utf-8")
        .to_owned()
}

fn c(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s).unwrap()
}

/// Data for a flash-layout write: T tokens, H heads, D head size, NB blocks of BS.
const T: usize = 5;
const H: usize = 2;
const D: usize = 16;
const NB: usize = 3;
const BS: usize = 4;

fn kv_data() -> (Vec<f32>, Vec<f32>, Vec<i64>) {
    let key: Vec<f32> = (0..T * H * D)
        .map(|i| (i as f32 * 0.37).sin() * 600.0)
        .collect();
    let value: Vec<f32> = (0..T * H * D).map(|i| (i as f32 * 0.11).cos()).collect();
    (key, value, vec![3, -1, 11, 4, 0])
}

type FlashFn = unsafe extern "C" fn(
    *const DLTensor,
    *const DLTensor,
    *const DLTensor,
    *const DLTensor,
    *const DLTensor,
    *const c_char,
    *const DLTensor,
    *const DLTensor,
) -> xops_status;

#[test]
fn flash_fp8_matches_the_reference_and_bad_slots_leave_the_cache_untouched() {
    let (mut key, mut value, mut slots) = kv_data();
    let mut k_scale = vec![0.5f32];
    let mut v_scale = vec![0.25f32, 2.0];
    let cache_len = NB * BS * H * D;
    let mut kc = vec![0xAAu8; cache_len];
    let mut vc = vec![0xAAu8; cache_len];
    let shape = [T as i64, H as i64, D as i64];
    let cshape = [NB as i64, BS as i64, H as i64, D as i64];
    let dk = Dl::new(&mut key, DType::F32, &shape, None);
    let dv = Dl::new(&mut value, DType::F32, &shape, None);
    let dkc = Dl::new(&mut kc, DType::U8, &cshape, None);
    let dvc = Dl::new(&mut vc, DType::U8, &cshape, None);
    let ds = Dl::new(&mut slots, DType::I64, &[T as i64], None);
    let dks = Dl::new(&mut k_scale, DType::F32, &[1], None);
    let dvs = Dl::new(&mut v_scale, DType::F32, &[H as i64], None);
    let dt = c("fp8_e4m3");
    let f: FlashFn = xops_reshape_and_cache_flash;
    let rc = unsafe {
        f(
            dk.p(),
            dv.p(),
            dkc.p(),
            dvc.p(),
            ds.p(),
            dt.as_ptr(),
            dks.p(),
            dvs.p(),
        )
    };
    assert_eq!(rc, XOPS_OK, "{}", last_error());
    assert_eq!(last_error(), "");

    let (key, value, slots) = kv_data();
    let mut rk = vec![0xAAu8; cache_len];
    let mut rv = vec![0xAAu8; cache_len];
    let cs = [NB, BS, H, D];
    xops::reference::cache::reshape_and_cache_flash(
        &TensorView::new(&key, &[T, H, D]).unwrap(),
        &TensorView::new(&value, &[T, H, D]).unwrap(),
        &mut TensorViewMut::from_bytes(&mut rk, DType::F8E4M3, &cs, None).unwrap(),
        Some(&mut TensorViewMut::from_bytes(&mut rv, DType::F8E4M3, &cs, None).unwrap()),
        &TensorView::new(&slots, &[T]).unwrap(),
        "fp8_e4m3",
        Some(&TensorView::new(&[0.5f32], &[1]).unwrap()),
        Some(&TensorView::new(&[0.25f32, 2.0], &[H]).unwrap()),
    );
    assert_eq!(kc, rk);
    assert_eq!(vc, rv);
    assert!(kc.contains(&0x7e), "keys * 2 reach the e4m3 saturation");

    // One slot past the cache: a named status, the slot in the message, no write.
    let mut bad = vec![3i64, -1, (NB * BS) as i64, 4, 0];
    let dbad = Dl::new(&mut bad, DType::I64, &[T as i64], None);
    let before = (kc.clone(), vc.clone());
    let rc = unsafe {
        f(
            dk.p(),
            dv.p(),
            dkc.p(),
            dvc.p(),
            dbad.p(),
            dt.as_ptr(),
            dks.p(),
            dvs.p(),
        )
    };
    assert_eq!(rc, XOPS_ERR_INDEX_OUT_OF_RANGE);
    let msg = last_error();
    assert!(msg.contains("slot_mapping[2] = 12"), "{msg}");
    assert_eq!((kc, vc), before);
}

#[test]
fn every_required_null_argument_is_named() {
    let (mut key, mut value, mut slots) = kv_data();
    let mut kc = vec![0f32; NB * BS * H * D];
    let mut vc = kc.clone();
    let shape = [T as i64, H as i64, D as i64];
    let cshape = [NB as i64, BS as i64, H as i64, D as i64];
    let dk = Dl::new(&mut key, DType::F32, &shape, None);
    let dv = Dl::new(&mut value, DType::F32, &shape, None);
    let dkc = Dl::new(&mut kc, DType::F32, &cshape, None);
    let dvc = Dl::new(&mut vc, DType::F32, &cshape, None);
    let ds = Dl::new(&mut slots, DType::I64, &[T as i64], None);
    let dt = c("auto");
    let null = std::ptr::null();
    for f in [
        xops_reshape_and_cache_flash as FlashFn,
        xops_reshape_and_cache as FlashFn,
    ] {
        let args = [dk.p(), dv.p(), dkc.p(), dvc.p(), ds.p()];
        let names = ["key", "value", "key_cache", "value_cache", "slot_mapping"];
        for (i, name) in names.iter().enumerate() {
            let mut a = args;
            a[i] = null;
            let rc = unsafe { f(a[0], a[1], a[2], a[3], a[4], dt.as_ptr(), null, null) };
            assert_eq!(rc, XOPS_ERR_NULL_POINTER, "{name}");
            assert_eq!(last_error(), format!("null pointer: `{name}` is NULL"));
        }
        let rc = unsafe {
            f(
                args[0],
                args[1],
                args[2],
                args[3],
                args[4],
                std::ptr::null(),
                null,
                null,
            )
        };
        assert_eq!(rc, XOPS_ERR_NULL_POINTER);
        assert!(last_error().contains("`kv_cache_dtype` is NULL"));
    }
    assert!(kc.iter().chain(&vc).all(|&x| x == 0.0));

    // copy_blocks: the arrays and their elements.
    let mut map = vec![0i64, 1];
    let dm = Dl::new(&mut map, DType::I64, &[1, 2], None);
    let kcs = [dkc.p()];
    let holes: [*const DLTensor; 1] = [null];
    let rc = unsafe { xops_copy_blocks(std::ptr::null(), kcs.as_ptr(), 1, dm.p()) };
    assert_eq!(rc, XOPS_ERR_NULL_POINTER);
    assert!(last_error().contains("`key_caches` is NULL"));
    let rc = unsafe { xops_copy_blocks(kcs.as_ptr(), holes.as_ptr(), 1, dm.p()) };
    assert_eq!(rc, XOPS_ERR_NULL_POINTER);
    assert!(last_error().contains("`value_caches[0]` is NULL"));
    let rc = unsafe { xops_copy_blocks(kcs.as_ptr(), kcs.as_ptr(), 1, null) };
    assert_eq!(rc, XOPS_ERR_NULL_POINTER);
    assert!(last_error().contains("`block_mapping` is NULL"));
    // Zero layers: the arrays may be NULL.
    let rc = unsafe { xops_copy_blocks(std::ptr::null(), std::ptr::null(), 0, dm.p()) };
    assert_eq!(rc, XOPS_OK, "{}", last_error());

    for (i, name) in ["src", "dst", "block_mapping"].iter().enumerate() {
        let mut a = [dkc.p(), dvc.p(), dm.p()];
        a[i] = null;
        let rc = unsafe { xops_swap_blocks(a[0], a[1], a[2]) };
        assert_eq!(rc, XOPS_ERR_NULL_POINTER);
        assert!(last_error().contains(&format!("`{name}` is NULL")));
    }
    let rc = unsafe { xops_set_isa(std::ptr::null()) };
    assert_eq!(rc, XOPS_ERR_NULL_POINTER);
    assert!(last_error().contains("`name` is NULL"));
}

#[test]
fn bad_tensors_get_the_rust_status_and_name_the_argument() {
    let (mut key, mut value, mut slots) = kv_data();
    let mut kc = vec![0f32; NB * BS * H * D];
    let mut vc = kc.clone();
    let shape = [T as i64, H as i64, D as i64];
    let cshape = [NB as i64, BS as i64, H as i64, D as i64];
    let dk = Dl::new(&mut key, DType::F32, &shape, None);
    let dv = Dl::new(&mut value, DType::F32, &shape, None);
    let dkc = Dl::new(&mut kc, DType::F32, &cshape, None);
    let dvc = Dl::new(&mut vc, DType::F32, &cshape, None);
    let ds = Dl::new(&mut slots, DType::I64, &[T as i64], None);
    let null = std::ptr::null();
    let run = |k: *const DLTensor, kc: *const DLTensor, dt: &str| {
        let dt = c(dt);
        let rc = unsafe {
            xops_reshape_and_cache_flash(k, dv.p(), kc, dvc.p(), ds.p(), dt.as_ptr(), null, null)
        };
        (rc, last_error())
    };

    let (rc, msg) = run(dk.p(), dkc.p(), "fp9");
    assert_eq!(rc, XOPS_ERR_INVALID_ARGUMENT);
    assert!(msg.contains("\"fp9\""), "{msg}");

    // A dtype DLPack has but this library does not (float64).
    let f64_dtype = DLDataType {
        code: 2,
        bits: 64,
        lanes: 1,
    };
    let bad = Dl::raw(key.as_mut_ptr() as *mut u8, f64_dtype, &shape, None, 0);
    let (rc, msg) = run(bad.p(), dkc.p(), "auto");
    assert_eq!(rc, XOPS_ERR_DTYPE_MISMATCH);
    assert!(
        msg.starts_with("dtype mismatch: `key`: DLPack dtype"),
        "{msg}"
    );

    let mut cuda = Dl::new(&mut kc, DType::F32, &cshape, None);
    cuda.t.device.device_type = 2;
    let (rc, msg) = run(dk.p(), cuda.p(), "auto");
    assert_eq!(rc, XOPS_ERR_DEVICE_UNAVAILABLE);
    assert!(msg.contains("`key_cache`"), "{msg}");

    let neg = Dl::new(&mut key, DType::F32, &shape, Some(&[-32, 16, 1]));
    let (rc, msg) = run(neg.p(), dkc.p(), "auto");
    assert_eq!(rc, XOPS_ERR_INVALID_STRIDE);
    assert!(msg.contains("`key`"), "{msg}");

    let mut empty_shape = Dl::new(&mut key, DType::F32, &shape, None);
    empty_shape.t.shape = std::ptr::null_mut();
    let (rc, msg) = run(empty_shape.p(), dkc.p(), "auto");
    assert_eq!(rc, XOPS_ERR_NULL_POINTER);
    assert!(msg.contains("`key`: DLPack shape is NULL"), "{msg}");

    let rc = unsafe {
        xops_reshape_and_cache_flash(
            dk.p(),
            dv.p(),
            dkc.p(),
            dvc.p(),
            ds.p(),
            c("fp8").as_ptr(),
            null,
            null,
        )
    };
    assert_eq!(
        rc, XOPS_ERR_DTYPE_MISMATCH,
        "a float32 cache cannot hold fp8"
    );
    assert!(kc.iter().chain(&vc).all(|&x| x == 0.0));
}

#[test]
fn one_tensor_as_both_caches_and_byte_offset() {
    // GDN-style write-back: block_size 1, key and value the same tensor, one
    // cache tensor passed twice. The value row is written last.
    let (h, d, nb) = (2usize, 8usize, 4usize);
    let mut state: Vec<f32> = (0..2 * h * d).map(|i| i as f32).collect();
    let mut slots = vec![2i32, 0];
    // The cache sits 64 bytes into its buffer, reached through byte_offset.
    let mut buf = vec![-1f32; 16 + nb * h * d];
    let sshape = [2i64, h as i64, d as i64];
    let ds = Dl::new(&mut state, DType::F32, &sshape, None);
    let dsl = Dl::new(&mut slots, DType::I32, &[2], None);
    let cache = Dl::raw(
        buf.as_mut_ptr() as *mut u8,
        DType::F32.to_dlpack(),
        &[nb as i64, 1, h as i64, d as i64],
        None,
        64,
    );
    let twin = Dl::raw(
        buf.as_mut_ptr() as *mut u8,
        DType::F32.to_dlpack(),
        &[nb as i64, 1, h as i64, d as i64],
        Some(&[(h * d) as i64, (h * d) as i64, d as i64, 1]),
        64,
    );
    let dt = c("auto");
    let null = std::ptr::null();
    let rc = unsafe {
        xops_reshape_and_cache_flash(
            ds.p(),
            ds.p(),
            cache.p(),
            twin.p(),
            dsl.p(),
            dt.as_ptr(),
            null,
            null,
        )
    };
    assert_eq!(rc, XOPS_OK, "{}", last_error());
    let row = h * d;
    assert!(buf[..16].iter().all(|&x| x == -1.0), "byte_offset skipped");
    let c0 = &buf[16..];
    assert_eq!(&c0[2 * row..3 * row], &state[..row]);
    assert_eq!(&c0[..row], &state[row..]);
    assert!(c0[row..2 * row]
        .iter()
        .chain(&c0[3 * row..])
        .all(|&x| x == -1.0));

    // The same memory under a different layout is refused, not raced.
    let other = Dl::raw(
        buf.as_mut_ptr() as *mut u8,
        DType::F32.to_dlpack(),
        &[nb as i64, 1, h as i64, d as i64],
        Some(&[(h * d) as i64, d as i64, d as i64, 1]),
        64,
    );
    let rc = unsafe {
        xops_reshape_and_cache_flash(
            ds.p(),
            ds.p(),
            cache.p(),
            other.p(),
            dsl.p(),
            dt.as_ptr(),
            null,
            null,
        )
    };
    assert_eq!(rc, XOPS_ERR_ALIASING, "{}", last_error());
}

#[test]
fn paged_copy_and_swap_blocks_reach_the_rust_api() {
    // reshape_and_cache (paged): bf16 sources into a bf16 cache, x = 8.
    let (t, h, d, bs, nb) = (3usize, 2usize, 16usize, 4usize, 2usize);
    let key: Vec<half::bf16> = (0..t * h * d)
        .map(|i| half::bf16::from_f32(i as f32))
        .collect();
    let value: Vec<half::bf16> = key.iter().map(|&v| -v).collect();
    let slots = vec![7i64, -1, 1];
    let mut kc = vec![half::bf16::ZERO; nb * h * d * bs];
    let mut vc = kc.clone();
    let (mut k2, mut v2, mut s2) = (key.clone(), value.clone(), slots.clone());
    let shape = [t as i64, h as i64, d as i64];
    let dk = Dl::new(&mut k2, DType::BF16, &shape, None);
    let dv = Dl::new(&mut v2, DType::BF16, &shape, None);
    let dkc = Dl::new(
        &mut kc,
        DType::BF16,
        &[nb as i64, h as i64, (d / 8) as i64, bs as i64, 8],
        None,
    );
    let dvc = Dl::new(
        &mut vc,
        DType::BF16,
        &[nb as i64, h as i64, d as i64, bs as i64],
        None,
    );
    let ds = Dl::new(&mut s2, DType::I64, &[t as i64], None);
    let dt = c("auto");
    let null = std::ptr::null();
    let rc = unsafe {
        xops_reshape_and_cache(
            dk.p(),
            dv.p(),
            dkc.p(),
            dvc.p(),
            ds.p(),
            dt.as_ptr(),
            null,
            null,
        )
    };
    assert_eq!(rc, XOPS_OK, "{}", last_error());
    let mut rk = vec![half::bf16::ZERO; nb * h * d * bs];
    let mut rv = rk.clone();
    xops::reference::cache::reshape_and_cache(
        &TensorView::new(&key, &[t, h, d]).unwrap(),
        &TensorView::new(&value, &[t, h, d]).unwrap(),
        &mut TensorViewMut::new(&mut rk, &[nb, h, d / 8, bs, 8]).unwrap(),
        &mut TensorViewMut::new(&mut rv, &[nb, h, d, bs]).unwrap(),
        &TensorView::new(&slots, &[t]).unwrap(),
        "auto",
        None,
        None,
    );
    assert_eq!(kc, rk);
    assert_eq!(vc, rv);

    // copy_blocks over two layers: block 1 -> block 0.
    let per = h * d * bs;
    let mut layers: Vec<Vec<f32>> = (0..4)
        .map(|l| (0..nb * per).map(|i| (l * 1000 + i) as f32).collect())
        .collect();
    let want: Vec<Vec<f32>> = layers
        .iter()
        .map(|v| {
            let mut w = v.clone();
            w.copy_within(per..2 * per, 0);
            w
        })
        .collect();
    let dls: Vec<Dl> = layers
        .iter_mut()
        .map(|v| {
            Dl::new(
                v,
                DType::F32,
                &[nb as i64, bs as i64, h as i64, d as i64],
                None,
            )
        })
        .collect();
    let mut map = vec![1i64, 0];
    let dm = Dl::new(&mut map, DType::I64, &[1, 2], None);
    let keys = [dls[0].p(), dls[1].p()];
    let values = [dls[2].p(), dls[3].p()];
    let rc = unsafe { xops_copy_blocks(keys.as_ptr(), values.as_ptr(), 2, dm.p()) };
    assert_eq!(rc, XOPS_OK, "{}", last_error());
    drop(dls);
    assert_eq!(layers, want);

    // swap_blocks: block 0 of src -> block 1 of dst; a bad block id is refused.
    let mut src: Vec<f32> = (0..nb * per).map(|i| i as f32).collect();
    let mut dst = vec![0f32; nb * per];
    let cs = [nb as i64, bs as i64, h as i64, d as i64];
    let dsrc = Dl::new(&mut src, DType::F32, &cs, None);
    let ddst = Dl::new(&mut dst, DType::F32, &cs, None);
    let mut map = vec![0i64, 1];
    let dm = Dl::new(&mut map, DType::I64, &[1, 2], None);
    let rc = unsafe { xops_swap_blocks(dsrc.p(), ddst.p(), dm.p()) };
    assert_eq!(rc, XOPS_OK, "{}", last_error());
    let mut bad = vec![0i64, nb as i64];
    let dbad = Dl::new(&mut bad, DType::I64, &[1, 2], None);
    let rc = unsafe { xops_swap_blocks(dsrc.p(), ddst.p(), dbad.p()) };
    assert_eq!(rc, XOPS_ERR_INDEX_OUT_OF_RANGE);
    assert!(
        last_error().contains("destination block 2"),
        "{}",
        last_error()
    );
    assert!(dst[..per].iter().all(|&x| x == 0.0));
    assert_eq!(&dst[per..], &src[..per]);
}

#[test]
fn panics_become_internal_errors() {
    let rc = ffi_call("xops_test", || panic!("boom {}", 42));
    assert_eq!(rc, XOPS_ERR_INTERNAL);
    let msg = last_error();
    assert!(
        msg.starts_with("internal error: xops_test panicked: boom 42"),
        "{msg}"
    );
    let v = ffi_value("xops_test_value", -7, || -> i32 { panic!("static str") });
    assert_eq!(v, -7);
    assert!(last_error().contains("static str"));
    // A success clears the message.
    assert_eq!(ffi_call("xops_test", || Ok(())), XOPS_OK);
    assert_eq!(last_error(), "");
}

#[test]
fn last_error_is_per_thread() {
    let rc = xops_set_num_threads(0);
    assert_eq!(rc, XOPS_ERR_INVALID_ARGUMENT);
    let here = last_error();
    assert!(here.contains("got 0"), "{here}");
    let there = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(there, "");
    assert_eq!(last_error(), here, "reading the message does not clear it");
}

#[test]
fn runtime_controls() {
    assert!(xops_set_num_threads(-3) == XOPS_ERR_INVALID_ARGUMENT);
    assert_eq!(xops_set_num_threads(3), XOPS_OK);
    assert_eq!(xops_get_num_threads(), 3);

    let isa = |name: &str| unsafe { xops_set_isa(c(name).as_ptr()) };
    for tier in xops::supported_isas() {
        assert_eq!(isa(tier.name()), XOPS_OK, "{}", last_error());
        let active = unsafe { CStr::from_ptr(xops_isa()) }.to_str().unwrap();
        assert_eq!(active, tier.name());
    }
    for tier in [
        xops::Isa::Neon,
        xops::Isa::Avx2,
        xops::Isa::Avx512,
        xops::Isa::Amx,
    ] {
        if !xops::supported_isas().contains(&tier) {
            assert_eq!(isa(tier.name()), XOPS_ERR_UNSUPPORTED);
            assert!(last_error().contains(tier.name()));
        }
    }
    assert_eq!(isa("sse9"), XOPS_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("\"sse9\""));
    assert_eq!(isa("auto"), XOPS_OK);
    let active = unsafe { CStr::from_ptr(xops_isa()) }.to_str().unwrap();
    assert_eq!(active, xops::detected_isa().name());
}

fn cargo_version() -> [u32; 3] {
    [
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH"),
    ]
    .map(|s| s.parse().unwrap())
}

#[test]
fn version_constants_match_cargo_toml() {
    assert_eq!(
        [
            XPU_OPS_VERSION_MAJOR,
            XPU_OPS_VERSION_MINOR,
            XPU_OPS_VERSION_PATCH
        ],
        cargo_version(),
        "bump the constants in ffi/src/lib.rs and run .ci/gen-bindings"
    );
    let v = unsafe { CStr::from_ptr(xops_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    assert_eq!(v, xops::VERSION);
}

#[test]
fn header_version_macros_match_cargo_toml() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let header = std::fs::read_to_string(format!("{root}/include/xpu_ops.h")).unwrap();
    let find = |name: &str| -> u32 {
        let prefix = format!("#define {name} ");
        let line = header
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{name} missing from include/xpu_ops.h"));
        line[prefix.len()..].trim().parse().unwrap()
    };
    let got = [
        find("XPU_OPS_VERSION_MAJOR"),
        find("XPU_OPS_VERSION_MINOR"),
        find("XPU_OPS_VERSION_PATCH"),
    ];
    assert_eq!(got, cargo_version(), "run .ci/gen-bindings");
    assert!(header.contains("#define XPU_OPS_VERSION XPU_OPS_XSTR_(XPU_OPS_VERSION_MAJOR)"));

    // The Python package carries the same version.
    let pyproject = std::fs::read_to_string(format!("{root}/python/pyproject.toml")).unwrap();
    let want = format!("version = \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        pyproject.lines().any(|l| l.trim() == want),
        "python/pyproject.toml must say {want}"
    );
    let init = std::fs::read_to_string(format!("{root}/python/xpu_ops/__init__.py")).unwrap();
    let want = format!("__version__ = \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        init.lines().any(|l| l.trim() == want),
        "python/xpu_ops/__init__.py must say {want}"
    );
}

#[test]
fn packed_linear_weight_handle() {
    use crate::linear::*;
    let (m, n, k) = (3usize, 5usize, 7usize);
    let mut w: Vec<f32> = (0..n * k).map(|i| (i % 11) as f32 * 0.25 - 1.0).collect();
    let mut x: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
    let mut bias: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let dw = Dl::new(&mut w, DType::F32, &[n as i64, k as i64], None);
    let dx = Dl::new(&mut x, DType::F32, &[m as i64, k as i64], None);
    let db = Dl::new(&mut bias, DType::F32, &[n as i64], None);
    let mut h: *mut xops_packed_linear_weight = std::ptr::null_mut();
    assert_eq!(
        unsafe { xops_packed_linear_weight_create(dw.p(), &mut h) },
        XOPS_OK
    );
    assert!(!h.is_null());
    let (mut nn, mut kk) = (0u64, 0u64);
    assert_eq!(
        unsafe { xops_packed_linear_weight_shape(h, &mut nn, &mut kk) },
        XOPS_OK
    );
    assert_eq!((nn, kk), (n as u64, k as u64));
    // Same result as xops_linear.
    let mut y1 = vec![0f32; m * n];
    let mut y2 = vec![0f32; m * n];
    let dy1 = Dl::new(&mut y1, DType::F32, &[m as i64, n as i64], None);
    let dy2 = Dl::new(&mut y2, DType::F32, &[m as i64, n as i64], None);
    assert_eq!(
        unsafe { xops_linear_packed(dx.p(), h, db.p(), dy1.p()) },
        XOPS_OK
    );
    assert_eq!(
        unsafe { crate::linear::xops_linear(dx.p(), dw.p(), db.p(), dy2.p()) },
        XOPS_OK
    );
    drop((dy1, dy2));
    let want: Vec<f32> = (0..m * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            (0..k).map(|q| x[r * k + q] * w[c * k + q]).sum::<f32>() + bias[c]
        })
        .collect();
    for i in 0..m * n {
        assert!(
            (y1[i] - want[i]).abs() < 1e-5,
            "{i}: {} vs {}",
            y1[i],
            want[i]
        );
        assert!((y1[i] - y2[i]).abs() < 1e-5);
    }
    // NULL handle / out / x; a bad shape names the argument and keeps out.
    let null: *const DLTensor = std::ptr::null();
    let nullw: *const xops_packed_linear_weight = std::ptr::null();
    let mut y3 = vec![-3f32; m * n];
    let dy3 = Dl::new(&mut y3, DType::F32, &[m as i64, n as i64], None);
    assert_eq!(
        unsafe { xops_linear_packed(dx.p(), nullw, null, dy3.p()) },
        XOPS_ERR_NULL_POINTER
    );
    assert_eq!(last_error(), "null pointer: `weight` is NULL");
    assert_eq!(
        unsafe { xops_linear_packed(null, h, null, dy3.p()) },
        XOPS_ERR_NULL_POINTER
    );
    assert_eq!(last_error(), "null pointer: `x` is NULL");
    let dbad = Dl::new(&mut bias, DType::F32, &[1, n as i64], None);
    assert_eq!(
        unsafe { xops_linear_packed(dbad.p(), h, null, dy3.p()) },
        XOPS_ERR_SHAPE_MISMATCH
    );
    drop(dy3);
    assert!(y3.iter().all(|&v| v == -3.0));
    assert_eq!(
        unsafe { xops_packed_linear_weight_create(dw.p(), std::ptr::null_mut()) },
        XOPS_ERR_NULL_POINTER
    );
    let mut h2: *mut xops_packed_linear_weight = std::ptr::null_mut();
    assert_eq!(
        unsafe { xops_packed_linear_weight_create(null, &mut h2) },
        XOPS_ERR_NULL_POINTER
    );
    assert!(h2.is_null());
    unsafe { xops_packed_linear_weight_destroy(h) };
    unsafe { xops_packed_linear_weight_destroy(std::ptr::null_mut()) };
}
