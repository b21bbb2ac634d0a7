/*
 * test_forward.c: forward mode (lib/forward.c, cpk_jacobian, cpk_jvp,
 * cpk_propagate).
 *
 * Truth from outside the code under test:
 *  - per-sample input Jacobians, forward and reverse mode, against fourth-
 *    order central differences of the forward pass in float64 (1e-9 of the
 *    largest entry), for one-layer models of every layer kind of the
 *    registry and for small networks; forward against reverse to 1e-12;
 *  - Jacobian-vector products in the inputs and the parameters (each
 *    parameter alone, and everything at once) against directional central
 *    differences; param_jac_mat's beta;
 *  - the five textbook error-propagation cases: the Jacobian sigma equals
 *    the closed-form formula to 1e-12, the Monte Carlo sigma from 10^6
 *    draws is within 1% (sum) or 3% (the others) of it;
 *  - propagate: covariance = J diag(sigma^2) J^T from the Jacobian, sigma
 *    its diagonal's square root, in both modes, both sigma shapes, any
 *    chunking; seeded Monte Carlo; every error branch.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "forward.h"
#include "model.h"
#include "testutil.h"

#define N 3
#define H 1e-3       /* step of the 4-point central difference */
#define FD_RTOL 1e-9 /* against the largest entry */

typedef struct {
  const char *text; /* model file text, lines separated by '\n' */
  int ndim;
  int64_t shape[4];
  int positive; /* inputs in [0.5, ...) (log) instead of around 0 */
} net_case;

/* One-layer models of every kind in lib/layers/registry.c, then networks. */
static const net_case cases[] = {
    {"linear 4 3", 1, {4}, 0},
    {"linear 3 2 bias=false", 2, {2, 3}, 0},
    {"relu", 2, {2, 3}, 0},
    {"sigmoid", 1, {5}, 0},
    {"tanh", 1, {5}, 0},
    {"leaky_relu negative_slope=0.2", 1, {5}, 0},
    {"elu alpha=0.7", 1, {5}, 0},
    {"selu", 1, {5}, 0},
    {"logsigmoid", 1, {5}, 0},
    {"identity", 1, {4}, 0},
    {"exp", 1, {4}, 0},
    {"log", 1, {4}, 1},
    {"flatten", 3, {2, 3, 2}, 0},
    {"flatten start_dim=2", 3, {2, 3, 2}, 0},
    {"dropout p=0.3", 1, {4}, 0},
    {"conv1d 2 3 3", 2, {2, 7}, 0},
    {"conv1d 2 4 5 stride=2 padding=2", 2, {2, 9}, 0},
    {"conv2d 2 4 3,2 stride=2,1 padding=1,0", 3, {2, 5, 4}, 0},
    {"conv2d 4 2 3 groups=2 dilation=2 padding=2", 3, {4, 5, 5}, 0},
    {"conv2d 2 2 3 padding=same bias=false", 3, {2, 4, 4}, 0},
    {"conv3d 2 2 2", 4, {2, 3, 3, 3}, 0},
    {"conv_transpose1d 2 3 3", 2, {2, 4}, 0},
    {"conv_transpose1d 2 2 3 stride=2 padding=1 output_padding=1",
     2,
     {2, 5},
     0},
    {"conv_transpose2d 2 3 3 stride=2 padding=1 output_padding=1",
     3,
     {2, 3, 3},
     0},
    {"conv_transpose2d 4 4 2,3 stride=1,2 groups=4 bias=false",
     3,
     {4, 3, 2},
     0},
    {"conv_transpose3d 2 2 2 stride=2", 4, {2, 2, 2, 2}, 0},
    {"maxpool1d 2", 2, {2, 6}, 0},
    {"maxpool2d 2 stride=1", 3, {2, 4, 4}, 0},
    {"maxpool2d 3 stride=2 padding=1", 3, {2, 5, 5}, 0},
    {"maxpool3d 2", 4, {1, 4, 4, 4}, 0},
    {"avgpool1d 3 stride=2", 2, {2, 7}, 0},
    {"avgpool2d 2", 3, {2, 4, 4}, 0},
    {"avgpool2d 3 stride=2 padding=1 count_include_pad=false", 3, {2, 5, 5}, 0},
    {"avgpool3d 2", 4, {1, 4, 4, 4}, 0},
    {"adaptive_avgpool2d 2,3", 3, {2, 5, 7}, 0},
    {"zeropad2d 1", 3, {2, 3, 3}, 0},
    {"zeropad2d 1,2,0,1", 3, {2, 3, 3}, 0},
    {"batchnorm1d 4", 1, {4}, 0},
    {"batchnorm1d 3", 2, {3, 4}, 0},
    {"batchnorm2d 2 eps=0.01", 3, {2, 3, 3}, 0},
    /* networks */
    {"linear 3 5\ntanh\nlinear 5 4\nsigmoid\nlinear 4 2\nexp", 1, {3}, 0},
    {"log\nlinear 4 2 bias=false\nexp", 1, {4}, 1},
    {"conv2d 1 3 3 padding=1\ntanh\nmaxpool2d 2\nflatten\nlinear 12 3",
     3,
     {1, 4, 4},
     0},
    {"zeropad2d 1\nconv2d 2 2 2 stride=2\nlogsigmoid\navgpool2d 2\nflatten",
     3,
     {2, 4, 4},
     0},
    {"conv_transpose2d 2 1 2 stride=2\nflatten\nlinear 16 2\ntanh",
     3,
     {2, 2, 2},
     0},
    {"batchnorm1d 4\nlinear 4 3\nlogsigmoid\ndropout\nlinear 3 6", 1, {4}, 0},
    {"batchnorm2d 2\nconv2d 2 2 3\nflatten\nbatchnorm1d 8", 3, {2, 4, 4}, 0},
};
#define NCASES (int)(sizeof cases / sizeof cases[0])

/* ----------------------------------------------------------------- helpers */

/* Distinct inputs spaced at least 0.01 apart in a shuffled order, none
 * within 0.005 of 0: finite differences with steps up to 2H never cross a kink
 * of relu (and friends) or a tie of maxpool. positive: shifted into [0.5, ...).
 */
