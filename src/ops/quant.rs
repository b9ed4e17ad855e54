//! Weight-only quantized linear weights: the canonical layout used by
//! [`wna16_linear`](crate::wna16_linear), its importers from the upstream
//! checkpoint formats, and [`wna16_dequantize`].
//!
//! # Canonical layout ([`Wna16Weight`])
//!
//! For `N` output channels, `K` input channels, `bits` ∈ {4, 8} and a group
//! size `G` (a multiple of 32 dividing `K`, or `K` itself: one group per
//! channel):
//!
//! * `qweight`: uint8 `[N, row_bytes]` of unsigned codes. 8-bit: `row_bytes =
//!   K`, code of `(n, k)` at byte `k`. 4-bit (`K` a multiple of 32):
//!   `row_bytes = 64·ceil(K/128)`; block `b` (64 bytes, 16 little-endian
//!   32-bit words) holds `k = 128b + 16i + l` in word `l`, bits `4i..4i+3`
//!   (`i` = 0..7, `l` = 0..15), so one shift of the 16 words yields 16
//!   consecutive `k`; codes past `K` are zero.
//! * `scales`: `[N, K/G]`, f32/f16/bf16.
//! * `zeros`: `[N, K/G]`, the scales' dtype, holding integer code values; or
//!   absent, meaning `2^(bits-1)` (8 or 128: symmetric quantization).
//! * `perm`: int32 `[K]` or absent. With act-order (GPTQ `desc_act`,
//!   compressed-tensors `actorder`), canonical column `j` is input channel
//!   `perm[j]`, columns sorted so groups are contiguous.
//!
//! The weight of input channel `perm[j]` is `(code(n, j) - zero(n, j/G)) ·
//! scale(n, j/G)`, computed in f32 (exact for f16/bf16 scales).
//!
//! # Importers
//!
//! * [`Wna16Weight::from_gptq`] reads AutoGPTQ / GPTQModel `qweight` int32
//!   `[K/pack, N]` (packed along K, value `i` of a word at bits
//!   `bits·i`), `qzeros` int32 `[K/G, N/pack]` (packed along N), `scales`
//!   `[K/G, N]`, optional `g_idx` int32 `[K]`; `checkpoint_format` v1 stores
//!   `zero - 1` (the kernel adds 1 back, so a stored 15 means 16), v2 (`gptq_v2`)
//!   stores the zero itself.
//! * [`Wna16Weight::from_awq`] reads AutoAWQ GEMM `qweight` int32 `[K, N/8]`
//!   packed along N in the interleaved order: nibble `i` of word `w` holds
//!   column `8w + [0, 2, 4, 6, 1, 3, 5, 7][i]`; `qzeros` `[K/G, N/8]` the
//!   same; `scales` `[K/G, N]`; `w = (q - z)·s`.
//! * [`Wna16Weight::from_compressed_tensors`] reads `pack-quantized`
//!   `weight_packed` int32 `[N, ceil(K/pack)]` (packed along K, values stored
//!   as `q + 2^(bits-1)`), `weight_scale` `[N, K/G]`, optional
//!   `weight_zero_point` int32 `[ceil(N/pack), K/G]` (packed along N, same
//!   offset), optional `weight_g_idx`.

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{bail, Result};
use crate::mem::AlignedBytes;
use crate::ops::check;
use crate::ops::linear::inner_contiguous;
use crate::sys;
use crate::tensor::{TensorView, TensorViewMut};

/// An owned float vector of one of the scale dtypes.
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleVec {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl ScaleVec {
    fn zeros(dtype: DType, n: usize) -> ScaleVec {
        match dtype {
            DType::F16 => ScaleVec::F16(vec![f16::ZERO; n]),
            DType::BF16 => ScaleVec::BF16(vec![bf16::ZERO; n]),
            _ => ScaleVec::F32(vec![0.0; n]),
        }
    }
    fn set(&mut self, i: usize, v: f32) {
        match self {
            ScaleVec::F32(x) => x[i] = v,
            ScaleVec::F16(x) => x[i] = f16::from_f32(v),
            ScaleVec::BF16(x) => x[i] = bf16::from_f32(v),
        }
    }
    pub fn dtype(&self) -> DType {
        match self {
            ScaleVec::F32(_) => DType::F32,
            ScaleVec::F16(_) => DType::F16,
            ScaleVec::BF16(_) => DType::BF16,
        }
    }
    fn view(&self, shape: &[usize]) -> TensorView<'_> {
        match self {
            ScaleVec::F32(v) => TensorView::new(v, shape),
            ScaleVec::F16(v) => TensorView::new(v, shape),
            ScaleVec::BF16(v) => TensorView::new(v, shape),
        }
        .expect("canonical scale buffers match their shape")
    }
}

/// GPTQ zero-point convention (`checkpoint_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GptqFormat {
    /// `gptq` (AutoGPTQ): the stored zero is `zero - 1`.
    V1,
    /// `gptq_v2` (GPTQModel): the stored zero is the zero.
    V2,
}

/// A weight-only quantized linear weight in the canonical layout (see the
/// [module docs](self)). The codes start on a 4 KiB page boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct Wna16Weight {
    bits: u32,
    n: usize,
    k: usize,
    group_size: usize,
    /// On a 4 KiB page boundary: the decode kernels stream rows (1-4 KiB)
    /// as 64-byte blocks, one row stream per page (int4 K = 4096 decode
    /// measured ~10% slower from a plain `Vec<u8>`).
    qweight: AlignedBytes,
    scales: ScaleVec,
    zeros: Option<ScaleVec>,
    perm: Option<Vec<i32>>,
}

/// Bytes per canonical weight row.
pub fn wna16_row_bytes(bits: u32, k: usize) -> usize {
    if bits == 4 {
        64 * k.div_ceil(128)
    } else {
        k
    }
}

/// Byte and shift of code `k` in a canonical 4-bit row.
fn int4_slot(k: usize) -> (usize, u32) {
    let (b, r) = (k / 128, k % 128);
    (b * 64 + (r % 16) * 4 + r / 32, 4 * ((r / 16) % 2) as u32)
}

