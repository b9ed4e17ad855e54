//! Memory helpers shared by launchers and probes.

/// Copies `len` bytes from `src` to `dst` with streaming (non-temporal)
/// stores where the CPU has them (x86-64: AVX 32-byte, else SSE2 16-byte),
/// so whole destination lines are written without being read first. Use for
/// large copies whose destination is not read again soon, and call
/// [`store_fence`] after a batch of them (streaming stores are weakly
/// ordered).
///
/// # Safety
/// `src` must be valid for `len` bytes of reads and `dst` for `len` bytes of
/// writes, and the ranges must not overlap.
pub(crate) unsafe fn stream_copy(src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx() {
            stream_copy_avx(src, dst, len);
        } else {
            stream_copy_sse2(src, dst, len);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::ptr::copy_nonoverlapping(src, dst, len);
}

/// [`stream_copy`] of `streams` adjacent parts of `part` bytes each, in
/// lockstep: `step` bytes of every part in turn, then the next `step`. A core
/// moves data fastest with several streams in flight. The loop runs inside
/// one AVX function where the CPU has AVX: a call per step would cost a good
/// share of a step's time.
///
/// # Safety
/// `src` must be valid for `streams * part` bytes of reads and `dst` for as
/// many bytes of writes, the ranges must not overlap, and `part` must be a
/// multiple of `step`.
pub(crate) unsafe fn stream_copy_lockstep(
    src: *const u8,
    dst: *mut u8,
    part: usize,
    streams: usize,
    step: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx() {
        return lockstep_avx(src, dst, part, streams, step);
    }
    for off in (0..part).step_by(step.max(1)) {
        for s in 0..streams {
            stream_copy(src.add(s * part + off), dst.add(s * part + off), step);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx() -> bool {
    use std::sync::OnceLock;
    static AVX: OnceLock<bool> = OnceLock::new();
    *AVX.get_or_init(|| std::arch::is_x86_feature_detected!("avx"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn lockstep_avx(src: *const u8, dst: *mut u8, part: usize, streams: usize, step: usize) {
    for off in (0..part).step_by(step.max(1)) {
        for s in 0..streams {
            stream_copy_avx(src.add(s * part + off), dst.add(s * part + off), step);
        }
    }
}

/// Orders earlier streaming stores before later stores (x86 `sfence`).
pub(crate) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence has no preconditions (SSE, part of x86-64).
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Bytes to copy plainly before `dst` reaches `align`-byte alignment.
#[cfg(target_arch = "x86_64")]
fn head_len(dst: *mut u8, len: usize, align: usize) -> usize {
    ((dst as usize).wrapping_neg() % align).min(len)
}

#[cfg(target_arch = "x86_64")]
unsafe fn stream_copy_sse2(src: *const u8, dst: *mut u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
    let head = head_len(dst, len, 16);
    std::ptr::copy_nonoverlapping(src, dst, head);
    let mut i = head;
    while i + 64 <= len {
        let s = src.add(i) as *const __m128i;
        let d = dst.add(i) as *mut __m128i;
        let v = [
            _mm_loadu_si128(s),
            _mm_loadu_si128(s.add(1)),
            _mm_loadu_si128(s.add(2)),
            _mm_loadu_si128(s.add(3)),
        ];
        for (k, v) in v.into_iter().enumerate() {
            _mm_stream_si128(d.add(k), v);
        }
        i += 64;
    }
    std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn stream_copy_avx(src: *const u8, dst: *mut u8, len: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256};
    let head = head_len(dst, len, 32);
    std::ptr::copy_nonoverlapping(src, dst, head);
    let mut i = head;
    while i + 64 <= len {
        let s = src.add(i) as *const __m256i;
        let d = dst.add(i) as *mut __m256i;
        let (a, b) = (_mm256_loadu_si256(s), _mm256_loadu_si256(s.add(1)));
        _mm256_stream_si256(d, a);
        _mm256_stream_si256(d.add(1), b);
        i += 64;
    }
    std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i);
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_copy_copies_every_byte_at_any_alignment() {
        let src: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        for (off_s, off_d, len) in [
            (0, 0, 0),
            (1, 3, 1),
            (0, 0, 64),
            (5, 17, 1000),
            (3, 0, 4000),
        ] {
            let mut dst = vec![0u8; 4096 + 64];
            // SAFETY: both ranges lie inside their buffers and do not overlap.
            unsafe {
                super::stream_copy(src.as_ptr().add(off_s), dst.as_mut_ptr().add(off_d), len)
            };
            assert_eq!(&dst[off_d..off_d + len], &src[off_s..off_s + len]);
            assert!(dst[..off_d].iter().all(|&b| b == 0));
            assert!(dst[off_d + len..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn stream_copy_lockstep_copies_every_part() {
        let src: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8).collect();
        for (part, streams, step) in [(0, 4, 64), (64, 1, 64), (1024, 3, 256), (960, 4, 64)] {
            let mut dst = vec![0u8; 4096];
            // SAFETY: streams * part <= 4096 bytes of both buffers, which do
            // not overlap; part is a multiple of step.
            unsafe {
                super::stream_copy_lockstep(src.as_ptr(), dst.as_mut_ptr(), part, streams, step)
            };
            let n = part * streams;
            assert_eq!(&dst[..n], &src[..n], "part {part} streams {streams}");
            assert!(dst[n..].iter().all(|&b| b == 0));
        }
    }
}
