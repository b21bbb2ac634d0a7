/*
 * kfac.c: Kronecker factors of the GGN from the backpropagated square root
 * (BackPACK's KFAC with the Monte Carlo root, KFLR with the exact one).
 * Linear on [N, IN], weight [OUT, IN]: P.kfac.0 = G = sum_{v,n} s s^T
 * (OUT x OUT, carries the loss scale c), P.kfac.1 = A = (1/N) X^T X (N the whole batch's size when
 * this pass is a shard of it: shards then simply add up)
 * (IN x IN); the GGN block is approximated by G (x) A in the row-major order
 * of the flattened weight. Bias: P.kfac.0 = G alone.
 * KFRA (P.kfra.0, P.kfra.1) takes G = Gbar, the averaged GGN propagated
 * backward as one matrix (cpk__kfra_start / cpk__kfra_through), and the
 * same A.
 * Every factor is written whole (BLAS with beta 0, copies), so none is
 * zeroed first.
 * Convolutions (and transposed ones, for weight.transpose(0, 1)): G from S
 * summed over the output positions first (the bias's GGN), A = (1/N)
 * sum_{n,l} u u^T over the unfolded input patches u (C_in/G * prod(K)); with
 * groups, one pair of factors per group ([G, ...]; BackPACK refuses groups).
 */
#include <stdio.h>

#include "device.h"
#include "layers/conv_common.h"
#include "extension.h"
#include "ops.h"

/* S [V, N, C, L] summed over the L output positions: [V*N, C]. */
static int sum_positions(const cpk_context *ctx, const cpk_tensor *S,
                         int64_t n, int64_t c, cpk_tensor **out) {
  const int64_t v = S->shape[0], l = cpk_tensor_numel(S) / (v * n * c);
  int64_t shape[2] = {v * n, c};
  int rc = cpk__tensor_new_on_uninit(ctx, out, S->dtype, 2, shape);
  if (rc == CPK_OK)
    cpk__sum_rows(ctx, S->dtype, v * n * c, l, 1, S->data, 0.0, (*out)->data);
  return rc;
}

/* Gbar [C*L, C*L] summed over pairs of positions: [C, C]. As [C, L, C, L]
 * it is summed over the last axis ([C, L, C]), then over the second. */
static int sum_position_pairs(const cpk_context *ctx, const cpk_tensor *gbar,
                              int64_t c, cpk_tensor *out) {
  const int64_t l = gbar->shape[0] / c;
  if (l == 1) {
    cpk__copy(ctx, gbar->dtype, c * c, gbar->data, out->data);
    return CPK_OK;
  }
  int64_t shape[3] = {c, l, c};
  cpk_tensor *t;
  int rc = cpk__tensor_new_on_uninit(ctx, &t, gbar->dtype, 3, shape);
  if (rc != CPK_OK)
    return rc;
  cpk__sum_rows(ctx, gbar->dtype, c * l * c, l, 1, gbar->data, 0.0, t->data);
  cpk__sum_rows(ctx, gbar->dtype, c, l, c, t->data, 0.0, out->data);
  cpk_tensor_free(t);
  return CPK_OK;
}

/* The output factor over the C output channels (features): from a square
 * root S [V, N, C, (L)], G = sum_{v,n} s s^T with s = S[v,n] summed over
 * positions; from KFRA's Gbar (S NULL) its sum over position pairs. With
 * G groups the weight takes the diagonal blocks [G, C/G, C/G]; the bias
 * (groups = 0 here) the whole [C, C]. */
