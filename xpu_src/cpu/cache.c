/*
 * KV-cache writes: reshape_and_cache (paged layout) and reshape_and_cache_flash.
 * One grid block = a range of tokens. Padding slots (< 0) are skipped.
 *
 * Performance notes (measured in `xpu-ops bench kv_cache`):
 * - A grid block that writes at least XK_STREAM_MIN_BYTES sends whole-line
 *   flash rows to memory with streaming (non-temporal) stores: no
 *   read-for-ownership of lines that are overwritten entirely, so a large
 *   batch moves ~2/3 of the bytes a cached store would. Small batches (decode)
 *   keep ordinary stores: their lines are read again soon by attention.
 * - Paged layout: tokens whose slots are consecutive in one block (prefill)
 *   are written as a run of up to 16: rows converted into L1, key chunks
 *   copied side by side, value rows transposed 16x16 (see write_run_paged);
 *   on AVX-512 a whole block of bf16 -> fp8 is converted straight into
 *   lines instead (fq_paged_body). A streamed run first asks for one line
 *   per page of the next run's blocks, so their page walks are done ahead.
 *   A scattered single token (decode) touches H * (D/x + D * block_size *
 *   es / 64) lines, a few bytes of each (fp8, D = 256, block 16: 80 lines
 *   per head for 512 bytes): their read-for-ownership and write-back are
 *   the layout's cost, not recoverable in the kernel; it asks for the next
 *   token's lines ahead (prefetch_paged_lines) to keep more in flight.
 *   Session 17, one bf16 token (T=1) per call, per call: the bench's five
 *   views (two Vec allocations each) 0.35-0.45 us, the launcher's checks
 *   and the hop to C 0.21-0.28 us (no thread pool: grid runs one token
 *   inline), this kernel with the block in L2 0.31 / 0.59 / 1.22 / 2.37 us
 *   at H=2 D=128 / H=2 D=256 / H=8 D=128 / H=8 D=256, from memory (bench
 *   arena) 1.0 / 1.6-2.1 / 2.3-4.2 / 4.0-8.2 us, against 0.6 / 1.2 / 2.5 /
 *   5.0 us to read its 160-1280 lines and write them back at 33 GB/s (Rust
 *   probe and C harness, loaded host): the H=8 bf16 cases cannot meet 2 us.
 * - Flash writes start the page walks of the next few tokens' rows before
 *   the current ones are written (FQ_GROUP, FC_AHEAD; CLWB for streamed
 *   rows, a prefetch into L2 otherwise); fp8 rows convert a token's key and
 *   value rows together (two source streams).
 * - fp8 caches store saturate(x / scale). AVX-512 multiplies by 1/scale and
 *   proves each lane exact (fp8_quant below, ~0.1 ns per element per core,
 *   the divide took ~0.24); fp8 flash rows are converted in one pass per
 *   cache with the constants in registers. AVX2 converts bf16 sources by
 *   byte tables (bt_make; lanes the tables leave go to the divide, per 8
 *   elements), f16/f32 sources divide; generic divides. Power-of-two scales
 *   multiply by the exact reciprocal. The amx tier runs this file
 *   again built with AVX512-VBMI (amx/kv_vbmi.c): bf16 sources convert by
 *   byte tables (fqv_make), ~12 uops per 64 elements instead of ~40
 *   (bench, T=8192 H=2 D=128 paged fp8 prefill 817 -> 664-680 us, session
 *   8). With the conversion reduced to its two byte gathers (timing only)
 *   that case takes ~636 us against ~690 us in the harness.
 */
#include "../common/convert.h"
#include "../common/tier.h"
#if XK_F32_LANES == 8
#include <cpuid.h>
#include <stdatomic.h>
#endif

/* Staging buffer for one head row converted to the cache format. */
#define XK_ROW_CHUNK 1024
/* Cache bytes a grid block writes before it streams whole-line rows (fp8
 * streamed only from 1 MiB while the divide bound it; with the multiply,
 * scattered rows pay for a read-for-ownership each). */
#define XK_STREAM_MIN_BYTES (32 * 1024)
#define XK_STREAM_MIN_BYTES_FP8 (32 * 1024)
/* Key + value source bytes of a grid block taken to be in cache (half of a
 * 2 MiB L2); above, the paged fp8 prefill prefetches its sources. */
#define XK_SRC_CACHED_BYTES (1024 * 1024)
/* Key + value source bytes of a grid block from which the AVX2 fp8 flash
 * rows ask for the next token's row (half of a 32 MiB L3; the 16384 tokens
 * of tests/kv_cache_fast_paths.rs are 16 MiB): from cache the prefetches
 * only cost (harness, T=512 H=8 D=256: 213-217 -> 219-225 us). At 8 MiB (a
 * quarter, session 15) T=8192 H=2 D=128, whose sources stay in L3 between
 * calls, lost ~5% (bench 0.568 -> 0.596 ms); without the prefetch it was
 * faster in 9 of 10 alternated harness pairs (CPU time, best of 10-12:
 * 529-625 against 542-622 us); H=2 D=256 (16 MiB) kept it, within noise. */
#define XK_SRC_MEM_BYTES (16 * 1024 * 1024)
/* Key + value elements of a grid block from which the VBMI build makes its
 * byte tables (~0.5 us per scale; they save ~1-5 ns per 64 elements). */
#define XK_VB_MIN_ELEMS (32 * 1024)
/* Elements a scale converts from which the AVX2 build makes its byte tables. */
#define XK_BT_MIN_ELEMS 1024
/* Heads whose per-head fp8 scales kv_write prepares once per grid block. */
#define XK_HEAD_SCALES 32

static inline int64_t slot_of(const xk_kv_write_args *a, int64_t t) {
  return a->slot_mapping_is_i64 ? ((const int64_t *)a->slot_mapping)[t]
                                : (int64_t)((const int32_t *)a->slot_mapping)[t];
}

#if XK_F32_LANES > 1
/* out[e] = byte e of rows 0..15 (16-byte rows, row_bytes apart). */
static inline void transpose16_u8(const char *src, int64_t row_bytes, __m128i out[16]) {
  __m128i a[16], b[16], c[16];
  for (int j = 0; j < 16; j++) a[j] = _mm_loadu_si128((const __m128i *)(src + j * row_bytes));
  for (int i = 0; i < 8; i++) { /* b: byte pairs of rows 2i, 2i+1 (elements 0-7 | 8-15) */
    b[2 * i] = _mm_unpacklo_epi8(a[2 * i], a[2 * i + 1]);
    b[2 * i + 1] = _mm_unpackhi_epi8(a[2 * i], a[2 * i + 1]);
  }
  for (int g = 0; g < 4; g++) { /* c: rows 4g..4g+3, elements 0-3 | 4-7 | 8-11 | 12-15 */
    c[4 * g + 0] = _mm_unpacklo_epi16(b[4 * g], b[4 * g + 2]);
    c[4 * g + 1] = _mm_unpackhi_epi16(b[4 * g], b[4 * g + 2]);
    c[4 * g + 2] = _mm_unpacklo_epi16(b[4 * g + 1], b[4 * g + 3]);
    c[4 * g + 3] = _mm_unpackhi_epi16(b[4 * g + 1], b[4 * g + 3]);
  }
  for (int q = 0; q < 4; q++) { /* rows 0-7 and 8-15 of elements 4q..4q+3 */
    for (int k = 0; k < 2; k++) {
      const __m128i lo = k ? _mm_unpackhi_epi32(c[q], c[4 + q]) : _mm_unpacklo_epi32(c[q], c[4 + q]);
      const __m128i hi = k ? _mm_unpackhi_epi32(c[8 + q], c[12 + q]) : _mm_unpacklo_epi32(c[8 + q], c[12 + q]);
      out[4 * q + 2 * k] = _mm_unpacklo_epi64(lo, hi);
      out[4 * q + 2 * k + 1] = _mm_unpackhi_epi64(lo, hi);
    }
  }
}

#if XK_F32_LANES == 8
/* out[k] = bytes 2k and 2k + 1 of rows 0..15 (16-byte rows, row_bytes
 * apart), 16 bytes each: rows j and j + 8 share a register (one per lane),
 * three in-lane unpack stages leave each lane with 8 rows of two elements,
 * and a vpermq joins the lanes' halves. 40 shuffles per 16 x 16 bytes
 * against 64 for transpose16_u8, and 32-byte stores. */
static inline __attribute__((always_inline)) void transpose16_u8_pairs(const char *src, int64_t row_bytes,
                                                                        __m256i out[8]) {
  __m256i a[8], b[8], c[8];
  for (int j = 0; j < 8; j++)
    a[j] = _mm256_loadu2_m128i((const __m128i *)(src + (j + 8) * row_bytes), (const __m128i *)(src + j * row_bytes));
  for (int i = 0; i < 4; i++) { /* rows 2i, 2i+1: elements 0-7 | 8-15 */
    b[2 * i] = _mm256_unpacklo_epi8(a[2 * i], a[2 * i + 1]);
    b[2 * i + 1] = _mm256_unpackhi_epi8(a[2 * i], a[2 * i + 1]);
  }
  for (int g = 0; g < 2; g++) { /* rows 4g..4g+3: elements 0-3 | 4-7 | 8-11 | 12-15 */
    c[4 * g + 0] = _mm256_unpacklo_epi16(b[4 * g], b[4 * g + 2]);
    c[4 * g + 1] = _mm256_unpackhi_epi16(b[4 * g], b[4 * g + 2]);
    c[4 * g + 2] = _mm256_unpacklo_epi16(b[4 * g + 1], b[4 * g + 3]);
    c[4 * g + 3] = _mm256_unpackhi_epi16(b[4 * g + 1], b[4 * g + 3]);
  }
  for (int q = 0; q < 4; q++) { /* rows 0-7 (lane 0) and 8-15 (lane 1) of elements 4q..4q+3, then joined */
    out[2 * q] = _mm256_permute4x64_epi64(_mm256_unpacklo_epi32(c[q], c[4 + q]), 0xd8);
    out[2 * q + 1] = _mm256_permute4x64_epi64(_mm256_unpackhi_epi32(c[q], c[4 + q]), 0xd8);
  }
}
#endif

/* out[e] = 16-bit element e of rows 0..15 (32-byte rows, row_bytes apart). */
static inline void transpose16_u16_regs(const __m256i a[16], __m256i out[16]) {
  __m256i b[16], c[16];
  for (int i = 0; i < 8; i++) { /* b: pairs of rows 2i, 2i+1; lanes hold elements 0-7 | 8-15 */
    b[2 * i] = _mm256_unpacklo_epi16(a[2 * i], a[2 * i + 1]);
    b[2 * i + 1] = _mm256_unpackhi_epi16(a[2 * i], a[2 * i + 1]);
  }
  for (int g = 0; g < 4; g++) { /* c: rows 4g..4g+3, two elements per lane */
    c[4 * g + 0] = _mm256_unpacklo_epi32(b[4 * g], b[4 * g + 2]);
    c[4 * g + 1] = _mm256_unpackhi_epi32(b[4 * g], b[4 * g + 2]);
    c[4 * g + 2] = _mm256_unpacklo_epi32(b[4 * g + 1], b[4 * g + 3]);
    c[4 * g + 3] = _mm256_unpackhi_epi32(b[4 * g + 1], b[4 * g + 3]);
  }
  for (int q = 0; q < 4; q++) { /* rows 0-7 (lo) and 8-15 (hi) of elements 2q+k and 8+2q+k */
    for (int k = 0; k < 2; k++) {
      const __m256i lo = k ? _mm256_unpackhi_epi64(c[q], c[4 + q]) : _mm256_unpacklo_epi64(c[q], c[4 + q]);
      const __m256i hi = k ? _mm256_unpackhi_epi64(c[8 + q], c[12 + q]) : _mm256_unpacklo_epi64(c[8 + q], c[12 + q]);
      out[2 * q + k] = _mm256_permute2x128_si256(lo, hi, 0x20);
      out[8 + 2 * q + k] = _mm256_permute2x128_si256(lo, hi, 0x31);
    }
  }
}

static inline void transpose16_u16(const char *src, int64_t row_bytes, __m256i out[16]) {
  __m256i a[16];
  for (int j = 0; j < 16; j++) a[j] = _mm256_loadu_si256((const __m256i *)(src + j * row_bytes));
  transpose16_u16_regs(a, out);
}
#endif

/* ---- fp8 quantisation without a divide (AVX-512) ----------------------------
 * The cache stores fp8(t) with t = RN_f32(x / s) (the reference divides, then
 * rounds t to fp8, ties to even, saturating). vdivps plus the generic encoder
 * bound the write; this path multiplies by r = RN(1/s) instead and proves,
 * lane by lane, that the fp8 code of q = RN(x * r) equals the code of t:
 *
 * - |q - t| <= 3 ulp when r = RN(1/s) and no f32 underflow/overflow:
 *   |x*r - x/s| <= 2^-24 x/s, |q - x*r| <= 2^-24 x*r, |t - x/s| <= 2^-24 x/s,
 *   so |q - t| < 3 * 2^-24 * 2^(e+1) = 3 ulp in q's binade (an integer number
 *   of steps, also across a binade edge, where the lower steps are half as wide).
 * - In the f32 bit pattern a (|q|), fp8 codes change only between a and a+1
 *   whose low `shift` bits are H or H+1 (H = 2^(shift-1), the midpoint). So
 *   if low(a) is outside [H-4, H+3], every float within 3 steps of q has q's
 *   code, and there round-to-nearest-even equals round-half-up.
 * - Lanes inside that window (8 of 2^20 (e4m3) / 2^21 (e5m2) patterns),
 *   NaN sources, and sources whose quotient falls in the fp8 subnormal range
 *   (above the values that round to 0) send their 64-element block to the
 *   exact path (vdivps and the reference encoder).
 * - "Exact" scales: when x * r is exact for every source value (r has at
 *   most 24 - p significant bits, p = the source's precision) and
 *   |1 - r s| / (1 - |1 - r s|) < 2^-25, then x/s = x r / (1 - d) lies within
 *   half an ulp of the float x r (a quarter below a power of two), so
 *   t = q exactly and q is encoded with ties to even, no window. This covers
 *   power-of-two scales and short reciprocals (s = 0.01 -> r = 100).
 * The range checks run on the source bits (magnitudes are monotone in them).
 */
typedef struct fp8_quant {
  float scale, mul;
  int fast;            /* the multiply path applies to this scale */
  int exact;           /* q == t for every in-range lane: ties to even, no window */
  int sub_exact;       /* exact, and M + x r / 2 is exact too (subnormal fp8 codes) */
  uint16_t norm16;     /* bf16 sources: the smallest |x| bit pattern with RN(x r) >= 2M */
  const struct fqv_tabs *vt; /* VBMI byte tables (fqv_make), NULL: none */
} fp8_quant;

/* The byte tables of one scale (bf16 sources, VBMI build; see fqv_make). */
typedef struct fqv_tabs {
  uint8_t vtab[256];    /* T[mantissa] then U[exponent >> 1] */
  uint8_t vsub[5][128]; /* 128 + the code of (1 + m/128) 2^(vehi - j - 127) */
  int vsub_ok;          /* vsub is valid */
  int vehi;             /* the largest bf16 exponent whose mantissa 0 is below the normal range */
  uint16_t vfill;       /* a bf16 pattern whose code is normal (masked-off lanes) */
} fqv_tabs;

static inline int fq_sig_bits(float f) { /* significant bits of a normal float */
  const uint32_t m = (xk_f32_bits(f) & 0x7fffffu) | 0x800000u;
  return 24 - __builtin_ctz(m);
}

static inline fp8_quant fp8_quant_make(float scale, int32_t src_dtype, int32_t cache_dtype) {
  fp8_quant q;
  const uint32_t sb = xk_f32_bits(scale);
  q.scale = scale;
  q.mul = 1.0f / scale;
  /* 2^-125 <= s < 2^124: 1/s and 1/(2s) normal, the bounds above hold. */
  q.fast = (sb >> 23) >= 2 && (sb >> 23) <= 250 && (sb >> 31) == 0;
  q.exact = q.sub_exact = 0;
  q.norm16 = 0x7f80;
  q.vt = 0;
  if (!q.fast) return q;
  const double d = 1.0 - (double)q.mul * (double)scale; /* exact: 48-bit product, Sterbenz */
  const double ad = d < 0 ? -d : d;
  const int p = src_dtype == XK_BF16 ? 8 : src_dtype == XK_F16 ? 11 : 24;
  const int sig = fq_sig_bits(q.mul);
  const int prod = sig == 1 ? p : p + sig; /* bits of x * r, at most */
  q.exact = prod <= 24 && ad < 0x1p-25 * (1.0 - ad) * (1.0 - 0x1p-40);
  q.sub_exact = q.exact && prod <= 20;
  if (src_dtype == XK_BF16) {
    /* From norm16 up, RN(x r) >= 2M (the smallest normal fp8 value), where
     * max(q, M + q / 2) = q: the fast bf16 path skips the subnormal term
     * for a block whose lanes all lie in [norm16, inf]. Magnitudes and
     * RN(x r) are monotone in the bit pattern; the search starts just below
     * the pattern of 2M / r and checks with the float multiply itself. */
    const float two_m = cache_dtype == XK_F8E5M2 ? 0x1p-14f : 0x1p-6f;
    const uint32_t guess = xk_f32_bits(two_m / q.mul) >> 16;
    uint32_t b = guess > 4 ? guess - 4 : 1;
    while (b < 0x7f80u && xk_bits_f32(b << 16) * q.mul < two_m) b++;
    q.norm16 = (uint16_t)b;
  }
  return q;
}

#if XK_F32_LANES == 16
/* Constants of one fp8 format for the fast path. */
#define FQ_SHIFT(e5) ((e5) ? 21 : 20)
#define FQ_HALF(e5) (1u << (FQ_SHIFT(e5) - 1))
#define FQ_REBIAS(e5) ((e5) ? (112u << 2) : (120u << 3))
#define FQ_MAXF(e5) ((e5) ? 0x7b : 0x7e)

/* Exact path for up to 64 elements (mask m): divide, reference encoder. */
static __attribute__((noinline)) void fp8_exact64(uint8_t *dst, const void *src, int32_t src_dtype, __mmask64 m,
                                                  float scale, int e5) {
  const xk_fp8_format *fmt = e5 ? &XK_E5M2 : &XK_E4M3;
  const __m512 vs = _mm512_set1_ps(scale);
  for (int j = 0; j < 4; j++) {
    const __mmask16 mj = (__mmask16)(m >> (16 * j));
    if (!mj) continue;
    __m512 v;
    if (src_dtype == XK_BF16) {
      v = _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mj, (const uint16_t *)src + 16 * j)), 16));
    } else if (src_dtype == XK_F16) {
      v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mj, (const uint16_t *)src + 16 * j));
    } else {
      v = _mm512_maskz_loadu_ps(mj, (const float *)src + 16 * j);
    }
    _mm512_mask_cvtepi32_storeu_epi8(dst + 16 * j, mj, xk_fp8_encode16(_mm512_div_ps(v, vs), fmt));
  }
}

