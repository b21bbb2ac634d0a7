/*
 * linear.c: nn.Linear. y = x W^T + b over the last axis of x.
 * Shapes: W [OUT, IN], b [OUT]; one sample's input is [*R, IN] (R = any
 * leading axes, usually none) and its output [*R, OUT]. With rows = N*R the
 * batch is a matrix X [rows, IN] and Y [rows, OUT].
 */
#include <math.h>

#include "layer.h"
#include "device.h"
#include "ops.h"

typedef struct {
  int64_t in_features, out_features;
  int bias;
} linear;

static const cpk__arg_spec linear_args[] = {
    {"in_features", CPK__ARG_INT, NULL},
    {"out_features", CPK__ARG_INT, NULL},
    {"bias", CPK__ARG_BOOL, "true"},
};

static int linear_configure(cpk__layer *l, const cpk__arg_value *a) {
  if (a[0].ints[0] <= 0 || a[1].ints[0] <= 0)
    return cpk__fail(CPK_EFORMAT,
                     "%s: in_features and out_features must be positive, got "
                     "%lld and %lld",
                     l->where, (long long)a[0].ints[0], (long long)a[1].ints[0]);
  linear *s = cpk__calloc(sizeof *s);
  if (s == NULL)
    return CPK_ENOMEM;
  s->in_features = a[0].ints[0];
  s->out_features = a[1].ints[0];
  s->bias = a[2].b;
  l->priv = s;
  return CPK_OK;
}

static int linear_build(cpk__layer *l) {
  const linear *s = l->priv;
  char buf[128];
  if (l->in_ndim < 1 || l->in_shape[l->in_ndim - 1] != s->in_features)
    return cpk__fail(CPK_ESHAPE,
                     "%s: expected an input whose last axis has %lld features, "
                     "got a sample of shape %s",
                     l->where, (long long)s->in_features,
                     cpk_shape_str(buf, sizeof buf, l->in_ndim, l->in_shape));
  l->out_ndim = l->in_ndim;
  for (int i = 0; i < l->in_ndim; i++)
    l->out_shape[i] = l->in_shape[i];
  l->out_shape[l->out_ndim - 1] = s->out_features;
  int64_t wshape[2] = {s->out_features, s->in_features};
  int rc = cpk__layer_declare_param(l, "weight", 1, 2, wshape);
  if (rc == CPK_OK && s->bias)
    rc = cpk__layer_declare_param(l, "bias", 1, 1, &s->out_features);
  return rc;
}

/* Rows of the batch matrix: N times the leading axes of one sample. */
static int64_t linear_rows(const cpk__layer *l, const cpk_tensor *x) {
  const linear *s = l->priv;
  return cpk_tensor_numel(x) / s->in_features;
}

static int linear_forward(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                          cpk_tensor *y, int training) {
  const linear *s = l->priv;
  const cpk_tensor *w = cpk__param_value(l, ctx, 0);
  int64_t rows = linear_rows(l, x);
  double beta = 0.0;
  if (s->bias) { /* Y := 1 b^T (b per column of every row), then Y += X W^T */
    cpk__channel_bias(ctx, y->dtype, rows, s->out_features, 1,
                      cpk__param_value(l, ctx, 1)->data, 0.0, y->data);
    beta = 1.0;
  }
  cpk__gemm(ctx, x->dtype, 0, 1, rows, s->out_features, s->in_features, 1.0,
            x->data, s->in_features, w->data, s->in_features, beta, y->data,
            s->out_features);
  return CPK_OK;
}

/* [V*rows, OUT] -> [V*rows, IN]: out := in W. Behind a ReLU each row's
 * block is zero in the units it switched off, and for blocks of several
 * rows (V) the product skips them (cpk__block_times_skip_zero). */
static int linear_jac_t_mat(cpk__layer *l, cpk_context *ctx,
                            const cpk_tensor *x, const cpk_tensor *y,
                            const cpk_tensor *in, cpk_tensor *out) {
  const linear *s = l->priv;
  const int64_t vrows = cpk_tensor_numel(in) / s->out_features;
  const int64_t rows = linear_rows(l, x);
  const void *w = cpk__param_value(l, ctx, 0)->data;
  if (rows > 0 &&
      cpk__block_times_skip_zero(ctx, in->dtype, vrows / rows, rows,
                                 s->out_features, s->in_features, in->data,
                                 w, out->data))
    return CPK_OK;
  cpk__gemm(ctx, in->dtype, 0, 0, vrows, s->in_features, s->out_features, 1.0,
            in->data, s->out_features, w, s->in_features, 0.0, out->data,
            s->in_features);
  return CPK_OK;
}

