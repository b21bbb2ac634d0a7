/* mpi.c: the program under mpirun (see cli.h). MPI starts only when a
 * launcher started this process (its environment says so), so that a plain
 * `curvpack ...` run needs no MPI runtime; builds without MPI always run
 * as one process. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "cli.h"

#ifdef CPK_HAVE_MPI
#include <mpi.h>
#include "curvpack_mpi.h"
#endif

static int mpi_on, world_rank, world_size = 1;
static char last_message[1536];

int cli_rank(void) { return world_rank; }
int cli_ranks(void) { return world_size; }

void cli_note_error(const char *message) {
  snprintf(last_message, sizeof last_message, "%s", message);
}

/* Set by Open MPI's mpirun, by PMIx and by PMI launchers (Slurm, Hydra). */
static int launched_by_mpirun(void) {
  static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                                     "PMI_RANK", "PMI_SIZE"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
    if (getenv(vars[i]) != NULL)
      return 1;
  return 0;
}

int cli_mpi_init(int *argc, char ***argv) {
#ifdef CPK_HAVE_MPI
  if (!launched_by_mpirun())
    return 0;
  int provided = 0;
  if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) !=
      MPI_SUCCESS)
    return cli_error(CPK_EIO, "MPI_Init_thread failed");
  mpi_on = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
#endif
  return 0;
}

void cli_mpi_finalize(void) {
#ifdef CPK_HAVE_MPI
  if (mpi_on)
    MPI_Finalize();
#endif
}

int cli_context_new(cpk_context **ctx, const cpk_context_options *opts) {
  cpk_context_options o = *opts;
  /* Without --threads, the ranks on one machine share its cores. */
  const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (o.threads == 0 && world_size > 1 && local != NULL && atoi(local) > 1) {
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    o.threads = cores / atoi(local) > 1 ? (int)(cores / atoi(local)) : 1;
  }
  int st = cpk_context_new(ctx, &o);
#ifdef CPK_HAVE_MPI
  if (st == CPK_OK && world_size > 1 &&
      (st = cpk_context_set_mpi_comm(*ctx, MPI_COMM_WORLD)) != CPK_OK) {
    cpk_context_free(*ctx);
    *ctx = NULL;
  }
#endif
  return st;
}

int cli_sync(int exit_status) {
#ifdef CPK_HAVE_MPI
  if (world_size <= 1)
    return exit_status;
  int mine = exit_status != 0 ? world_rank : world_size, lowest;
  MPI_Allreduce(&mine, &lowest, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (lowest == world_size)
    return 0;
  struct {
    int status;
    char msg[sizeof last_message];
  } what = {exit_status, ""};
  if (world_rank == lowest)
    memcpy(what.msg, last_message, sizeof what.msg);
  MPI_Bcast(&what, (int)sizeof what, MPI_BYTE, lowest, MPI_COMM_WORLD);
  what.msg[sizeof what.msg - 1] = '\0';
  if (world_rank == 0 && exit_status == 0) /* else rank 0 said it already */
    fprintf(stderr, "curvpack: error: rank %d: %s\n", lowest, what.msg);
  return what.status;
#else
  return exit_status;
#endif
}

int cli_shard(cpk_tensor **t) {
  if (world_size <= 1)
    return 0;
  const int64_t n = (*t)->ndim > 0 ? (*t)->shape[0] : 0;
  if (n < world_size)
    return cli_error(CPK_ESHAPE,
                     "a batch of %lld samples cannot be split over %d MPI "
                     "ranks: every rank needs at least one",
                     (long long)n, world_size);
  const int64_t base = n / world_size, extra = n % world_size;
  const int64_t count = base + (world_rank < extra);
  const int64_t first =
      world_rank * base + (world_rank < extra ? world_rank : extra);
  const int64_t per = cpk_tensor_numel(*t) / n;
  const size_t es = cpk_dtype_size((*t)->dtype);
  int64_t shape[CPK_MAX_DIMS];
  memcpy(shape, (*t)->shape, sizeof shape);
  shape[0] = count;
  cpk_tensor *mine;
  int st = cpk_tensor_new(&mine, (*t)->dtype, (*t)->ndim, shape);
  if (st != CPK_OK)
    return cli_lib_error(st);
  memcpy(mine->data, (char *)(*t)->data + (size_t)(first * per) * es,
         (size_t)(count * per) * es);
  cpk_tensor_free(*t);
  *t = mine;
  return 0;
}

int cli_lib_fail(cpk_context *ctx, int status) {
  /* A failure seen by one rank reaches the others, waiting in a collective
   * call (a no-op when the library already agreed on it). */
  if (ctx != NULL && world_size > 1)
    status = cpk_context_agree(ctx, status, NULL);
  return cli_lib_error(status);
}

int cli_agree(cpk_context *ctx, int exit_status) {
  if (ctx == NULL || world_size <= 1)
    return exit_status;
  const int mine = exit_status == 0 ? CPK_OK
                   : exit_status == CLI_EXIT_USAGE ? CPK_EUSAGE
                                                   : CPK_EIO;
  const int st = cpk_context_agree(ctx, mine, exit_status ? last_message : NULL);
  if (st == CPK_OK)
    return 0;
  if (world_rank == 0 && exit_status == 0) /* else rank 0 said it already */
    fprintf(stderr, "curvpack: error: %s\n", cpk_last_error());
  return st == CPK_EUSAGE ? CLI_EXIT_USAGE : CLI_EXIT_FAILURE;
}
