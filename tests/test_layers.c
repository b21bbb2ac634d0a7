#include <stdio.h>
/*
 * test_layers.c: every layer's forward against hand-computed values and
 * every derivative primitive (jac_mat, jac_t_mat, param_jac_t_mat summed and
 * per sample, d2) against central finite differences in float64.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "ops.h"
#include "testutil.h"

#define N 3
#define V 2
#define H 1e-6
#define FD_RTOL 1e-7

typedef struct {
  const char *line;
  int ndim;
  int64_t shape[4];
  double lo, hi;  /* input range; a negative lo with kinks uses |x| >= 0.1 */
  int away_from_zero;
} layer_case;

static const layer_case cases[] = {
    {"linear 4 3", 1, {4}, -1, 1, 0},
    {"linear 4 3 bias=false", 1, {4}, -1, 1, 0},
    {"linear in_features=3 out_features=2", 2, {2, 3}, -1, 1, 0},
    {"relu", 2, {2, 3}, -1, 1, 1},
    {"leaky_relu negative_slope=0.2", 1, {5}, -1, 1, 1},
    {"sigmoid", 1, {5}, -3, 3, 0},
    {"tanh", 1, {5}, -2, 2, 0},
    {"elu alpha=0.7", 1, {5}, -2, 2, 1},
    {"selu", 1, {5}, -2, 2, 1},
    {"logsigmoid", 1, {5}, -4, 4, 0},
    {"identity", 1, {4}, -1, 1, 0},
    {"exp", 1, {4}, -1, 1, 0},
    {"log", 1, {4}, 0.5, 2, 0},
    {"flatten", 3, {2, 3, 2}, -1, 1, 0},
    {"flatten start_dim=2", 3, {2, 3, 2}, -1, 1, 0},
    {"dropout p=0.3", 1, {4}, -1, 1, 0},
};
#define NCASES (int)(sizeof cases / sizeof cases[0])

typedef struct {
  cpk_model *m;
  cpk__layer *l;
  cpk_context *ctx;
  cpk_tensor *x, *y;
  int64_t din, dout; /* per-sample sizes */
} fixture;

static void setup_case(fixture *f, const layer_case *c, uint64_t seed) {
  memset(f, 0, sizeof *f);
  tu_ok(cpk_model_parse(&f->m, c->line, "case"));
  tu_ok(cpk_model_build(f->m, c->ndim, c->shape, CPK_F64));
  tu_ok(cpk_model_init_params(f->m, seed));
  tu_ok(cpk_context_new(&f->ctx, NULL));
  f->l = f->m->layers[0];
  int64_t xs[5] = {N};
  memcpy(xs + 1, c->shape, (size_t)c->ndim * sizeof *xs);
  f->x = tu_random(CPK_F64, c->ndim + 1, xs, c->lo, c->hi, seed + 1);
  if (c->away_from_zero) /* keep clear of kinks: |x| in [0.1, 1.1) */
    for (int64_t i = 0; i < cpk_tensor_numel(f->x); i++) {
      double v = cpk_tensor_get(f->x, i);
      cpk_tensor_set(f->x, i, v < 0 ? v - 0.1 : v + 0.1);
    }
  int64_t ys[5] = {N};
  memcpy(ys + 1, f->l->out_shape, (size_t)f->l->out_ndim * sizeof *ys);
  tu_ok(cpk_tensor_new(&f->y, CPK_F64, f->l->out_ndim + 1, ys));
  tu_ok(f->l->kind->forward(f->l, f->ctx, f->x, f->y, 0));
  f->din = cpk__layer_in_numel(f->l);
  f->dout = cpk__layer_out_numel(f->l);
}

static void teardown_case(fixture *f) {
  cpk_tensor_free(f->x);
  cpk_tensor_free(f->y);
  cpk_context_free(f->ctx);
  cpk_model_free(f->m);
}

