/* cmd_hvp.c: `curvpack hvp` and `curvpack ggnvp`, curvature-vector products
 * with a vector read from a directory (P.npy per parameter; a missing file
 * counts as zero), written as P.hvp.npy / P.ggnvp.npy. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

/* The flat vector [P] from DIR/P.npy, in cpk_model_param order. */
static int read_vector(const char *dir, cpk_model *model, double *v) {
  int64_t off = 0;
  for (int p = 0; p < cpk_model_num_params(model); p++) {
    const char *name;
    cpk_tensor *theta, *t = NULL;
    char path[PATH_MAX], want[128], got[128];
    struct stat st;
    cpk_model_param(model, p, &name, &theta);
    const int64_t k = cpk_tensor_numel(theta);
    if (!cpk_model_param_trainable(model, p))
      continue;
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    if (stat(path, &st) != 0) { /* a missing parameter counts as zero */
      memset(v + off, 0, (size_t)k * sizeof *v);
      off += k;
      continue;
    }
    int rc = cpk_npy_read(path, &t);
    if (rc != CPK_OK)
      return cli_lib_error(rc);
    int same = t->ndim == theta->ndim;
    for (int d = 0; same && d < t->ndim; d++)
      same = t->shape[d] == theta->shape[d];
    if (!same || (t->dtype != CPK_F32 && t->dtype != CPK_F64)) {
      rc = cli_error(CPK_ESHAPE,
                     "%s: expected a float array of parameter %s's shape %s, "
                     "found %s %s",
                     path, name,
                     cpk_shape_str(want, sizeof want, theta->ndim, theta->shape),
                     cpk_dtype_name(t->dtype),
                     cpk_shape_str(got, sizeof got, t->ndim, t->shape));
      cpk_tensor_free(t);
      return rc;
    }
    for (int64_t i = 0; i < k; i++)
      v[off + i] = cpk_tensor_get(t, i);
    cpk_tensor_free(t);
    off += k;
  }
  return 0;
}

/* Split the flat product into named tensors P.SUFFIX. */
static int split_product(cpk_model *model, const double *hv,
                         const char *suffix, cpk_results *res) {
  int64_t off = 0;
  for (int p = 0; p < cpk_model_num_params(model); p++) {
    const char *name;
    cpk_tensor *theta, *t;
    char key[96];
    if (!cpk_model_param_trainable(model, p))
      continue;
    cpk_model_param(model, p, &name, &theta);
    int rc = cpk_tensor_new(&t, theta->dtype, theta->ndim, theta->shape);
    if (rc != CPK_OK)
      return rc;
    for (int64_t i = 0; i < cpk_tensor_numel(t); i++)
      cpk_tensor_set(t, i, hv[off + i]);
    off += cpk_tensor_numel(t);
    snprintf(key, sizeof key, "%s.%s", name, suffix);
    if ((rc = cpk_results_add(res, key, t)) != CPK_OK)
      return rc;
  }
  return CPK_OK;
}