static cpk_tensor *distinct_input(cpk_dtype dt, int ndim, const int64_t *shape,
                                  int positive, uint64_t seed) {
  cpk_tensor *t;
  tu_ok(cpk_tensor_new(&t, dt, ndim, shape));
  int64_t n = cpk_tensor_numel(t);
  int64_t *perm = malloc((size_t)n * sizeof *perm);
  assert_non_null(perm);
  for (int64_t i = 0; i < n; i++)
    perm[i] = i;
  uint64_t s = seed * 2862933555777941757ULL + 3037000493ULL;
  for (int64_t i = n - 1; i > 0; i--) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    int64_t j = (int64_t)((s >> 33) % (uint64_t)(i + 1));
    int64_t k = perm[i];
    perm[i] = perm[j];
    perm[j] = k;
  }
  /* spacing at least 0.01, the values spread over about 3 */
  const double step = fmax(0.01, 3.0 / (double)n);
  for (int64_t i = 0; i < n; i++) {
    double v = positive ? 0.5 + step * (double)perm[i]
                        : step * ((double)(perm[i] - n / 2) + 0.5);
    cpk_tensor_set(t, i, v);
  }
  free(perm);
  return t;
}

/* Every parameter random: running_var in [0.5, 1.5], the rest in [-1, 1]. */
static void randomize_params(cpk_model *m, uint64_t seed) {
  for (int k = 0; k < cpk_model_num_params(m); k++) {
    const char *name;
    cpk_tensor *p;
    tu_ok(cpk_model_param(m, k, &name, &p));
    int var = strstr(name, "running_var") != NULL;
    cpk_tensor *r = tu_random(CPK_F64, p->ndim, p->shape, var ? 0.5 : -1.0,
                              var ? 1.5 : 1.0, seed + (uint64_t)k);
    for (int64_t i = 0; i < cpk_tensor_numel(p); i++)
      cpk_tensor_set(p, i, cpk_tensor_get(r, i));
    cpk_tensor_free(r);
  }
}

typedef struct {
  cpk_model *m;
  cpk_context *ctx;
  cpk_tensor *x;
  int64_t din, dout;
  int out_ndim;
} fixture;

static void setup(fixture *f, const net_case *c, cpk_dtype dt, uint64_t seed) {
  int64_t xs[5] = {N}, os[CPK_MAX_DIMS];
  memset(f, 0, sizeof *f);
  tu_ok(cpk_model_parse(&f->m, c->text, "case"));
  tu_ok(cpk_model_build(f->m, c->ndim, c->shape, dt));
  randomize_params(f->m, seed);
  tu_ok(cpk_context_new(&f->ctx, NULL));
  memcpy(xs + 1, c->shape, (size_t)c->ndim * sizeof *xs);
  f->x = distinct_input(CPK_F64, c->ndim + 1, xs, c->positive, seed + 100);
  tu_ok(cpk_model_output_shape(f->m, &f->out_ndim, os));
  f->din = f->dout = 1;
  for (int i = 0; i < c->ndim; i++)
    f->din *= c->shape[i];
  for (int i = 0; i < f->out_ndim; i++)
    f->dout *= os[i];
}

static void teardown(fixture *f) {
  cpk_tensor_free(f->x);
  cpk_context_free(f->ctx);
  cpk_model_free(f->m);
}

/* The model's output at x, as doubles [N * dout] (caller frees). */
static double *output_at(fixture *f, const cpk_tensor *x) {
  cpk__pass pass;
  tu_ok(cpk__forward_eval(&pass, f->ctx, f->m, x));
  const cpk_tensor *y = pass.acts[f->m->nlayers];
  int64_t n = cpk_tensor_numel(y);
  double *out = malloc((size_t)n * sizeof *out);
  assert_non_null(out);
  for (int64_t i = 0; i < n; i++)
    out[i] = cpk_tensor_get(y, i);
  cpk__pass_release(&pass);
  return out;
}

static const double fd_off[4] = {-2 * H, -H, H, 2 * H};
static const double fd_coef[4] = {1.0 / (12 * H), -8.0 / (12 * H),
                                  8.0 / (12 * H), -1.0 / (12 * H)};

/* d f / d x_n[i] for every (n, o, i) by 4-point central differences: one
 * input coordinate of every sample at a time (the samples are independent).
 * jac [N, dout, din] (caller frees). */
static double *fd_jacobian(fixture *f) {
  double *jac = calloc((size_t)(N * f->dout * f->din), sizeof *jac);
  cpk_tensor *xp;
  tu_ok(cpk_tensor_convert(&xp, f->x, CPK_F64));
  double *xd = xp->data;
  for (int64_t i = 0; i < f->din; i++) {
    for (int s = 0; s < 4; s++) {
      for (int n = 0; n < N; n++)
        xd[n * f->din + i] = cpk_tensor_get(f->x, n * f->din + i) + fd_off[s];
      double *y = output_at(f, xp);
      for (int n = 0; n < N; n++)
        for (int64_t o = 0; o < f->dout; o++)
          jac[(n * f->dout + o) * f->din + i] +=
              fd_coef[s] * y[n * f->dout + o];
      free(y);
    }
    for (int n = 0; n < N; n++)
      xd[n * f->din + i] = cpk_tensor_get(f->x, n * f->din + i);
  }
  cpk_tensor_free(xp);
  return jac;
}

/* The directional derivative of the batch output along the input tangent t
 * (or none) and parameter tangents u[k][v] (or NULL), for column v, by
 * 4-point central differences. out [N * dout] (caller frees). */
static double *fd_direction(fixture *f, const cpk_tensor *t,
                            cpk_tensor *const *u, int64_t v) {
  const int np = cpk_model_num_params(f->m);
  const int64_t nx = cpk_tensor_numel(f->x);
  double *out = calloc((size_t)(N * f->dout), sizeof *out);
  cpk_tensor **keep = calloc((size_t)np, sizeof *keep);
  cpk_tensor *xp;
  tu_ok(cpk_tensor_convert(&xp, f->x, CPK_F64));
  for (int k = 0; k < np; k++) {
    cpk_tensor *p;
    tu_ok(cpk_model_param(f->m, k, NULL, &p));
    tu_ok(cpk_tensor_convert(&keep[k], p, CPK_F64));
  }
  for (int s = 0; s < 4; s++) {
    for (int64_t i = 0; t != NULL && i < nx; i++)
      cpk_tensor_set(xp, i,
                     cpk_tensor_get(f->x, i) +
                         fd_off[s] * cpk_tensor_get(t, v * nx + i));
    for (int k = 0; u != NULL && k < np; k++) {
      if (u[k] == NULL)
        continue;
      cpk_tensor *p;
      tu_ok(cpk_model_param(f->m, k, NULL, &p));
      int64_t np_k = cpk_tensor_numel(p);
      for (int64_t i = 0; i < np_k; i++)
        cpk_tensor_set(p, i,
                       cpk_tensor_get(keep[k], i) +
                           fd_off[s] * cpk_tensor_get(u[k], v * np_k + i));
    }
    double *y = output_at(f, xp);
    for (int64_t i = 0; i < N * f->dout; i++)
      out[i] += fd_coef[s] * y[i];
    free(y);
  }
  for (int k = 0; k < np; k++) {
    cpk_tensor *p;
    tu_ok(cpk_model_param(f->m, k, NULL, &p));
    for (int64_t i = 0; i < cpk_tensor_numel(p); i++)
      cpk_tensor_set(p, i, cpk_tensor_get(keep[k], i));
    cpk_tensor_free(keep[k]);
  }
  free(keep);
  cpk_tensor_free(xp);
  return out;
}