/* ---- bf16 -> fp8 by byte tables (AVX512-VBMI builds: XK_KV_VBMI) ---------
 * For a normal bf16 x = (1 + m/128) 2^(E-127) and q = RN(x / s), doubling
 * x doubles x / s exactly, and while q stays a normal f32 RN commutes with
 * it; the reference encoder's normal branch ((a + half + lsb) >> shift -
 * rebias, before its clamp) then moves by S = 8 (e4m3) or 4 (e5m2) codes
 * per binade. So code(E, m) = T[m] + c0 + S (E - Eref), with T and c0 taken
 * from the reference encoder itself at one exponent Eref whose 128 codes are
 * normal. With V = code + 128 = T[m] + S e0 + U[E >> 1] (e0 = E & 1,
 * U[e] = 2 S e + c0 - S Eref + 128 clamped to [0, 255]) every term is a
 * byte: two vpermi2b lookups (7-bit indices: the low byte's mantissa and
 * the high byte, whose sign bit the lookup ignores) and saturating adds.
 * V >= 128 + S: the formula's code is normal, and then it is also the
 * reference's code for q just below the smallest normal (both round up to
 * it: e4m3 from q >= 2^-6 - 2^-11, where the subnormal RNE(q 2^9) >= 7.75;
 * e5m2 likewise). Smaller V (fp8 subnormals, zeros) and bf16 exponents
 * 0-1 and 254-255 (U = 0: subnormals, Inf, NaN) send the block to the
 * multiply path (fp8_fast64_bf16_regs), then to the divide. Saturation is
 * min(V, 128 + max code) (V saturates at 255 beyond); the sign leaves V's
 * top bit set for negative lanes and clears it for positive ones. About 12
 * uops per 64 elements against ~40 for the multiply path. Checked against
 * the reference encoder for all 65536 bf16 patterns and 40 scales. */
#ifdef XK_KV_VBMI
static int fqv_make(fqv_tabs *t, const fp8_quant *q, int e5) {
  const uint32_t eref = xk_f32_bits(q->scale) >> 23; /* q->fast: 2..250, x / s in [1, 4) */
  const int S = e5 ? 4 : 8, maxc = FQ_MAXF(e5);
  const xk_fp8_format *fmt = e5 ? &XK_E5M2 : &XK_E4M3;
  const __m512 vs = _mm512_set1_ps(q->scale);
  _Alignas(64) int32_t code[128];
  for (int j = 0; j < 8; j++) {
    const __m512i m = _mm512_add_epi32(_mm512_set1_epi32((int32_t)(eref << 7) + 16 * j),
                                       _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const __m512 x = _mm512_castsi512_ps(_mm512_slli_epi32(m, 16));
    _mm512_store_si512(code + 16 * j, xk_fp8_encode16(_mm512_div_ps(x, vs), fmt));
  }
  const int c0 = code[0];
  if (c0 < S || code[127] >= maxc) return 0;
  /* Below the normal range: the reference's codes of the five exponents
   * under the first one whose mantissa 0 falls there (vehi); from vehi - 5
   * down every code is 0 (q < 2^-10 resp. 2^-18), checked at its largest x. */
  int ehi = (int)eref;
  while (ehi > 0 && S * (ehi - (int)eref) + c0 >= S) ehi--;
  t->vsub_ok = ehi - 5 >= 2 &&
               xk_f32_to_fp8_scalar(xk_bits_f32((uint32_t)(((ehi - 5) << 7) | 127) << 16) / q->scale, fmt) == 0;
  if (t->vsub_ok) {
    t->vehi = ehi;
    for (int j = 0; j < 5; j++)
      for (int h = 0; h < 2; h++) {
        _Alignas(64) int32_t sc[64];
        for (int k = 0; k < 4; k++) {
          const __m512i m = _mm512_add_epi32(_mm512_set1_epi32(((ehi - j) << 7) + 64 * h + 16 * k),
                                             _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
          const __m512 x = _mm512_castsi512_ps(_mm512_slli_epi32(m, 16));
          _mm512_store_si512(sc + 16 * k, xk_fp8_encode16(_mm512_div_ps(x, vs), fmt));
        }
        for (int i = 0; i < 64; i++) t->vsub[j][64 * h + i] = (uint8_t)(128 + sc[i]);
      }
  }
  for (int m = 0; m < 128; m++) {
    const int d = code[m] - c0;
    if (d < 0 || d > S) return 0;
    t->vtab[m] = (uint8_t)d;
  }
  for (int e = 0; e < 128; e++) {
    int v = 2 * S * e + c0 - S * (int)eref + 128;
    if (e == 0 || e == 127 || v < 0) v = 0;
    t->vtab[128 + e] = (uint8_t)(v > 255 ? 255 : v);
  }
  t->vfill = (uint16_t)(eref << 7);
  return 1;
}
#endif

/* Constants of the fast path, made once per row. */
typedef struct fq_consts {
  __m512 r, r2, mg;
  __m512i kv, win, low, clr, hmask, abs16, inf16, maxf, sgn, perm, norm16, span16;
  __m512i t0, t1, u0, u1, ilo, ihi, vthr, vmax, vstep; /* byte tables (fqv64) */
} fq_consts;

/* The table path's constants (fqv64); the multiply path's are not made. */
static inline __attribute__((always_inline)) fq_consts fqv_consts_make(const fp8_quant *q, int e5) {
  fq_consts c;
  c.r = c.r2 = c.mg = _mm512_setzero_ps();
  c.kv = c.win = c.low = c.clr = c.hmask = c.abs16 = c.inf16 = c.maxf = c.perm = c.norm16 = c.span16 =
      _mm512_setzero_si512();
  c.t0 = _mm512_loadu_si512(q->vt->vtab);
  c.t1 = _mm512_loadu_si512(q->vt->vtab + 64);
  c.u0 = _mm512_loadu_si512(q->vt->vtab + 128);
  c.u1 = _mm512_loadu_si512(q->vt->vtab + 192);
  c.ilo = _mm512_setr_epi64(0x0e0c0a0806040200ll, 0x1e1c1a1816141210ll, 0x2e2c2a2826242220ll, 0x3e3c3a3836343230ll,
                            0x4e4c4a4846444240ll, 0x5e5c5a5856545250ll, 0x6e6c6a6866646260ll, 0x7e7c7a7876747270ll);
  c.ihi = _mm512_add_epi8(c.ilo, _mm512_set1_epi8(1));
  c.vthr = _mm512_set1_epi8((char)(128 + (e5 ? 4 : 8)));
  c.vmax = _mm512_set1_epi8((char)(128 + FQ_MAXF(e5)));
  c.vstep = _mm512_set1_epi8((char)(e5 ? 4 : 8));
  c.sgn = _mm512_set1_epi8((char)0x80);
  __asm__("" : "+v"(c.t0), "+v"(c.t1), "+v"(c.u0), "+v"(c.u1), "+v"(c.ilo), "+v"(c.ihi));
  __asm__("" : "+v"(c.vthr), "+v"(c.vmax), "+v"(c.vstep), "+v"(c.sgn));
  return c;
}

static inline __attribute__((always_inline)) fq_consts fq_consts_make(const fp8_quant *q, int e5, int exact,
                                                                      int vb) {
  fq_consts c;
  if (vb) return fqv_consts_make(q, e5);
  c.t0 = c.t1 = c.u0 = c.u1 = c.ilo = c.ihi = c.vthr = c.vmax = c.vstep = _mm512_setzero_si512();
  const int shift = FQ_SHIFT(e5);
  c.r = _mm512_set1_ps(q->mul);
  c.r2 = _mm512_set1_ps(q->mul * 0.5f);
  c.mg = _mm512_set1_ps(e5 ? 0x1p-15f : 0x1p-7f);
  c.kv = _mm512_set1_epi32((int32_t)(FQ_HALF(e5) + (exact ? 0u : 4u) - (FQ_REBIAS(e5) << shift)));
  c.win = _mm512_set1_epi32((int)((1u << shift) - 8u));
  c.low = _mm512_set1_epi32((int)((1u << shift) - 1u));
  c.clr = _mm512_set1_epi32((int)~(1u << shift));
  c.hmask = _mm512_set1_epi32((int)0xffff0000u);
  c.abs16 = _mm512_set1_epi32(0x7fff7fff);
  c.inf16 = _mm512_set1_epi16(0x7f80);
  c.maxf = _mm512_set1_epi8((char)FQ_MAXF(e5));
  c.sgn = _mm512_set1_epi8((char)0x80);
  c.perm = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
  c.norm16 = _mm512_set1_epi16((short)q->norm16);
  c.span16 = _mm512_set1_epi16((short)(0x7f80 - q->norm16));
  /* Opaque to the compiler: it keeps them in registers instead of
   * re-broadcasting them inside the loops. */
  __asm__("" : "+v"(c.r), "+v"(c.r2), "+v"(c.mg), "+v"(c.kv), "+v"(c.win), "+v"(c.low), "+v"(c.clr));
  __asm__("" : "+v"(c.hmask), "+v"(c.abs16), "+v"(c.inf16), "+v"(c.maxf), "+v"(c.sgn), "+v"(c.perm));
  __asm__("" : "+v"(c.norm16), "+v"(c.span16));
  return c;
}

/* The constants that depend on the scale (fq_consts_make): key and value
 * rows converted in one pass swap these between rows. */
typedef struct fq_scale_regs {
  __m512 r, r2;
  __m512i norm16, span16;
  __m512i t0, t1, u0, u1;
} fq_scale_regs;

static inline __attribute__((always_inline)) fq_scale_regs fq_scale_regs_of(const fp8_quant *q, int vb) {
  fq_scale_regs s;
  if (vb) {
    s.t0 = _mm512_loadu_si512(q->vt->vtab);
    s.t1 = _mm512_loadu_si512(q->vt->vtab + 64);
    s.u0 = _mm512_loadu_si512(q->vt->vtab + 128);
    s.u1 = _mm512_loadu_si512(q->vt->vtab + 192);
    s.r = s.r2 = _mm512_setzero_ps();
    s.norm16 = s.span16 = _mm512_setzero_si512();
    return s;
  }
  s.t0 = s.t1 = s.u0 = s.u1 = _mm512_setzero_si512();
  s.r = _mm512_set1_ps(q->mul);
  s.r2 = _mm512_set1_ps(q->mul * 0.5f);
  s.norm16 = _mm512_set1_epi16((short)q->norm16);
  s.span16 = _mm512_set1_epi16((short)(0x7f80 - q->norm16));
  return s;
}

static inline __attribute__((always_inline)) void fq_use_scale(fq_consts *c, const fq_scale_regs *s, int vb) {
  if (vb) {
    c->t0 = s->t0;
    c->t1 = s->t1;
    c->u0 = s->u0;
    c->u1 = s->u1;
    return;
  }
  c->r = s->r;
  c->r2 = s->r2;
  c->norm16 = s->norm16;
  c->span16 = s->span16;
}

/* 64 bf16 -> fp8 (mask m: the elements present). Returns 0 when a lane needs
 * the exact path (nothing is stored then). */
static inline __attribute__((always_inline)) int fp8_fast64_bf16_regs(__m512i *out, __m512i ra, __m512i rb,
                                                                      const fq_consts *c, int e5, int exact) {
  const int shift = FQ_SHIFT(e5);
  const __m512i aa = _mm512_and_si512(ra, c->abs16), ab = _mm512_and_si512(rb, c->abs16);
  /* Even elements into the high halves of the dwords, odd ones masked. */
  const __m512 xe0 = _mm512_castsi512_ps(_mm512_slli_epi32(aa, 16)), xo0 = _mm512_castsi512_ps(_mm512_and_si512(aa, c->hmask));
  const __m512 xe1 = _mm512_castsi512_ps(_mm512_slli_epi32(ab, 16)), xo1 = _mm512_castsi512_ps(_mm512_and_si512(ab, c->hmask));
  /* q = x r; below the smallest normal, y = M + x r / 2 (M = 2^-7 / 2^-15)
   * puts RNE(q / smallest subnormal) in the bits the normal path rounds at,
   * and max(q, y) picks y exactly there. With exact scales, a block whose
   * lanes all lie in [norm16, inf] (no zero, no NaN, q >= 2M: max(q, y) = q)
   * skips y: 8 of the ~60 uops per 64 elements; the test costs 2 (one
   * subtract per vector; the NaN compares of the other path are not run). */
#define FQ_U(X) _mm512_add_epi32(_mm512_castps_si512(_mm512_max_ps(_mm512_mul_ps(X, c->r), _mm512_fmadd_ps(X, c->r2, c->mg))), c->kv)
#define FQ_UN(X) _mm512_add_epi32(_mm512_castps_si512(_mm512_mul_ps(X, c->r)), c->kv)
  __m512i ue0, uo0, ue1, uo1;
  __mmask32 nrm = 0;
  if (exact) {
    nrm = _mm512_cmple_epu16_mask(_mm512_sub_epi16(aa, c->norm16), c->span16);
    nrm = _mm512_mask_cmple_epu16_mask(nrm, _mm512_sub_epi16(ab, c->norm16), c->span16);
  }
  if (exact && nrm == 0xffffffffu) {
    ue0 = FQ_UN(xe0), uo0 = FQ_UN(xo0), ue1 = FQ_UN(xe1), uo1 = FQ_UN(xo1);
  } else {
    /* NaN sources take the exact path. */
    __mmask32 ok = _mm512_cmple_epu16_mask(aa, c->inf16);
    ok = _mm512_mask_cmple_epu16_mask(ok, ab, c->inf16);
    if (exact && ok != 0xffffffffu) return 0;
    ue0 = FQ_U(xe0), uo0 = FQ_U(xo0), ue1 = FQ_U(xe1), uo1 = FQ_U(xo1);
    if (!exact) {
      /* low(u) in [0, 7]: q within 4 steps of a midpoint. */
      __mmask16 k16 = (__mmask16)(ok & (ok >> 16));
      k16 = _mm512_mask_test_epi32_mask(k16, ue0, c->win);
      k16 = _mm512_mask_test_epi32_mask(k16, uo0, c->win);
      k16 = _mm512_mask_test_epi32_mask(k16, ue1, c->win);
      k16 = _mm512_mask_test_epi32_mask(k16, uo1, c->win);
      if (k16 != 0xffff) return 0;
    }
  }
#undef FQ_U
#undef FQ_UN
  if (exact) {
    /* low(u) == 0: q is a midpoint (a tie), rounded half up to code c+1:
     * clear the code's last bit (ties to even). */
    ue0 = _mm512_mask_and_epi32(ue0, _mm512_testn_epi32_mask(ue0, c->low), ue0, c->clr);
    uo0 = _mm512_mask_and_epi32(uo0, _mm512_testn_epi32_mask(uo0, c->low), uo0, c->clr);
    ue1 = _mm512_mask_and_epi32(ue1, _mm512_testn_epi32_mask(ue1, c->low), ue1, c->clr);
    uo1 = _mm512_mask_and_epi32(uo1, _mm512_testn_epi32_mask(uo1, c->low), uo1, c->clr);
  }
  /* Codes as words, element order kept (select: odd from the high word). */
  const __m512i w0 = _mm512_ternarylogic_epi32(_mm512_srli_epi32(uo0, shift - 16), _mm512_srli_epi32(ue0, shift), c->hmask, 0xe4);
  const __m512i w1 = _mm512_ternarylogic_epi32(_mm512_srli_epi32(uo1, shift - 16), _mm512_srli_epi32(ue1, shift), c->hmask, 0xe4);
  __m512i b = _mm512_permutexvar_epi64(c->perm, _mm512_packus_epi16(w0, w1));
  b = _mm512_min_epu8(b, c->maxf);
  const __mmask64 sign = _mm512_kunpackd(_mm512_movepi16_mask(rb), _mm512_movepi16_mask(ra));
  *out = _mm512_mask_add_epi8(b, sign, b, c->sgn);
  return 1;
}

/* 64 bf16 (ra: elements 0-31, rb: 32-63) -> fp8 by the byte tables (see
 * fqv_make). Returns 0 when a lane needs another path. */
#define FQV_HOLD 0x1fu /* this block or one of the 4 before it */
static inline __attribute__((always_inline)) int fqv64(__m512i *out, __m512i ra, __m512i rb, const fq_consts *c,
                                                      const fp8_quant *q, int *vm) {
#ifdef XK_KV_VBMI
  const __m512i lo = _mm512_permutex2var_epi8(ra, c->ilo, rb), hi = _mm512_permutex2var_epi8(ra, c->ihi, rb);
  __m512i v = _mm512_adds_epu8(_mm512_permutex2var_epi8(c->t0, lo, c->t1), _mm512_permutex2var_epi8(c->u0, hi, c->u1));
  const __mmask64 e0 = _mm512_movepi8_mask(lo);
  v = _mm512_mask_adds_epu8(v, e0, v, c->vstep);
  const __mmask64 low = _mm512_cmplt_epu8_mask(v, c->vthr);
  /* Lanes below the normal range: their exponent's table (vsub), 0 under
   * vehi - 4; above vehi (Inf, NaN, 2^127) the other paths. The tables are
   * applied to every block for 4 blocks after one that needed them (*vm
   * holds a bit per block), so a row where such lanes are common does not
   * mispredict the branch (scale 1, uniform [0, 1) data: 63% of blocks;
   * branching on this block alone was 10% slower than the multiply path). */
  const unsigned r = (unsigned)*vm * 2u + (_cvtmask64_u64(low) != 0);
  *vm = (int)r;
  if (r & FQV_HOLD) {
    const fqv_tabs *vt = q->vt;
    if (!vt->vsub_ok) return 0;
    const __m512i hh = _mm512_add_epi8(hi, hi);
    const __m512i eb = _mm512_mask_add_epi8(hh, e0, hh, _mm512_set1_epi8(1));
    if (_mm512_mask_cmpgt_epu8_mask(low, eb, _mm512_set1_epi8((char)vt->vehi))) return 0;
    v = _mm512_mask_mov_epi8(v, low, _mm512_set1_epi8((char)128));
    for (int j = 0; j < 5; j++) {
      const __mmask64 kj = _mm512_mask_cmpeq_epi8_mask(low, eb, _mm512_set1_epi8((char)(vt->vehi - j)));
      v = _mm512_mask_mov_epi8(v, kj,
                               _mm512_permutex2var_epi8(_mm512_loadu_si512(vt->vsub[j]), lo,
                                                        _mm512_loadu_si512(vt->vsub[j] + 64)));
    }
  }
  /* v ^ (~hi & 0x80): positive lanes lose the bias bit. */
  *out = _mm512_ternarylogic_epi32(_mm512_min_epu8(v, c->vmax), hi, c->sgn, 0xd2);
  return 1;
#else
  (void)out, (void)ra, (void)rb, (void)c, (void)q, (void)vm;
  return 0;
#endif
}

/* A block the tables leave: the multiply path, else the divide. */
static __attribute__((noinline)) __m512i fqv_slow(__m512i ra, __m512i rb, const fp8_quant *q, int e5) {
  _Alignas(64) uint16_t tmp[64];
  _Alignas(64) uint8_t codes[64];
  __m512i b;
  if (q->sub_exact) {
    const fq_consts c = fq_consts_make(q, e5, 1, 0);
    if (fp8_fast64_bf16_regs(&b, ra, rb, &c, e5, 1)) return b;
  } else {
    const fq_consts c = fq_consts_make(q, e5, 0, 0);
    if (fp8_fast64_bf16_regs(&b, ra, rb, &c, e5, 0)) return b;
  }
  _mm512_store_si512(tmp, ra);
  _mm512_store_si512(tmp + 32, rb);
  fp8_exact64(codes, tmp, XK_BF16, ~(__mmask64)0, q->scale, e5);
  return _mm512_load_si512(codes);
}

static inline __attribute__((always_inline)) int fp8_fast64_bf16(uint8_t *dst, const uint16_t *src, __mmask64 m,
                                                                 const fq_consts *c, int e5, int exact, int full,
                                                                 int stream, int vb, const fp8_quant *q, int *vm) {
  /* Table path: lanes past the end hold a pattern whose code is normal. */
  const __m512i fill = vb && !full ? _mm512_set1_epi16((short)q->vt->vfill) : _mm512_setzero_si512();
  const __m512i ra = full ? _mm512_loadu_si512(src) : _mm512_mask_loadu_epi16(fill, (__mmask32)m, src);
  const __m512i rb =
      full ? _mm512_loadu_si512(src + 32) : _mm512_mask_loadu_epi16(fill, (__mmask32)(m >> 32), src + 32);
  __m512i b;
  if (vb) {
    if (__builtin_expect(!fqv64(&b, ra, rb, c, q, vm), 0)) b = fqv_slow(ra, rb, q, e5);
  } else if (!fp8_fast64_bf16_regs(&b, ra, rb, c, e5, exact)) {
    return 0;
  }
  if (stream) _mm512_stream_si512((void *)dst, b);
  else if (full) _mm512_storeu_si512(dst, b);
  else _mm512_mask_storeu_epi8(dst, m, b);
  return 1;
}

/* 64 f16 or f32 -> fp8, as fp8_fast64_bf16 in dword order. Exact scales whose
 * M + x r / 2 may round (sub_exact == 0) send subnormal-range lanes to the
 * exact path. */
static inline __attribute__((always_inline)) int fp8_fast64_wide(uint8_t *dst, const void *src, int32_t src_dtype,
                                                                 __mmask64 m, const fq_consts *c, int e5, int exact,
                                                                 int sub_check, int full, int stream) {
  const int shift = FQ_SHIFT(e5);
  const __m512 r = c->r, r2 = c->r2, mg = c->mg;
  const __m512i absm = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
  const __m512i kv = c->kv, low = c->low, win = c->win, clr = c->clr;
  __m512i cd[4];
  __mmask16 sg[4];
  __mmask16 ok = 0xffff;
  for (int j = 0; j < 4; j++) {
    const __mmask16 mj = (__mmask16)(m >> (16 * j));
    __m512 x;
    if (src_dtype == XK_F16) x = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mj, (const uint16_t *)src + 16 * j));
    else x = _mm512_maskz_loadu_ps(mj, (const float *)src + 16 * j);
    sg[j] = _mm512_movepi32_mask(_mm512_castps_si512(x));
    const __m512i a = _mm512_and_si512(_mm512_castps_si512(x), absm);
    ok = _mm512_mask_cmple_epu32_mask(ok, a, inf);
    const __m512 xa = _mm512_castsi512_ps(a);
    const __m512 qv = _mm512_mul_ps(xa, r);
    if (sub_check) { /* (2^-10, 2^-6) resp. (2^-17, 2^-14): not exact */
      const __mmask16 bad = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(qv, _mm512_set1_ps(e5 ? 0x1p-17f : 0x1p-10f), _CMP_GT_OQ),
                                                    qv, _mm512_set1_ps(e5 ? 0x1p-14f : 0x1p-6f), _CMP_LT_OQ);
      ok = (__mmask16)(ok & ~bad);
    }
    __m512i u = _mm512_add_epi32(_mm512_castps_si512(_mm512_max_ps(qv, _mm512_fmadd_ps(xa, r2, mg))), kv);
    if (exact) u = _mm512_mask_and_epi32(u, _mm512_testn_epi32_mask(u, low), u, clr);
    else ok = _mm512_mask_test_epi32_mask(ok, u, win);
    cd[j] = _mm512_srli_epi32(u, shift);
  }
  if (ok != 0xffff) return 0;
  /* Per 128-bit lane i: bytes of c0[4i..4i+3], c1[..], c2[..], c3[..]. */
  __m512i b = _mm512_packus_epi16(_mm512_packus_epi32(cd[0], cd[1]), _mm512_packus_epi32(cd[2], cd[3]));
  b = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), b);
  b = _mm512_min_epu8(b, c->maxf);
  const __mmask64 sign = _mm512_kunpackd(_mm512_kunpackw(sg[3], sg[2]), _mm512_kunpackw(sg[1], sg[0]));
  b = _mm512_mask_add_epi8(b, sign, b, c->sgn);
  if (stream) _mm512_stream_si512((void *)dst, b);
  else if (full) _mm512_storeu_si512(dst, b);
  else _mm512_mask_storeu_epi8(dst, m, b);
  return 1;
}

