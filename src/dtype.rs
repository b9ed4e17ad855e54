//! Element types, their DLPack codes, and the reference conversions.
//!
//! The fp8 formats are OCP's: `e4m3fn` (bias 7, no infinities, max 448, NaN
//! 0x7f/0xff) and `e5m2` (bias 15, IEEE-like, max finite 57344). Converting to
//! fp8 rounds to nearest-even and saturates: anything beyond the largest
//! finite value, infinity included, becomes that value; NaN stays NaN. These
//! conversions are written independently of the C kernels (by search over the
//! decoded values) so the tests can hold the kernels to them bit for bit.

use half::{bf16, f16};

use crate::dlpack::{DLDataType, DLDataTypeCode};

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F8E4M3,
    F8E5M2,
    I8,
    U8,
    I32,
    I64,
    Bool,
}

impl DType {
    pub const ALL: [DType; 10] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F8E4M3,
        DType::F8E5M2,
        DType::I8,
        DType::U8,
        DType::I32,
        DType::I64,
        DType::Bool,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
            DType::F8E4M3 | DType::F8E5M2 | DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F8E4M3 => "float8_e4m3fn",
            DType::F8E5M2 => "float8_e5m2",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::Bool => "bool",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::F8E5M2
        )
    }

    pub fn is_fp8(self) -> bool {
        matches!(self, DType::F8E4M3 | DType::F8E5M2)
    }

    /// The DLPack type descriptor (one lane).
    pub fn to_dlpack(self) -> DLDataType {
        let (code, bits) = match self {
            DType::F32 => (DLDataTypeCode::Float, 32),
            DType::F16 => (DLDataTypeCode::Float, 16),
            DType::BF16 => (DLDataTypeCode::Bfloat, 16),
            DType::F8E4M3 => (DLDataTypeCode::Float8E4M3FN, 8),
            DType::F8E5M2 => (DLDataTypeCode::Float8E5M2, 8),
            DType::I8 => (DLDataTypeCode::Int, 8),
            DType::U8 => (DLDataTypeCode::UInt, 8),
            DType::I32 => (DLDataTypeCode::Int, 32),
            DType::I64 => (DLDataTypeCode::Int, 64),
            DType::Bool => (DLDataTypeCode::Bool, 8),
        };
        DLDataType {
            code: code as u8,
            bits,
            lanes: 1,
        }
    }

    /// The dtype of a DLPack descriptor, if this library supports it.
    pub fn from_dlpack(t: DLDataType) -> Option<DType> {
        if t.lanes != 1 {
            return None;
        }
        DType::ALL.into_iter().find(|d| {
            let m = d.to_dlpack();
            m.code == t.code && m.bits == t.bits
        })
    }

    /// The kernel ABI's code for a floating dtype.
    pub(crate) fn xk(self) -> i32 {
        (match self {
            DType::F32 => crate::sys::xk_dtype_XK_F32,
            DType::F16 => crate::sys::xk_dtype_XK_F16,
            DType::BF16 => crate::sys::xk_dtype_XK_BF16,
            DType::F8E4M3 => crate::sys::xk_dtype_XK_F8E4M3,
            DType::F8E5M2 => crate::sys::xk_dtype_XK_F8E5M2,
            other => unreachable!("{} has no kernel float code", other.name()),
        }) as i32
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An fp8 e4m3fn value, stored as its bits.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct F8E4M3(pub u8);

/// An fp8 e5m2 value, stored as its bits.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct F8E5M2(pub u8);

impl F8E4M3 {
    pub fn from_f32(x: f32) -> Self {
        F8E4M3(fp8_encode(x, Fp8Format::E4M3))
    }
    pub fn to_f32(self) -> f32 {
        fp8_decode(self.0, Fp8Format::E4M3)
    }
}

impl F8E5M2 {
    pub fn from_f32(x: f32) -> Self {
        F8E5M2(fp8_encode(x, Fp8Format::E5M2))
    }
    pub fn to_f32(self) -> f32 {
        fp8_decode(self.0, Fp8Format::E5M2)
    }
}

/// A Rust type that can back a tensor view.
///
/// # Safety
/// `DTYPE.size()` must equal `size_of::<Self>()` and every bit pattern the
/// kernels may write must be a valid `Self`.
pub unsafe trait Element: Copy + Send + Sync + 'static {
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {
        $(unsafe impl Element for $t { const DTYPE: DType = DType::$d; })*
    };
}
element!(f32 => F32, f16 => F16, bf16 => BF16, F8E4M3 => F8E4M3, F8E5M2 => F8E5M2,
         i8 => I8, u8 => U8, i32 => I32, i64 => I64);

