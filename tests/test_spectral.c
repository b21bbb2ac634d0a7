/*
 * test_spectral.c: the spectral tools on explicit symmetric matrices, against
 * LAPACK's dense eigensolver (dsyev) and closed forms:
 *  - Lanczos top-k eigenpairs (PSD, indefinite, clustered, repeated, full
 *    spectrum, multiples of the identity, zero) to 1e-9 relative, vectors
 *    up to sign (or by residual and subspace where eigenvalues repeat);
 *  - power iteration with deflation agrees;
 *  - Hutchinson: the standard error is honest (coverage over many seeds,
 *    against the exact variance 2 sum_{i != j} A_ij^2), the error shrinks as
 *    1/sqrt(S), blocks do not change the result; Hutch++ beats it on a
 *    low-rank-plus-noise matrix and is exact for low rank;
 *  - SLQ: nodes are eigenvalues, weights sum to 1 with mean 1/P, the
 *    density integrates to 1 with its mass at the eigenvalues, and PyHessian's
 *    density formula (numbers from tests/fixtures/spectral/density_ref.py);
 *  - Kronecker-factored inverses against (A (x) B + damping I) and the dense
 *    factored formula;
 *  - errors: failing operators, non-finite values, bad sizes; no leaks.
 */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* ------------------------------------------------------------ test helpers */

/* The test's own generator (splitmix64), independent of the library's. */
typedef struct {
  uint64_t s;
} trng;

static uint64_t trng_next(trng *r) {
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
static double trng_unif(trng *r) {
  return (double)(trng_next(r) >> 11) * 0x1.0p-53;
}
static double trng_normal(trng *r) {
  double u1 = 1.0 - trng_unif(r), u2 = trng_unif(r);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static double *dalloc(int64_t n) {
  double *p = calloc((size_t)(n > 0 ? n : 1), sizeof(double));
  assert_non_null(p);
  return p;
}

/* A dense symmetric operator that counts its calls and can misbehave. */
typedef struct {
  int64_t n;
  double *a; /* n x n, row major, symmetric */
  int64_t calls, vectors, max_k;
  int64_t fail_at;      /* fail on this call (1-based); 0: never */
  int fail_status;      /* status returned then */
  int fail_message;     /* nonzero: record a message through cpk_last_error */
  int64_t nonfinite_at; /* write NaN/inf on this call */
} dense_op;

static int dense_apply(void *ud, int64_t k, const double *in, double *out) {
  dense_op *d = ud;
  d->calls++;
  d->vectors += k;
  if (k > d->max_k)
    d->max_k = k;
  if (d->fail_at > 0 && d->calls == d->fail_at)
    return d->fail_status;
  /* out [k, n] = in [k, n] A (A symmetric, so row j is A in_j) */
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)k,
              (blasint)d->n, (blasint)d->n, 1.0, in, (blasint)d->n, d->a,
              (blasint)d->n, 0.0, out, (blasint)d->n);
  if (d->nonfinite_at > 0 && d->calls == d->nonfinite_at)
    out[(k - 1) * d->n + d->n / 2] = NAN;
  return CPK_OK;
}

static cpk_operator op_of(dense_op *d) {
  cpk_operator op = {d->n, dense_apply, d};
  return op;
}

static void reset_counts(dense_op *d) { d->calls = d->vectors = d->max_k = 0; }

/* A random orthogonal matrix [n, n] (QR of a Gaussian matrix). */
static double *random_orthogonal(int64_t n, trng *r) {
  double *q = dalloc(n * n), *tau = dalloc(n);
  for (int64_t i = 0; i < n * n; i++)
    q[i] = trng_normal(r);
  assert_int_equal(LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, (lapack_int)n,
                                  (lapack_int)n, q, (lapack_int)n, tau),
                   0);
  assert_int_equal(LAPACKE_dorgqr(LAPACK_ROW_MAJOR, (lapack_int)n,
                                  (lapack_int)n, (lapack_int)n, q,
                                  (lapack_int)n, tau),
                   0);
  free(tau);
  return q;
}

/* A = Q diag(lambda) Q^T for a random orthogonal Q, symmetrised exactly. */
static double *with_spectrum(int64_t n, const double *lambda, trng *r) {
  double *q = random_orthogonal(n, r), *b = dalloc(n * n), *a = dalloc(n * n);
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < n; j++)
      b[i * n + j] = q[i * n + j] * lambda[j];
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)n,
              (blasint)n, 1.0, b, (blasint)n, q, (blasint)n, 0.0, a,
              (blasint)n);
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < i; j++)
      a[i * n + j] = a[j * n + i] = 0.5 * (a[i * n + j] + a[j * n + i]);
  free(q);
  free(b);
  return a;
}

/* Wishart X X^T / n (PSD) or Wigner (X + X^T) / sqrt(2n) (indefinite). */
static double *random_sym(int64_t n, int psd, trng *r) {
  double *x = dalloc(n * n), *a = dalloc(n * n);
  for (int64_t i = 0; i < n * n; i++)
    x[i] = trng_normal(r);
  if (psd) {
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)n,
                (blasint)n, 1.0 / (double)n, x, (blasint)n, x, (blasint)n, 0.0,
                a, (blasint)n);
  } else {
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j < n; j++)
        a[i * n + j] = (x[i * n + j] + x[j * n + i]) / sqrt(2.0 * (double)n);
  }
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < i; j++)
      a[i * n + j] = a[j * n + i];
  free(x);
  return a;
}

/* Reference: every eigenpair by dsyev, sorted descending; vecs row i =
 * eigenvector i. */
static void dense_eig(int64_t n, const double *a, double *vals, double *vecs) {
  double *c = dalloc(n * n), *w = dalloc(n);
  memcpy(c, a, (size_t)(n * n) * sizeof *a);
  assert_int_equal(LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'V', 'U', (lapack_int)n, c,
                                 (lapack_int)n, w),
                   0);
  for (int64_t i = 0; i < n; i++) {
    int64_t src = n - 1 - i;
    vals[i] = w[src];
    if (vecs != NULL)
      for (int64_t j = 0; j < n; j++)
        vecs[i * n + j] = c[j * n + src];
  }
  free(c);
  free(w);
}

static double max_abs(int64_t n, const double *x) {
  double m = 0;
  for (int64_t i = 0; i < n; i++)
    m = fmax(m, fabs(x[i]));
  return m;
}

static double dotn(int64_t n, const double *x, const double *y) {
  double s = 0;
  for (int64_t i = 0; i < n; i++)
    s += x[i] * y[i];
  return s;
}

