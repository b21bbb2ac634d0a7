/*
 * test_conv.c: conv1d/2d/3d and conv_transpose1d/2d/3d.
 *  - forward against values computed by hand;
 *  - every derivative primitive (jac_mat, jac_t_mat, param_jac_t_mat summed,
 *    per sample and accumulated with beta = 1, param_jac_mat) against
 *    central finite differences in float64 over a grid of settings;
 *  - forward and gradients against PyTorch (fixtures/conv, made by
 *    make_conv_fixtures.py) to 1e-10;
 *  - float32 against float64, results independent of the thread count;
 *  - the unfolded input (for extensions) against the forward pass;
 *  - invalid settings are errors naming the model-file line;
 *  - initialisation within PyTorch's bounds.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers/conv_common.h"
#include "model.h"
#include "testutil.h"

#define N 3
#define V 2
#define H 1e-6
#define FD_RTOL 1e-7
#define FD_ATOL 1e-9

typedef struct {
  const char *line;
  int ndim;
  int64_t shape[4]; /* one sample: channels, spatial extents */
} conv_case;

/* Kernel 1-5, stride 1-3, padding numbers/same/valid, dilation 1-2, groups
 * 1/2/channels, odd input sizes, 1d/2d/3d, transposed with output_padding. */
static const conv_case cases[] = {
    {"conv1d 2 3 3", 2, {2, 7}},
    {"conv1d 2 4 5 stride=2 padding=2", 2, {2, 9}},
    {"conv1d 2 2 3 padding=same dilation=2", 2, {2, 8}},
    {"conv1d 2 2 4 padding=same", 2, {2, 5}},
    {"conv1d 4 4 3 groups=4 padding=valid bias=false", 2, {4, 6}},
    {"conv1d 3 2 1 stride=3", 2, {3, 7}},
    {"conv2d 2 3 3", 3, {2, 5, 5}},
    {"conv2d 2 4 3,2 stride=2,1 padding=1,0", 3, {2, 5, 4}},
    {"conv2d 4 2 3 groups=2 dilation=2 padding=2", 3, {4, 5, 5}},
    {"conv2d 2 2 5 padding=same", 3, {2, 5, 5}},
    {"conv2d 3 3 2 stride=3 groups=3", 3, {3, 7, 7}},
    {"conv2d 1 2 1", 3, {1, 3, 3}},
    {"conv2d 2 2 1 stride=2 padding=1", 3, {2, 3, 3}},
    {"conv2d 2 4 4 stride=3 padding=1 groups=2", 3, {2, 7, 5}},
    {"conv3d 2 2 2", 4, {2, 3, 3, 3}},
    {"conv3d 2 2 3 stride=2 padding=1 dilation=1,2,1", 4, {2, 3, 5, 3}},
    {"conv3d 2 4 2,1,3 groups=2 padding=same", 4, {2, 3, 3, 3}},
    {"conv_transpose1d 2 3 3", 2, {2, 4}},
    {"conv_transpose1d 2 2 3 stride=2 padding=1 output_padding=1", 2, {2, 5}},
    {"conv_transpose1d 4 2 2 stride=3 output_padding=1 groups=2 dilation=2",
     2,
     {4, 3}},
    {"conv_transpose1d 2 2 1 output_padding=1 dilation=2", 2, {2, 4}},
    {"conv_transpose1d 2 2 1", 2, {2, 5}},
    {"conv_transpose1d 3 3 5 padding=2 groups=3 bias=false", 2, {3, 5}},
    {"conv_transpose2d 2 3 3 stride=2 padding=1 output_padding=1",
     3,
     {2, 3, 3}},
    {"conv_transpose2d 4 4 2,3 stride=1,2 groups=4 bias=false", 3, {4, 3, 2}},
    {"conv_transpose2d 2 2 5 padding=2 dilation=2", 3, {2, 3, 3}},
    {"conv_transpose2d 2 2 3 stride=3 padding=2,0 output_padding=2,0",
     3,
     {2, 3, 2}},
    {"conv_transpose3d 2 2 2 stride=2", 4, {2, 2, 2, 2}},
    {"conv_transpose3d 2 4 3 stride=1,2,1 padding=1 output_padding=0,1,0 "
     "groups=2",
     4,
     {2, 2, 3, 2}},
};
#define NCASES (int)(sizeof cases / sizeof cases[0])

/* ------------------------------------------------------------ fixtures */

typedef struct {
  cpk_model *m;
  cpk__layer *l;
  cpk_context *ctx;
  cpk_tensor *x, *y;
  int64_t n, din, dout; /* batch, per-sample sizes */
} fixture;

static void setup(fixture *f, const char *line, int ndim, const int64_t *shape,
                  int64_t n, cpk_dtype dt, uint64_t seed) {
  int64_t xs[5] = {n};
  memset(f, 0, sizeof *f);
  tu_ok(cpk_model_parse(&f->m, line, "case"));
  tu_ok(cpk_model_build(f->m, ndim, shape, dt));
  tu_ok(cpk_model_init_params(f->m, seed));
  tu_ok(cpk_context_new(&f->ctx, NULL));
  f->l = f->m->layers[0];
  f->n = n;
  memcpy(xs + 1, shape, (size_t)ndim * sizeof *xs);
  f->x = tu_random(dt, ndim + 1, xs, -1, 1, seed + 1);
  f->din = cpk__layer_in_numel(f->l);
  f->dout = cpk__layer_out_numel(f->l);
}

