/* context.h: what a context holds (private). */
#ifndef CPK_CONTEXT_H
#define CPK_CONTEXT_H

#include "internal.h"
#include "rng.h"

struct cpk_context {
  int threads;
  cpk_device device;
  uint64_t seed;
  int mc_samples;
  cpk__rng rng; /* drawn from by dropout and MC sampling */
  size_t work_bytes; /* budget of one chunked intermediate (per-sample
                        gradients visited in chunks of samples) */
};

/* Apply the context's thread count to OpenMP and OpenBLAS. */
void cpk__context_apply_threads(const cpk_context *ctx);

#endif