/* ||A v - lambda v|| for each row of vecs [k, n]. */
static double worst_residual(int64_t n, const double *a, int64_t k,
                             const double *vals, const double *vecs) {
  double worst = 0;
  double *t = dalloc(n);
  for (int64_t i = 0; i < k; i++) {
    cblas_dgemv(CblasRowMajor, CblasNoTrans, (blasint)n, (blasint)n, 1.0, a,
                (blasint)n, vecs + i * n, 1, 0.0, t, 1);
    double s = 0;
    for (int64_t j = 0; j < n; j++) {
      double d = t[j] - vals[i] * vecs[i * n + j];
      s += d * d;
    }
    worst = fmax(worst, sqrt(s));
  }
  free(t);
  return worst;
}

/* Rows of vecs [k, n] orthonormal to tol. */
static void assert_orthonormal(int64_t n, int64_t k, const double *vecs,
                               double tol, const char *what) {
  for (int64_t i = 0; i < k; i++)
    for (int64_t j = 0; j <= i; j++) {
      double d = dotn(n, vecs + i * n, vecs + j * n) - (i == j ? 1.0 : 0.0);
      if (fabs(d) > tol) {
        print_error("%s: <v%lld, v%lld> off by %.3g\n", what, (long long)i,
                    (long long)j, d);
        fail();
      }
    }
}

/* Compare k computed pairs with the reference: eigenvalues to rtol * scale;
 * eigenvectors up to sign where the eigenvalue is separated from its
 * neighbours by more than gap_min * scale, otherwise by residual. */
static void check_pairs(int64_t n, const double *a, int64_t k,
                        const double *vals, const double *vecs, double rtol,
                        const char *what) {
  double *rv = dalloc(n), *rx = dalloc(n * n);
  dense_eig(n, a, rv, rx);
  double scale = fmax(fabs(rv[0]), fabs(rv[n - 1]));
  tu_assert_close_array(vals, rv, k, rtol * scale / max_abs(k, rv), 0.0, what);
  if (vecs != NULL) {
    assert_orthonormal(n, k, vecs, 1e-10, what);
    for (int64_t i = 0; i < k; i++) {
      double gap = INFINITY;
      if (i > 0)
        gap = fmin(gap, rv[i - 1] - rv[i]);
      if (i + 1 < n)
        gap = fmin(gap, rv[i] - rv[i + 1]);
      if (gap > 1e-3 * scale) {
        double c = fabs(dotn(n, vecs + i * n, rx + i * n));
        if (!(c >= 1 - 1e-9)) {
          print_error("%s: eigenvector %lld: |<v, u>| = %.17g\n", what,
                      (long long)i, c);
          fail();
        }
      }
    }
    double res = worst_residual(n, a, k, vals, vecs);
    if (!(res <= 1e-9 * scale)) {
      print_error("%s: residual %.3g (scale %.3g)\n", what, res, scale);
      fail();
    }
  }
  free(rv);
  free(rx);
}

/* ---------------------------------------------------------------- Lanczos */

static void run_lanczos_case(int64_t n, double *a, int64_t k, int64_t max_iter,
                             const char *what) {
  dense_op d = {.n = n, .a = a};
  cpk_operator op = op_of(&d);
  cpk_eigen_options o = {.tol = 1e-12, .seed = 3, .max_iter = max_iter};
  cpk_eigen_info info;
  double *vals = dalloc(k), *vecs = dalloc(k * n);
  size_t before = cpk_memory_in_use();
  tu_ok(cpk_eigen_lanczos(&op, k, &o, vals, vecs, &info));
  assert_int_equal(cpk_memory_in_use(), before);
  char label[160];
  snprintf(label, sizeof label, "%s (n = %lld, k = %lld)", what, (long long)n,
           (long long)k);
  if (!info.converged) {
    print_error("%s: not converged (residual %.3g after %lld steps)\n", label,
                info.max_rel_residual, (long long)info.iterations);
    fail();
  }
  assert_int_equal(info.matvecs, d.vectors);
  check_pairs(n, a, k, vals, vecs, 1e-9, label);
  free(vals);
  free(vecs);
}

static void test_lanczos_random(void **state) {
  (void)state;
  const int64_t dims[] = {5, 17, 64, 200};
  trng r = {11};
  for (int psd = 0; psd < 2; psd++)
    for (size_t t = 0; t < sizeof dims / sizeof *dims; t++) {
      int64_t n = dims[t];
      double *a = random_sym(n, psd, &r);
      const int64_t ks[] = {1, 4, n < 10 ? n : 10};
      /* the default basis (80 steps) is too short for residuals of 1e-12
       * at the crowded top of a 200 x 200 spectrum: allow all of it there
       * (test_lanczos_usage checks the defaults) */
      for (int ki = 0; ki < 3; ki++)
        run_lanczos_case(n, a, ks[ki], n > 80 ? n : 0,
                         psd ? "wishart" : "wigner");
      free(a);
    }
}

static void test_lanczos_clustered(void **state) {
  (void)state;
  trng r = {12};
  const int64_t n = 120;
  double *lam = dalloc(n);
  /* a cluster of four within 3e-7 at the top, then 9.5, then [-4, 4] */
  for (int i = 0; i < 4; i++)
    lam[i] = 10.0 - 1e-7 * i;
  lam[4] = 9.5;
  for (int64_t i = 5; i < n; i++)
    lam[i] = -4.0 + 8.0 * trng_unif(&r);
  double *a = with_spectrum(n, lam, &r);
  run_lanczos_case(n, a, 6, n, "clustered");
  free(a);
  /* a negative-dominated indefinite spectrum with a cluster inside */
  for (int64_t i = 0; i < n; i++)
    lam[i] = -20.0 + 22.0 * trng_unif(&r);
  lam[7] = 1.5;
  lam[8] = 1.5 + 1e-8;
  lam[9] = 1.5 - 1e-8;
  a = with_spectrum(n, lam, &r);
  run_lanczos_case(n, a, 8, n, "clustered indefinite");
  free(a);
  free(lam);
}

static void test_lanczos_repeated(void **state) {
  (void)state;
  trng r = {13};
  const int64_t n = 80;
  double *lam = dalloc(n);
  lam[0] = lam[1] = lam[2] = 7.0;
  lam[3] = lam[4] = 3.0;
  for (int64_t i = 5; i < n; i++)
    lam[i] = -2.0 + 4.0 * trng_unif(&r);
  double *a = with_spectrum(n, lam, &r);
  for (int64_t k = 1; k <= 6; k++) {
    dense_op d = {.n = n, .a = a};
    cpk_operator op = op_of(&d);
    cpk_eigen_options o = {.tol = 1e-12, .seed = 5};
    cpk_eigen_info info;
    double vals[6], *vecs = dalloc(k * n);
    tu_ok(cpk_eigen_lanczos(&op, k, &o, vals, vecs, &info));
    assert_true(info.converged);
    char label[64];
    snprintf(label, sizeof label, "repeated, k = %lld", (long long)k);
    check_pairs(n, a, k, vals, vecs, 1e-9, label);
    if (k >= 2)
      assert_true(info.runs >= 2); /* the restart check ran */
    free(vecs);
  }
  free(a);
  free(lam);
}

