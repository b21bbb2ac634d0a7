/*
 * activation.c: the elementwise activations (relu, sigmoid, tanh,
 * leaky_relu, elu, selu, logsigmoid, identity, exp, log). They share one
 * implementation: y = f(x); the Jacobian is diagonal, diag(f'(x)), so both
 * J and J^T scale a block [V, N, *shape] by f'(x) broadcast over V. The
 * scalar formulas live in kernels/activation_math.h.
 */
#include <string.h>

#include "layer.h"
#include "device.h"
#include "ops.h"

typedef struct {
  cpk__act act;
  double param;      /* negative_slope or alpha */
  cpk_tensor *d1;    /* f'(x) of the last forward, computed on first use */
} activation;

static int activation_configure(cpk__layer *l, const cpk__arg_value *a) {
  activation *s = cpk__calloc(sizeof *s);
  if (s == NULL)
    return CPK_ENOMEM;
  s->act = *(const cpk__act *)l->kind->data;
  /* The first argument, when it is a number, parametrises f. */
  s->param = l->kind->nargs > 0 && l->kind->args[0].type == CPK__ARG_FLOAT
                 ? a[0].f
                 : 0.0;
  l->priv = s;
  return CPK_OK;
}

static int activation_build(cpk__layer *l) {
  l->out_ndim = l->in_ndim;
  memcpy(l->out_shape, l->in_shape, sizeof l->in_shape);
  return CPK_OK;
}

static int activation_forward(cpk__layer *l, cpk_context *ctx,
                              const cpk_tensor *x, cpk_tensor *y,
                              int training) {
  activation *s = l->priv;
  cpk_tensor_free(s->d1);
  s->d1 = NULL;
  cpk__act_eval(ctx, x->dtype, s->act, s->param, CPK__ACT_F,
                cpk_tensor_numel(x), x->data, NULL, y->data);
  return CPK_OK;
}

/* f'(x) for the last forward, cached for every block propagated after it. */
static int activation_d1(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                         const cpk_tensor *y, const cpk_tensor **d1) {
  activation *s = l->priv;
  /* A cache another pass left on the other device, or for another batch
   * size, is recomputed (never read across devices). */
  if (s->d1 != NULL &&
      (s->d1->device != (cpk__on_cuda(ctx) ? ctx->gpu : NULL) ||
       cpk_tensor_numel(s->d1) != cpk_tensor_numel(x))) {
    cpk_tensor_free(s->d1);
    s->d1 = NULL;
  }
  if (s->d1 == NULL) {
    int rc =
        cpk__tensor_new_on_uninit(ctx, &s->d1, x->dtype, x->ndim, x->shape);
    if (rc != CPK_OK)
      return rc;
    cpk__act_eval(ctx, x->dtype, s->act, s->param, CPK__ACT_D1,
                  cpk_tensor_numel(x), x->data, y->data, s->d1->data);
  }
  *d1 = s->d1;
  return CPK_OK;
}

/* J = J^T = diag(f'(x)): out[v] := f'(x) * in[v]. One column (the
 * gradient) takes f' on the fly unless it is cached already; blocks of
 * several columns cache it. */
static int activation_jac_mat(cpk__layer *l, cpk_context *ctx,
                              const cpk_tensor *x, const cpk_tensor *y,
                              const cpk_tensor *in, cpk_tensor *out) {
  const activation *s = l->priv;
  const int64_t m = cpk_tensor_numel(x);
  if (s->d1 == NULL && cpk_tensor_numel(in) == m) {
    cpk__act_d1_mul(ctx, x->dtype, s->act, s->param, m, x->data, y->data,
                    in->data, out->data);
    return CPK_OK;
  }
  const cpk_tensor *d1;
  int rc = activation_d1(l, ctx, x, y, &d1);
  if (rc != CPK_OK)
    return rc;
  cpk__mul_broadcast(ctx, x->dtype, cpk_tensor_numel(in) / m, m, d1->data,
                     in->data, out->data);
  return CPK_OK;
}

/* diag(J^T diag(d) J) = f'(x)^2 d. */
static int activation_jac_t_diag(cpk__layer *l, cpk_context *ctx,
                                 const cpk_tensor *x, const cpk_tensor *y,
                                 const cpk_tensor *d_out, cpk_tensor *d_in) {
  const cpk_tensor *d1;
  int rc = activation_d1(l, ctx, x, y, &d1);
  if (rc != CPK_OK)
    return rc;
  int64_t m = cpk_tensor_numel(x);
  cpk__mul_broadcast(ctx, x->dtype, 1, m, d1->data, d_out->data, d_in->data);
  cpk__mul_broadcast(ctx, x->dtype, 1, m, d1->data, d_in->data, d_in->data);
  return CPK_OK;
}

