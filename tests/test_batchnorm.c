/*
 * test_batchnorm.c: batchnorm1d / batchnorm2d.
 *  - every derivative primitive against central finite differences in
 *    float64, in evaluation mode and with batch statistics (training), where
 *    the Jacobian is the full [N*D_out, N*D_in] one of the whole batch;
 *  - forward and the running-statistic update against the formulas;
 *  - forward, buffers after the pass, d sum(y*R)/dx and the parameter
 *    gradients against PyTorch (tests/fixtures/batchnorm, made by
 *    tests/fixtures/make_batchnorm_fixtures.py), eval and train mode;
 *  - a network through cpk_compute against PyTorch's loss and gradients;
 *  - float32 against float64; parameters, initialisation and errors.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "testutil.h"

#define N 3
#define V 2
#define H 1e-6
#define FD_RTOL 1e-7
#define TORCH_RTOL 1e-12

typedef struct {
  const char *line;
  int ndim;
  int64_t shape[3];
} bn_case;

/* Odd sizes; 1d with and without a length axis, 2d, affine=false, no
 * running statistics (batch statistics in both modes). */
static const bn_case cases[] = {
    {"batchnorm1d 3", 1, {3}},
    {"batchnorm1d 3", 2, {3, 5}},
    {"batchnorm2d 2", 3, {2, 3, 2}},
    {"batchnorm1d 4 affine=false", 2, {4, 3}},
    {"batchnorm2d 3 eps=0.1 momentum=0.3", 3, {3, 3, 5}},
    {"batchnorm1d 2 track_running_stats=false", 2, {2, 3}},
    {"batchnorm2d 1 affine=false track_running_stats=false", 3, {1, 1, 3}},
};
#define NCASES (int)(sizeof cases / sizeof cases[0])

typedef struct {
  cpk_model *m;
  cpk__layer *l;
  cpk_context *ctx;
  cpk_tensor *x, *y;
  int training;
  int64_t din; /* per-sample size (= output size) */
} fixture;

/* Parameter slot called `name` in layer l, or -1. */
static int slot_of(const cpk__layer *l, const char *name) {
  for (int p = 0; p < l->nparams; p++)
    if (strcmp(l->params[p].name, name) == 0)
      return p;
  return -1;
}

/* Set every parameter and buffer of l away from its default:
 * weight in [0.5, 1.5), bias and running_mean in [-0.5, 0.5), running_var in
 * [0.5, 1.5). */
static void randomise(cpk__layer *l, uint64_t seed) {
  for (int p = 0; p < l->nparams; p++) {
    cpk_tensor *t = l->params[p].value;
    int centred = strcmp(l->params[p].name, "bias") == 0 ||
                  strcmp(l->params[p].name, "running_mean") == 0;
    cpk_tensor *r = tu_random(t->dtype, t->ndim, t->shape, centred ? -0.5 : 0.5,
                              centred ? 0.5 : 1.5, seed + (uint64_t)p);
    memcpy(t->data, r->data,
           (size_t)cpk_tensor_numel(t) * cpk_dtype_size(t->dtype));
    cpk_tensor_free(r);
  }
}

static cpk_model *make_layer(const char *line, int ndim, const int64_t *shape,
                             cpk_dtype dt) {
  cpk_model *m;
  tu_ok(cpk_model_parse(&m, line, "case"));
  tu_ok(cpk_model_build(m, ndim, shape, dt));
  return m;
}

static void forward_into(fixture *f, const cpk_tensor *x, cpk_tensor *y) {
  tu_ok(f->l->kind->forward(f->l, f->ctx, x, y, f->training));
}

static void setup_case(fixture *f, const bn_case *c, int training, cpk_dtype dt,
                       uint64_t seed) {
  memset(f, 0, sizeof *f);
  f->m = make_layer(c->line, c->ndim, c->shape, dt);
  f->l = f->m->layers[0];
  randomise(f->l, seed);
  tu_ok(cpk_context_new(&f->ctx, NULL));
  f->training = training;
  int64_t xs[4] = {N};
  memcpy(xs + 1, c->shape, (size_t)c->ndim * sizeof *xs);
  f->x = tu_random(dt, c->ndim + 1, xs, -1.2, 2.0, seed + 11);
  tu_ok(cpk_tensor_new(&f->y, dt, c->ndim + 1, xs));
  forward_into(f, f->x, f->y);
  f->din = cpk__layer_in_numel(f->l);
}

static void teardown_case(fixture *f) {
  cpk_tensor_free(f->x);
  cpk_tensor_free(f->y);
  cpk_context_free(f->ctx);
  cpk_model_free(f->m);
}

static cpk_tensor *run_forward(fixture *f, const cpk_tensor *x) {
  cpk_tensor *y;
  tu_ok(cpk_tensor_new(&y, f->y->dtype, f->y->ndim, f->y->shape));
  forward_into(f, x, y);
  return y;
}