/* y = layer(x) into a fresh tensor (caller frees). */
static cpk_tensor *run_forward(fixture *f, const cpk_tensor *x) {
  cpk_tensor *y;
  tu_ok(cpk_tensor_new(&y, CPK_F64, f->y->ndim, f->y->shape));
  tu_ok(f->l->kind->forward(f->l, f->ctx, x, y, 0));
  return y;
}

/* Full per-sample Jacobian J[n][o][i] = d y[n,o] / d x[n,i] by central
 * differences (samples are independent, so one perturbation per (n, i)
 * column gives column i of every sample's Jacobian at once). */
static double *fd_input_jacobian(fixture *f) {
  double *jac = calloc((size_t)(N * f->dout * f->din), sizeof *jac);
  cpk_tensor *xp;
  tu_ok(cpk_tensor_convert(&xp, f->x, CPK_F64));
  for (int64_t i = 0; i < f->din; i++) {
    double *xd = xp->data;
    for (int n = 0; n < N; n++)
      xd[n * f->din + i] += H;
    cpk_tensor *yp = run_forward(f, xp);
    for (int n = 0; n < N; n++)
      xd[n * f->din + i] -= 2 * H;
    cpk_tensor *ym = run_forward(f, xp);
    for (int n = 0; n < N; n++) {
      xd[n * f->din + i] += H;
      for (int64_t o = 0; o < f->dout; o++) {
        int64_t k = n * f->dout + o;
        jac[(n * f->dout + o) * f->din + i] =
            (((double *)yp->data)[k] - ((double *)ym->data)[k]) / (2 * H);
      }
    }
    cpk_tensor_free(yp);
    cpk_tensor_free(ym);
  }
  cpk_tensor_free(xp);
  /* The primitives must be evaluated at the unperturbed point again. */
  cpk_tensor *y = run_forward(f, f->x);
  cpk_tensor_free(y);
  return jac;
}

static cpk_tensor *block(fixture *f, int64_t per_sample, uint64_t seed) {
  int64_t shape[3] = {V, N, per_sample};
  return tu_random(CPK_F64, 3, shape, -1, 1, seed);
}

static void check_input_jacobians(const layer_case *c, uint64_t seed) {
  fixture f;
  setup_case(&f, c, seed);
  double *jac = fd_input_jacobian(&f);
  cpk_tensor *u = block(&f, f.dout, seed + 7), *v = block(&f, f.din, seed + 9);
  int64_t ts[3] = {V, N, f.din}, js[3] = {V, N, f.dout};
  cpk_tensor *jt, *jv;
  tu_ok(cpk_tensor_new(&jt, CPK_F64, 3, ts));
  tu_ok(cpk_tensor_new(&jv, CPK_F64, 3, js));
  tu_ok(f.l->kind->jac_t_mat(f.l, f.ctx, f.x, f.y, u, jt));
  tu_ok(f.l->kind->jac_mat(f.l, f.ctx, f.x, f.y, v, jv));
  double *want_t = calloc((size_t)(V * N * f.din), sizeof *want_t);
  double *want = calloc((size_t)(V * N * f.dout), sizeof *want);
  const double *ud = u->data, *vd = v->data;
  for (int b = 0; b < V; b++)
    for (int n = 0; n < N; n++)
      for (int64_t o = 0; o < f.dout; o++)
        for (int64_t i = 0; i < f.din; i++) {
          double j = jac[(n * f.dout + o) * f.din + i];
          want_t[(b * N + n) * f.din + i] += j * ud[(b * N + n) * f.dout + o];
          want[(b * N + n) * f.dout + o] += j * vd[(b * N + n) * f.din + i];
        }
  char what[160];
  snprintf(what, sizeof what, "%s: jac_t_mat", c->line);
  tu_assert_close_array(jt->data, want_t, V * N * f.din, FD_RTOL, 1e-9, what);
  snprintf(what, sizeof what, "%s: jac_mat", c->line);
  tu_assert_close_array(jv->data, want, V * N * f.dout, FD_RTOL, 1e-9, what);
  free(want_t);
  free(want);
  free(jac);
  cpk_tensor_free(u);
  cpk_tensor_free(v);
  cpk_tensor_free(jt);
  cpk_tensor_free(jv);
  teardown_case(&f);
}

