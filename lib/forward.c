/*
 * forward.c: forward mode. Jacobian-vector products through every layer
 * (jac_mat for the input, param_jac_mat for the parameters), per-sample
 * input Jacobians in forward and reverse mode, and first-order error
 * propagation with a Monte Carlo check: cpk_jacobian, cpk_jvp,
 * cpk_propagate.
 *
 * For one sample with input x [D_in] and output f(x) [D_out], the Jacobian
 * J = d f / d x [D_out, D_in] is the product of the layers' Jacobians,
 * J = J_{L-1} ... J_0. Forward mode pushes the D_in columns of the
 * identity through J_0, J_1, ... (cost ~ D_in products); reverse mode pulls
 * the D_out rows back through J_{L-1}^T, ... (cost ~ D_out). Samples are
 * independent, so a block [c, N, *in] carries column j of every sample at
 * once. Independent input errors with standard deviations s [D_in] give,
 * to first order, the output covariance
 *   C = J diag(s^2) J^T = A A^T,  A = J diag(s)   [D_out, D_in]
 * and the propagated standard deviations sigma_o = sqrt(C_oo)
 * = sqrt(sum_i (J_oi s_i)^2).
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "device.h"
#include "device_pass.h"
#include "forward.h"
#include "ops.h"
#include "results.h"
#include "rng.h"

#define CPK_T float
#define CPK_SFX f32
#include "kernels/forward.inc"
#undef CPK_T
#undef CPK_SFX

#define CPK_T double
#define CPK_SFX f64
#include "kernels/forward.inc"
#undef CPK_T
#undef CPK_SFX

#ifdef CPK_HAVE_CUDA
#include "products_cuda.h"
#endif
#include "ops_dispatch.h"

/* ------------------------------------------- forward-mode operations */

void cpk__fwd_eye(const cpk_context *ctx, cpk_dtype dt, int64_t c, int64_t n,
                  int64_t d, int64_t i0, const void *s, void *out) {
  ON_CUDA(ctx, cpk__cuda_fwd_eye(ctx->gpu, dt == CPK_F64, c, n, d, i0, s, out));
  if (dt == CPK_F32)
    fwd_eye_f32(c, n, d, i0, s, out);
  else
    fwd_eye_f64(c, n, d, i0, s, out);
}

void cpk__fwd_scatter(const cpk_context *ctx, cpk_dtype dt, int64_t c,
                      int64_t n, int64_t dout, int64_t din, int64_t i0,
                      const void *r, void *jac) {
  ON_CUDA(ctx, cpk__cuda_fwd_scatter(ctx->gpu, dt == CPK_F64, c, n, dout, din,
                                     i0, r, jac));
  if (dt == CPK_F32)
    fwd_scatter_f32(c, n, dout, din, i0, r, jac);
  else
    fwd_scatter_f64(c, n, dout, din, i0, r, jac);
}

void cpk__rev_scatter(const cpk_context *ctx, cpk_dtype dt, int64_t c,
                      int64_t n, int64_t dout, int64_t din, int64_t o0,
                      const void *r, const void *s, void *jac) {
  ON_CUDA(ctx, cpk__cuda_rev_scatter(ctx->gpu, dt == CPK_F64, c, n, dout, din,
                                     o0, r, s, jac));
  if (dt == CPK_F32)
    rev_scatter_f32(c, n, dout, din, o0, r, s, jac);
  else
    rev_scatter_f64(c, n, dout, din, o0, r, s, jac);
}

/* Evaluation mode: dropout off, batch norm on its running statistics. */
static const cpk_pass_spec eval_spec = {CPK_LOSS_CROSS_ENTROPY,
                                        CPK_REDUCTION_MEAN, NULL, 0};

/* Elements of one sample at acts[i] (i = 0: the input). */
static int64_t width_at(const cpk_model *m, int i) {
  return i == 0 ? cpk__layer_in_numel(m->layers[0])
                : cpk__layer_out_numel(m->layers[i - 1]);
}

/* Shape of one sample at acts[i]. */
static void shape_at(const cpk_model *m, int i, int *ndim,
                     const int64_t **shape) {
  if (i == 0) {
    *ndim = m->in_ndim;
    *shape = m->in_shape;
  } else {
    *ndim = m->layers[i - 1]->out_ndim;
    *shape = m->layers[i - 1]->out_shape;
  }
}

static int block_at(cpk__pass *pass, int i, int64_t v, cpk_tensor **out) {
  int ndim;
  const int64_t *shape;
  shape_at(pass->model, i, &ndim, &shape);
  return cpk__block_new_on(pass->ctx, out, pass->model->dtype, v, pass->n,
                           ndim, shape);
}