/* The first line of a case, for messages. */
static const char *label(const net_case *c) {
  static char buf[128];
  size_t n = strcspn(c->text, "\n");
  snprintf(buf, sizeof buf, "%.*s%s", (int)(n < 100 ? n : 100), c->text,
           c->text[n] ? " ..." : "");
  return buf;
}

/* The same values in C order, whatever the shapes (jacobian [N, *out, *in]
 * against a flat [N, D_out, D_in]). */
static void assert_same_values(const cpk_tensor *a, const cpk_tensor *b,
                               double rtol, const char *what) {
  assert_int_equal(cpk_tensor_numel(a), cpk_tensor_numel(b));
  int64_t n = cpk_tensor_numel(a);
  double *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
  for (int64_t i = 0; i < n; i++) {
    x[i] = cpk_tensor_get(a, i);
    y[i] = cpk_tensor_get(b, i);
  }
  tu_assert_close_array(x, y, n, rtol, 0.0, what);
  free(x);
  free(y);
}

static cpk_tensor *flat_jacobian(const fixture *f) {
  int64_t s[3] = {N, f->dout, f->din};
  cpk_tensor *t;
  tu_ok(cpk_tensor_new(&t, f->m->dtype, 3, s));
  return t;
}

/* ----------------------------------------------------------- input Jacobian */

static void check_input_jacobian(const net_case *c, uint64_t seed) {
  fixture f;
  char what[256];
  setup(&f, c, CPK_F64, seed);
  double *fd = fd_jacobian(&f);
  cpk_tensor *jf = flat_jacobian(&f), *jr = flat_jacobian(&f);
  cpk__pass pass;
  tu_ok(cpk__forward_eval(&pass, f.ctx, f.m, f.x));
  tu_ok(cpk__input_jacobian(&pass, 0, NULL, jf));
  tu_ok(cpk__input_jacobian(&pass, 1, NULL, jr));
  const int64_t total = N * f.dout * f.din;
  snprintf(what, sizeof what, "%s: forward mode vs finite differences",
           label(c));
  tu_assert_close_array(jf->data, fd, total, FD_RTOL, 0.0, what);
  snprintf(what, sizeof what, "%s: reverse mode vs finite differences",
           label(c));
  tu_assert_close_array(jr->data, fd, total, FD_RTOL, 0.0, what);
  snprintf(what, sizeof what, "%s: reverse vs forward", label(c));
  tu_assert_close(jr, jf, 1e-12, 0.0, what);

  /* One column per chunk gives the same numbers. */
  cpk_tensor *j1 = flat_jacobian(&f);
  size_t budget = f.ctx->work_bytes;
  f.ctx->work_bytes = 1;
  tu_ok(cpk__input_jacobian(&pass, 0, NULL, j1));
  snprintf(what, sizeof what, "%s: forward, one column per chunk", label(c));
  tu_assert_close(j1, jf, 1e-13, 0.0, what);
  tu_ok(cpk__input_jacobian(&pass, 1, NULL, j1));
  snprintf(what, sizeof what, "%s: reverse, one row per chunk", label(c));
  tu_assert_close(j1, jr, 1e-13, 0.0, what);
  f.ctx->work_bytes = budget;
  cpk__pass_release(&pass);

  /* The public entry: the same values in [N, *out, *in], when that fits. */
  const int axes = 1 + f.out_ndim + c->ndim;
  for (int mode = 0; mode < 3; mode++) {
    cpk_tensor *jac = NULL;
    int rc = cpk_jacobian(f.ctx, f.m, f.x, (cpk_jacobian_mode)mode, &jac);
    if (axes > CPK_MAX_DIMS) {
      assert_int_equal(rc, CPK_EINVAL);
      assert_non_null(strstr(cpk_last_error(), "axes"));
      assert_null(jac);
      continue;
    }
    tu_ok(rc);
    assert_int_equal(jac->ndim, axes);
    assert_int_equal(jac->shape[0], N);
    assert_int_equal(jac->shape[axes - 1], c->shape[c->ndim - 1]);
    snprintf(what, sizeof what, "%s: cpk_jacobian mode %d", label(c), mode);
    assert_same_values(jac, jf, 1e-12, what);
    cpk_tensor_free(jac);
  }
  cpk_tensor_free(j1);
  cpk_tensor_free(jf);
  cpk_tensor_free(jr);
  free(fd);
  teardown(&f);
}

static void test_input_jacobians(void **state) {
  (void)state;
  for (int i = 0; i < NCASES; i++)
    check_input_jacobian(&cases[i], 10 + 7 * (uint64_t)i);
}

/* -------------------------------------------------------------------- JVPs */

/* A random tangent [V, *shape] (or shape when v == 0). */
static cpk_tensor *tangent(int64_t v, int ndim, const int64_t *shape,
                           uint64_t seed) {
  int64_t s[CPK_MAX_DIMS];
  int k = 0;
  if (v > 0)
    s[k++] = v;
  memcpy(s + k, shape, (size_t)ndim * sizeof *s);
  return tu_random(CPK_F64, ndim + k, s, -1, 1, seed);
}

