/*
 * conv.c: nn.Conv1d, nn.Conv2d, nn.Conv3d. One sample x [IN, *in] gives
 *   y[g*OUTg + o, l] = b[g*OUTg + o]
 *                      + sum_r W[g*OUTg + o, r] im2col(x)[g*INg*prod(K) + r, l]
 * (G groups, INg = IN/G, OUTg = OUT/G, W [OUT, INg, *K]); the core in
 * conv_common.c is this product with X = x and Y = y. Its Jacobians:
 *   J v   = W . im2col(v)            (the core's apply, no bias)
 *   J^T u = col2im(W^T u)            (the core's adjoint)
 *   dy/dW^T u = u . im2col(x)^T,  dy/db^T u = sum over positions of u,
 *   dy/dW t   = t . im2col(x)     (cpk__conv_param_jac_mat, bilinear).
 */
#include "conv_common.h"

static const cpk__arg_spec conv_args[] = {
    {"in_channels", CPK__ARG_INT, NULL},  {"out_channels", CPK__ARG_INT, NULL},
    {"kernel_size", CPK__ARG_INTS, NULL}, {"stride", CPK__ARG_INTS, "1"},
    {"padding", CPK__ARG_PADDING, "0"},   {"dilation", CPK__ARG_INTS, "1"},
    {"groups", CPK__ARG_INT, "1"},        {"bias", CPK__ARG_BOOL, "true"},
};

static const cpk__conv_slots conv_slots = {
    .in_channels = 0,
    .out_channels = 1,
    .kernel_size = 2,
    .stride = 3,
    .padding = 4,
    .output_padding = -1,
    .dilation = 5,
    .groups = 6,
    .bias = 7,
};

static int conv_configure(cpk__layer *l, const cpk__arg_value *args) {
  return cpk__conv_configure(l, args, 0, &conv_slots);
}

/* The weight and bias (NULL for none) on the context's device. */
static const void *weight_of(const cpk__layer *l, const cpk_context *ctx) {
  return cpk__param_value(l, ctx, 0)->data;
}

static const void *bias_of(const cpk__layer *l, const cpk_context *ctx) {
  const cpk__conv *s = l->priv;
  return s->bias ? cpk__param_value(l, ctx, 1)->data : NULL;
}

static int conv_forward(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                        cpk_tensor *y, int training) {
  return cpk__conv_apply(l->priv, ctx, x->dtype, x->shape[0], x->data,
                         weight_of(l, ctx), bias_of(l, ctx), 0.0, y->data);
}

/* in [V, N, IN, *in] -> out [V, N, OUT, *out]: every (v, n) an image. */
static int conv_jac_mat(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                        const cpk_tensor *y, const cpk_tensor *in,
                        cpk_tensor *out) {
  const int64_t count = cpk_tensor_numel(in) / cpk__layer_in_numel(l);
  return cpk__conv_apply(l->priv, ctx, in->dtype, count, in->data,
                         weight_of(l, ctx), NULL, 0.0, out->data);
}

/* in [V, N, OUT, *out] -> out [V, N, IN, *in]. */
static int conv_jac_t_mat(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                          const cpk_tensor *y, const cpk_tensor *in,
                          cpk_tensor *out) {
  const int64_t count = cpk_tensor_numel(in) / cpk__layer_out_numel(l);
  return cpk__conv_adjoint(l->priv, ctx, in->dtype, count, in->data,
                           weight_of(l, ctx), NULL, 0.0, out->data);
}

/* Weight: X = x shared by every v, Y = in [V, N, OUT, *out].
 * Bias: in summed over the output positions. */
static int conv_param_jac_t_mat(cpk__layer *l, cpk_context *ctx, int p,
                                const cpk_tensor *x, const cpk_tensor *in,
                                int per_sample, double beta, cpk_tensor *out) {
  const cpk__conv *s = l->priv;
  const int64_t n = x->shape[0], dout = cpk__layer_out_numel(l);
  const int64_t v = cpk__block_v(in, n, dout);
  if (p == 0)
    return cpk__conv_weight_grad(s, ctx, in->dtype, v, n, x->data, 0, in->data,
                                 1, per_sample, beta, out->data);
  cpk__conv_bias_grad(ctx, in->dtype, v, n, s->out_channels,
                      dout / s->out_channels, in->data, per_sample, beta,
                      out->data);
  return CPK_OK;
}

/* The weight's per-sample products squared and summed in register tiles
 * (X = x shared by every v); the bias's are cheap to store. */
static int conv_param_sq_sum(cpk__layer *l, cpk_context *ctx, int p,
                             const cpk_tensor *x, const cpk_tensor *in,
                             const void *w, int64_t w_stride,
                             cpk_tensor *out) {
  const int64_t n = x->shape[0];
  const int64_t v = cpk__block_v(in, n, cpk__layer_out_numel(l));
  if (p != 0 || !cpk__conv_sq_sum_pays(l->priv, v))
    return CPK__LAYER_DECLINED;
  const int rc = cpk__conv_weight_sq_sum(l->priv, ctx, in->dtype, v, n,
                                         x->data, 0, in->data, 1, w, w_stride,
                                         out->data);
  return rc == CPK__CONV_DECLINED ? CPK__LAYER_DECLINED : rc;
}

static const int dims[3] = {1, 2, 3};

#define CONV_KIND(D)                                                           \
  const cpk__layer_kind cpk__conv##D##d_kind = {                               \
      .name = "conv" #D "d",                                                   \
      .args = conv_args,                                                       \
      .nargs = (int)(sizeof conv_args / sizeof conv_args[0]),                  \
      .data = &dims[D - 1],                                                    \
      .configure = conv_configure,                                             \
      .build = cpk__conv_build,                                                \
      .forward = conv_forward,                                                 \
      .jac_t_mat = conv_jac_t_mat,                                             \
      .fills_output = 1,                                                       \
      .jac_mat = conv_jac_mat,                                                 \
      .param_jac_mat = cpk__conv_param_jac_mat,                                \
      .param_jac_is_input = 1,                                                 \
      .mixed_jac_t_mat = cpk__conv_mixed_jac_t_mat,                            \
      .mixed_param_jac_t_mat = cpk__conv_mixed_param_jac_t_mat,                \
      .param_jac_t_mat = conv_param_jac_t_mat,                                 \
      .param_sq_sum = conv_param_sq_sum,                                       \
      .init = cpk__conv_init,                                                  \
      .destroy = cpk__conv_destroy,                                            \
      .cuda = 1,                                                               \
  };

CONV_KIND(1)
CONV_KIND(2)
CONV_KIND(3)