static void setup_case(fixture *f, const conv_case *c, uint64_t seed) {
  setup(f, c->line, c->ndim, c->shape, N, CPK_F64, seed);
}

static void teardown(fixture *f) {
  cpk_tensor_free(f->x);
  cpk_tensor_free(f->y);
  cpk_context_free(f->ctx);
  cpk_model_free(f->m);
}

/* A new tensor [lead..., *shape of one sample] (lead: nlead leading axes). */
static cpk_tensor *new_block(cpk_dtype dt, int nlead, const int64_t *lead,
                             int ndim, const int64_t *shape) {
  int64_t full[CPK_MAX_DIMS];
  cpk_tensor *t;
  if (nlead > 0)
    memcpy(full, lead, (size_t)nlead * sizeof *full);
  memcpy(full + nlead, shape, (size_t)ndim * sizeof *full);
  tu_ok(cpk_tensor_new(&t, dt, nlead + ndim, full));
  return t;
}

/* y = layer(x) into a fresh tensor. */
static cpk_tensor *forward(fixture *f, const cpk_tensor *x) {
  cpk_tensor *y =
      new_block(x->dtype, 1, &f->n, f->l->out_ndim, f->l->out_shape);
  tu_ok(f->l->kind->forward(f->l, f->ctx, x, y, 0));
  return y;
}

static double *data(const cpk_tensor *t) { return t->data; }

/* ----------------------------------------------------- finite differences */

/* Per-sample input Jacobian J[n][o][i] = d y[n,o] / d x[n,i], by central
 * differences: one perturbation of input i in every sample at once. */
static double *fd_input_jacobian(fixture *f) {
  double *jac = calloc((size_t)(f->n * f->dout * f->din), sizeof *jac);
  cpk_tensor *xp;
  tu_ok(cpk_tensor_convert(&xp, f->x, CPK_F64));
  for (int64_t i = 0; i < f->din; i++) {
    for (int64_t n = 0; n < f->n; n++)
      data(xp)[n * f->din + i] += H;
    cpk_tensor *yp = forward(f, xp);
    for (int64_t n = 0; n < f->n; n++)
      data(xp)[n * f->din + i] -= 2 * H;
    cpk_tensor *ym = forward(f, xp);
    for (int64_t n = 0; n < f->n; n++) {
      data(xp)[n * f->din + i] += H;
      for (int64_t o = 0; o < f->dout; o++) {
        int64_t k = n * f->dout + o;
        jac[k * f->din + i] = (data(yp)[k] - data(ym)[k]) / (2 * H);
      }
    }
    cpk_tensor_free(yp);
    cpk_tensor_free(ym);
  }
  cpk_tensor_free(xp);
  return jac;
}

static cpk_tensor *random_block(const fixture *f, int64_t per_sample,
                                uint64_t seed) {
  int64_t shape[3] = {V, f->n, per_sample};
  return tu_random(CPK_F64, 3, shape, -1, 1, seed);
}

static void check_input_jacobians(const conv_case *c, uint64_t seed) {
  fixture f;
  char what[192];
  setup_case(&f, c, seed);
  double *jac = fd_input_jacobian(&f);
  cpk_tensor *u = random_block(&f, f.dout, seed + 7);
  cpk_tensor *v = random_block(&f, f.din, seed + 9);
  int64_t ts[3] = {V, N, f.din}, js[3] = {V, N, f.dout};
  cpk_tensor *jt, *jv;
  tu_ok(cpk_tensor_new(&jt, CPK_F64, 3, ts));
  tu_ok(cpk_tensor_new(&jv, CPK_F64, 3, js));
  f.y = forward(&f, f.x);
  tu_ok(f.l->kind->jac_t_mat(f.l, f.ctx, f.x, f.y, u, jt));
  tu_ok(f.l->kind->jac_mat(f.l, f.ctx, f.x, f.y, v, jv));
  double *want_t = calloc((size_t)(V * N * f.din), sizeof *want_t);
  double *want = calloc((size_t)(V * N * f.dout), sizeof *want);
  for (int b = 0; b < V; b++)
    for (int n = 0; n < N; n++)
      for (int64_t o = 0; o < f.dout; o++)
        for (int64_t i = 0; i < f.din; i++) {
          double j = jac[(n * f.dout + o) * f.din + i];
          want_t[(b * N + n) * f.din + i] +=
              j * data(u)[(b * N + n) * f.dout + o];
          want[(b * N + n) * f.dout + o] +=
              j * data(v)[(b * N + n) * f.din + i];
        }
  snprintf(what, sizeof what, "%s: jac_t_mat", c->line);
  tu_assert_close_array(data(jt), want_t, V * N * f.din, FD_RTOL, FD_ATOL,
                        what);
  snprintf(what, sizeof what, "%s: jac_mat", c->line);
  tu_assert_close_array(data(jv), want, V * N * f.dout, FD_RTOL, FD_ATOL, what);
  free(want_t);
  free(want);
  free(jac);
  cpk_tensor_free(u);
  cpk_tensor_free(v);
  cpk_tensor_free(jt);
  cpk_tensor_free(jv);
  teardown(&f);
}