/* The whole-batch Jacobian J[a][b] = d y_flat[a] / d x_flat[b], both indices
 * over N*D, by central differences, one input element at a time (with batch
 * statistics every output depends on every input of its channel). Leaves
 * the layer's state at the unperturbed x. */
static double *fd_batch_jacobian(fixture *f) {
  const int64_t nd = N * f->din;
  double *jac = calloc((size_t)(nd * nd), sizeof *jac);
  cpk_tensor *xp;
  tu_ok(cpk_tensor_convert(&xp, f->x, CPK_F64));
  double *xd = xp->data;
  for (int64_t b = 0; b < nd; b++) {
    const double keep = xd[b];
    xd[b] = keep + H;
    cpk_tensor *yp = run_forward(f, xp);
    xd[b] = keep - H;
    cpk_tensor *ym = run_forward(f, xp);
    xd[b] = keep;
    for (int64_t a = 0; a < nd; a++)
      jac[a * nd + b] =
          (((double *)yp->data)[a] - ((double *)ym->data)[a]) / (2 * H);
    cpk_tensor_free(yp);
    cpk_tensor_free(ym);
  }
  cpk_tensor_free(xp);
  cpk_tensor_free(run_forward(f, f->x));
  return jac;
}

static cpk_tensor *new_block(cpk_dtype dt, int64_t v, const cpk_tensor *x) {
  int64_t s[CPK_MAX_DIMS] = {v};
  memcpy(s + 1, x->shape, (size_t)x->ndim * sizeof *s);
  cpk_tensor *t;
  tu_ok(cpk_tensor_new(&t, dt, x->ndim + 1, s));
  return t;
}

static cpk_tensor *random_block(const cpk_tensor *x, uint64_t seed) {
  int64_t s[CPK_MAX_DIMS] = {V};
  memcpy(s + 1, x->shape, (size_t)x->ndim * sizeof *s);
  return tu_random(x->dtype, x->ndim + 1, s, -1, 1, seed);
}

static void check_input_jacobians(const bn_case *c, int training,
                                  uint64_t seed) {
  fixture f;
  char what[192];
  setup_case(&f, c, training, CPK_F64, seed);
  const int64_t nd = N * f.din;
  double *jac = fd_batch_jacobian(&f);
  cpk_tensor *u = random_block(f.x, seed + 3), *w = random_block(f.x, seed + 5);
  cpk_tensor *jt = new_block(CPK_F64, V, f.x), *jw = new_block(CPK_F64, V, f.x);
  tu_ok(f.l->kind->jac_t_mat(f.l, f.ctx, f.x, f.y, u, jt));
  tu_ok(f.l->kind->jac_mat(f.l, f.ctx, f.x, f.y, w, jw));
  double *want_t = calloc((size_t)(V * nd), sizeof *want_t);
  double *want = calloc((size_t)(V * nd), sizeof *want);
  const double *ud = u->data, *wd = w->data;
  for (int b = 0; b < V; b++)
    for (int64_t i = 0; i < nd; i++)
      for (int64_t k = 0; k < nd; k++) {
        want_t[b * nd + k] += jac[i * nd + k] * ud[b * nd + i];
        want[b * nd + i] += jac[i * nd + k] * wd[b * nd + k];
      }
  snprintf(what, sizeof what, "%s %dd %s: jac_t_mat", c->line, c->ndim,
           training ? "train" : "eval");
  tu_assert_close_array(jt->data, want_t, V * nd, FD_RTOL, 1e-9, what);
  snprintf(what, sizeof what, "%s %dd %s: jac_mat", c->line, c->ndim,
           training ? "train" : "eval");
  tu_assert_close_array(jw->data, want, V * nd, FD_RTOL, 1e-9, what);
  if (!training && strstr(c->line, "track_running_stats=false") == NULL) {
    /* Evaluation mode: samples are independent (no cross-sample block). */
    for (int64_t i = 0; i < nd; i++)
      for (int64_t k = 0; k < nd; k++)
        if (i / f.din != k / f.din)
          assert_true(fabs(jac[i * nd + k]) < 1e-9);
  }
  free(want_t);
  free(want);
  free(jac);
  cpk_tensor_free(u);
  cpk_tensor_free(w);
  cpk_tensor_free(jt);
  cpk_tensor_free(jw);
  teardown_case(&f);
}

/* param_jac_t_mat (summed, per sample, beta accumulation) against
 * d y[n,o] / d theta_k by central differences. */
