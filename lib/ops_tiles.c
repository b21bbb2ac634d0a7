/*
 * ops_tiles.c: products in register tiles (kernels/tile.inc: up to 12 rows
 * by two vectors of columns in AVX-512, 6 rows in AVX2 with FMA on CPUs
 * without AVX-512), for two jobs a BLAS call does badly.
 *
 * cpk__block_times_skip_zero (ops.h), a block's product with a matrix that
 * skips the columns where one batch row's block is zero:
 *
 *   out[v, r, :] := sum_c in[v, r, c] w[c, :]
 *   in [V, R, K], w [K, M], out [V, R, M]
 *
 * Behind a ReLU the block of a batch row is zero in the same columns for
 * every v: the units the sample switched off, about half of them. A dense
 * GEMM multiplies those zeros; here each batch row packs its V rows over
 * the columns with a nonzero and multiplies only those (kernels/
 * skip_zero.inc). With half the columns zero that is half the products of
 * the GEMM at about the GEMM's rate per product. It declines (returns 0;
 * the caller runs the GEMM) off the CPU, on CPUs with neither instruction
 * set, for fewer than CPK__SKIP_MIN_V block rows (a tile of few rows loads
 * w as often as it multiplies with it), and where too few columns are zero
 * to pay for the packing. A zero entry contributes nothing even where w
 * holds an infinity or NaN (the GEMM would give NaN there).
 *
 * cpk__sq_product_add (ops.h), the squares of a product added up without
 * storing it (kernels/sq_product.inc):
 *
 *   out[r, c] += weight * (sum_i at[i, r] bt[i, c])^2
 *
 * for the per-sample weight gradients of a convolution, whose inner
 * dimension (the output positions) is short: a GEMM would write each
 * product to memory and read it back to square it. It declines off the
 * CPU and on CPUs with neither instruction set. Both operands come
 * transposed, by cpk__transpose_tiles (8 x 8 register transposes).
 */
#include "config.h"

#include <omp.h>
#include <stdatomic.h>
#include <stdint.h>

#include "internal.h"
#include "ops.h"

#define CPK__SKIP_MIN_V 4  /* fewest block rows that beat the GEMM */
#define CPK__SKIP_MAX_DENSITY 0.7 /* most active share of columns that does */
#define CPK__SKIP_MAX_NR 12 /* most block rows of a tile (AVX-512) */

#define CPK_CAT_(a, b) a##b
#define CPK_CAT(a, b) CPK_CAT_(a, b)

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define CPK_AVX512 __attribute__((target("avx512f")))
#define CPK_AVX2 __attribute__((target("avx2,fma")))

/* AVX-512: 32 registers, tiles of 12 rows (24 accumulators). */
#define AVX512_MASK(n, LANES)                                                  \
  ((n) >= LANES ? -1 : (n) <= 0 ? 0 : (int)((1u << (n)) - 1))

#define ISA CPK_AVX512
#define SFX f32_avx512
#define T float
#define VEC __m512
#define LANES 16
#define NR CPK__SKIP_MAX_NR
#define MASK_T __mmask16
#define MASK_FIRST(n) ((__mmask16)AVX512_MASK(n, 16))
#define VZERO() _mm512_setzero_ps()
#define VSET1(x) _mm512_set1_ps(x)
#define VMUL(a, b) _mm512_mul_ps(a, b)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VLOAD(msk, p) _mm512_maskz_loadu_ps(msk, p)
#define VSTORE(p, msk, x) _mm512_mask_storeu_ps(p, msk, x)
#define NONZERO_BITS(n, p)                                                     \
  ((unsigned)_mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(MASK_FIRST(n), p),       \
                                _mm512_setzero_ps(), _CMP_NEQ_UQ))
#include "kernels/tile.inc"
#include "kernels/skip_zero.inc"
#include "kernels/sq_product.inc"
#include "kernels/tile_undef.h"

