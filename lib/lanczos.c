/*
 * lanczos.c: the top eigenpairs of a symmetric operator.
 *
 * cpk_eigen_lanczos: Lanczos with full reorthogonalisation. Step j of a run
 * (basis rows v_0..v_j orthonormal):
 *   w = A v_j,  alpha_j = v_j . w,  w -= alpha_j v_j + beta_{j-1} v_{j-1},
 *   w -= V^T (V w) twice (and the same against locked vectors Y),
 *   beta_j = ||w||,  v_{j+1} = w / beta_j,
 * so that A V_m = V_m T_m + beta_m v_{m+1} e_m^T with T_m tridiagonal
 * (alpha on the diagonal, beta beside it). The top eigenpairs (theta_i,
 * z_i) of T_m (dstevr, a subset only) give Ritz pairs (theta_i, V_m^T z_i) with
 * residual norm beta_m |z_i[m-1]|. A run stops when the top `want` Ritz pairs
 * have residual <= tol * max|theta|. At an invariant subspace (beta ~ 0) the
 * run goes on from a fresh random vector orthogonal to the basis (beta = 0 in
 * T).
 *
 * A single start vector sees one copy of a repeated eigenvalue only (and
 * nothing of an eigenvector it happens to be orthogonal to). So after the
 * first run converges, a check run starts from a fresh random vector
 * orthogonal to the k converged vectors (Lanczos on A restricted to their
 * complement); if its top converged Ritz value exceeds the k-th eigenvalue
 * found, its converged pairs are merged in and the check repeats. The check
 * ends when its top Ritz value converges at or below the k-th eigenvalue,
 * or stays clearly below it after as many steps as the first run took.
 *
 * Finally one block product A Y gives a Rayleigh-Ritz step on the span of
 * the k vectors (which also removes the small coupling between vectors of
 * different runs) and measures every residual.
 *
 * cpk_eigen_power: power iteration with deflation by projection.
 */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "spectral.h"

#define WHO "lanczos"

/* Workspace of the Lanczos runs (sized for the longest run). */
typedef struct {
  int64_t n, mmax;
  double *v;         /* mmax x n: the basis of a run */
  double *w;         /* n */
  double *alpha;     /* mmax */
  double *beta;      /* mmax */
  double *theta;     /* k: the top Ritz values, ascending */
  double *z;         /* mmax x k, column major: their vectors in the basis */
  double *work;      /* 23 mmax */
  lapack_int *iwork; /* 10 mmax + 2 k */
  double *scratch;   /* max(mmax, k) + 1 */
  double *coef;      /* k x mmax */
} lz_ws;

/* Result of one run. */
typedef struct {
  int64_t pairs; /* Ritz pairs returned (min(want, steps)) */
  int64_t nconv; /* leading pairs that met tol */
  int64_t steps;
  int below;    /* stopped because the top converged <= stop_below */
  double scale; /* largest |Ritz value| of the run (~ ||A||) */
} lz_run;

static double eff_tol(double tol) {
  double t = tol > 0 ? tol : 1e-8;
  return t < 64 * DBL_EPSILON ? 64 * DBL_EPSILON : t;
}

/* dst := a random unit vector orthogonal to the rows of y [ny, n] and of
 * v [nv, n]. Returns 0 when three draws leave (numerically) nothing. */
static int new_direction(cpk__rng *rng, int64_t n, const double *y, int64_t ny,
                         const double *v, int64_t nv, double *dst,
                         double *scratch) {
  for (int attempt = 0; attempt < 3; attempt++) {
    cpk__gaussian(rng, n, dst);
    double n0 = cpk__nrm2(n, dst);
    cpk__orth(ny, n, y, dst, NULL, scratch);
    cpk__orth(nv, n, v, dst, NULL, scratch);
    double n1 = cpk__nrm2(n, dst);
    if (n1 > 1e-8 * n0) {
      cblas_dscal((blasint)n, 1.0 / n1, dst, 1);
      return 1;
    }
  }
  return 0;
}

