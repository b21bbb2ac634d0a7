/* hessian_terms.c: the per-sample Hessian at a layer output as factor,
 * diagonal and lazy-row terms (see hessian_terms.h). The terms live on the
 * device of the pass's context and are only touched through operations
 * (ops.h, ops_hessian.h). */
#include <string.h>

#include "device.h"
#include "diag_common.h"
#include "hessian_terms.h"
#include "ops.h"
#include "ops_hessian.h"

void cpk__hterms_free(cpk__hterms *h) {
  cpk_tensor_free(h->f);
  cpk_tensor_free(h->sign);
  cpk_tensor_free(h->d);
  cpk_tensor_free(h->ls);
  cpk_tensor_free(h->le);
  memset(h, 0, sizeof *h);
}

/* Per-sample feature count of the terms (D). */
static int64_t features(const cpk__hterms *h) {
  if (h->f)
    return cpk_tensor_numel(h->f) / (h->f->shape[0] * h->n);
  if (h->d)
    return cpk_tensor_numel(h->d) / h->n;
  return h->le ? h->le->shape[1] : 0;
}

int cpk__hterms_start(cpk__hterms *h, const cpk_context *ctx,
                      const cpk_tensor *sqrt_exact) {
  memset(h, 0, sizeof *h);
  h->ctx = ctx;
  h->n = sqrt_exact->shape[1];
  int64_t sshape[2] = {sqrt_exact->shape[0], h->n};
  int rc = cpk__tensor_to_device(ctx, sqrt_exact, sqrt_exact->dtype, &h->f);
  if (rc == CPK_OK)
    rc = cpk__tensor_new_on(ctx, &h->sign, sqrt_exact->dtype, 2, sshape);
  if (rc == CPK_OK)
    cpk__fill(ctx, h->sign->dtype, sshape[0] * sshape[1], 1.0,
              h->sign->data);
  return rc;
}

/* Append a signed block [V2, N, *D] (taking ownership) to the factor. */
static int append_factor(cpk__hterms *h, cpk_tensor *blk, cpk_tensor *sign) {
  if (h->f == NULL) {
    h->f = blk;
    h->sign = sign;
    return CPK_OK;
  }
  const size_t es = cpk_dtype_size(blk->dtype);
  const cpk_dtype dt = blk->dtype;
  int64_t shape[CPK_MAX_DIMS];
  memcpy(shape, h->f->shape, sizeof shape);
  shape[0] = h->f->shape[0] + blk->shape[0];
  int64_t sshape[2] = {shape[0], h->n};
  cpk_tensor *f = NULL, *s = NULL;
  int rc = cpk__tensor_new_on(h->ctx, &f, dt, h->f->ndim, shape);
  if (rc == CPK_OK)
    rc = cpk__tensor_new_on(h->ctx, &s, dt, 2, sshape);
  if (rc == CPK_OK) {
    int64_t a = cpk_tensor_numel(h->f);
    cpk__copy(h->ctx, dt, a, h->f->data, f->data);
    cpk__copy(h->ctx, dt, cpk_tensor_numel(blk), blk->data,
              (char *)f->data + (size_t)a * es);
    a = cpk_tensor_numel(h->sign);
    cpk__copy(h->ctx, dt, a, h->sign->data, s->data);
    cpk__copy(h->ctx, dt, cpk_tensor_numel(sign), sign->data,
              (char *)s->data + (size_t)a * es);
    cpk_tensor_free(h->f);
    cpk_tensor_free(h->sign);
    h->f = f;
    h->sign = s;
  } else {
    cpk_tensor_free(f);
  }
  cpk_tensor_free(blk);
  cpk_tensor_free(sign);
  return rc;
}

/* Lazy rows as a factor block: L[k, n, :] = sqrt|s[n,k]| W[k,:] o e[n,:]. */
static int expand_lazy(cpk__hterms *h, const cpk_tensor *like) {
  if (h->ls == NULL)
    return CPK_OK;
  const int64_t n = h->n, k = h->ls->shape[1], d = h->lw->shape[1];
  int64_t shape[CPK_MAX_DIMS], sshape[2] = {k, n};
  memcpy(shape + 1, like->shape, (size_t)like->ndim * sizeof *shape);
  shape[0] = k; /* [K, N, *D] with like = [N, *D] */
  cpk_tensor *blk = NULL, *sign = NULL;
  int rc = cpk__tensor_new_on(h->ctx, &blk, h->ls->dtype, like->ndim + 1,
                              shape);
  if (rc == CPK_OK)
    rc = cpk__tensor_new_on(h->ctx, &sign, h->ls->dtype, 2, sshape);
  if (rc != CPK_OK) {
    cpk_tensor_free(blk);
    return rc;
  }
  cpk__lazy_rows(h->ctx, blk->dtype, k, n, d, h->ls->data, h->lw->data,
                 h->le->data, blk->data, sign->data);
  cpk_tensor_free(h->ls);
  cpk_tensor_free(h->le);
  h->ls = h->le = NULL;
  h->lw = NULL;
  return append_factor(h, blk, sign);
}

