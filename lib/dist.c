/* dist.c: data parallelism over MPI ranks (see dist.h). */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "context.h"
#include "dist.h"

#ifdef CPK_HAVE_MPI
#include <mpi.h>
#include "curvpack_mpi.h"
#endif

int cpk_have_mpi(void) {
#ifdef CPK_HAVE_MPI
  return 1;
#else
  return 0;
#endif
}

int cpk_context_rank(const cpk_context *ctx) { return ctx->dist.rank; }
int cpk_context_ranks(const cpk_context *ctx) { return ctx->dist.size; }

void cpk__dist_begin(cpk_context *ctx) {
  ctx->dist.stopped = 0;
  ctx->dist.stop_status = CPK_OK;
}

#ifdef CPK_HAVE_MPI
#define COMM(ctx) (*(MPI_Comm *)(ctx)->dist.comm)

/* An MPI failure as a status (the default error handler of the duplicate
 * is MPI_ERRORS_RETURN). */
static int mpi_fail(int err, const char *what) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(err, msg, &len);
  return cpk__fail(CPK_EIO, "MPI: %s failed: %s", what, msg);
}

int cpk_context_set_mpi_comm(cpk_context *ctx, MPI_Comm comm) {
  int init = 0, rank, size, err;
  MPI_Comm *dup;
  MPI_Initialized(&init);
  if (!init)
    return cpk__fail(CPK_EINVAL, "MPI: the communicator needs MPI_Init first");
  if (comm == MPI_COMM_NULL)
    return cpk__fail(CPK_EINVAL, "MPI: the communicator is MPI_COMM_NULL");
  if ((dup = cpk__malloc(sizeof *dup)) == NULL)
    return CPK_ENOMEM;
  if ((err = MPI_Comm_dup(comm, dup)) != MPI_SUCCESS) {
    cpk__free(dup);
    return mpi_fail(err, "MPI_Comm_dup");
  }
  MPI_Comm_set_errhandler(*dup, MPI_ERRORS_RETURN);
  MPI_Comm_rank(*dup, &rank);
  MPI_Comm_size(*dup, &size);
  int64_t *counts = cpk__calloc((size_t)size * sizeof *counts);
  if (counts == NULL) {
    MPI_Comm_free(dup);
    cpk__free(dup);
    return CPK_ENOMEM;
  }
  cpk__dist_free(ctx);
  ctx->dist.comm = dup;
  ctx->dist.counts = counts;
  ctx->dist.rank = rank;
  ctx->dist.size = size;
  cpk__dist_begin(ctx);
  return CPK_OK;
}

void cpk__dist_free(cpk_context *ctx) {
  if (ctx->dist.comm != NULL) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin)
      MPI_Comm_free((MPI_Comm *)ctx->dist.comm);
    cpk__free(ctx->dist.comm);
  }
  cpk__free(ctx->dist.counts);
  ctx->dist.comm = NULL;
  ctx->dist.counts = NULL;
  ctx->dist.rank = 0;
  ctx->dist.size = 1;
}

int cpk__dist_agree(cpk_context *ctx, int rc) {
  if (ctx->dist.size <= 1)
    return rc;
  if (ctx->dist.stopped)
    return ctx->dist.stop_status;
  /* The lowest failing rank (size when none failed). */
  int mine = rc != CPK_OK ? ctx->dist.rank : ctx->dist.size, lowest, err;
  if ((err = MPI_Allreduce(&mine, &lowest, 1, MPI_INT, MPI_MIN, COMM(ctx))) !=
      MPI_SUCCESS) {
    ctx->dist.stopped = 1;
    return ctx->dist.stop_status = mpi_fail(err, "MPI_Allreduce");
  }
  if (lowest == ctx->dist.size)
    return CPK_OK;
  /* Its status and message go to every rank. */
  struct {
    int status;
    char msg[1536];
  } what = {rc, ""};
  if (ctx->dist.rank == lowest)
    snprintf(what.msg, sizeof what.msg, "%s",
             cpk_last_error()[0] ? cpk_last_error() : cpk_strerror(rc));
  err = MPI_Bcast(&what, (int)sizeof what, MPI_BYTE, lowest, COMM(ctx));
  ctx->dist.stopped = 1;
  if (err != MPI_SUCCESS)
    return ctx->dist.stop_status = mpi_fail(err, "MPI_Bcast");
  what.msg[sizeof what.msg - 1] = '\0';
  if (lowest == 0)
    cpk__fail(what.status, "%s", what.msg);
  else
    cpk__fail(what.status, "rank %d: %s", lowest, what.msg);
  return ctx->dist.stop_status = what.status;
}

