/*
 * sample_grads.c: what the trainer gathers from per-sample gradients while
 * the backward pass visits them (train.h): Cockpit's histograms GradHist1d
 * and GradHist2d, and projections g_n . d on a direction. Chunks of
 * materialised per-sample gradients come through cpk__sample_grads_visit;
 * Linear weights come in factored form g_n = u_n x_n^T through
 * cpk__sample_grads_visit_factors, which never writes the N * OUT * IN
 * numbers to memory:
 *   histograms: the products u_ni x_nj are formed tile by tile in cache;
 *   projections: g_n . D = sum_i u_ni (D x_n)_i, one GEMM Y = X D^T.
 */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "ops.h"
#include "context.h"
#include "train.h"

void cpk__sample_grads_reset(cpk__sample_grads *sg) {
  memset(sg->h1, 0, sizeof sg->h1);
  memset(sg->h2, 0, sizeof sg->h2);
  if (sg->dots != NULL)
    memset(sg->dots, 0, (size_t)sg->batch * sizeof *sg->dots);
}

/* Values binned per tile: the bins of a tile are computed first (a loop
 * the compiler vectorises), then counted into LANES interleaved copies of
 * the counts, so that runs of equal bins (most gradient elements are near
 * zero) do not wait on each other's increments. */
#define TILE 512
#define LANES 8
/* Counts of one thread: the 1-d histogram, then the 2-d one. */
#define HIST_SLOTS (CPK__HIST1D_BINS + CPK__HIST2D_X * CPK__HIST2D_Y)

/* Count one tile: x[i] = B g (the scaled gradient elements), y[i] the
 * parameter values (2-d only), into lanes (LANES * HIST_SLOTS):
 *  1-d: torch.histc over [-2, 2] after clamping, bin = (int)((x + 2) * 25),
 *       the right edge in the last bin;
 *  2-d: Cockpit's histogram2d, values clamped to the outer bin centres,
 *       bin = 50 * (int)((x + 1) / 0.05) + (int)((y + 2) / 0.08). */
static void count_tile(const cpk__sample_grads *sg, const double *x,
                       const double *y, int64_t m, uint32_t *lanes) {
  const double wx = 2.0 / CPK__HIST2D_X, wy = 4.0 / CPK__HIST2D_Y;
  const double xlo = -1.0 + wx / 2, xhi = 1.0 - wx / 2;
  const double ylo = -2.0 + wy / 2, yhi = 2.0 - wy / 2;
  int bins[TILE];
  if (sg->hist1d) {
#pragma omp simd
    for (int64_t i = 0; i < m; i++) {
      const double v = x[i] < -2.0 ? -2.0 : (x[i] > 2.0 ? 2.0 : x[i]);
      const int b = (int)((v + 2.0) * (CPK__HIST1D_BINS / 4.0));
      bins[i] = b < CPK__HIST1D_BINS ? b : CPK__HIST1D_BINS - 1;
    }
    for (int64_t i = 0; i < m; i++)
      lanes[(i % LANES) * HIST_SLOTS + bins[i]]++;
  }
  if (sg->hist2d) {
#pragma omp simd
    for (int64_t i = 0; i < m; i++) {
      const double u = x[i] < xlo ? xlo : (x[i] > xhi ? xhi : x[i]);
      const double v = y[i] < ylo ? ylo : (y[i] > yhi ? yhi : y[i]);
      bins[i] = CPK__HIST2D_Y * (int)((u + 1.0) / wx) + (int)((v + 2.0) / wy);
    }
    for (int64_t i = 0; i < m; i++)
      lanes[(i % LANES) * HIST_SLOTS + CPK__HIST1D_BINS + bins[i]]++;
  }
}

/* Per-thread scratch: the lane counts, summed into sg at the end. */
typedef struct scratch {
  int threads;
  uint32_t *lanes; /* threads * LANES * HIST_SLOTS */
} scratch;

static int scratch_new(scratch *s) {
  s->threads = omp_get_max_threads();
  s->lanes =
      cpk__calloc(sizeof(uint32_t) * LANES * HIST_SLOTS * (size_t)s->threads);
  return s->lanes ? CPK_OK : CPK_ENOMEM;
}