static inline __attribute__((always_inline)) int fq_kernel(uint8_t *d, const char *s, __mmask64 m, const fq_consts *c,
                                                           int32_t src_dtype, int e5, int exact, int subc, int full,
                                                           int st, int vb, const fp8_quant *q, int *vm) {
  if (src_dtype == XK_BF16) return fp8_fast64_bf16(d, (const uint16_t *)s, m, c, e5, exact, full, st, vb, q, vm);
  return fp8_fast64_wide(d, s, src_dtype, m, c, e5, exact, subc, full, st);
}

/* dst[i] = fp8(RN(src[i] / scale)) for n elements, bit-identical to the
 * reference. `stream`: whole 64-byte lines of a 64-aligned dst go out with
 * streaming stores. The fast loops hold no call, so the constants stay in
 * registers; a block that needs the exact path leaves them. */
static inline __attribute__((always_inline)) void fq_run(uint8_t *dst, const char *src, int64_t n, const fq_consts *c,
                                                         const fp8_quant *q, int32_t src_dtype, int e5, int exact,
                                                         int subc, int stream, int vb, int *vm) {
  const float scale = q->scale;
  const int64_t ss = xk_dtype_size(src_dtype);
  const int st = stream && ((uintptr_t)dst & 63u) == 0;
  int64_t i = 0;
  for (;;) {
    if (st) {
      for (; i + 64 <= n; i += 64) {
        /* Large batches read their source from memory: keep the lines ~16
         * blocks ahead coming (the hardware stream stalls at page edges). */
        for (int64_t l = 0; l < ss; l++) _mm_prefetch(src + (i + 1024) * ss + 64 * l, _MM_HINT_T0);
        if (!fq_kernel(dst + i, src + i * ss, ~(__mmask64)0, c, src_dtype, e5, exact, subc, 1, 1, vb, q, vm)) break;
      }
    } else {
      for (; i + 64 <= n; i += 64)
        if (!fq_kernel(dst + i, src + i * ss, ~(__mmask64)0, c, src_dtype, e5, exact, subc, 1, 0, vb, q, vm)) break;
    }
    if (i >= n) return;
    const __mmask64 m = n - i >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (n - i)) - 1);
    if (i + 64 > n && fq_kernel(dst + i, src + i * ss, m, c, src_dtype, e5, exact, subc, 0, 0, vb, q, vm)) return;
    fp8_exact64(dst + i, src + i * ss, src_dtype, m, scale, e5);
    i += 64;
    if (i >= n) return;
  }
}

typedef void (*fq_row_fn)(uint8_t *dst, const void *src, int64_t n, const fp8_quant *q, int stream);
typedef void (*fq_tokens_fn)(const xk_kv_write_args *a, int which, int64_t t0, int64_t t1, const fp8_quant *qk,
                             const fp8_quant *qv, int stream);
typedef int (*fq_paged_fn)(const xk_kv_write_args *a, int64_t t, int64_t block, const fp8_quant *qk,
                           const fp8_quant *qv, int64_t head, const char *pfk, const char *pfv, int64_t pfb);

/* Flash writes compute the destinations of FQ_GROUP tokens one group ahead
 * and start their translations: scattered slots put each row on its own
 * page, and page walks issued one by one behind a row's stores were not
 * overlapped (T=512 H=8 D=256 random fp8 565 -> 307 us with a prefetch of
 * the current group; one group ahead, into L2, 60 -> 54 us at T=512 H=2
 * D=128 in the harness; 16 tokens rather than 8: random T=8192 H=2 D=128
 * 2-4% faster, prefill 1% slower). Streamed rows take the walk with
 * dst_walk (CLWB) instead of a prefetch (session 10): the prefetch read the
 * row's first line from DRAM only for the streaming store to evict it
 * again (harness, random fp8 T=8192 H=2 D=128 955-985 -> 882-911 us, T=512
 * 47-49 -> 40-44 us; no walk at all: 1055-1065 us). Unstreamed rows (small
 * batches, ordinary stores) keep the prefetch, whose line they use. The
 * walks remain the largest cost of random rows on 4 KiB pages: the same
 * kernel on a destination with transparent huge pages runs T=8192 H=2
 * D=128 random in 660 us instead of ~900 (session 10; session 8: 823 vs
 * 1106 us with the prefetch). Walks measured alone (CLWB of 16384 random
 * rows of a 960 MiB arena, nothing else): 24.5 ns per page walked, 110 ns
 * each when serialised (8.6 / 30 ns with huge pages). With the byte tables
 * (session 8) 24 or 32 tokens ahead changed nothing (harness, 1015-1024 us
 * all three), nor does the conversion bound it: the avx512 and vbmi builds
 * differ by ~2% there; 8 tokens ahead with CLWB: within noise of 16.
 * Measured and not kept for fp8 rows (session 10, harness, random T=8192
 * H=2 D=128): each token's walk issued while the previous token converts
 * (one per token, 4-16 ahead, CLWB or prefetch): 40-50% slower, the walk
 * trigger cannot retire before its walk and ~3 tokens of conversion fill
 * the reorder window (perf: most samples right after the CLWB); groups of
 * 4 / 8 / 32: 852-947 / 855-929 / 925 vs 892-936 us for 16, T=512 worse for
 * 4 and 8; converting 4-32 tokens into an L1 buffer and then streaming them
 * in a tight loop: 875-1030 us (the stores of a group no longer overlap
 * the next group's conversion). The write pattern alone (conversion
 * replaced by one byte gather per line, the walks ahead or none): 655-700
 * us, ~the 80% floor at the quiet copy probe (623-687 us), with the
 * conversion alone (source reads included) ~306 us. */
#define FQ_GROUP 16

/* Translates p (a page walk on a TLB miss) without reading its line, for a
 * row that streaming stores overwrite: CLWB writes back a dirty copy of the
 * line if there is one (no change to memory's contents) and reads nothing.
 * Every AVX-512 + BF16 processor (this tier) has CLWB. */
static inline __attribute__((always_inline)) void dst_walk(const void *p) {
  __asm__ volatile("clwb %0" : : "m"(*(const char *)p));
}

/* Every token of [t0, t1) of the flash caches in `which` (1 key, 2 value,
 * 3 both) whose heads form one contiguous row in the source and the cache.
 * With both, a token's key and value rows are converted one after the other,
 * so two source streams are in flight (one cache after the other left the
 * loads of one stream waiting: T=8192 H=2 D=128 random 1052 -> 968 us); the
 * value scale's constants differ from the key's in r, r2 and (bf16 sources,
 * exact scales) the normal-range bound norm16 / span16, swapped per row.
 * (Swapping r and r2 alone let value rows use the key scale's bound: k_scale
 * 0.5 and v_scale 1.0 wrote wrong codes for values in [2^-7, 2^-6).) */
static inline __attribute__((always_inline)) void fq_tokens_body(const xk_kv_write_args *a, int which, int64_t t0,
                                                                 int64_t t1, const fp8_quant *qk, const fp8_quant *qv,
                                                                 int stream, int32_t src_dtype, int e5, int exact,
                                                                 int subc, int vb) {
  const fp8_quant *q0 = which & 1 ? qk : qv;
  fq_consts c = fq_consts_make(q0, e5, exact, vb);
  const fq_scale_regs sck = fq_scale_regs_of(qk, vb && (which & 1)), scv = fq_scale_regs_of(qv, vb && (which >> 1));
  const int64_t ss = xk_dtype_size(src_dtype);
  const char *srck = (const char *)a->key, *srcv = (const char *)a->value;
  const int64_t sk = a->key_stride_token * ss, sv = a->value_stride_token * ss;
  uint8_t *kc = (uint8_t *)a->key_cache, *vc = (uint8_t *)a->value_cache;
  const int64_t *kst = a->key_cache_strides, *vst = a->value_cache_strides;
  const int64_t n = a->num_heads * a->head_size, bs = a->block_size;
  const int pow2 = (bs & (bs - 1)) == 0;
  const int sh = pow2 ? __builtin_ctzll((unsigned long long)bs) : 0;
  const int do_k = which & 1, do_v = which >> 1;
  int vm = 0; /* fqv64's hold count, over the rows */
  uint8_t *dk[2][FQ_GROUP], *dv[2][FQ_GROUP];
  uintptr_t prev_k = 1, prev_v = 1; /* no page */
  int cur = 0;
  for (int64_t g = t0 - FQ_GROUP; g < t1; g += FQ_GROUP) {
    /* Destinations of the next group, their lines asked for. */
    const int64_t gn = g + FQ_GROUP < t1 ? (t1 - g - FQ_GROUP < FQ_GROUP ? t1 - g - FQ_GROUP : FQ_GROUP) : 0;
    for (int64_t j = 0; j < gn; j++) {
      const int64_t slot = slot_of(a, g + FQ_GROUP + j);
      if (slot < 0) {
        dk[cur ^ 1][j] = dv[cur ^ 1][j] = 0;
        continue;
      }
      const int64_t blk = pow2 ? slot >> sh : slot / bs, off = pow2 ? slot & (bs - 1) : slot % bs;
      dk[cur ^ 1][j] = kc + blk * kst[0] + off * kst[1];
      dv[cur ^ 1][j] = vc + blk * vst[0] + off * vst[1];
      /* Rows of consecutive slots share pages (prefill): one request per
       * new page, the lines themselves are overwritten by streaming stores. */
      if (do_k && (((uintptr_t)dk[cur ^ 1][j] ^ prev_k) >> 12)) {
        if (stream) dst_walk(dk[cur ^ 1][j]);
        else _mm_prefetch((const char *)dk[cur ^ 1][j], _MM_HINT_T2);
      }
      if (do_v && (((uintptr_t)dv[cur ^ 1][j] ^ prev_v) >> 12)) {
        if (stream) dst_walk(dv[cur ^ 1][j]);
        else _mm_prefetch((const char *)dv[cur ^ 1][j], _MM_HINT_T2);
      }
      prev_k = (uintptr_t)dk[cur ^ 1][j];
      prev_v = (uintptr_t)dv[cur ^ 1][j];
    }
    if (g >= t0) {
      const int64_t m = t1 - g < FQ_GROUP ? t1 - g : FQ_GROUP;
      for (int64_t j = 0; j < m; j++) {
        if (!dk[cur][j]) continue;
        if (do_k) {
          fq_use_scale(&c, &sck, vb);
          fq_run(dk[cur][j], srck + (g + j) * sk, n, &c, qk, src_dtype, e5, exact, subc, stream, vb, &vm);
        }
        if (do_v) {
          fq_use_scale(&c, &scv, vb);
          fq_run(dv[cur][j], srcv + (g + j) * sv, n, &c, qv, src_dtype, e5, exact, subc, stream, vb, &vm);
        }
      }
    }
    cur ^= 1;
  }
}

/* ---- paged prefill runs, bf16 -> fp8, converted straight into lines -------
 * A run of 16 tokens at offsets 0..15 of a block (block_size 16) fills whole
 * lines of both paged caches: key chunk c of tokens j..j+3 is one line
 * (4 x 16 codes), value elements d..d+3 of the 16 tokens are one line. Both
 * come from the same tile, elements 16c..16c+15 of four tokens (four 32-byte
 * source loads): the key line is the tile's codes as they are; four tiles
 * (16 tokens) transposed in registers (two dword permutes and a byte
 * shuffle per line) give the value's 16 rows of 16 codes. Conversion
 * and streaming stores then alternate line by line, as in the flash rows,
 * instead of a run's conversion into L1 followed by its stores (the store
 * phase stalled on the fill buffers while the conversion waited: T=8192
 * H=2 D=128 fp8 prefill 1.02 ms vs 0.65 ms for the same bytes in the flash
 * layout). A tile that needs the exact path is converted by fp8_exact64
 * from a copy. Returns 0 (nothing written) when the run does not fit.
 * Measured and not kept (session 7, harness old/new interleaved and bench,
 * T=8192 H=2 D=128 mostly): whole-line loads of two tokens, lanes regrouped
 * by vshufi32x4 instead of 32-byte halves inserted (harness 2-4% faster;
 * bench within noise, 0-5% either way over nine alternations); the next
 * step's 32 source lines prefetched into L1 (5-10% slower); the next run's
 * sources two runs ahead or every other line (no change); key and value
 * tiles interleaved per four tokens (1-2% slower); all heads of a run in
 * one call, constants made once (per-tensor scales; no change). With the
 * conversion left out (timing only) the same loads and stores take ~590 us,
 * flash fp8 ~616 us, this path ~700 us (load ~3): what is left is
 * conversion work not hidden behind the memory traffic. */
#define FQ_TILE_LOAD(p, s)                                                                                          \
  _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p))),                              \
                     _mm256_loadu_si256((const __m256i *)((p) + (s))), 1)

static inline __attribute__((always_inline)) __m512i fq_tile(const char *src, int64_t stok, const fq_consts *c,
                                                             const fp8_quant *q, int e5, int exact, int vb, int *vm) {
  const __m512i ra = FQ_TILE_LOAD(src, stok), rb = FQ_TILE_LOAD(src + 2 * stok, stok);
  __m512i b;
  if (vb) {
    if (__builtin_expect(fqv64(&b, ra, rb, c, q, vm), 1)) return b;
    return fqv_slow(ra, rb, q, e5);
  }
  if (__builtin_expect(fp8_fast64_bf16_regs(&b, ra, rb, c, e5, exact), 1)) return b;
  _Alignas(64) uint16_t tmp[64];
  _Alignas(64) uint8_t codes[64];
  _mm512_store_si512(tmp, ra);
  _mm512_store_si512(tmp + 32, rb);
  fp8_exact64(codes, tmp, XK_BF16, ~(__mmask64)0, q->scale, e5);
  return _mm512_load_si512(codes);
}