static int activation_jac_diag(cpk__layer *l, cpk_context *ctx,
                               const cpk_tensor *x, const cpk_tensor *y,
                               cpk_tensor *out) {
  const cpk_tensor *d1;
  int rc = activation_d1(l, ctx, x, y, &d1);
  if (rc == CPK_OK)
    cpk__copy(ctx, x->dtype, cpk_tensor_numel(x), d1->data, out->data);
  return rc;
}

/* KFRA: (1/N) sum_n diag(f'_n) m diag(f'_n) = m o ((1/N) F^T F) with
 * F = f'(x) as [N, D]. */
static int activation_ea_jac_t_mat_jac(cpk__layer *l, cpk_context *ctx,
                                       const cpk_tensor *x,
                                       const cpk_tensor *y,
                                       const cpk_tensor *m, cpk_tensor *out) {
  const cpk_tensor *d1;
  int rc = activation_d1(l, ctx, x, y, &d1);
  if (rc != CPK_OK)
    return rc;
  const int64_t n = x->shape[0], d = cpk_tensor_numel(x) / n;
  cpk__syrk(ctx, x->dtype, 1, d, n, 1.0 / (double)n, d1->data, d, 0.0,
            out->data, d);
  cpk__mul_broadcast(ctx, x->dtype, 1, d * d, m->data, out->data, out->data);
  return CPK_OK;
}

static int activation_d2(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                         const cpk_tensor *y, cpk_tensor *out) {
  const activation *s = l->priv;
  cpk__act_eval(ctx, x->dtype, s->act, s->param, CPK__ACT_D2,
                cpk_tensor_numel(x), x->data, y->data, out->data);
  return CPK_OK;
}

static void activation_drop_cache(cpk__layer *l) {
  activation *s = l->priv;
  cpk_tensor_free(s->d1);
  s->d1 = NULL;
}

static void activation_destroy(cpk__layer *l) {
  activation *s = l->priv;
  if (s != NULL)
    cpk_tensor_free(s->d1);
  cpk__free(s);
}

static const cpk__arg_spec inplace_args[] = {{"inplace", CPK__ARG_BOOL, "false"}};
static const cpk__arg_spec leaky_args[] = {
    {"negative_slope", CPK__ARG_FLOAT, "0.01"},
    {"inplace", CPK__ARG_BOOL, "false"}};
static const cpk__arg_spec elu_args[] = {{"alpha", CPK__ARG_FLOAT, "1.0"},
                                         {"inplace", CPK__ARG_BOOL, "false"}};

/* ACT: enum value; ARGS/NARGS: PyTorch's arguments (`inplace` is accepted
 * and has no effect); D2: the second-derivative hook or NULL
 * for the piecewise-linear ones. */
#define CPK__ACTIVATION(ident, str, ACT, ARGS, NARGS, D2)                      \
  static const cpk__act ident##_act = ACT;                                     \
  const cpk__layer_kind cpk__##ident##_kind = {                                \
      .name = str,                                                             \
      .args = ARGS,                                                            \
      .nargs = NARGS,                                                          \
      .data = &ident##_act,                                                    \
      .configure = activation_configure,                                       \
      .build = activation_build,                                               \
      .forward = activation_forward,                                           \
      .jac_t_mat = activation_jac_mat,                                         \
      .fills_output = 1,                                                       \
      .jac_mat = activation_jac_mat,                                           \
      .d2 = D2,                                                                \
      .jac_t_diag = activation_jac_t_diag,                                     \
      .jac_diag = activation_jac_diag,                                         \
      .ea_jac_t_mat_jac = activation_ea_jac_t_mat_jac,                         \
      .destroy = activation_destroy,                                           \
      .drop_cache = activation_drop_cache,                                     \
      .cuda = 1,                                                               \
  };

CPK__ACTIVATION(relu, "relu", CPK__ACT_RELU, inplace_args, 1, NULL)
CPK__ACTIVATION(leaky_relu, "leaky_relu", CPK__ACT_LEAKY_RELU, leaky_args, 2, NULL)
CPK__ACTIVATION(identity, "identity", CPK__ACT_IDENTITY, NULL, 0, NULL)
CPK__ACTIVATION(sigmoid, "sigmoid", CPK__ACT_SIGMOID, NULL, 0, activation_d2)
CPK__ACTIVATION(tanh, "tanh", CPK__ACT_TANH, NULL, 0, activation_d2)
CPK__ACTIVATION(elu, "elu", CPK__ACT_ELU, elu_args, 2, activation_d2)
CPK__ACTIVATION(selu, "selu", CPK__ACT_SELU, inplace_args, 1, activation_d2)
CPK__ACTIVATION(logsigmoid, "logsigmoid", CPK__ACT_LOGSIGMOID, NULL, 0, activation_d2)
CPK__ACTIVATION(exp, "exp", CPK__ACT_EXP, NULL, 0, activation_d2)
CPK__ACTIVATION(log, "log", CPK__ACT_LOG, NULL, 0, activation_d2)