#define ISA CPK_AVX512
#define SFX f64_avx512
#define T double
#define VEC __m512d
#define LANES 8
#define NR CPK__SKIP_MAX_NR
#define MASK_T __mmask8
#define MASK_FIRST(n) ((__mmask8)AVX512_MASK(n, 8))
#define VZERO() _mm512_setzero_pd()
#define VSET1(x) _mm512_set1_pd(x)
#define VMUL(a, b) _mm512_mul_pd(a, b)
#define VFMA(a, b, c) _mm512_fmadd_pd(a, b, c)
#define VLOAD(msk, p) _mm512_maskz_loadu_pd(msk, p)
#define VSTORE(p, msk, x) _mm512_mask_storeu_pd(p, msk, x)
#define NONZERO_BITS(n, p)                                                     \
  ((unsigned)_mm512_cmp_pd_mask(_mm512_maskz_loadu_pd(MASK_FIRST(n), p),       \
                                _mm512_setzero_pd(), _CMP_NEQ_UQ))
#include "kernels/tile.inc"
#include "kernels/skip_zero.inc"
#include "kernels/sq_product.inc"
#include "kernels/tile_undef.h"

/* AVX2 with FMA: 16 registers, tiles of 6 rows (12 accumulators); lane
 * masks are vectors of all-ones lanes. */
CPK_AVX2 static inline __m256i first_lanes32(int64_t n) {
  const int c = n < 0 ? 0 : n > 8 ? 8 : (int)n;
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(c),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
CPK_AVX2 static inline __m256i first_lanes64(int64_t n) {
  const long long c = n < 0 ? 0 : n > 4 ? 4 : n;
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(c),
                            _mm256_setr_epi64x(0, 1, 2, 3));
}

#define ISA CPK_AVX2
#define SFX f32_avx2
#define T float
#define VEC __m256
#define LANES 8
#define NR 6
#define MASK_T __m256i
#define MASK_FIRST(n) first_lanes32(n)
#define VZERO() _mm256_setzero_ps()
#define VSET1(x) _mm256_set1_ps(x)
#define VMUL(a, b) _mm256_mul_ps(a, b)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VLOAD(msk, p) _mm256_maskload_ps(p, msk)
#define VSTORE(p, msk, x) _mm256_maskstore_ps(p, msk, x)
#define NONZERO_BITS(n, p)                                                     \
  ((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(                                 \
      _mm256_maskload_ps(p, first_lanes32(n)), _mm256_setzero_ps(),            \
      _CMP_NEQ_UQ)))
#include "kernels/tile.inc"
#include "kernels/skip_zero.inc"
#include "kernels/sq_product.inc"
#include "kernels/tile_undef.h"

#define ISA CPK_AVX2
#define SFX f64_avx2
#define T double
#define VEC __m256d
#define LANES 4
#define NR 6
#define MASK_T __m256i
#define MASK_FIRST(n) first_lanes64(n)
#define VZERO() _mm256_setzero_pd()
#define VSET1(x) _mm256_set1_pd(x)
#define VMUL(a, b) _mm256_mul_pd(a, b)
#define VFMA(a, b, c) _mm256_fmadd_pd(a, b, c)
#define VLOAD(msk, p) _mm256_maskload_pd(p, msk)
#define VSTORE(p, msk, x) _mm256_maskstore_pd(p, msk, x)
#define NONZERO_BITS(n, p)                                                     \
  ((unsigned)_mm256_movemask_pd(_mm256_cmp_pd(                                 \
      _mm256_maskload_pd(p, first_lanes64(n)), _mm256_setzero_pd(),            \
      _CMP_NEQ_UQ)))
#include "kernels/tile.inc"
#include "kernels/skip_zero.inc"
#include "kernels/sq_product.inc"
#include "kernels/tile_undef.h"

/* The widest instruction set of this CPU (2 AVX-512, 1 AVX2 with FMA, 0
 * neither), at most the cap a test set. */
static atomic_int isa_cap = 2;

void cpk__tiles_cap_isa(int cap) { atomic_store(&isa_cap, cap); }

