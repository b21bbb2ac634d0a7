// ops_cuda.cu: the CUDA twins of the device operations (gpu_ops.h, with the
// meaning of lib/ops.h): cuBLAS for matrix products, kernels templated on
// float/double for the rest, all queued on the handle's stream. Each result
// equals the CPU reference (lib/ops_cpu.c and the kernels it includes) up to
// rounding; the reductions are deterministic (a fixed summation order that
// depends only on the shapes, no floating-point atomics).
//
// Products that feed a sum are rounded explicitly (mul below) so that the
// compiler does not contract them into FMAs: the kernels then round like the
// CPU reference built for plain x86-64. (The activation formulas, shared
// with the CPU, are compiled as written: there nvcc may fuse, which moves
// results by about an ulp, as the device's math functions do.)
#include <cmath>
#include <cstdint>

#include "kernels_cuda.cuh"

using cpk_cuda::blocks_for;
using cpk_cuda::by_type;
using cpk_cuda::check;
using cpk_cuda::check_blas;
using cpk_cuda::check_launch;
using cpk_cuda::enter;
using cpk_cuda::kMaxBlocks;
using cpk_cuda::kThreads;
using cpk_cuda::launch;

// ------------------------------------------------------- activation formulas
// The scalar formulas of lib/kernels/activation_math.h, compiled as device
// functions (act_f_f32, act_d1_f64, ...): the header is written for C with
// `static inline` functions and includes nothing, so it is included here
// with `inline` standing for `__device__ inline` (after every system header,
// undone right after).
namespace cpk_act {
#define inline __device__ inline
#define CPK_T float
#define CPK_FN(name) name##f
#define CPK_K(name) name##_f32
#include "kernels/activation_math.h"
#undef CPK_T
#undef CPK_FN
#undef CPK_K
#undef CPK_SELU_SCALE
#undef CPK_SELU_ALPHA
#define CPK_T double
#define CPK_FN(name) name
#define CPK_K(name) name##_f64
#include "kernels/activation_math.h"
#undef CPK_T
#undef CPK_FN
#undef CPK_K
#undef CPK_SELU_SCALE
#undef CPK_SELU_ALPHA
#undef inline

// f^(order)(x) of either type (y = f(x), read by the derivatives).
__device__ inline float eval(cpk__act act, float a, cpk__act_order order,
                             float x, float y) {
  return order == CPK__ACT_F    ? act_f_f32(act, a, x)
         : order == CPK__ACT_D1 ? act_d1_f32(act, a, x, y)
                                : act_d2_f32(act, a, x, y);
}
__device__ inline double eval(cpk__act act, double a, cpk__act_order order,
                              double x, double y) {
  return order == CPK__ACT_F    ? act_f_f64(act, a, x)
         : order == CPK__ACT_D1 ? act_d1_f64(act, a, x, y)
                                : act_d2_f64(act, a, x, y);
}
} // namespace cpk_act

namespace {

// --------------------------------------------------------------- helpers

// a*b rounded on its own (never fused with a following add).
__device__ inline float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double mul(double a, double b) { return __dmul_rn(a, b); }

// How an accumulated output treats its old value (from the double beta,
// decided on the host as the CPU does): overwritten (beta == 0, so a NaN
// there does not survive), kept (beta == 1) or scaled.
enum Keep { kZero, kKeep, kScale };
inline Keep keep_of(double beta) {
  return beta == 0 ? kZero : beta == 1 ? kKeep : kScale;
}
template <typename T> __device__ inline T keep(Keep k, T beta, T old) {
  return k == kZero ? T(0) : k == kKeep ? old : mul(beta, old);
}

// Position (c0, c1, c2) of flat offset e in a C-ordered [n0, n1, n2] grid
// (n0 is implied).
__device__ inline void split3(int64_t e, const int64_t *n, int64_t *c) {
  c[2] = e % n[2];
  e /= n[2];
  c[1] = e % n[1];
  c[0] = e / n[1];
}

// ------------------------------------------------------------ reductions
// Two deterministic schemes, picked by shape only:
//  - one thread per output summing its terms in order (the CPU's order),
//    when there are many outputs or few terms each;
//  - otherwise several threads per output, each summing a strided subset
//    in order, their partial sums then combined in a fixed order.

// Split the rows of a column sum this many ways (blockDim.y).
constexpr int kLanes = 8;
// Thresholds of the choice between the schemes.
constexpr int64_t kFewTerms = 128;
constexpr int64_t kManyOutputs = 65536;

// Column sums: for nb blocks of [rows, cols] terms f.term(b, r, j), output
// (b, j) is f.store(b, j, f.init(b, j) + sum_r term). One thread per
// output, rows in order.
template <typename T, typename F>
__global__ void k_column_sums_seq(int64_t nb, int64_t rows, int64_t cols,
                                  F f) {
  CPK_CUDA_FOR(e, nb * cols) {
    const int64_t b = e / cols, j = e % cols;
    T s = f.init(b, j);
    for (int64_t r = 0; r < rows; r++)
      s += f.term(b, r, j);
    f.store(b, j, s);
  }
}

// The same with a block per tile of 32 columns of one block b: thread
// (x, y) sums rows y, y + kLanes, ... of column x in order; the partial sums
// are added to init in lane order.
template <typename T, typename F>
__global__ void k_column_sums_tiled(int64_t nb, int64_t rows, int64_t cols,
                                    F f) {
  __shared__ T part[kLanes][32];
  const int64_t tiles = (cols + 31) / 32;
  for (int64_t t = blockIdx.x; t < nb * tiles; t += gridDim.x) {
    const int64_t b = t / tiles, j = (t % tiles) * 32 + threadIdx.x;
    T s = 0;
    if (j < cols)
      for (int64_t r = threadIdx.y; r < rows; r += kLanes)
        s += f.term(b, r, j);
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < cols) {
      T tot = f.init(b, j);
      for (int l = 0; l < kLanes; l++)
        tot += part[l][threadIdx.x];
      f.store(b, j, tot);
    }
    __syncthreads();
  }
}

