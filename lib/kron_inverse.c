/*
 * kron_inverse.c: damped inverses of Kronecker-factored curvature (KFAC,
 * KFLR, KFRA) applied to gradients, for the optimizers.
 *
 * A Linear weight G [m, n] has factors A [m, m] (output) and B [n, n]
 * (input); the curvature block is A (x) B on the row-major vec(G), that is
 * (A (x) B) vec(G) = vec(A G B).
 *
 * CPK_KRON_DAMP_EXACT: A = U diag(a) U^T, B = V diag(b) V^T (dsyevd), so
 *   A (x) B + d I = (U (x) V) (diag(a) (x) diag(b) + d I) (U (x) V)^T and
 *   (A (x) B + d I)^-1 vec(G) = vec(U [(U^T G V) ./ (a_i b_j + d)] V^T).
 * CPK_KRON_DAMP_FACTORED: with s = sqrt(d), the inverse of
 *   (A + s I) (x) (B + s I), i.e. (A + s I)^-1 G (B + s I)^-1, by Cholesky
 *   (dpotrf) and triangular solves (dpotrs for B, dtrsm for A).
 * A bias g [m] has A alone: (A + d I)^-1 g in both modes.
 *
 * Layout: U^T is stored row major as `ut` (row i = eigenvector i), which is
 * what dsyevd returns column major. A row-major G [m, n] read column major
 * is G^T [n, m]: B's solve works on it in place (left side), A's through
 * dtrsm from the right.
 */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "spectral.h"

#define WHO "kron inverse"

struct cpk_kron_inverse {
  cpk_kron_damping mode;
  int64_t m, n; /* n = 0 for a bias */
  double damping;
  double *ut, *a;  /* exact: eigenvectors (rows) and eigenvalues of A */
  double *vt, *b;  /* exact: the same for B */
  double *la, *lb; /* factored: Cholesky factors (column major, lower) */
};

void cpk_kron_inverse_free(cpk_kron_inverse *inv) {
  if (inv == NULL)
    return;
  cpk__free(inv->ut);
  cpk__free(inv->a);
  cpk__free(inv->vt);
  cpk__free(inv->b);
  cpk__free(inv->la);
  cpk__free(inv->lb);
  cpk__free(inv);
}

/* dst := (x + x^T) / 2 for x [d, d], after checking x is finite. */
static int sym_copy(const char *name, int64_t d, const double *x, double *dst) {
  for (int64_t i = 0; i < d; i++)
    for (int64_t j = 0; j < d; j++) {
      double v = x[i * d + j];
      if (!isfinite(v))
        return cpk__fail(CPK_ENONFINITE,
                         WHO ": %s (%lld x %lld) has a "
                             "non-finite value at (%lld, %lld): %g",
                         name, (long long)d, (long long)d, (long long)i,
                         (long long)j, v);
      dst[i * d + j] = 0.5 * (v + x[j * d + i]);
    }
  return CPK_OK;
}

/* Cholesky factor (lower, column major, in place) of mat + shift I. */
static int chol_shifted(const char *name, const char *shift_name, int64_t d,
                        double *mat, double shift) {
  for (int64_t i = 0; i < d; i++)
    mat[i * d + i] += shift;
  lapack_int info = LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, 'L', (lapack_int)d,
                                        mat, (lapack_int)d);
  if (info != 0) {
    char what[200];
    snprintf(what, sizeof what,
             "%s + %s I is not positive definite (its "
             "leading minor of order %%d is not); increase the damping",
             name, shift_name);
    return cpk__lapack_fail(WHO, "dpotrf", (int)info, what);
  }
  return CPK_OK;
}

static double *alloc_sq(int64_t d) {
  return cpk__malloc((size_t)(d * d) * sizeof(double));
}