pub(crate) fn check_group_size(bits: u32, k: usize, g: usize) -> Result<()> {
    if bits != 4 && bits != 8 {
        bail!(Unsupported, "weight bits must be 4 or 8, got {bits}");
    }
    if bits == 4 && k % 32 != 0 {
        bail!(
            Unsupported,
            "4-bit weights need K to be a multiple of 32, got K = {k}"
        );
    }
    if g == 0 || k % g != 0 || (g != k && g % 32 != 0) {
        bail!(
            ShapeMismatch,
            "group size {g} must divide K = {k} and be a multiple of 32 (or K itself)"
        );
    }
    Ok(())
}

/// Validates a permutation of `0..k`.
fn check_perm(perm: &[i32], k: usize, name: &str) -> Result<()> {
    let mut seen = vec![false; k];
    for (j, &p) in perm.iter().enumerate() {
        if p < 0 || p as usize >= k {
            bail!(IndexOutOfRange, "`{name}`[{j}] = {p} is outside 0..{k}");
        }
        if std::mem::replace(&mut seen[p as usize], true) {
            bail!(InvalidValue, "`{name}` repeats input channel {p}");
        }
    }
    Ok(())
}

/// `g_idx` → (group size, perm or None when it is the trivial k / G map).
fn groups_from_g_idx(
    g_idx: &TensorView,
    k: usize,
    groups: usize,
) -> Result<(usize, Option<Vec<i32>>)> {
    check::on_cpu(&[("g_idx", g_idx.layout())])?;
    check::index_vector(g_idx.layout(), "g_idx")?;
    if g_idx.shape()[0] != k {
        bail!(
            ShapeMismatch,
            "`g_idx` has {} entries but K = {k}",
            g_idx.shape()[0]
        );
    }
    if groups == 0 || k % groups != 0 {
        bail!(
            ShapeMismatch,
            "K = {k} is not a multiple of the {groups} groups of the scales"
        );
    }
    let gs = k / groups;
    let g: Vec<i64> = check::vector_values(g_idx).collect();
    let mut count = vec![0usize; groups];
    for (i, &v) in g.iter().enumerate() {
        if v < 0 || v as usize >= groups {
            bail!(IndexOutOfRange, "`g_idx`[{i}] = {v} is outside 0..{groups}");
        }
        count[v as usize] += 1;
    }
    if let Some(bad) = count.iter().position(|&c| c != gs) {
        bail!(
            Unsupported,
            "`g_idx` puts {} input channels in group {bad}; every group must have {gs}",
            count[bad]
        );
    }
    if g.iter().enumerate().all(|(i, &v)| v as usize == i / gs) {
        return Ok((gs, None));
    }
    let mut perm: Vec<i32> = (0..k as i32).collect();
    perm.sort_by_key(|&i| g[i as usize]); // stable: channel order within a group
    Ok((gs, Some(perm)))
}

fn check_float_2d(t: &TensorView, name: &str, shape: [usize; 2]) -> Result<()> {
    check::on_cpu(&[(name, t.layout())])?;
    check::dtype_in(t.layout(), name, &[DType::F32, DType::F16, DType::BF16])?;
    if t.shape() != shape {
        bail!(
            ShapeMismatch,
            "`{name}` must have shape {shape:?}, got {:?}",
            t.shape()
        );
    }
    Ok(())
}

fn check_i32_2d(t: &TensorView, name: &str, shape: [usize; 2]) -> Result<()> {
    check::on_cpu(&[(name, t.layout())])?;
    check::dtype_in(t.layout(), name, &[DType::I32])?;
    if t.shape() != shape {
        bail!(
            ShapeMismatch,
            "`{name}` must have shape {shape:?} (int32 packed), got {:?}",
            t.shape()
        );
    }
    Ok(())
}

fn word(t: &TensorView, r: usize, c: usize) -> u32 {
    t.get_i64(&[r, c]) as u32
}

impl Wna16Weight {
    /// Builds a canonical weight from unpacked codes.
    ///
    /// * `codes`: `N·K` unsigned codes, row-major `[N, K]` in canonical
    ///   column order (each `< 2^bits`).
    /// * `scales`: `[N, K/G]` f32/f16/bf16; `zeros`: the same shape and dtype
    ///   (integer values), or `None` for the implicit `2^(bits-1)`.
    /// * `perm`: `[K]` input channel of each canonical column, or `None`.
    #[allow(clippy::too_many_arguments)]
    pub fn from_codes(
        n: usize,
        k: usize,
        bits: u32,
        codes: &[u8],
        scales: &TensorView,
        zeros: Option<&TensorView>,
        perm: Option<Vec<i32>>,
    ) -> Result<Wna16Weight> {
        if codes.len() != n * k {
            bail!(
                ShapeMismatch,
                "`codes` has {} values, expected N·K = {}",
                codes.len(),
                n * k
            );
        }
        if scales.ndim() != 2 || scales.shape()[0] != n {
            bail!(
                ShapeMismatch,
                "`scales` must be [N = {n}, groups], got {:?}",
                scales.shape()
            );
        }
        let groups = scales.shape()[1];
        let gs = k.checked_div(groups).unwrap_or(0);
        if groups == 0 || gs * groups != k {
            bail!(
                ShapeMismatch,
                "K = {k} is not a whole number of the {groups} groups of `scales`"
            );
        }
        check_group_size(bits, k, gs)?;
        check_float_2d(scales, "scales", [n, groups])?;
        if let Some(z) = zeros {
            check_float_2d(z, "zeros", [n, groups])?;
        }
        if let Some(p) = &perm {
            if p.len() != k {
                bail!(
                    ShapeMismatch,
                    "`perm` has {} entries, expected K = {k}",
                    p.len()
                );
            }
            check_perm(p, k, "perm")?;
        }
        let max = 1u32 << bits;
        if let Some(i) = codes.iter().position(|&c| c as u32 >= max) {
            bail!(
                InvalidValue,
                "code {} at [{}][{}] does not fit {bits} bits",
                codes[i],
                i / k.max(1),
                i % k.max(1)
            );
        }
        let rb = wna16_row_bytes(bits, k);
        let mut qweight = AlignedBytes::zeroed(n * rb, 4096);
        for r in 0..n {
            let (src, dst) = (
                &codes[r * k..(r + 1) * k],
                &mut qweight[r * rb..(r + 1) * rb],
            );
            if bits == 8 {
                dst.copy_from_slice(src);
            } else {
                for (kk, &c) in src.iter().enumerate() {
                    let (b, s) = int4_slot(kk);
                    dst[b] |= c << s;
                }
            }
        }
        let copy = |t: &TensorView| {
            let mut v = ScaleVec::zeros(t.dtype(), n * groups);
            for i in 0..n * groups {
                v.set(i, t.get_f32(&[i / groups, i % groups]));
            }
            v
        };
        Ok(Wna16Weight {
            bits,
            n,
            k,
            group_size: gs,
            qweight,
            scales: copy(scales),
            zeros: zeros.map(copy),
            perm,
        })
    }