/* Table path: elements 0..31 of four token rows (stok bytes apart), four
 * whole-line loads; each pair of rows is gathered in the order [row 0
 * elements 0-15 | row 1 0-15 | row 0 16-31 | row 1 16-31] (c->ilo is set so
 * in fq_paged_body), and two 128-bit lane shuffles give the two tiles of
 * fq_tile (elements 0-15, then 16-31, of the four rows). fq_tile's two
 * 32-byte loads and an insert per register cost 8 loads and 4 shuffles per
 * pair of tiles, this 4 loads and 2 shuffles. */
static inline __attribute__((always_inline)) void fqv_quad(__m512i out[2], const char *s, int64_t stok,
                                                           const fq_consts *c, const fp8_quant *q, int e5, int *vm) {
  const __m512i r0 = _mm512_loadu_si512(s), r1 = _mm512_loadu_si512(s + stok);
  const __m512i r2 = _mm512_loadu_si512(s + 2 * stok), r3 = _mm512_loadu_si512(s + 3 * stok);
  __m512i c01, c23;
  if (__builtin_expect(!fqv64(&c01, r0, r1, c, q, vm), 0))
    c01 = fqv_slow(_mm512_shuffle_i64x2(r0, r1, 0x44), _mm512_shuffle_i64x2(r0, r1, 0xee), q, e5);
  if (__builtin_expect(!fqv64(&c23, r2, r3, c, q, vm), 0))
    c23 = fqv_slow(_mm512_shuffle_i64x2(r2, r3, 0x44), _mm512_shuffle_i64x2(r2, r3, 0xee), q, e5);
  out[0] = _mm512_shuffle_i64x2(c01, c23, 0x44);
  out[1] = _mm512_shuffle_i64x2(c01, c23, 0xee);
}

static inline __attribute__((always_inline)) int fq_paged_body(const xk_kv_write_args *a, int64_t t, int64_t block,
                                                               const fp8_quant *qk, const fp8_quant *qv,
                                                               int64_t head, const char *pfk, const char *pfv,
                                                               int64_t pfb, int32_t src_dtype, int e5, int exact,
                                                               int vb) {
  const int64_t D = a->head_size, *ks = a->key_cache_strides, *vs = a->value_cache_strides;
  if (src_dtype != XK_BF16 || D % 32) return 0;
  fq_consts c = fq_consts_make(qk, e5, exact, vb);
  const fq_scale_regs sck = fq_scale_regs_of(qk, vb), scv = fq_scale_regs_of(qv, vb);
  const int64_t sk = a->key_stride_token * 2, sv = a->value_stride_token * 2;
  const char *k0 = (const char *)a->key + (t * a->key_stride_token + head * a->key_stride_head) * 2;
  const char *v0 = (const char *)a->value + (t * a->value_stride_token + head * a->value_stride_head) * 2;
  uint8_t *kd = (uint8_t *)a->key_cache + block * ks[0] + head * ks[1];
  uint8_t *vd = (uint8_t *)a->value_cache + block * vs[0] + head * vs[1];
  const int64_t pstep = pfb / (D / 32);
  int vm = 0;
  if (vb) { /* fqv_quad's byte order */
    c.ilo = _mm512_setr_epi64(0x0e0c0a0806040200ll, 0x1e1c1a1816141210ll, 0x4e4c4a4846444240ll, 0x5e5c5a5856545250ll,
                              0x2e2c2a2826242220ll, 0x3e3c3a3836343230ll, 0x6e6c6a6866646260ll, 0x7e7c7a7876747270ll);
    c.ihi = _mm512_add_epi8(c.ilo, _mm512_set1_epi8(1));
    __asm__("" : "+v"(c.ilo), "+v"(c.ihi));
  }
  __m512i gidx[4];
  for (int k = 0; k < 4; k++) /* lane q, dword i: tile q's dword 4i + k (tiles 0|1, then 2|3) */
    gidx[k] = _mm512_add_epi32(_mm512_set_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0),
                               _mm512_set1_epi32(k));
  const __m512i btr = _mm512_set4_epi32(0x0f0b0703, 0x0e0a0602, 0x0d090501, 0x0c080400); /* byte 4m+i <- 4i+m */
  const __m512i dtr = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0); /* dword 4m+q <- 4q+m */
  for (int64_t d = 0; d < D; d += 32) {
    /* This step's share of the pfb bytes to prefetch (see write_run_paged). */
    for (int64_t l = (d / 32) * pstep; l < (d / 32 + 1) * pstep; l += 64) {
      _mm_prefetch(pfk + l, _MM_HINT_T1);
      _mm_prefetch(pfv + l, _MM_HINT_T1);
    }
    /* Key chunks d / 16 and d / 16 + 1: four lines of four tokens each;
     * both halves of a source line are read together. */
    fq_use_scale(&c, &sck, vb);
    uint8_t *kl = kd + (d / 16) * ks[2];
    for (int j = 0; j < 16; j += 4) {
      const char *sj = k0 + j * sk + d * 2;
      if (vb) {
        __m512i kt[2];
        fqv_quad(kt, sj, sk, &c, qk, e5, &vm);
        _mm512_stream_si512((void *)(kl + j * 16), kt[0]);
        _mm512_stream_si512((void *)(kl + ks[2] + j * 16), kt[1]);
        continue;
      }
      _mm512_stream_si512((void *)(kl + j * 16), fq_tile(sj, sk, &c, qk, e5, exact, vb, &vm));
      _mm512_stream_si512((void *)(kl + ks[2] + j * 16), fq_tile(sj + 32, sk, &c, qk, e5, exact, vb, &vm));
    }
    /* Value elements d..d+31: four tiles per 16 elements (tokens 4q..4q+3
     * in tile q), transposed in registers: a line's 16 dwords gathered
     * (tile q's dword 4i+K: token 4q+i, elements 4K..4K+3) into lane q,
     * each lane's 4x4 bytes transposed, then the 4x4 dwords. */
    fq_use_scale(&c, &scv, vb);
    __m512i tv[2][4];
    for (int q = 0; q < 4; q++) {
      const char *sj = v0 + 4 * q * sv + d * 2;
      if (vb) {
        __m512i vt2[2];
        fqv_quad(vt2, sj, sv, &c, qv, e5, &vm);
        tv[0][q] = vt2[0];
        tv[1][q] = vt2[1];
        continue;
      }
      tv[0][q] = fq_tile(sj, sv, &c, qv, e5, exact, vb, &vm);
      tv[1][q] = fq_tile(sj + 32, sv, &c, qv, e5, exact, vb, &vm);
    }
    for (int hf = 0; hf < 2; hf++) {
      uint8_t *vl = vd + (d + 16 * hf) * vs[2];
      for (int k = 0; k < 4; k++) {
        const __m512i lo = _mm512_permutex2var_epi32(tv[hf][0], gidx[k], tv[hf][1]);
        const __m512i hi = _mm512_permutex2var_epi32(tv[hf][2], gidx[k], tv[hf][3]);
        const __m512i r = _mm512_shuffle_epi8(_mm512_mask_blend_epi32(0xff00, lo, hi), btr);
        _mm512_stream_si512((void *)(vl + k * 64), _mm512_permutexvar_epi32(dtr, r));
      }
    }
  }
  return 1;
}

/* One variant (source dtype, fp8 format, exact / window, subnormal check):
 * a row, the flash tokens and the paged runs above. VB: the byte tables
 * (bf16 sources, XK_KV_VBMI builds). */
#define FQ_VARIANT(SUF, SRC, E5, EXACT, SUBC, VB)                                                            \
  static __attribute__((noinline)) void fq_row_##SUF(uint8_t *dst, const void *src, int64_t n,          \
                                                     const fp8_quant *q, int stream) {                  \
    const fq_consts c = fq_consts_make(q, E5, EXACT, VB);                                                    \
    int vm = 0;                                                                                          \
    fq_run(dst, (const char *)src, n, &c, q, SRC, E5, EXACT, SUBC, stream, VB, &vm);                       \
  }                                                                                                      \
  static __attribute__((noinline)) void fq_tokens_##SUF(const xk_kv_write_args *a, int which, int64_t t0, \
                                                        int64_t t1, const fp8_quant *qk, const fp8_quant *qv, \
                                                        int stream) {                                    \
    fq_tokens_body(a, which, t0, t1, qk, qv, stream, SRC, E5, EXACT, SUBC, VB);                              \
  }                                                                                                      \
  static __attribute__((noinline)) int fq_paged_##SUF(const xk_kv_write_args *a, int64_t t, int64_t block, \
                                                      const fp8_quant *qk, const fp8_quant *qv, int64_t head, \
                                                      const char *pfk, const char *pfv, int64_t pfb) {   \
    return fq_paged_body(a, t, block, qk, qv, head, pfk, pfv, pfb, SRC, E5, EXACT, VB);                      \
  }
FQ_VARIANT(bf16_e4_exact, XK_BF16, 0, 1, 0, 0)
FQ_VARIANT(bf16_e4_approx, XK_BF16, 0, 0, 0, 0)
FQ_VARIANT(bf16_e5_exact, XK_BF16, 1, 1, 0, 0)
FQ_VARIANT(bf16_e5_approx, XK_BF16, 1, 0, 0, 0)
FQ_VARIANT(f16_e4_exact, XK_F16, 0, 1, 0, 0)
FQ_VARIANT(f16_e4_exactc, XK_F16, 0, 1, 1, 0)
FQ_VARIANT(f16_e4_approx, XK_F16, 0, 0, 0, 0)
FQ_VARIANT(f16_e5_exact, XK_F16, 1, 1, 0, 0)
FQ_VARIANT(f16_e5_exactc, XK_F16, 1, 1, 1, 0)
FQ_VARIANT(f16_e5_approx, XK_F16, 1, 0, 0, 0)
FQ_VARIANT(f32_e4_exact, XK_F32, 0, 1, 0, 0)
FQ_VARIANT(f32_e4_exactc, XK_F32, 0, 1, 1, 0)
FQ_VARIANT(f32_e4_approx, XK_F32, 0, 0, 0, 0)
FQ_VARIANT(f32_e5_exact, XK_F32, 1, 1, 0, 0)
FQ_VARIANT(f32_e5_exactc, XK_F32, 1, 1, 1, 0)
FQ_VARIANT(f32_e5_approx, XK_F32, 1, 0, 0, 0)
#ifdef XK_KV_VBMI
FQ_VARIANT(bf16_e4_vb, XK_BF16, 0, 1, 0, 1)
FQ_VARIANT(bf16_e5_vb, XK_BF16, 1, 1, 0, 1)
#endif
#undef FQ_VARIANT

/* The functions for a quantiser; row NULL: scale out of range, divide. */
typedef struct fq_fns {
  fq_row_fn row;
  fq_tokens_fn tokens;
  fq_paged_fn paged;
} fq_fns;

static inline fq_fns fq_fns_for(const fp8_quant *q, int32_t src_dtype, int32_t cache_dtype) {
#define FQ_PICK(SUF) \
  do {               \
    f.row = fq_row_##SUF; \
    f.tokens = fq_tokens_##SUF; \
    f.paged = fq_paged_##SUF; \
  } while (0)
  fq_fns f = {0, 0, 0};
  if (!q->fast) return f;
  const int e5 = cache_dtype == XK_F8E5M2;
  const int mode = q->sub_exact ? 2 : q->exact ? 1 : 0; /* bf16 has no "exact, check subnormals" mode */
  switch (src_dtype) {
    case XK_BF16:
#ifdef XK_KV_VBMI
      if (q->vt) {
        if (e5) FQ_PICK(bf16_e5_vb); else FQ_PICK(bf16_e4_vb);
        break;
      }
#endif
      if (mode == 2) { if (e5) FQ_PICK(bf16_e5_exact); else FQ_PICK(bf16_e4_exact); }
      else { if (e5) FQ_PICK(bf16_e5_approx); else FQ_PICK(bf16_e4_approx); }
      break;
    case XK_F16:
      if (mode == 2) { if (e5) FQ_PICK(f16_e5_exact); else FQ_PICK(f16_e4_exact); }
      else if (mode == 1) { if (e5) FQ_PICK(f16_e5_exactc); else FQ_PICK(f16_e4_exactc); }
      else { if (e5) FQ_PICK(f16_e5_approx); else FQ_PICK(f16_e4_approx); }
      break;
    case XK_F32:
      if (mode == 2) { if (e5) FQ_PICK(f32_e5_exact); else FQ_PICK(f32_e4_exact); }
      else if (mode == 1) { if (e5) FQ_PICK(f32_e5_exactc); else FQ_PICK(f32_e4_exactc); }
      else { if (e5) FQ_PICK(f32_e5_approx); else FQ_PICK(f32_e4_approx); }
      break;
    default: break;
  }
  return f;
#undef FQ_PICK
}
#endif

#if XK_F32_LANES == 8
/* ---- bf16 -> fp8 by byte tables (AVX2) ------------------------------------
 * vdivps plus the vector encoder took ~0.5 ns per element here (Zen 3):
 * every fp8 write ran at 4-6 GB/s. For a bf16 x = (1 + m/128) 2^(E-127)
 * with E = 2 e7 + e0 (e7: the high byte without its sign, e0: bit 7 of the
 * low byte), doubling x doubles x / s exactly and, while q = RN(x / s) is a
 * normal f32, moves the reference encoder's normal-branch code by S = 8
 * (e4m3) or 4 (e5m2) before its clamp. So code + 128 = V = U(e7) + S e0 +
 * T(m) with U(e7) = 2 S e7 + c0 - S Eref + 128 and T(m) = code(Eref, m) - c0,
 * taken from the reference encoder at the scale's exponent Eref, where all
 * 128 mantissas give normal codes (the same identity as fqv_make's). Every
 * term is a byte, looked up by vpshufb (16 entries, within 128-bit lanes):
 * - U by idx = min(e7 - e7lo, 15): e7lo is the first exponent pair whose
 *   codes can be normal (V >= 128 + S), lower ones give a negative index
 *   (vpshufb returns 0: the lane is sent to the exact path), and 16 pairs
 *   reach the saturated range for e4m3; e5m2 (31 binades) saturates lanes
 *   past e7lo + 15 with a compare.
 * - T is monotone in m, 0..S, and its steps are more than 8 mantissas
 *   apart (a quotient binade spans 64-128 mantissas, 8 steps, or 4 for
 *   e5m2), so a group of 16 mantissas (g = m >> 4) holds at most two:
 *   S e0 + T(m) = A(e0, g) + [m & 15 > t1(g)] + [m & 15 > t2(g)], three
 *   lookups by the low byte's top nibble and two compares of the low
 *   byte (8 e0 + g in both high nibbles). bt_make checks
 *   that form against the reference's 128 codes, else no tables.
 * V < 128 + S (fp8 subnormals, zeros, bf16 exponents 0-1) and e7 = 127
 * (Inf, NaN, 2^127: e7 + 1 wraps to 0, below e7lo) send their 8-element
 * group to the divide. The tables
 * hold V' = V + o - 128 with o = 255 - max code (129 e4m3, 132 e5m2), so
 * the saturating add of U and T clamps at the largest finite code by itself;
 * the code is V' - o, plus 128 for negative lanes: one add of a sign term
 * (min, andnot and xor before: 0.1135 -> 0.1105 ns per element, L1, on a
 * busy machine). ~23 vector ops per 32 elements: 0.082 ns per element
 * against 0.43 for the divide (Zen 3, 16384 elements from L1, uniform in
 * [0, 1) at scale 0.01, fastest of 2000 runs; the loop is bound by its op
 * count, ~0.3 cycles per op; llvm-mca puts the vpshufb/unpack/shift/permute
 * pipes FP1-FP2 at the limit, 13.8 cycles per 64 elements). Checked against the reference for all 65536 bf16 patterns
 * (tests/kv_cache_fp8_quant.rs, 25 scales, both formats). */
typedef struct bt_tabs {
  uint8_t u[16];      /* U(e7lo + i) + o - 128, clamped to [0, 255] */
  uint8_t a[16];      /* A(e0, g) at index 8 e0 + g */
  uint8_t t1[16];     /* low byte of the mantissa before group g's first step (16 g + 15: none) */
  uint8_t t2[16];     /* before its second step */
  int e7lo;
  int e7sat;          /* e5m2: exponent pairs above it saturate (127: none) */
} bt_tabs;

