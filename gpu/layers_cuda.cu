// layers_cuda.cu: the CUDA twins of the batch-norm kernels
// (lib/kernels/batchnorm.inc) and of the average-pooling plane kernels
// (lib/kernels/pool.inc), see layers_cuda.h. Element-wise maps run one
// thread per element (grid-stride); the per-channel reductions of batch
// norm run one block per output, its threads summing strided subsets in
// order and the partial sums combined by a fixed tree (deterministic).
// Average pooling sums each window in the CPU's order, and its transpose
// gathers, for each input position, the outputs whose window holds it in
// increasing order: the CPU's order of accumulation, so results agree with
// the CPU to the last bit apart from the device's rounding of divisions.
#include <cstdint>

#include "kernels_cuda.cuh"
#include "layers_cuda.h"

using cpk_cuda::blocks_for;
using cpk_cuda::check_launch;
using cpk_cuda::enter;
using cpk_cuda::kMaxBlocks;
using cpk_cuda::kThreads;

namespace {

// a*b and a-b rounded on their own (never fused into an FMA), so that the
// kernels round like the CPU reference.
__device__ inline double dmul(double a, double b) { return __dmul_rn(a, b); }
__device__ inline double tmul(double a, double b) { return __dmul_rn(a, b); }
__device__ inline float tmul(float a, float b) { return __fmul_rn(a, b); }

// w[c] as a double, 1 when there is no weight (affine=false).
template <typename T> __device__ inline double wval(const T *w, int64_t c) {
  return w != nullptr ? (double)w[c] : 1.0;
}

// x_hat = (x - mu) * is.
__device__ inline double xhat(double x, double mu, double is) {
  return dmul(x - mu, is);
}

// Blocks for `count` block-per-output reductions.
inline unsigned blocks_of(int64_t count) {
  return (unsigned)(count < kMaxBlocks ? count : kMaxBlocks);
}

// Sum a and b over the threads of the block (blockDim.x == kThreads, a
// power of two) by a fixed tree; every thread gets the totals.
__device__ inline void block_sum2(double &a, double &b) {
  __shared__ double sa[kThreads], sb[kThreads];
  const int t = threadIdx.x;
  sa[t] = a;
  sb[t] = b;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) {
      sa[t] += sa[t + s];
      sb[t] += sb[t + s];
    }
    __syncthreads();
  }
  a = sa[0];
  b = sb[0];
  __syncthreads();
}

// ------------------------------------------------------------ batch norm

template <typename T>
__global__ void k_bn_stats(int64_t n, int64_t f, int64_t l, const T *x,
                           double *mean, double *var) {
  const int64_t m = n * l;
  for (int64_t c = blockIdx.x; c < f; c += gridDim.x) {
    double s = 0.0, unused = 0.0;
    for (int64_t e = threadIdx.x; e < m; e += blockDim.x)
      s += (double)x[((e / l) * f + c) * l + e % l];
    block_sum2(s, unused);
    const double mu = s / (double)m;
    double q = 0.0;
    unused = 0.0;
    for (int64_t e = threadIdx.x; e < m; e += blockDim.x) {
      const double d = (double)x[((e / l) * f + c) * l + e % l] - mu;
      q += dmul(d, d);
    }
    block_sum2(q, unused);
    if (threadIdx.x == 0) {
      mean[c] = mu;
      var[c] = q / (double)m;
    }
  }
}

template <typename T>
__global__ void k_bn_forward(int64_t n, int64_t f, int64_t l, const T *x,
                             const double *mean, const double *istd,
                             const T *w, const T *b, T *y) {
  CPK_CUDA_FOR(e, n * f * l) {
    const int64_t c = (e / l) % f;
    const double a = dmul(istd[c], wval(w, c));
    const double b0 = b != nullptr ? (double)b[c] : 0.0;
    y[e] = (T)(dmul((double)x[e] - mean[c], a) + b0);
  }
}

template <typename T>
__global__ void k_bn_scale(int64_t vn, int64_t f, int64_t l, const T *w,
                           const double *istd, const T *in, T *out) {
  CPK_CUDA_FOR(e, vn * f * l) {
    const int64_t c = (e / l) % f;
    const T a = (T)dmul(istd[c], wval(w, c));
    out[e] = tmul(a, in[e]);
  }
}

