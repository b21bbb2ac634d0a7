/* main.c: `curvpack COMMAND [options]`. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} commands[] = {
    {"compute", cmd_compute,
     "gradients and extensions in one backward pass"},
    {"init", cmd_init, "write PyTorch-style initial parameters for a model"},
    {"jacobian", cmd_jacobian,
     "per-sample Jacobian of the output w.r.t. the input (forward or reverse mode)"},
    {"propagate", cmd_propagate,
     "first-order propagation of input errors, with a Monte Carlo check"},
    {"hvp", cmd_hvp, "Hessian of the loss times a parameter vector"},
    {"ggnvp", cmd_ggnvp,
     "generalized Gauss-Newton matrix times a parameter vector"},
    {"eigen", cmd_eigen, "top eigenvalues and eigenvectors of the curvature"},
    {"trace", cmd_trace, "trace of the curvature (exact or stochastic)"},
    {"density", cmd_density, "spectral density of the curvature (SLQ)"},
    {"train", cmd_train,
     "train on (Fashion-)MNIST with diagnostics, checkpoints, --resume"},
    {"plot", cmd_plot, "render a run's diagnostics as RUN/dashboard.png"},
};

static void usage(FILE *to) {
  fprintf(to, "usage: curvpack COMMAND [options]\n\n"
              "Curvature and second-order statistics of neural-network "
              "losses.\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(to, "  %-10s %s\n", commands[i].name, commands[i].summary);
  fprintf(to, "\n`curvpack COMMAND --help` describes a command; "
              "`curvpack --version` prints the version.\n");
}

/* What a command printed must have reached standard output (a full disk
 * or a closed pipe behind it is an error, as for any other output). */
static int finish(int rc) {
  errno = 0;
  if (fflush(stdout) != 0 || ferror(stdout)) {
    const int err = errno;
    if (rc == CLI_EXIT_OK)
      rc = cli_error(CPK_EIO, "cannot write to standard output: %s",
                     err ? strerror(err) : "write error");
  }
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2)
    return usage(stderr), CLI_EXIT_USAGE;
  const char *cmd = argv[1];
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 ||
      strcmp(cmd, "help") == 0)
    return usage(stdout), finish(CLI_EXIT_OK);
  if (strcmp(cmd, "--version") == 0) {
    printf("curvpack %s\n", cpk_version());
    return finish(CLI_EXIT_OK);
  }
  /* Memory beyond what the machine has is an error that says how much was
   * asked for, before the system would kill the process (--max-memory
   * sets a smaller budget). */
  cpk_memory_set_limit(cli_machine_memory());
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(cmd, commands[i].name) == 0)
      return finish(commands[i].run(argc - 2, argv + 2));
  return cli_error(CPK_EUSAGE,
                   "unknown command '%s' (see curvpack --help)", cmd);
}