/* One Lanczos run on A restricted to the complement of the rows of y
 * [ny, n]. Returns the top run->pairs Ritz values (descending) in theta_out
 * and their vectors in vec_out [pairs, n]. stop_below: NAN, or the check
 * mode: stop as soon as the top Ritz pair has converged with a value <=
 * stop_below, or, after `settle` steps, while the top Ritz value (a lower
 * bound of the top eigenvalue) stays below stop_below - sqrt(tol) * scale:
 * an eigenvalue above stop_below would be the top one of this run and
 * converge at least as fast as the k-th did in the first run. */
static int lanczos_run(const cpk_operator *op, lz_ws *ws, const double *y,
                       int64_t ny, int64_t want, double tol, double scale0,
                       double stop_below, int64_t settle, cpk__rng *rng,
                       double *theta_out, double *vec_out, lz_run *run,
                       cpk_eigen_info *inf) {
  const int64_t n = op->dim;
  int64_t mmax = ws->mmax < n - ny ? ws->mmax : n - ny;
  double *V = ws->v, *w = ws->w, *z = ws->z, *theta = ws->theta;
  int64_t m = 0, top = 0;
  double b = 0.0;
  int rc;
  memset(run, 0, sizeof *run);
  if (want > mmax)
    want = mmax;
  if (mmax <= 0 || !new_direction(rng, n, y, ny, NULL, 0, V, ws->scratch))
    return CPK_OK; /* nothing left to search */

  for (int64_t j = 0; j < mmax; j++) {
    double *vj = V + j * n;
    rc = cpk__op_apply(op, 1, vj, w, WHO, "iteration", inf->iterations + 1,
                       &inf->matvecs);
    if (rc != CPK_OK)
      return rc;
    inf->iterations++;
    double a = cpk__dot(n, vj, w);
    cblas_daxpy((blasint)n, -a, vj, 1, w, 1);
    if (j > 0)
      cblas_daxpy((blasint)n, -ws->beta[j - 1], vj - n, 1, w, 1);
    cpk__orth(ny, n, y, w, NULL, ws->scratch);
    cpk__orth(j + 1, n, V, w, NULL, ws->scratch);
    ws->alpha[j] = a;
    b = cpk__nrm2(n, w);
    m = j + 1;
    /* the top Ritz pairs: pair i from the top is column top-1-i of z, with
     * residual norm b |z[m-1, top-1-i]| */
    top = want < m ? want : m;
    double tmin;
    rc = cpk__tridiag_top(m, ws->alpha, ws->beta, top, theta, z, &tmin,
                          ws->work, ws->iwork, WHO);
    if (rc != CPK_OK)
      return rc;
    double tmax = theta[top - 1];
    double scale = fmax(scale0, fmax(fabs(tmin), fabs(tmax)));
    double thr = tol * scale;
    run->scale = scale;
    int64_t lead = 0;
    while (lead < top && b * fabs(z[(m - 1) + (top - 1 - lead) * m]) <= thr)
      lead++;
    run->nconv = lead;
    if (m >= want && lead >= want)
      break;
    if (!isnan(stop_below) &&
        ((lead >= 1 && tmax <= stop_below) ||
         (m >= settle && tmax < stop_below - sqrt(tol) * scale))) {
      run->below = 1;
      break;
    }
    if (m == mmax)
      break;
    if (b <= 1e-12 * scale || b == 0.0) {
      /* Invariant subspace: go on from a fresh direction. */
      ws->beta[j] = 0.0;
      if (!new_direction(rng, n, y, ny, V, j + 1, V + (j + 1) * n, ws->scratch))
        break;
    } else {
      ws->beta[j] = b;
      for (int64_t i = 0; i < n; i++)
        V[(j + 1) * n + i] = w[i] / b;
    }
  }
  run->steps = m;
  run->pairs = top;
  /* Ritz vectors: vec_out = C V_m with C[i, :] = z[:, top-1-i]. */
  for (int64_t i = 0; i < run->pairs; i++) {
    theta_out[i] = theta[top - 1 - i];
    memcpy(ws->coef + i * m, z + (top - 1 - i) * m, (size_t)m * sizeof *z);
  }
  if (run->pairs > 0)
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)run->pairs,
                (blasint)n, (blasint)m, 1.0, ws->coef, (blasint)m, V,
                (blasint)n, 0.0, vec_out, (blasint)n);
  return CPK_OK;
}

