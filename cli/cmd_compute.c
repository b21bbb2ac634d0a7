/* cmd_compute.c: `curvpack compute`, gradients and extensions in one
 * backward pass, with optional timing (--repeat). */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

/* One pass, timed; keeps the pass's peak allocation. */
static int timed_pass(cpk_context *ctx, cpk_model *model,
                      const cpk_pass_spec *spec, const cpk_pass_options *po,
                      const cpk_tensor *input,
                      const cpk_tensor *target, cpk_results **res,
                      double *seconds, size_t *peak) {
  cpk_results_free(*res);
  *res = NULL;
  size_t base = cpk_memory_in_use();
  cpk_memory_reset_peak();
  double t0 = cli_now();
  int rc = cpk_compute_ex(ctx, model, spec, po, input, target, res);
  *seconds = cli_now() - t0;
  *peak = cpk_memory_peak() - base;
  return rc;
}

int cmd_compute(int argc, char **argv) {
  cli_common c = {0};
  const char *ext = NULL, *repeat = NULL, *data_pass = NULL;
  cli_opt opts[CLI_COMMON_NOPTS + 3];
  cli_common_opts(&c, opts);
  opts[CLI_COMMON_NOPTS] =
      (cli_opt){"ext", "LIST",
                "extensions, comma-separated: batch_grad, batch_l2_grad, "
                "sum_grad_squared, variance, batch_dot_grad, diag_ggn_exact, "
                "diag_ggn_mc, batch_diag_ggn_exact, batch_diag_ggn_mc, "
                "diag_hessian, batch_diag_hessian, kfac, kflr, kfra, "
                "sqrt_ggn_exact, sqrt_ggn_mc",
                &ext, NULL};
  opts[CLI_COMMON_NOPTS + 1] =
      (cli_opt){"repeat", "R",
                "run the pass R more times and write timing.json", &repeat,
                NULL};
  opts[CLI_COMMON_NOPTS + 2] = (cli_opt){
      "data-pass", "B",
      "treat --input as a whole data set and go through it in passes of at "
      "most B samples (per MPI rank), accumulating the results of one pass "
      "over all of it (not kfra)",
      &data_pass, NULL};
  int rc = cli_parse("compute",
                     "Run the model forward and backward once; write "
                     "loss.npy, output.npy, P.grad.npy for every parameter P "
                     "and the outputs of each extension. Under mpirun -np K "
                     "each rank takes its share of the batch and rank 0 "
                     "writes the outputs of the whole batch.",
                     argc, argv, opts, CLI_COMMON_NOPTS + 3);
  if (rc != 0)
    return rc < 0 ? CLI_EXIT_OK : rc;
  if ((rc = cli_require("compute", "model", c.model)) ||
      (rc = cli_require("compute", "params", c.params)) ||
      (rc = cli_require("compute", "input", c.input)) ||
      (rc = cli_require("compute", "target", c.target)) ||
      (rc = cli_require("compute", "out", c.out)))
    return rc;
  cli_setup s;
  if ((rc = cli_common_setup(&c, &s)) != 0)
    return rc;
  int64_t runs = 0;
  if (repeat && (rc = cli_parse_int("repeat", repeat, 0, &runs)) != 0)
    return rc;
  cpk_pass_options po = {0};
  if (data_pass &&
      (rc = cli_parse_int("data-pass", data_pass, 1, &po.max_batch)) != 0)
    return rc;
  cpk_pass_spec spec = {s.loss, s.reduction, ext, 0};

  /* Usage errors in the extension list come before any file is read. */
  if ((rc = cpk_extensions_check(ext)) != CPK_OK)
    return cli_lib_error(rc);

  cpk_model *model = NULL;
  cpk_tensor *input = NULL, *target = NULL;
  cpk_context *ctx = NULL;
  cpk_results *res = NULL;
  double *times = NULL;
  size_t peak = 0, pass_peak;
  int st;
  if ((rc = cli_load_problem(&c, &s, &model, &input, &target)) != 0)
    return rc;
  if ((st = cli_context_new(&ctx, &s.ctx)) != CPK_OK)
    rc = cli_lib_error(st);
  times = calloc((size_t)(runs > 0 ? runs : 1), sizeof *times);
  if (rc == 0 && times == NULL)
    rc = cli_error(CPK_ENOMEM, "out of memory for %lld timings",
                   (long long)runs);
  if ((rc = cli_sync(rc)) != 0)
    goto done;
  if ((st = timed_pass(ctx, model, &spec, &po, input, target, &res, &times[0],
                       &peak)) != CPK_OK) {
    rc = cli_lib_fail(ctx, st);
    goto done;
  }
  for (int64_t i = 0; i < runs; i++) {
    if ((st = timed_pass(ctx, model, &spec, &po, input, target, &res, &times[i],
                         &pass_peak)) != CPK_OK) {
      rc = cli_lib_fail(ctx, st);
      goto done;
    }
    peak = pass_peak > peak ? pass_peak : peak;
  }
  if ((rc = cli_write_results(c.out, res)) == 0 && repeat)
    rc = cli_write_timing(c.out, runs, times, peak);
done:
  free(times);
  cpk_results_free(res);
  cpk_context_free(ctx);
  cpk_tensor_free(target);
  cpk_tensor_free(input);
  cpk_model_free(model);
  return rc;
}
