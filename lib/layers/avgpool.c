/*
 * avgpool.c: nn.AvgPool1d(kernel_size, stride=None, padding=0,
 * ceil_mode=False, count_include_pad=True) and nn.AvgPool2d/3d (the same
 * plus divisor_override=None) on samples [C, *spatial]:
 *   y[n,c,o] = sum_{i in window o} x[n,c,i] / div(o),
 * window o = [o*s - p, o*s - p + k) per axis, clipped to the input; div(o)
 * is the window's size clipped to the padded input (count_include_pad),
 * the number of input positions in it (otherwise), or divisor_override.
 * The layer is linear: J is that averaging matrix, the forward is J x, and
 * J^T spreads in[o] / div(o) over window o.
 */
#include "pool_common.h"

typedef struct {
  cpk__pool_window w;
  int count_include_pad;
  int64_t divisor_override; /* 0: None */
  cpk__pool_geom geom;
} avgpool;

/* nn.AvgPool1d takes the first five, nn.AvgPool2d/3d all six. */
static const cpk__arg_spec avgpool_args[] = {
    {"kernel_size", CPK__ARG_INTS, NULL},
    {"stride", CPK__ARG_INTS, "0"}, /* not given: None, i.e. kernel_size */
    {"padding", CPK__ARG_INTS, "0"},
    {"ceil_mode", CPK__ARG_BOOL, "false"},
    {"count_include_pad", CPK__ARG_BOOL, "true"},
    {"divisor_override", CPK__ARG_INT, "0"}, /* not given: None */
};

static int avgpool_configure(cpk__layer *l, const cpk__arg_value *a) {
  const int dims = *(const int *)l->kind->data;
  if (l->kind->nargs > 5 && a[5].given && a[5].ints[0] == 0)
    return cpk__fail(CPK_EFORMAT, "%s: divisor_override must not be zero",
                     l->where);
  avgpool *s = cpk__calloc(sizeof *s);
  if (s == NULL)
    return CPK_ENOMEM;
  int rc =
      cpk__pool_window_parse(&s->w, l, dims, &a[0], &a[1], &a[2], NULL, a[3].b);
  if (rc != CPK_OK) {
    cpk__free(s);
    return rc;
  }
  s->count_include_pad = a[4].b;
  s->divisor_override = l->kind->nargs > 5 && a[5].given ? a[5].ints[0] : 0;
  l->priv = s;
  return CPK_OK;
}

static int avgpool_build(cpk__layer *l) {
  avgpool *s = l->priv;
  int rc = cpk__pool_geom_window(&s->geom, l, &s->w,
                                 s->count_include_pad ? CPK__POOL_AVG_WITH_PAD
                                                      : CPK__POOL_AVG_NO_PAD);
  s->geom.divisor_override = s->divisor_override;
  return rc;
}

static int avgpool_forward(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                           cpk_tensor *y, int training) {
  avgpool *s = l->priv;
  return cpk__pool_avg_apply(ctx, &s->geom, 0, x, y);
}

static int avgpool_jac_mat(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                           const cpk_tensor *y, const cpk_tensor *in,
                           cpk_tensor *out) {
  avgpool *s = l->priv;
  return cpk__pool_avg_apply(ctx, &s->geom, 0, in, out);
}

static int avgpool_jac_t_mat(cpk__layer *l, cpk_context *ctx,
                             const cpk_tensor *x, const cpk_tensor *y,
                             const cpk_tensor *in, cpk_tensor *out) {
  avgpool *s = l->priv;
  return cpk__pool_avg_apply(ctx, &s->geom, 1, in, out);
}

/* The geometry's device tables do not outlive a device pass. */
static void avgpool_drop_cache(cpk__layer *l) {
  avgpool *s = l->priv;
  if (s != NULL)
    cpk__pool_geom_drop_device(&s->geom);
}

static void avgpool_destroy(cpk__layer *l) {
  avgpool *s = l->priv;
  if (s != NULL)
    cpk__pool_geom_free(&s->geom);
  cpk__free(s);
}

/* DIMS: the number of spatial axes; NARGS: PyTorch's argument count. */
#define CPK__AVGPOOL(DIMS, NARGS)                                              \
  static const int avgpool##DIMS##d_dims = DIMS;                               \
  const cpk__layer_kind cpk__avgpool##DIMS##d_kind = {                         \
      .name = "avgpool" #DIMS "d",                                             \
      .args = avgpool_args,                                                    \
      .nargs = NARGS,                                                          \
      .data = &avgpool##DIMS##d_dims,                                          \
      .configure = avgpool_configure,                                          \
      .build = avgpool_build,                                                  \
      .forward = avgpool_forward,                                              \
      .jac_t_mat = avgpool_jac_t_mat,                                          \
      .fills_output = 1,                                                       \
      .jac_mat = avgpool_jac_mat,                                              \
      .destroy = avgpool_destroy,                                              \
      .drop_cache = avgpool_drop_cache,                                        \
      .cuda = 1,                                                               \
  };

CPK__AVGPOOL(1, 5)
CPK__AVGPOOL(2, 6)
CPK__AVGPOOL(3, 6)