/// The two fp8 encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Format {
    E4M3,
    E5M2,
}

impl Fp8Format {
    pub fn of(dtype: DType) -> Option<Fp8Format> {
        match dtype {
            DType::F8E4M3 => Some(Fp8Format::E4M3),
            DType::F8E5M2 => Some(Fp8Format::E5M2),
            _ => None,
        }
    }

    fn mantissa_bits(self) -> u32 {
        match self {
            Fp8Format::E4M3 => 3,
            Fp8Format::E5M2 => 2,
        }
    }

    fn bias(self) -> i32 {
        match self {
            Fp8Format::E4M3 => 7,
            Fp8Format::E5M2 => 15,
        }
    }

    /// The encoding of the largest finite value.
    pub fn max_finite_bits(self) -> u8 {
        match self {
            Fp8Format::E4M3 => 0x7e,
            Fp8Format::E5M2 => 0x7b,
        }
    }

    /// The encoding a NaN input produces (sign added).
    pub fn nan_bits(self) -> u8 {
        match self {
            Fp8Format::E4M3 => 0x7f,
            Fp8Format::E5M2 => 0x7e,
        }
    }
}

/// Decodes fp8 bits to f32 from the format's definition.
pub fn fp8_decode(bits: u8, format: Fp8Format) -> f32 {
    let sign = if bits & 0x80 != 0 { -1.0f64 } else { 1.0 };
    let mag = bits & 0x7f;
    let mb = format.mantissa_bits();
    let exp = (mag >> mb) as i32;
    let man = (mag & ((1 << mb) - 1)) as f64;
    let max_exp = (1 << (7 - mb)) - 1;
    match format {
        Fp8Format::E4M3 if mag == 0x7f => return f32::NAN,
        Fp8Format::E5M2 if exp == max_exp => {
            return if man == 0.0 {
                (sign * f64::INFINITY) as f32
            } else {
                f32::NAN
            };
        }
        _ => {}
    }
    let scale = 2f64.powi(mb as i32);
    let v = if exp == 0 {
        man / scale * 2f64.powi(1 - format.bias())
    } else {
        (1.0 + man / scale) * 2f64.powi(exp - format.bias())
    };
    (sign * v) as f32
}

