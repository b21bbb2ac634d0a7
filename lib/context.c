/* context.c: threads, device and seed of a computation. */
#include "config.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>

#include "context.h"
#include "gpu.h"
#ifdef CPK_HAVE_CUDA
#include "gpu_ops.h"
#endif

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
  if (opts->device != CPK_DEVICE_CPU && opts->device != CPK_DEVICE_CUDA)
    return cpk__fail(CPK_EINVAL, "unknown device %d", (int)opts->device);
  if (opts->device == CPK_DEVICE_CUDA) {
    char why[256];
    if (cpk__cuda_device_count(why, sizeof why) == 0)
      return cpk__fail(CPK_ENODEV, "--device cuda: %s", why);
  }
  cpk_context *ctx = cpk__calloc(sizeof *ctx);
  if (ctx == NULL)
    return CPK_ENOMEM;
  ctx->threads = opts->threads > 0 ? opts->threads : omp_get_num_procs();
  ctx->device = CPK_DEVICE_CPU;
  ctx->seed = opts->seed;
  ctx->mc_samples = opts->mc_samples > 0 ? opts->mc_samples : 1;
  cpk__rng_seed(&ctx->rng, ctx->seed);
  ctx->work_bytes = (size_t)64 << 20;
  ctx->dist.size = 1;
  /* Under a memory budget, chunked intermediates take an eighth of it. */
  const size_t budget = cpk_memory_limit();
  if (budget != 0 && budget / 8 < ctx->work_bytes)
    ctx->work_bytes =
        budget / 8 > ((size_t)64 << 10) ? budget / 8 : (size_t)64 << 10;
#ifdef CPK_HAVE_CUDA
  if (opts->device == CPK_DEVICE_CUDA) {
    char why[512];
    cpk_context *host = cpk__calloc(sizeof *host);
    if (host == NULL) {
      cpk__free(ctx);
      return CPK_ENOMEM;
    }
    *host = *ctx;
    if (cpk__gpu_open(&ctx->gpu, 0, why, sizeof why) != 0) {
      cpk__free(host);
      cpk__free(ctx);
      return cpk__fail(CPK_ENODEV, "--device cuda: %s", why);
    }
    ctx->device = CPK_DEVICE_CUDA;
    ctx->host = host;
    /* Chunks on the device may be larger: the GPU has its own memory. */
    ctx->work_bytes = (size_t)512 << 20;
  }
#endif
  *out = ctx;
  return CPK_OK;
}

void cpk_context_free(cpk_context *ctx) {
  if (ctx == NULL)
    return;
  cpk__dist_free(ctx);
#ifdef CPK_HAVE_CUDA
  if (ctx->gpu != NULL)
    cpk__gpu_close(ctx->gpu);
#endif
  cpk__free(ctx->host);
  cpk__free(ctx);
}

cpk_context *cpk__context_host(cpk_context *ctx) {
  cpk_context *h = ctx->host;
  *h = *ctx; /* this pass's seed, shard and ranks */
  h->device = CPK_DEVICE_CPU;
  h->gpu = NULL;
  h->host = NULL;
  return h;
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
