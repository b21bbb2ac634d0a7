/*
 * batch_dot_grad.c: P.batch_dot [N, N], the Gram matrix of the per-sample
 * gradients, D[n, m] = <grad_batch[n], grad_batch[m]> (Cockpit's pairwise
 * dot products; BackPACK has none).
 * Linear on [N, IN]: <g_n x_n^T, g_m x_m^T> = (g_n . g_m)(x_n . x_m), so
 * D = (G G^T) o (X X^T) (bias: G G^T), without forming the gradients.
 * Otherwise D = B B^T over the flattened per-sample gradients B [N, P],
 * accumulated block by block over chunks of samples.
 */
#include "device.h"
#include "extension.h"
#include "ops.h"

typedef struct {
  cpk__param_site *site;
  cpk_tensor *out;
} gram_acc;

/* D[first.., first..] block rows: D[a, b] for a in the outer chunk and b in
 * every chunk, visiting the chunks again (memory stays bounded). */
typedef struct {
  gram_acc *acc;
  const cpk_tensor *outer;
  int64_t outer_first;
} gram_inner;

static int gram_inner_chunk(void *ud, int64_t first, const cpk_tensor *chunk) {
  gram_inner *in = ud;
  const int64_t n = in->acc->site->n, per = cpk_tensor_numel(chunk) /
                                             chunk->shape[0];
  const size_t es = cpk_dtype_size(chunk->dtype);
  /* D[outer rows, chunk cols] := A B^T, A [ka, P], B [kb, P] */
  cpk__gemm(in->acc->site->ctx, chunk->dtype, 0, 1, in->outer->shape[0],
            chunk->shape[0], per, 1.0, in->outer->data, per, chunk->data, per,
            0.0, (char *)in->acc->out->data + (in->outer_first * n + first) * es,
            n);
  return CPK_OK;
}

/* Each walk has its own chunk buffer, so the outer rows stay valid while
 * the inner walk runs. */
static int gram_outer_chunk(void *ud, int64_t first, const cpk_tensor *chunk) {
  gram_inner in = {ud, chunk, first};
  return cpk__site_foreach_chunk(((gram_acc *)ud)->site, gram_inner_chunk, &in);
}

/* out := A A^T for A [n, k] (row stride k). */
static void gram(cpk__param_site *s, const void *a, int64_t k, void *out) {
  cpk__gemm(s->ctx, s->g->dtype, 0, 1, s->n, s->n, k, 1.0, a, k, a, k, 0.0,
            out, s->n);
}

static int batch_dot_param(cpk__param_site *s) {
  int64_t shape[2] = {s->n, s->n};
  cpk_tensor *out, *xx = NULL;
  int rc = cpk__site_result(s, "batch_dot", 2, shape, &out);
  if (rc != CPK_OK)
    return rc;
  if (!cpk__site_is_dense_linear(s) || s->grad_batch != NULL) {
    gram_acc acc = {s, out};
    return cpk__site_foreach_chunk(s, gram_outer_chunk, &acc);
  }
  gram(s, s->g->data, s->g->shape[2], out->data);
  if (s->p == 0 && (rc = cpk__tensor_new_on(s->ctx, &xx, s->x->dtype, 2,
                                            shape)) == CPK_OK) {
    gram(s, s->x->data, s->x->shape[1], xx->data);
    cpk__mul_broadcast(s->ctx, out->dtype, 1, s->n * s->n, xx->data, out->data,
                       out->data);
  }
  cpk_tensor_free(xx);
  return rc;
}

const cpk__extension cpk__batch_dot_grad_ext = {"batch_dot_grad", CPK__NEED_PER_SAMPLE,
                                                batch_dot_param};
