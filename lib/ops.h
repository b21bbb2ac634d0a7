/*
 * ops.h: the device operations every layer, loss and extension is written
 * over (design.md: "write the math once over a small set of device
 * operations"). The CPU implements each one (ops_cpu.c, the reference); the
 * CUDA path overrides them. Buffers are raw pointers of the given dtype
 * (float32 or float64), row major.
 */
#ifndef CPK_OPS_H
#define CPK_OPS_H

#include <stdint.h>

#include "context.h"

/* C[M,N] := alpha * op(A) * op(B) + beta * C, row major; op(A) is [M,K]
 * (A^T when trans_a), op(B) is [K,N]. lda/ldb/ldc are row strides. */
void cpk__gemm(const cpk_context *ctx, cpk_dtype dt, int trans_a, int trans_b,
               int64_t m, int64_t n, int64_t k, double alpha, const void *a,
               int64_t lda, const void *b, int64_t ldb, double beta, void *c,
               int64_t ldc);

/* y[i] := x[i], i < n. */
void cpk__copy(const cpk_context *ctx, cpk_dtype dt, int64_t n, const void *x,
               void *y);
/* y[i] := alpha * x[i] + y[i]. */
void cpk__axpy(const cpk_context *ctx, cpk_dtype dt, int64_t n, double alpha,
               const void *x, void *y);
/* x[i] := alpha * x[i]. */
void cpk__scale(const cpk_context *ctx, cpk_dtype dt, int64_t n, double alpha,
                void *x);

/* Row sums of a [rows, cols] matrix, over the rows, for each of `blocks`
 * consecutive matrices: out[b, j] := beta*out[b, j] + sum_i x[b, i, j]. */
void cpk__sum_rows(const cpk_context *ctx, cpk_dtype dt, int64_t blocks,
                   int64_t rows, int64_t cols, const void *x, double beta,
                   void *out);

/* Broadcast product over a leading dimension:
 * out[v, i] := d[i] * in[v, i] for v < V, i < M. (in == out allowed.) */
void cpk__mul_broadcast(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                        int64_t m, const void *d, const void *in, void *out);

/* Elementwise activation functions f and their derivatives. */
typedef enum {
  CPK__ACT_IDENTITY,
  CPK__ACT_RELU,
  CPK__ACT_LEAKY_RELU, /* param: negative_slope */
  CPK__ACT_SIGMOID,
  CPK__ACT_TANH,
  CPK__ACT_ELU,        /* param: alpha */
  CPK__ACT_SELU,
  CPK__ACT_LOGSIGMOID,
  CPK__ACT_EXP,
  CPK__ACT_LOG
} cpk__act;

/* Which function of the activation to evaluate at x (y = f(x) given too). */
typedef enum {
  CPK__ACT_F,  /* f(x) */
  CPK__ACT_D1, /* f'(x) */
  CPK__ACT_D2  /* f''(x) */
} cpk__act_order;

/* out[i] := f^(order)(x[i]) for i < n. `y` (the forward output) may be NULL
 * for CPK__ACT_F; derivatives use it where that is cheaper. */
void cpk__act_eval(const cpk_context *ctx, cpk_dtype dt, cpk__act act,
                   double param, cpk__act_order order, int64_t n,
                   const void *x, const void *y, void *out);

#endif /* CPK_OPS_H */