/* d y[n,o] / d theta_k by central differences, contracted with u:
 * want_sum[v, k] = sum_n ..., want_per[v, n, k]. */
static void fd_param_products(fixture *f, cpk_tensor *theta,
                              const cpk_tensor *u, double *want_sum,
                              double *want_per) {
  const int64_t np = cpk_tensor_numel(theta);
  for (int64_t k = 0; k < np; k++) {
    double keep = data(theta)[k];
    data(theta)[k] = keep + H;
    cpk_tensor *yp = forward(f, f->x);
    data(theta)[k] = keep - H;
    cpk_tensor *ym = forward(f, f->x);
    data(theta)[k] = keep;
    for (int b = 0; b < V; b++)
      for (int64_t n = 0; n < f->n; n++)
        for (int64_t o = 0; o < f->dout; o++) {
          int64_t at = n * f->dout + o;
          double d = (data(yp)[at] - data(ym)[at]) / (2 * H) *
                     data(u)[(b * f->n + n) * f->dout + o];
          want_sum[b * np + k] += d;
          want_per[(b * f->n + n) * np + k] += d;
        }
    cpk_tensor_free(yp);
    cpk_tensor_free(ym);
  }
}

static void check_param(fixture *f, int p, const cpk_tensor *u,
                        const char *line) {
  cpk_tensor *theta = f->l->params[p].value;
  const int64_t np = cpk_tensor_numel(theta);
  double *want_sum = calloc((size_t)(V * np), sizeof *want_sum);
  double *want_per = calloc((size_t)(V * N * np), sizeof *want_per);
  char what[192];
  fd_param_products(f, theta, u, want_sum, want_per);
  int64_t ss[2] = {V, np}, ps[3] = {V, N, np};
  cpk_tensor *sum, *per;
  tu_ok(cpk_tensor_new(&sum, CPK_F64, 2, ss));
  tu_ok(cpk_tensor_new(&per, CPK_F64, 3, ps));
  tu_ok(f->l->kind->param_jac_t_mat(f->l, f->ctx, p, f->x, u, 0, 0.0, sum));
  tu_ok(f->l->kind->param_jac_t_mat(f->l, f->ctx, p, f->x, u, 1, 0.0, per));
  snprintf(what, sizeof what, "%s: %s summed", line, f->l->params[p].name);
  tu_assert_close_array(data(sum), want_sum, V * np, FD_RTOL, FD_ATOL, what);
  snprintf(what, sizeof what, "%s: %s per sample", line, f->l->params[p].name);
  tu_assert_close_array(data(per), want_per, V * N * np, FD_RTOL, FD_ATOL,
                        what);
  /* beta = 1 accumulates onto what is there. */
  tu_ok(f->l->kind->param_jac_t_mat(f->l, f->ctx, p, f->x, u, 0, 1.0, sum));
  for (int64_t k = 0; k < V * np; k++)
    want_sum[k] *= 2;
  snprintf(what, sizeof what, "%s: %s accumulated", line, f->l->params[p].name);
  tu_assert_close_array(data(sum), want_sum, V * np, FD_RTOL, FD_ATOL, what);
  cpk_tensor_free(sum);
  cpk_tensor_free(per);
  free(want_sum);
  free(want_per);
}

/* param_jac_mat: J_theta t[v] against the directional central difference
 * (y(theta + h t[v]) - y(theta - h t[v])) / 2h; beta = 0 over NaNs (never
 * read), then beta = 1 onto that result (doubling it). */
static void check_param_forward(fixture *f, int p, const char *line,
                                uint64_t seed) {
  cpk_tensor *theta = f->l->params[p].value;
  const int64_t np = cpk_tensor_numel(theta), m = f->n * f->dout;
  cpk_tensor *t = tu_random(CPK_F64, 2, (int64_t[]){V, np}, -1, 1, seed);
  double *want = malloc((size_t)(V * m) * sizeof *want);
  for (int b = 0; b < V; b++) {
    cpk_tensor *y[2];
    for (int side = 0; side < 2; side++) {
      for (int64_t k = 0; k < np; k++)
        data(theta)[k] += (side ? -H : H) * data(t)[b * np + k];
      y[side] = forward(f, f->x);
      for (int64_t k = 0; k < np; k++)
        data(theta)[k] -= (side ? -H : H) * data(t)[b * np + k];
    }
    for (int64_t i = 0; i < m; i++)
      want[b * m + i] = (data(y[0])[i] - data(y[1])[i]) / (2 * H);
    cpk_tensor_free(y[0]);
    cpk_tensor_free(y[1]);
  }
  cpk_tensor *out = new_block(CPK_F64, 2, (int64_t[]){V, f->n}, f->l->out_ndim,
                              f->l->out_shape);
  for (int64_t i = 0; i < V * m; i++)
    data(out)[i] = NAN;
  char what[192];
  snprintf(what, sizeof what, "%s: %s param_jac_mat", line,
           f->l->params[p].name);
  tu_ok(f->l->kind->param_jac_mat(f->l, f->ctx, p, f->x, t, 0.0, out));
  tu_assert_close_array(data(out), want, V * m, FD_RTOL, FD_ATOL, what);
  tu_ok(f->l->kind->param_jac_mat(f->l, f->ctx, p, f->x, t, 1.0, out));
  for (int64_t i = 0; i < V * m; i++)
    want[i] *= 2;
  tu_assert_close_array(data(out), want, V * m, FD_RTOL, FD_ATOL, what);
  free(want);
  cpk_tensor_free(out);
  cpk_tensor_free(t);
}