    /// Imports an AutoGPTQ / GPTQModel checkpoint (4 or 8 bits); see the
    /// [module docs](self) for the layout. `g_idx` that is not the trivial
    /// `k / G` map (act-order) becomes the canonical `perm`.
    pub fn from_gptq(
        qweight: &TensorView,
        qzeros: &TensorView,
        scales: &TensorView,
        g_idx: Option<&TensorView>,
        bits: u32,
        format: GptqFormat,
    ) -> Result<Wna16Weight> {
        if bits != 4 && bits != 8 {
            bail!(Unsupported, "GPTQ bits must be 4 or 8, got {bits}");
        }
        let pack = (32 / bits) as usize;
        if qweight.ndim() != 2 || scales.ndim() != 2 {
            bail!(
                ShapeMismatch,
                "GPTQ `qweight` [K/{pack}, N] and `scales` [groups, N] must be 2-D, got {:?} and {:?}",
                qweight.shape(),
                scales.shape()
            );
        }
        let (k, n, groups) = (
            qweight.shape()[0] * pack,
            qweight.shape()[1],
            scales.shape()[0],
        );
        check_i32_2d(qweight, "qweight", [k / pack, n])?;
        check_float_2d(scales, "scales", [groups, n])?;
        if n % pack != 0 {
            bail!(ShapeMismatch, "GPTQ N = {n} is not a multiple of {pack}");
        }
        check_i32_2d(qzeros, "qzeros", [groups, n / pack])?;
        let (gs, perm) = match g_idx {
            Some(g) => groups_from_g_idx(g, k, groups)?,
            None if groups > 0 && k % groups == 0 => (k / groups, None),
            None => bail!(
                ShapeMismatch,
                "K = {k} is not a multiple of the {groups} groups of `scales`"
            ),
        };
        check_group_size(bits, k, gs)?;
        let mask = (1u32 << bits) - 1;
        let offset = if format == GptqFormat::V1 { 1.0 } else { 0.0 };
        let src_col = |j: usize| perm.as_ref().map_or(j, |p| p[j] as usize);
        let mut codes = vec![0u8; n * k];
        for j in 0..k {
            let kk = src_col(j);
            let shift = bits * (kk % pack) as u32;
            for c in 0..n {
                codes[c * k + j] = ((word(qweight, kk / pack, c) >> shift) & mask) as u8;
            }
        }
        let mut s = ScaleVec::zeros(scales.dtype(), n * groups);
        let mut z = ScaleVec::zeros(scales.dtype(), n * groups);
        for g in 0..groups {
            for c in 0..n {
                s.set(c * groups + g, scales.get_f32(&[g, c]));
                let zq = (word(qzeros, g, c / pack) >> (bits * (c % pack) as u32)) & mask;
                z.set(c * groups + g, zq as f32 + offset);
            }
        }
        Self::assemble(bits, n, k, gs, codes, s, Some(z), perm)
    }

    /// Imports an AutoAWQ (GEMM layout, 4-bit, zero points) checkpoint.
    pub fn from_awq(
        qweight: &TensorView,
        qzeros: &TensorView,
        scales: &TensorView,
    ) -> Result<Wna16Weight> {
        const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
        if qweight.ndim() != 2 || scales.ndim() != 2 {
            bail!(
                ShapeMismatch,
                "AWQ `qweight` [K, N/8] and `scales` [groups, N] must be 2-D, got {:?} and {:?}",
                qweight.shape(),
                scales.shape()
            );
        }
        let (k, n, groups) = (
            qweight.shape()[0],
            qweight.shape()[1] * 8,
            scales.shape()[0],
        );
        check_i32_2d(qweight, "qweight", [k, n / 8])?;
        check_float_2d(scales, "scales", [groups, n])?;
        check_i32_2d(qzeros, "qzeros", [groups, n / 8])?;
        if groups == 0 || k % groups != 0 {
            bail!(
                ShapeMismatch,
                "K = {k} is not a multiple of the {groups} groups of `scales`"
            );
        }
        let gs = k / groups;
        check_group_size(4, k, gs)?;
        let mut codes = vec![0u8; n * k];
        for kk in 0..k {
            for w in 0..n / 8 {
                let v = word(qweight, kk, w);
                for (i, &o) in ORDER.iter().enumerate() {
                    codes[(8 * w + o) * k + kk] = ((v >> (4 * i)) & 0xF) as u8;
                }
            }
        }
        let mut s = ScaleVec::zeros(scales.dtype(), n * groups);
        let mut z = ScaleVec::zeros(scales.dtype(), n * groups);
        for g in 0..groups {
            for w in 0..n / 8 {
                let v = word(qzeros, g, w);
                for (i, &o) in ORDER.iter().enumerate() {
                    let c = 8 * w + o;
                    s.set(c * groups + g, scales.get_f32(&[g, c]));
                    z.set(c * groups + g, ((v >> (4 * i)) & 0xF) as f32);
                }
            }
        }
        Self::assemble(4, n, k, gs, codes, s, Some(z), None)
    }

