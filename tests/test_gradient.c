/*
 * test_gradient.c: whole-network gradients from cpk_compute against central
 * finite differences of the loss (float64), for networks mixing every layer
 * of this release, all three losses and both reductions; float32 against
 * float64; and the errors cpk_compute reports on bad inputs.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "testutil.h"

static const char *const nets[] = {
    "flatten\nlinear 6 5\nsigmoid\nlinear 5 5 bias=false\ntanh\nexp\n"
    "linear 5 4\nelu alpha=0.5\ndropout\nlinear 4 OUT\n",
    "flatten\nlinear 6 5\nselu\nlinear 5 5\nlogsigmoid\nidentity\n"
    "linear 5 4\nleaky_relu negative_slope=0.1\nlinear 4 OUT\n",
    "flatten\nlinear 6 5\nrelu\nlinear 5 5\nsigmoid\nlog\nlinear 5 OUT\n",
};
#define OUT 3
#define N 4

static cpk_model *make_model(int net, cpk_dtype dt, uint64_t seed) {
  char text[512], *p;
  snprintf(text, sizeof text, "%s", nets[net]);
  p = strstr(text, "OUT");
  p[0] = '0' + OUT;
  memmove(p + 1, p + 3, strlen(p + 3) + 1);
  cpk_model *m;
  int64_t shape[2] = {2, 3};
  tu_ok(cpk_model_parse(&m, text, "net"));
  tu_ok(cpk_model_build(m, 2, shape, dt));
  tu_ok(cpk_model_init_params(m, seed));
  return m;
}

static cpk_tensor *make_target(cpk_loss_kind loss, cpk_dtype dt) {
  int64_t s2[2] = {N, OUT}, n = N;
  if (loss == CPK_LOSS_CROSS_ENTROPY) {
    cpk_tensor *t;
    tu_ok(cpk_tensor_new(&t, CPK_I64, 1, &n));
    for (int i = 0; i < N; i++)
      cpk_tensor_set(t, i, (i * 2) % OUT);
    return t;
  }
  return tu_random(dt, 2, s2, 0, 1, 99);
}

static double loss_at(cpk_context *ctx, cpk_model *m, const cpk_pass_spec *s,
                      const cpk_tensor *x, const cpk_tensor *y) {
  cpk_results *r;
  tu_ok(cpk_compute(ctx, m, s, x, y, &r));
  double v = cpk_tensor_get(cpk_results_find(r, "loss"), 0);
  cpk_results_free(r);
  return v;
}

static void test_gradients_fd(void **state) {
  int64_t xs[3] = {N, 2, 3};
  cpk_context *ctx;
  tu_ok(cpk_context_new(&ctx, NULL));
  for (int net = 0; net < 3; net++)
    for (int loss = 0; loss < 3; loss++)
      for (int red = 0; red < 2; red++) {
        cpk_model *m = make_model(net, CPK_F64, 7 + (uint64_t)net);
        cpk_tensor *x = tu_random(CPK_F64, 3, xs, -1, 1, 3 + (uint64_t)loss);
        if (net == 2) /* log after sigmoid: any input is fine */
          (void)0;
        cpk_tensor *y = make_target((cpk_loss_kind)loss, CPK_F64);
        cpk_pass_spec spec = {(cpk_loss_kind)loss, (cpk_reduction)red, NULL, 0};
        cpk_results *r;
        tu_ok(cpk_compute(ctx, m, &spec, x, y, &r));
        for (int p = 0; p < cpk_model_num_params(m); p++) {
          const char *name;
          cpk_tensor *theta;
          char key[64], what[128];
          tu_ok(cpk_model_param(m, p, &name, &theta));
          snprintf(key, sizeof key, "%s.grad", name);
          const cpk_tensor *g = cpk_results_find(r, key);
          assert_non_null(g);
          int64_t np = cpk_tensor_numel(theta);
          double fd[64];
          assert_true(np <= 64);
          for (int64_t k = 0; k < np; k++) {
            double *t = theta->data, keep = t[k];
            t[k] = keep + 1e-5;
            double lp = loss_at(ctx, m, &spec, x, y);
            t[k] = keep - 1e-5;
            double lm = loss_at(ctx, m, &spec, x, y);
            t[k] = keep;
            fd[k] = (lp - lm) / 2e-5;
          }
          snprintf(what, sizeof what, "net %d %s %s %s", net,
                   cpk_loss_name((cpk_loss_kind)loss), red ? "sum" : "mean",
                   key);
          tu_assert_close_array(g->data, fd, np, 1e-6, 1e-9, what);
        }
        cpk_results_free(r);
        cpk_tensor_free(x);
        cpk_tensor_free(y);
        cpk_model_free(m);
      }
  cpk_context_free(ctx);
}

