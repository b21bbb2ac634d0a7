/*
 * hessian_cuda.h: the CUDA twins of the operations of lib/ops_hessian.h,
 * callable from C, with the conventions of gpu_ops.h (the GPU handle in
 * place of the context, f64 in place of the dtype, device pointers, queued
 * on the handle's stream, failures kept in the handle).
 */
#ifndef CPK_HESSIAN_CUDA_H
#define CPK_HESSIAN_CUDA_H

#include <stdint.h>

#include "gpu_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

void cpk__cuda_fill(cpk__gpu *g, int f64, int64_t n, double value, void *x);
void cpk__cuda_lazy_rows(cpk__gpu *g, int f64, int64_t k, int64_t n,
                         int64_t d, const void *s, const void *w,
                         const void *e, void *blk, void *sign);
void cpk__cuda_diag_to_factor(cpk__gpu *g, int f64, int64_t n, int64_t d,
                              const void *dv, void *blk, void *sign);
void cpk__cuda_swap_outer_axes(cpk__gpu *g, int f64, int64_t a, int64_t b,
                               int64_t c, const void *x, void *y);
void cpk__cuda_repeat_middle(cpk__gpu *g, int f64, int64_t a, int64_t b,
                             int64_t c, const void *x, void *y);

#ifdef __cplusplus
}
#endif

#endif