/* param_jac_t_mat against d y[n,o] / d theta_k by central differences. */
static void check_param_jacobians(const layer_case *c, uint64_t seed) {
  fixture f;
  char what[160];
  setup_case(&f, c, seed);
  cpk_tensor *u = block(&f, f.dout, seed + 3);
  const double *ud = u->data;
  for (int p = 0; p < f.l->nparams; p++) {
    cpk_tensor *theta = f.l->params[p].value;
    int64_t np = cpk_tensor_numel(theta);
    double *want_sum = calloc((size_t)(V * np), sizeof *want_sum);
    double *want_per = calloc((size_t)(V * N * np), sizeof *want_per);
    for (int64_t k = 0; k < np; k++) {
      double *td = theta->data, keep = td[k];
      td[k] = keep + H;
      cpk_tensor *yp = run_forward(&f, f.x);
      td[k] = keep - H;
      cpk_tensor *ym = run_forward(&f, f.x);
      td[k] = keep;
      for (int b = 0; b < V; b++)
        for (int n = 0; n < N; n++)
          for (int64_t o = 0; o < f.dout; o++) {
            int64_t at = n * f.dout + o;
            double d = (((double *)yp->data)[at] - ((double *)ym->data)[at]) /
                       (2 * H) * ud[(b * N + n) * f.dout + o];
            want_sum[b * np + k] += d;
            want_per[(b * N + n) * np + k] += d;
          }
      cpk_tensor_free(yp);
      cpk_tensor_free(ym);
    }
    cpk_tensor *y = run_forward(&f, f.x);
    cpk_tensor_free(y);
    int64_t ss[2] = {V, np}, ps[3] = {V, N, np};
    cpk_tensor *sum, *per;
    tu_ok(cpk_tensor_new(&sum, CPK_F64, 2, ss));
    tu_ok(cpk_tensor_new(&per, CPK_F64, 3, ps));
    tu_ok(f.l->kind->param_jac_t_mat(f.l, f.ctx, p, f.x, u, 0, 0.0, sum));
    tu_ok(f.l->kind->param_jac_t_mat(f.l, f.ctx, p, f.x, u, 1, 0.0, per));
    snprintf(what, sizeof what, "%s: %s summed", c->line, f.l->params[p].name);
    tu_assert_close_array(sum->data, want_sum, V * np, FD_RTOL, 1e-9, what);
    snprintf(what, sizeof what, "%s: %s per sample", c->line,
             f.l->params[p].name);
    tu_assert_close_array(per->data, want_per, V * N * np, FD_RTOL, 1e-9, what);
    /* beta = 1 accumulates onto what is there. */
    tu_ok(f.l->kind->param_jac_t_mat(f.l, f.ctx, p, f.x, u, 0, 1.0, sum));
    for (int64_t k = 0; k < V * np; k++)
      want_sum[k] *= 2;
    snprintf(what, sizeof what, "%s: %s accumulated", c->line,
             f.l->params[p].name);
    tu_assert_close_array(sum->data, want_sum, V * np, FD_RTOL, 1e-9, what);
    cpk_tensor_free(sum);
    cpk_tensor_free(per);
    free(want_sum);
    free(want_per);
  }
  cpk_tensor_free(u);
  teardown_case(&f);
}

