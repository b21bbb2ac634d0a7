/*
 * layer.h: the common header of every layer (one file per layer kind in
 * lib/layers/). A layer kind is a table of functions; a layer holds its
 * shapes, parameters and private state. Layers know nothing of extensions:
 * they give the derivative primitives that BackPACK-style extensions need.
 *
 * Shapes: a layer sees one sample's shape (no batch axis) in in_shape and
 * out_shape. Batched tensors are [N, *shape]; blocks flowing backward or
 * forward are [V, N, *shape] (V columns, e.g. V = 1 for the gradient, V = C
 * for the square root of the loss Hessian).
 */
#ifndef CPK_LAYER_H
#define CPK_LAYER_H

#include "args.h"
#include "context.h"
#include "internal.h"

#define CPK__MAX_PARAMS 4

typedef struct cpk__layer cpk__layer;

typedef struct cpk__param {
  char name[16];     /* "weight", "bias", ... */
  int ndim;
  int64_t shape[CPK_MAX_DIMS];
  cpk_tensor *value; /* owned by the model; NULL until built */
  int trainable;     /* 0 for buffers such as running_mean */
  cpk_tensor *dev;   /* the device copy a computation on a CUDA context
                        reads (cpk__param_value picks the one to use): the
                        resident copy during a pass, a curvature operator's
                        own while it computes; NULL otherwise */
  cpk_tensor *resident; /* the model's copy on a CUDA device, kept between
                           passes (lib/device_pass.c); NULL when none */
  int stale;            /* the value changed since `resident` was made */
} cpk__param;

/* A kind's optional hook has no path for this case (param_sq_sum). */
#define CPK__LAYER_DECLINED 1

