/*
 * maxpool.c: nn.MaxPool1d/2d/3d(kernel_size, stride=None, padding=0,
 * dilation=1, return_indices=False, ceil_mode=False) on samples
 * [C, *spatial]: y[n,c,o] = max of x[n,c,i] over the taps i of window o
 * (the padding counts as -inf; ties go to the first tap in scan order, as in
 * PyTorch). The forward keeps the argmax of every output, idx [N, C, *out]
 * (int32 offsets in the input plane). J is the selection matrix
 * J[o,i] = [i == idx(o)], the same for every column v of a block:
 *   jac_mat:   out[v,n,c,o] = in[v,n,c,idx(n,c,o)]
 *   jac_t_mat: out[v,n,c,i] = sum over o with idx(n,c,o) = i of in[v,n,c,o]
 */
#include "device.h"
#include "pool_common.h"

typedef struct {
  cpk__pool_window w;
  cpk__pool_geom geom;
  cpk_tensor *idx; /* int32 [N, C, *out] of the last forward, or NULL */
} maxpool;

static const cpk__arg_spec maxpool_args[] = {
    {"kernel_size", CPK__ARG_INTS, NULL},
    {"stride", CPK__ARG_INTS, "0"}, /* not given: None, i.e. kernel_size */
    {"padding", CPK__ARG_INTS, "0"},
    {"dilation", CPK__ARG_INTS, "1"},
    {"return_indices", CPK__ARG_BOOL, "false"},
    {"ceil_mode", CPK__ARG_BOOL, "false"},
};

static int maxpool_configure(cpk__layer *l, const cpk__arg_value *a) {
  const int dims = *(const int *)l->kind->data;
  if (a[4].b)
    return cpk__fail(CPK_ENOTSUP,
                     "%s: return_indices=true is not supported (a layer of a "
                     "sequential model passes one tensor on)",
                     l->where);
  maxpool *s = cpk__calloc(sizeof *s);
  if (s == NULL)
    return CPK_ENOMEM;
  int rc = cpk__pool_window_parse(&s->w, l, dims, &a[0], &a[1], &a[2], &a[3],
                                  a[5].b);
  if (rc != CPK_OK) {
    cpk__free(s);
    return rc;
  }
  l->priv = s;
  return CPK_OK;
}

static int maxpool_build(cpk__layer *l) {
  maxpool *s = l->priv;
  int rc = cpk__pool_geom_window(&s->geom, l, &s->w, CPK__POOL_MAX);
  if (rc != CPK_OK)
    return rc;
  if (cpk__pool_in_plane(&s->geom) > INT32_MAX)
    return cpk__fail(CPK_ESHAPE,
                     "%s: an input plane of %lld elements is too large (at "
                     "most %d: the argmax is kept as int32)",
                     l->where, (long long)cpk__pool_in_plane(&s->geom),
                     INT32_MAX);
  return CPK_OK;
}

static int maxpool_forward(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                           cpk_tensor *y, int training) {
  maxpool *s = l->priv;
  /* Keep the index tensor while the output size stays the same. */
  if (s->idx != NULL && (cpk_tensor_numel(s->idx) != cpk_tensor_numel(y) ||
                         s->idx->device != (cpk__on_cuda(ctx) ? ctx->gpu
                                                              : NULL))) {
    cpk_tensor_free(s->idx);
    s->idx = NULL;
  }
  if (s->idx == NULL) {
    int rc = cpk__tensor_new_on(ctx, &s->idx, CPK_I32, y->ndim, y->shape);
    if (rc != CPK_OK)
      return cpk__fail_prefix(rc, "%s: argmax", l->where);
  }
  cpk__pool_max(ctx, x->dtype, &s->geom,
                cpk_tensor_numel(x) / cpk__pool_in_plane(&s->geom), x->data,
                y->data, s->idx->data);
  return CPK_OK;
}

/* The argmax of the forward that produced x (on ctx's device: one that a
 * pass on the other device left is refused, never read across). */
