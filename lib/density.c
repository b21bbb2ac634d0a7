/*
 * density.c: the spectral density of a symmetric operator by stochastic
 * Lanczos quadrature (Lin, Saad, Yang 2016; Ghorbani, Krishnan, Xiao 2019),
 * with the conventions and defaults of PyHessian (Yao, Gholami, Keutzer,
 * Mahoney 2020: pyhessian/hessian.py, hessian.density(iter=100, n_v=1), and
 * density_plot.py, density_generate(num_bins=10000, sigma_squared=1e-5,
 * overhead=0.01)).
 *
 * One run: v_0 = z / ||z|| for Rademacher z; m steps of Lanczos (full
 * reorthogonalisation) give T_m = Z diag(theta) Z^T; then
 *   v_0^T f(A) v_0 ~ sum_i Z[0, i]^2 f(theta_i),
 * so the nodes theta_i with weights Z[0, i]^2 (summing to 1) approximate the
 * spectral measure (1/P) sum_k delta(x - lambda_k) in expectation.
 *
 * PyHessian restarts Lanczos from a random vector when beta is exactly 0;
 * the vectors of such a restart are orthogonal to v_0, so their nodes would
 * get weight 0. We stop at an invariant subspace instead (the quadrature is
 * exact there) and pad the run with zero-weight copies of its smallest node,
 * which leaves the min, the max and the density unchanged.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "spectral.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

static int resolve(const cpk_density_options *in, cpk_density_options *o,
                   const char *who) {
  static const cpk_density_options zero;
  *o = in != NULL ? *in : zero;
  if (o->runs < 0 || o->steps < 0 || o->grid < 0 || o->grid == 1)
    return cpk__fail(CPK_EINVAL,
                     "%s: runs = %lld, steps = %lld, grid = %lld: "
                     "expected runs >= 0, steps >= 0, grid 0 or >= 2 (0: "
                     "default)",
                     who, (long long)o->runs, (long long)o->steps,
                     (long long)o->grid);
  if (!(o->sigma_squared >= 0) || !isfinite(o->sigma_squared) ||
      !(o->overhead >= 0) || !isfinite(o->overhead))
    return cpk__fail(CPK_EINVAL,
                     "%s: sigma_squared = %g, overhead = %g: "
                     "expected finite values >= 0 (0: default)",
                     who, o->sigma_squared, o->overhead);
  if (o->runs == 0)
    o->runs = 1;
  if (o->steps == 0)
    o->steps = 100;
  if (o->grid == 0)
    o->grid = 10000;
  if (o->sigma_squared == 0)
    o->sigma_squared = 1e-5;
  if (o->overhead == 0)
    o->overhead = 0.01;
  return CPK_OK;
}

int cpk_slq(const cpk_operator *op, const cpk_density_options *opts,
            double *nodes, double *weights) {
  const char *who = "slq";
  cpk_density_options o;
  int rc = cpk__op_check(op, who);
  if (rc == CPK_OK)
    rc = resolve(opts, &o, who);
  if (rc != CPK_OK)
    return rc;
  if (nodes == NULL || weights == NULL)
    return cpk__fail(CPK_EINVAL, "%s: no buffers for the nodes and weights",
                     who);
  const int64_t n = op->dim, L = o.steps;
  const int64_t mmax = L < n ? L : n;
  size_t vbytes, zbytes;
  rc = cpk__mul_size((size_t)mmax, (size_t)n * sizeof(double), &vbytes,
                     "slq Lanczos basis (steps x dim)");
  if (rc == CPK_OK)
    rc = cpk__mul_size((size_t)mmax, (size_t)mmax * sizeof(double), &zbytes,
                       "slq tridiagonal eigenvectors (steps x steps)");
  if (rc != CPK_OK)
    return rc;
  double *v = NULL, *w = NULL, *alpha = NULL, *beta = NULL, *theta = NULL,
         *z = NULL, *work = NULL, *scratch = NULL;
  if ((v = cpk__malloc(vbytes)) == NULL ||
      (w = cpk__malloc((size_t)n * sizeof(double))) == NULL ||
      (alpha = cpk__malloc((size_t)mmax * sizeof(double))) == NULL ||
      (beta = cpk__calloc((size_t)mmax * sizeof(double))) == NULL ||
      (theta = cpk__malloc((size_t)mmax * sizeof(double))) == NULL ||
      (z = cpk__malloc(zbytes)) == NULL ||
      (work = cpk__malloc((size_t)(3 * mmax) * sizeof(double))) == NULL ||
      (scratch = cpk__malloc((size_t)(mmax + 1) * sizeof(double))) == NULL) {
    rc = cpk__fail_prefix(CPK_ENOMEM, "%s (steps = %lld, dim = %lld)", who,
                          (long long)L, (long long)n);
    goto free_all;
  }
  cpk__rng rng;
  cpk__rng_seed(&rng, o.seed);
  for (int64_t r = 0; r < o.runs; r++) {
    char stage[64];
    snprintf(stage, sizeof stage, "run %lld, iteration", (long long)(r + 1));
    cpk__rademacher(&rng, n, v);
    cblas_dscal((blasint)n, 1.0 / sqrt((double)n), v, 1);
    double anorm = 0.0;
    int64_t m = 0;
    for (int64_t j = 0; j < mmax; j++) {
      double *vj = v + j * n;
      rc = cpk__op_apply(op, 1, vj, w, who, stage, j + 1, NULL);
      if (rc != CPK_OK)
        goto free_all;
      double a = cpk__dot(n, vj, w);
      cblas_daxpy((blasint)n, -a, vj, 1, w, 1);
      if (j > 0)
        cblas_daxpy((blasint)n, -beta[j - 1], vj - n, 1, w, 1);
      cpk__orth(j + 1, n, v, w, NULL, scratch);
      alpha[j] = a;
      m = j + 1;
      if (m == mmax)
        break;
      double b = cpk__nrm2(n, w);
      anorm = fmax(anorm, fabs(a) + b + (j > 0 ? beta[j - 1] : 0.0));
      if (b <= 1e-12 * anorm || b == 0.0)
        break; /* invariant subspace: the quadrature is exact */
      beta[j] = b;
      for (int64_t i = 0; i < n; i++)
        vj[n + i] = w[i] / b;
    }
    rc = cpk__tridiag_eig(m, alpha, beta, theta, z, work, who);
    if (rc != CPK_OK)
      goto free_all;
    for (int64_t i = 0; i < L; i++) {
      nodes[r * L + i] = i < m ? theta[i] : theta[0];
      weights[r * L + i] = i < m ? z[i * m] * z[i * m] : 0.0;
    }
  }
