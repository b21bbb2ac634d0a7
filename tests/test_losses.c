/*
 * test_losses.c: each loss against its closed form, its gradient against
 * central finite differences (float64), the mean/sum scaling as PyTorch
 * defines it, and the checks of the target.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "losses/loss.h"
#include "testutil.h"

static cpk_tensor *make(cpk_dtype dt, int ndim, const int64_t *shape,
                        const double *v) {
  cpk_tensor *t;
  tu_ok(cpk_tensor_new(&t, dt, ndim, shape));
  for (int64_t i = 0; i < cpk_tensor_numel(t); i++)
    cpk_tensor_set(t, i, v[i]);
  return t;
}

static double loss_of(const cpk__loss_def *d, cpk_reduction red,
                      const cpk_tensor *f, const cpk_tensor *y,
                      cpk_tensor *grad) {
  double value;
  cpk_tensor *g = grad;
  if (g == NULL)
    tu_ok(cpk_tensor_new(&g, f->dtype, f->ndim, f->shape));
  tu_ok(d->check_target(f, y));
  tu_ok(d->value_grad(NULL, cpk__loss_scale(d, red, f), f, y, &value, g));
  if (grad == NULL)
    cpk_tensor_free(g);
  return value;
}

static void test_closed_forms(void **state) {
  int64_t s13[2] = {1, 3}, s1 = 1, s12[2] = {1, 2}, s22[2] = {2, 2};
  /* CE: logsumexp(1,2,3) - 3, gradient softmax - onehot. */
  cpk_tensor *f = make(CPK_F64, 2, s13, (double[]){1, 2, 3});
  cpk_tensor *y = make(CPK_I64, 1, &s1, (double[]){2});
  cpk_tensor *g;
  tu_ok(cpk_tensor_new(&g, CPK_F64, 2, s13));
  double z = exp(1) + exp(2) + exp(3);
  double want = log(z) - 3, got = loss_of(&cpk__cross_entropy_loss,
                                          CPK_REDUCTION_MEAN, f, y, g);
  tu_assert_close_array(&got, &want, 1, 1e-14, 0, "cross_entropy value");
  double wg[3] = {exp(1) / z, exp(2) / z, exp(3) / z - 1};
  tu_assert_close_array(g->data, wg, 3, 1e-14, 0, "cross_entropy grad");
  cpk_tensor_free(f);
  cpk_tensor_free(y);
  cpk_tensor_free(g);

  /* MSE: (1-0)^2 + (2-4)^2 = 5; mean over the 2 elements. */
  f = make(CPK_F64, 2, s12, (double[]){1, 2});
  y = make(CPK_F64, 2, s12, (double[]){0, 4});
  want = 2.5;
  got = loss_of(&cpk__mse_loss, CPK_REDUCTION_MEAN, f, y, NULL);
  tu_assert_close_array(&got, &want, 1, 1e-14, 0, "mse mean");
  want = 5.0;
  got = loss_of(&cpk__mse_loss, CPK_REDUCTION_SUM, f, y, NULL);
  tu_assert_close_array(&got, &want, 1, 1e-14, 0, "mse sum");
  cpk_tensor_free(f);
  cpk_tensor_free(y);

  /* BCE: f = 0 gives log 2 whatever y; f = 30, y = 0 gives ~30; mean over
   * all four elements. */
  f = make(CPK_F64, 2, s22, (double[]){0, 0, 30, -30});
  y = make(CPK_F64, 2, s22, (double[]){1, 0.25, 0, 0});
  want = (2 * log(2) + 30 + log1p(exp(-30)) + log1p(exp(-30))) / 4;
  got = loss_of(&cpk__bce_with_logits_loss, CPK_REDUCTION_MEAN, f, y, NULL);
  tu_assert_close_array(&got, &want, 1, 1e-14, 0, "bce mean");
  cpk_tensor_free(f);
  cpk_tensor_free(y);
}