int cpk__forward_eval(cpk__pass *pass, cpk_context *ctx, cpk_model *model,
                      const cpk_tensor *input) {
  int rc;
  memset(pass, 0, sizeof *pass);
  pass->ctx = ctx;
  pass->model = model;
  pass->spec = &eval_spec;
  if ((rc = cpk__check_input(model, input)) != CPK_OK ||
      (rc = cpk__device_covers(ctx, model, 0, NULL)) != CPK_OK)
    return rc;
  cpk__context_apply_threads(ctx);
  /* On the device the parameters are copied over for this call, released
   * by cpk__forward_end. */
  if (cpk__on_cuda(ctx) && (rc = cpk__model_to_device(ctx, model)) != CPK_OK)
    return rc;
  return cpk__forward(pass, input);
}

void cpk__forward_end(cpk__pass *pass) {
  cpk__pass_release(pass);
  if (pass->model != NULL && cpk__on_cuda(pass->ctx))
    cpk__model_release_device(pass->model);
}

/* dst (host, same dtype and size) := src (host or device). */
static int fetch(cpk_context *ctx, const cpk_tensor *src, cpk_tensor *dst) {
  const size_t bytes =
      (size_t)cpk_tensor_numel(src) * cpk_dtype_size(src->dtype);
  cpk_tensor *h = NULL;
  int rc = CPK_OK;
  if (src->device == NULL) {
    memcpy(dst->data, src->data, bytes);
    return CPK_OK;
  }
  if ((rc = cpk__device_sync(ctx)) == CPK_OK &&
      (rc = cpk_tensor_copy_to_host(src, &h)) == CPK_OK)
    memcpy(dst->data, h->data, bytes);
  cpk_tensor_free(h);
  return rc;
}

/* A new tensor holding `t`, brought to the host when it lives on the
 * device (t is freed); *t is replaced. */
static int bring_home(cpk_context *ctx, cpk_tensor **t) {
  if (*t == NULL || (*t)->device == NULL)
    return CPK_OK;
  cpk_tensor *h = NULL;
  int rc = cpk__device_sync(ctx);
  if (rc == CPK_OK)
    rc = cpk_tensor_copy_to_host(*t, &h);
  cpk_tensor_free(*t);
  *t = h;
  return rc;
}

int cpk__jvp_through(cpk__pass *pass, int from, int to, const cpk_tensor *in,
                     cpk_tensor **out) {
  const cpk_model *m = pass->model;
  const int64_t v = cpk__block_v(in, pass->n, width_at(m, from));
  const cpk_tensor *src = in;
  cpk_tensor *cur = NULL;
  *out = NULL;
  if (from == to)
    return cpk__tensor_to_device(pass->ctx, in, in->dtype, out);
  for (int i = from; i < to; i++) {
    cpk__layer *l = m->layers[i];
    cpk_tensor *next = NULL;
    int rc = block_at(pass, i + 1, v, &next);
    if (rc == CPK_OK)
      rc = l->kind->jac_mat(l, pass->ctx, pass->acts[i], pass->acts[i + 1], src,
                            next);
    cpk_tensor_free(cur);
    if (rc != CPK_OK) {
      cpk_tensor_free(next);
      return rc;
    }
    src = cur = next;
  }
  *out = cur;
  return CPK_OK;
}

int cpk__vjp_through(cpk__pass *pass, int from, int to, const cpk_tensor *in,
                     cpk_tensor **out) {
  const cpk_model *m = pass->model;
  const int64_t v = cpk__block_v(in, pass->n, width_at(m, to));
  const cpk_tensor *src = in;
  cpk_tensor *cur = NULL;
  *out = NULL;
  if (from == to)
    return cpk__tensor_to_device(pass->ctx, in, in->dtype, out);
  for (int i = to - 1; i >= from; i--) {
    cpk__layer *l = m->layers[i];
    cpk_tensor *next = NULL;
    int rc = block_at(pass, i, v, &next);
    if (rc == CPK_OK)
      rc = l->kind->jac_t_mat(l, pass->ctx, pass->acts[i], pass->acts[i + 1],
                              src, next);
    cpk_tensor_free(cur);
    if (rc != CPK_OK) {
      cpk_tensor_free(next);
      return rc;
    }
    src = cur = next;
  }
  *out = cur;
  return CPK_OK;
}

/* ----------------------------------------------------------- output JVP */

