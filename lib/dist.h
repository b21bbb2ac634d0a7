/*
 * dist.h: data parallelism over MPI ranks (private). A context may hold a
 * communicator (cpk_context_set_mpi_comm, curvpack_mpi.h); each rank then
 * computes on its shard of the batch (rank r's samples follow rank r-1's)
 * and the results are combined as one process would have computed them on
 * the whole batch. Without MPI (or with one rank) every call here is a
 * no-op that hands back its status.
 *
 * Failure protocol (no rank hangs when another fails): every collective
 * starts with an agreement on the status of every rank (cpk__dist_agree).
 * When a rank failed, all ranks get its status and message ("rank R: ...")
 * and the context is stopped: later collectives return that status at once
 * without communicating, so every rank unwinds. Top-level calls
 * (cpk_compute_ex, cpk_curvature_op_new, cpk_curvature_op_apply) restart
 * the context (cpk__dist_begin).
 */
#ifndef CPK_DIST_H
#define CPK_DIST_H

#include "internal.h"

typedef struct cpk__dist {
  int rank, size;       /* 0 and 1 without a communicator */
  int stopped;          /* a collective saw a failure (see above) */
  int stop_status;
  int64_t *counts;      /* samples per rank of the last cpk__dist_sizes */
  void *comm;           /* MPI_Comm (a duplicate, owned), opaque here */
} cpk__dist;

/* Start a top-level call: clear the stopped state. */
void cpk__dist_begin(cpk_context *ctx);
/* Free the communicator and counts (context teardown). */
void cpk__dist_free(cpk_context *ctx);
/* Agree on `rc` over the ranks: CPK_OK when every rank passed CPK_OK, else
 * the status of the lowest failing rank, with its message. */
int cpk__dist_agree(cpk_context *ctx, int rc);
/* Agree, then share the local sample count n: *first = samples on lower
 * ranks, *total = samples on all ranks (ctx->dist.counts holds them all). A
 * rank without samples is an error. */
int cpk__dist_sizes(cpk_context *ctx, int rc, int64_t n, int64_t *first,
                    int64_t *total);
/* Agree, then buf := sum over ranks of buf (count elements of dtype dt,
 * float32 or float64), reduced on rank 0 and broadcast, so every rank holds
 * the same bits. */
int cpk__dist_sum(cpk_context *ctx, int rc, cpk_dtype dt, void *buf,
                  int64_t count);
/* Agree, then gather a tensor split over ranks along `axis` (0 or 1) in
 * rank order, with ctx->dist.counts[r] entries on rank r: *out (new) holds
 * all of them on every rank. */
int cpk__dist_gather(cpk_context *ctx, int rc, const cpk_tensor *local,
                     int axis, cpk_tensor **out);

#endif
