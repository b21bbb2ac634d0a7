/* context.h: what a context holds (private). */
#ifndef CPK_CONTEXT_H
#define CPK_CONTEXT_H

#include "internal.h"
#include "dist.h"
#include "rng.h"

struct cpk_context {
  int threads;
  cpk_device device;
  uint64_t seed;
  int mc_samples;
  cpk__rng rng; /* drawn from by dropout and MC sampling */
  size_t work_bytes; /* budget of one chunked intermediate (per-sample
                        gradients visited in chunks of samples) */
  /* The pass running now covers samples [shard_first, shard_first + N) of
   * a batch of shard_total samples (split over ranks or passes); 0: its
   * batch is the whole. Losses scale and Monte Carlo draws follow it. */
  int64_t shard_first, shard_total;
  cpk__dist dist; /* MPI ranks (dist.h) */
};

/* The shard of the running pass, for a local batch of n samples: *first
 * and *total (0 and n when the pass is the whole batch). */
void cpk__context_shard(const cpk_context *ctx, int64_t n, int64_t *first,
                        int64_t *total);

/* Apply the context's thread count to OpenMP and OpenBLAS. */
void cpk__context_apply_threads(const cpk_context *ctx);

#endif