typedef struct cpk__layer_kind {
  const char *name;           /* model-file name */
  const cpk__arg_spec *args;  /* PyTorch's arguments, in order */
  int nargs;
  const void *data;           /* kind-specific constant (activation enum) */

  /* Read bound arguments into l->priv (allocate it). */
  int (*configure)(cpk__layer *l, const cpk__arg_value *args);
  /* From l->in_shape set l->out_shape and declare parameters
   * (cpk__layer_declare_param). Messages through l->where. */
  int (*build)(cpk__layer *l);
  /* y := f(x); x [N,*in], y [N,*out] allocated by the caller. May keep
   * state in l->priv for the derivatives (masks, indices). */
  int (*forward)(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                 cpk_tensor *y, int training);
  /* out[v,n] := J_n^T in[v,n]: in [V,N,*out] -> out [V,N,*in], where J_n is
   * d y_n / d x_n at the last forward (x, y given again). */
  int (*jac_t_mat)(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                   const cpk_tensor *y, const cpk_tensor *in, cpk_tensor *out);
  /* out[v,n] := J_n in[v,n]: in [V,N,*in] -> out [V,N,*out]. */
  int (*jac_mat)(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                 const cpk_tensor *y, const cpk_tensor *in, cpk_tensor *out);
  /* Parameter p: out[v] := beta*out[v] + sum_n (d y_n/d theta_p)^T in[v,n]
   * (per_sample = 0: out [V,*S]) or out[v,n] := (d y_n/d theta_p)^T in[v,n]
   * (per_sample = 1: out [V,N,*S], beta ignored). in is [V,N,*out].
   * beta = 0 (and per_sample = 1) never reads out: the engine hands the
   * gradient over unfilled (tests/test_uninit.c checks every kind). */
  int (*param_jac_t_mat)(cpk__layer *l, cpk_context *ctx, int p,
                         const cpk_tensor *x, const cpk_tensor *in,
                         int per_sample, double beta, cpk_tensor *out);
  /* Optional: the squares of the per-sample parameter products summed
   * without storing them,
   *   out [*S] += sum_{v,n} w[v * w_stride + n] (J_{theta_p,n}^T in[v, n])^2
   * (in [V, N, *out], w in the dtype, NULL: all 1). CPK__LAYER_DECLINED
   * where the kind has no such path for this parameter or context (then
   * nothing is written and the caller squares param_jac_t_mat's per-sample
   * products). NULL: never. */
  int (*param_sq_sum)(cpk__layer *l, cpk_context *ctx, int p,
                      const cpk_tensor *x, const cpk_tensor *in,
                      const void *w, int64_t w_stride, cpk_tensor *out);
  /* Parameter p, forward mode (the R-op of the parameter): for a tangent
   * t [V, *S] (or S when V = 1), out[v] := beta*out[v] + J_theta t[v],
   *   out[v,n,o] = beta*out[v,n,o] + sum_k (d y_n[o] / d theta_{p,k}) t[v,k],
   * out [V, N, *out] (V = numel(out) / (N * out numel)); x is the layer's
   * input at the last forward. beta = 0 never reads out. NULL for a kind
   * without parameters, or one that does not have it yet (forward-mode
   * products with respect to its parameters then fail with CPK_ENOTSUP). */
  int (*param_jac_mat)(cpk__layer *l, cpk_context *ctx, int p,
                       const cpk_tensor *x, const cpk_tensor *t, double beta,
                       cpk_tensor *out);
  /* Elementwise layers: out := f''(x), [N,*in]. NULL when f'' = 0. */
  int (*d2)(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
            const cpk_tensor *y, cpk_tensor *out);
  /* Layers whose Jacobian J^T diag(d) J stays diagonal (elementwise maps,
   * reshapes, selections): d_in := diag(J_n^T diag(d_out[n]) J_n), both
   * [N, *shape]. NULL otherwise. Used by the diagonal Hessian. */
  int (*jac_t_diag)(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                    const cpk_tensor *y, const cpk_tensor *d_out,
                    cpk_tensor *d_in);
  /* Elementwise layers (same number of elements in and out): out := the
   * diagonal of J_n, [N, *in]. NULL otherwise. */
  int (*jac_diag)(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                  const cpk_tensor *y, cpk_tensor *out);
  /* KFRA: out := (1/N) sum_n J_n^T m J_n for a matrix m [D_out, D_out]
   * shared by the samples; out is [D_in, D_in]. NULL: the engine uses
   * jac_t_mat (dense, for small layers). */
  int (*ea_jac_t_mat_jac)(cpk__layer *l, cpk_context *ctx,
                          const cpk_tensor *x, const cpk_tensor *y,
                          const cpk_tensor *m, cpk_tensor *out);
  /* Nonzero for layers bilinear in (x, weight) plus a bias (linear,
   * convolutions): every entry of d y / d weight is an entry of x or zero
   * (so sum_o d_o (d y_o / d theta)^2 is param_jac_t_mat applied to x o x),
   * J_x depends on the weight (slot 0) alone, and the bias (slot 1) enters
   * additively. */
  int param_jac_is_input;
  /* The mixed second derivative of the layer in (x, theta_p), for kinds
   * whose input Jacobian depends on a parameter and whose parameter
   * Jacobian on the input (linear and the convolutions, bilinear in x and
   * the weight; batch norm's weight in evaluation mode). With g [N, *out]
   * one block column at the output (the gradient dL/dy), it is the
   * bilinear form B(t, u) = sum_n d^2 <g_n, y_n> / d theta_p d x_n [t, u_n],
   * applied to one side:
   *   mixed_jac_t_mat (to the input), t [V, *S], out [V, N, *in]:
   *     out[v, n] += d/dtheta_p (J_n^T g_n) [t[v]]
   *                = J_n(theta_p := t[v])^T g_n   (J_n linear in theta_p);
   *   mixed_param_jac_t_mat (to the parameter), u [V, N, *in], out [V, *S]:
   *     out[v] += sum_n d/dx_n ((d y_n / d theta_p)^T g_n) [u[v, n]]
   *             = sum_n (d y_n / d theta_p)(x_n := u[v, n])^T g_n
   *                                           (linear in x up to a constant).
   * A parameter that enters additively (a bias) adds nothing. x is the
   * layer's input at the last forward. These are the Hessian's second-
   * order terms of such layers (lib/products.c); the kinds that leave them
   * NULL have none (their parameter Jacobian does not depend on x). */
  int (*mixed_jac_t_mat)(cpk__layer *l, cpk_context *ctx, int p,
                         const cpk_tensor *x, const cpk_tensor *g,
                         const cpk_tensor *t, cpk_tensor *out);
  int (*mixed_param_jac_t_mat)(cpk__layer *l, cpk_context *ctx, int p,
                               const cpk_tensor *x, const cpk_tensor *g,
                               const cpk_tensor *u, cpk_tensor *out);
  /* Fill the parameters as PyTorch's reset_parameters() does (same
   * distributions). NULL: no parameters. */
  int (*init)(cpk__layer *l, cpk__rng *rng);
  /* Release l->priv (and whatever it holds). May be NULL. */
  void (*destroy)(cpk__layer *l);
  /* Free what the last forward left in l->priv (argmax, cached
   * derivatives): called at the end of a device pass, whose memory must
   * not outlive it. May be NULL. */
  void (*drop_cache)(cpk__layer *l);
  /* Nonzero when forward and jac_t_mat assign every element of their
   * output without reading it first: the engine then allocates those
   * outputs without the zero fill (tests/test_uninit.c checks each such
   * kind with poisoned memory, cpk__alloc_poison). */
  int fills_output;
  /* Nonzero when every hook above runs on a CUDA context (written over
   * ops.h and device.h alone, parameters through cpk__param_value). */
  int cuda;
} cpk__layer_kind;