static int isa_level(void) {
  static int known = -1;
  if (known < 0) {
    __builtin_cpu_init();
    known = __builtin_cpu_supports("avx512f")                             ? 2
            : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1
                                                                              : 0;
  }
  const int cap = atomic_load(&isa_cap);
  return known < cap ? known : cap;
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
  const int isa = isa_level();
  if ((ctx != NULL && ctx->device != CPK_DEVICE_CPU) || isa == 0 ||
      v < CPK__SKIP_MIN_V || rows <= 0 || k <= 0 || m <= 0 || k > INT32_MAX ||
      active_share(dt, v, rows, k, in) > CPK__SKIP_MAX_DENSITY)
    return 0;
  const size_t es = cpk_dtype_size(dt);
  const int threads = omp_get_max_threads();
  /* Per thread: the active columns [k], the nonzero bits (a word per at
   * least 4 columns: at most k words) and the packed chunk [k, NR]. */
  const size_t lists = ((size_t)k * (sizeof(int32_t) + sizeof(unsigned)) + 63) /
                       64 * 64;
  const size_t per_thread =
      (lists + (size_t)k * CPK__SKIP_MAX_NR * es + 63) / 64 * 64;
  char *scratch = cpk__malloc(per_thread * (size_t)threads);
  if (scratch == NULL) {
    cpk_clear_error(); /* the GEMM needs no scratch */
    return 0;
  }
  const int kernel = 2 * isa + (dt == CPK_F64); /* 2..5 */
#pragma omp parallel num_threads(threads)
  {
    char *mine = scratch + per_thread * (size_t)omp_get_thread_num();
    int32_t *act = (int32_t *)mine;
    unsigned *nz = (unsigned *)(act + k);
    void *cp = mine + lists;
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < rows; r++) {
      switch (kernel) {
      case 4:
        skip_zero_row_f32_avx512(v, rows, k, m, r, in, w, out, act, nz, cp);
        break;
      case 5:
        skip_zero_row_f64_avx512(v, rows, k, m, r, in, w, out, act, nz, cp);
        break;
      case 2:
        skip_zero_row_f32_avx2(v, rows, k, m, r, in, w, out, act, nz, cp);
        break;
      default:
        skip_zero_row_f64_avx2(v, rows, k, m, r, in, w, out, act, nz, cp);
      }
    }
  }
  cpk__free(scratch);
  return 1;
}

/* q[j * ld + i] := p[i * ls + j] for one 8 x 8 block of floats. */
CPK_AVX2 static inline __attribute__((always_inline)) void
block8_f32(const float *p, int64_t ls, float *q, int64_t ld) {
  __m256 r[8], t[8], u[8];
  for (int k = 0; k < 8; k++)
    r[k] = _mm256_loadu_ps(p + k * ls);
  for (int k = 0; k < 4; k++) { /* pairs of rows interleaved */
    t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < 2; k++) { /* then pairs of pairs */
    u[4 * k] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * k + 1] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * k + 2] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * k + 3] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int k = 0; k < 4; k++) { /* then the 128-bit halves */
    _mm256_storeu_ps(q + k * ld, _mm256_permute2f128_ps(u[k], u[k + 4], 0x20));
    _mm256_storeu_ps(q + (k + 4) * ld,
                     _mm256_permute2f128_ps(u[k], u[k + 4], 0x31));
  }
}

/* The same for one 4 x 4 block of doubles. */
CPK_AVX2 static inline __attribute__((always_inline)) void
block4_f64(const double *p, int64_t ls, double *q, int64_t ld) {
  const __m256d r0 = _mm256_loadu_pd(p), r1 = _mm256_loadu_pd(p + ls);
  const __m256d r2 = _mm256_loadu_pd(p + 2 * ls);
  const __m256d r3 = _mm256_loadu_pd(p + 3 * ls);
  const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
  const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
  _mm256_storeu_pd(q, _mm256_permute2f128_pd(t0, t2, 0x20));
  _mm256_storeu_pd(q + ld, _mm256_permute2f128_pd(t1, t3, 0x20));
  _mm256_storeu_pd(q + 2 * ld, _mm256_permute2f128_pd(t0, t2, 0x31));
  _mm256_storeu_pd(q + 3 * ld, _mm256_permute2f128_pd(t1, t3, 0x31));
}

/* dst [cols, rows] := src [rows, cols]^T in B x B register blocks, within
 * tiles of 64 x 64 that stay in cache; scalar at the edges. */
