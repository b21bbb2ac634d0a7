/*
 * ops_skip_zero.c: a block's product with a matrix that skips the columns
 * where one batch row's block is zero (cpk__block_times_skip_zero, ops.h).
 *
 *   out[v, r, :] := sum_c in[v, r, c] w[c, :]
 *   in [V, R, K], w [K, M], out [V, R, M]
 *
 * Behind a ReLU the block of a batch row is zero in the same columns for
 * every v: the units the sample switched off, about half of them. A dense
 * GEMM multiplies those zeros; here each batch row packs its V rows over
 * the columns with a nonzero and multiplies only those (kernels/
 * skip_zero.inc, AVX-512 tiles). With half the columns zero that is half the
 * products of the GEMM at about the GEMM's rate per product.
 *
 * It declines (returns 0; the caller runs the GEMM) off the CPU, without
 * AVX-512, for fewer than CPK__SKIP_MIN_V block rows (a tile of few rows
 * loads w as often as it multiplies with it), and where too few columns are
 * zero to pay for the packing. A zero entry contributes nothing even where
 * w holds an infinity or NaN (the GEMM would give NaN there).
 */
#include "config.h"

#include <immintrin.h>
#include <omp.h>
#include <stdint.h>

#include "internal.h"
#include "ops.h"

#define CPK__SKIP_NR 12    /* block rows per tile: 24 of 32 vector registers */
#define CPK__SKIP_MIN_V 4  /* fewest block rows that beat the GEMM */
#define CPK__SKIP_MAX_DENSITY 0.7 /* most active share of columns that does */

#define CPK_CAT_(a, b) a##b
#define CPK_CAT(a, b) CPK_CAT_(a, b)

#if defined(__x86_64__) && defined(__GNUC__)
#define CPK_AVX512 __attribute__((target("avx512f")))

#define T float
#define SFX f32
#define VEC __m512
#define MASK_T __mmask16
#define LANES 16
#define VZERO() _mm512_setzero_ps()
#define VSET1(x) _mm512_set1_ps(x)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VLOAD(msk, p) _mm512_maskz_loadu_ps(msk, p)
#define VSTORE(p, msk, x) _mm512_mask_storeu_ps(p, msk, x)
#define VNONZERO(msk, p)                                                       \
  _mm512_mask_cmp_ps_mask(msk, _mm512_maskz_loadu_ps(msk, p),                  \
                          _mm512_setzero_ps(), _CMP_NEQ_UQ)
#include "kernels/skip_zero.inc"
#undef T
#undef SFX
#undef VEC
#undef MASK_T
#undef LANES
#undef VZERO
#undef VSET1
#undef VFMA
#undef VLOAD
#undef VSTORE
#undef VNONZERO

#define T double
#define SFX f64
#define VEC __m512d
#define MASK_T __mmask8
#define LANES 8
#define VZERO() _mm512_setzero_pd()
#define VSET1(x) _mm512_set1_pd(x)
#define VFMA(a, b, c) _mm512_fmadd_pd(a, b, c)
#define VLOAD(msk, p) _mm512_maskz_loadu_pd(msk, p)
#define VSTORE(p, msk, x) _mm512_mask_storeu_pd(p, msk, x)
#define VNONZERO(msk, p)                                                       \
  _mm512_mask_cmp_pd_mask(msk, _mm512_maskz_loadu_pd(msk, p),                  \
                          _mm512_setzero_pd(), _CMP_NEQ_UQ)
#include "kernels/skip_zero.inc"
#undef T
#undef SFX
#undef VEC
#undef MASK_T
#undef LANES
#undef VZERO
#undef VSET1
#undef VFMA
#undef VLOAD
#undef VSTORE
#undef VNONZERO

static int have_avx512(void) {
  static int known = -1;
  if (known < 0) {
    __builtin_cpu_init();
    known = __builtin_cpu_supports("avx512f") != 0;
  }
  return known;
}

/* Share of (batch row, column) pairs with a nonzero among the V rows,
 * estimated on at most 16 batch rows spread over the batch. */
static double active_share(cpk_dtype dt, int64_t v, int64_t rows, int64_t k,
                           const void *in) {
  const size_t es = cpk_dtype_size(dt);
  const int64_t step = rows > 16 ? rows / 16 : 1;
  int64_t active = 0, seen = 0;
  for (int64_t r = 0; r < rows; r += step, seen++)
    for (int64_t c = 0; c < k; c++)
      for (int64_t b = 0; b < v; b++) {
        const char *e = (const char *)in + (size_t)((b * rows + r) * k + c) * es;
        if (dt == CPK_F32 ? *(const float *)e != 0 : *(const double *)e != 0) {
          active++;
          break;
        }
      }
  return (double)active / (double)(seen * k);
}

int cpk__block_times_skip_zero(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                               int64_t rows, int64_t k, int64_t m,
                               const void *in, const void *w, void *out) {
  if ((ctx != NULL && ctx->device != CPK_DEVICE_CPU) ||
      v < CPK__SKIP_MIN_V || rows <= 0 || k <= 0 || m <= 0 || k > INT32_MAX ||
      !have_avx512() ||
      active_share(dt, v, rows, k, in) > CPK__SKIP_MAX_DENSITY)
    return 0;
  const size_t es = cpk_dtype_size(dt);
  const int threads = omp_get_max_threads();
  /* Per thread: the active columns [k], their nonzero bits and the packed
   * chunk [k, NR]. */
  /* (the flags: one bit per column, at most two bytes per 8 columns) */
  const size_t act_bytes = ((size_t)k * sizeof(int32_t) + (size_t)k / 4 + 66) /
                           64 * 64;
  const size_t per_thread =
      (act_bytes + (size_t)k * CPK__SKIP_NR * es + 63) / 64 * 64;
  char *scratch = cpk__malloc(per_thread * (size_t)threads);
  if (scratch == NULL)
    return 0;
#pragma omp parallel num_threads(threads)
  {
    char *mine = scratch + per_thread * (size_t)omp_get_thread_num();
    int32_t *act = (int32_t *)mine;
    void *nz = act + k;
    void *cp = mine + act_bytes;
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < rows; r++) {
      if (dt == CPK_F32)
        skip_zero_row_f32(v, rows, k, m, r, in, w, out, act, nz, cp);
      else
        skip_zero_row_f64(v, rows, k, m, r, in, w, out, act, nz, cp);
    }
  }
  cpk__free(scratch);
  return 1;
}

#else /* no AVX-512 tiles for this compiler or target */

int cpk__block_times_skip_zero(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                               int64_t rows, int64_t k, int64_t m,
                               const void *in, const void *w, void *out) {
  return 0;
}

#endif