static void scratch_sum(scratch *s, cpk__sample_grads *sg) {
  for (int j = 0; j < s->threads * LANES; j++) {
    const uint32_t *l = s->lanes + (size_t)j * HIST_SLOTS;
    for (int b = 0; b < CPK__HIST1D_BINS; b++)
      sg->h1[b] += l[b];
    for (int b = 0; b < CPK__HIST2D_X * CPK__HIST2D_Y; b++)
      sg->h2[b] += l[CPK__HIST1D_BINS + b];
  }
  cpk__free(s->lanes);
}

/* The share [lo, hi) of thread j among `threads` over n items. */
static void share(int64_t n, int j, int threads, int64_t *lo, int64_t *hi) {
  *lo = n * j / threads;
  *hi = n * (j + 1) / threads;
}

/* The histograms of the items [lo, hi) of a chunk [count, per] of type T,
 * tiles kept within one sample's row so that theta's slice is contiguous. */
#define CHUNK_HIST(T)                                                          \
  static void chunk_hist_##T(const cpk__sample_grads *sg, const T *g,          \
                             const T *theta, int64_t per, int64_t lo,          \
                             int64_t hi, uint32_t *lanes) {                    \
    double x[TILE], y[TILE];                                                   \
    for (int64_t at = lo; at < hi;) {                                          \
      const int64_t k0 = at % per;                                             \
      int64_t m = hi - at < TILE ? hi - at : TILE;                             \
      m = m < per - k0 ? m : per - k0;                                         \
      for (int64_t i = 0; i < m; i++) {                                        \
        x[i] = (double)sg->batch * (double)g[at + i];                          \
        y[i] = (double)theta[k0 + i];                                          \
      }                                                                        \
      count_tile(sg, x, y, m, lanes);                                          \
      at += m;                                                                 \
    }                                                                          \
  }
CHUNK_HIST(float)
CHUNK_HIST(double)

/* dots[n] += g_n . d for the rows of one chunk g [count, per] of type T,
 * the same bits whatever the threads: each row is cut into blocks of
 * PROJ_BLOCK items whose sums (partial [count, blocks per row]) any thread
 * may compute, then added up per row in block order. */
#define PROJ_BLOCK 4096
#define PROJECT(T)                                                             \
  static void project_##T(double *dots, const T *g, const double *d,           \
                          int64_t count, int64_t per, double *partial) {       \
    const int64_t bpr = (per + PROJ_BLOCK - 1) / PROJ_BLOCK;                   \
    _Pragma("omp parallel for schedule(static)") for (int64_t b = 0;           \
                                                      b < count * bpr; b++) {  \
      const int64_t n = b / bpr, k0 = (b % bpr) * PROJ_BLOCK;                  \
      const int64_t k1 = k0 + PROJ_BLOCK < per ? k0 + PROJ_BLOCK : per;        \
      const T *row = g + n * per;                                              \
      double sum = 0.0;                                                        \
      for (int64_t k = k0; k < k1; k++)                                        \
        sum += (double)row[k] * d[k];                                          \
      partial[b] = sum;                                                        \
    }                                                                          \
    for (int64_t n = 0; n < count; n++)                                        \
      for (int64_t b = 0; b < bpr; b++)                                        \
        dots[n] += partial[n * bpr + b];                                       \
  }
PROJECT(float)
PROJECT(double)

/* The model parameter called `param` and its value; CPK_EINVAL if none
 * or of another dtype than `dt`. */
static int find_param(const cpk__sample_grads *sg, const char *param,
                      cpk_dtype dt, int *index, const cpk_tensor **theta) {
  const cpk_model *m = sg->model;
  int i = 0;
  while (i < m->nparams && strcmp(m->params[i].name, param) != 0)
    i++;
  if (i == m->nparams)
    return cpk__fail(CPK_EINVAL,
                     "per-sample gradients of unknown parameter "
                     "'%s'",
                     param);
  *index = i;
  *theta = cpk__train_param(m, i)->value;
  if ((*theta)->dtype != dt)
    return cpk__fail(CPK_EINVAL,
                     "%s: per-sample gradients of %s, parameter "
                     "of %s",
                     param, cpk_dtype_name(dt),
                     cpk_dtype_name((*theta)->dtype));
  return CPK_OK;
}

