/*
 * test_cuda_resident.c: what stays on the CUDA device between calls, on a
 * machine with a CUDA device (elsewhere the program reports itself as
 * skipped, TAP "1..0 # SKIP"):
 *  - results left on the device (cpk_pass_options.results_on_device): the
 *    same values as the CPU's after cpk_tensor_copy_to_host and after
 *    cpk_results_to_host (which keeps the tensors' addresses), over one
 *    pass and over sub-batches (max_batch); host readers refuse them with
 *    CPK_EUSAGE; they outlive their context;
 *  - the parameters' device copies kept by the model from pass to pass: a
 *    change through cpk_model_param, through a pointer kept from before
 *    plus cpk_model_params_changed, through cpk_model_init_params,
 *    cpk_model_load_params and cpk_optim_apply reaches the next pass; two
 *    contexts take turns on one model; a curvature operator keeps the
 *    parameters it was made with while passes in between see new ones.
 * Truth is the CPU context on the same model. With CPK_TEST_DEVICE_AS_CPU=1
 * the "device" is a second CPU context (tests/devtest.h): results are then
 * host tensors and the checks that only a device can pass are left out.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "devtest.h"

static const char *net_text = "conv2d 2 3 3 padding=1\nrelu\nmaxpool2d 2\n"
                              "flatten\nlinear 12 5\ntanh\nlinear 5 3\n";
static const int64_t net_shape[3] = {2, 4, 4};
static const char *exts = "batch_grad,variance,batch_dot_grad,diag_ggn_exact,"
                          "kflr";

static int on_gpu(void) { return dt_device() == CPK_DEVICE_CUDA; }

static cpk_tensor *input(cpk_dtype dt, int64_t n, uint64_t seed) {
  const int64_t xs[4] = {n, 2, 4, 4};
  return tu_random(dt, 4, xs, -1, 1, seed);
}

static double tol(cpk_dtype dt) { return dt == CPK_F64 ? 1e-10 : 1e-4; }

/* Every result of got (brought down where needed) equals want's. */
static void check_results(const cpk_results *got, const cpk_results *want,
                          double rtol, const char *what) {
  assert_int_equal(cpk_results_count(got), cpk_results_count(want));
  for (int i = 0; i < cpk_results_count(want); i++) {
    char msg[160];
    const char *name = cpk_results_name(want, i);
    const cpk_tensor *g = cpk_results_find(got, name);
    cpk_tensor *h;
    snprintf(msg, sizeof msg, "%s: %s", what, name);
    if (g == NULL)
      fail_msg("%s: missing", msg);
    tu_ok(cpk_tensor_copy_to_host(g, &h));
    tu_assert_close(h, cpk_results_tensor(want, i), rtol, rtol * 1e-3, msg);
    cpk_tensor_free(h);
  }
}

static void compute(cpk_context *ctx, cpk_model *m, const cpk_tensor *x,
                    const cpk_tensor *y, int on_device, int64_t max_batch,
                    cpk_results **out) {
  const cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, exts,
                              0};
  const cpk_pass_options opts = {.results_on_device = on_device,
                                 .max_batch = max_batch};
  tu_ok(cpk_compute_ex(ctx, m, &spec, &opts, x, y, out));
}

/* ------------------------------------------------- results on the device */

/* Host readers refuse device tensor t with CPK_EUSAGE, and say why. */
static void check_refusals(cpk_context *dev, cpk_model *m, const cpk_tensor *t,
                           const cpk_tensor *y) {
  cpk_tensor *c = NULL;
  cpk_results *r = NULL;
  char path[1024];
  assert_true(isnan(cpk_tensor_get(t, 0)));
  assert_non_null(strstr(cpk_last_error(), "device memory"));
  assert_int_equal(cpk_tensor_convert(&c, t, t->dtype), CPK_EUSAGE);
  assert_null(c);
  const char *dir = tu_tempdir();
  snprintf(path, sizeof path, "%s/t.npy", dir);
  assert_int_equal(cpk_npy_write(path, t), CPK_EUSAGE);
  assert_int_equal(tu_count_entries(dir), 0);
  tu_rmtree(dir);
  /* a device result as the input of the next pass */
  const cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL,
                              0};
  assert_int_equal(cpk_compute(dev, m, &spec, t, y, &r), CPK_EUSAGE);
  assert_non_null(strstr(cpk_last_error(), "device memory"));
  assert_null(r);
}

