/*
 * curvpack_mpi.h: the MPI side of libcurvpack's public API (installed only
 * when the library is built with MPI; curvpack.h itself never includes
 * mpi.h).
 *
 * A context given a communicator computes data-parallel: every rank calls
 * the same functions in the same order with its own shard of the batch
 * (rank r's samples follow rank r-1's; shards may differ in size, each
 * needs at least one sample), and every rank gets the results that one
 * process would compute on the whole batch (see cpk_compute and
 * docs/mpi.md for how each quantity is combined).
 */
#ifndef CURVPACK_MPI_H
#define CURVPACK_MPI_H

#include <mpi.h>

#include "curvpack.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Make the context's computations collective over `comm` (duplicated; MPI
 * must be initialised; the duplicate is freed by cpk_context_free, which
 * must come before MPI_Finalize). Only the calling thread may use MPI
 * while the library runs (MPI_THREAD_FUNNELED is enough). */
int cpk_context_set_mpi_comm(cpk_context *ctx, MPI_Comm comm);

#ifdef __cplusplus
}
#endif
#endif /* CURVPACK_MPI_H */