static int run_product(int argc, char **argv, const char *command,
                       cpk_curvature kind, const char *suffix,
                       const char *summary) {
  cli_common c = {0};
  const char *vector = NULL, *repeat = NULL, *data_pass = NULL;
  cli_opt opts[CLI_COMMON_NOPTS + 3];
  cli_common_opts(&c, opts);
  opts[CLI_COMMON_NOPTS] = (cli_opt){
      "vector", "DIR", "the vector: P.npy per parameter (missing: zero)",
      &vector, NULL};
  opts[CLI_COMMON_NOPTS + 1] = (cli_opt){
      "repeat", "R", "run the product R more times and write timing.json",
      &repeat, NULL};
  opts[CLI_COMMON_NOPTS + 2] = (cli_opt){
      "data-pass", "B",
      "treat --input as a whole data set and go through it (per MPI rank) "
      "in passes of at most B samples, summing their products",
      &data_pass, NULL};
  int rc = cli_parse(command, summary, argc, argv, opts, CLI_COMMON_NOPTS + 3);
  if (rc != 0)
    return rc < 0 ? CLI_EXIT_OK : rc;
  if ((rc = cli_require(command, "model", c.model)) ||
      (rc = cli_require(command, "params", c.params)) ||
      (rc = cli_require(command, "input", c.input)) ||
      (rc = cli_require(command, "target", c.target)) ||
      (rc = cli_require(command, "vector", vector)) ||
      (rc = cli_require(command, "out", c.out)))
    return rc;
  cli_setup s;
  int64_t runs = 0, max_batch = 0;
  if ((rc = cli_common_setup(&c, &s)) != 0 ||
      (repeat && (rc = cli_parse_int("repeat", repeat, 0, &runs)) != 0) ||
      (data_pass &&
       (rc = cli_parse_int("data-pass", data_pass, 1, &max_batch)) != 0))
    return rc;
  cpk_model *model = NULL;
  cpk_tensor *input = NULL, *target = NULL;
  cpk_context *ctx = NULL;
  cpk_curvature_op *op = NULL;
  cpk_results *res = NULL;
  double *v = NULL, *hv = NULL, *times = NULL;
  size_t peak = 0;
  int st = CPK_OK;
  if ((rc = cli_load_problem(&c, &s, &model, &input, &target)) != 0)
    return rc;
  const int64_t dim = cpk_model_param_count(model);
  v = calloc((size_t)dim, sizeof *v);
  hv = calloc((size_t)dim, sizeof *hv);
  times = calloc((size_t)(runs > 0 ? runs : 1), sizeof *times);
  if (v == NULL || hv == NULL || times == NULL)
    rc = cli_error(CPK_ENOMEM, "out of memory for vectors of %lld parameters",
                   (long long)dim);
  else
    rc = read_vector(vector, model, v);
  if (rc == 0 && (st = cli_context_new(&ctx, &s.ctx)) != CPK_OK)
    rc = cli_lib_error(st);
  if ((rc = cli_sync(rc)) != 0) /* every rank read the vector itself */
    goto done;
  cpk_pass_spec spec = {s.loss, s.reduction, NULL, 0};
  for (int64_t r = 0; r <= runs; r++) {
    size_t base = cpk_memory_in_use();
    cpk_memory_reset_peak();
    double t0 = cli_now();
    cpk_curvature_op_free(op);
    op = NULL;
    if ((st = cpk_curvature_op_new_ex(&op, ctx, model, &spec, input, target,
                                      kind, max_batch)) != CPK_OK ||
        (st = cpk_curvature_op_apply(op, 1, v, hv)) != CPK_OK)
      goto fail;
    times[r > 0 ? r - 1 : 0] = cli_now() - t0;
    if (cpk_memory_peak() - base > peak)
      peak = cpk_memory_peak() - base;
  }
  if ((st = cpk_results_new(&res)) != CPK_OK ||
      (st = split_product(model, hv, suffix, res)) != CPK_OK)
    goto fail;
  if ((rc = cli_write_results(c.out, res)) == 0 && repeat)
    rc = cli_write_timing(c.out, runs, times, peak);
  goto done;
fail:
  rc = cli_lib_fail(ctx, st);
done:
  free(v);
  free(hv);
  free(times);
  cpk_results_free(res);
  cpk_curvature_op_free(op);
  cpk_context_free(ctx);
  cpk_tensor_free(target);
  cpk_tensor_free(input);
  cpk_model_free(model);
  return rc;
}

int cmd_hvp(int argc, char **argv) {
  return run_product(argc, argv, "hvp", CPK_CURV_HESSIAN, "hvp",
                     "Multiply the Hessian of the loss by the vector in "
                     "--vector; write P.hvp.npy for every parameter P.");
}

int cmd_ggnvp(int argc, char **argv) {
  return run_product(argc, argv, "ggnvp", CPK_CURV_GGN, "ggnvp",
                     "Multiply the generalized Gauss-Newton matrix by the "
                     "vector in --vector; write P.ggnvp.npy for every "
                     "parameter P.");
}