static void test_results_on_device(void **state) {
  (void)state;
  cpk_context *dev = dt_context(dt_device(), 1);
  if (dev == NULL)
    skip();
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 1);
  for (int f = 0; f < 2; f++) {
    const cpk_dtype dt = f ? CPK_F64 : CPK_F32;
    cpk_model *m = dt_build(net_text, 3, net_shape, dt);
    cpk_tensor *x = input(dt, 6, 3), *y = dt_target(CPK_LOSS_CROSS_ENTROPY, 6);
    cpk_results *want, *got;
    compute(cpu, m, x, y, 0, 0, &want);
    compute(dev, m, x, y, 1, 0, &got);
    assert_int_equal(cpk_results_on_device(got), on_gpu());
    for (int i = 0; i < cpk_results_count(got); i++) {
      const cpk_tensor *t = cpk_results_tensor(got, i);
      const int is_loss = strcmp(cpk_results_name(got, i), "loss") == 0;
      assert_int_equal(cpk_tensor_on_device(t), on_gpu() && !is_loss);
      assert_true((cpk_tensor_device_data(t) != NULL) ==
                  (cpk_tensor_on_device(t) != 0));
    }
    check_results(got, want, tol(dt), "results on the device");
    const cpk_tensor *g = cpk_results_find(got, "4.weight.grad_batch");
    if (on_gpu())
      check_refusals(dev, m, g, y);
    /* in place: the same tensors, now host ones */
    tu_ok(cpk_results_to_host(got));
    assert_int_equal(cpk_results_on_device(got), 0);
    assert_ptr_equal(cpk_results_find(got, "4.weight.grad_batch"), g);
    assert_null(cpk_tensor_device_data(g));
    check_results(got, want, tol(dt), "after cpk_results_to_host");
    tu_ok(cpk_results_to_host(got)); /* nothing left to do */
    /* the default: host results */
    cpk_results_free(got);
    compute(dev, m, x, y, 0, 0, &got);
    assert_int_equal(cpk_results_on_device(got), 0);
    check_results(got, want, tol(dt), "default");
    cpk_results_free(got);
    cpk_results_free(want);
    cpk_tensor_free(x);
    cpk_tensor_free(y);
    cpk_model_free(m);
  }
  cpk_context_free(cpu);
  cpk_context_free(dev);
}

/* Sub-batches (max_batch) combine on the device: the same as one pass. */
static void test_results_on_device_max_batch(void **state) {
  (void)state;
  cpk_context *dev = dt_context(dt_device(), 1);
  if (dev == NULL)
    skip();
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 1);
  cpk_model *m = dt_build(net_text, 3, net_shape, CPK_F64);
  cpk_tensor *x = input(CPK_F64, 7, 4),
             *y = dt_target(CPK_LOSS_CROSS_ENTROPY, 7);
  for (int keep = 0; keep < 2; keep++) {
    cpk_results *want, *got;
    compute(cpu, m, x, y, 0, 0, &want);
    compute(dev, m, x, y, keep, 3, &got);
    assert_int_equal(cpk_results_on_device(got), keep && on_gpu());
    check_results(got, want, 1e-10,
                  keep ? "max_batch 3, on the device" : "max_batch 3, host");
    cpk_results_free(want);
    cpk_results_free(got);
  }
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
  cpk_context_free(cpu);
  cpk_context_free(dev);
}

/* Device results and a model's device copies may outlive the context. */
static void test_results_outlive_context(void **state) {
  (void)state;
  cpk_context *dev = dt_context(dt_device(), 1);
  if (dev == NULL)
    skip();
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 1);
  cpk_model *m = dt_build(net_text, 3, net_shape, CPK_F32);
  cpk_tensor *x = input(CPK_F32, 5, 5),
             *y = dt_target(CPK_LOSS_CROSS_ENTROPY, 5);
  cpk_results *want, *got, *other;
  compute(cpu, m, x, y, 0, 0, &want);
  compute(dev, m, x, y, 1, 0, &got);
  compute(dev, m, x, y, 1, 0, &other);
  cpk_context_free(dev);
  check_results(got, want, 1e-4, "after cpk_context_free");
  tu_ok(cpk_results_to_host(got));
  check_results(got, want, 1e-4, "to the host after cpk_context_free");
  cpk_results_free(got);
  cpk_model_free(m);       /* its device copies, after their context */
  cpk_results_free(other); /* the last holder of the device handle */
  cpk_results_free(want);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_context_free(cpu);
}

/* -------------------------------------------- the parameters' device copies */

