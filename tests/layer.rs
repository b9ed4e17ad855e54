//! Layer ops (rms_norm, fused_add_rms_norm, rotary_embedding, silu_and_mul):
//! parity with the fp64 reference on every ISA tier, layouts with padding,
//! thread invariance, and bad input.
//!
//! Tolerances (|got − ref| ≤ atol + rtol·|ref|, per element; the same numbers
//! are in each op's doc comment):
//! * rms_norm, fused_add_rms_norm `input`: f32 (2⁻¹⁹, 1e-30), f16
//!   (1.25·2⁻¹⁰, 2⁻²⁴), bf16 (1.25·2⁻⁷, 1e-30). The new `residual` is exact.
//! * rotary_embedding: as above with f32 rtol 2⁻²² and atol 0 (f16: 2⁻²⁴),
//!   plus 2⁻²¹·hypot(x, y) for the f32 cancellation in `x·cos − y·sin`.
//! * silu_and_mul: f32 (2⁻²⁰, 1e-37), f16 (1.25·2⁻¹⁰, 2⁻²⁴), bf16 (1.25·2⁻⁷, 1e-37).

mod common;

use common::{for_each_isa, with_threads, Rng};
use proptest::prelude::*;
use xpu_ops::dtype::{load_f32, store_f32};
use xpu_ops::{reference, DType, Isa, Status, TensorView, TensorViewMut};

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// A float buffer of any dtype, 4-byte aligned, addressed by element.
#[derive(Clone)]
struct Buf {
    dtype: DType,
    len: usize,
    words: Vec<u32>,
}

impl Buf {
    fn zeros(dtype: DType, len: usize) -> Buf {
        Buf {
            dtype,
            len,
            words: vec![0; (len * dtype.size()).div_ceil(4) + 1],
        }
    }
    fn from_f32(dtype: DType, vals: &[f32]) -> Buf {
        let mut b = Buf::zeros(dtype, vals.len());
        for (i, &v) in vals.iter().enumerate() {
            b.set_bits(i, store_f32(v, dtype));
        }
        b
    }
    fn random(dtype: DType, len: usize, scale: f32, rng: &mut Rng) -> Buf {
        Buf::from_f32(dtype, &rng.f32_vec(len, scale))
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: u32 storage reinterpreted as bytes, within its length.
        unsafe {
            std::slice::from_raw_parts(
                self.words.as_ptr() as *const u8,
                self.len * self.dtype.size(),
            )
        }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, exclusively borrowed.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.words.as_mut_ptr() as *mut u8,
                self.len * self.dtype.size(),
            )
        }
    }
    fn bits(&self, i: usize) -> u32 {
        let s = self.dtype.size();
        let mut b = [0u8; 4];
        b[..s].copy_from_slice(&self.bytes()[i * s..(i + 1) * s]);
        u32::from_le_bytes(b)
    }
    fn set_bits(&mut self, i: usize, v: u32) {
        let s = self.dtype.size();
        self.bytes_mut()[i * s..(i + 1) * s].copy_from_slice(&v.to_le_bytes()[..s]);
    }
    fn get(&self, i: usize) -> f32 {
        load_f32(self.bits(i), self.dtype)
    }
    fn view(&self, shape: &[usize], strides: &[usize]) -> TensorView<'_> {
        TensorView::from_bytes(self.bytes(), self.dtype, shape, Some(strides)).unwrap()
    }
    fn view_mut(&mut self, shape: &[usize], strides: &[usize]) -> TensorViewMut<'_> {
        let d = self.dtype;
        TensorViewMut::from_bytes(self.bytes_mut(), d, shape, Some(strides)).unwrap()
    }
}

fn ulp_rel(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 2f64.powi(-23),
        DType::F16 => 2f64.powi(-10),
        _ => 2f64.powi(-7),
    }
}

/// (rtol, atol) of rms_norm and fused_add_rms_norm.
fn tol_norm(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (2f64.powi(-19), 1e-30),
        DType::F16 => (1.25 * ulp_rel(dtype), 2f64.powi(-24)),
        _ => (1.25 * ulp_rel(dtype), 1e-30),
    }
}

/// (rtol, atol) of rotary_embedding, before the hypot term.
fn tol_rope(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (2f64.powi(-22), 0.0),
        DType::F16 => (1.25 * ulp_rel(dtype), 2f64.powi(-24)),
        _ => (1.25 * ulp_rel(dtype), 0.0),
    }
}

fn tol_silu(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (2f64.powi(-20), 1e-37),
        DType::F16 => (1.25 * ulp_rel(dtype), 2f64.powi(-24)),
        _ => (1.25 * ulp_rel(dtype), 1e-37),
    }
}

fn close(got: f32, want: f32, bound: f64) -> bool {
    if got.is_nan() || want.is_nan() {
        return got.is_nan() && want.is_nan();
    }
    if got.is_infinite() || want.is_infinite() {
        return got == want;
    }
    ((got as f64) - (want as f64)).abs() <= bound
}

/// Compares `got` against `want` at the given element offsets; every other
/// element of `got` must still equal `orig` (padding untouched).
fn assert_matches(
    what: &str,
    got: &Buf,
    want: &Buf,
    orig: &Buf,
    logical: &[usize],
    bound: impl Fn(usize, f32) -> f64,
) {
    let mut is_logical = vec![false; got.len];
    for &i in logical {
        is_logical[i] = true;
        let (g, w) = (got.get(i), want.get(i));
        assert!(
            close(g, w, bound(i, w)),
            "{what}: element {i}: got {g:e}, reference {w:e}, bound {:e}",
            bound(i, w)
        );
    }
    for (i, &l) in is_logical.iter().enumerate() {
        if !l {
            assert_eq!(
                got.bits(i),
                orig.bits(i),
                "{what}: padding element {i} was written"
            );
        }
    }
}

/// Element offsets of rows x cols with a row stride.
fn row_offsets(rows: usize, cols: usize, stride: usize) -> Vec<usize> {
    (0..rows)
        .flat_map(|r| (0..cols).map(move |c| r * stride + c))
        .collect()
}

/// A `[rows, n]` problem stored as `[a, b, n]` when `split` (rows = a·b),
/// with padded rows.
fn row_shape(rows: usize, n: usize, stride: usize, split: bool) -> (Vec<usize>, Vec<usize>) {
    if split && rows % 2 == 0 && rows > 0 {
        (vec![2, rows / 2, n], vec![stride * rows / 2, stride, 1])
    } else {
        (vec![rows, n], vec![stride, 1])
    }
}

// ---- rms_norm / fused_add_rms_norm ------------------------------------------

const HIDDEN: [usize; 18] = [
    0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 1000, 2048,
];

