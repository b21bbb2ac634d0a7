/*
 * quantities.c: Cockpit's quantities (formulas at CPK_Q_* in curvpack.h)
 * from the extensions of one pass. With B the batch size, g the gradient,
 * g_n = grad_batch[n] (sum_n g_n = g) and everything summed over all
 * trainable parameters:
 *   batch_l2[n] = ||g_n||^2, batch_dot[n, m] = g_n . g_m,
 *   sum_grad_squared_i = sum_n g_n,i^2,
 *   variance_i = sum_grad_squared_i / B - (g_i / B)^2,
 *   diag_h_i = the Hessian's diagonal.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "train.h"

static const struct {
  unsigned flag;
  const char *name;
  const char *ext; /* what it needs from the pass ("" for nothing) */
} quantities[] = {
    {CPK_Q_LOSS, "loss", ""},
    {CPK_Q_ACCURACY, "accuracy", ""},
    {CPK_Q_GRAD_NORM, "grad_norm", ""},
    {CPK_Q_SAMPLE_NORMS, "sample_grad_norms", "batch_l2_grad"},
    {CPK_Q_GSNR, "gsnr", "sum_grad_squared"},
    {CPK_Q_VARIANCE, "variance", "variance"},
    {CPK_Q_NORM_TEST, "norm_test", "batch_l2_grad"},
    {CPK_Q_INNER_TEST, "inner_test", "batch_dot_grad"},
    {CPK_Q_ORTHO_TEST, "ortho_test", "batch_dot_grad"},
    {CPK_Q_DISTANCE, "distance", ""},
    {CPK_Q_UPDATE_SIZE, "update_size", ""},
    {CPK_Q_HESS_TRACE, "hess_trace", "diag_hessian"},
    {CPK_Q_HESS_MAX_EV, "hess_max_ev", ""},
    {CPK_Q_TIC, "tic", "sum_grad_squared,diag_hessian"},
    {CPK_Q_ALPHA, "alpha", ""},
    {CPK_Q_GRAD_HIST_1D, "grad_hist_1d", ""},
    {CPK_Q_GRAD_HIST_2D, "grad_hist_2d", ""},
};
#define NQ (sizeof quantities / sizeof quantities[0])

/* Cockpit's economy list, and what comes free with its extensions. */
#define ECONOMY                                                                \
  (CPK_Q_ALPHA | CPK_Q_DISTANCE | CPK_Q_GRAD_HIST_1D | CPK_Q_GRAD_NORM |       \
   CPK_Q_INNER_TEST | CPK_Q_LOSS | CPK_Q_NORM_TEST | CPK_Q_ORTHO_TEST |        \
   CPK_Q_UPDATE_SIZE | CPK_Q_ACCURACY | CPK_Q_SAMPLE_NORMS | CPK_Q_GSNR |      \
   CPK_Q_VARIANCE)
#define BUSINESS (ECONOMY | CPK_Q_TIC | CPK_Q_HESS_TRACE)
#define FULL (BUSINESS | CPK_Q_HESS_MAX_EV | CPK_Q_GRAD_HIST_2D)

int cpk_track_preset(const char *name, unsigned *q) {
  if (strcmp(name, "economy") == 0)
    *q = ECONOMY;
  else if (strcmp(name, "business") == 0)
    *q = BUSINESS;
  else if (strcmp(name, "full") == 0)
    *q = FULL;
  else
    return cpk__fail(CPK_EUSAGE,
                     "unknown preset '%s' (expected economy, business or "
                     "full)",
                     name);
  return CPK_OK;
}

const char *cpk_track_name(unsigned quantity) {
  for (size_t i = 0; i < NQ; i++)
    if (quantities[i].flag == quantity)
      return quantities[i].name;
  return NULL;
}

int cpk_track_parse(const char *list, unsigned *q) {
  *q = 0;
  for (const char *p = list; *p;) {
    size_t len = strcspn(p, ",");
    size_t i = 0;
    while (i < NQ && !(strlen(quantities[i].name) == len &&
                       strncmp(quantities[i].name, p, len) == 0))
      i++;
    if (len > 0 && i == NQ)
      return cpk__fail(CPK_EUSAGE, "unknown quantity '%.*s'", (int)len, p);
    if (len > 0)
      *q |= quantities[i].flag;
    p += len + (p[len] == ',');
  }
  return CPK_OK;
}

