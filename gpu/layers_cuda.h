/*
 * layers_cuda.h: CUDA twins of the batch-norm and average-pooling kernels
 * (lib/kernels/batchnorm.inc, lib/kernels/pool.inc), callable from C. Same
 * meaning and argument order as the CPU kernels, with the GPU handle first
 * and `f64` (0: float32, 1: float64) for the element type. Every pointer is
 * device memory of the handle's device; operations are queued on the
 * handle's stream, failures kept in the handle (reported by cpk__gpu_sync).
 * Reductions are deterministic (fixed order, no floating-point atomics).
 */
#ifndef CPK_LAYERS_CUDA_H
#define CPK_LAYERS_CUDA_H

#include <stdint.h>

#include "gpu_ops.h" /* cpk__gpu */

#ifdef __cplusplus
extern "C" {
#endif

/* ---- batch norm: x [N, F, L], blocks [V, N, F, L]; mean, istd, var are
 * double [F] in device memory; w, b of the element type (NULL: 1 and 0). */

/* mean[c] := (1/M) sum x[.,c,.]; var[c] := (1/M) sum (x - mean[c])^2. */
void cpk__cuda_bn_stats(cpk__gpu *g, int f64, int64_t n, int64_t f,
                        int64_t l, const void *x, double *mean, double *var);
/* y := (x - mean[c]) istd[c] w[c] + b[c]. */
void cpk__cuda_bn_forward(cpk__gpu *g, int f64, int64_t n, int64_t f,
                          int64_t l, const void *x, const double *mean,
                          const double *istd, const void *w, const void *b,
                          void *y);
/* out[r,c,l] := (w[c] istd[c]) in[r,c,l], r < vn. */
void cpk__cuda_bn_scale(cpk__gpu *g, int f64, int64_t vn, int64_t f,
                        int64_t l, const void *w, const double *istd,
                        const void *in, void *out);
/* Batch-statistics Jacobian (J = J^T), per (v, c):
 * out := w istd (u - mean(u) - x_hat mean(u x_hat)). */
void cpk__cuda_bn_coupled(cpk__gpu *g, int f64, int64_t v, int64_t n,
                          int64_t f, int64_t l, const void *x,
                          const double *mean, const double *istd,
                          const void *w, const void *in, void *out);
/* Parameter Jacobians transposed (see bn_param in batchnorm.inc). */
void cpk__cuda_bn_param(cpk__gpu *g, int f64, int64_t v, int64_t n, int64_t f,
                        int64_t l, const void *x, const double *mean,
                        const double *istd, int use_xhat, int per_sample,
                        double beta, const void *in, void *out);
/* Parameter Jacobians forward (see bn_param_fwd in batchnorm.inc). */
void cpk__cuda_bn_param_fwd(cpk__gpu *g, int f64, int64_t v, int64_t n,
                            int64_t f, int64_t l, const void *x,
                            const double *mean, const double *istd,
                            int use_xhat, double beta, const void *t,
                            void *out);

/* ---- average pooling over planes of a 3-d grid (1-d and 2-d pools have
 * leading unit axes). `tables` (device, int64) holds, axis after axis
 * (depth, height, width), first[out], count[out], div[out] (the layout of
 * cpk__pool_geom's tables), then, axis after axis, olo[in] and ohi[in]: the
 * outputs o with olo[i] <= o < ohi[i] are those whose window holds input
 * position i. */
typedef struct {
  int64_t in[3], out[3];
  int64_t divisor_override; /* nonzero: every average divides by it */
} cpk__cuda_avg_geom;

/* out[p,o] := sum_{i in window o} in[p,i] / div(o). */
void cpk__cuda_pool_avg(cpk__gpu *g, int f64, const cpk__cuda_avg_geom *geom,
                        const int64_t *tables, int64_t planes, const void *in,
                        void *out);
/* out[p,i] := sum_{o whose window holds i} in[p,o] / div(o), the outputs
 * in increasing order (the CPU's order of accumulation). */
void cpk__cuda_pool_avg_t(cpk__gpu *g, int f64,
                          const cpk__cuda_avg_geom *geom,
                          const int64_t *tables, int64_t planes,
                          const void *in, void *out);

#ifdef __cplusplus
}
#endif
#endif