free_all:
  cpk__free(scratch);
  cpk__free(work);
  cpk__free(z);
  cpk__free(theta);
  cpk__free(beta);
  cpk__free(alpha);
  cpk__free(w);
  cpk__free(v);
  return rc;
}

int cpk_density_from_slq(int64_t runs, int64_t steps, const double *nodes,
                         const double *weights, const cpk_density_options *opts,
                         double *out) {
  const char *who = "density";
  cpk_density_options o;
  int rc = resolve(opts, &o, who);
  if (rc != CPK_OK)
    return rc;
  if (runs < 1 || steps < 1 || nodes == NULL || weights == NULL || out == NULL)
    return cpk__fail(CPK_EINVAL,
                     "%s: expected runs >= 1 and steps >= 1 with "
                     "node, weight and output buffers; found runs = %lld, "
                     "steps = %lld",
                     who, (long long)runs, (long long)steps);
  const int64_t R = runs, L = steps, G = o.grid;
  double sum_max = 0.0, sum_min = 0.0;
  for (int64_t r = 0; r < R; r++) {
    double mx = -INFINITY, mn = INFINITY;
    for (int64_t i = 0; i < L; i++) {
      double t = nodes[r * L + i], wt = weights[r * L + i];
      if (!isfinite(t) || !isfinite(wt) || wt < 0)
        return cpk__fail(isfinite(t) && isfinite(wt) ? CPK_EINVAL
                                                     : CPK_ENONFINITE,
                         "%s: run %lld, node %lld: node %g with weight %g "
                         "(expected finite nodes and weights >= 0)",
                         who, (long long)r, (long long)i, t, wt);
      mx = fmax(mx, t);
      mn = fmin(mn, t);
    }
    sum_max += mx;
    sum_min += mn;
  }
  const double lmax = sum_max / (double)R + o.overhead;
  const double lmin = sum_min / (double)R - o.overhead;
  /* numpy.linspace(lmin, lmax, G): j * step + lmin, the last point lmax. */
  const double step = (lmax - lmin) / (double)(G - 1);
  double *grid = out, *dens = out + G;
  for (int64_t j = 0; j < G; j++)
    grid[j] = (double)j * step + lmin;
  grid[G - 1] = lmax;
  /* PyHessian passes sigma_squared * max(1, range) as the kernel variance. */
  const double s2 = o.sigma_squared * fmax(1.0, lmax - lmin);
  const double c = 1.0 / sqrt(2.0 * M_PI * s2);
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < G; j++) {
    double x = grid[j], acc = 0.0;
    for (int64_t r = 0; r < R; r++) {
      double run = 0.0;
      for (int64_t i = 0; i < L; i++) {
        double d = nodes[r * L + i] - x;
        run += weights[r * L + i] * exp(-d * d / (2.0 * s2)) * c;
      }
      acc += run;
    }
    dens[j] = acc / (double)R;
  }
  double total = 0.0;
  for (int64_t j = 0; j < G; j++)
    total += dens[j];
  const double norm = total * (grid[1] - grid[0]);
  if (!(norm > 0) || !isfinite(norm))
    return cpk__fail(CPK_ERANGE,
                     "%s: the density vanishes on every one of "
                     "the %lld grid points (kernel variance %g against a "
                     "grid spacing of %g): use more grid points or a larger "
                     "sigma_squared",
                     who, (long long)G, s2, grid[1] - grid[0]);
  for (int64_t j = 0; j < G; j++)
    dens[j] /= norm;
  return CPK_OK;
}

int cpk_spectral_density(const cpk_operator *op,
                         const cpk_density_options *opts, double *out) {
  const char *who = "density";
  cpk_density_options o;
  int rc = cpk__op_check(op, who);
  if (rc == CPK_OK)
    rc = resolve(opts, &o, who);
  if (rc != CPK_OK)
    return rc;
  if (out == NULL)
    return cpk__fail(CPK_EINVAL, "%s: no output buffer", who);
  size_t bytes;
  rc = cpk__mul_size((size_t)o.runs, (size_t)o.steps * sizeof(double), &bytes,
                     "density SLQ nodes (runs x steps)");
  if (rc != CPK_OK)
    return rc;
  double *nodes = cpk__malloc(bytes), *weights = cpk__malloc(bytes);
  if (nodes == NULL || weights == NULL) {
    rc = cpk__fail_prefix(CPK_ENOMEM, "%s", who);
    goto free_all;
  }
  rc = cpk_slq(op, &o, nodes, weights);
  if (rc == CPK_OK)
    rc = cpk_density_from_slq(o.runs, o.steps, nodes, weights, &o, out);
free_all:
  cpk__free(weights);
  cpk__free(nodes);
  return rc;
}