static void check_jvps(const net_case *c, uint64_t seed) {
  fixture f;
  char what[256];
  const int64_t V = 2;
  setup(&f, c, CPK_F64, seed);
  const int np = cpk_model_num_params(f.m);
  int64_t xs[5] = {N};
  memcpy(xs + 1, c->shape, (size_t)c->ndim * sizeof *xs);
  cpk_tensor *t = tangent(V, c->ndim + 1, xs, seed + 1), *out = NULL;

  /* Input tangents: J t against the Jacobian and against differences. */
  cpk_tensor *jac = flat_jacobian(&f);
  cpk__pass pass;
  tu_ok(cpk__forward_eval(&pass, f.ctx, f.m, f.x));
  tu_ok(cpk__input_jacobian(&pass, 0, NULL, jac));
  cpk__pass_release(&pass);
  tu_ok(cpk_jvp(f.ctx, f.m, f.x, t, NULL, &out));
  assert_int_equal(out->shape[0], V);
  assert_int_equal(out->shape[1], N);
  double *want = calloc((size_t)(V * N * f.dout), sizeof *want);
  for (int64_t v = 0; v < V; v++)
    for (int n = 0; n < N; n++)
      for (int64_t o = 0; o < f.dout; o++)
        for (int64_t i = 0; i < f.din; i++)
          want[(v * N + n) * f.dout + o] +=
              cpk_tensor_get(jac, (n * f.dout + o) * f.din + i) *
              cpk_tensor_get(t, (v * N + n) * f.din + i);
  snprintf(what, sizeof what, "%s: J_x t vs the Jacobian", label(c));
  tu_assert_close_array(out->data, want, V * N * f.dout, 1e-12, 0.0, what);
  double *fd = fd_direction(&f, t, NULL, 1);
  snprintf(what, sizeof what, "%s: J_x t vs finite differences", label(c));
  tu_assert_close_array((double *)out->data + N * f.dout, fd, N * f.dout,
                        FD_RTOL, 0.0, what);
  free(fd);
  cpk_tensor_free(out);
  /* One tangent given as [N, *in]. */
  cpk_tensor one;
  cpk__tensor_view(&one, CPK_F64, t->data, c->ndim + 1, xs);
  tu_ok(cpk_jvp(f.ctx, f.m, f.x, &one, NULL, &out));
  assert_int_equal(out->shape[0], 1);
  snprintf(what, sizeof what, "%s: J_x t, V = 1", label(c));
  tu_assert_close_array(out->data, want, N * f.dout, 1e-12, 0.0, what);
  cpk_tensor_free(out);
  free(want);

  /* Parameter tangents, one parameter at a time (u holds only that one),
   * then all of them together with t. */
  cpk_tensor **all = calloc((size_t)(np ? np : 1), sizeof *all);
  cpk_tensor **u = calloc((size_t)(np ? np : 1), sizeof *u);
  int all_supported = 1, any = 0;
  for (int k = 0; k < np; k++) {
    const char *name;
    cpk_tensor *p;
    tu_ok(cpk_model_param(f.m, k, &name, &p));
    const cpk__layer *l = f.m->params[k].layer;
    if (!l->params[f.m->params[k].slot].trainable)
      continue;
    all[k] = tangent(V, p->ndim, p->shape, seed + 10 + (uint64_t)k);
    u[k] = all[k];
    int rc = cpk_jvp(f.ctx, f.m, f.x, NULL, (const cpk_tensor *const *)u, &out);
    if (l->kind->param_jac_mat == NULL) {
      assert_int_equal(rc, CPK_ENOTSUP);
      assert_non_null(strstr(cpk_last_error(), name));
      print_message("# %s: %s has no param_jac_mat yet (skipped)\n", label(c),
                    name);
      all_supported = 0;
      u[k] = NULL;
      continue;
    }
    tu_ok(rc);
    any = 1;
    for (int64_t v = 0; v < V; v++) {
      fd = fd_direction(&f, NULL, u, v);
      snprintf(what, sizeof what, "%s: J_theta u for %s, column %lld", label(c),
               name, (long long)v);
      tu_assert_close_array((double *)out->data + v * N * f.dout, fd,
                            N * f.dout, FD_RTOL, 1e-13, what);
      free(fd);
    }
    cpk_tensor_free(out);
    /* V = 1, given as shape S alone. */
    cpk_tensor *u1 = tangent(0, p->ndim, p->shape, seed + 20 + (uint64_t)k);
    u[k] = u1;
    tu_ok(cpk_jvp(f.ctx, f.m, f.x, NULL, (const cpk_tensor *const *)u, &out));
    assert_int_equal(out->shape[0], 1);
    fd = fd_direction(&f, NULL, u, 0);
    snprintf(what, sizeof what, "%s: J_theta u for %s, V = 1", label(c), name);
    tu_assert_close_array(out->data, fd, N * f.dout, FD_RTOL, 1e-13, what);
    free(fd);
    cpk_tensor_free(out);
    cpk_tensor_free(u1);
    u[k] = NULL;
  }
  if (any && all_supported) {
    /* Everything together: J_x t + sum_p J_theta_p u_p. */
    tu_ok(cpk_jvp(f.ctx, f.m, f.x, t, (const cpk_tensor *const *)all, &out));
    for (int64_t v = 0; v < V; v++) {
      fd = fd_direction(&f, t, all, v);
      snprintf(what, sizeof what, "%s: J_x t + J_theta u, column %lld",
               label(c), (long long)v);
      tu_assert_close_array((double *)out->data + v * N * f.dout, fd,
                            N * f.dout, FD_RTOL, 1e-13, what);
      free(fd);
    }
    cpk_tensor_free(out);
  }
  for (int k = 0; k < np; k++)
    cpk_tensor_free(all[k]);
  free(all);
  free(u);
  /* No tangent at all: zero. */
  tu_ok(cpk_jvp(f.ctx, f.m, f.x, NULL, NULL, &out));
  for (int64_t i = 0; i < cpk_tensor_numel(out); i++)
    assert_true(cpk_tensor_get(out, i) == 0.0);
  cpk_tensor_free(out);
  cpk_tensor_free(jac);
  cpk_tensor_free(t);
  teardown(&f);
}

static void test_jvps(void **state) {
  (void)state;
  for (int i = 0; i < NCASES; i++)
    check_jvps(&cases[i], 500 + 11 * (uint64_t)i);
}

/* param_jac_mat: beta = 0 never reads out (NaN there stays harmless),
 * beta = 1 accumulates, other betas scale, for every kind that has it. */
static void test_param_jac_mat_beta(void **state) {
  (void)state;
  for (int ci = 0; ci < NCASES; ci++) {
    const net_case *c = &cases[ci];
    fixture f;
    char what[256];
    if (strchr(c->text, '\n') != NULL)
      continue; /* one-layer models only */
    setup(&f, c, CPK_F64, 900 + (uint64_t)ci);
    cpk__layer *l = f.m->layers[0];
    cpk__pass pass;
    tu_ok(cpk__forward_eval(&pass, f.ctx, f.m, f.x));
    for (int p = 0; p < l->nparams; p++) {
      if (!l->params[p].trainable || l->kind->param_jac_mat == NULL)
        continue;
      const int64_t V = 3;
      cpk_tensor *u =
          tangent(V, l->params[p].ndim, l->params[p].shape, 77 + (uint64_t)p);
      cpk_tensor *ref, *out, *base;
      tu_ok(cpk__block_new(&ref, CPK_F64, V, N, l->out_ndim, l->out_shape));
      tu_ok(cpk__block_new(&out, CPK_F64, V, N, l->out_ndim, l->out_shape));
      tu_ok(l->kind->param_jac_mat(l, f.ctx, p, f.x, u, 0.0, ref));
      const int64_t m = cpk_tensor_numel(ref);
      for (int64_t i = 0; i < m; i++)
        cpk_tensor_set(out, i, NAN);
      tu_ok(l->kind->param_jac_mat(l, f.ctx, p, f.x, u, 0.0, out));
      snprintf(what, sizeof what, "%s: %s, beta 0 over NaN", label(c),
               l->params[p].name);
      tu_assert_close(out, ref, 0.0, 0.0, what);
      base = tu_random(CPK_F64, ref->ndim, ref->shape, -1, 1, 5);
      double *want = malloc((size_t)m * sizeof *want);
      const double betas[2] = {1.0, -0.5};
      for (int b = 0; b < 2; b++) {
        for (int64_t i = 0; i < m; i++) {
          cpk_tensor_set(out, i, cpk_tensor_get(base, i));
          want[i] = betas[b] * cpk_tensor_get(base, i) + cpk_tensor_get(ref, i);
        }
        tu_ok(l->kind->param_jac_mat(l, f.ctx, p, f.x, u, betas[b], out));
        snprintf(what, sizeof what, "%s: %s, beta %g", label(c),
                 l->params[p].name, betas[b]);
        tu_assert_close_array(out->data, want, m, 1e-14, 1e-15, what);
      }
      free(want);
      cpk_tensor_free(base);
      cpk_tensor_free(u);
      cpk_tensor_free(ref);
      cpk_tensor_free(out);
    }
    cpk__pass_release(&pass);
    teardown(&f);
  }
}