/* The gradient of one pass on ctx (host results). */
static cpk_results *grads(cpk_context *ctx, cpk_model *m, const cpk_tensor *x,
                          const cpk_tensor *y) {
  const cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL,
                              0};
  cpk_results *r;
  tu_ok(cpk_compute(ctx, m, &spec, x, y, &r));
  return r;
}

/* The device pass on `dev` agrees with the CPU at the model's values now. */
static void agree(cpk_context *cpu, cpk_context *dev, cpk_model *m,
                  const cpk_tensor *x, const cpk_tensor *y, const char *what) {
  cpk_results *want = grads(cpu, m, x, y), *got = grads(dev, m, x, y);
  check_results(got, want, 1e-10, what);
  cpk_results_free(want);
  cpk_results_free(got);
}

/* t := t * 1.5 + 0.25, elementwise (a change every layer sees). */
static void bump(cpk_tensor *t) {
  for (int64_t k = 0; k < cpk_tensor_numel(t); k++)
    cpk_tensor_set(t, k, 1.5 * cpk_tensor_get(t, k) + 0.25);
}

static void test_params_changed(void **state) {
  (void)state;
  cpk_context *dev = dt_context(dt_device(), 1);
  if (dev == NULL)
    skip();
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 1);
  cpk_model *m = dt_build(net_text, 3, net_shape, CPK_F64);
  cpk_tensor *x = input(CPK_F64, 5, 6),
             *y = dt_target(CPK_LOSS_CROSS_ENTROPY, 5);
  cpk_tensor *w;
  agree(cpu, dev, m, x, y, "first pass");
  /* through cpk_model_param, written before the next pass */
  tu_ok(cpk_model_param(m, 0, NULL, &w));
  bump(w);
  agree(cpu, dev, m, x, y, "after cpk_model_param");
  /* through the pointer kept from before, then cpk_model_params_changed */
  cpk_results *before = grads(dev, m, x, y);
  bump(w);
  if (on_gpu()) { /* not told yet: the pass still sees the copies it kept */
    cpk_results *kept = grads(dev, m, x, y);
    check_results(kept, before, 1e-12, "kept copies");
    cpk_results_free(kept);
  }
  cpk_model_params_changed(m);
  agree(cpu, dev, m, x, y, "after cpk_model_params_changed");
  cpk_results_free(before);
  /* the library's own writers */
  tu_ok(cpk_model_init_params(m, 99));
  agree(cpu, dev, m, x, y, "after cpk_model_init_params");
  const char *dir = tu_tempdir();
  tu_ok(cpk_model_param(m, 3, NULL, &w));
  bump(w);
  tu_ok(cpk_model_save_params(m, dir));
  tu_ok(cpk_model_init_params(m, 11));
  agree(cpu, dev, m, x, y, "init again");
  tu_ok(cpk_model_load_params(m, dir));
  agree(cpu, dev, m, x, y, "after cpk_model_load_params");
  tu_rmtree(dir);
  cpk_optim_options o;
  cpk_optim *opt;
  cpk_optim_defaults(CPK_OPTIM_SGD, &o);
  o.lr = 0.5;
  tu_ok(cpk_optim_new(&opt, &o, m));
  cpk_results *g = grads(dev, m, x, y);
  tu_ok(cpk_optim_prepare(opt, m, g));
  tu_ok(cpk_optim_apply(opt, m));
  agree(cpu, dev, m, x, y, "after cpk_optim_apply");
  cpk_results_free(g);
  cpk_optim_free(opt);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
  cpk_context_free(cpu);
  cpk_context_free(dev);
}

/* Device results are no input of the optimizer. */
static void test_optim_refuses_device_results(void **state) {
  (void)state;
  cpk_context *dev = dt_context(dt_device(), 1);
  if (dev == NULL)
    skip();
  if (!on_gpu()) { /* host results: nothing to refuse */
    cpk_context_free(dev);
    skip();
  }
  cpk_model *m = dt_build(net_text, 3, net_shape, CPK_F32);
  cpk_tensor *x = input(CPK_F32, 4, 7),
             *y = dt_target(CPK_LOSS_CROSS_ENTROPY, 4);
  cpk_optim_options o;
  cpk_optim *opt;
  cpk_results *r;
  cpk_optim_defaults(CPK_OPTIM_SGD, &o);
  tu_ok(cpk_optim_new(&opt, &o, m));
  compute(dev, m, x, y, 1, 0, &r);
  assert_int_equal(cpk_optim_prepare(opt, m, r), CPK_EUSAGE);
  assert_non_null(strstr(cpk_last_error(), "device memory"));
  tu_ok(cpk_results_to_host(r));
  tu_ok(cpk_optim_prepare(opt, m, r));
  cpk_results_free(r);
  cpk_optim_free(opt);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
  cpk_context_free(dev);
}

