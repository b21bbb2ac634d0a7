/*
 * spectral.c: what the spectral tools share: operator checks and products,
 * LAPACK status translation, random probes, orthogonalisation, the
 * tridiagonal eigenproblem.
 */
#include <cblas.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "spectral.h"

int cpk__op_check(const cpk_operator *op, const char *who) {
  if (op == NULL || op->apply == NULL)
    return cpk__fail(CPK_EINVAL, "%s: no operator (NULL or without apply)",
                     who);
  if (op->dim < 1)
    return cpk__fail(CPK_EINVAL,
                     "%s: operator dimension must be >= 1, found "
                     "%lld",
                     who, (long long)op->dim);
  return CPK_OK;
}

static int known_status(int rc) {
  switch (rc) {
#define CPK__STATUS_CASE(name, code, msg) case CPK_##name:
    CPK_STATUS_MAP(CPK__STATUS_CASE)
#undef CPK__STATUS_CASE
    return 1;
  default:
    return 0;
  }
}

int cpk__op_apply(const cpk_operator *op, int64_t k, const double *in,
                  double *out, const char *who, const char *stage,
                  int64_t index, int64_t *matvecs) {
  cpk_clear_error();
  int rc = op->apply(op->ud, k, in, out);
  if (rc != CPK_OK) {
    if (!known_status(rc)) {
      int code = rc;
      rc = cpk__fail(CPK_EINVAL, "operator returned status %d", code);
    }
    return cpk__fail_prefix(rc, "%s: operator failed at %s %lld", who, stage,
                            (long long)index);
  }
  if (matvecs != NULL)
    *matvecs += k;
  int64_t p = op->dim;
  for (int64_t j = 0; j < k; j++)
    for (int64_t i = 0; i < p; i++)
      if (!isfinite(out[j * p + i]))
        return cpk__fail(CPK_ENONFINITE,
                         "%s: operator returned a non-finite value at %s %lld "
                         "(vector %lld, entry %lld: %g)",
                         who, stage, (long long)index, (long long)j,
                         (long long)i, out[j * p + i]);
  return CPK_OK;
}

int cpk__lapack_fail(const char *who, const char *routine, int info,
                     const char *positive) {
  if (info == LAPACK_WORK_MEMORY_ERROR || info == LAPACK_TRANSPOSE_MEMORY_ERROR)
    return cpk__fail(CPK_ENOMEM,
                     "%s: LAPACK %s could not allocate its "
                     "workspace",
                     who, routine);
  if (info < 0)
    return cpk__fail(CPK_EINVAL,
                     "%s: LAPACK %s rejected its argument %d "
                     "(a bug in curvpack)",
                     who, routine, -info);
  char what[256];
  snprintf(what, sizeof what, positive, info);
  return cpk__fail(CPK_ERANGE, "%s: LAPACK %s failed: %s", who, routine, what);
}

void cpk__rademacher(cpk__rng *r, int64_t n, double *x) {
  int64_t i = 0;
  while (i < n) {
    uint64_t bits = cpk__rng_next(r);
    for (int b = 0; b < 64 && i < n; b++, i++, bits >>= 1)
      x[i] = (bits & 1u) ? 1.0 : -1.0;
  }
}

void cpk__gaussian(cpk__rng *r, int64_t n, double *x) {
  for (int64_t i = 0; i < n; i++)
    x[i] = cpk__rng_normal(r);
}

double cpk__nrm2(int64_t n, const double *x) {
  return cblas_dnrm2((blasint)n, x, 1);
}

double cpk__dot(int64_t n, const double *x, const double *y) {
  return cblas_ddot((blasint)n, x, 1, y, 1);
}

void cpk__orth(int64_t nv, int64_t n, const double *v, double *w, double *h,
               double *scratch) {
  if (nv <= 0)
    return;
  if (h != NULL)
    memset(h, 0, (size_t)nv * sizeof *h);
  double before = cblas_dnrm2((blasint)n, w, 1);
  for (int pass = 0; pass < 2; pass++) {
    /* c := V w; w := w - V^T c */
    cblas_dgemv(CblasRowMajor, CblasNoTrans, (blasint)nv, (blasint)n, 1.0, v,
                (blasint)n, w, 1, 0.0, scratch, 1);
    cblas_dgemv(CblasRowMajor, CblasTrans, (blasint)nv, (blasint)n, -1.0, v,
                (blasint)n, scratch, 1, 1.0, w, 1);
    if (h != NULL)
      for (int64_t j = 0; j < nv; j++)
        h[j] += scratch[j];
    /* DGKS: a pass that kept more than 1/sqrt(2) of the norm left w
     * orthogonal to working precision; only cancellation needs another. */
    double after = cblas_dnrm2((blasint)n, w, 1);
    if (after > 0.70710678118654752 * before)
      break;
    before = after;
  }
}

