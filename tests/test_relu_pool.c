/*
 * test_relu_pool.c: the backward pass through a ReLU followed by max
 * pooling (zero padding or cropping between them allowed), which the engine
 * takes as the pooling's J^T of the block masked by [pooled output > 0],
 * leaving out the ReLU's own pass (lib/engine.c, relu_before_pool). The
 * same pass with diag_hessian requested runs every layer's J^T as it is
 * (the Hessian terms read the gradient block at every layer), so each
 * quantity both passes compute must agree to 1e-12 (float64): the
 * gradient, per-sample gradients, the exact and Monte Carlo GGN diagonals,
 * KFLR and the exact square root. The inputs hold dead regions (strongly
 * negative), so that windows tie at zero between ReLU outputs and padded
 * zeros; the nets cover maxpool1d with padding, maxpool2d with overlapping
 * windows after zeropad2d (cifar10_3c3d's pattern), ceil_mode, and a pad
 * followed by a crop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "curvpack.h"
#include "testutil.h"

static const char *const shared =
    "batch_grad,diag_ggn_exact,diag_ggn_mc,batch_diag_ggn_exact,kflr,"
    "sqrt_ggn_exact";

static void check_net(const char *text, int ndim, const int64_t *sample,
                      int64_t n, int64_t classes) {
  cpk_model *m;
  cpk_context *ctx;
  cpk_context_options o = {0};
  o.threads = 2;
  o.seed = 7;
  o.mc_samples = 2;
  int64_t shape[4] = {n};
  memcpy(shape + 1, sample, (size_t)ndim * sizeof *shape);
  tu_ok(cpk_model_parse(&m, text, "relu_pool"));
  tu_ok(cpk_model_build(m, ndim, sample, CPK_F64));
  tu_ok(cpk_model_init_params(m, 4));
  cpk_tensor *x = tu_random(CPK_F64, ndim + 1, shape, -1, 1, 8), *y;
  /* dead regions: the first half of every other sample far below zero */
  const int64_t per = cpk_tensor_numel(x) / n;
  for (int64_t i = 0; i < n; i += 2)
    for (int64_t e = 0; e < per / 2; e++)
      ((double *)x->data)[i * per + e] -= 5.0;
  tu_ok(cpk_tensor_new(&y, CPK_I64, 1, shape));
  for (int64_t i = 0; i < n; i++)
    cpk_tensor_set(y, i, (double)((i * 3 + 1) % classes));
  char with_hessian[256];
  snprintf(with_hessian, sizeof with_hessian, "%s,diag_hessian", shared);
  cpk_pass_spec fused = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, shared,
                         0};
  cpk_pass_spec plain = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN,
                         with_hessian, 0};
  cpk_results *a, *b;
  tu_ok(cpk_context_new(&ctx, &o));
  tu_ok(cpk_compute(ctx, m, &fused, x, y, &a));
  cpk_context_free(ctx);
  tu_ok(cpk_context_new(&ctx, &o));
  tu_ok(cpk_compute(ctx, m, &plain, x, y, &b));
  cpk_context_free(ctx);
  int compared = 0;
  for (int i = 0; i < cpk_results_count(a); i++) {
    const char *name = cpk_results_name(a, i);
    const cpk_tensor *t = cpk_results_find(b, name);
    assert_non_null(t);
    tu_assert_close(cpk_results_tensor(a, i), t, 1e-12, 1e-15, name);
    compared++;
  }
  assert_true(compared >= 12);
  cpk_results_free(a);
  cpk_results_free(b);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
}

/* cifar10_3c3d's pattern: ReLU, zeropad2d 0,1,0,1, overlapping 3x3
 * windows of stride 2. */
static void test_pad_then_overlapping_pool(void **state) {
  const int64_t s[3] = {2, 6, 6};
  check_net("conv2d 2 3 3 padding=1\nrelu\nzeropad2d 0,1,0,1\n"
            "maxpool2d 3 stride=2\nflatten\nlinear 27 4\n",
            3, s, 6, 4);
}

/* maxpool1d with its own (-inf) padding, windows overlapping. */
static void test_pool1d_padding(void **state) {
  const int64_t s[2] = {2, 7};
  check_net("conv1d 2 3 2\nrelu\nmaxpool1d 2 stride=1 padding=1\nflatten\n"
            "linear 21 4\n",
            2, s, 5, 4);
}

/* ceil_mode windows past the edge, then a pad and a crop between a second
 * ReLU and its pooling. */
static void test_ceil_mode_pad_and_crop(void **state) {
  const int64_t s[3] = {1, 7, 7};
  check_net("conv2d 1 2 2\nrelu\nmaxpool2d 2 ceil_mode=true\n"
            "conv2d 2 2 1\nrelu\nzeropad2d 1,1,1,1\nzeropad2d 0,-1,0,-1\n"
            "maxpool2d 2\nflatten\nlinear 8 3\n",
            3, s, 6, 3);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pad_then_overlapping_pool),
      cmocka_unit_test(test_pool1d_padding),
      cmocka_unit_test(test_ceil_mode_pad_and_crop),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