static void check_param_jacobians(const conv_case *c, uint64_t seed) {
  fixture f;
  setup_case(&f, c, seed);
  cpk_tensor *u = random_block(&f, f.dout, seed + 3);
  assert_true(f.l->kind->param_jac_is_input);
  for (int p = 0; p < f.l->nparams; p++) {
    check_param(&f, p, u, c->line);
    check_param_forward(&f, p, c->line, seed + 5 + (uint64_t)p);
  }
  cpk_tensor_free(u);
  teardown(&f);
}

static void test_input_jacobians(void **state) {
  for (int i = 0; i < NCASES; i++)
    check_input_jacobians(&cases[i], 100 + 10 * (uint64_t)i);
}

static void test_param_jacobians(void **state) {
  for (int i = 0; i < NCASES; i++)
    check_param_jacobians(&cases[i], 500 + 10 * (uint64_t)i);
}

/* ------------------------------------------------------------ by hand */

/* One layer, one sample, parameters and input given; returns y. */
static void by_hand(const char *line, int ndim, const int64_t *shape,
                    const double *w, const double *b, const double *x,
                    const double *want, int64_t nwant) {
  fixture f;
  setup(&f, line, ndim, shape, 1, CPK_F64, 1);
  memcpy(data(f.l->params[0].value), w,
         (size_t)cpk_tensor_numel(f.l->params[0].value) * sizeof *w);
  if (b)
    memcpy(data(f.l->params[1].value), b,
           (size_t)cpk_tensor_numel(f.l->params[1].value) * sizeof *b);
  memcpy(data(f.x), x, (size_t)f.din * sizeof *x);
  f.y = forward(&f, f.x);
  assert_int_equal(cpk_tensor_numel(f.y), nwant);
  tu_assert_close_array(data(f.y), want, nwant, 1e-15, 0, line);
  teardown(&f);
}