/* A tangent of parameter k: model dtype, shape S or [v, *S]. */
static int check_param_tangent(const cpk_model *m, int k, int64_t v,
                               const cpk_tensor *t) {
  const cpk__layer *l = m->params[k].layer;
  const cpk__param *p = &l->params[m->params[k].slot];
  char want[128], got[128];
  int64_t shape[CPK_MAX_DIMS];
  if (!p->trainable)
    return cpk__fail(CPK_EINVAL,
                     "tangent of %s: %s is a buffer, not a parameter",
                     m->params[k].name, m->params[k].name);
  if (t->dtype != m->dtype)
    return cpk__fail(CPK_EINVAL, "tangent of %s: expected %s, got %s",
                     m->params[k].name, cpk_dtype_name(m->dtype),
                     cpk_dtype_name(t->dtype));
  int ok = 0;
  if (v == 1 && t->ndim == p->ndim) {
    ok = 1;
    for (int a = 0; ok && a < p->ndim; a++)
      ok = t->shape[a] == p->shape[a];
  }
  if (!ok && t->ndim == p->ndim + 1 && t->shape[0] == v) {
    ok = 1;
    for (int a = 0; ok && a < p->ndim; a++)
      ok = t->shape[a + 1] == p->shape[a];
  }
  if (!ok) {
    shape[0] = v;
    memcpy(shape + 1, p->shape, (size_t)p->ndim * sizeof *shape);
    return cpk__fail(CPK_ESHAPE, "tangent of %s: expected shape %s, got %s",
                     m->params[k].name,
                     cpk_shape_str(want, sizeof want, p->ndim + 1, shape),
                     cpk_shape_str(got, sizeof got, t->ndim, t->shape));
  }
  if (l->kind->param_jac_mat == NULL)
    return cpk__fail(CPK_ENOTSUP,
                     "%s: forward-mode products with respect to %s are not "
                     "implemented for %s layers yet",
                     l->where, m->params[k].name, l->kind->name);
  return CPK_OK;
}

/* The input tangent: model dtype, exactly [v, N, *in]. */
static int check_input_tangent(const cpk__pass *pass, int64_t v,
                               const cpk_tensor *t) {
  const cpk_model *m = pass->model;
  char want[128], got[128];
  int64_t shape[CPK_MAX_DIMS];
  if (t->dtype != m->dtype)
    return cpk__fail(CPK_EINVAL, "input tangent: expected %s, got %s",
                     cpk_dtype_name(m->dtype), cpk_dtype_name(t->dtype));
  int ok =
      t->ndim == m->in_ndim + 2 && t->shape[0] == v && t->shape[1] == pass->n;
  for (int a = 0; ok && a < m->in_ndim; a++)
    ok = t->shape[a + 2] == m->in_shape[a];
  if (!ok) {
    shape[0] = v;
    shape[1] = pass->n;
    memcpy(shape + 2, m->in_shape, (size_t)m->in_ndim * sizeof *shape);
    return cpk__fail(CPK_ESHAPE, "input tangent: expected shape %s, got %s",
                     cpk_shape_str(want, sizeof want, m->in_ndim + 2, shape),
                     cpk_shape_str(got, sizeof got, t->ndim, t->shape));
  }
  return CPK_OK;
}

int cpk__output_jvp(cpk__pass *pass, int64_t v, const cpk_tensor *input_tangent,
                    const cpk_tensor *const *param_tangents, cpk_tensor **out) {
  cpk_model *m = pass->model;
  cpk_tensor *t = NULL; /* t_i, owned; NULL while still zero */
  const cpk_tensor *src = input_tangent;
  int rc;
  *out = NULL;
  if (v < 1)
    return cpk__fail(CPK_EINVAL, "tangents: expected V >= 1 columns, got %lld",
                     (long long)v);
  if (input_tangent != NULL &&
      (rc = check_input_tangent(pass, v, input_tangent)) != CPK_OK)
    return rc;
  for (int k = 0; param_tangents != NULL && k < m->nparams; k++)
    if (param_tangents[k] != NULL &&
        (rc = check_param_tangent(m, k, v, param_tangents[k])) != CPK_OK)
      return rc;
  for (int i = 0; i < m->nlayers; i++) {
    cpk__layer *l = m->layers[i];
    int here = 0;
    for (int k = 0; param_tangents != NULL && k < m->nparams; k++)
      here |= param_tangents[k] != NULL && m->params[k].layer == l;
    if (src == NULL && !here)
      continue; /* t_{i+1} = J t_i = 0 */
    cpk_tensor *next = NULL;
    double beta = 0.0;
    CPK__TRY(rc, block_at(pass, i + 1, v, &next), fail);
    if (src != NULL) {
      /* t_{i+1} := J_x t_i */
      rc = l->kind->jac_mat(l, pass->ctx, pass->acts[i], pass->acts[i + 1], src,
                            next);
      beta = 1.0;
    }
    /* t_{i+1} += J_theta v_p for the layer's parameters */
    for (int k = 0; rc == CPK_OK && param_tangents != NULL && k < m->nparams;
         k++) {
      if (param_tangents[k] == NULL || m->params[k].layer != l)
        continue;
      rc = l->kind->param_jac_mat(l, pass->ctx, m->params[k].slot,
                                  pass->acts[i], param_tangents[k], beta, next);
      beta = 1.0;
    }
    cpk_tensor_free(t);
    t = next;
    src = t;
    if (rc != CPK_OK)
      goto fail;
  }
  if (src == NULL) /* every tangent zero */
    CPK__TRY(rc, block_at(pass, m->nlayers, v, &t), fail);
  else if (t == NULL) /* no layers above the input tangent: impossible */
    CPK__TRY(rc, cpk__tensor_to_device(pass->ctx, src, src->dtype, &t), fail);
  *out = t;
  return CPK_OK;
fail:
  cpk_tensor_free(t);
  return rc;
}