/* Returns 0 (no tables) when the identity above cannot be applied. */
static int bt_make(bt_tabs *t, float scale, int e5) {
  const uint32_t sb = xk_f32_bits(scale), eref = sb >> 23;
  if (eref < 1 || eref > 253) return 0; /* also negative and non-finite scales */
  const int S = e5 ? 4 : 8, maxc = e5 ? 0x7b : 0x7e;
  const xk_fp8_format *fmt = e5 ? &XK_E5M2 : &XK_E4M3;
  const __m256 vs = _mm256_set1_ps(scale);
  _Alignas(32) int32_t code[128];
  for (int j = 0; j < 16; j++) {
    const __m256i m = _mm256_add_epi32(_mm256_set1_epi32((int32_t)(eref << 7) + 8 * j),
                                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 x = _mm256_castsi256_ps(_mm256_slli_epi32(m, 16));
    _mm256_store_si256((__m256i *)(code + 8 * j), xk_fp8_encode8(_mm256_div_ps(x, vs), fmt));
  }
  const int c0 = code[0];
  if (c0 < S || code[127] >= maxc) return 0;
  for (int g = 0; g < 8; g++) {
    const int base = code[16 * g] - c0;
    int th[2] = {16, 16}, k = 0;
    for (int j = 1; j < 16; j++) {
      const int d = code[16 * g + j] - code[16 * g + j - 1];
      if (d < 0 || d > 1 || (d && k == 2)) return 0;
      if (d) th[k++] = j;
    }
    if (base < 0 || base + k > S) return 0;
    t->a[g] = (uint8_t)base;
    t->a[g + 8] = (uint8_t)(base + S);
    for (int e0 = 0; e0 < 2; e0++) { /* the low byte of m = 16 g + th - 1, e0 in its bit 7 */
      t->t1[g + 8 * e0] = (uint8_t)(16 * (g + 8 * e0) + th[0] - 1);
      t->t2[g + 8 * e0] = (uint8_t)(16 * (g + 8 * e0) + th[1] - 1);
    }
  }
  /* U(e7) = 2 S e7 + k0; e7lo: the first pair with U + 2 S >= 128 + S. */
  const int k0 = c0 - S * (int)eref + 128;
  int e7lo = 0;
  while (e7lo < 127 && 2 * S * e7lo + k0 < 128 - S) e7lo++;
  if (e7lo < 1 || e7lo > 126) return 0; /* exponents 0-1 (subnormal bf16) must leave */
  for (int i = 0; i < 16; i++) {
    const int v = 2 * S * (e7lo + i) + k0 + 127 - maxc;
    t->u[i] = (uint8_t)(v > 255 ? 255 : v);
  }
  t->e7lo = e7lo;
  t->e7sat = e5 && e7lo + 15 < 127 ? e7lo + 15 : 127;
  return 1;
}
#endif

/* fp8 caches store saturate(x / scale). When scale is a power of two its
 * reciprocal is exact and x * (1 / scale) is the same real number as
 * x / scale, so both round alike: multiply (vLLM's default scale 1.0 is the
 * common case). Other scales divide, except on AVX-512, where fp8_quant
 * (above) multiplies and proves each lane. */
typedef struct scale_div {
  float scale, inv;
  int pow2;
#if XK_F32_LANES == 16
  fp8_quant fq;
  fq_row_fn row;       /* NULL: the divide below */
  fq_tokens_fn tokens;
  fq_paged_fn paged;
#elif XK_F32_LANES == 8
  const bt_tabs *bt; /* bf16 -> fp8 byte tables (bt_use), NULL: none */
#endif
} scale_div;

/* vt: room for the byte tables (XK_KV_VBMI; ~0.5 us to make, for large grid
 * blocks), NULL: none. */
static inline scale_div scale_div_make(float scale, int32_t src_dtype, int32_t cache_dtype, fqv_tabs *vt) {
  scale_div d;
  uint32_t u = xk_f32_bits(scale);
  d.scale = scale;
  d.inv = 1.0f / scale;
  d.pow2 = (u & 0x7fffffu) == 0 && (u >> 23) >= 1 && (u >> 23) <= 254;
#if XK_F32_LANES == 16
  d.fq = fp8_quant_make(scale, src_dtype, cache_dtype);
#ifdef XK_KV_VBMI
  if (vt && d.fq.fast && src_dtype == XK_BF16 && xk_is_fp8(cache_dtype) &&
      fqv_make(vt, &d.fq, cache_dtype == XK_F8E5M2))
    d.fq.vt = vt;
#else
  (void)vt;
#endif
  const fq_fns f = xk_is_fp8(cache_dtype) ? fq_fns_for(&d.fq, src_dtype, cache_dtype) : (fq_fns){0, 0, 0};
  d.row = f.row;
  d.tokens = f.tokens;
  d.paged = f.paged;
#else
  (void)src_dtype;
  (void)cache_dtype;
  (void)vt;
#if XK_F32_LANES == 8
  d.bt = NULL;
#endif
#endif
  return d;
}

/* Head h's scale: the per-tensor one (all) unless the scales are per head
 * (a stride); then the one made once per grid block (pre, when there is
 * one) or one made now into tmp. */
static inline const scale_div *head_scale(const xk_kv_write_args *a, const scale_div *all, const scale_div *pre,
                                          const float *scales, int64_t stride, int64_t h, scale_div *tmp) {
  if (!scales || !stride) return all;
  if (pre) return &pre[h];
  *tmp = scale_div_make(scales[h * stride], a->src_dtype, a->cache_dtype, NULL);
  return tmp;
}

/* ---- fp8 rows with the formats known at compile time ---------------------
 * xk_convert_row dispatches on the dtypes for every vector and reads the fp8
 * format through a pointer; for the common source/cache pairs the loop below
 * is instantiated with constant dtypes, so the switch and the format
 * constants fold away. Same arithmetic, same bits. Returns the elements done
 * (a multiple of the vector width); the caller finishes the tail. */
#if XK_F32_LANES == 16
static inline __attribute__((always_inline)) int64_t fp8_row_vec(uint8_t *dst, const char *src, int64_t n,
                                                                 int32_t src_dtype, int32_t dst_dtype,
                                                                 float s, int mul) {
  const xk_fp8_format *fmt = xk_fp8_format_of(dst_dtype);
  const int64_t ss = xk_dtype_size(src_dtype);
  const __m512 vs = _mm512_set1_ps(s);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = xk_load16(src + i * ss, src_dtype);
    const __m512 q = mul ? _mm512_mul_ps(v, vs) : _mm512_div_ps(v, vs);
    _mm_storeu_si128((__m128i *)(dst + i), _mm512_cvtepi32_epi8(xk_fp8_encode16(q, fmt)));
  }
  return i;
}
#elif XK_F32_LANES == 8
static inline __attribute__((always_inline)) int64_t fp8_row_vec(uint8_t *dst, const char *src, int64_t n,
                                                                 int32_t src_dtype, int32_t dst_dtype,
                                                                 float s, int mul) {
  const xk_fp8_format *fmt = xk_fp8_format_of(dst_dtype);
  const int64_t ss = xk_dtype_size(src_dtype);
  const __m256 vs = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = xk_load8(src + i * ss, src_dtype);
    const __m256 q = mul ? _mm256_mul_ps(v, vs) : _mm256_div_ps(v, vs);
    _mm_storel_epi64((__m128i *)(dst + i), xk_pack8_lo_bytes(xk_fp8_encode8(q, fmt)));
  }
  return i;
}
#endif

#if XK_F32_LANES > 1
#define XK_FP8_ROW(SRC, DST)                                                          \
  static int64_t fp8_row_##SRC##_##DST(uint8_t *dst, const char *src, int64_t n, float s, int mul) { \
    return mul ? fp8_row_vec(dst, src, n, XK_##SRC, XK_##DST, s, 1)                   \
               : fp8_row_vec(dst, src, n, XK_##SRC, XK_##DST, s, 0);                  \
  }
XK_FP8_ROW(BF16, F8E4M3)
XK_FP8_ROW(F16, F8E4M3)
XK_FP8_ROW(F32, F8E4M3)
XK_FP8_ROW(BF16, F8E5M2)
XK_FP8_ROW(F16, F8E5M2)
XK_FP8_ROW(F32, F8E5M2)
#undef XK_FP8_ROW
#endif

#if XK_F32_LANES == 8
/* The byte tables' constants, in registers for a row. */
typedef struct bt_regs {
  __m256i u, a, t1, t2, deint, e7lo, e7sat, step, x7f, x0f, x03, one;
} bt_regs;

static inline __attribute__((always_inline)) bt_regs bt_regs_make(const bt_tabs *t, int e5) {
  bt_regs c;
  c.u = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t->u));
  c.a = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t->a));
  c.t1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t->t1));
  c.t2 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t->t2));
  /* Per 128-bit lane: the low bytes of its 8 words, then the high bytes. */
  c.deint = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3,
                             5, 7, 9, 11, 13, 15);
  c.e7lo = _mm256_set1_epi8((char)(t->e7lo + 1)); /* compared with e7 + 1 */
  c.e7sat = _mm256_set1_epi8((char)(t->e7sat < 127 ? t->e7sat + 1 : 127)); /* e7 + 1 <= 127: none */
  c.one = _mm256_set1_epi8(1);
  c.step = _mm256_set1_epi8((char)(e5 ? 8 : 9)); /* o + S - 128 */
  c.x7f = _mm256_set1_epi8(0x7f);
  c.x0f = _mm256_set1_epi8(0x0f);
  c.x03 = _mm256_set1_epi8(0x03);
  /* Opaque to the compiler: a constant it cannot keep in a register is
   * reloaded from the stack (folded into its use) rather than rebuilt with
   * a broadcast inside the loop. */
  __asm__("" : "+x"(c.u), "+x"(c.a), "+x"(c.t1), "+x"(c.t2), "+x"(c.deint), "+x"(c.e7lo));
  __asm__("" : "+x"(c.e7sat), "+x"(c.step), "+x"(c.x7f), "+x"(c.x0f), "+x"(c.x03), "+x"(c.one));
  return c;
}

/* 32 bf16 (ra: elements 0-15, rb: 16-31) -> V' = code + o (saturated) in
 * *v, element order of lanes 0 | 1: 0-7, 16-23 | 8-15, 24-31, and the sign
 * addend in *sg: 256 - o, plus 128 for negative lanes (hi | 0x7f for e4m3,
 * o = 129; that ^ 3 for e5m2, o = 132). */
static inline __attribute__((always_inline)) void bt32(__m256i ra, __m256i rb, const bt_regs *c, int e5, __m256i *v,
                                                      __m256i *sg) {
  const __m256i pa = _mm256_shuffle_epi8(ra, c->deint), pb = _mm256_shuffle_epi8(rb, c->deint);
  const __m256i lo = _mm256_unpacklo_epi64(pa, pb), hi = _mm256_unpackhi_epi64(pa, pb);
  /* e7 + 1, 0 for e7 = 127 (Inf, NaN, 2^127: below e7lo, to the exact path). */
  const __m256i e7p = _mm256_and_si256(_mm256_add_epi8(hi, c->one), c->x7f);
  const __m256i idx = _mm256_min_epi8(_mm256_sub_epi8(e7p, c->e7lo), c->x0f); /* < 0: vpshufb gives 0 */
  const __m256i g = _mm256_and_si256(_mm256_srli_epi16(lo, 4), c->x0f);      /* 8 e0 + (m >> 4) */
  /* The thresholds carry g in their high nibble: lo and t(g) share their
   * sign bit, so the signed compare orders them as unsigned bytes. */
  __m256i tm = _mm256_shuffle_epi8(c->a, g);
  tm = _mm256_sub_epi8(tm, _mm256_cmpgt_epi8(lo, _mm256_shuffle_epi8(c->t1, g)));
  tm = _mm256_sub_epi8(tm, _mm256_cmpgt_epi8(lo, _mm256_shuffle_epi8(c->t2, g)));
  __m256i r = _mm256_adds_epu8(_mm256_shuffle_epi8(c->u, idx), tm);
  if (e5) r = _mm256_or_si256(r, _mm256_cmpgt_epi8(e7p, c->e7sat));
  *v = r;
  const __m256i s7f = _mm256_or_si256(hi, c->x7f);
  *sg = e5 ? _mm256_xor_si256(s7f, c->x03) : s7f;
}

/* Bit k set: byte k of v (bt32's V') is >= o + S, a normal code (the sign
 * bit of V' - (o + S - 128), saturating at 0). All 32 set is the check of a block: one
 * vector op fewer than a saturating compare plus vptest, 0.0920 -> 0.0877
 * ns per element (16384 elements from L1, fastest of 2000 runs, Zen 3). */
static inline __attribute__((always_inline)) uint32_t bt_good(__m256i v, const bt_regs *c) {
  return (uint32_t)_mm256_movemask_epi8(_mm256_subs_epu8(v, c->step));
}

/* The codes of bt32's V' (checked >= o + S), in element order: V' - o, plus
 * 128 for negative lanes, is V' + sg (mod 256). */
static inline __attribute__((always_inline)) __m256i bt_codes(__m256i v, __m256i sg, const bt_regs *c) {
  (void)c;
  return _mm256_permute4x64_epi64(_mm256_add_epi8(v, sg), 0xd8);
}

/* n bf16 -> fp8 by the divide and the reference encoder (lanes the tables
 * leave, tails). */
static __attribute__((noinline)) void bt_exact(uint8_t *dst, const uint16_t *src, int64_t n, float scale, int e5) {
  int64_t i = e5 ? fp8_row_BF16_F8E5M2(dst, (const char *)src, n, scale, 0)
                 : fp8_row_BF16_F8E4M3(dst, (const char *)src, n, scale, 0);
  const xk_fp8_format *fmt = e5 ? &XK_E5M2 : &XK_E4M3;
  for (; i < n; i++) dst[i] = xk_f32_to_fp8_scalar(xk_bf16_to_f32_scalar(src[i]) / scale, fmt);
}

/* 32 codes of bt32 (v, sg) stored with ordinary stores, then the 8-element
 * groups holding a lane the tables leave (a clear bit in good, bt_good's
 * mask in bt32's lane order: elements 0-7, 16-23, 8-15, 24-31) redone by
 * bt_exact. The whole 64-element block used to divide: ~11% of the time
 * with uniform data at scale 0.01, where ~1% of the blocks hold a lane below
 * the normal codes (L1, 0.0890 -> 0.0824 ns per element; data without such
 * lanes 0.0792; scale 3.0, ~5% of such lanes, 0.59 -> 0.34). Out of line it
 * measured 0.0850. */
static inline __attribute__((always_inline)) void bt_store32_patched(uint8_t *dst, const uint16_t *src, __m256i v,
                                                                     __m256i sg, uint32_t good, const bt_regs *c,
                                                                     float scale, int e5) {
  _mm256_storeu_si256((__m256i *)dst, bt_codes(v, sg, c));
  for (int g = 0; g < 4; g++) {
    const int e = (g & 1) * 16 + (g >> 1) * 8;
    if (((good >> (8 * g)) & 0xffu) != 0xffu) bt_exact(dst + e, src + e, 8, scale, e5);
  }
}

/* dst[i] = fp8(RN(src[i] / scale)), bit-identical to the reference; with
 * `stream` (dst 64-byte aligned, whole lines), by streaming stores. With pf,
 * the same bytes at pf are asked for as src is read, two lines per 64
 * elements (see bt_rows_run). */
static inline __attribute__((always_inline)) void bt_row_body(uint8_t *dst, const uint16_t *src, int64_t n,
                                                              const bt_regs *cp, float scale, int e5, int stream,
                                                              const char *pf) {
  const bt_regs c = *cp;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    if (pf) {
      _mm_prefetch(pf + 2 * i, _MM_HINT_T0);
      _mm_prefetch(pf + 2 * i + 64, _MM_HINT_T0);
    }
    __m256i v0, s0, v1, s1;
    bt32(_mm256_loadu_si256((const __m256i *)(src + i)), _mm256_loadu_si256((const __m256i *)(src + i + 16)), &c,
         e5, &v0, &s0);
    bt32(_mm256_loadu_si256((const __m256i *)(src + i + 32)), _mm256_loadu_si256((const __m256i *)(src + i + 48)),
         &c, e5, &v1, &s1);
    if (__builtin_expect(bt_good(_mm256_min_epu8(v0, v1), &c) != 0xffffffffu, 0)) {
      bt_store32_patched(dst + i, src + i, v0, s0, bt_good(v0, &c), &c, scale, e5);
      bt_store32_patched(dst + i + 32, src + i + 32, v1, s1, bt_good(v1, &c), &c, scale, e5);
    } else if (stream) {
      _mm256_stream_si256((__m256i *)(dst + i), bt_codes(v0, s0, &c));
      _mm256_stream_si256((__m256i *)(dst + i + 32), bt_codes(v1, s1, &c));
    } else {
      _mm256_storeu_si256((__m256i *)(dst + i), bt_codes(v0, s0, &c));
      _mm256_storeu_si256((__m256i *)(dst + i + 32), bt_codes(v1, s1, &c));
    }
  }
  for (; i + 32 <= n; i += 32) {
    __m256i v, sg;
    bt32(_mm256_loadu_si256((const __m256i *)(src + i)), _mm256_loadu_si256((const __m256i *)(src + i + 16)), &c,
         e5, &v, &sg);
    const uint32_t good = bt_good(v, &c);
    if (good != 0xffffffffu) bt_store32_patched(dst + i, src + i, v, sg, good, &c, scale, e5);
    else if (stream) _mm256_stream_si256((__m256i *)(dst + i), bt_codes(v, sg, &c));
    else _mm256_storeu_si256((__m256i *)(dst + i), bt_codes(v, sg, &c));
  }
  if (i < n) bt_exact(dst + i, src + i, n - i, scale, e5);
}

/* One row for bt_rows: n bf16 at src -> n fp8 at dst; pf (or NULL): a row
 * of the same length to ask for meanwhile (a later token's). */
typedef struct bt_job {
  uint8_t *dst;
  const uint16_t *src;
  const uint16_t *pf;
} bt_job;

/* m rows of n elements through the same tables, their constants made once:
 * made per row they took ~10% of a 256-element row (bt_regs_make, the call,
 * the spills; 0.0988 vs 0.0890 ns per element for rows of 8192, L1).
 * Source rows from memory (a page or more apart, T = 8192) are asked for a
 * row ahead, spread over the conversion (bt_row_body): the next row's lines
 * all at once at the start of a row, as before, stalled the conversion
 * (more misses than the core tracks) and left it and the reads in turn
 * (harness, paged fp8 prefill T=8192 H=8 D=256, conversion alone: 6.2 ms
 * from memory, 3.5 ms with the source in cache; spread: 3.7 ms). */
static inline __attribute__((always_inline)) void bt_rows_run(const bt_job *rows, int64_t m, int64_t n,
                                                              const bt_tabs *t, float scale, int stream,
                                                              const int e5) {
  const bt_regs c = bt_regs_make(t, e5);
  for (int64_t j = 0; j < m; j++) {
    /* Two copies of the body: without a prefetch, no test in its loop. */
    if (rows[j].pf) bt_row_body(rows[j].dst, rows[j].src, n, &c, scale, e5, stream, (const char *)rows[j].pf);
    else bt_row_body(rows[j].dst, rows[j].src, n, &c, scale, e5, stream, NULL);
  }
}

/* One copy per format, so the format is a constant inside each. */
static __attribute__((noinline)) void bt_rows_e4(const bt_job *rows, int64_t m, int64_t n, const bt_tabs *t,
                                                 float scale, int stream) {
  bt_rows_run(rows, m, n, t, scale, stream, 0);
}

static __attribute__((noinline)) void bt_rows_e5(const bt_job *rows, int64_t m, int64_t n, const bt_tabs *t,
                                                 float scale, int stream) {
  bt_rows_run(rows, m, n, t, scale, stream, 1);
}

static inline void bt_rows(const bt_job *rows, int64_t m, int64_t n, int32_t dst_dtype, const bt_tabs *t, float scale,
                           int stream) {
  if (dst_dtype == XK_F8E5M2) bt_rows_e5(rows, m, n, t, scale, stream);
  else bt_rows_e4(rows, m, n, t, scale, stream);
}

/* The row through the tables when d has them (bf16 sources). */
static inline int bt_row(void *dst, int32_t dst_dtype, const void *src, int32_t src_dtype, int64_t n,
                         const scale_div *d, int stream) {
  if (!d->bt || src_dtype != XK_BF16) return 0;
  const bt_job row = {(uint8_t *)dst, (const uint16_t *)src, NULL};
  bt_rows(&row, 1, n, dst_dtype, d->bt, d->scale, stream);
  return 1;
}
#endif

/* dst[i] = convert(src[i]); fp8 destinations store saturate(src[i] / scale),
 * bit-identical to xk_convert_row. */
