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

/// Zeroed heap bytes whose first byte sits on an `align`-byte boundary
/// (a power of two). Kernels stream weights as 64-byte blocks and tile them
/// one row stream per 4 KiB page; a plain large `Vec` starts 16 bytes past a
/// page (glibc), which splits every block load over two cache lines. The
/// bytes before the start are never touched, so the alignment costs address
/// space only (a large zeroed allocation is a fresh mapping).
pub(crate) struct AlignedBytes {
    buf: Vec<u8>,
    off: usize,
    len: usize,
    align: usize,
}

/// [`AlignedBytes::streamed`] buffers of at least this many bytes start at a
/// 2 MiB boundary and ask for transparent huge pages.
const HUGE_MIN: usize = 4 << 20;
const HUGE: usize = 2 << 20;

impl AlignedBytes {
    pub(crate) fn zeroed(len: usize, align: usize) -> AlignedBytes {
        debug_assert!(align.is_power_of_two());
        let buf = vec![0u8; len + align - 1];
        let off = (buf.as_ptr() as usize).wrapping_neg() % align;
        AlignedBytes {
            buf,
            off,
            len,
            align,
        }
    }

    /// A buffer that kernels stream through in large sweeps: 64-byte aligned,
    /// and from `HUGE_MIN` bytes on a 2 MiB boundary, advised for transparent
    /// huge pages (Linux, where THP is `madvise`; the AMX GEMM streams packed
    /// weights across thousands of 4 KiB pages and measured ~10% faster at
    /// M = 512, K = N = 4096 with huge pages).
    pub(crate) fn streamed(len: usize) -> AlignedBytes {
        if len < HUGE_MIN {
            return AlignedBytes::zeroed(len, 64);
        }
        let mut b = AlignedBytes::zeroed(len.div_ceil(HUGE) * HUGE, HUGE);
        advise_huge(b.as_ptr() as usize, b.len);
        b.len = len;
        b
    }
}

impl std::ops::Deref for AlignedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl std::ops::DerefMut for AlignedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

impl Clone for AlignedBytes {
    fn clone(&self) -> AlignedBytes {
        let mut c = AlignedBytes::zeroed(self.len, self.align);
        c.copy_from_slice(self);
        c
    }
}

impl PartialEq for AlignedBytes {
    fn eq(&self, other: &AlignedBytes) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// madvise(MADV_HUGEPAGE) over `[addr, addr + len)` (2 MiB aligned, inside
/// one allocation); a hint, failures ignored.
#[cfg(target_os = "linux")]
fn advise_huge(addr: usize, len: usize) {
    extern "C" {
        fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
    }
    const MADV_HUGEPAGE: i32 = 14;
    // SAFETY: the range lies inside a live allocation; madvise only changes
    // how the kernel backs those pages, never their contents.
    unsafe { madvise(addr as *mut std::ffi::c_void, len, MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_addr: usize, _len: usize) {}

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
    fn aligned_bytes_start_on_their_boundary() {
        for (len, align) in [(0, 64), (1, 64), (5000, 4096), (100, 1 << 21)] {
            let b = super::AlignedBytes::zeroed(len, align);
            assert_eq!(b.as_ptr() as usize % align, 0);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0));
            assert_eq!(b.clone().as_ptr() as usize % align, 0);
        }
        let big = super::AlignedBytes::streamed(5 << 20);
        assert_eq!((big.as_ptr() as usize % (2 << 20), big.len()), (0, 5 << 20));
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