/* Two contexts take turns on one model; either may go first. */
static void test_two_contexts(void **state) {
  (void)state;
  cpk_context *a = dt_context(dt_device(), 1);
  if (a == NULL)
    skip();
  cpk_context *b = dt_context(dt_device(), 1);
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 1);
  cpk_model *m = dt_build(net_text, 3, net_shape, CPK_F64);
  cpk_tensor *x = input(CPK_F64, 5, 8),
             *y = dt_target(CPK_LOSS_CROSS_ENTROPY, 5);
  cpk_tensor *w;
  agree(cpu, a, m, x, y, "context a");
  agree(cpu, b, m, x, y, "context b");
  tu_ok(cpk_model_param(m, 1, NULL, &w));
  bump(w);
  agree(cpu, a, m, x, y, "context a after a change");
  agree(cpu, b, m, x, y, "context b after a change");
  agree(cpu, a, m, x, y, "context a again");
  cpk_context_free(a); /* the model's copies were made on it */
  agree(cpu, b, m, x, y, "context b after a is freed");
  cpk_context_free(b);
  cpk_model_free(m);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_context_free(cpu);
}

/* A device operator keeps its own copies of the parameters it was made
 * with: passes in between, which refresh the model's copies, take nothing
 * away from it (and see the model's new values). A model without max
 * pooling, whose cached argmax passes and operators share. */
static void test_operator_keeps_its_params(void **state) {
  (void)state;
  cpk_context *dev = dt_context(dt_device(), 1);
  if (dev == NULL)
    skip();
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 1);
  const int64_t shape[2] = {3, 4}, xs[3] = {4, 3, 4};
  cpk_model *m = dt_build("flatten\nlinear 12 6\nsigmoid\nlinear 6 5\ntanh\n"
                          "linear 5 3\n",
                          2, shape, CPK_F64);
  cpk_tensor *x = tu_random(CPK_F64, 3, xs, -1, 1, 9);
  cpk_tensor *y = dt_target(CPK_LOSS_CROSS_ENTROPY, 4);
  const cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL,
                              0};
  cpk_curvature_op *oc, *og;
  tu_ok(cpk_curvature_op_new(&oc, cpu, m, &spec, x, y, CPK_CURV_GGN));
  tu_ok(cpk_curvature_op_new(&og, dev, m, &spec, x, y, CPK_CURV_GGN));
  const int64_t p = cpk_curvature_op_dim(oc);
  double *v = malloc((size_t)p * sizeof *v),
         *hc = malloc((size_t)p * sizeof *hc),
         *hg = malloc((size_t)p * sizeof *hg);
  for (int64_t i = 0; i < p; i++)
    v[i] = sin(0.7 * (double)i);
  tu_ok(cpk_curvature_op_apply(oc, 1, v, hc));
  cpk_curvature_op_free(oc); /* (on the CPU the model must not change now) */
  agree(cpu, dev, m, x, y, "a pass while an operator lives");
  tu_ok(cpk_curvature_op_apply(og, 1, v, hg));
  tu_assert_close_array(hg, hc, p, 1e-10, 1e-13, "after a pass");
  if (on_gpu()) { /* the CPU operator reads the model's own values */
    cpk_tensor *w;
    tu_ok(cpk_model_param(m, 0, NULL, &w));
    bump(w);
    agree(cpu, dev, m, x, y, "a changed model while an operator lives");
    tu_ok(cpk_curvature_op_apply(og, 1, v, hg));
    tu_assert_close_array(hg, hc, p, 1e-10, 1e-13, "after a change");
  }
  cpk_curvature_op_free(og);
  agree(cpu, dev, m, x, y, "a pass after the operator");
  free(v);
  free(hc);
  free(hg);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
  cpk_context_free(cpu);
  cpk_context_free(dev);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_results_on_device),
      cmocka_unit_test(test_results_on_device_max_batch),
      cmocka_unit_test(test_results_outlive_context),
      cmocka_unit_test(test_params_changed),
      cmocka_unit_test(test_optim_refuses_device_results),
      cmocka_unit_test(test_two_contexts),
      cmocka_unit_test(test_operator_keeps_its_params),
  };
  if (dt_skip_program())
    return 0;
  return cmocka_run_group_tests(tests, NULL, NULL);
}