/* Elementwise layers: d2 against the second central difference of f. */
static void check_second_derivative(const layer_case *c, uint64_t seed) {
  fixture f;
  setup_case(&f, c, seed);
  if (f.l->kind->d2 == NULL) {
    /* Then f'' must vanish: the Jacobian is constant near x. */
    teardown_case(&f);
    return;
  }
  const double h = 1e-4;
  int64_t n = cpk_tensor_numel(f.x);
  cpk_tensor *d2, *xp, *xm;
  tu_ok(cpk_tensor_new(&d2, CPK_F64, f.x->ndim, f.x->shape));
  tu_ok(f.l->kind->d2(f.l, f.ctx, f.x, f.y, d2));
  tu_ok(cpk_tensor_convert(&xp, f.x, CPK_F64));
  tu_ok(cpk_tensor_convert(&xm, f.x, CPK_F64));
  for (int64_t i = 0; i < n; i++) {
    ((double *)xp->data)[i] += h;
    ((double *)xm->data)[i] -= h;
  }
  cpk_tensor *yp = run_forward(&f, xp), *ym = run_forward(&f, xm);
  double *want = malloc((size_t)n * sizeof *want);
  for (int64_t i = 0; i < n; i++)
    want[i] = (((double *)yp->data)[i] - 2 * ((double *)f.y->data)[i] +
               ((double *)ym->data)[i]) /
              (h * h);
  char what[160];
  snprintf(what, sizeof what, "%s: d2", c->line);
  tu_assert_close_array(d2->data, want, n, 1e-5, 1e-6, what);
  free(want);
  cpk_tensor_free(yp);
  cpk_tensor_free(ym);
  cpk_tensor_free(xp);
  cpk_tensor_free(xm);
  cpk_tensor_free(d2);
  teardown_case(&f);
}

static void test_input_jacobians(void **state) {
  for (int i = 0; i < NCASES; i++)
    check_input_jacobians(&cases[i], 10 + (uint64_t)i);
}

static void test_param_jacobians(void **state) {
  for (int i = 0; i < NCASES; i++)
    check_param_jacobians(&cases[i], 20 + (uint64_t)i);
}

static void test_second_derivatives(void **state) {
  for (int i = 0; i < NCASES; i++)
    check_second_derivative(&cases[i], 30 + (uint64_t)i);
}

/* Forward values computed by hand. */
static double forward_one(const char *line, double x) {
  cpk_model *m;
  cpk_context *ctx;
  int64_t s1 = 1, s2[2] = {1, 1};
  cpk_tensor *in, *out;
  tu_ok(cpk_model_parse(&m, line, "hand"));
  tu_ok(cpk_model_build(m, 1, &s1, CPK_F64));
  tu_ok(cpk_context_new(&ctx, NULL));
  tu_ok(cpk_tensor_new(&in, CPK_F64, 2, s2));
  tu_ok(cpk_tensor_new(&out, CPK_F64, 2, s2));
  cpk_tensor_set(in, 0, x);
  tu_ok(m->layers[0]->kind->forward(m->layers[0], ctx, in, out, 0));
  double y = cpk_tensor_get(out, 0);
  cpk_tensor_free(in);
  cpk_tensor_free(out);
  cpk_context_free(ctx);
  cpk_model_free(m);
  return y;
}

static void test_forward_by_hand(void **state) {
  const struct {
    const char *line;
    double x, y;
  } t[] = {
      {"relu", -2.0, 0.0},
      {"relu", 1.5, 1.5},
      {"leaky_relu", -2.0, -0.02},
      {"leaky_relu negative_slope=0.5", -2.0, -1.0},
      {"sigmoid", 0.0, 0.5},
      {"sigmoid", log(3.0), 0.75},
      {"sigmoid", -800.0, 0.0},
      {"tanh", 0.5, 0.46211715726000974},
      {"elu", -1.0, exp(-1.0) - 1.0},
      {"elu alpha=2", -1.0, 2.0 * (exp(-1.0) - 1.0)},
      {"elu", 3.0, 3.0},
      {"selu", 1.0, 1.0507009873554805},
      {"selu", -1.0, 1.0507009873554805 * 1.6732632423543772 * (exp(-1.0) - 1)},
      {"logsigmoid", 0.0, -log(2.0)},
      {"logsigmoid", -800.0, -800.0},
      {"logsigmoid", 800.0, 0.0},
      {"identity", -3.25, -3.25},
      {"exp", 1.0, exp(1.0)},
      {"log", exp(2.0), 2.0},
      {"dropout", 0.7, 0.7},
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    double got = forward_one(t[i].line, t[i].x);
    char what[96];
    snprintf(what, sizeof what, "%s(%g)", t[i].line, t[i].x);
    tu_assert_close_array(&got, &t[i].y, 1, 1e-15, 1e-300, what);
  }
}