int cpk_track_extensions(unsigned q, char *buf, size_t len) {
  size_t used = 0;
  if (len == 0)
    return cpk__fail(CPK_EINVAL, "track extensions: empty buffer");
  buf[0] = '\0';
  /* Inner and orthogonality tests bring batch_dot, whose diagonal is
   * batch_l2: no second pass over the per-sample gradients for it. */
  const unsigned dot = q & (CPK_Q_INNER_TEST | CPK_Q_ORTHO_TEST);
  for (size_t i = 0; i < NQ; i++) {
    if (!(q & quantities[i].flag))
      continue;
    for (const char *e = quantities[i].ext; *e;) {
      const size_t n = strcspn(e, ",");
      int seen = dot && strncmp(e, "batch_l2_grad", n) == 0 && n == 13;
      for (const char *b = buf; *b && !seen;) { /* already listed? */
        const size_t m = strcspn(b, ",");
        seen = m == n && strncmp(b, e, n) == 0;
        b += m + (b[m] == ',');
      }
      if (!seen) {
        int w = snprintf(buf + used, len - used, "%s%.*s", used ? "," : "",
                         (int)n, e);
        if (w < 0 || (size_t)w >= len - used)
          return cpk__fail(CPK_EINVAL, "track extensions: buffer too small");
        used += (size_t)w;
      }
      e += n + (e[n] == ',');
    }
  }
  return CPK_OK;
}

int cpk__track_put(cpk_results *rec, const char *name, double v) {
  cpk_tensor *t;
  int rc = cpk_tensor_new(&t, CPK_F64, 0, NULL);
  if (rc != CPK_OK)
    return rc;
  *(double *)t->data = v;
  return cpk_results_add(rec, name, t);
}

/* Add a float64 tensor of the given shape filled from x. */
static int put_array(cpk_results *rec, const char *name, int ndim,
                     const int64_t *shape, const double *x) {
  cpk_tensor *t;
  int rc = cpk_tensor_new(&t, CPK_F64, ndim, shape);
  if (rc != CPK_OK)
    return rc;
  memcpy(t->data, x, (size_t)cpk_tensor_numel(t) * sizeof *x);
  return cpk_results_add(rec, name, t);
}

static int put_param(cpk_results *rec, const char *param, const char *what,
                     double v) {
  char name[96];
  snprintf(name, sizeof name, "%s/%s", param, what);
  return cpk__track_put(rec, name, v);
}

void cpk__mean_var(const double *x, int64_t n, double *mean, double *var) {
  double s = 0.0, ss = 0.0;
  for (int64_t i = 0; i < n; i++)
    s += x[i];
  *mean = n > 0 ? s / (double)n : NAN;
  for (int64_t i = 0; i < n; i++)
    ss += (x[i] - *mean) * (x[i] - *mean);
  *var = n > 1 ? ss / (double)(n - 1) : NAN;
}

/* Sums over parameters that several quantities share. */
typedef struct sums {
  double g2;   /* ||g||^2 */
  double *l2;  /* [B] ||g_n||^2 (NULL unless needed) */
  double *dot; /* [B, B] g_n . g_m (NULL unless needed) */
  double gsnr, gsnr_count, variance, trace, tic;
} sums;

/* acc[i] += t[i] for a result of n elements, or CPK_EINVAL if absent. */
static int add_result(const cpk_results *res, const char *param,
                      const char *suffix, int64_t n, double *acc) {
  const cpk_tensor *t;
  int rc = cpk__train_need(res, param, suffix, n, &t);
  for (int64_t i = 0; rc == CPK_OK && i < n; i++)
    acc[i] += cpk_tensor_get(t, i);
  return rc;
}

