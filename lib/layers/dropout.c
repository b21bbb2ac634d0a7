/*
 * dropout.c: nn.Dropout(p). In training, y = x * m / (1 - p) with a mask m of
 * Bernoulli(1 - p) draws from the context's generator; otherwise (every
 * curvature computation) the identity. The Jacobian is diag(m / (1 - p)),
 * or the identity outside training.
 *
 * On a CUDA context the mask is drawn on the host from the same generator,
 * in the same order, as on the CPU (so both devices agree for one seed),
 * and uploaded: scale then lives on the device until the end of the pass
 * (drop_cache).
 */
#include <string.h>

#include "device.h"
#include "layer.h"
#include "ops.h"

typedef struct {
  double p;
  cpk_tensor *scale; /* m / (1 - p) of the last training forward, else NULL */
} dropout;

static const cpk__arg_spec dropout_args[] = {
    {"p", CPK__ARG_FLOAT, "0.5"},
    {"inplace", CPK__ARG_BOOL, "false"},
};

static int dropout_configure(cpk__layer *l, const cpk__arg_value *a) {
  if (!(a[0].f >= 0.0 && a[0].f <= 1.0))
    return cpk__fail(CPK_EFORMAT,
                     "%s: dropout probability has to be between 0 and 1, got "
                     "%g",
                     l->where, a[0].f);
  dropout *s = cpk__calloc(sizeof *s);
  if (s == NULL)
    return CPK_ENOMEM;
  s->p = a[0].f;
  l->priv = s;
  return CPK_OK;
}

static int dropout_build(cpk__layer *l) {
  l->out_ndim = l->in_ndim;
  memcpy(l->out_shape, l->in_shape, sizeof l->in_shape);
  return CPK_OK;
}

static int dropout_forward(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                           cpk_tensor *y, int training) {
  dropout *s = l->priv;
  int64_t n = cpk_tensor_numel(x);
  cpk_tensor_free(s->scale);
  s->scale = NULL;
  if (!training || s->p == 0.0) {
    cpk__copy(ctx, x->dtype, n, x->data, y->data);
    return CPK_OK;
  }
  cpk_tensor *mask;
  int rc = cpk_tensor_new(&mask, x->dtype, x->ndim, x->shape);
  if (rc != CPK_OK)
    return rc;
  double keep = s->p < 1.0 ? 1.0 / (1.0 - s->p) : 0.0;
  /* A shard of the batch skips the draws of the samples around it, so a
   * sample's mask does not depend on how the batch is split. */
  int64_t first, total;
  cpk__context_shard(ctx, x->shape[0], &first, &total);
  cpk__rng_skip(&ctx->rng, first * (n / x->shape[0]));
  for (int64_t i = 0; i < n; i++)
    cpk_tensor_set(mask, i, cpk__rng_uniform(&ctx->rng) >= s->p ? keep : 0.0);
  cpk__rng_skip(&ctx->rng, (total - first - x->shape[0]) * (n / x->shape[0]));
  if (cpk__on_cuda(ctx)) { /* the mask goes up once */
    rc = cpk__tensor_to_device(ctx, mask, x->dtype, &s->scale);
    cpk_tensor_free(mask);
    if (rc != CPK_OK)
      return rc;
  } else {
    s->scale = mask;
  }
  cpk__mul_broadcast(ctx, x->dtype, 1, n, s->scale->data, x->data, y->data);
  return CPK_OK;
}

static int dropout_jac_mat(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                           const cpk_tensor *y, const cpk_tensor *in,
                           cpk_tensor *out) {
  const dropout *s = l->priv;
  int64_t m = cpk_tensor_numel(x);
  if (s->scale == NULL)
    cpk__copy(ctx, in->dtype, cpk_tensor_numel(in), in->data, out->data);
  else
    cpk__mul_broadcast(ctx, in->dtype, cpk_tensor_numel(in) / m, m,
                       s->scale->data, in->data, out->data);
  return CPK_OK;
}

/* The diagonal of J: m / (1 - p) in training, else ones. */
static int dropout_jac_diag(cpk__layer *l, cpk_context *ctx,
                            const cpk_tensor *x, const cpk_tensor *y,
                            cpk_tensor *out) {
  const dropout *s = l->priv;
  int64_t n = cpk_tensor_numel(out);
  if (cpk__on_cuda(ctx)) { /* the scale, or f'(x) = 1 of the identity */
    if (s->scale != NULL)
      cpk__copy(ctx, out->dtype, n, s->scale->data, out->data);
    else
      cpk__act_eval(ctx, out->dtype, CPK__ACT_IDENTITY, 0.0, CPK__ACT_D1, n,
                    x->data, y->data, out->data);
    return CPK_OK;
  }
  for (int64_t i = 0; i < n; i++)
    cpk_tensor_set(out, i, s->scale ? cpk_tensor_get(s->scale, i) : 1.0);
  return CPK_OK;
}

/* diag(J^T diag(d) J) = scale^2 d. */
static int dropout_jac_t_diag(cpk__layer *l, cpk_context *ctx,
                              const cpk_tensor *x, const cpk_tensor *y,
                              const cpk_tensor *d_out, cpk_tensor *d_in) {
  int rc = dropout_jac_mat(l, ctx, x, y, d_out, d_in);
  if (rc == CPK_OK)
    rc = dropout_jac_mat(l, ctx, x, y, d_in, d_in);
  return rc;
}

/* KFRA: m o ((1/N) sum_n s_n s_n^T) with s_n the scale of sample n. */
static int dropout_ea_jac_t_mat_jac(cpk__layer *l, cpk_context *ctx,
                                    const cpk_tensor *x, const cpk_tensor *y,
                                    const cpk_tensor *m, cpk_tensor *out) {
  const dropout *s = l->priv;
  const int64_t n = x->shape[0], d = cpk_tensor_numel(x) / n;
  if (s->scale == NULL) {
    cpk__copy(ctx, m->dtype, d * d, m->data, out->data);
    return CPK_OK;
  }
  cpk__gemm(ctx, x->dtype, 1, 0, d, d, n, 1.0 / (double)n, s->scale->data, d,
            s->scale->data, d, 0.0, out->data, d);
  cpk__mul_broadcast(ctx, x->dtype, 1, d * d, m->data, out->data, out->data);
  return CPK_OK;
}

/* The device mask does not outlive a device pass. */
static void dropout_drop_cache(cpk__layer *l) {
  dropout *s = l->priv;
  if (s != NULL && s->scale != NULL && s->scale->device != NULL) {
    cpk_tensor_free(s->scale);
    s->scale = NULL;
  }
}

static void dropout_destroy(cpk__layer *l) {
  dropout *s = l->priv;
  if (s != NULL)
    cpk_tensor_free(s->scale);
  cpk__free(s);
}

const cpk__layer_kind cpk__dropout_kind = {
    .name = "dropout",
    .args = dropout_args,
    .nargs = 2,
    .configure = dropout_configure,
    .build = dropout_build,
    .forward = dropout_forward,
    .jac_t_mat = dropout_jac_mat,
    .fills_output = 1,
    .jac_mat = dropout_jac_mat,
    .jac_t_diag = dropout_jac_t_diag,
    .jac_diag = dropout_jac_diag,
    .ea_jac_t_mat_jac = dropout_ea_jac_t_mat_jac,
    .destroy = dropout_destroy,
    .drop_cache = dropout_drop_cache,
    .cuda = 1,
};