static inline void convert_row(void *dst, int32_t dst_dtype, const void *src, int32_t src_dtype, int64_t n,
                               const scale_div *d) {
  if (!xk_is_fp8(dst_dtype)) {
    xk_convert_row(dst, dst_dtype, src, src_dtype, n, 1.0f);
    return;
  }
#if XK_F32_LANES == 16
  if (d->row) {
    d->row((uint8_t *)dst, src, n, &d->fq, 0);
    return;
  }
#elif XK_F32_LANES == 8
  if (bt_row(dst, dst_dtype, src, src_dtype, n, d, 0)) return;
#endif
  const float s = d->pow2 ? d->inv : d->scale;
  int64_t i = 0;
#if XK_F32_LANES > 1
  uint8_t *o = (uint8_t *)dst;
  const char *in = (const char *)src;
  const int e4 = dst_dtype == XK_F8E4M3;
  switch (src_dtype) {
    case XK_BF16: i = e4 ? fp8_row_BF16_F8E4M3(o, in, n, s, d->pow2) : fp8_row_BF16_F8E5M2(o, in, n, s, d->pow2); break;
    case XK_F16: i = e4 ? fp8_row_F16_F8E4M3(o, in, n, s, d->pow2) : fp8_row_F16_F8E5M2(o, in, n, s, d->pow2); break;
    case XK_F32: i = e4 ? fp8_row_F32_F8E4M3(o, in, n, s, d->pow2) : fp8_row_F32_F8E5M2(o, in, n, s, d->pow2); break;
    default: break;
  }
#endif
  for (; i < n; i++) {
    const float x = xk_load_scalar(src, src_dtype, i);
    xk_store_scalar(dst, dst_dtype, i, d->pow2 ? x * s : x / s);
  }
}

/* ---- streaming stores ----------------------------------------------------- */

#if XK_F32_LANES > 1
static inline int can_stream(const void *dst, int64_t bytes) {
  return ((uintptr_t)dst & 63u) == 0 && (bytes & 63) == 0;
}

/* dst 64-byte aligned, bytes a multiple of 64. */
static inline void stream_copy(char *dst, const char *src, int64_t bytes) {
#if XK_F32_LANES == 16
  for (int64_t i = 0; i < bytes; i += 64) _mm512_stream_si512((void *)(dst + i), _mm512_loadu_si512(src + i));
#else
  for (int64_t i = 0; i < bytes; i += 32)
    _mm256_stream_si256((__m256i *)(dst + i), _mm256_loadu_si256((const __m256i *)(src + i)));
#endif
}
#endif

#if XK_F32_LANES > 1
/* A converted row streamed out: chunks converted into L1, then streamed
 * (chunks are whole lines). Out of line, so the common path keeps a small frame. */
static __attribute__((noinline)) void stream_converted_row(char *dst, int32_t cache_dtype, const char *src,
                                                           int32_t src_dtype, int64_t head_size, const scale_div *d) {
  _Alignas(64) char staged[XK_ROW_CHUNK * 2];
  const int64_t es = xk_dtype_size(cache_dtype), ss = xk_dtype_size(src_dtype);
  for (int64_t c0 = 0; c0 < head_size; c0 += XK_ROW_CHUNK) {
    const int64_t n = head_size - c0 < XK_ROW_CHUNK ? head_size - c0 : XK_ROW_CHUNK;
    convert_row(staged, cache_dtype, src + c0 * ss, src_dtype, n, d);
    stream_copy(dst + c0 * es, staged, n * es);
  }
}
#endif

#if XK_F32_LANES == 16
/* Flash rows copied as they are (cache dtype = source dtype), every row whole
 * 64-byte lines: a tight loop, the pages of the token FC_AHEAD ahead
 * translated first (dst_walk). The per-row path (write_row_flash) asked for
 * no walk ahead and divided by block_size per token; with random slots its
 * stores waited for one walk after the other (harness, bf16 random T=8192
 * H=2 D=128 897-1200 -> 790 us, T=512 49 -> 36 us; 4 or 16 tokens ahead the
 * same within noise). */
#define FC_AHEAD 8
static void flash_copy_tokens(const xk_kv_write_args *a, int64_t t0, int64_t t1) {
  const int64_t es = xk_dtype_size(a->cache_dtype), row = a->num_heads * a->head_size * es;
  const char *k = (const char *)a->key, *v = (const char *)a->value;
  const int64_t sk = a->key_stride_token * es, sv = a->value_stride_token * es;
  char *kc = (char *)a->key_cache, *vc = (char *)a->value_cache;
  const int64_t k0 = a->key_cache_strides[0] * es, k1 = a->key_cache_strides[1] * es;
  const int64_t v0 = a->value_cache_strides[0] * es, v1 = a->value_cache_strides[1] * es;
  const int64_t bs = a->block_size;
  const int pow2 = (bs & (bs - 1)) == 0;
  const int sh = pow2 ? __builtin_ctzll((unsigned long long)bs) : 0;
  uintptr_t pk = 1, pv = 1; /* no page */
  for (int64_t t = t0; t < t1; t++) {
    if (t + FC_AHEAD < t1) {
      const int64_t s2 = slot_of(a, t + FC_AHEAD);
      if (s2 >= 0) {
        const int64_t b2 = pow2 ? s2 >> sh : s2 / bs, o2 = pow2 ? s2 & (bs - 1) : s2 % bs;
        const char *wk = kc + b2 * k0 + o2 * k1, *wv = vc + b2 * v0 + o2 * v1;
        /* One walk per new page (consecutive slots share pages). */
        if (((uintptr_t)wk ^ pk) >> 12) dst_walk(wk);
        if (((uintptr_t)wv ^ pv) >> 12) dst_walk(wv);
        pk = (uintptr_t)wk;
        pv = (uintptr_t)wv;
      }
    }
    const int64_t slot = slot_of(a, t);
    if (slot < 0) continue;
    const int64_t blk = pow2 ? slot >> sh : slot / bs, off = pow2 ? slot & (bs - 1) : slot % bs;
    stream_copy(kc + blk * k0 + off * k1, k + t * sk, row);
    stream_copy(vc + blk * v0 + off * v1, v + t * sv, row);
  }
}
#endif

#if XK_F32_LANES == 8
/* CLWB (cpuid leaf 7, EBX bit 24): not every AVX2 processor has it (Zen 2+
 * and Intel server parts do); asked once, cpuid is slow under a hypervisor. */
static int has_clwb(void) {
  static _Atomic int known = -1;
  int v = atomic_load_explicit(&known, memory_order_relaxed);
  if (v < 0) {
    unsigned int eax, ebx, ecx, edx;
    v = __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && ((ebx >> 24) & 1u);
    atomic_store_explicit(&known, v, memory_order_relaxed);
  }
  return v;
}

/* Starts the page walk of a destination row: CLWB for a row that streaming
 * stores overwrite (it writes back a dirty copy, if any, and reads nothing),
 * else a prefetch into L2, whose line the ordinary stores then use. */
static inline void row_walk(const void *p, int clwb) {
  if (clwb) __asm__ volatile("clwb %0" : : "m"(*(const char *)p));
  else _mm_prefetch((const char *)p, _MM_HINT_T2);
}

static void write_row_flash(char *cache, const int64_t *st, int32_t cache_dtype, int64_t block, int64_t offset,
                            int64_t head, const void *src, int32_t src_dtype, int64_t head_size,
                            const scale_div *d, int stream);

/* Flash rows written whole (a token's heads contiguous in source and cache),
 * as the AVX-512 tokens loops (fq_tokens_body, flash_copy_tokens): the
 * destinations of the next FR_GROUP tokens are computed one group ahead and
 * their page walks started (one per new page), so the stores of scattered
 * rows do not wait for one walk after the other (Zen 3, harness, random
 * bf16 -> fp8 T=512 H=8 D=128: 263-292 -> 150-160 us best-of-runs; CLWB,
 * prefetcht2 and prefetcht0 within noise of each other there). */
#define FR_GROUP 16
static void flash_rows_ahead(const xk_kv_write_args *a, int64_t t0, int64_t t1, const scale_div *ks,
                             const scale_div *vs, int stream, int src_mem) {
  const int64_t es = xk_dtype_size(a->cache_dtype), ss = xk_dtype_size(a->src_dtype);
  const int64_t n = a->num_heads * a->head_size, bs = a->block_size;
  const int64_t *kst = a->key_cache_strides, *vst = a->value_cache_strides;
  const int pow2 = (bs & (bs - 1)) == 0;
  const int sh = pow2 ? __builtin_ctzll((unsigned long long)bs) : 0;
  const int clwb = stream && has_clwb();
  const int rows_bt = xk_is_fp8(a->cache_dtype) && a->src_dtype == XK_BF16 && ks->bt && vs->bt;
  int64_t blk[2][FR_GROUP], off[2][FR_GROUP];
  uintptr_t prev_k = 1, prev_v = 1; /* no page */
  int cur = 0;
  for (int64_t g = t0 - FR_GROUP; g < t1; g += FR_GROUP) {
    const int64_t gn = g + FR_GROUP < t1 ? (t1 - g - FR_GROUP < FR_GROUP ? t1 - g - FR_GROUP : FR_GROUP) : 0;
    for (int64_t j = 0; j < gn; j++) {
      const int64_t slot = slot_of(a, g + FR_GROUP + j);
      if (slot < 0) {
        blk[cur ^ 1][j] = -1;
        continue;
      }
      const int64_t b = pow2 ? slot >> sh : slot / bs, o = pow2 ? slot & (bs - 1) : slot % bs;
      blk[cur ^ 1][j] = b;
      off[cur ^ 1][j] = o;
      const char *pk = (const char *)a->key_cache + (b * kst[0] + o * kst[1]) * es;
      const char *pv = (const char *)a->value_cache + (b * vst[0] + o * vst[1]) * es;
      if (((uintptr_t)pk ^ prev_k) >> 12) row_walk(pk, clwb);
      if (((uintptr_t)pv ^ prev_v) >> 12) row_walk(pv, clwb);
      prev_k = (uintptr_t)pk;
      prev_v = (uintptr_t)pv;
    }
    if (g >= t0 && rows_bt) {
      /* The group's rows through the byte tables in one call: key and value
       * rows in turn when they share the tables, else all keys, then all
       * values. */
      const int64_t m = t1 - g < FR_GROUP ? t1 - g : FR_GROUP;
      const int same = ks->bt == vs->bt;
      bt_job rows[2][2 * FR_GROUP];
      int64_t r[2] = {0, 0};
      int lines = stream;
      for (int64_t j = 0; j < m; j++) {
        if (blk[cur][j] < 0) continue;
        uint8_t *kd = (uint8_t *)a->key_cache + blk[cur][j] * kst[0] + off[cur][j] * kst[1];
        uint8_t *vd = (uint8_t *)a->value_cache + blk[cur][j] * vst[0] + off[cur][j] * vst[1];
        lines &= can_stream(kd, n) && can_stream(vd, n);
        const uint16_t *ks_row = (const uint16_t *)a->key + (g + j) * a->key_stride_token;
        const uint16_t *vs_row = (const uint16_t *)a->value + (g + j) * a->value_stride_token;
        /* From memory, each row asks for its stream's next token row as it
         * converts (harness, CPU time, T=8192 fp8 H=8 D=256 5.84 -> 4.46
         * ms, D=128 2.17 -> 2.00; H=2 the same within noise). */
        const int next = src_mem && g + j + 1 < t1;
        rows[0][r[0]++] = (bt_job){kd, ks_row, next ? ks_row + a->key_stride_token : NULL};
        rows[!same][r[!same]++] = (bt_job){vd, vs_row, next ? vs_row + a->value_stride_token : NULL};
      }
      bt_rows(rows[0], r[0], n, a->cache_dtype, ks->bt, ks->scale, lines);
      if (r[1]) bt_rows(rows[1], r[1], n, a->cache_dtype, vs->bt, vs->scale, lines);
    } else if (g >= t0) {
      const int64_t m = t1 - g < FR_GROUP ? t1 - g : FR_GROUP;
      for (int64_t j = 0; j < m; j++) {
        if (blk[cur][j] < 0) continue;
        const int64_t t = g + j;
        write_row_flash(a->key_cache, kst, a->cache_dtype, blk[cur][j], off[cur][j], 0,
                        (const char *)a->key + t * a->key_stride_token * ss, a->src_dtype, n, ks, stream);
        write_row_flash(a->value_cache, vst, a->cache_dtype, blk[cur][j], off[cur][j], 0,
                        (const char *)a->value + t * a->value_stride_token * ss, a->src_dtype, n, vs, stream);
      }
    }
    cur ^= 1;
  }
}
#endif

/* Flash layout: the head row is contiguous in the cache, convert straight into it. */
static void write_row_flash(char *cache, const int64_t *st, int32_t cache_dtype, int64_t block, int64_t offset,
                            int64_t head, const void *src, int32_t src_dtype, int64_t head_size,
                            const scale_div *d, int stream) {
  const int64_t es = xk_dtype_size(cache_dtype);
  char *dst = cache + (block * st[0] + offset * st[1] + head * st[2]) * es;
#if XK_F32_LANES > 1
#if XK_F32_LANES == 16
  if (stream && d->row) {
    d->row((uint8_t *)dst, src, head_size, &d->fq, 1);
    return;
  }
#endif
#if XK_F32_LANES == 8
  /* Streamed only as whole lines (a part of a line would go out alone). */
  if (bt_row(dst, cache_dtype, src, src_dtype, head_size, d, stream && can_stream(dst, head_size * es))) return;
#endif
  if (stream && can_stream(dst, head_size * es)) {
    if (cache_dtype == src_dtype) stream_copy(dst, (const char *)src, head_size * es);
    else stream_converted_row(dst, cache_dtype, (const char *)src, src_dtype, head_size, d);
    return;
  }
#else
  (void)stream;
#endif
  convert_row(dst, cache_dtype, src, src_dtype, head_size, d);
}

/* Paged key: [blocks, heads, head_size/x, block_size, x]; each x-chunk is 16
 * contiguous bytes (x * es = 16, checked by the launcher). Fixed-size copies
 * and typed stores below: the element loops of a scattered token ran through
 * a memcpy call per 16-byte chunk and per value element (T=1 H=8 D=256 bf16
 * with the cache in L2: 3.5 us of the call). Same dtypes read the source. */
static void write_row_paged_key(const xk_kv_write_args *a, int64_t block, int64_t offset, int64_t head,
                                const char *src, const scale_div *d) {
  const int64_t es = xk_dtype_size(a->cache_dtype), ss = xk_dtype_size(a->src_dtype);
  const int64_t *st = a->key_cache_strides, cstride = st[2] * es;
  char staged[XK_ROW_CHUNK * 4];
  char *base = (char *)a->key_cache + (block * st[0] + head * st[1] + offset * st[3]) * es;
  for (int64_t c0 = 0; c0 < a->head_size; c0 += XK_ROW_CHUNK) {
    const int64_t n = a->head_size - c0 < XK_ROW_CHUNK ? a->head_size - c0 : XK_ROW_CHUNK;
    const char *row = src + c0 * ss;
    if (a->cache_dtype != a->src_dtype) {
      convert_row(staged, a->cache_dtype, row, a->src_dtype, n, d);
      row = staged;
    }
    char *dst = base + (c0 / a->x) * cstride;
    for (int64_t c = 0; c < n / a->x; c++) memcpy(dst + c * cstride, row + c * 16, 16);
  }
}

/* Paged value: [blocks, heads, head_size, block_size]; elements of a row are block_size apart. */
static void write_row_paged_value(const xk_kv_write_args *a, int64_t block, int64_t offset, int64_t head,
                                  const char *src, const scale_div *d) {
  const int64_t es = xk_dtype_size(a->cache_dtype), ss = xk_dtype_size(a->src_dtype);
  const int64_t *st = a->value_cache_strides, rs = st[2] * es;
  char staged[XK_ROW_CHUNK * 4];
  char *base = (char *)a->value_cache + (block * st[0] + head * st[1] + offset * st[3]) * es;
  for (int64_t d0 = 0; d0 < a->head_size; d0 += XK_ROW_CHUNK) {
    const int64_t n = a->head_size - d0 < XK_ROW_CHUNK ? a->head_size - d0 : XK_ROW_CHUNK;
    const char *row = src + d0 * ss;
    if (a->cache_dtype != a->src_dtype) {
      convert_row(staged, a->cache_dtype, row, a->src_dtype, n, d);
      row = staged;
    }
    char *dst = base + d0 * rs;
    switch (es) {
      case 1:
        for (int64_t e = 0; e < n; e++) dst[e * rs] = row[e];
        break;
      case 2:
        for (int64_t e = 0; e < n; e++) memcpy(dst + e * rs, row + e * 2, 2);
        break;
      default:
        for (int64_t e = 0; e < n; e++) memcpy(dst + e * rs, row + e * 4, 4);
        break;
    }
  }
}

/* ---- paged layout, runs of consecutive slots ---------------------------------
 * Prefill writes a sequence's tokens to consecutive offsets of a block. For
 * such a run the key's 16-byte chunks of consecutive tokens are adjacent, and
 * the value row of element d is block_size consecutive elements: writing the
 * run together (converted rows staged in L1, then a 16x16 transpose for the
 * values) writes whole lines instead of a few bytes of many lines per token. */

/* Tokens per run (the transpose is 16 x 16). */
#define XK_RUN 16
/* Staged bytes per token of a run (cache dtype): whole heads when they fit.
 * 512 measured best of 256-2048 (fp8 and bf16, H = 2 and 8, D = 128 and 256,
 * session 8). AVX2 fp8 caches stage up to 2048 (whole token rows at H * D
 * <= 2048): with the spread prefetch (bt_rows_run) rows read in order whole
 * let the reads overlap the conversion (harness, paged fp8 prefill, with
 * the prefetch: T=8192 H=8 D=256 512: 7.8 ms, 1024: 7.4, 2048: 5.7-6.0,
 * 4096: 6.3; H=8 D=128 3.97 / 3.00 / 2.99 / 3.34 ms; T=512 H=8 D=256 354 /
 * 345 / 327 / 363 us). */
#define XK_STG_ROW 512
#if XK_F32_LANES == 8
#define XK_STG_ROW_FP8 2048
#else
#define XK_STG_ROW_FP8 XK_STG_ROW
#endif


#if XK_F32_LANES == 8
/* scatter_key_run's line loop over chunks [c, c_end) (pf a constant in each
 * copy: tested in the loop, the copy without the prefetch was 3-10% slower,
 * harness, T=512 H=8 D=256 bf16 prefill). */
static inline __attribute__((always_inline)) void key_lines(char *kb, int64_t cs, const char *stg, int64_t stg_row,
                                                            int64_t n, int64_t c, int64_t c_end, int64_t d0,
                                                            int64_t x, int64_t es, int lines, const int pf) {
  for (; c < c_end; c += 4) {
    const char *s = stg + (c * x - d0) * es;
    char *d = kb + c * cs;
    for (int64_t j = 0; j < n; j += 2) {
      const char *r0 = s + j * stg_row, *r1 = r0 + stg_row;
      if (pf) {
        _mm_prefetch(r0 + 128, _MM_HINT_T0);
        _mm_prefetch(r1 + 128, _MM_HINT_T0);
      }
      const __m256i a0 = _mm256_loadu_si256((const __m256i *)r0), a1 = _mm256_loadu_si256((const __m256i *)(r0 + 32));
      const __m256i b0 = _mm256_loadu_si256((const __m256i *)r1), b1 = _mm256_loadu_si256((const __m256i *)(r1 + 32));
      const __m256i o[4] = {_mm256_permute2x128_si256(a0, b0, 0x20), _mm256_permute2x128_si256(a0, b0, 0x31),
                            _mm256_permute2x128_si256(a1, b1, 0x20), _mm256_permute2x128_si256(a1, b1, 0x31)};
      for (int q = 0; q < 4; q++) {
        if (lines) _mm256_stream_si256((__m256i *)(d + q * cs + j * 16), o[q]);
        else _mm256_storeu_si256((__m256i *)(d + q * cs + j * 16), o[q]);
      }
    }
  }
}