static int output_factor(cpk__param_site *s, const cpk_tensor *S, int64_t c,
                         int64_t groups, const char *name) {
  int64_t full[2] = {c, c};
  cpk_tensor *g = NULL, *rows = NULL, *out;
  if (s->p == 1) { /* the bias's G is the weight's, ungrouped: reuse it */
    char key[96];
    snprintf(key, sizeof key, "%d.%s.%s", s->layer->index,
             s->layer->params[0].name, name);
    const cpk_tensor *w = cpk_results_find(s->results, key);
    if (w != NULL && w->ndim == 2 && w->shape[0] == c && w->shape[1] == c) {
      int rc = cpk__site_result_uninit(s, name, 2, full, &out);
      if (rc == CPK_OK)
        cpk__copy(s->ctx, w->dtype, c * c, w->data, out->data);
      return rc;
    }
  }
  /* Ungrouped, G goes straight into the result; grouped, through g. */
  int rc = groups <= 1
               ? cpk__site_result_uninit(s, name, 2, full, &out)
               : cpk__tensor_new_on_uninit(s->ctx, &g, s->grad->dtype, 2, full);
  cpk_tensor *whole = groups <= 1 ? out : g;
  if (rc == CPK_OK && S == NULL) {
    rc = sum_position_pairs(s->ctx, s->kfra, c, whole);
  } else if (rc == CPK_OK) {
    /* one position (linear layers): S itself is [V*N, C] */
    const int positions = cpk_tensor_numel(S) / (S->shape[0] * s->n) != c;
    if (positions)
      rc = sum_positions(s->ctx, S, s->n, c, &rows);
    const cpk_tensor *r = positions ? rows : S;
    if (rc == CPK_OK)
      cpk__syrk(s->ctx, S->dtype, 1, c, S->shape[0] * s->n, 1.0, r->data, c,
                0.0, whole->data, c);
  }
  if (rc == CPK_OK && groups > 1) {
    const int64_t cg = c / groups;
    int64_t shape[3] = {groups, cg, cg};
    const size_t es = cpk_dtype_size(g->dtype);
    if ((rc = cpk__site_result_uninit(s, name, 3, shape, &out)) == CPK_OK)
      for (int64_t k = 0; k < groups; k++) /* out[k, i, :] = g[k*cg + i, k*cg..] */
        for (int64_t i = 0; i < cg; i++)
          cpk__copy(s->ctx, g->dtype, cg,
                    (const char *)g->data +
                        (size_t)((k * cg + i) * c + k * cg) * es,
                    (char *)out->data + (size_t)((k * cg + i) * cg) * es);
  }
  cpk_tensor_free(g);
  cpk_tensor_free(rows);
  return rc;
}

/* The input factor of a convolution weight: per group, the unfolded input
 * patches U [N, G, R, L] give (1/N) sum_{n,l} u u^T, [R, R] (or
 * [G, R, R]). A group's patches of all samples are gathered side by side,
 * [R, N*L], for one symmetric product with N*L terms per entry. */
static int conv_input_factor(cpk__param_site *s, const char *name) {
  cpk_tensor *u, *side = NULL, *out;
  int rc = cpk__conv_unfold_input(s->layer, s->ctx, s->x, &u);
  if (rc != CPK_OK)
    return rc;
  const int64_t groups = u->shape[1], r = u->shape[2], l = u->shape[3];
  const int64_t n = s->n, shape[3] = {groups, r, r}, sshape[2] = {r, n * l};
  rc = groups > 1 ? cpk__site_result_uninit(s, name, 3, shape, &out)
                  : cpk__site_result_uninit(s, name, 2, shape + 1, &out);
  if (rc == CPK_OK)
    rc = cpk__tensor_new_on_uninit(s->ctx, &side, u->dtype, 2, sshape);
  const size_t es = cpk_dtype_size(u->dtype);
  for (int64_t g = 0; rc == CPK_OK && g < groups; g++) {
    for (int64_t j = 0; j < n; j++) /* side[:, j*L..] = U[j, g] */
      cpk__copy_2d(s->ctx, u->dtype, r, l,
                   (char *)u->data + (size_t)((j * groups + g) * r * l) * es,
                   l, (char *)side->data + (size_t)(j * l) * es, n * l);
    cpk__syrk(s->ctx, u->dtype, 0, r, n * l, 1.0 / (double)s->n_mean,
              side->data, n * l, 0.0,
              (char *)out->data + (size_t)(g * r * r) * es, r);
  }
  cpk_tensor_free(side);
  cpk_tensor_free(u);
  return rc;
}

