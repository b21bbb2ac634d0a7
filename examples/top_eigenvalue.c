/*
 * top_eigenvalue.c: train a small network, then compute the top eigenvalues
 * of the Hessian of its loss with the public API of libcurvpack (matrix-free
 * Hessian-vector products and Lanczos).
 *
 *   examples/top_eigenvalue [DIR [STEPS]]   (default: examples/mlp, 200)
 *
 * DIR holds model.txt, params/, input.npy and target.npy. The network is
 * trained by plain gradient descent (learning rate 0.1) on that batch for
 * STEPS steps, in float64; the sharpness (largest Hessian eigenvalue) is
 * printed before and after, with the loss.
 */
#include <stdio.h>
#include <stdlib.h>

#include <curvpack.h>

static int fail(const char *what, int status) {
  fprintf(stderr, "top_eigenvalue: %s: %s\n", what,
          cpk_last_error()[0] ? cpk_last_error() : cpk_strerror(status));
  return 1;
}

/* The three largest Hessian eigenvalues at the current parameters. */
static int top_eigenvalues(cpk_context *ctx, cpk_model *model,
                           const cpk_pass_spec *spec, const cpk_tensor *x,
                           const cpk_tensor *y, double *vals) {
  cpk_curvature_op *op;
  cpk_operator hess;
  cpk_eigen_options opts = {.tol = 1e-8, .seed = 1};
  int rc = cpk_curvature_op_new(&op, ctx, model, spec, x, y, CPK_CURV_HESSIAN);
  if (rc != CPK_OK)
    return rc;
  cpk_curvature_op_as_operator(op, &hess);
  rc = cpk_eigen_lanczos(&hess, 3, &opts, vals, NULL, NULL);
  cpk_curvature_op_free(op);
  return rc;
}

/* One gradient-descent step theta -= lr * grad; *loss before the step. */
static int descend(cpk_context *ctx, cpk_model *model,
                   const cpk_pass_spec *spec, const cpk_tensor *x,
                   const cpk_tensor *y, double lr, double *loss) {
  cpk_results *res;
  int rc = cpk_compute(ctx, model, spec, x, y, &res);
  if (rc != CPK_OK)
    return rc;
  *loss = cpk_tensor_get(cpk_results_find(res, "loss"), 0);
  for (int p = 0; p < cpk_model_num_params(model); p++) {
    const char *name;
    cpk_tensor *theta;
    char key[128];
    if (!cpk_model_param_trainable(model, p))
      continue;
    cpk_model_param(model, p, &name, &theta);
    snprintf(key, sizeof key, "%s.grad", name);
    const cpk_tensor *g = cpk_results_find(res, key);
    for (int64_t i = 0; i < cpk_tensor_numel(theta); i++)
      cpk_tensor_set(theta, i,
                     cpk_tensor_get(theta, i) - lr * cpk_tensor_get(g, i));
  }
  cpk_results_free(res);
  return CPK_OK;
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "examples/mlp";
  const long steps = argc > 2 ? strtol(argv[2], NULL, 10) : 200;
  char path[4096];
  cpk_model *model = NULL;
  cpk_tensor *x = NULL, *y = NULL;
  cpk_context *ctx = NULL;
  double vals[3], loss = 0.0;
  int rc, status = 1;

  snprintf(path, sizeof path, "%s/model.txt", dir);
  if ((rc = cpk_model_load(&model, path)) != CPK_OK) {
    status = fail(path, rc);
    goto done;
  }
  snprintf(path, sizeof path, "%s/input.npy", dir);
  if ((rc = cpk_npy_read(path, &x)) == CPK_OK) {
    snprintf(path, sizeof path, "%s/target.npy", dir);
    rc = cpk_npy_read(path, &y);
  }
  if (rc == CPK_OK)
    rc = cpk_model_build(model, x->ndim - 1, x->shape + 1, CPK_F64);
  snprintf(path, sizeof path, "%s/params", dir);
  if (rc == CPK_OK)
    rc = cpk_model_load_params(model, path);
  if (rc == CPK_OK)
    rc = cpk_context_new(&ctx, NULL);
  if (rc != CPK_OK) {
    status = fail("setup", rc);
    goto done;
  }
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL, 0};
  if ((rc = top_eigenvalues(ctx, model, &spec, x, y, vals)) != CPK_OK) {
    status = fail("eigenvalues", rc);
    goto done;
  }
  printf("before training: top Hessian eigenvalues %.6g %.6g %.6g\n", vals[0],
         vals[1], vals[2]);
  for (long s = 0; s < steps; s++)
    if ((rc = descend(ctx, model, &spec, x, y, 0.1, &loss)) != CPK_OK) {
      status = fail("training", rc);
      goto done;
    }
  if ((rc = top_eigenvalues(ctx, model, &spec, x, y, vals)) != CPK_OK) {
    status = fail("eigenvalues", rc);
    goto done;
  }
  printf("after %ld steps (loss %.6g): top Hessian eigenvalues %.6g %.6g "
         "%.6g\n",
         steps, loss, vals[0], vals[1], vals[2]);
  printf("(gradient descent with learning rate 0.1 is stable while the top "
         "eigenvalue stays below 2 / 0.1 = 20)\n");
  status = 0;
done:
  cpk_context_free(ctx);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(model);
  return status;
}