/* float32 agrees with float64 on the same parameters and data. */
static void test_float32_matches_float64(void **state) {
  int64_t xs[3] = {N, 2, 3};
  cpk_context *ctx;
  tu_ok(cpk_context_new(&ctx, NULL));
  for (int loss = 0; loss < 3; loss++) {
    cpk_model *m64 = make_model(0, CPK_F64, 5), *m32 = make_model(0, CPK_F32, 5);
    for (int p = 0; p < cpk_model_num_params(m64); p++) {
      cpk_tensor *a, *b;
      tu_ok(cpk_model_param(m64, p, NULL, &a));
      tu_ok(cpk_model_param(m32, p, NULL, &b));
      for (int64_t k = 0; k < cpk_tensor_numel(a); k++)
        cpk_tensor_set(a, k, cpk_tensor_get(b, k));
    }
    cpk_tensor *x = tu_random(CPK_F32, 3, xs, -1, 1, 4);
    cpk_tensor *y = make_target((cpk_loss_kind)loss, CPK_F32);
    cpk_pass_spec spec = {(cpk_loss_kind)loss, CPK_REDUCTION_MEAN, "", 0};
    cpk_results *r64, *r32;
    tu_ok(cpk_compute(ctx, m64, &spec, x, y, &r64)); /* converts x */
    tu_ok(cpk_compute(ctx, m32, &spec, x, y, &r32));
    assert_int_equal(cpk_results_count(r64), cpk_results_count(r32));
    for (int i = 0; i < cpk_results_count(r64); i++) {
      const cpk_tensor *b = cpk_results_tensor(r32, i);
      assert_int_equal(b->dtype, CPK_F32);
      tu_assert_close(b, cpk_results_tensor(r64, i), 1e-5, 1e-7,
                      cpk_results_name(r64, i));
    }
    cpk_results_free(r64);
    cpk_results_free(r32);
    cpk_tensor_free(x);
    cpk_tensor_free(y);
    cpk_model_free(m64);
    cpk_model_free(m32);
  }
  cpk_context_free(ctx);
}

/* The gradient summed over single-sample passes (reduction sum) equals the
 * batch gradient: samples do not interact outside training. */
