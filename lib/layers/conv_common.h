/*
 * conv_common.h: the one N-d convolution core (D = 1, 2, 3 spatial axes)
 * behind conv{1,2,3}d (conv.c) and conv_transpose{1,2,3}d
 * (conv_transpose.c), and what extensions need to know of those layers.
 *
 * The core convolution maps an image X [cx, *xs] to Y [cy, *ys] with a
 * weight W [cy, cx/G, *K] in G groups. Per group g (cxg = cx/G, cyg = cy/G,
 * Ly = prod(ys)):
 *   Y[g] [cyg, Ly] = W[g] [cyg, cxg*prod(K)] . unfold(X)[g] [cxg*prod(K), Ly]
 * where unfold is im2col (ops.h) with the layer's stride, leading padding
 * and dilation. Its adjoint, X = fold(W^T Y), is col2im of W[g]^T Y[g].
 *
 *   layer            X              Y             forward    weight layout
 *   ConvNd           layer input    layer output  apply      (OUT, IN/G, *K)
 *   ConvTransposeNd  layer output   layer input   adjoint    (IN, OUT/G, *K)
 *
 * so for ConvNd (cx, cy) = (IN, OUT) and for ConvTransposeNd (cx, cy) =
 * (OUT, IN): in both, W is [cy, cx/G, *K] exactly as PyTorch stores it.
 * The Jacobian of one is the other: J^T of a convolution is its adjoint.
 */
#ifndef CPK_CONV_COMMON_H
#define CPK_CONV_COMMON_H

#include "layer.h"
#include "device.h"
#include "ops.h"

typedef struct cpk__conv {
  int dims;                                  /* D: 1, 2 or 3 spatial axes */
  int transposed;                            /* 0: ConvNd, 1: ConvTransposeNd */
  int64_t in_channels, out_channels, groups; /* as PyTorch names them */
  int64_t kernel[3], stride[3], dilation[3]; /* first D entries used */
  int64_t pad_lo[3], pad_hi[3]; /* padding before / after, per axis */
  int64_t output_padding[3];    /* ConvTransposeNd only, else 0 */
  int bias;
  /* Set by build. */
  int64_t cx, cy;        /* channels of X and Y (see above) */
  cpk__im2col_geom geom; /* X grid -> Y grid; geom.channels = cx */
} cpk__conv;

/* oneDNN's direct convolutions for the core (conv_dnnl.c, builds with
 * CPK_HAVE_DNNL), float32 on the CPU: they return CPK_OK once computed,
 * CPK__CONV_DECLINED where oneDNN has no implementation (the caller then
 * unfolds), or an error. apply: y := beta*y + conv(x) (+ b); adjoint:
 * x := beta*x + conv^T(y); weight_grad: dw := beta*dw + the sum over the n
 * images. CPK_DNNL=0 in the environment, or cpk__dnnl_enable(0), turns them
 * off (every call declines). */
#define CPK__CONV_DECLINED 1
int cpk__dnnl_conv_apply(const cpk__conv *s, int64_t count, const float *x,
                         const float *w, const float *b, float beta,
                         float *y);
int cpk__dnnl_conv_adjoint(const cpk__conv *s, int64_t count, const float *y,
                           const float *w, float beta, float *x);
int cpk__dnnl_conv_weight_grad(const cpk__conv *s, int64_t n, const float *x,
                               const float *y, float beta, float *dw);
void cpk__dnnl_enable(int on);

static inline int64_t cpk__conv_kvol(const cpk__im2col_geom *g) {
  return g->k[0] * g->k[1] * g->k[2];
}

/* Sizes of the core, in elements (for conv_common.c and conv_batched.c). */
typedef struct {
  int64_t g;        /* groups */
  int64_t cxg, cyg; /* channels per group */
  int64_t kx;       /* cxg * prod(K): one group's patch length */
  int64_t lx, ly;   /* grid sizes */
  int64_t xsz, ysz; /* one image: cx*lx, cy*ly */
  int64_t wsz;      /* weight: cy * kx; group g starts at g*cyg*kx */
  int64_t colsz;    /* one image's unfolding: G * kx * ly */
  size_t es;        /* bytes per element */
  int unfold;       /* 0: 1x1 kernel, stride 1, no padding, same grids,
                       where the unfolding is the image itself */
} cpk__conv_dims;

