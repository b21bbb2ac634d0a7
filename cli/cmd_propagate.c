/* cmd_propagate.c: `curvpack propagate`, first-order propagation of
 * independent input errors through the model (sigma_o = sqrt(sum_i (J_oi
 * sigma_i)^2), the covariance J diag(sigma^2) J^T), with an optional Monte
 * Carlo check on Gaussian draws. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

/* The common options that mean nothing to error propagation. */
static const char *const ignored[] = {"target", "loss", "reduction",
                                      "mc-samples", NULL};

int cmd_propagate(int argc, char **argv) {
  cli_common c = {0};
  const char *sigma_path = NULL, *samples_text = NULL;
  cli_opt opts[CLI_COMMON_NOPTS + 2];
  cli_common_opts(&c, opts);
  cli_mark_ignored(opts, CLI_COMMON_NOPTS, ignored);
  opts[CLI_COMMON_NOPTS] =
      (cli_opt){"sigma", "FILE",
                "standard deviations of independent input errors .npy, "
                "input_shape or (N, *input_shape)",
                &sigma_path, NULL};
  opts[CLI_COMMON_NOPTS + 1] =
      (cli_opt){"samples", "S",
                "Monte Carlo check on S >= 2 Gaussian draws per sample "
                "(seeded by --seed): also write mc_mean.npy, mc_sigma.npy",
                &samples_text, NULL};
  int rc = cli_parse("propagate",
                     "Propagate input standard deviations to first order: "
                     "write output.npy, sigma.npy (sqrt(sum_i (J_oi "
                     "sigma_i)^2) per output) and covariance.npy (N, D_out, "
                     "D_out) = J diag(sigma^2) J^T (evaluation mode).",
                     argc, argv, opts, CLI_COMMON_NOPTS + 2);
  if (rc != 0)
    return rc < 0 ? CLI_EXIT_OK : rc;
  if ((rc = cli_require("propagate", "model", c.model)) ||
      (rc = cli_require("propagate", "params", c.params)) ||
      (rc = cli_require("propagate", "input", c.input)) ||
      (rc = cli_require("propagate", "sigma", sigma_path)) ||
      (rc = cli_require("propagate", "out", c.out)))
    return rc;
  int64_t samples = 0;
  if (samples_text != NULL) {
    if ((rc = cli_parse_int("samples", samples_text, 0, &samples)) != 0)
      return rc;
    if (samples == 1)
      return cli_error(CPK_EUSAGE,
                       "--samples: a standard deviation needs at least 2 "
                       "draws, got 1");
  }
  c.target = c.loss = c.reduction = c.mc_samples = NULL;
  cli_setup s;
  if ((rc = cli_common_setup(&c, &s)) != 0)
    return rc;

  cpk_model *model = NULL;
  cpk_tensor *input = NULL, *sigma = NULL;
  cpk_context *ctx = NULL;
  cpk_results *res = NULL;
  int st;
  if ((rc = cli_load_model(&c, s.dtype, &model, &input)) != 0)
    return rc;
  if ((st = cpk_npy_read(sigma_path, &sigma)) != CPK_OK ||
      (st = cpk_context_new(&ctx, &s.ctx)) != CPK_OK) {
    rc = cli_lib_error(st);
    goto done;
  }
  if ((st = cpk_propagate(ctx, model, input, sigma, samples, &res)) != CPK_OK) {
    /* The library names the array; add the file it came from. */
    const char *msg = cpk_last_error();
    if (strncmp(msg, "sigma:", 6) == 0)
      rc = cli_error(st, "%s: %s", sigma_path, msg);
    else
      rc = cli_lib_error(st);
    goto done;
  }
  rc = cli_write_results(c.out, res);
done:
  cpk_results_free(res);
  cpk_context_free(ctx);
  cpk_tensor_free(sigma);
  cpk_tensor_free(input);
  cpk_model_free(model);
  return rc;
}
