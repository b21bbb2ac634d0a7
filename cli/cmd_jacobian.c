/* cmd_jacobian.c: `curvpack jacobian`, the per-sample Jacobian of the
 * model output with respect to its input, in forward or reverse mode. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

/* The common options that mean nothing to a Jacobian. */
static const char *const ignored[] = {"target", "loss", "reduction",
                                      "mc-samples", NULL};

int cmd_jacobian(int argc, char **argv) {
  cli_common c = {0};
  const char *mode = NULL;
  cli_opt opts[CLI_COMMON_NOPTS + 1];
  cli_common_opts(&c, opts);
  cli_mark_ignored(opts, CLI_COMMON_NOPTS, ignored);
  opts[CLI_COMMON_NOPTS] =
      (cli_opt){"mode", "M",
                "forward or reverse (default: forward when the input has "
                "fewer elements than the output, else reverse)",
                &mode, NULL};
  int rc = cli_parse("jacobian",
                     "Write jacobian.npy, (N, *output_shape, *input_shape): "
                     "the Jacobian of each sample's output with respect to "
                     "its input (evaluation mode: dropout off, batch norm on "
                     "its running statistics).",
                     argc, argv, opts, CLI_COMMON_NOPTS + 1);
  if (rc != 0)
    return rc < 0 ? CLI_EXIT_OK : rc;
  cpk_jacobian_mode m = CPK_JACOBIAN_AUTO;
  if (mode != NULL) {
    if (strcmp(mode, "forward") == 0)
      m = CPK_JACOBIAN_FORWARD;
    else if (strcmp(mode, "reverse") == 0)
      m = CPK_JACOBIAN_REVERSE;
    else
      return cli_error(CPK_EUSAGE,
                       "--mode: expected forward or reverse, got '%s'", mode);
  }
  if ((rc = cli_require("jacobian", "model", c.model)) ||
      (rc = cli_require("jacobian", "params", c.params)) ||
      (rc = cli_require("jacobian", "input", c.input)) ||
      (rc = cli_require("jacobian", "out", c.out)))
    return rc;
  c.target = c.loss = c.reduction = c.mc_samples = NULL;
  cli_setup s;
  if ((rc = cli_common_setup(&c, &s)) != 0)
    return rc;

  cpk_model *model = NULL;
  cpk_tensor *input = NULL, *jac = NULL;
  cpk_context *ctx = NULL;
  char path[PATH_MAX];
  int st;
  if ((rc = cli_load_model(&c, s.dtype, &model, &input)) != 0)
    return rc;
  if ((st = cpk_context_new(&ctx, &s.ctx)) != CPK_OK ||
      (st = cpk_jacobian(ctx, model, input, m, &jac)) != CPK_OK) {
    rc = cli_lib_error(st);
    goto done;
  }
  /* One file: cpk_npy_write renames a complete temporary into place. */
  if ((rc = cli_make_dir(c.out)) != 0)
    goto done;
  if (snprintf(path, sizeof path, "%s/jacobian.npy", c.out) >=
      (int)sizeof path) {
    rc = cli_error(CPK_EINVAL, "output path too long: '%s'", c.out);
    goto done;
  }
  if ((st = cpk_npy_write(path, jac)) != CPK_OK)
    rc = cli_lib_error(st);
done:
  cpk_tensor_free(jac);
  cpk_context_free(ctx);
  cpk_tensor_free(input);
  cpk_model_free(model);
  return rc;
}