/* Batch norm on batch statistics couples the samples: no per-sample
 * Jacobian (ENOTSUP), but the JVP of the batch output is defined and
 * matches directional differences of the whole batch. */
static void test_coupled_batchnorm(void **state) {
  (void)state;
  const net_case c = {
      "batchnorm1d 3 track_running_stats=false\nlinear 3 2", 1, {3}, 0};
  fixture f;
  setup(&f, &c, CPK_F64, 3);
  /* inputs of unit spread: the batch statistics move slowly under the
   * finite-difference steps */
  int64_t xs2[2] = {N, 3};
  cpk_tensor_free(f.x);
  f.x = tu_random(CPK_F64, 2, xs2, -1, 1, 17);
  cpk_tensor *jac = NULL;
  cpk_results *res = NULL;
  int64_t s = 3;
  cpk_tensor *sigma = tu_random(CPK_F64, 1, &s, 0.1, 0.2, 1);
  assert_int_equal(cpk_jacobian(f.ctx, f.m, f.x, CPK_JACOBIAN_AUTO, &jac),
                   CPK_ENOTSUP);
  assert_null(jac);
  assert_non_null(strstr(cpk_last_error(), "track_running_stats=false"));
  assert_non_null(strstr(cpk_last_error(), "case:1"));
  assert_int_equal(cpk_propagate(f.ctx, f.m, f.x, sigma, 0, &res), CPK_ENOTSUP);
  assert_null(res);
  int64_t xs[3] = {2, N, 3};
  cpk_tensor *t = tu_random(CPK_F64, 3, xs, -1, 1, 4), *out;
  tu_ok(cpk_jvp(f.ctx, f.m, f.x, t, NULL, &out));
  for (int64_t v = 0; v < 2; v++) {
    double *fd = fd_direction(&f, t, NULL, v);
    tu_assert_close_array((double *)out->data + v * N * f.dout, fd, N * f.dout,
                          FD_RTOL, 0.0, "coupled batch JVP");
    free(fd);
  }
  cpk_tensor_free(out);
  cpk_tensor_free(t);
  cpk_tensor_free(sigma);
  teardown(&f);
}

/* Float32 models give float32 Jacobians close to the float64 ones. */
static void test_float32(void **state) {
  (void)state;
  const net_case *c = &cases[NCASES - 5]; /* conv, tanh, maxpool, linear */
  fixture f64, f32;
  setup(&f64, c, CPK_F64, 42);
  setup(&f32, c, CPK_F32, 42);
  for (int mode = 1; mode <= 2; mode++) {
    cpk_tensor *a, *b;
    tu_ok(cpk_jacobian(f64.ctx, f64.m, f64.x, (cpk_jacobian_mode)mode, &a));
    tu_ok(cpk_jacobian(f32.ctx, f32.m, f32.x, (cpk_jacobian_mode)mode, &b));
    assert_int_equal(b->dtype, CPK_F32);
    assert_same_values(b, a, 1e-5, "float32 Jacobian");
    cpk_tensor_free(a);
    cpk_tensor_free(b);
  }
  /* JVPs: float64 tangents are converted to a float32 model's dtype. */
  const int np = cpk_model_num_params(f64.m);
  cpk_tensor **u = calloc((size_t)np, sizeof *u);
  for (int k = 0; k < np; k++) {
    cpk_tensor *p;
    tu_ok(cpk_model_param(f64.m, k, NULL, &p));
    if (f64.m->params[k].layer->kind->param_jac_mat != NULL)
      u[k] = tangent(2, p->ndim, p->shape, 60 + (uint64_t)k);
  }
  int64_t xs[5] = {2, N};
  memcpy(xs + 2, c->shape, (size_t)c->ndim * sizeof *xs);
  cpk_tensor *t = tu_random(CPK_F64, c->ndim + 2, xs, -1, 1, 61), *a, *b;
  tu_ok(cpk_jvp(f64.ctx, f64.m, f64.x, t, (const cpk_tensor *const *)u, &a));
  tu_ok(cpk_jvp(f32.ctx, f32.m, f32.x, t, (const cpk_tensor *const *)u, &b));
  assert_int_equal(b->dtype, CPK_F32);
  tu_assert_close(b, a, 1e-5, 0.0, "float32 JVP");
  cpk_tensor_free(a);
  cpk_tensor_free(b);
  cpk_tensor_free(t);
  for (int k = 0; k < np; k++)
    cpk_tensor_free(u[k]);
  free(u);
  teardown(&f64);
  teardown(&f32);
}

/* ------------------------------------------------------- textbook examples */

static const double TX = 2.0, TY = 3.0, TSX = 0.1, TSY = 0.1;

typedef struct {
  const char *name;
  int logexp;
  double a, b;
  int kind; /* 0 sum/difference, 1 product/quotient, 2 power */
  double mc_rtol;
} textbook;