/* ------------------------------------------------------- input Jacobian */

int cpk__couples_samples(const cpk_model *m) {
  for (int i = 0; i < m->nlayers; i++) {
    const cpk__layer *l = m->layers[i];
    if (l->kind != &cpk__batchnorm1d_kind && l->kind != &cpk__batchnorm2d_kind)
      continue;
    int running = 0;
    for (int p = 0; p < l->nparams; p++)
      running |= strcmp(l->params[p].name, "running_mean") == 0;
    if (!running) {
      cpk__fail(CPK_ENOTSUP,
                "%s: batch norm without running statistics "
                "(track_running_stats=false) normalises each batch with its "
                "own statistics, so one sample's output depends on the "
                "others and a per-sample Jacobian is not defined",
                l->where);
      return 1;
    }
  }
  return 0;
}

/* Columns per chunk: `live` blocks of [c, N, widest] within the budget. */
static int64_t chunk_columns(const cpk__pass *pass, int64_t total, int live) {
  const cpk_model *m = pass->model;
  int64_t widest = 1;
  for (int i = 0; i <= m->nlayers; i++)
    if (width_at(m, i) > widest)
      widest = width_at(m, i);
  const double per = (double)live * (double)pass->n * (double)widest *
                     (double)cpk_dtype_size(m->dtype);
  double c = (double)pass->ctx->work_bytes / per;
  if (c < 1.0)
    c = 1.0;
  return c >= (double)total ? total : (int64_t)c;
}

int cpk__input_jacobian(cpk__pass *pass, int reverse, const cpk_tensor *scale,
                        cpk_tensor *jac) {
  const cpk_model *m = pass->model;
  const int top = m->nlayers;
  const int64_t n = pass->n, din = width_at(m, 0), dout = width_at(m, top);
  const int64_t total = reverse ? dout : din;
  const int64_t c = chunk_columns(pass, total, 2);
  const cpk_dtype dt = m->dtype;
  int rc = CPK_OK;
  for (int64_t j0 = 0; j0 < total && rc == CPK_OK; j0 += c) {
    const int64_t cc = total - j0 < c ? total - j0 : c;
    cpk_tensor *eye = NULL, *r = NULL;
    /* Forward: columns j0.. of diag(s) at the input, pushed to the output
     * (r[j, n, o] = J_n[o, j0+j] s[n, j0+j]). Reverse: rows j0.. of the
     * identity at the output, pulled back (r[j, n, i] = J_n[j0+j, i]). */
    rc = block_at(pass, reverse ? top : 0, cc, &eye);
    if (rc == CPK_OK) {
      const void *s = reverse || scale == NULL ? NULL : scale->data;
      cpk__fwd_eye(pass->ctx, dt, cc, n, total, j0, s, eye->data);
      rc = reverse ? cpk__vjp_through(pass, 0, top, eye, &r)
                   : cpk__jvp_through(pass, 0, top, eye, &r);
    }
    if (rc == CPK_OK && !reverse) {
      cpk__fwd_scatter(pass->ctx, dt, cc, n, dout, din, j0, r->data,
                       jac->data);
    } else if (rc == CPK_OK) {
      const void *s = scale == NULL ? NULL : scale->data;
      cpk__rev_scatter(pass->ctx, dt, cc, n, dout, din, j0, r->data, s,
                       jac->data);
    }
    cpk_tensor_free(eye);
    cpk_tensor_free(r);
  }
  return rc;
}

/* ------------------------------------------------------------ public API */

