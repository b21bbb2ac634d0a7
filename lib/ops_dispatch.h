/*
 * ops_dispatch.h: how a device operation hands over to its CUDA twin
 * (private; for the files that implement operations: ops_cpu.c,
 * ops_hessian.c, forward.c). Include after config.h.
 *
 *   void cpk__op(const cpk_context *ctx, cpk_dtype dt, ...) {
 *     ON_CUDA(ctx, cpk__cuda_op(ctx->gpu, F64(dt), ...));
 *     ... the CPU version ...
 *   }
 */
#ifndef CPK_OPS_DISPATCH_H
#define CPK_OPS_DISPATCH_H

#include "context.h"

#ifdef CPK_HAVE_CUDA
/* On a CUDA context, run `call` (the CUDA twin) and return. */
#define ON_CUDA(ctx, call)                                                     \
  do {                                                                         \
    if ((ctx) != NULL && (ctx)->device == CPK_DEVICE_CUDA) {                   \
      call;                                                                    \
      return;                                                                  \
    }                                                                          \
  } while (0)
/* The CUDA twins take the dtype as a flag: 1 for float64, 0 for float32. */
#define F64(dt) ((dt) == CPK_F64)
#else
#define ON_CUDA(ctx, call) (void)(ctx)
#endif

#endif
