/* fuzz_modelfile.c: the model-file parser (cpk_model_parse) and what a
 * parsed model does next: build it for the first of six small sample shapes
 * it accepts (dtype and extensions picked from the input's last byte) and, when
 * it builds to a small network, run one forward and backward pass (MSE against
 * zeros) with a few extensions, as `curvpack compute` would. Shape inference,
 * parameter shapes and the layers' kernels all see the fuzzer's arguments. */
#include <stdlib.h>
#include <string.h>

#include "curvpack.h"
#include "fuzz.h"

int FUZZ_ENTRY(const uint8_t *data, size_t size);

static const char *const fuzz_model_exts[4] = {
    "", "batch_grad,batch_l2_grad,sum_grad_squared",
    "diag_ggn_exact,diag_hessian", "kfac,kflr,sqrt_ggn_mc"};

static void fuzz_model_pass(cpk_model *m, int ndim, const int64_t *sample,
                            unsigned pick) {
  static cpk_context *ctx;
  int out_ndim;
  int64_t shape[CPK_MAX_DIMS + 1], out_shape[CPK_MAX_DIMS];
  cpk_tensor *input = NULL, *target = NULL;
  cpk_results *res = NULL;
  if (ctx == NULL) {
    cpk_context_options o = {0};
    o.threads = 1;
    o.mc_samples = 2;
    if (cpk_context_new(&ctx, &o) != CPK_OK)
      abort();
  }
  if (cpk_model_param_count(m) > 20000 ||
      cpk_model_output_shape(m, &out_ndim, out_shape) != CPK_OK ||
      out_ndim + 1 > CPK_MAX_DIMS)
    return;
  int64_t out_numel = 1;
  for (int i = 0; i < out_ndim; i++)
    out_numel *= out_shape[i];
  if (out_numel > 4096)
    return;
  shape[0] = 2;
  memcpy(shape + 1, sample, (size_t)ndim * sizeof *shape);
  if (cpk_tensor_new(&input, CPK_F64, ndim + 1, shape) != CPK_OK)
    return;
  for (int64_t i = 0; i < cpk_tensor_numel(input); i++)
    cpk_tensor_set(input, i, 0.25 * (double)(i % 7) - 0.5);
  shape[0] = 2;
  memcpy(shape + 1, out_shape, (size_t)out_ndim * sizeof *shape);
  if (cpk_tensor_new(&target, CPK_F64, out_ndim + 1, shape) != CPK_OK)
    goto done;
  cpk_model_init_params(m, pick);
  /* Exact second-order extensions backpropagate one column per output
   * (C = out_numel, as in BackPACK): their cost grows as C times the
   * network's, so they get small outputs only (a 2 x 38 x 38 output of a
   * 33 x 33 transposed convolution took 20 s under the sanitizers, a
   * timeout of the first campaign, not a fault). */
  unsigned ext = pick % 4;
  if (ext >= 2 && out_numel > 64)
    ext = 1;
  cpk_pass_spec spec = {CPK_LOSS_MSE, CPK_REDUCTION_SUM, fuzz_model_exts[ext],
                        0};
  cpk_pass_options po = {0};
  po.skip_unsupported = 1;
  if (cpk_check_pass(m, &spec, input, target) == CPK_OK &&
      cpk_compute_ex(ctx, m, &spec, &po, input, target, &res) != CPK_OK &&
      cpk_last_error()[0] == '\0')
    __builtin_trap();
done:
  cpk_results_free(res);
  cpk_tensor_free(target);
  cpk_tensor_free(input);
}

int FUZZ_ENTRY(const uint8_t *data, size_t size) {
  static const int64_t samples[6][4] = {{6, 0, 0, 0}, {2, 7, 0, 0},
                                        {1, 6, 6, 0}, {3, 5, 4, 0},
                                        {2, 4, 5, 3}, {1, 8, 8, 0}};
  static const int ndims[6] = {1, 2, 3, 3, 4, 3};
  cpk_memory_set_limit(FUZZ_MEMORY_BUDGET);
  char *text = malloc(size + 1);
  if (text == NULL)
    return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  /* The first sample shape the model builds for gets a pass. */
  const unsigned pick = size ? data[size - 1] : 0;
  for (int k = 0; k < 6; k++) {
    cpk_model *m = NULL;
    int rc = cpk_model_parse(&m, text, "fuzz.txt");
    if (rc != CPK_OK) {
      if (m != NULL || cpk_last_error()[0] == '\0')
        __builtin_trap();
      break;
    }
    rc = cpk_model_build(m, ndims[k], samples[k], pick % 2 ? CPK_F64 : CPK_F32);
    if (rc == CPK_OK)
      fuzz_model_pass(m, ndims[k], samples[k], pick / 2);
    else if (cpk_last_error()[0] == '\0')
      __builtin_trap();
    cpk_model_free(m);
    if (rc == CPK_OK)
      break;
  }
  free(text);
  return 0;
}