static void check_param_jacobians(const bn_case *c, int training,
                                  uint64_t seed) {
  fixture f;
  char what[192];
  setup_case(&f, c, training, CPK_F64, seed);
  const int64_t d = f.din;
  cpk_tensor *u = random_block(f.x, seed + 3);
  const double *ud = u->data;
  for (int p = 0; p < f.l->nparams; p++) {
    if (!f.l->params[p].trainable)
      continue;
    cpk_tensor *theta = f.l->params[p].value;
    const int64_t np = cpk_tensor_numel(theta);
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
          for (int64_t o = 0; o < d; o++) {
            const int64_t at = n * d + o;
            const double g =
                (((double *)yp->data)[at] - ((double *)ym->data)[at]) /
                (2 * H) * ud[b * N * d + at];
            want_sum[b * np + k] += g;
            want_per[(b * N + n) * np + k] += g;
          }
      cpk_tensor_free(yp);
      cpk_tensor_free(ym);
    }
    cpk_tensor_free(run_forward(&f, f.x));
    int64_t ss[2] = {V, np}, ps[3] = {V, N, np};
    cpk_tensor *sum, *per;
    tu_ok(cpk_tensor_new(&sum, CPK_F64, 2, ss));
    tu_ok(cpk_tensor_new(&per, CPK_F64, 3, ps));
    tu_ok(f.l->kind->param_jac_t_mat(f.l, f.ctx, p, f.x, u, 0, 0.0, sum));
    tu_ok(f.l->kind->param_jac_t_mat(f.l, f.ctx, p, f.x, u, 1, 0.0, per));
    snprintf(what, sizeof what, "%s %dd %s: %s summed", c->line, c->ndim,
             training ? "train" : "eval", f.l->params[p].name);
    tu_assert_close_array(sum->data, want_sum, V * np, FD_RTOL, 1e-9, what);
    snprintf(what, sizeof what, "%s %dd %s: %s per sample", c->line, c->ndim,
             training ? "train" : "eval", f.l->params[p].name);
    tu_assert_close_array(per->data, want_per, V * N * np, FD_RTOL, 1e-9, what);
    /* beta = 0.5: out := 0.5 out + new = 1.5 want. */
    tu_ok(f.l->kind->param_jac_t_mat(f.l, f.ctx, p, f.x, u, 0, 0.5, sum));
    for (int64_t k = 0; k < V * np; k++)
      want_sum[k] *= 1.5;
    snprintf(what, sizeof what, "%s %dd %s: %s accumulated", c->line, c->ndim,
             training ? "train" : "eval", f.l->params[p].name);
    tu_assert_close_array(sum->data, want_sum, V * np, FD_RTOL, 1e-9, what);
    cpk_tensor_free(sum);
    cpk_tensor_free(per);
    free(want_sum);
    free(want_per);
  }
  cpk_tensor_free(u);
  teardown_case(&f);
}

static void test_input_jacobians_eval(void **state) {
  for (int i = 0; i < NCASES; i++)
    check_input_jacobians(&cases[i], 0, 10 + (uint64_t)i);
}

static void test_input_jacobians_train(void **state) {
  for (int i = 0; i < NCASES; i++)
    check_input_jacobians(&cases[i], 1, 30 + (uint64_t)i);
}

static void test_param_jacobians_eval(void **state) {
  for (int i = 0; i < NCASES; i++)
    check_param_jacobians(&cases[i], 0, 50 + (uint64_t)i);
}

static void test_param_jacobians_train(void **state) {
  for (int i = 0; i < NCASES; i++)
    check_param_jacobians(&cases[i], 1, 70 + (uint64_t)i);
}

/* Per-sample parameter products on a slice of the batch (as the extensions
 * visit it in chunks) equal the rows of the whole-batch result. */
static void test_per_sample_chunks(void **state) {
  for (int training = 0; training < 2; training++) {
    fixture f;
    setup_case(&f, &cases[2], training, CPK_F64, 90);
    cpk_tensor *g = new_block(CPK_F64, 1, f.x);
    cpk_tensor *rnd = random_block(f.x, 91);
    memcpy(g->data, rnd->data, (size_t)(N * f.din) * sizeof(double));
    const int64_t np = f.l->params[0].shape[0], first = 1, count = 2;
    int64_t full_s[3] = {1, N, np}, part_s[3] = {1, count, np};
    cpk_tensor *full, *part, xs, gs;
    tu_ok(cpk_tensor_new(&full, CPK_F64, 3, full_s));
    tu_ok(cpk_tensor_new(&part, CPK_F64, 3, part_s));
    int64_t xshape[CPK_MAX_DIMS], gshape[CPK_MAX_DIMS];
    memcpy(xshape, f.x->shape, sizeof xshape);
    memcpy(gshape, g->shape, sizeof gshape);
    xshape[0] = count;
    gshape[1] = count;
    cpk__tensor_view(&xs, CPK_F64, (double *)f.x->data + first * f.din,
                     f.x->ndim, xshape);
    cpk__tensor_view(&gs, CPK_F64, (double *)g->data + first * f.din, g->ndim,
                     gshape);
    for (int p = 0; p < 2; p++) {
      tu_ok(f.l->kind->param_jac_t_mat(f.l, f.ctx, p, f.x, g, 1, 0.0, full));
      tu_ok(f.l->kind->param_jac_t_mat(f.l, f.ctx, p, &xs, &gs, 1, 0.0, part));
      tu_assert_close_array(part->data, (double *)full->data + first * np,
                            count * np, 1e-15, 0.0, "per-sample chunk");
    }
    cpk_tensor_free(full);
    cpk_tensor_free(part);
    cpk_tensor_free(rnd);
    cpk_tensor_free(g);
    teardown_case(&f);
  }
}

