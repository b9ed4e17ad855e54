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

#endif