int cpk__dist_sizes(cpk_context *ctx, int rc, int64_t n, int64_t *first,
                    int64_t *total) {
  *first = 0;
  *total = n;
  if (ctx->dist.size <= 1)
    return rc;
  if ((rc = cpk__dist_agree(ctx, rc)) != CPK_OK)
    return rc;
  int err = MPI_Allgather(&n, 1, MPI_INT64_T, ctx->dist.counts, 1,
                          MPI_INT64_T, COMM(ctx));
  if (err != MPI_SUCCESS)
    rc = mpi_fail(err, "MPI_Allgather");
  *total = 0;
  for (int r = 0; rc == CPK_OK && r < ctx->dist.size; r++) {
    if (ctx->dist.counts[r] < 1)
      rc = cpk__fail(CPK_ESHAPE,
                     "rank %d of %d has no samples: every rank needs at "
                     "least one (fewer ranks, or a larger batch)",
                     r, ctx->dist.size);
    if (r < ctx->dist.rank)
      *first += ctx->dist.counts[r];
    *total += ctx->dist.counts[r];
  }
  return rc;
}

/* Split a transfer of `count` elements into messages MPI's int counts can
 * describe. */
#define CHUNK ((int64_t)1 << 30)

int cpk__dist_sum(cpk_context *ctx, int rc, cpk_dtype dt, void *buf,
                  int64_t count) {
  if (ctx->dist.size <= 1)
    return rc;
  if ((rc = cpk__dist_agree(ctx, rc)) != CPK_OK)
    return rc;
  MPI_Datatype type = dt == CPK_F32 ? MPI_FLOAT : MPI_DOUBLE;
  const size_t es = cpk_dtype_size(dt);
  for (int64_t at = 0; at < count; at += CHUNK) {
    const int k = (int)(count - at < CHUNK ? count - at : CHUNK);
    char *p = (char *)buf + (size_t)at * es;
    int err = MPI_Reduce(ctx->dist.rank == 0 ? MPI_IN_PLACE : p, p, k, type,
                         MPI_SUM, 0, COMM(ctx));
    if (err == MPI_SUCCESS)
      err = MPI_Bcast(p, k, type, 0, COMM(ctx));
    if (err != MPI_SUCCESS) {
      ctx->dist.stopped = 1; /* the ranks may be out of step now */
      return ctx->dist.stop_status = mpi_fail(err, "reduction");
    }
  }
  return CPK_OK;
}

