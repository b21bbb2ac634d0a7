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

/* `count` GEMMs of one shape: C_i := alpha op(A_i) op(B_i) + beta C_i with
 * A_i = a + i*stride_a (elements; 0 shares one operand), likewise B_i, C_i. */
void cpk__gemm_strided(const cpk_context *ctx, cpk_dtype dt, int trans_a,
                       int trans_b, int64_t m, int64_t n, int64_t k,
                       double alpha, const void *a, int64_t lda,
                       int64_t stride_a, const void *b, int64_t ldb,
                       int64_t stride_b, double beta, void *c, int64_t ldc,
                       int64_t stride_c, int64_t count);

/* out[v, r, :] := sum_c in[v, r, c] w[c, :] for in [V, R, K], w [K, M],
 * out [V, R, M] (all row major), skipping for each batch row r the columns
 * c where in[:, r, c] is zero for every v (a ReLU's zeros). Returns 1 when
 * done; 0 where it declined (not the CPU, neither AVX-512 nor AVX2, V below
 * 4, or too few zeros to pay): then nothing is written and the caller runs
 * the GEMM. ops_tiles.c. */
int cpk__block_times_skip_zero(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                               int64_t rows, int64_t k, int64_t m,
                               const void *in, const void *w, void *out);
/* out[r, c] += weight * (sum_i at[i, r] bt[i, c])^2 for at [inner, rows],
 * bt [inner, cols], out [rows, cols], row-major with row strides lda, ldb,
 * ldo: the squares of a product added up without storing it, one thread
 * (register tiles, ops_tiles.c). scratch holds cpk__sq_product_scratch
 * (inner) bytes. Returns 1 when done, 0 when it declines (off the CPU, or
 * a CPU with neither AVX-512 nor AVX2 with FMA): then nothing is written.
 * With rows 0 it only says whether it would decline. */
int cpk__sq_product_add(const cpk_context *ctx, cpk_dtype dt, int64_t rows,
                        int64_t inner, int64_t cols, const void *at,
                        int64_t lda, const void *bt, int64_t ldb,
                        double weight, void *out, int64_t ldo, void *scratch);
size_t cpk__sq_product_scratch(int64_t inner);
/* dst [cols, rows] := src [rows, cols]^T on the host, in register
 * transposes (ops_tiles.c); returns 0 without writing on CPUs where
 * cpk__sq_product_add declines, 1 when done (with rows and cols 0, only
 * whether it would run). */
int cpk__transpose_tiles(cpk_dtype dt, int64_t rows, int64_t cols,
                         const void *src, void *dst);

/* For tests: the widest instruction set the kernels of ops_tiles.c may use
 * (2 AVX-512, 1 AVX2 with FMA, 0 none: they decline), within the CPU's. */
void cpk__tiles_cap_isa(int cap);

/* Symmetric rank-k update, C [n, n] := alpha op(A) op(A)^T + beta C, with
 * op(A) = A [n, k] (trans 0) or A^T for A [k, n] (trans 1); all of C is
 * written (a nonzero beta needs C symmetric). On the CPU the upper
 * triangle is computed (BLAS syrk split over k, or GEMMs on row panels where
 * k < n/2), then mirrored; for small C with few products per entry, and on
 * the GPU, the GEMM's full square. */
void cpk__syrk(const cpk_context *ctx, cpk_dtype dt, int trans, int64_t n,
               int64_t k, double alpha, const void *a, int64_t lda, double beta,
               void *c, int64_t ldc);

/* C [n, n] := A^T B for A, B [k, n] (row strides lda, ldb) whose product
 * the caller knows to be symmetric (W^T (M W) with M symmetric): on the
 * CPU from n = 256, only row panels on and above the diagonal are
 * multiplied and the rest mirrored. */
void cpk__gemm_tn_symmetric(const cpk_context *ctx, cpk_dtype dt, int64_t n,
                            int64_t k, const void *a, int64_t lda,
                            const void *b, int64_t ldb, void *c, int64_t ldc);

/* y[i, j] := x[i, j] for i < rows, j < cols, rows at strides ldx and ldy
 * (elements). */
void cpk__copy_2d(const cpk_context *ctx, cpk_dtype dt, int64_t rows,
                  int64_t cols, const void *x, int64_t ldx, void *y,
                  int64_t ldy);

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

/* The biased variance from the moments over n samples:
 *   out[i] := (sgs[i] - grad[i]^2 / n) / n   (= sgs/n - (grad/n)^2). */
