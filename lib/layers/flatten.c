/*
 * flatten.c: nn.Flatten(start_dim=1, end_dim=-1). Merges the axes start_dim..
 * end_dim of the batched tensor (axis 0 is the batch and cannot be merged).
 * Memory order is unchanged, so every derivative is a copy.
 */
#include <string.h>

#include "layer.h"
#include "ops.h"
#include "ops_hessian.h"

typedef struct {
  int64_t start_dim, end_dim;
} flatten;

static const cpk__arg_spec flatten_args[] = {
    {"start_dim", CPK__ARG_INT, "1"},
    {"end_dim", CPK__ARG_INT, "-1"},
};

static int flatten_configure(cpk__layer *l, const cpk__arg_value *a) {
  flatten *s = cpk__calloc(sizeof *s);
  if (s == NULL)
    return CPK_ENOMEM;
  s->start_dim = a[0].ints[0];
  s->end_dim = a[1].ints[0];
  l->priv = s;
  return CPK_OK;
}

static int flatten_build(cpk__layer *l) {
  const flatten *s = l->priv;
  int nd = l->in_ndim + 1; /* axes of the batched tensor */
  int64_t a = s->start_dim < 0 ? s->start_dim + nd : s->start_dim;
  int64_t b = s->end_dim < 0 ? s->end_dim + nd : s->end_dim;
  if (a < 1 || b >= nd || a > b)
    return cpk__fail(CPK_ESHAPE,
                     "%s: start_dim=%lld, end_dim=%lld do not select axes 1.."
                     "%d of a %d-d batched input (the batch axis 0 cannot be "
                     "flattened)",
                     l->where, (long long)s->start_dim, (long long)s->end_dim,
                     nd - 1, nd);
  /* Per-sample axes a-1 .. b-1 merge into one. */
  int k = 0;
  for (int i = 0; i < l->in_ndim; i++) {
    if (i >= a - 1 && i <= b - 1) {
      if (i == a - 1)
        l->out_shape[k++] = 1;
      l->out_shape[k - 1] *= l->in_shape[i];
    } else {
      l->out_shape[k++] = l->in_shape[i];
    }
  }
  l->out_ndim = k;
  return CPK_OK;
}

/* Forward, J and J^T all copy the data unchanged. */
static int flatten_copy(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                        const cpk_tensor *y, const cpk_tensor *in,
                        cpk_tensor *out) {
  cpk__copy(ctx, in->dtype, cpk_tensor_numel(in), in->data, out->data);
  return CPK_OK;
}

/* diag(J^T diag(d) J) = d: the same numbers in another shape. */
static int flatten_jac_t_diag(cpk__layer *l, cpk_context *ctx,
                              const cpk_tensor *x, const cpk_tensor *y,
                              const cpk_tensor *d_out, cpk_tensor *d_in) {
  return flatten_copy(l, ctx, x, y, d_out, d_in);
}

static int flatten_jac_diag(cpk__layer *l, cpk_context *ctx,
                            const cpk_tensor *x, const cpk_tensor *y,
                            cpk_tensor *out) {
  cpk__fill(ctx, out->dtype, cpk_tensor_numel(out), 1.0, out->data);
  return CPK_OK;
}

static int flatten_ea_jac_t_mat_jac(cpk__layer *l, cpk_context *ctx,
                                    const cpk_tensor *x, const cpk_tensor *y,
                                    const cpk_tensor *m, cpk_tensor *out) {
  return flatten_copy(l, ctx, x, y, m, out);
}

static int flatten_forward(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                           cpk_tensor *y, int training) {
  return flatten_copy(l, ctx, x, y, x, y);
}

static void flatten_destroy(cpk__layer *l) { cpk__free(l->priv); }

const cpk__layer_kind cpk__flatten_kind = {
    .name = "flatten",
    .args = flatten_args,
    .nargs = 2,
    .configure = flatten_configure,
    .build = flatten_build,
    .forward = flatten_forward,
    .jac_t_mat = flatten_copy,
    .fills_output = 1,
    .jac_mat = flatten_copy,
    .jac_t_diag = flatten_jac_t_diag,
    .jac_diag = flatten_jac_diag,
    .ea_jac_t_mat_jac = flatten_ea_jac_t_mat_jac,
    .destroy = flatten_destroy,
    .cuda = 1,
};