template <typename T>
__global__ void k_bn_coupled(int64_t v, int64_t n, int64_t f, int64_t l,
                             const T *x, const double *mean,
                             const double *istd, const T *w, const T *in,
                             T *out) {
  const int64_t m = n * l;
  for (int64_t pair = blockIdx.x; pair < v * f; pair += gridDim.x) {
    const int64_t bv = pair / f, c = pair % f;
    const double mu = mean[c], is = istd[c];
    const double a = dmul(is, wval(w, c));
    const T *ib = in + bv * n * f * l;
    T *ob = out + bv * n * f * l;
    double su = 0.0, sux = 0.0;
    for (int64_t e = threadIdx.x; e < m; e += blockDim.x) {
      const int64_t at = ((e / l) * f + c) * l + e % l;
      const double u = (double)ib[at];
      su += u;
      sux += dmul(u, xhat((double)x[at], mu, is));
    }
    block_sum2(su, sux);
    const double mu_u = su / (double)m, mu_ux = sux / (double)m;
    for (int64_t e = threadIdx.x; e < m; e += blockDim.x) {
      const int64_t at = ((e / l) * f + c) * l + e % l;
      const double xh = xhat((double)x[at], mu, is);
      ob[at] = (T)dmul(a, (double)ib[at] - mu_u - dmul(xh, mu_ux));
    }
  }
}

template <typename T>
__global__ void k_bn_param(int64_t v, int64_t n, int64_t f, int64_t l,
                           const T *x, const double *mean, const double *istd,
                           int use_xhat, int per_sample, int keep_old,
                           double beta, const T *in, T *out) {
  const int64_t groups = per_sample ? n : 1, span = per_sample ? 1 : n;
  const int64_t count = v * groups * f, m = span * l;
  for (int64_t o = blockIdx.x; o < count; o += gridDim.x) {
    const int64_t c = o % f, g = (o / f) % groups, bv = o / (f * groups);
    const double mu = mean[c], is = istd[c];
    double s = 0.0, unused = 0.0;
    for (int64_t e = threadIdx.x; e < m; e += blockDim.x) {
      const int64_t j = g * span + e / l, k = e % l;
      const double u = (double)in[((bv * n + j) * f + c) * l + k];
      s += use_xhat ? dmul(u, xhat((double)x[(j * f + c) * l + k], mu, is))
                    : u;
    }
    block_sum2(s, unused);
    if (threadIdx.x == 0)
      out[o] = (T)(keep_old ? dmul(beta, (double)out[o]) + s : s);
  }
}

template <typename T>
__global__ void k_bn_param_fwd(int64_t v, int64_t n, int64_t f, int64_t l,
                               const T *x, const double *mean,
                               const double *istd, int use_xhat, int zero,
                               double beta, const T *t, T *out) {
  CPK_CUDA_FOR(e, v * n * f * l) {
    const int64_t k = e % l, c = (e / l) % f, j = (e / (l * f)) % n,
                  bv = e / (l * f * n);
    const double tc = (double)t[bv * f + c];
    const double d =
        use_xhat ? dmul(tc, xhat((double)x[(j * f + c) * l + k], mean[c],
                                 istd[c]))
                 : tc;
    out[e] = (T)(zero ? d : dmul(beta, (double)out[e]) + d);
  }
}

// ------------------------------------------------------- average pooling

// The per-axis tables of layers_cuda.h.
struct AvgTables {
  const int64_t *first[3], *count[3], *div[3], *olo[3], *ohi[3];
};

inline AvgTables avg_tables(const cpk__cuda_avg_geom *g, const int64_t *t) {
  AvgTables a;
  int64_t off = 0;
  for (int i = 0; i < 3; i++) {
    a.first[i] = t + off;
    a.count[i] = t + off + g->out[i];
    a.div[i] = t + off + 2 * g->out[i];
    off += 3 * g->out[i];
  }
  for (int i = 0; i < 3; i++) {
    a.olo[i] = t + off;
    a.ohi[i] = t + off + g->in[i];
    off += 2 * g->in[i];
  }
  return a;
}

template <typename T>
__device__ inline T avg_div(const cpk__cuda_avg_geom &g, const AvgTables &a,
                            int64_t od, int64_t oh, int64_t ow) {
  if (g.divisor_override != 0)
    return (T)g.divisor_override;
  return (T)(a.div[0][od] * a.div[1][oh] * a.div[2][ow]);
}