/* A diagonal term as a factor block of one-hot columns:
 * D[i, n, :] = sqrt|d[n,i]| e_i, sign[i, n] = sign(d[n,i]). */
static int expand_diagonal(cpk__hterms *h) {
  if (h->d == NULL)
    return CPK_OK;
  const int64_t n = h->n, d = cpk_tensor_numel(h->d) / n;
  int64_t shape[CPK_MAX_DIMS], sshape[2] = {d, n};
  memcpy(shape + 1, h->d->shape, (size_t)h->d->ndim * sizeof *shape);
  shape[0] = d;
  cpk_tensor *blk = NULL, *sign = NULL;
  int rc = cpk__tensor_new_on(h->ctx, &blk, h->d->dtype, h->d->ndim + 1,
                              shape);
  if (rc == CPK_OK)
    rc = cpk__tensor_new_on(h->ctx, &sign, h->d->dtype, 2, sshape);
  if (rc != CPK_OK) {
    cpk_tensor_free(blk);
    return rc;
  }
  cpk__diag_to_factor(h->ctx, blk->dtype, n, d, h->d->data, blk->data,
                      sign->data);
  cpk_tensor_free(h->d);
  h->d = NULL;
  return append_factor(h, blk, sign);
}

/* F <- J^T F through layer l. */
static int factor_through(cpk__hterms *h, cpk__layer *l, cpk_context *ctx,
                          const cpk_tensor *x, const cpk_tensor *y) {
  if (h->f == NULL)
    return CPK_OK;
  int64_t shape[CPK_MAX_DIMS] = {h->f->shape[0]};
  memcpy(shape + 1, x->shape, (size_t)x->ndim * sizeof *shape);
  cpk_tensor *out; /* zeroed only for kinds that add into it */
  int rc = l->kind->fills_output
               ? cpk__tensor_new_on_uninit(ctx, &out, h->f->dtype,
                                           x->ndim + 1, shape)
               : cpk__tensor_new_on(ctx, &out, h->f->dtype, x->ndim + 1,
                                    shape);
  if (rc == CPK_OK)
    rc = l->kind->jac_t_mat(l, ctx, x, y, h->f, out);
  if (rc != CPK_OK) {
    cpk_tensor_free(out);
    return rc;
  }
  cpk_tensor_free(h->f);
  h->f = out;
  return CPK_OK;
}

/* d <- diag(J^T diag(d) J), plus the residual f''(x) o g when l has one. */
static int diagonal_through(cpk__hterms *h, cpk__layer *l, cpk_context *ctx,
                            const cpk_tensor *x, const cpk_tensor *y,
                            const cpk_tensor *g) {
  cpk_tensor *d = NULL, *r = NULL;
  int rc = CPK_OK;
  if (h->d != NULL) {
    if ((rc = cpk__tensor_new_on(ctx, &d, x->dtype, x->ndim, x->shape)) ==
        CPK_OK)
      rc = l->kind->jac_t_diag(l, ctx, x, y, h->d, d);
  }
  if (rc == CPK_OK && l->kind->d2 != NULL &&
      (rc = cpk__tensor_new_on(ctx, &r, x->dtype, x->ndim, x->shape)) ==
          CPK_OK &&
      (rc = l->kind->d2(l, ctx, x, y, r)) == CPK_OK) {
    int64_t m = cpk_tensor_numel(r);
    cpk__mul_broadcast(ctx, x->dtype, 1, m, g->data, r->data, r->data);
    if (d == NULL) {
      d = r;
      r = NULL;
    } else {
      cpk__axpy(ctx, x->dtype, m, 1.0, r->data, d->data);
    }
  }
  cpk_tensor_free(r);
  cpk_tensor_free(h->d);
  h->d = rc == CPK_OK ? d : NULL;
  if (rc != CPK_OK)
    cpk_tensor_free(d);
  return rc;
}

/* e <- e o diag(J) through an elementwise layer. */
static int lazy_through(cpk__hterms *h, cpk__layer *l, cpk_context *ctx,
                        const cpk_tensor *x, const cpk_tensor *y) {
  if (h->ls == NULL)
    return CPK_OK;
  cpk_tensor *jd;
  int rc = cpk__tensor_new_on(ctx, &jd, x->dtype, x->ndim, x->shape);
  if (rc == CPK_OK && (rc = l->kind->jac_diag(l, ctx, x, y, jd)) == CPK_OK)
    cpk__mul_broadcast(ctx, x->dtype, 1, cpk_tensor_numel(jd), jd->data,
                       h->le->data, h->le->data);
  cpk_tensor_free(jd);
  return rc;
}

static int is_dense_linear(const cpk__layer *l, const cpk_tensor *x) {
  return l->kind == &cpk__linear_kind && x->ndim == 2;
}