template <typename T, typename F>
void column_sums(cpk__gpu *g, const char *name, int64_t nb, int64_t rows,
                 int64_t cols, F f) {
  if (nb <= 0 || cols <= 0)
    return;
  if (rows <= kFewTerms || nb * cols >= kManyOutputs) {
    launch(g, name, nb * cols, k_column_sums_seq<T, F>, nb, rows, cols, f);
    return;
  }
  const int64_t tiles = nb * ((cols + 31) / 32);
  k_column_sums_tiled<T, F>
      <<<(unsigned)(tiles < kMaxBlocks ? tiles : kMaxBlocks), dim3(32, kLanes),
         0, g->stream>>>(nb, rows, cols, f);
  check_launch(g, name);
}

// Row sums: output r < outs is f.store(r, sum_{e < len} f.term(r, e)),
// accumulated in Acc. One thread per output, terms in order.
template <typename Acc, typename F>
__global__ void k_row_sums_seq(int64_t outs, int64_t len, F f) {
  CPK_CUDA_FOR(r, outs) {
    Acc s = 0;
    for (int64_t e = 0; e < len; e++)
      s += f.term(r, e);
    f.store(r, s);
  }
}

// The same with a block per output: thread t sums terms t, t + kThreads,
// ... in order, then a fixed tree combines the kThreads partial sums.
template <typename Acc, typename F>
__global__ void k_row_sums_block(int64_t outs, int64_t len, F f) {
  __shared__ Acc part[kThreads];
  for (int64_t r = blockIdx.x; r < outs; r += gridDim.x) {
    Acc s = 0;
    for (int64_t e = threadIdx.x; e < len; e += kThreads)
      s += f.term(r, e);
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w /= 2) {
      if ((int)threadIdx.x < w)
        part[threadIdx.x] += part[threadIdx.x + w];
      __syncthreads();
    }
    if (threadIdx.x == 0)
      f.store(r, part[0]);
    __syncthreads();
  }
}

template <typename Acc, typename F>
void row_sums(cpk__gpu *g, const char *name, int64_t outs, int64_t len, F f) {
  if (outs <= 0)
    return;
  if (len <= kFewTerms) {
    launch(g, name, outs, k_row_sums_seq<Acc, F>, outs, len, f);
    return;
  }
  k_row_sums_block<Acc, F>
      <<<(unsigned)(outs < kMaxBlocks ? outs : kMaxBlocks), kThreads, 0,
         g->stream>>>(outs, len, f);
  check_launch(g, name);
}

// sum_rows: term x[b, r, j]; out[b, j] := keep(beta) + sum.
template <typename T> struct SumRows {
  const T *x;
  T *out;
  int64_t rows, cols;
  Keep k;
  T beta;
  __device__ T init(int64_t b, int64_t j) const {
    return keep(k, beta, out[b * cols + j]);
  }
  __device__ T term(int64_t b, int64_t r, int64_t j) const {
    return x[(b * rows + r) * cols + j];
  }
  __device__ void store(int64_t b, int64_t j, T s) const {
    out[b * cols + j] = s;
  }
};