static void test_lanczos_degenerate(void **state) {
  (void)state;
  /* 2 I: every start vector is an eigenvector (breakdown at step 1) */
  const int64_t n = 30;
  double *a = dalloc(n * n);
  for (int64_t i = 0; i < n; i++)
    a[i * n + i] = 2.0;
  run_lanczos_case(n, a, 3, 0, "2 I");
  /* the zero operator */
  memset(a, 0, (size_t)(n * n) * sizeof *a);
  dense_op d = {.n = n, .a = a};
  cpk_operator op = op_of(&d);
  double vals[2], vecs[2 * 30];
  cpk_eigen_info info;
  tu_ok(cpk_eigen_lanczos(&op, 2, NULL, vals, vecs, &info));
  assert_true(vals[0] == 0.0 && vals[1] == 0.0);
  assert_true(info.converged);
  assert_orthonormal(n, 2, vecs, 1e-12, "zero operator");
  free(a);
  /* the whole spectrum, k = dim */
  trng r = {14};
  for (int64_t m = 1; m <= 12; m += 11) {
    double *b = random_sym(m, 0, &r);
    run_lanczos_case(m, b, m, 0, "full spectrum");
    free(b);
  }
  double *b = random_sym(5, 1, &r);
  run_lanczos_case(5, b, 5, 0, "full spectrum");
  free(b);
}

static void test_lanczos_usage(void **state) {
  (void)state;
  trng r = {15};
  const int64_t n = 50;
  double *a = random_sym(n, 1, &r);
  dense_op d = {.n = n, .a = a};
  cpk_operator op = op_of(&d);
  double v1[3], v2[3], v3[3], e1[3 * 50], e2[3 * 50];
  cpk_eigen_info info;
  /* defaults (NULL options), eigenvectors not wanted, no info */
  tu_ok(cpk_eigen_lanczos(&op, 3, NULL, v1, NULL, NULL));
  check_pairs(n, a, 3, v1, NULL, 1e-9, "defaults");
  /* defaults on 200 x 200: tol 1e-8 within 80 steps, eigenvalues to 1e-9 */
  {
    const int64_t nb = 200;
    double *ab = random_sym(nb, 1, &r), vb[10], *eb = dalloc(10 * nb);
    dense_op db = {.n = nb, .a = ab};
    cpk_operator opb = op_of(&db);
    tu_ok(cpk_eigen_lanczos(&opb, 10, NULL, vb, eb, &info));
    assert_true(info.converged);
    assert_true(info.max_rel_residual <= 1e-8);
    assert_true(info.iterations <= 2 * 80);
    double *rv = dalloc(nb);
    dense_eig(nb, ab, rv, NULL);
    tu_assert_close_array(vb, rv, 10, 1e-9, 0, "defaults, 200 x 200");
    free(rv);
    free(eb);
    free(ab);
  }
  /* one vector per product, then one block of k for the residual check */
  reset_counts(&d);
  cpk_eigen_options o = {.seed = 9, .no_restart_check = 1};
  tu_ok(cpk_eigen_lanczos(&op, 3, &o, v2, e1, &info));
  assert_int_equal(d.max_k, 3);
  assert_int_equal(info.runs, 1);
  assert_int_equal(d.calls, info.iterations + 1);
  assert_int_equal(info.matvecs, info.iterations + 3);
  /* the same seed gives the same result, bit for bit */
  tu_ok(cpk_eigen_lanczos(&op, 3, &o, v3, e2, NULL));
  assert_memory_equal(v2, v3, sizeof v2);
  assert_memory_equal(e1, e2, sizeof e1);
  /* max_iter limits the steps; too few leaves converged = 0, not an error */
  cpk_eigen_options few = {.max_iter = 3, .tol = 1e-14, .no_restart_check = 1};
  tu_ok(cpk_eigen_lanczos(&op, 3, &few, v3, NULL, &info));
  assert_int_equal(info.iterations, 3);
  assert_false(info.converged);
  assert_true(info.max_rel_residual > 1e-14);
  free(a);
}

/* A Hessian-like spectrum: a few outliers over a dense bulk. The restart
 * check cannot converge the bulk edge; it must end once its top Ritz value
 * stays clearly below the k-th eigenvalue, not run to max_iter. */
static void test_lanczos_outliers_bulk(void **state) {
  (void)state;
  trng r = {16};
  const int64_t n = 400;
  double *lam = dalloc(n);
  const double top[5] = {50, 40, 30, 20, 10};
  for (int64_t i = 0; i < n; i++)
    lam[i] = i < 5 ? top[i] : -1.0 + 3.0 * trng_unif(&r);
  double *a = with_spectrum(n, lam, &r);
  dense_op d = {.n = n, .a = a};
  cpk_operator op = op_of(&d);
  double vals[5], *vecs = dalloc(5 * n);
  cpk_eigen_info info, plain;
  cpk_eigen_options o = {.seed = 1, .tol = 1e-12};
  tu_ok(cpk_eigen_lanczos(&op, 5, &o, vals, vecs, &info));
  o.no_restart_check = 1;
  tu_ok(cpk_eigen_lanczos(&op, 5, &o, vals, vecs, &plain));
  print_message("outliers over a bulk: %lld products with the check, %lld "
                "without\n",
                (long long)info.matvecs, (long long)plain.matvecs);
  assert_true(info.converged && plain.converged);
  assert_int_equal(info.runs, 2);
  assert_true(info.iterations <= 2 * plain.iterations);
  tu_assert_close_array(vals, top, 5, 1e-12, 0, "outliers");
  check_pairs(n, a, 5, vals, vecs, 1e-9, "outliers over a bulk");
  free(vecs);
  free(a);
  free(lam);
}

/* ------------------------------------------------------- power iteration */

