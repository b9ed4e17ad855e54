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
 *   copied side by side, value rows transposed 16x16 (see write_run_paged).
 *   Scattered single tokens (decode) touch a line per value element; that
 *   layout cost is not recoverable in the kernel.
 * - fp8 caches store saturate(x / scale): a power-of-two scale (1.0 by
 *   default) multiplies by its exact reciprocal instead of dividing. The
 *   divide plus the fp8 encoding bound fp8 writes at ~0.25 ns per element
 *   per core (AVX-512, this machine).
 */
#include "../common/convert.h"
#include "../common/tier.h"

/* Staging buffer for one head row converted to the cache format. */
#define XK_ROW_CHUNK 1024
/* Cache bytes a grid block writes before it streams whole-line rows. fp8
 * writes are bound by the conversion more than by memory; they stream only
 * in blocks far bigger than the private caches (where it measured 2x+). */
#define XK_STREAM_MIN_BYTES (32 * 1024)
#define XK_STREAM_MIN_BYTES_FP8 (1024 * 1024)

static inline int64_t slot_of(const xk_kv_write_args *a, int64_t t) {
  return a->slot_mapping_is_i64 ? ((const int64_t *)a->slot_mapping)[t]
                                : (int64_t)((const int32_t *)a->slot_mapping)[t];
}

/* fp8 caches store saturate(x / scale). When scale is a power of two its
 * reciprocal is exact and x * (1 / scale) is the same real number as
 * x / scale, so both round alike: multiply (vLLM's default scale 1.0 is the
 * common case). Other scales divide. */
typedef struct scale_div {
  float scale, inv;
  int pow2;
} scale_div;