// sq_accumulate, collapse = 1: rows r = c*n + j of x [V*N, K], term
// w[c*ws + j] * x[r, i]^2 (w NULL: x^2); y[i] += sum.
template <typename T> struct SqCollapse {
  const T *x, *w;
  T *y;
  int64_t n, k, ws;
  __device__ T init(int64_t, int64_t) const { return 0; }
  __device__ T term(int64_t, int64_t r, int64_t i) const {
    const T e = x[r * k + i];
    return w ? mul(mul(w[(r / n) * ws + r % n], e), e) : mul(e, e);
  }
  __device__ void store(int64_t, int64_t i, T s) const { y[i] += s; }
};

// channel_sum: output c, terms y[q, c, i] for q < count, i < m (term
// e = q*m + i); out[c] := beta*out[c] + sum (beta == 0: the sum).
template <typename T> struct ChannelSum {
  const T *y;
  T *out;
  int64_t channels, m;
  Keep k;
  T beta;
  __device__ T term(int64_t c, int64_t e) const {
    return y[((e / m) * channels + c) * m + e % m];
  }
  __device__ void store(int64_t c, T s) const {
    out[c] = k == kZero ? s : mul(beta, out[c]) + s;
  }
};

// row_sq_norms: terms x[r, j]^2 summed in double for both types (as the CPU
// does); out[r] := beta*out[r] + sum computed in double, then rounded to T.
template <typename T> struct RowSqNorms {
  const T *x;
  T *out;
  int64_t cols;
  Keep k;
  double beta;
  __device__ double term(int64_t r, int64_t j) const {
    const double v = x[r * cols + j];
    return mul(v, v);
  }
  __device__ void store(int64_t r, double s) const {
    out[r] = (T)(k == kZero ? s : mul(beta, (double)out[r]) + s);
  }
};

// ------------------------------------------------------------- elementwise

// y[i] := alpha x[i] + y[i], i < n.
template <typename T>
__global__ void k_axpy(int64_t n, T alpha, const T *x, T *y) {
  CPK_CUDA_FOR(i, n) y[i] += mul(alpha, x[i]);
}

// x[i] := alpha x[i], i < n.
template <typename T> __global__ void k_scale(int64_t n, T alpha, T *x) {
  CPK_CUDA_FOR(i, n) x[i] *= alpha;
}

// out[i] := a[i] b[i], i < n (out may alias a or b).
template <typename T>
__global__ void k_mul(int64_t n, const T *a, const T *b, T *out) {
  CPK_CUDA_FOR(i, n) out[i] = a[i] * b[i];
}

// out[v, i] := d[i] in[v, i] for [V, M] in/out (in == out allowed).
template <typename T>
__global__ void k_mul_broadcast(int64_t total, int64_t m, const T *d,
                                const T *in, T *out) {
  CPK_CUDA_FOR(e, total) out[e] = d[e % m] * in[e];
}

// out[r, i, e] := a[r, i] b[r mod N, e] for a [V*N, M], b [N, K],
// out [V*N, M, K].
template <typename T>
__global__ void k_outer_batch(int64_t total, int64_t n, int64_t m, int64_t k,
                              const T *a, const T *b, T *out) {
  CPK_CUDA_FOR(idx, total) {
    const int64_t ri = idx / k, e = idx % k;
    out[idx] = a[ri] * b[((ri / m) % n) * k + e];
  }
}

// sq_accumulate, collapse = 0: y[j, i] += w[c*ws + j] x[c, j, i]^2 for
// c = 0, 1, ..., V-1 in turn (the CPU's order), x [V, N, K], y [N, K].
template <typename T>
__global__ void k_sq_rows(int64_t v, int64_t n, int64_t k, const T *x,
                          const T *w, int64_t ws, T *y) {
  CPK_CUDA_FOR(e, n * k) {
    const int64_t j = e / k;
    T acc = y[e];
    for (int64_t c = 0; c < v; c++) {
      const T xe = x[c * n * k + e];
      acc += w ? mul(mul(w[c * ws + j], xe), xe) : mul(xe, xe);
    }
    y[e] = acc;
  }
}

// out[i] := f^(order)(x[i]) (y[i] = f(x[i]) read for the derivatives only).
template <typename T>
__global__ void k_act_eval(cpk__act act, T a, cpk__act_order order, int64_t n,
                           const T *x, const T *y, T *out) {
  CPK_CUDA_FOR(i, n) {
    out[i] = cpk_act::eval(act, a, order, x[i],
                           order == CPK__ACT_F ? T(0) : y[i]);
  }
}

