/*
 * trace.c: stochastic trace estimates of a symmetric operator.
 *
 * Hutchinson: for Rademacher z (entries +-1, E[z z^T] = I),
 * E[z^T A z] = trace(A); the estimate is the mean over S probes and its
 * standard error the sample standard deviation over sqrt(S). Probes go
 * through the operator in blocks.
 *
 * Hutch++ (Meyer, Musco, Musco, Woodruff, "Hutch++: Optimal Stochastic
 * Trace Estimation", SOSA 2021, Algorithm 1) with M products in all:
 * s = M/3 sketch probes S [s, P], Q = orth(A S) (Householder QR), then
 *   trace(A) ~ trace(Q^T A Q) + (1/g) sum_i z_i^T (I-QQ^T) A (I-QQ^T) z_i
 * with g = M - 2s probes: the top of the spectrum is captured exactly by the
 * sketch and only the remainder is estimated.
 */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <string.h>

#include "spectral.h"

/* Welford's running mean and sum of squared deviations. */
typedef struct {
  int64_t count;
  double mean, m2;
} welford;

static void welford_add(welford *s, double x) {
  s->count++;
  double d = x - s->mean;
  s->mean += d / (double)s->count;
  s->m2 += d * (x - s->mean);
}

static double welford_stderr(const welford *s) {
  if (s->count < 2)
    return NAN;
  double var = s->m2 / (double)(s->count - 1);
  return sqrt(var / (double)s->count);
}

static int trace_args(const cpk_operator *op, const cpk_trace_options *opts,
                      double *trace, const char *who, int64_t *block) {
  int rc = cpk__op_check(op, who);
  if (rc != CPK_OK)
    return rc;
  if (trace == NULL)
    return cpk__fail(CPK_EINVAL, "%s: no output for the trace", who);
  *block = opts->block;
  if (*block < 0)
    return cpk__fail(CPK_EINVAL, "%s: block = %lld must be >= 0 (0: 16)", who,
                     (long long)*block);
  if (*block == 0)
    *block = 16;
  return CPK_OK;
}

/* Add z_i^T A z_i for `count` Rademacher probes (optionally projected by
 * (I - Q^T Q) for the rows of q [nq, P]) to the running statistics. z and
 * az hold block x P doubles, c block x nq. */
static int probe_blocks(const cpk_operator *op, int64_t count, int64_t block,
                        const double *q, int64_t nq, cpk__rng *rng, double *z,
                        double *az, double *c, welford *st, const char *who) {
  const int64_t n = op->dim;
  for (int64_t done = 0, bi = 1; done < count; done += block, bi++) {
    int64_t b = count - done < block ? count - done : block;
    for (int64_t j = 0; j < b; j++)
      cpk__rademacher(rng, n, z + j * n);
    if (nq > 0) {
      /* z := z - (z Q^T) Q */
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)b,
                  (blasint)nq, (blasint)n, 1.0, z, (blasint)n, q, (blasint)n,
                  0.0, c, (blasint)nq);
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)b,
                  (blasint)n, (blasint)nq, -1.0, c, (blasint)nq, q, (blasint)n,
                  1.0, z, (blasint)n);
    }
    int rc = cpk__op_apply(op, b, z, az, who, "probe block", bi, NULL);
    if (rc != CPK_OK)
      return rc;
    for (int64_t j = 0; j < b; j++)
      welford_add(st, cpk__dot(n, z + j * n, az + j * n));
  }
  return CPK_OK;
}

int cpk_trace_hutchinson(const cpk_operator *op, int64_t samples,
                         const cpk_trace_options *opts, double *trace,
                         double *std_error) {
  static const cpk_trace_options defaults;
  const char *who = "hutchinson";
  if (opts == NULL)
    opts = &defaults;
  int64_t block;
  int rc = trace_args(op, opts, trace, who, &block);
  if (rc != CPK_OK)
    return rc;
  if (samples < 1)
    return cpk__fail(CPK_EINVAL, "%s: samples = %lld must be >= 1", who,
                     (long long)samples);
  if (block > samples)
    block = samples;
  const int64_t n = op->dim;
  size_t bytes;
  rc = cpk__mul_size((size_t)block, (size_t)n * sizeof(double), &bytes,
                     "hutchinson probe block (block x dim)");
  if (rc != CPK_OK)
    return rc;
  double *z = cpk__malloc(bytes), *az = cpk__malloc(bytes);
  if (z == NULL || az == NULL) {
    rc = cpk__fail_prefix(CPK_ENOMEM, "%s", who);
    goto free_all;
  }
  cpk__rng rng;
  cpk__rng_seed(&rng, opts->seed);
  welford st = {0};
  rc = probe_blocks(op, samples, block, NULL, 0, &rng, z, az, NULL, &st, who);
  if (rc != CPK_OK)
    goto free_all;
  *trace = st.mean;
  if (std_error != NULL)
    *std_error = welford_stderr(&st);
free_all:
  cpk__free(az);
  cpk__free(z);
  return rc;
}