static void test_power_agrees(void **state) {
  (void)state;
  trng r = {21};
  const int64_t n = 50;
  double lam[50];
  lam[0] = 10;
  lam[1] = 8;
  lam[2] = 6;
  lam[3] = 4;
  for (int i = 4; i < n; i++)
    lam[i] = 2.0 * trng_unif(&r);
  double *a = with_spectrum(n, lam, &r);
  dense_op d = {.n = n, .a = a};
  cpk_operator op = op_of(&d);
  cpk_eigen_options o = {.tol = 1e-12, .max_iter = 5000, .seed = 4};
  cpk_eigen_info info;
  double pv[3], pe[3 * 50], lv[3], le[3 * 50];
  tu_ok(cpk_eigen_power(&op, 3, &o, pv, pe, &info));
  assert_true(info.converged);
  check_pairs(n, a, 3, pv, pe, 1e-9, "power, PSD");
  tu_ok(cpk_eigen_lanczos(&op, 3, &o, lv, le, NULL));
  tu_assert_close_array(pv, lv, 3, 1e-10, 0, "power against Lanczos");
  for (int i = 0; i < 3; i++)
    assert_true(fabs(fabs(dotn(n, pe + i * n, le + i * n)) - 1) < 1e-9);
  free(a);

  /* indefinite: without a shift it finds the largest magnitude first */
  lam[0] = 5;
  lam[1] = 4;
  lam[2] = -9;
  for (int i = 3; i < n; i++)
    lam[i] = -3.0 + 6.0 * trng_unif(&r);
  a = with_spectrum(n, lam, &r);
  d.a = a;
  tu_ok(cpk_eigen_power(&op, 2, &o, pv, pe, &info));
  assert_true(info.converged);
  assert_true(fabs(pv[0] + 9) < 1e-9 && fabs(pv[1] - 5) < 1e-9);
  assert_true(worst_residual(n, a, 2, pv, pe) < 1e-9);
  /* with shift -12 (A + 12 I) it finds the largest algebraic, as Lanczos */
  o.shift = -12;
  tu_ok(cpk_eigen_power(&op, 2, &o, pv, pe, &info));
  assert_true(info.converged);
  tu_ok(cpk_eigen_lanczos(&op, 2, &o, lv, le, NULL));
  tu_assert_close_array(pv, lv, 2, 1e-9, 0, "shifted power against Lanczos");
  check_pairs(n, a, 2, pv, pe, 1e-9, "shifted power");
  free(a);
}

/* ------------------------------------------------------------------ trace */

static double trace_of(int64_t n, const double *a) {
  double t = 0;
  for (int64_t i = 0; i < n; i++)
    t += a[i * n + i];
  return t;
}

static void test_hutchinson_stderr_honest(void **state) {
  (void)state;
  trng r = {31};
  const int64_t n = 40, S = 32, seeds = 500;
  double *a = random_sym(n, 0, &r);
  for (int64_t i = 0; i < n; i++)
    a[i * n + i] += 1.0;
  double tr = trace_of(n, a);
  /* Var(z^T A z) = 2 sum_{i != j} A_ij^2 for Rademacher z */
  double var = 0;
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < n; j++)
      if (i != j)
        var += 2 * a[i * n + j] * a[i * n + j];
  dense_op d = {.n = n, .a = a};
  cpk_operator op = op_of(&d);
  int64_t inside = 0;
  double mean_se2 = 0, mean_err2 = 0;
  for (int64_t s = 0; s < seeds; s++) {
    cpk_trace_options o = {.seed = (uint64_t)s};
    double t, se;
    tu_ok(cpk_trace_hutchinson(&op, S, &o, &t, &se));
    inside += fabs(t - tr) <= 3 * se;
    mean_se2 += se * se / seeds;
    mean_err2 += (t - tr) * (t - tr) / seeds;
  }
  double cover = (double)inside / seeds;
  print_message("hutchinson: coverage of 3 stderr %.3f, stderr^2 %.4g, "
                "error^2 %.4g, exact variance / S %.4g\n",
                cover, mean_se2, mean_err2, var / S);
  assert_true(cover > 0.95);
  assert_true(fabs(mean_se2 / (var / S) - 1) < 0.1);
  assert_true(fabs(mean_err2 / (var / S) - 1) < 0.2);
  free(a);
}

static void test_hutchinson_rate(void **state) {
  (void)state;
  trng r = {32};
  const int64_t n = 40, seeds = 300;
  double *a = random_sym(n, 1, &r);
  double tr = trace_of(n, a);
  dense_op d = {.n = n, .a = a};
  cpk_operator op = op_of(&d);
  const int64_t S[3] = {16, 64, 256};
  double rms[3], se[3];
  for (int i = 0; i < 3; i++) {
    double e2 = 0, s2 = 0;
    for (int64_t s = 0; s < seeds; s++) {
      cpk_trace_options o = {.seed = 1000 + (uint64_t)s};
      double t, e;
      tu_ok(cpk_trace_hutchinson(&op, S[i], &o, &t, &e));
      e2 += (t - tr) * (t - tr);
      s2 += e * e;
    }
    rms[i] = sqrt(e2 / seeds);
    se[i] = sqrt(s2 / seeds);
  }
  print_message("hutchinson rms error %.4g %.4g %.4g (stderr %.4g %.4g %.4g) "
                "for S = 16, 64, 256\n",
                rms[0], rms[1], rms[2], se[0], se[1], se[2]);
  /* quadrupling S halves the error */
  assert_true(fabs(rms[0] / rms[1] - 2) < 0.35);
  assert_true(fabs(rms[1] / rms[2] - 2) < 0.35);
  assert_true(fabs(se[0] / se[1] - 2) < 0.2);
  assert_true(fabs(se[1] / se[2] - 2) < 0.2);
  free(a);
}

static void test_hutchinson_blocks(void **state) {
  (void)state;
  trng r = {33};
  const int64_t n = 30, S = 50;
  double *a = random_sym(n, 0, &r);
  dense_op d = {.n = n, .a = a};
  cpk_operator op = op_of(&d);
  const int64_t blocks[] = {0, 1, 7, 16, 64};
  double t0 = 0, s0 = 0;
  for (size_t i = 0; i < sizeof blocks / sizeof *blocks; i++) {
    cpk_trace_options o = {.seed = 77, .block = blocks[i]};
    double t, se;
    reset_counts(&d);
    tu_ok(cpk_trace_hutchinson(&op, S, &o, &t, &se));
    int64_t b = blocks[i] == 0 ? 16 : (blocks[i] > S ? S : blocks[i]);
    assert_int_equal(d.calls, (S + b - 1) / b);
    assert_int_equal(d.max_k, b);
    assert_int_equal(d.vectors, S);
    if (i == 0) {
      t0 = t;
      s0 = se;
    } else {
      assert_true(fabs(t - t0) <= 1e-12 * fabs(t0));
      assert_true(fabs(se - s0) <= 1e-10 * s0);
    }
  }
  /* one probe: an estimate, no standard error */
  double t, se;
  tu_ok(cpk_trace_hutchinson(&op, 1, NULL, &t, &se));
  assert_true(isnan(se));
  tu_ok(cpk_trace_hutchinson(&op, 5, NULL, &t, NULL));
  free(a);
}

