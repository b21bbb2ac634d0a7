/*
 * products_cuda.h: the CUDA twins of the forward-mode operations of
 * lib/forward.h (cpk__fwd_eye, cpk__fwd_scatter, cpk__rev_scatter), with the
 * GPU handle in place of the context and `f64` (0: float32, 1: float64) in
 * place of the dtype; every pointer is device memory of that handle.
 * Queued on the handle's stream; failures kept in the handle (gpu_ops.h).
 */
#ifndef CPK_PRODUCTS_CUDA_H
#define CPK_PRODUCTS_CUDA_H

#include <stdint.h>

#include "gpu_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[j, m, i0 + j] := s ? s[m, i0 + j] : 1 for j < c, m < n; out [c, n, d]
 * zero on entry (only those entries are written). */
void cpk__cuda_fwd_eye(cpk__gpu *g, int f64, int64_t c, int64_t n, int64_t d,
                       int64_t i0, const void *s, void *out);
/* jac[m, o, i0 + j] := r[j, m, o]; r [c, n, dout], jac [n, dout, din]. */
void cpk__cuda_fwd_scatter(cpk__gpu *g, int f64, int64_t c, int64_t n,
                           int64_t dout, int64_t din, int64_t i0,
                           const void *r, void *jac);
/* jac[m, o0 + j, i] := r[j, m, i] * (s ? s[m, i] : 1); r [c, n, din]. */
void cpk__cuda_rev_scatter(cpk__gpu *g, int f64, int64_t c, int64_t n,
                           int64_t dout, int64_t din, int64_t o0,
                           const void *r, const void *s, void *jac);

#ifdef __cplusplus
}
#endif

#endif