int cpk__tridiag_eig(int64_t m, const double *alpha, const double *beta,
                     double *theta, double *z, double *work, const char *who) {
  double *e = work;         /* m (dstev overwrites the off-diagonal) */
  double *lwork = work + m; /* max(1, 2m - 2) */
  memcpy(theta, alpha, (size_t)m * sizeof *theta);
  if (m > 1)
    memcpy(e, beta, (size_t)(m - 1) * sizeof *e);
  lapack_int info = LAPACKE_dstev_work(LAPACK_COL_MAJOR, 'V', (lapack_int)m,
                                       theta, e, z, (lapack_int)m, lwork);
  if (info != 0)
    return cpk__lapack_fail(who, "dstev", (int)info,
                            "%d off-diagonal elements of the tridiagonal "
                            "matrix did not converge to zero");
  return CPK_OK;
}

int cpk__sym_eig(int64_t d, double *mat, double *w, const char *who,
                 const char *name) {
  double wq;
  lapack_int iwq, info;
  info = LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'L', (lapack_int)d, mat,
                             (lapack_int)d, w, &wq, -1, &iwq, -1);
  if (info != 0)
    return cpk__lapack_fail(who, "dsyevd (workspace query)", (int)info,
                            "info %d");
  size_t lwork = (size_t)fmax(wq, 1.0), liwork = (size_t)(iwq > 1 ? iwq : 1);
  double *work = cpk__malloc(lwork * sizeof(double));
  lapack_int *iwork = cpk__malloc(liwork * sizeof(lapack_int));
  int rc = CPK_OK;
  if (work == NULL || iwork == NULL) {
    rc =
        cpk__fail_prefix(CPK_ENOMEM, "%s: eigendecomposition of %s", who, name);
    goto free_all;
  }
  info = LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'L', (lapack_int)d, mat,
                             (lapack_int)d, w, work, (lapack_int)lwork, iwork,
                             (lapack_int)liwork);
  if (info != 0) {
    char what[200];
    snprintf(what, sizeof what,
             "the eigendecomposition of %s did not "
             "converge (info %%d)",
             name);
    rc = cpk__lapack_fail(who, "dsyevd", (int)info, what);
  }
free_all:
  cpk__free(iwork);
  cpk__free(work);
  return rc;
}

int cpk__tridiag_top(int64_t m, const double *alpha, const double *beta,
                     int64_t top, double *theta, double *z, double *theta_min,
                     double *work, lapack_int *iwork, const char *who) {
  double *d = work, *e = work + m, *w = work + 2 * m, *lw = work + 3 * m;
  lapack_int *isuppz = iwork, *liw = iwork + 2 * top;
  lapack_int found = 0, info;
  const double abstol = 2 * DBL_MIN; /* most accurate bisection */
  /* the smallest eigenvalue (values only) */
  memcpy(d, alpha, (size_t)m * sizeof *d);
  if (m > 1)
    memcpy(e, beta, (size_t)(m - 1) * sizeof *e);
  info = LAPACKE_dstevr_work(LAPACK_COL_MAJOR, 'N', 'I', (lapack_int)m, d, e,
                             0.0, 0.0, 1, 1, abstol, &found, w, z,
                             (lapack_int)m, isuppz, lw, (lapack_int)(20 * m),
                             liw, (lapack_int)(10 * m));
  if (info != 0)
    return cpk__lapack_fail(who, "dstevr", (int)info,
                            "internal error %d in the tridiagonal "
                            "eigensolver");
  *theta_min = w[0];
  /* the top `top` pairs, ascending */
  memcpy(d, alpha, (size_t)m * sizeof *d);
  if (m > 1)
    memcpy(e, beta, (size_t)(m - 1) * sizeof *e);
  info =
      LAPACKE_dstevr_work(LAPACK_COL_MAJOR, 'V', 'I', (lapack_int)m, d, e, 0.0,
                          0.0, (lapack_int)(m - top + 1), (lapack_int)m, abstol,
                          &found, theta, z, (lapack_int)m, isuppz, lw,
                          (lapack_int)(20 * m), liw, (lapack_int)(10 * m));
  if (info != 0)
    return cpk__lapack_fail(who, "dstevr", (int)info,
                            "internal error %d in the tridiagonal "
                            "eigensolver");
  if (found != (lapack_int)top)
    return cpk__fail(CPK_ERANGE,
                     "%s: LAPACK dstevr found %d of the %lld top "
                     "eigenvalues of the tridiagonal matrix",
                     who, (int)found, (long long)top);
  return CPK_OK;
}