/* Forward in both modes and the running-statistic update, from the
 * formulas: batch mean and biased variance normalise; the buffers move by
 * momentum towards the mean and the unbiased variance. */
static void test_forward_and_running_stats(void **state) {
  const int64_t shape[3] = {3, 2, 3}, xs[4] = {4, 3, 2, 3};
  const int64_t f = 3, l = 6, m = 4 * 6;
  const double mo = 0.25, eps = 1e-3;
  cpk_model *model =
      make_layer("batchnorm2d 3 eps=0.001 momentum=0.25", 3, shape, CPK_F64);
  cpk__layer *ly = model->layers[0];
  cpk_context *ctx;
  tu_ok(cpk_context_new(&ctx, NULL));
  randomise(ly, 5);
  cpk_tensor *x = tu_random(CPK_F64, 4, xs, -2, 3, 6), *y;
  tu_ok(cpk_tensor_new(&y, CPK_F64, 4, xs));
  const double *xd = x->data;
  const double *w = ly->params[0].value->data, *b = ly->params[1].value->data;
  double *rm = ly->params[2].value->data, *rv = ly->params[3].value->data;
  double rm0[3], rv0[3], mean[3], var[3], want_y[72];
  memcpy(rm0, rm, sizeof rm0);
  memcpy(rv0, rv, sizeof rv0);

  /* Evaluation: running statistics, buffers unchanged. */
  tu_ok(ly->kind->forward(ly, ctx, x, y, 0));
  for (int64_t i = 0; i < 72; i++) {
    int64_t c = (i / l) % f;
    want_y[i] = (xd[i] - rm0[c]) / sqrt(rv0[c] + eps) * w[c] + b[c];
  }
  tu_assert_close_array(y->data, want_y, 72, 1e-14, 0, "eval forward");
  tu_assert_close_array(rm, rm0, 3, 0, 0, "eval keeps running_mean");
  tu_assert_close_array(rv, rv0, 3, 0, 0, "eval keeps running_var");

  /* Training, twice: the update compounds. */
  for (int pass = 0; pass < 2; pass++) {
    double want_rm[3], want_rv[3];
    for (int64_t c = 0; c < f; c++) {
      double s = 0, q = 0;
      for (int64_t n = 0; n < 4; n++)
        for (int64_t k = 0; k < l; k++)
          s += xd[(n * f + c) * l + k];
      mean[c] = s / m;
      for (int64_t n = 0; n < 4; n++)
        for (int64_t k = 0; k < l; k++)
          q += pow(xd[(n * f + c) * l + k] - mean[c], 2);
      var[c] = q / m;
      want_rm[c] = (1 - mo) * rm[c] + mo * mean[c];
      want_rv[c] = (1 - mo) * rv[c] + mo * q / (m - 1);
    }
    tu_ok(ly->kind->forward(ly, ctx, x, y, 1));
    for (int64_t i = 0; i < 72; i++) {
      int64_t c = (i / l) % f;
      want_y[i] = (xd[i] - mean[c]) / sqrt(var[c] + eps) * w[c] + b[c];
    }
    tu_assert_close_array(y->data, want_y, 72, 1e-14, 0, "train forward");
    tu_assert_close_array(rm, want_rm, 3, 1e-15, 0, "running_mean update");
    tu_assert_close_array(rv, want_rv, 3, 1e-15, 0, "running_var update");
  }
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_context_free(ctx);
  cpk_model_free(model);
}

/* ------------------------------------------------------------ PyTorch */

static cpk_tensor *fixture_array(const char *dir, const char *file,
                                 int required) {
  char rel[256];
  cpk_tensor *t = NULL;
  snprintf(rel, sizeof rel, "tests/fixtures/batchnorm/%s/%s.npy", dir, file);
  int rc = cpk_npy_read(tu_src(rel), &t);
  if (required)
    tu_ok(rc);
  return rc == CPK_OK ? t : NULL;
}

/* |got - want| <= atol + 1e-12 max|want|. */
static void compare_atol(const cpk_tensor *got, const cpk_tensor *want,
                         const char *dir, const char *what, double atol) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", dir, what);
  tu_assert_close(got, want, TORCH_RTOL, atol, msg);
}

static void compare(const cpk_tensor *got, const cpk_tensor *want,
                    const char *dir, const char *what) {
  compare_atol(got, want, dir, what, 0.0);
}

/* One layer case: forward (y and the buffers after it), then with R as a
 * block [1, N, ...]: jac_t_mat R = d sum(y*R)/dx and param_jac_t_mat R =
 * d sum(y*R)/d weight, bias. */