// out[i] := f'(x[i]) * in[i] (y[i] = f(x[i])).
template <typename T>
__global__ void k_act_d1_mul(cpk__act act, T a, int64_t n, const T *x,
                             const T *y, const T *in, T *out) {
  CPK_CUDA_FOR(i, n) {
    out[i] = mul(cpk_act::eval(act, a, CPK__ACT_D1, x[i], y[i]), in[i]);
  }
}

// y[i] := x[i] converted (f32 -> f64 or f64 -> f32, rounding to nearest).
template <typename From, typename To>
__global__ void k_convert(int64_t n, const From *x, To *y) {
  CPK_CUDA_FOR(i, n) y[i] = (To)x[i];
}

// ----------------------------------------------------------- convolutions
// The index map of lib/ops.h: output position o and kernel offset k read
// input position i = o*s - p + k*d per axis. Geometry is 3-d; images and
// channels j < count*C are consecutive planes.

// Input position of (o, k) along axis a; false when outside [0, in).
__device__ inline bool tap(const cpk__im2col_geom &g, int a, int64_t o,
                           int64_t k, int64_t *i) {
  *i = o * g.stride[a] - g.pad[a] + k * g.dil[a];
  return *i >= 0 && *i < g.in[a];
}

// Output position o with o*s - p + k*d = i along axis a, if there is one in
// [0, out).
__device__ inline bool source(const cpk__im2col_geom &g, int a, int64_t i,
                              int64_t k, int64_t *o) {
  const int64_t t = i + g.pad[a] - k * g.dil[a];
  if (t < 0 || t % g.stride[a] != 0)
    return false;
  *o = t / g.stride[a];
  return *o < g.out[a];
}

// cols [count*C, prod(k), prod(out)]:
//   cols[j, (k0, k1, k2), (o0, o1, o2)] := x[j, i0, i1, i2] (0 outside).
template <typename T>
__global__ void k_im2col(cpk__im2col_geom g, int64_t total, int64_t kv,
                         int64_t lin, int64_t lout, const T *x, T *cols) {
  CPK_CUDA_FOR(e, total) {
    const int64_t q = e / lout, j = q / kv;
    int64_t o[3], k[3], i[3];
    split3(e % lout, g.out, o);
    split3(q % kv, g.k, k);
    const bool in = tap(g, 0, o[0], k[0], &i[0]) &&
                    tap(g, 1, o[1], k[1], &i[1]) &&
                    tap(g, 2, o[2], k[2], &i[2]);
    cols[e] = in ? x[j * lin + (i[0] * g.in[1] + i[1]) * g.in[2] + i[2]] : T(0);
  }
}

// The adjoint, as a gather (one thread per x element, no atomics):
//   x[j, i] := keep(beta) + sum over kernel offsets k in C order of
//              cols[j, k, o] for the o (if any) with o*s - p + k*d = i,
// the order in which the CPU adds them.
template <typename T>
__global__ void k_col2im(cpk__im2col_geom g, int64_t total, int64_t kv,
                         int64_t lin, int64_t lout, const T *cols, Keep kp,
                         T beta, T *x) {
  CPK_CUDA_FOR(e, total) {
    const int64_t j = e / lin;
    int64_t i[3], o[3];
    split3(e % lin, g.in, i);
    const T *cj = cols + j * kv * lout;
    T acc = keep(kp, beta, x[e]);
    for (int64_t k0 = 0; k0 < g.k[0]; k0++) {
      if (!source(g, 0, i[0], k0, &o[0]))
        continue;
      for (int64_t k1 = 0; k1 < g.k[1]; k1++) {
        if (!source(g, 1, i[1], k1, &o[1]))
          continue;
        for (int64_t k2 = 0; k2 < g.k[2]; k2++) {
          if (!source(g, 2, i[2], k2, &o[2]))
            continue;
          const int64_t row = (k0 * g.k[1] + k1) * g.k[2] + k2;
          acc += cj[row * lout + (o[0] * g.out[1] + o[1]) * g.out[2] + o[2]];
        }
      }
    }
    x[e] = acc;
  }
}

