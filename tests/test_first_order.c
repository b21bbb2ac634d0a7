/*
 * test_first_order.c: the first-order extensions (batch_grad, batch_l2_grad,
 * sum_grad_squared, variance, batch_dot_grad) against a loop of
 * single-sample backward passes, float64, 1e-10 relative, for every loss and
 * reduction; the closed forms (linear on [N, IN]) and the chunked path
 * (linear on [N, R, IN], tiny chunks) both; extensions alone and together.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "context.h"
#include "testutil.h"

#define N 5
#define OUT 3
static const char *const all_ext =
    "batch_grad,batch_l2_grad,sum_grad_squared,variance,batch_dot_grad";

typedef struct {
  const char *text;
  int ndim;
  int64_t shape[3];
} net;

static const net nets[] = {
    /* dense linear layers: closed forms */
    {"flatten\nlinear 6 5\nsigmoid\nlinear 5 4 bias=false\ntanh\nlinear 4 3\n",
     2, {2, 3}},
    /* linear on [N, 2, 3]: per-sample gradients sum over 2 rows (chunked) */
    {"linear 3 4\nelu\nlinear 4 2\nflatten\nlinear 4 3\n", 2, {2, 3}},
};

static cpk_tensor *target_for(cpk_loss_kind loss, int64_t n, uint64_t seed) {
  int64_t s2[2] = {n, OUT};
  if (loss != CPK_LOSS_CROSS_ENTROPY)
    return tu_random(CPK_F64, 2, s2, 0, 1, seed);
  cpk_tensor *t;
  tu_ok(cpk_tensor_new(&t, CPK_I64, 1, &n));
  for (int64_t i = 0; i < n; i++)
    cpk_tensor_set(t, i, (double)((i * 7 + (int64_t)seed) % OUT));
  return t;
}

/* Sample n of a batch tensor as a batch of one. */
static cpk_tensor *sample(const cpk_tensor *t, int64_t n) {
  int64_t shape[CPK_MAX_DIMS];
  memcpy(shape, t->shape, sizeof shape);
  shape[0] = 1;
  cpk_tensor *s;
  tu_ok(cpk_tensor_new(&s, t->dtype, t->ndim, shape));
  int64_t per = cpk_tensor_numel(s);
  for (int64_t i = 0; i < per; i++)
    cpk_tensor_set(s, i, cpk_tensor_get(t, n * per + i));
  return s;
}

static const cpk_tensor *find(const cpk_results *r, const char *param,
                              const char *suffix) {
  char name[96];
  snprintf(name, sizeof name, "%s.%s", param, suffix);
  const cpk_tensor *t = cpk_results_find(r, name);
  if (t == NULL) {
    print_error("result %s missing\n", name);
    fail();
  }
  return t;
}

/* Check every extension output of `r` against per-sample passes. */
static void check_against_loop(cpk_context *ctx, cpk_model *m,
                               cpk_loss_kind loss, cpk_reduction red,
                               const cpk_tensor *x, const cpk_tensor *y,
                               const cpk_results *r, const char *what) {
  /* c of the batch: per-sample gradient = c * gradient of l_n (sum). */
  double c = 1.0;
  if (red == CPK_REDUCTION_MEAN)
    c = loss == CPK_LOSS_CROSS_ENTROPY ? 1.0 / N : 1.0 / (N * OUT);
  cpk_pass_spec one = {loss, CPK_REDUCTION_SUM, NULL, 0};
  for (int p = 0; p < cpk_model_num_params(m); p++) {
    const char *name;
    cpk_tensor *theta;
    tu_ok(cpk_model_param(m, p, &name, &theta));
    const int64_t k = cpk_tensor_numel(theta);
    double gb[N][64], l2[N] = {0}, sgs[64] = {0}, mean[64] = {0}, dot[N * N];
    assert_true(k <= 64);
    for (int64_t n = 0; n < N; n++) {
      cpk_tensor *xn = sample(x, n), *yn = sample(y, n);
      cpk_results *rn;
      char key[64];
      tu_ok(cpk_compute(ctx, m, &one, xn, yn, &rn));
      snprintf(key, sizeof key, "%s.grad", name);
      const cpk_tensor *g = cpk_results_find(rn, key);
      for (int64_t i = 0; i < k; i++) {
        gb[n][i] = c * cpk_tensor_get(g, i);
        l2[n] += gb[n][i] * gb[n][i];
        sgs[i] += gb[n][i] * gb[n][i];
        mean[i] += gb[n][i] / N;
      }
      cpk_results_free(rn);
      cpk_tensor_free(xn);
      cpk_tensor_free(yn);
    }
    double var[64], flat[N * 64];
    for (int64_t i = 0; i < k; i++)
      var[i] = sgs[i] / N - mean[i] * mean[i];
    for (int a = 0; a < N; a++) {
      for (int b = 0; b < N; b++) {
        dot[a * N + b] = 0;
        for (int64_t i = 0; i < k; i++)
          dot[a * N + b] += gb[a][i] * gb[b][i];
      }
      memcpy(flat + a * k, gb[a], (size_t)k * sizeof(double));
    }
    char msg[160];
#define CHECK(suffix, want, count)                                             \
  snprintf(msg, sizeof msg, "%s: %s.%s", what, name, suffix);                  \
  tu_assert_close_array(find(r, name, suffix)->data, want, count, 1e-10,       \
                        1e-14, msg)
    if (cpk_results_find(r, "1.weight.grad_batch") ||
        cpk_results_find(r, "0.weight.grad_batch")) {
      CHECK("grad_batch", flat, N * k);
    }
    CHECK("batch_l2", l2, N);
    CHECK("sum_grad_squared", sgs, k);
    CHECK("variance", var, k);
    CHECK("batch_dot", dot, N * N);
#undef CHECK
  }
}

