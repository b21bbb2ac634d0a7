/* main.c: `curvpack COMMAND [options]`. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
  int mpi; /* runs data-parallel under mpirun */
} commands[] = {
    {"compute", cmd_compute,
     "gradients and extensions in one backward pass", 1},
    {"init", cmd_init, "write PyTorch-style initial parameters for a model", 0},
    {"jacobian", cmd_jacobian,
     "per-sample Jacobian of the output w.r.t. the input (forward or reverse mode)", 0},
    {"propagate", cmd_propagate,
     "first-order propagation of input errors, with a Monte Carlo check", 0},
    {"hvp", cmd_hvp, "Hessian of the loss times a parameter vector", 1},
    {"ggnvp", cmd_ggnvp,
     "generalized Gauss-Newton matrix times a parameter vector", 1},
    {"eigen", cmd_eigen, "top eigenvalues and eigenvectors of the curvature", 1},
    {"trace", cmd_trace, "trace of the curvature (exact or stochastic)", 1},
    {"density", cmd_density, "spectral density of the curvature (SLQ)", 1},
    {"train", cmd_train,
     "train on (Fashion-)MNIST with diagnostics, checkpoints, --resume", 1},
    {"plot", cmd_plot, "render a run's diagnostics as RUN/dashboard.png", 0},
};

static void usage(FILE *to) {
  fprintf(to, "usage: curvpack COMMAND [options]\n\n"
              "Curvature and second-order statistics of neural-network "
              "losses.\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(to, "  %-10s %s\n", commands[i].name, commands[i].summary);
  fprintf(to, "\n`curvpack COMMAND --help` describes a command; "
              "`curvpack --version` prints the version.\n");
  if (cpk_have_mpi())
    fprintf(to, "\nUnder `mpirun -np K curvpack COMMAND ...` (compute, hvp, "
                "ggnvp, eigen, trace,\ndensity, train) each rank takes its "
                "share of the batch; the outputs are those\nof one process "
                "on the whole batch, written by rank 0.\n");
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
static int run(int argc, char **argv);

int main(int argc, char **argv) {
  int rc = cli_mpi_init(&argc, &argv);
  if (rc == 0)
    rc = run(argc, argv);
  cli_mpi_finalize();
  return rc;
}

static int run(int argc, char **argv) {
  /* Under MPI only rank 0 prints (errors reach it from the other ranks). */
  if (cli_rank() != 0 && freopen("/dev/null", "w", stdout) == NULL)
    return cli_error(CPK_EIO, "cannot silence rank %d's output", cli_rank());
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
    if (strcmp(cmd, commands[i].name) == 0) {
      if (cli_ranks() > 1 && !commands[i].mpi)
        return cli_error(CPK_EUSAGE,
                         "%s has no MPI data-parallel mode: run it as one "
                         "process, without mpirun (%d ranks here)",
                         cmd, cli_ranks());
      return finish(commands[i].run(argc - 2, argv + 2));
    }
  return cli_error(CPK_EUSAGE,
                   "unknown command '%s' (see curvpack --help)", cmd);
}