#[allow(clippy::too_many_arguments)]
fn check_rms_norm(
    isa: Isa,
    dtype: DType,
    wdtype: DType,
    rows: usize,
    hidden: usize,
    pad: usize,
    split: bool,
    in_place: bool,
    scale: f32,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let stride = hidden + pad;
    let n = rows * stride;
    let input = Buf::random(dtype, n, scale, &mut rng);
    let weight = Buf::random(wdtype, hidden, 2.0, &mut rng);
    let (shape, strides) = row_shape(rows, hidden, stride, split);
    let eps = 1e-6;
    let what = format!("rms_norm {isa} {dtype} w={wdtype} rows={rows} hidden={hidden} pad={pad} in_place={in_place}");

    let orig = Buf::random(dtype, n, 9.0, &mut rng);
    let mut want = orig.clone();
    reference::layer::rms_norm(
        &mut want.view_mut(&shape, &strides),
        &input.view(&shape, &strides),
        &weight.view(&[hidden], &[1]),
        eps,
    );
    let got = if in_place {
        // out is input itself: start from the input and normalize in place.
        let mut buf = input.clone();
        for i in 0..n {
            if !row_offsets(rows, hidden, stride).contains(&i) {
                buf.set_bits(i, orig.bits(i));
            }
        }
        let ptr = buf.bytes_mut().as_mut_ptr();
        let layout = buf.view(&shape, &strides).layout().clone();
        // SAFETY: both views cover buf, which outlives them; the op supports
        // out == input.
        unsafe {
            let x = TensorView::from_raw(ptr, layout.clone());
            let mut o = TensorViewMut::from_raw(ptr, layout);
            xpu_ops::rms_norm(&mut o, &x, &weight.view(&[hidden], &[1]), eps).unwrap();
        }
        buf
    } else {
        let mut out = orig.clone();
        xpu_ops::rms_norm(
            &mut out.view_mut(&shape, &strides),
            &input.view(&shape, &strides),
            &weight.view(&[hidden], &[1]),
            eps,
        )
        .unwrap();
        out
    };
    let (rtol, atol) = tol_norm(dtype);
    assert_matches(
        &what,
        &got,
        &want,
        &orig,
        &row_offsets(rows, hidden, stride),
        |_, w| atol + rtol * (w as f64).abs(),
    );
}

#[allow(clippy::too_many_arguments)]
fn check_fused(
    isa: Isa,
    dtype: DType,
    wdtype: DType,
    rows: usize,
    hidden: usize,
    pad: usize,
    split: bool,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let (xs, rs) = (hidden + pad, hidden + 2 * pad);
    let input = Buf::random(dtype, rows * xs, 3.0, &mut rng);
    let residual = Buf::random(dtype, rows * rs, 3.0, &mut rng);
    let weight = Buf::random(wdtype, hidden, 2.0, &mut rng);
    let (xshape, xstrides) = row_shape(rows, hidden, xs, split);
    let (rshape, rstrides) = row_shape(rows, hidden, rs, split);
    let eps = 1e-5;
    let what = format!(
        "fused_add_rms_norm {isa} {dtype} w={wdtype} rows={rows} hidden={hidden} pad={pad}"
    );

    let (mut wx, mut wr) = (input.clone(), residual.clone());
    reference::layer::fused_add_rms_norm(
        &mut wx.view_mut(&xshape, &xstrides),
        &mut wr.view_mut(&rshape, &rstrides),
        &weight.view(&[hidden], &[1]),
        eps,
    );
    let (mut gx, mut gr) = (input.clone(), residual.clone());
    xpu_ops::fused_add_rms_norm(
        &mut gx.view_mut(&xshape, &xstrides),
        &mut gr.view_mut(&rshape, &rstrides),
        &weight.view(&[hidden], &[1]),
        eps,
    )
    .unwrap();
    // The residual is exact: one rounding of the sum, as the reference.
    assert_matches(
        &format!("{what} residual"),
        &gr,
        &wr,
        &residual,
        &row_offsets(rows, hidden, rs),
        |_, _| 0.0,
    );
    let (rtol, atol) = tol_norm(dtype);
    assert_matches(
        &format!("{what} input"),
        &gx,
        &wx,
        &input,
        &row_offsets(rows, hidden, xs),
        |_, w| atol + rtol * (w as f64).abs(),
    );
    // And the new input is rms_norm of the new residual, bit for bit.
    let mut again = Buf::zeros(dtype, rows * xs);
    for i in 0..rows * xs {
        again.set_bits(i, input.bits(i));
    }
    xpu_ops::rms_norm(
        &mut again.view_mut(&xshape, &xstrides),
        &gr.view(&rshape, &rstrides),
        &weight.view(&[hidden], &[1]),
        eps,
    )
    .unwrap();
    for i in row_offsets(rows, hidden, xs) {
        assert_eq!(
            gx.bits(i),
            again.bits(i),
            "{what}: fused != rms_norm(residual) at {i}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn rms_norm_matches_reference(
        rows in 0usize..5,
        hidden in prop::sample::select(HIDDEN.to_vec()),
        dtype in prop::sample::select(FLOATS.to_vec()),
        weight_f32 in any::<bool>(),
        pad in prop::sample::select(vec![0usize, 1, 5]),
        split in any::<bool>(),
        in_place in any::<bool>(),
        scale in prop::sample::select(vec![1e-3f32, 1.0, 30.0]),
        seed in any::<u64>(),
    ) {
        let wdtype = if weight_f32 { DType::F32 } else { dtype };
        for_each_isa(|isa| check_rms_norm(isa, dtype, wdtype, rows, hidden, pad, split, in_place, scale, seed));
    }

    #[test]
    fn fused_add_rms_norm_matches_reference(
        rows in 0usize..5,
        hidden in prop::sample::select(HIDDEN.to_vec()),
        dtype in prop::sample::select(FLOATS.to_vec()),
        wdtype in prop::sample::select(FLOATS.to_vec()),
        pad in prop::sample::select(vec![0usize, 3]),
        split in any::<bool>(),
        seed in any::<u64>(),
    ) {
        for_each_isa(|isa| check_fused(isa, dtype, wdtype, rows, hidden, pad, split, seed));
    }
}

#[test]
fn rms_norm_large_hidden_sizes() {
    for (i, hidden) in [4096usize, 8192, 16384, 16385].into_iter().enumerate() {
        for dtype in FLOATS {
            for_each_isa(|isa| {
                check_rms_norm(
                    isa, dtype, dtype, 3, hidden, 16, false, false, 1.0, i as u64,
                );
                check_fused(isa, dtype, DType::F32, 2, hidden, 0, false, i as u64);
            });
        }
    }
}

#[test]
fn rms_norm_zero_rows_and_constant_rows() {
    // A zero row with epsilon 0 is 0/0: NaN, as upstream; with epsilon > 0 it is 0.
    for_each_isa(|isa| {
        let x = [0f32; 20];
        let w = [1f32; 20];
        let mut out = [7f32; 20];
        xpu_ops::rms_norm(
            &mut TensorViewMut::new(&mut out, &[1, 20]).unwrap(),
            &TensorView::new(&x, &[1, 20]).unwrap(),
            &TensorView::new(&w, &[20]).unwrap(),
            1e-6,
        )
        .unwrap();
        assert!(out.iter().all(|&v| v == 0.0), "{isa}: {out:?}");
        xpu_ops::rms_norm(
            &mut TensorViewMut::new(&mut out, &[1, 20]).unwrap(),
            &TensorView::new(&x, &[1, 20]).unwrap(),
            &TensorView::new(&w, &[20]).unwrap(),
            0.0,
        )
        .unwrap();
        assert!(out.iter().all(|v| v.is_nan()), "{isa}: {out:?}");
        // A constant row normalizes to the weight (exact in f32 for c = 2).
        let x = [2f32; 20];
        let w: Vec<f32> = (0..20).map(|i| i as f32).collect();
        xpu_ops::rms_norm(
            &mut TensorViewMut::new(&mut out, &[20]).unwrap(),
            &TensorView::new(&x, &[20]).unwrap(),
            &TensorView::new(&w, &[20]).unwrap(),
            0.0,
        )
        .unwrap();
        assert_eq!(&out[..], &w[..], "{isa}");
    });
}

// ---- rotary_embedding --------------------------------------------------------

/// A cos/sin cache of `max_pos` rows: angle_i = pos · base^(−2i/rot_dim).
fn cos_sin(max_pos: usize, rot_dim: usize, dtype: DType) -> Buf {
    let half = rot_dim / 2;
    let mut v = vec![0f32; max_pos * rot_dim];
    for p in 0..max_pos {
        for i in 0..half {
            let inv_freq = 10000f64.powf(-2.0 * i as f64 / rot_dim as f64);
            let a = p as f64 * inv_freq;
            v[p * rot_dim + i] = a.cos() as f32;
            v[p * rot_dim + half + i] = a.sin() as f32;
        }
    }
    Buf::from_f32(dtype, &v)
}

#[derive(Debug, Clone)]
struct RopeCase {
    tokens_shape: Vec<usize>,
    head_size: usize,
    rot_dim: usize,
    heads: usize,
    kv_heads: Option<usize>,
    flat: bool,
    is_neox: bool,
    dtype: DType,
    cache_dtype: DType,
    pos_i64: bool,
    /// Extra elements between tokens (and between heads when not flat).
    pad: usize,
    /// q and k (and a v) interleaved in one qkv buffer.
    fused_qkv: bool,
    max_pos: usize,
}

/// Shape and strides of q or k in its buffer, plus the logical element offsets.
fn rope_layout(
    c: &RopeCase,
    heads: usize,
    tok_stride: usize,
    base: usize,
) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let hs = c.head_size;
    let head_stride = if c.flat { hs } else { hs + c.pad };
    let tokens: usize = c.tokens_shape.iter().product();
    let mut shape = c.tokens_shape.clone();
    let mut strides: Vec<usize> = if c.tokens_shape.len() == 1 {
        vec![tok_stride]
    } else {
        vec![tok_stride * c.tokens_shape[1], tok_stride]
    };
    if c.flat {
        shape.push(heads * hs);
        strides.push(1);
    } else {
        shape.extend([heads, hs]);
        strides.extend([head_stride, 1]);
    }
    let mut offs = Vec::new();
    for t in 0..tokens {
        for h in 0..heads {
            for d in 0..hs {
                offs.push(base + t * tok_stride + h * head_stride + d);
            }
        }
    }
    (shape, strides, offs)
}

