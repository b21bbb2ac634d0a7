/*
 * test_device_api.c: the C API around device memory, as it behaves on the
 * CPU (tests/test_cuda_resident covers the device):
 *  - cpk_pass_options.results_on_device is a no-op on a CPU context (the
 *    same results, all in host memory), cpk_results_to_host then has
 *    nothing to do, cpk_tensor_device_data is NULL, cpk_tensor_copy_to_host
 *    is a deep copy, cpk_model_params_changed is harmless;
 *  - a tensor header that says its data is device memory is refused with
 *    CPK_EUSAGE, never read, by every host reader: cpk_tensor_get/set,
 *    cpk_tensor_convert, cpk_npy_write, the inputs and targets of
 *    cpk_compute, cpk_jvp's tangents, cpk_optim_prepare's results.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "testutil.h"

static cpk_model *mlp(void) {
  cpk_model *m;
  const int64_t shape[1] = {4};
  tu_ok(cpk_model_parse(&m, "linear 4 5\nrelu\nlinear 5 3\n", "mlp"));
  tu_ok(cpk_model_build(m, 1, shape, CPK_F64));
  tu_ok(cpk_model_init_params(m, 3));
  return m;
}

static cpk_tensor *classes(int64_t n) {
  cpk_tensor *t;
  tu_ok(cpk_tensor_new(&t, CPK_I64, 1, &n));
  for (int64_t i = 0; i < n; i++)
    cpk_tensor_set(t, i, (double)(i % 3));
  return t;
}

static void test_option_is_a_noop_on_cpu(void **state) {
  (void)state;
  cpk_context *ctx;
  cpk_model *m = mlp();
  const int64_t xs[2] = {6, 4};
  cpk_tensor *x = tu_random(CPK_F64, 2, xs, -1, 1, 1), *y = classes(6);
  const cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN,
                              "batch_grad,variance", 0};
  const cpk_pass_options keep = {.results_on_device = 1};
  cpk_results *a, *b;
  tu_ok(cpk_context_new(&ctx, NULL));
  tu_ok(cpk_compute(ctx, m, &spec, x, y, &a));
  tu_ok(cpk_compute_ex(ctx, m, &spec, &keep, x, y, &b));
  assert_int_equal(cpk_results_on_device(b), 0);
  assert_int_equal(cpk_results_count(a), cpk_results_count(b));
  for (int i = 0; i < cpk_results_count(b); i++) {
    const cpk_tensor *t = cpk_results_tensor(b, i);
    assert_string_equal(cpk_results_name(a, i), cpk_results_name(b, i));
    assert_int_equal(cpk_tensor_on_device(t), 0);
    assert_null(cpk_tensor_device_data(t));
    tu_assert_close(t, cpk_results_tensor(a, i), 0, 0, cpk_results_name(b, i));
  }
  /* nothing to bring back: the same tensors */
  const cpk_tensor *g = cpk_results_find(b, "0.weight.grad_batch");
  tu_ok(cpk_results_to_host(b));
  assert_ptr_equal(cpk_results_find(b, "0.weight.grad_batch"), g);
  /* a host tensor's copy is a deep copy */
  cpk_tensor *c;
  tu_ok(cpk_tensor_copy_to_host(g, &c));
  assert_ptr_not_equal(c->data, g->data);
  tu_assert_close(c, g, 0, 0, "copy");
  cpk_tensor_set(c, 0, 1e9);
  assert_true(cpk_tensor_get(g, 0) != 1e9);
  cpk_tensor_free(c);
  /* max_batch passes too */
  const cpk_pass_options parts = {.results_on_device = 1, .max_batch = 4};
  cpk_results_free(b);
  tu_ok(cpk_compute_ex(ctx, m, &spec, &parts, x, y, &b));
  assert_int_equal(cpk_results_on_device(b), 0);
  for (int i = 0; i < cpk_results_count(a); i++)
    tu_assert_close(cpk_results_find(b, cpk_results_name(a, i)),
                    cpk_results_tensor(a, i), 1e-12, 1e-15,
                    cpk_results_name(a, i));
  /* telling a CPU model its values changed changes nothing */
  cpk_model_params_changed(m);
  cpk_results *c2;
  tu_ok(cpk_compute(ctx, m, &spec, x, y, &c2));
  tu_assert_close(cpk_results_find(c2, "2.weight.grad"),
                  cpk_results_find(a, "2.weight.grad"), 0, 0, "grad");
  cpk_results_free(c2);
  cpk_results_free(a);
  cpk_results_free(b);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
  cpk_context_free(ctx);
}