    /// Imports a compressed-tensors `pack-quantized` weight (4 or 8 bits,
    /// group or channel strategy). `weight_shape` is the checkpoint's
    /// `weight_shape` `[N, K]`.
    pub fn from_compressed_tensors(
        weight_packed: &TensorView,
        weight_scale: &TensorView,
        weight_zero_point: Option<&TensorView>,
        weight_g_idx: Option<&TensorView>,
        weight_shape: [usize; 2],
        num_bits: u32,
    ) -> Result<Wna16Weight> {
        if num_bits != 4 && num_bits != 8 {
            bail!(Unsupported, "num_bits must be 4 or 8, got {num_bits}");
        }
        let pack = (32 / num_bits) as usize;
        let [n, k] = weight_shape;
        check_i32_2d(weight_packed, "weight_packed", [n, k.div_ceil(pack)])?;
        if weight_scale.ndim() != 2 {
            bail!(
                ShapeMismatch,
                "`weight_scale` must be [N, groups], got {:?}",
                weight_scale.shape()
            );
        }
        let groups = weight_scale.shape()[1];
        check_float_2d(weight_scale, "weight_scale", [n, groups])?;
        if let Some(zp) = weight_zero_point {
            check_i32_2d(zp, "weight_zero_point", [n.div_ceil(pack), groups])?;
        }
        let (gs, perm) = match weight_g_idx {
            Some(g) => groups_from_g_idx(g, k, groups)?,
            None if groups > 0 && k % groups == 0 => (k / groups, None),
            None => bail!(
                ShapeMismatch,
                "K = {k} is not a multiple of the {groups} groups of `weight_scale`"
            ),
        };
        check_group_size(num_bits, k, gs)?;
        let mask = (1u32 << num_bits) - 1;
        let src_col = |j: usize| perm.as_ref().map_or(j, |p| p[j] as usize);
        let mut codes = vec![0u8; n * k];
        for c in 0..n {
            for j in 0..k {
                let kk = src_col(j);
                let v = word(weight_packed, c, kk / pack) >> (num_bits * (kk % pack) as u32);
                codes[c * k + j] = (v & mask) as u8;
            }
        }
        let mut s = ScaleVec::zeros(weight_scale.dtype(), n * groups);
        for c in 0..n {
            for g in 0..groups {
                s.set(c * groups + g, weight_scale.get_f32(&[c, g]));
            }
        }
        let z = weight_zero_point.map(|zp| {
            let mut z = ScaleVec::zeros(weight_scale.dtype(), n * groups);
            for c in 0..n {
                for g in 0..groups {
                    let v = word(zp, c / pack, g) >> (num_bits * (c % pack) as u32);
                    z.set(c * groups + g, (v & mask) as f32);
                }
            }
            z
        });
        Self::assemble(num_bits, n, k, gs, codes, s, z, perm)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        bits: u32,
        n: usize,
        k: usize,
        gs: usize,
        codes: Vec<u8>,
        scales: ScaleVec,
        zeros: Option<ScaleVec>,
        perm: Option<Vec<i32>>,
    ) -> Result<Wna16Weight> {
        let groups = k / gs;
        let sv = scales.view(&[n, groups]);
        let zv = zeros.as_ref().map(|z| z.view(&[n, groups]));
        Wna16Weight::from_codes(n, k, bits, &codes, &sv, zv.as_ref(), perm)
    }

    pub fn bits(&self) -> u32 {
        self.bits
    }
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn group_size(&self) -> usize {
        self.group_size
    }
    /// uint8 `[N, row_bytes]` codes.
    pub fn qweight(&self) -> TensorView<'_> {
        TensorView::new(
            &self.qweight[..],
            &[self.n, wna16_row_bytes(self.bits, self.k)],
        )
        .expect("canonical codes match their shape")
    }
    /// `[N, K/G]` scales.
    pub fn scales(&self) -> TensorView<'_> {
        self.scales.view(&[self.n, self.k / self.group_size])
    }
    /// `[N, K/G]` zeros, or `None` (implicit `2^(bits-1)`).
    pub fn zeros(&self) -> Option<TensorView<'_>> {
        self.zeros
            .as_ref()
            .map(|z| z.view(&[self.n, self.k / self.group_size]))
    }
    /// int32 `[K]` act-order permutation, or `None`.
    pub fn perm(&self) -> Option<TensorView<'_>> {
        self.perm
            .as_ref()
            .map(|p| TensorView::new(p, &[self.k]).expect("perm has K entries"))
    }

    /// Unpacked code of `(n, canonical column j)`.
    pub fn code(&self, n: usize, j: usize) -> u8 {
        let row = &self.qweight[n * wna16_row_bytes(self.bits, self.k)..];
        if self.bits == 8 {
            row[j]
        } else {
            let (b, s) = int4_slot(j);
            (row[b] >> s) & 0xF
        }
    }

    /// Copies the canonical tensors into caller-owned outputs (the C ABI and
    /// Python importers): `qweight` uint8 `[N, row_bytes]`, `scales` and
    /// `zeros` `[N, K/G]` of this weight's scale dtype, `perm` int32 `[K]`.
    /// Without zero points `zeros` is filled with `2^(bits-1)`; without a
    /// permutation `perm` gets the identity. `zeros` / `perm` may be `None`
    /// only when the weight has none. Returns whether the weight is act-order
    /// (has a permutation). Nothing is written unless every output is valid.
    pub fn write_to(
        &self,
        qweight: &mut TensorViewMut,
        scales: &mut TensorViewMut,
        zeros: Option<&mut TensorViewMut>,
        perm: Option<&mut TensorViewMut>,
    ) -> Result<bool> {
        let groups = self.k / self.group_size;
        let sd = self.scales.dtype();
        let rb = wna16_row_bytes(self.bits, self.k);
        let want =
            |t: &TensorViewMut, name: &str, dtypes: &[DType], shape: &[usize]| -> Result<()> {
                check::on_cpu(&[(name, t.layout())])?;
                check::dtype_in(t.layout(), name, dtypes)?;
                if t.shape() != shape {
                    bail!(
                        ShapeMismatch,
                        "`{name}` must have shape {shape:?}, got {:?}",
                        t.shape()
                    );
                }
                Ok(())
            };
        want(qweight, "qweight", &[DType::U8, DType::I8], &[self.n, rb])?;
        want(scales, "scales", &[sd], &[self.n, groups])?;
        if let Some(z) = &zeros {
            want(z, "zeros", &[sd], &[self.n, groups])?;
        } else if self.zeros.is_some() {
            bail!(
                InvalidArgument,
                "the imported weight has zero points: `zeros` is required"
            );
        }
        if let Some(p) = &perm {
            want(p, "perm", &[DType::I32], &[self.k])?;
        } else if self.perm.is_some() {
            bail!(
                InvalidArgument,
                "the imported weight is act-order: `perm` is required"
            );
        }
        for r in 0..self.n {
            for b in 0..rb {
                qweight.set_bits(&[r, b], self.qweight[r * rb + b] as u64);
            }
            for g in 0..groups {
                scales.set_bits(&[r, g], self.scales().get_bits(&[r, g]));
            }
        }
        if let Some(z) = zeros {
            let zero0 = (1u32 << (self.bits - 1)) as f32;
            for r in 0..self.n {
                for g in 0..groups {
                    match self.zeros() {
                        Some(src) => z.set_bits(&[r, g], src.get_bits(&[r, g])),
                        None => z.set_f32(&[r, g], zero0),
                    }
                }
            }
        }
        if let Some(p) = perm {
            for j in 0..self.k {
                let v = self.perm.as_ref().map_or(j as i32, |q| q[j]);
                p.set_bits(&[j], v as u32 as u64);
            }
        }
        Ok(self.perm.is_some())
    }

    /// The f32 weights `[N, K]` in input-channel order (see [`wna16_dequantize`]).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n * self.k];
        let zeros = self.zeros();
        let perm = self.perm();
        wna16_dequantize(
            &self.qweight(),
            &self.scales(),
            zeros.as_ref(),
            perm.as_ref(),
            &mut TensorViewMut::new(&mut out, &[self.n, self.k]).expect("[N, K] buffer"),
            self.bits,
        )
        .expect("a canonical weight is valid");
        out
    }
}