static void run_case(int net_index, size_t work_bytes, const char *ext) {
  const net *nt = &nets[net_index];
  cpk_context *ctx;
  tu_ok(cpk_context_new(&ctx, NULL));
  ctx->work_bytes = work_bytes;
  for (int loss = 0; loss < 3; loss++)
    for (int red = 0; red < 2; red++) {
      cpk_model *m;
      int64_t xs[4] = {N};
      memcpy(xs + 1, nt->shape, (size_t)nt->ndim * sizeof *xs);
      tu_ok(cpk_model_parse(&m, nt->text, "net"));
      tu_ok(cpk_model_build(m, nt->ndim, nt->shape, CPK_F64));
      tu_ok(cpk_model_init_params(m, 3 + (uint64_t)loss));
      cpk_tensor *x = tu_random(CPK_F64, nt->ndim + 1, xs, -1, 1, 5);
      cpk_tensor *y = target_for((cpk_loss_kind)loss, N, 2);
      cpk_pass_spec spec = {(cpk_loss_kind)loss, (cpk_reduction)red, ext, 0};
      cpk_results *r;
      tu_ok(cpk_compute(ctx, m, &spec, x, y, &r));
      char what[128];
      snprintf(what, sizeof what, "net %d, %s %s, chunk %zu B", net_index,
               cpk_loss_name((cpk_loss_kind)loss), red ? "sum" : "mean",
               work_bytes);
      check_against_loop(ctx, m, (cpk_loss_kind)loss, (cpk_reduction)red, x, y,
                         r, what);
      cpk_results_free(r);
      cpk_tensor_free(x);
      cpk_tensor_free(y);
      cpk_model_free(m);
    }
  cpk_context_free(ctx);
}

static void test_dense_closed_forms(void **state) {
  run_case(0, (size_t)64 << 20, "batch_l2_grad,sum_grad_squared,variance,"
                                "batch_dot_grad");
}

static void test_dense_with_batch_grad(void **state) {
  run_case(0, (size_t)64 << 20, all_ext);
}

static void test_chunked_generic(void **state) {
  /* 40 bytes: at most one sample's gradient per chunk for every parameter */
  run_case(1, 40, "batch_l2_grad,sum_grad_squared,variance,batch_dot_grad");
  run_case(1, 200, all_ext);
}

/* Requesting extensions does not change the gradient, and each alone gives
 * what it gives together with the others. */
static void test_alone_equals_together(void **state) {
  static const char *const each[] = {"batch_grad", "batch_l2_grad",
                                     "sum_grad_squared", "variance",
                                     "batch_dot_grad"};
  cpk_context *ctx;
  cpk_model *m;
  int64_t xs[3] = {N, 2, 3};
  tu_ok(cpk_context_new(&ctx, NULL));
  tu_ok(cpk_model_parse(&m, nets[0].text, "net"));
  tu_ok(cpk_model_build(m, 2, nets[0].shape, CPK_F64));
  tu_ok(cpk_model_init_params(m, 1));
  cpk_tensor *x = tu_random(CPK_F64, 3, xs, -1, 1, 9);
  cpk_tensor *y = target_for(CPK_LOSS_CROSS_ENTROPY, N, 1);
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, all_ext, 0};
  cpk_results *together;
  tu_ok(cpk_compute(ctx, m, &spec, x, y, &together));
  for (size_t e = 0; e < sizeof each / sizeof each[0]; e++) {
    cpk_results *alone;
    spec.extensions = each[e];
    tu_ok(cpk_compute(ctx, m, &spec, x, y, &alone));
    for (int i = 0; i < cpk_results_count(alone); i++) {
      const cpk_tensor *t = cpk_results_find(together, cpk_results_name(alone, i));
      assert_non_null(t);
      tu_assert_close(cpk_results_tensor(alone, i), t, 1e-13, 0,
                      cpk_results_name(alone, i));
    }
    cpk_results_free(alone);
  }
  cpk_results_free(together);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
  cpk_context_free(ctx);
}

/* With batch_grad asked for (or another extension that walks per-sample
 * gradients, when one chunk holds the batch), the gradient of a parameter
 * whose per-sample gradients come from per-sample products (convolutions,
 * batch norm, a linear layer on [N, R, IN]) is their sum: it equals the
 * gradient of a pass without extensions, and the sum of grad_batch. */