static int maxpool_indices(const cpk__layer *l, const cpk_context *ctx,
                           const cpk_tensor *x, const int32_t **idx,
                           int64_t *planes) {
  const maxpool *s = l->priv;
  const int64_t planes_x = cpk_tensor_numel(x) / cpk__pool_in_plane(&s->geom);
  if (s->idx == NULL ||
      cpk_tensor_numel(s->idx) != planes_x * cpk__pool_out_plane(&s->geom) ||
      s->idx->device != (cpk__on_cuda(ctx) ? ctx->gpu : NULL))
    return cpk__fail(CPK_EINVAL,
                     "%s: a derivative was asked for before the forward pass "
                     "of this batch (or after another pass on this model "
                     "replaced it)",
                     l->where);
  *idx = s->idx->data;
  *planes = planes_x;
  return CPK_OK;
}

static int maxpool_jac_mat(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                           const cpk_tensor *y, const cpk_tensor *in,
                           cpk_tensor *out) {
  const maxpool *s = l->priv;
  const int32_t *idx;
  int64_t ip;
  int rc = maxpool_indices(l, ctx, x, &idx, &ip);
  if (rc != CPK_OK)
    return rc;
  const int64_t in_plane = cpk__pool_in_plane(&s->geom);
  cpk__pool_gather(ctx, in->dtype, cpk_tensor_numel(in) / in_plane, ip, in_plane,
                   cpk__pool_out_plane(&s->geom), idx, in->data, out->data);
  return CPK_OK;
}

/* Also the layer's jac_t_diag: J has one 1 per output (at its argmax), so
 * diag(J^T diag(d) J) = J^T d. */
static int maxpool_jac_t_mat(cpk__layer *l, cpk_context *ctx,
                             const cpk_tensor *x, const cpk_tensor *y,
                             const cpk_tensor *in, cpk_tensor *out) {
  const maxpool *s = l->priv;
  const int32_t *idx;
  int64_t ip;
  int rc = maxpool_indices(l, ctx, x, &idx, &ip);
  if (rc != CPK_OK)
    return rc;
  const int64_t out_plane = cpk__pool_out_plane(&s->geom);
  cpk__pool_scatter(ctx, in->dtype, cpk_tensor_numel(in) / out_plane, ip,
                    cpk__pool_in_plane(&s->geom), out_plane, idx, in->data,
                    out->data);
  return CPK_OK;
}

static void maxpool_drop_cache(cpk__layer *l) {
  maxpool *s = l->priv;
  cpk_tensor_free(s->idx);
  s->idx = NULL;
}

static void maxpool_destroy(cpk__layer *l) {
  maxpool *s = l->priv;
  if (s != NULL) {
    cpk__pool_geom_free(&s->geom);
    cpk_tensor_free(s->idx);
  }
  cpk__free(s);
}

/* DIMS: the number of spatial axes. */
#define CPK__MAXPOOL(DIMS)                                                     \
  static const int maxpool##DIMS##d_dims = DIMS;                               \
  const cpk__layer_kind cpk__maxpool##DIMS##d_kind = {                         \
      .name = "maxpool" #DIMS "d",                                             \
      .args = maxpool_args,                                                    \
      .nargs = 6,                                                              \
      .data = &maxpool##DIMS##d_dims,                                          \
      .configure = maxpool_configure,                                          \
      .build = maxpool_build,                                                  \
      .forward = maxpool_forward,                                              \
      .jac_t_mat = maxpool_jac_t_mat,                                          \
      .fills_output = 1,                                                       \
      .jac_t_diag = maxpool_jac_t_mat,                                         \
      .jac_mat = maxpool_jac_mat,                                              \
      .destroy = maxpool_destroy,                                              \
      .drop_cache = maxpool_drop_cache,                                        \
      .cuda = 1,                                                               \
  };

CPK__MAXPOOL(1)
CPK__MAXPOOL(2)
CPK__MAXPOOL(3)
