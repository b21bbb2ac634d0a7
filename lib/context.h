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
  struct cpk__gpu *gpu; /* the CUDA device (device == CPK_DEVICE_CUDA) */
  cpk_context *host;    /* a CPU twin of this context (CUDA only): the
                           small host-side steps of a device pass (loss
                           values and square roots) run with it */
};

/* Apply the context's thread count to OpenMP and OpenBLAS. */
void cpk__context_apply_threads(const cpk_context *ctx);

#endif