static void test_forward_by_hand(void **state) {
  const double x5[5] = {1, 2, 3, 4, 5}, w3[3] = {1, 2, 3}, b1 = 0.5;
  int64_t s15[2] = {1, 5};
  /* y[o] = sum_k w[k] x[o + k] + b */
  const double valid[3] = {14.5, 20.5, 26.5};
  by_hand("conv1d 1 1 3", 2, s15, w3, &b1, x5, valid, 3);
  /* padding 1: x = [0, 1..5, 0] */
  const double pad1[5] = {8.5, 14.5, 20.5, 26.5, 14.5};
  by_hand("conv1d 1 1 3 padding=same", 2, s15, w3, &b1, x5, pad1, 5);
  /* stride 2, dilation 2: y[o] = x[2o] + 2 x[2o+2] + 3 x[2o+4] */
  const double sd[1] = {1 + 6 + 15};
  by_hand("conv1d 1 1 3 stride=2 dilation=2 bias=false", 2, s15, w3, NULL, x5,
          sd, 1);
  /* transposed, stride 2: y[2i + k] += w[k] x[i] */
  const double w2[2] = {1, 2}, x2[2] = {1, 3};
  int64_t s12[2] = {1, 2};
  const double tr[4] = {1.5, 2.5, 3.5, 6.5};
  by_hand("conv_transpose1d 1 1 2 stride=2", 2, s12, w2, &b1, x2, tr, 4);
  /* output_padding 1 adds a bias-only position at the end */
  const double trop[5] = {1.5, 2.5, 3.5, 6.5, 0.5};
  by_hand("conv_transpose1d 1 1 2 stride=2 output_padding=1", 2, s12, w2, &b1,
          x2, trop, 5);
  /* 2d, two groups of one channel: 2x2 all-ones and all-twos kernels on
   * 2x2 inputs, padding 0: one output per group. */
  const double w22[8] = {1, 1, 1, 1, 2, 2, 2, 2};
  const double b2[2] = {0, 10}, x22[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  int64_t s222[3] = {2, 2, 2};
  const double g[2] = {10, 10 + 2 * 26};
  by_hand("conv2d 2 2 2 groups=2", 3, s222, w22, b2, x22, g, 2);
}

/* --------------------------------------------------------------- PyTorch */

static cpk_tensor *read_fixture(const char *dir, const char *name) {
  char rel[256];
  cpk_tensor *t;
  snprintf(rel, sizeof rel, "tests/fixtures/conv/%s/%s.npy", dir, name);
  tu_ok(cpk_npy_read(tu_src(rel), &t));
  return t;
}

static void check_against_torch(const char *name) {
  char rel[256], line[256], what[320];
  snprintf(rel, sizeof rel, "tests/fixtures/conv/%s/line.txt", name);
  FILE *fl = fopen(tu_src(rel), "r");
  assert_non_null(fl);
  assert_non_null(fgets(line, sizeof line, fl));
  fclose(fl);
  line[strcspn(line, "\n")] = '\0';
  cpk_tensor *x = read_fixture(name, "input"), *r = read_fixture(name, "r");
  fixture f;
  setup(&f, line, x->ndim - 1, x->shape + 1, x->shape[0], CPK_F64, 1);
  cpk_tensor_free(f.x);
  f.x = x;
  const char *pnames[2] = {"weight", "bias"};
  for (int p = 0; p < f.l->nparams; p++) {
    cpk_tensor *t = read_fixture(name, pnames[p]);
    tu_assert_close(t, f.l->params[p].value, 1.0, INFINITY, "shape");
    memcpy(data(f.l->params[p].value), data(t),
           (size_t)cpk_tensor_numel(t) * sizeof(double));
    cpk_tensor_free(t);
  }
  f.y = forward(&f, f.x);
  cpk_tensor *want = read_fixture(name, "output");
  snprintf(what, sizeof what, "%s: output", name);
  tu_assert_close(f.y, want, 1e-10, 0, what);
  cpk_tensor_free(want);
  /* R as a block [1, N, *out]: the gradients of sum(y * R). */
  cpk_tensor *gx = new_block(CPK_F64, 1, (int64_t[]){1}, f.x->ndim, f.x->shape);
  tu_ok(f.l->kind->jac_t_mat(f.l, f.ctx, f.x, f.y, r, gx));
  want = read_fixture(name, "grad_input");
  snprintf(what, sizeof what, "%s: grad_input", name);
  tu_assert_close_array(data(gx), data(want), cpk_tensor_numel(want), 1e-10, 0,
                        what);
  cpk_tensor_free(want);
  cpk_tensor_free(gx);
  const char *gnames[2] = {"grad_weight", "grad_bias"};
  for (int p = 0; p < f.l->nparams; p++) {
    cpk_tensor *g =
        new_block(CPK_F64, 0, NULL, f.l->params[p].ndim, f.l->params[p].shape);
    tu_ok(f.l->kind->param_jac_t_mat(f.l, f.ctx, p, f.x, r, 0, 0.0, g));
    want = read_fixture(name, gnames[p]);
    snprintf(what, sizeof what, "%s: %s", name, gnames[p]);
    tu_assert_close(g, want, 1e-10, 0, what);
    cpk_tensor_free(want);
    cpk_tensor_free(g);
  }
  cpk_tensor_free(r);
  teardown(&f);
}

static void test_against_pytorch(void **state) {
  FILE *f = fopen(tu_src("tests/fixtures/conv/cases.txt"), "r");
  char name[128];
  int count = 0;
  assert_non_null(f);
  while (fscanf(f, "%127s", name) == 1) {
    check_against_torch(name);
    count++;
  }
  fclose(f);
  assert_true(count >= 12);
}

/* --------------------------------------- float32, threads, the unfolding */

/* Forward, jac_t_mat, jac_mat and both parameter products of case c in a
 * fresh [V, N, ...] setting; results concatenated into one array. */
static double *all_results(const conv_case *c, cpk_dtype dt, int64_t *len) {
  fixture f;
  setup(&f, c->line, c->ndim, c->shape, N, dt, 77);
  cpk_tensor *u = tu_random(dt, 3, (int64_t[]){V, N, f.dout}, -1, 1, 78);
  cpk_tensor *v = tu_random(dt, 3, (int64_t[]){V, N, f.din}, -1, 1, 79);
  cpk_tensor *outs[2 + 2 * CPK__MAX_PARAMS];
  int nout = 0;
  f.y = forward(&f, f.x);
  outs[nout++] = new_block(dt, 2, (int64_t[]){V, N}, 1, &f.din);
  tu_ok(f.l->kind->jac_t_mat(f.l, f.ctx, f.x, f.y, u, outs[nout - 1]));
  outs[nout++] = new_block(dt, 2, (int64_t[]){V, N}, 1, &f.dout);
  tu_ok(f.l->kind->jac_mat(f.l, f.ctx, f.x, f.y, v, outs[nout - 1]));
  for (int p = 0; p < f.l->nparams; p++)
    for (int per = 0; per < 2; per++) {
      int64_t np = cpk_tensor_numel(f.l->params[p].value);
      outs[nout++] = new_block(dt, 1 + per, (int64_t[]){V, N}, 1, &np);
      tu_ok(f.l->kind->param_jac_t_mat(f.l, f.ctx, p, f.x, u, per, 0.0,
                                       outs[nout - 1]));
    }
  *len = cpk_tensor_numel(f.y);
  for (int i = 0; i < nout; i++)
    *len += cpk_tensor_numel(outs[i]);
  double *all = malloc((size_t)*len * sizeof *all), *at = all;
  for (int64_t i = 0; i < cpk_tensor_numel(f.y); i++)
    *at++ = cpk_tensor_get(f.y, i);
  for (int i = 0; i < nout; i++) {
    for (int64_t k = 0; k < cpk_tensor_numel(outs[i]); k++)
      *at++ = cpk_tensor_get(outs[i], k);
    cpk_tensor_free(outs[i]);
  }
  cpk_tensor_free(u);
  cpk_tensor_free(v);
  teardown(&f);
  return all;
}

static void test_float32_matches_float64(void **state) {
  for (int i = 0; i < NCASES; i++) {
    int64_t n32, n64;
    double *r32 = all_results(&cases[i], CPK_F32, &n32);
    double *r64 = all_results(&cases[i], CPK_F64, &n64);
    assert_int_equal(n32, n64);
    tu_assert_close_array(r32, r64, n64, 1e-5, 0, cases[i].line);
    free(r32);
    free(r64);
  }
}

/* Cases large enough (N = 3) for the library to use threads: tiny ones
 * run on one thread whatever OpenMP offers. */
static const conv_case threaded[] = {
    {"conv1d 8 8 5 padding=2", 2, {8, 401}},
    {"conv2d 4 8 3 stride=2 padding=1 groups=2", 3, {4, 31, 31}},
    {"conv2d 8 8 1", 3, {8, 24, 24}},
    {"conv3d 2 4 3 padding=same dilation=2", 4, {2, 8, 8, 8}},
    {"conv_transpose1d 6 6 4 stride=3 padding=1 output_padding=2 groups=3",
     2,
     {6, 1500}},
    {"conv_transpose2d 4 6 3 stride=2 padding=1 output_padding=1 groups=2",
     3,
     {4, 16, 16}},
};

/* One thread (BLAS may thread), two, and three (uneven split of N = 3):
 * the same numbers up to summation order. */
static void test_thread_counts(void **state) {
  const int saved = omp_get_max_threads();
  for (int i = 0; i < (int)(sizeof threaded / sizeof threaded[0]); i++) {
    int64_t n1, n2, n3;
    omp_set_num_threads(1);
    double *r1 = all_results(&threaded[i], CPK_F64, &n1);
    omp_set_num_threads(2);
    double *r2 = all_results(&threaded[i], CPK_F64, &n2);
    omp_set_num_threads(3);
    double *r3 = all_results(&threaded[i], CPK_F64, &n3);
    tu_assert_close_array(r2, r1, n1, 1e-13, 0, threaded[i].line);
    tu_assert_close_array(r3, r1, n1, 1e-13, 0, threaded[i].line);
    free(r1);
    free(r2);
    free(r3);
  }
  omp_set_num_threads(saved);
}

/* y rebuilt from the unfolded input U [N, G, INg*prod(K), L]:
 *   ConvNd:          y[n, g*OUTg + o, l] = b + sum_r W[g*OUTg + o, r]
 * U[n,g,r,l] ConvTransposeNd: y[n, g*OUTg + o, l] = b + sum_{c,k} W[g*INg + c,
 * o, k] U[n,g,(c,k),l] */
static void check_unfold(const conv_case *c) {
  fixture f;
  cpk_tensor *u;
  setup(&f, c->line, c->ndim, c->shape, N, CPK_F64, 41);
  const cpk__conv *s = cpk__conv_of(f.l);
  assert_non_null(s);
  f.y = forward(&f, f.x);
  tu_ok(cpk__conv_unfold_input(f.l, f.ctx, f.x, &u));
  const int64_t g = s->groups, ing = s->in_channels / g;
  const int64_t outg = s->out_channels / g, rows = u->shape[2];
  const int64_t kv = rows / ing, len = u->shape[3];
  assert_int_equal(u->shape[0], N);
  assert_int_equal(u->shape[1], g);
  assert_int_equal(len * s->out_channels, f.dout);
  const double *w = data(f.l->params[0].value);
  const double *b = s->bias ? data(f.l->params[1].value) : NULL;
  double *want = calloc((size_t)(N * f.dout), sizeof *want);
  for (int64_t n = 0; n < N; n++)
    for (int64_t gi = 0; gi < g; gi++)
      for (int64_t o = 0; o < outg; o++)
        for (int64_t l = 0; l < len; l++) {
          const int64_t co = gi * outg + o;
          double acc = b ? b[co] : 0.0;
          for (int64_t r = 0; r < rows; r++) {
            const int64_t ci = r / kv, k = r % kv;
            double wr = s->transposed ? w[((gi * ing + ci) * outg + o) * kv + k]
                                      : w[co * rows + r];
            acc += wr * data(u)[((n * g + gi) * rows + r) * len + l];
          }
          want[(n * s->out_channels + co) * len + l] = acc;
        }
  char what[192];
  snprintf(what, sizeof what, "%s: unfolded input", c->line);
  tu_assert_close_array(data(f.y), want, N * f.dout, 1e-13, 0, what);
  free(want);
  cpk_tensor_free(u);
  teardown(&f);
}

static void test_unfold_input(void **state) {
  for (int i = 0; i < NCASES; i++)
    check_unfold(&cases[i]);
  /* Not a convolution. */
  cpk_model *m;
  cpk_tensor *u = NULL;
  tu_ok(cpk_model_parse(&m, "relu", "x"));
  assert_null(cpk__conv_of(m->layers[0]));
  assert_int_equal(cpk__conv_unfold_input(m->layers[0], NULL, NULL, &u),
                   CPK_EINVAL);
  assert_null(u);
  cpk_model_free(m);
}

/* ------------------------------------------------------------- errors */

/* Model text `flatten`-free: line 2 holds the layer under test, after an
 * identity; building for `shape` must fail with `status` naming line 2. */
static void fails(const char *line, int ndim, const int64_t *shape, int status,
                  const char *needle) {
  char text[256], where[128], name[64];
  cpk_model *m = NULL;
  snprintf(text, sizeof text, "identity\n%s\n", line);
  sscanf(line, "%63s", name);
  snprintf(where, sizeof where, "net.txt:2: %s", name);
  cpk_clear_error();
  int rc = cpk_model_parse(&m, text, "net.txt");
  if (rc == CPK_OK)
    rc = cpk_model_build(m, ndim, shape, CPK_F64);
  cpk_model_free(m);
  const char *msg = cpk_last_error();
  if (rc != status || strstr(msg, where) == NULL ||
      strstr(msg, needle) == NULL) {
    print_error("%s: got %s '%s', expected %s with '%s' and '%s'\n", line,
                cpk_err_name(rc), msg, cpk_err_name(status), where, needle);
    fail();
  }
}

static void test_invalid_settings(void **state) {
  const int64_t s344[3] = {3, 4, 4}, s322[3] = {3, 2, 2}, s35[2] = {3, 5};
  fails("conv2d 3 4 5", 3, s344, CPK_ESHAPE, "larger than the padded input");
  fails("conv2d 3 4 3 dilation=2", 3, s344, CPK_ESHAPE,
        "larger than the padded input");
  fails("conv1d 3 4 8 padding=1", 2, s35, CPK_ESHAPE,
        "larger than the padded input");
  fails("conv2d 3 4 3 groups=2", 3, s344, CPK_EFORMAT, "divisible by groups");
  fails("conv_transpose2d 4 3 3 groups=2", 3, s344, CPK_EFORMAT,
        "divisible by groups");
  fails("conv2d 3 4 3 groups=0", 3, s344, CPK_EFORMAT,
        "groups must be positive");
  fails("conv2d 3 4 3 stride=0", 3, s344, CPK_EFORMAT,
        "stride must be positive");
  fails("conv2d 3 4 3 stride=1,-1", 3, s344, CPK_EFORMAT,
        "stride must be positive");
  fails("conv2d 3 4 0", 3, s344, CPK_EFORMAT, "kernel_size must be positive");
  fails("conv3d 3 4 3 dilation=0", 3, s344, CPK_EFORMAT,
        "dilation must be positive");
  fails("conv2d 0 4 3", 3, s344, CPK_EFORMAT, "in_channels must be positive");
  fails("conv_transpose1d 3 0 3", 2, s35, CPK_EFORMAT,
        "out_channels must be positive");
  fails("conv2d 3 4 3 padding=-1", 3, s344, CPK_EFORMAT,
        "padding must be non-negative");
  fails("conv2d 3 4 3 stride=2 padding=same", 3, s344, CPK_EFORMAT,
        "padding='same' needs stride 1");
  fails("conv2d 3 4 3,3,3", 3, s344, CPK_EFORMAT,
        "kernel_size has 3 values, expected 1 or 2");
  fails("conv2d 3 4 99999999999", 3, s344, CPK_EFORMAT, "too large");
  fails("conv_transpose2d 3 4 3 output_padding=1", 3, s344, CPK_EFORMAT,
        "output_padding (1) must be smaller than stride");
  fails("conv_transpose2d 3 4 3 stride=2 dilation=3 output_padding=3", 3, s344,
        CPK_EFORMAT, "output_padding (3) must be smaller");
  fails("conv_transpose2d 3 4 3 padding=4", 3, s322, CPK_ESHAPE,
        "output size -4 <= 0");
  fails("conv_transpose2d 3 4 3 padding=same", 3, s322, CPK_EFORMAT,
        "padding='same' is not an integer");
  fails("conv2d 2 4 3", 3, s344, CPK_ESHAPE, "with 2 channels");
  fails("conv1d 3 4 3", 3, s344, CPK_ESHAPE, "1 spatial axes");
  fails("conv3d 3 4 3", 3, s344, CPK_ESHAPE, "3 spatial axes");
  fails("conv2d 3 4 3 bogus=1", 3, s344, CPK_EFORMAT,
        "unknown argument 'bogus'");
}

/* ------------------------------------------------------ initialisation */

/* U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = weight.shape[1] * prod(K):
 * inside the bound, and spread over it. */
static void check_init(const char *line, int ndim, const int64_t *shape,
                       double fan_in) {
  cpk_model *m;
  tu_ok(cpk_model_parse(&m, line, "init"));
  tu_ok(cpk_model_build(m, ndim, shape, CPK_F64));
  tu_ok(cpk_model_init_params(m, 3));
  const double bound = 1 / sqrt(fan_in);
  for (int p = 0; p < m->layers[0]->nparams; p++) {
    const cpk_tensor *t = m->layers[0]->params[p].value;
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < cpk_tensor_numel(t); i++) {
      lo = fmin(lo, cpk_tensor_get(t, i));
      hi = fmax(hi, cpk_tensor_get(t, i));
    }
    assert_true(lo >= -bound && hi <= bound);
    assert_true(hi - lo > bound); /* not all in a corner, not zero */
  }
  cpk_model_free(m);
}