struct cpk__layer {
  const cpk__layer_kind *kind;
  int index;        /* 0-based position among the layer lines */
  char where[160];  /* "model.txt:3: linear", for messages */
  int in_ndim, out_ndim;
  int64_t in_shape[CPK_MAX_DIMS], out_shape[CPK_MAX_DIMS];
  int nparams;
  cpk__param params[CPK__MAX_PARAMS];
  void *priv;
};

/* The value of parameter p for a computation on `ctx`: the device copy on a
 * CUDA context, the model's own tensor otherwise. */
static inline const cpk_tensor *cpk__param_value(const cpk__layer *l,
                                                 const cpk_context *ctx,
                                                 int p) {
  return ctx != NULL && ctx->device == CPK_DEVICE_CUDA ? l->params[p].dev
                                                       : l->params[p].value;
}

/* Declare parameter `name` of the given shape (during build). */
int cpk__layer_declare_param(cpk__layer *l, const char *name, int trainable,
                             int ndim, const int64_t *shape);

/* KFRA's (1/N) sum_n J_n^T m J_n for any layer, from jac_t_mat applied
 * twice to dense blocks (memory N * D_in * D_out). */
int cpk__ea_jac_t_mat_jac_generic(cpk__layer *l, cpk_context *ctx,
                                  const cpk_tensor *x, const cpk_tensor *y,
                                  const cpk_tensor *m, cpk_tensor *out);

/* Fill `t` with draws from U(-bound, bound). */
void cpk__init_uniform(cpk_tensor *t, double bound, cpk__rng *rng);

/* Number of elements of one sample's input / output. */
int64_t cpk__layer_in_numel(const cpk__layer *l);
int64_t cpk__layer_out_numel(const cpk__layer *l);

/* Look up a kind by model-file name. Returns CPK_OK and the kind; CPK_ENOTSUP
 * for a contract layer that a later release brings; CPK_EUSAGE for an
 * unknown name. */
int cpk__layer_kind_find(const char *name, const cpk__layer_kind **out);

/* The kinds, one per file in lib/layers/. */
extern const cpk__layer_kind cpk__linear_kind;
extern const cpk__layer_kind cpk__flatten_kind;
extern const cpk__layer_kind cpk__dropout_kind;
extern const cpk__layer_kind cpk__conv1d_kind, cpk__conv2d_kind,
    cpk__conv3d_kind, cpk__conv_transpose1d_kind, cpk__conv_transpose2d_kind,
    cpk__conv_transpose3d_kind;
extern const cpk__layer_kind cpk__maxpool1d_kind, cpk__maxpool2d_kind,
    cpk__maxpool3d_kind, cpk__avgpool1d_kind, cpk__avgpool2d_kind,
    cpk__avgpool3d_kind, cpk__adaptive_avgpool2d_kind, cpk__zeropad2d_kind;
extern const cpk__layer_kind cpk__batchnorm1d_kind, cpk__batchnorm2d_kind;
extern const cpk__layer_kind cpk__relu_kind, cpk__sigmoid_kind,
    cpk__tanh_kind, cpk__leaky_relu_kind, cpk__elu_kind, cpk__selu_kind,
    cpk__logsigmoid_kind, cpk__identity_kind, cpk__exp_kind, cpk__log_kind;

/* Leading extent of a block [V, N, ...]: V = numel / (N * per_sample). */
static inline int64_t cpk__block_v(const cpk_tensor *block, int64_t n,
                                   int64_t per_sample) {
  return cpk_tensor_numel(block) / (n * per_sample);
}

#endif /* CPK_LAYER_H */