/* Through a dense linear layer a diagonal term becomes lazy rows of W. */
static int diagonal_to_lazy(cpk__hterms *h, cpk__layer *l,
                            const cpk_context *ctx, const cpk_tensor *x) {
  int64_t eshape[2] = {h->n, x->shape[1]};
  int rc = cpk__tensor_new_on(ctx, &h->le, x->dtype, 2, eshape);
  if (rc != CPK_OK)
    return rc;
  cpk__fill(ctx, x->dtype, eshape[0] * eshape[1], 1.0, h->le->data);
  h->ls = h->d; /* [N, OUT] */
  h->d = NULL;
  h->lw = cpk__param_value(l, ctx, 0); /* the pass's copy on a device */
  return CPK_OK;
}

int cpk__hterms_through(cpk__hterms *h, cpk__layer *l, cpk_context *ctx,
                        const cpk_tensor *x, const cpk_tensor *y,
                        const cpk_tensor *g) {
  int rc;
  if (l->kind->jac_diag != NULL && l->kind->jac_t_diag != NULL) {
    /* elementwise: every term keeps its form */
    if ((rc = factor_through(h, l, ctx, x, y)) == CPK_OK &&
        (rc = lazy_through(h, l, ctx, x, y)) == CPK_OK)
      rc = diagonal_through(h, l, ctx, x, y, g);
    return rc;
  }
  if ((rc = expand_lazy(h, y)) != CPK_OK)
    return rc;
  if (l->kind->jac_t_diag != NULL) { /* selections keep diagonals diagonal */
    if ((rc = factor_through(h, l, ctx, x, y)) == CPK_OK)
      rc = diagonal_through(h, l, ctx, x, y, g);
    return rc;
  }
  if (h->d != NULL && is_dense_linear(l, x)) {
    if ((rc = factor_through(h, l, ctx, x, y)) == CPK_OK)
      rc = diagonal_to_lazy(h, l, ctx, x);
    return rc;
  }
  if ((rc = expand_diagonal(h)) == CPK_OK)
    rc = factor_through(h, l, ctx, x, y);
  return rc;
}

/* diag(H_lazy)[n, o] = e[n,o]^2 sum_k s[n,k] W[k,o]^2, added to h. */
static int add_lazy_diagonal(const cpk__hterms *t, cpk_context *ctx,
                             cpk_tensor *h) {
  const int64_t n = t->n, k = t->ls->shape[1], d = t->lw->shape[1];
  int64_t wshape[2] = {k, d};
  cpk_tensor *w2 = NULL, *acc = NULL;
  int rc = cpk__tensor_new_on(ctx, &w2, t->lw->dtype, 2, wshape);
  if (rc == CPK_OK)
    rc = cpk__tensor_new_on(ctx, &acc, h->dtype, 2, h->shape);
  if (rc == CPK_OK) {
    cpk__mul_broadcast(ctx, w2->dtype, 1, k * d, t->lw->data, t->lw->data,
                       w2->data);
    cpk__gemm(ctx, h->dtype, 0, 0, n, d, k, 1.0, t->ls->data, k, w2->data, d,
              0.0, acc->data, d);
    cpk__mul_broadcast(ctx, h->dtype, 1, n * d, t->le->data, acc->data,
                       acc->data);
    cpk__mul_broadcast(ctx, h->dtype, 1, n * d, t->le->data, acc->data,
                       acc->data);
    cpk__axpy(ctx, h->dtype, n * d, 1.0, acc->data, h->data);
  }
  cpk_tensor_free(w2);
  cpk_tensor_free(acc);
  return rc;
}

int cpk__hterms_param_diag(cpk__hterms *h, cpk__param_site *s, int batch,
                           cpk_tensor *out) {
  int rc = CPK_OK;
  if (cpk__site_is_dense_linear(s)) {
    /* Only the per-sample diagonal of H is needed. */
    cpk_tensor *rows = NULL;
    int64_t shape[2] = {s->n, features(h)};
    if (h->f != NULL)
      rc = cpk__rows_from_factor(s->ctx, h->f, h->sign, s->n, &rows);
    else
      rc = cpk__tensor_new_on(s->ctx, &rows, s->grad->dtype, 2, shape);
    if (rc == CPK_OK && h->d != NULL)
      cpk__axpy(s->ctx, rows->dtype, cpk_tensor_numel(rows), 1.0, h->d->data,
                rows->data);
    if (rc == CPK_OK && h->ls != NULL)
      rc = add_lazy_diagonal(h, s->ctx, rows);
    if (rc == CPK_OK)
      rc = cpk__diag_dense_linear(s, rows, batch, out);
    cpk_tensor_free(rows);
    return rc;
  }
  const cpk_tensor *y_like = s->g; /* [1, N, *out] */
  cpk_tensor like;
  cpk__tensor_view(&like, y_like->dtype, y_like->data, y_like->ndim - 1,
                   y_like->shape + 1);
  if ((rc = expand_lazy(h, &like)) != CPK_OK)
    return rc;
  if (h->d != NULL && !s->layer->kind->param_jac_is_input &&
      (rc = expand_diagonal(h)) != CPK_OK)
    return rc;
  if (h->f != NULL &&
      (rc = cpk__diag_from_factor(s, h->f, h->sign, batch, out)) != CPK_OK)
    return rc;
  if (h->d != NULL)
    rc = cpk__diag_from_diagonal(s, h->d, batch, out);
  return rc;
}