int cpk_jacobian(cpk_context *ctx, cpk_model *model, const cpk_tensor *input,
                 cpk_jacobian_mode mode, cpk_tensor **jac) {
  cpk__pass pass;
  int64_t shape[CPK_MAX_DIMS];
  int rc;
  *jac = NULL;
  if (mode != CPK_JACOBIAN_AUTO && mode != CPK_JACOBIAN_FORWARD &&
      mode != CPK_JACOBIAN_REVERSE)
    return cpk__fail(CPK_EINVAL, "unknown Jacobian mode %d", (int)mode);
  CPK__TRY(rc, cpk__forward_eval(&pass, ctx, model, input), done);
  if (cpk__couples_samples(model)) {
    rc = CPK_ENOTSUP;
    goto done;
  }
  const cpk__layer *last = model->layers[model->nlayers - 1];
  const int ndim = 1 + last->out_ndim + model->in_ndim;
  if (ndim > CPK_MAX_DIMS) {
    rc = cpk__fail(CPK_EINVAL,
                   "jacobian: (N, *output_shape, *input_shape) would have %d "
                   "axes, at most %d are supported",
                   ndim, CPK_MAX_DIMS);
    goto done;
  }
  shape[0] = pass.n;
  memcpy(shape + 1, last->out_shape, (size_t)last->out_ndim * sizeof *shape);
  memcpy(shape + 1 + last->out_ndim, model->in_shape,
         (size_t)model->in_ndim * sizeof *shape);
  CPK__TRY(rc, cpk__tensor_new_on(ctx, jac, model->dtype, ndim, shape),
           done);
  const int64_t din = width_at(model, 0),
                dout = width_at(model, model->nlayers);
  const int reverse = mode == CPK_JACOBIAN_REVERSE ||
                      (mode == CPK_JACOBIAN_AUTO && din >= dout);
  rc = cpk__input_jacobian(&pass, reverse, NULL, *jac);
  if (rc == CPK_OK) /* the one download of the result */
    rc = bring_home(ctx, jac);
done:
  cpk__forward_end(&pass);
  if (rc != CPK_OK) {
    cpk_tensor_free(*jac);
    *jac = NULL;
  }
  return rc;
}

/* V of a public tangent: `base` axes give V = 1, base + 1 give shape[0];
 * -1 when neither. */
static int64_t tangent_v(const cpk_tensor *t, int base) {
  if (t->ndim == base)
    return 1;
  if (t->ndim == base + 1)
    return t->shape[0];
  return -1;
}

int cpk_jvp(cpk_context *ctx, cpk_model *model, const cpk_tensor *input,
            const cpk_tensor *input_tangent,
            const cpk_tensor *const *param_tangents, cpk_tensor **out) {
  cpk__pass pass;
  cpk_tensor *it = NULL, **pt = NULL, view;
  const cpk_tensor *itv = NULL;
  int64_t v = 0;
  int rc;
  char what[64];
  *out = NULL;
  CPK__TRY(rc, cpk__forward_eval(&pass, ctx, model, input), done);
  /* V from the tangents given: they must agree. A tangent with a wrong
   * number of axes (vk < 0) is left to the shape checks, which say how. */
  if (input_tangent != NULL && tangent_v(input_tangent, model->in_ndim + 1) > 0)
    v = tangent_v(input_tangent, model->in_ndim + 1);
  for (int k = 0; param_tangents != NULL && k < model->nparams; k++) {
    const cpk_tensor *t = param_tangents[k];
    if (t == NULL)
      continue;
    const cpk__param *p =
        &model->params[k].layer->params[model->params[k].slot];
    const int64_t vk = tangent_v(t, p->ndim);
    if (vk <= 0)
      continue;
    if (v == 0) {
      v = vk;
    } else if (vk != v) {
      rc = cpk__fail(CPK_ESHAPE,
                     "tangent of %s: %lld columns, but the other tangents "
                     "have %lld",
                     model->params[k].name, (long long)vk, (long long)v);
      goto done;
    }
  }
  if (v == 0)
    v = 1;
  if (input_tangent != NULL) {
    CPK__TRY(rc,
             cpk__check_finite_in(input_tangent, model->dtype, "input tangent"),
             done);
    CPK__TRY(rc, cpk__tensor_to_device(ctx, input_tangent, model->dtype, &it),
             done);
    if (it->ndim == model->in_ndim + 1 && it->ndim < CPK_MAX_DIMS) {
      int64_t shape[CPK_MAX_DIMS];
      shape[0] = 1;
      memcpy(shape + 1, it->shape, (size_t)it->ndim * sizeof *shape);
      cpk__tensor_view(&view, it->dtype, it->data, it->ndim + 1, shape);
      view.device = it->device;
      itv = &view;
    } else {
      itv = it;
    }
  }
  if (param_tangents != NULL) {
    pt = cpk__calloc((size_t)model->nparams * sizeof *pt);
    if (pt == NULL) {
      rc = CPK_ENOMEM;
      goto done;
    }
    for (int k = 0; k < model->nparams; k++) {
      if (param_tangents[k] == NULL)
        continue;
      snprintf(what, sizeof what, "tangent of %s", model->params[k].name);
      CPK__TRY(rc, cpk__check_finite_in(param_tangents[k], model->dtype, what),
               done);
      CPK__TRY(rc,
               cpk__tensor_to_device(ctx, param_tangents[k], model->dtype,
                                     &pt[k]),
               done);
    }
  }
  rc = cpk__output_jvp(&pass, v, itv, (const cpk_tensor *const *)pt, out);
  if (rc == CPK_OK) /* the one download of the result */
    rc = bring_home(ctx, out);
done:
  if (pt != NULL)
    for (int k = 0; k < model->nparams; k++)
      cpk_tensor_free(pt[k]);
  cpk__free(pt);
  cpk_tensor_free(it);
  cpk__forward_end(&pass);
  return rc;
}