static void check_torch_case(const char *dir, const char *mode,
                             const char *line) {
  cpk_tensor *x = fixture_array(dir, "x", 1), *r = fixture_array(dir, "r", 1);
  cpk_model *m = make_layer(line, x->ndim - 1, x->shape + 1, CPK_F64);
  cpk__layer *l = m->layers[0];
  cpk_context *ctx;
  tu_ok(cpk_context_new(&ctx, NULL));
  const char *names[4] = {"weight", "bias", "running_mean", "running_var"};
  for (int i = 0; i < 4; i++) {
    cpk_tensor *v = fixture_array(dir, names[i], 0);
    int p = slot_of(l, names[i]);
    assert_int_equal(v != NULL, p >= 0); /* declared iff PyTorch has it */
    if (v != NULL)
      memcpy(l->params[p].value->data, v->data,
             (size_t)cpk_tensor_numel(v) * sizeof(double));
    cpk_tensor_free(v);
  }
  cpk_tensor *y, *gx = new_block(CPK_F64, 1, x);
  tu_ok(cpk_tensor_new(&y, CPK_F64, x->ndim, x->shape));
  tu_ok(l->kind->forward(l, ctx, x, y, strcmp(mode, "train") == 0));
  cpk_tensor *want = fixture_array(dir, "y", 1);
  compare(y, want, dir, "forward");
  cpk_tensor_free(want);
  for (int i = 2; i < 4; i++) {
    char file[64];
    snprintf(file, sizeof file, "%s_after", names[i]);
    if ((want = fixture_array(dir, file, 0)) != NULL) {
      compare(l->params[slot_of(l, names[i])].value, want, dir, file);
      cpk_tensor_free(want);
    }
  }
  cpk_tensor rb;
  int64_t rs[CPK_MAX_DIMS] = {1};
  memcpy(rs + 1, r->shape, (size_t)r->ndim * sizeof *rs);
  cpk__tensor_view(&rb, CPK_F64, r->data, r->ndim + 1, rs);
  tu_ok(l->kind->jac_t_mat(l, ctx, x, y, &rb, gx));
  want = fixture_array(dir, "grad_x", 1);
  cpk_tensor gxv; /* compared as (N, ...) */
  cpk__tensor_view(&gxv, CPK_F64, gx->data, x->ndim, x->shape);
  compare(&gxv, want, dir, "grad_x");
  cpk_tensor_free(want);
  for (int i = 0; i < 2; i++) {
    char file[64];
    int p = slot_of(l, names[i]);
    if (p < 0)
      continue;
    cpk_tensor *g;
    tu_ok(cpk_tensor_new(&g, CPK_F64, 1, l->params[p].shape));
    tu_ok(l->kind->param_jac_t_mat(l, ctx, p, x, &rb, 0, 0.0, g));
    snprintf(file, sizeof file, "grad_%s", names[i]);
    want = fixture_array(dir, file, 1);
    compare(g, want, dir, file);
    cpk_tensor_free(want);
    cpk_tensor_free(g);
  }
  cpk_tensor_free(gx);
  cpk_tensor_free(y);
  cpk_tensor_free(x);
  cpk_tensor_free(r);
  cpk_context_free(ctx);
  cpk_model_free(m);
}

static void test_torch_layers(void **state) {
  FILE *fp = fopen(tu_src("tests/fixtures/batchnorm/cases.txt"), "r");
  char text[256], dir[64], mode[8], line[160];
  int count = 0;
  assert_non_null(fp);
  while (fgets(text, sizeof text, fp) != NULL) {
    assert_int_equal(sscanf(text, "%63s %7s %159[^\n]", dir, mode, line), 3);
    check_torch_case(dir, mode, line);
    count++;
  }
  fclose(fp);
  assert_int_equal(count, 10);
}

/* linear 4 6; batchnorm1d 6; relu; linear 6 3 with cross-entropy (mean),
 * parameters from a PyTorch state_dict, through the public API. */
