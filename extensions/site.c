/*
 * site.c: the intermediates first-order extensions share at one parameter:
 * per-sample gradients (materialised once, or visited in bounded chunks)
 * and the second moment.
 */
#include <stdio.h>
#include <string.h>

#include "device.h"
#include "extension.h"
#include "ops.h"
#include "results.h"

void cpk__site_release(cpk__param_site *s) {
  if (!s->grad_batch_in_results)
    cpk_tensor_free(s->grad_batch);
  if (!s->sum_grad_squared_in_results)
    cpk_tensor_free(s->sum_grad_squared);
  s->grad_batch = NULL;
  s->sum_grad_squared = NULL;
}

static const cpk__param *site_param(const cpk__param_site *s) {
  return &s->layer->params[s->p];
}

/* "NAME.SUFFIX", the name of the site's result SUFFIX. */
static const char *result_name(const cpk__param_site *s, const char *suffix,
                               char name[96]) {
  snprintf(name, 96, "%s.%s", s->name, suffix);
  return name;
}

static int site_result(cpk__param_site *s, const char *suffix, int ndim,
                       const int64_t *shape, int zeroed, cpk_tensor **t) {
  char name[96];
  result_name(s, suffix, name);
  return zeroed ? cpk__results_alloc(s->results, name, s->grad->dtype, ndim,
                                     shape, t)
                : cpk__results_alloc_uninit(s->results, name, s->grad->dtype,
                                            ndim, shape, t);
}

int cpk__site_result(cpk__param_site *s, const char *suffix, int ndim,
                     const int64_t *shape, cpk_tensor **t) {
  return site_result(s, suffix, ndim, shape, 1, t);
}

int cpk__site_result_take(cpk__param_site *s, const char *suffix,
                          cpk_tensor **cached, int *owned) {
  char name[96];
  int rc = cpk__results_add(s->results, result_name(s, suffix, name), *cached);
  if (rc != CPK_OK)
    *cached = NULL; /* freed by cpk__results_add */
  else
    *owned = 1;
  return rc;
}

int cpk__site_result_uninit(cpk__param_site *s, const char *suffix, int ndim,
                            const int64_t *shape, cpk_tensor **t) {
  return site_result(s, suffix, ndim, shape, 0, t);
}

static int site_result_like(cpk__param_site *s, const char *suffix,
                            int64_t lead, int zeroed, cpk_tensor **t) {
  const cpk__param *p = site_param(s);
  int64_t shape[CPK_MAX_DIMS + 1];
  int k = 0;
  if (lead >= 0)
    shape[k++] = lead;
  memcpy(shape + k, p->shape, (size_t)p->ndim * sizeof *shape);
  return site_result(s, suffix, p->ndim + k, shape, zeroed, t);
}

int cpk__site_result_like(cpk__param_site *s, const char *suffix,
                          int64_t lead, cpk_tensor **t) {
  return site_result_like(s, suffix, lead, 1, t);
}

int cpk__site_result_like_uninit(cpk__param_site *s, const char *suffix,
                                 int64_t lead, cpk_tensor **t) {
  return site_result_like(s, suffix, lead, 0, t);
}

int cpk__site_block_param_jac(cpk__param_site *s, const cpk_tensor *in,
                              int64_t first, int64_t count, cpk_tensor *out) {
  const size_t es = cpk_dtype_size(s->x->dtype);
  const int64_t xper = cpk_tensor_numel(s->x) / s->n;
  const int64_t v = in->shape[0], per = cpk_tensor_numel(in) / (v * s->n);
  int64_t shape[CPK_MAX_DIMS];
  cpk_tensor xs, bs;
  memcpy(shape, s->x->shape, (size_t)s->x->ndim * sizeof *shape);
  shape[0] = count;
  cpk__tensor_view(&xs, s->x->dtype, (char *)s->x->data + first * xper * es,
                   s->x->ndim, shape);
  if (first == 0 && count == s->n)
    return s->layer->kind->param_jac_t_mat(s->layer, s->ctx, s->p, &xs, in, 1,
                                           0.0, out);
  /* The slice of every column: [V, count, *out] gathered contiguously. */
  memcpy(shape, in->shape, (size_t)in->ndim * sizeof *shape);
  shape[1] = count;
  cpk_tensor *slice;
  int rc =
      cpk__tensor_new_on_uninit(s->ctx, &slice, in->dtype, in->ndim, shape);
  if (rc != CPK_OK)
    return rc;
  for (int64_t c = 0; c < v; c++)
    cpk__copy(s->ctx, in->dtype, count * per,
              (const char *)in->data + (size_t)((c * s->n + first) * per) * es,
              (char *)slice->data + (size_t)(c * count * per) * es);
  cpk__tensor_view(&bs, in->dtype, slice->data, in->ndim, shape);
  rc = s->layer->kind->param_jac_t_mat(s->layer, s->ctx, s->p, &xs, &bs, 1,
                                       0.0, out);
  cpk_tensor_free(slice);
  return rc;
}

int64_t cpk__site_chunk_samples(const cpk__param_site *s, int64_t v) {
  const size_t bytes = (size_t)cpk_tensor_numel(s->grad) * (size_t)v *
                       cpk_dtype_size(s->grad->dtype);
  int64_t step = (int64_t)(s->ctx->work_bytes / (bytes ? bytes : 1));
  return step < 1 ? 1 : step > s->n ? s->n : step;
}

/* Per-sample gradients of samples [first, first + count) into out
 * [count, *S]: J_theta^T of the one-column block g. */
static int grad_batch_slice(cpk__param_site *s, int64_t first, int64_t count,
                            cpk_tensor *out) {
  return cpk__site_block_param_jac(s, s->g, first, count, out);
}