static void test_textbook(void **state) {
  (void)state;
  const textbook t[] = {
      {"x + y", 0, 1, 1, 0, 0.01},     {"x - y", 0, 1, -1, 0, 0.01},
      {"x * y", 1, 1, 1, 1, 0.03},     {"x / y", 1, 1, -1, 1, 0.03},
      {"x^2 * y^3", 1, 2, 3, 2, 0.03},
  };
  const int64_t xshape[2] = {1, 2}, two = 2;
  cpk_tensor *x, *sigma;
  cpk_context *ctx;
  tu_ok(cpk_tensor_new(&x, CPK_F64, 2, xshape));
  tu_ok(cpk_tensor_new(&sigma, CPK_F64, 1, &two));
  tu_ok(cpk_context_new(&ctx, NULL));
  cpk_tensor_set(x, 0, TX);
  cpk_tensor_set(x, 1, TY);
  cpk_tensor_set(sigma, 0, TSX);
  cpk_tensor_set(sigma, 1, TSY);
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    cpk_model *m;
    cpk_tensor *w;
    cpk_results *res;
    tu_ok(cpk_model_new(&m));
    if (t[i].logexp)
      tu_ok(cpk_model_add_line(m, "log"));
    tu_ok(cpk_model_add_line(m, "linear 2 1 bias=false"));
    if (t[i].logexp)
      tu_ok(cpk_model_add_line(m, "exp"));
    tu_ok(cpk_model_build(m, 1, &two, CPK_F64));
    tu_ok(cpk_model_param(m, 0, NULL, &w));
    cpk_tensor_set(w, 0, t[i].a);
    cpk_tensor_set(w, 1, t[i].b);
    tu_ok(cpk_propagate(ctx, m, x, sigma, 1000000, &res));
    double q = cpk_tensor_get(cpk_results_find(res, "output"), 0);
    double qwant = t[i].logexp ? pow(TX, t[i].a) * pow(TY, t[i].b)
                               : t[i].a * TX + t[i].b * TY;
    double formula;
    if (t[i].kind == 0)
      formula = sqrt(TSX * TSX + TSY * TSY);
    else if (t[i].kind == 1)
      formula = fabs(q) * sqrt(pow(TSX / TX, 2) + pow(TSY / TY, 2));
    else
      formula =
          fabs(q) * sqrt(pow(t[i].a * TSX / TX, 2) + pow(t[i].b * TSY / TY, 2));
    double js = cpk_tensor_get(cpk_results_find(res, "sigma"), 0);
    double mc = cpk_tensor_get(cpk_results_find(res, "mc_sigma"), 0);
    double mcm = cpk_tensor_get(cpk_results_find(res, "mc_mean"), 0);
    double cov = cpk_tensor_get(cpk_results_find(res, "covariance"), 0);
    print_message("# %-10s q %-10.6g formula %.6f jacobian %.6f mc %.6f "
                  "(%+.2f%%) mc mean %.6g\n",
                  t[i].name, q, formula, js, mc, 100 * (mc / formula - 1), mcm);
    char what[96];
    snprintf(what, sizeof what, "%s: q", t[i].name);
    tu_assert_close_array(&q, &qwant, 1, 1e-14, 0, what);
    snprintf(what, sizeof what, "%s: Jacobian sigma vs formula", t[i].name);
    tu_assert_close_array(&js, &formula, 1, 1e-12, 0, what);
    double f2 = formula * formula;
    snprintf(what, sizeof what, "%s: covariance", t[i].name);
    tu_assert_close_array(&cov, &f2, 1, 1e-12, 0, what);
    snprintf(what, sizeof what, "%s: Monte Carlo sigma vs formula", t[i].name);
    tu_assert_close_array(&mc, &formula, 1, t[i].mc_rtol, 0, what);
    cpk_results_free(res);
    cpk_model_free(m);
  }
  cpk_context_free(ctx);
  cpk_tensor_free(x);
  cpk_tensor_free(sigma);
}

/* -------------------------------------------------------------- propagate */

static void check_propagate(const net_case *c, int per_sample, size_t budget,
                            uint64_t seed) {
  fixture f;
  char what[256];
  setup(&f, c, CPK_F64, seed);
  if (budget)
    f.ctx->work_bytes = budget;
  int64_t ss[5] = {N};
  memcpy(ss + 1, c->shape, (size_t)c->ndim * sizeof *ss);
  cpk_tensor *sigma =
      per_sample ? tu_random(CPK_F64, c->ndim + 1, ss, 0.0, 0.3, seed)
                 : tu_random(CPK_F64, c->ndim, c->shape, 0.0, 0.3, seed);
  cpk_results *res;
  tu_ok(cpk_propagate(f.ctx, f.m, f.x, sigma, 0, &res));
  assert_int_equal(cpk_results_count(res), 3);
  assert_null(cpk_results_find(res, "mc_mean"));
  cpk_tensor *jac = flat_jacobian(&f);
  cpk__pass pass;
  tu_ok(cpk__forward_eval(&pass, f.ctx, f.m, f.x));
  tu_ok(cpk__input_jacobian(&pass, 0, NULL, jac));
  const cpk_tensor *out = cpk_results_find(res, "output");
  snprintf(what, sizeof what, "%s: output", label(c));
  tu_assert_close(out, pass.acts[f.m->nlayers], 0.0, 0.0, what);
  cpk__pass_release(&pass);
  const cpk_tensor *cov = cpk_results_find(res, "covariance");
  const cpk_tensor *sd = cpk_results_find(res, "sigma");
  assert_int_equal(cov->ndim, 3);
  assert_int_equal(cov->shape[0], N);
  assert_int_equal(cov->shape[1], f.dout);
  assert_int_equal(cov->shape[2], f.dout);
  assert_int_equal(sd->ndim, out->ndim);
  const int64_t dd = f.dout * f.dout;
  double *want = calloc((size_t)(N * dd), sizeof *want);
  double *wsd = calloc((size_t)(N * f.dout), sizeof *wsd);
  for (int n = 0; n < N; n++)
    for (int64_t o = 0; o < f.dout; o++) {
      for (int64_t p = 0; p < f.dout; p++)
        for (int64_t i = 0; i < f.din; i++) {
          double s = cpk_tensor_get(sigma, (per_sample ? n * f.din : 0) + i);
          want[n * dd + o * f.dout + p] +=
              cpk_tensor_get(jac, (n * f.dout + o) * f.din + i) *
              cpk_tensor_get(jac, (n * f.dout + p) * f.din + i) * s * s;
        }
      wsd[n * f.dout + o] = sqrt(want[n * dd + o * f.dout + o]);
    }
  snprintf(what, sizeof what, "%s: covariance (%s sigma, budget %zu)", label(c),
           per_sample ? "per-sample" : "shared", budget);
  tu_assert_close_array(cov->data, want, N * dd, 1e-12, 0.0, what);
  snprintf(what, sizeof what, "%s: sigma", label(c));
  tu_assert_close_array(sd->data, wsd, N * f.dout, 1e-12, 0.0, what);
  free(want);
  free(wsd);
  cpk_tensor_free(jac);
  cpk_results_free(res);
  cpk_tensor_free(sigma);
  teardown(&f);
}