/* sigma as [N, D_in] in the model's dtype: given as input_shape (shared by
 * the samples) or (N, *input_shape); finite and >= 0. */
static int sigma_matrix(const cpk_model *m, int64_t n, const cpk_tensor *sigma,
                        cpk_tensor **out) {
  char want1[128], want2[128], got[128];
  int64_t shape[CPK_MAX_DIMS];
  const int64_t din = cpk__layer_in_numel(m->layers[0]);
  *out = NULL;
  if (sigma == NULL)
    return cpk__fail(CPK_EINVAL, "sigma: missing");
  if (!cpk__is_float(sigma->dtype))
    return cpk__fail(CPK_EINVAL, "sigma: expected float32 or float64, got %s",
                     cpk_dtype_name(sigma->dtype));
  int shared = sigma->ndim == m->in_ndim, per = sigma->ndim == m->in_ndim + 1;
  for (int a = 0; shared && a < m->in_ndim; a++)
    shared = sigma->shape[a] == m->in_shape[a];
  per = per && sigma->shape[0] == n;
  for (int a = 0; per && a < m->in_ndim; a++)
    per = sigma->shape[a + 1] == m->in_shape[a];
  if (!shared && !per) {
    shape[0] = n;
    memcpy(shape + 1, m->in_shape, (size_t)m->in_ndim * sizeof *shape);
    return cpk__fail(
        CPK_ESHAPE,
        "sigma: expected shape %s (input_shape) or %s (N, *input_shape), "
        "got %s",
        cpk_shape_str(want1, sizeof want1, m->in_ndim, m->in_shape),
        cpk_shape_str(want2, sizeof want2, m->in_ndim + 1, shape),
        cpk_shape_str(got, sizeof got, sigma->ndim, sigma->shape));
  }
  int rc = cpk__check_finite_in(sigma, m->dtype, "sigma");
  if (rc != CPK_OK)
    return rc;
  const int64_t count = cpk_tensor_numel(sigma);
  for (int64_t i = 0; i < count; i++)
    if (cpk_tensor_get(sigma, i) < 0.0)
      return cpk__fail(CPK_ERANGE,
                       "sigma: element %lld is %g; a standard deviation must "
                       "not be negative",
                       (long long)i, cpk_tensor_get(sigma, i));
  int64_t s2[2] = {n, din};
  if ((rc = cpk_tensor_new(out, m->dtype, 2, s2)) != CPK_OK)
    return rc;
  for (int64_t j = 0; j < n; j++)
    for (int64_t i = 0; i < din; i++)
      cpk_tensor_set(*out, j * din + i,
                     cpk_tensor_get(sigma, shared ? i : j * din + i));
  return CPK_OK;
}

/* C_n = A_n A_n^T with A_n = J_n diag(s_n), cov [N, D_out, D_out].
 * D_in < D_out: forward mode, columns of A in chunks of c,
 *   C_n += R_n^T R_n,  R_n = r[:, n, :] [c, D_out] (row stride N*D_out);
 * else reverse mode: A [N, D_out, D_in] whole (as the Jacobian), then one
 * GEMM per sample. */