/* nc (< 4) 16-byte chunks of n rows (n even) from s into chunk rows cs bytes
 * apart from kb: two rows' chunk per 32-byte store, as key_lines. */
static inline __attribute__((always_inline)) void key_chunks(char *kb, int64_t cs, const char *s, int64_t stg_row,
                                                             int64_t n, int64_t nc, int lines) {
  for (int64_t j = 0; j < n; j += 2)
    for (int64_t q = 0; q < nc; q++) {
      const __m256i o = _mm256_loadu2_m128i((const __m128i *)(s + (j + 1) * stg_row + q * 16),
                                            (const __m128i *)(s + j * stg_row + q * 16));
      if (lines) _mm256_stream_si256((__m256i *)(kb + q * cs + j * 16), o);
      else _mm256_storeu_si256((__m256i *)(kb + q * cs + j * 16), o);
    }
}
#endif

/* Key chunks [d0, d0 + dn) of n staged rows (row j = token j of the run);
 * pf: the rows are the source, read in place (see write_run_paged). */
static void scatter_key_run(const xk_kv_write_args *a, int64_t block, int64_t off, int64_t head, int64_t n,
                            int64_t d0, int64_t dn, const char *stg, int64_t stg_row, int stream, int pf) {
  const int64_t es = xk_dtype_size(a->cache_dtype), *st = a->key_cache_strides, x = a->x;
  int64_t c = d0 / x;
#if XK_F32_LANES != 8
  (void)pf; /* sources are read in place only on AVX2 */
#endif
#if XK_F32_LANES == 8
  /* Each source line read once, whole: two rows' lines give four chunk
   * pairs, one 32-byte store each. Rows a multiple of 4 KiB apart (bf16
   * sources read in place, H * D = 2048) share one L1 set, 16 rows in 8
   * ways, and a chunk at a time fetched every line again for each of its
   * four chunks (harness, T=512 H=8 D=256 bf16 prefill, min of 5 processes:
   * 372 -> 317 us; bench 466-640 -> 405-409 us with the value change).
   * Session 14 kept the chunk loop for other strides (2 KiB rows: T=8192
   * slower in the bench, 4.6-5.0 -> 6.0-6.2 ms) while the next run's rows
   * were prefetched; without that prefetch the line form is faster at
   * every stride (harness, CPU time, T=8192 H=8 D=128 bf16 prefill 3.4 ->
   * 3.2 ms, T=512 121 -> 106 us; staged fp8 rows T=8192 H=8 D=128 3.05 ->
   * 2.87 ms, D=256 5.9 -> 5.7, T=512 H=8 D=256 323 -> 308 us). */
  if (st[3] == x && (n & 1) == 0) {
    char *kb = (char *)a->key_cache + (block * st[0] + head * st[1] + off * st[3]) * es;
    const int64_t cs = st[2] * es;
    const int lines = stream && ((uintptr_t)kb & 63u) == 0 && (cs & 63) == 0 && ((n * 16) & 63) == 0;
    /* Rows 4 KiB apart (!pf) and 16-48 bytes off a line: the chunks before
     * the rows' first line boundary, and those after their last whole line,
     * in one pass over the rows each (see scatter_value_run: key chunks a
     * line at a time from the misaligned rows read every line twice). */
    const int64_t hc = !pf && ((uintptr_t)stg & 15) == 0 && (stg_row & 63) == 0 && (d0 + dn) / x - c >= 8
                           ? (int64_t)((64 - ((uintptr_t)stg & 63)) & 63) / 16
                           : 0;
    if (hc) {
      key_chunks(kb + c * cs, cs, stg + (c * x - d0) * es, stg_row, n, hc, lines);
      c += hc;
    }
    const int64_t c_end = c + ((d0 + dn) / x - c) / 4 * 4;
    if (pf) key_lines(kb, cs, stg, stg_row, n, c, c_end, d0, x, es, lines, 1);
    else key_lines(kb, cs, stg, stg_row, n, c, c_end, d0, x, es, lines, 0);
    c = c_end;
    if (hc && c < (d0 + dn) / x) {
      key_chunks(kb + c * cs, cs, stg + (c * x - d0) * es, stg_row, n, (d0 + dn) / x - c, lines);
      c = (d0 + dn) / x;
    }
  }
#endif
  for (; c < (d0 + dn) / x; c++) {
    char *dst = (char *)a->key_cache + (block * st[0] + head * st[1] + c * st[2] + off * st[3]) * es;
    const char *src = stg + (c * x - d0) * es;
#if XK_F32_LANES > 1
    /* The run's chunks are adjacent: stream them when they tile whole lines. */
    if (stream && st[3] == x && ((uintptr_t)dst & 63u) == 0 && ((n * 16) & 63) == 0) {
      for (int64_t j = 0; j < n; j++)
        _mm_stream_si128((__m128i *)(dst + j * 16), _mm_loadu_si128((const __m128i *)(src + j * stg_row)));
      continue;
    }
#else
    (void)stream;
#endif
    for (int64_t j = 0; j < n; j++) memcpy(dst + j * st[3] * es, src + j * stg_row, 16);
  }
}

#if XK_F32_LANES == 8
/* 16 elements of 16 rows (16-bit, rows stg_row apart from src) into 16
 * value rows rs bytes apart from dst. */
static inline __attribute__((always_inline)) void value_rows16(char *dst, int64_t rs, const char *src, int64_t stg_row,
                                                               int lines) {
  __m256i out[16];
  transpose16_u16(src, stg_row, out);
  for (int e = 0; e < 16; e++) {
    if (lines) _mm256_stream_si256((__m256i *)(dst + e * rs), out[e]);
    else _mm256_storeu_si256((__m256i *)(dst + e * rs), out[e]);
  }
}
#endif

/* Value elements [d0, d0 + dn) of n staged rows: element d of the run's tokens
 * goes to value_cache[block, head, d, off .. off + n). */
static void scatter_value_run(const xk_kv_write_args *a, int64_t block, int64_t off, int64_t head, int64_t n,
                              int64_t d0, int64_t dn, const char *stg, int64_t stg_row, int stream, int pf) {
  const int64_t es = xk_dtype_size(a->cache_dtype), *st = a->value_cache_strides;
  char *base = (char *)a->value_cache + (block * st[0] + head * st[1] + off * st[3]) * es;
  int64_t d = 0;
#if XK_F32_LANES != 8
  (void)pf; /* sources are read in place only on AVX2 */
#endif
#if XK_F32_LANES > 1
  if (n == XK_RUN && st[3] == 1 && (es == 1 || es == 2)) {
    /* Stream when the rows of consecutive elements tile whole lines. */
    const int lines = stream && st[2] == XK_RUN && (((uintptr_t)(base + d0 * st[2] * es)) & 63u) == 0;
#if XK_F32_LANES == 8
    /* Both halves of each source line loaded together, two transposes (the
     * second from registers the compiler spills to the stack), so every
     * line is fetched once rather than once per half (see scatter_key_run;
     * harness, T=512 H=8 D=256 bf16 prefill, with the key change: 317 ->
     * 262 us; T=8192: 12.6 -> 11.5 ms, min of 4 processes on a loaded
     * machine; now at every row stride, as the keys). */
    /* Rows 16, 32 or 48 bytes off a line (a source read in place from a
     * 16-byte aligned buffer, as Rust's and malloc's): each 64-byte step
     * reads two lines per row, and with rows 4 KiB apart (!pf) the 16 rows'
     * lines share one L1 set, so the line a step leaves half read is gone
     * by the next step. The `lead` elements before the rows' first line
     * boundary go by 16-element steps (overlapping each other or the line
     * steps: the same bytes written again), then whole lines, then the
     * rest by 16-element steps, the last one overlapping (harness, CPU
     * time, source 16 bytes off, with the key chunks alike: T=512 H=8 D=256
     * bf16 prefill 363-386 -> 258-267 us, 48 bytes off alike; T=8192
     * 6.98-7.36 -> 6.13-6.95 ms; the same at 2 KiB rows (D=128, prefetched
     * rows): 3-5% slower, so not there). */
    const int64_t lead =
        !pf && ((uintptr_t)stg & 15) == 0 && (stg_row & 63) == 0 ? ((64 - ((uintptr_t)stg & 63)) & 63) / 2 : 0;
    const int64_t rs = st[2] * es;
    char *vb = base + d0 * rs;
    if (es == 2 && lead && dn >= lead + 32) {
      value_rows16(vb, rs, stg, stg_row, lines);
      if (lead > 16) value_rows16(vb + (lead - 16) * rs, rs, stg + (lead - 16) * 2, stg_row, lines);
      d = lead;
    }
    if (es == 2)
      for (; d + 32 <= dn; d += 32) {
        __m256i lo[16], hi[16], out[16];
        for (int j = 0; j < 16; j++) {
          if (pf) _mm_prefetch(stg + j * stg_row + d * 2 + 128, _MM_HINT_T0);
          lo[j] = _mm256_loadu_si256((const __m256i *)(stg + j * stg_row + d * 2));
          hi[j] = _mm256_loadu_si256((const __m256i *)(stg + j * stg_row + d * 2 + 32));
        }
        for (int half = 0; half < 2; half++) {
          char *dst = base + (d0 + d + 16 * half) * st[2] * es;
          transpose16_u16_regs(half ? hi : lo, out);
          for (int e = 0; e < 16; e++) {
            if (lines) _mm256_stream_si256((__m256i *)(dst + e * st[2] * 2), out[e]);
            else _mm256_storeu_si256((__m256i *)(dst + e * st[2] * 2), out[e]);
          }
        }
      }
    if (es == 2 && lead && d >= 16) {
      for (; d + 16 <= dn; d += 16) value_rows16(vb + d * rs, rs, stg + d * 2, stg_row, lines);
      if (d < dn) value_rows16(vb + (dn - 16) * rs, rs, stg + (dn - 16) * 2, stg_row, lines);
      d = dn;
    }
    /* fp8: transpose16_u8_pairs, two elements' rows per 32-byte store. The
     * value transposes were ~0.9 ms of a 5.5 ms paged fp8 prefill (harness,
     * CPU time, T=8192 H=8 D=256, without them 4.2-4.3 ms); with the pairs:
     * 5.48-5.51 -> 5.03-5.10 ms, H=8 D=128 2.73-2.82 -> 2.62-2.63 ms, H=2
     * D=128 708-724 -> 674-682 us, T=512 H=8 D=256 304-305 -> 280-282 us. */
    if (es == 1)
      for (; d + 16 <= dn; d += 16) {
        char *dst = base + (d0 + d) * st[2];
        __m256i out[8];
        transpose16_u8_pairs(stg + d, stg_row, out);
        for (int k = 0; k < 8; k++) {
          if (lines) _mm256_stream_si256((__m256i *)(dst + 2 * k * XK_RUN), out[k]);
          else if (st[2] == XK_RUN) _mm256_storeu_si256((__m256i *)(dst + 2 * k * XK_RUN), out[k]);
          else _mm256_storeu2_m128i((__m128i *)(dst + (2 * k + 1) * st[2]), (__m128i *)(dst + 2 * k * st[2]), out[k]);
        }
      }
#endif
    for (; d + 16 <= dn; d += 16) {
      char *dst = base + (d0 + d) * st[2] * es;
      if (es == 1) {
        __m128i out[16];
        transpose16_u8(stg + d, stg_row, out);
        for (int e = 0; e < 16; e++) {
          if (lines) _mm_stream_si128((__m128i *)(dst + e * st[2]), out[e]);
          else _mm_storeu_si128((__m128i *)(dst + e * st[2]), out[e]);
        }
      } else {
        __m256i out[16];
        transpose16_u16(stg + d * 2, stg_row, out);
        for (int e = 0; e < 16; e++) {
          if (lines) _mm256_stream_si256((__m256i *)(dst + e * st[2] * 2), out[e]);
          else _mm256_storeu_si256((__m256i *)(dst + e * st[2] * 2), out[e]);
        }
      }
    }
  }
#else
  (void)stream;
#endif
  for (; d < dn; d++) {
    char *dst = base + (d0 + d) * st[2] * es;
    for (int64_t j = 0; j < n; j++) memcpy(dst + j * st[3] * es, stg + j * stg_row + d * es, (size_t)es);
  }
}

/* rows x n source elements (rows src_stride bytes apart) converted into
 * staged rows dst_stride bytes apart; the source has `avail` rows from src
 * (>= rows): the row after the last one is asked for too when there is one. */
static void stage_rows(char *dst, int64_t dst_stride, const char *src, int64_t src_stride, int64_t rows, int64_t n,
                       int64_t avail, const xk_kv_write_args *a, const scale_div *sd) {
  const int64_t row_bytes = n * xk_dtype_size(a->src_dtype);
#if XK_F32_LANES == 8
  /* bf16 -> fp8 through the byte tables: the run's rows in one bt_rows call,
   * its constants made once (made per row, 512-element rows: harness T=512
   * fp8 prefill H=8 D=256 357 -> 308 us, H=2 D=128 54 -> 42 us; T=8192 H=2
   * D=128 920 -> 746 us), each row asking for the next one as it converts. */
  if (xk_is_fp8(a->cache_dtype) && a->src_dtype == XK_BF16 && sd->bt && rows <= XK_RUN) {
    bt_job jobs[XK_RUN];
    for (int64_t j = 0; j < rows; j++)
      jobs[j] = (bt_job){(uint8_t *)dst + j * dst_stride, (const uint16_t *)(src + j * src_stride),
                         j + 1 < avail ? (const uint16_t *)(src + (j + 1) * src_stride) : NULL};
    bt_rows(jobs, rows, n, a->cache_dtype, sd->bt, sd->scale, 0);
    return;
  }
#else
  (void)avail;
#endif
  for (int64_t j = 0; j < rows; j++) {
    /* The next token's row is a page or more away: the hardware prefetchers
     * do not follow, ask for it while this one converts. */
    if (j + 1 < rows)
      for (int64_t l = 0; l < row_bytes; l += 64) __builtin_prefetch(src + (j + 1) * src_stride + l, 0, 3);
    convert_row(dst + j * dst_stride, a->cache_dtype, src + j * src_stride, a->src_dtype, n, sd);
  }
}

/* Tokens t .. t + n - 1 (n <= XK_RUN) write offsets off .. off + n - 1 of
 * `block`. A staging pass covers heads [h0, h1) (elements [d0, d0 + dn) of
 * one head when a head does not fit a staged row). When a token's heads are
 * contiguous in the source and share a scale, a pass converts each token's
 * span of heads in one go: the source is read token row by token row, in
 * order (per-head passes over 16 rows a page apart left the loads waiting on
 * memory: paged fp8 prefill T=8192 H=8 D=256 took 14.6 ms, now 9.0 ms). */