/* low rank (10 eigenvalues 100..10) plus small PSD noise */
static double *low_rank_plus_noise(int64_t n, int64_t rank, double noise,
                                   trng *r) {
  double *lam = dalloc(n);
  for (int64_t i = 0; i < n; i++)
    lam[i] = i < rank ? 100.0 - 90.0 * (double)i / (double)(rank - 1)
                      : noise * trng_unif(r);
  double *a = with_spectrum(n, lam, r);
  free(lam);
  return a;
}

static void test_hutchpp(void **state) {
  (void)state;
  trng r = {34};
  const int64_t n = 200, M = 60, seeds = 40;
  double *a = low_rank_plus_noise(n, 10, 0.5, &r);
  double tr = trace_of(n, a);
  dense_op d = {.n = n, .a = a};
  cpk_operator op = op_of(&d);
  double e_h = 0, e_pp = 0;
  for (int64_t s = 0; s < seeds; s++) {
    cpk_trace_options o = {.seed = 500 + (uint64_t)s};
    double t, se;
    reset_counts(&d);
    tu_ok(cpk_trace_hutchinson(&op, M, &o, &t, &se));
    assert_int_equal(d.vectors, M);
    e_h += (t - tr) * (t - tr);
    reset_counts(&d);
    tu_ok(cpk_trace_hutchpp(&op, M, &o, &t, &se));
    assert_int_equal(d.vectors, M);
    assert_int_equal(d.max_k, M / 3); /* the sketch is one block */
    e_pp += (t - tr) * (t - tr);
  }
  print_message("low rank + noise, %lld products: rms error hutchinson %.4g, "
                "hutch++ %.4g (trace %.4g)\n",
                (long long)M, sqrt(e_h / seeds), sqrt(e_pp / seeds), tr);
  assert_true(e_pp < 0.01 * e_h);
  free(a);

  /* rank 4 <= sketch size 5: exact */
  double lam[50] = {9, -3, 2, 0.5};
  a = with_spectrum(50, lam, &r);
  d.n = 50;
  d.a = a;
  op = op_of(&d);
  double t, se;
  tu_ok(cpk_trace_hutchpp(&op, 15, NULL, &t, &se));
  assert_true(fabs(t - 8.5) < 1e-10);
  assert_true(se < 1e-10);
  /* a sketch as large as the space: exact as well */
  tu_ok(cpk_trace_hutchpp(&op, 200, NULL, &t, &se));
  assert_true(fabs(t - 8.5) < 1e-10);
  assert_true(se == 0.0);
  free(a);
}

/* -------------------------------------------------------------- density */

static void test_slq_density(void **state) {
  (void)state;
  trng r = {41};
  const int64_t n = 20;
  double lam[20];
  for (int i = 0; i < n; i++)
    lam[i] = -3.0 + 8.0 * i / (n - 1.0);
  double *a = with_spectrum(n, lam, &r);
  dense_op d = {.n = n, .a = a};
  cpk_operator op = op_of(&d);
  /* nodes are eigenvalues (Lanczos reaches the whole space), weights sum 1 */
  cpk_density_options o = {.runs = 3, .seed = 2};
  double nodes[3 * 100], weights[3 * 100];
  tu_ok(cpk_slq(&op, &o, nodes, weights));
  for (int run = 0; run < 3; run++) {
    double sw = 0;
    for (int i = 0; i < 100; i++) {
      double w = weights[run * 100 + i], t = nodes[run * 100 + i];
      sw += w;
      assert_true(w >= 0);
      if (w > 1e-12) {
        double best = INFINITY;
        for (int k = 0; k < n; k++)
          best = fmin(best, fabs(t - lam[k]));
        assert_true(best < 1e-8);
      }
    }
    assert_true(fabs(sw - 1) < 1e-12);
  }
  /* the density: PyHessian's defaults, grid [2, 10000] */
  double *out = dalloc(2 * 10000);
  size_t before = cpk_memory_in_use();
  tu_ok(cpk_spectral_density(&op, &o, out));
  assert_int_equal(cpk_memory_in_use(), before);
  const double *grid = out, *dens = out + 10000;
  assert_true(fabs(grid[0] - (-3.01)) < 1e-9);
  assert_true(fabs(grid[9999] - 5.01) < 1e-9);
  double dx = grid[1] - grid[0], total = 0, trap = 0, near = 0;
  double sigma = sqrt(1e-5 * (grid[9999] - grid[0]));
  for (int j = 0; j < 10000; j++) {
    total += dens[j] * dx;
    if (j > 0)
      trap += 0.5 * (dens[j] + dens[j - 1]) * dx;
    double best = INFINITY;
    for (int k = 0; k < n; k++)
      best = fmin(best, fabs(grid[j] - lam[k]));
    if (best < 6 * sigma)
      near += dens[j] * dx;
  }
  print_message("density: sum %.15g, trapezoid %.6f, mass within 6 sigma of "
                "an eigenvalue %.9f\n",
                total, trap, near);
  assert_true(fabs(total - 1) < 1e-12);
  assert_true(fabs(trap - 1) < 1e-3);
  assert_true(near > 0.999999);
  free(out);

  /* in expectation every eigenvalue has weight 1/P */
  const int64_t runs = 1000;
  double *nd = dalloc(runs * n), *wt = dalloc(runs * n);
  cpk_density_options many = {.runs = runs, .steps = n, .seed = 8};
  tu_ok(cpk_slq(&op, &many, nd, wt));
  for (int k = 0; k < n; k++) {
    double w = 0;
    for (int64_t i = 0; i < runs * n; i++)
      if (fabs(nd[i] - lam[k]) < 1e-6)
        w += wt[i];
    w /= (double)runs;
    assert_true(fabs(w * n - 1) < 0.25);
  }
  free(nd);
  free(wt);
  free(a);

  /* a larger operator with every default: 100 nodes per run */
  const int64_t big = 150;
  a = random_sym(big, 0, &r);
  d.n = big;
  d.a = a;
  op = op_of(&d);
  double nb[100], wb[100];
  reset_counts(&d);
  tu_ok(cpk_slq(&op, NULL, nb, wb));
  assert_int_equal(d.vectors, 100);
  double sw = 0;
  for (int i = 0; i < 100; i++)
    sw += wb[i];
  assert_true(fabs(sw - 1) < 1e-12);
  double ref[150];
  dense_eig(big, a, ref, NULL);
  /* extreme Ritz values converge to the extreme eigenvalues */
  double mx = -INFINITY, mn = INFINITY;
  for (int i = 0; i < 100; i++) {
    mx = fmax(mx, nb[i]);
    mn = fmin(mn, nb[i]);
  }
  assert_true(fabs(mx - ref[0]) < 1e-8 && fabs(mn - ref[big - 1]) < 1e-8);
  free(a);
}