// y [count*C, prod(out)] -> cols [count*C, prod(k), prod(in)]:
//   cols[j, k, i] := y[j, o] with o*s - p + k*d = i (0 where no o is).
template <typename T>
__global__ void k_im2col_transposed(cpk__im2col_geom g, int64_t total,
                                    int64_t kv, int64_t lin, int64_t lout,
                                    const T *y, T *cols) {
  CPK_CUDA_FOR(e, total) {
    const int64_t q = e / lin, j = q / kv;
    int64_t i[3], k[3], o[3];
    split3(e % lin, g.in, i);
    split3(q % kv, g.k, k);
    const bool hit = source(g, 0, i[0], k[0], &o[0]) &&
                     source(g, 1, i[1], k[1], &o[1]) &&
                     source(g, 2, i[2], k[2], &o[2]);
    cols[e] =
        hit ? y[j * lout + (o[0] * g.out[1] + o[1]) * g.out[2] + o[2]] : T(0);
  }
}

// y[q, c, i] := keep(beta) + b[c], y [count, C, M].
template <typename T>
__global__ void k_channel_bias(int64_t total, int64_t channels, int64_t m,
                               const T *b, Keep kp, T beta, T *y) {
  CPK_CUDA_FOR(e, total) {
    const T bc = b[(e / m) % channels];
    y[e] = kp == kZero ? bc : mul(beta, y[e]) + bc;
  }
}

// ---------------------------------------------------------------- pooling

// Max pooling, one thread per output (plane p, position o): the taps
// i = o*s - p + k*d inside [0, in) per axis, scanned depth, height, width
// in increasing order; y := the first maximum (a NaN wins, and a later NaN
// wins over an earlier one, as in lib/kernels/pool.inc), idx := its offset
// in the plane; the first tap when every value is -inf; -inf and -1 when
// the window holds no input position.
template <typename T>
__global__ void k_pool_max(cpk__im2col_geom g, int64_t total, int64_t lin,
                           int64_t lout, const T *x, T *y, int32_t *idx) {
  CPK_CUDA_FOR(e, total) {
    const T *xp = x + (e / lout) * lin;
    int64_t o[3], first[3], count[3];
    split3(e % lout, g.out, o);
    for (int a = 0; a < 3; a++) {
      // Taps start + t*d for t < k, clipped to [0, in) (pool_common.c).
      const int64_t d = g.dil[a], start = o[a] * g.stride[a] - g.pad[a];
      int64_t end = start + d * (g.k[a] - 1) + 1;
      end = end < g.in[a] ? end : g.in[a];
      first[a] = start < 0 ? start + (-start + d - 1) / d * d : start;
      count[a] = first[a] < end ? (end - 1 - first[a]) / d + 1 : 0;
    }
    T best = -INFINITY;
    int64_t at = count[0] * count[1] * count[2] > 0
                     ? (first[0] * g.in[1] + first[1]) * g.in[2] + first[2]
                     : -1;
    for (int64_t a = 0; a < count[0]; a++)
      for (int64_t b = 0; b < count[1]; b++) {
        const int64_t row = ((first[0] + a * g.dil[0]) * g.in[1] + first[1] +
                             b * g.dil[1]) *
                                g.in[2] +
                            first[2];
        for (int64_t c = 0; c < count[2]; c++) {
          const T v = xp[row + c * g.dil[2]];
          if (v > best || v != v) {
            best = v;
            at = row + c * g.dil[2];
          }
        }
      }
    y[e] = best;
    idx[e] = (int32_t)at;
  }
}

// out[p, o] := ix[o] >= 0 ? in[p, ix[o]] : 0 with ix = idx + (p mod ip) *
// out_plane; in [planes, in_plane], out [planes, out_plane].
template <typename T>
__global__ void k_pool_gather(int64_t total, int64_t ip, int64_t in_plane,
                              int64_t out_plane, const int32_t *idx,
                              const T *in, T *out) {
  CPK_CUDA_FOR(e, total) {
    const int64_t p = e / out_plane, o = e % out_plane;
    const int32_t i = idx[(p % ip) * out_plane + o];
    out[e] = i >= 0 ? in[p * in_plane + i] : T(0);
  }
}

// out[p, ix[o]] += in[p, o] for o = 0, 1, ... in turn, one thread per plane
// (out zeroed before): several outputs may select one input, and adding in
// the order of o keeps the sums deterministic and equal to the CPU's.
template <typename T>
__global__ void k_pool_scatter(int64_t planes, int64_t ip, int64_t in_plane,
                               int64_t out_plane, const int32_t *idx,
                               const T *in, T *out) {
  CPK_CUDA_FOR(p, planes) {
    const int32_t *ix = idx + (p % ip) * out_plane;
    const T *src = in + p * out_plane;
    T *dst = out + p * in_plane;
    for (int64_t o = 0; o < out_plane; o++)
      if (ix[o] >= 0)
        dst[ix[o]] += src[o];
  }
}