fn check_rope(isa: Isa, c: &RopeCase, seed: u64) {
    let mut rng = Rng(seed);
    let tokens: usize = c.tokens_shape.iter().product();
    let hs = c.head_size;
    let head_stride = if c.flat { hs } else { hs + c.pad };
    let q_width = c.heads * head_stride;
    let k_width = c.kv_heads.map_or(0, |k| k * head_stride);
    let what = format!("rotary {isa} {c:?}");
    // Buffers: separate q and k, or one qkv buffer with a v slice after k.
    let (q_tok, k_tok, q_base, k_base, len_q, len_k);
    if c.fused_qkv {
        let row = q_width + 2 * k_width + c.pad;
        (q_tok, k_tok, q_base, k_base) = (row, row, 0, q_width);
        (len_q, len_k) = (tokens * row, 0);
    } else {
        (q_tok, k_tok, q_base, k_base) = (q_width + c.pad, k_width + c.pad, 0, 0);
        (len_q, len_k) = (tokens * q_tok, tokens * k_tok);
    }
    let q0 = Buf::random(c.dtype, len_q.max(1), 2.0, &mut rng);
    let k0 = Buf::random(c.dtype, len_k.max(1), 2.0, &mut rng);
    let (qshape, qstrides, qoffs) = rope_layout(c, c.heads, q_tok, q_base);
    let kv = c.kv_heads.map(|kh| rope_layout(c, kh, k_tok, k_base));
    let cache = cos_sin(c.max_pos, c.rot_dim, c.cache_dtype);
    let pos_vals: Vec<i64> = (0..tokens)
        .map(|_| rng.below(c.max_pos as u64) as i64)
        .collect();
    let pos32: Vec<i32> = pos_vals.iter().map(|&p| p as i32).collect();
    let positions = if c.pos_i64 {
        TensorView::new(&pos_vals, &c.tokens_shape).unwrap()
    } else {
        TensorView::new(&pos32, &c.tokens_shape).unwrap()
    };
    let cache_view = cache.view(&[c.max_pos, c.rot_dim], &[c.rot_dim, 1]);

    let run = |q: &mut Buf, k: &mut Buf, reference: bool| {
        // In the fused case k lives in q's buffer: views from raw pointers.
        let qlayout = q.view(&qshape, &qstrides).layout().clone();
        let qp = q.bytes_mut().as_mut_ptr();
        // SAFETY: the views cover q's (and k's) buffer, which outlive them; q
        // and k elements are disjoint.
        let mut qv = unsafe { TensorViewMut::from_raw(qp, qlayout) };
        let mut kvw = kv.as_ref().map(|(kshape, kstrides, _)| {
            if c.fused_qkv {
                let l = q.view(kshape, kstrides).layout().clone();
                unsafe { TensorViewMut::from_raw(qp.wrapping_add(k_base * c.dtype.size()), l) }
            } else {
                let l = k.view(kshape, kstrides).layout().clone();
                unsafe { TensorViewMut::from_raw(k.bytes_mut().as_mut_ptr(), l) }
            }
        });
        if reference {
            reference::layer::rotary_embedding(
                &positions,
                &mut qv,
                kvw.as_mut(),
                hs,
                &cache_view,
                c.is_neox,
            );
        } else {
            xpu_ops::rotary_embedding(
                &positions,
                &mut qv,
                kvw.as_mut(),
                hs,
                &cache_view,
                c.is_neox,
            )
            .unwrap();
        }
    };
    let (mut wq, mut wk) = (q0.clone(), k0.clone());
    run(&mut wq, &mut wk, true);
    let (mut gq, mut gk) = (q0.clone(), k0.clone());
    run(&mut gq, &mut gk, false);

    let (rtol, atol) = tol_rope(c.dtype);
    let half = c.rot_dim / 2;
    // Checks the elements of each (offsets, base, token stride) group and
    // that nothing else in the buffer changed.
    let check =
        |name: &str, got: &Buf, want: &Buf, orig: &Buf, groups: &[(&[usize], usize, usize)]| {
            let mut mark = vec![false; got.len];
            for &(offs, base, tok) in groups {
                for &i in offs {
                    mark[i] = true;
                    let d = ((i - base) % tok) % head_stride;
                    if d >= c.rot_dim {
                        assert_eq!(
                            got.bits(i),
                            orig.bits(i),
                            "{what} {name}: pass-through element {i} changed"
                        );
                        continue;
                    }
                    let p = if !c.is_neox {
                        d ^ 1
                    } else if d < half {
                        d + half
                    } else {
                        d - half
                    };
                    let (x, y) = (orig.get(i) as f64, orig.get(i - d + p) as f64);
                    let (g, w) = (got.get(i), want.get(i));
                    let b = atol + rtol * (w as f64).abs() + 2f64.powi(-21) * x.hypot(y);
                    assert!(
                        close(g, w, b),
                        "{what} {name}: element {i}: got {g:e}, reference {w:e}, bound {b:e}"
                    );
                }
            }
            for (i, &m) in mark.iter().enumerate() {
                if !m {
                    assert_eq!(
                        got.bits(i),
                        orig.bits(i),
                        "{what} {name}: padding element {i} written"
                    );
                }
            }
        };
    let koffs: &[usize] = kv.as_ref().map_or(&[], |k| &k.2[..]);
    if c.fused_qkv {
        check(
            "qkv",
            &gq,
            &wq,
            &q0,
            &[(&qoffs, q_base, q_tok), (koffs, k_base, k_tok)],
        );
    } else {
        check("query", &gq, &wq, &q0, &[(&qoffs, q_base, q_tok)]);
        check("key", &gk, &wk, &k0, &[(koffs, k_base, k_tok)]);
    }
}