/* Normalise the rows of y [k, n] and apply A to them in one block (into ay
 * [k, n]). With rr_tmp ([k, n] scratch): Rayleigh-Ritz on their span, i.e.
 * H = Y A Y^T = Z diag(mu) Z^T, Y := Z^T Y and A Y := Z^T A Y (no more
 * products), which removes the coupling between vectors of different
 * Lanczos runs; lambda = mu, largest first. Without: lambda_i = y_i^T A y_i
 * in the given order. *rel := max_i ||A y_i - lambda_i y_i|| / s with s the
 * larger of `scale` and max|lambda|. */
static int finish_pairs(const cpk_operator *op, const char *who, int64_t k,
                        double *y, double *ay, double *rr_tmp, double scale,
                        double *lambda, double *rel, cpk_eigen_info *inf) {
  const int64_t n = op->dim;
  for (int64_t i = 0; i < k; i++) {
    double nr = cpk__nrm2(n, y + i * n);
    if (nr > 0)
      cblas_dscal((blasint)n, 1.0 / nr, y + i * n, 1);
  }
  int rc = cpk__op_apply(op, k, y, ay, who, "residual check", 1, &inf->matvecs);
  if (rc != CPK_OK)
    return rc;
  if (rr_tmp != NULL && k > 1) {
    double *h = cpk__malloc((size_t)(k * k) * sizeof(double));
    double *c = cpk__malloc((size_t)(k * k) * sizeof(double));
    double *mu = cpk__malloc((size_t)k * sizeof(double));
    if (h == NULL || c == NULL || mu == NULL) {
      rc = cpk__fail_prefix(CPK_ENOMEM, "%s: Rayleigh-Ritz", who);
      goto rr_done;
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)k, (blasint)k,
                (blasint)n, 1.0, y, (blasint)n, ay, (blasint)n, 0.0, h,
                (blasint)k);
    for (int64_t i = 0; i < k; i++)
      for (int64_t j = 0; j < i; j++)
        h[i * k + j] = h[j * k + i] = 0.5 * (h[i * k + j] + h[j * k + i]);
    rc = cpk__sym_eig(k, h, mu, who, "the Rayleigh-Ritz matrix");
    if (rc != CPK_OK)
      goto rr_done;
    for (int64_t i = 0; i < k; i++) { /* descending */
      lambda[i] = mu[k - 1 - i];
      memcpy(c + i * k, h + (k - 1 - i) * k, (size_t)k * sizeof *c);
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)k,
                (blasint)n, (blasint)k, 1.0, c, (blasint)k, y, (blasint)n, 0.0,
                rr_tmp, (blasint)n);
    memcpy(y, rr_tmp, (size_t)(k * n) * sizeof *y);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)k,
                (blasint)n, (blasint)k, 1.0, c, (blasint)k, ay, (blasint)n, 0.0,
                rr_tmp, (blasint)n);
    memcpy(ay, rr_tmp, (size_t)(k * n) * sizeof *ay);
  rr_done:
    cpk__free(mu);
    cpk__free(c);
    cpk__free(h);
    if (rc != CPK_OK)
      return rc;
  } else {
    for (int64_t i = 0; i < k; i++)
      lambda[i] = cpk__dot(n, y + i * n, ay + i * n);
  }
  double worst = 0.0;
  for (int64_t i = 0; i < k; i++) {
    scale = fmax(scale, fabs(lambda[i]));
    cblas_daxpy((blasint)n, -lambda[i], y + i * n, 1, ay + i * n, 1);
    worst = fmax(worst, cpk__nrm2(n, ay + i * n));
  }
  *rel = scale > 0 ? worst / scale : (worst > 0 ? INFINITY : 0.0);
  return CPK_OK;
}

