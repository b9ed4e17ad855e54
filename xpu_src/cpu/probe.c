/*
 * Machine probes: the benchmarks measure this machine's DRAM read bandwidth and
 * FMA peak with these rather than trusting a hard-coded number.
 */
#include "../common/convert.h"
#include "../common/tier.h"

/*
 * The sum of n floats, read as XK_READ_STREAMS sequential streams in lockstep
 * (the range cut in equal parts): a core reaches its read bandwidth only with
 * several streams in flight. One stream measured ~13 GB/s here against
 * ~15-16 GB/s for 2-8 streams, and multi-row kernels (GEMV, attention) read
 * faster than the single-stream figure, which made it no roof.
 */
#define XK_READ_STREAMS 8

double XK_FN(probe_read)(const float *src, int64_t n) {
  const int64_t part = n / XK_READ_STREAMS / 16 * 16;
  double total = 0.0;
#if XK_F32_LANES == 16
  __m512 acc[XK_READ_STREAMS];
  for (int s = 0; s < XK_READ_STREAMS; s++) acc[s] = _mm512_setzero_ps();
  for (int64_t i = 0; i < part; i += 16) {
    for (int s = 0; s < XK_READ_STREAMS; s++) acc[s] = _mm512_add_ps(acc[s], _mm512_loadu_ps(src + s * part + i));
  }
  for (int s = 0; s < XK_READ_STREAMS; s++) total += _mm512_reduce_add_ps(acc[s]);
#elif XK_F32_LANES == 8
  __m256 acc[XK_READ_STREAMS];
  for (int s = 0; s < XK_READ_STREAMS; s++) acc[s] = _mm256_setzero_ps();
  for (int64_t i = 0; i < part; i += 16) {
    for (int s = 0; s < XK_READ_STREAMS; s++) {
      acc[s] = _mm256_add_ps(acc[s], _mm256_loadu_ps(src + s * part + i));
      acc[s] = _mm256_add_ps(acc[s], _mm256_loadu_ps(src + s * part + i + 8));
    }
  }
  for (int s = 0; s < XK_READ_STREAMS; s++) {
    float lanes[8];
    _mm256_storeu_ps(lanes, acc[s]);
    for (int j = 0; j < 8; j++) total += lanes[j];
  }
#else
  float acc[XK_READ_STREAMS][4] = {{0}};
  for (int64_t i = 0; i < part; i += 4) {
    for (int s = 0; s < XK_READ_STREAMS; s++)
      for (int j = 0; j < 4; j++) acc[s][j] += src[s * part + i + j];
  }
  for (int s = 0; s < XK_READ_STREAMS; s++)
    for (int j = 0; j < 4; j++) total += acc[s][j];
#endif
  for (int64_t i = XK_READ_STREAMS * part; i < n; i++) total += src[i];
  return total;
}

/* 12 independent accumulator chains cover FMA latency x throughput on current cores. */
#define XK_FMA_CHAINS 12

double XK_FN(probe_fma)(int64_t iters, xk_probe_result *sink) {
#if XK_F32_LANES == 16
  __m512 acc[XK_FMA_CHAINS];
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int j = 0; j < XK_FMA_CHAINS; j++) acc[j] = _mm512_set1_ps((float)j);
  for (int64_t it = 0; it < iters; it++) {
    for (int j = 0; j < XK_FMA_CHAINS; j++) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  __m512 s = acc[0];
  for (int j = 1; j < XK_FMA_CHAINS; j++) s = _mm512_add_ps(s, acc[j]);
  sink->value = _mm512_reduce_add_ps(s);
#elif XK_F32_LANES == 8
  __m256 acc[XK_FMA_CHAINS];
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int j = 0; j < XK_FMA_CHAINS; j++) acc[j] = _mm256_set1_ps((float)j);
  for (int64_t it = 0; it < iters; it++) {
    for (int j = 0; j < XK_FMA_CHAINS; j++) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  }
  __m256 s = acc[0];
  for (int j = 1; j < XK_FMA_CHAINS; j++) s = _mm256_add_ps(s, acc[j]);
  float lanes[8];
  _mm256_storeu_ps(lanes, s);
  sink->value = 0;
  for (int j = 0; j < 8; j++) sink->value += lanes[j];
#else
  float acc[XK_FMA_CHAINS][4];
  for (int j = 0; j < XK_FMA_CHAINS; j++)
    for (int l = 0; l < 4; l++) acc[j][l] = (float)j;
  for (int64_t it = 0; it < iters; it++) {
    for (int j = 0; j < XK_FMA_CHAINS; j++)
      for (int l = 0; l < 4; l++) acc[j][l] = acc[j][l] * 0.999999f + 1e-7f;
  }
  sink->value = 0;
  for (int j = 0; j < XK_FMA_CHAINS; j++)
    for (int l = 0; l < 4; l++) sink->value += acc[j][l];
#endif
  return 2.0 * (double)iters * XK_FMA_CHAINS * (XK_F32_LANES == 1 ? 4 : XK_F32_LANES);
}