static void test_gradient_from_per_sample(void **state) {
  static const char *const text =
      "conv_transpose2d 2 3 3 stride=2 padding=1 output_padding=1\n"
      "batchnorm2d 3\nelu\nconv2d 3 2 3 dilation=2 groups=1\nflatten\n"
      "linear 32 5\ntanh\nlinear 5 3\n";
  static const char *const lists[] = {"batch_grad", "batch_l2_grad",
                                      "sum_grad_squared,variance",
                                      "batch_dot_grad", all_ext};
  const int64_t sample_shape[3] = {2, 4, 4}, xs[4] = {N, 2, 4, 4};
  cpk_context *ctx;
  cpk_model *m;
  (void)state;
  tu_ok(cpk_context_new(&ctx, NULL));
  tu_ok(cpk_model_parse(&m, text, "net"));
  tu_ok(cpk_model_build(m, 3, sample_shape, CPK_F64));
  tu_ok(cpk_model_init_params(m, 3));
  cpk_tensor *x = tu_random(CPK_F64, 4, xs, -1, 1, 5);
  cpk_tensor *y = target_for(CPK_LOSS_CROSS_ENTROPY, N, 2);
  cpk_pass_spec plain = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL, 0};
  cpk_results *rp;
  tu_ok(cpk_compute(ctx, m, &plain, x, y, &rp));
  for (size_t e = 0; e < sizeof lists / sizeof lists[0]; e++) {
    cpk_pass_spec with = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN,
                          lists[e], 0};
    cpk_results *rw;
    tu_ok(cpk_compute(ctx, m, &with, x, y, &rw));
    for (int p = 0; p < cpk_model_num_params(m); p++) {
      const char *name;
      cpk_tensor *theta;
      char key[96], what[160];
      tu_ok(cpk_model_param(m, p, &name, &theta));
      const int64_t k = cpk_tensor_numel(theta);
      snprintf(key, sizeof key, "%s.grad", name);
      if (cpk_results_find(rp, key) == NULL)
        continue; /* a buffer (batch norm's running statistics) */
      snprintf(what, sizeof what, "%s with %s", key, lists[e]);
      const cpk_tensor *gp = find(rp, name, "grad"),
                       *gw = find(rw, name, "grad");
      tu_assert_close(gw, gp, 1e-12, 1e-15, what);
      snprintf(key, sizeof key, "%s.grad_batch", name);
      const cpk_tensor *gb = cpk_results_find(rw, key);
      if (gb == NULL)
        continue;
      double sum[256] = {0};
      assert_true(k <= 256);
      for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < k; i++)
          sum[i] += cpk_tensor_get(gb, n * k + i);
      tu_assert_close_array(gw->data, sum, k, 1e-12, 1e-15, what);
    }
    cpk_results_free(rw);
  }
  cpk_results_free(rp);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
  cpk_context_free(ctx);
}

/* float32 agrees with float64 on every extension output. */
static void test_float32(void **state) {
  cpk_context *ctx;
  cpk_model *m64, *m32;
  int64_t xs[3] = {N, 2, 3};
  tu_ok(cpk_context_new(&ctx, NULL));
  tu_ok(cpk_model_parse(&m64, nets[0].text, "net"));
  tu_ok(cpk_model_parse(&m32, nets[0].text, "net"));
  tu_ok(cpk_model_build(m64, 2, nets[0].shape, CPK_F64));
  tu_ok(cpk_model_build(m32, 2, nets[0].shape, CPK_F32));
  tu_ok(cpk_model_init_params(m32, 4));
  for (int p = 0; p < cpk_model_num_params(m64); p++) {
    cpk_tensor *a, *b;
    tu_ok(cpk_model_param(m64, p, NULL, &a));
    tu_ok(cpk_model_param(m32, p, NULL, &b));
    for (int64_t k = 0; k < cpk_tensor_numel(a); k++)
      cpk_tensor_set(a, k, cpk_tensor_get(b, k));
  }
  cpk_tensor *x = tu_random(CPK_F32, 3, xs, -1, 1, 9);
  cpk_tensor *y = target_for(CPK_LOSS_CROSS_ENTROPY, N, 1);
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, all_ext, 0};
  cpk_results *r64, *r32;
  tu_ok(cpk_compute(ctx, m64, &spec, x, y, &r64));
  tu_ok(cpk_compute(ctx, m32, &spec, x, y, &r32));
  for (int i = 0; i < cpk_results_count(r64); i++) {
    const char *name = cpk_results_name(r64, i);
    const cpk_tensor *b = cpk_results_find(r32, name);
    assert_non_null(b);
    assert_int_equal(b->dtype, CPK_F32);
    /* variance subtracts nearly equal terms: compare absolutely */
    tu_assert_close(b, cpk_results_tensor(r64, i), 1e-5, 1e-7, name);
  }
  cpk_results_free(r64);
  cpk_results_free(r32);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m64);
  cpk_model_free(m32);
  cpk_context_free(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dense_closed_forms),
      cmocka_unit_test(test_dense_with_batch_grad),
      cmocka_unit_test(test_chunked_generic),
      cmocka_unit_test(test_alone_equals_together),
      cmocka_unit_test(test_gradient_from_per_sample),
      cmocka_unit_test(test_float32),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