static void test_init(void **state) {
  const int64_t s[3] = {4, 8, 8}, s1[2] = {6, 9};
  check_init("conv2d 4 16 3,2 groups=2", 3, s, 2 * 3 * 2);
  check_init("conv_transpose2d 4 32 3 groups=2", 3, s, 16 * 3 * 3);
  check_init("conv1d 6 12 5", 2, s1, 6 * 5);
  check_init("conv_transpose1d 6 12 5 groups=3", 2, s1, 4 * 5);
}

/* ----------------------------------------------- through the engine */

static const struct {
  const char *text;
  int ndim;
  int64_t shape[4];
} nets[] = {
    {"conv1d 2 3 3 stride=2\ntanh\n"
     "conv_transpose1d 3 2 4 stride=2 padding=1\nflatten\nlinear 16 3\n",
     2,
     {2, 9}},
    {"conv2d 2 4 3 padding=1 groups=2\ntanh\n"
     "conv_transpose2d 4 3 3 stride=2 padding=1\nsigmoid\n"
     "conv2d 3 2 3 stride=2 padding=1 bias=false\nflatten\nlinear 40 3\n",
     3,
     {2, 5, 4}},
    {"conv3d 1 2 2\ntanh\nconv_transpose3d 2 1 2 stride=2\nflatten\n"
     "linear 64 3\n",
     4,
     {1, 3, 3, 3}},
};