int cpk_kron_inverse_new(cpk_kron_inverse **out, cpk_kron_damping mode,
                         int64_t m, const double *a, int64_t n, const double *b,
                         double damping) {
  if (out == NULL)
    return cpk__fail(CPK_EINVAL, WHO ": no output pointer");
  *out = NULL;
  if (mode != CPK_KRON_DAMP_EXACT && mode != CPK_KRON_DAMP_FACTORED)
    return cpk__fail(CPK_EINVAL, WHO ": unknown damping mode %d", (int)mode);
  const int bias = b == NULL;
  if (a == NULL || m < 1 || (!bias && n < 1))
    return cpk__fail(CPK_EINVAL,
                     WHO
                     ": expected a factor A [m, m] with m >= 1 "
                     "(and B [n, n] with n >= 1 for a weight); found m = %lld, "
                     "n = %lld%s",
                     (long long)m, (long long)n, a == NULL ? ", A = NULL" : "");
  if (!isfinite(damping) || damping < 0)
    return cpk__fail(CPK_EINVAL,
                     WHO ": damping must be finite and >= 0, "
                         "found %g",
                     damping);
  if (m > 46340 || (!bias && n > 46340))
    return cpk__fail(CPK_EOVERFLOW, WHO ": factor of size %lld is too large",
                     (long long)(m > n ? m : n));
  cpk_kron_inverse *inv = cpk__calloc(sizeof *inv);
  if (inv == NULL)
    return cpk__fail_prefix(CPK_ENOMEM, WHO);
  inv->mode = mode;
  inv->m = m;
  inv->n = bias ? 0 : n;
  inv->damping = damping;
  const char *an = bias ? "bias factor A" : "output factor A";
  const char *bn = "input factor B";
  int rc = CPK_OK;
  double *ma = alloc_sq(m), *mb = bias ? NULL : alloc_sq(n);
  if (ma == NULL || (!bias && mb == NULL)) {
    rc = cpk__fail_prefix(CPK_ENOMEM, WHO);
    goto fail;
  }
  CPK__TRY(rc, sym_copy(an, m, a, ma), fail);
  if (!bias)
    CPK__TRY(rc, sym_copy(bn, n, b, mb), fail);

  if (mode == CPK_KRON_DAMP_EXACT) {
    inv->a = cpk__malloc((size_t)m * sizeof(double));
    if (!bias)
      inv->b = cpk__malloc((size_t)n * sizeof(double));
    if (inv->a == NULL || (!bias && inv->b == NULL)) {
      rc = cpk__fail_prefix(CPK_ENOMEM, WHO);
      goto fail;
    }
    CPK__TRY(rc, cpk__sym_eig(m, ma, inv->a, WHO, an), fail);
    inv->ut = ma;
    ma = NULL;
    if (bias) {
      double lo = inv->a[0] + damping;
      if (!(lo > 0))
        CPK__TRY(rc,
                 cpk__fail(CPK_ERANGE,
                           WHO ": %s + damping I is not "
                               "positive definite (smallest eigenvalue %g); "
                               "increase the damping",
                           an, lo),
                 fail);
    } else {
      CPK__TRY(rc, cpk__sym_eig(n, mb, inv->b, WHO, bn), fail);
      inv->vt = mb;
      mb = NULL;
      /* smallest a_i b_j: among the products of the extreme eigenvalues */
      double a0 = inv->a[0], a1 = inv->a[m - 1], b0 = inv->b[0],
             b1 = inv->b[n - 1];
      double lo = fmin(fmin(a0 * b0, a0 * b1), fmin(a1 * b0, a1 * b1));
      if (!(lo + damping > 0))
        CPK__TRY(rc,
                 cpk__fail(CPK_ERANGE,
                           WHO ": A (x) B + damping I is not "
                               "positive definite (smallest eigenvalue %g, "
                               "A in [%g, %g], B in [%g, %g]); increase the "
                               "damping",
                           lo + damping, a0, a1, b0, b1),
                 fail);
    }
  } else {
    double s = bias ? damping : sqrt(damping);
    CPK__TRY(rc, chol_shifted(an, bias ? "damping" : "sqrt(damping)", m, ma, s),
             fail);
    inv->la = ma;
    ma = NULL;
    if (!bias) {
      CPK__TRY(rc, chol_shifted(bn, "sqrt(damping)", n, mb, s), fail);
      inv->lb = mb;
      mb = NULL;
    }
  }
  *out = inv;
  return CPK_OK;
fail:
  cpk__free(mb);
  cpk__free(ma);
  cpk_kron_inverse_free(inv);
  return rc;
}