int cpk_trace_hutchpp(const cpk_operator *op, int64_t matvecs,
                      const cpk_trace_options *opts, double *trace,
                      double *std_error) {
  static const cpk_trace_options defaults;
  const char *who = "hutch++";
  if (opts == NULL)
    opts = &defaults;
  int64_t block;
  int rc = trace_args(op, opts, trace, who, &block);
  if (rc != CPK_OK)
    return rc;
  if (matvecs < 3)
    return cpk__fail(CPK_EINVAL,
                     "%s: matvecs = %lld must be >= 3 (a third "
                     "for the sketch, a third for A Q, the rest for probes)",
                     who, (long long)matvecs);
  const int64_t n = op->dim;
  int64_t s = matvecs / 3;
  if (s > n)
    s = n;
  int64_t g = matvecs - 2 * s;
  if (block > g)
    block = g;
  int64_t rows = s > block ? s : block;
  size_t bytes;
  rc = cpk__mul_size((size_t)rows, (size_t)n * sizeof(double), &bytes,
                     "hutch++ block (sketch x dim)");
  if (rc != CPK_OK)
    return rc;
  double *q = NULL, *aq = NULL, *z = NULL, *az = NULL, *c = NULL, *tau = NULL,
         *work = NULL;
  if ((q = cpk__malloc(bytes)) == NULL || (aq = cpk__malloc(bytes)) == NULL ||
      (z = cpk__malloc((size_t)block * (size_t)n * sizeof(double))) == NULL ||
      (az = cpk__malloc((size_t)block * (size_t)n * sizeof(double))) == NULL ||
      (c = cpk__malloc((size_t)(block * s) * sizeof(double))) == NULL ||
      (tau = cpk__malloc((size_t)s * sizeof(double))) == NULL) {
    rc = cpk__fail_prefix(CPK_ENOMEM, "%s", who);
    goto free_all;
  }
  cpk__rng rng;
  cpk__rng_seed(&rng, opts->seed);

  /* Sketch: aq := A S for s Rademacher rows S (one block product). */
  for (int64_t j = 0; j < s; j++)
    cpk__rademacher(&rng, n, q + j * n);
  rc = cpk__op_apply(op, s, q, aq, who, "sketch", 1, NULL);
  if (rc != CPK_OK)
    goto free_all;
  /* Q := orth(A S). The rows of aq [s, n] row major are the columns of an
   * n x s column-major matrix with leading dimension n: QR in place. */
  double wq;
  lapack_int info =
      LAPACKE_dgeqrf_work(LAPACK_COL_MAJOR, (lapack_int)n, (lapack_int)s, aq,
                          (lapack_int)n, tau, &wq, -1);
  double wo;
  if (info == 0)
    info = LAPACKE_dorgqr_work(LAPACK_COL_MAJOR, (lapack_int)n, (lapack_int)s,
                               (lapack_int)s, aq, (lapack_int)n, tau, &wo, -1);
  if (info != 0) {
    rc = cpk__lapack_fail(who, "dgeqrf/dorgqr (workspace query)", (int)info,
                          "info %d");
    goto free_all;
  }
  size_t lwork = (size_t)fmax(fmax(wq, wo), 1.0);
  if ((work = cpk__malloc(lwork * sizeof(double))) == NULL) {
    rc = cpk__fail_prefix(CPK_ENOMEM, "%s: QR workspace", who);
    goto free_all;
  }
  info = LAPACKE_dgeqrf_work(LAPACK_COL_MAJOR, (lapack_int)n, (lapack_int)s, aq,
                             (lapack_int)n, tau, work, (lapack_int)lwork);
  if (info != 0) {
    rc = cpk__lapack_fail(who, "dgeqrf", (int)info, "info %d");
    goto free_all;
  }
  info = LAPACKE_dorgqr_work(LAPACK_COL_MAJOR, (lapack_int)n, (lapack_int)s,
                             (lapack_int)s, aq, (lapack_int)n, tau, work,
                             (lapack_int)lwork);
  if (info != 0) {
    rc = cpk__lapack_fail(who, "dorgqr", (int)info, "info %d");
    goto free_all;
  }
  double *qm = aq; /* Q, rows orthonormal */
  /* trace(Q^T A Q) = sum_i q_i . (A q_i), with A Q as one block. */
  rc = cpk__op_apply(op, s, qm, q, who, "A Q", 1, NULL);
  if (rc != CPK_OK)
    goto free_all;
  double t1 = 0.0;
  for (int64_t j = 0; j < s; j++)
    t1 += cpk__dot(n, qm + j * n, q + j * n);

  welford st = {0};
  if (g > 0 && s < n) {
    rc = probe_blocks(op, g, block, qm, s, &rng, z, az, c, &st, who);
    if (rc != CPK_OK)
      goto free_all;
  }
  *trace = t1 + st.mean;
  if (std_error != NULL)
    *std_error = s < n ? welford_stderr(&st) : 0.0;

free_all:
  cpk__free(work);
  cpk__free(tau);
  cpk__free(c);
  cpk__free(az);
  cpk__free(z);
  cpk__free(aq);
  cpk__free(q);
  return rc;
}
