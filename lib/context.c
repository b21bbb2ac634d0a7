/* context.c: threads, device and seed of a computation. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>

#include "context.h"
#include "gpu.h"

int cpk_have_cuda(void) { return cpk__cuda_built(); }

int cpk_context_new(cpk_context **out, const cpk_context_options *opts) {
  cpk_context_options defaults = {0};
  *out = NULL;
  if (opts == NULL)
    opts = &defaults;
  if (opts->threads < 0)
    return cpk__fail(CPK_EINVAL, "threads must be positive, got %d",
                     opts->threads);
  if (opts->mc_samples < 0)
    return cpk__fail(CPK_EINVAL, "mc-samples must be positive, got %d",
                     opts->mc_samples);
  if (opts->device == CPK_DEVICE_CUDA) {
    char why[256];
    if (cpk__cuda_device_count(why, sizeof why) == 0)
      return cpk__fail(CPK_ENODEV, "--device cuda: %s", why);
    return cpk__fail(CPK_ENOTSUP,
                     "--device cuda: the CUDA path of the engine is not "
                     "built yet; use --device cpu");
  }
  cpk_context *ctx = cpk__calloc(sizeof *ctx);
  if (ctx == NULL)
    return CPK_ENOMEM;
  ctx->threads = opts->threads > 0 ? opts->threads : omp_get_num_procs();
  ctx->device = opts->device;
  ctx->seed = opts->seed;
  ctx->mc_samples = opts->mc_samples > 0 ? opts->mc_samples : 1;
  cpk__rng_seed(&ctx->rng, ctx->seed);
  ctx->work_bytes = (size_t)64 << 20;
  ctx->dist.size = 1;
  *out = ctx;
  return CPK_OK;
}

void cpk_context_free(cpk_context *ctx) {
  if (ctx == NULL)
    return;
  cpk__dist_free(ctx);
  cpk__free(ctx);
}

void cpk__context_shard(const cpk_context *ctx, int64_t n, int64_t *first,
                        int64_t *total) {
  *first = ctx->shard_total > 0 ? ctx->shard_first : 0;
  *total = ctx->shard_total > 0 ? ctx->shard_total : n;
}

void cpk__context_apply_threads(const cpk_context *ctx) {
  omp_set_num_threads(ctx->threads);
  openblas_set_num_threads(ctx->threads);
}
