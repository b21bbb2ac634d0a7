/*
 * per_sample_stats.c: per-sample gradients, their norms and the gradient
 * variance of a small network, through the public API of libcurvpack.
 *
 *   examples/per_sample_stats [DIR]   (default: examples/mlp)
 *
 * DIR holds model.txt, params/, input.npy and target.npy, as the shipped
 * example network does.
 */
#include <math.h>
#include <stdio.h>

#include <curvpack.h>

static int fail(const char *what, int status) {
  fprintf(stderr, "per_sample_stats: %s: %s\n", what,
          cpk_last_error()[0] ? cpk_last_error() : cpk_strerror(status));
  return 1;
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "examples/mlp";
  char path[4096];
  cpk_model *model = NULL;
  cpk_tensor *input = NULL, *target = NULL;
  cpk_context *ctx = NULL;
  cpk_results *res = NULL;
  int rc, status = 1;

  snprintf(path, sizeof path, "%s/model.txt", dir);
  if ((rc = cpk_model_load(&model, path)) != CPK_OK) {
    status = fail("model", rc);
    goto done;
  }
  snprintf(path, sizeof path, "%s/input.npy", dir);
  if ((rc = cpk_npy_read(path, &input)) != CPK_OK) {
    status = fail("input", rc);
    goto done;
  }
  snprintf(path, sizeof path, "%s/target.npy", dir);
  if ((rc = cpk_npy_read(path, &target)) != CPK_OK) {
    status = fail("target", rc);
    goto done;
  }
  /* One sample's shape is the input's shape without the batch axis. */
  rc = cpk_model_build(model, input->ndim - 1, input->shape + 1, CPK_F64);
  snprintf(path, sizeof path, "%s/params", dir);
  if (rc == CPK_OK)
    rc = cpk_model_load_params(model, path);
  if (rc == CPK_OK)
    rc = cpk_context_new(&ctx, NULL);
  if (rc != CPK_OK) {
    status = fail("setup", rc);
    goto done;
  }

  /* One backward pass: gradient, per-sample gradients, their squared norms
   * and the variance, for the mean cross-entropy loss. */
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN,
                        "batch_grad,batch_l2_grad,variance", 0};
  if ((rc = cpk_compute(ctx, model, &spec, input, target, &res)) != CPK_OK) {
    status = fail("compute", rc);
    goto done;
  }
  printf("loss %.6f over %lld samples\n",
         cpk_tensor_get(cpk_results_find(res, "loss"), 0),
         (long long)input->shape[0]);

  for (int p = 0; p < cpk_model_num_params(model); p++) {
    const char *name;
    char key[128];
    cpk_model_param(model, p, &name, NULL);
    snprintf(key, sizeof key, "%s.grad_batch", name);
    const cpk_tensor *gb = cpk_results_find(res, key);
    snprintf(key, sizeof key, "%s.batch_l2", name);
    const cpk_tensor *l2 = cpk_results_find(res, key);
    snprintf(key, sizeof key, "%s.variance", name);
    const cpk_tensor *var = cpk_results_find(res, key);
    snprintf(key, sizeof key, "%s.grad", name);
    const cpk_tensor *grad = cpk_results_find(res, key);

    /* Norm of the mean gradient against the per-sample norms and the total
     * variance (the trace of the gradient covariance, over N^2). */
    double gnorm2 = 0, vsum = 0, l2min = INFINITY, l2max = 0;
    for (int64_t i = 0; i < cpk_tensor_numel(grad); i++) {
      gnorm2 += cpk_tensor_get(grad, i) * cpk_tensor_get(grad, i);
      vsum += cpk_tensor_get(var, i);
    }
    for (int64_t n = 0; n < l2->shape[0]; n++) {
      double v = cpk_tensor_get(l2, n);
      l2min = v < l2min ? v : l2min;
      l2max = v > l2max ? v : l2max;
    }
    printf("%-10s grad_batch %lld x %lld  |grad| %.3e  per-sample |g_n| in "
           "[%.3e, %.3e]  sum(variance) %.3e\n",
           name, (long long)gb->shape[0],
           (long long)(cpk_tensor_numel(gb) / gb->shape[0]), sqrt(gnorm2),
           sqrt(l2min), sqrt(l2max), vsum);
  }
  status = 0;
done:
  cpk_results_free(res);
  cpk_context_free(ctx);
  cpk_tensor_free(target);
  cpk_tensor_free(input);
  cpk_model_free(model);
  return status;
}
