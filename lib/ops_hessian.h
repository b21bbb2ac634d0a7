/*
 * ops_hessian.h: device operations of the exact Hessian's backward terms
 * (extensions/hessian_terms.c) and of KFRA's dense averaged products
 * (lib/layers/ea_generic.c), with the meaning and conventions of ops.h
 * (raw row-major buffers of dtype dt; on a CUDA context they are device
 * memory and the CUDA twin in gpu/hessian_cuda.cu runs).
 */
#ifndef CPK_OPS_HESSIAN_H
#define CPK_OPS_HESSIAN_H

#include <stdint.h>

#include "context.h"

/* x[i] := value, i < n. */
void cpk__fill(const cpk_context *ctx, cpk_dtype dt, int64_t n, double value,
               void *x);

/* Lazy rows as a signed factor block: for r < K, j < N, i < D,
 *   blk[r, j, i] := (w[r, i] * e[j, i]) * sqrt|s[j, r]|,
 *   sign[r, j]   := -1 if s[j, r] < 0 else 1,
 * s [N, K], w [K, D], e [N, D], blk [K, N, D], sign [K, N]. */
void cpk__lazy_rows(const cpk_context *ctx, cpk_dtype dt, int64_t k, int64_t n,
                    int64_t d, const void *s, const void *w, const void *e,
                    void *blk, void *sign);

/* A diagonal as a signed factor of one-hot columns: for i < D, j < N,
 *   blk[i, j, i] := sqrt|dv[j, i]|,  sign[i, j] := -1 if dv[j, i] < 0
 * else 1; dv [N, D], blk [D, N, D] (entries off i are left as they are:
 * pass a zeroed block), sign [D, N]. */
void cpk__diag_to_factor(const cpk_context *ctx, cpk_dtype dt, int64_t n,
                         int64_t d, const void *dv, void *blk, void *sign);

/* Swap the outer axes of x [A, B, C]: y[k, j, i] := x[i, j, k],
 * y [C, B, A] (y != x). */
void cpk__swap_outer_axes(const cpk_context *ctx, cpk_dtype dt, int64_t a,
                          int64_t b, int64_t c, const void *x, void *y);

/* Repeat the rows of x [A, C] B times along a middle axis:
 * y[i, j, k] := x[i, k], y [A, B, C]. */
void cpk__repeat_middle(const cpk_context *ctx, cpk_dtype dt, int64_t a,
                        int64_t b, int64_t c, const void *x, void *y);

#endif