static int check_k(const cpk_operator *op, int64_t k, const double *evals,
                   const char *who) {
  int rc = cpk__op_check(op, who);
  if (rc != CPK_OK)
    return rc;
  if (k < 1 || k > op->dim)
    return cpk__fail(CPK_EINVAL,
                     "%s: k = %lld eigenpairs asked for; expected "
                     "1 <= k <= %lld (the operator dimension)",
                     who, (long long)k, (long long)op->dim);
  if (evals == NULL)
    return cpk__fail(CPK_EINVAL, "%s: no buffer for the eigenvalues", who);
  return CPK_OK;
}

int cpk_eigen_lanczos(const cpk_operator *op, int64_t k,
                      const cpk_eigen_options *opts, double *eigenvalues,
                      double *eigenvectors, cpk_eigen_info *info) {
  static const cpk_eigen_options defaults;
  cpk_eigen_info inf = {0};
  lz_ws ws = {0};
  double *y = NULL, *r = NULL, *tmp = NULL, *ty = NULL, *tr = NULL, *tm = NULL;
  int rc = check_k(op, k, eigenvalues, WHO);
  if (rc != CPK_OK)
    return rc;
  if (opts == NULL)
    opts = &defaults;
  const int64_t n = op->dim;
  const double tol = eff_tol(opts->tol);
  int64_t mmax = opts->max_iter;
  if (mmax < 0 || (mmax > 0 && mmax < k))
    return cpk__fail(CPK_EINVAL,
                     WHO ": max_iter = %lld must be 0 (default) "
                         "or at least k = %lld",
                     (long long)mmax, (long long)k);
  if (mmax == 0)
    mmax = 3 * k > 80 ? 3 * k : 80;
  if (mmax > n)
    mmax = n;

  size_t basis_bytes, kn_bytes;
  rc = cpk__mul_size((size_t)mmax, (size_t)n * sizeof(double), &basis_bytes,
                     WHO " basis (max_iter x dim)");
  if (rc == CPK_OK)
    rc = cpk__mul_size((size_t)k, (size_t)n * sizeof(double), &kn_bytes,
                       WHO " eigenvectors (k x dim)");
  if (rc != CPK_OK)
    return rc;
  ws.n = n;
  ws.mmax = mmax;
  int64_t sk = (mmax > k ? mmax : k) + 1;
  if ((ws.v = cpk__malloc(basis_bytes)) == NULL ||
      (ws.w = cpk__malloc((size_t)n * sizeof(double))) == NULL ||
      (ws.alpha = cpk__malloc((size_t)mmax * sizeof(double))) == NULL ||
      (ws.beta = cpk__calloc((size_t)mmax * sizeof(double))) == NULL ||
      (ws.theta = cpk__malloc((size_t)k * sizeof(double))) == NULL ||
      (ws.z = cpk__malloc((size_t)(mmax * k) * sizeof(double))) == NULL ||
      (ws.work = cpk__malloc((size_t)(23 * mmax) * sizeof(double))) == NULL ||
      (ws.iwork = cpk__malloc((size_t)(10 * mmax + 2 * k) *
                              sizeof(lapack_int))) == NULL ||
      (ws.scratch = cpk__malloc((size_t)sk * sizeof(double))) == NULL ||
      (ws.coef = cpk__malloc((size_t)(k * mmax) * sizeof(double))) == NULL ||
      (y = cpk__malloc(kn_bytes)) == NULL ||
      (r = cpk__malloc(kn_bytes)) == NULL ||
      (tmp = cpk__malloc(kn_bytes)) == NULL ||
      (ty = cpk__malloc((size_t)k * sizeof(double))) == NULL ||
      (tr = cpk__malloc((size_t)k * sizeof(double))) == NULL ||
      (tm = cpk__malloc((size_t)k * sizeof(double))) == NULL) {
    rc = cpk__fail_prefix(CPK_ENOMEM,
                          WHO " (k = %lld, max_iter = %lld, dim = "
                              "%lld)",
                          (long long)k, (long long)mmax, (long long)n);
    goto free_all;
  }

  cpk__rng rng;
  cpk__rng_seed(&rng, opts->seed);
  lz_run run;
  rc = lanczos_run(op, &ws, NULL, 0, k, tol, 0.0, NAN, 0, &rng, ty, y, &run,
                   &inf);
  if (rc != CPK_OK)
    goto free_all;
  inf.runs = 1;
  int converged = run.nconv >= k && run.pairs == k;
  if (run.pairs < k) {
    /* Only possible when the space ran out numerically; fill with fresh
     * orthogonal directions so that the Rayleigh quotients below stand. */
    for (int64_t i = run.pairs; i < k; i++)
      new_direction(&rng, n, y, i, NULL, 0, y + i * n, ws.scratch);
  }
  double scale = run.scale;
  const int64_t settle = run.steps;
  for (int64_t i = 0; i < k; i++)
    scale = fmax(scale, fabs(ty[i]));

  if (converged && !opts->no_restart_check) {
    for (int round = 0; round < k + 2 && n - k > 0; round++) {
      double thr = tol * scale;
      rc = lanczos_run(op, &ws, y, k, k, tol, scale, ty[k - 1] + thr, settle,
                       &rng, tr, r, &run, &inf);
      if (rc != CPK_OK)
        goto free_all;
      inf.runs++;
      if (run.below || run.pairs == 0)
        break;
      if (run.nconv == 0) {
        converged = 0; /* the check itself did not converge */
        break;
      }
      if (tr[0] <= ty[k - 1] + thr)
        break;
      /* Merge the converged pairs of the check run into the top k. */
      int64_t iy = 0, ir = 0;
      for (int64_t i = 0; i < k; i++) {
        if (ir < run.nconv && (iy >= k || tr[ir] > ty[iy])) {
          tm[i] = tr[ir];
          memcpy(tmp + i * n, r + ir * n, (size_t)n * sizeof *r);
          ir++;
        } else {
          tm[i] = ty[iy];
          memcpy(tmp + i * n, y + iy * n, (size_t)n * sizeof *y);
          iy++;
        }
      }
      memcpy(ty, tm, (size_t)k * sizeof *ty);
      memcpy(y, tmp, kn_bytes);
      for (int64_t i = 0; i < k; i++)
        scale = fmax(scale, fabs(ty[i]));
      scale = fmax(scale, run.scale);
    }
  }

  double rel;
  rc = finish_pairs(op, WHO, k, y, tmp, r, scale, eigenvalues, &rel, &inf);
  if (rc != CPK_OK)
    goto free_all;
  inf.max_rel_residual = rel;
  inf.converged = converged && rel <= tol;
  if (eigenvectors != NULL)
    memcpy(eigenvectors, y, kn_bytes);
  if (info != NULL)
    *info = inf;

free_all:
  cpk__free(tm);
  cpk__free(tr);
  cpk__free(ty);
  cpk__free(tmp);
  cpk__free(r);
  cpk__free(y);
  cpk__free(ws.coef);
  cpk__free(ws.scratch);
  cpk__free(ws.iwork);
  cpk__free(ws.work);
  cpk__free(ws.z);
  cpk__free(ws.theta);
  cpk__free(ws.beta);
  cpk__free(ws.alpha);
  cpk__free(ws.w);
  cpk__free(ws.v);
  return rc;
}

