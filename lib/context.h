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
  struct cpk__gpu *gpu; /* the CUDA device (device == CPK_DEVICE_CUDA) */
  cpk_context *host;    /* a CPU twin of this context (CUDA only): the
                           small host-side steps of a device pass (loss
                           values and square roots) run with it */
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

/* The CPU twin of a CUDA context, brought up to date with it (seed, shard,
 * ranks) for a host-side step of the pass now running. */
cpk_context *cpk__context_host(cpk_context *ctx);

/* Apply the context's thread count to OpenMP and OpenBLAS. */
void cpk__context_apply_threads(const cpk_context *ctx);

#endif