int cpk__sample_grads_visit(void *ud, const char *param, int64_t first,
                            const cpk_tensor *chunk) {
  cpk__sample_grads *sg = ud;
  const cpk_tensor *theta;
  int i;
  int rc = find_param(sg, param, chunk->dtype, &i, &theta);
  if (rc != CPK_OK)
    return rc;
  const int64_t count = chunk->shape[0];
  const int64_t per = cpk_tensor_numel(chunk) / count, total = count * per;
  const int hist = sg->hist1d || sg->hist2d, f32 = chunk->dtype == CPK_F32;
  const double *d = sg->dir != NULL ? sg->dir[i] : NULL;
  scratch s = {0};
  if (hist && (rc = scratch_new(&s)) != CPK_OK)
    return rc;
    /* Threads over the chunk's elements (a chunk may hold one sample). */
#pragma omp parallel if (hist) num_threads(hist ? s.threads : 1)
  {
    int64_t lo, hi;
    const int j = omp_get_thread_num();
    share(total, j, omp_get_num_threads(), &lo, &hi);
    uint32_t *lanes = hist ? s.lanes + (size_t)j * LANES * HIST_SLOTS : NULL;
    if (hist && f32)
      chunk_hist_float(sg, chunk->data, theta->data, per, lo, hi, lanes);
    else if (hist)
      chunk_hist_double(sg, chunk->data, theta->data, per, lo, hi, lanes);
  }
  if (hist)
    scratch_sum(&s, sg);
  if (d != NULL) {
    const int64_t blocks = count * ((per + PROJ_BLOCK - 1) / PROJ_BLOCK);
    double *partial = cpk__malloc((size_t)blocks * sizeof *partial);
    if (partial == NULL)
      return CPK_ENOMEM;
    if (f32)
      project_float(sg->dots + first, chunk->data, d, count, per, partial);
    else
      project_double(sg->dots + first, chunk->data, d, count, per, partial);
    cpk__free(partial);
  }
  return CPK_OK;
}

/* The histograms of the rows [lo, hi) of the products u x^T, row r = (n, i)
 * holding u[n, i] x[n, :] (formed in T's precision, as the materialised
 * gradient would be, then scaled by B), against theta[i, :].
 * The 1-d histogram alone has a shortcut. With s = B |u[n, i]|, when
 * s max_j |x[n, j]| < 0.039 every product of the row lies within one bin
 * width (0.04) of zero: a product >= 0 falls in bin 50 ([0, 0.04)), one
 * < 0 in bin 49, provided it is not so close to zero that 2 + p rounds to
 * 2 (s min |x[n, j] != 0| > 1e-15 rules that out). Then the row's counts
 * follow from the sign of u[n, i] and the signs of x[n, :] (counted once
 * per sample) without forming the products. */