static void check_end_to_end(const char *mode) {
  char rel[128], dir[64];
  cpk_model *m;
  cpk_context *ctx;
  cpk_results *res;
  cpk_tensor *x, *t;
  int64_t s = 4;
  snprintf(dir, sizeof dir, "e2e_%s", mode);
  snprintf(rel, sizeof rel, "tests/fixtures/batchnorm/%s/model.txt", dir);
  tu_ok(cpk_model_load(&m, tu_src(rel)));
  tu_ok(cpk_model_build(m, 1, &s, CPK_F64));
  snprintf(rel, sizeof rel, "tests/fixtures/batchnorm/%s/params", dir);
  tu_ok(cpk_model_load_params(m, tu_src(rel)));
  x = fixture_array(dir, "input", 1);
  t = fixture_array(dir, "target", 1);
  tu_ok(cpk_context_new(&ctx, NULL));
  int training = strcmp(mode, "train") == 0;
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL,
                        training};
  tu_ok(cpk_compute(ctx, m, &spec, x, t, &res));
  const char *outs[] = {"loss",          "output",        "0.weight.grad",
                        "0.bias.grad",   "1.weight.grad", "1.bias.grad",
                        "3.weight.grad", "3.bias.grad"};
  for (size_t i = 0; i < sizeof outs / sizeof outs[0]; i++) {
    char file[64];
    snprintf(file, sizeof file, "expected/%s", outs[i]);
    cpk_tensor *want = fixture_array(dir, file, 1);
    const cpk_tensor *got = cpk_results_find(res, outs[i]);
    assert_non_null(got);
    /* With batch statistics the bias before the batch norm has gradient 0
     * (a shift per channel is normalised away): both sides are rounding
     * noise there, hence the absolute floor. */
    compare_atol(got, want, dir, outs[i], 1e-15);
    if (training && strcmp(outs[i], "0.bias.grad") == 0)
      for (int64_t k = 0; k < 6; k++)
        assert_true(fabs(cpk_tensor_get(got, k)) < 1e-15);
    cpk_tensor_free(want);
  }
  /* Buffers get no gradient. */
  assert_null(cpk_results_find(res, "1.running_mean.grad"));
  assert_null(cpk_results_find(res, "1.running_var.grad"));
  assert_int_equal(cpk_model_param_count(m), 4 * 6 + 6 + 6 + 6 + 6 * 3 + 3);
  for (int i = 0; training && i < cpk_model_num_params(m); i++) {
    const char *name;
    cpk_tensor *p;
    char file[64];
    tu_ok(cpk_model_param(m, i, &name, &p));
    if (strncmp(name, "1.running_", 10) != 0)
      continue;
    snprintf(file, sizeof file, "expected/%s", name);
    cpk_tensor *want = fixture_array(dir, file, 1);
    compare(p, want, dir, name);
    cpk_tensor_free(want);
  }
  cpk_results_free(res);
  cpk_tensor_free(x);
  cpk_tensor_free(t);
  cpk_context_free(ctx);
  cpk_model_free(m);
}

static void test_end_to_end_eval(void **state) { check_end_to_end("eval"); }
static void test_end_to_end_train(void **state) { check_end_to_end("train"); }

/* ------------------------------------------------------------ float32 */

/* The float32 kernels against the float64 ones on the same values. */
static void test_float32(void **state) {
  for (int training = 0; training < 2; training++)
    for (int i = 0; i < NCASES; i++) {
      fixture a, b;
      char what[192];
      setup_case(&a, &cases[i], training, CPK_F64, 200 + (uint64_t)i);
      setup_case(&b, &cases[i], training, CPK_F32, 200 + (uint64_t)i);
      /* The same (float32-representable) values in both. */
      for (int64_t k = 0; k < cpk_tensor_numel(a.x); k++)
        cpk_tensor_set(a.x, k, cpk_tensor_get(b.x, k));
      for (int p = 0; p < a.l->nparams; p++)
        for (int64_t k = 0; k < cpk_tensor_numel(a.l->params[p].value); k++)
          cpk_tensor_set(a.l->params[p].value, k,
                         cpk_tensor_get(b.l->params[p].value, k));
      /* Training forwards moved b's buffers once already: run both once
       * more from equal buffers. */
      forward_into(&a, a.x, a.y);
      forward_into(&b, b.x, b.y);
      snprintf(what, sizeof what, "%s f32 %s: forward", cases[i].line,
               training ? "train" : "eval");
      tu_assert_close(b.y, a.y, 1e-5, 0, what);
      cpk_tensor *u64 = random_block(a.x, 7), *u32, *o64, *o32;
      tu_ok(cpk_tensor_convert(&u32, u64, CPK_F32));
      o64 = new_block(CPK_F64, V, a.x);
      o32 = new_block(CPK_F32, V, a.x);
      tu_ok(a.l->kind->jac_t_mat(a.l, a.ctx, a.x, a.y, u64, o64));
      tu_ok(b.l->kind->jac_t_mat(b.l, b.ctx, b.x, b.y, u32, o32));
      snprintf(what, sizeof what, "%s f32 %s: jac_t_mat", cases[i].line,
               training ? "train" : "eval");
      tu_assert_close(o32, o64, 1e-5, 0, what);
      tu_ok(a.l->kind->jac_mat(a.l, a.ctx, a.x, a.y, u64, o64));
      tu_ok(b.l->kind->jac_mat(b.l, b.ctx, b.x, b.y, u32, o32));
      snprintf(what, sizeof what, "%s f32 %s: jac_mat", cases[i].line,
               training ? "train" : "eval");
      tu_assert_close(o32, o64, 1e-5, 0, what);
      for (int p = 0; p < a.l->nparams; p++) {
        if (!a.l->params[p].trainable)
          continue;
        int64_t ps[3] = {V, N, a.l->params[p].shape[0]};
        cpk_tensor *g64, *g32;
        tu_ok(cpk_tensor_new(&g64, CPK_F64, 3, ps));
        tu_ok(cpk_tensor_new(&g32, CPK_F32, 3, ps));
        tu_ok(a.l->kind->param_jac_t_mat(a.l, a.ctx, p, a.x, u64, 1, 0, g64));
        tu_ok(b.l->kind->param_jac_t_mat(b.l, b.ctx, p, b.x, u32, 1, 0, g32));
        snprintf(what, sizeof what, "%s f32 %s: %s per sample", cases[i].line,
                 training ? "train" : "eval", a.l->params[p].name);
        tu_assert_close(g32, g64, 1e-5, 0, what);
        cpk_tensor_free(g64);
        cpk_tensor_free(g32);
      }
      cpk_tensor_free(u64);
      cpk_tensor_free(u32);
      cpk_tensor_free(o64);
      cpk_tensor_free(o32);
      teardown_case(&a);
      teardown_case(&b);
    }
}