/* Numbers from tests/fixtures/spectral/density_ref.py. */
static const double case1_grid[9] = {-1,      -0.53125, -0.0625, 0.40625, 0.875,
                                     1.34375, 1.8125,   2.28125, 2.75};
static const double case1_density[9] = {
    0.26602108105971944, 0.38039409664441626, 0.26837694953018726,
    0.20958169902167731, 0.16893682149649281, 0.14469556265041245,
    0.2522563361113862,  0.25195120622996242, 0.19111958058907905};
static const double case2_grid[6] = {
    -0.01, 0.053999999999999999, 0.11800000000000001, 0.182, 0.246, 0.31};
static const double case2_density[6] = {3.0081909634095658, 2.7372632718649461,
                                        2.0670457647254881, 2.0670457647254881,
                                        2.7372632718649461, 3.0081909634095658};

static void test_density_pyhessian_formula(void **state) {
  (void)state;
  const double n1[6] = {-1.0, 0.5, 2.0, -0.5, 1.0, 3.0};
  const double w1[6] = {0.2, 0.3, 0.5, 0.6, 0.1, 0.3};
  cpk_density_options o1 = {.grid = 9, .sigma_squared = 0.05, .overhead = 0.25};
  double out1[18];
  tu_ok(cpk_density_from_slq(2, 3, n1, w1, &o1, out1));
  tu_assert_close_array(out1, case1_grid, 9, 1e-14, 1e-15, "case 1 grid");
  tu_assert_close_array(out1 + 9, case1_density, 9, 1e-12, 0, "case 1 density");
  /* range below 1: the variance is sigma_squared itself; default overhead */
  const double n2[2] = {0.0, 0.3}, w2[2] = {0.5, 0.5};
  cpk_density_options o2 = {.grid = 6, .sigma_squared = 0.01};
  double out2[12];
  tu_ok(cpk_density_from_slq(1, 2, n2, w2, &o2, out2));
  tu_assert_close_array(out2, case2_grid, 6, 1e-14, 1e-15, "case 2 grid");
  tu_assert_close_array(out2 + 6, case2_density, 6, 1e-12, 0, "case 2 density");
}

/* ------------------------------------------------- Kronecker inverses */

static double *random_spd(int64_t m, double ridge, trng *r) {
  double *x = dalloc(m * (m + 2)), *a = dalloc(m * m);
  for (int64_t i = 0; i < m * (m + 2); i++)
    x[i] = trng_normal(r);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)m, (blasint)m,
              (blasint)(m + 2), 1.0 / (double)(m + 2), x, (blasint)(m + 2), x,
              (blasint)(m + 2), 0.0, a, (blasint)m);
  for (int64_t i = 0; i < m; i++) {
    a[i * m + i] += ridge;
    for (int64_t j = 0; j < i; j++)
      a[i * m + j] = a[j * m + i];
  }
  free(x);
  return a;
}

/* y = A X B + d X for X [m, n] */
static void kron_apply(int64_t m, int64_t n, const double *a, const double *b,
                       double d, const double *x, double *y) {
  double *t = dalloc(m * n);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)m, (blasint)n,
              (blasint)m, 1.0, a, (blasint)m, x, (blasint)n, 0.0, t,
              (blasint)n);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)m, (blasint)n,
              (blasint)n, 1.0, t, (blasint)n, b, (blasint)n, 0.0, y,
              (blasint)n);
  for (int64_t i = 0; i < m * n; i++)
    y[i] += d * x[i];
  free(t);
}

static void test_kron_exact(void **state) {
  (void)state;
  trng r = {51};
  const int64_t shapes[][2] = {{1, 1}, {3, 5}, {7, 4}, {10, 12}};
  const double damps[] = {0.0, 1e-3, 0.5};
  for (size_t s = 0; s < 4; s++)
    for (size_t k = 0; k < 3; k++) {
      int64_t m = shapes[s][0], n = shapes[s][1];
      double d = damps[k];
      double *a = random_spd(m, 0.1, &r), *b = random_spd(n, 0.1, &r);
      double *g = dalloc(m * n), *x = dalloc(m * n), *y = dalloc(m * n);
      for (int64_t i = 0; i < m * n; i++)
        g[i] = trng_normal(&r);
      size_t before = cpk_memory_in_use();
      cpk_kron_inverse *inv;
      tu_ok(cpk_kron_inverse_new(&inv, CPK_KRON_DAMP_EXACT, m, a, n, b, d));
      tu_ok(cpk_kron_inverse_apply(inv, g, x));
      kron_apply(m, n, a, b, d, x, y);
      tu_assert_close_array(y, g, m * n, 1e-10, 0, "(A (x) B + d I) x = g");
      /* in place */
      memcpy(y, g, (size_t)(m * n) * sizeof *g);
      tu_ok(cpk_kron_inverse_apply(inv, y, y));
      tu_assert_close_array(y, x, m * n, 1e-13, 0, "exact, in place");
      cpk_kron_inverse_free(inv);
      assert_int_equal(cpk_memory_in_use(), before);
      /* one-shot */
      tu_ok(cpk_kron_solve(CPK_KRON_DAMP_EXACT, m, a, n, b, d, g, y));
      tu_assert_close_array(y, x, m * n, 1e-13, 0, "exact, one-shot");
      free(a);
      free(b);
      free(g);
      free(x);
      free(y);
    }
  /* indefinite factors are fine when every a_i b_j + d > 0 */
  double a2[4] = {2, 0, 0, -1}, b2[1] = {0.5}, g2[2] = {1, 1}, x2[2];
  tu_ok(cpk_kron_solve(CPK_KRON_DAMP_EXACT, 2, a2, 1, b2, 1.0, g2, x2));
  assert_true(fabs(x2[0] - 0.5) < 1e-15 && fabs(x2[1] - 2.0) < 1e-14);
}