static void test_propagate_covariance(void **state) {
  (void)state;
  for (int i = 0; i < NCASES; i++) {
    check_propagate(&cases[i], i % 2, 0, 300 + (uint64_t)i);
  }
  /* forward (D_in < D_out) and reverse (D_in >= D_out) paths, chunked */
  const net_case wide = {"linear 2 5\ntanh\nlinear 5 4", 1, {2}, 0};
  const net_case narrow = {"linear 6 4\nsigmoid\nlinear 4 3", 1, {6}, 0};
  for (int per = 0; per < 2; per++) {
    check_propagate(&wide, per, 0, 11);
    check_propagate(&wide, per, 1, 12);
    check_propagate(&narrow, per, 0, 13);
    check_propagate(&narrow, per, 1, 14);
  }
}

/* Monte Carlo on a linear model: the mean is f(x) and the standard deviation
 * the first-order one, within a few standard errors; the draws are seeded
 * and do not depend on the chunking. */
static void test_propagate_monte_carlo(void **state) {
  (void)state;
  const net_case c = {"linear 3 2", 1, {3}, 0};
  const int64_t S = 40000;
  fixture f;
  setup(&f, &c, CPK_F64, 8);
  int64_t ss[2] = {N, 3};
  cpk_tensor *sigma = tu_random(CPK_F64, 2, ss, 0.1, 0.5, 9);
  cpk_results *a, *b, *d;
  tu_ok(cpk_propagate(f.ctx, f.m, f.x, sigma, S, &a));
  assert_int_equal(cpk_results_count(a), 5);
  const cpk_tensor *out = cpk_results_find(a, "output");
  const cpk_tensor *sd = cpk_results_find(a, "sigma");
  const cpk_tensor *mm = cpk_results_find(a, "mc_mean");
  const cpk_tensor *ms = cpk_results_find(a, "mc_sigma");
  assert_int_equal(mm->ndim, out->ndim);
  assert_int_equal(ms->shape[1], out->shape[1]);
  for (int64_t i = 0; i < N * 2; i++) {
    double s = cpk_tensor_get(sd, i);
    assert_true(fabs(cpk_tensor_get(mm, i) - cpk_tensor_get(out, i)) <
                5 * s / sqrt((double)S));
    assert_true(fabs(cpk_tensor_get(ms, i) - s) < 5 * s / sqrt(2.0 * S));
  }
  /* the same seed again, and in chunks of one draw: the same numbers */
  tu_ok(cpk_propagate(f.ctx, f.m, f.x, sigma, S, &b));
  tu_assert_close(cpk_results_find(b, "mc_sigma"), ms, 0.0, 0.0,
                  "same seed: mc_sigma");
  tu_assert_close(cpk_results_find(b, "mc_mean"), mm, 0.0, 0.0,
                  "same seed: mc_mean");
  cpk_results_free(b);
  f.ctx->work_bytes = 1;
  tu_ok(cpk_propagate(f.ctx, f.m, f.x, sigma, 2000, &b));
  f.ctx->work_bytes = (size_t)64 << 20;
  tu_ok(cpk_propagate(f.ctx, f.m, f.x, sigma, 2000, &d));
  tu_assert_close(cpk_results_find(b, "mc_sigma"),
                  cpk_results_find(d, "mc_sigma"), 1e-12, 0.0,
                  "chunked draws: mc_sigma");
  tu_assert_close(cpk_results_find(b, "mc_mean"),
                  cpk_results_find(d, "mc_mean"), 1e-12, 0.0,
                  "chunked draws: mc_mean");
  cpk_results_free(b);
  cpk_results_free(d);
  /* another seed: other draws */
  cpk_context *ctx2;
  cpk_context_options o = {.seed = 1};
  tu_ok(cpk_context_new(&ctx2, &o));
  tu_ok(cpk_propagate(ctx2, f.m, f.x, sigma, S, &b));
  assert_true(cpk_tensor_get(cpk_results_find(b, "mc_mean"), 0) !=
              cpk_tensor_get(mm, 0));
  cpk_results_free(b);
  cpk_context_free(ctx2);
  cpk_results_free(a);
  cpk_tensor_free(sigma);
  teardown(&f);
}

/* ------------------------------------------------------------------ errors */

static void expect_fail(int rc, int status, const char *needle) {
  if (rc != status) {
    print_error("expected %s, got %s: %s\n", cpk_err_name(status),
                cpk_err_name(rc), cpk_last_error());
    fail();
  }
  if (needle != NULL && strstr(cpk_last_error(), needle) == NULL) {
    print_error("expected \"%s\" in the message: %s\n", needle,
                cpk_last_error());
    fail();
  }
}