static void test_batch_is_sum_of_samples(void **state) {
  int64_t xs[3] = {N, 2, 3}, one[3] = {1, 2, 3}, n1 = 1;
  cpk_context *ctx;
  tu_ok(cpk_context_new(&ctx, NULL));
  cpk_model *m = make_model(1, CPK_F64, 3);
  cpk_tensor *x = tu_random(CPK_F64, 3, xs, -1, 1, 8);
  cpk_tensor *y = make_target(CPK_LOSS_CROSS_ENTROPY, CPK_F64);
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_SUM, NULL, 0};
  cpk_results *all;
  tu_ok(cpk_compute(ctx, m, &spec, x, y, &all));
  const char *name;
  tu_ok(cpk_model_param(m, 0, &name, NULL));
  const cpk_tensor *g = cpk_results_find(all, "0.weight.grad");
  (void)name;
  assert_null(g); /* layer 0 is flatten: the first weight is 1.weight */
  g = cpk_results_find(all, "1.weight.grad");
  assert_non_null(g);
  double sum[30] = {0};
  for (int n = 0; n < N; n++) {
    cpk_tensor *xn, *yn;
    tu_ok(cpk_tensor_new(&xn, CPK_F64, 3, one));
    tu_ok(cpk_tensor_new(&yn, CPK_I64, 1, &n1));
    memcpy(xn->data, (double *)x->data + n * 6, 6 * sizeof(double));
    cpk_tensor_set(yn, 0, cpk_tensor_get(y, n));
    cpk_results *r;
    tu_ok(cpk_compute(ctx, m, &spec, xn, yn, &r));
    const cpk_tensor *gn = cpk_results_find(r, "1.weight.grad");
    for (int k = 0; k < 30; k++)
      sum[k] += cpk_tensor_get(gn, k);
    cpk_results_free(r);
    cpk_tensor_free(xn);
    cpk_tensor_free(yn);
  }
  tu_assert_close_array(g->data, sum, 30, 1e-13, 1e-15, "sum of samples");
  cpk_results_free(all);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
  cpk_context_free(ctx);
}

static void test_compute_errors(void **state) {
  int64_t xs[3] = {N, 2, 3}, bad[3] = {N, 3, 2}, n = N;
  cpk_context *ctx;
  cpk_results *r = NULL;
  tu_ok(cpk_context_new(&ctx, NULL));
  cpk_model *m = make_model(0, CPK_F64, 1);
  cpk_tensor *x = tu_random(CPK_F64, 3, xs, -1, 1, 1);
  cpk_tensor *xb = tu_random(CPK_F64, 3, bad, -1, 1, 1);
  cpk_tensor *y = make_target(CPK_LOSS_CROSS_ENTROPY, CPK_F64);
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL, 0};
  assert_int_equal(cpk_compute(ctx, m, &spec, xb, y, &r), CPK_ESHAPE);
  assert_non_null(strstr(cpk_last_error(), "(4, 2, 3)"));
  assert_null(r);
  cpk_tensor_set(x, 5, NAN);
  assert_int_equal(cpk_compute(ctx, m, &spec, x, y, &r), CPK_ENONFINITE);
  assert_non_null(strstr(cpk_last_error(), "input"));
  cpk_tensor_set(x, 5, 0.5);
  spec.extensions = "batch_grad,not_an_extension";
  assert_int_equal(cpk_compute(ctx, m, &spec, x, y, &r), CPK_EUSAGE);
  assert_non_null(strstr(cpk_last_error(), "not_an_extension"));
  assert_true(cpk_extension_known("kfac"));
  assert_false(cpk_extension_known("kfc"));
  spec.extensions = NULL;
  cpk_tensor *yb;
  tu_ok(cpk_tensor_new(&yb, CPK_I64, 1, &n));
  cpk_tensor_set(yb, 2, OUT);
  assert_int_equal(cpk_compute(ctx, m, &spec, x, yb, &r), CPK_ERANGE);
  /* cuda on a machine or build without a usable GPU is an error naming
   * CUDA (with one, tests/test_cuda covers the device) */
  cpk_context *cuda = NULL;
  cpk_context_options o = {.device = CPK_DEVICE_CUDA};
  int rc = cpk_context_new(&cuda, &o);
  if (rc != CPK_OK) {
    assert_int_equal(rc, CPK_ENODEV);
    assert_non_null(strstr(cpk_last_error(), "CUDA"));
    assert_null(cuda);
  }
  cpk_context_free(cuda);
  cpk_tensor_free(yb);
  cpk_tensor_free(x);
  cpk_tensor_free(xb);
  cpk_tensor_free(y);
  cpk_model_free(m);
  cpk_context_free(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gradients_fd),
      cmocka_unit_test(test_float32_matches_float64),
      cmocka_unit_test(test_batch_is_sum_of_samples),
      cmocka_unit_test(test_compute_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
