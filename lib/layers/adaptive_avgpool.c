/*
 * adaptive_avgpool.c: nn.AdaptiveAvgPool2d(output_size) on samples
 * [C, H, W] to [C, OH, OW]: along each axis output o averages the input
 * window [floor(o*In/Out), ceil((o+1)*In/Out)) (windows may overlap when Out
 * does not divide In), so y[n,c,oh,ow] is the mean of x[n,c] over the
 * product of the two windows. Linear: J is that averaging matrix, the
 * forward is J x, J^T spreads in[o] / |window o| over window o.
 */
#include "pool_common.h"

typedef struct {
  int64_t out[2]; /* OH, OW */
  cpk__pool_geom geom;
} adaptive_avgpool;

static const cpk__arg_spec adaptive_args[] = {
    {"output_size", CPK__ARG_INTS, NULL},
};

static int adaptive_configure(cpk__layer *l, const cpk__arg_value *a) {
  int64_t out[2];
  int rc = cpk__args_tuple(&a[0], "output_size", 2, out, l->where);
  if (rc != CPK_OK)
    return rc;
  for (int i = 0; i < 2; i++)
    if (out[i] < 1 || out[i] > INT32_MAX)
      return cpk__fail(CPK_EFORMAT,
                       "%s: output_size must be between 1 and %d, got %lld",
                       l->where, INT32_MAX, (long long)out[i]);
  adaptive_avgpool *s = cpk__calloc(sizeof *s);
  if (s == NULL)
    return CPK_ENOMEM;
  s->out[0] = out[0];
  s->out[1] = out[1];
  l->priv = s;
  return CPK_OK;
}

static int adaptive_build(cpk__layer *l) {
  adaptive_avgpool *s = l->priv;
  return cpk__pool_geom_adaptive(&s->geom, l, 2, s->out);
}

static int adaptive_forward(cpk__layer *l, cpk_context *ctx,
                            const cpk_tensor *x, cpk_tensor *y, int training) {
  adaptive_avgpool *s = l->priv;
  return cpk__pool_avg_apply(ctx, &s->geom, 0, x, y);
}

static int adaptive_jac_mat(cpk__layer *l, cpk_context *ctx,
                            const cpk_tensor *x, const cpk_tensor *y,
                            const cpk_tensor *in, cpk_tensor *out) {
  adaptive_avgpool *s = l->priv;
  return cpk__pool_avg_apply(ctx, &s->geom, 0, in, out);
}

static int adaptive_jac_t_mat(cpk__layer *l, cpk_context *ctx,
                              const cpk_tensor *x, const cpk_tensor *y,
                              const cpk_tensor *in, cpk_tensor *out) {
  adaptive_avgpool *s = l->priv;
  return cpk__pool_avg_apply(ctx, &s->geom, 1, in, out);
}

/* The geometry's device tables do not outlive a device pass. */
static void adaptive_drop_cache(cpk__layer *l) {
  adaptive_avgpool *s = l->priv;
  if (s != NULL)
    cpk__pool_geom_drop_device(&s->geom);
}

static void adaptive_destroy(cpk__layer *l) {
  adaptive_avgpool *s = l->priv;
  if (s != NULL)
    cpk__pool_geom_free(&s->geom);
  cpk__free(s);
}

const cpk__layer_kind cpk__adaptive_avgpool2d_kind = {
    .name = "adaptive_avgpool2d",
    .args = adaptive_args,
    .nargs = 1,
    .configure = adaptive_configure,
    .build = adaptive_build,
    .forward = adaptive_forward,
    .jac_t_mat = adaptive_jac_t_mat,
    .fills_output = 1,
    .jac_mat = adaptive_jac_mat,
    .destroy = adaptive_destroy,
    .drop_cache = adaptive_drop_cache,
    .cuda = 1,
};