static void test_errors(void **state) {
  (void)state;
  const net_case c = {"linear 3 2\ntanh", 1, {3}, 0};
  fixture f;
  setup(&f, &c, CPK_F64, 1);
  cpk_results *res = NULL;
  cpk_tensor *jac = NULL, *out = NULL;
  int64_t s3 = 3, s2 = 2, s23[2] = {2, 3}, s43[2] = {4, 3};
  cpk_tensor *good = tu_random(CPK_F64, 1, &s3, 0.1, 0.2, 1);
  /* sigma: shape, sign, finiteness, dtype */
  cpk_tensor *bad = tu_random(CPK_F64, 1, &s2, 0.1, 0.2, 1);
  expect_fail(cpk_propagate(f.ctx, f.m, f.x, bad, 0, &res), CPK_ESHAPE,
              "sigma: expected shape (3,) (input_shape) or (3, 3)");
  cpk_tensor_free(bad);
  bad = tu_random(CPK_F64, 2, s23, 0.1, 0.2, 1);
  expect_fail(cpk_propagate(f.ctx, f.m, f.x, bad, 0, &res), CPK_ESHAPE,
              "got (2, 3)");
  cpk_tensor_free(bad);
  bad = tu_random(CPK_F64, 2, s43, 0.1, 0.2, 1);
  expect_fail(cpk_propagate(f.ctx, f.m, f.x, bad, 0, &res), CPK_ESHAPE,
              "sigma");
  cpk_tensor_free(bad);
  tu_ok(cpk_tensor_convert(&bad, good, CPK_F64));
  cpk_tensor_set(bad, 1, -0.5);
  expect_fail(cpk_propagate(f.ctx, f.m, f.x, bad, 0, &res), CPK_ERANGE,
              "sigma: element 1 is -0.5");
  cpk_tensor_set(bad, 1, NAN);
  expect_fail(cpk_propagate(f.ctx, f.m, f.x, bad, 0, &res), CPK_ENONFINITE,
              "sigma");
  cpk_tensor_set(bad, 1, INFINITY);
  expect_fail(cpk_propagate(f.ctx, f.m, f.x, bad, 0, &res), CPK_ENONFINITE,
              "sigma");
  cpk_tensor_free(bad);
  tu_ok(cpk_tensor_new(&bad, CPK_I64, 1, &s3));
  expect_fail(cpk_propagate(f.ctx, f.m, f.x, bad, 0, &res), CPK_EINVAL,
              "sigma: expected float32 or float64, got int64");
  cpk_tensor_free(bad);
  expect_fail(cpk_propagate(f.ctx, f.m, f.x, NULL, 0, &res), CPK_EINVAL,
              "sigma");
  /* zero sigma is allowed: zero output sigma */
  cpk_tensor *zero;
  tu_ok(cpk_tensor_new(&zero, CPK_F32, 1, &s3));
  tu_ok(cpk_propagate(f.ctx, f.m, f.x, zero, 2, &res));
  for (int64_t i = 0; i < N * 2; i++) {
    assert_true(cpk_tensor_get(cpk_results_find(res, "sigma"), i) == 0.0);
    assert_true(cpk_tensor_get(cpk_results_find(res, "mc_sigma"), i) == 0.0);
  }
  cpk_results_free(res);
  res = NULL;
  cpk_tensor_free(zero);
  /* samples */
  expect_fail(cpk_propagate(f.ctx, f.m, f.x, good, 1, &res), CPK_EINVAL,
              "at least 2");
  expect_fail(cpk_propagate(f.ctx, f.m, f.x, good, -3, &res), CPK_EINVAL,
              "samples");
  assert_null(res);
  /* inputs */
  int64_t s24[2] = {2, 4};
  cpk_tensor *wrong = tu_random(CPK_F64, 2, s24, -1, 1, 2);
  expect_fail(cpk_jacobian(f.ctx, f.m, wrong, CPK_JACOBIAN_AUTO, &jac),
              CPK_ESHAPE,
              "input: expected shape (N, ...) = (2, 3), got (2, 4)");
  expect_fail(cpk_propagate(f.ctx, f.m, wrong, good, 0, &res), CPK_ESHAPE,
              "input");
  expect_fail(cpk_jvp(f.ctx, f.m, wrong, NULL, NULL, &out), CPK_ESHAPE,
              "input");
  cpk_tensor_free(wrong);
  cpk_tensor *nan_in;
  tu_ok(cpk_tensor_convert(&nan_in, f.x, CPK_F64));
  cpk_tensor_set(nan_in, 4, NAN);
  expect_fail(cpk_jacobian(f.ctx, f.m, nan_in, CPK_JACOBIAN_FORWARD, &jac),
              CPK_ENONFINITE, "input");
  cpk_tensor_free(nan_in);
  expect_fail(cpk_jacobian(f.ctx, f.m, f.x, (cpk_jacobian_mode)7, &jac),
              CPK_EINVAL, "mode");
  assert_null(jac);
  /* tangents */
  int64_t ts[3] = {2, N, 4};
  cpk_tensor *t = tu_random(CPK_F64, 3, ts, -1, 1, 3);
  expect_fail(cpk_jvp(f.ctx, f.m, f.x, t, NULL, &out), CPK_ESHAPE,
              "input tangent: expected shape (2, 3, 3), got (2, 3, 4)");
  cpk_tensor_free(t);
  const int64_t ws[3] = {2, 2, 3}, bs[2] = {3, 2};
  cpk_tensor *u[2] = {tu_random(CPK_F64, 3, ws, -1, 1, 4),
                      tu_random(CPK_F64, 2, bs, -1, 1, 5)};
  expect_fail(
      cpk_jvp(f.ctx, f.m, f.x, NULL, (const cpk_tensor *const *)u, &out),
      CPK_ESHAPE, "tangent of 0.bias: 3 columns, but the other");
  cpk_tensor_free(u[1]);
  u[1] = tu_random(CPK_F64, 2, s23, -1, 1, 5);
  expect_fail(
      cpk_jvp(f.ctx, f.m, f.x, NULL, (const cpk_tensor *const *)u, &out),
      CPK_ESHAPE, "tangent of 0.bias: expected shape (2, 2), got (2, 3)");
  cpk_tensor_set(u[0], 3, NAN);
  expect_fail(
      cpk_jvp(f.ctx, f.m, f.x, NULL, (const cpk_tensor *const *)u, &out),
      CPK_ENONFINITE, "0.weight");
  assert_null(out);
  cpk_tensor_free(u[0]);
  cpk_tensor_free(u[1]);
  /* too many axes for [N, *out, *in] */
  cpk_model *m3;
  cpk_context *ctx = f.ctx;
  const int64_t s3d[4] = {1, 2, 2, 2}, x3d[5] = {1, 1, 2, 2, 2};
  tu_ok(cpk_model_parse(&m3, "conv3d 1 1 1", "c3"));
  tu_ok(cpk_model_build(m3, 4, s3d, CPK_F64));
  cpk_tensor *xin = tu_random(CPK_F64, 5, x3d, -1, 1, 6);
  expect_fail(cpk_jacobian(ctx, m3, xin, CPK_JACOBIAN_AUTO, &jac), CPK_EINVAL,
              "9 axes");
  cpk_tensor_free(xin);
  cpk_model_free(m3);
  /* a model that is not built */
  cpk_model *unbuilt;
  tu_ok(cpk_model_parse(&unbuilt, "linear 3 2", "unbuilt"));
  expect_fail(cpk_jacobian(ctx, unbuilt, f.x, CPK_JACOBIAN_AUTO, &jac),
              CPK_EINVAL, "not built");
  cpk_model_free(unbuilt);
  cpk_tensor_free(good);
  teardown(&f);
}

/* Buffers take no tangent. */
static void test_buffer_tangent(void **state) {
  (void)state;
  const net_case c = {"batchnorm1d 3", 1, {3}, 0};
  fixture f;
  setup(&f, &c, CPK_F64, 2);
  const int64_t s3 = 3;
  cpk_tensor *u[4] = {NULL, NULL, tu_random(CPK_F64, 1, &s3, -1, 1, 1), NULL};
  cpk_tensor *out = NULL;
  expect_fail(
      cpk_jvp(f.ctx, f.m, f.x, NULL, (const cpk_tensor *const *)u, &out),
      CPK_EINVAL, "0.running_mean is a buffer");
  cpk_tensor_free(u[2]);
  teardown(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_input_jacobians),
      cmocka_unit_test(test_jvps),
      cmocka_unit_test(test_param_jac_mat_beta),
      cmocka_unit_test(test_coupled_batchnorm),
      cmocka_unit_test(test_float32),
      cmocka_unit_test(test_textbook),
      cmocka_unit_test(test_propagate_covariance),
      cmocka_unit_test(test_propagate_monte_carlo),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_buffer_tangent),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