static void write_run_paged(const xk_kv_write_args *a, int64_t t, int64_t n, int64_t block, int64_t off,
                            const scale_div *ks_all, const scale_div *vs_all, const scale_div *khd,
                            const scale_div *vhd, int stream, int src_cached, int64_t token_end) {
  const int64_t ss = xk_dtype_size(a->src_dtype), es = xk_dtype_size(a->cache_dtype), D = a->head_size;
  const int fp8 = xk_is_fp8(a->cache_dtype);
#if XK_F32_LANES == 16
  /* A whole block of a bf16 -> fp8 prefill: straight into lines
   * (fq_paged_body). Its tiles read 16 token rows at once; from memory that
   * streamed worse than the staged path's row after row (bench, T=8192 H=2
   * D=128: 816/829 us staged, 885/876 fused) until the next run's rows were
   * prefetched in order (harness, T=8192 fp8 vs staged: H=2 D=128 858/899
   * -> 800/813 us, H=8 D=128 3291/3289 -> 3046/2997, H=8 D=256 7792/6748
   * -> 7095/6250). */
  const int64_t *kst = a->key_cache_strides, *vst = a->value_cache_strides;
  if (stream && fp8 && n == 16 && off == 0 && a->src_dtype == XK_BF16 && kst[2] == 256 && kst[3] == 16 &&
      vst[2] == 16 && vst[3] == 1 && (((uintptr_t)a->key_cache | (uintptr_t)a->value_cache) & 63u) == 0 &&
      ((block * kst[0] | kst[1] | block * vst[0] | vst[1]) & 63) == 0) {
    int64_t h = 0;
    for (; h < a->num_heads; h++) {
      /* Per-head scales: no byte tables (made per head and run). */
      scale_div khs, vhs;
      const scale_div *kh = head_scale(a, ks_all, khd, a->k_scale, a->k_scale_stride, h, &khs);
      const scale_div *vh = head_scale(a, vs_all, vhd, a->v_scale, a->v_scale_stride, h, &vhs);
      /* Sources from memory: the next run's rows (16 contiguous token rows
       * when the heads are packed), one share per head, asked for into L2
       * while this run converts; the tiles' 16 rows at once are not a
       * pattern the hardware prefetchers follow. */
      const char *pfk = 0, *pfv = 0;
      int64_t pfb = 0;
      if (!src_cached && a->key_stride_head == D && a->value_stride_head == D &&
          a->key_stride_token == a->num_heads * D && a->value_stride_token == a->key_stride_token &&
          t + 32 <= token_end) {
        pfb = 16 * D * 2;
        pfk = (const char *)a->key + (t + 16) * a->key_stride_token * 2 + h * pfb;
        pfv = (const char *)a->value + (t + 16) * a->value_stride_token * 2 + h * pfb;
      }
      if (!kh->paged || kh->paged != vh->paged || !kh->paged(a, t, block, &kh->fq, &vh->fq, h, pfk, pfv, pfb)) break;
    }
    if (h == a->num_heads) return;
    /* A head whose key and value scales take different variants: the path
     * below writes the whole run (heads before h again, same bits). */
  }
#else
  (void)src_cached; /* only the AVX-512 runs prefetch sources ahead */
#endif
#if XK_F32_LANES == 8
  /* Same dtype: the scatters read the source rows in place; the staging
   * copy (a memcpy call per row) took 28% of the samples of a bf16 prefill
   * (perf, harness, T=8192 H=8 D=128). No software prefetch of the next
   * run's rows: asked for per head (16 rows x D elements, session 14) it
   * made the case from memory slower on Zen 3, not faster (harness, T=8192
   * bf16 prefill, one thread's CPU time: H=8 D=256 7.1-7.3 -> 5.1-5.3 ms
   * without; H=8 D=128 3.5 -> 3.1-3.3 ms, with the whole-line scatters for
   * every row stride; also spread over the run or in order ahead, H=8
   * D=256 6.6-7.0 ms; T=512 H=8 D=256 248 -> 231 us, D=128 122 -> 106).
   * Within the run, each row's line two ahead is asked for as a line is
   * read (pf), unless rows are a multiple of 4 KiB apart: then the 16 rows'
   * lines share one L1 set and the prefetched lines evict each other
   * (harness, CPU time, alternated, bf16 prefill: T=8192 H=8 D=128 3.43-3.52
   * -> 2.74-2.77 ms, one line ahead 2.91, three 2.77-2.92; H=2 D=128 470 ->
   * 448-459 us; T=512 unchanged at 512 B-2 KiB strides; with 4 KiB rows
   * T=512 H=8 D=256 239-241 -> 248-250 us, T=8192 unchanged). The value
   * scatter is called with pf a constant, so the 4 KiB rows get a loop with
   * no prefetch test (session 17, harness, CPU time, best of 200-300 calls,
   * two alternated rounds, old -> this: 4 KiB rows T=512 H=8 D=256 235-248
   * -> 234-243 us, 16-byte misaligned source 362-365 -> 347-362; T=8192
   * 6.69-7.76 -> 6.61-7.71 ms; 2 KiB rows T=512 H=8 D=128 122-127 -> 115-123
   * us, T=8192 3.59-4.19 -> 3.43-3.87 ms; H=2 D=128 766-927 -> 727-810 us).
   * Tried: pf a constant only inside the value loop (a helper like
   * key_lines): 4 KiB rows 1.08-1.17x slower (the loop's registers spill
   * differently); no value prefetch at all: 2 KiB rows at T=8192 up to 1.14x
   * slower. */
  if (a->cache_dtype == a->src_dtype) {
    for (int kv = 0; kv < 2; kv++) {
      const char *src = kv ? (const char *)a->value : (const char *)a->key;
      const int64_t s_tok = (kv ? a->value_stride_token : a->key_stride_token) * ss;
      const int64_t s_head = (kv ? a->value_stride_head : a->key_stride_head) * ss;
      const int pf = (s_tok & 4095) != 0;
      for (int64_t h = 0; h < a->num_heads; h++) {
        const char *hs = src + t * s_tok + h * s_head;
        if (kv && pf) scatter_value_run(a, block, off, h, n, 0, D, hs, s_tok, stream, 1);
        else if (kv) scatter_value_run(a, block, off, h, n, 0, D, hs, s_tok, stream, 0);
        else scatter_key_run(a, block, off, h, n, 0, D, hs, s_tok, stream, pf);
      }
    }
    return;
  }
#endif
  /* Staged, then scattered. Tried and dropped (AVX2, harness, CPU time):
   * scattering the previous group in pieces after each row of the next
   * one converts, so the streaming stores drain during the conversion:
   * slower (fp8 T=8192 H=8 D=256 5.9 -> 6.1 ms, D=128 2.9 -> 3.1, T=512
   * 305 -> 313 us); the two phases add up either way (T=512 H=8 D=256:
   * conversion alone 231 us, scatter alone 123, both 338). Session 16: the
   * scatter into a 32 KiB image of the block (L2, ordinary stores), streamed
   * out one line per 64 elements of the next conversion: 5.81-5.83 -> 5.76
   * ms at T=8192 H=8 D=256, slower at D=128 (2.75 -> 2.82) and T=512 H=8
   * D=256 (312 -> 330 us). Most of the scatter was the transposes' work,
   * not the stores' wait (without the memory writes 5.10 ms, without the
   * transposes 4.34, neither 3.91: the conversion from memory). */
  _Alignas(64) char stg[XK_RUN * XK_STG_ROW_FP8];
  const int64_t row_elems = (fp8 ? XK_STG_ROW_FP8 : XK_STG_ROW) / es;
  const int64_t hc = D <= row_elems ? row_elems / D : 1;
  /* Staged rows packed (64-byte aligned): a 2048-byte stride for the 256
   * bytes of H=2 D=128 fp8 rows put 8 of the 16 rows in each L1 set
   * (harness, T=8192 fp8 prefill 665-751 -> 721-828 us). */
  const int64_t stg_row = ((D <= row_elems ? (hc < a->num_heads ? hc : a->num_heads) * D : row_elems) * es + 63) & ~63;
  for (int kv = 0; kv < 2; kv++) {
    const char *src = kv ? (const char *)a->value : (const char *)a->key;
    const int64_t s_tok = kv ? a->value_stride_token : a->key_stride_token;
    const int64_t s_head = kv ? a->value_stride_head : a->key_stride_head;
    const float *scales = kv ? a->v_scale : a->k_scale;
    const int64_t scale_stride = kv ? a->v_scale_stride : a->k_scale_stride;
    const int per_head = fp8 && scales && scale_stride;
    const scale_div *all = kv ? vs_all : ks_all;
    for (int64_t h0 = 0; h0 < a->num_heads; h0 += hc) {
      const int64_t h1 = a->num_heads - h0 < hc ? a->num_heads : h0 + hc;
      for (int64_t d0 = 0; d0 < D; d0 += row_elems) {
        const int64_t dn = D - d0 < row_elems ? D - d0 : row_elems;
        const char *s0 = src + (t * s_tok + h0 * s_head + d0) * ss;
        if (!per_head && (s_head == D || h1 - h0 == 1)) {
          stage_rows(stg, stg_row, s0, s_tok * ss, n, (h1 - h0) * dn, token_end - t, a, all);
        } else {
          for (int64_t h = h0; h < h1; h++) {
            scale_div sh;
            const scale_div *hsc = per_head ? head_scale(a, all, kv ? vhd : khd, scales, scale_stride, h, &sh) : all;
            stage_rows(stg + (h - h0) * dn * es, stg_row, s0 + (h - h0) * s_head * ss, s_tok * ss, n, dn, token_end - t,
                       a, hsc);
          }
        }
        for (int64_t h = h0; h < h1; h++) {
          const char *hs = stg + (h - h0) * dn * es;
          if (kv) scatter_value_run(a, block, off, h, n, d0, dn, hs, stg_row, stream, 0);
          else scatter_key_run(a, block, off, h, n, d0, dn, hs, stg_row, stream, 0);
        }
      }
    }
  }
}

#if XK_F32_LANES > 1
/* Paged layout: every line a token's key chunks and value elements land in,
 * asked for ahead of the stores. A scattered token touches
 * H * (D/x + D * block_size * es / 64) lines, a few bytes of each: their
 * read from memory is the cost of the layout, and the stores alone keep too
 * few of them in flight. A read prefetch (prefetcht0) rather than prefetchw:
 * a line no other core holds arrives exclusive, so the store needs no
 * further request, and the reads kept ~10% more in flight (harness, T=1
 * H=8 D=256 bf16 11.3 -> 10.1 us; a line another core shares would pay an
 * upgrade at the store). */
static void prefetch_paged_lines(const xk_kv_write_args *a, int64_t slot) {
  const int64_t es = xk_dtype_size(a->cache_dtype), blk = slot / a->block_size, off = slot % a->block_size;
  const int64_t *ks = a->key_cache_strides, *vs = a->value_cache_strides;
  const int64_t vstep = vs[2] * es >= 64 ? 1 : 64 / (vs[2] * es);
  for (int64_t h = 0; h < a->num_heads; h++) {
    const char *k = (const char *)a->key_cache + (blk * ks[0] + h * ks[1] + off * ks[3]) * es;
    const char *v = (const char *)a->value_cache + (blk * vs[0] + h * vs[1] + off * vs[3]) * es;
    for (int64_t c = 0; c < a->head_size / a->x; c++) _mm_prefetch(k + c * ks[2] * es, _MM_HINT_T0);
    for (int64_t d = 0; d < a->head_size; d += vstep) _mm_prefetch(v + d * vs[2] * es, _MM_HINT_T0);
  }
}
#endif

#if XK_F32_LANES > 1
/* The first line of every 4 KiB page of the key and value blocks of `slot`
 * (none for padding), into L2. */
static void prefetch_paged_block(const xk_kv_write_args *a, int64_t slot) {
  if (slot < 0) return;
  const int64_t es = xk_dtype_size(a->cache_dtype), blk = slot / a->block_size;
  const int64_t kbytes = a->key_cache_strides[0] * es, vbytes = a->value_cache_strides[0] * es;
  const char *k = (const char *)a->key_cache + blk * kbytes, *v = (const char *)a->value_cache + blk * vbytes;
  /* The empty asm keeps GCC from deleting a function that only prefetches. */
  for (int64_t p = 0; p < kbytes; p += 4096) {
    _mm_prefetch(k + p, _MM_HINT_T2);
    __asm__ volatile("" : : "r"(k + p));
  }
  for (int64_t p = 0; p < vbytes; p += 4096) {
    _mm_prefetch(v + p, _MM_HINT_T2);
    __asm__ volatile("" : : "r"(v + p));
  }
}
#endif

void XK_FN(kv_write)(const xk_kv_write_args *a, int64_t token_begin, int64_t token_end) {
  const int64_t ss = xk_dtype_size(a->src_dtype), es = xk_dtype_size(a->cache_dtype);
  const int fp8 = xk_is_fp8(a->cache_dtype);
  const int stream = (token_end - token_begin) * a->num_heads * a->head_size * es * 2 >=
                     (fp8 ? XK_STREAM_MIN_BYTES_FP8 : XK_STREAM_MIN_BYTES);
  const int src_cached = (token_end - token_begin) * a->num_heads * a->head_size * ss * 2 <= XK_SRC_CACHED_BYTES;
  /* Per-tensor scales: one reciprocal for the whole block; the byte tables
   * (VBMI build) only for grid blocks of XK_VB_MIN_ELEMS elements or more,
   * once when the key and value scales are the same. */
#ifdef XK_KV_VBMI
  fqv_tabs kt, vt;
  const int vb = (token_end - token_begin) * a->num_heads * a->head_size * 2 >= XK_VB_MIN_ELEMS;
  fqv_tabs *ktp = vb ? &kt : NULL, *vtp = vb ? &vt : NULL;
#else
  fqv_tabs *ktp = NULL, *vtp = NULL;
#endif
  const float ksc = fp8 && a->k_scale ? a->k_scale[0] : 1.0f, vsc = fp8 && a->v_scale ? a->v_scale[0] : 1.0f;
  scale_div ks_all = scale_div_make(ksc, a->src_dtype, a->cache_dtype, ktp);
#if XK_F32_LANES == 8
  /* bf16 -> fp8: the byte tables (bt_make, ~0.2 us each: the divide of ~450
   * elements) for a scale that converts XK_BT_MIN_ELEMS elements or more. */
  bt_tabs kbt, vbt;
  const int64_t per_head = (token_end - token_begin) * a->head_size;
  const int bt = fp8 && a->src_dtype == XK_BF16, e5 = a->cache_dtype == XK_F8E5M2;
  if (bt && per_head * a->num_heads >= XK_BT_MIN_ELEMS && bt_make(&kbt, ksc, e5)) ks_all.bt = &kbt;
#endif
  scale_div vs_all =
      xk_f32_bits(ksc) == xk_f32_bits(vsc) ? ks_all : scale_div_make(vsc, a->src_dtype, a->cache_dtype, vtp);
#if XK_F32_LANES == 8
  if (bt && per_head * a->num_heads >= XK_BT_MIN_ELEMS && xk_f32_bits(ksc) != xk_f32_bits(vsc) &&
      bt_make(&vbt, vsc, e5))
    vs_all.bt = &vbt;
  bt_tabs khb[XK_HEAD_SCALES], vhb[XK_HEAD_SCALES];
#endif
  /* Per-head scales: made once here for up to XK_HEAD_SCALES heads (made
   * per token and head, two scale_div_make per row were most of a per-head
   * fp8 flash prefill: kv-demo 8039 tokens x 8 heads 6.2-6.9 ms). */
  scale_div khd[XK_HEAD_SCALES], vhd[XK_HEAD_SCALES];
  const scale_div *khdp = NULL, *vhdp = NULL;
  if (fp8 && a->num_heads <= XK_HEAD_SCALES) {
    if (a->k_scale && a->k_scale_stride) {
      for (int64_t h = 0; h < a->num_heads; h++) {
        khd[h] = scale_div_make(a->k_scale[h * a->k_scale_stride], a->src_dtype, a->cache_dtype, NULL);
#if XK_F32_LANES == 8
        if (bt && per_head >= XK_BT_MIN_ELEMS && bt_make(&khb[h], khd[h].scale, e5)) khd[h].bt = &khb[h];
#endif
      }
      khdp = khd;
    }
    if (a->v_scale && a->v_scale_stride) {
      for (int64_t h = 0; h < a->num_heads; h++) {
        vhd[h] = scale_div_make(a->v_scale[h * a->v_scale_stride], a->src_dtype, a->cache_dtype, NULL);
#if XK_F32_LANES == 8
        if (bt && per_head >= XK_BT_MIN_ELEMS && bt_make(&vhb[h], vhd[h].scale, e5)) vhd[h].bt = &vhb[h];
#endif
      }
      vhdp = vhd;
    }
  }
  /* Flash: a token's heads are one row of the cache when they are contiguous
   * there and in the source, and share one scale. */
  int whole = a->layout == XK_LAYOUT_FLASH;
  for (int kv = 0; kv < 2; kv++) {
    const int64_t s_head = kv ? a->value_stride_head : a->key_stride_head;
    const int64_t *st = kv ? a->value_cache_strides : a->key_cache_strides;
    const int64_t sc_stride = kv ? a->v_scale_stride : a->k_scale_stride;
    whole &= s_head == a->head_size && st[2] == a->head_size && st[3] == 1 && !(fp8 && sc_stride);
  }
#if XK_F32_LANES == 16
  if (whole && ks_all.tokens && vs_all.tokens) {
    /* fp8 flash rows: both caches in one pass (one per cache when their scales
     * need different variants), the quantiser's constants loaded once. */
    if (ks_all.tokens == vs_all.tokens) {
      ks_all.tokens(a, 3, token_begin, token_end, &ks_all.fq, &vs_all.fq, stream);
    } else {
      ks_all.tokens(a, 1, token_begin, token_end, &ks_all.fq, &vs_all.fq, stream);
      vs_all.tokens(a, 2, token_begin, token_end, &ks_all.fq, &vs_all.fq, stream);
    }
    if (stream) _mm_sfence();
    return;
  }
  /* Same-dtype flash rows, streamed, every row 64-byte aligned whole lines. */
  if (whole && stream && a->cache_dtype == a->src_dtype && (a->num_heads * a->head_size * es) % 64 == 0 &&
      !(((uintptr_t)a->key_cache | (uintptr_t)a->value_cache |
         (uintptr_t)((a->key_cache_strides[0] | a->key_cache_strides[1] | a->value_cache_strides[0] |
                      a->value_cache_strides[1]) * es)) & 63)) {
    flash_copy_tokens(a, token_begin, token_end);
    _mm_sfence();
    return;
  }
#endif
#if XK_F32_LANES == 8
  if (whole) {
    flash_rows_ahead(a, token_begin, token_end, &ks_all, &vs_all, stream,
                     (token_end - token_begin) * a->num_heads * a->head_size * ss * 2 >= XK_SRC_MEM_BYTES);
    if (stream) _mm_sfence();
    return;
  }
#endif
  for (int64_t t = token_begin; t < token_end;) {
    const int64_t slot = slot_of(a, t);
    if (slot < 0) {
      t++;
      continue;
    }
    const int64_t block = slot / a->block_size, offset = slot % a->block_size;
    if (a->layout == XK_LAYOUT_PAGED) {
      int64_t n = 1;
      while (n < XK_RUN && t + n < token_end && offset + n < a->block_size && slot_of(a, t + n) == slot + n) n++;
      if (n > 1) {
#if XK_F32_LANES > 1
        /* A streamed run (prefill): one line per 4 KiB page of the key and
         * value blocks of the run after it asked for now, so their page
         * walks are done before its streaming stores need them. Blocks are
         * scattered: every block's pages miss the TLB, and a store that
         * waits for its walk holds the stores behind it (T=8192 H=2 D=128
         * prefill, harness: bf16 1018 -> 834 us, fp8 1004 -> 860 us). */
        if (stream && t + n < token_end) prefetch_paged_block(a, slot_of(a, t + n));
#endif
        write_run_paged(a, t, n, block, offset, &ks_all, &vs_all, khdp, vhdp, stream, src_cached, token_end);
        t += n;
        continue;
      }
#if XK_F32_LANES > 1
      /* A scattered token: ask for its lines (the first), and the next
       * token's, ahead of the stores. */
      if (t == token_begin) prefetch_paged_lines(a, slot);
      if (t + 1 < token_end && slot_of(a, t + 1) >= 0) prefetch_paged_lines(a, slot_of(a, t + 1));
#endif
    }
    if (whole) {
      write_row_flash(a->key_cache, a->key_cache_strides, a->cache_dtype, block, offset, 0,
                      (const char *)a->key + t * a->key_stride_token * ss, a->src_dtype,
                      a->num_heads * a->head_size, &ks_all, stream);
      write_row_flash(a->value_cache, a->value_cache_strides, a->cache_dtype, block, offset, 0,
                      (const char *)a->value + t * a->value_stride_token * ss, a->src_dtype,
                      a->num_heads * a->head_size, &vs_all, stream);
      t++;
      continue;
    }
    for (int64_t h = 0; h < a->num_heads; h++) {
      const char *k = (const char *)a->key + (t * a->key_stride_token + h * a->key_stride_head) * ss;
      const char *v = (const char *)a->value + (t * a->value_stride_token + h * a->value_stride_head) * ss;
      scale_div khs, vhs;
      const scale_div *ks = fp8 ? head_scale(a, &ks_all, khdp, a->k_scale, a->k_scale_stride, h, &khs) : &ks_all;
      const scale_div *vs = fp8 ? head_scale(a, &vs_all, vhdp, a->v_scale, a->v_scale_stride, h, &vhs) : &vs_all;
      if (a->layout == XK_LAYOUT_FLASH) {
        write_row_flash(a->key_cache, a->key_cache_strides, a->cache_dtype, block, offset, h, k, a->src_dtype,
                        a->head_size, ks, stream);
        write_row_flash(a->value_cache, a->value_cache_strides, a->cache_dtype, block, offset, h, v,
                        a->src_dtype, a->head_size, vs, stream);
      } else {
        write_row_paged_key(a, block, offset, h, k, ks);
        write_row_paged_value(a, block, offset, h, v, vs);
      }
    }
    t++;
  }
#if XK_F32_LANES > 1
  /* Streaming stores are weakly ordered: make them visible before returning. */
  if (stream) _mm_sfence();
#endif
}