/// The validated shape of canonical weight tensors: (N, K, group size).
pub(crate) fn check_canonical(
    qweight: &TensorView,
    scales: &TensorView,
    zeros: Option<&TensorView>,
    perm: Option<&TensorView>,
    k: usize,
    bits: u32,
) -> Result<(usize, usize)> {
    check::on_cpu(&[("qweight", qweight.layout()), ("scales", scales.layout())])?;
    if bits != 4 && bits != 8 {
        bail!(Unsupported, "bits must be 4 or 8, got {bits}");
    }
    check::rank(qweight.layout(), "qweight", 2, "[N, row_bytes]")?;
    check::dtype_in(qweight.layout(), "qweight", &[DType::U8, DType::I8])?;
    inner_contiguous(qweight.layout(), "qweight")?;
    let n = qweight.shape()[0];
    let rb = wna16_row_bytes(bits, k);
    if qweight.shape()[1] != rb {
        bail!(
            ShapeMismatch,
            "`qweight` rows hold {} bytes but {bits}-bit codes for K = {k} take {rb}",
            qweight.shape()[1]
        );
    }
    if scales.ndim() != 2 || scales.shape()[0] != n {
        bail!(
            ShapeMismatch,
            "`scales` must be [N = {n}, groups], got {:?}",
            scales.shape()
        );
    }
    let groups = scales.shape()[1];
    if groups == 0 || k % groups != 0 {
        bail!(
            ShapeMismatch,
            "K = {k} is not a multiple of the {groups} groups of `scales`"
        );
    }
    let gs = k / groups;
    check_group_size(bits, k, gs)?;
    check_float_2d(scales, "scales", [n, groups])?;
    inner_contiguous(scales.layout(), "scales")?;
    if let Some(z) = zeros {
        check_float_2d(z, "zeros", [n, groups])?;
        check::same_dtype(scales.layout(), "scales", z.layout(), "zeros")?;
        if z.strides() != scales.strides() {
            bail!(
                InvalidStride,
                "`zeros` strides {:?} differ from `scales` strides {:?}",
                z.strides(),
                scales.strides()
            );
        }
    }
    if let Some(p) = perm {
        check::on_cpu(&[("perm", p.layout())])?;
        check::rank(p.layout(), "perm", 1, "[K]")?;
        check::dtype_in(p.layout(), "perm", &[DType::I32])?;
        inner_contiguous(p.layout(), "perm")?;
        if p.shape()[0] != k {
            bail!(
                ShapeMismatch,
                "`perm` has {} entries, expected K = {k}",
                p.shape()[0]
            );
        }
        let v: Vec<i32> = (0..k).map(|i| p.get_i64(&[i]) as i32).collect();
        check_perm(&v, k, "perm")?;
    }
    Ok((n, gs))
}