template <typename T>
__global__ void k_pool_avg(cpk__cuda_avg_geom g, AvgTables a, int64_t planes,
                           const T *in, T *out) {
  const int64_t hin = g.in[1], win = g.in[2];
  const int64_t in_plane = g.in[0] * hin * win;
  const int64_t out_plane = g.out[0] * g.out[1] * g.out[2];
  CPK_CUDA_FOR(e, planes * out_plane) {
    const int64_t p = e / out_plane, r = e % out_plane;
    const int64_t ow = r % g.out[2], oh = (r / g.out[2]) % g.out[1],
                  od = r / (g.out[2] * g.out[1]);
    const T *xp = in + p * in_plane;
    const int64_t base =
        (a.first[0][od] * hin + a.first[1][oh]) * win + a.first[2][ow];
    const int64_t nd = a.count[0][od], nh = a.count[1][oh],
                  nw = a.count[2][ow];
    T sum = 0;
    for (int64_t i = 0; i < nd; i++)
      for (int64_t j = 0; j < nh; j++) {
        const T *row = xp + base + (i * hin + j) * win;
        for (int64_t k = 0; k < nw; k++)
          sum += row[k];
      }
    out[e] = sum / avg_div<T>(g, a, od, oh, ow);
  }
}

template <typename T>
__global__ void k_pool_avg_t(cpk__cuda_avg_geom g, AvgTables a,
                             int64_t planes, const T *in, T *out) {
  const int64_t in_plane = g.in[0] * g.in[1] * g.in[2];
  const int64_t out_plane = g.out[0] * g.out[1] * g.out[2];
  CPK_CUDA_FOR(e, planes * in_plane) {
    const int64_t p = e / in_plane, r = e % in_plane;
    const int64_t iw = r % g.in[2], ih = (r / g.in[2]) % g.in[1],
                  id = r / (g.in[2] * g.in[1]);
    const T *gp = in + p * out_plane;
    T acc = 0;
    for (int64_t od = a.olo[0][id]; od < a.ohi[0][id]; od++)
      for (int64_t oh = a.olo[1][ih]; oh < a.ohi[1][ih]; oh++)
        for (int64_t ow = a.olo[2][iw]; ow < a.ohi[2][iw]; ow++)
          acc += gp[(od * g.out[1] + oh) * g.out[2] + ow] /
                 avg_div<T>(g, a, od, oh, ow);
    out[e] = acc;
  }
}

} // namespace

// -------------------------------------------------------------- C entries