/* Cross-entropy over [N, C, S] equals the one over [N*S, C] rows. */
static void test_cross_entropy_spatial(void **state) {
  int64_t fs[3] = {2, 3, 2}, ys[2] = {2, 2}, rs[2] = {4, 3}, r1 = 4;
  cpk_tensor *f = tu_random(CPK_F64, 3, fs, -2, 2, 3);
  cpk_tensor *y = make(CPK_I64, 2, ys, (double[]){0, 2, 1, 1});
  cpk_tensor *rows, *ry, *g, *rg;
  tu_ok(cpk_tensor_new(&rows, CPK_F64, 2, rs));
  for (int n = 0; n < 2; n++)
    for (int c = 0; c < 3; c++)
      for (int s = 0; s < 2; s++)
        cpk_tensor_set(rows, (n * 2 + s) * 3 + c,
                       cpk_tensor_get(f, (n * 3 + c) * 2 + s));
  ry = make(CPK_I64, 1, &r1, (double[]){0, 2, 1, 1});
  tu_ok(cpk_tensor_new(&g, CPK_F64, 3, fs));
  tu_ok(cpk_tensor_new(&rg, CPK_F64, 2, rs));
  double a = loss_of(&cpk__cross_entropy_loss, CPK_REDUCTION_MEAN, f, y, g);
  double b = loss_of(&cpk__cross_entropy_loss, CPK_REDUCTION_MEAN, rows, ry, rg);
  tu_assert_close_array(&a, &b, 1, 1e-14, 0, "spatial cross_entropy");
  for (int n = 0; n < 2; n++)
    for (int c = 0; c < 3; c++)
      for (int s = 0; s < 2; s++) {
        double x = cpk_tensor_get(g, (n * 3 + c) * 2 + s);
        double w = cpk_tensor_get(rg, (n * 2 + s) * 3 + c);
        tu_assert_close_array(&x, &w, 1, 1e-14, 1e-16, "spatial grad");
      }
  cpk_tensor_free(f);
  cpk_tensor_free(y);
  cpk_tensor_free(rows);
  cpk_tensor_free(ry);
  cpk_tensor_free(g);
  cpk_tensor_free(rg);
}

/* Cross-entropy's compact square root ((C-1) columns per position) has
 * the outer products of the loss Hessian, per sample: sum_v S S^T equals
 * c (diag(p) - p p^T) at each position and 0 across positions, built here
 * column by column from hessian_mat applied to unit vectors. Also for the
 * smallest case, two classes (one column), and with a class of
 * probability near 1 (q_last near 1) and near 0. */
static void test_cross_entropy_compact_root(void **state) {
  const cpk__loss_def *d = &cpk__cross_entropy_loss;
  static const struct {
    int ndim;
    int64_t shape[3];
    double spread;
  } cases[] = {{2, {3, 10}, 2}, {2, {2, 2}, 1}, {3, {2, 4, 3}, 3},
               {2, {2, 5}, 40}};
  (void)state;
  for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
    cpk_tensor *f = tu_random(CPK_F64, cases[t].ndim, cases[t].shape,
                              -cases[t].spread, cases[t].spread, 11 + t);
    const int64_t n = f->shape[0], per = cpk_tensor_numel(f) / n;
    const int64_t v = d->compact_sqrt_columns(f);
    const double c = 0.25;
    assert_int_equal(v, (f->shape[1] - 1) * (per / f->shape[1]));
    int64_t rshape[CPK_MAX_DIMS + 1] = {v}, eshape[CPK_MAX_DIMS + 1] = {per};
    memcpy(rshape + 1, f->shape, (size_t)f->ndim * sizeof(int64_t));
    memcpy(eshape + 1, f->shape, (size_t)f->ndim * sizeof(int64_t));
    cpk_tensor *root, *unit, *h;
    tu_ok(cpk_tensor_new(&root, CPK_F64, f->ndim + 1, rshape));
    tu_ok(d->compact_sqrt_hessian(NULL, c, f, NULL, root));
    /* unit[e, m] = e-th unit vector of every sample; h = H unit */
    tu_ok(cpk_tensor_new(&unit, CPK_F64, f->ndim + 1, eshape));
    tu_ok(cpk_tensor_new(&h, CPK_F64, f->ndim + 1, eshape));
    for (int64_t e = 0; e < per; e++)
      for (int64_t m = 0; m < n; m++)
        cpk_tensor_set(unit, (e * n + m) * per + e, 1.0);
    tu_ok(d->hessian_mat(NULL, c, f, unit, h));
    for (int64_t m = 0; m < n; m++)
      for (int64_t a = 0; a < per; a++)
        for (int64_t b = 0; b < per; b++) {
          double got = 0;
          for (int64_t k = 0; k < v; k++)
            got += cpk_tensor_get(root, (k * n + m) * per + a) *
                   cpk_tensor_get(root, (k * n + m) * per + b);
          double want = cpk_tensor_get(h, (b * n + m) * per + a);
          tu_assert_close_array(&got, &want, 1, 1e-12, 1e-15,
                                "compact root outer products");
        }
    cpk_tensor_free(f);
    cpk_tensor_free(root);
    cpk_tensor_free(unit);
    cpk_tensor_free(h);
  }
}