static inline cpk__conv_dims cpk__conv_dims_of(const cpk__conv *s, cpk_dtype dt) {
  const cpk__im2col_geom *g = &s->geom;
  cpk__conv_dims d;
  d.g = s->groups;
  d.cxg = s->cx / s->groups;
  d.cyg = s->cy / s->groups;
  d.kx = d.cxg * cpk__conv_kvol(g);
  d.lx = g->in[0] * g->in[1] * g->in[2];
  d.ly = g->out[0] * g->out[1] * g->out[2];
  d.xsz = s->cx * d.lx;
  d.ysz = s->cy * d.ly;
  d.wsz = s->cy * d.kx;
  d.colsz = 0; /* set by scratch_new, overflow-checked */
  d.es = cpk_dtype_size(dt);
  d.unfold = d.kx != d.cxg;
  for (int a = 0; a < 3; a++)
    d.unfold |= g->stride[a] != 1 || g->pad[a] != 0 || g->in[a] != g->out[a];
  return d;
}


/* Where each PyTorch argument sits in a kind's argument list (-1: absent,
 * as output_padding is for ConvNd). */
typedef struct {
  int in_channels, out_channels, kernel_size, stride, padding, output_padding,
      dilation, groups, bias;
} cpk__conv_slots;

/* configure: read the bound arguments into a new cpk__conv (l->priv), with
 * D = *(const int *)l->kind->data. Checks what needs no input shape:
 * positive channels, groups dividing both, kernel/stride/dilation >= 1,
 * padding >= 0, 'same' only with stride 1 (total d*(k-1), left half
 * rounded down), output_padding < max(stride, dilation). */
int cpk__conv_configure(cpk__layer *l, const cpk__arg_value *args,
                        int transposed, const cpk__conv_slots *slots);
/* build: check the sample shape [IN, *in], set [OUT, *out] with, per axis,
 *   ConvNd:          out = (in + lo + hi - d*(k-1) - 1) / s + 1
 *   ConvTransposeNd: out = (in - 1)*s - lo - hi + d*(k-1) + op + 1
 * (a kernel wider than the padded input, or out <= 0, is an error), and
 * declare weight [cy, cx/G, *K] and bias [OUT]. */
int cpk__conv_build(cpk__layer *l);
/* kaiming_uniform(a = sqrt(5)) on the weight and PyTorch's bias rule: both
 * U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = weight.shape[1] * prod(K). */
int cpk__conv_init(cpk__layer *l, cpk__rng *rng);
void cpk__conv_destroy(cpk__layer *l);

/* The core over `count` images, threads over the images (BLAS runs single
 * threaded inside). w is [cy, cx/G, *K]; b (or NULL for none) is added per
 * output channel; beta = 0 never reads the output.
 *   apply:   y [count, cy, *ys] := beta*y + W . unfold(x) (+ b),
 *            x [count, cx, *xs]
 *   adjoint: x [count, cx, *xs] := beta*x + fold(W^T y) (+ b),
 *            y [count, cy, *ys] */
int cpk__conv_apply(const cpk__conv *s, const cpk_context *ctx, cpk_dtype dt,
                    int64_t count, const void *x, const void *w, const void *b,
                    double beta, void *y);
int cpk__conv_adjoint(const cpk__conv *s, const cpk_context *ctx, cpk_dtype dt,
                      int64_t count, const void *y, const void *w,
                      const void *b, double beta, void *x);

/* Weight part of a parameter-Jacobian product. Images X_{v,n} and Y_{v,n}
 * for v < V, n < N; x is [V, N, cx, *xs] when x_has_v, else [N, cx, *xs]
 * shared by every v (likewise y, [V, N, cy, *ys] or [N, cy, *ys]).
 *   per_sample: out[v, n] := Y_{v,n} . unfold(X_{v,n})^T   ([V, N, *W])
 *   summed:     out[v] := beta*out[v] + sum_n (the same)    ([V, *W])
 * per group: [cyg, Ly] x [Ly, cxg*prod(K)] -> [cyg, cxg*prod(K)]. */
int cpk__conv_weight_grad(const cpk__conv *s, const cpk_context *ctx,
                          cpk_dtype dt, int64_t v, int64_t n, const void *x,
                          int x_has_v, const void *y, int y_has_v,
                          int per_sample, double beta, void *out);
/* Whether cpk__conv_weight_sq_sum pays for V columns that share X: per
 * image and group it turns the unfolding and the image, (kx + cyg) Ly
 * elements, where storing the products moves 2 V cyg kx (written, then
 * read to square); with X per column, ask for V = 1.
 * (cifar10_3c3d's 3x3 convolutions on 12x12 and 6x6 grids: yes for V = 1;
 * its 5x5 one on 28x28 with 3 input channels: only from V = 12.) */
int cpk__conv_sq_sum_pays(const cpk__conv *s, int64_t v);
/* The squares of the per-sample weight products added up, without
 * storing them (cpk__sq_product_add): with X and Y as for
 * cpk__conv_weight_grad,
 *   out [*W] += sum_{v,n} w[v * w_stride + n] (Y_{v,n} . unfold(X_{v,n})^T)^2
 * (w NULL: all 1; w in dt). CPK__CONV_DECLINED where the tiles do not run
 * (the GPU, a CPU with neither AVX-512 nor AVX2 with FMA): then nothing is
 * written. */