static inline scale_div scale_div_make(float scale) {
  scale_div d;
  uint32_t u = xk_f32_bits(scale);
  d.scale = scale;
  d.inv = 1.0f / scale;
  d.pow2 = (u & 0x7fffffu) == 0 && (u >> 23) >= 1 && (u >> 23) <= 254;
  return d;
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

/* dst[i] = convert(src[i]); fp8 destinations store saturate(src[i] / scale),
 * bit-identical to xk_convert_row. */
static inline void convert_row(void *dst, int32_t dst_dtype, const void *src, int32_t src_dtype, int64_t n,
                               const scale_div *d) {
  if (!xk_is_fp8(dst_dtype)) {
    xk_convert_row(dst, dst_dtype, src, src_dtype, n, 1.0f);
    return;
  }
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

/* Flash layout: the head row is contiguous in the cache, convert straight into it. */
static void write_row_flash(char *cache, const int64_t *st, int32_t cache_dtype, int64_t block, int64_t offset,
                            int64_t head, const void *src, int32_t src_dtype, int64_t head_size,
                            const scale_div *d, int stream) {
  const int64_t es = xk_dtype_size(cache_dtype);
  char *dst = cache + (block * st[0] + offset * st[1] + head * st[2]) * es;
#if XK_F32_LANES > 1
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

/* Paged key: [blocks, heads, head_size/x, block_size, x]; each x-chunk is 16 contiguous bytes. */
static void write_row_paged_key(const xk_kv_write_args *a, int64_t block, int64_t offset, int64_t head,
                                const char *src, const scale_div *d) {
  const int64_t es = xk_dtype_size(a->cache_dtype), ss = xk_dtype_size(a->src_dtype);
  const int64_t *st = a->key_cache_strides;
  char staged[XK_ROW_CHUNK * 4];
  char *base = (char *)a->key_cache + (block * st[0] + head * st[1] + offset * st[3]) * es;
  for (int64_t c0 = 0; c0 < a->head_size; c0 += XK_ROW_CHUNK) {
    const int64_t n = a->head_size - c0 < XK_ROW_CHUNK ? a->head_size - c0 : XK_ROW_CHUNK;
    convert_row(staged, a->cache_dtype, src + c0 * ss, a->src_dtype, n, d);
    for (int64_t c = 0; c < n; c += a->x) {
      memcpy(base + ((c0 + c) / a->x) * st[2] * es, staged + c * es, (size_t)(a->x * es));
    }
  }
}

/* Paged value: [blocks, heads, head_size, block_size]; elements of a row are block_size apart. */
static void write_row_paged_value(const xk_kv_write_args *a, int64_t block, int64_t offset, int64_t head,
                                  const char *src, const scale_div *d) {
  const int64_t es = xk_dtype_size(a->cache_dtype), ss = xk_dtype_size(a->src_dtype);
  const int64_t *st = a->value_cache_strides;
  char staged[XK_ROW_CHUNK * 4];
  char *base = (char *)a->value_cache + (block * st[0] + head * st[1] + offset * st[3]) * es;
  for (int64_t d0 = 0; d0 < a->head_size; d0 += XK_ROW_CHUNK) {
    const int64_t n = a->head_size - d0 < XK_ROW_CHUNK ? a->head_size - d0 : XK_ROW_CHUNK;
    convert_row(staged, a->cache_dtype, src + d0 * ss, a->src_dtype, n, d);
    for (int64_t e = 0; e < n; e++) memcpy(base + (d0 + e) * st[2] * es, staged + e * es, (size_t)es);
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
/* Head elements staged per pass. */
#define XK_DCHUNK 128

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

/* out[e] = 16-bit element e of rows 0..15 (32-byte rows, row_bytes apart). */
static inline void transpose16_u16(const char *src, int64_t row_bytes, __m256i out[16]) {
  __m256i a[16], b[16], c[16];
  for (int j = 0; j < 16; j++) a[j] = _mm256_loadu_si256((const __m256i *)(src + j * row_bytes));
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
#endif

/* Key chunks [d0, d0 + dn) of n staged rows (row j = token j of the run). */
static void scatter_key_run(const xk_kv_write_args *a, int64_t block, int64_t off, int64_t head, int64_t n,
                            int64_t d0, int64_t dn, const char *stg, int64_t stg_row, int stream) {
  const int64_t es = xk_dtype_size(a->cache_dtype), *st = a->key_cache_strides, x = a->x;
  for (int64_t c = d0 / x; c < (d0 + dn) / x; c++) {
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

/* Value elements [d0, d0 + dn) of n staged rows: element d of the run's tokens
 * goes to value_cache[block, head, d, off .. off + n). */
static void scatter_value_run(const xk_kv_write_args *a, int64_t block, int64_t off, int64_t head, int64_t n,
                              int64_t d0, int64_t dn, const char *stg, int64_t stg_row, int stream) {
  const int64_t es = xk_dtype_size(a->cache_dtype), *st = a->value_cache_strides;
  char *base = (char *)a->value_cache + (block * st[0] + head * st[1] + off * st[3]) * es;
  int64_t d = 0;
#if XK_F32_LANES > 1
  if (n == XK_RUN && st[3] == 1 && (es == 1 || es == 2)) {
    /* Stream when the rows of consecutive elements tile whole lines. */
    const int lines = stream && st[2] == XK_RUN && (((uintptr_t)(base + d0 * st[2] * es)) & 63u) == 0;
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

/* Tokens t .. t + n - 1 (n <= XK_RUN) write offsets off .. off + n - 1 of `block`. */
static void write_run_paged(const xk_kv_write_args *a, int64_t t, int64_t n, int64_t block, int64_t off,
                            const scale_div *ks_all, const scale_div *vs_all, int stream) {
  const int64_t ss = xk_dtype_size(a->src_dtype);
  const int fp8 = xk_is_fp8(a->cache_dtype);
  _Alignas(64) char stg[XK_RUN * XK_DCHUNK * 4];
  const int64_t stg_row = XK_DCHUNK * 4;
  for (int64_t h = 0; h < a->num_heads; h++) {
    for (int kv = 0; kv < 2; kv++) {
      const char *src = kv ? (const char *)a->value : (const char *)a->key;
      const int64_t s_tok = kv ? a->value_stride_token : a->key_stride_token;
      const int64_t s_head = kv ? a->value_stride_head : a->key_stride_head;
      const float *scales = kv ? a->v_scale : a->k_scale;
      const int64_t scale_stride = kv ? a->v_scale_stride : a->k_scale_stride;
      scale_div sd = kv ? *vs_all : *ks_all;
      if (fp8 && scales && scale_stride) sd = scale_div_make(scales[h * scale_stride]);
      for (int64_t d0 = 0; d0 < a->head_size; d0 += XK_DCHUNK) {
        const int64_t dn = a->head_size - d0 < XK_DCHUNK ? a->head_size - d0 : XK_DCHUNK;
        for (int64_t j = 0; j < n; j++)
          convert_row(stg + j * stg_row, a->cache_dtype, src + ((t + j) * s_tok + h * s_head + d0) * ss,
                      a->src_dtype, dn, &sd);
        if (kv) scatter_value_run(a, block, off, h, n, d0, dn, stg, stg_row, stream);
        else scatter_key_run(a, block, off, h, n, d0, dn, stg, stg_row, stream);
      }
    }
  }
}

void XK_FN(kv_write)(const xk_kv_write_args *a, int64_t token_begin, int64_t token_end) {
  const int64_t ss = xk_dtype_size(a->src_dtype), es = xk_dtype_size(a->cache_dtype);
  const int fp8 = xk_is_fp8(a->cache_dtype);
  const int stream = (token_end - token_begin) * a->num_heads * a->head_size * es * 2 >=
                     (fp8 ? XK_STREAM_MIN_BYTES_FP8 : XK_STREAM_MIN_BYTES);
  /* Per-tensor scales: one reciprocal for the whole block. */
  const scale_div ks_all = scale_div_make(fp8 && a->k_scale ? a->k_scale[0] : 1.0f);
  const scale_div vs_all = scale_div_make(fp8 && a->v_scale ? a->v_scale[0] : 1.0f);
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
        write_run_paged(a, t, n, block, offset, &ks_all, &vs_all, stream);
        t += n;
        continue;
      }
    }
    for (int64_t h = 0; h < a->num_heads; h++) {
      const char *k = (const char *)a->key + (t * a->key_stride_token + h * a->key_stride_head) * ss;
      const char *v = (const char *)a->value + (t * a->value_stride_token + h * a->value_stride_head) * ss;
      scale_div ks = ks_all, vs = vs_all;
      if (fp8 && a->k_scale && a->k_scale_stride) ks = scale_div_make(a->k_scale[h * a->k_scale_stride]);
      if (fp8 && a->v_scale && a->v_scale_stride) vs = scale_div_make(a->v_scale[h * a->v_scale_stride]);
      if (a->layout == XK_LAYOUT_FLASH) {
        write_row_flash(a->key_cache, a->key_cache_strides, a->cache_dtype, block, offset, h, k, a->src_dtype,
                        a->head_size, &ks, stream);
        write_row_flash(a->value_cache, a->value_cache_strides, a->cache_dtype, block, offset, h, v,
                        a->src_dtype, a->head_size, &vs, stream);
      } else {
        write_row_paged_key(a, block, offset, h, k, &ks);
        write_row_paged_value(a, block, offset, h, v, &vs);
      }
    }
    t++;
  }
#if XK_F32_LANES > 1
  /* Streaming stores are weakly ordered: make them visible before returning. */
  if (stream) _mm_sfence();
#endif
}