/* Every loss and reduction: gradient against central differences. */
static void test_gradients_fd(void **state) {
  const cpk__loss_def *defs[3] = {&cpk__cross_entropy_loss, &cpk__mse_loss,
                                  &cpk__bce_with_logits_loss};
  int64_t fs[2] = {3, 4}, n = 3;
  for (int d = 0; d < 3; d++)
    for (int red = 0; red < 2; red++) {
      cpk_tensor *f = tu_random(CPK_F64, 2, fs, -2, 2, 11 + (uint64_t)d);
      cpk_tensor *y;
      if (d == 0)
        y = make(CPK_I64, 1, &n, (double[]){3, 0, 1});
      else
        y = tu_random(CPK_F64, 2, fs, 0, 1, 17);
      cpk_tensor *g;
      tu_ok(cpk_tensor_new(&g, CPK_F64, 2, fs));
      loss_of(defs[d], (cpk_reduction)red, f, y, g);
      double fd[12];
      for (int i = 0; i < 12; i++) {
        double *x = f->data, keep = x[i];
        x[i] = keep + 1e-6;
        double lp = loss_of(defs[d], (cpk_reduction)red, f, y, NULL);
        x[i] = keep - 1e-6;
        double lm = loss_of(defs[d], (cpk_reduction)red, f, y, NULL);
        x[i] = keep;
        fd[i] = (lp - lm) / 2e-6;
      }
      char what[64];
      snprintf(what, sizeof what, "%s %s gradient", defs[d]->name,
               red ? "sum" : "mean");
      tu_assert_close_array(g->data, fd, 12, 1e-8, 1e-10, what);
      /* mean = sum / R with R = N (CE) or every element (MSE, BCE). */
      double mean = loss_of(defs[d], CPK_REDUCTION_MEAN, f, y, NULL);
      double sum = loss_of(defs[d], CPK_REDUCTION_SUM, f, y, NULL) /
                   (d == 0 ? 3.0 : 12.0);
      tu_assert_close_array(&mean, &sum, 1, 1e-14, 0, "mean vs sum");
      cpk_tensor_free(f);
      cpk_tensor_free(y);
      cpk_tensor_free(g);
    }
}

static void expect_target_error(const cpk__loss_def *d, const cpk_tensor *f,
                                const cpk_tensor *y, int status,
                                const char *needle) {
  cpk_clear_error();
  assert_int_equal(d->check_target(f, y), status);
  if (strstr(cpk_last_error(), needle) == NULL) {
    print_error("message '%s' lacks '%s'\n", cpk_last_error(), needle);
    fail();
  }
}

static void test_target_checks(void **state) {
  int64_t fs[2] = {2, 3}, n2 = 2, n3 = 3;
  cpk_tensor *f = tu_random(CPK_F64, 2, fs, -1, 1, 1);
  cpk_tensor *idx = make(CPK_I64, 1, &n2, (double[]){0, 3});
  expect_target_error(&cpk__cross_entropy_loss, f, idx, CPK_ERANGE,
                      "out of range");
  cpk_tensor_free(idx);
  idx = make(CPK_I32, 1, &n2, (double[]){0, -1});
  expect_target_error(&cpk__cross_entropy_loss, f, idx, CPK_ERANGE,
                      "out of range");
  cpk_tensor_free(idx);
  idx = make(CPK_I64, 1, &n3, (double[]){0, 1, 2});
  expect_target_error(&cpk__cross_entropy_loss, f, idx, CPK_ESHAPE, "(2,)");
  cpk_tensor_free(idx);
  cpk_tensor *fl = make(CPK_F64, 1, &n2, (double[]){0, 1});
  expect_target_error(&cpk__cross_entropy_loss, f, fl, CPK_EINVAL, "integer");
  cpk_tensor_free(fl);
  cpk_tensor *y = tu_random(CPK_F64, 2, fs, 0, 1, 2);
  cpk_tensor_set(y, 4, NAN);
  expect_target_error(&cpk__mse_loss, f, y, CPK_ENONFINITE, "target");
  cpk_tensor_set(y, 4, INFINITY);
  expect_target_error(&cpk__bce_with_logits_loss, f, y, CPK_ENONFINITE,
                      "target");
  cpk_tensor_free(y);
  int64_t ws[2] = {3, 2};
  y = tu_random(CPK_F64, 2, ws, 0, 1, 2);
  expect_target_error(&cpk__mse_loss, f, y, CPK_ESHAPE, "(2, 3)");
  cpk_tensor_free(y);
  cpk_tensor_free(f);
}

static void test_names(void **state) {
  cpk_loss_kind k;
  cpk_reduction r;
  tu_ok(cpk_loss_parse("bce_with_logits", &k));
  assert_int_equal(k, CPK_LOSS_BCE_WITH_LOGITS);
  assert_string_equal(cpk_loss_name(CPK_LOSS_MSE), "mse");
  assert_int_equal(cpk_loss_parse("nll", &k), CPK_EUSAGE);
  tu_ok(cpk_reduction_parse("sum", &r));
  assert_int_equal(r, CPK_REDUCTION_SUM);
  assert_int_equal(cpk_reduction_parse("none", &r), CPK_EUSAGE);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_closed_forms),
      cmocka_unit_test(test_cross_entropy_spatial),
      cmocka_unit_test(test_cross_entropy_compact_root),
      cmocka_unit_test(test_gradients_fd),
      cmocka_unit_test(test_target_checks),
      cmocka_unit_test(test_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
