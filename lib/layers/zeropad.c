/*
 * zeropad.c: nn.ZeroPad2d(padding), padding = one int or (left, right, top,
 * bottom), on samples [*R, H, W] (the last two axes are padded, R any
 * leading axes): y[..., h, w] = x[..., h - top, w - left] inside the input,
 * 0 elsewhere, of shape [*R, H + top + bottom, W + left + right]. Negative
 * values crop, as in PyTorch. Linear: J is that map, and J^T the same map
 * with -top, -left back onto [H, W] (crop where J pads, pad where it crops).
 */
#include "pool_common.h"

/* Paddings beyond this are refused (keeps the extents within int64). */
#define CPK_PAD_MAX INT32_MAX

typedef struct {
  int64_t left, right, top, bottom;
} zeropad;

static const cpk__arg_spec zeropad_args[] = {
    {"padding", CPK__ARG_INTS, NULL},
};

static int zeropad_configure(cpk__layer *l, const cpk__arg_value *a) {
  int64_t p[4];
  int rc = cpk__args_tuple(&a[0], "padding", 4, p, l->where);
  if (rc != CPK_OK)
    return rc;
  for (int i = 0; i < 4; i++)
    if (p[i] < -CPK_PAD_MAX || p[i] > CPK_PAD_MAX)
      return cpk__fail(CPK_EFORMAT,
                       "%s: padding must be between %d and %d, got %lld",
                       l->where, -CPK_PAD_MAX, CPK_PAD_MAX, (long long)p[i]);
  zeropad *s = cpk__calloc(sizeof *s);
  if (s == NULL)
    return CPK_ENOMEM;
  s->left = p[0];
  s->right = p[1];
  s->top = p[2];
  s->bottom = p[3];
  l->priv = s;
  return CPK_OK;
}

static int zeropad_build(cpk__layer *l) {
  const zeropad *s = l->priv;
  char buf[128];
  cpk_shape_str(buf, sizeof buf, l->in_ndim, l->in_shape);
  if (l->in_ndim < 2)
    return cpk__fail(CPK_ESHAPE,
                     "%s: expected a sample with at least 2 axes (*, H, W), "
                     "got a sample of shape %s",
                     l->where, buf);
  const int h = l->in_ndim - 2, w = l->in_ndim - 1;
  int64_t numel;
  int rc = cpk__shape_numel(l->in_ndim, l->in_shape, &numel, l->where);
  if (rc != CPK_OK)
    return rc;
  if (l->in_shape[h] > INT64_MAX / 2 || l->in_shape[w] > INT64_MAX / 2)
    return cpk__fail(CPK_EOVERFLOW, "%s: sample shape %s is too large",
                     l->where, buf);
  const int64_t ho = l->in_shape[h] + s->top + s->bottom;
  const int64_t wo = l->in_shape[w] + s->left + s->right;
  if (ho < 1 || wo < 1)
    return cpk__fail(CPK_ESHAPE,
                     "%s: padding (left=%lld, right=%lld, top=%lld, "
                     "bottom=%lld) of a sample of shape %s leaves an output "
                     "of size %lld x %lld",
                     l->where, (long long)s->left, (long long)s->right,
                     (long long)s->top, (long long)s->bottom, buf,
                     (long long)ho, (long long)wo);
  l->out_ndim = l->in_ndim;
  for (int i = 0; i < l->in_ndim; i++)
    l->out_shape[i] = l->in_shape[i];
  l->out_shape[h] = ho;
  l->out_shape[w] = wo;
  return CPK_OK;
}

/* Pad (forward, J): in [..., H, W] -> out [..., HO, WO]. */
static int zeropad_jac_mat(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                           const cpk_tensor *y, const cpk_tensor *in,
                           cpk_tensor *out) {
  const zeropad *s = l->priv;
  const int64_t hi = l->in_shape[l->in_ndim - 2];
  const int64_t wi = l->in_shape[l->in_ndim - 1];
  const int64_t ho = l->out_shape[l->out_ndim - 2];
  const int64_t wo = l->out_shape[l->out_ndim - 1];
  cpk__pad2d(ctx, in->dtype, cpk_tensor_numel(in) / (hi * wi), hi, wi, ho, wo,
             s->top, s->left, in->data, out->data);
  return CPK_OK;
}

/* J^T: in [..., HO, WO] -> out [..., H, W], out[h, w] = in[h + top,
 * w + left] where that lies inside [HO, WO], else 0. */
static int zeropad_jac_t_mat(cpk__layer *l, cpk_context *ctx,
                             const cpk_tensor *x, const cpk_tensor *y,
                             const cpk_tensor *in, cpk_tensor *out) {
  const zeropad *s = l->priv;
  const int64_t hi = l->in_shape[l->in_ndim - 2];
  const int64_t wi = l->in_shape[l->in_ndim - 1];
  const int64_t ho = l->out_shape[l->out_ndim - 2];
  const int64_t wo = l->out_shape[l->out_ndim - 1];
  cpk__pad2d(ctx, in->dtype, cpk_tensor_numel(in) / (ho * wo), ho, wo, hi, wi,
             -s->top, -s->left, in->data, out->data);
  return CPK_OK;
}

static int zeropad_forward(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                           cpk_tensor *y, int training) {
  return zeropad_jac_mat(l, ctx, x, y, x, y);
}

static void zeropad_destroy(cpk__layer *l) { cpk__free(l->priv); }

const cpk__layer_kind cpk__zeropad2d_kind = {
    .name = "zeropad2d",
    .args = zeropad_args,
    .nargs = 1,
    .configure = zeropad_configure,
    .build = zeropad_build,
    .forward = zeropad_forward,
    .jac_t_mat = zeropad_jac_t_mat,
    .fills_output = 1,
    /* a selection (0/1 entries, one per row and column at most), so
     * diag(J^T diag(d) J) = J^T d */
    .jac_t_diag = zeropad_jac_t_mat,
    .jac_mat = zeropad_jac_mat,
    .destroy = zeropad_destroy,
    .cuda = 1,
};