#define FACTOR_HIST(T)                                                         \
  static void factor_hist_##T(                                                 \
      const cpk__sample_grads *sg, const T *u, const T *x, const T *theta,     \
      int64_t out, int64_t in, int64_t lo, int64_t hi, uint32_t *lanes) {      \
    const int shortcut = sg->hist1d && !sg->hist2d;                            \
    const int mid = CPK__HIST1D_BINS / 2;                                      \
    double v[TILE], y[TILE], xmax = 0.0, xmin = 0.0;                           \
    int64_t pos = 0, neg = 0, sample = -1;                                     \
    for (int64_t r = lo; r < hi; r++) {                                        \
      const int64_t n = r / out, i = r % out;                                  \
      const T a = u[r];                                                        \
      const T *xr = x + n * in, *tr = theta + i * in;                          \
      if (shortcut && n != sample) { /* |x[n, :]|'s range, its signs */        \
        sample = n;                                                            \
        xmax = 0.0;                                                            \
        xmin = INFINITY;                                                       \
        pos = neg = 0;                                                         \
        for (int64_t j = 0; j < in; j++) {                                     \
          const double e = (double)xr[j], m = e < 0 ? -e : e;                  \
          xmax = m > xmax ? m : xmax;                                          \
          xmin = m > 0 && m < xmin ? m : xmin;                                 \
          pos += e > 0;                                                        \
          neg += e < 0;                                                        \
        }                                                                      \
      }                                                                        \
      const double s = (double)sg->batch * (a < 0 ? -(double)a : (double)a);   \
      if (shortcut && s * xmax < 0.039 && (s == 0 || s * xmin > 1e-15)) {      \
        /* negative: x > 0 when u < 0, x < 0 when u > 0 */                     \
        const int64_t below = a > 0 ? neg : (a < 0 ? pos : 0);                 \
        lanes[mid - 1] += (uint32_t)below;                                     \
        lanes[mid] += (uint32_t)(in - below);                                  \
        continue;                                                              \
      }                                                                        \
      for (int64_t j0 = 0; j0 < in; j0 += TILE) {                              \
        const int64_t m = in - j0 < TILE ? in - j0 : TILE;                     \
        _Pragma("omp simd") for (int64_t j = 0; j < m; j++) {                  \
          const T prod = a * xr[j0 + j];                                       \
          v[j] = (double)sg->batch * (double)prod;                             \
          y[j] = (double)tr[j0 + j];                                           \
        }                                                                      \
        count_tile(sg, v, y, m, lanes);                                        \
      }                                                                        \
    }                                                                          \
  }
FACTOR_HIST(float)
FACTOR_HIST(double)

/* dots[n] += g_n . D = sum_i u[n, i] (X D^T)[n, i] for a Linear weight's
 * direction D [OUT, IN]. */
static int factor_project(cpk__sample_grads *sg, const cpk_tensor *u,
                          const cpk_tensor *x, const double *d) {
  const int64_t n = x->shape[0], in = x->shape[1], out = u->shape[1];
  double *xd = cpk__malloc((size_t)(n * in) * sizeof *xd);
  double *y = cpk__malloc((size_t)(n * out) * sizeof *y);
  if (xd == NULL || y == NULL) {
    cpk__free(xd);
    cpk__free(y);
    return CPK_ENOMEM;
  }
  cpk__train_to_double(x, xd);
  cpk__gemm(sg->ctx, CPK_F64, 0, 1, n, out, in, 1.0, xd, in, d, in, 0.0, y,
            out);
  for (int64_t s = 0; s < n; s++) {
    double sum = 0.0;
    for (int64_t i = 0; i < out; i++)
      sum += cpk_tensor_get(u, s * out + i) * y[s * out + i];
    sg->dots[sg->ctx->shard_first + s] += sum; /* index in the whole batch */
  }
  cpk__free(xd);
  cpk__free(y);
  return CPK_OK;
}

int cpk__sample_grads_visit_factors(void *ud, const char *param,
                                    const cpk_tensor *u, const cpk_tensor *x) {
  cpk__sample_grads *sg = ud;
  const cpk_tensor *theta;
  int i;
  int rc = find_param(sg, param, u->dtype, &i, &theta);
  if (rc != CPK_OK)
    return rc;
  const int64_t rows = u->shape[0] * u->shape[1];
  const int64_t out = u->shape[1], in = x->shape[1];
  if (sg->dir != NULL && sg->dir[i] != NULL &&
      (rc = factor_project(sg, u, x, sg->dir[i])) != CPK_OK)
    return rc;
  if (!sg->hist1d && !sg->hist2d)
    return CPK_OK;
  scratch s;
  if ((rc = scratch_new(&s)) != CPK_OK)
    return rc;
#pragma omp parallel num_threads(s.threads)
  {
    int64_t lo, hi;
    const int j = omp_get_thread_num();
    share(rows, j, omp_get_num_threads(), &lo, &hi);
    uint32_t *lanes = s.lanes + (size_t)j * LANES * HIST_SLOTS;
    if (u->dtype == CPK_F32)
      factor_hist_float(sg, u->data, x->data, theta->data, out, in, lo, hi,
                        lanes);
    else
      factor_hist_double(sg, u->data, x->data, theta->data, out, in, lo, hi,
                         lanes);
  }
  scratch_sum(&s, sg);
  return CPK_OK;
}
