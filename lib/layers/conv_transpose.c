/*
 * conv_transpose.c: nn.ConvTranspose1d, 2d, 3d. The forward pass is the
 * adjoint of the core convolution of conv_common.c whose X grid is this
 * layer's output and whose Y grid is its input, with W [IN, OUT/G, *K]
 * (PyTorch's layout) as the core's [cy, cx/G, *K]:
 *   y = col2im(W^T x) + b             (the core's adjoint, with bias)
 *   J v   = col2im(W^T v)             (the adjoint, no bias)
 *   J^T u = W . im2col(u)             (the core's apply)
 *   dy/dW^T u = x . im2col(u)^T,  dy/db^T u = sum over positions of u,
 *   dy/dW t   = col2im(t^T x)     (cpk__conv_param_jac_mat, bilinear).
 */
#include "conv_common.h"

static const cpk__arg_spec conv_transpose_args[] = {
    {"in_channels", CPK__ARG_INT, NULL},
    {"out_channels", CPK__ARG_INT, NULL},
    {"kernel_size", CPK__ARG_INTS, NULL},
    {"stride", CPK__ARG_INTS, "1"},
    {"padding", CPK__ARG_INTS, "0"},
    {"output_padding", CPK__ARG_INTS, "0"},
    {"groups", CPK__ARG_INT, "1"},
    {"bias", CPK__ARG_BOOL, "true"},
    {"dilation", CPK__ARG_INTS, "1"},
};

static const cpk__conv_slots conv_transpose_slots = {
    .in_channels = 0,
    .out_channels = 1,
    .kernel_size = 2,
    .stride = 3,
    .padding = 4,
    .output_padding = 5,
    .groups = 6,
    .bias = 7,
    .dilation = 8,
};

static int conv_transpose_configure(cpk__layer *l, const cpk__arg_value *a) {
  return cpk__conv_configure(l, a, 1, &conv_transpose_slots);
}

static int conv_transpose_forward(cpk__layer *l, cpk_context *ctx,
                                  const cpk_tensor *x, cpk_tensor *y,
                                  int training) {
  const cpk__conv *s = l->priv;
  return cpk__conv_adjoint(
      s, ctx, x->dtype, x->shape[0], x->data, cpk__param_value(l, ctx, 0)->data,
      s->bias ? cpk__param_value(l, ctx, 1)->data : NULL, 0.0, y->data);
}

/* in [V, N, IN, *in] -> out [V, N, OUT, *out]: every (v, n) an image. */
static int conv_transpose_jac_mat(cpk__layer *l, cpk_context *ctx,
                                  const cpk_tensor *x, const cpk_tensor *y,
                                  const cpk_tensor *in, cpk_tensor *out) {
  const int64_t count = cpk_tensor_numel(in) / cpk__layer_in_numel(l);
  return cpk__conv_adjoint(l->priv, ctx, in->dtype, count, in->data,
                           cpk__param_value(l, ctx, 0)->data, NULL, 0.0, out->data);
}

/* in [V, N, OUT, *out] -> out [V, N, IN, *in]. */
static int conv_transpose_jac_t_mat(cpk__layer *l, cpk_context *ctx,
                                    const cpk_tensor *x, const cpk_tensor *y,
                                    const cpk_tensor *in, cpk_tensor *out) {
  const int64_t count = cpk_tensor_numel(in) / cpk__layer_out_numel(l);
  return cpk__conv_apply(l->priv, ctx, in->dtype, count, in->data,
                         cpk__param_value(l, ctx, 0)->data, NULL, 0.0, out->data);
}

/* Weight: the core's X is the block in [V, N, OUT, *out], its Y the input
 * x, shared by every v. Bias: in summed over the output positions. */
static int conv_transpose_param_jac_t_mat(cpk__layer *l, cpk_context *ctx,
                                          int p, const cpk_tensor *x,
                                          const cpk_tensor *in, int per_sample,
                                          double beta, cpk_tensor *out) {
  const cpk__conv *s = l->priv;
  const int64_t n = x->shape[0], dout = cpk__layer_out_numel(l);
  const int64_t v = cpk__block_v(in, n, dout);
  if (p == 0)
    return cpk__conv_weight_grad(s, ctx, in->dtype, v, n, in->data, 1, x->data,
                                 0, per_sample, beta, out->data);
  cpk__conv_bias_grad(ctx, in->dtype, v, n, s->out_channels,
                      dout / s->out_channels, in->data, per_sample, beta,
                      out->data);
  return CPK_OK;
}

/* The weight's per-sample products squared and summed in register tiles
 * (the core's X the block, its Y the input); the bias's are cheap to
 * store. */
static int conv_transpose_param_sq_sum(cpk__layer *l, cpk_context *ctx, int p,
                                       const cpk_tensor *x,
                                       const cpk_tensor *in, const void *w,
                                       int64_t w_stride, cpk_tensor *out) {
  const int64_t n = x->shape[0];
  const int64_t v = cpk__block_v(in, n, cpk__layer_out_numel(l));
  /* the block is the core's X: each column is unfolded, as if V were 1 */
  if (p != 0 || !cpk__conv_sq_sum_pays(l->priv, 1))
    return CPK__LAYER_DECLINED;
  const int rc = cpk__conv_weight_sq_sum(l->priv, ctx, in->dtype, v, n,
                                         in->data, 1, x->data, 0, w, w_stride,
                                         out->data);
  return rc == CPK__CONV_DECLINED ? CPK__LAYER_DECLINED : rc;
}

static const int dims[3] = {1, 2, 3};

#define CONV_TRANSPOSE_KIND(D)                                                 \
  const cpk__layer_kind cpk__conv_transpose##D##d_kind = {                     \
      .name = "conv_transpose" #D "d",                                         \
      .args = conv_transpose_args,                                             \
      .nargs =                                                                 \
          (int)(sizeof conv_transpose_args / sizeof conv_transpose_args[0]),   \
      .data = &dims[D - 1],                                                    \
      .configure = conv_transpose_configure,                                   \
      .build = cpk__conv_build,                                                \
      .forward = conv_transpose_forward,                                       \
      .jac_t_mat = conv_transpose_jac_t_mat,                                   \
      .fills_output = 1,                                                       \
      .jac_mat = conv_transpose_jac_mat,                                       \
      .param_jac_mat = cpk__conv_param_jac_mat,                                \
      .param_jac_is_input = 1,                                                 \
      .mixed_jac_t_mat = cpk__conv_mixed_jac_t_mat,                            \
      .mixed_param_jac_t_mat = cpk__conv_mixed_param_jac_t_mat,                \
      .param_jac_t_mat = conv_transpose_param_jac_t_mat,                       \
      .param_sq_sum = conv_transpose_param_sq_sum,                             \
      .init = cpk__conv_init,                                                  \
      .destroy = cpk__conv_destroy,                                            \
      .cuda = 1,                                                               \
  };

CONV_TRANSPOSE_KIND(1)
CONV_TRANSPOSE_KIND(2)
CONV_TRANSPOSE_KIND(3)