/* A header over host data that claims to be device memory: readers must
 * refuse it without touching the data. */
static cpk_tensor fake_device(const cpk_tensor *host) {
  static int handle; /* never dereferenced */
  cpk_tensor t = *host;
  t.owns_data = 0;
  t.device = &handle;
  return t;
}

static void expect_refusal(int rc, const char *what) {
  if (rc != CPK_EUSAGE)
    fail_msg("%s: expected CPK_EUSAGE, got %s", what, cpk_err_name(rc));
  if (strstr(cpk_last_error(), "device memory") == NULL)
    fail_msg("%s: the message does not say why: %s", what, cpk_last_error());
  cpk_clear_error();
}

static void test_host_readers_refuse_device_tensors(void **state) {
  (void)state;
  cpk_context *ctx;
  cpk_model *m = mlp();
  const int64_t xs[2] = {5, 4};
  cpk_tensor *x = tu_random(CPK_F64, 2, xs, -1, 1, 2), *y = classes(5);
  cpk_tensor dx = fake_device(x), dy = fake_device(y), *out = NULL;
  const cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL,
                              0};
  cpk_results *r = NULL;
  char path[1024];
  tu_ok(cpk_context_new(&ctx, NULL));
  assert_int_equal(cpk_tensor_on_device(&dx), 1);
  assert_ptr_equal(cpk_tensor_device_data(&dx), x->data);
  /* element access */
  cpk_clear_error();
  assert_true(isnan(cpk_tensor_get(&dx, 0)));
  expect_refusal(CPK_EUSAGE, "cpk_tensor_get");
  const double before = cpk_tensor_get(x, 1);
  cpk_tensor_set(&dx, 1, 42.0);
  assert_true(cpk_tensor_get(x, 1) == before);
  expect_refusal(CPK_EUSAGE, "cpk_tensor_set");
  expect_refusal(cpk_tensor_convert(&out, &dx, CPK_F32), "cpk_tensor_convert");
  assert_null(out);
  /* files */
  const char *dir = tu_tempdir();
  snprintf(path, sizeof path, "%s/x.npy", dir);
  expect_refusal(cpk_npy_write(path, &dx), "cpk_npy_write");
  assert_int_equal(tu_count_entries(dir), 0);
  tu_rmtree(dir);
  /* inputs of a pass */
  expect_refusal(cpk_check_pass(m, &spec, &dx, y), "cpk_check_pass input");
  expect_refusal(cpk_check_pass(m, &spec, x, &dy), "cpk_check_pass target");
  expect_refusal(cpk_compute(ctx, m, &spec, &dx, y, &r), "cpk_compute input");
  assert_null(r);
  expect_refusal(cpk_jvp(ctx, m, x, &dx, NULL, &out), "cpk_jvp tangent");
  assert_null(out);
  /* the optimizer's results */
  cpk_optim_options o;
  cpk_optim *opt;
  cpk_optim_defaults(CPK_OPTIM_SGD, &o);
  tu_ok(cpk_optim_new(&opt, &o, m));
  tu_ok(cpk_compute(ctx, m, &spec, x, y, &r));
  cpk_tensor *g = (cpk_tensor *)cpk_results_find(r, "0.weight.grad");
  void *keep = g->device;
  g->device = dx.device;
  expect_refusal(cpk_optim_prepare(opt, m, r), "cpk_optim_prepare");
  g->device = keep;
  tu_ok(cpk_optim_prepare(opt, m, r));
  cpk_optim_free(opt);
  cpk_results_free(r);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
  cpk_context_free(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_option_is_a_noop_on_cpu),
      cmocka_unit_test(test_host_readers_refuse_device_tensors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