void cpk__variance_of(const cpk_context *ctx, cpk_dtype dt, int64_t k,
                      double n, const void *sgs, const void *grad, void *out);

/* Outer products per sample and column: out[c, j] := a[c, j] b[j]^T for
 * a [V, N, M], b [N, K], out [V, N, M, K] (per-sample gradients of a
 * linear weight). */
void cpk__outer_batch(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                      int64_t n, int64_t m, int64_t k, const void *a,
                      const void *b, void *out);

/* Weighted squares of the rows of a block x [V, N, K]:
 *   y[j, :] += sum_c w[c * w_stride + j] * x[c, j, :]^2   (collapse = 0,
 *   y [N, K]), or y[:] += sum_{c,j} (the same) (collapse = 1, y [K]);
 * w NULL means all weights 1. */
void cpk__sq_accumulate(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                        int64_t n, int64_t k, const void *x, const void *w,
                        int64_t w_stride, int collapse, void *y);

/* Squared norms of the rows of a [rows, cols] matrix:
 * out[r] := beta * out[r] + sum_j x[r, j]^2. */
void cpk__row_sq_norms(const cpk_context *ctx, cpk_dtype dt, int64_t rows,
                       int64_t cols, const void *x, double beta, void *out);

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
/* out[i] := f'(x[i]) * in[i] for i < n (y = f(x)): the transposed Jacobian
 * of an activation applied to one column without keeping f'. */
void cpk__act_d1_mul(const cpk_context *ctx, cpk_dtype dt, cpk__act act,
                     double param, int64_t n, const void *x, const void *y,
                     const void *in, void *out);

/* ------------------------------------------- convolution unfolding (im2col)
 * One image x has C channels over a D-d grid (D <= 3), [C, *in]; a
 * convolution with kernel K, stride s, leading padding p and dilation d
 * reads, at output position o and kernel offset k, the input position
 *   i = o*s - p + k*d   (per axis; outside [0, in) it reads zero).
 * The geometry is kept 3-d: a D-d one fills the leading 3-D axes with
 * in = out = k = s = d = 1, p = 0. A group of a grouped convolution is a
 * contiguous range of channels: pass the channel count of the group and the
 * pointers of its first channel. */
typedef struct cpk__im2col_geom {
  int64_t channels;
  int64_t in[3];  /* input grid */
  int64_t out[3]; /* output grid */
  int64_t k[3], stride[3], pad[3], dil[3];
} cpk__im2col_geom;

/* For each of `count` images (x [count, C, *in], cols [count, C*prod(k),
 * prod(out)], rows ordered (c, k0, k1, k2), columns (o0, o1, o2)):
 *   cols[c, k, o] := x[c, o*s - p + k*d]   (0 outside the input). */
void cpk__im2col(const cpk_context *ctx, cpk_dtype dt,
                 const cpk__im2col_geom *g, int64_t count, const void *x,
                 void *cols);
/* The adjoint of cpk__im2col, accumulated:
 *   x[c, i] := beta*x[c, i] + sum_{k, o : o*s - p + k*d = i} cols[c, k, o]. */
void cpk__col2im(const cpk_context *ctx, cpk_dtype dt,
                 const cpk__im2col_geom *g, int64_t count, const void *cols,
                 double beta, void *x);
/* The unfolding of a transposed convolution's input, which lives on the
 * output grid of g: y [count, C, *out] -> cols [count, C*prod(k), prod(in)],
 *   cols[c, k, i] := y[c, o] where o*s - p + k*d = i   (0 where no o is). */
void cpk__im2col_transposed(const cpk_context *ctx, cpk_dtype dt,
                            const cpk__im2col_geom *g, int64_t count,
                            const void *y, void *cols);
/* Per-channel bias over `count` images of C channels and M positions:
 *   y[n, c, m] := beta*y[n, c, m] + b[c]. */
void cpk__channel_bias(const cpk_context *ctx, cpk_dtype dt, int64_t count,
                       int64_t channels, int64_t m, const void *b, double beta,
                       void *y);
/* Its adjoint, the per-channel sum over images and positions:
 *   out[c] := beta*out[c] + sum_{n < count, m} y[n, c, m]. */
void cpk__channel_sum(const cpk_context *ctx, cpk_dtype dt, int64_t count,
                      int64_t channels, int64_t m, const void *y, double beta,
                      void *out);

#endif /* CPK_OPS_H */