/// Encodes f32 as fp8: the nearest finite value (ties to the even encoding),
/// saturating at the largest finite magnitude; NaN stays NaN.
pub fn fp8_encode(x: f32, format: Fp8Format) -> u8 {
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    if x.is_nan() {
        return sign | format.nan_bits();
    }
    let a = x.abs() as f64;
    let max = format.max_finite_bits();
    if a >= fp8_decode(max, format) as f64 {
        return sign | max;
    }
    // Magnitudes are monotone in the encoding over 0..=max: find the
    // neighbours below and above and pick the nearer (ties: even encoding).
    let (mut lo, mut hi) = (0u8, max);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fp8_decode(mid, format) as f64 <= a {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (dl, dh) = (
        a - fp8_decode(lo, format) as f64,
        fp8_decode(hi, format) as f64 - a,
    );
    let pick = if dl < dh || (dl == dh && lo % 2 == 0) {
        lo
    } else {
        hi
    };
    sign | pick
}

/// Converts f32 to the bits of a floating storage dtype, the way every kernel
/// stores (round to nearest even; fp8 saturating). Returns little-endian bytes
/// in the low `dtype.size()` bytes.
pub fn store_f32(x: f32, dtype: DType) -> u32 {
    match dtype {
        DType::F32 => x.to_bits(),
        DType::F16 => f16::from_f32(x).to_bits() as u32,
        DType::BF16 => bf16::from_f32(x).to_bits() as u32,
        DType::F8E4M3 => fp8_encode(x, Fp8Format::E4M3) as u32,
        DType::F8E5M2 => fp8_encode(x, Fp8Format::E5M2) as u32,
        other => panic!("store_f32: {other} is not a floating dtype"),
    }
}

/// Reads the value of a floating storage dtype from its bits.
pub fn load_f32(bits: u32, dtype: DType) -> f32 {
    match dtype {
        DType::F32 => f32::from_bits(bits),
        DType::F16 => f16::from_bits(bits as u16).to_f32(),
        DType::BF16 => bf16::from_bits(bits as u16).to_f32(),
        DType::F8E4M3 => fp8_decode(bits as u8, Fp8Format::E4M3),
        DType::F8E5M2 => fp8_decode(bits as u8, Fp8Format::E5M2),
        other => panic!("load_f32: {other} is not a floating dtype"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_known_values() {
        assert_eq!(fp8_decode(0x7e, Fp8Format::E4M3), 448.0);
        assert_eq!(fp8_decode(0x7b, Fp8Format::E5M2), 57344.0);
        assert_eq!(fp8_decode(0x01, Fp8Format::E4M3), 2f32.powi(-9));
        assert_eq!(fp8_decode(0x01, Fp8Format::E5M2), 2f32.powi(-16));
        assert_eq!(fp8_encode(1e9, Fp8Format::E4M3), 0x7e);
        assert_eq!(fp8_encode(f32::NEG_INFINITY, Fp8Format::E5M2), 0xfb);
        assert_eq!(fp8_encode(1.0, Fp8Format::E4M3), 0x38);
        // 1 + 1/16 lies halfway between 1 (0x38, even) and 1.125 (0x39).
        assert_eq!(fp8_encode(1.0625, Fp8Format::E4M3), 0x38);
        assert_eq!(fp8_encode(1.1875, Fp8Format::E4M3), 0x3a);
        assert!(fp8_decode(fp8_encode(f32::NAN, Fp8Format::E4M3), Fp8Format::E4M3).is_nan());
    }

    #[test]
    fn fp8_round_trips_every_finite_value() {
        for format in [Fp8Format::E4M3, Fp8Format::E5M2] {
            for b in 0..=255u8 {
                let v = fp8_decode(b, format);
                if v.is_finite() {
                    let back = fp8_encode(v, format);
                    // -0 and +0 keep their sign.
                    assert_eq!(back, b, "{format:?} {b:#x} -> {v} -> {back:#x}");
                }
            }
        }
    }

    #[test]
    fn dlpack_codes_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_dlpack(d.to_dlpack()), Some(d));
        }
    }

    /// The kernels' scalar fp8 encoder (shared by every tier's tail loop)
    /// agrees with this reference on every f32 with the low 11 bits clear
    /// (all exponents and the mantissa bits that decide fp8 rounding) and on
    /// every exact tie between fp8 neighbours.
    #[test]
    fn c_fp8_conversion_matches_reference() {
        for (format, dtype) in [
            (Fp8Format::E4M3, DType::F8E4M3),
            (Fp8Format::E5M2, DType::F8E5M2),
        ] {
            let code = dtype.xk();
            let check = |x: f32| {
                // SAFETY: plain scalar functions.
                let c = unsafe { crate::sys::xk_f32_to_fp8(x, code) };
                assert_eq!(
                    c,
                    fp8_encode(x, format),
                    "{format:?} encode {x:e} ({:#010x})",
                    x.to_bits()
                );
            };
            for hi in 0..(1u32 << 21) {
                check(f32::from_bits(hi << 11));
            }
            for b in 0..=255u8 {
                let (lo, hi) = (fp8_decode(b, format), fp8_decode(b.wrapping_add(1), format));
                if lo.is_finite() && hi.is_finite() {
                    check((lo + hi) / 2.0);
                }
                let back = unsafe { crate::sys::xk_fp8_to_f32(b, code) };
                let want = fp8_decode(b, format);
                assert!(
                    back.to_bits() == want.to_bits() || (back.is_nan() && want.is_nan()),
                    "{format:?} decode {b:#x}"
                );
            }
        }
    }
}