static void test_kron_factored(void **state) {
  (void)state;
  trng r = {52};
  const int64_t shapes[][2] = {{1, 1}, {3, 5}, {6, 4}};
  for (size_t s = 0; s < 3; s++) {
    int64_t m = shapes[s][0], n = shapes[s][1], mn = m * n;
    double d = 0.04, sd = 0.2;
    double *a = random_spd(m, 0.05, &r), *b = random_spd(n, 0.05, &r);
    double *g = dalloc(mn), *x = dalloc(mn), *dense = dalloc(mn * mn);
    double *rhs = dalloc(mn);
    for (int64_t i = 0; i < mn; i++)
      rhs[i] = g[i] = trng_normal(&r);
    tu_ok(cpk_kron_solve(CPK_KRON_DAMP_FACTORED, m, a, n, b, d, g, x));
    /* dense (A + sd I) (x) (B + sd I), row-major vec; solve with dgesv */
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++)
        for (int64_t k = 0; k < m; k++)
          for (int64_t l = 0; l < n; l++)
            dense[(i * n + j) * mn + k * n + l] =
                (a[i * m + k] + (i == k ? sd : 0)) *
                (b[j * n + l] + (j == l ? sd : 0));
    lapack_int *piv = calloc((size_t)mn, sizeof *piv);
    assert_int_equal(LAPACKE_dgesv(LAPACK_ROW_MAJOR, (lapack_int)mn, 1, dense,
                                   (lapack_int)mn, piv, rhs, 1),
                     0);
    tu_assert_close_array(x, rhs, mn, 1e-11, 0, "factored against dense");
    /* and it differs from the exact damping */
    double *e = dalloc(mn);
    tu_ok(cpk_kron_solve(CPK_KRON_DAMP_EXACT, m, a, n, b, d, g, e));
    double diff = 0;
    for (int64_t i = 0; i < mn; i++)
      diff = fmax(diff, fabs(e[i] - x[i]));
    assert_true(diff > 1e-6);
    /* in place */
    tu_ok(cpk_kron_solve(CPK_KRON_DAMP_FACTORED, m, a, n, b, d, g, g));
    tu_assert_close_array(g, x, mn, 1e-13, 0, "factored, in place");
    free(piv);
    free(e);
    free(a);
    free(b);
    free(g);
    free(x);
    free(dense);
    free(rhs);
  }
}

static void test_kron_bias(void **state) {
  (void)state;
  trng r = {53};
  const int64_t m = 6;
  double *a = random_spd(m, 0.0, &r), g[6], x[6], y[6];
  for (int i = 0; i < m; i++)
    g[i] = trng_normal(&r);
  for (int mode = 0; mode < 2; mode++) {
    tu_ok(cpk_kron_solve((cpk_kron_damping)mode, m, a, 0, NULL, 0.3, g, x));
    cblas_dgemv(CblasRowMajor, CblasNoTrans, (blasint)m, (blasint)m, 1.0, a,
                (blasint)m, x, 1, 0.0, y, 1);
    for (int i = 0; i < m; i++)
      y[i] += 0.3 * x[i];
    tu_assert_close_array(y, g, m, 1e-12, 0, "(A + d I) x = g");
  }
  free(a);
}

static void test_kron_errors(void **state) {
  (void)state;
  cpk_kron_inverse *inv = (cpk_kron_inverse *)1;
  double a[4] = {1, 0, 0, -1}, b[4] = {1, 0, 0, 1}, g[4] = {1, 2, 3, 4}, x[4];
  size_t before = cpk_memory_in_use();
  /* indefinite A, no damping: exact mode names the product */
  int rc = cpk_kron_inverse_new(&inv, CPK_KRON_DAMP_EXACT, 2, a, 2, b, 0.0);
  assert_int_equal(rc, CPK_ERANGE);
  assert_null(inv);
  assert_non_null(strstr(cpk_last_error(), "not positive definite"));
  /* factored: Cholesky of A + sqrt(d) I fails, naming the factor */
  rc = cpk_kron_solve(CPK_KRON_DAMP_FACTORED, 2, a, 2, b, 0.25, g, x);
  assert_int_equal(rc, CPK_ERANGE);
  assert_non_null(strstr(cpk_last_error(), "output factor A"));
  assert_non_null(strstr(cpk_last_error(), "dpotrf"));
  double sing[4] = {1, 1, 1, 1};
  rc = cpk_kron_solve(CPK_KRON_DAMP_FACTORED, 2, b, 2, sing, 0.0, g, x);
  assert_int_equal(rc, CPK_ERANGE);
  assert_non_null(strstr(cpk_last_error(), "input factor B"));
  rc = cpk_kron_solve(CPK_KRON_DAMP_EXACT, 2, a, 0, NULL, 0.5, g, x);
  assert_int_equal(rc, CPK_ERANGE);
  assert_non_null(strstr(cpk_last_error(), "bias factor A"));
  /* non-finite factor or gradient, bad damping, bad sizes, bad mode */
  double nanf[4] = {1, NAN, NAN, 1};
  rc = cpk_kron_solve(CPK_KRON_DAMP_EXACT, 2, b, 2, nanf, 0.1, g, x);
  assert_int_equal(rc, CPK_ENONFINITE);
  assert_non_null(strstr(cpk_last_error(), "input factor B"));
  double gn[4] = {1, INFINITY, 0, 0};
  rc = cpk_kron_solve(CPK_KRON_DAMP_EXACT, 2, b, 2, b, 0.1, gn, x);
  assert_int_equal(rc, CPK_ENONFINITE);
  assert_non_null(strstr(cpk_last_error(), "gradient"));
  assert_int_equal(cpk_kron_solve(CPK_KRON_DAMP_EXACT, 2, b, 2, b, -1, g, x),
                   CPK_EINVAL);
  assert_int_equal(cpk_kron_solve(CPK_KRON_DAMP_EXACT, 2, b, 2, b, NAN, g, x),
                   CPK_EINVAL);
  assert_int_equal(cpk_kron_solve(CPK_KRON_DAMP_EXACT, 0, b, 2, b, 1, g, x),
                   CPK_EINVAL);
  assert_int_equal(cpk_kron_solve(CPK_KRON_DAMP_EXACT, 2, b, 0, b, 1, g, x),
                   CPK_EINVAL);
  assert_int_equal(cpk_kron_solve((cpk_kron_damping)7, 2, b, 2, b, 1, g, x),
                   CPK_EINVAL);
  assert_int_equal(cpk_kron_inverse_apply(NULL, g, x), CPK_EINVAL);
  cpk_kron_inverse_free(NULL);
  assert_int_equal(cpk_memory_in_use(), before);
}

/* ------------------------------------------------------------- errors */

