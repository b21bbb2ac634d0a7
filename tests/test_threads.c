/*
 * test_threads.c: results do not depend on the thread count. cpk_compute
 * with threads = 1 and threads = 2, on a convolutional network and an MLP
 * in float64, with every extension of the contract in one pass (the Monte
 * Carlo ones from the same seed), and every curvature product (Hessian,
 * GGN, MC Fisher, empirical Fisher) on a block of vectors: each result must
 * agree to 1e-12 relative (to the largest magnitude of the array). Threads
 * split the batch or output blocks, and sums may be added in another order,
 * so bitwise equality is not promised; 1e-12 is (README, "Threads").
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curvpack.h"
#include "testutil.h"

#define RTOL 1e-12

static const char *const all_ext =
    "batch_grad,batch_l2_grad,sum_grad_squared,variance,batch_dot_grad,"
    "diag_ggn_exact,diag_ggn_mc,batch_diag_ggn_exact,batch_diag_ggn_mc,"
    "diag_hessian,batch_diag_hessian,kfac,kflr,kfra,sqrt_ggn_exact,"
    "sqrt_ggn_mc";

typedef struct net {
  const char *text;
  int ndim;
  int64_t sample[3];
  int64_t n, classes;
} net;

static cpk_context *context(int threads) {
  cpk_context *ctx;
  cpk_context_options o = {0};
  o.threads = threads;
  o.seed = 11;
  o.mc_samples = 3;
  tu_ok(cpk_context_new(&ctx, &o));
  return ctx;
}

static void build(const net *nt, cpk_model **m, cpk_tensor **x,
                  cpk_tensor **y) {
  int64_t shape[4] = {nt->n};
  memcpy(shape + 1, nt->sample, (size_t)nt->ndim * sizeof *shape);
  tu_ok(cpk_model_parse(m, nt->text, "threads"));
  tu_ok(cpk_model_build(*m, nt->ndim, nt->sample, CPK_F64));
  tu_ok(cpk_model_init_params(*m, 5));
  *x = tu_random(CPK_F64, nt->ndim + 1, shape, -1, 1, 3);
  tu_ok(cpk_tensor_new(y, CPK_I64, 1, shape));
  for (int64_t i = 0; i < nt->n; i++)
    cpk_tensor_set(*y, i, (double)((i * 5 + 1) % nt->classes));
}

static void same_pass(const net *nt) {
  cpk_model *m;
  cpk_tensor *x, *y;
  build(nt, &m, &x, &y);
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, all_ext, 0};
  cpk_results *r[2];
  for (int k = 0; k < 2; k++) {
    cpk_context *ctx = context(k + 1);
    tu_ok(cpk_compute(ctx, m, &spec, x, y, &r[k]));
    cpk_context_free(ctx);
  }
  assert_int_equal(cpk_results_count(r[0]), cpk_results_count(r[1]));
  assert_true(cpk_results_count(r[0]) > 16 * 2);
  for (int i = 0; i < cpk_results_count(r[0]); i++) {
    const char *name = cpk_results_name(r[0], i);
    const cpk_tensor *b = cpk_results_find(r[1], name);
    assert_non_null(b);
    tu_assert_close(b, cpk_results_tensor(r[0], i), RTOL, 0.0, name);
  }
  cpk_results_free(r[0]);
  cpk_results_free(r[1]);

  /* the products, on a block of 3 vectors */
  static const cpk_curvature kinds[4] = {CPK_CURV_HESSIAN, CPK_CURV_GGN,
                                         CPK_CURV_FISHER_MC,
                                         CPK_CURV_EMPIRICAL_FISHER};
  static const char *const names[4] = {"hessian", "ggn", "fisher_mc",
                                       "empirical_fisher"};
  spec.extensions = NULL;
  for (int c = 0; c < 4; c++) {
    double *out[2] = {NULL, NULL};
    int64_t dim = 0;
    cpk_tensor *v = NULL;
    for (int k = 0; k < 2; k++) {
      cpk_context *ctx = context(k + 1);
      cpk_curvature_op *op;
      tu_ok(cpk_curvature_op_new(&op, ctx, m, &spec, x, y, kinds[c]));
      dim = cpk_curvature_op_dim(op);
      if (v == NULL) {
        const int64_t shape[2] = {3, dim};
        v = tu_random(CPK_F64, 2, shape, -1, 1, 9);
      }
      out[k] = calloc((size_t)(3 * dim), sizeof(double));
      tu_ok(cpk_curvature_op_apply(op, 3, v->data, out[k]));
      cpk_curvature_op_free(op);
      cpk_context_free(ctx);
    }
    tu_assert_close_array(out[1], out[0], 3 * dim, RTOL, 0.0, names[c]);
    free(out[0]);
    free(out[1]);
    cpk_tensor_free(v);
  }
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
}

static void test_conv(void **state) {
  (void)state;
  const net nt = {"conv2d 2 4 3 padding=1\nrelu\nmaxpool2d 2\n"
                  "conv2d 4 3 2 stride=1\nsigmoid\nflatten\nlinear 12 4\n",
                  3,
                  {2, 6, 6},
                  24,
                  4};
  same_pass(&nt);
}

static void test_mlp(void **state) {
  (void)state;
  const net nt = {"flatten\nlinear 12 16\ntanh\nlinear 16 8\nrelu\n"
                  "linear 8 5\n",
                  3,
                  {3, 2, 2},
                  32,
                  5};
  same_pass(&nt);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_conv),
      cmocka_unit_test(test_mlp),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