#undef WHO
#define WHO "power iteration"

int cpk_eigen_power(const cpk_operator *op, int64_t k,
                    const cpk_eigen_options *opts, double *eigenvalues,
                    double *eigenvectors, cpk_eigen_info *info) {
  static const cpk_eigen_options defaults;
  cpk_eigen_info inf = {0};
  double *x = NULL, *v = NULL, *w = NULL, *t = NULL, *scratch = NULL;
  int rc = check_k(op, k, eigenvalues, WHO);
  if (rc != CPK_OK)
    return rc;
  if (opts == NULL)
    opts = &defaults;
  const int64_t n = op->dim;
  const double tol = eff_tol(opts->tol), shift = opts->shift;
  if (opts->max_iter < 0)
    return cpk__fail(CPK_EINVAL, WHO ": max_iter = %lld must be >= 0",
                     (long long)opts->max_iter);
  if (!isfinite(shift))
    return cpk__fail(CPK_EINVAL, WHO ": shift must be finite, found %g", shift);
  const int64_t maxit = opts->max_iter > 0 ? opts->max_iter : 1000;
  size_t kn_bytes;
  rc = cpk__mul_size((size_t)k, (size_t)n * sizeof(double), &kn_bytes,
                     WHO " eigenvectors (k x dim)");
  if (rc != CPK_OK)
    return rc;
  if ((x = cpk__malloc(kn_bytes)) == NULL ||
      (t = cpk__malloc(kn_bytes)) == NULL ||
      (v = cpk__malloc((size_t)n * sizeof(double))) == NULL ||
      (w = cpk__malloc((size_t)n * sizeof(double))) == NULL ||
      (scratch = cpk__malloc((size_t)(k + 1) * sizeof(double))) == NULL) {
    rc = cpk__fail_prefix(CPK_ENOMEM, WHO " (k = %lld, dim = %lld)",
                          (long long)k, (long long)n);
    goto free_all;
  }
  cpk__rng rng;
  cpk__rng_seed(&rng, opts->seed);
  int all_conv = 1;
  double scale = 0.0;
  for (int64_t i = 0; i < k; i++) {
    if (!new_direction(&rng, n, x, i, NULL, 0, v, scratch)) {
      memset(v, 0, (size_t)n * sizeof *v); /* cannot happen for i < n */
      v[0] = 1.0;
    }
    int conv = 0;
    double theta = 0.0;
    for (int64_t it = 0; it < maxit; it++) {
      rc = cpk__op_apply(op, 1, v, w, WHO, "iteration", inf.iterations + 1,
                         &inf.matvecs);
      if (rc != CPK_OK)
        goto free_all;
      inf.iterations++;
      if (shift != 0.0)
        cblas_daxpy((blasint)n, -shift, v, 1, w, 1);
      theta = cpk__dot(n, v, w); /* Rayleigh quotient of A - shift I */
      memcpy(t, w, (size_t)n * sizeof *w);
      cblas_daxpy((blasint)n, -theta, v, 1, t, 1);
      double res = cpk__nrm2(n, t);
      scale = fmax(scale, fabs(theta + shift));
      if (res <= tol * scale) {
        conv = 1;
        break;
      }
      cpk__orth(i, n, x, w, NULL, scratch); /* deflation */
      double nw = cpk__nrm2(n, w);
      if (nw == 0.0)
        break;
      for (int64_t j = 0; j < n; j++)
        v[j] = w[j] / nw;
    }
    all_conv &= conv;
    memcpy(x + i * n, v, (size_t)n * sizeof *v);
  }
  double rel;
  rc = finish_pairs(op, WHO, k, x, t, NULL, scale, eigenvalues, &rel, &inf);
  if (rc != CPK_OK)
    goto free_all;
  inf.runs = 1;
  inf.max_rel_residual = rel;
  inf.converged = all_conv && rel <= tol;
  if (eigenvectors != NULL)
    memcpy(eigenvectors, x, kn_bytes);
  if (info != NULL)
    *info = inf;

free_all:
  cpk__free(scratch);
  cpk__free(w);
  cpk__free(v);
  cpk__free(t);
  cpk__free(x);
  return rc;
}
