/*
 * KV-cache writes: reshape_and_cache (paged layout) and reshape_and_cache_flash.
 * One grid block = a range of tokens. Padding slots (< 0) are skipped.
 */
#include "../common/convert.h"
#include "../common/tier.h"

/* Staging buffer for one head row converted to the cache format. */
#define XK_ROW_CHUNK 1024

static inline int64_t slot_of(const xk_kv_write_args *a, int64_t t) {
  return a->slot_mapping_is_i64 ? ((const int64_t *)a->slot_mapping)[t]
                                : (int64_t)((const int32_t *)a->slot_mapping)[t];
}

/* Flash layout: the head row is contiguous in the cache, convert straight into it. */
static void write_row_flash(char *cache, const int64_t *st, int32_t cache_dtype, int64_t block, int64_t offset,
                            int64_t head, const void *src, int32_t src_dtype, int64_t head_size, float scale) {
  const int64_t es = xk_dtype_size(cache_dtype);
  char *dst = cache + (block * st[0] + offset * st[1] + head * st[2]) * es;
  xk_convert_row(dst, cache_dtype, src, src_dtype, head_size, scale);
}

/* Paged key: [blocks, heads, head_size/x, block_size, x]; each x-chunk is 16 contiguous bytes. */
static void write_row_paged_key(const xk_kv_write_args *a, int64_t block, int64_t offset, int64_t head,
                                const char *src, float scale) {
  const int64_t es = xk_dtype_size(a->cache_dtype), ss = xk_dtype_size(a->src_dtype);
  const int64_t *st = a->key_cache_strides;
  char staged[XK_ROW_CHUNK * 4];
  char *base = (char *)a->key_cache + (block * st[0] + head * st[1] + offset * st[3]) * es;
  for (int64_t c0 = 0; c0 < a->head_size; c0 += XK_ROW_CHUNK) {
    const int64_t n = a->head_size - c0 < XK_ROW_CHUNK ? a->head_size - c0 : XK_ROW_CHUNK;
    xk_convert_row(staged, a->cache_dtype, src + c0 * ss, a->src_dtype, n, scale);
    for (int64_t c = 0; c < n; c += a->x) {
      memcpy(base + ((c0 + c) / a->x) * st[2] * es, staged + c * es, (size_t)(a->x * es));
    }
  }
}

/* Paged value: [blocks, heads, head_size, block_size]; elements of a row are block_size apart. */
static void write_row_paged_value(const xk_kv_write_args *a, int64_t block, int64_t offset, int64_t head,
                                  const char *src, float scale) {
  const int64_t es = xk_dtype_size(a->cache_dtype), ss = xk_dtype_size(a->src_dtype);
  const int64_t *st = a->value_cache_strides;
  char staged[XK_ROW_CHUNK * 4];
  char *base = (char *)a->value_cache + (block * st[0] + head * st[1] + offset * st[3]) * es;
  for (int64_t d0 = 0; d0 < a->head_size; d0 += XK_ROW_CHUNK) {
    const int64_t n = a->head_size - d0 < XK_ROW_CHUNK ? a->head_size - d0 : XK_ROW_CHUNK;
    xk_convert_row(staged, a->cache_dtype, src + d0 * ss, a->src_dtype, n, scale);
    for (int64_t d = 0; d < n; d++) memcpy(base + (d0 + d) * st[2] * es, staged + d * es, (size_t)es);
  }
}

void XK_FN(kv_write)(const xk_kv_write_args *a, int64_t token_begin, int64_t token_end) {
  const int64_t ss = xk_dtype_size(a->src_dtype);
  for (int64_t t = token_begin; t < token_end; t++) {
    const int64_t slot = slot_of(a, t);
    if (slot < 0) continue;
    const int64_t block = slot / a->block_size, offset = slot % a->block_size;
    for (int64_t h = 0; h < a->num_heads; h++) {
      const char *k = (const char *)a->key + (t * a->key_stride_token + h * a->key_stride_head) * ss;
      const char *v = (const char *)a->value + (t * a->value_stride_token + h * a->value_stride_head) * ss;
      const float ks = a->k_scale ? a->k_scale[h * a->k_scale_stride] : 1.0f;
      const float vs = a->v_scale ? a->v_scale[h * a->v_scale_stride] : 1.0f;
      if (a->layout == XK_LAYOUT_FLASH) {
        write_row_flash(a->key_cache, a->key_cache_strides, a->cache_dtype, block, offset, h, k, a->src_dtype,
                        a->head_size, ks);
        write_row_flash(a->value_cache, a->value_cache_strides, a->cache_dtype, block, offset, h, v,
                        a->src_dtype, a->head_size, vs);
      } else {
        write_row_paged_key(a, block, offset, h, k, ks);
        write_row_paged_value(a, block, offset, h, v, vs);
      }
    }
  }
}