int cpk__dist_gather(cpk_context *ctx, int rc, const cpk_tensor *local,
                     int axis, cpk_tensor **out) {
  *out = NULL;
  if ((rc = cpk__dist_agree(ctx, rc)) != CPK_OK)
    return rc;
  const int size = ctx->dist.size;
  const int64_t lead = axis == 1 ? local->shape[0] : 1;
  const int64_t nloc = local->shape[axis];
  const size_t es = cpk_dtype_size(local->dtype);
  const int64_t per = nloc ? cpk_tensor_numel(local) / (lead * nloc) : 0;
  int64_t shape[CPK_MAX_DIMS], total = 0;
  for (int r = 0; r < size; r++)
    total += ctx->dist.counts[r];
  memcpy(shape, local->shape, sizeof shape);
  shape[axis] = total;
  if (nloc != ctx->dist.counts[ctx->dist.rank])
    rc = cpk__fail(CPK_ESHAPE, "MPI gather: %lld local rows, expected %lld",
                   (long long)nloc,
                   (long long)ctx->dist.counts[ctx->dist.rank]);
  /* Every rank's block of `lead` slices, one after another. */
  int *counts = NULL, *displs = NULL;
  cpk_tensor *packed = NULL;
  if (rc == CPK_OK && (int64_t)es * per * lead * total > INT_MAX)
    rc = cpk__fail(CPK_EOVERFLOW,
                   "MPI gather: %lld bytes exceed one MPI message (2 GiB)",
                   (long long)((int64_t)es * per * lead * total));
  if (rc == CPK_OK) {
    counts = cpk__malloc((size_t)size * sizeof *counts);
    displs = cpk__malloc((size_t)size * sizeof *displs);
    if (counts == NULL || displs == NULL)
      rc = CPK_ENOMEM;
  }
  if (rc == CPK_OK)
    rc = cpk_tensor_new(&packed, local->dtype, local->ndim, shape);
  if (rc == CPK_OK)
    rc = cpk_tensor_new(out, local->dtype, local->ndim, shape);
  /* A local failure here still has to meet the other ranks. */
  if ((rc = cpk__dist_agree(ctx, rc)) == CPK_OK) {
    int64_t at = 0;
    for (int r = 0; r < size; r++) {
      counts[r] = (int)(ctx->dist.counts[r] * per * lead * (int64_t)es);
      displs[r] = (int)at;
      at += counts[r];
    }
    int err = MPI_Allgatherv(local->data, counts[ctx->dist.rank], MPI_BYTE,
                             packed->data, counts, displs, MPI_BYTE, COMM(ctx));
    if (err != MPI_SUCCESS) {
      ctx->dist.stopped = 1;
      rc = ctx->dist.stop_status = mpi_fail(err, "MPI_Allgatherv");
    }
  }
  if (rc == CPK_OK) { /* [rank][lead][n_r][per] -> [lead][total][per] */
    int64_t row0 = 0;
    for (int r = 0; r < size; r++) {
      const int64_t nr = ctx->dist.counts[r];
      for (int64_t v = 0; v < lead; v++)
        memcpy((char *)(*out)->data + (size_t)((v * total + row0) * per) * es,
               (char *)packed->data +
                   (size_t)(displs[r] + (int64_t)v * nr * per * (int64_t)es),
               (size_t)(nr * per) * es);
      row0 += nr;
    }
  }
  cpk__free(counts);
  cpk__free(displs);
  cpk_tensor_free(packed);
  if (rc != CPK_OK) {
    cpk_tensor_free(*out);
    *out = NULL;
  }
  return rc;
}

#else /* without MPI: one process, nothing to combine */

void cpk__dist_free(cpk_context *ctx) {
  ctx->dist.rank = 0;
  ctx->dist.size = 1;
}

int cpk__dist_agree(cpk_context *ctx, int rc) { return rc; }

int cpk__dist_sizes(cpk_context *ctx, int rc, int64_t n, int64_t *first,
                    int64_t *total) {
  *first = 0;
  *total = n;
  return rc;
}

int cpk__dist_sum(cpk_context *ctx, int rc, cpk_dtype dt, void *buf,
                  int64_t count) {
  return rc;
}

int cpk__dist_gather(cpk_context *ctx, int rc, const cpk_tensor *local,
                     int axis, cpk_tensor **out) {
  *out = NULL;
  if (rc != CPK_OK)
    return rc;
  return cpk_tensor_convert(out, local, local->dtype);
}
#endif

int cpk_context_agree(cpk_context *ctx, int status, const char *message) {
  if (status != CPK_OK && message != NULL)
    cpk__fail(status, "%s", message);
  return cpk__dist_agree(ctx, status);
}