static void test_operator_errors(void **state) {
  (void)state;
  trng r = {61};
  const int64_t n = 20;
  double *a = random_sym(n, 1, &r);
  dense_op d = {.n = n, .a = a};
  cpk_operator op = op_of(&d);
  double vals[25], vecs[25 * 20], out[2 * 50], nodes[200], wts[200], t, se;
  size_t before = cpk_memory_in_use();
  cpk_eigen_options eo = {.no_restart_check = 1};

  /* an operator that fails at its 7th call, with its own status */
  d.fail_at = 7;
  d.fail_status = CPK_EIO;
  assert_int_equal(cpk_eigen_lanczos(&op, 2, &eo, vals, vecs, NULL), CPK_EIO);
  assert_non_null(
      strstr(cpk_last_error(), "lanczos: operator failed at iteration 7"));
  reset_counts(&d);
  assert_int_equal(cpk_eigen_power(&op, 2, NULL, vals, vecs, NULL), CPK_EIO);
  assert_non_null(strstr(cpk_last_error(),
                         "power iteration: operator failed at iteration 7"));
  /* ... a status that is no cpk_status becomes CPK_EINVAL, said so */
  reset_counts(&d);
  d.fail_at = 2;
  d.fail_status = 5;
  cpk_trace_options to = {.block = 4};
  assert_int_equal(cpk_trace_hutchinson(&op, 20, &to, &t, &se), CPK_EINVAL);
  assert_non_null(
      strstr(cpk_last_error(), "hutchinson: operator failed at probe block 2"));
  assert_non_null(strstr(cpk_last_error(), "status 5"));
  reset_counts(&d);
  d.fail_at = 2;
  d.fail_status = CPK_ENOMEM;
  assert_int_equal(cpk_trace_hutchpp(&op, 30, NULL, &t, &se), CPK_ENOMEM);
  assert_non_null(strstr(cpk_last_error(), "hutch++: operator failed at A Q"));
  reset_counts(&d);
  d.fail_at = 3;
  assert_int_equal(cpk_spectral_density(&op, NULL, out), CPK_ENOMEM);
  assert_non_null(
      strstr(cpk_last_error(), "operator failed at run 1, iteration 3"));
  d.fail_at = 0;

  /* non-finite values from the operator */
  reset_counts(&d);
  d.nonfinite_at = 4;
  assert_int_equal(cpk_eigen_lanczos(&op, 2, NULL, vals, vecs, NULL),
                   CPK_ENONFINITE);
  assert_non_null(strstr(cpk_last_error(), "lanczos: operator returned a "
                                           "non-finite value at iteration 4"));
  reset_counts(&d);
  assert_int_equal(cpk_trace_hutchinson(&op, 100, NULL, &t, &se),
                   CPK_ENONFINITE);
  assert_non_null(strstr(cpk_last_error(), "non-finite value at probe block 4 "
                                           "(vector 15"));
  reset_counts(&d);
  assert_int_equal(cpk_slq(&op, NULL, nodes, wts), CPK_ENONFINITE);
  reset_counts(&d);
  d.nonfinite_at = 1;
  assert_int_equal(cpk_trace_hutchpp(&op, 9, NULL, &t, &se), CPK_ENONFINITE);
  assert_non_null(strstr(cpk_last_error(), "at sketch"));
  d.nonfinite_at = 0;

  /* bad sizes and arguments */
  assert_int_equal(cpk_eigen_lanczos(&op, 21, NULL, vals, NULL, NULL),
                   CPK_EINVAL);
  assert_non_null(strstr(cpk_last_error(), "k = 21"));
  assert_non_null(strstr(cpk_last_error(), "<= 20"));
  assert_int_equal(cpk_eigen_lanczos(&op, 0, NULL, vals, NULL, NULL),
                   CPK_EINVAL);
  assert_int_equal(cpk_eigen_power(&op, 21, NULL, vals, NULL, NULL),
                   CPK_EINVAL);
  assert_int_equal(cpk_eigen_lanczos(&op, 2, NULL, NULL, NULL, NULL),
                   CPK_EINVAL);
  cpk_eigen_options few = {.max_iter = 2};
  assert_int_equal(cpk_eigen_lanczos(&op, 3, &few, vals, NULL, NULL),
                   CPK_EINVAL);
  cpk_eigen_options badshift = {.shift = INFINITY};
  assert_int_equal(cpk_eigen_power(&op, 1, &badshift, vals, NULL, NULL),
                   CPK_EINVAL);
  assert_int_equal(cpk_eigen_lanczos(NULL, 1, NULL, vals, NULL, NULL),
                   CPK_EINVAL);
  cpk_operator empty = {0, dense_apply, &d}, noapply = {20, NULL, &d};
  assert_int_equal(cpk_eigen_lanczos(&empty, 1, NULL, vals, NULL, NULL),
                   CPK_EINVAL);
  assert_int_equal(cpk_trace_hutchinson(&noapply, 4, NULL, &t, NULL),
                   CPK_EINVAL);
  assert_int_equal(cpk_trace_hutchinson(&op, 0, NULL, &t, NULL), CPK_EINVAL);
  cpk_trace_options badblock = {.block = -1};
  assert_int_equal(cpk_trace_hutchinson(&op, 4, &badblock, &t, NULL),
                   CPK_EINVAL);
  assert_int_equal(cpk_trace_hutchpp(&op, 2, NULL, &t, NULL), CPK_EINVAL);
  cpk_density_options g1 = {.grid = 1};
  assert_int_equal(cpk_spectral_density(&op, &g1, out), CPK_EINVAL);
  cpk_density_options negs = {.sigma_squared = -1};
  assert_int_equal(cpk_spectral_density(&op, &negs, out), CPK_EINVAL);
  /* non-finite or negative nodes and weights; a kernel too narrow */
  double nn[2] = {0, NAN}, ww[2] = {0.5, 0.5}, wneg[2] = {1.5, -0.5};
  assert_int_equal(cpk_density_from_slq(1, 2, nn, ww, NULL, out),
                   CPK_ENONFINITE);
  double nok[2] = {0, 1};
  assert_int_equal(cpk_density_from_slq(1, 2, nok, wneg, NULL, out),
                   CPK_EINVAL);
  /* the grid ends 1e6 from the nodes, points 4e7 apart, sigma ~ 141 */
  double far[2] = {-1e9, 1e9};
  cpk_density_options coarse = {.grid = 50, .overhead = 1e6};
  assert_int_equal(cpk_density_from_slq(1, 2, far, ww, &coarse, out),
                   CPK_ERANGE);
  assert_non_null(strstr(cpk_last_error(), "grid"));
  assert_int_equal(cpk_memory_in_use(), before);
  free(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lanczos_random),
      cmocka_unit_test(test_lanczos_clustered),
      cmocka_unit_test(test_lanczos_repeated),
      cmocka_unit_test(test_lanczos_degenerate),
      cmocka_unit_test(test_lanczos_usage),
      cmocka_unit_test(test_lanczos_outliers_bulk),
      cmocka_unit_test(test_power_agrees),
      cmocka_unit_test(test_hutchinson_stderr_honest),
      cmocka_unit_test(test_hutchinson_rate),
      cmocka_unit_test(test_hutchinson_blocks),
      cmocka_unit_test(test_hutchpp),
      cmocka_unit_test(test_slq_density),
      cmocka_unit_test(test_density_pyhessian_formula),
      cmocka_unit_test(test_kron_exact),
      cmocka_unit_test(test_kron_factored),
      cmocka_unit_test(test_kron_bias),
      cmocka_unit_test(test_kron_errors),
      cmocka_unit_test(test_operator_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