/* Threads split channels (and block columns) only, each reduction stays in
 * one thread: a batch large enough for the parallel loops gives the same
 * bits with 1 and 4 threads. */
static void run_big(int threads, int training, cpk_tensor **outs) {
  const int64_t shape[3] = {5, 40, 41}, xs[4] = {17, 5, 40, 41};
  const int64_t bs[5] = {2, 17, 5, 40, 41}, ps[3] = {2, 17, 5};
  cpk_context_options o = {.threads = threads};
  cpk_context *ctx;
  cpk_model *m = make_layer("batchnorm2d 5", 3, shape, CPK_F32);
  cpk__layer *l = m->layers[0];
  randomise(l, 8);
  tu_ok(cpk_context_new(&ctx, &o));
  cpk__context_apply_threads(ctx);
  cpk_tensor *x = tu_random(CPK_F32, 4, xs, -1, 2, 9);
  cpk_tensor *u = tu_random(CPK_F32, 5, bs, -1, 1, 10);
  tu_ok(cpk_tensor_new(&outs[0], CPK_F32, 4, xs));
  tu_ok(cpk_tensor_new(&outs[1], CPK_F32, 5, bs));
  tu_ok(cpk_tensor_new(&outs[2], CPK_F32, 3, ps));
  tu_ok(l->kind->forward(l, ctx, x, outs[0], training));
  tu_ok(l->kind->jac_t_mat(l, ctx, x, outs[0], u, outs[1]));
  tu_ok(l->kind->param_jac_t_mat(l, ctx, 0, x, u, 1, 0.0, outs[2]));
  tu_ok(cpk_tensor_convert(&outs[3], l->params[3].value, CPK_F32));
  cpk_tensor_free(x);
  cpk_tensor_free(u);
  cpk_context_free(ctx);
  cpk_model_free(m);
}

static void test_threads(void **state) {
  for (int training = 0; training < 2; training++) {
    cpk_tensor *one[4], *four[4];
    run_big(1, training, one);
    run_big(4, training, four);
    for (int i = 0; i < 4; i++) {
      size_t bytes = (size_t)cpk_tensor_numel(one[i]) * sizeof(float);
      assert_int_equal(cpk_tensor_numel(one[i]), cpk_tensor_numel(four[i]));
      assert_memory_equal(one[i]->data, four[i]->data, bytes);
      cpk_tensor_free(one[i]);
      cpk_tensor_free(four[i]);
    }
  }
}

/* ------------------------------------------------- parameters, errors */

static void expect_names(const char *line, int ndim, const int64_t *shape,
                         const char *const *names, int count) {
  cpk_model *m = make_layer(line, ndim, shape, CPK_F64);
  tu_ok(cpk_model_init_params(m, 3));
  assert_int_equal(cpk_model_num_params(m), count);
  int64_t trainable = 0;
  for (int i = 0; i < count; i++) {
    const char *name;
    cpk_tensor *t;
    tu_ok(cpk_model_param(m, i, &name, &t));
    assert_string_equal(name, names[i]);
    assert_int_equal(t->ndim, 1);
    assert_int_equal(t->shape[0], shape[0]);
    /* PyTorch's reset_parameters(): weight 1, bias 0, running 0 and 1. */
    double want = strstr(name, "weight") || strstr(name, "var") ? 1.0 : 0.0;
    for (int64_t k = 0; k < t->shape[0]; k++)
      assert_true(cpk_tensor_get(t, k) == want);
    if (strstr(name, "running") == NULL)
      trainable += t->shape[0];
  }
  assert_int_equal(cpk_model_param_count(m), trainable);
  cpk_model_free(m);
}

static void test_parameters(void **state) {
  const int64_t s1[1] = {5}, s2[3] = {4, 2, 3};
  const char *all[] = {"0.weight", "0.bias", "0.running_mean", "0.running_var"};
  const char *buffers[] = {"0.running_mean", "0.running_var"};
  expect_names("batchnorm1d 5", 1, s1, all, 4);
  expect_names("batchnorm2d num_features=4", 3, s2, all, 4);
  expect_names("batchnorm1d 5 affine=false", 1, s1, buffers, 2);
  expect_names("batchnorm2d 4 track_running_stats=false", 3, s2, all, 2);
  expect_names("batchnorm1d 5 affine=false track_running_stats=false", 1, s1,
               all, 0);
}