fn rope_case() -> impl Strategy<Value = RopeCase> {
    (
        (
            prop::sample::select(vec![0usize, 1, 2, 3, 5, 8]),
            any::<bool>(),
            prop::sample::select(vec![2usize, 4, 6, 8, 16, 18, 32, 64, 80, 128, 256]),
            0usize..4,
            1usize..5,
            prop::sample::select(vec![None, Some(1usize), Some(2), Some(0)]),
        ),
        (
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(FLOATS.to_vec()),
            prop::sample::select(FLOATS.to_vec()),
            any::<bool>(),
            prop::sample::select(vec![0usize, 2, 7]),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (tokens, two_d, head_size, rot_sel, heads, kv),
                (flat, is_neox, dtype, cache_dtype, pos_i64, pad, fused),
            )| {
                // rot_dim: full, half, a quarter, or the smallest even (partial rotary).
                let rot_dim = match rot_sel {
                    0 => head_size,
                    1 => head_size / 2 / 2 * 2,
                    2 => head_size / 4 / 2 * 2,
                    _ => 2,
                };
                // kv heads must divide q heads: Some(0) means "as many as q".
                let kv_heads = kv.map(|k| if k == 0 || heads % k != 0 { heads } else { k });
                let tokens_shape = if two_d && tokens % 2 == 0 && tokens > 0 {
                    vec![2, tokens / 2]
                } else {
                    vec![tokens]
                };
                RopeCase {
                    tokens_shape,
                    head_size,
                    rot_dim,
                    heads,
                    kv_heads,
                    flat,
                    is_neox,
                    dtype,
                    cache_dtype,
                    pos_i64,
                    pad: if flat { pad } else { pad.max(1) },
                    fused_qkv: fused && kv_heads.is_some(),
                    max_pos: 64,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn rotary_embedding_matches_reference(c in rope_case(), seed in any::<u64>()) {
        for_each_isa(|isa| check_rope(isa, &c, seed));
    }
}

#[test]
fn rotary_qwen3_next_shapes() {
    // 16 q heads, 2 kv heads, head_dim 256, partial rotary 64 (Qwen3-Next), both styles.
    for is_neox in [true, false] {
        for dtype in FLOATS {
            let c = RopeCase {
                tokens_shape: vec![7],
                head_size: 256,
                rot_dim: 64,
                heads: 16,
                kv_heads: Some(2),
                flat: true,
                is_neox,
                dtype,
                cache_dtype: DType::F32,
                pos_i64: true,
                pad: 0,
                fused_qkv: true,
                max_pos: 4096,
            };
            for_each_isa(|isa| check_rope(isa, &c, 11));
        }
    }
}

#[test]
fn rotary_known_rotation_gptj() {
    // GPT-J pairs (0,1), (2,3): cos/sin of pair 0 = (0, 1), pair 1 = (1, 0).
    for_each_isa(|isa| {
        let cache = [0.0f32, 1.0, 1.0, 0.0]; // [cos0, cos1, sin0, sin1]
        let mut q = [1.0f32, 2.0, 3.0, 4.0, 5.0]; // head_size 5, rot_dim 4: dim 4 passes through
        xpu_ops::rotary_embedding(
            &TensorView::new(&[0i32], &[1]).unwrap(),
            &mut TensorViewMut::new(&mut q, &[1, 1, 5]).unwrap(),
            None,
            5,
            &TensorView::new(&cache, &[1, 4]).unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(q, [-2.0, 1.0, 3.0, 4.0, 5.0], "{isa}");
    });
}

// ---- silu_and_mul --------------------------------------------------------------

const SILU_D: [usize; 14] = [0, 1, 2, 7, 8, 9, 15, 16, 17, 33, 100, 1024, 4099, 8192];

#[allow(clippy::too_many_arguments)]
fn check_silu(
    isa: Isa,
    dtype: DType,
    rows: usize,
    d: usize,
    pad: usize,
    split: bool,
    scale: f32,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let (xs, os) = (2 * d + pad, d + pad);
    let input = Buf::random(dtype, rows * xs, scale, &mut rng);
    let orig = Buf::random(dtype, rows * os, 5.0, &mut rng);
    let (xshape, xstrides) = row_shape(rows, 2 * d, xs, split);
    let (oshape, ostrides) = row_shape(rows, d, os, split);
    let mut want = orig.clone();
    reference::layer::silu_and_mul(
        &mut want.view_mut(&oshape, &ostrides),
        &input.view(&xshape, &xstrides),
    );
    let mut got = orig.clone();
    xpu_ops::silu_and_mul(
        &mut got.view_mut(&oshape, &ostrides),
        &input.view(&xshape, &xstrides),
    )
    .unwrap();
    let (rtol, atol) = tol_silu(dtype);
    assert_matches(
        &format!("silu_and_mul {isa} {dtype} rows={rows} d={d} pad={pad} scale={scale}"),
        &got,
        &want,
        &orig,
        &row_offsets(rows, d, os),
        |_, w| atol + rtol * (w as f64).abs(),
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn silu_and_mul_matches_reference(
        rows in 0usize..5,
        d in prop::sample::select(SILU_D.to_vec()),
        dtype in prop::sample::select(FLOATS.to_vec()),
        pad in prop::sample::select(vec![0usize, 3]),
        split in any::<bool>(),
        scale in prop::sample::select(vec![0.01f32, 4.0, 120.0]),
        seed in any::<u64>(),
    ) {
        for_each_isa(|isa| check_silu(isa, dtype, rows, d, pad, split, scale, seed));
    }
}

/// The polynomial exp inside silu: silu(x)·1 in f32 over x in [−110, 95]
/// stays within 3 f32 ulp of silu in f64 wherever the result is normal,
/// and the special values follow the formula x / (1 + e^(−x)).
#[test]
fn silu_f32_error_in_ulps() {
    let n = 1 << 16;
    let mut input = vec![1f32; 2 * n];
    for (i, x) in input[..n].iter_mut().enumerate() {
        *x = -110.0 + 205.0 * i as f32 / n as f32;
    }
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        88.7,
        -88.8,
        104.0,
        -104.0,
        1e30,
        -1e30,
    ];
    input[..specials.len()].copy_from_slice(&specials);
    for_each_isa(|isa| {
        let mut out = vec![0f32; n];
        xpu_ops::silu_and_mul(
            &mut TensorViewMut::new(&mut out, &[1, n]).unwrap(),
            &TensorView::new(&input, &[1, 2 * n]).unwrap(),
        )
        .unwrap();
        let mut worst = 0f64;
        for i in 0..n {
            let x = input[i];
            let want = reference::layer::silu(x as f64) as f32;
            let got = out[i];
            if want.is_nan() {
                assert!(got.is_nan(), "{isa}: silu({x}) = {got}, want NaN");
                continue;
            }
            if want.is_infinite() {
                assert_eq!(got, want, "{isa}: silu({x})");
                continue;
            }
            if !want.is_normal() {
                assert!(
                    (got - want).abs() <= f32::MIN_POSITIVE,
                    "{isa}: silu({x}) = {got:e}, want {want:e}"
                );
                continue;
            }
            let ulp = (want.abs().to_bits() as i64 - got.abs().to_bits() as i64).abs() as f64;
            assert_eq!(
                got.is_sign_negative(),
                want.is_sign_negative(),
                "{isa}: sign of silu({x})"
            );
            worst = worst.max(ulp);
        }
        assert!(worst <= 3.0, "{isa}: silu f32 error {worst} ulp");
        eprintln!("silu f32 max error on {isa}: {worst} ulp");
    });
}

// ---- thread invariance -----------------------------------------------------------

#[test]
fn results_do_not_depend_on_thread_count() {
    let mut rng = Rng(99);
    // Enough rows that 1, 2 and 3 threads split the grid differently.
    let (rows, hidden) = (1001, 1000);
    for dtype in FLOATS {
        let x = Buf::random(dtype, rows * hidden, 3.0, &mut rng);
        let r = Buf::random(dtype, rows * hidden, 3.0, &mut rng);
        let w = Buf::random(dtype, hidden, 1.0, &mut rng);
        let cache = cos_sin(128, 64, DType::F32);
        let pos: Vec<i64> = (0..rows).map(|i| (i * 7 % 128) as i64).collect();
        for_each_isa(|isa| {
            let run = |threads: usize| {
                with_threads(threads, || {
                    xpu_ops::with_isa(isa, || {
                        let mut out = Buf::zeros(dtype, rows * hidden);
                        xpu_ops::rms_norm(
                            &mut out.view_mut(&[rows, hidden], &[hidden, 1]),
                            &x.view(&[rows, hidden], &[hidden, 1]),
                            &w.view(&[hidden], &[1]),
                            1e-6,
                        )
                        .unwrap();
                        let (mut fx, mut fr) = (x.clone(), r.clone());
                        xpu_ops::fused_add_rms_norm(
                            &mut fx.view_mut(&[rows, hidden], &[hidden, 1]),
                            &mut fr.view_mut(&[rows, hidden], &[hidden, 1]),
                            &w.view(&[hidden], &[1]),
                            1e-6,
                        )
                        .unwrap();
                        let mut q = x.clone();
                        xpu_ops::rotary_embedding(
                            &TensorView::new(&pos, &[rows]).unwrap(),
                            &mut q.view_mut(&[rows, 10, 100], &[hidden, 100, 1]),
                            None,
                            100,
                            &cache.view(&[128, 64], &[64, 1]),
                            rows % 2 == 0,
                        )
                        .unwrap();
                        let mut s = Buf::zeros(dtype, rows * hidden / 2);
                        xpu_ops::silu_and_mul(
                            &mut s.view_mut(&[rows, hidden / 2], &[hidden / 2, 1]),
                            &x.view(&[rows, hidden], &[hidden, 1]),
                        )
                        .unwrap();
                        (out.words, fx.words, fr.words, q.words, s.words)
                    })
                    .unwrap()
                })
            };
            let one = run(1);
            for t in [2, 3] {
                assert!(run(t) == one, "{isa} {dtype}: {t} threads differ from 1");
            }
        });
    }
}

// ---- bad input ---------------------------------------------------------------------

fn assert_err<T: std::fmt::Debug>(r: xpu_ops::Result<T>, status: Status, needle: &str) {
    let e = r.expect_err("the call must fail");
    assert_eq!(e.status, status, "{e}");
    assert!(
        e.message.contains(needle),
        "message {:?} should mention {needle:?}",
        e.message
    );
}

#[test]
fn rms_norm_rejects_bad_input() {
    let x = vec![1f32; 32];
    let w = vec![1f32; 8];
    let mut out = vec![5f32; 32];
    let mut out16 = vec![half::f16::ONE; 32];
    let xv = TensorView::new(&x, &[4, 8]).unwrap();
    let wv = TensorView::new(&w, &[8]).unwrap();
    macro_rules! call {
        ($out:expr, $x:expr, $w:expr, $eps:expr) => {
            xpu_ops::rms_norm(&mut $out, &$x, &$w, $eps)
        };
    }
    // dtype: i32 input, mismatched out, i8 weight
    let xi = vec![1i32; 32];
    assert_err(
        call!(
            TensorViewMut::new(&mut out, &[4, 8]).unwrap(),
            TensorView::new(&xi, &[4, 8]).unwrap(),
            wv,
            1e-6
        ),
        Status::DtypeMismatch,
        "input",
    );
    assert_err(
        call!(
            TensorViewMut::new(&mut out16, &[4, 8]).unwrap(),
            xv,
            wv,
            1e-6
        ),
        Status::DtypeMismatch,
        "out",
    );
    let wi = vec![1i8; 8];
    assert_err(
        call!(
            TensorViewMut::new(&mut out, &[4, 8]).unwrap(),
            xv,
            TensorView::new(&wi, &[8]).unwrap(),
            1e-6
        ),
        Status::DtypeMismatch,
        "weight",
    );
    // shapes
    assert_err(
        call!(TensorViewMut::new(&mut out, &[8, 4]).unwrap(), xv, wv, 1e-6),
        Status::ShapeMismatch,
        "out",
    );
    assert_err(
        call!(
            TensorViewMut::new(&mut out, &[4, 8]).unwrap(),
            xv,
            TensorView::new(&w[..4], &[4]).unwrap(),
            1e-6
        ),
        Status::ShapeMismatch,
        "weight",
    );
    assert_err(
        call!(
            TensorViewMut::new(&mut out, &[4, 8]).unwrap(),
            xv,
            TensorView::new(&w, &[2, 4]).unwrap(),
            1e-6
        ),
        Status::ShapeMismatch,
        "weight",
    );
    assert_err(
        call!(
            TensorViewMut::new(&mut out[..1], &[]).unwrap(),
            TensorView::new(&x[..1], &[]).unwrap(),
            wv,
            1e-6
        ),
        Status::ShapeMismatch,
        "input",
    );
    // strides: non-contiguous last dim, unflattenable leading dims, self-overlapping out, strided weight
    assert_err(
        call!(
            TensorViewMut::new(&mut out, &[8, 4]).unwrap(),
            TensorView::strided(&x, &[8, 4], &[1, 8]).unwrap(),
            TensorView::new(&w[..4], &[4]).unwrap(),
            1e-6
        ),
        Status::InvalidStride,
        "input",
    );
    assert_err(
        call!(
            TensorViewMut::new(&mut out[..16], &[2, 2, 4]).unwrap(),
            TensorView::strided(&x, &[2, 2, 4], &[10, 4, 1]).unwrap(),
            TensorView::new(&w[..4], &[4]).unwrap(),
            1e-6
        ),
        Status::InvalidStride,
        "input",
    );
    assert_err(
        call!(
            TensorViewMut::strided(&mut out, &[2, 2, 4], &[16, 4, 1]).unwrap(),
            TensorView::new(&x[..16], &[2, 2, 4]).unwrap(),
            TensorView::new(&w[..4], &[4]).unwrap(),
            1e-6
        ),
        Status::InvalidStride,
        "out",
    );
    assert_err(
        call!(
            TensorViewMut::strided(&mut out, &[4, 8], &[4, 1]).unwrap(),
            xv,
            wv,
            1e-6
        ),
        Status::InvalidStride,
        "out",
    );
    assert_err(
        call!(
            TensorViewMut::new(&mut out, &[4, 8]).unwrap(),
            xv,
            TensorView::strided(&x, &[8], &[2]).unwrap(),
            1e-6
        ),
        Status::InvalidStride,
        "weight",
    );
    // epsilon
    for eps in [-1.0, f64::NAN, f64::INFINITY, 1e300] {
        assert_err(
            call!(TensorViewMut::new(&mut out, &[4, 8]).unwrap(), xv, wv, eps),
            Status::InvalidValue,
            "epsilon",
        );
    }
    assert!(out.iter().all(|&v| v == 5.0), "out written on error");
}

/// Raw views over one buffer, to build aliasing arguments safe code cannot.
fn raw_f32(
    buf: &mut [f32],
    shape: &[usize],
    strides: &[usize],
    offset: usize,
) -> (TensorView<'static>, TensorViewMut<'static>) {
    let layout = xpu_ops::Layout {
        strides: strides.to_vec(),
        ..xpu_ops::Layout::contiguous(DType::F32, shape)
    };
    assert!(offset + layout.span() <= buf.len());
    let p = buf[offset..].as_mut_ptr() as *mut u8;
    // SAFETY: the tests keep `buf` alive and do not touch it while the views are used.
    unsafe {
        (
            TensorView::from_raw(p, layout.clone()),
            TensorViewMut::from_raw(p, layout),
        )
    }
}

#[test]
fn rms_norm_rejects_overlap_but_allows_exact_in_place() {
    let mut buf: Vec<f32> = (0..64).map(|i| i as f32 * 0.1).collect();
    let w = vec![1f32; 8];
    let wv = TensorView::new(&w, &[8]).unwrap();
    let before = buf.clone();
    // out shifted by one element from input: partial overlap.
    let (x, _) = raw_f32(&mut buf, &[4, 8], &[8, 1], 0);
    let (_, mut o) = raw_f32(&mut buf, &[4, 8], &[8, 1], 1);
    assert_err(
        xpu_ops::rms_norm(&mut o, &x, &wv, 1e-6),
        Status::Aliasing,
        "out",
    );
    // Same pointer, different row stride: not the same tensor.
    let (x, _) = raw_f32(&mut buf, &[4, 8], &[8, 1], 0);
    let (_, mut o) = raw_f32(&mut buf, &[4, 8], &[16, 1], 0);
    assert_err(
        xpu_ops::rms_norm(&mut o, &x, &wv, 1e-6),
        Status::Aliasing,
        "out",
    );
    // weight under out
    let (wr, _) = raw_f32(&mut buf, &[8], &[1], 8);
    let (x, _) = raw_f32(&mut buf, &[2, 8], &[8, 1], 32);
    let (_, mut o) = raw_f32(&mut buf, &[2, 8], &[8, 1], 0);
    assert_err(
        xpu_ops::rms_norm(&mut o, &x, &wr, 1e-6),
        Status::Aliasing,
        "weight",
    );
    assert_eq!(buf, before, "written on error");
    // out and input interleaved in one [4, 16] buffer (columns 0..8 and 8..16): fine.
    let (x, _) = raw_f32(&mut buf, &[4, 8], &[16, 1], 8);
    let (_, mut o) = raw_f32(&mut buf, &[4, 8], &[16, 1], 0);
    xpu_ops::rms_norm(&mut o, &x, &wv, 1e-6).unwrap();
    assert_eq!(&buf[8..16], &before[8..16]);
    // Exactly in place.
    let mut want = vec![0f32; 8];
    let src: Vec<f32> = buf[..8].to_vec();
    xpu_ops::rms_norm(
        &mut TensorViewMut::new(&mut want, &[8]).unwrap(),
        &TensorView::new(&src, &[8]).unwrap(),
        &wv,
        1e-6,
    )
    .unwrap();
    let (x, mut o) = raw_f32(&mut buf, &[8], &[1], 0);
    xpu_ops::rms_norm(&mut o, &x, &wv, 1e-6).unwrap();
    assert_eq!(&buf[..8], &want[..]);
}

#[test]
fn fused_add_rms_norm_rejects_bad_input() {
    let mut x = vec![1f32; 32];
    let mut r = vec![2f32; 32];
    let mut r16 = vec![half::bf16::ONE; 32];
    let w = vec![1f32; 8];
    let wv = TensorView::new(&w, &[8]).unwrap();
    assert_err(
        xpu_ops::fused_add_rms_norm(
            &mut TensorViewMut::new(&mut x, &[4, 8]).unwrap(),
            &mut TensorViewMut::new(&mut r16, &[4, 8]).unwrap(),
            &wv,
            1e-6,
        ),
        Status::DtypeMismatch,
        "residual",
    );
    assert_err(
        xpu_ops::fused_add_rms_norm(
            &mut TensorViewMut::new(&mut x, &[4, 8]).unwrap(),
            &mut TensorViewMut::new(&mut r, &[8, 4]).unwrap(),
            &wv,
            1e-6,
        ),
        Status::ShapeMismatch,
        "residual",
    );
    assert_err(
        xpu_ops::fused_add_rms_norm(
            &mut TensorViewMut::new(&mut x, &[4, 8]).unwrap(),
            &mut TensorViewMut::strided(&mut r, &[4, 8], &[4, 1]).unwrap(),
            &wv,
            1e-6,
        ),
        Status::InvalidStride,
        "residual",
    );
    assert_err(
        xpu_ops::fused_add_rms_norm(
            &mut TensorViewMut::new(&mut x, &[4, 8]).unwrap(),
            &mut TensorViewMut::new(&mut r, &[4, 8]).unwrap(),
            &TensorView::new(&w[..7], &[7]).unwrap(),
            1e-6,
        ),
        Status::ShapeMismatch,
        "weight",
    );
    assert_err(
        xpu_ops::fused_add_rms_norm(
            &mut TensorViewMut::new(&mut x, &[4, 8]).unwrap(),
            &mut TensorViewMut::new(&mut r, &[4, 8]).unwrap(),
            &wv,
            -1e-6,
        ),
        Status::InvalidValue,
        "epsilon",
    );
    assert!(
        x.iter().all(|&v| v == 1.0)
            && r.iter().all(|&v| v == 2.0)
            && r16.iter().all(|&v| v == half::bf16::ONE)
    );
    // input and residual over the same memory.
    let mut buf = vec![1f32; 64];
    let (_, mut a) = raw_f32(&mut buf, &[4, 8], &[8, 1], 0);
    let (_, mut b) = raw_f32(&mut buf, &[4, 8], &[8, 1], 8);
    assert_err(
        xpu_ops::fused_add_rms_norm(&mut a, &mut b, &wv, 1e-6),
        Status::Aliasing,
        "residual",
    );
    let (_, mut a) = raw_f32(&mut buf, &[4, 8], &[8, 1], 0);
    let (_, mut b) = raw_f32(&mut buf, &[4, 8], &[8, 1], 0);
    assert_err(
        xpu_ops::fused_add_rms_norm(&mut a, &mut b, &wv, 1e-6),
        Status::Aliasing,
        "residual",
    );
    assert!(buf.iter().all(|&v| v == 1.0));
}

#[test]
fn rotary_embedding_rejects_bad_input() {
    let cache = cos_sin(16, 8, DType::F32);
    let cv = cache.view(&[16, 8], &[8, 1]);
    let mut q = vec![1f32; 4 * 2 * 16];
    let mut k = vec![2f32; 4 * 16];
    let pos = [0i64, 3, 15, 2];
    let pv = TensorView::new(&pos, &[4]).unwrap();
    let qs = [4usize, 32];
    macro_rules! rope {
        ($p:expr, $q:expr, $k:expr, $hs:expr, $c:expr) => {
            xpu_ops::rotary_embedding(&$p, &mut $q, $k, $hs, &$c, true)
        };
    }
    // positions out of the cache, negative, wrong dtype, wrong rank
    for bad in [16i64, -1, 1 << 40] {
        let p2 = [0i64, 1, bad, 2];
        assert_err(
            rope!(
                TensorView::new(&p2, &[4]).unwrap(),
                TensorViewMut::new(&mut q, &qs).unwrap(),
                None,
                16,
                cv
            ),
            Status::IndexOutOfRange,
            "positions[2]",
        );
    }
    let p32 = [0i32, 1, 16, 2];
    assert_err(
        rope!(
            TensorView::new(&p32, &[4]).unwrap(),
            TensorViewMut::new(&mut q, &qs).unwrap(),
            None,
            16,
            cv
        ),
        Status::IndexOutOfRange,
        "positions[2] = 16",
    );
    let pf = [0f32; 4];
    assert_err(
        rope!(
            TensorView::new(&pf, &[4]).unwrap(),
            TensorViewMut::new(&mut q, &qs).unwrap(),
            None,
            16,
            cv
        ),
        Status::DtypeMismatch,
        "positions",
    );
    assert_err(
        rope!(
            TensorView::new(&pos, &[1, 2, 2]).unwrap(),
            TensorViewMut::new(&mut q, &qs).unwrap(),
            None,
            16,
            cv
        ),
        Status::ShapeMismatch,
        "positions",
    );
    // token count, head_size multiple, head_size 0, rot_dim > head_size, odd rot_dim
    assert_err(
        rope!(
            TensorView::new(&pos[..3], &[3]).unwrap(),
            TensorViewMut::new(&mut q, &qs).unwrap(),
            None,
            16,
            cv
        ),
        Status::ShapeMismatch,
        "query",
    );
    assert_err(
        rope!(pv, TensorViewMut::new(&mut q, &qs).unwrap(), None, 12, cv),
        Status::ShapeMismatch,
        "head_size 12",
    );
    assert_err(
        rope!(pv, TensorViewMut::new(&mut q, &qs).unwrap(), None, 0, cv),
        Status::InvalidArgument,
        "head_size",
    );
    assert_err(
        rope!(pv, TensorViewMut::new(&mut q, &qs).unwrap(), None, 4, cv),
        Status::ShapeMismatch,
        "rot_dim",
    );
    let odd = cos_sin(16, 8, DType::F32);
    assert_err(
        rope!(
            pv,
            TensorViewMut::new(&mut q, &qs).unwrap(),
            None,
            16,
            odd.view(&[16, 7], &[8, 1])
        ),
        Status::ShapeMismatch,
        "rot_dim",
    );
    assert_err(
        rope!(
            pv,
            TensorViewMut::new(&mut q, &[4, 2, 16]).unwrap(),
            None,
            8,
            cv
        ),
        Status::ShapeMismatch,
        "query",
    );
    // dtypes: query int, key dtype mismatch, cache int
    let mut k16 = vec![half::f16::ONE; 64];
    assert_err(
        rope!(
            pv,
            TensorViewMut::new(&mut q, &qs).unwrap(),
            Some(&mut TensorViewMut::new(&mut k16, &[4, 16]).unwrap()),
            16,
            cv
        ),
        Status::DtypeMismatch,
        "key",
    );
    let ci = vec![0i32; 128];
    assert_err(
        rope!(
            pv,
            TensorViewMut::new(&mut q, &qs).unwrap(),
            None,
            16,
            TensorView::new(&ci, &[16, 8]).unwrap()
        ),
        Status::DtypeMismatch,
        "cos_sin_cache",
    );
    // kv heads that do not divide q heads: 2 q heads, 3 kv heads... use 3 q heads, 2 kv heads
    let mut q3 = vec![1f32; 4 * 3 * 16];
    let mut k2 = vec![1f32; 4 * 2 * 16];
    assert_err(
        rope!(
            pv,
            TensorViewMut::new(&mut q3, &[4, 48]).unwrap(),
            Some(&mut TensorViewMut::new(&mut k2, &[4, 32]).unwrap()),
            16,
            cv
        ),
        Status::ShapeMismatch,
        "num_kv_heads",
    );
    // strides: non-contiguous head dim, overlapping heads
    assert_err(
        rope!(
            pv,
            TensorViewMut::strided(&mut q, &[4, 2, 16], &[32, 1, 2]).unwrap(),
            None,
            16,
            cv
        ),
        Status::InvalidStride,
        "query",
    );
    assert_err(
        rope!(
            pv,
            TensorViewMut::strided(&mut q, &[4, 2, 16], &[32, 8, 1]).unwrap(),
            None,
            16,
            cv
        ),
        Status::InvalidStride,
        "query",
    );
    assert_err(
        rope!(
            pv,
            TensorViewMut::strided(&mut q, &[4, 2, 16], &[0, 16, 1]).unwrap(),
            None,
            16,
            cv
        ),
        Status::InvalidStride,
        "query",
    );
    assert!(
        q.iter().all(|&v| v == 1.0) && k.iter().all(|&v| v == 2.0),
        "written on error"
    );
    // q and k overlapping inside one buffer
    let mut buf = vec![1f32; 4 * 64];
    let (_, mut qv) = raw_f32(&mut buf, &[4, 32], &[64, 1], 0);
    let (_, mut kv) = raw_f32(&mut buf, &[4, 32], &[64, 1], 16);
    assert_err(
        rope!(pv, qv, Some(&mut kv), 16, cv),
        Status::Aliasing,
        "key",
    );
    // ... but q, k, v split from one qkv buffer are fine.
    let (_, mut qv) = raw_f32(&mut buf, &[4, 32], &[64, 1], 0);
    let (_, mut kv) = raw_f32(&mut buf, &[4, 16], &[64, 1], 32);
    rope!(pv, qv, Some(&mut kv), 16, cv).unwrap();
    assert!(
        buf.chunks(64)
            .all(|row| row[48..].iter().all(|&v| v == 1.0)),
        "v was touched"
    );
    let _ = &mut k;
}

#[test]
fn silu_and_mul_rejects_bad_input() {
    let x = vec![1f32; 40];
    let mut out = vec![3f32; 20];
    let xv = TensorView::new(&x, &[4, 10]).unwrap();
    assert_err(
        xpu_ops::silu_and_mul(
            &mut TensorViewMut::new(&mut out, &[4, 5]).unwrap(),
            &TensorView::new(&x[..36], &[4, 9]).unwrap(),
        ),
        Status::ShapeMismatch,
        "even",
    );
    assert_err(
        xpu_ops::silu_and_mul(
            &mut TensorViewMut::new(&mut out, &[4, 5]).unwrap(),
            &TensorView::new(&x, &[4, 10, 1]).unwrap(),
        ),
        Status::ShapeMismatch,
        "even",
    );
    assert_err(
        xpu_ops::silu_and_mul(&mut TensorViewMut::new(&mut out, &[5, 4]).unwrap(), &xv),
        Status::ShapeMismatch,
        "out",
    );
    assert_err(
        xpu_ops::silu_and_mul(
            &mut TensorViewMut::new(&mut out[..10], &[2, 5]).unwrap(),
            &xv,
        ),
        Status::ShapeMismatch,
        "out",
    );
    let mut o16 = vec![half::f16::ONE; 20];
    assert_err(
        xpu_ops::silu_and_mul(&mut TensorViewMut::new(&mut o16, &[4, 5]).unwrap(), &xv),
        Status::DtypeMismatch,
        "out",
    );
    let xi = vec![1i64; 40];
    assert_err(
        xpu_ops::silu_and_mul(
            &mut TensorViewMut::new(&mut out, &[4, 5]).unwrap(),
            &TensorView::new(&xi, &[4, 10]).unwrap(),
        ),
        Status::DtypeMismatch,
        "input",
    );
    assert_err(
        xpu_ops::silu_and_mul(
            &mut TensorViewMut::new(&mut out, &[4, 5]).unwrap(),
            &TensorView::strided(&x, &[4, 10], &[1, 4]).unwrap(),
        ),
        Status::InvalidStride,
        "input",
    );
    assert_err(
        xpu_ops::silu_and_mul(
            &mut TensorViewMut::strided(&mut out, &[4, 5], &[2, 1]).unwrap(),
            &xv,
        ),
        Status::InvalidStride,
        "out",
    );
    assert!(out.iter().all(|&v| v == 3.0) && o16.iter().all(|&v| v == half::f16::ONE));
    // out over input's up half: overlap.
    let mut buf = vec![1f32; 40];
    let (x, _) = raw_f32(&mut buf, &[4, 10], &[10, 1], 0);
    let (_, mut o) = raw_f32(&mut buf, &[4, 5], &[10, 1], 5);
    assert_err(xpu_ops::silu_and_mul(&mut o, &x), Status::Aliasing, "input");
    assert!(buf.iter().all(|&v| v == 1.0));
}

/// Outputs in the f32 subnormal range are rounded, not flushed, on every
/// tier (the AVX-512 bf16 store falls back to the integer path for them).
#[test]
fn bf16_subnormal_outputs_are_rounded_not_flushed() {
    let mut rng = Rng(7);
    let (rows, hidden) = (3, 100);
    let x = Buf::random(DType::BF16, rows * hidden, 1.0, &mut rng);
    let w = Buf::from_f32(DType::BF16, &vec![3e-39f32; hidden]);
    let mut want = Buf::zeros(DType::BF16, rows * hidden);
    reference::layer::rms_norm(
        &mut want.view_mut(&[rows, hidden], &[hidden, 1]),
        &x.view(&[rows, hidden], &[hidden, 1]),
        &w.view(&[hidden], &[1]),
        0.0,
    );
    let nonzero = (0..rows * hidden).filter(|&i| want.get(i) != 0.0).count();
    assert!(
        nonzero > rows * hidden / 2,
        "the case must produce subnormal outputs"
    );
    for_each_isa(|isa| {
        let mut got = Buf::zeros(DType::BF16, rows * hidden);
        xpu_ops::rms_norm(
            &mut got.view_mut(&[rows, hidden], &[hidden, 1]),
            &x.view(&[rows, hidden], &[hidden, 1]),
            &w.view(&[hidden], &[1]),
            0.0,
        )
        .unwrap();
        for i in 0..rows * hidden {
            let (g, r) = (got.get(i) as f64, want.get(i) as f64);
            assert!(
                (g - r).abs() <= 2f64.powi(-133),
                "{isa}: element {i}: got {g:e}, reference {r:e}"
            );
        }
    });
}

/// Each layer op call becomes one trace event (XPU_OPS_TRACE).
#[test]
fn layer_ops_are_traced() {
    let path =
        std::env::temp_dir().join(format!("xpu_ops_layer_trace_{}.json", std::process::id()));
    // Shapes no other test uses, so events of concurrent tests are told apart.
    let (t, h) = (3usize, 46usize);
    let x = vec![0.5f32; t * h];
    let w = vec![1f32; h];
    let mut out = vec![0f32; t * h];
    let mut r = vec![0.25f32; t * h];
    let mut xm = x.clone();
    let cache = vec![0.5f32; 4 * 46];
    xpu_ops::trace::set_trace_file(Some(&path)).unwrap();
    xpu_ops::rms_norm(
        &mut TensorViewMut::new(&mut out, &[t, h]).unwrap(),
        &TensorView::new(&x, &[t, h]).unwrap(),
        &TensorView::new(&w, &[h]).unwrap(),
        1e-6,
    )
    .unwrap();
    xpu_ops::fused_add_rms_norm(
        &mut TensorViewMut::new(&mut xm, &[t, h]).unwrap(),
        &mut TensorViewMut::new(&mut r, &[t, h]).unwrap(),
        &TensorView::new(&w, &[h]).unwrap(),
        1e-6,
    )
    .unwrap();
    xpu_ops::rotary_embedding(
        &TensorView::new(&[0i64, 1, 2], &[t]).unwrap(),
        &mut TensorViewMut::new(&mut out, &[t, h]).unwrap(),
        None,
        h,
        &TensorView::new(&cache, &[4, 46]).unwrap(),
        true,
    )
    .unwrap();
    xpu_ops::silu_and_mul(
        &mut TensorViewMut::new(&mut out[..t * h / 2], &[t, h / 2]).unwrap(),
        &TensorView::new(&x, &[t, h]).unwrap(),
    )
    .unwrap();
    xpu_ops::trace::set_trace_file(None).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    for name in [
        "rms_norm",
        "fused_add_rms_norm",
        "rotary_embedding",
        "silu_and_mul",
    ] {
        let n = text
            .lines()
            .filter(|l| l.contains(&format!("\"name\":\"{name}\"")) && l.contains("float32[3, 46]"))
            .count();
        assert_eq!(n, 1, "{name}: {text}");
    }
}