// ------------------------------------------------------------------ cuBLAS

inline cublasOperation_t op(int trans) { return trans ? CUBLAS_OP_T : CUBLAS_OP_N; }

// Row-major C = alpha op(A) op(B) + beta C is column-major
// C^T = alpha op(B)^T op(A)^T + beta C^T: B and A swap, m and n swap, the
// operations stay.
template <typename T>
void gemm(cpk__gpu *g, int trans_a, int trans_b, int64_t m, int64_t n,
          int64_t k, double alpha, const T *a, int64_t lda, const T *b,
          int64_t ldb, double beta, T *c, int64_t ldc) {
  const T al = (T)alpha, be = (T)beta;
  if constexpr (sizeof(T) == sizeof(float))
    check_blas(g,
               cublasSgemm_64(g->blas, op(trans_b), op(trans_a), n, m, k, &al,
                              b, ldb, a, lda, &be, c, ldc),
               "cublasSgemm");
  else
    check_blas(g,
               cublasDgemm_64(g->blas, op(trans_b), op(trans_a), n, m, k, &al,
                              b, ldb, a, lda, &be, c, ldc),
               "cublasDgemm");
}

template <typename T>
void gemm_strided(cpk__gpu *g, int trans_a, int trans_b, int64_t m,
                  int64_t n, int64_t k, double alpha, const T *a, int64_t lda,
                  int64_t stride_a, const T *b, int64_t ldb, int64_t stride_b,
                  double beta, T *c, int64_t ldc, int64_t stride_c,
                  int64_t count) {
  if (stride_c == 0 && count > 1) {
    // Every product updates the same C: one after the other, as the CPU.
    for (int64_t i = 0; i < count; i++)
      gemm(g, trans_a, trans_b, m, n, k, alpha, a + i * stride_a, lda,
           b + i * stride_b, ldb, beta, c, ldc);
    return;
  }
  const T al = (T)alpha, be = (T)beta;
  if constexpr (sizeof(T) == sizeof(float))
    check_blas(g,
               cublasSgemmStridedBatched_64(
                   g->blas, op(trans_b), op(trans_a), n, m, k, &al, b, ldb,
                   stride_b, a, lda, stride_a, &be, c, ldc, stride_c, count),
               "cublasSgemmStridedBatched");
  else
    check_blas(g,
               cublasDgemmStridedBatched_64(
                   g->blas, op(trans_b), op(trans_a), n, m, k, &al, b, ldb,
                   stride_b, a, lda, stride_a, &be, c, ldc, stride_c, count),
               "cublasDgemmStridedBatched");
}

// The element counts of a geometry: prod(k), prod(in), prod(out).
int64_t kvol(const cpk__im2col_geom *g) { return g->k[0] * g->k[1] * g->k[2]; }
int64_t lin_of(const cpk__im2col_geom *g) {
  return g->in[0] * g->in[1] * g->in[2];
}
int64_t lout_of(const cpk__im2col_geom *g) {
  return g->out[0] * g->out[1] * g->out[2];
}

} // namespace

// ---------------------------------------------------------- C entry points

extern "C" void cpk__cuda_gemm(cpk__gpu *g, int f64, int trans_a, int trans_b,
                               int64_t m, int64_t n, int64_t k, double alpha,
                               const void *a, int64_t lda, const void *b,
                               int64_t ldb, double beta, void *c,
                               int64_t ldc) {
  if (m == 0 || n == 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    gemm<T>(g, trans_a, trans_b, m, n, k, alpha, (const T *)a, lda,
            (const T *)b, ldb, beta, (T *)c, ldc);
  });
}

extern "C" void cpk__cuda_gemm_strided(
    cpk__gpu *g, int f64, int trans_a, int trans_b, int64_t m, int64_t n,
    int64_t k, double alpha, const void *a, int64_t lda, int64_t stride_a,
    const void *b, int64_t ldb, int64_t stride_b, double beta, void *c,
    int64_t ldc, int64_t stride_c, int64_t count) {
  if (m == 0 || n == 0 || count <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    gemm_strided<T>(g, trans_a, trans_b, m, n, k, alpha, (const T *)a, lda,
                    stride_a, (const T *)b, ldb, stride_b, beta, (T *)c, ldc,
                    stride_c, count);
  });
}

extern "C" void cpk__cuda_copy(cpk__gpu *g, int f64, int64_t n, const void *x,
                               void *y) {
  if (n <= 0 || x == y || !enter(g))
    return;
  const size_t bytes = (size_t)n * (f64 ? sizeof(double) : sizeof(float));
  check(g, cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice, g->stream),
        "cudaMemcpyAsync (copy)");
}