int cpk_kron_inverse_apply(const cpk_kron_inverse *inv, const double *g,
                           double *out) {
  if (inv == NULL || g == NULL || out == NULL)
    return cpk__fail(CPK_EINVAL, WHO ": apply needs the inverse, a gradient "
                                     "and an output buffer");
  const int64_t m = inv->m, n = inv->n;
  const int bias = n == 0;
  const int64_t cols = bias ? 1 : n;
  for (int64_t i = 0; i < m * cols; i++)
    if (!isfinite(g[i]))
      return cpk__fail(CPK_ENONFINITE,
                       WHO ": the gradient has a non-finite "
                           "value at (%lld, %lld): %g",
                       (long long)(i / cols), (long long)(i % cols), g[i]);
  if (inv->mode == CPK_KRON_DAMP_EXACT) {
    double *t1 = cpk__malloc((size_t)(m * cols) * sizeof(double));
    double *t2 = cpk__malloc((size_t)(m * cols) * sizeof(double));
    int rc = CPK_OK;
    if (t1 == NULL || t2 == NULL) {
      rc = cpk__fail_prefix(CPK_ENOMEM, WHO ": apply");
      goto free_exact;
    }
    const double d = inv->damping;
    if (bias) {
      /* out = U ((U^T g) ./ (a + d)) */
      cblas_dgemv(CblasRowMajor, CblasNoTrans, (blasint)m, (blasint)m, 1.0,
                  inv->ut, (blasint)m, g, 1, 0.0, t1, 1);
      for (int64_t i = 0; i < m; i++)
        t1[i] /= inv->a[i] + d;
      cblas_dgemv(CblasRowMajor, CblasTrans, (blasint)m, (blasint)m, 1.0,
                  inv->ut, (blasint)m, t1, 1, 0.0, out, 1);
    } else {
      /* t1 = U^T G; t2 = t1 V; t2 ./= (a_i b_j + d); t1 = U t2; out = t1 V^T */
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)m,
                  (blasint)n, (blasint)m, 1.0, inv->ut, (blasint)m, g,
                  (blasint)n, 0.0, t1, (blasint)n);
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)m,
                  (blasint)n, (blasint)n, 1.0, t1, (blasint)n, inv->vt,
                  (blasint)n, 0.0, t2, (blasint)n);
      for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++)
          t2[i * n + j] /= inv->a[i] * inv->b[j] + d;
      cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)m,
                  (blasint)n, (blasint)m, 1.0, inv->ut, (blasint)m, t2,
                  (blasint)n, 0.0, t1, (blasint)n);
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)m,
                  (blasint)n, (blasint)n, 1.0, t1, (blasint)n, inv->vt,
                  (blasint)n, 0.0, out, (blasint)n);
    }
  free_exact:
    cpk__free(t2);
    cpk__free(t1);
    return rc;
  }
  /* Factored (or a bias by Cholesky). */
  if (out != g)
    memcpy(out, g, (size_t)(m * cols) * sizeof(double));
  lapack_int info;
  if (bias) {
    info = LAPACKE_dpotrs_work(LAPACK_COL_MAJOR, 'L', (lapack_int)m, 1, inv->la,
                               (lapack_int)m, out, (lapack_int)m);
    if (info != 0)
      return cpk__lapack_fail(WHO, "dpotrs", (int)info, "info %d");
    return CPK_OK;
  }
  /* Column major, out holds G^T [n, m]: out := (B + sI)^-1 G^T. */
  info =
      LAPACKE_dpotrs_work(LAPACK_COL_MAJOR, 'L', (lapack_int)n, (lapack_int)m,
                          inv->lb, (lapack_int)n, out, (lapack_int)n);
  if (info != 0)
    return cpk__lapack_fail(WHO, "dpotrs", (int)info, "info %d");
  /* out := out (L L^T)^-1 = out L^-T L^-1 with L L^T = A + sI. */
  cblas_dtrsm(CblasColMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit,
              (blasint)n, (blasint)m, 1.0, inv->la, (blasint)m, out,
              (blasint)n);
  cblas_dtrsm(CblasColMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit,
              (blasint)n, (blasint)m, 1.0, inv->la, (blasint)m, out,
              (blasint)n);
  return CPK_OK;
}

int cpk_kron_solve(cpk_kron_damping mode, int64_t m, const double *a, int64_t n,
                   const double *b, double damping, const double *g,
                   double *out) {
  cpk_kron_inverse *inv = NULL;
  int rc = cpk_kron_inverse_new(&inv, mode, m, a, n, b, damping);
  if (rc == CPK_OK)
    rc = cpk_kron_inverse_apply(inv, g, out);
  cpk_kron_inverse_free(inv);
  return rc;
}