extern "C" {

void cpk__cuda_bn_stats(cpk__gpu *g, int f64, int64_t n, int64_t f,
                        int64_t l, const void *x, double *mean, double *var) {
  if (f <= 0 || !enter(g))
    return;
  if (f64)
    k_bn_stats<double><<<blocks_of(f), kThreads, 0, g->stream>>>(
        n, f, l, (const double *)x, mean, var);
  else
    k_bn_stats<float><<<blocks_of(f), kThreads, 0, g->stream>>>(
        n, f, l, (const float *)x, mean, var);
  check_launch(g, "bn_stats");
}

void cpk__cuda_bn_forward(cpk__gpu *g, int f64, int64_t n, int64_t f,
                          int64_t l, const void *x, const double *mean,
                          const double *istd, const void *w, const void *b,
                          void *y) {
  const int64_t total = n * f * l;
  if (total <= 0 || !enter(g))
    return;
  if (f64)
    k_bn_forward<double><<<blocks_for(total), kThreads, 0, g->stream>>>(
        n, f, l, (const double *)x, mean, istd, (const double *)w,
        (const double *)b, (double *)y);
  else
    k_bn_forward<float><<<blocks_for(total), kThreads, 0, g->stream>>>(
        n, f, l, (const float *)x, mean, istd, (const float *)w,
        (const float *)b, (float *)y);
  check_launch(g, "bn_forward");
}

void cpk__cuda_bn_scale(cpk__gpu *g, int f64, int64_t vn, int64_t f,
                        int64_t l, const void *w, const double *istd,
                        const void *in, void *out) {
  const int64_t total = vn * f * l;
  if (total <= 0 || !enter(g))
    return;
  if (f64)
    k_bn_scale<double><<<blocks_for(total), kThreads, 0, g->stream>>>(
        vn, f, l, (const double *)w, istd, (const double *)in,
        (double *)out);
  else
    k_bn_scale<float><<<blocks_for(total), kThreads, 0, g->stream>>>(
        vn, f, l, (const float *)w, istd, (const float *)in, (float *)out);
  check_launch(g, "bn_scale");
}

void cpk__cuda_bn_coupled(cpk__gpu *g, int f64, int64_t v, int64_t n,
                          int64_t f, int64_t l, const void *x,
                          const double *mean, const double *istd,
                          const void *w, const void *in, void *out) {
  if (v * f <= 0 || n * l <= 0 || !enter(g))
    return;
  if (f64)
    k_bn_coupled<double><<<blocks_of(v * f), kThreads, 0, g->stream>>>(
        v, n, f, l, (const double *)x, mean, istd, (const double *)w,
        (const double *)in, (double *)out);
  else
    k_bn_coupled<float><<<blocks_of(v * f), kThreads, 0, g->stream>>>(
        v, n, f, l, (const float *)x, mean, istd, (const float *)w,
        (const float *)in, (float *)out);
  check_launch(g, "bn_coupled");
}

void cpk__cuda_bn_param(cpk__gpu *g, int f64, int64_t v, int64_t n, int64_t f,
                        int64_t l, const void *x, const double *mean,
                        const double *istd, int use_xhat, int per_sample,
                        double beta, const void *in, void *out) {
  const int64_t count = v * (per_sample ? n : 1) * f;
  const int keep_old = !per_sample && beta != 0.0;
  if (count <= 0 || !enter(g))
    return;
  if (f64)
    k_bn_param<double><<<blocks_of(count), kThreads, 0, g->stream>>>(
        v, n, f, l, (const double *)x, mean, istd, use_xhat, per_sample,
        keep_old, beta, (const double *)in, (double *)out);
  else
    k_bn_param<float><<<blocks_of(count), kThreads, 0, g->stream>>>(
        v, n, f, l, (const float *)x, mean, istd, use_xhat, per_sample,
        keep_old, beta, (const float *)in, (float *)out);
  check_launch(g, "bn_param");
}

void cpk__cuda_bn_param_fwd(cpk__gpu *g, int f64, int64_t v, int64_t n,
                            int64_t f, int64_t l, const void *x,
                            const double *mean, const double *istd,
                            int use_xhat, double beta, const void *t,
                            void *out) {
  const int64_t total = v * n * f * l;
  const int zero = beta == 0.0;
  if (total <= 0 || !enter(g))
    return;
  if (f64)
    k_bn_param_fwd<double><<<blocks_for(total), kThreads, 0, g->stream>>>(
        v, n, f, l, (const double *)x, mean, istd, use_xhat, zero, beta,
        (const double *)t, (double *)out);
  else
    k_bn_param_fwd<float><<<blocks_for(total), kThreads, 0, g->stream>>>(
        v, n, f, l, (const float *)x, mean, istd, use_xhat, zero, beta,
        (const float *)t, (float *)out);
  check_launch(g, "bn_param_fwd");
}

void cpk__cuda_pool_avg(cpk__gpu *g, int f64, const cpk__cuda_avg_geom *geom,
                        const int64_t *tables, int64_t planes, const void *in,
                        void *out) {
  const int64_t total =
      planes * geom->out[0] * geom->out[1] * geom->out[2];
  if (total <= 0 || !enter(g))
    return;
  const AvgTables a = avg_tables(geom, tables);
  if (f64)
    k_pool_avg<double><<<blocks_for(total), kThreads, 0, g->stream>>>(
        *geom, a, planes, (const double *)in, (double *)out);
  else
    k_pool_avg<float><<<blocks_for(total), kThreads, 0, g->stream>>>(
        *geom, a, planes, (const float *)in, (float *)out);
  check_launch(g, "pool_avg");
}

void cpk__cuda_pool_avg_t(cpk__gpu *g, int f64,
                          const cpk__cuda_avg_geom *geom,
                          const int64_t *tables, int64_t planes,
                          const void *in, void *out) {
  const int64_t total = planes * geom->in[0] * geom->in[1] * geom->in[2];
  if (total <= 0 || !enter(g))
    return;
  const AvgTables a = avg_tables(geom, tables);
  if (f64)
    k_pool_avg_t<double><<<blocks_for(total), kThreads, 0, g->stream>>>(
        *geom, a, planes, (const double *)in, (double *)out);
  else
    k_pool_avg_t<float><<<blocks_for(total), kThreads, 0, g->stream>>>(
        *geom, a, planes, (const float *)in, (float *)out);
  check_launch(g, "pool_avg_t");
}

} // extern "C"
