/*
 * Tile configuration for the AMX kernels. A configuration is per-thread
 * state: every worker loads its own before its first tile op.
 */
#ifndef XK_AMX_TILES_H
#define XK_AMX_TILES_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* LDTILECFG's 64-byte operand (palette 1). */
typedef struct xk_amx_cfg {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} xk_amx_cfg;

/* Tiles 0-7 of rows[i] x colsb[i] bytes. The barrier keeps GCC from moving
 * tile ops above the load when the shapes are computed at run time. */
static inline void xk_amx_load_config(const uint8_t rows[8], const uint16_t colsb[8]) {
  _Alignas(64) xk_amx_cfg c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int i = 0; i < 8; i++) {
    c.rows[i] = rows[i];
    c.colsb[i] = colsb[i];
  }
  _tile_loadconfig(&c);
  __asm__ volatile("" ::: "memory");
}

/* Every tile 16 rows x 64 bytes (16 x 16 f32, 16 x 32 bf16). */
static inline void xk_amx_config_16x64(void) {
  static const uint8_t rows[8] = {16, 16, 16, 16, 16, 16, 16, 16};
  static const uint16_t colsb[8] = {64, 64, 64, 64, 64, 64, 64, 64};
  xk_amx_load_config(rows, colsb);
}

/* The 2 x 2 blocking of the fp32 GEMM-style kernels: C tiles 0-3 hold a
 * 32 x 32 fp32 block (row stride ld floats) as [0 1; 2 3]; A tiles 4, 5 hold
 * its rows 0-15 and 16-31, B tiles 6, 7 its columns 0-15 and 16-31. */
static inline __attribute__((always_inline)) void xk_amx_zero_c2x2(void) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

static inline __attribute__((always_inline)) void xk_amx_load_c2x2(const float *c, int64_t ld) {
  _tile_loadd(0, c, ld * 4);
  _tile_loadd(1, c + 16, ld * 4);
  _tile_loadd(2, c + 16 * ld, ld * 4);
  _tile_loadd(3, c + 16 * ld + 16, ld * 4);
}

static inline __attribute__((always_inline)) void xk_amx_store_c2x2(float *c, int64_t ld) {
  _tile_stored(0, c, ld * 4);
  _tile_stored(1, c + 16, ld * 4);
  _tile_stored(2, c + 16 * ld, ld * 4);
  _tile_stored(3, c + 16 * ld + 16, ld * 4);
}

/* C tiles 0-3 += A tiles 4, 5 (loaded) times the B pair at b: 32 columns of
 * VNNI bf16 pairs, two 16-column tiles 64 bytes apart, rows ldb bytes apart. */
static inline __attribute__((always_inline)) void xk_amx_dp_b2(const void *b, int64_t ldb) {
  _tile_loadd(6, b, ldb);
  _tile_dpbf16ps(0, 4, 6);
  _tile_loadd(7, (const char *)b + 64, ldb);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

#endif