/* [V*rows, IN] -> [V*rows, OUT]: out := in W^T. */
static int linear_jac_mat(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                          const cpk_tensor *y, const cpk_tensor *in,
                          cpk_tensor *out) {
  const linear *s = l->priv;
  int64_t vrows = cpk_tensor_numel(in) / s->in_features;
  cpk__gemm(ctx, in->dtype, 0, 1, vrows, s->out_features, s->in_features, 1.0,
            in->data, s->in_features, cpk__param_value(l, ctx, 0)->data,
            s->in_features, 0.0, out->data, s->out_features);
  return CPK_OK;
}

/* Weight: summed, out[v] := beta out[v] + in[v]^T X ([OUT,rows][rows,IN]);
 * per sample, out[v,n] := in[v,n]^T X_n over the R rows of sample n.
 * Bias: the same with X replaced by ones (row sums of in). */
static int linear_param_jac_t_mat(cpk__layer *l, cpk_context *ctx, int p,
                                  const cpk_tensor *x, const cpk_tensor *in,
                                  int per_sample, double beta,
                                  cpk_tensor *out) {
  const linear *s = l->priv;
  const int64_t n = x->shape[0], rows = linear_rows(l, x), r = rows / n;
  const int64_t fo = s->out_features, fi = s->in_features;
  const int64_t v = cpk_tensor_numel(in) / (rows * fo);
  const size_t es = cpk_dtype_size(in->dtype);
  const char *ind = in->data, *xd = x->data;
  char *od = out->data;
  if (p == 1) { /* bias */
    if (per_sample)
      cpk__sum_rows(ctx, in->dtype, v * n, r, fo, in->data, 0.0, out->data);
    else
      cpk__sum_rows(ctx, in->dtype, v, rows, fo, in->data, beta, out->data);
    return CPK_OK;
  }
  if (!per_sample) {
    for (int64_t b = 0; b < v; b++)
      cpk__gemm(ctx, in->dtype, 1, 0, fo, fi, rows, 1.0,
                ind + (size_t)(b * rows * fo) * es, fo, xd, fi, beta,
                od + (size_t)(b * fo * fi) * es, fi);
    return CPK_OK;
  }
  if (r == 1) { /* rank one per sample: out[v,n] = in[v,n] x_n^T */
    cpk__outer_batch(ctx, in->dtype, v, n, fo, fi, in->data, x->data,
                     out->data);
    return CPK_OK;
  }
  for (int64_t b = 0; b < v; b++) /* out[b, j] := in[b, j]^T X_j, j < n */
    cpk__gemm_strided(ctx, in->dtype, 1, 0, fo, fi, r, 1.0,
                      ind + (size_t)(b * n * r * fo) * es, fo, r * fo, xd, fi,
                      r * fi, 0.0, od + (size_t)(b * n * fo * fi) * es, fi,
                      fo * fi, n);
  return CPK_OK;
}

/* Forward mode in the parameters, tangent t [V, *S], out [V, rows, OUT]:
 * weight (t[v] [OUT, IN]): out[v] := beta out[v] + X t[v]^T, one GEMM
 *   [rows, IN] x [IN, OUT] per v;
 * bias (t[v] [OUT]): out[v, r] := beta out[v, r] + t[v] for every row r. */
static int linear_param_jac_mat(cpk__layer *l, cpk_context *ctx, int p,
                                const cpk_tensor *x, const cpk_tensor *t,
                                double beta, cpk_tensor *out) {
  const linear *s = l->priv;
  const int64_t rows = linear_rows(l, x);
  const int64_t fo = s->out_features, fi = s->in_features;
  const int64_t v = cpk_tensor_numel(out) / (rows * fo);
  const size_t es = cpk_dtype_size(out->dtype);
  const char *td = t->data;
  char *od = out->data;
  if (p == 0) {
    for (int64_t b = 0; b < v; b++)
      cpk__gemm(ctx, out->dtype, 0, 1, rows, fo, fi, 1.0, x->data, fi,
                td + (size_t)(b * fo * fi) * es, fi, beta,
                od + (size_t)(b * rows * fo) * es, fo);
    return CPK_OK;
  }
  for (int64_t b = 0; b < v; b++) /* out[v, r] := beta out[v, r] + t[v] */
    cpk__channel_bias(ctx, out->dtype, rows, fo, 1,
                      td + (size_t)(b * fo) * es, beta,
                      od + (size_t)(b * rows * fo) * es);
  return CPK_OK;
}