/// Dequantizes canonical weight tensors into `out` `[N, K]` (f32/f16/bf16)
/// in input-channel order: `out[n][perm[j]] = (code - zero) · scale`, computed
/// in f32 and rounded once to `out`'s dtype. Arguments as
/// [`wna16_linear`](crate::wna16_linear).
///
/// ```
/// use xpu_ops::{wna16_dequantize, TensorView, TensorViewMut, Wna16Weight};
/// let (n, k) = (2, 32);
/// let codes: Vec<u8> = (0..n * k).map(|i| (i % 16) as u8).collect();
/// let scales = [0.5f32, 0.25];
/// let w = Wna16Weight::from_codes(n, k, 4, &codes, &TensorView::new(&scales, &[2, 1])?, None, None)?;
/// let mut out = vec![0f32; n * k];
/// wna16_dequantize(&w.qweight(), &w.scales(), None, None,
///     &mut TensorViewMut::new(&mut out, &[n, k])?, 4)?;
/// assert_eq!(out[3], (3.0 - 8.0) * 0.5);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn wna16_dequantize(
    qweight: &TensorView,
    scales: &TensorView,
    zeros: Option<&TensorView>,
    perm: Option<&TensorView>,
    out: &mut TensorViewMut,
    bits: u32,
) -> Result<()> {
    check::on_cpu(&[("out", out.layout())])?;
    check::rank(out.layout(), "out", 2, "[N, K]")?;
    check::dtype_in(out.layout(), "out", &[DType::F32, DType::F16, DType::BF16])?;
    let k = out.shape()[1];
    let (n, gs) = check_canonical(qweight, scales, zeros, perm, k, bits)?;
    if out.shape()[0] != n {
        bail!(
            ShapeMismatch,
            "`out` must be [N = {n}, K = {k}], got {:?}",
            out.shape()
        );
    }
    crate::ops::linear::check_out_alias(
        out,
        &[
            ("qweight", qweight.as_ptr(), qweight.layout()),
            ("scales", scales.as_ptr(), scales.layout()),
        ],
    )?;
    let zero0 = (1u32 << (bits - 1)) as f32;
    for r in 0..n {
        for j in 0..k {
            let code = if bits == 8 {
                qweight.get_i64(&[r, j]) as u8
            } else {
                let (b, s) = int4_slot(j);
                ((qweight.get_i64(&[r, b]) as u8) >> s) & 0xF
            };
            let g = j / gs;
            let z = zeros.map_or(zero0, |z| z.get_f32(&[r, g]));
            let w = (code as f32 - z) * scales.get_f32(&[r, g]);
            let col = perm.map_or(j, |p| p.get_i64(&[j]) as usize);
            out.set_f32(&[r, col], w);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// W8A8 int8: activation quantization and the int8 × int8 GEMM.

/// `[M, K]` rows of an activation (or `[K]`: one row).
fn quant_rows(input: &TensorView, out: &TensorViewMut) -> Result<(usize, usize, usize, usize)> {
    let (il, ol) = (input.layout(), out.layout());
    check::on_cpu(&[("input", il), ("out", ol)])?;
    if il.ndim() != 1 && il.ndim() != 2 {
        bail!(
            ShapeMismatch,
            "`input` must be [num_tokens, hidden_size] or [hidden_size], got {:?}",
            il.shape
        );
    }
    check::dtype_in(il, "input", &[DType::F32, DType::F16, DType::BF16])?;
    check::dtype_in(ol, "out", &[DType::I8])?;
    if ol.shape != il.shape {
        bail!(
            ShapeMismatch,
            "`out` must have `input`'s shape {:?}, got {:?}",
            il.shape,
            ol.shape
        );
    }
    inner_contiguous(il, "input")?;
    inner_contiguous(ol, "out")?;
    let k = *il.shape.last().expect("rank >= 1");
    let m = if il.ndim() == 2 { il.shape[0] } else { 1 };
    let (xs, os) = if il.ndim() == 2 {
        (il.strides[0], ol.strides[0])
    } else {
        (k, k)
    };
    if m > 1 && k > 0 && os < k {
        bail!(
            InvalidStride,
            "`out` rows overlap: row stride {os} < hidden_size {k}"
        );
    }
    crate::ops::linear::check_out_alias(out, &[("input", input.as_ptr(), il)])?;
    Ok((m, k, xs, os))
}

/// A tensor of exactly `want` elements along one dimension (others 1):
/// returns the element stride between consecutive entries.
fn vector_like(l: &crate::tensor::Layout, name: &str, want: usize, what: &str) -> Result<usize> {
    let ok = l.numel() == want && l.shape.iter().filter(|&&d| d != 1).count() <= 1 && l.ndim() >= 1;
    if !ok {
        bail!(
            ShapeMismatch,
            "`{name}` must hold {want} values ({what}) along one dimension, got shape {:?}",
            l.shape
        );
    }
    Ok(l.shape
        .iter()
        .zip(&l.strides)
        .find(|(&d, _)| d != 1)
        .map_or(1, |(_, &s)| s))
}

fn run_int8_quant(args: sys::xk_int8_quant_args) {
    let f = crate::platform::kernels().int8_quant.expect("int8_quant");
    let m = args.m as usize;
    let min_chunk = (64 * 1024 / (args.k as usize).max(1)).max(1);
    let a = crate::threading::Shared(args);
    crate::threading::grid(m, min_chunk, |r| {
        // SAFETY: validated arguments; rows write disjoint outputs.
        unsafe { f(a.get(), r.start as i64, r.end as i64) }
    });
}

/// vLLM `static_scaled_int8_quant`: `out = sat8(round_even(input / scale))`,
/// or with a zero point `sat8(sat32(round_even(input / scale)) + azp)`.
///
/// * `out`: int8, `input`'s shape; `input`: `[num_tokens, hidden_size]` or
///   `[hidden_size]`, f32/f16/bf16, hidden contiguous.
/// * `scale`: one f32 (finite, > 0); `azp`: one int32, or `None`.
///
/// Bit-exact: the same f32 division and rounding as upstream; NaN becomes 0.
///
/// ```
/// use xpu_ops::{static_scaled_int8_quant, TensorView, TensorViewMut};
/// let x = [1.0f32, -2.5, 300.0, 0.25];
/// let mut q = [0i8; 4];
/// static_scaled_int8_quant(&mut TensorViewMut::new(&mut q, &[1, 4])?, &TensorView::new(&x, &[1, 4])?,
///     &TensorView::new(&[0.5f32], &[1])?, None)?;
/// assert_eq!(q, [2, -5, 127, 0]); // 0.5 rounds to even
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn static_scaled_int8_quant(
    out: &mut TensorViewMut,
    input: &TensorView,
    scale: &TensorView,
    azp: Option<&TensorView>,
) -> Result<()> {
    let _span = crate::trace::op("static_scaled_int8_quant", &[("input", input.layout())]);
    let (m, k, xs, os) = quant_rows(input, out)?;
    check::on_cpu(&[("scale", scale.layout())])?;
    check::dtype_in(scale.layout(), "scale", &[DType::F32])?;
    if scale.numel() != 1 {
        bail!(
            ShapeMismatch,
            "`scale` must hold one value, got shape {:?}",
            scale.shape()
        );
    }
    let s = scale.get_f32(&vec![0; scale.ndim()]);
    if !s.is_finite() || s <= 0.0 {
        bail!(InvalidValue, "`scale` = {s} must be finite and positive");
    }
    if let Some(z) = azp {
        check::on_cpu(&[("azp", z.layout())])?;
        check::dtype_in(z.layout(), "azp", &[DType::I32])?;
        if z.numel() != 1 {
            bail!(
                ShapeMismatch,
                "`azp` must hold one value, got shape {:?}",
                z.shape()
            );
        }
    }
    let args = sys::xk_int8_quant_args {
        m: m as i64,
        k: k as i64,
        x: input.as_ptr().cast(),
        x_stride: xs as i64,
        x_dtype: input.dtype().xk(),
        out: out.as_mut_ptr().cast(),
        out_stride: os as i64,
        scale: scale.as_ptr() as *mut f32,
        azp: azp.map_or(std::ptr::null_mut(), |z| z.as_ptr() as *mut i32),
        scale_stride: 0,
        azp_stride: 0,
        is_static: 1,
    };
    run_int8_quant(args);
    Ok(())
}

/// vLLM `dynamic_scaled_int8_quant`: per-token scales (and zero points).
///
/// * Symmetric (`azp = None`): `scale = absmax / 127`, `out = sat8(round_even(input
///   · (127 / absmax)))`; an all-zero row gets scale 0 and zeros.
/// * Asymmetric: `scale = (max - min) / 255`, `azp = round_even(-128 - min / scale)`,
///   `out = sat8(round_even(input / scale) + azp)`; a constant row `c` gets
///   `scale = |c| / 127` (1 for 0) so it still dequantizes to `c`.
///
/// `scales`: f32 with `num_tokens` values (`[M]` or `[M, 1]`), written;
/// `azp`: int32 likewise, written. Other arguments as
/// [`static_scaled_int8_quant`]. NaN inputs are skipped by min/max and
/// quantize to 0.
///
/// ```
/// use xpu_ops::{dynamic_scaled_int8_quant, TensorView, TensorViewMut};
/// let x = [1.0f32, -2.0, 0.5, 4.0];
/// let (mut q, mut s) = ([0i8; 4], [0f32; 1]);
/// dynamic_scaled_int8_quant(&mut TensorViewMut::new(&mut q, &[1, 4])?, &TensorView::new(&x, &[1, 4])?,
///     &mut TensorViewMut::new(&mut s, &[1, 1])?, None)?;
/// assert_eq!((q, s[0]), ([32, -64, 16, 127], 4.0 / 127.0));
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn dynamic_scaled_int8_quant(
    out: &mut TensorViewMut,
    input: &TensorView,
    scales: &mut TensorViewMut,
    azp: Option<&mut TensorViewMut>,
) -> Result<()> {
    let _span = crate::trace::op("dynamic_scaled_int8_quant", &[("input", input.layout())]);
    let (m, k, xs, os) = quant_rows(input, out)?;
    check::on_cpu(&[("scales", scales.layout())])?;
    check::dtype_in(scales.layout(), "scales", &[DType::F32])?;
    let ss = vector_like(scales.layout(), "scales", m, "one per token")?;
    let mut outs: Vec<(&str, *const u8, &crate::tensor::Layout)> = vec![
        ("input", input.as_ptr(), input.layout()),
        ("out", out.as_ptr(), out.layout()),
    ];
    crate::ops::linear::check_out_alias(scales, &outs)?;
    let (azp_ptr, zs) = match azp {
        Some(z) => {
            check::on_cpu(&[("azp", z.layout())])?;
            check::dtype_in(z.layout(), "azp", &[DType::I32])?;
            let zs = vector_like(z.layout(), "azp", m, "one per token")?;
            outs.push(("scales", scales.as_ptr(), scales.layout()));
            crate::ops::linear::check_out_alias(z, &outs)?;
            (z.as_mut_ptr() as *mut i32, zs)
        }
        None => (std::ptr::null_mut(), 0),
    };
    let args = sys::xk_int8_quant_args {
        m: m as i64,
        k: k as i64,
        x: input.as_ptr().cast(),
        x_stride: xs as i64,
        x_dtype: input.dtype().xk(),
        out: out.as_mut_ptr().cast(),
        out_stride: os as i64,
        scale: scales.as_mut_ptr() as *mut f32,
        azp: azp_ptr,
        scale_stride: ss as i64,
        azp_stride: zs as i64,
        is_static: 0,
    };
    run_int8_quant(args);
    Ok(())
}

/// Largest K whose int8 dot products cannot overflow int32.
pub const INT8_MM_MAX_K: usize = (1 << 17) - 1;

/// vLLM CPU `int8_scaled_mm`: `out = a_scales[m] · b_scales[n] · (a · b)[m, n] + bias[n]`.
///
/// * `out`: `[M, N]` f32/f16/bf16, N contiguous.
/// * `a`: int8 `[M, K]`, K contiguous; `b`: int8 `[K, N]` column-major
///   (stride 1 along K), i.e. an `[N, K]` weight viewed transposed.
/// * `a_scales`: f32, 1 (per tensor) or M (per token) values; `b_scales`: f32,
///   1 or N (per channel) values.
/// * `bias`: `[N]`, `out`'s dtype or f32.
///
/// The int8 dot is exact in int32 (`K <` [`INT8_MM_MAX_K`]` + 1`), then
/// `fl(fl(fl(dot) · a_scale) · b_scale) + bias` in f32, one rounding to `out`:
/// bit-identical on every tier and thread count.
///
/// ```
/// use xpu_ops::{int8_scaled_mm, TensorView, TensorViewMut};
/// let a = [1i8, 2, 3, -4]; // [2, 2]
/// let w = [1i8, 1, 2, -1]; // weight [N = 2, K = 2]; b = wᵀ
/// let mut out = [0f32; 4];
/// int8_scaled_mm(&mut TensorViewMut::new(&mut out, &[2, 2])?, &TensorView::new(&a, &[2, 2])?,
///     &TensorView::strided(&w, &[2, 2], &[1, 2])?, &TensorView::new(&[0.5f32], &[1])?,
///     &TensorView::new(&[1.0f32, 2.0], &[2])?, None)?;
/// assert_eq!(out, [1.5, 0.0, -0.5, 10.0]);
/// # Ok::<(), xpu_ops::Error>(())
/// ```
pub fn int8_scaled_mm(
    out: &mut TensorViewMut,
    a: &TensorView,
    b: &TensorView,
    a_scales: &TensorView,
    b_scales: &TensorView,
    bias: Option<&TensorView>,
) -> Result<()> {
    let _span = crate::trace::op("int8_scaled_mm", &[("a", a.layout()), ("b", b.layout())]);
    int8_mm(out, a, b, a_scales, b_scales, None, None, bias)
}

/// vLLM CPU `int8_scaled_mm_azp`: activations quantized with zero points.
/// `out = a_scales[m] · b_scales[n] · ((a · b)[m, n] - azp[m] · azp_adj[n]) + bias[n]`;
/// with `azp = None` (per-tensor zero point) `azp_adj` already holds
/// `azp · Σ_k b[k][n]` and is subtracted as is.
///
/// * `azp_adj`: int32, N values (usually `Σ_k b[k][n]`); `azp`: int32, M values
///   (from [`dynamic_scaled_int8_quant`]) or `None`.
///
/// Other arguments and numerics as [`int8_scaled_mm`] (the correction is
/// exact in int64 before the conversion to f32).
#[allow(clippy::too_many_arguments)]
pub fn int8_scaled_mm_azp(
    out: &mut TensorViewMut,
    a: &TensorView,
    b: &TensorView,
    a_scales: &TensorView,
    b_scales: &TensorView,
    azp_adj: &TensorView,
    azp: Option<&TensorView>,
    bias: Option<&TensorView>,
) -> Result<()> {
    let _span = crate::trace::op(
        "int8_scaled_mm_azp",
        &[("a", a.layout()), ("b", b.layout())],
    );
    int8_mm(out, a, b, a_scales, b_scales, Some(azp_adj), azp, bias)
}

#[allow(clippy::too_many_arguments)]
fn int8_mm(
    out: &mut TensorViewMut,
    a: &TensorView,
    b: &TensorView,
    a_scales: &TensorView,
    b_scales: &TensorView,
    azp_adj: Option<&TensorView>,
    azp: Option<&TensorView>,
    bias: Option<&TensorView>,
) -> Result<()> {
    let (al, bl, ol) = (a.layout(), b.layout(), out.layout().clone());
    check::on_cpu(&[
        ("out", &ol),
        ("a", al),
        ("b", bl),
        ("a_scales", a_scales.layout()),
        ("b_scales", b_scales.layout()),
    ])?;
    check::rank(al, "a", 2, "[M, K]")?;
    check::rank(bl, "b", 2, "[K, N] (column-major)")?;
    check::rank(&ol, "out", 2, "[M, N]")?;
    check::dtype_in(al, "a", &[DType::I8])?;
    check::dtype_in(bl, "b", &[DType::I8])?;
    check::dtype_in(&ol, "out", &[DType::F32, DType::F16, DType::BF16])?;
    let (m, k, n) = (al.shape[0], al.shape[1], bl.shape[1]);
    if bl.shape[0] != k {
        bail!(
            ShapeMismatch,
            "`b` has K = {} but `a` has K = {k}",
            bl.shape[0]
        );
    }
    if ol.shape != [m, n] {
        bail!(
            ShapeMismatch,
            "`out` must be [M = {m}, N = {n}], got {:?}",
            ol.shape
        );
    }
    if k > INT8_MM_MAX_K {
        bail!(
            Unsupported,
            "K = {k} exceeds {INT8_MM_MAX_K}: int8 dot products could overflow int32"
        );
    }
    inner_contiguous(al, "a")?;
    inner_contiguous(&ol, "out")?;
    if k > 1 && bl.strides[0] != 1 {
        bail!(
            InvalidStride,
            "`b` must be column-major (stride 1 along K), got strides {:?}",
            bl.strides
        );
    }
    if m > 1 && n > 0 && ol.strides[0] < n {
        bail!(
            InvalidStride,
            "`out` rows overlap: row stride {} < N = {n}",
            ol.strides[0]
        );
    }
    for (t, name, count) in [(a_scales, "a_scales", m), (b_scales, "b_scales", n)] {
        check::dtype_in(t.layout(), name, &[DType::F32])?;
        if t.numel() != 1 {
            vector_like(
                t.layout(),
                name,
                count,
                if name == "a_scales" {
                    "1 or M"
                } else {
                    "1 or N"
                },
            )?;
        }
    }
    if let Some(adj) = azp_adj {
        check::on_cpu(&[("azp_adj", adj.layout())])?;
        check::dtype_in(adj.layout(), "azp_adj", &[DType::I32])?;
        if vector_like(adj.layout(), "azp_adj", n, "one per output channel")? != 1 && n > 1 {
            bail!(InvalidStride, "`azp_adj` must be contiguous");
        }
    }
    if let Some(z) = azp {
        check::on_cpu(&[("azp", z.layout())])?;
        check::dtype_in(z.layout(), "azp", &[DType::I32])?;
        vector_like(z.layout(), "azp", m, "one per token")?;
    }
    crate::ops::linear::check_bias(bias, n, ol.dtype)?;
    let mut inputs: Vec<(&str, *const u8, &crate::tensor::Layout)> = vec![
        ("a", a.as_ptr(), al),
        ("b", b.as_ptr(), bl),
        ("a_scales", a_scales.as_ptr(), a_scales.layout()),
        ("b_scales", b_scales.as_ptr(), b_scales.layout()),
    ];
    for (name, t) in [("azp_adj", azp_adj), ("azp", azp), ("bias", bias)] {
        if let Some(t) = t {
            inputs.push((name, t.as_ptr(), t.layout()));
        }
    }
    crate::ops::linear::check_out_alias(out, &inputs)?;
    if m == 0 || n == 0 {
        return Ok(());
    }

    let stride_of = |t: &TensorView, count: usize| -> i64 {
        if t.numel() == 1 && count != 1 {
            0
        } else {
            t.shape()
                .iter()
                .zip(t.strides())
                .find(|(&d, _)| d != 1)
                .map_or(0, |(_, &s)| s as i64)
        }
    };
    let a_stride = if m > 1 { al.strides[0] } else { k };
    // Σ_k a[m][k], for tiers that run the weights as unsigned bytes.
    let a_sum: Vec<i32> = (0..m)
        .map(|i| {
            // SAFETY: row i of a holds k readable int8 values (validated view).
            let row = unsafe {
                std::slice::from_raw_parts((a.as_ptr() as *const i8).add(i * a_stride), k)
            };
            row.iter().map(|&v| v as i32).sum()
        })
        .collect();
    let args = sys::xk_int8_mm_args {
        m: m as i64,
        n: n as i64,
        k: k as i64,
        a: a.as_ptr().cast(),
        a_stride: a_stride as i64,
        b: b.as_ptr().cast(),
        b_stride: if n > 1 {
            bl.strides[1] as i64
        } else {
            k as i64
        },
        a_scales: a_scales.as_ptr().cast(),
        a_scales_stride: stride_of(a_scales, m),
        b_scales: b_scales.as_ptr().cast(),
        b_scales_stride: stride_of(b_scales, n),
        azp_adj: azp_adj.map_or(std::ptr::null(), |t| t.as_ptr().cast()),
        azp: azp.map_or(std::ptr::null(), |t| t.as_ptr().cast()),
        azp_stride: azp.map_or(0, |t| stride_of(t, m)),
        a_sum: a_sum.as_ptr(),
        bias: bias.map_or(std::ptr::null(), |t| t.as_ptr().cast()),
        bias_dtype: bias.map_or(0, |t| t.dtype().xk()),
        out: out.as_mut_ptr().cast(),
        out_stride: if m > 1 {
            ol.strides[0] as i64
        } else {
            n as i64
        },
        out_dtype: ol.dtype.xk(),
    };
    let f = crate::platform::kernels().int8_mm.expect("int8_mm");
    let min_chunk = ((256 * 1024) / k.max(1)).clamp(64, 4096) & !63;
    let sa = crate::threading::Shared(args);
    crate::threading::grid(n, min_chunk, |r| {
        // SAFETY: validated arguments; blocks write disjoint output columns.
        unsafe { f(sa.get(), r.start as i64, r.end as i64) }
    });
    drop(a_sum);
    Ok(())
}