static int kron_factors(cpk__param_site *s, const cpk_tensor *S,
                        const char *prefix) {
  char name0[32], name1[32];
  const cpk__conv *conv = cpk__conv_of(s->layer);
  int rc;
  snprintf(name0, sizeof name0, "%s.0", prefix);
  snprintf(name1, sizeof name1, "%s.1", prefix);
  if (conv != NULL) { /* [C_out, C_in/G * prod(K)] per group */
    const int64_t c = s->layer->out_shape[0];
    rc = output_factor(s, S, c, s->p == 0 ? conv->groups : 0, name0);
    if (rc != CPK_OK || s->p == 1)
      return rc;
    return conv_input_factor(s, name1);
  }
  if (!cpk__site_is_dense_linear(s))
    return cpk__fail(CPK_ENOTSUP,
                     "%s: %s factors are not supported for this layer yet",
                     s->layer->where, prefix);
  const int64_t fi = s->x->shape[1];
  int64_t ashape[2] = {fi, fi};
  cpk_tensor *a;
  rc = output_factor(s, S, s->g->shape[2], 1, name0);
  if (rc != CPK_OK || s->p == 1) /* bias */
    return rc;
  if ((rc = cpk__site_result_uninit(s, name1, 2, ashape, &a)) != CPK_OK)
    return rc;
  cpk__syrk(s->ctx, s->x->dtype, 1, fi, s->n, 1.0 / (double)s->n_mean,
            s->x->data, fi, 0.0, a->data, fi);
  return CPK_OK;
}

static int kfac(cpk__param_site *s) {
  return kron_factors(s, s->sqrt_mc, "kfac");
}
static int kflr(cpk__param_site *s) {
  return kron_factors(s, s->sqrt_exact, "kflr");
}
static int kfra(cpk__param_site *s) { return kron_factors(s, NULL, "kfra"); }

int cpk__kfra_start(cpk_context *ctx, const cpk_tensor *sqrt_exact,
                    cpk_tensor **gbar) {
  const int64_t v = sqrt_exact->shape[0], n = sqrt_exact->shape[1];
  const int64_t d = cpk_tensor_numel(sqrt_exact) / (v * n);
  int64_t shape[2] = {d, d};
  int rc = cpk__tensor_new_on_uninit(ctx, gbar, sqrt_exact->dtype, 2, shape);
  if (rc == CPK_OK)
    cpk__syrk(ctx, sqrt_exact->dtype, 1, d, v * n, 1.0, sqrt_exact->data, d,
              0.0, (*gbar)->data, d);
  return rc;
}

int cpk__kfra_through(cpk_tensor **gbar, cpk__layer *l, cpk_context *ctx,
                      const cpk_tensor *x, const cpk_tensor *y) {
  const int64_t d = cpk__layer_in_numel(l);
  int64_t shape[2] = {d, d};
  cpk_tensor *out;
  int rc = cpk__tensor_new_on(ctx, &out, (*gbar)->dtype, 2, shape);
  if (rc == CPK_OK)
    rc = l->kind->ea_jac_t_mat_jac
             ? l->kind->ea_jac_t_mat_jac(l, ctx, x, y, *gbar, out)
             : cpk__ea_jac_t_mat_jac_generic(l, ctx, x, y, *gbar, out);
  if (rc != CPK_OK) {
    cpk_tensor_free(out);
    return rc;
  }
  cpk_tensor_free(*gbar);
  *gbar = out;
  return CPK_OK;
}

const cpk__extension cpk__kfac_ext = {"kfac", CPK__NEED_SQRT_MC, kfac};
const cpk__extension cpk__kflr_ext = {"kflr", CPK__NEED_SQRT_EXACT, kflr};
const cpk__extension cpk__kfra_ext = {"kfra", CPK__NEED_KFRA, kfra};
