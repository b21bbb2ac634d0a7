/*
 * gpu_ops.h: the CUDA side of the device operations (lib/ops.h), callable
 * from C. Each cpk__cuda_<op> has the meaning and argument order of the
 * cpk__<op> of ops.h, with the GPU handle in place of the context and
 * `f64` (0: float32, 1: float64) in place of the dtype. Every pointer is
 * device memory of that handle's device. The operations are queued on the
 * handle's stream and return at once; a CUDA failure is kept in the handle
 * (the first one) and reported by cpk__gpu_sync.
 */
#ifndef CPK_GPU_OPS_H
#define CPK_GPU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h" /* cpk__im2col_geom, cpk__act, cpk__act_order */

#ifdef __cplusplus
extern "C" {
#endif

/* One CUDA device in use: its ordinal, a stream, a cuBLAS handle bound to
 * the stream, a stream-ordered memory pool and the first error seen. */
typedef struct cpk__gpu cpk__gpu;

/* Open device `ordinal`. On failure returns nonzero and writes why. The
 * opener holds the handle (see cpk__gpu_hold). */
int cpk__gpu_open(cpk__gpu **out, int ordinal, char *why, size_t len);
/* Let go of the opener's hold. */
void cpk__gpu_close(cpk__gpu *g);
/* Holds on the handle (thread-safe): a device tensor holds the handle its
 * memory came from, so that the tensor can be freed, or read back, after
 * the context that made it is gone. The handle (stream, cuBLAS handle) is
 * released, after waiting for its stream, when the last hold is let go. */
void cpk__gpu_hold(cpk__gpu *g);
void cpk__gpu_let_go(cpk__gpu *g);
/* Device name ("NVIDIA H100 80GB HBM3"). */
const char *cpk__gpu_name(const cpk__gpu *g);

/* Stream-ordered allocation of `bytes` (0 allowed); NULL on failure, with
 * the reason in why. */
void *cpk__gpu_alloc(cpk__gpu *g, size_t bytes, char *why, size_t len);
void cpk__gpu_free(cpk__gpu *g, void *p);
/* Copies between host and device (or device and device), ordered on the
 * stream; the host side is waited for (synchronous for the caller). */
int cpk__gpu_upload(cpk__gpu *g, void *dst, const void *src, size_t bytes);
int cpk__gpu_download(cpk__gpu *g, void *dst, const void *src, size_t bytes);
void cpk__gpu_copy_d2d(cpk__gpu *g, void *dst, const void *src, size_t bytes);
/* Every byte of p[0, bytes) := value, ordered on the stream. */
void cpk__gpu_fill_bytes(cpk__gpu *g, void *p, int value, size_t bytes);
/* Wait for the stream; 0 when everything queued so far succeeded, else
 * nonzero with the first error's description in why (then cleared). */
int cpk__gpu_sync(cpk__gpu *g, char *why, size_t len);

/* ------------------------------------------------- the operations of ops.h */
void cpk__cuda_gemm(cpk__gpu *g, int f64, int trans_a, int trans_b, int64_t m,
                    int64_t n, int64_t k, double alpha, const void *a,
                    int64_t lda, const void *b, int64_t ldb, double beta,
                    void *c, int64_t ldc);
/* `count` GEMMs of one shape, operand i at a + i*stride_a (elements). */
void cpk__cuda_gemm_strided(cpk__gpu *g, int f64, int trans_a, int trans_b,
                            int64_t m, int64_t n, int64_t k, double alpha,
                            const void *a, int64_t lda, int64_t stride_a,
                            const void *b, int64_t ldb, int64_t stride_b,
                            double beta, void *c, int64_t ldc,
                            int64_t stride_c, int64_t count);
void cpk__cuda_copy(cpk__gpu *g, int f64, int64_t n, const void *x, void *y);
/* y[i, :cols] := x[i, :cols] for i < rows, rows at strides ldx, ldy. */
void cpk__cuda_copy_2d(cpk__gpu *g, int f64, int64_t rows, int64_t cols,
                       const void *x, int64_t ldx, void *y, int64_t ldy);
void cpk__cuda_axpy(cpk__gpu *g, int f64, int64_t n, double alpha,
                    const void *x, void *y);
void cpk__cuda_scale(cpk__gpu *g, int f64, int64_t n, double alpha, void *x);
void cpk__cuda_sum_rows(cpk__gpu *g, int f64, int64_t blocks, int64_t rows,
                        int64_t cols, const void *x, double beta, void *out);
void cpk__cuda_mul_broadcast(cpk__gpu *g, int f64, int64_t v, int64_t m,
                             const void *d, const void *in, void *out);
void cpk__cuda_outer_batch(cpk__gpu *g, int f64, int64_t v, int64_t n,
                           int64_t m, int64_t k, const void *a, const void *b,
                           void *out);
void cpk__cuda_sq_accumulate(cpk__gpu *g, int f64, int64_t v, int64_t n,
                             int64_t k, const void *x, const void *w,
                             int64_t w_stride, int collapse, void *y);
void cpk__cuda_act_eval(cpk__gpu *g, int f64, cpk__act act, double param,
                        cpk__act_order order, int64_t n, const void *x,
                        const void *y, void *out);
void cpk__cuda_act_d1_mul(cpk__gpu *g, int f64, cpk__act act, double param,
                          int64_t n, const void *x, const void *y,
                          const void *in, void *out);
void cpk__cuda_im2col(cpk__gpu *g, int f64, const cpk__im2col_geom *geom,
                      int64_t count, const void *x, void *cols);
void cpk__cuda_col2im(cpk__gpu *g, int f64, const cpk__im2col_geom *geom,
                      int64_t count, const void *cols, double beta, void *x);
void cpk__cuda_im2col_transposed(cpk__gpu *g, int f64,
                                 const cpk__im2col_geom *geom, int64_t count,
                                 const void *y, void *cols);
void cpk__cuda_channel_bias(cpk__gpu *g, int f64, int64_t count,
                            int64_t channels, int64_t m, const void *b,
                            double beta, void *y);
void cpk__cuda_channel_sum(cpk__gpu *g, int f64, int64_t count,
                           int64_t channels, int64_t m, const void *y,
                           double beta, void *out);
/* out[i] := a[i] * b[i], i < n (out may alias a or b). */
void cpk__cuda_mul(cpk__gpu *g, int f64, int64_t n, const void *a,
                   const void *b, void *out);
/* Max pooling over the windows of `geom` (channels = planes, taps outside
 * the input skipped): y[p, o] := max over taps, idx[p, o] := the input
 * offset within the plane of the first maximum in scan order (a NaN wins). */
void cpk__cuda_pool_max(cpk__gpu *g, int f64, const cpk__im2col_geom *geom,
                        int64_t planes, const void *x, void *y, int32_t *idx);
/* Over `planes` planes, plane p using the index plane ix = idx + (p % ip) *
 * out_plane (entries < 0 select nothing):
 *   gather:  out[p, o] := ix[o] >= 0 ? in[p, ix[o]] : 0   (out [planes,
 *            out_plane], in [planes, in_plane]);
 *   scatter: out[p, :] := 0, then out[p, ix[o]] += in[p, o]   (out [planes,
 *            in_plane], in [planes, out_plane]). */
void cpk__cuda_pool_gather(cpk__gpu *g, int f64, int64_t planes,
                           int64_t ip, int64_t in_plane, int64_t out_plane,
                           const int32_t *idx, const void *in, void *out);
void cpk__cuda_pool_scatter(cpk__gpu *g, int f64, int64_t planes,
                            int64_t ip, int64_t in_plane, int64_t out_plane,
                            const int32_t *idx, const void *in, void *out);
/* Per row of a [rows, cols] matrix: out[r] := beta*out[r] + sum_j x[r,j]^2
 * (the squared norms of rows). */
void cpk__cuda_row_sq_norms(cpk__gpu *g, int f64, int64_t rows, int64_t cols,
                            const void *x, double beta, void *out);
/* Convert n elements between float32 and float64 (to_f64: f32 -> f64). */
void cpk__cuda_convert(cpk__gpu *g, int to_f64, int64_t n, const void *x,
                       void *y);

#ifdef __cplusplus
}
#endif
#endif /* CPK_GPU_OPS_H */