extern "C" void cpk__cuda_copy_2d(cpk__gpu *g, int f64, int64_t rows,
                                  int64_t cols, const void *x, int64_t ldx,
                                  void *y, int64_t ldy) {
  if (rows <= 0 || cols <= 0 || !enter(g))
    return;
  const size_t es = f64 ? sizeof(double) : sizeof(float);
  check(g,
        cudaMemcpy2DAsync(y, (size_t)ldy * es, x, (size_t)ldx * es,
                          (size_t)cols * es, (size_t)rows,
                          cudaMemcpyDeviceToDevice, g->stream),
        "cudaMemcpy2DAsync (copy_2d)");
}

extern "C" void cpk__cuda_axpy(cpk__gpu *g, int f64, int64_t n, double alpha,
                               const void *x, void *y) {
  if (n <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "axpy", n, k_axpy<T>, n, (T)alpha, (const T *)x, (T *)y);
  });
}

extern "C" void cpk__cuda_scale(cpk__gpu *g, int f64, int64_t n, double alpha,
                                void *x) {
  if (n <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "scale", n, k_scale<T>, n, (T)alpha, (T *)x);
  });
}

extern "C" void cpk__cuda_sum_rows(cpk__gpu *g, int f64, int64_t blocks,
                                   int64_t rows, int64_t cols, const void *x,
                                   double beta, void *out) {
  if (blocks <= 0 || cols <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    column_sums<T>(g, "sum_rows", blocks, rows, cols,
                   SumRows<T>{(const T *)x, (T *)out, rows, cols,
                              keep_of(beta), (T)beta});
  });
}

extern "C" void cpk__cuda_mul_broadcast(cpk__gpu *g, int f64, int64_t v,
                                        int64_t m, const void *d,
                                        const void *in, void *out) {
  if (v <= 0 || m <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "mul_broadcast", v * m, k_mul_broadcast<T>, v * m, m,
           (const T *)d, (const T *)in, (T *)out);
  });
}

extern "C" void cpk__cuda_outer_batch(cpk__gpu *g, int f64, int64_t v,
                                      int64_t n, int64_t m, int64_t k,
                                      const void *a, const void *b,
                                      void *out) {
  const int64_t total = v * n * m * k;
  if (total <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "outer_batch", total, k_outer_batch<T>, total, n, m, k,
           (const T *)a, (const T *)b, (T *)out);
  });
}

extern "C" void cpk__cuda_sq_accumulate(cpk__gpu *g, int f64, int64_t v,
                                        int64_t n, int64_t k, const void *x,
                                        const void *w, int64_t w_stride,
                                        int collapse, void *y) {
  if (k <= 0 || (!collapse && n <= 0) || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    if (collapse)
      column_sums<T>(g, "sq_accumulate", 1, v * n, k,
                     SqCollapse<T>{(const T *)x, (const T *)w, (T *)y, n, k,
                                   w_stride});
    else
      launch(g, "sq_accumulate", n * k, k_sq_rows<T>, v, n, k, (const T *)x,
             (const T *)w, w_stride, (T *)y);
  });
}

extern "C" void cpk__cuda_act_eval(cpk__gpu *g, int f64, cpk__act act,
                                   double param, cpk__act_order order,
                                   int64_t n, const void *x, const void *y,
                                   void *out) {
  if (n <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "act_eval", n, k_act_eval<T>, act, (T)param, order, n,
           (const T *)x, (const T *)y, (T *)out);
  });
}

extern "C" void cpk__cuda_act_d1_mul(cpk__gpu *g, int f64, cpk__act act,
                                     double param, int64_t n, const void *x,
                                     const void *y, const void *in,
                                     void *out) {
  if (n <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "act_d1_mul", n, k_act_d1_mul<T>, act, (T)param, n,
           (const T *)x, (const T *)y, (const T *)in, (T *)out);
  });
}

extern "C" void cpk__cuda_im2col(cpk__gpu *g, int f64,
                                 const cpk__im2col_geom *geom, int64_t count,
                                 const void *x, void *cols) {
  const int64_t kv = kvol(geom), lout = lout_of(geom);
  const int64_t total = count * geom->channels * kv * lout;
  if (total <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "im2col", total, k_im2col<T>, *geom, total, kv, lin_of(geom),
           lout, (const T *)x, (T *)cols);
  });
}

