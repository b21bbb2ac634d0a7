/* cli.h: the curvpack program's shared pieces: option parsing, the options
 * every command takes, output writing and error reporting. */
#ifndef CPK_CLI_H
#define CPK_CLI_H

#include <stdint.h>

#include "curvpack.h"

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAILURE 1
#define CLI_EXIT_USAGE 2

/* One option of a command: `--name VALUE` (or `--name=VALUE`), or a flag
 * when `flag` is set. Values are kept as strings; *value stays NULL when the
 * option is absent. */
typedef struct cli_opt {
  const char *name;
  const char *metavar; /* NULL for a flag */
  const char *help;
  const char **value;
  int *flag;
} cli_opt;

/* Print "curvpack: error: ..." on stderr; returns the exit status that the
 * status code calls for (2 for usage errors, else 1). */
int cli_error(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Report the library's last error for `status`. */
int cli_lib_error(int status);

/* Parse argv[first..argc) against opts. On a usage error prints it and
 * returns 2; on --help prints the help (usage line, summary, options) and
 * returns -1; else 0. */
int cli_parse(const char *command, const char *summary, int argc, char **argv,
              const cli_opt *opts, int nopts);

/* The options every command takes (contract.md). */
typedef struct cli_common {
  const char *model, *params, *input, *target, *out;
  const char *loss, *reduction, *dtype, *threads, *device, *seed, *mc_samples;
  const char *max_memory;
} cli_common;
#define CLI_COMMON_NOPTS 13
/* Fill opts[0..CLI_COMMON_NOPTS) with the common options bound to c. */
void cli_common_opts(cli_common *c, cli_opt *opts);
/* Say in --help that the options called `names` (NULL-terminated) are
 * accepted and ignored by this command (common options that mean nothing
 * to it, kept so that one command line serves every command). */
void cli_mark_ignored(cli_opt *opts, int nopts, const char *const *names);

/* Parsed forms of the common options. */
typedef struct cli_setup {
  cpk_loss_kind loss;
  cpk_reduction reduction;
  cpk_dtype dtype;
  cpk_context_options ctx;
} cli_setup;
/* Check and convert the common options; returns an exit status (0 = ok). */
int cli_common_setup(const cli_common *c, cli_setup *s);
/* Fail with exit 2 unless `value` was given. */
int cli_require(const char *command, const char *name, const char *value);
/* Parse a memory size ("4G", "512MiB", "1000000") of option `name`.
 * Returns 0 or an exit status (2). */
int cli_parse_size(const char *name, const char *text, size_t *out);
/* The memory this process may use: physical memory, or less when a cgroup
 * limit says so. 0 when unknown. */
size_t cli_machine_memory(void);
/* The help line of --max-memory. */
#define CLI_MAX_MEMORY_HELP                                                    \
  "memory budget of the library, e.g. 512M or 4G (default: the machine's "     \
  "memory); a step that needs more fails, saying how much it asked for "    \
  "(compute first runs the pass again on halves of the batch, except for "   \
  "kfra)"
/* Parse a non-negative integer option. Returns 0 or an exit status. */
int cli_parse_int(const char *name, const char *text, int64_t min,
                  int64_t *out);

/* Load the model file, read the input, build the model for the input's
 * sample shape in `dtype` and load the parameters directory. */
int cli_load_model(const cli_common *c, cpk_dtype dtype, cpk_model **model,
                   cpk_tensor **input);

/* Write every result as OUT/NAME.npy, all or nothing: each goes to a
 * temporary name first and all are renamed once all are written. Creates
 * OUT if missing. Returns an exit status. */
int cli_write_results(const char *out, const cpk_results *r);
/* Write text to OUT/NAME atomically (temporary name, then rename). */
int cli_write_text(const char *out, const char *name, const char *text);
/* mkdir -p. Returns 0 or an exit status (after printing the error). */
int cli_make_dir(const char *path);

/* Load the model, parameters, input and target of the common options and
 * check them against the loss (everything a loss-based command needs). */
int cli_load_problem(const cli_common *c, const cli_setup *s,
                     cpk_model **model, cpk_tensor **input,
                     cpk_tensor **target);

/* Monotonic wall time in seconds. */
double cli_now(void);
/* timing.json for `runs` timed repeats (times[0..max(runs,1)) are sorted in
 * place): runs, median_s, min_s, max_s, peak_bytes. */
int cli_write_timing(const char *out, int64_t runs, double *times,
                     size_t peak);

/* MPI (cli/mpi.c). Under mpirun (in a build with MPI) every rank runs the
 * command on its shard of the batch; only rank 0 prints and writes files. */
/* Start MPI when a launcher started this process; returns an exit status. */
int cli_mpi_init(int *argc, char ***argv);
void cli_mpi_finalize(void);
/* This process's rank and the number of ranks (0 and 1 without MPI). */
int cli_rank(void);
int cli_ranks(void);
/* cpk_context_new, with the world communicator when there are ranks. */
int cli_context_new(cpk_context **ctx, const cpk_context_options *opts);
/* Agree on the exit status of every rank (a no-op for one process): 0 when
 * all passed 0, else the status of the lowest failing rank, whose message
 * rank 0 prints. Call after work that may fail on some ranks only, before
 * the next collective call. */
int cli_sync(int exit_status);
/* Replace a batch [N, ...] by this rank's rows: rank r gets N / K rows, one
 * more when r < N % K, after those of ranks below it. */
int cli_shard(cpk_tensor **t);
/* cli_sync over a context's ranks (once the context exists, every
 * agreement goes through it, so that no rank waits on another
 * communicator). */
int cli_agree(cpk_context *ctx, int exit_status);
/* Report a library failure of a collective phase: agree on it with the
 * other ranks first (see cpk_context_agree), then print it on rank 0.
 * Not for failures after the last collective call (writing files). */
int cli_lib_fail(cpk_context *ctx, int status);
/* Remember the message of this rank's last error (for cli_sync). */
void cli_note_error(const char *message);

/* Commands. */
int cmd_compute(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_jacobian(int argc, char **argv);
int cmd_propagate(int argc, char **argv);
int cmd_hvp(int argc, char **argv);
int cmd_ggnvp(int argc, char **argv);
int cmd_eigen(int argc, char **argv);
int cmd_trace(int argc, char **argv);
int cmd_density(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_plot(int argc, char **argv);

#endif