static void expect_error(const char *text, int ndim, const int64_t *shape,
                         int want, const char *const *parts, int nparts) {
  cpk_model *m = NULL;
  int rc = cpk_model_parse(&m, text, "net.txt");
  if (rc == CPK_OK)
    rc = cpk_model_build(m, ndim, shape, CPK_F64);
  assert_int_equal(rc, want);
  for (int i = 0; i < nparts; i++)
    if (strstr(cpk_last_error(), parts[i]) == NULL) {
      print_error("message '%s' lacks '%s'\n", cpk_last_error(), parts[i]);
      fail();
    }
  cpk_model_free(m);
}

static void test_errors(void **state) {
  const int64_t s4[1] = {4}, s34[2] = {3, 4}, s345[3] = {3, 4, 5};
  const char *mismatch[] = {"net.txt:3", "batchnorm1d", "num_features is 5",
                            "6 channels"};
  expect_error("linear 4 6\n# comment\nbatchnorm1d 5\n", 1, s4, CPK_ESHAPE,
               mismatch, 4);
  const char *mismatch2d[] = {"net.txt:1", "batchnorm2d", "num_features is 2",
                              "3 channels"};
  expect_error("batchnorm2d 2\n", 3, s345, CPK_ESHAPE, mismatch2d, 4);
  const char *axes2d[] = {"net.txt:1", "(N, F, H, W)", "(3, 4)"};
  expect_error("batchnorm2d 3\n", 2, s34, CPK_ESHAPE, axes2d, 3);
  const char *axes1d[] = {"net.txt:1", "(N, F) or (N, F, L)", "(3, 4, 5)"};
  expect_error("batchnorm1d 3\n", 3, s345, CPK_ESHAPE, axes1d, 3);
  const char *zero[] = {"net.txt:1", "num_features must be positive"};
  expect_error("batchnorm1d 0\n", 1, s4, CPK_EFORMAT, zero, 2);
  const char *huge[] = {"net.txt:1", "overflows"};
  expect_error("batchnorm1d 4611686018427387904\n", 1, s4, CPK_EOVERFLOW, huge,
               2);
  const char *eps[] = {"net.txt:1", "eps"};
  expect_error("batchnorm1d 4 eps=-1\n", 1, s4, CPK_EFORMAT, eps, 2);
  const char *none[] = {"net.txt:1", "momentum", "None"};
  expect_error("batchnorm1d 4 momentum=None\n", 1, s4, CPK_EFORMAT, none, 3);

  /* Batch statistics of one value per channel (PyTorch refuses too);
   * evaluation mode is fine with N = 1. */
  cpk_model *m = make_layer("batchnorm1d 4", 1, s4, CPK_F64);
  cpk__layer *l = m->layers[0];
  cpk_context *ctx;
  int64_t xs[2] = {1, 4};
  tu_ok(cpk_context_new(&ctx, NULL));
  cpk_tensor *x = tu_random(CPK_F64, 2, xs, -1, 1, 1), *y, *g;
  tu_ok(cpk_tensor_new(&y, CPK_F64, 2, xs));
  tu_ok(cpk_tensor_new(&g, CPK_F64, 1, s4));
  /* No derivative before a forward. */
  assert_int_equal(l->kind->param_jac_t_mat(l, ctx, 0, x, x, 0, 0.0, g),
                   CPK_EINVAL);
  assert_non_null(strstr(cpk_last_error(), "before a successful forward"));
  assert_int_equal(l->kind->forward(l, ctx, x, y, 1), CPK_EINVAL);
  assert_non_null(strstr(cpk_last_error(), "more than one value per channel"));
  assert_int_equal(l->kind->jac_t_mat(l, ctx, x, y, x, y), CPK_EINVAL);
  tu_ok(l->kind->forward(l, ctx, x, y, 0));
  /* Buffers have no parameter Jacobian. */
  assert_int_equal(l->kind->param_jac_t_mat(l, ctx, 2, x, x, 0, 0.0, g),
                   CPK_EINVAL);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_tensor_free(g);
  cpk_context_free(ctx);
  cpk_model_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_input_jacobians_eval),
      cmocka_unit_test(test_input_jacobians_train),
      cmocka_unit_test(test_param_jacobians_eval),
      cmocka_unit_test(test_param_jacobians_train),
      cmocka_unit_test(test_per_sample_chunks),
      cmocka_unit_test(test_forward_and_running_stats),
      cmocka_unit_test(test_torch_layers),
      cmocka_unit_test(test_end_to_end_eval),
      cmocka_unit_test(test_end_to_end_train),
      cmocka_unit_test(test_float32),
      cmocka_unit_test(test_threads),
      cmocka_unit_test(test_parameters),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