extern "C" void cpk__cuda_col2im(cpk__gpu *g, int f64,
                                 const cpk__im2col_geom *geom, int64_t count,
                                 const void *cols, double beta, void *x) {
  const int64_t lin = lin_of(geom);
  const int64_t total = count * geom->channels * lin;
  if (total <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "col2im", total, k_col2im<T>, *geom, total, kvol(geom), lin,
           lout_of(geom), (const T *)cols, keep_of(beta), (T)beta, (T *)x);
  });
}

extern "C" void cpk__cuda_im2col_transposed(cpk__gpu *g, int f64,
                                            const cpk__im2col_geom *geom,
                                            int64_t count, const void *y,
                                            void *cols) {
  const int64_t kv = kvol(geom), lin = lin_of(geom);
  const int64_t total = count * geom->channels * kv * lin;
  if (total <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "im2col_transposed", total, k_im2col_transposed<T>, *geom,
           total, kv, lin, lout_of(geom), (const T *)y, (T *)cols);
  });
}

extern "C" void cpk__cuda_channel_bias(cpk__gpu *g, int f64, int64_t count,
                                       int64_t channels, int64_t m,
                                       const void *b, double beta, void *y) {
  const int64_t total = count * channels * m;
  if (total <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "channel_bias", total, k_channel_bias<T>, total, channels, m,
           (const T *)b, keep_of(beta), (T)beta, (T *)y);
  });
}

extern "C" void cpk__cuda_channel_sum(cpk__gpu *g, int f64, int64_t count,
                                      int64_t channels, int64_t m,
                                      const void *y, double beta, void *out) {
  if (channels <= 0 || !enter(g))
    return;
  const int64_t len = count > 0 && m > 0 ? count * m : 0;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    row_sums<T>(g, "channel_sum", channels, len,
                ChannelSum<T>{(const T *)y, (T *)out, channels, m,
                              keep_of(beta), (T)beta});
  });
}

extern "C" void cpk__cuda_mul(cpk__gpu *g, int f64, int64_t n, const void *a,
                              const void *b, void *out) {
  if (n <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "mul", n, k_mul<T>, n, (const T *)a, (const T *)b, (T *)out);
  });
}

extern "C" void cpk__cuda_pool_max(cpk__gpu *g, int f64,
                                   const cpk__im2col_geom *geom,
                                   int64_t planes, const void *x, void *y,
                                   int32_t *idx) {
  const int64_t lout = lout_of(geom), total = planes * lout;
  if (total <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "pool_max", total, k_pool_max<T>, *geom, total, lin_of(geom),
           lout, (const T *)x, (T *)y, idx);
  });
}

extern "C" void cpk__cuda_pool_gather(cpk__gpu *g, int f64, int64_t planes,
                                      int64_t ip, int64_t in_plane,
                                      int64_t out_plane, const int32_t *idx,
                                      const void *in, void *out) {
  const int64_t total = planes * out_plane;
  if (total <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "pool_gather", total, k_pool_gather<T>, total, ip, in_plane,
           out_plane, idx, (const T *)in, (T *)out);
  });
}

extern "C" void cpk__cuda_pool_scatter(cpk__gpu *g, int f64, int64_t planes,
                                       int64_t ip, int64_t in_plane,
                                       int64_t out_plane, const int32_t *idx,
                                       const void *in, void *out) {
  if (planes <= 0 || in_plane <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    if (!check(g,
               cudaMemsetAsync(out, 0, (size_t)(planes * in_plane) * sizeof(T),
                               g->stream),
               "cudaMemsetAsync (pool_scatter)"))
      return;
    if (out_plane > 0)
      launch(g, "pool_scatter", planes, k_pool_scatter<T>, planes, ip,
             in_plane, out_plane, idx, (const T *)in, (T *)out);
  });
}

extern "C" void cpk__cuda_row_sq_norms(cpk__gpu *g, int f64, int64_t rows,
                                       int64_t cols, const void *x,
                                       double beta, void *out) {
  if (rows <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    row_sums<double>(g, "row_sq_norms", rows, cols > 0 ? cols : 0,
                     RowSqNorms<T>{(const T *)x, (T *)out, cols,
                                   keep_of(beta), beta});
  });
}

extern "C" void cpk__cuda_convert(cpk__gpu *g, int to_f64, int64_t n,
                                  const void *x, void *y) {
  if (n <= 0 || !enter(g))
    return;
  if (to_f64)
    launch(g, "convert", n, k_convert<float, double>, n, (const float *)x,
           (double *)y);
  else
    launch(g, "convert", n, k_convert<double, float>, n, (const double *)x,
           (float *)y);
}