static double loss_of(cpk_context *ctx, cpk_model *m, const cpk_pass_spec *s,
                      const cpk_tensor *x, const cpk_tensor *y) {
  cpk_results *r;
  tu_ok(cpk_compute(ctx, m, s, x, y, &r));
  double v = cpk_tensor_get(cpk_results_find(r, "loss"), 0);
  cpk_results_free(r);
  return v;
}

/* cpk_compute's gradients of a cross-entropy loss through stacked
 * convolutions (the engine drives jac_t_mat between them) against central
 * differences of the loss. */
static void check_network(int i) {
  cpk_model *m;
  cpk_context *ctx;
  cpk_results *r;
  int64_t xs[5] = {N}, n = N;
  memcpy(xs + 1, nets[i].shape, (size_t)nets[i].ndim * sizeof *xs);
  tu_ok(cpk_model_parse(&m, nets[i].text, "net"));
  tu_ok(cpk_model_build(m, nets[i].ndim, nets[i].shape, CPK_F64));
  tu_ok(cpk_model_init_params(m, 5 + (uint64_t)i));
  tu_ok(cpk_context_new(&ctx, NULL));
  cpk_tensor *x = tu_random(CPK_F64, nets[i].ndim + 1, xs, -1, 1, 9), *y;
  tu_ok(cpk_tensor_new(&y, CPK_I64, 1, &n));
  for (int64_t k = 0; k < N; k++)
    cpk_tensor_set(y, k, (double)(k % 3));
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL, 0};
  tu_ok(cpk_compute(ctx, m, &spec, x, y, &r));
  for (int p = 0; p < cpk_model_num_params(m); p++) {
    const char *name;
    cpk_tensor *theta;
    char key[64];
    tu_ok(cpk_model_param(m, p, &name, &theta));
    snprintf(key, sizeof key, "%s.grad", name);
    const cpk_tensor *g = cpk_results_find(r, key);
    assert_non_null(g);
    const int64_t np = cpk_tensor_numel(theta);
    double *want = malloc((size_t)np * sizeof *want);
    for (int64_t k = 0; k < np; k++) {
      double keep = data(theta)[k];
      data(theta)[k] = keep + H;
      double lp = loss_of(ctx, m, &spec, x, y);
      data(theta)[k] = keep - H;
      double lm = loss_of(ctx, m, &spec, x, y);
      data(theta)[k] = keep;
      want[k] = (lp - lm) / (2 * H);
    }
    char what[128];
    snprintf(what, sizeof what, "network %d: %s", i, key);
    tu_assert_close_array(data(g), want, np, 1e-6, 1e-9, what);
    free(want);
  }
  cpk_results_free(r);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_context_free(ctx);
  cpk_model_free(m);
}

static void test_networks(void **state) {
  for (int i = 0; i < (int)(sizeof nets / sizeof nets[0]); i++)
    check_network(i);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forward_by_hand),
      cmocka_unit_test(test_input_jacobians),
      cmocka_unit_test(test_param_jacobians),
      cmocka_unit_test(test_against_pytorch),
      cmocka_unit_test(test_float32_matches_float64),
      cmocka_unit_test(test_thread_counts),
      cmocka_unit_test(test_unfold_input),
      cmocka_unit_test(test_invalid_settings),
      cmocka_unit_test(test_init),
      cmocka_unit_test(test_networks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
