/*
 * stream_store.h: dst[e] = s * src[e] written with non-temporal stores.
 * For results far larger than the caches that nothing reads again soon
 * (per-sample gradients, GiBs): an ordinary store first reads each line
 * into the cache (write-allocate), doubling the memory traffic. The caller
 * orders the stores with stream_fence() before another thread reads them
 * (the end of an OpenMP region is not enough on its own for streaming
 * stores). Plain loops where SSE2 is absent.
 */
#ifndef CPK_STREAM_STORE_H
#define CPK_STREAM_STORE_H

#include <stdint.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static inline void stream_scaled_row_f32(float *dst, float s, const float *src,
                                         int64_t k) {
  int64_t e = 0;
#if defined(__SSE2__)
  for (; e < k && ((uintptr_t)(dst + e) & 15) != 0; e++)
    dst[e] = s * src[e];
  const __m128 vs = _mm_set1_ps(s);
  for (; e + 4 <= k; e += 4)
    _mm_stream_ps(dst + e, _mm_mul_ps(vs, _mm_loadu_ps(src + e)));
#endif
  for (; e < k; e++)
    dst[e] = s * src[e];
}

static inline void stream_scaled_row_f64(double *dst, double s,
                                         const double *src, int64_t k) {
  int64_t e = 0;
#if defined(__SSE2__)
  for (; e < k && ((uintptr_t)(dst + e) & 15) != 0; e++)
    dst[e] = s * src[e];
  const __m128d vs = _mm_set1_pd(s);
  for (; e + 2 <= k; e += 2)
    _mm_stream_pd(dst + e, _mm_mul_pd(vs, _mm_loadu_pd(src + e)));
#endif
  for (; e < k; e++)
    dst[e] = s * src[e];
}

static inline void stream_fence(void) {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

#endif