static int covariance(cpk__pass *pass, const cpk_tensor *s, cpk_tensor *cov) {
  const cpk_model *m = pass->model;
  const int64_t n = pass->n, din = width_at(m, 0),
                dout = width_at(m, m->nlayers);
  const cpk_dtype dt = m->dtype;
  const size_t es = cpk_dtype_size(dt);
  char *cd = cov->data;
  int rc = CPK_OK;
  if (din < dout) {
    const int64_t c = chunk_columns(pass, din, 2);
    for (int64_t j0 = 0; j0 < din && rc == CPK_OK; j0 += c) {
      const int64_t cc = din - j0 < c ? din - j0 : c;
      cpk_tensor *eye = NULL, *r = NULL;
      rc = block_at(pass, 0, cc, &eye);
      if (rc == CPK_OK) {
        cpk__fwd_eye(pass->ctx, dt, cc, n, din, j0, s->data, eye->data);
        rc = cpk__jvp_through(pass, 0, m->nlayers, eye, &r);
      }
      for (int64_t j = 0; rc == CPK_OK && j < n; j++) {
        const char *rj = (const char *)r->data + (size_t)(j * dout) * es;
        cpk__gemm(pass->ctx, dt, 1, 0, dout, dout, cc, 1.0, rj, n * dout, rj,
                  n * dout, 1.0, cd + (size_t)(j * dout * dout) * es, dout);
      }
      cpk_tensor_free(eye);
      cpk_tensor_free(r);
    }
    return rc;
  }
  cpk_tensor *a = NULL;
  int64_t shape[3] = {n, dout, din};
  if ((rc = cpk__tensor_new_on(pass->ctx, &a, dt, 3, shape)) != CPK_OK)
    return cpk__fail_prefix(rc, "propagate: J diag(sigma)");
  rc = cpk__input_jacobian(pass, 1, s, a);
  const char *ad = a->data;
  for (int64_t j = 0; rc == CPK_OK && j < n; j++) {
    const char *aj = ad + (size_t)(j * dout * din) * es;
    cpk__gemm(pass->ctx, dt, 0, 1, dout, dout, din, 1.0, aj, din, aj, din, 0.0,
              cd + (size_t)(j * dout * dout) * es, dout);
  }
  cpk_tensor_free(a);
  return rc;
}

/* Monte Carlo: `samples` draws x_n + s_n * z (z ~ N(0, I)) per sample,
 * through the forward pass in chunks of k draws (a batch [k*N, *in] whose
 * activations fit the budget); the mean and the standard deviation (with
 * S - 1) of each output, from moments shifted by f0 = f(x). The draws come
 * from a generator seeded with the context's seed at every call. */
static int monte_carlo(cpk_context *ctx, cpk_model *m, const cpk_tensor *x,
                       const cpk_tensor *s, const cpk_tensor *f0,
                       int64_t samples, cpk_results *res) {
  const int64_t n = x->shape[0], din = width_at(m, 0),
                dout = width_at(m, m->nlayers);
  const cpk_dtype dt = m->dtype;
  int64_t all = 0;
  for (int i = 0; i <= m->nlayers; i++)
    all += width_at(m, i);
  double per = (double)n * (double)all * (double)cpk_dtype_size(dt);
  double kd = (double)ctx->work_bytes / per;
  int64_t k = kd < 1.0 ? 1 : kd >= (double)samples ? samples : (int64_t)kd;
  double *a1 = NULL, *a2 = NULL;
  cpk_tensor *mean = NULL, *sd = NULL;
  size_t bytes;
  cpk__rng rng;
  int rc;
  cpk__rng_seed(&rng, ctx->seed);
  CPK__TRY(rc,
           cpk__mul_size((size_t)(n * dout), sizeof(double), &bytes,
                         "Monte Carlo moments"),
           done);
  a1 = cpk__calloc(bytes);
  a2 = cpk__calloc(bytes);
  if (a1 == NULL || a2 == NULL) {
    rc = CPK_ENOMEM;
    goto done;
  }
  for (int64_t s0 = 0; s0 < samples; s0 += k) {
    const int64_t kk = samples - s0 < k ? samples - s0 : k;
    int64_t shape[CPK_MAX_DIMS];
    cpk_tensor *xs = NULL;
    cpk__pass pass = {.ctx = ctx, .model = m, .spec = &eval_spec};
    shape[0] = kk * n;
    memcpy(shape + 1, m->in_shape, (size_t)m->in_ndim * sizeof *shape);
    rc = cpk_tensor_new(&xs, dt, m->in_ndim + 1, shape);
    if (rc == CPK_OK) {
      if (dt == CPK_F32)
        mc_draw_f32(kk, n, din, x->data, s->data, &rng, xs->data);
      else
        mc_draw_f64(kk, n, din, x->data, s->data, &rng, xs->data);
      rc = cpk__forward(&pass, xs);
    }
    /* On the device the draws go up (cpk__forward) and the outputs come
     * down, so that CPU and CUDA draw the same numbers. */
    cpk_tensor *yh = NULL;
    if (rc == CPK_OK && cpk__on_cuda(ctx) &&
        (rc = cpk__device_sync(ctx)) == CPK_OK)
      rc = cpk_tensor_copy_to_host(pass.acts[m->nlayers], &yh);
    if (rc == CPK_OK) {
      const void *y = yh != NULL ? yh->data : pass.acts[m->nlayers]->data;
      if (dt == CPK_F32)
        mc_accum_f32(kk, n * dout, y, f0->data, a1, a2);
      else
        mc_accum_f64(kk, n * dout, y, f0->data, a1, a2);
    }
    cpk_tensor_free(yh);
    cpk__pass_release(&pass);
    cpk_tensor_free(xs);
    if (rc != CPK_OK)
      goto done;
  }
  CPK__TRY(rc,
           cpk__results_alloc(res, "mc_mean", dt, f0->ndim, f0->shape, &mean),
           done);
  CPK__TRY(rc,
           cpk__results_alloc(res, "mc_sigma", dt, f0->ndim, f0->shape, &sd),
           done);
  for (int64_t i = 0; i < n * dout; i++) {
    const double sn = (double)samples, mu = a1[i] / sn;
    const double var = (a2[i] - a1[i] * mu) / (sn - 1.0);
    cpk_tensor_set(mean, i, cpk_tensor_get(f0, i) + mu);
    cpk_tensor_set(sd, i, sqrt(var > 0.0 ? var : 0.0));
  }
done:
  cpk__free(a1);
  cpk__free(a2);
  return rc;
}