int cpk__site_grad_batch(cpk__param_site *s, const cpk_tensor **out) {
  if (s->grad_batch == NULL) {
    const cpk__param *p = site_param(s);
    int64_t shape[CPK_MAX_DIMS + 1];
    shape[0] = s->n;
    memcpy(shape + 1, p->shape, (size_t)p->ndim * sizeof *shape);
    /* per-sample param_jac_t_mat writes every element */
    int rc = cpk__tensor_new_on_uninit(s->ctx, &s->grad_batch,
                                       s->grad->dtype, p->ndim + 1, shape);
    if (rc == CPK_OK)
      rc = grad_batch_slice(s, 0, s->n, s->grad_batch);
    if (rc != CPK_OK) {
      cpk_tensor_free(s->grad_batch);
      s->grad_batch = NULL;
      return rc;
    }
  }
  *out = s->grad_batch;
  return CPK_OK;
}

int cpk__site_foreach_chunk(cpk__param_site *s, cpk__chunk_fn fn, void *ud) {
  if (s->grad_batch != NULL)
    return fn(ud, 0, s->grad_batch);
  const cpk__param *p = site_param(s);
  const int64_t step = cpk__site_chunk_samples(s, 1);
  int64_t shape[CPK_MAX_DIMS + 1];
  shape[0] = step;
  memcpy(shape + 1, p->shape, (size_t)p->ndim * sizeof *shape);
  cpk_tensor *chunk;
  int rc = cpk__tensor_new_on_uninit(s->ctx, &chunk, s->grad->dtype,
                                     p->ndim + 1, shape);
  for (int64_t first = 0; rc == CPK_OK && first < s->n; first += step) {
    int64_t count = s->n - first < step ? s->n - first : step;
    chunk->shape[0] = count;
    if ((rc = grad_batch_slice(s, first, count, chunk)) == CPK_OK)
      rc = fn(ud, first, chunk);
  }
  cpk_tensor_free(chunk);
  return rc;
}

int cpk__site_is_dense_linear(const cpk__param_site *s) {
  return s->layer->kind == &cpk__linear_kind && s->x->ndim == 2;
}

typedef struct {
  cpk__param_site *site;
  cpk_tensor *sgs;
} square_sum;

/* sgs += sum over the chunk's samples of grad_batch^2. */
static int add_squares(void *ud, int64_t first, const cpk_tensor *chunk) {
  const square_sum *q = ud;
  cpk__sq_accumulate(q->site->ctx, chunk->dtype, 1, chunk->shape[0],
                     cpk_tensor_numel(q->sgs), chunk->data, NULL, 0, 1,
                     q->sgs->data);
  return CPK_OK;
}

/* Linear on [N, IN]: grad_batch[n] = g_n x_n^T (bias: g_n), so
 * sum_n grad_batch[n]^2 = (G o G)^T (X o X)   ([OUT,N][N,IN]),
 * bias: sum_n g_n^2. G [N, OUT], X [N, IN], o the elementwise product. */
static int linear_sum_grad_squared(cpk__param_site *s, cpk_tensor *sgs) {
  const int64_t n = s->n, fo = s->g->shape[2], fi = s->x->shape[1];
  int64_t gshape[2] = {n, fo}, xshape[2] = {n, fi};
  cpk_tensor *g2 = NULL, *x2 = NULL;
  int rc = cpk__tensor_new_on_uninit(s->ctx, &g2, s->g->dtype, 2, gshape);
  if (rc != CPK_OK)
    return rc;
  cpk__mul_broadcast(s->ctx, s->g->dtype, 1, n * fo, s->g->data, s->g->data,
                     g2->data);
  if (s->p == 1) { /* bias */
    cpk__sum_rows(s->ctx, s->g->dtype, 1, n, fo, g2->data, 0.0, sgs->data);
  } else if ((rc = cpk__tensor_new_on_uninit(s->ctx, &x2, s->x->dtype, 2,
                                              xshape)) == CPK_OK) {
    cpk__mul_broadcast(s->ctx, s->x->dtype, 1, n * fi, s->x->data, s->x->data,
                       x2->data);
    cpk__gemm(s->ctx, s->g->dtype, 1, 0, fo, fi, n, 1.0, g2->data, fo,
              x2->data, fi, 0.0, sgs->data, fi);
  }
  cpk_tensor_free(g2);
  cpk_tensor_free(x2);
  return rc;
}

int cpk__site_sum_grad_squared(cpk__param_site *s, const cpk_tensor **out) {
  if (s->sum_grad_squared == NULL) {
    const cpk__param *p = site_param(s);
    /* The closed form writes every element; the chunks add up. */
    const int closed = cpk__site_is_dense_linear(s) && s->grad_batch == NULL;
    int rc = closed ? cpk__tensor_new_on_uninit(s->ctx, &s->sum_grad_squared,
                                                s->grad->dtype, p->ndim,
                                                p->shape)
                    : cpk__tensor_new_on(s->ctx, &s->sum_grad_squared,
                                         s->grad->dtype, p->ndim, p->shape);
    square_sum q = {s, s->sum_grad_squared};
    if (rc == CPK_OK)
      rc = closed ? linear_sum_grad_squared(s, s->sum_grad_squared)
                  : cpk__site_foreach_chunk(s, add_squares, &q);
    if (rc != CPK_OK) {
      cpk_tensor_free(s->sum_grad_squared);
      s->sum_grad_squared = NULL;
      return rc;
    }
  }
  *out = s->sum_grad_squared;
  return CPK_OK;
}