/* One parameter's share of every quantity, and its per-parameter values. */
static int per_param(const cpk__track_inputs *in, int i, sums *s,
                     cpk_results *rec) {
  const cpk_model *m = in->model;
  const char *name = m->params[i].name;
  const cpk_tensor *theta = cpk__train_param(m, i)->value;
  const int64_t n = cpk_tensor_numel(theta), b = in->batch;
  const cpk_tensor *g, *sgs = NULL, *dh = NULL;
  const unsigned q = in->q;
  int rc = cpk__train_need(in->res, name, "grad", n, &g);
  double g2 = 0.0;
  if (rc != CPK_OK)
    return rc;
  for (int64_t k = 0; k < n; k++)
    g2 += cpk_tensor_get(g, k) * cpk_tensor_get(g, k);
  s->g2 += g2;
  if ((q & CPK_Q_GRAD_NORM) &&
      (rc = put_param(rec, name, "grad_norm", sqrt(g2))) != CPK_OK)
    return rc;
  if (s->dot != NULL &&
      (rc = add_result(in->res, name, "batch_dot", b * b, s->dot)) != CPK_OK)
    return rc;
  if (s->dot == NULL && s->l2 != NULL &&
      (rc = add_result(in->res, name, "batch_l2", b, s->l2)) != CPK_OK)
    return rc;
  if ((q & (CPK_Q_GSNR | CPK_Q_TIC)) &&
      (rc = cpk__train_need(in->res, name, "sum_grad_squared", n, &sgs)) !=
          CPK_OK)
    return rc;
  if ((q & (CPK_Q_HESS_TRACE | CPK_Q_TIC)) &&
      (rc = cpk__train_need(in->res, name, "diag_h", n, &dh)) != CPK_OK)
    return rc;
  if (q & CPK_Q_GSNR) { /* Cockpit's MeanGSNR, epsilon 1e-5 */
    double sum = 0.0;
    for (int64_t k = 0; k < n; k++) {
      double gk = cpk_tensor_get(g, k), gk2 = gk * gk;
      sum += gk2 / ((double)b * cpk_tensor_get(sgs, k) - gk2 + 1e-5);
    }
    s->gsnr += sum;
    s->gsnr_count += (double)n;
    if ((rc = put_param(rec, name, "gsnr", sum / (double)n)) != CPK_OK)
      return rc;
  }
  if (q & CPK_Q_VARIANCE) {
    const cpk_tensor *var;
    if ((rc = cpk__train_need(in->res, name, "variance", n, &var)) != CPK_OK)
      return rc;
    for (int64_t k = 0; k < n; k++)
      s->variance += cpk_tensor_get(var, k);
  }
  if (q & CPK_Q_HESS_TRACE) {
    double tr = 0.0;
    for (int64_t k = 0; k < n; k++)
      tr += cpk_tensor_get(dh, k);
    s->trace += tr;
    if ((rc = put_param(rec, name, "hess_trace", tr)) != CPK_OK)
      return rc;
  }
  if (q & CPK_Q_TIC) /* Cockpit's TICDiag, epsilon 1e-7 */
    for (int64_t k = 0; k < n; k++)
      s->tic +=
          (double)b * cpk_tensor_get(sgs, k) / (cpk_tensor_get(dh, k) + 1e-7);
  if (q & CPK_Q_DISTANCE) {
    double d2 = 0.0;
    for (int64_t k = 0; k < n; k++) {
      double d = cpk_tensor_get(theta, k) - in->theta0[i][k];
      d2 += d * d;
    }
    if ((rc = put_param(rec, name, "distance", sqrt(d2))) != CPK_OK)
      return rc;
  }
  if (q & CPK_Q_UPDATE_SIZE) {
    const double *d = cpk_optim_update(in->opt, i);
    double d2 = 0.0;
    for (int64_t k = 0; k < n; k++)
      d2 += d[k] * d[k];
    if ((rc = put_param(rec, name, "update_size", sqrt(d2))) != CPK_OK)
      return rc;
  }
  return CPK_OK;
}

/* Sum the per-parameter values "P/what" already in rec into `what`, as the
 * root of the sum of squares (norms) or the plain sum. */
static int put_total(cpk_results *rec, const char *what, int norm) {
  double total = 0.0;
  char suffix[48];
  snprintf(suffix, sizeof suffix, "/%s", what);
  const size_t ls = strlen(suffix);
  for (int i = 0; i < cpk_results_count(rec); i++) {
    const char *name = cpk_results_name(rec, i);
    size_t ln = strlen(name);
    if (ln > ls && strcmp(name + ln - ls, suffix) == 0) {
      double v = *(const double *)cpk_results_tensor(rec, i)->data;
      total += norm ? v * v : v;
    }
  }
  return cpk__track_put(rec, what, norm ? sqrt(total) : total);
}

/* Per-sample gradient norms ||grad l_n|| = B ||g_n||: mean, min, max and
 * counts over the log bins 10^-4, 10^-3.5, ..., 10^4 (outside values in
 * the outer bins). */