/* Mixed second derivatives (layer.h) of the weight; the bias enters
 * additively and adds nothing. Over the rows, g [rows, OUT]:
 *   to the input:  out[v] [rows, IN] += g t[v]          (J_x(W := t[v])^T g),
 *   to the weight: out[v] [OUT, IN]  += g^T u[v] [rows, IN]
 *                                       (J_W(X := u[v])^T g),
 * one strided-batched GEMM over the V columns each. */
static int linear_mixed_jac_t_mat(cpk__layer *l, cpk_context *ctx, int p,
                                  const cpk_tensor *x, const cpk_tensor *g,
                                  const cpk_tensor *t, cpk_tensor *out) {
  const linear *s = l->priv;
  const int64_t rows = linear_rows(l, x);
  const int64_t fo = s->out_features, fi = s->in_features;
  if (p != 0)
    return CPK_OK;
  cpk__gemm_strided(ctx, g->dtype, 0, 0, rows, fi, fo, 1.0, g->data, fo, 0,
                    t->data, fi, fo * fi, 1.0, out->data, fi, rows * fi,
                    cpk_tensor_numel(t) / (fo * fi));
  return CPK_OK;
}

static int linear_mixed_param_jac_t_mat(cpk__layer *l, cpk_context *ctx, int p,
                                        const cpk_tensor *x,
                                        const cpk_tensor *g,
                                        const cpk_tensor *u, cpk_tensor *out) {
  const linear *s = l->priv;
  const int64_t rows = linear_rows(l, x);
  const int64_t fo = s->out_features, fi = s->in_features;
  if (p != 0)
    return CPK_OK;
  cpk__gemm_strided(ctx, g->dtype, 1, 0, fo, fi, rows, 1.0, g->data, fo, 0,
                    u->data, fi, rows * fi, 1.0, out->data, fi, fo * fi,
                    cpk_tensor_numel(u) / (rows * fi));
  return CPK_OK;
}

/* KFRA: (1/N) sum_n J_n^T m J_n = W^T m W when a sample is one row; with
 * leading axes the Jacobian is block diagonal and the generic form applies. */
static int linear_ea_jac_t_mat_jac(cpk__layer *l, cpk_context *ctx,
                                   const cpk_tensor *x, const cpk_tensor *y,
                                   const cpk_tensor *m, cpk_tensor *out) {
  const linear *s = l->priv;
  if (x->ndim != 2)
    return cpk__ea_jac_t_mat_jac_generic(l, ctx, x, y, m, out);
  const int64_t fo = s->out_features, fi = s->in_features;
  int64_t shape[2] = {fo, fi};
  cpk_tensor *mw;
  int rc = cpk__tensor_new_on(ctx, &mw, m->dtype, 2, shape);
  if (rc != CPK_OK)
    return rc;
  const void *w = cpk__param_value(l, ctx, 0)->data;
  cpk__gemm(ctx, m->dtype, 0, 0, fo, fi, fo, 1.0, m->data, fo, w, fi, 0.0,
            mw->data, fi);
  cpk__gemm_tn_symmetric(ctx, m->dtype, fi, fo, w, fi, mw->data, fi,
                         out->data, fi);
  cpk_tensor_free(mw);
  return CPK_OK;
}

/* kaiming_uniform_(a=sqrt(5)) on W gives U(-1/sqrt(IN), 1/sqrt(IN)), and
 * the bias draws from the same interval. */
static int linear_init(cpk__layer *l, cpk__rng *rng) {
  const linear *s = l->priv;
  double bound = 1.0 / sqrt((double)s->in_features);
  for (int p = 0; p < l->nparams; p++)
    cpk__init_uniform(l->params[p].value, bound, rng);
  return CPK_OK;
}

static void linear_destroy(cpk__layer *l) { cpk__free(l->priv); }

const cpk__layer_kind cpk__linear_kind = {
    .name = "linear",
    .args = linear_args,
    .nargs = 3,
    .configure = linear_configure,
    .build = linear_build,
    .forward = linear_forward,
    .jac_t_mat = linear_jac_t_mat,
    .fills_output = 1,
    .jac_mat = linear_jac_mat,
    .param_jac_t_mat = linear_param_jac_t_mat,
    .param_jac_mat = linear_param_jac_mat,
    .init = linear_init,
    .ea_jac_t_mat_jac = linear_ea_jac_t_mat_jac,
    .param_jac_is_input = 1,
    .mixed_jac_t_mat = linear_mixed_jac_t_mat,
    .mixed_param_jac_t_mat = linear_mixed_param_jac_t_mat,
    .destroy = linear_destroy,
    .cuda = 1,
};