int cpk__conv_weight_sq_sum(const cpk__conv *s, const cpk_context *ctx,
                            cpk_dtype dt, int64_t v, int64_t n, const void *x,
                            int x_has_v, const void *y, int y_has_v,
                            const void *weights, int64_t w_stride, void *out);
/* The core batched over images for the CUDA device (conv_batched.c): the
 * same contracts as cpk__conv_apply, cpk__conv_adjoint and
 * cpk__conv_weight_grad, with every image of a chunk in one unfolding and
 * one strided-batched GEMM per group instead of a call per image. */
int cpk__conv_apply_batched(const cpk__conv *s, const cpk_context *ctx,
                            cpk_dtype dt, int64_t count, const void *x,
                            const void *w, const void *b, double beta,
                            void *y);
int cpk__conv_adjoint_batched(const cpk__conv *s, const cpk_context *ctx,
                              cpk_dtype dt, int64_t count, const void *y,
                              const void *w, const void *b, double beta,
                              void *x);
int cpk__conv_weight_grad_batched(const cpk__conv *s, const cpk_context *ctx,
                                  cpk_dtype dt, int64_t v, int64_t n,
                                  const void *x, int x_has_v, const void *y,
                                  int y_has_v, int per_sample, double beta,
                                  void *out);

/* Bias part: in [V, N, C, M] summed over the M positions (and n):
 *   per_sample: out[v, n, c] := sum_m in[v, n, c, m]
 *   summed:     out[v, c] := beta*out[v, c] + sum_{n,m} in[v, n, c, m]. */
void cpk__conv_bias_grad(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                         int64_t n, int64_t c, int64_t m, const void *in,
                         int per_sample, double beta, void *out);

/* param_jac_mat (forward mode in parameter p) of both kinds: for each
 * column v of the tangent t [V, *S],
 *   weight: out[v] := beta*out[v] + (the layer's forward of x with weight
 *           t[v] and no bias)          (the output is bilinear in x and W)
 *   bias:   out[v, n, c, m] := beta*out[v, n, c, m] + t[v, c],
 * out [V, N, OUT, *out]. */
int cpk__conv_param_jac_mat(cpk__layer *l, cpk_context *ctx, int p,
                            const cpk_tensor *x, const cpk_tensor *t,
                            double beta, cpk_tensor *out);

/* The mixed second derivatives of the weight (layer.h) of both kinds, the
 * bias adding nothing; g [N, OUT, *out] the gradient at the output:
 *   to the input, t [V, *W]: out[v] [N, IN, *in] += J_x(W := t[v])^T g,
 *     the core's adjoint (ConvNd) or apply (ConvTransposeNd) of g with
 *     weight t[v], one call over the N images per column;
 *   to the weight, u [V, N, IN, *in]: out[v] += sum_n J_W(x := u[v,n])^T g_n,
 *     cpk__conv_weight_grad with the input side per column (X = u for
 *     ConvNd, Y = u for ConvTransposeNd) and g shared. */
int cpk__conv_mixed_jac_t_mat(cpk__layer *l, cpk_context *ctx, int p,
                              const cpk_tensor *x, const cpk_tensor *g,
                              const cpk_tensor *t, cpk_tensor *out);
int cpk__conv_mixed_param_jac_t_mat(cpk__layer *l, cpk_context *ctx, int p,
                                    const cpk_tensor *x, const cpk_tensor *g,
                                    const cpk_tensor *u, cpk_tensor *out);

/* For extensions. The convolution state of layer l, or NULL when l is not
 * one of the six convolution kinds. */
const cpk__conv *cpk__conv_of(const cpk__layer *l);
/* Unfold a convolution layer's input x [N, IN, *in] into the patches its
 * weight contracts with, *out (allocated here, caller frees)
 * [N, G, IN/G * prod(K), L] (rows (channel of the group, k0, k1, k2)):
 *   ConvNd:          im2col(x), L = prod(out):
 *                    y[n, g*OUTg + o, l] = sum_r W[g*OUTg + o, r] out[n,g,r,l]
 *   ConvTransposeNd: the transposed unfolding (cpk__im2col_transposed),
 *                    L = prod(out) of the layer output:
 *                    y[n, g*OUTg + o, l] = sum_{c,k} W[g*INg + c, o, k]
 *                                                    out[n, g, (c, k), l]
 * (BackPACK's unfold_input / unfold_by_conv_transpose; the Kronecker input
 * factor of KFAC is over these patches). */
int cpk__conv_unfold_input(const cpk__layer *l, const cpk_context *ctx,
                           const cpk_tensor *x, cpk_tensor **out);

#endif /* CPK_CONV_COMMON_H */