static int sample_norms(cpk_results *rec, const double *l2, int64_t b) {
  double counts[CPK_TRACK_NORM_BINS] = {0}, lo = INFINITY, hi = -INFINITY;
  double sum = 0.0;
  int64_t nb = CPK_TRACK_NORM_BINS;
  int rc;
  for (int64_t n = 0; n < b; n++) {
    double v = (double)b * sqrt(l2[n] > 0.0 ? l2[n] : 0.0);
    int bin = v > 0.0 ? (int)floor((log10(v) + 4.0) * 2.0) : 0;
    bin = bin < 0
              ? 0
              : (bin >= CPK_TRACK_NORM_BINS ? CPK_TRACK_NORM_BINS - 1 : bin);
    counts[bin] += 1.0;
    sum += v;
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  if ((rc = cpk__track_put(rec, "sample_grad_norm_mean", sum / (double)b)) ||
      (rc = cpk__track_put(rec, "sample_grad_norm_min", lo)) ||
      (rc = cpk__track_put(rec, "sample_grad_norm_max", hi)))
    return rc;
  return put_array(rec, "sample_grad_norm_hist", 1, &nb, counts);
}

/* Cockpit's norm, inner-product and orthogonality tests (formulas at
 * CPK_Q_NORM_TEST and after); NaN for B = 1 or g = 0. */
static int tests(cpk_results *rec, unsigned q, const sums *s, int64_t b) {
  const double bb = (double)b, g2 = s->g2;
  double l2sum = 0.0, p2 = 0.0;
  int rc = CPK_OK;
  for (int64_t n = 0; n < b; n++) {
    double row = 0.0;
    l2sum += s->dot ? s->dot[n * b + n] : s->l2[n];
    for (int64_t k = 0; s->dot && k < b; k++)
      row += s->dot[n * b + k];
    p2 += (bb * row) * (bb * row); /* p_n = B sum_m g_n . g_m */
  }
  if (q & CPK_Q_NORM_TEST) {
    double v1 = (bb * bb * l2sum - bb * g2) / (bb - 1.0);
    rc = cpk__track_put(rec, "norm_test", b > 1 ? sqrt(v1 / bb / g2) : NAN);
  }
  if (rc == CPK_OK && (q & CPK_Q_INNER_TEST)) {
    double vp = (p2 - bb * g2 * g2) / (bb - 1.0);
    rc = cpk__track_put(rec, "inner_test",
                        b > 1 ? sqrt(vp / bb / (g2 * g2)) : NAN);
  }
  if (rc == CPK_OK && (q & CPK_Q_ORTHO_TEST)) {
    double vo = (bb * bb * l2sum - p2 / g2) / (bb - 1.0);
    rc = cpk__track_put(rec, "ortho_test", b > 1 ? sqrt(vo / bb / g2) : NAN);
  }
  return rc;
}

int cpk__track_fill(cpk_results *rec, const cpk__track_inputs *in) {
  const unsigned q = in->q;
  const cpk_model *m = in->model;
  const int64_t b = in->batch;
  sums s = {0};
  int rc = CPK_OK;
  const int need_dot = (q & (CPK_Q_INNER_TEST | CPK_Q_ORTHO_TEST)) != 0;
  const int need_l2 = (q & (CPK_Q_SAMPLE_NORMS | CPK_Q_NORM_TEST)) != 0;
  if (need_dot &&
      (s.dot = cpk__calloc((size_t)(b * b) * sizeof *s.dot)) == NULL)
    return CPK_ENOMEM;
  if (need_l2 && !need_dot &&
      (s.l2 = cpk__calloc((size_t)b * sizeof *s.l2)) == NULL) {
    rc = CPK_ENOMEM;
    goto done;
  }
  if (q & CPK_Q_LOSS) {
    const cpk_tensor *loss = cpk_results_find(in->res, "loss");
    CPK__TRY(rc, cpk__track_put(rec, "loss", cpk_tensor_get(loss, 0)), done);
  }
  if (q & CPK_Q_ACCURACY)
    CPK__TRY(rc,
             cpk__track_put(rec, "accuracy", (double)in->correct / (double)b),
             done);
  for (int i = 0; i < m->nparams; i++)
    if (cpk__train_param(m, i)->trainable)
      CPK__TRY(rc, per_param(in, i, &s, rec), done);
  if (q & CPK_Q_GRAD_NORM)
    CPK__TRY(rc, cpk__track_put(rec, "grad_norm", sqrt(s.g2)), done);
  if (need_dot && need_l2) { /* batch_l2 is the diagonal of batch_dot */
    CPK__TRY(rc,
             (s.l2 = cpk__malloc((size_t)b * sizeof *s.l2)) ? CPK_OK
                                                            : CPK_ENOMEM,
             done);
    for (int64_t n = 0; n < b; n++)
      s.l2[n] = s.dot[n * b + n];
  }
  if (q & CPK_Q_SAMPLE_NORMS)
    CPK__TRY(rc, sample_norms(rec, s.l2, b), done);
  if (q & (CPK_Q_NORM_TEST | CPK_Q_INNER_TEST | CPK_Q_ORTHO_TEST))
    CPK__TRY(rc, tests(rec, q, &s, b), done);
  if (q & CPK_Q_GSNR)
    CPK__TRY(rc, cpk__track_put(rec, "gsnr_mean", s.gsnr / s.gsnr_count), done);
  if (q & CPK_Q_VARIANCE)
    CPK__TRY(rc, cpk__track_put(rec, "variance", s.variance), done);
  if (q & CPK_Q_HESS_TRACE)
    CPK__TRY(rc, cpk__track_put(rec, "hess_trace", s.trace), done);
  if (q & CPK_Q_TIC)
    CPK__TRY(rc, cpk__track_put(rec, "tic", s.tic), done);
  if (q & CPK_Q_HESS_MAX_EV)
    CPK__TRY(rc, cpk__track_put(rec, "hess_max_ev", in->hess_max_ev), done);
  if (q & CPK_Q_DISTANCE)
    CPK__TRY(rc, put_total(rec, "distance", 1), done);
  if (q & CPK_Q_UPDATE_SIZE)
    CPK__TRY(rc, put_total(rec, "update_size", 1), done);
  if (q & CPK_Q_GRAD_HIST_1D) {
    const int64_t nb = CPK__HIST1D_BINS;
    CPK__TRY(rc, put_array(rec, "grad_hist_1d", 1, &nb, in->sg->h1), done);
  }
  if (q & CPK_Q_GRAD_HIST_2D) {
    const int64_t shape[2] = {CPK__HIST2D_X, CPK__HIST2D_Y};
    CPK__TRY(rc, put_array(rec, "grad_hist_2d", 2, shape, in->sg->h2), done);
  }
done:
  cpk__free(s.dot);
  cpk__free(s.l2);
  return rc;
}

/* x := M^-1 y for a 3 x 3 system by Gaussian elimination with partial
 * pivoting; CPK_ERANGE when a pivot is exactly zero (singular, as numpy's
 * inv would say). */
static int solve3(double m[3][3], double y[3], double x[3]) {
  for (int c = 0; c < 3; c++) {
    int p = c;
    for (int r = c + 1; r < 3; r++)
      if (fabs(m[r][c]) > fabs(m[p][c]))
        p = r;
    if (m[p][c] == 0.0)
      return CPK_ERANGE;
    for (int k = 0; k < 3; k++) {
      double t = m[c][k];
      m[c][k] = m[p][k];
      m[p][k] = t;
    }
    double t = y[c];
    y[c] = y[p];
    y[p] = t;
    for (int r = c + 1; r < 3; r++) {
      double f = m[r][c] / m[c][c];
      for (int k = c; k < 3; k++)
        m[r][k] -= f * m[c][k];
      y[r] -= f * y[c];
    }
  }
  for (int c = 2; c >= 0; c--) {
    double s = y[c];
    for (int k = c + 1; k < 3; k++)
      s -= m[c][k] * x[k];
    x[c] = s / m[c][c];
  }
  return CPK_OK;
}

double cpk__alpha(double t, const double f[2], const double df[2],
                  const double var_f[2], const double var_df[2]) {
  /* Observations of the quadratic w0 + w1 s + w2 s^2: f(0), f(t), f'(0),
   * f'(t); Phi [3, 4] holds their coefficient vectors as columns. The
   * maximum-likelihood fit is mu = (Phi L^-1 Phi^T)^-1 Phi L^-1 y with L
   * the diagonal of the observation variances. */
  const double phi[3][4] = {{1, 1, 0, 0}, {0, t, 1, 1}, {0, t * t, 0, 2 * t}};
  const double obs[4] = {f[0], f[1], df[0], df[1]};
  double w[4] = {var_f[0], var_f[1], var_df[0], var_df[1]};
  double a[3][3], rhs[3], mu[3];
  for (int j = 0; j < 4; j++)
    w[j] = 1.0 / (w[j] == 0.0 ? 1e-10 : w[j]);
  for (int r = 0; r < 3; r++) {
    rhs[r] = 0.0;
    for (int c = 0; c < 3; c++) {
      a[r][c] = 0.0;
      for (int j = 0; j < 4; j++)
        a[r][c] += phi[r][j] * w[j] * phi[c][j];
    }
    for (int j = 0; j < 4; j++)
      rhs[r] += phi[r][j] * w[j] * obs[j];
  }
  if (solve3(a, rhs, mu) != CPK_OK)
    return t == 0.0 ? -1.0 : NAN;
  if (mu[2] < 0.0) /* concave: still going downhill where it stepped to */
    return -1.0;
  /* alpha_bar = -mu1 / mu2 is "the other side"; 0 means the minimum. */
  return 2.0 * t / (-mu[1] / mu[2]) - 1.0;
}