#define TRANSPOSE_TILED(NAME, T, B, BLOCK)                                     \
  CPK_AVX2 static void NAME(int64_t rows, int64_t cols, const T *src,         \
                            T *dst) {                                          \
    for (int64_t i0 = 0; i0 < rows; i0 += 64)                                  \
      for (int64_t j0 = 0; j0 < cols; j0 += 64) {                              \
        const int64_t i1 = i0 + 64 < rows ? i0 + 64 : rows;                    \
        const int64_t j1 = j0 + 64 < cols ? j0 + 64 : cols;                    \
        int64_t i = i0;                                                        \
        for (; i + B <= i1; i += B) {                                          \
          int64_t j = j0;                                                      \
          for (; j + B <= j1; j += B)                                          \
            BLOCK(src + i * cols + j, cols, dst + j * rows + i, rows);         \
          for (int64_t a = i; a < i + B; a++)                                  \
            for (int64_t b = j; b < j1; b++)                                   \
              dst[b * rows + a] = src[a * cols + b];                           \
        }                                                                      \
        for (; i < i1; i++)                                                    \
          for (int64_t b = j0; b < j1; b++)                                    \
            dst[b * rows + i] = src[i * cols + b];                             \
      }                                                                        \
  }

TRANSPOSE_TILED(transpose_f32_avx2, float, 8, block8_f32)
TRANSPOSE_TILED(transpose_f64_avx2, double, 4, block4_f64)

int cpk__transpose_tiles(cpk_dtype dt, int64_t rows, int64_t cols,
                         const void *src, void *dst) {
  if (isa_level() == 0)
    return 0;
  if (dt == CPK_F32)
    transpose_f32_avx2(rows, cols, src, dst);
  else
    transpose_f64_avx2(rows, cols, src, dst);
  return 1;
}

size_t cpk__sq_product_scratch(int64_t inner) {
  return (size_t)inner * sizeof(int32_t);
}

int cpk__sq_product_add(const cpk_context *ctx, cpk_dtype dt, int64_t rows,
                        int64_t inner, int64_t cols, const void *at,
                        int64_t lda, const void *bt, int64_t ldb,
                        double weight, void *out, int64_t ldo, void *scratch) {
  const int isa = isa_level();
  if ((ctx != NULL && ctx->device != CPK_DEVICE_CPU) || isa == 0 ||
      inner > INT32_MAX)
    return 0;
  if (rows <= 0 || inner <= 0 || cols <= 0)
    return 1;
  int32_t *act = scratch;
  for (int64_t i = 0; i < inner; i++)
    act[i] = (int32_t)i;
  switch (2 * isa + (dt == CPK_F64)) {
  case 4:
    sq_product_f32_avx512(rows, inner, cols, at, lda, bt, ldb, (float)weight,
                          out, ldo, act);
    break;
  case 5:
    sq_product_f64_avx512(rows, inner, cols, at, lda, bt, ldb, weight, out,
                          ldo, act);
    break;
  case 2:
    sq_product_f32_avx2(rows, inner, cols, at, lda, bt, ldb, (float)weight,
                        out, ldo, act);
    break;
  default:
    sq_product_f64_avx2(rows, inner, cols, at, lda, bt, ldb, weight, out, ldo,
                        act);
  }
  return 1;
}

#else /* no vector tiles for this compiler or target */

void cpk__tiles_cap_isa(int cap) { (void)cap; }

int cpk__block_times_skip_zero(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                               int64_t rows, int64_t k, int64_t m,
                               const void *in, const void *w, void *out) {
  return 0;
}

int cpk__transpose_tiles(cpk_dtype dt, int64_t rows, int64_t cols,
                         const void *src, void *dst) {
  return 0;
}

size_t cpk__sq_product_scratch(int64_t inner) {
  (void)inner;
  return 0;
}

int cpk__sq_product_add(const cpk_context *ctx, cpk_dtype dt, int64_t rows,
                        int64_t inner, int64_t cols, const void *at,
                        int64_t lda, const void *bt, int64_t ldb,
                        double weight, void *out, int64_t ldo, void *scratch) {
  return 0;
}

#endif