/* linear 2 2 with W = [[1, 2], [3, 4]], b = [0.5, -1]: y = W x + b. */
static void test_linear_by_hand(void **state) {
  cpk_model *m;
  cpk_context *ctx;
  cpk_tensor *w, *b, *x, *y;
  int64_t s = 2, xs[2] = {2, 2};
  tu_ok(cpk_model_parse(&m, "linear 2 2", "hand"));
  tu_ok(cpk_model_build(m, 1, &s, CPK_F64));
  tu_ok(cpk_model_param(m, 0, NULL, &w));
  tu_ok(cpk_model_param(m, 1, NULL, &b));
  const double wv[4] = {1, 2, 3, 4}, bv[2] = {0.5, -1}, xv[4] = {1, -1, 2, 0.5};
  memcpy(w->data, wv, sizeof wv);
  memcpy(b->data, bv, sizeof bv);
  tu_ok(cpk_context_new(&ctx, NULL));
  tu_ok(cpk_tensor_new(&x, CPK_F64, 2, xs));
  tu_ok(cpk_tensor_new(&y, CPK_F64, 2, xs));
  memcpy(x->data, xv, sizeof xv);
  tu_ok(m->layers[0]->kind->forward(m->layers[0], ctx, x, y, 0));
  const double want[4] = {1 - 2 + 0.5, 3 - 4 - 1, 2 + 1 + 0.5, 6 + 2 - 1};
  tu_assert_close_array(y->data, want, 4, 1e-15, 0, "linear by hand");
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_context_free(ctx);
  cpk_model_free(m);
}

/* Training-mode dropout: y is 0 or x / (1 - p), and J^T applies that mask. */
static void test_dropout_training(void **state) {
  cpk_model *m;
  cpk_context *ctx;
  cpk_context_options o = {.seed = 5};
  int64_t s = 1000, xs[2] = {4, 1000}, bs[3] = {1, 4, 1000};
  tu_ok(cpk_model_parse(&m, "dropout p=0.25", "train"));
  tu_ok(cpk_model_build(m, 1, &s, CPK_F64));
  tu_ok(cpk_context_new(&ctx, &o));
  cpk__layer *l = m->layers[0];
  cpk_tensor *x = tu_random(CPK_F64, 2, xs, 0.5, 1.5, 1), *y, *g, *gin;
  tu_ok(cpk_tensor_new(&y, CPK_F64, 2, xs));
  tu_ok(l->kind->forward(l, ctx, x, y, 1));
  g = tu_random(CPK_F64, 3, bs, -1, 1, 2);
  tu_ok(cpk_tensor_new(&gin, CPK_F64, 3, bs));
  tu_ok(l->kind->jac_t_mat(l, ctx, x, y, g, gin));
  int64_t dropped = 0;
  for (int64_t i = 0; i < 4000; i++) {
    double xi = cpk_tensor_get(x, i), yi = cpk_tensor_get(y, i);
    double gi = cpk_tensor_get(g, i), ri = cpk_tensor_get(gin, i);
    if (yi == 0.0) {
      dropped++;
      assert_true(ri == 0.0);
    } else {
      assert_true(fabs(yi - xi / 0.75) < 1e-14);
      assert_true(fabs(ri - gi / 0.75) < 1e-14);
    }
  }
  /* 4000 Bernoulli(0.25) draws: mean 1000, sd ~27. */
  assert_true(dropped > 850 && dropped < 1150);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_tensor_free(g);
  cpk_tensor_free(gin);
  cpk_context_free(ctx);
  cpk_model_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forward_by_hand),
      cmocka_unit_test(test_linear_by_hand),
      cmocka_unit_test(test_input_jacobians),
      cmocka_unit_test(test_param_jacobians),
      cmocka_unit_test(test_second_derivatives),
      cmocka_unit_test(test_dropout_training),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