int cpk_propagate(cpk_context *ctx, cpk_model *model, const cpk_tensor *input,
                  const cpk_tensor *sigma, int64_t samples, cpk_results **out) {
  cpk__pass pass;
  cpk_results *res = NULL;
  cpk_tensor *s = NULL, *f0 = NULL, *cov = NULL, *sd = NULL;
  cpk_tensor *s_dev = NULL, *cov_dev = NULL, *x_host = NULL;
  int rc;
  *out = NULL;
  memset(&pass, 0, sizeof pass);
  if (samples < 0 || samples == 1)
    return cpk__fail(CPK_EINVAL,
                     "samples: expected 0 (no Monte Carlo) or at least 2 "
                     "draws, got %lld",
                     (long long)samples);
  CPK__TRY(rc, cpk__forward_eval(&pass, ctx, model, input), done);
  if (cpk__couples_samples(model)) {
    rc = CPK_ENOTSUP;
    goto done;
  }
  const int64_t n = pass.n, dout = width_at(model, model->nlayers);
  const cpk_tensor *y = pass.acts[model->nlayers];
  CPK__TRY(rc, sigma_matrix(model, n, sigma, &s), done);
  CPK__TRY(rc, cpk__results_new(&res), done);
  CPK__TRY(
      rc,
      cpk__results_alloc(res, "output", model->dtype, y->ndim, y->shape, &f0),
      done);
  CPK__TRY(rc, fetch(ctx, y, f0), done);
  /* sigma_o = sqrt(C_oo), C = J diag(s^2) J^T per sample. */
  int64_t cshape[3] = {n, dout, dout};
  CPK__TRY(
      rc,
      cpk__results_alloc(res, "sigma", model->dtype, y->ndim, y->shape, &sd),
      done);
  CPK__TRY(rc,
           cpk__results_alloc(res, "covariance", model->dtype, 3, cshape, &cov),
           done);
  if (cpk__on_cuda(ctx)) { /* computed there, downloaded once */
    CPK__TRY(rc, cpk__tensor_to_device(ctx, s, s->dtype, &s_dev), done);
    CPK__TRY(rc, cpk__tensor_new_on(ctx, &cov_dev, model->dtype, 3, cshape),
             done);
    CPK__TRY(rc, covariance(&pass, s_dev, cov_dev), done);
    CPK__TRY(rc, fetch(ctx, cov_dev, cov), done);
  } else {
    CPK__TRY(rc, covariance(&pass, s, cov), done);
  }
  for (int64_t j = 0; j < n; j++)
    for (int64_t o = 0; o < dout; o++) {
      double c = cpk_tensor_get(cov, (j * dout + o) * dout + o);
      cpk_tensor_set(sd, j * dout + o, sqrt(c > 0.0 ? c : 0.0));
    }
  if (samples > 0) {
    /* acts[0] is the input in the model's dtype (the draws are made on
     * the host, from its host copy on a device pass). */
    const cpk_tensor *x = pass.acts[0];
    if (x->device != NULL) {
      CPK__TRY(rc, cpk_tensor_copy_to_host(x, &x_host), done);
      x = x_host;
    }
    rc = monte_carlo(ctx, model, x, s, f0, samples, res);
  }
done:
  cpk__forward_end(&pass);
  cpk_tensor_free(s);
  cpk_tensor_free(s_dev);
  cpk_tensor_free(cov_dev);
  cpk_tensor_free(x_host);
  if (rc != CPK_OK)
    cpk_results_free(res);
  else
    *out = res;
  return rc;
}
